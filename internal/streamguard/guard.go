package streamguard

import (
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Defaults of Options.
const (
	// DefaultFirstMessage: Envoy sends a stream's first message with the
	// stream (ext_proc's request headers, the access log's first batch,
	// a health request), so a second is generous on a loaded host.
	DefaultFirstMessage = time.Second
	// DefaultMaxOpen bounds memory: an open stream costs ~11 KB in grpc-go
	// (30 000 idle streams measured ~330 MB). Envoy's streams end at their
	// final answer (SPEC §5.1), so only create/delete streams live long.
	DefaultMaxOpen = 10_000
)

// Reasons passed to Options.OnRefused.
const (
	ReasonFirstMessage = "first_message_timeout"
	ReasonTooMany      = "too_many_streams"
)

// Options configure a Guard; zero fields take the defaults.
type Options struct {
	FirstMessage time.Duration
	MaxOpen      int
	// OnRefused counts a stream ended by the guard (metrics, logs).
	OnRefused func(reason string)
}

// Guard is a grpc stream interceptor; see New.
type Guard struct {
	opt  Options
	open atomic.Int64
}

// New returns a Guard with opt's bounds.
func New(opt Options) *Guard {
	if opt.FirstMessage <= 0 {
		opt.FirstMessage = DefaultFirstMessage
	}
	if opt.MaxOpen <= 0 {
		opt.MaxOpen = DefaultMaxOpen
	}
	if opt.OnRefused == nil {
		opt.OnRefused = func(string) {}
	}
	return &Guard{opt: opt}
}

// Open is the number of streams open now.
func (g *Guard) Open() int64 { return g.open.Load() }

// Interceptor is the grpc.StreamServerInterceptor that applies the bounds.
// A stream past MaxOpen ends at once with RESOURCE_EXHAUSTED (Envoy applies
// the filter's failure mode to that one request); a stream whose first
// message is late ends with DEADLINE_EXCEEDED.
func (g *Guard) Interceptor() grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		if g.open.Add(1) > int64(g.opt.MaxOpen) {
			g.open.Add(-1)
			g.opt.OnRefused(ReasonTooMany)
			return status.Error(codes.ResourceExhausted, fmt.Sprintf("more than %d streams open", g.opt.MaxOpen))
		}
		defer g.open.Add(-1)
		return handler(srv, &firstDeadline{ServerStream: ss, g: g})
	}
}

// firstDeadline bounds the wait for the stream's first message. Only the
// first receive runs apart (grpc-go cannot interrupt a blocked RecvMsg):
// when the deadline wins, the handler returns, grpc-go ends the stream and
// the pending receive returns with it into a message nobody reads.
type firstDeadline struct {
	grpc.ServerStream
	g    *Guard
	seen bool
}

func (s *firstDeadline) RecvMsg(m any) error {
	if s.seen {
		return s.ServerStream.RecvMsg(m)
	}
	s.seen = true
	w := waiters.Get().(*waiter)
	go w.recv(s.ServerStream, m)
	w.timer.Reset(s.g.opt.FirstMessage)
	select {
	case err := <-w.done:
		w.timer.Stop()
		waiters.Put(w)
		return err
	case <-w.timer.C:
		// w stays with the pending receive: never back in the pool.
		s.g.opt.OnRefused(ReasonFirstMessage)
		return status.Error(codes.DeadlineExceeded, fmt.Sprintf("no first message within %v", s.g.opt.FirstMessage))
	}
}

// waiter is one first receive's channel and timer, pooled: every stream
// needs one for a few microseconds.
type waiter struct {
	done  chan error
	timer *time.Timer
}

var waiters = sync.Pool{New: func() any {
	t := time.NewTimer(time.Hour)
	t.Stop()
	return &waiter{done: make(chan error, 1), timer: t}
}}

func (w *waiter) recv(ss grpc.ServerStream, m any) { w.done <- ss.RecvMsg(m) }
