package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// A short smoke run of the whole bench (real valkey-server, ceiling and
// coord-extproc processes, the load generator) so that `make bench` cannot
// rot. It checks the report is complete and the steady state made no
// Valkey round trips; the numbers themselves are for `make bench`.
func TestSmoke(t *testing.T) {
	if testing.Short() {
		t.Skip("smoke run of the load generator skipped in -short mode")
	}
	dir := t.TempDir()
	coord, ceiling := filepath.Join(dir, "coord-extproc"), filepath.Join(dir, "ceiling")
	for out, pkg := range map[string]string{coord: "../../cmd/coord-extproc", ceiling: "../ceiling"} {
		if b, err := exec.Command("go", "build", "-o", out, pkg).CombinedOutput(); err != nil {
			t.Fatalf("build %s: %v\n%s", pkg, err, b)
		}
	}
	micro := filepath.Join(dir, "micro.txt")
	_ = os.WriteFile(micro, []byte("pkg: github.com/coord-extproc/coord-extproc/registry\nBenchmarkX-2  100  180 ns/op  0 B/op  0 allocs/op\n"), 0o644)
	out := filepath.Join(dir, "results")
	var stdout, stderr bytes.Buffer
	err := run(context.Background(), []string{"--quick", "--coord", coord, "--ceiling", ceiling, "--micro", micro, "--out", out}, &stdout, &stderr)
	if err != nil {
		t.Fatalf("bench: %v\n%s", err, stderr.String())
	}
	var rep report
	b, err := os.ReadFile(filepath.Join(out, "latest.json"))
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, &rep); err != nil {
		t.Fatal(err)
	}
	if len(rep.Scenarios) != 6 || len(rep.Sweep) != 10 || rep.Memory == nil || len(rep.Micro) != 1 {
		t.Fatalf("incomplete report: %d scenarios, %d sweep points, memory %v, micro %v", len(rep.Scenarios), len(rep.Sweep), rep.Memory, rep.Micro)
	}
	for _, s := range rep.Scenarios {
		if s.Throughput <= 0 || s.Latency["p99"] <= 0 {
			t.Fatalf("%s: throughput %v latency %v", s.Name, s.Throughput, s.Latency)
		}
		if strings.HasPrefix(s.Name, "2-") && s.ValkeyCmdsPerReq > 0.01 {
			t.Fatalf("cached scenario issued %.3f Valkey commands per request", s.ValkeyCmdsPerReq)
		}
	}
	if len(rep.Scale) != 3 {
		t.Fatalf("%d scale curves, want destinations, pods, replicas", len(rep.Scale))
	}
	for _, c := range rep.Scale {
		if len(c.Points) != 2 {
			t.Fatalf("%s: %d points", c.Name, len(c.Points))
		}
		for _, p := range c.Points {
			if p.CPUMicros <= 0 || p.Decisions == 0 || p.Errors > 0 || p.RSSMiB <= 0 || p.HeapMiB <= 0 {
				t.Fatalf("%s at %d: %+v", c.Name, p.X, p)
			}
		}
	}
	for _, png := range []string{"latency.png", "scale.png"} {
		if st, err := os.Stat(filepath.Join(out, png)); err != nil || st.Size() < 1000 {
			t.Fatalf("plot %s: %v", png, err)
		}
	}
	if !strings.Contains(stdout.String(), "| 2-cached") {
		t.Fatalf("no table on stdout:\n%s", stdout.String())
	}
}
