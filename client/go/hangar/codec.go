package hangar

import (
	"fmt"

	"google.golang.org/protobuf/proto"
)

// protoCodec is grpc-go's "proto" codec written against google.golang.org/protobuf, the API the
// generated code in gen/ uses. Newer grpc-go releases ship the same; Debian 12's grpc-go 1.33
// still marshals through github.com/golang/protobuf 1.3, which does not know these messages.
type protoCodec struct{}

func (protoCodec) Marshal(v interface{}) ([]byte, error) {
	message, ok := v.(proto.Message)
	if !ok {
		return nil, fmt.Errorf("hangar: cannot marshal %T: not a protobuf message", v)
	}
	return proto.Marshal(message)
}

func (protoCodec) Unmarshal(data []byte, v interface{}) error {
	message, ok := v.(proto.Message)
	if !ok {
		return fmt.Errorf("hangar: cannot unmarshal into %T: not a protobuf message", v)
	}
	return proto.Unmarshal(data, message)
}

func (protoCodec) Name() string { return "proto" }
