#include "adapters/region/region.h"

#include <string>
#include <vector>

#include "adapters/common/error.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace defender::region {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

constexpr char kCommercialAuthority[] = "https://login.microsoftonline.com";
constexpr char kCommercialScope[] = "https://api.securitycenter.microsoft.com/.default";

struct RegionRow {
  std::string region;
  std::string api;
  std::string authority;
  std::string scope;
};

class RegionTableTest : public ::testing::TestWithParam<RegionRow> {};

TEST_P(RegionTableTest, ResolvesDefaults) {
  const RegionRow& row = GetParam();
  EndpointSettings settings;
  settings.region = row.region;
  absl::StatusOr<Endpoints> endpoints = ResolveEndpoints(settings);
  ASSERT_TRUE(endpoints.ok()) << endpoints.status();
  EXPECT_EQ(endpoints->api_base_url, row.api);
  EXPECT_EQ(endpoints->authority_host, row.authority);
  EXPECT_EQ(endpoints->scope, row.scope);
}

INSTANTIATE_TEST_SUITE_P(
    RegionEveryRow, RegionTableTest,
    ::testing::Values(
        RegionRow{"global", "https://api.security.microsoft.com", kCommercialAuthority,
                  kCommercialScope},
        RegionRow{"us", "https://us.api.security.microsoft.com", kCommercialAuthority,
                  kCommercialScope},
        RegionRow{"eu", "https://eu.api.security.microsoft.com", kCommercialAuthority,
                  kCommercialScope},
        RegionRow{"uk", "https://uk.api.security.microsoft.com", kCommercialAuthority,
                  kCommercialScope},
        RegionRow{"au", "https://au.api.security.microsoft.com", kCommercialAuthority,
                  kCommercialScope},
        RegionRow{"swa", "https://swa.api.security.microsoft.com", kCommercialAuthority,
                  kCommercialScope},
        RegionRow{"ina", "https://ina.api.security.microsoft.com", kCommercialAuthority,
                  kCommercialScope},
        RegionRow{"aea", "https://aea.api.security.microsoft.com", kCommercialAuthority,
                  kCommercialScope},
        RegionRow{"gcc", "https://api-gcc.securitycenter.microsoft.us", kCommercialAuthority,
                  "https://securitycenter.onmicrosoft.com/windowsatpservice/.default"},
        RegionRow{"gcc-high", "https://api-gov.securitycenter.microsoft.us",
                  "https://login.microsoftonline.us",
                  "https://securitycenter.onmicrosoft.us/windowsatpservice/.default"},
        RegionRow{"dod", "https://api-gov.securitycenter.microsoft.us",
                  "https://login.microsoftonline.us",
                  "https://securitycenter.onmicrosoft.us/windowsatpservice/.default"}),
    [](const ::testing::TestParamInfo<RegionRow>& info) {
      std::string name = info.param.region;
      for (char& c : name) {
        if (c == '-') c = '_';
      }
      return name;
    });

TEST(RegionTest, KnownRegionsListsTheTable) {
  EXPECT_THAT(KnownRegions(), ElementsAre("global", "us", "eu", "uk", "au", "swa", "ina", "aea",
                                          "gcc", "gcc-high", "dod"));
}

TEST(RegionTest, EveryKnownRegionResolves) {
  for (const std::string& region : KnownRegions()) {
    EndpointSettings settings;
    settings.region = region;
    EXPECT_TRUE(ResolveEndpoints(settings).ok()) << region;
  }
}

TEST(RegionTest, DefaultSettingsAreGlobal) {
  absl::StatusOr<Endpoints> endpoints = ResolveEndpoints(EndpointSettings{});
  ASSERT_TRUE(endpoints.ok()) << endpoints.status();
  EXPECT_EQ(endpoints->api_base_url, "https://api.security.microsoft.com");
}

TEST(RegionTest, EmptyRegionIsGlobal) {
  EndpointSettings settings;
  settings.region = "";
  absl::StatusOr<Endpoints> endpoints = ResolveEndpoints(settings);
  ASSERT_TRUE(endpoints.ok()) << endpoints.status();
  EXPECT_EQ(endpoints->api_base_url, "https://api.security.microsoft.com");
}

TEST(RegionTest, RegionIsCaseInsensitive) {
  EndpointSettings settings;
  settings.region = " GCC-High ";
  absl::StatusOr<Endpoints> endpoints = ResolveEndpoints(settings);
  ASSERT_TRUE(endpoints.ok()) << endpoints.status();
  EXPECT_EQ(endpoints->api_base_url, "https://api-gov.securitycenter.microsoft.us");

  settings.region = "EU";
  endpoints = ResolveEndpoints(settings);
  ASSERT_TRUE(endpoints.ok()) << endpoints.status();
  EXPECT_EQ(endpoints->api_base_url, "https://eu.api.security.microsoft.com");
}

TEST(RegionTest, UnknownRegionListsKnownRegions) {
  EndpointSettings settings;
  settings.region = "mars";
  absl::StatusOr<Endpoints> endpoints = ResolveEndpoints(settings);
  ASSERT_FALSE(endpoints.ok());
  EXPECT_EQ(endpoints.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(endpoints.status().message(), HasSubstr("DEFENDER_REGION"));
  EXPECT_THAT(endpoints.status().message(), HasSubstr("mars"));
  EXPECT_THAT(endpoints.status().message(),
              HasSubstr("global, us, eu, uk, au, swa, ina, aea, gcc, gcc-high, dod"));
  EXPECT_EQ(ErrorReason(endpoints.status()), "INVALID_CONFIGURATION");
  auto info = GetErrorInfo(endpoints.status());
  ASSERT_TRUE(info.has_value());
  EXPECT_EQ(info->metadata().at("setting"), "DEFENDER_REGION");
}

TEST(RegionTest, ApiUrlOverrideReplacesOnlyTheApi) {
  EndpointSettings settings;
  settings.region = "gcc-high";
  settings.api_url = "https://proxy.example.com:8443/defender/";
  absl::StatusOr<Endpoints> endpoints = ResolveEndpoints(settings);
  ASSERT_TRUE(endpoints.ok()) << endpoints.status();
  EXPECT_EQ(endpoints->api_base_url, "https://proxy.example.com:8443/defender");
  EXPECT_EQ(endpoints->authority_host, "https://login.microsoftonline.us");
  EXPECT_EQ(endpoints->scope, "https://securitycenter.onmicrosoft.us/windowsatpservice/.default");
}

TEST(RegionTest, AuthorityOverrideReplacesOnlyTheAuthority) {
  EndpointSettings settings;
  settings.region = "eu";
  settings.authority_host = "https://127.0.0.1:9443/";
  absl::StatusOr<Endpoints> endpoints = ResolveEndpoints(settings);
  ASSERT_TRUE(endpoints.ok()) << endpoints.status();
  EXPECT_EQ(endpoints->api_base_url, "https://eu.api.security.microsoft.com");
  EXPECT_EQ(endpoints->authority_host, "https://127.0.0.1:9443");
  EXPECT_EQ(endpoints->scope, kCommercialScope);
}

TEST(RegionTest, ScopeOverrideReplacesOnlyTheScope) {
  EndpointSettings settings;
  settings.region = "gcc-high";
  settings.scope = "https://api-gov.securitycenter.microsoft.us/.default";
  absl::StatusOr<Endpoints> endpoints = ResolveEndpoints(settings);
  ASSERT_TRUE(endpoints.ok()) << endpoints.status();
  EXPECT_EQ(endpoints->api_base_url, "https://api-gov.securitycenter.microsoft.us");
  EXPECT_EQ(endpoints->authority_host, "https://login.microsoftonline.us");
  EXPECT_EQ(endpoints->scope, "https://api-gov.securitycenter.microsoft.us/.default");
}

TEST(RegionTest, AllOverridesTogether) {
  EndpointSettings settings;
  settings.api_url = "https://localhost:1234";
  settings.authority_host = "https://localhost:5678";
  settings.scope = "api://00000000-0000-0000-0000-000000000000/.default";
  absl::StatusOr<Endpoints> endpoints = ResolveEndpoints(settings);
  ASSERT_TRUE(endpoints.ok()) << endpoints.status();
  EXPECT_EQ(endpoints->api_base_url, "https://localhost:1234");
  EXPECT_EQ(endpoints->authority_host, "https://localhost:5678");
  EXPECT_EQ(endpoints->scope, "api://00000000-0000-0000-0000-000000000000/.default");
}

// InvalidUrlCase is a bad value for one URL setting.
struct InvalidUrlCase {
  std::string name;
  std::string value;
  std::string problem;  // a part of the expected message
};

class RegionInvalidUrlTest : public ::testing::TestWithParam<InvalidUrlCase> {};

void ExpectConfigError(const absl::Status& status, const std::string& setting,
                       const std::string& problem) {
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << status;
  EXPECT_THAT(status.message(), HasSubstr(setting));
  EXPECT_THAT(status.message(), HasSubstr(problem));
  EXPECT_EQ(ErrorReason(status), "INVALID_CONFIGURATION");
  auto info = GetErrorInfo(status);
  ASSERT_TRUE(info.has_value());
  EXPECT_EQ(info->domain(), kErrorDomain);
  EXPECT_EQ(info->metadata().at("setting"), setting);
}

TEST_P(RegionInvalidUrlTest, ApiUrlIsRejected) {
  EndpointSettings settings;
  settings.api_url = GetParam().value;
  absl::StatusOr<Endpoints> endpoints = ResolveEndpoints(settings);
  ASSERT_FALSE(endpoints.ok());
  ExpectConfigError(endpoints.status(), "DEFENDER_API_URL", GetParam().problem);
}

TEST_P(RegionInvalidUrlTest, AuthorityHostIsRejected) {
  EndpointSettings settings;
  settings.authority_host = GetParam().value;
  absl::StatusOr<Endpoints> endpoints = ResolveEndpoints(settings);
  ASSERT_FALSE(endpoints.ok());
  ExpectConfigError(endpoints.status(), "AZURE_AUTHORITY_HOST", GetParam().problem);
}

INSTANTIATE_TEST_SUITE_P(
    RegionEveryBadUrl, RegionInvalidUrlTest,
    ::testing::Values(
        InvalidUrlCase{"Http", "http://api.security.microsoft.com", "https"},
        InvalidUrlCase{"Ftp", "ftp://api.security.microsoft.com", "https"},
        InvalidUrlCase{"NoScheme", "api.security.microsoft.com", "https://"},
        InvalidUrlCase{"MissingHost", "https:///api", "host"},
        InvalidUrlCase{"OnlyScheme", "https://", "host"},
        InvalidUrlCase{"Query", "https://api.security.microsoft.com/?x=1", "query"},
        InvalidUrlCase{"EmptyQuery", "https://api.security.microsoft.com?", "query"},
        InvalidUrlCase{"Fragment", "https://api.security.microsoft.com#top", "fragment"},
        InvalidUrlCase{"UserInfo", "https://user:pass@api.security.microsoft.com", "user info"},
        InvalidUrlCase{"EmptyUserInfo", "https://@api.security.microsoft.com", "user info"},
        InvalidUrlCase{"Blank", "https://api.security microsoft.com", "not a valid URL"},
        InvalidUrlCase{"BadPort", "https://api.security.microsoft.com:99999", "not a valid URL"}),
    [](const ::testing::TestParamInfo<InvalidUrlCase>& info) { return info.param.name; });

TEST(RegionTest, ErrorsDoNotEchoUrlValues) {
  EndpointSettings settings;
  settings.api_url = "https://user:hunter2@proxy.example.com";
  absl::StatusOr<Endpoints> endpoints = ResolveEndpoints(settings);
  ASSERT_FALSE(endpoints.ok());
  EXPECT_THAT(std::string(endpoints.status().message()), ::testing::Not(HasSubstr("hunter2")));
}

TEST(RegionTest, AuthorityHostMustNotHaveAPath) {
  EndpointSettings settings;
  settings.authority_host = "https://login.microsoftonline.com/contoso.onmicrosoft.com";
  absl::StatusOr<Endpoints> endpoints = ResolveEndpoints(settings);
  ASSERT_FALSE(endpoints.ok());
  ExpectConfigError(endpoints.status(), "AZURE_AUTHORITY_HOST", "without a path");
}

TEST(RegionTest, ScopeMustEndInDefault) {
  for (const char* scope : {"https://api.securitycenter.microsoft.com",
                            "https://api.securitycenter.microsoft.com/Machine.Read.All",
                            "https://api.securitycenter.microsoft.com/.default/", "/.default",
                            "https://a/.default https://b/.default"}) {
    EndpointSettings settings;
    settings.scope = scope;
    absl::StatusOr<Endpoints> endpoints = ResolveEndpoints(settings);
    ASSERT_FALSE(endpoints.ok()) << scope;
    EXPECT_EQ(endpoints.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(endpoints.status().message(), HasSubstr("DEFENDER_SCOPE"));
    EXPECT_EQ(ErrorReason(endpoints.status()), "INVALID_CONFIGURATION");
  }
}

TEST(RegionTest, NormalizeHttpsUrlStripsTrailingSlashes) {
  auto url = NormalizeHttpsUrl("  https://login.microsoftonline.us//  ", "AZURE_AUTHORITY_HOST",
                               /*allow_path=*/false);
  ASSERT_TRUE(url.ok()) << url.status();
  EXPECT_EQ(*url, "https://login.microsoftonline.us");

  url = NormalizeHttpsUrl("HTTPS://[::1]:8443/a/b/", "DEFENDER_API_URL", /*allow_path=*/true);
  ASSERT_TRUE(url.ok()) << url.status();
  EXPECT_EQ(*url, "https://[::1]:8443/a/b");
}

}  // namespace
}  // namespace defender::region
