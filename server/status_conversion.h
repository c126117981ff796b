// status_conversion.h: the one place where the plugin's absl::Status becomes a
// grpc::Status, and Defender's MachineAction becomes the API's message.
//
// Every payload of the absl::Status keyed by a "type.googleapis.com/..." URL
// (ErrorInfo, RetryInfo: adapters/common/error.h) becomes one `Any` in the
// google.rpc.Status details, serialized into the grpc::Status's binary error
// details ("grpc-status-details-bin"), as AIP-193 and gRPC's rich error model
// describe.
#ifndef DEFENDER_SERVER_STATUS_CONVERSION_H_
#define DEFENDER_SERVER_STATUS_CONVERSION_H_

#include "absl/status/status.h"
#include "adapters/defender/machine_action.h"
#include "defender/v1/response_service.pb.h"
#include "google/rpc/status.pb.h"
#include "grpcpp/support/status.h"

namespace defender {

// ToRpcStatus returns `status` as a google.rpc.Status with its details.
google::rpc::Status ToRpcStatus(const absl::Status& status);

// ToGrpcStatus returns `status` as a grpc::Status carrying those details.
grpc::Status ToGrpcStatus(const absl::Status& status);

// ToProto fills `out` from Defender's `action`. Unknown type and status
// spellings map to *_UNSPECIFIED; Defender's spellings are kept in
// defender_type / defender_status.
void ToProto(const api::MachineAction& action, v1::MachineAction* out);

}  // namespace defender

#endif  // DEFENDER_SERVER_STATUS_CONVERSION_H_
