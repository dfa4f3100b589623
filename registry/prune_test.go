package registry

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/coord-extproc/coord-extproc/internal/valkeytest"
)

// junkIDs adds n ids without any record to P:members, as a hostile pod
// can (issue #24 finding 4).
func junkIDs(t *testing.T, add func(args ...string), n int) {
	t.Helper()
	args := []string{"SADD", "coordinator:members"}
	for i := range n {
		args = append(args, fmt.Sprintf("junk-%06d", i))
	}
	add(args...)
}

// Ids without a record leave P:members in the background on every
// deployment; live members, and a Node pod's record without address (the
// evidence restore.go works from), stay.
func TestPruneRemovesIdsWithoutRecord(t *testing.T) {
	for _, mode := range deploymentModes {
		t.Run(mode, func(t *testing.T) {
			t.Parallel()
			d := startDeployment(t, mode)
			c := d.client(t)
			nodeMember(t, c, "coordinator", "pod-a", 7001, 0)
			do(t, c, "SADD", "coordinator:members", "pod-wiped")
			do(t, c, "HSET", "coordinator:member:pod-wiped", "load", "3")
			junkIDs(t, func(args ...string) { do(t, c, args...) }, 3000)
			r := d.registry(t, func(o *Options) { o.Timeout = patientTimeout; o.PruneInterval = 50 * time.Millisecond })

			// The count is added when a pass ends, after its SREMs.
			eventually(t, 20*time.Second, "junk pruned and counted", func() bool {
				n, _ := do(t, c, "SCARD", "coordinator:members").AsInt64()
				return n == 2 && r.Stats().MembersPruned.Load() >= 3000
			})
			if got := smembers(t, c, "coordinator:members"); !slices.Equal(got, []string{"pod-a", "pod-wiped"}) {
				t.Fatalf("members after pruning: %v", got)
			}
			if n := r.Stats().MembersPruned.Load(); n != 3000 {
				t.Errorf("MembersPruned = %d, want 3000", n)
			}
		})
	}
}

// Over MaxMembers, P:members is not read: claims answer 503 at once (one
// small reply, not the whole set) and a prune starts at once, after which
// claims work again.
func TestMembersOverTheBoundAreNotRead(t *testing.T) {
	srv := valkeytest.Start(t)
	c := rawClient(t, srv)
	nodeMember(t, c, "coordinator", "pod-a", 7001, 0)
	junkIDs(t, func(args ...string) { do(t, c, args...) }, 500)
	// Without a pruner the refusal stands (with one, any read of the set,
	// the registry's own at start included, kicks a pass that may finish
	// before the first claim: it did under load).
	still := newRegistry(t, srv, func(o *Options) { o.MaxMembers = 100; o.PruneInterval = -1 })
	if _, err := route(t, still, "t1", RouteOptions{ClaimOnMiss: true}); !errors.Is(err, ErrTooManyRegistered) {
		t.Fatalf("claim with 501 ids registered: %v, want ErrTooManyRegistered", err)
	}
	r := newRegistry(t, srv, func(o *Options) { o.MaxMembers = 100; o.PruneInterval = time.Hour })
	// The hour-long interval never comes: a refused read kicked a pass.
	eventually(t, 20*time.Second, "claim after the kicked prune", func() bool {
		d, err := route(t, r, "t1", RouteOptions{ClaimOnMiss: true})
		return err == nil && d.Member.ID == "pod-a"
	})
	// The count is added when the pass ends, after its SREMs.
	eventually(t, 5*time.Second, "the 500 junk ids counted", func() bool { return r.Stats().MembersPruned.Load() == 500 })
}

// A pod that registers between the pass's EXISTS and its SREM loses its
// id for a moment; the re-check puts it back, and a Go Member's heartbeat
// does too.
func TestPrunedRegistrationComesBack(t *testing.T) {
	srv := valkeytest.Start(t)
	c := rawClient(t, srv)
	r := newRegistry(t, srv, func(o *Options) { o.PruneInterval = -1 })
	do(t, c, "SADD", "coordinator:members", "pod-late", "junk")

	removed := r.prune.pass()
	slices.Sort(removed)
	if !slices.Equal(removed, []string{"junk", "pod-late"}) {
		t.Fatalf("removed %v", removed)
	}
	// pod-late's registration lands now, after the removal.
	do(t, c, "HSET", "coordinator:member:pod-late", "address", "http://127.0.0.1:7002", "load", "0")
	r.prune.recheck(removed)
	if got := smembers(t, c, "coordinator:members"); !slices.Equal(got, []string{"pod-late"}) {
		t.Fatalf("members after the re-check: %v, want [pod-late]", got)
	}

	m := newMember(t, c, "pod-go", 7003, nil)
	if err := m.Register(context.Background(), 0); err != nil {
		t.Fatal(err)
	}
	do(t, c, "SREM", "coordinator:members", "pod-go") // a prune raced with its registration
	if _, err := m.Heartbeat(context.Background(), 1); err != nil {
		t.Fatal(err)
	}
	if got := smembers(t, c, "coordinator:members"); !slices.Contains(got, "pod-go") {
		t.Fatalf("members after pod-go's heartbeat: %v", got)
	}
}
