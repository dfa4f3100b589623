package extproc

import (
	"bytes"
	"fmt"
	"testing"

	filterv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
)

func withModes(req *extprocv3.ProcessingRequest, reqMode, respMode filterv3.ProcessingMode_BodySendMode) *extprocv3.ProcessingRequest {
	req.ProtocolConfig = &extprocv3.ProtocolConfiguration{RequestBodyMode: reqMode, ResponseBodyMode: respMode}
	return req
}

func bodyMsg(response bool, body string, eos bool) *extprocv3.ProcessingRequest {
	b := &extprocv3.HttpBody{Body: []byte(body), EndOfStream: eos}
	if response {
		return &extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_ResponseBody{ResponseBody: b}}
	}
	return &extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_RequestBody{RequestBody: b}}
}

// The stream ends with OK right after the final answer whenever Envoy
// keeps its own copy of what it sent (SPEC §5.1): a routed GET, a pass,
// an error, and a POST in every body mode but full duplex.
func TestStreamEndsAfterFinalAnswer(t *testing.T) {
	e := newEnv(t)
	e.pod(t, "live", 7001)
	e.do(t, "SADD", "coordinator:destination:bound", "live")
	for _, mode := range []filterv3.ProcessingMode_BodySendMode{filterv3.ProcessingMode_NONE, filterv3.ProcessingMode_STREAMED, filterv3.ProcessingMode_BUFFERED, filterv3.ProcessingMode_BUFFERED_PARTIAL} {
		for _, path := range []string{"/tenants/bound/x", "/public/x", "/tenants/unknown/x", "/tenants/bad%20id/x"} {
			t.Run(mode.String()+path, func(t *testing.T) {
				s := e.open(t)
				defer s.close()
				req := reqHeaders("POST", path)
				req.GetRequestHeaders().EndOfStream = false // a body follows
				s.send(withModes(req, mode, mode))
				s.expectEnd()
			})
		}
	}
}

// In full duplex Envoy keeps nothing: every chunk comes back, unchanged
// and in order, in streamed_response, and the stream stays until the
// request's end (body end_of_stream or trailers). Several chunks, with and
// without trailers, for a route and for a pass.
func TestFullDuplexEchoesEveryChunk(t *testing.T) {
	e := newEnv(t)
	e.pod(t, "live", 7001)
	e.do(t, "SADD", "coordinator:destination:bound", "live")
	fd := filterv3.ProcessingMode_FULL_DUPLEX_STREAMED
	for _, path := range []string{"/tenants/bound/x", "/public/x"} {
		for _, trailers := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s trailers=%v", path, trailers), func(t *testing.T) {
				s := e.open(t)
				defer s.close()
				req := reqHeaders("POST", path)
				req.GetRequestHeaders().EndOfStream = false
				if resp := s.send(withModes(req, fd, fd)); resp.GetRequestHeaders() == nil {
					t.Fatalf("headers answered with %v", resp)
				}
				chunks := []string{"first,", "", "second,", string(bytes.Repeat([]byte{0, 0xff}, 3000))}
				var got []byte
				for i, c := range chunks {
					eos := !trailers && i == len(chunks)-1
					resp := s.send(bodyMsg(false, c, eos))
					sr := resp.GetRequestBody().GetResponse().GetBodyMutation().GetStreamedResponse()
					if sr == nil || sr.GetEndOfStream() != eos {
						t.Fatalf("chunk %d answered with %v", i, resp)
					}
					got = append(got, sr.GetBody()...)
				}
				if trailers {
					if resp := s.send(&extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_RequestTrailers{RequestTrailers: &extprocv3.HttpTrailers{}}}); resp.GetRequestTrailers() == nil {
						t.Fatalf("trailers answered with %v", resp)
					}
				}
				if want := []byte(fmt.Sprint(chunks[0], chunks[1], chunks[2], chunks[3])); !bytes.Equal(got, want) {
					t.Fatalf("echoed %d bytes, want %d unchanged", len(got), len(want))
				}
				// The response is full duplex too: its chunks may come at
				// any moment, so the stream waits for the response's end.
				rh := respHeaders(200)
				rh.GetResponseHeaders().EndOfStream = true
				if resp := s.send(rh); resp.GetResponseHeaders() == nil {
					t.Fatalf("response headers answered with %v", resp)
				}
				s.expectEnd()
			})
		}
	}
}

// A create in full duplex (Envoy ignores the mode override there): the
// response headers and body are held until the binding is written, then
// released unchanged; past the body limit they are released unbound.
func TestFullDuplexCreate(t *testing.T) {
	e := newEnv(t)
	e.pod(t, "live", 7001)
	fd := filterv3.ProcessingMode_FULL_DUPLEX_STREAMED
	for _, tc := range []struct {
		name     string
		chunks   []string
		trailers bool
		bound    bool
	}{
		{"two chunks", []string{`{"tenantId":`, `"fd-1"}`}, false, true},
		{"with trailers", []string{`{"tenantId":"fd-2"`, `}`}, true, true},
		{"over the limit", []string{`{"tenantId":"fd-3","pad":"`, string(bytes.Repeat([]byte("x"), 1100)), `"}`}, false, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := e.open(t)
			defer s.close()
			req := reqHeaders("POST", "/tenants")
			req.GetRequestHeaders().EndOfStream = true // no request body
			s.send(withModes(req, fd, fd))
			rh := respHeaders(201)
			rh.GetResponseHeaders().EndOfStream = false
			if err := s.s.Send(rh); err != nil {
				t.Fatal(err)
			}
			for i, c := range tc.chunks {
				if err := s.s.Send(bodyMsg(true, c, !tc.trailers && i == len(tc.chunks)-1)); err != nil {
					t.Fatal(err)
				}
			}
			if tc.trailers {
				if err := s.s.Send(&extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_ResponseTrailers{ResponseTrailers: &extprocv3.HttpTrailers{}}}); err != nil {
					t.Fatal(err)
				}
			}
			first, err := s.s.Recv()
			if err != nil || first.GetResponseHeaders() == nil {
				t.Fatalf("first answer %v, %v: want the held response headers", first, err)
			}
			// Released: the binding is already written.
			if got := smembers(t, e, "coordinator:destination:"+idOf(tc.chunks)); tc.bound != (len(got) == 1) {
				t.Fatalf("bound %v when released, want bound=%v", got, tc.bound)
			}
			var body []byte
			for range tc.chunks {
				resp, err := s.s.Recv()
				if err != nil {
					t.Fatal(err)
				}
				body = append(body, resp.GetResponseBody().GetResponse().GetBodyMutation().GetStreamedResponse().GetBody()...)
			}
			if tc.trailers {
				if resp, err := s.s.Recv(); err != nil || resp.GetResponseTrailers() == nil {
					t.Fatalf("trailers answered with %v, %v", resp, err)
				}
			}
			if want := fmt.Sprint(stringsAny(tc.chunks)...); string(body) != want {
				t.Fatalf("released %q, want %q", body, want)
			}
			s.expectEnd()
		})
	}
}

func idOf(chunks []string) string {
	var all string
	for _, c := range chunks {
		all += c
	}
	for _, id := range []string{"fd-1", "fd-2", "fd-3"} {
		if bytes.Contains([]byte(all), []byte(`"`+id+`"`)) {
			return id
		}
	}
	return ""
}

func stringsAny(s []string) []any {
	out := make([]any, len(s))
	for i, v := range s {
		out[i] = v
	}
	return out
}
