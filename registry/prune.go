package registry

import (
	"context"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/valkey-io/valkey-go"
)

// pruner removes from P:members the ids whose member record is gone: dead
// pods' ids, and junk a pod wrote (issue #24: 200 000 junk ids made every
// SMEMBERS block Valkey for 78 ms). Nothing else ever removes an id a pod
// died with, and every read of all members costs a record per id.
//
// Invariant: an id whose member is live stays in P:members, or is back
// within recheckDelay. A record can appear between the pass's EXISTS and
// its SREM (a pod registering just then: its SADD was a no-op), and no
// single command spans both keys (Cluster), so every removed id is read
// again recheckDelay later and re-added if its record exists by then. A
// live Go Member also re-adds itself on every heartbeat. Nothing is
// removed while a recovery hold is in force (recovery.go).
type pruner struct {
	r     *Registry
	every time.Duration
	kicks chan struct{}
	quit  chan struct{}
	wg    sync.WaitGroup
}

const (
	pruneBatch  = 500
	pruneBudget = 5 * time.Second
	// recheckDelay covers a registration in flight: its commands land
	// within milliseconds of each other.
	recheckDelay = 2 * time.Second
)

func newPruner(r *Registry) *pruner {
	p := &pruner{r: r, every: r.opt.PruneInterval, kicks: make(chan struct{}, 1), quit: make(chan struct{})}
	if p.every > 0 {
		p.wg.Add(1)
		go p.run()
	}
	return p
}

// kick asks for a pass now (P:members was found over MaxMembers).
func (p *pruner) kick() {
	if p == nil {
		return
	}
	select {
	case p.kicks <- struct{}{}:
	default:
	}
}

func (p *pruner) stop() {
	close(p.quit)
	p.wg.Wait()
}

func (p *pruner) run() {
	defer p.wg.Done()
	for {
		// Jittered, so replicas started together do not prune together.
		wait := p.every/2 + rand.N(p.every)
		select {
		case <-p.quit:
			return
		case <-p.kicks:
		case <-time.After(wait):
		}
		removed := p.pass()
		if len(removed) == 0 {
			continue
		}
		select {
		case <-p.quit:
			return
		case <-time.After(recheckDelay):
		}
		p.recheck(removed)
	}
}

// pass walks P:members for at most pruneBudget and removes the ids without
// a record; it returns them.
func (p *pruner) pass() []string {
	r := p.r
	ctx, cancel := context.WithTimeout(context.Background(), pruneBudget)
	defer cancel()
	if err := r.recovery.hold(ctx); err != nil {
		return nil
	}
	key := r.keys.members()
	var cursor uint64
	var removed []string
	for ctx.Err() == nil {
		sctx, scancel := context.WithTimeout(ctx, 4*r.opt.Timeout)
		page, err := r.client.Do(sctx, r.client.B().Sscan().Key(key).Cursor(cursor).Count(pruneBatch).Build()).AsScanEntry()
		scancel()
		if err = r.valkeyErr(err); err != nil {
			r.log.Warn("pruning the members set stopped", "err", err)
			break
		}
		gone, err := p.withoutRecord(ctx, page.Elements)
		if err == nil && len(gone) > 0 {
			err = r.valkeyErr(r.client.Do(ctx, r.client.B().Srem().Key(key).Member(gone...).Build()).Error())
		}
		if err != nil {
			r.log.Warn("pruning the members set stopped", "err", err)
			break
		}
		removed = append(removed, gone...)
		if cursor = page.Cursor; cursor == 0 {
			break
		}
	}
	if len(removed) > 0 {
		r.stats.MembersPruned.Add(uint64(len(removed)))
		r.log.Info("ids without a member record removed from the members set", "removed", len(removed))
	}
	return removed
}

// withoutRecord returns the ids of ids whose member record does not exist
// (a record without address — a Node pod after a wipe — exists: restore.go
// may bring it back).
func (p *pruner) withoutRecord(ctx context.Context, ids []string) ([]string, error) {
	if len(ids) == 0 {
		return nil, nil
	}
	r := p.r
	cmds := make([]valkey.Completed, len(ids))
	for i, id := range ids {
		cmds[i] = r.client.B().Exists().Key(r.keys.member(id)).Build()
	}
	ectx, cancel := context.WithTimeout(ctx, 4*r.opt.Timeout)
	defer cancel()
	var gone []string
	for i, res := range r.client.DoMulti(ectx, cmds...) {
		n, err := res.AsInt64()
		if err = r.valkeyErr(err); err != nil {
			return nil, err
		}
		if n == 0 {
			gone = append(gone, ids[i])
		}
	}
	return gone, nil
}

// recheck re-adds the removed ids whose record exists now: they registered
// while the pass ran.
func (p *pruner) recheck(removed []string) {
	r := p.r
	ctx, cancel := context.WithTimeout(context.Background(), pruneBudget)
	defer cancel()
	for len(removed) > 0 && ctx.Err() == nil {
		batch := removed[:min(pruneBatch, len(removed))]
		removed = removed[len(batch):]
		gone, err := p.withoutRecord(ctx, batch)
		if err == nil {
			back := without(batch, gone)
			if len(back) > 0 {
				err = r.valkeyErr(r.client.Do(ctx, r.client.B().Sadd().Key(r.keys.members()).Member(back...).Build()).Error())
				r.log.Info("members registered while pruned re-added", "members", back)
			}
		}
		if err != nil {
			r.log.Warn("re-checking pruned members failed", "err", err)
			return
		}
	}
}

// without returns the ids of all not in drop (both sorted as read, drop a
// subsequence of all).
func without(all, drop []string) []string {
	out := make([]string, 0, len(all)-len(drop))
	j := 0
	for _, id := range all {
		if j < len(drop) && drop[j] == id {
			j++
			continue
		}
		out = append(out, id)
	}
	return out
}
