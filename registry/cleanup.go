package registry

import (
	"context"
	"errors"
	"sync"
	"time"
)

// cleaner removes dead member ids from destination sets in the background,
// off the request path: the dead ids of sets that still have a live member,
// and, in bounded batches, oversized sets (over MaxSetMembers) that are not
// read at all. Each id is re-checked against Valkey just before removal, so
// a member that came back meanwhile is never dropped, and nothing is removed
// while a recovery hold is in force (recovery.go).
type cleaner struct {
	r       *Registry
	jobs    chan cleanupJob
	quit    chan struct{}
	wg      sync.WaitGroup
	mu      sync.Mutex
	pending map[string]struct{}
}

type cleanupJob struct {
	destID string
	dead   []string  // ids to re-check; nil for a shrink
	entry  *setEntry // whose cleaning flag to clear when the job is skipped
}

const (
	cleanupQueue = 1024
	// A shrink reads shrinkBatch ids per SSCAN and works at most
	// shrinkBudget per job; the next request for the set queues another.
	shrinkBatch  = 200
	shrinkBudget = 2 * time.Second
)

func newCleaner(r *Registry) *cleaner {
	c := &cleaner{r: r, jobs: make(chan cleanupJob, cleanupQueue), quit: make(chan struct{}), pending: make(map[string]struct{})}
	c.wg.Add(1)
	go c.run()
	return c
}

// cleanDead queues removal of v's dead ids, once per cached set.
func (r *Registry) cleanDead(destID string, e *setEntry, v *setView) {
	if len(v.dead) == 0 || !e.cleaning.CompareAndSwap(false, true) {
		return
	}
	r.cleanup.enqueue(cleanupJob{destID: destID, dead: v.dead, entry: e})
}

// shrink queues an oversized set for removal of its dead ids.
func (c *cleaner) shrink(destID string) { c.enqueue(cleanupJob{destID: destID}) }

func (c *cleaner) enqueue(j cleanupJob) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, dup := c.pending[j.destID]; dup {
		return
	}
	select {
	case c.jobs <- j:
		c.pending[j.destID] = struct{}{}
	default: // queue full: a later request for this destination queues it again
		if j.entry != nil {
			j.entry.cleaning.Store(false)
		}
	}
}

func (c *cleaner) run() {
	defer c.wg.Done()
	for {
		select {
		case <-c.quit:
			return
		case j := <-c.jobs:
			if j.dead == nil {
				c.shrinkSet(j.destID)
			} else {
				c.clean(j)
			}
			c.mu.Lock()
			delete(c.pending, j.destID)
			c.mu.Unlock()
		}
	}
}

// held reports whether a recovery hold forbids removing anything now.
func (c *cleaner) held(ctx context.Context, destID string) bool {
	err := c.r.recovery.hold(ctx)
	if err != nil && !errors.Is(err, ErrRecovering) {
		c.r.log.Debug("dead member clean-up postponed: recovery state unknown", "destination", destID, "err", err)
	}
	return err != nil
}

func (c *cleaner) clean(j cleanupJob) {
	ctx, cancel := context.WithTimeout(context.Background(), 4*c.r.opt.Timeout+time.Second)
	defer cancel()
	if c.held(ctx, j.destID) {
		j.entry.cleaning.Store(false) // a later request queues it again
		return
	}
	dead, _, err := c.r.confirmDead(ctx, j.dead)
	if err != nil {
		c.r.log.Warn("dead member clean-up skipped", "destination", j.destID, "err", err)
		return
	}
	if len(dead) == 0 {
		return
	}
	key := c.r.keys.dest(j.destID)
	if err := c.r.valkeyErr(c.r.client.Do(ctx, c.r.client.B().Srem().Key(key).Member(dead...).Build()).Error()); err != nil {
		c.r.log.Warn("dead member clean-up failed", "destination", j.destID, "err", err)
		return
	}
	c.r.log.Debug("removed dead members from destination", "destination", j.destID, "members", dead)
}

// shrinkSet walks an oversized set in batches, removing the ids whose
// member record is gone, for at most shrinkBudget.
func (c *cleaner) shrinkSet(destID string) {
	r := c.r
	ctx, cancel := context.WithTimeout(context.Background(), shrinkBudget)
	defer cancel()
	if c.held(ctx, destID) {
		return
	}
	key := r.keys.dest(destID)
	var cursor uint64
	removed := 0
	for ctx.Err() == nil {
		sctx, scancel := context.WithTimeout(ctx, 4*r.opt.Timeout)
		page, err := r.client.Do(sctx, r.client.B().Sscan().Key(key).Cursor(cursor).Count(shrinkBatch).Build()).AsScanEntry()
		scancel()
		if err = r.valkeyErr(err); err != nil {
			r.log.Warn("shrinking an oversized destination stopped", "destination", destID, "err", err)
			return
		}
		if len(page.Elements) > 0 {
			dead, _, err := r.confirmDead(ctx, page.Elements)
			if err != nil {
				r.log.Warn("shrinking an oversized destination stopped", "destination", destID, "err", err)
				return
			}
			if len(dead) > 0 {
				if err := r.valkeyErr(r.client.Do(ctx, r.client.B().Srem().Key(key).Member(dead...).Build()).Error()); err != nil {
					r.log.Warn("shrinking an oversized destination stopped", "destination", destID, "err", err)
					return
				}
				removed += len(dead)
			}
		}
		if cursor = page.Cursor; cursor == 0 {
			break
		}
	}
	r.log.Info("oversized destination shrunk", "destination", destID, "removed_dead", removed, "max_members", r.opt.MaxSetMembers)
}

func (c *cleaner) stop() {
	close(c.quit)
	c.wg.Wait()
}
