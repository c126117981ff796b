#!/usr/bin/env bash
# Generates the Go stubs of defender.v1 (proto/defender/v1/response_service.proto)
# into a GOPATH source tree, with Debian's protoc-gen-go (1.28, APIv2) and
# protoc-gen-go-grpc (grpc-go 1.33's, SupportPackageIsVersion7). The one recipe
# for clients/go and tests/goplugin.
#
#   generate.sh GOPATH_SRC_DIR PROTO_DIR
#
# writes GOPATH_SRC_DIR/defenderplugin/gen/go/defender/v1/response_service.pb.go
# and response_service_grpc.pb.go (package defenderv1, the proto's go_package).
# Build against them offline in GOPATH mode:
#
#   GO111MODULE=off GOPATH="$(dirname GOPATH_SRC_DIR):/usr/share/gocode" go build ...
#
# The imports map to Debian's Go packages: google/rpc/status.proto to
# google.golang.org/genproto/googleapis/rpc/status (golang-google-genproto-dev,
# which grpc-go's status package uses too), google/protobuf/timestamp.proto to
# google.golang.org/protobuf/types/known/timestamppb (golang-google-protobuf-dev).
set -euo pipefail
if [ "$#" -ne 2 ]; then
  echo "usage: generate.sh GOPATH_SRC_DIR PROTO_DIR" >&2
  exit 2
fi
out="$1"
proto="$(cd "$2" && pwd)"
# google/rpc/status.proto: the copy the C++ build uses (golang-github-gogo-googleapis-dev);
# google/protobuf/*.proto come with protoc (libprotobuf-dev).
googleapis="${GOOGLEAPIS_PROTO_DIR:-/usr/share/gocode/src/github.com/gogo/googleapis}"
maps="Mgoogle/rpc/status.proto=google.golang.org/genproto/googleapis/rpc/status"
maps="$maps,Mgoogle/protobuf/timestamp.proto=google.golang.org/protobuf/types/known/timestamppb"
mkdir -p "$out"
protoc --proto_path="$proto" --proto_path="$googleapis" --proto_path=/usr/include \
  --go_out="$out" --go_opt="$maps" \
  --go-grpc_out="$out" --go-grpc_opt="$maps" \
  "$proto/defender/v1/response_service.proto"
