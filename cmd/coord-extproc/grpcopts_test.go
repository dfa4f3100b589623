package main

import (
	"math"
	"testing"
)

func TestGCPercent(t *testing.T) {
	for _, tt := range []struct {
		name     string
		flag     int
		gogc     bool
		memLimit int64
		want     int
	}{
		{"automatic under a memory limit", 0, false, 512 << 20, gcPercentBounded},
		{"automatic without one", 0, false, math.MaxInt64, gcPercentUnbounded},
		{"GOGC set: left alone", 0, true, 512 << 20, 0},
		{"GOGC set wins over the flag", 800, true, math.MaxInt64, 0},
		{"the flag", 800, false, 512 << 20, 800},
		{"-1: Go's default", -1, false, 512 << 20, 0},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if got := gcPercent(tt.flag, tt.gogc, tt.memLimit); got != tt.want {
				t.Fatalf("gcPercent = %d, want %d", got, tt.want)
			}
		})
	}
}
