// error.h: errors as absl::Status carrying AIP-193 details.
//
// Every error the plugin produces is an absl::Status whose payloads are packed
// google.rpc messages (ErrorInfo, RetryInfo), keyed by their type URL. The gRPC
// boundary (server/status_conversion.h) turns the payloads into the
// google.rpc.Status details of the gRPC status, so details are built once, where
// the error is found, and translated in exactly one place.
//
//   return MakeError(absl::StatusCode::kNotFound, "machine not found",
//                    "DEFENDER_NOT_FOUND",
//                    {{"defender_code", "ResourceNotFound"}, {"http_status", "404"}});
#ifndef DEFENDER_ADAPTERS_COMMON_ERROR_H_
#define DEFENDER_ADAPTERS_COMMON_ERROR_H_

#include <map>
#include <optional>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "google/rpc/error_details.pb.h"

namespace defender {

// kErrorDomain is the ErrorInfo.domain of every error the plugin produces.
inline constexpr char kErrorDomain[] = "defender-plugin";

// kErrorInfoTypeUrl / kRetryInfoTypeUrl key the payloads of an absl::Status.
inline constexpr char kErrorInfoTypeUrl[] = "type.googleapis.com/google.rpc.ErrorInfo";
inline constexpr char kRetryInfoTypeUrl[] = "type.googleapis.com/google.rpc.RetryInfo";

// MakeError returns a status with `code` and `message`, carrying an ErrorInfo
// with `reason` (stable UPPER_SNAKE), kErrorDomain and `metadata`.
// Messages and metadata must never hold a secret or a token.
absl::Status MakeError(absl::StatusCode code, absl::string_view message,
                       absl::string_view reason,
                       const std::map<std::string, std::string>& metadata = {});

// GetErrorInfo returns the ErrorInfo carried by `status`, if any.
std::optional<google::rpc::ErrorInfo> GetErrorInfo(const absl::Status& status);

// ErrorReason returns the ErrorInfo.reason of `status`, or "" if it has none.
std::string ErrorReason(const absl::Status& status);

// ErrorMetadata returns the ErrorInfo metadata entry `key` of `status`, or ""
// if it has none.
std::string ErrorMetadata(const absl::Status& status, const std::string& key);

// OutcomeUnknown says a failed call may still have created its action at
// Defender (ErrorInfo metadata outcome = "unknown").
bool OutcomeUnknown(const absl::Status& status);

// SetRetryDelay attaches a RetryInfo telling the caller when to come back.
void SetRetryDelay(absl::Status& status, absl::Duration delay);

// GetRetryDelay returns the RetryInfo delay carried by `status`, if any.
std::optional<absl::Duration> GetRetryDelay(const absl::Status& status);

// AddErrorMetadata adds (or replaces) one metadata entry of the ErrorInfo of
// `status`; a status without ErrorInfo is left as it is.
void AddErrorMetadata(absl::Status& status, const std::string& key, const std::string& value);

}  // namespace defender

#endif  // DEFENDER_ADAPTERS_COMMON_ERROR_H_
