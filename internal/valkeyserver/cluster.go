package valkeyserver

import (
	"context"
	"errors"
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

// Cluster is a Valkey Cluster of throw-away nodes on loopback, created with
// valkey-cli --cluster create. Nodes time out after one second, so a failed
// master's replica is promoted within a few seconds.
type Cluster struct {
	Nodes []*Server // masters first, as created; roles change on failover
}

// CLI returns the path of valkey-cli or, failing that, redis-cli.
func CLI() (string, error) {
	for _, name := range []string{"valkey-cli", "redis-cli"} {
		if p, err := exec.LookPath(name); err == nil {
			return p, nil
		}
	}
	return "", errors.New("neither valkey-cli nor redis-cli is on PATH: run `make deps`")
}

// StartCluster starts masters*(1+replicas) nodes under dir and joins them.
func StartCluster(dir string, masters, replicas int) (*Cluster, error) {
	cli, err := CLI()
	if err != nil {
		return nil, err
	}
	c := &Cluster{}
	addrs := []string{}
	for i := 0; i < masters*(1+replicas); i++ {
		s, err := startServer(filepath.Join(dir, fmt.Sprintf("node-%d", i)), 0, []string{
			"--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
			"--cluster-node-timeout", "1000", "--cluster-replica-validity-factor", "0"}, true)
		if err != nil {
			c.Stop()
			return nil, err
		}
		c.Nodes = append(c.Nodes, s)
		addrs = append(addrs, s.Addr())
	}
	args := append([]string{"--cluster", "create"}, addrs...)
	args = append(args, "--cluster-replicas", fmt.Sprint(replicas), "--cluster-yes")
	if out, err := exec.Command(cli, args...).CombinedOutput(); err != nil {
		c.Stop()
		return nil, fmt.Errorf("valkey-cli --cluster create: %w: %s", err, lastLines(string(out), 5))
	}
	if err := c.WaitHealthy(20 * time.Second); err != nil {
		c.Stop()
		return nil, err
	}
	for _, n := range c.Nodes {
		if role, err := n.CLI("ROLE"); err == nil && strings.HasPrefix(role, "slave") {
			if err := n.WaitReplicaSynced(10 * time.Second); err != nil {
				c.Stop()
				return nil, err
			}
		}
	}
	return c, nil
}

// WaitHealthy waits until every running node reports cluster_state:ok and
// agrees on the number of masters.
func (c *Cluster) WaitHealthy(within time.Duration) error {
	deadline := time.Now().Add(within)
	var last string
	for time.Now().Before(deadline) {
		ok := true
		for _, n := range c.Nodes {
			if !n.Running() {
				continue
			}
			info, err := n.CLI("CLUSTER", "INFO")
			if err != nil || !strings.Contains(info, "cluster_state:ok") {
				ok, last = false, fmt.Sprintf("%s: %v %s", n.Addr(), err, firstLine(info, "cluster_state"))
				break
			}
		}
		if ok {
			return nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("cluster not healthy within %s: %s", within, last)
}

// URL is a valkey-go URL with every node as a seed.
func (c *Cluster) URL() string {
	u := "redis://" + c.Nodes[0].Addr()
	for i, n := range c.Nodes[1:] {
		sep := "&"
		if i == 0 {
			sep = "?"
		}
		u += sep + "addr=" + n.Addr()
	}
	return u
}

// MasterOf returns the running node that serves key's slot as master.
func (c *Cluster) MasterOf(key string) (*Server, error) {
	for _, n := range c.Nodes {
		if !n.Running() {
			continue
		}
		if role, err := n.CLI("ROLE"); err != nil || !strings.HasPrefix(role, "master") {
			continue
		}
		for _, f := range slotOwners(n, key) {
			if strings.Contains(f[2], "fail") {
				continue
			}
			addr, _, _ := strings.Cut(f[1], "@")
			for _, m := range c.Nodes {
				if m.Addr() == addr && m.Running() {
					return m, nil
				}
			}
		}
	}
	return nil, fmt.Errorf("no running master serves the slot of %q", key)
}

// SelfPromoted reports whether a running node other than old claims, in
// its own view, to serve key's slot as master: the moment a promoted
// replica can answer, before gossip tells the other nodes (MasterOf asks
// one of them).
func (c *Cluster) SelfPromoted(old *Server, key string) bool {
	for _, n := range c.Nodes {
		if n == old || !n.Running() {
			continue
		}
		for _, f := range slotOwners(n, key) {
			if strings.Contains(f[2], "myself") {
				return true
			}
		}
	}
	return false
}

// slotOwners asks node n which nodes serve key's slot as master, in n's
// own view of the cluster: its CLUSTER NODES lines, split into fields
// (COUNTKEYSINSLOT answers on any node, so ownership is asked this way).
func slotOwners(n *Server, key string) [][]string {
	out, err := n.CLI("CLUSTER", "KEYSLOT", key)
	if err != nil {
		return nil
	}
	slot := strings.TrimSpace(out)
	nodes, err := n.CLI("CLUSTER", "NODES")
	if err != nil {
		return nil
	}
	var owners [][]string
	for _, line := range strings.Split(nodes, "\n") {
		if f := strings.Fields(line); len(f) >= 9 && strings.Contains(f[2], "master") && ownsSlot(f[8:], slot) {
			owners = append(owners, f)
		}
	}
	return owners
}

func ownsSlot(ranges []string, slot string) bool {
	var s int
	fmt.Sscan(slot, &s)
	for _, r := range ranges {
		var lo, hi int
		if n, _ := fmt.Sscanf(r, "%d-%d", &lo, &hi); n == 2 && lo <= s && s <= hi {
			return true
		}
		if n, _ := fmt.Sscanf(r, "%d", &lo); n == 1 && !strings.Contains(r, "-") && lo == s {
			return true
		}
	}
	return false
}

// Stop stops every node.
func (c *Cluster) Stop() {
	for _, n := range c.Nodes {
		n.Stop()
	}
}

// CLI runs valkey-cli against the server and returns its output.
func (s *Server) CLI(args ...string) (string, error) {
	cli, err := CLI()
	if err != nil {
		return "", err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, cli, append([]string{"-h", "127.0.0.1", "-p", fmt.Sprint(s.port)}, args...)...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("valkey-cli %v on %s: %w", args, s.Addr(), err)
	}
	return string(out), nil
}

func firstLine(s, prefix string) string {
	for _, l := range strings.Split(s, "\n") {
		if strings.HasPrefix(l, prefix) {
			return strings.TrimSpace(l)
		}
	}
	return ""
}

// ReplicaOf returns a running replica of master.
func (c *Cluster) ReplicaOf(master *Server) (*Server, error) {
	id, err := master.CLI("CLUSTER", "MYID")
	if err != nil {
		return nil, err
	}
	id = strings.TrimSpace(id)
	for _, n := range c.Nodes {
		if n == master || !n.Running() {
			continue
		}
		role, err := n.CLI("CLUSTER", "NODES")
		if err != nil {
			continue
		}
		for _, line := range strings.Split(role, "\n") {
			f := strings.Fields(line)
			if len(f) > 3 && strings.Contains(f[2], "myself") && strings.Contains(f[2], "slave") && f[3] == id {
				return n, nil
			}
		}
	}
	return nil, fmt.Errorf("no running replica of %s", master.Addr())
}
