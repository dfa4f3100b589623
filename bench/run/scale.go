package main

import (
	"context"
	"fmt"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/valkey-io/valkey-go"

	"github.com/coord-extproc/coord-extproc/bench/loadgen"
	"github.com/coord-extproc/coord-extproc/registry"
)

// The scale curves (issue #13): cost per cached decision as the data set,
// the fleet of pods and the fleet of coordinators grow. Every point is
// measured at the same fixed offered load (--cpu-rate, streams held like
// the paired CPU rounds), on coord-extproc run as the Kubernetes manifest
// runs it (GOMEMLIMIT from its 512Mi limit), as in every scenario.
const manifestMemLimit = "512MiB"

type scaleCurve struct {
	Name   string       `json:"name"`
	X      string       `json:"x"`
	What   string       `json:"what"`
	Points []scalePoint `json:"points"`
	// Control is a point that separates two causes (see replicaCurve).
	Control     *scalePoint `json:"control,omitempty"`
	ControlWhat string      `json:"controlWhat,omitempty"`
}

type scalePoint struct {
	X int `json:"x"`
	// CPU of every coord-extproc process, and of valkey-server, per decision.
	CPUMicros       float64 `json:"cpuMicrosPerDecision"`
	ValkeyCPUMicros float64 `json:"valkeyCpuMicrosPerDecision"`
	ValkeyCmds      float64 `json:"valkeyCommandsPerDecision"`
	// Idle: CPU per replica per second with no requests (heartbeats,
	// invalidations, probes, timers), measured just before the load.
	IdleCPUMillis float64 `json:"idleCpuMillisPerSecondPerReplica"`
	// GC cycles per 1 000 decisions, over the fleet.
	GCPerThousand float64 `json:"gcCyclesPerThousandDecisions"`
	RSSMiB        float64 `json:"rssMiBPerReplica"`
	HeapMiB       float64 `json:"heapInuseMiBPerReplica"`
	Decisions     uint64  `json:"decisions"`
	Errors        uint64  `json:"errors"`
}

// fixedLoad measures the fleet srvs idle, then under rate req/s in all, split evenly over them, for scaleRounds rounds of b.o.duration:
// CPU per decision is the median round's, the rest sums or averages
// over all rounds. Valkey commands named in notOurs (the bench's own
// writes) are not counted.
func (b *bench) fixedLoad(ctx context.Context, srvs []*server, rate float64, next func(i uint64) loadgen.Request, notOurs ...string) (scalePoint, error) {
	fleetCPU := func() (d time.Duration) {
		for _, s := range srvs {
			c, _ := cpuTime(s.pid())
			d += c
		}
		return d
	}
	gcs := func() (n float64) {
		for _, s := range srvs {
			n += metric(s.metrics, "go_gc_duration_seconds_count")
		}
		return n
	}
	var p scalePoint
	idle0 := fleetCPU()
	const idle = 2 * time.Second
	select {
	case <-time.After(idle):
	case <-ctx.Done():
		return p, ctx.Err()
	}
	p.IdleCPUMillis = float64((fleetCPU() - idle0).Milliseconds()) / idle.Seconds() / float64(len(srvs))
	// A second of the load, not measured: the first request to each pod
	// after idleness reads the record its heartbeats wrote meanwhile
	// (refresh.go). The rounds measure the steady state.
	prime := loadgen.Config{Mode: loadgen.ExtProc, Target: srvs[0].addr, Conns: b.o.conns, Concurrency: b.o.concurrency,
		Rate: rate / float64(len(srvs)), Duration: time.Second, Next: next, Hold: b.o.hold}
	for _, s := range srvs {
		prime.Target = s.addr
		if _, err := loadgen.Run(ctx, prime); err != nil {
			return p, err
		}
	}
	gc0 := gcs()
	vcpu0, _ := cpuTime(b.valkey.Pid())
	cmds0, err := b.commands(ctx, notOurs...)
	if err != nil {
		return p, err
	}
	var perRound []float64
	for range b.scaleRounds() {
		cpu0, sent0 := fleetCPU(), p.Decisions
		if err := b.offer(ctx, srvs, rate, next, &p); err != nil {
			return p, err
		}
		perRound = append(perRound, float64((fleetCPU()-cpu0).Microseconds())/float64(max(p.Decisions-sent0, 1)))
	}
	vcpu1, _ := cpuTime(b.valkey.Pid())
	cmds1, err := b.commands(ctx, notOurs...)
	if err != nil {
		return p, err
	}
	n := float64(max(p.Decisions, 1))
	p.CPUMicros = median(perRound)
	p.GCPerThousand = (gcs() - gc0) * 1000 / n
	p.ValkeyCPUMicros = float64((vcpu1 - vcpu0).Microseconds()) / n
	p.ValkeyCmds = float64(cmds1-cmds0) / n
	for _, s := range srvs {
		r, _ := rss(s.pid())
		p.RSSMiB += float64(r) / (1 << 20) / float64(len(srvs))
		p.HeapMiB += heapInuse(s.metrics) / (1 << 20) / float64(len(srvs))
	}
	return p, nil
}

func (b *bench) scaleRounds() int {
	if b.o.quick {
		return 1
	}
	return 3
}

// offer runs one round of the fixed load over srvs, adding to p's counts.
func (b *bench) offer(ctx context.Context, srvs []*server, rate float64, next func(i uint64) loadgen.Request, p *scalePoint) error {
	results := make([]*loadgen.Result, len(srvs))
	errs := make([]error, len(srvs))
	var wg sync.WaitGroup
	for i, s := range srvs {
		wg.Go(func() {
			results[i], errs[i] = loadgen.Run(ctx, loadgen.Config{Mode: loadgen.ExtProc, Target: s.addr, Conns: b.o.conns, Concurrency: b.o.concurrency,
				Rate: rate / float64(len(srvs)), Duration: b.o.duration, Next: next, Hold: b.o.hold})
		})
	}
	wg.Wait()
	for i, r := range results {
		if errs[i] != nil {
			return errs[i]
		}
		p.Decisions += r.Sent
		p.Errors += r.Errors
	}
	return nil
}

// startScaled starts a coord-extproc for a scale point, with its metrics
// page (for the heap figure).
func (b *bench) startScaled(ctx context.Context, name string, extra ...string) (*server, error) {
	metrics, err := freeAddr()
	if err != nil {
		return nil, err
	}
	args := append([]string{"--valkey", b.valkey.URL(), "--allow-upstream", "127.0.0.0/8", "--claim-rate", "0", "--metrics-listen", metrics, "--log-level", "warn"}, extra...)
	s, err := startServerEnv(ctx, b.work, name, b.o.coordBin, []string{"GOMEMLIMIT=" + manifestMemLimit}, args...)
	if err != nil {
		return nil, err
	}
	s.metrics = metrics
	return s, nil
}

// warm resolves ids [from, to) once through s, closed loop, at a
// concurrency the two cores here absorb: more only queues cold reads
// behind each other until some miss the 150 ms decision budget. With a
// thousand pods heartbeating from this process a few cold reads still
// outlast their 50 ms call deadline (503): a second pass, answered from
// the cache but for those, reads them; it must have no error.
func (b *bench) warm(ctx context.Context, s *server, from, to int, id func(i int) string) error {
	var res *loadgen.Result
	for pass := range 2 {
		var err error
		res, err = loadgen.Run(ctx, loadgen.Config{Mode: loadgen.ExtAuthz, Target: s.addr, Conns: b.o.conns, Concurrency: 32,
			Duration: 10 * time.Minute, MaxRequests: uint64(to - from),
			Next: func(i uint64) loadgen.Request { return byHeader("x-destination-id", id(from+int(i))) }})
		if err != nil {
			return err
		}
		if res.Errors == 0 {
			return nil
		}
		fmt.Fprintf(b.log, "bench: warming %s, pass %d: %d errors %v\n", s.name, pass+1, res.Errors, res.ErrorKinds)
	}
	return fmt.Errorf("warming %s: %d errors %v in the second pass", s.name, res.Errors, res.ErrorKinds)
}

// spread picks id i of n with a multiplicative hash, so a run touches the
// whole cache rather than a CPU-cache-friendly window of it.
func spread(i uint64, n int) uint64 { return (i * 2654435761) % uint64(n) }

// seedDests binds destinations [from, to) (prefix:destination:name-i) to pods.
func (b *bench) seedDests(ctx context.Context, prefix, name string, from, to int, pod func(i int) string) error {
	c := b.client
	for lo := from; lo < to; lo += seedBatch { // a batch at a time: a million commands held at once would be ~200 MB
		cmds := make(valkey.Commands, 0, seedBatch)
		for i := lo; i < min(lo+seedBatch, to); i++ {
			cmds = append(cmds, c.B().Sadd().Key(fmt.Sprintf("%s:destination:%s-%d", prefix, name, i)).Member(pod(i)).Build())
		}
		if err := b.doAll(ctx, cmds); err != nil {
			return err
		}
	}
	return nil
}

const seedBatch = 10000

// seedPods registers n pods (prefix:member:pod-i, load i) without
// heartbeats.
func (b *bench) seedPods(ctx context.Context, prefix string, n int) error {
	c := b.client
	var cmds valkey.Commands
	for p := range n {
		id := fmt.Sprintf("pod-%d", p)
		cmds = append(cmds, c.B().Sadd().Key(prefix+":members").Member(id).Build(),
			c.B().Hset().Key(prefix+":member:"+id).FieldValue().FieldValue("address", fmt.Sprintf("http://127.0.0.1:%d", 7000+p)).FieldValue("load", fmt.Sprint(p)).Build())
	}
	return b.doAll(ctx, cmds)
}

// doAll runs seeding commands in pipelined batches.
func (b *bench) doAll(ctx context.Context, cmds valkey.Commands) error {
	for len(cmds) > 0 {
		batch := cmds[:min(len(cmds), seedBatch)]
		cmds = cmds[len(batch):]
		for _, r := range b.client.DoMulti(ctx, batch...) {
			if err := r.Error(); err != nil {
				return fmt.Errorf("seed: %w", err)
			}
		}
	}
	return nil
}

// heartbeats runs n real registry.Members under prefix, each heartbeating
// every second with a changing load (every heartbeat rewrites its record,
// so every coordinator caching it is told). With planned, each also serves
// handoffs (SPEC §8.2: it polls its handoff queue). stop deregisters them.
func (b *bench) heartbeats(ctx context.Context, prefix string, n int, planned bool) (stop func(), err error) {
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	stop = func() { cancel(); wg.Wait() }
	for p := range n {
		opt := registry.MemberOptions{Client: b.client, Prefix: prefix, ID: fmt.Sprintf("pod-%d", p),
			Address: fmt.Sprintf("http://127.0.0.1:%d", podPort(p)), TTL: 5 * time.Second, HeartbeatInterval: time.Second,
			Load: func() int64 { return rand.Int64N(100) }}
		if planned {
			opt.Handoff = func(context.Context, string, registry.PeerLoad) error { return nil }
		}
		m, err := registry.NewMember(opt)
		if err != nil {
			stop()
			return nil, err
		}
		wg.Go(func() {
			// Pods start at different moments: spread the heartbeats over the second.
			select {
			case <-time.After(rand.N(time.Second)):
				_ = m.Run(ctx)
			case <-ctx.Done():
			}
		})
	}
	return stop, nil
}

// podPort is where heartbeating pod p says it listens.
func podPort(p int) int { return 10000 + p }

// churnBindings adds and removes a second pod on destinations, writes per
// second, until ctx ends.
func (b *bench) churnBindings(ctx context.Context, prefix string, dests, writes int, id func(int) string) {
	t := time.NewTicker(time.Second / time.Duration(writes))
	defer t.Stop()
	c := b.client
	rnd := rand.New(rand.NewPCG(1, 2))
	d := 0
	for i := 0; ; i++ {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if i%2 == 0 { // independent of the order requests visit destinations in
			d = rnd.IntN(dests)
		}
		key, extra := fmt.Sprintf("%s:destination:%s", prefix, id(d)), fmt.Sprintf("pod-%d", (d+1)%5)
		cmd := c.B().Sadd().Key(key).Member(extra).Build()
		if i%2 == 1 {
			cmd = c.B().Srem().Key(key).Member(extra).Build()
		}
		wctx, cancel := context.WithTimeout(ctx, time.Second)
		_ = c.Do(wctx, cmd).Error()
		cancel()
	}
}
