package main

import (
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	mutationv3 "github.com/envoyproxy/go-control-plane/envoy/config/common/mutation_rules/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	filterv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/coord-extproc/coord-extproc/envoy"
)

// script answers each ext_proc message; nil means "send nothing".
type script func(req *extprocv3.ProcessingRequest) *extprocv3.ProcessingResponse

type fakeProcessor struct {
	extprocv3.UnimplementedExternalProcessorServer
	answer   script
	delay    time.Duration
	messages atomic.Int64
}

func (f *fakeProcessor) Process(s extprocv3.ExternalProcessor_ProcessServer) error {
	for {
		req, err := s.Recv()
		if err != nil {
			return nil
		}
		f.messages.Add(1)
		time.Sleep(f.delay)
		if resp := f.answer(req); resp != nil {
			if err := s.Send(resp); err != nil {
				return err
			}
		}
	}
}

// echo is an upstream that reports the headers it received.
func echo(t *testing.T) (string, *atomic.Int64) {
	var hits atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(r.Header)
	}))
	t.Cleanup(srv.Close)
	return srv.Listener.Addr().String(), &hits
}

type harness struct {
	gw   *httptest.Server
	proc *fakeProcessor
	cfg  *config
}

func newHarness(t *testing.T, answer script, tweak func(*config)) *harness {
	t.Helper()
	b, err := envoy.Load("../../envoy/envoy.yaml")
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := fromBootstrap(b)
	if err != nil {
		t.Fatal(err)
	}
	fp := &fakeProcessor{answer: answer}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer()
	extprocv3.RegisterExternalProcessorServer(gs, fp)
	go func() { _ = gs.Serve(lis) }()
	t.Cleanup(gs.Stop)
	cfg.grpc.addr = lis.Addr().String()
	if tweak != nil {
		tweak(cfg)
	}
	ck, err := newChecker(cfg.rules)
	if err != nil {
		t.Fatal(err)
	}
	conn, err := grpc.NewClient(cfg.grpc.addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	g := &gateway{cfg: cfg, log: slog.New(slog.DiscardHandler), checker: ck, proc: extprocv3.NewExternalProcessorClient(conn), transport: &http.Transport{}}
	h := &harness{gw: httptest.NewServer(g), proc: fp, cfg: cfg}
	t.Cleanup(h.gw.Close)
	return h
}

func (h *harness) get(t *testing.T, path string, hdr ...string) (int, string, http.Header) {
	t.Helper()
	req, _ := http.NewRequest("GET", h.gw.URL+path, nil)
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Add(hdr[i], hdr[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), resp.Header
}

func setHeaders(hs ...*corev3.HeaderValueOption) *extprocv3.ProcessingResponse {
	return &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_RequestHeaders{RequestHeaders: &extprocv3.HeadersResponse{
		Response: &extprocv3.CommonResponse{HeaderMutation: &extprocv3.HeaderMutation{SetHeaders: hs}},
	}}}
}

func raw(k, v string) *corev3.HeaderValueOption {
	return &corev3.HeaderValueOption{Header: &corev3.HeaderValue{Key: k, RawValue: []byte(v)}, AppendAction: corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD}
}

func continueAll(req *extprocv3.ProcessingRequest) *extprocv3.ProcessingResponse {
	switch req.GetRequest().(type) {
	case *extprocv3.ProcessingRequest_ResponseHeaders:
		return &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_ResponseHeaders{ResponseHeaders: &extprocv3.HeadersResponse{}}}
	case *extprocv3.ProcessingRequest_ResponseBody:
		return &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_ResponseBody{ResponseBody: &extprocv3.BodyResponse{}}}
	}
	return setHeaders()
}

func TestRoutingByEndpointHeader(t *testing.T) {
	up, hits := echo(t)
	tests := []struct {
		name   string
		value  *corev3.HeaderValueOption
		status int
	}{
		{"raw_value IP:port routes", raw("x-gateway-destination-endpoint", up), 200},
		// MutationUtils reads raw_value only: a value in `value` arrives empty.
		{"value alone arrives empty", &corev3.HeaderValueOption{Header: &corev3.HeaderValue{Key: "x-gateway-destination-endpoint", Value: up}, AppendAction: corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD}, 503},
		// ORIGINAL_DST takes only IP:port literals.
		{"hostname", raw("x-gateway-destination-endpoint", "localhost:"+strings.Split(up, ":")[1]), 503},
		{"no port", raw("x-gateway-destination-endpoint", "127.0.0.1"), 503},
		{"junk", raw("x-gateway-destination-endpoint", "not an address"), 503},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t, func(*extprocv3.ProcessingRequest) *extprocv3.ProcessingResponse { return setHeaders(tt.value) }, nil)
			before := hits.Load()
			status, body, _ := h.get(t, "/x")
			if status != tt.status {
				t.Fatalf("status %d %q, want %d", status, body, tt.status)
			}
			if tt.status == 503 && (body != "no healthy upstream" || hits.Load() != before) {
				t.Fatalf("503 body %q, upstream hits %d", body, hits.Load()-before)
			}
		})
	}
}

// Without a mutation the client's own header decides (first value): this
// is why coord-extproc strips it and why failure mode must stay closed.
func TestClientHeaderSurvivesWithoutMutation(t *testing.T) {
	up, hits := echo(t)
	h := newHarness(t, func(*extprocv3.ProcessingRequest) *extprocv3.ProcessingResponse { return setHeaders() }, nil)
	if status, _, _ := h.get(t, "/x", "x-gateway-destination-endpoint", up, "x-gateway-destination-endpoint", "10.255.255.1:1"); status != 200 || hits.Load() != 1 {
		t.Fatalf("status %d hits %d", status, hits.Load())
	}
}

func TestMutationRules(t *testing.T) {
	up, _ := echo(t)
	h := newHarness(t, func(*extprocv3.ProcessingRequest) *extprocv3.ProcessingResponse {
		return setHeaders(raw("x-gateway-destination-endpoint", up), raw("x-envoy-original-dst-host", "1.1.1.1:1"), raw("host", "evil"), raw(":authority", "evil"), raw("x-ok", "yes"))
	}, nil)
	status, body, _ := h.get(t, "/x")
	var got http.Header
	_ = json.Unmarshal([]byte(body), &got)
	if status != 200 || got.Get("X-Ok") != "yes" || got.Get("X-Envoy-Original-Dst-Host") != "" {
		t.Fatalf("default rules: %d %v", status, got)
	}
	t.Run("disallow_is_error", func(t *testing.T) {
		h := newHarness(t, func(*extprocv3.ProcessingRequest) *extprocv3.ProcessingResponse {
			return setHeaders(raw("x-envoy-foo", "1"))
		}, func(c *config) { c.rules = &mutationv3.HeaderMutationRules{DisallowIsError: wrapperspb.Bool(true)} })
		if status, _, _ := h.get(t, "/x"); status != 500 {
			t.Fatalf("status %d, want 500", status)
		}
	})
	t.Run("value and raw_value both set", func(t *testing.T) {
		h := newHarness(t, func(*extprocv3.ProcessingRequest) *extprocv3.ProcessingResponse {
			return setHeaders(&corev3.HeaderValueOption{Header: &corev3.HeaderValue{Key: "x-a", Value: "1", RawValue: []byte("1")}})
		}, nil)
		if status, _, _ := h.get(t, "/x"); status != 500 {
			t.Fatalf("status %d, want 500", status)
		}
	})
}

func TestModeOverride(t *testing.T) {
	up, _ := echo(t)
	answer := func(req *extprocv3.ProcessingRequest) *extprocv3.ProcessingResponse {
		if req.GetRequestHeaders() != nil {
			r := setHeaders(raw("x-gateway-destination-endpoint", up))
			r.ModeOverride = &filterv3.ProcessingMode{ResponseHeaderMode: filterv3.ProcessingMode_SEND, ResponseBodyMode: filterv3.ProcessingMode_BUFFERED}
			return r
		}
		return continueAll(req)
	}
	for _, allowed := range []bool{true, false} {
		h := newHarness(t, answer, func(c *config) { c.allowModeOverride = allowed })
		if status, _, _ := h.get(t, "/x"); status != 200 {
			t.Fatalf("allowed=%v: status %d", allowed, status)
		}
		want := int64(1)
		if allowed {
			want = 3 // request headers, response headers, buffered response body
		}
		if n := h.proc.messages.Load(); n != want {
			t.Fatalf("allow_mode_override=%v: processor got %d messages, want %d", allowed, n, want)
		}
	}
}

func TestTimeoutsAndFailureMode(t *testing.T) {
	up, hits := echo(t)
	slow := func(*extprocv3.ProcessingRequest) *extprocv3.ProcessingResponse { return setHeaders() }
	h := newHarness(t, slow, nil)
	h.proc.delay = 400 * time.Millisecond
	start := time.Now()
	if status, _, _ := h.get(t, "/x"); status != 504 || time.Since(start) > 350*time.Millisecond {
		t.Fatalf("message timeout: %d after %s, want 504 after ~200ms", status, time.Since(start))
	}
	h = newHarness(t, slow, func(c *config) { c.failureModeAllow = true })
	h.proc.delay = 400 * time.Millisecond
	if status, _, _ := h.get(t, "/x", "x-gateway-destination-endpoint", up); status != 200 || hits.Load() != 1 {
		t.Fatalf("failure_mode_allow: %d, hits %d; the request goes on unprocessed", status, hits.Load())
	}
	h = newHarness(t, slow, func(c *config) { c.grpc.addr = "127.0.0.1:1" })
	if status, _, _ := h.get(t, "/x"); status != 500 {
		t.Fatalf("processor unreachable: %d, want 500", status)
	}
}

func TestImmediateAndSpurious(t *testing.T) {
	up, hits := echo(t)
	h := newHarness(t, func(*extprocv3.ProcessingRequest) *extprocv3.ProcessingResponse {
		return &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_ImmediateResponse{ImmediateResponse: &extprocv3.ImmediateResponse{
			Body: []byte(`{"error":"x"}`), Headers: &extprocv3.HeaderMutation{SetHeaders: []*corev3.HeaderValueOption{raw("content-type", "application/json")}},
		}}}
	}, nil)
	status, body, hdr := h.get(t, "/x")
	if status != 200 || body != `{"error":"x"}` || hdr.Get("Content-Type") != "application/json" {
		t.Fatalf("immediate without status: %d %q %v (Envoy uses 200)", status, body, hdr)
	}
	h = newHarness(t, func(*extprocv3.ProcessingRequest) *extprocv3.ProcessingResponse {
		return &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_ImmediateResponse{ImmediateResponse: &extprocv3.ImmediateResponse{
			Status: &typev3.HttpStatus{Code: typev3.StatusCode_Gone},
		}}}
	}, nil)
	if status, _, _ := h.get(t, "/x"); status != 410 {
		t.Fatalf("immediate 410: %d", status)
	}
	// A response of the wrong type is spurious: ignored, the request goes
	// on without the processor's mutation.
	h = newHarness(t, func(*extprocv3.ProcessingRequest) *extprocv3.ProcessingResponse {
		return &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_ResponseHeaders{ResponseHeaders: &extprocv3.HeadersResponse{
			Response: &extprocv3.CommonResponse{HeaderMutation: &extprocv3.HeaderMutation{SetHeaders: []*corev3.HeaderValueOption{raw("x-gateway-destination-endpoint", "127.0.0.1:1")}}},
		}}}
	}, nil)
	if status, _, _ := h.get(t, "/x", "x-gateway-destination-endpoint", up); status != 200 || hits.Load() != 1 {
		t.Fatalf("spurious: %d hits %d", status, hits.Load())
	}
}

func TestMetadataNeedsReceivingNamespace(t *testing.T) {
	up, hits := echo(t)
	answer := func(*extprocv3.ProcessingRequest) *extprocv3.ProcessingResponse {
		r := setHeaders()
		r.DynamicMetadata, _ = structpb.NewStruct(map[string]any{"envoy.lb": map[string]any{"x-gateway-destination-endpoint": up}})
		return r
	}
	useMetadata := func(c *config) {
		c.clusters["pods"].metadataNS, c.clusters["pods"].metadataKey = "envoy.lb", "x-gateway-destination-endpoint"
	}
	h := newHarness(t, answer, useMetadata)
	if status, _, _ := h.get(t, "/x"); status != 200 || hits.Load() != 1 {
		t.Fatalf("metadata routing: %d", status)
	}
	h = newHarness(t, answer, func(c *config) { useMetadata(c); c.receivingNS = nil })
	if status, _, _ := h.get(t, "/x"); status != 503 {
		t.Fatalf("metadata without receiving namespace: %d, want 503", status)
	}
}

func TestUnsupportedConfigIsRefused(t *testing.T) {
	b, err := envoy.Load("../../envoy/envoy.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := fromBootstrap(b); err != nil {
		t.Fatal(err)
	}
	data, _ := readFile("../../envoy/envoy.yaml")
	broken := strings.Replace(data, "response_body_mode: NONE", "response_body_mode: STREAMED", 1)
	b2, err := envoy.Parse([]byte(broken))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := fromBootstrap(b2); err == nil || !strings.Contains(err.Error(), "STREAMED") {
		t.Fatalf("STREAMED body mode accepted: %v", err)
	}
}

func readFile(p string) (string, error) {
	b, err := os.ReadFile(p)
	return string(b), err
}
