package detector

import "github.com/prometheus/client_golang/prometheus"

// RegisterMetrics exports s: every counter exists from the start, so
// rate() and alerts see it before the first failure.
func RegisterMetrics(reg prometheus.Registerer, s *Stats) {
	for name, c := range map[string]struct {
		help string
		load func() uint64
	}{
		"coord_extproc_failure_reports_total":      {"Failed upstream connections reported by Envoy's access log (SPEC §8.1).", s.Reports.Load},
		"coord_extproc_failure_ignored_total":      {"Reports for addresses no live member has, or not IP:port.", s.Ignored.Load},
		"coord_extproc_failure_dropped_total":      {"Reports not investigated: queue full or probes over their rate.", s.Dropped.Load},
		"coord_extproc_failure_probes_total":       {"Connects made to confirm a report or re-check a down mark.", s.Probes.Load},
		"coord_extproc_failure_confirmed_total":    {"Members marked down after this replica failed to connect to them.", s.Confirmed.Load},
		"coord_extproc_failure_cleared_total":      {"Suspicions and down marks lifted because a connect succeeded.", s.Cleared.Load},
		"coord_extproc_failure_inconclusive_total": {"Probes whose dial failed for a local reason (file descriptors, ports).", s.Inconclusive.Load},
		"coord_extproc_failure_errors_total":       {"Registry failures while checking, marking or clearing.", s.Errors.Load},
	} {
		reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{Name: name, Help: c.help},
			func() float64 { return float64(c.load()) }))
	}
	reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "coord_extproc_members_marked_down",
		Help: "Members this replica last saw marked down (their address refused connections); they are routed around until their address answers again or their record expires.",
	}, func() float64 { return float64(s.MarkedDown.Load()) }))
}
