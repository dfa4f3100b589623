package extproc

import (
	"encoding/json"
	"strconv"
	"sync"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"google.golang.org/protobuf/types/known/structpb"
)

// retryAfterSeconds is sent with every 503: the registry usually heals (a
// pod registers, Valkey comes back) within a second or two.
const retryAfterSeconds = "1"

// setHeader builds an ext_proc header mutation entry. Envoy's ext_proc
// reads raw_value only (a value in `value` alone arrives empty) and the
// append action is explicit: the default differs between Envoy versions.
func setHeader(key, value string) *corev3.HeaderValueOption {
	return &corev3.HeaderValueOption{
		Header:       &corev3.HeaderValue{Key: key, RawValue: []byte(value)},
		AppendAction: corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD,
	}
}

// answerCache holds one immutable routed answer per member and address.
// gRPC only reads a message while sending it, so concurrent streams can
// share one: for a cached destination the answer then costs no allocation.
type answerCache[T any] struct {
	mu sync.RWMutex
	m  map[[2]string]T
}

// maxAnswers bounds the cache; pods are few, so this is only a guard.
const maxAnswers = 10_000

func (c *answerCache[T]) get(id, addr string, build func() T) T {
	k := [2]string{id, addr}
	c.mu.RLock()
	v, ok := c.m[k]
	c.mu.RUnlock()
	if ok {
		return v
	}
	v = build()
	c.mu.Lock()
	if c.m == nil || len(c.m) >= maxAnswers {
		c.m = make(map[[2]string]T)
	}
	c.m[k] = v
	c.mu.Unlock()
	return v
}

// sharedRouted is the routed answer for plain routes, shared; never mutate it.
func (s *Server) sharedRouted(o *outcome) *extprocv3.ProcessingResponse {
	return s.answers.get(o.member.ID, o.member.Address, func() *extprocv3.ProcessingResponse {
		r := s.routedHeaders(o)
		s.codec.Freeze(r)
		return r
	})
}

// routedHeaders builds a routed answer the caller may modify.
func (s *Server) routedHeaders(o *outcome) *extprocv3.ProcessingResponse {
	resp := &extprocv3.ProcessingResponse{
		Response: &extprocv3.ProcessingResponse_RequestHeaders{RequestHeaders: &extprocv3.HeadersResponse{
			Response: &extprocv3.CommonResponse{HeaderMutation: &extprocv3.HeaderMutation{
				SetHeaders: []*corev3.HeaderValueOption{
					setHeader(s.opt.EndpointHeader, o.member.Address),
					setHeader(MemberHeader, o.member.ID),
				},
			}},
		}},
		DynamicMetadata: endpointMetadata(s.opt.EndpointHeader, o.member.Address),
	}
	return resp
}

// endpointMetadata is ext_proc's dynamic metadata: namespace, then key.
func endpointMetadata(key, addr string) *structpb.Struct {
	return &structpb.Struct{Fields: map[string]*structpb.Value{
		MetadataNamespace: structpb.NewStructValue(authzMetadata(key, addr)),
	}}
}

// authzMetadata is ext_authz's: Envoy stores the whole struct under the
// fixed namespace envoy.filters.http.ext_authz (whatever the filter is named), so it holds the key only.
func authzMetadata(key, addr string) *structpb.Struct {
	return &structpb.Struct{Fields: map[string]*structpb.Value{key: structpb.NewStringValue(addr)}}
}

// passHeaders strips any client-sent routing headers: a client must never
// choose the upstream address.
func (s *Server) passHeaders() *extprocv3.ProcessingResponse {
	return &extprocv3.ProcessingResponse{
		Response: &extprocv3.ProcessingResponse_RequestHeaders{RequestHeaders: &extprocv3.HeadersResponse{
			Response: &extprocv3.CommonResponse{HeaderMutation: &extprocv3.HeaderMutation{
				RemoveHeaders: []string{s.opt.EndpointHeader, MemberHeader},
			}},
		}},
	}
}

func immediate(status int, message string, retry bool) *extprocv3.ProcessingResponse {
	var hdrs []*corev3.HeaderValueOption
	var body []byte
	if message != "" { // an empty answer (a 204) carries no content type
		body = errorBody(message)
		hdrs = append(hdrs, setHeader("content-type", "application/json"))
	}
	if retry {
		hdrs = append(hdrs, setHeader("retry-after", retryAfterSeconds))
	}
	return &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_ImmediateResponse{
		ImmediateResponse: &extprocv3.ImmediateResponse{
			Status:  &typev3.HttpStatus{Code: typev3.StatusCode(status)},
			Headers: &extprocv3.HeaderMutation{SetHeaders: hdrs},
			Body:    body,
			Details: "coord_extproc_" + strconv.Itoa(status),
		},
	}}
}

// errorBody is the JSON error document {"error": message}.
func errorBody(message string) []byte {
	b, _ := json.Marshal(struct {
		Error string `json:"error"`
	}{message}) // a struct of one string always marshals
	return b
}

func continueRequestBody() *extprocv3.ProcessingResponse {
	return &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_RequestBody{RequestBody: &extprocv3.BodyResponse{}}}
}

func continueRequestTrailers() *extprocv3.ProcessingResponse {
	return &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_RequestTrailers{RequestTrailers: &extprocv3.TrailersResponse{}}}
}

func continueResponseHeaders() *extprocv3.ProcessingResponse {
	return &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_ResponseHeaders{ResponseHeaders: &extprocv3.HeadersResponse{}}}
}

func continueResponseBody() *extprocv3.ProcessingResponse {
	return &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_ResponseBody{ResponseBody: &extprocv3.BodyResponse{}}}
}

func continueResponseTrailers() *extprocv3.ProcessingResponse {
	return &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_ResponseTrailers{ResponseTrailers: &extprocv3.TrailersResponse{}}}
}
