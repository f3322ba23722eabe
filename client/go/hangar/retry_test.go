package hangar

import (
	"context"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/golang/protobuf/ptypes/any"
	hangarv1 "github.com/hangar-dev/hangar/client/go/gen/hangar/v1"
	spb "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protowire"
)

// scriptedNodes answers GetNode and DrainNode with the next error of its script, then with
// success, and counts the calls.
type scriptedNodes struct {
	hangarv1.UnimplementedNodeServiceServer
	mu     sync.Mutex
	script []error
	calls  int
}

func (s *scriptedNodes) next() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.calls++
	if len(s.script) == 0 {
		return nil
	}
	err := s.script[0]
	s.script = s.script[1:]
	return err
}

func (s *scriptedNodes) GetNode(_ context.Context, request *hangarv1.GetNodeRequest) (*hangarv1.GetNodeResponse, error) {
	if err := s.next(); err != nil {
		return nil, err
	}
	return &hangarv1.GetNodeResponse{Node: &hangarv1.Node{Id: request.GetId()}}, nil
}

func (s *scriptedNodes) DrainNode(_ context.Context, request *hangarv1.DrainNodeRequest) (*hangarv1.DrainNodeResponse, error) {
	if err := s.next(); err != nil {
		return nil, err
	}
	return &hangarv1.DrainNodeResponse{Node: &hangarv1.Node{Id: request.GetId()}}, nil
}

func scripted(t *testing.T, script ...error) (*Client, *scriptedNodes) {
	t.Helper()
	listener, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	nodes := &scriptedNodes{script: script}
	server := grpc.NewServer()
	hangarv1.RegisterNodeServiceServer(server, nodes)
	go func() { _ = server.Serve(listener) }()
	t.Cleanup(server.Stop)
	client, err := Dial(testContext(t), "http://"+listener.Addr().String(), Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { client.Close() })
	client.Retry = RetryPolicy{InitialBackoff: 10 * time.Millisecond}
	return client, nodes
}

// withReason is a status with an ErrorInfo of reason and a RetryInfo of retryAfter, as the
// controller's rate limit sends it.
func withReason(code codes.Code, reason string, retryAfter time.Duration) error {
	str := func(number protowire.Number, value []byte) []byte {
		return protowire.AppendBytes(protowire.AppendTag(nil, number, protowire.BytesType), value)
	}
	info := append(str(1, []byte(reason)), str(2, []byte(ErrorDomain))...)
	nanos := protowire.AppendVarint(protowire.AppendTag(nil, 2, protowire.VarintType), uint64(retryAfter))
	return status.FromProto(&spb.Status{Code: int32(code), Message: reason, Details: []*any.Any{
		{TypeUrl: "type.googleapis.com/google.rpc.ErrorInfo", Value: info},
		{TypeUrl: "type.googleapis.com/google.rpc.RetryInfo", Value: str(1, nanos)},
	}}).Err()
}

func TestUnavailableReadsAreRetriedUntilTheyAnswer(t *testing.T) {
	client, nodes := scripted(t, status.Error(codes.Unavailable, "restarting"), status.Error(codes.Unavailable, "restarting"))
	node, err := client.GetNode(testContext(t), "n1")
	if err != nil || node.GetId() != "n1" || nodes.calls != 3 {
		t.Fatalf("got %v, %v after %d calls; want n1 after 3", node, err, nodes.calls)
	}
}

func TestARateLimitedReadWaitsAsLongAsTheControllerSays(t *testing.T) {
	client, nodes := scripted(t, withReason(codes.ResourceExhausted, "RATE_LIMITED", 300*time.Millisecond))
	started := time.Now()
	if _, err := client.GetNode(testContext(t), "n1"); err != nil {
		t.Fatal(err)
	}
	if waited := time.Since(started); nodes.calls != 2 || waited < 300*time.Millisecond {
		t.Fatalf("%d calls in %v; want 2, at least 300 ms apart", nodes.calls, waited)
	}
}

func TestRetriesEndWithTheLastErrorAndSkipWhatAWaitCannotFix(t *testing.T) {
	unavailable := status.Error(codes.Unavailable, "down")
	client, nodes := scripted(t, unavailable, unavailable, unavailable, unavailable, unavailable)
	_, err := client.GetNode(testContext(t), "n1")
	if Code(err) != codes.Unavailable || nodes.calls != 4 {
		t.Fatalf("got %v after %d calls; want UNAVAILABLE after the 4 attempts", err, nodes.calls)
	}

	client, nodes = scripted(t, withReason(codes.ResourceExhausted, "WATCH_LIMIT_REACHED", 0))
	if _, err := client.GetNode(testContext(t), "n1"); Reason(err) != "WATCH_LIMIT_REACHED" || nodes.calls != 1 {
		t.Fatalf("got %v after %d calls; want WATCH_LIMIT_REACHED at once", err, nodes.calls)
	}

	client, nodes = scripted(t, unavailable)
	if _, err := client.DrainNode(testContext(t), "n1", 0); Code(err) != codes.Unavailable || nodes.calls != 1 {
		t.Fatalf("DrainNode: %v after %d calls; a call with effects is not repeated", err, nodes.calls)
	}
}
