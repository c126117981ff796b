#include "adapters/auth/client_secret_credential.h"

#include <atomic>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "adapters/auth/token_cache.h"
#include "adapters/common/clock.h"
#include "adapters/common/error.h"
#include "adapters/common/scheduler.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/adapters/fake_transport.h"

namespace defender::auth {
namespace {

using ::defender::testing::FakeTransport;
using ::testing::HasSubstr;
using ::testing::Not;
using ::testing::Pair;
using ::testing::UnorderedElementsAre;

constexpr char kTenant[] = "72f988bf-86f1-41af-91ab-2d7cd011db47";
constexpr char kClientId[] = "11111111-2222-3333-4444-555555555555";
constexpr char kSecret[] = "s3cr3t~Value.With-Chars_0123456789abcdef";
constexpr char kScope[] = "https://api.securitycenter.microsoft.com/.default";
constexpr char kToken[] = "eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9.payload.signature";

// ScopeContext asks for `scopes`.
TokenRequestContext ScopeContext(std::vector<std::string> scopes = {kScope}) {
  TokenRequestContext context;
  context.scopes = std::move(scopes);
  return context;
}

// PercentDecode undoes application/x-www-form-urlencoded escaping.
std::string PercentDecode(const std::string& text) {
  std::string out;
  for (size_t i = 0; i < text.size(); ++i) {
    if (text[i] == '+') {
      out.push_back(' ');
    } else if (text[i] == '%' && i + 2 < text.size()) {
      int value = 0;
      EXPECT_TRUE(absl::SimpleHexAtoi(text.substr(i + 1, 2), &value)) << text;
      out.push_back(static_cast<char>(value));
      i += 2;
    } else {
      out.push_back(text[i]);
    }
  }
  return out;
}

// DecodeForm splits a form body into its fields.
std::map<std::string, std::string> DecodeForm(const std::string& body) {
  std::map<std::string, std::string> fields;
  for (absl::string_view pair : absl::StrSplit(body, '&')) {
    std::vector<std::string> kv = absl::StrSplit(pair, absl::MaxSplits('=', 1));
    EXPECT_EQ(kv.size(), 2u) << body;
    if (kv.size() != 2) continue;
    EXPECT_TRUE(fields.emplace(PercentDecode(kv[0]), PercentDecode(kv[1])).second)
        << "duplicate field " << kv[0];
  }
  return fields;
}

class ClientSecretCredentialTest : public ::testing::Test {
 protected:
  ClientSecretCredentialOptions Options() const {
    ClientSecretCredentialOptions options;
    options.tenant_id = kTenant;
    options.client_id = kClientId;
    options.client_secret = kSecret;
    return options;
  }

  std::unique_ptr<ClientSecretCredential> Make(ClientSecretCredentialOptions options) {
    auto credential = ClientSecretCredential::Create(std::move(options), transport_, clock_);
    EXPECT_TRUE(credential.ok()) << credential.status();
    return credential.ok() ? *std::move(credential) : nullptr;
  }

  // Get asks `credential` for a token; FakeTransport answers inside Send.
  absl::StatusOr<AccessToken> Get(TokenCredential& credential,
                                  TokenRequestContext context = ScopeContext()) {
    std::optional<absl::StatusOr<AccessToken>> result;
    credential.GetToken(context, [&result](absl::StatusOr<AccessToken> token) {
      EXPECT_FALSE(result.has_value()) << "callback called twice";
      result = std::move(token);
    });
    EXPECT_TRUE(result.has_value()) << "callback not called";
    return result.value_or(absl::InternalError("no callback"));
  }

  absl::StatusOr<AccessToken> GetWithAnswer(int status, std::string body,
                                            std::vector<http::Header> headers = {}) {
    transport_.Enqueue(status, std::move(body), std::move(headers));
    auto credential = Make(Options());
    return Get(*credential);
  }

  FakeTransport transport_;
  FakeClock clock_;
};

// ExpectNoSecrets checks that neither the secret nor the token shows in the
// message or the ErrorInfo of `status`.
void ExpectNoSecrets(const absl::Status& status) {
  const std::string message(status.message());
  EXPECT_THAT(message, Not(HasSubstr(kSecret)));
  EXPECT_THAT(message, Not(HasSubstr(kToken)));
  auto info = GetErrorInfo(status);
  if (!info) return;
  for (const auto& [key, value] : info->metadata()) {
    EXPECT_THAT(value, Not(HasSubstr(kSecret))) << key;
    EXPECT_THAT(value, Not(HasSubstr(kToken))) << key;
  }
}

TEST_F(ClientSecretCredentialTest, SendsTheExactRequest) {
  transport_.Enqueue(200, R"({"token_type":"Bearer","expires_in":3599,"ext_expires_in":3599,
                              "access_token":"eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9.payload.signature"})");
  auto credential = Make(Options());
  TokenRequestContext context = ScopeContext();
  context.deadline = absl::FromUnixSeconds(1700000030);
  ASSERT_TRUE(Get(*credential, context).ok());

  ASSERT_EQ(transport_.requests().size(), 1u);
  const http::HttpRequest request = transport_.requests()[0];
  EXPECT_EQ(request.method, "POST");
  EXPECT_EQ(request.url,
            absl::StrCat("https://login.microsoftonline.com/", kTenant, "/oauth2/v2.0/token"));
  EXPECT_EQ(request.url, credential->TokenUrl());
  EXPECT_THAT(request.headers,
              UnorderedElementsAre(Pair("Content-Type", "application/x-www-form-urlencoded"),
                                   Pair("Accept", "application/json")));
  EXPECT_THAT(
      DecodeForm(request.body),
      UnorderedElementsAre(Pair("grant_type", "client_credentials"), Pair("client_id", kClientId),
                           Pair("client_secret", kSecret), Pair("scope", kScope)));
  EXPECT_EQ(request.deadline, absl::FromUnixSeconds(1700000030));
}

TEST_F(ClientSecretCredentialTest, EscapesTheSecretInTheFormBody) {
  transport_.Enqueue(200, R"({"access_token":"t","expires_in":3599})");
  ClientSecretCredentialOptions options = Options();
  options.client_secret = "a&b+c=d e%f";
  auto credential = Make(options);
  ASSERT_TRUE(Get(*credential).ok());

  const std::string body = transport_.requests()[0].body;
  EXPECT_THAT(body, HasSubstr("client_secret=a%26b%2Bc%3Dd%20e%25f"));
  EXPECT_THAT(body, Not(HasSubstr("a&b")));
  EXPECT_EQ(DecodeForm(body).at("client_secret"), "a&b+c=d e%f");
}

TEST_F(ClientSecretCredentialTest, JoinsScopesWithSpaces) {
  transport_.Enqueue(200, R"({"access_token":"t","expires_in":3599})");
  auto credential = Make(Options());
  ASSERT_TRUE(
      Get(*credential, ScopeContext({"https://a.example/.default", "https://b.example/.default"}))
          .ok());
  EXPECT_EQ(DecodeForm(transport_.requests()[0].body).at("scope"),
            "https://a.example/.default https://b.example/.default");
}

TEST_F(ClientSecretCredentialTest, TokenUrlUsesTheAuthorityWithoutTrailingSlash) {
  ClientSecretCredentialOptions options = Options();
  options.authority_host = "https://login.microsoftonline.us/";
  options.tenant_id = "contoso.onmicrosoft.us";
  auto credential = Make(options);
  EXPECT_EQ(credential->TokenUrl(),
            "https://login.microsoftonline.us/contoso.onmicrosoft.us/oauth2/v2.0/token");
  EXPECT_EQ(credential->Name(), "ClientSecretCredential");
}

TEST_F(ClientSecretCredentialTest, EmptyAuthorityIsTheCommercialCloud) {
  ClientSecretCredentialOptions options = Options();
  options.authority_host = "";
  auto credential = Make(options);
  EXPECT_EQ(credential->TokenUrl(),
            absl::StrCat("https://login.microsoftonline.com/", kTenant, "/oauth2/v2.0/token"));
}

TEST_F(ClientSecretCredentialTest, NumericExpiresIn) {
  auto token = GetWithAnswer(200, R"({"token_type":"Bearer","expires_in":3599,
                                     "access_token":"eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9.payload.signature"})");
  ASSERT_TRUE(token.ok()) << token.status();
  EXPECT_EQ(token->token, kToken);
  EXPECT_EQ(token->expires_on, clock_.Now() + absl::Seconds(3599));
}

TEST_F(ClientSecretCredentialTest, StringExpiresIn) {
  auto token = GetWithAnswer(200, R"({"access_token":"abc","expires_in":"3600"})");
  ASSERT_TRUE(token.ok()) << token.status();
  EXPECT_EQ(token->token, "abc");
  EXPECT_EQ(token->expires_on, clock_.Now() + absl::Seconds(3600));
}

TEST_F(ClientSecretCredentialTest, ExpiresOnWhenExpiresInIsMissing) {
  auto token = GetWithAnswer(200, R"({"access_token":"abc","expires_on":"1700003600"})");
  ASSERT_TRUE(token.ok()) << token.status();
  EXPECT_EQ(token->expires_on, absl::FromUnixSeconds(1700003600));

  token = GetWithAnswer(200, R"({"access_token":"abc","expires_on":1700007200})");
  ASSERT_TRUE(token.ok()) << token.status();
  EXPECT_EQ(token->expires_on, absl::FromUnixSeconds(1700007200));
}

TEST_F(ClientSecretCredentialTest, ExpiryIsDatedFromWhenTheRequestWasSent) {
  // A transport that answers later: the clock moves while the request runs.
  class LateTransport final : public http::HttpTransport {
   public:
    void Send(http::HttpRequest request, Callback done) override { held = std::move(done); }
    Callback held;
  } late;
  auto credential = ClientSecretCredential::Create(Options(), late, clock_);
  ASSERT_TRUE(credential.ok());
  const absl::Time sent = clock_.Now();
  std::optional<absl::StatusOr<AccessToken>> result;
  (*credential)->GetToken(ScopeContext(), [&](absl::StatusOr<AccessToken> t) {
    result = std::move(t);
  });
  EXPECT_FALSE(result.has_value());
  clock_.Advance(absl::Seconds(5));
  http::HttpResponse response;
  response.status = 200;
  response.body = R"({"access_token":"abc","expires_in":3599})";
  // The credential may be gone by the time the transport answers.
  credential->reset();
  std::move(late.held)(response);
  ASSERT_TRUE(result.has_value());
  ASSERT_TRUE(result->ok()) << result->status();
  EXPECT_EQ((*result)->expires_on, sent + absl::Seconds(3599));
}

TEST_F(ClientSecretCredentialTest, InvalidClientSecretCarriesCodeAndCorrelationId) {
  auto token = GetWithAnswer(401, R"({
      "error": "invalid_client",
      "error_description": "AADSTS7000215: Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, not the client secret ID, for a secret added to app '11111111-2222-3333-4444-555555555555'.\r\nTrace ID: 0b5e4f1c-aaaa-bbbb-cccc-0123456789ab\r\nCorrelation ID: 1234abcd-0000-1111-2222-333344445555\r\nTimestamp: 2024-01-01 00:00:00Z",
      "error_codes": [7000215],
      "timestamp": "2024-01-01 00:00:00Z",
      "trace_id": "0b5e4f1c-aaaa-bbbb-cccc-0123456789ab",
      "correlation_id": "1234abcd-0000-1111-2222-333344445555",
      "error_uri": "https://login.microsoftonline.com/error?code=7000215"})");
  ASSERT_FALSE(token.ok());
  const absl::Status& status = token.status();
  EXPECT_EQ(status.code(), absl::StatusCode::kUnauthenticated);
  EXPECT_THAT(status.message(), HasSubstr("token request rejected by Entra ID: AADSTS7000215 "
                                          "(invalid_client); correlation id "
                                          "1234abcd-0000-1111-2222-333344445555"));
  EXPECT_THAT(status.message(), HasSubstr("Invalid client secret provided"));
  EXPECT_THAT(status.message(), HasSubstr("AZURE_CLIENT_SECRET"));
  EXPECT_THAT(status.message(), Not(HasSubstr("Timestamp")));
  EXPECT_THAT(status.message(), Not(HasSubstr("\n")));
  EXPECT_EQ(ErrorReason(status), "TOKEN_REQUEST_REJECTED");
  auto info = GetErrorInfo(status);
  ASSERT_TRUE(info.has_value());
  EXPECT_EQ(info->domain(), kErrorDomain);
  EXPECT_THAT(
      info->metadata(),
      UnorderedElementsAre(Pair("aadsts_code", "AADSTS7000215"), Pair("error", "invalid_client"),
                           Pair("correlation_id", "1234abcd-0000-1111-2222-333344445555"),
                           Pair("trace_id", "0b5e4f1c-aaaa-bbbb-cccc-0123456789ab"),
                           Pair("http_status", "401")));
  ExpectNoSecrets(status);
}

TEST_F(ClientSecretCredentialTest, AadstsCodeFromDescriptionWhenErrorCodesAreMissing) {
  auto token = GetWithAnswer(400, R"({"error":"invalid_request",
      "error_description":"AADSTS900144: The request body must contain the following parameter: 'grant_type'.",
      "correlation_id":"c-1"})");
  ASSERT_FALSE(token.ok());
  EXPECT_EQ(token.status().code(), absl::StatusCode::kUnauthenticated);
  EXPECT_THAT(token.status().message(),
              HasSubstr("AADSTS900144 (invalid_request); correlation id c-1: The request body"));
  EXPECT_EQ(GetErrorInfo(token.status())->metadata().at("aadsts_code"), "AADSTS900144");
  EXPECT_EQ(GetErrorInfo(token.status())->metadata().at("http_status"), "400");
}

TEST_F(ClientSecretCredentialTest, TenantNotFoundHintsAtCloudAndTenant) {
  auto token = GetWithAnswer(400, R"({"error":"invalid_request",
      "error_description":"AADSTS90002: Tenant 'x' not found. Check to make sure you have the correct tenant ID and are signing into the correct cloud.",
      "error_codes":[90002],"correlation_id":"c-2","trace_id":"t-2"})");
  ASSERT_FALSE(token.ok());
  EXPECT_EQ(token.status().code(), absl::StatusCode::kUnauthenticated);
  EXPECT_THAT(token.status().message(), HasSubstr("AADSTS90002"));
  EXPECT_THAT(token.status().message(), HasSubstr("AZURE_TENANT_ID"));
  EXPECT_THAT(token.status().message(), HasSubstr("DEFENDER_REGION"));
  EXPECT_EQ(ErrorReason(token.status()), "TOKEN_REQUEST_REJECTED");
}

TEST_F(ClientSecretCredentialTest, AppNotFoundHintsAtConsent) {
  auto token = GetWithAnswer(400, R"({"error":"unauthorized_client",
      "error_description":"AADSTS700016: Application with identifier 'x' was not found in the directory 'y'.",
      "error_codes":[700016],"correlation_id":"c-3"})");
  ASSERT_FALSE(token.ok());
  EXPECT_EQ(token.status().code(), absl::StatusCode::kUnauthenticated);
  EXPECT_THAT(token.status().message(), HasSubstr("AADSTS700016 (unauthorized_client)"));
  EXPECT_THAT(token.status().message(), HasSubstr("AZURE_CLIENT_ID"));
  EXPECT_THAT(token.status().message(), HasSubstr("consented"));
}

TEST_F(ClientSecretCredentialTest, InvalidScopeHintsAtScope) {
  for (int code : {70011, 1002012}) {
    auto token = GetWithAnswer(
        400, absl::StrCat(R"({"error":"invalid_scope","error_description":"AADSTS)", code,
                          R"(: The provided value for the input parameter 'scope' is not valid.",
                             "error_codes":[)",
                          code, "]}"));
    ASSERT_FALSE(token.ok());
    EXPECT_EQ(token.status().code(), absl::StatusCode::kUnauthenticated);
    EXPECT_THAT(token.status().message(), HasSubstr(absl::StrCat("AADSTS", code)));
    EXPECT_THAT(token.status().message(), HasSubstr("DEFENDER_SCOPE"));
  }
}

TEST_F(ClientSecretCredentialTest, RejectionWithoutBody) {
  auto token = GetWithAnswer(401, "");
  ASSERT_FALSE(token.ok());
  EXPECT_EQ(token.status().code(), absl::StatusCode::kUnauthenticated);
  EXPECT_THAT(token.status().message(), HasSubstr("HTTP 401"));
  EXPECT_EQ(ErrorReason(token.status()), "TOKEN_REQUEST_REJECTED");
  EXPECT_EQ(GetErrorInfo(token.status())->metadata().at("http_status"), "401");
}

TEST_F(ClientSecretCredentialTest, ThrottledCarriesRetryInfo) {
  auto token = GetWithAnswer(429, "", {{"retry-after", "30"}});
  ASSERT_FALSE(token.ok());
  EXPECT_EQ(token.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(ErrorReason(token.status()), "TOKEN_ENDPOINT_THROTTLED");
  auto delay = GetRetryDelay(token.status());
  ASSERT_TRUE(delay.has_value());
  EXPECT_EQ(*delay, absl::Seconds(30));
}

TEST_F(ClientSecretCredentialTest, ThrottledWithHttpDateRetryAfter) {
  // FakeClock starts at 1700000000 = Tue, 14 Nov 2023 22:13:20 GMT.
  auto token = GetWithAnswer(429, "", {{"Retry-After", "Tue, 14 Nov 2023 22:14:00 GMT"}});
  ASSERT_FALSE(token.ok());
  auto delay = GetRetryDelay(token.status());
  ASSERT_TRUE(delay.has_value());
  EXPECT_EQ(*delay, absl::Seconds(40));
}

TEST_F(ClientSecretCredentialTest, ThrottledWithoutRetryAfterHasNoRetryInfo) {
  auto token = GetWithAnswer(429, "");
  ASSERT_FALSE(token.ok());
  EXPECT_EQ(token.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_FALSE(GetRetryDelay(token.status()).has_value());
}

TEST_F(ClientSecretCredentialTest, ServerErrorsAreUnavailable) {
  for (int status : {500, 502, 503, 504}) {
    auto token = GetWithAnswer(status, "<html>oops</html>");
    ASSERT_FALSE(token.ok());
    EXPECT_EQ(token.status().code(), absl::StatusCode::kUnavailable) << status;
    EXPECT_EQ(ErrorReason(token.status()), "TOKEN_ENDPOINT_UNAVAILABLE");
    EXPECT_EQ(GetErrorInfo(token.status())->metadata().at("http_status"), absl::StrCat(status));
  }
}

TEST_F(ClientSecretCredentialTest, OtherStatusesAreUnavailable) {
  for (int status : {302, 403, 404}) {
    auto token = GetWithAnswer(status, "");
    ASSERT_FALSE(token.ok());
    EXPECT_EQ(token.status().code(), absl::StatusCode::kUnavailable) << status;
    EXPECT_THAT(token.status().message(), HasSubstr(absl::StrCat("HTTP ", status)));
  }
}

TEST_F(ClientSecretCredentialTest, UnreadableSuccessIsInternal) {
  for (const char* body :
       {"not json", "[1,2]", R"({"expires_in":3599})", R"({"access_token":42,"expires_in":3599})",
        R"({"access_token":"","expires_in":3599})", R"({"access_token":"abc"})",
        R"({"access_token":"abc","expires_in":"soon"})",
        R"({"access_token":"abc","expires_in":-5})"}) {
    auto token = GetWithAnswer(200, body);
    ASSERT_FALSE(token.ok()) << body;
    EXPECT_EQ(token.status().code(), absl::StatusCode::kInternal) << body;
    EXPECT_EQ(ErrorReason(token.status()), "BAD_TOKEN_RESPONSE") << body;
  }
}

TEST_F(ClientSecretCredentialTest, TransportErrorsPassThroughPrefixed) {
  transport_.EnqueueError(MakeError(absl::StatusCode::kDeadlineExceeded, "timed out after 30s",
                                    "UPSTREAM_TIMEOUT", {{"request_sent", "true"}}));
  auto credential = Make(Options());
  auto token = Get(*credential);
  ASSERT_FALSE(token.ok());
  EXPECT_EQ(token.status().code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_EQ(token.status().message(), "token request: timed out after 30s");
  EXPECT_EQ(ErrorReason(token.status()), "UPSTREAM_TIMEOUT");
  EXPECT_EQ(GetErrorInfo(token.status())->metadata().at("request_sent"), "true");
}

TEST_F(ClientSecretCredentialTest, NoScopeIsInvalidArgument) {
  auto credential = Make(Options());
  auto token = Get(*credential, TokenRequestContext{});
  ASSERT_FALSE(token.ok());
  EXPECT_EQ(token.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(transport_.requests().empty());
}

TEST_F(ClientSecretCredentialTest, SecretAndTokenNeverAppearInErrors) {
  const std::string secret = kSecret;
  const std::string token = kToken;
  const std::vector<std::pair<int, std::string>> answers = {
      // A (hypothetical) endpoint echoing what it got, in every field we read.
      {401, R"({"error":")" + secret + R"(","error_description":"AADSTS7000215: bad secret )" +
                secret + R"(","correlation_id":")" + secret + R"(","trace_id":")" + secret +
                R"(","access_token":")" + token + R"("})"},
      {400, "client_secret=" + secret},
      {200, R"({"access_token":")" + token + R"("})"},
      {200, R"({"access_token":")" + token + R"(","expires_in":"never"})"},
      {200, "access_token=" + token},
      {429, secret},
      {503, token},
      {404, secret + token},
  };
  for (const auto& [status, body] : answers) {
    auto result = GetWithAnswer(status, body);
    ASSERT_FALSE(result.ok()) << status;
    ExpectNoSecrets(result.status());
  }
  transport_.EnqueueError(absl::UnavailableError("connection to host failed: " + secret));
  auto credential = Make(Options());
  auto result = Get(*credential);
  ASSERT_FALSE(result.ok());
  ExpectNoSecrets(result.status());
  EXPECT_THAT(result.status().message(), HasSubstr("[redacted]"));
}

TEST_F(ClientSecretCredentialTest, CreateRejectsBadOptionsWithoutEchoingTheSecret) {
  struct Case {
    std::string setting;
    ClientSecretCredentialOptions options;
  };
  std::vector<Case> cases;
  auto add = [&](std::string setting, auto change) {
    ClientSecretCredentialOptions options = Options();
    change(options);
    cases.push_back({std::move(setting), std::move(options)});
  };
  add("AZURE_AUTHORITY_HOST",
      [](auto& o) { o.authority_host = "http://login.microsoftonline.com"; });
  add("AZURE_AUTHORITY_HOST", [](auto& o) { o.authority_host = "login.microsoftonline.com"; });
  add("AZURE_AUTHORITY_HOST",
      [](auto& o) { o.authority_host = "https://login.microsoftonline.com?x"; });
  add("AZURE_TENANT_ID", [](auto& o) { o.tenant_id = ""; });
  add("AZURE_TENANT_ID", [](auto& o) { o.tenant_id = "contoso/../evil"; });
  add("AZURE_TENANT_ID", [](auto& o) { o.tenant_id = "tenant id"; });
  add("AZURE_TENANT_ID", [](auto& o) { o.tenant_id = "t?x=1"; });
  add("AZURE_CLIENT_ID", [](auto& o) { o.client_id = ""; });
  add("AZURE_CLIENT_SECRET", [](auto& o) { o.client_secret = ""; });
  for (Case& c : cases) {
    auto credential = ClientSecretCredential::Create(c.options, transport_, clock_);
    ASSERT_FALSE(credential.ok()) << c.setting;
    EXPECT_EQ(credential.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(credential.status().message(), HasSubstr(c.setting));
    EXPECT_EQ(ErrorReason(credential.status()), "INVALID_CONFIGURATION");
    ExpectNoSecrets(credential.status());
  }
}

TEST_F(ClientSecretCredentialTest, CreateAcceptsGuidAndDomainTenants) {
  for (const char* tenant : {kTenant, "contoso.onmicrosoft.com", "my-tenant.example.org"}) {
    ClientSecretCredentialOptions options = Options();
    options.tenant_id = tenant;
    EXPECT_TRUE(ClientSecretCredential::Create(options, transport_, clock_).ok()) << tenant;
  }
}

// ---------------------------------------------------------------------------
// Retries (with a scheduler)

constexpr char kGoodAnswer[] = R"({"access_token":"abc","expires_in":3599})";

// Metadata returns the ErrorInfo metadata `key` of `status`, or "<none>".
std::string Metadata(const absl::Status& status, const std::string& key) {
  auto info = GetErrorInfo(status);
  if (!info) return "<no ErrorInfo>";
  auto it = info->metadata().find(key);
  return it == info->metadata().end() ? "<none>" : it->second;
}

absl::Status TransportError(absl::StatusCode code, const std::string& reason) {
  return MakeError(code, absl::StrCat("transport says ", reason), reason,
                   {{"request_sent", "true"}});
}

class ClientSecretCredentialRetryTest : public ClientSecretCredentialTest {
 protected:
  std::unique_ptr<ClientSecretCredential> MakeRetrying() {
    auto credential = ClientSecretCredential::Create(Options(), transport_, clock_, &scheduler_);
    EXPECT_TRUE(credential.ok()) << credential.status();
    return credential.ok() ? *std::move(credential) : nullptr;
  }

  // RunRetries runs the scheduled retries one by one, moving the clock to
  // each, until none is left; returns the pause before each.
  std::vector<absl::Duration> RunRetries() {
    std::vector<absl::Duration> pauses;
    while (scheduler_.Pending() > 0 && pauses.size() < 100) {
      const absl::Duration pause = scheduler_.NextTime() - clock_.Now();
      pauses.push_back(pause);
      clock_.Advance(pause);
      scheduler_.RunDue();
    }
    return pauses;
  }

  // GetRetrying asks a retrying credential for a token and runs the retries.
  absl::StatusOr<AccessToken> GetRetrying(TokenRequestContext context,
                                          std::vector<absl::Duration>* pauses = nullptr) {
    auto credential = MakeRetrying();
    std::optional<absl::StatusOr<AccessToken>> result;
    credential->GetToken(context, [&result](absl::StatusOr<AccessToken> token) {
      EXPECT_FALSE(result.has_value()) << "callback called twice";
      result = std::move(token);
    });
    std::vector<absl::Duration> ran = RunRetries();
    if (pauses != nullptr) *pauses = ran;
    EXPECT_TRUE(result.has_value()) << "callback not called";
    return result.value_or(absl::InternalError("no callback"));
  }

  // Context with a deadline `in` from now.
  TokenRequestContext ContextWithin(absl::Duration in) {
    TokenRequestContext context = ScopeContext();
    context.deadline = clock_.Now() + in;
    return context;
  }

  ManualScheduler scheduler_{clock_};
};

TEST_F(ClientSecretCredentialRetryTest, ServerErrorsAreRetriedUntilATokenComes) {
  transport_.Enqueue(503, "busy");
  transport_.Enqueue(503, "busy");
  transport_.Enqueue(200, kGoodAnswer);
  TokenRequestContext context = ContextWithin(absl::Seconds(30));
  std::vector<absl::Duration> pauses;
  auto token = GetRetrying(context, &pauses);
  ASSERT_TRUE(token.ok()) << token.status();
  EXPECT_EQ(token->token, "abc");
  // Dated from the attempt that got it.
  EXPECT_EQ(token->expires_on, clock_.Now() + absl::Seconds(3599));

  const auto requests = transport_.requests();
  ASSERT_EQ(requests.size(), 3u);
  for (const auto& request : requests) {
    EXPECT_EQ(request.deadline, context.deadline);
    EXPECT_EQ(request.body, requests[0].body);
    EXPECT_EQ(request.url, requests[0].url);
  }
  // Jittered exponential backoff: [100, 200] ms, then [200, 400] ms.
  ASSERT_EQ(pauses.size(), 2u);
  EXPECT_GE(pauses[0], absl::Milliseconds(100));
  EXPECT_LE(pauses[0], absl::Milliseconds(200));
  EXPECT_GE(pauses[1], absl::Milliseconds(200));
  EXPECT_LE(pauses[1], absl::Milliseconds(400));
}

TEST_F(ClientSecretCredentialRetryTest, RetryAfterIsHonoured) {
  transport_.Enqueue(429, "", {{"Retry-After", "2"}});
  transport_.Enqueue(503, "", {{"retry-after", "1"}});
  transport_.Enqueue(200, kGoodAnswer);
  std::vector<absl::Duration> pauses;
  auto token = GetRetrying(ContextWithin(absl::Seconds(30)), &pauses);
  ASSERT_TRUE(token.ok()) << token.status();
  EXPECT_EQ(transport_.requests().size(), 3u);
  EXPECT_EQ(pauses, (std::vector<absl::Duration>{absl::Seconds(2), absl::Seconds(1)}));
}

TEST_F(ClientSecretCredentialRetryTest, EveryTransientStatusIsRetried) {
  for (int status : {408, 429, 500, 502, 503, 504}) {
    const size_t before = transport_.requests().size();
    transport_.Enqueue(status, "");
    transport_.Enqueue(200, kGoodAnswer);
    auto token = GetRetrying(ContextWithin(absl::Seconds(30)));
    EXPECT_TRUE(token.ok()) << status << ": " << token.status();
    EXPECT_EQ(transport_.requests().size() - before, 2u) << status;
  }
}

TEST_F(ClientSecretCredentialRetryTest, TransportFaultsAreRetried) {
  transport_.EnqueueError(
      TransportError(absl::StatusCode::kUnavailable, "UPSTREAM_CONNECT_FAILED"));
  transport_.EnqueueError(
      TransportError(absl::StatusCode::kUnavailable, "UPSTREAM_CONNECTION_LOST"));
  transport_.EnqueueError(TransportError(absl::StatusCode::kDeadlineExceeded, "UPSTREAM_TIMEOUT"));
  transport_.Enqueue(200, kGoodAnswer);
  auto token = GetRetrying(ContextWithin(absl::Seconds(30)));
  ASSERT_TRUE(token.ok()) << token.status();
  EXPECT_EQ(transport_.requests().size(), 4u);
}

TEST_F(ClientSecretCredentialRetryTest, RejectedCredentialsAreNeverRetried) {
  for (int status : {400, 401}) {
    const size_t before = transport_.requests().size();
    transport_.Enqueue(status, R"({"error":"invalid_client","error_codes":[7000215]})");
    transport_.Enqueue(200, kGoodAnswer);  // would be the retry's answer
    auto credential = MakeRetrying();
    auto token = Get(*credential, ContextWithin(absl::Seconds(30)));  // answered at once
    ASSERT_FALSE(token.ok()) << status;
    EXPECT_EQ(token.status().code(), absl::StatusCode::kUnauthenticated);
    EXPECT_EQ(ErrorReason(token.status()), "TOKEN_REQUEST_REJECTED");
    EXPECT_EQ(Metadata(token.status(), "attempts"), "1");
    EXPECT_EQ(scheduler_.Pending(), 0u);
    EXPECT_EQ(transport_.requests().size() - before, 1u);
    EXPECT_TRUE(Get(*credential).ok());  // drains the queued 200
  }
}

TEST_F(ClientSecretCredentialRetryTest, OtherFailuresAreNotRetried) {
  std::vector<absl::StatusOr<http::HttpResponse>> answers;
  auto answer = [&](int status, std::string body) {
    http::HttpResponse response;
    response.status = status;
    response.body = std::move(body);
    answers.push_back(response);
  };
  answer(404, "");
  answer(200, "not json");
  for (const char* reason : {"UPSTREAM_TLS_FAILED", "UPSTREAM_RESPONSE_TOO_LARGE",
                             "INVALID_HTTP_REQUEST", "TRANSPORT_SHUT_DOWN", "REQUEST_CANCELLED"}) {
    answers.push_back(TransportError(absl::StatusCode::kUnavailable, reason));
  }
  answers.push_back(absl::UnavailableError("no ErrorInfo at all"));
  auto credential = MakeRetrying();
  for (auto& a : answers) {
    const size_t before = transport_.requests().size();
    if (a.ok()) {
      transport_.Enqueue(a->status, a->body);
    } else {
      transport_.EnqueueError(a.status());
    }
    auto token = Get(*credential, ContextWithin(absl::Seconds(30)));
    ASSERT_FALSE(token.ok());
    EXPECT_EQ(scheduler_.Pending(), 0u) << token.status();
    EXPECT_EQ(transport_.requests().size() - before, 1u) << token.status();
  }
}

TEST_F(ClientSecretCredentialRetryTest, GivesUpAfterFourRetries) {
  for (int i = 0; i < 6; ++i) transport_.Enqueue(503, "busy");
  std::vector<absl::Duration> pauses;
  auto token = GetRetrying(ScopeContext(), &pauses);  // no deadline
  ASSERT_FALSE(token.ok());
  EXPECT_EQ(token.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(ErrorReason(token.status()), "TOKEN_ENDPOINT_UNAVAILABLE");
  EXPECT_EQ(Metadata(token.status(), "attempts"), "5");
  EXPECT_EQ(Metadata(token.status(), "http_status"), "503");
  EXPECT_EQ(transport_.requests().size(), 5u);
  EXPECT_EQ(pauses.size(), 4u);
}

TEST_F(ClientSecretCredentialRetryTest, NoRetryWhenTheDeadlineIsTooClose) {
  // Even the shortest pause (100 ms) plus 100 ms for the attempt passes it.
  transport_.Enqueue(503, "busy");
  transport_.Enqueue(200, kGoodAnswer);
  auto credential = MakeRetrying();
  auto token = Get(*credential, ContextWithin(absl::Milliseconds(150)));  // answered at once
  ASSERT_FALSE(token.ok());
  EXPECT_EQ(ErrorReason(token.status()), "TOKEN_ENDPOINT_UNAVAILABLE");
  EXPECT_EQ(Metadata(token.status(), "attempts"), "1");
  EXPECT_EQ(scheduler_.Pending(), 0u);
  EXPECT_EQ(transport_.requests().size(), 1u);
}

TEST_F(ClientSecretCredentialRetryTest, RetryAfterBeyondTheDeadlineEndsTheRetries) {
  transport_.Enqueue(429, "", {{"Retry-After", "30"}});
  auto credential = MakeRetrying();
  auto token = Get(*credential, ContextWithin(absl::Seconds(10)));
  ASSERT_FALSE(token.ok());
  EXPECT_EQ(token.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(GetRetryDelay(token.status()), absl::Seconds(30));
  EXPECT_EQ(Metadata(token.status(), "attempts"), "1");
  EXPECT_EQ(scheduler_.Pending(), 0u);
}

TEST_F(ClientSecretCredentialRetryTest, RetriesStopWhenTheDeadlineComesNear) {
  // Retry-After: 1 each time; a retry needs to start 100 ms before the
  // deadline: at 1 s and 2 s yes (2.1 <= 2.1), at 3 s no.
  for (int i = 0; i < 5; ++i) transport_.Enqueue(429, "", {{"Retry-After", "1"}});
  std::vector<absl::Duration> pauses;
  auto token = GetRetrying(ContextWithin(absl::Milliseconds(2100)), &pauses);
  ASSERT_FALSE(token.ok());
  EXPECT_EQ(ErrorReason(token.status()), "TOKEN_ENDPOINT_THROTTLED");
  EXPECT_EQ(Metadata(token.status(), "attempts"), "3");
  EXPECT_EQ(pauses, (std::vector<absl::Duration>{absl::Seconds(1), absl::Seconds(1)}));

  // One millisecond less and the second retry is out.
  const size_t before = transport_.requests().size();
  for (int i = 0; i < 5; ++i) transport_.Enqueue(429, "", {{"Retry-After", "1"}});
  token = GetRetrying(ContextWithin(absl::Milliseconds(2099)), &pauses);
  ASSERT_FALSE(token.ok());
  EXPECT_EQ(Metadata(token.status(), "attempts"), "2");
  EXPECT_EQ(transport_.requests().size() - before, 2u);
}

TEST_F(ClientSecretCredentialRetryTest, WithoutASchedulerNothingIsRetried) {
  transport_.Enqueue(503, "busy");
  transport_.Enqueue(200, kGoodAnswer);
  auto credential = Make(Options());
  auto token = Get(*credential, ContextWithin(absl::Seconds(30)));
  ASSERT_FALSE(token.ok());
  EXPECT_EQ(ErrorReason(token.status()), "TOKEN_ENDPOINT_UNAVAILABLE");
  EXPECT_EQ(Metadata(token.status(), "attempts"), "<none>");
  EXPECT_EQ(transport_.requests().size(), 1u);
}

TEST_F(ClientSecretCredentialRetryTest, DestroyingTheCredentialEndsItsScheduledRetries) {
  transport_.Enqueue(503, "busy");
  auto credential = MakeRetrying();
  std::optional<absl::StatusOr<AccessToken>> result;
  credential->GetToken(ContextWithin(absl::Seconds(30)),
                       [&](absl::StatusOr<AccessToken> token) { result = std::move(token); });
  EXPECT_FALSE(result.has_value());
  EXPECT_EQ(scheduler_.Pending(), 1u);
  credential.reset();
  ASSERT_TRUE(result.has_value());
  ASSERT_FALSE(result->ok());
  EXPECT_EQ(ErrorReason(result->status()), "TOKEN_ENDPOINT_UNAVAILABLE");
  EXPECT_EQ(Metadata(result->status(), "attempts"), "1");
  EXPECT_EQ(scheduler_.Pending(), 0u);
  EXPECT_EQ(transport_.requests().size(), 1u);
}

TEST_F(ClientSecretCredentialRetryTest, AnAnswerAfterDestructionIsNotRetried) {
  class LateTransport final : public http::HttpTransport {
   public:
    void Send(http::HttpRequest request, Callback done) override { held = std::move(done); }
    Callback held;
  } late;
  auto credential = ClientSecretCredential::Create(Options(), late, clock_, &scheduler_);
  ASSERT_TRUE(credential.ok());
  std::optional<absl::StatusOr<AccessToken>> result;
  (*credential)->GetToken(ContextWithin(absl::Seconds(30)), [&](absl::StatusOr<AccessToken> t) {
    result = std::move(t);
  });
  credential->reset();
  http::HttpResponse response;
  response.status = 503;
  std::move(late.held)(response);
  ASSERT_TRUE(result.has_value());
  EXPECT_EQ(ErrorReason(result->status()), "TOKEN_ENDPOINT_UNAVAILABLE");
  EXPECT_EQ(Metadata(result->status(), "attempts"), "1");
  EXPECT_EQ(scheduler_.Pending(), 0u);
}

// DequeuingScheduler lets a test do what TimerThread does just before running
// a due task: take it out of the queue (from then on Cancel fails), then run
// it, the two steps apart. Single-threaded.
class DequeuingScheduler final : public Scheduler {
 public:
  TaskId RunAt(absl::Time, Task task) override {
    tasks_.emplace(++last_id_, std::move(task));
    return last_id_;
  }
  bool Cancel(TaskId id) override { return tasks_.erase(id) > 0; }

  // Dequeue takes the earliest task out, to be run by the caller.
  Task Dequeue() {
    auto node = tasks_.extract(tasks_.begin());
    return std::move(node.mapped());
  }
  size_t Pending() const { return tasks_.size(); }

 private:
  std::map<TaskId, Task> tasks_;
  TaskId last_id_ = 0;
};

TEST_F(ClientSecretCredentialRetryTest, DestructionAnswersARetryWhoseTaskHasJustBeenDequeued) {
  transport_.Enqueue(503, "busy");
  DequeuingScheduler scheduler;
  auto credential = ClientSecretCredential::Create(Options(), transport_, clock_, &scheduler);
  ASSERT_TRUE(credential.ok()) << credential.status();
  int calls = 0;
  absl::StatusOr<AccessToken> result = absl::UnknownError("unset");
  (*credential)->GetToken(ContextWithin(absl::Seconds(30)), [&](absl::StatusOr<AccessToken> t) {
    ++calls;
    result = std::move(t);
  });
  EXPECT_EQ(calls, 0);
  ASSERT_EQ(scheduler.Pending(), 1u);
  // The timer thread has taken the retry's task but not run it yet.
  Scheduler::Task started = scheduler.Dequeue();
  credential->reset();
  // The destructor could not cancel the task, yet the caller has its answer.
  ASSERT_EQ(calls, 1);
  EXPECT_EQ(ErrorReason(result.status()), "TOKEN_ENDPOINT_UNAVAILABLE");
  EXPECT_EQ(Metadata(result.status(), "attempts"), "1");
  // The task runs late: no second answer, no request.
  std::move(started)();
  started = nullptr;
  EXPECT_EQ(calls, 1);
  EXPECT_EQ(transport_.requests().size(), 1u);
  EXPECT_EQ(scheduler.Pending(), 0u);
}

TEST_F(ClientSecretCredentialRetryTest, SecretAndTokenNeverAppearInRetriedErrors) {
  const std::string echo = absl::StrCat(kSecret, " ", kToken);
  for (int i = 0; i < 5; ++i) {
    if (i % 2 == 0) {
      transport_.Enqueue(503, echo);
    } else {
      transport_.EnqueueError(MakeError(absl::StatusCode::kUnavailable,
                                        absl::StrCat("lost: ", kSecret), "UPSTREAM_CONNECTION_LOST",
                                        {{"request_sent", "true"}, {"echo", kSecret}}));
    }
  }
  auto token = GetRetrying(ContextWithin(absl::Seconds(60)));
  ASSERT_FALSE(token.ok());
  EXPECT_EQ(Metadata(token.status(), "attempts"), "5");
  ExpectNoSecrets(token.status());
}

TEST_F(ClientSecretCredentialRetryTest, TheCacheSharesOneRetryingRequest) {
  transport_.Enqueue(503, "busy");
  transport_.Enqueue(200, kGoodAnswer);
  CachingTokenCredential cache(MakeRetrying(), clock_);
  std::vector<absl::StatusOr<AccessToken>> results;
  for (int i = 0; i < 3; ++i) {
    cache.GetToken(ContextWithin(absl::Seconds(30)),
                   [&](absl::StatusOr<AccessToken> token) { results.push_back(std::move(token)); });
  }
  EXPECT_TRUE(results.empty());
  RunRetries();
  ASSERT_EQ(results.size(), 3u);
  for (const auto& token : results) {
    ASSERT_TRUE(token.ok()) << token.status();
    EXPECT_EQ(token->token, "abc");
  }
  EXPECT_EQ(cache.TokenRequests(), 1);
  EXPECT_EQ(transport_.requests().size(), 2u);
}

TEST(ClientSecretCredentialTimerTest, RetriesOnARealTimerThread) {
  FakeTransport transport;
  transport.Enqueue(502, "");
  transport.Enqueue(200, kGoodAnswer);
  TimerThread timers;
  ClientSecretCredentialOptions options;
  options.tenant_id = kTenant;
  options.client_id = kClientId;
  options.client_secret = kSecret;
  auto credential = ClientSecretCredential::Create(options, transport, Clock::Real(), &timers);
  ASSERT_TRUE(credential.ok()) << credential.status();
  absl::Notification done;
  absl::StatusOr<AccessToken> result = absl::UnknownError("unset");
  TokenRequestContext context = ScopeContext();
  context.deadline = absl::Now() + absl::Seconds(10);
  (*credential)->GetToken(context, [&](absl::StatusOr<AccessToken> token) {
    result = std::move(token);
    done.Notify();
  });
  ASSERT_TRUE(done.WaitForNotificationWithTimeout(absl::Seconds(10)));
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(transport.requests().size(), 2u);
}

TEST(ClientSecretCredentialTimerTest, DestructionRacingRetriesCallsEachCallerOnce) {
  // A token endpoint that is always busy, answering inside Send.
  class BusyTransport final : public http::HttpTransport {
   public:
    void Send(http::HttpRequest, Callback done) override {
      ++sent;
      http::HttpResponse response;
      response.status = 503;
      response.headers = {{"Retry-After", "0"}};  // retry at once: many races
      std::move(done)(response);
    }
    std::atomic<int> sent{0};
  };
  ClientSecretCredentialOptions options;
  options.tenant_id = kTenant;
  options.client_id = kClientId;
  options.client_secret = kSecret;
  for (int round = 0; round < 20; ++round) {
    BusyTransport transport;
    TimerThread timers;
    auto credential = ClientSecretCredential::Create(options, transport, Clock::Real(), &timers);
    ASSERT_TRUE(credential.ok()) << credential.status();
    constexpr int kCallers = 20;
    std::atomic<int> calls[kCallers] = {};
    for (int i = 0; i < kCallers; ++i) {
      (*credential)->GetToken(ScopeContext(), [&calls, i](absl::StatusOr<AccessToken> token) {
        EXPECT_FALSE(token.ok());
        ++calls[i];
      });
    }
    absl::SleepFor(absl::Microseconds(50 * round));
    credential->reset();
    // Every caller has its answer once the credential is gone.
    for (int i = 0; i < kCallers; ++i) EXPECT_EQ(calls[i].load(), 1) << round << "/" << i;
    EXPECT_LE(transport.sent.load(), kCallers * 5);
  }
}

TEST(ClientSecretParseTest, ParsesWithoutACredential) {
  http::HttpResponse response;
  response.status = 200;
  response.body = R"({"access_token":"x","expires_in":60.5,"unknown":{"nested":null}})";
  const absl::Time now = absl::FromUnixSeconds(1000);
  auto token = ParseTokenResponse(response, now);
  ASSERT_TRUE(token.ok()) << token.status();
  EXPECT_EQ(token->token, "x");
  EXPECT_EQ(token->expires_on, now + absl::Milliseconds(60500));
}

}  // namespace
}  // namespace defender::auth
