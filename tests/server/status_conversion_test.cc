#include "server/status_conversion.h"

#include "adapters/common/error.h"
#include "gtest/gtest.h"

namespace defender {
namespace {

TEST(StatusConversionTest, OkIsOk) { EXPECT_TRUE(ToGrpcStatus(absl::OkStatus()).ok()); }

TEST(StatusConversionTest, CarriesCodeMessageAndDetails) {
  absl::Status status = MakeError(absl::StatusCode::kResourceExhausted, "slow down",
                                  "DEFENDER_THROTTLED", {{"http_status", "429"}});
  SetRetryDelay(status, absl::Seconds(7));
  grpc::Status grpc_status = ToGrpcStatus(status);
  EXPECT_EQ(grpc_status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_EQ(grpc_status.error_message(), "slow down");
  google::rpc::Status rpc;
  ASSERT_TRUE(rpc.ParseFromString(grpc_status.error_details()));
  EXPECT_EQ(rpc.code(), 8);
  ASSERT_EQ(rpc.details_size(), 2);
  google::rpc::ErrorInfo info;
  google::rpc::RetryInfo retry;
  bool saw_info = false, saw_retry = false;
  for (const auto& any : rpc.details()) {
    saw_info |= any.UnpackTo(&info);
    saw_retry |= any.UnpackTo(&retry);
  }
  ASSERT_TRUE(saw_info && saw_retry);
  EXPECT_EQ(info.reason(), "DEFENDER_THROTTLED");
  EXPECT_EQ(info.domain(), "defender-plugin");
  EXPECT_EQ(info.metadata().at("http_status"), "429");
  EXPECT_EQ(retry.retry_delay().seconds(), 7);
}

TEST(StatusConversionTest, ActionFieldsAndEnumsMap) {
  api::MachineAction action;
  action.id = "141408d1-384c-4c19-8b57-ba39e378011a";
  action.type = "StopAndQuarantineFile";
  action.status = "TimeOut";
  action.machine_id = "1e5bc9d7e413ddd7902c2932e418702b84d0cc07";
  action.file_identifier = "87662bc3d60e4200ceaf7aae249d1c343f4b83c9";
  action.file_identifier_type = "Sha1";
  action.creation_time = absl::FromUnixNanos(1543925704382598500);
  v1::MachineAction out;
  ToProto(action, &out);
  EXPECT_EQ(out.type(), v1::MACHINE_ACTION_TYPE_STOP_AND_QUARANTINE_FILE);
  EXPECT_EQ(out.status(), v1::MACHINE_ACTION_STATUS_TIMED_OUT);
  EXPECT_EQ(out.defender_status(), "TimeOut");
  EXPECT_EQ(out.related_file_info().file_identifier_type(), v1::FILE_IDENTIFIER_TYPE_SHA1);
  EXPECT_EQ(out.creation_time().seconds(), 1543925704);
  EXPECT_EQ(out.creation_time().nanos(), 382598500);
  EXPECT_FALSE(out.has_last_update_time());
  EXPECT_FALSE(out.has_cancellation_time());

  for (const auto& [spelling, expected] :
       std::vector<std::pair<std::string, v1::MachineActionStatus>>{
           {"Pending", v1::MACHINE_ACTION_STATUS_PENDING},
           {"InProgress", v1::MACHINE_ACTION_STATUS_IN_PROGRESS},
           {"Succeeded", v1::MACHINE_ACTION_STATUS_SUCCEEDED},
           {"Failed", v1::MACHINE_ACTION_STATUS_FAILED},
           {"Cancelled", v1::MACHINE_ACTION_STATUS_CANCELLED},
           {"Canceled", v1::MACHINE_ACTION_STATUS_CANCELLED},
           {"SomethingNew", v1::MACHINE_ACTION_STATUS_UNSPECIFIED}}) {
    action.status = spelling;
    ToProto(action, &out);
    EXPECT_EQ(out.status(), expected) << spelling;
  }
}

}  // namespace
}  // namespace defender
