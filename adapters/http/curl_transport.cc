#include "adapters/http/curl_transport.h"

#include <curl/curl.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <deque>
#include <fstream>
#include <iterator>
#include <limits>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <unordered_map>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "adapters/common/cancellation.h"
#include "adapters/common/error.h"

namespace defender::http {
namespace {

constexpr char kConnectFailed[] = "UPSTREAM_CONNECT_FAILED";
constexpr char kTlsFailed[] = "UPSTREAM_TLS_FAILED";
constexpr char kTimeout[] = "UPSTREAM_TIMEOUT";
constexpr char kConnectionLost[] = "UPSTREAM_CONNECTION_LOST";
constexpr char kTooLarge[] = "UPSTREAM_RESPONSE_TOO_LARGE";
constexpr char kInvalidRequest[] = "INVALID_HTTP_REQUEST";
constexpr char kShutDown[] = "TRANSPORT_SHUT_DOWN";
constexpr char kCancelled[] = "REQUEST_CANCELLED";
constexpr char kInternal[] = "HTTP_TRANSPORT_INTERNAL";

// How long the loop sleeps at most when nothing happens. libcurl shortens the
// wait to its own next timeout, and Send wakes it up, so this only bounds how
// stale a missed wake-up could be.
constexpr int kMaxPollMs = 1000;

absl::Status GlobalInit() {
  static const CURLcode code = curl_global_init(CURL_GLOBAL_DEFAULT);
  if (code != CURLE_OK) {
    return absl::InternalError(
        absl::StrCat("libcurl initialisation failed: ", curl_easy_strerror(code)));
  }
  return absl::OkStatus();
}

std::string SentValue(bool sent) { return sent ? "true" : "false"; }

absl::Status TransportError(absl::StatusCode code, absl::string_view message,
                            absl::string_view reason, bool request_sent,
                            int curl_code = -1) {
  std::map<std::string, std::string> metadata = {{"request_sent", SentValue(request_sent)}};
  if (curl_code >= 0) metadata["curl_code"] = absl::StrCat(curl_code);
  return MakeError(code, message, reason, metadata);
}

// IsToken reports whether `s` is a valid HTTP method or header name (RFC 9110
// token).
bool IsToken(absl::string_view s) {
  if (s.empty()) return false;
  for (char c : s) {
    if (absl::ascii_isalnum(static_cast<unsigned char>(c))) continue;
    if (absl::string_view("!#$%&'*+-.^_`|~").find(c) == absl::string_view::npos) return false;
  }
  return true;
}

bool HasLineBreak(absl::string_view s) {
  return s.find_first_of(absl::string_view("\r\n\0", 3)) != absl::string_view::npos;
}

absl::Status CancelledError(bool request_sent) {
  return TransportError(absl::StatusCode::kCancelled,
                        "the request was cancelled before it completed", kCancelled, request_sent);
}

// Wakeup lets a Cancellation callback, which may run on any thread at any
// time (even after the transport is gone), wake the loop. Shared by the loop
// and the callbacks it registered.
class Wakeup {
 public:
  explicit Wakeup(CURLM* multi) : multi_(multi) {}

  // CancelRequested notes that some request's cancellation was raised and
  // wakes the loop; nothing once Detach ran.
  void CancelRequested() {
    absl::MutexLock lock(&mu_);
    if (multi_ == nullptr) return;
    cancel_pending_ = true;
    curl_multi_wakeup(multi_);
  }
  // TakeCancelPending reports (and clears) whether CancelRequested ran.
  bool TakeCancelPending() {
    absl::MutexLock lock(&mu_);
    return std::exchange(cancel_pending_, false);
  }
  // Detach stops wake-ups; called before the multi handle is cleaned up.
  void Detach() {
    absl::MutexLock lock(&mu_);
    multi_ = nullptr;
  }

 private:
  absl::Mutex mu_;
  CURLM* multi_ ABSL_GUARDED_BY(mu_);
  bool cancel_pending_ ABSL_GUARDED_BY(mu_) = false;
};

// Transfer is one request from Send to its callback. Owned by the loop.
struct Transfer {
  HttpRequest request;
  HttpTransport::Callback done;

  CURL* easy = nullptr;
  curl_slist* header_list = nullptr;
  HttpResponse response;
  size_t header_bytes = 0;
  size_t max_body_bytes = 0;
  size_t max_header_bytes = 0;
  bool too_large = false;
  // Set once libcurl has a connection to the server (TLS included) and is
  // about to write the request on it.
  bool connected = false;
  // libcurl wanted to send this non-idempotent request a second time (see
  // OnPrereq); the transfer was stopped instead.
  bool repeat_refused = false;
  // The callback registered on request.cancellation (0: none).
  Cancellation::CallbackId cancel_id = 0;
  char error[CURL_ERROR_SIZE] = {0};

  Transfer(HttpRequest r, HttpTransport::Callback d)
      : request(std::move(r)), done(std::move(d)) {}
  ~Transfer() {
    if (easy != nullptr) curl_easy_cleanup(easy);
    if (header_list != nullptr) curl_slist_free_all(header_list);
  }
  Transfer(const Transfer&) = delete;
  Transfer& operator=(const Transfer&) = delete;

  bool IsCancelled() const {
    return request.cancellation != nullptr && request.cancellation->IsCancelled();
  }

  // Complete calls `done` once with `result`.
  void Complete(absl::StatusOr<HttpResponse> result) {
    if (cancel_id != 0) request.cancellation->Forget(cancel_id);
    cancel_id = 0;
    if (done) std::move(done)(std::move(result));
    done = nullptr;
  }
};

size_t OnHeader(char* data, size_t size, size_t count, void* user) {
  auto* t = static_cast<Transfer*>(user);
  const size_t n = size * count;
  t->header_bytes += n;
  if (t->header_bytes > t->max_header_bytes) {
    t->too_large = true;
    return 0;  // != n: libcurl aborts the transfer
  }
  absl::string_view line(data, n);
  while (!line.empty() && (line.back() == '\n' || line.back() == '\r')) line.remove_suffix(1);
  if (line.empty()) return n;  // end of a header block
  if (absl::StartsWith(line, "HTTP/")) {
    // A new status line: an interim answer (100 Continue) or a proxy's
    // CONNECT answer came before; only the final block counts.
    t->response.headers.clear();
    t->header_bytes = n;
    return n;
  }
  if (line.front() == ' ' || line.front() == '\t') {
    // obs-fold: continues the previous field's value.
    if (!t->response.headers.empty()) {
      std::string& value = t->response.headers.back().second;
      absl::StrAppend(&value, value.empty() ? "" : " ", absl::StripAsciiWhitespace(line));
    }
    return n;
  }
  const size_t colon = line.find(':');
  if (colon == absl::string_view::npos) return n;  // not a field; ignore
  t->response.headers.emplace_back(
      std::string(absl::StripAsciiWhitespace(line.substr(0, colon))),
      std::string(absl::StripAsciiWhitespace(line.substr(colon + 1))));
  return n;
}

size_t OnBody(char* data, size_t size, size_t count, void* user) {
  auto* t = static_cast<Transfer*>(user);
  const size_t n = size * count;
  if (n > t->max_body_bytes - t->response.body.size()) {
    t->too_large = true;
    return 0;  // != n: libcurl aborts the transfer
  }
  t->response.body.append(data, n);
  return n;
}

// OnPrereq runs when a connection to the server (after any proxy tunnel and
// TLS handshake, new or reused) is ready and the request is about to be
// written. From then on the request may have reached the server. (Request
// byte counters would not do: they count a proxy's CONNECT request too.)
// A second call for one transfer is libcurl about to send the request again
// (Curl_retry_request: the reused connection closed before any answer byte,
// or an HTTP/2 stream was refused); a request that must not reach the server
// twice is stopped there, and fails with "request_sent" = "true".
int OnPrereq(void* user, char* /*primary_ip*/, char* /*local_ip*/, int /*primary_port*/,
             int /*local_port*/) {
  auto* t = static_cast<Transfer*>(user);
  if (t->connected && !t->request.idempotent) {
    t->repeat_refused = true;
    return CURL_PREREQFUNC_ABORT;
  }
  t->connected = true;
  return CURL_PREREQFUNC_OK;
}

// OnProgress aborts a transfer whose cancellation was raised. (The loop
// also removes such transfers as soon as the Cancellation callback wakes it;
// this covers the time until then.)
int OnProgress(void* user, curl_off_t /*dltotal*/, curl_off_t /*dlnow*/, curl_off_t /*ultotal*/,
               curl_off_t /*ulnow*/) {
  return static_cast<Transfer*>(user)->IsCancelled() ? 1 : 0;  // 1: CURLE_ABORTED_BY_CALLBACK
}

// Detail is curl's description of a failure: its error buffer, which names
// hosts, ports and TLS reasons but never request headers or bodies.
std::string Detail(CURLcode code, const char* error_buffer) {
  if (error_buffer != nullptr && error_buffer[0] != '\0') {
    return absl::StrCat(curl_easy_strerror(code), ": ", error_buffer);
  }
  return curl_easy_strerror(code);
}

// ErrorFor maps a failed transfer to the transport's error contract.
absl::Status ErrorFor(const Transfer& t, CURLcode code) {
  const int curl_code = static_cast<int>(code);
  const std::string detail = Detail(code, t.error);
  if (code == CURLE_ABORTED_BY_CALLBACK && t.IsCancelled()) return CancelledError(t.connected);
  if (code == CURLE_ABORTED_BY_CALLBACK && t.repeat_refused) {
    return TransportError(absl::StatusCode::kUnavailable,
                          "the connection to the server closed before an answer; the request "
                          "may have reached the server and was not sent again",
                          kConnectionLost, /*request_sent=*/true, curl_code);
  }
  if (t.too_large) {
    return TransportError(absl::StatusCode::kInternal,
                          "the server's answer is larger than this plugin accepts",
                          kTooLarge, /*request_sent=*/true, curl_code);
  }
  switch (code) {
    case CURLE_COULDNT_RESOLVE_PROXY:
    case CURLE_COULDNT_RESOLVE_HOST:
    case CURLE_COULDNT_CONNECT:
    case CURLE_PROXY:
      return TransportError(absl::StatusCode::kUnavailable,
                            absl::StrCat("could not connect to the server (", detail, ")"),
                            kConnectFailed, /*request_sent=*/false, curl_code);
    case CURLE_PEER_FAILED_VERIFICATION:
    case CURLE_SSL_CACERT_BADFILE:
    case CURLE_SSL_ISSUER_ERROR:
    case CURLE_SSL_PINNEDPUBKEYNOTMATCH:
    case CURLE_SSL_INVALIDCERTSTATUS:
    case CURLE_SSL_CRL_BADFILE:
      return TransportError(
          absl::StatusCode::kUnavailable,
          absl::StrCat("the server's TLS certificate was not trusted (", detail,
                       "); if the server uses a private CA, point DEFENDER_CA_FILE at it"),
          kTlsFailed, /*request_sent=*/false, curl_code);
    case CURLE_SSL_CONNECT_ERROR:
      // The handshake broke off (a reset, a proxy or load balancer dropping
      // the connection): a network fault that a retry may get past, and no
      // request byte went out. Untrusted certificates are
      // CURLE_PEER_FAILED_VERIFICATION above.
      return TransportError(
          absl::StatusCode::kUnavailable,
          absl::StrCat("the TLS handshake with the server did not complete (", detail, ")"),
          kConnectFailed, /*request_sent=*/false, curl_code);
    case CURLE_SSL_CERTPROBLEM:
    case CURLE_SSL_CIPHER:
    case CURLE_SSL_ENGINE_NOTFOUND:
    case CURLE_SSL_ENGINE_SETFAILED:
    case CURLE_SSL_ENGINE_INITFAILED:
    case CURLE_SSL_CLIENTCERT:
    case CURLE_USE_SSL_FAILED:
      return TransportError(
          absl::StatusCode::kUnavailable,
          absl::StrCat("the TLS handshake with the server failed (", detail,
                       "); if the server's certificate comes from a private CA, point "
                       "DEFENDER_CA_FILE at it"),
          kTlsFailed, /*request_sent=*/false, curl_code);
    case CURLE_OPERATION_TIMEDOUT:
      return TransportError(absl::StatusCode::kDeadlineExceeded,
                            absl::StrCat("the server did not answer in time (", detail, ")"),
                            kTimeout, t.connected, curl_code);
    case CURLE_URL_MALFORMAT:
    case CURLE_UNSUPPORTED_PROTOCOL:
    case CURLE_BAD_FUNCTION_ARGUMENT:
      return TransportError(absl::StatusCode::kInvalidArgument,
                            absl::StrCat("invalid HTTP request (", detail, ")"),
                            kInvalidRequest, /*request_sent=*/false, curl_code);
    default:
      // RECV_ERROR, SEND_ERROR, GOT_NOTHING, PARTIAL_FILE, HTTP2(_STREAM),
      // WEIRD_SERVER_REPLY, BAD_CONTENT_ENCODING and whatever else ends an
      // exchange without a complete answer. Before the connection to the
      // server was up (e.g. a proxy refused the tunnel), nothing was sent.
      if (!t.connected) {
        return TransportError(absl::StatusCode::kUnavailable,
                              absl::StrCat("could not connect to the server (", detail, ")"),
                              kConnectFailed, /*request_sent=*/false, curl_code);
      }
      return TransportError(
          absl::StatusCode::kUnavailable,
          absl::StrCat("the connection to the server broke before a complete answer (",
                       detail, ")"),
          kConnectionLost, t.connected, curl_code);
  }
}

absl::Status CheckRequest(const HttpRequest& request) {
  if (!IsToken(request.method)) {
    return TransportError(absl::StatusCode::kInvalidArgument,
                          "invalid HTTP request: the method is not an HTTP token",
                          kInvalidRequest, false);
  }
  if (HasLineBreak(request.url)) {
    return TransportError(absl::StatusCode::kInvalidArgument,
                          "invalid HTTP request: the URL holds a line break", kInvalidRequest,
                          false);
  }
  for (const auto& [name, value] : request.headers) {
    if (!IsToken(name) || HasLineBreak(value)) {
      // Neither the name nor the value goes into the message: a value may be
      // a credential.
      return TransportError(absl::StatusCode::kInvalidArgument,
                            "invalid HTTP request: a header name is not a token or a header "
                            "value holds a line break",
                            kInvalidRequest, false);
    }
  }
  return absl::OkStatus();
}

}  // namespace

class CurlTransport::Impl {
 public:
  explicit Impl(CurlTransportOptions options) : options_(std::move(options)) {}

  ~Impl() {
    Stop();
    // Easy handles are gone (the loop cleans them up before it exits), so
    // the share is no longer in use.
    if (wakeup_ != nullptr) wakeup_->Detach();
    if (multi_ != nullptr) curl_multi_cleanup(multi_);
    if (share_ != nullptr) curl_share_cleanup(share_);
  }

  // Stop ends the loop after completing everything with CANCELLED. Called
  // by ~CurlTransport while the object is still whole, since cancelled
  // callbacks may call Send.
  void Stop() {
    if (thread_.joinable()) {
      if (std::this_thread::get_id() == thread_.get_id()) {
        std::fprintf(stderr, "CurlTransport destroyed from its own callback\n");
        std::abort();
      }
      {
        absl::MutexLock lock(&mu_);
        stopping_ = true;
      }
      curl_multi_wakeup(multi_);
      thread_.join();
    }
    // Timers that have not run are dropped. Destroying one may call RunAt or
    // Cancel (a capture's destructor): destroy outside the lock, until
    // nothing is left.
    while (true) {
      scheduler_internal::TimerQueue::Tasks dropped;
      {
        absl::MutexLock lock(&mu_);
        dropped = timers_.TakeAll();
      }
      if (dropped.empty()) break;
    }
  }

  Scheduler::TaskId RunAt(absl::Time when, Scheduler::Task task) {
    bool earliest;
    Scheduler::TaskId id;
    {
      absl::MutexLock lock(&mu_);
      earliest = when < timers_.NextTime();
      id = timers_.Add(when, std::move(task));
    }
    // The loop may be asleep until a later time (or for kMaxPollMs).
    if (earliest) curl_multi_wakeup(multi_);
    return id;
  }

  bool Cancel(Scheduler::TaskId id) {
    Scheduler::Task removed;  // destroyed after the lock is released
    absl::MutexLock lock(&mu_);
    return timers_.Remove(id, &removed);
  }

  size_t PendingTimers() const {
    absl::MutexLock lock(&mu_);
    return timers_.size();
  }

  absl::Status Start() {
    multi_ = curl_multi_init();
    share_ = curl_share_init();
    if (multi_ == nullptr || share_ == nullptr) {
      return absl::InternalError("libcurl: cannot create the multi or share handle");
    }
    wakeup_ = std::make_shared<Wakeup>(multi_);
    // HTTP/2 multiplexing is on by default (CURLPIPE_MULTIPLEX).
    if (options_.max_connections_per_host > 0) {
      curl_multi_setopt(multi_, CURLMOPT_MAX_HOST_CONNECTIONS,
                        options_.max_connections_per_host);
    }
    // The multi handle already pools connections for its easy handles; the
    // share adds the TLS session cache (per easy handle otherwise) and the
    // DNS cache. Only the loop thread ever touches the easy handles and the
    // share (libcurl's resolver threads only run getaddrinfo; the loop thread
    // stores their results), so the share needs no lock callbacks.
    if (curl_share_setopt(share_, CURLSHOPT_SHARE, CURL_LOCK_DATA_SSL_SESSION) != CURLSHE_OK ||
        curl_share_setopt(share_, CURLSHOPT_SHARE, CURL_LOCK_DATA_DNS) != CURLSHE_OK) {
      return absl::InternalError("libcurl: cannot share TLS sessions and DNS");
    }
    thread_ = std::thread([this] { Loop(); });
    return absl::OkStatus();
  }

  void Send(HttpRequest request, Callback done) {
    {
      absl::MutexLock lock(&mu_);
      pending_.push_back(std::make_unique<Transfer>(std::move(request), std::move(done)));
    }
    curl_multi_wakeup(multi_);
  }

 private:
  void Loop() {
    for (;;) {
      std::deque<std::unique_ptr<Transfer>> incoming;
      bool stopping;
      {
        absl::MutexLock lock(&mu_);
        incoming.swap(pending_);
        stopping = stopping_;
      }
      if (stopping) {
        for (auto& t : incoming) Cancel(*t);
        incoming.clear();
        CancelAll();
        return;
      }
      for (auto& t : incoming) Start(std::move(t));
      if (wakeup_->TakeCancelPending()) CancelRequested();
      int running = 0;
      curl_multi_perform(multi_, &running);
      CollectFinished();
      const int wait_ms = RunDueTimers();
      if (curl_multi_poll(multi_, nullptr, 0, wait_ms, nullptr) != CURLM_OK) {
        // Cannot happen short of a broken process; never spin on it.
        absl::SleepFor(absl::Milliseconds(10));
      }
    }
  }

  // RunDueTimers runs every timer task that is due, outside the lock, and
  // returns how long the loop may sleep before the next one (at most
  // kMaxPollMs; libcurl shortens it further for its own timeouts).
  int RunDueTimers() {
    for (;;) {
      Scheduler::Task task;
      absl::Time next;
      {
        absl::MutexLock lock(&mu_);
        const absl::Time now = absl::Now();
        if (!timers_.PopDue(now, &task)) {
          next = timers_.NextTime();
          if (next == absl::InfiniteFuture()) return kMaxPollMs;
          const int64_t ms = absl::ToInt64Milliseconds(absl::Ceil(next - now, absl::Milliseconds(1)));
          return static_cast<int>(std::min<int64_t>(std::max<int64_t>(ms, 0), kMaxPollMs));
        }
      }
      std::move(task)();
      task = nullptr;  // destroy what it captured before taking the lock again
    }
  }

  // Start configures an easy handle for `t` and adds it to the multi handle,
  // or completes `t` at once with the reason it cannot start.
  void Start(std::unique_ptr<Transfer> t) {
    if (t->IsCancelled()) {
      t->Complete(CancelledError(/*request_sent=*/false));
      return;
    }
    if (absl::Status status = CheckRequest(t->request); !status.ok()) {
      t->Complete(std::move(status));
      return;
    }
    long timeout_ms = 0;  // 0 = no timeout for libcurl
    if (t->request.deadline != absl::InfiniteFuture()) {
      const absl::Duration left = t->request.deadline - absl::Now();
      if (left <= absl::ZeroDuration()) {
        t->Complete(TransportError(absl::StatusCode::kDeadlineExceeded,
                                   "the deadline passed before the request was sent", kTimeout,
                                   /*request_sent=*/false));
        return;
      }
      timeout_ms = static_cast<long>(
          std::max<int64_t>(1, absl::ToInt64Milliseconds(absl::Ceil(left, absl::Milliseconds(1)))));
    } else if (options_.default_timeout > absl::ZeroDuration()) {
      timeout_ms = static_cast<long>(std::max<int64_t>(
          1, std::min<int64_t>(absl::ToInt64Milliseconds(options_.default_timeout),
                               std::numeric_limits<long>::max())));
    }

    t->easy = curl_easy_init();
    if (t->easy == nullptr) {
      t->Complete(TransportError(absl::StatusCode::kInternal,
                                 "libcurl: cannot create an easy handle", kInternal,
                                 /*request_sent=*/false));
      return;
    }
    t->max_body_bytes = options_.max_response_bytes;
    t->max_header_bytes = options_.max_header_bytes;
    if (CURLcode code = Configure(*t, timeout_ms); code != CURLE_OK) {
      t->Complete(TransportError(absl::StatusCode::kInternal,
                                 absl::StrCat("libcurl rejected an option: ",
                                              curl_easy_strerror(code)),
                                 kInternal, /*request_sent=*/false, code));
      return;
    }
    if (CURLMcode code = curl_multi_add_handle(multi_, t->easy); code != CURLM_OK) {
      t->Complete(TransportError(
          absl::StatusCode::kInternal,
          absl::StrCat("libcurl: cannot start a transfer: ", curl_multi_strerror(code)),
          kInternal, /*request_sent=*/false));
      return;
    }
    Transfer* raw = t.get();
    if (raw->request.cancellation != nullptr) {
      // Runs at once if already cancelled; the loop then removes the transfer
      // at its next turn.
      raw->cancel_id = raw->request.cancellation->OnCancel(
          [wakeup = wakeup_] { wakeup->CancelRequested(); });
    }
    active_.emplace(raw, std::move(t));
  }

  CURLcode Configure(Transfer& t, long timeout_ms) {
    CURL* e = t.easy;
    const HttpRequest& r = t.request;
    CURLcode code = CURLE_OK;
    auto set = [&](CURLoption option, auto value) {
      if (code == CURLE_OK) code = curl_easy_setopt(e, option, value);
    };
    set(CURLOPT_PRIVATE, static_cast<void*>(&t));
    set(CURLOPT_URL, r.url.c_str());
    set(CURLOPT_PROTOCOLS_STR, "http,https");
    set(CURLOPT_FOLLOWLOCATION, 0L);
    set(CURLOPT_NOSIGNAL, 1L);
    set(CURLOPT_ERRORBUFFER, t.error);
    set(CURLOPT_SHARE, share_);

    // Method and body. The body stays owned by `t` for the whole transfer.
    if (r.method == "HEAD") {
      set(CURLOPT_NOBODY, 1L);
    } else if (r.method == "GET" && r.body.empty()) {
      set(CURLOPT_HTTPGET, 1L);
    } else if (!r.body.empty() || r.method == "POST" || r.method == "PUT" ||
               r.method == "PATCH") {
      set(CURLOPT_POST, 1L);
      set(CURLOPT_POSTFIELDSIZE_LARGE, static_cast<curl_off_t>(r.body.size()));
      set(CURLOPT_POSTFIELDS, r.body.data());
      if (r.method != "POST") set(CURLOPT_CUSTOMREQUEST, r.method.c_str());
    } else {
      set(CURLOPT_CUSTOMREQUEST, r.method.c_str());
    }

    // Headers. "Name;" sends an empty value ("Name:" would remove the
    // header); "Expect:" suppresses 100-continue round trips for bodies.
    bool has_expect = false;
    for (const auto& [name, value] : r.headers) {
      if (absl::EqualsIgnoreCase(name, "Expect")) has_expect = true;
      const std::string line = value.empty() ? absl::StrCat(name, ";")
                                             : absl::StrCat(name, ": ", value);
      curl_slist* next = curl_slist_append(t.header_list, line.c_str());
      if (next == nullptr) return CURLE_OUT_OF_MEMORY;
      t.header_list = next;
    }
    if (!has_expect) {
      curl_slist* next = curl_slist_append(t.header_list, "Expect:");
      if (next == nullptr) return CURLE_OUT_OF_MEMORY;
      t.header_list = next;
    }
    set(CURLOPT_HTTPHEADER, t.header_list);
    set(CURLOPT_USERAGENT, options_.user_agent.c_str());
    set(CURLOPT_ACCEPT_ENCODING, "");  // every encoding libcurl can decode

    // TLS: always verified; a configured bundle is the only trust anchor.
    set(CURLOPT_SSL_VERIFYPEER, 1L);
    set(CURLOPT_SSL_VERIFYHOST, 2L);
    if (!options_.ca_file.empty()) {
      set(CURLOPT_CAINFO, options_.ca_file.c_str());
      set(CURLOPT_CAPATH, static_cast<const char*>(nullptr));
    }

    // Transport.
    set(CURLOPT_HTTP_VERSION, static_cast<long>(CURL_HTTP_VERSION_2TLS));
    set(CURLOPT_PIPEWAIT, 1L);  // prefer multiplexing over a new connection
    set(CURLOPT_TCP_KEEPALIVE, 1L);
    // Every request, idempotent or not, may ride on a reused connection:
    // OnPrereq stops libcurl's silent repeat of a non-idempotent one. But a
    // non-idempotent request takes only a connection used within the last
    // second (MAXAGE_CONN 0: idle whole seconds must be 0): servers close
    // idle connections, and libcurl 7.88 takes one the server closed with a
    // TLS close_notify for alive, so an older one would likely fail and
    // leave the request's outcome unknown. Under load connections stay busy
    // and are reused; after a pause a POST opens a new one (TLS resumed).
    if (!r.idempotent) set(CURLOPT_MAXAGE_CONN, 0L);
    // "*" matches every host: no proxy from the environment applies. (A
    // connection reused from the pool is keyed by its proxy too, so a direct
    // request never rides on a proxied connection.)
    if (r.no_proxy) set(CURLOPT_NOPROXY, "*");
    set(CURLOPT_CONNECTTIMEOUT_MS,
        static_cast<long>(std::max<int64_t>(1, absl::ToInt64Milliseconds(options_.connect_timeout))));
    set(CURLOPT_TIMEOUT_MS, timeout_ms);

    set(CURLOPT_HEADERFUNCTION, &OnHeader);
    set(CURLOPT_HEADERDATA, static_cast<void*>(&t));
    set(CURLOPT_WRITEFUNCTION, &OnBody);
    set(CURLOPT_WRITEDATA, static_cast<void*>(&t));
    set(CURLOPT_PREREQFUNCTION, &OnPrereq);
    set(CURLOPT_PREREQDATA, static_cast<void*>(&t));
    if (r.cancellation != nullptr) {
      set(CURLOPT_XFERINFOFUNCTION, &OnProgress);
      set(CURLOPT_XFERINFODATA, static_cast<void*>(&t));
      set(CURLOPT_NOPROGRESS, 0L);
    }
    return code;
  }

  // CollectFinished completes every transfer libcurl reports as done.
  void CollectFinished() {
    int left = 0;
    while (CURLMsg* msg = curl_multi_info_read(multi_, &left)) {
      if (msg->msg != CURLMSG_DONE) continue;
      CURL* easy = msg->easy_handle;
      const CURLcode code = msg->data.result;  // read before removing the handle
      curl_multi_remove_handle(multi_, easy);
      Transfer* raw = nullptr;
      curl_easy_getinfo(easy, CURLINFO_PRIVATE, &raw);
      auto it = active_.find(raw);
      if (it == active_.end()) continue;  // impossible: every handle is ours
      std::unique_ptr<Transfer> t = std::move(it->second);
      active_.erase(it);

      absl::StatusOr<HttpResponse> result;
      if (code == CURLE_OK && !t->too_large) {
        long status = 0;
        curl_easy_getinfo(easy, CURLINFO_RESPONSE_CODE, &status);
        t->response.status = static_cast<int>(status);
        long version = 0;
        curl_easy_getinfo(easy, CURLINFO_HTTP_VERSION, &version);
        t->response.http_version = version == CURL_HTTP_VERSION_2_0   ? "2"
                                   : version == CURL_HTTP_VERSION_3   ? "3"
                                   : version == CURL_HTTP_VERSION_1_0 ? "1.0"
                                                                      : "1.1";
        result = std::move(t->response);
      } else {
        result = ErrorFor(*t, code);
      }
      // Release libcurl resources before running the caller's code.
      curl_easy_cleanup(t->easy);
      t->easy = nullptr;
      t->Complete(std::move(result));
    }
  }

  // CancelRequested completes with REQUEST_CANCELLED every transfer whose
  // cancellation was raised, queued in libcurl or in flight.
  void CancelRequested() {
    std::vector<std::unique_ptr<Transfer>> cancelled;
    for (auto it = active_.begin(); it != active_.end();) {
      if (it->second->IsCancelled()) {
        curl_multi_remove_handle(multi_, it->second->easy);
        cancelled.push_back(std::move(it->second));
        it = active_.erase(it);
      } else {
        ++it;
      }
    }
    for (auto& t : cancelled) {
      curl_easy_cleanup(t->easy);
      t->easy = nullptr;
      t->Complete(CancelledError(t->connected));
    }
  }

  void Cancel(Transfer& t) {
    t.Complete(TransportError(absl::StatusCode::kCancelled,
                              "the HTTP transport shut down before the request completed",
                              kShutDown, t.connected));
  }

  // CancelAll completes every in-flight transfer, then everything queued
  // meanwhile (callbacks may Send), with CANCELLED.
  void CancelAll() {
    std::vector<std::unique_ptr<Transfer>> in_flight;
    for (auto& [raw, t] : active_) {
      curl_multi_remove_handle(multi_, t->easy);
      in_flight.push_back(std::move(t));
    }
    active_.clear();
    for (auto& t : in_flight) {
      curl_easy_cleanup(t->easy);
      t->easy = nullptr;
      Cancel(*t);
    }
    in_flight.clear();
    for (;;) {
      std::deque<std::unique_ptr<Transfer>> incoming;
      {
        absl::MutexLock lock(&mu_);
        incoming.swap(pending_);
      }
      if (incoming.empty()) return;
      for (auto& t : incoming) Cancel(*t);
    }
  }

  const CurlTransportOptions options_;
  CURLM* multi_ = nullptr;
  CURLSH* share_ = nullptr;
  std::shared_ptr<Wakeup> wakeup_;
  std::thread thread_;

  mutable absl::Mutex mu_;
  std::deque<std::unique_ptr<Transfer>> pending_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  scheduler_internal::TimerQueue timers_ ABSL_GUARDED_BY(mu_);

  // Loop thread only.
  std::unordered_map<Transfer*, std::unique_ptr<Transfer>> active_;
};

absl::StatusOr<std::unique_ptr<CurlTransport>> CurlTransport::Create(
    CurlTransportOptions options) {
  if (absl::Status status = GlobalInit(); !status.ok()) return status;
  if (!options.ca_file.empty()) {
    std::ifstream in(options.ca_file, std::ios::binary);
    std::string pem((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    if (!in.good() && !in.eof()) pem.clear();
    if (pem.find("-----BEGIN CERTIFICATE-----") == std::string::npos) {
      return MakeError(absl::StatusCode::kInvalidArgument,
                       absl::StrCat("CA file ", options.ca_file,
                                    " cannot be read or holds no PEM certificate"),
                       "INVALID_CONFIGURATION");
    }
  }
  if (options.connect_timeout <= absl::ZeroDuration() || options.max_response_bytes == 0 ||
      options.max_header_bytes == 0) {
    return MakeError(absl::StatusCode::kInvalidArgument,
                     "HTTP transport: the connect timeout and the size caps must be positive",
                     "INVALID_CONFIGURATION");
  }
  auto impl = std::make_unique<Impl>(std::move(options));
  if (absl::Status status = impl->Start(); !status.ok()) return status;
  return std::unique_ptr<CurlTransport>(new CurlTransport(std::move(impl)));
}

// LoopScheduler is the transport's Scheduler: its tasks run on the loop.
class CurlTransport::LoopScheduler final : public Scheduler {
 public:
  explicit LoopScheduler(Impl& impl) : impl_(impl) {}
  TaskId RunAt(absl::Time when, Task task) override { return impl_.RunAt(when, std::move(task)); }
  bool Cancel(TaskId id) override { return impl_.Cancel(id); }

 private:
  Impl& impl_;
};

CurlTransport::CurlTransport(std::unique_ptr<Impl> impl)
    : impl_(std::move(impl)), scheduler_(std::make_unique<LoopScheduler>(*impl_)) {}

CurlTransport::~CurlTransport() { impl_->Stop(); }

Scheduler& CurlTransport::scheduler() { return *scheduler_; }

size_t CurlTransport::PendingTimers() const { return impl_->PendingTimers(); }

void CurlTransport::Send(HttpRequest request, Callback done) {
  impl_->Send(std::move(request), std::move(done));
}

}  // namespace defender::http
