package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coord-extproc/coord-extproc/registry"
)

// pod is the in-memory state of one demo pod.
type pod struct {
	log    *slog.Logger
	opt    options
	member *registry.Member

	mu       sync.Mutex
	tenants  map[string]map[string]string
	txs      map[string]*tx
	inflight map[string]int // per destination
	total    atomic.Int64   // in-flight requests

	hot map[string]time.Time // destination -> over the cap since

	// Planned moves (handoff.go): tenants on the move, and where moved
	// tenants went.
	moving  map[string]chan struct{}
	movedTo map[string]string
	client  *http.Client
}

type tx struct {
	tenant string
	writes map[string]string
}

func newPod(log *slog.Logger, o options) *pod {
	return &pod{log: log, opt: o, tenants: map[string]map[string]string{}, txs: map[string]*tx{},
		inflight: map[string]int{}, hot: map[string]time.Time{},
		moving: map[string]chan struct{}{}, movedTo: map[string]string{}, client: &http.Client{Timeout: 10 * time.Second}}
}

// load is the figure sent with heartbeats: open transactions plus
// in-flight requests.
func (p *pod) load() int64 {
	p.mu.Lock()
	n := len(p.txs)
	p.mu.Unlock()
	return int64(n) + p.total.Load()
}

func (p *pod) routes() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) { p.reply(w, 200, map[string]any{"status": "ok"}) })
	mux.HandleFunc("POST /tenants", p.createTenant)
	mux.HandleFunc("DELETE /tenants/{tenant}", p.deleteTenant)
	for _, base := range []string{"/tenants/{tenant}", "/sessions/{tenant}"} {
		mux.HandleFunc("PUT "+base+"/keys/{key}", p.tracked(p.putKey))
		mux.HandleFunc("GET "+base+"/keys/{key}", p.tracked(p.getKey))
		mux.HandleFunc("DELETE "+base+"/keys/{key}", p.tracked(p.deleteKey))
		mux.HandleFunc("POST "+base+"/transactions", p.tracked(p.begin))
		mux.HandleFunc("POST "+base+"/echo", p.tracked(p.echo))
	}
	mux.HandleFunc("PUT /transactions/{lock}/keys/{key}", p.txPut)
	mux.HandleFunc("GET /transactions/{lock}/keys/{key}", p.txGet)
	mux.HandleFunc("POST /transactions/{lock}/commit", p.txEnd(true))
	mux.HandleFunc("POST /transactions/{lock}/rollback", p.txEnd(false))
	mux.HandleFunc("POST /internal/handoff/{tenant}", p.receive)
	return mux
}

// echo streams the request body back as it arrives, one flushed write
// per read, and the request's trailers as response trailers: the suite
// checks that every byte survives the gateway in each body mode.
func (p *pod) echo(w http.ResponseWriter, r *http.Request, _ string) {
	// HTTP/1.1 reads of the request body after the response started
	// need full duplex turned on.
	_ = http.NewResponseController(w).EnableFullDuplex()
	w.Header().Set("X-Served-By", p.member.ID())
	w.Header().Set("Content-Type", "application/octet-stream")
	w.WriteHeader(200)
	f, _ := w.(http.Flusher)
	buf := make([]byte, 16<<10)
	for {
		n, err := r.Body.Read(buf)
		if n > 0 {
			_, _ = w.Write(buf[:n])
			if f != nil {
				f.Flush()
			}
		}
		if err != nil {
			break
		}
	}
	for k, vs := range r.Trailer {
		for _, v := range vs {
			w.Header().Add(http.TrailerPrefix+k, v)
		}
	}
}

func (p *pod) reply(w http.ResponseWriter, status int, v map[string]any) {
	v["memberId"] = p.member.ID()
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Served-By", p.member.ID())
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func (p *pod) fail(w http.ResponseWriter, status int, msg string) {
	p.reply(w, status, map[string]any{"error": msg})
}

// tracked counts in-flight requests per destination (for load and
// fan-out), honours ?delay= to simulate slow work, and adopts a
// destination this pod does not know yet: coord-extproc only sends it
// here if the registry says this pod serves it (a claim, an orphan
// reassignment or a fan-out), so the pod records the binding as its own.
func (p *pod) tracked(h func(http.ResponseWriter, *http.Request, string)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		tenant := r.PathValue("tenant")
		if err := registry.ValidateID(tenant); err != nil {
			p.fail(w, 400, "invalid tenant id")
			return
		}
		if p.moved(w, r, tenant) {
			return
		}
		p.total.Add(1)
		p.mu.Lock()
		p.inflight[tenant]++
		_, known := p.tenants[tenant]
		if !known {
			p.tenants[tenant] = map[string]string{}
		}
		p.mu.Unlock()
		defer func() {
			p.mu.Lock()
			if p.inflight[tenant]--; p.inflight[tenant] <= 0 {
				delete(p.inflight, tenant)
			}
			p.mu.Unlock()
			p.total.Add(-1)
		}()
		if !known {
			// Record the binding off the request path: a slow or absent
			// registry must not stall requests the pod can serve.
			go func() {
				if err := p.member.AddToDestination(context.Background(), tenant); err != nil {
					p.log.Warn("adopt destination", "tenant", tenant, "err", err)
				}
			}()
			p.log.Info("adopted destination", "tenant", tenant)
		}
		if !delayed(r) {
			return
		}
		// ?status=5xx plays an application that fails every request while
		// its process is fine: not a pod failure (SPEC §8.1).
		if code, err := strconv.Atoi(r.URL.Query().Get("status")); err == nil && code >= 500 && code <= 599 {
			p.fail(w, code, "simulated application error")
			return
		}
		h(w, r, tenant)
	}
}

// delayed honours ?delay= (up to 10 s) to simulate slow work; false when
// the client went away meanwhile.
func delayed(r *http.Request) bool {
	d, err := time.ParseDuration(r.URL.Query().Get("delay"))
	if err != nil || d <= 0 || d > 10*time.Second {
		return true
	}
	select {
	case <-time.After(d):
		return true
	case <-r.Context().Done():
		return false
	}
}

func (p *pod) createTenant(w http.ResponseWriter, r *http.Request) {
	if !delayed(r) {
		return
	}
	var in struct {
		TenantID string `json:"tenantId"`
	}
	body, _ := io.ReadAll(io.LimitReader(r.Body, 64<<10))
	if len(body) > 0 {
		if err := json.Unmarshal(body, &in); err != nil {
			p.fail(w, 400, "body must be JSON")
			return
		}
	}
	if in.TenantID == "" {
		in.TenantID = "t-" + randomHex(6)
	}
	if err := registry.ValidateID(in.TenantID); err != nil {
		p.fail(w, 400, "invalid tenantId")
		return
	}
	p.mu.Lock()
	_, exists := p.tenants[in.TenantID]
	if !exists {
		p.tenants[in.TenantID] = map[string]string{}
	}
	p.mu.Unlock()
	if exists {
		p.fail(w, 409, "tenant exists")
		return
	}
	// Bind only if nobody holds the tenant yet (coord-extproc's create
	// route binds the same way): an unconditional add would let a client
	// naming another pod's tenant split it over two pods.
	if err := p.member.Claim(r.Context(), in.TenantID); err != nil {
		p.mu.Lock()
		delete(p.tenants, in.TenantID)
		p.mu.Unlock()
		if errors.Is(err, registry.ErrConflict) {
			p.fail(w, 409, "tenant exists on another pod")
			return
		}
		p.log.Warn("bind new tenant", "tenant", in.TenantID, "err", err)
		p.fail(w, 503, "could not bind the tenant")
		return
	}
	p.reply(w, 201, map[string]any{"tenantId": in.TenantID})
}

func (p *pod) deleteTenant(w http.ResponseWriter, r *http.Request) {
	if !delayed(r) {
		return
	}
	tenant := r.PathValue("tenant")
	p.mu.Lock()
	_, ok := p.tenants[tenant]
	delete(p.tenants, tenant)
	p.mu.Unlock()
	if !ok {
		p.fail(w, 404, "no such tenant")
		return
	}
	if err := p.member.RemoveFromDestination(r.Context(), tenant); err != nil {
		p.log.Warn("unbind tenant", "tenant", tenant, "err", err)
	}
	w.Header().Set("X-Served-By", p.member.ID())
	w.WriteHeader(204)
}

func (p *pod) putKey(w http.ResponseWriter, r *http.Request, tenant string) {
	v, _ := io.ReadAll(io.LimitReader(r.Body, 64<<10))
	key := r.PathValue("key")
	p.mu.Lock()
	p.tenants[tenant][key] = string(v)
	p.mu.Unlock()
	p.reply(w, 200, map[string]any{"tenantId": tenant, "key": key, "value": string(v)})
}

func (p *pod) getKey(w http.ResponseWriter, r *http.Request, tenant string) {
	key := r.PathValue("key")
	p.mu.Lock()
	v, ok := p.tenants[tenant][key]
	p.mu.Unlock()
	if !ok {
		p.fail(w, 404, "no such key")
		return
	}
	p.reply(w, 200, map[string]any{"tenantId": tenant, "key": key, "value": v})
}

func (p *pod) deleteKey(w http.ResponseWriter, r *http.Request, tenant string) {
	p.mu.Lock()
	delete(p.tenants[tenant], r.PathValue("key"))
	p.mu.Unlock()
	p.reply(w, 200, map[string]any{"tenantId": tenant})
}

func (p *pod) begin(w http.ResponseWriter, r *http.Request, tenant string) {
	lock := "tx-" + randomHex(8)
	p.mu.Lock()
	p.txs[lock] = &tx{tenant: tenant, writes: map[string]string{}}
	p.mu.Unlock()
	meta := map[string]string{"startedAt": time.Now().UTC().Format(time.RFC3339Nano)}
	if err := p.member.RegisterLock(r.Context(), lock, tenant, meta, p.opt.lease); err != nil {
		p.mu.Lock()
		delete(p.txs, lock)
		p.mu.Unlock()
		p.fail(w, 503, "could not register the transaction")
		return
	}
	p.reply(w, 201, map[string]any{"lockId": lock, "tenantId": tenant})
}

// txLookup finds a transaction held here and extends its lease.
func (p *pod) txLookup(r *http.Request) (*tx, string, bool) {
	lock := r.PathValue("lock")
	p.mu.Lock()
	t, ok := p.txs[lock]
	p.mu.Unlock()
	if ok && p.opt.lease > 0 {
		if err := p.member.RefreshLock(r.Context(), lock, p.opt.lease); errors.Is(err, registry.ErrLockNotFound) {
			return nil, lock, false
		}
	}
	return t, lock, ok
}

func (p *pod) txPut(w http.ResponseWriter, r *http.Request) {
	t, lock, ok := p.txLookup(r)
	if !ok {
		p.fail(w, 404, "no such transaction")
		return
	}
	v, _ := io.ReadAll(io.LimitReader(r.Body, 64<<10))
	p.mu.Lock()
	t.writes[r.PathValue("key")] = string(v)
	p.mu.Unlock()
	p.reply(w, 200, map[string]any{"lockId": lock, "key": r.PathValue("key"), "value": string(v)})
}

func (p *pod) txGet(w http.ResponseWriter, r *http.Request) {
	t, lock, ok := p.txLookup(r)
	if !ok {
		p.fail(w, 404, "no such transaction")
		return
	}
	key := r.PathValue("key")
	p.mu.Lock()
	v, found := t.writes[key]
	if !found {
		v, found = p.tenants[t.tenant][key]
	}
	p.mu.Unlock()
	if !found {
		p.fail(w, 404, "no such key")
		return
	}
	p.reply(w, 200, map[string]any{"lockId": lock, "key": key, "value": v})
}

func (p *pod) txEnd(commit bool) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		lock := r.PathValue("lock")
		p.mu.Lock()
		t, ok := p.txs[lock]
		if ok {
			delete(p.txs, lock)
			if commit {
				if p.tenants[t.tenant] == nil {
					p.tenants[t.tenant] = map[string]string{}
				}
				for k, v := range t.writes {
					p.tenants[t.tenant][k] = v
				}
			}
		}
		p.mu.Unlock()
		if !ok {
			p.fail(w, 404, "no such transaction")
			return
		}
		if err := p.member.UnregisterLock(r.Context(), lock); err != nil {
			p.log.Warn("unregister lock", "lock", lock, "err", err)
		}
		outcome := "rolled back"
		if commit {
			outcome = "committed"
		}
		p.reply(w, 200, map[string]any{"lockId": lock, "outcome": outcome})
	}
}

// watchHotDestinations fans a destination out when its in-flight requests
// here stay above the cap for fanout-hold.
func (p *pod) watchHotDestinations(ctx context.Context) {
	t := time.NewTicker(25 * time.Millisecond)
	defer t.Stop()
	fanned := map[string]time.Time{}
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			var due []string
			p.mu.Lock()
			for d := range p.hot {
				if p.inflight[d] <= p.opt.fanoutCap {
					delete(p.hot, d)
				}
			}
			for d, n := range p.inflight {
				if n <= p.opt.fanoutCap {
					continue
				}
				since, ok := p.hot[d]
				if !ok {
					p.hot[d] = now
					continue
				}
				if now.Sub(since) >= p.opt.fanoutHold && now.Sub(fanned[d]) > 5*time.Second {
					due = append(due, d)
					fanned[d] = now
				}
			}
			p.mu.Unlock()
			for _, d := range due {
				peer, err := p.member.FanOut(ctx, d)
				if err != nil {
					p.log.Warn("fan-out failed", "tenant", d, "err", err)
					continue
				}
				p.log.Info("fanned out", "tenant", d, "to", peer.ID, "load", peer.Load)
			}
		}
	}
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}
