package integration

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/coord-extproc/coord-extproc/internal/certtest"
)

// tlsCluster is the edit that puts envoy/coord-extproc-tls.yaml, with its
// files moved to dir, in place of cfg's plaintext coord_extproc cluster
// (the last thing in both bootstraps).
func tlsCluster(t *testing.T, cfg, dir string) []string {
	t.Helper()
	orig, err := os.ReadFile(filepath.Join("..", "envoy", cfg))
	if err != nil {
		t.Fatal(err)
	}
	i := strings.Index(string(orig), "  - name: coord_extproc\n")
	if i < 0 {
		t.Fatalf("%s has no coord_extproc cluster", cfg)
	}
	variant, err := os.ReadFile(filepath.Join("..", "envoy", "coord-extproc-tls.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	for _, line := range strings.Split(strings.TrimRight(string(variant), "\n"), "\n") {
		if strings.HasPrefix(line, "name: ") {
			b.WriteString("  - " + line + "\n")
		} else if !strings.HasPrefix(line, "#") {
			b.WriteString("    " + line + "\n")
		}
	}
	return []string{string(orig[i:]), strings.ReplaceAll(b.String(), "/etc/envoy/coord-extproc-tls", dir)}
}

// Issue #22: the gateway reaches coord-extproc over mutual TLS with the
// shipped TLS cluster (ext_proc and ext_authz, the failure-report stream
// on the same cluster); a gateway whose client certificate another CA
// signed, or that expects another server name, gets no request through
// (failure mode closed).
func TestMutualTLSEndToEnd(t *testing.T) {
	ca, other := certtest.NewCA(t, "coord"), certtest.NewCA(t, "other")
	srv := ca.IssueFor(t, "coord-extproc", time.Time{}, "coord-extproc.coord.svc")
	serverDir, goodDir, badDir := t.TempDir(), t.TempDir(), t.TempDir()
	coordArgs := []string{
		"--tls-cert", certtest.Write(t, serverDir, "tls.crt", srv.CertPEM), "--tls-key", certtest.Write(t, serverDir, "tls.key", srv.KeyPEM),
		"--tls-client-ca", certtest.Write(t, serverDir, "ca.crt", ca.PEM),
	}
	for dir, signer := range map[string]*certtest.CA{goodDir: ca, badDir: other} {
		leaf := signer.Issue(t, "envoy", time.Time{})
		certtest.Write(t, dir, "tls.crt", leaf.CertPEM)
		certtest.Write(t, dir, "tls.key", leaf.KeyPEM)
		certtest.Write(t, dir, "ca.crt", ca.PEM)
	}
	for _, cfg := range []string{"envoy.yaml", "envoy-ext-authz.yaml"} {
		t.Run(cfg, func(t *testing.T) {
			eachGateway(t, stackOptions{config: cfg, coordArgs: coordArgs, edit: tlsCluster(t, cfg, goodDir)}, func(t *testing.T, s *stack) {
				owner := s.mustCreate(0, "acme")
				if a := s.do(0, "PUT", "/tenants/acme/keys/k", "v"); a.status != 200 || a.servedBy != owner {
					t.Fatalf("write over TLS: %d %s %v", a.status, a.raw, a.err)
				}
			})
		})
	}
	wrongName := tlsCluster(t, "envoy.yaml", goodDir)
	wrongName[1] = strings.ReplaceAll(wrongName[1], "exact: coord-extproc.coord.svc", "exact: other.coord.svc")
	for name, edit := range map[string][]string{
		"client certificate from another CA":  tlsCluster(t, "envoy.yaml", badDir),
		"server certificate for another name": wrongName,
	} {
		t.Run(name, func(t *testing.T) {
			s := newStack(t, stackOptions{gateway: "standin", coordArgs: coordArgs, edit: edit})
			a := s.do(0, "POST", "/tenants", `{"tenantId":"acme"}`)
			if a.status < 500 || a.servedBy != "" {
				t.Fatalf("a refused connection's request: %d served by %q %s", a.status, a.servedBy, a.raw)
			}
		})
	}
}
