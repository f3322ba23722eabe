package hangar

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	hangarv1 "github.com/hangar-dev/hangar/client/go/gen/hangar/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

// The test servers run on the same grpc-go as the client; Debian's 1.33 serves through a codec
// that predates the generated code's protobuf API (see codec.go), so they use the SDK's codec.
func init() { encoding.RegisterCodec(protoCodec{}) }

// recordingNodes is a NodeService that answers GetNode with the authorization header it got,
// and the common name of the client certificate, if any, as the node's name and version.
type recordingNodes struct {
	hangarv1.UnimplementedNodeServiceServer
}

func (recordingNodes) GetNode(ctx context.Context, request *hangarv1.GetNodeRequest) (*hangarv1.GetNodeResponse, error) {
	incoming, _ := metadata.FromIncomingContext(ctx)
	node := &hangarv1.Node{Id: request.GetId(), Name: strings.Join(incoming.Get("authorization"), ",")}
	return &hangarv1.GetNodeResponse{Node: node}, nil
}

// serve starts a gRPC server with recordingNodes on a free loopback port.
func serve(t *testing.T, options ...grpc.ServerOption) string {
	t.Helper()
	listener, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	server := grpc.NewServer(options...)
	hangarv1.RegisterNodeServiceServer(server, recordingNodes{})
	go func() { _ = server.Serve(listener) }()
	t.Cleanup(server.Stop)
	return listener.Addr().String()
}

func testContext(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func TestTokenIsSentAsBearerOnEveryCallOverPlainHTTP(t *testing.T) {
	address := serve(t)
	dir := t.TempDir()
	tokenFile := filepath.Join(dir, "token")
	if err := os.WriteFile(tokenFile, []byte("  s3cret-from-file\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, options := range []Options{{Token: "s3cret"}, {TokenFile: tokenFile}} {
		client, err := Dial(testContext(t), "http://"+address, options)
		if err != nil {
			t.Fatal(err)
		}
		want := "Bearer " + strings.TrimSpace(options.Token)
		if options.TokenFile != "" {
			want = "Bearer s3cret-from-file"
		}
		for i := 0; i < 2; i++ {
			node, err := client.GetNode(testContext(t), "n1")
			if err != nil {
				t.Fatal(err)
			}
			if node.GetName() != want {
				t.Fatalf("call %d sent authorization %q, want %q", i, node.GetName(), want)
			}
		}
		client.Close()
	}
}

func TestNoTokenSendsNoAuthorizationHeader(t *testing.T) {
	client, err := Dial(testContext(t), "http://"+serve(t), Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	node, err := client.GetNode(testContext(t), "n1")
	if err != nil || node.GetName() != "" {
		t.Fatalf("got %q, %v; want no authorization header", node.GetName(), err)
	}
}

// pki is a CA with a server certificate for 127.0.0.1 and a client certificate, as files.
type pki struct{ dir, ca, serverCert, serverKey, clientCert, clientKey string }

func makePKI(t *testing.T) pki {
	t.Helper()
	dir := t.TempDir()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTemplate := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "Test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTemplate, caTemplate, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	write := func(name, kind string, der []byte) string {
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: kind, Bytes: der}), 0o600); err != nil {
			t.Fatal(err)
		}
		return path
	}
	issue := func(name string, usage x509.ExtKeyUsage, ips []net.IP) (string, string) {
		key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		template := &x509.Certificate{
			SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: name},
			NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
			KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{usage}, IPAddresses: ips,
		}
		der, err := x509.CreateCertificate(rand.Reader, template, ca, &key.PublicKey, caKey)
		if err != nil {
			t.Fatal(err)
		}
		keyDER, _ := x509.MarshalPKCS8PrivateKey(key)
		return write(name+".pem", "CERTIFICATE", der), write(name+".key", "PRIVATE KEY", keyDER)
	}
	p := pki{dir: dir, ca: write("ca.pem", "CERTIFICATE", caDER)}
	p.serverCert, p.serverKey = issue("controller", x509.ExtKeyUsageServerAuth, []net.IP{net.ParseIP("127.0.0.1")})
	p.clientCert, p.clientKey = issue("alice", x509.ExtKeyUsageClientAuth, nil)
	return p
}

func TestTLSWithTheCAAndAClientCertificateReachesAnMTLSServer(t *testing.T) {
	p := makePKI(t)
	serverPair, err := tls.LoadX509KeyPair(p.serverCert, p.serverKey)
	if err != nil {
		t.Fatal(err)
	}
	clientCAs := x509.NewCertPool()
	caPEM, _ := os.ReadFile(p.ca)
	clientCAs.AppendCertsFromPEM(caPEM)
	address := serve(t, grpc.Creds(credentials.NewTLS(&tls.Config{
		Certificates: []tls.Certificate{serverPair}, ClientCAs: clientCAs, ClientAuth: tls.RequireAndVerifyClientCert,
	})))
	url := "https://" + address

	client, err := Dial(testContext(t), url, Options{TLSCA: p.ca, TLSCert: p.clientCert, TLSKey: p.clientKey, Token: "t0ken"})
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	node, err := client.GetNode(testContext(t), "n1")
	if err != nil {
		t.Fatal(err)
	}
	if node.GetName() != "Bearer t0ken" {
		t.Fatalf("authorization over TLS: %q", node.GetName())
	}

	// Without the client certificate the handshake fails: the server requires one.
	withoutCert, err := Dial(testContext(t), url, Options{TLSCA: p.ca})
	if err != nil {
		t.Fatal(err)
	}
	defer withoutCert.Close()
	short, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := withoutCert.GetNode(short, "n1"); Code(err) != codes.Unavailable && Code(err) != codes.DeadlineExceeded && status.Code(err) != codes.DeadlineExceeded {
		t.Fatalf("without a client certificate: %v, want UNAVAILABLE", err)
	}
}

func TestTLSRefusesAControllerCertificateFromAnotherCA(t *testing.T) {
	p, other := makePKI(t), makePKI(t)
	serverPair, _ := tls.LoadX509KeyPair(p.serverCert, p.serverKey)
	address := serve(t, grpc.Creds(credentials.NewTLS(&tls.Config{Certificates: []tls.Certificate{serverPair}})))
	client, err := Dial(testContext(t), "https://"+address, Options{TLSCA: other.ca})
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	short, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, err = client.GetNode(short, "n1")
	if err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Fatalf("a certificate from another CA: %v, want a certificate error", err)
	}
}

func TestDialRefusesWrongOptionsNamingWhatIsWrong(t *testing.T) {
	p := makePKI(t)
	notPEM := filepath.Join(p.dir, "not.pem")
	_ = os.WriteFile(notPEM, []byte("hello"), 0o600)
	cases := []struct {
		target  string
		options Options
		want    string
	}{
		{"127.0.0.1:7070", Options{}, "not a controller URL"},
		{"ftp://127.0.0.1:7070", Options{}, "not a controller URL"},
		{"http://127.0.0.1:7070", Options{TLSCA: p.ca}, "need an https:// URL"},
		{"https://127.0.0.1:7070", Options{TLSCert: p.clientCert}, "without its key"},
		{"https://127.0.0.1:7070", Options{TLSCA: filepath.Join(p.dir, "missing.pem")}, "missing.pem"},
		{"https://127.0.0.1:7070", Options{TLSCA: notPEM}, "no PEM certificate"},
		{"https://127.0.0.1:7070", Options{TLSCert: notPEM, TLSKey: p.clientKey}, "not PEM"},
		{"https://127.0.0.1:7070", Options{TLSCert: p.clientCert, TLSKey: p.serverKey}, "private key does not match"},
		{"http://127.0.0.1:7070", Options{Token: "a", TokenFile: notPEM}, "not both"},
	}
	for _, c := range cases {
		_, err := Dial(context.Background(), c.target, c.options)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("Dial(%q, %+v) = %v, want an error containing %q", c.target, c.options, err, c.want)
		}
	}
}
