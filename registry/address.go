package registry

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// splitAddress accepts the address forms pods register (http://host:port,
// https://host:port, host:port, IP:port, [IPv6]:port) and returns host and
// port. The scheme only supplies a default port; Envoy's ORIGINAL_DST
// cluster wants a bare IP:port.
func splitAddress(raw string) (host string, port uint16, err error) {
	raw = strings.TrimSpace(raw)
	if raw == "" {
		return "", 0, fmt.Errorf("%w: empty", ErrBadAddress)
	}
	defaultPort := ""
	if i := strings.Index(raw, "://"); i >= 0 {
		u, perr := url.Parse(raw)
		if perr != nil {
			return "", 0, fmt.Errorf("%w: %q: %v", ErrBadAddress, raw, perr)
		}
		switch strings.ToLower(u.Scheme) {
		case "http":
			defaultPort = "80"
		case "https":
			defaultPort = "443"
		default:
			return "", 0, fmt.Errorf("%w: %q: scheme %q is not http or https", ErrBadAddress, raw, u.Scheme)
		}
		host, p := u.Hostname(), u.Port()
		if p == "" {
			p = defaultPort
		}
		raw = net.JoinHostPort(host, p)
	}
	h, p, serr := net.SplitHostPort(raw)
	if serr != nil {
		return "", 0, fmt.Errorf("%w: %q: %v", ErrBadAddress, raw, serr)
	}
	n, perr := strconv.ParseUint(p, 10, 16)
	if perr != nil || n == 0 {
		return "", 0, fmt.Errorf("%w: %q: port %q is not 1-65535", ErrBadAddress, raw, p)
	}
	if h == "" {
		return "", 0, fmt.Errorf("%w: %q: no host", ErrBadAddress, raw)
	}
	return h, uint16(n), nil
}

// addressPolicy refuses upstreams that would point Envoy at itself or at
// a cloud metadata service (SPEC §4): loopback, link-local (169.254.0.0/16
// holds the usual metadata address), multicast, unspecified and "this
// network" (0.0.0.0/8), zoned, and the metadata addresses outside those
// ranges; an IPv6 address embedding an IPv4 one (NAT64, 6to4, Teredo,
// IPv4-compatible, mapped) is judged by the IPv4 too. Networks in allow
// are accepted anyway (tests and a local demo allow 127.0.0.0/8). With
// only set (--upstream-cidrs, the pod CIDR: what production should run),
// nothing outside those networks is accepted at all.
type addressPolicy struct{ allow, only []netip.Prefix }

var metadataAddrs = []netip.Addr{
	netip.MustParseAddr("fd00:ec2::254"),   // AWS IMDS over IPv6
	netip.MustParseAddr("100.100.100.200"), // Alibaba Cloud
	netip.MustParseAddr("168.63.129.16"),   // Azure wire server
	netip.MustParseAddr("192.0.0.192"),     // Oracle Cloud
	netip.MustParseAddr("fd20:ce::254"),    // Google Cloud IPv6
}

var (
	thisNetwork = netip.MustParsePrefix("0.0.0.0/8")
	nat64       = netip.MustParsePrefix("64:ff9b::/96")
	sixToFour   = netip.MustParsePrefix("2002::/16")
	teredo      = netip.MustParsePrefix("2001::/32")
	v4Compat    = netip.MustParsePrefix("::/96")
)

func (p addressPolicy) check(ip netip.Addr) error {
	ip = ip.Unmap()
	if len(p.only) > 0 && !containsAny(p.only, ip) {
		return fmt.Errorf("%w: %s is outside --upstream-cidrs %v", ErrBadAddress, ip, p.only)
	}
	if containsAny(p.allow, ip) {
		return nil
	}
	if why := denied(ip); why != "" {
		return fmt.Errorf("%w: %s is %s; allow it with --allow-upstream", ErrBadAddress, ip, why)
	}
	if v4, ok := embeddedV4(ip); ok && !containsAny(p.allow, v4) {
		if why := denied(v4); why != "" {
			return fmt.Errorf("%w: %s embeds %s, which is %s; allow it with --allow-upstream", ErrBadAddress, ip, v4, why)
		}
	}
	return nil
}

// denied says why ip may not be an upstream ("" if it may).
func denied(ip netip.Addr) string {
	switch {
	case ip.Zone() != "":
		return "a zoned address"
	case ip.IsUnspecified() || thisNetwork.Contains(ip):
		return "unspecified (this host)"
	case ip.IsLoopback():
		return "loopback (Envoy itself)"
	case ip.IsLinkLocalUnicast() || ip.IsLinkLocalMulticast():
		return "link-local (cloud metadata lives there)"
	case ip.IsMulticast():
		return "multicast"
	case slices.Contains(metadataAddrs, ip):
		return "a cloud metadata address"
	}
	return ""
}

// embeddedV4 returns the IPv4 address an IPv6 one carries, if any.
func embeddedV4(ip netip.Addr) (netip.Addr, bool) {
	if !ip.Is6() {
		return netip.Addr{}, false
	}
	b := ip.As16()
	switch {
	case nat64.Contains(ip), v4Compat.Contains(ip) && !ip.IsUnspecified() && !ip.IsLoopback():
		return netip.AddrFrom4([4]byte(b[12:16])), true
	case sixToFour.Contains(ip):
		return netip.AddrFrom4([4]byte(b[2:6])), true
	case teredo.Contains(ip): // the client's address, obfuscated
		return netip.AddrFrom4([4]byte{^b[12], ^b[13], ^b[14], ^b[15]}), true
	}
	return netip.Addr{}, false
}

func containsAny(ps []netip.Prefix, ip netip.Addr) bool {
	for _, p := range ps {
		if p.Contains(ip) {
			return true
		}
	}
	return false
}

// addressResolver turns registered addresses into IP:port without ever
// making a request wait for DNS: a hostname is resolved in the background
// the first time it is seen (the member is unroutable until then), failures
// are retried with back-off, and an expired answer keeps being used while it
// is refreshed. When a hostname's answer appears or changes, changed is
// called so cached member entries are rebuilt.
type addressResolver struct {
	lookup  func(ctx context.Context, host string) ([]string, error)
	ttl     time.Duration
	now     func() time.Time
	policy  addressPolicy
	changed func(host string)

	// gen moves whenever any name's answer changes; entries built from an
	// older answer are rebuilt (see memberFresh).
	gen atomic.Uint64

	mu      sync.Mutex
	hosts   map[string]*dnsEntry
	lookups chan struct{} // bounds concurrent lookups
	quit    chan struct{}
	wg      sync.WaitGroup
}

type dnsEntry struct {
	ip     netip.Addr    // zero until first resolved; kept while DNS fails
	err    error         // the last failure, while ip is zero
	wanted time.Time     // last asked for
	first  chan struct{} // closed once the first lookup has answered
	// firstBy ends every wait for the first answer: the first request to
	// wait sets it to the end of its budget, and nothing waits after it.
	firstBy time.Time
}

// DNS timing: one lookup's deadline, the back-off after failures, and how
// long a name nobody asks for is kept up to date.
const (
	maxDNSEntries  = 10000
	dnsTimeout     = 2 * time.Second
	dnsRetryMin    = 250 * time.Millisecond
	dnsRetryMax    = 30 * time.Second
	dnsIdle        = 10 * time.Minute
	maxDNSInflight = 16
)

// ErrResolving: a member's hostname has no answer yet; the member is
// unroutable until its background lookup succeeds.
var ErrResolving = errors.New("hostname not resolved yet")

func newAddressResolver(lookup func(context.Context, string) ([]string, error), ttl time.Duration, now func() time.Time, policy addressPolicy, changed func(string)) *addressResolver {
	if changed == nil {
		changed = func(string) {}
	}
	return &addressResolver{lookup: lookup, ttl: ttl, now: now, policy: policy, changed: changed,
		hosts: map[string]*dnsEntry{}, lookups: make(chan struct{}, maxDNSInflight), quit: make(chan struct{})}
}

func (r *addressResolver) stop() {
	close(r.quit)
	r.wg.Wait()
}

// resolve returns raw as "IP:port" (IPv6 bracketed), or why it cannot be
// routed now. It never waits for DNS (awaitFirst does, within a budget).
func (r *addressResolver) resolve(raw string) (string, error) {
	host, port, err := splitAddress(raw)
	if err != nil {
		return "", err
	}
	ip, err := netip.ParseAddr(host)
	if err != nil {
		if ip, err = r.cached(host); err != nil {
			return "", fmt.Errorf("%q: %w", raw, err)
		}
	}
	if err := r.policy.check(ip); err != nil {
		return "", fmt.Errorf("%q: %w", raw, err)
	}
	return netip.AddrPortFrom(ip.Unmap(), port).String(), nil
}

// awaitFirst waits for the first answer for raw's hostname, within the
// decision's budget (SPEC §4: the only wait allowed). Nothing waits for an
// IP literal, a name already answered (rightly or not), or once the first
// request's budget for that name has run out: a resolver that never
// answers costs one budget, once, not one per request.
func (r *addressResolver) awaitFirst(ctx context.Context, raw string) {
	host, _, err := splitAddress(raw)
	if err != nil {
		return
	}
	if _, err := netip.ParseAddr(host); err == nil {
		return
	}
	limit := DefaultDecisionTimeout
	if until, ok := ctx.Value(budgetKey{}).(*time.Time); ok {
		limit = time.Until(*until)
	} else if dl, ok := ctx.Deadline(); ok {
		limit = time.Until(dl)
	}
	_, _ = r.cached(host) // starts the lookup of a new name
	r.mu.Lock()
	e := r.hosts[host]
	if e == nil {
		r.mu.Unlock()
		return
	}
	now := time.Now()
	if e.firstBy.IsZero() {
		e.firstBy = now.Add(limit)
	}
	wait := min(limit, e.firstBy.Sub(now))
	r.mu.Unlock()
	if wait <= 0 {
		return
	}
	t := time.NewTimer(wait)
	defer t.Stop()
	select {
	case <-e.first:
	case <-t.C:
	case <-ctx.Done():
	}
}

// cached answers from the DNS cache; a name seen for the first time gets a
// background loop that keeps its answer current (maintain).
func (r *addressResolver) cached(host string) (netip.Addr, error) {
	now := r.now()
	r.mu.Lock()
	defer r.mu.Unlock()
	e, ok := r.hosts[host]
	if !ok {
		if len(r.hosts) >= maxDNSEntries {
			return netip.Addr{}, fmt.Errorf("%w: %s: %d hostnames already tracked", ErrBadAddress, host, maxDNSEntries)
		}
		e = &dnsEntry{first: make(chan struct{})}
		r.hosts[host] = e
		r.wg.Add(1)
		go r.maintain(host, e)
	}
	e.wanted = now
	switch {
	case e.ip.IsValid():
		return e.ip, nil
	case e.err != nil:
		return netip.Addr{}, fmt.Errorf("%w: %s: %v (retrying)", ErrBadAddress, host, e.err)
	default:
		return netip.Addr{}, fmt.Errorf("%w: %s", ErrResolving, host)
	}
}

// maintain resolves host off the request path, again every TTL after a
// success and with back-off after a failure (keeping the last answer), and
// reports every change of answer; it stops once nobody asked for host
// within dnsIdle.
func (r *addressResolver) maintain(host string, e *dnsEntry) {
	defer r.wg.Done()
	backoff := time.Duration(0)
	answered := false
	for {
		select {
		case r.lookups <- struct{}{}:
		case <-r.quit:
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), dnsTimeout)
		addrs, err := r.lookup(ctx, host)
		cancel()
		<-r.lookups
		ip := netip.Addr{}
		if err == nil {
			ip, err = pickAddr(addrs)
		}
		wait := r.ttl
		r.mu.Lock()
		before := e.ip
		if err == nil {
			e.ip, e.err, backoff = ip, nil, 0
		} else {
			backoff = min(max(2*backoff, dnsRetryMin), dnsRetryMax)
			wait = backoff
			if !e.ip.IsValid() {
				e.err = err
			}
		}
		after := e.ip
		r.mu.Unlock()
		if after != before {
			r.gen.Add(1)
			r.changed(host)
		}
		if !answered {
			answered = true
			close(e.first)
		}
		select {
		case <-r.quit:
			return
		case <-time.After(wait):
		}
		r.mu.Lock()
		idle := r.now().Sub(e.wanted) > dnsIdle
		if idle {
			delete(r.hosts, host)
		}
		r.mu.Unlock()
		if idle {
			return
		}
	}
}

// pickAddr prefers IPv4, as most pod networks do.
func pickAddr(addrs []string) (netip.Addr, error) {
	var ip netip.Addr
	for _, a := range addrs {
		cand, perr := netip.ParseAddr(a)
		if perr != nil {
			continue
		}
		if !ip.IsValid() || (cand.Is4() && !ip.Is4()) {
			ip = cand.Unmap()
		}
	}
	if !ip.IsValid() {
		return netip.Addr{}, fmt.Errorf("no usable address in %v", addrs)
	}
	return ip, nil
}
