package registry

import (
	"context"
	"sync"
	"time"
)

// cleaner removes dead member ids from destination sets in the background,
// off the request path. Each id is re-checked against Valkey just before
// removal, so a member that came back meanwhile is never dropped.
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
	dead   []string
}

const cleanupQueue = 1024

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
	r.cleanup.enqueue(cleanupJob{destID: destID, dead: v.dead})
}

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
	}
}

func (c *cleaner) run() {
	defer c.wg.Done()
	for {
		select {
		case <-c.quit:
			return
		case j := <-c.jobs:
			c.clean(j)
			c.mu.Lock()
			delete(c.pending, j.destID)
			c.mu.Unlock()
		}
	}
}

func (c *cleaner) clean(j cleanupJob) {
	ctx, cancel := context.WithTimeout(context.Background(), 4*c.r.opt.Timeout+time.Second)
	defer cancel()
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

func (c *cleaner) stop() {
	close(c.quit)
	c.wg.Wait()
}
