package extproc

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/coord-extproc/coord-extproc/registry"
	"github.com/coord-extproc/coord-extproc/route"
)

// Metrics are the Prometheus series both servers record.
type Metrics struct {
	decisions      *prometheus.CounterVec
	latency        *prometheus.HistogramVec
	authzLifecycle *prometheus.CounterVec
	panics         prometheus.Counter
	streams        prometheus.Gauge
}

// API label values.
const (
	apiExtProc = "ext_proc"
	apiAuthz   = "ext_authz"
)

// NewMetrics registers the series on reg. stats, when not nil, are the
// registry's cumulative counters, exported as they are read.
func NewMetrics(reg prometheus.Registerer, stats *registry.Stats) *Metrics {
	m := &Metrics{
		decisions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "coord_extproc_decisions_total",
			Help: "Routing decisions by API, route action and result (SPEC §7 result names).",
		}, []string{"api", "action", "result"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "coord_extproc_decision_duration_seconds",
			Help:    "Time from receiving request headers to sending the answer.",
			Buckets: []float64{.00005, .0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25},
		}, []string{"api"}),
		authzLifecycle: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "coord_extproc_authz_lifecycle_unhandled_total",
			Help: "create/delete requests seen through ext_authz, which cannot see responses: routed without binding or deleting.",
		}, []string{"action"}),
		panics: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "coord_extproc_recovered_panics_total",
			Help: "Panics recovered on the request path; each one is a bug.",
		}),
		streams: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "coord_extproc_streams_in_flight",
			Help: "ext_proc streams currently open.",
		}),
	}
	reg.MustRegister(m.decisions, m.latency, m.authzLifecycle, m.panics, m.streams)
	// Zero series exist from the start, so rate() and alerts see them.
	for _, action := range []route.Action{route.ActionCreate, route.ActionDelete} {
		m.authzLifecycle.WithLabelValues(string(action))
	}
	if stats != nil {
		for name, c := range map[string]func() uint64{
			"coord_extproc_cache_hits_total":        stats.CacheHits.Load,
			"coord_extproc_cache_misses_total":      stats.CacheMisses.Load,
			"coord_extproc_valkey_errors_total":     stats.ValkeyErrors.Load,
			"coord_extproc_stale_answers_total":     stats.StaleAnswers.Load,
			"coord_extproc_malformed_records_total": stats.MalformedRecords.Load,
			"coord_extproc_claims_limited_total":    stats.ClaimsLimited.Load,
			"coord_extproc_members_pruned_total":    stats.MembersPruned.Load,
			"coord_extproc_claims_reclaimed_total":  stats.ClaimsReclaimed.Load,
			"coord_extproc_invalidations_total":     stats.Invalidations.Load,
			"coord_extproc_member_refreshes_total":  stats.MemberRefreshes.Load,
			"coord_extproc_member_changes_total":    stats.MemberChanges.Load,
		} {
			reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{Name: name, Help: counterHelp[name]},
				func() float64 { return float64(c()) }))
		}
		reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "coord_extproc_recovery_held_members",
			Help: "Members the recovery hold held at this replica's last look (0 outside a recovery): negative answers for them wait.",
		}, func() float64 { return float64(stats.HeldMembers.Load()) }))
		reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "coord_extproc_members_draining",
			Help: "Live members draining (leaving: they keep what they hold and take nothing new) at this replica's last look.",
		}, func() float64 { return float64(stats.DrainingMembers.Load()) }))
	}
	return m
}

var counterHelp = map[string]string{
	"coord_extproc_cache_hits_total":        "Resolutions answered from memory with no Valkey round trip.",
	"coord_extproc_cache_misses_total":      "Resolutions that needed Valkey.",
	"coord_extproc_valkey_errors_total":     "Valkey calls that failed or timed out.",
	"coord_extproc_stale_answers_total":     "Answers served from last known good data while Valkey failed.",
	"coord_extproc_malformed_records_total": "Registry keys holding the wrong type of value (written by hand?).",
	"coord_extproc_claims_limited_total":    "Claims on miss refused by --claim-rate (answered 503 with Retry-After).",
	"coord_extproc_members_pruned_total":    "Ids removed from the members set because their member record was gone (dead pods, junk).",
	"coord_extproc_claims_reclaimed_total":  "Destinations claimed on miss and deleted unused: members all dead, untouched for --reclaim-after.",
	"coord_extproc_invalidations_total":     "Registry keys Valkey said were written (heartbeats of members in use, binding changes, probes).",
	"coord_extproc_member_refreshes_total":  "Member records read again after a write, off the request path (heartbeats of members in use).",
	"coord_extproc_member_changes_total":    "Re-reads of member records that found a change routing sees (address, liveness, draining); the rest changed only load.",
}

func (m *Metrics) decision(api, action, result string) {
	m.decisions.WithLabelValues(api, action, result).Inc()
}

func (m *Metrics) observe(api string, start time.Time) {
	m.latency.WithLabelValues(api).Observe(time.Since(start).Seconds())
}
