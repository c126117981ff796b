#include "adapters/auth/token_cache.h"

#include <atomic>
#include <deque>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "adapters/auth/client_secret_credential.h"
#include "adapters/common/clock.h"
#include "adapters/common/error.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/adapters/fake_transport.h"

namespace defender::auth {
namespace {

constexpr char kScope[] = "https://api.securitycenter.microsoft.com/.default";

// HeldCredential is an inner credential whose requests wait until the test
// answers them with Release (or, when answers are queued with AnswerWith,
// are answered at once inside GetToken).
class HeldCredential final : public TokenCredential {
 public:
  void GetToken(const TokenRequestContext& context, Callback done) override {
    std::optional<absl::StatusOr<AccessToken>> answer;
    {
      absl::MutexLock lock(&mu_);
      contexts_.push_back(context);
      if (!answers_.empty()) {
        answer = std::move(answers_.front());
        answers_.pop_front();
      } else {
        pending_.push_back(std::move(done));
      }
    }
    if (answer) std::move(done)(*std::move(answer));
  }
  std::string Name() const override { return "HeldCredential"; }

  // AnswerWith queues an answer given inside the next GetToken.
  void AnswerWith(absl::StatusOr<AccessToken> answer) {
    absl::MutexLock lock(&mu_);
    answers_.push_back(std::move(answer));
  }
  // Release answers the oldest held request.
  void Release(absl::StatusOr<AccessToken> result) {
    Callback done;
    {
      absl::MutexLock lock(&mu_);
      ASSERT_FALSE(pending_.empty()) << "no request is held";
      done = std::move(pending_.front());
      pending_.pop_front();
    }
    std::move(done)(std::move(result));
  }
  size_t Held() const {
    absl::MutexLock lock(&mu_);
    return pending_.size();
  }
  std::vector<TokenRequestContext> Contexts() const {
    absl::MutexLock lock(&mu_);
    return contexts_;
  }

 private:
  mutable absl::Mutex mu_;
  std::deque<Callback> pending_ ABSL_GUARDED_BY(mu_);
  std::deque<absl::StatusOr<AccessToken>> answers_ ABSL_GUARDED_BY(mu_);
  std::vector<TokenRequestContext> contexts_ ABSL_GUARDED_BY(mu_);
};

// Results collects what callbacks receive, from any thread.
class Results {
 public:
  TokenCredential::Callback Callback() {
    return [this](absl::StatusOr<AccessToken> token) {
      absl::MutexLock lock(&mu_);
      results_.push_back(std::move(token));
    };
  }
  std::vector<absl::StatusOr<AccessToken>> Get() const {
    absl::MutexLock lock(&mu_);
    return results_;
  }
  size_t Count() const { return Get().size(); }

 private:
  mutable absl::Mutex mu_;
  std::vector<absl::StatusOr<AccessToken>> results_ ABSL_GUARDED_BY(mu_);
};

TokenRequestContext Context(std::string rejected_token = "") {
  TokenRequestContext context;
  context.scopes = {kScope};
  context.rejected_token = std::move(rejected_token);
  return context;
}

class TokenCacheTest : public ::testing::Test {
 protected:
  TokenCacheTest() {
    auto inner = std::make_unique<HeldCredential>();
    inner_ = inner.get();
    cache_ = std::make_unique<CachingTokenCredential>(std::move(inner), clock_);
  }

  AccessToken Token(const std::string& value, absl::Duration lifetime = absl::Hours(1)) {
    return AccessToken{value, clock_.Now() + lifetime};
  }

  // GetNow asks the cache for a token that must come without waiting.
  absl::StatusOr<AccessToken> GetNow(TokenRequestContext context = Context()) {
    Results results;
    cache_->GetToken(context, results.Callback());
    EXPECT_EQ(results.Count(), 1u) << "the cache did not answer at once";
    return results.Count() == 1 ? results.Get()[0] : absl::InternalError("no answer");
  }

  FakeClock clock_;
  HeldCredential* inner_;
  std::unique_ptr<CachingTokenCredential> cache_;
};

TEST_F(TokenCacheTest, ReusesAFreshToken) {
  inner_->AnswerWith(Token("t1"));
  auto first = GetNow();
  ASSERT_TRUE(first.ok()) << first.status();
  EXPECT_EQ(first->token, "t1");
  clock_.Advance(absl::Minutes(30));
  auto second = GetNow();
  ASSERT_TRUE(second.ok()) << second.status();
  EXPECT_EQ(second->token, "t1");
  EXPECT_EQ(second->expires_on, first->expires_on);
  EXPECT_EQ(cache_->TokenRequests(), 1);
  EXPECT_EQ(inner_->Contexts().size(), 1u);
}

TEST_F(TokenCacheTest, RefreshesTwoMinutesBeforeExpiry) {
  inner_->AnswerWith(Token("t1", absl::Minutes(60)));
  ASSERT_TRUE(GetNow().ok());
  clock_.Advance(absl::Minutes(58) - absl::Seconds(1));
  EXPECT_EQ(GetNow()->token, "t1");
  EXPECT_EQ(cache_->TokenRequests(), 1);

  clock_.Advance(absl::Seconds(1));  // exactly expires_on - 2 min: no longer fresh
  inner_->AnswerWith(Token("t2", absl::Minutes(60)));
  EXPECT_EQ(GetNow()->token, "t2");
  EXPECT_EQ(cache_->TokenRequests(), 2);
}

TEST_F(TokenCacheTest, HonoursACustomRefreshMargin) {
  auto inner = std::make_unique<HeldCredential>();
  HeldCredential* held = inner.get();
  CachingTokenCredential cache(std::move(inner), clock_, absl::Minutes(5));
  held->AnswerWith(Token("t1", absl::Minutes(60)));
  Results results;
  cache.GetToken(Context(), results.Callback());
  clock_.Advance(absl::Minutes(55) - absl::Seconds(1));
  cache.GetToken(Context(), results.Callback());
  EXPECT_EQ(cache.TokenRequests(), 1);
  clock_.Advance(absl::Seconds(1));
  held->AnswerWith(Token("t2", absl::Minutes(60)));
  cache.GetToken(Context(), results.Callback());
  EXPECT_EQ(cache.TokenRequests(), 2);
  ASSERT_EQ(results.Count(), 3u);
  EXPECT_EQ(results.Get()[2]->token, "t2");
}

TEST_F(TokenCacheTest, ShortLivedTokenUsesHalfItsLifetimeAsMargin) {
  // 3 minutes is less than twice the 2 minute margin: reuse it for 1m30s.
  inner_->AnswerWith(Token("short", absl::Minutes(3)));
  ASSERT_TRUE(GetNow().ok());
  clock_.Advance(absl::Seconds(89));
  EXPECT_EQ(GetNow()->token, "short");
  EXPECT_EQ(cache_->TokenRequests(), 1);
  clock_.Advance(absl::Seconds(1));
  inner_->AnswerWith(Token("next", absl::Minutes(3)));
  EXPECT_EQ(GetNow()->token, "next");
  EXPECT_EQ(cache_->TokenRequests(), 2);
}

TEST_F(TokenCacheTest, ExpiredTokenIsNotReused) {
  inner_->AnswerWith(Token("old", -absl::Seconds(1)));
  EXPECT_EQ(GetNow()->token, "old");  // handed to the callers who asked for it
  inner_->AnswerWith(Token("new"));
  EXPECT_EQ(GetNow()->token, "new");
  EXPECT_EQ(cache_->TokenRequests(), 2);
}

TEST_F(TokenCacheTest, ConcurrentCallersShareOneRequest) {
  Results results;
  for (int i = 0; i < 5; ++i) cache_->GetToken(Context(), results.Callback());
  EXPECT_EQ(inner_->Held(), 1u);
  EXPECT_EQ(cache_->TokenRequests(), 1);
  EXPECT_EQ(results.Count(), 0u);

  inner_->Release(Token("t1"));
  ASSERT_EQ(results.Count(), 5u);
  for (const auto& result : results.Get()) {
    ASSERT_TRUE(result.ok()) << result.status();
    EXPECT_EQ(result->token, "t1");
  }
  EXPECT_EQ(GetNow()->token, "t1");
  EXPECT_EQ(cache_->TokenRequests(), 1);
}

TEST_F(TokenCacheTest, ConcurrentCallersOnManyThreadsShareOneRequest) {
  constexpr int kThreads = 8;
  Results results;
  std::atomic<bool> go{false};
  std::vector<std::thread> threads;
  for (int i = 0; i < kThreads; ++i) {
    threads.emplace_back([&] {
      while (!go.load()) std::this_thread::yield();
      cache_->GetToken(Context(), results.Callback());
    });
  }
  go = true;
  for (std::thread& thread : threads) thread.join();
  EXPECT_EQ(inner_->Held(), 1u);
  EXPECT_EQ(cache_->TokenRequests(), 1);

  // The inner credential answers on a thread of its own, like the transport.
  std::thread answer([this] { inner_->Release(Token("t1")); });
  answer.join();
  ASSERT_EQ(results.Count(), static_cast<size_t>(kThreads));
  for (const auto& result : results.Get()) EXPECT_EQ(result->token, "t1");
}

TEST_F(TokenCacheTest, CallbackMayCallTheCacheAgain) {
  std::optional<absl::StatusOr<AccessToken>> nested;
  cache_->GetToken(Context(), [&](absl::StatusOr<AccessToken> token) {
    ASSERT_TRUE(token.ok());
    // No lock is held while callbacks run: this must not deadlock.
    cache_->GetToken(Context(), [&](absl::StatusOr<AccessToken> again) { nested = again; });
  });
  inner_->Release(Token("t1"));
  ASSERT_TRUE(nested.has_value());
  EXPECT_EQ((*nested)->token, "t1");
  EXPECT_EQ(cache_->TokenRequests(), 1);
}

TEST_F(TokenCacheTest, RejectedTokenIsReplacedOnceForSeveralCallers) {
  inner_->AnswerWith(Token("t1"));
  ASSERT_EQ(GetNow()->token, "t1");

  // Three requests got 401 with t1: one new token request between them.
  Results results;
  for (int i = 0; i < 3; ++i) cache_->GetToken(Context("t1"), results.Callback());
  EXPECT_EQ(inner_->Held(), 1u);
  EXPECT_EQ(cache_->TokenRequests(), 2);
  inner_->Release(Token("t2"));
  ASSERT_EQ(results.Count(), 3u);
  for (const auto& result : results.Get()) EXPECT_EQ(result->token, "t2");

  // A fourth, late with its report on t1, gets t2 without a new request.
  EXPECT_EQ(GetNow(Context("t1"))->token, "t2");
  EXPECT_EQ(cache_->TokenRequests(), 2);
}

TEST_F(TokenCacheTest, RejectedTokenThatWasAlreadyReplacedReturnsTheCachedOne) {
  inner_->AnswerWith(Token("current"));
  ASSERT_EQ(GetNow()->token, "current");
  EXPECT_EQ(GetNow(Context("older"))->token, "current");
  EXPECT_EQ(cache_->TokenRequests(), 1);
  EXPECT_EQ(inner_->Contexts().size(), 1u);
}

TEST_F(TokenCacheTest, RejectedTokenIsNotPassedToTheInnerCredential) {
  inner_->AnswerWith(Token("t1"));
  ASSERT_TRUE(GetNow().ok());
  inner_->AnswerWith(Token("t2"));
  ASSERT_EQ(GetNow(Context("t1"))->token, "t2");
  ASSERT_EQ(inner_->Contexts().size(), 2u);
  EXPECT_EQ(inner_->Contexts()[1].rejected_token, "");
}

TEST_F(TokenCacheTest, FailureReachesEveryWaiterAndTheNextCallRetries) {
  Results results;
  for (int i = 0; i < 3; ++i) cache_->GetToken(Context(), results.Callback());
  EXPECT_EQ(inner_->Held(), 1u);
  inner_->Release(MakeError(absl::StatusCode::kUnauthenticated, "rejected",
                            "TOKEN_REQUEST_REJECTED", {{"aadsts_code", "AADSTS7000215"}}));
  ASSERT_EQ(results.Count(), 3u);
  for (const auto& result : results.Get()) {
    ASSERT_FALSE(result.ok());
    EXPECT_EQ(result.status().code(), absl::StatusCode::kUnauthenticated);
    EXPECT_EQ(ErrorReason(result.status()), "TOKEN_REQUEST_REJECTED");
  }

  // Nothing was cached: the next caller starts a new request.
  Results retry;
  cache_->GetToken(Context(), retry.Callback());
  EXPECT_EQ(inner_->Held(), 1u);
  EXPECT_EQ(cache_->TokenRequests(), 2);
  inner_->Release(Token("t1"));
  ASSERT_EQ(retry.Count(), 1u);
  EXPECT_EQ(retry.Get()[0]->token, "t1");
}

TEST_F(TokenCacheTest, FailedRefreshDropsTheStaleToken) {
  inner_->AnswerWith(Token("t1", absl::Minutes(60)));
  ASSERT_TRUE(GetNow().ok());
  clock_.Advance(absl::Minutes(59));
  inner_->AnswerWith(absl::UnavailableError("token endpoint down"));
  EXPECT_EQ(GetNow().status().code(), absl::StatusCode::kUnavailable);
  inner_->AnswerWith(Token("t2"));
  EXPECT_EQ(GetNow()->token, "t2");
  EXPECT_EQ(cache_->TokenRequests(), 3);
}

TEST_F(TokenCacheTest, EmptyTokenFromInnerIsAnError) {
  inner_->AnswerWith(AccessToken{"", clock_.Now() + absl::Hours(1)});
  auto token = GetNow();
  ASSERT_FALSE(token.ok());
  EXPECT_EQ(token.status().code(), absl::StatusCode::kInternal);
}

TEST_F(TokenCacheTest, CachesPerScopeSet) {
  TokenRequestContext other;
  other.scopes = {"https://graph.microsoft.com/.default"};
  inner_->AnswerWith(Token("defender"));
  inner_->AnswerWith(Token("graph"));
  EXPECT_EQ(GetNow()->token, "defender");
  EXPECT_EQ(GetNow(other)->token, "graph");
  EXPECT_EQ(GetNow()->token, "defender");
  EXPECT_EQ(GetNow(other)->token, "graph");
  EXPECT_EQ(cache_->TokenRequests(), 2);
}

TEST_F(TokenCacheTest, InnerRequestUsesTheFirstCallersDeadline) {
  TokenRequestContext first = Context();
  first.deadline = clock_.Now() + absl::Seconds(10);
  TokenRequestContext second = Context();
  second.deadline = clock_.Now() + absl::Seconds(99);
  Results results;
  cache_->GetToken(first, results.Callback());
  cache_->GetToken(second, results.Callback());
  ASSERT_EQ(inner_->Contexts().size(), 1u);
  EXPECT_EQ(inner_->Contexts()[0].deadline, first.deadline);
  EXPECT_EQ(inner_->Contexts()[0].scopes, first.scopes);
  inner_->Release(Token("t1"));
  EXPECT_EQ(results.Count(), 2u);
}

TEST_F(TokenCacheTest, NameIsTheInnerCredentials) { EXPECT_EQ(cache_->Name(), "HeldCredential"); }

TEST(TokenCacheWithClientSecretTest, OneHttpRequestForRepeatedCalls) {
  defender::testing::FakeTransport transport;
  FakeClock clock;
  ClientSecretCredentialOptions options;
  options.tenant_id = "contoso.onmicrosoft.com";
  options.client_id = "app";
  options.client_secret = "secret";
  auto credential = ClientSecretCredential::Create(options, transport, clock);
  ASSERT_TRUE(credential.ok()) << credential.status();
  CachingTokenCredential cache(*std::move(credential), clock);
  EXPECT_EQ(cache.Name(), "ClientSecretCredential");

  transport.Enqueue(200, R"({"access_token":"abc","expires_in":"3599"})");
  Results results;
  for (int i = 0; i < 3; ++i) cache.GetToken(Context(), results.Callback());
  ASSERT_EQ(results.Count(), 3u);
  for (const auto& result : results.Get()) EXPECT_EQ(result->token, "abc");
  EXPECT_EQ(transport.requests().size(), 1u);
}

}  // namespace
}  // namespace defender::auth
