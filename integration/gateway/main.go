// Command gateway is a stand-in for Envoy, for machines where no Envoy
// binary can be installed. It configures itself from an Envoy bootstrap
// (envoy/envoy.yaml or envoy/envoy-ext-authz.yaml) and plays Envoy's part
// (envoy.Version, or the 1.34–1.36 lines with --envoy-version 1.34) for
// what coord-extproc relies on: the ext_proc client (one stream per
// request and its lifetime, every body mode, processing modes and
// mode_override, header mutation rules, immediate and spurious responses,
// message_timeout, failure mode), the ext_authz client, and the
// ORIGINAL_DST cluster routing by metadata or header. Each behaviour
// names the Envoy source it mirrors. Settings it does not implement are
// refused at start-up.
package main

import (
	"context"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/resolver"
	"google.golang.org/grpc/resolver/manual"

	"github.com/coord-extproc/coord-extproc/envoy"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stderr)
	stop()
	if err != nil && !errors.Is(err, flag.ErrHelp) {
		fmt.Fprintln(os.Stderr, "gateway:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string, stderr io.Writer) error {
	fs := flag.NewFlagSet("gateway", flag.ContinueOnError)
	fs.SetOutput(stderr)
	cfgPath := fs.String("config", "envoy/envoy.yaml", "Envoy bootstrap to play")
	unpatchedPaths := fs.Bool("unpatched-paths", false, "play an Envoy without the fix for CVE-2026-73551 (before 1.36.10, 1.37.6, 1.38.4, 1.39.1): dot segments with ;parameters are not resolved")
	version := fs.String("envoy-version", envoy.Version, "Envoy release to play: "+envoy.Version+", or 1.34 for the 1.34 behaviour (stream kept to the request's end, as on 1.35–1.36 too; spurious answers drop the processor, where 1.35 and later fail the request closed)")
	listen := fs.String("listen", "", "override the listener address (default: the bootstrap's)")
	coord := fs.String("coord-extproc", "", "override the coord_extproc cluster's endpoints: host:port[,host:port...] (default: the bootstrap's); streams are spread round-robin, as the cluster's lb_policy")
	verbose := fs.Bool("v", false, "log every local reply")
	if err := fs.Parse(args); err != nil {
		return err
	}
	level := slog.LevelInfo
	if *verbose {
		level = slog.LevelDebug
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))
	b, err := envoy.Load(*cfgPath)
	if err != nil {
		return err
	}
	cfg, err := fromBootstrap(b)
	if err != nil {
		return fmt.Errorf("%s: %w", *cfgPath, err)
	}
	switch *version {
	case envoy.Version:
	case "1.34":
		cfg.legacy = true
	default:
		return fmt.Errorf("--envoy-version %q: the stand-in plays %s or 1.34", *version, envoy.Version)
	}
	cfg.paths.keepDotParams = *unpatchedPaths
	if *listen != "" {
		cfg.listen = *listen
	}
	if *coord != "" {
		cfg.grpc.addr = *coord
	}
	ck, err := envoy.NewMutationChecker(cfg.rules)
	if err != nil {
		return fmt.Errorf("mutation_rules: %w", err)
	}
	conn, err := dialCluster(strings.Split(cfg.grpc.addr, ","), cfg.grpc.tls)
	if err != nil {
		return err
	}
	defer conn.Close()
	if cfg.upstreamLog != nil {
		cfg.upstreamLog.start(ctx, conn, log)
	}
	var connectTimeout time.Duration
	for _, c := range cfg.clusters {
		connectTimeout = max(connectTimeout, c.connectTimeout)
	}
	g := &gateway{
		cfg: cfg, log: log, checker: ck,
		proc:  extprocv3.NewExternalProcessorClient(conn),
		authz: authv3.NewAuthorizationClient(conn),
		transport: &http.Transport{
			DialContext:         (&net.Dialer{Timeout: connectTimeout}).DialContext,
			MaxIdleConnsPerHost: 64,
			IdleConnTimeout:     30 * time.Second,
		},
	}
	lis, err := net.Listen("tcp", cfg.listen)
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: g, ReadHeaderTimeout: 10 * time.Second}
	log.Info("gateway listening", "addr", lis.Addr().String(), "api", cfg.api, "coord_extproc", cfg.grpc.addr, "config", *cfgPath)
	done := make(chan error, 1)
	go func() { done <- srv.Serve(lis) }()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return srv.Shutdown(sctx)
}

// dialCluster connects to the coord_extproc cluster's endpoints, spreading
// streams over them round-robin (the shipped cluster's lb_policy); one
// access-log stream goes to one endpoint, as each Envoy worker's does.
func dialCluster(addrs []string, tlsConfig *tls.Config) (*grpc.ClientConn, error) {
	r := manual.NewBuilderWithScheme("standin")
	var st resolver.State
	for _, a := range addrs {
		st.Addresses = append(st.Addresses, resolver.Address{Addr: a})
	}
	r.InitialState(st)
	creds := insecure.NewCredentials()
	if tlsConfig != nil {
		creds = credentials.NewTLS(tlsConfig)
	}
	return grpc.NewClient("standin:///coord_extproc", grpc.WithResolvers(r),
		grpc.WithTransportCredentials(creds),
		grpc.WithDefaultServiceConfig(`{"loadBalancingConfig":[{"round_robin":{}}]}`))
}
