package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

type story struct {
	s           *stack
	out         io.Writer
	in          *bufio.Reader
	interactive bool
	tenants     []string
	owner       map[string]string
}

type reply struct {
	status   int
	servedBy string
	body     map[string]any
	raw      string
}

func (d *story) call(method, path, body string) reply {
	req, _ := http.NewRequest(method, d.s.gateway+path, strings.NewReader(body))
	resp, err := client.Do(req)
	if err != nil {
		return reply{raw: err.Error()}
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	r := reply{status: resp.StatusCode, servedBy: resp.Header.Get("X-Served-By"), raw: strings.TrimSpace(string(b))}
	_ = json.Unmarshal(b, &r.body)
	return r
}

func (r reply) str(k string) string { v, _ := r.body[k].(string); return v }

// step prints a heading and, on a terminal, waits for Enter.
func (d *story) step(ctx context.Context, n int, title, explain string) error {
	fmt.Fprintf(d.out, "\n== %d. %s\n%s\n", n, title, explain)
	if d.interactive {
		fmt.Fprint(d.out, "   [Enter to continue] ")
		done := make(chan struct{})
		go func() { _, _ = d.in.ReadString('\n'); close(done) }()
		select {
		case <-done:
		case <-ctx.Done():
		}
	}
	return ctx.Err()
}

func (d *story) tell(ctx context.Context) error {
	d.owner = map[string]string{}
	if err := d.step(ctx, 1, "Create tenants",
		"   POST /tenants goes to a live pod picked by coord-extproc; when the pod answers 201,\n   coord-extproc binds the tenant to it in Valkey before the client sees the answer."); err != nil {
		return err
	}
	for i := 1; i <= 6; i++ {
		t := fmt.Sprintf("tenant-%d", i)
		r := d.call("POST", "/tenants", fmt.Sprintf(`{"tenantId":%q}`, t))
		if r.status != 201 {
			return fmt.Errorf("create %s: %d %s", t, r.status, r.raw)
		}
		d.tenants, d.owner[t] = append(d.tenants, t), r.servedBy
		fmt.Fprintf(d.out, "   POST /tenants {\"tenantId\":%q} -> 201 on %s\n", t, r.servedBy)
	}

	if err := d.step(ctx, 2, "Read and write", "   Every request for a tenant lands on the pod that holds its data."); err != nil {
		return err
	}
	for _, t := range d.tenants {
		w := d.call("PUT", "/tenants/"+t+"/keys/greeting", "hello from "+t)
		r := d.call("GET", "/tenants/"+t+"/keys/greeting", "")
		fmt.Fprintf(d.out, "   PUT then GET /tenants/%s/keys/greeting -> %d %q (written on %s, read on %s)\n", t, r.status, r.str("value"), w.servedBy, r.servedBy)
	}

	if err := d.step(ctx, 3, "A transaction", "   The pod publishes a lock record; calls carrying the lock id reach the one pod holding it."); err != nil {
		return err
	}
	t := d.tenants[0]
	d.call("PUT", "/tenants/"+t+"/keys/balance", "100")
	lock := d.call("POST", "/tenants/"+t+"/transactions", "").str("lockId")
	d.call("PUT", "/transactions/"+lock+"/keys/balance", "40")
	inside := d.call("GET", "/transactions/"+lock+"/keys/balance", "")
	outside := d.call("GET", "/tenants/"+t+"/keys/balance", "")
	fmt.Fprintf(d.out, "   begin %s on %s; inside the transaction balance=%s, outside still %s\n", lock, inside.servedBy, inside.str("value"), outside.str("value"))
	c := d.call("POST", "/transactions/"+lock+"/commit", "")
	after := d.call("GET", "/tenants/"+t+"/keys/balance", "")
	fmt.Fprintf(d.out, "   commit -> %s; balance now %s\n", c.str("outcome"), after.str("value"))
	u := d.call("GET", "/transactions/tx-nope/keys/balance", "")
	fmt.Fprintf(d.out, "   unknown lock -> %d %s\n", u.status, u.raw)

	tr := newTraffic(d)
	tr.start(ctx)
	defer tr.stop()
	if err := d.step(ctx, 4, "Live traffic", "   Background traffic to every tenant; each line is one second."); err != nil {
		return err
	}
	tr.watch(ctx, 3)

	if err := d.step(ctx, 5, "Rolling restart", "   Replace every pod in turn, as a rolling update does: a new pod starts, the old one gets\n   SIGTERM, drains (takes nothing new) and hands each tenant, with its data, to a live peer\n   before it deregisters. Nothing is lost: the errors column stays at 0."); err != nil {
		return err
	}
	for _, old := range slices.Sorted(maps.Keys(d.s.pods)) {
		next := old + "2"
		if err := d.s.startPod(ctx, next); err != nil {
			return err
		}
		d.s.pods[old].stop(syscall.SIGTERM)
		delete(d.s.pods, old)
		fmt.Fprintf(d.out, "   %s replaced by %s\n", old, next)
		tr.watch(ctx, 1)
	}
	d.owner = d.currentOwners()
	tr.watch(ctx, 1)

	victim := d.busiestPod()
	if err := d.step(ctx, 6, "Kill a pod", fmt.Sprintf("   SIGKILL %s, as an OOM kill or a lost node would: it never deregisters, and its member\n   record lives on for its TTL (30 s). Envoy reports the refused connections to coord-extproc,\n   which connects to the pod itself, marks it down in Valkey, and its tenants move.", victim)); err != nil {
		return err
	}
	var lost []string
	for _, t := range d.tenants {
		if d.owner[t] == victim {
			lost = append(lost, t)
		}
	}
	d.s.pods[victim].stop(syscall.SIGKILL)
	killed := time.Now()
	moved := d.movedAfter(ctx, lost, victim)
	fmt.Fprintf(d.out, "   %s killed; %s answered by survivors %s later (member TTL 30 s).\n   The demo pods keep their data in memory, so the survivors do not have it: their reads\n   answer 404 there (the errors column counts them).\n",
		victim, strings.Join(lost, ", "), moved.Sub(killed).Round(time.Millisecond))
	tr.watch(ctx, 4)

	hot := d.tenants[1]
	if err := d.step(ctx, 7, "Fan-out under load", fmt.Sprintf("   Hold %s above its pod's concurrency cap (3): the pod adds the least-loaded other pod\n   to the tenant's set, and coord-extproc spreads the tenant's requests over both. The demo\n   pods do not share data, so reads on the added pod answer 404: fan-out suits pods that do.", hot)); err != nil {
		return err
	}
	tr.hot(ctx, hot)
	tr.watch(ctx, 4)
	fmt.Fprintf(d.out, "\nStory done: %d requests, %d errors (any status but 2xx).\n", tr.total(), tr.errs())
	for _, st := range slices.Sorted(maps.Keys(tr.byStatus)) {
		fmt.Fprintf(d.out, "   %s: %d, e.g. %s\n", st, tr.byStatus[st], tr.sample[st])
	}
	return nil
}

// movedAfter waits (at most 30 s) until every tenant is answered by a pod
// other than dead, and returns when that was.
func (d *story) movedAfter(ctx context.Context, tenants []string, dead string) time.Time {
	deadline := time.Now().Add(30 * time.Second)
	for _, t := range tenants {
		for ctx.Err() == nil && time.Now().Before(deadline) {
			if r := d.call("GET", "/tenants/"+t+"/keys/greeting", ""); r.servedBy != "" && r.servedBy != dead {
				break
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	return time.Now()
}

// currentOwners asks who serves each tenant now.
func (d *story) currentOwners() map[string]string {
	out := map[string]string{}
	for _, t := range d.tenants {
		out[t] = d.call("GET", "/tenants/"+t+"/keys/greeting", "").servedBy
	}
	return out
}

func (d *story) busiestPod() string {
	count := map[string]int{}
	for _, p := range d.owner {
		count[p]++
	}
	best := ""
	for p, n := range count {
		if best == "" || n > count[best] || (n == count[best] && p < best) {
			best = p
		}
	}
	return best
}

// traffic sends steady requests to every tenant and tallies, per second,
// which pods answered for which tenant.
type traffic struct {
	d        *story
	cancel   context.CancelFunc
	wg       sync.WaitGroup
	mu       sync.Mutex
	window   map[string]map[string]int // tenant -> pod -> answers since since
	werrs    map[string]int            // tenant -> answers not 2xx since since
	since    time.Time
	all      int
	bad      int
	byStatus map[string]int    // "404" or "connection error" -> count
	sample   map[string]string // one example per status
}

func newTraffic(d *story) *traffic {
	return &traffic{d: d, window: map[string]map[string]int{}, werrs: map[string]int{}, since: time.Now(),
		byStatus: map[string]int{}, sample: map[string]string{}}
}

func (tr *traffic) start(ctx context.Context) {
	ctx, tr.cancel = context.WithCancel(ctx)
	for w := 0; w < 3; w++ {
		tr.wg.Add(1)
		go func() {
			defer tr.wg.Done()
			for i := w; ctx.Err() == nil; i++ {
				t := tr.d.tenants[i%len(tr.d.tenants)]
				tr.record(t, tr.d.call("GET", "/tenants/"+t+"/keys/greeting?delay=5ms", ""))
			}
		}()
	}
}

// hot adds concurrent slow requests to one tenant for a few seconds.
func (tr *traffic) hot(ctx context.Context, t string) {
	for w := 0; w < 6; w++ {
		tr.wg.Add(1)
		go func() {
			defer tr.wg.Done()
			end := time.Now().Add(4 * time.Second)
			for ctx.Err() == nil && time.Now().Before(end) {
				tr.record(t, tr.d.call("GET", "/tenants/"+t+"/keys/greeting?delay=150ms", ""))
			}
		}()
	}
}

func (tr *traffic) record(t string, r reply) {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	tr.all++
	if r.servedBy != "" {
		if tr.window[t] == nil {
			tr.window[t] = map[string]int{}
		}
		tr.window[t][r.servedBy]++
	}
	if r.status >= 200 && r.status <= 299 {
		return
	}
	tr.bad++
	tr.werrs[t]++
	st := strconv.Itoa(r.status)
	if r.status == 0 {
		st = "connection error"
	}
	tr.byStatus[st]++
	if _, ok := tr.sample[st]; !ok {
		tr.sample[st] = fmt.Sprintf("%s: %s", t, r.raw)
	}
}

// take returns what was counted since the last take and starts anew.
func (tr *traffic) take() (map[string]map[string]int, map[string]int, time.Duration) {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	w, e, d := tr.window, tr.werrs, time.Since(tr.since)
	tr.window, tr.werrs, tr.since = map[string]map[string]int{}, map[string]int{}, time.Now()
	return w, e, d
}

// watch prints one table line per tenant every second, n times: answers
// per second by pod (the split shows a fan-out), and errors per second.
// What came in while the story paused is dropped, not averaged in.
func (tr *traffic) watch(ctx context.Context, n int) {
	tr.take()
	for i := 0; i < n && ctx.Err() == nil; i++ {
		select {
		case <-ctx.Done():
			return
		case <-time.After(time.Second):
		}
		w, e, elapsed := tr.take()
		perSec := func(n int) int { return int(float64(n)/elapsed.Seconds() + 0.5) }
		fmt.Fprintf(tr.d.out, "   %s  %-10s %-26s %6s %7s\n", time.Now().Format("15:04:05"), "tenant", "answered by (req/s)", "req/s", "errors/s")
		for _, t := range tr.d.tenants {
			var split []string
			total := 0
			for _, p := range slices.Sorted(maps.Keys(w[t])) {
				split = append(split, fmt.Sprintf("%s:%d", p, perSec(w[t][p])))
				total += w[t][p]
			}
			fmt.Fprintf(tr.d.out, "             %-10s %-26s %6d %7d\n", t, strings.Join(split, " "), perSec(total), perSec(e[t]))
		}
	}
}

func (tr *traffic) stop() {
	tr.cancel()
	tr.wg.Wait()
}

func (tr *traffic) total() int { tr.mu.Lock(); defer tr.mu.Unlock(); return tr.all }
func (tr *traffic) errs() int  { tr.mu.Lock(); defer tr.mu.Unlock(); return tr.bad }
