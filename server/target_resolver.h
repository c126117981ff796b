// target_resolver.h: from what an alert gives (a SHA-256, a host name) to what
// StopAndQuarantineFile needs (the SHA-1, the device id).
//
//   resolver.ResolveFile(client, "", sha256, context, [](absl::StatusOr<std::string> sha1) {});
//   resolver.ResolveMachine(client, "", "desktop-1.contoso.com", context, ...);
//
// ResolveFile: a SHA-1 comes back lower-cased without a call; a SHA-256 is
// looked up with GET /api/files/{sha256} (the answer is cached: a hash's SHA-1
// never changes). Defender's 404 is NOT_FOUND (FILE_NOT_FOUND); a file entity
// without a SHA-1 is FAILED_PRECONDITION (FILE_SHA1_UNKNOWN).
// ResolveMachine: an id comes back lower-cased without a call; a host name is
// looked up with the machines API (not cached: devices are re-onboarded under
// new ids). No device is NOT_FOUND (MACHINE_NOT_FOUND); several are
// FAILED_PRECONDITION (AMBIGUOUS_MACHINE) whose message and metadata
// "machine_ids" name them. Other faults pass through as the client reports
// them.
#ifndef DEFENDER_SERVER_TARGET_RESOLVER_H_
#define DEFENDER_SERVER_TARGET_RESOLVER_H_

#include <string>

#include "absl/container/flat_hash_map.h"
#include "absl/functional/any_invocable.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "adapters/defender/defender_client.h"

namespace defender {

// TargetResolver resolves hashes and host names. Thread-safe.
class TargetResolver {
 public:
  using Callback = absl::AnyInvocable<void(absl::StatusOr<std::string>) &&>;

  // `cache_entries` bounds the SHA-256 cache (it is emptied when full).
  explicit TargetResolver(size_t cache_entries = 10000) : cache_entries_(cache_entries) {}

  // Exactly one of sha1 and sha256 is not empty (validated by the caller).
  void ResolveFile(api::DefenderClient& client, const std::string& sha1,
                   const std::string& sha256, const api::CallContext& context, Callback done);

  // Exactly one of machine_id and computer_dns_name is not empty.
  void ResolveMachine(api::DefenderClient& client, const std::string& machine_id,
                      const std::string& computer_dns_name, const api::CallContext& context,
                      Callback done);

 private:
  const size_t cache_entries_;
  absl::Mutex mu_;
  absl::flat_hash_map<std::string, std::string> sha1_by_sha256_ ABSL_GUARDED_BY(mu_);
};

}  // namespace defender

#endif  // DEFENDER_SERVER_TARGET_RESOLVER_H_
