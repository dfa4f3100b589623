package main

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/coord-extproc/coord-extproc/bench/loadgen"
)

// scaleCurves measures the three curves.
func (b *bench) scaleCurves(ctx context.Context, rep *report) error {
	curves := map[string]func(context.Context) (*scaleCurve, error){"destinations": b.destinationCurve, "pods": b.podCurve, "replicas": b.replicaCurve}
	for _, name := range strings.Split(b.o.curves, ",") {
		curve, ok := curves[name]
		if !ok {
			return fmt.Errorf("unknown scale curve %q (destinations, pods, replicas)", name)
		}
		c, err := curve(ctx)
		if err != nil {
			return err
		}
		rep.Scale = append(rep.Scale, c)
	}
	return nil
}

func (b *bench) addPoint(c *scaleCurve, x int, p scalePoint) {
	p.X = x
	c.Points = append(c.Points, p)
	fmt.Fprintf(b.log, "bench: scale %s %d: %.1f µs/decision (Valkey %.1f µs, %.4f cmds), idle %.1f ms/s, %.2f GC/1000, RSS %.0f MiB, errors %d\n",
		c.Name, x, p.CPUMicros, p.ValkeyCPUMicros, p.ValkeyCmds, p.IdleCPUMillis, p.GCPerThousand, p.RSSMiB, p.Errors)
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
		p, err := b.fixedLoad(ctx, []*server{s}, b.o.cpuRate, func(i uint64) loadgen.Request {
			return byHeader("x-destination-id", id(int(spread(i, n))))
		})
		if err != nil {
			return nil, err
		}
		b.addPoint(c, n, p)
	}
	return c, nil
}

// podCurve runs ever more heartbeating pods (real registry.Members, one
// heartbeat a second each) under 10 000 cached destinations; its control
// is the 1 000-pod point again with SPEC §8's work beside the requests.
func (b *bench) podCurve(ctx context.Context) (*scaleCurve, error) {
	pods, dests, control := []int{5, 50, 200, 1000, 2000}, 10_000, 1000
	if b.o.quick {
		pods, dests, control = []int{5, 20}, 500, 20
	}
	c := &scaleCurve{Name: "pods", X: "pods heartbeating every second", What: fmt.Sprintf("one coord-extproc, %d destinations spread over the pods; idle measured from 2 s after the last request", dests)}
	for _, n := range pods {
		p, err := b.podPoint(ctx, n, dests, false)
		if err != nil {
			return nil, err
		}
		b.addPoint(c, n, p)
	}
	ctrl, err := b.podPoint(ctx, control, dests, true)
	if err != nil {
		return nil, err
	}
	c.Control = &ctrl
	c.ControlWhat = fmt.Sprintf("%d pods with SPEC §8 at work: %d failure reports/s on %d pods (probed, cleared), one pod in %d draining, every pod polling its handoff queue",
		control, reportsPerTick*10, reportedPods, drainEvery)
	fmt.Fprintf(b.log, "bench: scale pods control (%s): %.1f µs/decision, %.4f cmds, idle %.1f ms/s\n", c.ControlWhat, ctrl.CPUMicros, ctrl.ValkeyCmds, ctrl.IdleCPUMillis)
	return c, nil
}

func (b *bench) podPoint(ctx context.Context, pods, dests int, planned bool) (scalePoint, error) {
	prefix := fmt.Sprintf("scale-pods-%d", pods)
	if planned {
		prefix += "-planned"
	}
	stopBeats, err := b.heartbeats(ctx, prefix, pods, planned)
	if err != nil {
		return scalePoint{}, err
	}
	defer stopBeats()
	if err := b.seedDests(ctx, prefix, "d", 0, dests, func(i int) string { return fmt.Sprintf("pod-%d", i%pods) }); err != nil {
		return scalePoint{}, err
	}
	time.Sleep(1500 * time.Millisecond) // every pod registered (they start within a second)
	if planned {
		if err := b.drainSome(ctx, prefix, pods); err != nil {
			return scalePoint{}, err
		}
	}
	s, err := b.startScaled(ctx, "coord-extproc-scale-pods", "--key-prefix", prefix)
	if err != nil {
		return scalePoint{}, err
	}
	defer s.stop()
	id := func(i int) string { return fmt.Sprintf("d-%d", i) }
	if err := b.warm(ctx, s, 0, dests, id); err != nil {
		return scalePoint{}, err
	}
	if planned {
		stopReports, err := failureReports(ctx, s.addr, podPort)
		if err != nil {
			return scalePoint{}, err
		}
		defer stopReports()
	}
	// Two full rounds of heartbeats against a warm cache before the idle
	// window: a replica re-reads the records of pods it served in the last
	// second, and Valkey tells it of the next write to each of those once
	// more (refresh.go); from then on an idle replica is told nothing.
	time.Sleep(2 * time.Second)
	return b.fixedLoad(ctx, []*server{s}, b.o.cpuRate, func(i uint64) loadgen.Request { return byHeader("x-destination-id", id(int(spread(i, dests)))) },
		heartbeatCommands...)
}

// heartbeatCommands are what a pod's heartbeat runs (the script and the
// commands inside it): the pods' traffic, not the coordinator's.
// (sadd: each heartbeat puts its id back in P:members; lpop: the handoff
// queue's poll).
var heartbeatCommands = []string{"evalsha", "eval", "hexists", "hset", "pexpire", "sadd", "lpop"}

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
		p, err := b.replicaPoint(ctx, prefix, n, dests, writesPerSecond, id, b.o.cpuRate)
		if err != nil {
			return nil, err
		}
		b.addPoint(c, n, p)
	}
	// The control: one replica alone at the share each of the most
	// replicas serves. Near the last point, the rise is the lower rate
	// per process (each request pays its own wake-ups, the per-second
	// work is spread over fewer requests), not the sharing.
	last := replicas[len(replicas)-1]
	ctrl, err := b.replicaPoint(ctx, prefix, 1, dests, writesPerSecond, id, b.o.cpuRate/float64(last))
	if err != nil {
		return nil, err
	}
	c.Control, c.ControlWhat = &ctrl, fmt.Sprintf("one replica alone at %.0f req/s, the share each of %d replicas serves", b.o.cpuRate/float64(last), last)
	fmt.Fprintf(b.log, "bench: scale replicas control (%s): %.1f µs/decision\n", c.ControlWhat, ctrl.CPUMicros)
	return c, nil
}

func (b *bench) replicaPoint(ctx context.Context, prefix string, n, dests, writes int, id func(int) string, rate float64) (scalePoint, error) {
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
	return b.fixedLoad(ctx, fleet, rate, func(i uint64) loadgen.Request { return byHeader("x-destination-id", id(int(spread(i, dests)))) },
		"sadd", "srem") // the writer's
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
	fmt.Fprintf(b, "| %s | coord-extproc CPU µs/decision | idle CPU ms/s per replica | GC cycles per 1000 decisions | valkey-server CPU µs/decision (all clients) | coordinators' Valkey cmds/decision | RSS MiB (per replica) | Go heap MiB | decisions | errors |\n|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n", c.X)
	for _, p := range c.Points {
		fmt.Fprintf(b, "| %d | %.1f | %.1f | %.2f | %.1f | %.4f | %.0f | %.0f | %d | %d |\n", p.X, p.CPUMicros, p.IdleCPUMillis, p.GCPerThousand, p.ValkeyCPUMicros, p.ValkeyCmds, p.RSSMiB, p.HeapMiB, p.Decisions, p.Errors)
	}
	if p := c.Control; p != nil {
		fmt.Fprintf(b, "\nControl, %s: %.1f µs per decision, idle %.1f ms/s, %.4f coordinator Valkey commands per decision, %d errors.\n", c.ControlWhat, p.CPUMicros, p.IdleCPUMillis, p.ValkeyCmds, p.Errors)
	}
}
