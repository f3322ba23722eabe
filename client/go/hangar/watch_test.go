package hangar

import (
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	hangarv1 "github.com/hangar-dev/hangar/client/go/gen/hangar/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// scriptedWatch serves one scripted stream per WatchNodes call: events to send, then how the
// stream ends (nil: the stream stays open). It records each request.
type scriptedWatch struct {
	hangarv1.UnimplementedNodeServiceServer
	mu       sync.Mutex
	streams  []watchScript
	requests []string
}

type watchScript struct {
	events []*hangarv1.NodeEvent
	end    error
}

func (s *scriptedWatch) WatchNodes(request *hangarv1.WatchNodesRequest, stream hangarv1.NodeService_WatchNodesServer) error {
	s.mu.Lock()
	s.requests = append(s.requests, fmt.Sprintf("start=%d initial=%v", request.GetStartRevision(), request.GetSendInitial()))
	if len(s.streams) == 0 {
		s.mu.Unlock()
		<-stream.Context().Done()
		return nil
	}
	script := s.streams[0]
	s.streams = s.streams[1:]
	s.mu.Unlock()
	for _, event := range script.events {
		if err := stream.Send(&hangarv1.WatchNodesResponse{Event: event}); err != nil {
			return err
		}
	}
	if script.end == nil {
		<-stream.Context().Done()
	}
	return script.end
}

func event(kind hangarv1.NodeEventType, node string, revision uint64) *hangarv1.NodeEvent {
	e := &hangarv1.NodeEvent{Type: kind, Revision: revision}
	if node != "" {
		e.Node = &hangarv1.Node{Id: node, Name: node}
	}
	return e
}

const (
	added       = hangarv1.NodeEventType_NODE_EVENT_TYPE_ADDED
	modified    = hangarv1.NodeEventType_NODE_EVENT_TYPE_MODIFIED
	snapshotEnd = hangarv1.NodeEventType_NODE_EVENT_TYPE_SNAPSHOT_END
)

func watchScripted(t *testing.T, options WatchOptions, streams ...watchScript) ([]string, *scriptedWatch) {
	t.Helper()
	listener, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	fake := &scriptedWatch{streams: streams}
	server := grpc.NewServer()
	hangarv1.RegisterNodeServiceServer(server, fake)
	go func() { _ = server.Serve(listener) }()
	t.Cleanup(server.Stop)
	client, err := Dial(testContext(t), "http://"+listener.Addr().String(), Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	want := 0
	for _, stream := range streams {
		want += len(stream.events)
	}
	watch := client.WatchNodes(testContext(t), options)
	defer watch.Close()
	var seen []string
	for len(seen) < want {
		e, err := watch.Next()
		if err != nil {
			seen = append(seen, "error "+Reason(err))
			break
		}
		line := fmt.Sprintf("%s %s %d", ShortName(e.GetType()), e.GetNode().GetName(), e.GetRevision())
		if e.NewSnapshot {
			line = "new snapshot: " + line
		}
		seen = append(seen, line)
	}
	return seen, fake
}

func TestAWatchCutOffAsTooSlowResumesFromTheLastRevisionItDelivered(t *testing.T) {
	seen, fake := watchScripted(t, WatchOptions{},
		watchScript{[]*hangarv1.NodeEvent{event(added, "a", 3), event(added, "b", 2), event(snapshotEnd, "", 7), event(modified, "a", 8)},
			withReason(codes.ResourceExhausted, "WATCH_TOO_SLOW", 0)},
		watchScript{[]*hangarv1.NodeEvent{event(modified, "b", 9)}, nil},
	)
	want := "[new snapshot: ADDED a 3; ADDED b 2; SNAPSHOT_END  7; MODIFIED a 8; MODIFIED b 9]"
	if got := "[" + strings.Join(seen, "; ") + "]"; got != want {
		t.Fatalf("events:\n got %s\nwant %s", got, want)
	}
	if fmt.Sprint(fake.requests) != "[start=0 initial=true start=8 initial=false]" {
		t.Fatalf("requests: %v", fake.requests)
	}
}

func TestAWatchBrokenInsideItsSnapshotTakesANewSnapshot(t *testing.T) {
	// ADDED events carry each node's own revision (here 5), no position to resume from.
	seen, fake := watchScripted(t, WatchOptions{},
		watchScript{[]*hangarv1.NodeEvent{event(added, "a", 5)}, status.Error(codes.Unavailable, "gone")},
		watchScript{[]*hangarv1.NodeEvent{event(added, "a", 5), event(snapshotEnd, "", 9)}, nil},
	)
	want := "[new snapshot: ADDED a 5; new snapshot: ADDED a 5; SNAPSHOT_END  9]"
	if got := "[" + strings.Join(seen, "; ") + "]"; got != want {
		t.Fatalf("events:\n got %s\nwant %s", got, want)
	}
	if fmt.Sprint(fake.requests) != "[start=0 initial=true start=0 initial=true]" {
		t.Fatalf("requests: %v", fake.requests)
	}
}

func TestAWatchFromACompactedRevisionStartsOverWithASnapshot(t *testing.T) {
	var reconnects []string
	options := WatchOptions{StartRevision: 4, OnReconnect: func(cause error, delay time.Duration) {
		reconnects = append(reconnects, fmt.Sprintf("%s after %v", Reason(cause), delay))
	}}
	seen, fake := watchScripted(t, options,
		watchScript{nil, withReason(codes.OutOfRange, "REVISION_COMPACTED", 0)},
		watchScript{[]*hangarv1.NodeEvent{event(added, "a", 20), event(snapshotEnd, "", 21)}, nil},
	)
	want := "[new snapshot: ADDED a 20; SNAPSHOT_END  21]"
	if got := "[" + strings.Join(seen, "; ") + "]"; got != want {
		t.Fatalf("events:\n got %s\nwant %s", got, want)
	}
	if fmt.Sprint(fake.requests) != "[start=4 initial=false start=0 initial=true]" {
		t.Fatalf("requests: %v", fake.requests)
	}
	if fmt.Sprint(reconnects) != "[REVISION_COMPACTED after 0s]" {
		t.Fatalf("reconnects: %v", reconnects)
	}
}

func TestAWatchRefusedForGoodEndsWithTheError(t *testing.T) {
	seen, fake := watchScripted(t, WatchOptions{},
		watchScript{nil, withReason(codes.PermissionDenied, "ROLE_NOT_ALLOWED", 0)},
		watchScript{[]*hangarv1.NodeEvent{event(added, "a", 1)}, nil},
	)
	if fmt.Sprint(seen) != "[error ROLE_NOT_ALLOWED]" || len(fake.requests) != 1 {
		t.Fatalf("seen %v after %d requests", seen, len(fake.requests))
	}
}
