// The fault matrix: every upstream fault the plugin must survive, injected by
// the sandbox (or a TCP gate in front of it) over real TLS. Each test asserts
// what the caller saw AND what the sandbox received, above all that no call
// ever creates two actions. Timing bounds are generous (2 noisy cores).
#include <atomic>
#include <cstdio>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/barrier.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "defender/v1/response_service.grpc.pb.h"
#include "gmock/gmock.h"
#include "google/rpc/error_details.pb.h"
#include "google/rpc/status.pb.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "server/config.h"
#include "server/plugin_server.h"
#include "tests/integration/plugin_harness.h"
#include "tests/integration/tcp_gate.h"
#include "tools/sandbox/sandbox.h"

namespace defender {
namespace {

using sandbox::FaultRule;

constexpr char kMachine[] = "1e5bc9d7e413ddd7902c2932e418702b84d0cc07";
constexpr char kPost[] = "StopAndQuarantineFile$";
constexpr char kList[] = "^/api/machineactions$";

// Outcome is what one call gave its caller.
struct Outcome {
  grpc::Status status;
  v1::MachineAction action;
  absl::Duration latency;
  google::rpc::ErrorInfo info;
  absl::optional<absl::Duration> retry_delay;
};

class FaultMatrixTest : public ::testing::Test {
 protected:
  void SetUp() override { StartSandbox({}); }

  void TearDown() override {
    stub_.reset();
    if (server_) server_->Shutdown(absl::Seconds(5));
    server_.reset();
    gate_.reset();
    sandbox_.reset();
    std::remove(ca_file_.c_str());
  }

  // StartSandbox starts a sandbox without Defender's own limits unless the
  // options say otherwise.
  void StartSandbox(sandbox::SandboxOptions options) {
    if (options.rate_per_minute == 100) options.rate_per_minute = 0;
    if (options.rate_per_hour == 1500) options.rate_per_hour = 0;
    auto started = sandbox::Sandbox::Start(options);
    ASSERT_TRUE(started.ok()) << started.status();
    sandbox_ = *std::move(started);
    ca_file_ = absl::StrCat(::testing::TempDir(), "/fault-ca-", getpid(), "-",
                            absl::ToUnixNanos(absl::Now()), ".pem");
    ASSERT_TRUE(sandbox_->WriteCaFile(ca_file_).ok());
    env_ = {{"AZURE_TENANT_ID", options.tenant_id},
            {"AZURE_CLIENT_ID", options.client_id},
            {"AZURE_CLIENT_SECRET", options.client_secret},
            {"AZURE_AUTHORITY_HOST", sandbox_->base_url()},
            {"DEFENDER_API_URL", sandbox_->base_url()},
            {"DEFENDER_CA_FILE", ca_file_},
            {"DEFENDER_RATE_PER_MINUTE", "0"},
            {"DEFENDER_RATE_PER_HOUR", "0"}};
  }

  void StartPlugin() {
    absl::StatusOr<PluginConfig> config = testing::LoadTestConfig({"--listen", "127.0.0.1:0"}, env_);
    ASSERT_TRUE(config.ok()) << config.status();
    auto server = PluginServer::Start(*config);
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = *std::move(server);
    channel_ = grpc::CreateChannel(absl::StrCat("127.0.0.1:", server_->port()),
                                   grpc::InsecureChannelCredentials());
    stub_ = v1::ResponseService::NewStub(channel_);
  }

  // Sha1 is a distinct valid SHA-1 per index.
  static std::string Sha1(int index) {
    return absl::StrCat(std::string(32, 'b'), absl::Hex(index, absl::kZeroPad8));
  }

  Outcome Quarantine(absl::Duration deadline, int file = 0) {
    v1::QuarantineFileRequest request;
    request.set_machine_id(kMachine);
    request.set_sha1(Sha1(file));
    request.set_comment(absl::StrCat("fault matrix ", file));
    grpc::ClientContext context;
    context.set_deadline(absl::ToChronoTime(absl::Now() + deadline));
    v1::QuarantineFileResponse response;
    Outcome outcome;
    const absl::Time start = absl::Now();
    outcome.status = stub_->QuarantineFile(&context, request, &response);
    outcome.latency = absl::Now() - start;
    outcome.action = response.action();
    ReadDetails(outcome);
    return outcome;
  }

  Outcome GetAction(const std::string& id, absl::Duration deadline) {
    v1::GetMachineActionRequest request;
    request.set_id(id);
    grpc::ClientContext context;
    context.set_deadline(absl::ToChronoTime(absl::Now() + deadline));
    Outcome outcome;
    const absl::Time start = absl::Now();
    outcome.status = stub_->GetMachineAction(&context, request, &outcome.action);
    outcome.latency = absl::Now() - start;
    ReadDetails(outcome);
    return outcome;
  }

  static void ReadDetails(Outcome& outcome) {
    if (outcome.status.ok()) return;
    google::rpc::Status rpc;
    if (!rpc.ParseFromString(outcome.status.error_details())) return;
    for (const google::protobuf::Any& any : rpc.details()) {
      google::rpc::RetryInfo retry;
      if (any.UnpackTo(&retry)) {
        outcome.retry_delay = absl::Seconds(retry.retry_delay().seconds()) +
                              absl::Nanoseconds(retry.retry_delay().nanos());
      }
      any.UnpackTo(&outcome.info);
    }
  }

  void AddFault(FaultRule::Kind kind, const std::string& path, int times, int status = 0,
                absl::Duration delay = absl::ZeroDuration(), const std::string& retry_after = "",
                const std::string& method = "") {
    FaultRule rule;
    rule.kind = kind;
    rule.method = method;
    rule.path_regex = path;
    rule.times = times;
    rule.status = status;
    rule.delay = delay;
    rule.retry_after = retry_after;
    sandbox_->AddFault(rule);
  }

  int Posts() const { return sandbox_->CountRequests("POST", kPost); }
  int Lookups() const { return sandbox_->CountRequests("GET", kList); }

  std::unique_ptr<sandbox::Sandbox> sandbox_;
  std::unique_ptr<testing::TcpGate> gate_;
  std::string ca_file_;
  std::map<std::string, std::string> env_;
  std::unique_ptr<PluginServer> server_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::ResponseService::Stub> stub_;
};

TEST_F(FaultMatrixTest, ThrottledWithRetryAfterSecondsIsRetriedAfterTheWait) {
  StartPlugin();
  AddFault(FaultRule::Kind::kRespond, kPost, 1, 429, absl::ZeroDuration(), "1");
  Outcome outcome = Quarantine(absl::Seconds(30));
  ASSERT_TRUE(outcome.status.ok()) << outcome.status.error_message();
  EXPECT_GE(outcome.latency, absl::Milliseconds(900));  // it waited for Retry-After
  EXPECT_EQ(Posts(), 2);
  EXPECT_EQ(sandbox_->ActionCount(), 1);
}

TEST_F(FaultMatrixTest, ThrottledWithRetryAfterHttpDateIsRetriedAfterTheWait) {
  StartPlugin();
  const std::string date = absl::FormatTime("%a, %d %b %Y %H:%M:%S GMT",
                                            absl::Now() + absl::Seconds(2), absl::UTCTimeZone());
  AddFault(FaultRule::Kind::kRespond, kPost, 1, 429, absl::ZeroDuration(), date);
  Outcome outcome = Quarantine(absl::Seconds(30));
  ASSERT_TRUE(outcome.status.ok()) << outcome.status.error_message();
  EXPECT_GE(outcome.latency, absl::Milliseconds(500));
  EXPECT_EQ(Posts(), 2);
  EXPECT_EQ(sandbox_->ActionCount(), 1);
}

TEST_F(FaultMatrixTest, ThrottledBeyondTheDeadlineFailsAtOnceWithRetryInfo) {
  StartPlugin();
  AddFault(FaultRule::Kind::kRespond, kPost, 1, 429, absl::ZeroDuration(), "120");
  Outcome outcome = Quarantine(absl::Seconds(10));
  EXPECT_EQ(outcome.status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_EQ(outcome.info.reason(), "DEFENDER_THROTTLED");
  ASSERT_TRUE(outcome.retry_delay.has_value());
  EXPECT_EQ(*outcome.retry_delay, absl::Seconds(120));
  EXPECT_LT(outcome.latency, absl::Seconds(5));  // not at the deadline
  EXPECT_EQ(Posts(), 1);
  EXPECT_EQ(sandbox_->ActionCount(), 0);
}

TEST_F(FaultMatrixTest, DefendersOwnRateLimitBecomesResourceExhausted) {
  TearDown();
  sandbox::SandboxOptions options;
  options.rate_per_minute = 2;
  options.rate_per_hour = 1000;
  StartSandbox(options);
  StartPlugin();  // the plugin's own limiter is off: Defender's 429 shows
  EXPECT_TRUE(Quarantine(absl::Seconds(10), 1).status.ok());
  EXPECT_TRUE(Quarantine(absl::Seconds(10), 2).status.ok());
  Outcome third = Quarantine(absl::Seconds(10), 3);
  EXPECT_EQ(third.status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_EQ(third.info.reason(), "DEFENDER_THROTTLED");
  ASSERT_TRUE(third.retry_delay.has_value());
  EXPECT_GT(*third.retry_delay, absl::Seconds(10));
  EXPECT_EQ(sandbox_->ActionCount(), 2);
}

TEST_F(FaultMatrixTest, BurstOfServerErrorsIsRetriedWithoutASecondAction) {
  StartPlugin();
  for (int status : {500, 502, 503, 504}) {
    AddFault(FaultRule::Kind::kRespond, kPost, 1, status);
  }
  Outcome outcome = Quarantine(absl::Seconds(30));
  ASSERT_TRUE(outcome.status.ok()) << outcome.status.error_message();
  EXPECT_EQ(Posts(), 5);
  EXPECT_EQ(Lookups(), 4);  // each 5xx: look for the action before sending again
  EXPECT_EQ(sandbox_->ActionCount(), 1);
  EXPECT_EQ(sandbox_->ActionIds()[0], outcome.action.id());
}

TEST_F(FaultMatrixTest, PersistentServerErrorsEndUnavailableInsideTheDeadline) {
  StartPlugin();
  AddFault(FaultRule::Kind::kRespond, kPost, -1, 503);
  Outcome outcome = Quarantine(absl::Seconds(3));
  EXPECT_EQ(outcome.status.error_code(), grpc::StatusCode::UNAVAILABLE);
  EXPECT_EQ(outcome.info.reason(), "DEFENDER_UNAVAILABLE");
  EXPECT_GE(Posts(), 2);
  EXPECT_EQ(sandbox_->ActionCount(), 0);
}

TEST_F(FaultMatrixTest, ConnectionResetBeforeTheRequestIsSentIsRetried) {
  auto gate = testing::TcpGate::Start(sandbox_->port());
  ASSERT_TRUE(gate.ok()) << gate.status();
  gate_ = *std::move(gate);
  env_["DEFENDER_API_URL"] = absl::StrCat("https://127.0.0.1:", gate_->port());
  StartPlugin();
  gate_->ResetNextConnections(2);
  Outcome outcome = Quarantine(absl::Seconds(30));
  ASSERT_TRUE(outcome.status.ok()) << outcome.status.error_message();
  EXPECT_GE(gate_->Accepted(), 3);
  EXPECT_EQ(Posts(), 1);  // the resets came before any request
  EXPECT_EQ(Lookups(), 0);
  EXPECT_EQ(sandbox_->ActionCount(), 1);
}

TEST_F(FaultMatrixTest, ConnectionDroppedAfterTheActionWasCreatedReturnsThatAction) {
  StartPlugin();
  AddFault(FaultRule::Kind::kDropAfterHandling, kPost, 1);
  Outcome outcome = Quarantine(absl::Seconds(30));
  ASSERT_TRUE(outcome.status.ok()) << outcome.status.error_message();
  EXPECT_EQ(Posts(), 1);    // never sent twice
  EXPECT_EQ(Lookups(), 1);  // found by the lookup
  ASSERT_EQ(sandbox_->ActionCount(), 1);
  EXPECT_EQ(outcome.action.id(), sandbox_->ActionIds()[0]);
}

TEST_F(FaultMatrixTest, ConnectionDroppedBeforeHandlingIsSentAgainOnce) {
  StartPlugin();
  AddFault(FaultRule::Kind::kDropConnection, kPost, 1);
  Outcome outcome = Quarantine(absl::Seconds(30));
  ASSERT_TRUE(outcome.status.ok()) << outcome.status.error_message();
  EXPECT_EQ(Posts(), 2);
  EXPECT_EQ(Lookups(), 1);  // nothing found: safe to send again
  EXPECT_EQ(sandbox_->ActionCount(), 1);
}

TEST_F(FaultMatrixTest, AnAnswerThatNeverComesEndsByTheDeadlineAndIsNeverResentBlindly) {
  StartPlugin();
  AddFault(FaultRule::Kind::kRespond, kPost, -1, 504, absl::Seconds(30));
  Outcome outcome = Quarantine(absl::Seconds(4));
  EXPECT_THAT(outcome.status.error_code(),
              ::testing::AnyOf(grpc::StatusCode::DEADLINE_EXCEEDED,
                               grpc::StatusCode::UNAVAILABLE));
  EXPECT_EQ(outcome.info.reason(), "UPSTREAM_TIMEOUT");
  EXPECT_LT(outcome.latency, absl::Seconds(8));
  // Each POST that got no answer is followed by a look for its action before
  // any new POST: the first POST is cut short at two thirds of the deadline.
  EXPECT_GE(Lookups(), 1);
  EXPECT_LE(Posts(), Lookups() + 1);
  EXPECT_EQ(sandbox_->ActionCount(), 0);
}

TEST_F(FaultMatrixTest, GetThatNeverAnswersIsRetriedThenTimesOut) {
  StartPlugin();
  Outcome created = Quarantine(absl::Seconds(10));
  ASSERT_TRUE(created.status.ok());
  AddFault(FaultRule::Kind::kRespond, "^/api/machineactions/", -1, 200, absl::Seconds(30));
  Outcome outcome = GetAction(created.action.id(), absl::Seconds(3));
  EXPECT_EQ(outcome.status.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED);
  EXPECT_LT(outcome.latency, absl::Seconds(7));
}

TEST_F(FaultMatrixTest, SlowlyDrippingAnswerTimesOutAndTheCreatedActionIsFound) {
  StartPlugin();
  AddFault(FaultRule::Kind::kSlowBody, kPost, 1, 0, absl::Milliseconds(300));
  Outcome outcome = Quarantine(absl::Seconds(6));
  ASSERT_TRUE(outcome.status.ok()) << outcome.status.error_message();
  EXPECT_EQ(Posts(), 1);
  EXPECT_EQ(Lookups(), 1);
  ASSERT_EQ(sandbox_->ActionCount(), 1);
  EXPECT_EQ(outcome.action.id(), sandbox_->ActionIds()[0]);
}

TEST_F(FaultMatrixTest, MalformedAnswerToTheCreatingPostIsResolvedByLookup) {
  StartPlugin();
  AddFault(FaultRule::Kind::kMalformedBody, kPost, 1);
  Outcome outcome = Quarantine(absl::Seconds(10));
  ASSERT_TRUE(outcome.status.ok()) << outcome.status.error_message();
  EXPECT_EQ(Posts(), 1);
  EXPECT_EQ(Lookups(), 1);
  EXPECT_EQ(outcome.action.id(), sandbox_->ActionIds()[0]);
}

TEST_F(FaultMatrixTest, MalformedAnswerToAReadIsInternal) {
  StartPlugin();
  Outcome created = Quarantine(absl::Seconds(10));
  ASSERT_TRUE(created.status.ok());
  AddFault(FaultRule::Kind::kMalformedBody, "^/api/machineactions/", 1);
  Outcome outcome = GetAction(created.action.id(), absl::Seconds(10));
  EXPECT_EQ(outcome.status.error_code(), grpc::StatusCode::INTERNAL);
  EXPECT_EQ(outcome.info.reason(), "BAD_UPSTREAM_RESPONSE");
}

TEST_F(FaultMatrixTest, AnswerOverTheSizeCapIsRefused) {
  StartPlugin();
  Outcome created = Quarantine(absl::Seconds(10));
  ASSERT_TRUE(created.status.ok());
  AddFault(FaultRule::Kind::kOversizeBody, "^/api/machineactions/", 1);
  Outcome outcome = GetAction(created.action.id(), absl::Seconds(10));
  EXPECT_EQ(outcome.status.error_code(), grpc::StatusCode::INTERNAL);
  EXPECT_EQ(outcome.info.reason(), "UPSTREAM_RESPONSE_TOO_LARGE");
}

TEST_F(FaultMatrixTest, TokenEndpointOutageIsRetried) {
  StartPlugin();
  AddFault(FaultRule::Kind::kRespond, "/oauth2/v2.0/token$", 2, 503);
  Outcome outcome = Quarantine(absl::Seconds(30));
  ASSERT_TRUE(outcome.status.ok()) << outcome.status.error_message();
  EXPECT_EQ(sandbox_->TokenRequests(), 3);
  EXPECT_EQ(Posts(), 1);
}

TEST_F(FaultMatrixTest, TokenEndpointDownEndsUnavailableWithNothingSent) {
  StartPlugin();
  AddFault(FaultRule::Kind::kRespond, "/oauth2/v2.0/token$", -1, 503);
  Outcome outcome = Quarantine(absl::Seconds(3));
  EXPECT_EQ(outcome.status.error_code(), grpc::StatusCode::UNAVAILABLE);
  EXPECT_EQ(outcome.info.reason(), "TOKEN_ENDPOINT_UNAVAILABLE");
  EXPECT_GE(sandbox_->TokenRequests(), 2);
  EXPECT_EQ(Posts(), 0);
}

TEST_F(FaultMatrixTest, TokenExpiringMidRunIsRenewedOnce) {
  StartPlugin();
  ASSERT_TRUE(Quarantine(absl::Seconds(10), 1).status.ok());
  sandbox_->ExpireAllTokens();
  Outcome outcome = Quarantine(absl::Seconds(10), 2);
  ASSERT_TRUE(outcome.status.ok()) << outcome.status.error_message();
  EXPECT_EQ(sandbox_->TokenRequests(), 2);
  EXPECT_EQ(Posts(), 3);  // ok, 401, ok
  EXPECT_EQ(sandbox_->ActionCount(), 2);
}

TEST_F(FaultMatrixTest, FiftyConcurrentFirstCallsShareOneTokenRequest) {
  StartPlugin();
  constexpr int kCalls = 50;
  absl::Barrier* start = new absl::Barrier(kCalls);
  std::atomic<int> ok{0};
  std::vector<std::thread> threads;
  for (int i = 0; i < kCalls; ++i) {
    threads.emplace_back([&, i] {
      if (start->Block()) delete start;
      if (Quarantine(absl::Seconds(30), i).status.ok()) ++ok;
    });
  }
  for (auto& thread : threads) thread.join();
  EXPECT_EQ(ok.load(), kCalls);
  EXPECT_EQ(sandbox_->TokenRequests(), 1);
  EXPECT_EQ(sandbox_->ActionCount(), kCalls);
}

TEST_F(FaultMatrixTest, LocalLimiterSendsExactlyTheBudgetAndRefusesTheRestPromptly) {
  env_["DEFENDER_RATE_PER_MINUTE"] = "5";
  env_["DEFENDER_RATE_PER_HOUR"] = "1500";
  StartPlugin();
  constexpr int kCalls = 12;
  std::vector<Outcome> outcomes(kCalls);
  std::vector<std::thread> threads;
  for (int i = 0; i < kCalls; ++i) {
    threads.emplace_back([&, i] { outcomes[i] = Quarantine(absl::Seconds(20), i); });
  }
  for (auto& thread : threads) thread.join();
  int ok = 0, limited = 0;
  for (const Outcome& outcome : outcomes) {
    if (outcome.status.ok()) {
      ++ok;
      continue;
    }
    EXPECT_EQ(outcome.status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
    EXPECT_EQ(outcome.info.reason(), "RATE_LIMITED");
    ASSERT_TRUE(outcome.retry_delay.has_value());
    EXPECT_GT(*outcome.retry_delay, absl::Seconds(20));  // the next slot is after the deadline
    EXPECT_LT(outcome.latency, absl::Seconds(10));       // refused at once, not at the deadline
    ++limited;
  }
  EXPECT_EQ(ok, 5);
  EXPECT_EQ(limited, kCalls - 5);
  EXPECT_EQ(Posts(), 5);
}

TEST_F(FaultMatrixTest, CallersDeadlineOutranksTheDefaultTimeout) {
  // The default bounds only calls without a deadline: a caller who allows
  // 20 s gets its answer after Defender's 2.5 s, not DEADLINE_EXCEEDED at 1 s.
  env_["DEFENDER_DEFAULT_TIMEOUT_SECONDS"] = "1";
  StartPlugin();
  AddFault(FaultRule::Kind::kRespond, kPost, 1, /*status=*/0, absl::Milliseconds(2500));
  Outcome outcome = Quarantine(absl::Seconds(20));
  ASSERT_TRUE(outcome.status.ok()) << outcome.status.error_message();
  EXPECT_GE(outcome.latency, absl::Milliseconds(2500));
  EXPECT_EQ(Posts(), 1);
}

TEST_F(FaultMatrixTest, HundredsOfConcurrentInvalidCallsLeaveTheServerHealthy) {
  StartPlugin();
  constexpr int kThreads = 16;
  constexpr int kCallsPerThread = 25;
  std::atomic<int> invalid{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&] {
      for (int i = 0; i < kCallsPerThread; ++i) {
        v1::QuarantineFileRequest request;
        request.set_machine_id("not-a-machine");
        request.set_sha1("zz");
        grpc::ClientContext context;
        v1::QuarantineFileResponse response;
        if (stub_->QuarantineFile(&context, request, &response).error_code() ==
            grpc::StatusCode::INVALID_ARGUMENT) {
          ++invalid;
        }
      }
    });
  }
  for (auto& thread : threads) thread.join();
  EXPECT_EQ(invalid.load(), kThreads * kCallsPerThread);
  EXPECT_TRUE(sandbox_->Requests().empty());

  auto health = grpc::health::v1::Health::NewStub(channel_);
  grpc::ClientContext context;
  grpc::health::v1::HealthCheckRequest request;
  grpc::health::v1::HealthCheckResponse response;
  ASSERT_TRUE(health->Check(&context, request, &response).ok());
  EXPECT_EQ(response.status(), grpc::health::v1::HealthCheckResponse::SERVING);
  EXPECT_TRUE(Quarantine(absl::Seconds(10)).status.ok());
}

TEST_F(FaultMatrixTest, CancelledCallStopsItsUpstreamWork) {
  StartPlugin();
  AddFault(FaultRule::Kind::kRespond, kPost, -1, 503, absl::Seconds(2));
  v1::QuarantineFileRequest request;
  request.set_machine_id(kMachine);
  request.set_sha1(Sha1(0));
  request.set_comment("cancelled");
  grpc::ClientContext context;
  context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(30)));
  std::thread canceller([&] {
    absl::SleepFor(absl::Milliseconds(500));
    context.TryCancel();
  });
  v1::QuarantineFileResponse response;
  grpc::Status status = stub_->QuarantineFile(&context, request, &response);
  canceller.join();
  EXPECT_EQ(status.error_code(), grpc::StatusCode::CANCELLED);
  // Had the work gone on, the 503 (after 2 s) would bring a lookup and a retry.
  absl::SleepFor(absl::Seconds(4));
  EXPECT_EQ(Posts(), 1);
  EXPECT_EQ(Lookups(), 0);
}

}  // namespace
}  // namespace defender
