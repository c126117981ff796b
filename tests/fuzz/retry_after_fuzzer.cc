// Retry-After values: delay-seconds and the three HTTP-date forms.
#include <cstddef>
#include <cstdint>

#include "absl/strings/string_view.h"
#include "adapters/common/retry.h"
#include "tests/fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace defender;
  const absl::string_view value(reinterpret_cast<const char*>(data), size);
  for (absl::Time now : {fuzz::kNow, absl::UnixEpoch(), absl::FromUnixSeconds(4102444800)}) {
    auto delay = ParseRetryAfter(value, now);
    if (delay) {
      fuzz::Check(*delay >= absl::ZeroDuration(), "a negative Retry-After delay");
      fuzz::Check(*delay != absl::InfiniteDuration(), "an infinite Retry-After delay");
    }
  }
  return 0;
}
