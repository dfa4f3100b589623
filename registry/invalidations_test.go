package registry

import (
	"context"
	"fmt"
	"hash/maphash"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/coord-extproc/coord-extproc/internal/valkeytest"
)

func TestInvalidationsRaced(t *testing.T) {
	v := newInvalidations()
	key := "p:member:a"
	other := "p:member:b" // another bucket than key's
	for i := 0; maphash.String(v.seed, other)%invalidationBuckets == maphash.String(v.seed, key)%invalidationBuckets; i++ {
		other = fmt.Sprintf("p:member:b%d", i)
	}
	for _, tc := range []struct {
		name   string
		before func() // before the ticket
		during func() // between the ticket and the check
		raced  bool
	}{
		{"nothing", nil, nil, false},
		{"its key, during the read", nil, func() { v.note(key, v.batch()) }, true},
		{"another key, during the read", nil, func() { v.note(other, v.batch()) }, false},
		{"its key, before the read", func() { v.note(key, v.batch()) }, nil, false},
		{"a flush or lost connection, during the read", nil, v.everything, true},
		{"a late note with an older seq never lowers a newer one", nil, func() {
			old := v.batch()
			v.note(key, v.batch())
			v.note(key, old)
		}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.before != nil {
				tc.before()
			}
			ticket := v.ticket()
			if tc.during != nil {
				tc.during()
			}
			if got := v.raced(key, ticket); got != tc.raced {
				t.Fatalf("raced = %v, want %v", got, tc.raced)
			}
		})
	}
}

// Many pods heartbeating do not make the coordinator re-read what they
// did not change. Destination sets read while heartbeats arrive stay
// trusted (with a check on any invalidation at all, the first version,
// each such read was discarded and redone by a later request: at 200
// pods ~26 commands per heartbeat), and each heartbeat costs at most one
// read of that pod's record.
func TestHeartbeatsDoNotInvalidateOtherReads(t *testing.T) {
	srv := valkeytest.Start(t)
	c := rawClient(t, srv)
	// No expiry within the test, however slow the machine: every re-read
	// counted below is one an invalidation caused.
	r := newRegistry(t, srv, func(o *Options) { o.ProbeInterval, o.CacheTTL = -1, time.Minute })
	const pods, dests = 50, 3000
	for p := range pods {
		nodeMember(t, c, "coordinator", fmt.Sprintf("m%d", p), 7000+p, 0)
	}
	for d := range dests {
		do(t, c, "SADD", fmt.Sprintf("coordinator:destination:d%d", d), fmt.Sprintf("m%d", d%pods))
	}
	ctx := context.Background()
	beats := 0
	stopBeats := make(chan struct{})
	var beating sync.WaitGroup
	beating.Go(func() { // pods heartbeat all along, one after the other
		for {
			select {
			case <-stopBeats:
				return
			default:
			}
			do(t, c, "HSET", fmt.Sprintf("coordinator:member:m%d", beats%pods), "load", fmt.Sprint(beats))
			beats++
		}
	})
	// Every destination read once, as heartbeats arrive.
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Go(func() {
			for d := w; d < dests; d += 4 {
				if _, err := r.Route(ctx, fmt.Sprintf("d%d", d), RouteOptions{}); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	// Then requests over every destination, still as heartbeats arrive:
	// no set is read again, and members only as they change.
	setReads := func() int64 { return valkeytest.Calls(t, c, "smembers") }
	sets0, members0, beats0 := setReads(), valkeytest.Calls(t, c, "hgetall"), valkeytest.Calls(t, c, "hset")
	for w := range 4 {
		wg.Go(func() {
			rnd := rand.New(rand.NewPCG(uint64(w), 1))
			for range 5000 {
				if _, err := r.Route(ctx, fmt.Sprintf("d%d", rnd.IntN(dests)), RouteOptions{}); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	sets, members, hb := setReads()-sets0, valkeytest.Calls(t, c, "hgetall")-members0, valkeytest.Calls(t, c, "hset")-beats0
	close(stopBeats)
	beating.Wait()
	t.Logf("20000 requests during %d heartbeats: %d destination set reads, %d member reads", hb, sets, members)
	// A read that raced with a heartbeat whose key shares its hash bucket
	// is redone (one bucket in 16384): a few, never thousands.
	if sets > 20 {
		t.Errorf("%d destination sets read again though none changed", sets)
	}
	if members > hb+pods {
		t.Errorf("%d member reads for %d heartbeats", members, hb)
	}
}
