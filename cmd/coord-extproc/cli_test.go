package main

import (
	"context"
	"errors"
	"flag"
	"strings"
	"testing"
	"time"

	"github.com/coord-extproc/coord-extproc/internal/valkeytest"
)

// SPEC §6: the command line is strict and says what is wrong, once.
func TestCommandLine(t *testing.T) {
	srv := valkeytest.Start(t)
	c := srv.Client(t)
	valkeytest.Do(t, c, "SADD", "coordinator:destination:tenant-2", "pod-a")
	for _, tc := range []struct {
		name      string
		args      []string
		env       map[string]string
		wantErr   error  // nil: success
		errHas    string // in the error
		outHas    string // in stdout+stderr
		maxUsages int    // how many times "Usage:" may appear (0: not at all)
	}{
		{"stray argument before flags", []string{"serve", "extra", "--listen", "127.0.0.1:0"}, nil, errUsage, `unexpected argument "extra"`, "", 0},
		{"stray argument to members", []string{"members", "extra", "--valkey", srv.URL()}, nil, errUsage, `unexpected argument "extra"`, "", 0},
		{"second id to destination", []string{"destination", "tenant-2", "tenant-3", "--valkey", srv.URL()}, nil, errUsage, `unexpected argument "tenant-3"`, "", 0},
		{"id after flags", []string{"destination", "--valkey", srv.URL(), "tenant-2"}, nil, nil, "", "destination tenant-2", 0},
		{"id before flags", []string{"destination", "tenant-2", "--valkey", srv.URL()}, nil, nil, "", "destination tenant-2", 0},
		{"missing id", []string{"destination", "--valkey", srv.URL()}, nil, errUsage, "needs an id", "", 0},
		{"empty env like empty flag: metrics off", []string{"serve", "--listen", "bad"}, map[string]string{"COORD_METRICS_LISTEN": ""}, nil, "--listen", "", 0},
		{"empty env like empty flag: prefix refused", nil, map[string]string{"COORD_KEY_PREFIX": ""}, nil, "--key-prefix", "", 0},
		{"empty flag prefix refused", []string{"--key-prefix", ""}, nil, nil, "--key-prefix", "", 0},
		{"serve --help prints usage once", []string{"serve", "--help"}, nil, flag.ErrHelp, "", "--decision-timeout", 1},
		{"members --help prints usage once", []string{"members", "--help"}, nil, flag.ErrHelp, "", "--valkey", 1},
		{"top-level --help lists commands and serve flags", []string{"--help"}, nil, flag.ErrHelp, "", "coord-extproc destination <id>", 2}, // commands, then serve's flags
		{"--version", []string{"--version"}, nil, nil, "", "coord-extproc ", 0},
		{"version with an argument", []string{"version", "now"}, nil, errUsage, "no arguments", "", 0},
		{"unknown flag: short error, no usage", []string{"--colour"}, nil, errUsage, "flag provided but not defined: -colour", "", 0},
		{"unknown command", []string{"launch"}, nil, errUsage, `unknown command "launch"`, "", 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out := &syncBuffer{}
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			err := Main(ctx, tc.args, env(tc.env), out, out)
			switch {
			case tc.wantErr != nil && !errors.Is(err, tc.wantErr):
				t.Fatalf("err = %v, want %v", err, tc.wantErr)
			case tc.wantErr == nil && tc.errHas == "" && err != nil:
				t.Fatalf("err = %v, want success", err)
			case tc.errHas != "" && (err == nil || !strings.Contains(err.Error(), tc.errHas)):
				t.Fatalf("err = %v, want it to mention %q", err, tc.errHas)
			}
			if !strings.Contains(out.String(), tc.outHas) {
				t.Fatalf("output lacks %q:\n%s", tc.outHas, out.String())
			}
			if n := strings.Count(out.String(), "Usage:"); n != tc.maxUsages {
				t.Fatalf("usage printed %d times, want %d:\n%s", n, tc.maxUsages, out.String())
			}
		})
	}
}

// SPEC §6: registry strings are printed safely: control characters
// escaped, long values cut, a lock without owner said so.
func TestOperatorOutputIsSafe(t *testing.T) {
	srv := valkeytest.Start(t)
	c := srv.Client(t)
	hostile := map[string]string{
		"clear":  "\x1b[2J\x1b[Hhttp://10.0.0.1:80",
		"title":  "\x1b]0;pwned\x07http://10.0.0.2:80",
		"lines":  "http://10.0.0.3:80\r\nfake-pod\t10.9.9.9",
		"huge":   strings.Repeat("x", 100_000),
		"binary": "\xff\xfe\x00http://10.0.0.4:80",
	}
	for id, addr := range hostile {
		valkeytest.Do(t, c, "SADD", "coordinator:members", id)
		valkeytest.Do(t, c, "HSET", "coordinator:member:"+id, "address", addr, "load", "0")
	}
	valkeytest.Do(t, c, "HSET", "coordinator:lock:orphaned", "destinationId", "t1", "note", "\x1b[31mred")
	out := &syncBuffer{}
	if err := Main(context.Background(), []string{"members", "--valkey", srv.URL()}, env(nil), out, out); err != nil {
		t.Fatal(err)
	}
	if err := Main(context.Background(), []string{"lock", "orphaned", "--valkey", srv.URL()}, env(nil), out, out); err != nil {
		t.Fatal(err)
	}
	got := out.String()
	for _, bad := range []string{"\x1b", "\x07", "\r", "\x00", "\xff"} {
		if strings.Contains(got, bad) {
			t.Fatalf("output carries %q:\n%q", bad, got)
		}
	}
	if len(got) > 8000 { // the 100 KB address alone would be 100 KB
		t.Fatalf("%d bytes of output for six records: long values are not cut:\n%s", len(got), got)
	}
	for _, want := range []string{`\x1b[2J`, `\x0d\x0a`, "…(100000 bytes)", "owner: none"} {
		if !strings.Contains(got, want) {
			t.Fatalf("output lacks %q:\n%s", want, got)
		}
	}
	if strings.Count(got, "\n") > 20 {
		t.Fatalf("a CR/LF in a record broke the table:\n%s", got)
	}
}

// JSON logs print durations as text ("15s"), not nanoseconds.
func TestJSONLogDurations(t *testing.T) {
	cfg := defaultConfig()
	out := &syncBuffer{}
	cfg.logger(out).Info("drain", "grace", 15*time.Second)
	if !strings.Contains(out.String(), `"grace":"15s"`) {
		t.Fatalf("log line %s", out.String())
	}
}
