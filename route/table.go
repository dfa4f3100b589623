package route

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"regexp"
	"strings"

	"gopkg.in/yaml.v3"
)

// Action is what a rule does with a matching request.
type Action string

// Actions of SPEC §5.2.
const (
	ActionRoute     Action = "route"
	ActionRouteLock Action = "route_lock"
	ActionCreate    Action = "create"
	ActionDelete    Action = "delete"
	ActionPass      Action = "pass"
)

// DefaultIDPattern is the id pattern when the file names none.
const DefaultIDPattern = `^[A-Za-z0-9_.:-]{1,128}$`

// Outcomes of Match that callers branch on.
var (
	ErrNoRoute   = errors.New("no route")
	ErrInvalidID = errors.New("invalid id")
	// ErrInvalidPath: a path segment some Envoy versions do not resolve
	// (dotparams.go).
	ErrInvalidPath = errors.New("dot segment with parameters in the path")
)

// Rule is one entry of the table, as written in the file.
type Rule struct {
	Name            string   `yaml:"name"`
	Methods         []string `yaml:"methods"`
	Path            string   `yaml:"path"`
	Action          Action   `yaml:"action"`
	ExpectedStatus  int      `yaml:"expected_status"`
	IDFromJSON      string   `yaml:"id_from_json"`
	IDFromHeader    string   `yaml:"id_from_header"`
	ClaimOnMiss     bool     `yaml:"claim_on_miss"`
	ReassignOrphans bool     `yaml:"reassign_orphans"`
	// KeepDeadBindings: a delete whose members are all dead answers 404
	// and leaves the binding, instead of removing it and answering the
	// expected status without any pod's say (the Node library's way, and
	// the default).
	KeepDeadBindings  bool   `yaml:"keep_dead_bindings"`
	DestinationHeader string `yaml:"destination_header"`
	LockHeader        string `yaml:"lock_header"`
	IDPattern         string `yaml:"id_pattern"`

	tmpl    *template
	idRe    *regexp.Regexp // nil: the default pattern, checked by hand
	methods []string
}

// Table is an ordered rule list; the first matching rule wins.
type Table struct {
	Rules []*Rule
}

type file struct {
	IDPattern string      `yaml:"id_pattern"`
	Rules     []yaml.Node `yaml:"rules"`
}

var ruleKeys = map[string]bool{
	"name": true, "methods": true, "path": true, "action": true, "expected_status": true,
	"id_from_json": true, "id_from_header": true, "claim_on_miss": true, "reassign_orphans": true, "keep_dead_bindings": true,
	"destination_header": true, "lock_header": true, "id_pattern": true,
}

// Load reads and validates a route file.
func Load(path string) (*Table, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("route file: %w", err)
	}
	t, err := Parse(data)
	if err != nil {
		return nil, fmt.Errorf("route file %s: %w", path, err)
	}
	return t, nil
}

// Parse validates a route table. Errors name the rule at fault.
func Parse(data []byte) (*Table, error) {
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	var f file
	if err := dec.Decode(&f); errors.Is(err, io.EOF) {
		return nil, errors.New("the file is empty (or only comments): it needs a rules: list")
	} else if err != nil {
		return nil, fmt.Errorf("parse: %w", err)
	}
	var extra yaml.Node
	if err := dec.Decode(&extra); !errors.Is(err, io.EOF) {
		line := extra.Line
		if err != nil {
			return nil, fmt.Errorf("after the first YAML document: %w", err)
		}
		return nil, fmt.Errorf("line %d: a second YAML document; a route file holds one (it would be ignored)", line)
	}
	if len(f.Rules) == 0 {
		return nil, errors.New("no rules")
	}
	if f.IDPattern == "" {
		f.IDPattern = DefaultIDPattern
	}
	t := &Table{}
	names := map[string]bool{}
	for i := range f.Rules {
		r, err := decodeRule(&f.Rules[i])
		label := fmt.Sprintf("rule %d", i+1)
		if r != nil && r.Name != "" {
			label = fmt.Sprintf("rule %d (%s)", i+1, r.Name)
		}
		if err == nil {
			if r.IDPattern == "" {
				r.IDPattern = f.IDPattern
			}
			err = r.compile()
		}
		if err == nil && r.Name != "" && names[r.Name] {
			err = fmt.Errorf("duplicate name %q", r.Name)
		}
		if err != nil {
			return nil, fmt.Errorf("%s: %w", label, err)
		}
		names[r.Name] = true
		t.Rules = append(t.Rules, r)
	}
	// Unnamed rules are named after their position, unless that name is
	// taken by an explicit one.
	for i, r := range t.Rules {
		if r.Name != "" {
			continue
		}
		r.Name = fmt.Sprintf("rule-%d", i+1)
		for n := 2; names[r.Name]; n++ {
			r.Name = fmt.Sprintf("rule-%d-%d", i+1, n)
		}
		names[r.Name] = true
	}
	// A rule that matches every request makes the rest dead weight: say so
	// rather than leave the author wondering why they never apply.
	for i, r := range t.Rules[:len(t.Rules)-1] {
		if r.matchesEverything() {
			return nil, fmt.Errorf("rule %d (%s) matches every request, so rule %d (%s) and any after it are never reached; put catch-all rules last",
				i+1, r.Name, i+2, t.Rules[i+1].Name)
		}
	}
	return t, nil
}

func decodeRule(n *yaml.Node) (*Rule, error) {
	if n.Kind != yaml.MappingNode {
		return nil, fmt.Errorf("line %d: a rule must be a mapping", n.Line)
	}
	var r Rule
	// Decode first so the name is known for the error message.
	err := n.Decode(&r)
	for i := 0; i+1 < len(n.Content); i += 2 {
		if k := n.Content[i].Value; !ruleKeys[k] {
			return &r, fmt.Errorf("line %d: unknown key %q", n.Content[i].Line, k)
		}
	}
	if err != nil {
		return &r, err
	}
	return &r, nil
}

// Default is the table used when no file is given (SPEC §5.2).
func Default() *Table {
	t, err := Parse([]byte(`
rules:
  - name: destination-header
    destination_header: x-destination-id
    action: route
    claim_on_miss: true
    reassign_orphans: true
  - name: lock-header
    lock_header: x-lock-id
    action: route_lock
`))
	if err != nil {
		panic("route: default table does not compile: " + err.Error()) // a programming error, caught by tests
	}
	return t
}

func (r *Rule) compile() error {
	switch r.Action {
	case ActionRoute, ActionRouteLock, ActionCreate, ActionDelete, ActionPass:
	case "":
		return errors.New("action is required (route, route_lock, create, delete, pass)")
	default:
		return fmt.Errorf("unknown action %q (route, route_lock, create, delete, pass)", r.Action)
	}
	capture := segLiteral
	if r.Path != "" {
		t, err := compileTemplate(r.Path)
		if err != nil {
			return err
		}
		r.tmpl, capture = &t, t.capture
	}
	for _, m := range r.Methods {
		if m == "" || strings.Trim(strings.ToUpper(m), "ABCDEFGHIJKLMNOPQRSTUVWXYZ") != "" {
			return fmt.Errorf("method %q is not an HTTP method token", m)
		}
		r.methods = append(r.methods, strings.ToUpper(m))
	}
	for _, h := range []string{r.DestinationHeader, r.LockHeader, r.IDFromHeader} {
		if h != "" && !validHeaderName(h) {
			return fmt.Errorf("header name %q is not a valid lower-case header name", h)
		}
	}
	if err := r.checkSources(capture); err != nil {
		return err
	}
	if r.ExpectedStatus != 0 && (r.ExpectedStatus < 100 || r.ExpectedStatus > 599) {
		return fmt.Errorf("expected_status %d is not an HTTP status", r.ExpectedStatus)
	}
	switch r.Action {
	case ActionCreate:
		if r.ExpectedStatus == 0 {
			r.ExpectedStatus = 201
		}
		if r.IDFromHeader == "" && r.IDFromJSON == "" {
			r.IDFromJSON = "id"
		}
	case ActionDelete:
		if r.ExpectedStatus == 0 {
			r.ExpectedStatus = 204
		}
	}
	if r.IDPattern != DefaultIDPattern {
		re, err := regexp.Compile(r.IDPattern)
		if err != nil {
			return fmt.Errorf("id_pattern: %w", err)
		}
		r.idRe = re
	}
	return nil
}

// checkSources enforces where each action takes its id from.
func (r *Rule) checkSources(capture segKind) error {
	destSources, lockSources := 0, 0
	if capture == segDest {
		destSources++
	}
	if capture == segLock {
		lockSources++
	}
	if r.DestinationHeader != "" {
		destSources++
	}
	if r.LockHeader != "" {
		lockSources++
	}
	respID := r.IDFromJSON != "" || r.IDFromHeader != ""
	switch r.Action {
	case ActionRoute, ActionDelete:
		if destSources != 1 || lockSources != 0 {
			return fmt.Errorf("%s needs exactly one destination id source: {destination} in path or destination_header", r.Action)
		}
	case ActionRouteLock:
		if lockSources != 1 || destSources != 0 {
			return errors.New("route_lock needs exactly one lock id source: {lock} in path or lock_header")
		}
	case ActionCreate:
		if destSources+lockSources != 0 {
			return errors.New("create reads the new id from the response (id_from_json or id_from_header), not from the request")
		}
		if r.IDFromJSON != "" && r.IDFromHeader != "" {
			return errors.New("create takes id_from_json or id_from_header, not both")
		}
	case ActionPass:
		if destSources+lockSources != 0 {
			return errors.New("pass routes nothing: it takes no id source")
		}
	}
	if respID && r.Action != ActionCreate {
		return fmt.Errorf("id_from_json and id_from_header apply to create rules only, not %s", r.Action)
	}
	if r.KeepDeadBindings && r.Action != ActionDelete {
		return fmt.Errorf("keep_dead_bindings applies to delete rules only, not %s", r.Action)
	}
	if (r.ClaimOnMiss || r.ReassignOrphans) && r.Action != ActionRoute {
		return fmt.Errorf("claim_on_miss and reassign_orphans apply to route rules only, not %s", r.Action)
	}
	return nil
}

func validHeaderName(h string) bool {
	for i := 0; i < len(h); i++ {
		c := h[i]
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.') {
			return false
		}
	}
	return h != ""
}
