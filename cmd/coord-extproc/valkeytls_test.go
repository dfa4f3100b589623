package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/valkey-io/valkey-go"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/coord-extproc/coord-extproc/internal/certtest"
	"github.com/coord-extproc/coord-extproc/internal/valkeyserver"
	"github.com/coord-extproc/coord-extproc/registry"
	"github.com/coord-extproc/coord-extproc/valkeyconn"
)

// tlsValkey is a TLS-only valkey-server that asks clients for a
// certificate, with users from an ACL file.
type tlsValkey struct {
	addr              string
	dir               string
	ca, other         *certtest.CA
	caFile, otherFile string
	certFile, keyFile string // a client certificate the server trusts
	coordPW, podPW    string // password files
}

func startTLSValkey(t *testing.T, acl string) *tlsValkey {
	t.Helper()
	dir := t.TempDir()
	v := &tlsValkey{dir: dir, ca: certtest.NewCA(t, "valkey"), other: certtest.NewCA(t, "other")}
	srvLeaf, cli := v.ca.Issue(t, "valkey", time.Time{}), v.ca.Issue(t, "client", time.Time{})
	v.caFile = certtest.Write(t, dir, "ca.crt", v.ca.PEM)
	v.otherFile = certtest.Write(t, dir, "other.crt", v.other.PEM)
	v.certFile, v.keyFile = certtest.Write(t, dir, "client.crt", cli.CertPEM), certtest.Write(t, dir, "client.key", cli.KeyPEM)
	v.coordPW = certtest.Write(t, dir, "coord.pw", []byte("coord-extproc-password\n"))
	v.podPW = certtest.Write(t, dir, "pod.pw", []byte("pod-password\n"))
	aclFile := certtest.Write(t, dir, "users.acl", []byte(acl))
	pool := x509.NewCertPool()
	pool.AddCert(v.ca.Cert)
	cc, _ := tls.X509KeyPair(cli.CertPEM, cli.KeyPEM)
	srv, err := valkeyserver.StartTLS(filepath.Join(dir, "data"), &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{cc}, ServerName: "127.0.0.1"}, []string{
		"--tls-cert-file", certtest.Write(t, dir, "server.crt", srvLeaf.CertPEM), "--tls-key-file", certtest.Write(t, dir, "server.key", srvLeaf.KeyPEM),
		"--tls-ca-cert-file", v.caFile, "--tls-auth-clients", "yes", "--aclfile", aclFile,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Stop)
	v.addr = srv.Addr()
	return v
}

func (v *tlsValkey) url(user string) string { return "rediss://" + user + "@" + v.addr }

// client connects as user with the test's client certificate.
func (v *tlsValkey) client(t *testing.T, user, password string) valkey.Client {
	t.Helper()
	opt, err := valkey.ParseURL(v.url(user))
	if err != nil {
		t.Fatal(err)
	}
	opt.Password, opt.DisableCache = password, true
	stop, err := valkeyconn.Apply(&opt, valkeyconn.Files{CA: v.caFile, Cert: v.certFile, Key: v.keyFile}, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(stop)
	c, err := valkey.NewClient(opt)
	if err != nil {
		t.Fatalf("connect as %s: %v", user, err)
	}
	t.Cleanup(c.Close)
	return c
}

// serveWith runs serve with env and returns its gRPC address and logs.
func serveWith(t *testing.T, extra map[string]string) (string, *syncBuffer) {
	t.Helper()
	grpcAddr := freeAddr(t)
	// What these tests check is TLS and users, not latency: a first call
	// on a new TLS connection can outlast the 50 ms default under -race
	// on a busy machine (it did: a 503 once).
	e := map[string]string{"COORD_LISTEN": grpcAddr, "COORD_METRICS_LISTEN": "", "COORD_ALLOW_UPSTREAM": "127.0.0.0/8",
		"COORD_SHUTDOWN_GRACE": "1s", "COORD_LOG_FORMAT": "text", "COORD_VALKEY_TIMEOUT": "1s", "COORD_DECISION_TIMEOUT": "2s"}
	for k, val := range extra {
		e[k] = val
	}
	ctx, stop := context.WithCancel(context.Background())
	done := make(chan error, 1)
	logs := &syncBuffer{}
	go func() { done <- Main(ctx, nil, env(e), io.Discard, logs) }()
	t.Cleanup(func() { stop(); <-done })
	return grpcAddr, logs
}

func healthOf(t *testing.T, addr string) string {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	r, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{})
	if err != nil {
		return ""
	}
	return r.GetStatus().String()
}

// documentedACL reads the users the README documents (SPEC §6), plus an
// admin the test plays the operator with; default is off.
func documentedACL(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile("../../deploy/valkey/users.acl")
	if err != nil {
		t.Fatal(err)
	}
	return string(b) + "\nuser admin on >admin-password ~* &* +@all\nuser default off\n"
}

// Issue #22: coord-extproc and a Go Member against a TLS-only Valkey that
// asks for client certificates, each with its own user, the password from
// a file: register, route, claim, lock and invalidations work; a CA that
// did not sign the server, and a wrong password, keep health NOT_SERVING
// with a line that says why.
func TestTLSValkeyWithUsers(t *testing.T) {
	v := startTLSValkey(t, documentedACL(t))
	files := map[string]string{"COORD_VALKEY_CA": v.caFile, "COORD_VALKEY_CERT": v.certFile, "COORD_VALKEY_KEY": v.keyFile}
	withFiles := func(kv map[string]string) map[string]string {
		out := map[string]string{}
		for k, val := range files {
			out[k] = val
		}
		for k, val := range kv {
			out[k] = val
		}
		return out
	}
	grpcAddr, _ := serveWith(t, withFiles(map[string]string{"COORD_VALKEY_URL": v.url("coord-extproc"), "COORD_VALKEY_PASSWORD_FILE": v.coordPW}))

	// The pod: the same files through valkeyconn, its own user.
	opt, err := valkey.ParseURL(v.url("pod"))
	if err != nil {
		t.Fatal(err)
	}
	stopFiles, err := valkeyconn.Apply(&opt, valkeyconn.Files{CA: v.caFile, Cert: v.certFile, Key: v.keyFile, Password: v.podPW}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer stopFiles()
	pc, err := valkey.NewClient(opt)
	if err != nil {
		t.Fatalf("pod client: %v", err)
	}
	defer pc.Close()
	ctx := context.Background()
	m, err := registry.NewMember(registry.MemberOptions{Client: pc, ID: "pod-a", Address: "http://127.0.0.1:7001"})
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Register(ctx, 0); err != nil {
		t.Fatal(err)
	}
	if err := m.AddToDestination(ctx, "t1"); err != nil {
		t.Fatal(err)
	}
	if err := m.RegisterLock(ctx, "L1", "t1", nil, 0); err != nil {
		t.Fatal(err)
	}

	waitFor(t, "health SERVING over TLS Valkey", func() bool { return healthOf(t, grpcAddr) == "SERVING" })
	conn := mustPlain(t, grpcAddr)
	for _, q := range []struct{ header, value string }{{"x-destination-id", "t1"}, {"x-lock-id", "L1"}, {"x-destination-id", "claimed-here"}} {
		if ep, err := routeBy(ctx, conn, q.header, q.value); err != nil || ep != "127.0.0.1:7001" {
			t.Fatalf("%s %s: %q %v", q.header, q.value, ep, err)
		}
	}
	// Invalidations over TLS: the pod's new address reaches the server.
	m2, _ := registry.NewMember(registry.MemberOptions{Client: pc, ID: "pod-a", Address: "http://127.0.0.1:7002"})
	if err := m2.Register(ctx, 0); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the re-registered address", func() bool {
		ep, err := routeBy(ctx, conn, "x-destination-id", "t1")
		return err == nil && ep == "127.0.0.1:7002"
	})

	// The recovery hold over TLS: a wipe leaves t1 unanswered (not a 404)
	// until the pod's next heartbeat re-asserts it.
	admin := v.client(t, "admin", "admin-password")
	if err := m2.Track("t1"); err != nil {
		t.Fatal(err)
	}
	if err := admin.Do(ctx, admin.B().Flushall().Build()).Error(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the wipe seen: t1 held (503), not a 404", func() bool {
		_, err := routeBy(ctx, conn, "x-destination-id", "t1")
		return err != nil && strings.Contains(err.Error(), "Registry recovering")
	})
	if _, err := m2.Heartbeat(ctx, 0); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "t1 re-asserted by the pod's heartbeat", func() bool {
		ep, err := routeBy(ctx, conn, "x-destination-id", "t1")
		return err == nil && ep == "127.0.0.1:7002"
	})

	for name, extra := range map[string]map[string]string{
		"another CA":     {"COORD_VALKEY_URL": v.url("coord-extproc"), "COORD_VALKEY_PASSWORD_FILE": v.coordPW, "COORD_VALKEY_CA": v.otherFile},
		"wrong password": {"COORD_VALKEY_URL": v.url("coord-extproc"), "COORD_VALKEY_PASSWORD_FILE": v.podPW},
	} {
		addr, logs := serveWith(t, withFiles(extra))
		want := map[string]string{"another CA": "is not signed by " + v.otherFile, "wrong password": "WRONGPASS"}[name]
		waitFor(t, name+": the reason logged", func() bool { return strings.Contains(logs.String(), want) })
		if h := healthOf(t, addr); h != "NOT_SERVING" {
			t.Errorf("%s: health %q, want NOT_SERVING", name, h)
		}
	}
}
