// The --config file (config.proto's JSON mapping), as ParseConfigJson reads
// it. Secret environment names resolve to a fixed value; secret *files* named
// by an input are read from disk like the plugin would (scripts/fuzz runs the
// fuzzers in an empty scratch directory).
#include <cstddef>
#include <cstdint>
#include <string>

#include "server/config_file.h"
#include "tests/fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace defender;
  const std::string json(reinterpret_cast<const char*>(data), size);
  const EnvLookup env = [](const std::string& name) -> absl::optional<std::string> {
    if (name.empty() || name[0] == 'X') return absl::nullopt;
    return std::string("fuzz-secret-value");
  };
  auto contents = ParseConfigJson(json, "fuzz.json", env);
  fuzz::CheckError(contents.status());
  if (contents.ok()) fuzz::Check(!contents->tenants.empty(), "a config without a tenant");
  return 0;
}
