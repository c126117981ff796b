#include "adapters/auth/managed_identity_credential.h"

#include <map>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
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
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::Not;
using ::testing::Pair;

constexpr char kScope[] = "https://api.securitycenter.microsoft.com/.default";
constexpr char kEscapedResource[] = "https%3A%2F%2Fapi.securitycenter.microsoft.com";
constexpr char kClientId[] = "11111111-2222-3333-4444-555555555555";
constexpr char kIdentityHeader[] = "9f0c1b2a-identity-header-SECRET-7d6e5f";
constexpr char kAppServiceEndpoint[] = "http://127.0.0.1:41741/msi/token";
constexpr char kToken[] = "eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9.mi-payload.signature";
constexpr char kImdsUrl[] =
    "http://169.254.169.254/metadata/identity/oauth2/token?api-version=2018-02-01"
    "&resource=https%3A%2F%2Fapi.securitycenter.microsoft.com";
// IMDS's real answer: every number a string.
constexpr char kImdsAnswer[] =
    R"({"access_token":"eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9.mi-payload.signature",)"
    R"("client_id":"11111111-2222-3333-4444-555555555555","expires_in":"86399",)"
    R"("expires_on":"1700086399","ext_expires_in":"86399","not_before":"1700000000",)"
    R"("resource":"https://api.securitycenter.microsoft.com","token_type":"Bearer"})";

TokenRequestContext ScopeContext(std::vector<std::string> scopes = {kScope}) {
  TokenRequestContext context;
  context.scopes = std::move(scopes);
  return context;
}

// Metadata returns the ErrorInfo metadata `key` of `status`, or "<none>".
std::string Metadata(const absl::Status& status, const std::string& key) {
  auto info = GetErrorInfo(status);
  if (!info) return "<no ErrorInfo>";
  auto it = info->metadata().find(key);
  return it == info->metadata().end() ? "<none>" : it->second;
}

// ExpectNoSecrets checks that neither the identity header nor the token shows
// in the message or the ErrorInfo of `status`.
void ExpectNoSecrets(const absl::Status& status) {
  const std::string message(status.message());
  EXPECT_THAT(message, Not(HasSubstr(kIdentityHeader)));
  EXPECT_THAT(message, Not(HasSubstr(kToken)));
  auto info = GetErrorInfo(status);
  if (!info) return;
  for (const auto& [key, value] : info->metadata()) {
    EXPECT_THAT(value, Not(HasSubstr(kIdentityHeader))) << key;
    EXPECT_THAT(value, Not(HasSubstr(kToken))) << key;
  }
}

absl::Status TransportError(absl::StatusCode code, const std::string& reason,
                            const std::string& request_sent = "true") {
  std::map<std::string, std::string> metadata = {{"request_sent", request_sent}};
  if (reason != "INVALID_HTTP_REQUEST") metadata["curl_code"] = "7";
  return MakeError(code, absl::StrCat("transport says ", reason), reason, metadata);
}

class ManagedIdentityCredentialTest : public ::testing::Test {
 protected:
  static ManagedIdentityCredentialOptions AppServiceOptions() {
    ManagedIdentityCredentialOptions options;
    options.identity_endpoint = kAppServiceEndpoint;
    options.identity_header = kIdentityHeader;
    return options;
  }

  std::unique_ptr<ManagedIdentityCredential> Make(ManagedIdentityCredentialOptions options = {},
                                                  Scheduler* scheduler = nullptr) {
    auto credential =
        ManagedIdentityCredential::Create(std::move(options), transport_, clock_, scheduler);
    EXPECT_TRUE(credential.ok()) << credential.status();
    return credential.ok() ? *std::move(credential) : nullptr;
  }
  std::unique_ptr<ManagedIdentityCredential> MakeRetrying(
      ManagedIdentityCredentialOptions options = {}) {
    return Make(std::move(options), &scheduler_);
  }

  // Get asks `credential` for a token and runs the scheduled retries, moving
  // the clock to each; FakeTransport answers inside Send.
  absl::StatusOr<AccessToken> Get(TokenCredential& credential,
                                  TokenRequestContext context = ScopeContext()) {
    std::optional<absl::StatusOr<AccessToken>> result;
    credential.GetToken(context, [&result](absl::StatusOr<AccessToken> token) {
      EXPECT_FALSE(result.has_value()) << "callback called twice";
      result = std::move(token);
    });
    RunRetries();
    EXPECT_TRUE(result.has_value()) << "callback not called";
    return result.value_or(absl::InternalError("no callback"));
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

  TokenRequestContext ContextWithin(absl::Duration in) {
    TokenRequestContext context = ScopeContext();
    context.deadline = clock_.Now() + in;
    return context;
  }

  FakeTransport transport_;
  FakeClock clock_;
  ManualScheduler scheduler_{clock_};
};

// --- Requests ---------------------------------------------------------------

TEST_F(ManagedIdentityCredentialTest, ImdsSystemAssignedExactRequest) {
  transport_.Enqueue(200, kImdsAnswer);
  auto credential = Make();
  EXPECT_EQ(credential->Name(), "ManagedIdentityCredential");
  EXPECT_FALSE(credential->UsesAppService());
  EXPECT_EQ(credential->Endpoint(), "http://169.254.169.254/metadata/identity/oauth2/token");
  auto token = Get(*credential);
  ASSERT_TRUE(token.ok()) << token.status();
  EXPECT_EQ(token->token, kToken);

  const auto requests = transport_.requests();
  ASSERT_EQ(requests.size(), 1u);
  EXPECT_EQ(requests[0].method, "GET");
  EXPECT_EQ(requests[0].url, kImdsUrl);
  EXPECT_THAT(requests[0].headers, ElementsAre(Pair("Metadata", "true")));
  EXPECT_TRUE(requests[0].body.empty());
  EXPECT_TRUE(requests[0].no_proxy);
  EXPECT_TRUE(requests[0].idempotent);
}

TEST_F(ManagedIdentityCredentialTest, ImdsUserAssignedAddsTheClientId) {
  transport_.Enqueue(200, kImdsAnswer);
  ManagedIdentityCredentialOptions options;
  options.client_id = absl::StrCat("  ", kClientId, "\n");
  auto credential = Make(options);
  ASSERT_TRUE(Get(*credential).ok());
  const auto requests = transport_.requests();
  ASSERT_EQ(requests.size(), 1u);
  EXPECT_EQ(requests[0].url, absl::StrCat(kImdsUrl, "&client_id=", kClientId));
  EXPECT_THAT(requests[0].headers, ElementsAre(Pair("Metadata", "true")));
}

TEST_F(ManagedIdentityCredentialTest, ClientIdIsEscaped) {
  transport_.Enqueue(200, kImdsAnswer);
  ManagedIdentityCredentialOptions options;
  options.client_id = "a b&c=d";
  auto credential = Make(options);
  ASSERT_TRUE(Get(*credential).ok());
  EXPECT_EQ(transport_.requests()[0].url, absl::StrCat(kImdsUrl, "&client_id=a%20b%26c%3Dd"));
}

TEST_F(ManagedIdentityCredentialTest, ImdsEndpointIsOverridable) {
  transport_.Enqueue(200, kImdsAnswer);
  ManagedIdentityCredentialOptions options;
  options.imds_endpoint = " HTTP://127.0.0.1:8080/ ";
  auto credential = Make(options);
  EXPECT_EQ(credential->Endpoint(), "http://127.0.0.1:8080/metadata/identity/oauth2/token");
  ASSERT_TRUE(Get(*credential).ok());
  EXPECT_EQ(transport_.requests()[0].url,
            "http://127.0.0.1:8080/metadata/identity/oauth2/token?api-version=2018-02-01"
            "&resource=https%3A%2F%2Fapi.securitycenter.microsoft.com");
}

TEST_F(ManagedIdentityCredentialTest, EmptyImdsEndpointIsTheDefault) {
  ManagedIdentityCredentialOptions options;
  options.imds_endpoint = "";
  EXPECT_EQ(Make(options)->Endpoint(), "http://169.254.169.254/metadata/identity/oauth2/token");
}

TEST_F(ManagedIdentityCredentialTest, AppServiceExactRequest) {
  transport_.Enqueue(200, R"({"access_token":"t","expires_on":"1700003600",)"
                          R"("resource":"https://api.securitycenter.microsoft.com",)"
                          R"("token_type":"Bearer","client_id":"x"})");
  auto credential = Make(AppServiceOptions());
  EXPECT_TRUE(credential->UsesAppService());
  EXPECT_EQ(credential->Endpoint(), kAppServiceEndpoint);
  ASSERT_TRUE(Get(*credential).ok());
  const auto requests = transport_.requests();
  ASSERT_EQ(requests.size(), 1u);
  EXPECT_EQ(requests[0].method, "GET");
  EXPECT_EQ(requests[0].url, absl::StrCat(kAppServiceEndpoint,
                                          "?api-version=2019-08-01&resource=", kEscapedResource));
  EXPECT_THAT(requests[0].headers, ElementsAre(Pair("X-IDENTITY-HEADER", kIdentityHeader)));
  EXPECT_TRUE(requests[0].no_proxy);
}

TEST_F(ManagedIdentityCredentialTest, AppServiceUserAssignedAddsTheClientId) {
  transport_.Enqueue(200, kImdsAnswer);
  ManagedIdentityCredentialOptions options = AppServiceOptions();
  options.client_id = kClientId;
  auto credential = Make(options);
  ASSERT_TRUE(Get(*credential).ok());
  EXPECT_EQ(transport_.requests()[0].url,
            absl::StrCat(kAppServiceEndpoint, "?api-version=2019-08-01&resource=", kEscapedResource,
                         "&client_id=", kClientId));
}

TEST_F(ManagedIdentityCredentialTest, AppServiceEndpointWithQueryKeepsIt) {
  transport_.Enqueue(200, kImdsAnswer);
  ManagedIdentityCredentialOptions options = AppServiceOptions();
  options.identity_endpoint = "https://host.example/msi/token/?x=1";
  auto credential = Make(options);
  ASSERT_TRUE(Get(*credential).ok());
  EXPECT_EQ(transport_.requests()[0].url,
            absl::StrCat("https://host.example/msi/token/?x=1&api-version=2019-08-01&resource=",
                         kEscapedResource));
}

TEST_F(ManagedIdentityCredentialTest, ScopeWithoutDefaultSuffixIsUsedAsIs) {
  transport_.Enqueue(200, kImdsAnswer);
  auto credential = Make();
  ASSERT_TRUE(Get(*credential, ScopeContext({"https://graph.microsoft.com"})).ok());
  EXPECT_EQ(transport_.requests()[0].url,
            "http://169.254.169.254/metadata/identity/oauth2/token?api-version=2018-02-01"
            "&resource=https%3A%2F%2Fgraph.microsoft.com");
}

TEST_F(ManagedIdentityCredentialTest, RequestsCarryTheDeadline) {
  transport_.Enqueue(200, kImdsAnswer);
  auto credential = Make();
  TokenRequestContext context = ContextWithin(absl::Seconds(7));
  ASSERT_TRUE(Get(*credential, context).ok());
  EXPECT_EQ(transport_.requests()[0].deadline, context.deadline);
}

TEST_F(ManagedIdentityCredentialTest, ScopesOtherThanOneAreInvalidArgument) {
  auto credential = Make();
  for (const auto& scopes : std::vector<std::vector<std::string>>{
           {}, {kScope, "https://graph.microsoft.com/.default"}, {"/.default"}, {"  "}}) {
    auto token = Get(*credential, ScopeContext(scopes));
    ASSERT_FALSE(token.ok());
    EXPECT_EQ(token.status().code(), absl::StatusCode::kInvalidArgument) << token.status();
    EXPECT_EQ(ErrorReason(token.status()), "INVALID_CONFIGURATION");
  }
  EXPECT_TRUE(transport_.requests().empty());
}

// --- Answers ----------------------------------------------------------------

TEST_F(ManagedIdentityCredentialTest, ExpiresInAsString) {
  transport_.Enqueue(200, R"({"access_token":"t","expires_in":"3599"})");
  auto token = Get(*Make());
  ASSERT_TRUE(token.ok()) << token.status();
  EXPECT_EQ(token->expires_on, clock_.Now() + absl::Seconds(3599));
}

TEST_F(ManagedIdentityCredentialTest, ExpiresInAsNumber) {
  transport_.Enqueue(200, R"({"access_token":"t","expires_in":3599,"expires_on":1})");
  auto token = Get(*Make());
  ASSERT_TRUE(token.ok()) << token.status();
  EXPECT_EQ(token->expires_on, clock_.Now() + absl::Seconds(3599));
}

TEST_F(ManagedIdentityCredentialTest, ExpiresOnAsString) {
  transport_.Enqueue(200, R"({"access_token":"t","expires_on":" 1700003600 "})");
  auto token = Get(*Make());
  ASSERT_TRUE(token.ok()) << token.status();
  EXPECT_EQ(token->expires_on, absl::FromUnixSeconds(1700003600));
}

TEST_F(ManagedIdentityCredentialTest, ExpiresOnAsNumber) {
  transport_.Enqueue(200, R"({"access_token":"t","expires_on":1700003600})");
  auto token = Get(*Make());
  ASSERT_TRUE(token.ok()) << token.status();
  EXPECT_EQ(token->expires_on, absl::FromUnixSeconds(1700003600));
}

TEST_F(ManagedIdentityCredentialTest, ExpiresOnAsAppService2017Date) {
  transport_.Enqueue(200, R"({"access_token":"t","expires_on":"11/03/2021 20:17:41 +00:00"})");
  transport_.Enqueue(200, R"({"access_token":"t","expires_on":"6/20/2019 2:57:58 AM +02:00"})");
  auto credential = Make();
  auto token = Get(*credential);
  ASSERT_TRUE(token.ok()) << token.status();
  EXPECT_EQ(token->expires_on,
            absl::FromCivil(absl::CivilSecond(2021, 11, 3, 20, 17, 41), absl::UTCTimeZone()));
  token = Get(*credential);
  ASSERT_TRUE(token.ok()) << token.status();
  EXPECT_EQ(token->expires_on,
            absl::FromCivil(absl::CivilSecond(2019, 6, 20, 0, 57, 58), absl::UTCTimeZone()));
}

TEST_F(ManagedIdentityCredentialTest, ExpiryIsDatedFromWhenTheRequestWasSent) {
  // A transport that answers after the clock has moved on.
  class SlowTransport final : public http::HttpTransport {
   public:
    explicit SlowTransport(FakeClock& clock) : clock_(clock) {}
    void Send(http::HttpRequest, Callback done) override {
      clock_.Advance(absl::Seconds(5));
      http::HttpResponse response;
      response.status = 200;
      response.body = R"({"access_token":"t","expires_in":"60"})";
      std::move(done)(response);
    }
    FakeClock& clock_;
  } slow(clock_);
  const absl::Time start = clock_.Now();
  auto credential = ManagedIdentityCredential::Create({}, slow, clock_);
  ASSERT_TRUE(credential.ok());
  auto token = Get(**credential);
  ASSERT_TRUE(token.ok()) << token.status();
  EXPECT_EQ(token->expires_on, start + absl::Seconds(60));
}

TEST_F(ManagedIdentityCredentialTest, AnswersWithoutTokenOrExpiryAreBadTokenResponses) {
  auto credential = Make();
  for (const char* body :
       {"not json", "[]", R"({"expires_in":"60"})", R"({"access_token":"","expires_in":"60"})",
        R"({"access_token":7,"expires_in":"60"})", R"({"access_token":"t"})",
        R"({"access_token":"t","expires_in":"soon"})",
        R"({"access_token":"t","expires_on":"tomorrow"})",
        R"({"access_token":"t","expires_in":-5})"}) {
    transport_.Enqueue(200, body);
    auto token = Get(*credential);
    ASSERT_FALSE(token.ok()) << body;
    EXPECT_EQ(token.status().code(), absl::StatusCode::kInternal) << body;
    EXPECT_EQ(ErrorReason(token.status()), "BAD_TOKEN_RESPONSE") << body;
    EXPECT_EQ(Metadata(token.status(), "attempts"), "1");
  }
}

// --- Errors -----------------------------------------------------------------

TEST_F(ManagedIdentityCredentialTest, IdentityNotFoundHintsAtTheClientId) {
  transport_.Enqueue(400,
                     R"({"error":"invalid_request","error_description":"Identity not found"})");
  ManagedIdentityCredentialOptions options;
  options.client_id = kClientId;
  auto token = Get(*MakeRetrying(options));
  ASSERT_FALSE(token.ok());
  EXPECT_EQ(token.status().code(), absl::StatusCode::kUnauthenticated);
  EXPECT_EQ(ErrorReason(token.status()), "MANAGED_IDENTITY_REJECTED");
  EXPECT_THAT(token.status().message(), HasSubstr("Identity not found"));
  EXPECT_THAT(token.status().message(), HasSubstr("invalid_request"));
  EXPECT_THAT(token.status().message(), HasSubstr("check AZURE_CLIENT_ID"));
  EXPECT_EQ(Metadata(token.status(), "http_status"), "400");
  EXPECT_EQ(Metadata(token.status(), "error"), "invalid_request");
  EXPECT_EQ(Metadata(token.status(), "attempts"), "1");
  EXPECT_EQ(Metadata(token.status(), "endpoint"),
            "http://169.254.169.254/metadata/identity/oauth2/token");
  EXPECT_EQ(transport_.requests().size(), 1u);  // never retried
}

TEST_F(ManagedIdentityCredentialTest, SystemAssignedNotFoundHintsAtEnablingOne) {
  transport_.Enqueue(400,
                     R"({"error":"invalid_request","error_description":"Identity not found"})");
  auto token = Get(*Make());
  ASSERT_FALSE(token.ok());
  EXPECT_EQ(ErrorReason(token.status()), "MANAGED_IDENTITY_REJECTED");
  EXPECT_THAT(token.status().message(), HasSubstr("no system-assigned managed identity"));
}

TEST_F(ManagedIdentityCredentialTest, AppServiceRejectionsAreUnauthenticated) {
  for (int status : {400, 401, 403}) {
    transport_.Enqueue(
        status, R"({"statusCode":401,"message":"Unauthorized request","correlationId":"c-1"})");
    auto token = Get(*MakeRetrying(AppServiceOptions()));
    ASSERT_FALSE(token.ok());
    EXPECT_EQ(token.status().code(), absl::StatusCode::kUnauthenticated) << status;
    EXPECT_EQ(ErrorReason(token.status()), "MANAGED_IDENTITY_REJECTED");
    EXPECT_THAT(token.status().message(), HasSubstr("Unauthorized request"));
    EXPECT_EQ(Metadata(token.status(), "correlation_id"), "c-1");
    EXPECT_EQ(Metadata(token.status(), "http_status"), absl::StrCat(status));
    if (status != 400) {
      EXPECT_THAT(token.status().message(), HasSubstr("check IDENTITY_HEADER"));
    }
  }
  EXPECT_EQ(transport_.requests().size(), 3u);
}

TEST_F(ManagedIdentityCredentialTest, ConnectFailureIsUnavailableAtOnce) {
  transport_.EnqueueError(
      TransportError(absl::StatusCode::kUnavailable, "UPSTREAM_CONNECT_FAILED", "false"));
  auto token = Get(*MakeRetrying(), ContextWithin(absl::Seconds(30)));
  ASSERT_FALSE(token.ok());
  EXPECT_EQ(token.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(ErrorReason(token.status()), "MANAGED_IDENTITY_UNAVAILABLE");
  EXPECT_THAT(token.status().message(),
              HasSubstr("no managed identity endpoint at "
                        "http://169.254.169.254/metadata/identity/oauth2/token "
                        "(not running on Azure?)"));
  EXPECT_EQ(Metadata(token.status(), "attempts"), "1");
  EXPECT_EQ(Metadata(token.status(), "cause"), "UPSTREAM_CONNECT_FAILED");
  EXPECT_EQ(transport_.requests().size(), 1u);
  EXPECT_EQ(scheduler_.Pending(), 0u);
}

TEST_F(ManagedIdentityCredentialTest, ConnectTimeoutIsUnavailableAtOnce) {
  transport_.EnqueueError(
      TransportError(absl::StatusCode::kDeadlineExceeded, "UPSTREAM_TIMEOUT", "false"));
  auto token = Get(*MakeRetrying(), ContextWithin(absl::Seconds(30)));
  ASSERT_FALSE(token.ok());
  EXPECT_EQ(ErrorReason(token.status()), "MANAGED_IDENTITY_UNAVAILABLE");
  EXPECT_EQ(transport_.requests().size(), 1u);
}

TEST_F(ManagedIdentityCredentialTest, OtherStatusesAreEndpointErrors) {
  transport_.Enqueue(405, R"({"message":"method not allowed"})");
  auto token = Get(*MakeRetrying());
  ASSERT_FALSE(token.ok());
  EXPECT_EQ(token.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(ErrorReason(token.status()), "MANAGED_IDENTITY_ENDPOINT_ERROR");
  EXPECT_THAT(token.status().message(), HasSubstr("method not allowed"));
  EXPECT_EQ(transport_.requests().size(), 1u);
}

TEST_F(ManagedIdentityCredentialTest, OtherTransportErrorsPassThroughPrefixed) {
  transport_.EnqueueError(
      TransportError(absl::StatusCode::kInvalidArgument, "INVALID_HTTP_REQUEST", "false"));
  auto token = Get(*MakeRetrying());
  ASSERT_FALSE(token.ok());
  EXPECT_EQ(token.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ErrorReason(token.status()), "INVALID_HTTP_REQUEST");
  EXPECT_THAT(token.status().message(), HasSubstr("managed identity token request: "));
  EXPECT_EQ(transport_.requests().size(), 1u);
}

TEST_F(ManagedIdentityCredentialTest, IdentityHeaderAndTokenNeverAppearInErrors) {
  // Endpoints that echo the header they got (nothing answers with a token
  // in an error; the header is what a broken endpoint could reflect).
  const std::string echo = absl::StrCat("got header ", kIdentityHeader);
  const std::string json_echo =
      absl::StrCat(R"({"error":")", kIdentityHeader, R"(","error_description":")", echo,
                   R"(","correlationId":")", kIdentityHeader, R"("})");
  auto credential = MakeRetrying(AppServiceOptions());
  for (int status : {400, 401, 403, 405, 500}) {
    transport_.Enqueue(status, json_echo);
    for (int i = 0; i < 4 && status == 500; ++i) transport_.Enqueue(status, json_echo);
    auto token = Get(*credential, ContextWithin(absl::Minutes(5)));
    ASSERT_FALSE(token.ok()) << status;
    ExpectNoSecrets(token.status());
  }
  transport_.EnqueueError(MakeError(absl::StatusCode::kInternal, absl::StrCat("boom ", echo),
                                    "HTTP_TRANSPORT_INTERNAL", {{"echo", echo}}));
  auto token = Get(*credential);
  ASSERT_FALSE(token.ok());
  ExpectNoSecrets(token.status());
  EXPECT_THAT(std::string(token.status().message()), HasSubstr("[redacted]"));
}

// --- Retries ----------------------------------------------------------------

TEST_F(ManagedIdentityCredentialTest, TransientStatusesAreRetriedUntilATokenComes) {
  transport_.Enqueue(503, "busy");
  transport_.Enqueue(404, "");
  transport_.Enqueue(410, "");
  transport_.Enqueue(500, "");
  transport_.Enqueue(200, kImdsAnswer);
  auto credential = MakeRetrying();
  TokenRequestContext context = ContextWithin(absl::Seconds(30));
  std::optional<absl::StatusOr<AccessToken>> result;
  credential->GetToken(context, [&](absl::StatusOr<AccessToken> token) { result = token; });
  const absl::Time start = clock_.Now();
  const std::vector<absl::Duration> pauses = RunRetries();
  ASSERT_TRUE(result.has_value());
  ASSERT_TRUE(result->ok()) << result->status();
  EXPECT_EQ((*result)->token, kToken);
  EXPECT_EQ((*result)->expires_on, clock_.Now() + absl::Seconds(86399));
  // Exponential backoff, jittered into [d/2, d]: 200, 400, 800, 1600 ms.
  ASSERT_EQ(pauses.size(), 4u);
  absl::Duration d = absl::Milliseconds(200);
  for (absl::Duration pause : pauses) {
    EXPECT_GE(pause, d / 2);
    EXPECT_LE(pause, d);
    d *= 2;
  }
  EXPECT_GT(clock_.Now(), start);
  const auto requests = transport_.requests();
  ASSERT_EQ(requests.size(), 5u);
  for (const auto& request : requests) {
    EXPECT_EQ(request.url, kImdsUrl);
    EXPECT_EQ(request.deadline, context.deadline);
    EXPECT_TRUE(request.no_proxy);
  }
}

TEST_F(ManagedIdentityCredentialTest, ThrottlingHonoursRetryAfter) {
  transport_.Enqueue(429, "", {{"Retry-After", "3"}});
  transport_.Enqueue(200, kImdsAnswer);
  auto credential = MakeRetrying();
  std::optional<absl::StatusOr<AccessToken>> result;
  credential->GetToken(ContextWithin(absl::Seconds(30)),
                       [&](absl::StatusOr<AccessToken> token) { result = token; });
  EXPECT_THAT(RunRetries(), ElementsAre(absl::Seconds(3)));
  ASSERT_TRUE(result.has_value());
  EXPECT_TRUE(result->ok()) << result->status();
  EXPECT_EQ(transport_.requests().size(), 2u);
}

TEST_F(ManagedIdentityCredentialTest, LostConnectionsAndTimeoutsAreRetried) {
  transport_.EnqueueError(
      TransportError(absl::StatusCode::kUnavailable, "UPSTREAM_CONNECTION_LOST"));
  transport_.EnqueueError(TransportError(absl::StatusCode::kDeadlineExceeded, "UPSTREAM_TIMEOUT"));
  transport_.Enqueue(200, kImdsAnswer);
  auto token = Get(*MakeRetrying(), ContextWithin(absl::Seconds(30)));
  ASSERT_TRUE(token.ok()) << token.status();
  EXPECT_EQ(transport_.requests().size(), 3u);
}

TEST_F(ManagedIdentityCredentialTest, GivesUpAfterFourRetries) {
  for (int i = 0; i < 10; ++i) transport_.Enqueue(503, "");
  auto token = Get(*MakeRetrying(), ContextWithin(absl::Minutes(5)));
  ASSERT_FALSE(token.ok());
  EXPECT_EQ(token.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(ErrorReason(token.status()), "MANAGED_IDENTITY_ENDPOINT_ERROR");
  EXPECT_EQ(Metadata(token.status(), "http_status"), "503");
  EXPECT_EQ(Metadata(token.status(), "attempts"), "5");
  EXPECT_EQ(transport_.requests().size(), 5u);
}

TEST_F(ManagedIdentityCredentialTest, FinalThrottlingIsResourceExhaustedWithRetryInfo) {
  for (int i = 0; i < 5; ++i) transport_.Enqueue(429, "", {{"Retry-After", "1"}});
  auto token = Get(*MakeRetrying(), ContextWithin(absl::Minutes(5)));
  ASSERT_FALSE(token.ok());
  EXPECT_EQ(token.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(ErrorReason(token.status()), "MANAGED_IDENTITY_THROTTLED");
  EXPECT_EQ(GetRetryDelay(token.status()), absl::Seconds(1));
  EXPECT_EQ(Metadata(token.status(), "attempts"), "5");
}

TEST_F(ManagedIdentityCredentialTest, RetriesStopBeforeTheDeadline) {
  for (int i = 0; i < 10; ++i) transport_.Enqueue(503, "");
  // The first retry starts within 200 ms (+100 ms to spare: fits); the
  // second at least 300 ms after the start: it would not.
  auto token = Get(*MakeRetrying(), ContextWithin(absl::Milliseconds(300)));
  ASSERT_FALSE(token.ok());
  EXPECT_EQ(Metadata(token.status(), "attempts"), "2");
  EXPECT_EQ(transport_.requests().size(), 2u);
}

TEST_F(ManagedIdentityCredentialTest, RetryAfterBeyondTheDeadlineEndsTheRetries) {
  transport_.Enqueue(429, "", {{"Retry-After", "1"}});
  auto token = Get(*MakeRetrying(), ContextWithin(absl::Milliseconds(1050)));
  ASSERT_FALSE(token.ok());
  EXPECT_EQ(ErrorReason(token.status()), "MANAGED_IDENTITY_THROTTLED");
  EXPECT_EQ(Metadata(token.status(), "attempts"), "1");
  EXPECT_EQ(scheduler_.Pending(), 0u);
}

TEST_F(ManagedIdentityCredentialTest, WithoutASchedulerNothingIsRetried) {
  transport_.Enqueue(503, "");
  transport_.Enqueue(200, kImdsAnswer);
  auto token = Get(*Make(), ContextWithin(absl::Seconds(30)));
  ASSERT_FALSE(token.ok());
  EXPECT_EQ(ErrorReason(token.status()), "MANAGED_IDENTITY_ENDPOINT_ERROR");
  EXPECT_EQ(Metadata(token.status(), "attempts"), "1");
  EXPECT_EQ(transport_.requests().size(), 1u);
}

TEST_F(ManagedIdentityCredentialTest, DestroyingTheCredentialEndsItsScheduledRetries) {
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
  EXPECT_EQ(ErrorReason(result->status()), "MANAGED_IDENTITY_ENDPOINT_ERROR");
  EXPECT_EQ(Metadata(result->status(), "attempts"), "1");
  EXPECT_EQ(scheduler_.Pending(), 0u);
}

TEST_F(ManagedIdentityCredentialTest, WorksInsideTheCache) {
  transport_.Enqueue(503, "busy");
  transport_.Enqueue(200, kImdsAnswer);
  CachingTokenCredential cache(MakeRetrying(), clock_);
  EXPECT_EQ(cache.Name(), "ManagedIdentityCredential");
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
    EXPECT_EQ(token->token, kToken);
  }
  // Later callers get the cached token without a request.
  auto again = Get(cache);
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(again->token, kToken);
  EXPECT_EQ(cache.TokenRequests(), 1);
  EXPECT_EQ(transport_.requests().size(), 2u);
}

TEST(ManagedIdentityCredentialTimerTest, RetriesOnARealTimerThread) {
  FakeTransport transport;
  transport.Enqueue(410, "");
  transport.Enqueue(200, kImdsAnswer);
  TimerThread timers;
  auto credential = ManagedIdentityCredential::Create({}, transport, Clock::Real(), &timers);
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

// --- Create -----------------------------------------------------------------

TEST_F(ManagedIdentityCredentialTest, CreateRejectsBadOptionsWithoutEchoingThem) {
  struct Case {
    ManagedIdentityCredentialOptions options;
    std::string setting;
  };
  auto imds = [](std::string url) {
    ManagedIdentityCredentialOptions options;
    options.imds_endpoint = std::move(url);
    return options;
  };
  auto app = [](std::string url, std::string header = kIdentityHeader) {
    ManagedIdentityCredentialOptions options;
    options.identity_endpoint = std::move(url);
    options.identity_header = std::move(header);
    return options;
  };
  const std::string imds_setting = "AZURE_POD_IDENTITY_AUTHORITY_HOST";
  ManagedIdentityCredentialOptions bad_client;
  bad_client.client_id = "a\nb";
  const std::vector<Case> cases = {
      {imds("169.254.169.254"), imds_setting},
      {imds("ftp://169.254.169.254"), imds_setting},
      {imds("http://"), imds_setting},
      {imds("http://:80"), imds_setting},
      {imds("http://user:pw@169.254.169.254"), imds_setting},
      {imds("http://169.254.169.254?x=1"), imds_setting},
      {imds("http://169.254.169.254#frag"), imds_setting},
      {imds("http://169.254 .169.254"), imds_setting},
      {imds("http://bad!host"), imds_setting},
      {app("localhost:8081/msi/token"), "IDENTITY_ENDPOINT"},
      {app("http://h/#x"), "IDENTITY_ENDPOINT"},
      {app(kAppServiceEndpoint, ""), "IDENTITY_HEADER"},
      {app(kAppServiceEndpoint, "  "), "IDENTITY_HEADER"},
      {app(kAppServiceEndpoint, "a\r\nX-Evil: 1"), "IDENTITY_HEADER"},
      {bad_client, "AZURE_CLIENT_ID"},
  };
  for (const Case& c : cases) {
    auto credential = ManagedIdentityCredential::Create(c.options, transport_, clock_);
    ASSERT_FALSE(credential.ok()) << c.setting << " " << c.options.imds_endpoint << " "
                                  << c.options.identity_endpoint;
    EXPECT_EQ(credential.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_EQ(ErrorReason(credential.status()), "INVALID_CONFIGURATION");
    EXPECT_EQ(Metadata(credential.status(), "setting"), c.setting) << credential.status();
    const std::string message(credential.status().message());
    EXPECT_THAT(message, HasSubstr(c.setting));
    EXPECT_THAT(message, Not(HasSubstr(kIdentityHeader)));
    if (c.options.imds_endpoint.size() > 7 && c.setting == imds_setting) {  // not "http://"
      EXPECT_THAT(message, Not(HasSubstr(c.options.imds_endpoint)));
    }
  }
}

TEST_F(ManagedIdentityCredentialTest, CreateAcceptsUsualEndpoints) {
  for (const char* url : {"http://169.254.169.254", "https://imds.example:8443/base/",
                          "http://[::1]:8080", "http://localhost:2579"}) {
    ManagedIdentityCredentialOptions options;
    options.imds_endpoint = url;
    EXPECT_TRUE(ManagedIdentityCredential::Create(options, transport_, clock_).ok()) << url;
  }
  // An identity header without an endpoint is ignored (IMDS needs none).
  ManagedIdentityCredentialOptions options;
  options.identity_header = kIdentityHeader;
  transport_.Enqueue(200, kImdsAnswer);
  auto credential = Make(options);
  EXPECT_FALSE(credential->UsesAppService());
  ASSERT_TRUE(Get(*credential).ok());
  EXPECT_THAT(transport_.requests()[0].headers, ElementsAre(Pair("Metadata", "true")));
}

}  // namespace
}  // namespace defender::auth
