package main

import (
	"context"
	"fmt"
	"io"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/valkey-io/valkey-go"

	"github.com/coord-extproc/coord-extproc/bench/loadgen"
	"github.com/coord-extproc/coord-extproc/internal/valkeyserver"
)

// Data set sizes (SPEC issue 5); -quick shrinks them.
type sizes struct{ dests, fanned, locks int }

type bench struct {
	o      options
	log    io.Writer
	work   string
	valkey *valkeyserver.Server
	client valkey.Client
	sz     sizes
	// processes
	ceiling, coord, coordLL, coordCold *server
	scenarios                          []*scenario
}

type scenario struct {
	name, what string
	mode       loadgen.Mode
	srv        *server
	next       func(i uint64) loadgen.Request
	warm       int
}

func newBench(ctx context.Context, o options, work string, log io.Writer) (*bench, error) {
	b := &bench{o: o, log: log, work: work, sz: sizes{10000, 1000, 10000}}
	if o.quick {
		b.sz = sizes{200, 50, 200}
	}
	var err error
	if b.valkey, err = valkeyserver.Start(filepath.Join(work, "valkey"), 0); err != nil {
		return nil, err
	}
	if b.client, err = valkey.NewClient(valkey.ClientOption{InitAddress: []string{b.valkey.Addr()}, DisableCache: true}); err != nil {
		b.close()
		return nil, err
	}
	fmt.Fprintf(log, "bench: seeding %d destinations, %d fanned-out destinations, %d locks on 5 pods\n", b.sz.dests, b.sz.fanned, b.sz.locks)
	if err := b.seed(ctx); err != nil {
		b.close()
		return nil, err
	}
	// The stream bounds are lifted: the load generator keeps its 4
	// connections at saturation where Envoy's pool would open more past
	// --grpc-max-streams, and the ceiling has no bound either.
	coordArgs := func(extra ...string) []string {
		args := append([]string{"--valkey", b.valkey.URL(), "--allow-upstream", "127.0.0.0/8", "--claim-rate", "0", "--metrics-listen", "", "--log-level", "warn", "--cache-size", "100000",
			"--grpc-max-streams", "100000", "--max-open-streams", "100000"}, extra...)
		return append(args, strings.Fields(o.coordArgs)...)
	}
	// coord-extproc runs as the Kubernetes manifest runs it, under a
	// memory limit; the ceiling with Go's defaults, as a naive peer.
	manifest := []string{"GOMEMLIMIT=" + manifestMemLimit}
	steps := []struct {
		dst  **server
		name string
		bin  string
		env  []string
		args []string
	}{
		{&b.ceiling, "ceiling", o.ceilingBin, nil, nil},
		{&b.coord, "coord-extproc", o.coordBin, manifest, coordArgs()},
		{&b.coordLL, "coord-extproc-least-loaded", o.coordBin, manifest, coordArgs("--strategy", "least-loaded")},
		{&b.coordCold, "coord-extproc-cold", o.coordBin, manifest, coordArgs()},
	}
	for _, s := range steps {
		if *s.dst, err = startServerEnv(ctx, work, s.name, s.bin, s.env, s.args...); err != nil {
			b.close()
			return nil, err
		}
	}
	b.scenarios = b.define()
	return b, nil
}

func (b *bench) close() {
	for _, s := range []*server{b.ceiling, b.coord, b.coordLL, b.coordCold} {
		if s != nil {
			s.stop()
		}
	}
	if b.client != nil {
		b.client.Close()
	}
	if b.valkey != nil {
		b.valkey.Stop()
	}
}

// seed writes pods, bindings and locks exactly as the pods would.
func (b *bench) seed(ctx context.Context) error {
	if err := b.seedPods(ctx, "coordinator", 5); err != nil {
		return err
	}
	if err := b.seedDests(ctx, "coordinator", "dest", 0, b.sz.dests, func(i int) string { return fmt.Sprintf("pod-%d", i%5) }); err != nil {
		return err
	}
	c := b.client
	var cmds valkey.Commands
	for i := 0; i < b.sz.fanned; i++ {
		cmds = append(cmds, c.B().Sadd().Key(fmt.Sprintf("coordinator:destination:fan-%d", i)).Member(fmt.Sprintf("pod-%d", i%5), fmt.Sprintf("pod-%d", (i+1)%5), fmt.Sprintf("pod-%d", (i+2)%5)).Build())
	}
	for i := 0; i < b.sz.locks; i++ {
		cmds = append(cmds, c.B().Hset().Key(fmt.Sprintf("coordinator:lock:lock-%d", i)).FieldValue().FieldValue("podId", fmt.Sprintf("pod-%d", i%5)).FieldValue("destinationId", fmt.Sprintf("dest-%d", i%b.sz.dests)).Build())
	}
	return b.doAll(ctx, cmds)
}

func byHeader(header, id string) loadgen.Request {
	return loadgen.Request{Method: "GET", Path: "/tenants/" + id + "/keys/profile", Headers: loadgen.TypicalHeaders([2]string{header, id})}
}

func (b *bench) define() []*scenario {
	var cold atomic.Uint64
	return []*scenario{
		{name: "1-ceiling", what: "ceiling: constant answer, gRPC cost only", mode: loadgen.ExtProc, srv: b.ceiling,
			next: func(i uint64) loadgen.Request {
				return byHeader("x-destination-id", fmt.Sprintf("dest-%d", i%uint64(b.sz.dests)))
			}},
		{name: "2-cached", what: fmt.Sprintf("coord-extproc, %d destinations on 5 pods, cached", b.sz.dests), mode: loadgen.ExtProc, srv: b.coord, warm: b.sz.dests,
			next: func(i uint64) loadgen.Request {
				return byHeader("x-destination-id", fmt.Sprintf("dest-%d", i%uint64(b.sz.dests)))
			}},
		{name: "3-fanout-least-loaded", what: fmt.Sprintf("%d destinations fanned out to 3 pods, least-loaded", b.sz.fanned), mode: loadgen.ExtProc, srv: b.coordLL, warm: b.sz.fanned,
			next: func(i uint64) loadgen.Request {
				return byHeader("x-destination-id", fmt.Sprintf("fan-%d", i%uint64(b.sz.fanned)))
			}},
		{name: "4-locks", what: fmt.Sprintf("lock routing, %d locks", b.sz.locks), mode: loadgen.ExtProc, srv: b.coord, warm: b.sz.locks,
			next: func(i uint64) loadgen.Request {
				return byHeader("x-lock-id", fmt.Sprintf("lock-%d", i%uint64(b.sz.locks)))
			}},
		{name: "5-cold-claim", what: "cold path: every request a new destination, claim on miss", mode: loadgen.ExtProc, srv: b.coordCold,
			next: func(uint64) loadgen.Request { return byHeader("x-destination-id", fmt.Sprintf("cold-%d", cold.Add(1))) }},
		{name: "6-ext-authz-cached", what: "scenario 2 through ext_authz (unary Check)", mode: loadgen.ExtAuthz, srv: b.coord, warm: b.sz.dests,
			next: func(i uint64) loadgen.Request {
				return byHeader("x-destination-id", fmt.Sprintf("dest-%d", i%uint64(b.sz.dests)))
			}},
	}
}

// load runs one load pattern against a scenario and measures the server
// process and Valkey around it.
func (b *bench) load(ctx context.Context, sc *scenario, rate float64, d time.Duration) (*loadgen.Result, float64, float64, error) {
	return b.loadHeld(ctx, sc, rate, d, 0)
}

func (b *bench) loadHeld(ctx context.Context, sc *scenario, rate float64, d, hold time.Duration) (*loadgen.Result, float64, float64, error) {
	cpu0, _ := cpuTime(sc.srv.pid())
	cmds0, err := b.commands(ctx)
	if err != nil {
		return nil, 0, 0, err
	}
	res, err := loadgen.Run(ctx, loadgen.Config{Mode: sc.mode, Target: sc.srv.addr, Conns: b.o.conns, Concurrency: b.o.concurrency, Rate: rate, Duration: d, Next: sc.next, Hold: hold})
	if err != nil {
		return nil, 0, 0, err
	}
	cpu1, _ := cpuTime(sc.srv.pid())
	cmds1, err := b.commands(ctx)
	if err != nil {
		return nil, 0, 0, err
	}
	n := float64(max(res.Sent, 1))
	return res, float64((cpu1 - cpu0).Microseconds()) / n, float64(cmds1-cmds0) / n, nil
}

// commands is the server's command count (INFO commandstats, scripts'
// inner commands included), less INFO itself, the background commands
// whose cost is per second, not per request: SET (each replica's tracking
// probe, one per CacheTTL/3) and PING (valkey-go's connection keep-alive),
// and the commands named in except (what the bench itself issues).
func (b *bench) commands(ctx context.Context, except ...string) (int64, error) {
	info, err := b.client.Do(ctx, b.client.B().Info().Section("commandstats").Build()).ToString()
	if err != nil {
		return 0, err
	}
	skip := append([]string{"info", "set", "ping"}, except...)
	var total int64
	for _, line := range strings.Split(info, "\n") {
		name, stats, ok := strings.Cut(strings.TrimPrefix(line, "cmdstat_"), ":")
		if !ok || !strings.HasPrefix(line, "cmdstat_") || slices.Contains(skip, name) {
			continue
		}
		var calls int64
		_, _ = fmt.Sscanf(strings.TrimPrefix(stats, "calls="), "%d", &calls)
		total += calls
	}
	return total, nil
}

func (b *bench) measure(ctx context.Context) (*report, error) {
	rep := newReport(b)
	if b.o.memoryOnly {
		return rep, b.memory(ctx, rep)
	}
	if b.o.scaleOnly {
		return rep, b.scaleCurves(ctx, rep)
	}
	for _, sc := range b.scenarios {
		if sc.warm > 0 {
			if _, err := loadgen.Run(ctx, loadgen.Config{Mode: sc.mode, Target: sc.srv.addr, Conns: b.o.conns, Concurrency: b.o.concurrency,
				Duration: time.Minute, MaxRequests: uint64(sc.warm), Next: sc.next}); err != nil {
				return nil, err
			}
		}
	}
	if err := b.pairedCPU(ctx, rep); err != nil {
		return nil, err
	}
	// Saturation, interleaved: round 1 runs every scenario, then round 2...
	for r := 0; r < b.o.rounds; r++ {
		for _, sc := range b.scenarios {
			res, cpu, cmds, err := b.load(ctx, sc, 0, b.o.duration)
			if err != nil {
				return nil, err
			}
			rep.addSaturation(sc, res, cpu, cmds)
			fmt.Fprintf(b.log, "bench: round %d %-24s %8.0f req/s  errors %d %v\n", r+1, sc.name, res.Throughput, res.Errors, res.ErrorKinds)
		}
	}
	// Latency at half the ceiling's saturation throughput, interleaved;
	// the ceiling and the cached scenario in extra paired rounds too, for
	// the p99 target (a median of paired ratios, like the CPU one: one
	// round's p99 moves a lot on a shared 2-core machine).
	rate := rep.Scenarios[0].Throughput / 2
	rep.OfferedRate = rate
	p99 := &pairedResult{Rate: rate, Duration: b.o.duration.String()}
	for r := 0; r < max(b.o.rounds, b.o.cpuRounds); r++ {
		scs := b.scenarios
		if r >= b.o.rounds {
			scs = b.scenarios[:2]
		}
		var pair [2]float64
		for i, sc := range scs {
			res, _, _, err := b.load(ctx, sc, rate, b.o.duration)
			if err != nil {
				return nil, err
			}
			if r < b.o.rounds {
				rep.addLatency(sc, res)
			} else {
				rep.addErrors(sc, res)
			}
			if i < 2 {
				pair[i] = us(res.Latency.Quantile(.99))
			}
		}
		p99.Rounds = append(p99.Rounds, pairRound{Ceiling: pair[0], Coord: pair[1], Ratio: pair[1] / max(pair[0], 1)})
	}
	p99.finish()
	rep.PairedP99 = p99
	// Latency against offered load, ceiling and cached, for the plot.
	for _, f := range []float64{0.1, 0.25, 0.5, 0.75, 0.9} {
		for _, sc := range b.scenarios[:2] {
			res, _, _, err := b.load(ctx, sc, f*rep.Scenarios[0].Throughput, b.o.duration/2)
			if err != nil {
				return nil, err
			}
			rep.addSweep(sc, f*rep.Scenarios[0].Throughput, res)
		}
	}
	if b.o.memoryDests > 0 {
		if err := b.memory(ctx, rep); err != nil {
			return nil, err
		}
	}
	if b.o.scale {
		if err := b.scaleCurves(ctx, rep); err != nil {
			return nil, err
		}
	}
	rep.finish()
	return rep, nil
}

// memory caches memoryDests destinations in a fresh coord-extproc and
// reads its RSS.
func (b *bench) memory(ctx context.Context, rep *report) error {
	n := b.o.memoryDests
	fmt.Fprintf(b.log, "bench: caching %d destinations for the memory measurement\n", n)
	if err := b.seedDests(ctx, "coordinator", "mem", 0, n, func(i int) string { return fmt.Sprintf("pod-%d", i%5) }); err != nil {
		return err
	}
	metrics, err := freeAddr()
	if err != nil {
		return err
	}
	// A soft memory limit, as a production deployment sets it (README):
	// without one the Go runtime lets the heap grow to twice the live data
	// before collecting, and RSS measures garbage, not the cache.
	s, err := startServerEnv(ctx, b.work, "coord-extproc-memory", b.o.coordBin, []string{"GOMEMLIMIT=" + memLimit},
		"--valkey", b.valkey.URL(), "--allow-upstream", "127.0.0.0/8", "--claim-rate", "0", "--metrics-listen", metrics, "--log-level", "warn", "--cache-size", fmt.Sprint(n+n/10))
	if err != nil {
		return err
	}
	defer s.stop()
	base, _ := rss(s.pid())
	start := time.Now()
	res, err := loadgen.Run(ctx, loadgen.Config{Mode: loadgen.ExtAuthz, Target: s.addr, Conns: b.o.conns, Concurrency: 128,
		Duration: 10 * time.Minute, MaxRequests: uint64(n),
		Next: func(i uint64) loadgen.Request { return byHeader("x-destination-id", fmt.Sprintf("mem-%d", i)) }})
	if err != nil {
		return err
	}
	after, _ := rss(s.pid())
	rep.Memory = &memoryResult{GoMemLimit: memLimit, Destinations: n, Resolved: res.Requests - res.Errors, RSSBytes: after, BaselineRSSBytes: base,
		HeapInuseBytes: heapInuse(metrics), Took: time.Since(start).Round(time.Millisecond).String()}
	return nil
}

// memLimit is GOMEMLIMIT for the memory measurement.
const memLimit = "250MiB"

// pairedCPU measures server CPU per decision at one fixed offered load,
// ceiling and cached coord-extproc alternately (which goes first
// alternates too), each stream held as Envoy holds it: the ratio of each
// pair cancels most of the machine's drift between rounds.
func (b *bench) pairedCPU(ctx context.Context, rep *report) error {
	ceil, cached := b.scenarios[0], b.scenarios[1]
	pc := &pairedResult{Rate: b.o.cpuRate, Hold: b.o.hold.String(), Duration: b.o.duration.String()}
	for r := 0; r < b.o.cpuRounds; r++ {
		order := []*scenario{ceil, cached}
		if r%2 == 1 {
			order = []*scenario{cached, ceil}
		}
		cpu := map[*scenario]float64{}
		for _, sc := range order {
			res, c, _, err := b.loadHeld(ctx, sc, b.o.cpuRate, b.o.duration, b.o.hold)
			if err != nil {
				return err
			}
			if res.Errors > 0 {
				return fmt.Errorf("paired CPU round %d, %s: %d errors %v", r+1, sc.name, res.Errors, res.ErrorKinds)
			}
			cpu[sc] = c
		}
		pc.Rounds = append(pc.Rounds, pairRound{Ceiling: cpu[ceil], Coord: cpu[cached], Ratio: cpu[cached] / cpu[ceil]})
		fmt.Fprintf(b.log, "bench: CPU round %d at %.0f req/s: ceiling %.1f µs, coord-extproc %.1f µs per decision (%.2f×)\n", r+1, b.o.cpuRate, cpu[ceil], cpu[cached], cpu[cached]/cpu[ceil])
	}
	pc.finish()
	rep.Paired = pc
	return nil
}
