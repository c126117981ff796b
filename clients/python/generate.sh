#!/usr/bin/env bash
# generate.sh: the Python client's one recipe. Writes an importable tree to OUT_DIR:
#
#   OUT_DIR/defender/v1/response_service_pb2.py       messages     (protoc --python_out)
#   OUT_DIR/defender/v1/response_service_pb2_grpc.py  stub, servicer (--grpc_python_out)
#   OUT_DIR/defender/v1/config_pb2.py                 the config file schema
#   OUT_DIR/google/rpc/{status,error_details}_pb2.py  the error details the API returns
#   OUT_DIR/defender_plugin/                          the wrapper (a copy of ./defender_plugin)
#
# so that `PYTHONPATH=OUT_DIR python3 -c 'import defender_plugin'` works. No
# __init__.py is written anywhere: defender/ and google/ are PEP 420 namespace
# packages, so OUT_DIR/google/rpc and the runtime's google/protobuf (Debian's
# python3-protobuf, or pip's protobuf) are both importable.
#
# Usage: generate.sh [--protoc PROTOC --grpc-plugin PLUGIN] [--python PYTHON]
#                    [--googleapis DIR] OUT_DIR
#
# The compiler, in this order:
#   --protoc/--grpc-plugin given: those (CMake passes Debian's protoc and
#     /usr/bin/grpc_python_plugin, from protobuf-compiler-grpc);
#   PYTHON (default python3) can import grpc_tools (pip's grpcio-tools): its
#     bundled protoc, which matches that Python's protobuf runtime;
#   else protoc and grpc_python_plugin from PATH.
# Generated code must not be newer than the protobuf runtime that imports it
# (protoc 3.21 output needs protobuf >= 3.20 / 4.21): generate with the tools
# of the Python that will run it.
#
# --googleapis DIR holds google/rpc/status.proto and error_details.proto
# (default $GOOGLEAPIS_PROTO_DIR, else Debian's golang-github-gogo-googleapis-dev,
# /usr/share/gocode/src/github.com/gogo/googleapis; any googleapis checkout works).
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
proto_root="$(cd "$here/../../proto" && pwd)"
protoc=""
plugin=""
python="python3"
googleapis="${GOOGLEAPIS_PROTO_DIR:-/usr/share/gocode/src/github.com/gogo/googleapis}"
out=""

usage() {
  echo "usage: generate.sh [--protoc PROTOC --grpc-plugin PLUGIN] [--python PYTHON] [--googleapis DIR] OUT_DIR" >&2
  exit 2
}
while [ $# -gt 0 ]; do
  case "$1" in
    --protoc) protoc="$2"; shift 2 ;;
    --grpc-plugin) plugin="$2"; shift 2 ;;
    --python) python="$2"; shift 2 ;;
    --googleapis) googleapis="$2"; shift 2 ;;
    -h|--help) usage ;;
    -*) echo "generate.sh: unknown flag $1" >&2; usage ;;
    *) [ -z "$out" ] || usage; out="$1"; shift ;;
  esac
done
[ -n "$out" ] || usage
for f in google/rpc/status.proto google/rpc/error_details.proto; do
  [ -f "$googleapis/$f" ] || { echo "generate.sh: no $f under $googleapis (--googleapis)" >&2; exit 1; }
done

# The compiler command, as an array.
if [ -n "$protoc" ]; then
  [ -n "$plugin" ] || plugin="$(command -v grpc_python_plugin)" \
    || { echo "generate.sh: --protoc needs --grpc-plugin" >&2; exit 1; }
  compiler=("$protoc" "--plugin=protoc-gen-grpc_python=$plugin")
elif "$python" -c 'import grpc_tools.protoc' 2>/dev/null; then
  # grpc_tools' well-known types (google/protobuf/*.proto) live in its _proto dir.
  wkt="$("$python" -c 'import os, grpc_tools; print(os.path.join(os.path.dirname(grpc_tools.__file__), "_proto"))')"
  compiler=("$python" -m grpc_tools.protoc "--proto_path=$wkt")
elif command -v protoc >/dev/null && command -v grpc_python_plugin >/dev/null; then
  compiler=(protoc "--plugin=protoc-gen-grpc_python=$(command -v grpc_python_plugin)")
else
  echo "generate.sh: need protoc and grpc_python_plugin (Debian: apt-get install" \
       "protobuf-compiler protobuf-compiler-grpc) or $python -m grpc_tools (pip install grpcio-tools)" >&2
  exit 1
fi
# A system protoc finds timestamp.proto & co. in its include dir.
includes=()
for dir in /usr/include /usr/local/include; do
  [ -f "$dir/google/protobuf/timestamp.proto" ] && includes+=("--proto_path=$dir") && break
done

mkdir -p "$out"
# Generate into a scratch directory first, so that a failing run leaves OUT_DIR as it was.
stage="$(mktemp -d "$out/.generate.XXXXXX")"
trap 'rm -rf "$stage"' EXIT
"${compiler[@]}" "--proto_path=$proto_root" "--proto_path=$googleapis" "${includes[@]}" \
  "--python_out=$stage" "--grpc_python_out=$stage" \
  "$proto_root/defender/v1/response_service.proto"
"${compiler[@]}" "--proto_path=$proto_root" "--proto_path=$googleapis" "${includes[@]}" \
  "--python_out=$stage" "$proto_root/defender/v1/config.proto" \
  "$googleapis/google/rpc/status.proto" "$googleapis/google/rpc/error_details.proto"
mkdir -p "$stage/defender_plugin"
cp "$here"/defender_plugin/*.py "$stage/defender_plugin/"
# Into place file by file (OUT_DIR may already hold other google/ packages,
# e.g. a bundled protobuf: nothing but these files is touched).
(cd "$stage" && find . -type f -name '*.py') | while read -r f; do
  mkdir -p "$out/$(dirname "$f")"
  mv -f "$stage/$f" "$out/$f"
done
