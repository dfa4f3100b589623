// Command demopod is a stateful pod for demos and end-to-end tests: it
// keeps per-tenant key-value data in memory, registers itself in the
// registry with registry.Member (heartbeat, deregistration on SIGTERM),
// holds transactions pinned by lock records, and fans a destination out
// to the least-loaded other pod when it stays over a concurrency cap.
// Every response names the member that served it.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/valkey-io/valkey-go"

	"github.com/coord-extproc/coord-extproc/registry"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stderr)
	stop()
	if err != nil && !errors.Is(err, flag.ErrHelp) {
		fmt.Fprintln(os.Stderr, "demopod:", err)
		os.Exit(1)
	}
}

type options struct {
	listen, id, valkeyURL, prefix, advertise string
	ttl, heartbeat, lease, fanoutHold        time.Duration
	fanoutCap                                int
	drain                                    time.Duration
}

func run(ctx context.Context, args []string, stderr io.Writer) error {
	var o options
	fs := flag.NewFlagSet("demopod", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&o.listen, "listen", "127.0.0.1:0", "HTTP address")
	fs.StringVar(&o.id, "id", "", "member id (default: random)")
	fs.StringVar(&o.valkeyURL, "valkey", "redis://127.0.0.1:6379", "Valkey URL")
	fs.StringVar(&o.prefix, "key-prefix", registry.DefaultPrefix, "registry key prefix")
	fs.StringVar(&o.advertise, "advertise", "", "address to register (default: http://<listen address>; \"auto\": this host's first non-loopback IPv4 with the listen port, for containers)")
	check := fs.String("check", "", "health-check mode: GET this URL, exit 0 on 200 (for container health checks)")
	fs.DurationVar(&o.ttl, "ttl", registry.DefaultMemberTTL, "member record TTL")
	fs.DurationVar(&o.heartbeat, "heartbeat", registry.DefaultHeartbeatInterval, "heartbeat interval")
	fs.DurationVar(&o.lease, "lock-lease", 30*time.Second, "transaction lock lease, refreshed by each call")
	fs.IntVar(&o.fanoutCap, "fanout-cap", 0, "in-flight requests per destination above which it fans out (0: never)")
	fs.DurationVar(&o.fanoutHold, "fanout-hold", 300*time.Millisecond, "how long a destination must stay above the cap")
	fs.DurationVar(&o.drain, "drain", 300*time.Millisecond, "on SIGTERM, keep serving this long after deregistering, while gateways stop routing here")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *check != "" {
		return healthCheck(*check)
	}
	log := slog.New(slog.NewTextHandler(stderr, nil))
	vopt, err := valkey.ParseURL(o.valkeyURL)
	if err != nil {
		return fmt.Errorf("--valkey: %w", err)
	}
	vopt.DisableCache = true
	client, err := valkey.NewClient(vopt)
	if err != nil {
		return fmt.Errorf("connect to valkey: %w", err)
	}
	defer client.Close()

	lis, err := net.Listen("tcp", o.listen)
	if err != nil {
		return err
	}
	switch o.advertise {
	case "":
		o.advertise = "http://" + lis.Addr().String()
	case "auto":
		if o.advertise, err = autoAdvertise(lis.Addr()); err != nil {
			return err
		}
	}
	p := newPod(log, o)
	member, err := registry.NewMember(registry.MemberOptions{
		Client: client, Prefix: o.prefix, ID: o.id, Address: o.advertise,
		TTL: o.ttl, HeartbeatInterval: o.heartbeat, Load: p.load, Logger: log,
		// On SIGTERM the pod drains and hands every tenant to a peer
		// before it deregisters (SPEC §8.2); rebalance requests too.
		Handoff: p.handoff, OnHandoff: p.handedOff, HandoffPoll: 200 * time.Millisecond,
	})
	if err != nil {
		return err
	}
	p.member = member
	srv := &http.Server{Handler: p.routes(), ReadHeaderTimeout: 10 * time.Second}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(lis) }()

	mctx, stopMember := context.WithCancel(ctx)
	defer stopMember()
	if err := member.Register(mctx, 0); err != nil {
		return err
	}
	memberDone := make(chan error, 1)
	go func() { memberDone <- member.Run(mctx) }()
	if o.fanoutCap > 0 {
		go p.watchHotDestinations(mctx)
	}
	log.Info("demopod ready", "member", member.ID(), "addr", lis.Addr().String(), "advertise", o.advertise)

	select {
	case err := <-served:
		return err
	case <-ctx.Done():
	}
	// Hand every tenant off and deregister (member.Run does both when its
	// context ends), then keep serving a moment: requests routed here
	// before the switch still arrive, and are forwarded.
	stopMember()
	if err := <-memberDone; err != nil {
		log.Warn("deregistration failed", "err", err)
	}
	time.Sleep(o.drain) // requests already routed here still arrive for a moment
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	log.Info("demopod stopping", "member", member.ID())
	return srv.Shutdown(sctx)
}

// autoAdvertise is http://<first non-loopback IPv4>:<port>: in a container
// that is the address other containers (and Envoy's ORIGINAL_DST cluster)
// reach it on.
func autoAdvertise(listen net.Addr) (string, error) {
	_, port, _ := net.SplitHostPort(listen.String())
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return "", err
	}
	for _, a := range addrs {
		if ipn, ok := a.(*net.IPNet); ok && !ipn.IP.IsLoopback() && ipn.IP.To4() != nil {
			return "http://" + net.JoinHostPort(ipn.IP.String(), port), nil
		}
	}
	return "", errors.New("--advertise auto: no non-loopback IPv4 address on this host")
}

func healthCheck(url string) error {
	c := &http.Client{Timeout: 2 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s: %s", url, resp.Status)
	}
	return nil
}
