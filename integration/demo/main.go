// Command demo is `make demo`: it starts the whole stack locally — Valkey,
// coord-extproc, three demo pods and a gateway (a real Envoy from
// envoy/envoy.yaml when an envoy binary is on PATH, otherwise the
// built-in stand-in) — and walks through the story with live traffic:
// create tenants, read and write, a transaction, kill a pod and watch its
// tenants move, fan-out under load. It stops everything on Ctrl-C or at
// the end; --keep leaves the stack up for curl.
package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"golang.org/x/sys/unix"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdin, os.Stdout)
	stop()
	if err != nil && !errors.Is(err, flag.ErrHelp) && !errors.Is(err, context.Canceled) {
		fmt.Fprintln(os.Stderr, "demo:", err)
		os.Exit(1)
	}
}

type options struct {
	bins, envoy, routes, envoyConfig string
	keep, interactive                bool
}

func run(ctx context.Context, args []string, stdin *os.File, out io.Writer) error {
	var o options
	fs := flag.NewFlagSet("demo", flag.ContinueOnError)
	fs.SetOutput(out)
	fs.StringVar(&o.bins, "bin", "bin", "folder with coord-extproc, gateway and demopod")
	fs.StringVar(&o.envoy, "envoy", "", "envoy binary (default: `envoy` on PATH, else the built-in stand-in)")
	fs.StringVar(&o.routes, "routes", "envoy/demo-routes.yaml", "route table")
	fs.StringVar(&o.envoyConfig, "envoy-config", "envoy/envoy.yaml", "Envoy bootstrap")
	fs.BoolVar(&o.keep, "keep", false, "leave the stack up after the story (Ctrl-C stops it)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	// A terminal, not just a character device: /dev/null is one too.
	if _, err := unix.IoctlGetTermios(int(stdin.Fd()), unix.TCGETS); err == nil {
		o.interactive = true
	}
	s, err := up(ctx, o, out)
	if err != nil {
		if s != nil {
			s.down(true) // the logs say why
		}
		return err
	}
	keepLogs := false
	defer func() { s.down(keepLogs) }()
	d := &story{s: s, out: out, in: bufio.NewReader(stdin), interactive: o.interactive}
	if err := d.tell(ctx); err != nil {
		keepLogs = true
		return err
	}
	if o.keep {
		s.printCurl()
		fmt.Fprintln(out, "\nThe stack stays up; press Ctrl-C to stop it.")
		<-ctx.Done()
	}
	fmt.Fprintln(out, "\nStopping everything.")
	return nil
}
