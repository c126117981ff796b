// PrometheusMetrics: what each event does to the exposition, and the
// /metrics endpoint, scraped over real HTTP with libcurl.
#include "server/metrics.h"

#include <string>

#include "adapters/common/error.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/http_get.h"

namespace defender {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

TEST(PrometheusMetricsTest, EventsBecomeTheDocumentedFamilies) {
  PrometheusMetrics metrics;
  metrics.RpcStarted("QuarantineFile");
  metrics.RpcStarted("QuarantineFile");
  metrics.RpcFinished("QuarantineFile", absl::StatusCode::kOk, absl::Milliseconds(3));
  metrics.UpstreamAnswered("StopAndQuarantineFile", "201", absl::Milliseconds(2));
  metrics.UpstreamAnswered("token", "UPSTREAM_TIMEOUT", absl::Seconds(5));
  metrics.LimiterWaited("contoso", "StopAndQuarantineFile", absl::Seconds(30));
  metrics.LimiterRejected("contoso", "StopAndQuarantineFile", "RATE_LIMITED");
  metrics.LimiterWaiting(+2);
  metrics.LimiterWaiting(-1);
  metrics.TokenRefreshed("contoso", "", absl::Milliseconds(40));
  metrics.TokenRefreshed("contoso", "TOKEN_REQUEST_REJECTED", absl::Milliseconds(40));
  const std::string text = metrics.Text();
  EXPECT_THAT(text, HasSubstr(R"(defender_plugin_rpcs_total{code="OK",method="QuarantineFile"} 1)"));
  EXPECT_THAT(text, HasSubstr(R"(defender_plugin_rpcs_in_flight{method="QuarantineFile"} 1)"));
  EXPECT_THAT(text, HasSubstr(
                        R"(defender_plugin_rpc_duration_seconds_bucket{method="QuarantineFile",le="0.005"} 1)"));
  EXPECT_THAT(text, HasSubstr(
                        R"(defender_plugin_rpc_duration_seconds_bucket{method="QuarantineFile",le="0.0025"} 0)"));
  EXPECT_THAT(text, HasSubstr(R"(defender_plugin_upstream_requests_total{endpoint="StopAndQuarantineFile",result="201"} 1)"));
  EXPECT_THAT(text, HasSubstr(R"(defender_plugin_upstream_requests_total{endpoint="token",result="UPSTREAM_TIMEOUT"} 1)"));
  EXPECT_THAT(text, HasSubstr(R"(defender_plugin_rate_limiter_slots_total{api="StopAndQuarantineFile",tenant="contoso"} 1)"));
  EXPECT_THAT(text, HasSubstr(R"(defender_plugin_rate_limiter_wait_seconds_bucket{tenant="contoso",le="15"} 0)"));
  EXPECT_THAT(text, HasSubstr(R"(defender_plugin_rate_limiter_wait_seconds_bucket{tenant="contoso",le="30"} 1)"));
  EXPECT_THAT(text, HasSubstr(R"(defender_plugin_rate_limiter_rejections_total{api="StopAndQuarantineFile",reason="RATE_LIMITED",tenant="contoso"} 1)"));
  EXPECT_THAT(text, HasSubstr("defender_plugin_rate_limiter_waiting 1"));
  EXPECT_THAT(text, HasSubstr(R"(defender_plugin_token_refreshes_total{tenant="contoso"} 2)"));
  EXPECT_THAT(text, HasSubstr(R"(defender_plugin_token_refresh_failures_total{reason="TOKEN_REQUEST_REJECTED",tenant="contoso"} 1)"));
  EXPECT_THAT(text, HasSubstr("defender_plugin_build_info{version=\""));
}

using testing::HttpGet;

TEST(PrometheusMetricsTest, ServesTheTextFormatOverHttpOnAPickedPort) {
  PrometheusMetrics metrics;
  EXPECT_EQ(metrics.port(), 0);
  ASSERT_TRUE(metrics.Serve("127.0.0.1:0").ok());
  ASSERT_GT(metrics.port(), 0);
  metrics.UpstreamAnswered("GetMachineAction", "200", absl::Milliseconds(1));
  std::string body;
  EXPECT_EQ(HttpGet("http://127.0.0.1:" + std::to_string(metrics.port()) + "/metrics", &body), 200);
  EXPECT_THAT(body, HasSubstr("# TYPE defender_plugin_upstream_requests_total counter"));
  EXPECT_THAT(body, HasSubstr(R"(defender_plugin_upstream_requests_total{endpoint="GetMachineAction",result="200"} 1)"));
  // Only /metrics is served.
  std::string other;
  EXPECT_EQ(HttpGet("http://127.0.0.1:" + std::to_string(metrics.port()) + "/", &other), 404);
  // Twice is refused.
  EXPECT_EQ(metrics.Serve("127.0.0.1:0").code(), absl::StatusCode::kFailedPrecondition);
}

TEST(PrometheusMetricsTest, AnAddressThatCannotBeBoundIsUnavailableNamingTheFlag) {
  PrometheusMetrics first;
  ASSERT_TRUE(first.Serve("127.0.0.1:0").ok());
  PrometheusMetrics second;
  absl::Status taken = second.Serve("127.0.0.1:" + std::to_string(first.port()));
  EXPECT_EQ(taken.code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(ErrorReason(taken), "METRICS_LISTEN_FAILED");
  EXPECT_THAT(taken.message(), HasSubstr("--metrics-listen"));
  EXPECT_EQ(second.port(), 0);
}

}  // namespace
}  // namespace defender
