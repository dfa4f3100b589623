// Command coord-extproc is the routing brain for Envoy in front of stateful
// pods: an ext_proc / ext_authz gRPC server answering each request with
// the owning pod's IP:port, resolved in a shared Valkey registry.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
)

// version is set at build time (-ldflags "-X main.version=...").
var version = "dev"

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := Main(ctx, os.Args[1:], os.LookupEnv, os.Stdout, os.Stderr)
	stop()
	switch {
	case err == nil, errors.Is(err, flag.ErrHelp):
	case errors.Is(err, errUsage):
		fmt.Fprintln(os.Stderr, "coord-extproc:", err)
		os.Exit(2)
	default:
		fmt.Fprintln(os.Stderr, "coord-extproc:", err)
		os.Exit(1)
	}
}

var errUsage = errors.New("usage")

const topUsage = `coord-extproc routes each Envoy request to the pod that owns its destination.

Usage:
  coord-extproc [serve] [flags]      run the ext_proc/ext_authz gRPC server (default)
  coord-extproc members [flags]      list registered members: id, address, live, load, TTL left
  coord-extproc destination <id>     show a destination's members and their liveness
  coord-extproc lock <id>            show a lock record and its owner
  coord-extproc rebalance [--apply]  plan moving destinations from the most to the least loaded
                                     members (dry run); --apply asks the owners to hand them off
  coord-extproc health [--listen A]  exit 0 if the server at A answers gRPC health SERVING (for probes)
  coord-extproc version              print the version

Run 'coord-extproc <command> --help' for a command's flags.
`

// Main runs one command line; ctx ends the server gracefully.
func Main(ctx context.Context, args []string, env lookupEnv, stdout, stderr io.Writer) error {
	cmd := "serve"
	if len(args) > 0 {
		switch a := args[0]; {
		case a == "-h" || a == "-help" || a == "--help" || a == "help":
			fmt.Fprint(stdout, topUsage+"\n")
			cfg := defaultConfig()
			_, _ = parse("serve", "[serve] [flags]", cfg.serveFlags(), []string{"--help"}, env, stdout, 0)
			return flag.ErrHelp
		case a == "-version" || a == "--version":
			args = append([]string{"version"}, args[1:]...)
		}
		if a := args[0]; a != "" && a[0] != '-' {
			cmd, args = a, args[1:]
		}
	}
	cfg := defaultConfig()
	switch cmd {
	case "serve":
		if _, err := parse("serve", "serve [flags]", cfg.serveFlags(), args, env, stderr, 0); err != nil {
			return err
		}
		if err := cfg.Validate(); err != nil {
			return fmt.Errorf("invalid configuration:\n%w", err)
		}
		return serve(ctx, cfg, stderr)
	case "members", "destination", "lock":
		return inspect(ctx, cmd, &cfg, args, env, stdout, stderr)
	case "health":
		return healthCheck(ctx, &cfg, args, env, stdout, stderr)
	case "rebalance":
		return rebalance(ctx, &cfg, args, env, stdout, stderr)
	case "version":
		if len(args) > 0 {
			return fmt.Errorf("%w: version takes no arguments, got %q", errUsage, args[0])
		}
		fmt.Fprintln(stdout, "coord-extproc", version)
		return nil
	}
	return fmt.Errorf("%w: unknown command %q (see coord-extproc --help)", errUsage, cmd)
}
