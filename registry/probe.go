package registry

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/valkey-io/valkey-go"
)

// prober keeps cached entries fresh without re-reading them. Every
// ProbeInterval it writes, for each lane (see shards.go: one per Cluster
// master, one in all otherwise), a key of its own under the prefix that the
// lane's master holds; Valkey's broadcast tracking then sends that key's
// invalidation on the lane's connections, after every invalidation for
// writes that came before it. When it arrives, every entry read from that
// lane is known to be current as of the moment the probe was sent, so
// CacheTTL is counted from there: a healthy channel keeps steady-state
// resolution at zero Valkey commands, while a lane that silently stops
// delivering (a hung master) lets its entries expire within CacheTTL. It
// costs one command per lane per interval per replica, plus CLUSTER SLOTS
// on Cluster.
//
// Probes rotate over probeSlots keys, each remembering when it was last
// sent, so that a probe delayed in Valkey can only ever confirm the moment
// it was itself sent, never a later probe's.
type prober struct {
	r    *Registry
	base string // key prefix of this replica's probes
	slot int
	quit chan struct{}
	wg   sync.WaitGroup
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

// While a lane's probe is overdue (a master hung or failing over) the
// probe and the slot map are renewed every suspectTick, so slots moved to
// a new master are known, and their entries re-read, within about that.
const (
	suspectTick  = 100 * time.Millisecond
	overdueAfter = 250 * time.Millisecond
)

func (p *prober) run() {
	defer p.wg.Done()
	every := p.r.opt.ProbeInterval
	if every <= 0 {
		every = p.r.opt.CacheTTL / 3
	}
	t := time.NewTicker(min(every, suspectTick))
	defer t.Stop()
	var last time.Time
	for {
		now := time.Now()
		if due := now.Sub(last) >= every; due || p.suspect() {
			if p.r.opt.ProbeInterval > 0 {
				p.send()
			}
			if due {
				p.r.refreshMembers()
				last = now
			}
		}
		select {
		case <-p.quit:
			return
		case <-t.C:
		}
	}
}

func (p *prober) suspect() bool {
	if p.r.opt.ProbeInterval <= 0 || !p.r.shards.cluster.Load() {
		return false
	}
	return p.r.shards.overdue(p.slot, int64(overdueAfter), p.r.mono(p.r.opt.Now()))
}

func (p *prober) send() {
	r := p.r
	ctx, cancel := context.WithTimeout(context.Background(), r.opt.Timeout)
	defer cancel()
	lanes, err := r.shards.refresh(ctx, r.client)
	if err = r.valkeyErr(err); err != nil {
		return // counted and reported; lanes keep their last confirmation
	}
	p.slot = (p.slot + 1) % probeSlots
	now := r.mono(r.opt.Now())
	cmds := make(valkey.Commands, 0, len(lanes))
	for ln, tag := range lanes {
		r.shards.lanes[ln].sentAt[p.slot].Store(now)
		key := p.base
		if tag != "" {
			key += "{" + tag + "}:"
		}
		key += strconv.Itoa(int(ln)) + ":" + strconv.Itoa(p.slot)
		// The keys expire on their own when this replica is gone.
		cmds = append(cmds, r.client.B().Set().Key(key).Value("1").Px(2*probeSlots*r.opt.ProbeInterval).Build())
	}
	for _, res := range r.client.DoMulti(ctx, cmds...) {
		_ = r.valkeyErr(res.Error()) // counted and reported
	}
}

// confirm runs when one of this replica's probe keys is invalidated.
// It reports false for keys that are not this replica's probes.
func (p *prober) confirm(key string) bool {
	rest, ok := strings.CutPrefix(key, p.base)
	if !ok {
		return false
	}
	tag := ""
	if strings.HasPrefix(rest, "{") {
		var found bool
		if tag, rest, found = strings.Cut(rest[1:], "}:"); !found {
			return true
		}
	}
	lnStr, rotStr, _ := strings.Cut(rest, ":")
	ln, err1 := strconv.Atoi(lnStr)
	rot, err2 := strconv.Atoi(rotStr)
	if err1 != nil || err2 != nil || ln < 0 || ln >= maxLanes || rot < 0 || rot >= probeSlots {
		return true
	}
	s := p.r.shards
	if tag != "" && s.slotLane[keySlot("{"+tag+"}")].Load() != int32(ln)+1 {
		return true // the slot moved: this stream no longer speaks for the lane
	}
	at := s.lanes[ln].sentAt[rot].Load()
	for {
		cur := s.lanes[ln].confirmed.Load()
		if at <= cur || s.lanes[ln].confirmed.CompareAndSwap(cur, at) {
			return true
		}
	}
}

func (p *prober) stop() {
	close(p.quit)
	p.wg.Wait()
}
