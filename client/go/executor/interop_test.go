// Package executor_test checks the executor protocol (docs/design/executor-protocol.md) with a
// stock grpc-go client against the Rust executor, as client/python/tests/test_executor.py does
// with grpcio: no authority override, no custom dialer, only the target and insecure credentials.
package executor_test

import (
	"context"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	executorv1 "github.com/hangar-dev/hangar/client/go/gen/hangar/executor/v1"
	"github.com/hangar-dev/hangar/client/go/internal/devserver"
	"google.golang.org/grpc"
	"google.golang.org/grpc/encoding"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
)

// protoCodec is the "proto" codec current grpc-go releases ship (google.golang.org/protobuf).
// Debian's grpc-go 1.33, which scripts/go builds with, still marshals through
// github.com/golang/protobuf 1.3, which predates the generated code's API; registering this under
// the same name gives the test what a stock client of a current release has, without touching
// the dial options (the SDK's Dial forces the same codec, see hangar/codec.go).
type protoCodec struct{}

func (protoCodec) Marshal(v interface{}) ([]byte, error) { return proto.Marshal(v.(proto.Message)) }
func (protoCodec) Unmarshal(data []byte, v interface{}) error {
	return proto.Unmarshal(data, v.(proto.Message))
}
func (protoCodec) Name() string { return "proto" }

func init() { encoding.RegisterCodec(protoCodec{}) }

// startExecutor runs `hangar-drone executor --runtime process` on a socket in a fresh directory
// and returns the socket's path once it is there; the executor is stopped when the test ends.
func startExecutor(t *testing.T) string {
	t.Helper()
	drone, err := devserver.Binary("hangar-drone")
	if err != nil {
		t.Fatal(err)
	}
	// Short: a Unix socket path holds at most 107 bytes, more than t.TempDir() may leave.
	dir, err := os.MkdirTemp("", "hx")
	if err != nil {
		t.Fatal(err)
	}
	socket := filepath.Join(dir, "run", "executor.sock")
	log, err := os.Create(filepath.Join(dir, "executor.log"))
	if err != nil {
		t.Fatal(err)
	}
	executor := exec.Command(drone, "executor", "--socket", socket, "--runtime", "process")
	executor.Stdout, executor.Stderr = log, log
	if err := executor.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- executor.Wait() }()
	t.Cleanup(func() {
		_ = executor.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(20 * time.Second):
			_ = executor.Process.Kill()
			<-exited
			t.Error("the executor did not stop within 20 s of SIGTERM")
		}
		log.Close()
		if t.Failed() {
			t.Logf("the executor's log is kept in %s", log.Name())
		} else {
			os.RemoveAll(dir)
		}
	})
	devserver.Eventually(t, 30*time.Second, func() string {
		select {
		case err := <-exited:
			t.Fatalf("the executor exited before serving (%v); its log: %s", err, log.Name())
		default:
		}
		if _, err := os.Stat(socket); err != nil {
			return "an executor serving on " + socket + ": " + err.Error()
		}
		return ""
	})
	return socket
}

// A stock grpc-go client (grpc.Dial with a unix target and insecure credentials, nothing else)
// handshakes with the Rust executor, watches its events, starts a process backend that answers
// HTTP at the address the executor reports, then stops and removes it, seeing each event.
func TestStockGrpcGoClientWithDefaultOptionsHandshakesStartsAndWatches(t *testing.T) {
	socket := startExecutor(t)
	backendBinary, err := devserver.Binary("hangar-test-backend")
	if err != nil {
		t.Fatal(err)
	}
	// Both spellings of a Unix target; grpc-go sends ":authority: localhost" for them.
	for _, form := range []struct{ name, target string }{{"unix-slashes", "unix://" + socket}, {"unix-colon", "unix:" + socket}} {
		target := form.target
		t.Run(form.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			conn, err := grpc.Dial(target, grpc.WithInsecure()) //nolint:staticcheck // Debian's grpc-go 1.33 has no insecure.NewCredentials
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			stub := executorv1.NewExecutorServiceClient(conn)

			hello, err := stub.Handshake(ctx, &executorv1.HandshakeRequest{ProtocolMajor: 1, ClientName: "stock-go"})
			if err != nil {
				t.Fatalf("Handshake over %s: %v", target, err)
			}
			if hello.GetProtocolMajor() != 1 || hello.GetRuntimeKind() != "process" {
				t.Fatalf("handshake: %v", hello)
			}
			if !hasCapability(hello.GetCapabilities(), executorv1.Capability_CAPABILITY_EVENTS) {
				t.Fatalf("no EVENTS capability: %v", hello.GetCapabilities())
			}

			events, err := stub.WatchEvents(ctx, &executorv1.WatchEventsRequest{})
			if err != nil {
				t.Fatal(err)
			}
			next := func() *executorv1.RuntimeEvent {
				t.Helper()
				response, err := events.Recv()
				if err != nil {
					t.Fatalf("WatchEvents: %v", err)
				}
				return response.GetEvent()
			}
			if event := next(); event.GetType() != executorv1.EventType_EVENT_TYPE_SYNC {
				t.Fatalf("the first event is %v, not SYNC", event)
			}

			backendID := "stock-go-" + form.name
			started, err := stub.StartBackend(ctx, &executorv1.StartBackendRequest{Spec: &executorv1.BackendSpec{
				BackendId: backendID,
				Image:     backendBinary,
				Env:       map[string]string{"HANGAR_BACKEND_ID": backendID},
			}})
			if err != nil {
				t.Fatalf("StartBackend: %v", err)
			}
			if !strings.HasPrefix(started.GetAddress(), "127.0.0.1:") {
				t.Fatalf("started at %q", started.GetAddress())
			}
			if event := next(); event.GetType() != executorv1.EventType_EVENT_TYPE_STARTED || event.GetBackendId() != backendID {
				t.Fatalf("after StartBackend: %v", event)
			}
			url := "http://" + started.GetAddress() + "/"
			devserver.Eventually(t, 30*time.Second, func() string {
				response, err := http.Get(url)
				if err != nil {
					return "GET " + url + ": " + err.Error()
				}
				defer response.Body.Close()
				body, _ := io.ReadAll(response.Body)
				if response.StatusCode != 200 || string(body) != "hangar-test-backend "+backendID+"\n" {
					return "GET " + url + ": " + response.Status + " " + string(body)
				}
				return ""
			})

			if _, err := stub.StopBackend(ctx, &executorv1.StopBackendRequest{BackendId: backendID, Grace: durationpb.New(10 * time.Second)}); err != nil {
				t.Fatalf("StopBackend: %v", err)
			}
			// The test backend ends with 143 on SIGTERM, as a shell reports it.
			if event := next(); event.GetType() != executorv1.EventType_EVENT_TYPE_EXITED || event.GetBackendId() != backendID ||
				event.GetExitCode() != 143 {
				t.Fatalf("after StopBackend: %v", event)
			}
			if _, err := stub.RemoveBackend(ctx, &executorv1.RemoveBackendRequest{BackendId: backendID}); err != nil {
				t.Fatalf("RemoveBackend: %v", err)
			}
			if event := next(); event.GetType() != executorv1.EventType_EVENT_TYPE_REMOVED || event.GetBackendId() != backendID {
				t.Fatalf("after RemoveBackend: %v", event)
			}
			listed, err := stub.ListBackends(ctx, &executorv1.ListBackendsRequest{})
			if err != nil || len(listed.GetBackends()) != 0 {
				t.Fatalf("ListBackends after the remove: %v, %v", listed, err)
			}
		})
	}
}

func hasCapability(capabilities []executorv1.Capability, wanted executorv1.Capability) bool {
	for _, capability := range capabilities {
		if capability == wanted {
			return true
		}
	}
	return false
}
