package registry

import (
	"context"
	"fmt"
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
	r := newRegistry(t, srv, nil)
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
	r := newRegistry(t, srv, func(o *Options) { o.ClaimGrace = 0 }) // guard on, default grace
	nodeMember(t, c, "coordinator", "m", 7001, 0)
	// Settle the epoch so the guard is not what is measured.
	do(t, c, "SET", "coordinator:registry-epoch", "1")
	if _, err := route(t, r, "first", RouteOptions{ClaimOnMiss: true}); err != nil {
		t.Fatal(err)
	}
	before := commandCount(t, c)
	const n = 20
	for i := 0; i < n; i++ {
		if d, err := route(t, r, fmt.Sprintf("new-%d", i), RouteOptions{ClaimOnMiss: true}); err != nil || d.Result != ResultClaimed {
			t.Fatalf("claim: %+v %v", d, err)
		}
	}
	per := float64(commandCount(t, c)-before) / n
	t.Logf("claim on miss: %.2f Valkey commands per claim", per)
	if per > 3 {
		t.Fatalf("claim costs %.2f Valkey commands, want at most 3", per)
	}
}
