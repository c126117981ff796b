#include "adapters/defender/rest_defender_client.h"

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/cord.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/string_view.h"
#include "absl/time/clock.h"
#include "adapters/common/error.h"
#include "nlohmann/json.hpp"

namespace defender::api {
namespace {

using json = nlohmann::json;

// kMaxDefenderMessage bounds how much of Defender's error message is kept.
constexpr size_t kMaxDefenderMessage = 300;
// kMaxDefenderCode bounds Defender's error code and tracking id.
constexpr size_t kMaxDefenderCode = 100;
// kDefaultRetryAfter applies to a 429 without a readable Retry-After.
constexpr absl::Duration kDefaultRetryAfter = absl::Seconds(60);
// kMaxRetryAfter caps an absurd Retry-After.
constexpr absl::Duration kMaxRetryAfter = absl::Hours(24);
// kMinRedactedTokenLength: shorter "tokens" (test values) are not scrubbed
// from messages, as they would match ordinary text.
constexpr size_t kMinRedactedTokenLength = 16;

// DefenderErrorBody is what Defender's {"error": {...}} says, each part ""
// when absent.
struct DefenderErrorBody {
  std::string code;
  std::string message;
  std::string target;
};

// JsonString returns object[key] when it is a string, else "".
std::string JsonString(const json& object, const char* key) {
  auto it = object.find(key);
  if (it == object.end() || !it->is_string()) return std::string();
  return it->get<std::string>();
}

// ParseErrorBody reads {"error": {"code", "message", "target"}} leniently: an
// empty, HTML or otherwise foreign body gives an empty result. The message may
// also come in the OData form {"lang": ..., "value": "..."}.
DefenderErrorBody ParseErrorBody(const std::string& body) {
  DefenderErrorBody result;
  const json parsed = json::parse(body, nullptr, /*allow_exceptions=*/false);
  if (parsed.is_discarded() || !parsed.is_object()) return result;
  auto error = parsed.find("error");
  if (error == parsed.end() || !error->is_object()) return result;
  result.code = JsonString(*error, "code");
  result.target = JsonString(*error, "target");
  auto message = error->find("message");
  if (message != error->end()) {
    if (message->is_string()) {
      result.message = message->get<std::string>();
    } else if (message->is_object()) {
      result.message = JsonString(*message, "value");
    }
  }
  return result;
}

// Truncate shortens valid UTF-8 `text` to at most `max` bytes plus "...",
// without splitting a character (protobuf strings must stay valid UTF-8).
std::string Truncate(std::string text, size_t max) {
  if (text.size() <= max) return text;
  size_t end = max;
  while (end > 0 && (static_cast<unsigned char>(text[end]) & 0xC0) == 0x80) --end;
  text.resize(end);
  text.append("...");
  return text;
}

// ParseRetryAfter reads Retry-After as delay seconds or an HTTP-date
// (RFC 1123), relative to `now`. nullopt when absent or unreadable.
std::optional<absl::Duration> ParseRetryAfter(absl::string_view value, absl::Time now) {
  value = absl::StripAsciiWhitespace(value);
  if (value.empty()) return std::nullopt;
  bool all_digits = true;
  for (char c : value) all_digits = all_digits && absl::ascii_isdigit(static_cast<unsigned char>(c));
  if (all_digits) {
    uint64_t seconds = 0;
    if (!absl::SimpleAtoi(value, &seconds)) return kMaxRetryAfter;  // overflow: huge
    if (seconds > static_cast<uint64_t>(absl::ToInt64Seconds(kMaxRetryAfter))) {
      return kMaxRetryAfter;
    }
    return absl::Seconds(static_cast<int64_t>(seconds));
  }
  absl::Time date;
  std::string error;
  if (!absl::ParseTime("%a, %d %b %Y %H:%M:%S GMT", value, absl::UTCTimeZone(), &date,
                       &error) ||
      date == absl::InfiniteFuture() || date == absl::InfinitePast()) {
    return std::nullopt;
  }
  absl::Duration delay = date - now;
  if (delay < absl::ZeroDuration()) return absl::ZeroDuration();
  if (delay > kMaxRetryAfter) return kMaxRetryAfter;
  return delay;
}

// WithMessage returns `status` with `message`, keeping its code and payloads.
absl::Status WithMessage(const absl::Status& status, absl::string_view message) {
  absl::Status result(status.code(), message);
  status.ForEachPayload([&result](absl::string_view type_url, const absl::Cord& payload) {
    result.SetPayload(type_url, payload);
  });
  return result;
}

// Redact removes `token` from the message and ErrorInfo metadata of `status`,
// a last line of defence should a lower layer ever echo a request header.
absl::Status Redact(absl::Status status, const std::string& token) {
  if (status.ok() || token.size() < kMinRedactedTokenLength) return status;
  if (absl::StrContains(status.message(), token)) {
    status = WithMessage(status,
                         absl::StrReplaceAll(status.message(), {{token, "[redacted]"}}));
  }
  std::optional<google::rpc::ErrorInfo> info = GetErrorInfo(status);
  if (info) {
    for (const auto& [key, value] : info->metadata()) {
      if (absl::StrContains(value, token)) {
        AddErrorMetadata(status, key, absl::StrReplaceAll(value, {{token, "[redacted]"}}));
      }
    }
  }
  return status;
}

// kPermissionHint says what a 403 usually means for this plugin.
constexpr char kPermissionHint[] =
    "the app registration needs the application permissions Machine.StopAndQuarantine and "
    "Machine.Read.All (or Machine.ReadWrite.All) on WindowsDefenderATP, with admin consent";

}  // namespace

// Call is one API call in flight: what to send, and where the answer goes.
// Each step runs after the previous one finished (possibly on another
// thread), so it needs no lock.
struct RestDefenderClient::Call {
  std::string operation;  // for messages, e.g. "StopAndQuarantineFile"
  std::string method;
  std::string url;
  std::string body;  // JSON; empty for GET
  absl::Time deadline;
  ActionCallback done;
  int attempts = 0;  // HTTP requests sent so far

  // Finish hands `result` to the caller; called exactly once.
  void Finish(absl::StatusOr<MachineAction> result) { std::move(done)(std::move(result)); }
};

RestDefenderClient::RestDefenderClient(RestDefenderClientOptions options,
                                       auth::TokenCredential& credential,
                                       http::HttpTransport& transport)
    : options_(std::move(options)), credential_(credential), transport_(transport) {
  while (absl::EndsWith(options_.api_base_url, "/")) options_.api_base_url.pop_back();
}

void RestDefenderClient::StopAndQuarantineFile(const StopAndQuarantineFileParams& params,
                                               absl::Time deadline, ActionCallback done) {
  auto call = std::make_shared<Call>();
  call->operation = "StopAndQuarantineFile";
  call->method = "POST";
  call->url = absl::StrCat(options_.api_base_url, "/api/machines/",
                           http::UrlEscape(params.machine_id), "/StopAndQuarantineFile");
  json body = json::object();
  body["Comment"] = params.comment;
  body["Sha1"] = params.sha1;
  // UTF-8 goes out as it is (no \u escapes). Callers pass valid UTF-8 (gRPC
  // validates proto strings); should an invalid byte slip through, it becomes
  // U+FFFD rather than an exception.
  call->body = body.dump(-1, ' ', /*ensure_ascii=*/false, json::error_handler_t::replace);
  call->deadline = deadline;
  call->done = std::move(done);
  Start(std::move(call), /*rejected_token=*/"");
}

void RestDefenderClient::GetMachineAction(const std::string& action_id, absl::Time deadline,
                                          ActionCallback done) {
  auto call = std::make_shared<Call>();
  call->operation = "GetMachineAction";
  call->method = "GET";
  call->url =
      absl::StrCat(options_.api_base_url, "/api/machineactions/", http::UrlEscape(action_id));
  call->deadline = deadline;
  call->done = std::move(done);
  Start(std::move(call), /*rejected_token=*/"");
}

void RestDefenderClient::Start(std::shared_ptr<Call> call, std::string rejected_token) {
  auth::TokenRequestContext context;
  context.scopes = {options_.scope};
  context.deadline = call->deadline;
  context.rejected_token = std::move(rejected_token);
  credential_.GetToken(context, [this, call](absl::StatusOr<auth::AccessToken> token) {
    if (!token.ok()) {
      call->Finish(token.status());
      return;
    }
    Send(call, std::move(token->token));
  });
}

void RestDefenderClient::Send(std::shared_ptr<Call> call, std::string token) {
  http::HttpRequest request;
  request.method = call->method;
  request.url = call->url;
  request.headers.emplace_back("Authorization", absl::StrCat("Bearer ", token));
  request.headers.emplace_back("Accept", "application/json");
  if (call->method == "POST") {
    request.headers.emplace_back("Content-Type", "application/json");
    request.body = call->body;
  }
  request.deadline = call->deadline;
  ++call->attempts;
  transport_.Send(std::move(request), [this, call, token = std::move(token)](
                                          absl::StatusOr<http::HttpResponse> response) mutable {
    OnResponse(std::move(call), std::move(token), std::move(response));
  });
}

void RestDefenderClient::OnResponse(std::shared_ptr<Call> call, std::string token,
                                    absl::StatusOr<http::HttpResponse> response) {
  if (!response.ok()) {
    absl::Status error = WithMessage(
        response.status(),
        absl::StrCat("Defender ", call->operation, " request: ", response.status().message()));
    call->Finish(Redact(std::move(error), token));
    return;
  }
  const int status = response->status;
  if (status >= 200 && status < 300) {
    absl::StatusOr<MachineAction> action = ParseMachineAction(response->body);
    if (!action.ok()) {
      absl::Status error = action.status();
      AddErrorMetadata(error, "http_status", absl::StrCat(status));
      call->Finish(std::move(error));
      return;
    }
    call->Finish(std::move(action));
    return;
  }
  if (status == 401 && call->attempts == 1) {
    // The token was refused (revoked, expired early): force a new one, once.
    Start(std::move(call), std::move(token));
    return;
  }
  call->Finish(Redact(MapDefenderError(*response), token));
}

absl::Status MapDefenderError(const http::HttpResponse& response) {
  return MapDefenderError(response, absl::Now());
}

absl::Status MapDefenderError(const http::HttpResponse& response, absl::Time now) {
  const int status = response.status;
  DefenderErrorBody error = ParseErrorBody(response.body);
  error.code = Truncate(std::move(error.code), kMaxDefenderCode);
  error.target = Truncate(std::move(error.target), kMaxDefenderCode);
  const std::string message = Truncate(error.message, kMaxDefenderMessage);

  std::map<std::string, std::string> metadata = {{"http_status", absl::StrCat(status)}};
  if (!error.code.empty()) metadata["defender_code"] = error.code;
  if (!error.target.empty()) metadata["tracking_id"] = error.target;
  if (!message.empty()) metadata["defender_message"] = message;

  // "Defender answered 404 ResourceNotFound: <message> (tracking id <target>)"
  std::string text = absl::StrCat("Defender answered ", status);
  if (!error.code.empty()) absl::StrAppend(&text, " ", error.code);
  absl::StrAppend(&text, message.empty() ? " (no error details)" : absl::StrCat(": ", message));
  if (!error.target.empty()) absl::StrAppend(&text, " (tracking id ", error.target, ")");

  absl::StatusCode code = absl::StatusCode::kInternal;
  std::string reason = "DEFENDER_UNEXPECTED_STATUS";
  if (status == 400) {
    const bool precondition =
        error.code == "OsPlatformNotSupported" || error.code == "ClientVersionNotSupported";
    if (error.code == "ActiveRequestAlreadyExists" ||
        (!precondition &&
         absl::StrContains(absl::AsciiStrToLower(error.message), "already in progress"))) {
      code = absl::StatusCode::kAlreadyExists;
      reason = "ACTION_ALREADY_RUNNING";
      absl::StrAppend(&text, "; the same action is still pending on this device");
    } else if (precondition) {
      code = absl::StatusCode::kFailedPrecondition;
      reason = "DEFENDER_PRECONDITION_FAILED";
      absl::StrAppend(&text,
                      "; the device must run Windows 10 1703+ or Windows 11 with a current "
                      "Defender client");
    } else {
      code = absl::StatusCode::kInvalidArgument;
      reason = "DEFENDER_BAD_REQUEST";
    }
  } else if (status == 401) {
    code = absl::StatusCode::kUnauthenticated;
    reason = "DEFENDER_UNAUTHORIZED";
    absl::StrAppend(&text, "; Defender refused the access token, also a freshly issued one");
  } else if (status == 403) {
    code = absl::StatusCode::kPermissionDenied;
    reason = "DEFENDER_FORBIDDEN";
    if (error.code == "DisabledFeature") {
      absl::StrAppend(&text, "; a Defender feature this action needs is turned off for the "
                             "tenant");
    } else {
      absl::StrAppend(&text, "; ", kPermissionHint);
    }
  } else if (status == 404) {
    code = absl::StatusCode::kNotFound;
    reason = "DEFENDER_NOT_FOUND";
  } else if (status == 429) {
    code = absl::StatusCode::kResourceExhausted;
    reason = "DEFENDER_THROTTLED";
  } else if (status >= 500 && status < 600) {
    code = absl::StatusCode::kUnavailable;
    reason = "DEFENDER_UNAVAILABLE";
  } else if (status == 408) {
    code = absl::StatusCode::kUnavailable;
  }

  // Throttling always says when to come back (60 s when Defender did not);
  // an unavailable service only when it sent a Retry-After.
  std::optional<absl::Duration> retry_after;
  if (status == 429 || code == absl::StatusCode::kUnavailable) {
    retry_after = ParseRetryAfter(response.Header("Retry-After"), now);
    if (status == 429 && !retry_after) retry_after = kDefaultRetryAfter;
  }
  if (retry_after) {
    metadata["retry_after_seconds"] = absl::StrCat(absl::ToInt64Seconds(*retry_after));
  }
  absl::Status result = MakeError(code, text, reason, metadata);
  if (retry_after) SetRetryDelay(result, *retry_after);
  return result;
}

}  // namespace defender::api
