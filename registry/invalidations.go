package registry

import (
	"hash/maphash"
	"sync/atomic"
)

// invalidations guards cached entries against invalidations that race
// with their reads. The invariant: an entry read from Valkey is trusted
// only if no invalidation of its own key (nor a flush or lost connection)
// was processed between the moment its read began and the moment it was
// stored where invalidateKey finds it. A load takes a ticket before
// reading and, once the entry is stored, asks raced(key, ticket); if so
// it marks the entry for re-validation.
//
// Which invalidation reaches which cached data: a destination set's, a
// lock's, the members set's and a down mark's mark that entry (a down
// mark also rebuilds every view, memberGen); a member record's marks the
// record written and leaves views alone until a re-read finds more than
// a new load (refresh.go states that rule); a flush or lost connection
// marks everything.
//
// Invalidations of other keys do not count. They did in the first
// version, which made reads self-defeating on a registry with many
// heartbeating pods: every heartbeat is an invalidation, so with 200 pods
// a read taking a millisecond or two was discarded about one time in
// three and re-read, ~26 commands per heartbeat; with 1 000 pods the
// re-reads outran the decision budget (503s).
type invalidations struct {
	seq  atomic.Uint64 // one per batch of invalidation messages
	all  atomic.Uint64 // the last seq that invalidated everything
	seed maphash.Seed
	// buckets hold, per hash of a key, the highest seq that invalidated a
	// key there. Two keys sharing a bucket only cost a needless re-read.
	buckets [invalidationBuckets]atomic.Uint64
}

const invalidationBuckets = 16384 // 128 KiB

func newInvalidations() *invalidations { return &invalidations{seed: maphash.MakeSeed()} }

// ticket is taken before a read.
func (v *invalidations) ticket() uint64 { return v.seq.Load() }

// batch starts a batch of invalidations and returns its seq; note each of
// its keys before marking any entry (the order raced relies on).
func (v *invalidations) batch() uint64 { return v.seq.Add(1) }

// everything records a flush or lost connection: every read in flight
// raced.
func (v *invalidations) everything() { raise(&v.all, v.seq.Add(1)) }

func (v *invalidations) note(key string, seq uint64) {
	raise(&v.buckets[maphash.String(v.seed, key)%invalidationBuckets], seq)
}

// raced reports whether key may have been invalidated after ticket.
func (v *invalidations) raced(key string, ticket uint64) bool {
	if v.seq.Load() == ticket {
		return false
	}
	return v.all.Load() > ticket || v.buckets[maphash.String(v.seed, key)%invalidationBuckets].Load() > ticket
}

// raise sets a to at least n (callbacks of several connections may run
// at once).
func raise(a *atomic.Uint64, n uint64) {
	for {
		old := a.Load()
		if old >= n || a.CompareAndSwap(old, n) {
			return
		}
	}
}
