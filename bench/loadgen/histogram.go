package loadgen

import (
	"math"
	"math/bits"
	"sync"
	"time"
)

// Histogram records durations with about 1% relative precision from 1 µs
// to over an hour, HDR-style: 128 linear sub-buckets per power of two.
type Histogram struct {
	mu     sync.Mutex
	counts [64 * subBuckets]uint64
	total  uint64
	max    time.Duration
}

const (
	subBits    = 7
	subBuckets = 1 << subBits
)

func bucketOf(d time.Duration) int {
	us := uint64(d / time.Microsecond)
	if us < subBuckets {
		return int(us)
	}
	exp := bits.Len64(us) - subBits // >= 1; us>>(exp-1) is in [subBuckets, 2*subBuckets)
	return exp*subBuckets + int(us>>(exp-1)) - subBuckets
}

// lowerBound is the smallest duration of bucket i.
func lowerBound(i int) time.Duration {
	exp, sub := i/subBuckets, i%subBuckets
	if exp == 0 {
		return time.Duration(sub) * time.Microsecond
	}
	return time.Duration(uint64(subBuckets+sub)<<(exp-1)) * time.Microsecond
}

// Record adds one observation.
func (h *Histogram) Record(d time.Duration) {
	if d < 0 {
		d = 0
	}
	i := bucketOf(d)
	h.mu.Lock()
	if i >= len(h.counts) {
		i = len(h.counts) - 1
	}
	h.counts[i]++
	h.total++
	if d > h.max {
		h.max = d
	}
	h.mu.Unlock()
}

// Count is the number of observations.
func (h *Histogram) Count() uint64 {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.total
}

// Quantile returns the duration below which q (0..1) of observations fall.
func (h *Histogram) Quantile(q float64) time.Duration {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.total == 0 {
		return 0
	}
	rank := uint64(math.Ceil(q * float64(h.total)))
	if rank == 0 {
		rank = 1
	}
	var seen uint64
	for i, c := range h.counts {
		seen += c
		if seen >= rank {
			if next := lowerBound(i + 1); next-1 < h.max {
				return next - 1
			}
			return h.max
		}
	}
	return h.max
}

// Max is the largest observation.
func (h *Histogram) Max() time.Duration {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.max
}

// Merge adds o's observations to h.
func (h *Histogram) Merge(o *Histogram) {
	o.mu.Lock()
	counts, total, maxD := o.counts, o.total, o.max
	o.mu.Unlock()
	h.mu.Lock()
	defer h.mu.Unlock()
	for i, c := range counts {
		h.counts[i] += c
	}
	h.total += total
	h.max = max(h.max, maxD)
}
