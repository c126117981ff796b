// validation.h: checks of every RPC's input, done before anything leaves the
// process. Each failure is INVALID_ARGUMENT with an ErrorInfo whose reason names
// the problem and whose metadata "field" names the request field.
//
//   if (absl::Status s = ValidateQuarantineFileRequest(request); !s.ok()) return s;
//
// Bounds: comment 1..1,000 Unicode characters; request_id at most 128
// characters; machine_id and sha1 exactly 40 hexadecimal characters.
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

// IsHex returns true when `text` is exactly `length` hexadecimal characters.
bool IsHex(absl::string_view text, size_t length);

// ValidateQuarantineFileRequest checks machine_id, sha1, comment and request_id
// (reasons INVALID_MACHINE_ID, INVALID_SHA1, COMMENT_REQUIRED,
// COMMENT_TOO_LONG, INVALID_REQUEST_ID).
absl::Status ValidateQuarantineFileRequest(const v1::QuarantineFileRequest& request);

// ValidateGetMachineActionRequest checks id (reason INVALID_ACTION_ID): not
// empty, at most kMaxActionIdChars of letters, digits and '-'.
absl::Status ValidateGetMachineActionRequest(const v1::GetMachineActionRequest& request);

}  // namespace defender

#endif  // DEFENDER_SERVER_VALIDATION_H_
