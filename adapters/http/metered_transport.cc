#include "adapters/http/metered_transport.h"

#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "adapters/common/error.h"

namespace defender::http {

void MeteredTransport::Send(HttpRequest request, Callback done) {
  std::string endpoint = request.endpoint.empty() ? "other" : request.endpoint;
  const absl::Time started = clock_.Now();
  inner_.Send(std::move(request), [this, endpoint = std::move(endpoint), started,
                                   done = std::move(done)](
                                      absl::StatusOr<HttpResponse> answer) mutable {
    std::string result;
    if (answer.ok()) {
      result = absl::StrCat(answer->status);
    } else {
      result = ErrorReason(answer.status());
      if (result.empty()) result = absl::StatusCodeToString(answer.status().code());
    }
    metrics_.UpstreamAnswered(endpoint, result, clock_.Now() - started);
    std::move(done)(std::move(answer));
  });
}

}  // namespace defender::http
