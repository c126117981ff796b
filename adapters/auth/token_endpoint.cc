#include "adapters/auth/token_endpoint.h"

#include "adapters/auth/json_fields.h"

#include <cmath>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/types/optional.h"
#include "adapters/common/error.h"
#include "adapters/common/retry.h"
#include "adapters/region/region.h"
#include "nlohmann/json.hpp"

namespace defender::auth {
namespace {

using nlohmann::json;
using internal::NumberField;
using internal::Printable;
using internal::StringField;

constexpr char kBadTokenResponse[] = "BAD_TOKEN_RESPONSE";

// AadstsCode returns "AADSTSnnnn" from error_codes[0] or from the start of
// error_description, or "" if neither has one.
std::string AadstsCode(const json& body, const std::string& description) {
  auto codes = body.find("error_codes");
  if (codes != body.end() && codes->is_array() && !codes->empty()) {
    const json& first = codes->front();
    if (first.is_number_unsigned() || first.is_number_integer()) {
      return absl::StrCat("AADSTS", first.get<int64_t>());
    }
    if (first.is_string()) {
      std::string digits(absl::StripAsciiWhitespace(first.get<std::string>()));
      int64_t code = 0;
      if (absl::SimpleAtoi(digits, &code) && code >= 0) return absl::StrCat("AADSTS", code);
    }
  }
  if (absl::StartsWith(description, "AADSTS")) {
    size_t end = 6;
    while (end < description.size() &&
           absl::ascii_isdigit(static_cast<unsigned char>(description[end]))) {
      ++end;
    }
    if (end > 6 && end <= 6 + 12) return description.substr(0, end);
  }
  return "";
}

// ShortDescription is the first line of error_description without its
// "AADSTSnnnn: " prefix: Entra appends trace and correlation ids and a
// timestamp on further lines, which the message carries separately.
std::string ShortDescription(const std::string& description) {
  absl::string_view text = description;
  text = text.substr(0, text.find_first_of("\r\n"));
  if (absl::StartsWith(text, "AADSTS")) {
    const size_t colon = text.find(':');
    if (colon != absl::string_view::npos && colon <= 20) text.remove_prefix(colon + 1);
  }
  return Printable(absl::StripAsciiWhitespace(text), 300);
}

// HintFor says what to fix for the AADSTS codes users hit most
// (defender-api.md section 6), or "" when there is nothing specific to say.
std::string HintFor(const std::string& code) {
  if (code == "AADSTS90002") {
    return "tenant not found: check AZURE_TENANT_ID, and that DEFENDER_REGION or "
           "AZURE_AUTHORITY_HOST names the tenant's cloud (commercial or US Government)";
  }
  if (code == "AADSTS700016") {
    return "application not found in the tenant: check AZURE_CLIENT_ID and AZURE_TENANT_ID, and "
           "that an administrator of the tenant has consented to the application";
  }
  if (code == "AADSTS70011" || code == "AADSTS1002012") {
    return "invalid scope: check DEFENDER_SCOPE (the API's resource followed by \"/.default\") "
           "and that it matches DEFENDER_REGION";
  }
  if (code == "AADSTS7000215" || code == "AADSTS7000222") {
    return "check AZURE_CLIENT_SECRET: use the secret's value (not its id) and make sure it has "
           "not expired";
  }
  if (code == "AADSTS700027" || code == "AADSTS50012") {
    return "the client assertion was not accepted: check that AZURE_CLIENT_CERTIFICATE_PATH holds "
           "a certificate registered with the application and not expired";
  }
  if (code == "AADSTS700024") {
    return "the client assertion is outside its validity period: check this machine's clock";
  }
  if (code == "AADSTS70021") {
    return "no federated credential of the application matches the token in "
           "AZURE_FEDERATED_TOKEN_FILE: check its issuer, subject and audience";
  }
  if (code == "AADSTS53003") return "blocked by a Conditional Access policy of the tenant";
  return "";
}

absl::Status Rejected(const http::HttpResponse& response) {
  json body = json::parse(response.body, nullptr, /*allow_exceptions=*/false);
  if (!body.is_object()) body = json::object();
  const std::string description = StringField(body, "error_description");
  const std::string code = AadstsCode(body, description);
  const std::string error = Printable(StringField(body, "error"), 64);
  const std::string correlation_id = Printable(StringField(body, "correlation_id"), 64);
  const std::string trace_id = Printable(StringField(body, "trace_id"), 64);

  std::string message = "token request rejected by Entra ID: ";
  if (!code.empty()) {
    absl::StrAppend(&message, code, error.empty() ? "" : absl::StrCat(" (", error, ")"));
  } else if (!error.empty()) {
    absl::StrAppend(&message, error);
  } else {
    absl::StrAppend(&message, "HTTP ", response.status);
  }
  if (!correlation_id.empty()) absl::StrAppend(&message, "; correlation id ", correlation_id);
  const std::string short_description = ShortDescription(description);
  if (!short_description.empty()) absl::StrAppend(&message, ": ", short_description);
  const std::string hint = HintFor(code);
  if (!hint.empty()) absl::StrAppend(&message, " Hint: ", hint, ".");

  std::map<std::string, std::string> metadata = {{"http_status", absl::StrCat(response.status)}};
  if (!code.empty()) metadata["aadsts_code"] = code;
  if (!error.empty()) metadata["error"] = error;
  if (!correlation_id.empty()) metadata["correlation_id"] = correlation_id;
  if (!trace_id.empty()) metadata["trace_id"] = trace_id;
  return MakeError(absl::StatusCode::kUnauthenticated, message, "TOKEN_REQUEST_REJECTED", metadata);
}

absl::StatusOr<AccessToken> Issued(const http::HttpResponse& response, absl::Time now) {
  const std::map<std::string, std::string> metadata = {
      {"http_status", absl::StrCat(response.status)}};
  const json body = json::parse(response.body, nullptr, /*allow_exceptions=*/false);
  if (!body.is_object()) {
    return MakeError(absl::StatusCode::kInternal,
                     "token endpoint answered with something that is not a JSON object",
                     kBadTokenResponse, metadata);
  }
  AccessToken token;
  token.token = StringField(body, "access_token");
  if (token.token.empty()) {
    return MakeError(absl::StatusCode::kInternal, "token endpoint's answer has no access_token",
                     kBadTokenResponse, metadata);
  }
  double seconds = 0;
  if (NumberField(body, "expires_in", seconds) && seconds >= 0) {
    token.expires_on = now + absl::Seconds(seconds);
  } else if (NumberField(body, "expires_on", seconds) && seconds >= 0) {
    token.expires_on = absl::FromUnixSeconds(0) + absl::Seconds(seconds);
  } else {
    return MakeError(absl::StatusCode::kInternal,
                     "token endpoint's answer has no usable expires_in or expires_on",
                     kBadTokenResponse, metadata);
  }
  return token;
}

// Retries (with a scheduler): at most this many after the first attempt...
constexpr int kMaxRetries = 4;
// ...each starting at least this long before the caller's deadline.
constexpr absl::Duration kMinAttemptTime = absl::Milliseconds(100);

BackoffPolicy TokenBackoff() {
  return {.initial = absl::Milliseconds(200), .multiplier = 2.0, .max = absl::Seconds(5)};
}

// RetryableStatus: HTTP statuses of the token endpoint worth another try
// (Azure Identity's list, defender-api.md section 6).
bool RetryableStatus(int status) {
  return status == 408 || status == 429 || status == 500 || status == 502 || status == 503 ||
         status == 504;
}

// RetryableTransportError: transport faults after which a token request,
// which changes nothing on the server, may simply be sent again.
bool RetryableTransportError(const absl::Status& status) {
  const std::string reason = ErrorReason(status);
  return reason == "UPSTREAM_CONNECT_FAILED" || reason == "UPSTREAM_CONNECTION_LOST" ||
         reason == "UPSTREAM_TIMEOUT";
}

bool IsTenantChar(char c) {
  return absl::ascii_isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '-';
}

// Prefixed returns `status` with "token request: " before its message, payloads kept.
absl::Status Prefixed(const absl::Status& status) {
  absl::Status out(status.code(), absl::StrCat("token request: ", status.message()));
  status.ForEachPayload([&out](absl::string_view type_url, const absl::Cord& payload) {
    out.SetPayload(type_url, payload);
  });
  return out;
}

// Redacted replaces every occurrence of each of `secrets` in the message and
// ErrorInfo metadata of `status`. Nothing should ever echo them; this is the
// last guard before the status leaves the client.
absl::Status Redacted(absl::Status status, const std::vector<std::string>& secrets) {
  for (const std::string& secret : secrets) {
    if (status.ok() || secret.empty()) continue;
    const absl::string_view message = status.message();
    if (absl::StrContains(message, secret)) {
      absl::Status out(status.code(), absl::StrReplaceAll(message, {{secret, "[redacted]"}}));
      status.ForEachPayload([&out](absl::string_view type_url, const absl::Cord& payload) {
        out.SetPayload(type_url, payload);
      });
      status = std::move(out);
    }
    if (auto info = GetErrorInfo(status)) {
      for (const auto& [key, value] : info->metadata()) {
        if (absl::StrContains(value, secret)) {
          AddErrorMetadata(status, key, absl::StrReplaceAll(value, {{secret, "[redacted]"}}));
        }
      }
    }
  }
  return status;
}

}  // namespace

absl::StatusOr<AccessToken> ParseTokenResponse(const http::HttpResponse& response, absl::Time now) {
  const int status = response.status;
  if (status >= 200 && status < 300) return Issued(response, now);
  if (status == 400 || status == 401) return Rejected(response);

  std::map<std::string, std::string> metadata = {{"http_status", absl::StrCat(status)}};
  absl::Status error;
  if (status == 429) {
    error = MakeError(absl::StatusCode::kResourceExhausted,
                      "token endpoint is throttling requests (HTTP 429)",
                      "TOKEN_ENDPOINT_THROTTLED", metadata);
  } else if (status >= 500 && status < 600) {
    error = MakeError(absl::StatusCode::kUnavailable,
                      absl::StrCat("token endpoint is unavailable (HTTP ", status, ")"),
                      "TOKEN_ENDPOINT_UNAVAILABLE", metadata);
  } else {
    error = MakeError(
        absl::StatusCode::kUnavailable,
        absl::StrCat("token endpoint answered HTTP ", status, "; check AZURE_AUTHORITY_HOST"),
        "TOKEN_ENDPOINT_UNEXPECTED_STATUS", metadata);
  }
  if (auto delay = ParseRetryAfter(response.Header("Retry-After"), now)) {
    SetRetryDelay(error, *delay);
  }
  return error;
}

absl::Status ConfigurationError(const std::string& setting, const std::string& problem) {
  return MakeError(absl::StatusCode::kInvalidArgument, absl::StrCat(setting, " ", problem),
                   "INVALID_CONFIGURATION", {{"setting", setting}});
}

absl::Status NormalizeTokenEndpointOptions(TokenEndpointOptions& options) {
  if (absl::StripAsciiWhitespace(options.authority_host).empty()) {
    options.authority_host = kDefaultAuthorityHost;
  }
  auto authority = region::NormalizeHttpsUrl(options.authority_host, "AZURE_AUTHORITY_HOST",
                                             /*allow_path=*/false);
  if (!authority.ok()) return authority.status();
  options.authority_host = *std::move(authority);

  options.tenant_id = std::string(absl::StripAsciiWhitespace(options.tenant_id));
  if (options.tenant_id.empty()) return ConfigurationError("AZURE_TENANT_ID", "is empty");
  for (char c : options.tenant_id) {
    if (!IsTenantChar(c)) {
      return ConfigurationError(
          "AZURE_TENANT_ID",
          "must be a tenant id (GUID) or a domain name (letters, digits, '.', '-')");
    }
  }
  options.client_id = std::string(absl::StripAsciiWhitespace(options.client_id));
  if (options.client_id.empty()) return ConfigurationError("AZURE_CLIENT_ID", "is empty");
  return absl::OkStatus();
}

std::string TokenUrl(const TokenEndpointOptions& options) {
  return absl::StrCat(options.authority_host, "/", options.tenant_id, "/oauth2/v2.0/token");
}

absl::StatusOr<std::unique_ptr<TokenEndpointClient>> TokenEndpointClient::Create(
    TokenEndpointOptions options, ClientAuthSource client_auth, http::HttpTransport& transport,
    Clock& clock, Scheduler* scheduler) {
  if (absl::Status valid = NormalizeTokenEndpointOptions(options); !valid.ok()) return valid;
  if (client_auth == nullptr) {
    return absl::InvalidArgumentError("TokenEndpointClient: no client authentication given");
  }
  return std::unique_ptr<TokenEndpointClient>(new TokenEndpointClient(
      std::move(options), std::move(client_auth), transport, clock, scheduler));
}

struct TokenEndpointClient::Shared {
  Shared(std::string token_url, std::string client_id, ClientAuthSource client_auth,
         http::HttpTransport& transport, Clock& clock, Scheduler* scheduler)
      : token_url(std::move(token_url)),
        client_id(std::move(client_id)),
        client_auth(std::move(client_auth)),
        transport(transport),
        clock(clock),
        scheduler(scheduler) {}

  const std::string token_url;
  const std::string client_id;
  // Used only while `alive` (the client exists, so they do too): by the
  // first attempt from GetToken, and by retries while counted in `sending`.
  const ClientAuthSource client_auth;
  http::HttpTransport& transport;
  Clock& clock;
  Scheduler* const scheduler;  // nullptr: no retries

  absl::Mutex mu;
  bool alive ABSL_GUARDED_BY(mu) = true;
  // Retries handing their request to the transport on the scheduler's thread.
  int sending ABSL_GUARDED_BY(mu) = 0;
  // Requests waiting on the scheduler for their next attempt, by task id.
  // Whoever takes a fetch out of here (its task, or the destructor) is the
  // one that goes on with it.
  std::map<Scheduler::TaskId, std::shared_ptr<Fetch>> waiting ABSL_GUARDED_BY(mu);
};

// Fetch is one GetToken call: its attempts, one at a time, until `done`.
// Kept alive by whatever will run next (the transport's callback or the
// scheduler's task), not by the client.
class TokenEndpointClient::Fetch : public std::enable_shared_from_this<Fetch> {
 public:
  Fetch(std::shared_ptr<Shared> shared, std::string scope, absl::Time deadline,
        TokenCredential::Callback done)
      : shared_(std::move(shared)),
        scope_(std::move(scope)),
        deadline_(deadline),
        done_(std::move(done)) {}

  // Send makes one attempt, with client auth fresh from the source. Only
  // while the client exists.
  void Send() {
    // expires_in counts from when Entra issued the token: dating it from the
    // request's start errs on the safe side.
    const absl::Time sent = shared_->clock.Now();
    absl::StatusOr<ClientAuth> auth = shared_->client_auth(shared_->token_url, sent);
    if (!auth.ok()) return Finish(auth.status());
    // Every attempt's secrets stay redacted from whichever error ends the fetch.
    secrets_.insert(secrets_.end(), auth->secrets.begin(), auth->secrets.end());

    std::vector<std::pair<std::string, std::string>> fields = {{"grant_type", "client_credentials"},
                                                               {"client_id", shared_->client_id}};
    for (auto& field : auth->fields) fields.push_back(std::move(field));
    fields.emplace_back("scope", scope_);

    http::HttpRequest request;
    request.method = "POST";
    request.url = shared_->token_url;
    request.endpoint = "token";
    request.headers = {{"Content-Type", "application/x-www-form-urlencoded"},
                       {"Accept", "application/json"}};
    request.body = http::FormEncode(fields);
    request.deadline = deadline_;
    ++attempts_;
    shared_->transport.Send(std::move(request), [self = shared_from_this(), sent](
                                                    absl::StatusOr<http::HttpResponse> response) {
      self->OnAnswer(sent, std::move(response));
    });
  }

  // Finish calls `done` with `result`; errors are redacted and, when retries
  // are on, count the attempts. What `done` captured is released here, on
  // the thread that answers, not whenever the last task holding the fetch
  // happens to be destroyed.
  void Finish(absl::StatusOr<AccessToken> result) {
    if (!result.ok()) {
      absl::Status error = Redacted(result.status(), secrets_);
      if (shared_->scheduler != nullptr) {
        AddErrorMetadata(error, "attempts", absl::StrCat(attempts_));
      }
      result = std::move(error);
    }
    TokenCredential::Callback done = std::move(done_);
    std::move(done)(std::move(result));
  }

  // FinishWithLastError ends a fetch whose retry will not happen.
  void FinishWithLastError() { Finish(last_error_); }

 private:
  void OnAnswer(absl::Time sent, absl::StatusOr<http::HttpResponse> response) {
    absl::StatusOr<AccessToken> token =
        response.ok() ? ParseTokenResponse(*response, sent) : Prefixed(response.status());
    if (token.ok() || shared_->scheduler == nullptr) return Finish(std::move(token));
    const bool retryable = response.ok() ? RetryableStatus(response->status)
                                         : RetryableTransportError(response.status());
    if (!retryable || attempts_ > kMaxRetries) return Finish(std::move(token));
    last_error_ = token.status();
    {
      absl::MutexLock lock(&shared_->mu);
      if (shared_->alive) {
        const absl::Time now = shared_->clock.Now();
        absl::optional<absl::Duration> wait;
        if (response.ok()) wait = ParseRetryAfter(response->Header("Retry-After"), now);
        const absl::Time when =
            now + (wait.has_value() ? *wait : BackoffDelay(attempts_, TokenBackoff()));
        if (when + kMinAttemptTime <= deadline_) {
          // The task cannot run before this lock is released.
          task_id_ =
              shared_->scheduler->RunAt(when, [self = shared_from_this()] { self->Retry(); });
          shared_->waiting.emplace(task_id_, shared_from_this());
          return;
        }
      }
    }
    FinishWithLastError();
  }

  // Retry runs on the scheduler's thread: the next attempt, unless the
  // destructor has taken this fetch out of `waiting` (and answered it).
  void Retry() {
    {
      absl::MutexLock lock(&shared_->mu);
      // Still waiting means the client is alive: the destructor empties
      // `waiting` when it marks the client dead.
      if (shared_->waiting.erase(task_id_) == 0) return;
      ++shared_->sending;
    }
    Send();
    absl::MutexLock lock(&shared_->mu);
    --shared_->sending;
  }

  const std::shared_ptr<Shared> shared_;
  const std::string scope_;
  const absl::Time deadline_;
  TokenCredential::Callback done_;
  // Attempts run one after another (each starts after the previous answer),
  // so these need no lock of their own; task_id_ is written and read under
  // shared_->mu.
  int attempts_ = 0;  // requests handed to the transport
  absl::Status last_error_;
  std::vector<std::string> secrets_;
  Scheduler::TaskId task_id_ = 0;
};

TokenEndpointClient::TokenEndpointClient(TokenEndpointOptions options, ClientAuthSource client_auth,
                                         http::HttpTransport& transport, Clock& clock,
                                         Scheduler* scheduler)
    : options_(std::move(options)),
      token_url_(auth::TokenUrl(options_)),
      shared_(std::make_shared<Shared>(token_url_, options_.client_id, std::move(client_auth),
                                       transport, clock, scheduler)) {}

TokenEndpointClient::~TokenEndpointClient() {
  std::map<Scheduler::TaskId, std::shared_ptr<Fetch>> waiting;
  {
    absl::MutexLock lock(&shared_->mu);
    shared_->alive = false;
    waiting.swap(shared_->waiting);
    // A retry inside transport.Send still needs the transport (and the
    // client auth source), and its answer may come inside that Send.
    shared_->mu.Await(absl::Condition(
        +[](int* sending) { return *sending == 0; }, &shared_->sending));
  }
  // These fetches are ours now: a task the scheduler has already started
  // finds its fetch gone from `waiting` and does nothing.
  for (auto& [id, fetch] : waiting) {
    shared_->scheduler->Cancel(id);
    fetch->FinishWithLastError();
  }
}

void TokenEndpointClient::GetToken(const TokenRequestContext& context,
                                   TokenCredential::Callback done) {
  if (context.scopes.empty()) {
    std::move(done)(MakeError(absl::StatusCode::kInvalidArgument,
                              "token request: no scope requested", "INVALID_CONFIGURATION"));
    return;
  }
  // The fetch owns what it needs (not `this`), so a transport answering late
  // never touches a dead object.
  std::make_shared<Fetch>(shared_, absl::StrJoin(context.scopes, " "), context.deadline,
                          std::move(done))
      ->Send();
}

}  // namespace defender::auth
