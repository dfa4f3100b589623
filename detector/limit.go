package detector

import (
	"log/slog"
	"sync"
	"time"
)

// rateLog writes a warning at most once per interval per message, with the
// number of occurrences it stood for.
type rateLog struct {
	out      *slog.Logger
	interval time.Duration
	now      func() time.Time
	mu       sync.Mutex
	last     map[string]time.Time
	count    map[string]int
}

func newRateLog(log *slog.Logger, interval time.Duration, now func() time.Time) *rateLog {
	return &rateLog{out: log, interval: interval, now: now, last: map[string]time.Time{}, count: map[string]int{}}
}

func (l *rateLog) log(msg string, args ...any) {
	l.mu.Lock()
	l.count[msg]++
	t := l.now()
	if last, ok := l.last[msg]; ok && t.Sub(last) < l.interval {
		l.mu.Unlock()
		return
	}
	n := l.count[msg]
	l.last[msg], l.count[msg] = t, 0
	l.mu.Unlock()
	l.out.Warn(msg, append(args, "occurrences", n)...)
}
