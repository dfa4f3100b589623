package ratelimit

import (
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
