package registry

import "time"

// The negative cache: destinations read empty, kept apart from the
// destination cache so that a flood of unknown ids (each a miss) cannot
// push real bindings out of it, and so that a repeated unknown id costs no
// round trip.
//
// Invariant: a 404 is answered from an empty read no older than
// NegativeTTL, with no invalidation of its key since (the same freshness
// as every entry: tracking, flush generation, shard lane). That read is
// the confirmation SPEC §4 asks of a negative answer; past NegativeTTL, or
// invalid, the set is read again first. The recovery hold is checked after
// it either way (recovery.go).

// storeDest puts a destination set read from Valkey in the cache it
// belongs to, and drops it from the other.
func (r *Registry) storeDest(destID string, e *setEntry) {
	if len(e.set.ids) == 0 {
		r.negative.Add(destID, e)
		r.sets.Remove(destID)
		return
	}
	r.sets.Add(destID, e)
	r.negative.Remove(destID)
}

// forgetDest drops whatever is cached for destID (this replica just wrote
// it; the invalidation is on its way).
func (r *Registry) forgetDest(destID string) {
	r.sets.Remove(destID)
	r.negative.Remove(destID)
}

// confirmedEmpty reports whether e, an empty set, may answer a 404 without
// another read.
func (r *Registry) confirmedEmpty(e *setEntry, now time.Time) bool {
	return r.opt.NegativeTTL > 0 && len(e.set.ids) == 0 && r.fresh(&e.freshness, now) &&
		time.Duration(r.mono(now)-e.fetched) < r.opt.NegativeTTL
}
