package streamguard

import (
	"context"
	"errors"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/emptypb"
)

var bidi = &grpc.StreamDesc{ClientStreams: true, ServerStreams: true}

// serve runs a server whose every method echoes each message back until
// the client closes its side.
func serve(t *testing.T, g *Guard) *grpc.ClientConn {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	echo := func(_ any, ss grpc.ServerStream) error {
		for {
			m := new(emptypb.Empty)
			if err := ss.RecvMsg(m); err != nil {
				return err
			}
			if err := ss.SendMsg(m); err != nil {
				return err
			}
		}
	}
	gs := grpc.NewServer(grpc.StreamInterceptor(g.Interceptor()), grpc.UnknownServiceHandler(echo))
	go gs.Serve(lis)
	t.Cleanup(gs.Stop)
	conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

type refusals struct {
	mu sync.Mutex
	n  map[string]int
}

func (r *refusals) add(reason string) { r.mu.Lock(); r.n[reason]++; r.mu.Unlock() }
func (r *refusals) get(reason string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.n[reason]
}

func open(t *testing.T, conn *grpc.ClientConn) grpc.ClientStream {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	s, err := conn.NewStream(ctx, bidi, "/test.Echo/Echo")
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// roundTrip sends one message and reads the answer; a stream the server
// already ended says why on the receive (the send only sees io.EOF).
func roundTrip(s grpc.ClientStream) error {
	if err := s.SendMsg(&emptypb.Empty{}); err != nil && !errors.Is(err, io.EOF) {
		return err
	}
	return s.RecvMsg(new(emptypb.Empty))
}

func TestSilentStreamEndsAtTheFirstMessageDeadline(t *testing.T) {
	r := &refusals{n: map[string]int{}}
	const deadline = 200 * time.Millisecond
	conn := serve(t, New(Options{FirstMessage: deadline, OnRefused: r.add}))

	start := time.Now()
	err := open(t, conn).RecvMsg(new(emptypb.Empty))
	if status.Code(err) != codes.DeadlineExceeded {
		t.Fatalf("silent stream ended with %v, want DeadlineExceeded", err)
	}
	if took := time.Since(start); took < deadline {
		t.Errorf("ended after %v, before the %v deadline", took, deadline)
	}
	if r.get(ReasonFirstMessage) != 1 {
		t.Errorf("refusals %v, want one %s", r.n, ReasonFirstMessage)
	}
}

func TestStreamThatSpokeMayIdleAfterwards(t *testing.T) {
	r := &refusals{n: map[string]int{}}
	const deadline = 100 * time.Millisecond
	conn := serve(t, New(Options{FirstMessage: deadline, OnRefused: r.add}))

	s := open(t, conn)
	if err := roundTrip(s); err != nil {
		t.Fatal(err)
	}
	// What is tested is that time passes: a create stream waits for the
	// upstream far longer than the first-message deadline.
	time.Sleep(4 * deadline)
	if err := roundTrip(s); err != nil {
		t.Fatalf("second message after idling: %v", err)
	}
	if n := r.get(ReasonFirstMessage); n != 0 {
		t.Errorf("%d first-message refusals for a stream that spoke at once", n)
	}
}

func TestOpenStreamsAreCapped(t *testing.T) {
	r := &refusals{n: map[string]int{}}
	g := New(Options{MaxOpen: 3, OnRefused: r.add})
	conn := serve(t, g)

	var held []grpc.ClientStream
	for range 3 {
		s := open(t, conn)
		if err := roundTrip(s); err != nil {
			t.Fatal(err)
		}
		held = append(held, s)
	}
	if err := roundTrip(open(t, conn)); status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("fourth stream: %v, want ResourceExhausted", err)
	}
	if r.get(ReasonTooMany) != 1 {
		t.Errorf("refusals %v, want one %s", r.n, ReasonTooMany)
	}
	// One ends: its slot is free again.
	held[0].CloseSend()
	if err := held[0].RecvMsg(new(emptypb.Empty)); err == nil {
		t.Fatal("closed stream still answering")
	}
	for deadline := time.Now().Add(5 * time.Second); g.Open() > 2; {
		if time.Now().After(deadline) {
			t.Fatalf("open streams still %d after one ended", g.Open())
		}
		time.Sleep(5 * time.Millisecond)
	}
	if err := roundTrip(open(t, conn)); err != nil {
		t.Fatalf("stream after one ended: %v", err)
	}
}

// BenchmarkFirstMessage is the guard's cost on a stream whose first
// message is there at once (every Envoy stream).
func BenchmarkFirstMessage(b *testing.B) {
	g := New(Options{})
	ss := &readyStream{}
	b.ReportAllocs()
	for b.Loop() {
		f := &firstDeadline{ServerStream: ss, g: g}
		if err := f.RecvMsg(nil); err != nil {
			b.Fatal(err)
		}
	}
}

type readyStream struct{ grpc.ServerStream }

func (readyStream) RecvMsg(any) error { return nil }
