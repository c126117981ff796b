#include "adapters/http/http_transport.h"

#include <curl/curl.h>

#include <algorithm>
#include <cstdlib>
#include <string>

#include "absl/strings/match.h"

namespace defender::http {

std::string HttpResponse::Header(absl::string_view name) const {
  for (const auto& [key, value] : headers) {
    if (absl::EqualsIgnoreCase(key, name)) return value;
  }
  return "";
}

std::string UrlEscape(absl::string_view text) {
  // curl_easy_escape works byte by byte (so chunks concatenate to the escape
  // of the whole), ignores its handle since libcurl 7.82, and refuses inputs
  // longer than CURL_MAX_INPUT_LENGTH (8 MB): feed it bounded chunks.
  constexpr size_t kChunk = 1 << 20;
  std::string out;
  out.reserve(text.size());
  while (!text.empty()) {
    const absl::string_view chunk = text.substr(0, kChunk);
    text.remove_prefix(chunk.size());
    char* escaped = curl_easy_escape(nullptr, chunk.data(), static_cast<int>(chunk.size()));
    if (escaped == nullptr) {
      // Only on allocation failure: there is no sensible degraded answer.
      std::abort();
    }
    out.append(escaped);
    curl_free(escaped);
  }
  return out;
}

std::string FormEncode(const std::vector<std::pair<std::string, std::string>>& fields) {
  std::string body;
  for (const auto& [key, value] : fields) {
    if (!body.empty()) body.push_back('&');
    body.append(UrlEscape(key));
    body.push_back('=');
    body.append(UrlEscape(value));
  }
  return body;
}

}  // namespace defender::http
