package extproc

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/valkey-io/valkey-go"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/coord-extproc/coord-extproc/internal/logbuf"
	"github.com/coord-extproc/coord-extproc/internal/valkeytest"
	"github.com/coord-extproc/coord-extproc/registry"
	"github.com/coord-extproc/coord-extproc/route"
)

const testRoutes = `
rules:
  - name: create-json
    methods: [POST]
    path: /tenants
    action: create
    id_from_json: tenantId
  - name: create-header
    methods: [POST]
    path: /hdr-tenants
    action: create
    id_from_header: x-new-tenant
  - name: delete-tenant
    methods: [DELETE]
    path: /tenants/{destination}
    action: delete
  - name: delete-strict
    methods: [DELETE]
    path: /strict/{destination}
    action: delete
    keep_dead_bindings: true
  - name: tenant-data
    path: /tenants/{destination}/**
    action: route
    reassign_orphans: true
  - name: claim
    path: /claim/{destination}
    action: route
    claim_on_miss: true
  - name: tx
    path: /transactions/{lock}/**
    action: route_lock
  - name: public
    path: /public/**
    action: pass
  - name: by-header
    destination_header: x-destination-id
    action: route
`

// env is a real coord-extproc gRPC server on a loopback port in front of a
// real valkey-server.
type env struct {
	server *Server
	srv    *valkeytest.Server
	c      valkey.Client
	reg    *registry.Registry
	prom   *prometheus.Registry
	proc   extprocv3.ExternalProcessorClient
	authz  authv3.AuthorizationClient
	gs     *grpc.Server
	logs   logbuf.Buffer // the server's log
}

func newEnv(t *testing.T) *env { return newEnvTB(t) }

func newEnvTB(t testing.TB, mods ...func(*registry.Options)) *env {
	t.Helper()
	e := &env{srv: valkeytest.Start(t)}
	e.c = e.srv.Client(t)
	opt := registry.Options{
		AllowUpstream: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")},
		Client:        valkey.ClientOption{InitAddress: []string{e.srv.Addr()}},
	}
	for _, mod := range mods {
		mod(&opt)
	}
	var err error
	e.reg, err = registry.New(context.Background(), opt)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.reg.Close)
	tbl, err := route.Parse([]byte(testRoutes))
	if err != nil {
		t.Fatal(err)
	}
	e.prom = prometheus.NewRegistry()
	s, err := NewServer(Options{Table: tbl, Registry: e.reg, Metrics: NewMetrics(e.prom, e.reg.Stats()), BodyLimit: 1024,
		Logger: slog.New(slog.NewTextHandler(&e.logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	e.server = s
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	e.gs = grpc.NewServer(grpc.ForceServerCodecV2(s.Codec()))
	extprocv3.RegisterExternalProcessorServer(e.gs, s)
	authv3.RegisterAuthorizationServer(e.gs, NewAuthz(s))
	go func() { _ = e.gs.Serve(lis) }()
	t.Cleanup(e.gs.Stop)
	conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	e.proc = extprocv3.NewExternalProcessorClient(conn)
	e.authz = authv3.NewAuthorizationClient(conn)
	return e
}

func (e *env) do(t *testing.T, args ...string) valkey.ValkeyResult { return e.doTB(t, args...) }

func (e *env) doTB(t testing.TB, args ...string) valkey.ValkeyResult {
	t.Helper()
	return valkeytest.Do(t, e.c, args...)
}

// pod registers a member the way @platformatic/coordinator does.
func (e *env) pod(t *testing.T, id string, port int) { e.podTB(t, id, port) }

func (e *env) podTB(t testing.TB, id string, port int) {
	t.Helper()
	e.doTB(t, "SADD", "coordinator:members", id)
	e.doTB(t, "HSET", "coordinator:member:"+id, "address", fmt.Sprintf("http://127.0.0.1:%d", port), "load", "0")
	e.doTB(t, "EXPIRE", "coordinator:member:"+id, "30")
}

func hdrs(kv ...string) *corev3.HeaderMap {
	m := &corev3.HeaderMap{}
	for i := 0; i+1 < len(kv); i += 2 {
		m.Headers = append(m.Headers, &corev3.HeaderValue{Key: kv[i], RawValue: []byte(kv[i+1])})
	}
	return m
}

func reqHeaders(method, path string, kv ...string) *extprocv3.ProcessingRequest {
	return &extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_RequestHeaders{
		RequestHeaders: &extprocv3.HttpHeaders{Headers: hdrs(append([]string{":method", method, ":path", path, ":authority", "gw"}, kv...)...)},
	}}
}

func respHeaders(status int, kv ...string) *extprocv3.ProcessingRequest {
	return &extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_ResponseHeaders{
		ResponseHeaders: &extprocv3.HttpHeaders{Headers: hdrs(append([]string{":status", fmt.Sprint(status)}, kv...)...)},
	}}
}

func respBody(body string) *extprocv3.ProcessingRequest {
	return &extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_ResponseBody{
		ResponseBody: &extprocv3.HttpBody{Body: []byte(body), EndOfStream: true},
	}}
}

// stream opens one ext_proc stream (one HTTP request, as Envoy does).
type stream struct {
	t *testing.T
	s extprocv3.ExternalProcessor_ProcessClient
}

func (e *env) open(t *testing.T) *stream {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	t.Cleanup(cancel)
	s, err := e.proc.Process(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return &stream{t: t, s: s}
}

func (s *stream) send(req *extprocv3.ProcessingRequest) *extprocv3.ProcessingResponse {
	s.t.Helper()
	if err := s.s.Send(req); err != nil {
		s.t.Fatalf("send: %v", err)
	}
	resp, err := s.s.Recv()
	if err != nil {
		s.t.Fatalf("recv: %v", err)
	}
	return resp
}

// expectEnd checks that the server ended the stream with OK, as it must
// once the exchange has had its final answer (SPEC §5.1).
func (s *stream) expectEnd() {
	s.t.Helper()
	if resp, err := s.s.Recv(); err != io.EOF {
		s.t.Fatalf("stream not ended after the final answer: %v, %v", resp, err)
	}
}

func (s *stream) close() {
	_ = s.s.CloseSend()
}

// headersOnly runs a request-headers-only exchange.
func (e *env) headersOnly(t *testing.T, method, path string, kv ...string) *extprocv3.ProcessingResponse {
	t.Helper()
	s := e.open(t)
	defer s.close()
	return s.send(reqHeaders(method, path, kv...))
}

// setHeaders returns the header mutation's set headers as a map.
func setHeaders(resp *extprocv3.ProcessingResponse) map[string]string {
	out := map[string]string{}
	for _, h := range resp.GetRequestHeaders().GetResponse().GetHeaderMutation().GetSetHeaders() {
		if h.GetAppendAction() != corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD {
			out["!bad-append-action:"+h.GetHeader().GetKey()] = h.GetAppendAction().String()
		}
		if h.GetHeader().GetValue() != "" {
			out["!value-not-raw:"+h.GetHeader().GetKey()] = h.GetHeader().GetValue()
		}
		out[h.GetHeader().GetKey()] = string(h.GetHeader().GetRawValue())
	}
	return out
}

// removed reports whether the response removes header name.
func removed(resp *extprocv3.ProcessingResponse, name string) bool {
	for _, h := range resp.GetRequestHeaders().GetResponse().GetHeaderMutation().GetRemoveHeaders() {
		if strings.EqualFold(h, name) {
			return true
		}
	}
	return false
}

func immediateOf(resp *extprocv3.ProcessingResponse) (status int, body string, headers map[string]string) {
	ir := resp.GetImmediateResponse()
	if ir == nil {
		return 0, "", nil
	}
	headers = map[string]string{}
	for _, h := range ir.GetHeaders().GetSetHeaders() {
		headers[h.GetHeader().GetKey()] = string(h.GetHeader().GetRawValue())
	}
	return int(ir.GetStatus().GetCode()), string(ir.GetBody()), headers
}

// counter reads a decision counter from the Prometheus registry.
func (e *env) counter(t *testing.T, api, action, result string) float64 {
	t.Helper()
	mfs, err := e.prom.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "coord_extproc_decisions_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			l := map[string]string{}
			for _, p := range m.GetLabel() {
				l[p.GetName()] = p.GetValue()
			}
			if l["api"] == api && l["action"] == action && l["result"] == result {
				return m.GetCounter().GetValue()
			}
		}
	}
	return 0
}

func eventuallyTrue(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(3 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 3s")
		}
		time.Sleep(5 * time.Millisecond)
	}
}
