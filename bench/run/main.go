// Command run is `make bench`: it starts a real valkey-server, the ceiling
// server and coord-extproc processes, seeds the registry, and measures
// every scenario interleaved (A B A B) with the Envoy-shaped load
// generator: saturation throughput, latency at half the ceiling's
// throughput, server CPU per request and Valkey commands per request.
// Then the scale curves: cost per decision against cached destinations,
// heartbeating pods and coordinator replicas. It writes a Markdown
// report, JSON and plots.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"
)

type options struct {
	coordBin, ceilingBin, out, micro string
	duration                         time.Duration
	rounds, concurrency, conns       int
	memoryDests                      int
	quick, memoryOnly                bool
	scale, scaleOnly                 bool
	curves                           string // the scale curves measured, comma-separated
	// The paired CPU measurement: a fixed offered load, each stream held
	// as Envoy holds it while the upstream works.
	cpuRate   float64
	cpuRounds int
	hold      time.Duration
	coordArgs string // extra coord-extproc flags, for ablation runs
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	if err != nil && !errors.Is(err, flag.ErrHelp) {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	var o options
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&o.coordBin, "coord", "bin/coord-extproc", "coord-extproc binary")
	fs.StringVar(&o.ceilingBin, "ceiling", "bin/ceiling", "ceiling server binary")
	fs.StringVar(&o.out, "out", "bench/results", "results folder")
	fs.StringVar(&o.micro, "micro", "", "go test -bench output to summarise")
	fs.DurationVar(&o.duration, "d", 3*time.Second, "length of each measurement")
	fs.IntVar(&o.rounds, "rounds", 2, "interleaved rounds per scenario")
	fs.IntVar(&o.concurrency, "c", 64, "closed-loop concurrency for saturation runs")
	fs.IntVar(&o.conns, "conns", 4, "HTTP/2 connections, like a few Envoy workers")
	fs.IntVar(&o.memoryDests, "memory-destinations", 1_000_000, "destinations cached for the RSS measurement (0: skip)")
	fs.BoolVar(&o.quick, "quick", false, "tiny data sets and durations: a smoke run")
	fs.BoolVar(&o.memoryOnly, "memory-only", false, "only the memory measurement")
	fs.BoolVar(&o.scale, "scale", true, "measure the scale curves (destinations, pods, replicas)")
	fs.BoolVar(&o.scaleOnly, "scale-only", false, "only the scale curves")
	fs.StringVar(&o.curves, "curves", "destinations,pods,replicas", "which scale curves to measure")
	fs.Float64Var(&o.cpuRate, "cpu-rate", 3000, "offered req/s for the paired CPU-per-decision rounds")
	fs.IntVar(&o.cpuRounds, "cpu-rounds", 11, "paired, interleaved rounds of the CPU and p99 measurements (median reported)")
	fs.StringVar(&o.coordArgs, "coord-args", "", "extra coord-extproc flags (space-separated), e.g. to measure a setting's effect")
	fs.DurationVar(&o.hold, "hold", 2*time.Millisecond, "how long each ext_proc stream is held after its answer (the upstream's work)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if o.quick {
		o.duration, o.rounds, o.memoryDests, o.cpuRounds, o.cpuRate = 300*time.Millisecond, 1, 2000, 1, 500
	}
	if err := os.MkdirAll(o.out, 0o755); err != nil {
		return err
	}
	work, err := os.MkdirTemp("", "coord-bench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(work)
	b, err := newBench(ctx, o, work, stderr)
	if err != nil {
		return err
	}
	defer b.close()
	rep, err := b.measure(ctx)
	if err != nil {
		return err
	}
	if o.micro != "" {
		rep.Micro = parseMicro(o.micro)
	}
	if err := rep.write(o.out); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "%s\nwritten: %s, %s, %s\n", rep.markdown(), filepath.Join(o.out, "latest.md"), filepath.Join(o.out, "latest.json"), filepath.Join(o.out, "latency.png"))
	return nil
}
