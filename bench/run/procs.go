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
	"strconv"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

// server is a process under measurement.
type server struct {
	name, addr string
	metrics    string // its /metrics address, when it serves one
	cmd        *exec.Cmd
	logPath    string
}

func startServer(ctx context.Context, work, name, bin string, args ...string) (*server, error) {
	return startServerEnv(ctx, work, name, bin, nil, args...)
}

func startServerEnv(ctx context.Context, work, name, bin string, env []string, args ...string) (*server, error) {
	addr, err := freeAddr()
	if err != nil {
		return nil, err
	}
	s := &server{name: name, addr: addr, logPath: filepath.Join(work, name+".log")}
	log, err := os.Create(s.logPath)
	if err != nil {
		return nil, err
	}
	args = append([]string{"--listen", addr}, args...)
	s.cmd = exec.Command(bin, args...)
	s.cmd.Env = append(os.Environ(), env...)
	s.cmd.Stdout, s.cmd.Stderr = log, log
	if err := s.cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	go func() { _ = s.cmd.Wait(); log.Close() }()
	if err := waitReady(ctx, addr); err != nil {
		s.stop()
		b, _ := os.ReadFile(s.logPath)
		return nil, fmt.Errorf("%s not ready: %w\n%s", name, err, b)
	}
	return s, nil
}

// waitReady polls gRPC health; the ceiling server has no health service,
// so an Unimplemented answer also means "up".
func waitReady(ctx context.Context, addr string) error {
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return err
	}
	defer conn.Close()
	hc := healthpb.NewHealthClient(conn)
	deadline := time.Now().Add(15 * time.Second)
	for time.Now().Before(deadline) {
		cctx, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
		r, err := hc.Check(cctx, &healthpb.HealthCheckRequest{})
		cancel()
		if (err == nil && r.GetStatus() == healthpb.HealthCheckResponse_SERVING) || (err != nil && strings.Contains(err.Error(), "Unimplemented")) {
			return nil
		}
		time.Sleep(20 * time.Millisecond)
	}
	return fmt.Errorf("no SERVING answer from %s within 15s", addr)
}

func (s *server) pid() int { return s.cmd.Process.Pid }

func (s *server) stop() {
	if s.cmd.Process != nil {
		_ = s.cmd.Process.Kill()
	}
}

// cpuTime is the process's user+system CPU time so far.
func cpuTime(pid int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// Fields after the command name (which may contain spaces).
	f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+2:]))
	utime, _ := strconv.ParseInt(f[11], 10, 64)
	stime, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(utime+stime) * time.Second / 100, nil // USER_HZ is 100 on Linux
}

// rss is the resident set size in bytes.
func rss(pid int) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(line, "VmRSS:") {
			kb, _ := strconv.ParseInt(strings.Fields(line)[1], 10, 64)
			return kb << 10, nil
		}
	}
	return 0, fmt.Errorf("no VmRSS for pid %d", pid)
}

// heapInuse reads go_memstats_heap_inuse_bytes from a /metrics page.
func heapInuse(metricsAddr string) float64 {
	return metric(metricsAddr, "go_memstats_heap_inuse_bytes")
}

// metric reads one unlabelled sample from a /metrics page (0 if absent).
func metric(metricsAddr, name string) float64 {
	c := http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get("http://" + metricsAddr + "/metrics")
	if err != nil {
		return 0
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, name+" "); ok {
			f, _ := strconv.ParseFloat(strings.TrimSpace(v), 64)
			return f
		}
	}
	return 0
}

func freeAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}
