package registry

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"time"

	"github.com/valkey-io/valkey-go"

	"github.com/coord-extproc/coord-extproc/strategy"
)

// RouteOptions are the per-route switches of SPEC §5.2.
type RouteOptions struct {
	// ClaimOnMiss binds an unknown destination to a freshly picked live
	// member instead of answering ErrNotFound.
	ClaimOnMiss bool
	// ReassignOrphans replaces a destination's dead members with a fresh
	// pick when none of them is live, instead of answering ErrNotFound.
	ReassignOrphans bool
}

// Decision is where a request goes and why.
type Decision struct {
	Member strategy.Candidate
	Result Result
}

// Route picks the pod for one request to destID. Errors wrap the package's
// sentinel errors (ErrInvalidID, ErrNotFound, ErrNoCapacity,
// ErrRegistryUnavailable, ErrRecovering). A cached destination costs no
// Valkey round trip and no allocation.
func (r *Registry) Route(ctx context.Context, destID string, opt RouteOptions) (Decision, error) {
	if err := ValidateID(destID); err != nil {
		return Decision{}, err
	}
	now := r.opt.Now()
	if e, ok := r.sets.Get(destID); ok && r.fresh(&e.freshness, now) {
		if v := e.set.view.Load(); r.usable(v, r.memberGen.Load(), now, withinGrace) && len(v.live) > 0 {
			v = r.withLoads(e.set, v)
			if c, ok := r.opt.Strategy.Pick(destID, v.live); ok {
				r.stats.CacheHits.Add(1)
				r.cleanDead(destID, e, v)
				return Decision{Member: c, Result: ResultHit}, nil
			}
		}
	}
	r.stats.CacheMisses.Add(1)
	return r.routeSlow(ctx, destID, opt, now)
}

func (r *Registry) routeSlow(ctx context.Context, destID string, opt RouteOptions, now time.Time) (Decision, error) {
	if opt.ClaimOnMiss && !r.sets.Contains(destID) && r.recovery.hold(ctx) == nil {
		// First sight of this destination here: the claim script reads
		// and, only if the set is empty, claims, all in one call. During a
		// hold the set is read instead, so a present destination routes.
		d, found, err := r.claim(ctx, destID, now)
		if found == nil {
			return d, err
		}
		return r.decide(ctx, destID, found, opt, now)
	}
	e, old, err := r.destSet(ctx, destID, now)
	if err != nil {
		return r.stale(destID, old, now, err)
	}
	return r.decide(ctx, destID, e, opt, now)
}

// decide routes by the state of the set's members: live, none, unroutable
// or all dead.
func (r *Registry) decide(ctx context.Context, destID string, e *setEntry, opt RouteOptions, now time.Time) (Decision, error) {
	v, err := r.viewOf(ctx, e, now, withinGrace)
	if err != nil {
		return r.stale(destID, e, now, err)
	}
	switch {
	case len(v.live) > 0:
		r.cleanDead(destID, e, v)
		return r.pick(destID, v.live, ResultHit)
	case len(e.set.ids) == 0:
		return r.onEmpty(ctx, destID, e, opt, now)
	case len(v.unroutable) > 0:
		return Decision{}, fmt.Errorf("%w: destination %q: members %v have unroutable addresses", ErrNoCapacity, destID, v.unroutable)
	default:
		return r.onOrphan(ctx, destID, v.dead, opt, now)
	}
}

// stale answers from the last known good view of a set when Valkey failed,
// if that view is younger than StaleMax; otherwise it returns cause.
func (r *Registry) stale(destID string, e *setEntry, now time.Time, cause error) (Decision, error) {
	if e == nil {
		return Decision{}, cause
	}
	v := e.set.view.Load()
	if v == nil || len(v.live) == 0 || r.viewAge(v, now) >= r.opt.StaleMax {
		return Decision{}, cause
	}
	c, ok := r.opt.Strategy.Pick(destID, v.live)
	if !ok {
		return Decision{}, cause
	}
	r.stats.StaleAnswers.Add(1)
	return Decision{Member: c, Result: ResultStale}, nil
}

func (r *Registry) pick(destID string, live []strategy.Candidate, res Result) (Decision, error) {
	c, ok := r.opt.Strategy.Pick(destID, live)
	if !ok {
		return Decision{}, fmt.Errorf("%w: strategy picked none of %d candidates for %q", ErrNoCapacity, len(live), destID)
	}
	return Decision{Member: c, Result: res}, nil
}

// onEmpty handles a destination whose cached set e is empty. A claim needs
// no confirmation (the claim script is itself the authoritative check); a
// 404 is only sent after Valkey confirms the set is empty (negative.go).
func (r *Registry) onEmpty(ctx context.Context, destID string, e *setEntry, opt RouteOptions, now time.Time) (Decision, error) {
	if opt.ClaimOnMiss {
		d, found, err := r.claim(ctx, destID, now)
		if found == nil {
			return d, err
		}
		return r.decide(ctx, destID, found, opt, now) // a binding appeared meanwhile
	}
	g := r.recovery.begin(ctx)
	var ids []string
	if !r.confirmedEmpty(e, now) {
		var err error
		if ids, err = r.readDest(ctx, destID); err != nil {
			return Decision{}, err
		}
	}
	if len(ids) == 0 {
		// During a recovery hold an empty set may just not be re-asserted
		// yet: "retry", not "no such destination".
		if err := g.settle(ctx); err != nil {
			return Decision{}, err
		}
		return Decision{}, fmt.Errorf("%w: %q", ErrNotFound, destID)
	}
	r.forgetDest(destID) // the cache was behind; the invalidation is on its way
	return r.routeIDs(ctx, destID, ids, ResultHit, now)
}

// claim binds destID to a freshly picked live member unless the set is
// already non-empty, in which case it returns that set as found (stored in
// the cache like a read).
func (r *Registry) claim(ctx context.Context, destID string, now time.Time) (d Decision, found *setEntry, err error) {
	g := r.recovery.begin(ctx)
	if g.before != nil { // never claim during a hold
		return Decision{}, nil, g.before
	}
	if r.claims != nil && !r.claims.Take() {
		r.stats.ClaimsLimited.Add(1)
		return Decision{}, nil, fmt.Errorf("%w: %q not claimed", ErrClaimLimited, destID)
	}
	c, err := r.pickLive(ctx, destID, now)
	if err != nil {
		return Decision{}, nil, err
	}
	seq, gen := r.inv.ticket(), r.flushGen.Load()
	sctx, cancel := r.callCtx(ctx)
	reply, err := claimScript.Exec(sctx, r.client, []string{r.keys.dest(destID)}, []string{c.ID, strconv.Itoa(r.opt.MaxSetMembers)}).AsStrSlice()
	cancel()
	if err = r.valkeyErr(err); err != nil {
		return Decision{}, nil, err
	}
	if len(reply) == 0 {
		return Decision{}, nil, fmt.Errorf("%w: claim script returned nothing", ErrRegistryUnavailable)
	}
	if reply[0] == "toomany" {
		r.cleanup.shrink(destID)
		return Decision{}, nil, fmt.Errorf("%w: %q has %s, at most %d are read", ErrTooManyMembers, destID, reply[1], r.opt.MaxSetMembers)
	}
	if reply[0] == "claimed" {
		r.log.Debug("destination claimed", "destination", destID, "member", c.ID)
		r.reclaim.claimedOne(destID)
		r.forgetDest(destID)
		if err := r.heldSince(ctx, g, destID, c.ID); err != nil {
			return Decision{}, nil, err
		}
		return Decision{Member: c, Result: ResultClaimed}, nil, nil
	}
	found = r.storeSet(r.keys.dest(destID), reply[1:], seq, gen, now, func(e *setEntry) { r.storeDest(destID, e) })
	return Decision{}, found, nil
}

// onOrphan handles a set whose members are all dead. Deadness is confirmed
// against Valkey first: both answers (404 and reassignment) depend on it.
func (r *Registry) onOrphan(ctx context.Context, destID string, dead []string, opt RouteOptions, now time.Time) (Decision, error) {
	g := r.recovery.begin(ctx)
	stillDead, alive, err := r.confirmDead(ctx, dead)
	if err != nil {
		return Decision{}, err
	}
	if len(alive) > 0 {
		return r.pick(destID, alive, ResultHit)
	}
	if err := g.settle(ctx); err != nil {
		return Decision{}, err
	}
	if !opt.ReassignOrphans {
		return Decision{}, fmt.Errorf("%w: %q: every member is dead (%v)", ErrNotFound, destID, stillDead)
	}
	c, err := r.pickLive(ctx, destID, now)
	if err != nil {
		return Decision{}, err
	}
	ids, err := r.runSetScript(ctx, reassignScript, r.keys.dest(destID), append([]string{c.ID}, stillDead...))
	if err != nil {
		return Decision{}, err
	}
	r.forgetDest(destID)
	if len(ids) == 1 && ids[0] == c.ID {
		r.log.Debug("orphan reassigned", "destination", destID, "member", c.ID, "dead", stillDead)
		if err := r.heldSince(ctx, g, destID, c.ID); err != nil {
			return Decision{}, err
		}
		return Decision{Member: c, Result: ResultOrphanReassigned}, nil
	}
	return r.routeIDs(ctx, destID, ids, ResultHit, now)
}

// routeIDs routes among an explicit list of member ids (a set just read
// or written by a script).
func (r *Registry) routeIDs(ctx context.Context, destID string, ids []string, res Result, now time.Time) (Decision, error) {
	g := r.recovery.begin(ctx)
	ms, err := r.memberEntries(ctx, ids, now, exact)
	if err != nil {
		return Decision{}, err
	}
	v := r.buildView(ms, 0, nil)
	if len(v.live) == 0 {
		// A re-asserted binding whose member record is not back yet.
		if err := g.settle(ctx); err != nil {
			return Decision{}, err
		}
		return Decision{}, fmt.Errorf("%w: %q: no live, routable member among %v", ErrNoCapacity, destID, ids)
	}
	return r.pick(destID, v.live, res)
}

// pickLive picks among all live members, for claims, reassignments and
// create routes.
func (r *Registry) pickLive(ctx context.Context, destID string, now time.Time) (strategy.Candidate, error) {
	e, _, err := r.allSet(ctx, now)
	if err != nil {
		return strategy.Candidate{}, err
	}
	v, err := r.viewOf(ctx, e, now, exact)
	if err != nil {
		return strategy.Candidate{}, err
	}
	live := v.takers // draining members take nothing new (SPEC §8.2)
	if len(live) == 0 {
		// A negative answer: confirm it against Valkey itself, past every
		// cache (a member may have registered a moment ago).
		if ids, rerr := r.readMemberIDs(ctx); rerr == nil && len(ids) > 0 {
			if takers, cerr := r.confirmTakers(ctx, ids); cerr == nil {
				live = takers
			}
		}
	}
	if len(live) == 0 {
		if err := r.recovery.hold(ctx); err != nil {
			return strategy.Candidate{}, err // the members are expected back
		}
		return strategy.Candidate{}, fmt.Errorf("%w: no live member registered", ErrNoCapacity)
	}
	d, err := r.pick(destID, live, ResultHit)
	return d.Member, err
}

// PickMember picks a live member for a new destination (create routes).
// key only feeds the strategy (a round-robin cursor, a custom policy); it
// never reaches a Valkey key.
func (r *Registry) PickMember(ctx context.Context, key string) (strategy.Candidate, error) {
	return r.pickLive(ctx, key, r.opt.Now())
}

func (r *Registry) readSet(ctx context.Context, key string) ([]string, error) {
	ctx, cancel := r.callCtx(ctx)
	defer cancel()
	ids, err := r.client.Do(ctx, r.client.B().Smembers().Key(key).Build()).AsStrSlice()
	if err = r.valkeyErr(err); err != nil {
		return nil, err
	}
	slices.Sort(ids)
	return ids, nil
}

// confirmDead re-reads the addresses of ids bypassing every cache and
// splits them into dead ids and live candidates.
func (r *Registry) confirmDead(ctx context.Context, ids []string) (dead []string, alive []strategy.Candidate, err error) {
	ms, err := r.confirmMembers(ctx, ids)
	if err != nil {
		return nil, nil, err
	}
	for _, m := range ms {
		switch {
		case !m.live:
			dead = append(dead, m.id)
		case m.addr != "":
			alive = append(alive, m.candidate())
		}
	}
	return dead, alive, nil
}

// confirmTakers re-reads ids bypassing every cache and returns those that
// may take a new destination: live, routable, not draining.
func (r *Registry) confirmTakers(ctx context.Context, ids []string) ([]strategy.Candidate, error) {
	ms, err := r.confirmMembers(ctx, ids)
	if err != nil {
		return nil, err
	}
	var out []strategy.Candidate
	for _, m := range ms {
		if m.live && m.addr != "" && !m.draining {
			out = append(out, m.candidate())
		}
	}
	return out, nil
}

// confirmMembers reads the records and marks of ids past every cache;
// malformed records are left out (neither dead nor routable).
func (r *Registry) confirmMembers(ctx context.Context, ids []string) ([]*memberEntry, error) {
	ctx, cancel := r.callCtx(ctx)
	defer cancel()
	cmds := make([]valkey.Completed, 0, 2*len(ids))
	for _, id := range ids {
		cmds = append(cmds, readMember(r.client.B(), r.keys.member(id)), r.client.B().Get().Key(r.keys.down(id)).Build())
	}
	res := r.client.DoMulti(ctx, cmds...)
	out := make([]*memberEntry, 0, len(ids))
	for i := range ids {
		fields, err := recordFields(res[2*i])
		if err = r.valkeyErr(err); errors.Is(err, ErrMalformedRecord) {
			continue // neither dead nor routable: left alone
		} else if err != nil {
			return nil, err
		}
		mark, err := r.markOf(res[2*i+1])
		if err != nil {
			return nil, err
		}
		out = append(out, r.memberFromFields(ids[i], fields, mark))
	}
	return out, nil
}

func (r *Registry) runSetScript(ctx context.Context, s *valkey.Lua, key string, args []string) ([]string, error) {
	ctx, cancel := r.callCtx(ctx)
	defer cancel()
	ids, err := s.Exec(ctx, r.client, []string{key}, args).AsStrSlice()
	if err = r.valkeyErr(err); err != nil {
		return nil, err
	}
	slices.Sort(ids)
	return ids, nil
}

// heldSince undoes a claim of destID for memberID and returns ErrRecovering
// if a wipe may have happened while it was written (see recovery.go).
func (r *Registry) heldSince(ctx context.Context, g guard, destID, memberID string) error {
	if !g.changed() {
		return nil
	}
	if err := r.recovery.hold(ctx); err != nil {
		r.undoClaim(ctx, destID, memberID)
		return err
	}
	return nil
}
