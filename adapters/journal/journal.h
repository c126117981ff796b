// journal.h: the durable record of every response action the plugin requests.
//
// The journal serves two purposes with one table:
//  - exactly once: an entry with a `request_key` is found again by a repeat
//    of the same request (also after a restart), so the plugin answers with
//    the recorded action instead of asking Defender again;
//  - audit: every action requested, by which caller, for which tenant, with
//    what outcome (`defenderctl audit` reads it).
//
// Writes are asynchronous: `done` runs once the entry is durable (committed),
// on the journal's own thread, and must not block. Reads (List) are
// synchronous and may run on any thread.
//
//   journal->Begin(entry, clock.Now() - window, [](absl::StatusOr<BeginResult> r) {
//     if (r.ok() && !r->created) { /* a repeat: r->entry is the earlier one */ }
//   });
//   ... later ...
//   entry.state = EntryState::kSucceeded; entry.action_id = "...";
//   journal->Update(entry, [](absl::Status durable) { /* now answer */ });
#ifndef DEFENDER_ADAPTERS_JOURNAL_JOURNAL_H_
#define DEFENDER_ADAPTERS_JOURNAL_JOURNAL_H_

#include <atomic>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/functional/any_invocable.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace defender::journal {

// EntryState is where a requested action is.
enum class EntryState {
  kInFlight = 1,   // the request may be on its way to Defender
  kSucceeded = 2,  // Defender answered with an action (action_id is set)
  kFailed = 3,     // the call failed (status_code, error_reason say how)
};

// Entry is one requested response action.
struct Entry {
  int64_t id = 0;            // assigned by Begin; > 0 afterwards
  std::string request_key;   // "" = not deduplicated; else unique in the journal
  std::string params;        // the request's canonical parameters (compared on repeats)
  std::string method;        // "QuarantineFile", "BatchQuarantineFile", "CancelMachineAction"
  std::string caller;        // who asked (peer address or authenticated identity)
  std::string tenant;        // the configured tenant's name
  std::string machine_id;    // the device (resolved; "" when resolution failed)
  std::string file_sha1;     // the file (resolved; "" when not applicable)
  std::string comment;
  EntryState state = EntryState::kInFlight;
  // For kFailed: Defender may have created the action all the same. For
  // kInFlight: an earlier run of this entry may have (the re-run looks back
  // to `created`, not only to `updated`).
  bool outcome_unknown = false;
  std::string action_id;     // for kSucceeded
  // The action as last answered, serialized by the caller (opaque to the
  // journal). Entries written by schema-1 builds have it as JSON in
  // action_json instead (read only; new entries leave it empty).
  std::string action_proto;
  std::string action_json;
  int status_code = 0;       // the google.rpc.Code of the answer (0 = OK)
  std::string error_reason;  // the ErrorInfo reason of a failure
  std::string error_message;
  int attempts = 1;          // calls that ran for this entry (repeats that re-ran it)
  int replays = 0;           // repeats answered from the journal without a call
  absl::Time created = absl::UnixEpoch();  // set by Begin
  absl::Time updated = absl::UnixEpoch();  // set by Begin and Update
};

// BeginResult says whether Begin wrote a new entry or found an earlier one.
struct BeginResult {
  bool created = false;  // true: `entry` is the new one (with its id)
  Entry entry;           // false: the entry that already holds the request_key
};

// ListOptions filters List; empty / zero fields do not filter.
struct ListOptions {
  absl::Time since = absl::InfinitePast();   // created at or after
  absl::Time until = absl::InfiniteFuture(); // created before
  std::string tenant;
  std::string request_key;
  std::string machine_id;
  std::string action_id;
  int limit = 0;  // 0 = all; else the newest `limit` entries
};

// Journal stores entries durably. Thread-safe.
class Journal {
 public:
  using BeginCallback = absl::AnyInvocable<void(absl::StatusOr<BeginResult>) &&>;
  using DoneCallback = absl::AnyInvocable<void(absl::Status) &&>;

  virtual ~Journal() = default;

  // Begin records `entry` (its id, created and updated are assigned). When
  // entry.request_key is not empty and an entry with that key was created at
  // or after `window_start`, nothing is written and that entry comes back
  // with created = false; an older entry with the key is replaced. Entries
  // without a request_key are always written; for them `done` may run once
  // the entry is written but before it is durable (it becomes durable before
  // the callback of any later Begin or Update runs).
  virtual void Begin(Entry entry, absl::Time window_start, BeginCallback done) = 0;

  // Update overwrites the entry with id `entry.id` (everything but id,
  // request_key and created; `updated` is set to now). NOT_FOUND when no
  // entry has that id.
  virtual void Update(Entry entry, DoneCallback done) = 0;

  // List returns the entries that match `options`, oldest first.
  virtual absl::StatusOr<std::vector<Entry>> List(const ListOptions& options) const = 0;
};

// NoJournal keeps nothing: Begin always creates (ids count up from 1), Update
// succeeds, List is empty. Callbacks run inside Begin and Update. For tests
// and for running without a state directory.
class NoJournal final : public Journal {
 public:
  void Begin(Entry entry, absl::Time window_start, BeginCallback done) override;
  void Update(Entry entry, DoneCallback done) override;
  absl::StatusOr<std::vector<Entry>> List(const ListOptions& options) const override;

 private:
  std::atomic<int64_t> next_id_{1};
};

}  // namespace defender::journal

#endif  // DEFENDER_ADAPTERS_JOURNAL_JOURNAL_H_
