package extproc

import (
	"context"
	"os"
	"testing"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	filterv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/coord-extproc/coord-extproc/registry"
	"github.com/coord-extproc/coord-extproc/route"
	"github.com/coord-extproc/coord-extproc/strategy"
)

// fixedRegistry answers every question at once, so fuzzing exercises the
// exchange, not Valkey.
type fixedRegistry struct{}

var member = strategy.Candidate{ID: "m", Address: "10.0.0.1:80"}

func (fixedRegistry) Route(context.Context, string, registry.RouteOptions) (registry.Decision, error) {
	return registry.Decision{Member: member, Result: registry.ResultHit}, nil
}
func (fixedRegistry) RouteLock(context.Context, string) (registry.Decision, error) {
	return registry.Decision{}, registry.ErrLockOwnerGone
}
func (fixedRegistry) PickMember(context.Context, string) (strategy.Candidate, error) {
	return member, nil
}
func (fixedRegistry) Bind(context.Context, string, string) error { return nil }
func (fixedRegistry) Lookup(context.Context, string) (registry.Binding, error) {
	return registry.Binding{Dead: []string{"d"}}, nil
}
func (fixedRegistry) DeleteDestination(context.Context, string) error { return nil }

func fuzzServer(f *testing.F) *Server {
	demo, err := os.ReadFile("../envoy/demo-routes.yaml")
	if err != nil {
		f.Fatal(err)
	}
	tbl, err := route.Parse(demo)
	if err != nil {
		f.Fatal(err)
	}
	s, err := NewServer(Options{Table: tbl, Registry: fixedRegistry{}, Metrics: NewMetrics(prometheus.NewRegistry(), nil)})
	if err != nil {
		f.Fatal(err)
	}
	return s
}

// FuzzExchange feeds one stream an arbitrary sequence of ext_proc messages
// (kind, then content, per step): every message gets an answer or a stream
// error, never a panic, and no answer lets a client choose the upstream.
func FuzzExchange(f *testing.F) {
	s := fuzzServer(f)
	f.Add([]byte{0, 3, 4, 5}, "POST", "/tenants", `{"tenantId":"t1"}`, "201")
	f.Add([]byte{0, 0, 1, 2, 3, 3, 4}, "DELETE", "/tenants/t1", "", "204")
	f.Add([]byte{4, 3, 0}, "GET", "/sessions/s/keys/k", "x", "200")
	f.Fuzz(func(t *testing.T, steps []byte, method, path, body, status string) {
		if len(steps) > 32 {
			steps = steps[:32]
		}
		x := &exchange{s: s}
		defer x.finish()
		for _, k := range steps {
			var req *extprocv3.ProcessingRequest
			hdrs := &extprocv3.HttpHeaders{Headers: &corev3.HeaderMap{Headers: []*corev3.HeaderValue{
				{Key: ":method", RawValue: []byte(method)}, {Key: ":path", RawValue: []byte(path)}, {Key: ":status", RawValue: []byte(status)},
				{Key: DefaultEndpointHeader, RawValue: []byte("169.254.169.254:80")}, {Key: "x-new-tenant", RawValue: []byte(body)},
			}}}
			switch k % 6 {
			case 0:
				req = &extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_RequestHeaders{RequestHeaders: hdrs}}
			case 1:
				req = &extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_RequestBody{RequestBody: &extprocv3.HttpBody{Body: []byte(body)}}}
			case 2:
				req = &extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_RequestTrailers{RequestTrailers: &extprocv3.HttpTrailers{}}}
			case 3:
				req = &extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_ResponseHeaders{ResponseHeaders: hdrs}}
			case 4:
				req = &extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_ResponseBody{ResponseBody: &extprocv3.HttpBody{Body: []byte(body), EndOfStream: true}}}
			default:
				req = &extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_ResponseTrailers{ResponseTrailers: &extprocv3.HttpTrailers{}}}
			}
			if k&0x40 != 0 { // the body modes Envoy announces with its first message
				m := filterv3.ProcessingMode_BodySendMode(k >> 3 & 7 % 5)
				req.ProtocolConfig = &extprocv3.ProtocolConfiguration{RequestBodyMode: m, ResponseBodyMode: m}
			}
			if err := s.handle(context.Background(), x, req); err != nil {
				continue
			}
			var out []*extprocv3.ProcessingResponse
			_ = x.answers(func(r *extprocv3.ProcessingResponse) error { out = append(out, r); return nil })
			for _, resp := range out {
				for _, h := range resp.GetRequestHeaders().GetResponse().GetHeaderMutation().GetSetHeaders() {
					if h.GetHeader().GetKey() == DefaultEndpointHeader && string(h.GetHeader().GetRawValue()) != member.Address {
						t.Fatalf("endpoint header set to %q", h.GetHeader().GetRawValue())
					}
				}
			}
		}
	})
}

// FuzzAuthz: any check request is answered (OK or denied), never a panic,
// and an OK never carries an endpoint the registry did not choose.
func FuzzAuthz(f *testing.F) {
	a := NewAuthz(fuzzServer(f))
	f.Add("GET", "/tenants/t1/keys", "t1", "10.9.9.9:1")
	f.Add("DELETE", "/tenants/%2e%2e", "a,b", "")
	f.Fuzz(func(t *testing.T, method, path, id, endpoint string) {
		resp, err := a.Check(context.Background(), &authv3.CheckRequest{Attributes: &authv3.AttributeContext{Request: &authv3.AttributeContext_Request{
			Http: &authv3.AttributeContext_HttpRequest{Method: method, Path: path, Headers: map[string]string{"x-destination-id": id, DefaultEndpointHeader: endpoint}},
		}}})
		if err != nil {
			return
		}
		for _, h := range resp.GetOkResponse().GetHeaders() {
			if h.GetHeader().GetKey() == DefaultEndpointHeader && h.GetHeader().GetValue() != member.Address {
				t.Fatalf("endpoint header set to %q", h.GetHeader().GetValue())
			}
		}
	})
}
