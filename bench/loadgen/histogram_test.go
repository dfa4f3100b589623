package loadgen

import (
	"math/rand/v2"
	"slices"
	"testing"
	"time"
)

func TestHistogramQuantilesWithinOnePercent(t *testing.T) {
	var h Histogram
	var all []time.Duration
	r := rand.New(rand.NewPCG(1, 2))
	for i := 0; i < 100000; i++ {
		d := time.Duration(r.ExpFloat64()*float64(300*time.Microsecond)) + time.Microsecond
		all = append(all, d)
		h.Record(d)
	}
	slices.Sort(all)
	for _, q := range []float64{0.5, 0.9, 0.99, 0.999} {
		exact := all[int(q*float64(len(all)))-1]
		got := h.Quantile(q)
		if diff := float64(got-exact) / float64(exact); diff < -0.01 || diff > 0.02 {
			t.Errorf("q%.3f = %s, exact %s (%.2f%%)", q, got, exact, 100*diff)
		}
	}
	if h.Count() != 100000 || h.Max() != all[len(all)-1] {
		t.Fatalf("count %d max %s", h.Count(), h.Max())
	}
}

func TestBucketsAreMonotonic(t *testing.T) {
	prev := -1
	for us := 0; us < 1<<22; us += 1 + us/200 {
		b := bucketOf(time.Duration(us) * time.Microsecond)
		if b < prev {
			t.Fatalf("bucket went back at %dus", us)
		}
		if lb := lowerBound(b); lb > time.Duration(us)*time.Microsecond {
			t.Fatalf("lower bound %s above %dus", lb, us)
		}
		prev = b
	}
}
