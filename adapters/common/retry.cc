#include "adapters/common/retry.h"

#include <algorithm>
#include <cstdint>
#include <limits>
#include <string>

#include "absl/random/random.h"
#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/time/civil_time.h"

namespace defender {
namespace {

// ParseHttpDate reads the three HTTP-date forms of RFC 9110 section 5.6.7
// (always GMT). The obsolete RFC 850 form has a two-digit year: it is the
// year of `now`'s century unless that is more than 50 years ahead, then the
// century before (RFC 9110's rule).
absl::optional<absl::Time> ParseHttpDate(const std::string& value, absl::Time now) {
  absl::Time when;
  std::string error;
  // IMF-fixdate: "Sun, 06 Nov 1994 08:49:37 GMT".
  if (absl::ParseTime("%a, %d %b %Y %H:%M:%S GMT", value, absl::UTCTimeZone(), &when, &error)) {
    return when;
  }
  // asctime: "Sun Nov  6 08:49:37 1994" (a blank in the format matches any
  // run of blanks, so the day may be padded or not).
  if (absl::ParseTime("%a %b %e %H:%M:%S %Y", value, absl::UTCTimeZone(), &when, &error)) {
    return when;
  }
  // RFC 850: "Sunday, 06-Nov-94 08:49:37 GMT".
  if (absl::ParseTime("%A, %d-%b-%y %H:%M:%S GMT", value, absl::UTCTimeZone(), &when, &error)) {
    const absl::CivilSecond parsed = absl::ToCivilSecond(when, absl::UTCTimeZone());
    const absl::civil_year_t this_year = absl::ToCivilYear(now, absl::UTCTimeZone()).year();
    absl::civil_year_t year = this_year - this_year % 100 + parsed.year() % 100;
    if (year > this_year + 50) year -= 100;
    return absl::FromCivil(absl::CivilSecond(year, parsed.month(), parsed.day(), parsed.hour(),
                                             parsed.minute(), parsed.second()),
                           absl::UTCTimeZone());
  }
  return absl::nullopt;
}

}  // namespace

absl::optional<absl::Duration> ParseRetryAfter(absl::string_view value, absl::Time now) {
  const std::string text(absl::StripAsciiWhitespace(value));
  if (text.empty()) return absl::nullopt;
  // delay-seconds = 1*DIGIT: no sign, no fraction.
  if (std::all_of(text.begin(), text.end(),
                  [](char c) { return absl::ascii_isdigit(static_cast<unsigned char>(c)); })) {
    int64_t seconds = 0;
    if (!absl::SimpleAtoi(text, &seconds)) return absl::nullopt;  // beyond int64
    return absl::Seconds(seconds);
  }
  const absl::optional<absl::Time> when = ParseHttpDate(text, now);
  // absl::ParseTime also takes "infinite-future" / "infinite-past" whatever the
  // format: not an HTTP-date (found by tests/fuzz/retry_after_fuzzer).
  if (!when.has_value() || *when == absl::InfiniteFuture() || *when == absl::InfinitePast()) {
    return absl::nullopt;
  }
  return std::max(*when - now, absl::ZeroDuration());
}

absl::Duration BackoffDelay(int attempt, const BackoffPolicy& policy) {
  const absl::Duration cap = std::max(policy.max, absl::ZeroDuration());
  absl::Duration d = std::clamp(policy.initial, absl::ZeroDuration(), cap);
  // Multiply step by step, stopping at the cap, so no attempt number overflows
  // or loops long.
  const bool grows = policy.multiplier > 1.0;  // also false for NaN
  for (int i = 1; grows && i < attempt && d > absl::ZeroDuration() && d < cap; ++i) {
    d = std::min(cap, d * policy.multiplier);
  }
  const int64_t high = absl::ToInt64Nanoseconds(d);
  if (high <= 0) return absl::ZeroDuration();
  // absl::BitGen is not thread-safe: one per thread.
  thread_local absl::BitGen gen;
  return absl::Nanoseconds(absl::Uniform(absl::IntervalClosedClosed, gen, high / 2, high));
}

}  // namespace defender
