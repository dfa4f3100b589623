package route

import "strings"

// hasDotSegmentWithParams reports whether a path segment is "." or ".."
// carrying parameters ("..;x", "%2e%2e;", ".;"). Envoy resolves such
// segments only since 1.36.10, 1.37.6, 1.38.4 and 1.39.1
// (CVE-2026-73551): before, "/tenants/t1/..;/t2/keys" reaches
// coord-extproc as is, is routed to t1's pod, and a backend that strips
// ";params" per RFC 3986 serves t2 there. Such a path is refused whatever
// Envoy did, and a plain ".." never reaches here with normalize_path on.
func hasDotSegmentWithParams(path string) bool {
	if strings.IndexByte(path, ';') < 0 { // nearly every path: one vectorized scan
		return false
	}
	for path != "" {
		seg := path
		if i := strings.IndexByte(path, '/'); i >= 0 {
			seg, path = path[:i], path[i+1:]
		} else {
			path = ""
		}
		if i := strings.IndexByte(seg, ';'); i >= 0 && isDots(seg[:i]) {
			return true
		}
	}
	return false
}

// isDots: "." or "..", each dot possibly percent-encoded (%2e, %2E).
func isDots(s string) bool {
	n := 0
	for s != "" {
		switch {
		case s[0] == '.':
			s = s[1:]
		case len(s) >= 3 && s[0] == '%' && s[1] == '2' && (s[2] == 'e' || s[2] == 'E'):
			s = s[3:]
		default:
			return false
		}
		n++
	}
	return n == 1 || n == 2
}
