package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/coord-extproc/coord-extproc/internal/logbuf"
	"github.com/coord-extproc/coord-extproc/internal/valkeytest"
)

func env(kv map[string]string) lookupEnv {
	return func(k string) (string, bool) { v, ok := kv[k]; return v, ok }
}

type syncBuffer = logbuf.Buffer

func TestHelpListsEveryFlagWithItsEnvTwin(t *testing.T) {
	var out bytes.Buffer
	err := Main(context.Background(), []string{"serve", "--help"}, env(nil), io.Discard, &out)
	if !errors.Is(err, flag.ErrHelp) {
		t.Fatalf("err = %v", err)
	}
	for flagName, envName := range map[string]string{
		"listen": "COORD_LISTEN", "valkey": "COORD_VALKEY_URL", "key-prefix": "COORD_KEY_PREFIX",
		"strategy": "COORD_STRATEGY", "routes": "COORD_ROUTES", "endpoint-header": "COORD_ENDPOINT_HEADER",
		"cache-ttl": "COORD_CACHE_TTL", "cache-size": "COORD_CACHE_SIZE", "valkey-timeout": "COORD_VALKEY_TIMEOUT",
		"stale-max": "COORD_STALE_MAX", "metrics-listen": "COORD_METRICS_LISTEN", "log-level": "COORD_LOG_LEVEL",
	} {
		if !strings.Contains(out.String(), fmt.Sprintf("--%s (env %s,", flagName, envName)) {
			t.Errorf("--help does not list --%s with env %s", flagName, envName)
		}
	}
	for _, d := range []string{`"127.0.0.1:9002"`, `"redis://127.0.0.1:6379"`, `"coordinator"`, `"round-robin"`, `"5s"`, `"10000"`, `"50ms"`, `"30s"`, `"127.0.0.1:9090"`, `"info"`} {
		if !strings.Contains(out.String(), d) {
			t.Errorf("--help does not show default %s", d)
		}
	}
	for _, cmd := range []string{"members", "destination", "lock"} {
		out.Reset()
		if err := Main(context.Background(), []string{cmd, "--help"}, env(nil), io.Discard, &out); !errors.Is(err, flag.ErrHelp) || !strings.Contains(out.String(), "COORD_VALKEY_URL") {
			t.Errorf("%s --help: %v\n%s", cmd, err, out.String())
		}
	}
}

func TestConfigErrors(t *testing.T) {
	dir := t.TempDir()
	write := func(name, body string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	tests := []struct {
		name string
		args []string
		env  map[string]string
		want string
	}{
		{"unknown key", []string{"--routes", write("k.yaml", "rules:\n  - name: tenants\n    action: pass\n    colour: red\n")}, nil, `rule 1 (tenants): line 4: unknown key "colour"`},
		{"unknown action", []string{"--routes", write("a.yaml", "rules:\n  - name: fly\n    action: teleport\n")}, nil, `rule 1 (fly): unknown action "teleport"`},
		{"bad template", []string{"--routes", write("t.yaml", "rules:\n  - name: tpl\n    path: /a/**/b\n    action: pass\n")}, nil, `rule 1 (tpl): path "/a/**/b"`},
		{"bad regexp", []string{"--routes", write("r.yaml", "rules:\n  - name: re\n    path: /a/{destination}\n    action: route\n    id_pattern: '[a-'\n")}, nil, `rule 1 (re): id_pattern`},
		{"missing route file", []string{"--routes", filepath.Join(dir, "nope.yaml")}, nil, "--routes"},
		{"unknown strategy", []string{"--strategy", "fastest"}, nil, `unknown strategy "fastest"`},
		{"unknown strategy from env", nil, map[string]string{"COORD_STRATEGY": "fastest"}, `unknown strategy "fastest"`},
		{"bad duration from env", nil, map[string]string{"COORD_CACHE_TTL": "soon"}, "COORD_CACHE_TTL"},
		{"x-envoy header", []string{"--endpoint-header", "x-envoy-original-dst-host"}, nil, "x-envoy"},
		{"bad valkey url", []string{"--valkey", "http://localhost"}, nil, "--valkey"},
		{"bad listen", []string{"--listen", "nowhere"}, nil, "--listen"},
		{"unknown flag", []string{"--colour"}, nil, "flag provided but not defined"},
		{"unknown command", []string{"launch"}, nil, `unknown command "launch"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			err := Main(ctx, tt.args, env(tt.env), io.Discard, io.Discard)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %v, want it to mention %q", err, tt.want)
			}
		})
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

// The whole server: SERVING once Valkey answers, routes, /metrics moves,
// then SIGTERM-like shutdown: NOT_SERVING first, new streams refused,
// the in-flight stream completes, Main returns nil (exit 0).
func TestServeAndGracefulShutdown(t *testing.T) {
	srv := valkeytest.Start(t)
	c := srv.Client(t)
	valkeytest.Do(t, c, "SADD", "coordinator:members", "pod-a")
	valkeytest.Do(t, c, "HSET", "coordinator:member:pod-a", "address", "http://127.0.0.1:7001", "load", "0")
	valkeytest.Do(t, c, "SADD", "coordinator:destination:t1", "pod-a")
	grpcAddr, metricsAddr := freeAddr(t), freeAddr(t)

	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	logs := &syncBuffer{}
	done := make(chan error, 1)
	go func() {
		done <- Main(ctx, nil, env(map[string]string{
			"COORD_LISTEN": grpcAddr, "COORD_METRICS_LISTEN": metricsAddr, "COORD_VALKEY_URL": srv.URL(), "COORD_ALLOW_UPSTREAM": "127.0.0.0/8",
			"COORD_LOG_FORMAT": "text", "COORD_SHUTDOWN_GRACE": "5s", "COORD_FIRST_MESSAGE_TIMEOUT": "1m",
		}), io.Discard, logs)
	}()

	conn, err := grpc.NewClient(grpcAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	health := healthpb.NewHealthClient(conn)
	waitFor(t, "health SERVING", func() bool {
		r, err := health.Check(context.Background(), &healthpb.HealthCheckRequest{})
		return err == nil && r.GetStatus() == healthpb.HealthCheckResponse_SERVING
	})
	if body := get(t, "http://"+metricsAddr+"/healthz"); !strings.Contains(body, "SERVING") {
		t.Fatalf("/healthz: %q", body)
	}
	var hout bytes.Buffer
	if err := Main(context.Background(), []string{"health", "--listen", grpcAddr}, env(nil), &hout, io.Discard); err != nil || !strings.Contains(hout.String(), "SERVING") {
		t.Fatalf("health subcommand: %v %q", err, hout.String())
	}
	proc := extprocv3.NewExternalProcessorClient(conn)
	ask := func(s extprocv3.ExternalProcessor_ProcessClient) string {
		t.Helper()
		err := s.Send(&extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_RequestHeaders{RequestHeaders: &extprocv3.HttpHeaders{
			Headers: &corev3.HeaderMap{Headers: []*corev3.HeaderValue{{Key: ":method", RawValue: []byte("GET")}, {Key: ":path", RawValue: []byte("/")}, {Key: "x-destination-id", RawValue: []byte("t1")}}},
		}}})
		if err != nil {
			t.Fatal(err)
		}
		resp, err := s.Recv()
		if err != nil {
			t.Fatalf("recv: %v", err)
		}
		for _, h := range resp.GetRequestHeaders().GetResponse().GetHeaderMutation().GetSetHeaders() {
			if h.GetHeader().GetKey() == "x-gateway-destination-endpoint" {
				return string(h.GetHeader().GetRawValue())
			}
		}
		return fmt.Sprint(resp)
	}
	s1, err := proc.Process(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if got := ask(s1); got != "127.0.0.1:7001" {
		t.Fatalf("routed to %q", got)
	}
	_ = s1.CloseSend()
	metrics := get(t, "http://"+metricsAddr+"/metrics")
	for _, want := range []string{
		`coord_extproc_decisions_total{action="route",api="ext_proc",result="hit"} 1`,
		"coord_extproc_decision_duration_seconds_bucket", "coord_extproc_cache_misses_total", "coord_extproc_valkey_errors_total 0",
		"coord_extproc_stale_answers_total 0", "coord_extproc_cache_hits_total",
	} {
		if !strings.Contains(metrics, want) {
			t.Fatalf("/metrics lacks %q", want)
		}
	}
	checkObservability(t, metrics)

	// An in-flight stream: open, nothing sent yet.
	inflight, err := proc.Process(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	watchCtx, endWatch := context.WithCancel(context.Background())
	defer endWatch()
	watch, err := health.Watch(watchCtx, &healthpb.HealthCheckRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if r, err := watch.Recv(); err != nil || r.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("watch: %v %v", r, err)
	}
	waitFor(t, "stream registered on the server", func() bool {
		return strings.Contains(get(t, "http://"+metricsAddr+"/metrics"), "coord_extproc_streams_in_flight 1")
	})
	stop() // SIGTERM
	if r, err := watch.Recv(); err != nil || r.GetStatus() != healthpb.HealthCheckResponse_NOT_SERVING {
		t.Fatalf("health after SIGTERM: %v %v, want NOT_SERVING first", r, err)
	}
	endWatch() // a watcher is an in-flight stream too; it has seen what it needed
	waitFor(t, "new connections refused", func() bool {
		c, err := net.DialTimeout("tcp", grpcAddr, 100*time.Millisecond)
		if err == nil {
			c.Close()
		}
		return err != nil
	})
	if got := ask(inflight); got != "127.0.0.1:7001" {
		t.Fatalf("in-flight stream after SIGTERM got %q", got)
	}
	_ = inflight.CloseSend()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Main returned %v, want nil (exit 0)", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Main did not return after the in-flight stream finished")
	}
	if !strings.Contains(logs.String(), "stopped") {
		t.Fatalf("logs:\n%s", logs.String())
	}
}

func TestOperatorCommands(t *testing.T) {
	srv := valkeytest.Start(t)
	c := srv.Client(t)
	valkeytest.Do(t, c, "SADD", "coordinator:members", "pod-a", "pod-dead")
	valkeytest.Do(t, c, "HSET", "coordinator:member:pod-a", "address", "http://127.0.0.1:7001", "load", "4")
	valkeytest.Do(t, c, "EXPIRE", "coordinator:member:pod-a", "30")
	valkeytest.Do(t, c, "SADD", "coordinator:destination:t1", "pod-a", "pod-dead")
	valkeytest.Do(t, c, "HSET", "coordinator:lock:L1", "podId", "pod-a", "destinationId", "t1", "startedAt", "1")
	e := env(map[string]string{"COORD_VALKEY_URL": srv.URL()})
	run := func(args ...string) (string, error) {
		var out bytes.Buffer
		err := Main(context.Background(), args, e, &out, io.Discard)
		return out.String(), err
	}
	out, err := run("members")
	if err != nil || !strings.Contains(out, "pod-a") || !strings.Contains(out, "http://127.0.0.1:7001") || !strings.Contains(out, "pod-dead") {
		t.Fatalf("members: %v\n%s", err, out)
	}
	if !regexpLine(out, "pod-a", "true", "4") || !regexpLine(out, "pod-dead", "false") {
		t.Fatalf("members liveness/load wrong:\n%s", out)
	}
	out, err = run("destination", "t1")
	if err != nil || !regexpLine(out, "pod-a", "true") || !regexpLine(out, "pod-dead", "false") {
		t.Fatalf("destination: %v\n%s", err, out)
	}
	out, err = run("lock", "L1")
	if err != nil || !strings.Contains(out, "destinationId") || !strings.Contains(out, "startedAt") || !regexpLine(out, "pod-a", "true") {
		t.Fatalf("lock: %v\n%s", err, out)
	}
	if _, err := run("destination", "nope"); err == nil || !strings.Contains(err.Error(), "not found") {
		t.Fatalf("unknown destination: %v", err)
	}
	if _, err := run("lock"); !errors.Is(err, errUsage) {
		t.Fatalf("lock without id: %v", err)
	}
	if _, err := run("health", "--listen", freeAddr(t)); err == nil {
		t.Fatal("health of nothing succeeded")
	}
	if out, err := run("version"); err != nil || !strings.HasPrefix(out, "coord-extproc ") {
		t.Fatalf("version: %q %v", out, err)
	}
}

// regexpLine reports whether some line contains all the words in order.
func regexpLine(out string, words ...string) bool {
	for _, line := range strings.Split(out, "\n") {
		rest, ok := line, true
		for _, w := range words {
			i := strings.Index(rest, w)
			if i < 0 {
				ok = false
				break
			}
			rest = rest[i+len(w):]
		}
		if ok {
			return true
		}
	}
	return false
}

func get(t *testing.T, url string) string {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
