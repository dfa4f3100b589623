package loadgen

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/credentials/insecure"
)

// Mode is the protocol spoken to the target.
type Mode string

// Modes.
const (
	ExtProc  Mode = "ext_proc"
	ExtAuthz Mode = "ext_authz"
	HTTP     Mode = "http"
)

// Request is one HTTP request as Envoy would describe it.
type Request struct {
	Method, Path string
	Headers      [][2]string // lower-case names, without pseudo-headers
}

// Config describes one run.
type Config struct {
	Mode Mode
	// Target is host:port for ext_proc/ext_authz, a base URL for HTTP.
	Target string
	// Conns is the number of shared HTTP/2 connections (Envoy keeps a
	// few per worker); default 4.
	Conns int
	// Concurrency is the closed-loop worker count; default 32.
	Concurrency int
	// Rate > 0 switches to open loop: requests are started on a fixed
	// schedule and latency is measured from the scheduled time, so a
	// stalled server cannot hide its queueing (no coordinated omission).
	Rate        float64
	MaxInFlight int // open loop: requests beyond this are counted as errors; default 10000
	Duration    time.Duration
	// MaxRequests stops the run after this many requests (0: no limit).
	MaxRequests uint64
	// Next returns request i.
	Next func(i uint64) Request
	// EndpointHeader is the header a routed answer must set.
	EndpointHeader string
	// Hold keeps each ext_proc stream open this long after its answer,
	// as Envoy does while the upstream works (0: close at once).
	Hold time.Duration
}

// Result is what a run measured.
type Result struct {
	// Sent counts every request started, including those cut off by the
	// end of the run (the server did their work): per-request costs are
	// divided by it. Requests counts those that completed.
	Sent             uint64
	Requests, Errors uint64
	Elapsed          time.Duration
	Throughput       float64 // successful requests per second
	Latency          *Histogram
	ErrorKinds       map[string]uint64
}

// Run executes cfg until its duration or request budget is spent.
func Run(ctx context.Context, cfg Config) (*Result, error) {
	if cfg.Conns <= 0 {
		cfg.Conns = 4
	}
	if cfg.Concurrency <= 0 {
		cfg.Concurrency = 32
	}
	if cfg.MaxInFlight <= 0 {
		cfg.MaxInFlight = 10000
	}
	if cfg.EndpointHeader == "" {
		cfg.EndpointHeader = "x-gateway-destination-endpoint"
	}
	if cfg.Next == nil || cfg.Duration <= 0 {
		return nil, errors.New("loadgen: Next and Duration are required")
	}
	ex, closeFn, err := newExchanger(cfg)
	if err != nil {
		return nil, err
	}
	defer closeFn()
	r := &run{cfg: cfg, ex: ex, res: &Result{Latency: &Histogram{}, ErrorKinds: map[string]uint64{}}}
	ctx, cancel := context.WithTimeout(ctx, cfg.Duration)
	defer cancel()
	start := time.Now()
	if cfg.Rate > 0 {
		r.openLoop(ctx, start)
	} else {
		r.closedLoop(ctx)
	}
	r.res.Elapsed = time.Since(start)
	r.res.Requests = r.done.Load()
	r.res.Sent = r.next.Load() // take() counts past MaxRequests when refusing
	if r.cfg.MaxRequests > 0 {
		r.res.Sent = min(r.res.Sent, r.cfg.MaxRequests)
	}
	r.res.Throughput = float64(r.res.Requests-r.res.Errors) / r.res.Elapsed.Seconds()
	return r.res, nil
}

type run struct {
	cfg  Config
	ex   exchanger
	next atomic.Uint64
	done atomic.Uint64
	mu   sync.Mutex
	res  *Result
}

func (r *run) take() (uint64, bool) {
	i := r.next.Add(1) - 1
	return i, r.cfg.MaxRequests == 0 || i < r.cfg.MaxRequests
}

func (r *run) one(ctx context.Context, i uint64, since time.Time) {
	kind := r.ex(ctx, i%uint64(r.cfg.Conns), r.cfg.Next(i))
	if kind != "" && r.cutOff(ctx) {
		return // cut off by the end of the run: not a server error
	}
	r.res.Latency.Record(time.Since(since))
	r.done.Add(1)
	if kind != "" {
		r.mu.Lock()
		r.res.Errors++
		r.res.ErrorKinds[kind]++
		r.mu.Unlock()
	}
}

// cutOff reports whether the run is (nearly) over: gRPC fails calls whose
// deadline is about to pass before the context itself reports it.
func (r *run) cutOff(ctx context.Context) bool {
	dl, ok := ctx.Deadline()
	return ctx.Err() != nil || (ok && time.Until(dl) < 50*time.Millisecond)
}

func (r *run) closedLoop(ctx context.Context) {
	var wg sync.WaitGroup
	for w := 0; w < r.cfg.Concurrency; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				i, ok := r.take()
				if !ok {
					return
				}
				r.one(ctx, i, time.Now())
			}
		}()
	}
	wg.Wait()
}

func (r *run) openLoop(ctx context.Context, start time.Time) {
	var wg sync.WaitGroup
	var inflight atomic.Int64
	interval := time.Duration(float64(time.Second) / r.cfg.Rate)
	for n := 0; ctx.Err() == nil; n++ {
		at := start.Add(time.Duration(n) * interval)
		if d := time.Until(at); d > 0 {
			select {
			case <-ctx.Done():
			case <-time.After(d):
			}
			if ctx.Err() != nil {
				break
			}
		}
		i, ok := r.take()
		if !ok {
			break
		}
		if inflight.Load() >= int64(r.cfg.MaxInFlight) {
			r.done.Add(1)
			r.mu.Lock()
			r.res.Errors++
			r.res.ErrorKinds["overload"]++
			r.mu.Unlock()
			continue
		}
		inflight.Add(1)
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer inflight.Add(-1)
			r.one(ctx, i, at)
		}()
	}
	wg.Wait()
}

// exchanger performs request i on connection conn and returns "" on
// success or an error kind.
type exchanger func(ctx context.Context, conn uint64, req Request) string

func newExchanger(cfg Config) (exchanger, func(), error) {
	if cfg.Mode == HTTP {
		client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: cfg.Concurrency + 16, MaxConnsPerHost: 0}, Timeout: 10 * time.Second}
		return func(ctx context.Context, _ uint64, req Request) string {
			hr, err := http.NewRequestWithContext(ctx, req.Method, cfg.Target+req.Path, nil)
			if err != nil {
				return "bad_request"
			}
			for _, h := range req.Headers {
				if h[0] != "" && h[0][0] != ':' {
					hr.Header.Add(h[0], h[1])
				}
			}
			resp, err := client.Do(hr)
			if err != nil {
				return "transport"
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode >= 500 {
				return fmt.Sprintf("http_%d", resp.StatusCode)
			}
			return ""
		}, client.CloseIdleConnections, nil
	}
	if cfg.Mode == ExtProc {
		return newEnvoyExchanger(cfg)
	}
	conns := make([]*grpc.ClientConn, cfg.Conns)
	for i := range conns {
		c, err := grpc.NewClient(cfg.Target, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			return nil, nil, err
		}
		conns[i] = c
	}
	// Connect before the clock starts: connection set-up is not what is
	// being measured (Envoy keeps its connections open).
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for _, c := range conns {
		c.Connect()
		for st := c.GetState(); st != connectivity.Ready; st = c.GetState() {
			if !c.WaitForStateChange(ctx, st) {
				for _, c := range conns {
					c.Close()
				}
				return nil, nil, fmt.Errorf("loadgen: %s not reachable: %v", cfg.Target, st)
			}
		}
	}
	closeAll := func() {
		for _, c := range conns {
			c.Close()
		}
	}
	switch cfg.Mode {
	case ExtAuthz:
		clients := make([]authv3.AuthorizationClient, len(conns))
		for i, c := range conns {
			clients[i] = authv3.NewAuthorizationClient(c)
		}
		return func(ctx context.Context, conn uint64, req Request) string {
			return authzCheck(ctx, clients[conn], req, cfg.EndpointHeader)
		}, closeAll, nil
	}
	closeAll()
	return nil, nil, fmt.Errorf("loadgen: unknown mode %q", cfg.Mode)
}

func authzCheck(ctx context.Context, c authv3.AuthorizationClient, req Request, endpoint string) string {
	hdrs := make(map[string]string, len(req.Headers))
	for _, h := range req.Headers {
		hdrs[h[0]] = h[1]
	}
	resp, err := c.Check(ctx, &authv3.CheckRequest{Attributes: &authv3.AttributeContext{Request: &authv3.AttributeContext_Request{
		Http: &authv3.AttributeContext_HttpRequest{Method: req.Method, Path: req.Path, Headers: hdrs, Scheme: "http", Protocol: "HTTP/1.1"},
	}}})
	if err != nil {
		return "rpc"
	}
	if codes.Code(resp.GetStatus().GetCode()) != codes.OK {
		return fmt.Sprintf("denied_%d", resp.GetDeniedResponse().GetStatus().GetCode())
	}
	for _, h := range resp.GetOkResponse().GetHeaders() {
		if h.GetHeader().GetKey() == endpoint && h.GetHeader().GetValue() != "" {
			return ""
		}
	}
	return "not_routed"
}

// TypicalHeaders are the headers of a realistic request besides the
// routing ones: with :method, :path and :scheme, 8–12 in all.
func TypicalHeaders(extra ...[2]string) [][2]string {
	return append([][2]string{
		{":authority", "gateway.example.com"},
		{"user-agent", "loadgen/1.0"},
		{"accept", "application/json"},
		{"content-type", "application/json"},
		{"x-request-id", "5f2c1a7e-0c1b-4a8e-9d3e-7b0f2a9c4d11"},
		{"x-forwarded-for", "10.1.2.3"},
		{"x-forwarded-proto", "https"},
	}, extra...)
}
