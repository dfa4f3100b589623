package main

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"slices"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"

	"github.com/coord-extproc/coord-extproc/envoy"
)

// readUpstreamTLS builds the client side of the gRPC cluster's
// UpstreamTlsContext as Envoy applies it (nil: plaintext). Envoy verifies
// the chain against trusted_ca and the certificate's SANs against
// match_typed_subject_alt_names — not against the SNI it sends — and
// offers exactly alpn_protocols. Files are read once, as Envoy reads a
// static bootstrap's. Anything else in the context is refused.
func readUpstreamTLS(cl *clusterv3.Cluster) (*tls.Config, error) {
	u, err := envoy.UpstreamTLS(cl)
	if err != nil || u == nil {
		return nil, err
	}
	if err := envoy.CheckTLS(cl); err != nil {
		return nil, err
	}
	if err := unsupported(u, "sni", "common_tls_context"); err != nil {
		return nil, err
	}
	ctx := u.GetCommonTlsContext()
	if err := unsupported(ctx, "alpn_protocols", "tls_certificates", "validation_context"); err != nil {
		return nil, err
	}
	vc := ctx.GetValidationContext()
	if err := unsupported(vc, "trusted_ca", "match_typed_subject_alt_names"); err != nil {
		return nil, err
	}
	// grpc-go's credentials always offer h2; CheckTLS made sure Envoy
	// would too.
	cfg := &tls.Config{ServerName: u.GetSni(), NextProtos: ctx.GetAlpnProtocols(), MinVersion: tls.VersionTLS12}
	for _, tc := range ctx.GetTlsCertificates() {
		if err := unsupported(tc, "certificate_chain", "private_key"); err != nil {
			return nil, err
		}
		chain, err := readSource(tc.GetCertificateChain())
		if err != nil {
			return nil, fmt.Errorf("certificate_chain: %w", err)
		}
		key, err := readSource(tc.GetPrivateKey())
		if err != nil {
			return nil, fmt.Errorf("private_key: %w", err)
		}
		pair, err := tls.X509KeyPair(chain, key)
		if err != nil {
			return nil, fmt.Errorf("tls_certificates: %w", err)
		}
		cfg.Certificates = append(cfg.Certificates, pair)
	}
	caPEM, err := readSource(vc.GetTrustedCa())
	if err != nil {
		return nil, fmt.Errorf("trusted_ca: %w", err)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(caPEM) {
		return nil, errors.New("trusted_ca: no certificate")
	}
	var dnsNames []string
	for _, m := range vc.GetMatchTypedSubjectAltNames() {
		if m.GetSanType() != tlsv3.SubjectAltNameMatcher_DNS || m.GetMatcher().GetExact() == "" {
			return nil, fmt.Errorf("match_typed_subject_alt_names: only DNS exact matchers are implemented by the stand-in, got %v", m)
		}
		dnsNames = append(dnsNames, m.GetMatcher().GetExact())
	}
	// Verification is Envoy's, not crypto/tls's (which checks ServerName).
	cfg.InsecureSkipVerify = true
	cfg.VerifyConnection = func(cs tls.ConnectionState) error {
		if len(cs.PeerCertificates) == 0 {
			return errors.New("the server sent no certificate")
		}
		inter := x509.NewCertPool()
		for _, c := range cs.PeerCertificates[1:] {
			inter.AddCert(c)
		}
		leaf := cs.PeerCertificates[0]
		if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter}); err != nil {
			return err
		}
		if !slices.ContainsFunc(leaf.DNSNames, func(n string) bool { return slices.Contains(dnsNames, n) }) {
			return fmt.Errorf("the server certificate's DNS names %v match none of %v", leaf.DNSNames, dnsNames)
		}
		return nil
	}
	return cfg, nil
}

func readSource(ds *corev3.DataSource) ([]byte, error) {
	if ds.GetFilename() == "" {
		return nil, fmt.Errorf("only filename data sources are implemented by the stand-in, got %v", ds)
	}
	return os.ReadFile(ds.GetFilename())
}
