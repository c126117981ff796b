// retry.h: the pieces every retrying caller shares: when to come back after a
// 429 (Retry-After) and how long to back off after a transient fault.
//
//   absl::optional<absl::Duration> wait = ParseRetryAfter(response.Header("Retry-After"), now);
//   absl::Duration pause = BackoffDelay(attempt, {.initial = absl::Milliseconds(200)});
#ifndef DEFENDER_ADAPTERS_COMMON_RETRY_H_
#define DEFENDER_ADAPTERS_COMMON_RETRY_H_

#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "absl/types/optional.h"

namespace defender {

// ParseRetryAfter reads a Retry-After value: delay-seconds ("120") or an
// HTTP-date ("Wed, 21 Oct 2015 07:28:00 GMT", also the RFC 850 and asctime
// forms), as a delay from `now` (never negative). nullopt when absent or
// unreadable.
absl::optional<absl::Duration> ParseRetryAfter(absl::string_view value, absl::Time now);

// BackoffPolicy shapes exponential backoff.
struct BackoffPolicy {
  absl::Duration initial = absl::Milliseconds(200);  // first pause (before jitter)
  double multiplier = 2.0;
  absl::Duration max = absl::Seconds(5);             // cap of one pause
};

// BackoffDelay is the pause before retry number `attempt` (1 = first retry):
// "full jitter", uniformly random in [d/2, d] with d = min(max, initial *
// multiplier^(attempt-1)). Thread-safe.
absl::Duration BackoffDelay(int attempt, const BackoffPolicy& policy = {});

}  // namespace defender

#endif  // DEFENDER_ADAPTERS_COMMON_RETRY_H_
