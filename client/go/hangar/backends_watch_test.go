package hangar

import (
	"context"
	"fmt"
	"testing"
	"time"

	hangarv1 "github.com/hangar-dev/hangar/client/go/gen/hangar/v1"
	"github.com/hangar-dev/hangar/client/go/internal/devserver"
)

const (
	backendAdded       = hangarv1.BackendEventType_BACKEND_EVENT_TYPE_ADDED
	backendModified    = hangarv1.BackendEventType_BACKEND_EVENT_TYPE_MODIFIED
	backendRemoved     = hangarv1.BackendEventType_BACKEND_EVENT_TYPE_REMOVED
	backendSnapshotEnd = hangarv1.BackendEventType_BACKEND_EVENT_TYPE_SNAPSHOT_END
	stateReady         = hangarv1.BackendState_BACKEND_STATE_READY
	stateTerminated    = hangarv1.BackendState_BACKEND_STATE_TERMINATED
)

// backendEvents reads a BackendsWatch and keeps what it read.
type backendEvents struct {
	t     *testing.T
	watch *BackendsWatch
	seen  []BackendsWatchEvent
}

func (e *backendEvents) until(condition func(BackendsWatchEvent) bool) BackendsWatchEvent {
	e.t.Helper()
	for {
		event, err := e.watch.Next()
		if err != nil {
			e.t.Fatalf("after %d events: %v", len(e.seen), err)
		}
		e.seen = append(e.seen, event)
		if condition(event) {
			return event
		}
	}
}

// of matches a change of that backend, in one of states (any state when none).
func of(id string, states ...hangarv1.BackendState) func(BackendsWatchEvent) bool {
	return func(event BackendsWatchEvent) bool {
		if event.GetBackend().GetId() != id {
			return false
		}
		for _, state := range states {
			if event.GetBackend().GetStatus().GetState() == state {
				return true
			}
		}
		return len(states) == 0
	}
}

// states are the states of id's changes among events, in order.
func states(events []BackendsWatchEvent, id string) []string {
	var out []string
	for _, event := range events {
		if event.GetBackend().GetId() == id {
			out = append(out, ShortName(event.GetBackend().GetStatus().GetState()))
		}
	}
	return out
}

// history is the backend's states as its own history (WatchBackend) has them.
func history(t *testing.T, client *Client, id string) []string {
	t.Helper()
	watch := client.WatchBackend(testContext(t), id)
	defer watch.Close()
	var out []string
	for {
		status, err := watch.Next()
		if err != nil {
			if len(out) > 0 && out[len(out)-1] == "TERMINATED" {
				return out
			}
			t.Fatalf("history of %s after %v: %v", id, out, err)
		}
		out = append(out, ShortName(status.GetState()))
	}
}

func after(states []string, state string) []string {
	for i, s := range states {
		if s == state {
			return states[i+1:]
		}
	}
	return nil
}

func assertNoRepeat(t *testing.T, events []BackendsWatchEvent) {
	t.Helper()
	var last uint64
	for _, event := range events {
		if event.GetType() == backendSnapshotEnd || event.GetBackend() == nil {
			continue
		}
		if event.NewSnapshot {
			continue
		}
		if event.GetRevision() <= last {
			t.Fatalf("revision %d after %d: repeated or out of order", event.GetRevision(), last)
		}
		last = event.GetRevision()
	}
}

func watchContext(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

func TestWatchBackendsSeesTheSnapshotThenEveryStateOfABackendsLifeInOrder(t *testing.T) {
	client := dial(t, dev.ControllerURL)
	ctx := watchContext(t)
	before, err := client.Connect(ctx, "gowb-life/before", ConnectOptions{Image: "hangar-demo", Wait: true})
	if err != nil {
		t.Fatal(err)
	}
	watch := client.WatchBackends(ctx, BackendsWatchOptions{Filter: &hangarv1.BackendFilter{KeyNamespace: "gowb-life"}})
	defer watch.Close()
	events := &backendEvents{t: t, watch: watch}
	end := events.until(func(e BackendsWatchEvent) bool { return e.GetType() == backendSnapshotEnd })
	if len(events.seen) != 2 || !events.seen[0].NewSnapshot || events.seen[0].GetType() != backendAdded ||
		events.seen[0].GetBackend().GetId() != before.ID || events.seen[1].NewSnapshot {
		t.Fatalf("snapshot: %v", events.seen)
	}

	during, err := client.Connect(ctx, "gowb-life/during", ConnectOptions{Image: "hangar-demo"})
	if err != nil {
		t.Fatal(err)
	}
	events.until(of(during.ID, stateReady))
	if _, err := client.Terminate(ctx, during.ID, false); err != nil {
		t.Fatal(err)
	}
	events.until(of(during.ID, stateTerminated))

	live := events.seen[2:]
	assertNoRepeat(t, live)
	first := live[0]
	if first.GetBackend().GetId() != during.ID || first.GetType() != backendAdded || first.GetRevision() <= end.GetRevision() {
		t.Fatalf("the new backend's first event: %v", first)
	}
	for _, event := range live[1:] {
		if event.GetType() != backendModified {
			t.Fatalf("after ADDED only MODIFIED, got %v", event)
		}
	}
	got, want := states(live, during.ID), history(t, client, during.ID)
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("the watch saw %v, the backend's history is %v", got, want)
	}
	if _, err := client.Terminate(ctx, before.ID, true); err != nil {
		t.Fatal(err)
	}
}

func TestListBackendsRevisionIsWhereAWatchContinues(t *testing.T) {
	client := dial(t, dev.ControllerURL)
	client.PageSize = 1
	ctx := watchContext(t)
	listed, err := client.Connect(ctx, "gowb-list/listed", ConnectOptions{Image: "hangar-demo", Wait: true})
	if err != nil {
		t.Fatal(err)
	}
	backends, revision, err := client.ListBackends(ctx, &hangarv1.BackendFilter{KeyNamespace: "gowb-list"})
	if err != nil || len(backends) != 1 || backends[0].GetId() != listed.ID || revision == 0 {
		t.Fatalf("listing: %v at %d, %v", backends, revision, err)
	}
	if _, err := client.Terminate(ctx, listed.ID, true); err != nil {
		t.Fatal(err)
	}
	watch := client.WatchBackends(ctx, BackendsWatchOptions{Filter: &hangarv1.BackendFilter{KeyNamespace: "gowb-list"}, StartRevision: revision})
	defer watch.Close()
	events := &backendEvents{t: t, watch: watch}
	events.until(of(listed.ID, stateTerminated))
	for _, event := range events.seen {
		if event.NewSnapshot || event.GetType() != backendModified {
			t.Fatalf("from a listing's revision, only the changes after it: %v", events.seen)
		}
	}
	got, want := states(events.seen, listed.ID), after(history(t, client, listed.ID), "READY")
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("after the listing the watch saw %v, the history has %v", got, want)
	}
}

// The controller restarts under the watch; dev's process backends end with it and are reported
// LOST on the next start. The watch resumes from its revision: no new snapshot, no change twice.
func TestWatchBackendsResumesAcrossAControllerRestartWithoutADuplicate(t *testing.T) {
	own := devserver.Start(t)
	client := dial(t, own.ControllerURL)
	ctx := watchContext(t)
	backend, err := client.Connect(ctx, "gowb-restart/a", ConnectOptions{Image: "hangar-demo", Wait: true})
	if err != nil {
		t.Fatal(err)
	}
	reconnects := make(chan error, 100)
	watch := client.WatchBackends(ctx, BackendsWatchOptions{
		Filter:      &hangarv1.BackendFilter{KeyNamespace: "gowb-restart"},
		OnReconnect: func(cause error, _ time.Duration) { reconnects <- cause },
	})
	defer watch.Close()
	events := &backendEvents{t: t, watch: watch}
	events.until(func(e BackendsWatchEvent) bool { return e.GetType() == backendSnapshotEnd })
	snapshot := len(events.seen)
	if err := own.Restart(); err != nil {
		t.Fatal(err)
	}
	events.until(of(backend.ID, stateTerminated))
	next, err := client.Connect(ctx, "gowb-restart/b", ConnectOptions{Image: "hangar-demo"})
	if err != nil {
		t.Fatal(err)
	}
	events.until(of(next.ID, stateReady))

	if len(reconnects) == 0 {
		t.Fatal("the watch never reconnected, so the test proved nothing")
	}
	resumed := events.seen[snapshot:]
	for _, event := range resumed {
		if event.NewSnapshot {
			t.Fatal("the watch started over with a snapshot instead of resuming")
		}
	}
	assertNoRepeat(t, resumed)
	got, want := states(resumed, backend.ID), after(history(t, client, backend.ID), "READY")
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("after the restart the watch saw %v, the history after READY is %v", got, want)
	}
	if _, err := client.Terminate(ctx, next.ID, true); err != nil {
		t.Fatal(err)
	}
}

func TestWatchBackendsReportsABackendLeavingAStateAndNamespaceFilterAsRemoved(t *testing.T) {
	client := dial(t, dev.ControllerURL)
	ctx := watchContext(t)
	watch := client.WatchBackends(ctx, BackendsWatchOptions{Filter: &hangarv1.BackendFilter{
		States: []hangarv1.BackendState{stateReady}, KeyNamespace: "gowb-filter"}})
	defer watch.Close()
	events := &backendEvents{t: t, watch: watch}
	events.until(func(e BackendsWatchEvent) bool { return e.GetType() == backendSnapshotEnd })
	other, err := client.Connect(ctx, "gowb-other/outside", ConnectOptions{Image: "hangar-demo", Wait: true})
	if err != nil {
		t.Fatal(err)
	}
	inside, err := client.Connect(ctx, "gowb-filter/inside", ConnectOptions{Image: "hangar-demo", Wait: true})
	if err != nil {
		t.Fatal(err)
	}
	added := events.until(of(inside.ID))
	if _, err := client.Terminate(ctx, inside.ID, false); err != nil {
		t.Fatal(err)
	}
	removed := events.until(of(inside.ID))
	if _, err := client.Terminate(ctx, other.ID, true); err != nil {
		t.Fatal(err)
	}
	if len(events.seen) != 3 {
		t.Fatalf("SNAPSHOT_END, ADDED, REMOVED expected (nothing of %s), got %v", other.ID, events.seen)
	}
	if added.GetType() != backendAdded || added.GetBackend().GetStatus().GetState() != stateReady {
		t.Fatalf("it enters the filter when READY: %v", added)
	}
	if state := removed.GetBackend().GetStatus().GetState(); removed.GetType() != backendRemoved || state == stateReady ||
		removed.GetRevision() <= added.GetRevision() {
		t.Fatalf("leaving the filter is REMOVED with the status that took it out: %v", removed)
	}
}
