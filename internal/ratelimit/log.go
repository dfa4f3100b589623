package ratelimit

import (
	"fmt"
	"log/slog"
	"sync"
	"time"
)

// Log writes a warning at most once per interval per message, with the
// number of occurrences it stands for, and cuts long string values: what
// clients or pods can trigger at will must not flood the log.
type Log struct {
	out      *slog.Logger
	interval time.Duration
	now      func() time.Time
	mu       sync.Mutex
	last     map[string]time.Time
	count    map[string]int
}

// maxMessages bounds the messages tracked (they are constants in code;
// the bound only guards against a caller building them from input).
const maxMessages = 256

// maxValue is the longest string value logged.
const maxValue = 200

// NewLog returns a Log writing to out; now is time.Now when nil.
func NewLog(out *slog.Logger, interval time.Duration, now func() time.Time) *Log {
	if now == nil {
		now = time.Now
	}
	return &Log{out: out, interval: interval, now: now, last: map[string]time.Time{}, count: map[string]int{}}
}

// Warn logs msg unless it was logged less than an interval ago.
func (l *Log) Warn(msg string, args ...any) {
	l.mu.Lock()
	if len(l.last) >= maxMessages {
		clear(l.last)
		clear(l.count)
	}
	l.count[msg]++
	t := l.now()
	if last, ok := l.last[msg]; ok && t.Sub(last) < l.interval {
		l.mu.Unlock()
		return
	}
	n := l.count[msg]
	l.last[msg], l.count[msg] = t, 0
	l.mu.Unlock()
	for i, a := range args {
		if s, ok := a.(string); ok && len(s) > maxValue {
			args[i] = fmt.Sprintf("%s…(%d bytes)", s[:maxValue], len(s))
		}
	}
	l.out.Warn(msg, append(args, "occurrences", n)...)
}
