package registry

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/valkey-io/valkey-go"

	"github.com/coord-extproc/coord-extproc/internal/valkeytest"
)

// handoffFleet is three Go members on one Valkey; the hook of each
// records what it carried and can be made to fail.
type handoffFleet struct {
	c       valkey.Client
	members map[string]*Member
	mu      sync.Mutex
	carried map[string]string // destination -> member that received it
	failing atomic.Bool
	block   chan struct{} // when set, the hook waits on it
	entered chan struct{} // closed when a hook starts waiting on block
}

func newHandoffFleet(t *testing.T, srv *valkeytest.Server, ids ...string) *handoffFleet {
	t.Helper()
	f := &handoffFleet{c: rawClient(t, srv), members: map[string]*Member{}, carried: map[string]string{}}
	for i, id := range ids {
		m := newMember(t, f.c, id, 7400+i, func(o *MemberOptions) {
			o.Handoff = func(ctx context.Context, dest string, to PeerLoad) error {
				if f.block != nil {
					close(f.entered)
					select {
					case <-f.block:
					case <-ctx.Done():
						return ctx.Err()
					}
				}
				if f.failing.Load() {
					return errors.New("the peer refused the state")
				}
				f.mu.Lock()
				f.carried[dest] = to.ID
				f.mu.Unlock()
				return nil
			}
		})
		if err := m.Register(context.Background(), 0); err != nil {
			t.Fatal(err)
		}
		f.members[id] = m
	}
	return f
}

// blockedHandoff starts a handoff of dest from a to b whose hook waits
// for f.block to close; it returns once the hook runs.
func (f *handoffFleet) blockedHandoff(t *testing.T, dest string) <-chan error {
	t.Helper()
	f.block, f.entered = make(chan struct{}), make(chan struct{})
	a := f.members["a"]
	_ = a.AddToDestination(context.Background(), dest)
	done := make(chan error, 1)
	go func() { _, err := a.Handoff(context.Background(), dest, "b"); done <- err }()
	// The hook itself, not the start count: the handoff's reads come
	// before it (a pause of Valkey during them once hung this test).
	select {
	case <-f.entered:
	case err := <-done:
		t.Fatalf("the handoff ended before its hook: %v", err)
	case <-time.After(5 * time.Second):
		t.Fatal("the hook did not run within 5s")
	}
	return done
}

// SPEC §8.2: a draining member takes nothing new (claims, reassignments,
// fan-out) and keeps routing what it holds; a handoff carries the state
// first, then switches the owner in one step, and the coordinator routes
// to the new owner at once.
func TestDrainAndHandoff(t *testing.T) {
	srv := valkeytest.Start(t)
	r := newRegistry(t, srv, nil)
	f := newHandoffFleet(t, srv, "a", "b", "c")
	ctx := context.Background()
	a := f.members["a"]
	if err := a.AddToDestination(ctx, "held"); err != nil {
		t.Fatal(err)
	}
	if err := a.Drain(ctx); err != nil {
		t.Fatal(err)
	}
	eventually(t, time.Second, "claims skip the draining member", func() bool {
		for i := range 9 {
			d, err := route(t, r, fmt.Sprintf("new-%d-%d", time.Now().UnixNano(), i), RouteOptions{ClaimOnMiss: true})
			if err != nil || d.Member.ID == "a" {
				return false
			}
		}
		return true
	})
	if d, err := route(t, r, "held", RouteOptions{}); err != nil || d.Member.ID != "a" {
		t.Fatalf("a draining member's destination: %+v %v, want still a", d, err)
	}
	eventually(t, 5*time.Second, "the draining gauge counts a", func() bool { return r.Stats().DrainingMembers.Load() == 1 })
	if p, err := f.members["b"].FanOut(ctx, "held"); err != nil || p.ID == "a" {
		t.Fatalf("fan-out picked %+v %v", p, err)
	}
	do(t, f.c, "SREM", "coordinator:destination:held", "b", "c") // undo the fan-out: a alone again

	to, err := a.Handoff(ctx, "held", "c")
	if err != nil || to.ID != "c" {
		t.Fatalf("Handoff = %+v %v", to, err)
	}
	if got := smembers(t, f.c, "coordinator:destination:held"); !slices.Equal(got, []string{"c"}) {
		t.Fatalf("set after the handoff = %v, want [c]", got)
	}
	if f.carried["held"] != "c" {
		t.Fatalf("the hook carried %v", f.carried)
	}
	eventually(t, time.Second, "the coordinator routes to the new owner", func() bool {
		d, err := route(t, r, "held", RouteOptions{})
		return err == nil && d.Member.ID == "c"
	})
	if slices.Contains(a.Destinations(), "held") {
		t.Error("the old owner still remembers the destination (its recovery would re-assert it)")
	}
	if st := a.HandoffStats(); st.Done.Load() != 1 || st.Failed.Load() != 0 {
		t.Errorf("stats: done %d failed %d", st.Done.Load(), st.Failed.Load())
	}
}

// Faults: a failing hook, a target that dies during the hook, two
// handoffs of one destination at once, Valkey gone at the switch: the
// destination is always with exactly one live owner.
func TestHandoffFaults(t *testing.T) {
	ctx := context.Background()
	t.Run("hook fails", func(t *testing.T) {
		srv := valkeytest.Start(t)
		f := newHandoffFleet(t, srv, "a", "b")
		_ = f.members["a"].AddToDestination(ctx, "d")
		f.failing.Store(true)
		if _, err := f.members["a"].Handoff(ctx, "d", "b"); err == nil {
			t.Fatal("a failing hook reported success")
		}
		if got := smembers(t, f.c, "coordinator:destination:d"); !slices.Equal(got, []string{"a"}) {
			t.Fatalf("set = %v, want [a]", got)
		}
		if !slices.Contains(f.members["a"].Destinations(), "d") {
			t.Fatal("the old owner forgot a destination it still holds")
		}
	})
	t.Run("target dies during the hook", func(t *testing.T) {
		srv := valkeytest.Start(t)
		f := newHandoffFleet(t, srv, "a", "b")
		done := f.blockedHandoff(t, "d")
		do(t, f.c, "DEL", "coordinator:member:b") // b dies (its record goes) while it receives
		close(f.block)
		if err := <-done; err == nil {
			t.Fatal("handed off to a dead target")
		}
		if got := smembers(t, f.c, "coordinator:destination:d"); !slices.Equal(got, []string{"a"}) {
			t.Fatalf("set = %v, want [a]", got)
		}
	})
	t.Run("two handoffs of one destination", func(t *testing.T) {
		srv := valkeytest.Start(t)
		f := newHandoffFleet(t, srv, "a", "b", "c")
		_ = f.members["a"].AddToDestination(ctx, "d")
		var wg sync.WaitGroup
		errs := make([]error, 2)
		for i, to := range []string{"b", "c"} {
			wg.Add(1)
			go func() { defer wg.Done(); _, errs[i] = f.members["a"].Handoff(ctx, "d", to) }()
		}
		wg.Wait()
		won := 0
		for _, err := range errs {
			if err == nil {
				won++
			} else if !errors.Is(err, ErrHandoffLost) {
				t.Errorf("loser: %v, want ErrHandoffLost", err)
			}
		}
		got := smembers(t, f.c, "coordinator:destination:d")
		if won != 1 || len(got) != 1 || got[0] == "a" {
			t.Fatalf("%d won; set %v; want one winner and one new owner", won, got)
		}
	})
	t.Run("valkey gone at the switch", func(t *testing.T) {
		srv := valkeytest.Start(t)
		f := newHandoffFleet(t, srv, "a", "b")
		done := f.blockedHandoff(t, "d")
		srv.Pause()
		close(f.block)
		err := <-done
		srv.Resume()
		if err == nil {
			t.Fatal("a switch against a paused Valkey reported success")
		}
		if got := smembers(t, f.c, "coordinator:destination:d"); !slices.Equal(got, []string{"a"}) {
			t.Fatalf("set = %v, want [a] (no half switch)", got)
		}
	})
}

// Leave drains, hands everything off spread over the peers, deregisters;
// a fan-out set just loses the leaver. Rebalance requests queued for a
// running member are carried out.
func TestLeaveAndRequests(t *testing.T) {
	srv := valkeytest.Start(t)
	r := newRegistry(t, srv, nil)
	f := newHandoffFleet(t, srv, "a", "b", "c")
	ctx := context.Background()
	a := f.members["a"]
	for i := range 10 {
		_ = a.AddToDestination(ctx, fmt.Sprintf("d%d", i))
	}
	do(t, f.c, "SADD", "coordinator:destination:fan", "a", "b")
	_ = a.Track("fan")
	if err := a.Leave(ctx); err != nil {
		t.Fatal(err)
	}
	owners := map[string]int{}
	for i := range 10 {
		got := smembers(t, f.c, fmt.Sprintf("coordinator:destination:d%d", i))
		if len(got) != 1 || got[0] == "a" {
			t.Fatalf("d%d = %v after a left", i, got)
		}
		owners[got[0]]++
	}
	if owners["b"] == 0 || owners["c"] == 0 {
		t.Errorf("handoffs not spread: %v", owners)
	}
	if got := smembers(t, f.c, "coordinator:destination:fan"); !slices.Equal(got, []string{"b"}) {
		t.Errorf("fan = %v, want [b]", got)
	}
	if n, _ := do(t, f.c, "EXISTS", "coordinator:member:a").AsInt64(); n != 0 {
		t.Error("a is still registered")
	}

	b := f.members["b"]
	rctx, cancel := context.WithCancel(ctx)
	defer cancel()
	b.opt.HandoffPoll = 20 * time.Millisecond
	go func() { _ = b.Run(rctx) }()
	do(t, f.c, "RPUSH", "coordinator:handoff:b", `{"dest":"d0","to":"c"}`, `not json`, `{"dest":"../x","to":"c"}`)
	var moved string
	for i := range 10 {
		if got := smembers(t, f.c, fmt.Sprintf("coordinator:destination:d%d", i)); len(got) == 1 && got[0] == "b" {
			moved = fmt.Sprintf("d%d", i)
			do(t, f.c, "RPUSH", "coordinator:handoff:b", fmt.Sprintf(`{"dest":%q,"to":"c"}`, moved))
			break
		}
	}
	if moved == "" {
		t.Fatal("b holds nothing to move")
	}
	eventually(t, 3*time.Second, "the queued request carried out", func() bool {
		got := smembers(t, f.c, "coordinator:destination:"+moved)
		return len(got) == 1 && got[0] == "c"
	})
	eventually(t, time.Second, "the coordinator follows", func() bool {
		d, err := route(t, r, moved, RouteOptions{})
		return err == nil && d.Member.ID == "c"
	})
}

// Create routes and pods bind a new destination only if nobody else holds
// it: Registry.Bind and Member.Claim answer ErrConflict and write nothing.
func TestBindNeverAddsASecondOwner(t *testing.T) {
	srv := valkeytest.Start(t)
	r := newRegistry(t, srv, nil)
	f := newHandoffFleet(t, srv, "a", "b")
	ctx := context.Background()
	if err := r.Bind(ctx, "new", "a"); err != nil {
		t.Fatal(err)
	}
	if err := r.Bind(ctx, "new", "a"); err != nil {
		t.Fatalf("binding the holder again: %v", err)
	}
	if err := r.Bind(ctx, "new", "b"); !errors.Is(err, ErrConflict) {
		t.Fatalf("second owner via Bind: %v, want ErrConflict", err)
	}
	if err := f.members["b"].Claim(ctx, "new"); !errors.Is(err, ErrConflict) {
		t.Fatalf("second owner via Claim: %v, want ErrConflict", err)
	}
	if err := f.members["b"].Claim(ctx, "other"); err != nil || !slices.Contains(f.members["b"].Destinations(), "other") {
		t.Fatalf("Claim of a free destination: %v", err)
	}
	if got := smembers(t, f.c, "coordinator:destination:new"); !slices.Equal(got, []string{"a"}) {
		t.Fatalf("new = %v, want [a]", got)
	}
}
