#include "server/response_service_impl.h"

#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "adapters/common/cancellation.h"
#include "adapters/common/error.h"
#include "server/log.h"
#include "server/status_conversion.h"
#include "server/validation.h"

namespace defender {
namespace {

// CallReactor is a unary reactor whose cancellation (the caller went away or
// its deadline passed) raises a Cancellation that stops the upstream work.
class CallReactor final : public grpc::ServerUnaryReactor {
 public:
  const std::shared_ptr<Cancellation>& cancellation() const { return cancellation_; }
  void OnCancel() override { cancellation_->Cancel(); }
  void OnDone() override { delete this; }

 private:
  std::shared_ptr<Cancellation> cancellation_ = std::make_shared<Cancellation>();
};

// Finish ends `reactor` with `status`, logging one line for the call. The
// reactor may be gone once this returns.
void FinishCall(grpc::ServerUnaryReactor* reactor, absl::string_view method,
                const std::string& details, absl::Time started, const absl::Status& status) {
  std::string line = absl::StrCat("rpc=", method, " ", details,
                                  " code=", absl::StatusCodeToString(status.code()),
                                  " latency_ms=", absl::ToInt64Milliseconds(absl::Now() - started));
  if (!status.ok()) {
    absl::StrAppend(&line, " reason=", ErrorReason(status), " message=\"", status.message(), "\"");
  }
  Log(status.ok() ? "INFO" : "WARN", line);
  reactor->Finish(ToGrpcStatus(status));
}

// TenantForLog is the caller's tenant name made safe for one log line.
std::string TenantForLog(const std::string& tenant) {
  if (tenant.empty()) return kDefaultTenantName;
  return absl::CHexEscape(tenant.substr(0, 64));
}

}  // namespace

ResponseServiceImpl::ResponseServiceImpl(const TenantDirectory& tenants,
                                         absl::Duration default_timeout, Clock& clock)
    : tenants_(tenants), default_timeout_(default_timeout), clock_(clock) {}

absl::StatusOr<std::shared_ptr<api::DefenderClient>> ResponseServiceImpl::Resolve(
    const std::string& tenant) const {
  std::shared_ptr<api::DefenderClient> client = tenants_.Find(tenant);
  if (client == nullptr) {
    return MakeError(absl::StatusCode::kInvalidArgument,
                     absl::StrCat("tenant '", absl::CHexEscape(tenant.substr(0, 64)), "' is not configured"), "UNKNOWN_TENANT",
                     {{"field", "tenant"}, {"tenant", tenant}});
  }
  return client;
}

absl::Time ResponseServiceImpl::Deadline(const grpc::CallbackServerContext& context) const {
  const absl::Time own = clock_.Now() + default_timeout_;
  const auto caller = context.deadline();
  if (caller == std::chrono::system_clock::time_point::max()) return own;
  return std::min(own, absl::FromChrono(caller));
}

grpc::ServerUnaryReactor* ResponseServiceImpl::QuarantineFile(
    grpc::CallbackServerContext* context, const v1::QuarantineFileRequest* request,
    v1::QuarantineFileResponse* response) {
  auto* reactor = new CallReactor();
  const absl::Time started = absl::Now();
  std::string details = absl::StrCat("tenant=", TenantForLog(request->tenant()));
  if (absl::Status valid = ValidateQuarantineFileRequest(*request); !valid.ok()) {
    FinishCall(reactor, "QuarantineFile", details, started, valid);
    return reactor;
  }
  absl::StatusOr<std::shared_ptr<api::DefenderClient>> client = Resolve(request->tenant());
  if (!client.ok()) {
    FinishCall(reactor, "QuarantineFile", details, started, client.status());
    return reactor;
  }
  api::StopAndQuarantineFileParams params;
  params.machine_id = absl::AsciiStrToLower(request->machine_id());
  params.sha1 = absl::AsciiStrToLower(request->sha1());
  params.comment = request->comment();
  absl::StrAppend(&details, " machine=", params.machine_id, " sha1=", params.sha1);
  (*client)->StopAndQuarantineFile(
      params, api::CallContext(Deadline(*context), reactor->cancellation()),
      // The callback holds the client: a reload cannot take it away mid-call.
      [reactor, response, details, started, held = *client](
          absl::StatusOr<api::MachineAction> action) {
        if (action.ok()) {
          ToProto(*action, response->mutable_action());
          FinishCall(reactor, "QuarantineFile",
                     absl::StrCat(details, " action=", action->id), started, absl::OkStatus());
        } else {
          FinishCall(reactor, "QuarantineFile", details, started, action.status());
        }
      });
  return reactor;
}

grpc::ServerUnaryReactor* ResponseServiceImpl::GetMachineAction(
    grpc::CallbackServerContext* context, const v1::GetMachineActionRequest* request,
    v1::MachineAction* response) {
  auto* reactor = new CallReactor();
  const absl::Time started = absl::Now();
  std::string details = absl::StrCat("tenant=", TenantForLog(request->tenant()));
  if (absl::Status valid = ValidateGetMachineActionRequest(*request); !valid.ok()) {
    FinishCall(reactor, "GetMachineAction", details, started, valid);
    return reactor;
  }
  absl::StatusOr<std::shared_ptr<api::DefenderClient>> client = Resolve(request->tenant());
  if (!client.ok()) {
    FinishCall(reactor, "GetMachineAction", details, started, client.status());
    return reactor;
  }
  absl::StrAppend(&details, " action=", request->id());
  (*client)->GetMachineAction(
      request->id(), api::CallContext(Deadline(*context), reactor->cancellation()),
      [reactor, response, details, started, held = *client](
          absl::StatusOr<api::MachineAction> action) {
        if (action.ok()) ToProto(*action, response);
        FinishCall(reactor, "GetMachineAction", details, started, action.status());
      });
  return reactor;
}

}  // namespace defender
