package main

import (
	"context"
	"fmt"
	"io"
	"maps"
	"slices"
	"text/tabwriter"
	"time"

	"github.com/coord-extproc/coord-extproc/registry"
)

// inspect runs the operator subcommands: straight reads of the registry,
// no caches involved.
func inspect(ctx context.Context, cmd string, cfg *Config, args []string, env lookupEnv, stdout, stderr io.Writer) error {
	synopsis := map[string]string{"members": "members [flags]", "destination": "destination <id> [flags]", "lock": "lock <id> [flags]"}[cmd]
	want := 1
	if cmd == "members" {
		want = 0
	}
	pos, err := parse(cmd, synopsis, cfg.registryFlags(), args, env, stderr, want)
	if err != nil {
		return err
	}
	if len(pos) != want {
		return fmt.Errorf("%w: coord-extproc %s needs an id", errUsage, synopsis)
	}
	var id string
	if want == 1 {
		id = pos[0]
	}
	if _, err := cfg.logLevel(); err != nil {
		return err
	}
	vopt, stopFiles, err := cfg.valkeyConn(cfg.logger(stderr))
	defer stopFiles()
	if err != nil {
		return err
	}
	// An operator waits for an answer: the request path's 50 ms per call
	// would fail these reads on a loaded Valkey (as rebalance does).
	reg, err := registry.New(ctx, registry.Options{Client: vopt, Prefix: cfg.KeyPrefix, Timeout: max(cfg.ValkeyTimeout, time.Second), Logger: cfg.logger(stderr)})
	if err != nil {
		return err
	}
	defer reg.Close()
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	w := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	defer w.Flush()
	switch cmd {
	case "members":
		ms, err := reg.ListMembers(ctx)
		if err != nil {
			return err
		}
		printMembers(w, ms)
	case "destination":
		ms, err := reg.DescribeDestination(ctx, id)
		if err != nil {
			return err
		}
		fmt.Fprintf(w, "destination %s: %d member(s)\n", printable(id), len(ms))
		printMembers(w, ms)
	case "lock":
		l, err := reg.DescribeLock(ctx, id)
		if err != nil {
			return err
		}
		fmt.Fprintf(w, "lock %s\tTTL %s\n", printable(id), ttl(l.TTL))
		for _, k := range slices.Sorted(maps.Keys(l.Fields)) {
			fmt.Fprintf(w, "  %s\t%s\n", printable(k), printable(l.Fields[k]))
		}
		if l.Owner.ID == "" {
			fmt.Fprintln(w, "owner: none (the record has no podId; requests for it answer 410)")
			return nil
		}
		fmt.Fprintln(w, "owner:")
		printMembers(w, []registry.MemberInfo{l.Owner})
	}
	return nil
}

func printMembers(w io.Writer, ms []registry.MemberInfo) {
	fmt.Fprintln(w, "ID\tADDRESS\tLIVE\tLOAD\tTTL")
	for _, m := range ms {
		fmt.Fprintf(w, "%s\t%s\t%v\t%d\t%s\n", printable(m.ID), printable(m.Address), m.Live, m.Load, ttl(m.TTL))
	}
}

func ttl(d time.Duration) string {
	if d < 0 {
		return "-"
	}
	return d.Round(time.Millisecond).String()
}
