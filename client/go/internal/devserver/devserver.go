// Package devserver starts a real `hangar-server dev` (or a bare controller) for the Go SDK's
// tests: the binary cargo built (target/debug, or HANGAR_BIN_DIR), on free ports, with its own
// data directory, and dev with the process runtime so that no Docker engine is needed.
package devserver

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Server is a running `hangar-server dev`.
type Server struct {
	// ControllerURL is the controller's gRPC URL, e.g. http://127.0.0.1:40123.
	ControllerURL string
	// ProxyURL is the proxy that connection URLs point at.
	ProxyURL string
	// DataDir holds its SQLite database and the drone's journal.
	DataDir string
	process *exec.Cmd
	done    chan struct{}
	// command is the hangar-server command line for a listen address.
	command func(listen string) []string
}

// RepoRoot is the root of the Hangar repository this package is in (symbolic links resolved,
// since scripts/go builds from a GOPATH link to client/go).
func RepoRoot() string {
	_, file, _, _ := runtime.Caller(0)
	dir, err := filepath.EvalSymlinks(filepath.Dir(file))
	if err != nil {
		dir = filepath.Dir(file)
	}
	return filepath.Clean(filepath.Join(dir, "..", "..", "..", "..")) // client/go/internal/devserver -> repo
}

// Binary is the path of a Hangar binary, or an error saying how to build it.
func Binary(name string) (string, error) {
	dir := os.Getenv("HANGAR_BIN_DIR")
	if dir == "" {
		dir = filepath.Join(RepoRoot(), "target", "debug")
	}
	path := filepath.Join(dir, name)
	if _, err := os.Stat(path); err != nil {
		return "", fmt.Errorf("%s is not built; run `cargo build --workspace --bins` first (scripts/test does)", path)
	}
	return path, nil
}

// Start starts `hangar-server dev` with a data dir of the test's and waits until it prints that
// it is ready; it is stopped when the test ends. The test fails (never skips) when it cannot.
func Start(t testing.TB) *Server {
	t.Helper()
	server, err := Launch(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := server.Stop(); err != nil {
			t.Error(err)
		}
	})
	return server
}

// Launch starts `hangar-server dev` on free ports with dataDir and waits until it is ready.
func Launch(dataDir string) (*Server, error) {
	server := &Server{DataDir: dataDir, command: func(listen string) []string {
		return []string{"dev", "--listen", listen, "--proxy-listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0", "--data-dir", dataDir, "--runtime", "process"}
	}}
	return server, server.start("127.0.0.1:0")
}

// StartController starts a bare `hangar-server controller` (no drone, no proxy) on a free port
// with a data dir of the test's and the extra arguments (--auth-file, --tls-cert, …); it is
// stopped when the test ends.
func StartController(t testing.TB, args ...string) *Server {
	t.Helper()
	dataDir := t.TempDir()
	server := &Server{DataDir: dataDir, command: func(listen string) []string {
		return append([]string{"controller", "--listen", listen, "--admin-listen", "127.0.0.1:0", "--data-dir", filepath.Join(dataDir, "data")}, args...)
	}}
	if err := server.start("127.0.0.1:0"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := server.Stop(); err != nil {
			t.Error(err)
		}
	})
	return server
}

// Restart stops the server and starts it again on the same controller address and data dir:
// the same cluster, with its revisions and nodes, as after an operator's restart.
func (s *Server) Restart() error {
	if err := s.Stop(); err != nil {
		return err
	}
	listen := strings.TrimPrefix(strings.TrimPrefix(s.ControllerURL, "http://"), "https://")
	return s.start(listen)
}

func (s *Server) start(listen string) error {
	binary, err := Binary("hangar-server")
	if err != nil {
		return err
	}
	s.done = make(chan struct{})
	process := exec.Command(binary, s.command(listen)...)
	stdout, err := process.StdoutPipe()
	if err != nil {
		return err
	}
	logFile, err := os.Create(filepath.Join(s.DataDir, fmt.Sprintf("dev-%d.log", time.Now().UnixNano())))
	if err != nil {
		return err
	}
	process.Stderr = logFile
	if err := process.Start(); err != nil {
		return err
	}
	s.process = process
	ready := make(chan error, 1)
	go func() {
		defer close(s.done)
		defer logFile.Close()
		lines := bufio.NewScanner(stdout)
		sent := false
		for lines.Scan() {
			words := strings.Fields(lines.Text())
			if len(words) >= 2 && words[0] == "controller" {
				s.ControllerURL = words[1]
			}
			if len(words) >= 2 && words[0] == "proxy" {
				s.ProxyURL = words[1]
			}
			// dev's banner ends with "Stop with Ctrl-C."; a controller prints
			// "hangar-server controller listening on URL".
			if strings.HasPrefix(lines.Text(), "hangar-server controller listening on ") {
				s.ControllerURL = words[len(words)-1]
			}
			if !sent && (strings.Contains(lines.Text(), "Stop with Ctrl-C") || strings.HasPrefix(lines.Text(), "hangar-server controller listening on ")) {
				ready <- nil
				sent = true
			}
		}
		_, _ = io.Copy(io.Discard, stdout)
		if !sent {
			ready <- fmt.Errorf("hangar-server %s exited before it was ready; its log: %s", s.command(listen)[0], logFile.Name())
		}
		_ = process.Wait()
	}()
	select {
	case err := <-ready:
		return err
	case <-time.After(60 * time.Second):
		_ = process.Process.Kill()
		<-s.done
		s.process = nil
		return fmt.Errorf("hangar-server dev was not ready within 60 s; its log: %s", logFile.Name())
	}
}

// Stop ends the server with SIGTERM (a graceful shutdown, as Ctrl-C) and waits for it.
func (s *Server) Stop() error {
	if s.process == nil {
		return nil
	}
	defer func() { s.process = nil }()
	_ = s.process.Process.Signal(syscall.SIGTERM)
	select {
	case <-s.done:
		return nil
	case <-time.After(20 * time.Second):
		_ = s.process.Process.Kill()
		<-s.done
		return fmt.Errorf("hangar-server dev did not stop within 20 s of SIGTERM")
	}
}

// Eventually calls condition until it returns "" (met) or the deadline passes, then fails the
// test with the last thing condition said. The one way the Go tests wait for something.
func Eventually(t testing.TB, deadline time.Duration, condition func() string) {
	t.Helper()
	end := time.Now().Add(deadline)
	for {
		why := condition()
		if why == "" {
			return
		}
		if time.Now().After(end) {
			t.Fatalf("not within %v: %s", deadline, why)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
