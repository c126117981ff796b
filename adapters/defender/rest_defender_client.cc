#include "adapters/defender/rest_defender_client.h"

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/cord.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "adapters/common/error.h"
#include "adapters/common/retry.h"
#include "adapters/defender/entities.h"
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

// JsonBody writes a request body. UTF-8 goes out as it is (no \u escapes).
// Callers pass valid UTF-8 (gRPC validates proto strings); should an invalid
// byte slip through, it becomes U+FFFD rather than an exception.
std::string JsonBody(const json& body) {
  return body.dump(-1, ' ', /*ensure_ascii=*/false, json::error_handler_t::replace);
}

// kPermissionHint says what a 403 usually means for this plugin.
constexpr char kPermissionHint[] =
    "the app registration needs the application permissions Machine.StopAndQuarantine and "
    "Machine.Read.All (or Machine.ReadWrite.All) on WindowsDefenderATP, with admin consent";

}  // namespace

// Request is one kind of HTTP exchange a call makes.
struct Request {
  enum class Purpose { kMain, kLookup };
  Purpose purpose = Purpose::kMain;
  std::string operation;  // names the rate budget and messages
  std::string method;
  std::string url;
  std::string body;  // JSON; empty for GET
  bool idempotent = true;
};

// Reply is how a call ends well: the 2xx answer to its own request or, for
// StopAndQuarantineFile, the action (read from that answer, or found by a
// lookup). The public methods read it into what their callers expect.
struct Reply {
  int http_status = 0;  // of the answer; 0 when a lookup found the action
  std::string body;
  std::optional<MachineAction> action;
  int attempts = 0;  // HTTP requests the call sent, lookups included
};
using ReplyCallback = absl::AnyInvocable<void(absl::StatusOr<Reply>) &&>;

namespace {

// ReadingReply adapts `done` to a call's ReplyCallback: `read` parses the body
// of the 2xx answer (unless the call already holds the action); its error gets
// the call's "http_status" and "attempts".
template <typename T>
ReplyCallback ReadingReply(absl::StatusOr<T> (*read)(absl::string_view),
                           absl::AnyInvocable<void(absl::StatusOr<T>) &&> done) {
  return [read, done = std::move(done)](absl::StatusOr<Reply> reply) mutable {
    if (!reply.ok()) return std::move(done)(reply.status());
    if constexpr (std::is_same_v<T, MachineAction>) {
      if (reply->action) return std::move(done)(*std::move(reply->action));
    }
    absl::StatusOr<T> value = read(reply->body);
    if (!value.ok()) {
      absl::Status error = value.status();
      AddErrorMetadata(error, "http_status", absl::StrCat(reply->http_status));
      AddErrorMetadata(error, "attempts", absl::StrCat(reply->attempts));
      return std::move(done)(std::move(error));
    }
    std::move(done)(std::move(value));
  };
}

}  // namespace

// Call is one API call in flight. Its steps run one after another (each
// started by the previous one's callback), so only the fields touched by the
// cancellation callback need the lock.
struct RestDefenderClient::Call {
  RestDefenderClient* client = nullptr;
  Request main;
  CallContext context;
  ReplyCallback done;

  // For StopAndQuarantineFile: what finds the action in a lookup, and whether
  // to look for it before the first POST (maybe_sent_since).
  bool creates_action = false;
  bool look_first = false;
  std::string machine_id, sha1, comment;

  std::atomic<bool> finished{false};
  int attempts = 0;             // HTTP requests sent, of any kind
  int main_attempts = 0;        // of them, the call's own request (not lookups)
  int retries = 0;              // backoff retries so far
  bool token_refreshed = false;  // the one new token after a 401 was used
  bool maybe_created = false;   // a POST may have reached Defender, not found since
  bool post_uncertain = false;  // some POST of this call may have reached Defender
  bool already_running = false;  // Defender said ActiveRequestAlreadyExists
  absl::Time first_sent = absl::InfiniteFuture();
  absl::Status last_error;

  absl::Mutex mu;
  Scheduler::TaskId timer ABSL_GUARDED_BY(mu) = 0;
  Cancellation::CallbackId cancel_callback = 0;
};

// Runner drives calls: one static function per step.
class RestDefenderClient::Runner {
 public:
  using CallPtr = std::shared_ptr<Call>;

  // NewCall prepares a call of `client` sending `main`; Begin starts it.
  static CallPtr NewCall(RestDefenderClient* client, Request main, const CallContext& context,
                         ReplyCallback done) {
    auto call = std::make_shared<Call>();
    call->client = client;
    call->main = std::move(main);
    call->context = context;
    call->done = std::move(done);
    return call;
  }

  static void Begin(CallPtr call) {
    if (call->context.cancellation) {
      std::weak_ptr<Call> weak = call;
      call->cancel_callback = call->context.cancellation->OnCancel([weak] {
        if (CallPtr locked = weak.lock()) OnCancelled(locked);
      });
    }
    if (call->look_first) return LookUp(std::move(call));
    Request main = call->main;
    Attempt(std::move(call), std::move(main), /*rejected_token=*/"");
  }

 private:
  static RestDefenderClient& Client(const CallPtr& call) { return *call->client; }
  static absl::Time Now(const CallPtr& call) { return Client(call).clock_.Now(); }
  static bool Cancelled(const CallPtr& call) {
    return call->context.cancellation && call->context.cancellation->IsCancelled();
  }

  // Finish hands `result` to the caller, once.
  static void Finish(const CallPtr& call, absl::StatusOr<Reply> result) {
    if (call->finished.exchange(true)) return;
    if (call->context.cancellation) call->context.cancellation->Forget(call->cancel_callback);
    std::move(call->done)(std::move(result));
  }

  // FinishWithAnswer hands the 2xx answer to the call's own request over.
  static void FinishWithAnswer(const CallPtr& call, int http_status, std::string body) {
    Reply reply;
    reply.http_status = http_status;
    reply.body = std::move(body);
    reply.attempts = call->attempts;
    Finish(call, std::move(reply));
  }

  // FinishWithAction hands the action of a StopAndQuarantineFile over.
  static void FinishWithAction(const CallPtr& call, MachineAction action) {
    Reply reply;
    reply.action = std::move(action);
    reply.attempts = call->attempts;
    Finish(call, std::move(reply));
  }

  // LookupError is what a failed lookup reports: the fault that made the
  // POST's outcome unknown, or, for a lookup before any POST (look_first),
  // the lookup's own `error`.
  static absl::Status LookupError(const CallPtr& call, absl::Status error) {
    return call->last_error.ok() ? std::move(error) : call->last_error;
  }

  // Fail finishes with `error`, adding what the call did.
  static void Fail(const CallPtr& call, absl::Status error) {
    if (call->attempts > 0) AddErrorMetadata(error, "attempts", absl::StrCat(call->attempts));
    if (call->maybe_created) {
      AddErrorMetadata(error, "outcome", "unknown");
      error = WithMessage(error, absl::StrCat(error.message(),
                                              "; the action may have been created: look for it "
                                              "before trying again"));
    }
    Finish(call, std::move(error));
  }

  static absl::Status CancelledError(const CallPtr& call) {
    absl::Status error = MakeError(absl::StatusCode::kCancelled,
                                   absl::StrCat(call->main.operation, " cancelled by the caller"),
                                   "CANCELLED");
    return error;
  }

  static void OnCancelled(const CallPtr& call) {
    Scheduler::TaskId timer = 0;
    {
      absl::MutexLock lock(&call->mu);
      std::swap(timer, call->timer);
    }
    // A pending backoff is dropped here; a step in flight (rate slot, HTTP)
    // is stopped by the limiter or transport, which see the same flag.
    if (timer != 0 && Client(call).options_.scheduler->Cancel(timer)) {
      Fail(call, CancelledError(call));
    }
  }

  // Attempt sends `request` once a rate slot and a token are there.
  static void Attempt(CallPtr call, Request request, std::string rejected_token) {
    if (call->finished) return;
    if (Cancelled(call)) return Fail(call, CancelledError(call));
    RestDefenderClient& client = Client(call);
    if (request.purpose == Request::Purpose::kMain &&
        call->main_attempts >= client.options_.max_attempts) {
      return Fail(call, call->last_error);
    }
    auto after_slot = [call, request, rejected_token = std::move(rejected_token)](
                          absl::Status slot) mutable {
      if (!slot.ok()) return Fail(call, std::move(slot));
      GetTokenAndSend(std::move(call), std::move(request), std::move(rejected_token));
    };
    if (client.options_.limiter == nullptr) return after_slot(absl::OkStatus());
    client.options_.limiter->Acquire(absl::StrCat(client.options_.tenant, "/", request.operation),
                                     call->context.deadline, call->context.cancellation,
                                     std::move(after_slot));
  }

  static void GetTokenAndSend(CallPtr call, Request request, std::string rejected_token) {
    RestDefenderClient& client = Client(call);
    auth::TokenRequestContext context;
    context.scopes = {client.options_.scope};
    context.deadline = call->context.deadline;
    context.rejected_token = std::move(rejected_token);
    client.credential_.GetToken(
        context, [call, request = std::move(request)](
                     absl::StatusOr<auth::AccessToken> token) mutable {
          // A token fault passes through as the credential reports it, unless
          // an earlier POST's outcome is what the caller must hear about.
          if (!token.ok()) {
            return call->maybe_created ? Fail(call, LookupError(call, token.status()))
                                       : Finish(call, token.status());
          }
          if (Cancelled(call)) return Fail(call, CancelledError(call));
          Send(std::move(call), std::move(request), std::move(token->token));
        });
  }

  static void Send(CallPtr call, Request request, std::string token) {
    RestDefenderClient& client = Client(call);
    const absl::Time now = Now(call);
    http::HttpRequest http;
    http.method = request.method;
    http.url = request.url;
    http.endpoint = request.operation;
    http.headers.emplace_back("Authorization", absl::StrCat("Bearer ", token));
    http.headers.emplace_back("Accept", "application/json");
    if (!request.body.empty()) {
      http.headers.emplace_back("Content-Type", "application/json");
      http.body = request.body;
    }
    // One attempt gets at most attempt_timeout; a POST whose outcome may stay
    // unknown leaves a third of the time (up to 5 s) to look for its action.
    absl::Time deadline = std::min(call->context.deadline, now + client.options_.attempt_timeout);
    if (!request.idempotent) {
      const absl::Duration left = call->context.deadline - now;
      deadline = std::min(deadline, now + left - std::min(left / 3, absl::Seconds(5)));
    }
    http.deadline = deadline;
    http.idempotent = request.idempotent;
    http.cancellation = call->context.cancellation;
    ++call->attempts;
    if (request.purpose == Request::Purpose::kMain) ++call->main_attempts;
    if (!request.idempotent && call->first_sent == absl::InfiniteFuture()) call->first_sent = now;
    client.transport_.Send(std::move(http), [call, request = std::move(request),
                                             token = std::move(token)](
                                                absl::StatusOr<http::HttpResponse> answer) mutable {
      OnAnswer(std::move(call), std::move(request), std::move(token), std::move(answer));
    });
  }

  static bool IsTransientTransportError(const absl::Status& status) {
    const std::string reason = ErrorReason(status);
    return reason == "UPSTREAM_CONNECT_FAILED" || reason == "UPSTREAM_CONNECTION_LOST" ||
           reason == "UPSTREAM_TIMEOUT";
  }

  static bool RequestMayHaveBeenSent(const absl::Status& status) {
    auto info = GetErrorInfo(status);
    if (!info) return true;
    auto it = info->metadata().find("request_sent");
    return it == info->metadata().end() || it->second != "false";
  }

  static void OnAnswer(CallPtr call, Request request, std::string token,
                       absl::StatusOr<http::HttpResponse> answer) {
    if (call->finished) return;
    if (Cancelled(call)) return Fail(call, CancelledError(call));
    // A lookup's own faults are retried like any read, but what the caller
    // finally hears about is the fault that made the outcome unknown.
    const bool lookup = request.purpose == Request::Purpose::kLookup;
    if (!answer.ok()) {
      absl::Status error = Redact(
          WithMessage(answer.status(), absl::StrCat("Defender ", request.operation, " request: ",
                                                    answer.status().message())),
          token);
      if (!IsTransientTransportError(error)) {
        return Fail(call, lookup ? LookupError(call, std::move(error)) : std::move(error));
      }
      if (!request.idempotent && RequestMayHaveBeenSent(error)) {
        call->maybe_created = call->post_uncertain = true;
        call->last_error = std::move(error);
        return LookUp(std::move(call));
      }
      // (Read `call` before it is moved from: argument order is unspecified.)
      absl::Status retry_error = lookup ? LookupError(call, std::move(error)) : std::move(error);
      return RetryLater(std::move(call), std::move(request), std::move(retry_error));
    }
    const int status = answer->status;
    if (status >= 200 && status < 300) {
      if (call->context.trace) call->context.trace->RecordAnswer(status, "");
      if (lookup) return OnLookupAnswer(std::move(call), *answer);
      if (!call->creates_action) {
        return FinishWithAnswer(call, status, std::move(answer->body));
      }
      absl::StatusOr<MachineAction> action = ParseMachineAction(answer->body);
      if (!action.ok()) {
        absl::Status error = action.status();
        AddErrorMetadata(error, "http_status", absl::StrCat(status));
        if (!request.idempotent) {
          // Created, but unreadable: the lookup can still find it.
          call->maybe_created = call->post_uncertain = true;
          call->last_error = std::move(error);
          return LookUp(std::move(call));
        }
        return Fail(call, std::move(error));
      }
      return FinishWithAction(call, *std::move(action));
    }
    if (status == 401 && !call->token_refreshed) {
      // The token was refused (revoked, expired early): a new one, once.
      call->token_refreshed = true;
      return Attempt(std::move(call), std::move(request), std::move(token));
    }
    absl::Status error = Redact(MapDefenderError(*answer, Now(call)), token);
    if (call->context.trace) {
      call->context.trace->RecordAnswer(status, ErrorMetadata(error, "tracking_id"));
    }
    if (status == 429) {
      // Throttled: come back when Defender says, if the deadline allows.
      const absl::Duration wait = GetRetryDelay(error).value_or(kDefaultRetryAfter);
      call->last_error = lookup ? LookupError(call, std::move(error)) : std::move(error);
      if (!ScheduleAttempt(call, Now(call) + wait, request)) Fail(call, call->last_error);
      return;
    }
    if (status >= 500 && status < 600) {
      if (!request.idempotent) {
        // A gateway error can hide an action that was created.
        call->maybe_created = call->post_uncertain = true;
        call->last_error = std::move(error);
        return LookUp(std::move(call));
      }
      absl::Status retry_error = lookup ? LookupError(call, std::move(error)) : std::move(error);
      return RetryLater(std::move(call), std::move(request), std::move(retry_error));
    }
    if (lookup) return Fail(call, LookupError(call, std::move(error)));
    if (status == 400 && call->creates_action &&
        ErrorReason(error) == "ACTION_ALREADY_RUNNING") {
      // The same action is pending on the device: find it. After a fault it
      // is most likely this call's own action, which is then the answer.
      call->already_running = true;
      call->last_error = std::move(error);
      return LookUp(std::move(call));
    }
    Fail(call, std::move(error));
  }

  // RetryLater retries `request` after a backoff, or fails with `error` when
  // no scheduler, no attempts or no time is left.
  static void RetryLater(CallPtr call, Request request, absl::Status error) {
    RestDefenderClient& client = Client(call);
    call->last_error = std::move(error);
    ++call->retries;
    absl::Duration pause = BackoffDelay(call->retries, client.options_.backoff);
    if (auto hinted = GetRetryDelay(call->last_error)) pause = std::max(pause, *hinted);
    if ((request.purpose == Request::Purpose::kMain &&
         call->main_attempts >= client.options_.max_attempts) ||
        !ScheduleAttempt(call, Now(call) + pause, std::move(request))) {
      Fail(call, call->last_error);
    }
  }

  // ScheduleAttempt arranges Attempt(request) at `when`; false when that
  // leaves no time for the attempt before the deadline (or nothing can wait).
  static bool ScheduleAttempt(const CallPtr& call, absl::Time when, Request request) {
    RestDefenderClient& client = Client(call);
    if (client.options_.scheduler == nullptr) return false;
    if (when + kMinAttemptTime > call->context.deadline) return false;
    {
      absl::MutexLock lock(&call->mu);
      call->timer = client.options_.scheduler->RunAt(
          when, [call, request = std::move(request)]() mutable {
            {
              absl::MutexLock lock(&call->mu);
              call->timer = 0;
            }
            Attempt(std::move(call), std::move(request), /*rejected_token=*/"");
          });
    }
    // A cancellation that came just before the timer was set stops it now.
    if (Cancelled(call)) OnCancelled(call);
    return true;
  }

  // LookUp asks Defender for the StopAndQuarantineFile actions on the machine
  // created since shortly before this call's first POST (or the caller's
  // maybe_sent_since, when earlier).
  static void LookUp(CallPtr call) {
    RestDefenderClient& client = Client(call);
    Request lookup;
    lookup.purpose = Request::Purpose::kLookup;
    lookup.operation = "ListMachineActions";
    lookup.method = "GET";
    const absl::Time since =
        std::max(std::min(call->first_sent, Now(call)) - kClockSkew, absl::UnixEpoch());
    std::string filter = absl::StrCat("machineId eq '", call->machine_id,
                                      "' and type eq 'StopAndQuarantineFile'");
    if (!call->already_running) {
      absl::StrAppend(&filter, " and creationDateTimeUtc ge ", FormatDefenderTime(since));
    }
    lookup.url = absl::StrCat(client.options_.api_base_url,
                              "/api/machineactions?$filter=", http::UrlEscape(filter));
    Attempt(std::move(call), std::move(lookup), /*rejected_token=*/"");
  }

  static void OnLookupAnswer(CallPtr call, const http::HttpResponse& answer) {
    absl::StatusOr<std::vector<MachineAction>> actions = ParseMachineActionList(answer.body);
    if (!actions.ok()) {
      absl::Status error = actions.status();
      AddErrorMetadata(error, "http_status", absl::StrCat(answer.status));
      return Fail(call, LookupError(call, std::move(error)));
    }
    // The newest action for the same file with the same comment.
    const MachineAction* match = nullptr;
    for (const MachineAction& action : *actions) {
      if (!absl::EqualsIgnoreCase(action.file_identifier, call->sha1)) continue;
      if (action.requestor_comment != call->comment && !call->already_running) continue;
      if (call->already_running && action.IsFinal()) continue;
      if (match == nullptr || action.creation_time > match->creation_time) match = &action;
    }
    if (call->already_running) {
      if (match != nullptr && call->post_uncertain && match->requestor_comment == call->comment) {
        return FinishWithAction(call, *match);  // our own earlier attempt created it
      }
      absl::Status error = call->last_error;
      if (match != nullptr) AddErrorMetadata(error, "existing_action_id", match->id);
      call->maybe_created = false;  // Defender says what exists; nothing unknown
      return Fail(call, std::move(error));
    }
    if (match != nullptr) return FinishWithAction(call, *match);
    // Not created: sending it (again) is safe. A lookup before the first POST
    // (look_first) is followed by that POST at once.
    call->maybe_created = false;
    if (call->main_attempts == 0) {
      Request main = call->main;
      return Attempt(std::move(call), std::move(main), /*rejected_token=*/"");
    }
    Request main = call->main;
    absl::Status error = call->last_error;
    RetryLater(std::move(call), std::move(main), std::move(error));
  }

  static constexpr absl::Duration kMinAttemptTime = absl::Milliseconds(100);
  // How far Defender's clock may be behind ours when filtering on creation time.
  static constexpr absl::Duration kClockSkew = absl::Minutes(5);
};

RestDefenderClient::RestDefenderClient(RestDefenderClientOptions options,
                                       auth::TokenCredential& credential,
                                       http::HttpTransport& transport)
    : options_(std::move(options)),
      credential_(credential),
      transport_(transport),
      clock_(options_.clock != nullptr ? *options_.clock : Clock::Real()) {
  while (absl::EndsWith(options_.api_base_url, "/")) options_.api_base_url.pop_back();
}

void RestDefenderClient::StopAndQuarantineFile(const StopAndQuarantineFileParams& params,
                                               const CallContext& context, ActionCallback done) {
  Request main;
  main.operation = "StopAndQuarantineFile";
  main.method = "POST";
  main.idempotent = false;
  main.url = absl::StrCat(options_.api_base_url, "/api/machines/",
                          http::UrlEscape(params.machine_id), "/StopAndQuarantineFile");
  json body = json::object();
  body["Comment"] = params.comment;
  body["Sha1"] = params.sha1;
  main.body = JsonBody(body);
  auto call = Runner::NewCall(this, std::move(main), context,
                              ReadingReply(&ParseMachineAction, std::move(done)));
  call->creates_action = true;
  call->machine_id = params.machine_id;
  call->sha1 = params.sha1;
  call->comment = params.comment;
  if (params.maybe_sent_since != absl::InfiniteFuture()) {
    // An earlier request may have created the action: as after a POST whose
    // outcome is unknown, look for it before sending.
    call->look_first = true;
    call->maybe_created = call->post_uncertain = true;
    call->first_sent = params.maybe_sent_since;
  }
  Runner::Begin(std::move(call));
}

void RestDefenderClient::GetMachineAction(const std::string& action_id,
                                          const CallContext& context, ActionCallback done) {
  Request main;
  main.operation = "GetMachineAction";
  main.method = "GET";
  main.url =
      absl::StrCat(options_.api_base_url, "/api/machineactions/", http::UrlEscape(action_id));
  Runner::Begin(Runner::NewCall(this, std::move(main), context,
                                ReadingReply(&ParseMachineAction, std::move(done))));
}

void RestDefenderClient::CancelMachineAction(const std::string& action_id,
                                             const std::string& comment,
                                             const CallContext& context, ActionCallback done) {
  Request main;
  main.operation = "CancelMachineAction";
  main.method = "POST";
  main.idempotent = true;  // cancelling twice is harmless: retried like a read
  main.url = absl::StrCat(options_.api_base_url, "/api/machineactions/",
                          http::UrlEscape(action_id), "/cancel");
  json body = json::object();
  body["Comment"] = comment;
  main.body = JsonBody(body);
  Runner::Begin(Runner::NewCall(this, std::move(main), context,
                                ReadingReply(&ParseMachineAction, std::move(done))));
}

void RestDefenderClient::GetFile(const std::string& hash, const CallContext& context,
                                 FileCallback done) {
  Request main;
  main.operation = "GetFile";
  main.method = "GET";
  main.url = absl::StrCat(options_.api_base_url, "/api/files/", http::UrlEscape(hash));
  Runner::Begin(Runner::NewCall(this, std::move(main), context,
                                ReadingReply(&ParseFileInfo, std::move(done))));
}

void RestDefenderClient::FindMachinesByDnsName(const std::string& computer_dns_name,
                                               const CallContext& context,
                                               MachinesCallback done) {
  // OData string literal: a single quote inside is written twice.
  const std::string filter = absl::StrCat(
      "computerDnsName eq '", absl::StrReplaceAll(computer_dns_name, {{"'", "''"}}), "'");
  Request main;
  main.operation = "ListMachines";
  main.method = "GET";
  main.url = absl::StrCat(options_.api_base_url, "/api/machines?$filter=", http::UrlEscape(filter));
  Runner::Begin(Runner::NewCall(this, std::move(main), context,
                                ReadingReply(&ParseMachineList, std::move(done))));
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
  absl::optional<absl::Duration> retry_after;
  if (status == 429 || code == absl::StatusCode::kUnavailable) {
    const std::string header = response.Header("Retry-After");
    retry_after = ParseRetryAfter(header, now);
    if (!retry_after && !header.empty() &&
        std::all_of(header.begin(), header.end(),
                    [](char c) { return absl::ascii_isdigit(static_cast<unsigned char>(c)); })) {
      retry_after = kMaxRetryAfter;  // more seconds than fit in a number: a long wait
    }
    if (status == 429 && !retry_after) retry_after = kDefaultRetryAfter;
    if (retry_after && *retry_after > kMaxRetryAfter) retry_after = kMaxRetryAfter;
  }
  if (retry_after) {
    metadata["retry_after_seconds"] = absl::StrCat(absl::ToInt64Seconds(*retry_after));
  }
  absl::Status result = MakeError(code, text, reason, metadata);
  if (retry_after) SetRetryDelay(result, *retry_after);
  return result;
}

}  // namespace defender::api
