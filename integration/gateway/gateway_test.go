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

// script answers each ext_proc message; nil ends the stream with OK
// before answering.
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
		resp := f.answer(req)
		if resp == nil {
			return nil
		}
		if err := s.Send(resp); err != nil {
			return err
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
	ck, err := envoy.NewMutationChecker(cfg.rules)
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
			h := newHarness(t, func(*extprocv3.ProcessingRequest) *extprocv3.ProcessingResponse { return setHeaders(tt.value) }, useHeader)
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

// useHeader makes the pods cluster read the endpoint header, as the
// shipped configs no longer do.
func useHeader(c *config) { c.clusters["pods"].headerName = "x-gateway-destination-endpoint" }

// A request that reaches the ORIGINAL_DST cluster without the processor's
// answer — the processor ends the stream before answering, fails open, or
// answers without touching the endpoint — gets 503 with the shipped
// config, never the client's header value. With a cluster that reads the
// header (the old config), the client's own header decides (first
// value): the test can fail.
func TestBypassNeverRoutesByClientHeader(t *testing.T) {
	up, hits := echo(t)
	closeEarly := func(*extprocv3.ProcessingRequest) *extprocv3.ProcessingResponse { return nil }
	for _, tc := range []struct {
		name   string
		answer script
		tweak  func(*config)
	}{
		{"stream ended before an answer", closeEarly, nil},
		{"processor down, failure mode open", closeEarly, func(c *config) { c.grpc.addr = "127.0.0.1:1"; c.failureModeAllow = true }},
		{"answer without mutation", func(*extprocv3.ProcessingRequest) *extprocv3.ProcessingResponse { return setHeaders() }, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t, tc.answer, tc.tweak)
			if status, body, _ := h.get(t, "/x", "x-gateway-destination-endpoint", up); status != 503 || body != "no healthy upstream" || hits.Load() != 0 {
				t.Fatalf("status %d %q, upstream hits %d: want 503 and no request at the client's address", status, body, hits.Load())
			}
			h = newHarness(t, tc.answer, func(c *config) {
				if tc.tweak != nil {
					tc.tweak(c)
				}
				useHeader(c)
			})
			if status, _, _ := h.get(t, "/x", "x-gateway-destination-endpoint", up); status != 200 || hits.Load() != 1 {
				t.Fatalf("header-reading cluster: status %d hits %d, want the client's choice honoured", status, hits.Load())
			}
			hits.Store(0)
		})
	}
}

func TestMutationRules(t *testing.T) {
	up, _ := echo(t)
	h := newHarness(t, func(*extprocv3.ProcessingRequest) *extprocv3.ProcessingResponse {
		return setHeaders(raw("x-gateway-destination-endpoint", up), raw("x-envoy-original-dst-host", "1.1.1.1:1"), raw("host", "evil"), raw(":authority", "evil"), raw("x-ok", "yes"))
	}, useHeader)
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
	// Released Envoy reads raw_value and ignores value (the "only one of"
	// error was dropped in 1.32), and honours only the deprecated append
	// flag: append_action is not read.
	t.Run("raw_value wins, append_action ignored", func(t *testing.T) {
		h := newHarness(t, func(*extprocv3.ProcessingRequest) *extprocv3.ProcessingResponse {
			return setHeaders(raw("x-gateway-destination-endpoint", up),
				&corev3.HeaderValueOption{Header: &corev3.HeaderValue{Key: "x-a", Value: "v", RawValue: []byte("raw")}, AppendAction: corev3.HeaderValueOption_ADD_IF_ABSENT},
				&corev3.HeaderValueOption{Header: &corev3.HeaderValue{Key: "x-b", RawValue: []byte("second")}, Append: wrapperspb.Bool(true)})
		}, useHeader)
		status, body, _ := h.get(t, "/x", "x-a", "client", "x-b", "first")
		var got http.Header
		_ = json.Unmarshal([]byte(body), &got)
		if status != 200 || strings.Join(got.Values("X-A"), ",") != "raw" || strings.Join(got.Values("X-B"), ",") != "first,second" {
			t.Fatalf("%d x-a=%v x-b=%v, want x-a overwritten with raw_value and x-b appended", status, got.Values("X-A"), got.Values("X-B"))
		}
	})
	t.Run("pseudo-headers and host are never removed", func(t *testing.T) {
		h := newHarness(t, func(*extprocv3.ProcessingRequest) *extprocv3.ProcessingResponse {
			r := setHeaders(raw("x-gateway-destination-endpoint", up))
			r.GetRequestHeaders().GetResponse().GetHeaderMutation().RemoveHeaders = []string{"host", ":path"}
			return r
		}, func(c *config) {
			useHeader(c)
			c.rules = &mutationv3.HeaderMutationRules{AllowAllRouting: wrapperspb.Bool(true), DisallowIsError: wrapperspb.Bool(true)}
		})
		if status, _, _ := h.get(t, "/x"); status != 500 {
			t.Fatalf("status %d, want 500 (refused removal, disallow_is_error)", status)
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
		h := newHarness(t, answer, func(c *config) { useHeader(c); c.allowModeOverride = allowed })
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
	h = newHarness(t, slow, func(c *config) { useHeader(c); c.failureModeAllow = true })
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
	// A response of the wrong type is spurious. Envoy ≥ 1.35 with failure
	// mode closed answers status_on_error (500); 1.34 ignored it and went
	// on without the processor's mutation.
	spurious := func(*extprocv3.ProcessingRequest) *extprocv3.ProcessingResponse {
		return &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_ResponseHeaders{ResponseHeaders: &extprocv3.HeadersResponse{
			Response: &extprocv3.CommonResponse{HeaderMutation: &extprocv3.HeaderMutation{SetHeaders: []*corev3.HeaderValueOption{raw("x-gateway-destination-endpoint", "127.0.0.1:1")}}},
		}}}
	}
	h = newHarness(t, spurious, useHeader)
	if status, _, _ := h.get(t, "/x", "x-gateway-destination-endpoint", up); status != 500 || hits.Load() != 0 {
		t.Fatalf("spurious: %d hits %d, want 500", status, hits.Load())
	}
	h = newHarness(t, spurious, func(c *config) { useHeader(c); c.legacy = true })
	if status, _, _ := h.get(t, "/x", "x-gateway-destination-endpoint", up); status != 200 || hits.Load() != 1 {
		t.Fatalf("spurious on 1.34: %d hits %d", status, hits.Load())
	}
	// An immediate response's headers go through the filter's mutation
	// rules, and an empty body carries no content-type.
	h = newHarness(t, func(*extprocv3.ProcessingRequest) *extprocv3.ProcessingResponse {
		return &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_ImmediateResponse{ImmediateResponse: &extprocv3.ImmediateResponse{
			Status:  &typev3.HttpStatus{Code: typev3.StatusCode_NoContent},
			Headers: &extprocv3.HeaderMutation{SetHeaders: []*corev3.HeaderValueOption{raw("content-type", "application/json"), raw("x-envoy-x", "1")}},
		}}}
	}, nil)
	if status, _, hdr := h.get(t, "/x"); status != 204 || hdr.Get("Content-Type") != "" || hdr.Get("X-Envoy-X") != "" {
		t.Fatalf("empty immediate: %d %v", status, hdr)
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
		c.clusters["pods"].metadataNS, c.clusters["pods"].metadataPath = "envoy.lb", []string{"x-gateway-destination-endpoint"}
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

// Settings the stand-in does not play are refused, not ignored.
func TestUnsupportedConfigIsRefused(t *testing.T) {
	data, err := readFile("../../envoy/envoy.yaml")
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ from, to, want string }{
		{"timeout: 30s", "timeout: 30s\n                  retry_policy: { retry_on: 5xx }", "retry_policy"},
		{"timeout: 30s", "timeout: 30s\n                request_headers_to_add: [{ header: { key: a, value: b } }]", "request_headers_to_add"},
		{"timeout: 30s", "timeout: 30s\n                typed_per_filter_config: { envoy.filters.http.ext_proc: { \"@type\": type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExtProcPerRoute, disabled: true } }", "typed_per_filter_config"},
		{"allow_mode_override: true", "allow_mode_override: true\n              observability_mode: true", "observability_mode"},
		{"allow_mode_override: true", "allow_mode_override: true\n              send_body_without_waiting_for_header_response: true", "send_body_without_waiting_for_header_response"},
		{"cleanup_interval: 30s", "cleanup_interval: 30s\n    dns_lookup_family: V4_ONLY", "dns_lookup_family"},
	} {
		t.Run(tc.want, func(t *testing.T) {
			broken := strings.Replace(data, tc.from, tc.to, 1)
			b, err := envoy.Parse([]byte(broken))
			if err != nil {
				t.Fatalf("copy does not parse: %v", err)
			}
			if _, err := fromBootstrap(b); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want one naming %s", err, tc.want)
			}
		})
	}
	b, err := envoy.Parse([]byte(data))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := fromBootstrap(b); err != nil {
		t.Fatal(err)
	}
}

func readFile(p string) (string, error) {
	b, err := os.ReadFile(p)
	return string(b), err
}
