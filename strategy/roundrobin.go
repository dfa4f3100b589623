package strategy

import (
	"hash/maphash"
	"sync"
	"sync/atomic"
)

const (
	rrShards = 64
	// DefaultCursorLimit bounds the cursors kept per shard; a full shard is
	// reset, which only restarts rotation for the destinations in it.
	DefaultCursorLimit = 4096
)

// roundRobin keeps one cursor per destination so that a destination fanned
// out to N pods sends every N-th request to each, independently of traffic
// to other destinations.
type roundRobin struct {
	seed   maphash.Seed
	limit  int
	shards [rrShards]rrShard
	// starts hands each new cursor the next starting offset, so that new
	// destinations (claims, creates) spread over the pods instead of all
	// starting on the first one.
	starts atomic.Uint64
}

type rrShard struct {
	mu      sync.RWMutex
	cursors map[string]*atomic.Uint64
}

// NewRoundRobin returns the round-robin strategy. limit bounds the cursors
// kept per shard (0 means DefaultCursorLimit).
func NewRoundRobin(limit int) Strategy {
	if limit <= 0 {
		limit = DefaultCursorLimit
	}
	rr := &roundRobin{seed: maphash.MakeSeed(), limit: limit}
	for i := range rr.shards {
		rr.shards[i].cursors = make(map[string]*atomic.Uint64)
	}
	return rr
}

// IgnoresLoad: round-robin never reads loads (LoadBlind).
func (rr *roundRobin) IgnoresLoad() {}

func (rr *roundRobin) Pick(destID string, c []Candidate) (Candidate, bool) {
	switch len(c) {
	case 0:
		return Candidate{}, false
	case 1:
		return c[0], true
	}
	n := rr.cursor(destID).Add(1) - 1
	return c[n%uint64(len(c))], true
}

func (rr *roundRobin) cursor(destID string) *atomic.Uint64 {
	s := &rr.shards[maphash.String(rr.seed, destID)%rrShards]
	s.mu.RLock()
	cur := s.cursors[destID]
	s.mu.RUnlock()
	if cur != nil {
		return cur
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if cur = s.cursors[destID]; cur != nil {
		return cur
	}
	if len(s.cursors) >= rr.limit {
		clear(s.cursors)
	}
	cur = new(atomic.Uint64)
	cur.Store(rr.starts.Add(1) - 1)
	s.cursors[destID] = cur
	return cur
}
