#include "server/authorization.h"

#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <string>

#include "absl/strings/str_cat.h"
#include "adapters/common/error.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace defender {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

constexpr char kToken[] = "tok-3f9a1c7e5b";

class AuthorizationTest : public ::testing::Test {
 protected:
  void SetUp() override {
    token_file_ = absl::StrCat(::testing::TempDir(), "authz_token_", getpid());
    std::ofstream(token_file_) << kToken << "\n";
  }
  void TearDown() override { std::remove(token_file_.c_str()); }

  std::unique_ptr<Authorizer> MustParse(const std::string& json) {
    auto parsed = Authorizer::Parse(json, "authz.json");
    EXPECT_TRUE(parsed.ok()) << parsed.status();
    return parsed.ok() ? *std::move(parsed) : nullptr;
  }
  std::string File() const { return token_file_; }

  std::string token_file_;
};

TEST_F(AuthorizationTest, CallersAreRecognisedByCertificateOrTokenAndLimitedToTheirTenants) {
  auto authz = MustParse(absl::StrCat(R"({"callers": [
      {"name": "runner", "certificateNames": ["runner.contoso.com"], "tenants": ["contoso"]},
      {"name": "soar", "tokenFile": ")", File(), R"(", "tenants": ["*"]}]})"));
  ASSERT_NE(authz, nullptr);

  CallerIdentity runner;
  runner.certificate_names = {"10.0.0.9", "runner.contoso.com"};
  runner.peer = "ipv4:10.0.0.9:5000";
  auto allowed = authz->Check(runner, "contoso");
  ASSERT_TRUE(allowed.ok()) << allowed.status();
  EXPECT_EQ(*allowed, "runner");
  auto other_tenant = authz->Check(runner, "fabrikam");
  EXPECT_EQ(other_tenant.status().code(), absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(ErrorReason(other_tenant.status()), "CALLER_NOT_ALLOWED");
  EXPECT_THAT(other_tenant.status().message(), HasSubstr("'runner' may not act on tenant 'fabrikam'"));

  CallerIdentity soar;
  soar.bearer_token = kToken;
  soar.peer = "ipv4:10.0.0.7:5000";
  for (const char* tenant : {"contoso", "fabrikam", "default"}) {
    auto any = authz->Check(soar, tenant);
    ASSERT_TRUE(any.ok()) << any.status();
    EXPECT_EQ(*any, "soar");
  }

  CallerIdentity wrong_token;
  wrong_token.bearer_token = "tok-3f9a1c7e5c";
  wrong_token.peer = "ipv4:10.0.0.8:5000";
  auto refused = authz->Check(wrong_token, "contoso");
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kPermissionDenied);
  EXPECT_THAT(refused.status().message(), HasSubstr("unknown token at ipv4:10.0.0.8:5000"));
  EXPECT_THAT(refused.status().message(), Not(HasSubstr("tok-")));

  CallerIdentity stranger;
  stranger.certificate_names = {"stranger.example.com"};
  stranger.peer = "ipv4:10.0.0.6:5000";
  refused = authz->Check(stranger, "contoso");
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kPermissionDenied);
  EXPECT_THAT(refused.status().message(), HasSubstr("certificate stranger.example.com"));

  CallerIdentity anonymous;
  anonymous.peer = "ipv4:10.0.0.5:5000";
  refused = authz->Check(anonymous, "contoso");
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kPermissionDenied);
  EXPECT_THAT(refused.status().message(), HasSubstr("anonymous caller"));
}

TEST_F(AuthorizationTest, ReplaceWithSwapsTheWholeMap) {
  auto authz = MustParse(R"({"callers": [
      {"name": "runner", "certificateNames": ["runner.contoso.com"], "tenants": ["contoso"]}]})");
  auto next = MustParse(R"({"callers": [
      {"name": "runner2", "certificateNames": ["runner2.contoso.com"], "tenants": ["*"]}]})");
  ASSERT_NE(authz, nullptr);
  ASSERT_NE(next, nullptr);
  CallerIdentity runner, runner2;
  runner.certificate_names = {"runner.contoso.com"};
  runner2.certificate_names = {"runner2.contoso.com"};
  EXPECT_TRUE(authz->Check(runner, "contoso").ok());
  EXPECT_FALSE(authz->Check(runner2, "contoso").ok());
  authz->ReplaceWith(std::move(*next));
  EXPECT_FALSE(authz->Check(runner, "contoso").ok());
  auto now = authz->Check(runner2, "fabrikam");
  ASSERT_TRUE(now.ok()) << now.status();
  EXPECT_EQ(*now, "runner2");
}

TEST_F(AuthorizationTest, BadFilesAreRefusedNamingTheKey) {
  const std::string missing_token_file = absl::StrCat(::testing::TempDir(), "no-such-token");
  struct Case {
    std::string json;
    std::string message;
  };
  const std::vector<Case> cases = {
      {"{}", "callers: at least one caller"},
      {R"({"callers": [{"name": "a", "certificateNames": ["x"], "tenants": ["t"], "tennants": []}]})",
       "not a valid authorization file"},
      {R"({"callers": [{"certificateNames": ["x"], "tenants": ["t"]}]})", "callers[0].name: required"},
      {R"({"callers": [{"name": "a", "certificateNames": ["x"], "tenants": ["t"]},
                       {"name": "a", "certificateNames": ["y"], "tenants": ["t"]}]})",
       "callers[1].name: 'a' is listed twice"},
      {R"({"callers": [{"name": "a", "tenants": ["t"]}]})", "needs certificateNames or tokenFile"},
      {R"({"callers": [{"name": "a", "certificateNames": ["x"]}]})", "callers[0].tenants"},
      {absl::StrCat(R"({"callers": [{"name": "a", "tokenFile": ")", missing_token_file,
                    R"(", "tenants": ["t"]}]})"),
       "callers[0].tokenFile: cannot read a token"},
  };
  for (const Case& c : cases) {
    auto parsed = Authorizer::Parse(c.json, "authz.json");
    EXPECT_EQ(parsed.status().code(), absl::StatusCode::kInvalidArgument) << c.json;
    EXPECT_THAT(parsed.status().message(), HasSubstr(c.message)) << c.json;
  }
  EXPECT_EQ(Authorizer::Load("/nonexistent/authz.json").status().code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace defender
