// defenderctl: the command-line client of defender-plugin.
//
//   defenderctl quarantine (--machine ID | --host NAME) (--sha1 HASH | --sha256 HASH)
//                          --comment TEXT [--request-id ID] [--tenant T] [--target HOST:PORT]
//   defenderctl get-action ID        defenderctl watch ID
//   defenderctl cancel ID --comment TEXT
//   defenderctl batch --machines ID,ID,.. [--hosts NAME,..] (--sha1 | --sha256) --comment TEXT
//   defenderctl audit --state-dir DIR [--hours N] [--tenant T] [--request-id ID] [--limit N]
//
// quarantine, get-action and cancel print the MachineAction as JSON; watch
// prints one JSON line per status change; batch one JSON line per device;
// audit one JSON line per journal entry (it reads the plugin's journal file
// directly, read-only). On error: exit 1, and the status code, message and
// error details on stderr (batch: exit 1 also when any device failed). Usage
// errors: exit 2.
#include <fstream>
#include <iostream>
#include <iterator>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "adapters/journal/sqlite_journal.h"
#include "nlohmann/json.hpp"
#include "defender/v1/response_service.grpc.pb.h"
#include "google/protobuf/util/json_util.h"
#include "google/rpc/error_details.pb.h"
#include "google/rpc/status.pb.h"
#include "grpcpp/grpcpp.h"
#include "server/flags.h"

namespace {

constexpr char kUsage[] =
    "usage:\n"
    "  defenderctl quarantine (--machine ID | --host NAME) (--sha1 HASH | --sha256 HASH)\n"
    "                         --comment TEXT [--request-id ID] [--tenant NAME]\n"
    "  defenderctl get-action ID [--tenant NAME]\n"
    "  defenderctl watch ID [--tenant NAME]\n"
    "  defenderctl cancel ID --comment TEXT [--tenant NAME]\n"
    "  defenderctl batch [--machines ID,ID,...] [--hosts NAME,NAME,...]\n"
    "                    (--sha1 HASH | --sha256 HASH) --comment TEXT [--request-id ID]\n"
    "  defenderctl audit --state-dir DIR [--hours N] [--tenant NAME] [--request-id ID]\n"
    "                    [--machine ID] [--limit N]\n"
    "Calls take [--target HOST:PORT] [--timeout-seconds N] (watch: no deadline unless\n"
    "given). The target defaults to $DEFENDER_PLUGIN_TARGET, else 127.0.0.1:50051.\n"
    "TLS: --tls-ca FILE trusts the plugin's CA (default $DEFENDER_PLUGIN_CA; without\n"
    "it the call is plaintext); --tls-cert FILE --tls-key FILE present a client\n"
    "certificate (mutual TLS); --tls-server-name NAME checks the plugin's certificate\n"
    "for NAME instead of the target's host.\n";

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

int PrintJson(const google::protobuf::Message& message, bool one_line = false) {
  std::string json;
  google::protobuf::util::JsonPrintOptions options;
  options.add_whitespace = !one_line;
  options.preserve_proto_field_names = true;
  if (!google::protobuf::util::MessageToJsonString(message, &json, options).ok()) {
    std::cerr << "error: cannot print the answer as JSON\n";
    return 1;
  }
  std::cout << json;
  if (one_line) std::cout << std::endl;
  return 0;
}

const char* StateName(defender::journal::EntryState state) {
  switch (state) {
    case defender::journal::EntryState::kInFlight:
      return "in_flight";
    case defender::journal::EntryState::kSucceeded:
      return "succeeded";
    case defender::journal::EntryState::kFailed:
      return "failed";
  }
  return "unknown";
}

// Audit prints the journal's entries as JSON lines, oldest first.
int Audit(const std::string& state_dir, int hours, const std::string& tenant,
          const std::string& request_id, const std::string& machine, int limit) {
  if (state_dir.empty()) {
    std::cerr << "defenderctl audit: --state-dir is required (the plugin's --state-dir)\n";
    return 2;
  }
  auto journal = defender::journal::SqliteJournal::OpenReadOnly(state_dir);
  if (!journal.ok()) {
    std::cerr << "error: " << journal.status().message() << "\n";
    return 1;
  }
  defender::journal::ListOptions options;
  if (hours > 0) options.since = absl::Now() - absl::Hours(hours);
  options.tenant = tenant;
  options.request_key = request_id;
  options.machine_id = machine;
  options.limit = limit;
  auto entries = (*journal)->List(options);
  if (!entries.ok()) {
    std::cerr << "error: " << entries.status().message() << "\n";
    return 1;
  }
  for (const defender::journal::Entry& entry : *entries) {
    nlohmann::ordered_json line = {
        {"id", entry.id},
        {"created", absl::FormatTime(absl::RFC3339_full, entry.created, absl::UTCTimeZone())},
        {"updated", absl::FormatTime(absl::RFC3339_full, entry.updated, absl::UTCTimeZone())},
        {"method", entry.method},
        {"caller", entry.caller},
        {"tenant", entry.tenant},
        {"request_id", entry.request_key},
        {"machine_id", entry.machine_id},
        {"sha1", entry.file_sha1},
        {"comment", entry.comment},
        {"state", StateName(entry.state)},
        {"action_id", entry.action_id},
        {"code", CodeName(static_cast<grpc::StatusCode>(entry.status_code))},
        {"reason", entry.error_reason},
        {"message", entry.error_message},
        {"outcome_unknown", entry.outcome_unknown},
        {"attempts", entry.attempts},
        {"replays", entry.replays}};
    std::cout << line.dump(-1, ' ', false, nlohmann::ordered_json::error_handler_t::replace)
              << "\n";
  }
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
  std::string machine, host, sha1, sha256, comment, tenant, request_id, machines, hosts;
  std::string state_dir;
  const char* env_ca = std::getenv("DEFENDER_PLUGIN_CA");
  std::string tls_ca = env_ca != nullptr ? env_ca : "", tls_cert, tls_key, tls_server_name;
  int timeout_seconds = 60, hours = 0, limit = 0;
  defender::FlagParser flags("defenderctl " + command);
  flags.AddString("target", &target, "the plugin's address", "HOST:PORT");
  flags.AddString("tenant", &tenant, "configured tenant name (empty: the default)", "NAME");
  flags.AddInt("timeout-seconds", &timeout_seconds, "deadline of the call");
  flags.AddString("tls-ca", &tls_ca, "call over TLS, trusting these PEM CAs", "FILE");
  flags.AddString("tls-cert", &tls_cert, "client certificate for mutual TLS (PEM)", "FILE");
  flags.AddString("tls-key", &tls_key, "its private key (PEM)", "FILE");
  flags.AddString("tls-server-name", &tls_server_name, "name to check the certificate for",
                  "NAME");
  if (command == "quarantine" || command == "batch") {
    if (command == "quarantine") {
      flags.AddString("machine", &machine, "Defender device id (40 hex)", "ID");
      flags.AddString("host", &host, "the device's computerDnsName", "NAME");
    } else {
      flags.AddString("machines", &machines, "Defender device ids, comma-separated", "IDS");
      flags.AddString("hosts", &hosts, "devices' computerDnsNames, comma-separated", "NAMES");
    }
    flags.AddString("sha1", &sha1, "SHA-1 of the file (40 hex)", "HASH");
    flags.AddString("sha256", &sha256, "SHA-256 of the file (64 hex)", "HASH");
    flags.AddString("comment", &comment, "comment recorded with the action", "TEXT");
    flags.AddString("request-id", &request_id, "idempotency key", "ID");
  } else if (command == "cancel") {
    flags.AddString("comment", &comment, "comment recorded with the cancellation", "TEXT");
  } else if (command == "audit") {
    flags.AddString("state-dir", &state_dir, "the plugin's state directory", "DIR");
    flags.AddInt("hours", &hours, "only entries of the last N hours (0 = all)");
    flags.AddString("request-id", &request_id, "only this request id", "ID");
    flags.AddString("machine", &machine, "only this device id", "ID");
    flags.AddInt("limit", &limit, "only the newest N entries (0 = all)");
  } else if (command != "get-action" && command != "watch") {
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

  const bool takes_id = command == "get-action" || command == "watch" || command == "cancel";
  if (takes_id && flags.positional().size() != 1) {
    std::cerr << "defenderctl: " << command << " takes exactly one action id\n" << kUsage;
    return 2;
  }
  if (!takes_id && !flags.positional().empty()) {
    std::cerr << "defenderctl: unexpected argument '" << flags.positional()[0] << "'\n";
    return 2;
  }
  if (command == "audit") return Audit(state_dir, hours, tenant, request_id, machine, limit);

  std::shared_ptr<grpc::ChannelCredentials> credentials = grpc::InsecureChannelCredentials();
  grpc::ChannelArguments channel_args;
  if (!tls_ca.empty()) {
    grpc::SslCredentialsOptions tls;
    auto read = [](const std::string& path, std::string* out) {
      std::ifstream in(path, std::ios::binary);
      out->assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
      return !out->empty();
    };
    if (!read(tls_ca, &tls.pem_root_certs) ||
        (!tls_cert.empty() && !read(tls_cert, &tls.pem_cert_chain)) ||
        (!tls_key.empty() && !read(tls_key, &tls.pem_private_key))) {
      std::cerr << "defenderctl: cannot read --tls-ca, --tls-cert or --tls-key\n";
      return 2;
    }
    credentials = grpc::SslCredentials(tls);
    if (!tls_server_name.empty()) {
      channel_args.SetSslTargetNameOverride(tls_server_name);
    }
  } else if (!tls_cert.empty() || !tls_key.empty() || !tls_server_name.empty()) {
    std::cerr << "defenderctl: --tls-cert, --tls-key and --tls-server-name need --tls-ca\n";
    return 2;
  }
  auto channel = grpc::CreateCustomChannel(target, credentials, channel_args);
  auto stub = defender::v1::ResponseService::NewStub(channel);
  grpc::ClientContext context;
  if (command != "watch" || flags.WasSet("timeout-seconds")) {
    context.set_deadline(std::chrono::system_clock::now() +
                         std::chrono::seconds(timeout_seconds));
  }

  if (command == "quarantine") {
    defender::v1::QuarantineFileRequest request;
    request.set_machine_id(machine);
    request.set_computer_dns_name(host);
    request.set_sha1(sha1);
    request.set_sha256(sha256);
    request.set_comment(comment);
    request.set_tenant(tenant);
    request.set_request_id(request_id);
    defender::v1::QuarantineFileResponse response;
    grpc::Status status = stub->QuarantineFile(&context, request, &response);
    if (!status.ok()) return PrintError(status);
    return PrintJson(response.action());
  }
  if (command == "batch") {
    defender::v1::BatchQuarantineFileRequest request;
    for (absl::string_view id : absl::StrSplit(machines, ',', absl::SkipEmpty())) {
      request.add_machine_ids(std::string(id));
    }
    for (absl::string_view name : absl::StrSplit(hosts, ',', absl::SkipEmpty())) {
      request.add_computer_dns_names(std::string(name));
    }
    request.set_sha1(sha1);
    request.set_sha256(sha256);
    request.set_comment(comment);
    request.set_tenant(tenant);
    request.set_request_id(request_id);
    auto reader = stub->BatchQuarantineFile(&context, request);
    defender::v1::BatchQuarantineFileResponse result;
    int failed = 0;
    while (reader->Read(&result)) {
      if (result.has_error()) ++failed;
      PrintJson(result, /*one_line=*/true);
    }
    grpc::Status status = reader->Finish();
    if (!status.ok()) return PrintError(status);
    return failed == 0 ? 0 : 1;
  }
  if (command == "watch") {
    defender::v1::WatchMachineActionRequest request;
    request.set_id(flags.positional()[0]);
    request.set_tenant(tenant);
    auto reader = stub->WatchMachineAction(&context, request);
    defender::v1::MachineAction action;
    while (reader->Read(&action)) PrintJson(action, /*one_line=*/true);
    grpc::Status status = reader->Finish();
    return status.ok() ? 0 : PrintError(status);
  }
  if (command == "cancel") {
    defender::v1::CancelMachineActionRequest request;
    request.set_id(flags.positional()[0]);
    request.set_comment(comment);
    request.set_tenant(tenant);
    defender::v1::MachineAction action;
    grpc::Status status = stub->CancelMachineAction(&context, request, &action);
    if (!status.ok()) return PrintError(status);
    return PrintJson(action);
  }
  defender::v1::GetMachineActionRequest request;
  request.set_id(flags.positional()[0]);
  request.set_tenant(tenant);
  defender::v1::MachineAction action;
  grpc::Status status = stub->GetMachineAction(&context, request, &action);
  if (!status.ok()) return PrintError(status);
  return PrintJson(action);
}
