#include "server/request_ledger.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "adapters/common/error.h"
#include "google/protobuf/util/json_util.h"
#include "server/log.h"

namespace defender {
namespace {

// ForWaiter is what a caller that joined another caller's run hears: the
// same answer, except that the first caller's own cancellation is not theirs.
absl::StatusOr<v1::MachineAction> ForWaiter(const absl::StatusOr<v1::MachineAction>& result) {
  if (result.ok() || result.status().code() != absl::StatusCode::kCancelled) return result;
  absl::Status error = MakeError(
      absl::StatusCode::kAborted,
      "the first call with this request_id was cancelled before it finished: call again",
      "REQUEST_ID_RUN_CANCELLED", {{"field", "request_id"}});
  if (auto info = GetErrorInfo(result.status())) {
    auto outcome = info->metadata().find("outcome");
    if (outcome != info->metadata().end()) AddErrorMetadata(error, "outcome", outcome->second);
  }
  return error;
}

}  // namespace

absl::Status RequestIdReused() {
  return MakeError(absl::StatusCode::kInvalidArgument,
                   "request_id was already used for a request with other parameters: use a new "
                   "request_id for a new request",
                   "REQUEST_ID_REUSED", {{"field", "request_id"}});
}

absl::Status JournalUnavailable(const absl::Status& cause) {
  return MakeError(absl::StatusCode::kUnavailable,
                   absl::StrCat("the request journal cannot be written (", cause.message(),
                                "); nothing was sent to Defender"),
                   "JOURNAL_UNAVAILABLE");
}

RequestLedger::RequestLedger(journal::Journal& journal, absl::Duration window, Clock& clock)
    : journal_(journal), window_(window), clock_(clock) {}

void RequestLedger::Run(journal::Entry entry, Work work, Done done) {
  entry.state = journal::EntryState::kInFlight;
  if (entry.request_key.empty()) {
    // Audit only: one entry per call, written before the work starts.
    journal_.Begin(std::move(entry), clock_.Now(),
                   [this, work = std::move(work), done = std::move(done)](
                       absl::StatusOr<journal::BeginResult> begun) mutable {
                     if (!begun.ok()) {
                       return std::move(done)(JournalUnavailable(begun.status()), false);
                     }
                     // A one-waiter run under a key of its own (the entry id).
                     const std::string key = absl::StrCat("\x1e", begun->entry.id);
                     {
                       absl::MutexLock lock(&mu_);
                       auto pending = std::make_shared<Pending>();
                       pending->waiters.push_back(std::move(done));
                       in_flight_[key] = std::move(pending);
                     }
                     Execute(std::move(begun->entry), absl::InfiniteFuture(), std::move(work));
                   });
    return;
  }
  const std::string key = entry.request_key;
  const std::string params = entry.params;
  {
    absl::ReleasableMutexLock lock(&mu_);
    auto it = in_flight_.find(key);
    if (it != in_flight_.end()) {
      if (it->second->params != params) {
        lock.Release();
        return std::move(done)(RequestIdReused(), false);
      }
      it->second->waiters.push_back(std::move(done));
      return;
    }
    auto pending = std::make_shared<Pending>();
    pending->params = params;
    pending->waiters.push_back(std::move(done));
    in_flight_[key] = std::move(pending);
  }
  journal_.Begin(std::move(entry), clock_.Now() - window_,
                 [this, key, params, work = std::move(work)](
                     absl::StatusOr<journal::BeginResult> begun) mutable {
                   OnBegin(std::move(begun), key, params, std::move(work));
                 });
}

void RequestLedger::OnBegin(absl::StatusOr<journal::BeginResult> begun, const std::string& key,
                            const std::string& params, Work work) {
  if (!begun.ok()) return Settle(key, JournalUnavailable(begun.status()), false);
  journal::Entry entry = std::move(begun->entry);
  if (begun->created) return Claimed(std::move(entry), absl::InfiniteFuture(), std::move(work));
  if (entry.params != params) return Settle(key, RequestIdReused(), false);

  switch (entry.state) {
    case journal::EntryState::kSucceeded: {
      v1::MachineAction action;
      const bool readable = !entry.action_proto.empty()
                                ? action.ParseFromString(entry.action_proto)
                                : google::protobuf::util::JsonStringToMessage(entry.action_json,
                                                                              &action)
                                      .ok();
      if (!readable) {
        return Settle(key,
                      MakeError(absl::StatusCode::kInternal,
                                absl::StrCat("the journal's record of request entry ", entry.id,
                                             " is unreadable"),
                                "JOURNAL_CORRUPT", {{"action_id", entry.action_id}}),
                      false);
      }
      ++entry.replays;
      journal_.Update(std::move(entry), [this, key, action = std::move(action)](
                                            absl::Status) mutable {
        // The replay count is bookkeeping: the answer stands without it.
        Settle(key, std::move(action), true);
      });
      return;
    }
    case journal::EntryState::kInFlight:
    case journal::EntryState::kFailed: {
      // In flight here means a process stopped mid-call: it may have sent
      // since that run started (updated), or since the entry was created when
      // that run was itself a re-run of one that may have sent
      // (outcome_unknown, kept below).
      const absl::Time maybe_sent_since =
          entry.outcome_unknown                          ? entry.created
          : entry.state == journal::EntryState::kInFlight ? entry.updated
                                                          : absl::InfiniteFuture();
      entry.state = journal::EntryState::kInFlight;
      // While this re-run is in flight, outcome_unknown says an earlier run
      // may have sent: should this process stop too, the next re-run looks
      // back as far as this one does, not only to this run's start.
      entry.outcome_unknown = maybe_sent_since != absl::InfiniteFuture();
      ++entry.attempts;
      journal::Entry rerun = entry;
      journal_.Update(std::move(entry), [this, key, rerun = std::move(rerun), maybe_sent_since,
                                         work = std::move(work)](absl::Status written) mutable {
        if (!written.ok()) return Settle(key, JournalUnavailable(written), false);
        Claimed(std::move(rerun), maybe_sent_since, std::move(work));
      });
      return;
    }
  }
}

void RequestLedger::Claimed(journal::Entry entry, absl::Time maybe_sent_since, Work work) {
  if (claims_ == nullptr || entry.request_key.empty()) {
    return Execute(std::move(entry), maybe_sent_since, std::move(work));
  }
  const std::string key = entry.request_key;
  const std::string params = entry.params;
  claims_->Claim(key, params, [this, entry = std::move(entry), maybe_sent_since,
                               work = std::move(work)](RequestClaim claim) mutable {
    switch (claim.kind) {
      case RequestClaim::Kind::kRun:
        return Execute(std::move(entry), std::min(maybe_sent_since, claim.maybe_sent_since),
                       std::move(work), /*claimed=*/true);
      case RequestClaim::Kind::kDone:
        ++entry.replays;
        return Answered(std::move(entry), std::move(claim.action), true);
      case RequestClaim::Kind::kReused:
        return Answered(std::move(entry), RequestIdReused(), false);
      case RequestClaim::Kind::kUnavailable:
        break;
    }
    if (claim.waited) {
      // Another replica has this request in hand and may be sending it now:
      // running it here too could act twice. The caller retries.
      absl::Status error = MakeError(
          absl::StatusCode::kUnavailable,
          absl::StrCat("another replica is running this request_id and the shared state "
                       "became unreachable (",
                       claim.error.message(), "): call again with the same request_id"),
          "REDIS_UNAVAILABLE", {{"field", "request_id"}, {"outcome", "unknown"}});
      return Answered(std::move(entry), std::move(error), false);
    }
    // Redis unreachable before any replica was seen running it: run here, but
    // look first for an action another replica may have created meanwhile.
    Log(LogLevel::kWarn,
        "shared state unreachable: a request_id runs on this replica alone, looking first for "
        "an action another replica may have created",
        {{"error", std::string(claim.error.message())}});
    Execute(std::move(entry), std::min(maybe_sent_since, clock_.Now() - kSharedLookback),
            std::move(work));
  });
}

namespace {

// Record writes `result` into `entry`.
void Record(journal::Entry& entry, const absl::StatusOr<v1::MachineAction>& result) {
  if (result.ok()) {
    entry.state = journal::EntryState::kSucceeded;
    entry.outcome_unknown = false;
    entry.action_id = result->id();
    entry.action_json.clear();
    entry.action_proto = result->SerializeAsString();
    entry.status_code = 0;
    entry.error_reason.clear();
    entry.error_message.clear();
  } else {
    entry.state = journal::EntryState::kFailed;
    entry.outcome_unknown = OutcomeUnknown(result.status());
    entry.status_code = static_cast<int>(result.status().code());
    entry.error_reason = ErrorReason(result.status());
    entry.error_message = std::string(result.status().message());
  }
}

}  // namespace

void RequestLedger::Answered(journal::Entry entry, absl::StatusOr<v1::MachineAction> result,
                             bool replayed) {
  const std::string key = entry.request_key;
  Record(entry, result);
  journal_.Update(std::move(entry), [this, key, result = std::move(result),
                                     replayed](absl::Status) mutable {
    // The local record is bookkeeping here: the answer stands without it.
    Settle(key, std::move(result), replayed);
  });
}

void RequestLedger::Execute(journal::Entry entry, absl::Time maybe_sent_since, Work work,
                            bool claimed) {
  const std::string key =
      entry.request_key.empty() ? absl::StrCat("\x1e", entry.id) : entry.request_key;
  std::move(work)(maybe_sent_since, [this, key, claimed, entry = std::move(entry)](
                                        WorkResult result) mutable {
    if (!result.machine_id.empty()) entry.machine_id = result.machine_id;
    if (!result.sha1.empty()) entry.file_sha1 = result.sha1;
    Record(entry, result.action);
    // Other replicas hear the outcome now (they may be waiting for it), or,
    // for a run made without a claim, once the shared state is back.
    if (claimed) {
      claims_->Finish(key, result.action);
    } else if (claims_ != nullptr && !entry.request_key.empty()) {
      claims_->Unclaimed(key, entry.params, result.action);
    }
    const int64_t id = entry.id;
    journal_.Update(std::move(entry), [this, key, id, action = std::move(result.action)](
                                          absl::Status written) mutable {
      if (!written.ok()) {
        // The action exists (or failed) at Defender whatever the journal
        // says: the caller still hears the truth, the operator hears of the
        // journal.
        Log(LogLevel::kError, "the journal could not record an action's outcome",
            {{"journal_entry", int64_t{id}}, {"error", std::string(written.message())}});
      }
      Settle(key, std::move(action), false);
    });
  });
}

void RequestLedger::Settle(const std::string& key, absl::StatusOr<v1::MachineAction> result,
                           bool replayed) {
  std::shared_ptr<Pending> pending;
  {
    absl::MutexLock lock(&mu_);
    auto it = in_flight_.find(key);
    if (it == in_flight_.end()) return;
    pending = std::move(it->second);
    in_flight_.erase(it);
  }
  for (size_t i = 0; i < pending->waiters.size(); ++i) {
    if (i == 0) {
      std::move(pending->waiters[i])(result, replayed);
    } else {
      std::move(pending->waiters[i])(ForWaiter(result), true);
    }
  }
}

}  // namespace defender
