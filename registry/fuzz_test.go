package registry

import (
	"net/netip"
	"testing"
)

// FuzzAddress: a registered address is either refused or becomes a
// routable IP:port that the policy accepts; nothing panics.
func FuzzAddress(f *testing.F) {
	for _, s := range []string{"http://10.0.0.1:8080", "https://[fd00::1]", "pod.local:80", "[fe80::1%eth0]:80",
		"http://169.254.169.254:80", "127.0.0.1:0", "http://[::ffff:127.0.0.1]:80", "\x00:1", "ftp://x:1"} {
		f.Add(s)
	}
	r := newAddressResolver(nil, 0, nil, addressPolicy{}, nil)
	f.Fuzz(func(t *testing.T, raw string) {
		host, port, err := splitAddress(raw)
		if err != nil {
			return
		}
		if host == "" || port == 0 {
			t.Fatalf("splitAddress(%q) = %q, %d", raw, host, port)
		}
		ip, err := netip.ParseAddr(host)
		if err != nil {
			return // a hostname: resolved in the background, not here
		}
		got, err := r.resolve(raw)
		if err != nil {
			return
		}
		ap, perr := netip.ParseAddrPort(got)
		if perr != nil || r.policy.check(ap.Addr()) != nil || ap.Port() != port || ap.Addr() != ip.Unmap() {
			t.Fatalf("resolve(%q) = %q (%v)", raw, got, perr)
		}
	})
}

// FuzzValidateID: an accepted id is visible ASCII of bounded length and no
// path step.
func FuzzValidateID(f *testing.F) {
	for _, s := range []string{"t1", ".", "..", "a b", "é", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, id string) {
		if ValidateID(id) != nil {
			return
		}
		if id == "." || id == ".." || len(id) == 0 || len(id) > MaxIDLen {
			t.Fatalf("accepted %q", id)
		}
		for i := 0; i < len(id); i++ {
			if id[i] <= ' ' || id[i] >= 0x7f {
				t.Fatalf("accepted %q", id)
			}
		}
	})
}
