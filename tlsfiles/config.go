package tlsfiles

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
)

// ServerConfig is a server's TLS config: the current certificate, and
// with a CA file, mutual TLS (a client without a certificate that CA
// signed is refused at the handshake). Each handshake takes the files as
// last read; connections already up keep theirs.
func (w *Watcher) ServerConfig() (*tls.Config, error) {
	if w.cur.Load().cert == nil {
		return nil, errors.New("tls: a server needs a certificate and key")
	}
	return &tls.Config{
		MinVersion: tls.VersionTLS12,
		GetConfigForClient: func(*tls.ClientHelloInfo) (*tls.Config, error) {
			m := w.cur.Load()
			c := &tls.Config{MinVersion: tls.VersionTLS12, Certificates: []tls.Certificate{*m.cert}, NextProtos: []string{"h2"}}
			if m.pool != nil {
				c.ClientCAs, c.ClientAuth = m.pool, tls.RequireAndVerifyClientCert
			}
			return c, nil
		},
	}, nil
}

// GetCertificate is the current certificate, for a tls.Config that asks
// clients for none (a metrics listener).
func (w *Watcher) GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	if m := w.cur.Load(); m.cert != nil {
		return m.cert, nil
	}
	return nil, errors.New("tls: no certificate file given")
}

// ClientConfig is a client's TLS config for serverName (empty: the host
// each connection dials): the server's certificate verified against the
// current CA (the system's without a CA file), and the current client
// certificate when the server asks for one.
func (w *Watcher) ClientConfig(serverName string) *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS12,
		ServerName: serverName,
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			if m := w.cur.Load(); m.cert != nil {
				return m.cert, nil
			}
			return &tls.Certificate{}, nil // none: the server decides
		},
		// Verification is done here, against the CA as last read; Go's
		// own would pin the pool of the first read.
		InsecureSkipVerify: true,
		VerifyConnection:   w.verify,
	}
}

// verify checks the server's chain against the current CA, for the name
// the connection was made for (crypto/tls fills ServerName from the dialled
// host when the config leaves it empty).
func (w *Watcher) verify(cs tls.ConnectionState) error {
	if len(cs.PeerCertificates) == 0 {
		return errors.New("tls: the server sent no certificate")
	}
	opts := x509.VerifyOptions{Roots: w.cur.Load().pool, DNSName: cs.ServerName, Intermediates: x509.NewCertPool(), CurrentTime: w.opt.Now()}
	for _, c := range cs.PeerCertificates[1:] {
		opts.Intermediates.AddCert(c)
	}
	if _, err := cs.PeerCertificates[0].Verify(opts); err != nil {
		var ua x509.UnknownAuthorityError
		if errors.As(err, &ua) && w.opt.Files.CA != "" {
			return fmt.Errorf("tls: the server's certificate is not signed by %s: %w", w.opt.Files.CA, err)
		}
		return fmt.Errorf("tls: server certificate: %w", err)
	}
	return nil
}
