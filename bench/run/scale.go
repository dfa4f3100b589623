package main

import (
	"context"
	"fmt"
	"math/rand/v2"
	"strings"
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
// runs it (GOMEMLIMIT from its 512Mi limit).
const scaleMemLimit = "512MiB"

type scaleCurve struct {
	Name   string       `json:"name"`
	X      string       `json:"x"`
	What   string       `json:"what"`
	Points []scalePoint `json:"points"`
}

type scalePoint struct {
	X int `json:"x"`
	// CPU of every coord-extproc process, and of valkey-server, per decision.
	CPUMicros       float64 `json:"cpuMicrosPerDecision"`
	ValkeyCPUMicros float64 `json:"valkeyCpuMicrosPerDecision"`
	ValkeyCmds      float64 `json:"valkeyCommandsPerDecision"`
	RSSMiB          float64 `json:"rssMiBPerReplica"`
	HeapMiB         float64 `json:"heapInuseMiBPerReplica"`
	Decisions       uint64  `json:"decisions"`
	Errors          uint64  `json:"errors"`
}

// fixedLoad offers b.o.cpuRate req/s in all, split evenly over srvs, for
// b.o.duration, and measures the fleet and Valkey around it. Valkey
// commands named in notOurs (the bench's own writes) are not counted.
func (b *bench) fixedLoad(ctx context.Context, srvs []*server, next func(i uint64) loadgen.Request, notOurs ...string) (scalePoint, error) {
	var cpu0, cpu1 time.Duration
	fleetCPU := func() (d time.Duration) {
		for _, s := range srvs {
			c, _ := cpuTime(s.pid())
			d += c
		}
		return d
	}
	cpu0 = fleetCPU()
	vcpu0, _ := cpuTime(b.valkey.Pid())
	cmds0, err := b.commands(ctx, notOurs...)
	if err != nil {
		return scalePoint{}, err
	}
	results := make([]*loadgen.Result, len(srvs))
	errs := make([]error, len(srvs))
	var wg sync.WaitGroup
	for i, s := range srvs {
		wg.Go(func() {
			results[i], errs[i] = loadgen.Run(ctx, loadgen.Config{Mode: loadgen.ExtProc, Target: s.addr, Conns: b.o.conns, Concurrency: b.o.concurrency,
				Rate: b.o.cpuRate / float64(len(srvs)), Duration: b.o.duration, Next: next, Hold: b.o.hold})
		})
	}
	wg.Wait()
	cpu1 = fleetCPU()
	vcpu1, _ := cpuTime(b.valkey.Pid())
	cmds1, err := b.commands(ctx, notOurs...)
	if err != nil {
		return scalePoint{}, err
	}
	var p scalePoint
	for i, r := range results {
		if errs[i] != nil {
			return scalePoint{}, errs[i]
		}
		p.Decisions += r.Sent
		p.Errors += r.Errors
	}
	n := float64(max(p.Decisions, 1))
	p.CPUMicros = float64((cpu1 - cpu0).Microseconds()) / n
	p.ValkeyCPUMicros = float64((vcpu1 - vcpu0).Microseconds()) / n
	p.ValkeyCmds = float64(cmds1-cmds0) / n
	for _, s := range srvs {
		r, _ := rss(s.pid())
		p.RSSMiB += float64(r) / (1 << 20) / float64(len(srvs))
		p.HeapMiB += heapInuse(s.metrics) / (1 << 20) / float64(len(srvs))
	}
	return p, nil
}

// startScaled starts a coord-extproc for a scale point, with its metrics
// page (for the heap figure).
func (b *bench) startScaled(ctx context.Context, name string, extra ...string) (*server, error) {
	metrics, err := freeAddr()
	if err != nil {
		return nil, err
	}
	args := append([]string{"--valkey", b.valkey.URL(), "--allow-upstream", "127.0.0.0/8", "--metrics-listen", metrics, "--log-level", "warn"}, extra...)
	s, err := startServerEnv(ctx, b.work, name, b.o.coordBin, []string{"GOMEMLIMIT=" + scaleMemLimit}, args...)
	if err != nil {
		return nil, err
	}
	s.metrics = metrics
	return s, nil
}

// warm resolves ids [from, to) once through s, closed loop.
func (b *bench) warm(ctx context.Context, s *server, from, to int, id func(i int) string) error {
	res, err := loadgen.Run(ctx, loadgen.Config{Mode: loadgen.ExtAuthz, Target: s.addr, Conns: b.o.conns, Concurrency: 128,
		Duration: 10 * time.Minute, MaxRequests: uint64(to - from),
		Next: func(i uint64) loadgen.Request { return byHeader("x-destination-id", id(from+int(i))) }})
	if err != nil {
		return err
	}
	if res.Errors > 0 {
		return fmt.Errorf("warming %s: %d errors %v", s.name, res.Errors, res.ErrorKinds)
	}
	return nil
}

// spread picks id i of n with a multiplicative hash, so a run touches the
// whole cache rather than a CPU-cache-friendly window of it.
func spread(i uint64, n int) uint64 { return (i * 2654435761) % uint64(n) }

// seedDests binds dests destinations (prefix:destination:name-i) to pods.
func (b *bench) seedDests(ctx context.Context, prefix, name string, from, to int, pod func(i int) string) error {
	c := b.client
	cmds := make(valkey.Commands, 0, 10000)
	for i := from; i < to; i++ {
		cmds = append(cmds, c.B().Sadd().Key(fmt.Sprintf("%s:destination:%s-%d", prefix, name, i)).Member(pod(i)).Build())
		if len(cmds) == cap(cmds) || i == to-1 {
			for _, r := range c.DoMulti(ctx, cmds...) {
				if err := r.Error(); err != nil {
					return fmt.Errorf("seed: %w", err)
				}
			}
			cmds = cmds[:0]
		}
	}
	return nil
}

// seedPods registers n pods (prefix:member:pod-i) without heartbeats.
func (b *bench) seedPods(ctx context.Context, prefix string, n int) error {
	c := b.client
	var cmds valkey.Commands
	for p := range n {
		id := fmt.Sprintf("pod-%d", p)
		cmds = append(cmds, c.B().Sadd().Key(prefix+":members").Member(id).Build(),
			c.B().Hset().Key(prefix+":member:"+id).FieldValue().FieldValue("address", fmt.Sprintf("http://127.0.0.1:%d", 7000+p)).FieldValue("load", "0").Build())
	}
	for _, r := range c.DoMulti(ctx, cmds...) {
		if err := r.Error(); err != nil {
			return fmt.Errorf("seed: %w", err)
		}
	}
	return nil
}

// heartbeats runs n real registry.Members under prefix, each heartbeating
// every second with a changing load (every heartbeat rewrites its record,
// so every coordinator caching it is told). stop deregisters them.
func (b *bench) heartbeats(ctx context.Context, prefix string, n int) (stop func(), err error) {
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	stop = func() { cancel(); wg.Wait() }
	for p := range n {
		m, err := registry.NewMember(registry.MemberOptions{Client: b.client, Prefix: prefix, ID: fmt.Sprintf("pod-%d", p),
			Address: fmt.Sprintf("http://127.0.0.1:%d", 10000+p), TTL: 5 * time.Second, HeartbeatInterval: time.Second,
			Load: func() int64 { return rand.Int64N(100) }})
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

// scaleCurves measures the three curves.
func (b *bench) scaleCurves(ctx context.Context, rep *report) error {
	for _, curve := range []func(context.Context) (*scaleCurve, error){b.destinationCurve, b.podCurve, b.replicaCurve} {
		c, err := curve(ctx)
		if err != nil {
			return err
		}
		rep.Scale = append(rep.Scale, c)
	}
	return nil
}

func (b *bench) scalePoint(c *scaleCurve, x int, p scalePoint) {
	p.X = x
	c.Points = append(c.Points, p)
	fmt.Fprintf(b.log, "bench: scale %s %d: %.1f µs/decision (Valkey %.1f µs, %.4f cmds), RSS %.0f MiB, errors %d\n",
		c.Name, x, p.CPUMicros, p.ValkeyCPUMicros, p.ValkeyCmds, p.RSSMiB, p.Errors)
}

// destinationCurve caches ever more destinations in one coord-extproc
// and measures each size with requests spread over all of them.
func (b *bench) destinationCurve(ctx context.Context) (*scaleCurve, error) {
	sizes := []int{10_000, 30_000, 100_000, 300_000, 1_000_000}
	if b.o.quick {
		sizes = []int{500, 2000}
	}
	c := &scaleCurve{Name: "destinations", X: "cached destinations", What: "one coord-extproc, 5 pods, requests spread over every cached destination"}
	const prefix = "scale-dest"
	if err := b.seedPods(ctx, prefix, 5); err != nil {
		return nil, err
	}
	last := sizes[len(sizes)-1]
	s, err := b.startScaled(ctx, "coord-extproc-scale-destinations", "--key-prefix", prefix, "--cache-size", fmt.Sprint(last+last/10))
	if err != nil {
		return nil, err
	}
	defer s.stop()
	id := func(i int) string { return fmt.Sprintf("d-%d", i) }
	done := 0
	for _, n := range sizes {
		fmt.Fprintf(b.log, "bench: scale destinations: caching %d\n", n)
		if err := b.seedDests(ctx, prefix, "d", done, n, func(i int) string { return fmt.Sprintf("pod-%d", i%5) }); err != nil {
			return nil, err
		}
		if err := b.warm(ctx, s, done, n, id); err != nil {
			return nil, err
		}
		done = n
		p, err := b.fixedLoad(ctx, []*server{s}, func(i uint64) loadgen.Request {
			return byHeader("x-destination-id", id(int(spread(i, n))))
		})
		if err != nil {
			return nil, err
		}
		b.scalePoint(c, n, p)
	}
	return c, nil
}

// podCurve runs ever more heartbeating pods (real registry.Members, one
// heartbeat a second each) under 10 000 cached destinations.
func (b *bench) podCurve(ctx context.Context) (*scaleCurve, error) {
	pods, dests := []int{5, 50, 200, 1000}, 10_000
	if b.o.quick {
		pods, dests = []int{5, 20}, 500
	}
	c := &scaleCurve{Name: "pods", X: "pods heartbeating every second", What: fmt.Sprintf("one coord-extproc, %d destinations spread over the pods", dests)}
	for _, n := range pods {
		prefix := fmt.Sprintf("scale-pods-%d", n)
		stop, err := b.heartbeats(ctx, prefix, n)
		if err != nil {
			return nil, err
		}
		p, err := b.podPoint(ctx, prefix, n, dests)
		stop()
		if err != nil {
			return nil, err
		}
		b.scalePoint(c, n, p)
	}
	return c, nil
}

func (b *bench) podPoint(ctx context.Context, prefix string, pods, dests int) (scalePoint, error) {
	if err := b.seedDests(ctx, prefix, "d", 0, dests, func(i int) string { return fmt.Sprintf("pod-%d", i%pods) }); err != nil {
		return scalePoint{}, err
	}
	time.Sleep(1500 * time.Millisecond) // every pod registered (they start within a second)
	s, err := b.startScaled(ctx, "coord-extproc-scale-pods", "--key-prefix", prefix)
	if err != nil {
		return scalePoint{}, err
	}
	defer s.stop()
	id := func(i int) string { return fmt.Sprintf("d-%d", i) }
	if err := b.warm(ctx, s, 0, dests, id); err != nil {
		return scalePoint{}, err
	}
	time.Sleep(time.Second) // a full round of heartbeats against a warm cache
	return b.fixedLoad(ctx, []*server{s}, func(i uint64) loadgen.Request { return byHeader("x-destination-id", id(int(spread(i, dests)))) },
		heartbeatCommands...)
}

// heartbeatCommands are what a pod's heartbeat runs (the script and the
// commands inside it): the pods' traffic, not the coordinator's.
var heartbeatCommands = []string{"evalsha", "eval", "hexists", "hset", "pexpire"}

// replicaCurve shares one Valkey between ever more coord-extproc replicas,
// the same total load split among them, while bindings change at a steady
// rate: each write is an invalidation for every replica caching the key.
func (b *bench) replicaCurve(ctx context.Context) (*scaleCurve, error) {
	replicas, dests := []int{1, 2, 4, 8}, 10_000
	if b.o.quick {
		replicas, dests = []int{1, 2}, 500
	}
	const writesPerSecond = 100
	c := &scaleCurve{Name: "replicas", X: "coord-extproc replicas", What: fmt.Sprintf("%d destinations on 5 pods, the fixed load split over the replicas, %d binding writes/s", dests, writesPerSecond)}
	const prefix = "scale-rep"
	if err := b.seedPods(ctx, prefix, 5); err != nil {
		return nil, err
	}
	if err := b.seedDests(ctx, prefix, "d", 0, dests, func(i int) string { return fmt.Sprintf("pod-%d", i%5) }); err != nil {
		return nil, err
	}
	id := func(i int) string { return fmt.Sprintf("d-%d", i) }
	for _, n := range replicas {
		p, err := b.replicaPoint(ctx, prefix, n, dests, writesPerSecond, id)
		if err != nil {
			return nil, err
		}
		b.scalePoint(c, n, p)
	}
	return c, nil
}

func (b *bench) replicaPoint(ctx context.Context, prefix string, n, dests, writes int, id func(int) string) (scalePoint, error) {
	var fleet []*server
	defer func() {
		for _, s := range fleet {
			s.stop()
		}
	}()
	for r := range n {
		s, err := b.startScaled(ctx, fmt.Sprintf("coord-extproc-scale-replica-%d", r), "--key-prefix", prefix)
		if err != nil {
			return scalePoint{}, err
		}
		fleet = append(fleet, s)
		if err := b.warm(ctx, s, 0, dests, id); err != nil {
			return scalePoint{}, err
		}
	}
	wctx, stop := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Go(func() { b.churnBindings(wctx, prefix, dests, writes, id) })
	defer func() { stop(); wg.Wait() }()
	return b.fixedLoad(ctx, fleet, func(i uint64) loadgen.Request { return byHeader("x-destination-id", id(int(spread(i, dests)))) },
		"sadd", "srem") // the writer's
}

// churnBindings adds and removes a second pod on destinations, writes per
// second, until ctx ends.
func (b *bench) churnBindings(ctx context.Context, prefix string, dests, writes int, id func(int) string) {
	t := time.NewTicker(time.Second / time.Duration(writes))
	defer t.Stop()
	c := b.client
	for i := 0; ; i++ {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		d := int(spread(uint64(i/2), dests))
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

// flatUntil is the last x whose cost is within 20 % of the first point's
// (the curve is flat up to there).
func (c *scaleCurve) flatUntil() (x int, worst float64) {
	if len(c.Points) == 0 {
		return 0, 0
	}
	base := c.Points[0].CPUMicros
	x = c.Points[0].X
	flat := true
	for _, p := range c.Points {
		worst = max(worst, p.CPUMicros/max(base, 0.001))
		if flat && p.CPUMicros <= 1.2*base {
			x = p.X
		} else {
			flat = false
		}
	}
	return x, worst
}

func (c *scaleCurve) markdown(b *strings.Builder) {
	x, worst := c.flatUntil()
	fmt.Fprintf(b, "\n**Against %s** (%s): CPU per decision within 20 %% of the first point up to %d; at most %.2f× it.\n\n", c.X, c.What, x, worst)
	fmt.Fprintf(b, "| %s | coord-extproc CPU µs/decision | valkey-server CPU µs/decision (all clients) | coordinators' Valkey cmds/decision | RSS MiB (per replica) | Go heap MiB | decisions | errors |\n|---:|---:|---:|---:|---:|---:|---:|---:|\n", c.X)
	for _, p := range c.Points {
		fmt.Fprintf(b, "| %d | %.1f | %.1f | %.4f | %.0f | %.0f | %d | %d |\n", p.X, p.CPUMicros, p.ValkeyCPUMicros, p.ValkeyCmds, p.RSSMiB, p.HeapMiB, p.Decisions, p.Errors)
	}
}
