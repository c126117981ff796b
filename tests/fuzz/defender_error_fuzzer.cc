// Defender's error answers: status, error body ({"error": {"code", "message"}}
// and the odd shapes) and Retry-After, as MapDefenderError reads them.
#include <cstddef>
#include <cstdint>

#include "adapters/defender/rest_defender_client.h"
#include "tests/fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace defender;
  const http::HttpResponse response =
      fuzz::ResponseFrom(absl::string_view(reinterpret_cast<const char*>(data), size));
  const absl::Status status = api::MapDefenderError(response, fuzz::kNow);
  fuzz::CheckError(status);
  return 0;
}
