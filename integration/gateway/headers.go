package main

import (
	"net/http"
	"strconv"
	"strings"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
)

// headerMap is Envoy's view of headers: lower-case names, ordered,
// repeatable, pseudo-headers first.
type headerMap []header

type header struct{ key, value string }

// requestHeaders builds the map Envoy's HTTP/1 codec hands the filter
// chain: :authority, :path (the request target as sent), :method,
// :scheme, then the headers as sent.
func requestHeaders(r *http.Request) headerMap {
	path := r.RequestURI
	if path == "" { // a request not read from the wire (tests)
		path = r.URL.RequestURI()
	}
	h := headerMap{{":authority", r.Host}, {":path", path}, {":method", r.Method}, {":scheme", "http"}}
	for k, vs := range r.Header {
		for _, v := range vs {
			h = append(h, header{strings.ToLower(k), v})
		}
	}
	return h
}

func responseHeaders(status int, hdr http.Header) headerMap {
	h := headerMap{{":status", strconv.Itoa(status)}}
	for k, vs := range hdr {
		for _, v := range vs {
			h = append(h, header{strings.ToLower(k), v})
		}
	}
	return h
}

func (h headerMap) get(key string) (string, bool) {
	for _, e := range h {
		if e.key == key {
			return e.value, true
		}
	}
	return "", false
}

// remove drops every value of key (HeaderMap::remove).
func (h *headerMap) remove(key string) {
	out := (*h)[:0]
	for _, e := range *h {
		if e.key != key {
			out = append(out, e)
		}
	}
	*h = out
}

// set replaces every value of key with one (HeaderMap::setCopy).
func (h *headerMap) set(key, value string) {
	for i, e := range *h {
		if e.key == key {
			(*h)[i].value = value
			rest := (*h)[i+1:]
			tail := headerMap(rest)
			tail.remove(key)
			*h = append((*h)[:i+1], tail...)
			return
		}
	}
	*h = append(*h, header{key, value})
}

// add appends a value (HeaderMap::addCopy).
func (h *headerMap) add(key, value string) { *h = append(*h, header{key, value}) }

// proto converts to the ext_proc wire form. Envoy sends raw_value
// (MutationUtils::headersToProto with send_header_raw_value on).
func (h headerMap) proto() *corev3.HeaderMap {
	out := &corev3.HeaderMap{Headers: make([]*corev3.HeaderValue, len(h))}
	for i, e := range h {
		out.Headers[i] = &corev3.HeaderValue{Key: e.key, RawValue: []byte(e.value)}
	}
	return out
}

// httpHeader converts to Go's form, leaving out pseudo-headers.
func (h headerMap) httpHeader() http.Header {
	out := http.Header{}
	for _, e := range h {
		if !strings.HasPrefix(e.key, ":") {
			out.Add(e.key, e.value)
		}
	}
	return out
}

// validHeaderName and validHeaderValue mirror
// Http::HeaderUtility::headerNameIsValid / headerValueIsValid: names are
// tokens (or a pseudo-header), values have no NUL, CR or LF.
func validHeaderName(name string) bool {
	if name == "" {
		return false
	}
	n := strings.TrimPrefix(name, ":")
	if n == "" {
		return false
	}
	for i := 0; i < len(n); i++ {
		c := n[i]
		if c <= ' ' || c >= 0x7f || strings.IndexByte(`"(),/:;<=>?@[\]{}`, c) >= 0 {
			return false
		}
	}
	return true
}

func validHeaderValue(v string) bool {
	return !strings.ContainsAny(v, "\x00\r\n")
}
