#include "adapters/defender/rest_defender_client.h"

#include <map>
#include <optional>
#include <ostream>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/cord.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/civil_time.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "adapters/common/cancellation.h"
#include "adapters/common/clock.h"
#include "adapters/common/error.h"
#include "adapters/common/rate_limiter.h"
#include "adapters/common/scheduler.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/adapters/fake_transport.h"

namespace defender::api {
namespace {

using ::defender::testing::FakeTransport;
using json = nlohmann::json;

constexpr char kBaseUrl[] = "https://api.example.test";
constexpr char kScope[] = "https://api.securitycenter.microsoft.com/.default";
constexpr char kMachineId[] = "1e5bc9d7e413ddd7902c2932e418702b84d0cc07";
constexpr char kSha1[] = "87662bc3d60e4200ceaf7aae249d1c343f4b83c9";
constexpr char kActionId[] = "141408d1-384c-4c19-8b57-ba39e378011a";
constexpr char kActionJson[] = R"({
  "id": "141408d1-384c-4c19-8b57-ba39e378011a", "type": "StopAndQuarantineFile",
  "status": "Pending", "machineId": "1e5bc9d7e413ddd7902c2932e418702b84d0cc07",
  "relatedFileInfo": {"fileIdentifier": "87662bc3d60e4200ceaf7aae249d1c343f4b83c9",
                      "fileIdentifierType": "Sha1"}
})";

// FakeCredential hands out "<prefix>1", "<prefix>2", ... (or queued errors)
// and records every request context. With `defer`, answers wait until
// RunPending() instead of coming inside GetToken.
class FakeCredential final : public auth::TokenCredential {
 public:
  explicit FakeCredential(std::string prefix = "t", bool defer = false)
      : prefix_(std::move(prefix)), defer_(defer) {}

  // FailCall makes the `n`th GetToken (counting from 1) answer `error`.
  void FailCall(int n, absl::Status error) {
    absl::MutexLock lock(&mu_);
    errors_[n] = std::move(error);
  }

  void GetToken(const auth::TokenRequestContext& context, Callback done) override {
    absl::StatusOr<auth::AccessToken> answer;
    {
      absl::MutexLock lock(&mu_);
      contexts_.push_back(context);
      auto error = errors_.find(static_cast<int>(contexts_.size()));
      if (error != errors_.end()) {
        answer = error->second;
      } else {
        answer = auth::AccessToken{absl::StrCat(prefix_, ++issued_), absl::InfiniteFuture()};
      }
      if (defer_) {
        pending_.push_back([done = std::move(done), answer = std::move(answer)]() mutable {
          std::move(done)(std::move(answer));
        });
        return;
      }
    }
    std::move(done)(std::move(answer));
  }

  std::string Name() const override { return "FakeCredential"; }

  // RunPending answers the deferred requests; returns how many it answered.
  int RunPending() {
    std::vector<absl::AnyInvocable<void() &&>> pending;
    {
      absl::MutexLock lock(&mu_);
      pending.swap(pending_);
    }
    for (auto& answer : pending) std::move(answer)();
    return static_cast<int>(pending.size());
  }

  std::vector<auth::TokenRequestContext> contexts() const {
    absl::MutexLock lock(&mu_);
    return contexts_;
  }

 private:
  const std::string prefix_;
  const bool defer_;
  mutable absl::Mutex mu_;
  int issued_ ABSL_GUARDED_BY(mu_) = 0;
  std::map<int, absl::Status> errors_ ABSL_GUARDED_BY(mu_);
  std::vector<auth::TokenRequestContext> contexts_ ABSL_GUARDED_BY(mu_);
  std::vector<absl::AnyInvocable<void() &&>> pending_ ABSL_GUARDED_BY(mu_);
};

// DeferredTransport wraps FakeTransport but answers only on RunPending(), as
// the real transport answers later on its own thread.
class DeferredTransport final : public http::HttpTransport {
 public:
  FakeTransport& answers() { return fake_; }

  void Send(http::HttpRequest request, Callback done) override {
    absl::MutexLock lock(&mu_);
    pending_.emplace_back(std::move(request), std::move(done));
  }

  int RunPending() {
    std::vector<std::pair<http::HttpRequest, Callback>> pending;
    {
      absl::MutexLock lock(&mu_);
      pending.swap(pending_);
    }
    for (auto& [request, done] : pending) fake_.Send(std::move(request), std::move(done));
    return static_cast<int>(pending.size());
  }

 private:
  FakeTransport fake_;
  absl::Mutex mu_;
  std::vector<std::pair<http::HttpRequest, Callback>> pending_ ABSL_GUARDED_BY(mu_);
};

// HeaderValues returns every value of header `name` in `request`.
std::vector<std::string> HeaderValues(const http::HttpRequest& request, const std::string& name) {
  std::vector<std::string> values;
  for (const auto& [key, value] : request.headers) {
    if (key == name) values.push_back(value);
  }
  return values;
}

// Metadata returns ErrorInfo metadata `key` of `status`, or "<absent>".
std::string Metadata(const absl::Status& status, const std::string& key) {
  std::optional<google::rpc::ErrorInfo> info = GetErrorInfo(status);
  if (!info) return "<no ErrorInfo>";
  auto it = info->metadata().find(key);
  return it == info->metadata().end() ? "<absent>" : it->second;
}

// ExpectNoSecret checks that `secret` is in neither the message nor the
// metadata of `status`.
void ExpectNoSecret(const absl::Status& status, const std::string& secret) {
  EXPECT_FALSE(absl::StrContains(status.message(), secret)) << status;
  std::optional<google::rpc::ErrorInfo> info = GetErrorInfo(status);
  if (!info) return;
  for (const auto& [key, value] : info->metadata()) {
    EXPECT_FALSE(absl::StrContains(value, secret)) << key << "=" << value;
  }
}

class RestDefenderClientTest : public ::testing::Test {
 protected:
  RestDefenderClientTest() : client_({kBaseUrl, kScope}, credential_, transport_) {}

  // Quarantine runs StopAndQuarantineFile; the fakes answer inline.
  absl::StatusOr<MachineAction> Quarantine(std::string comment = "Stop it",
                                           std::string machine_id = kMachineId) {
    std::optional<absl::StatusOr<MachineAction>> result;
    int calls = 0;
    client_.StopAndQuarantineFile({machine_id, kSha1, std::move(comment)}, deadline_,
                                  [&](absl::StatusOr<MachineAction> action) {
                                    ++calls;
                                    result = std::move(action);
                                  });
    EXPECT_EQ(calls, 1);
    if (!result) return absl::InternalError("no callback");
    return *std::move(result);
  }

  // GetAction runs GetMachineAction; the fakes answer inline.
  absl::StatusOr<MachineAction> GetAction(const std::string& id) {
    std::optional<absl::StatusOr<MachineAction>> result;
    int calls = 0;
    client_.GetMachineAction(id, deadline_, [&](absl::StatusOr<MachineAction> action) {
      ++calls;
      result = std::move(action);
    });
    EXPECT_EQ(calls, 1);
    if (!result) return absl::InternalError("no callback");
    return *std::move(result);
  }

  // QuarantineSince runs StopAndQuarantineFile with maybe_sent_since.
  absl::StatusOr<MachineAction> QuarantineSince(absl::Time since, std::string comment) {
    std::optional<absl::StatusOr<MachineAction>> result;
    int calls = 0;
    client_.StopAndQuarantineFile({kMachineId, kSha1, std::move(comment), since}, deadline_,
                                  [&](absl::StatusOr<MachineAction> action) {
                                    ++calls;
                                    result = std::move(action);
                                  });
    EXPECT_EQ(calls, 1);
    if (!result) return absl::InternalError("no callback");
    return *std::move(result);
  }

  // Cancel runs CancelMachineAction.
  absl::StatusOr<MachineAction> Cancel(const std::string& id, const std::string& comment) {
    std::optional<absl::StatusOr<MachineAction>> result;
    int calls = 0;
    client_.CancelMachineAction(id, comment, deadline_,
                                [&](absl::StatusOr<MachineAction> action) {
                                  ++calls;
                                  result = std::move(action);
                                });
    EXPECT_EQ(calls, 1);
    if (!result) return absl::InternalError("no callback");
    return *std::move(result);
  }

  // File runs GetFile.
  absl::StatusOr<FileInfo> File(const std::string& hash) {
    std::optional<absl::StatusOr<FileInfo>> result;
    int calls = 0;
    client_.GetFile(hash, deadline_, [&](absl::StatusOr<FileInfo> file) {
      ++calls;
      result = std::move(file);
    });
    EXPECT_EQ(calls, 1);
    if (!result) return absl::InternalError("no callback");
    return *std::move(result);
  }

  // Machines runs FindMachinesByDnsName.
  absl::StatusOr<std::vector<MachineInfo>> Machines(const std::string& name) {
    std::optional<absl::StatusOr<std::vector<MachineInfo>>> result;
    int calls = 0;
    client_.FindMachinesByDnsName(name, deadline_,
                                  [&](absl::StatusOr<std::vector<MachineInfo>> machines) {
                                    ++calls;
                                    result = std::move(machines);
                                  });
    EXPECT_EQ(calls, 1);
    if (!result) return absl::InternalError("no callback");
    return *std::move(result);
  }

  const absl::Time deadline_ = absl::FromUnixSeconds(1900000000);
  FakeCredential credential_;
  FakeTransport transport_;
  RestDefenderClient client_;
};

TEST_F(RestDefenderClientTest, PostsToStopAndQuarantineFile) {
  transport_.Enqueue(201, kActionJson);
  absl::StatusOr<MachineAction> action = Quarantine("Stop and quarantine file due to alert 44");
  ASSERT_TRUE(action.ok()) << action.status();
  EXPECT_EQ(action->id, kActionId);
  EXPECT_EQ(action->status, "Pending");
  EXPECT_EQ(action->file_identifier, kSha1);

  ASSERT_EQ(transport_.requests().size(), 1u);
  const http::HttpRequest request = transport_.requests()[0];
  EXPECT_EQ(request.method, "POST");
  EXPECT_EQ(request.url, "https://api.example.test/api/machines/"
                         "1e5bc9d7e413ddd7902c2932e418702b84d0cc07/StopAndQuarantineFile");
  EXPECT_EQ(HeaderValues(request, "Authorization"), std::vector<std::string>{"Bearer t1"});
  EXPECT_EQ(HeaderValues(request, "Accept"), std::vector<std::string>{"application/json"});
  EXPECT_EQ(HeaderValues(request, "Content-Type"), std::vector<std::string>{"application/json"});
  // One attempt gets at most attempt_timeout (20 s) of a far deadline; the POST
  // is never re-sent by the transport itself.
  EXPECT_LE(request.deadline, absl::Now() + absl::Seconds(20));
  EXPECT_GT(request.deadline, absl::Now() + absl::Seconds(10));
  EXPECT_FALSE(request.idempotent);
  EXPECT_EQ(json::parse(request.body),
            json({{"Comment", "Stop and quarantine file due to alert 44"}, {"Sha1", kSha1}}));
  EXPECT_EQ(request.body,
            R"({"Comment":"Stop and quarantine file due to alert 44",)"
            R"("Sha1":"87662bc3d60e4200ceaf7aae249d1c343f4b83c9"})");

  ASSERT_EQ(credential_.contexts().size(), 1u);
  const auth::TokenRequestContext context = credential_.contexts()[0];
  EXPECT_EQ(context.scopes, std::vector<std::string>{kScope});
  EXPECT_EQ(context.deadline, deadline_);
  EXPECT_EQ(context.rejected_token, "");
}

TEST_F(RestDefenderClientTest, CommentGoesOutByteForByte) {
  transport_.Enqueue(201, kActionJson);
  const std::string comment = "He said \"stop\" \\ now\nline 2\ttab Ünïcødé ✓ / <b>&'";
  ASSERT_TRUE(Quarantine(comment).ok());
  const std::string body = transport_.requests()[0].body;
  EXPECT_EQ(body,
            "{\"Comment\":\"He said \\\"stop\\\" \\\\ now\\nline 2\\ttab Ünïcødé ✓ / <b>&'\","
            "\"Sha1\":\"87662bc3d60e4200ceaf7aae249d1c343f4b83c9\"}");
  EXPECT_EQ(json::parse(body)["Comment"], comment);
}

TEST_F(RestDefenderClientTest, ControlCharactersAreEscaped) {
  transport_.Enqueue(201, kActionJson);
  const std::string comment = std::string("a\x01") + "b\x7f" + std::string(1, '\0') + "c";
  ASSERT_TRUE(Quarantine(comment).ok());
  const std::string body = transport_.requests()[0].body;
  EXPECT_TRUE(absl::StrContains(body, R"("Comment":"a\u0001b)")) << body;
  EXPECT_EQ(json::parse(body)["Comment"], comment);
}

TEST_F(RestDefenderClientTest, InvalidUtf8IsReplacedNotThrown) {
  transport_.Enqueue(201, kActionJson);
  ASSERT_TRUE(Quarantine("bad \xff byte").ok());
  EXPECT_EQ(json::parse(transport_.requests()[0].body)["Comment"], "bad \xEF\xBF\xBD byte");
}

TEST_F(RestDefenderClientTest, MachineIdIsUrlEscaped) {
  transport_.Enqueue(201, kActionJson);
  ASSERT_TRUE(Quarantine("c", "../x?y#z").ok());
  const std::string url = transport_.requests()[0].url;
  EXPECT_EQ(url, absl::StrCat(kBaseUrl, "/api/machines/", http::UrlEscape("../x?y#z"),
                              "/StopAndQuarantineFile"));
  EXPECT_FALSE(absl::StrContains(url, "../x?y#z")) << url;
}

TEST_F(RestDefenderClientTest, TrailingSlashOfBaseUrlIsDropped) {
  RestDefenderClient client({"https://api.example.test/", kScope}, credential_, transport_);
  transport_.Enqueue(200, kActionJson);
  client.GetMachineAction(kActionId, deadline_, [](absl::StatusOr<MachineAction>) {});
  EXPECT_EQ(transport_.requests()[0].url,
            "https://api.example.test/api/machineactions/141408d1-384c-4c19-8b57-ba39e378011a");
}

TEST_F(RestDefenderClientTest, GetsMachineAction) {
  transport_.Enqueue(200, R"({"id": "141408d1-384c-4c19-8b57-ba39e378011a",
                              "status": "Succeeded"})");
  absl::StatusOr<MachineAction> action = GetAction(kActionId);
  ASSERT_TRUE(action.ok()) << action.status();
  EXPECT_TRUE(action->IsFinal());

  ASSERT_EQ(transport_.requests().size(), 1u);
  const http::HttpRequest request = transport_.requests()[0];
  EXPECT_EQ(request.method, "GET");
  EXPECT_EQ(request.url,
            "https://api.example.test/api/machineactions/141408d1-384c-4c19-8b57-ba39e378011a");
  EXPECT_EQ(HeaderValues(request, "Authorization"), std::vector<std::string>{"Bearer t1"});
  EXPECT_EQ(HeaderValues(request, "Accept"), std::vector<std::string>{"application/json"});
  EXPECT_TRUE(HeaderValues(request, "Content-Type").empty());
  EXPECT_EQ(request.body, "");
  EXPECT_LE(request.deadline, absl::Now() + absl::Seconds(20));
  EXPECT_TRUE(request.idempotent);
}

TEST_F(RestDefenderClientTest, GetMachineActionIdIsUrlEscaped) {
  transport_.Enqueue(200, kActionJson);
  ASSERT_TRUE(GetAction("a b/c").ok());
  EXPECT_EQ(transport_.requests()[0].url,
            absl::StrCat(kBaseUrl, "/api/machineactions/", http::UrlEscape("a b/c")));
}

TEST_F(RestDefenderClientTest, GetMachineActionNotFound) {
  transport_.Enqueue(404, R"({"error": {"code": "NotFound", "message": "Action not found"}})");
  absl::StatusOr<MachineAction> action = GetAction(kActionId);
  EXPECT_EQ(action.status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(ErrorReason(action.status()), "DEFENDER_NOT_FOUND");
}

TEST_F(RestDefenderClientTest, RetriesOnceWithNewTokenAfter401) {
  transport_.Enqueue(401, R"({"error": {"code": "Unauthorized", "message": "expired"}})");
  transport_.Enqueue(201, kActionJson);
  absl::StatusOr<MachineAction> action = Quarantine();
  ASSERT_TRUE(action.ok()) << action.status();

  std::vector<auth::TokenRequestContext> contexts = credential_.contexts();
  ASSERT_EQ(contexts.size(), 2u);
  EXPECT_EQ(contexts[0].rejected_token, "");
  EXPECT_EQ(contexts[1].rejected_token, "t1");
  EXPECT_EQ(contexts[1].scopes, std::vector<std::string>{kScope});
  EXPECT_EQ(contexts[1].deadline, deadline_);

  std::vector<http::HttpRequest> requests = transport_.requests();
  ASSERT_EQ(requests.size(), 2u);
  EXPECT_EQ(HeaderValues(requests[0], "Authorization"), std::vector<std::string>{"Bearer t1"});
  EXPECT_EQ(HeaderValues(requests[1], "Authorization"), std::vector<std::string>{"Bearer t2"});
  EXPECT_EQ(requests[1].url, requests[0].url);
  EXPECT_EQ(requests[1].body, requests[0].body);
  EXPECT_EQ(HeaderValues(requests[1], "Content-Type"),
            std::vector<std::string>{"application/json"});
}

TEST_F(RestDefenderClientTest, Unauthenticated401Twice) {
  transport_.Enqueue(401, "");
  transport_.Enqueue(401, R"({"error": {"code": "Unauthorized", "message": "Invalid token",
                                        "target": "trk-9"}})");
  transport_.Enqueue(201, kActionJson);  // never reached
  absl::StatusOr<MachineAction> action = Quarantine();
  ASSERT_FALSE(action.ok());
  EXPECT_EQ(action.status().code(), absl::StatusCode::kUnauthenticated);
  EXPECT_EQ(ErrorReason(action.status()), "DEFENDER_UNAUTHORIZED");
  EXPECT_EQ(Metadata(action.status(), "http_status"), "401");
  EXPECT_EQ(Metadata(action.status(), "tracking_id"), "trk-9");
  EXPECT_EQ(transport_.requests().size(), 2u);
  EXPECT_EQ(credential_.contexts().size(), 2u);
}

TEST_F(RestDefenderClientTest, GetMachineActionAlsoRetries401) {
  transport_.Enqueue(401, "");
  transport_.Enqueue(200, kActionJson);
  ASSERT_TRUE(GetAction(kActionId).ok());
  ASSERT_EQ(credential_.contexts().size(), 2u);
  EXPECT_EQ(credential_.contexts()[1].rejected_token, "t1");
}

TEST_F(RestDefenderClientTest, ErrorAfterRetryIsMapped) {
  transport_.Enqueue(401, "");
  transport_.Enqueue(404, R"({"error": {"code": "ResourceNotFound", "message": "gone"}})");
  absl::StatusOr<MachineAction> action = Quarantine();
  EXPECT_EQ(action.status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(transport_.requests().size(), 2u);
}

TEST_F(RestDefenderClientTest, NoRetryOnOtherErrors) {
  transport_.Enqueue(403, R"({"error": {"code": "Forbidden", "message": "no"}})");
  transport_.Enqueue(201, kActionJson);
  absl::StatusOr<MachineAction> action = Quarantine();
  EXPECT_EQ(action.status().code(), absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(transport_.requests().size(), 1u);
  EXPECT_EQ(credential_.contexts().size(), 1u);
}

TEST_F(RestDefenderClientTest, TokenErrorPassesThroughWithoutRequest) {
  absl::Status token_error =
      MakeError(absl::StatusCode::kUnauthenticated, "AADSTS7000215: Invalid client secret",
                "TOKEN_REQUEST_REJECTED", {{"aadsts_code", "7000215"}, {"http_status", "401"}});
  credential_.FailCall(1, token_error);
  absl::StatusOr<MachineAction> action = Quarantine();
  EXPECT_EQ(action.status(), token_error);  // code, message and payloads
  EXPECT_TRUE(transport_.requests().empty());
}

TEST_F(RestDefenderClientTest, TokenErrorOnRetryPassesThrough) {
  absl::Status token_error = MakeError(absl::StatusCode::kUnavailable, "login unreachable",
                                       "UPSTREAM_CONNECT_FAILED", {{"request_sent", "false"}});
  credential_.FailCall(2, token_error);
  transport_.Enqueue(401, "");
  transport_.Enqueue(201, kActionJson);  // never reached
  absl::StatusOr<MachineAction> action = Quarantine();
  EXPECT_EQ(action.status(), token_error);
  EXPECT_EQ(transport_.requests().size(), 1u);
  EXPECT_EQ(credential_.contexts().size(), 2u);
}

TEST_F(RestDefenderClientTest, TransportErrorPassesThroughWithPayloads) {
  absl::Status error = MakeError(absl::StatusCode::kDeadlineExceeded, "timed out after 30s",
                                 "UPSTREAM_TIMEOUT", {{"request_sent", "true"}});
  error.SetPayload("type.example/extra", absl::Cord("kept"));
  transport_.EnqueueError(error);
  absl::StatusOr<MachineAction> action = Quarantine();
  ASSERT_FALSE(action.ok());
  EXPECT_EQ(action.status().code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_TRUE(absl::StrContains(action.status().message(), "timed out after 30s"))
      << action.status();
  EXPECT_EQ(ErrorReason(action.status()), "UPSTREAM_TIMEOUT");
  EXPECT_EQ(Metadata(action.status(), "request_sent"), "true");
  EXPECT_EQ(action.status().GetPayload("type.example/extra"), absl::Cord("kept"));
  // The outcome is unknown: no second POST, but a look for the action (which
  // the fake does not answer), and the caller is told.
  EXPECT_EQ(Metadata(action.status(), "outcome"), "unknown");
  ASSERT_EQ(transport_.requests().size(), 2u);
  EXPECT_EQ(transport_.requests()[1].method, "GET");
  EXPECT_TRUE(absl::StartsWith(transport_.requests()[1].url,
                               absl::StrCat(kBaseUrl, "/api/machineactions?$filter=")));
}

TEST_F(RestDefenderClientTest, UnreadableSuccessIsBadUpstreamResponse) {
  transport_.Enqueue(201, "<html>not json</html>");
  absl::StatusOr<MachineAction> action = Quarantine();
  EXPECT_EQ(action.status().code(), absl::StatusCode::kInternal);
  EXPECT_EQ(ErrorReason(action.status()), "BAD_UPSTREAM_RESPONSE");
  EXPECT_EQ(Metadata(action.status(), "http_status"), "201");
  EXPECT_FALSE(absl::StrContains(action.status().message(), "not json"));
}

TEST_F(RestDefenderClientTest, EmptySuccessIsBadUpstreamResponse) {
  transport_.Enqueue(204, "");
  absl::StatusOr<MachineAction> action = Quarantine();
  EXPECT_EQ(action.status().code(), absl::StatusCode::kInternal);
  EXPECT_EQ(ErrorReason(action.status()), "BAD_UPSTREAM_RESPONSE");
}

TEST_F(RestDefenderClientTest, TokenNeverAppearsInErrors) {
  const std::string prefix = "eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9.secret-";
  FakeCredential credential(prefix);
  RestDefenderClient client({kBaseUrl, kScope}, credential, transport_);
  const std::vector<std::pair<int, std::string>> answers = {
      {400, R"({"error": {"code": "InvalidRequestBody", "message": "bad"}})"},
      {401, ""},
      {401, "Unauthorized"},
      {403, R"({"error": {"code": "Forbidden", "message": "Missing role"}})"},
      {404, R"({"error": {"code": "ResourceNotFound", "message": "Machine x was not found"}})"},
      {429, R"({"error": {"code": "TooManyRequests"}})"},
      {503, "<html>Service Unavailable</html>"},
      {201, "garbage"},
  };
  for (const auto& [status, body] : answers) transport_.Enqueue(status, body);
  transport_.EnqueueError(MakeError(absl::StatusCode::kUnavailable, "connection refused",
                                    "UPSTREAM_CONNECT_FAILED", {{"request_sent", "false"}}));
  int results = 0;
  // The 401 pair consumes two answers in one call.
  // Reads: a failed POST would look for its action first (tested apart).
  for (size_t i = 0; i < answers.size(); ++i) {
    client.GetMachineAction(
        kActionId, deadline_, [&](absl::StatusOr<MachineAction> action) {
          ++results;
          ASSERT_FALSE(action.ok());
          ExpectNoSecret(action.status(), prefix);
          ExpectNoSecret(action.status(), "secret-");
        });
  }
  EXPECT_EQ(results, static_cast<int>(answers.size()));
  EXPECT_EQ(transport_.requests().size(), answers.size() + 1);
  // The bearer token did go out, in the header and nowhere else.
  for (const http::HttpRequest& request : transport_.requests()) {
    EXPECT_TRUE(absl::StartsWith(HeaderValues(request, "Authorization").at(0),
                                 absl::StrCat("Bearer ", prefix)));
    EXPECT_FALSE(absl::StrContains(request.url, "secret-"));
    EXPECT_FALSE(absl::StrContains(request.body, "secret-"));
  }
}

TEST_F(RestDefenderClientTest, EchoedTokenIsRedacted) {
  const std::string prefix = "eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9.secret-";
  FakeCredential credential(prefix);
  RestDefenderClient client({kBaseUrl, kScope}, credential, transport_);
  const std::string token = prefix + "1";
  transport_.EnqueueError(MakeError(absl::StatusCode::kUnavailable,
                                    absl::StrCat("proxy refused header Bearer ", token),
                                    "UPSTREAM_CONNECT_FAILED",
                                    {{"request_sent", "false"}, {"header", token}}));
  transport_.Enqueue(
      404, absl::StrCat(R"({"error": {"code": "NotFound", "message": "token )", prefix,
                        R"(2 not accepted", "target": ")", prefix, R"(2"}})"));
  std::vector<absl::Status> errors;
  for (int i = 0; i < 2; ++i) {
    client.GetMachineAction(kActionId, deadline_, [&](absl::StatusOr<MachineAction> action) {
      errors.push_back(action.status());
    });
  }
  ASSERT_EQ(errors.size(), 2u);
  for (const absl::Status& error : errors) {
    EXPECT_FALSE(error.ok());
    ExpectNoSecret(error, prefix);
    EXPECT_TRUE(absl::StrContains(error.message(), "[redacted]")) << error;
  }
  EXPECT_EQ(ErrorReason(errors[0]), "UPSTREAM_CONNECT_FAILED");
  EXPECT_EQ(Metadata(errors[0], "request_sent"), "false");
  EXPECT_EQ(Metadata(errors[0], "header"), "[redacted]");
  EXPECT_EQ(Metadata(errors[1], "tracking_id"), "[redacted]");
}

TEST_F(RestDefenderClientTest, WorksWhenAnswersComeLaterOnAnotherThread) {
  FakeCredential credential("t", /*defer=*/true);
  DeferredTransport transport;
  RestDefenderClient client({kBaseUrl, kScope}, credential, transport);
  transport.answers().Enqueue(401, "");
  transport.answers().Enqueue(201, kActionJson);

  absl::Notification done;
  std::optional<absl::StatusOr<MachineAction>> result;
  int calls = 0;
  client.StopAndQuarantineFile({kMachineId, kSha1, "c"}, deadline_,
                               [&](absl::StatusOr<MachineAction> action) {
                                 ++calls;
                                 result = std::move(action);
                                 done.Notify();
                               });
  EXPECT_FALSE(done.HasBeenNotified());
  // Token, 401, new token, 201: each step answered on a fresh thread.
  std::vector<int> answered;
  for (int step = 0; step < 4; ++step) {
    std::thread worker([&] {
      answered.push_back(step % 2 == 0 ? credential.RunPending() : transport.RunPending());
    });
    worker.join();
  }
  EXPECT_EQ(answered, (std::vector<int>{1, 1, 1, 1}));
  ASSERT_TRUE(done.WaitForNotificationWithTimeout(absl::Seconds(10)));
  EXPECT_EQ(calls, 1);
  ASSERT_TRUE(result->ok()) << result->status();
  EXPECT_EQ((*result)->id, kActionId);
  ASSERT_EQ(credential.contexts().size(), 2u);
  EXPECT_EQ(credential.contexts()[1].rejected_token, "t1");
  EXPECT_EQ(transport.answers().requests().size(), 2u);
}

TEST_F(RestDefenderClientTest, ConcurrentCallsAreIndependent) {
  constexpr int kCalls = 8;
  FakeCredential credential("t", /*defer=*/true);
  DeferredTransport transport;
  RestDefenderClient client({kBaseUrl, kScope}, credential, transport);
  for (int i = 0; i < kCalls; ++i) {
    transport.answers().Enqueue(200, absl::StrCat(R"({"id": "action-)", i, R"("})"));
  }
  absl::Mutex mu;
  std::vector<std::string> ids;
  for (int i = 0; i < kCalls; ++i) {
    client.GetMachineAction(absl::StrCat("action-", i), deadline_,
                            [&](absl::StatusOr<MachineAction> action) {
                              ASSERT_TRUE(action.ok()) << action.status();
                              absl::MutexLock lock(&mu);
                              ids.push_back(action->id);
                            });
  }
  std::thread tokens([&] { credential.RunPending(); });
  tokens.join();
  std::thread answers([&] { transport.RunPending(); });
  answers.join();
  absl::MutexLock lock(&mu);
  EXPECT_EQ(ids.size(), static_cast<size_t>(kCalls));
}

// ---------------------------------------------------------------------------
// MapDefenderError

http::HttpResponse Response(int status, std::string body = "",
                            std::vector<http::Header> headers = {}) {
  http::HttpResponse response;
  response.status = status;
  response.body = std::move(body);
  response.headers = std::move(headers);
  return response;
}

// ErrorBody returns Defender's error JSON.
std::string ErrorBody(const std::string& code, const std::string& message,
                      const std::string& target = "a1b2c3") {
  return json({{"error", {{"code", code}, {"message", message}, {"target", target}}}}).dump();
}

struct MappingRow {
  int http_status;
  std::string code;
  std::string message;
  absl::StatusCode expected_code;
  std::string expected_reason;
};

void PrintTo(const MappingRow& row, std::ostream* os) {
  *os << row.http_status << " " << row.code << " \"" << row.message << "\"";
}

class MapDefenderErrorRowTest : public ::testing::TestWithParam<MappingRow> {};

TEST_P(MapDefenderErrorRowTest, Maps) {
  const MappingRow& row = GetParam();
  absl::Status status = MapDefenderError(Response(row.http_status, ErrorBody(row.code, row.message)));
  EXPECT_EQ(status.code(), row.expected_code) << status;
  EXPECT_EQ(ErrorReason(status), row.expected_reason) << status;
  EXPECT_EQ(Metadata(status, "http_status"), absl::StrCat(row.http_status));
  EXPECT_EQ(Metadata(status, "defender_code"), row.code);
  EXPECT_EQ(Metadata(status, "tracking_id"), "a1b2c3");
  EXPECT_EQ(Metadata(status, "defender_message"), row.message.empty() ? "<absent>" : row.message);
  EXPECT_TRUE(absl::StrContains(status.message(), row.message)) << status;
  EXPECT_TRUE(absl::StrContains(status.message(), "(tracking id a1b2c3)")) << status;
  std::optional<google::rpc::ErrorInfo> info = GetErrorInfo(status);
  ASSERT_TRUE(info.has_value());
  EXPECT_EQ(info->domain(), kErrorDomain);
}

INSTANTIATE_TEST_SUITE_P(
    MapDefenderError, MapDefenderErrorRowTest,
    ::testing::Values(
        MappingRow{400, "ActiveRequestAlreadyExists", "Action is already in progress",
                   absl::StatusCode::kAlreadyExists, "ACTION_ALREADY_RUNNING"},
        MappingRow{400, "ActiveRequestAlreadyExists", "",
                   absl::StatusCode::kAlreadyExists, "ACTION_ALREADY_RUNNING"},
        MappingRow{400, "BadRequest", "Action is already in progress",
                   absl::StatusCode::kAlreadyExists, "ACTION_ALREADY_RUNNING"},
        MappingRow{400, "InvalidRequestBody", "ACTION IS ALREADY IN PROGRESS for machine",
                   absl::StatusCode::kAlreadyExists, "ACTION_ALREADY_RUNNING"},
        MappingRow{400, "OsPlatformNotSupported", "Supported only on Windows",
                   absl::StatusCode::kFailedPrecondition, "DEFENDER_PRECONDITION_FAILED"},
        MappingRow{400, "ClientVersionNotSupported", "Client version too old",
                   absl::StatusCode::kFailedPrecondition, "DEFENDER_PRECONDITION_FAILED"},
        MappingRow{400, "BadRequest", "Bad request", absl::StatusCode::kInvalidArgument,
                   "DEFENDER_BAD_REQUEST"},
        MappingRow{400, "ODataError", "The query specified is invalid",
                   absl::StatusCode::kInvalidArgument, "DEFENDER_BAD_REQUEST"},
        MappingRow{400, "InvalidInput", "Invalid input", absl::StatusCode::kInvalidArgument,
                   "DEFENDER_BAD_REQUEST"},
        MappingRow{400, "InvalidRequestBody", "Comment is required",
                   absl::StatusCode::kInvalidArgument, "DEFENDER_BAD_REQUEST"},
        MappingRow{400, "InvalidHashValue", "Sha1 is invalid",
                   absl::StatusCode::kInvalidArgument, "DEFENDER_BAD_REQUEST"},
        MappingRow{400, "MissingRequiredParameter", "Sha1 is missing",
                   absl::StatusCode::kInvalidArgument, "DEFENDER_BAD_REQUEST"},
        MappingRow{401, "Unauthorized", "Token expired", absl::StatusCode::kUnauthenticated,
                   "DEFENDER_UNAUTHORIZED"},
        MappingRow{403, "Forbidden", "Missing application roles",
                   absl::StatusCode::kPermissionDenied, "DEFENDER_FORBIDDEN"},
        MappingRow{403, "DisabledFeature", "Feature is disabled",
                   absl::StatusCode::kPermissionDenied, "DEFENDER_FORBIDDEN"},
        MappingRow{403, "DisallowedOperation", "Operation not allowed",
                   absl::StatusCode::kPermissionDenied, "DEFENDER_FORBIDDEN"},
        MappingRow{404, "NotFound", "Action not found", absl::StatusCode::kNotFound,
                   "DEFENDER_NOT_FOUND"},
        MappingRow{404, "ResourceNotFound",
                   "Sha1 87662bc3d60e4200ceaf7aae249d1c343f4b83c9 was not found in machine "
                   "1e5bc9d7e413ddd7902c2932e418702b84d0cc07",
                   absl::StatusCode::kNotFound, "DEFENDER_NOT_FOUND"},
        MappingRow{429, "TooManyRequests", "Rate limit exceeded",
                   absl::StatusCode::kResourceExhausted, "DEFENDER_THROTTLED"},
        MappingRow{500, "InternalServerError", "Oops", absl::StatusCode::kUnavailable,
                   "DEFENDER_UNAVAILABLE"},
        MappingRow{502, "BadGateway", "Bad gateway", absl::StatusCode::kUnavailable,
                   "DEFENDER_UNAVAILABLE"},
        MappingRow{503, "ServiceUnavailable", "Try later", absl::StatusCode::kUnavailable,
                   "DEFENDER_UNAVAILABLE"},
        MappingRow{504, "GatewayTimeout", "Timeout", absl::StatusCode::kUnavailable,
                   "DEFENDER_UNAVAILABLE"},
        MappingRow{507, "InsufficientStorage", "Full", absl::StatusCode::kUnavailable,
                   "DEFENDER_UNAVAILABLE"},
        MappingRow{408, "RequestTimeout", "Slow", absl::StatusCode::kUnavailable,
                   "DEFENDER_UNEXPECTED_STATUS"},
        MappingRow{405, "MethodNotAllowed", "No", absl::StatusCode::kInternal,
                   "DEFENDER_UNEXPECTED_STATUS"},
        MappingRow{409, "Conflict", "Conflict", absl::StatusCode::kInternal,
                   "DEFENDER_UNEXPECTED_STATUS"},
        MappingRow{302, "Found", "Moved", absl::StatusCode::kInternal,
                   "DEFENDER_UNEXPECTED_STATUS"}),
    [](const ::testing::TestParamInfo<MappingRow>& info) {
      return absl::StrCat(info.index, "_Http", info.param.http_status, "_", info.param.code);
    });

TEST(MapDefenderErrorTest, NotFoundMessageFormat) {
  absl::Status status = MapDefenderError(Response(
      404, ErrorBody("ResourceNotFound", "Machine 123 was not found", "trk-1")));
  EXPECT_EQ(status.message(),
            "Defender answered 404 ResourceNotFound: Machine 123 was not found "
            "(tracking id trk-1)");
}

TEST(MapDefenderErrorTest, ForbiddenNamesThePermissions) {
  absl::Status status =
      MapDefenderError(Response(403, ErrorBody("Forbidden", "Missing application roles")));
  EXPECT_TRUE(absl::StrContains(status.message(), "Machine.StopAndQuarantine")) << status;
  EXPECT_TRUE(absl::StrContains(status.message(), "Machine.Read.All")) << status;
  EXPECT_TRUE(absl::StrContains(status.message(), "Machine.ReadWrite.All")) << status;
  EXPECT_TRUE(absl::StrContains(status.message(), "admin consent")) << status;
}

TEST(MapDefenderErrorTest, ThrottledRetryAfterSeconds) {
  absl::Status status = MapDefenderError(
      Response(429, ErrorBody("TooManyRequests", "slow down"), {{"Retry-After", "30"}}));
  EXPECT_EQ(status.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(GetRetryDelay(status), absl::Seconds(30));
  EXPECT_EQ(Metadata(status, "retry_after_seconds"), "30");
}

TEST(MapDefenderErrorTest, ThrottledRetryAfterHeaderNameIsCaseInsensitive) {
  absl::Status status = MapDefenderError(Response(429, "", {{"retry-after", " 7 "}}));
  EXPECT_EQ(GetRetryDelay(status), absl::Seconds(7));
}

TEST(MapDefenderErrorTest, ThrottledRetryAfterHttpDate) {
  const absl::Time now = absl::FromCivil(absl::CivilSecond(2015, 10, 21, 7, 26, 0),
                                         absl::UTCTimeZone());
  absl::Status status = MapDefenderError(
      Response(429, "", {{"Retry-After", "Wed, 21 Oct 2015 07:28:00 GMT"}}), now);
  EXPECT_EQ(status.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(GetRetryDelay(status), absl::Seconds(120));
}

TEST(MapDefenderErrorTest, ThrottledRetryAfterHttpDateInThePast) {
  const absl::Time now = absl::FromCivil(absl::CivilSecond(2015, 10, 21, 8, 0, 0),
                                         absl::UTCTimeZone());
  absl::Status status = MapDefenderError(
      Response(429, "", {{"Retry-After", "Wed, 21 Oct 2015 07:28:00 GMT"}}), now);
  EXPECT_EQ(GetRetryDelay(status), absl::ZeroDuration());
}

TEST(MapDefenderErrorTest, ThrottledRetryAfterHttpDateWithRealClock) {
  const std::string date = absl::FormatTime("%a, %d %b %Y %H:%M:%S GMT",
                                            absl::Now() + absl::Seconds(300), absl::UTCTimeZone());
  absl::Status status = MapDefenderError(Response(429, "", {{"Retry-After", date}}));
  std::optional<absl::Duration> delay = GetRetryDelay(status);
  ASSERT_TRUE(delay.has_value());
  EXPECT_GT(*delay, absl::Seconds(250));
  EXPECT_LE(*delay, absl::Seconds(300));
}

TEST(MapDefenderErrorTest, ThrottledWithoutRetryAfterWaits60Seconds) {
  absl::Status status = MapDefenderError(Response(429, ErrorBody("TooManyRequests", "")));
  EXPECT_EQ(GetRetryDelay(status), absl::Seconds(60));
}

TEST(MapDefenderErrorTest, ThrottledWithUnreadableRetryAfterWaits60Seconds) {
  for (const char* value : {"soon", "-5", "1.5", "Wed, 99 Oct 2015 07:28:00 GMT", ""}) {
    absl::Status status = MapDefenderError(Response(429, "", {{"Retry-After", value}}));
    EXPECT_EQ(GetRetryDelay(status), absl::Seconds(60)) << value;
  }
}

TEST(MapDefenderErrorTest, ThrottledWithHugeRetryAfterIsCapped) {
  absl::Status status =
      MapDefenderError(Response(429, "", {{"Retry-After", "99999999999999999999999"}}));
  EXPECT_EQ(GetRetryDelay(status), absl::Hours(24));
}

TEST(MapDefenderErrorTest, UnavailableCarriesRetryAfterOnlyWhenSent) {
  EXPECT_EQ(GetRetryDelay(MapDefenderError(Response(503, "", {{"Retry-After", "5"}}))),
            absl::Seconds(5));
  EXPECT_EQ(GetRetryDelay(MapDefenderError(Response(503, ""))), std::nullopt);
  EXPECT_EQ(GetRetryDelay(MapDefenderError(Response(400, "", {{"Retry-After", "5"}}))),
            std::nullopt);
}

TEST(MapDefenderErrorTest, EmptyBody) {
  absl::Status status = MapDefenderError(Response(503, ""));
  EXPECT_EQ(status.code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(ErrorReason(status), "DEFENDER_UNAVAILABLE");
  EXPECT_EQ(status.message(), "Defender answered 503 (no error details)");
  EXPECT_EQ(Metadata(status, "http_status"), "503");
  EXPECT_EQ(Metadata(status, "defender_code"), "<absent>");
  EXPECT_EQ(Metadata(status, "tracking_id"), "<absent>");
  EXPECT_EQ(Metadata(status, "defender_message"), "<absent>");
}

TEST(MapDefenderErrorTest, HtmlBodyIsNotQuoted) {
  absl::Status status = MapDefenderError(
      Response(502, "<html><head><title>502 Bad Gateway</title></head><body>nginx</body></html>"));
  EXPECT_EQ(status.code(), absl::StatusCode::kUnavailable);
  EXPECT_FALSE(absl::StrContains(status.message(), "nginx")) << status;
  EXPECT_EQ(Metadata(status, "defender_code"), "<absent>");
}

TEST(MapDefenderErrorTest, HtmlBodyOn404) {
  absl::Status status = MapDefenderError(Response(404, "<html>Not Found</html>"));
  EXPECT_EQ(status.code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(ErrorReason(status), "DEFENDER_NOT_FOUND");
}

TEST(MapDefenderErrorTest, OddErrorShapes) {
  for (const char* body : {
           R"(null)", R"([])", R"("error")", R"({"error": null})", R"({"error": "Bad"})",
           R"({"error": {"code": 5, "message": ["x"], "target": {}}})", R"({"message": "x"})",
           R"({"error": {"code": "BadRequest")",  // truncated
       }) {
    absl::Status status = MapDefenderError(Response(400, body));
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << body;
    EXPECT_EQ(ErrorReason(status), "DEFENDER_BAD_REQUEST") << body;
    EXPECT_EQ(Metadata(status, "defender_code"), "<absent>") << body;
  }
}

TEST(MapDefenderErrorTest, ODataMessageObject) {
  absl::Status status = MapDefenderError(Response(
      400, R"({"error": {"code": "ODataError", "message": {"lang": "en-US", "value": "Bad $filter"}}})"));
  EXPECT_EQ(Metadata(status, "defender_message"), "Bad $filter");
}

TEST(MapDefenderErrorTest, LongMessageIsTruncatedOnCharacterBoundary) {
  std::string message;
  while (message.size() < 1000) message += "é✓";  // 2- and 3-byte characters
  absl::Status status = MapDefenderError(Response(404, ErrorBody("ResourceNotFound", message)));
  std::optional<google::rpc::ErrorInfo> info = GetErrorInfo(status);
  ASSERT_TRUE(info.has_value());  // the proto parsed back: valid UTF-8
  const std::string kept = info->metadata().at("defender_message");
  EXPECT_LE(kept.size(), 303u);
  EXPECT_GE(kept.size(), 290u);
  EXPECT_TRUE(absl::EndsWith(kept, "...")) << kept;
  const std::string prefix = kept.substr(0, kept.size() - 3);
  EXPECT_TRUE(absl::StartsWith(message, prefix));
  EXPECT_FALSE(json::parse(json(prefix).dump(), nullptr, false).is_discarded());
  EXPECT_LT(status.message().size(), 500u);
}

TEST(MapDefenderErrorTest, AlreadyInProgressMessageDoesNotOverridePreconditionCode) {
  absl::Status status = MapDefenderError(
      Response(400, ErrorBody("OsPlatformNotSupported", "Action is already in progress")));
  EXPECT_EQ(status.code(), absl::StatusCode::kFailedPrecondition);
}

// --- Retries, lookups and waits: the fakes answer inline, time is a FakeClock
// and waits are a ManualScheduler the test drives.

constexpr char kComment[] = "retry me";

std::string ActionWith(const std::string& id, const std::string& sha1, const std::string& comment,
                       const std::string& status = "Pending") {
  return json{{"id", id},
              {"type", "StopAndQuarantineFile"},
              {"status", status},
              {"machineId", kMachineId},
              {"requestorComment", comment},
              {"creationDateTimeUtc", "2030-01-01T00:00:00.1234567Z"},
              {"relatedFileInfo", {{"fileIdentifier", sha1}, {"fileIdentifierType", "Sha1"}}}}
      .dump();
}

std::string ListOf(const std::vector<std::string>& actions) {
  json value = json::array();
  for (const std::string& action : actions) value.push_back(json::parse(action));
  return json{{"@odata.context", "x"}, {"value", value}}.dump();
}

absl::Status TransportError(const std::string& reason, bool sent) {
  return MakeError(absl::StatusCode::kUnavailable, "transport fault", reason,
                   {{"request_sent", sent ? "true" : "false"}});
}

// RejectingLimiter refuses every slot.
class RejectingLimiter final : public RateLimiter {
 public:
  void Acquire(const std::string& key, absl::Time deadline,
               std::shared_ptr<Cancellation> cancellation, Callback done) override {
    keys.push_back(key);
    absl::Status error = MakeError(absl::StatusCode::kResourceExhausted, "budget", "RATE_LIMITED");
    SetRetryDelay(error, absl::Seconds(42));
    std::move(done)(error);
  }
  std::vector<std::string> keys;
};

class RestDefenderClientRetryTest : public ::testing::Test {
 protected:
  RestDefenderClientRetryTest() : scheduler_(clock_) {
    RestDefenderClientOptions options;
    options.api_base_url = kBaseUrl;
    options.scope = kScope;
    options.tenant = "contoso";
    options.scheduler = &scheduler_;
    options.clock = &clock_;
    client_ = std::make_unique<RestDefenderClient>(options, credential_, transport_);
  }

  void StartQuarantine(absl::Duration deadline,
                       std::shared_ptr<Cancellation> cancellation = nullptr,
                       absl::Time maybe_sent_since = absl::InfiniteFuture()) {
    start_ = clock_.Now();
    client_->StopAndQuarantineFile({kMachineId, kSha1, kComment, maybe_sent_since},
                                   CallContext(clock_.Now() + deadline, std::move(cancellation)),
                                   [this](absl::StatusOr<MachineAction> action) {
                                     ++callbacks_;
                                     result_ = std::move(action);
                                   });
  }

  void StartGet(absl::Duration deadline, std::shared_ptr<Cancellation> cancellation = nullptr) {
    start_ = clock_.Now();
    client_->GetMachineAction(kActionId,
                              CallContext(clock_.Now() + deadline, std::move(cancellation)),
                              [this](absl::StatusOr<MachineAction> action) {
                                ++callbacks_;
                                result_ = std::move(action);
                              });
  }

  void StartCancel(absl::Duration deadline) {
    start_ = clock_.Now();
    client_->CancelMachineAction(kActionId, "undo", clock_.Now() + deadline,
                                 [this](absl::StatusOr<MachineAction> action) {
                                   ++callbacks_;
                                   result_ = std::move(action);
                                 });
  }

  // RunTimers lets time pass until the call has finished or nothing waits.
  void RunTimers() {
    while (!result_ && scheduler_.Pending() > 0) {
      const absl::Duration step = scheduler_.NextTime() - clock_.Now();
      if (step > absl::ZeroDuration()) clock_.Advance(step);
      scheduler_.RunDue();
    }
  }

  std::vector<std::string> Methods() const {
    std::vector<std::string> methods;
    for (const auto& request : transport_.requests()) {
      methods.push_back(request.method == "GET" &&
                                absl::StrContains(request.url, "/api/machineactions?")
                            ? "LIST"
                            : request.method);
    }
    return methods;
  }

  FakeClock clock_;
  ManualScheduler scheduler_;
  FakeCredential credential_;
  FakeTransport transport_;
  std::unique_ptr<RestDefenderClient> client_;
  absl::Time start_;
  int callbacks_ = 0;
  std::optional<absl::StatusOr<MachineAction>> result_;
};

using Seq = std::vector<std::string>;

TEST_F(RestDefenderClientRetryTest, ReadIsRetriedAfterServerErrorsWithBackoff) {
  transport_.Enqueue(503, "");
  transport_.Enqueue(502, "");
  transport_.Enqueue(200, kActionJson);
  StartGet(absl::Seconds(30));
  RunTimers();
  ASSERT_TRUE(result_.has_value());
  ASSERT_TRUE(result_->ok()) << result_->status();
  EXPECT_EQ(Methods(), (Seq{"GET", "GET", "GET"}));
  EXPECT_GE(clock_.Now() - start_, absl::Milliseconds(300));  // 200 ms and 400 ms, jittered
  EXPECT_EQ(callbacks_, 1);
}

TEST_F(RestDefenderClientRetryTest, ServerErrorOnPostLooksForTheActionBeforeSendingAgain) {
  transport_.Enqueue(503, "");
  transport_.Enqueue(200, ListOf({}));
  transport_.Enqueue(201, kActionJson);
  StartQuarantine(absl::Seconds(30));
  RunTimers();
  ASSERT_TRUE(result_->ok()) << result_->status();
  EXPECT_EQ(Methods(), (Seq{"POST", "LIST", "POST"}));
  const std::string lookup = transport_.requests()[1].url;  // requests() is a copy
  EXPECT_TRUE(absl::StrContains(lookup, "machineId%20eq%20%27" + std::string(kMachineId)));
  EXPECT_TRUE(absl::StrContains(lookup, "type%20eq%20%27StopAndQuarantineFile%27"));
  EXPECT_TRUE(absl::StrContains(lookup, "creationDateTimeUtc%20ge%20"));
}

TEST_F(RestDefenderClientRetryTest, LostConnectionAfterSendingReturnsTheCreatedAction) {
  transport_.EnqueueError(TransportError("UPSTREAM_CONNECTION_LOST", /*sent=*/true));
  transport_.Enqueue(200, ListOf({ActionWith("other-file", std::string(40, 'c'), kComment),
                                  ActionWith("mine", kSha1, kComment),
                                  ActionWith("other-comment", kSha1, "someone else")}));
  StartQuarantine(absl::Seconds(30));
  RunTimers();
  ASSERT_TRUE(result_->ok()) << result_->status();
  EXPECT_EQ((*result_)->id, "mine");
  EXPECT_EQ(Methods(), (Seq{"POST", "LIST"}));  // never a second POST
}

TEST_F(RestDefenderClientRetryTest, LookupMatchesOnlyTheSameFileAndComment) {
  transport_.EnqueueError(TransportError("UPSTREAM_TIMEOUT", /*sent=*/true));
  transport_.Enqueue(200, ListOf({ActionWith("other-file", std::string(40, 'c'), kComment),
                                  ActionWith("other-comment", kSha1, "someone else")}));
  transport_.Enqueue(201, kActionJson);
  StartQuarantine(absl::Seconds(30));
  RunTimers();
  ASSERT_TRUE(result_->ok()) << result_->status();
  EXPECT_EQ((*result_)->id, kActionId);
  EXPECT_EQ(Methods(), (Seq{"POST", "LIST", "POST"}));
}

TEST_F(RestDefenderClientRetryTest, RefusedConnectionIsSentAgainWithoutLookup) {
  transport_.EnqueueError(TransportError("UPSTREAM_CONNECT_FAILED", /*sent=*/false));
  transport_.Enqueue(201, kActionJson);
  StartQuarantine(absl::Seconds(30));
  RunTimers();
  ASSERT_TRUE(result_->ok()) << result_->status();
  EXPECT_EQ(Methods(), (Seq{"POST", "POST"}));
}

TEST_F(RestDefenderClientRetryTest, ThrottlingWaitsForRetryAfter) {
  transport_.Enqueue(429, "", {{"Retry-After", "5"}});
  transport_.Enqueue(201, kActionJson);
  StartQuarantine(absl::Seconds(30));
  EXPECT_FALSE(result_.has_value());  // waiting, holding no thread
  RunTimers();
  ASSERT_TRUE(result_->ok()) << result_->status();
  EXPECT_EQ(clock_.Now() - start_, absl::Seconds(5));
  EXPECT_EQ(Methods(), (Seq{"POST", "POST"}));
}

TEST_F(RestDefenderClientRetryTest, ThrottlingBeyondTheDeadlineFailsAtOnce) {
  transport_.Enqueue(429, "", {{"Retry-After", "60"}});
  StartQuarantine(absl::Seconds(10));
  ASSERT_TRUE(result_.has_value());  // at once, not at the deadline
  EXPECT_EQ(result_->status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(GetRetryDelay(result_->status()), absl::Seconds(60));
  EXPECT_EQ(Metadata(result_->status(), "attempts"), "1");
  EXPECT_EQ(scheduler_.Pending(), 0u);
}

TEST_F(RestDefenderClientRetryTest, PersistentFaultsStopBeforeTheDeadline) {
  for (int i = 0; i < 50; ++i) transport_.Enqueue(503, "");
  StartGet(absl::Seconds(3));
  RunTimers();
  ASSERT_TRUE(result_.has_value());
  EXPECT_EQ(result_->status().code(), absl::StatusCode::kUnavailable);
  EXPECT_LE(clock_.Now(), start_ + absl::Seconds(3));
  EXPECT_GE(transport_.requests().size(), 3u);
  EXPECT_EQ(Metadata(result_->status(), "attempts"),
            absl::StrCat(transport_.requests().size()));
}

TEST_F(RestDefenderClientRetryTest, OutcomeUnknownAtTheDeadlineIsSaid) {
  transport_.EnqueueError(TransportError("UPSTREAM_TIMEOUT", /*sent=*/true));
  for (int i = 0; i < 50; ++i) transport_.Enqueue(503, "");  // the lookups fail too
  StartQuarantine(absl::Seconds(3));
  RunTimers();
  ASSERT_TRUE(result_.has_value());
  EXPECT_EQ(ErrorReason(result_->status()), "UPSTREAM_TIMEOUT");
  EXPECT_EQ(Metadata(result_->status(), "outcome"), "unknown");
  EXPECT_EQ(Methods()[0], "POST");
  for (size_t i = 1; i < Methods().size(); ++i) EXPECT_EQ(Methods()[i], "LIST");
}

TEST_F(RestDefenderClientRetryTest, CancellationDuringBackoffEndsTheCallAtOnce) {
  transport_.Enqueue(503, "");
  auto cancellation = std::make_shared<Cancellation>();
  StartGet(absl::Seconds(30), cancellation);
  ASSERT_FALSE(result_.has_value());
  ASSERT_EQ(scheduler_.Pending(), 1u);
  cancellation->Cancel();
  ASSERT_TRUE(result_.has_value());
  EXPECT_EQ(result_->status().code(), absl::StatusCode::kCancelled);
  EXPECT_EQ(scheduler_.Pending(), 0u);
  RunTimers();
  EXPECT_EQ(callbacks_, 1);
  EXPECT_EQ(transport_.requests().size(), 1u);
}

TEST_F(RestDefenderClientRetryTest, AlreadyRunningNamesTheExistingAction) {
  transport_.Enqueue(400, R"({"error": {"code": "ActiveRequestAlreadyExists"}})");
  transport_.Enqueue(200, ListOf({ActionWith("pending-one", kSha1, "earlier playbook run")}));
  StartQuarantine(absl::Seconds(30));
  ASSERT_TRUE(result_.has_value());
  EXPECT_EQ(result_->status().code(), absl::StatusCode::kAlreadyExists);
  EXPECT_EQ(Metadata(result_->status(), "existing_action_id"), "pending-one");
  EXPECT_EQ(Metadata(result_->status(), "outcome"), "<absent>");
}

TEST_F(RestDefenderClientRetryTest, AlreadyRunningAfterAFaultIsOurOwnAction) {
  transport_.Enqueue(502, "");
  transport_.Enqueue(200, ListOf({}));  // not visible yet
  transport_.Enqueue(400, R"({"error": {"code": "ActiveRequestAlreadyExists"}})");
  transport_.Enqueue(200, ListOf({ActionWith("mine", kSha1, kComment)}));
  StartQuarantine(absl::Seconds(30));
  RunTimers();
  ASSERT_TRUE(result_->ok()) << result_->status();
  EXPECT_EQ((*result_)->id, "mine");
  EXPECT_EQ(Methods(), (Seq{"POST", "LIST", "POST", "LIST"}));
}

TEST_F(RestDefenderClientRetryTest, RateLimiterRefusalEndsTheCallWithNothingSent) {
  RejectingLimiter limiter;
  RestDefenderClientOptions options;
  options.api_base_url = kBaseUrl;
  options.scope = kScope;
  options.tenant = "contoso";
  options.limiter = &limiter;
  RestDefenderClient client(options, credential_, transport_);
  std::optional<absl::StatusOr<MachineAction>> result;
  client.StopAndQuarantineFile({kMachineId, kSha1, kComment}, clock_.Now() + absl::Seconds(30),
                               [&](absl::StatusOr<MachineAction> a) { result = std::move(a); });
  ASSERT_TRUE(result.has_value());
  EXPECT_EQ(result->status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(GetRetryDelay(result->status()), absl::Seconds(42));
  EXPECT_EQ(limiter.keys, (std::vector<std::string>{"contoso/StopAndQuarantineFile"}));
  EXPECT_TRUE(transport_.requests().empty());
  EXPECT_TRUE(credential_.contexts().empty());
}

// ---------------------------------------------------------------------------
// CancelMachineAction, GetFile, FindMachinesByDnsName, maybe_sent_since

// PercentDecode undoes UrlEscape ("%27" -> "'"); "+" stays as it is.
std::string PercentDecode(const std::string& text) {
  std::string out;
  for (size_t i = 0; i < text.size(); ++i) {
    if (text[i] == '%' && i + 2 < text.size()) {
      out.push_back(static_cast<char>(std::stoi(text.substr(i + 1, 2), nullptr, 16)));
      i += 2;
    } else {
      out.push_back(text[i]);
    }
  }
  return out;
}

// FilterOf returns the decoded $filter of `url`, which must be
// "<prefix>?$filter=<escaped>" with nothing after.
std::string FilterOf(const std::string& url, const std::string& prefix) {
  const std::string head = prefix + "?$filter=";
  if (!absl::StartsWith(url, head)) return "<url is " + url + ">";
  const std::string escaped = url.substr(head.size());
  if (escaped.find_first_of(" '&#?") != std::string::npos) return "<not escaped: " + url + ">";
  return PercentDecode(escaped);
}

constexpr char kSha256[] = "413c58c8267d2c8648d8f6384bacc2ae9c929b2b96578b6860b5087cd1bd6462";

TEST_F(RestDefenderClientTest, CancelPostsTheComment) {
  transport_.Enqueue(200, json{{"id", kActionId},
                               {"status", "Cancelled"},
                               {"cancellationComment", "false positive"}}
                              .dump());
  absl::StatusOr<MachineAction> action = Cancel(kActionId, "false positive");
  ASSERT_TRUE(action.ok()) << action.status();
  EXPECT_EQ(action->id, kActionId);
  EXPECT_EQ(action->status, "Cancelled");
  EXPECT_EQ(action->cancellation_comment, "false positive");

  ASSERT_EQ(transport_.requests().size(), 1u);
  const http::HttpRequest request = transport_.requests()[0];
  EXPECT_EQ(request.method, "POST");
  EXPECT_EQ(request.url, "https://api.example.test/api/machineactions/"
                         "141408d1-384c-4c19-8b57-ba39e378011a/cancel");
  EXPECT_EQ(request.body, R"({"Comment":"false positive"})");
  EXPECT_EQ(HeaderValues(request, "Authorization"), std::vector<std::string>{"Bearer t1"});
  EXPECT_EQ(HeaderValues(request, "Content-Type"), std::vector<std::string>{"application/json"});
  EXPECT_EQ(HeaderValues(request, "Accept"), std::vector<std::string>{"application/json"});
  EXPECT_TRUE(request.idempotent);  // a second cancel is harmless
  EXPECT_LE(request.deadline, absl::Now() + absl::Seconds(20));
}

TEST_F(RestDefenderClientTest, CancelCommentGoesOutAsUtf8AndIdIsEscaped) {
  transport_.Enqueue(200, kActionJson);
  transport_.Enqueue(200, kActionJson);
  const std::string comment = "He said \"stop\" \\ Ünïcødé ✓\n";
  ASSERT_TRUE(Cancel("a b/c", comment).ok());
  ASSERT_TRUE(Cancel(kActionId, "bad \xff byte").ok());
  const std::vector<http::HttpRequest> requests = transport_.requests();
  ASSERT_EQ(requests.size(), 2u);
  EXPECT_EQ(requests[0].url,
            absl::StrCat(kBaseUrl, "/api/machineactions/", http::UrlEscape("a b/c"), "/cancel"));
  EXPECT_EQ(requests[0].body, "{\"Comment\":\"He said \\\"stop\\\" \\\\ Ünïcødé ✓\\n\"}");
  EXPECT_EQ(json::parse(requests[0].body), json({{"Comment", comment}}));
  EXPECT_EQ(json::parse(requests[1].body), json({{"Comment", "bad \xEF\xBF\xBD byte"}}));
}

TEST_F(RestDefenderClientTest, CancelOfAFinalActionIsInvalidArgument) {
  transport_.Enqueue(400, R"({"error": {"code": "BadRequest",
                              "message": "Action is already in final state", "target": "t-7"}})");
  transport_.Enqueue(200, kActionJson);  // never reached
  absl::StatusOr<MachineAction> action = Cancel(kActionId, "undo");
  ASSERT_FALSE(action.ok());
  EXPECT_EQ(action.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ErrorReason(action.status()), "DEFENDER_BAD_REQUEST");
  EXPECT_EQ(Metadata(action.status(), "defender_message"), "Action is already in final state");
  EXPECT_EQ(Metadata(action.status(), "attempts"), "1");
  EXPECT_EQ(Metadata(action.status(), "outcome"), "<absent>");
  EXPECT_EQ(transport_.requests().size(), 1u);
}

TEST_F(RestDefenderClientTest, CancelUnreadableAnswerIsBadUpstreamResponse) {
  transport_.Enqueue(200, R"({"status": "Cancelled"})");
  absl::StatusOr<MachineAction> action = Cancel(kActionId, "undo");
  EXPECT_EQ(action.status().code(), absl::StatusCode::kInternal);
  EXPECT_EQ(ErrorReason(action.status()), "BAD_UPSTREAM_RESPONSE");
  EXPECT_EQ(Metadata(action.status(), "http_status"), "200");
  EXPECT_EQ(transport_.requests().size(), 1u);  // no lookup, no second POST
}

TEST_F(RestDefenderClientTest, GetsFile) {
  transport_.Enqueue(200, json{{"sha1", "4388963AAA83AFE2042A46A3C017AD50BDCDAFB3"},
                               {"sha256", kSha256},
                               {"md5", "1b8e1f4c0a0f0e0b0c0d0e0f10111213"},
                               {"size", 22139496},
                               {"fileType", "APP"},
                               {"isPeFile", true},
                               {"filePublisher", "Contoso Ltd."},
                               {"signer", "Contoso Ltd."},
                               {"isValidCertificate", false},
                               {"determinationType", "Pup"}}
                              .dump());
  absl::StatusOr<FileInfo> file = File(kSha256);
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_EQ(file->sha1, "4388963aaa83afe2042a46a3c017ad50bdcdafb3");
  EXPECT_EQ(file->sha256, kSha256);
  EXPECT_EQ(file->md5, "1b8e1f4c0a0f0e0b0c0d0e0f10111213");
  EXPECT_EQ(file->size, 22139496);
  EXPECT_EQ(file->file_type, "APP");
  EXPECT_EQ(file->file_publisher, "Contoso Ltd.");
  EXPECT_EQ(file->signer, "Contoso Ltd.");
  EXPECT_EQ(file->is_valid_certificate, false);
  EXPECT_EQ(file->determination_type, "Pup");

  ASSERT_EQ(transport_.requests().size(), 1u);
  const http::HttpRequest request = transport_.requests()[0];
  EXPECT_EQ(request.method, "GET");
  EXPECT_EQ(request.url, absl::StrCat("https://api.example.test/api/files/", kSha256));
  EXPECT_EQ(request.body, "");
  EXPECT_TRUE(HeaderValues(request, "Content-Type").empty());
  EXPECT_EQ(HeaderValues(request, "Authorization"), std::vector<std::string>{"Bearer t1"});
  EXPECT_TRUE(request.idempotent);
}

TEST_F(RestDefenderClientTest, GetFileHashIsUrlEscaped) {
  transport_.Enqueue(200, json{{"sha1", kSha1}}.dump());
  ASSERT_TRUE(File("../x?y#z").ok());
  EXPECT_EQ(transport_.requests()[0].url,
            absl::StrCat(kBaseUrl, "/api/files/", http::UrlEscape("../x?y#z")));
}

TEST_F(RestDefenderClientTest, GetFileNotFound) {
  transport_.Enqueue(404, R"({"error": {"code": "ResourceNotFound",
                              "message": "File 413c was not found"}})");
  absl::StatusOr<FileInfo> file = File(kSha256);
  ASSERT_FALSE(file.ok());
  EXPECT_EQ(file.status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(ErrorReason(file.status()), "DEFENDER_NOT_FOUND");
  EXPECT_EQ(Metadata(file.status(), "defender_message"), "File 413c was not found");
  EXPECT_EQ(transport_.requests().size(), 1u);
}

TEST_F(RestDefenderClientTest, GetFileUnreadableAnswerIsInternal) {
  for (const char* body : {"<html>secret-ish page</html>", R"(["secret-ish"])",
                           R"({"md5": "secret-ish", "sha1": null, "sha256": 5})"}) {
    transport_.Enqueue(200, body);
    absl::StatusOr<FileInfo> file = File(kSha256);
    ASSERT_FALSE(file.ok()) << body;
    EXPECT_EQ(file.status().code(), absl::StatusCode::kInternal) << body;
    EXPECT_EQ(ErrorReason(file.status()), "BAD_UPSTREAM_RESPONSE") << body;
    EXPECT_EQ(Metadata(file.status(), "http_status"), "200") << body;
    EXPECT_EQ(Metadata(file.status(), "attempts"), "1") << body;
    ExpectNoSecret(file.status(), "secret-ish");
  }
}

TEST_F(RestDefenderClientTest, GetFileAlsoRetries401) {
  transport_.Enqueue(401, "");
  transport_.Enqueue(200, json{{"sha256", kSha256}}.dump());
  absl::StatusOr<FileInfo> file = File(kSha256);
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_EQ(file->sha1, "");
  ASSERT_EQ(credential_.contexts().size(), 2u);
  EXPECT_EQ(credential_.contexts()[1].rejected_token, "t1");
}

TEST_F(RestDefenderClientTest, FindMachinesSendsTheFilter) {
  transport_.Enqueue(200, R"({"@odata.context": "x", "value": []})");
  absl::StatusOr<std::vector<MachineInfo>> machines = Machines("host1.contoso.com");
  ASSERT_TRUE(machines.ok()) << machines.status();
  EXPECT_TRUE(machines->empty());

  ASSERT_EQ(transport_.requests().size(), 1u);
  const http::HttpRequest request = transport_.requests()[0];
  EXPECT_EQ(request.method, "GET");
  EXPECT_EQ(FilterOf(request.url, "https://api.example.test/api/machines"),
            "computerDnsName eq 'host1.contoso.com'");
  EXPECT_EQ(request.url,
            "https://api.example.test/api/machines?$filter="
            "computerDnsName%20eq%20%27host1.contoso.com%27");
  EXPECT_EQ(request.body, "");
  EXPECT_EQ(HeaderValues(request, "Authorization"), std::vector<std::string>{"Bearer t1"});
  EXPECT_TRUE(request.idempotent);
}

TEST_F(RestDefenderClientTest, FindMachinesDoublesQuotesInTheName) {
  transport_.Enqueue(200, R"({"value": []})");
  ASSERT_TRUE(Machines("o'brien' or 1 eq 1 or id eq '&x#y").ok());
  EXPECT_EQ(FilterOf(transport_.requests()[0].url, "https://api.example.test/api/machines"),
            "computerDnsName eq 'o''brien'' or 1 eq 1 or id eq ''&x#y'");
}

TEST_F(RestDefenderClientTest, FindMachinesOneResult) {
  transport_.Enqueue(200, R"({"value": [{
      "id": "1E5BC9D7E413DDD7902C2932E418702B84D0CC07",
      "computerDnsName": "host1.contoso.com", "osPlatform": "Windows11",
      "healthStatus": "Active", "lastIpAddress": "10.0.0.4",
      "lastSeen": "2018-08-02T14:55:03.7791856Z", "machineTags": ["a"]}]})");
  absl::StatusOr<std::vector<MachineInfo>> machines = Machines("host1.contoso.com");
  ASSERT_TRUE(machines.ok()) << machines.status();
  ASSERT_EQ(machines->size(), 1u);
  const MachineInfo& machine = (*machines)[0];
  EXPECT_EQ(machine.id, kMachineId);
  EXPECT_EQ(machine.computer_dns_name, "host1.contoso.com");
  EXPECT_EQ(machine.os_platform, "Windows11");
  EXPECT_EQ(machine.health_status, "Active");
  EXPECT_EQ(machine.last_ip_address, "10.0.0.4");
  EXPECT_EQ(machine.last_seen, ParseDefenderTime("2018-08-02T14:55:03.7791856Z"));
  ASSERT_TRUE(machine.last_seen.has_value());
}

TEST_F(RestDefenderClientTest, FindMachinesTwoResultsAndSkipsEntriesWithoutId) {
  transport_.Enqueue(200, R"({"value": [
      {"id": "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", "computerDnsName": "dup.contoso.com",
       "healthStatus": "Inactive", "lastSeen": null},
      {"computerDnsName": "no-id.contoso.com"},
      {"id": null}, {"id": 5}, "junk", null,
      {"id": "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb", "computerDnsName": "dup.contoso.com",
       "healthStatus": "Active", "osPlatform": null}]})");
  absl::StatusOr<std::vector<MachineInfo>> machines = Machines("dup.contoso.com");
  ASSERT_TRUE(machines.ok()) << machines.status();
  ASSERT_EQ(machines->size(), 2u);
  EXPECT_EQ((*machines)[0].id, std::string(40, 'a'));
  EXPECT_EQ((*machines)[0].health_status, "Inactive");
  EXPECT_EQ((*machines)[0].last_seen, std::nullopt);
  EXPECT_EQ((*machines)[1].id, std::string(40, 'b'));
  EXPECT_EQ((*machines)[1].health_status, "Active");
  EXPECT_EQ((*machines)[1].os_platform, "");
}

TEST_F(RestDefenderClientTest, FindMachinesWithoutValueIsInternal) {
  transport_.Enqueue(200, R"({"id": "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"})");
  absl::StatusOr<std::vector<MachineInfo>> machines = Machines("h");
  EXPECT_EQ(machines.status().code(), absl::StatusCode::kInternal);
  EXPECT_EQ(ErrorReason(machines.status()), "BAD_UPSTREAM_RESPONSE");
  EXPECT_EQ(Metadata(machines.status(), "http_status"), "200");
}

TEST_F(RestDefenderClientTest, FindMachinesForbidden) {
  transport_.Enqueue(403, R"({"error": {"code": "Forbidden", "message": "Missing role"}})");
  absl::StatusOr<std::vector<MachineInfo>> machines = Machines("h");
  EXPECT_EQ(machines.status().code(), absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(transport_.requests().size(), 1u);
}

TEST_F(RestDefenderClientTest, MaybeSentActionFoundIsReturnedWithoutPost) {
  const absl::Time since = absl::FromUnixSeconds(1700000000);
  transport_.Enqueue(200, ListOf({ActionWith("other-comment", kSha1, "someone else"),
                                  ActionWith("earlier", kSha1, kComment)}));
  transport_.Enqueue(201, kActionJson);  // never reached
  absl::StatusOr<MachineAction> action = QuarantineSince(since, kComment);
  ASSERT_TRUE(action.ok()) << action.status();
  EXPECT_EQ(action->id, "earlier");

  ASSERT_EQ(transport_.requests().size(), 1u);
  const http::HttpRequest request = transport_.requests()[0];
  EXPECT_EQ(request.method, "GET");
  EXPECT_EQ(FilterOf(request.url, "https://api.example.test/api/machineactions"),
            absl::StrCat("machineId eq '", kMachineId,
                         "' and type eq 'StopAndQuarantineFile' and creationDateTimeUtc ge "
                         "2023-11-14T22:08:20.000Z"));  // since, less 5 minutes of skew
  EXPECT_EQ(HeaderValues(request, "Authorization"), std::vector<std::string>{"Bearer t1"});
}

TEST_F(RestDefenderClientTest, MaybeSentActionNotFoundIsPostedOnce) {
  transport_.Enqueue(200, ListOf({ActionWith("other-comment", kSha1, "someone else"),
                                  ActionWith("other-file", std::string(40, 'c'), kComment)}));
  transport_.Enqueue(201, kActionJson);
  transport_.Enqueue(201, kActionJson);  // a second POST would find this
  absl::StatusOr<MachineAction> action = QuarantineSince(absl::Now() - absl::Minutes(1), kComment);
  ASSERT_TRUE(action.ok()) << action.status();
  EXPECT_EQ(action->id, kActionId);
  const std::vector<http::HttpRequest> requests = transport_.requests();
  ASSERT_EQ(requests.size(), 2u);
  EXPECT_EQ(requests[0].method, "GET");
  EXPECT_TRUE(absl::StartsWith(requests[0].url,
                               absl::StrCat(kBaseUrl, "/api/machineactions?$filter=")));
  EXPECT_EQ(requests[1].method, "POST");
  EXPECT_EQ(requests[1].url, absl::StrCat(kBaseUrl, "/api/machines/", kMachineId,
                                          "/StopAndQuarantineFile"));
  EXPECT_EQ(json::parse(requests[1].body), json({{"Comment", kComment}, {"Sha1", kSha1}}));
}

TEST_F(RestDefenderClientTest, MaybeSentLookupFailureSendsNothing) {
  // Without a scheduler nothing is retried: the lookup's 503 is final.
  transport_.Enqueue(503, R"({"error": {"code": "ServiceUnavailable", "message": "busy"}})");
  transport_.Enqueue(201, kActionJson);  // never reached
  absl::StatusOr<MachineAction> action = QuarantineSince(absl::Now(), kComment);
  ASSERT_FALSE(action.ok());
  EXPECT_EQ(action.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(ErrorReason(action.status()), "DEFENDER_UNAVAILABLE");
  EXPECT_EQ(Metadata(action.status(), "defender_message"), "busy");
  EXPECT_EQ(Metadata(action.status(), "outcome"), "unknown");
  EXPECT_EQ(Metadata(action.status(), "attempts"), "1");
  ASSERT_EQ(transport_.requests().size(), 1u);
  EXPECT_EQ(transport_.requests()[0].method, "GET");
}

TEST_F(RestDefenderClientTest, MaybeSentLookupForbiddenSendsNothing) {
  transport_.Enqueue(403, R"({"error": {"code": "Forbidden", "message": "Missing role"}})");
  absl::StatusOr<MachineAction> action = QuarantineSince(absl::Now(), kComment);
  EXPECT_EQ(action.status().code(), absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(Metadata(action.status(), "outcome"), "unknown");
  EXPECT_EQ(transport_.requests().size(), 1u);
}

TEST_F(RestDefenderClientTest, MaybeSentUnreadableLookupSendsNothing) {
  transport_.Enqueue(200, "<html>oops</html>");
  absl::StatusOr<MachineAction> action = QuarantineSince(absl::Now(), kComment);
  EXPECT_EQ(action.status().code(), absl::StatusCode::kInternal);
  EXPECT_EQ(ErrorReason(action.status()), "BAD_UPSTREAM_RESPONSE");
  EXPECT_EQ(Metadata(action.status(), "outcome"), "unknown");
  EXPECT_EQ(transport_.requests().size(), 1u);
}

TEST_F(RestDefenderClientTest, MaybeSentTokenFailureSendsNothing) {
  credential_.FailCall(1, MakeError(absl::StatusCode::kUnauthenticated, "AADSTS7000215",
                                    "TOKEN_REQUEST_REJECTED"));
  absl::StatusOr<MachineAction> action = QuarantineSince(absl::Now(), kComment);
  EXPECT_EQ(action.status().code(), absl::StatusCode::kUnauthenticated);
  EXPECT_EQ(ErrorReason(action.status()), "TOKEN_REQUEST_REJECTED");
  EXPECT_EQ(Metadata(action.status(), "outcome"), "unknown");
  EXPECT_TRUE(transport_.requests().empty());
}

TEST_F(RestDefenderClientTest, MaybeSentSinceFarInThePastIsAValidFilter) {
  transport_.Enqueue(200, ListOf({}));
  transport_.Enqueue(201, kActionJson);
  ASSERT_TRUE(QuarantineSince(absl::InfinitePast(), kComment).ok());
  EXPECT_TRUE(absl::EndsWith(
      FilterOf(transport_.requests()[0].url, "https://api.example.test/api/machineactions"),
      "creationDateTimeUtc ge 1970-01-01T00:00:00.000Z"));
}

TEST_F(RestDefenderClientRetryTest, CancelIsRetriedAfterServerErrorsWithoutLookup) {
  transport_.Enqueue(503, "");
  transport_.EnqueueError(TransportError("UPSTREAM_CONNECTION_LOST", /*sent=*/true));
  transport_.Enqueue(200, kActionJson);
  StartCancel(absl::Seconds(30));
  RunTimers();
  ASSERT_TRUE(result_.has_value());
  ASSERT_TRUE(result_->ok()) << result_->status();
  EXPECT_EQ(Methods(), (Seq{"POST", "POST", "POST"}));
  for (const http::HttpRequest& request : transport_.requests()) {
    EXPECT_EQ(request.url, absl::StrCat(kBaseUrl, "/api/machineactions/", kActionId, "/cancel"));
    EXPECT_EQ(request.body, R"({"Comment":"undo"})");
  }
  EXPECT_GT(clock_.Now(), start_);  // backed off
  EXPECT_EQ(callbacks_, 1);
}

TEST_F(RestDefenderClientRetryTest, CancelPersistentFaultsFailUnavailable) {
  for (int i = 0; i < 50; ++i) transport_.Enqueue(503, "");
  StartCancel(absl::Seconds(3));
  RunTimers();
  ASSERT_TRUE(result_.has_value());
  EXPECT_EQ(result_->status().code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(Metadata(result_->status(), "outcome"), "<absent>");
  EXPECT_GE(transport_.requests().size(), 3u);
  for (const std::string& method : Methods()) EXPECT_EQ(method, "POST");
}

TEST_F(RestDefenderClientRetryTest, MaybeSentLookupIsRetriedThenPostsOnce) {
  transport_.Enqueue(503, "");
  transport_.Enqueue(200, ListOf({}));
  transport_.Enqueue(201, kActionJson);
  StartQuarantine(absl::Seconds(30), nullptr, clock_.Now() - absl::Hours(1));
  RunTimers();
  ASSERT_TRUE(result_->ok()) << result_->status();
  EXPECT_EQ((*result_)->id, kActionId);
  EXPECT_EQ(Methods(), (Seq{"LIST", "LIST", "POST"}));
}

TEST_F(RestDefenderClientRetryTest, MaybeSentLookupFailingUntilTheDeadlineSendsNothing) {
  for (int i = 0; i < 50; ++i) transport_.Enqueue(503, "");
  StartQuarantine(absl::Seconds(3), nullptr, clock_.Now() - absl::Minutes(2));
  RunTimers();
  ASSERT_TRUE(result_.has_value());
  EXPECT_EQ(result_->status().code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(ErrorReason(result_->status()), "DEFENDER_UNAVAILABLE");
  EXPECT_EQ(Metadata(result_->status(), "outcome"), "unknown");
  EXPECT_LE(clock_.Now(), start_ + absl::Seconds(3));
  EXPECT_GE(transport_.requests().size(), 2u);
  for (const std::string& method : Methods()) EXPECT_EQ(method, "LIST");
  EXPECT_EQ(callbacks_, 1);
}

TEST_F(RestDefenderClientRetryTest, MaybeSentThenFaultLooksFromTheEarlierTime) {
  const absl::Time since = clock_.Now() - absl::Hours(1);
  transport_.Enqueue(200, ListOf({}));
  transport_.Enqueue(502, "");
  transport_.Enqueue(200, ListOf({ActionWith("mine", kSha1, kComment)}));
  StartQuarantine(absl::Seconds(30), nullptr, since);
  RunTimers();
  ASSERT_TRUE(result_->ok()) << result_->status();
  EXPECT_EQ((*result_)->id, "mine");
  EXPECT_EQ(Methods(), (Seq{"LIST", "POST", "LIST"}));
  const std::string expected_since = FormatDefenderTime(since - absl::Minutes(5));
  for (size_t i : {0u, 2u}) {
    EXPECT_TRUE(absl::EndsWith(FilterOf(transport_.requests()[i].url,
                                        "https://api.example.test/api/machineactions"),
                               "creationDateTimeUtc ge " + expected_since))
        << transport_.requests()[i].url;
  }
}

TEST_F(RestDefenderClientRetryTest, MaybeSentAlreadyRunningIsOurEarlierAction) {
  transport_.Enqueue(200, ListOf({}));  // not visible yet
  transport_.Enqueue(400, R"({"error": {"code": "ActiveRequestAlreadyExists"}})");
  transport_.Enqueue(200, ListOf({ActionWith("earlier", kSha1, kComment)}));
  StartQuarantine(absl::Seconds(30), nullptr, clock_.Now() - absl::Minutes(1));
  RunTimers();
  ASSERT_TRUE(result_->ok()) << result_->status();
  EXPECT_EQ((*result_)->id, "earlier");
  EXPECT_EQ(Methods(), (Seq{"LIST", "POST", "LIST"}));
}

TEST_F(RestDefenderClientRetryTest, NewOperationsHaveTheirOwnRateBudgets) {
  RejectingLimiter limiter;
  RestDefenderClientOptions options;
  options.api_base_url = kBaseUrl;
  options.scope = kScope;
  options.tenant = "contoso";
  options.limiter = &limiter;
  RestDefenderClient client(options, credential_, transport_);
  const absl::Time deadline = clock_.Now() + absl::Seconds(30);
  std::vector<absl::Status> errors;
  client.CancelMachineAction(kActionId, "c", deadline, [&](absl::StatusOr<MachineAction> a) {
    errors.push_back(a.status());
  });
  client.GetFile(kSha1, deadline, [&](absl::StatusOr<FileInfo> f) { errors.push_back(f.status()); });
  client.FindMachinesByDnsName("h", deadline, [&](absl::StatusOr<std::vector<MachineInfo>> m) {
    errors.push_back(m.status());
  });
  client.StopAndQuarantineFile({kMachineId, kSha1, "c", clock_.Now()}, deadline,
                               [&](absl::StatusOr<MachineAction> a) {
                                 errors.push_back(a.status());
                               });
  EXPECT_EQ(limiter.keys,
            (std::vector<std::string>{"contoso/CancelMachineAction", "contoso/GetFile",
                                      "contoso/ListMachines", "contoso/ListMachineActions"}));
  ASSERT_EQ(errors.size(), 4u);
  for (const absl::Status& error : errors) {
    EXPECT_EQ(error.code(), absl::StatusCode::kResourceExhausted);
  }
  EXPECT_EQ(Metadata(errors[3], "outcome"), "unknown");  // the lookup could not run
  EXPECT_TRUE(transport_.requests().empty());
}

}  // namespace
}  // namespace defender::api
