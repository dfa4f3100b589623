package registry

import (
	"context"
	"fmt"

	"github.com/coord-extproc/coord-extproc/strategy"
)

// Binding is a destination's set split by member state.
type Binding struct {
	Live []strategy.Candidate
	Dead []string
	// Unroutable members are live but their address cannot be used.
	Unroutable []string
}

// Lookup returns the destination's members by state, for delete routes and
// operators. An empty set is confirmed against Valkey and is ErrNotFound.
func (r *Registry) Lookup(ctx context.Context, destID string) (Binding, error) {
	if err := ValidateID(destID); err != nil {
		return Binding{}, err
	}
	now := r.opt.Now()
	g := r.recovery.begin(ctx)
	e, _, err := r.destSet(ctx, destID, now)
	if err != nil {
		return Binding{}, err
	}
	ids := e.set.ids
	if len(ids) == 0 {
		if ids, err = r.readDest(ctx, destID); err != nil {
			return Binding{}, err
		}
		if len(ids) == 0 {
			if err := g.settle(ctx); err != nil {
				return Binding{}, err
			}
			return Binding{}, fmt.Errorf("%w: %q", ErrNotFound, destID)
		}
	}
	ms, err := r.memberEntries(ctx, ids, now, exact)
	if err != nil {
		return Binding{}, err
	}
	v := r.buildView(ms, 0, nil)
	if len(v.live) == 0 && len(v.unroutable) == 0 {
		// Only dead members: a delete would decide against them.
		if err := g.settle(ctx); err != nil {
			return Binding{}, err
		}
	}
	return Binding{Live: v.live, Dead: v.dead, Unroutable: v.unroutable}, nil
}

// Bind adds memberID to the destination's set (create routes), only if
// the set is empty or already holds it: a create never adds a second owner
// to an existing destination (ErrConflict, nothing written).
func (r *Registry) Bind(ctx context.Context, destID, memberID string) error {
	if err := ValidateID(destID); err != nil {
		return err
	}
	if err := ValidateID(memberID); err != nil {
		return err
	}
	ctx, cancel := r.callCtx(ctx)
	defer cancel()
	n, err := bindScript.Exec(ctx, r.client, []string{r.keys.dest(destID)}, []string{memberID}).AsInt64()
	r.forgetDest(destID)
	if err = r.valkeyErr(err); err != nil {
		return err
	}
	if n == 0 {
		return fmt.Errorf("%w: %q", ErrConflict, destID)
	}
	return nil
}

// DeleteDestination removes the destination's set (delete routes).
func (r *Registry) DeleteDestination(ctx context.Context, destID string) error {
	if err := ValidateID(destID); err != nil {
		return err
	}
	ctx, cancel := r.callCtx(ctx)
	defer cancel()
	err := r.client.Do(ctx, r.client.B().Del().Key(r.keys.dest(destID)).Build()).Error()
	r.forgetDest(destID)
	return r.valkeyErr(err)
}
