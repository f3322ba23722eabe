package hangar

import (
	"context"
	"errors"
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

// deadURL is an http:// URL on which nothing listens: a port bound, then freed.
func deadURL(t *testing.T) string {
	t.Helper()
	listener, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	url := "http://" + listener.Addr().String()
	listener.Close()
	return url
}

// hungURL is an http:// URL of a plain TCP listener that accepts connections and never says a
// word: a controller that hangs.
func hungURL(t *testing.T) string {
	t.Helper()
	listener, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var held []net.Conn
	go func() {
		for {
			conn, err := listener.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			held = append(held, conn)
			mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		listener.Close()
		mu.Lock()
		defer mu.Unlock()
		for _, conn := range held {
			conn.Close()
		}
	})
	return "http://" + listener.Addr().String()
}

func dialAll(t *testing.T, urls ...string) *Client {
	t.Helper()
	return dial(t, strings.Join(urls, ","))
}

// Retries whose backoff is a minute: a test that finishes in time proves that a call went to
// the next controller without waiting it.
var minuteBackoff = RetryPolicy{MaxAttempts: 2, InitialBackoff: time.Minute, MaxBackoff: time.Minute}

func TestACooldownDoublesWithEachFailureInARowUpTo15SecondsAndAnAnswerEndsIt(t *testing.T) {
	var h health
	now := time.Now()
	if h.isCooling(now) {
		t.Fatal("a new controller is cooling down")
	}
	var cooldowns []time.Duration
	for i := 0; i < 8; i++ {
		cooldowns = append(cooldowns, h.failed(now))
	}
	if fmt.Sprint(cooldowns) != "[500ms 1s 2s 4s 8s 15s 15s 15s]" {
		t.Fatalf("cooldowns %v", cooldowns)
	}
	if !h.isCooling(now.Add(14*time.Second)) || h.isCooling(now.Add(15*time.Second)) {
		t.Fatal("the last cooldown is not 15 s")
	}
	if !h.answered() || h.isCooling(now) || h.answered() {
		t.Fatal("an answer does not end the cooldown")
	}
	if got := h.failed(now); got != firstCooldown {
		t.Fatalf("after an answer, a failure cools down for %v; want %v again", got, firstCooldown)
	}
}

func TestControllersCoolingDownAreTriedLastAndNeverDropped(t *testing.T) {
	healths := []*health{{}, {}, {}}
	now := time.Now()
	order := func() string { return fmt.Sprint(tryOrder(healths, now)) }
	if order() != "[0 1 2]" {
		t.Fatalf("order %s", order())
	}
	healths[1].failed(now)
	if order() != "[0 2 1]" {
		t.Fatalf("with 1 cooling: %s", order())
	}
	healths[0].failed(now)
	if order() != "[2 0 1]" {
		t.Fatalf("with 0 and 1 cooling: %s", order())
	}
	healths[2].failed(now)
	if order() != "[0 1 2]" {
		t.Fatalf("all cooling: %s; want all, in the order given", order())
	}
	healths[1].failed(now) // 1 s this time
	if got := fmt.Sprint(tryOrder(healths, now.Add(700*time.Millisecond))); got != "[0 2 1]" {
		t.Fatalf("once 0 and 2 have cooled down but 1 has not: %s", got)
	}
}

// fakeCalls is a Client of two controllers (nothing listens on either: the calls are fakes)
// and a call that answers with the next result of its script, recording where it went.
func fakeCalls(t *testing.T, script ...error) (*Client, func(context.Context, *controller) error, *[]string) {
	client := dialAll(t, deadURL(t), deadURL(t))
	client.Retry = minuteBackoff
	var went []string
	call := func(_ context.Context, c *controller) error {
		went = append(went, c.url)
		if len(script) == 0 {
			return nil
		}
		err := script[0]
		script = script[1:]
		return err
	}
	return client, call, &went
}

func TestAnIdempotentCallGoesToTheNextControllerAtOnceAndTheFailedOneCoolsDown(t *testing.T) {
	client, call, went := fakeCalls(t, status.Error(codes.Unavailable, "connection refused"))
	a, b := client.Addresses()[0], client.Addresses()[1]
	if client.Address() != a {
		t.Fatalf("first %s; want %s", client.Address(), a)
	}
	if err := client.call(testContext(t), true, call); err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(*went) != fmt.Sprint([]string{a, b}) || client.Address() != b {
		t.Fatalf("went to %v, next first %s; want %s then %s, and %s next", *went, client.Address(), a, b, b)
	}
	// A broken connection mid-call: the transport's UNKNOWN, without a controller's ErrorInfo.
	client, call, went = fakeCalls(t, status.Error(codes.Unknown, "broken pipe"))
	if err := client.call(testContext(t), true, call); err != nil || len(*went) != 2 {
		t.Fatalf("%v after %v", err, *went)
	}
}

func TestACallWithEffectsIsMadeOnceAndTheNextCallGoesElsewhere(t *testing.T) {
	client, call, went := fakeCalls(t, status.Error(codes.Unavailable, "connection refused"))
	a, b := client.Addresses()[0], client.Addresses()[1]
	if err := client.call(testContext(t), false, call); Code(err) != codes.Unavailable || len(*went) != 1 {
		t.Fatalf("%v after %v; want UNAVAILABLE after one call", err, *went)
	}
	if err := client.call(testContext(t), false, call); err != nil || fmt.Sprint(*went) != fmt.Sprint([]string{a, b}) {
		t.Fatalf("%v after %v; want the second call on %s", err, *went, b)
	}
}

func TestAnAnswerIsNotFailedOverEvenWhenItIsAnError(t *testing.T) {
	for _, answer := range []error{
		status.Error(codes.NotFound, "no node"),
		withReason(codes.Internal, "STORE_FAILED", 0),
		withReason(codes.Unavailable, "NO_DRONE_AVAILABLE", 0),
		withReason(codes.DeadlineExceeded, "SPAWN_TIMEOUT", 0),
	} {
		client, call, went := fakeCalls(t, answer)
		client.Retry = RetryPolicy{MaxAttempts: 1} // NO_DRONE_AVAILABLE is retried, on the same controller first
		err := client.call(testContext(t), true, call)
		if Code(err) != status.Code(answer) || len(*went) != 1 {
			t.Errorf("%v: got %v after %v; want it at once", answer, err, *went)
		}
		if (*went)[0] != client.Addresses()[0] || client.Address() != client.Addresses()[0] {
			t.Errorf("%v: the controller that answered is no longer first", answer)
		}
	}
}

func TestTheCallersOwnDeadlineNeitherFailsOverNorCoolsAControllerDown(t *testing.T) {
	client, _, _ := fakeCalls(t)
	client.CallTimeout = time.Minute
	calls := 0
	hang := func(ctx context.Context, _ *controller) error {
		calls++
		<-ctx.Done()
		return status.Error(codes.DeadlineExceeded, ctx.Err().Error())
	}
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if err := client.call(ctx, true, hang); Code(err) != codes.DeadlineExceeded || calls != 1 {
		t.Fatalf("%v after %d calls; want DEADLINE_EXCEEDED after one", err, calls)
	}
	if client.Address() != client.Addresses()[0] {
		t.Fatal("the caller's deadline cooled the controller down")
	}
	// The client's own CallTimeout on that controller does fail over.
	client.CallTimeout = 100 * time.Millisecond
	calls = 0
	if err := client.call(testContext(t), true, hang); Code(err) != codes.DeadlineExceeded || calls != 2 {
		t.Fatalf("%v after %d calls; want both controllers tried", err, calls)
	}
}

func TestDialTakesSeveralURLsAndNamesABadOne(t *testing.T) {
	client := dial(t, " http://127.0.0.1:1 ,http://127.0.0.1:2,")
	if fmt.Sprint(client.Addresses()) != "[http://127.0.0.1:1 http://127.0.0.1:2]" {
		t.Fatalf("addresses %v", client.Addresses())
	}
	for target, want := range map[string]string{
		"http://127.0.0.1:1,ftp://127.0.0.1:2":   `"ftp://127.0.0.1:2" is not a controller URL`,
		",":                                      `"," is not a controller URL`,
		"http://127.0.0.1:1,https://127.0.0.1:2": "", // each URL its own scheme
	} {
		_, err := Dial(context.Background(), target, Options{})
		if want == "" && err != nil || want != "" && (err == nil || !strings.Contains(err.Error(), want)) {
			t.Errorf("Dial(%q) = %v; want %q", target, err, want)
		}
	}
	_, err := Dial(context.Background(), "https://127.0.0.1:1,http://127.0.0.1:2", Options{TLSServerName: "x"})
	if err == nil || !strings.Contains(err.Error(), "http://127.0.0.1:2 is a plain http:// URL") {
		t.Errorf("TLS options with an http:// URL among several: %v", err)
	}
}

func TestADeadControllerFirstListGetAndKeyedConnectGoThroughTheLiveOne(t *testing.T) {
	dead := deadURL(t)
	client := dialAll(t, dead, dev.ControllerURL)
	client.Retry = minuteBackoff
	ctx := testContext(t)
	nodes, _, err := client.ListNodes(ctx, nil)
	if err != nil || len(nodes) == 0 {
		t.Fatalf("ListNodes: %v, %d nodes", err, len(nodes))
	}
	if client.Address() != dev.ControllerURL {
		t.Fatalf("next first: %s; want the live one while the dead one cools down", client.Address())
	}
	if _, err := client.GetNode(ctx, nodes[0].GetId()); err != nil {
		t.Fatal(err)
	}
	// Each call from a fresh client, so that each goes to the dead controller first.
	client = dialAll(t, dead, dev.ControllerURL)
	client.Retry = minuteBackoff
	if _, err := client.GetNode(ctx, nodes[0].GetId()); err != nil {
		t.Fatal(err)
	}
	client = dialAll(t, dead, dev.ControllerURL)
	client.Retry = minuteBackoff
	backend, err := client.Connect(ctx, "tests/failover-keyed", ConnectOptions{Image: "hangar-demo"})
	if err != nil {
		t.Fatal(err)
	}
	client = dialAll(t, dead, dev.ControllerURL)
	client.Retry = minuteBackoff
	if _, err := client.Terminate(ctx, backend.ID, true); err != nil {
		t.Fatal(err)
	}
	if client.Address() != dev.ControllerURL {
		t.Fatalf("next first: %s", client.Address())
	}
}

func TestAKeylessConnectToADeadFirstControllerFailsAndTheNextCallGoesToTheLiveOne(t *testing.T) {
	client := dialAll(t, deadURL(t), dev.ControllerURL)
	ctx := testContext(t)
	_, err := client.Connect(ctx, "", ConnectOptions{Image: "hangar-demo"})
	if Code(err) != codes.Unavailable {
		t.Fatalf("keyless Connect to a dead controller: %v; want UNAVAILABLE, not repeated elsewhere", err)
	}
	if client.Address() != dev.ControllerURL {
		t.Fatalf("next first: %s; want the live one", client.Address())
	}
	backend, err := client.Connect(ctx, "", ConnectOptions{Image: "hangar-demo"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := client.Terminate(ctx, backend.ID, true); err != nil {
		t.Fatal(err)
	}
}

func TestAHungControllerFirstAnIdempotentCallFailsOverAfterTheCallTimeout(t *testing.T) {
	hung := hungURL(t)
	client := dialAll(t, hung, dev.ControllerURL)
	client.Retry = minuteBackoff
	client.CallTimeout = 300 * time.Millisecond
	started := time.Now()
	nodes, _, err := client.ListNodes(testContext(t), nil)
	if err != nil || len(nodes) == 0 {
		t.Fatalf("ListNodes: %v, %d nodes", err, len(nodes))
	}
	if took := time.Since(started); took < 300*time.Millisecond {
		t.Fatalf("answered in %v: the hung controller was not asked first", took)
	}
	if client.Address() != dev.ControllerURL {
		t.Fatalf("next first: %s; want the live one while the hung one cools down", client.Address())
	}

	// A deadline of the caller's own is no failure of the controller's: no failover, no cooldown.
	client = dialAll(t, hung, dev.ControllerURL)
	client.CallTimeout = time.Minute
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	if _, _, err := client.ListNodes(ctx, nil); Code(err) != codes.DeadlineExceeded && !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("ListNodes past the caller's deadline: %v", err)
	}
	if client.Address() != hung || client.targets[0].health.isCooling(time.Now()) {
		t.Fatalf("next first: %s; the caller's deadline cooled the hung controller down", client.Address())
	}
}

// watchServer serves a scriptedWatch (watch_test.go) on a free port and returns its URL.
func watchServer(t *testing.T, streams ...watchScript) (string, *scriptedWatch) {
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
	return "http://" + listener.Addr().String(), fake
}

func TestAWatchWhoseControllerGoesAwayResumesOnTheNextFromItsRevision(t *testing.T) {
	first, a := watchServer(t, watchScript{[]*hangarv1.NodeEvent{event(added, "a", 3), event(snapshotEnd, "", 7), event(modified, "a", 8)},
		status.Error(codes.Unavailable, "shutting down")})
	second, b := watchServer(t, watchScript{[]*hangarv1.NodeEvent{event(modified, "a", 9)}, nil})
	client := dialAll(t, first, second)
	watch := client.WatchNodes(testContext(t), WatchOptions{})
	defer watch.Close()
	var seen []string
	for len(seen) < 4 {
		e, err := watch.Next()
		if err != nil {
			t.Fatalf("after %v: %v", seen, err)
		}
		seen = append(seen, fmt.Sprintf("%s %d", ShortName(e.GetType()), e.GetRevision()))
	}
	if fmt.Sprint(seen) != "[ADDED 3 SNAPSHOT_END 7 MODIFIED 8 MODIFIED 9]" || watch.Controller() != second {
		t.Fatalf("events %v on %s", seen, watch.Controller())
	}
	if fmt.Sprint(a.requests, b.requests) != "[start=0 initial=true] [start=8 initial=false]" {
		t.Fatalf("requests: first %v, second %v", a.requests, b.requests)
	}
}
