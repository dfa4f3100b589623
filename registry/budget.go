package registry

import (
	"context"
	"time"
)

// DefaultDecisionTimeout is the time budget of one decision (SPEC §4): all
// of its Valkey calls together, kept below Envoy's ext_proc message_timeout
// (200 ms by default) so Envoy gets an answer rather than a 504.
const DefaultDecisionTimeout = 150 * time.Millisecond

// WithBudget marks ctx with a decision's time budget. Every Valkey call
// made under it gets the shorter of its own timeout and what is left of the
// budget, so a chain (Route, then Lookup, then Delete) ends in time however
// long it is. The budget is a plain value, not a deadline: it arms no
// timer and costs nothing when the decision is answered from the cache.
func WithBudget(ctx context.Context, d time.Duration) context.Context {
	return &budgetCtx{Context: ctx, until: time.Now().Add(d)}
}

type budgetKey struct{}

// budgetCtx overrides only Value: Done, Err and Deadline stay the parent's,
// so contexts derived from it hang off the parent's real cancellation.
type budgetCtx struct {
	context.Context
	until time.Time
}

func (b *budgetCtx) Value(key any) any {
	if key == (budgetKey{}) {
		return &b.until
	}
	return b.Context.Value(key)
}

// callCtx is the context of one Valkey call: its own timeout, cut to what
// is left of the decision's budget.
func (r *Registry) callCtx(ctx context.Context) (context.Context, context.CancelFunc) {
	return callCtxFor(ctx, r.opt.Timeout)
}

// CallContext is the context of one call with its own timeout d under a
// decision's budget: for other implementations of the registry interface.
func CallContext(ctx context.Context, d time.Duration) (context.Context, context.CancelFunc) {
	return callCtxFor(ctx, d)
}

func callCtxFor(ctx context.Context, d time.Duration) (context.Context, context.CancelFunc) {
	if until, ok := ctx.Value(budgetKey{}).(*time.Time); ok {
		d = min(d, max(time.Until(*until), 0))
	}
	return context.WithTimeout(ctx, d)
}
