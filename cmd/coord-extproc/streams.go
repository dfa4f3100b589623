package main

import (
	"log/slog"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/coord-extproc/coord-extproc/internal/ratelimit"
	"github.com/coord-extproc/coord-extproc/internal/streamguard"
)

// newStreamGuard bounds the gRPC streams any client can hold (issue #24):
// refusals are counted by reason and logged at most every 10 s.
func newStreamGuard(cfg Config, reg prometheus.Registerer, log *slog.Logger) *streamguard.Guard {
	refused := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "coord_extproc_streams_refused_total",
		Help: "gRPC streams ended by coord-extproc itself: first_message_timeout (nothing sent after opening), too_many_streams (--max-open-streams reached).",
	}, []string{"reason"})
	for _, r := range []string{streamguard.ReasonFirstMessage, streamguard.ReasonTooMany} {
		refused.WithLabelValues(r)
	}
	warn := ratelimit.NewLog(log, 10*time.Second, nil)
	g := streamguard.New(streamguard.Options{
		FirstMessage: cfg.FirstMessage,
		MaxOpen:      cfg.MaxOpenStreams,
		OnRefused: func(reason string) {
			refused.WithLabelValues(reason).Inc()
			warn.Warn("gRPC stream refused", "reason", reason)
		},
	})
	reg.MustRegister(refused, prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "coord_extproc_grpc_streams_open",
		Help: "gRPC streams open now, all services (ext_proc, access log, health).",
	}, func() float64 { return float64(g.Open()) }))
	return g
}
