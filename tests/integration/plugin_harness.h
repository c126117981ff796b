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

#include <stdlib.h>  // mkdtemp

#include <cstdlib>

#include "absl/status/statusor.h"
#include "gtest/gtest.h"
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

// NewStateDir makes a fresh, empty directory for a plugin's journal.
inline std::string NewStateDir() {
  std::string path = ::testing::TempDir() + "defender-state-XXXXXX";
  if (::mkdtemp(path.data()) == nullptr) std::abort();
  return path;
}

// LoadTestConfig runs LoadConfig on "defender-plugin" + `flags` and `env`.
// Without --state-dir or DEFENDER_STATE_DIR the journal goes to a fresh
// directory (NewStateDir), so tests never share request ids.
inline absl::StatusOr<PluginConfig> LoadTestConfig(const std::vector<std::string>& flags,
                                                  const std::map<std::string, std::string>& env) {
  std::vector<const char*> argv = {"defender-plugin"};
  bool state_dir_given = env.count("DEFENDER_STATE_DIR") > 0;
  for (const std::string& flag : flags) {
    argv.push_back(flag.c_str());
    if (flag.rfind("--state-dir", 0) == 0) state_dir_given = true;
  }
  absl::StatusOr<PluginConfig> config =
      LoadConfig(static_cast<int>(argv.size()), argv.data(), EnvFrom(env));
  if (config.ok() && !state_dir_given) config->state_dir = NewStateDir();
  return config;
}

}  // namespace defender::testing

#endif  // DEFENDER_TESTS_INTEGRATION_PLUGIN_HARNESS_H_
