// curl_transport.h: HttpTransport over libcurl's multi interface.
//
// One loop thread drives every transfer (curl_multi_poll), so an in-flight
// request costs no thread. Connections and TLS sessions are reused between
// requests to the same host; HTTP/2 is used when the server offers it.
//
// TLS: peer and host verification are always on (there is no switch to turn
// them off). `ca_file`, when set, is the only CA bundle trusted. Standard proxy
// variables (https_proxy, no_proxy, ...) are honoured by libcurl.
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
  // Answers with a larger body fail with UPSTREAM_RESPONSE_TOO_LARGE. 8 MiB.
  size_t max_response_bytes = 8u << 20;
  // Sent as User-Agent.
  std::string user_agent = "defender-plugin/0.1";
};

// CurlTransport is the production HttpTransport. Thread-safe.
class CurlTransport final : public HttpTransport {
 public:
  // Create checks the options (a CA file that cannot be read is an error) and
  // starts the loop thread.
  static absl::StatusOr<std::unique_ptr<CurlTransport>> Create(CurlTransportOptions options);

  // Stops the loop; requests still in flight complete with CANCELLED.
  ~CurlTransport() override;

  void Send(HttpRequest request, Callback done) override;

  class Impl;

 private:
  explicit CurlTransport(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace defender::http

#endif  // DEFENDER_ADAPTERS_HTTP_CURL_TRANSPORT_H_
