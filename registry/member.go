package registry

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/valkey-io/valkey-go"
)

// Pod-side defaults.
const (
	DefaultMemberTTL         = 30 * time.Second
	DefaultHeartbeatInterval = 10 * time.Second
	DefaultMemberTimeout     = 2 * time.Second
)

// MemberOptions configure a Member.
type MemberOptions struct {
	// Client is the Valkey connection (required); the Member does not
	// close it.
	Client valkey.Client
	Prefix string
	// ID identifies the pod (random when empty); Address is how it is
	// reached (required): http(s)://host:port, host:port or IP:port.
	ID, Address string
	// TTL is the lifetime of the member record; HeartbeatInterval must be
	// well under it. Timeout bounds each Valkey call.
	TTL, HeartbeatInterval, Timeout time.Duration
	// Load reports the load figure sent with each heartbeat of Run.
	Load   func() int64
	Logger *slog.Logger
	Now    func() time.Time

	// Handoff carries a destination's state to a peer (SPEC §8.2). With
	// it, Run hands everything off before it deregisters and serves
	// rebalance requests; without it, Run just deregisters.
	Handoff HandoffFunc
	// OnHandoff, if set, is told how each handoff ended, after the owner
	// switch (err nil) or without it: the application then forwards or
	// resumes the destination's requests. to.ID is empty when the member
	// only left a fan-out set.
	OnHandoff func(destID string, to PeerLoad, err error)
	// HandoffTimeout bounds one hook call (default 10 s); DrainTimeout
	// the whole departure (default 30 s: keep Kubernetes'
	// terminationGracePeriodSeconds above it); HandoffParallel how many
	// run at once (default 4); HandoffPoll how often the request queue is
	// read (default 1 s).
	HandoffTimeout, DrainTimeout, HandoffPoll time.Duration
	HandoffParallel                           int
}

// Member is a pod's presence in the registry. It remembers the
// destinations it serves and the locks it holds, and re-asserts them when
// a heartbeat finds its record gone (registry restarted, flushed or failed
// over), so the pods stay the ground truth of what they own.
type Member struct {
	opt  MemberOptions
	keys keys

	mu    sync.Mutex
	dests map[string]struct{}
	locks map[string]heldLock

	draining atomic.Bool
	handoffs HandoffStats
}

type heldLock struct {
	fields   []string      // field/value pairs, podId and destinationId last
	lease    time.Duration // 0: no expiry
	deadline time.Time
}

// Lock record fields that metadata may not set.
const (
	lockFieldPod  = "podId"
	lockFieldDest = "destinationId"
)

// NewMember validates opt and returns an unregistered Member.
func NewMember(opt MemberOptions) (*Member, error) {
	if opt.Client == nil {
		return nil, errors.New("registry: member: Client is required")
	}
	if opt.Prefix == "" {
		opt.Prefix = DefaultPrefix
	}
	if opt.ID == "" {
		b := make([]byte, 8)
		_, _ = rand.Read(b)
		opt.ID = "member-" + hex.EncodeToString(b)
	}
	if err := ValidateID(opt.ID); err != nil {
		return nil, fmt.Errorf("registry: member id: %w", err)
	}
	if _, _, err := splitAddress(opt.Address); err != nil {
		return nil, fmt.Errorf("registry: member %s: %w", opt.ID, err)
	}
	if opt.TTL <= 0 {
		opt.TTL = DefaultMemberTTL
	}
	if opt.HeartbeatInterval <= 0 {
		opt.HeartbeatInterval = min(DefaultHeartbeatInterval, opt.TTL/3)
	}
	if opt.HeartbeatInterval >= opt.TTL {
		return nil, fmt.Errorf("registry: member %s: heartbeat interval %s must be shorter than TTL %s", opt.ID, opt.HeartbeatInterval, opt.TTL)
	}
	if opt.Timeout <= 0 {
		opt.Timeout = DefaultMemberTimeout
	}
	if opt.Load == nil {
		opt.Load = func() int64 { return 0 }
	}
	if opt.Logger == nil {
		opt.Logger = slog.New(slog.DiscardHandler)
	}
	if opt.Now == nil {
		opt.Now = time.Now
	}
	if opt.HandoffTimeout <= 0 {
		opt.HandoffTimeout = 10 * time.Second
	}
	if opt.DrainTimeout <= 0 {
		opt.DrainTimeout = 30 * time.Second
	}
	if opt.HandoffPoll <= 0 {
		opt.HandoffPoll = time.Second
	}
	if opt.HandoffParallel <= 0 {
		opt.HandoffParallel = 4
	}
	return &Member{opt: opt, keys: newKeys(opt.Prefix), dests: map[string]struct{}{}, locks: map[string]heldLock{}}, nil
}

// ID returns the member id.
func (m *Member) ID() string { return m.opt.ID }

func (m *Member) do(ctx context.Context, cmds ...valkey.Completed) error {
	ctx, cancel := context.WithTimeout(ctx, m.opt.Timeout)
	defer cancel()
	for _, res := range m.opt.Client.DoMulti(ctx, cmds...) {
		if err := res.Error(); err != nil && !valkey.IsValkeyNil(err) {
			return err
		}
	}
	return nil
}

// registerCmds adds the id to the members set and writes the record with
// its TTL. The record and its TTL are one script on one key, so a record
// never exists without expiry; no command spans two keys, so the pipeline
// is valid on Valkey Cluster (each command goes to its own slot's node).
// A registration also lifts a down mark (downmarks.go): the pod is here.
func (m *Member) registerCmds(load int64) []valkey.Completed {
	b := m.opt.Client.B()
	args := []string{m.opt.Address, strconv.FormatInt(load, 10), strconv.FormatInt(m.opt.TTL.Milliseconds(), 10)}
	if m.opt.Handoff != nil {
		args = append(args, handoffField, "1")
	}
	if m.draining.Load() {
		args = append(args, drainingField, "1") // a drain survives a re-registration
	}
	return []valkey.Completed{
		b.Del().Key(m.keys.down(m.opt.ID)).Build(),
		b.Sadd().Key(m.keys.members()).Member(m.opt.ID).Build(),
		b.Eval().Script(registerSrc).Numkeys(1).Key(m.keys.member(m.opt.ID)).Arg(args...).Build(),
	}
}

// Register makes the member live.
func (m *Member) Register(ctx context.Context, load int64) error {
	if err := m.do(ctx, m.registerCmds(load)...); err != nil {
		return fmt.Errorf("registry: register %s: %w", m.opt.ID, err)
	}
	return nil
}

// Heartbeat refreshes load and TTL. If the record is gone it re-asserts
// every destination and lock first and then re-creates the record, so the
// member is never seen live without its bindings. It reports whether it
// had to recover.
func (m *Member) Heartbeat(ctx context.Context, load int64) (recovered bool, err error) {
	hctx, cancel := context.WithTimeout(ctx, m.opt.Timeout)
	// The SADD puts the id back if a coordinator pruned it (prune.go) in
	// the instant this member registered; it changes nothing otherwise,
	// so it invalidates nothing.
	b := m.opt.Client.B()
	res := m.opt.Client.DoMulti(hctx,
		b.Sadd().Key(m.keys.members()).Member(m.opt.ID).Build(),
		b.Eval().Script(heartbeatSrc).Numkeys(1).Key(m.keys.member(m.opt.ID)).
			Arg(strconv.FormatInt(load, 10), strconv.FormatInt(m.opt.TTL.Milliseconds(), 10)).Build())
	cancel()
	err = res[0].Error()
	var ok int64
	if err == nil {
		ok, err = res[1].AsInt64()
	}
	if err != nil {
		return false, fmt.Errorf("registry: heartbeat %s: %w", m.opt.ID, err)
	}
	if ok == 1 {
		return false, nil
	}
	if err := m.recover(ctx, load); err != nil {
		return false, fmt.Errorf("registry: heartbeat %s: re-assert after record loss: %w", m.opt.ID, err)
	}
	m.opt.Logger.Warn("member record was gone; re-registered and re-asserted bindings", "member", m.opt.ID)
	return true, nil
}

// recover re-asserts every destination binding and every unexpired lock
// (only where the lock record is missing) in one pipelined round trip, and
// only once all of them are acknowledged re-creates the member record: on
// Cluster a pipeline's commands reach different nodes in no fixed order,
// and coordinators release a recovery hold on the record alone.
func (m *Member) recover(ctx context.Context, load int64) error {
	b := m.opt.Client.B()
	now := m.opt.Now()
	var cmds []valkey.Completed
	m.mu.Lock()
	for d := range m.dests {
		cmds = append(cmds, b.Sadd().Key(m.keys.dest(d)).Member(m.opt.ID).Build())
	}
	for id, l := range m.locks {
		ttl := l.lease
		if ttl > 0 {
			if ttl = l.deadline.Sub(now); ttl <= 0 {
				delete(m.locks, id) // its lease ran out: it must not come back
				continue
			}
		}
		args := append([]string{strconv.FormatInt(ttl.Milliseconds(), 10)}, l.fields...)
		cmds = append(cmds, b.Eval().Script(restoreLockSrc).Numkeys(1).Key(m.keys.lock(id)).Arg(args...).Build())
	}
	m.mu.Unlock()
	if len(cmds) > 0 {
		if err := m.do(ctx, cmds...); err != nil {
			return err
		}
	}
	return m.do(ctx, m.registerCmds(load)...)
}

// Deregister removes the member record and its members-set entry. Its
// destinations keep its id, so routes with reassign_orphans move them to a
// survivor at once; its locks answer "owner gone".
func (m *Member) Deregister(ctx context.Context) error {
	b := m.opt.Client.B()
	err := m.do(ctx,
		b.Del().Key(m.keys.member(m.opt.ID)).Build(),
		b.Srem().Key(m.keys.members()).Member(m.opt.ID).Build())
	if err != nil {
		return fmt.Errorf("registry: deregister %s: %w", m.opt.ID, err)
	}
	return nil
}

// Run registers, heartbeats every HeartbeatInterval with opt.Load() until
// ctx ends, then deregisters (with a fresh deadline, since ctx is done).
// A failed registration or heartbeat is retried with a short back-off
// inside the interval, not at the next tick: after a Valkey restart the
// pooled connections fail once each before fresh ones are dialled, and the
// re-assertion must not wait a whole interval for that. Failures are
// logged, at most once per interval.
func (m *Member) Run(ctx context.Context) error {
	for !m.retry(ctx, "registration", func() error { return m.Register(ctx, m.opt.Load()) }) {
		if ctx.Err() != nil {
			return ctx.Err()
		}
	}
	t := time.NewTicker(m.opt.HeartbeatInterval)
	defer t.Stop()
	var requests <-chan time.Time
	if m.opt.Handoff != nil {
		rt := time.NewTicker(m.opt.HandoffPoll)
		defer rt.Stop()
		requests = rt.C
	}
	for {
		select {
		case <-ctx.Done():
			if m.opt.Handoff != nil {
				return m.Leave(context.WithoutCancel(ctx))
			}
			dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), m.opt.Timeout)
			defer cancel()
			return m.Deregister(dctx)
		case <-requests:
			m.serveRequests(ctx)
		case <-t.C:
			m.retry(ctx, "heartbeat", func() error {
				_, err := m.Heartbeat(ctx, m.opt.Load())
				return err
			})
		}
	}
}

// retry runs f until it succeeds, ctx ends or one heartbeat interval has
// passed, and reports whether it succeeded.
func (m *Member) retry(ctx context.Context, what string, f func() error) bool {
	until := time.Now().Add(m.opt.HeartbeatInterval)
	backoff := 10 * time.Millisecond
	for {
		err := f()
		if err == nil {
			return true
		}
		if ctx.Err() != nil {
			return false
		}
		if time.Now().Add(backoff).After(until) {
			m.opt.Logger.Warn(what+" failed; retrying", "member", m.opt.ID, "err", err)
			return false
		}
		select {
		case <-ctx.Done():
			return false
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, max(m.opt.HeartbeatInterval/10, 10*time.Millisecond))
	}
}
