package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net/http"
	"net/http/httputil"
	"net/url"
	"strings"
	"time"

	"github.com/coord-extproc/coord-extproc/registry"
)

// The demo pod's side of a planned move (SPEC §8.2), the pattern the
// library's docs point to. While a tenant moves, its new requests wait
// here and those already inside finish; its keys go to the new pod
// (POST /internal/handoff/{tenant}); once the owner is switched, the
// requests that still reach this pod (routed just before the switch) are
// forwarded to the new owner, so none is lost or answered from stale
// data. If the move fails, the waiting requests are served here.

const forwardedHeader = "X-Demo-Forwarded"

// handoff is the HandoffFunc: dehydrate the tenant and send it to to.
func (p *pod) handoff(ctx context.Context, tenant string, to registry.PeerLoad) error {
	p.mu.Lock()
	if p.moving[tenant] == nil {
		p.moving[tenant] = make(chan struct{})
	}
	p.mu.Unlock()
	for { // requests already inside finish first: their writes must travel
		p.mu.Lock()
		n := p.inflight[tenant]
		p.mu.Unlock()
		if n == 0 {
			break
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(2 * time.Millisecond):
		}
	}
	p.mu.Lock()
	keys := maps.Clone(p.tenants[tenant])
	p.mu.Unlock()
	body, err := json.Marshal(map[string]any{"keys": keys})
	if err != nil {
		return err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, baseURL(to.Address)+"/internal/handoff/"+url.PathEscape(tenant), bytes.NewReader(body))
	if err != nil {
		return err
	}
	resp, err := p.client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return fmt.Errorf("%s answered %s: %s", to.ID, resp.Status, b)
	}
	return nil
}

// handedOff is OnHandoff: after the switch, forward the tenant's requests
// to its new owner; otherwise serve them here again.
func (p *pod) handedOff(tenant string, to registry.PeerLoad, err error) {
	p.mu.Lock()
	ch := p.moving[tenant]
	delete(p.moving, tenant)
	if err == nil && to.ID != "" {
		p.movedTo[tenant] = baseURL(to.Address)
		delete(p.tenants, tenant)
	}
	p.mu.Unlock()
	if ch != nil {
		close(ch)
	}
}

// receive is POST /internal/handoff/{tenant}: rehydrate a tenant handed
// over by a peer. The old owner switches the binding once this answers.
func (p *pod) receive(w http.ResponseWriter, r *http.Request) {
	tenant := r.PathValue("tenant")
	if err := registry.ValidateID(tenant); err != nil {
		p.fail(w, 400, "invalid tenant id")
		return
	}
	var in struct {
		Keys map[string]string `json:"keys"`
	}
	if err := json.NewDecoder(io.LimitReader(r.Body, 8<<20)).Decode(&in); err != nil {
		p.fail(w, 400, "body must be JSON")
		return
	}
	if in.Keys == nil {
		in.Keys = map[string]string{}
	}
	p.mu.Lock()
	p.tenants[tenant] = in.Keys
	delete(p.movedTo, tenant)
	p.mu.Unlock()
	_ = p.member.Track(tenant)
	p.log.Info("tenant received", "tenant", tenant, "keys", len(in.Keys))
	p.reply(w, 200, map[string]any{"tenantId": tenant})
}

// moved holds a request for a tenant on the move until the move ends, and
// forwards it if the tenant now lives elsewhere. It reports whether it
// answered the request.
func (p *pod) moved(w http.ResponseWriter, r *http.Request, tenant string) bool {
	p.mu.Lock()
	ch := p.moving[tenant]
	p.mu.Unlock()
	if ch != nil {
		select {
		case <-ch:
		case <-r.Context().Done():
			return true
		}
	}
	p.mu.Lock()
	to, ok := p.movedTo[tenant]
	p.mu.Unlock()
	if !ok {
		return false
	}
	if r.Header.Get(forwardedHeader) != "" { // never a second hop
		p.fail(w, 503, "tenant moved twice in flight; retry")
		return true
	}
	target, err := url.Parse(to)
	if err != nil {
		p.fail(w, 502, "bad forward address")
		return true
	}
	rp := httputil.NewSingleHostReverseProxy(target)
	rp.Transport = p.client.Transport
	r.Header.Set(forwardedHeader, p.member.ID())
	rp.ServeHTTP(w, r)
	return true
}

// baseURL turns a registered address into an http base URL.
func baseURL(addr string) string {
	if strings.Contains(addr, "://") {
		return strings.TrimSuffix(addr, "/")
	}
	return "http://" + addr
}
