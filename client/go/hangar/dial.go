// Package hangar is a thin Go client for Hangar's gRPC API (hangar.v1): dial a controller with
// its token and TLS options, list and watch nodes, and run a backend's life (connect by key,
// wait until READY, watch, terminate). Errors carry Hangar's stable ErrorInfo reason (see Error).
//
// The generated stubs it wraps are importable too, for everything the helpers leave out:
// github.com/hangar-dev/hangar/client/go/gen/hangar/v1 (package hangarv1), reachable from a
// Client as Client.Nodes() and Client.Backends().
package hangar

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"net/url"
	"os"
	"strings"
	"time"

	hangarv1 "github.com/hangar-dev/hangar/client/go/gen/hangar/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
)

// DefaultController is the controller URL used when neither a URL nor HANGAR_CONTROLLER is
// given, as for the `hangar` CLI.
const DefaultController = "http://127.0.0.1:7070"

// Options are the credentials every Hangar client takes (docs/security.md, "Clients"): a bearer
// token and TLS files. The zero value dials without credentials.
type Options struct {
	// Token is sent as `authorization: Bearer <Token>` on every call, over TLS or plain http://.
	Token string
	// TokenFile names a file holding the token (surrounding whitespace ignored). Give Token or
	// TokenFile, not both.
	TokenFile string
	// TLSCA names a PEM file of the CA(s) that signed the controller's certificate; empty: the
	// system's roots. Only for https:// URLs.
	TLSCA string
	// TLSCert and TLSKey name a PEM client certificate and its key, for mTLS; give both or neither.
	TLSCert string
	TLSKey  string
	// TLSServerName is the name the controller's certificate must carry, when it is not the
	// URL's host.
	TLSServerName string
	// DialOptions are passed to grpc.DialContext after Hangar's own (interceptors, keepalive…).
	DialOptions []grpc.DialOption
}

// OptionsFromEnv reads the variables every Hangar client reads: HANGAR_TOKEN,
// HANGAR_TOKEN_FILE, HANGAR_TLS_CA, HANGAR_TLS_CERT, HANGAR_TLS_KEY and
// HANGAR_TLS_SERVER_NAME. An empty variable counts as unset.
func OptionsFromEnv() Options {
	return Options{
		Token:         os.Getenv("HANGAR_TOKEN"),
		TokenFile:     os.Getenv("HANGAR_TOKEN_FILE"),
		TLSCA:         os.Getenv("HANGAR_TLS_CA"),
		TLSCert:       os.Getenv("HANGAR_TLS_CERT"),
		TLSKey:        os.Getenv("HANGAR_TLS_KEY"),
		TLSServerName: os.Getenv("HANGAR_TLS_SERVER_NAME"),
	}
}

// ControllerFromEnv is HANGAR_CONTROLLER, or DefaultController when it is unset or empty.
func ControllerFromEnv() string {
	if controller := os.Getenv("HANGAR_CONTROLLER"); controller != "" {
		return controller
	}
	return DefaultController
}

// Client is a connection to a controller, or to several controllers of one cluster that it
// fails over between. It is safe for concurrent use; Close it when done.
//
// Given several controllers, each call goes first to the first one in the order given that
// has not failed lately. A controller that does not answer a call (UNAVAILABLE: connection
// refused or reset, a controller shutting down; or a connection that broke or hung, past
// CallTimeout, without an answer) is tried only after the others for a cooldown: 0.5 s,
// doubling while it keeps failing, up to 15 s; any answer, even an error, ends it. An idempotent
// call (the List and Get helpers, a keyed Connect, Terminate, UndrainNode) that a controller
// does not answer goes to the next one at once, and Retry's backoff applies only once every
// controller has failed it. A call with effects (a keyless Connect, DrainNode) is never
// repeated: its failure reaches the caller, and the next call goes to another controller.
// Watches resume on the next controller. As the Rust SDK's HangarClient.
type Client struct {
	targets []*controller // in the order given; never empty
	// PageSize is the page size the List helpers ask for: 0 lets the controller choose (100),
	// at most 1000. The helpers always return every page.
	PageSize int32
	// Retry says how idempotent calls are repeated after UNAVAILABLE or RATE_LIMITED; the zero
	// value is 4 attempts, 100 ms doubling to 2 s.
	Retry RetryPolicy
	// CallTimeout is the deadline of each unary call to one controller (watches have none): a
	// controller that has not answered by then counts as not answering, and an idempotent call
	// goes on to the next one. 0: DefaultCallTimeout (30 s); below 0: none, only ctx's.
	CallTimeout time.Duration
}

// Dial connects to the controller at target, an http:// or https:// URL such as
// "http://127.0.0.1:7070", or to several controllers of one cluster given as comma-separated
// URLs ("http://ctl-a:7070,http://ctl-b:7070"), which the Client fails over between. Each
// controller has its own connection with the same token and TLS options. Like grpc.DialContext
// it does not wait for the connections: the first call makes them, so a controller that is
// down does not fail Dial. Files named in opts are read now, and errors name the file.
func Dial(ctx context.Context, target string, opts Options) (*Client, error) {
	var urls []string
	for _, url := range strings.Split(target, ",") {
		if url = strings.TrimSpace(url); url != "" {
			urls = append(urls, url)
		}
	}
	if len(urls) == 0 {
		urls = []string{target} // refused below, naming what was given
	}
	type parsed struct {
		url, address string
		secure       bool
	}
	var addresses []parsed
	anySecure := false
	for _, url := range urls {
		address, secure, err := parseTarget(url)
		if err != nil {
			return nil, err
		}
		if !secure && (opts.TLSCA != "" || opts.TLSCert != "" || opts.TLSKey != "" || opts.TLSServerName != "") {
			return nil, fmt.Errorf("%s is a plain http:// URL: TLS options need an https:// URL", url)
		}
		anySecure = anySecure || secure
		addresses = append(addresses, parsed{url, address, secure})
	}
	common := []grpc.DialOption{
		// The default codec of older grpc-go releases (Debian's 1.33) marshals through
		// github.com/golang/protobuf 1.3, which predates the generated code's API; this codec
		// uses google.golang.org/protobuf directly with every grpc-go version.
		grpc.WithDefaultCallOptions(grpc.ForceCodec(protoCodec{})),
	}
	var secureOption grpc.DialOption
	if anySecure {
		config, err := tlsConfig(opts)
		if err != nil {
			return nil, err
		}
		secureOption = grpc.WithTransportCredentials(credentials.NewTLS(config))
	}
	token, err := readToken(opts)
	if err != nil {
		return nil, err
	}
	if token != "" {
		common = append(common, grpc.WithPerRPCCredentials(bearerToken(token)))
	}
	client := &Client{}
	var firstErr error
	for _, a := range addresses {
		dialOptions := append([]grpc.DialOption{}, common...)
		if a.secure {
			dialOptions = append(dialOptions, secureOption)
		} else {
			// grpc.WithInsecure rather than insecure.NewCredentials: the latter appeared after
			// grpc-go 1.33, the oldest release this module supports.
			dialOptions = append(dialOptions, grpc.WithInsecure()) //nolint:staticcheck
		}
		dialOptions = append(dialOptions, opts.DialOptions...)
		conn, err := grpc.DialContext(ctx, a.address, dialOptions...)
		if err != nil {
			// Only with grpc.WithBlock in opts.DialOptions: a controller that does not connect
			// then is left out, unless none connects.
			if firstErr == nil {
				firstErr = fmt.Errorf("dial %s: %w", a.url, err)
			}
			continue
		}
		client.targets = append(client.targets, &controller{url: a.url, conn: conn,
			nodes: hangarv1.NewNodeServiceClient(conn), backends: hangarv1.NewBackendServiceClient(conn)})
	}
	if len(client.targets) == 0 {
		return nil, firstErr
	}
	return client, nil
}

// Close closes every connection; calls and watches still running fail.
func (c *Client) Close() error {
	var first error
	for _, t := range c.targets {
		if err := t.conn.Close(); err != nil && first == nil {
			first = err
		}
	}
	return first
}

// Address is the URL of the controller the next call goes to first: the first of the
// client's controllers, in the order given, that has not failed lately.
func (c *Client) Address() string { return c.preferred().url }

// Addresses are the URLs of the client's controllers, in the order given.
func (c *Client) Addresses() []string {
	urls := make([]string, len(c.targets))
	for i, t := range c.targets {
		urls[i] = t.url
	}
	return urls
}

// Conn is the connection to the controller of Address, for other services (health,
// reflection). It carries the token too. Calls made on it do not fail over.
func (c *Client) Conn() *grpc.ClientConn { return c.preferred().conn }

// Nodes is the generated NodeService client on Conn; its calls do not fail over.
func (c *Client) Nodes() hangarv1.NodeServiceClient { return c.preferred().nodes }

// Backends is the generated BackendService client on Conn; its calls do not fail over.
func (c *Client) Backends() hangarv1.BackendServiceClient { return c.preferred().backends }

func parseTarget(target string) (address string, secure bool, err error) {
	parsed, err := url.Parse(target)
	if err != nil || parsed.Host == "" || (parsed.Path != "" && parsed.Path != "/") {
		return "", false, fmt.Errorf("%q is not a controller URL; expected http://HOST:PORT or https://HOST:PORT", target)
	}
	port := parsed.Port()
	switch parsed.Scheme {
	case "http":
		if port == "" {
			port = "80"
		}
	case "https":
		secure = true
		if port == "" {
			port = "443"
		}
	default:
		return "", false, fmt.Errorf("%q is not a controller URL; expected http://HOST:PORT or https://HOST:PORT", target)
	}
	host := parsed.Hostname()
	if strings.Contains(host, ":") {
		host = "[" + host + "]"
	}
	return host + ":" + port, secure, nil
}

func tlsConfig(opts Options) (*tls.Config, error) {
	config := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: opts.TLSServerName}
	if opts.TLSCA != "" {
		pemBytes, err := os.ReadFile(opts.TLSCA)
		if err != nil {
			return nil, fmt.Errorf("TLS CA %s: %w", opts.TLSCA, err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pemBytes) {
			return nil, fmt.Errorf("TLS CA %s: no PEM certificate in it", opts.TLSCA)
		}
		config.RootCAs = pool
	}
	switch {
	case opts.TLSCert != "" && opts.TLSKey != "":
		if err := hasPEM(opts.TLSCert, "TLS certificate"); err != nil {
			return nil, err
		}
		if err := hasPEM(opts.TLSKey, "TLS key"); err != nil {
			return nil, err
		}
		pair, err := tls.LoadX509KeyPair(opts.TLSCert, opts.TLSKey)
		if err != nil {
			return nil, fmt.Errorf("TLS certificate %s with key %s: %w", opts.TLSCert, opts.TLSKey, err)
		}
		config.Certificates = []tls.Certificate{pair}
	case opts.TLSCert != "":
		return nil, fmt.Errorf("TLS certificate %s is given without its key (TLSKey)", opts.TLSCert)
	case opts.TLSKey != "":
		return nil, fmt.Errorf("TLS key %s is given without its certificate (TLSCert)", opts.TLSKey)
	}
	return config, nil
}

func hasPEM(path, what string) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("%s %s: %w", what, path, err)
	}
	if block, _ := pem.Decode(data); block == nil {
		return fmt.Errorf("%s %s: not PEM", what, path)
	}
	return nil
}

func readToken(opts Options) (string, error) {
	switch {
	case opts.Token != "" && opts.TokenFile != "":
		return "", errors.New("give the token one way: Token or TokenFile, not both")
	case opts.TokenFile != "":
		data, err := os.ReadFile(opts.TokenFile)
		if err != nil {
			return "", fmt.Errorf("token file %s: %w", opts.TokenFile, err)
		}
		token := strings.TrimSpace(string(data))
		if token == "" {
			return "", fmt.Errorf("token file %s is empty", opts.TokenFile)
		}
		return token, nil
	default:
		return strings.TrimSpace(opts.Token), nil
	}
}

// bearerToken sends the token on every call. It does not require TLS: Hangar accepts tokens on
// http:// too (docs/security.md warns that they cross the network in clear there).
type bearerToken string

func (t bearerToken) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{"authorization": "Bearer " + string(t)}, nil
}

func (bearerToken) RequireTransportSecurity() bool { return false }
