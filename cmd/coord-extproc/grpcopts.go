package main

import (
	"math"
	"os"
	"runtime"
	"runtime/debug"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/keepalive"

	"github.com/coord-extproc/coord-extproc/extproc"
	"github.com/coord-extproc/coord-extproc/internal/streamguard"
)

// Defaults of the transport knobs, chosen by measurement (bench/results,
// issue #13's note): each cut server CPU per decision against grpc-go's
// defaults with an Envoy-shaped client.
const (
	defaultGRPCWindow = 1 << 20 // static: no BDP pings, no per-request WINDOW_UPDATE
	// GC targets of --gc-percent 0 (automatic). 400 cut the GC's share of
	// a decision from ~17 % to ~7 %. Under a memory limit, 2000: a GC mark
	// stalls the decisions in flight for a few milliseconds, which is the
	// p99 at moderate load (p99 at 20 000 req/s 0.73× that of 400, CPU
	// 0.98×), and the limit, not the percentage, then bounds the heap.
	gcPercentUnbounded = 400
	gcPercentBounded   = 2000
	// Streams arrive in bursts (one read holds many HEADERS frames); one
	// that finds no idle worker starts a goroutine whose stack then grows
	// (~10 % of CPU at saturation with 4 per CPU). Idle workers cost a
	// small stack each.
	workersPerCPU   = 64
	transportBuffer = 16 << 10
	// Envoy caps its streams on one connection at the peer's
	// SETTINGS_MAX_CONCURRENT_STREAMS and opens another connection past
	// it (conn_pool_base.cc, MultiplexedActiveClientBase::onSettings);
	// its streams end at their answer, so a thousand is far above its use.
	defaultStreamsPerConn = 1000
)

// grpcOptions are the server's transport settings. Every stream ends at
// its final answer (SPEC §5.1), so streams are short; what costs is the
// per-stream transport work, which these settings trim.
func grpcOptions(cfg Config, codec extproc.Codec, guard *streamguard.Guard) []grpc.ServerOption {
	workers := cfg.StreamWorkers
	if workers == 0 {
		workers = workersPerCPU * runtime.GOMAXPROCS(0)
	}
	opts := []grpc.ServerOption{
		// Request headers decoded with few allocations, shared answers
		// encoded once (extproc.Codec).
		grpc.ForceServerCodecV2(codec),
		grpc.MaxConcurrentStreams(uint32(cfg.StreamsPerConn)),
		grpc.StreamInterceptor(guard.Interceptor()),
		grpc.NumStreamWorkers(uint32(workers)),
		grpc.SharedWriteBuffer(true),
		grpc.ReadBufferSize(transportBuffer),
		grpc.WriteBufferSize(transportBuffer),
		grpc.KeepaliveParams(keepalive.ServerParameters{
			MaxConnectionAge:      cfg.MaxConnectionAge,
			MaxConnectionAgeGrace: cfg.ShutdownGrace,
			Time:                  30 * time.Second,
			Timeout:               10 * time.Second,
		}),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 5 * time.Second, PermitWithoutStream: true}),
	}
	if cfg.GRPCWindow > 0 {
		// Setting either window turns grpc-go's BDP estimator off.
		opts = append(opts, grpc.InitialWindowSize(int32(cfg.GRPCWindow)), grpc.InitialConnWindowSize(int32(4*cfg.GRPCWindow)))
	}
	return opts
}

// applyGC sets the GC target unless the operator set GOGC.
func applyGC(cfg Config) {
	_, gogc := os.LookupEnv("GOGC")
	if pct := gcPercent(cfg.GCPercent, gogc, debug.SetMemoryLimit(-1)); pct > 0 {
		debug.SetGCPercent(pct)
	}
}

// gcPercent is the GC target to set (0: leave Go's) for --gc-percent
// flag, whether GOGC is set and the memory limit in effect.
func gcPercent(flag int, gogc bool, memLimit int64) int {
	switch {
	case gogc || flag == -1:
		return 0
	case flag > 0:
		return flag
	case memLimit < math.MaxInt64:
		return gcPercentBounded
	}
	return gcPercentUnbounded
}
