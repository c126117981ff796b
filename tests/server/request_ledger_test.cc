#include "server/request_ledger.h"

#include <stdlib.h>

#include <deque>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "adapters/common/clock.h"
#include "adapters/common/error.h"
#include "adapters/journal/journal.h"
#include "adapters/journal/sqlite_journal.h"
#include "server/request_claims.h"
#include "gmock/gmock.h"
#include "google/protobuf/util/json_util.h"
#include "google/protobuf/util/message_differencer.h"
#include "gtest/gtest.h"

namespace defender {
namespace {

using journal::Entry;
using journal::EntryState;
using ::testing::HasSubstr;

constexpr absl::Duration kWait = absl::Seconds(30);  // only where a real thread is involved
constexpr absl::Duration kWindow = absl::Hours(1);

// --- Fakes and probes --------------------------------------------------------

// FakeJournal keeps entries in memory, per journal.h's contract. Writes run
// inline, or, when deferred, are queued (the entry is written and the callback
// runs together, as at a commit) until RunPending. Failures can be injected.
class FakeJournal final : public journal::Journal {
 public:
  explicit FakeJournal(Clock& clock) : clock_(clock) {}

  void Begin(Entry entry, absl::Time window_start, BeginCallback done) override {
    Submit([this, entry = std::move(entry), window_start, done = std::move(done)]() mutable {
      absl::StatusOr<journal::BeginResult> result = DoBegin(std::move(entry), window_start);
      std::move(done)(std::move(result));
    });
  }

  void Update(Entry entry, DoneCallback done) override {
    Submit([this, entry = std::move(entry), done = std::move(done)]() mutable {
      absl::Status result = DoUpdate(std::move(entry));
      std::move(done)(std::move(result));
    });
  }

  absl::StatusOr<std::vector<Entry>> List(const journal::ListOptions& options) const override {
    absl::MutexLock lock(&mu_);
    std::vector<Entry> out;
    for (const auto& [id, e] : entries_) {
      if (e.created < options.since || e.created >= options.until) continue;
      if (!options.tenant.empty() && e.tenant != options.tenant) continue;
      if (!options.request_key.empty() && e.request_key != options.request_key) continue;
      if (!options.machine_id.empty() && e.machine_id != options.machine_id) continue;
      if (!options.action_id.empty() && e.action_id != options.action_id) continue;
      out.push_back(e);
    }
    if (options.limit > 0 && out.size() > static_cast<size_t>(options.limit)) {
      out.erase(out.begin(), out.end() - options.limit);
    }
    return out;
  }

  // Deferred: writes wait for RunPending.
  void set_deferred(bool deferred) {
    absl::MutexLock lock(&mu_);
    deferred_ = deferred;
  }
  // Every Begin / Update fails with `error` until called again with OK.
  void FailBegins(absl::Status error) {
    absl::MutexLock lock(&mu_);
    begin_error_ = std::move(error);
  }
  void FailUpdates(absl::Status error) {
    absl::MutexLock lock(&mu_);
    update_error_ = std::move(error);
  }

  // RunPending runs the queued writes (and those they queue) in order; returns
  // how many ran.
  int RunPending() {
    int ran = 0;
    for (;;) {
      absl::AnyInvocable<void() &&> op;
      {
        absl::MutexLock lock(&mu_);
        if (queue_.empty()) return ran;
        op = std::move(queue_.front());
        queue_.pop_front();
      }
      std::move(op)();
      ++ran;
    }
  }
  size_t pending() const {
    absl::MutexLock lock(&mu_);
    return queue_.size();
  }

  // Writes carried out (failed ones included).
  int begins() const {
    absl::MutexLock lock(&mu_);
    return begins_;
  }
  int updates() const {
    absl::MutexLock lock(&mu_);
    return updates_;
  }

  // Put stores `e` as it is (an entry left by an earlier process), assigning
  // an id when it has none; it holds its request key.
  Entry Put(Entry e) {
    absl::MutexLock lock(&mu_);
    if (e.id == 0) e.id = next_id_++;
    if (!e.request_key.empty()) active_[e.request_key] = e.id;
    entries_[e.id] = e;
    return e;
  }
  std::optional<Entry> Get(int64_t id) const {
    absl::MutexLock lock(&mu_);
    auto it = entries_.find(id);
    if (it == entries_.end()) return std::nullopt;
    return it->second;
  }
  std::vector<Entry> All() const { return *List({}); }

 private:
  void Submit(absl::AnyInvocable<void() &&> op) {
    {
      absl::MutexLock lock(&mu_);
      if (deferred_) {
        queue_.push_back(std::move(op));
        return;
      }
    }
    std::move(op)();
  }

  absl::StatusOr<journal::BeginResult> DoBegin(Entry entry, absl::Time window_start) {
    absl::MutexLock lock(&mu_);
    ++begins_;
    if (!begin_error_.ok()) return begin_error_;
    entry.created = entry.updated = clock_.Now();
    if (!entry.request_key.empty()) {
      auto it = active_.find(entry.request_key);
      if (it != active_.end()) {
        const Entry& earlier = entries_.at(it->second);
        if (earlier.created >= window_start) return journal::BeginResult{false, earlier};
        active_.erase(it);  // too old: the new entry takes the key over
      }
    }
    entry.id = next_id_++;
    if (!entry.request_key.empty()) active_[entry.request_key] = entry.id;
    entries_[entry.id] = entry;
    return journal::BeginResult{true, std::move(entry)};
  }

  absl::Status DoUpdate(Entry entry) {
    absl::MutexLock lock(&mu_);
    ++updates_;
    if (!update_error_.ok()) return update_error_;
    auto it = entries_.find(entry.id);
    if (it == entries_.end()) return absl::NotFoundError("no such entry");
    entry.request_key = it->second.request_key;
    entry.created = it->second.created;
    entry.updated = clock_.Now();
    it->second = std::move(entry);
    return absl::OkStatus();
  }

  Clock& clock_;
  mutable absl::Mutex mu_;
  bool deferred_ ABSL_GUARDED_BY(mu_) = false;
  absl::Status begin_error_ ABSL_GUARDED_BY(mu_);
  absl::Status update_error_ ABSL_GUARDED_BY(mu_);
  std::deque<absl::AnyInvocable<void() &&>> queue_ ABSL_GUARDED_BY(mu_);
  int64_t next_id_ ABSL_GUARDED_BY(mu_) = 1;
  std::map<int64_t, Entry> entries_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<std::string, int64_t> active_ ABSL_GUARDED_BY(mu_);
  int begins_ ABSL_GUARDED_BY(mu_) = 0;
  int updates_ ABSL_GUARDED_BY(mu_) = 0;
};

// WorkProbe hands out works that count their runs, keep their
// maybe_sent_since and either answer at once or wait for Complete.
class WorkProbe {
 public:
  // Held: the run waits until Complete (or is dropped, as by a stopped process).
  RequestLedger::Work Held() {
    return [this](absl::Time since, RequestLedger::WorkDone done) {
      absl::MutexLock lock(&mu_);
      ++runs_;
      since_.push_back(since);
      held_.push_back(std::move(done));
    };
  }
  // Answering: the run answers with `result` inside the call.
  RequestLedger::Work Answering(WorkResult result) {
    return [this, result = std::move(result)](absl::Time since,
                                              RequestLedger::WorkDone done) mutable {
      {
        absl::MutexLock lock(&mu_);
        ++runs_;
        since_.push_back(since);
      }
      std::move(done)(std::move(result));
    };
  }

  // Complete answers the oldest held run.
  void Complete(WorkResult result) {
    RequestLedger::WorkDone done;
    {
      absl::MutexLock lock(&mu_);
      ASSERT_FALSE(held_.empty()) << "no run is held";
      done = std::move(held_.front());
      held_.pop_front();
    }
    std::move(done)(std::move(result));
  }
  // DropHeld forgets the held runs without answering (the process stopped).
  void DropHeld() {
    std::deque<RequestLedger::WorkDone> dropped;
    absl::MutexLock lock(&mu_);
    dropped.swap(held_);
  }
  // WaitForRuns waits (for a run on another thread) until `n` runs started.
  bool WaitForRuns(int n) {
    absl::MutexLock lock(&mu_);
    auto reached = [this, n]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return runs_ >= n; };
    return mu_.AwaitWithTimeout(absl::Condition(&reached), kWait);
  }

  int runs() const {
    absl::MutexLock lock(&mu_);
    return runs_;
  }
  std::vector<absl::Time> since() const {
    absl::MutexLock lock(&mu_);
    return since_;
  }
  size_t held() const {
    absl::MutexLock lock(&mu_);
    return held_.size();
  }

 private:
  mutable absl::Mutex mu_;
  int runs_ ABSL_GUARDED_BY(mu_) = 0;
  std::vector<absl::Time> since_ ABSL_GUARDED_BY(mu_);
  std::deque<RequestLedger::WorkDone> held_ ABSL_GUARDED_BY(mu_);
};

// Answer captures what a Run's done got, and how often it was called.
class Answer {
 public:
  // `on_done` runs inside done, before anything is captured.
  RequestLedger::Done Callback(std::function<void()> on_done = nullptr) {
    return [this, on_done = std::move(on_done)](absl::StatusOr<v1::MachineAction> result,
                                                bool replayed) {
      if (on_done) on_done();
      bool first;
      {
        absl::MutexLock lock(&mu_);
        first = ++calls_ == 1;
        result_ = std::move(result);
        replayed_ = replayed;
      }
      if (first) done_.Notify();
    };
  }

  bool called() const { return done_.HasBeenNotified(); }
  bool Wait() { return done_.WaitForNotificationWithTimeout(kWait); }
  int calls() const {
    absl::MutexLock lock(&mu_);
    return calls_;
  }
  absl::StatusOr<v1::MachineAction> result() const {
    absl::MutexLock lock(&mu_);
    return result_;
  }
  bool replayed() const {
    absl::MutexLock lock(&mu_);
    return replayed_;
  }

 private:
  mutable absl::Mutex mu_;
  int calls_ ABSL_GUARDED_BY(mu_) = 0;
  absl::StatusOr<v1::MachineAction> result_ ABSL_GUARDED_BY(mu_) =
      absl::UnknownError("never answered");
  bool replayed_ ABSL_GUARDED_BY(mu_) = false;
  absl::Notification done_;
};

// TempDir is a fresh directory, removed with its contents afterwards.
class TempDir {
 public:
  TempDir() {
    std::string pattern = ::testing::TempDir() + "/request_ledger_test_XXXXXX";
    EXPECT_NE(mkdtemp(pattern.data()), nullptr);
    path_ = pattern;
  }
  ~TempDir() {
    std::error_code ignored;
    std::filesystem::remove_all(path_, ignored);
  }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

// --- Helpers -------------------------------------------------------------------

constexpr char kMachine[] = "1111111111111111111111111111111111111111";
constexpr char kSha1[] = "2222222222222222222222222222222222222222";

v1::MachineAction Action(const std::string& id) {
  v1::MachineAction action;
  action.set_id(id);
  action.set_type(v1::MACHINE_ACTION_TYPE_STOP_AND_QUARANTINE_FILE);
  action.set_status(v1::MACHINE_ACTION_STATUS_PENDING);
  action.set_requestor("plugin");
  action.set_requestor_comment("incident 42");
  action.set_machine_id(kMachine);
  action.set_computer_dns_name("host.contoso.test");
  action.mutable_creation_time()->set_seconds(1700000000);
  return action;
}

WorkResult Succeeded(const std::string& id) { return WorkResult{Action(id), kMachine, kSha1}; }
WorkResult Failed(absl::Status status) { return WorkResult{std::move(status), "", ""}; }

absl::Status OutcomeUnknownError() {
  absl::Status error =
      MakeError(absl::StatusCode::kDeadlineExceeded, "Defender did not answer in time",
                "DEFENDER_TIMEOUT");
  AddErrorMetadata(error, "outcome", "unknown");
  return error;
}
absl::Status KnownFailure() {
  return MakeError(absl::StatusCode::kNotFound, "machine not found", "DEFENDER_NOT_FOUND",
                   {{"http_status", "404"}});
}

Entry Request(const std::string& key, const std::string& params = "params-1") {
  Entry e;
  e.request_key = key;
  e.params = params;
  e.method = "QuarantineFile";
  e.caller = "ipv4:10.0.0.7:51234";
  e.tenant = "contoso";
  e.machine_id = kMachine;
  e.file_sha1 = kSha1;
  e.comment = "incident 42";
  return e;
}

bool SameAction(const v1::MachineAction& a, const v1::MachineAction& b) {
  return google::protobuf::util::MessageDifferencer::Equals(a, b);
}

std::string Metadata(const absl::Status& status, const std::string& key) {
  auto info = GetErrorInfo(status);
  if (!info) return "<no ErrorInfo>";
  auto it = info->metadata().find(key);
  return it == info->metadata().end() ? "<missing>" : it->second;
}

#define EXPECT_ACTION(answer, id)                                                   \
  do {                                                                              \
    ASSERT_TRUE((answer).result().ok()) << (answer).result().status();              \
    EXPECT_TRUE(SameAction(*(answer).result(), Action(id)))                         \
        << (answer).result()->DebugString();                                        \
  } while (0)

#define EXPECT_ERROR(answer, want_code, want_reason)                                    \
  do {                                                                                 \
    ASSERT_FALSE((answer).result().ok());                                              \
    EXPECT_EQ((answer).result().status().code(), (want_code)) << (answer).result().status(); \
    EXPECT_EQ(ErrorReason((answer).result().status()), (want_reason))                  \
        << (answer).result().status();                                                 \
  } while (0)

// --- With the fake journal ------------------------------------------------------

class RequestLedgerTest : public ::testing::Test {
 protected:
  FakeClock clock_;
  FakeJournal journal_{clock_};
  RequestLedger ledger_{journal_, kWindow, clock_};
  WorkProbe work_;
};

TEST_F(RequestLedgerTest, WindowStartIsNowMinusWindow) {
  EXPECT_EQ(ledger_.WindowStart(), clock_.Now() - kWindow);
  clock_.Advance(absl::Minutes(5));
  EXPECT_EQ(ledger_.WindowStart(), clock_.Now() - kWindow);
  EXPECT_EQ(&ledger_.journal(), &journal_);
}

TEST_F(RequestLedgerTest, NoKeyJournalsRunsAndRecordsTheOutcomeBeforeDone) {
  journal_.set_deferred(true);
  std::vector<Entry> seen_at_done;
  Answer answer;
  Entry request = Request("");
  request.machine_id = "";  // not yet resolved: the work resolves it
  request.file_sha1 = "";
  ledger_.Run(request, work_.Held(), answer.Callback([&] { seen_at_done = journal_.All(); }));

  // Nothing runs before the entry is durable.
  EXPECT_EQ(work_.runs(), 0);
  EXPECT_TRUE(journal_.All().empty());
  EXPECT_EQ(journal_.RunPending(), 1);

  ASSERT_EQ(work_.runs(), 1);
  EXPECT_EQ(work_.since(), std::vector<absl::Time>{absl::InfiniteFuture()});
  std::vector<Entry> entries = journal_.All();
  ASSERT_EQ(entries.size(), 1u);
  const Entry& begun = entries[0];
  EXPECT_GT(begun.id, 0);
  EXPECT_EQ(begun.request_key, "");
  EXPECT_EQ(begun.params, "params-1");
  EXPECT_EQ(begun.method, "QuarantineFile");
  EXPECT_EQ(begun.caller, "ipv4:10.0.0.7:51234");
  EXPECT_EQ(begun.tenant, "contoso");
  EXPECT_EQ(begun.comment, "incident 42");
  EXPECT_EQ(begun.state, EntryState::kInFlight);
  EXPECT_EQ(begun.attempts, 1);
  EXPECT_EQ(begun.created, clock_.Now());

  // The work answers; the answer waits for the outcome to be durable.
  clock_.Advance(absl::Seconds(3));
  work_.Complete(Succeeded("A1"));
  EXPECT_FALSE(answer.called());
  EXPECT_EQ(journal_.Get(begun.id)->state, EntryState::kInFlight);
  EXPECT_EQ(journal_.RunPending(), 1);

  ASSERT_TRUE(answer.called());
  EXPECT_EQ(answer.calls(), 1);
  EXPECT_FALSE(answer.replayed());
  EXPECT_ACTION(answer, "A1");

  ASSERT_EQ(seen_at_done.size(), 1u);
  const Entry& done = seen_at_done[0];
  EXPECT_EQ(done.id, begun.id);
  EXPECT_EQ(done.state, EntryState::kSucceeded);
  EXPECT_EQ(done.action_id, "A1");
  v1::MachineAction recorded;
  ASSERT_TRUE(recorded.ParseFromString(done.action_proto));
  EXPECT_TRUE(SameAction(recorded, Action("A1"))) << recorded.DebugString();
  EXPECT_EQ(done.action_json, "");
  EXPECT_EQ(done.status_code, 0);
  EXPECT_EQ(done.error_reason, "");
  EXPECT_EQ(done.error_message, "");
  EXPECT_FALSE(done.outcome_unknown);
  EXPECT_EQ(done.machine_id, kMachine);  // resolved by the work
  EXPECT_EQ(done.file_sha1, kSha1);
  EXPECT_EQ(done.method, "QuarantineFile");
  EXPECT_EQ(done.caller, "ipv4:10.0.0.7:51234");
  EXPECT_EQ(done.tenant, "contoso");
  EXPECT_EQ(done.params, "params-1");
  EXPECT_EQ(done.attempts, 1);
  EXPECT_EQ(done.replays, 0);
  EXPECT_EQ(done.updated, clock_.Now());
  EXPECT_EQ(journal_.pending(), 0u);
}

TEST_F(RequestLedgerTest, NoKeyEveryCallIsItsOwnEntryAndRuns) {
  Answer first, second;
  ledger_.Run(Request(""), work_.Answering(Succeeded("A1")), first.Callback());
  ledger_.Run(Request(""), work_.Answering(Succeeded("A2")), second.Callback());
  EXPECT_EQ(work_.runs(), 2);
  EXPECT_ACTION(first, "A1");
  EXPECT_ACTION(second, "A2");
  EXPECT_FALSE(first.replayed());
  EXPECT_FALSE(second.replayed());
  std::vector<Entry> entries = journal_.All();
  ASSERT_EQ(entries.size(), 2u);
  EXPECT_NE(entries[0].id, entries[1].id);
  EXPECT_EQ(entries[0].action_id, "A1");
  EXPECT_EQ(entries[1].action_id, "A2");
}

TEST_F(RequestLedgerTest, NoKeyRunsInFlightTogetherAreIndependent) {
  journal_.set_deferred(true);
  Answer first, second;
  ledger_.Run(Request(""), work_.Held(), first.Callback());
  ledger_.Run(Request(""), work_.Held(), second.Callback());
  journal_.RunPending();
  ASSERT_EQ(work_.runs(), 2);
  work_.Complete(Succeeded("A1"));
  work_.Complete(Failed(KnownFailure()));
  journal_.RunPending();
  EXPECT_ACTION(first, "A1");
  EXPECT_ERROR(second, absl::StatusCode::kNotFound, "DEFENDER_NOT_FOUND");
  EXPECT_FALSE(second.replayed());
}

TEST_F(RequestLedgerTest, FailureIsRecordedWithItsCodeReasonAndMessage) {
  Answer answer;
  ledger_.Run(Request(""), work_.Answering(WorkResult{KnownFailure(), kMachine, ""}),
              answer.Callback());
  EXPECT_EQ(work_.runs(), 1);
  EXPECT_ERROR(answer, absl::StatusCode::kNotFound, "DEFENDER_NOT_FOUND");
  EXPECT_EQ(Metadata(answer.result().status(), "http_status"), "404");
  EXPECT_FALSE(answer.replayed());
  std::vector<Entry> entries = journal_.All();
  ASSERT_EQ(entries.size(), 1u);
  EXPECT_EQ(entries[0].state, EntryState::kFailed);
  EXPECT_EQ(entries[0].status_code, static_cast<int>(absl::StatusCode::kNotFound));
  EXPECT_EQ(entries[0].error_reason, "DEFENDER_NOT_FOUND");
  EXPECT_EQ(entries[0].error_message, "machine not found");
  EXPECT_FALSE(entries[0].outcome_unknown);
  EXPECT_EQ(entries[0].action_id, "");
  EXPECT_EQ(entries[0].machine_id, kMachine);
  EXPECT_EQ(entries[0].file_sha1, kSha1);  // the request's, kept when the work has none
}

TEST_F(RequestLedgerTest, FailureWithUnknownOutcomeIsRecordedAsSuch) {
  Answer answer;
  ledger_.Run(Request("k"), work_.Answering(Failed(OutcomeUnknownError())), answer.Callback());
  EXPECT_ERROR(answer, absl::StatusCode::kDeadlineExceeded, "DEFENDER_TIMEOUT");
  EXPECT_EQ(Metadata(answer.result().status(), "outcome"), "unknown");
  std::vector<Entry> entries = journal_.All();
  ASSERT_EQ(entries.size(), 1u);
  EXPECT_EQ(entries[0].state, EntryState::kFailed);
  EXPECT_TRUE(entries[0].outcome_unknown);
  EXPECT_EQ(entries[0].status_code, static_cast<int>(absl::StatusCode::kDeadlineExceeded));
}

TEST_F(RequestLedgerTest, KeyedFirstRunJournalsTheKeyAndRuns) {
  Answer answer;
  ledger_.Run(Request("k"), work_.Answering(Succeeded("A1")), answer.Callback());
  EXPECT_EQ(work_.runs(), 1);
  EXPECT_EQ(work_.since(), std::vector<absl::Time>{absl::InfiniteFuture()});
  EXPECT_ACTION(answer, "A1");
  EXPECT_FALSE(answer.replayed());
  std::vector<Entry> entries = journal_.All();
  ASSERT_EQ(entries.size(), 1u);
  EXPECT_EQ(entries[0].request_key, "k");
  EXPECT_EQ(entries[0].params, "params-1");
  EXPECT_EQ(entries[0].state, EntryState::kSucceeded);
  EXPECT_EQ(entries[0].action_id, "A1");
  EXPECT_EQ(entries[0].attempts, 1);
  EXPECT_EQ(entries[0].replays, 0);
}

TEST_F(RequestLedgerTest, RepeatWhileInFlightWaitsAndGetsTheSameAction) {
  Answer first, second, third;
  ledger_.Run(Request("k"), work_.Held(), first.Callback());
  ASSERT_EQ(work_.runs(), 1);
  ledger_.Run(Request("k"), work_.Held(), second.Callback());
  ledger_.Run(Request("k"), work_.Held(), third.Callback());
  EXPECT_EQ(work_.runs(), 1);
  EXPECT_FALSE(second.called());
  EXPECT_FALSE(third.called());
  EXPECT_EQ(journal_.begins(), 1);  // the waiters did not even ask the journal

  work_.Complete(Succeeded("A1"));
  EXPECT_EQ(work_.runs(), 1);
  EXPECT_ACTION(first, "A1");
  EXPECT_ACTION(second, "A1");
  EXPECT_ACTION(third, "A1");
  EXPECT_FALSE(first.replayed());
  EXPECT_TRUE(second.replayed());
  EXPECT_TRUE(third.replayed());
  EXPECT_EQ(first.calls(), 1);
  EXPECT_EQ(second.calls(), 1);
  EXPECT_EQ(third.calls(), 1);
  std::vector<Entry> entries = journal_.All();
  ASSERT_EQ(entries.size(), 1u);
  EXPECT_EQ(entries[0].attempts, 1);
}

TEST_F(RequestLedgerTest, RepeatWhileTheJournalIsStillWritingWaitsToo) {
  journal_.set_deferred(true);
  Answer first, second;
  ledger_.Run(Request("k"), work_.Held(), first.Callback());
  ledger_.Run(Request("k"), work_.Held(), second.Callback());
  EXPECT_EQ(journal_.pending(), 1u);  // one Begin
  journal_.RunPending();
  EXPECT_EQ(work_.runs(), 1);
  work_.Complete(Succeeded("A1"));
  EXPECT_FALSE(first.called());
  EXPECT_FALSE(second.called());
  journal_.RunPending();
  EXPECT_ACTION(first, "A1");
  EXPECT_ACTION(second, "A1");
  EXPECT_FALSE(first.replayed());
  EXPECT_TRUE(second.replayed());
  EXPECT_EQ(journal_.begins(), 1);
}

TEST_F(RequestLedgerTest, RepeatWhileInFlightWithOtherParamsIsRejectedAtOnce) {
  Answer first, other;
  ledger_.Run(Request("k", "params-1"), work_.Held(), first.Callback());
  ledger_.Run(Request("k", "params-2"), work_.Held(), other.Callback());
  ASSERT_TRUE(other.called());
  EXPECT_ERROR(other, absl::StatusCode::kInvalidArgument, "REQUEST_ID_REUSED");
  EXPECT_EQ(Metadata(other.result().status(), "field"), "request_id");
  EXPECT_FALSE(other.replayed());
  EXPECT_EQ(work_.runs(), 1);
  EXPECT_FALSE(first.called());

  // The first run is not disturbed.
  work_.Complete(Succeeded("A1"));
  EXPECT_ACTION(first, "A1");
  EXPECT_EQ(other.calls(), 1);
  EXPECT_EQ(journal_.All().size(), 1u);
}

TEST_F(RequestLedgerTest, RepeatAfterSuccessReplaysFromTheJournal) {
  Answer first, repeat;
  ledger_.Run(Request("k"), work_.Answering(Succeeded("A1")), first.Callback());
  clock_.Advance(absl::Minutes(10));
  ledger_.Run(Request("k"), work_.Answering(Succeeded("A2")), repeat.Callback());
  EXPECT_EQ(work_.runs(), 1);
  EXPECT_ACTION(repeat, "A1");
  EXPECT_TRUE(repeat.replayed());
  std::vector<Entry> entries = journal_.All();
  ASSERT_EQ(entries.size(), 1u);
  EXPECT_EQ(entries[0].replays, 1);
  EXPECT_EQ(entries[0].attempts, 1);
  EXPECT_EQ(entries[0].state, EntryState::kSucceeded);
  EXPECT_EQ(entries[0].action_id, "A1");
}

TEST_F(RequestLedgerTest, RepeatAfterSuccessWithOtherParamsIsRejected) {
  Answer first, other;
  ledger_.Run(Request("k", "params-1"), work_.Answering(Succeeded("A1")), first.Callback());
  ledger_.Run(Request("k", "params-2"), work_.Answering(Succeeded("A2")), other.Callback());
  EXPECT_EQ(work_.runs(), 1);
  EXPECT_ERROR(other, absl::StatusCode::kInvalidArgument, "REQUEST_ID_REUSED");
  EXPECT_FALSE(other.replayed());
  std::vector<Entry> entries = journal_.All();
  ASSERT_EQ(entries.size(), 1u);
  EXPECT_EQ(entries[0].replays, 0);
  EXPECT_EQ(entries[0].params, "params-1");
}

TEST_F(RequestLedgerTest, WaitersOfAJournalReplayAllGetTheRecordedAction) {
  Answer first;
  ledger_.Run(Request("k"), work_.Answering(Succeeded("A1")), first.Callback());
  journal_.set_deferred(true);
  Answer a, b;
  ledger_.Run(Request("k"), work_.Held(), a.Callback());
  ledger_.Run(Request("k"), work_.Held(), b.Callback());
  journal_.RunPending();
  EXPECT_EQ(work_.runs(), 1);
  EXPECT_ACTION(a, "A1");
  EXPECT_ACTION(b, "A1");
  EXPECT_TRUE(a.replayed());
  EXPECT_TRUE(b.replayed());
  EXPECT_GE(journal_.All()[0].replays, 1);
}

TEST_F(RequestLedgerTest, WaitersOfARepeatWithOtherParamsInTheJournalAreRejectedToo) {
  Answer first;
  ledger_.Run(Request("k", "params-1"), work_.Answering(Succeeded("A1")), first.Callback());
  journal_.set_deferred(true);
  Answer a, b;
  ledger_.Run(Request("k", "params-2"), work_.Held(), a.Callback());
  ledger_.Run(Request("k", "params-2"), work_.Held(), b.Callback());
  journal_.RunPending();
  EXPECT_EQ(work_.runs(), 1);
  EXPECT_ERROR(a, absl::StatusCode::kInvalidArgument, "REQUEST_ID_REUSED");
  EXPECT_ERROR(b, absl::StatusCode::kInvalidArgument, "REQUEST_ID_REUSED");
}

TEST_F(RequestLedgerTest, EntryLeftInFlightRerunsLookingSinceItsLastUpdate) {
  const absl::Time created = clock_.Now();
  Entry left = Request("k");
  left.state = EntryState::kInFlight;
  left.created = created;
  left.updated = created + absl::Minutes(1);
  left = journal_.Put(left);
  clock_.Advance(absl::Minutes(5));

  Answer answer;
  ledger_.Run(Request("k"), work_.Held(), answer.Callback());
  ASSERT_EQ(work_.runs(), 1);
  EXPECT_EQ(work_.since(), std::vector<absl::Time>{created + absl::Minutes(1)});
  // The re-run is on record before the work starts.
  Entry rerun = *journal_.Get(left.id);
  EXPECT_EQ(rerun.state, EntryState::kInFlight);
  EXPECT_EQ(rerun.attempts, 2);
  EXPECT_EQ(rerun.updated, clock_.Now());

  work_.Complete(Succeeded("A1"));
  EXPECT_ACTION(answer, "A1");
  EXPECT_FALSE(answer.replayed());
  Entry done = *journal_.Get(left.id);
  EXPECT_EQ(done.state, EntryState::kSucceeded);
  EXPECT_EQ(done.action_id, "A1");
  EXPECT_EQ(done.attempts, 2);
  EXPECT_EQ(journal_.All().size(), 1u);
}

TEST_F(RequestLedgerTest, FailedWithUnknownOutcomeRerunsLookingSinceCreation) {
  const absl::Time created = clock_.Now();
  Answer first;
  ledger_.Run(Request("k"), work_.Held(), first.Callback());
  clock_.Advance(absl::Minutes(1));
  work_.Complete(Failed(OutcomeUnknownError()));
  EXPECT_ERROR(first, absl::StatusCode::kDeadlineExceeded, "DEFENDER_TIMEOUT");
  std::vector<Entry> entries = journal_.All();
  ASSERT_EQ(entries.size(), 1u);
  EXPECT_EQ(entries[0].updated, created + absl::Minutes(1));

  clock_.Advance(absl::Minutes(1));
  Answer repeat;
  ledger_.Run(Request("k"), work_.Held(), repeat.Callback());
  ASSERT_EQ(work_.runs(), 2);
  EXPECT_EQ(work_.since()[1], created);
  Entry rerun = *journal_.Get(entries[0].id);
  EXPECT_EQ(rerun.state, EntryState::kInFlight);
  EXPECT_EQ(rerun.attempts, 2);

  work_.Complete(Succeeded("A1"));
  EXPECT_ACTION(repeat, "A1");
  EXPECT_FALSE(repeat.replayed());
  Entry done = *journal_.Get(entries[0].id);
  EXPECT_EQ(done.state, EntryState::kSucceeded);
  EXPECT_FALSE(done.outcome_unknown);
  EXPECT_EQ(done.status_code, 0);
  EXPECT_EQ(done.error_reason, "");
  EXPECT_EQ(done.error_message, "");
  EXPECT_EQ(done.attempts, 2);
}

TEST_F(RequestLedgerTest, FailedWithKnownOutcomeRerunsFromScratch) {
  Answer first;
  ledger_.Run(Request("k"), work_.Answering(Failed(KnownFailure())), first.Callback());
  EXPECT_ERROR(first, absl::StatusCode::kNotFound, "DEFENDER_NOT_FOUND");

  clock_.Advance(absl::Minutes(1));
  Answer second;
  ledger_.Run(Request("k"), work_.Answering(Failed(KnownFailure())), second.Callback());
  EXPECT_ERROR(second, absl::StatusCode::kNotFound, "DEFENDER_NOT_FOUND");
  EXPECT_FALSE(second.replayed());

  clock_.Advance(absl::Minutes(1));
  Answer third;
  ledger_.Run(Request("k"), work_.Answering(Succeeded("A1")), third.Callback());
  EXPECT_ACTION(third, "A1");
  EXPECT_FALSE(third.replayed());

  EXPECT_EQ(work_.runs(), 3);
  EXPECT_EQ(work_.since(), std::vector<absl::Time>(3, absl::InfiniteFuture()));
  std::vector<Entry> entries = journal_.All();
  ASSERT_EQ(entries.size(), 1u);
  EXPECT_EQ(entries[0].attempts, 3);
  EXPECT_EQ(entries[0].state, EntryState::kSucceeded);
  EXPECT_EQ(entries[0].status_code, 0);
  EXPECT_EQ(entries[0].error_reason, "");
}

// A re-run that may reach Defender, cut short by a stop, must still look back
// as far as the run before it may have reached Defender.
TEST_F(RequestLedgerTest, RerunAfterUnknownOutcomeLeftInFlightStillLooksSinceCreation) {
  const absl::Time created = clock_.Now();
  Entry failed = Request("k");
  failed.state = EntryState::kFailed;
  failed.outcome_unknown = true;
  failed.status_code = static_cast<int>(absl::StatusCode::kDeadlineExceeded);
  failed.error_reason = "DEFENDER_TIMEOUT";
  failed.created = created;
  failed.updated = created + absl::Minutes(1);
  failed = journal_.Put(failed);

  {
    // A process re-runs it and stops mid-run.
    RequestLedger stopped(journal_, kWindow, clock_);
    clock_.Advance(absl::Minutes(2));
    Answer lost;
    stopped.Run(Request("k"), work_.Held(), lost.Callback());
    ASSERT_EQ(work_.runs(), 1);
    EXPECT_EQ(work_.since()[0], created);
    work_.DropHeld();
  }
  Entry left = *journal_.Get(failed.id);
  ASSERT_EQ(left.state, EntryState::kInFlight);
  ASSERT_EQ(left.updated, created + absl::Minutes(2));

  clock_.Advance(absl::Minutes(1));
  Answer answer;
  ledger_.Run(Request("k"), work_.Held(), answer.Callback());
  ASSERT_EQ(work_.runs(), 2);
  EXPECT_EQ(work_.since()[1], created);
  EXPECT_EQ(journal_.Get(failed.id)->attempts, 3);
  work_.Complete(Succeeded("A1"));
  EXPECT_ACTION(answer, "A1");
}

// A re-run after a failure that created nothing, cut short by a stop, looks
// back to its own start only.
TEST_F(RequestLedgerTest, RerunAfterKnownFailureLeftInFlightLooksSinceTheRerun) {
  const absl::Time created = clock_.Now();
  Entry failed = Request("k");
  failed.state = EntryState::kFailed;
  failed.status_code = static_cast<int>(absl::StatusCode::kNotFound);
  failed.error_reason = "DEFENDER_NOT_FOUND";
  failed.created = created;
  failed.updated = created + absl::Minutes(1);
  failed = journal_.Put(failed);

  {
    RequestLedger stopped(journal_, kWindow, clock_);
    clock_.Advance(absl::Minutes(2));
    Answer lost;
    stopped.Run(Request("k"), work_.Held(), lost.Callback());
    ASSERT_EQ(work_.runs(), 1);
    EXPECT_EQ(work_.since()[0], absl::InfiniteFuture());
    work_.DropHeld();
  }
  clock_.Advance(absl::Minutes(1));
  Answer answer;
  ledger_.Run(Request("k"), work_.Held(), answer.Callback());
  ASSERT_EQ(work_.runs(), 2);
  EXPECT_EQ(work_.since()[1], created + absl::Minutes(2));
  work_.Complete(Succeeded("A1"));
  EXPECT_ACTION(answer, "A1");
}

TEST_F(RequestLedgerTest, BeginFailureIsJournalUnavailableAndNothingRuns) {
  journal_.FailBegins(absl::ResourceExhaustedError("disk full"));
  journal_.set_deferred(true);
  Answer keyed, waiter, unkeyed;
  ledger_.Run(Request("k"), work_.Held(), keyed.Callback());
  ledger_.Run(Request("k"), work_.Held(), waiter.Callback());
  ledger_.Run(Request(""), work_.Held(), unkeyed.Callback());
  journal_.RunPending();

  EXPECT_EQ(work_.runs(), 0);
  for (Answer* answer : {&keyed, &waiter, &unkeyed}) {
    EXPECT_ERROR(*answer, absl::StatusCode::kUnavailable, "JOURNAL_UNAVAILABLE");
    EXPECT_THAT(answer->result().status().message(), HasSubstr("disk full"));
    EXPECT_THAT(answer->result().status().message(), HasSubstr("nothing was sent"));
    EXPECT_EQ(answer->calls(), 1);
  }
  EXPECT_FALSE(keyed.replayed());
  EXPECT_FALSE(unkeyed.replayed());
  EXPECT_TRUE(journal_.All().empty());

  // The key is free again once the journal recovers.
  journal_.FailBegins(absl::OkStatus());
  journal_.set_deferred(false);
  Answer later;
  ledger_.Run(Request("k"), work_.Answering(Succeeded("A1")), later.Callback());
  EXPECT_EQ(work_.runs(), 1);
  EXPECT_ACTION(later, "A1");
  EXPECT_FALSE(later.replayed());
}

TEST_F(RequestLedgerTest, RerunThatCannotBeRecordedIsJournalUnavailableAndNothingRuns) {
  Answer first;
  ledger_.Run(Request("k"), work_.Answering(Failed(KnownFailure())), first.Callback());
  ASSERT_EQ(work_.runs(), 1);
  journal_.FailUpdates(absl::UnavailableError("locked"));
  Answer repeat;
  ledger_.Run(Request("k"), work_.Held(), repeat.Callback());
  EXPECT_EQ(work_.runs(), 1);
  EXPECT_ERROR(repeat, absl::StatusCode::kUnavailable, "JOURNAL_UNAVAILABLE");
  EXPECT_EQ(journal_.All()[0].state, EntryState::kFailed);
}

TEST_F(RequestLedgerTest, OutcomeThatCannotBeRecordedStillReachesTheCallers) {
  Answer first, waiter;
  ledger_.Run(Request("k"), work_.Held(), first.Callback());
  ledger_.Run(Request("k"), work_.Held(), waiter.Callback());
  journal_.FailUpdates(absl::InternalError("disk I/O error"));
  work_.Complete(Succeeded("A1"));
  EXPECT_EQ(journal_.updates(), 1);
  EXPECT_ACTION(first, "A1");
  EXPECT_FALSE(first.replayed());
  EXPECT_ACTION(waiter, "A1");
  EXPECT_TRUE(waiter.replayed());
  EXPECT_EQ(journal_.All()[0].state, EntryState::kInFlight);  // the write was lost

  Answer unkeyed;
  ledger_.Run(Request(""), work_.Answering(Succeeded("A2")), unkeyed.Callback());
  EXPECT_ACTION(unkeyed, "A2");
}

TEST_F(RequestLedgerTest, ReplayCountThatCannotBeRecordedStillAnswers) {
  Answer first;
  ledger_.Run(Request("k"), work_.Answering(Succeeded("A1")), first.Callback());
  journal_.FailUpdates(absl::InternalError("disk I/O error"));
  Answer repeat;
  ledger_.Run(Request("k"), work_.Held(), repeat.Callback());
  EXPECT_EQ(work_.runs(), 1);
  EXPECT_ACTION(repeat, "A1");
  EXPECT_TRUE(repeat.replayed());
  EXPECT_EQ(journal_.All()[0].replays, 0);
}

TEST_F(RequestLedgerTest, FirstCallersCancellationReachesWaitersAsAborted) {
  Answer first, waiter;
  ledger_.Run(Request("k"), work_.Held(), first.Callback());
  ledger_.Run(Request("k"), work_.Held(), waiter.Callback());
  absl::Status cancelled =
      MakeError(absl::StatusCode::kCancelled, "the caller cancelled", "CANCELLED");
  AddErrorMetadata(cancelled, "outcome", "unknown");
  work_.Complete(Failed(cancelled));

  EXPECT_EQ(work_.runs(), 1);
  EXPECT_ERROR(first, absl::StatusCode::kCancelled, "CANCELLED");
  EXPECT_FALSE(first.replayed());
  EXPECT_ERROR(waiter, absl::StatusCode::kAborted, "REQUEST_ID_RUN_CANCELLED");
  EXPECT_EQ(Metadata(waiter.result().status(), "field"), "request_id");
  EXPECT_EQ(Metadata(waiter.result().status(), "outcome"), "unknown");
  EXPECT_TRUE(waiter.replayed());

  std::vector<Entry> entries = journal_.All();
  ASSERT_EQ(entries.size(), 1u);
  EXPECT_EQ(entries[0].state, EntryState::kFailed);
  EXPECT_EQ(entries[0].status_code, static_cast<int>(absl::StatusCode::kCancelled));
  EXPECT_TRUE(entries[0].outcome_unknown);
}

TEST_F(RequestLedgerTest, CancellationWithoutOutcomeReachesWaitersAsAbortedWithoutOutcome) {
  Answer first, waiter;
  ledger_.Run(Request("k"), work_.Held(), first.Callback());
  ledger_.Run(Request("k"), work_.Held(), waiter.Callback());
  work_.Complete(Failed(absl::CancelledError("cancelled")));
  EXPECT_EQ(first.result().status().code(), absl::StatusCode::kCancelled);
  EXPECT_ERROR(waiter, absl::StatusCode::kAborted, "REQUEST_ID_RUN_CANCELLED");
  EXPECT_EQ(Metadata(waiter.result().status(), "outcome"), "<missing>");
}

TEST_F(RequestLedgerTest, OtherFailuresReachWaitersUnchanged) {
  Answer first, waiter;
  ledger_.Run(Request("k"), work_.Held(), first.Callback());
  ledger_.Run(Request("k"), work_.Held(), waiter.Callback());
  work_.Complete(Failed(OutcomeUnknownError()));
  EXPECT_ERROR(first, absl::StatusCode::kDeadlineExceeded, "DEFENDER_TIMEOUT");
  EXPECT_ERROR(waiter, absl::StatusCode::kDeadlineExceeded, "DEFENDER_TIMEOUT");
  EXPECT_EQ(Metadata(waiter.result().status(), "outcome"), "unknown");
  EXPECT_TRUE(waiter.replayed());
}

TEST_F(RequestLedgerTest, EntriesOlderThanTheWindowAreNotReplayed) {
  Answer first;
  ledger_.Run(Request("k"), work_.Answering(Succeeded("A1")), first.Callback());

  // At the edge of the window it is still a repeat...
  clock_.Advance(kWindow);
  Answer edge;
  ledger_.Run(Request("k"), work_.Answering(Succeeded("A2")), edge.Callback());
  EXPECT_EQ(work_.runs(), 1);
  EXPECT_ACTION(edge, "A1");
  EXPECT_TRUE(edge.replayed());

  // ...past it, a new request.
  clock_.Advance(absl::Microseconds(1));
  Answer later;
  ledger_.Run(Request("k", "params-2"), work_.Answering(Succeeded("A2")), later.Callback());
  EXPECT_EQ(work_.runs(), 2);
  EXPECT_EQ(work_.since()[1], absl::InfiniteFuture());
  EXPECT_ACTION(later, "A2");
  EXPECT_FALSE(later.replayed());
  std::vector<Entry> entries = journal_.All();
  ASSERT_EQ(entries.size(), 2u);
  EXPECT_EQ(entries[0].action_id, "A1");
  EXPECT_EQ(entries[1].action_id, "A2");
  EXPECT_EQ(entries[1].params, "params-2");
  EXPECT_EQ(entries[1].attempts, 1);
}

TEST_F(RequestLedgerTest, UnreadableRecordedActionIsJournalCorrupt) {
  for (bool legacy : {false, true}) {
    SCOPED_TRACE(legacy ? "schema-1 JSON" : "serialized");
    const std::string key = legacy ? "k1" : "k2";
    Entry e = Request(key);
    e.state = EntryState::kSucceeded;
    e.action_id = "A1";
    if (legacy) {
      e.action_json = "{not json";
    } else {
      e.action_proto = "\xff\xff\xff";
    }
    e.created = e.updated = clock_.Now();
    journal_.Put(e);
    Answer answer;
    ledger_.Run(Request(key), work_.Held(), answer.Callback());
    EXPECT_EQ(work_.runs(), 0);
    EXPECT_ERROR(answer, absl::StatusCode::kInternal, "JOURNAL_CORRUPT");
    EXPECT_EQ(Metadata(answer.result().status(), "action_id"), "A1");
  }
}

TEST_F(RequestLedgerTest, ActionRecordedAsJsonBySchemaOneIsReplayed) {
  Entry e = Request("k");
  e.state = EntryState::kSucceeded;
  e.action_id = "A1";
  std::string json;
  ASSERT_TRUE(google::protobuf::util::MessageToJsonString(Action("A1"), &json).ok());
  e.action_json = json;
  e.created = e.updated = clock_.Now();
  journal_.Put(e);
  Answer answer;
  ledger_.Run(Request("k"), work_.Held(), answer.Callback());
  EXPECT_EQ(work_.runs(), 0);
  EXPECT_ACTION(answer, "A1");
  EXPECT_TRUE(answer.replayed());
}

TEST_F(RequestLedgerTest, DifferentKeysRunIndependently) {
  Answer a, b;
  ledger_.Run(Request("k1"), work_.Held(), a.Callback());
  ledger_.Run(Request("k2", "params-2"), work_.Held(), b.Callback());
  EXPECT_EQ(work_.runs(), 2);
  work_.Complete(Succeeded("A1"));
  work_.Complete(Succeeded("A2"));
  EXPECT_ACTION(a, "A1");
  EXPECT_ACTION(b, "A2");
  EXPECT_FALSE(a.replayed());
  EXPECT_FALSE(b.replayed());
}

// --- With the SQLite journal (restarts, real threads) --------------------------

// --- Shared with other replicas (ShareWith), through a fake RequestClaims -----------

// FakeClaims answers each Claim with the next scripted RequestClaim, inline,
// and records Finish calls.
class FakeClaims final : public RequestClaims {
 public:
  void Script(RequestClaim claim) { script_.push_back(std::move(claim)); }
  void Claim(const std::string& key, const std::string& params, ClaimDone done) override {
    claims_.push_back(key + "|" + params);
    RequestClaim next = script_.front();
    script_.pop_front();
    std::move(done)(std::move(next));
  }
  void Finish(const std::string& key, const absl::StatusOr<v1::MachineAction>& result) override {
    finished_.push_back(key + "|" + (result.ok() ? result->id() : ErrorReason(result.status())));
  }
  void Unclaimed(const std::string& key, const std::string& params,
                 const absl::StatusOr<v1::MachineAction>& result) override {
    unclaimed_.push_back(key + "|" + params + "|" +
                         (result.ok() ? result->id() : ErrorReason(result.status())));
  }
  std::vector<std::string> claims_, finished_, unclaimed_;

 private:
  std::deque<RequestClaim> script_;
};

class RequestLedgerSharedTest : public RequestLedgerTest {
 protected:
  RequestLedgerSharedTest() { ledger_.ShareWith(&claims_); }
  FakeClaims claims_;
};

TEST_F(RequestLedgerSharedTest, ClaimedRunRunsAndTellsTheOtherReplicas) {
  RequestClaim run;
  run.kind = RequestClaim::Kind::kRun;
  claims_.Script(run);
  Answer answer;
  ledger_.Run(Request("k"), work_.Answering(Succeeded("A1")), answer.Callback());
  EXPECT_ACTION(answer, "A1");
  EXPECT_EQ(claims_.claims_, std::vector<std::string>{"k|params-1"});
  EXPECT_EQ(claims_.finished_, std::vector<std::string>{"k|A1"});
  EXPECT_EQ(work_.since(), std::vector<absl::Time>{absl::InfiniteFuture()});
}

TEST_F(RequestLedgerSharedTest, TakenOverRunLooksSinceTheEarlierRunElsewhere) {
  RequestClaim run;
  run.kind = RequestClaim::Kind::kRun;
  run.maybe_sent_since = clock_.Now() - absl::Minutes(3);
  claims_.Script(run);
  Answer answer;
  ledger_.Run(Request("k"), work_.Answering(Failed(KnownFailure())), answer.Callback());
  EXPECT_EQ(work_.since(), std::vector<absl::Time>{clock_.Now() - absl::Minutes(3)});
  ASSERT_EQ(claims_.finished_.size(), 1u);  // failures are told too
}

TEST_F(RequestLedgerSharedTest, DoneElsewhereIsAReplayRecordedHereWithNothingRun) {
  RequestClaim done;
  done.kind = RequestClaim::Kind::kDone;
  done.action = Action("A7");
  done.waited = true;
  claims_.Script(done);
  Answer answer;
  ledger_.Run(Request("k"), work_.Held(), answer.Callback());
  EXPECT_EQ(work_.runs(), 0);
  EXPECT_ACTION(answer, "A7");
  EXPECT_TRUE(answer.replayed());
  EXPECT_TRUE(claims_.finished_.empty());
  std::vector<Entry> entries = journal_.All();
  ASSERT_EQ(entries.size(), 1u);
  EXPECT_EQ(entries[0].state, EntryState::kSucceeded);
  EXPECT_EQ(entries[0].action_id, "A7");
  EXPECT_EQ(entries[0].replays, 1);
  // Known here from now on: a repeat replays from this journal, without a claim.
  Answer again;
  ledger_.Run(Request("k"), work_.Held(), again.Callback());
  EXPECT_ACTION(again, "A7");
  EXPECT_EQ(claims_.claims_.size(), 1u);
}

TEST_F(RequestLedgerSharedTest, OtherParamsElsewhereIsRequestIdReused) {
  RequestClaim reused;
  reused.kind = RequestClaim::Kind::kReused;
  claims_.Script(reused);
  Answer answer;
  ledger_.Run(Request("k"), work_.Held(), answer.Callback());
  EXPECT_EQ(work_.runs(), 0);
  EXPECT_ERROR(answer, absl::StatusCode::kInvalidArgument, "REQUEST_ID_REUSED");
}

TEST_F(RequestLedgerSharedTest, UnreachableBeforeAnyOtherRunRunsHereLookingBack) {
  RequestClaim down;
  down.kind = RequestClaim::Kind::kUnavailable;
  down.error = absl::UnavailableError("redis down");
  claims_.Script(down);
  Answer answer;
  ledger_.Run(Request("k"), work_.Answering(Succeeded("A1")), answer.Callback());
  EXPECT_ACTION(answer, "A1");
  EXPECT_EQ(work_.since(),
            std::vector<absl::Time>{clock_.Now() - RequestLedger::kSharedLookback});
  EXPECT_TRUE(claims_.finished_.empty());  // not claimed: no Finish
  // but the outcome goes to the shared state once it is back.
  EXPECT_EQ(claims_.unclaimed_, std::vector<std::string>{"k|params-1|A1"});
}

TEST_F(RequestLedgerSharedTest, UnreachableWhileAnotherReplicaRunsItIsUnavailableAndNothingRuns) {
  RequestClaim lost;
  lost.kind = RequestClaim::Kind::kUnavailable;
  lost.error = absl::UnavailableError("redis down");
  lost.waited = true;
  claims_.Script(lost);
  Answer answer;
  ledger_.Run(Request("k"), work_.Held(), answer.Callback());
  EXPECT_EQ(work_.runs(), 0);
  EXPECT_ERROR(answer, absl::StatusCode::kUnavailable, "REDIS_UNAVAILABLE");
  std::vector<Entry> entries = journal_.All();
  ASSERT_EQ(entries.size(), 1u);
  EXPECT_EQ(entries[0].state, EntryState::kFailed);
  EXPECT_TRUE(entries[0].outcome_unknown);  // the other replica may have sent
}

TEST_F(RequestLedgerSharedTest, CallsWithoutAKeyAreNotClaimed) {
  Answer answer;
  ledger_.Run(Request(""), work_.Answering(Succeeded("A1")), answer.Callback());
  EXPECT_ACTION(answer, "A1");
  EXPECT_TRUE(claims_.claims_.empty());
}

class RequestLedgerSqliteTest : public ::testing::Test {
 protected:
  void SetUp() override { Reopen(); }

  // Reopen closes the journal (finishing its writes) and opens it again: a
  // restart of the process.
  void Reopen() {
    journal_.reset();
    journal::SqliteJournalOptions options;
    options.clock = &clock_;
    absl::StatusOr<std::unique_ptr<journal::SqliteJournal>> opened =
        journal::SqliteJournal::Open(dir_.path(), options);
    ASSERT_TRUE(opened.ok()) << opened.status();
    journal_ = std::move(*opened);
  }

  std::vector<Entry> Entries(const std::string& key = "") {
    journal::ListOptions options;
    options.request_key = key;
    absl::StatusOr<std::vector<Entry>> entries = journal_->List(options);
    EXPECT_TRUE(entries.ok()) << entries.status();
    return entries.ok() ? *entries : std::vector<Entry>();
  }

  TempDir dir_;
  FakeClock clock_;
  std::unique_ptr<journal::SqliteJournal> journal_;
  WorkProbe work_;
};

TEST_F(RequestLedgerSqliteTest, OutcomeIsDurableBeforeDone) {
  RequestLedger ledger(*journal_, kWindow, clock_);
  std::vector<Entry> seen_at_done;
  Answer answer;
  ledger.Run(Request(""), work_.Answering(Succeeded("A1")),
             answer.Callback([&] { seen_at_done = Entries(); }));
  ASSERT_TRUE(answer.Wait());
  EXPECT_ACTION(answer, "A1");
  ASSERT_EQ(seen_at_done.size(), 1u);
  EXPECT_EQ(seen_at_done[0].state, EntryState::kSucceeded);
  EXPECT_EQ(seen_at_done[0].action_id, "A1");
  EXPECT_EQ(seen_at_done[0].method, "QuarantineFile");
  EXPECT_EQ(seen_at_done[0].caller, "ipv4:10.0.0.7:51234");
  EXPECT_EQ(seen_at_done[0].tenant, "contoso");
  EXPECT_EQ(seen_at_done[0].params, "params-1");
  EXPECT_EQ(work_.runs(), 1);
}

TEST_F(RequestLedgerSqliteTest, RepeatAfterRestartReplaysWithoutRunning) {
  {
    RequestLedger ledger(*journal_, kWindow, clock_);
    Answer first;
    ledger.Run(Request("k"), work_.Answering(Succeeded("A1")), first.Callback());
    ASSERT_TRUE(first.Wait());
    EXPECT_ACTION(first, "A1");
    EXPECT_FALSE(first.replayed());
  }
  for (int restart = 1; restart <= 2; ++restart) {
    Reopen();
    clock_.Advance(absl::Minutes(20));
    {
      RequestLedger ledger(*journal_, kWindow, clock_);
      Answer repeat;
      ledger.Run(Request("k"), work_.Answering(Succeeded("A2")), repeat.Callback());
      ASSERT_TRUE(repeat.Wait());
      EXPECT_ACTION(repeat, "A1");
      EXPECT_TRUE(repeat.replayed());
      EXPECT_EQ(repeat.calls(), 1);
    }
    EXPECT_EQ(work_.runs(), 1);
    Reopen();  // the replay count is durable
    std::vector<Entry> entries = Entries("k");
    ASSERT_EQ(entries.size(), 1u);
    EXPECT_EQ(entries[0].state, EntryState::kSucceeded);
    EXPECT_EQ(entries[0].replays, restart);
    EXPECT_EQ(entries[0].attempts, 1);
    EXPECT_EQ(entries[0].action_id, "A1");
  }
}

TEST_F(RequestLedgerSqliteTest, RepeatAfterRestartWithOtherParamsIsRejected) {
  {
    RequestLedger ledger(*journal_, kWindow, clock_);
    Answer first;
    ledger.Run(Request("k", "params-1"), work_.Answering(Succeeded("A1")), first.Callback());
    ASSERT_TRUE(first.Wait());
  }
  Reopen();
  RequestLedger ledger(*journal_, kWindow, clock_);
  Answer other;
  ledger.Run(Request("k", "params-2"), work_.Answering(Succeeded("A2")), other.Callback());
  ASSERT_TRUE(other.Wait());
  EXPECT_ERROR(other, absl::StatusCode::kInvalidArgument, "REQUEST_ID_REUSED");
  EXPECT_EQ(work_.runs(), 1);
  std::vector<Entry> entries = Entries("k");
  ASSERT_EQ(entries.size(), 1u);
  EXPECT_EQ(entries[0].replays, 0);
}

TEST_F(RequestLedgerSqliteTest, EntryLeftInFlightByAStoppedProcessRerunsLookingSinceIt) {
  {
    RequestLedger stopped(*journal_, kWindow, clock_);
    Answer lost;
    stopped.Run(Request("k"), work_.Held(), lost.Callback());
    ASSERT_TRUE(work_.WaitForRuns(1));
    work_.DropHeld();
  }
  Reopen();
  std::vector<Entry> left = Entries("k");
  ASSERT_EQ(left.size(), 1u);
  ASSERT_EQ(left[0].state, EntryState::kInFlight);

  clock_.Advance(absl::Minutes(2));
  {
    RequestLedger ledger(*journal_, kWindow, clock_);
    Answer answer;
    ledger.Run(Request("k"), work_.Held(), answer.Callback());
    ASSERT_TRUE(work_.WaitForRuns(2));
    EXPECT_EQ(work_.since()[1], left[0].updated);
    work_.Complete(Succeeded("A1"));
    ASSERT_TRUE(answer.Wait());
    EXPECT_ACTION(answer, "A1");
    EXPECT_FALSE(answer.replayed());
  }
  std::vector<Entry> entries = Entries("k");
  ASSERT_EQ(entries.size(), 1u);
  EXPECT_EQ(entries[0].state, EntryState::kSucceeded);
  EXPECT_EQ(entries[0].attempts, 2);
}

// Two stops in a row: the third run must look back to the first's start.
TEST_F(RequestLedgerSqliteTest, EntryLeftInFlightTwiceStillLooksSinceTheFirstRun) {
  const absl::Time first_run = clock_.Now();
  for (int stop = 1; stop <= 2; ++stop) {
    {
      RequestLedger stopped(*journal_, kWindow, clock_);
      Answer lost;
      stopped.Run(Request("k"), work_.Held(), lost.Callback());
      ASSERT_TRUE(work_.WaitForRuns(stop));
      work_.DropHeld();
    }
    Reopen();
    clock_.Advance(absl::Minutes(1));
  }
  EXPECT_EQ(work_.since()[1], first_run);

  RequestLedger ledger(*journal_, kWindow, clock_);
  Answer answer;
  ledger.Run(Request("k"), work_.Held(), answer.Callback());
  ASSERT_TRUE(work_.WaitForRuns(3));
  EXPECT_EQ(work_.since()[2], first_run);
  work_.Complete(Succeeded("A1"));
  ASSERT_TRUE(answer.Wait());
  EXPECT_ACTION(answer, "A1");
  std::vector<Entry> entries = Entries("k");
  ASSERT_EQ(entries.size(), 1u);
  EXPECT_EQ(entries[0].attempts, 3);
}

TEST_F(RequestLedgerSqliteTest, EntryOlderThanTheWindowRunsAgainAfterRestart) {
  {
    RequestLedger ledger(*journal_, kWindow, clock_);
    Answer first;
    ledger.Run(Request("k"), work_.Answering(Succeeded("A1")), first.Callback());
    ASSERT_TRUE(first.Wait());
  }
  Reopen();
  clock_.Advance(kWindow + absl::Seconds(1));
  RequestLedger ledger(*journal_, kWindow, clock_);
  Answer later;
  ledger.Run(Request("k"), work_.Answering(Succeeded("A2")), later.Callback());
  ASSERT_TRUE(later.Wait());
  EXPECT_EQ(work_.runs(), 2);
  EXPECT_ACTION(later, "A2");
  EXPECT_FALSE(later.replayed());
  std::vector<Entry> entries = Entries("k");
  ASSERT_EQ(entries.size(), 2u);  // the old one stays for the audit
  EXPECT_EQ(entries[0].action_id, "A1");
  EXPECT_EQ(entries[0].replays, 0);
  EXPECT_EQ(entries[1].action_id, "A2");
}

TEST_F(RequestLedgerSqliteTest, ConcurrentRepeatsRunTheWorkOnce) {
  RequestLedger ledger(*journal_, kWindow, clock_);
  constexpr int kCallers = 8;
  std::vector<std::unique_ptr<Answer>> answers;
  for (int i = 0; i < kCallers; ++i) answers.push_back(std::make_unique<Answer>());
  absl::Notification go;
  std::vector<std::thread> threads;
  for (int i = 0; i < kCallers; ++i) {
    threads.emplace_back([&, i] {
      go.WaitForNotification();
      ledger.Run(Request("k"), work_.Answering(Succeeded("A1")), answers[i]->Callback());
    });
  }
  go.Notify();
  for (std::thread& t : threads) t.join();
  int own = 0;
  for (auto& answer : answers) {
    ASSERT_TRUE(answer->Wait());
    EXPECT_ACTION(*answer, "A1");
    EXPECT_EQ(answer->calls(), 1);
    if (!answer->replayed()) ++own;
  }
  EXPECT_EQ(work_.runs(), 1);
  EXPECT_EQ(own, 1);
  EXPECT_EQ(Entries("k").size(), 1u);
}

}  // namespace
}  // namespace defender
