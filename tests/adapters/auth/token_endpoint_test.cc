#include "adapters/auth/token_endpoint.h"

#include <map>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
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
using ::testing::HasSubstr;
using ::testing::Not;

constexpr char kTenant[] = "72f988bf-86f1-41af-91ab-2d7cd011db47";
constexpr char kClientId[] = "11111111-2222-3333-4444-555555555555";
constexpr char kScope[] = "https://api.securitycenter.microsoft.com/.default";
constexpr char kTokenAnswer[] = R"({"token_type":"Bearer","expires_in":3599,"access_token":"tok"})";

TokenEndpointOptions Options() {
  TokenEndpointOptions options;
  options.tenant_id = kTenant;
  options.client_id = kClientId;
  return options;
}

TokenRequestContext Context(absl::Time deadline = absl::InfiniteFuture()) {
  TokenRequestContext context;
  context.scopes = {kScope};
  context.deadline = deadline;
  return context;
}

// CountingAuth is a ClientAuthSource that records its calls and hands out
// "secret-1", "secret-2", ... (or `error` when set).
struct CountingAuth {
  struct Call {
    std::string token_url;
    absl::Time now;
  };
  absl::Mutex mu;
  std::vector<Call> calls;
  std::optional<absl::Status> error;

  TokenEndpointClient::ClientAuthSource Source() {
    return [this](const std::string& token_url,
                  absl::Time now) -> absl::StatusOr<TokenEndpointClient::ClientAuth> {
      absl::MutexLock lock(&mu);
      calls.push_back({token_url, now});
      if (error.has_value()) return *error;
      const std::string secret = absl::StrCat("secret-", calls.size());
      return TokenEndpointClient::ClientAuth{{{"client_secret", secret}}, {secret}};
    };
  }
};

class TokenEndpointClientTest : public ::testing::Test {
 protected:
  std::unique_ptr<TokenEndpointClient> Make(Scheduler* scheduler = nullptr) {
    auto client =
        TokenEndpointClient::Create(Options(), auth_.Source(), transport_, clock_, scheduler);
    EXPECT_TRUE(client.ok()) << client.status();
    return client.ok() ? *std::move(client) : nullptr;
  }

  FakeTransport transport_;
  FakeClock clock_;
  CountingAuth auth_;
};

TEST_F(TokenEndpointClientTest, SendsClientAuthBetweenClientIdAndScope) {
  transport_.Enqueue(200, kTokenAnswer);
  auto client = Make();
  std::optional<absl::StatusOr<AccessToken>> result;
  client->GetToken(Context(), [&](absl::StatusOr<AccessToken> token) { result = token; });
  ASSERT_TRUE(result.has_value());
  ASSERT_TRUE(result->ok()) << result->status();
  ASSERT_EQ(transport_.requests().size(), 1u);
  EXPECT_EQ(transport_.requests()[0].body,
            absl::StrCat("grant_type=client_credentials&client_id=", kClientId,
                         "&client_secret=secret-1&scope=", http::UrlEscape(kScope)));
  ASSERT_EQ(auth_.calls.size(), 1u);
  EXPECT_EQ(auth_.calls[0].token_url, client->TokenUrl());
  EXPECT_EQ(auth_.calls[0].now, clock_.Now());
  EXPECT_EQ(client->ClientId(), kClientId);
}

TEST_F(TokenEndpointClientTest, EveryRetryAsksForFreshClientAuth) {
  ManualScheduler scheduler(clock_);
  auto client = Make(&scheduler);
  transport_.Enqueue(503, "busy", {{"Retry-After", "3"}});
  transport_.Enqueue(200, kTokenAnswer);
  std::optional<absl::StatusOr<AccessToken>> result;
  client->GetToken(Context(), [&](absl::StatusOr<AccessToken> token) { result = token; });
  clock_.Advance(absl::Seconds(3));
  EXPECT_EQ(scheduler.RunDue(), 1);
  ASSERT_TRUE(result.has_value());
  ASSERT_TRUE(result->ok());
  ASSERT_EQ(auth_.calls.size(), 2u);
  EXPECT_EQ(auth_.calls[1].now, auth_.calls[0].now + absl::Seconds(3));
  EXPECT_THAT(transport_.requests()[1].body, HasSubstr("client_secret=secret-2"));
}

TEST_F(TokenEndpointClientTest, AClientAuthErrorEndsTheRequestUnsent) {
  auth_.error = MakeError(absl::StatusCode::kUnauthenticated, "no assertion today", "NO_ASSERTION");
  ManualScheduler scheduler(clock_);
  auto client = Make(&scheduler);
  std::optional<absl::StatusOr<AccessToken>> result;
  client->GetToken(Context(), [&](absl::StatusOr<AccessToken> token) { result = token; });
  ASSERT_TRUE(result.has_value());
  ASSERT_FALSE(result->ok());
  EXPECT_EQ(ErrorReason(result->status()), "NO_ASSERTION");
  EXPECT_EQ(GetErrorInfo(result->status())->metadata().at("attempts"), "0");
  EXPECT_TRUE(transport_.requests().empty());
  EXPECT_EQ(scheduler.Pending(), 0u);
}

TEST_F(TokenEndpointClientTest, EveryAttemptsSecretsAreRedacted) {
  ManualScheduler scheduler(clock_);
  auto client = Make(&scheduler);
  // The first attempt's secret shows up in the second attempt's error.
  transport_.Enqueue(503, "busy", {{"Retry-After", "1"}});
  transport_.EnqueueError(MakeError(absl::StatusCode::kUnavailable,
                                    "proxy said: secret-1 and secret-2", "UPSTREAM_TLS_FAILED",
                                    {{"echo", "secret-2"}}));
  std::optional<absl::StatusOr<AccessToken>> result;
  client->GetToken(Context(), [&](absl::StatusOr<AccessToken> token) { result = token; });
  clock_.Advance(absl::Seconds(1));
  scheduler.RunDue();
  ASSERT_TRUE(result.has_value());
  ASSERT_FALSE(result->ok());
  EXPECT_EQ(result->status().message(), "token request: proxy said: [redacted] and [redacted]");
  EXPECT_EQ(GetErrorInfo(result->status())->metadata().at("echo"), "[redacted]");
  EXPECT_EQ(GetErrorInfo(result->status())->metadata().at("attempts"), "2");
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
  Task Dequeue() {
    auto node = tasks_.extract(tasks_.begin());
    return std::move(node.mapped());
  }
  size_t Pending() const { return tasks_.size(); }

 private:
  std::map<TaskId, Task> tasks_;
  TaskId last_id_ = 0;
};

TEST_F(TokenEndpointClientTest, DestructionAnswersARetryWhoseTaskHasJustBeenDequeued) {
  transport_.Enqueue(503, "busy");
  DequeuingScheduler scheduler;
  auto client = Make(&scheduler);
  int calls = 0;
  absl::StatusOr<AccessToken> result = absl::UnknownError("unset");
  auto captured = std::make_shared<int>(0);
  client->GetToken(Context(clock_.Now() + absl::Seconds(30)),
                   [&, captured](absl::StatusOr<AccessToken> t) {
                     ++calls;
                     result = std::move(t);
                   });
  ASSERT_EQ(scheduler.Pending(), 1u);
  Scheduler::Task started = scheduler.Dequeue();
  client.reset();
  ASSERT_EQ(calls, 1);
  EXPECT_EQ(ErrorReason(result.status()), "TOKEN_ENDPOINT_UNAVAILABLE");
  // The callback is gone once it has answered, though the task still holds the fetch.
  EXPECT_EQ(captured.use_count(), 1);
  // The task runs late: no second answer, no request, no client auth.
  std::move(started)();
  EXPECT_EQ(calls, 1);
  EXPECT_EQ(transport_.requests().size(), 1u);
  EXPECT_EQ(auth_.calls.size(), 1u);
}

TEST(TokenEndpointOptionsTest, NormalizesAndNamesTheBadSetting) {
  TokenEndpointOptions options;
  options.authority_host = "";
  options.tenant_id = " contoso.onmicrosoft.com ";
  options.client_id = "\tabc ";
  ASSERT_TRUE(NormalizeTokenEndpointOptions(options).ok());
  EXPECT_EQ(options.authority_host, kDefaultAuthorityHost);
  EXPECT_EQ(options.tenant_id, "contoso.onmicrosoft.com");
  EXPECT_EQ(options.client_id, "abc");
  EXPECT_EQ(TokenUrl(options),
            "https://login.microsoftonline.com/contoso.onmicrosoft.com/oauth2/v2.0/token");
  ASSERT_TRUE(NormalizeTokenEndpointOptions(options).ok());  // idempotent
  EXPECT_EQ(options.tenant_id, "contoso.onmicrosoft.com");

  const std::vector<std::pair<TokenEndpointOptions, std::string>> bad = {
      {{.authority_host = "http://login.example", .tenant_id = "t", .client_id = "c"},
       "AZURE_AUTHORITY_HOST"},
      {{.authority_host = "https://login.example/x?y", .tenant_id = "t", .client_id = "c"},
       "AZURE_AUTHORITY_HOST"},
      {{.tenant_id = "", .client_id = "c"}, "AZURE_TENANT_ID"},
      {{.tenant_id = "a/b", .client_id = "c"}, "AZURE_TENANT_ID"},
      {{.tenant_id = "t", .client_id = "  "}, "AZURE_CLIENT_ID"},
  };
  for (auto [options, setting] : bad) {
    const absl::Status status = NormalizeTokenEndpointOptions(options);
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << setting;
    EXPECT_EQ(GetErrorInfo(status)->metadata().at("setting"), setting);
    EXPECT_THAT(std::string(status.message()), Not(HasSubstr("a/b")));
  }
}

}  // namespace
}  // namespace defender::auth
