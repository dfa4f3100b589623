package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"maps"
	"slices"
	"text/tabwriter"
	"time"

	"github.com/coord-extproc/coord-extproc/registry"
)

// rebalanceFlags: one round's shape, defaults after Akka's least-shard
// allocation (rebalance past a difference of one, a tenth per round).
type rebalanceFlags struct {
	apply     bool
	by        string
	threshold float64
	maxShare  float64
}

// rebalance prints one round's plan and, with --apply, queues the moves
// with their owners, which hand the destinations off themselves.
func rebalance(ctx context.Context, cfg *Config, args []string, env lookupEnv, stdout, stderr io.Writer) error {
	rf := rebalanceFlags{by: "count", threshold: 1, maxShare: 0.1}
	specs := append(cfg.registryFlags(),
		flagSpec{"apply", "COORD_REBALANCE_APPLY", "queue the planned moves with their owners (default: print the plan, change nothing)",
			func(fs *flag.FlagSet, n, u string) { fs.BoolVar(&rf.apply, n, rf.apply, u) }},
		flagSpec{"by", "COORD_REBALANCE_BY", "weigh members by 'count' (destinations held alone) or 'load' (their load figure)",
			func(fs *flag.FlagSet, n, u string) { fs.StringVar(&rf.by, n, rf.by, u) }},
		flagSpec{"threshold", "COORD_REBALANCE_THRESHOLD", "members differing by no more than this are balanced",
			func(fs *flag.FlagSet, n, u string) { fs.Float64Var(&rf.threshold, n, rf.threshold, u) }},
		flagSpec{"max-share", "COORD_REBALANCE_MAX_SHARE", "most moves of one round, as a share of the movable destinations (at least one)",
			func(fs *flag.FlagSet, n, u string) { fs.Float64Var(&rf.maxShare, n, rf.maxShare, u) }},
	)
	if _, err := parse("rebalance", "rebalance [--apply] [flags]", specs, args, env, stderr, 0); err != nil {
		return err
	}
	if rf.by != "count" && rf.by != "load" {
		return fmt.Errorf("%w: --by %q: count or load", errUsage, rf.by)
	}
	if rf.threshold < 0 || rf.maxShare <= 0 || rf.maxShare > 1 {
		return fmt.Errorf("%w: --threshold must be ≥ 0 and --max-share in (0, 1]", errUsage)
	}
	vopt, stopFiles, err := cfg.valkeyConn(cfg.logger(stderr))
	defer stopFiles()
	if err != nil {
		return err
	}
	reg, err := registry.New(ctx, registry.Options{Client: vopt, Prefix: cfg.KeyPrefix, Timeout: max(cfg.ValkeyTimeout, time.Second), Logger: cfg.logger(stderr)})
	if err != nil {
		return err
	}
	defer reg.Close()
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	hs, err := reg.Holdings(ctx)
	if err != nil {
		return err
	}
	plan := registry.PlanMoves(hs, registry.PlanOptions{ByLoad: rf.by == "load", Threshold: rf.threshold, MaxShare: rf.maxShare})
	w := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintf(w, "MEMBER\tBEFORE (%s)\tAFTER\n", rf.by)
	for _, id := range slices.Sorted(maps.Keys(plan.Before)) {
		fmt.Fprintf(w, "%s\t%g\t%g\n", printable(id), plan.Before[id], plan.After[id])
	}
	w.Flush()
	for _, id := range plan.Skipped {
		fmt.Fprintf(stdout, "left alone (cannot hand off, e.g. a Node pod, or draining): %s\n", printable(id))
	}
	fmt.Fprintf(stdout, "%d move(s) this round:\n", len(plan.Moves))
	for _, m := range plan.Moves {
		fmt.Fprintf(stdout, "  %s: %s -> %s\n", printable(m.Dest), printable(m.From), printable(m.To))
	}
	if !rf.apply {
		fmt.Fprintln(stdout, "dry run: nothing changed (--apply asks the owners to hand these off)")
		return nil
	}
	if err := reg.RequestHandoffs(ctx, plan.Moves); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "queued %d handoff request(s) with their owners\n", len(plan.Moves))
	return nil
}
