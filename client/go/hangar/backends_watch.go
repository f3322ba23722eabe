package hangar

import (
	"context"
	"time"

	hangarv1 "github.com/hangar-dev/hangar/client/go/gen/hangar/v1"
)

// BackendsWatchOptions shape a BackendsWatch.
type BackendsWatchOptions struct {
	// Filter selects the backends watched (states, key namespace and prefix, cluster, pool,
	// drone, labels); nil: all.
	Filter *hangarv1.BackendFilter
	// StartRevision 0 starts with a snapshot of the matching backends (ADDED events, then
	// SNAPSHOT_END). Above 0 it replays every change after that revision instead, e.g. after
	// ListBackends returned it.
	StartRevision uint64
	// BookmarkInterval, when above 0, asks for a BOOKMARK event after that much quiet time.
	BookmarkInterval time.Duration
	// OnReconnect, when set, is called before the watch waits delay and opens a new stream
	// because the last one ended with cause (io.EOF when the controller closed it).
	OnReconnect func(cause error, delay time.Duration)
}

// BackendsWatchEvent is one event of a BackendsWatch.
type BackendsWatchEvent struct {
	*hangarv1.BackendEvent
	// NewSnapshot is true on the first event of every snapshot, as NodeWatchEvent's.
	NewSnapshot bool
}

// BackendsWatch is WatchBackends as one endless stream with resume built in: every status
// change of every matching backend across the cluster, in revision order. It follows the same
// rules as NodeWatch, on the same loop: resume from the revision reached after a dropped
// stream, a controller restart or a WATCH_TOO_SLOW cut-off; a fresh snapshot (NewSnapshot)
// after REVISION_COMPACTED. A backend whose change takes it out of the filter comes as
// REMOVED with its new status. A BackendsWatch is for one goroutine. (WatchBackend, by id,
// follows a single backend.)
type BackendsWatch struct {
	loop *watchLoop[*hangarv1.BackendEvent]
}

// WatchBackends starts watching backends. Read events with Next; Close (or cancel ctx) to stop.
func (c *Client) WatchBackends(ctx context.Context, options BackendsWatchOptions) *BackendsWatch {
	open := func(ctx context.Context, t *controller, from watchFrom) (func() (*hangarv1.BackendEvent, error), error) {
		stream, err := t.backends.WatchBackends(ctx, &hangarv1.WatchBackendsRequest{Filter: options.Filter,
			StartRevision: from.revision, SendInitial: from.initial, BookmarkInterval: from.bookmark})
		if err != nil {
			return nil, err
		}
		return func() (*hangarv1.BackendEvent, error) {
			response, err := stream.Recv()
			return response.GetEvent(), err
		}, nil
	}
	phase := func(event *hangarv1.BackendEvent) eventPhase {
		switch event.GetType() {
		case hangarv1.BackendEventType_BACKEND_EVENT_TYPE_ADDED:
			return phaseAdded
		case hangarv1.BackendEventType_BACKEND_EVENT_TYPE_SNAPSHOT_END:
			return phaseSnapshotEnd
		}
		return phaseOther
	}
	return &BackendsWatch{loop: newWatchLoop(ctx, c.order(), options.StartRevision, options.BookmarkInterval, options.OnReconnect, open, phase)}
}

// Revision is the revision the watch has reached: a stream opened now resumes after it.
func (w *BackendsWatch) Revision() uint64 { return w.loop.revision }

// Controller is the URL of the controller the watch's stream is (or will next be) open on.
func (w *BackendsWatch) Controller() string { return w.loop.targets[w.loop.current].url }

// Close stops the watch; Next returns context.Canceled afterwards.
func (w *BackendsWatch) Close() { w.loop.cancel() }

// Next blocks until the next event, and returns an error only when the watch cannot go on: its
// context ended, or the controller refused it for a reason a retry cannot fix (an *Error).
func (w *BackendsWatch) Next() (BackendsWatchEvent, error) {
	event, newSnapshot, err := w.loop.next()
	return BackendsWatchEvent{BackendEvent: event, NewSnapshot: newSnapshot}, err
}
