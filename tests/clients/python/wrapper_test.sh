#!/usr/bin/env bash
# The Python wrapper's unit tests (test_wrapper.py, an in-process gRPC server) on the
# generated client tree BUILD_DIR/clients/python (CMake's python_client target, or Bazel's
# //clients:python_client), with Debian's python3-grpcio.
# Usage: wrapper_test.sh BUILD_DIR
set -euo pipefail
[ "$#" -eq 1 ] || { echo "usage: wrapper_test.sh BUILD_DIR" >&2; exit 2; }
tree="$1/clients/python"
[ -f "$tree/.generated" ] || { echo "wrapper_test.sh: no generated client in $tree" >&2; exit 1; }
PYTHONPATH="$tree" exec /usr/bin/python3 "$(dirname "$0")/test_wrapper.py" -v
