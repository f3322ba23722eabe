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
	client   *Client
	ctx      context.Context
	cancel   context.CancelFunc
	options  WatchOptions
	stream   hangarv1.NodeService_WatchNodesClient
	revision uint64 // resume point; 0 until the first SNAPSHOT_END (or StartRevision)
	// inSnapshot: between a snapshot's first ADDED and its SNAPSHOT_END, whose ADDED events carry
	// each node's own revision rather than a position of the stream to resume from. The resume
	// point stays 0 meanwhile, so a stream broken inside a snapshot is followed by a new one.
	inSnapshot  bool
	newSnapshot bool
	failures    int
}

// WatchNodes starts watching nodes. Read events with Next; Close (or cancel ctx) to stop.
func (c *Client) WatchNodes(ctx context.Context, options WatchOptions) *NodeWatch {
	ctx, cancel := context.WithCancel(ctx)
	return &NodeWatch{client: c, ctx: ctx, cancel: cancel, options: options, revision: options.StartRevision}
}

// Revision is the revision the watch has reached: a stream opened now resumes after it.
func (w *NodeWatch) Revision() uint64 { return w.revision }

// Close stops the watch; Next returns context.Canceled afterwards.
func (w *NodeWatch) Close() { w.cancel() }

// Next blocks until the next event, and returns an error only when the watch cannot go on: its
// context ended, or the controller refused it for a reason a retry cannot fix (an *Error).
func (w *NodeWatch) Next() (NodeWatchEvent, error) {
	for {
		if err := w.ctx.Err(); err != nil {
			return NodeWatchEvent{}, err
		}
		var err error
		if w.stream == nil {
			err = w.open()
		}
		var event *hangarv1.WatchNodesResponse
		if err == nil {
			event, err = w.stream.Recv()
		}
		if err == nil {
			w.failures = 0
			return w.deliver(event.GetEvent()), nil
		}
		w.stream = nil
		if w.ctx.Err() != nil {
			return NodeWatchEvent{}, w.ctx.Err()
		}
		if err := w.recover(err); err != nil {
			return NodeWatchEvent{}, err
		}
	}
}

// open opens a stream from the revision reached, or with a snapshot when there is none yet.
func (w *NodeWatch) open() error {
	request := &hangarv1.WatchNodesRequest{Filter: w.options.Filter}
	if w.revision > 0 {
		request.StartRevision = w.revision
	} else {
		request.SendInitial = true
		w.newSnapshot = true
	}
	if w.options.BookmarkInterval > 0 {
		request.BookmarkInterval = durationpb.New(w.options.BookmarkInterval)
	}
	w.inSnapshot = request.SendInitial
	stream, err := w.client.nodes.WatchNodes(w.ctx, request)
	w.stream = stream
	return err
}

func (w *NodeWatch) deliver(event *hangarv1.NodeEvent) NodeWatchEvent {
	delivered := NodeWatchEvent{NodeEvent: event, NewSnapshot: w.newSnapshot}
	w.newSnapshot = false
	switch event.GetType() {
	case hangarv1.NodeEventType_NODE_EVENT_TYPE_SNAPSHOT_END:
		w.inSnapshot = false
		w.revision = event.GetRevision()
	case hangarv1.NodeEventType_NODE_EVENT_TYPE_ADDED:
		if !w.inSnapshot {
			w.revision = event.GetRevision()
		}
	default:
		w.revision = event.GetRevision()
	}
	return delivered
}

// recover decides what a broken stream means: nil to go on (after a wait), or the error that
// ends the watch.
func (w *NodeWatch) recover(cause error) error {
	hangarErr := asError(cause)
	var delay time.Duration
	switch {
	case errors.Is(cause, io.EOF):
		// The controller ended the stream (shutting down): another one will answer soon.
		delay = w.backoff()
	case Code(hangarErr) == codes.OutOfRange && Reason(hangarErr) == "REVISION_COMPACTED":
		w.revision = 0 // start over with a snapshot, at once
	case Code(hangarErr) == codes.Unavailable || Code(hangarErr) == codes.Aborted:
		delay = w.backoff()
	case Code(hangarErr) == codes.ResourceExhausted && (Reason(hangarErr) == "WATCH_TOO_SLOW" || Reason(hangarErr) == "RATE_LIMITED"):
		delay = w.backoff()
		var e *Error
		if errors.As(hangarErr, &e) && e.RetryAfter > delay {
			delay = e.RetryAfter
		}
	default:
		return hangarErr
	}
	if w.options.OnReconnect != nil {
		w.options.OnReconnect(hangarErr, delay)
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

// backoff is 100 ms doubling to 5 s, each ±20 %, counted from the last event received.
func (w *NodeWatch) backoff() time.Duration {
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
