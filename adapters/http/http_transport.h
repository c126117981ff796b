// http_transport.h: the one seam through which the plugin talks HTTP(S).
//
// HttpTransport::Send is asynchronous: it returns at once and calls `done`
// exactly once, later, on the transport's own thread (never inside Send). The
// callback must not block. Implementations: CurlTransport (curl_transport.h),
// and recording fakes in tests.
//
//   HttpRequest req;
//   req.method = "POST";
//   req.url = "https://api.security.microsoft.com/api/machines/ID/StopAndQuarantineFile";
//   req.headers = {{"Content-Type", "application/json"}};
//   req.body = json.dump();
//   req.deadline = absl::Now() + absl::Seconds(30);
//   transport.Send(std::move(req), [](absl::StatusOr<HttpResponse> r) { ... });
//
// A response with any HTTP status (also 4xx/5xx) is a success of the
// transport; the status is an error only when no complete answer came back.
// Such errors carry an ErrorInfo (adapters/common/error.h) with reason
// UPSTREAM_CONNECT_FAILED, UPSTREAM_TLS_FAILED, UPSTREAM_TIMEOUT,
// UPSTREAM_CONNECTION_LOST or UPSTREAM_RESPONSE_TOO_LARGE, and metadata
// "request_sent" = "true" when the request may have reached the server (its
// outcome is unknown) or "false" when it certainly did not. A request the
// transport refuses to send (bad URL, method or header) fails with
// INVALID_HTTP_REQUEST, one cut short by the transport's destruction with
// TRANSPORT_SHUT_DOWN (CANCELLED), one its caller cancelled with
// REQUEST_CANCELLED (CANCELLED), all with "request_sent" too. The canonical
// codes are listed in curl_transport.h.
#ifndef DEFENDER_ADAPTERS_HTTP_HTTP_TRANSPORT_H_
#define DEFENDER_ADAPTERS_HTTP_HTTP_TRANSPORT_H_

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/functional/any_invocable.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "adapters/common/cancellation.h"

namespace defender::http {

// Header is one HTTP header field.
using Header = std::pair<std::string, std::string>;

// HttpRequest is one request to send.
struct HttpRequest {
  std::string method = "GET";  // "GET", "POST", ...
  std::string url;             // absolute URL, query string already encoded
  std::vector<Header> headers;
  std::string body;
  // The request, including connecting and reading the whole answer, fails with
  // UPSTREAM_TIMEOUT (DEADLINE_EXCEEDED) at this time. InfiniteFuture means the
  // transport's own default timeout applies.
  absl::Time deadline = absl::InfiniteFuture();
  // When set and raised (Cancellation::Cancel), a request still queued or in
  // flight is abandoned promptly: `done` gets CANCELLED, reason
  // REQUEST_CANCELLED, with "request_sent" as for any other error ("true" if
  // it may have gone out: cancelling cannot call back what the server got).
  // Raising it after `done` ran changes nothing.
  std::shared_ptr<Cancellation> cancellation;
  // False for a request that must not reach the server twice (a POST that
  // creates something, e.g. a Defender machine action). The transport then
  // never repeats it on its own: CurlTransport sends it on a new connection,
  // since libcurl silently re-sends a request whose reused connection closes
  // before any byte of an answer. Such a loss surfaces as
  // UPSTREAM_CONNECTION_LOST with "request_sent" = "true", and only the
  // caller decides whether to try again. True (the default) lets the
  // transport repeat the request in that case.
  bool idempotent = true;
  // True sends the request straight to its host, ignoring every proxy setting
  // (https_proxy, http_proxy, all_proxy and no_proxy of the environment).
  // For endpoints that must never be reached through a proxy: the managed
  // identity endpoints (Azure IMDS at 169.254.169.254, App Service's local
  // IDENTITY_ENDPOINT) reject proxied requests and would hand a token to
  // whatever sits in between. False (the default) honours the environment.
  bool no_proxy = false;
  // Names the exchange in metrics ("StopAndQuarantineFile", "token"): from a
  // small fixed set, never an id or a URL. Empty counts as "other".
  std::string endpoint;
};

// HttpResponse is a complete answer.
struct HttpResponse {
  int status = 0;
  // The HTTP version the answer came over: "1.0", "1.1", "2" or "3".
  std::string http_version;
  // (Qualified: the member function Header below hides the type name.)
  std::vector<http::Header> headers;  // in arrival order; names as sent
  std::string body;

  // Header returns the value of the first header named `name` (compared
  // case-insensitively), or "" if there is none.
  std::string Header(absl::string_view name) const;
};

// HttpTransport sends requests. Implementations are thread-safe.
class HttpTransport {
 public:
  using Callback = absl::AnyInvocable<void(absl::StatusOr<HttpResponse>) &&>;

  virtual ~HttpTransport() = default;

  // Send starts `request` and calls `done` exactly once with its outcome.
  virtual void Send(HttpRequest request, Callback done) = 0;
};

// FormEncode returns `fields` as an application/x-www-form-urlencoded body.
std::string FormEncode(const std::vector<std::pair<std::string, std::string>>& fields);

// UrlEscape percent-encodes `text` for use inside a URL path segment or query.
std::string UrlEscape(absl::string_view text);

}  // namespace defender::http

#endif  // DEFENDER_ADAPTERS_HTTP_HTTP_TRANSPORT_H_
