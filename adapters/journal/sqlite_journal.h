// sqlite_journal.h: the Journal in an SQLite file, `<state_dir>/journal.sqlite3`.
//
// Durable: WAL mode; with `sync` kFull (the default) each commit is fsync'd,
// so a write's callback runs only after its transaction is on disk; with
// kNormal commits survive a crash of the process but the last ones may be
// lost to a crash of the machine (SQLite's synchronous=NORMAL: the WAL is
// fsync'd at checkpoints only). Exception: a Begin of an entry without a
// request key calls back as soon as the row is written, before its
// transaction commits; it is committed before the callback of any later
// write runs (so the Update that follows it is durable with it; should that
// commit fail, the Update finds no entry: NOT_FOUND).
//
// Several processes may share the directory: the write lock is taken up
// front (BEGIN IMMEDIATE, waiting up to `busy_timeout`) and the request key
// is a UNIQUE column, so one request key is held by one entry however many
// writers race.
//
// Begin and Update never block the caller. They are queued for one writer
// thread, which commits everything queued in one transaction (group commit:
// one fsync for many writes), then runs the callbacks in the order the calls
// were made, on that thread. A callback may call Begin or Update again. List
// runs on the caller's thread on its own read connection.
//
// When a write fails, its callback gets the error. When the transaction as a
// whole fails (the write lock could not be had, the disk failed), every write
// in it gets the error and none is recorded. Errors name the file and
// SQLite's message, never an entry's content: UNAVAILABLE when another
// process held the lock too long, FAILED_PRECONDITION when the directory or
// file cannot be used (read-only, not a journal, a newer schema),
// RESOURCE_EXHAUSTED when the disk is full, DATA_LOSS when the file is
// corrupt, INTERNAL otherwise.
//
// Entries created before now - retention are deleted at Open and then at
// most once an hour by the writer thread. Keep the retention longer than any
// window passed to Begin.
//
//   auto journal = SqliteJournal::Open("/var/lib/defender-plugin");
//   if (!journal.ok()) return journal.status();
//   (*journal)->Begin(entry, clock.Now() - absl::Hours(24), [](auto result) {...});
//
// Schema (PRAGMA user_version 1): one table, `entries`, one row per Entry,
// times in integer microseconds since the epoch (created_us, updated_us);
// `request_key` is the key as given ('' when none) and `active_key` is the
// key while the entry holds it (UNIQUE; NULL when there is no key or a newer
// entry took it over), so a replaced entry stays in the audit trail (and
// List's request_key filter finds it too).
#ifndef DEFENDER_ADAPTERS_JOURNAL_SQLITE_JOURNAL_H_
#define DEFENDER_ADAPTERS_JOURNAL_SQLITE_JOURNAL_H_

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "adapters/common/clock.h"
#include "adapters/journal/journal.h"

namespace defender::journal {

struct SqliteJournalOptions {
  // Entries created before now - retention are deleted; InfiniteDuration()
  // keeps everything. Must be positive.
  absl::Duration retention = absl::Hours(24 * 90);
  // How long a transaction waits for another process's write lock before
  // failing with UNAVAILABLE (on the writer thread, never a caller's).
  absl::Duration busy_timeout = absl::Seconds(5);
  // How commits reach the disk (see above).
  enum class Sync { kFull, kNormal };
  Sync sync = Sync::kFull;
  // The time for created, updated and retention. Null = Clock::Real(). Must
  // outlive the journal.
  Clock* clock = nullptr;
};

// SqliteJournal is a Journal in one SQLite file. Thread-safe.
class SqliteJournal final : public Journal {
 public:
  // Open opens or creates `<state_dir>/journal.sqlite3` for reading and
  // writing. Creates `state_dir` (mode 0700, not its parents) and the file
  // (mode 0600) when they are missing, and deletes entries past retention.
  static absl::StatusOr<std::unique_ptr<SqliteJournal>> Open(const std::string& state_dir,
                                                             SqliteJournalOptions options = {});

  // OpenReadOnly opens an existing journal for List only (the CLI's audit);
  // Begin and Update fail with FAILED_PRECONDITION. NOT_FOUND when there is
  // no journal in `state_dir`. May run while another process writes.
  static absl::StatusOr<std::unique_ptr<SqliteJournal>> OpenReadOnly(const std::string& state_dir);

  // Finishes the writes already queued (and those their callbacks queue),
  // runs their callbacks, then stops the writer thread. Must not run on the
  // writer thread (from a callback).
  ~SqliteJournal() override;

  SqliteJournal(const SqliteJournal&) = delete;
  SqliteJournal& operator=(const SqliteJournal&) = delete;

  void Begin(Entry entry, absl::Time window_start, BeginCallback done) override;
  void Update(Entry entry, DoneCallback done) override;
  // INVALID_ARGUMENT for a negative limit.
  absl::StatusOr<std::vector<Entry>> List(const ListOptions& options) const override;

  // The database file.
  const std::string& path() const { return path_; }

  // Commits counts the write transactions committed by this instance (group
  // commit puts many writes in one), for tests and metrics.
  int64_t Commits() const { return commits_.load(std::memory_order_relaxed); }

 private:
  class Connection;
  struct Op {
    bool is_begin = true;
    Entry entry;
    absl::Time window_start;
    BeginCallback begin_done;
    DoneCallback update_done;
    // Set by the writer thread.
    absl::StatusOr<BeginResult> begin_result;
    absl::Status update_result;
    bool called_back = false;  // begin_done ran early (an entry without a key)
  };

  SqliteJournal(std::string path, SqliteJournalOptions options,
                std::unique_ptr<Connection> writer, std::unique_ptr<Connection> reader);

  void WriterLoop();
  // Commit runs `batch` in one transaction and sets each op's result.
  void Commit(std::vector<Op>& batch, absl::Time now);
  absl::StatusOr<BeginResult> DoBegin(Entry entry, absl::Time window_start, absl::Time now);
  absl::Status DoUpdate(const Entry& entry, absl::Time now);
  void Prune(absl::Time now);
  void Enqueue(Op op);

  const std::string path_;
  const SqliteJournalOptions options_;
  Clock& clock_;
  // Used by the writer thread only (and Open, before it starts); null when
  // read-only.
  const std::unique_ptr<Connection> writer_;
  absl::Time next_prune_;  // the writer thread's
  std::atomic<int64_t> commits_{0};

  mutable absl::Mutex reader_mu_;
  const std::unique_ptr<Connection> reader_ ABSL_PT_GUARDED_BY(reader_mu_);

  absl::Mutex mu_;
  absl::CondVar wake_;
  std::vector<Op> queue_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::thread thread_;  // not joinable when read-only
};

}  // namespace defender::journal

#endif  // DEFENDER_ADAPTERS_JOURNAL_SQLITE_JOURNAL_H_
