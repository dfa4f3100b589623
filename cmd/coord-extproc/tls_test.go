package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"math/big"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/coord-extproc/coord-extproc/internal/certtest"
	"github.com/coord-extproc/coord-extproc/internal/valkeytest"
)

// tlsClient dials addr with a client certificate (nil: none) trusting ca.
func tlsClient(t *testing.T, addr string, ca *certtest.CA, leaf *certtest.Leaf) *grpc.ClientConn {
	t.Helper()
	pool := x509.NewCertPool()
	pool.AddCert(ca.Cert)
	cfg := &tls.Config{RootCAs: pool, ServerName: "127.0.0.1"}
	if leaf != nil {
		c, err := tls.X509KeyPair(leaf.CertPEM, leaf.KeyPEM)
		if err != nil {
			t.Fatal(err)
		}
		cfg.Certificates = []tls.Certificate{c}
	}
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(cfg)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// routeOnce asks ext_proc for destination t1 and returns the endpoint.
func routeOnce(ctx context.Context, conn *grpc.ClientConn) (string, error) {
	return routeBy(ctx, conn, "x-destination-id", "t1")
}

// routeBy asks ext_proc for a request carrying header and returns the
// endpoint it answers.
func routeBy(ctx context.Context, conn *grpc.ClientConn, header, value string) (string, error) {
	s, err := extprocv3.NewExternalProcessorClient(conn).Process(ctx)
	if err != nil {
		return "", err
	}
	defer s.CloseSend()
	err = s.Send(&extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_RequestHeaders{RequestHeaders: &extprocv3.HttpHeaders{
		Headers: &corev3.HeaderMap{Headers: []*corev3.HeaderValue{{Key: ":method", RawValue: []byte("GET")}, {Key: ":path", RawValue: []byte("/")}, {Key: header, RawValue: []byte(value)}}},
	}}})
	if err != nil {
		return "", err
	}
	resp, err := s.Recv()
	if err != nil {
		return "", err
	}
	for _, h := range resp.GetRequestHeaders().GetResponse().GetHeaderMutation().GetSetHeaders() {
		if h.GetHeader().GetKey() == "x-gateway-destination-endpoint" {
			return string(h.GetHeader().GetRawValue()), nil
		}
	}
	return "", fmt.Errorf("no endpoint in %v", resp)
}

// Issue #22: ext_proc and ext_authz over mutual TLS; clients without a
// certificate, with one from another CA or an expired one are refused at
// the handshake; the server certificate rotates under continuous traffic
// with no failed request, and new handshakes present the new one.
func TestMutualTLSAndRotation(t *testing.T) {
	srv := valkeytest.Start(t)
	c := srv.Client(t)
	valkeytest.Do(t, c, "SADD", "coordinator:members", "pod-a")
	valkeytest.Do(t, c, "HSET", "coordinator:member:pod-a", "address", "http://127.0.0.1:7001", "load", "0")
	valkeytest.Do(t, c, "SADD", "coordinator:destination:t1", "pod-a")

	dir := t.TempDir()
	ca, other := certtest.NewCA(t, "gateways"), certtest.NewCA(t, "strangers")
	serverLeaf := ca.Issue(t, "coord-extproc", time.Time{})
	certtest.Swap(t, dir, "tls.crt", serverLeaf.CertPEM)
	certtest.Swap(t, dir, "tls.key", serverLeaf.KeyPEM)
	caFile := certtest.Write(t, dir, "ca.crt", ca.PEM)
	good := ca.Issue(t, "envoy", time.Time{})
	stranger := other.Issue(t, "envoy", time.Time{})
	expired := ca.Issue(t, "envoy", time.Now().Add(-time.Hour))

	grpcAddr, metricsAddr := freeAddr(t), freeAddr(t)
	ctx, stop := context.WithCancel(context.Background())
	done := make(chan error, 1)
	logs := &syncBuffer{}
	go func() {
		done <- Main(ctx, nil, env(map[string]string{
			"COORD_LISTEN": grpcAddr, "COORD_METRICS_LISTEN": metricsAddr, "COORD_METRICS_TLS": "true", "COORD_VALKEY_URL": srv.URL(), "COORD_ALLOW_UPSTREAM": "127.0.0.0/8",
			"COORD_TLS_CERT": dir + "/tls.crt", "COORD_TLS_KEY": dir + "/tls.key", "COORD_TLS_CLIENT_CA": caFile, "COORD_SHUTDOWN_GRACE": "1s",
		}), io.Discard, logs)
	}()
	t.Cleanup(func() { stop(); <-done })

	conn := tlsClient(t, grpcAddr, ca, &good)
	waitFor(t, "health SERVING over mTLS", func() bool {
		r, err := healthpb.NewHealthClient(conn).Check(context.Background(), &healthpb.HealthCheckRequest{})
		return err == nil && r.GetStatus() == healthpb.HealthCheckResponse_SERVING
	})
	if ep, err := routeOnce(context.Background(), conn); err != nil || ep != "127.0.0.1:7001" {
		t.Fatalf("ext_proc over mTLS: %q %v", ep, err)
	}
	// --metrics-tls: the same certificate, no client certificate asked;
	// plain HTTP is not answered.
	pool := x509.NewCertPool()
	pool.AddCert(ca.Cert)
	hc := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	if resp, err := hc.Get("https://" + metricsAddr + "/healthz"); err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("/healthz over TLS: %v %v", resp, err)
	} else {
		resp.Body.Close()
	}
	if resp, err := (&http.Client{Timeout: 2 * time.Second}).Get("http://" + metricsAddr + "/healthz"); err == nil && resp.StatusCode == http.StatusOK {
		resp.Body.Close()
		t.Fatal("/healthz answered plain HTTP with --metrics-tls")
	}
	authz, err := authv3.NewAuthorizationClient(conn).Check(context.Background(), &authv3.CheckRequest{Attributes: &authv3.AttributeContext{Request: &authv3.AttributeContext_Request{Http: &authv3.AttributeContext_HttpRequest{
		Method: "GET", Path: "/", Headers: map[string]string{"x-destination-id": "t1"},
	}}}})
	if err != nil || authz.GetStatus().GetCode() != 0 {
		t.Fatalf("ext_authz over mTLS: %v %v", authz, err)
	}

	for name, leaf := range map[string]*certtest.Leaf{"no certificate": nil, "another CA": &stranger, "expired": &expired} {
		cctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		_, err := routeOnce(cctx, tlsClient(t, grpcAddr, ca, leaf))
		cancel()
		if err == nil {
			t.Errorf("client with %s was served", name)
		}
	}
	// A plaintext client is refused too.
	if _, err := routeOnce(context.Background(), mustPlain(t, grpcAddr)); err == nil {
		t.Error("plaintext client was served")
	}

	// Rotation under continuous traffic on the open connection and on
	// new ones.
	var failed, served atomic.Int64
	tctx, endTraffic := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for i := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for tctx.Err() == nil {
				cc := conn
				if i%2 == 1 { // a new connection, so a new handshake, each time
					cc = tlsClient(t, grpcAddr, ca, &good)
				}
				if ep, err := routeOnce(context.Background(), cc); err != nil || ep != "127.0.0.1:7001" {
					failed.Add(1)
					t.Logf("request during rotation: %q %v", ep, err)
				} else {
					served.Add(1)
				}
				if cc != conn {
					cc.Close()
				}
			}
		}()
	}
	next := ca.Issue(t, "coord-extproc", time.Time{})
	certtest.Swap(t, dir, "tls.crt", next.CertPEM)
	certtest.Swap(t, dir, "tls.key", next.KeyPEM)
	waitFor(t, "a new handshake presents the new certificate", func() bool {
		return presentedSerial(t, grpcAddr, ca, &good).Cmp(next.Serial) == 0
	})
	n := served.Load()
	waitFor(t, "traffic after the swap too", func() bool { return served.Load() >= n+50 })
	endTraffic()
	wg.Wait()
	if failed.Load() != 0 {
		t.Fatalf("%d of %d requests failed across the rotation", failed.Load(), failed.Load()+served.Load())
	}
	t.Logf("%d requests across the rotation, 0 failed", served.Load())
	if !strings.Contains(logs.String(), "TLS files reloaded") {
		t.Errorf("no reload logged:\n%s", logs.String())
	}
}

func mustPlain(t *testing.T, addr string) *grpc.ClientConn {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// presentedSerial handshakes with addr and returns the serial of the
// certificate the server presented.
func presentedSerial(t *testing.T, addr string, ca *certtest.CA, leaf *certtest.Leaf) *big.Int {
	t.Helper()
	pool := x509.NewCertPool()
	pool.AddCert(ca.Cert)
	c, err := tls.X509KeyPair(leaf.CertPEM, leaf.KeyPEM)
	if err != nil {
		t.Fatal(err)
	}
	conn, err := tls.Dial("tcp", addr, &tls.Config{RootCAs: pool, ServerName: "127.0.0.1", Certificates: []tls.Certificate{c}, NextProtos: []string{"h2"}})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	return conn.ConnectionState().PeerCertificates[0].SerialNumber
}

// TLS flags that cannot work stop start-up with a line naming them; a URL
// in such a line has no password.
func TestTLSFlagErrors(t *testing.T) {
	dir := t.TempDir()
	f := certtest.Write(t, dir, "x.pem", []byte("x"))
	tests := []struct {
		env        map[string]string
		want, hide string
	}{
		{map[string]string{"COORD_TLS_CERT": f}, "--tls-cert and --tls-key go together", ""},
		{map[string]string{"COORD_TLS_CLIENT_CA": f}, "--tls-client-ca needs --tls-cert", ""},
		{map[string]string{"COORD_METRICS_TLS": "true"}, "--metrics-tls needs --tls-cert", ""},
		{map[string]string{"COORD_VALKEY_CA": f, "COORD_VALKEY_URL": "redis://coord:s3cret@127.0.0.1:6379"}, "rediss://", "s3cret"},
		{map[string]string{"COORD_VALKEY_PASSWORD_FILE": dir + "/absent"}, "--valkey-password-file", ""},
		{map[string]string{"COORD_TLS_CERT": f, "COORD_TLS_KEY": f}, "x.pem with key", ""}, // read at start: not a certificate
	}
	for _, tt := range tests {
		err := Main(context.Background(), nil, env(tt.env), io.Discard, io.Discard)
		if err == nil || !strings.Contains(err.Error(), tt.want) || (tt.hide != "" && strings.Contains(err.Error(), tt.hide)) {
			t.Errorf("%v: err = %v, want it to say %q (and not %q)", tt.env, err, tt.want, tt.hide)
		}
	}
}
