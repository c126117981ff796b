// region.h: which Defender API host, Entra login authority and token scope a
// region or sovereign cloud uses (shared/docs/defender-api.md, section 1).
//
//   absl::StatusOr<Endpoints> e = ResolveEndpoints({.region = "eu"});
//   // e->api_base_url == "https://eu.api.security.microsoft.com"
//
// Every URL must be https; overrides replace one value each and are checked the
// same way.
#ifndef DEFENDER_ADAPTERS_REGION_REGION_H_
#define DEFENDER_ADAPTERS_REGION_REGION_H_

#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace defender::region {

// Endpoints are where a tenant's API calls and token requests go.
struct Endpoints {
  std::string api_base_url;    // e.g. "https://api.security.microsoft.com" (no trailing '/')
  std::string authority_host;  // e.g. "https://login.microsoftonline.com" (no trailing '/')
  std::string scope;           // e.g. "https://api.securitycenter.microsoft.com/.default"
};

// EndpointSettings are the user's choices; empty strings take the region's
// defaults.
struct EndpointSettings {
  std::string region = "global";  // see KnownRegions()
  std::string api_url;            // DEFENDER_API_URL
  std::string authority_host;     // AZURE_AUTHORITY_HOST
  std::string scope;              // DEFENDER_SCOPE
};

// KnownRegions lists the accepted region names.
const std::vector<std::string>& KnownRegions();

// ResolveEndpoints returns the endpoints for `settings`. An unknown region, a
// URL that is not https (or has a query, fragment or user info), or a scope
// not ending in "/.default" is INVALID_ARGUMENT naming the setting.
//
// Region names are matched case-insensitively, ignoring surrounding blanks.
// Errors carry an ErrorInfo with reason INVALID_CONFIGURATION and metadata
// "setting" (the environment variable, e.g. "DEFENDER_API_URL").
absl::StatusOr<Endpoints> ResolveEndpoints(const EndpointSettings& settings);

// NormalizeHttpsUrl checks that `url` is an absolute https URL with a host and
// no user info, query or fragment, and returns it without trailing '/'. A
// path ("https://proxy.example/defender") is accepted only when `allow_path`.
// Errors are INVALID_ARGUMENT (reason INVALID_CONFIGURATION) naming `setting`
// (e.g. "AZURE_AUTHORITY_HOST"); the URL itself is not repeated, so a
// mistyped secret pasted into the wrong setting is not echoed.
//
//   NormalizeHttpsUrl("https://login.microsoftonline.us/", "AZURE_AUTHORITY_HOST",
//                     /*allow_path=*/false)  // "https://login.microsoftonline.us"
absl::StatusOr<std::string> NormalizeHttpsUrl(const std::string& url, const std::string& setting,
                                              bool allow_path);

}  // namespace defender::region

#endif  // DEFENDER_ADAPTERS_REGION_REGION_H_
