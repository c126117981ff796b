// fake_transport.h: an HttpTransport for unit tests that records every request
// and answers from a queue of canned responses (or errors), synchronously.
//
//   FakeTransport transport;
//   transport.Enqueue(201, R"({"id": "a"})");
//   ... code under test calls transport.Send(...) ...
//   EXPECT_EQ(transport.requests()[0].url, "https://...");
#ifndef DEFENDER_TESTS_ADAPTERS_FAKE_TRANSPORT_H_
#define DEFENDER_TESTS_ADAPTERS_FAKE_TRANSPORT_H_

#include <deque>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "adapters/http/http_transport.h"

namespace defender::testing {

class FakeTransport final : public http::HttpTransport {
 public:
  // Enqueue adds an answer with `status`, `body` and `headers`.
  void Enqueue(int status, std::string body, std::vector<http::Header> headers = {}) {
    http::HttpResponse response;
    response.status = status;
    response.body = std::move(body);
    response.headers = std::move(headers);
    absl::MutexLock lock(&mu_);
    answers_.push_back(std::move(response));
  }
  // EnqueueError makes the next Send fail with `error`.
  void EnqueueError(absl::Status error) {
    absl::MutexLock lock(&mu_);
    answers_.push_back(std::move(error));
  }

  // Send records the request and answers with the next queued answer (an
  // UNAVAILABLE error when the queue is empty), before returning.
  void Send(http::HttpRequest request, Callback done) override {
    absl::StatusOr<http::HttpResponse> answer =
        absl::UnavailableError("FakeTransport: no answer queued");
    {
      absl::MutexLock lock(&mu_);
      requests_.push_back(request);
      if (!answers_.empty()) {
        answer = std::move(answers_.front());
        answers_.pop_front();
      }
    }
    std::move(done)(std::move(answer));
  }

  std::vector<http::HttpRequest> requests() const {
    absl::MutexLock lock(&mu_);
    return requests_;
  }

 private:
  mutable absl::Mutex mu_;
  std::deque<absl::StatusOr<http::HttpResponse>> answers_ ABSL_GUARDED_BY(mu_);
  std::vector<http::HttpRequest> requests_ ABSL_GUARDED_BY(mu_);
};

}  // namespace defender::testing

#endif  // DEFENDER_TESTS_ADAPTERS_FAKE_TRANSPORT_H_
