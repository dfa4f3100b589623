package detector

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/coord-extproc/coord-extproc/internal/ratelimit"
	"github.com/coord-extproc/coord-extproc/registry"
)

// Invariant: an address is down only after this process failed to connect
// to it. A report (from Envoy's access log, or anybody able to send one)
// only makes an address suspect; the verdict is a TCP connect made here:
// refused, reset or timed out confirms and writes a down mark for the
// members at that address; an accepted connection clears the suspicion. So
// reports can cost probes, never a false death, and a process that is
// stopped but whose kernel still accepts connections is not marked down.
// Inconclusive dial errors (this process out of file descriptors or ports)
// confirm nothing.

// Registry is what the detector needs of the registry.
type Registry interface {
	MembersAt(ctx context.Context, addr string) ([]registry.Suspect, error)
	MarkDown(ctx context.Context, s registry.Suspect) (bool, error)
	ClearDown(ctx context.Context, s registry.Suspect) (bool, error)
	Marked() []registry.Suspect
}

// Defaults of Options.
const (
	DefaultProbeTimeout = 500 * time.Millisecond
	DefaultProbeRate    = 50 // probes a second, all addresses together
	DefaultRecheck      = time.Second
	// DefaultCooldown: an address that answered is not probed again for
	// this long, however many reports name it.
	DefaultCooldown = 250 * time.Millisecond
)

const (
	queueSize  = 1024 // suspects waiting for a worker; beyond, reports are dropped
	workers    = 8
	maxPending = 4096 // distinct addresses queued or being probed
	maxMarks   = 256  // marked addresses re-probed per round
)

// Options configure a Detector. Zero values take the defaults.
type Options struct {
	Registry Registry
	// Dial connects to an address; net.Dialer.DialContext by default.
	Dial         func(ctx context.Context, network, addr string) (net.Conn, error)
	ProbeTimeout time.Duration
	// ProbeRate bounds the probes started for reports, per second (burst
	// of the same size).
	ProbeRate int
	// Recheck is how often marked addresses are probed again.
	Recheck  time.Duration
	Cooldown time.Duration
	Logger   *slog.Logger
	Stats    *Stats
	Now      func() time.Time
}

// Stats are the detector's counters (SPEC §8.1: reports, probes,
// confirmed, cleared).
type Stats struct {
	// Reports: failed-connection reports received; Ignored: for addresses
	// no live member has; Dropped: not investigated (queue full or probes
	// over their rate); a later report tries again.
	Reports, Ignored, Dropped atomic.Uint64
	// Probes: connects made; Confirmed: members marked down; Cleared:
	// suspicions or marks lifted because a connect succeeded;
	// Inconclusive: dial errors that say nothing about the pod;
	// Errors: registry failures while marking or clearing.
	Probes, Confirmed, Cleared, Inconclusive, Errors atomic.Uint64
	// MarkedDown: members seen marked down at the last re-check.
	MarkedDown atomic.Int64
}

// Detector confirms and shares upstream failures.
type Detector struct {
	opt     Options
	log     *slog.Logger
	stats   *Stats
	queue   chan string
	base    context.Context // ends at Close: every probe and registry call is bounded by it
	stop    context.CancelFunc
	wg      sync.WaitGroup
	tokens  *ratelimit.Bucket
	warn    *ratelimit.Log
	mu      sync.Mutex
	pending map[string]struct{}
	alive   map[string]time.Time // address → when it last answered a probe
}

// New starts a Detector's workers and its re-probe loop; Close stops them.
func New(opt Options) *Detector {
	if opt.Dial == nil {
		var d net.Dialer
		opt.Dial = d.DialContext
	}
	if opt.ProbeTimeout <= 0 {
		opt.ProbeTimeout = DefaultProbeTimeout
	}
	if opt.ProbeRate <= 0 {
		opt.ProbeRate = DefaultProbeRate
	}
	if opt.Recheck <= 0 {
		opt.Recheck = DefaultRecheck
	}
	if opt.Cooldown <= 0 {
		opt.Cooldown = DefaultCooldown
	}
	if opt.Logger == nil {
		opt.Logger = slog.New(slog.DiscardHandler)
	}
	if opt.Stats == nil {
		opt.Stats = &Stats{}
	}
	if opt.Now == nil {
		opt.Now = time.Now
	}
	d := &Detector{
		opt: opt, log: opt.Logger, stats: opt.Stats,
		queue:   make(chan string, queueSize),
		tokens:  ratelimit.New(float64(opt.ProbeRate), opt.ProbeRate, opt.Now),
		warn:    ratelimit.NewLog(opt.Logger, 10*time.Second, opt.Now),
		pending: map[string]struct{}{}, alive: map[string]time.Time{},
	}
	d.base, d.stop = context.WithCancel(context.Background())
	for range workers {
		d.wg.Add(1)
		go d.work()
	}
	d.wg.Add(1)
	go d.recheckLoop()
	return d
}

// Close stops the detector and waits for its probes to end.
func (d *Detector) Close() {
	d.stop()
	d.wg.Wait()
}

// Stats returns the detector's counters.
func (d *Detector) Stats() *Stats { return d.stats }

// Report makes addr (IP:port) suspect. It never blocks: a report for an
// address already queued, or beyond the queue, is dropped.
func (d *Detector) Report(addr string) {
	d.stats.Reports.Add(1)
	ap, err := netip.ParseAddrPort(addr)
	if err != nil || ap.Port() == 0 {
		d.stats.Ignored.Add(1)
		return
	}
	addr = ap.String() // one spelling per address (IPv6 zones, case)
	d.mu.Lock()
	if _, dup := d.pending[addr]; dup {
		d.mu.Unlock()
		return
	}
	if t, ok := d.alive[addr]; ok && d.opt.Now().Sub(t) < d.opt.Cooldown {
		d.mu.Unlock()
		return
	}
	if len(d.pending) >= maxPending {
		d.mu.Unlock()
		d.stats.Dropped.Add(1)
		return
	}
	select {
	case d.queue <- addr:
		d.pending[addr] = struct{}{}
	default:
		d.stats.Dropped.Add(1)
	}
	d.mu.Unlock()
}

func (d *Detector) work() {
	defer d.wg.Done()
	for {
		select {
		case <-d.base.Done():
			return
		case addr := <-d.queue:
			d.investigate(addr)
			d.mu.Lock()
			delete(d.pending, addr)
			d.mu.Unlock()
		}
	}
}

// investigate probes addr if a live member has it, and marks those members
// down if the probe fails.
func (d *Detector) investigate(addr string) {
	ctx, cancel := context.WithTimeout(d.base, 2*d.opt.ProbeTimeout+time.Second)
	defer cancel()
	suspects, err := d.opt.Registry.MembersAt(ctx, addr)
	if err != nil {
		d.stats.Errors.Add(1)
		d.warn.Warn("failure report not checked: registry unavailable", "addr", addr, "err", err)
		return
	}
	if len(suspects) == 0 {
		d.stats.Ignored.Add(1)
		return
	}
	if !d.tokens.Take() {
		d.stats.Dropped.Add(1)
		return
	}
	switch d.probe(ctx, addr) {
	case probeAlive:
		d.stats.Cleared.Add(1)
		d.log.Debug("reported address answers; suspicion cleared", "addr", addr)
	case probeFailed:
		d.transition(ctx, suspects, d.opt.Registry.MarkDown, &d.stats.Confirmed,
			"member marked down: its address refuses connections", "member not marked down: registry unavailable")
	}
}

// transition applies change (mark or clear) to each member, counting each
// that took effect in done and logging it once: one line per member
// transition.
func (d *Detector) transition(ctx context.Context, ss []registry.Suspect, change func(context.Context, registry.Suspect) (bool, error),
	done *atomic.Uint64, msg, failMsg string) {
	for _, s := range ss {
		ok, err := change(ctx, s)
		switch {
		case err != nil:
			d.stats.Errors.Add(1)
			d.warn.Warn(failMsg, "member", s.ID, "addr", s.Addr, "err", err)
		case ok:
			done.Add(1)
			d.log.Info(msg, "member", s.ID, "addr", s.Addr)
		}
	}
}

// recheckLoop probes marked addresses again every Recheck and clears the
// marks of those that answer, so a pod back on its address is routed
// again within about a second.
func (d *Detector) recheckLoop() {
	defer d.wg.Done()
	t := time.NewTicker(d.opt.Recheck)
	defer t.Stop()
	for {
		select {
		case <-d.base.Done():
			return
		case <-t.C:
			d.recheck()
		}
	}
}

func (d *Detector) recheck() {
	byAddr := map[string][]registry.Suspect{}
	marked := d.opt.Registry.Marked()
	d.stats.MarkedDown.Store(int64(len(marked)))
	for _, s := range marked {
		if len(byAddr) >= maxMarks {
			break
		}
		byAddr[s.Addr] = append(byAddr[s.Addr], s)
	}
	var wg sync.WaitGroup
	sem := make(chan struct{}, workers)
	for addr, ss := range byAddr {
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			ctx, cancel := context.WithTimeout(d.base, 2*d.opt.ProbeTimeout+time.Second)
			defer cancel()
			if d.probe(ctx, addr) != probeAlive {
				return
			}
			d.transition(ctx, ss, d.opt.Registry.ClearDown, &d.stats.Cleared,
				"member reachable again: down mark cleared", "down mark not cleared: registry unavailable")
		}()
	}
	wg.Wait()
}

type probeResult int

const (
	probeAlive probeResult = iota
	probeFailed
	probeInconclusive
)

// probe connects to addr once.
func (d *Detector) probe(ctx context.Context, addr string) probeResult {
	d.stats.Probes.Add(1)
	pctx, cancel := context.WithTimeout(ctx, d.opt.ProbeTimeout)
	defer cancel()
	conn, err := d.opt.Dial(pctx, "tcp", addr)
	if err == nil {
		conn.Close()
		d.mu.Lock()
		if len(d.alive) >= maxPending {
			clear(d.alive)
		}
		d.alive[addr] = d.opt.Now()
		d.mu.Unlock()
		return probeAlive
	}
	if ctx.Err() != nil && pctx.Err() == nil || localFailure(err) {
		d.stats.Inconclusive.Add(1)
		d.warn.Warn("probe inconclusive: the failure is this process's, not the pod's", "addr", addr, "err", err)
		return probeInconclusive
	}
	return probeFailed
}

// localFailure: errors that come from this host's limits, not from the
// peer.
func localFailure(err error) bool {
	return errors.Is(err, syscall.EMFILE) || errors.Is(err, syscall.ENFILE) ||
		errors.Is(err, syscall.ENOBUFS) || errors.Is(err, syscall.EADDRNOTAVAIL) || errors.Is(err, syscall.ENOMEM)
}
