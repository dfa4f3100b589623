package deploy

import (
	"encoding/json"
	"fmt"
	"os"
	"reflect"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"
)

const chartDir = "helm/coord-extproc"

var defaultRelease = Release{Name: "coord-extproc", Namespace: "coord"}

func render(t *testing.T, rel Release) []any {
	t.Helper()
	out, err := RenderChart(chartDir, rel)
	if err != nil {
		t.Fatal(err)
	}
	objs, err := Parse(out)
	if err != nil {
		t.Fatalf("the rendering does not decode strictly: %v\n%s", err, out)
	}
	return objs
}

// byName keys decoded objects by kind and name, as JSON maps.
func byName(t *testing.T, objs []any) map[string]any {
	t.Helper()
	out := map[string]any{}
	for _, o := range objs {
		js, err := json.Marshal(o)
		if err != nil {
			t.Fatal(err)
		}
		var m map[string]any
		if err := json.Unmarshal(js, &m); err != nil {
			t.Fatal(err)
		}
		meta, _ := m["metadata"].(map[string]any)
		out[fmt.Sprintf("%T/%v", o, meta["name"])] = m
	}
	return out
}

// The plain manifest is the chart's default rendering (release
// coord-extproc in namespace coord): the same objects, field for field.
func TestChartDefaultIsThePlainManifest(t *testing.T) {
	plain, err := Load("kubernetes/coord-extproc.yaml")
	if err != nil {
		t.Fatal(err)
	}
	got, want := byName(t, render(t, defaultRelease)), byName(t, plain)
	for k, w := range want {
		if !reflect.DeepEqual(got[k], w) {
			g, _ := yaml.Marshal(got[k])
			wy, _ := yaml.Marshal(w)
			t.Errorf("%s differs\nchart:\n%s\nplain manifest:\n%s", k, g, wy)
		}
	}
	for k := range got {
		if _, ok := want[k]; !ok {
			t.Errorf("the chart renders %s, which the plain manifest lacks", k)
		}
	}
}

func values(t *testing.T, y string) map[string]any {
	t.Helper()
	var v map[string]any
	if err := yaml.Unmarshal([]byte(y), &v); err != nil {
		t.Fatal(err)
	}
	return v
}

// Every supported configuration renders, decodes strictly and passes the
// checks the plain manifests pass; with the gateways' manifests too when
// it keeps their Service name.
func TestChartVariantsPassTheChecks(t *testing.T) {
	srv := server(t)
	// The gateways' manifests: all of them with a plaintext server; with
	// a TLS server Envoy Gateway's and its backend TLS (Istio's mesh mTLS
	// wants the server plaintext: tls_test.go).
	plainOthers, tlsOthers := loadFiles(t, files[1:]...), loadFiles(t, append(egFiles(), tlsFiles...)...)
	for _, tc := range []struct {
		name   string
		rel    Release
		values string
		want   []string // text the rendering must hold
	}{
		{"defaults", defaultRelease, "", []string{"grpc: { port: 9002 }"}},
		{"TLS on the gRPC port", defaultRelease, "tls: { secretName: coord-extproc-tls }",
			[]string{"COORD_TLS_CLIENT_CA", "/etc/coord-extproc-tls/tls.crt", "path: /healthz, port: metrics }", "secretName: coord-extproc-tls"}},
		{"TLS on metrics too, no client CA", defaultRelease, "tls: { secretName: s, clientCA: false, metrics: true }",
			[]string{"scheme: HTTPS", "COORD_METRICS_TLS"}},
		{"Valkey TLS, client certificate, password file", defaultRelease,
			"valkey: { tlsSecret: valkey-ca, clientCertificate: true, passwordSecret: { name: valkey-pw, key: pw } }",
			[]string{"/etc/coord-extproc-valkey/ca.crt", "COORD_VALKEY_CERT", "/etc/coord-extproc-valkey-password/pw"}},
		{"another release and namespace", Release{Name: "tenants", Namespace: "apps"}, "replicaCount: 3\nextraEnv: [{ name: COORD_UPSTREAM_CIDRS, value: 10.0.0.0/8 }]",
			[]string{"app.kubernetes.io/instance: tenants", "name: tenants-routes", "replicas: 3"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.rel.Values = values(t, tc.values)
			out, err := RenderChart(chartDir, tc.rel)
			if err != nil {
				t.Fatal(err)
			}
			for _, w := range tc.want {
				if !strings.Contains(string(out), w) {
					t.Errorf("the rendering lacks %q:\n%s", w, out)
				}
			}
			objs, err := Parse(out)
			if err != nil {
				t.Fatal(err)
			}
			switch {
			case tc.rel.Name != defaultRelease.Name || tc.rel.Namespace != defaultRelease.Namespace:
			case strings.Contains(tc.values, "secretName"):
				objs = append(objs, tlsOthers...)
			default:
				objs = append(objs, plainOthers...)
			}
			if err := Check(objs, srv); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// Values that break the wiring fail the same checks as a broken plain
// manifest, or Helm itself refuses them.
func TestChartBrokenValuesFail(t *testing.T) {
	srv := server(t)
	for _, tc := range []struct{ name, values, want string }{
		{"pass rule", "routes: |\n  rules:\n    - name: rest\n      action: pass\n", "passes requests"},
		{"another gRPC port", "grpcPort: 9003", "COORD_LISTEN"},
		{"no NetworkPolicy", "networkPolicy: { enabled: false }", "no NetworkPolicy selects its pods"},
		{"gRPC port open to a namespace", "networkPolicy: { gateways: [{ namespace: envoy-gateway-system, podLabels: {} }] }", "more than named gateway pods"},
		{"unknown variable", "extraEnv: [{ name: COORD_UPSTREAM_CIDR, value: 10.0.0.0/8 }]", "COORD_UPSTREAM_CIDR"},
		{"grace shorter than the route timeouts", "extraEnv: [{ name: COORD_SHUTDOWN_GRACE, value: 15s }]", "create/delete streams would be cut"},
		{"killed before the grace", "terminationGracePeriodSeconds: 35", "terminationGracePeriodSeconds 35"},
		{"no memory limit", "resources: { limits: { memory: \"0\" } }", "GOMEMLIMIT"},
		{"a value misspelt", "tls: { secretname: x }", "secretname"},
		{"a section misspelt", "netwrkPolicy: { enabled: false }", "netwrkPolicy"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rel := defaultRelease
			rel.Values = values(t, tc.values)
			out, err := RenderChart(chartDir, rel)
			if err == nil {
				var objs []any
				if objs, err = Parse(out); err == nil {
					err = Check(objs, srv)
				}
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want one mentioning %q", err, tc.want)
			}
		})
	}
}

// The chart is complete as Helm packages it: Chart.yaml's fields, and no
// template file the tests above skip.
func TestChartFiles(t *testing.T) {
	entries, err := os.ReadDir(chartDir + "/templates")
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	want := "_helpers.tpl configmap.yaml deployment.yaml networkpolicy.yaml pdb.yaml service.yaml"
	if strings.Join(names, " ") != want {
		t.Fatalf("templates %v, want %s", names, want)
	}
}

// A TLS rendering edited by hand fails: gRPC probes against a TLS port,
// certificate files outside a mounted Secret.
func TestTLSDeploymentEditsFail(t *testing.T) {
	rel := defaultRelease
	rel.Values = values(t, "tls: { secretName: coord-extproc-tls }")
	out, err := RenderChart(chartDir, rel)
	if err != nil {
		t.Fatal(err)
	}
	srv := server(t)
	for _, tc := range []struct{ name, from, to, want string }{
		{"gRPC probe on the TLS port", "httpGet: { path: /healthz, port: metrics }", "grpc: { port: 9002 }", "cannot speak TLS"},
		{"probe over HTTP against HTTPS", "httpGet: { path: /healthz, port: metrics }", "httpGet: { path: /healthz, port: metrics, scheme: HTTPS }", "cannot speak TLS"},
		{"certificate from a ConfigMap", "secret: { secretName: coord-extproc-tls }", "configMap: { name: coord-extproc-tls }", "not in a mounted Secret"},
		{"key without certificate", "- name: COORD_TLS_CERT\n", "- name: COORD_TLS_CERTIFICATE_UNUSED\n", "go together"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			broken := strings.Replace(string(out), tc.from, tc.to, 1)
			if broken == string(out) {
				t.Fatalf("%q not in the rendering", tc.from)
			}
			objs, err := Parse([]byte(broken))
			if err == nil {
				err = Check(objs, srv)
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want one mentioning %q", err, tc.want)
			}
		})
	}
}

func loadFiles(t *testing.T, names ...string) []any {
	t.Helper()
	var all []any
	for _, f := range names {
		objs, err := Load(f)
		if err != nil {
			t.Fatal(err)
		}
		all = append(all, objs...)
	}
	return all
}

// egFiles are the Envoy Gateway manifests among files.
func egFiles() []string {
	var out []string
	for _, f := range files {
		if strings.HasPrefix(f, "envoy-gateway/") {
			out = append(out, f)
		}
	}
	return out
}
