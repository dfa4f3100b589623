package registry

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coord-extproc/coord-extproc/internal/logbuf"
	"github.com/coord-extproc/coord-extproc/internal/valkeytest"
)

// SPEC §3 under real faults: Valkey killed with SIGKILL and restarted empty
// on the same port (or FLUSHALL), repeatedly, while three Go members
// heartbeat every second and traffic flows. No destination may gain a
// second member, no live member's destination or lock may be answered
// 404/410, and every member must re-assert within one heartbeat interval
// of Valkey answering again.
func TestWipeUnderTraffic(t *testing.T) {
	for _, wipe := range []string{"restart", "FLUSHALL"} {
		t.Run(wipe, func(t *testing.T) {
			t.Parallel()
			runWipeRounds(t, wipe, 10)
		})
	}
}

type trafficCounts struct {
	requests, misrouted, negative, noCapacity, recovering, unavailable atomic.Int64
	mu                                                                 sync.Mutex
	samples                                                            []string
	since                                                              atomic.Int64 // unix ns of the last wipe
}

func (tc *trafficCounts) bad(counter *atomic.Int64, what string) {
	counter.Add(1)
	tc.mu.Lock()
	defer tc.mu.Unlock()
	if len(tc.samples) < 8 {
		tc.samples = append(tc.samples, fmt.Sprintf("+%s %s", time.Duration(time.Now().UnixNano()-tc.since.Load()).Round(time.Millisecond), what))
	}
}

func runWipeRounds(t *testing.T, wipe string, rounds int) {
	const interval = time.Second
	srv := valkeytest.Start(t)
	c := rawClient(t, srv)
	var logBuf logbuf.Buffer
	r := newRegistry(t, srv, func(o *Options) {
		o.HoldMax = 5 * time.Second
		o.Logger = slog.New(slog.NewTextHandler(&logBuf, &slog.HandlerOptions{Level: slog.LevelDebug}))
	})
	t.Cleanup(func() {
		if t.Failed() {
			b := logBuf.String()
			t.Logf("registry log (last 20000 bytes):\n%s", b[max(0, len(b)-20000):])
		}
	})
	ctx, cancel := context.WithCancel(context.Background())
	var running sync.WaitGroup
	var stop atomic.Bool
	t.Cleanup(func() { stop.Store(true); cancel(); running.Wait() })

	owner, locks := map[string]string{}, map[string]string{}
	var ids []string
	for i := 0; i < 3; i++ {
		m := newMember(t, srv.Client(t), fmt.Sprintf("pod-%d", i), 7000+i, func(o *MemberOptions) {
			o.TTL, o.HeartbeatInterval, o.Timeout = 5*time.Second, interval, 500*time.Millisecond
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
		for l := 0; l < 4 && len(locks) < 10; l++ {
			lock := fmt.Sprintf("tx-%d-%d", i, l)
			if err := m.RegisterLock(ctx, lock, fmt.Sprintf("tenant-%d-0", i), map[string]string{"n": "1"}, time.Minute); err != nil {
				t.Fatal(err)
			}
			locks[lock] = m.ID()
		}
		ids = append(ids, m.ID())
		running.Add(1)
		go func() { defer running.Done(); _ = m.Run(ctx) }()
	}
	var lastMiss string
	allRouted := func() bool {
		for dest, want := range owner {
			if d, err := route(t, r, dest, RouteOptions{}); err != nil || d.Member.ID != want {
				lastMiss = fmt.Sprintf("%s: %+v %v; set %v", dest, d, err, smembers(t, c, "coordinator:destination:"+dest))
				return false
			}
		}
		for lock, want := range locks {
			if d, err := r.RouteLock(context.Background(), lock); err != nil || d.Member.ID != want {
				lastMiss = fmt.Sprintf("%s: %+v %v", lock, d, err)
				return false
			}
		}
		return true
	}
	eventually(t, 3*time.Second, "initial routing", allRouted)

	var tc trafficCounts
	classify := func(what string, got string, want string, err error) {
		tc.requests.Add(1)
		switch {
		case err == nil && got != want:
			tc.bad(&tc.misrouted, fmt.Sprintf("%s routed to %s, owner %s", what, got, want))
		case err == nil:
		case errors.Is(err, ErrRecovering):
			tc.recovering.Add(1)
		case errors.Is(err, ErrRegistryUnavailable):
			tc.unavailable.Add(1) // Valkey down and nothing cached: allowed
		case errors.Is(err, ErrNoCapacity):
			tc.bad(&tc.noCapacity, fmt.Sprintf("%s: %v", what, err))
		default:
			tc.bad(&tc.negative, fmt.Sprintf("%s: %v", what, err))
		}
	}
	for _, opt := range []RouteOptions{{}, claimAll} {
		running.Add(1)
		go func() {
			defer running.Done()
			for !stop.Load() {
				for dest, want := range owner {
					d, err := route(t, r, dest, opt)
					classify(dest, d.Member.ID, want, err)
				}
				for lock, want := range locks {
					d, err := r.RouteLock(context.Background(), lock)
					classify(lock, d.Member.ID, want, err)
				}
				time.Sleep(time.Millisecond)
			}
		}()
	}

	var delays []time.Duration
	var released []time.Duration
	for round := 0; round < rounds; round++ {
		// Hit a different phase of the heartbeat each time.
		time.Sleep(time.Duration(rand.Int64N(int64(interval))))
		tc.since.Store(time.Now().UnixNano())
		var answering time.Time
		if wipe == "FLUSHALL" {
			do(t, c, "FLUSHALL")
			answering = time.Now()
		} else {
			srv.Restart() // SIGKILL, then a fresh empty server on the same port
			answering = time.Now()
		}
		back := map[string]time.Duration{}
		for len(back) < len(ids) && time.Since(answering) < 3*interval {
			for _, id := range ids {
				if _, ok := back[id]; ok {
					continue
				}
				n, err := c.Do(context.Background(), c.B().Exists().Key("coordinator:member:"+id).Build()).AsInt64()
				if err == nil && n == 1 {
					back[id] = time.Since(answering)
				}
			}
			time.Sleep(2 * time.Millisecond)
		}
		if len(back) < len(ids) {
			t.Fatalf("round %d: only %v re-registered within %s", round, back, 3*interval)
		}
		last := slices.Max(slices.Collect(maps.Values(back)))
		for _, d := range back {
			delays = append(delays, d)
		}
		eventually(t, 2*time.Second, "every destination and lock routes to its owner again", func() bool {
			if allRouted() {
				return true
			}
			if time.Since(answering) > 2*time.Second+last {
				t.Logf("round %d: still wrong: %s", round, lastMiss)
			}
			return false
		})
		eventually(t, time.Second, "the hold is released", func() bool {
			_, err := route(t, r, "never-bound", RouteOptions{})
			return errors.Is(err, ErrNotFound)
		})
		released = append(released, time.Since(answering)-last)
	}
	stop.Store(true)

	for dest, want := range owner {
		if got := smembers(t, c, "coordinator:destination:"+dest); len(got) != 1 || got[0] != want {
			t.Errorf("%s bound to %v after %d wipes, want only %s", dest, got, rounds, want)
		}
	}
	slices.Sort(delays)
	t.Logf("%s x%d: re-assertion after Valkey answered: min %s p50 %s p90 %s max %s (n=%d, heartbeat %s)", wipe, rounds,
		delays[0].Round(time.Millisecond), delays[len(delays)/2].Round(time.Millisecond),
		delays[len(delays)*9/10].Round(time.Millisecond), delays[len(delays)-1].Round(time.Millisecond), len(delays), interval)
	t.Logf("%s x%d: %d requests: %d recovering, %d registry unavailable, %d misrouted, %d 404/410, %d no capacity; all routes back and hold released within %s of the last member's return (max)",
		wipe, rounds, tc.requests.Load(), tc.recovering.Load(), tc.unavailable.Load(), tc.misrouted.Load(), tc.negative.Load(), tc.noCapacity.Load(),
		slices.Max(released).Round(time.Millisecond))
	if n := tc.misrouted.Load() + tc.negative.Load() + tc.noCapacity.Load(); n > 0 {
		t.Errorf("%d wrong answers during wipes; samples (time since the wipe):\n%s", n, strings.Join(tc.samples, "\n"))
	}
	// One interval to the next tick, plus the retries on fresh connections.
	if worst := delays[len(delays)-1]; worst > interval+200*time.Millisecond {
		t.Errorf("a member re-asserted %s after Valkey answered, more than one heartbeat interval (%s)", worst, interval)
	}
}
