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
	r := newRegistry(t, srv, func(o *Options) { o.Timeout = DefaultTimeout }) // per-call timeout 50ms
	srv.Pause()
	t.Cleanup(srv.Resume)
	for _, tc := range []struct {
		name     string
		ctx      context.Context
		min, max time.Duration
	}{
		{"budget of 10ms", WithBudget(context.Background(), 10*time.Millisecond), 0, 35 * time.Millisecond},
		{"no budget: the call's own 50ms", context.Background(), 45 * time.Millisecond, time.Second},
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
