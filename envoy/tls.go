package envoy

import (
	"fmt"
	"os"
	"slices"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
)

// TLSSocket is the transport socket an UpstreamTlsContext needs.
const TLSSocket = "envoy.transport_sockets.tls"

// LoadCluster reads one Cluster in YAML (coord-extproc-tls.yaml), as
// strictly as Load reads a bootstrap.
func LoadCluster(path string) (*clusterv3.Cluster, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var c clusterv3.Cluster
	if err := parseYAML(data, &c); err != nil {
		return nil, fmt.Errorf("%s: cluster: %w", path, err)
	}
	return &c, nil
}

// WithCluster puts c in place of the bootstrap's static cluster of the
// same name.
func WithCluster(b *bootstrapv3.Bootstrap, c *clusterv3.Cluster) error {
	cs := b.GetStaticResources().GetClusters()
	i := slices.IndexFunc(cs, func(x *clusterv3.Cluster) bool { return x.GetName() == c.GetName() })
	if i < 0 {
		return fmt.Errorf("no static cluster %q to replace", c.GetName())
	}
	cs[i] = c
	return nil
}

// UpstreamTLS is the UpstreamTlsContext of c's transport socket (nil:
// plaintext).
func UpstreamTLS(c *clusterv3.Cluster) (*tlsv3.UpstreamTlsContext, error) {
	ts := c.GetTransportSocket()
	if ts == nil {
		return nil, nil
	}
	if ts.GetName() != TLSSocket {
		return nil, fmt.Errorf("cluster %s: transport socket %q, want %s", c.GetName(), ts.GetName(), TLSSocket)
	}
	var u tlsv3.UpstreamTlsContext
	if err := ts.GetTypedConfig().UnmarshalTo(&u); err != nil {
		return nil, fmt.Errorf("cluster %s: transport socket: %w", c.GetName(), err)
	}
	return &u, nil
}

// CheckTLS checks the TLS of the cluster that reaches coord-extproc, when
// it has any: ALPN h2 offered (grpc-go servers refuse a TLS client without
// it), the server verified against a trusted CA (Envoy accepts any
// certificate without one, and this server's answers pick upstreams) and
// by name, and a client certificate for --tls-client-ca.
func CheckTLS(c *clusterv3.Cluster) error {
	u, err := UpstreamTLS(c)
	if err != nil || u == nil {
		return err
	}
	ctx := u.GetCommonTlsContext()
	var errs []string
	if !slices.Contains(ctx.GetAlpnProtocols(), "h2") {
		errs = append(errs, "alpn_protocols lacks h2 (grpc-go refuses the handshake)")
	}
	vc := ctx.GetValidationContext()
	if vc.GetTrustedCa() == nil && ctx.GetValidationContextSdsSecretConfig() == nil && ctx.GetCombinedValidationContext() == nil {
		errs = append(errs, "no trusted_ca: Envoy would accept any server certificate")
	}
	if ctx.GetValidationContextSdsSecretConfig() == nil && ctx.GetCombinedValidationContext() == nil && len(vc.GetMatchTypedSubjectAltNames()) == 0 {
		errs = append(errs, "no match_typed_subject_alt_names: any certificate the CA signed would pass")
	}
	if len(ctx.GetTlsCertificates()) == 0 && len(ctx.GetTlsCertificateSdsSecretConfigs()) == 0 {
		errs = append(errs, "no client certificate (tls_certificates): coord-extproc with --tls-client-ca refuses the handshake")
	}
	if len(errs) > 0 {
		return fmt.Errorf("cluster %s: TLS: %v", c.GetName(), errs)
	}
	return nil
}
