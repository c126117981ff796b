#include "adapters/defender/entities.h"

#include <cstdint>
#include <limits>
#include <optional>
#include <string>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "adapters/common/error.h"
#include "adapters/defender/machine_action.h"
#include "nlohmann/json.hpp"

namespace defender::api {
namespace {

using json = nlohmann::json;

// StringField returns object[key] when it is a string, else "".
std::string StringField(const json& object, const char* key) {
  auto it = object.find(key);
  if (it == object.end() || !it->is_string()) return std::string();
  return it->get<std::string>();
}

// BadResponse is the error for a body that is not the `entity` expected. It
// never quotes the body.
absl::Status BadResponse(absl::string_view entity, absl::string_view why) {
  return MakeError(absl::StatusCode::kInternal,
                   absl::StrCat("Defender answered with an unreadable ", entity, ": ", why),
                   "BAD_UPSTREAM_RESPONSE");
}

// Parse reads `text` as JSON without exceptions: a discarded value on error.
json Parse(absl::string_view text) {
  return json::parse(text.begin(), text.end(), nullptr, /*allow_exceptions=*/false);
}

// SizeField returns object[key] when it is an integer in [0, INT64_MAX].
std::optional<int64_t> SizeField(const json& object, const char* key) {
  auto it = object.find(key);
  if (it == object.end()) return std::nullopt;
  if (it->is_number_unsigned()) {
    const uint64_t value = it->get<uint64_t>();
    if (value > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) return std::nullopt;
    return static_cast<int64_t>(value);
  }
  if (it->is_number_integer()) {
    const int64_t value = it->get<int64_t>();
    if (value < 0) return std::nullopt;
    return value;
  }
  return std::nullopt;
}

// MachineFromJson reads one Machine object; nullopt when it has no id.
std::optional<MachineInfo> MachineFromJson(const json& item) {
  if (!item.is_object()) return std::nullopt;
  MachineInfo machine;
  machine.id = absl::AsciiStrToLower(StringField(item, "id"));
  if (machine.id.empty()) return std::nullopt;
  machine.computer_dns_name = StringField(item, "computerDnsName");
  machine.os_platform = StringField(item, "osPlatform");
  machine.health_status = StringField(item, "healthStatus");
  machine.last_ip_address = StringField(item, "lastIpAddress");
  auto last_seen = item.find("lastSeen");
  if (last_seen != item.end() && last_seen->is_string()) {
    machine.last_seen = ParseDefenderTime(last_seen->get_ref<const std::string&>());
  }
  return machine;
}

}  // namespace

absl::StatusOr<FileInfo> ParseFileInfo(absl::string_view text) {
  constexpr char kEntity[] = "File";
  const json body = Parse(text);
  if (body.is_discarded()) return BadResponse(kEntity, "not JSON");
  if (!body.is_object()) return BadResponse(kEntity, "not a JSON object");
  FileInfo file;
  file.sha1 = absl::AsciiStrToLower(StringField(body, "sha1"));
  file.sha256 = absl::AsciiStrToLower(StringField(body, "sha256"));
  if (file.sha1.empty() && file.sha256.empty()) {
    return BadResponse(kEntity, "neither \"sha1\" nor \"sha256\"");
  }
  file.md5 = StringField(body, "md5");
  file.file_type = StringField(body, "fileType");
  file.size = SizeField(body, "size");
  file.file_publisher = StringField(body, "filePublisher");
  file.signer = StringField(body, "signer");
  auto valid = body.find("isValidCertificate");
  if (valid != body.end() && valid->is_boolean()) file.is_valid_certificate = valid->get<bool>();
  file.determination_type = StringField(body, "determinationType");
  return file;
}

absl::StatusOr<std::vector<MachineInfo>> ParseMachineList(absl::string_view text) {
  constexpr char kEntity[] = "machine list";
  const json body = Parse(text);
  if (body.is_discarded()) return BadResponse(kEntity, "not JSON");
  if (!body.is_object()) return BadResponse(kEntity, "not a JSON object");
  auto value = body.find("value");
  if (value == body.end() || !value->is_array()) return BadResponse(kEntity, "no \"value\" array");
  std::vector<MachineInfo> machines;
  for (const json& item : *value) {
    std::optional<MachineInfo> machine = MachineFromJson(item);
    if (machine) machines.push_back(*std::move(machine));
  }
  return machines;
}

}  // namespace defender::api
