package hangar

import (
	"context"
	"fmt"
	"io"
	"os"
	"sort"
	"testing"
	"time"

	hangarv1 "github.com/hangar-dev/hangar/client/go/gen/hangar/v1"
	"github.com/hangar-dev/hangar/client/go/internal/devserver"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// dev is one `hangar-server dev` (built binary, free ports, its own data dir, process runtime)
// that the tests of this package share; tests that restart a server start their own.
var dev *devserver.Server

func TestMain(m *testing.M) {
	dataDir, err := os.MkdirTemp("", "hangar-go-sdk-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	dev, err = devserver.Launch(dataDir)
	if err != nil {
		fmt.Fprintln(os.Stderr, "cannot start hangar-server dev:", err)
		os.Exit(1)
	}
	code := m.Run()
	if err := dev.Stop(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		code = 1
	}
	if code == 0 {
		os.RemoveAll(dataDir)
	} else {
		fmt.Fprintln(os.Stderr, "the dev server's data dir and log are kept in", dataDir)
	}
	os.Exit(code)
}

func dial(t *testing.T, url string) *Client {
	t.Helper()
	client, err := Dial(testContext(t), url, Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { client.Close() })
	return client
}

func drone(t *testing.T, client *Client) *hangarv1.Node {
	t.Helper()
	nodes, _, err := client.ListNodes(testContext(t), &hangarv1.NodeFilter{Kinds: []hangarv1.NodeKind{hangarv1.NodeKind_NODE_KIND_DRONE}})
	if err != nil {
		t.Fatal(err)
	}
	if len(nodes) != 1 {
		t.Fatalf("dev has %d drones", len(nodes))
	}
	return nodes[0]
}

func TestListNodesReadsEveryPageFromOneSnapshot(t *testing.T) {
	client := dial(t, dev.ControllerURL)
	client.PageSize = 1 // dev's two nodes take two pages
	nodes, revision, err := client.ListNodes(testContext(t), nil)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, node := range nodes {
		names = append(names, node.GetName()+" "+ShortName(node.GetKind()))
		if node.GetRevision() > revision {
			t.Errorf("node %s has revision %d, after the listing's %d", node.GetName(), node.GetRevision(), revision)
		}
	}
	sort.Strings(names)
	if fmt.Sprint(names) != "[dev-drone DRONE dev-proxy PROXY]" {
		t.Fatalf("nodes: %v", names)
	}
	ready, _, err := client.ListNodes(testContext(t), &hangarv1.NodeFilter{
		Kinds:  []hangarv1.NodeKind{hangarv1.NodeKind_NODE_KIND_DRONE},
		States: []hangarv1.NodeState{hangarv1.NodeState_NODE_STATE_READY},
	})
	if err != nil || len(ready) != 1 || ready[0].GetResources().GetMemoryTotalBytes() == 0 {
		t.Fatalf("the ready drone with its resources: %v, %v", ready, err)
	}
	got, err := client.GetNode(testContext(t), ready[0].GetId())
	if err != nil || got.GetName() != "dev-drone" {
		t.Fatalf("GetNode: %v, %v", got, err)
	}
}

func TestUnknownNodeIsNotFoundWithItsReasonAndMetadata(t *testing.T) {
	_, err := dial(t, dev.ControllerURL).GetNode(testContext(t), "no-such-node")
	hangarErr, ok := err.(*Error)
	if !ok {
		t.Fatalf("%v (%T) is not an *Error", err, err)
	}
	if hangarErr.Code != codes.NotFound || hangarErr.Reason != "NODE_NOT_FOUND" || hangarErr.Domain != ErrorDomain ||
		hangarErr.Metadata["id"] != "no-such-node" {
		t.Fatalf("got %+v", hangarErr)
	}
	if status.Code(err) != codes.NotFound {
		t.Fatalf("status.Code: %v", status.Code(err))
	}
}

func TestPageSizeOverTheLimitNamesTheField(t *testing.T) {
	client := dial(t, dev.ControllerURL)
	client.PageSize = 5000
	_, _, err := client.ListNodes(testContext(t), nil)
	hangarErr, ok := err.(*Error)
	if !ok || hangarErr.Code != codes.InvalidArgument || len(hangarErr.Violations) != 1 || hangarErr.Violations[0].Field != "page_size" {
		t.Fatalf("got %v", err)
	}
}

func TestDrainAndUndrainTheDevDrone(t *testing.T) {
	client := dial(t, dev.ControllerURL)
	node := drone(t, client)
	drained, err := client.DrainNode(testContext(t), node.GetId(), 0)
	if err != nil || drained.GetState() != hangarv1.NodeState_NODE_STATE_DRAINING || !drained.GetDraining() {
		t.Fatalf("drain: %v, %v", drained, err)
	}
	undrained, err := client.UndrainNode(testContext(t), node.GetId())
	if err != nil || undrained.GetState() != hangarv1.NodeState_NODE_STATE_READY || undrained.GetDraining() ||
		undrained.GetRevision() <= drained.GetRevision() {
		t.Fatalf("undrain: %v, %v", undrained, err)
	}
}

func TestWatchNodesSendsTheSnapshotThenLiveChanges(t *testing.T) {
	client := dial(t, dev.ControllerURL)
	node := drone(t, client)
	watch := client.WatchNodes(testContext(t), WatchOptions{})
	defer watch.Close()
	var added []string
	for {
		event, err := watch.Next()
		if err != nil {
			t.Fatal(err)
		}
		if len(added) == 0 && !event.NewSnapshot {
			t.Fatal("the first event does not start a snapshot")
		}
		if event.GetType() == hangarv1.NodeEventType_NODE_EVENT_TYPE_SNAPSHOT_END {
			break
		}
		added = append(added, ShortName(event.GetType())+" "+event.GetNode().GetName())
	}
	sort.Strings(added)
	if fmt.Sprint(added) != "[ADDED dev-drone ADDED dev-proxy]" {
		t.Fatalf("snapshot: %v", added)
	}
	snapshotRevision := watch.Revision()
	if _, err := client.DrainNode(testContext(t), node.GetId(), 0); err != nil {
		t.Fatal(err)
	}
	defer client.UndrainNode(context.Background(), node.GetId()) //nolint:errcheck
	for {
		event, err := watch.Next()
		if err != nil {
			t.Fatal(err)
		}
		if event.GetRevision() <= snapshotRevision || event.NewSnapshot {
			t.Fatalf("event %v at or before the snapshot's revision %d", event, snapshotRevision)
		}
		if event.GetType() == hangarv1.NodeEventType_NODE_EVENT_TYPE_MODIFIED && event.GetNode().GetDraining() {
			return
		}
	}
}

// The controller restarts under a running watch: the watch resumes from the revision it had
// reached, on the restarted controller, and sees the change made afterwards, with no second
// snapshot and no event twice.
func TestWatchNodesResumesAcrossAControllerRestart(t *testing.T) {
	own := devserver.Start(t)
	client := dial(t, own.ControllerURL)
	node := drone(t, client)
	reconnects := make(chan error, 100)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	watch := client.WatchNodes(ctx, WatchOptions{OnReconnect: func(cause error, _ time.Duration) { reconnects <- cause }})
	defer watch.Close()
	for {
		event, err := watch.Next()
		if err != nil {
			t.Fatal(err)
		}
		if event.GetType() == hangarv1.NodeEventType_NODE_EVENT_TYPE_SNAPSHOT_END {
			break
		}
	}
	if err := own.Restart(); err != nil {
		t.Fatal(err)
	}
	// After the restart the drone attaches again; drain it then.
	devserver.Eventually(t, 30*time.Second, func() string {
		got, err := client.GetNode(testContext(t), node.GetId())
		if err != nil || got.GetState() != hangarv1.NodeState_NODE_STATE_READY {
			return fmt.Sprintf("the dev drone is not READY again: %v %v", got.GetState(), err)
		}
		return ""
	})
	if _, err := client.DrainNode(testContext(t), node.GetId(), 0); err != nil {
		t.Fatal(err)
	}
	last := watch.Revision()
	for {
		event, err := watch.Next()
		if err != nil {
			t.Fatal(err)
		}
		if event.NewSnapshot {
			t.Fatal("the watch started over with a snapshot instead of resuming")
		}
		if event.GetRevision() <= last {
			t.Fatalf("event at revision %d after %d: repeated", event.GetRevision(), last)
		}
		last = event.GetRevision()
		if event.GetNode().GetId() == node.GetId() && event.GetNode().GetDraining() {
			break
		}
	}
	if len(reconnects) == 0 {
		t.Fatal("the watch never reconnected, so the test proved nothing")
	}
}

// A backend watch outlives a controller restart: dev's process backends end with it and are
// reported LOST on the next start, and the watch, reopened on the restarted controller, skips
// the history it already delivered and ends with TERMINATED.
func TestBackendWatchFollowsABackendAcrossAControllerRestart(t *testing.T) {
	own := devserver.Start(t)
	client := dial(t, own.ControllerURL)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	backend, err := client.Connect(ctx, "tests/restart", ConnectOptions{Image: "hangar-demo", Wait: true})
	if err != nil {
		t.Fatal(err)
	}
	watch := client.WatchBackend(ctx, backend.ID)
	defer watch.Close()
	var states []string
	last := hangarv1.BackendState_BACKEND_STATE_UNSPECIFIED
	next := func() (*hangarv1.BackendStatus, error) {
		status, err := watch.Next()
		if err == nil {
			if status.GetState() <= last {
				t.Fatalf("state %v after %v: the watch went back", status.GetState(), last)
			}
			last = status.GetState()
			states = append(states, ShortName(status.GetState()))
		}
		return status, err
	}
	for last != hangarv1.BackendState_BACKEND_STATE_READY {
		if _, err := next(); err != nil {
			t.Fatal(err)
		}
	}
	if err := own.Restart(); err != nil {
		t.Fatal(err)
	}
	var final *hangarv1.BackendStatus
	for {
		status, err := next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("after %v: %v", states, err)
		}
		final = status
	}
	t.Logf("states: %v, then %s", states, ShortName(final.GetTerminationReason()))
	if final.GetState() != hangarv1.BackendState_BACKEND_STATE_TERMINATED ||
		final.GetTerminationReason() != hangarv1.TerminationReason_TERMINATION_REASON_LOST {
		t.Fatalf("states %v, ending with %v", states, final)
	}
}
