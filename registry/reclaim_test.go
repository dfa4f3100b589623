package registry

import (
	"fmt"
	"slices"
	"testing"
	"time"
)

// Issue #24 finding 3: destinations claimed on miss whose members all died
// and that nobody touched are deleted in the background; a binding a pod
// created, a claim with a live member, and a claim still asked for stay.
func TestUnusedClaimsAreReclaimed(t *testing.T) {
	for _, mode := range deploymentModes {
		t.Run(mode, func(t *testing.T) {
			t.Parallel()
			d := startDeployment(t, mode)
			c := d.client(t)
			nodeMember(t, c, "coordinator", "pod-dies", 7001, 0)
			r := d.registry(t, func(o *Options) { o.Timeout = patientTimeout; o.ReclaimAfter = time.Second })
			const n = 30
			for i := range n {
				if dec, err := route(t, r, fmt.Sprintf("junk-%d", i), RouteOptions{ClaimOnMiss: true}); err != nil || dec.Result != ResultClaimed {
					t.Fatalf("claim: %+v %v", dec, err)
				}
			}
			do(t, c, "SADD", "coordinator:destination:created", "pod-dies") // a pod's own binding
			nodeMember(t, c, "coordinator", "pod-lives", 7002, 0)
			seq := r.inv.seq.Load()
			do(t, c, "DEL", "coordinator:member:pod-dies")
			eventually(t, time.Second, "the death seen", func() bool { return r.inv.seq.Load() != seq })
			if dec, err := route(t, r, "kept", RouteOptions{ClaimOnMiss: true}); err != nil || dec.Member.ID != "pod-lives" {
				t.Fatalf("claim on the survivor: %+v %v", dec, err)
			}

			// A reclaimed claim leaves the index after it is counted.
			eventually(t, 30*time.Second, "unused claims reclaimed and unindexed", func() bool {
				idx, err := do(t, c, "ZRANGE", "coordinator:claims", "0", "-1").AsStrSlice()
				return r.Stats().ClaimsReclaimed.Load() == n && err == nil && slices.Equal(idx, []string{"kept"})
			})
			for i := range n {
				if got := smembers(t, c, fmt.Sprintf("coordinator:destination:junk-%d", i)); len(got) != 0 {
					t.Fatalf("junk-%d still bound to %v", i, got)
				}
			}
			if got := smembers(t, c, "coordinator:destination:created"); !slices.Equal(got, []string{"pod-dies"}) {
				t.Errorf("created binding: %v, want it untouched", got)
			}
			if got := smembers(t, c, "coordinator:destination:kept"); !slices.Equal(got, []string{"pod-lives"}) {
				t.Errorf("live claim: %v", got)
			}
		})
	}
}

// A claim whose member died but that clients keep asking for (each ask a
// read that touches the set) is not reclaimed while they do.
func TestClaimStillAskedForStays(t *testing.T) {
	d := startDeployment(t, "standalone")
	c := d.client(t)
	nodeMember(t, c, "coordinator", "pod-dies", 7001, 0)
	r := d.registry(t, func(o *Options) { o.Timeout = patientTimeout; o.ReclaimAfter = 2 * time.Second })
	if _, err := route(t, r, "asked", RouteOptions{ClaimOnMiss: true}); err != nil {
		t.Fatal(err)
	}
	do(t, c, "DEL", "coordinator:member:pod-dies")
	// A client asks every 200 ms for 6 s: three reclaim windows.
	for end := time.Now().Add(6 * time.Second); time.Now().Before(end); time.Sleep(200 * time.Millisecond) {
		do(t, c, "SMEMBERS", "coordinator:destination:asked") // what a cache miss reads
	}
	if got := smembers(t, c, "coordinator:destination:asked"); !slices.Equal(got, []string{"pod-dies"}) {
		t.Fatalf("asked-for claim: %v, want it kept", got)
	}
	if n := r.Stats().ClaimsReclaimed.Load(); n != 0 {
		t.Fatalf("%d reclaimed", n)
	}
	// Once nobody asks, it goes.
	eventually(t, 30*time.Second, "reclaimed once idle", func() bool { return r.Stats().ClaimsReclaimed.Load() == 1 })
}
