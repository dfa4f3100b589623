package registry

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/coord-extproc/coord-extproc/internal/valkeytest"
)

// SPEC §8.1: a down mark written by one replica makes every replica treat
// the member as dead within milliseconds, with every consequence of §4, on
// each Valkey deployment (the mark's key lives in another slot than the
// member's record on Cluster).
func TestDownMarkConsequences(t *testing.T) {
	for _, mode := range deploymentModes {
		t.Run(mode, func(t *testing.T) {
			t.Parallel()
			d := startDeployment(t, mode)
			c := d.client(t)
			patient := func(o *Options) { o.Timeout = patientTimeout } // decisions, not latency
			r1, r2 := d.registry(t, patient), d.registry(t, patient)
			ctx := context.Background()
			nodeMember(t, c, "coordinator", "a", 7001, 0)
			nodeMember(t, c, "coordinator", "b", 7002, 0)
			do(t, c, "SADD", "coordinator:destination:fan", "a", "b")
			do(t, c, "SADD", "coordinator:destination:solo", "a")
			do(t, c, "HSET", "coordinator:lock:tx", "podId", "a", "destinationId", "solo")
			for _, r := range []*Registry{r1, r2} { // both warm, from cache from now on
				for range 4 {
					if _, err := route(t, r, "fan", RouteOptions{}); err != nil {
						t.Fatal(err)
					}
				}
				if _, err := r.RouteLock(ctx, "tx"); err != nil {
					t.Fatal(err)
				}
			}
			sus, err := r1.MembersAt(ctx, "127.0.0.1:7001")
			if err != nil || len(sus) != 1 || sus[0].ID != "a" || sus[0].Raw != "http://127.0.0.1:7001" {
				t.Fatalf("MembersAt = %+v, %v", sus, err)
			}
			if marked, err := r1.MarkDown(ctx, sus[0]); !marked || err != nil {
				t.Fatalf("MarkDown = %v, %v", marked, err)
			}
			start := time.Now()
			eventually(t, time.Second, "replica 2 stops routing fan to a", func() bool {
				for range 4 {
					if d, err := route(t, r2, "fan", RouteOptions{}); err != nil || d.Member.ID != "b" {
						return false
					}
				}
				return true
			})
			t.Logf("%s: mark seen by the other replica within %s", mode, time.Since(start))

			if _, err := r2.RouteLock(ctx, "tx"); !errors.Is(err, ErrLockOwnerGone) {
				t.Errorf("lock of a marked owner: %v, want ErrLockOwnerGone", err)
			}
			if _, err := route(t, r2, "solo", RouteOptions{}); !errors.Is(err, ErrNotFound) {
				t.Errorf("solo without reassign: %v, want ErrNotFound", err)
			}
			if d, err := route(t, r2, "solo", RouteOptions{ReassignOrphans: true}); err != nil || d.Member.ID != "b" || d.Result != ResultOrphanReassigned {
				t.Errorf("solo with reassign: %+v, %v; want b, orphan_reassigned", d, err)
			}
			for i := range 6 {
				if d, err := route(t, r1, fmt.Sprintf("new%d", i), RouteOptions{ClaimOnMiss: true}); err != nil || d.Member.ID != "b" {
					t.Errorf("claim %d: %+v, %v; want b", i, d, err)
				}
			}
			if s, _ := r2.MembersAt(ctx, "127.0.0.1:7001"); len(s) != 0 {
				t.Errorf("a marked member is still a suspect to report: %+v", s)
			}
			ms, err := r1.ListMembers(ctx)
			if err != nil || len(ms) != 2 || !ms[0].Down || ms[0].Live || ms[1].Down {
				t.Errorf("ListMembers = %+v, %v; want a down, b live", ms, err)
			}
			markTTL, _ := do(t, c, "PTTL", "coordinator:down:a").AsInt64()
			recTTL, _ := do(t, c, "PTTL", "coordinator:member:a").AsInt64()
			if markTTL <= 0 || markTTL > recTTL+50 {
				t.Errorf("mark PTTL %d ms, record PTTL %d ms: the mark must expire no later than the record", markTTL, recTTL)
			}
			if got := r2.Marked(); len(got) != 1 || got[0].ID != "a" || got[0].Addr != "127.0.0.1:7001" {
				t.Errorf("Marked = %+v", got)
			}
		})
	}
}

// What lifts a mark, and what a mark never does.
func TestDownMarkLifted(t *testing.T) {
	d := startDeployment(t, "standalone")
	c := d.client(t)
	r := d.registry(t, func(o *Options) { o.Timeout = patientTimeout })
	ctx := context.Background()
	sus := Suspect{ID: "a", Addr: "127.0.0.1:7001", Raw: "http://127.0.0.1:7001"}

	live := func(t *testing.T) bool {
		dec, err := route(t, r, "solo", RouteOptions{})
		return err == nil && dec.Member.ID == "a"
	}
	tests := []struct {
		name string
		lift func(t *testing.T)
	}{
		{"address changed", func(t *testing.T) {
			do(t, c, "HSET", "coordinator:member:a", "address", "http://127.0.0.1:7003")
		}},
		{"go member registers again", func(t *testing.T) {
			if err := newMember(t, c, "a", 7001, nil).Register(ctx, 0); err != nil {
				t.Fatal(err)
			}
		}},
		{"cleared after a connect succeeded", func(t *testing.T) {
			if ok, err := r.ClearDown(ctx, sus); !ok || err != nil {
				t.Fatalf("ClearDown = %v, %v", ok, err)
			}
		}},
		{"mark expired", func(t *testing.T) {
			do(t, c, "PEXPIRE", "coordinator:down:a", "1")
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			clearRegistry(t, r, c)
			nodeMember(t, c, "coordinator", "a", 7001, 0)
			do(t, c, "SADD", "coordinator:destination:solo", "a")
			if !live(t) {
				t.Fatal("not routed before the mark")
			}
			if ok, err := r.MarkDown(ctx, sus); !ok || err != nil {
				t.Fatalf("MarkDown = %v, %v", ok, err)
			}
			eventually(t, time.Second, "the mark takes effect", func() bool { return !live(t) })
			tt.lift(t)
			eventually(t, time.Second, "routed again", func() bool { return live(t) })
		})
	}

	t.Run("nothing marked for a moved or gone member", func(t *testing.T) {
		clearRegistry(t, r, c)
		nodeMember(t, c, "coordinator", "a", 7002, 0) // the report named 7001
		if ok, err := r.MarkDown(ctx, sus); ok || err != nil {
			t.Errorf("moved: MarkDown = %v, %v; want false", ok, err)
		}
		if ok, err := r.MarkDown(ctx, Suspect{ID: "gone", Addr: "127.0.0.1:7001"}); ok || err != nil {
			t.Errorf("gone: MarkDown = %v, %v; want false", ok, err)
		}
		if n, _ := do(t, c, "EXISTS", "coordinator:down:a", "coordinator:down:gone").AsInt64(); n != 0 {
			t.Errorf("%d marks written", n)
		}
	})
	t.Run("a clear never removes a mark for another address", func(t *testing.T) {
		do(t, c, "SET", "coordinator:down:a", "http://127.0.0.1:7002")
		if ok, err := r.ClearDown(ctx, sus); ok || err != nil {
			t.Errorf("ClearDown = %v, %v; want false", ok, err)
		}
		if v, _ := do(t, c, "GET", "coordinator:down:a").ToString(); v != "http://127.0.0.1:7002" {
			t.Errorf("mark = %q", v)
		}
	})
	t.Run("the pod side skips marked peers", func(t *testing.T) {
		clearRegistry(t, r, c)
		nodeMember(t, c, "coordinator", "a", 7001, 0)
		nodeMember(t, c, "coordinator", "b", 7002, 5)
		do(t, c, "SET", "coordinator:down:a", "http://127.0.0.1:7001")
		m := newMember(t, c, "c", 7004, nil)
		peers, err := m.ListPeerLoad(ctx)
		if err != nil || len(peers) != 1 || peers[0].ID != "b" {
			t.Errorf("ListPeerLoad = %+v, %v; want only b", peers, err)
		}
	})
}

// A pod may write anything into its own record; coordinators read only
// the fields they use (issue 24 #4: a 60 MB field once cost every replica
// 720 MiB in 10 s). The big field never leaves Valkey.
func TestMemberReadsOnlyUsedFields(t *testing.T) {
	srv := valkeytest.Start(t)
	c := rawClient(t, srv)
	r := newRegistry(t, srv, nil)
	nodeMember(t, c, "coordinator", "fat", 7001, 0)
	do(t, c, "HSET", "coordinator:member:fat", "junk", strings.Repeat("x", 8<<20))
	do(t, c, "SADD", "coordinator:destination:d", "fat")
	do(t, c, "HSET", "coordinator:lock:tx", "podId", "fat", "destinationId", "d", "meta", strings.Repeat("y", 8<<20))
	sent := func() int64 {
		info, _ := do(t, c, "INFO", "stats").ToString()
		for _, l := range strings.Split(info, "\r\n") {
			if v, ok := strings.CutPrefix(l, "total_net_output_bytes:"); ok {
				n, _ := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
				return n
			}
		}
		return 0
	}
	before := sent()
	ctx := context.Background()
	for i := range 5 {
		if d, err := route(t, r, "d", RouteOptions{}); err != nil || d.Member.ID != "fat" {
			t.Fatalf("route %d: %+v %v", i, d, err)
		}
		if d, err := r.RouteLock(ctx, "tx"); err != nil || d.Member.ID != "fat" {
			t.Fatalf("lock %d: %+v %v", i, d, err)
		}
		r.members.Purge() // read the record again each time
		r.locks.Purge()
	}
	if n := sent() - before; n > 1<<20 {
		t.Fatalf("Valkey sent %d bytes for 10 routings: the big fields were read", n)
	}
}
