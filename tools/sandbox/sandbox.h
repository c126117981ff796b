// tools/sandbox/sandbox.h: an HTTPS emulator of Microsoft Defender for Endpoint's
// API and of the Entra ID (Azure AD) token endpoint, with fault injection.
//
// A Sandbox is a real TLS server on 127.0.0.1 (a fresh private CA per instance,
// see certs.h) that serves, on one port:
//
//   POST /{tenant}/oauth2/v2.0/token                   client-credentials tokens (client
//                                                      secret, certificate assertion or
//                                                      workload identity; see SandboxApp)
//   POST /api/machines/{id}/StopAndQuarantineFile      201 + MachineAction
//   GET  /api/machineactions/{id}                      the action, status by time
//   GET  /api/machineactions?$filter=...&$top=N        newest first
//   POST /api/machineactions/{id}/cancel               200 + cancelled action
//   GET  /api/machines?$filter=computerDnsName eq '..' GET /api/machines/{id}
//   GET  /api/files/{sha1|sha256}                      GET /api/files/{sha1}/machines
//
// plus unauthenticated control endpoints under /sandbox/ (faults, recorded
// requests, created actions, token expiry, reset, health) for tests in other
// processes:
//
//   GET    /sandbox/health            "ok"
//   POST   /sandbox/faults            add a FaultRule given as JSON: method,
//          path_regex, times, status, body, retry_after, delay_ms (-1 = never
//          answer), kind ("respond", "drop", "drop_after", "malformed", "slow",
//          "oversize")
//   DELETE /sandbox/faults            ClearFaults
//   GET    /sandbox/requests          Requests as a JSON array (with token_tenant
//          and token_client_id)
//   DELETE /sandbox/requests          ClearRequests
//   GET    /sandbox/actions           {"ids": ActionIds()}
//   GET    /sandbox/stats             {"requests", "token_requests",
//          "managed_identity_requests", "actions"}: counts, cheap to poll
//   POST   /sandbox/expire-tokens     ExpireAllTokens
//   POST   /sandbox/reset             Reset
//   POST   /sandbox/apps              AddApp, given as JSON: tenant_id, client_id,
//          client_secret, certificate_pem, federated_tokens (an array of strings)
//   PUT    /sandbox/federated-tokens  SetFederatedTokens, given as JSON:
//          {"client_id": "...", "tokens": ["...", ...]}
//   GET    /sandbox/assertion-checks  AssertionChecks as a JSON array
//
// With SandboxOptions::managed_identity it also runs a second, plain-HTTP
// server that emulates the managed identity endpoints (see imds_base_url):
//
//   GET /metadata/identity/oauth2/token?api-version=..&resource=..[&client_id=..]
//       Azure IMDS; needs the header `Metadata: true`
//   GET /msi/token?resource=..&api-version=2019-08-01[&client_id=..]
//       App Service / Container Apps; needs `X-IDENTITY-HEADER: identity_header()`
//
// They answer like Azure: 200 {"access_token", "expires_on", "resource",
// "token_type": "Bearer", "client_id"} (IMDS also "expires_in",
// "ext_expires_in", "not_before"), every number a string; errors are
// {"error", "error_description"}: 400 invalid_request without the Metadata
// header ("Required metadata header not specified"), without api-version or
// resource, or for an unknown identity ("Identity not found"; also for any
// object_id/msi_res_id/mi_res_id/principal_id); 400 invalid_resource for a
// resource other than the Defender API's (the token scopes without
// "/.default", a trailing "/" allowed); 401 unauthorized without the right
// X-IDENTITY-HEADER. IMDS takes api-version 2018-02-01 or later, App Service
// only 2019-08-01.
//
// Like the real service it rate-limits the API per client and API (see
// SandboxOptions::rate_per_minute).
// Its base_url() is both the Defender API base and the login authority host.
//
// Example (in-process, in a test):
//
//   absl::StatusOr<std::unique_ptr<Sandbox>> sandbox = Sandbox::Start({});
//   ASSERT_TRUE(sandbox.ok()) << sandbox.status();
//   FaultRule throttle;
//   throttle.path_regex = "/StopAndQuarantineFile$";
//   throttle.status = 429;
//   throttle.retry_after = "1";
//   (*sandbox)->AddFault(throttle);
//   ... point the client at (*sandbox)->base_url() trusting (*sandbox)->ca_pem() ...
//   EXPECT_EQ((*sandbox)->Requests().size(), 3);
//
// Many tenants: every app (SandboxApp) belongs to one tenant, and the token
// endpoint serves the tenants of all apps. Each token is bound to the tenant
// and client id it was issued for; RecordedRequest::token_tenant says whose
// token an API call carried.
//
// Threading: every public method may be called from any thread while the server
// runs. The destructor stops the server; it may wait up to keep_alive_timeout
// for clients that hold idle keep-alive connections, so destroy clients first.

#ifndef DEFENDER_TOOLS_SANDBOX_SANDBOX_H_
#define DEFENDER_TOOLS_SANDBOX_SANDBOX_H_

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"

namespace defender::sandbox {

// A file every sandbox knows (GET /api/files/{hash} answers 200): the three
// bytes "abc". Its hashes are the well-known test vectors.
inline constexpr char kKnownFileSha1[] = "a9993e364706816aba3e25717850c26c9cd0d89d";
inline constexpr char kKnownFileSha256[] =
    "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";

// A SHA-1 that StopAndQuarantineFile always answers with 404 ResourceNotFound
// ("Sha1 ... was not found in machine ...").
inline constexpr char kAbsentSha1[] = "0000000000000000000000000000000000000000";

// The first default machine (Windows 11, "desktop-1.contoso.com").
inline constexpr char kDefaultMachineId[] = "1e5bc9d7e413ddd7902c2932e418702b84d0cc07";

// Machine is one onboarded device. StopAndQuarantineFile accepts only devices
// whose os_platform starts with "Windows".
struct Machine {
  std::string id;                 // 40 lowercase hex digits
  std::string computer_dns_name;  // need not be unique
  std::string os_platform = "Windows11";
};

// DefaultMachines returns the devices a sandbox has when SandboxOptions.machines
// is empty: kDefaultMachineId (desktop-1.contoso.com), four more Windows/Linux/
// macOS devices with distinct names, and two Windows devices that share the name
// "dup.contoso.com" (for ambiguity tests).
std::vector<Machine> DefaultMachines();

// The client id of the system-assigned managed identity (the identity the
// managed identity endpoints use when the request names no client_id).
inline constexpr char kSystemAssignedClientId[] = "5a5a5a5a-0000-4000-8000-5a5a5a5a5a5a";

// SandboxApp is one app registration (service principal) in one tenant, with
// the credentials the token endpoint accepts for it. The same client id may be
// registered in several tenants (a multi-tenant app); each registration has
// its own credentials.
//
// A client_assertion (client_assertion_type jwt-bearer) is checked like this:
//  1. Equal to one of federated_tokens: accepted (workload identity).
//  2. Not a JWT whose header has x5t or x5t#S256, for an app with federated
//     tokens: 400 invalid_client AADSTS70021 (no matching federated identity
//     record; e.g. a token file that has rotated since).
//  3. Otherwise a certificate assertion, 401 invalid_client AADSTS700027 unless:
//     base64url header.payload.signature (padding optional) with JSON header
//     and payload; header typ "JWT"; alg RS256 with x5t = base64url(SHA-1(cert
//     DER)) or PS256 (RSA-PSS, MGF1-SHA-256, salt length 32) with x5t#S256 =
//     base64url(SHA-256(cert DER)) (every thumbprint present must match);
//     signed by certificate_pem's key; aud = the token URL as the client used
//     it, "https://" + Host header + path (or base_url() + path; a string or
//     an array holding it); iss = sub = client id; jti not empty. Numeric nbf
//     and exp with nbf <= now + 5 min, exp > now and exp - nbf <= 11 min, else
//     AADSTS700024 (not within its valid time range). Last, a jti this client
//     already used in an accepted assertion is a replay: AADSTS700027.
//     Each such check is listed by Sandbox::AssertionChecks.
struct SandboxApp {
  std::string tenant_id;      // required; compared case-insensitively
  std::string client_id;      // required; compared case-insensitively
  std::string client_secret;  // "" = no secret accepted
  // "" = no certificate registered. Else the PEM of the X.509 certificate whose
  // (RSA) key signs client assertions (RS256 with x5t, PS256 with x5t#S256).
  std::string certificate_pem;
  // Accepted workload-identity (federated) assertions, compared as opaque
  // strings with the whole client_assertion.
  std::vector<std::string> federated_tokens;
};

// AssertionCheck is one certificate client assertion the token endpoint
// verified (accepted or not); fields the assertion lacked (or that could not
// be decoded) are "".
struct AssertionCheck {
  std::string alg;       // the header's alg ("RS256", "PS256", ...)
  std::string x5t_kind;  // "x5t" or "x5t#S256": the thumbprint the alg needs, if present
  std::string aud;       // a string aud as is; an array aud as its JSON text
  std::string iss;
  std::string sub;
  std::string jti;
  bool signature_ok = false;  // the signature verified with the registered certificate
  bool accepted = false;      // the assertion passed every check
  int aadsts = 0;             // the AADSTS error code when rejected, else 0
};

// SandboxOptions configures Sandbox::Start.
struct SandboxOptions {
  std::string host = "127.0.0.1";  // address to listen on; also the certificate's SAN
  int port = 0;                    // 0 = pick a free port
  // The default app (all three required): it accepts this secret, and no
  // certificate or federated assertion unless extra_apps or AddApp registers
  // the same (tenant, client id) again with them.
  std::string tenant_id = "11111111-1111-1111-1111-111111111111";
  std::string client_id = "22222222-2222-2222-2222-222222222222";
  std::string client_secret = "sandbox-secret";
  // More apps, registered after the default one as if by AddApp (a later app
  // with the same tenant and client id replaces the earlier one). Start fails
  // with INVALID_ARGUMENT for an app without tenant or client id or with a
  // certificate_pem that does not parse.
  std::vector<SandboxApp> extra_apps;
  // Managed identity emulators (a second server, plain HTTP, on `host` and a
  // free port; see Sandbox::imds_base_url). Their tokens work for the API and
  // are bound to managed_identity_tenant ("" = tenant_id) and the identity's
  // client id: kSystemAssignedClientId, or one of user_assigned_client_ids when
  // the request names it.
  bool managed_identity = false;
  std::string managed_identity_tenant;
  std::vector<std::string> user_assigned_client_ids;
  // Tokens are valid this long; the token answer says expires_in = seconds - 1.
  absl::Duration token_lifetime = absl::Hours(1);
  // An action is Pending for one step, InProgress for the next, then Succeeded.
  absl::Duration action_step = absl::Seconds(2);
  std::vector<Machine> machines;  // empty = DefaultMachines()
  int threads = 32;               // server worker threads (one per open connection)
  // How long an idle keep-alive connection is kept open (it holds a worker
  // thread meanwhile, and delays the destructor). Whole seconds, at least 1.
  absl::Duration keep_alive_timeout = absl::Seconds(2);
  // Defender's own rate limits, on by default like the real service: each
  // (token's client id, API) pair may make this many calls within any sliding
  // minute / hour; 0 turns that window off. The APIs counted separately are
  // StopAndQuarantineFile, GET /api/machineactions/{id}, GET /api/machineactions
  // (list), POST .../cancel, /api/files/..., and /api/machines[/{id}]. Token
  // requests, /sandbox/* control calls, requests without a valid token and
  // requests a fault answers without the real handler are not counted. Over
  // budget the answer is 429 TooManyRequests with `Retry-After: N` (whole
  // seconds until a slot frees, rounded up, at least 1); 429s do not count.
  // Tests that make more than 100 calls of one API a minute must raise these.
  int rate_per_minute = 100;
  int rate_per_hour = 1500;
};

// RecordedRequest is one request as the sandbox received it.
struct RecordedRequest {
  std::string method;
  std::string path;                                 // URL-decoded, without the query
  std::string target;                               // path + query exactly as received
  std::multimap<std::string, std::string> headers;  // names as the client spelled them
  std::string body;
  // Whose bearer token the request carried: the tenant and client id it was
  // issued for, or "" when there is no Bearer token or this sandbox did not
  // issue it (since Start or the last Reset). A token that has expired (also
  // by ExpireAllTokens) still names its owner.
  std::string token_tenant;
  std::string token_client_id;

  // Header returns the first value of header `name` (compared case-
  // insensitively), or "" when there is none.
  std::string Header(absl::string_view name) const;
};

// FaultRule changes how the sandbox answers matching requests. Rules are tried
// in the order they were added, for every request except /sandbox/* control
// calls (token requests and managed identity requests included); the first rule that matches and
// has hits left applies, and uses up one hit.
struct FaultRule {
  std::string method;       // "" = any; else compared exactly ("POST")
  std::string path_regex;   // std::regex_search on the decoded path; "" = any.
                            // An invalid regex matches nothing (reported on stderr).
  int times = 1;            // matching requests it applies to; -1 = forever
  int status = 0;           // kRespond: answer this status, skipping the real handler
                            // (0 = run the real handler). kMalformedBody/kSlowBody:
                            // if not 0, replaces the real handler's status.
  std::string body;         // body for `status`; "" = a Defender-style error JSON
                            // {"error":{"code":..,"message":..,"target":<guid>}}
                            // (on the managed identity server an Azure-style
                            // {"error":..,"error_description":..})
  std::string retry_after;  // if not empty, a Retry-After header with this value
  // kRespond, kDropConnection, kMalformedBody, kOversizeBody: wait this long
  // before answering. kDropAfterHandling: wait this long after the real handler
  // ran, then drop. kSlowBody: the pause between body chunks.
  // absl::InfiniteDuration() = never answer (until the sandbox stops). Stopping
  // the sandbox (Stop or the destructor) cuts every delay short: delayed
  // requests are then answered 503 ServiceUnavailable (kDropAfterHandling and
  // kDropConnection requests are dropped anyway).
  absl::Duration delay = absl::ZeroDuration();
  enum class Kind {
    kRespond,         // status/body/retry_after/delay as above
    kDropConnection,  // read the request, then abort the TCP connection (RST)
                      // without answering; the real handler does NOT run. Note:
                      // libcurl silently resends a request once on a fresh
                      // connection when a *reused* connection dies before any
                      // answer byte: use times >= 2 (or -1) to make such a
                      // client see the failure.
    kMalformedBody,   // run the real handler, replace its body with invalid JSON
    kSlowBody,        // run the real handler, send its body 8 bytes at a time
    kOversizeBody,    // answer 200 with a 16 MiB JSON object (real handler skipped)
    // Run the real handler (so e.g. the machine action IS created, and rate
    // limits count the call), wait `delay`, then abort the connection like
    // kDropConnection: "the connection dropped after the request went out".
    // The same libcurl note applies: on a reused connection libcurl resends
    // the request once by itself, and the resent request reaches the handler
    // (and any later rule) again.
    kDropAfterHandling,
  } kind = Kind::kRespond;
};

// Sandbox is a running server. Create with Start; destroy to stop.
class Sandbox {
 public:
  // Start generates certificates, binds host:port and returns once the server
  // accepts connections. INVALID_ARGUMENT for bad options, UNAVAILABLE when the
  // address cannot be bound, INTERNAL for TLS setup failures.
  static absl::StatusOr<std::unique_ptr<Sandbox>> Start(SandboxOptions options);

  Sandbox(const Sandbox&) = delete;
  Sandbox& operator=(const Sandbox&) = delete;
  // Stops the server: in-flight fault delays are cut short, then it waits for
  // the worker threads.
  ~Sandbox();

  // port returns the bound TCP port.
  int port() const;
  // base_url returns "https://HOST:PORT" (IPv6 hosts in brackets), both the
  // Defender API base and the login authority host.
  std::string base_url() const;
  // ca_pem returns the PEM of the CA that signed the server certificate.
  const std::string& ca_pem() const;
  // WriteCaFile writes ca_pem() to `path` (replacing it).
  absl::Status WriteCaFile(const std::string& path) const;

  // AddFault appends a rule; ClearFaults removes all of them.
  void AddFault(FaultRule rule);
  void ClearFaults();

  // Requests returns every request received so far except /sandbox/* control
  // calls (those to the managed identity server included), in arrival order,
  // recorded before faults apply (so dropped ones are included).
  // ClearRequests forgets them.
  std::vector<RecordedRequest> Requests() const;
  void ClearRequests();

  // CountRequests returns how many recorded requests (see Requests) have
  // method `method` ("" = any) and a decoded path in which `path_regex` is
  // found (std::regex_search; "" = any), or -1 if `path_regex` is invalid.
  int CountRequests(const std::string& method, const std::string& path_regex) const;

  // ActionIds returns the ids of every machine action created since Start or
  // Reset, in creation order; ActionCount returns their number. Actions that
  // a dropped connection never reported (kDropAfterHandling) are included.
  std::vector<std::string> ActionIds() const;
  int ActionCount() const;

  // ExpireAllTokens makes every token issued so far invalid: API calls bearing
  // one answer 401 Unauthorized. Tokens issued afterwards work.
  void ExpireAllTokens();
  // TokenRequests returns how many requests reached the token endpoint (also
  // failed ones and ones a fault answered) since Start or Reset.
  int TokenRequests() const;

  // AddApp registers `app` (see SandboxApp), replacing an app with the same
  // tenant and client id; its tenant becomes known to the token endpoint. An
  // app without tenant or client id, or with a certificate_pem that does not
  // parse, is not registered (reported on stderr).
  void AddApp(SandboxApp app);
  // SetFederatedTokens replaces the accepted federated assertions of every app
  // with client id `client_id` (in any tenant), as when the token file
  // rotates: the old ones are refused from now on.
  void SetFederatedTokens(const std::string& client_id, std::vector<std::string> tokens);
  // AssertionChecks returns every certificate client assertion the token
  // endpoint verified since Start or Reset, in arrival order.
  std::vector<AssertionCheck> AssertionChecks() const;

  // imds_base_url returns "http://HOST:PORT" of the managed identity server
  // (IMDS at imds_base_url() + "/metadata/identity/oauth2/token"), or "" when
  // SandboxOptions::managed_identity is off.
  std::string imds_base_url() const;
  // identity_endpoint returns the App Service IDENTITY_ENDPOINT,
  // imds_base_url() + "/msi/token" ("" when off).
  std::string identity_endpoint() const;
  // identity_header returns the App Service IDENTITY_HEADER: a random secret
  // chosen at Start ("" when managed identity is off).
  std::string identity_header() const;
  // ManagedIdentityRequests returns how many requests reached the managed
  // identity server (also failed ones and ones a fault answered) since Start
  // or Reset.
  int ManagedIdentityRequests() const;

  // Reset clears faults, recorded requests, machine actions, issued tokens,
  // the token and managed identity request counts, assertion checks and seen
  // assertion ids (jti), and the rate limit windows. Apps stay registered.
  void Reset();

  // Stop stops the servers, as the destructor does: in-flight fault delays are
  // cut short, then it waits for the worker threads (and for idle keep-alive
  // connections, up to keep_alive_timeout). Idempotent. Afterwards nothing is
  // served, but the other methods still work: Requests, ActionIds and the
  // like report what happened before the stop.
  void Stop();

 private:
  class Impl;
  explicit Sandbox(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace defender::sandbox

#endif  // DEFENDER_TOOLS_SANDBOX_SANDBOX_H_
