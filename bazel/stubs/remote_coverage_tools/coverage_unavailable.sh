#!/bin/sh
# Offline stand-in for remote_coverage_tools' lcov_merger and coverage_report_generator.
echo "coverage is not available in this offline Bazel build (bazel/stubs/remote_coverage_tools)" >&2
exit 1
