package hangar

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	hangarv1 "github.com/hangar-dev/hangar/client/go/gen/hangar/v1"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/types/known/durationpb"
)

// DefaultNamespace is the namespace of a key written without one, as in the `hangar` CLI.
const DefaultNamespace = "default"

// ParseKey reads a backend key as the CLI takes it: NAME, NS/NAME or NS/NAME@TAG
// ("docs/doc-1@v2"). Without a namespace it is DefaultNamespace; without a tag, empty.
func ParseKey(text string) (*hangarv1.BackendKey, error) {
	rest, tag := text, ""
	if at := strings.Index(text, "@"); at >= 0 {
		rest, tag = text[:at], text[at+1:]
		if tag == "" || strings.Contains(tag, "@") {
			return nil, fmt.Errorf("%q has an empty or second @TAG; expected NAME, NS/NAME or NS/NAME@TAG", text)
		}
	}
	namespace, name := DefaultNamespace, rest
	if slash := strings.Index(rest, "/"); slash >= 0 {
		namespace, name = rest[:slash], rest[slash+1:]
		if namespace == "" {
			return nil, fmt.Errorf("%q is not a key; expected NAME, NS/NAME or NS/NAME@TAG (e.g. docs/doc-1@v2)", text)
		}
	}
	if name == "" || strings.Contains(name, "/") {
		return nil, fmt.Errorf("%q is not a key; expected NAME, NS/NAME or NS/NAME@TAG (e.g. docs/doc-1@v2)", text)
	}
	if strings.ContainsAny(text, " \t\r\n") {
		return nil, fmt.Errorf("%q contains whitespace; keys are single words like docs/doc-1", text)
	}
	return &hangarv1.BackendKey{Namespace: namespace, Name: name, Tag: tag}, nil
}

// ConnectOptions describe the backend to start when a key has none, and who connects.
type ConnectOptions struct {
	// Image is what to run: a container image (docker runtime), the absolute path of a program
	// (process runtime), or "hangar-demo" under `hangar-server dev`. Empty: only a live backend
	// of the key is returned (NOT_FOUND, BACKEND_NOT_FOUND when there is none).
	Image string
	// Command replaces the image's ENTRYPOINT, Args its CMD (as in Kubernetes).
	Command []string
	Args    []string
	// Env is extra environment; Hangar sets PORT and HANGAR_* itself.
	Env map[string]string
	// Port the backend listens on inside its container (8080 when 0).
	Port          uint32
	Cluster, Pool string
	Labels        map[string]string
	LifetimeLimit time.Duration
	MaxIdle       time.Duration
	// SpawnConfig, when set, is sent as is, for fields the ones above leave out (resources,
	// pull policy, static token); the fields above must then be empty.
	SpawnConfig *hangarv1.SpawnConfig
	// User and Claims are the identity the proxy passes to the backend as x-verified-user and
	// x-verified-<claim> headers.
	User   string
	Claims map[string]string
	// Wait follows the backend until it is READY before Connect returns; Connect fails with a
	// *TerminatedError when it ends first.
	Wait bool
}

func (o ConnectOptions) spawnConfig() (*hangarv1.SpawnConfig, error) {
	simple := o.Image != "" || len(o.Command) > 0 || len(o.Args) > 0 || len(o.Env) > 0 || o.Port != 0 ||
		o.Cluster != "" || o.Pool != "" || len(o.Labels) > 0 || o.LifetimeLimit != 0 || o.MaxIdle != 0
	if o.SpawnConfig != nil {
		if simple {
			return nil, errors.New("ConnectOptions: give SpawnConfig or Image and the fields next to it, not both")
		}
		return o.SpawnConfig, nil
	}
	if !simple {
		return nil, nil
	}
	if o.Image == "" {
		return nil, errors.New("ConnectOptions: the fields describe a backend to start, which needs Image")
	}
	config := &hangarv1.SpawnConfig{
		Executable: &hangarv1.Executable{Image: o.Image, Command: o.Command, Args: o.Args, Env: o.Env, ContainerPort: o.Port},
		Cluster:    o.Cluster,
		Pool:       o.Pool,
		Labels:     o.Labels,
	}
	if o.LifetimeLimit > 0 {
		config.LifetimeLimit = durationpb.New(o.LifetimeLimit)
	}
	if o.MaxIdle > 0 {
		config.MaxIdle = durationpb.New(o.MaxIdle)
	}
	return config, nil
}

// Backend is what Connect returns: the backend, and how to reach it through a proxy.
type Backend struct {
	ID string
	// URL reaches the backend through a proxy; it embeds Token.
	URL            string
	Token          string
	TokenExpiresAt time.Time
	// Spawned is true when this Connect started the backend, false when it found a live one.
	Spawned     bool
	StaticToken string
	// Status is the latest status known: Connect's, or READY's after Wait.
	Status *hangarv1.BackendStatus
	// Backend is the full record as Connect returned it.
	Backend *hangarv1.Backend
}

// State is the backend's state as of Status.
func (b *Backend) State() hangarv1.BackendState { return b.Status.GetState() }

// TerminatedError says a backend ended while it was waited for.
type TerminatedError struct {
	ID     string
	Status *hangarv1.BackendStatus
}

func (e *TerminatedError) Error() string {
	text := fmt.Sprintf("backend %s ended (%s", e.ID, ShortName(e.Status.GetTerminationReason()))
	if kind := e.Status.GetTerminationKind(); kind != hangarv1.TerminationKind_TERMINATION_KIND_UNSPECIFIED {
		text += ", " + ShortName(kind)
	}
	text += ")"
	if e.Status.GetMessage() != "" {
		text += ": " + e.Status.GetMessage()
	}
	return text
}

// Connect finds the live backend holding key (NAME, NS/NAME or NS/NAME@TAG; see ParseKey), or
// starts one from options.Image when there is none. The same key gives the same backend for
// as long as it lives, across clients and controllers. An empty key starts a fresh backend.
func (c *Client) Connect(ctx context.Context, key string, options ConnectOptions) (*Backend, error) {
	request := &hangarv1.ConnectRequest{User: options.User, Auth: options.Claims}
	if key != "" {
		parsed, err := ParseKey(key)
		if err != nil {
			return nil, err
		}
		request.Key = parsed
	}
	spawn, err := options.spawnConfig()
	if err != nil {
		return nil, err
	}
	if spawn == nil && key == "" {
		return nil, errors.New("Connect without a key starts a fresh backend, which needs Image")
	}
	request.SpawnConfig = spawn
	var response *hangarv1.ConnectResponse
	// A keyed Connect is idempotent (get-or-create): it fails over and is retried. A keyless
	// one starts a backend each time, so it is made once, to one controller.
	err = c.call(ctx, key != "", func(ctx context.Context, t *controller) (err error) {
		response, err = t.backends.Connect(ctx, request)
		return err
	})
	if err != nil {
		return nil, err
	}
	backend := &Backend{
		ID:          response.GetBackendId(),
		URL:         response.GetUrl(),
		Token:       response.GetToken(),
		Spawned:     response.GetSpawned(),
		StaticToken: response.GetStaticToken(),
		Status:      response.GetStatus(),
		Backend:     response.GetBackend(),
	}
	if response.GetTokenExpiresAt() != nil {
		backend.TokenExpiresAt = response.GetTokenExpiresAt().AsTime()
	}
	if options.Wait {
		status, err := c.WaitReady(ctx, backend.ID)
		if err != nil {
			return nil, err
		}
		backend.Status = status
	}
	return backend, nil
}

// WaitReady follows a backend until it is READY and returns that status; a *TerminatedError
// when it ends first. Bound the wait with ctx.
func (c *Client) WaitReady(ctx context.Context, id string) (*hangarv1.BackendStatus, error) {
	watch := c.WatchBackend(ctx, id)
	defer watch.Close()
	for {
		status, err := watch.Next()
		if err != nil {
			return nil, err
		}
		switch status.GetState() {
		case hangarv1.BackendState_BACKEND_STATE_READY:
			return status, nil
		case hangarv1.BackendState_BACKEND_STATE_TERMINATING, hangarv1.BackendState_BACKEND_STATE_HARD_TERMINATING,
			hangarv1.BackendState_BACKEND_STATE_TERMINATED:
			return nil, &TerminatedError{ID: id, Status: status}
		}
	}
}

// GetBackend returns one backend; NOT_FOUND (BACKEND_NOT_FOUND) when no backend has that id.
func (c *Client) GetBackend(ctx context.Context, id string) (*hangarv1.Backend, error) {
	var response *hangarv1.GetBackendResponse
	err := c.call(ctx, true, func(ctx context.Context, t *controller) (err error) {
		response, err = t.backends.GetBackend(ctx, &hangarv1.GetBackendRequest{Id: id})
		return err
	})
	if err != nil {
		return nil, err
	}
	return response.GetBackend(), nil
}

// ListBackends returns every backend that matches filter (nil: all), across all pages, and the
// listing's revision (the first page's; every page carries it): WatchBackends from it delivers
// every change after the listing (docs/design/backends-and-leases.md).
func (c *Client) ListBackends(ctx context.Context, filter *hangarv1.BackendFilter) ([]*hangarv1.Backend, uint64, error) {
	var backends []*hangarv1.Backend
	var revision uint64
	pageToken := ""
	for {
		var page *hangarv1.ListBackendsResponse
		err := c.call(ctx, true, func(ctx context.Context, t *controller) (err error) {
			page, err = t.backends.ListBackends(ctx, &hangarv1.ListBackendsRequest{Filter: filter, PageSize: c.PageSize, PageToken: pageToken})
			return err
		})
		if err != nil {
			return nil, 0, err
		}
		backends = append(backends, page.GetBackends()...)
		revision = page.GetRevision()
		pageToken = page.GetNextPageToken()
		if pageToken == "" {
			return backends, revision, nil
		}
	}
}

// Terminate asks a backend to stop: SIGTERM and a grace period, or with hard, a kill at once.
// It returns at once; WatchBackend follows it to TERMINATED. Terminating a backend twice
// changes nothing more, so it is idempotent: it fails over and is retried, as the Rust SDK's
// terminate_backend.
func (c *Client) Terminate(ctx context.Context, id string, hard bool) (*hangarv1.Backend, error) {
	var response *hangarv1.TerminateBackendResponse
	err := c.call(ctx, true, func(ctx context.Context, t *controller) (err error) {
		response, err = t.backends.TerminateBackend(ctx, &hangarv1.TerminateBackendRequest{Id: id, Hard: hard})
		return err
	})
	if err != nil {
		return nil, err
	}
	return response.GetBackend(), nil
}

// BackendWatch follows one backend's states: first its history, then live changes, each state
// once and in order, until TERMINATED. A broken stream is reopened, on the client's next
// controller if it has several; the history it replays is skipped up to the last state
// delivered (states only move forward).
type BackendWatch struct {
	targets  []*controller // the client's controllers in its order of preference at the start
	current  int           // the one streams are opened on
	ctx      context.Context
	cancel   context.CancelFunc
	id       string
	stream   hangarv1.BackendService_WatchBackendClient
	last     hangarv1.BackendState
	failures int
}

// WatchBackend starts following a backend. Read with Next; Close (or cancel ctx) to stop.
func (c *Client) WatchBackend(ctx context.Context, id string) *BackendWatch {
	ctx, cancel := context.WithCancel(ctx)
	return &BackendWatch{targets: c.order(), ctx: ctx, cancel: cancel, id: id}
}

// Close stops the watch.
func (w *BackendWatch) Close() { w.cancel() }

// Next returns the next status; io.EOF after TERMINATED was returned.
func (w *BackendWatch) Next() (*hangarv1.BackendStatus, error) {
	for {
		if w.last == hangarv1.BackendState_BACKEND_STATE_TERMINATED {
			return nil, io.EOF
		}
		if err := w.ctx.Err(); err != nil {
			return nil, err
		}
		var err error
		if w.stream == nil {
			w.stream, err = w.targets[w.current].backends.WatchBackend(w.ctx, &hangarv1.WatchBackendRequest{Id: w.id})
		}
		var response *hangarv1.WatchBackendResponse
		if err == nil {
			response, err = w.stream.Recv()
		}
		if err == nil {
			w.failures = 0
			status := response.GetStatus()
			if status.GetState() <= w.last {
				continue // replayed history after a reconnect
			}
			w.last = status.GetState()
			return status, nil
		}
		w.stream = nil
		if w.ctx.Err() != nil {
			return nil, w.ctx.Err()
		}
		// The stream ended before TERMINATED (io.EOF) or broke: reopen it; anything else ends
		// the watch.
		hangarErr := asError(err)
		if !errors.Is(err, io.EOF) && Code(hangarErr) != codes.Unavailable {
			return nil, hangarErr
		}
		w.current = (w.current + 1) % len(w.targets) // that controller went away: try the next
		delay := 100 * time.Millisecond << uint(minInt(w.failures, 6))
		w.failures++
		timer := time.NewTimer(delay)
		select {
		case <-w.ctx.Done():
			timer.Stop()
			return nil, w.ctx.Err()
		case <-timer.C:
		}
	}
}
