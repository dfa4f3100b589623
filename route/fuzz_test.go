package route

import (
	"os"
	"strings"
	"testing"
)

// FuzzParse: any route file either loads or is refused with an error; a
// loaded table matches any request without panicking.
func FuzzParse(f *testing.F) {
	demo, _ := os.ReadFile("../envoy/demo-routes.yaml")
	f.Add(demo)
	f.Add([]byte("rules:\n  - name: a\n    path: /t/{destination}/**\n    action: route\n    id_pattern: '^[a-z]+$'\n"))
	f.Add([]byte("rules:\n  - action: pass\n---\nrules: []\n"))
	f.Add([]byte("id_pattern: '('\nrules:\n  - action: pass\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		tbl, err := Parse(data)
		if err != nil {
			return
		}
		for _, p := range []string{"/", "/tenants/t1/keys", "/a/b/c?x=1", "/%2E%2E", ""} {
			_, _ = tbl.Match("GET", p, func(string) string { return "h" })
		}
	})
}

// FuzzMatch: any path and header value either matches with a valid id, or
// is refused; "." and ".." never come out as ids.
func FuzzMatch(f *testing.F) {
	demo, err := os.ReadFile("../envoy/demo-routes.yaml")
	if err != nil {
		f.Fatal(err)
	}
	tables := []*Table{Default()}
	tbl, err := Parse(demo)
	if err != nil {
		f.Fatal(err)
	}
	tables = append(tables, tbl)
	for _, s := range []string{"/tenants/t1/keys/a", "/tenants/%2e%2e/x", "/sessions/a%2Fb/keys", "/transactions/tx/commit", "//tenants//x", "/tenants/t1/../../admin"} {
		f.Add("GET", s, "t1")
	}
	f.Add("POST", "/tenants", RepeatedHeader)
	f.Fuzz(func(t *testing.T, method, path, header string) {
		for _, tbl := range tables {
			m, err := tbl.Match(method, path, func(string) string { return header })
			if err != nil || m.Rule == nil || m.ID == "" {
				continue
			}
			if m.Rule.Action != ActionCreate && m.Rule.Action != ActionPass && !m.Rule.ValidID(m.ID) {
				t.Fatalf("%s %q matched %s with invalid id %q", method, path, m.Rule.Name, m.ID)
			}
			if m.ID == "." || m.ID == ".." || strings.ContainsRune(m.ID, 0) {
				t.Fatalf("%s %q gave id %q", method, path, m.ID)
			}
		}
	})
}
