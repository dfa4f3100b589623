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
	err := Main(ctx, os.Args[1:], os.Getenv, os.Stdout, os.Stderr)
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
  coord-extproc health [--listen A]  exit 0 if the server at A answers gRPC health SERVING (for probes)
  coord-extproc version              print the version

Run 'coord-extproc <command> --help' for a command's flags.
`

// Main runs one command line; ctx ends the server gracefully.
func Main(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	cmd := "serve"
	if len(args) > 0 && len(args[0]) > 0 && args[0][0] != '-' {
		cmd, args = args[0], args[1:]
	}
	cfg := defaultConfig()
	switch cmd {
	case "serve":
		if _, err := parse("serve", "serve [flags]", cfg.serveFlags(), args, getenv, stderr); err != nil {
			return err
		}
		if err := cfg.Validate(); err != nil {
			return fmt.Errorf("invalid configuration:\n%w", err)
		}
		return serve(ctx, cfg, stderr)
	case "members", "destination", "lock":
		return inspect(ctx, cmd, &cfg, args, getenv, stdout, stderr)
	case "health":
		return healthCheck(ctx, &cfg, args, getenv, stdout, stderr)
	case "version":
		fmt.Fprintln(stdout, "coord-extproc", version)
		return nil
	case "help":
		fmt.Fprint(stdout, topUsage)
		return nil
	}
	fmt.Fprint(stderr, topUsage)
	return fmt.Errorf("%w: unknown command %q", errUsage, cmd)
}
