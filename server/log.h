// log.h: the plugin's log, one record per line on stderr.
//
// JSON by default, one object per line, with the keys HashiCorp's hclog
// writes ("@timestamp", "@level", "@message", "@module"), so go-plugin hosts
// and log shippers read it as structured data (the time with microseconds,
// hclog's format, which go-plugin hosts need to take a record's level), then
// the record's own fields:
//
//   {"@timestamp":"2026-12-03T06:40:00.123456Z","@level":"info","@module":"defender-plugin",
//    "@message":"QuarantineFile OK","rpc":"QuarantineFile","tenant":"default",...}
//
// The text format ("<RFC 3339 time> <LEVEL> <message> key=value ...") is for a
// terminal. Records below the configured level are dropped before they are
// built. Callers never pass secrets or tokens: fields come from validated
// request fields, configured names and status messages, which never carry
// them. Strings that are not UTF-8 are written with U+FFFD in place of the
// bad bytes, never dropped and never a crash.
//
//   SetLogOptions({.level = LogLevel::kInfo, .format = LogFormat::kJson});
//   Log(LogLevel::kWarn, "journal slow", {{"latency_ms", 812}});
#ifndef DEFENDER_SERVER_LOG_H_
#define DEFENDER_SERVER_LOG_H_

#include <cstdint>
#include <string>
#include <utility>
#include <variant>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace defender {

enum class LogLevel { kDebug = 0, kInfo = 1, kWarn = 2, kError = 3 };
enum class LogFormat { kJson, kText };

// LogOptions are the process's log settings.
struct LogOptions {
  LogLevel level = LogLevel::kInfo;
  LogFormat format = LogFormat::kJson;
};

// LogValue is one field's value.
using LogValue = std::variant<std::string, int64_t, double, bool>;
// LogFields are a record's fields, in the order they are written.
using LogFields = std::vector<std::pair<std::string, LogValue>>;

// SetLogOptions changes the settings for records written from now on.
// Thread-safe.
void SetLogOptions(const LogOptions& options);
LogOptions GetLogOptions();

// LogEnabled says whether a record at `level` would be written.
bool LogEnabled(LogLevel level);

// Log writes one record, if its level is enabled. Thread-safe: one write per
// record.
void Log(LogLevel level, absl::string_view message, const LogFields& fields = {});

// FormatLogRecord is the line Log writes (with its newline), at `time_text`.
std::string FormatLogRecord(LogFormat format, absl::string_view time_text, LogLevel level,
                            absl::string_view message, const LogFields& fields);

// ParseLogLevel reads "debug", "info", "warn" (or "warning") or "error",
// in any case.
absl::StatusOr<LogLevel> ParseLogLevel(absl::string_view text);
// ParseLogFormat reads "json" or "text".
absl::StatusOr<LogFormat> ParseLogFormat(absl::string_view text);

}  // namespace defender

#endif  // DEFENDER_SERVER_LOG_H_
