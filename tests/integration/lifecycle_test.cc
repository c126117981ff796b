// End-to-end, through real libcurl and TLS to the sandbox: the whole life of
// an action (watch, cancel), SHA-256 and host-name resolution, batches, and
// exactly-once request ids across a restart.
#include <atomic>
#include <cstdio>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "adapters/journal/sqlite_journal.h"
#include "defender/v1/response_service.grpc.pb.h"
#include "gmock/gmock.h"
#include "google/rpc/error_details.pb.h"
#include "google/rpc/status.pb.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "server/config.h"
#include "server/plugin_server.h"
#include "tests/integration/plugin_harness.h"
#include "tools/sandbox/sandbox.h"

namespace defender {
namespace {

using ::testing::HasSubstr;

constexpr char kMachine[] = "1e5bc9d7e413ddd7902c2932e418702b84d0cc07";
constexpr char kSha1[] = "87662bc3d60e4200ceaf7aae249d1c343f4b83c9";

google::rpc::ErrorInfo InfoOf(const std::string& details) {
  google::rpc::Status rpc;
  google::rpc::ErrorInfo info;
  if (!rpc.ParseFromString(details)) return info;
  for (const google::protobuf::Any& any : rpc.details()) {
    if (any.UnpackTo(&info)) return info;
  }
  return info;
}

std::string ReasonOf(const grpc::Status& status) {
  return InfoOf(status.error_details()).reason();
}

// MachineIds returns `count` distinct 40-hex device ids.
std::vector<std::string> MachineIds(int count) {
  std::vector<std::string> ids;
  for (int i = 0; i < count; ++i) ids.push_back(absl::StrFormat("%040x", 0xabc000 + i));
  return ids;
}

class LifecycleTest : public ::testing::Test {
 protected:
  // StartSandbox starts the sandbox; the default machines plus `extra`.
  void StartSandbox(absl::Duration action_step, std::vector<sandbox::Machine> extra = {}) {
    sandbox::SandboxOptions options;
    options.action_step = action_step;
    options.rate_per_minute = 1000;
    options.rate_per_hour = 10000;
    if (!extra.empty()) {
      options.machines = sandbox::DefaultMachines();
      options.machines.insert(options.machines.end(), extra.begin(), extra.end());
    }
    auto started = sandbox::Sandbox::Start(options);
    ASSERT_TRUE(started.ok()) << started.status();
    sandbox_ = *std::move(started);
    ca_file_ = absl::StrCat(::testing::TempDir(), "lifecycle-ca-", getpid(), "-",
                            absl::ToUnixNanos(absl::Now()), ".pem");
    ASSERT_TRUE(sandbox_->WriteCaFile(ca_file_).ok());
    state_dir_ = testing::NewStateDir();
  }

  void TearDown() override {
    StopPlugin();
    sandbox_.reset();
    std::remove(ca_file_.c_str());
  }

  void StartPlugin(std::vector<std::string> flags = {}) {
    std::map<std::string, std::string> env = {
        {"AZURE_TENANT_ID", "11111111-1111-1111-1111-111111111111"},
        {"AZURE_CLIENT_ID", "22222222-2222-2222-2222-222222222222"},
        {"AZURE_CLIENT_SECRET", "sandbox-secret"},
        {"AZURE_AUTHORITY_HOST", sandbox_->base_url()},
        {"DEFENDER_API_URL", sandbox_->base_url()},
        {"DEFENDER_CA_FILE", ca_file_},
        {"DEFENDER_STATE_DIR", state_dir_},
        {"DEFENDER_RATE_PER_MINUTE", "0"},
        {"DEFENDER_RATE_PER_HOUR", "0"}};
    flags.insert(flags.begin(), {"--listen", "127.0.0.1:0", "--watch-poll-seconds", "1",
                                 "--watch-max-poll-seconds", "2"});
    absl::StatusOr<PluginConfig> config = testing::LoadTestConfig(flags, env);
    ASSERT_TRUE(config.ok()) << config.status();
    auto server = PluginServer::Start(*config);
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = *std::move(server);
    channel_ = grpc::CreateChannel(absl::StrCat("127.0.0.1:", server_->port()),
                                   grpc::InsecureChannelCredentials());
    stub_ = v1::ResponseService::NewStub(channel_);
  }

  void StopPlugin() {
    stub_.reset();
    channel_.reset();
    if (server_) server_->Shutdown(absl::Seconds(5));
    server_.reset();
  }

  static void SetDeadline(grpc::ClientContext& context, int seconds) {
    context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(seconds));
  }

  grpc::Status Quarantine(const v1::QuarantineFileRequest& request,
                          v1::QuarantineFileResponse* response) {
    grpc::ClientContext context;
    SetDeadline(context, 30);
    return stub_->QuarantineFile(&context, request, response);
  }

  v1::QuarantineFileRequest Request() const {
    v1::QuarantineFileRequest request;
    request.set_machine_id(kMachine);
    request.set_sha1(kSha1);
    request.set_comment("quarantine: alert 42");
    return request;
  }

  // Watch reads the whole stream of a watch.
  grpc::Status Watch(const std::string& id, std::vector<v1::MachineAction>* seen,
                     int seconds = 30) {
    grpc::ClientContext context;
    SetDeadline(context, seconds);
    v1::WatchMachineActionRequest request;
    request.set_id(id);
    auto reader = stub_->WatchMachineAction(&context, request);
    v1::MachineAction action;
    while (reader->Read(&action)) seen->push_back(action);
    return reader->Finish();
  }

  int Posts() const { return sandbox_->CountRequests("POST", "/StopAndQuarantineFile$"); }

  std::unique_ptr<sandbox::Sandbox> sandbox_;
  std::string ca_file_;
  std::string state_dir_;
  std::unique_ptr<PluginServer> server_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::ResponseService::Stub> stub_;
};

TEST_F(LifecycleTest, WatchSendsEachStatusUntilSucceeded) {
  StartSandbox(absl::Milliseconds(1500));
  StartPlugin();
  v1::QuarantineFileResponse created;
  ASSERT_TRUE(Quarantine(Request(), &created).ok());
  std::vector<v1::MachineAction> seen;
  grpc::Status status = Watch(created.action().id(), &seen);
  ASSERT_TRUE(status.ok()) << status.error_message();
  ASSERT_FALSE(seen.empty());
  EXPECT_EQ(seen.back().status(), v1::MACHINE_ACTION_STATUS_SUCCEEDED);
  EXPECT_EQ(seen.front().id(), created.action().id());
  // Each message is a change: no status twice in a row, and the order is the
  // action's life.
  std::vector<v1::MachineActionStatus> statuses;
  for (const auto& action : seen) statuses.push_back(action.status());
  EXPECT_THAT(statuses, ::testing::AnyOf(
                            ::testing::ElementsAre(v1::MACHINE_ACTION_STATUS_PENDING,
                                                   v1::MACHINE_ACTION_STATUS_IN_PROGRESS,
                                                   v1::MACHINE_ACTION_STATUS_SUCCEEDED),
                            ::testing::ElementsAre(v1::MACHINE_ACTION_STATUS_IN_PROGRESS,
                                                   v1::MACHINE_ACTION_STATUS_SUCCEEDED),
                            ::testing::ElementsAre(v1::MACHINE_ACTION_STATUS_PENDING,
                                                   v1::MACHINE_ACTION_STATUS_SUCCEEDED)));
  // A final action's watch is one message and no more polls afterwards.
  const int gets = sandbox_->CountRequests("GET", "^/api/machineactions/");
  std::vector<v1::MachineAction> again;
  ASSERT_TRUE(Watch(created.action().id(), &again).ok());
  ASSERT_EQ(again.size(), 1u);
  EXPECT_EQ(again[0].status(), v1::MACHINE_ACTION_STATUS_SUCCEEDED);
  EXPECT_EQ(sandbox_->CountRequests("GET", "^/api/machineactions/"), gets + 1);
}

TEST_F(LifecycleTest, WatchEndsWithCancelledAfterCancelMachineAction) {
  StartSandbox(absl::Seconds(60));  // stays Pending
  StartPlugin();
  v1::QuarantineFileResponse created;
  ASSERT_TRUE(Quarantine(Request(), &created).ok());
  std::vector<v1::MachineAction> seen;
  grpc::Status watched;
  std::thread watcher([&] { watched = Watch(created.action().id(), &seen); });
  absl::SleepFor(absl::Milliseconds(500));

  grpc::ClientContext context;
  SetDeadline(context, 30);
  v1::CancelMachineActionRequest cancel;
  cancel.set_id(created.action().id());
  cancel.set_comment("false positive");
  v1::MachineAction cancelled;
  grpc::Status status = stub_->CancelMachineAction(&context, cancel, &cancelled);
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(cancelled.status(), v1::MACHINE_ACTION_STATUS_CANCELLED);
  EXPECT_EQ(cancelled.cancellation_comment(), "false positive");
  watcher.join();
  ASSERT_TRUE(watched.ok()) << watched.error_message();
  ASSERT_GE(seen.size(), 2u);
  EXPECT_EQ(seen.front().status(), v1::MACHINE_ACTION_STATUS_PENDING);
  EXPECT_EQ(seen.back().status(), v1::MACHINE_ACTION_STATUS_CANCELLED);
  // The cancel POST carried the comment.
  const auto requests = sandbox_->Requests();
  int cancels = 0;
  for (const auto& request : requests) {
    if (absl::EndsWith(request.path, "/cancel")) {
      ++cancels;
      EXPECT_THAT(request.body, HasSubstr("\"Comment\":\"false positive\""));
    }
  }
  EXPECT_EQ(cancels, 1);
}

TEST_F(LifecycleTest, CancelOfAFinalActionIsFailedPrecondition) {
  StartSandbox(absl::Milliseconds(100));
  StartPlugin();
  v1::QuarantineFileResponse created;
  ASSERT_TRUE(Quarantine(Request(), &created).ok());
  std::vector<v1::MachineAction> seen;
  ASSERT_TRUE(Watch(created.action().id(), &seen).ok());
  ASSERT_EQ(seen.back().status(), v1::MACHINE_ACTION_STATUS_SUCCEEDED);

  grpc::ClientContext context;
  SetDeadline(context, 30);
  v1::CancelMachineActionRequest cancel;
  cancel.set_id(created.action().id());
  cancel.set_comment("too late");
  v1::MachineAction answer;
  grpc::Status status = stub_->CancelMachineAction(&context, cancel, &answer);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_EQ(ReasonOf(status), "ACTION_ALREADY_FINAL");
  EXPECT_EQ(InfoOf(status.error_details()).metadata().at("status"), "Succeeded");
  EXPECT_EQ(sandbox_->CountRequests("POST", "/cancel$"), 0);
}

TEST_F(LifecycleTest, CancelValidatesBeforeSending) {
  StartSandbox(absl::Seconds(1));
  StartPlugin();
  grpc::ClientContext context;
  v1::CancelMachineActionRequest cancel;
  cancel.set_id("141408d1-384c-4c19-8b57-ba39e378011a");  // no comment
  v1::MachineAction answer;
  grpc::Status status = stub_->CancelMachineAction(&context, cancel, &answer);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(ReasonOf(status), "COMMENT_REQUIRED");
  EXPECT_EQ(sandbox_->CountRequests("", "^/api/"), 0);
}

TEST_F(LifecycleTest, CallerCancellingAWatchStopsThePolls) {
  StartSandbox(absl::Seconds(60));
  StartPlugin();
  v1::QuarantineFileResponse created;
  ASSERT_TRUE(Quarantine(Request(), &created).ok());
  grpc::ClientContext context;
  v1::WatchMachineActionRequest request;
  request.set_id(created.action().id());
  auto reader = stub_->WatchMachineAction(&context, request);
  v1::MachineAction first;
  ASSERT_TRUE(reader->Read(&first));
  EXPECT_EQ(first.status(), v1::MACHINE_ACTION_STATUS_PENDING);
  context.TryCancel();
  EXPECT_EQ(reader->Finish().error_code(), grpc::StatusCode::CANCELLED);
  absl::SleepFor(absl::Milliseconds(300));  // let an in-flight poll come back
  const int gets = sandbox_->CountRequests("GET", "^/api/machineactions/");
  absl::SleepFor(absl::Seconds(3));  // > the longest poll interval (2 s)
  EXPECT_EQ(sandbox_->CountRequests("GET", "^/api/machineactions/"), gets);
}

TEST_F(LifecycleTest, WatchesOfOneActionShareOnePoll) {
  StartSandbox(absl::Seconds(3));
  StartPlugin();
  v1::QuarantineFileResponse created;
  ASSERT_TRUE(Quarantine(Request(), &created).ok());
  constexpr int kWatchers = 8;
  std::vector<std::vector<v1::MachineAction>> seen(kWatchers);
  std::vector<grpc::Status> statuses(kWatchers);
  std::vector<std::thread> threads;
  for (int i = 0; i < kWatchers; ++i) {
    threads.emplace_back([&, i] { statuses[i] = Watch(created.action().id(), &seen[i]); });
  }
  for (auto& thread : threads) thread.join();
  for (int i = 0; i < kWatchers; ++i) {
    ASSERT_TRUE(statuses[i].ok()) << statuses[i].error_message();
    EXPECT_EQ(seen[i].back().status(), v1::MACHINE_ACTION_STATUS_SUCCEEDED);
  }
  // ~9 s of life at most 1 poll a second: far fewer polls than 8 watchers
  // polling each on their own would make (>= 8 x 4).
  EXPECT_LE(sandbox_->CountRequests("GET", "^/api/machineactions/"), 16);
}

TEST_F(LifecycleTest, Sha256IsResolvedToTheSha1) {
  StartSandbox(absl::Seconds(1));
  StartPlugin();
  v1::QuarantineFileRequest request = Request();
  request.clear_sha1();
  request.set_sha256(absl::AsciiStrToUpper(sandbox::kKnownFileSha256));
  v1::QuarantineFileResponse response;
  grpc::Status status = Quarantine(request, &response);
  ASSERT_TRUE(status.ok()) << status.error_message();
  std::string body;
  for (const auto& r : sandbox_->Requests()) {
    if (absl::EndsWith(r.path, "/StopAndQuarantineFile")) body = r.body;
  }
  EXPECT_THAT(body, HasSubstr(absl::StrCat("\"Sha1\":\"", sandbox::kKnownFileSha1, "\"")));
  EXPECT_EQ(sandbox_->CountRequests("GET", "^/api/files/"), 1);
  // The mapping is remembered: a second call (another device: the first
  // action is still pending) needs no lookup.
  request.set_machine_id("7b0f3a5e2c9d4e1f8a6b5c4d3e2f1a0b9c8d7e6f");
  ASSERT_TRUE(Quarantine(request, &response).ok());
  EXPECT_EQ(sandbox_->CountRequests("GET", "^/api/files/"), 1);
  EXPECT_EQ(Posts(), 2);
}

TEST_F(LifecycleTest, UnknownSha256IsNotFoundAndNothingIsQuarantined) {
  StartSandbox(absl::Seconds(1));
  StartPlugin();
  v1::QuarantineFileRequest request = Request();
  request.clear_sha1();
  request.set_sha256(std::string(64, 'e'));
  v1::QuarantineFileResponse response;
  grpc::Status status = Quarantine(request, &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_EQ(ReasonOf(status), "FILE_NOT_FOUND");
  EXPECT_EQ(Posts(), 0);
}

TEST_F(LifecycleTest, HostNameIsResolvedToTheDevice) {
  StartSandbox(absl::Seconds(1));
  StartPlugin();
  v1::QuarantineFileRequest request = Request();
  request.clear_machine_id();
  request.set_computer_dns_name("desktop-1.contoso.com");
  v1::QuarantineFileResponse response;
  grpc::Status status = Quarantine(request, &response);
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(response.action().machine_id(), kMachine);
  EXPECT_EQ(sandbox_->CountRequests("POST", absl::StrCat("^/api/machines/", kMachine,
                                                         "/StopAndQuarantineFile$")),
            1);
  bool filtered = false;
  for (const auto& r : sandbox_->Requests()) {
    if (r.path == "/api/machines" &&
        absl::StrContains(r.target, "computerDnsName%20eq%20%27desktop-1.contoso.com%27")) {
      filtered = true;
    }
  }
  EXPECT_TRUE(filtered) << "no machines lookup filtered on computerDnsName";
}

TEST_F(LifecycleTest, UnknownHostNameIsNotFound) {
  StartSandbox(absl::Seconds(1));
  StartPlugin();
  v1::QuarantineFileRequest request = Request();
  request.clear_machine_id();
  request.set_computer_dns_name("nobody.contoso.com");
  v1::QuarantineFileResponse response;
  grpc::Status status = Quarantine(request, &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_EQ(ReasonOf(status), "MACHINE_NOT_FOUND");
  EXPECT_EQ(Posts(), 0);
}

TEST_F(LifecycleTest, AmbiguousHostNameIsFailedPreconditionNamingTheDevices) {
  StartSandbox(absl::Seconds(1));
  StartPlugin();
  v1::QuarantineFileRequest request = Request();
  request.clear_machine_id();
  request.set_computer_dns_name("dup.contoso.com");
  v1::QuarantineFileResponse response;
  grpc::Status status = Quarantine(request, &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_EQ(ReasonOf(status), "AMBIGUOUS_MACHINE");
  EXPECT_THAT(status.error_message(), HasSubstr("d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1"));
  EXPECT_THAT(status.error_message(), HasSubstr("d2d2d2d2d2d2d2d2d2d2d2d2d2d2d2d2d2d2d2d2"));
  EXPECT_EQ(Posts(), 0);
}

TEST_F(LifecycleTest, ExactlyOneOfEachTargetField) {
  StartSandbox(absl::Seconds(1));
  StartPlugin();
  v1::QuarantineFileRequest both = Request();
  both.set_sha256(sandbox::kKnownFileSha256);
  v1::QuarantineFileResponse response;
  EXPECT_EQ(ReasonOf(Quarantine(both, &response)), "CONFLICTING_FIELDS");
  v1::QuarantineFileRequest none = Request();
  none.clear_machine_id();
  EXPECT_EQ(ReasonOf(Quarantine(none, &response)), "INVALID_MACHINE_ID");
  EXPECT_EQ(sandbox_->CountRequests("", "^/api/"), 0);
}

// Reads a batch's whole stream.
struct BatchOutcome {
  grpc::Status status;
  std::vector<v1::BatchQuarantineFileResponse> results;
};

TEST_F(LifecycleTest, BatchOfFiftyDevicesWithSomeFailing) {
  std::vector<sandbox::Machine> extra;
  std::vector<std::string> ids = MachineIds(46);
  for (const std::string& id : ids) extra.push_back({id, absl::StrCat("host-", id.substr(34)), "Windows11"});
  StartSandbox(absl::Seconds(5), extra);
  StartPlugin();
  v1::BatchQuarantineFileRequest request;
  for (const std::string& id : ids) request.add_machine_ids(id);
  request.add_machine_ids("4f8e2d6c0b4a8e2d6c0b4a8e2d6c0b4a8e2d6c0b");  // Linux: refused
  request.add_machine_ids(std::string(40, 'f'));                        // unknown device
  request.add_computer_dns_names("desktop-2.contoso.com");              // resolves
  request.add_computer_dns_names("dup.contoso.com");                    // ambiguous
  request.set_sha1(kSha1);
  request.set_comment("batch: alert 7");
  grpc::ClientContext context;
  SetDeadline(context, 120);
  auto reader = stub_->BatchQuarantineFile(&context, request);
  BatchOutcome outcome;
  v1::BatchQuarantineFileResponse result;
  while (reader->Read(&result)) outcome.results.push_back(result);
  outcome.status = reader->Finish();
  ASSERT_TRUE(outcome.status.ok()) << outcome.status.error_message();
  ASSERT_EQ(outcome.results.size(), 50u);
  std::set<int> indices;
  std::map<int, const v1::BatchQuarantineFileResponse*> by_index;
  for (const auto& r : outcome.results) {
    indices.insert(r.index());
    by_index[r.index()] = &r;
  }
  EXPECT_EQ(indices.size(), 50u);
  int ok = 0;
  for (const auto& r : outcome.results) {
    if (r.has_action()) {
      ++ok;
      EXPECT_FALSE(r.has_error());
      EXPECT_EQ(r.action().machine_id(), r.machine_id());
    }
  }
  EXPECT_EQ(ok, 47);
  EXPECT_EQ(by_index.at(46)->error().code(), static_cast<int>(grpc::StatusCode::FAILED_PRECONDITION));
  EXPECT_EQ(by_index.at(47)->error().code(), static_cast<int>(grpc::StatusCode::NOT_FOUND));
  EXPECT_EQ(by_index.at(48)->machine_id(), "7b0f3a5e2c9d4e1f8a6b5c4d3e2f1a0b9c8d7e6f");
  EXPECT_TRUE(by_index.at(48)->has_action());
  EXPECT_EQ(by_index.at(49)->computer_dns_name(), "dup.contoso.com");
  EXPECT_EQ(by_index.at(49)->error().code(), static_cast<int>(grpc::StatusCode::FAILED_PRECONDITION));
  EXPECT_EQ(Posts(), 49);  // every device but the ambiguous name
  EXPECT_EQ(sandbox_->ActionCount(), 47);
}

TEST_F(LifecycleTest, BatchValidatesAsAWhole) {
  StartSandbox(absl::Seconds(1));
  StartPlugin();
  v1::BatchQuarantineFileRequest request;
  request.add_machine_ids(kMachine);
  request.add_machine_ids(absl::AsciiStrToUpper(kMachine));
  request.set_sha1(kSha1);
  request.set_comment("c");
  grpc::ClientContext context;
  auto reader = stub_->BatchQuarantineFile(&context, request);
  v1::BatchQuarantineFileResponse result;
  EXPECT_FALSE(reader->Read(&result));
  grpc::Status status = reader->Finish();
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(ReasonOf(status), "DUPLICATE_MACHINE");
  EXPECT_EQ(sandbox_->CountRequests("", "^/api/"), 0);
}

TEST_F(LifecycleTest, CancellingABatchStopsTheRest) {
  std::vector<sandbox::Machine> extra;
  std::vector<std::string> ids = MachineIds(60);
  for (const std::string& id : ids) extra.push_back({id, "h", "Windows11"});
  StartSandbox(absl::Seconds(5), extra);
  sandbox::FaultRule slow;
  slow.method = "POST";
  slow.path_regex = "/StopAndQuarantineFile$";
  slow.times = -1;
  slow.delay = absl::Milliseconds(700);  // then the real handler (status 0)
  sandbox_->AddFault(slow);
  StartPlugin();
  v1::BatchQuarantineFileRequest request;
  for (const std::string& id : ids) request.add_machine_ids(id);
  request.set_sha1(kSha1);
  request.set_comment("batch to cancel");
  grpc::ClientContext context;
  auto reader = stub_->BatchQuarantineFile(&context, request);
  v1::BatchQuarantineFileResponse result;
  ASSERT_TRUE(reader->Read(&result));
  context.TryCancel();
  while (reader->Read(&result)) {
  }
  EXPECT_EQ(reader->Finish().error_code(), grpc::StatusCode::CANCELLED);
  absl::SleepFor(absl::Seconds(1));
  const int posts = Posts();
  EXPECT_LT(posts, 60);
  absl::SleepFor(absl::Seconds(2));
  EXPECT_EQ(Posts(), posts) << "devices were still sent after the cancel";
}

TEST_F(LifecycleTest, RepeatedRequestIdSendsOnePostAlsoConcurrently) {
  StartSandbox(absl::Seconds(5));
  sandbox::FaultRule slow;
  slow.method = "POST";
  slow.path_regex = "/StopAndQuarantineFile$";
  slow.delay = absl::Milliseconds(500);  // then the real handler (status 0)
  sandbox_->AddFault(slow);
  StartPlugin();
  v1::QuarantineFileRequest request = Request();
  request.set_request_id("playbook-run-1");
  constexpr int kCallers = 8;
  std::vector<v1::QuarantineFileResponse> responses(kCallers);
  std::vector<grpc::Status> statuses(kCallers);
  std::vector<std::thread> threads;
  for (int i = 0; i < kCallers; ++i) {
    threads.emplace_back([&, i] { statuses[i] = Quarantine(request, &responses[i]); });
  }
  for (auto& thread : threads) thread.join();
  for (int i = 0; i < kCallers; ++i) {
    ASSERT_TRUE(statuses[i].ok()) << statuses[i].error_message();
    EXPECT_EQ(responses[i].action().id(), responses[0].action().id());
  }
  v1::QuarantineFileResponse later;
  ASSERT_TRUE(Quarantine(request, &later).ok());
  EXPECT_EQ(later.action().id(), responses[0].action().id());
  EXPECT_EQ(Posts(), 1);

  // The same id with other parameters is refused, and sends nothing.
  request.set_comment("another comment");
  grpc::Status reused = Quarantine(request, &later);
  EXPECT_EQ(reused.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(ReasonOf(reused), "REQUEST_ID_REUSED");
  EXPECT_EQ(Posts(), 1);
}

TEST_F(LifecycleTest, RepeatedRequestIdAcrossARestartSendsOnePost) {
  StartSandbox(absl::Seconds(5));
  StartPlugin();
  v1::QuarantineFileRequest request = Request();
  request.set_request_id("8d3c5b0e-2f1a-4c6d-9e7b-0a1b2c3d4e5f");
  v1::QuarantineFileResponse first;
  ASSERT_TRUE(Quarantine(request, &first).ok());
  StopPlugin();
  StartPlugin();  // same state directory
  v1::QuarantineFileResponse second;
  grpc::Status status = Quarantine(request, &second);
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(second.action().id(), first.action().id());
  EXPECT_EQ(second.action().status(), first.action().status());
  EXPECT_EQ(Posts(), 1);

  // The journal is the audit trail: who asked, for which tenant, the outcome.
  auto journal = journal::SqliteJournal::OpenReadOnly(state_dir_);
  ASSERT_TRUE(journal.ok()) << journal.status();
  journal::ListOptions options;
  options.request_key = request.request_id();
  auto entries = (*journal)->List(options);
  ASSERT_TRUE(entries.ok()) << entries.status();
  ASSERT_EQ(entries->size(), 1u);
  const journal::Entry& entry = entries->front();
  EXPECT_EQ(entry.method, "QuarantineFile");
  EXPECT_EQ(entry.tenant, "default");
  EXPECT_THAT(entry.caller, HasSubstr("127.0.0.1"));
  EXPECT_EQ(entry.machine_id, kMachine);
  EXPECT_EQ(entry.file_sha1, kSha1);
  EXPECT_EQ(entry.state, journal::EntryState::kSucceeded);
  EXPECT_EQ(entry.action_id, first.action().id());
  EXPECT_EQ(entry.replays, 1);
}

TEST_F(LifecycleTest, RepeatedBatchSendsOnlyWhatIsMissing) {
  StartSandbox(absl::Seconds(5));
  StartPlugin();
  v1::BatchQuarantineFileRequest request;
  request.add_machine_ids(kMachine);
  request.add_machine_ids("7b0f3a5e2c9d4e1f8a6b5c4d3e2f1a0b9c8d7e6f");
  request.set_sha1(kSha1);
  request.set_comment("batch once");
  request.set_request_id("batch-1");
  auto run = [&] {
    grpc::ClientContext context;
    SetDeadline(context, 30);
    auto reader = stub_->BatchQuarantineFile(&context, request);
    std::map<int, std::string> ids;
    v1::BatchQuarantineFileResponse result;
    while (reader->Read(&result)) ids[result.index()] = result.action().id();
    EXPECT_TRUE(reader->Finish().ok());
    return ids;
  };
  std::map<int, std::string> first = run();
  StopPlugin();
  StartPlugin();
  std::map<int, std::string> second = run();
  EXPECT_EQ(first, second);
  EXPECT_EQ(first.size(), 2u);
  EXPECT_EQ(Posts(), 2);
  // Other parameters under the same id: refused as a whole.
  request.set_comment("other");
  grpc::ClientContext context;
  auto reader = stub_->BatchQuarantineFile(&context, request);
  v1::BatchQuarantineFileResponse result;
  while (reader->Read(&result)) {
  }
  grpc::Status status = reader->Finish();
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(ReasonOf(status), "REQUEST_ID_REUSED");
  EXPECT_EQ(Posts(), 2);
}

}  // namespace
}  // namespace defender
