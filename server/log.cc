#include "server/log.h"

#include <atomic>
#include <cstdio>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "nlohmann/json.hpp"

namespace defender {
namespace {

std::atomic<int> g_level{static_cast<int>(LogLevel::kInfo)};
std::atomic<int> g_format{static_cast<int>(LogFormat::kJson)};

const char* LevelName(LogLevel level) {
  switch (level) {
    case LogLevel::kDebug: return "debug";
    case LogLevel::kInfo: return "info";
    case LogLevel::kWarn: return "warn";
    case LogLevel::kError: return "error";
  }
  return "info";
}

// TextValue is a field's value in the text format: strings quoted when they
// hold a space, a quote or a control character, escaped as JSON would.
std::string TextValue(const LogValue& value) {
  if (const auto* text = std::get_if<std::string>(&value)) {
    bool plain = !text->empty();
    for (unsigned char c : *text) {
      if (c <= ' ' || c == '"' || c == '\\' || c >= 0x7f) plain = false;
    }
    if (plain) return *text;
    return nlohmann::json(*text).dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  }
  if (const auto* number = std::get_if<int64_t>(&value)) return absl::StrCat(*number);
  if (const auto* number = std::get_if<double>(&value)) return absl::StrCat(*number);
  return std::get<bool>(value) ? "true" : "false";
}

}  // namespace

void SetLogOptions(const LogOptions& options) {
  g_level.store(static_cast<int>(options.level));
  g_format.store(static_cast<int>(options.format));
}

LogOptions GetLogOptions() {
  return LogOptions{static_cast<LogLevel>(g_level.load()),
                    static_cast<LogFormat>(g_format.load())};
}

bool LogEnabled(LogLevel level) { return static_cast<int>(level) >= g_level.load(); }

std::string FormatLogRecord(LogFormat format, absl::string_view time_text, LogLevel level,
                            absl::string_view message, const LogFields& fields) {
  if (format == LogFormat::kText) {
    std::string line = absl::StrCat(time_text, " ", absl::AsciiStrToUpper(LevelName(level)), " ",
                                    message);
    for (const auto& [key, value] : fields) absl::StrAppend(&line, " ", key, "=", TextValue(value));
    line.push_back('\n');
    return line;
  }
  nlohmann::ordered_json record;
  record["@timestamp"] = std::string(time_text);
  record["@level"] = LevelName(level);
  record["@module"] = "defender-plugin";
  record["@message"] = std::string(message);
  for (const auto& [key, value] : fields) {
    std::visit([&record, &key = key](const auto& v) { record[key] = v; }, value);
  }
  std::string line = record.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  line.push_back('\n');
  return line;
}

void Log(LogLevel level, absl::string_view message, const LogFields& fields) {
  if (!LogEnabled(level)) return;
  const std::string line = FormatLogRecord(
      static_cast<LogFormat>(g_format.load()),
      absl::FormatTime("%Y-%m-%dT%H:%M:%E6SZ", absl::Now(), absl::UTCTimeZone()), level, message,
      fields);
  std::fwrite(line.data(), 1, line.size(), stderr);
}

absl::StatusOr<LogLevel> ParseLogLevel(absl::string_view text) {
  const std::string lower = absl::AsciiStrToLower(text);
  if (lower == "debug") return LogLevel::kDebug;
  if (lower == "info") return LogLevel::kInfo;
  if (lower == "warn" || lower == "warning") return LogLevel::kWarn;
  if (lower == "error") return LogLevel::kError;
  return absl::InvalidArgumentError("must be debug, info, warn or error");
}

absl::StatusOr<LogFormat> ParseLogFormat(absl::string_view text) {
  const std::string lower = absl::AsciiStrToLower(text);
  if (lower == "json") return LogFormat::kJson;
  if (lower == "text") return LogFormat::kText;
  return absl::InvalidArgumentError("must be json or text");
}

}  // namespace defender
