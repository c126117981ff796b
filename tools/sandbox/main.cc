// defender-sandbox: runs the Defender/Entra HTTPS emulator (sandbox.h) as a
// process, for manual tests and for tests in other languages.
//
//   defender-sandbox --listen 127.0.0.1:0 --ca-out /tmp/ca.pem --port-file /tmp/port
//
// prints "defender-sandbox listening on https://127.0.0.1:PORT (CA: FILE)" once
// it accepts connections, then serves until SIGTERM or SIGINT (exit 0). With
// --managed-identity a second line follows:
// "defender-sandbox managed identity on http://127.0.0.1:PORT
// (IDENTITY_ENDPOINT=http://127.0.0.1:PORT/msi/token IDENTITY_HEADER=HEX)".
// Bad flags exit 2. Secrets and tokens are never printed (the identity header
// is a throwaway value of this sandbox, printed so other processes can use it).

#include <signal.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <iterator>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "tools/sandbox/sandbox.h"

namespace {

using defender::sandbox::Sandbox;
using defender::sandbox::SandboxApp;
using defender::sandbox::SandboxOptions;

constexpr char kUsage[] =
    "Usage: defender-sandbox [flags]\n"
    "An HTTPS emulator of the Defender for Endpoint API and the Entra ID token\n"
    "endpoint, with fault injection (control endpoints under /sandbox/).\n"
    "\n"
    "  --listen HOST:PORT            address to serve on (default 127.0.0.1:8443;\n"
    "                                port 0 picks a free port)\n"
    "  --ca-out FILE                 where to write the CA certificate PEM\n"
    "                                (default ./sandbox-ca.pem)\n"
    "  --port-file FILE              write the bound port number here once listening\n"
    "  --tenant-id ID                accepted tenant (default "
    "11111111-1111-1111-1111-111111111111)\n"
    "  --client-id ID                accepted client (default "
    "22222222-2222-2222-2222-222222222222)\n"
    "  --client-secret SECRET        accepted secret (default: $SANDBOX_CLIENT_SECRET,\n"
    "                                else sandbox-secret)\n"
    "  --token-lifetime-seconds N    token lifetime (default 3600)\n"
    "  --action-step-ms N            Pending -> InProgress -> Succeeded step (default 2000)\n"
    "  --rate-per-minute N           Defender's rate limit: calls per client and API in\n"
    "                                any sliding minute, else 429 with Retry-After\n"
    "                                (default 100; 0 = no per-minute limit)\n"
    "  --rate-per-hour N             the same per sliding hour (default 1500; 0 = off)\n"
    "  --threads N                   worker threads, one per open connection (default 32)\n"
    "  --app TENANT:CLIENT_ID:SECRET another app (repeatable): its tenant is served\n"
    "                                too; tokens are bound to tenant and client id\n"
    "  --managed-identity            also serve the managed identity endpoints over\n"
    "                                plain HTTP on another port: IMDS\n"
    "                                (/metadata/identity/oauth2/token, header\n"
    "                                Metadata: true) and App Service (/msi/token,\n"
    "                                header X-IDENTITY-HEADER); prints their URL and\n"
    "                                the identity header on a second line\n"
    "  --managed-identity-tenant ID  tenant of managed identity tokens (default: the\n"
    "                                --tenant-id)\n"
    "  --user-assigned-client-id ID  a user-assigned identity (repeatable), besides\n"
    "                                the system-assigned one\n"
    "  --help                        show this text\n"
    "\n"
    "Control endpoints (no authentication): GET /sandbox/health,\n"
    "POST|DELETE /sandbox/faults, GET|DELETE /sandbox/requests, GET /sandbox/actions,\n"
    "POST /sandbox/expire-tokens, POST /sandbox/reset, POST /sandbox/apps,\n"
    "PUT /sandbox/federated-tokens, GET /sandbox/assertion-checks. A fault is a\n"
    "JSON object with optional keys method, path_regex, times (-1 = forever),\n"
    "status, body, retry_after, delay_ms (-1 = never answer) and kind: respond,\n"
    "drop (reset the connection, handler not run), drop_after (run the handler,\n"
    "then reset the connection), malformed, slow, oversize. Faults apply to the\n"
    "managed identity endpoints too. See tools/sandbox/sandbox.h.\n";

struct Flags {
  SandboxOptions options;
  std::string ca_out = "./sandbox-ca.pem";
  std::string port_file;
};

// UsageError prints `message` and a hint to stderr and exits 2.
[[noreturn]] void UsageError(const std::string& message) {
  std::cerr << "defender-sandbox: " << message << "\nTry --help." << std::endl;
  std::exit(2);
}

bool ParseListen(const std::string& value, SandboxOptions* options) {
  size_t colon = value.rfind(':');
  if (colon == std::string::npos) return false;
  std::string host = value.substr(0, colon);
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') {
    host = host.substr(1, host.size() - 2);
  }
  int port = 0;
  if (host.empty() || !absl::SimpleAtoi(value.substr(colon + 1), &port) || port < 0 ||
      port > 65535) {
    return false;
  }
  options->host = host;
  options->port = port;
  return true;
}

Flags ParseFlags(int argc, char** argv) {
  Flags flags;
  if (const char* secret = std::getenv("SANDBOX_CLIENT_SECRET"); secret && *secret) {
    flags.options.client_secret = secret;
  }
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    if (arg == "--help" || arg == "-h") {
      std::cout << kUsage;
      std::exit(0);
    }
    if (arg.rfind("--", 0) != 0) UsageError(absl::StrCat("unexpected argument '", arg, "'"));
    std::string name = arg;
    std::string value;
    size_t eq = arg.find('=');
    if (eq != std::string::npos) name = arg.substr(0, eq);
    if (name == "--managed-identity") {  // a switch without a value
      if (eq != std::string::npos) UsageError("--managed-identity takes no value");
      flags.options.managed_identity = true;
      continue;
    }
    static const char* const kKnown[] = {"--listen",
                                         "--ca-out",
                                         "--port-file",
                                         "--tenant-id",
                                         "--client-id",
                                         "--client-secret",
                                         "--token-lifetime-seconds",
                                         "--action-step-ms",
                                         "--rate-per-minute",
                                         "--rate-per-hour",
                                         "--threads",
                                         "--app",
                                         "--managed-identity-tenant",
                                         "--user-assigned-client-id"};
    if (std::find(std::begin(kKnown), std::end(kKnown), name) == std::end(kKnown)) {
      UsageError(absl::StrCat("unknown flag ", name));
    }
    if (eq != std::string::npos) {
      value = arg.substr(eq + 1);
    } else {
      if (i + 1 >= argc) UsageError(absl::StrCat(name, " needs a value"));
      value = argv[++i];
    }
    int64_t number = 0;
    if (name == "--listen") {
      if (!ParseListen(value, &flags.options)) {
        UsageError(absl::StrCat("--listen wants HOST:PORT, got '", value, "'"));
      }
    } else if (name == "--ca-out") {
      if (value.empty()) UsageError("--ca-out is empty");
      flags.ca_out = value;
    } else if (name == "--port-file") {
      flags.port_file = value;
    } else if (name == "--tenant-id") {
      flags.options.tenant_id = value;
    } else if (name == "--client-id") {
      flags.options.client_id = value;
    } else if (name == "--client-secret") {
      flags.options.client_secret = value;
    } else if (name == "--token-lifetime-seconds") {
      if (!absl::SimpleAtoi(value, &number) || number < 2) {
        UsageError("--token-lifetime-seconds wants an integer >= 2");
      }
      flags.options.token_lifetime = absl::Seconds(number);
    } else if (name == "--action-step-ms") {
      if (!absl::SimpleAtoi(value, &number) || number < 0) {
        UsageError("--action-step-ms wants an integer >= 0");
      }
      flags.options.action_step = absl::Milliseconds(number);
    } else if (name == "--threads") {
      if (!absl::SimpleAtoi(value, &number) || number < 1 || number > 4096) {
        UsageError("--threads wants an integer from 1 to 4096");
      }
      flags.options.threads = static_cast<int>(number);
    } else if (name == "--app") {
      // TENANT:CLIENT_ID:SECRET; the secret is everything after the second colon.
      size_t first = value.find(':');
      size_t second = first == std::string::npos ? first : value.find(':', first + 1);
      if (second == std::string::npos || first == 0 || second == first + 1 ||
          second + 1 == value.size()) {
        UsageError("--app wants TENANT:CLIENT_ID:SECRET, all three non-empty");
      }
      SandboxApp app;
      app.tenant_id = value.substr(0, first);
      app.client_id = value.substr(first + 1, second - first - 1);
      app.client_secret = value.substr(second + 1);
      flags.options.extra_apps.push_back(std::move(app));
    } else if (name == "--managed-identity-tenant") {
      if (value.empty()) UsageError("--managed-identity-tenant is empty");
      flags.options.managed_identity_tenant = value;
    } else if (name == "--user-assigned-client-id") {
      if (value.empty()) UsageError("--user-assigned-client-id is empty");
      flags.options.user_assigned_client_ids.push_back(value);
    } else if (name == "--rate-per-minute" || name == "--rate-per-hour") {
      if (!absl::SimpleAtoi(value, &number) || number < 0 || number > 1000000000) {
        UsageError(absl::StrCat(name, " wants an integer >= 0"));
      }
      (name == "--rate-per-minute" ? flags.options.rate_per_minute : flags.options.rate_per_hour) =
          static_cast<int>(number);
    } else {
      UsageError(absl::StrCat("unknown flag ", name));
    }
  }
  return flags;
}

// WriteFileAtomically writes `content` to a temporary file beside `path` and
// renames it over `path`, so readers never see a partial file.
bool WriteFileAtomically(const std::string& path, const std::string& content) {
  std::string tmp = absl::StrCat(path, ".tmp");
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    out << content;
    out.close();
    if (!out) return false;
  }
  return std::rename(tmp.c_str(), path.c_str()) == 0;
}

}  // namespace

int main(int argc, char** argv) {
  // Parse flags (exits 2 on errors).
  Flags flags = ParseFlags(argc, argv);

  // Block SIGTERM/SIGINT before any thread starts, so every server thread
  // inherits the mask and main alone receives them through sigwait.
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGTERM);
  sigaddset(&stop_signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);

  // Start the server.
  absl::StatusOr<std::unique_ptr<Sandbox>> sandbox = Sandbox::Start(flags.options);
  if (!sandbox.ok()) {
    std::cerr << "defender-sandbox: " << sandbox.status() << std::endl;
    return 1;
  }

  // Publish the CA and the port.
  if (absl::Status s = (*sandbox)->WriteCaFile(flags.ca_out); !s.ok()) {
    std::cerr << "defender-sandbox: " << s << std::endl;
    return 1;
  }
  if (!flags.port_file.empty() &&
      !WriteFileAtomically(flags.port_file, absl::StrCat((*sandbox)->port(), "\n"))) {
    std::cerr << "defender-sandbox: cannot write " << flags.port_file << std::endl;
    return 1;
  }
  std::cout << "defender-sandbox listening on " << (*sandbox)->base_url()
            << " (CA: " << flags.ca_out << ")" << std::endl;
  if (flags.options.managed_identity) {
    // The identity header is this sandbox's own throwaway value; other
    // processes need it to call the App Service endpoint.
    std::cout << "defender-sandbox managed identity on " << (*sandbox)->imds_base_url()
              << " (IDENTITY_ENDPOINT=" << (*sandbox)->identity_endpoint()
              << " IDENTITY_HEADER=" << (*sandbox)->identity_header() << ")" << std::endl;
  }

  // Serve until SIGTERM or SIGINT.
  int signal_number = 0;
  sigwait(&stop_signals, &signal_number);
  sandbox->reset();
  return 0;
}
