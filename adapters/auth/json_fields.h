// json_fields.h: reading the answers of token endpoints (Entra, IMDS, App
// Service) leniently, shared by the credentials in adapters/auth. Internal.
#ifndef DEFENDER_ADAPTERS_AUTH_JSON_FIELDS_H_
#define DEFENDER_ADAPTERS_AUTH_JSON_FIELDS_H_

#include <cmath>
#include <cstddef>
#include <string>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/string_view.h"
#include "nlohmann/json.hpp"

namespace defender::auth::internal {

// StringField returns `body[name]` if it is a string, else "".
inline std::string StringField(const nlohmann::json& body, const char* name) {
  auto it = body.find(name);
  if (it == body.end() || !it->is_string()) return "";
  return it->get<std::string>();
}

// NumberField reads `body[name]` given as a JSON number or as a numeric
// string (Entra v1 and managed identity send strings); false if neither or
// not finite.
inline bool NumberField(const nlohmann::json& body, const char* name, double& out) {
  auto it = body.find(name);
  if (it == body.end()) return false;
  if (it->is_number()) {
    out = it->get<double>();
  } else if (it->is_string()) {
    std::string text(absl::StripAsciiWhitespace(it->get<std::string>()));
    if (!absl::SimpleAtod(text, &out)) return false;
  } else {
    return false;
  }
  return std::isfinite(out);
}

// Printable keeps the printable ASCII of untrusted `text` (an answer from the
// network), cut to `max` characters (then "..."), so a status message stays
// one short line.
inline std::string Printable(absl::string_view text, size_t max) {
  std::string out;
  for (char c : text) {
    if (out.size() >= max) {
      out += "...";
      break;
    }
    const auto u = static_cast<unsigned char>(c);
    if (u >= 0x20 && u < 0x7f) out.push_back(c);
  }
  return out;
}

}  // namespace defender::auth::internal

#endif  // DEFENDER_ADAPTERS_AUTH_JSON_FIELDS_H_
