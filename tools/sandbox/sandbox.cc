// tools/sandbox/sandbox.cc: the Defender/Entra emulator (see sandbox.h).
//
// One httplib::SSLServer serves everything but managed identity. Every
// method's requests go to a single catch-all handler (so the body has been
// read when it runs) which dispatches: /sandbox/* control calls first, then
// recording, fault rules, and the emulated endpoints in `routes_`. With
// managed identity on, a plain httplib::Server serves the IMDS and App Service
// token endpoints the same way (recording, fault rules, then the endpoint).

#include "tools/sandbox/sandbox.h"

#include <dirent.h>
#include <httplib.h>
#include <netinet/in.h>
#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/rsa.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <deque>
#include <fstream>
#include <functional>
#include <iostream>
#include <memory>
#include <regex>
#include <set>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "absl/strings/strip.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "nlohmann/json.hpp"
#include "tools/sandbox/certs.h"

namespace defender::sandbox {
namespace {

using json = nlohmann::json;

constexpr char kJwtBearer[] = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
constexpr char kApiContentType[] = "application/json; odata.metadata=minimal; charset=utf-8";
constexpr char kJsonContentType[] = "application/json; charset=utf-8";
constexpr size_t kOversizeBodyBytes = 16 * 1024 * 1024;
constexpr size_t kSlowChunkBytes = 8;
constexpr int kMaxTop = 10000;

// The scopes the token endpoint grants (all name the Defender API audience).
constexpr const char* kAcceptedScopes[] = {
    "https://api.securitycenter.microsoft.com/.default",
    "https://securitycenter.onmicrosoft.com/windowsatpservice/.default",
    "https://api.security.microsoft.com/.default",
};

// ---------------------------------------------------------------------------
// Small helpers.

std::string RandomHex(size_t bytes) {
  std::string raw(bytes, '\0');
  if (RAND_bytes(reinterpret_cast<unsigned char*>(raw.data()), static_cast<int>(bytes)) != 1) {
    // The sandbox is a test tool; a broken RNG is an impossible state.
    std::cerr << "defender-sandbox: RAND_bytes failed" << std::endl;
    std::abort();
  }
  return absl::BytesToHexString(raw);
}

// NewGuid returns a random (version 4) GUID in lowercase 8-4-4-4-12 form.
std::string NewGuid() {
  std::string h = RandomHex(16);
  h[12] = '4';
  h[16] = "89ab"[std::strtol(h.substr(16, 1).c_str(), nullptr, 16) & 3];
  return absl::StrCat(h.substr(0, 8), "-", h.substr(8, 4), "-", h.substr(12, 4), "-",
                      h.substr(16, 4), "-", h.substr(20, 12));
}

// FormatTime7 formats `t` like Defender: "2018-12-04T12:15:04.3825985Z".
std::string FormatTime7(absl::Time t) {
  return absl::FormatTime("%Y-%m-%dT%H:%M:%E7SZ", t, absl::UTCTimeZone());
}

// ParseIsoTime accepts "2024-01-02T03:04:05Z", with optional fractional
// seconds, or with a numeric offset, or a bare date.
bool ParseIsoTime(const std::string& text, absl::Time* out) {
  std::string err;
  for (const char* format : {"%Y-%m-%dT%H:%M:%E*SZ", "%Y-%m-%dT%H:%M:%E*S%Ez",
                             "%Y-%m-%dT%H:%M:%E*S", "%Y-%m-%dT%H:%MZ", "%Y-%m-%d"}) {
    if (absl::ParseTime(format, text, absl::UTCTimeZone(), out, &err)) return true;
  }
  return false;
}

bool IsHex(absl::string_view s, size_t length) {
  return s.size() == length &&
         std::all_of(s.begin(), s.end(), [](char c) { return absl::ascii_isxdigit(c); });
}

std::string Dump(const json& j) { return j.dump(-1, ' ', false, json::error_handler_t::replace); }

// RawDigest returns the binary digest of `data`.
std::string RawDigest(const EVP_MD* md, absl::string_view data) {
  unsigned char out[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  if (EVP_Digest(data.data(), data.size(), out, &len, md, nullptr) != 1) std::abort();
  return std::string(reinterpret_cast<char*>(out), len);
}

// Digest returns the lowercase hex digest of `data`.
std::string Digest(const EVP_MD* md, absl::string_view data) {
  return absl::BytesToHexString(RawDigest(md, data));
}

// ---------------------------------------------------------------------------
// Certificates and JWT client assertions.

// A registered app with its certificate loaded.
struct AppEntry {
  SandboxApp app;
  std::shared_ptr<X509> cert;  // null = no certificate registered
  std::string x5t;             // base64url(SHA-1(cert DER)), unpadded
  std::string x5t_s256;        // base64url(SHA-256(cert DER)), unpadded
};

// MakeAppEntry loads the app's certificate (if any) and its thumbprints.
absl::StatusOr<AppEntry> MakeAppEntry(SandboxApp app) {
  if (app.tenant_id.empty() || app.client_id.empty()) {
    return absl::InvalidArgumentError("an app needs a tenant_id and a client_id");
  }
  AppEntry e;
  if (!app.certificate_pem.empty()) {
    std::unique_ptr<BIO, decltype(&BIO_free)> bio(
        BIO_new_mem_buf(app.certificate_pem.data(), static_cast<int>(app.certificate_pem.size())),
        &BIO_free);
    X509* cert = bio ? PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr) : nullptr;
    ERR_clear_error();
    if (cert == nullptr) {
      return absl::InvalidArgumentError(absl::StrCat("the certificate_pem of app ", app.client_id,
                                                     " in tenant ", app.tenant_id,
                                                     " is not a PEM X.509 certificate"));
    }
    e.cert.reset(cert, &X509_free);
    unsigned char* der = nullptr;
    const int der_len = i2d_X509(cert, &der);
    if (der_len <= 0) return absl::InternalError("cannot encode the certificate as DER");
    const std::string der_bytes(reinterpret_cast<char*>(der), static_cast<size_t>(der_len));
    OPENSSL_free(der);
    e.x5t = absl::WebSafeBase64Escape(RawDigest(EVP_sha1(), der_bytes));
    e.x5t_s256 = absl::WebSafeBase64Escape(RawDigest(EVP_sha256(), der_bytes));
  }
  e.app = std::move(app);
  return e;
}

// ParsedJwt is a compact JWS split into its parts.
struct ParsedJwt {
  json header;
  json payload;
  std::string signing_input;  // "header.payload" as received
  std::string signature;      // decoded bytes
};

// ParseJwt splits `text` into header.payload.signature and decodes them
// (base64url, padding optional); header and payload must be JSON objects.
bool ParseJwt(const std::string& text, ParsedJwt* out) {
  const size_t first = text.find('.');
  if (first == std::string::npos) return false;
  const size_t second = text.find('.', first + 1);
  if (second == std::string::npos || text.find('.', second + 1) != std::string::npos) {
    return false;
  }
  std::string header, payload;
  if (!absl::WebSafeBase64Unescape(absl::string_view(text).substr(0, first), &header) ||
      !absl::WebSafeBase64Unescape(absl::string_view(text).substr(first + 1, second - first - 1),
                                   &payload) ||
      !absl::WebSafeBase64Unescape(absl::string_view(text).substr(second + 1), &out->signature)) {
    return false;
  }
  out->header = json::parse(header, nullptr, /*allow_exceptions=*/false);
  out->payload = json::parse(payload, nullptr, /*allow_exceptions=*/false);
  out->signing_input = text.substr(0, second);
  return out->header.is_object() && out->payload.is_object();
}

// VerifyRsaSha256 checks an RS256 (PKCS#1 v1.5) or PS256 (PSS, MGF1-SHA-256,
// salt length = 32) signature with the certificate's RSA public key.
bool VerifyRsaSha256(X509* cert, bool pss, absl::string_view signing_input,
                     absl::string_view signature) {
  EVP_PKEY* key = X509_get0_pubkey(cert);
  bool ok = false;
  if (key != nullptr && EVP_PKEY_get_base_id(key) == EVP_PKEY_RSA) {
    std::unique_ptr<EVP_MD_CTX, decltype(&EVP_MD_CTX_free)> ctx(EVP_MD_CTX_new(), &EVP_MD_CTX_free);
    EVP_PKEY_CTX* pctx = nullptr;
    ok = ctx && EVP_DigestVerifyInit(ctx.get(), &pctx, EVP_sha256(), nullptr, key) == 1;
    if (ok && pss) {
      ok = EVP_PKEY_CTX_set_rsa_padding(pctx, RSA_PKCS1_PSS_PADDING) == 1 &&
           EVP_PKEY_CTX_set_rsa_pss_saltlen(pctx, RSA_PSS_SALTLEN_DIGEST) == 1 &&
           EVP_PKEY_CTX_set_rsa_mgf1_md(pctx, EVP_sha256()) == 1;
    } else if (ok) {
      ok = EVP_PKEY_CTX_set_rsa_padding(pctx, RSA_PKCS1_PADDING) == 1;
    }
    ok = ok && EVP_DigestVerify(ctx.get(), reinterpret_cast<const unsigned char*>(signature.data()),
                                signature.size(),
                                reinterpret_cast<const unsigned char*>(signing_input.data()),
                                signing_input.size()) == 1;
  }
  // Leave no error on this thread's queue: httplib's TLS calls read it.
  ERR_clear_error();
  return ok;
}

// StringClaim returns j[key] if it is a string, else "".
std::string StringClaim(const json& j, const char* key) {
  auto it = j.find(key);
  return it != j.end() && it->is_string() ? it->get<std::string>() : "";
}

// DefenderErrorJson is the API's error body.
json DefenderErrorJson(absl::string_view code, absl::string_view message) {
  return json{
      {"error",
       {{"code", std::string(code)}, {"message", std::string(message)}, {"target", NewGuid()}}}};
}

void SetDefenderError(httplib::Response& res, int status, absl::string_view code,
                      absl::string_view message) {
  res.status = status;
  res.set_content(Dump(DefenderErrorJson(code, message)), kApiContentType);
}

// DefaultErrorCode names the Defender error code a bare status stands for.
std::string DefaultErrorCode(int status) {
  switch (status) {
    case 400:
      return "BadRequest";
    case 401:
      return "Unauthorized";
    case 403:
      return "Forbidden";
    case 404:
      return "NotFound";
    case 408:
      return "RequestTimeout";
    case 409:
      return "Conflict";
    case 429:
      return "TooManyRequests";
    case 500:
      return "InternalServerError";
    case 502:
      return "BadGateway";
    case 503:
      return "ServiceUnavailable";
    case 504:
      return "GatewayTimeout";
    default:
      return absl::StrCat("Http", status);
  }
}

void SetJson(httplib::Response& res, int status, const json& body,
             const char* content_type = kApiContentType) {
  res.status = status;
  res.set_content(Dump(body), content_type);
}

// SetAzureError answers like the managed identity endpoints do.
void SetAzureError(httplib::Response& res, int status, absl::string_view error,
                   absl::string_view description) {
  SetJson(res, status,
          json{{"error", std::string(error)}, {"error_description", std::string(description)}},
          kJsonContentType);
}

// ODataStringLiteral quotes `s` for error messages the way OData echoes values.
std::string Quote(absl::string_view s) { return absl::StrCat("'", s, "'"); }

// ---------------------------------------------------------------------------
// $filter parsing: `field op value [and field op value]...`, value either a
// quoted string ('it''s') or a bare token (a date-time).

struct FilterClause {
  std::string field;
  std::string op;  // lowercase
  std::string value;
};

absl::StatusOr<std::vector<FilterClause>> ParseFilter(const std::string& text) {
  std::vector<FilterClause> clauses;
  size_t pos = 0;
  auto skip_spaces = [&] {
    while (pos < text.size() && absl::ascii_isspace(static_cast<unsigned char>(text[pos]))) ++pos;
  };
  auto word = [&] {
    size_t start = pos;
    while (pos < text.size() &&
           (absl::ascii_isalnum(static_cast<unsigned char>(text[pos])) || text[pos] == '_')) {
      ++pos;
    }
    return text.substr(start, pos - start);
  };
  auto syntax_error = [&](absl::string_view what) {
    return absl::InvalidArgumentError(
        absl::StrCat("The query specified in the URI is not valid. Syntax error at position ", pos,
                     " in '", text, "': ", what, "."));
  };
  skip_spaces();
  if (pos == text.size()) return syntax_error("empty $filter");
  while (true) {
    FilterClause clause;
    skip_spaces();
    clause.field = word();
    if (clause.field.empty()) return syntax_error("expected a property name");
    skip_spaces();
    clause.op = absl::AsciiStrToLower(word());
    if (clause.op.empty()) return syntax_error("expected an operator");
    skip_spaces();
    if (pos < text.size() && text[pos] == '\'') {
      ++pos;
      bool closed = false;
      while (pos < text.size()) {
        if (text[pos] == '\'') {
          if (pos + 1 < text.size() && text[pos + 1] == '\'') {
            clause.value += '\'';
            pos += 2;
            continue;
          }
          ++pos;
          closed = true;
          break;
        }
        clause.value += text[pos++];
      }
      if (!closed) return syntax_error("unterminated string literal");
    } else {
      size_t start = pos;
      while (pos < text.size() && !absl::ascii_isspace(static_cast<unsigned char>(text[pos]))) {
        ++pos;
      }
      clause.value = text.substr(start, pos - start);
      if (clause.value.empty()) return syntax_error("expected a value");
    }
    clauses.push_back(std::move(clause));
    skip_spaces();
    if (pos == text.size()) break;
    if (absl::AsciiStrToLower(word()) != "and") return syntax_error("expected 'and'");
    if (pos == text.size() || !absl::ascii_isspace(static_cast<unsigned char>(text[pos]))) {
      return syntax_error("expected a clause after 'and'");
    }
  }
  return clauses;
}

// QueryOptions is the parsed $filter/$top/$skip of a collection request.
struct QueryOptions {
  std::vector<FilterClause> filter;
  int top = kMaxTop;
  int skip = 0;
};

absl::StatusOr<QueryOptions> ParseQueryOptions(const httplib::Request& req) {
  QueryOptions q;
  for (const auto& [key, value] : req.params) {
    if (key == "$filter") {
      absl::StatusOr<std::vector<FilterClause>> f = ParseFilter(value);
      if (!f.ok()) return f.status();
      q.filter = *std::move(f);
    } else if (key == "$top" || key == "$skip") {
      int n = 0;
      if (!absl::SimpleAtoi(value, &n) || n < 0 || (key == "$top" && n > kMaxTop)) {
        return absl::InvalidArgumentError(
            absl::StrCat("The query specified in the URI is not valid. Invalid value for ", key,
                         ": ", Quote(value), "."));
      }
      (key == "$top" ? q.top : q.skip) = n;
    } else if (absl::StartsWith(key, "$")) {
      return absl::InvalidArgumentError(
          absl::StrCat("Query option ", Quote(key), " is not supported by the sandbox."));
    }
  }
  return q;
}

bool CompareTimes(absl::Time a, const std::string& op, absl::Time b, bool* ok) {
  *ok = true;
  if (op == "eq") return a == b;
  if (op == "ne") return a != b;
  if (op == "gt") return a > b;
  if (op == "ge") return a >= b;
  if (op == "lt") return a < b;
  if (op == "le") return a <= b;
  *ok = false;
  return false;
}

// ---------------------------------------------------------------------------
// The emulated data.

struct FileEntry {
  std::string sha1, sha256, md5, name;
  int64_t size;
};

std::vector<FileEntry> BuiltInFiles() {
  std::vector<FileEntry> files;
  for (const auto& [content, name] : std::vector<std::pair<std::string, std::string>>{
           {"abc", "sample-abc.exe"},
           {"hello world", "hello.exe"},
           {"defender-sandbox sample file", "sandbox-sample.dll"}}) {
    files.push_back(FileEntry{Digest(EVP_sha1(), content), Digest(EVP_sha256(), content),
                              Digest(EVP_md5(), content), name,
                              static_cast<int64_t>(content.size())});
  }
  return files;
}

struct Action {
  std::string id;
  std::string requestor;
  std::string comment;
  std::string machine_id;
  std::string computer_dns_name;
  std::string sha1;
  absl::Time created;
  bool cancelled = false;
  std::string cancellation_requestor;
  std::string cancellation_comment;
  absl::Time cancelled_at;
};

bool IsFinalStatus(absl::string_view status) {
  return status == "Succeeded" || status == "Failed" || status == "TimeOut" ||
         status == "Cancelled";
}

// A fault rule with its compiled regex.
struct CompiledFault {
  FaultRule rule;
  std::shared_ptr<const std::regex> regex;  // null = any path
  bool valid = true;
};

const std::string& OversizeBody() {
  static const std::string* body = [] {
    std::string head = R"({"@odata.context":"sandbox#Oversize","padding":")";
    std::string tail = R"("})";
    auto* s = new std::string(head);
    s->append(kOversizeBodyBytes - head.size() - tail.size(), 'a');
    s->append(tail);
    return s;
  }();
  return *body;
}

}  // namespace

// ---------------------------------------------------------------------------

std::string RecordedRequest::Header(absl::string_view name) const {
  for (const auto& [key, value] : headers) {
    if (absl::EqualsIgnoreCase(key, name)) return value;
  }
  return "";
}

std::vector<Machine> DefaultMachines() {
  return {
      {kDefaultMachineId, "desktop-1.contoso.com", "Windows11"},
      {"7b0f3a5e2c9d4e1f8a6b5c4d3e2f1a0b9c8d7e6f", "desktop-2.contoso.com", "Windows10"},
      {"c3d2e1f0a9b8c7d6e5f4a3b2c1d0e9f8a7b6c5d4", "server-1.contoso.com", "WindowsServer2019"},
      {"4f8e2d6c0b4a8e2d6c0b4a8e2d6c0b4a8e2d6c0b", "linux-1.contoso.com", "Linux"},
      {"9a1b2c3d4e5f60718293a4b5c6d7e8f901234567", "mac-1.contoso.com", "macOS"},
      {"d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1", "dup.contoso.com", "Windows10"},
      {"d2d2d2d2d2d2d2d2d2d2d2d2d2d2d2d2d2d2d2d2", "dup.contoso.com", "Windows11"},
  };
}

class Sandbox::Impl {
 public:
  explicit Impl(SandboxOptions options)
      : options_(std::move(options)),
        machines_(options_.machines.empty() ? DefaultMachines() : options_.machines),
        files_(BuiltInFiles()),
        started_(absl::Now()) {}

  ~Impl() { Stop(); }

  absl::Status Init();
  void Stop();

  int port() const { return port_; }
  const std::string& base_url() const { return base_url_; }
  const std::string& ca_pem() const { return certs_.ca_pem; }
  const std::string& imds_base_url() const { return imds_base_url_; }
  const std::string& identity_header() const { return identity_header_; }

  void AddFault(FaultRule rule) ABSL_LOCKS_EXCLUDED(mu_);
  void ClearFaults() ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    faults_.clear();
  }
  std::vector<RecordedRequest> Requests() const ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    return requests_;
  }
  int CountRequests(const std::string& method, const std::string& path_regex) const
      ABSL_LOCKS_EXCLUDED(mu_);
  std::vector<std::string> ActionIds() const ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    std::vector<std::string> ids;
    ids.reserve(actions_.size());
    for (const Action& a : actions_) ids.push_back(a.id);
    return ids;
  }
  int ActionCount() const ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    return static_cast<int>(actions_.size());
  }
  void ClearRequests() ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    requests_.clear();
  }
  void ExpireAllTokens() ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    // Keep the tokens (so recorded requests still name their owners), expired.
    for (auto& [token, info] : tokens_) info.expires = absl::InfinitePast();
  }
  int TokenRequests() const ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    return token_requests_;
  }
  int ManagedIdentityRequests() const ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    return mi_requests_;
  }
  std::vector<AssertionCheck> AssertionChecks() const ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    return assertion_checks_;
  }
  // AddApp registers an app; INVALID_ARGUMENT (and nothing registered) for an
  // app without ids, or with a certificate that does not parse.
  absl::Status AddApp(SandboxApp app) ABSL_LOCKS_EXCLUDED(mu_);
  void SetFederatedTokens(const std::string& client_id, std::vector<std::string> tokens)
      ABSL_LOCKS_EXCLUDED(mu_);
  void Reset() ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    faults_.clear();
    requests_.clear();
    actions_.clear();
    action_by_id_.clear();
    newest_by_target_.clear();
    tokens_.clear();
    token_requests_ = 0;
    mi_requests_ = 0;
    assertion_checks_.clear();
    seen_jtis_.clear();
    rate_windows_.clear();
  }

 private:
  struct TokenInfo {
    std::string tenant;
    std::string client_id;
    absl::Time expires;
  };
  // Which server a request came to.
  enum class Endpoint { kMain, kManagedIdentity };
  // A route handler gets the regex captures and, for /api routes, the client
  // id the bearer token was issued to.
  using RouteHandler = std::function<void(const httplib::Request&, httplib::Response&,
                                          const std::smatch&, const std::string& client)>;
  struct Route {
    std::string method;
    std::regex pattern;
    bool needs_token;
    std::string api;  // the rate limit family; "" = not rate-limited
    RouteHandler handler;
  };

  // ConfigureServer applies the common settings and routes every request of
  // `server` to Handle(.., endpoint).
  void ConfigureServer(httplib::Server& server, Endpoint endpoint);
  // Listen binds `server` to host:port (0 = any free port), sets *bound_port
  // and runs its accept loop on *thread until it accepts connections.
  absl::Status Listen(httplib::Server& server, int port, int* bound_port, std::thread* thread);
  void RegisterRoutes();
  void Handle(const httplib::Request& req, httplib::Response& res, Endpoint endpoint);
  void HandleControl(const httplib::Request& req, httplib::Response& res);
  void Dispatch(const httplib::Request& req, httplib::Response& res, Endpoint endpoint);
  void Record(const httplib::Request& req, Endpoint endpoint) ABSL_LOCKS_EXCLUDED(mu_);
  bool TakeFault(const httplib::Request& req, FaultRule* rule) ABSL_LOCKS_EXCLUDED(mu_);
  void ApplyFault(const FaultRule& rule, const httplib::Request& req, httplib::Response& res,
                  Endpoint endpoint);
  // SleepUnlessStopping waits `d`; returns false (early) when the sandbox stops.
  bool SleepUnlessStopping(absl::Duration d) ABSL_LOCKS_EXCLUDED(mu_);
  void DropConnection(const httplib::Request& req, Endpoint endpoint) const;
  // AdmitCall applies the rate limits to a call of `api` by `client`: it
  // counts the call and returns true, or answers 429 and returns false.
  bool AdmitCall(const std::string& client, const std::string& api, httplib::Response& res)
      ABSL_LOCKS_EXCLUDED(mu_);

  // Endpoints.
  void Token(const httplib::Request& req, httplib::Response& res, const std::string& tenant)
      ABSL_LOCKS_EXCLUDED(mu_);
  // CheckClientAssertion verifies a client assertion for `app` (federated or
  // certificate); on failure it answers the Entra error and returns false.
  bool CheckClientAssertion(const httplib::Request& req, httplib::Response& res,
                            const AppEntry& app, const std::string& assertion)
      ABSL_LOCKS_EXCLUDED(mu_);
  // IssueToken remembers a new token for (tenant, client_id) and returns it.
  std::string IssueToken(const std::string& tenant, const std::string& client_id)
      ABSL_LOCKS_EXCLUDED(mu_);
  void ManagedIdentityToken(const httplib::Request& req, httplib::Response& res);
  void SetEntraError(httplib::Response& res, int status, absl::string_view error, int code,
                     absl::string_view description);
  bool Authenticate(const httplib::Request& req, httplib::Response& res, std::string* client)
      ABSL_LOCKS_EXCLUDED(mu_);
  void StopAndQuarantineFile(const httplib::Request& req, httplib::Response& res,
                             const std::string& machine_id, const std::string& client)
      ABSL_LOCKS_EXCLUDED(mu_);
  void GetAction(httplib::Response& res, const std::string& id) ABSL_LOCKS_EXCLUDED(mu_);
  void ListActions(const httplib::Request& req, httplib::Response& res) ABSL_LOCKS_EXCLUDED(mu_);
  void CancelAction(const httplib::Request& req, httplib::Response& res, const std::string& id,
                    const std::string& client) ABSL_LOCKS_EXCLUDED(mu_);
  void ListMachines(const httplib::Request& req, httplib::Response& res);
  void GetMachine(httplib::Response& res, const std::string& id);
  void GetFile(httplib::Response& res, const std::string& hash, bool machines);

  const Machine* FindMachine(const std::string& id) const;
  json MachineJson(const Machine& m) const;
  json ActionJson(const Action& a, absl::Time now, bool with_context) const;
  // StatusAt returns the action's status at `now` and when it last changed.
  std::pair<std::string, absl::Time> StatusAt(const Action& a, absl::Time now) const;

  const SandboxOptions options_;
  const std::vector<Machine> machines_;
  const std::vector<FileEntry> files_;
  const absl::Time started_;
  CertBundle certs_;
  std::unique_ptr<httplib::SSLServer> server_;
  std::thread listener_;
  int port_ = 0;
  std::string base_url_;
  std::vector<Route> routes_;                   // immutable once the server runs
  std::string mi_tenant_;                       // managed identity tokens' tenant
  std::unique_ptr<httplib::Server> mi_server_;  // null = managed identity off
  std::thread mi_listener_;
  int mi_port_ = 0;
  std::string imds_base_url_;
  std::string identity_header_;

  mutable absl::Mutex mu_;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::vector<CompiledFault> faults_ ABSL_GUARDED_BY(mu_);
  std::vector<RecordedRequest> requests_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, TokenInfo> tokens_ ABSL_GUARDED_BY(mu_);
  int token_requests_ ABSL_GUARDED_BY(mu_) = 0;
  int mi_requests_ ABSL_GUARDED_BY(mu_) = 0;
  std::vector<AppEntry> apps_ ABSL_GUARDED_BY(mu_);  // registration order
  std::vector<AssertionCheck> assertion_checks_ ABSL_GUARDED_BY(mu_);
  // (lowercase client id, jti) of every accepted certificate assertion.
  std::set<std::pair<std::string, std::string>> seen_jtis_ ABSL_GUARDED_BY(mu_);
  std::vector<Action> actions_ ABSL_GUARDED_BY(mu_);  // creation order
  // Lowercase action id -> index in actions_, and "machine id/lowercase sha1"
  // -> index of the newest action of that pair: lookups stay O(1) however many
  // actions a long run (a benchmark) creates.
  absl::flat_hash_map<std::string, size_t> action_by_id_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<std::string, size_t> newest_by_target_ ABSL_GUARDED_BY(mu_);
  // FindActionLocked returns the action with this id (any case), or nullptr.
  Action* FindActionLocked(const std::string& id) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    auto it = action_by_id_.find(absl::AsciiStrToLower(id));
    return it == action_by_id_.end() ? nullptr : &actions_[it->second];
  }
  // Admitted calls per (client id, api), oldest first, within the longest
  // enabled rate window.
  std::map<std::pair<std::string, std::string>, std::deque<absl::Time>> rate_windows_
      ABSL_GUARDED_BY(mu_);
};

// ---------------------------------------------------------------------------
// Lifecycle.

absl::Status Sandbox::Impl::Init() {
  const SandboxOptions& o = options_;
  if (o.port < 0 || o.port > 65535) return absl::InvalidArgumentError("port out of range");
  if (o.threads < 1) return absl::InvalidArgumentError("threads must be at least 1");
  if (o.host.empty()) return absl::InvalidArgumentError("host is empty");
  if (o.tenant_id.empty() || o.client_id.empty() || o.client_secret.empty()) {
    return absl::InvalidArgumentError("tenant_id, client_id and client_secret must be set");
  }
  if (o.token_lifetime < absl::Seconds(2)) {
    return absl::InvalidArgumentError("token_lifetime must be at least 2s");
  }
  if (o.action_step < absl::ZeroDuration()) {
    return absl::InvalidArgumentError("action_step is negative");
  }
  if (o.keep_alive_timeout < absl::Seconds(1)) {
    return absl::InvalidArgumentError("keep_alive_timeout must be at least 1s");
  }
  if (o.rate_per_minute < 0 || o.rate_per_hour < 0) {
    return absl::InvalidArgumentError("rate_per_minute and rate_per_hour must be >= 0");
  }
  for (const Machine& m : machines_) {
    if (!IsHex(m.id, 40)) {
      return absl::InvalidArgumentError(absl::StrCat("machine id ", Quote(m.id), " is not 40 hex"));
    }
  }
  SandboxApp default_app;
  default_app.tenant_id = o.tenant_id;
  default_app.client_id = o.client_id;
  default_app.client_secret = o.client_secret;
  if (absl::Status s = AddApp(std::move(default_app)); !s.ok()) return s;
  for (const SandboxApp& app : o.extra_apps) {
    if (absl::Status s = AddApp(app); !s.ok()) return s;
  }
  for (const std::string& id : o.user_assigned_client_ids) {
    if (id.empty()) return absl::InvalidArgumentError("a user-assigned client id is empty");
  }
  mi_tenant_ = o.managed_identity_tenant.empty() ? o.tenant_id : o.managed_identity_tenant;

  // Certificates: the listening host plus the usual loopback names.
  std::vector<std::string> names = {o.host};
  for (const char* n : {"127.0.0.1", "localhost"}) {
    if (o.host != n) names.push_back(n);
  }
  absl::StatusOr<CertBundle> certs = GenerateCertificates(names);
  if (!certs.ok()) return certs.status();
  certs_ = *std::move(certs);

  {
    std::unique_ptr<BIO, decltype(&BIO_free)> cert_bio(
        BIO_new_mem_buf(certs_.cert_pem.data(), static_cast<int>(certs_.cert_pem.size())),
        &BIO_free);
    std::unique_ptr<BIO, decltype(&BIO_free)> key_bio(
        BIO_new_mem_buf(certs_.key_pem.data(), static_cast<int>(certs_.key_pem.size())), &BIO_free);
    std::unique_ptr<X509, decltype(&X509_free)> cert(
        cert_bio ? PEM_read_bio_X509(cert_bio.get(), nullptr, nullptr, nullptr) : nullptr,
        &X509_free);
    std::unique_ptr<EVP_PKEY, decltype(&EVP_PKEY_free)> key(
        key_bio ? PEM_read_bio_PrivateKey(key_bio.get(), nullptr, nullptr, nullptr) : nullptr,
        &EVP_PKEY_free);
    if (!cert || !key) return absl::InternalError("cannot load the generated certificate");
    // SSLServer takes its own references (SSL_CTX_use_certificate/PrivateKey).
    server_ = std::make_unique<httplib::SSLServer>(cert.get(), key.get());
  }
  if (!server_->is_valid()) return absl::InternalError("httplib::SSLServer setup failed");

  RegisterRoutes();
  ConfigureServer(*server_, Endpoint::kMain);
  if (absl::Status s = Listen(*server_, o.port, &port_, &listener_); !s.ok()) return s;
  base_url_ = absl::StrContains(o.host, ':') ? absl::StrCat("https://[", o.host, "]:", port_)
                                             : absl::StrCat("https://", o.host, ":", port_);

  if (o.managed_identity) {
    mi_server_ = std::make_unique<httplib::Server>();
    identity_header_ = RandomHex(16);
    ConfigureServer(*mi_server_, Endpoint::kManagedIdentity);
    if (absl::Status s = Listen(*mi_server_, 0, &mi_port_, &mi_listener_); !s.ok()) return s;
    imds_base_url_ = absl::StrContains(o.host, ':')
                         ? absl::StrCat("http://[", o.host, "]:", mi_port_)
                         : absl::StrCat("http://", o.host, ":", mi_port_);
  }
  return absl::OkStatus();
}

void Sandbox::Impl::ConfigureServer(httplib::Server& server, Endpoint endpoint) {
  const SandboxOptions& o = options_;
  const size_t threads = static_cast<size_t>(o.threads);
  server.new_task_queue = [threads] { return new httplib::ThreadPool(threads); };
  server.set_keep_alive_max_count(10000);
  server.set_keep_alive_timeout(static_cast<time_t>(absl::ToInt64Seconds(o.keep_alive_timeout)));
  server.set_read_timeout(10, 0);
  server.set_write_timeout(10, 0);
  server.set_payload_max_length(64 * 1024 * 1024);
  auto handler = [this, endpoint](const httplib::Request& req, httplib::Response& res) {
    Handle(req, res, endpoint);
  };
  server.Get(".*", handler);
  server.Post(".*", handler);
  server.Put(".*", handler);
  server.Patch(".*", handler);
  server.Delete(".*", handler);
  server.Options(".*", handler);
  server.set_exception_handler(
      [endpoint](const httplib::Request&, httplib::Response& res, std::exception_ptr) {
        if (endpoint == Endpoint::kManagedIdentity) {
          SetAzureError(res, 500, "internal_error", "The sandbox failed (exception).");
        } else {
          SetDefenderError(res, 500, "InternalServerError", "The sandbox failed (exception).");
        }
      });
  server.set_tcp_nodelay(true);  // no Nagle delay on small answers (40 ms per call otherwise)
}

absl::Status Sandbox::Impl::Listen(httplib::Server& server, int port, int* bound_port,
                                   std::thread* thread) {
  const std::string& host = options_.host;
  // httplib's default socket options set SO_REUSEPORT, which lets a second
  // server bind a busy port: use SO_REUSEADDR only. httplib also listens with a
  // backlog of 5; remember the listening socket so its backlog can be raised
  // (tests open many connections at once).
  int listen_fd = -1;
  server.set_socket_options([&listen_fd](socket_t sock) {
    int yes = 1;
    ::setsockopt(sock, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof yes);
    listen_fd = sock;
  });
  if (port == 0) {
    *bound_port = server.bind_to_any_port(host);
    if (*bound_port <= 0) {
      return absl::UnavailableError(absl::StrCat("cannot bind ", host, ":0"));
    }
  } else {
    if (!server.bind_to_port(host, port)) {
      return absl::UnavailableError(
          absl::StrCat("cannot bind ", host, ":", port, ": ", std::strerror(errno)));
    }
    *bound_port = port;
  }
  server.set_socket_options([](socket_t) {});
  if (listen_fd >= 0) ::listen(listen_fd, SOMAXCONN);

  *thread = std::thread([&server] { server.listen_after_bind(); });
  // stop() only works once the accept loop runs: wait for it.
  absl::Time deadline = absl::Now() + absl::Seconds(10);
  while (!server.is_running()) {
    if (absl::Now() > deadline) return absl::InternalError("the server did not start");
    absl::SleepFor(absl::Milliseconds(1));
  }
  return absl::OkStatus();
}

void Sandbox::Impl::Stop() {
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
  }
  if (server_) server_->stop();
  if (mi_server_) mi_server_->stop();
  if (listener_.joinable()) listener_.join();
  if (mi_listener_.joinable()) mi_listener_.join();
}

absl::Status Sandbox::Impl::AddApp(SandboxApp app) {
  absl::StatusOr<AppEntry> entry = MakeAppEntry(std::move(app));
  if (!entry.ok()) return entry.status();
  absl::MutexLock lock(&mu_);
  for (AppEntry& e : apps_) {
    if (absl::EqualsIgnoreCase(e.app.tenant_id, entry->app.tenant_id) &&
        absl::EqualsIgnoreCase(e.app.client_id, entry->app.client_id)) {
      e = *std::move(entry);
      return absl::OkStatus();
    }
  }
  apps_.push_back(*std::move(entry));
  return absl::OkStatus();
}

void Sandbox::Impl::SetFederatedTokens(const std::string& client_id,
                                       std::vector<std::string> tokens) {
  absl::MutexLock lock(&mu_);
  for (AppEntry& e : apps_) {
    if (absl::EqualsIgnoreCase(e.app.client_id, client_id)) e.app.federated_tokens = tokens;
  }
}

bool Sandbox::Impl::SleepUnlessStopping(absl::Duration d) {
  absl::MutexLock lock(&mu_);
  if (d <= absl::ZeroDuration()) return !stopping_;
  return !mu_.AwaitWithTimeout(absl::Condition(&stopping_), d);
}

// ---------------------------------------------------------------------------
// Dispatch, recording and faults.

void Sandbox::Impl::Handle(const httplib::Request& req, httplib::Response& res, Endpoint endpoint) {
  if (endpoint == Endpoint::kMain && absl::StartsWith(req.path, "/sandbox/")) {
    HandleControl(req, res);
    return;
  }
  Record(req, endpoint);
  FaultRule rule;
  if (TakeFault(req, &rule)) {
    ApplyFault(rule, req, res, endpoint);
  } else {
    Dispatch(req, res, endpoint);
  }
}

void Sandbox::Impl::Record(const httplib::Request& req, Endpoint endpoint) {
  static const std::regex* const kTokenPath =
      new std::regex("^/[^/]+/oauth2/v2\\.0/token$", std::regex::icase);
  RecordedRequest r;
  r.method = req.method;
  r.path = req.path;
  r.target = req.target;
  r.body = req.body;
  for (const auto& [key, value] : req.headers) {
    // httplib adds the peer's and its own address as pseudo headers.
    if (key == "REMOTE_ADDR" || key == "REMOTE_PORT" || key == "LOCAL_ADDR" ||
        key == "LOCAL_PORT") {
      continue;
    }
    r.headers.emplace(key, value);
  }
  bool is_token = endpoint == Endpoint::kMain && req.method == "POST" &&
                  std::regex_match(req.path, *kTokenPath);
  const std::string authorization = req.get_header_value("Authorization");
  std::string bearer;
  if (absl::StartsWithIgnoreCase(authorization, "Bearer ")) {
    bearer = std::string(absl::StripAsciiWhitespace(absl::string_view(authorization).substr(7)));
  }
  absl::MutexLock lock(&mu_);
  if (!bearer.empty()) {
    auto it = tokens_.find(bearer);
    if (it != tokens_.end()) {
      r.token_tenant = it->second.tenant;
      r.token_client_id = it->second.client_id;
    }
  }
  requests_.push_back(std::move(r));
  if (is_token) ++token_requests_;
  if (endpoint == Endpoint::kManagedIdentity) ++mi_requests_;
}

void Sandbox::Impl::AddFault(FaultRule rule) {
  CompiledFault f;
  if (!rule.path_regex.empty()) {
    try {
      f.regex = std::make_shared<const std::regex>(rule.path_regex);
    } catch (const std::regex_error& e) {
      std::cerr << "defender-sandbox: fault path_regex " << Quote(rule.path_regex)
                << " is invalid (" << e.what() << "); the rule matches nothing" << std::endl;
      f.valid = false;
    }
  }
  f.rule = std::move(rule);
  absl::MutexLock lock(&mu_);
  faults_.push_back(std::move(f));
}

bool Sandbox::Impl::TakeFault(const httplib::Request& req, FaultRule* rule) {
  absl::MutexLock lock(&mu_);
  for (auto it = faults_.begin(); it != faults_.end(); ++it) {
    const FaultRule& r = it->rule;
    if (!it->valid || r.times == 0) continue;
    if (!r.method.empty() && r.method != req.method) continue;
    if (it->regex && !std::regex_search(req.path, *it->regex)) continue;
    *rule = r;
    if (r.times > 0 && --it->rule.times == 0) faults_.erase(it);
    return true;
  }
  return false;
}

namespace {

// PortOf returns the port of an AF_INET/AF_INET6 address, or -1.
int PortOf(const sockaddr_storage& addr) {
  if (addr.ss_family == AF_INET) return ntohs(reinterpret_cast<const sockaddr_in&>(addr).sin_port);
  if (addr.ss_family == AF_INET6) {
    return ntohs(reinterpret_cast<const sockaddr_in6&>(addr).sin6_port);
  }
  return -1;
}

// FindConnectionSocket returns this process's TCP socket whose local port is
// `local_port` and whose peer port is `peer_port`, or -1. (A plain
// httplib::Request does not carry its socket; the TLS one carries its SSL.)
int FindConnectionSocket(int local_port, int peer_port) {
  DIR* dir = opendir("/proc/self/fd");
  if (dir == nullptr) return -1;
  int found = -1;
  while (dirent* entry = readdir(dir)) {
    int fd = -1;
    if (!absl::SimpleAtoi(entry->d_name, &fd) || fd == dirfd(dir)) continue;
    sockaddr_storage local{}, peer{};
    socklen_t local_len = sizeof local, peer_len = sizeof peer;
    if (::getsockname(fd, reinterpret_cast<sockaddr*>(&local), &local_len) != 0 ||
        PortOf(local) != local_port ||
        ::getpeername(fd, reinterpret_cast<sockaddr*>(&peer), &peer_len) != 0 ||
        PortOf(peer) != peer_port) {
      continue;
    }
    found = fd;
    break;
  }
  closedir(dir);
  return found;
}

}  // namespace

void Sandbox::Impl::DropConnection(const httplib::Request& req, Endpoint endpoint) const {
  // Abort the TCP connection under httplib's feet: no TLS close_notify, no
  // HTTP answer. httplib's later write fails (SIGPIPE is ignored by
  // httplib::Server's constructor) and it closes the socket itself; with
  // SO_LINGER 0 that close sends a RST.
  int fd = -1;
  if (endpoint == Endpoint::kMain) {
    fd = req.ssl ? SSL_get_fd(req.ssl) : -1;
  } else {
    fd = FindConnectionSocket(mi_port_, req.remote_port);
  }
  if (fd < 0) return;
  linger l{};
  l.l_onoff = 1;
  l.l_linger = 0;
  ::setsockopt(fd, SOL_SOCKET, SO_LINGER, &l, sizeof l);
  ::shutdown(fd, SHUT_RDWR);
}

int Sandbox::Impl::CountRequests(const std::string& method, const std::string& path_regex) const {
  std::regex regex;
  if (!path_regex.empty()) {
    try {
      regex = std::regex(path_regex);
    } catch (const std::regex_error&) {
      return -1;
    }
  }
  absl::MutexLock lock(&mu_);
  return static_cast<int>(std::count_if(requests_.begin(), requests_.end(), [&](const auto& r) {
    return (method.empty() || r.method == method) &&
           (path_regex.empty() || std::regex_search(r.path, regex));
  }));
}

bool Sandbox::Impl::AdmitCall(const std::string& client, const std::string& api,
                              httplib::Response& res) {
  struct Window {
    int limit;
    absl::Duration length;
  };
  const Window windows[] = {{options_.rate_per_minute, absl::Minutes(1)},
                            {options_.rate_per_hour, absl::Hours(1)}};
  absl::Duration longest = absl::ZeroDuration();
  for (const Window& w : windows) {
    if (w.limit > 0) longest = std::max(longest, w.length);
  }
  if (longest == absl::ZeroDuration()) return true;

  absl::Duration wait = absl::ZeroDuration();
  {
    absl::MutexLock lock(&mu_);
    const absl::Time now = absl::Now();
    std::deque<absl::Time>& calls = rate_windows_[{client, api}];
    while (!calls.empty() && calls.front() <= now - longest) calls.pop_front();
    for (const Window& w : windows) {
      if (w.limit <= 0) continue;
      // The calls inside this window are a suffix of `calls`.
      auto first = std::upper_bound(calls.begin(), calls.end(), now - w.length);
      const int64_t in_window = calls.end() - first;
      if (in_window < w.limit) continue;
      // A slot frees when the call `in_window - limit` places into the window
      // leaves it.
      wait = std::max(wait, *(first + (in_window - w.limit)) + w.length - now);
    }
    if (wait == absl::ZeroDuration()) {
      calls.push_back(now);
      return true;
    }
  }
  const int64_t seconds =
      std::max<int64_t>(1, absl::ToInt64Seconds(absl::Ceil(wait, absl::Seconds(1))));
  SetDefenderError(
      res, 429, "TooManyRequests",
      absl::StrCat("Rate limit is exceeded for ", api, ". Try again in ", seconds, " seconds."));
  res.set_header("Retry-After", std::to_string(seconds));
  return false;
}

void Sandbox::Impl::ApplyFault(const FaultRule& rule, const httplib::Request& req,
                               httplib::Response& res, Endpoint endpoint) {
  using Kind = FaultRule::Kind;
  const bool managed = endpoint == Endpoint::kManagedIdentity;
  auto set_error = [&res, managed](int status, absl::string_view message) {
    if (managed) {
      SetAzureError(res, status, DefaultErrorCode(status), message);
    } else {
      SetDefenderError(res, status, DefaultErrorCode(status), message);
    }
  };
  if (rule.kind != Kind::kSlowBody && rule.kind != Kind::kDropAfterHandling &&
      !SleepUnlessStopping(rule.delay) && rule.kind != Kind::kDropConnection) {
    set_error(503, "The sandbox is stopping.");
    return;
  }
  switch (rule.kind) {
    case Kind::kRespond:
      if (rule.status != 0) {
        if (rule.body.empty()) {
          set_error(rule.status, absl::StrCat("Sandbox fault injection: HTTP ", rule.status));
        } else {
          res.status = rule.status;
          res.set_content(rule.body, managed ? kJsonContentType : kApiContentType);
        }
      } else {
        Dispatch(req, res, endpoint);
      }
      break;
    case Kind::kDropConnection:
      DropConnection(req, endpoint);
      res.status = 500;
      return;
    case Kind::kDropAfterHandling:
      Dispatch(req, res, endpoint);
      SleepUnlessStopping(rule.delay);  // dropped also when the sandbox stops
      DropConnection(req, endpoint);
      res.status = 500;
      return;
    case Kind::kMalformedBody:
      Dispatch(req, res, endpoint);
      if (rule.status != 0) res.status = rule.status;
      res.set_content(R"({"@odata.context": "sandbox#Malformed", "id": "unterminated, )",
                      kApiContentType);
      break;
    case Kind::kSlowBody: {
      Dispatch(req, res, endpoint);
      if (rule.status != 0) res.status = rule.status;
      auto body = std::make_shared<const std::string>(std::move(res.body));
      res.body.clear();
      std::string content_type = res.get_header_value("Content-Type");
      res.headers.erase("Content-Type");
      const absl::Duration delay = rule.delay;
      res.set_content_provider(
          body->size(), content_type,
          [this, body, delay](size_t offset, size_t length, httplib::DataSink& sink) {
            if (offset > 0 && !SleepUnlessStopping(delay)) return false;
            size_t n = std::min(length, kSlowChunkBytes);
            return sink.write(body->data() + offset, n);
          });
      break;
    }
    case Kind::kOversizeBody: {
      const std::string& big = OversizeBody();
      res.status = 200;
      res.set_content_provider(big.size(), kApiContentType,
                               [&big](size_t offset, size_t length, httplib::DataSink& sink) {
                                 return sink.write(big.data() + offset,
                                                   std::min<size_t>(length, 1 << 16));
                               });
      break;
    }
  }
  if (!rule.retry_after.empty()) res.set_header("Retry-After", rule.retry_after);
}

void Sandbox::Impl::Dispatch(const httplib::Request& req, httplib::Response& res,
                             Endpoint endpoint) {
  if (endpoint == Endpoint::kManagedIdentity) return ManagedIdentityToken(req, res);
  bool path_known = false;
  for (const Route& route : routes_) {
    std::smatch match;
    if (!std::regex_match(req.path, match, route.pattern)) continue;
    path_known = true;
    if (route.method != req.method) continue;
    std::string client;
    if (route.needs_token && !Authenticate(req, res, &client)) return;
    if (!route.api.empty() && !AdmitCall(client, route.api, res)) return;
    route.handler(req, res, match, client);
    return;
  }
  if (path_known) {
    SetDefenderError(
        res, 405, "MethodNotAllowed",
        absl::StrCat("The requested resource does not support http method '", req.method, "'."));
  } else {
    SetDefenderError(res, 404, "NotFound",
                     absl::StrCat("No HTTP resource was found that matches the request URI '",
                                  base_url_, req.path, "'."));
  }
}

void Sandbox::Impl::RegisterRoutes() {
  // `api` names the rate limit family (SandboxOptions::rate_per_minute).
  auto add = [this](const char* method, const char* pattern, const char* api,
                    RouteHandler handler) {
    const bool needs_token = *api != '\0';
    routes_.push_back(Route{method, std::regex(pattern, std::regex::icase), needs_token, api,
                            std::move(handler)});
  };
  add("POST", "^/([^/]+)/oauth2/v2\\.0/token$", "",
      [this](const httplib::Request& req, httplib::Response& res, const std::smatch& m,
             const std::string&) { Token(req, res, m[1].str()); });
  add("POST", "^/api/machines/([^/]+)/StopAndQuarantineFile$", "StopAndQuarantineFile",
      [this](const httplib::Request& req, httplib::Response& res, const std::smatch& m,
             const std::string& client) { StopAndQuarantineFile(req, res, m[1].str(), client); });
  add("GET", "^/api/machineactions/?$", "ListMachineActions",
      [this](const httplib::Request& req, httplib::Response& res, const std::smatch&,
             const std::string&) { ListActions(req, res); });
  add("GET", "^/api/machineactions/([^/]+)$", "GetMachineAction",
      [this](const httplib::Request&, httplib::Response& res, const std::smatch& m,
             const std::string&) { GetAction(res, m[1].str()); });
  add("POST", "^/api/machineactions/([^/]+)/cancel$", "CancelMachineAction",
      [this](const httplib::Request& req, httplib::Response& res, const std::smatch& m,
             const std::string& client) { CancelAction(req, res, m[1].str(), client); });
  add("GET", "^/api/machines/?$", "Machines",
      [this](const httplib::Request& req, httplib::Response& res, const std::smatch&,
             const std::string&) { ListMachines(req, res); });
  add("GET", "^/api/machines/([^/]+)$", "Machines",
      [this](const httplib::Request&, httplib::Response& res, const std::smatch& m,
             const std::string&) { GetMachine(res, m[1].str()); });
  add("GET", "^/api/files/([^/]+)$", "Files",
      [this](const httplib::Request&, httplib::Response& res, const std::smatch& m,
             const std::string&) { GetFile(res, m[1].str(), /*machines=*/false); });
  add("GET", "^/api/files/([^/]+)/machines$", "Files",
      [this](const httplib::Request&, httplib::Response& res, const std::smatch& m,
             const std::string&) { GetFile(res, m[1].str(), /*machines=*/true); });
}

// ---------------------------------------------------------------------------
// Control endpoints (/sandbox/*): no auth, not recorded, no faults.

void Sandbox::Impl::HandleControl(const httplib::Request& req, httplib::Response& res) {
  auto ok = [&res] { SetJson(res, 200, json{{"ok", true}}, kJsonContentType); };
  auto bad = [&res](absl::string_view message) {
    SetJson(res, 400, json{{"error", std::string(message)}}, kJsonContentType);
  };
  const std::string& m = req.method;
  const std::string& p = req.path;
  if (p == "/sandbox/health" && m == "GET") {
    res.status = 200;
    res.set_content("ok", "text/plain");
  } else if (p == "/sandbox/faults" && m == "POST") {
    json j = json::parse(req.body, nullptr, /*allow_exceptions=*/false);
    if (!j.is_object()) return bad("the body must be a JSON object");
    FaultRule rule;
    static const std::map<std::string, FaultRule::Kind> kKinds = {
        {"respond", FaultRule::Kind::kRespond},
        {"drop", FaultRule::Kind::kDropConnection},
        {"drop_after", FaultRule::Kind::kDropAfterHandling},
        {"malformed", FaultRule::Kind::kMalformedBody},
        {"slow", FaultRule::Kind::kSlowBody},
        {"oversize", FaultRule::Kind::kOversizeBody}};
    for (const auto& [key, value] : j.items()) {
      if (key == "method" && value.is_string()) {
        rule.method = value.get<std::string>();
      } else if (key == "path_regex" && value.is_string()) {
        rule.path_regex = value.get<std::string>();
        try {
          std::regex check(rule.path_regex);
        } catch (const std::regex_error& e) {
          return bad(absl::StrCat("path_regex is invalid: ", e.what()));
        }
      } else if (key == "times" && value.is_number_integer()) {
        rule.times = value.get<int>();
      } else if (key == "status" && value.is_number_integer()) {
        rule.status = value.get<int>();
      } else if (key == "body" && value.is_string()) {
        rule.body = value.get<std::string>();
      } else if (key == "retry_after" && (value.is_string() || value.is_number_integer())) {
        rule.retry_after =
            value.is_string() ? value.get<std::string>() : std::to_string(value.get<int64_t>());
      } else if (key == "delay_ms" && value.is_number_integer() && value.get<int64_t>() >= -1) {
        const int64_t ms = value.get<int64_t>();
        rule.delay = ms == -1 ? absl::InfiniteDuration() : absl::Milliseconds(ms);
      } else if (key == "kind" && value.is_string() && kKinds.count(value.get<std::string>())) {
        rule.kind = kKinds.at(value.get<std::string>());
      } else {
        return bad(absl::StrCat("unknown key or bad value for ", Quote(key)));
      }
    }
    if (rule.status != 0 && (rule.status < 100 || rule.status > 599)) {
      return bad("status must be 0 or 100..599");
    }
    AddFault(std::move(rule));
    ok();
  } else if (p == "/sandbox/faults" && m == "DELETE") {
    ClearFaults();
    ok();
  } else if (p == "/sandbox/requests" && m == "GET") {
    json all = json::array();
    for (const RecordedRequest& r : Requests()) {
      json headers = json::object();
      for (const auto& [key, value] : r.headers) {
        if (headers.contains(key)) {
          headers[key] = absl::StrCat(headers[key].get<std::string>(), ", ", value);
        } else {
          headers[key] = value;
        }
      }
      all.push_back({{"method", r.method},
                     {"path", r.path},
                     {"target", r.target},
                     {"headers", std::move(headers)},
                     {"body", r.body},
                     {"token_tenant", r.token_tenant},
                     {"token_client_id", r.token_client_id}});
    }
    SetJson(res, 200, all, kJsonContentType);
  } else if (p == "/sandbox/requests" && m == "DELETE") {
    ClearRequests();
    ok();
  } else if (p == "/sandbox/stats" && m == "GET") {
    absl::MutexLock lock(&mu_);
    SetJson(res, 200,
            json{{"requests", requests_.size()},
                 {"token_requests", token_requests_},
                 {"managed_identity_requests", mi_requests_},
                 {"actions", actions_.size()}},
            kJsonContentType);
  } else if (p == "/sandbox/actions" && m == "GET") {
    SetJson(res, 200, json{{"ids", ActionIds()}}, kJsonContentType);
  } else if (p == "/sandbox/expire-tokens" && m == "POST") {
    ExpireAllTokens();
    ok();
  } else if (p == "/sandbox/reset" && m == "POST") {
    Reset();
    ok();
  } else if (p == "/sandbox/apps" && m == "POST") {
    json j = json::parse(req.body, nullptr, /*allow_exceptions=*/false);
    if (!j.is_object()) return bad("the body must be a JSON object");
    SandboxApp app;
    for (const auto& [key, value] : j.items()) {
      if (value.is_string() && (key == "tenant_id" || key == "client_id" ||
                                key == "client_secret" || key == "certificate_pem")) {
        (key == "tenant_id"       ? app.tenant_id
         : key == "client_id"     ? app.client_id
         : key == "client_secret" ? app.client_secret
                                  : app.certificate_pem) = value.get<std::string>();
      } else if (key == "federated_tokens" && value.is_array() &&
                 std::all_of(value.begin(), value.end(),
                             [](const json& t) { return t.is_string(); })) {
        app.federated_tokens = value.get<std::vector<std::string>>();
      } else {
        return bad(absl::StrCat("unknown key or bad value for ", Quote(key)));
      }
    }
    if (absl::Status s = AddApp(std::move(app)); !s.ok()) return bad(s.message());
    ok();
  } else if (p == "/sandbox/federated-tokens" && m == "PUT") {
    json j = json::parse(req.body, nullptr, /*allow_exceptions=*/false);
    if (!j.is_object() || !j.contains("client_id") || !j["client_id"].is_string() ||
        !j.contains("tokens") || !j["tokens"].is_array() ||
        !std::all_of(j["tokens"].begin(), j["tokens"].end(),
                     [](const json& t) { return t.is_string(); }) ||
        j.size() != 2) {
      return bad(R"(the body must be {"client_id": "...", "tokens": ["...", ...]})");
    }
    SetFederatedTokens(j["client_id"].get<std::string>(),
                       j["tokens"].get<std::vector<std::string>>());
    ok();
  } else if (p == "/sandbox/assertion-checks" && m == "GET") {
    json all = json::array();
    for (const AssertionCheck& c : AssertionChecks()) {
      all.push_back({{"alg", c.alg},
                     {"x5t_kind", c.x5t_kind},
                     {"aud", c.aud},
                     {"iss", c.iss},
                     {"sub", c.sub},
                     {"jti", c.jti},
                     {"signature_ok", c.signature_ok},
                     {"accepted", c.accepted},
                     {"aadsts", c.aadsts}});
    }
    SetJson(res, 200, all, kJsonContentType);
  } else {
    SetJson(res, 404, json{{"error", absl::StrCat("no control endpoint ", m, " ", p)}},
            kJsonContentType);
  }
}

// ---------------------------------------------------------------------------
// Entra ID token endpoint.

void Sandbox::Impl::SetEntraError(httplib::Response& res, int status, absl::string_view error,
                                  int code, absl::string_view description) {
  absl::Time now = absl::Now();
  std::string trace_id = NewGuid();
  std::string correlation_id = NewGuid();
  std::string timestamp = absl::FormatTime("%Y-%m-%d %H:%M:%SZ", now, absl::UTCTimeZone());
  json body = {
      {"error", std::string(error)},
      {"error_description",
       absl::StrCat("AADSTS", code, ": ", description, " Trace ID: ", trace_id,
                    " Correlation ID: ", correlation_id, " Timestamp: ", timestamp)},
      {"error_codes", json::array({code})},
      {"timestamp", timestamp},
      {"trace_id", trace_id},
      {"correlation_id", correlation_id},
      {"error_uri", absl::StrCat(base_url_, "/error?code=", code)},
  };
  SetJson(res, status, body, kJsonContentType);
}

void Sandbox::Impl::Token(const httplib::Request& req, httplib::Response& res,
                          const std::string& tenant) {
  httplib::Params form;
  // Entra reads only form bodies; anything else looks like a body without
  // parameters.
  if (absl::StartsWithIgnoreCase(req.get_header_value("Content-Type"),
                                 "application/x-www-form-urlencoded")) {
    httplib::detail::parse_query_text(req.body, form);
  }
  auto param = [&form](const char* key) -> const std::string* {
    auto it = form.find(key);
    return it == form.end() ? nullptr : &it->second;
  };
  auto missing = [&](const char* key) {
    SetEntraError(
        res, 400, "invalid_request", 900144,
        absl::StrCat("The request body must contain the following parameter: '", key, "'."));
  };
  // Find the app (a copy: apps may change while the request runs).
  auto find_app = [this, &tenant](const std::string* client_id, bool* tenant_known, AppEntry* app) {
    absl::MutexLock lock(&mu_);
    bool found = false;
    for (const AppEntry& e : apps_) {
      if (!absl::EqualsIgnoreCase(e.app.tenant_id, tenant)) continue;
      *tenant_known = true;
      if (client_id != nullptr && absl::EqualsIgnoreCase(e.app.client_id, *client_id)) {
        *app = e;
        found = true;
      }
    }
    return found;
  };
  bool tenant_known = false;
  AppEntry app;
  find_app(nullptr, &tenant_known, &app);
  if (!tenant_known) {
    return SetEntraError(
        res, 400, "invalid_request", 90002,
        absl::StrCat("Tenant '", tenant,
                     "' not found. Check to make sure you have the correct tenant ID and are "
                     "signing into the correct cloud. Check with your subscription "
                     "administrator, this may happen if there are no active subscriptions for "
                     "the tenant."));
  }
  const std::string* grant_type = param("grant_type");
  if (grant_type == nullptr) return missing("grant_type");
  if (*grant_type != "client_credentials") {
    return SetEntraError(
        res, 400, "unsupported_grant_type", 70003,
        absl::StrCat("The app requested an unsupported grant type '", *grant_type, "'."));
  }
  const std::string* client_id = param("client_id");
  if (client_id == nullptr) return missing("client_id");
  if (!find_app(client_id, &tenant_known, &app)) {
    return SetEntraError(
        res, 400, "unauthorized_client", 700016,
        absl::StrCat("Application with identifier '", *client_id,
                     "' was not found in the directory '", tenant,
                     "'. This can happen if the application has not been installed by the "
                     "administrator of the tenant or consented to by any user in the tenant. "
                     "You may have sent your authentication request to the wrong tenant."));
  }
  const std::string* assertion_type = param("client_assertion_type");
  const std::string* assertion = param("client_assertion");
  const std::string* secret = param("client_secret");
  if (assertion_type != nullptr || assertion != nullptr) {
    if (assertion_type == nullptr || *assertion_type != kJwtBearer) {
      return SetEntraError(res, 400, "invalid_request", 50027,
                           "Invalid client_assertion_type: expected "
                           "'urn:ietf:params:oauth:client-assertion-type:jwt-bearer'.");
    }
    if (assertion == nullptr) return missing("client_assertion");
    if (!CheckClientAssertion(req, res, app, *assertion)) return;
  } else {
    if (secret == nullptr) {
      return SetEntraError(res, 401, "invalid_client", 7000216,
                           "'client_assertion', 'client_secret' or 'request' is required for "
                           "the 'client_credentials' grant type.");
    }
    if (app.app.client_secret.empty() || *secret != app.app.client_secret) {
      return SetEntraError(
          res, 401, "invalid_client", 7000215,
          absl::StrCat("Invalid client secret provided. Ensure the secret being sent in the "
                       "request is the client secret value, not the client secret ID, for a "
                       "secret added to app '",
                       app.app.client_id, "'."));
    }
  }
  const std::string* scope = param("scope");
  if (scope == nullptr) return missing("scope");
  if (!absl::EndsWith(*scope, "/.default")) {
    return SetEntraError(
        res, 400, "invalid_scope", 1002012,
        absl::StrCat("The provided value for scope ", *scope,
                     " is not valid. Client credential flows must have a scope value with "
                     "/.default suffixed to the resource identifier (application ID URI)."));
  }
  if (std::none_of(std::begin(kAcceptedScopes), std::end(kAcceptedScopes),
                   [&](const char* s) { return *scope == s; })) {
    return SetEntraError(
        res, 400, "invalid_scope", 70011,
        absl::StrCat("The provided request must include a 'scope' input parameter. The "
                     "provided value for the input parameter 'scope' is not valid. The scope ",
                     *scope, " is not valid."));
  }

  const std::string token = IssueToken(app.app.tenant_id, app.app.client_id);
  const int64_t expires_in = absl::ToInt64Seconds(options_.token_lifetime) - 1;
  SetJson(res, 200,
          json{{"token_type", "Bearer"},
               {"expires_in", expires_in},
               {"ext_expires_in", expires_in},
               {"access_token", token}},
          kJsonContentType);
}

std::string Sandbox::Impl::IssueToken(const std::string& tenant, const std::string& client_id) {
  std::string token = absl::StrCat("sbx.", RandomHex(16));
  absl::MutexLock lock(&mu_);
  tokens_[token] = TokenInfo{tenant, client_id, absl::Now() + options_.token_lifetime};
  return token;
}

bool Sandbox::Impl::CheckClientAssertion(const httplib::Request& req, httplib::Response& res,
                                         const AppEntry& app, const std::string& assertion) {
  // Workload identity: the assertion is one of the app's federated tokens.
  const std::vector<std::string>& federated = app.app.federated_tokens;
  if (std::find(federated.begin(), federated.end(), assertion) != federated.end()) return true;

  ParsedJwt jwt;
  const bool parsed = ParseJwt(assertion, &jwt);
  const bool has_thumbprint =
      parsed && (jwt.header.contains("x5t") || jwt.header.contains("x5t#S256"));
  // Not a certificate assertion, for an app that uses federation: an unknown
  // (or rotated-away) federated token.
  if (!has_thumbprint && !federated.empty()) {
    SetEntraError(res, 400, "invalid_client", 70021,
                  absl::StrCat("No matching federated identity record found for presented "
                               "assertion. Assertion audience: 'api://AzureADTokenExchange'. "
                               "Application: '",
                               app.app.client_id, "'."));
    return false;
  }

  // A certificate assertion.
  AssertionCheck check;
  if (parsed) {
    check.alg = StringClaim(jwt.header, "alg");
    check.iss = StringClaim(jwt.payload, "iss");
    check.sub = StringClaim(jwt.payload, "sub");
    check.jti = StringClaim(jwt.payload, "jti");
    if (auto aud = jwt.payload.find("aud"); aud != jwt.payload.end()) {
      check.aud = aud->is_string() ? aud->get<std::string>() : Dump(*aud);
    }
  }
  const bool pss = check.alg == "PS256";
  const char* const kind = pss ? "x5t#S256" : "x5t";
  if (parsed && jwt.header.contains(kind)) check.x5t_kind = kind;
  auto finish = [&](int code, absl::string_view description) {
    check.aadsts = code;
    check.accepted = code == 0;
    {
      absl::MutexLock lock(&mu_);
      assertion_checks_.push_back(check);
    }
    if (code == 0) return true;
    SetEntraError(res, 401, "invalid_client", code, description);
    return false;
  };
  constexpr int kInvalid = 700027;
  constexpr int kTimeRange = 700024;
  if (!parsed) {
    return finish(kInvalid,
                  "Client assertion is not a valid JWT: expected base64url "
                  "header.payload.signature with JSON header and payload.");
  }
  if (!jwt.header.contains("typ") || !jwt.header["typ"].is_string() ||
      !absl::EqualsIgnoreCase(jwt.header["typ"].get<std::string>(), "JWT")) {
    return finish(kInvalid, "Client assertion header must have typ 'JWT'.");
  }
  if (check.alg != "RS256" && check.alg != "PS256") {
    return finish(kInvalid,
                  absl::StrCat("Client assertion algorithm ", Quote(check.alg),
                               " is not supported: use PS256 with x5t#S256 or RS256 with x5t."));
  }
  if (check.x5t_kind.empty()) {
    return finish(kInvalid, absl::StrCat("Client assertion with alg ", check.alg,
                                         " must carry the certificate thumbprint ", kind, "."));
  }
  if (!app.cert) {
    return finish(kInvalid, absl::StrCat("The certificate with identifier used to sign the client "
                                         "assertion is not registered on application. [Reason - No "
                                         "certificate is registered on app '",
                                         app.app.client_id, "'.]"));
  }
  // Every thumbprint the header carries must name the registered certificate.
  for (const auto& [key, expected] :
       {std::pair<const char*, const std::string*>{"x5t", &app.x5t}, {"x5t#S256", &app.x5t_s256}}) {
    if (!jwt.header.contains(key)) continue;
    const json& value = jwt.header[key];
    if (!value.is_string() ||
        absl::StripSuffix(value.get<std::string>(), "=") != absl::StripSuffix(*expected, "=")) {
      return finish(
          kInvalid,
          absl::StrCat("The certificate with identifier used to sign the client "
                       "assertion is not registered on application. [Reason - The key "
                       "was not found. Thumbprint (",
                       key, ") of key used by client: ",
                       value.is_string() ? Quote(value.get<std::string>()) : "invalid", ".]"));
    }
  }
  check.signature_ok = VerifyRsaSha256(app.cert.get(), pss, jwt.signing_input, jwt.signature);
  if (!check.signature_ok) {
    return finish(kInvalid, "Client assertion failed signature validation.");
  }
  // aud: the token URL exactly as the client used it.
  const std::string host = req.get_header_value("Host");
  const std::vector<std::string> audiences = {absl::StrCat("https://", host, req.path),
                                              absl::StrCat(base_url_, req.path)};
  const json& aud = jwt.payload.contains("aud") ? jwt.payload["aud"] : json();
  auto accepted_aud = [&audiences](const json& a) {
    return a.is_string() &&
           std::find(audiences.begin(), audiences.end(), a.get<std::string>()) != audiences.end();
  };
  if (!(accepted_aud(aud) ||
        (aud.is_array() && std::any_of(aud.begin(), aud.end(), accepted_aud)))) {
    return finish(kInvalid,
                  absl::StrCat("The audience claim of the client assertion, ", Quote(check.aud),
                               ", is not the token endpoint ", Quote(audiences.back()), "."));
  }
  if (!absl::EqualsIgnoreCase(check.iss, app.app.client_id) ||
      !absl::EqualsIgnoreCase(check.sub, app.app.client_id)) {
    return finish(kInvalid,
                  "The issuer (iss) and subject (sub) claims of the client assertion must both "
                  "be the client id.");
  }
  if (check.jti.empty()) {
    return finish(kInvalid, "The client assertion has no jti claim.");
  }
  const json& nbf = jwt.payload.contains("nbf") ? jwt.payload["nbf"] : json();
  const json& exp = jwt.payload.contains("exp") ? jwt.payload["exp"] : json();
  if (!nbf.is_number() || !exp.is_number()) {
    return finish(kInvalid, "The client assertion needs numeric nbf and exp claims.");
  }
  const double now = absl::ToDoubleSeconds(absl::Now() - absl::UnixEpoch());
  const double not_before = nbf.get<double>();
  const double expires = exp.get<double>();
  if (expires <= now || not_before > now + 5 * 60 || expires - not_before > 11 * 60) {
    return finish(kTimeRange,
                  absl::StrCat("Client assertion is not within its valid time range. Current "
                               "time: ",
                               static_cast<int64_t>(now),
                               ", assertion valid from: ", static_cast<int64_t>(not_before),
                               ", expiry time of assertion: ", static_cast<int64_t>(expires),
                               " (at most 10 minutes)."));
  }
  {
    absl::MutexLock lock(&mu_);
    if (!seen_jtis_.emplace(absl::AsciiStrToLower(app.app.client_id), check.jti).second) {
      check.aadsts = kInvalid;
      assertion_checks_.push_back(check);
      SetEntraError(res, 401, "invalid_client", kInvalid,
                    absl::StrCat("The client assertion with jti ", Quote(check.jti),
                                 " was already used (replay)."));
      return false;
    }
  }
  return finish(0, "");
}

// ---------------------------------------------------------------------------
// Managed identity (IMDS and App Service).

void Sandbox::Impl::ManagedIdentityToken(const httplib::Request& req, httplib::Response& res) {
  const bool imds = req.path == "/metadata/identity/oauth2/token";
  const bool app_service = req.path == "/msi/token";
  if (!imds && !app_service) {
    return SetAzureError(res, 404, "not_found",
                         absl::StrCat("No managed identity endpoint at ", Quote(req.path),
                                      ": use /metadata/identity/oauth2/token or /msi/token."));
  }
  if (req.method != "GET") {
    return SetAzureError(
        res, 405, "invalid_request",
        absl::StrCat("The managed identity endpoint does not support ", req.method, "; use GET."));
  }
  if (imds) {
    if (!absl::EqualsIgnoreCase(req.get_header_value("Metadata"), "true")) {
      return SetAzureError(res, 400, "invalid_request", "Required metadata header not specified");
    }
  } else if (!req.has_header("X-IDENTITY-HEADER") ||
             req.get_header_value("X-IDENTITY-HEADER") != identity_header_) {
    return SetAzureError(res, 401, "unauthorized",
                         "The X-IDENTITY-HEADER header is missing or does not match "
                         "IDENTITY_HEADER.");
  }
  const std::string api_version = req.get_param_value("api-version");
  if (api_version.empty()) {
    return SetAzureError(res, 400, "invalid_request",
                         "Required query variable 'api-version' is missing");
  }
  absl::Time version_date;
  std::string err;
  if (app_service ? api_version != "2019-08-01"
                  : (!absl::ParseTime("%Y-%m-%d", api_version, &version_date, &err) ||
                     api_version < "2018-02-01")) {
    return SetAzureError(res, 400, "invalid_request",
                         absl::StrCat("api-version ", Quote(api_version), " is not supported",
                                      app_service ? " (use 2019-08-01)." : "."));
  }
  const std::string resource = req.get_param_value("resource");
  if (resource.empty()) {
    return SetAzureError(res, 400, "invalid_request", "Required audience parameter not specified");
  }
  const std::string bare_resource(absl::StripSuffix(resource, "/"));
  if (std::none_of(std::begin(kAcceptedScopes), std::end(kAcceptedScopes), [&](const char* s) {
        return bare_resource == absl::StripSuffix(s, "/.default");
      })) {
    return SetAzureError(
        res, 400, "invalid_resource",
        absl::StrCat("AADSTS500011: The resource principal named ", resource,
                     " was not found in the tenant named ", mi_tenant_,
                     ". This can happen if the application has not been installed by the "
                     "administrator of the tenant."));
  }
  // The identity: system-assigned unless the request names a user-assigned one.
  for (const char* key : {"object_id", "msi_res_id", "mi_res_id", "principal_id"}) {
    if (req.has_param(key)) return SetAzureError(res, 400, "invalid_request", "Identity not found");
  }
  std::string client_id = kSystemAssignedClientId;
  if (req.has_param("client_id")) {
    const std::string wanted = req.get_param_value("client_id");
    const std::vector<std::string>& user = options_.user_assigned_client_ids;
    auto it = std::find_if(user.begin(), user.end(), [&](const std::string& id) {
      return absl::EqualsIgnoreCase(id, wanted);
    });
    if (it != user.end()) {
      client_id = *it;
    } else if (!absl::EqualsIgnoreCase(wanted, kSystemAssignedClientId)) {
      return SetAzureError(res, 400, "invalid_request", "Identity not found");
    }
  }

  const absl::Time now = absl::Now();
  const std::string token = IssueToken(mi_tenant_, client_id);
  const int64_t expires_in = absl::ToInt64Seconds(options_.token_lifetime) - 1;
  const std::string expires_on = std::to_string(absl::ToUnixSeconds(now) + expires_in);
  json body;
  if (imds) {
    body = {{"access_token", token},
            {"client_id", client_id},
            {"expires_in", std::to_string(expires_in)},
            {"expires_on", expires_on},
            {"ext_expires_in", std::to_string(expires_in)},
            {"not_before", std::to_string(absl::ToUnixSeconds(now))},
            {"resource", resource},
            {"token_type", "Bearer"}};
  } else {
    body = {{"access_token", token},
            {"expires_on", expires_on},
            {"resource", resource},
            {"token_type", "Bearer"},
            {"client_id", client_id}};
  }
  SetJson(res, 200, body, kJsonContentType);
}

// ---------------------------------------------------------------------------
// Defender API.

bool Sandbox::Impl::Authenticate(const httplib::Request& req, httplib::Response& res,
                                 std::string* client) {
  std::string header = req.get_header_value("Authorization");
  auto reject = [&res](absl::string_view message) {
    SetDefenderError(res, 401, "Unauthorized", message);
    res.set_header("WWW-Authenticate", "Bearer");
    return false;
  };
  if (!absl::StartsWithIgnoreCase(header, "Bearer ")) {
    return reject("Authorization header with a Bearer token is required.");
  }
  std::string token(absl::StripAsciiWhitespace(absl::string_view(header).substr(7)));
  absl::MutexLock lock(&mu_);
  auto it = tokens_.find(token);
  if (it == tokens_.end()) return reject("The access token is invalid.");
  if (absl::Now() >= it->second.expires) return reject("The access token has expired.");
  *client = it->second.client_id;
  return true;
}

const Machine* Sandbox::Impl::FindMachine(const std::string& id) const {
  for (const Machine& m : machines_) {
    if (absl::EqualsIgnoreCase(m.id, id)) return &m;
  }
  return nullptr;
}

json Sandbox::Impl::MachineJson(const Machine& m) const {
  size_t index = static_cast<size_t>(&m - machines_.data());
  std::string seen = FormatTime7(started_);
  return json{
      {"id", m.id},
      {"computerDnsName", m.computer_dns_name},
      {"firstSeen", FormatTime7(started_ - absl::Hours(24 * 30))},
      {"lastSeen", seen},
      {"osPlatform", m.os_platform},
      {"osProcessor", "x64"},
      {"version", absl::StartsWith(m.os_platform, "Windows") ? "22H2" : "1.0"},
      {"osBuild", nullptr},
      {"lastIpAddress", absl::StrCat("10.0.0.", 10 + index % 240)},
      {"lastExternalIpAddress", "203.0.113.10"},
      {"healthStatus", "Active"},
      {"onboardingStatus", "Onboarded"},
      {"rbacGroupId", 0},
      {"rbacGroupName", nullptr},
      {"riskScore", "None"},
      {"exposureLevel", "Low"},
      {"isAadJoined", true},
      {"aadDeviceId", nullptr},
      {"machineTags", json::array()},
  };
}

std::pair<std::string, absl::Time> Sandbox::Impl::StatusAt(const Action& a, absl::Time now) const {
  if (a.cancelled) return {"Cancelled", a.cancelled_at};
  const absl::Duration step = options_.action_step;
  if (now < a.created + step) return {"Pending", a.created};
  if (now < a.created + 2 * step) return {"InProgress", a.created + step};
  return {"Succeeded", a.created + 2 * step};
}

json Sandbox::Impl::ActionJson(const Action& a, absl::Time now, bool with_context) const {
  auto [status, last_update] = StatusAt(a, now);
  json j = json::object();
  if (with_context) {
    j["@odata.context"] = absl::StrCat(base_url_, "/api/$metadata#MachineActions/$entity");
  }
  j["id"] = a.id;
  j["type"] = "StopAndQuarantineFile";
  j["title"] = absl::StrCat("Stop and quarantine file ", a.sha1, " on ", a.computer_dns_name);
  j["requestor"] = a.requestor;
  j["requestorComment"] = a.comment;
  j["status"] = status;
  j["machineId"] = a.machine_id;
  j["computerDnsName"] = a.computer_dns_name;
  j["creationDateTimeUtc"] = FormatTime7(a.created);
  j["lastUpdateDateTimeUtc"] = FormatTime7(last_update);
  j["cancellationRequestor"] = a.cancelled ? json(a.cancellation_requestor) : json(nullptr);
  j["cancellationComment"] = a.cancelled ? json(a.cancellation_comment) : json(nullptr);
  j["cancellationDateTimeUtc"] = a.cancelled ? json(FormatTime7(a.cancelled_at)) : json(nullptr);
  j["errorHResult"] = 0;
  j["scope"] = nullptr;
  j["externalId"] = nullptr;
  j["requestSource"] = "PublicApi";
  j["relatedFileInfo"] = {{"fileIdentifier", a.sha1}, {"fileIdentifierType", "Sha1"}};
  j["commands"] = json::array();
  j["troubleshootInfo"] = nullptr;
  j["sandboxExtra"] = {{"x", 1}};
  return j;
}

void Sandbox::Impl::StopAndQuarantineFile(const httplib::Request& req, httplib::Response& res,
                                          const std::string& machine_id,
                                          const std::string& client) {
  if (!absl::StartsWithIgnoreCase(req.get_header_value("Content-Type"), "application/json")) {
    return SetDefenderError(res, 400, "InvalidRequestBody",
                            "Request body is invalid: Content-Type must be application/json.");
  }
  json body = json::parse(req.body, nullptr, /*allow_exceptions=*/false);
  if (body.is_discarded() || !body.is_object()) {
    return SetDefenderError(res, 400, "InvalidRequestBody",
                            "Request body is invalid: expected a JSON object.");
  }
  for (const char* key : {"Comment", "Sha1"}) {
    if (!body.contains(key) || body[key].is_null()) {
      return SetDefenderError(res, 400, "MissingRequiredParameter",
                              absl::StrCat("Required parameter '", key, "' is missing."));
    }
    if (!body[key].is_string()) {
      return SetDefenderError(res, 400, "InvalidRequestBody",
                              absl::StrCat("Parameter '", key, "' must be a string."));
    }
  }
  std::string comment = body["Comment"].get<std::string>();
  std::string sha1 = body["Sha1"].get<std::string>();
  if (comment.empty()) {
    return SetDefenderError(res, 400, "MissingRequiredParameter",
                            "Required parameter 'Comment' is empty.");
  }
  if (!IsHex(sha1, 40)) {
    return SetDefenderError(res, 400, "InvalidHashValue",
                            absl::StrCat("Sha1 value ", Quote(sha1), " is not a valid SHA-1."));
  }
  const Machine* machine = FindMachine(machine_id);
  if (machine == nullptr) {
    return SetDefenderError(res, 404, "ResourceNotFound",
                            absl::StrCat("Machine ", machine_id, " was not found"));
  }
  if (!absl::StartsWith(machine->os_platform, "Windows")) {
    return SetDefenderError(
        res, 400, "OsPlatformNotSupported",
        absl::StrCat("Action StopAndQuarantineFile is not supported on os platform ",
                     machine->os_platform, " (machine ", machine->id, ")."));
  }
  if (sha1 == kAbsentSha1) {
    return SetDefenderError(res, 404, "ResourceNotFound",
                            absl::StrCat("Sha1 ", sha1, " was not found in machine ", machine->id));
  }
  absl::MutexLock lock(&mu_);
  absl::Time now = absl::Now();
  const std::string target = absl::StrCat(machine->id, "/", absl::AsciiStrToLower(sha1));
  auto newest = newest_by_target_.find(target);
  if (newest != newest_by_target_.end() &&
      !IsFinalStatus(StatusAt(actions_[newest->second], now).first)) {
    return SetDefenderError(res, 400, "ActiveRequestAlreadyExists",
                            "Action is already in progress");
  }
  Action a;
  a.id = NewGuid();
  a.requestor = client;
  a.comment = std::move(comment);
  a.machine_id = machine->id;
  a.computer_dns_name = machine->computer_dns_name;
  a.sha1 = sha1;
  a.created = now;
  action_by_id_[absl::AsciiStrToLower(a.id)] = actions_.size();
  newest_by_target_[target] = actions_.size();
  actions_.push_back(a);
  SetJson(res, 201, ActionJson(a, now, /*with_context=*/true));
}

void Sandbox::Impl::GetAction(httplib::Response& res, const std::string& id) {
  absl::MutexLock lock(&mu_);
  if (const Action* a = FindActionLocked(id)) {
    return SetJson(res, 200, ActionJson(*a, absl::Now(), /*with_context=*/true));
  }
  SetDefenderError(res, 404, "ResourceNotFound",
                   absl::StrCat("Machine action with id ", id, " was not found"));
}

void Sandbox::Impl::ListActions(const httplib::Request& req, httplib::Response& res) {
  absl::StatusOr<QueryOptions> q = ParseQueryOptions(req);
  if (!q.ok()) return SetDefenderError(res, 400, "ODataError", q.status().message());
  // Validate the filter before looking at data, so an unsupported filter fails
  // also when there are no actions.
  for (const FilterClause& c : q->filter) {
    bool is_time = c.field == "creationDateTimeUtc" || c.field == "lastUpdateDateTimeUtc";
    bool is_string = c.field == "id" || c.field == "machineId" || c.field == "type" ||
                     c.field == "status" || c.field == "requestor";
    absl::Time t;
    if (is_string && c.op != "eq" && c.op != "ne") {
      return SetDefenderError(
          res, 400, "ODataError",
          absl::StrCat("Operator '", c.op, "' is not supported for ", c.field, "."));
    }
    if (is_time &&
        (!ParseIsoTime(c.value, &t) || !(c.op == "eq" || c.op == "ne" || c.op == "gt" ||
                                         c.op == "ge" || c.op == "lt" || c.op == "le"))) {
      return SetDefenderError(
          res, 400, "ODataError",
          absl::StrCat("Invalid date-time comparison on ", c.field, ": ", c.op, " ", c.value, "."));
    }
    if (!is_time && !is_string) {
      return SetDefenderError(res, 400, "ODataError",
                              absl::StrCat("Could not find a property named ", Quote(c.field),
                                           " on type 'MachineAction' that supports $filter."));
    }
  }
  absl::MutexLock lock(&mu_);
  absl::Time now = absl::Now();
  json values = json::array();
  int skipped = 0;
  for (auto it = actions_.rbegin(); it != actions_.rend(); ++it) {
    const Action& a = *it;
    auto [status, last_update] = StatusAt(a, now);
    bool keep = true;
    for (const FilterClause& c : q->filter) {
      bool match = false;
      if (c.field == "creationDateTimeUtc" || c.field == "lastUpdateDateTimeUtc") {
        absl::Time t;
        ParseIsoTime(c.value, &t);
        bool ok;
        match =
            CompareTimes(c.field == "creationDateTimeUtc" ? a.created : last_update, c.op, t, &ok);
      } else {
        std::string field_value = c.field == "id"          ? a.id
                                  : c.field == "machineId" ? a.machine_id
                                  : c.field == "type"      ? std::string("StopAndQuarantineFile")
                                  : c.field == "status"    ? status
                                                           : a.requestor;
        match = absl::EqualsIgnoreCase(field_value, c.value) == (c.op == "eq");
      }
      if (!match) {
        keep = false;
        break;
      }
    }
    if (!keep) continue;
    if (skipped < q->skip) {
      ++skipped;
      continue;
    }
    if (static_cast<int>(values.size()) >= q->top) break;
    values.push_back(ActionJson(a, now, /*with_context=*/false));
  }
  SetJson(res, 200,
          json{{"@odata.context", absl::StrCat(base_url_, "/api/$metadata#MachineActions")},
               {"value", std::move(values)}});
}

void Sandbox::Impl::CancelAction(const httplib::Request& req, httplib::Response& res,
                                 const std::string& id, const std::string& client) {
  json body = json::parse(req.body, nullptr, /*allow_exceptions=*/false);
  if (body.is_discarded() || !body.is_object()) {
    return SetDefenderError(res, 400, "InvalidRequestBody",
                            "Request body is invalid: expected a JSON object.");
  }
  if (!body.contains("Comment") || !body["Comment"].is_string() ||
      body["Comment"].get<std::string>().empty()) {
    return SetDefenderError(res, 400, "MissingRequiredParameter",
                            "Required parameter 'Comment' is missing.");
  }
  absl::MutexLock lock(&mu_);
  absl::Time now = absl::Now();
  if (Action* found = FindActionLocked(id)) {
    Action& a = *found;
    if (IsFinalStatus(StatusAt(a, now).first)) {
      return SetDefenderError(res, 400, "BadRequest", "Action is already in final state");
    }
    a.cancelled = true;
    a.cancellation_requestor = client;
    a.cancellation_comment = body["Comment"].get<std::string>();
    a.cancelled_at = now;
    return SetJson(res, 200, ActionJson(a, now, /*with_context=*/true));
  }
  SetDefenderError(res, 404, "ResourceNotFound",
                   absl::StrCat("Machine action with id ", id, " was not found"));
}

void Sandbox::Impl::ListMachines(const httplib::Request& req, httplib::Response& res) {
  absl::StatusOr<QueryOptions> q = ParseQueryOptions(req);
  if (!q.ok()) return SetDefenderError(res, 400, "ODataError", q.status().message());
  for (const FilterClause& c : q->filter) {
    if (c.field != "computerDnsName" && c.field != "id" && c.field != "osPlatform" &&
        c.field != "lastIpAddress" && c.field != "healthStatus") {
      return SetDefenderError(res, 400, "ODataError",
                              absl::StrCat("Could not find a property named ", Quote(c.field),
                                           " on type 'Machine' that supports $filter."));
    }
    if (c.op != "eq" && c.op != "ne") {
      return SetDefenderError(
          res, 400, "ODataError",
          absl::StrCat("Operator '", c.op, "' is not supported for ", c.field, "."));
    }
  }
  json values = json::array();
  int skipped = 0;
  for (const Machine& m : machines_) {
    json mj = MachineJson(m);
    bool keep = std::all_of(q->filter.begin(), q->filter.end(), [&](const FilterClause& c) {
      return absl::EqualsIgnoreCase(mj[c.field].get<std::string>(), c.value) == (c.op == "eq");
    });
    if (!keep) continue;
    if (skipped < q->skip) {
      ++skipped;
      continue;
    }
    if (static_cast<int>(values.size()) >= q->top) break;
    values.push_back(std::move(mj));
  }
  SetJson(res, 200,
          json{{"@odata.context", absl::StrCat(base_url_, "/api/$metadata#Machines")},
               {"value", std::move(values)}});
}

void Sandbox::Impl::GetMachine(httplib::Response& res, const std::string& id) {
  const Machine* m = FindMachine(id);
  if (m == nullptr) {
    return SetDefenderError(res, 404, "ResourceNotFound",
                            absl::StrCat("Machine ", id, " was not found"));
  }
  json j = MachineJson(*m);
  j["@odata.context"] = absl::StrCat(base_url_, "/api/$metadata#Machines/$entity");
  SetJson(res, 200, j);
}

void Sandbox::Impl::GetFile(httplib::Response& res, const std::string& hash, bool machines) {
  for (const FileEntry& f : files_) {
    if (!absl::EqualsIgnoreCase(f.sha1, hash) && !absl::EqualsIgnoreCase(f.sha256, hash)) {
      continue;
    }
    if (machines) {
      json values = json::array();
      for (const Machine& m : machines_) {
        if (absl::StartsWith(m.os_platform, "Windows")) values.push_back(MachineJson(m));
      }
      return SetJson(res, 200,
                     json{{"@odata.context", absl::StrCat(base_url_, "/api/$metadata#Machines")},
                          {"value", std::move(values)}});
    }
    return SetJson(res, 200,
                   json{{"@odata.context", absl::StrCat(base_url_, "/api/$metadata#Files/$entity")},
                        {"sha1", f.sha1},
                        {"sha256", f.sha256},
                        {"md5", f.md5},
                        {"globalPrevalence", 42},
                        {"globalFirstObserved", FormatTime7(started_ - absl::Hours(24 * 365))},
                        {"globalLastObserved", FormatTime7(started_)},
                        {"size", f.size},
                        {"fileType", "PortableExecutable"},
                        {"isPeFile", true},
                        {"filePublisher", "Contoso Ltd."},
                        {"fileProductName", f.name},
                        {"signer", nullptr},
                        {"issuer", nullptr},
                        {"signerHash", nullptr},
                        {"isValidCertificate", false},
                        {"determinationType", "Unknown"},
                        {"determinationValue", ""}});
  }
  SetDefenderError(res, 404, "ResourceNotFound", absl::StrCat("File ", hash, " was not found"));
}

// ---------------------------------------------------------------------------
// Sandbox: the public face.

Sandbox::Sandbox(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Sandbox::~Sandbox() = default;

absl::StatusOr<std::unique_ptr<Sandbox>> Sandbox::Start(SandboxOptions options) {
  auto impl = std::make_unique<Impl>(std::move(options));
  if (absl::Status s = impl->Init(); !s.ok()) return s;
  return std::unique_ptr<Sandbox>(new Sandbox(std::move(impl)));
}

int Sandbox::port() const { return impl_->port(); }
std::string Sandbox::base_url() const { return impl_->base_url(); }
const std::string& Sandbox::ca_pem() const { return impl_->ca_pem(); }

absl::Status Sandbox::WriteCaFile(const std::string& path) const {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << ca_pem();
  out.close();
  if (!out) return absl::InternalError(absl::StrCat("cannot write ", path));
  return absl::OkStatus();
}

void Sandbox::AddFault(FaultRule rule) { impl_->AddFault(std::move(rule)); }
void Sandbox::ClearFaults() { impl_->ClearFaults(); }
std::vector<RecordedRequest> Sandbox::Requests() const { return impl_->Requests(); }
void Sandbox::ClearRequests() { impl_->ClearRequests(); }
void Sandbox::ExpireAllTokens() { impl_->ExpireAllTokens(); }
int Sandbox::TokenRequests() const { return impl_->TokenRequests(); }
int Sandbox::CountRequests(const std::string& method, const std::string& path_regex) const {
  return impl_->CountRequests(method, path_regex);
}
std::vector<std::string> Sandbox::ActionIds() const { return impl_->ActionIds(); }
int Sandbox::ActionCount() const { return impl_->ActionCount(); }
void Sandbox::Reset() { impl_->Reset(); }
void Sandbox::AddApp(SandboxApp app) {
  const std::string client_id = app.client_id;
  const std::string tenant_id = app.tenant_id;
  if (absl::Status s = impl_->AddApp(std::move(app)); !s.ok()) {
    std::cerr << "defender-sandbox: AddApp(" << Quote(tenant_id) << ", " << Quote(client_id)
              << "): " << s.message() << std::endl;
  }
}
void Sandbox::SetFederatedTokens(const std::string& client_id, std::vector<std::string> tokens) {
  impl_->SetFederatedTokens(client_id, std::move(tokens));
}
std::vector<AssertionCheck> Sandbox::AssertionChecks() const { return impl_->AssertionChecks(); }
std::string Sandbox::imds_base_url() const { return impl_->imds_base_url(); }
std::string Sandbox::identity_endpoint() const {
  return impl_->imds_base_url().empty() ? "" : absl::StrCat(impl_->imds_base_url(), "/msi/token");
}
std::string Sandbox::identity_header() const { return impl_->identity_header(); }
int Sandbox::ManagedIdentityRequests() const { return impl_->ManagedIdentityRequests(); }
void Sandbox::Stop() { impl_->Stop(); }

}  // namespace defender::sandbox
