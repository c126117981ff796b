"""defender_build_dir_test: a shell test of tests/ (written for CMake's BUILD_DIR) as sh_test.

Contract: the script is run unchanged by //bazel:build_dir_test.sh, which lays out a writable
CMake-like BUILD_DIR of symlinks to the project's binaries in $TEST_TMPDIR and uses the runfiles
as SOURCE_DIR. In args, "@BUILD_DIR@" and "@SOURCE_DIR@" stand for those two directories.
Every such test gets all five binaries, tests/testlib.sh, and what `data` adds (files the
script reads from its own directory or from SOURCE_DIR). They start real processes that listen
on 127.0.0.1 (port 0) and must not share the machine's 2 cores with other heavy tests, hence
size "medium" (300 s, the most CMake gives them) unless told otherwise.
"""

BUILD_DIR_BINARIES = [
    "//server:defender-plugin",
    "//tools:defender-sandbox",
    "//tools:defenderctl",
    "//bench:defender-bench",
    "//bench:observability-bench",
]

def defender_build_dir_test(name, script, args = [], data = [], size = "medium", **kwargs):
    """sh_test `name` running `script` with `args` through //bazel:build_dir_test.sh.

    Args:
      name: the test's name (the CTest name of tests/CMakeLists.txt).
      script: the shell test, a file of the calling package.
      args: its arguments; "@BUILD_DIR@" and "@SOURCE_DIR@" are replaced.
      data: files it needs besides the binaries and tests/testlib.sh.
      size: the sh_test's size (its timeout).
      **kwargs: passed to the sh_test (tags, timeout, ...).
    """
    native.sh_test(
        name = name,
        srcs = ["//bazel:build_dir_test.sh"],
        args = ["$(rootpath %s)" % script] + args,
        data = [script, "//tests:testlib.sh"] + BUILD_DIR_BINARIES + data,
        size = size,
        **kwargs
    )
