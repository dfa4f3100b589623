package route

import (
	"fmt"
	"strings"
)

// Match is the outcome of matching a request against the table.
type Match struct {
	Rule *Rule
	// ID is the destination or lock id (decoded, validated); empty for
	// create and pass.
	ID string
}

// Match finds the first rule that fits the request. header returns a
// request header's value ("" when absent) for a lower-case name. A rule
// that takes its id from a header only matches when that header is
// present. Errors wrap ErrNoRoute, ErrInvalidPath, or ErrInvalidID (then
// the Match names the rule that matched).
// RepeatedHeader is what a header lookup passed to Match returns for a
// header the request carries more than once: the request is then refused
// (400) rather than routed on one of the values.
const RepeatedHeader = "\x00repeated"

func (t *Table) Match(method, path string, header func(name string) string) (Match, error) {
	if i := strings.IndexByte(path, '?'); i >= 0 {
		path = path[:i]
	}
	if hasDotSegmentWithParams(path) {
		return Match{}, ErrInvalidPath
	}
	for _, r := range t.Rules {
		if !r.allows(method) {
			continue
		}
		var raw string
		if r.tmpl != nil {
			c, ok := r.tmpl.match(path)
			if !ok {
				continue
			}
			raw = c
		}
		if h := r.idHeader(); h != "" {
			if raw = header(h); raw == "" {
				continue
			}
			if raw == RepeatedHeader {
				return Match{Rule: r}, fmt.Errorf("%w: header %s sent more than once", ErrInvalidID, h)
			}
		} else if raw != "" {
			var err error
			if raw, err = decodeID(raw); err != nil {
				return Match{Rule: r}, fmt.Errorf("%w: bad percent-encoding", ErrInvalidID)
			}
		}
		m := Match{Rule: r, ID: raw}
		if r.Action == ActionCreate || r.Action == ActionPass {
			return m, nil
		}
		if !r.ValidID(raw) {
			return m, fmt.Errorf("%w: does not match %s", ErrInvalidID, r.IDPattern)
		}
		return m, nil
	}
	return Match{}, ErrNoRoute
}

func (r *Rule) allows(method string) bool {
	if len(r.methods) == 0 {
		return true
	}
	for _, m := range r.methods {
		if m == method {
			return true
		}
	}
	return false
}

func (r *Rule) idHeader() string {
	if r.DestinationHeader != "" {
		return r.DestinationHeader
	}
	return r.LockHeader
}

// ValidID reports whether id satisfies the rule's id pattern.
func (r *Rule) ValidID(id string) bool {
	if id == "." || id == ".." { // path steps, not names, whatever the pattern says
		return false
	}
	if r.idRe != nil {
		return r.idRe.MatchString(id)
	}
	if len(id) == 0 || len(id) > 128 {
		return false
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '.' || c == ':' || c == '-') {
			return false
		}
	}
	return true
}

// WantsBody reports whether a create rule needs the response body.
func (r *Rule) WantsBody() bool { return r.Action == ActionCreate && r.IDFromJSON != "" }

// matchesEverything reports whether the rule matches every request: no
// method list, no id header to require, and no path or a path of "/**".
func (r *Rule) matchesEverything() bool {
	if len(r.methods) > 0 || r.idHeader() != "" {
		return false
	}
	return r.tmpl == nil || (len(r.tmpl.segs) == 1 && r.tmpl.segs[0].kind == segRest)
}
