// Command lifecycle shows the Go SDK end to end against a running controller (for example
// `hangar-server dev`): it lists the nodes, connects a backend by key, connects again with the
// same key and gets the same backend, fetches the backend through its URL, terminates it and
// follows it to TERMINATED.
//
//	go run ./examples/lifecycle -controller http://127.0.0.1:7070 -key docs/doc-1 -image hangar-demo
//
// Credentials come from the environment as for every Hangar client (HANGAR_TOKEN,
// HANGAR_TLS_CA, …; docs/security.md).
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"time"

	hangarv1 "github.com/hangar-dev/hangar/client/go/gen/hangar/v1"
	"github.com/hangar-dev/hangar/client/go/hangar"
)

// Result is what one run saw, for the test that runs it.
type Result struct {
	Nodes []string // "NAME KIND STATE" per node
	// FirstID and SecondID are the backends the two connects with one key returned.
	FirstID, SecondID string
	Spawned           bool
	URL               string
	// HTTPStatus is the proxy's answer to a GET of URL.
	HTTPStatus int
	// States are the states the watch saw after Terminate, ending with TERMINATED.
	States []string
	// Final is GetBackend's state after the watch ended.
	Final string
}

func main() {
	controller := flag.String("controller", hangar.ControllerFromEnv(), "controller URL (HANGAR_CONTROLLER)")
	key := flag.String("key", "examples/lifecycle", "backend key: NAME, NS/NAME or NS/NAME@TAG")
	image := flag.String("image", "hangar-demo", "what the backend runs (hangar-demo under hangar-server dev)")
	flag.Parse()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if _, err := run(ctx, *controller, hangar.OptionsFromEnv(), *key, *image, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "error:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, controller string, options hangar.Options, key, image string, out io.Writer) (*Result, error) {
	client, err := hangar.Dial(ctx, controller, options)
	if err != nil {
		return nil, err
	}
	defer client.Close()
	result := &Result{}

	nodes, revision, err := client.ListNodes(ctx, nil)
	if err != nil {
		return nil, fmt.Errorf("list nodes: %w", err)
	}
	fmt.Fprintf(out, "%d nodes at revision %d\n", len(nodes), revision)
	for _, node := range nodes {
		line := fmt.Sprintf("%s %s %s", node.GetName(), hangar.ShortName(node.GetKind()), hangar.ShortName(node.GetState()))
		result.Nodes = append(result.Nodes, line)
		fmt.Fprintln(out, " ", line)
	}

	// Get-or-create by key, and wait until it answers.
	first, err := client.Connect(ctx, key, hangar.ConnectOptions{Image: image, Wait: true})
	if err != nil {
		return nil, fmt.Errorf("connect %s: %w", key, err)
	}
	result.FirstID, result.Spawned, result.URL = first.ID, first.Spawned, first.URL
	fmt.Fprintf(out, "connect %s: backend %s (spawned %v), %s\n  url %s\n", key, first.ID, first.Spawned, hangar.ShortName(first.State()), first.URL)

	// The same key reaches the same backend; without Image nothing new would be started.
	second, err := client.Connect(ctx, key, hangar.ConnectOptions{})
	if err != nil {
		return nil, fmt.Errorf("connect %s again: %w", key, err)
	}
	result.SecondID = second.ID
	fmt.Fprintf(out, "connect %s again: backend %s (spawned %v)\n", key, second.ID, second.Spawned)
	if second.ID != first.ID {
		return result, fmt.Errorf("the key %s gave backend %s, then %s", key, first.ID, second.ID)
	}

	// Through the proxy to the backend.
	request, err := http.NewRequestWithContext(ctx, http.MethodGet, first.URL, nil)
	if err != nil {
		return result, err
	}
	response, err := http.DefaultClient.Do(request)
	if err != nil {
		return result, fmt.Errorf("GET %s: %w", first.URL, err)
	}
	_, _ = io.Copy(io.Discard, response.Body)
	response.Body.Close()
	result.HTTPStatus = response.StatusCode
	fmt.Fprintf(out, "GET url: %s\n", response.Status)

	// Terminate, then follow it to the end.
	watch := client.WatchBackend(ctx, first.ID)
	defer watch.Close()
	if _, err := client.Terminate(ctx, first.ID, false); err != nil {
		return result, fmt.Errorf("terminate %s: %w", first.ID, err)
	}
	fmt.Fprintf(out, "terminate %s\n", first.ID)
	for {
		status, err := watch.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return result, fmt.Errorf("watch %s: %w", first.ID, err)
		}
		if status.GetState() < hangarv1.BackendState_BACKEND_STATE_TERMINATING {
			continue // its history up to READY
		}
		result.States = append(result.States, hangar.ShortName(status.GetState()))
		line := "  " + hangar.ShortName(status.GetState())
		if reason := status.GetTerminationReason(); reason != hangarv1.TerminationReason_TERMINATION_REASON_UNSPECIFIED {
			line += " (" + hangar.ShortName(reason) + ")"
		}
		fmt.Fprintln(out, line)
	}
	backend, err := client.GetBackend(ctx, first.ID)
	if err != nil {
		return result, fmt.Errorf("get %s: %w", first.ID, err)
	}
	result.Final = hangar.ShortName(backend.GetStatus().GetState())
	fmt.Fprintf(out, "backend %s is %s\n", first.ID, result.Final)
	return result, nil
}
