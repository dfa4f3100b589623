package strategy

import "sync/atomic"

// leastLoaded picks the candidate with the lowest load. Equal loads are
// common (idle pods all report 0), so ties rotate instead of always landing
// on the first one.
type leastLoaded struct {
	ties atomic.Uint64
}

// NewLeastLoaded returns the least-loaded strategy.
func NewLeastLoaded() Strategy { return &leastLoaded{} }

func (l *leastLoaded) Pick(_ string, c []Candidate) (Candidate, bool) {
	if len(c) == 0 {
		return Candidate{}, false
	}
	low, ties := c[0].Load, 0
	for _, x := range c {
		switch {
		case x.Load < low:
			low, ties = x.Load, 1
		case x.Load == low:
			ties++
		}
	}
	k := l.ties.Add(1) % uint64(ties)
	for _, x := range c {
		if x.Load != low {
			continue
		}
		if k == 0 {
			return x, true
		}
		k--
	}
	return c[0], true // unreachable: the loop above always finds the k-th tie
}

// random picks uniformly; intN is injected so tests can be deterministic.
type random struct {
	intN func(int) int
}

// NewRandom returns the random strategy; intN(n) must return a value in
// [0, n) and be safe for concurrent use (math/rand/v2.IntN is).
func NewRandom(intN func(int) int) Strategy { return &random{intN: intN} }

// IgnoresLoad: random never reads loads (LoadBlind).
func (r *random) IgnoresLoad() {}

func (r *random) Pick(_ string, c []Candidate) (Candidate, bool) {
	if len(c) == 0 {
		return Candidate{}, false
	}
	return c[r.intN(len(c))], true
}
