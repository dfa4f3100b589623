package deploy

import (
	"os"
	"strings"
	"testing"
)

// What the gateways speak to coord-extproc's gRPC port agrees with what
// it serves: every mismatch fails, on copies of the shipped files.
func TestTLSWiringMismatchesFail(t *testing.T) {
	srv := server(t)
	rendering := func(values string) string {
		rel := defaultRelease
		rel.Values = map[string]any{}
		if values != "" {
			rel.Values = map[string]any{"tls": map[string]any{"secretName": values}}
		}
		out, err := RenderChart(chartDir, rel)
		if err != nil {
			t.Fatal(err)
		}
		return string(out)
	}
	tlsServer, plainServer := rendering("coord-extproc-tls"), rendering("")
	read := func(f string) string {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	backendTLS, mtls := read(tlsFiles[0]), read("istio/mtls.yaml")
	for _, tc := range []struct {
		name, server, extra, from, to, want string
		istio                               bool
	}{
		{name: "no hostname verified", server: tlsServer, extra: backendTLS, from: "    hostname: coord-extproc.coord.svc\n", to: "", want: "hostname"},
		{name: "BackendTLSPolicy on another Service", server: tlsServer, extra: backendTLS, from: "    name: coord-extproc\n    sectionName: grpc", to: "    name: other\n    sectionName: grpc", want: "no BackendTLSPolicy targets it"},
		{name: "BackendTLSPolicy on the metrics port", server: tlsServer, extra: backendTLS, from: "sectionName: grpc", to: "sectionName: metrics", want: "no BackendTLSPolicy targets it"},
		{name: "ALPN without h2", server: tlsServer, extra: backendTLS, from: "alpnProtocols: [h2]", to: "alpnProtocols: [http/1.1]", want: "lacks h2"},
		{name: "no client certificate", server: tlsServer, extra: backendTLS, from: "    clientCertificateRef:\n      kind: Secret\n      name: envoy-to-coord-extproc\n", to: "", want: "no EnvoyProxy gives"},
		{name: "unknown BackendTLSPolicy field", server: tlsServer, extra: backendTLS, from: "hostname:", to: "hostnme:", want: "hostnme"},
		{name: "TLS server, cleartext appProtocol", server: tlsServer, extra: backendTLS, from: "- { name: grpc, port: 9002, targetPort: grpc }", to: "- { name: grpc, port: 9002, targetPort: grpc, appProtocol: kubernetes.io/h2c }", want: "cleartext"},
		{name: "plaintext server, backend TLS", server: plainServer, extra: backendTLS, want: "serves plaintext"},
		{name: "TLS server, no backend TLS", server: tlsServer, want: "Envoy Gateway would speak plaintext"},
		{name: "TLS server behind Istio's sidecar", server: tlsServer, extra: mtls, istio: true, want: "serves TLS itself"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			text := tc.server + "\n---\n" + tc.extra
			if tc.from != "" {
				broken := strings.Replace(text, tc.from, tc.to, 1)
				if broken == text {
					t.Fatalf("%q not found", tc.from)
				}
				text = broken
			}
			objs, err := Parse([]byte(text))
			if err == nil {
				gateways := egFiles()
				if tc.istio {
					gateways = []string{"istio/envoyfilter.yaml"}
				}
				err = Check(append(objs, loadFiles(t, gateways...)...), srv)
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want one mentioning %q", err, tc.want)
			}
		})
	}
}
