package main

import (
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"strings"

	"github.com/valkey-io/valkey-go"

	"github.com/coord-extproc/coord-extproc/tlsfiles"
	"github.com/coord-extproc/coord-extproc/valkeyconn"
)

// validateTLS checks the TLS and password flags: pairs given together,
// files present, Valkey TLS only with rediss://. Serve reads the files
// themselves at start-up (an expired or broken file stops it there).
func (c *Config) validateTLS() []error {
	var errs []error
	if (c.TLSCert == "") != (c.TLSKey == "") {
		errs = append(errs, errors.New("--tls-cert and --tls-key go together"))
	}
	if c.TLSClientCA != "" && c.TLSCert == "" {
		errs = append(errs, errors.New("--tls-client-ca needs --tls-cert and --tls-key (mutual TLS is TLS first)"))
	}
	if c.MetricsTLS && c.TLSCert == "" {
		errs = append(errs, errors.New("--metrics-tls needs --tls-cert and --tls-key"))
	}
	f := c.ValkeyFiles
	if (f.Cert == "") != (f.Key == "") {
		errs = append(errs, errors.New("--valkey-cert and --valkey-key go together"))
	}
	if (f.CA != "" || f.Cert != "") && !strings.HasPrefix(c.Valkey, "rediss://") {
		errs = append(errs, fmt.Errorf("--valkey-ca/--valkey-cert: %w (got %s)", valkeyconn.ErrNotTLS, redactURL(c.Valkey)))
	}
	for flagName, p := range map[string]string{"tls-cert": c.TLSCert, "tls-key": c.TLSKey, "tls-client-ca": c.TLSClientCA,
		"valkey-ca": f.CA, "valkey-cert": f.Cert, "valkey-key": f.Key, "valkey-password-file": f.Password} {
		if p == "" {
			continue
		}
		if _, err := os.Stat(p); err != nil {
			errs = append(errs, fmt.Errorf("--%s: %w", flagName, err))
		}
	}
	return errs
}

// redactURL is a Valkey URL without its password, for messages.
func redactURL(raw string) string {
	if u, err := url.Parse(raw); err == nil {
		return u.Redacted()
	}
	return "(unparsable URL)"
}

// valkeyConn is the Valkey client option with the TLS and password files
// applied; stop ends the watching of the TLS files.
func (c *Config) valkeyConn(log *slog.Logger) (valkey.ClientOption, func(), error) {
	opt, err := c.valkeyOption()
	if err != nil {
		return opt, func() {}, fmt.Errorf("--valkey: %w", err)
	}
	stop, err := valkeyconn.Apply(&opt, c.ValkeyFiles, log)
	if err != nil {
		return opt, stop, fmt.Errorf("valkey: %w", err)
	}
	return opt, stop, nil
}

// serverTLS is the gRPC listener's TLS config (nil: plaintext) and the
// watcher that keeps its files current.
func (c *Config) serverTLS(log *slog.Logger) (*tls.Config, *tlsfiles.Watcher, error) {
	if c.TLSCert == "" {
		return nil, nil, nil
	}
	w, err := tlsfiles.New(tlsfiles.Options{Files: tlsfiles.Files{Cert: c.TLSCert, Key: c.TLSKey, CA: c.TLSClientCA}, Logger: log})
	if err != nil {
		return nil, nil, err
	}
	cfg, err := w.ServerConfig()
	if err != nil {
		w.Close()
		return nil, nil, err
	}
	return cfg, w, nil
}
