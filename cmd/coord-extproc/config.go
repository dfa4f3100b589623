package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/valkey-io/valkey-go"

	"github.com/coord-extproc/coord-extproc/detector"
	"github.com/coord-extproc/coord-extproc/extproc"
	"github.com/coord-extproc/coord-extproc/internal/streamguard"
	"github.com/coord-extproc/coord-extproc/registry"
	"github.com/coord-extproc/coord-extproc/strategy"
	"github.com/coord-extproc/coord-extproc/valkeyconn"
)

// defaultClaimRate: new sessions of a busy gateway, with room; a flood of
// random ids is cut there.
const defaultClaimRate = 1000

// Config is every setting of coord-extproc: defaults, then environment,
// then flags, then Validate.
type Config struct {
	Listen           string
	Valkey           string
	KeyPrefix        string
	Strategy         string
	Routes           string
	EndpointHeader   string
	CacheTTL         time.Duration
	CacheSize        int
	ValkeyTimeout    time.Duration
	StaleMax         time.Duration
	DecisionTimeout  time.Duration
	AllowUpstream    string
	UpstreamCIDRs    string
	MaxSetMembers    int
	MaxMembers       int
	NegativeTTL      time.Duration
	ReclaimAfter     time.Duration
	RecoveryHoldMax  time.Duration
	MetricsListen    string
	LogLevel         string
	LogFormat        string
	BodyLimit        int
	ShutdownGrace    time.Duration
	MaxConnectionAge time.Duration
	StreamWorkers    int
	GRPCWindow       int
	GCPercent        int
	ProbeTimeout     time.Duration
	ProbeRate        int
	ClaimRate        float64
	TLSCert          string
	TLSKey           string
	TLSClientCA      string
	MetricsTLS       bool
	ValkeyFiles      valkeyconn.Files
	FirstMessage     time.Duration
	StreamsPerConn   int
	MaxOpenStreams   int
}

func defaultConfig() Config {
	return Config{
		Listen:           net.JoinHostPort("127.0.0.1", strconv.Itoa(extproc.DefaultPort)),
		Valkey:           "redis://127.0.0.1:6379",
		KeyPrefix:        registry.DefaultPrefix,
		Strategy:         strategy.RoundRobin,
		EndpointHeader:   extproc.DefaultEndpointHeader,
		CacheTTL:         registry.DefaultCacheTTL,
		CacheSize:        registry.DefaultCacheSize,
		ValkeyTimeout:    registry.DefaultTimeout,
		StaleMax:         registry.DefaultStaleMax,
		DecisionTimeout:  registry.DefaultDecisionTimeout,
		MaxSetMembers:    registry.DefaultMaxSetMembers,
		MaxMembers:       registry.DefaultMaxMembers,
		NegativeTTL:      registry.DefaultNegativeTTL,
		ReclaimAfter:     registry.DefaultReclaimAfter,
		RecoveryHoldMax:  registry.DefaultHoldMax,
		MetricsListen:    "127.0.0.1:9090",
		LogLevel:         "info",
		LogFormat:        "json",
		BodyLimit:        extproc.DefaultBodyLimit,
		ShutdownGrace:    extproc.DefaultStreamGrace,
		MaxConnectionAge: 5 * time.Minute,
		GRPCWindow:       defaultGRPCWindow,
		ProbeTimeout:     detector.DefaultProbeTimeout,
		ProbeRate:        detector.DefaultProbeRate,
		ClaimRate:        defaultClaimRate,
		FirstMessage:     streamguard.DefaultFirstMessage,
		StreamsPerConn:   defaultStreamsPerConn,
		MaxOpenStreams:   streamguard.DefaultMaxOpen,
	}
}

type flagSpec struct {
	name, env, usage string
	bind             func(fs *flag.FlagSet, name, usage string)
}

// registryFlags are shared by serve and the operator subcommands.
func (c *Config) registryFlags() []flagSpec {
	return []flagSpec{
		{"valkey", "COORD_VALKEY_URL", "Valkey URL: redis://, rediss:// or valkey://[user:pass@]host:port; Sentinel with ?master_set=NAME, Cluster seeds with ?addr=host:port&addr=...",
			func(fs *flag.FlagSet, n, u string) { fs.StringVar(&c.Valkey, n, c.Valkey, u) }},
		{"key-prefix", "COORD_KEY_PREFIX", "key prefix shared with the pods (@platformatic/coordinator layout)",
			func(fs *flag.FlagSet, n, u string) { fs.StringVar(&c.KeyPrefix, n, c.KeyPrefix, u) }},
		{"valkey-timeout", "COORD_VALKEY_TIMEOUT", "deadline of every Valkey call; keep it well under Envoy's ext_proc message_timeout",
			func(fs *flag.FlagSet, n, u string) { fs.DurationVar(&c.ValkeyTimeout, n, c.ValkeyTimeout, u) }},
		{"valkey-ca", "COORD_VALKEY_CA", "PEM file of the CA that signs the Valkey servers' certificates (rediss:// only; re-read when it changes)",
			func(fs *flag.FlagSet, n, u string) { fs.StringVar(&c.ValkeyFiles.CA, n, c.ValkeyFiles.CA, u) }},
		{"valkey-cert", "COORD_VALKEY_CERT", "PEM client certificate for Valkey (rediss:// only; with --valkey-key; re-read when it changes)",
			func(fs *flag.FlagSet, n, u string) { fs.StringVar(&c.ValkeyFiles.Cert, n, c.ValkeyFiles.Cert, u) }},
		{"valkey-key", "COORD_VALKEY_KEY", "PEM key of --valkey-cert",
			func(fs *flag.FlagSet, n, u string) { fs.StringVar(&c.ValkeyFiles.Key, n, c.ValkeyFiles.Key, u) }},
		{"valkey-password-file", "COORD_VALKEY_PASSWORD_FILE", "file holding the Valkey password (the user comes from the URL), so it is in no process list or URL",
			func(fs *flag.FlagSet, n, u string) {
				fs.StringVar(&c.ValkeyFiles.Password, n, c.ValkeyFiles.Password, u)
			}},
		{"log-level", "COORD_LOG_LEVEL", "debug, info, warn or error",
			func(fs *flag.FlagSet, n, u string) { fs.StringVar(&c.LogLevel, n, c.LogLevel, u) }},
	}
}

func (c *Config) serveFlags() []flagSpec {
	return append([]flagSpec{
		{"listen", "COORD_LISTEN", "gRPC address for ext_proc, ext_authz and gRPC health",
			func(fs *flag.FlagSet, n, u string) { fs.StringVar(&c.Listen, n, c.Listen, u) }},
		{"tls-cert", "COORD_TLS_CERT", "PEM certificate of the gRPC listener (with --tls-key): TLS instead of plaintext; re-read when the file changes",
			func(fs *flag.FlagSet, n, u string) { fs.StringVar(&c.TLSCert, n, c.TLSCert, u) }},
		{"tls-key", "COORD_TLS_KEY", "PEM key of --tls-cert",
			func(fs *flag.FlagSet, n, u string) { fs.StringVar(&c.TLSKey, n, c.TLSKey, u) }},
		{"tls-client-ca", "COORD_TLS_CLIENT_CA", "PEM CA file: mutual TLS, a client without a certificate it signed is refused at the handshake",
			func(fs *flag.FlagSet, n, u string) { fs.StringVar(&c.TLSClientCA, n, c.TLSClientCA, u) }},
		{"metrics-tls", "COORD_METRICS_TLS", "serve /metrics and /healthz over TLS with --tls-cert too (no client certificate asked)",
			func(fs *flag.FlagSet, n, u string) { fs.BoolVar(&c.MetricsTLS, n, c.MetricsTLS, u) }},
		{"strategy", "COORD_STRATEGY", "pod pick per request: " + strings.Join(strategy.Names(), ", "),
			func(fs *flag.FlagSet, n, u string) { fs.StringVar(&c.Strategy, n, c.Strategy, u) }},
		{"routes", "COORD_ROUTES", "route table YAML file; empty: route by header x-destination-id (claim on miss, reassign orphans), else x-lock-id, else 404",
			func(fs *flag.FlagSet, n, u string) { fs.StringVar(&c.Routes, n, c.Routes, u) }},
		{"endpoint-header", "COORD_ENDPOINT_HEADER", "header, and dynamic metadata key (envoy.lb for ext_proc, the ext_authz filter's name for ext_authz), carrying the chosen IP:port to Envoy's ORIGINAL_DST cluster",
			func(fs *flag.FlagSet, n, u string) { fs.StringVar(&c.EndpointHeader, n, c.EndpointHeader, u) }},
		{"cache-ttl", "COORD_CACHE_TTL", "longest use of cached registry data without an invalidation",
			func(fs *flag.FlagSet, n, u string) { fs.DurationVar(&c.CacheTTL, n, c.CacheTTL, u) }},
		{"cache-size", "COORD_CACHE_SIZE", "entries in each in-process cache (destinations, members, locks)",
			func(fs *flag.FlagSet, n, u string) { fs.IntVar(&c.CacheSize, n, c.CacheSize, u) }},
		{"negative-cache-ttl", "COORD_NEGATIVE_CACHE_TTL", "an id read empty answers 404 from memory for this long, unless its key is written meanwhile; 0: every 404 is confirmed by a read",
			func(fs *flag.FlagSet, n, u string) { fs.DurationVar(&c.NegativeTTL, n, c.NegativeTTL, u) }},
		{"reclaim-after", "COORD_RECLAIM_AFTER", "a destination claimed on miss whose members are all dead and that nobody touched for this long is deleted (claims of a flood, claims of dead pods); 0: never",
			func(fs *flag.FlagSet, n, u string) { fs.DurationVar(&c.ReclaimAfter, n, c.ReclaimAfter, u) }},
		{"max-set-members", "COORD_MAX_SET_MEMBERS", "largest destination set read; a larger one answers 503 at once and is shrunk in the background as dead members are removed",
			func(fs *flag.FlagSet, n, u string) { fs.IntVar(&c.MaxSetMembers, n, c.MaxSetMembers, u) }},
		{"max-members", "COORD_MAX_MEMBERS", "most ids read from the members set; over it claims and creates answer 503 and ids without a member record are pruned at once (they are pruned every minute anyway)",
			func(fs *flag.FlagSet, n, u string) { fs.IntVar(&c.MaxMembers, n, c.MaxMembers, u) }},
		{"allow-upstream", "COORD_ALLOW_UPSTREAM", "comma-separated CIDRs accepted as upstreams although refused by default (loopback, link-local incl. 169.254.169.254, multicast, unspecified), e.g. 127.0.0.0/8 for pods on this host",
			func(fs *flag.FlagSet, n, u string) { fs.StringVar(&c.AllowUpstream, n, c.AllowUpstream, u) }},
		{"upstream-cidrs", "COORD_UPSTREAM_CIDRS", "comma-separated CIDRs: the only networks accepted as upstreams (the pod CIDR); what production should run. Empty: any address the deny-list lets through",
			func(fs *flag.FlagSet, n, u string) { fs.StringVar(&c.UpstreamCIDRs, n, c.UpstreamCIDRs, u) }},
		{"decision-timeout", "COORD_DECISION_TIMEOUT", "time budget of one decision: all its Valkey calls together; keep it below Envoy's ext_proc message_timeout (200ms by default)",
			func(fs *flag.FlagSet, n, u string) { fs.DurationVar(&c.DecisionTimeout, n, c.DecisionTimeout, u) }},
		{"stale-max", "COORD_STALE_MAX", "while Valkey fails, answer from last known good data up to this age, then 503",
			func(fs *flag.FlagSet, n, u string) { fs.DurationVar(&c.StaleMax, n, c.StaleMax, u) }},
		{"recovery-hold-max", "COORD_RECOVERY_HOLD_MAX", "upper bound of a recovery hold after an observed registry wipe: members not re-registered by then count as dead (set to the longest member TTL)",
			func(fs *flag.FlagSet, n, u string) { fs.DurationVar(&c.RecoveryHoldMax, n, c.RecoveryHoldMax, u) }},
		{"metrics-listen", "COORD_METRICS_LISTEN", "HTTP address for /metrics and /healthz; empty disables",
			func(fs *flag.FlagSet, n, u string) { fs.StringVar(&c.MetricsListen, n, c.MetricsListen, u) }},
		{"log-format", "COORD_LOG_FORMAT", "json or text",
			func(fs *flag.FlagSet, n, u string) { fs.StringVar(&c.LogFormat, n, c.LogFormat, u) }},
		{"body-limit", "COORD_BODY_LIMIT", "largest create-route response body read for the new id, in bytes",
			func(fs *flag.FlagSet, n, u string) { fs.IntVar(&c.BodyLimit, n, c.BodyLimit, u) }},
		{"shutdown-grace", "COORD_SHUTDOWN_GRACE", "how long in-flight streams may take after SIGTERM or a connection's rotation before they are cut: longer than the route timeout of create/delete routes, whose streams wait for the upstream's answer",
			func(fs *flag.FlagSet, n, u string) { fs.DurationVar(&c.ShutdownGrace, n, c.ShutdownGrace, u) }},
		{"max-connection-age", "COORD_MAX_CONNECTION_AGE", "gRPC connections are closed gracefully after this age so Envoy rebalances across replicas",
			func(fs *flag.FlagSet, n, u string) { fs.DurationVar(&c.MaxConnectionAge, n, c.MaxConnectionAge, u) }},
		{"grpc-stream-workers", "COORD_GRPC_STREAM_WORKERS", "goroutines that serve new gRPC streams (reused, so a stream starts on a grown stack); 0: 64 per CPU",
			func(fs *flag.FlagSet, n, u string) { fs.IntVar(&c.StreamWorkers, n, c.StreamWorkers, u) }},
		{"grpc-window", "COORD_GRPC_WINDOW", "static HTTP/2 flow-control window per stream, in bytes (the connection's is 4x); a static window spares the BDP pings and window updates; 0: grpc-go's dynamic windows",
			func(fs *flag.FlagSet, n, u string) { fs.IntVar(&c.GRPCWindow, n, c.GRPCWindow, u) }},
		{"first-message-timeout", "COORD_FIRST_MESSAGE_TIMEOUT", "a gRPC stream that sends nothing for this long after it opens is ended (Envoy sends its first message with the stream)",
			func(fs *flag.FlagSet, n, u string) { fs.DurationVar(&c.FirstMessage, n, c.FirstMessage, u) }},
		{"grpc-max-streams", "COORD_GRPC_MAX_STREAMS", "concurrent streams per gRPC connection (HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS; Envoy opens another connection past it)",
			func(fs *flag.FlagSet, n, u string) { fs.IntVar(&c.StreamsPerConn, n, c.StreamsPerConn, u) }},
		{"max-open-streams", "COORD_MAX_OPEN_STREAMS", "streams open at once over all connections (~11 KB each); past it a new stream ends with RESOURCE_EXHAUSTED",
			func(fs *flag.FlagSet, n, u string) { fs.IntVar(&c.MaxOpenStreams, n, c.MaxOpenStreams, u) }},
		{"claim-rate", "COORD_CLAIM_RATE", "most claims on miss this replica writes per second (each unknown id a client names becomes a key); past it 503 with Retry-After; 0: no bound",
			func(fs *flag.FlagSet, n, u string) { fs.Float64Var(&c.ClaimRate, n, c.ClaimRate, u) }},
		{"probe-timeout", "COORD_PROBE_TIMEOUT", "connect timeout of the probe that confirms a failure Envoy reported (SPEC §8.1); a refused or timed-out connect marks the member down",
			func(fs *flag.FlagSet, n, u string) { fs.DurationVar(&c.ProbeTimeout, n, c.ProbeTimeout, u) }},
		{"probe-rate", "COORD_PROBE_RATE", "most probes started per second for failure reports, all addresses together",
			func(fs *flag.FlagSet, n, u string) { fs.IntVar(&c.ProbeRate, n, c.ProbeRate, u) }},
		{"gc-percent", "COORD_GC_PERCENT", "Go GC target (GOGC) when GOGC is not set; 0: 2000 under a memory limit (GOMEMLIMIT, which the Kubernetes manifest sets from the memory limit), else 400; -1: Go's default",
			func(fs *flag.FlagSet, n, u string) { fs.IntVar(&c.GCPercent, n, c.GCPercent, u) }},
	}, c.registryFlags()...)
}

// lookupEnv is os.LookupEnv: a variable set to "" means what an empty flag
// means, an unset one leaves the default.
type lookupEnv func(string) (string, bool)

// parse binds specs to a new flag set, applies environment twins, then the
// command line, where flags and up to maxArgs positional arguments may come
// in any order; it returns the positional arguments. Usage (every flag with
// its env twin and default) is printed once, for --help only.
func parse(name, synopsis string, specs []flagSpec, args []string, env lookupEnv, stderr io.Writer, maxArgs int) ([]string, error) {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.Usage = func() {} // errors are reported once, by the caller
	for _, s := range specs {
		s.bind(fs, s.name, s.usage)
	}
	for _, s := range specs {
		if v, ok := env(s.env); ok {
			if err := fs.Set(s.name, v); err != nil {
				return nil, fmt.Errorf("environment %s=%q: %w", s.env, v, err)
			}
		}
	}
	var positional []string
	for {
		if err := fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				printUsage(stderr, synopsis, specs, fs)
				return nil, err
			}
			return nil, fmt.Errorf("%w: %w (see coord-extproc %s --help)", errUsage, err, name)
		}
		if fs.NArg() == 0 {
			return positional, nil
		}
		if len(positional) == maxArgs {
			return nil, fmt.Errorf("%w: unexpected argument %q (see coord-extproc %s --help)", errUsage, fs.Arg(0), name)
		}
		positional = append(positional, fs.Arg(0))
		args = fs.Args()[1:]
	}
}

func printUsage(w io.Writer, synopsis string, specs []flagSpec, fs *flag.FlagSet) {
	fmt.Fprintf(w, "Usage: coord-extproc %s\n\nFlags (each has an environment twin; flags win over the environment):\n", synopsis)
	for _, s := range specs {
		f := fs.Lookup(s.name)
		fmt.Fprintf(w, "  --%s (env %s, default %q)\n      %s\n", s.name, s.env, f.DefValue, s.usage)
	}
}

// Validate checks every setting and says what is wrong with it.
func (c *Config) Validate() error {
	var errs []error
	for flagName, addr := range map[string]string{"listen": c.Listen, "metrics-listen": c.MetricsListen} {
		if addr == "" && flagName == "metrics-listen" {
			continue
		}
		if _, _, err := net.SplitHostPort(addr); err != nil {
			errs = append(errs, fmt.Errorf("--%s %q: %w", flagName, addr, err))
		}
	}
	if _, err := c.valkeyOption(); err != nil {
		errs = append(errs, fmt.Errorf("--valkey: %w", err))
	}
	errs = append(errs, c.validateTLS()...)
	if err := registry.ValidateID(c.KeyPrefix); err != nil {
		errs = append(errs, fmt.Errorf("--key-prefix: %w", err))
	}
	if _, err := strategy.New(c.Strategy); err != nil {
		errs = append(errs, fmt.Errorf("--strategy: %w", err))
	}
	if c.EndpointHeader == "" || strings.ToLower(c.EndpointHeader) != c.EndpointHeader || strings.HasPrefix(c.EndpointHeader, "x-envoy-") || strings.HasPrefix(c.EndpointHeader, ":") {
		errs = append(errs, fmt.Errorf("--endpoint-header %q: must be a lower-case header name, not x-envoy-* (ext_proc may not set those) nor a pseudo-header", c.EndpointHeader))
	}
	for name, d := range map[string]time.Duration{"cache-ttl": c.CacheTTL, "valkey-timeout": c.ValkeyTimeout, "stale-max": c.StaleMax, "decision-timeout": c.DecisionTimeout, "recovery-hold-max": c.RecoveryHoldMax, "shutdown-grace": c.ShutdownGrace, "max-connection-age": c.MaxConnectionAge, "probe-timeout": c.ProbeTimeout, "first-message-timeout": c.FirstMessage} {
		if d <= 0 {
			errs = append(errs, fmt.Errorf("--%s %s: must be positive", name, d))
		}
	}
	for name, n := range map[string]int{"grpc-max-streams": c.StreamsPerConn, "max-open-streams": c.MaxOpenStreams, "probe-rate": c.ProbeRate,
		"max-set-members": c.MaxSetMembers, "max-members": c.MaxMembers, "cache-size": c.CacheSize, "body-limit": c.BodyLimit} {
		if n <= 0 {
			errs = append(errs, fmt.Errorf("--%s %d: must be positive", name, n))
		}
	}
	if c.StreamWorkers < 0 {
		errs = append(errs, fmt.Errorf("--grpc-stream-workers %d: 0 (automatic) or more", c.StreamWorkers))
	}
	if c.GRPCWindow != 0 && c.GRPCWindow < 64<<10 || c.GRPCWindow > 1<<30 {
		errs = append(errs, fmt.Errorf("--grpc-window %d: 0 (dynamic) or from 65536 to 1 GiB", c.GRPCWindow))
	}
	if c.GCPercent < -1 {
		errs = append(errs, fmt.Errorf("--gc-percent %d: 0 (automatic), -1 (Go's default) or positive", c.GCPercent))
	}
	if c.ClaimRate < 0 {
		errs = append(errs, fmt.Errorf("--claim-rate %g: 0 (no bound) or positive", c.ClaimRate))
	}
	if c.NegativeTTL < 0 || c.NegativeTTL > c.CacheTTL {
		errs = append(errs, fmt.Errorf("--negative-cache-ttl %s: 0 (off) up to --cache-ttl (%s)", c.NegativeTTL, c.CacheTTL))
	}
	if c.ReclaimAfter < 0 || (c.ReclaimAfter > 0 && c.ReclaimAfter < time.Second) {
		errs = append(errs, fmt.Errorf("--reclaim-after %s: 0 (never) or at least 1s (Valkey counts idle time in seconds)", c.ReclaimAfter))
	}
	if _, err := c.allowUpstream(); err != nil {
		errs = append(errs, fmt.Errorf("--allow-upstream: %w", err))
	}
	if _, err := c.upstreamCIDRs(); err != nil {
		errs = append(errs, fmt.Errorf("--upstream-cidrs: %w", err))
	}
	if _, err := c.logLevel(); err != nil {
		errs = append(errs, err)
	}
	if c.LogFormat != "json" && c.LogFormat != "text" {
		errs = append(errs, fmt.Errorf("--log-format %q: json or text", c.LogFormat))
	}
	if c.Routes != "" {
		if _, err := os.Stat(c.Routes); err != nil {
			errs = append(errs, fmt.Errorf("--routes: %w", err))
		}
	}
	return errors.Join(errs...)
}

// urlKeys are the query keys of valkey-go's ParseURL that coord-extproc
// accepts; ParseURL ignores anything else, so a typo would silently change
// the deployment (a misspelt master_set means "talk to the Sentinel").
var urlKeys = map[string]bool{"addr": true, "master_set": true, "db": true, "dial_timeout": true,
	"write_timeout": true, "skip_verify": true, "client_name": true, "max_retries": true}

func (c *Config) valkeyOption() (valkey.ClientOption, error) {
	u, err := url.Parse(c.Valkey)
	if err != nil {
		return valkey.ClientOption{}, err
	}
	for k, v := range u.Query() {
		switch {
		case k == "protocol" && v[0] == "2", k == "client_cache" && v[0] == "0":
			return valkey.ClientOption{}, fmt.Errorf("%s=%s: coord-extproc needs RESP3 client-side caching (its invalidations keep every replica coherent)", k, v[0])
		case k == "protocol" || k == "client_cache":
		case !urlKeys[k]:
			return valkey.ClientOption{}, fmt.Errorf("unknown query key %q (known: addr, master_set, db, dial_timeout, write_timeout, skip_verify, client_name, max_retries)", k)
		}
	}
	if u.Query().Has("master_set") && u.Query().Get("master_set") == "" {
		return valkey.ClientOption{}, errors.New("master_set is empty")
	}
	return valkey.ParseURL(c.Valkey)
}

// allowUpstream parses --allow-upstream: CIDRs or single addresses.
func (c *Config) allowUpstream() ([]netip.Prefix, error) { return parseNetworks(c.AllowUpstream) }

// upstreamCIDRs parses --upstream-cidrs the same way.
func (c *Config) upstreamCIDRs() ([]netip.Prefix, error) { return parseNetworks(c.UpstreamCIDRs) }

func parseNetworks(list string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, f := range strings.Split(list, ",") {
		if f = strings.TrimSpace(f); f == "" {
			continue
		}
		p, err := netip.ParsePrefix(f)
		if err != nil {
			a, aerr := netip.ParseAddr(f)
			if aerr != nil {
				return nil, fmt.Errorf("%q is neither a CIDR nor an IP address", f)
			}
			p = netip.PrefixFrom(a, a.BitLen())
		}
		out = append(out, p.Masked())
	}
	return out, nil
}

// valkeyMode describes the deployment the URL asks for, for the log.
func valkeyMode(opt valkey.ClientOption) string {
	if opt.Sentinel.MasterSet != "" {
		return "sentinel"
	}
	if len(opt.InitAddress) > 1 {
		return "cluster (seeds)"
	}
	return "standalone or cluster (detected on connect)"
}

func (c *Config) logLevel() (slog.Level, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(c.LogLevel)); err != nil {
		return l, fmt.Errorf("--log-level %q: debug, info, warn or error", c.LogLevel)
	}
	return l, nil
}

func (c *Config) logger(w io.Writer) *slog.Logger {
	level, _ := c.logLevel()
	opts := &slog.HandlerOptions{Level: level, ReplaceAttr: func(_ []string, a slog.Attr) slog.Attr {
		if a.Value.Kind() == slog.KindDuration { // "15s", not 15000000000
			a.Value = slog.StringValue(a.Value.Duration().String())
		}
		return a
	}}
	if c.LogFormat == "text" {
		return slog.New(slog.NewTextHandler(w, opts))
	}
	return slog.New(slog.NewJSONHandler(w, opts))
}
