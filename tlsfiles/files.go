package tlsfiles

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

// Files names the PEM files of one TLS identity and its peers' CA. Cert
// and Key go together; CA alone is a client that only verifies.
type Files struct {
	Cert, Key, CA string
}

// Options configure a Watcher.
type Options struct {
	Files Files
	// Poll is how often the files are read for changes (default 1 s):
	// a secret volume's symlink swap changes no watched inode, so the
	// contents are compared.
	Poll   time.Duration
	Logger *slog.Logger
	// Now is time.Now unless a test injects it (expiry checks).
	Now func() time.Time
}

// ErrExpired: a certificate file holds an expired certificate.
var ErrExpired = errors.New("certificate expired")

// material is one consistent reading of the files.
type material struct {
	raw  [3][]byte
	cert *tls.Certificate // nil without Cert/Key
	pool *x509.CertPool   // nil without CA
}

// Watcher holds the current certificate and CA and re-reads them.
type Watcher struct {
	opt Options
	cur atomic.Pointer[material]
	// lastErr is the last refusal, so a broken or missing file is logged
	// once, not at every poll; only the poller touches it.
	lastErr string
	quit    chan struct{}
	wg      sync.WaitGroup
	// Reloads and Failures count changes taken and broken files kept out.
	Reloads, Failures atomic.Uint64
}

// New reads the files once (an error names the file and what is wrong
// with it) and starts watching them; Close stops.
func New(opt Options) (*Watcher, error) {
	if (opt.Files.Cert == "") != (opt.Files.Key == "") {
		return nil, errors.New("tls: a certificate and its key go together")
	}
	if opt.Files == (Files{}) {
		return nil, errors.New("tls: no file given")
	}
	if opt.Poll <= 0 {
		opt.Poll = time.Second
	}
	if opt.Logger == nil {
		opt.Logger = slog.New(slog.DiscardHandler)
	}
	if opt.Now == nil {
		opt.Now = time.Now
	}
	w := &Watcher{opt: opt, quit: make(chan struct{})}
	m, err := w.read()
	if err != nil {
		return nil, err
	}
	w.cur.Store(m)
	w.wg.Add(1)
	go w.run()
	return w, nil
}

// Close stops watching.
func (w *Watcher) Close() {
	close(w.quit)
	w.wg.Wait()
}

func (w *Watcher) run() {
	defer w.wg.Done()
	t := time.NewTicker(w.opt.Poll)
	defer t.Stop()
	for {
		select {
		case <-w.quit:
			return
		case <-t.C:
			w.Reload()
		}
	}
}

// Reload reads the files now and takes them if they changed and are
// valid; a broken change is logged and the current material kept. Calls
// must not overlap (the watcher's own poll, or a test with Poll long).
func (w *Watcher) Reload() {
	raw, err := w.readRaw()
	if err == nil && same(raw, w.cur.Load().raw) {
		w.lastErr = ""
		return
	}
	var m *material
	if err == nil {
		m, err = w.parse(raw)
	}
	if err != nil {
		// A swap in progress shows a cert without its key for a moment:
		// kept out, counted and logged once for as long as it lasts.
		if err.Error() == w.lastErr {
			return
		}
		w.lastErr = err.Error()
		w.Failures.Add(1)
		w.opt.Logger.Warn("TLS files changed but cannot be used; keeping the previous ones", "err", err)
		return
	}
	w.cur.Store(m)
	w.lastErr = ""
	w.Reloads.Add(1)
	w.opt.Logger.Info("TLS files reloaded", "cert", w.opt.Files.Cert, "ca", w.opt.Files.CA, "not_after", notAfter(m))
}

func same(a, b [3][]byte) bool {
	return bytes.Equal(a[0], b[0]) && bytes.Equal(a[1], b[1]) && bytes.Equal(a[2], b[2])
}

func notAfter(m *material) string {
	if m.cert == nil || m.cert.Leaf == nil {
		return ""
	}
	return m.cert.Leaf.NotAfter.UTC().Format(time.RFC3339)
}

func (w *Watcher) read() (*material, error) {
	raw, err := w.readRaw()
	if err != nil {
		return nil, err
	}
	return w.parse(raw)
}

func (w *Watcher) readRaw() ([3][]byte, error) {
	var raw [3][]byte
	for i, f := range []string{w.opt.Files.Cert, w.opt.Files.Key, w.opt.Files.CA} {
		if f == "" {
			continue
		}
		b, err := os.ReadFile(f)
		if err != nil {
			return raw, fmt.Errorf("tls: %w", err)
		}
		raw[i] = b
	}
	return raw, nil
}

func (w *Watcher) parse(raw [3][]byte) (*material, error) {
	m := &material{raw: raw}
	f := w.opt.Files
	if f.Cert != "" {
		c, err := tls.X509KeyPair(raw[0], raw[1])
		if err != nil {
			return nil, fmt.Errorf("tls: %s with key %s: %w", f.Cert, f.Key, err)
		}
		if now := w.opt.Now(); now.After(c.Leaf.NotAfter) {
			return nil, fmt.Errorf("tls: %s: %w on %s", f.Cert, ErrExpired, c.Leaf.NotAfter.UTC().Format(time.RFC3339))
		}
		m.cert = &c
	}
	if f.CA != "" {
		m.pool = x509.NewCertPool()
		if !m.pool.AppendCertsFromPEM(raw[2]) {
			return nil, fmt.Errorf("tls: %s: no PEM certificate in it", f.CA)
		}
	}
	return m, nil
}
