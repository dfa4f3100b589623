package registry

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	lru "github.com/hashicorp/golang-lru/v2"
	"github.com/valkey-io/valkey-go"

	"github.com/coord-extproc/coord-extproc/internal/ratelimit"
	"github.com/coord-extproc/coord-extproc/strategy"
)

// Defaults of Options (SPEC §4).
const (
	DefaultCacheTTL  = 5 * time.Second
	DefaultCacheSize = 10000
	DefaultTimeout   = 50 * time.Millisecond
	DefaultStaleMax  = 30 * time.Second
	DefaultHoldMax   = DefaultMemberTTL
	DefaultDNSTTL    = 30 * time.Second
	// DefaultMaxSetMembers: fan-out sets hold a handful of pods.
	DefaultMaxSetMembers = 1000
	// DefaultMaxMembers: a fleet of thousands, with room; P:members over
	// it is junk a pod wrote, not pods.
	DefaultMaxMembers = 10_000
	// DefaultNegativeTTL: a repeated unknown id is answered from memory
	// for this long; short, because a create on another replica is
	// announced by its invalidation, which alone ends it sooner.
	DefaultNegativeTTL = time.Second
	// DefaultReclaimAfter: an unused claim bound to a dead pod goes after
	// an hour nobody asked for it.
	DefaultReclaimAfter = time.Hour
	// DefaultPruneInterval: how often ids without a record leave P:members.
	DefaultPruneInterval = time.Minute
	// DefaultConnTimeout bounds how long a connection may hang before it
	// is dropped (valkey-go ConnWriteTimeout), unless the URL sets one.
	DefaultConnTimeout = time.Second
)

// Options configure a Registry. Zero values take the defaults above.
type Options struct {
	// Client says how to reach Valkey (standalone, Sentinel or Cluster).
	// New sets up broadcast tracking and the invalidation callback itself.
	Client valkey.ClientOption
	// Prefix is the key prefix shared with the pods (DefaultPrefix).
	Prefix string
	// Strategy picks a pod per request (round-robin when nil).
	Strategy strategy.Strategy
	// CacheTTL bounds how long cached data is used without any
	// invalidation; CacheSize bounds the entries of each derived cache.
	CacheTTL  time.Duration
	CacheSize int
	// Timeout is the deadline of every Valkey call.
	Timeout time.Duration
	// StaleMax is how old last known good data may be to answer when
	// Valkey fails.
	StaleMax time.Duration
	// HoldMax bounds a recovery hold (recovery.go): a member that has not
	// re-registered this long after a wipe is released as dead. Set it to
	// the longest member TTL of the fleet.
	HoldMax time.Duration
	// DNSTTL is how long a hostname's resolution is reused.
	DNSTTL time.Duration
	// MaxSetMembers bounds the members read for one destination: a larger
	// set answers ErrTooManyMembers at once (and is shrunk in the background
	// as its dead ids are removed) instead of costing every request
	// megabytes and milliseconds.
	MaxSetMembers int
	// MaxMembers bounds the ids read from P:members: a larger set answers
	// ErrTooManyRegistered to claims and creates instead of costing every
	// read of all members a record per junk id.
	MaxMembers int
	// NegativeTTL is how long a destination read empty answers 404
	// without another read (negative.go); negative disables.
	NegativeTTL time.Duration
	// ReclaimAfter is how long a destination claimed on miss must be
	// bound to dead members only, and untouched, before it is deleted
	// (reclaim.go); negative disables.
	ReclaimAfter time.Duration
	// PruneInterval is how often ids whose record is gone are removed from
	// P:members (prune.go); negative disables.
	PruneInterval time.Duration
	// AllowUpstream lists networks accepted although the address policy
	// refuses them (loopback, link-local, multicast, unspecified).
	AllowUpstream []netip.Prefix
	// ClaimRate bounds the claims on miss this replica writes, per second
	// (burst of the same size; 0: no bound): claim_on_miss gives every
	// client writes, one new key per unknown id.
	ClaimRate float64
	// UpstreamCIDRs, when set, are the only networks accepted as upstreams
	// (the pod CIDR): an allow-list instead of the deny-list alone.
	UpstreamCIDRs []netip.Prefix
	// ProbeInterval is how often the registry proves its invalidation
	// channel alive (see probe.go); default CacheTTL/3, negative disables
	// (then every entry is re-read once per CacheTTL).
	ProbeInterval time.Duration
	// Logger receives warnings (junk addresses, clean-up failures).
	Logger *slog.Logger
	// Stats receives the counters (a new set when nil), so metrics can be
	// registered before Valkey is reachable.
	Stats *Stats
	// Now and LookupHost are injected by tests; defaults time.Now and
	// net.DefaultResolver.LookupHost.
	Now        func() time.Time
	LookupHost func(ctx context.Context, host string) ([]string, error)
}

func (o *Options) setDefaults() {
	if o.Prefix == "" {
		o.Prefix = DefaultPrefix
	}
	if o.Strategy == nil {
		o.Strategy = strategy.NewRoundRobin(0)
	}
	if o.CacheTTL <= 0 {
		o.CacheTTL = DefaultCacheTTL
	}
	if o.CacheSize <= 0 {
		o.CacheSize = DefaultCacheSize
	}
	if o.Timeout <= 0 {
		o.Timeout = DefaultTimeout
	}
	if o.StaleMax <= 0 {
		o.StaleMax = DefaultStaleMax
	}
	if o.MaxSetMembers <= 0 {
		o.MaxSetMembers = DefaultMaxSetMembers
	}
	if o.MaxMembers <= 0 {
		o.MaxMembers = DefaultMaxMembers
	}
	if o.NegativeTTL == 0 {
		o.NegativeTTL = DefaultNegativeTTL
	}
	if o.ReclaimAfter == 0 {
		o.ReclaimAfter = DefaultReclaimAfter
	}
	if o.PruneInterval == 0 {
		o.PruneInterval = DefaultPruneInterval
	}
	if o.HoldMax <= 0 {
		o.HoldMax = DefaultHoldMax
	}
	if o.DNSTTL <= 0 {
		o.DNSTTL = DefaultDNSTTL
	}
	if o.ProbeInterval == 0 {
		o.ProbeInterval = o.CacheTTL / 3
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Stats == nil {
		o.Stats = &Stats{}
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.LookupHost == nil {
		o.LookupHost = net.DefaultResolver.LookupHost
	}
}

// Registry resolves destinations and locks to live pods. Steady-state
// resolutions are answered from memory: Valkey's broadcast tracking tells
// every replica within milliseconds when a key under the prefix changes,
// and that invalidates both valkey-go's cache and the derived caches here.
type Registry struct {
	opt    Options
	keys   keys
	client valkey.Client
	// records reads member records, tracked in default mode (New).
	records valkey.Client
	addrs   *addressResolver
	log     *slog.Logger

	sets *lru.Cache[string, *setEntry]
	// negative holds destinations read empty (negative.go).
	negative *lru.Cache[string, *setEntry]
	members  *lru.Cache[string, *memberEntry]
	// membersMu orders replacements of member entries (putMember).
	membersMu sync.Mutex
	locks     *lru.Cache[string, *lockEntry]
	all       atomic.Pointer[setEntry] // the P:members set

	// inv tells a load whether an invalidation of its key raced with it
	// (invalidations.go states the invariant).
	inv *invalidations
	// flushGen moves when everything is invalid at once (FLUSHALL,
	// reconnection); entries remember the generation they were built in.
	flushGen atomic.Uint64
	// memberGen moves when a member changes in a way routing sees (not a
	// load: refresh.go), so candidate lists derived from member records
	// are rebuilt.
	memberGen atomic.Uint64
	refresh   *refresher
	// loadAware: the strategy reads loads, so views keep them current.
	loadAware bool
	recovery  *recovery
	// base anchors monotonic timestamps.
	base     time.Time
	shards   *shards
	probe    *prober
	reporter *reporter
	shared   shared

	stats     *Stats
	ttls      memberTTLs
	claims    *ratelimit.Bucket // nil: claims unbounded
	cleanup   *cleaner
	prune     *pruner
	reclaim   *reclaimer
	badAddrMu sync.Mutex
	badAddr   map[string]struct{}
}

// Stats are cumulative counters for metrics.
type Stats struct {
	CacheHits, CacheMisses, ValkeyErrors, StaleAnswers, MalformedRecords atomic.Uint64
	// HeldMembers is how many members the recovery hold held at this
	// replica's last look at it (0 outside a recovery).
	HeldMembers atomic.Int64
	// ClaimsLimited counts claims refused by the claim rate limit.
	ClaimsLimited atomic.Uint64
	// DrainingMembers is how many live members were draining at the last
	// refresh of the members set (SPEC §8.2).
	DrainingMembers atomic.Int64
	// MembersPruned counts ids removed from P:members because their
	// record was gone (prune.go).
	MembersPruned atomic.Uint64
	// ClaimsReclaimed counts destinations claimed on miss and deleted
	// unused, their members all dead (reclaim.go).
	ClaimsReclaimed atomic.Uint64
	// MemberRefreshes counts member records read again after a write
	// (heartbeats mostly), off the request path; MemberChanges those
	// reads that found a change routing sees (refresh.go).
	MemberRefreshes, MemberChanges atomic.Uint64
	// Invalidations counts the keys Valkey told this replica were written
	// (a flush or lost connection counts one).
	Invalidations atomic.Uint64
}

// New connects to Valkey and returns a Registry. It enables broadcast
// client tracking for the prefix: the server then pushes an invalidation
// for every write under it, which is what lets any replica see any pod's
// change without polling.
func New(ctx context.Context, opt Options) (*Registry, error) {
	opt.setDefaults()
	r := &Registry{
		opt:  opt,
		keys: newKeys(opt.Prefix),
		log:  opt.Logger,

		badAddr: make(map[string]struct{}),
		base:    opt.Now(),
		shared:  shared{sets: map[string]*idset{}},
		stats:   opt.Stats,
		inv:     newInvalidations(),
	}
	r.shards = newShards()
	if opt.ClaimRate > 0 {
		r.claims = ratelimit.New(opt.ClaimRate, max(1, int(opt.ClaimRate)), opt.Now)
	}
	r.addrs = newAddressResolver(opt.LookupHost, opt.DNSTTL, opt.Now, addressPolicy{allow: opt.AllowUpstream, only: opt.UpstreamCIDRs}, r.onResolved)
	var err error
	if r.sets, err = lru.New[string, *setEntry](opt.CacheSize); err != nil {
		return nil, fmt.Errorf("registry: destination cache: %w", err)
	}
	if r.negative, err = lru.New[string, *setEntry](opt.CacheSize); err != nil {
		return nil, fmt.Errorf("registry: negative cache: %w", err)
	}
	// An entry leaving the cache is retired: invalidations no longer reach
	// it, so views holding it must not be trusted (refresh.go).
	if r.members, err = lru.NewWithEvict(opt.CacheSize, func(_ string, e *memberEntry) { e.invalid.Store(true) }); err != nil {
		return nil, fmt.Errorf("registry: member cache: %w", err)
	}
	if r.locks, err = lru.New[string, *lockEntry](opt.CacheSize); err != nil {
		return nil, fmt.Errorf("registry: lock cache: %w", err)
	}
	r.probe = newProber(r) // before the client: the invalidation callback uses these
	r.recovery = newRecovery(r)
	r.refresh = newRefresher(r)
	r.loadAware = strategy.UsesLoad(opt.Strategy)
	co := opt.Client
	co.DisableCache = false
	co.ClientTrackingOptions = r.keys.broadcast()
	co.OnInvalidations = r.onInvalidations
	if co.CacheSizeEachConn == 0 {
		// valkey-go's cache is the second level here; the derived caches
		// hold what requests use. Its default (128 MiB per connection)
		// would dwarf them (valkey-go opens several connections).
		co.CacheSizeEachConn = 1 << 20
	}
	if co.ConnWriteTimeout == 0 {
		// valkey-go's default (10 s) keeps a hung connection, and with it
		// a hung master's answers, for ten seconds.
		co.ConnWriteTimeout = DefaultConnTimeout
	}
	// Member records are tracked apart, in Valkey's default mode: the
	// server tells this client of a record's write only if it read the
	// record since the last one it told of. Every heartbeat rewrites a
	// record; a broadcast would push each one to every replica (a wake-up
	// and a syscall each), while here a record nobody reads again costs
	// one push, then nothing (refresh.go). It connects first: its short
	// handshake reports a refused password as such, where the broadcast
	// client's (over ten arguments) is cut off by Valkey's limit on
	// unauthenticated commands (EOF).
	rc := co
	rc.ClientTrackingOptions = []string{}
	rc.PipelineMultiplex = -1 // one connection per server: reads are batched, pushes few
	if r.records, err = valkey.NewClient(rc); err != nil {
		return nil, fmt.Errorf("registry: connect to valkey %v: %w", co.InitAddress, err)
	}
	if r.client, err = valkey.NewClient(co); err != nil {
		r.records.Close()
		return nil, fmt.Errorf("registry: connect to valkey %v: %w", co.InitAddress, err)
	}
	if err := refuseSentinel(ctx, r.client, opt.Timeout); err != nil {
		r.client.Close()
		r.records.Close()
		return nil, err
	}
	r.shards.cluster.Store(r.client.Mode() == valkey.ClientModeCluster)
	r.reporter = newReporter(r)
	r.cleanup = newCleaner(r)
	r.prune = newPruner(r)
	r.reclaim = newReclaimer(r)
	r.probe.start()
	r.recovery.start()
	r.refresh.start()
	// First contact: write the epoch now if Valkey answers; if it does not,
	// the recovery loop and every negative decision retry it.
	_ = r.recovery.verify(ctx)
	return r, nil
}

// Close stops background work and closes the Valkey connections.
func (r *Registry) Close() {
	r.probe.stop()
	r.reporter.stop()
	r.addrs.stop()
	r.recovery.stop()
	r.cleanup.stop()
	r.prune.stop()
	r.reclaim.stop()
	r.refresh.stop()
	r.client.Close()
	r.records.Close()
}

// Stats returns the registry's counters.
func (r *Registry) Stats() *Stats { return r.stats }

// Mode is how the client reached Valkey: standalone, sentinel or cluster.
func (r *Registry) Mode() string { return string(r.client.Mode()) }

// Ready reads the registry itself — the epoch that every replica writes on
// first contact — rather than PING, which a Sentinel or any other server
// answers too.
func (r *Registry) Ready(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, r.opt.Timeout)
	defer cancel()
	epoch, err := r.client.Do(ctx, r.client.B().Hget().Key(r.keys.recovery()).Field("epoch").Build()).ToString()
	if valkey.IsValkeyNil(err) || (err == nil && epoch == "") {
		_ = r.recovery.verify(ctx) // writes it; the next check sees it
		return fmt.Errorf("%w: registry epoch not written yet", ErrRegistryUnavailable)
	}
	return r.valkeyErr(err)
}

// Ping checks that Valkey answers within the call timeout.
func (r *Registry) Ping(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, r.opt.Timeout)
	defer cancel()
	return r.valkeyErr(r.client.Do(ctx, r.client.B().Ping().Build()).Error())
}

func (r *Registry) onInvalidations(msgs []valkey.ValkeyMessage) {
	r.stats.Invalidations.Add(uint64(max(len(msgs), 1)))
	if msgs == nil { // FLUSHALL/FLUSHDB or a lost connection
		r.inv.everything()
		r.flushGen.Add(1)
		r.memberGen.Add(1)
		r.recovery.onFlush()
		return
	}
	// Note every key before marking any: a concurrent load either sees its
	// key noted or stored its entry early enough for the marking to find
	// it. Probe keys (ours and other replicas') invalidate nothing cached.
	var seq uint64
	for _, m := range msgs {
		if key, err := m.ToString(); err == nil && !strings.HasPrefix(key, r.keys.probePrefix) {
			if seq == 0 {
				seq = r.inv.batch()
			}
			r.inv.note(key, seq)
		}
	}
	for _, m := range msgs {
		key, err := m.ToString()
		if err != nil {
			continue
		}
		r.invalidateKey(key)
	}
}

func (r *Registry) invalidateKey(key string) {
	switch {
	case r.probe.confirm(key):
	case strings.HasPrefix(key, r.keys.destPrefix):
		id := key[len(r.keys.destPrefix):]
		if e, ok := r.sets.Peek(id); ok {
			e.invalid.Store(true)
		}
		if e, ok := r.negative.Peek(id); ok {
			e.invalid.Store(true)
		}
	case strings.HasPrefix(key, r.keys.memberPrefix):
		// No memberGen move: whether routing sees this write is for the
		// re-read to tell (refresh.go).
		id := key[len(r.keys.memberPrefix):]
		if e, ok := r.members.Peek(id); ok {
			r.refresh.written(e, r.mono(r.opt.Now()))
		}
		r.recovery.onMemberWrite(id)
	case strings.HasPrefix(key, r.keys.downPrefix):
		if e, ok := r.members.Peek(key[len(r.keys.downPrefix):]); ok {
			e.mark.invalid.Store(true)
		}
		r.memberGen.Add(1)
	case strings.HasPrefix(key, r.keys.lockPrefix):
		if e, ok := r.locks.Peek(key[len(r.keys.lockPrefix):]); ok {
			e.invalid.Store(true)
		}
	case key == r.keys.members():
		if e := r.all.Load(); e != nil {
			e.invalid.Store(true)
		}
	case key == r.keys.recovery():
		r.recovery.onFlush()
	}
}

// valkeyErr classifies a Valkey error: nil stays nil, anything else counts
// and wraps ErrRegistryUnavailable. A Valkey error never says a member is
// dead.
func (r *Registry) valkeyErr(err error) error {
	if err == nil || valkey.IsValkeyNil(err) {
		return nil
	}
	if ve, ok := valkey.IsValkeyErr(err); ok && strings.HasPrefix(ve.Error(), "WRONGTYPE") {
		r.stats.MalformedRecords.Add(1)
		r.reporter.note(err)
		return fmt.Errorf("%w: %w", ErrMalformedRecord, err)
	}
	r.stats.ValkeyErrors.Add(1)
	r.reporter.note(err)
	return fmt.Errorf("%w: %w", ErrRegistryUnavailable, err)
}

func (r *Registry) logBadAddress(memberID, address string, err error) {
	k := memberID + "\x00" + address
	r.badAddrMu.Lock()
	_, seen := r.badAddr[k]
	if !seen {
		if len(r.badAddr) >= maxDNSEntries {
			clear(r.badAddr)
		}
		r.badAddr[k] = struct{}{}
	}
	r.badAddrMu.Unlock()
	if !seen {
		r.log.Warn("member address is not routable; member skipped", "member", clip(memberID), "address", clip(address), "err", clip(err.Error()))
	}
}

// refuseSentinel stops a standalone client that reached a Sentinel: the
// URL lacks ?master_set=, and every registry read would fail.
func refuseSentinel(ctx context.Context, c valkey.Client, timeout time.Duration) error {
	if c.Mode() != valkey.ClientModeStandalone {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, max(timeout, time.Second))
	defer cancel()
	info, err := c.Do(ctx, c.B().Info().Section("server").Build()).ToString()
	if err == nil && (strings.Contains(info, "server_mode:sentinel") || strings.Contains(info, "redis_mode:sentinel")) {
		return fmt.Errorf("registry: %w", ErrSentinelAddress)
	}
	return nil
}

// clip cuts a registry string (any pod can write one) for a log line; the
// log handler escapes what remains.
func clip(s string) string {
	const max = 200
	if len(s) <= max {
		return s
	}
	return fmt.Sprintf("%s…(%d bytes)", s[:max], len(s))
}
