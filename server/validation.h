// validation.h: checks of every RPC's input, done before anything leaves the
// process. Each failure is INVALID_ARGUMENT with an ErrorInfo whose reason names
// the problem and whose metadata "field" names the request field.
//
//   if (absl::Status s = ValidateQuarantineFileRequest(request); !s.ok()) return s;
//
// Bounds: comment 1..1,000 Unicode characters; request_id at most 128
// characters and no control characters; machine_id and sha1 exactly 40
// hexadecimal characters, sha256 64; computer_dns_name 1..255 characters of
// letters, digits, '-', '_' and '.'; a batch 1..kMaxBatchMachines devices.
#ifndef DEFENDER_SERVER_VALIDATION_H_
#define DEFENDER_SERVER_VALIDATION_H_

#include <cstddef>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "defender/v1/response_service.pb.h"

namespace defender {

// kMaxCommentChars bounds QuarantineFileRequest.comment, in Unicode characters.
inline constexpr size_t kMaxCommentChars = 1000;
// kMaxRequestIdChars bounds QuarantineFileRequest.request_id.
inline constexpr size_t kMaxRequestIdChars = 128;
// kMaxActionIdChars bounds GetMachineActionRequest.id.
inline constexpr size_t kMaxActionIdChars = 64;
// kMaxDnsNameChars bounds a computer_dns_name.
inline constexpr size_t kMaxDnsNameChars = 255;
// kMaxBatchMachines bounds the devices of one BatchQuarantineFile call.
inline constexpr size_t kMaxBatchMachines = 500;

// IsHex returns true when `text` is exactly `length` hexadecimal characters.
bool IsHex(absl::string_view text, size_t length);

// IsDnsName returns true when `name` is a plausible computerDnsName.
bool IsDnsName(absl::string_view name);

// ValidateQuarantineFileRequest checks that exactly one of machine_id and
// computer_dns_name and exactly one of sha1 and sha256 is given, and each
// field's form (reasons INVALID_MACHINE_ID (also when no device is given),
// INVALID_COMPUTER_DNS_NAME, INVALID_SHA1 (also when no hash is given),
// INVALID_SHA256, CONFLICTING_FIELDS, COMMENT_REQUIRED, COMMENT_TOO_LONG,
// INVALID_REQUEST_ID).
absl::Status ValidateQuarantineFileRequest(const v1::QuarantineFileRequest& request);

// ValidateGetMachineActionRequest checks id (reason INVALID_ACTION_ID): not
// empty, at most kMaxActionIdChars of letters, digits and '-'.
absl::Status ValidateGetMachineActionRequest(const v1::GetMachineActionRequest& request);

// ValidateWatchMachineActionRequest checks id as above.
absl::Status ValidateWatchMachineActionRequest(const v1::WatchMachineActionRequest& request);

// ValidateCancelMachineActionRequest checks id as above and comment as
// QuarantineFile's.
absl::Status ValidateCancelMachineActionRequest(const v1::CancelMachineActionRequest& request);

// ValidateBatchQuarantineFileRequest checks the hash, comment and request_id
// as QuarantineFile's, every device's form (metadata "index"), their number
// (reasons MACHINE_REQUIRED when there is none, TOO_MANY_MACHINES) and that no device appears
// twice (reason DUPLICATE_MACHINE; ids and names compared case-insensitively).
absl::Status ValidateBatchQuarantineFileRequest(const v1::BatchQuarantineFileRequest& request);

}  // namespace defender

#endif  // DEFENDER_SERVER_VALIDATION_H_
