#include "server/config_file.h"

#include <algorithm>
#include <fstream>
#include <set>
#include <sstream>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "adapters/common/error.h"
#include "adapters/common/file.h"
#include "adapters/region/region.h"
#include "defender/v1/config.pb.h"
#include "google/protobuf/util/json_util.h"

namespace defender {
namespace {

absl::Status FileError(const std::string& origin, const std::string& key,
                       const std::string& problem) {
  return MakeError(absl::StatusCode::kInvalidArgument,
                   absl::StrCat(origin, ": ", key.empty() ? "" : absl::StrCat(key, ": "), problem),
                   "INVALID_CONFIGURATION", {{"file", origin}, {"key", key}});
}

bool ValidName(const std::string& name) {
  if (name.empty() || name.size() > 64) return false;
  for (char c : name) {
    if (!absl::ascii_isalnum(static_cast<unsigned char>(c)) && c != '.' && c != '_' && c != '-') {
      return false;
    }
  }
  return true;
}

bool Readable(const std::string& path) { return std::ifstream(path).good(); }

absl::StatusOr<std::string> ReadTrimmed(const std::string& path) {
  absl::StatusOr<std::string> text = ReadWholeFile(path);
  if (text.ok()) absl::StripTrailingAsciiWhitespace(&*text);
  return text;
}

// Secret resolves a secret named by a file or an environment variable
// (exactly one when `required`, at most one otherwise).
absl::StatusOr<std::string> Secret(const std::string& origin, const std::string& key,
                                   const std::string& file_field, const std::string& file,
                                   const std::string& env_field, const std::string& variable,
                                   bool required, const EnvLookup& env) {
  if (!file.empty() && !variable.empty()) {
    return FileError(origin, key, absl::StrCat("set ", file_field, " or ", env_field, ", not both"));
  }
  if (!file.empty()) {
    absl::StatusOr<std::string> value = ReadTrimmed(file);
    if (!value.ok()) return FileError(origin, key + "." + file_field, std::string(value.status().message()));
    if (value->empty()) return FileError(origin, key + "." + file_field, file + " is empty");
    return value;
  }
  if (!variable.empty()) {
    absl::optional<std::string> value = env(variable);
    if (!value || value->empty()) {
      return FileError(origin, key + "." + env_field,
                       absl::StrCat("environment variable ", variable, " is not set"));
    }
    return *value;
  }
  if (required) {
    return FileError(origin, key, absl::StrCat("set ", file_field, " or ", env_field,
                                               " (secrets are never written in the file)"));
  }
  return std::string();
}

absl::StatusOr<CredentialConfig> ReadCredential(const std::string& origin, const std::string& key,
                                                const v1::CredentialEntry& entry,
                                                const EnvLookup& env) {
  CredentialConfig credential;
  switch (entry.kind_case()) {
    case v1::CredentialEntry::kClientSecret: {
      const auto& secret = entry.client_secret();
      const std::string at = key + ".clientSecret";
      credential.kind = CredentialConfig::Kind::kClientSecret;
      credential.client_id = secret.client_id();
      if (credential.client_id.empty()) return FileError(origin, at + ".clientId", "required");
      absl::StatusOr<std::string> value =
          Secret(origin, at, "secretFile", secret.secret_file(), "secretEnv", secret.secret_env(),
                 /*required=*/true, env);
      if (!value.ok()) return value.status();
      credential.client_secret = *std::move(value);
      return credential;
    }
    case v1::CredentialEntry::kClientCertificate: {
      const auto& cert = entry.client_certificate();
      const std::string at = key + ".clientCertificate";
      credential.kind = CredentialConfig::Kind::kClientCertificate;
      credential.client_id = cert.client_id();
      if (credential.client_id.empty()) return FileError(origin, at + ".clientId", "required");
      credential.certificate_path = cert.certificate_path();
      if (credential.certificate_path.empty()) {
        return FileError(origin, at + ".certificatePath", "required");
      }
      if (!Readable(credential.certificate_path)) {
        return FileError(origin, at + ".certificatePath",
                         "cannot read " + credential.certificate_path);
      }
      absl::StatusOr<std::string> password =
          Secret(origin, at, "passwordFile", cert.password_file(), "passwordEnv",
                 cert.password_env(), /*required=*/false, env);
      if (!password.ok()) return password.status();
      credential.certificate_password = *std::move(password);
      const std::string alg = absl::AsciiStrToUpper(cert.signing_algorithm());
      if (!alg.empty() && alg != "PS256" && alg != "RS256") {
        return FileError(origin, at + ".signingAlgorithm", "must be PS256 or RS256");
      }
      if (!alg.empty()) credential.signing_algorithm = alg;
      return credential;
    }
    case v1::CredentialEntry::kWorkloadIdentity: {
      const auto& workload = entry.workload_identity();
      const std::string at = key + ".workloadIdentity";
      credential.kind = CredentialConfig::Kind::kWorkloadIdentity;
      credential.client_id = workload.client_id();
      if (credential.client_id.empty()) return FileError(origin, at + ".clientId", "required");
      credential.token_file = workload.token_file();
      if (credential.token_file.empty()) return FileError(origin, at + ".tokenFile", "required");
      return credential;
    }
    case v1::CredentialEntry::kManagedIdentity:
      credential.kind = CredentialConfig::Kind::kManagedIdentity;
      credential.client_id = entry.managed_identity().client_id();
      return credential;
    case v1::CredentialEntry::KIND_NOT_SET:
      break;
  }
  return FileError(origin, key,
                   "set one of clientSecret, clientCertificate, workloadIdentity, "
                   "managedIdentity");
}

// Rate maps the file's budget (0 = the plugin's, -1 = off) to TenantConfig's.
absl::StatusOr<int> Rate(const std::string& origin, const std::string& key, int value) {
  if (value < -1) return FileError(origin, key, "must be -1 (off), 0 (the plugin's) or more");
  if (value == 0) return -2;
  if (value == -1) return 0;
  return value;
}

}  // namespace

absl::StatusOr<ConfigFileContents> ParseConfigJson(const std::string& json,
                                                   const std::string& origin,
                                                   const EnvLookup& env) {
  v1::PluginConfigFile file;
  google::protobuf::util::JsonParseOptions options;
  options.ignore_unknown_fields = false;  // a misspelt key is an error, not a silent default
  auto parsed = google::protobuf::util::JsonStringToMessage(json, &file, options);
  if (!parsed.ok()) {
    return FileError(origin, "", absl::StrCat("not a valid config file: ", parsed.message().as_string()));
  }
  if (file.tenants().empty()) return FileError(origin, "tenants", "at least one tenant is needed");

  ConfigFileContents contents;
  std::set<std::string> names;
  for (int i = 0; i < file.tenants_size(); ++i) {
    const v1::TenantEntry& entry = file.tenants(i);
    const std::string key = absl::StrCat("tenants[", i, "]");
    TenantConfig tenant;
    tenant.name = entry.name();
    if (!ValidName(tenant.name)) {
      return FileError(origin, key + ".name", "1 to 64 of letters, digits, '.', '_' and '-'");
    }
    if (!names.insert(tenant.name).second) {
      return FileError(origin, key + ".name", absl::StrCat("'", tenant.name, "' appears twice"));
    }
    if (!entry.has_credential()) return FileError(origin, key + ".credential", "required");
    absl::StatusOr<CredentialConfig> credential =
        ReadCredential(origin, key + ".credential", entry.credential(), env);
    if (!credential.ok()) return credential.status();
    tenant.tenant_id = entry.tenant_id();
    if (tenant.tenant_id.empty() &&
        credential->kind != CredentialConfig::Kind::kManagedIdentity) {
      return FileError(origin, key + ".tenantId", "required");
    }
    tenant.credentials.push_back(*std::move(credential));

    region::EndpointSettings settings;
    settings.region = entry.region().empty() ? "global" : entry.region();
    settings.api_url = entry.api_url();
    settings.authority_host = entry.authority_host();
    settings.scope = entry.scope();
    absl::StatusOr<region::Endpoints> endpoints = region::ResolveEndpoints(settings);
    if (!endpoints.ok()) {
      return FileError(origin, key, std::string(endpoints.status().message()));
    }
    tenant.endpoints = *std::move(endpoints);

    absl::StatusOr<int> per_minute = Rate(origin, key + ".ratePerMinute", entry.rate_per_minute());
    if (!per_minute.ok()) return per_minute.status();
    absl::StatusOr<int> per_hour = Rate(origin, key + ".ratePerHour", entry.rate_per_hour());
    if (!per_hour.ok()) return per_hour.status();
    tenant.rate_per_minute = *per_minute;
    tenant.rate_per_hour = *per_hour;
    contents.tenants.push_back(std::move(tenant));
  }
  if (!file.default_tenant().empty()) {
    auto it = std::find_if(contents.tenants.begin(), contents.tenants.end(),
                           [&](const TenantConfig& t) { return t.name == file.default_tenant(); });
    if (it == contents.tenants.end()) {
      return FileError(origin, "defaultTenant",
                       absl::StrCat("no tenant is named '", file.default_tenant(), "'"));
    }
    std::rotate(contents.tenants.begin(), it, it + 1);
  }
  return contents;
}

absl::StatusOr<ConfigFileContents> ReadConfigFile(const std::string& path, const EnvLookup& env) {
  absl::StatusOr<std::string> json = ReadWholeFile(path);
  if (!json.ok()) return FileError(path, "", "cannot read the file");
  return ParseConfigJson(*json, path, env);
}

}  // namespace defender
