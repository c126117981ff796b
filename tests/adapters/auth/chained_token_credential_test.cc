#include "adapters/auth/chained_token_credential.h"

#include <atomic>
#include <deque>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "adapters/auth/client_secret_credential.h"
#include "adapters/auth/workload_identity_credential.h"
#include "adapters/common/clock.h"
#include "adapters/common/error.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/adapters/fake_transport.h"

namespace defender::auth {
namespace {

using ::defender::testing::FakeTransport;
using ::testing::HasSubstr;

constexpr char kScope[] = "https://api.securitycenter.microsoft.com/.default";

AccessToken Token(const std::string& value) {
  return AccessToken{value, absl::FromUnixSeconds(1700003600)};
}

// ScriptedSource answers from a script (the last answer repeats), inside
// GetToken, or later when `hold` is set (the test calls Release).
class ScriptedSource final : public TokenCredential {
 public:
  ScriptedSource(std::string name, std::vector<absl::StatusOr<AccessToken>> script)
      : name_(std::move(name)), script_(std::move(script)) {}

  void GetToken(const TokenRequestContext& context, Callback done) override {
    absl::StatusOr<AccessToken> answer = absl::InternalError("empty script");
    bool hold;
    {
      absl::MutexLock lock(&mu_);
      contexts_.push_back(context);
      const size_t i = std::min(calls_, script_.size() - 1);
      answer = script_[i];
      ++calls_;
      hold = hold_;
      if (hold) held_.push_back(std::move(done));
    }
    if (!hold) std::move(done)(std::move(answer));
  }
  std::string Name() const override { return name_; }

  size_t calls() const {
    absl::MutexLock lock(&mu_);
    return calls_;
  }
  std::vector<TokenRequestContext> contexts() const {
    absl::MutexLock lock(&mu_);
    return contexts_;
  }
  void Hold() {
    absl::MutexLock lock(&mu_);
    hold_ = true;
  }
  // Release answers the earliest held request with `answer`.
  void Release(absl::StatusOr<AccessToken> answer) {
    Callback done;
    {
      absl::MutexLock lock(&mu_);
      ASSERT_FALSE(held_.empty());
      done = std::move(held_.front());
      held_.pop_front();
    }
    std::move(done)(std::move(answer));
  }

 private:
  const std::string name_;
  const std::vector<absl::StatusOr<AccessToken>> script_;
  mutable absl::Mutex mu_;
  size_t calls_ ABSL_GUARDED_BY(mu_) = 0;
  std::vector<TokenRequestContext> contexts_ ABSL_GUARDED_BY(mu_);
  bool hold_ ABSL_GUARDED_BY(mu_) = false;
  std::deque<Callback> held_ ABSL_GUARDED_BY(mu_);
};

absl::Status Rejected() {
  return MakeError(absl::StatusCode::kUnauthenticated,
                   "token request rejected by Entra ID: AADSTS7000215 (invalid_client)",
                   "TOKEN_REQUEST_REJECTED",
                   {{"aadsts_code", "AADSTS7000215"}, {"http_status", "401"}});
}
absl::Status Unreadable() {
  return MakeError(absl::StatusCode::kUnauthenticated,
                   "the federated token file named by AZURE_FEDERATED_TOKEN_FILE cannot be read",
                   "WORKLOAD_IDENTITY_TOKEN_UNREADABLE");
}
absl::Status NoImds() { return absl::UnavailableError("no managed identity endpoint"); }

TokenRequestContext Context() {
  TokenRequestContext context;
  context.scopes = {kScope};
  return context;
}

// Get asks `credential` for a token that it answers before returning.
absl::StatusOr<AccessToken> Get(TokenCredential& credential,
                                const TokenRequestContext& context = Context()) {
  std::optional<absl::StatusOr<AccessToken>> result;
  credential.GetToken(context, [&result](absl::StatusOr<AccessToken> token) {
    EXPECT_FALSE(result.has_value()) << "callback called twice";
    result = std::move(token);
  });
  EXPECT_TRUE(result.has_value()) << "callback not called";
  return result.value_or(absl::InternalError("no callback"));
}

// Chain holds its sources and keeps pointers to them for the test.
struct Chain {
  std::vector<ScriptedSource*> sources;
  std::unique_ptr<ChainedTokenCredential> credential;
};

Chain MakeChain(std::vector<std::unique_ptr<ScriptedSource>> sources) {
  Chain chain;
  std::vector<std::unique_ptr<TokenCredential>> owned;
  for (auto& source : sources) {
    chain.sources.push_back(source.get());
    owned.push_back(std::move(source));
  }
  chain.credential = std::make_unique<ChainedTokenCredential>(std::move(owned));
  return chain;
}

std::vector<std::unique_ptr<ScriptedSource>> ThreeSources(
    std::vector<absl::StatusOr<AccessToken>> secret,
    std::vector<absl::StatusOr<AccessToken>> workload,
    std::vector<absl::StatusOr<AccessToken>> managed) {
  std::vector<std::unique_ptr<ScriptedSource>> sources;
  sources.push_back(std::make_unique<ScriptedSource>("ClientSecretCredential", std::move(secret)));
  sources.push_back(
      std::make_unique<ScriptedSource>("WorkloadIdentityCredential", std::move(workload)));
  sources.push_back(
      std::make_unique<ScriptedSource>("ManagedIdentityCredential", std::move(managed)));
  return sources;
}

TEST(ChainedTokenCredentialTest, FallsThroughToTheFirstSourceThatWorks) {
  Chain chain = MakeChain(ThreeSources({Rejected()}, {Token("workload")}, {Token("managed")}));
  EXPECT_EQ(chain.credential->Name(), "ChainedTokenCredential");
  EXPECT_EQ(chain.credential->SelectedSource(), ChainedTokenCredential::kNone);
  TokenRequestContext context = Context();
  context.deadline = absl::FromUnixSeconds(1700000030);
  auto token = Get(*chain.credential, context);
  ASSERT_TRUE(token.ok()) << token.status();
  EXPECT_EQ(token->token, "workload");
  EXPECT_EQ(chain.sources[0]->calls(), 1u);
  EXPECT_EQ(chain.sources[1]->calls(), 1u);
  EXPECT_EQ(chain.sources[2]->calls(), 0u);
  // Each source gets the caller's context.
  for (int i = 0; i < 2; ++i) {
    EXPECT_EQ(chain.sources[i]->contexts()[0].scopes, std::vector<std::string>{kScope});
    EXPECT_EQ(chain.sources[i]->contexts()[0].deadline, absl::FromUnixSeconds(1700000030));
  }
  EXPECT_EQ(chain.credential->SelectedSource(), 1u);
}

TEST(ChainedTokenCredentialTest, KeepsTheFirstSourceThatWorked) {
  // The first source would work now, but the chain has settled on the second.
  Chain chain = MakeChain(
      ThreeSources({Rejected(), Token("secret")}, {Token("workload")}, {Token("managed")}));
  ASSERT_EQ(Get(*chain.credential)->token, "workload");
  for (int i = 0; i < 3; ++i) {
    auto token = Get(*chain.credential);
    ASSERT_TRUE(token.ok());
    EXPECT_EQ(token->token, "workload");
  }
  EXPECT_EQ(chain.sources[0]->calls(), 1u);
  EXPECT_EQ(chain.sources[1]->calls(), 4u);
  EXPECT_EQ(chain.sources[2]->calls(), 0u);
}

TEST(ChainedTokenCredentialTest, TheKeptSourcesErrorsAreReturnedAsTheyAre) {
  Chain chain = MakeChain(
      ThreeSources({Token("secret"), Rejected()}, {Token("workload")}, {Token("managed")}));
  ASSERT_TRUE(Get(*chain.credential).ok());
  auto token = Get(*chain.credential);
  ASSERT_FALSE(token.ok());
  EXPECT_EQ(token.status().code(), absl::StatusCode::kUnauthenticated);
  EXPECT_EQ(token.status().message(), Rejected().message());
  EXPECT_EQ(ErrorReason(token.status()), "TOKEN_REQUEST_REJECTED");
  EXPECT_EQ(GetErrorInfo(token.status())->metadata().at("aadsts_code"), "AADSTS7000215");
  EXPECT_EQ(chain.sources[1]->calls(), 0u);
}

TEST(ChainedTokenCredentialTest, WhenAllFailTheErrorListsEverySource) {
  Chain chain = MakeChain(ThreeSources({Rejected()}, {Unreadable()}, {NoImds()}));
  auto token = Get(*chain.credential);
  ASSERT_FALSE(token.ok());
  const absl::Status& status = token.status();
  EXPECT_EQ(status.code(), absl::StatusCode::kUnauthenticated);
  EXPECT_EQ(ErrorReason(status), "CREDENTIAL_CHAIN_FAILED");
  EXPECT_EQ(status.message(),
            "no credential in the chain got a token: "
            "ClientSecretCredential: token request rejected by Entra ID: AADSTS7000215 "
            "(invalid_client); "
            "WorkloadIdentityCredential: the federated token file named by "
            "AZURE_FEDERATED_TOKEN_FILE cannot be read; "
            "ManagedIdentityCredential: no managed identity endpoint");
  const auto metadata = GetErrorInfo(status)->metadata();
  EXPECT_EQ(metadata.at("source_1"), "ClientSecretCredential");
  EXPECT_EQ(metadata.at("source_1_reason"), "TOKEN_REQUEST_REJECTED");
  EXPECT_EQ(metadata.at("source_1_aadsts_code"), "AADSTS7000215");
  EXPECT_EQ(metadata.at("source_1_http_status"), "401");
  EXPECT_EQ(metadata.at("source_2"), "WorkloadIdentityCredential");
  EXPECT_EQ(metadata.at("source_2_reason"), "WORKLOAD_IDENTITY_TOKEN_UNREADABLE");
  EXPECT_EQ(metadata.at("source_3"), "ManagedIdentityCredential");
  EXPECT_EQ(metadata.at("source_3_reason"), "UNAVAILABLE");
  EXPECT_EQ(chain.credential->SelectedSource(), ChainedTokenCredential::kNone);

  // Nothing was kept: the next call walks the chain again.
  EXPECT_FALSE(Get(*chain.credential).ok());
  for (ScriptedSource* source : chain.sources) EXPECT_EQ(source->calls(), 2u);
}

TEST(ChainedTokenCredentialTest, AnEmptyChainFails) {
  ChainedTokenCredential chain({});
  auto token = Get(chain);
  ASSERT_FALSE(token.ok());
  EXPECT_EQ(token.status().code(), absl::StatusCode::kUnauthenticated);
  EXPECT_EQ(ErrorReason(token.status()), "CREDENTIAL_CHAIN_FAILED");
}

TEST(ChainedTokenCredentialTest, WaitsForEachSourceBeforeTheNext) {
  Chain chain = MakeChain(ThreeSources({Rejected()}, {Token("workload")}, {Token("managed")}));
  chain.sources[0]->Hold();
  std::optional<absl::StatusOr<AccessToken>> result;
  chain.credential->GetToken(Context(),
                             [&result](absl::StatusOr<AccessToken> token) { result = token; });
  EXPECT_FALSE(result.has_value());
  EXPECT_EQ(chain.sources[1]->calls(), 0u);
  chain.sources[0]->Release(NoImds());
  ASSERT_TRUE(result.has_value());
  EXPECT_EQ((*result)->token, "workload");
}

TEST(ChainedTokenCredentialTest, ConcurrentFirstCallersAgreeOnOneSource) {
  // The first source works for some callers and not others; whichever
  // success comes first is kept, and every caller gets exactly one answer.
  for (int round = 0; round < 20; ++round) {
    // Only the first call to the first source fails: once a source is kept
    // its later errors reach the caller as they are (by design), so a script
    // failing again after a success would make a late caller's answer depend
    // on thread timing.
    Chain chain = MakeChain(
        ThreeSources({Rejected(), Token("secret")}, {Token("workload")}, {Token("managed")}));
    constexpr int kCallers = 8;
    std::atomic<int> answers{0};
    std::vector<std::thread> threads;
    for (int i = 0; i < kCallers; ++i) {
      threads.emplace_back([&] {
        chain.credential->GetToken(Context(), [&](absl::StatusOr<AccessToken> token) {
          EXPECT_TRUE(token.ok()) << token.status();
          answers.fetch_add(1);
        });
      });
    }
    for (auto& thread : threads) thread.join();
    EXPECT_EQ(answers.load(), kCallers);
    const size_t kept = chain.credential->SelectedSource();
    ASSERT_TRUE(kept == 0 || kept == 1) << kept;
    // From now on only the kept source is asked.
    const size_t before = chain.sources[1 - kept]->calls();
    for (int i = 0; i < 3; ++i) ASSERT_TRUE(Get(*chain.credential).ok());
    EXPECT_EQ(chain.sources[1 - kept]->calls(), before);
    EXPECT_EQ(chain.sources[2]->calls(), 0u);
  }
}

TEST(ChainedTokenCredentialTest, RealCredentialsNameThemselvesInTheError) {
  FakeTransport transport;
  FakeClock clock;
  transport.Enqueue(401, R"({"error":"invalid_client","error_codes":[7000215]})");
  ClientSecretCredentialOptions secret;
  secret.tenant_id = "contoso.onmicrosoft.com";
  secret.client_id = "11111111-2222-3333-4444-555555555555";
  secret.client_secret = "not-the-real-secret";
  WorkloadIdentityCredentialOptions workload;
  workload.tenant_id = secret.tenant_id;
  workload.client_id = secret.client_id;
  workload.token_file = ::testing::TempDir() + "/chained_test_no_such_file";
  std::vector<std::unique_ptr<TokenCredential>> sources;
  sources.push_back(*ClientSecretCredential::Create(secret, transport, clock));
  sources.push_back(*WorkloadIdentityCredential::Create(workload, transport, clock));
  ChainedTokenCredential chain(std::move(sources));

  auto token = Get(chain);
  ASSERT_FALSE(token.ok());
  const std::string message(token.status().message());
  EXPECT_THAT(message, HasSubstr("ClientSecretCredential: token request rejected by Entra ID: "
                                 "AADSTS7000215 (invalid_client)"));
  EXPECT_THAT(message, HasSubstr("; WorkloadIdentityCredential: the federated token file named by "
                                 "AZURE_FEDERATED_TOKEN_FILE cannot be read"));
  EXPECT_THAT(message, ::testing::Not(HasSubstr(secret.client_secret)));
  EXPECT_EQ(transport.requests().size(), 1u);
}

}  // namespace
}  // namespace defender::auth
