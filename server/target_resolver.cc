#include "server/target_resolver.h"

#include <utility>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "adapters/common/error.h"
#include "adapters/defender/machine_action.h"

namespace defender {

void TargetResolver::ResolveFile(api::DefenderClient& client, const std::string& sha1,
                                 const std::string& sha256, const api::CallContext& context,
                                 Callback done) {
  if (!sha1.empty()) return std::move(done)(absl::AsciiStrToLower(sha1));
  const std::string key = absl::AsciiStrToLower(sha256);
  {
    absl::ReleasableMutexLock lock(&mu_);
    auto it = sha1_by_sha256_.find(key);
    if (it != sha1_by_sha256_.end()) {
      std::string found = it->second;
      lock.Release();
      return std::move(done)(std::move(found));
    }
  }
  client.GetFile(key, context, [this, key, done = std::move(done)](
                                   absl::StatusOr<api::FileInfo> file) mutable {
    if (!file.ok()) {
      if (file.status().code() != absl::StatusCode::kNotFound) {
        return std::move(done)(file.status());
      }
      absl::Status error =
          MakeError(absl::StatusCode::kNotFound,
                    absl::StrCat("Defender knows no file with SHA-256 ", key),
                    "FILE_NOT_FOUND", {{"field", "sha256"}, {"sha256", key}});
      if (auto info = GetErrorInfo(file.status())) {
        for (const char* name : {"tracking_id", "defender_code", "http_status"}) {
          auto it = info->metadata().find(name);
          if (it != info->metadata().end()) AddErrorMetadata(error, name, it->second);
        }
      }
      return std::move(done)(std::move(error));
    }
    if (file->sha1.size() != 40) {
      return std::move(done)(MakeError(
          absl::StatusCode::kFailedPrecondition,
          absl::StrCat("Defender knows the file with SHA-256 ", key,
                       " but not its SHA-1, which StopAndQuarantineFile needs"),
          "FILE_SHA1_UNKNOWN", {{"field", "sha256"}, {"sha256", key}}));
    }
    {
      absl::MutexLock lock(&mu_);
      if (sha1_by_sha256_.size() >= cache_entries_) sha1_by_sha256_.clear();
      sha1_by_sha256_[key] = file->sha1;
    }
    std::move(done)(file->sha1);
  });
}

void TargetResolver::ResolveMachine(api::DefenderClient& client, const std::string& machine_id,
                                    const std::string& computer_dns_name,
                                    const api::CallContext& context, Callback done) {
  if (!machine_id.empty()) return std::move(done)(absl::AsciiStrToLower(machine_id));
  const std::string name = computer_dns_name;
  client.FindMachinesByDnsName(
      name, context,
      [name, done = std::move(done)](
          absl::StatusOr<std::vector<api::MachineInfo>> machines) mutable {
        if (!machines.ok()) return std::move(done)(machines.status());
        if (machines->empty()) {
          return std::move(done)(MakeError(
              absl::StatusCode::kNotFound,
              absl::StrCat("Defender knows no device named '", name, "'"), "MACHINE_NOT_FOUND",
              {{"field", "computer_dns_name"}, {"computer_dns_name", name}}));
        }
        if (machines->size() > 1) {
          std::vector<std::string> ids, described;
          for (const api::MachineInfo& machine : *machines) {
            ids.push_back(machine.id);
            std::string text = machine.id;
            if (machine.last_seen) {
              absl::StrAppend(&text, " (last seen ", api::FormatDefenderTime(*machine.last_seen),
                              ")");
            }
            described.push_back(std::move(text));
          }
          return std::move(done)(MakeError(
              absl::StatusCode::kFailedPrecondition,
              absl::StrCat(machines->size(), " devices are named '", name,
                           "': ", absl::StrJoin(described, ", "),
                           "; give the machine_id of the one to act on"),
              "AMBIGUOUS_MACHINE",
              {{"field", "computer_dns_name"},
               {"computer_dns_name", name},
               {"machine_ids", absl::StrJoin(ids, ",")}}));
        }
        std::move(done)(absl::AsciiStrToLower(machines->front().id));
      });
}

}  // namespace defender
