package registry

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/valkey-io/valkey-go"

	"github.com/coord-extproc/coord-extproc/internal/valkeytest"
)

// documentedACL is the least-privilege users file shipped in deploy/ and
// quoted by the README (SPEC §6): these tests run with exactly it.
const documentedACL = "../deploy/valkey/users.acl"

const (
	coordUser, coordPassword = "coord-extproc", "coord-extproc-password"
	podUser, podPassword     = "pod", "pod-password"
)

// aclServer starts a server whose users are rules plus an admin (the test
// plays the operator wiping Valkey and reads ACL LOG); default is off.
func aclServer(t *testing.T, rules string) (*valkeytest.Server, valkey.Client) {
	t.Helper()
	file := filepath.Join(t.TempDir(), "users.acl")
	all := rules + "\nuser admin on >admin-password ~* &* +@all\nuser default off\n"
	if err := os.WriteFile(file, []byte(all), 0o600); err != nil {
		t.Fatal(err)
	}
	srv := valkeytest.StartWith(t, "--aclfile", file)
	admin := userClient(t, srv, "admin", "admin-password", true)
	return srv, admin
}

func userClient(t *testing.T, srv *valkeytest.Server, user, password string, noCache bool) valkey.Client {
	t.Helper()
	c, err := valkey.NewClient(valkey.ClientOption{InitAddress: []string{srv.Addr()}, Username: user, Password: password, DisableCache: noCache})
	if err != nil {
		t.Fatalf("connect as %s: %v", user, err)
	}
	t.Cleanup(c.Close)
	return c
}

func readACL(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile(documentedACL)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// aclDenials is what ACL LOG recorded: every command refused to any user,
// in scripts too, including the background work no test call returns.
func aclDenials(t *testing.T, admin valkey.Client) []string {
	t.Helper()
	entries, err := admin.Do(context.Background(), admin.B().AclLog().Count(128).Build()).ToArray()
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range entries {
		m, err := e.AsStrMap()
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, m["username"]+": "+m["reason"]+" "+m["object"]+" ("+m["context"]+")")
	}
	return out
}

// SPEC §6: coord-extproc and Go pods work with the documented users and
// nothing more. Every feature that sends a command runs here — pods'
// register, heartbeat, bindings, claims, locks, fan-out, drain, handoff
// (asked by a rebalance), leave and recovery after a wipe; the
// coordinator's routes, claims on miss, locks, operator reads and writes,
// down marks, the recovery hold, pruning and reclaiming — and ACL LOG must
// stay empty (background work that only logs a refusal is caught there).
func TestDocumentedACLUsers(t *testing.T) {
	srv, admin := aclServer(t, readACL(t))
	ctx := context.Background()
	must := func(what string, err error) {
		t.Helper()
		if err != nil {
			t.Fatalf("%s: %v (ACL LOG: %v)", what, err, aclDenials(t, admin))
		}
	}
	r := newRegistry(t, srv, func(o *Options) {
		o.Client.Username, o.Client.Password = coordUser, coordPassword
		o.PruneInterval, o.ReclaimAfter, o.HoldMax = 100*time.Millisecond, time.Second, 2*time.Second
	})
	// Pods keep valkey-go's default client-side cache (CLIENT TRACKING).
	pc := userClient(t, srv, podUser, podPassword, false)
	carried := make(chan string, 4)
	pods := map[string]*Member{}
	for i, id := range []string{"a", "b", "c"} {
		pods[id] = newMember(t, pc, id, 7500+i, func(o *MemberOptions) {
			o.HandoffPoll = 20 * time.Millisecond
			o.Handoff = func(_ context.Context, dest string, _ PeerLoad) error { carried <- dest; return nil }
		})
		must("register "+id, pods[id].Register(ctx, int64(i)))
	}
	a, b, c := pods["a"], pods["b"], pods["c"]
	must("ready", r.Ready(ctx))
	_, err := a.Heartbeat(ctx, 3)
	must("heartbeat", err)
	must("add", a.AddToDestination(ctx, "t1"))
	must("claim", b.Claim(ctx, "t2"))
	must("remove", b.RemoveFromDestination(ctx, "t2"))
	must("lock", a.RegisterLock(ctx, "L1", "t1", nil, 0))
	must("refresh lock", a.RefreshLock(ctx, "L1", time.Minute))
	_, err = a.ListPeerLoad(ctx)
	must("peer load", err)
	_, err = b.FanOut(ctx, "t1")
	must("fan-out", err)

	_, err = route(t, r, "t1", RouteOptions{})
	must("route", err)
	_, err = r.RouteLock(ctx, "L1")
	must("route lock", err)
	must("unlock", a.UnregisterLock(ctx, "L1"))
	_, err = route(t, r, "claimed-on-miss", claimAll)
	must("claim on miss", err)
	if _, err := route(t, r, "nobody", RouteOptions{}); !errors.Is(err, ErrNotFound) {
		t.Fatalf("unknown destination: %v", err)
	}
	_, err = r.ListMembers(ctx)
	must("members", err)
	_, err = r.DescribeDestination(ctx, "t1")
	must("describe", err)
	_, err = r.Lookup(ctx, "t1")
	must("lookup", err)
	must("bind", r.Bind(ctx, "created", "c"))
	must("delete", r.DeleteDestination(ctx, "created"))
	_, err = r.Holdings(ctx)
	must("holdings", err)

	// A rebalance asks b, which runs, to hand t3 to c.
	must("add t3", b.AddToDestination(ctx, "t3"))
	runCtx, stopRun := context.WithCancel(ctx)
	defer stopRun()
	go func() { _ = b.Run(runCtx) }()
	must("request handoffs", r.RequestHandoffs(ctx, []Move{{Dest: "t3", From: "b", To: "c"}}))
	select {
	case <-carried:
	case <-time.After(5 * time.Second):
		t.Fatalf("the requested handoff did not run (ACL LOG: %v)", aclDenials(t, admin))
	}
	must("drain", a.Drain(ctx))
	_, err = a.Handoff(ctx, "t1", "c")
	must("handoff", err)

	// A pod that died without leaving: its address is marked down, its
	// claim reclaimed; a junk id in the members set is pruned.
	must("claim of the dying pod", c.Claim(ctx, "orphaned"))
	suspects, err := r.MembersAt(ctx, "127.0.0.1:7502")
	must("members at", err)
	if len(suspects) != 1 {
		t.Fatalf("members at c's address: %v", suspects)
	}
	_, err = r.MarkDown(ctx, suspects[0])
	must("mark down", err)
	_, err = r.ClearDown(ctx, suspects[0])
	must("clear down", err)
	valkeytest.Do(t, admin, "SADD", "coordinator:members", "junk")
	for _, id := range []string{"r1", "r2", "r3", "r4"} { // round robin over b and c
		_, err = route(t, r, id, claimAll)
		must("claim "+id, err)
	}
	valkeytest.Do(t, admin, "DEL", "coordinator:member:c") // its TTL ran out
	eventually(t, 10*time.Second, "the junk id pruned", func() bool { return r.Stats().MembersPruned.Load() > 0 })
	eventually(t, 10*time.Second, "a claim of the dead pod reclaimed", func() bool { return r.Stats().ClaimsReclaimed.Load() > 0 })
	must("leave", a.Leave(ctx))

	// A wipe: the coordinator holds, the pods come back on their heartbeat.
	valkeytest.Do(t, admin, "FLUSHALL")
	_, err = b.Heartbeat(ctx, 1)
	must("heartbeat after the wipe", err)
	_, err = r.RecoveryHold(ctx)
	must("recovery hold", err)
	eventually(t, 5*time.Second, "the coordinator routes b's destination again", func() bool {
		_, err := route(t, r, "t2-b", claimAll)
		return err == nil
	})
	must("deregister", b.Deregister(ctx))

	if d := aclDenials(t, admin); len(d) > 0 {
		t.Fatalf("commands refused to the documented users: %v", d)
	}
}

// A user missing one command the code needs fails with Valkey's own
// message naming it, for the coordinator (at start-up where it can be
// known: client tracking) and for a pod.
func TestACLWithoutANeededCommand(t *testing.T) {
	for _, tc := range []struct {
		user, command string
		run           func(t *testing.T, srv *valkeytest.Server) error
	}{
		{coordUser, "smembers", func(t *testing.T, srv *valkeytest.Server) error {
			r := newRegistry(t, srv, func(o *Options) { o.Client.Username, o.Client.Password = coordUser, coordPassword })
			_, err := route(t, r, "t1", RouteOptions{})
			return err
		}},
		{coordUser, "client|tracking", func(t *testing.T, srv *valkeytest.Server) error { // known at start-up
			r, err := New(context.Background(), Options{Client: valkey.ClientOption{InitAddress: []string{srv.Addr()}, Username: coordUser, Password: coordPassword}})
			if err == nil {
				r.Close()
			}
			return err
		}},
		{podUser, "sadd", func(t *testing.T, srv *valkeytest.Server) error {
			m := newMember(t, userClient(t, srv, podUser, podPassword, true), "a", 7600, nil)
			return m.Register(context.Background(), 0)
		}},
	} {
		t.Run(tc.user+" without "+tc.command, func(t *testing.T) {
			var rules []string
			for _, line := range strings.Split(readACL(t), "\n") {
				if strings.HasPrefix(line, "user "+tc.user+" ") {
					if !strings.Contains(line, " +"+tc.command+" ") {
						t.Fatalf("the documented %s user has no +%s", tc.user, tc.command)
					}
					line = strings.Replace(line, " +"+tc.command+" ", " ", 1)
				}
				rules = append(rules, line)
			}
			srv, admin := aclServer(t, strings.Join(rules, "\n"))
			valkeytest.Do(t, admin, "SADD", "coordinator:destination:t1", "a")
			err := tc.run(t, srv)
			if err == nil || !strings.Contains(err.Error(), "'"+tc.command+"' command") {
				t.Fatalf("error = %v, want one naming the %s command", err, tc.command)
			}
		})
	}
}

// commandsSent lists every command the registry's code can send: command
// builders, scripts (EVALSHA falling back to EVAL) and the commands inside
// them, as ACL names ("cluster|slots").
func commandsSent(t *testing.T) map[string]string {
	t.Helper()
	files, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	builder := regexp.MustCompile(`B\(\)\.([A-Z][a-z]+)([A-Z][a-z]+)?\(\)`)
	inScript := regexp.MustCompile(`redis\.call,? *\(?'([A-Z]+)'(?:, *'([A-Z]+)')?`)
	containers := map[string]bool{"client": true, "cluster": true, "object": true, "config": true, "script": true}
	sent := map[string]string{}
	for _, f := range files {
		if strings.HasSuffix(f, "_test.go") {
			continue
		}
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		src := string(b)
		for _, m := range builder.FindAllStringSubmatch(src, -1) {
			name := strings.ToLower(m[1])
			if sub := strings.ToLower(m[2]); sub != "" && containers[name] {
				name += "|" + sub
			} else if sub != "" {
				name += sub
			}
			sent[name] = f
		}
		for _, m := range inScript.FindAllStringSubmatch(src, -1) {
			name := strings.ToLower(m[1])
			if containers[name] && m[2] != "" {
				name += "|" + strings.ToLower(m[2])
			}
			sent[name] = f
		}
		if strings.Contains(src, "valkey.NewLuaScript(") {
			sent["eval"], sent["evalsha"] = f, f
		}
		if strings.Contains(src, "valkey.NewLuaScriptReadOnly(") {
			sent["eval_ro"], sent["evalsha_ro"] = f, f
		}
	}
	return sent
}

// A command added to the code must be added to a documented user, even
// when no test path above sends it (TestDocumentedACLUsers covers the
// paths): this reads the code for every command it can send.
func TestDocumentedACLCoversTheCode(t *testing.T) {
	allowed := map[string]bool{}
	for _, line := range strings.Split(readACL(t), "\n") {
		for _, tok := range strings.Fields(line) {
			if cmd, ok := strings.CutPrefix(tok, "+"); ok {
				allowed[cmd] = true
			}
		}
	}
	sent := commandsSent(t)
	if len(sent) < 30 || !allowed["smembers"] {
		t.Fatalf("the scan found %d commands (%v), allowed %d: the patterns broke", len(sent), sent, len(allowed))
	}
	for cmd, file := range sent {
		if !allowed[cmd] {
			t.Errorf("%s sends %s, which no documented user may run (%s)", file, strings.ToUpper(cmd), documentedACL)
		}
	}
}

// The README quotes the users file: the two must not drift apart.
func TestREADMEQuotesTheACL(t *testing.T) {
	readme, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(strings.TrimSpace(readACL(t)), "\n") {
		if !strings.Contains(string(readme), "\n"+line+"\n") {
			t.Errorf("README.md does not quote %s's line: %.60s…", documentedACL, line)
		}
	}
}
