package route

import (
	"fmt"
	"net/url"
	"strings"
)

type segKind uint8

const (
	segLiteral segKind = iota
	segDest            // {destination}
	segLock            // {lock}
	segAny             // *
	segRest            // **
)

type segment struct {
	kind    segKind
	literal string
}

// template is a compiled path template: literal segments, {destination} or
// {lock} capturing one segment, * matching one, ** matching the rest.
type template struct {
	segs    []segment
	capture segKind // segDest, segLock or segLiteral when nothing is captured
}

func compileTemplate(s string) (template, error) {
	if !strings.HasPrefix(s, "/") {
		return template{}, fmt.Errorf("path %q must start with /", s)
	}
	var t template
	parts := strings.Split(s[1:], "/")
	if s == "/" {
		parts = nil
	}
	for i, p := range parts {
		var seg segment
		switch {
		case p == "{destination}":
			seg.kind = segDest
		case p == "{lock}":
			seg.kind = segLock
		case p == "*":
			seg.kind = segAny
		case p == "**":
			if i != len(parts)-1 {
				return template{}, fmt.Errorf("path %q: ** must be the last segment", s)
			}
			seg.kind = segRest
		case p == "":
			return template{}, fmt.Errorf("path %q: empty segment", s)
		case strings.ContainsAny(p, "{}*?#"):
			return template{}, fmt.Errorf("path %q: segment %q: only {destination}, {lock}, * and ** are special", s, p)
		default:
			seg.literal = p
		}
		if seg.kind == segDest || seg.kind == segLock {
			if t.capture != segLiteral {
				return template{}, fmt.Errorf("path %q: at most one {destination} or {lock}", s)
			}
			t.capture = seg.kind
		}
		t.segs = append(t.segs, seg)
	}
	return t, nil
}

// match reports whether path (without query) fits the template and returns
// the captured segment, still percent-encoded. One trailing slash is
// ignored; empty segments never match. It does not allocate.
func (t *template) match(path string) (captured string, ok bool) {
	if path == "" || path[0] != '/' {
		return "", false
	}
	p := path[1:]
	if n := len(p); n > 0 && p[n-1] == '/' {
		p = p[:n-1]
	}
	exhausted := p == ""
	for _, seg := range t.segs {
		if seg.kind == segRest {
			return captured, true
		}
		if exhausted {
			return "", false
		}
		cur := p
		if j := strings.IndexByte(p, '/'); j >= 0 {
			cur, p = p[:j], p[j+1:]
		} else {
			exhausted = true
		}
		if cur == "" {
			return "", false
		}
		switch seg.kind {
		case segLiteral:
			if cur != seg.literal {
				return "", false
			}
		case segDest, segLock:
			captured = cur
		}
	}
	if !exhausted {
		return "", false
	}
	return captured, true
}

// decodeID percent-decodes a captured segment; it allocates only when the
// segment contains an escape.
func decodeID(s string) (string, error) {
	if strings.IndexByte(s, '%') < 0 {
		return s, nil
	}
	return url.PathUnescape(s)
}
