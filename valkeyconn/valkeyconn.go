package valkeyconn

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strings"

	"github.com/valkey-io/valkey-go"

	"github.com/coord-extproc/coord-extproc/tlsfiles"
)

// Files are the optional files of a Valkey connection.
type Files struct {
	// CA verifies the servers (a private CA); Cert and Key are this
	// client's certificate. They need a rediss:// URL.
	CA, Cert, Key string
	// Password is a file holding the password (a trailing newline is
	// dropped), so it never sits in a process list; the user comes from
	// the URL.
	Password string
}

// ErrNotTLS: TLS files given for a URL that is not rediss://.
var ErrNotTLS = errors.New("TLS files need a rediss:// URL")

// Apply sets opt's password and TLS from f. The returned stop ends the
// watching of the TLS files (certificates are re-read when they change,
// for new connections). Errors name the file.
func Apply(opt *valkey.ClientOption, f Files, log *slog.Logger) (stop func(), err error) {
	stop = func() {}
	if f.Password != "" {
		b, err := os.ReadFile(f.Password)
		if err != nil {
			return stop, fmt.Errorf("password file: %w", err)
		}
		pw := strings.TrimRight(string(b), "\r\n")
		if pw == "" {
			return stop, fmt.Errorf("password file %s is empty", f.Password)
		}
		opt.Password = pw
	}
	if f.CA == "" && f.Cert == "" && f.Key == "" {
		return stop, nil
	}
	if opt.TLSConfig == nil {
		return stop, ErrNotTLS
	}
	w, err := tlsfiles.New(tlsfiles.Options{Files: tlsfiles.Files{Cert: f.Cert, Key: f.Key, CA: f.CA}, Logger: log})
	if err != nil {
		return stop, err
	}
	name := opt.TLSConfig.ServerName
	if name == "" && len(opt.InitAddress) > 0 {
		name, _, _ = net.SplitHostPort(opt.InitAddress[0])
	}
	opt.TLSConfig = w.ClientConfig(name)
	return w.Close, nil
}
