#include "server/watch_hub.h"

#include <atomic>
#include <deque>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "adapters/common/cancellation.h"
#include "adapters/common/clock.h"
#include "adapters/common/error.h"
#include "adapters/common/scheduler.h"
#include "adapters/defender/defender_client.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace defender {
namespace {

using ::testing::ElementsAre;
using ::testing::IsEmpty;

constexpr char kActionId[] = "141408d1-384c-4c19-8b57-ba39e378011a";

api::MachineAction Action(const std::string& status, const std::string& id = kActionId) {
  api::MachineAction action;
  action.id = id;
  action.type = "StopAndQuarantineFile";
  action.status = status;
  return action;
}

// FakeDefenderClient records GetMachineAction calls; the test answers them,
// oldest first, whenever it likes. Every other call fails UNIMPLEMENTED.
class FakeDefenderClient final : public api::DefenderClient {
 public:
  struct Call {
    std::string action_id;
    api::CallContext context;
    ActionCallback done;
  };

  void GetMachineAction(const std::string& action_id, const api::CallContext& context,
                        ActionCallback done) override {
    absl::MutexLock lock(&mu_);
    ++calls_;
    action_ids_.push_back(action_id);
    contexts_.push_back(context);
    pending_.push_back(Call{action_id, context, std::move(done)});
  }

  // Answer answers the oldest unanswered call (outside the fake's lock).
  void Answer(absl::StatusOr<api::MachineAction> answer) {
    ActionCallback done;
    {
      absl::MutexLock lock(&mu_);
      ASSERT_FALSE(pending_.empty()) << "no GetMachineAction to answer";
      done = std::move(pending_.front().done);
      pending_.pop_front();
    }
    std::move(done)(std::move(answer));
  }

  // Calls counts every GetMachineAction ever made.
  int Calls() const {
    absl::MutexLock lock(&mu_);
    return calls_;
  }
  size_t Pending() const {
    absl::MutexLock lock(&mu_);
    return pending_.size();
  }
  // Context of the i-th call ever made.
  api::CallContext Context(size_t i) const {
    absl::MutexLock lock(&mu_);
    return contexts_.at(i);
  }
  std::string ActionId(size_t i) const {
    absl::MutexLock lock(&mu_);
    return action_ids_.at(i);
  }

  void StopAndQuarantineFile(const api::StopAndQuarantineFileParams&, const api::CallContext&,
                             ActionCallback done) override {
    std::move(done)(absl::UnimplementedError("fake"));
  }
  void CancelMachineAction(const std::string&, const std::string&, const api::CallContext&,
                           ActionCallback done) override {
    std::move(done)(absl::UnimplementedError("fake"));
  }
  void GetFile(const std::string&, const api::CallContext&, FileCallback done) override {
    std::move(done)(absl::UnimplementedError("fake"));
  }
  void FindMachinesByDnsName(const std::string&, const api::CallContext&,
                             MachinesCallback done) override {
    std::move(done)(absl::UnimplementedError("fake"));
  }

 private:
  mutable absl::Mutex mu_;
  int calls_ ABSL_GUARDED_BY(mu_) = 0;
  std::vector<std::string> action_ids_ ABSL_GUARDED_BY(mu_);
  std::vector<api::CallContext> contexts_ ABSL_GUARDED_BY(mu_);
  std::deque<Call> pending_ ABSL_GUARDED_BY(mu_);
};

// RecordingWatcher keeps the defender_status of every update and the end.
class RecordingWatcher : public Watcher {
 public:
  void Update(const v1::MachineAction& action) override {
    absl::MutexLock lock(&mu_);
    EXPECT_FALSE(end_.has_value()) << "Update after End";
    statuses_.push_back(action.defender_status());
    last_id_ = action.id();
  }
  void End(const absl::Status& status) override {
    absl::MutexLock lock(&mu_);
    EXPECT_FALSE(end_.has_value()) << "End twice";
    end_ = status;
    ++ends_;
  }

  std::vector<std::string> statuses() const {
    absl::MutexLock lock(&mu_);
    return statuses_;
  }
  std::string last_id() const {
    absl::MutexLock lock(&mu_);
    return last_id_;
  }
  std::optional<absl::Status> end() const {
    absl::MutexLock lock(&mu_);
    return end_;
  }

 private:
  mutable absl::Mutex mu_;
  std::vector<std::string> statuses_ ABSL_GUARDED_BY(mu_);
  std::string last_id_ ABSL_GUARDED_BY(mu_);
  std::optional<absl::Status> end_ ABSL_GUARDED_BY(mu_);
  int ends_ ABSL_GUARDED_BY(mu_) = 0;
};

class WatchHubTest : public ::testing::Test {
 protected:
  WatchHubTest() {
    options_.initial_interval = absl::Seconds(2);
    options_.max_interval = absl::Seconds(10);
    options_.growth = 2.0;
    options_.not_found_grace = absl::Seconds(15);
    options_.poll_timeout = absl::Seconds(30);
    hub_ = std::make_unique<WatchHub>(scheduler_, options_, clock_);
  }

  ~WatchHubTest() override {
    // End every poll, let the cancelled calls come back, then let the hub go
    // (its destructor waits for answers still in flight).
    if (hub_ != nullptr) {
      hub_->Close(absl::CancelledError("test over"));
      for (FakeDefenderClient* client : {client_.get(), other_client_.get()}) {
        while (client->Pending() > 0) client->Answer(absl::CancelledError("cancelled"));
      }
      hub_.reset();
    }
  }

  WatchHub::WatchId Watch(const std::shared_ptr<RecordingWatcher>& watcher,
                          const std::string& action_id = kActionId) {
    return hub_->Watch(client_, action_id, watcher);
  }

  // NextPause is how long until the hub's next poll.
  absl::Duration NextPause() const { return scheduler_.NextTime() - clock_.Now(); }

  // Advance moves the clock by `by` and runs what is due.
  void Advance(absl::Duration by) {
    clock_.Advance(by);
    scheduler_.RunDue();
  }

  // PollAgain moves the clock to the hub's next poll and runs it; the test
  // fails unless a poll was scheduled and it called GetMachineAction.
  void PollAgain() {
    ASSERT_EQ(scheduler_.Pending(), 1u) << "no poll scheduled";
    const int before = client_->Calls();
    Advance(NextPause());
    ASSERT_EQ(client_->Calls(), before + 1);
  }

  FakeClock clock_;
  ManualScheduler scheduler_{clock_};
  WatchOptions options_;
  std::shared_ptr<FakeDefenderClient> client_ = std::make_shared<FakeDefenderClient>();
  std::shared_ptr<FakeDefenderClient> other_client_ = std::make_shared<FakeDefenderClient>();
  std::unique_ptr<WatchHub> hub_;
};

TEST_F(WatchHubTest, FirstPollIsImmediateThenOnlyChangesThenEndOkAtAFinalStatus) {
  auto watcher = std::make_shared<RecordingWatcher>();
  const absl::Time start = clock_.Now();
  Watch(watcher);
  // The first poll goes out at once, without waiting for the scheduler.
  ASSERT_EQ(client_->Calls(), 1);
  EXPECT_EQ(client_->ActionId(0), kActionId);
  EXPECT_EQ(client_->Context(0).deadline, start + options_.poll_timeout);
  ASSERT_NE(client_->Context(0).cancellation, nullptr);
  EXPECT_FALSE(client_->Context(0).cancellation->IsCancelled());
  EXPECT_EQ(hub_->Polls(), 1u);
  EXPECT_THAT(watcher->statuses(), IsEmpty());

  client_->Answer(Action("Pending"));
  EXPECT_THAT(watcher->statuses(), ElementsAre("Pending"));
  EXPECT_EQ(watcher->last_id(), kActionId);
  EXPECT_EQ(NextPause(), options_.initial_interval);

  // The same status again is not repeated.
  PollAgain();
  client_->Answer(Action("Pending"));
  EXPECT_THAT(watcher->statuses(), ElementsAre("Pending"));
  EXPECT_FALSE(watcher->end().has_value());

  PollAgain();
  client_->Answer(Action("InProgress"));
  EXPECT_THAT(watcher->statuses(), ElementsAre("Pending", "InProgress"));

  PollAgain();
  client_->Answer(Action("InProgress"));
  EXPECT_THAT(watcher->statuses(), ElementsAre("Pending", "InProgress"));

  PollAgain();
  client_->Answer(Action("Succeeded"));
  EXPECT_THAT(watcher->statuses(), ElementsAre("Pending", "InProgress", "Succeeded"));
  ASSERT_TRUE(watcher->end().has_value());
  EXPECT_TRUE(watcher->end()->ok()) << *watcher->end();

  // No more polls.
  EXPECT_EQ(scheduler_.Pending(), 0u);
  EXPECT_EQ(hub_->Polls(), 0u);
  const int calls = client_->Calls();
  Advance(absl::Hours(1));
  EXPECT_EQ(client_->Calls(), calls);
}

TEST_F(WatchHubTest, AFinalFirstAnswerIsSentAndEndsTheWatch) {
  auto watcher = std::make_shared<RecordingWatcher>();
  Watch(watcher);
  client_->Answer(Action("Canceled"));  // Defender's other spelling is final too
  EXPECT_THAT(watcher->statuses(), ElementsAre("Canceled"));
  ASSERT_TRUE(watcher->end().has_value());
  EXPECT_TRUE(watcher->end()->ok());
  EXPECT_EQ(scheduler_.Pending(), 0u);
  EXPECT_EQ(hub_->Polls(), 0u);

  // Watching it again starts a new poll, which reports the state again.
  auto again = std::make_shared<RecordingWatcher>();
  Watch(again);
  EXPECT_EQ(client_->Calls(), 2);
  client_->Answer(Action("Cancelled"));
  EXPECT_THAT(again->statuses(), ElementsAre("Cancelled"));
  ASSERT_TRUE(again->end().has_value());
  EXPECT_TRUE(again->end()->ok());
}

TEST_F(WatchHubTest, IntervalGrowsWhileUnchangedUpToTheMaximumAndResetsOnAChange) {
  auto watcher = std::make_shared<RecordingWatcher>();
  Watch(watcher);
  client_->Answer(Action("Pending"));
  EXPECT_EQ(NextPause(), absl::Seconds(2));
  std::vector<absl::Duration> pauses;
  for (int i = 0; i < 5; ++i) {
    PollAgain();
    client_->Answer(Action("Pending"));
    pauses.push_back(NextPause());
  }
  EXPECT_THAT(pauses, ElementsAre(absl::Seconds(4), absl::Seconds(8), absl::Seconds(10),
                                  absl::Seconds(10), absl::Seconds(10)));

  // A change brings the pause back to the start, then it grows again.
  PollAgain();
  client_->Answer(Action("InProgress"));
  EXPECT_EQ(NextPause(), absl::Seconds(2));
  PollAgain();
  client_->Answer(Action("InProgress"));
  EXPECT_EQ(NextPause(), absl::Seconds(4));

  // Nothing is polled before the pause is over.
  Advance(absl::Seconds(4) - absl::Nanoseconds(1));
  EXPECT_EQ(client_->Pending(), 0u);
  Advance(absl::Nanoseconds(1));
  EXPECT_EQ(client_->Pending(), 1u);
  EXPECT_THAT(watcher->statuses(), ElementsAre("Pending", "InProgress"));
}

TEST_F(WatchHubTest, WatchersOfOneActionShareOnePollAndALateJoinerGetsTheLastStateAtOnce) {
  auto first = std::make_shared<RecordingWatcher>();
  auto second = std::make_shared<RecordingWatcher>();
  auto late = std::make_shared<RecordingWatcher>();
  Watch(first);
  // The action id is compared case-insensitively.
  std::string upper = kActionId;
  for (char& c : upper) c = static_cast<char>(toupper(static_cast<unsigned char>(c)));
  Watch(second, upper);
  EXPECT_EQ(client_->Calls(), 1);
  EXPECT_EQ(hub_->Polls(), 1u);
  EXPECT_THAT(second->statuses(), IsEmpty());  // nothing known yet

  client_->Answer(Action("Pending"));
  EXPECT_THAT(first->statuses(), ElementsAre("Pending"));
  EXPECT_THAT(second->statuses(), ElementsAre("Pending"));

  // One GetMachineAction per round, however many watch.
  PollAgain();
  EXPECT_EQ(client_->Pending(), 1u);
  client_->Answer(Action("InProgress"));

  // A late joiner gets the last state at once, without a poll of its own.
  const int calls = client_->Calls();
  Watch(late);
  EXPECT_THAT(late->statuses(), ElementsAre("InProgress"));
  EXPECT_EQ(client_->Calls(), calls);
  EXPECT_EQ(scheduler_.Pending(), 1u);
  EXPECT_EQ(hub_->Polls(), 1u);

  PollAgain();
  client_->Answer(Action("Succeeded"));
  for (const auto& watcher : {first, second, late}) {
    EXPECT_EQ(watcher->statuses().back(), "Succeeded");
    ASSERT_TRUE(watcher->end().has_value());
    EXPECT_TRUE(watcher->end()->ok());
  }
  EXPECT_THAT(first->statuses(), ElementsAre("Pending", "InProgress", "Succeeded"));
  EXPECT_THAT(late->statuses(), ElementsAre("InProgress", "Succeeded"));
  EXPECT_EQ(client_->Calls(), 3);
  EXPECT_EQ(hub_->Polls(), 0u);
}

TEST_F(WatchHubTest, TheSameActionThroughAnotherClientIsPolledApart) {
  auto mine = std::make_shared<RecordingWatcher>();
  auto theirs = std::make_shared<RecordingWatcher>();
  Watch(mine);
  hub_->Watch(other_client_, kActionId, theirs);
  EXPECT_EQ(hub_->Polls(), 2u);
  EXPECT_EQ(client_->Calls(), 1);
  EXPECT_EQ(other_client_->Calls(), 1);
  other_client_->Answer(Action("Failed"));
  EXPECT_TRUE(theirs->end().has_value());
  EXPECT_FALSE(mine->end().has_value());
  EXPECT_EQ(hub_->Polls(), 1u);
}

TEST_F(WatchHubTest, UnwatchOfTheLastWatcherCancelsTheTimer) {
  auto first = std::make_shared<RecordingWatcher>();
  auto second = std::make_shared<RecordingWatcher>();
  const WatchHub::WatchId first_id = Watch(first);
  const WatchHub::WatchId second_id = Watch(second);
  EXPECT_NE(first_id, second_id);
  client_->Answer(Action("Pending"));
  ASSERT_EQ(scheduler_.Pending(), 1u);

  hub_->Unwatch(first_id);
  EXPECT_EQ(hub_->Polls(), 1u);  // `second` still watches
  EXPECT_EQ(scheduler_.Pending(), 1u);

  hub_->Unwatch(second_id);
  EXPECT_EQ(hub_->Polls(), 0u);
  EXPECT_EQ(scheduler_.Pending(), 0u);
  Advance(absl::Hours(1));
  EXPECT_EQ(client_->Calls(), 1);
  hub_->Unwatch(second_id);  // idempotent
  hub_->Unwatch(12345);      // unknown
  // Unwatch does not call End.
  EXPECT_FALSE(first->end().has_value());
  EXPECT_FALSE(second->end().has_value());
}

TEST_F(WatchHubTest, UnwatchOfTheLastWatcherCancelsThePollInFlight) {
  auto watcher = std::make_shared<RecordingWatcher>();
  const WatchHub::WatchId id = Watch(watcher);
  client_->Answer(Action("Pending"));
  PollAgain();
  std::shared_ptr<Cancellation> cancellation = client_->Context(1).cancellation;
  ASSERT_NE(cancellation, nullptr);
  EXPECT_FALSE(cancellation->IsCancelled());

  hub_->Unwatch(id);
  EXPECT_TRUE(cancellation->IsCancelled());
  EXPECT_EQ(scheduler_.Pending(), 0u);
  // The cancelled call comes back; the poll is gone, nothing is reported or
  // polled after it.
  client_->Answer(absl::CancelledError("cancelled"));
  EXPECT_EQ(hub_->Polls(), 0u);
  EXPECT_EQ(scheduler_.Pending(), 0u);
  Advance(absl::Hours(1));
  EXPECT_EQ(client_->Calls(), 2);
  EXPECT_THAT(watcher->statuses(), ElementsAre("Pending"));
  EXPECT_FALSE(watcher->end().has_value());
}

TEST_F(WatchHubTest, WatchingAgainWhileTheCancelledPollIsInFlightStartsAFreshPoll) {
  // A caller that gives up on a watch and watches the same action again at
  // once (a retrying client) must not join the poll being torn down.
  auto gone = std::make_shared<RecordingWatcher>();
  const WatchHub::WatchId id = Watch(gone);
  client_->Answer(Action("Pending"));
  PollAgain();
  hub_->Unwatch(id);

  auto again = std::make_shared<RecordingWatcher>();
  Watch(again);
  // The old, cancelled call comes back...
  client_->Answer(absl::CancelledError("cancelled"));
  EXPECT_FALSE(again->end().has_value());
  EXPECT_EQ(hub_->Polls(), 1u);
  // ...and the new watch is served by a poll of its own.
  ASSERT_EQ(client_->Calls(), 3);
  EXPECT_FALSE(client_->Context(2).cancellation->IsCancelled());
  client_->Answer(Action("InProgress"));
  EXPECT_THAT(again->statuses(), ElementsAre("InProgress"));
  PollAgain();
  client_->Answer(Action("Succeeded"));
  EXPECT_THAT(again->statuses(), ElementsAre("InProgress", "Succeeded"));
  ASSERT_TRUE(again->end().has_value());
  EXPECT_TRUE(again->end()->ok());
  EXPECT_THAT(gone->statuses(), ElementsAre("Pending"));
  EXPECT_FALSE(gone->end().has_value());
}

// UnwatchingWatcher unwatches itself from its first Update (a stream whose
// write failed), then optionally watches the same action again.
class UnwatchingWatcher : public RecordingWatcher {
 public:
  UnwatchingWatcher(WatchHub& hub, std::shared_ptr<api::DefenderClient> client,
                    std::shared_ptr<RecordingWatcher> next)
      : hub_(hub), client_(std::move(client)), next_(std::move(next)) {}
  void set_id(WatchHub::WatchId id) { id_ = id; }
  void Update(const v1::MachineAction& action) override {
    RecordingWatcher::Update(action);
    hub_.Unwatch(id_);
    if (next_ != nullptr) hub_.Watch(client_, kActionId, std::move(next_));
  }

 private:
  WatchHub& hub_;
  std::shared_ptr<api::DefenderClient> client_;
  std::shared_ptr<RecordingWatcher> next_;
  WatchHub::WatchId id_ = 0;
};

TEST_F(WatchHubTest, UnwatchFromInsideUpdateStopsThePoll) {
  auto watcher = std::make_shared<UnwatchingWatcher>(*hub_, client_, nullptr);
  watcher->set_id(Watch(watcher));
  client_->Answer(Action("Pending"));
  EXPECT_THAT(watcher->statuses(), ElementsAre("Pending"));
  EXPECT_EQ(hub_->Polls(), 0u);
  EXPECT_EQ(scheduler_.Pending(), 0u);
  Advance(absl::Hours(1));
  EXPECT_EQ(client_->Calls(), 1);
}

TEST_F(WatchHubTest, AWatchStartedFromInsideUpdateKeepsItsPoll) {
  // The watcher leaves (the poll ends) and, while the hub still handles the
  // answer, a new watch of the same action starts a new poll: the old poll's
  // clean-up must not drop the new one.
  auto next = std::make_shared<RecordingWatcher>();
  auto watcher = std::make_shared<UnwatchingWatcher>(*hub_, client_, next);
  watcher->set_id(Watch(watcher));
  client_->Answer(Action("Pending"));
  EXPECT_EQ(hub_->Polls(), 1u);
  ASSERT_EQ(client_->Calls(), 2);
  // A third watcher shares the new poll rather than starting another.
  auto third = std::make_shared<RecordingWatcher>();
  Watch(third);
  EXPECT_EQ(client_->Calls(), 2);
  client_->Answer(Action("InProgress"));
  EXPECT_THAT(next->statuses(), ElementsAre("InProgress"));
  EXPECT_THAT(third->statuses(), ElementsAre("InProgress"));
  EXPECT_EQ(scheduler_.Pending(), 1u);
}

TEST_F(WatchHubTest, TransientErrorsAreRetriedAndNotReported) {
  auto watcher = std::make_shared<RecordingWatcher>();
  Watch(watcher);
  client_->Answer(Action("Pending"));
  for (absl::Status error :
       {MakeError(absl::StatusCode::kUnavailable, "503", "DEFENDER_UNAVAILABLE"),
        absl::DeadlineExceededError("poll timed out"), absl::InternalError("bad answer"),
        MakeError(absl::StatusCode::kResourceExhausted, "rate budget", "RATE_LIMITED")}) {
    PollAgain();
    client_->Answer(error);
    EXPECT_THAT(watcher->statuses(), ElementsAre("Pending")) << error;
    EXPECT_FALSE(watcher->end().has_value()) << error;
    EXPECT_EQ(hub_->Polls(), 1u);
    EXPECT_GE(NextPause(), options_.initial_interval) << error;
    EXPECT_LE(NextPause(), options_.max_interval) << error;
  }
  PollAgain();
  client_->Answer(Action("InProgress"));
  EXPECT_THAT(watcher->statuses(), ElementsAre("Pending", "InProgress"));
  EXPECT_EQ(NextPause(), options_.initial_interval);
}

TEST_F(WatchHubTest, ARetryInfoDelayIsTheMinimumPause) {
  auto watcher = std::make_shared<RecordingWatcher>();
  Watch(watcher);
  absl::Status throttled =
      MakeError(absl::StatusCode::kResourceExhausted, "429", "DEFENDER_THROTTLED");
  SetRetryDelay(throttled, absl::Seconds(45));  // longer than max_interval
  client_->Answer(throttled);
  EXPECT_THAT(watcher->statuses(), IsEmpty());
  EXPECT_FALSE(watcher->end().has_value());
  EXPECT_EQ(NextPause(), absl::Seconds(45));
  Advance(absl::Seconds(45) - absl::Nanoseconds(1));
  EXPECT_EQ(client_->Calls(), 1);
  Advance(absl::Nanoseconds(1));
  EXPECT_EQ(client_->Calls(), 2);

  // A hint shorter than the hub's own pause does not shorten it.
  absl::Status unavailable =
      MakeError(absl::StatusCode::kUnavailable, "503", "DEFENDER_UNAVAILABLE");
  SetRetryDelay(unavailable, absl::Milliseconds(1));
  client_->Answer(unavailable);
  EXPECT_GE(NextPause(), options_.initial_interval);
  PollAgain();
  client_->Answer(Action("Pending"));
  EXPECT_THAT(watcher->statuses(), ElementsAre("Pending"));
}

TEST_F(WatchHubTest, NotFoundIsRetriedDuringTheGraceThenEndsTheWatch) {
  auto watcher = std::make_shared<RecordingWatcher>();
  const absl::Time start = clock_.Now();
  Watch(watcher);
  auto not_found = [] {
    return MakeError(absl::StatusCode::kNotFound, "no such action", "DEFENDER_NOT_FOUND");
  };
  client_->Answer(not_found());
  int retries = 0;
  // Every NOT_FOUND answered before the grace is over is retried.
  while (clock_.Now() + NextPause() - start < options_.not_found_grace) {
    PollAgain();
    client_->Answer(not_found());
    ASSERT_FALSE(watcher->end().has_value()) << "ended after " << clock_.Now() - start;
    ++retries;
  }
  EXPECT_GE(retries, 1);
  // The first one after it ends the watch with NOT_FOUND.
  PollAgain();
  ASSERT_GE(clock_.Now() - start, options_.not_found_grace);
  client_->Answer(not_found());
  ASSERT_TRUE(watcher->end().has_value());
  EXPECT_EQ(watcher->end()->code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(ErrorReason(*watcher->end()), "DEFENDER_NOT_FOUND");
  EXPECT_THAT(watcher->statuses(), IsEmpty());
  EXPECT_EQ(scheduler_.Pending(), 0u);
  EXPECT_EQ(hub_->Polls(), 0u);
}

TEST_F(WatchHubTest, AnActionListedLateWithinTheGraceIsWatchedNormally) {
  auto watcher = std::make_shared<RecordingWatcher>();
  Watch(watcher);
  client_->Answer(absl::NotFoundError("not yet"));
  PollAgain();
  client_->Answer(Action("Pending"));
  EXPECT_THAT(watcher->statuses(), ElementsAre("Pending"));
  EXPECT_FALSE(watcher->end().has_value());
  EXPECT_EQ(NextPause(), options_.initial_interval);
}

TEST_F(WatchHubTest, OtherErrorsEndTheWatchAtOnce) {
  for (absl::Status error :
       {MakeError(absl::StatusCode::kPermissionDenied, "403", "DEFENDER_FORBIDDEN"),
        absl::UnauthenticatedError("401"), absl::InvalidArgumentError("400")}) {
    auto first = std::make_shared<RecordingWatcher>();
    auto second = std::make_shared<RecordingWatcher>();
    Watch(first);
    Watch(second);
    client_->Answer(error);
    for (const auto& watcher : {first, second}) {
      ASSERT_TRUE(watcher->end().has_value()) << error;
      EXPECT_EQ(*watcher->end(), error);
      EXPECT_THAT(watcher->statuses(), IsEmpty());
    }
    EXPECT_EQ(scheduler_.Pending(), 0u);
    EXPECT_EQ(hub_->Polls(), 0u);
  }
  // Also after updates were sent.
  auto watcher = std::make_shared<RecordingWatcher>();
  Watch(watcher);
  client_->Answer(Action("InProgress"));
  PollAgain();
  client_->Answer(absl::PermissionDeniedError("403"));
  EXPECT_THAT(watcher->statuses(), ElementsAre("InProgress"));
  ASSERT_TRUE(watcher->end().has_value());
  EXPECT_EQ(watcher->end()->code(), absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(scheduler_.Pending(), 0u);
}

TEST_F(WatchHubTest, CloseEndsEveryWatchAndEveryLaterWatch) {
  auto waiting = std::make_shared<RecordingWatcher>();  // its poll waits on the timer
  auto in_flight = std::make_shared<RecordingWatcher>();  // its poll is in flight
  auto other = std::make_shared<RecordingWatcher>();
  Watch(waiting);
  client_->Answer(Action("Pending"));
  Watch(in_flight, "a0000000-0000-0000-0000-000000000001");
  hub_->Watch(other_client_, kActionId, other);
  ASSERT_EQ(hub_->Polls(), 3u);
  std::shared_ptr<Cancellation> cancellation = client_->Context(1).cancellation;

  const absl::Status closing = absl::UnavailableError("shutting down");
  hub_->Close(closing);
  for (const auto& watcher : {waiting, in_flight, other}) {
    ASSERT_TRUE(watcher->end().has_value());
    EXPECT_EQ(*watcher->end(), closing);
  }
  EXPECT_TRUE(cancellation->IsCancelled());
  EXPECT_EQ(scheduler_.Pending(), 0u);
  client_->Answer(absl::CancelledError("cancelled"));
  other_client_->Answer(absl::CancelledError("cancelled"));
  EXPECT_EQ(hub_->Polls(), 0u);

  auto later = std::make_shared<RecordingWatcher>();
  const int calls = client_->Calls();
  Watch(later);
  ASSERT_TRUE(later->end().has_value());
  EXPECT_EQ(*later->end(), closing);
  EXPECT_EQ(client_->Calls(), calls);
  EXPECT_EQ(hub_->Polls(), 0u);
}

TEST_F(WatchHubTest, DestroyingTheHubWaitsForThePollInFlightWithoutHanging) {
  auto watcher = std::make_shared<RecordingWatcher>();
  Watch(watcher);
  ASSERT_EQ(client_->Pending(), 1u);
  std::shared_ptr<Cancellation> cancellation = client_->Context(0).cancellation;
  // The transport answers the cancelled request on its own thread.
  absl::Notification cancelled;
  cancellation->OnCancel([&cancelled] { cancelled.Notify(); });
  std::thread transport([&] {
    cancelled.WaitForNotification();
    client_->Answer(absl::CancelledError("cancelled"));
  });
  hub_.reset();
  transport.join();
  ASSERT_TRUE(watcher->end().has_value());
  EXPECT_EQ(watcher->end()->code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(ErrorReason(*watcher->end()), "SHUTTING_DOWN");
  EXPECT_EQ(scheduler_.Pending(), 0u);
}

TEST_F(WatchHubTest, DestroyingTheHubWithOnlyATimerCancelsIt) {
  auto watcher = std::make_shared<RecordingWatcher>();
  Watch(watcher);
  client_->Answer(Action("Pending"));
  ASSERT_EQ(scheduler_.Pending(), 1u);
  hub_.reset();
  EXPECT_EQ(scheduler_.Pending(), 0u);
  ASSERT_TRUE(watcher->end().has_value());
  EXPECT_EQ(watcher->end()->code(), absl::StatusCode::kUnavailable);
}

TEST_F(WatchHubTest, AWatchRacingTheFinalAnswerIsAlwaysEnded) {
  // Whether the second watch joins the poll before the final answer ends it
  // or comes after, it hears End: it never joins a poll that has ended.
  for (int round = 0; round < 500; ++round) {
    const std::string action_id = absl::StrCat("a", round);
    auto first = std::make_shared<RecordingWatcher>();
    auto second = std::make_shared<RecordingWatcher>();
    Watch(first, action_id);
    std::thread transport([&] { client_->Answer(Action("Succeeded", action_id)); });
    Watch(second, action_id);
    transport.join();
    // A second poll, if the second watch started one, ends the same way.
    while (client_->Pending() > 0) client_->Answer(Action("Succeeded", action_id));
    ASSERT_TRUE(first->end().has_value()) << "round " << round;
    ASSERT_TRUE(second->end().has_value()) << "round " << round;
    EXPECT_TRUE(second->end()->ok());
    EXPECT_THAT(second->statuses(), ElementsAre("Succeeded"));
  }
  EXPECT_EQ(hub_->Polls(), 0u);
}

// LateCancelScheduler never runs tasks by itself; its Cancel behaves as a
// timer thread's when the task has just started: it returns false and the
// task runs anyway, when the test says.
class LateCancelScheduler final : public Scheduler {
 public:
  TaskId RunAt(absl::Time, Task task) override {
    absl::MutexLock lock(&mu_);
    tasks_.emplace(next_id_, std::move(task));
    return next_id_++;
  }
  bool Cancel(TaskId id) override {
    {
      absl::MutexLock lock(&mu_);
      auto it = tasks_.find(id);
      if (it != tasks_.end()) {
        started_ = std::move(it->second);
        tasks_.erase(it);
      }
    }
    cancel_tried_.Notify();
    return false;
  }
  size_t Queued() const {
    absl::MutexLock lock(&mu_);
    return tasks_.size();
  }
  void WaitForCancel() { cancel_tried_.WaitForNotification(); }
  // TakeStarted is the task Cancel could not stop.
  Task TakeStarted() {
    absl::MutexLock lock(&mu_);
    return std::move(started_);
  }

 private:
  mutable absl::Mutex mu_;
  std::map<TaskId, Task> tasks_ ABSL_GUARDED_BY(mu_);
  TaskId next_id_ ABSL_GUARDED_BY(mu_) = 1;
  Task started_ ABSL_GUARDED_BY(mu_);
  absl::Notification cancel_tried_;
};

TEST(WatchHubShutdownTest, DestructionWaitsForAPollTimerItCouldNotCancel) {
  FakeClock clock;
  LateCancelScheduler scheduler;
  auto client = std::make_shared<FakeDefenderClient>();
  auto hub = std::make_unique<WatchHub>(scheduler, WatchOptions{}, clock);
  auto watcher = std::make_shared<RecordingWatcher>();
  hub->Watch(client, kActionId, watcher);
  client->Answer(Action("Pending"));
  ASSERT_EQ(scheduler.Queued(), 1u);

  // The poll's timer fires on the timer thread just as the hub is destroyed.
  std::atomic<bool> destroyed{false};
  std::thread destroyer([&] {
    hub.reset();
    destroyed = true;
  });
  scheduler.WaitForCancel();
  Scheduler::Task started = scheduler.TakeStarted();
  ASSERT_TRUE(started);
  // The hub must still be there for the task: its destructor waits for it.
  const bool destroyed_early = destroyed.load();
  EXPECT_FALSE(destroyed_early) << "~WatchHub returned while its timer task was running";
  if (!destroyed_early) std::move(started)();  // (else it would use a destroyed hub)
  destroyer.join();
  EXPECT_TRUE(destroyed.load());
  EXPECT_EQ(client->Calls(), 1);  // the late timer polls nothing
  ASSERT_TRUE(watcher->end().has_value());
  EXPECT_EQ(watcher->end()->code(), absl::StatusCode::kUnavailable);
}

}  // namespace
}  // namespace defender
