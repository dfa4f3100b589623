package integration

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/coord-extproc/coord-extproc/envoy"
)

// A request whose pod works longer than the gRPC connection's lifetime
// (--max-connection-age + grace) or than the server's --shutdown-grace
// after SIGTERM still completes: coord-extproc ended its ext_proc stream
// with OK after the routing answer, so nothing cuts it. The stand-in plays
// both Envoy behaviours: 1.34–1.36 keep the stream to the request's end
// and fail the request (500) if it breaks; 1.37+ close it themselves.
// Against a server that keeps the stream open the 1.34 case fails.
func TestLongRequestOutlivesStreamRotation(t *testing.T) {
	t.Parallel()
	for _, version := range []string{"1.34", envoy.Version} {
		t.Run("envoy "+version, func(t *testing.T) {
			t.Parallel()
			s := newStack(t, stackOptions{
				gatewayArgs: []string{"--envoy-version", version},
				coordArgs:   []string{"--max-connection-age", "300ms", "--shutdown-grace", "300ms"},
			})
			if a := s.do(0, "PUT", "/sessions/long/keys/k", "v"); a.status != 200 {
				t.Fatalf("claim: %d %s %v", a.status, a.raw, a.err)
			}
			// The connection is rotated (age 300 ms + grace 300 ms, closed
			// well within 3 s: measured) while the pod works.
			if a := s.do(0, "GET", "/sessions/long/keys/k?delay=3s", ""); a.status != 200 || a.servedBy == "" {
				t.Fatalf("long request across a connection rotation: %d %q %v (served by %q)", a.status, a.raw, a.err, a.servedBy)
			}
			// coord-extproc is told to stop while the pod works.
			done := make(chan answer, 1)
			go func() { done <- s.do(0, "GET", "/sessions/long/keys/k?delay=1500ms", "") }()
			time.Sleep(300 * time.Millisecond)
			s.coords[0].proc.signal(syscall.SIGTERM)
			if a := <-done; a.status != 200 || a.servedBy == "" {
				t.Fatalf("long request across coord-extproc's shutdown: %d %q %v", a.status, a.raw, a.err)
			}
			s.coords[0].proc.exited(t, 5*time.Second)
		})
	}
}

// bodyModeEdit sets both body modes (and sends the trailers, which full
// duplex needs) in the shipped bootstrap. Full duplex ignores
// mode_override, so it also sends the response headers, as Istio's
// InferencePool configuration does; the other modes keep them SKIP and
// create/delete ask for them.
func bodyModeEdit(mode string) []string {
	edit := []string{
		"request_body_mode: NONE", "request_body_mode: " + mode,
		"response_body_mode: NONE", "response_body_mode: " + mode,
		"request_trailer_mode: SKIP", "request_trailer_mode: SEND",
		"response_trailer_mode: SKIP", "response_trailer_mode: SEND",
	}
	if mode == "FULL_DUPLEX_STREAMED" {
		edit = append(edit, "response_header_mode: SKIP", "response_header_mode: SEND")
	}
	return edit
}

// Envoy configured to send bodies anyway: in STREAMED, BUFFERED_PARTIAL
// and FULL_DUPLEX_STREAMED, requests and responses of several chunks,
// with and without trailers, reach the pod and come back byte for byte;
// creates are bound before their response is released, deletes unbind.
func TestBodyModesKeepEveryByte(t *testing.T) {
	t.Parallel()
	for _, mode := range []string{"STREAMED", "BUFFERED_PARTIAL", "FULL_DUPLEX_STREAMED"} {
		t.Run(mode, func(t *testing.T) {
			t.Parallel()
			s := newStack(t, stackOptions{edit: bodyModeEdit(mode)})
			for _, trailers := range []bool{false, true} {
				t.Run(fmt.Sprintf("trailers=%v", trailers), func(t *testing.T) {
					chunks := [][]byte{[]byte("first chunk;"), bytes.Repeat([]byte{0, 1, 0xfe, 0xff}, 5000), []byte("last")}
					got, gotTrailers, status := postChunks(t, s.gws[0]+"/sessions/bodies/echo", chunks, trailers)
					if status != 200 {
						t.Fatalf("status %d: %q", status, got)
					}
					if want := bytes.Join(chunks, nil); !bytes.Equal(got, want) {
						t.Fatalf("echoed %d bytes, want %d unchanged", len(got), len(want))
					}
					if trailers && gotTrailers.Get("X-Checksum") != "abc" {
						t.Fatalf("trailers %v, want X-Checksum: abc", gotTrailers)
					}
				})
			}
			t.Run("create and delete", func(t *testing.T) {
				spawned, deregistered := s.decisions("create", "spawned"), s.decisions("delete", "deregistered")
				a := s.do(0, "POST", "/tenants", `{"tenantId":"body-`+strings.ToLower(mode)+`"}`)
				if a.status != 201 {
					t.Fatalf("create: %d %s", a.status, a.raw)
				}
				// The pod binds itself too: the counter shows coord-extproc did.
				if n := s.decisions("create", "spawned"); n != spawned+1 {
					t.Fatalf("coord-extproc bound %v creates, want 1", n-spawned)
				}
				id := a.str("tenantId")
				if got := s.smembers("coordinator:destination:" + id); len(got) != 1 || got[0] != a.str("memberId") {
					t.Fatalf("%s bound to %v when the client had the answer, want [%s]", id, got, a.str("memberId"))
				}
				if d := s.do(0, "DELETE", "/tenants/"+id, ""); d.status != 204 {
					t.Fatalf("delete: %d %s", d.status, d.raw)
				}
				if got := s.smembers("coordinator:destination:" + id); len(got) != 0 {
					t.Fatalf("still bound to %v after the delete", got)
				}
				if n := s.decisions("delete", "deregistered"); n != deregistered+1 {
					t.Fatalf("coord-extproc unbound %v deletes, want 1", n-deregistered)
				}
			})
		})
	}
}

// postChunks sends body as paced chunks (so each is read on its own),
// optionally with a trailer, and returns the echoed body and trailers.
func postChunks(t *testing.T, url string, chunks [][]byte, trailers bool) ([]byte, http.Header, int) {
	t.Helper()
	pr, pw := io.Pipe()
	req, err := http.NewRequest("POST", url, pr)
	if err != nil {
		t.Fatal(err)
	}
	if trailers {
		req.Trailer = http.Header{"X-Checksum": nil}
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for _, c := range chunks {
			if _, err := pw.Write(c); err != nil {
				return
			}
			time.Sleep(20 * time.Millisecond)
		}
		if trailers {
			req.Trailer.Set("X-Checksum", "abc")
		}
		pw.Close()
	}()
	resp, err := (&http.Client{Timeout: 10 * time.Second}).Do(req)
	if err != nil {
		pw.CloseWithError(err)
		wg.Wait()
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	wg.Wait()
	if err != nil {
		t.Fatalf("reading the echo: %v", err)
	}
	return b, resp.Trailer, resp.StatusCode
}

// Issue #25 finding 2: a create or delete stream lives until the upstream
// answers (the binding is written on that answer), so it must outlive a
// connection rotation and a SIGTERM for as long as the pod works:
// --shutdown-grace bounds both (grpc-go's MaxConnectionAgeGrace and the
// graceful stop). With a grace shorter than the pod's work the stream is
// cut and Envoy, failing closed, answers 500 although the pod created the
// tenant — what the default grace (35 s, above the shipped 30 s route
// timeout) prevents.
func TestLongCreateDeleteOutliveRotationAndShutdown(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name, grace string
		survives    bool
	}{
		{"grace above the pod's work", "5s", true},
		{"grace below the pod's work", "300ms", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			s := newStack(t, stackOptions{coordArgs: []string{"--max-connection-age", "300ms", "--shutdown-grace", tc.grace}})
			a := s.do(0, "POST", "/tenants?delay=2500ms", `{"tenantId":"slow"}`)
			if !tc.survives {
				if a.status != 500 {
					t.Fatalf("create across a rotation with a short grace: %d %s, want the stream cut (500)", a.status, a.raw)
				}
				return
			}
			if a.status != 201 || a.servedBy == "" {
				t.Fatalf("create across a rotation: %d %s %v", a.status, a.raw, a.err)
			}
			if got := s.smembers("coordinator:destination:slow"); len(got) != 1 || got[0] != a.servedBy {
				t.Fatalf("binding after a long create: %v, want [%s]", got, a.servedBy)
			}
			if d := s.do(0, "DELETE", "/tenants/slow?delay=1500ms", ""); d.status != 204 {
				t.Fatalf("delete across a rotation: %d %s %v", d.status, d.raw, d.err)
			}
			waitFor(t, time.Second, "binding removed by the long delete", func() bool { return len(s.smembers("coordinator:destination:slow")) == 0 })

			// coord-extproc is told to stop while the pod creates.
			done := make(chan answer, 1)
			go func() { done <- s.do(0, "POST", "/tenants?delay=1500ms", `{"tenantId":"slow2"}`) }()
			// Its stream stays open until the pod answers.
			waitFor(t, 2*time.Second, "the create's stream open", func() bool { return s.metric(s.coords[0], "coord_extproc_grpc_streams_open") > 0 })
			s.coords[0].proc.signal(syscall.SIGTERM)
			if a := <-done; a.status != 201 || a.servedBy == "" {
				t.Fatalf("create across coord-extproc's shutdown: %d %s %v", a.status, a.raw, a.err)
			}
			if got := s.smembers("coordinator:destination:slow2"); len(got) != 1 {
				t.Fatalf("binding after a create across the shutdown: %v", got)
			}
			s.coords[0].proc.exited(t, 5*time.Second)
		})
	}
}

// Issue #25 finding 4: "/tenants/t1/..;/t2/keys/k". A patched Envoy (the
// stand-in's default, as 1.40) resolves the segment and the request goes
// to t2's pod; one without the fix for CVE-2026-73551 (1.37.0–1.37.5,
// 1.38.0–1.38.3, 1.39.0) forwards the path as is, and coord-extproc
// refuses it (400) instead of sending t2's request to t1's pod.
func TestDotSegmentWithParameters(t *testing.T) {
	t.Parallel()
	for _, unpatched := range []bool{false, true} {
		t.Run(fmt.Sprintf("unpatched=%v", unpatched), func(t *testing.T) {
			t.Parallel()
			var args []string
			if unpatched {
				args = []string{"--unpatched-paths"}
			}
			s := newStack(t, stackOptions{gatewayArgs: args})
			owners := map[string]string{}
			for i := 0; len(owners) < 2 && i < 20; i++ {
				id := fmt.Sprintf("t%d", i)
				if o := s.mustCreate(0, id); !slices.Contains(slices.Collect(maps.Values(owners)), o) {
					owners[id] = o
				}
			}
			if len(owners) < 2 {
				t.Fatalf("creates all landed on one pod: %v", owners)
			}
			ids := slices.Sorted(maps.Keys(owners))
			first, second := ids[0], ids[1]
			a := s.do(0, "GET", "/tenants/"+first+"/..;/"+second+"/keys/k", "")
			switch {
			case !unpatched && a.servedBy != owners[second]:
				t.Fatalf("patched Envoy: served by %q (%d %s), want %s's pod %s", a.servedBy, a.status, a.raw, second, owners[second])
			case unpatched && (a.status != 400 || a.servedBy != "" || a.str("error") != "Invalid path"):
				t.Fatalf("unpatched Envoy: %d %s served by %q, want 400 Invalid path from coord-extproc", a.status, a.raw, a.servedBy)
			}
		})
	}
}

// Issue #25 finding 8: a '#' in the request target is a 400 from Envoy
// itself (http_reject_path_with_fragment): it never reaches coord-extproc
// or a pod. Sent raw: Go's client would strip the fragment.
func TestFragmentInPathIsRefused(t *testing.T) {
	t.Parallel()
	s := newStack(t, stackOptions{pods: 1})
	owner := s.mustCreate(0, "frag")
	conn, err := net.Dial("tcp", strings.TrimPrefix(s.gws[0], "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(conn, "GET /tenants/frag/keys/k#x HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 400 || resp.Header.Get("X-Served-By") != "" {
		t.Fatalf("a path with a fragment: %d served by %q, want 400 from the gateway (owner %s)", resp.StatusCode, resp.Header.Get("X-Served-By"), owner)
	}
}
