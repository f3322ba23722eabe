package hangar

import (
	"context"
	"errors"
	"sync"
	"time"

	hangarv1 "github.com/hangar-dev/hangar/client/go/gen/hangar/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
)

// Choosing among several controllers of one cluster, as the Rust SDK does (client/src/failover.rs):
// a controller that does not answer a call is put in a cooldown, during which it is tried only
// after the others. The cooldown starts at firstCooldown and doubles with each failure in a row,
// up to maxCooldown; any answer ends it. A controller in its cooldown is never skipped outright:
// when every controller is cooling down they are all still tried, so a cluster that comes back
// is found at once.
const (
	firstCooldown = 500 * time.Millisecond
	maxCooldown   = 15 * time.Second
)

// DefaultCallTimeout is the deadline of each unary call to one controller when
// Client.CallTimeout is 0, as the Rust SDK's request_timeout.
const DefaultCallTimeout = 30 * time.Second

// health is how one controller has been answering; shared by every call of a Client.
type health struct {
	mu           sync.Mutex
	failures     int       // failed calls in a row
	coolingUntil time.Time // until then the controller is tried after the others
}

func (h *health) isCooling(now time.Time) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return now.Before(h.coolingUntil)
}

// answered ends the cooldown; it returns whether the controller had been failing.
func (h *health) answered() bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	wasFailing := h.failures > 0
	h.failures, h.coolingUntil = 0, time.Time{}
	return wasFailing
}

// failed starts (or lengthens) the cooldown and returns it.
func (h *health) failed(now time.Time) time.Duration {
	h.mu.Lock()
	defer h.mu.Unlock()
	cooldown := firstCooldown << uint(minInt(h.failures, 8))
	if cooldown > maxCooldown {
		cooldown = maxCooldown
	}
	h.failures++
	h.coolingUntil = now.Add(cooldown)
	return cooldown
}

// tryOrder is the order in which to try controllers: in the order given, those not cooling
// down first, then those cooling down (in the same order).
func tryOrder(healths []*health, now time.Time) []int {
	order := make([]int, 0, len(healths))
	var late []int
	for i, h := range healths {
		if h.isCooling(now) {
			late = append(late, i)
		} else {
			order = append(order, i)
		}
	}
	return append(order, late...)
}

// controller is one controller of a Client.
type controller struct {
	url      string
	conn     *grpc.ClientConn
	nodes    hangarv1.NodeServiceClient
	backends hangarv1.BackendServiceClient
	health   health
}

// order is the client's controllers in the order to try them now.
func (c *Client) order() []*controller {
	healths := make([]*health, len(c.targets))
	for i, t := range c.targets {
		healths[i] = &t.health
	}
	ordered := make([]*controller, len(c.targets))
	for i, index := range tryOrder(healths, time.Now()) {
		ordered[i] = c.targets[index]
	}
	return ordered
}

// preferred is the controller the next call goes to first.
func (c *Client) preferred() *controller { return c.order()[0] }

// call runs a unary call with failover. An idempotent call goes on to the next controller at
// once when one does not answer, and is retried per c.Retry once every controller has failed it
// (or after RATE_LIMITED); any other call is made once, to the preferred controller. The
// error is an *Error where the call's was a gRPC status.
func (c *Client) call(ctx context.Context, idempotent bool, call func(context.Context, *controller) error) error {
	if !idempotent {
		return c.callEach(ctx, false, call)
	}
	return c.retry(ctx, func() error { return c.callEach(ctx, true, call) })
}

// callEach is one round: the controllers in order of preference until one answers (only the
// first unless failOver). Each attempt has the client's own deadline, CallTimeout.
func (c *Client) callEach(ctx context.Context, failOver bool, call func(context.Context, *controller) error) error {
	order := c.order()
	var err error
	for i, t := range order {
		err = c.attempt(ctx, t, call)
		if !notAnswered(ctx, err) {
			t.health.answered()
			return err
		}
		t.health.failed(time.Now())
		if !failOver || i == len(order)-1 {
			return err
		}
	}
	return err
}

func (c *Client) attempt(ctx context.Context, t *controller, call func(context.Context, *controller) error) error {
	timeout := c.CallTimeout
	if timeout == 0 {
		timeout = DefaultCallTimeout
	}
	callCtx := ctx
	if timeout > 0 {
		var cancel context.CancelFunc
		callCtx, cancel = context.WithTimeout(ctx, timeout)
		defer cancel()
	}
	return asError(call(callCtx, t))
}

// notAnswered says that the controller did not answer the call, so that another may: it is
// unreachable or going away (UNAVAILABLE, but for NO_DRONE_AVAILABLE, which is the scheduler's
// answer), or the connection broke or hung while the call was in flight, which the transport
// reports as UNKNOWN, CANCELLED, INTERNAL or DEADLINE_EXCEEDED (the client's own CallTimeout)
// without the ErrorInfo that every answer of a controller carries. A call that ends because
// the caller's ctx did is never the controller's failure.
func notAnswered(ctx context.Context, err error) bool {
	if err == nil || ctx.Err() != nil {
		return false
	}
	var hangarErr *Error
	if !errors.As(err, &hangarErr) {
		// Not a gRPC status: only the client's own per-call deadline.
		return errors.Is(err, context.DeadlineExceeded)
	}
	switch hangarErr.Code {
	case codes.Unavailable:
		return hangarErr.Reason != "NO_DRONE_AVAILABLE"
	case codes.Unknown, codes.Canceled, codes.Internal, codes.DeadlineExceeded:
		return hangarErr.Reason == "" && hangarErr.Domain == ""
	}
	return false
}
