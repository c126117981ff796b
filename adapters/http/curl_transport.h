// curl_transport.h: HttpTransport over libcurl's multi interface.
//
// One loop thread drives every transfer (curl_multi_poll), so an in-flight
// request costs no thread. Connections and TLS sessions are reused between
// requests to the same host; HTTP/2 is used when the server offers it.
//
// TLS: peer and host verification are always on (there is no switch to turn
// them off). `ca_file`, when set, is the only CA bundle trusted. Standard proxy
// variables (https_proxy, no_proxy, ...) are honoured by libcurl, except by a
// request with HttpRequest::no_proxy, which always goes direct (CURLOPT_NOPROXY
// "*"). Only http and https URLs are accepted; redirects are not followed (a
// 3xx is an answer).
//
// Repeats: when a REUSED HTTP/1.1 connection closes before any byte of the
// answer (the server dropped an idle connection just as the request went
// out), libcurl silently sends the request again on another connection (at
// most 5 times in a row). Such a request may reach the server twice: harmless
// for an idempotent one (HttpRequest::idempotent, the default). A request with
// `idempotent = false` is stopped at libcurl's second attempt (the pre-request
// callback sees the request about to go out again): it goes out at most once,
// and a lost connection is UPSTREAM_CONNECTION_LOST with "request_sent" =
// "true", so the caller can look for what it may have created. Such requests
// still reuse pooled connections (no handshake per POST), but only one used
// within the last second: a connection idle for longer may have been closed
// by the server, and libcurl cannot always tell (a TLS close_notify looks like
// data). The race that remains is rare, and costs that lookup, not a
// duplicate. (HTTP/2 repeats only a stream the server refused unprocessed; it
// is stopped the same way, for simplicity.)
//
// Timers: scheduler() is a Scheduler whose tasks run on the same loop thread
// (between transfers, never during one), so a process needs no timer thread
// of its own: rate-limit slots, retry pauses and polls wait in the loop's
// timer queue. Tasks must not block; they may Send, RunAt and Cancel. Tasks
// that have not run when the transport is destroyed are dropped unrun.
//
// Cancellation: HttpRequest::cancellation, once raised, wakes the loop, which
// removes the transfer (queued for a connection or in flight) and completes it
// on the loop thread; libcurl's progress callback also polls the flag.
//
// Errors (see http_transport.h for the "request_sent" metadata; every error
// also carries "curl_code", libcurl's numeric CURLcode):
//   cannot resolve / connect, or a  UNAVAILABLE        UPSTREAM_CONNECT_FAILED
//     proxy refused the tunnel
//   TLS handshake or certificate    UNAVAILABLE        UPSTREAM_TLS_FAILED
//   deadline or timeout reached     DEADLINE_EXCEEDED  UPSTREAM_TIMEOUT
//   connection broken, no answer    UNAVAILABLE        UPSTREAM_CONNECTION_LOST
//   answer over the size caps       INTERNAL           UPSTREAM_RESPONSE_TOO_LARGE
//   malformed request (URL, method  INVALID_ARGUMENT   INVALID_HTTP_REQUEST
//     or header with CR/LF)
//   destroyed while in flight       CANCELLED          TRANSPORT_SHUT_DOWN
//   cancelled by the caller         CANCELLED          REQUEST_CANCELLED
//   libcurl failed internally       INTERNAL           HTTP_TRANSPORT_INTERNAL
// "request_sent" turns "true" once a connection to the server (TLS included)
// is ready and the request is about to be written on it.
// An oversized answer is INTERNAL, not RESOURCE_EXHAUSTED: the plugin uses
// RESOURCE_EXHAUSTED for throttling (come back later), while a repeat of the
// call would get the same oversized answer.
//
//   auto transport = CurlTransport::Create({.ca_file = "/etc/ssl/ca.pem"});
//   (*transport)->Send(std::move(request), std::move(done));
#ifndef DEFENDER_ADAPTERS_HTTP_CURL_TRANSPORT_H_
#define DEFENDER_ADAPTERS_HTTP_CURL_TRANSPORT_H_

#include <cstddef>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "adapters/common/scheduler.h"
#include "adapters/http/http_transport.h"

namespace defender::http {

// CurlTransportOptions configures a CurlTransport. Defaults in comments.
struct CurlTransportOptions {
  // PEM bundle of the CAs trusted for every HTTPS call; "" = the system's.
  std::string ca_file;
  // Time allowed to connect (TCP + TLS handshake). Default 10 s.
  absl::Duration connect_timeout = absl::Seconds(10);
  // Whole-request timeout when the request has no deadline. Default 60 s.
  absl::Duration default_timeout = absl::Seconds(60);
  // Answers with a larger body (after decompression) fail with
  // UPSTREAM_RESPONSE_TOO_LARGE. 8 MiB.
  size_t max_response_bytes = 8u << 20;
  // Answers whose header block is larger fail the same way. 256 KiB.
  size_t max_header_bytes = 256u << 10;
  // Connections opened to one host at most; further requests wait for one
  // (HTTP/2 multiplexes many requests over one connection). 0 = no limit. 16.
  long max_connections_per_host = 16;
  // Sent as User-Agent.
  std::string user_agent = "defender-plugin/0.1";
};

// CurlTransport is the production HttpTransport. Thread-safe.
class CurlTransport final : public HttpTransport {
 public:
  // Create checks the options (a CA file that cannot be read or holds no PEM
  // is INVALID_ARGUMENT / INVALID_CONFIGURATION) and starts the loop thread.
  static absl::StatusOr<std::unique_ptr<CurlTransport>> Create(CurlTransportOptions options);

  // Stops the loop; requests still queued or in flight complete with CANCELLED
  // (on the loop thread, before the destructor returns; a Send from such a
  // callback is cancelled too), and timer tasks not yet run are dropped. Must
  // not be called from one of this transport's callbacks or timer tasks, nor
  // concurrently with Send from another thread.
  ~CurlTransport() override;

  void Send(HttpRequest request, Callback done) override;

  // scheduler runs tasks on the loop thread (see the header comment). Valid
  // as long as the transport.
  Scheduler& scheduler();
  // PendingTimers counts the scheduler's tasks waiting to run.
  size_t PendingTimers() const;

  class Impl;

 private:
  class LoopScheduler;
  explicit CurlTransport(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
  std::unique_ptr<LoopScheduler> scheduler_;
};

}  // namespace defender::http

#endif  // DEFENDER_ADAPTERS_HTTP_CURL_TRANSPORT_H_
