package hangar

import (
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/golang/protobuf/ptypes/any"
	hangarv1 "github.com/hangar-dev/hangar/client/go/gen/hangar/v1"
	spb "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protowire"
)

func TestParseKeyTakesTheCLIForms(t *testing.T) {
	for text, want := range map[string]string{
		"doc-1":          "default/doc-1@",
		"docs/doc-1":     "docs/doc-1@",
		"docs/doc-1@v2":  "docs/doc-1@v2",
		"doc-1@v2":       "default/doc-1@v2",
		"":               "error",
		"/doc-1":         "error",
		"docs/":          "error",
		"a/b/c":          "error",
		"docs/doc-1@":    "error",
		"docs/doc-1@v@2": "error",
		"docs/doc 1":     "error",
	} {
		key, err := ParseKey(text)
		got := "error"
		if err == nil {
			got = fmt.Sprintf("%s/%s@%s", key.GetNamespace(), key.GetName(), key.GetTag())
		}
		if got != want {
			t.Errorf("ParseKey(%q) = %s (%v), want %s", text, got, err, want)
		}
	}
}

func TestShortNamesAreWhatTheCLIPrints(t *testing.T) {
	for _, c := range []struct {
		got, want string
	}{
		{ShortName(hangarv1.NodeState_NODE_STATE_DRAINING), "DRAINING"},
		{ShortName(hangarv1.NodeKind_NODE_KIND_PROXY), "PROXY"},
		{ShortName(hangarv1.NodeEventType_NODE_EVENT_TYPE_SNAPSHOT_END), "SNAPSHOT_END"},
		{ShortName(hangarv1.BackendState_BACKEND_STATE_HARD_TERMINATING), "HARD_TERMINATING"},
		{ShortName(hangarv1.TerminationReason_TERMINATION_REASON_EXTERNAL), "EXTERNAL"},
		{ShortName(hangarv1.NodeState(42)), "42"},
	} {
		if c.got != c.want {
			t.Errorf("got %s, want %s", c.got, c.want)
		}
	}
}

func TestErrorDetailsAreReadFromTheStatus(t *testing.T) {
	str := func(number protowire.Number, value []byte) []byte {
		return protowire.AppendBytes(protowire.AppendTag(nil, number, protowire.BytesType), value)
	}
	cat := func(parts ...[]byte) []byte {
		var out []byte
		for _, part := range parts {
			out = append(out, part...)
		}
		return out
	}
	errorInfo := cat(str(1, []byte("RATE_LIMITED")), str(2, []byte("hangar.dev")),
		str(3, cat(str(1, []byte("retry_after_ms")), str(2, []byte("250")))),
		str(3, cat(str(1, []byte("method")), str(2, []byte("/hangar.v1.NodeService/ListNodes")))))
	badRequest := cat(str(1, cat(str(1, []byte("page_size")), str(2, []byte("at most 1000")))))
	duration := protowire.AppendVarint(protowire.AppendTag(nil, 2, protowire.VarintType), uint64(300*time.Millisecond))
	retryInfo := str(1, duration)
	st := status.FromProto(&spb.Status{Code: int32(codes.ResourceExhausted), Message: "slow down", Details: []*any.Any{
		{TypeUrl: "type.googleapis.com/google.rpc.ErrorInfo", Value: errorInfo},
		{TypeUrl: "type.googleapis.com/google.rpc.BadRequest", Value: badRequest},
		{TypeUrl: "type.googleapis.com/google.rpc.RetryInfo", Value: retryInfo},
		{TypeUrl: "type.googleapis.com/other.Thing", Value: []byte{0xff, 0xff}},
	}})
	err := asError(fmt.Errorf("wrapped: %w", st.Err()))
	var hangarErr *Error
	if !errors.As(err, &hangarErr) {
		t.Fatalf("%T is not an *Error", err)
	}
	if hangarErr.Code != codes.ResourceExhausted || hangarErr.Reason != "RATE_LIMITED" || hangarErr.Domain != ErrorDomain {
		t.Fatalf("code, reason, domain: %v %q %q", hangarErr.Code, hangarErr.Reason, hangarErr.Domain)
	}
	if hangarErr.Metadata["retry_after_ms"] != "250" || hangarErr.Metadata["method"] != "/hangar.v1.NodeService/ListNodes" {
		t.Fatalf("metadata: %v", hangarErr.Metadata)
	}
	if len(hangarErr.Violations) != 1 || hangarErr.Violations[0] != (FieldViolation{"page_size", "at most 1000"}) {
		t.Fatalf("violations: %v", hangarErr.Violations)
	}
	if hangarErr.RetryAfter != 300*time.Millisecond {
		t.Fatalf("RetryInfo's delay wins over the metadata's: %v", hangarErr.RetryAfter)
	}
	if status.Code(hangarErr) != codes.ResourceExhausted || Reason(fmt.Errorf("again: %w", hangarErr)) != "RATE_LIMITED" {
		t.Fatal("status.Code and Reason see through the *Error")
	}
	want := "ResourceExhausted RATE_LIMITED: slow down (method=/hangar.v1.NodeService/ListNodes, retry_after_ms=250); page_size: at most 1000"
	if hangarErr.Error() != want {
		t.Fatalf("Error():\n got %s\nwant %s", hangarErr.Error(), want)
	}
}

func TestErrorsThatAreNotStatusesPassThrough(t *testing.T) {
	plain := errors.New("boom")
	if asError(plain) != plain || asError(nil) != nil {
		t.Fatal("asError changed a non-gRPC error")
	}
}
