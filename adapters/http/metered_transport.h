// metered_transport.h: an HttpTransport that reports every exchange of
// another to Metrics: its endpoint (HttpRequest::endpoint), its HTTP status
// or transport error reason, and how long it took.
//
//   MeteredTransport metered(curl, metrics);
//   RestDefenderClient client(options, credential, metered);
#ifndef DEFENDER_ADAPTERS_HTTP_METERED_TRANSPORT_H_
#define DEFENDER_ADAPTERS_HTTP_METERED_TRANSPORT_H_

#include "adapters/common/clock.h"
#include "adapters/common/metrics.h"
#include "adapters/http/http_transport.h"

namespace defender::http {

// MeteredTransport forwards to `inner` and reports each outcome. Thread-safe;
// `inner`, `metrics` and `clock` must outlive it.
class MeteredTransport final : public HttpTransport {
 public:
  MeteredTransport(HttpTransport& inner, Metrics& metrics, Clock& clock = Clock::Real())
      : inner_(inner), metrics_(metrics), clock_(clock) {}

  void Send(HttpRequest request, Callback done) override;

 private:
  HttpTransport& inner_;
  Metrics& metrics_;
  Clock& clock_;
};

}  // namespace defender::http

#endif  // DEFENDER_ADAPTERS_HTTP_METERED_TRANSPORT_H_
