#include "server/validation.h"

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "adapters/common/error.h"

namespace defender {
namespace {

absl::Status FieldError(const std::string& field, const std::string& reason,
                        const std::string& message) {
  return MakeError(absl::StatusCode::kInvalidArgument, message, reason, {{"field", field}});
}

// Utf8Length counts code points in `text` (valid UTF-8: protobuf checks it).
size_t Utf8Length(absl::string_view text) {
  size_t count = 0;
  for (unsigned char c : text) count += (c & 0xC0) != 0x80;
  return count;
}

}  // namespace

bool IsHex(absl::string_view text, size_t length) {
  if (text.size() != length) return false;
  for (char c : text) {
    if (!absl::ascii_isxdigit(static_cast<unsigned char>(c))) return false;
  }
  return true;
}

absl::Status ValidateQuarantineFileRequest(const v1::QuarantineFileRequest& request) {
  if (!IsHex(request.machine_id(), 40)) {
    return FieldError("machine_id", "INVALID_MACHINE_ID",
                      "machine_id must be the 40-hex-character Defender device id");
  }
  if (!IsHex(request.sha1(), 40)) {
    return FieldError("sha1", "INVALID_SHA1",
                      "sha1 must be a SHA-1 hash of 40 hexadecimal characters");
  }
  if (request.comment().empty()) {
    return FieldError("comment", "COMMENT_REQUIRED",
                      "comment is required: Defender records it with the action");
  }
  if (Utf8Length(request.comment()) > kMaxCommentChars) {
    return FieldError("comment", "COMMENT_TOO_LONG",
                      absl::StrCat("comment must be at most ", kMaxCommentChars, " characters"));
  }
  if (request.request_id().size() > kMaxRequestIdChars) {
    return FieldError("request_id", "INVALID_REQUEST_ID",
                      absl::StrCat("request_id must be at most ", kMaxRequestIdChars,
                                   " characters"));
  }
  return absl::OkStatus();
}

absl::Status ValidateGetMachineActionRequest(const v1::GetMachineActionRequest& request) {
  const std::string& id = request.id();
  bool ok = !id.empty() && id.size() <= kMaxActionIdChars;
  for (char c : id) ok = ok && (absl::ascii_isalnum(static_cast<unsigned char>(c)) || c == '-');
  if (!ok) {
    return FieldError("id", "INVALID_ACTION_ID",
                      "id must be a machine action id (a GUID as returned by QuarantineFile)");
  }
  return absl::OkStatus();
}

}  // namespace defender
