package ratelimit

import (
	"log/slog"
	"strings"
	"testing"
	"time"
)

func TestBucket(t *testing.T) {
	now := time.Unix(0, 0)
	b := New(10, 5, func() time.Time { return now })
	got := 0
	for range 20 {
		if b.Take() {
			got++
		}
	}
	if got != 5 {
		t.Fatalf("a full bucket gave %d tokens, want its burst 5", got)
	}
	now = now.Add(300 * time.Millisecond) // 3 tokens at 10/s
	got = 0
	for range 20 {
		if b.Take() {
			got++
		}
	}
	if got != 3 {
		t.Fatalf("%d tokens after 300ms at 10/s, want 3", got)
	}
	now = now.Add(time.Hour)
	got = 0
	for range 20 {
		if b.Take() {
			got++
		}
	}
	if got != 5 {
		t.Fatalf("%d tokens after an hour, want the burst 5", got)
	}
}

func TestLog(t *testing.T) {
	var buf strings.Builder
	now := time.Unix(0, 0)
	l := NewLog(slog.New(slog.NewTextHandler(&buf, nil)), 10*time.Second, func() time.Time { return now })
	for range 1000 {
		l.Warn("unexpected status", "id", strings.Repeat("x", 64<<10))
	}
	now = now.Add(11 * time.Second)
	l.Warn("unexpected status", "id", "short")
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	if len(lines) != 2 || !strings.Contains(lines[1], "occurrences=1000") || len(lines[0]) > 1000 {
		t.Fatalf("1001 warnings over 11 s logged as %d lines:\n%s", len(lines), buf.String()[:min(buf.Len(), 2000)])
	}
}
