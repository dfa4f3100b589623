package registry

import (
	"context"
	"testing"
	"time"

	"github.com/coord-extproc/coord-extproc/internal/valkeytest"
)

// A decision's budget cuts every Valkey call made under it, against a real
// server that stopped answering.
func TestBudgetCutsValkeyCalls(t *testing.T) {
	srv := valkeytest.Start(t)
	// A per-call timeout far from the budget, so a busy machine's late
	// timers (a 10 ms one fired after 48 ms once) cannot blur the two.
	// Under load a call already written to the hung server once lasted
	// until valkey-go dropped the connection (ConnWriteTimeout, 1 s) after
	// its 10 ms budget: the budget then ends the chain after that call, so
	// the bound is that one call, still far below the chain without budget.
	const perCall = 2 * time.Second
	r := newRegistry(t, srv, func(o *Options) { o.Timeout = perCall })
	srv.Pause()
	t.Cleanup(srv.Resume)
	for _, tc := range []struct {
		name     string
		ctx      context.Context
		min, max time.Duration
	}{
		{"budget of 10ms", WithBudget(context.Background(), 10*time.Millisecond), 0, DefaultConnTimeout + 500*time.Millisecond},
		// Without a budget every call of the chain (a Lookup makes up to
		// four here) runs its own full timeout.
		{"no budget: each call's own timeout", context.Background(), perCall - 50*time.Millisecond, 6 * perCall},
	} {
		t.Run(tc.name, func(t *testing.T) {
			start := time.Now()
			_, err := r.Lookup(tc.ctx, "uncached")
			if took := time.Since(start); err == nil || took < tc.min || took > tc.max {
				t.Fatalf("Lookup with Valkey paused: %v after %s, want an error within [%s, %s]", err, took, tc.min, tc.max)
			}
		})
	}
}
