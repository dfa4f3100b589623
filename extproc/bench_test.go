package extproc

import (
	"context"
	"io"
	"testing"

	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"google.golang.org/grpc"
)

// memStream is an in-memory ext_proc stream: one request-headers message,
// then end of stream, as Envoy sends for a headers-only route.
type memStream struct {
	grpc.ServerStream
	ctx  context.Context
	req  *extprocv3.ProcessingRequest
	sent bool
	resp *extprocv3.ProcessingResponse
}

func (m *memStream) Context() context.Context { return m.ctx }

func (m *memStream) Recv() (*extprocv3.ProcessingRequest, error) {
	if m.sent {
		return nil, io.EOF
	}
	m.sent = true
	return m.req, nil
}

func (m *memStream) Send(r *extprocv3.ProcessingResponse) error { m.resp = r; return nil }

func benchEnv(b *testing.B) (*env, *Server) {
	e := newEnvTB(b)
	e.podTB(b, "live", 7001)
	e.podTB(b, "live2", 7002)
	e.podTB(b, "live3", 7003)
	e.doTB(b, "SADD", "coordinator:destination:bound", "live", "live2", "live3")
	return e, e.server
}

// BenchmarkExchangeInProcess is one full ext_proc exchange (request headers
// in, routed response out) for a cached destination fanned out to 3 pods,
// with the gRPC transport left out: the server's own cost.
func BenchmarkExchangeInProcess(b *testing.B) {
	e, s := benchEnv(b)
	req := reqHeaders("GET", "/tenants/bound/keys/k1?x=1",
		"user-agent", "bench", "accept", "*/*", "x-request-id", "0b7a", "content-type", "application/json",
		"x-forwarded-proto", "http", "x-gateway-destination-endpoint", "127.0.0.1:6666")
	ms := &memStream{ctx: context.Background(), req: req}
	if err := s.Process(ms); err != nil || setHeaders(ms.resp)[DefaultEndpointHeader] == "" {
		b.Fatalf("warm-up: %v %v", err, ms.resp)
	}
	hits := e.reg.Stats().CacheHits.Load()
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		ms.sent = false
		if err := s.Process(ms); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	b.ReportMetric(1-float64(e.reg.Stats().CacheHits.Load()-hits)/float64(b.N), "miss-ratio")
}

// BenchmarkExchangeGRPC is the same exchange over a real loopback gRPC
// stream, one stream per request as Envoy opens them.
func BenchmarkExchangeGRPC(b *testing.B) {
	e, _ := benchEnv(b)
	req := reqHeaders("GET", "/tenants/bound/keys/k1")
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			s, err := e.proc.Process(context.Background())
			if err != nil {
				b.Error(err)
				return
			}
			if err := s.Send(req); err != nil {
				b.Error(err)
				return
			}
			if _, err := s.Recv(); err != nil {
				b.Error(err)
				return
			}
			_ = s.CloseSend()
			_, _ = s.Recv()
		}
	})
}
