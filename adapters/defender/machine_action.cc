#include "adapters/defender/machine_action.h"

#include <cstddef>
#include <string>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "adapters/common/error.h"
#include "nlohmann/json.hpp"

namespace defender::api {
namespace {

using json = nlohmann::json;

// kBadUpstreamResponse is the ErrorInfo reason of an unreadable answer.
constexpr char kBadUpstreamResponse[] = "BAD_UPSTREAM_RESPONSE";

// StringField returns object[key] when it is a string, else "" (missing, null
// or any other type).
std::string StringField(const json& object, const char* key) {
  auto it = object.find(key);
  if (it == object.end() || !it->is_string()) return std::string();
  return it->get<std::string>();
}

// TimeField returns object[key] parsed by ParseDefenderTime, or nullopt.
std::optional<absl::Time> TimeField(const json& object, const char* key) {
  auto it = object.find(key);
  if (it == object.end() || !it->is_string()) return std::nullopt;
  return ParseDefenderTime(it->get_ref<const std::string&>());
}

// NormalizeStatus maps older or alternative spellings onto the documented ones.
std::string NormalizeStatus(std::string status) {
  if (status == "Canceled") return "Cancelled";
  if (status == "TimedOut") return "TimeOut";
  return status;
}

// BadResponse is the error for a body that is not a MachineAction. It never
// quotes the body: Defender's answers are not ours to echo.
absl::Status BadResponse(absl::string_view why) {
  return MakeError(absl::StatusCode::kInternal,
                   absl::StrCat("Defender answered with an unreadable MachineAction: ", why),
                   kBadUpstreamResponse);
}

// ConsumeDigits advances `pos` over exactly `n` ASCII digits of `text`.
bool ConsumeDigits(absl::string_view text, size_t& pos, size_t n) {
  for (size_t i = 0; i < n; ++i, ++pos) {
    if (pos >= text.size() || !absl::ascii_isdigit(static_cast<unsigned char>(text[pos]))) {
      return false;
    }
  }
  return true;
}

// ConsumeChar advances `pos` over `c`.
bool ConsumeChar(absl::string_view text, size_t& pos, char c) {
  if (pos >= text.size() || text[pos] != c) return false;
  ++pos;
  return true;
}

// HasDefenderTimeShape checks "YYYY-MM-DDTHH:MM:SS[.f{1,9}](Z|±HH:MM)" exactly,
// so that what absl::ParseTime tolerates beyond it (surrounding spaces,
// "infinite-future", offsets without a colon) is refused.
bool HasDefenderTimeShape(absl::string_view text) {
  size_t pos = 0;
  if (!ConsumeDigits(text, pos, 4) || !ConsumeChar(text, pos, '-') ||
      !ConsumeDigits(text, pos, 2) || !ConsumeChar(text, pos, '-') ||
      !ConsumeDigits(text, pos, 2)) {
    return false;
  }
  if (!ConsumeChar(text, pos, 'T') && !ConsumeChar(text, pos, 't')) return false;
  if (!ConsumeDigits(text, pos, 2) || !ConsumeChar(text, pos, ':') ||
      !ConsumeDigits(text, pos, 2) || !ConsumeChar(text, pos, ':') ||
      !ConsumeDigits(text, pos, 2)) {
    return false;
  }
  if (ConsumeChar(text, pos, '.')) {
    size_t digits = 0;
    while (pos < text.size() && absl::ascii_isdigit(static_cast<unsigned char>(text[pos]))) {
      ++pos;
      ++digits;
    }
    if (digits == 0 || digits > 9) return false;
  }
  if (ConsumeChar(text, pos, 'Z') || ConsumeChar(text, pos, 'z')) return pos == text.size();
  if (!ConsumeChar(text, pos, '+') && !ConsumeChar(text, pos, '-')) return false;
  return ConsumeDigits(text, pos, 2) && ConsumeChar(text, pos, ':') &&
         ConsumeDigits(text, pos, 2) && pos == text.size();
}

}  // namespace

bool MachineAction::IsFinal() const {
  return status == "Succeeded" || status == "Failed" || status == "TimeOut" ||
         status == "TimedOut" || status == "Cancelled" || status == "Canceled";
}

std::optional<absl::Time> ParseDefenderTime(absl::string_view text) {
  if (!HasDefenderTimeShape(text)) return std::nullopt;
  // %Ez accepts "Z" as well as "+HH:MM"; %E*S keeps every fractional digit
  // (up to nanoseconds), so ".3825985" is exactly 382598500 ns.
  absl::Time time;
  std::string error;
  if (!absl::ParseTime("%Y-%m-%d%ET%H:%M:%E*S%Ez", text, &time, &error)) return std::nullopt;
  if (time == absl::InfiniteFuture() || time == absl::InfinitePast()) return std::nullopt;
  return time;
}

namespace {

// FromJson reads one MachineAction object.
absl::StatusOr<MachineAction> FromJson(const json& body) {
  if (!body.is_object()) return BadResponse("not a JSON object");
  MachineAction action;
  action.id = StringField(body, "id");
  if (action.id.empty()) return BadResponse("no \"id\"");
  action.type = StringField(body, "type");
  action.status = NormalizeStatus(StringField(body, "status"));
  action.scope = StringField(body, "scope");
  action.requestor = StringField(body, "requestor");
  action.requestor_comment = StringField(body, "requestorComment");
  action.external_id = StringField(body, "externalID");
  action.request_source = StringField(body, "requestSource");
  action.cancellation_requestor = StringField(body, "cancellationRequestor");
  action.cancellation_comment = StringField(body, "cancellationComment");
  action.machine_id = StringField(body, "machineId");
  action.computer_dns_name = StringField(body, "computerDnsName");
  action.title = StringField(body, "title");
  action.creation_time = TimeField(body, "creationDateTimeUtc");
  action.last_update_time = TimeField(body, "lastUpdateDateTimeUtc");
  if (!action.last_update_time) action.last_update_time = TimeField(body, "lastUpdateTimeUtc");
  action.cancellation_time = TimeField(body, "cancellationDateTimeUtc");

  auto file = body.find("relatedFileInfo");
  if (file != body.end() && file->is_object()) {
    action.file_identifier = StringField(*file, "fileIdentifier");
    action.file_identifier_type = StringField(*file, "fileIdentifierType");
  }
  return action;
}

}  // namespace

std::string FormatDefenderTime(absl::Time time) {
  return absl::FormatTime("%Y-%m-%dT%H:%M:%E3SZ", time, absl::UTCTimeZone());
}

absl::StatusOr<MachineAction> ParseMachineAction(absl::string_view text) {
  // No exceptions: a parse error gives a discarded value.
  const json body = json::parse(text.begin(), text.end(), nullptr, /*allow_exceptions=*/false);
  if (body.is_discarded()) return BadResponse("not JSON");
  return FromJson(body);
}

absl::StatusOr<std::vector<MachineAction>> ParseMachineActionList(absl::string_view text) {
  const json body = json::parse(text.begin(), text.end(), nullptr, /*allow_exceptions=*/false);
  if (body.is_discarded()) return BadResponse("not JSON");
  if (!body.is_object()) return BadResponse("not a JSON object");
  auto value = body.find("value");
  if (value == body.end() || !value->is_array()) return BadResponse("no \"value\" array");
  std::vector<MachineAction> actions;
  for (const json& item : *value) {
    absl::StatusOr<MachineAction> action = FromJson(item);
    if (action.ok()) actions.push_back(*std::move(action));  // skip foreign entries
  }
  return actions;
}

}  // namespace defender::api
