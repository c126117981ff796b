// file.h: reading a whole small file (configuration, PEM, token files).
//
//   absl::StatusOr<std::string> pem = ReadWholeFile("/etc/defender/plugin.crt");
#ifndef DEFENDER_ADAPTERS_COMMON_FILE_H_
#define DEFENDER_ADAPTERS_COMMON_FILE_H_

#include <string>

#include "absl/status/statusor.h"

namespace defender {

// ReadWholeFile returns the file's bytes, or NOT_FOUND "cannot read PATH"
// when it cannot be opened or read. The message never holds the content.
absl::StatusOr<std::string> ReadWholeFile(const std::string& path);

}  // namespace defender

#endif  // DEFENDER_ADAPTERS_COMMON_FILE_H_
