package hangar

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protowire"
)

// ErrorDomain is the ErrorInfo.domain of every error Hangar's controller returns.
const ErrorDomain = "hangar.dev"

// Error is a call Hangar refused, with the standard google.rpc details the controller sends
// (docs/design/README.md: errors cross every boundary as google.rpc details). Match on Code and
// Reason, never on Message: reasons such as NODE_NOT_FOUND, BACKEND_NOT_FOUND,
// KEY_TAG_MISMATCH, REVISION_COMPACTED or ROLE_NOT_ALLOWED are stable.
//
// Every method of Client returns its gRPC failures as *Error; errors.As(err, &hangarErr) finds
// it, and status.Code(err) still gives the code.
type Error struct {
	Code    codes.Code
	Message string
	// Reason is ErrorInfo.reason; empty when the status carried no ErrorInfo (transport errors).
	Reason string
	// Domain is ErrorInfo.domain ("hangar.dev" for Hangar's own errors).
	Domain string
	// Metadata is ErrorInfo.metadata, e.g. {"id": "…"} for NODE_NOT_FOUND.
	Metadata map[string]string
	// Violations are the BadRequest field violations of an INVALID_ARGUMENT.
	Violations []FieldViolation
	// RetryAfter is google.rpc.RetryInfo's delay (RATE_LIMITED); 0 when absent.
	RetryAfter time.Duration

	status *status.Status
}

// FieldViolation names one refused request field and why.
type FieldViolation struct {
	Field       string
	Description string
}

func (e *Error) Error() string {
	var text strings.Builder
	text.WriteString(e.Code.String())
	if e.Reason != "" {
		text.WriteString(" " + e.Reason)
	}
	text.WriteString(": " + e.Message)
	if len(e.Metadata) > 0 {
		keys := make([]string, 0, len(e.Metadata))
		for key := range e.Metadata {
			keys = append(keys, key)
		}
		sort.Strings(keys)
		pairs := make([]string, len(keys))
		for i, key := range keys {
			pairs[i] = key + "=" + e.Metadata[key]
		}
		text.WriteString(" (" + strings.Join(pairs, ", ") + ")")
	}
	for _, violation := range e.Violations {
		fmt.Fprintf(&text, "; %s: %s", violation.Field, violation.Description)
	}
	return text.String()
}

// GRPCStatus lets status.FromError and status.Code see through an *Error.
func (e *Error) GRPCStatus() *status.Status { return e.status }

// Reason is the ErrorInfo reason of err if it is (or wraps) an *Error, else "".
func Reason(err error) string {
	var hangarErr *Error
	if errors.As(err, &hangarErr) {
		return hangarErr.Reason
	}
	return ""
}

// asError turns a gRPC failure into an *Error; nil stays nil, and errors that are not gRPC
// statuses (a cancelled context, a refused option) pass through unchanged.
func asError(err error) error {
	if err == nil {
		return nil
	}
	var already *Error
	if errors.As(err, &already) {
		return err
	}
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return err
	}
	// errors.As rather than status.FromError alone: grpc-go 1.33 does not look into wrapped errors.
	var grpcErr interface{ GRPCStatus() *status.Status }
	if !errors.As(err, &grpcErr) {
		return err
	}
	st := grpcErr.GRPCStatus()
	result := &Error{Code: st.Code(), Message: st.Message(), status: st}
	// The details are read from their bytes rather than through genproto's errdetails types:
	// which genproto module provides those differs between releases (it was split in 2023), and
	// three small messages are not worth a dependency that can make a user's build ambiguous.
	for _, detail := range st.Proto().GetDetails() {
		typeURL, value := detail.GetTypeUrl(), detail.GetValue()
		switch typeURL[strings.LastIndex(typeURL, "/")+1:] {
		case "google.rpc.ErrorInfo":
			result.Reason, result.Domain, result.Metadata = decodeErrorInfo(value)
		case "google.rpc.BadRequest":
			result.Violations = append(result.Violations, decodeBadRequest(value)...)
		case "google.rpc.RetryInfo":
			result.RetryAfter = decodeRetryInfo(value)
		}
	}
	if result.RetryAfter == 0 {
		if millis, err := strconv.ParseUint(result.Metadata["retry_after_ms"], 10, 64); err == nil {
			result.RetryAfter = time.Duration(millis) * time.Millisecond
		}
	}
	return result
}

// fields calls visit for each field of a protobuf message; it stops at the first malformed one
// (a detail Hangar did not write is ignored rather than failing the error it came with).
func fields(data []byte, visit func(number protowire.Number, wireType protowire.Type, value []byte, varint uint64)) {
	for len(data) > 0 {
		number, wireType, n := protowire.ConsumeTag(data)
		if n < 0 {
			return
		}
		data = data[n:]
		switch wireType {
		case protowire.BytesType:
			value, m := protowire.ConsumeBytes(data)
			if m < 0 {
				return
			}
			visit(number, wireType, value, 0)
			data = data[m:]
		case protowire.VarintType:
			value, m := protowire.ConsumeVarint(data)
			if m < 0 {
				return
			}
			visit(number, wireType, nil, value)
			data = data[m:]
		default:
			m := protowire.ConsumeFieldValue(number, wireType, data)
			if m < 0 {
				return
			}
			data = data[m:]
		}
	}
}

// decodeErrorInfo reads google.rpc.ErrorInfo {reason = 1; domain = 2; map<string,string> metadata = 3}.
func decodeErrorInfo(data []byte) (reason, domain string, metadata map[string]string) {
	metadata = map[string]string{}
	fields(data, func(number protowire.Number, wireType protowire.Type, value []byte, _ uint64) {
		if wireType != protowire.BytesType {
			return
		}
		switch number {
		case 1:
			reason = string(value)
		case 2:
			domain = string(value)
		case 3: // a map entry {key = 1; value = 2}
			var key, entry string
			fields(value, func(number protowire.Number, wireType protowire.Type, value []byte, _ uint64) {
				if wireType == protowire.BytesType && number == 1 {
					key = string(value)
				} else if wireType == protowire.BytesType && number == 2 {
					entry = string(value)
				}
			})
			metadata[key] = entry
		}
	})
	return reason, domain, metadata
}

// decodeBadRequest reads google.rpc.BadRequest {repeated FieldViolation field_violations = 1},
// FieldViolation {field = 1; description = 2}.
func decodeBadRequest(data []byte) []FieldViolation {
	var violations []FieldViolation
	fields(data, func(number protowire.Number, wireType protowire.Type, value []byte, _ uint64) {
		if wireType != protowire.BytesType || number != 1 {
			return
		}
		var violation FieldViolation
		fields(value, func(number protowire.Number, wireType protowire.Type, value []byte, _ uint64) {
			if wireType == protowire.BytesType && number == 1 {
				violation.Field = string(value)
			} else if wireType == protowire.BytesType && number == 2 {
				violation.Description = string(value)
			}
		})
		violations = append(violations, violation)
	})
	return violations
}

// decodeRetryInfo reads google.rpc.RetryInfo {google.protobuf.Duration retry_delay = 1},
// Duration {int64 seconds = 1; int32 nanos = 2}.
func decodeRetryInfo(data []byte) time.Duration {
	var delay time.Duration
	fields(data, func(number protowire.Number, wireType protowire.Type, value []byte, _ uint64) {
		if wireType != protowire.BytesType || number != 1 {
			return
		}
		fields(value, func(number protowire.Number, wireType protowire.Type, _ []byte, varint uint64) {
			if wireType == protowire.VarintType && number == 1 {
				delay += time.Duration(int64(varint)) * time.Second
			} else if wireType == protowire.VarintType && number == 2 {
				delay += time.Duration(int32(varint))
			}
		})
	})
	return delay
}
