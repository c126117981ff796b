// defenderctl: the command-line client of defender-plugin.
//
//   defenderctl quarantine --machine ID --sha1 HASH --comment TEXT [--tenant T] [--target HOST:PORT]
//   defenderctl get-action ID [--tenant T] [--target HOST:PORT]
//
// Prints the MachineAction as JSON on stdout. On error: exit 1, and the status
// code, message and error details on stderr. Usage errors: exit 2.
#include <iostream>
#include <memory>
#include <string>

#include "absl/strings/str_cat.h"
#include "defender/v1/response_service.grpc.pb.h"
#include "google/protobuf/util/json_util.h"
#include "google/rpc/error_details.pb.h"
#include "google/rpc/status.pb.h"
#include "grpcpp/grpcpp.h"
#include "server/flags.h"

namespace {

constexpr char kUsage[] =
    "usage:\n"
    "  defenderctl quarantine --machine ID --sha1 HASH --comment TEXT [--tenant NAME]\n"
    "                         [--request-id ID] [--target HOST:PORT] [--timeout-seconds N]\n"
    "  defenderctl get-action ID [--tenant NAME] [--target HOST:PORT] [--timeout-seconds N]\n"
    "The target defaults to $DEFENDER_PLUGIN_TARGET, else 127.0.0.1:50051.\n";

const char* CodeName(grpc::StatusCode code) {
  static const char* const kNames[] = {
      "OK",          "CANCELLED",        "UNKNOWN",           "INVALID_ARGUMENT",
      "DEADLINE_EXCEEDED", "NOT_FOUND",  "ALREADY_EXISTS",    "PERMISSION_DENIED",
      "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "ABORTED", "OUT_OF_RANGE",
      "UNIMPLEMENTED", "INTERNAL",       "UNAVAILABLE",       "DATA_LOSS",
      "UNAUTHENTICATED"};
  int index = static_cast<int>(code);
  return index >= 0 && index <= 16 ? kNames[index] : "UNKNOWN";
}

// PrintError writes the status and its google.rpc details to stderr.
int PrintError(const grpc::Status& status) {
  std::cerr << "error: " << CodeName(status.error_code()) << ": " << status.error_message()
            << "\n";
  google::rpc::Status rpc;
  if (!status.error_details().empty() && rpc.ParseFromString(status.error_details())) {
    for (const google::protobuf::Any& any : rpc.details()) {
      google::rpc::ErrorInfo info;
      google::rpc::RetryInfo retry;
      if (any.UnpackTo(&info)) {
        std::cerr << "  reason: " << info.reason() << " (domain " << info.domain() << ")\n";
        for (const auto& [key, value] : info.metadata()) {
          std::cerr << "  " << key << ": " << value << "\n";
        }
      } else if (any.UnpackTo(&retry)) {
        std::cerr << "  retry after: " << retry.retry_delay().seconds() << "s\n";
      }
    }
  }
  return 1;
}

int PrintJson(const google::protobuf::Message& message) {
  std::string json;
  google::protobuf::util::JsonPrintOptions options;
  options.add_whitespace = true;
  options.preserve_proto_field_names = true;
  if (!google::protobuf::util::MessageToJsonString(message, &json, options).ok()) {
    std::cerr << "error: cannot print the answer as JSON\n";
    return 1;
  }
  std::cout << json;
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::cerr << kUsage;
    return 2;
  }
  const std::string command = argv[1];
  const char* env_target = std::getenv("DEFENDER_PLUGIN_TARGET");
  std::string target = env_target != nullptr ? env_target : "127.0.0.1:50051";
  std::string machine, sha1, comment, tenant, request_id;
  int timeout_seconds = 60;
  defender::FlagParser flags("defenderctl " + command);
  flags.AddString("target", &target, "the plugin's address", "HOST:PORT");
  flags.AddString("tenant", &tenant, "configured tenant name (empty: the default)", "NAME");
  flags.AddInt("timeout-seconds", &timeout_seconds, "deadline of the call");
  if (command == "quarantine") {
    flags.AddString("machine", &machine, "Defender device id (40 hex)", "ID");
    flags.AddString("sha1", &sha1, "SHA-1 of the file (40 hex)", "HASH");
    flags.AddString("comment", &comment, "comment recorded with the action", "TEXT");
    flags.AddString("request-id", &request_id, "idempotency key", "ID");
  } else if (command != "get-action") {
    std::cerr << "defenderctl: unknown command '" << command << "'\n" << kUsage;
    return 2;
  }
  if (absl::Status parsed = flags.Parse(argc - 1, argv + 1); !parsed.ok()) {
    std::cerr << "defenderctl: " << parsed.message() << "\n" << kUsage;
    return 2;
  }
  if (flags.HelpRequested()) {
    std::cout << kUsage << flags.Usage();
    return 0;
  }

  auto channel = grpc::CreateChannel(target, grpc::InsecureChannelCredentials());
  auto stub = defender::v1::ResponseService::NewStub(channel);
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(timeout_seconds));

  if (command == "quarantine") {
    if (!flags.positional().empty()) {
      std::cerr << "defenderctl: unexpected argument '" << flags.positional()[0] << "'\n";
      return 2;
    }
    defender::v1::QuarantineFileRequest request;
    request.set_machine_id(machine);
    request.set_sha1(sha1);
    request.set_comment(comment);
    request.set_tenant(tenant);
    request.set_request_id(request_id);
    defender::v1::QuarantineFileResponse response;
    grpc::Status status = stub->QuarantineFile(&context, request, &response);
    if (!status.ok()) return PrintError(status);
    return PrintJson(response.action());
  }
  if (flags.positional().size() != 1) {
    std::cerr << "defenderctl: get-action takes exactly one action id\n" << kUsage;
    return 2;
  }
  defender::v1::GetMachineActionRequest request;
  request.set_id(flags.positional()[0]);
  request.set_tenant(tenant);
  defender::v1::MachineAction action;
  grpc::Status status = stub->GetMachineAction(&context, request, &action);
  if (!status.ok()) return PrintError(status);
  return PrintJson(action);
}
