// Package devserver starts a real `hangar-server dev` for the Go SDK's tests: the binary cargo
// built (target/debug, or HANGAR_BIN_DIR), on free ports, with its own data directory, and the
// process runtime so that no Docker engine is needed.
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
}

// RepoRoot is the root of the Hangar repository this package is in (symbolic links resolved,
// since scripts/go builds from a GOPATH link to client/go).
func RepoRoot(t testing.TB) string {
	_, file, _, ok := runtime.Caller(0)
	if !ok {
		t.Fatal("cannot find the source file of devserver")
	}
	dir, err := filepath.EvalSymlinks(filepath.Dir(file))
	if err != nil {
		t.Fatal(err)
	}
	return filepath.Join(dir, "..", "..", "..", "..") // client/go/internal/devserver -> repo
}

// Binary is the path of a Hangar binary; the test fails (never skips) when it is not built.
func Binary(t testing.TB, name string) string {
	dir := os.Getenv("HANGAR_BIN_DIR")
	if dir == "" {
		dir = filepath.Join(RepoRoot(t), "target", "debug")
	}
	path := filepath.Join(dir, name)
	if _, err := os.Stat(path); err != nil {
		t.Fatalf("%s is not built; run `cargo build --workspace --bins` first (scripts/test does): %v", path, err)
	}
	return path
}

// Start starts `hangar-server dev` and waits until it prints that it is ready; it is stopped
// when the test ends.
func Start(t testing.TB) *Server {
	t.Helper()
	server := &Server{DataDir: t.TempDir(), done: make(chan struct{})}
	server.start(t, "127.0.0.1:0")
	t.Cleanup(func() { server.Stop(t) })
	return server
}

// Restart stops the server and starts it again on the same controller address and data dir:
// the same cluster, with its revisions and nodes, as after an operator's restart.
func (s *Server) Restart(t testing.TB) {
	t.Helper()
	s.Stop(t)
	s.done = make(chan struct{})
	s.start(t, strings.TrimPrefix(s.ControllerURL, "http://"))
}

func (s *Server) start(t testing.TB, listen string) {
	t.Helper()
	process := exec.Command(Binary(t, "hangar-server"), "dev", "--listen", listen, "--proxy-listen", "127.0.0.1:0",
		"--data-dir", s.DataDir, "--runtime", "process")
	stdout, err := process.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	logFile, err := os.Create(filepath.Join(s.DataDir, fmt.Sprintf("dev-%d.log", time.Now().UnixNano())))
	if err != nil {
		t.Fatal(err)
	}
	process.Stderr = logFile
	if err := process.Start(); err != nil {
		t.Fatal(err)
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
			if !sent && strings.Contains(lines.Text(), "Stop with Ctrl-C") {
				ready <- nil
				sent = true
			}
		}
		_, _ = io.Copy(io.Discard, stdout)
		if !sent {
			ready <- fmt.Errorf("hangar-server dev exited before it was ready; its log: %s", logFile.Name())
		}
		_ = process.Wait()
	}()
	select {
	case err := <-ready:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(60 * time.Second):
		_ = process.Process.Kill()
		t.Fatalf("hangar-server dev was not ready within 60 s; its log: %s", logFile.Name())
	}
}

// Stop ends the server with SIGTERM (a graceful shutdown, as Ctrl-C) and waits for it.
func (s *Server) Stop(t testing.TB) {
	if s.process == nil {
		return
	}
	_ = s.process.Process.Signal(syscall.SIGTERM)
	select {
	case <-s.done:
	case <-time.After(20 * time.Second):
		_ = s.process.Process.Kill()
		<-s.done
		t.Errorf("hangar-server dev did not stop within 20 s of SIGTERM")
	}
	s.process = nil
}
