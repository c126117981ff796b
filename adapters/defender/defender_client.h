// defender_client.h: the Defender for Endpoint REST API, as the plugin uses it.
//
// Calls are asynchronous: `done` is called exactly once, later, on a transport
// thread, and must not block. Every call takes an absolute deadline that bounds
// token acquisition and the HTTP exchange together.
//
//   client.StopAndQuarantineFile({.machine_id = id, .sha1 = sha1, .comment = c},
//                                deadline, [](absl::StatusOr<MachineAction> a) { ... });
//
// Errors (absl::Status with an ErrorInfo, adapters/common/error.h):
//   HTTP 400 -> INVALID_ARGUMENT (DEFENDER_BAD_REQUEST); FAILED_PRECONDITION
//               for OsPlatformNotSupported / ClientVersionNotSupported
//               (DEFENDER_PRECONDITION_FAILED); ALREADY_EXISTS for
//               ActiveRequestAlreadyExists (ACTION_ALREADY_RUNNING)
//   HTTP 401 -> one new token and one retry, then UNAUTHENTICATED (DEFENDER_UNAUTHORIZED)
//   HTTP 403 -> PERMISSION_DENIED (DEFENDER_FORBIDDEN)
//   HTTP 404 -> NOT_FOUND (DEFENDER_NOT_FOUND), Defender's message kept
//   HTTP 429 -> RESOURCE_EXHAUSTED (DEFENDER_THROTTLED) with RetryInfo from Retry-After
//   HTTP 5xx -> UNAVAILABLE (DEFENDER_UNAVAILABLE), RetryInfo if Retry-After came
//   other HTTP statuses -> DEFENDER_UNEXPECTED_STATUS: UNAVAILABLE for 408,
//               INTERNAL otherwise
//   token faults -> as the TokenCredential reports them (token_credential.h)
//   transport faults -> as the transport reports them (http_transport.h), the
//               message prefixed with the operation, payloads kept
//   an unreadable answer -> INTERNAL (BAD_UPSTREAM_RESPONSE)
// Metadata: "http_status", "defender_code", "tracking_id" (Defender's error
// `target`), "defender_message" (each only when Defender sent it), and
// "retry_after_seconds" with a RetryInfo. No message or metadata ever holds
// the access token.
#ifndef DEFENDER_ADAPTERS_DEFENDER_DEFENDER_CLIENT_H_
#define DEFENDER_ADAPTERS_DEFENDER_DEFENDER_CLIENT_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/functional/any_invocable.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "adapters/common/cancellation.h"
#include "adapters/defender/machine_action.h"

namespace defender::api {

// StopAndQuarantineFileParams are the inputs of StopAndQuarantineFile, already
// validated by the caller (40-hex ids, a non-empty comment).
struct StopAndQuarantineFileParams {
  std::string machine_id;
  std::string sha1;
  std::string comment;
  // When not InfiniteFuture: an earlier request for this same action may have
  // reached Defender at or after this time (a call cut short by a restart of
  // the plugin). The client then looks for that action first (as after a
  // POST whose outcome is unknown) and sends the POST only if none is found.
  absl::Time maybe_sent_since = absl::InfiniteFuture();
};

// FileInfo is Defender's File entity (GET /api/files/{hash}): the fields the
// plugin uses, "" / nullopt when Defender sent null or nothing.
struct FileInfo {
  std::string sha1;    // 40 lowercase hex digits when present
  std::string sha256;  // 64 lowercase hex digits when present
  std::string md5;
  std::string file_type;
  std::optional<int64_t> size;
  std::string file_publisher;
  std::string signer;
  std::optional<bool> is_valid_certificate;
  std::string determination_type;
};

// MachineInfo is Defender's Machine entity (GET /api/machines): the fields
// the plugin uses.
struct MachineInfo {
  std::string id;                 // 40 lowercase hex digits
  std::string computer_dns_name;
  std::string os_platform;        // e.g. "Windows11", "Linux"
  std::string health_status;      // e.g. "Active", "Inactive"
  std::string last_ip_address;
  std::optional<absl::Time> last_seen;
};

// CallTrace gathers what Defender answered during one or more calls, for
// the log line of the RPC they serve: the HTTP status of the last answer
// and the last tracking id an error body carried. Thread-safe.
class CallTrace {
 public:
  // RecordAnswer notes an answer's HTTP status and, if not empty, its
  // tracking id.
  void RecordAnswer(int http_status, absl::string_view tracking_id) {
    absl::MutexLock lock(&mu_);
    last_http_status_ = http_status;
    if (!tracking_id.empty()) tracking_id_ = std::string(tracking_id);
  }
  // LastHttpStatus is 0 while no answer came.
  int LastHttpStatus() const {
    absl::MutexLock lock(&mu_);
    return last_http_status_;
  }
  std::string TrackingId() const {
    absl::MutexLock lock(&mu_);
    return tracking_id_;
  }

 private:
  mutable absl::Mutex mu_;
  int last_http_status_ ABSL_GUARDED_BY(mu_) = 0;
  std::string tracking_id_ ABSL_GUARDED_BY(mu_);
};

// CallContext bounds one call: everything it does (rate-slot waits, token
// requests, HTTP attempts, backoff) ends by `deadline`, and stops early with
// CANCELLED when `cancellation` is raised. Converts from a bare deadline.
// Every answer Defender gives the call is noted in `trace` when set.
struct CallContext {
  CallContext(absl::Time deadline = absl::InfiniteFuture(),  // NOLINT: implicit on purpose
              std::shared_ptr<Cancellation> cancellation = nullptr,
              std::shared_ptr<CallTrace> trace = nullptr)
      : deadline(deadline), cancellation(std::move(cancellation)), trace(std::move(trace)) {}
  absl::Time deadline;
  std::shared_ptr<Cancellation> cancellation;  // may be null
  std::shared_ptr<CallTrace> trace;            // may be null
};

// DefenderClient calls one tenant's Defender API. Thread-safe.
class DefenderClient {
 public:
  using ActionCallback = absl::AnyInvocable<void(absl::StatusOr<MachineAction>) &&>;
  using FileCallback = absl::AnyInvocable<void(absl::StatusOr<FileInfo>) &&>;
  using MachinesCallback = absl::AnyInvocable<void(absl::StatusOr<std::vector<MachineInfo>>) &&>;

  virtual ~DefenderClient() = default;

  // StopAndQuarantineFile: POST /api/machines/{id}/StopAndQuarantineFile.
  virtual void StopAndQuarantineFile(const StopAndQuarantineFileParams& params,
                                     const CallContext& context, ActionCallback done) = 0;

  // GetMachineAction: GET /api/machineactions/{id}.
  virtual void GetMachineAction(const std::string& action_id, const CallContext& context,
                                ActionCallback done) = 0;

  // CancelMachineAction: POST /api/machineactions/{id}/cancel {"Comment"}.
  // Returns the action as Defender answers it. Retried like a read (a second
  // cancel of the same action is harmless); Defender's refusal to cancel a
  // final action comes back as its 400 (INVALID_ARGUMENT).
  virtual void CancelMachineAction(const std::string& action_id, const std::string& comment,
                                   const CallContext& context, ActionCallback done) = 0;

  // GetFile: GET /api/files/{sha1 or sha256}. 404 -> NOT_FOUND
  // (DEFENDER_NOT_FOUND); an answer without a readable object is INTERNAL
  // (BAD_UPSTREAM_RESPONSE).
  virtual void GetFile(const std::string& hash, const CallContext& context,
                       FileCallback done) = 0;

  // FindMachinesByDnsName: GET /api/machines?$filter=computerDnsName eq
  // '<name>'. Every device Defender lists (possibly none); entries without a
  // string id are skipped.
  virtual void FindMachinesByDnsName(const std::string& computer_dns_name,
                                     const CallContext& context, MachinesCallback done) = 0;
};

}  // namespace defender::api

#endif  // DEFENDER_ADAPTERS_DEFENDER_DEFENDER_CLIENT_H_
