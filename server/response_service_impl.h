// response_service_impl.h: defender.v1.ResponseService on gRPC's callback API.
//
// Each RPC validates its input, finds the tenant, and hands the call to the
// tenant's DefenderClient; reactors are finished from the client's callbacks,
// so no thread waits on Defender. A unary call's bound is the caller's gRPC
// deadline, or `default_timeout` from now when the caller set none; a batch
// without a deadline is bounded by kBatchDefaultTimeout, a watch only by the
// caller.
//
// Actions (QuarantineFile, each device of BatchQuarantineFile,
// CancelMachineAction) go through the RequestLedger: journaled before they
// start and before they are answered, and at most once per request_id.
#ifndef DEFENDER_SERVER_RESPONSE_SERVICE_IMPL_H_
#define DEFENDER_SERVER_RESPONSE_SERVICE_IMPL_H_

#include <memory>
#include <string>

#include "absl/time/time.h"
#include "adapters/common/clock.h"
#include "defender/v1/response_service.grpc.pb.h"
#include "adapters/common/metrics.h"
#include "server/authorization.h"
#include "server/call_log.h"
#include "server/plugin.h"
#include "server/request_ledger.h"
#include "server/target_resolver.h"
#include "server/watch_hub.h"

namespace defender {

// kBatchDefaultTimeout bounds a BatchQuarantineFile call that has no deadline.
inline constexpr absl::Duration kBatchDefaultTimeout = absl::Hours(1);
// kBatchConcurrency is how many devices of one batch are in flight at once
// (the rate budget paces them further).
inline constexpr int kBatchConcurrency = 16;

// ServiceParts are what the service uses besides the tenants; all must
// outlive it.
struct ServiceParts {
  RequestLedger* ledger = nullptr;
  WatchHub* watches = nullptr;
  TargetResolver* resolver = nullptr;
  const Authorizer* authorizer = nullptr;  // null: every caller may act on every tenant
  Metrics* metrics = nullptr;              // null: no metrics
};

// ResponseServiceImpl serves the API. Thread-safe; `tenants` must outlive it.
class ResponseServiceImpl final : public v1::ResponseService::CallbackService {
 public:
  ResponseServiceImpl(const TenantDirectory& tenants, ServiceParts parts,
                      absl::Duration default_timeout, Clock& clock = Clock::Real());

  grpc::ServerUnaryReactor* QuarantineFile(grpc::CallbackServerContext* context,
                                           const v1::QuarantineFileRequest* request,
                                           v1::QuarantineFileResponse* response) override;

  grpc::ServerUnaryReactor* GetMachineAction(grpc::CallbackServerContext* context,
                                             const v1::GetMachineActionRequest* request,
                                             v1::MachineAction* response) override;

  grpc::ServerWriteReactor<v1::MachineAction>* WatchMachineAction(
      grpc::CallbackServerContext* context, const v1::WatchMachineActionRequest* request) override;

  grpc::ServerUnaryReactor* CancelMachineAction(grpc::CallbackServerContext* context,
                                                const v1::CancelMachineActionRequest* request,
                                                v1::MachineAction* response) override;

  grpc::ServerWriteReactor<v1::BatchQuarantineFileResponse>* BatchQuarantineFile(
      grpc::CallbackServerContext* context,
      const v1::BatchQuarantineFileRequest* request) override;

 private:
  class BatchRun;

  // Admit returns `valid` (the request's validation) when it is an error,
  // else PERMISSION_DENIED when the caller may not act on the tenant, else
  // the tenant's client, or INVALID_ARGUMENT UNKNOWN_TENANT.
  // It notes the tenant, and the caller's name when authorized, in `log`.
  absl::StatusOr<std::shared_ptr<api::DefenderClient>> Admit(
      const grpc::CallbackServerContext& context, CallLog& log, const absl::Status& valid,
      const std::string& tenant) const;
  Metrics& metrics() const {
    return parts_.metrics != nullptr ? *parts_.metrics : NoMetrics::Get();
  }
  // Deadline is when a unary call must be answered.
  absl::Time Deadline(const grpc::CallbackServerContext& context) const;

  const TenantDirectory& tenants_;
  const ServiceParts parts_;
  const absl::Duration default_timeout_;
  Clock& clock_;
};


}  // namespace defender

#endif  // DEFENDER_SERVER_RESPONSE_SERVICE_IMPL_H_
