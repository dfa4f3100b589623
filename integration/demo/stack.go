package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/coord-extproc/coord-extproc/internal/valkeyserver"
)

// stack is every process of the demo.
type stack struct {
	out     io.Writer
	work    string
	valkey  *valkeyserver.Server
	procs   []*proc
	pods    map[string]*proc
	gateway string // base URL
	metrics string
	bins    string
	kind    string
}

type proc struct {
	name string
	cmd  *exec.Cmd
	done chan struct{}
	addr string
}

func up(ctx context.Context, o options, out io.Writer) (*stack, error) {
	work, err := os.MkdirTemp("", "coord-demo-")
	if err != nil {
		return nil, err
	}
	s := &stack{out: out, work: work, pods: map[string]*proc{}, bins: o.bins}
	envoyBin := o.envoy
	if envoyBin == "" {
		envoyBin, _ = exec.LookPath("envoy")
	}
	if envoyBin != "" {
		s.kind = "a real Envoy (" + envoyBin + ") from " + o.envoyConfig
	} else {
		s.kind = "the built-in Envoy stand-in (no envoy binary on PATH) configured from " + o.envoyConfig
	}
	fmt.Fprintf(out, "coord-extproc demo: gateway is %s\nlogs in %s\n\n", s.kind, work)
	if s.valkey, err = valkeyserver.Start(filepath.Join(work, "valkey"), 0); err != nil {
		return s, err
	}
	fmt.Fprintf(out, "started valkey-server on %s pid %d\n", s.valkey.Addr(), s.valkey.Pid())
	grpcAddr, metrics := freeAddr(), freeAddr()
	s.metrics = metrics
	if _, err := s.start("coord-extproc", grpcAddr, filepath.Join(o.bins, "coord-extproc"), "--listen", grpcAddr, "--metrics-listen", metrics,
		"--valkey", s.valkey.URL(), "--allow-upstream", "127.0.0.0/8", "--routes", o.routes, "--recovery-hold-max", "3s", "--log-format", "text"); err != nil {
		return s, err
	}
	if err := s.waitUp(ctx, 10*time.Second, func() bool { return status("http://"+metrics+"/healthz") == 200 }); err != nil {
		return s, fmt.Errorf("coord-extproc did not become healthy: %w", err)
	}
	for _, id := range []string{"pod-a", "pod-b", "pod-c"} {
		if err := s.startPod(ctx, id); err != nil {
			return s, err
		}
	}
	listen := "127.0.0.1:10000"
	if l, err := net.Listen("tcp", listen); err != nil {
		listen = freeAddr()
	} else {
		l.Close()
	}
	if envoyBin != "" {
		err = s.startEnvoy(ctx, envoyBin, o.envoyConfig, listen, grpcAddr)
	} else {
		_, err = s.start("gateway", listen, filepath.Join(o.bins, "gateway"), "--config", o.envoyConfig, "--listen", listen, "--coord-extproc", grpcAddr)
		if err == nil {
			err = s.waitUp(ctx, 10*time.Second, func() bool { return dial(listen) })
		}
	}
	if err != nil {
		return s, err
	}
	s.gateway = "http://" + listen
	fmt.Fprintf(out, "gateway listening on %s\n", s.gateway)
	return s, nil
}

func (s *stack) startPod(ctx context.Context, id string) error {
	addr := freeAddr()
	p, err := s.start(id, addr, filepath.Join(s.bins, "demopod"), "--listen", addr, "--id", id, "--valkey", s.valkey.URL(),
		// The library's default TTL: a pod killed without deregistering would keep its tenants
		// failing for up to 30 s, were it not for the failure reports (SPEC §8.1).
		"--ttl", "30s", "--heartbeat", "10s", "--fanout-cap", "3", "--fanout-hold", "300ms")
	if err != nil {
		return err
	}
	s.pods[id] = p
	return s.waitUp(ctx, 10*time.Second, func() bool { return status("http://"+addr+"/healthz") == 200 })
}

func (s *stack) startEnvoy(ctx context.Context, bin, config, listen, coord string) error {
	b, err := os.ReadFile(config)
	if err != nil {
		return err
	}
	admin := freeAddr()
	port := func(a string) string { _, p, _ := net.SplitHostPort(a); return p }
	txt := strings.NewReplacer("port_value: 10000", "port_value: "+port(listen), "port_value: 9002", "port_value: "+port(coord),
		"port_value: 9901", "port_value: "+port(admin), "address: 0.0.0.0", "address: 127.0.0.1").Replace(string(b))
	cfg := filepath.Join(s.work, "envoy.yaml")
	if err := os.WriteFile(cfg, []byte(txt), 0o600); err != nil {
		return err
	}
	if _, err := s.start("envoy", listen, bin, "-c", cfg, "--log-level", "warn"); err != nil {
		return err
	}
	return s.waitUp(ctx, 20*time.Second, func() bool { return status("http://"+admin+"/ready") == 200 })
}

// waitUp waits for cond, but stops at once, with the reason from its
// log, when the process started last exits first.
func (s *stack) waitUp(ctx context.Context, within time.Duration, cond func() bool) error {
	p := s.procs[len(s.procs)-1]
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		select {
		case <-p.done:
			cancel()
		case <-ctx.Done():
		}
	}()
	err := waitFor(ctx, within, cond)
	select {
	case <-p.done:
		b, _ := os.ReadFile(filepath.Join(s.work, p.name+".log"))
		return fmt.Errorf("%s exited during start-up: %s", p.name, lastLines(string(b), 3))
	default:
	}
	return err
}

func lastLines(text string, n int) string {
	lines := strings.Split(strings.TrimSpace(text), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], " | ")
}

func (s *stack) start(name, addr, bin string, args ...string) (*proc, error) {
	log, err := os.Create(filepath.Join(s.work, name+".log"))
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		log.Close()
		return nil, fmt.Errorf("start %s (did `make demo` build it?): %w", name, err)
	}
	p := &proc{name: name, cmd: cmd, done: make(chan struct{}), addr: addr}
	go func() { _ = cmd.Wait(); log.Close(); close(p.done) }()
	s.procs = append(s.procs, p)
	fmt.Fprintf(s.out, "started %s on %s pid %d\n", name, addr, cmd.Process.Pid)
	return p, nil
}

// stop sends sig and waits up to 5 s, then kills.
func (p *proc) stop(sig syscall.Signal) {
	_ = p.cmd.Process.Signal(sig)
	select {
	case <-p.done:
	case <-time.After(5 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.done
	}
}

// down stops everything; the logs are removed unless keepLogs.
func (s *stack) down(keepLogs bool) {
	for i := len(s.procs) - 1; i >= 0; i-- {
		s.procs[i].stop(syscall.SIGTERM)
	}
	if s.valkey != nil {
		s.valkey.Stop()
	}
	if keepLogs {
		fmt.Fprintf(s.out, "logs kept in %s\n", s.work)
		return
	}
	os.RemoveAll(s.work)
}

func (s *stack) printCurl() {
	g := s.gateway
	fmt.Fprintf(s.out, `
Try it yourself:
  curl -s -X POST %[1]s/tenants -d '{"tenantId":"mine"}'
  curl -s -X PUT  %[1]s/tenants/mine/keys/color -d blue
  curl -s         %[1]s/tenants/mine/keys/color
  curl -s -X POST %[1]s/tenants/mine/transactions          # -> lockId
  curl -s -X PUT  %[1]s/transactions/<lockId>/keys/color -d red
  curl -s -X POST %[1]s/transactions/<lockId>/commit
  curl -s         %[1]s/sessions/anything/keys/x            # claimed on first use
  curl -s -X DELETE %[1]s/tenants/mine
  curl -s http://%[2]s/metrics | grep coord_extproc_decisions

Valkey: %[3]s
Operator commands against it:
  %[4]s/coord-extproc members     --valkey %[3]s
  %[4]s/coord-extproc destination tenant-1 --valkey %[3]s
  %[4]s/coord-extproc lock <lockId> --valkey %[3]s
  valkey-cli -u %[3]s keys 'coordinator:*'
`, g, s.metrics, s.valkey.URL(), s.bins)
}

func freeAddr() string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "127.0.0.1:0"
	}
	defer l.Close()
	return l.Addr().String()
}

func dial(addr string) bool {
	c, err := net.DialTimeout("tcp", addr, 100*time.Millisecond)
	if err == nil {
		c.Close()
	}
	return err == nil
}

var client = &http.Client{Timeout: 5 * time.Second}

func status(url string) int {
	resp, err := client.Get(url)
	if err != nil {
		return 0
	}
	resp.Body.Close()
	return resp.StatusCode
}

func get(url string) string {
	resp, err := client.Get(url)
	if err != nil {
		return err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

func waitFor(ctx context.Context, within time.Duration, cond func() bool) error {
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			return fmt.Errorf("not ready within %s", within)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
	return nil
}
