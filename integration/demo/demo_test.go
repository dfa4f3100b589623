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
		"== 5. Rolling restart", "== 6. Kill a pod", "== 7. Fan-out under load", "Story done", "Stopping everything."} {
		if !strings.Contains(text, want) {
			t.Fatalf("output lacks %q:\n%s", want, text)
		}
	}
	if took > 3*time.Minute {
		t.Fatalf("demo took %s, want under 3 minutes", took)
	}
	// Fan-out: the hot tenant ends up served by two pods in a table line,
	// with each pod's share.
	if !regexp.MustCompile(`tenant-2\s+pod-[abc]2?:\d+ pod-[abc]2?:\d+\s`).MatchString(text) {
		t.Fatalf("no table line shows tenant-2 served by two pods:\n%s", text)
	}
	// The error column counts every non-2xx: none before the kill, the
	// rolling restart included (every tenant handed off with its data),
	// and the killed pod's tenants lose their in-memory data (404) after
	// it, which the summary reports.
	live := text[strings.Index(text, "== 4."):strings.Index(text, "== 6.")]
	if m := regexp.MustCompile(`(?m)^\s+tenant-\d.*\s([1-9]\d*)$`).FindString(live); m != "" {
		t.Fatalf("errors before any pod was killed (the rolling restart must lose nothing): %q\n%s", m, text)
	}
	if !strings.Contains(live, "pod-a replaced by pod-a2") {
		t.Fatalf("the rolling restart did not run:\n%s", text)
	}
	if !regexp.MustCompile(`Story done: \d+ requests, [1-9]\d* errors`).MatchString(text) || !regexp.MustCompile(`(?m)^\s+404: \d+`).MatchString(text) {
		t.Fatalf("the lost data after the kill is not reported as errors:\n%s", text)
	}
	// SIGKILL: the killed pod's tenants move in about a second, not after
	// its 30 s TTL.
	m := regexp.MustCompile(`answered by survivors ([0-9.]+m?s) later`).FindStringSubmatch(text)
	if m == nil {
		t.Fatalf("the story does not say when the killed pod's tenants moved:\n%s", text)
	}
	if d, err := time.ParseDuration(m[1]); err != nil || d > 2*time.Second {
		t.Fatalf("killed pod's tenants moved after %s, want about a second:\n%s", m[1], text)
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

// A component that cannot start stops the demo at once, says why, and
// keeps the logs.
func TestDemoStopsWhenAComponentFails(t *testing.T) {
	bin := t.TempDir()
	for name, pkg := range map[string]string{"coord-extproc": "../../cmd/coord-extproc", "demo": "."} {
		if out, err := exec.Command("go", "build", "-o", filepath.Join(bin, name), pkg).CombinedOutput(); err != nil {
			t.Fatalf("build %s: %v\n%s", pkg, err, out)
		}
	}
	bad := filepath.Join(t.TempDir(), "routes.yaml")
	if err := os.WriteFile(bad, []byte("rules:\n  - name: x\n    action: teleport\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(filepath.Join(bin, "demo"), "--bin", bin, "--routes", bad, "--envoy", "")
	cmd.Env = append(os.Environ(), "PATH=/usr/bin:/bin:/usr/sbin:/sbin")
	start := time.Now()
	out, err := cmd.CombinedOutput()
	took := time.Since(start)
	if err == nil || took > 5*time.Second {
		t.Fatalf("demo with a bad route file: err %v after %s, want a quick failure\n%s", err, took, out)
	}
	logs := regexp.MustCompile(`logs kept in (\S+)`).FindSubmatch(out)
	if !strings.Contains(string(out), "coord-extproc exited during start-up") || !strings.Contains(string(out), "teleport") || logs == nil {
		t.Fatalf("demo does not say why or where the logs are:\n%s", out)
	}
	if _, err := os.Stat(filepath.Join(string(logs[1]), "coord-extproc.log")); err != nil {
		t.Fatalf("logs not kept: %v", err)
	}
	os.RemoveAll(string(logs[1]))
}
