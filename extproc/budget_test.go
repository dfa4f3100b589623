package extproc

import (
	"context"
	"fmt"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/coord-extproc/coord-extproc/registry"
	"github.com/coord-extproc/coord-extproc/route"
	"github.com/coord-extproc/coord-extproc/strategy"
)

// slowRegistry answers like a registry whose every Valkey call takes
// callTime, each under its own per-call timeout derived from ctx as the
// real one does: a delete of a binding whose members are all dead chains
// Route, Lookup and DeleteDestination.
type slowRegistry struct{ callTime, perCall time.Duration }

func (s slowRegistry) call(ctx context.Context) error {
	ctx, cancel := registry.CallContext(ctx, s.perCall)
	defer cancel()
	select {
	case <-time.After(s.callTime):
		return nil
	case <-ctx.Done():
		return fmt.Errorf("%w: %w", registry.ErrRegistryUnavailable, ctx.Err())
	}
}

func (s slowRegistry) Route(ctx context.Context, _ string, _ registry.RouteOptions) (registry.Decision, error) {
	if err := s.call(ctx); err != nil {
		return registry.Decision{}, err
	}
	return registry.Decision{}, registry.ErrNotFound
}

func (s slowRegistry) Lookup(ctx context.Context, _ string) (registry.Binding, error) {
	return registry.Binding{Dead: []string{"gone"}}, s.call(ctx)
}

func (s slowRegistry) DeleteDestination(ctx context.Context, _ string) error { return s.call(ctx) }
func (s slowRegistry) RouteLock(context.Context, string) (registry.Decision, error) {
	return registry.Decision{}, registry.ErrLockNotFound
}
func (s slowRegistry) PickMember(context.Context, string) (strategy.Candidate, error) {
	return strategy.Candidate{}, registry.ErrNoCapacity
}
func (s slowRegistry) Bind(context.Context, string, string) error { return nil }

// SPEC §4: one deadline covers all Valkey calls of a decision.
func TestDecisionTimeBudget(t *testing.T) {
	tbl, err := route.Parse([]byte("rules:\n  - name: del\n    methods: [DELETE]\n    path: /tenants/{destination}\n    action: delete\n"))
	if err != nil {
		t.Fatal(err)
	}
	reg := slowRegistry{callTime: 80 * time.Millisecond, perCall: 100 * time.Millisecond}
	for _, tc := range []struct {
		name           string
		budget         time.Duration
		status         int32
		minTook, maxTk time.Duration
	}{
		{"default budget cuts the chain", 0, 503, 0, registry.DefaultDecisionTimeout + 40*time.Millisecond},
		{"without a budget the chain runs on (the test can fail)", time.Hour, 204, 3 * 80 * time.Millisecond, time.Hour},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, err := NewServer(Options{Table: tbl, Registry: reg, Metrics: NewMetrics(prometheus.NewRegistry(), nil), DecisionTimeout: tc.budget})
			if err != nil {
				t.Fatal(err)
			}
			x := &exchange{s: s}
			req := &extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_RequestHeaders{RequestHeaders: &extprocv3.HttpHeaders{
				Headers: &corev3.HeaderMap{Headers: []*corev3.HeaderValue{{Key: ":method", RawValue: []byte("DELETE")}, {Key: ":path", RawValue: []byte("/tenants/t1")}}},
			}}}
			start := time.Now()
			err = s.handle(context.Background(), x, req)
			took := time.Since(start)
			var out []*extprocv3.ProcessingResponse
			_ = x.answers(func(r *extprocv3.ProcessingResponse) error { out = append(out, r); return nil })
			if err != nil || len(out) != 1 {
				t.Fatalf("err %v, %d answers", err, len(out))
			}
			resp := out[0]
			got := int32(resp.GetImmediateResponse().GetStatus().GetCode())
			if got != tc.status || took < tc.minTook || took > tc.maxTk {
				t.Fatalf("answered %d after %s, want %d within [%s, %s]: %v", got, took, tc.status, tc.minTook, tc.maxTk, resp)
			}
			t.Logf("%d after %s", got, took.Round(time.Millisecond))
		})
	}
}

// The same through the real server and a real valkey-server stopped
// (SIGSTOP) part-way: no decision answers later than its budget + 20 ms.
func TestDecisionBudgetWithValkeyStopped(t *testing.T) {
	e := newEnv(t)
	e.pod(t, "live", 7001)
	e.do(t, "SADD", "coordinator:destination:bound", "live")
	e.headersOnly(t, "GET", "/tenants/bound/x") // warm: this one stays a cache hit
	e.srv.Pause()
	t.Cleanup(e.srv.Resume)
	for _, tc := range []struct{ method, path string }{
		{"DELETE", "/tenants/uncached"},         // Route, then Lookup, then Delete
		{"GET", "/claim/new"},                   // claim path
		{"GET", "/transactions/tx-unknown/x"},   // lock read and its confirmation
		{"GET", "/tenants/other-uncached/keys"}, // read, then confirm the negative
	} {
		start := time.Now()
		status, _, _ := immediateOf(e.headersOnly(t, tc.method, tc.path))
		took := time.Since(start)
		t.Logf("%s %s with Valkey stopped: %d after %s", tc.method, tc.path, status, took.Round(time.Millisecond))
		if took > registry.DefaultDecisionTimeout+20*time.Millisecond || status != 503 {
			t.Errorf("%s %s: %d after %s, want 503 within %s", tc.method, tc.path, status, took, registry.DefaultDecisionTimeout+20*time.Millisecond)
		}
	}
}
