#include "server/validation.h"

#include <map>
#include <string>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "adapters/common/error.h"

namespace defender {
namespace {

absl::Status FieldError(const std::string& field, const std::string& reason,
                        const std::string& message,
                        std::map<std::string, std::string> metadata = {}) {
  metadata["field"] = field;
  return MakeError(absl::StatusCode::kInvalidArgument, message, reason, metadata);
}

// Utf8Length counts code points in `text` (valid UTF-8: protobuf checks it).
size_t Utf8Length(absl::string_view text) {
  size_t count = 0;
  for (unsigned char c : text) count += (c & 0xC0) != 0x80;
  return count;
}

absl::Status ValidateComment(const std::string& comment) {
  if (comment.empty()) {
    return FieldError("comment", "COMMENT_REQUIRED",
                      "comment is required: Defender records it with the action");
  }
  if (Utf8Length(comment) > kMaxCommentChars) {
    return FieldError("comment", "COMMENT_TOO_LONG",
                      absl::StrCat("comment must be at most ", kMaxCommentChars, " characters"));
  }
  return absl::OkStatus();
}

absl::Status ValidateRequestId(const std::string& request_id) {
  bool ok = Utf8Length(request_id) <= kMaxRequestIdChars;
  unsigned char previous = 0;
  for (unsigned char c : request_id) {
    // C0 controls and DEL, and the C1 controls U+0080..U+009F (0xC2 0x80..0x9F
    // in UTF-8: NEL, CSI, ... which terminals and log readers act on too).
    ok = ok && c >= 0x20 && c != 0x7f && !(previous == 0xC2 && c >= 0x80 && c <= 0x9F);
    previous = c;
  }
  if (!ok) {
    return FieldError("request_id", "INVALID_REQUEST_ID",
                      absl::StrCat("request_id must be at most ", kMaxRequestIdChars,
                                   " characters, none of them a control character"));
  }
  return absl::OkStatus();
}

// ValidateHash checks that exactly one of sha1 and sha256 is given, well formed.
absl::Status ValidateHash(const std::string& sha1, const std::string& sha256) {
  if (sha1.empty() && sha256.empty()) {
    return FieldError("sha1", "INVALID_SHA1",
                      "the file is required: give its sha1 (40 hex characters) or its sha256 "
                      "(64 hex characters)");
  }
  if (!sha1.empty() && !sha256.empty()) {
    return FieldError("sha256", "CONFLICTING_FIELDS",
                      "give either sha1 or sha256, not both");
  }
  if (!sha1.empty() && !IsHex(sha1, 40)) {
    return FieldError("sha1", "INVALID_SHA1",
                      "sha1 must be a SHA-1 hash of 40 hexadecimal characters");
  }
  if (!sha256.empty() && !IsHex(sha256, 64)) {
    return FieldError("sha256", "INVALID_SHA256",
                      "sha256 must be a SHA-256 hash of 64 hexadecimal characters");
  }
  return absl::OkStatus();
}

absl::Status ValidateActionId(const std::string& id) {
  bool ok = !id.empty() && id.size() <= kMaxActionIdChars;
  for (char c : id) ok = ok && (absl::ascii_isalnum(static_cast<unsigned char>(c)) || c == '-');
  if (!ok) {
    return FieldError("id", "INVALID_ACTION_ID",
                      "id must be a machine action id (a GUID as returned by QuarantineFile)");
  }
  return absl::OkStatus();
}

// CheckDevices checks one repeated device field of a batch: each value's form
// and that none repeats an earlier one of the field (case-insensitively). The
// error's metadata "index" is the device's position in the batch, which is
// `first_index` for the field's first value.
absl::Status CheckDevices(const std::string& field,
                          const google::protobuf::RepeatedPtrField<std::string>& values,
                          bool (*valid)(absl::string_view), const std::string& reason,
                          const std::string& rule, int first_index) {
  absl::flat_hash_map<std::string, int> seen;
  for (int i = 0; i < values.size(); ++i) {
    const std::map<std::string, std::string> index = {{"index", absl::StrCat(first_index + i)}};
    if (!valid(values[i])) {
      return FieldError(field, reason, absl::StrCat(field, "[", i, "] must be ", rule), index);
    }
    auto [it, inserted] = seen.emplace(absl::AsciiStrToLower(values[i]), i);
    if (!inserted) {
      return FieldError(field, "DUPLICATE_MACHINE",
                        absl::StrCat(field, "[", i, "] repeats ", field, "[", it->second, "]"),
                        index);
    }
  }
  return absl::OkStatus();
}

}  // namespace

bool IsHex(absl::string_view text, size_t length) {
  if (text.size() != length) return false;
  for (char c : text) {
    if (!absl::ascii_isxdigit(static_cast<unsigned char>(c))) return false;
  }
  return true;
}

bool IsDnsName(absl::string_view name) {
  if (name.empty() || name.size() > kMaxDnsNameChars || name.front() == '.' ||
      name.front() == '-') {
    return false;
  }
  for (char c : name) {
    if (!absl::ascii_isalnum(static_cast<unsigned char>(c)) && c != '-' && c != '.' &&
        c != '_') {
      return false;
    }
  }
  return true;
}

absl::Status ValidateQuarantineFileRequest(const v1::QuarantineFileRequest& request) {
  if (request.machine_id().empty() && request.computer_dns_name().empty()) {
    return FieldError("machine_id", "INVALID_MACHINE_ID",
                      "the device is required: give its machine_id (40 hex characters) or its "
                      "computer_dns_name");
  }
  if (!request.machine_id().empty() && !request.computer_dns_name().empty()) {
    return FieldError("computer_dns_name", "CONFLICTING_FIELDS",
                      "give either machine_id or computer_dns_name, not both");
  }
  if (!request.machine_id().empty() && !IsHex(request.machine_id(), 40)) {
    return FieldError("machine_id", "INVALID_MACHINE_ID",
                      "machine_id must be the 40-hex-character Defender device id");
  }
  if (!request.computer_dns_name().empty() && !IsDnsName(request.computer_dns_name())) {
    return FieldError("computer_dns_name", "INVALID_COMPUTER_DNS_NAME",
                      "computer_dns_name must be a host name of at most 255 letters, digits, "
                      "'-', '_' and '.'");
  }
  if (absl::Status hash = ValidateHash(request.sha1(), request.sha256()); !hash.ok()) return hash;
  if (absl::Status comment = ValidateComment(request.comment()); !comment.ok()) return comment;
  return ValidateRequestId(request.request_id());
}

absl::Status ValidateGetMachineActionRequest(const v1::GetMachineActionRequest& request) {
  return ValidateActionId(request.id());
}

absl::Status ValidateWatchMachineActionRequest(const v1::WatchMachineActionRequest& request) {
  return ValidateActionId(request.id());
}

absl::Status ValidateCancelMachineActionRequest(const v1::CancelMachineActionRequest& request) {
  if (absl::Status id = ValidateActionId(request.id()); !id.ok()) return id;
  return ValidateComment(request.comment());
}

absl::Status ValidateBatchQuarantineFileRequest(const v1::BatchQuarantineFileRequest& request) {
  const size_t count =
      static_cast<size_t>(request.machine_ids_size() + request.computer_dns_names_size());
  if (count == 0) {
    return FieldError("machine_ids", "MACHINE_REQUIRED",
                      "at least one device is required in machine_ids or computer_dns_names");
  }
  if (count > kMaxBatchMachines) {
    return FieldError("machine_ids", "TOO_MANY_MACHINES",
                      absl::StrCat("a batch holds at most ", kMaxBatchMachines, " devices (got ",
                                   count, "); split it"));
  }
  if (absl::Status ids = CheckDevices(
          "machine_ids", request.machine_ids(), [](absl::string_view id) { return IsHex(id, 40); },
          "INVALID_MACHINE_ID", "a 40-hex-character Defender device id", 0);
      !ids.ok()) {
    return ids;
  }
  if (absl::Status names = CheckDevices("computer_dns_names", request.computer_dns_names(),
                                        &IsDnsName, "INVALID_COMPUTER_DNS_NAME",
                                        "a host name of at most 255 letters, digits, '-', '_' "
                                        "and '.'",
                                        request.machine_ids_size());
      !names.ok()) {
    return names;
  }
  if (absl::Status hash = ValidateHash(request.sha1(), request.sha256()); !hash.ok()) return hash;
  if (absl::Status comment = ValidateComment(request.comment()); !comment.ok()) return comment;
  return ValidateRequestId(request.request_id());
}

}  // namespace defender
