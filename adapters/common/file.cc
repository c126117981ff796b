#include "adapters/common/file.h"

#include <fstream>
#include <sstream>

namespace defender {

absl::StatusOr<std::string> ReadWholeFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError("cannot read " + path);
  std::ostringstream content;
  content << in.rdbuf();
  if (in.bad()) return absl::NotFoundError("cannot read " + path);
  return content.str();
}

}  // namespace defender
