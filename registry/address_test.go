package registry

import (
	"context"
	"errors"
	"testing"
	"time"
)

func TestResolveAddress(t *testing.T) {
	lookups := 0
	now := time.Unix(1000, 0)
	r := newAddressResolver(func(_ context.Context, host string) ([]string, error) {
		lookups++
		switch host {
		case "pod.local":
			return []string{"fd00::7", "10.0.0.7"}, nil
		case "v6only.local":
			return []string{"fd00::8"}, nil
		}
		return nil, errors.New("no such host")
	}, time.Minute, func() time.Time { return now })

	tests := []struct {
		in, want string
	}{
		{"http://127.0.0.1:8080", "127.0.0.1:8080"},
		{"https://127.0.0.1:8443/", "127.0.0.1:8443"},
		{"HTTP://127.0.0.1", "127.0.0.1:80"},
		{"https://10.1.1.1", "10.1.1.1:443"},
		{"127.0.0.1:9000", "127.0.0.1:9000"},
		{" 127.0.0.1:9000 ", "127.0.0.1:9000"},
		{"[::1]:9000", "[::1]:9000"},
		{"http://[fd00::1]:9000", "[fd00::1]:9000"},
		{"[::ffff:10.0.0.1]:9000", "10.0.0.1:9000"},
		{"pod.local:9000", "10.0.0.7:9000"},
		{"http://v6only.local:9000", "[fd00::8]:9000"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := r.resolve(context.Background(), tt.in)
			if err != nil || got != tt.want {
				t.Fatalf("resolve(%q) = %q, %v; want %q", tt.in, got, err, tt.want)
			}
		})
	}
	for _, bad := range []string{"", "127.0.0.1", "127.0.0.1:0", "127.0.0.1:65536", "127.0.0.1:http", "ftp://127.0.0.1:21",
		"unknown.local:80", "0.0.0.0:80", "[fe80::1%eth0]:80", "224.0.0.1:80", ":80", "http://:80", "not an address"} {
		t.Run("bad "+bad, func(t *testing.T) {
			if got, err := r.resolve(context.Background(), bad); !errors.Is(err, ErrBadAddress) {
				t.Fatalf("resolve(%q) = %q, %v; want ErrBadAddress", bad, got, err)
			}
		})
	}

	t.Run("DNS answers are cached for the TTL", func(t *testing.T) {
		before := lookups
		for i := 0; i < 5; i++ {
			if _, err := r.resolve(context.Background(), "pod.local:1"); err != nil {
				t.Fatal(err)
			}
		}
		if lookups != before {
			t.Fatalf("%d lookups within the TTL, want 0", lookups-before)
		}
		now = now.Add(2 * time.Minute)
		if _, err := r.resolve(context.Background(), "pod.local:1"); err != nil || lookups != before+1 {
			t.Fatalf("after the TTL: lookups %d, err %v; want one new lookup", lookups-before, err)
		}
	})
}

func TestValidateID(t *testing.T) {
	for _, ok := range []string{"a", "tenant-1", "ns:tenant_1.v2", string(make([]byte, 0)) + "x"} {
		if err := ValidateID(ok); err != nil {
			t.Errorf("ValidateID(%q) = %v", ok, err)
		}
	}
	long := make([]byte, MaxIDLen+1)
	for i := range long {
		long[i] = 'a'
	}
	for _, bad := range []string{"", "a b", "a\tb", "a\x00", "é", "\x7f", string(long)} {
		if err := ValidateID(bad); !errors.Is(err, ErrInvalidID) {
			t.Errorf("ValidateID(%q) = %v, want ErrInvalidID", bad, err)
		}
	}
	if n := testing.AllocsPerRun(100, func() { _ = ValidateID("tenant-42") }); n != 0 {
		t.Errorf("ValidateID allocates %v times", n)
	}
}
