// response_service_impl.h: defender.v1.ResponseService on gRPC's callback API.
//
// Each RPC validates its input, finds the tenant, and hands the call to the
// tenant's DefenderClient; the reactor is finished from the client's callback,
// so no thread waits on Defender. The call's bound is the caller's gRPC
// deadline, or `default_timeout` from now when that is sooner or absent.
#ifndef DEFENDER_SERVER_RESPONSE_SERVICE_IMPL_H_
#define DEFENDER_SERVER_RESPONSE_SERVICE_IMPL_H_

#include "absl/time/time.h"
#include "adapters/common/clock.h"
#include "defender/v1/response_service.grpc.pb.h"
#include "server/plugin.h"

namespace defender {

// ResponseServiceImpl serves the API. Thread-safe; `tenants` must outlive it.
class ResponseServiceImpl final : public v1::ResponseService::CallbackService {
 public:
  ResponseServiceImpl(const TenantDirectory& tenants, absl::Duration default_timeout,
                      Clock& clock = Clock::Real());

  grpc::ServerUnaryReactor* QuarantineFile(grpc::CallbackServerContext* context,
                                           const v1::QuarantineFileRequest* request,
                                           v1::QuarantineFileResponse* response) override;

  grpc::ServerUnaryReactor* GetMachineAction(grpc::CallbackServerContext* context,
                                             const v1::GetMachineActionRequest* request,
                                             v1::MachineAction* response) override;

 private:
  // Resolve returns the tenant's client, or INVALID_ARGUMENT UNKNOWN_TENANT.
  absl::StatusOr<std::shared_ptr<api::DefenderClient>> Resolve(const std::string& tenant) const;
  // Deadline is when the call must be answered.
  absl::Time Deadline(const grpc::CallbackServerContext& context) const;

  const TenantDirectory& tenants_;
  const absl::Duration default_timeout_;
  Clock& clock_;
};

}  // namespace defender

#endif  // DEFENDER_SERVER_RESPONSE_SERVICE_IMPL_H_
