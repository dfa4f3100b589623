package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/valkey-io/valkey-go"

	"github.com/coord-extproc/coord-extproc/internal/valkeytest"
)

// bins are the binaries under test, built once by TestMain.
var bins struct{ coord, gateway, pod string }

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "coord-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	bins.coord, bins.gateway, bins.pod = filepath.Join(dir, "coord-extproc"), filepath.Join(dir, "gateway"), filepath.Join(dir, "demopod")
	for out, pkg := range map[string]string{bins.coord: "../cmd/coord-extproc", bins.gateway: "./gateway", bins.pod: "./demopod"} {
		cmd := exec.Command("go", "build", "-o", out, pkg)
		cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
		if err := cmd.Run(); err != nil {
			fmt.Fprintf(os.Stderr, "build %s: %v\n", pkg, err)
			os.RemoveAll(dir)
			os.Exit(1)
		}
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// process is a child process whose output goes to a log file that is
// printed when the test fails.
type process struct {
	name string
	cmd  *exec.Cmd
	log  string
	done chan struct{}
}

func start(t *testing.T, name, bin string, args ...string) *process {
	t.Helper()
	logPath := filepath.Join(t.TempDir(), name+".log")
	f, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = f, f
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	p := &process{name: name, cmd: cmd, log: logPath, done: make(chan struct{})}
	go func() { _ = cmd.Wait(); f.Close(); close(p.done) }()
	t.Cleanup(func() {
		p.kill()
		if t.Failed() {
			b, _ := os.ReadFile(logPath)
			t.Logf("---- %s log (last 3000 bytes) ----\n%s", name, tail(b, 3000))
		}
	})
	return p
}

func tail(b []byte, n int) []byte {
	if len(b) > n {
		return b[len(b)-n:]
	}
	return b
}

func (p *process) signal(sig syscall.Signal) { _ = p.cmd.Process.Signal(sig) }

func (p *process) kill() {
	p.signal(syscall.SIGKILL)
	<-p.done
}

// exited waits for the process to end.
func (p *process) exited(t *testing.T, within time.Duration) {
	t.Helper()
	select {
	case <-p.done:
	case <-time.After(within):
		t.Fatalf("%s still running after %s", p.name, within)
	}
}

func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

func waitFor(t *testing.T, within time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("not within %s: %s", within, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// stackOptions shape one end-to-end stack.
type stackOptions struct {
	config    string // envoy bootstrap under ../envoy
	gateway   string // "standin" or "envoy"
	replicas  int    // coord-extproc replicas, each with its own gateway
	strategy  string
	podTTL    time.Duration
	heartbeat time.Duration
	fanoutCap int
	// deployment is the Valkey deployment: "" (standalone), "sentinel" or
	// "cluster".
	deployment string
	// edit rewrites the bootstrap before the gateway reads it (old, new
	// pairs, each of which must occur).
	edit []string
	// gatewayArgs and coordArgs are added to the processes' flags.
	gatewayArgs, coordArgs []string
	// sharedGateway puts one gateway in front of every replica (its
	// coord_extproc cluster lists them all) instead of one each.
	sharedGateway bool
	// pods is how many demo pods start (default 3).
	pods int
}

type stack struct {
	t      *testing.T
	valkey *valkeytest.Server // standalone deployments only
	url    string             // the Valkey URL every process uses
	raw    valkey.Client
	coords []*coord
	pods   map[string]*pod
	gws    []string // gateway base URLs, one per replica
	client *http.Client
}

type coord struct {
	proc          *process
	grpc, metrics string
}

type pod struct {
	id, addr string
	proc     *process
}

func newStack(t *testing.T, o stackOptions) *stack {
	t.Helper()
	if o.config == "" {
		o.config = "envoy.yaml"
	}
	if o.replicas == 0 {
		o.replicas = 1
	}
	if o.strategy == "" {
		o.strategy = "round-robin"
	}
	if o.podTTL == 0 {
		o.podTTL, o.heartbeat = 2*time.Second, 300*time.Millisecond
	}
	if o.gateway == "envoy" && os.Getenv("ENVOY_BIN") == "" {
		t.Skip("ENVOY_BIN is not set: this case's real-Envoy run is skipped (the stand-in run above covers it)")
	}
	s := &stack{t: t, pods: map[string]*pod{}, client: &http.Client{Timeout: 5 * time.Second}}
	switch o.deployment {
	case "cluster":
		s.url = valkeytest.StartCluster(t).URL()
	case "sentinel":
		s.url = valkeytest.StartSentinels(t).URL()
	default:
		s.valkey = valkeytest.Start(t)
		s.url = s.valkey.URL()
	}
	s.raw = valkeytest.ClientFor(t, s.url)
	if o.pods == 0 {
		o.pods = 3
	}
	for i := 0; i < o.pods; i++ {
		s.startPod(fmt.Sprintf("pod-%d", i+1), o)
	}
	var all []string
	for i := 0; i < o.replicas; i++ {
		c := s.startCoord(o, i)
		waitFor(t, 5*time.Second, "coord-extproc healthy", func() bool { return s.status("http://"+c.metrics+"/healthz") == 200 })
		if all = append(all, c.grpc); !o.sharedGateway {
			s.gws = append(s.gws, s.startGateway(o, c, i))
		}
	}
	if o.sharedGateway {
		s.gws = append(s.gws, s.startGateway(o, &coord{grpc: strings.Join(all, ",")}, 0))
	}
	return s
}

// startCoord starts replica i of coord-extproc on ports it picks itself
// (a port probed free and closed can be taken by another process before
// the child binds it: that flaked on a busy machine) and reads them from
// its first log line.
func (s *stack) startCoord(o stackOptions, i int) *coord {
	args := []string{"--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0", "--valkey", s.url, "--allow-upstream", "127.0.0.0/8",
		"--routes", "../envoy/demo-routes.yaml", "--strategy", o.strategy,
		"--recovery-hold-max", o.podTTL.String(), "--log-format", "text"}
	c := &coord{proc: start(s.t, fmt.Sprintf("coord-extproc-%d", i+1), bins.coord, append(args, o.coordArgs...)...)}
	m := c.proc.waitLog(s.t, 10*time.Second, `coord-extproc listening.* listen=(\S+) metrics=(\S+)`)
	c.grpc, c.metrics = m[1], m[2]
	s.coords = append(s.coords, c)
	return c
}

// waitLog polls the process's log until re matches and returns its
// submatches; a process that exits first fails the test at once.
func (p *process) waitLog(t *testing.T, within time.Duration, re string) []string {
	t.Helper()
	rx := regexp.MustCompile(re)
	deadline := time.Now().Add(within)
	for {
		b, _ := os.ReadFile(p.log)
		if m := rx.FindStringSubmatch(string(b)); m != nil {
			return m
		}
		select {
		case <-p.done:
			t.Fatalf("%s exited before logging %q:\n%s", p.name, re, tail(b, 2000))
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s did not log %q within %s", p.name, re, within)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func (s *stack) startPod(id string, o stackOptions) *pod {
	s.t.Helper()
	return s.startPodAt(id, "127.0.0.1:0", o)
}

// startPodAt starts a pod listening on addr (a restart on the same address).
func (s *stack) startPodAt(id, addr string, o stackOptions) *pod {
	s.t.Helper()
	p := &pod{id: id, addr: addr}
	args := []string{"--listen", p.addr, "--id", id, "--valkey", s.url, "--ttl", o.podTTL.String(), "--heartbeat", o.heartbeat.String()}
	if o.fanoutCap > 0 {
		args = append(args, "--fanout-cap", fmt.Sprint(o.fanoutCap), "--fanout-hold", "200ms")
	}
	p.proc = start(s.t, id, bins.pod, args...)
	p.addr = p.proc.waitLog(s.t, 10*time.Second, `demopod ready.* addr=(\S+)`)[1]
	waitFor(s.t, 5*time.Second, id+" registered", func() bool {
		n, _ := s.raw.Do(context.Background(), s.raw.B().Exists().Key("coordinator:member:"+id).Build()).AsInt64()
		return n == 1
	})
	s.pods[id] = p
	return p
}

// startGateway starts the stand-in, or a real Envoy from the same file
// with only its ports rewritten.
func (s *stack) startGateway(o stackOptions, c *coord, i int) string {
	s.t.Helper()
	listen := "127.0.0.1:0" // the stand-in's bound address is read from its log
	if o.gateway == "envoy" {
		listen = freeAddr(s.t)
	}
	cfg := filepath.Join("..", "envoy", o.config)
	if len(o.edit) > 0 {
		b, err := os.ReadFile(cfg)
		if err != nil {
			s.t.Fatal(err)
		}
		txt := string(b)
		for i := 0; i+1 < len(o.edit); i += 2 {
			if !strings.Contains(txt, o.edit[i]) {
				s.t.Fatalf("%q not in %s", o.edit[i], o.config)
			}
			txt = strings.Replace(txt, o.edit[i], o.edit[i+1], 1)
		}
		cfg = filepath.Join(s.t.TempDir(), "edited-"+o.config)
		if err := os.WriteFile(cfg, []byte(txt), 0o600); err != nil {
			s.t.Fatal(err)
		}
	}
	if o.gateway == "envoy" {
		b, err := os.ReadFile(cfg)
		if err != nil {
			s.t.Fatal(err)
		}
		admin := freeAddr(s.t)
		port := func(a string) string { _, p, _ := net.SplitHostPort(a); return p }
		// One lb_endpoint per replica in the coord_extproc cluster.
		const ep = "        - endpoint:\n            address:\n              socket_address: { address: 127.0.0.1, port_value: 9002 }\n"
		var eps strings.Builder
		for _, a := range strings.Split(c.grpc, ",") {
			eps.WriteString(strings.Replace(ep, "port_value: 9002", "port_value: "+port(a), 1))
		}
		txt := strings.Replace(string(b), ep, eps.String(), 1)
		txt = strings.NewReplacer("port_value: 10000", "port_value: "+port(listen),
			"port_value: 9901", "port_value: "+port(admin), "address: 0.0.0.0", "address: 127.0.0.1").Replace(txt)
		cfg = filepath.Join(s.t.TempDir(), o.config)
		if err := os.WriteFile(cfg, []byte(txt), 0o600); err != nil {
			s.t.Fatal(err)
		}
		start(s.t, fmt.Sprintf("envoy-%d", i+1), os.Getenv("ENVOY_BIN"), "-c", cfg, "--base-id", fmt.Sprint(time.Now().UnixNano()%100000), "--log-level", "warn")
		waitFor(s.t, 15*time.Second, "envoy ready", func() bool { return s.status("http://"+admin+"/ready") == 200 })
	} else {
		gw := start(s.t, fmt.Sprintf("gateway-%d", i+1), bins.gateway, append([]string{"--config", cfg, "--listen", listen, "--coord-extproc", c.grpc, "-v"}, o.gatewayArgs...)...)
		listen = gw.waitLog(s.t, 10*time.Second, `gateway listening.* addr=(\S+)`)[1]
		waitFor(s.t, 5*time.Second, "gateway listening", func() bool {
			conn, err := net.DialTimeout("tcp", listen, 100*time.Millisecond)
			if err == nil {
				conn.Close()
			}
			return err == nil
		})
	}
	return "http://" + listen
}

func (s *stack) status(url string) int {
	resp, err := s.client.Get(url)
	if err != nil {
		return 0
	}
	resp.Body.Close()
	return resp.StatusCode
}

// answer is one HTTP exchange through a gateway.
type answer struct {
	status   int
	servedBy string
	body     map[string]any
	raw      string
	err      error
	took     time.Duration
}

func (a answer) str(k string) string { v, _ := a.body[k].(string); return v }

func (s *stack) do(gw int, method, path, body string, hdr ...string) answer {
	req, err := http.NewRequest(method, s.gws[gw]+path, strings.NewReader(body))
	if err != nil {
		s.t.Fatal(err)
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Add(hdr[i], hdr[i+1])
	}
	start := time.Now()
	resp, err := s.client.Do(req)
	if err != nil {
		return answer{err: err, took: time.Since(start)}
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	a := answer{status: resp.StatusCode, servedBy: resp.Header.Get("X-Served-By"), raw: string(b), took: time.Since(start)}
	_ = json.Unmarshal(b, &a.body)
	return a
}

func (s *stack) smembers(key string) []string {
	s.t.Helper()
	v, err := valkeytest.Do(s.t, s.raw, "SMEMBERS", key).AsStrSlice()
	if err != nil {
		s.t.Fatal(err)
	}
	return v
}

// decisions reads coord_extproc_decisions_total{api="ext_proc"} for an
// action and result from the first replica's /metrics.
func (s *stack) decisions(action, result string) float64 {
	s.t.Helper()
	resp, err := s.client.Get("http://" + s.coords[0].metrics + "/metrics")
	if err != nil {
		s.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	want := fmt.Sprintf(`coord_extproc_decisions_total{action=%q,api="ext_proc",result=%q} `, action, result)
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, want); ok {
			var n float64
			fmt.Sscan(v, &n)
			return n
		}
	}
	return 0
}
