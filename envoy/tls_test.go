package envoy

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	"google.golang.org/protobuf/proto"
)

// The TLS variant of the coord_extproc cluster passes the wiring check in
// both bootstraps and differs from the plaintext cluster only by its
// transport socket.
func TestTLSClusterVariant(t *testing.T) {
	tlsCluster, err := LoadCluster("coord-extproc-tls.yaml")
	if err != nil {
		t.Fatal(err)
	}
	for _, file := range []string{"envoy.yaml", "envoy-ext-authz.yaml"} {
		b, err := Load(file)
		if err != nil {
			t.Fatal(err)
		}
		var plain *clusterv3.Cluster
		for _, c := range b.GetStaticResources().GetClusters() {
			if c.GetName() == tlsCluster.GetName() {
				plain = c
			}
		}
		bare := proto.Clone(tlsCluster).(*clusterv3.Cluster)
		bare.TransportSocket = nil
		if !proto.Equal(bare, plain) {
			t.Errorf("%s: the TLS cluster drifted from the plaintext one:\n%v\n%v", file, bare, plain)
		}
		if err := WithCluster(b, tlsCluster); err != nil {
			t.Fatal(err)
		}
		if err := CheckWiring(b, Defaults()); err != nil {
			t.Errorf("%s with TLS: %v", file, err)
		}
	}
}

// Broken copies of the TLS cluster fail: each names what is missing.
func TestTLSClusterBrokenCopiesFail(t *testing.T) {
	orig, err := os.ReadFile("coord-extproc-tls.yaml")
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct{ name, from, to, want string }{
		{"no ALPN", "alpn_protocols: [h2]", "alpn_protocols: [http/1.1]", "lacks h2"},
		{"no trusted CA", "trusted_ca: { filename: /etc/envoy/coord-extproc-tls/ca.crt }", "", "no trusted_ca"},
		{"no name check", "match_typed_subject_alt_names:\n        - san_type: DNS\n          matcher: { exact: coord-extproc.coord.svc }", "", "match_typed_subject_alt_names"},
		{"no client certificate", "tls_certificates:\n      - certificate_chain: { filename: /etc/envoy/coord-extproc-tls/tls.crt }\n        private_key: { filename: /etc/envoy/coord-extproc-tls/tls.key }", "", "no client certificate"},
		{"another socket", "name: envoy.transport_sockets.tls", "name: envoy.transport_sockets.raw_buffer", "transport socket"},
		{"field typo", "trusted_ca:", "trusted_cas:", "trusted_cas"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			broken := strings.Replace(string(orig), tt.from, tt.to, 1)
			if broken == string(orig) {
				t.Fatalf("%q not in the file", tt.from)
			}
			path := filepath.Join(t.TempDir(), "c.yaml")
			if err := os.WriteFile(path, []byte(broken), 0o600); err != nil {
				t.Fatal(err)
			}
			c, err := LoadCluster(path)
			if err == nil {
				err = CheckTLS(c)
			}
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %v, want one mentioning %q", err, tt.want)
			}
		})
	}
}
