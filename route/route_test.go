package route

import (
	"errors"
	"strings"
	"testing"
)

const specExample = `
id_pattern: '^[A-Za-z0-9_.:-]{1,128}$'
rules:
  - name: create-tenant
    methods: [POST]
    path: /tenants
    action: create
    expected_status: 201
    id_from_json: tenantId
  - name: delete-tenant
    methods: [DELETE]
    path: /tenants/{destination}
    action: delete
    expected_status: 204
  - name: tenant-data
    path: /tenants/{destination}/**
    action: route
    claim_on_miss: false
    reassign_orphans: true
  - name: transactions
    path: /transactions/{lock}/**
    action: route_lock
  - name: by-header
    destination_header: x-destination-id
    action: route
  - name: everything-else
    action: pass
`

func headers(kv ...string) func(string) string {
	return func(name string) string {
		for i := 0; i+1 < len(kv); i += 2 {
			if kv[i] == name {
				return kv[i+1]
			}
		}
		return ""
	}
}

func TestMatchSpecExample(t *testing.T) {
	tbl, err := Parse([]byte(specExample))
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		method, path string
		hdr          func(string) string
		rule, id     string
		err          error
	}{
		{"POST", "/tenants", headers(), "create-tenant", "", nil},
		{"POST", "/tenants?x=1", headers(), "create-tenant", "", nil},
		{"DELETE", "/tenants/t1", headers(), "delete-tenant", "t1", nil},
		{"GET", "/tenants/t1", headers(), "tenant-data", "t1", nil},
		{"GET", "/tenants/t1/", headers(), "tenant-data", "t1", nil},
		{"PUT", "/tenants/t1/keys/a/b?q=1", headers(), "tenant-data", "t1", nil},
		{"GET", "/tenants/t%3A1/keys", headers(), "tenant-data", "t:1", nil},
		{"GET", "/tenants/bad%20id/keys", headers(), "tenant-data", "bad id", ErrInvalidID},
		{"GET", "/tenants/%zz/keys", headers(), "tenant-data", "", ErrInvalidID},
		{"GET", "/tenants/%2E%2E/keys", headers(), "tenant-data", "..", ErrInvalidID},
		{"GET", "/tenants/%2e/keys", headers(), "tenant-data", ".", ErrInvalidID},
		{"GET", "/other", headers("x-destination-id", RepeatedHeader), "by-header", "", ErrInvalidID},
		{"GET", "/other", headers("x-destination-id", ".."), "by-header", "..", ErrInvalidID},
		{"GET", "/tenants/" + strings.Repeat("a", 129), headers(), "tenant-data", strings.Repeat("a", 129), ErrInvalidID},
		{"POST", "/transactions/tx-9/commit", headers(), "transactions", "tx-9", nil},
		{"GET", "/tenants//keys", headers("x-destination-id", "h1"), "by-header", "h1", nil},
		{"GET", "/other", headers("x-destination-id", "h1"), "by-header", "h1", nil},
		{"GET", "/other", headers(), "everything-else", "", nil},
		{"GET", "", headers(), "everything-else", "", nil},
	}
	for _, tt := range tests {
		t.Run(tt.method+" "+tt.path, func(t *testing.T) {
			m, err := tbl.Match(tt.method, tt.path, tt.hdr)
			if !errors.Is(err, tt.err) {
				t.Fatalf("err = %v, want %v", err, tt.err)
			}
			if m.Rule == nil || m.Rule.Name != tt.rule || (tt.err == nil && m.ID != tt.id) {
				t.Fatalf("matched %+v id %q, want rule %s id %q", m.Rule, m.ID, tt.rule, tt.id)
			}
		})
	}
	if r := tbl.Rules[0]; !r.WantsBody() || r.ExpectedStatus != 201 {
		t.Fatalf("create rule: %+v", r)
	}
}

func TestNoRouteWithoutPass(t *testing.T) {
	tbl := Default()
	if _, err := tbl.Match("GET", "/x", headers()); !errors.Is(err, ErrNoRoute) {
		t.Fatalf("err = %v, want ErrNoRoute", err)
	}
	m, err := tbl.Match("GET", "/x", headers("x-lock-id", "L1"))
	if err != nil || m.Rule.Action != ActionRouteLock || m.ID != "L1" {
		t.Fatalf("lock header: %+v %v", m, err)
	}
	m, err = tbl.Match("GET", "/x", headers("x-lock-id", "L1", "x-destination-id", "D1"))
	if err != nil || m.Rule.Action != ActionRoute || !m.Rule.ClaimOnMiss || !m.Rule.ReassignOrphans || m.ID != "D1" {
		t.Fatalf("destination header wins: %+v %v", m, err)
	}
}

func TestTemplates(t *testing.T) {
	tests := []struct {
		tmpl, path string
		ok         bool
		captured   string
	}{
		{"/", "/", true, ""},
		{"/", "/a", false, ""},
		{"/a/*/c", "/a/b/c", true, ""},
		{"/a/*/c", "/a//c", false, ""},
		{"/a/*", "/a", false, ""},
		{"/a/**", "/a", true, ""},
		{"/a/**", "/a/b/c/d", true, ""},
		{"/a/{destination}", "/a/x/y", false, ""},
		{"/a/{lock}/b", "/a/L/b", true, "L"},
		{"/a/{lock}/b", "/a/L/c", false, ""},
		{"/a", "a", false, ""},
	}
	for _, tt := range tests {
		tm, err := compileTemplate(tt.tmpl)
		if err != nil {
			t.Fatalf("%s: %v", tt.tmpl, err)
		}
		c, ok := tm.match(tt.path)
		if ok != tt.ok || c != tt.captured {
			t.Errorf("%s ~ %s = %q %v, want %q %v", tt.tmpl, tt.path, c, ok, tt.captured, tt.ok)
		}
	}
}

func TestFileErrorsNameTheRule(t *testing.T) {
	tests := []struct {
		name, yaml, want string
	}{
		{"unknown key", "rules:\n  - name: r1\n    action: pass\n    colour: red\n", `rule 1 (r1): line 4: unknown key "colour"`},
		{"unknown top-level key", "rulez: []\n", "field rulez not found"},
		{"unknown action", "rules:\n  - name: a\n    action: pass\n  - name: r2\n    action: teleport\n", `rule 2 (r2): unknown action "teleport"`},
		{"missing action", "rules:\n  - name: r1\n    path: /x\n", "rule 1 (r1): action is required"},
		{"bad template", "rules:\n  - name: r1\n    path: /a/**/b\n    action: pass\n", "rule 1 (r1): path \"/a/**/b\": ** must be the last segment"},
		{"unknown capture", "rules:\n  - name: r1\n    path: /a/{tenant}\n    action: pass\n", "rule 1 (r1): path \"/a/{tenant}\""},
		{"bad regexp", "rules:\n  - name: r1\n    path: /a/{destination}\n    action: route\n    id_pattern: '^[a-'\n", "rule 1 (r1): id_pattern: error parsing regexp"},
		{"bad global regexp", "id_pattern: '('\nrules:\n  - name: r1\n    action: pass\n", "rule 1 (r1): id_pattern"},
		{"route without id", "rules:\n  - name: r1\n    path: /a\n    action: route\n", "rule 1 (r1): route needs exactly one destination id source"},
		{"two ids", "rules:\n  - name: r1\n    path: /a/{destination}\n    destination_header: x-d\n    action: route\n", "exactly one"},
		{"claim on lock", "rules:\n  - name: r1\n    path: /a/{lock}\n    action: route_lock\n    claim_on_miss: true\n", "route rules only"},
		{"keep dead bindings on a route", "rules:\n  - name: r1\n    path: /a/{destination}\n    action: route\n    keep_dead_bindings: true\n", "delete rules only"},
		{"create with request id", "rules:\n  - name: r1\n    path: /a/{destination}\n    action: create\n", "create reads the new id from the response"},
		{"bad status", "rules:\n  - name: r1\n    path: /a\n    action: create\n    expected_status: 42\n", "expected_status 42"},
		{"bad method", "rules:\n  - name: r1\n    methods: [G3T]\n    action: pass\n", `method "G3T"`},
		{"duplicate name", "rules:\n  - name: r\n    action: pass\n  - name: r\n    action: pass\n", `rule 2 (r): duplicate name`},
		{"no rules", "rules: []\n", "no rules"},
		{"upper-case header", "rules:\n  - name: r1\n    destination_header: X-Dest\n    action: route\n", "lower-case header name"},
		{"second document", "rules:\n  - name: r1\n    action: pass\n---\nrules:\n  - name: r2\n    action: bogus\n", "line 4: a second YAML document"},
		{"empty file", "", "the file is empty"},
		{"comments only", "# nothing yet\n", "the file is empty"},
		{"catch-all first", "rules:\n  - name: all\n    action: pass\n  - name: tenants\n    path: /t/{destination}\n    action: route\n", "rule 1 (all) matches every request, so rule 2 (tenants)"},
		{"/** catch-all first", "rules:\n  - name: all\n    path: /**\n    action: pass\n  - name: t\n    path: /t/{destination}\n    action: route\n", "never reached"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse([]byte(tt.yaml))
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %v, want it to contain %q", err, tt.want)
			}
		})
	}
}

func TestMatchAllocations(t *testing.T) {
	tbl, _ := Parse([]byte(specExample))
	h := headers()
	n := testing.AllocsPerRun(100, func() {
		if _, err := tbl.Match("GET", "/tenants/t1/keys/k?x=1", h); err != nil {
			t.Fatal(err)
		}
	})
	if n != 0 {
		t.Fatalf("Match allocates %v times", n)
	}
}

// An unnamed rule never takes the name an explicit rule already has.
func TestAutomaticNamesAreUnique(t *testing.T) {
	tbl, err := Parse([]byte("rules:\n  - name: rule-2\n    path: /a\n    action: pass\n  - path: /b\n    action: pass\n"))
	if err != nil {
		t.Fatal(err)
	}
	if a, b := tbl.Rules[0].Name, tbl.Rules[1].Name; a == b {
		t.Fatalf("two rules named %q", a)
	}
}

// Issue #25 finding 4: a dot segment carrying parameters, which Envoy
// before 1.36.10/1.37.6/1.38.4/1.39.1 leaves in the path, is refused
// wherever it is, even by a rule that would take every path; lookalikes
// are not.
func TestDotSegmentsWithParametersRefused(t *testing.T) {
	tbl, err := Parse([]byte(specExample))
	if err != nil {
		t.Fatal(err)
	}
	for path, refused := range map[string]bool{
		"/tenants/t1/..;/t2/keys": true, "/tenants/t1/..;x=1/t2/keys": true, "/tenants/t1/%2e%2e;/t2": true,
		"/tenants/t1/.%2E;a/t2": true, "/tenants/t1/.;/keys": true, "/other/..;": true, "/tenants/t1/%2E;b": true,
		"/tenants/t1/...;/t2": false, "/tenants/t1/a;b/keys": false, "/tenants/t1/keys/..x;y": false,
		"/tenants/t1/keys?next=/..;/t2": false, "/tenants/t1/%2e%2e%2e;/t2": false,
	} {
		_, err := tbl.Match("GET", path, headers())
		if got := errors.Is(err, ErrInvalidPath); got != refused {
			t.Errorf("Match(%q): %v, refused %v, want %v", path, err, got, refused)
		}
	}
}
