package registry

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/valkey-io/valkey-go"

	"github.com/coord-extproc/coord-extproc/internal/valkeytest"
)

// nodePod plays a @platformatic/coordinator Member with its exact
// commands: register (SADD members, HSET address+load, EXPIRE), then a
// heartbeat every interval (HSET load, EXPIRE), which after a wipe
// re-creates the record with load alone. It stops when ctx ends; the
// channel closes once no heartbeat is in flight.
func nodePod(ctx context.Context, t *testing.T, c valkey.Client, id string, port int, ttl, every time.Duration) <-chan struct{} {
	t.Helper()
	key := "coordinator:member:" + id
	secs := strconv.Itoa(int(ttl.Seconds()))
	do(t, c, "SADD", "coordinator:members", id)
	do(t, c, "HSET", key, "address", fmt.Sprintf("http://127.0.0.1:%d", port), "load", "0")
	do(t, c, "EXPIRE", key, secs)
	done := make(chan struct{})
	go func() {
		defer close(done)
		tk := time.NewTicker(every)
		defer tk.Stop()
		for n := 1; ; n++ {
			select {
			case <-ctx.Done():
				return
			case <-tk.C:
			}
			cctx, cancel := context.WithTimeout(ctx, time.Second)
			c.DoMulti(cctx, c.B().Hset().Key(key).FieldValue().FieldValue("load", strconv.Itoa(n%3)).Build(),
				c.B().Expire().Key(key).Seconds(int64(ttl.Seconds())).Build())
			cancel()
		}
	}()
	return done
}

// SPEC §3 "Node pods after a wipe": Node pods heartbeating every second
// route again within 3 s of a FLUSHALL and of a restart of Valkey empty,
// and stay routed (fan-out sets whole, no second owner); a pod whose
// heartbeats stopped before the wipe is not restored.
func TestNodeFleetRestoredAfterWipe(t *testing.T) {
	wipes := []struct {
		name string
		wipe func(srv *valkeytest.Server, c valkey.Client)
	}{
		{"FLUSHALL", func(_ *valkeytest.Server, c valkey.Client) { do(t, c, "FLUSHALL") }},
		{"SIGKILL and empty restart", func(srv *valkeytest.Server, _ valkey.Client) { srv.Restart() }},
	}
	for _, w := range wipes {
		t.Run(w.name, func(t *testing.T) {
			srv := valkeytest.Start(t)
			c := rawClient(t, srv)
			r := newRegistry(t, srv, func(o *Options) { o.HoldMax = 4 * time.Second })
			ctx, stop := context.WithCancel(context.Background())
			t.Cleanup(stop)
			nodePod(ctx, t, c, "node-a", 7001, 30*time.Second, time.Second)
			nodePod(ctx, t, c, "node-b", 7002, 30*time.Second, time.Second)
			stoppedCtx, stopC := context.WithCancel(ctx)
			cBeating := nodePod(stoppedCtx, t, c, "node-c", 7003, 30*time.Second, time.Second)
			bindings := map[string][]string{"da": {"node-a"}, "db": {"node-b"}, "fan": {"node-a", "node-b"}, "dc": {"node-c"}}
			for d, ids := range bindings {
				do(t, c, append([]string{"SADD", "coordinator:destination:" + d}, ids...)...)
			}
			var last string
			t.Cleanup(func() {
				if t.Failed() {
					t.Logf("last routing error: %s", last)
				}
			})
			routes := func(d string, want ...string) bool {
				got := map[string]bool{}
				for range 4 {
					dec, err := route(t, r, d, RouteOptions{})
					if err != nil {
						last = fmt.Sprintf("%s: %v", d, err)
						return false
					}
					got[dec.Member.ID] = true
				}
				for _, id := range want {
					if !got[id] {
						return false
					}
				}
				if len(got) != len(want) {
					last = fmt.Sprintf("%s: routed to %v, want %v", d, got, want)
				}
				return len(got) == len(want)
			}
			for d, ids := range bindings {
				eventually(t, 2*time.Second, "warm "+d, func() bool { return routes(d, ids...) })
			}
			stopC() // node-c stops heartbeating before the wipe: no evidence later
			<-cBeating

			w.wipe(srv, c)
			wiped := time.Now()
			// The replica has observed the wipe once the silent pod's
			// destination answers "recovering" (its set is gone, it is held).
			eventually(t, 3*time.Second, "the wipe observed", func() bool {
				_, err := route(t, r, "dc", RouteOptions{})
				return errors.Is(err, ErrRecovering)
			})
			eventually(t, 3*time.Second, "the Node pods' destinations route to them again", func() bool {
				return routes("da", "node-a") && routes("db", "node-b") && routes("fan", "node-a", "node-b")
			})
			t.Logf("%s: Node fleet routed again %s after the wipe", w.name, time.Since(wiped).Round(time.Millisecond))
			// It stays so: two more heartbeats later, nothing moved.
			time.Sleep(2 * time.Second) // two heartbeats of the Node pods: the state must hold, not just appear
			for d, ids := range bindings {
				if d == "dc" {
					continue
				}
				if !routes(d, ids...) {
					t.Errorf("%s no longer routes to %v", d, ids)
				}
				if got := smembers(t, c, "coordinator:destination:"+d); !slices.Equal(got, ids) {
					t.Errorf("%s = %v after the restore, want %v", d, got, ids)
				}
			}
			if got := smembers(t, c, "coordinator:members"); !slices.Equal(got, []string{"node-a", "node-b"}) {
				t.Errorf("members = %v, want node-a and node-b (node-c sent no heartbeat)", got)
			}
			if n, _ := do(t, c, "EXISTS", "coordinator:member:node-c", "coordinator:destination:dc").AsInt64(); n != 0 {
				t.Errorf("node-c (silent since before the wipe) was restored")
			}
			if _, err := route(t, r, "dc", RouteOptions{}); !errors.Is(err, ErrRecovering) && !errors.Is(err, ErrNotFound) {
				t.Errorf("dc: %v, want recovering or not found", err)
			}
		})
	}
}

// SPEC §3: a hold ends at the latest after the held members' own TTL (as
// observed), not after the flag: members with a 3 s TTL that never return
// are released within TTL + 1.5 s of the wipe although the flag says 30 s.
func TestHoldEndsByMemberTTL(t *testing.T) {
	const ttl = 3 * time.Second
	srv := valkeytest.Start(t)
	c := rawClient(t, srv)
	r := newRegistry(t, srv, func(o *Options) { o.HoldMax = 30 * time.Second })
	hbCtx, stopHeartbeats := context.WithCancel(context.Background())
	t.Cleanup(stopHeartbeats)
	var beating []<-chan struct{}
	for i, id := range []string{"short-a", "short-b"} {
		do(t, c, "SADD", "coordinator:destination:d-"+id, id)
		// Node pods with a 3 s TTL, heartbeating until the wipe, never after.
		beating = append(beating, nodePod(hbCtx, t, c, id, 7100+i, ttl, 300*time.Millisecond))
		if _, err := route(t, r, "d-"+id, RouteOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	// TTLs are observed in the background (never on the request path).
	eventually(t, 5*time.Second, "the members' TTLs observed", func() bool {
		return r.ttls.get("short-a") > 0 && r.ttls.get("short-b") > 0
	})
	stopHeartbeats()
	for _, b := range beating {
		<-b // no heartbeat may land after the wipe: that would be evidence to restore them
	}
	do(t, c, "FLUSHALL")
	wiped := time.Now()
	eventually(t, time.Second, "the wipe observed", func() bool {
		_, err := route(t, r, "d-short-a", RouteOptions{})
		return errors.Is(err, ErrRecovering)
	})
	ended := waitHoldEnd(t, r, "d-short-a", wiped, ttl+1500*time.Millisecond)
	t.Logf("hold for 3 s-TTL members ended %s after the wipe (flag 30 s)", ended.Round(time.Millisecond))
	if ended < ttl-time.Second {
		t.Fatalf("hold ended after %s, before the members' TTL %s", ended, ttl)
	}
}

// Anything read back about the hold is clamped to what a replica could
// have written: a deadline far ahead and an epoch from the future hold no
// longer than the hold's maximum.
func TestHoldReadBackIsClamped(t *testing.T) {
	const holdMax = 1500 * time.Millisecond
	srv := valkeytest.Start(t)
	c := rawClient(t, srv)
	r := newRegistry(t, srv, func(o *Options) { o.HoldMax = holdMax })
	nodeMember(t, c, "coordinator", "m", 7001, 0)
	eventually(t, time.Second, "epoch written", func() bool {
		n, _ := do(t, c, "HEXISTS", "coordinator:recovery", "epoch").AsInt64()
		return n == 1
	})
	for _, tc := range []struct{ name, field, value string }{
		{"held deadline in the year 5138", "held:ghost", "99999999999999"},
		{"epoch from the future", "epoch", "99999999999999-evil"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			do(t, c, "HSET", "coordinator:recovery", tc.field, tc.value)
			start := time.Now()
			eventually(t, holdMax+2*time.Second, "claims work again", func() bool {
				d, err := route(t, r, fmt.Sprintf("claim-%d", time.Now().UnixNano()), RouteOptions{ClaimOnMiss: true})
				return err == nil && d.Result == ResultClaimed
			})
			t.Logf("%s: claims answered again %s later (hold max %s)", tc.name, time.Since(start).Round(time.Millisecond), holdMax)
		})
	}
}

// A member's TTL as observed is the TTL its heartbeat set, not the PTTL
// left when it happened to be read (up to a heartbeat short: a hold once
// ended a second early). Read for pods with a 5 s TTL beating every 1 s.
func TestMemberTTLObservedWhole(t *testing.T) {
	srv := valkeytest.Start(t)
	c := rawClient(t, srv)
	r := newRegistry(t, srv, func(o *Options) { o.CacheTTL = 300 * time.Millisecond }) // refresh passes every 100 ms
	ctx, stop := context.WithCancel(context.Background())
	t.Cleanup(stop)
	ids := []string{"p0", "p1", "p2", "p3", "p4", "p5"}
	for i, id := range ids {
		nodePod(ctx, t, c, id, 7200+i, 5*time.Second, time.Second)
		time.Sleep(150 * time.Millisecond) // staggered: each read lands at another point of its heartbeat cycle
	}
	eventually(t, 5*time.Second, "every TTL observed", func() bool {
		for _, id := range ids {
			if r.ttls.get(id) == 0 {
				return false
			}
		}
		return true
	})
	for _, id := range ids {
		if got := r.ttls.get(id); got != 5*time.Second {
			t.Errorf("%s: TTL observed %s, want 5s", id, got)
		}
	}
}
