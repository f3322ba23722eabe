module github.com/hangar-dev/hangar/client/go

// The lowest versions the SDK is built and tested with: Debian 12's Go packages
// (golang-google-grpc-dev, golang-google-protobuf-dev), see README.md. Newer ones work too.
go 1.19

require (
	google.golang.org/grpc v1.33.3
	google.golang.org/protobuf v1.28.1
)
