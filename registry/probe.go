package registry

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"sync"
	"sync/atomic"
	"time"
)

// prober keeps cached entries fresh without re-reading them. Every
// ProbeInterval it writes its own key under the prefix; Valkey's broadcast
// tracking then sends the invalidation for that key on the same
// connections, after every invalidation for writes that came before it.
// When it arrives, every cached entry is known to be current as of the
// moment the probe was sent, so CacheTTL is counted from there: a healthy
// channel keeps steady-state resolution at zero Valkey commands, while a
// channel that silently stops delivering lets entries expire within
// CacheTTL as before. It costs one command per interval per replica.
type prober struct {
	r      *Registry
	key    string
	sentAt atomic.Int64 // mono time of the probe in flight
	quit   chan struct{}
	wg     sync.WaitGroup
}

func newProber(r *Registry) *prober {
	b := make([]byte, 8)
	_, _ = rand.Read(b)
	return &prober{r: r, key: r.keys.probePrefix() + hex.EncodeToString(b), quit: make(chan struct{})}
}

func (p *prober) start() {
	if p.r.opt.ProbeInterval > 0 {
		p.wg.Add(1)
		go p.run()
	}
}

func (p *prober) run() {
	defer p.wg.Done()
	t := time.NewTicker(p.r.opt.ProbeInterval)
	defer t.Stop()
	for {
		p.send()
		select {
		case <-p.quit:
			return
		case <-t.C:
		}
	}
}

func (p *prober) send() {
	r := p.r
	ctx, cancel := context.WithTimeout(context.Background(), r.opt.Timeout)
	defer cancel()
	p.sentAt.Store(r.mono(r.opt.Now()))
	// The key expires on its own when this replica is gone.
	err := r.client.Do(ctx, r.client.B().Set().Key(p.key).Value("1").Px(3*r.opt.ProbeInterval).Build()).Error()
	if err != nil {
		r.log.Debug("tracking probe failed", "err", err)
	}
}

// confirm runs when the probe's own invalidation arrives.
func (p *prober) confirm() {
	at := p.sentAt.Load()
	for {
		cur := p.r.confirmed.Load()
		if at <= cur || p.r.confirmed.CompareAndSwap(cur, at) {
			return
		}
	}
}

func (p *prober) stop() {
	close(p.quit)
	p.wg.Wait()
}
