package registry

import (
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/coord-extproc/coord-extproc/internal/valkeytest"
)

// 50 goroutines claiming one empty destination through two registries
// leave exactly one member in the set, and everyone routes to it.
func TestConcurrentClaimsLeaveOneMember(t *testing.T) {
	srv := valkeytest.Start(t)
	c := rawClient(t, srv)
	regs := []*Registry{newRegistry(t, srv, nil), newRegistry(t, srv, nil)}
	for i := 0; i < 5; i++ {
		nodeMember(t, c, "coordinator", fmt.Sprintf("m%d", i), 7000+i, 0)
	}
	var wg sync.WaitGroup
	got := make([]string, 50)
	errs := make([]error, 50)
	for g := 0; g < 50; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			d, err := route(t, regs[g%2], "contended", RouteOptions{ClaimOnMiss: true})
			got[g], errs[g] = d.Member.ID, err
		}()
	}
	wg.Wait()
	set := smembers(t, c, "coordinator:destination:contended")
	if len(set) != 1 {
		t.Fatalf("set after 50 concurrent claims = %v, want exactly one member", set)
	}
	for g := range got {
		if errs[g] != nil || got[g] != set[0] {
			t.Fatalf("goroutine %d routed to %q (%v), want %q", g, got[g], errs[g], set[0])
		}
	}
}

// Concurrent reassignments of one orphan leave no dead id and at least
// one live one.
func TestConcurrentReassignment(t *testing.T) {
	srv := valkeytest.Start(t)
	c := rawClient(t, srv)
	regs := []*Registry{newRegistry(t, srv, nil), newRegistry(t, srv, nil)}
	for i := 0; i < 3; i++ {
		nodeMember(t, c, "coordinator", fmt.Sprintf("live%d", i), 7000+i, 0)
	}
	do(t, c, "SADD", "coordinator:destination:orphan", "dead1", "dead2", "dead3")
	var wg sync.WaitGroup
	var mu sync.Mutex
	results := map[Result]int{}
	for g := 0; g < 40; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			d, err := route(t, regs[g%2], "orphan", RouteOptions{ReassignOrphans: true})
			if err != nil {
				t.Errorf("reassign: %v", err)
				return
			}
			mu.Lock()
			results[d.Result]++
			mu.Unlock()
		}()
	}
	wg.Wait()
	set := smembers(t, c, "coordinator:destination:orphan")
	if len(set) == 0 {
		t.Fatal("set empty after reassignment")
	}
	for _, id := range set {
		if id == "dead1" || id == "dead2" || id == "dead3" {
			t.Fatalf("dead id %q left in %v", id, set)
		}
	}
	if results[ResultOrphanReassigned] == 0 {
		t.Fatalf("results %v: nobody reported orphan_reassigned", results)
	}
}

// A destination fanned out to 3 pods spreads round-robin picks over all 3
// from one Registry: the cache holds candidates, not one picked pod.
func TestPerRequestPickAcrossFanOut(t *testing.T) {
	srv := valkeytest.Start(t)
	c := rawClient(t, srv)
	r := newRegistry(t, srv, nil)
	for i := 0; i < 3; i++ {
		nodeMember(t, c, "coordinator", fmt.Sprintf("m%d", i), 7000+i, 0)
	}
	do(t, c, "SADD", "coordinator:destination:hot", "m0", "m1", "m2")
	counts := map[string]int{}
	for i := 0; i < 30; i++ {
		d, err := route(t, r, "hot", RouteOptions{})
		if err != nil {
			t.Fatal(err)
		}
		counts[d.Member.ID]++
	}
	if len(counts) != 3 || counts["m0"] != 10 || counts["m1"] != 10 || counts["m2"] != 10 {
		t.Fatalf("30 requests spread as %v, want 10 each", counts)
	}
}

// Registry A caches X; another client changes X's set or deletes a member
// record; A's next resolution reflects it within 100 ms, far below the
// cache TTL, without A doing anything.
func TestCrossReplicaCoherence(t *testing.T) {
	srv := valkeytest.Start(t)
	c := rawClient(t, srv)
	a := newRegistry(t, srv, func(o *Options) { o.CacheTTL = time.Hour })
	nodeMember(t, c, "coordinator", "m1", 7001, 0)
	nodeMember(t, c, "coordinator", "m2", 7002, 0)
	do(t, c, "SADD", "coordinator:destination:x", "m1")
	warm := func(t *testing.T) {
		t.Helper()
		if d, err := route(t, a, "x", RouteOptions{}); err != nil {
			t.Fatalf("warm: %+v %v", d, err)
		}
	}
	within := func(t *testing.T, what string, cond func(Decision, error) bool) {
		t.Helper()
		start := time.Now()
		for {
			d, err := route(t, a, "x", RouteOptions{})
			if cond(d, err) {
				t.Logf("%s seen after %s", what, time.Since(start))
				return
			}
			if time.Since(start) > 100*time.Millisecond {
				t.Fatalf("%s not seen within 100ms (last: %+v, %v)", what, d, err)
			}
			time.Sleep(time.Millisecond)
		}
	}
	t.Run("set changed", func(t *testing.T) {
		// The writes above may still be invalidating; once they settle,
		// resolutions are cache hits.
		eventually(t, time.Second, "a cache hit", func() bool {
			hits := a.Stats().CacheHits.Load()
			warm(t)
			return a.Stats().CacheHits.Load() == hits+1
		})
		do(t, c, "SREM", "coordinator:destination:x", "m1")
		do(t, c, "SADD", "coordinator:destination:x", "m2")
		within(t, "set change", func(d Decision, err error) bool { return err == nil && d.Member.ID == "m2" })
	})
	t.Run("member record deleted", func(t *testing.T) {
		warm(t)
		do(t, c, "DEL", "coordinator:member:m2")
		within(t, "member deletion", func(_ Decision, err error) bool { return errors.Is(err, ErrNotFound) })
	})
	t.Run("set deleted", func(t *testing.T) {
		nodeMember(t, c, "coordinator", "m2", 7002, 0)
		within(t, "member back", func(d Decision, err error) bool { return err == nil && d.Member.ID == "m2" })
		do(t, c, "DEL", "coordinator:destination:x")
		within(t, "set deletion", func(_ Decision, err error) bool { return errors.Is(err, ErrNotFound) })
	})
	t.Run("member address changed", func(t *testing.T) {
		// x was just answered 404: the negative cache (negative.go) holds
		// it until the invalidation of this write arrives, like any entry.
		do(t, c, "SADD", "coordinator:destination:x", "m2")
		within(t, "binding after a 404", func(d Decision, err error) bool { return err == nil && d.Member.ID == "m2" })
		do(t, c, "HSET", "coordinator:member:m2", "address", "10.1.2.3:9999")
		within(t, "address change", func(d Decision, err error) bool { return err == nil && d.Member.Address == "10.1.2.3:9999" })
	})
}

// A member record that expires (pod killed, no deregistration) stops
// being routed to once Valkey expires it, without any write by anyone.
func TestExpiredMemberIsDead(t *testing.T) {
	srv := valkeytest.Start(t)
	c := rawClient(t, srv)
	r := newRegistry(t, srv, func(o *Options) { o.CacheTTL = time.Hour })
	nodeMember(t, c, "coordinator", "short", 7001, 0)
	do(t, c, "PEXPIRE", "coordinator:member:short", "300")
	do(t, c, "SADD", "coordinator:destination:d", "short")
	if _, err := route(t, r, "d", RouteOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, 3*time.Second, "expired member no longer routed", func() bool {
		_, err := route(t, r, "d", RouteOptions{})
		return errors.Is(err, ErrNotFound)
	})
}
