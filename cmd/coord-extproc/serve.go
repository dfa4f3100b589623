package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"time"

	accesslogv3 "github.com/envoyproxy/go-control-plane/envoy/service/accesslog/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/coord-extproc/coord-extproc/detector"
	"github.com/coord-extproc/coord-extproc/extproc"
	"github.com/coord-extproc/coord-extproc/registry"
	"github.com/coord-extproc/coord-extproc/route"
	"github.com/coord-extproc/coord-extproc/strategy"
)

// serve opens both listeners at once (health NOT_SERVING), connects to
// Valkey in the background and turns SERVING after a real registry read,
// runs until ctx ends, then drains: health NOT_SERVING first, then no new
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
	vopt, stopFiles, err := cfg.valkeyConn(log)
	defer stopFiles()
	if err != nil {
		return err
	}
	serverTLS, certs, err := cfg.serverTLS(log)
	if err != nil {
		return err
	}
	if certs != nil {
		defer certs.Close()
	}
	allow, err := cfg.allowUpstream()
	if err != nil {
		return fmt.Errorf("--allow-upstream: %w", err)
	}
	only, err := cfg.upstreamCIDRs()
	if err != nil {
		return fmt.Errorf("--upstream-cidrs: %w", err)
	}
	stats := &registry.Stats{}
	promReg := prometheus.NewRegistry()
	promReg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	metrics := extproc.NewMetrics(promReg, stats)
	reg := &lazyRegistry{}
	dstats := &detector.Stats{}
	detector.RegisterMetrics(promReg, dstats)
	det := detector.New(detector.Options{Registry: reg, ProbeTimeout: cfg.ProbeTimeout, ProbeRate: cfg.ProbeRate, Logger: log, Stats: dstats})
	defer det.Close()
	srv, err := extproc.NewServer(extproc.Options{
		Table: table, Registry: reg, Metrics: metrics, Logger: log,
		EndpointHeader: cfg.EndpointHeader, BodyLimit: cfg.BodyLimit, DecisionTimeout: cfg.DecisionTimeout,
	})
	if err != nil {
		return err
	}

	lis, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return fmt.Errorf("listen %s: %w", cfg.Listen, err)
	}
	var mlis net.Listener
	if cfg.MetricsListen != "" {
		if mlis, err = net.Listen("tcp", cfg.MetricsListen); err != nil {
			lis.Close()
			return fmt.Errorf("listen %s: %w", cfg.MetricsListen, err)
		}
	}
	applyGC(cfg)
	gopts := grpcOptions(cfg, srv.Codec(), newStreamGuard(cfg, promReg, log))
	if serverTLS != nil {
		gopts = append(gopts, grpc.Creds(credentials.NewTLS(serverTLS)))
	}
	gs := grpc.NewServer(gopts...)
	hs := health.NewServer()
	hs.SetServingStatus("", healthpb.HealthCheckResponse_NOT_SERVING)
	extprocv3.RegisterExternalProcessorServer(gs, srv)
	authv3.RegisterAuthorizationServer(gs, extproc.NewAuthz(srv))
	als := detector.NewAccessLogServer(det)
	accesslogv3.RegisterAccessLogServiceServer(gs, als)
	healthpb.RegisterHealthServer(gs, hs)

	var metricsSrv *http.Server
	if mlis != nil {
		metricsSrv = &http.Server{Handler: opsHandler(promReg, hs), ReadHeaderTimeout: 5 * time.Second}
		if cfg.MetricsTLS { // Validate: only with --tls-cert, so certs is set
			mlis = tls.NewListener(mlis, &tls.Config{MinVersion: tls.VersionTLS12, GetCertificate: certs.GetCertificate})
		}
		go func() {
			if err := metricsSrv.Serve(mlis); err != nil && !errors.Is(err, http.ErrServerClosed) {
				log.Error("metrics server stopped", "err", err)
			}
		}()
	}
	served := make(chan error, 1)
	go func() { served <- gs.Serve(lis) }()
	log.Info("coord-extproc listening; health NOT_SERVING until the registry answers", "version", version,
		"listen", lis.Addr().String(), "metrics", addrOf(mlis), "tls", serverTLS != nil, "mtls", cfg.TLSClientCA != "", "valkey_mode", valkeyMode(vopt),
		"valkey_seeds", vopt.InitAddress, "master_set", vopt.Sentinel.MasterSet, "prefix", cfg.KeyPrefix,
		"strategy", cfg.Strategy, "rules", len(table.Rules))

	cctx, stopConnect := context.WithCancel(ctx)
	connected := make(chan error, 1)
	go func() {
		connected <- connect(cctx, registry.Options{
			Client: vopt, Prefix: cfg.KeyPrefix, Strategy: strat,
			CacheTTL: cfg.CacheTTL, CacheSize: cfg.CacheSize, Timeout: cfg.ValkeyTimeout,
			StaleMax: cfg.StaleMax, HoldMax: cfg.RecoveryHoldMax, Logger: log, Stats: stats, AllowUpstream: allow, UpstreamCIDRs: only, MaxSetMembers: cfg.MaxSetMembers, MaxMembers: cfg.MaxMembers, NegativeTTL: offIfZero(cfg.NegativeTTL), ReclaimAfter: offIfZero(cfg.ReclaimAfter), ClaimRate: cfg.ClaimRate,
		}, reg, hs, log)
	}()

	var runErr error
	select {
	case err := <-served:
		runErr = fmt.Errorf("grpc server: %w", err)
	case err := <-connected:
		if err != nil { // a URL that can never work: stop rather than stay NOT_SERVING
			runErr = err
		} else {
			select {
			case err := <-served:
				runErr = fmt.Errorf("grpc server: %w", err)
			case <-ctx.Done():
			}
		}
	case <-ctx.Done():
	}
	stopConnect()
	log.Info("draining: health NOT_SERVING, finishing in-flight streams", "grace", cfg.ShutdownGrace)
	hs.Shutdown() // every service NOT_SERVING, before anything else stops
	als.Close()   // access-log streams never end by themselves
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
	if r := reg.reg.Load(); r != nil {
		r.Close()
	}
	log.Info("stopped")
	return runErr
}

// connect retries until Valkey accepts a connection (at start-up Valkey may
// simply not be up yet, which is no reason to crash-loop), publishes the
// registry, then turns health SERVING once a real registry read succeeds.
// It returns an error only for a deployment that can never work.
func connect(ctx context.Context, opt registry.Options, lazy *lazyRegistry, hs *health.Server, log *slog.Logger) error {
	wait := 100 * time.Millisecond
	var reg *registry.Registry
	for {
		var err error
		if reg, err = registry.New(ctx, opt); err == nil {
			break
		}
		if errors.Is(err, registry.ErrSentinelAddress) {
			log.Error("valkey URL cannot work", "err", err)
			return fmt.Errorf("--valkey: %w", err)
		}
		log.Warn("cannot reach valkey yet; retrying; health stays NOT_SERVING", "err", err, "in", wait)
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(wait):
		}
		wait = min(2*wait, 5*time.Second)
	}
	lazy.reg.Store(reg)
	log.Info("valkey connected", "mode", reg.Mode(), "master_set", opt.Client.Sentinel.MasterSet, "seeds", opt.Client.InitAddress)
	wait = 50 * time.Millisecond
	for warned := false; ; {
		err := reg.Ready(ctx)
		if err == nil {
			if ctx.Err() == nil {
				hs.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
				log.Info("registry answered: health SERVING")
			}
			return nil
		}
		if !warned && wait >= 400*time.Millisecond {
			log.Warn("registry not readable yet; health stays NOT_SERVING", "err", err)
			warned = true
		}
		select {
		case <-ctx.Done():
			return nil
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

// addrOf is a listener's bound address ("" for none): with port 0 the
// log says which port was taken.
func addrOf(l net.Listener) string {
	if l == nil {
		return ""
	}
	return l.Addr().String()
}

// offIfZero maps a flag's 0 (off) to the registry's negative (off; its 0
// is "the default").
func offIfZero(d time.Duration) time.Duration {
	if d == 0 {
		return -1
	}
	return d
}
