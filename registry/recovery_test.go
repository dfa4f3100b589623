package registry

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coord-extproc/coord-extproc/internal/valkeytest"
)

// SPEC §3: after the registry is wiped, every live pod's destinations route
// back to the same pods within one heartbeat interval, and none is claimed
// by another pod meanwhile, although traffic with claim_on_miss keeps
// arriving.
func TestRegistryLoss(t *testing.T) {
	const interval = 400 * time.Millisecond
	for _, wipe := range []string{"FLUSHALL", "restart"} {
		t.Run(wipe, func(t *testing.T) {
			srv := valkeytest.Start(t)
			c := rawClient(t, srv)
			r := newRegistry(t, srv, func(o *Options) { o.ClaimGrace = interval })
			ctx, cancel := context.WithCancel(context.Background())
			var running sync.WaitGroup
			t.Cleanup(func() { cancel(); running.Wait() })

			owner := map[string]string{}
			locks := map[string]string{}
			for i := 0; i < 3; i++ {
				m := newMember(t, c, fmt.Sprintf("pod-%d", i), 7000+i, func(o *MemberOptions) {
					o.TTL, o.HeartbeatInterval = 5*time.Second, interval
				})
				if err := m.Register(ctx, 0); err != nil {
					t.Fatal(err)
				}
				for d := 0; d < 10; d++ {
					dest := fmt.Sprintf("tenant-%d-%d", i, d)
					if err := m.AddToDestination(ctx, dest); err != nil {
						t.Fatal(err)
					}
					owner[dest] = m.ID()
				}
				for l := 0; l < 2 && len(locks) < 5; l++ {
					lock := fmt.Sprintf("tx-%d-%d", i, l)
					if err := m.RegisterLock(ctx, lock, fmt.Sprintf("tenant-%d-0", i), map[string]string{"n": "1"}, time.Minute); err != nil {
						t.Fatal(err)
					}
					locks[lock] = m.ID()
				}
				running.Add(1)
				go func() { defer running.Done(); _ = m.Run(ctx) }()
			}
			opt := RouteOptions{ClaimOnMiss: true, ReassignOrphans: true}
			allRouted := func() bool {
				for dest, want := range owner {
					if d, err := route(t, r, dest, opt); err != nil || d.Member.ID != want {
						return false
					}
				}
				for lock, want := range locks {
					if d, err := r.RouteLock(context.Background(), lock); err != nil || d.Member.ID != want {
						return false
					}
				}
				return true
			}
			eventually(t, 2*time.Second, "initial routing", allRouted)
			// Let the epoch settle so the guard starts from the wipe.
			time.Sleep(interval)

			// Traffic keeps flowing through the wipe.
			var misrouted atomic.Int64
			var stop atomic.Bool
			running.Add(1)
			go func() {
				defer running.Done()
				for !stop.Load() {
					for dest, want := range owner {
						d, err := route(t, r, dest, opt)
						if err == nil && d.Member.ID != want {
							misrouted.Add(1)
						}
					}
				}
			}()

			wiped := time.Now()
			if wipe == "FLUSHALL" {
				do(t, c, "FLUSHALL")
			} else {
				srv.Restart()
			}
			eventually(t, interval+500*time.Millisecond, "every destination and lock routes to its owner again", allRouted)
			t.Logf("%s: all routes back after %s (heartbeat interval %s)", wipe, time.Since(wiped).Round(time.Millisecond), interval)
			stop.Store(true)
			if n := misrouted.Load(); n > 0 {
				t.Fatalf("%d requests were routed to a pod that does not own the destination", n)
			}
			for dest, want := range owner {
				if got := smembers(t, c, "coordinator:destination:"+dest); len(got) != 1 || got[0] != want {
					t.Fatalf("%s bound to %v after recovery, want only %s", dest, got, want)
				}
			}
		})
	}
}

// Within the grace, claims are refused and an empty set is "retry", not
// "not found": the destination may just not be re-asserted yet.
func TestRecoveringAnswersRetryNotNotFound(t *testing.T) {
	srv := valkeytest.Start(t)
	c := rawClient(t, srv)
	r := newRegistry(t, srv, func(o *Options) { o.ClaimGrace = time.Hour })
	nodeMember(t, c, "coordinator", "m", 7001, 0)
	_, err := route(t, r, "never-bound", RouteOptions{ClaimOnMiss: true})
	if !errors.Is(err, ErrRecovering) {
		t.Fatalf("claim within grace: %v, want ErrRecovering", err)
	}
	_, err = route(t, r, "never-bound", RouteOptions{})
	if !errors.Is(err, ErrRecovering) {
		t.Fatalf("unknown destination within grace: %v, want ErrRecovering", err)
	}
	if got := smembers(t, c, "coordinator:destination:never-bound"); len(got) != 0 {
		t.Fatalf("claimed within grace: %v", got)
	}
}
