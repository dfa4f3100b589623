package extproc

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"runtime/debug"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/coord-extproc/coord-extproc/internal/ratelimit"
	"github.com/coord-extproc/coord-extproc/registry"
	"github.com/coord-extproc/coord-extproc/route"
)

// Defaults of Options.
const (
	DefaultEndpointHeader = "x-gateway-destination-endpoint"
	DefaultBodyLimit      = 64 << 10
	// DefaultPort is the gRPC port both APIs are served on.
	DefaultPort = 9002
	// DefaultStreamGrace is how long a stream may outlive its connection's
	// rotation or the server's shutdown. A create or delete stream lives
	// until the upstream answers — the binding is written on that answer —
	// so the grace must exceed the longest route timeout of those routes
	// (30 s in the shipped configs; envoy.CheckWiring holds them to it): a
	// stream cut earlier fails the request closed (500) although the
	// upstream may have done the work.
	DefaultStreamGrace = 35 * time.Second
	// MemberHeader tells the pod which member id it was picked as.
	MemberHeader = "x-coordinator-member"
	// MetadataNamespace is where ext_proc answers carry the endpoint as
	// dynamic metadata (the Gateway API Inference Extension convention),
	// under the endpoint header's name; an ORIGINAL_DST cluster's
	// metadata_key reads it there. ext_authz answers carry the same key,
	// but Envoy files them under the ext_authz filter's own name.
	MetadataNamespace = "envoy.lb"
)

// Options configure the servers.
type Options struct {
	Table    *route.Table
	Registry Registry
	Metrics  *Metrics
	Logger   *slog.Logger
	// EndpointHeader carries the chosen IP:port to Envoy.
	EndpointHeader string
	// BodyLimit caps buffered response bodies read on create routes.
	BodyLimit int
	// DecisionTimeout bounds all Valkey work of one decision together
	// (DefaultDecisionTimeout when zero).
	DecisionTimeout time.Duration
}

// Server implements ext_proc. One stream is one HTTP request.
type Server struct {
	extprocv3.UnimplementedExternalProcessorServer
	opt     Options
	answers answerCache[*extprocv3.ProcessingResponse]
	pass    *extprocv3.ProcessingResponse // shared, never mutated
	checks  answerCache[*authv3.CheckResponse]
	codec   Codec // freezes the shared answers
	// warn logs what a client or a pod can trigger per request (an
	// unexpected upstream status, a stream ended early): once per 10 s per
	// message with a count, values cut.
	warn *ratelimit.Log
}

var _ extprocv3.ExternalProcessorServer = (*Server)(nil)

// NewServer checks opt and returns an ext_proc server.
func NewServer(opt Options) (*Server, error) {
	if opt.Table == nil || opt.Registry == nil || opt.Metrics == nil {
		return nil, errors.New("extproc: Table, Registry and Metrics are required")
	}
	if opt.Logger == nil {
		opt.Logger = slog.New(slog.DiscardHandler)
	}
	if opt.EndpointHeader == "" {
		opt.EndpointHeader = DefaultEndpointHeader
	}
	if opt.BodyLimit <= 0 {
		opt.BodyLimit = DefaultBodyLimit
	}
	if opt.DecisionTimeout <= 0 {
		opt.DecisionTimeout = registry.DefaultDecisionTimeout
	}
	s := &Server{opt: opt, codec: NewCodec(), warn: ratelimit.NewLog(opt.Logger, 10*time.Second, nil)}
	s.pass = s.passHeaders()
	s.codec.Freeze(s.pass)
	return s, nil
}

// Codec is the gRPC codec to serve this server's APIs with (install it
// with grpc.ForceServerCodecV2): it sends the server's shared answers
// as encoded once. Any other codec gives the same bytes, only slower.
func (s *Server) Codec() Codec { return s.codec }

// Process serves one ext_proc stream: Envoy sends the request headers
// (and whatever the processing mode asks for), we answer each message in
// turn and end the stream with OK as soon as the exchange is over, so a
// long upstream call never depends on this stream, its connection's
// rotation or our shutdown (SPEC §5.1). End of stream and cancellation
// are normal ends.
func (s *Server) Process(stream extprocv3.ExternalProcessor_ProcessServer) error {
	s.opt.Metrics.streams.Inc()
	defer s.opt.Metrics.streams.Dec()
	ctx := stream.Context()
	x := &exchange{s: s}
	defer x.finish()
	for {
		req, err := stream.Recv()
		if err != nil {
			if errors.Is(err, io.EOF) || status.Code(err) == codes.Canceled || ctx.Err() != nil {
				return nil
			}
			return err
		}
		if err := s.handle(ctx, x, req); err != nil {
			return err
		}
		if err := x.answers(stream.Send); err != nil {
			if status.Code(err) == codes.Canceled || ctx.Err() != nil {
				return nil
			}
			return err
		}
		if x.over() {
			return nil
		}
	}
}

// handle runs one message through the exchange; a panic is turned into a
// stream error (Envoy then applies its failure mode) and counted.
func (s *Server) handle(ctx context.Context, x *exchange, req *extprocv3.ProcessingRequest) (err error) {
	defer func() {
		if p := recover(); p != nil {
			s.opt.Metrics.panics.Inc()
			s.opt.Logger.Error("recovered panic on the request path", "panic", p, "stack", string(debug.Stack()))
			err = status.Error(codes.Internal, "internal error")
		}
	}()
	if !x.handle(registry.WithBudget(ctx, s.opt.DecisionTimeout), req) {
		return status.Error(codes.InvalidArgument, fmt.Sprintf("unexpected ext_proc message %T", req.GetRequest()))
	}
	return nil
}
