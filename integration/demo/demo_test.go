package main

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// The demo as `make demo </dev/null` runs it: no terminal, the story once
// without pauses, exit 0, and no process left behind.
func TestDemoRunsTheStoryAndCleansUp(t *testing.T) {
	if testing.Short() {
		t.Skip("the full demo is skipped in -short mode")
	}
	bin := t.TempDir()
	for name, pkg := range map[string]string{"coord-extproc": "../../cmd/coord-extproc", "gateway": "../gateway", "demopod": "../demopod", "demo": "."} {
		if out, err := exec.Command("go", "build", "-o", filepath.Join(bin, name), pkg).CombinedOutput(); err != nil {
			t.Fatalf("build %s: %v\n%s", pkg, err, out)
		}
	}
	devnull, err := os.Open(os.DevNull)
	if err != nil {
		t.Fatal(err)
	}
	defer devnull.Close()
	cmd := exec.Command(filepath.Join(bin, "demo"), "--bin", bin, "--routes", "../../envoy/demo-routes.yaml", "--envoy-config", "../../envoy/envoy.yaml", "--envoy", "")
	cmd.Env = append(os.Environ(), "PATH=/usr/bin:/bin:/usr/sbin:/sbin") // no envoy: the stand-in
	cmd.Stdin = devnull
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	start := time.Now()
	if err := cmd.Run(); err != nil {
		t.Fatalf("demo failed after %s: %v\n%s", time.Since(start), err, out.String())
	}
	took := time.Since(start)
	text := out.String()
	for _, want := range []string{"built-in Envoy stand-in", "== 1. Create tenants", "== 3. A transaction", "Lock not found",
		"== 5. Kill a pod", "== 6. Fan-out under load", "Story done", "Stopping everything."} {
		if !strings.Contains(text, want) {
			t.Fatalf("output lacks %q:\n%s", want, text)
		}
	}
	if took > 3*time.Minute {
		t.Fatalf("demo took %s, want under 3 minutes", took)
	}
	// Fan-out: the hot tenant ends up served by two pods in a table line.
	if !regexp.MustCompile(`tenant-2\s+pod-[abc],pod-[abc]\s`).MatchString(text) {
		t.Fatalf("no table line shows tenant-2 served by two pods:\n%s", text)
	}
	pids := regexp.MustCompile(`pid (\d+)`).FindAllStringSubmatch(text, -1)
	if len(pids) < 6 {
		t.Fatalf("expected the demo to report the pids it started:\n%s", text)
	}
	for _, m := range pids {
		pid, _ := strconv.Atoi(m[1])
		if err := syscall.Kill(pid, 0); err == nil {
			t.Fatalf("process %d is still running after the demo exited", pid)
		}
	}
	t.Logf("demo took %s", took.Round(time.Millisecond))
}
