package hangar

import (
	"context"
	"errors"
	"io"
	"math/rand"
	"time"

	hangarv1 "github.com/hangar-dev/hangar/client/go/gen/hangar/v1"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/types/known/durationpb"
)

// WatchOptions shape a NodeWatch.
type WatchOptions struct {
	// Filter selects the nodes watched; nil: all.
	Filter *hangarv1.NodeFilter
	// StartRevision 0 starts with a snapshot of the matching nodes (ADDED events, then
	// SNAPSHOT_END). Above 0 it replays every change after that revision instead, e.g. after
	// ListNodes returned it.
	StartRevision uint64
	// BookmarkInterval, when above 0, asks for a BOOKMARK event after that much quiet time, so
	// the resume revision keeps up on a quiet stream.
	BookmarkInterval time.Duration
	// OnReconnect, when set, is called before the watch waits delay and opens a new stream
	// because the last one ended with cause (io.EOF when the controller closed it).
	OnReconnect func(cause error, delay time.Duration)
}

// NodeWatchEvent is one event of a NodeWatch.
type NodeWatchEvent struct {
	*hangarv1.NodeEvent
	// NewSnapshot is true on the first event of every snapshot, the first one included: the
	// events up to the next SNAPSHOT_END are every matching node, and whatever the consumer knew
	// before is to be replaced by them. A later snapshot comes when the watch could not resume
	// (the revision it had reached was compacted, or the stream broke inside a snapshot).
	NewSnapshot bool
}

// NodeWatch is WatchNodes as one endless stream with resume built in, like kube-rs's watcher
// (docs/design/nodes-and-watch.md). It remembers the revision it has reached; when the stream
// ends (the controller restarts or shuts down, the connection breaks, or the controller cuts a
// slow reader off with WATCH_TOO_SLOW) it waits a jittered backoff and resumes from that
// revision, so no change is missed or repeated. When that revision has been compacted away
// (OUT_OF_RANGE, REVISION_COMPACTED) it starts over with a fresh snapshot (NewSnapshot).
// Errors a retry cannot fix end it. A NodeWatch is for one goroutine.
type NodeWatch struct {
	loop *watchLoop[*hangarv1.NodeEvent]
}

// WatchNodes starts watching nodes. Read events with Next; Close (or cancel ctx) to stop.
func (c *Client) WatchNodes(ctx context.Context, options WatchOptions) *NodeWatch {
	open := func(ctx context.Context, t *controller, from watchFrom) (func() (*hangarv1.NodeEvent, error), error) {
		stream, err := t.nodes.WatchNodes(ctx, &hangarv1.WatchNodesRequest{Filter: options.Filter,
			StartRevision: from.revision, SendInitial: from.initial, BookmarkInterval: from.bookmark})
		if err != nil {
			return nil, err
		}
		return func() (*hangarv1.NodeEvent, error) {
			response, err := stream.Recv()
			return response.GetEvent(), err
		}, nil
	}
	phase := func(event *hangarv1.NodeEvent) eventPhase {
		switch event.GetType() {
		case hangarv1.NodeEventType_NODE_EVENT_TYPE_ADDED:
			return phaseAdded
		case hangarv1.NodeEventType_NODE_EVENT_TYPE_SNAPSHOT_END:
			return phaseSnapshotEnd
		}
		return phaseOther
	}
	return &NodeWatch{loop: newWatchLoop(ctx, c.order(), options.StartRevision, options.BookmarkInterval, options.OnReconnect, open, phase)}
}

// Revision is the revision the watch has reached: a stream opened now resumes after it.
func (w *NodeWatch) Revision() uint64 { return w.loop.revision }

// Controller is the URL of the controller the watch's stream is (or will next be) open on.
func (w *NodeWatch) Controller() string { return w.loop.targets[w.loop.current].url }

// Close stops the watch; Next returns context.Canceled afterwards.
func (w *NodeWatch) Close() { w.loop.cancel() }

// Next blocks until the next event, and returns an error only when the watch cannot go on: its
// context ended, or the controller refused it for a reason a retry cannot fix (an *Error).
func (w *NodeWatch) Next() (NodeWatchEvent, error) {
	event, newSnapshot, err := w.loop.next()
	return NodeWatchEvent{NodeEvent: event, NewSnapshot: newSnapshot}, err
}

// eventPhase is what the watch loop needs to know of an event to move its resume point; nodes
// and backends number their event types alike, but each enum is read through its own names.
type eventPhase int

const (
	phaseOther eventPhase = iota
	phaseAdded
	phaseSnapshotEnd
)

// watchFrom is where a stream starts: after revision, or (initial) with a snapshot.
type watchFrom struct {
	revision uint64
	initial  bool
	bookmark *durationpb.Duration
}

// revisioned is what every watch event has: the global revision it was committed at.
type revisioned interface {
	GetRevision() uint64
}

// watchLoop is the one resume loop of NodeWatch and BackendsWatch: the two RPCs share their
// contract (docs/design/nodes-and-watch.md), so only opening a stream and naming an event's
// phase differ.
type watchLoop[E revisioned] struct {
	ctx    context.Context
	cancel context.CancelFunc
	// targets are the client's controllers in its order of preference when the watch began;
	// current is the one streams are opened on, moved to the next when one goes away.
	targets     []*controller
	current     int
	open        func(context.Context, *controller, watchFrom) (func() (E, error), error)
	phase       func(E) eventPhase
	bookmark    time.Duration
	onReconnect func(cause error, delay time.Duration)
	recv        func() (E, error) // the open stream; nil between streams
	revision    uint64            // resume point; 0 until the first SNAPSHOT_END (or the start revision)
	// inSnapshot: between a snapshot's first ADDED and its SNAPSHOT_END, whose ADDED events carry
	// each item's own revision rather than a position of the stream to resume from. The resume
	// point stays 0 meanwhile, so a stream broken inside a snapshot is followed by a new one.
	inSnapshot  bool
	newSnapshot bool
	failures    int
}

func newWatchLoop[E revisioned](ctx context.Context, targets []*controller, start uint64, bookmark time.Duration,
	onReconnect func(error, time.Duration), open func(context.Context, *controller, watchFrom) (func() (E, error), error),
	phase func(E) eventPhase) *watchLoop[E] {
	ctx, cancel := context.WithCancel(ctx)
	return &watchLoop[E]{ctx: ctx, cancel: cancel, targets: targets, open: open, phase: phase, bookmark: bookmark,
		onReconnect: onReconnect, revision: start}
}

// next blocks until the next event (and whether it begins a snapshot).
func (w *watchLoop[E]) next() (E, bool, error) {
	var none E
	for {
		if err := w.ctx.Err(); err != nil {
			return none, false, err
		}
		var err error
		if w.recv == nil {
			err = w.openStream()
		}
		var event E
		if err == nil {
			event, err = w.recv()
		}
		if err == nil {
			w.failures = 0
			newSnapshot := w.deliver(event)
			return event, newSnapshot, nil
		}
		w.recv = nil
		if w.ctx.Err() != nil {
			return none, false, w.ctx.Err()
		}
		if err := w.recover(err); err != nil {
			return none, false, err
		}
	}
}

// openStream opens a stream from the revision reached, or with a snapshot when there is none yet.
func (w *watchLoop[E]) openStream() error {
	from := watchFrom{revision: w.revision, initial: w.revision == 0}
	if from.initial {
		w.newSnapshot = true
	}
	if w.bookmark > 0 {
		from.bookmark = durationpb.New(w.bookmark)
	}
	w.inSnapshot = from.initial
	recv, err := w.open(w.ctx, w.targets[w.current], from)
	w.recv = recv
	return err
}

func (w *watchLoop[E]) deliver(event E) (newSnapshot bool) {
	newSnapshot, w.newSnapshot = w.newSnapshot, false
	switch w.phase(event) {
	case phaseSnapshotEnd:
		w.inSnapshot = false
		w.revision = event.GetRevision()
	case phaseAdded:
		if !w.inSnapshot {
			w.revision = event.GetRevision()
		}
	default:
		w.revision = event.GetRevision()
	}
	return newSnapshot
}

// recover decides what a broken stream means: nil to go on (after a wait), or the error that
// ends the watch. A controller that ended the stream or went away (io.EOF, UNAVAILABLE,
// ABORTED) is left for the next controller of the client, if it has several; one that cut the
// watch off (WATCH_TOO_SLOW, RATE_LIMITED) or compacted its revision is kept.
func (w *watchLoop[E]) recover(cause error) error {
	hangarErr := asError(cause)
	var delay time.Duration
	switch {
	case errors.Is(cause, io.EOF):
		// The controller ended the stream (shutting down): another one will answer soon.
		delay = w.backoff()
		w.rotate()
	case Code(hangarErr) == codes.OutOfRange && Reason(hangarErr) == "REVISION_COMPACTED":
		w.revision = 0 // start over with a snapshot, at once
	case Code(hangarErr) == codes.Unavailable || Code(hangarErr) == codes.Aborted:
		delay = w.backoff()
		w.rotate()
	case Code(hangarErr) == codes.ResourceExhausted && (Reason(hangarErr) == "WATCH_TOO_SLOW" || Reason(hangarErr) == "RATE_LIMITED"):
		delay = w.backoff()
		var e *Error
		if errors.As(hangarErr, &e) && e.RetryAfter > delay {
			delay = e.RetryAfter
		}
	default:
		return hangarErr
	}
	if w.onReconnect != nil {
		w.onReconnect(hangarErr, delay)
	}
	if delay > 0 {
		timer := time.NewTimer(delay)
		defer timer.Stop()
		select {
		case <-w.ctx.Done():
			return w.ctx.Err()
		case <-timer.C:
		}
	}
	return nil
}

// rotate moves the next stream to the next controller (round the client's list).
func (w *watchLoop[E]) rotate() { w.current = (w.current + 1) % len(w.targets) }

// backoff is 100 ms doubling to 5 s, each ±20 %, counted from the last event received.
func (w *watchLoop[E]) backoff() time.Duration {
	delay := 100 * time.Millisecond << uint(minInt(w.failures, 6))
	if delay > 5*time.Second {
		delay = 5 * time.Second
	}
	w.failures++
	return time.Duration(float64(delay) * (0.8 + 0.4*rand.Float64()))
}

func minInt(a, b int) int {
	if a < b {
		return a
	}
	return b
}

// Code is the gRPC code of err: its *Error's, its status's, codes.OK for nil, codes.Unknown
// otherwise.
func Code(err error) codes.Code {
	if err == nil {
		return codes.OK
	}
	var hangarErr *Error
	if errors.As(err, &hangarErr) {
		return hangarErr.Code
	}
	return codes.Unknown
}
