#include "server/call_log.h"

#include <utility>

#include "absl/random/random.h"
#include "absl/strings/str_cat.h"
#include "adapters/common/error.h"
#include "server/authorization.h"

namespace defender {
namespace {

std::string NewCallId() {
  static absl::Mutex mu(absl::kConstInit);
  static absl::BitGen* gen = new absl::BitGen();
  uint64_t value = 0;
  {
    absl::MutexLock lock(&mu);
    value = absl::Uniform<uint64_t>(*gen);
  }
  return absl::StrCat(absl::Hex(value, absl::kZeroPad16));
}

}  // namespace

std::string CallIdFrom(absl::string_view x_request_id) {
  if (x_request_id.empty() || x_request_id.size() > 128) return "";
  for (unsigned char c : x_request_id) {
    if (c < 0x21 || c > 0x7e) return "";
  }
  return std::string(x_request_id);
}

std::shared_ptr<CallLog> CallLog::Start(absl::string_view method,
                                        grpc::CallbackServerContext& context, Metrics& metrics) {
  std::string call_id;
  const auto& metadata = context.client_metadata();
  if (auto it = metadata.find("x-request-id"); it != metadata.end()) {
    call_id = CallIdFrom(absl::string_view(it->second.data(), it->second.size()));
  }
  if (call_id.empty()) call_id = NewCallId();
  context.AddInitialMetadata("x-request-id", call_id);
  CallerIdentity who = IdentityOf(context);
  std::string caller = who.certificate_names.empty() ? who.peer : who.certificate_names.front();
  return std::shared_ptr<CallLog>(
      new CallLog(std::string(method), std::move(call_id), std::move(caller), who.peer, metrics));
}

CallLog::CallLog(std::string method, std::string call_id, std::string caller, std::string peer,
                 Metrics& metrics)
    : method_(std::move(method)),
      call_id_(std::move(call_id)),
      peer_(std::move(peer)),
      started_(absl::Now()),
      metrics_(metrics),
      caller_(std::move(caller)) {
  metrics_.RpcStarted(method_);
}

CallLog::~CallLog() {
  bool finished = false;
  {
    absl::MutexLock lock(&mu_);
    finished = finished_;
  }
  // A record dropped unfinished is a bug; count it so in-flight returns to 0.
  if (!finished) Finish(absl::InternalError("the call ended without a status"));
}

void CallLog::Set(const std::string& key, LogValue value) {
  absl::MutexLock lock(&mu_);
  for (auto& field : fields_) {
    if (field.first == key) {
      field.second = std::move(value);
      return;
    }
  }
  fields_.emplace_back(key, std::move(value));
}

std::string CallLog::caller() const {
  absl::MutexLock lock(&mu_);
  return caller_;
}

void CallLog::SetCaller(std::string name) {
  absl::MutexLock lock(&mu_);
  caller_ = std::move(name);
}

void CallLog::Finish(const absl::Status& status) {
  LogFields fields;
  std::string caller;
  {
    absl::MutexLock lock(&mu_);
    if (finished_) return;
    finished_ = true;
    fields = fields_;
    caller = caller_;
  }
  const absl::Duration latency = absl::Now() - started_;
  metrics_.RpcFinished(method_, status.code(), latency);

  const absl::StatusCode code = status.code();
  LogLevel level = status.ok() ? LogLevel::kInfo : LogLevel::kWarn;
  if (code == absl::StatusCode::kInternal || code == absl::StatusCode::kUnknown ||
      code == absl::StatusCode::kDataLoss) {
    level = LogLevel::kError;
  }
  if (!LogEnabled(level)) return;
  LogFields line = {{"rpc", method_}, {"call_id", call_id_}, {"caller", caller}, {"peer", peer_}};
  for (auto& field : fields) line.push_back(std::move(field));
  line.emplace_back("code", absl::StatusCodeToString(code));
  if (!status.ok()) {
    line.emplace_back("reason", ErrorReason(status));
    line.emplace_back("error", std::string(status.message()));
  }
  if (const int upstream = trace_->LastHttpStatus(); upstream != 0) {
    line.emplace_back("upstream_status", int64_t{upstream});
  }
  std::string tracking = trace_->TrackingId();
  if (tracking.empty()) tracking = ErrorMetadata(status, "tracking_id");
  if (!tracking.empty()) line.emplace_back("tracking_id", tracking);
  line.emplace_back("latency_ms", absl::ToDoubleMilliseconds(latency));
  Log(level, absl::StrCat(method_, " ", absl::StatusCodeToString(code)), line);
}

}  // namespace defender
