package extproc

import (
	"context"
	"runtime"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Every message type, early closes, cancellations and malformed messages:
// the server answers or ends the stream, never panics, leaks nothing.
func TestProtocolRobustness(t *testing.T) {
	e := newEnv(t)
	e.pod(t, "live", 7001)
	e.do(t, "SADD", "coordinator:destination:bound", "live")
	// Warm up gRPC and the caches so their goroutines are in the baseline.
	e.headersOnly(t, "GET", "/tenants/bound/x")
	baseline := runtime.NumGoroutine()

	t.Run("malformed: no headers, empty path", func(t *testing.T) {
		for _, req := range []*extprocv3.ProcessingRequest{
			{Request: &extprocv3.ProcessingRequest_RequestHeaders{}},
			{Request: &extprocv3.ProcessingRequest_RequestHeaders{RequestHeaders: &extprocv3.HttpHeaders{}}},
			{Request: &extprocv3.ProcessingRequest_RequestHeaders{RequestHeaders: &extprocv3.HttpHeaders{Headers: &corev3.HeaderMap{Headers: []*corev3.HeaderValue{nil, {Key: ":path"}}}}}},
			reqHeaders("", ""),
		} {
			s := e.open(t)
			resp := s.send(req)
			if status, _, _ := immediateOf(resp); status != 404 {
				t.Fatalf("malformed headers: %v, want the no-route 404", resp)
			}
			s.close()
		}
	})
	t.Run("message with no request set ends the stream", func(t *testing.T) {
		s := e.open(t)
		if err := s.s.Send(&extprocv3.ProcessingRequest{}); err != nil {
			t.Fatal(err)
		}
		if _, err := s.s.Recv(); status.Code(err) != codes.InvalidArgument {
			t.Fatalf("err = %v, want InvalidArgument", err)
		}
	})
	t.Run("closed early", func(t *testing.T) {
		for i := 0; i < 20; i++ {
			s := e.open(t)
			s.close()
			_, _ = s.s.Recv()
		}
	})
	t.Run("cancelled mid-resolution", func(t *testing.T) {
		e.srv.Pause()
		defer e.srv.Resume()
		for i := 0; i < 10; i++ {
			ctx, cancel := context.WithCancel(context.Background())
			s, err := e.proc.Process(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if err := s.Send(reqHeaders("GET", "/tenants/uncached-"+string(rune('a'+i))+"/x")); err != nil {
				t.Fatal(err)
			}
			time.Sleep(5 * time.Millisecond)
			cancel()
			_, _ = s.Recv()
		}
	})
	if n := e.counterVec(t, "coord_extproc_recovered_panics_total"); n != 0 {
		t.Fatalf("%v panics recovered", n)
	}
	deadline := time.Now().Add(5 * time.Second)
	for runtime.NumGoroutine() > baseline+2 {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<16)
			t.Fatalf("goroutines: %d now, %d before\n%s", runtime.NumGoroutine(), baseline, buf[:runtime.Stack(buf, true)])
		}
		time.Sleep(20 * time.Millisecond)
	}
}
