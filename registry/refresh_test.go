package registry

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/valkey-io/valkey-go"

	"github.com/coord-extproc/coord-extproc/internal/valkeytest"
	"github.com/coord-extproc/coord-extproc/strategy"
)

// A heartbeat (load only) keeps every destination view; a change routing
// sees (address, draining) rebuilds them, and is routed at once after the
// re-read (refresh.go).
func TestLoadOnlyWritesKeepViews(t *testing.T) {
	for _, mode := range deploymentModes {
		t.Run(mode, func(t *testing.T) {
			d := startDeployment(t, mode)
			testLoadOnlyWritesKeepViews(t, d.client(t), d.registry(t, func(o *Options) { o.Timeout = patientTimeout }))
		})
	}
}

func testLoadOnlyWritesKeepViews(t *testing.T, c valkey.Client, r *Registry) {
	nodeMember(t, c, "coordinator", "p1", 7001, 0)
	for i := range 3 {
		do(t, c, "SADD", fmt.Sprintf("coordinator:destination:d%d", i), "p1")
	}
	// Until a pass needs no read: the setup's own invalidations may come
	// in after the first reads (which then read again).
	eventually(t, 2*time.Second, "every destination routed from memory", func() bool {
		n := r.stats.CacheMisses.Load()
		for i := range 3 {
			if d, err := route(t, r, fmt.Sprintf("d%d", i), RouteOptions{}); err != nil || d.Member.Address != "127.0.0.1:7001" {
				t.Fatalf("d%d: %+v, %v", i, d, err)
			}
		}
		return r.stats.CacheMisses.Load() == n
	})
	view := func() *setView {
		e, _ := r.sets.Peek("d0")
		return e.set.view.Load()
	}
	v0, gen0 := view(), r.memberGen.Load()
	for beat := 1; beat <= 5; beat++ {
		refreshes := r.stats.MemberRefreshes.Load()
		do(t, c, "HSET", "coordinator:member:p1", "load", fmt.Sprint(beat))
		do(t, c, "EXPIRE", "coordinator:member:p1", "30")
		eventually(t, 2*time.Second, "the heartbeat re-read", func() bool {
			_, _ = route(t, r, "d0", RouteOptions{}) // in use: re-read in the background
			return r.stats.MemberRefreshes.Load() > refreshes && mustEntry(t, r, "p1").load.Load() == int64(beat)
		})
		if d, err := route(t, r, "d1", RouteOptions{}); err != nil || d.Result != ResultHit || d.Member.Address != "127.0.0.1:7001" {
			t.Fatalf("beat %d: %+v, %v", beat, d, err)
		}
	}
	if v := view(); v != v0 || r.memberGen.Load() != gen0 {
		t.Fatalf("five load-only heartbeats rebuilt the view (memberGen %d → %d)", gen0, r.memberGen.Load())
	}
	if n := r.stats.MemberChanges.Load(); n != 0 {
		t.Fatalf("%d member changes counted for load-only writes", n)
	}

	// The pod restarts elsewhere under the same id: routed there at once.
	do(t, c, "HSET", "coordinator:member:p1", "address", "http://127.0.0.1:7002")
	eventually(t, 2*time.Second, "the new address routed", func() bool {
		d, err := route(t, r, "d2", RouteOptions{})
		return err == nil && d.Member.Address == "127.0.0.1:7002"
	})
	if r.memberGen.Load() == gen0 || r.stats.MemberChanges.Load() == 0 {
		t.Fatal("an address change did not move memberGen")
	}
	// Draining: it keeps its bindings, takes no claim.
	nodeMember(t, c, "coordinator", "p2", 7003, 0)
	do(t, c, "HSET", "coordinator:member:p1", "draining", "1")
	eventually(t, 2*time.Second, "the drain seen by claims", func() bool {
		for i := range 4 {
			d, err := route(t, r, fmt.Sprintf("new-%d", i), RouteOptions{ClaimOnMiss: true})
			if err != nil || d.Member.ID != "p2" {
				return false
			}
		}
		return true
	})
	if d, err := route(t, r, "d0", RouteOptions{}); err != nil || d.Member.ID != "p1" {
		t.Fatalf("a draining member's binding: %+v, %v", d, err)
	}
}

func mustEntry(t *testing.T, r *Registry, id string) *memberEntry {
	t.Helper()
	e, ok := r.members.Peek(id)
	if !ok {
		t.Fatalf("member %s not cached", id)
	}
	return e
}

// SPEC §4.1 least-loaded with pods heartbeating: the first heartbeat that
// carries a new load moves the pick, answered from memory (the record is
// read again off the request path), and the destination's view is kept.
func TestLeastLoadedSeesLoadWithinOneHeartbeat(t *testing.T) {
	srv := valkeytest.Start(t)
	c := rawClient(t, srv)
	r := newRegistry(t, srv, func(o *Options) { o.Strategy = strategy.NewLeastLoaded() })
	ctx := context.Background()
	var pods [2]*Member
	for i := range pods {
		pods[i] = newMember(t, c, fmt.Sprintf("pod-%d", i), 7001+i, func(o *MemberOptions) { o.TTL = 30 * time.Second })
		if err := pods[i].Register(ctx, int64(10*i)); err != nil {
			t.Fatal(err)
		}
		if err := pods[i].AddToDestination(ctx, "fan"); err != nil {
			t.Fatal(err)
		}
	}
	pick := func() string {
		d, err := route(t, r, "fan", RouteOptions{})
		if err != nil {
			t.Fatal(err)
		}
		return d.Member.ID
	}
	eventually(t, 2*time.Second, "pod-0 (load 0) picked from memory", func() bool {
		n := r.stats.CacheMisses.Load()
		return pick() == "pod-0" && r.stats.CacheMisses.Load() == n // the registrations' own invalidations are in
	})
	e, _ := r.sets.Peek("fan")
	view, misses := e.set.view.Load(), r.stats.CacheMisses.Load()
	for round, want := range []string{"pod-1", "pod-0", "pod-1", "pod-0"} {
		for i, m := range pods { // one heartbeat each: the wanted pod's load drops below the other's
			load := int64(50 + round)
			if m.ID() == want {
				load = int64(round)
			}
			if _, err := m.Heartbeat(ctx, load); err != nil {
				t.Fatalf("heartbeat of pod-%d: %v", i, err)
			}
		}
		beat := time.Now()
		eventually(t, time.Second, fmt.Sprintf("round %d: %s picked after one heartbeat each", round, want), func() bool {
			return pick() == want && pick() == want
		})
		t.Logf("round %d: %s picked %v after the heartbeats", round, want, time.Since(beat).Round(time.Millisecond))
	}
	if n := r.stats.CacheMisses.Load() - misses; n != 0 {
		t.Fatalf("%d requests read Valkey: loads should reach the pick off the request path", n)
	}
	if n := r.stats.MemberChanges.Load(); n != 0 {
		t.Fatalf("%d member changes counted for load-only heartbeats", n)
	}
	if e, _ := r.sets.Peek("fan"); e.set.view.Load().memberGen != view.memberGen {
		t.Fatal("load-only heartbeats rebuilt the view")
	}
}

// An idle replica reads no record per heartbeat, and Valkey stops telling
// it of a record's writes after the first one it did not read back; a
// replica routing to the pods reads each heartbeat of theirs off the
// request path.
func TestHeartbeatsCostAnIdleReplicaNothing(t *testing.T) {
	for _, mode := range deploymentModes {
		t.Run(mode, func(t *testing.T) {
			d := startDeployment(t, mode)
			testHeartbeatsCostAnIdleReplicaNothing(t, d.client(t), d.registry(t, func(o *Options) { o.Timeout = patientTimeout }))
		})
	}
}

func testHeartbeatsCostAnIdleReplicaNothing(t *testing.T, c valkey.Client, r *Registry) {
	const pods = 20
	for p := range pods {
		nodeMember(t, c, "coordinator", fmt.Sprintf("p%d", p), 7000+p, 0)
		do(t, c, "SADD", fmt.Sprintf("coordinator:destination:d%d", p), fmt.Sprintf("p%d", p))
	}
	routeAll := func() {
		for p := range pods {
			if d, err := route(t, r, fmt.Sprintf("d%d", p), RouteOptions{}); err != nil || d.Member.ID != fmt.Sprintf("p%d", p) {
				t.Fatalf("d%d: %+v, %v", p, d, err)
			}
		}
	}
	// Until a pass needs no read: the setup's own invalidations may come
	// in after the first reads (which then read again).
	eventually(t, 2*time.Second, "every destination routed from memory", func() bool {
		n := r.stats.CacheMisses.Load()
		routeAll()
		return r.stats.CacheMisses.Load() == n
	})
	beats := func(n int) {
		for i := range n {
			for p := range pods {
				do(t, c, "HSET", fmt.Sprintf("coordinator:member:p%d", p), "load", fmt.Sprint(i))
			}
		}
	}
	// In use: every heartbeat is read back, none on a request.
	misses := r.stats.CacheMisses.Load()
	refreshes := r.stats.MemberRefreshes.Load()
	for range 3 {
		beats(1)
		eventually(t, 2*time.Second, "the heartbeats read back", func() bool {
			routeAll()
			for p := range pods {
				if mustEntry(t, r, fmt.Sprintf("p%d", p)).dirtySince.Load() != 0 {
					return false
				}
			}
			return true
		})
	}
	if n := r.stats.MemberRefreshes.Load() - refreshes; n < 3*pods {
		t.Fatalf("%d records re-read for %d heartbeats in use", n, 3*pods)
	}
	if n := r.stats.CacheMisses.Load() - misses; n != 0 {
		t.Fatalf("%d requests missed the cache while pods heartbeat", n)
	}

	// Idle (no request for longer than hotFor): ten heartbeats of each pod
	// cost at most one push each, and no read.
	time.Sleep(time.Duration(hotFor) + 100*time.Millisecond) // no request: the state under test is idleness
	beats(1)
	eventually(t, 2*time.Second, "each pod's first idle heartbeat told", func() bool {
		for p := range pods {
			if mustEntry(t, r, fmt.Sprintf("p%d", p)).dirtySince.Load() == 0 {
				return false
			}
		}
		return true
	})
	written := func() (n uint64) {
		for p := range pods {
			n += mustEntry(t, r, fmt.Sprintf("p%d", p)).writes.Load()
		}
		return n
	}
	before, refreshes := written(), r.stats.MemberRefreshes.Load()
	beats(10)
	// Each server's records connection answers a PING after every push
	// Valkey queued on it for the writes before.
	for addr, node := range r.records.Nodes() {
		if err := node.Do(context.Background(), node.B().Ping().Build()).Error(); err != nil {
			t.Fatalf("PING %s: %v", addr, err)
		}
	}
	if n := written() - before; n != 0 {
		t.Fatalf("idle: told of %d of %d heartbeats of records not read back, want none", n, 10*pods)
	}
	if n := r.stats.MemberRefreshes.Load() - refreshes; n != 0 {
		t.Fatalf("idle: %d records re-read", n)
	}
	// The first request after idleness reads its record (one round trip)
	// and routes by what it finds.
	do(t, c, "HSET", "coordinator:member:p3", "address", "http://127.0.0.1:7999")
	eventually(t, 2*time.Second, "d3 routed to p3's new address", func() bool {
		d, err := route(t, r, "d3", RouteOptions{})
		return err == nil && d.Member.Address == "127.0.0.1:7999"
	})
}

// An entry that leaves the member cache no longer hears of its record's
// writes: every view built from it is rebuilt rather than trusted.
func TestEvictedMemberEntriesRetireTheirViews(t *testing.T) {
	srv := valkeytest.Start(t)
	c := rawClient(t, srv)
	r := newRegistry(t, srv, func(o *Options) { o.CacheSize = 2 })
	for p := range 3 {
		nodeMember(t, c, "coordinator", fmt.Sprintf("p%d", p), 7000+p, 0)
		do(t, c, "SADD", fmt.Sprintf("coordinator:destination:d%d", p), fmt.Sprintf("p%d", p))
	}
	if d, err := route(t, r, "d0", RouteOptions{}); err != nil || d.Member.Address != "127.0.0.1:7000" {
		t.Fatalf("d0: %+v, %v", d, err)
	}
	e0 := mustEntry(t, r, "p0")
	for _, d := range []string{"d1", "d2"} { // p1 and p2 push p0 out of a cache of two
		if _, err := route(t, r, d, RouteOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	if _, ok := r.members.Peek("p0"); ok || !e0.invalid.Load() {
		t.Errorf("p0 still cached (%v) or its entry not retired (%v)", ok, e0.invalid.Load())
	}
	do(t, c, "HSET", "coordinator:member:p0", "address", "http://127.0.0.1:7100")
	eventually(t, 2*time.Second, "d0 routed to p0's new address", func() bool {
		d, err := route(t, r, "d0", RouteOptions{})
		return err == nil && d.Member.Address == "127.0.0.1:7100"
	})
}
