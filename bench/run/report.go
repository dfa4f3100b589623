package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"time"

	"github.com/coord-extproc/coord-extproc/bench/loadgen"
)

type report struct {
	Date        string            `json:"date"`
	Machine     map[string]string `json:"machine"`
	Settings    map[string]any    `json:"settings"`
	OfferedRate float64           `json:"latencyOfferedRate"`
	Scenarios   []*scenarioResult `json:"scenarios"`
	Sweep       []sweepPoint      `json:"sweep"`
	Memory      *memoryResult     `json:"memory,omitempty"`
	Targets     []target          `json:"targets"`
	Micro       []microResult     `json:"micro,omitempty"`
	Paired      *pairedResult     `json:"cpuPerDecision,omitempty"`
	PairedP99   *pairedResult     `json:"p99AtHalfLoad,omitempty"`
	Scale       []*scaleCurve     `json:"scale,omitempty"`

	index map[string]*scenarioResult
	hists map[string]*loadgen.Histogram
}

type scenarioResult struct {
	Name             string             `json:"name"`
	What             string             `json:"what"`
	Throughput       float64            `json:"throughput"` // mean over rounds, req/s
	Rounds           []float64          `json:"rounds"`
	CPUMicrosPerReq  float64            `json:"serverCpuMicrosPerRequest"`
	ValkeyCmdsPerReq float64            `json:"valkeyCommandsPerRequest"`
	Errors           uint64             `json:"errors"`
	ErrorKinds       map[string]uint64  `json:"errorKinds,omitempty"`
	P50, P90, P99    float64            `json:"-"`
	P999             float64            `json:"-"`
	Latency          map[string]float64 `json:"latencyMicrosAtOfferedRate"`
	cpu, cmds        []float64
}

type sweepPoint struct {
	Scenario string             `json:"scenario"`
	Offered  float64            `json:"offered"`
	P50, P99 float64            `json:"-"`
	Micros   map[string]float64 `json:"latencyMicros"`
}

type memoryResult struct {
	GoMemLimit       string  `json:"gomemlimit"`
	Destinations     int     `json:"destinations"`
	Resolved         uint64  `json:"resolved"`
	RSSBytes         int64   `json:"rssBytes"`
	BaselineRSSBytes int64   `json:"baselineRssBytes"`
	HeapInuseBytes   float64 `json:"heapInuseBytes"`
	Took             string  `json:"took"`
}

// pairedResult is the CPU-per-decision comparison at a fixed load.
type pairedResult struct {
	Rate          float64     `json:"offeredRate"`
	Hold          string      `json:"hold"`
	Duration      string      `json:"duration"`
	Rounds        []pairRound `json:"rounds"`
	MedianRatio   float64     `json:"medianRatio"`
	MedianCoord   float64     `json:"medianCoordMicros"`
	MedianCeiling float64     `json:"medianCeilingMicros"`
}

type pairRound struct {
	Ceiling float64 `json:"ceilingMicros"`
	Coord   float64 `json:"coordMicros"`
	Ratio   float64 `json:"ratio"`
}

func (p *pairedResult) finish() {
	var ratios, coord, ceil []float64
	for _, r := range p.Rounds {
		ratios, coord, ceil = append(ratios, r.Ratio), append(coord, r.Coord), append(ceil, r.Ceiling)
	}
	p.MedianRatio, p.MedianCoord, p.MedianCeiling = median(ratios), median(coord), median(ceil)
}

func median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

type target struct {
	What     string `json:"what"`
	Measured string `json:"measured"`
	Met      bool   `json:"met"`
}

type microResult struct {
	Name    string `json:"name"`
	Metrics string `json:"metrics"`
}

func newReport(b *bench) *report {
	return &report{
		Date:    time.Now().UTC().Format(time.RFC3339),
		Machine: machine(b),
		Settings: map[string]any{"duration": b.o.duration.String(), "rounds": b.o.rounds, "concurrency": b.o.concurrency,
			"connections": b.o.conns, "destinations": b.sz.dests, "fannedOut": b.sz.fanned, "locks": b.sz.locks,
			"cpuRate": b.o.cpuRate, "hold": b.o.hold.String()},
		index: map[string]*scenarioResult{}, hists: map[string]*loadgen.Histogram{},
	}
}

func machine(b *bench) map[string]string {
	m := map[string]string{"cpus": fmt.Sprint(runtime.NumCPU()), "go": runtime.Version(), "valkey": b.valkey.Version(), "os": runtime.GOOS + "/" + runtime.GOARCH}
	if f, err := os.Open("/proc/cpuinfo"); err == nil {
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			if k, v, ok := strings.Cut(sc.Text(), ":"); ok && strings.TrimSpace(k) == "model name" {
				m["cpu"] = strings.TrimSpace(v)
				break
			}
		}
		f.Close()
	}
	if k, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		m["kernel"] = strings.TrimSpace(string(k))
	}
	return m
}

func (r *report) result(sc *scenario) *scenarioResult {
	if s := r.index[sc.name]; s != nil {
		return s
	}
	s := &scenarioResult{Name: sc.name, What: sc.what, ErrorKinds: map[string]uint64{}}
	r.index[sc.name] = s
	r.Scenarios = append(r.Scenarios, s)
	return s
}

func (r *report) addSaturation(sc *scenario, res *loadgen.Result, cpu, cmds float64) {
	s := r.result(sc)
	s.Rounds = append(s.Rounds, res.Throughput)
	s.cpu, s.cmds = append(s.cpu, cpu), append(s.cmds, cmds)
	s.Throughput, s.CPUMicrosPerReq, s.ValkeyCmdsPerReq = mean(s.Rounds), mean(s.cpu), mean(s.cmds)
	r.addErrors(sc, res)
}

func (r *report) addLatency(sc *scenario, res *loadgen.Result) {
	h := r.hists[sc.name]
	if h == nil {
		h = &loadgen.Histogram{}
		r.hists[sc.name] = h
	}
	h.Merge(res.Latency)
	r.addErrors(sc, res)
}

// addErrors counts a run's errors against its scenario.
func (r *report) addErrors(sc *scenario, res *loadgen.Result) {
	s := r.result(sc)
	s.Errors += res.Errors
	for k, v := range res.ErrorKinds {
		s.ErrorKinds[k] += v
	}
}

func (r *report) addSweep(sc *scenario, offered float64, res *loadgen.Result) {
	h := res.Latency
	r.Sweep = append(r.Sweep, sweepPoint{Scenario: sc.name, Offered: offered, Micros: quantiles(h)})
}

func (r *report) finish() {
	for _, s := range r.Scenarios {
		if h := r.hists[s.Name]; h != nil {
			s.Latency = quantiles(h)
		}
	}
	ceil, cached := r.index["1-ceiling"], r.index["2-cached"]
	if ceil == nil || cached == nil {
		return
	}
	if p := r.Paired; p != nil {
		r.Targets = append(r.Targets, target{fmt.Sprintf("cached decision CPU ≤ 0.75 × the ceiling's at %.0f req/s (median of %d paired rounds)", p.Rate, len(p.Rounds)),
			fmt.Sprintf("%.2f× (%.1f vs %.1f µs)", p.MedianRatio, p.MedianCoord, p.MedianCeiling), p.MedianRatio <= 0.75})
	}
	ratio := cached.Throughput / ceil.Throughput
	r.Targets = append(r.Targets, target{"scenario 2 saturation throughput ≥ 1.25 × the ceiling's", fmt.Sprintf("%.2f×", ratio), ratio >= 1.25})
	if p := r.PairedP99; p != nil {
		r.Targets = append(r.Targets, target{fmt.Sprintf("scenario 2 p99 at 50%% load ≤ the ceiling's (median of %d paired rounds; all rounds merged: %.2f×)", len(p.Rounds), cached.Latency["p99"]/max(ceil.Latency["p99"], 1)),
			fmt.Sprintf("%.2f× (%s vs %s)", p.MedianRatio, fmtUS(p.MedianCoord), fmtUS(p.MedianCeiling)), p.MedianRatio <= 1})
	}
	for _, n := range []string{"2-cached", "3-fanout-least-loaded", "4-locks", "6-ext-authz-cached"} {
		if s := r.index[n]; s != nil {
			r.Targets = append(r.Targets, target{n + ": 0 Valkey commands per request in steady state", fmt.Sprintf("%.4f", s.ValkeyCmdsPerReq), s.ValkeyCmdsPerReq < 0.001})
		}
	}
	if s := r.index["5-cold-claim"]; s != nil {
		r.Targets = append(r.Targets, target{"5-cold-claim: ≤ 3 Valkey commands per request", fmt.Sprintf("%.2f", s.ValkeyCmdsPerReq), s.ValkeyCmdsPerReq <= 3})
	}
	if m := r.Memory; m != nil {
		r.Targets = append(r.Targets, target{fmt.Sprintf("RSS with %d cached destinations < 300 MiB", m.Destinations), fmt.Sprintf("%.0f MiB", float64(m.RSSBytes)/(1<<20)), m.RSSBytes < 300<<20})
	}
	r.podTargets()
}

// idleBefore23 is the idle CPU at 1 000 heartbeating pods measured before
// issue #23 (bench/results of 2026-11-21): the target halves it.
const idleBefore23 = 65.0

// podTargets are issue #23's: a thousand heartbeating pods cost nothing.
func (r *report) podTargets() {
	var pods *scaleCurve
	for _, c := range r.Scale {
		if c.Name == "pods" {
			pods = c
		}
	}
	if pods == nil || len(pods.Points) == 0 {
		return
	}
	base := pods.Points[0]
	for _, p := range pods.Points {
		if p.X != 1000 {
			continue
		}
		ratio := p.CPUMicros / max(base.CPUMicros, 0.001)
		r.Targets = append(r.Targets,
			target{fmt.Sprintf("pods: CPU per decision at 1000 heartbeating pods ≤ 1.15 × at %d", base.X), fmt.Sprintf("%.2f× (%.1f vs %.1f µs)", ratio, p.CPUMicros, base.CPUMicros), ratio <= 1.15},
			target{"pods: coordinator's Valkey commands per decision at 1000 pods ≤ 0.05", fmt.Sprintf("%.4f", p.ValkeyCmds), p.ValkeyCmds <= 0.05},
			target{fmt.Sprintf("pods: idle CPU at 1000 pods ≤ half the %.0f ms/s measured before #23", idleBefore23), fmt.Sprintf("%.1f ms/s", p.IdleCPUMillis), p.IdleCPUMillis <= idleBefore23/2})
		if c := pods.Control; c != nil {
			cr := c.CPUMicros / max(p.CPUMicros, 0.001)
			r.Targets = append(r.Targets, target{"pods: SPEC §8 at work (failure reports, draining, handoff polls) adds nothing to a decision: ≤ 1.15 × the 1000-pod point",
				fmt.Sprintf("%.2f× (%.1f vs %.1f µs)", cr, c.CPUMicros, p.CPUMicros), cr <= 1.15})
		}
	}
}

func (r *report) markdown() string {
	var b strings.Builder
	fmt.Fprintf(&b, "## coord-extproc benchmark, %s\n\n", r.Date)
	fmt.Fprintf(&b, "Machine: %s, %s CPUs, %s, %s, %s. Load generator and servers share the machine (loopback). The client is Envoy-shaped at the wire (request headers without half-close, the stream held, then END_STREAM + RST_STREAM(CANCEL)); the ceiling is a do-nothing server with grpc-go's default settings, standing for any default-settings peer. coord-extproc runs as the Kubernetes manifest runs it (GOMEMLIMIT=%s), the ceiling with Go's defaults.\n\n", r.Machine["cpu"], r.Machine["cpus"], r.Machine["os"], r.Machine["go"], r.Machine["valkey"], manifestMemLimit)
	if p := r.Paired; p != nil {
		fmt.Fprintf(&b, "**Server CPU per cached decision: %.2f × the ceiling's** (median of %d paired, interleaved rounds at %.0f req/s offered, each stream held %s: coord-extproc %.1f µs, ceiling %.1f µs).\n\n| round | ceiling µs | coord-extproc µs | ratio |\n|---:|---:|---:|---:|\n",
			p.MedianRatio, len(p.Rounds), p.Rate, p.Hold, p.MedianCoord, p.MedianCeiling)
		for i, rd := range p.Rounds {
			fmt.Fprintf(&b, "| %d | %.1f | %.1f | %.2f |\n", i+1, rd.Ceiling, rd.Coord, rd.Ratio)
		}
		b.WriteString("\n")
	}
	fmt.Fprintf(&b, "Each measurement %v, %v interleaved rounds, %v concurrent streams over %v HTTP/2 connections for saturation; latency measured open-loop at %.0f req/s (50%% of the ceiling's saturation).\n\n",
		r.Settings["duration"], r.Settings["rounds"], r.Settings["concurrency"], r.Settings["connections"], r.OfferedRate)
	b.WriteString("| scenario | throughput (req/s) | vs ceiling | p50 | p90 | p99 | p99.9 | server CPU µs/req | Valkey cmds/req | errors |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n")
	ceil := r.index["1-ceiling"]
	for _, s := range r.Scenarios {
		vs := "-"
		if ceil != nil && ceil.Throughput > 0 {
			vs = fmt.Sprintf("%.0f%%", 100*s.Throughput/ceil.Throughput)
		}
		errs := fmt.Sprint(s.Errors)
		if s.Errors > 0 {
			errs = fmt.Sprintf("%d %v", s.Errors, s.ErrorKinds)
		}
		fmt.Fprintf(&b, "| %s — %s | %.0f | %s | %s | %s | %s | %s | %.1f | %.3f | %s |\n", s.Name, s.What, s.Throughput, vs,
			fmtUS(s.Latency["p50"]), fmtUS(s.Latency["p90"]), fmtUS(s.Latency["p99"]), fmtUS(s.Latency["p99.9"]), s.CPUMicrosPerReq, s.ValkeyCmdsPerReq, errs)
	}
	if p := r.PairedP99; p != nil {
		b.WriteString("\np99 at 50 % load in paired rounds (ceiling → coord-extproc):")
		for _, rd := range p.Rounds {
			fmt.Fprintf(&b, " %s → %s (%.2f×);", fmtUS(rd.Ceiling), fmtUS(rd.Coord), rd.Ratio)
		}
		fmt.Fprintf(&b, " median ratio %.2f×.\n", p.MedianRatio)
	}
	if m := r.Memory; m != nil {
		fmt.Fprintf(&b, "\nMemory: %d destinations cached (%d resolved in %s), GOMEMLIMIT=%s: RSS %.0f MiB (%.0f MiB before), Go heap in use %.0f MiB.\n",
			m.Destinations, m.Resolved, m.Took, m.GoMemLimit, float64(m.RSSBytes)/(1<<20), float64(m.BaselineRSSBytes)/(1<<20), m.HeapInuseBytes/(1<<20))
	}
	if len(r.Targets) > 0 {
		b.WriteString("\n| target | measured | met |\n|---|---:|---|\n")
		for _, t := range r.Targets {
			fmt.Fprintf(&b, "| %s | %s | %v |\n", t.What, t.Measured, map[bool]string{true: "yes", false: "**no**"}[t.Met])
		}
	}
	if len(r.Scale) > 0 {
		fmt.Fprintf(&b, "\nScale curves, each point at %.0f req/s offered in all, streams held %s, GOMEMLIMIT=%s; CPU per decision is the median of 3 rounds, idle CPU is measured over 2 s before them: see `scale.png`.\n", r.Settings["cpuRate"], r.Settings["hold"], manifestMemLimit)
		for _, c := range r.Scale {
			c.markdown(&b)
		}
	}
	if len(r.Sweep) > 0 {
		b.WriteString("\nLatency against offered load (open loop): see `latency.png`.\n\n| scenario | offered (req/s) | p50 | p99 |\n|---|---:|---:|---:|\n")
		for _, p := range r.Sweep {
			fmt.Fprintf(&b, "| %s | %.0f | %s | %s |\n", p.Scenario, p.Offered, fmtUS(p.Micros["p50"]), fmtUS(p.Micros["p99"]))
		}
	}
	if len(r.Micro) > 0 {
		b.WriteString("\nGo micro-benchmarks (`go test -bench`):\n\n| benchmark | result |\n|---|---|\n")
		for _, m := range r.Micro {
			fmt.Fprintf(&b, "| %s | %s |\n", m.Name, m.Metrics)
		}
	}
	return b.String()
}

func (r *report) write(dir string) error {
	if err := os.WriteFile(filepath.Join(dir, "latest.md"), []byte(r.markdown()), 0o644); err != nil {
		return err
	}
	js, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "latest.json"), js, 0o644); err != nil {
		return err
	}
	if len(r.Scale) > 0 {
		if err := plotScale(filepath.Join(dir, "scale.png"), r.Scale); err != nil {
			return err
		}
	}
	if len(r.Sweep) == 0 {
		return nil
	}
	return r.plot(filepath.Join(dir, "latency.png"))
}

// parseMicro keeps the Benchmark lines of go test -bench output.
func parseMicro(path string) []microResult {
	b, err := os.ReadFile(path)
	if err != nil {
		return []microResult{{Name: "(missing)", Metrics: err.Error()}}
	}
	var out []microResult
	pkg := ""
	for _, line := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(line, "pkg: ") {
			pkg = strings.TrimPrefix(strings.TrimPrefix(line, "pkg: "), "github.com/coord-extproc/coord-extproc/")
		}
		f := strings.Fields(line)
		if len(f) < 4 || !strings.HasPrefix(f[0], "Benchmark") {
			continue
		}
		out = append(out, microResult{Name: pkg + "." + f[0], Metrics: strings.Join(f[2:], " ")})
	}
	return out
}

func mean(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	var s float64
	for _, x := range xs {
		s += x
	}
	return s / float64(len(xs))
}

func quantiles(h *loadgen.Histogram) map[string]float64 {
	return map[string]float64{"p50": us(h.Quantile(.5)), "p90": us(h.Quantile(.9)), "p99": us(h.Quantile(.99)), "p99.9": us(h.Quantile(.999))}
}

func us(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) }

func fmtUS(v float64) string {
	switch {
	case v == 0:
		return "-"
	case v >= 1000:
		return fmt.Sprintf("%.2f ms", v/1000)
	}
	return fmt.Sprintf("%.0f µs", v)
}
