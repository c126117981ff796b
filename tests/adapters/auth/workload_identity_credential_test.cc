#include "adapters/auth/workload_identity_credential.h"

#include <stdlib.h>
#include <unistd.h>

#include <cstdio>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/time.h"
#include "adapters/common/clock.h"
#include "adapters/common/error.h"
#include "adapters/common/scheduler.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/adapters/fake_transport.h"

namespace defender::auth {
namespace {

using ::defender::testing::FakeTransport;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::Not;
using ::testing::Pair;

constexpr char kTenant[] = "72f988bf-86f1-41af-91ab-2d7cd011db47";
constexpr char kClientId[] = "11111111-2222-3333-4444-555555555555";
constexpr char kScope[] = "https://api.securitycenter.microsoft.com/.default";
constexpr char kFederatedToken[] = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJzeXN0ZW06c2EifQ.c2lnbmF0dXJl";
constexpr char kRotatedToken[] = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJyb3RhdGVkIn0.bmV3LXNpZ25hdHVyZQ";
constexpr char kTokenAnswer[] = R"({"token_type":"Bearer","expires_in":3599,"access_token":"tok"})";

// RawForm splits a form body into its still-escaped fields, in order.
std::vector<std::pair<std::string, std::string>> RawForm(const std::string& body) {
  std::vector<std::pair<std::string, std::string>> fields;
  for (absl::string_view pair : absl::StrSplit(body, '&')) {
    std::vector<std::string> kv = absl::StrSplit(pair, absl::MaxSplits('=', 1));
    EXPECT_EQ(kv.size(), 2u) << body;
    if (kv.size() == 2) fields.emplace_back(kv[0], kv[1]);
  }
  return fields;
}

class WorkloadIdentityCredentialTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string pattern = ::testing::TempDir() + "/workload_identity_XXXXXX";
    ASSERT_NE(mkdtemp(pattern.data()), nullptr);
    dir_ = pattern;
    token_file_ = dir_ + "/token";
  }
  void TearDown() override {
    std::remove(token_file_.c_str());
    rmdir(dir_.c_str());
  }

  // WriteToken replaces the token file, as the kubelet does when it rotates it.
  void WriteToken(const std::string& content) {
    const std::string temporary = token_file_ + ".new";
    FILE* file = std::fopen(temporary.c_str(), "wb");
    ASSERT_NE(file, nullptr);
    std::fwrite(content.data(), 1, content.size(), file);
    std::fclose(file);
    ASSERT_EQ(std::rename(temporary.c_str(), token_file_.c_str()), 0);
  }

  WorkloadIdentityCredentialOptions Options() const {
    WorkloadIdentityCredentialOptions options;
    options.tenant_id = kTenant;
    options.client_id = kClientId;
    options.token_file = token_file_;
    return options;
  }

  std::unique_ptr<WorkloadIdentityCredential> Make(Scheduler* scheduler = nullptr) {
    auto credential = WorkloadIdentityCredential::Create(Options(), transport_, clock_, scheduler);
    EXPECT_TRUE(credential.ok()) << credential.status();
    return credential.ok() ? *std::move(credential) : nullptr;
  }

  absl::StatusOr<AccessToken> Get(TokenCredential& credential) {
    TokenRequestContext context;
    context.scopes = {kScope};
    std::optional<absl::StatusOr<AccessToken>> result;
    credential.GetToken(context, [&result](absl::StatusOr<AccessToken> token) {
      EXPECT_FALSE(result.has_value()) << "callback called twice";
      result = std::move(token);
    });
    EXPECT_TRUE(result.has_value()) << "callback not called";
    return result.value_or(absl::InternalError("no callback"));
  }

  std::string AssertionOf(size_t i) {
    const auto requests = transport_.requests();
    EXPECT_LT(i, requests.size());
    if (i >= requests.size()) return "";
    for (const auto& [name, value] : RawForm(requests[i].body)) {
      if (name == "client_assertion") return value;
    }
    ADD_FAILURE() << "no client_assertion";
    return "";
  }

  // ExpectUnreadable checks `result` is the unreadable-file error, without
  // `content`.
  void ExpectUnreadable(const absl::StatusOr<AccessToken>& result,
                        const std::string& content = kFederatedToken) {
    ASSERT_FALSE(result.ok());
    EXPECT_EQ(result.status().code(), absl::StatusCode::kUnauthenticated);
    EXPECT_EQ(ErrorReason(result.status()), "WORKLOAD_IDENTITY_TOKEN_UNREADABLE");
    EXPECT_THAT(std::string(result.status().message()), HasSubstr("AZURE_FEDERATED_TOKEN_FILE"));
    EXPECT_THAT(result.status().ToString(), Not(HasSubstr(content)));
  }

  std::string dir_;
  std::string token_file_;
  FakeTransport transport_;
  FakeClock clock_;
};

TEST_F(WorkloadIdentityCredentialTest, SendsTheFileAsTheClientAssertion) {
  WriteToken(absl::StrCat("  ", kFederatedToken, "\n"));
  transport_.Enqueue(200, kTokenAnswer);
  auto credential = Make();
  EXPECT_EQ(credential->Name(), "WorkloadIdentityCredential");
  auto token = Get(*credential);
  ASSERT_TRUE(token.ok()) << token.status();
  EXPECT_EQ(token->token, "tok");

  ASSERT_EQ(transport_.requests().size(), 1u);
  const http::HttpRequest request = transport_.requests()[0];
  EXPECT_EQ(request.method, "POST");
  EXPECT_EQ(request.url,
            absl::StrCat("https://login.microsoftonline.com/", kTenant, "/oauth2/v2.0/token"));
  EXPECT_EQ(request.url, credential->TokenUrl());
  EXPECT_THAT(RawForm(request.body),
              ElementsAre(Pair("grant_type", "client_credentials"), Pair("client_id", kClientId),
                          Pair("client_assertion_type",
                               "urn%3Aietf%3Aparams%3Aoauth%3Aclient-assertion-type%3Ajwt-bearer"),
                          Pair("client_assertion", kFederatedToken),
                          Pair("scope", http::UrlEscape(kScope))));
}

TEST_F(WorkloadIdentityCredentialTest, TheFileIsReadAgainForEveryRequest) {
  WriteToken(kFederatedToken);
  auto credential = Make();
  transport_.Enqueue(200, kTokenAnswer);
  ASSERT_TRUE(Get(*credential).ok());
  WriteToken(kRotatedToken);
  transport_.Enqueue(200, kTokenAnswer);
  ASSERT_TRUE(Get(*credential).ok());
  EXPECT_EQ(AssertionOf(0), kFederatedToken);
  EXPECT_EQ(AssertionOf(1), kRotatedToken);
}

TEST_F(WorkloadIdentityCredentialTest, TheFileIsReadAgainForEveryRetry) {
  WriteToken(kFederatedToken);
  ManualScheduler scheduler(clock_);
  auto credential = Make(&scheduler);
  transport_.Enqueue(503, "busy", {{"Retry-After", "1"}});
  transport_.Enqueue(200, kTokenAnswer);
  TokenRequestContext context;
  context.scopes = {kScope};
  std::optional<absl::StatusOr<AccessToken>> result;
  credential->GetToken(context, [&](absl::StatusOr<AccessToken> token) { result = token; });
  ASSERT_FALSE(result.has_value());
  WriteToken(kRotatedToken);
  clock_.Advance(absl::Seconds(1));
  EXPECT_EQ(scheduler.RunDue(), 1);
  ASSERT_TRUE(result.has_value());
  EXPECT_TRUE(result->ok()) << result->status();
  EXPECT_EQ(AssertionOf(0), kFederatedToken);
  EXPECT_EQ(AssertionOf(1), kRotatedToken);
}

TEST_F(WorkloadIdentityCredentialTest, TheFileMayAppearAfterCreate) {
  auto credential = Make();
  ExpectUnreadable(Get(*credential));
  WriteToken(kFederatedToken);
  transport_.Enqueue(200, kTokenAnswer);
  EXPECT_TRUE(Get(*credential).ok());
  ASSERT_EQ(transport_.requests().size(), 1u);
  EXPECT_EQ(AssertionOf(0), kFederatedToken);
}

TEST_F(WorkloadIdentityCredentialTest, MissingFileFailsWithoutARequest) {
  auto credential = Make();
  ExpectUnreadable(Get(*credential));
  EXPECT_THAT(std::string(Get(*credential).status().message()), HasSubstr("cannot be read"));
  EXPECT_TRUE(transport_.requests().empty());
}

TEST_F(WorkloadIdentityCredentialTest, EmptyOrBlankFileFailsWithoutARequest) {
  auto credential = Make();
  for (const char* content : {"", " \n\t\r\n"}) {
    WriteToken(content);
    ExpectUnreadable(Get(*credential));
  }
  EXPECT_THAT(std::string(Get(*credential).status().message()), HasSubstr("is empty"));
  EXPECT_TRUE(transport_.requests().empty());
}

TEST_F(WorkloadIdentityCredentialTest, AFileRemovedBetweenRetriesEndsTheRequest) {
  WriteToken(kFederatedToken);
  ManualScheduler scheduler(clock_);
  auto credential = Make(&scheduler);
  transport_.Enqueue(503, "busy", {{"Retry-After", "1"}});
  TokenRequestContext context;
  context.scopes = {kScope};
  std::optional<absl::StatusOr<AccessToken>> result;
  credential->GetToken(context, [&](absl::StatusOr<AccessToken> token) { result = token; });
  ASSERT_EQ(std::remove(token_file_.c_str()), 0);
  clock_.Advance(absl::Seconds(1));
  EXPECT_EQ(scheduler.RunDue(), 1);
  ASSERT_TRUE(result.has_value());
  ExpectUnreadable(*result);
  EXPECT_EQ(GetErrorInfo(result->status())->metadata().at("attempts"), "1");
  EXPECT_EQ(transport_.requests().size(), 1u);
}

TEST_F(WorkloadIdentityCredentialTest, AnUnknownFederatedTokenHintsAtTheFederatedCredential) {
  WriteToken(kFederatedToken);
  transport_.Enqueue(
      400,
      R"({"error":"invalid_client","error_description":"AADSTS70021: No matching federated identity record found for presented assertion.","error_codes":[70021]})");
  auto credential = Make();
  auto token = Get(*credential);
  ASSERT_FALSE(token.ok());
  EXPECT_EQ(token.status().code(), absl::StatusCode::kUnauthenticated);
  EXPECT_EQ(ErrorReason(token.status()), "TOKEN_REQUEST_REJECTED");
  EXPECT_THAT(std::string(token.status().message()),
              HasSubstr("Hint: no federated credential of the application matches the token in "
                        "AZURE_FEDERATED_TOKEN_FILE"));
}

TEST_F(WorkloadIdentityCredentialTest, CreateValidatesTheSettings) {
  WorkloadIdentityCredentialOptions options = Options();
  options.token_file = "";
  auto credential = WorkloadIdentityCredential::Create(options, transport_, clock_);
  ASSERT_FALSE(credential.ok());
  EXPECT_EQ(credential.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(GetErrorInfo(credential.status())->metadata().at("setting"),
            "AZURE_FEDERATED_TOKEN_FILE");

  options = Options();
  options.tenant_id = "";
  credential = WorkloadIdentityCredential::Create(options, transport_, clock_);
  ASSERT_FALSE(credential.ok());
  EXPECT_EQ(GetErrorInfo(credential.status())->metadata().at("setting"), "AZURE_TENANT_ID");

  options = Options();
  options.authority_host = "https://login.microsoftonline.us/";
  credential = WorkloadIdentityCredential::Create(options, transport_, clock_);
  ASSERT_TRUE(credential.ok());
  EXPECT_EQ((*credential)->TokenUrl(),
            absl::StrCat("https://login.microsoftonline.us/", kTenant, "/oauth2/v2.0/token"));
}

TEST_F(WorkloadIdentityCredentialTest, TheFederatedTokenNeverAppearsInErrors) {
  WriteToken(kFederatedToken);
  auto credential = Make();
  transport_.EnqueueError(MakeError(absl::StatusCode::kUnavailable,
                                    absl::StrCat("refused: ", kFederatedToken),
                                    "UPSTREAM_CONNECT_FAILED", {{"echo", kFederatedToken}}));
  auto token = Get(*credential);
  ASSERT_FALSE(token.ok());
  EXPECT_THAT(token.status().ToString(), Not(HasSubstr(kFederatedToken)));
  EXPECT_THAT(std::string(token.status().message()), HasSubstr("[redacted]"));
  EXPECT_EQ(GetErrorInfo(token.status())->metadata().at("echo"), "[redacted]");
}

}  // namespace
}  // namespace defender::auth
