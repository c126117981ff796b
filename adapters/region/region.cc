#include "adapters/region/region.h"

#include <curl/curl.h>

#include <memory>
#include <string>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/string_view.h"
#include "adapters/common/error.h"

namespace defender::region {
namespace {

constexpr char kReason[] = "INVALID_CONFIGURATION";

constexpr char kCommercialAuthority[] = "https://login.microsoftonline.com";
constexpr char kCommercialScope[] = "https://api.securitycenter.microsoft.com/.default";
constexpr char kGovAuthority[] = "https://login.microsoftonline.us";
// GCC requests the commercial audience under its WindowsDefenderATP spelling
// (defender-api.md section 1: the ".us" scope failed for GCC users).
constexpr char kGccScope[] = "https://securitycenter.onmicrosoft.com/windowsatpservice/.default";
constexpr char kGovScope[] = "https://securitycenter.onmicrosoft.us/windowsatpservice/.default";
constexpr char kGovApi[] = "https://api-gov.securitycenter.microsoft.us";

absl::Status ConfigError(const std::string& setting, absl::string_view problem) {
  return MakeError(absl::StatusCode::kInvalidArgument, absl::StrCat(setting, " ", problem), kReason,
                   {{"setting", setting}});
}

// DefaultsFor returns the table row of `region` (already lower-cased), or
// false when the region is unknown.
bool DefaultsFor(const std::string& region, Endpoints& out) {
  if (region == "global") {
    out = {"https://api.security.microsoft.com", kCommercialAuthority, kCommercialScope};
    return true;
  }
  for (const char* geo : {"us", "eu", "uk", "au", "swa", "ina", "aea"}) {
    if (region == geo) {
      out = {absl::StrCat("https://", geo, ".api.security.microsoft.com"), kCommercialAuthority,
             kCommercialScope};
      return true;
    }
  }
  if (region == "gcc") {
    out = {"https://api-gcc.securitycenter.microsoft.us", kCommercialAuthority, kGccScope};
    return true;
  }
  if (region == "gcc-high" || region == "dod") {
    out = {kGovApi, kGovAuthority, kGovScope};
    return true;
  }
  return false;
}

// UrlPart returns one part of a parsed URL, or false if the URL has none.
bool UrlPart(CURLU* url, CURLUPart part, std::string& out) {
  char* text = nullptr;
  if (curl_url_get(url, part, &text, 0) != CURLUE_OK) return false;
  out = text != nullptr ? text : "";
  curl_free(text);
  return true;
}

absl::StatusOr<std::string> ValidateScope(const std::string& raw) {
  const std::string scope(absl::StripAsciiWhitespace(raw));
  constexpr absl::string_view kSuffix = "/.default";
  if (scope.size() <= kSuffix.size() || !absl::EndsWith(scope, kSuffix)) {
    return ConfigError("DEFENDER_SCOPE",
                       "must be the API's resource followed by \"/.default\" (e.g. "
                       "\"https://api.securitycenter.microsoft.com/.default\")");
  }
  for (char c : scope) {
    // Scopes are sent space-separated: a blank would split this one in two.
    if (absl::ascii_isspace(static_cast<unsigned char>(c)) ||
        absl::ascii_iscntrl(static_cast<unsigned char>(c))) {
      return ConfigError("DEFENDER_SCOPE", "must not contain blanks or control characters");
    }
  }
  return scope;
}

}  // namespace

const std::vector<std::string>& KnownRegions() {
  static const auto* regions = new std::vector<std::string>{
      "global", "us", "eu", "uk", "au", "swa", "ina", "aea", "gcc", "gcc-high", "dod"};
  return *regions;
}

absl::StatusOr<std::string> NormalizeHttpsUrl(const std::string& raw, const std::string& setting,
                                              bool allow_path) {
  const std::string text(absl::StripAsciiWhitespace(raw));
  const size_t scheme_end = text.find("://");
  if (scheme_end == std::string::npos) {
    return ConfigError(setting, "must be an absolute URL starting with https://");
  }
  // libcurl forgives "https:///host"; a URL without host is a mistake here.
  if (scheme_end + 3 >= text.size() || text[scheme_end + 3] == '/') {
    return ConfigError(setting, "must name a host (https://host)");
  }
  // libcurl drops an empty query or fragment ("https://h?"): check the text too.
  if (text.find('?') != std::string::npos) {
    return ConfigError(setting, "must not have a query string ('?')");
  }
  if (text.find('#') != std::string::npos) {
    return ConfigError(setting, "must not have a fragment ('#')");
  }

  std::unique_ptr<CURLU, decltype(&curl_url_cleanup)> url(curl_url(), &curl_url_cleanup);
  if (url == nullptr) return absl::ResourceExhaustedError("curl_url: out of memory");
  const CURLUcode rc =
      curl_url_set(url.get(), CURLUPART_URL, text.c_str(), CURLU_NON_SUPPORT_SCHEME);
  if (rc != CURLUE_OK) {
    return ConfigError(setting, absl::StrCat("is not a valid URL (", curl_url_strerror(rc), ")"));
  }
  std::string scheme, host, user, password, path, normalized;
  if (!UrlPart(url.get(), CURLUPART_SCHEME, scheme) || scheme != "https") {
    return ConfigError(setting, "must use https");
  }
  if (!UrlPart(url.get(), CURLUPART_HOST, host) || host.empty()) {
    return ConfigError(setting, "must name a host (https://host)");
  }
  if (UrlPart(url.get(), CURLUPART_USER, user) ||
      UrlPart(url.get(), CURLUPART_PASSWORD, password)) {
    return ConfigError(setting, "must not contain user info ('user@')");
  }
  UrlPart(url.get(), CURLUPART_PATH, path);
  while (!path.empty() && path.back() == '/') path.pop_back();
  if (!path.empty() && !allow_path) {
    return ConfigError(setting, "must be only https://host[:port], without a path");
  }
  if (!UrlPart(url.get(), CURLUPART_URL, normalized)) {
    return ConfigError(setting, "is not a valid URL");
  }
  while (!normalized.empty() && normalized.back() == '/') normalized.pop_back();
  return normalized;
}

absl::StatusOr<Endpoints> ResolveEndpoints(const EndpointSettings& settings) {
  std::string region = absl::AsciiStrToLower(absl::StripAsciiWhitespace(settings.region));
  if (region.empty()) region = "global";
  Endpoints endpoints;
  if (!DefaultsFor(region, endpoints)) {
    return ConfigError(
        "DEFENDER_REGION",
        absl::StrCat("names an unknown region \"", absl::CHexEscape(region.substr(0, 32)),
                     "\"; known regions: ", absl::StrJoin(KnownRegions(), ", ")));
  }
  if (!absl::StripAsciiWhitespace(settings.api_url).empty()) {
    auto url = NormalizeHttpsUrl(settings.api_url, "DEFENDER_API_URL", /*allow_path=*/true);
    if (!url.ok()) return url.status();
    endpoints.api_base_url = *std::move(url);
  }
  if (!absl::StripAsciiWhitespace(settings.authority_host).empty()) {
    auto url =
        NormalizeHttpsUrl(settings.authority_host, "AZURE_AUTHORITY_HOST", /*allow_path=*/false);
    if (!url.ok()) return url.status();
    endpoints.authority_host = *std::move(url);
  }
  if (!absl::StripAsciiWhitespace(settings.scope).empty()) {
    auto scope = ValidateScope(settings.scope);
    if (!scope.ok()) return scope.status();
    endpoints.scope = *std::move(scope);
  }
  return endpoints;
}

}  // namespace defender::region
