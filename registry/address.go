package registry

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
	"sync"
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

// addressResolver turns registered addresses into IP:port, resolving
// hostnames with a small TTL cache so DNS never sits on the request path
// more than once per TTL.
type addressResolver struct {
	lookup func(ctx context.Context, host string) ([]string, error)
	ttl    time.Duration
	now    func() time.Time

	mu    sync.Mutex
	hosts map[string]dnsEntry
}

type dnsEntry struct {
	ip      netip.Addr
	expires time.Time
}

const maxDNSEntries = 10000

func newAddressResolver(lookup func(context.Context, string) ([]string, error), ttl time.Duration, now func() time.Time) *addressResolver {
	return &addressResolver{lookup: lookup, ttl: ttl, now: now, hosts: make(map[string]dnsEntry)}
}

// resolve returns raw as "IP:port" (IPv6 bracketed).
func (r *addressResolver) resolve(ctx context.Context, raw string) (string, error) {
	host, port, err := splitAddress(raw)
	if err != nil {
		return "", err
	}
	ip, err := netip.ParseAddr(host)
	if err == nil {
		if ip.Zone() != "" || ip.IsUnspecified() || ip.IsMulticast() {
			return "", fmt.Errorf("%w: %q: %s is not a unicast address", ErrBadAddress, raw, ip)
		}
		return netip.AddrPortFrom(ip.Unmap(), port).String(), nil
	}
	ip, err = r.lookupHost(ctx, host)
	if err != nil {
		return "", fmt.Errorf("%w: %q: %v", ErrBadAddress, raw, err)
	}
	return netip.AddrPortFrom(ip, port).String(), nil
}

func (r *addressResolver) lookupHost(ctx context.Context, host string) (netip.Addr, error) {
	now := r.now()
	r.mu.Lock()
	e, ok := r.hosts[host]
	r.mu.Unlock()
	if ok && now.Before(e.expires) {
		return e.ip, nil
	}
	addrs, err := r.lookup(ctx, host)
	if err != nil {
		return netip.Addr{}, fmt.Errorf("resolve %s: %w", host, err)
	}
	var ip netip.Addr
	for _, a := range addrs {
		cand, perr := netip.ParseAddr(a)
		if perr != nil {
			continue
		}
		if !ip.IsValid() || (cand.Is4() && !ip.Is4()) { // prefer IPv4, as most pod networks do
			ip = cand.Unmap()
		}
	}
	if !ip.IsValid() {
		return netip.Addr{}, fmt.Errorf("resolve %s: no usable address in %v", host, addrs)
	}
	r.mu.Lock()
	if len(r.hosts) >= maxDNSEntries {
		clear(r.hosts)
	}
	r.hosts[host] = dnsEntry{ip: ip, expires: now.Add(r.ttl)}
	r.mu.Unlock()
	return ip, nil
}
