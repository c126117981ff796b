#include "server/status_conversion.h"

#include <map>
#include <optional>
#include <string>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "google/protobuf/any.pb.h"

namespace defender {
namespace {

void SetTimestamp(const std::optional<absl::Time>& time, google::protobuf::Timestamp* out) {
  if (!time) return;
  const int64_t seconds = absl::ToUnixSeconds(*time);
  out->set_seconds(seconds);
  out->set_nanos(static_cast<int32_t>(
      absl::ToInt64Nanoseconds(*time - absl::FromUnixSeconds(seconds))));
}

v1::MachineActionType TypeFromDefender(const std::string& type) {
  static const auto* const kTypes = new std::map<std::string, v1::MachineActionType>{
      {"stopandquarantinefile", v1::MACHINE_ACTION_TYPE_STOP_AND_QUARANTINE_FILE},
      {"isolate", v1::MACHINE_ACTION_TYPE_ISOLATE},
      {"unisolate", v1::MACHINE_ACTION_TYPE_UNISOLATE},
      {"runantivirusscan", v1::MACHINE_ACTION_TYPE_RUN_ANTI_VIRUS_SCAN},
      {"offboard", v1::MACHINE_ACTION_TYPE_OFFBOARD},
      {"liveresponse", v1::MACHINE_ACTION_TYPE_LIVE_RESPONSE},
      {"collectinvestigationpackage", v1::MACHINE_ACTION_TYPE_COLLECT_INVESTIGATION_PACKAGE},
      {"restrictcodeexecution", v1::MACHINE_ACTION_TYPE_RESTRICT_CODE_EXECUTION},
      {"unrestrictcodeexecution", v1::MACHINE_ACTION_TYPE_UNRESTRICT_CODE_EXECUTION},
  };
  auto it = kTypes->find(absl::AsciiStrToLower(type));
  return it == kTypes->end() ? v1::MACHINE_ACTION_TYPE_UNSPECIFIED : it->second;
}

v1::MachineActionStatus StatusFromDefender(const std::string& status) {
  static const auto* const kStatuses = new std::map<std::string, v1::MachineActionStatus>{
      {"pending", v1::MACHINE_ACTION_STATUS_PENDING},
      {"inprogress", v1::MACHINE_ACTION_STATUS_IN_PROGRESS},
      {"succeeded", v1::MACHINE_ACTION_STATUS_SUCCEEDED},
      {"failed", v1::MACHINE_ACTION_STATUS_FAILED},
      {"timeout", v1::MACHINE_ACTION_STATUS_TIMED_OUT},
      {"timedout", v1::MACHINE_ACTION_STATUS_TIMED_OUT},
      {"cancelled", v1::MACHINE_ACTION_STATUS_CANCELLED},
      {"canceled", v1::MACHINE_ACTION_STATUS_CANCELLED},
  };
  auto it = kStatuses->find(absl::AsciiStrToLower(status));
  return it == kStatuses->end() ? v1::MACHINE_ACTION_STATUS_UNSPECIFIED : it->second;
}

v1::FileIdentifierType FileTypeFromDefender(const std::string& type) {
  const std::string lower = absl::AsciiStrToLower(type);
  if (lower == "sha1") return v1::FILE_IDENTIFIER_TYPE_SHA1;
  if (lower == "sha256") return v1::FILE_IDENTIFIER_TYPE_SHA256;
  if (lower == "md5") return v1::FILE_IDENTIFIER_TYPE_MD5;
  return v1::FILE_IDENTIFIER_TYPE_UNSPECIFIED;
}

}  // namespace

google::rpc::Status ToRpcStatus(const absl::Status& status) {
  google::rpc::Status rpc;
  rpc.set_code(static_cast<int32_t>(status.code()));
  rpc.set_message(std::string(status.message()));
  status.ForEachPayload([&rpc](absl::string_view type_url, const absl::Cord& payload) {
    if (!absl::StartsWith(type_url, "type.googleapis.com/")) return;
    google::protobuf::Any* any = rpc.add_details();
    any->set_type_url(std::string(type_url));
    any->set_value(std::string(payload));
  });
  return rpc;
}

grpc::Status ToGrpcStatus(const absl::Status& status) {
  if (status.ok()) return grpc::Status::OK;
  google::rpc::Status rpc = ToRpcStatus(status);
  return grpc::Status(static_cast<grpc::StatusCode>(status.code()), rpc.message(),
                      rpc.SerializeAsString());
}

void ToProto(const api::MachineAction& action, v1::MachineAction* out) {
  out->set_id(action.id);
  out->set_type(TypeFromDefender(action.type));
  out->set_defender_type(action.type);
  out->set_status(StatusFromDefender(action.status));
  out->set_defender_status(action.status);
  out->set_requestor(action.requestor);
  out->set_requestor_comment(action.requestor_comment);
  out->set_machine_id(action.machine_id);
  out->set_computer_dns_name(action.computer_dns_name);
  out->set_scope(action.scope);
  out->set_title(action.title);
  out->set_external_id(action.external_id);
  out->set_request_source(action.request_source);
  out->set_cancellation_requestor(action.cancellation_requestor);
  out->set_cancellation_comment(action.cancellation_comment);
  SetTimestamp(action.creation_time, out->mutable_creation_time());
  SetTimestamp(action.last_update_time, out->mutable_last_update_time());
  if (action.cancellation_time) {
    SetTimestamp(action.cancellation_time, out->mutable_cancellation_time());
  }
  if (!action.file_identifier.empty() || !action.file_identifier_type.empty()) {
    out->mutable_related_file_info()->set_file_identifier(action.file_identifier);
    out->mutable_related_file_info()->set_file_identifier_type(
        FileTypeFromDefender(action.file_identifier_type));
  }
  if (!action.creation_time) out->clear_creation_time();
  if (!action.last_update_time) out->clear_last_update_time();
}

}  // namespace defender
