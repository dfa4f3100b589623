package tlsfiles

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/coord-extproc/coord-extproc/internal/certtest"
)

func TestStartErrorsNameTheFile(t *testing.T) {
	dir := t.TempDir()
	ca := certtest.NewCA(t, "ca")
	good, expired, other := ca.Issue(t, "a", time.Time{}), ca.Issue(t, "b", time.Now().Add(-time.Minute)), ca.Issue(t, "c", time.Time{})
	cert, key := certtest.Write(t, dir, "tls.crt", good.CertPEM), certtest.Write(t, dir, "tls.key", good.KeyPEM)
	tests := []struct {
		name  string
		files Files
		want  string
		is    error
	}{
		{"key of another certificate", Files{Cert: cert, Key: certtest.Write(t, dir, "other.key", other.KeyPEM)}, "other.key", nil},
		{"expired", Files{Cert: certtest.Write(t, dir, "old.crt", expired.CertPEM), Key: certtest.Write(t, dir, "old.key", expired.KeyPEM)}, "old.crt", ErrExpired},
		{"CA file without a certificate", Files{Cert: cert, Key: key, CA: certtest.Write(t, dir, "ca.crt", []byte("nothing"))}, "ca.crt", nil},
		{"missing file", Files{Cert: cert, Key: dir + "/absent.key"}, "absent.key", nil},
		{"certificate without key", Files{Cert: cert}, "go together", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			w, err := New(Options{Files: tt.files})
			if err == nil {
				w.Close()
				t.Fatal("accepted")
			}
			if !strings.Contains(err.Error(), tt.want) || (tt.is != nil && !errors.Is(err, tt.is)) {
				t.Fatalf("err = %v, want it to name %q", err, tt.want)
			}
		})
	}
}

// A broken new file (a certificate whose key has not arrived yet) keeps
// the old pair; the complete new pair is taken.
func TestBrokenChangeKeepsTheOldPair(t *testing.T) {
	dir := t.TempDir()
	ca := certtest.NewCA(t, "ca")
	first, second := ca.Issue(t, "a", time.Time{}), ca.Issue(t, "a", time.Time{})
	certtest.Swap(t, dir, "tls.crt", first.CertPEM)
	certtest.Swap(t, dir, "tls.key", first.KeyPEM)
	w, err := New(Options{Files: Files{Cert: dir + "/tls.crt", Key: dir + "/tls.key"}, Poll: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	serial := func() string { return w.cur.Load().cert.Leaf.SerialNumber.String() }

	certtest.Swap(t, dir, "tls.crt", second.CertPEM) // the key still the old one
	w.Reload()
	w.Reload() // the same broken state again: counted (and logged) once
	if serial() != first.Serial.String() || w.Failures.Load() != 1 {
		t.Fatalf("half-swapped pair taken (serial %s, failures %d)", serial(), w.Failures.Load())
	}
	certtest.Swap(t, dir, "tls.key", second.KeyPEM)
	w.Reload()
	if serial() != second.Serial.String() || w.Reloads.Load() != 1 {
		t.Fatalf("complete new pair not taken (serial %s, reloads %d)", serial(), w.Reloads.Load())
	}
	w.Reload() // unchanged files: nothing happens
	if w.Reloads.Load() != 1 {
		t.Fatalf("unchanged files reloaded")
	}
}
