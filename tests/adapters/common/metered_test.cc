// The metering decorators: transport, rate limiter, token credential. Each
// wraps a real implementation or a fake and must report exactly what
// happened, with the right labels and times.
#include <memory>
#include <string>
#include <vector>

#include "adapters/auth/metered_credential.h"
#include "adapters/common/clock.h"
#include "adapters/common/error.h"
#include "adapters/common/metered_rate_limiter.h"
#include "adapters/common/scheduler.h"
#include "adapters/http/metered_transport.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/rate_limiter.h"
#include "tests/adapters/fake_transport.h"
#include "tests/adapters/recording_metrics.h"

namespace defender {
namespace {

using ::testing::ElementsAre;
using testing::FakeTransport;
using testing::RecordingMetrics;

// SlowTransport answers each request only when the test says so, after
// advancing the clock, so the reported latency is exact.
class SlowTransport final : public http::HttpTransport {
 public:
  void Send(http::HttpRequest request, Callback done) override {
    pending_.push_back(std::move(done));
  }
  void Answer(absl::StatusOr<http::HttpResponse> answer) {
    Callback done = std::move(pending_.front());
    pending_.erase(pending_.begin());
    std::move(done)(std::move(answer));
  }

 private:
  std::vector<Callback> pending_;
};

TEST(MeteredTransportTest, ReportsEndpointStatusAndLatencyOfEachExchange) {
  FakeClock clock;
  SlowTransport inner;
  RecordingMetrics metrics;
  http::MeteredTransport metered(inner, metrics, clock);

  http::HttpRequest request;
  request.url = "https://api.security.microsoft.com/api/machines/abc/StopAndQuarantineFile";
  request.endpoint = "StopAndQuarantineFile";
  int answered = 0;
  int status = 0;
  metered.Send(request, [&](absl::StatusOr<http::HttpResponse> answer) {
    ++answered;
    status = answer->status;
  });
  EXPECT_TRUE(metrics.events().empty());  // nothing before the answer
  clock.Advance(absl::Milliseconds(250));
  http::HttpResponse response;
  response.status = 201;
  inner.Answer(response);
  EXPECT_EQ(answered, 1);
  EXPECT_EQ(status, 201);  // the answer passes through unchanged
  EXPECT_THAT(metrics.events(), ElementsAre("upstream StopAndQuarantineFile 201"));
  EXPECT_EQ(metrics.last_latency(), absl::Milliseconds(250));
}

TEST(MeteredTransportTest, ReportsTheTransportErrorReasonWhenNoAnswerCame) {
  FakeTransport inner;
  RecordingMetrics metrics;
  http::MeteredTransport metered(inner, metrics);
  inner.EnqueueError(MakeError(absl::StatusCode::kDeadlineExceeded, "slow", "UPSTREAM_TIMEOUT"));
  inner.EnqueueError(absl::UnavailableError("no ErrorInfo"));
  http::HttpRequest token;
  token.endpoint = "token";
  absl::Status first, second;
  metered.Send(token, [&](absl::StatusOr<http::HttpResponse> a) { first = a.status(); });
  metered.Send(http::HttpRequest{}, [&](absl::StatusOr<http::HttpResponse> a) {
    second = a.status();
  });
  EXPECT_EQ(ErrorReason(first), "UPSTREAM_TIMEOUT");
  EXPECT_EQ(second.code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(metrics.events(),
              ElementsAre("upstream token UPSTREAM_TIMEOUT", "upstream other UNAVAILABLE"));
}

class MeteredRateLimiterTest : public ::testing::Test {
 protected:
  FakeClock clock_;
  ManualScheduler scheduler_{clock_};
  RecordingMetrics metrics_;
  MeteredRateLimiter limiter_{
      std::make_shared<SlidingWindowLimiter>(RateLimits{2, 0}, scheduler_, clock_), metrics_,
      clock_};
};

TEST_F(MeteredRateLimiterTest, ReportsSlotsAtOnceWaitsAndRefusals) {
  std::vector<absl::Status> outcomes;
  auto record = [&outcomes](absl::Status slot) { outcomes.push_back(std::move(slot)); };
  const absl::Time far = clock_.Now() + absl::Hours(1);
  limiter_.Acquire("contoso/StopAndQuarantineFile", far, nullptr, record);
  limiter_.Acquire("contoso/StopAndQuarantineFile", far, nullptr, record);
  // The third waits a minute for the first slot to leave the window.
  limiter_.Acquire("contoso/StopAndQuarantineFile", far, nullptr, record);
  // The fourth's deadline comes before any slot: refused at once.
  limiter_.Acquire("contoso/StopAndQuarantineFile", clock_.Now() + absl::Seconds(5), nullptr,
                   record);
  EXPECT_EQ(outcomes.size(), 3u);
  clock_.Advance(absl::Minutes(1));
  scheduler_.RunDue();
  ASSERT_EQ(outcomes.size(), 4u);
  EXPECT_TRUE(outcomes[3].ok());
  EXPECT_THAT(metrics_.events(),
              ElementsAre("slot contoso StopAndQuarantineFile waited 0",
                          "slot contoso StopAndQuarantineFile waited 0", "waiting 1",
                          "rejected contoso StopAndQuarantineFile RATE_LIMITED", "waiting -1",
                          "slot contoso StopAndQuarantineFile waited 1m"));
}

TEST_F(MeteredRateLimiterTest, ACancelledWaitIsARefusalAndLeavesTheWaitingCount) {
  const absl::Time far = clock_.Now() + absl::Hours(1);
  auto ignore = [](absl::Status) {};
  limiter_.Acquire("t/GetMachineAction", far, nullptr, ignore);
  limiter_.Acquire("t/GetMachineAction", far, nullptr, ignore);
  auto cancellation = std::make_shared<Cancellation>();
  absl::Status waited = absl::UnknownError("not called");
  limiter_.Acquire("t/GetMachineAction", far, cancellation,
                   [&waited](absl::Status slot) { waited = std::move(slot); });
  cancellation->Cancel();
  EXPECT_EQ(waited.code(), absl::StatusCode::kCancelled);
  EXPECT_THAT(metrics_.events(),
              ElementsAre("slot t GetMachineAction waited 0", "slot t GetMachineAction waited 0",
                          "waiting 1", "waiting -1", "rejected t GetMachineAction CANCELLED"));
}

// FakeCredential answers from a queue, synchronously.
class FakeCredential final : public auth::TokenCredential {
 public:
  explicit FakeCredential(std::vector<absl::StatusOr<auth::AccessToken>> answers)
      : answers_(std::move(answers)) {}
  void GetToken(const auth::TokenRequestContext&, Callback done) override {
    absl::StatusOr<auth::AccessToken> answer = answers_.front();
    answers_.erase(answers_.begin());
    std::move(done)(std::move(answer));
  }
  std::string Name() const override { return "FakeCredential"; }

 private:
  std::vector<absl::StatusOr<auth::AccessToken>> answers_;
};

TEST(MeteredTokenCredentialTest, ReportsEachTokenRequestAndItsFailureReason) {
  RecordingMetrics metrics;
  auth::AccessToken token{"eyJ.secret-token", absl::Now() + absl::Hours(1)};
  auth::MeteredTokenCredential credential(
      std::make_unique<FakeCredential>(std::vector<absl::StatusOr<auth::AccessToken>>{
          token, MakeError(absl::StatusCode::kUnauthenticated, "AADSTS7000215: invalid secret",
                           "TOKEN_REQUEST_REJECTED")}),
      "contoso", metrics);
  EXPECT_EQ(credential.Name(), "FakeCredential");
  std::vector<absl::StatusOr<auth::AccessToken>> got;
  auto record = [&got](absl::StatusOr<auth::AccessToken> t) { got.push_back(std::move(t)); };
  credential.GetToken({}, record);
  credential.GetToken({}, record);
  ASSERT_EQ(got.size(), 2u);
  EXPECT_EQ(got[0]->token, token.token);
  EXPECT_EQ(ErrorReason(got[1].status()), "TOKEN_REQUEST_REJECTED");
  EXPECT_THAT(metrics.events(),
              ElementsAre("token contoso ok", "token contoso failed TOKEN_REQUEST_REJECTED"));
}

}  // namespace
}  // namespace defender
