package main

import "testing"

// The cases of Envoy's test/common/http/path_utility_test.cc
// (NormalizeValidPaths, InvalidPaths), plus merge_slashes and the escaped
// slash rejection the shipped configs turn on.
func TestPathPolicyMirrorsEnvoy(t *testing.T) {
	p := pathPolicy{rejectEscapedSlashes: true, normalize: true, mergeSlashes: true}
	for in, want := range map[string]string{
		"/a/b/../c": "/a/c", "/a/b/./c": "/a/b/c", "a/b/../c": "/a/c", "/a/b/../../../../c": "/c",
		`/a/..\c`: "/c", "/%c0%af": "/%c0%af", "/a/b/%2E%2E/c": "/a/c", "/a/b/%2E./c": "/a/c",
		"/a/b/%2E/c": "/a/b/c", "..": "/", "/../a/b": "/a/b", "/./a/b": "/a/b", "/xyz/..;foo=bar/abc": "/abc",
		"/xyz/..;foo=bar": "/", "/xyz/.;foo=bar/abc": "/xyz/abc", "/xyz": "/xyz", "/x/y/z": "/x/y/z",
		"//a///b": "/a/b", "/tenants/t1/../t2/keys?q=/../x": "/tenants/t2/keys?q=/../x",
	} {
		if got, ok := p.apply(in); !ok || got != want {
			t.Errorf("apply(%q) = %q, %v; want %q", in, got, ok, want)
		}
	}
	for _, bad := range []string{"/a#b", "/tenants/t1#/../t2", "/a?q=1#f", "/xyz/.%00../abc", "/xyz/%00.%00./abc", "/xyz/AAAAA%%0000/abc", "/a%2Fb", "/a%5cb", "/a%2f..%2fb"} {
		if got, ok := p.apply(bad); ok {
			t.Errorf("apply(%q) = %q, want refused (400)", bad, got)
		}
	}
	if got, ok := (pathPolicy{}).apply("/a/../b//c"); !ok || got != "/a/../b//c" {
		t.Errorf("with every setting off the path must pass untouched, got %q", got)
	}
}

// Before CVE-2026-73551's fix Envoy leaves dot segments with parameters
// in the path (--unpatched-paths plays it); plain ones it still resolves.
func TestUnpatchedEnvoyKeepsDotSegmentsWithParameters(t *testing.T) {
	p := pathPolicy{normalize: true, keepDotParams: true}
	for in, want := range map[string]string{
		"/tenants/t1/..;/t2/keys": "/tenants/t1/..;/t2/keys", "/xyz/.;foo=bar/abc": "/xyz/.;foo=bar/abc",
		"/a/b/../c": "/a/c", "/a/%2E%2E;x/b": "/a/%2E%2E;x/b",
	} {
		if got, ok := p.apply(in); !ok || got != want {
			t.Errorf("apply(%q) = %q, %v; want %q", in, got, ok, want)
		}
	}
}
