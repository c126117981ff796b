#include "adapters/common/error.h"

#include <string>

#include "absl/status/status.h"
#include "absl/strings/cord.h"
#include "absl/time/time.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace defender {
namespace {

using ::testing::Pair;
using ::testing::UnorderedElementsAre;

TEST(ErrorTest, MakeErrorCarriesCodeMessageAndErrorInfo) {
  absl::Status status =
      MakeError(absl::StatusCode::kNotFound, "machine not found", "DEFENDER_NOT_FOUND",
                {{"defender_code", "ResourceNotFound"}, {"http_status", "404"}});
  EXPECT_EQ(status.code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(status.message(), "machine not found");

  auto info = GetErrorInfo(status);
  ASSERT_TRUE(info.has_value());
  EXPECT_EQ(info->reason(), "DEFENDER_NOT_FOUND");
  EXPECT_EQ(info->domain(), kErrorDomain);
  EXPECT_EQ(info->domain(), "defender-plugin");
  EXPECT_THAT(info->metadata(), UnorderedElementsAre(Pair("defender_code", "ResourceNotFound"),
                                                     Pair("http_status", "404")));
  EXPECT_EQ(ErrorReason(status), "DEFENDER_NOT_FOUND");
}

TEST(ErrorTest, MakeErrorWithoutMetadata) {
  absl::Status status = MakeError(absl::StatusCode::kInternal, "oops", "BAD_TOKEN_RESPONSE");
  auto info = GetErrorInfo(status);
  ASSERT_TRUE(info.has_value());
  EXPECT_TRUE(info->metadata().empty());
  EXPECT_EQ(info->reason(), "BAD_TOKEN_RESPONSE");
}

TEST(ErrorTest, ErrorInfoIsStoredUnderItsTypeUrl) {
  absl::Status status = MakeError(absl::StatusCode::kUnavailable, "down", "UPSTREAM_TIMEOUT");
  auto payload = status.GetPayload(kErrorInfoTypeUrl);
  ASSERT_TRUE(payload.has_value());
  google::rpc::ErrorInfo info;
  ASSERT_TRUE(info.ParseFromString(std::string(*payload)));
  EXPECT_EQ(info.reason(), "UPSTREAM_TIMEOUT");
  EXPECT_EQ(std::string(kErrorInfoTypeUrl), "type.googleapis.com/google.rpc.ErrorInfo");
  EXPECT_EQ(std::string(kRetryInfoTypeUrl), "type.googleapis.com/google.rpc.RetryInfo");
}

TEST(ErrorTest, PlainStatusHasNoDetails) {
  absl::Status status = absl::UnavailableError("plain");
  EXPECT_FALSE(GetErrorInfo(status).has_value());
  EXPECT_EQ(ErrorReason(status), "");
  EXPECT_FALSE(GetRetryDelay(status).has_value());
  EXPECT_FALSE(GetErrorInfo(absl::OkStatus()).has_value());
}

TEST(ErrorTest, UnparseablePayloadIsIgnored) {
  absl::Status status = absl::InternalError("x");
  status.SetPayload(kErrorInfoTypeUrl, absl::Cord("\xff\xff\xff"));
  status.SetPayload(kRetryInfoTypeUrl, absl::Cord("\xff\xff\xff"));
  EXPECT_FALSE(GetErrorInfo(status).has_value());
  EXPECT_EQ(ErrorReason(status), "");
  EXPECT_FALSE(GetRetryDelay(status).has_value());
}

TEST(ErrorTest, RetryDelayRoundTrips) {
  absl::Status status =
      MakeError(absl::StatusCode::kResourceExhausted, "slow down", "TOKEN_ENDPOINT_THROTTLED");
  SetRetryDelay(status, absl::Seconds(30));
  auto delay = GetRetryDelay(status);
  ASSERT_TRUE(delay.has_value());
  EXPECT_EQ(*delay, absl::Seconds(30));

  SetRetryDelay(status, absl::Milliseconds(1500));  // replaces the first
  delay = GetRetryDelay(status);
  ASSERT_TRUE(delay.has_value());
  EXPECT_EQ(*delay, absl::Milliseconds(1500));

  google::rpc::RetryInfo retry;
  ASSERT_TRUE(retry.ParseFromString(std::string(*status.GetPayload(kRetryInfoTypeUrl))));
  EXPECT_EQ(retry.retry_delay().seconds(), 1);
  EXPECT_EQ(retry.retry_delay().nanos(), 500000000);

  // The ErrorInfo is still there.
  EXPECT_EQ(ErrorReason(status), "TOKEN_ENDPOINT_THROTTLED");
}

TEST(ErrorTest, NegativeRetryDelayBecomesZero) {
  absl::Status status = absl::ResourceExhaustedError("x");
  SetRetryDelay(status, -absl::Seconds(5));
  auto delay = GetRetryDelay(status);
  ASSERT_TRUE(delay.has_value());
  EXPECT_EQ(*delay, absl::ZeroDuration());
}

TEST(ErrorTest, AddErrorMetadataAddsAndReplaces) {
  absl::Status status = MakeError(absl::StatusCode::kUnauthenticated, "rejected",
                                  "TOKEN_REQUEST_REJECTED", {{"http_status", "401"}});
  AddErrorMetadata(status, "correlation_id", "abc");
  AddErrorMetadata(status, "http_status", "400");
  auto info = GetErrorInfo(status);
  ASSERT_TRUE(info.has_value());
  EXPECT_THAT(info->metadata(),
              UnorderedElementsAre(Pair("http_status", "400"), Pair("correlation_id", "abc")));
  EXPECT_EQ(info->reason(), "TOKEN_REQUEST_REJECTED");
  EXPECT_EQ(info->domain(), kErrorDomain);
  EXPECT_EQ(status.code(), absl::StatusCode::kUnauthenticated);
  EXPECT_EQ(status.message(), "rejected");
}

TEST(ErrorTest, AddErrorMetadataLeavesStatusWithoutErrorInfoAlone) {
  absl::Status status = absl::UnavailableError("plain");
  AddErrorMetadata(status, "key", "value");
  EXPECT_FALSE(GetErrorInfo(status).has_value());
  EXPECT_EQ(status, absl::UnavailableError("plain"));
}

TEST(ErrorTest, PayloadsSurviveCopies) {
  absl::Status status = MakeError(absl::StatusCode::kAborted, "a", "R", {{"k", "v"}});
  SetRetryDelay(status, absl::Seconds(2));
  absl::Status copy = status;
  EXPECT_EQ(copy, status);
  EXPECT_EQ(GetErrorInfo(copy)->metadata().at("k"), "v");
  EXPECT_EQ(*GetRetryDelay(copy), absl::Seconds(2));
}

}  // namespace
}  // namespace defender
