// Entra ID token endpoint answers: tokens (expires_in / expires_on as numbers
// or strings) and AADSTS errors, as every client-credentials credential reads
// them (ParseTokenResponse).
#include <cstddef>
#include <cstdint>

#include "adapters/auth/token_endpoint.h"
#include "tests/fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace defender;
  const http::HttpResponse response =
      fuzz::ResponseFrom(absl::string_view(reinterpret_cast<const char*>(data), size));
  auto token = auth::ParseTokenResponse(response, fuzz::kNow);
  fuzz::CheckError(token.status());
  if (token.ok()) fuzz::Check(!token->token.empty(), "an empty token");
  return 0;
}
