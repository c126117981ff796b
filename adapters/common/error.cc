#include "adapters/common/error.h"

#include "absl/strings/cord.h"

namespace defender {

absl::Status MakeError(absl::StatusCode code, absl::string_view message,
                       absl::string_view reason,
                       const std::map<std::string, std::string>& metadata) {
  absl::Status status(code, message);
  google::rpc::ErrorInfo info;
  info.set_reason(std::string(reason));
  info.set_domain(kErrorDomain);
  for (const auto& [key, value] : metadata) (*info.mutable_metadata())[key] = value;
  status.SetPayload(kErrorInfoTypeUrl, absl::Cord(info.SerializeAsString()));
  return status;
}

std::optional<google::rpc::ErrorInfo> GetErrorInfo(const absl::Status& status) {
  auto payload = status.GetPayload(kErrorInfoTypeUrl);
  if (!payload) return std::nullopt;
  google::rpc::ErrorInfo info;
  if (!info.ParseFromString(std::string(*payload))) return std::nullopt;
  return info;
}

std::string ErrorReason(const absl::Status& status) {
  std::optional<google::rpc::ErrorInfo> info = GetErrorInfo(status);
  return info ? info->reason() : std::string();
}

std::string ErrorMetadata(const absl::Status& status, const std::string& key) {
  std::optional<google::rpc::ErrorInfo> info = GetErrorInfo(status);
  if (!info) return "";
  auto it = info->metadata().find(key);
  return it == info->metadata().end() ? std::string() : it->second;
}

bool OutcomeUnknown(const absl::Status& status) {
  return ErrorMetadata(status, "outcome") == "unknown";
}

void SetRetryDelay(absl::Status& status, absl::Duration delay) {
  if (delay < absl::ZeroDuration()) delay = absl::ZeroDuration();
  google::rpc::RetryInfo retry;
  int64_t seconds = absl::IDivDuration(delay, absl::Seconds(1), &delay);
  retry.mutable_retry_delay()->set_seconds(seconds);
  retry.mutable_retry_delay()->set_nanos(static_cast<int32_t>(absl::ToInt64Nanoseconds(delay)));
  status.SetPayload(kRetryInfoTypeUrl, absl::Cord(retry.SerializeAsString()));
}

std::optional<absl::Duration> GetRetryDelay(const absl::Status& status) {
  auto payload = status.GetPayload(kRetryInfoTypeUrl);
  if (!payload) return std::nullopt;
  google::rpc::RetryInfo retry;
  if (!retry.ParseFromString(std::string(*payload))) return std::nullopt;
  return absl::Seconds(retry.retry_delay().seconds()) +
         absl::Nanoseconds(retry.retry_delay().nanos());
}

void AddErrorMetadata(absl::Status& status, const std::string& key, const std::string& value) {
  std::optional<google::rpc::ErrorInfo> info = GetErrorInfo(status);
  if (!info) return;
  (*info->mutable_metadata())[key] = value;
  status.SetPayload(kErrorInfoTypeUrl, absl::Cord(info->SerializeAsString()));
}

}  // namespace defender
