package hangar

import (
	"strconv"
	"strings"
	"unicode"

	"google.golang.org/protobuf/reflect/protoreflect"
)

// ShortName is an enum value's name as the CLI prints it, without the enum's prefix:
// "READY" for BACKEND_STATE_READY, "SNAPSHOT_END" for NODE_EVENT_TYPE_SNAPSHOT_END, the number
// for a value this version of the protos does not know. value.String() gives the full name.
func ShortName(value protoreflect.Enum) string {
	descriptor := value.Descriptor()
	number := value.Number()
	known := descriptor.Values().ByNumber(number)
	if known == nil {
		return strconv.Itoa(int(number))
	}
	return strings.TrimPrefix(string(known.Name()), screamingSnake(string(descriptor.Name()))+"_")
}

// screamingSnake turns "NodeEventType" into "NODE_EVENT_TYPE", protobuf's enum value prefix.
func screamingSnake(name string) string {
	var out strings.Builder
	for i, r := range name {
		if i > 0 && unicode.IsUpper(r) {
			out.WriteByte('_')
		}
		out.WriteRune(unicode.ToUpper(r))
	}
	return out.String()
}
