// config_file.h: reads the --config file (proto/defender/v1/config.proto, in
// protobuf's JSON mapping) into tenant configurations.
//
//   absl::StatusOr<ConfigFileContents> file = ReadConfigFile("/etc/defender/plugin.json", env);
//
// Every problem stops the start (or a reload) with INVALID_ARGUMENT naming the
// key: unknown keys, missing fields, bad values, duplicate tenant names,
// secrets that cannot be read. Secrets come from files or named environment
// variables only; their values never appear in a message.
#ifndef DEFENDER_SERVER_CONFIG_FILE_H_
#define DEFENDER_SERVER_CONFIG_FILE_H_

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "server/config.h"

namespace defender {

// ConfigFileContents is what a config file says.
struct ConfigFileContents {
  std::vector<TenantConfig> tenants;  // the default tenant first
};

// ReadConfigFile reads and checks the file at `path`; `env` resolves
// secret_env / password_env names.
absl::StatusOr<ConfigFileContents> ReadConfigFile(const std::string& path, const EnvLookup& env);

// ParseConfigJson does the same for the file's text (`origin` names it in
// messages).
absl::StatusOr<ConfigFileContents> ParseConfigJson(const std::string& json,
                                                   const std::string& origin,
                                                   const EnvLookup& env);

}  // namespace defender

#endif  // DEFENDER_SERVER_CONFIG_FILE_H_
