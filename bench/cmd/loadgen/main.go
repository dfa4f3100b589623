// Command loadgen sends Envoy-shaped load to an ext_proc or ext_authz
// server, or plain HTTP to a gateway, and prints throughput and latency
// percentiles.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime/pprof"
	"syscall"
	"time"

	"github.com/coord-extproc/coord-extproc/bench/loadgen"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	if err != nil && !errors.Is(err, flag.ErrHelp) {
		fmt.Fprintln(os.Stderr, "loadgen:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("loadgen", flag.ContinueOnError)
	fs.SetOutput(stderr)
	mode := fs.String("mode", "ext_proc", "ext_proc, ext_authz or http")
	target := fs.String("target", "127.0.0.1:9002", "host:port (ext_proc, ext_authz) or base URL (http)")
	conc := fs.Int("c", 32, "closed-loop concurrency")
	rate := fs.Float64("rate", 0, "open-loop requests per second (0: closed loop)")
	dur := fs.Duration("d", 5*time.Second, "duration")
	conns := fs.Int("conns", 4, "HTTP/2 connections")
	ids := fs.Int("ids", 1000, "distinct destination ids (dest-0 .. dest-N-1)")
	path := fs.String("path", "/tenants/%s/keys/k", "request path; %s is the destination id")
	header := fs.String("id-header", "x-destination-id", "header carrying the id (empty: none)")
	hold := fs.Duration("hold", 0, "ext_proc: keep each stream open this long after its answer, as Envoy does while the upstream works")
	cpuProfile := fs.String("cpuprofile", "", "write the load generator's own CPU profile here")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *cpuProfile != "" {
		f, err := os.Create(*cpuProfile)
		if err != nil {
			return err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
		defer pprof.StopCPUProfile()
	}
	next := func(i uint64) loadgen.Request {
		id := fmt.Sprintf("dest-%d", i%uint64(*ids))
		var extra [][2]string
		if *header != "" {
			extra = append(extra, [2]string{*header, id})
		}
		return loadgen.Request{Method: "GET", Path: fmt.Sprintf(*path, id), Headers: loadgen.TypicalHeaders(extra...)}
	}
	res, err := loadgen.Run(ctx, loadgen.Config{Mode: loadgen.Mode(*mode), Target: *target, Conns: *conns, Concurrency: *conc, Rate: *rate, Duration: *dur, Next: next, Hold: *hold})
	if err != nil {
		return err
	}
	h := res.Latency
	fmt.Fprintf(stdout, "%s %s: %d requests, %d errors %v, %.0f req/s, p50 %s p90 %s p99 %s p99.9 %s max %s\n",
		*mode, *target, res.Requests, res.Errors, res.ErrorKinds, res.Throughput,
		h.Quantile(.5), h.Quantile(.9), h.Quantile(.99), h.Quantile(.999), h.Max())
	return nil
}
