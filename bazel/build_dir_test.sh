#!/usr/bin/env bash
# Runs one of tests/'s shell tests, unchanged, under `bazel test` (see bazel/defs.bzl).
#
# Contract: those scripts take a CMake BUILD_DIR laid out as server/defender-plugin,
# tools/defender-sandbox, tools/defenderctl, bench/defender-bench, bench/observability-bench, and
# some write into it (host_test.sh's Go cache) or take a SOURCE_DIR. This wrapper
# - makes a writable BUILD_DIR in $TEST_TMPDIR with symlinks to the runfiles' binaries (the
#   cc_binary names match, so the layout is CMake's);
# - uses the runfiles tree as SOURCE_DIR (it holds the script's `data`: the .proto files,
#   tests/goplugin/host, bench/python_requests.py, clients/go/generate.sh, ...);
# - puts scratch files under $TEST_TMPDIR (TMPDIR: testlib.sh's mktemp -d) and gives the
#   scripts Debian's tools on a fixed PATH (/usr/bin/python3 is named explicitly by the scripts;
#   go, protoc, protoc-gen-go*, openssl, curl, nghttpd come from /usr/bin and /usr/sbin), not
#   whatever PATH the caller of bazel had;
# - replaces the arguments @BUILD_DIR@ and @SOURCE_DIR@, then execs bash SCRIPT ARGS...
# Usage (as the sh_test's args): build_dir_test.sh SCRIPT_ROOTPATH [ARG...]
set -euo pipefail
[ "$#" -ge 1 ] || { echo "usage: build_dir_test.sh SCRIPT [ARG...]" >&2; exit 2; }
script="$1"
shift
: "${TEST_SRCDIR:?build_dir_test.sh runs under bazel test}"
: "${TEST_TMPDIR:?build_dir_test.sh runs under bazel test}"
src="$TEST_SRCDIR/${TEST_WORKSPACE:-defender_plugin}"
[ -f "$src/$script" ] || { echo "build_dir_test.sh: no $script in the runfiles" >&2; exit 2; }

build_dir="$TEST_TMPDIR/build"
mkdir -p "$build_dir/server" "$build_dir/tools" "$build_dir/bench" "$build_dir/tests"
for binary in server/defender-plugin tools/defender-sandbox tools/defenderctl \
              bench/defender-bench bench/observability-bench; do
  if [ -x "$src/$binary" ]; then ln -sfn "$src/$binary" "$build_dir/$binary"; fi
done

# The Python client's generated tree (//clients:python_client), where CMake's python_client
# target puts it.
if [ -f "$src/clients/python_client/.generated" ]; then
  mkdir -p "$build_dir/clients"
  ln -sfn "$src/clients/python_client" "$build_dir/clients/python"
fi

args=()
for arg in "$@"; do
  arg="${arg//@BUILD_DIR@/$build_dir}"
  args+=("${arg//@SOURCE_DIR@/$src}")
done

export TMPDIR="$TEST_TMPDIR"
export HOME="${HOME:-$TEST_TMPDIR}"
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
exec bash "$src/$script" "${args[@]}"
