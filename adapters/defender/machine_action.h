// machine_action.h: Defender's MachineAction entity, and its lenient parser.
//
// Parsing follows what Defender really sends: unknown fields are ignored, any
// field may be null or missing, a field of the wrong type counts as missing,
// timestamps carry up to 7 fractional digits ("2018-12-04T12:15:04.3825985Z"),
// `lastUpdateDateTimeUtc` has an older spelling `lastUpdateTimeUtc`, and status
// "Canceled" means "Cancelled" ("TimedOut" likewise means "TimeOut").
//
//   absl::StatusOr<MachineAction> action = ParseMachineAction(response.body);
//   if (action.ok() && action->IsFinal()) { ... }
#ifndef DEFENDER_ADAPTERS_DEFENDER_MACHINE_ACTION_H_
#define DEFENDER_ADAPTERS_DEFENDER_MACHINE_ACTION_H_

#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"

namespace defender::api {

// MachineAction mirrors Defender's entity; strings are "" and times nullopt
// when Defender sent null or nothing.
struct MachineAction {
  std::string id;
  std::string type;    // e.g. "StopAndQuarantineFile"
  // "Pending", "InProgress", "Succeeded", "Failed", "TimeOut", "Cancelled";
  // any other value Defender sends is kept as it is.
  std::string status;
  std::string scope;
  std::string requestor;
  std::string requestor_comment;
  std::string external_id;
  std::string request_source;
  std::string cancellation_requestor;
  std::string cancellation_comment;
  std::string machine_id;
  std::string computer_dns_name;
  std::string title;
  std::optional<absl::Time> creation_time;
  std::optional<absl::Time> last_update_time;
  std::optional<absl::Time> cancellation_time;
  std::string file_identifier;
  std::string file_identifier_type;  // "Sha1", "Sha256", "Md5"

  // IsFinal says whether the status is Succeeded, Failed, TimeOut or Cancelled
  // (also in the spellings "TimedOut" and "Canceled").
  bool IsFinal() const;
};

// ParseMachineAction reads one MachineAction JSON object. A body that is not
// JSON, not an object, or has no non-empty string "id" is INTERNAL with reason
// BAD_UPSTREAM_RESPONSE; the error never quotes the body. Never throws.
absl::StatusOr<MachineAction> ParseMachineAction(absl::string_view json);

// ParseMachineActionList reads a list answer {"@odata.context": ..., "value":
// [MachineAction, ...]}; entries that are not readable actions are skipped. A
// body without a "value" array is INTERNAL with reason BAD_UPSTREAM_RESPONSE.
absl::StatusOr<std::vector<MachineAction>> ParseMachineActionList(absl::string_view json);

// FormatDefenderTime writes `time` as Defender's filters expect it:
// "2018-12-04T12:15:04.382Z" (UTC, milliseconds).
std::string FormatDefenderTime(absl::Time time);

// ParseDefenderTime reads an ISO 8601 time "YYYY-MM-DDTHH:MM:SS[.f](Z|±HH:MM)"
// with 0 to 9 fractional digits, all kept ("2018-12-04T12:15:04.3825985Z" is
// 382598500 ns past the second). Anything else (no zone, spaces, an
// impossible date) is nullopt.
std::optional<absl::Time> ParseDefenderTime(absl::string_view text);

}  // namespace defender::api

#endif  // DEFENDER_ADAPTERS_DEFENDER_MACHINE_ACTION_H_
