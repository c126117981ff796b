#include "adapters/auth/managed_identity_credential.h"

#include "adapters/auth/json_fields.h"

#include <cmath>
#include <map>
#include <memory>
#include <string>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/string_view.h"
#include "absl/strings/strip.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "absl/types/optional.h"
#include "adapters/common/error.h"
#include "adapters/common/retry.h"
#include "nlohmann/json.hpp"

namespace defender::auth {
namespace {

using nlohmann::json;

constexpr char kImdsTokenPath[] = "/metadata/identity/oauth2/token";
constexpr char kImdsApiVersion[] = "2018-02-01";
constexpr char kAppServiceApiVersion[] = "2019-08-01";
constexpr char kDefaultScopeSuffix[] = "/.default";

constexpr char kUnavailable[] = "MANAGED_IDENTITY_UNAVAILABLE";
constexpr char kRejected[] = "MANAGED_IDENTITY_REJECTED";
constexpr char kThrottled[] = "MANAGED_IDENTITY_THROTTLED";
constexpr char kEndpointError[] = "MANAGED_IDENTITY_ENDPOINT_ERROR";
constexpr char kBadTokenResponse[] = "BAD_TOKEN_RESPONSE";

// Retries (with a scheduler): at most this many after the first attempt...
constexpr int kMaxRetries = 4;
// ...each starting at least this long before the caller's deadline.
constexpr absl::Duration kMinAttemptTime = absl::Milliseconds(100);

// IMDS asks for exponential backoff; its answers come within milliseconds,
// so the first pause is short.
BackoffPolicy ManagedIdentityBackoff() {
  return {.initial = absl::Milliseconds(200), .multiplier = 2.0, .max = absl::Seconds(5)};
}

// RetryableStatus: what IMDS documents as worth another try (404: the
// identity is not there yet; 410: IMDS is being updated; 429; 5xx).
bool RetryableStatus(int status) {
  return status == 404 || status == 410 || status == 429 || (status >= 500 && status < 600);
}

std::string Metadata(const absl::Status& status, const std::string& key) {
  auto info = GetErrorInfo(status);
  if (!info) return "";
  auto it = info->metadata().find(key);
  return it == info->metadata().end() ? "" : it->second;
}

// NothingListens: the transport found no server at the endpoint. Either the
// connection was refused or unreachable, or connecting timed out before the
// request went out (IMDS's link-local address off Azure often just drops
// packets). An endpoint that exists answers within milliseconds.
bool NothingListens(const absl::Status& status) {
  const std::string reason = ErrorReason(status);
  if (reason == "UPSTREAM_CONNECT_FAILED") return true;
  // "curl_code" tells a connect timeout from a deadline that passed before
  // the transport even tried.
  return reason == "UPSTREAM_TIMEOUT" && Metadata(status, "request_sent") == "false" &&
         !Metadata(status, "curl_code").empty();
}

// RetryableTransportError: faults after which the request, which changes
// nothing, may simply be sent again.
bool RetryableTransportError(const absl::Status& status) {
  const std::string reason = ErrorReason(status);
  return reason == "UPSTREAM_CONNECTION_LOST" || reason == "UPSTREAM_TIMEOUT";
}

absl::Status ConfigError(const std::string& setting, absl::string_view problem) {
  return MakeError(absl::StatusCode::kInvalidArgument, absl::StrCat(setting, " ", problem),
                   "INVALID_CONFIGURATION", {{"setting", setting}});
}

bool IsHostChar(char c) {
  return absl::ascii_isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '-' || c == '_' ||
         c == ':' || c == '[' || c == ']';
}

// ValidateEndpoint checks that `raw` is an absolute http(s) URL with a host,
// without user info or fragment (nor query when `imds`), and returns it
// trimmed, its scheme in lower case (and for IMDS without trailing '/').
// Errors name `setting`, never the value.
absl::StatusOr<std::string> ValidateEndpoint(const std::string& raw, const std::string& setting,
                                             bool imds) {
  std::string url(absl::StripAsciiWhitespace(raw));
  for (char c : url) {
    const auto u = static_cast<unsigned char>(c);
    if (u <= 0x20 || u >= 0x7f) {
      return ConfigError(setting, "must be a URL without blanks or control characters");
    }
  }
  const size_t scheme_end = url.find("://");
  if (scheme_end == std::string::npos) {
    return ConfigError(setting, "must be an absolute URL starting with http:// or https://");
  }
  const std::string scheme = absl::AsciiStrToLower(url.substr(0, scheme_end));
  if (scheme != "http" && scheme != "https") {
    return ConfigError(setting, "must use http or https");
  }
  url.replace(0, scheme_end, scheme);
  if (url.find('#') != std::string::npos) {
    return ConfigError(setting, "must not have a fragment ('#')");
  }
  if (imds && url.find('?') != std::string::npos) {
    return ConfigError(setting, "must not have a query string ('?')");
  }
  const size_t host_start = scheme_end + 3;
  const size_t host_end = url.find_first_of("/?", host_start);
  const absl::string_view authority = absl::string_view(url).substr(
      host_start, host_end == std::string::npos ? absl::string_view::npos : host_end - host_start);
  if (authority.find('@') != absl::string_view::npos) {
    return ConfigError(setting, "must not contain user info ('user@')");
  }
  if (authority.empty() || authority.front() == ':') {
    return ConfigError(setting, "must name a host (http://host[:port])");
  }
  for (char c : authority) {
    if (!IsHostChar(c)) return ConfigError(setting, "has an invalid host");
  }
  if (imds) {
    while (url.size() > host_start && url.back() == '/') url.pop_back();
  }
  return url;
}

using internal::NumberField;
using internal::StringField;

// Printable is internal::Printable with surrounding blanks dropped.
std::string Printable(absl::string_view text, size_t max) {
  return std::string(absl::StripAsciiWhitespace(internal::Printable(text, max)));
}

// ExpiresOn reads `expires_on`: unix seconds (number or string), or the date
// App Service's 2017 API sent ("11/03/2021 20:17:41 +00:00", month first).
absl::optional<absl::Time> ExpiresOn(const json& body) {
  double seconds = 0;
  if (NumberField(body, "expires_on", seconds)) {
    if (seconds < 0) return absl::nullopt;
    return absl::FromUnixSeconds(0) + absl::Seconds(seconds);
  }
  const std::string text(absl::StripAsciiWhitespace(StringField(body, "expires_on")));
  if (text.empty()) return absl::nullopt;
  for (const char* format : {"%m/%d/%Y %H:%M:%S %Ez", "%m/%d/%Y %I:%M:%S %p %Ez"}) {
    absl::Time when;
    std::string error;
    if (absl::ParseTime(format, text, absl::UTCTimeZone(), &when, &error)) return when;
  }
  return absl::nullopt;
}

// Target describes where a credential asks, for its messages.
struct Target {
  std::string endpoint;  // token URL without per-request parameters
  bool app_service = false;
  bool user_assigned = false;

  std::string Name() const {
    return app_service ? "the managed identity endpoint (IDENTITY_ENDPOINT)"
                       : "the managed identity endpoint (IMDS)";
  }
};

// HintFor says what to fix after a rejection, or "".
std::string HintFor(const Target& target, int status) {
  if (status == 400) {
    if (target.user_assigned) {
      return "check AZURE_CLIENT_ID: it must be the client id of a user-assigned managed "
             "identity that is assigned to this resource";
    }
    return "this resource has no system-assigned managed identity: enable one, or set "
           "AZURE_CLIENT_ID to the client id of a user-assigned identity assigned to it";
  }
  if (target.app_service) {
    return "check IDENTITY_HEADER: it must be the value the platform set for this process, "
           "together with its IDENTITY_ENDPOINT";
  }
  return "";
}

// ErrorFields reads the error and its description from the shapes managed
// identity endpoints use: OAuth ({"error", "error_description"}), App
// Service ({"statusCode", "message", "correlationId"}) and nested
// ({"error": {"code", "message"}}).
struct ErrorFields {
  std::string error;
  std::string description;
  std::string correlation_id;
};

ErrorFields ReadErrorFields(const std::string& body_text) {
  json body = json::parse(body_text, nullptr, /*allow_exceptions=*/false);
  if (!body.is_object()) body = json::object();
  ErrorFields fields;
  fields.error = StringField(body, "error");
  fields.description = StringField(body, "error_description");
  auto nested = body.find("error");
  if (nested != body.end() && nested->is_object()) {
    fields.error = StringField(*nested, "code");
    if (fields.description.empty()) fields.description = StringField(*nested, "message");
  }
  if (fields.description.empty()) fields.description = StringField(body, "message");
  if (fields.description.empty()) fields.description = StringField(body, "Message");
  fields.correlation_id = StringField(body, "correlationId");
  if (fields.correlation_id.empty()) fields.correlation_id = StringField(body, "correlation_id");
  fields.error = Printable(fields.error, 64);
  fields.description = Printable(fields.description, 300);
  fields.correlation_id = Printable(fields.correlation_id, 64);
  return fields;
}

absl::Status Rejected(const Target& target, const http::HttpResponse& response) {
  const ErrorFields fields = ReadErrorFields(response.body);
  std::string message =
      absl::StrCat(target.Name(), " rejected the token request (HTTP ", response.status, ")");
  if (!fields.error.empty()) absl::StrAppend(&message, ": ", fields.error);
  if (!fields.description.empty()) {
    absl::StrAppend(&message, fields.error.empty() ? ": " : " (", fields.description,
                    fields.error.empty() ? "" : ")");
  }
  if (!fields.correlation_id.empty()) {
    absl::StrAppend(&message, "; correlation id ", fields.correlation_id);
  }
  const std::string hint = HintFor(target, response.status);
  if (!hint.empty()) absl::StrAppend(&message, ". Hint: ", hint);
  absl::StrAppend(&message, ".");

  std::map<std::string, std::string> metadata = {{"http_status", absl::StrCat(response.status)}};
  if (!fields.error.empty()) metadata["error"] = fields.error;
  if (!fields.correlation_id.empty()) metadata["correlation_id"] = fields.correlation_id;
  return MakeError(absl::StatusCode::kUnauthenticated, message, kRejected, metadata);
}

absl::StatusOr<AccessToken> Issued(const Target& target, const http::HttpResponse& response,
                                   absl::Time sent) {
  const std::map<std::string, std::string> metadata = {
      {"http_status", absl::StrCat(response.status)}};
  const json body = json::parse(response.body, nullptr, /*allow_exceptions=*/false);
  if (!body.is_object()) {
    return MakeError(
        absl::StatusCode::kInternal,
        absl::StrCat(target.Name(), " answered with something that is not a JSON object"),
        kBadTokenResponse, metadata);
  }
  AccessToken token;
  token.token = StringField(body, "access_token");
  if (token.token.empty()) {
    return MakeError(absl::StatusCode::kInternal,
                     absl::StrCat(target.Name(), "'s answer has no access_token"),
                     kBadTokenResponse, metadata);
  }
  double seconds = 0;
  if (NumberField(body, "expires_in", seconds) && seconds >= 0) {
    token.expires_on = sent + absl::Seconds(seconds);
  } else if (absl::optional<absl::Time> expires_on = ExpiresOn(body)) {
    token.expires_on = *expires_on;
  } else {
    return MakeError(
        absl::StatusCode::kInternal,
        absl::StrCat(target.Name(), "'s answer has no usable expires_in or expires_on"),
        kBadTokenResponse, metadata);
  }
  return token;
}

// ParseAnswer turns an HTTP answer into a token or an error, per the header.
absl::StatusOr<AccessToken> ParseAnswer(const Target& target, const http::HttpResponse& response,
                                        absl::Time sent, absl::Time now) {
  const int status = response.status;
  if (status >= 200 && status < 300) return Issued(target, response, sent);
  if (status == 400 || status == 401 || status == 403) return Rejected(target, response);

  const std::map<std::string, std::string> metadata = {{"http_status", absl::StrCat(status)}};
  absl::Status error;
  if (status == 429) {
    error = MakeError(absl::StatusCode::kResourceExhausted,
                      absl::StrCat(target.Name(), " is throttling token requests (HTTP 429)"),
                      kThrottled, metadata);
  } else {
    std::string message = absl::StrCat(target.Name(), " answered HTTP ", status);
    if (status == 410) absl::StrAppend(&message, " (IMDS is being updated; try again shortly)");
    const ErrorFields fields = ReadErrorFields(response.body);
    if (!fields.description.empty()) absl::StrAppend(&message, ": ", fields.description);
    error = MakeError(absl::StatusCode::kUnavailable, message, kEndpointError, metadata);
  }
  if (auto delay = ParseRetryAfter(response.Header("Retry-After"), now)) {
    SetRetryDelay(error, *delay);
  }
  return error;
}

absl::Status NotOnAzure(const Target& target, const absl::Status& transport_error) {
  return MakeError(absl::StatusCode::kUnavailable,
                   absl::StrCat("no managed identity endpoint at ", target.endpoint,
                                " (not running on Azure?): ", transport_error.message()),
                   kUnavailable, {{"cause", ErrorReason(transport_error)}});
}

// Prefixed returns `status` with a prefix before its message, payloads kept.
absl::Status Prefixed(const absl::Status& status) {
  absl::Status out(status.code(),
                   absl::StrCat("managed identity token request: ", status.message()));
  status.ForEachPayload([&out](absl::string_view type_url, const absl::Cord& payload) {
    out.SetPayload(type_url, payload);
  });
  return out;
}

// Redacted replaces every occurrence of `secret` in the message and ErrorInfo
// metadata of `status`. Nothing above should ever echo it; this is the last
// guard before the status leaves the credential.
absl::Status Redacted(absl::Status status, const std::string& secret) {
  if (status.ok() || secret.empty()) return status;
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
  return status;
}

}  // namespace

absl::StatusOr<AccessToken> ParseManagedIdentityResponse(const http::HttpResponse& response,
                                                         bool app_service, bool user_assigned,
                                                         absl::Time sent, absl::Time now) {
  Target target;
  target.app_service = app_service;
  target.user_assigned = user_assigned;
  return ParseAnswer(target, response, sent, now);
}

absl::StatusOr<std::unique_ptr<ManagedIdentityCredential>> ManagedIdentityCredential::Create(
    ManagedIdentityCredentialOptions options, http::HttpTransport& transport, Clock& clock,
    Scheduler* scheduler) {
  options.client_id = std::string(absl::StripAsciiWhitespace(options.client_id));
  for (char c : options.client_id) {
    const auto u = static_cast<unsigned char>(c);
    if (u < 0x20 || u == 0x7f) return ConfigError("AZURE_CLIENT_ID", "holds control characters");
  }
  options.identity_endpoint = std::string(absl::StripAsciiWhitespace(options.identity_endpoint));
  options.identity_header = std::string(absl::StripAsciiWhitespace(options.identity_header));

  const bool app_service = !options.identity_endpoint.empty();
  std::string endpoint;
  if (app_service) {
    auto url = ValidateEndpoint(options.identity_endpoint, "IDENTITY_ENDPOINT", /*imds=*/false);
    if (!url.ok()) return url.status();
    options.identity_endpoint = *url;
    endpoint = *std::move(url);
    if (options.identity_header.empty()) {
      return ConfigError("IDENTITY_HEADER", "is empty but IDENTITY_ENDPOINT is set");
    }
    for (char c : options.identity_header) {
      const auto u = static_cast<unsigned char>(c);
      if (u < 0x20 || u == 0x7f) return ConfigError("IDENTITY_HEADER", "holds control characters");
    }
  } else {
    options.identity_header.clear();  // never sent to IMDS
    if (absl::StripAsciiWhitespace(options.imds_endpoint).empty()) {
      options.imds_endpoint = ManagedIdentityCredentialOptions().imds_endpoint;
    }
    auto url = ValidateEndpoint(options.imds_endpoint, "AZURE_POD_IDENTITY_AUTHORITY_HOST",
                                /*imds=*/true);
    if (!url.ok()) return url.status();
    options.imds_endpoint = *std::move(url);
    endpoint = absl::StrCat(options.imds_endpoint, kImdsTokenPath);
  }
  return std::unique_ptr<ManagedIdentityCredential>(new ManagedIdentityCredential(
      std::move(options), app_service, std::move(endpoint), transport, clock, scheduler));
}

struct ManagedIdentityCredential::Shared {
  Shared(http::HttpTransport& transport, Clock& clock, Scheduler* scheduler, Target target,
         std::string secret)
      : transport(transport),
        clock(clock),
        scheduler(scheduler),
        target(std::move(target)),
        secret(std::move(secret)) {}

  // Used only while `alive` (the credential exists, so they do too).
  http::HttpTransport& transport;
  Clock& clock;
  Scheduler* const scheduler;  // nullptr: no retries
  const Target target;
  const std::string secret;  // the identity header, to redact it from errors

  absl::Mutex mu;
  bool alive ABSL_GUARDED_BY(mu) = true;
  // Retries handing their request to the transport on the scheduler's thread.
  int sending ABSL_GUARDED_BY(mu) = 0;
  // Requests waiting on the scheduler for their next attempt, by task id.
  std::map<Scheduler::TaskId, std::shared_ptr<Fetch>> waiting ABSL_GUARDED_BY(mu);
};

// Fetch is one GetToken call: its attempts, one at a time, until `done`.
// Kept alive by whatever will run next (the transport's callback or the
// scheduler's task), not by the credential.
class ManagedIdentityCredential::Fetch : public std::enable_shared_from_this<Fetch> {
 public:
  Fetch(std::shared_ptr<Shared> shared, http::HttpRequest request, Callback done)
      : shared_(std::move(shared)), request_(std::move(request)), done_(std::move(done)) {}

  // Send makes one attempt. Only while the credential exists.
  void Send() {
    ++attempts_;
    // expires_in counts from when the token was issued: dating it from the
    // request's start errs on the safe side.
    const absl::Time sent = shared_->clock.Now();
    shared_->transport.Send(
        request_, [self = shared_from_this(), sent](absl::StatusOr<http::HttpResponse> response) {
          self->OnAnswer(sent, std::move(response));
        });
  }

  // Finish calls `done` with `result`; errors are redacted and say where and
  // how often the credential asked.
  void Finish(absl::StatusOr<AccessToken> result) {
    if (!result.ok()) {
      absl::Status error = Redacted(result.status(), shared_->secret);
      AddErrorMetadata(error, "endpoint", shared_->target.endpoint);
      AddErrorMetadata(error, "attempts", absl::StrCat(attempts_));
      result = std::move(error);
    }
    std::move(done_)(std::move(result));
  }

  // FinishWithLastError ends a fetch whose retry will not happen.
  void FinishWithLastError() { Finish(last_error_); }

 private:
  void OnAnswer(absl::Time sent, absl::StatusOr<http::HttpResponse> response) {
    absl::StatusOr<AccessToken> token;
    bool retryable = false;
    if (response.ok()) {
      token = ParseAnswer(shared_->target, *response, sent, shared_->clock.Now());
      retryable = RetryableStatus(response->status);
    } else if (NothingListens(response.status())) {
      token = NotOnAzure(shared_->target, response.status());
    } else {
      token = Prefixed(response.status());
      retryable = RetryableTransportError(response.status());
    }
    if (token.ok() || shared_->scheduler == nullptr || !retryable || attempts_ > kMaxRetries) {
      return Finish(std::move(token));
    }
    last_error_ = token.status();
    {
      absl::MutexLock lock(&shared_->mu);
      if (shared_->alive) {
        const absl::Time now = shared_->clock.Now();
        absl::optional<absl::Duration> wait;
        if (response.ok()) wait = ParseRetryAfter(response->Header("Retry-After"), now);
        const absl::Time when =
            now + (wait.has_value() ? *wait : BackoffDelay(attempts_, ManagedIdentityBackoff()));
        if (when + kMinAttemptTime <= request_.deadline) {
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
  // credential has gone meanwhile.
  void Retry() {
    bool alive;
    {
      absl::MutexLock lock(&shared_->mu);
      shared_->waiting.erase(task_id_);
      alive = shared_->alive;
      if (alive) ++shared_->sending;
    }
    if (!alive) return FinishWithLastError();
    Send();
    absl::MutexLock lock(&shared_->mu);
    --shared_->sending;
  }

  const std::shared_ptr<Shared> shared_;
  const http::HttpRequest request_;  // sent as is by every attempt
  Callback done_;
  // Attempts run one after another (each starts after the previous answer),
  // so these need no lock of their own; task_id_ is written and read under
  // shared_->mu.
  int attempts_ = 0;
  absl::Status last_error_;
  Scheduler::TaskId task_id_ = 0;
};

ManagedIdentityCredential::ManagedIdentityCredential(ManagedIdentityCredentialOptions options,
                                                     bool app_service, std::string endpoint,
                                                     http::HttpTransport& transport, Clock& clock,
                                                     Scheduler* scheduler)
    : options_(std::move(options)),
      app_service_(app_service),
      endpoint_(std::move(endpoint)),
      shared_(std::make_shared<Shared>(transport, clock, scheduler,
                                       Target{.endpoint = endpoint_,
                                              .app_service = app_service_,
                                              .user_assigned = !options_.client_id.empty()},
                                       options_.identity_header)) {}

ManagedIdentityCredential::~ManagedIdentityCredential() {
  std::map<Scheduler::TaskId, std::shared_ptr<Fetch>> waiting;
  {
    absl::MutexLock lock(&shared_->mu);
    shared_->alive = false;
    waiting.swap(shared_->waiting);
    // A retry inside transport.Send still needs the transport.
    shared_->mu.Await(absl::Condition(
        +[](int* sending) { return *sending == 0; }, &shared_->sending));
  }
  // A task that could not be cancelled is running: it sees `alive` false and
  // finishes its fetch itself.
  for (auto& [id, fetch] : waiting) {
    if (shared_->scheduler->Cancel(id)) fetch->FinishWithLastError();
  }
}

void ManagedIdentityCredential::GetToken(const TokenRequestContext& context, Callback done) {
  if (context.scopes.size() != 1) {
    std::move(done)(
        MakeError(absl::StatusCode::kInvalidArgument,
                  absl::StrCat("managed identity token request: exactly one scope is needed (got ",
                               context.scopes.size(), ")"),
                  "INVALID_CONFIGURATION", {{"scopes", absl::StrCat(context.scopes.size())}}));
    return;
  }
  absl::string_view resource = absl::StripAsciiWhitespace(context.scopes.front());
  absl::ConsumeSuffix(&resource, kDefaultScopeSuffix);
  if (resource.empty()) {
    std::move(done)(MakeError(absl::StatusCode::kInvalidArgument,
                              "managed identity token request: the scope names no resource",
                              "INVALID_CONFIGURATION"));
    return;
  }

  http::HttpRequest request;
  request.method = "GET";
  request.endpoint = "managed_identity";
  if (app_service_) {
    const char separator = endpoint_.find('?') == std::string::npos ? '?' : '&';
    request.url =
        absl::StrCat(endpoint_, std::string(1, separator), "api-version=", kAppServiceApiVersion);
    request.headers = {{"X-IDENTITY-HEADER", options_.identity_header}};
  } else {
    request.url = absl::StrCat(endpoint_, "?api-version=", kImdsApiVersion);
    request.headers = {{"Metadata", "true"}};
  }
  absl::StrAppend(&request.url, "&resource=", http::UrlEscape(resource));
  if (!options_.client_id.empty()) {
    absl::StrAppend(&request.url, "&client_id=", http::UrlEscape(options_.client_id));
  }
  request.deadline = context.deadline;
  // A managed identity endpoint is local to the machine or its platform; a
  // proxy would at best be refused (IMDS rejects forwarded requests) and at
  // worst see the token.
  request.no_proxy = true;
  // The fetch owns what it needs (not `this`), so a transport answering late
  // never touches a dead object.
  std::make_shared<Fetch>(shared_, std::move(request), std::move(done))->Send();
}

}  // namespace defender::auth
