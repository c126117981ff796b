#include "adapters/redis/redis_client.h"

#include <openssl/sha.h>

#include <cstdio>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "adapters/common/error.h"

namespace defender::redis {
namespace {

absl::Status UrlError(absl::string_view problem) {
  return MakeError(absl::StatusCode::kInvalidArgument,
                   absl::StrCat("the Redis URL must be redis://HOST[:PORT][/DB]: ", problem),
                   "INVALID_REDIS_URL");
}

}  // namespace

std::string RedisUrl::Display() const { return absl::StrCat(host, ":", port, "/", db); }

absl::StatusOr<RedisUrl> ParseRedisUrl(absl::string_view url) {
  constexpr absl::string_view kScheme = "redis://";
  if (!absl::StartsWith(url, kScheme)) return UrlError("it does not start with redis://");
  absl::string_view rest = url.substr(kScheme.size());
  // Never echo what comes before an '@': it would be a password.
  if (rest.find('@') != absl::string_view::npos) {
    return UrlError("a user or password in the URL is not supported");
  }
  RedisUrl parsed;
  absl::string_view authority = rest;
  size_t slash = rest.find('/');
  if (slash != absl::string_view::npos) {
    authority = rest.substr(0, slash);
    absl::string_view db = rest.substr(slash + 1);
    if (!db.empty() && (!absl::SimpleAtoi(db, &parsed.db) || parsed.db < 0 || parsed.db > 15 ||
                        !absl::ascii_isdigit(db[0]))) {
      return UrlError(absl::StrCat("the database \"", db, "\" is not a number from 0 to 15"));
    }
  }
  absl::string_view port;
  if (absl::StartsWith(authority, "[")) {  // [IPv6]:port
    size_t close = authority.find(']');
    if (close == absl::string_view::npos) return UrlError("an unclosed [ in the host");
    parsed.host = std::string(authority.substr(1, close - 1));
    absl::string_view after = authority.substr(close + 1);
    if (!after.empty()) {
      if (after[0] != ':') return UrlError("something other than :PORT after the host");
      port = after.substr(1);
      if (port.empty()) return UrlError("an empty port");
    }
  } else {
    size_t colon = authority.find(':');
    parsed.host = std::string(authority.substr(0, colon));
    if (colon != absl::string_view::npos) {
      port = authority.substr(colon + 1);
      if (port.empty()) return UrlError("an empty port");
    }
  }
  if (parsed.host.empty()) return UrlError("no host");
  for (char c : parsed.host) {
    if (!absl::ascii_isalnum(c) && c != '.' && c != '-' && c != '_' && c != ':') {
      return UrlError("the host has a character a host name cannot have");
    }
  }
  if (!port.empty() && (!absl::SimpleAtoi(port, &parsed.port) || parsed.port < 1 ||
                        parsed.port > 65535 || !absl::ascii_isdigit(port[0]))) {
    return UrlError(absl::StrCat("the port \"", port, "\" is not a number from 1 to 65535"));
  }
  return parsed;
}

Script::Script(std::string body) : body_(std::move(body)) {
  unsigned char digest[SHA_DIGEST_LENGTH];
  SHA1(reinterpret_cast<const unsigned char*>(body_.data()), body_.size(), digest);
  char hex[2 * SHA_DIGEST_LENGTH + 1];
  for (int i = 0; i < SHA_DIGEST_LENGTH; ++i) std::snprintf(hex + 2 * i, 3, "%02x", digest[i]);
  sha1_.assign(hex, 2 * SHA_DIGEST_LENGTH);
}

}  // namespace defender::redis
