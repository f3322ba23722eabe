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

// Client is a connection to one controller. It is safe for concurrent use; Close it when done.
type Client struct {
	conn     *grpc.ClientConn
	nodes    hangarv1.NodeServiceClient
	backends hangarv1.BackendServiceClient
	// PageSize is the page size the List helpers ask for: 0 lets the controller choose (100),
	// at most 1000. The helpers always return every page.
	PageSize int32
	// Retry says how idempotent calls are repeated after UNAVAILABLE or RATE_LIMITED; the zero
	// value is 4 attempts, 100 ms doubling to 2 s.
	Retry RetryPolicy
}

// Dial connects to the controller at target, an http:// or https:// URL such as
// "http://127.0.0.1:7070". Like grpc.DialContext it does not wait for the connection: the first
// call makes it. Files named in opts are read now, and errors name the file.
func Dial(ctx context.Context, target string, opts Options) (*Client, error) {
	address, secure, err := parseTarget(target)
	if err != nil {
		return nil, err
	}
	dialOptions := []grpc.DialOption{
		// The default codec of older grpc-go releases (Debian's 1.33) marshals through
		// github.com/golang/protobuf 1.3, which predates the generated code's API; this codec
		// uses google.golang.org/protobuf directly with every grpc-go version.
		grpc.WithDefaultCallOptions(grpc.ForceCodec(protoCodec{})),
	}
	if secure {
		config, err := tlsConfig(opts)
		if err != nil {
			return nil, err
		}
		dialOptions = append(dialOptions, grpc.WithTransportCredentials(credentials.NewTLS(config)))
	} else {
		if opts.TLSCA != "" || opts.TLSCert != "" || opts.TLSKey != "" || opts.TLSServerName != "" {
			return nil, fmt.Errorf("%s is a plain http:// URL: TLS options need an https:// URL", target)
		}
		// grpc.WithInsecure rather than insecure.NewCredentials: the latter appeared after
		// grpc-go 1.33, the oldest release this module supports.
		dialOptions = append(dialOptions, grpc.WithInsecure()) //nolint:staticcheck
	}
	token, err := readToken(opts)
	if err != nil {
		return nil, err
	}
	if token != "" {
		dialOptions = append(dialOptions, grpc.WithPerRPCCredentials(bearerToken(token)))
	}
	dialOptions = append(dialOptions, opts.DialOptions...)
	conn, err := grpc.DialContext(ctx, address, dialOptions...)
	if err != nil {
		return nil, fmt.Errorf("dial %s: %w", target, err)
	}
	return &Client{conn: conn, nodes: hangarv1.NewNodeServiceClient(conn), backends: hangarv1.NewBackendServiceClient(conn)}, nil
}

// Close closes the connection; calls and watches still running fail.
func (c *Client) Close() error { return c.conn.Close() }

// Conn is the underlying connection, for other services on the same controller (health,
// reflection). It carries the token too.
func (c *Client) Conn() *grpc.ClientConn { return c.conn }

// Nodes is the generated NodeService client on this connection.
func (c *Client) Nodes() hangarv1.NodeServiceClient { return c.nodes }

// Backends is the generated BackendService client on this connection.
func (c *Client) Backends() hangarv1.BackendServiceClient { return c.backends }

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
