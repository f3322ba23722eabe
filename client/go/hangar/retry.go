package hangar

import (
	"context"
	"errors"
	"math/rand"
	"time"

	"google.golang.org/grpc/codes"
)

// RetryPolicy says how often and how patiently the Client repeats an idempotent call (the List
// and Get helpers, UndrainNode, Terminate, a keyed Connect) that failed with UNAVAILABLE or was
// refused by the controller's rate limit (RATE_LIMITED, after the wait it names). With several
// controllers, one attempt tries each in turn (see Client), and the backoff is waited only once
// all have failed it. Calls with effects (DrainNode, a keyless Connect) are never repeated. As
// the Rust SDK's RetryPolicy.
type RetryPolicy struct {
	// MaxAttempts counts every attempt, the first included; 1 disables retries. 0: 4.
	MaxAttempts int
	// InitialBackoff is the wait before the second attempt, doubled after each further
	// failure. 0: 100 ms.
	InitialBackoff time.Duration
	// MaxBackoff bounds one wait. 0: 2 s.
	MaxBackoff time.Duration
}

// rateLimitWaitMax is the longest wait one RATE_LIMITED answer can impose on a retry.
const rateLimitWaitMax = 10 * time.Second

func (p RetryPolicy) withDefaults() RetryPolicy {
	if p.MaxAttempts <= 0 {
		p.MaxAttempts = 4
	}
	if p.InitialBackoff <= 0 {
		p.InitialBackoff = 100 * time.Millisecond
	}
	if p.MaxBackoff <= 0 {
		p.MaxBackoff = 2 * time.Second
	}
	return p
}

// backoff is the wait after failed attempt n (1-based): exponential, capped, with "equal
// jitter" (between half and all of it) so that clients cut off together do not return together.
func (p RetryPolicy) backoff(attempt int) time.Duration {
	wait := p.InitialBackoff
	for i := 1; i < attempt && wait < p.MaxBackoff; i++ {
		wait *= 2
	}
	if wait > p.MaxBackoff {
		wait = p.MaxBackoff
	}
	half := wait / 2
	return half + time.Duration(rand.Int63n(int64(half)+1))
}

// retryable: UNAVAILABLE, or RESOURCE_EXHAUSTED with reason RATE_LIMITED (other exhaustions,
// such as a watch limit, do not pass by waiting).
func retryable(err error) bool {
	return Code(err) == codes.Unavailable || (Code(err) == codes.ResourceExhausted && Reason(err) == "RATE_LIMITED")
}

// retry runs call until it succeeds, fails in a way a retry cannot fix, the attempts run out or
// ctx ends; the error it returns is an *Error where the call's was a gRPC status.
func (c *Client) retry(ctx context.Context, call func() error) error {
	policy := c.Retry.withDefaults()
	for attempt := 1; ; attempt++ {
		err := asError(call())
		if err == nil || !retryable(err) || attempt >= policy.MaxAttempts {
			return err
		}
		wait := policy.backoff(attempt)
		var hangarErr *Error
		if errors.As(err, &hangarErr) && hangarErr.RetryAfter > wait {
			// A rate limit says when a token will be there; waiting less only spends an attempt.
			wait = hangarErr.RetryAfter
			if wait > rateLimitWaitMax {
				wait = rateLimitWaitMax
			}
		}
		timer := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			timer.Stop()
			return err
		case <-timer.C:
		}
	}
}
