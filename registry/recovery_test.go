package registry

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/coord-extproc/coord-extproc/internal/valkeytest"
)

var claimAll = RouteOptions{ClaimOnMiss: true, ReassignOrphans: true}

// SPEC §3: a registry with no epoch marker (fresh, or written only by Node
// pods) is first contact, not a wipe: every negative answer is given at
// once.
func TestFirstContactAnswersAtOnce(t *testing.T) {
	for _, tc := range []struct {
		name     string
		populate func(t *testing.T, srv *valkeytest.Server)
	}{
		{"node-written registry", func(t *testing.T, srv *valkeytest.Server) {
			c := rawClient(t, srv)
			nodeMember(t, c, "coordinator", "pod-a", 18080, 0)
			do(t, c, "SADD", "coordinator:destination:orphan", "pod-gone")
			do(t, c, "HSET", "coordinator:lock:tx-gone", "podId", "pod-gone", "destinationId", "orphan")
		}},
		{"brand-new registry", func(*testing.T, *valkeytest.Server) {}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			srv := valkeytest.Start(t)
			c := rawClient(t, srv)
			tc.populate(t, srv)
			r := newRegistry(t, srv, nil)
			if tc.name == "brand-new registry" {
				// The first pod registers after the coordinator started.
				if err := newMember(t, c, "pod-a", 18080, nil).Register(context.Background(), 0); err != nil {
					t.Fatal(err)
				}
				do(t, c, "SADD", "coordinator:destination:orphan", "pod-gone")
				do(t, c, "HSET", "coordinator:lock:tx-gone", "podId", "pod-gone", "destinationId", "orphan")
			}
			ctx := context.Background()
			if _, err := route(t, r, "unknown", RouteOptions{}); !errors.Is(err, ErrNotFound) {
				t.Errorf("unknown destination: %v, want ErrNotFound", err)
			}
			if _, err := r.Lookup(ctx, "unknown"); !errors.Is(err, ErrNotFound) {
				t.Errorf("lookup (delete) of unknown destination: %v, want ErrNotFound", err)
			}
			if _, err := route(t, r, "orphan", RouteOptions{}); !errors.Is(err, ErrNotFound) {
				t.Errorf("orphan without reassignment: %v, want ErrNotFound", err)
			}
			if _, err := r.RouteLock(ctx, "tx-unknown"); !errors.Is(err, ErrLockNotFound) {
				t.Errorf("unknown lock: %v, want ErrLockNotFound", err)
			}
			if _, err := r.RouteLock(ctx, "tx-gone"); !errors.Is(err, ErrLockOwnerGone) {
				t.Errorf("lock of a gone owner: %v, want ErrLockOwnerGone", err)
			}
			if d, err := route(t, r, "new", claimAll); err != nil || d.Result != ResultClaimed {
				t.Errorf("claim: %+v %v, want claimed", d, err)
			}
			if d, err := route(t, r, "orphan", claimAll); err != nil || d.Result != ResultOrphanReassigned {
				t.Errorf("reassignment: %+v %v, want orphan_reassigned", d, err)
			}
			hs, err := r.RecoveryHold(ctx)
			if err != nil || hs.Epoch == "" || len(hs.Held) != 0 {
				t.Fatalf("recovery key after first contact: %+v %v, want an epoch and nothing held", hs, err)
			}
		})
	}
}

// A lost connection to a server that kept its data is no wipe: nothing is
// held, and a 404 is still a 404 right after it.
func TestReconnectWithoutWipeHoldsNothing(t *testing.T) {
	srv := valkeytest.Start(t)
	c := rawClient(t, srv)
	r := newRegistry(t, srv, nil)
	nodeMember(t, c, "coordinator", "pod-a", 7001, 0)
	do(t, c, "SADD", "coordinator:destination:d", "pod-a")
	if _, err := route(t, r, "d", RouteOptions{}); err != nil {
		t.Fatal(err)
	}
	seq := r.recovery.seq.Load()
	do(t, c, "CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes")
	eventually(t, 2*time.Second, "the registry saw its connections drop", func() bool { return r.recovery.seq.Load() != seq })
	if _, err := route(t, r, "unknown", RouteOptions{}); !errors.Is(err, ErrNotFound) {
		t.Fatalf("unknown destination after a reconnect: %v, want ErrNotFound", err)
	}
	if hs, err := r.RecoveryHold(context.Background()); err != nil || len(hs.Held) != 0 {
		t.Fatalf("hold after a reconnect: %+v %v, want none", hs, err)
	}
}

// During a hold every negative decision is "Registry recovering", never
// "No capacity" or a 404/410, while present destinations route; the hold
// ends at HoldMax for members that never return (Node pods cannot
// re-register), and then 404s, claims and reassignments work again.
func TestHoldForMembersThatNeverReturn(t *testing.T) {
	const holdMax = 1500 * time.Millisecond
	srv := valkeytest.Start(t)
	c := rawClient(t, srv)
	r := newRegistry(t, srv, func(o *Options) { o.HoldMax = holdMax })
	ctx := context.Background()
	nodeMember(t, c, "coordinator", "node-a", 7001, 0)
	nodeMember(t, c, "coordinator", "node-b", 7002, 0)
	do(t, c, "SADD", "coordinator:destination:da", "node-a")
	do(t, c, "SADD", "coordinator:destination:db", "node-b")
	for _, d := range []string{"da", "db"} {
		if _, err := route(t, r, d, RouteOptions{}); err != nil {
			t.Fatal(err)
		}
	}

	wiped := time.Now()
	do(t, c, "FLUSHALL")
	// A Go pod comes back at once with its destination; the Node pods never do.
	back := newMember(t, c, "go-pod", 7003, nil)
	if err := back.AddToDestination(ctx, "present"); err != nil {
		t.Fatal(err)
	}
	if err := back.Register(ctx, 0); err != nil {
		t.Fatal(err)
	}
	do(t, c, "SADD", "coordinator:destination:orphan", "node-a")
	do(t, c, "HSET", "coordinator:lock:tx", "podId", "node-a", "destinationId", "da")

	checks := []struct {
		name string
		do   func() error
	}{
		{"unknown destination", func() error { _, err := route(t, r, "da", RouteOptions{}); return err }},
		{"claim", func() error { _, err := route(t, r, "new", claimAll); return err }},
		{"orphan reassignment", func() error { _, err := route(t, r, "orphan", claimAll); return err }},
		{"orphan without reassignment", func() error { _, err := route(t, r, "orphan", RouteOptions{}); return err }},
		{"delete lookup", func() error { _, err := r.Lookup(ctx, "db"); return err }},
		{"unknown lock", func() error { _, err := r.RouteLock(ctx, "tx-unknown"); return err }},
		{"lock of a held owner", func() error { _, err := r.RouteLock(ctx, "tx"); return err }},
	}
	for _, ck := range checks {
		if err := ck.do(); !errors.Is(err, ErrRecovering) {
			t.Errorf("%s during the hold: %v, want ErrRecovering", ck.name, err)
		}
	}
	if d, err := route(t, r, "present", RouteOptions{}); err != nil || d.Member.ID != "go-pod" {
		t.Errorf("re-asserted destination during the hold: %+v %v, want go-pod", d, err)
	}
	hs, err := r.RecoveryHold(ctx)
	if err != nil || len(hs.Held) != 2 {
		t.Fatalf("hold = %+v %v, want node-a and node-b held", hs, err)
	}
	if n := r.Stats().HeldMembers.Load(); n != 2 {
		t.Errorf("HeldMembers = %d during the hold, want 2", n)
	}

	ended := waitHoldEnd(t, r, "da", wiped, holdMax+time.Second)
	if n := r.Stats().HeldMembers.Load(); n != 0 {
		t.Errorf("HeldMembers = %d after the hold, want 0", n)
	}
	if ended < holdMax-200*time.Millisecond {
		t.Fatalf("hold ended after %s, before its bound %s, with members still away", ended, holdMax)
	}
	t.Logf("hold for members that never returned ended %s after the wipe (bound %s)", ended.Round(time.Millisecond), holdMax)
	if d, err := route(t, r, "new", claimAll); err != nil || d.Result != ResultClaimed {
		t.Errorf("claim after the hold: %+v %v", d, err)
	}
	if d, err := route(t, r, "orphan", claimAll); err != nil || d.Result != ResultOrphanReassigned {
		t.Errorf("reassignment after the hold: %+v %v", d, err)
	}
	if _, err := r.RouteLock(ctx, "tx-unknown"); !errors.Is(err, ErrLockNotFound) {
		t.Errorf("unknown lock after the hold: %v", err)
	}
}

// Every replica sees the same hold, including one started during it, and
// all release within 100 ms of the last held member's re-registration.
func TestReplicasAgreeOnTheHold(t *testing.T) {
	srv := valkeytest.Start(t)
	c := rawClient(t, srv)
	ctx := context.Background()
	r1 := newRegistry(t, srv, nil)
	var members []*Member
	for i := 0; i < 3; i++ {
		m := newMember(t, c, fmt.Sprintf("pod-%d", i), 7000+i, nil)
		if err := m.AddToDestination(ctx, fmt.Sprintf("d%d", i)); err != nil {
			t.Fatal(err)
		}
		if err := m.Register(ctx, 0); err != nil {
			t.Fatal(err)
		}
		members = append(members, m)
		if _, err := route(t, r1, fmt.Sprintf("d%d", i), RouteOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	do(t, c, "FLUSHALL")
	eventually(t, 2*time.Second, "r1 wrote its hold", func() bool {
		hs, err := r1.RecoveryHold(ctx)
		return err == nil && len(hs.Held) == 3
	})
	r2 := newRegistry(t, srv, nil) // started during the hold
	for name, r := range map[string]*Registry{"r1": r1, "r2 (started during the hold)": r2} {
		if _, err := route(t, r, "d0", RouteOptions{}); !errors.Is(err, ErrRecovering) {
			t.Fatalf("%s: held destination: %v, want ErrRecovering", name, err)
		}
	}
	for _, m := range members[:2] {
		if rec, err := m.Heartbeat(ctx, 0); err != nil || !rec {
			t.Fatalf("heartbeat of %s: recovered=%v %v", m.ID(), rec, err)
		}
	}
	for name, r := range map[string]*Registry{"r1": r1, "r2": r2} {
		// Another client's write reaches a replica with its invalidation,
		// within milliseconds, not at once: until then the replica answers
		// from what it read during the hold (it failed so under load).
		eventually(t, time.Second, name+": the re-asserted destination routes", func() bool {
			d, err := route(t, r, "d0", RouteOptions{})
			return err == nil && d.Member.ID == "pod-0"
		})
		if _, err := route(t, r, "unknown", RouteOptions{}); !errors.Is(err, ErrRecovering) {
			t.Fatalf("%s: unknown destination while pod-2 is held: %v, want ErrRecovering", name, err)
		}
	}
	back := time.Now()
	if rec, err := members[2].Heartbeat(ctx, 0); err != nil || !rec {
		t.Fatalf("heartbeat of pod-2: recovered=%v %v", rec, err)
	}
	for name, r := range map[string]*Registry{"r1": r1, "r2": r2} {
		for {
			_, err := route(t, r, "unknown", RouteOptions{})
			if errors.Is(err, ErrNotFound) {
				break
			}
			if since := time.Since(back); since > 100*time.Millisecond {
				t.Fatalf("%s still holding %s after the last member returned: %v", name, since, err)
			}
			time.Sleep(time.Millisecond)
		}
		t.Logf("%s released the hold %s after the last held member re-registered", name, time.Since(back).Round(100*time.Microsecond))
	}
}
