package registry

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/valkey-io/valkey-go"

	"github.com/coord-extproc/coord-extproc/internal/valkeytest"
)

func commandCount(t testing.TB, c valkey.Client) int64 { return valkeytest.CommandCount(t, c) }

// Steady-state resolution costs zero Valkey commands and no allocation.
func TestSteadyStateCost(t *testing.T) {
	srv := valkeytest.Start(t)
	c := rawClient(t, srv)
	r := newRegistry(t, srv, func(o *Options) { o.ProbeInterval = -1 }) // count the request path only
	for i := 0; i < 3; i++ {
		nodeMember(t, c, "coordinator", fmt.Sprintf("m%d", i), 7000+i, 0)
	}
	do(t, c, "SADD", "coordinator:destination:d", "m0", "m1", "m2")
	do(t, c, "HSET", "coordinator:lock:l", "podId", "m1", "destinationId", "d")
	ctx := context.Background()
	warm := func() bool {
		h := r.Stats().CacheHits.Load()
		_, err1 := r.Route(ctx, "d", RouteOptions{})
		_, err2 := r.RouteLock(ctx, "l")
		return err1 == nil && err2 == nil && r.Stats().CacheHits.Load() == h+2
	}
	eventually(t, 2*time.Second, "warm caches", warm)

	before := commandCount(t, c)
	for i := 0; i < 1000; i++ {
		if _, err := r.Route(ctx, "d", RouteOptions{}); err != nil {
			t.Fatal(err)
		}
		if _, err := r.RouteLock(ctx, "l"); err != nil {
			t.Fatal(err)
		}
	}
	if n := commandCount(t, c) - before; n != 0 {
		t.Fatalf("2000 cached resolutions issued %d Valkey commands, want 0", n)
	}
	if a := testing.AllocsPerRun(200, func() { _, _ = r.Route(ctx, "d", RouteOptions{}) }); a > 0 {
		t.Fatalf("cached Route allocates %v times per call", a)
	}
	if a := testing.AllocsPerRun(200, func() { _, _ = r.RouteLock(ctx, "l") }); a > 0 {
		t.Fatalf("cached RouteLock allocates %v times per call", a)
	}
}

// A claim on a warm registry costs at most 3 Valkey commands.
func TestClaimCost(t *testing.T) {
	srv := valkeytest.Start(t)
	c := rawClient(t, srv)
	// Count the claims only: with tracking probes on, a slow run counts
	// more of them (the suite failed so on a busy machine).
	r := newRegistry(t, srv, func(o *Options) { o.ProbeInterval = -1 })
	nodeMember(t, c, "coordinator", "m", 7001, 0)
	if _, err := route(t, r, "first", RouteOptions{ClaimOnMiss: true}); err != nil {
		t.Fatal(err)
	}
	// The claims index (reclaim.go) is written in batches off the request
	// path: its ZADDs are not the claims' cost.
	before := commandCount(t, c) - valkeytest.Calls(t, c, "zadd")
	const n = 20
	for i := 0; i < n; i++ {
		if d, err := route(t, r, fmt.Sprintf("new-%d", i), RouteOptions{ClaimOnMiss: true}); err != nil || d.Result != ResultClaimed {
			t.Fatalf("claim: %+v %v", d, err)
		}
	}
	per := float64(commandCount(t, c)-valkeytest.Calls(t, c, "zadd")-before) / n
	t.Logf("claim on miss: %.2f Valkey commands per claim", per)
	if per > 3 {
		t.Fatalf("claim costs %.2f Valkey commands, want at most 3", per)
	}
}

// With tracking probes confirming the invalidation channel, entries stay
// fresh past CacheTTL: requests keep costing nothing, the only commands are
// the probes. Without probes every entry is re-read once per CacheTTL.
func TestProbesKeepEntriesFresh(t *testing.T) {
	for _, probe := range []bool{true, false} {
		t.Run(fmt.Sprintf("probes=%v", probe), func(t *testing.T) {
			srv := valkeytest.Start(t)
			c := rawClient(t, srv)
			r := newRegistry(t, srv, func(o *Options) {
				o.CacheTTL, o.ProbeInterval = 300*time.Millisecond, 50*time.Millisecond
				if !probe {
					o.ProbeInterval = -1
				}
			})
			nodeMember(t, c, "coordinator", "m", 7001, 0)
			do(t, c, "SADD", "coordinator:destination:d", "m")
			ctx := context.Background()
			eventually(t, time.Second, "a cache hit and the members set cached", func() bool {
				h := r.Stats().CacheHits.Load()
				_, err := r.Route(ctx, "d", RouteOptions{})
				all := r.all.Load()
				return err == nil && r.Stats().CacheHits.Load() == h+1 && (!probe || all != nil && len(all.set.ids) == 1 && r.fresh(&all.freshness, time.Now()))
			})
			do(t, c, "CONFIG", "RESETSTAT")
			hits := r.Stats().CacheHits.Load()
			deadline := time.Now().Add(time.Second) // over three CacheTTLs
			n := uint64(0)
			for time.Now().Before(deadline) {
				if _, err := r.Route(ctx, "d", RouteOptions{}); err != nil {
					t.Fatal(err)
				}
				n++
				time.Sleep(5 * time.Millisecond)
			}
			info, _ := do(t, c, "INFO", "commandstats").ToString()
			reads := strings.Contains(info, "cmdstat_smembers") || strings.Contains(info, "cmdstat_hgetall")
			allHits := r.Stats().CacheHits.Load()-hits == n
			if probe && (reads || !allHits || !strings.Contains(info, "cmdstat_set:")) {
				t.Fatalf("with probes: %d/%d hits, re-reads=%v\n%s", r.Stats().CacheHits.Load()-hits, n, reads, info)
			}
			if !probe && !reads {
				t.Fatalf("without probes entries must be re-read after CacheTTL\n%s", info)
			}
		})
	}
}

// Issue #24 finding 9: an unknown id's 404 costs one read, not a read and
// a confirmation; the same id again within NegativeTTL costs nothing; a
// binding written meanwhile ends the negative entry at once; and a flood
// of unknown ids does not push cached bindings out.
func TestUnknownIDCost(t *testing.T) {
	srv := valkeytest.Start(t)
	c := rawClient(t, srv)
	r := newRegistry(t, srv, func(o *Options) {
		o.ProbeInterval = -1
		o.CacheSize = 100
		o.NegativeTTL = time.Minute // what is tested is the count, not the clock
	})
	nodeMember(t, c, "coordinator", "m", 7001, 0)
	do(t, c, "SADD", "coordinator:destination:d", "m")
	ctx := context.Background()
	eventually(t, 2*time.Second, "warm cache", func() bool {
		h := r.Stats().CacheHits.Load()
		_, err := r.Route(ctx, "d", RouteOptions{})
		return err == nil && r.Stats().CacheHits.Load() == h+1
	})
	notFound := func(id string) {
		t.Helper()
		if _, err := route(t, r, id, RouteOptions{}); !errors.Is(err, ErrNotFound) {
			t.Fatalf("unknown %q: %v, want ErrNotFound", id, err)
		}
	}

	before := commandCount(t, c)
	const n = 20
	for i := range n {
		notFound(fmt.Sprintf("unknown-%d", i))
	}
	per := float64(commandCount(t, c)-before) / n
	// One bounded read: EVALSHA and, inside it, SCARD and SMEMBERS (with
	// a confirming second read it was 6).
	if per > 3 {
		t.Fatalf("a first 404 costs %.2f Valkey commands, want at most 3", per)
	}
	before = commandCount(t, c)
	for range 100 {
		notFound("unknown-0")
	}
	if got := commandCount(t, c) - before; got != 0 {
		t.Fatalf("100 repeated 404s cost %d Valkey commands, want 0", got)
	}

	do(t, c, "SADD", "coordinator:destination:unknown-0", "m")
	eventually(t, 2*time.Second, "the new binding routes", func() bool {
		d, err := route(t, r, "unknown-0", RouteOptions{})
		return err == nil && d.Member.ID == "m"
	})

	for i := range 1000 {
		notFound(fmt.Sprintf("flood-%d", i))
	}
	before = commandCount(t, c)
	if _, err := r.Route(ctx, "d", RouteOptions{}); err != nil {
		t.Fatal(err)
	}
	if got := commandCount(t, c) - before; got != 0 {
		t.Fatalf("a cached binding after 1000 unknown ids cost %d Valkey commands: the flood evicted it", got)
	}
}
