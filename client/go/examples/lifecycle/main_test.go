package main

import (
	"bytes"
	"context"
	"fmt"
	"testing"
	"time"

	hangarv1 "github.com/hangar-dev/hangar/client/go/gen/hangar/v1"
	"github.com/hangar-dev/hangar/client/go/hangar"
	"github.com/hangar-dev/hangar/client/go/internal/devserver"
)

// The example against a live `hangar-server dev`: it lists the dev nodes, connects a backend by
// key, gets the same backend for the same key, reaches it through its URL, terminates it and
// sees TERMINATED.
func TestTheExampleRunsABackendsWholeLifecycleOnDev(t *testing.T) {
	dev := devserver.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var out bytes.Buffer
	result, err := run(ctx, dev.ControllerURL, hangar.Options{}, "examples/lifecycle-test", "hangar-demo", &out)
	t.Logf("the example printed:\n%s", out.String())
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(result.Nodes) != "[dev-drone DRONE READY dev-proxy PROXY READY]" &&
		fmt.Sprint(result.Nodes) != "[dev-proxy PROXY READY dev-drone DRONE READY]" {
		t.Errorf("nodes: %v", result.Nodes)
	}
	if !result.Spawned || result.FirstID == "" || result.SecondID != result.FirstID {
		t.Errorf("one key, one backend: spawned %v, %q then %q", result.Spawned, result.FirstID, result.SecondID)
	}
	if result.HTTPStatus != 200 {
		t.Errorf("GET %s through dev's proxy: %d", result.URL, result.HTTPStatus)
	}
	if n := len(result.States); n == 0 || result.States[n-1] != "TERMINATED" || result.Final != "TERMINATED" {
		t.Errorf("after terminate: watched %v, then GetBackend says %s", result.States, result.Final)
	}

	// What the example saw, checked with the SDK's own calls.
	client, err := hangar.Dial(ctx, dev.ControllerURL, hangar.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	backends, _, err := client.ListBackends(ctx, &hangarv1.BackendFilter{KeyNamespace: "examples"})
	if err != nil {
		t.Fatal(err)
	}
	if len(backends) != 1 || backends[0].GetId() != result.FirstID || backends[0].GetKey().GetName() != "lifecycle-test" ||
		backends[0].GetStatus().GetTerminationReason() != hangarv1.TerminationReason_TERMINATION_REASON_EXTERNAL {
		t.Errorf("ListBackends: %v", backends)
	}
	// Once the key's backend has ended, the key without Image has none: NOT_FOUND with a reason.
	_, err = client.Connect(ctx, "examples/lifecycle-test", hangar.ConnectOptions{})
	if hangar.Reason(err) != "BACKEND_NOT_FOUND" {
		t.Errorf("connect to an ended key without an image: %v", err)
	}
	// And with it, a new backend holds the key.
	again, err := client.Connect(ctx, "examples/lifecycle-test", hangar.ConnectOptions{Image: "hangar-demo", Wait: true})
	if err != nil || again.ID == result.FirstID || !again.Spawned || again.State() != hangarv1.BackendState_BACKEND_STATE_READY {
		t.Fatalf("a new backend for the key: %+v, %v", again, err)
	}
	if _, err := client.Terminate(ctx, again.ID, true); err != nil {
		t.Fatal(err)
	}
	watch := client.WatchBackend(ctx, again.ID)
	defer watch.Close()
	var last *hangarv1.BackendStatus
	for {
		status, err := watch.Next()
		if err != nil {
			break
		}
		last = status
	}
	if last.GetState() != hangarv1.BackendState_BACKEND_STATE_TERMINATED || last.GetTerminationKind() != hangarv1.TerminationKind_TERMINATION_KIND_HARD {
		t.Fatalf("hard terminate: %v", last)
	}
}

// A backend whose program does not exist ends before READY: Connect with Wait says so.
func TestWaitingForABackendThatCannotStartFailsWithItsTermination(t *testing.T) {
	dev := devserver.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	client, err := hangar.Dial(ctx, dev.ControllerURL, hangar.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	_, err = client.Connect(ctx, "examples/broken", hangar.ConnectOptions{Image: "/no/such/program", Wait: true})
	terminated, ok := err.(*hangar.TerminatedError)
	if !ok {
		t.Fatalf("got %v (%T), want a *TerminatedError", err, err)
	}
	t.Logf("%v", terminated)
	if terminated.Status.GetTerminationReason() == hangarv1.TerminationReason_TERMINATION_REASON_UNSPECIFIED {
		t.Fatalf("no termination reason: %v", terminated.Status)
	}
}
