// The --authz file (config.proto's AuthorizationFile in JSON), as
// Authorizer::Parse reads it, then one Check against what it accepted.
#include <cstddef>
#include <cstdint>
#include <string>

#include "server/authorization.h"
#include "tests/fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace defender;
  const std::string json(reinterpret_cast<const char*>(data), size);
  auto authz = Authorizer::Parse(json, "fuzz-authz.json");
  fuzz::CheckError(authz.status());
  if (authz.ok()) {
    CallerIdentity who;
    who.certificate_names = {"spiffe://fuzz/caller", "fuzz.example"};
    who.peer = "ipv4:127.0.0.1:1";
    auto caller = (*authz)->Check(who, "contoso");
    fuzz::CheckError(caller.status());
  }
  return 0;
}
