// log.h: one-line log records on stderr: "<RFC 3339 time> <LEVEL> <message>".
// Callers never pass secrets or tokens: messages are built from validated
// request fields and status messages, which never carry them.
#ifndef DEFENDER_SERVER_LOG_H_
#define DEFENDER_SERVER_LOG_H_

#include <cstdio>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace defender {

// Log writes one record. Thread-safe: one fwrite per record.
inline void Log(absl::string_view level, absl::string_view message) {
  std::string line = absl::StrCat(
      absl::FormatTime("%Y-%m-%dT%H:%M:%E3SZ", absl::Now(), absl::UTCTimeZone()), " ", level,
      " ", message, "\n");
  std::fwrite(line.data(), 1, line.size(), stderr);
}

}  // namespace defender

#endif  // DEFENDER_SERVER_LOG_H_
