package hangar

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hangar-dev/hangar/client/go/internal/devserver"
	"google.golang.org/grpc/codes"
)

func writeAuthFile(t *testing.T, content string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "auth.toml")
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func wantRefusal(t *testing.T, what string, err error, code codes.Code, reason string) *Error {
	t.Helper()
	hangarErr, ok := err.(*Error)
	if !ok || hangarErr.Code != code || hangarErr.Reason != reason {
		t.Fatalf("%s: got %v, want %v %s", what, err, code, reason)
	}
	return hangarErr
}

// A controller with an auth file (docs/security.md): the SDK's token decides who calls, and
// each refusal reaches the caller as its ErrorInfo reason and metadata.
func TestTokensAgainstAControllerWithAnAuthFile(t *testing.T) {
	auth := writeAuthFile(t, `
[[token]]
name = "dashboard"
role = "reader"
secret = "reader-secret-0123456789"

[[token]]
name = "ops"
role = "operator"
secret = "operator-secret-0123456789"
`)
	controller := devserver.StartController(t, "--auth-file", auth)
	ctx := testContext(t)
	connect := func(options Options) *Client {
		client, err := Dial(ctx, controller.ControllerURL, options)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { client.Close() })
		return client
	}

	_, _, err := connect(Options{}).ListNodes(ctx, nil)
	wantRefusal(t, "no token", err, codes.Unauthenticated, "UNAUTHENTICATED")
	_, _, err = connect(Options{Token: "not-a-token-0123456789"}).ListNodes(ctx, nil)
	wantRefusal(t, "an unknown token", err, codes.Unauthenticated, "TOKEN_INVALID")

	reader := connect(Options{Token: "reader-secret-0123456789"})
	if _, _, err := reader.ListNodes(ctx, nil); err != nil {
		t.Fatalf("a reader lists nodes: %v", err)
	}
	refused := wantRefusal(t, "a reader drains", func() error { _, err := reader.DrainNode(ctx, "n1", 0); return err }(),
		codes.PermissionDenied, "ROLE_NOT_ALLOWED")
	if refused.Metadata["role"] != "reader" || refused.Metadata["required_role"] != "operator" ||
		!strings.Contains(refused.Metadata["method"], "DrainNode") {
		t.Fatalf("ROLE_NOT_ALLOWED metadata: %v", refused.Metadata)
	}

	tokenFile := filepath.Join(t.TempDir(), "ops.token")
	if err := os.WriteFile(tokenFile, []byte("operator-secret-0123456789\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err = connect(Options{TokenFile: tokenFile}).DrainNode(ctx, "no-such-node", time.Minute)
	wantRefusal(t, "an operator drains an unknown node", err, codes.NotFound, "NODE_NOT_FOUND")
}

// A controller serving TLS and requiring client certificates (--tls-client-ca), whose auth
// file maps the certificate's common name to a role.
func TestMutualTLSAgainstARealController(t *testing.T) {
	p := makePKI(t)
	auth := writeAuthFile(t, `
[[certificate]]
common_name = "alice"
role = "reader"
`)
	controller := devserver.StartController(t, "--auth-file", auth,
		"--tls-cert", p.serverCert, "--tls-key", p.serverKey, "--tls-client-ca", p.ca)
	if !strings.HasPrefix(controller.ControllerURL, "https://") {
		t.Fatalf("the controller serves %s, not https", controller.ControllerURL)
	}
	ctx := testContext(t)
	alice, err := Dial(ctx, controller.ControllerURL, Options{TLSCA: p.ca, TLSCert: p.clientCert, TLSKey: p.clientKey})
	if err != nil {
		t.Fatal(err)
	}
	defer alice.Close()
	if _, _, err := alice.ListNodes(ctx, nil); err != nil {
		t.Fatalf("alice (reader by her certificate) lists nodes: %v", err)
	}
	_, err = alice.DrainNode(ctx, "n1", 0)
	if refused := wantRefusal(t, "alice drains", err, codes.PermissionDenied, "ROLE_NOT_ALLOWED"); refused.Metadata["role"] != "reader" {
		t.Fatalf("metadata: %v", refused.Metadata)
	}

	anonymous, err := Dial(ctx, controller.ControllerURL, Options{TLSCA: p.ca})
	if err != nil {
		t.Fatal(err)
	}
	defer anonymous.Close()
	short, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if _, _, err := anonymous.ListNodes(short, nil); err == nil {
		t.Fatal("a client without a certificate was served by a controller that requires one")
	}
}
