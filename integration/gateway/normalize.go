package main

import (
	"fmt"
	"strings"

	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
)

// pathPolicy is the http_connection_manager's path handling, applied to
// :path before any filter or route sees it, as Envoy's
// ConnectionManagerUtility::maybeNormalizePath does
// (source/common/http/conn_manager_utility.cc): escaped slashes first
// (path_with_escaped_slashes_action), then normalize_path
// (PathUtil::canonicalPath, source/common/http/path_utility.cc), then
// merge_slashes (PathUtil::mergeSlashes). The query string is left alone.
type pathPolicy struct {
	rejectEscapedSlashes bool
	normalize            bool
	mergeSlashes         bool
	// keepDotParams plays Envoy before CVE-2026-73551's fix (1.37.0–1.37.5,
	// 1.38.0–1.38.3, 1.39.0): "." and ".." carrying ";parameters" are not
	// dot segments and stay in the path.
	keepDotParams bool
}

// apply returns the path Envoy would route and forward, or ok=false where
// Envoy answers 400 itself.
func (p pathPolicy) apply(raw string) (string, bool) {
	if strings.ContainsRune(raw, '#') {
		// A fragment in the request target is a 400 before anything else
		// (http_reject_path_with_fragment, on by default).
		return "", false
	}
	path, query, hasQuery := strings.Cut(raw, "?")
	if p.rejectEscapedSlashes {
		l := strings.ToLower(path)
		if strings.Contains(l, "%2f") || strings.Contains(l, "%5c") {
			return "", false
		}
	}
	if p.normalize {
		var ok bool
		if path, ok = canonicalPath(path, p.keepDotParams); !ok {
			return "", false
		}
	}
	if p.mergeSlashes {
		for strings.Contains(path, "//") {
			path = strings.ReplaceAll(path, "//", "/")
		}
	}
	if hasQuery {
		path += "?" + query
	}
	return path, true
}

// canonicalPath removes dot segments the way Envoy's canonicalizer does,
// as its own tests pin down (test/common/http/path_utility_test.cc,
// NormalizeValidPaths and InvalidPaths): a path gains a leading "/", "\" is
// a separator, "." and ".." may be percent-encoded (%2E) or carry
// ";parameters", ".." stops at the root, a trailing dot segment leaves a
// trailing "/", other escapes are kept as sent, and a NUL or a malformed
// escape makes the path invalid.
func canonicalPath(path string, keepDotParams bool) (string, bool) {
	for i := 0; i < len(path); i++ {
		if path[i] != '%' {
			continue
		}
		if i+2 >= len(path) || !isHex(path[i+1]) || !isHex(path[i+2]) || path[i+1:i+3] == "00" {
			return "", false
		}
	}
	path = strings.ReplaceAll(path, `\`, "/")
	segs := strings.Split(strings.TrimPrefix(path, "/"), "/")
	out := make([]string, 0, len(segs))
	trailing := false
	for _, s := range segs {
		name, _, params := strings.Cut(strings.ReplaceAll(strings.ReplaceAll(s, "%2E", "."), "%2e", "."), ";")
		if params && keepDotParams {
			name = s // not a dot segment to an unpatched Envoy
		}
		switch name {
		case ".":
			trailing = true
		case "..":
			if len(out) > 0 {
				out = out[:len(out)-1]
			}
			trailing = true
		default:
			out = append(out, s)
			trailing = false
		}
	}
	p := "/" + strings.Join(out, "/")
	if trailing && !strings.HasSuffix(p, "/") {
		p += "/"
	}
	return p, true
}

func isHex(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
}

// readPathPolicy reads the settings; actions the stand-in does not
// implement are refused.
func readPathPolicy(hcm *hcmv3.HttpConnectionManager) (pathPolicy, error) {
	p := pathPolicy{normalize: hcm.GetNormalizePath().GetValue(), mergeSlashes: hcm.GetMergeSlashes()}
	switch a := hcm.GetPathWithEscapedSlashesAction(); a {
	case hcmv3.HttpConnectionManager_IMPLEMENTATION_SPECIFIC_DEFAULT, hcmv3.HttpConnectionManager_KEEP_UNCHANGED:
	case hcmv3.HttpConnectionManager_REJECT_REQUEST:
		p.rejectEscapedSlashes = true
	default:
		return p, fmt.Errorf("path_with_escaped_slashes_action %s is not implemented by the stand-in", a)
	}
	return p, nil
}
