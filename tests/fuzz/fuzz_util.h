// fuzz_util.h: what the fuzz targets share: an HttpResponse read from the
// input, a fixed clock, and the contract checks.
#ifndef DEFENDER_TESTS_FUZZ_FUZZ_UTIL_H_
#define DEFENDER_TESTS_FUZZ_FUZZ_UTIL_H_

#include <cstdio>
#include <cstdlib>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "adapters/common/error.h"
#include "adapters/http/http_transport.h"

namespace defender::fuzz {

// kNow is a fixed "now" so a run is reproducible.
inline const absl::Time kNow = absl::FromUnixSeconds(1767225600);  // 2026-01-01

// ResponseFrom reads an input written like an HTTP answer's head, so the seeds
// stay readable:
//   429 [words...]\n
//   Retry-After: 120\n      (any number of "Name: value" lines)
//   \n
//   {"error": {...}}        (the body: everything after the blank line)
// A first line that is not a number gives status 0; `words` gets the rest of
// that line (the managed identity fuzzer reads its flags from it).
inline http::HttpResponse ResponseFrom(absl::string_view input, std::string* words = nullptr) {
  http::HttpResponse response;
  const size_t blank = input.find("\n\n");
  absl::string_view head = input.substr(0, blank);
  if (blank != absl::string_view::npos) response.body = std::string(input.substr(blank + 2));
  std::vector<absl::string_view> lines = absl::StrSplit(head, '\n');
  std::pair<absl::string_view, absl::string_view> first =
      absl::StrSplit(lines[0], absl::MaxSplits(' ', 1));
  if (!absl::SimpleAtoi(first.first, &response.status)) response.status = 0;
  if (words != nullptr) *words = std::string(first.second);
  for (size_t i = 1; i < lines.size(); ++i) {
    std::pair<absl::string_view, absl::string_view> header =
        absl::StrSplit(lines[i], absl::MaxSplits(':', 1));
    response.headers.emplace_back(std::string(header.first),
                                  std::string(absl::StripLeadingAsciiWhitespace(header.second)));
  }
  return response;
}

// Check aborts (a finding) when a parser breaks its own contract.
inline void Check(bool ok, const char* what) {
  if (!ok) {
    std::fprintf(stderr, "contract broken: %s\n", what);
    std::abort();
  }
}

// CheckError: every error the plugin produces carries an ErrorInfo with a
// reason (adapters/common/error.h), and a RetryInfo delay is never negative.
inline void CheckError(const absl::Status& status) {
  if (status.ok()) return;
  Check(!ErrorReason(status).empty(), "an error without an ErrorInfo reason");
  if (auto delay = GetRetryDelay(status)) Check(*delay >= absl::ZeroDuration(), "negative retry delay");
}

}  // namespace defender::fuzz

#endif  // DEFENDER_TESTS_FUZZ_FUZZ_UTIL_H_
