#include "server/authorization.h"

#include <openssl/crypto.h>

#include <set>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "adapters/common/error.h"
#include "adapters/common/file.h"
#include "defender/v1/config.pb.h"
#include "google/protobuf/util/json_util.h"

namespace defender {
namespace {

absl::Status FileError(const std::string& origin, const std::string& key,
                       const std::string& message) {
  return MakeError(absl::StatusCode::kInvalidArgument,
                   absl::StrCat("authorization file ", origin, key.empty() ? "" : ": ", key, ": ",
                                message),
                   "INVALID_CONFIGURATION", {{"file", origin}});
}

bool SameToken(const std::string& a, const std::string& b) {
  return a.size() == b.size() && CRYPTO_memcmp(a.data(), b.data(), a.size()) == 0;
}

}  // namespace

CallerIdentity IdentityOf(const grpc::CallbackServerContext& context) {
  CallerIdentity who;
  who.peer = context.peer();
  std::shared_ptr<const grpc::AuthContext> auth = context.auth_context();
  if (auth != nullptr && auth->IsPeerAuthenticated()) {
    for (const grpc::string_ref& name : auth->GetPeerIdentity()) {
      who.certificate_names.emplace_back(name.data(), name.size());
    }
  }
  const auto& metadata = context.client_metadata();
  auto it = metadata.find("authorization");
  if (it != metadata.end()) {
    const std::string value(it->second.data(), it->second.size());
    if (absl::StartsWithIgnoreCase(value, "Bearer ")) {
      who.bearer_token = std::string(absl::StripAsciiWhitespace(value.substr(7)));
    }
  }
  return who;
}

absl::StatusOr<std::unique_ptr<Authorizer>> Authorizer::Load(const std::string& path) {
  absl::StatusOr<std::string> json = ReadWholeFile(path);
  if (!json.ok()) return FileError(path, "", "cannot be read");
  return Parse(*json, path);
}

absl::StatusOr<std::unique_ptr<Authorizer>> Authorizer::Parse(const std::string& json,
                                                              const std::string& origin) {
  v1::AuthorizationFile file;
  google::protobuf::util::JsonParseOptions options;
  options.ignore_unknown_fields = false;  // a misspelt key is an error, not an open door
  auto parsed = google::protobuf::util::JsonStringToMessage(json, &file, options);
  if (!parsed.ok()) {
    return FileError(origin, "",
                     absl::StrCat("not a valid authorization file: ", parsed.message().as_string()));
  }
  if (file.callers().empty()) return FileError(origin, "callers", "at least one caller is needed");
  std::vector<Caller> callers;
  std::set<std::string> names;
  for (int i = 0; i < file.callers_size(); ++i) {
    const v1::CallerEntry& entry = file.callers(i);
    const std::string key = absl::StrCat("callers[", i, "]");
    Caller caller;
    caller.name = entry.name();
    if (caller.name.empty()) return FileError(origin, key + ".name", "required");
    if (!names.insert(caller.name).second) {
      return FileError(origin, key + ".name", absl::StrCat("'", caller.name, "' is listed twice"));
    }
    caller.certificate_names.assign(entry.certificate_names().begin(),
                                    entry.certificate_names().end());
    for (const std::string& name : caller.certificate_names) {
      if (name.empty()) return FileError(origin, key + ".certificateNames", "empty name");
    }
    if (!entry.token_file().empty()) {
      absl::StatusOr<std::string> token = ReadWholeFile(entry.token_file());
      if (token.ok()) caller.token = std::string(absl::StripAsciiWhitespace(*token));
      if (caller.token.empty()) {
        return FileError(origin, key + ".tokenFile",
                         absl::StrCat("cannot read a token from ", entry.token_file()));
      }
    }
    if (caller.certificate_names.empty() && caller.token.empty()) {
      return FileError(origin, key, "needs certificateNames or tokenFile");
    }
    caller.tenants.assign(entry.tenants().begin(), entry.tenants().end());
    if (caller.tenants.empty()) return FileError(origin, key + ".tenants", "at least one tenant");
    callers.push_back(std::move(caller));
  }
  return std::unique_ptr<Authorizer>(new Authorizer(std::move(callers)));
}

absl::StatusOr<std::string> Authorizer::Check(const CallerIdentity& who,
                                              const std::string& tenant) const {
  std::shared_ptr<const std::vector<Caller>> callers;
  {
    absl::MutexLock lock(&mu_);
    callers = callers_;
  }
  const Caller* found = nullptr;
  for (const Caller& caller : *callers) {
    for (const std::string& name : caller.certificate_names) {
      for (const std::string& presented : who.certificate_names) {
        if (name == presented) found = &caller;
      }
    }
    if (found == nullptr && !caller.token.empty() && !who.bearer_token.empty() &&
        SameToken(caller.token, who.bearer_token)) {
      found = &caller;
    }
    if (found != nullptr) break;
  }
  if (found == nullptr) {
    const std::string described =
        who.certificate_names.empty()
            ? absl::StrCat(who.bearer_token.empty() ? "an anonymous caller" : "a caller with an unknown token",
                           " at ", who.peer)
            : absl::StrCat("certificate ", absl::StrJoin(who.certificate_names, ","), " at ",
                           who.peer);
    return MakeError(absl::StatusCode::kPermissionDenied,
                     absl::StrCat(described, " is not allowed to call this plugin"),
                     "CALLER_NOT_ALLOWED", {{"caller", described}, {"tenant", tenant}});
  }
  for (const std::string& allowed : found->tenants) {
    if (allowed == "*" || allowed == tenant) return found->name;
  }
  return MakeError(absl::StatusCode::kPermissionDenied,
                   absl::StrCat("caller '", found->name, "' may not act on tenant '", tenant, "'"),
                   "CALLER_NOT_ALLOWED", {{"caller", found->name}, {"tenant", tenant}});
}

void Authorizer::ReplaceWith(Authorizer&& other) {
  std::shared_ptr<const std::vector<Caller>> callers;
  {
    absl::MutexLock lock(&other.mu_);
    callers = std::move(other.callers_);
  }
  absl::MutexLock lock(&mu_);
  callers_ = std::move(callers);
}

}  // namespace defender
