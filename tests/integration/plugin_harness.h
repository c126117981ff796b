// plugin_harness.h: what every end-to-end test does to run the plugin in
// process: configuration from given flags and a map standing in for the
// environment, then a PluginServer on 127.0.0.1:0.
//
//   auto config = LoadTestConfig({"--listen", "127.0.0.1:0"}, env);
//   auto server = PluginServer::Start(*config);
#ifndef DEFENDER_TESTS_INTEGRATION_PLUGIN_HARNESS_H_
#define DEFENDER_TESTS_INTEGRATION_PLUGIN_HARNESS_H_

#include <map>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "server/config.h"

namespace defender::testing {

// EnvFrom is an EnvLookup over `env` (a copy).
inline EnvLookup EnvFrom(std::map<std::string, std::string> env) {
  return [env = std::move(env)](const std::string& name) -> absl::optional<std::string> {
    auto it = env.find(name);
    if (it == env.end()) return absl::nullopt;
    return it->second;
  };
}

// LoadTestConfig runs LoadConfig on "defender-plugin" + `flags` and `env`.
inline absl::StatusOr<PluginConfig> LoadTestConfig(const std::vector<std::string>& flags,
                                                  const std::map<std::string, std::string>& env) {
  std::vector<const char*> argv = {"defender-plugin"};
  for (const std::string& flag : flags) argv.push_back(flag.c_str());
  return LoadConfig(static_cast<int>(argv.size()), argv.data(), EnvFrom(env));
}

}  // namespace defender::testing

#endif  // DEFENDER_TESTS_INTEGRATION_PLUGIN_HARNESS_H_
