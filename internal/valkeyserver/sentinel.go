package valkeyserver

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// Sentinels is a master, its replica and three Sentinels monitoring them
// under MasterName, all on loopback. A master is declared down after one
// second.
type Sentinels struct {
	MasterName      string
	Master, Replica *Server
	Sentinels       []*Server
}

// StartSentinels starts the set under dir and waits until every Sentinel
// knows the master, the replica and the other Sentinels.
func StartSentinels(dir string) (*Sentinels, error) {
	ss := &Sentinels{MasterName: "mymaster"}
	var err error
	if ss.Master, err = startServer(filepath.Join(dir, "master"), 0, nil, false); err != nil {
		return nil, err
	}
	if ss.Replica, err = startServer(filepath.Join(dir, "replica"), 0, []string{"--replicaof", "127.0.0.1", fmt.Sprint(ss.Master.port)}, false); err != nil {
		ss.Stop()
		return nil, err
	}
	if err := ss.Replica.WaitReplicaSynced(10 * time.Second); err != nil {
		ss.Stop()
		return nil, err
	}
	for i := 0; i < 3; i++ {
		d := filepath.Join(dir, fmt.Sprintf("sentinel-%d", i))
		if err := os.MkdirAll(d, 0o755); err != nil {
			ss.Stop()
			return nil, err
		}
		conf := filepath.Join(d, "sentinel.conf")
		txt := fmt.Sprintf("sentinel monitor %[1]s 127.0.0.1 %[2]d 2\nsentinel down-after-milliseconds %[1]s 1000\n"+
			"sentinel failover-timeout %[1]s 3000\nsentinel parallel-syncs %[1]s 1\n", ss.MasterName, ss.Master.port)
		if err := os.WriteFile(conf, []byte(txt), 0o644); err != nil {
			ss.Stop()
			return nil, err
		}
		bin, err := Binary()
		if err != nil {
			ss.Stop()
			return nil, err
		}
		s := &Server{bin: bin, dir: d, conf: conf}
		if s.port, err = freePort(false); err == nil {
			err = s.start()
		}
		if err != nil {
			ss.Stop()
			return nil, fmt.Errorf("sentinel %d: %w", i, err)
		}
		ss.Sentinels = append(ss.Sentinels, s)
	}
	if err := ss.waitKnown(20 * time.Second); err != nil {
		ss.Stop()
		return nil, err
	}
	return ss, nil
}

func (ss *Sentinels) waitKnown(within time.Duration) error {
	deadline := time.Now().Add(within)
	var last string
	for time.Now().Before(deadline) {
		ok := true
		for _, s := range ss.Sentinels {
			out, err := s.CLI("SENTINEL", "MASTER", ss.MasterName)
			if err != nil || !fieldIs(out, "num-slaves", "1") || !fieldIs(out, "num-other-sentinels", "2") {
				ok, last = false, fmt.Sprintf("%s: %v", s.Addr(), err)
				break
			}
		}
		if ok {
			return nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("sentinels did not discover each other and the replica within %s (%s)", within, last)
}

// fieldIs reads valkey-cli's line-per-value output of a flat map reply.
func fieldIs(out, key, want string) bool {
	lines := strings.Split(strings.TrimSpace(out), "\n")
	for i := 0; i+1 < len(lines); i++ {
		if strings.TrimSpace(lines[i]) == key {
			return strings.TrimSpace(lines[i+1]) == want
		}
	}
	return false
}

// URL is a valkey-go URL naming every Sentinel and the master set.
func (ss *Sentinels) URL() string {
	u := "redis://" + ss.Sentinels[0].Addr() + "?master_set=" + ss.MasterName
	for _, s := range ss.Sentinels[1:] {
		u += "&addr=" + s.Addr()
	}
	return u
}

// CurrentMaster asks a Sentinel which address is the master now.
func (ss *Sentinels) CurrentMaster() (string, error) {
	for _, s := range ss.Sentinels {
		out, err := s.CLI("SENTINEL", "GET-MASTER-ADDR-BY-NAME", ss.MasterName)
		if err != nil {
			continue
		}
		f := strings.Fields(out)
		if len(f) == 2 {
			return f[0] + ":" + f[1], nil
		}
	}
	return "", fmt.Errorf("no sentinel names a master for %s", ss.MasterName)
}

// Stop stops every process.
func (ss *Sentinels) Stop() {
	for _, s := range append([]*Server{ss.Master, ss.Replica}, ss.Sentinels...) {
		if s != nil {
			s.Stop()
		}
	}
}
