package registry

import (
	"context"
	"fmt"
	"time"

	"github.com/valkey-io/valkey-go"
)

type lockEntry struct {
	freshness
	exists bool
	podID  string
	destID string
}

// RouteLock returns the pod holding lockID. Errors wrap ErrInvalidID,
// ErrLockNotFound (no record, confirmed against Valkey), ErrLockOwnerGone
// (the owner is not live, confirmed), ErrNoCapacity (owner live but its
// address unroutable) or ErrRegistryUnavailable.
func (r *Registry) RouteLock(ctx context.Context, lockID string) (Decision, error) {
	if err := ValidateID(lockID); err != nil {
		return Decision{}, err
	}
	now := r.opt.Now()
	if l, ok := r.locks.Get(lockID); ok && l.exists && r.fresh(&l.freshness, now) {
		if m, ok := r.members.Get(l.podID); ok && m.live && m.addr != "" && r.memberFresh(m, now, withinGrace) {
			r.stats.CacheHits.Add(1)
			return Decision{Member: m.candidate(), Result: ResultLockHit}, nil
		}
	}
	r.stats.CacheMisses.Add(1)
	return r.routeLockSlow(ctx, lockID, now)
}

func (r *Registry) routeLockSlow(ctx context.Context, lockID string, now time.Time) (Decision, error) {
	l, err := r.lockRecord(ctx, lockID, now)
	if err != nil {
		return r.staleLock(lockID, now, err)
	}
	if !l.exists {
		g := r.recovery.begin(ctx)
		if l, _, err = r.readLock(ctx, lockID, false, now); err != nil {
			return Decision{}, err
		}
		if !l.exists {
			if err := g.settle(ctx); err != nil {
				return Decision{}, err
			}
			return Decision{}, fmt.Errorf("%w: %q", ErrLockNotFound, lockID)
		}
	}
	if l.podID == "" {
		return Decision{}, fmt.Errorf("%w: lock %q has no podId", ErrLockOwnerGone, lockID)
	}
	ms, err := r.memberEntries(ctx, []string{l.podID}, now, withinGrace)
	if err != nil {
		return r.staleLock(lockID, now, err)
	}
	m := ms[0]
	if !m.live {
		g := r.recovery.begin(ctx)
		dead, alive, err := r.confirmDead(ctx, []string{l.podID})
		if err != nil {
			return Decision{}, err
		}
		if len(alive) == 1 {
			return Decision{Member: alive[0], Result: ResultLockHit}, nil
		}
		if len(dead) == 1 {
			if err := g.settle(ctx); err != nil {
				return Decision{}, err
			}
			return Decision{}, fmt.Errorf("%w: lock %q, member %q", ErrLockOwnerGone, lockID, l.podID)
		}
	}
	if m.addr == "" {
		return Decision{}, fmt.Errorf("%w: lock %q: member %q has an unroutable address", ErrNoCapacity, lockID, l.podID)
	}
	return Decision{Member: m.candidate(), Result: ResultLockHit}, nil
}

func (r *Registry) lockRecord(ctx context.Context, lockID string, now time.Time) (*lockEntry, error) {
	if l, ok := r.locks.Get(lockID); ok && r.fresh(&l.freshness, now) {
		return l, nil
	}
	seq, gen := r.inv.ticket(), r.flushGen.Load()
	l, readAt, err := r.readLock(ctx, lockID, true, now)
	if err != nil {
		return nil, err
	}
	r.stamp(&l.freshness, readAt, gen, r.keys.lock(lockID))
	r.locks.Add(lockID, l)
	if r.inv.raced(r.keys.lock(lockID), seq) {
		l.invalid.Store(true)
	}
	return l, nil
}

// readLock reads a lock record, through the tracked cache or straight
// from Valkey (to confirm a negative answer), and when it was read (readAt).
func (r *Registry) readLock(ctx context.Context, lockID string, cached bool, now time.Time) (*lockEntry, time.Time, error) {
	ctx, cancel := r.callCtx(ctx)
	defer cancel()
	key := r.keys.lock(lockID)
	var res valkey.ValkeyResult
	// Only the two routing fields: the rest is the pod's metadata, of any
	// size, which routing never needs.
	if cached {
		res = r.client.DoCache(ctx, r.client.B().Hmget().Key(key).Field(lockFieldPod, lockFieldDest).Cache().ToStaticTTL(), r.opt.CacheTTL)
	} else {
		res = r.client.Do(ctx, r.client.B().Hmget().Key(key).Field(lockFieldPod, lockFieldDest).Build())
	}
	vals, err := res.ToArray()
	if err = r.valkeyErr(err); err != nil {
		return nil, now, err
	}
	l := &lockEntry{}
	if len(vals) == 2 {
		var perr, derr error
		l.podID, perr = vals[0].ToString()
		l.destID, derr = vals[1].ToString()
		l.exists = perr == nil || derr == nil
	}
	return l, r.readAt(res, now), nil
}

// staleLock answers from the last known lock and owner records when Valkey
// failed, if both are younger than StaleMax.
func (r *Registry) staleLock(lockID string, now time.Time, cause error) (Decision, error) {
	l, ok := r.locks.Peek(lockID)
	if !ok || !l.exists || r.age(&l.freshness, now) >= r.opt.StaleMax {
		return Decision{}, cause
	}
	m, ok := r.members.Peek(l.podID)
	if !ok || !m.live || m.addr == "" || r.age(&m.freshness, now) >= r.opt.StaleMax {
		return Decision{}, cause
	}
	r.stats.StaleAnswers.Add(1)
	return Decision{Member: m.candidate(), Result: ResultStale}, nil
}
