package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

// healthCheck asks a running server for its gRPC health, for container
// health checks in images that carry no other tool.
func healthCheck(ctx context.Context, cfg *Config, args []string, env lookupEnv, stdout, stderr io.Writer) error {
	spec := []flagSpec{{"listen", "COORD_LISTEN", "address of the server to check",
		func(fs *flag.FlagSet, n, u string) { fs.StringVar(&cfg.Listen, n, cfg.Listen, u) }}}
	if _, err := parse("health", "health [--listen ADDR]", spec, args, env, stderr, 0); err != nil {
		return err
	}
	conn, err := grpc.NewClient(cfg.Listen, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return err
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	resp, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{})
	if err != nil {
		return fmt.Errorf("health of %s: %w", cfg.Listen, err)
	}
	fmt.Fprintln(stdout, resp.GetStatus())
	if resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		return errors.New("not serving")
	}
	return nil
}
