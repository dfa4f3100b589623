package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/keepalive"

	"github.com/coord-extproc/coord-extproc/extproc"
	"github.com/coord-extproc/coord-extproc/registry"
	"github.com/coord-extproc/coord-extproc/route"
	"github.com/coord-extproc/coord-extproc/strategy"
)

// serve wires the registry, the route table and both gRPC services, runs
// until ctx ends, then drains: health NOT_SERVING first, then no new
// streams, in-flight ones finish (cut after ShutdownGrace), Valkey closed.
func serve(ctx context.Context, cfg Config, stderr io.Writer) error {
	log := cfg.logger(stderr)
	table := route.Default()
	if cfg.Routes != "" {
		var err error
		if table, err = route.Load(cfg.Routes); err != nil {
			return err
		}
	}
	strat, err := strategy.New(cfg.Strategy)
	if err != nil {
		return err
	}
	vopt, err := cfg.valkeyOption()
	if err != nil {
		return err
	}
	reg, err := connect(ctx, registry.Options{
		Client: vopt, Prefix: cfg.KeyPrefix, Strategy: strat,
		CacheTTL: cfg.CacheTTL, CacheSize: cfg.CacheSize, Timeout: cfg.ValkeyTimeout,
		StaleMax: cfg.StaleMax, HoldMax: cfg.RecoveryHoldMax, Logger: log,
	}, log)
	if errors.Is(err, context.Canceled) {
		log.Info("stopped before valkey was reachable")
		return nil
	}
	if err != nil {
		return err
	}
	defer reg.Close()

	promReg := prometheus.NewRegistry()
	promReg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	metrics := extproc.NewMetrics(promReg, reg.Stats())
	srv, err := extproc.NewServer(extproc.Options{
		Table: table, Registry: reg, Metrics: metrics, Logger: log,
		EndpointHeader: cfg.EndpointHeader, BodyLimit: cfg.BodyLimit,
	})
	if err != nil {
		return err
	}

	lis, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return fmt.Errorf("listen %s: %w", cfg.Listen, err)
	}
	gs := grpc.NewServer(
		grpc.MaxConcurrentStreams(100_000),
		grpc.KeepaliveParams(keepalive.ServerParameters{
			MaxConnectionAge:      cfg.MaxConnectionAge,
			MaxConnectionAgeGrace: cfg.ShutdownGrace,
			Time:                  30 * time.Second,
			Timeout:               10 * time.Second,
		}),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 5 * time.Second, PermitWithoutStream: true}),
	)
	hs := health.NewServer()
	hs.SetServingStatus("", healthpb.HealthCheckResponse_NOT_SERVING)
	extprocv3.RegisterExternalProcessorServer(gs, srv)
	authv3.RegisterAuthorizationServer(gs, extproc.NewAuthz(srv))
	healthpb.RegisterHealthServer(gs, hs)

	var metricsSrv *http.Server
	if cfg.MetricsListen != "" {
		mlis, err := net.Listen("tcp", cfg.MetricsListen)
		if err != nil {
			lis.Close()
			return fmt.Errorf("listen %s: %w", cfg.MetricsListen, err)
		}
		metricsSrv = &http.Server{Handler: opsHandler(promReg, hs), ReadHeaderTimeout: 5 * time.Second}
		go func() {
			if err := metricsSrv.Serve(mlis); err != nil && !errors.Is(err, http.ErrServerClosed) {
				log.Error("metrics server stopped", "err", err)
			}
		}()
	}

	go markServingWhenReady(ctx, reg, hs, log)
	served := make(chan error, 1)
	go func() { served <- gs.Serve(lis) }()
	log.Info("coord-extproc serving", "version", version, "listen", lis.Addr().String(), "metrics", cfg.MetricsListen,
		"valkey", vopt.InitAddress, "prefix", cfg.KeyPrefix, "strategy", cfg.Strategy, "rules", len(table.Rules))

	select {
	case err := <-served:
		return fmt.Errorf("grpc server: %w", err)
	case <-ctx.Done():
	}
	log.Info("draining: health NOT_SERVING, finishing in-flight streams", "grace", cfg.ShutdownGrace)
	hs.Shutdown() // every service NOT_SERVING, before anything else stops
	stopped := make(chan struct{})
	go func() { gs.GracefulStop(); close(stopped) }()
	select {
	case <-stopped:
	case <-time.After(cfg.ShutdownGrace):
		log.Warn("shutdown grace over: cutting remaining streams")
		gs.Stop()
	}
	if metricsSrv != nil {
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Second)
		defer cancel()
		_ = metricsSrv.Shutdown(sctx)
	}
	log.Info("stopped")
	return nil
}

// connect retries until Valkey accepts a connection: at start-up Valkey
// may simply not be up yet, which is no reason to crash-loop.
func connect(ctx context.Context, opt registry.Options, log *slog.Logger) (*registry.Registry, error) {
	wait := 100 * time.Millisecond
	for {
		reg, err := registry.New(ctx, opt)
		if err == nil {
			return reg, nil
		}
		log.Warn("cannot reach valkey yet; retrying", "err", err, "in", wait)
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("gave up connecting to valkey (%w): %w", ctx.Err(), err)
		case <-time.After(wait):
		}
		wait = min(2*wait, 5*time.Second)
	}
}

// markServingWhenReady flips gRPC health to SERVING once Valkey answers.
func markServingWhenReady(ctx context.Context, reg *registry.Registry, hs *health.Server, log *slog.Logger) {
	wait := 50 * time.Millisecond
	for {
		if err := reg.Ping(ctx); err == nil {
			if ctx.Err() == nil {
				hs.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
				log.Info("valkey answered: health SERVING")
			}
			return
		} else if wait >= time.Second {
			log.Warn("valkey not answering yet; health stays NOT_SERVING", "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
		wait = min(2*wait, 5*time.Second)
	}
}

func opsHandler(g prometheus.Gatherer, hs *health.Server) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(g, promhttp.HandlerOpts{}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) {
		resp, err := hs.Check(r.Context(), &healthpb.HealthCheckRequest{})
		if err != nil || resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
			http.Error(w, "NOT_SERVING", http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "SERVING")
	})
	return mux
}
