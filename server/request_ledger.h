// request_ledger.h: exactly-once response actions over the journal.
//
// Every action the plugin requests goes through RequestLedger::Run, which
// writes a journal entry before the work starts and the outcome before the
// answer goes out (the audit trail). An entry with a request key runs at
// most once:
//  - a repeat while the first is in flight in this process waits for it and
//    gets the same answer;
//  - a repeat after it succeeded (within the window, also after a restart)
//    gets the recorded action, and nothing is sent;
//  - a repeat of an entry left in flight by a stopped process, or that failed
//    with its outcome unknown, runs again with `maybe_sent_since` set, so the
//    work looks for the earlier action before creating one;
//  - a repeat of an entry that failed with nothing created runs again;
//  - the same key with other parameters is INVALID_ARGUMENT
//    (REQUEST_ID_REUSED), and nothing runs.
// When the journal cannot be written the call fails with UNAVAILABLE
// (JOURNAL_UNAVAILABLE) before anything is sent.
//
// With ShareWith (replicas on one Redis, server/shared_requests.h), a keyed
// request this journal does not already know as succeeded is claimed there
// before it runs: a request another replica ran is answered with its action
// (and recorded here as a replay), one another replica is running now is
// waited for, and a replica's lapsed or unknown run is taken over with its
// start as maybe_sent_since. Redis unreachable at the claim: the request runs
// here with maybe_sent_since = now - kSharedLookback, so the work looks for an
// action another replica may have created before it creates one.
#ifndef DEFENDER_SERVER_REQUEST_LEDGER_H_
#define DEFENDER_SERVER_REQUEST_LEDGER_H_

#include <memory>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/functional/any_invocable.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "adapters/common/clock.h"
#include "adapters/journal/journal.h"
#include "defender/v1/response_service.pb.h"
#include "server/request_claims.h"

namespace defender {

// WorkResult is what one run of an action's work produced.
struct WorkResult {
  absl::StatusOr<v1::MachineAction> action;
  std::string machine_id;  // the device, once resolved ("" if it was not)
  std::string sha1;        // the file, once resolved ("" if it was not)
};

// RequestLedger runs actions at most once per request key. Thread-safe; the
// journal and clock must outlive it and every run in flight.
class RequestLedger {
 public:
  // Work does the action and calls `done` once. `maybe_sent_since` is
  // InfiniteFuture, or the time since which an earlier run may have reached
  // Defender (see api::StopAndQuarantineFileParams::maybe_sent_since).
  using WorkDone = absl::AnyInvocable<void(WorkResult) &&>;
  using Work = absl::AnyInvocable<void(absl::Time maybe_sent_since, WorkDone done) &&>;
  // Done gets the answer; `replayed` says it came from the journal or from
  // another caller's run rather than from this call's own work.
  using Done = absl::AnyInvocable<void(absl::StatusOr<v1::MachineAction>, bool replayed) &&>;

  RequestLedger(journal::Journal& journal, absl::Duration window, Clock& clock = Clock::Real());

  // ShareWith makes keyed requests exactly-once across the replicas behind
  // `claims` (null: this process only). Call before the first Run; `claims`
  // must outlive the ledger.
  void ShareWith(RequestClaims* claims) { claims_ = claims; }
  static constexpr absl::Duration kSharedLookback = absl::Hours(1);

  // Run records `entry` (request_key, params, method, caller, tenant and what
  // is known of machine, file and comment) and runs `work` unless the key
  // says it already ran; `done` is called once, on any thread.
  void Run(journal::Entry entry, Work work, Done done);

  journal::Journal& journal() { return journal_; }
  // WindowStart is the creation time before which a request key is forgotten.
  absl::Time WindowStart() const { return clock_.Now() - window_; }

 private:
  struct Pending {
    std::string params;
    std::vector<Done> waiters;  // the first is the caller that started the run
  };

  void OnBegin(absl::StatusOr<journal::BeginResult> begun, const std::string& key,
               const std::string& params, Work work);
  // Claimed runs `work` for a keyed entry once the shared claim allows it
  // (directly without ShareWith).
  void Claimed(journal::Entry entry, absl::Time maybe_sent_since, Work work);
  // Answered records an answer that came from elsewhere (another replica's
  // action, or an error) in `entry`, then settles the key.
  void Answered(journal::Entry entry, absl::StatusOr<v1::MachineAction> result, bool replayed);
  void Execute(journal::Entry entry, absl::Time maybe_sent_since, Work work,
               bool claimed = false);
  void Settle(const std::string& key, absl::StatusOr<v1::MachineAction> result, bool replayed);

  journal::Journal& journal_;
  const absl::Duration window_;
  Clock& clock_;
  RequestClaims* claims_ = nullptr;
  absl::Mutex mu_;
  absl::flat_hash_map<std::string, std::shared_ptr<Pending>> in_flight_ ABSL_GUARDED_BY(mu_);
};

// RequestIdReused is the error of a request_id repeated with other parameters.
absl::Status RequestIdReused();

// JournalUnavailable is the error of a call whose journal write failed.
absl::Status JournalUnavailable(const absl::Status& cause);

}  // namespace defender

#endif  // DEFENDER_SERVER_REQUEST_LEDGER_H_
