// Command ceiling is the benchmark's reference server: an ext_proc and
// ext_authz server that answers every request with one constant endpoint
// header and does nothing else. Its throughput is the cost of gRPC itself,
// the ceiling any routing server on the same machine can reach.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"syscall"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
)

type server struct {
	extprocv3.UnimplementedExternalProcessorServer
	authv3.UnimplementedAuthorizationServer
	endpoint []byte
}

func (s *server) Process(stream extprocv3.ExternalProcessor_ProcessServer) error {
	for {
		req, err := stream.Recv()
		if err != nil {
			return nil
		}
		resp := &extprocv3.ProcessingResponse{}
		switch req.GetRequest().(type) {
		case *extprocv3.ProcessingRequest_RequestHeaders:
			resp.Response = &extprocv3.ProcessingResponse_RequestHeaders{RequestHeaders: &extprocv3.HeadersResponse{
				Response: &extprocv3.CommonResponse{HeaderMutation: &extprocv3.HeaderMutation{SetHeaders: []*corev3.HeaderValueOption{{
					Header:       &corev3.HeaderValue{Key: "x-gateway-destination-endpoint", RawValue: s.endpoint},
					AppendAction: corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD,
				}}}},
			}}
		default:
			return errors.New("ceiling: only request headers are answered")
		}
		if err := stream.Send(resp); err != nil {
			return nil
		}
	}
}

func (s *server) Check(context.Context, *authv3.CheckRequest) (*authv3.CheckResponse, error) {
	return &authv3.CheckResponse{
		Status: &rpcstatus.Status{},
		HttpResponse: &authv3.CheckResponse_OkResponse{OkResponse: &authv3.OkHttpResponse{Headers: []*corev3.HeaderValueOption{{
			Header:       &corev3.HeaderValue{Key: "x-gateway-destination-endpoint", Value: string(s.endpoint)},
			AppendAction: corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD,
		}}}},
	}, nil
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stderr); err != nil && !errors.Is(err, flag.ErrHelp) {
		fmt.Fprintln(os.Stderr, "ceiling:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string, stderr io.Writer) error {
	fs := flag.NewFlagSet("ceiling", flag.ContinueOnError)
	fs.SetOutput(stderr)
	listen := fs.String("listen", "127.0.0.1:9102", "gRPC address")
	endpoint := fs.String("endpoint", "127.0.0.1:8080", "the constant answer")
	if err := fs.Parse(args); err != nil {
		return err
	}
	lis, err := net.Listen("tcp", *listen)
	if err != nil {
		return err
	}
	// The same stream limit coord-extproc uses, so only the work differs.
	gs := grpc.NewServer(grpc.MaxConcurrentStreams(100_000))
	s := &server{endpoint: []byte(*endpoint)}
	extprocv3.RegisterExternalProcessorServer(gs, s)
	authv3.RegisterAuthorizationServer(gs, s)
	go func() { <-ctx.Done(); gs.GracefulStop() }()
	fmt.Fprintln(stderr, "ceiling listening on", lis.Addr())
	return gs.Serve(lis)
}
