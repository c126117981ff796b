// Managed identity endpoint answers (IMDS and App Service shapes: tokens with
// expires_in / expires_on, OAuth, App Service and nested errors, Retry-After).
#include <cstddef>
#include <cstdint>
#include <string>

#include "absl/strings/match.h"

#include "adapters/auth/managed_identity_credential.h"
#include "tests/fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace defender;
  std::string words;  // the first line after the status: "appservice", "user"
  const http::HttpResponse response =
      fuzz::ResponseFrom(absl::string_view(reinterpret_cast<const char*>(data), size), &words);
  const bool app_service = absl::StrContains(words, "appservice");
  const bool user_assigned = absl::StrContains(words, "user");
  auto token = auth::ParseManagedIdentityResponse(response, app_service, user_assigned,
                                                  fuzz::kNow - absl::Seconds(1), fuzz::kNow);
  fuzz::CheckError(token.status());
  if (token.ok()) fuzz::Check(!token->token.empty(), "an empty token");
  return 0;
}
