package registry

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// prober keeps cached entries fresh without re-reading them. Every
// ProbeInterval it writes a key of its own under the prefix; Valkey's
// broadcast tracking then sends the invalidation for that key on the same
// connections, after every invalidation for writes that came before it.
// When it arrives, every cached entry is known to be current as of the
// moment the probe was sent, so CacheTTL is counted from there: a healthy
// channel keeps steady-state resolution at zero Valkey commands, while a
// channel that silently stops delivering lets entries expire within
// CacheTTL as before. It costs one command per interval per replica.
//
// Probes rotate over probeSlots keys, each remembering when it was last
// sent, so that a probe delayed in Valkey can only ever confirm the moment
// it was itself sent, never a later probe's.
type prober struct {
	r      *Registry
	base   string // key prefix of this replica's probes
	slot   int
	sentAt [probeSlots]atomic.Int64 // mono time each slot was last sent
	quit   chan struct{}
	wg     sync.WaitGroup
}

const probeSlots = 8

func newProber(r *Registry) *prober {
	b := make([]byte, 8)
	_, _ = rand.Read(b)
	return &prober{r: r, base: r.keys.probePrefix + hex.EncodeToString(b) + ":", quit: make(chan struct{})}
}

// start runs the probe loop; with probes disabled it still keeps the
// member list warm (refreshMembers) every CacheTTL/3.
func (p *prober) start() {
	p.wg.Add(1)
	go p.run()
}

func (p *prober) run() {
	defer p.wg.Done()
	every := p.r.opt.ProbeInterval
	if every <= 0 {
		every = p.r.opt.CacheTTL / 3
	}
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		if p.r.opt.ProbeInterval > 0 {
			p.send()
		}
		p.r.refreshMembers()
		select {
		case <-p.quit:
			return
		case <-t.C:
		}
	}
}

func (p *prober) send() {
	r := p.r
	p.slot = (p.slot + 1) % probeSlots
	ctx, cancel := context.WithTimeout(context.Background(), r.opt.Timeout)
	defer cancel()
	p.sentAt[p.slot].Store(r.mono(r.opt.Now()))
	// The keys expire on their own when this replica is gone.
	key := p.base + strconv.Itoa(p.slot)
	if err := r.client.Do(ctx, r.client.B().Set().Key(key).Value("1").Px(2*probeSlots*r.opt.ProbeInterval).Build()).Error(); err != nil {
		r.log.Debug("tracking probe failed", "err", err)
	}
}

// confirm runs when one of this replica's probe keys is invalidated.
// It reports false for keys that are not this replica's probes.
func (p *prober) confirm(key string) bool {
	rest, ok := strings.CutPrefix(key, p.base)
	if !ok {
		return false
	}
	slot, err := strconv.Atoi(rest)
	if err != nil || slot < 0 || slot >= probeSlots {
		return true
	}
	at := p.sentAt[slot].Load()
	for {
		cur := p.r.confirmed.Load()
		if at <= cur || p.r.confirmed.CompareAndSwap(cur, at) {
			return true
		}
	}
}

func (p *prober) stop() {
	close(p.quit)
	p.wg.Wait()
}
