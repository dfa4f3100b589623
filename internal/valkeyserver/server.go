package valkeyserver

import (
	"bufio"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// ErrNoBinary means neither valkey-server nor redis-server is installed.
var ErrNoBinary = errors.New("neither valkey-server nor redis-server is on PATH: run `make deps` " +
	"(Debian: apt-get install -t bookworm-backports valkey-server, or apt-get install redis-server)")

// Server is one valkey-server process.
type Server struct {
	bin   string
	dir   string
	port  int
	extra []string    // arguments after the defaults (cluster, replication)
	conf  string      // a Sentinel's config file, else empty
	pause bool        // SIGSTOPped
	tls   *tls.Config // TLS-only server: how Ping reaches it
	cmd   *exec.Cmd
	done  chan struct{}
}

// Binary returns the path of valkey-server or, failing that, redis-server.
func Binary() (string, error) {
	for _, name := range []string{"valkey-server", "redis-server"} {
		if p, err := exec.LookPath(name); err == nil {
			return p, nil
		}
	}
	return "", ErrNoBinary
}

// Start runs a server in dir (created if needed) on a free loopback port
// (port 0) or the given one, and waits until it answers PING.
func Start(dir string, port int) (*Server, error) {
	return startServer(dir, port, nil, false)
}

// StartWith is Start on a free port with extra arguments (an ACL file,
// say).
func StartWith(dir string, extra []string) (*Server, error) {
	return startServer(dir, 0, extra, false)
}

// StartTLS runs a TLS-only server (no plaintext port) on a free loopback
// port; extra are the TLS (and ACL) arguments after --tls-port, client is
// how Ping reaches it. A reply of NOAUTH counts as up.
func StartTLS(dir string, client *tls.Config, extra []string) (*Server, error) {
	bin, err := Binary()
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	s := &Server{bin: bin, dir: dir, tls: client}
	for attempt := 0; attempt < 5; attempt++ {
		if s.port, err = freePort(false); err != nil {
			return nil, err
		}
		s.extra = append([]string{"--port", "0", "--tls-port", strconv.Itoa(s.port)}, extra...)
		if err = s.start(); err == nil {
			return s, nil
		}
	}
	return nil, err
}

// startServer starts a server with extra arguments; busPort asks for a
// port whose cluster bus port (+10000) is free too.
func startServer(dir string, port int, extra []string, busPort bool) (*Server, error) {
	bin, err := Binary()
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	s := &Server{bin: bin, dir: dir, port: port, extra: extra}
	for attempt := 0; attempt < 5; attempt++ {
		if port == 0 {
			if s.port, err = freePort(busPort); err != nil {
				return nil, err
			}
		}
		if err = s.start(); err == nil || port != 0 {
			return s, err
		}
	}
	return nil, err
}

// Addr is host:port of the server.
func (s *Server) Addr() string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(s.port)) }

// URL is the redis:// URL of the server.
func (s *Server) URL() string { return "redis://" + s.Addr() }

// Version is the server's version line.
func (s *Server) Version() string {
	out, _ := exec.Command(s.bin, "--version").Output()
	return strings.TrimSpace(string(out))
}

func (s *Server) start() error {
	var args []string
	if s.conf != "" {
		args = append(args, s.conf, "--sentinel")
	}
	args = append(args, "--port", strconv.Itoa(s.port), "--bind", "127.0.0.1", "--dir", s.dir,
		"--daemonize", "no", "--protected-mode", "no", "--logfile", "server.log")
	if s.conf == "" {
		// No diskless-sync delay: a replica is in sync in milliseconds, not
		// after the default 5 s wait for other replicas.
		args = append(args, "--save", "", "--appendonly", "no", "--repl-diskless-sync-delay", "0")
	}
	cmd := exec.Command(s.bin, append(args, s.extra...)...)
	cmd.Dir = s.dir
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start %s: %w", s.bin, err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	s.cmd, s.done = cmd, done
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case <-done:
			log, _ := os.ReadFile(filepath.Join(s.dir, "server.log"))
			s.cmd = nil
			return fmt.Errorf("%s exited at start on port %d: %s", s.bin, s.port, lastLines(string(log), 5))
		default:
		}
		if s.Ping() == nil {
			return nil
		}
		time.Sleep(10 * time.Millisecond)
	}
	s.Stop()
	return fmt.Errorf("%s did not answer PING on %s within 10s", s.bin, s.Addr())
}

// Ping sends PING over a raw connection.
func (s *Server) Ping() error {
	var c net.Conn
	var err error
	if s.tls != nil {
		c, err = tls.DialWithDialer(&net.Dialer{Timeout: 200 * time.Millisecond}, "tcp", s.Addr(), s.tls)
	} else {
		c, err = net.DialTimeout("tcp", s.Addr(), 200*time.Millisecond)
	}
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(500 * time.Millisecond))
	if _, err := c.Write([]byte("PING\r\n")); err != nil {
		return err
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return err
	}
	if !strings.HasPrefix(line, "+PONG") && !strings.HasPrefix(line, "-NOAUTH") {
		return fmt.Errorf("unexpected PING reply %q", line)
	}
	return nil
}

// Pid is the server's process id (0 when stopped).
func (s *Server) Pid() int {
	if s.cmd == nil {
		return 0
	}
	return s.cmd.Process.Pid
}

// Stop kills the server and waits for it. It is idempotent.
func (s *Server) Stop() {
	if s.cmd == nil {
		return
	}
	_ = s.cmd.Process.Signal(syscall.SIGCONT) // a paused process cannot die of SIGTERM
	_ = s.cmd.Process.Kill()
	<-s.done
	s.cmd, s.pause = nil, false
}

// Restart stops the server and starts a new, empty one on the same port.
func (s *Server) Restart() error {
	s.Stop()
	var err error
	for attempt := 0; attempt < 50; attempt++ { // the port may linger briefly
		if err = s.start(); err == nil {
			return nil
		}
		time.Sleep(20 * time.Millisecond)
	}
	return fmt.Errorf("restart: %w", err)
}

// Pause freezes the server (SIGSTOP): connections stay open, nothing answers.
func (s *Server) Pause() error {
	s.pause = true
	return s.signal(syscall.SIGSTOP)
}

// Resume undoes Pause.
func (s *Server) Resume() error {
	s.pause = false
	return s.signal(syscall.SIGCONT)
}

// Running reports whether the process is up and not paused.
func (s *Server) Running() bool { return s.cmd != nil && !s.pause }

func (s *Server) signal(sig syscall.Signal) error {
	if s.cmd == nil {
		return errors.New("valkey-server is not running")
	}
	return s.cmd.Process.Signal(sig)
}

// freePort finds a free loopback port; with bus, one whose cluster bus
// port (port+10000) is free as well.
func freePort(bus bool) (int, error) {
	for attempt := 0; attempt < 50; attempt++ {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return 0, fmt.Errorf("find a free port: %w", err)
		}
		p := l.Addr().(*net.TCPAddr).Port
		l.Close()
		if !bus {
			return p, nil
		}
		if p+10000 > 65535 {
			continue
		}
		if b, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(p+10000))); err == nil {
			b.Close()
			return p, nil
		}
	}
	return 0, errors.New("find a free port pair for a cluster node: none after 50 tries")
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, " | ")
}

// WaitReplicaSynced waits until the server, a replica, has its link to the
// master up.
func (s *Server) WaitReplicaSynced(within time.Duration) error {
	deadline := time.Now().Add(within)
	for time.Now().Before(deadline) {
		if out, err := s.CLI("INFO", "replication"); err == nil && strings.Contains(out, "master_link_status:up") {
			return nil
		}
		time.Sleep(20 * time.Millisecond)
	}
	return fmt.Errorf("replica %s not in sync with its master within %s", s.Addr(), within)
}
