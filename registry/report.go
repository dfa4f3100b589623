package registry

import (
	"context"
	"sync"
	"sync/atomic"
	"time"
)

// reporter turns the failure counters into log lines: a WARN with counts
// when Valkey errors, stale answers or malformed records appear (at most
// one per reportEvery while they go on), and one INFO when Valkey answers
// again after an outage. Nothing is logged per request.
type reporter struct {
	r       *Registry
	lastErr atomic.Pointer[string]
	quit    chan struct{}
	wg      sync.WaitGroup
}

// Reporting cadence: how often counters are read, and the least time
// between two WARNs about one ongoing outage.
const (
	reportTick  = time.Second
	reportEvery = 5 * time.Second
)

func newReporter(r *Registry) *reporter {
	rp := &reporter{r: r, quit: make(chan struct{})}
	rp.wg.Add(1)
	go rp.run()
	return rp
}

// note keeps the latest error for the next report.
func (rp *reporter) note(err error) {
	msg := err.Error()
	rp.lastErr.Store(&msg)
}

func (rp *reporter) stop() {
	close(rp.quit)
	rp.wg.Wait()
}

type counts struct{ errors, stale, malformed uint64 }

func (rp *reporter) read() counts {
	st := rp.r.stats
	return counts{st.ValkeyErrors.Load(), st.StaleAnswers.Load(), st.MalformedRecords.Load()}
}

func (rp *reporter) run() {
	defer rp.wg.Done()
	t := time.NewTicker(reportTick)
	defer t.Stop()
	log := rp.r.log
	var (
		last, reported, start counts
		failing               bool
		since, warned         time.Time
	)
	last = rp.read()
	for {
		select {
		case <-rp.quit:
			return
		case <-t.C:
		}
		cur, prev := rp.read(), last
		troubled := cur != last
		last = cur
		now := time.Now()
		switch {
		case troubled && (!failing || now.Sub(warned) >= reportEvery):
			if !failing {
				failing, since, start, reported = true, now, prev, prev
			}
			msg := ""
			if p := rp.lastErr.Load(); p != nil {
				msg = *p
			}
			log.Warn("valkey trouble", "valkey_errors", cur.errors-reported.errors, "stale_answers", cur.stale-reported.stale,
				"malformed_records", cur.malformed-reported.malformed, "since", now.Sub(since).Round(time.Millisecond), "last_error", msg)
			reported, warned = cur, now
		case !troubled && failing:
			ctx, cancel := context.WithTimeout(context.Background(), rp.r.opt.Timeout)
			err := rp.r.Ping(ctx)
			cancel()
			if err == nil {
				log.Info("valkey healthy again", "outage", now.Sub(since).Round(time.Millisecond),
					"valkey_errors", cur.errors-start.errors, "stale_answers", cur.stale-start.stale, "malformed_records", cur.malformed-start.malformed)
				failing = false
			}
		}
	}
}
