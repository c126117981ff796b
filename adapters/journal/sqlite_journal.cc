#include "adapters/journal/sqlite_journal.h"

#include <fcntl.h>
#include <sqlite3.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <map>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"

namespace defender::journal {
namespace {

constexpr char kFileName[] = "journal.sqlite3";
constexpr absl::Duration kPruneInterval = absl::Hours(1);

// The schema this build writes. A file with a higher user_version was written
// by a newer build and is refused; version 0 is a new, empty file.
constexpr int kSchemaVersion = 2;
constexpr char kCreateSchema[] =
    "CREATE TABLE entries ("
    " id INTEGER PRIMARY KEY AUTOINCREMENT,"
    " request_key TEXT NOT NULL,"
    " active_key TEXT,"  // request_key while this entry holds it, else NULL
    " params TEXT NOT NULL,"
    " method TEXT NOT NULL,"
    " caller TEXT NOT NULL,"
    " tenant TEXT NOT NULL,"
    " machine_id TEXT NOT NULL,"
    " file_sha1 TEXT NOT NULL,"
    " comment TEXT NOT NULL,"
    " state INTEGER NOT NULL,"
    " outcome_unknown INTEGER NOT NULL,"
    " action_id TEXT NOT NULL,"
    " action_json TEXT NOT NULL,"
    " status_code INTEGER NOT NULL,"
    " error_reason TEXT NOT NULL,"
    " error_message TEXT NOT NULL,"
    " attempts INTEGER NOT NULL,"
    " replays INTEGER NOT NULL,"
    " created_us INTEGER NOT NULL,"
    " updated_us INTEGER NOT NULL,"
    " action_proto BLOB NOT NULL DEFAULT x'');"
    "CREATE UNIQUE INDEX entries_active_key ON entries (active_key);"
    "CREATE INDEX entries_created ON entries (created_us);"
    "PRAGMA user_version = 2;";
// Version 1 kept the action only as JSON (action_json, still read for its
// rows); version 2 adds the serialized action, much cheaper to write.
constexpr char kMigrateFrom1[] =
    "ALTER TABLE entries ADD COLUMN action_proto BLOB NOT NULL DEFAULT x'';"
    "PRAGMA user_version = 2;";

// The columns ReadEntry reads, in its order.
#define JOURNAL_COLUMNS                                                                      \
  "id, request_key, params, method, caller, tenant, machine_id, file_sha1, comment, state, " \
  "outcome_unknown, action_id, action_json, status_code, error_reason, error_message, "     \
  "attempts, replays, created_us, updated_us, action_proto"

constexpr char kSelectActive[] = "SELECT " JOURNAL_COLUMNS " FROM entries WHERE active_key = ?1";
constexpr char kReleaseKey[] = "UPDATE entries SET active_key = NULL WHERE id = ?1";
// ?3..?18 are BindFields's.
constexpr char kInsert[] =
    "INSERT INTO entries (request_key, active_key, params, method, caller, tenant, machine_id,"
    " file_sha1, comment, state, outcome_unknown, action_id, action_json, status_code,"
    " error_reason, error_message, attempts, replays, created_us, updated_us, action_proto)"
    " VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18,"
    " ?19, ?20, ?21)";
// ?2..?17 are BindFields's.
constexpr char kUpdate[] =
    "UPDATE entries SET params = ?2, method = ?3, caller = ?4, tenant = ?5, machine_id = ?6,"
    " file_sha1 = ?7, comment = ?8, state = ?9, outcome_unknown = ?10, action_id = ?11,"
    " action_json = ?12, status_code = ?13, error_reason = ?14, error_message = ?15,"
    " attempts = ?16, replays = ?17, updated_us = ?18, action_proto = ?19 WHERE id = ?1";
constexpr char kPrune[] = "DELETE FROM entries WHERE created_us < ?1";
// The newest ?7 matches (all when -1), newest first.
constexpr char kList[] =
    "SELECT " JOURNAL_COLUMNS
    " FROM entries WHERE created_us >= ?1 AND created_us < ?2"
    " AND (?3 = '' OR tenant = ?3) AND (?4 = '' OR request_key = ?4)"
    " AND (?5 = '' OR machine_id = ?5) AND (?6 = '' OR action_id = ?6)"
    " ORDER BY created_us DESC, id DESC LIMIT ?7";
#undef JOURNAL_COLUMNS
constexpr char kUserVersion[] = "PRAGMA user_version";

absl::StatusCode CodeFor(int rc) {
  switch (rc & 0xff) {
    case SQLITE_BUSY:
    case SQLITE_LOCKED:
      return absl::StatusCode::kUnavailable;
    case SQLITE_READONLY:
    case SQLITE_CANTOPEN:
    case SQLITE_PERM:
    case SQLITE_AUTH:
    case SQLITE_NOTADB:
    case SQLITE_NOLFS:
      return absl::StatusCode::kFailedPrecondition;
    case SQLITE_FULL:
      return absl::StatusCode::kResourceExhausted;
    case SQLITE_CORRUPT:
      return absl::StatusCode::kDataLoss;
    default:
      return absl::StatusCode::kInternal;
  }
}

absl::Status PathError(absl::string_view what, const std::string& path, int err) {
  return absl::FailedPreconditionError(
      absl::StrCat("journal: ", what, " ", path, ": ", std::strerror(err)));
}

// Statement binds and steps a prepared statement, and resets it when it goes
// out of scope (so no statement keeps a read or write transaction open).
class Statement {
 public:
  explicit Statement(sqlite3_stmt* stmt) : stmt_(stmt) {}
  ~Statement() {
    sqlite3_reset(stmt_);
    sqlite3_clear_bindings(stmt_);
  }
  Statement(const Statement&) = delete;
  Statement& operator=(const Statement&) = delete;

  void Text(int i, const std::string& value) {
    Check(sqlite3_bind_text64(stmt_, i, value.data(), value.size(), SQLITE_TRANSIENT,
                              SQLITE_UTF8));
  }
  void Blob(int i, const std::string& value) {
    Check(sqlite3_bind_blob64(stmt_, i, value.data(), value.size(), SQLITE_TRANSIENT));
  }
  void Int(int i, int64_t value) { Check(sqlite3_bind_int64(stmt_, i, value)); }
  void Null(int i) { Check(sqlite3_bind_null(stmt_, i)); }
  // Step returns SQLITE_ROW, SQLITE_DONE or an error (also a failed bind's).
  int Step() { return bind_rc_ != SQLITE_OK ? bind_rc_ : sqlite3_step(stmt_); }
  sqlite3_stmt* get() const { return stmt_; }

 private:
  void Check(int rc) {
    if (bind_rc_ == SQLITE_OK) bind_rc_ = rc;
  }
  sqlite3_stmt* const stmt_;
  int bind_rc_ = SQLITE_OK;
};

std::string ColumnString(sqlite3_stmt* stmt, int i) {
  // column_blob gives a TEXT value's bytes as stored, without conversion.
  const void* data = sqlite3_column_blob(stmt, i);
  int size = sqlite3_column_bytes(stmt, i);
  return data == nullptr ? std::string() : std::string(static_cast<const char*>(data), size);
}

Entry ReadEntry(sqlite3_stmt* stmt) {
  Entry e;
  e.id = sqlite3_column_int64(stmt, 0);
  e.request_key = ColumnString(stmt, 1);
  e.params = ColumnString(stmt, 2);
  e.method = ColumnString(stmt, 3);
  e.caller = ColumnString(stmt, 4);
  e.tenant = ColumnString(stmt, 5);
  e.machine_id = ColumnString(stmt, 6);
  e.file_sha1 = ColumnString(stmt, 7);
  e.comment = ColumnString(stmt, 8);
  e.state = static_cast<EntryState>(sqlite3_column_int(stmt, 9));
  e.outcome_unknown = sqlite3_column_int(stmt, 10) != 0;
  e.action_id = ColumnString(stmt, 11);
  e.action_json = ColumnString(stmt, 12);
  e.status_code = sqlite3_column_int(stmt, 13);
  e.error_reason = ColumnString(stmt, 14);
  e.error_message = ColumnString(stmt, 15);
  e.attempts = sqlite3_column_int(stmt, 16);
  e.replays = sqlite3_column_int(stmt, 17);
  e.created = absl::FromUnixMicros(sqlite3_column_int64(stmt, 18));
  e.updated = absl::FromUnixMicros(sqlite3_column_int64(stmt, 19));
  e.action_proto = ColumnString(stmt, 20);
  return e;
}

// BindFields binds what Update overwrites (params .. replays) to ?first ..
// ?first+15.
void BindFields(Statement& s, int first, const Entry& e) {
  int i = first;
  s.Text(i++, e.params);
  s.Text(i++, e.method);
  s.Text(i++, e.caller);
  s.Text(i++, e.tenant);
  s.Text(i++, e.machine_id);
  s.Text(i++, e.file_sha1);
  s.Text(i++, e.comment);
  s.Int(i++, static_cast<int>(e.state));
  s.Int(i++, e.outcome_unknown ? 1 : 0);
  s.Text(i++, e.action_id);
  s.Text(i++, e.action_json);
  s.Int(i++, e.status_code);
  s.Text(i++, e.error_reason);
  s.Text(i++, e.error_message);
  s.Int(i++, e.attempts);
  s.Int(i++, e.replays);
}

// CeilMicros is `t` in microseconds, rounded up, so that "created_us >=
// CeilMicros(t)" is "created >= t".
int64_t CeilMicros(absl::Time t) {
  int64_t us = absl::ToUnixMicros(t);  // rounds down; saturates for the infinities
  return absl::FromUnixMicros(us) < t && us != INT64_MAX ? us + 1 : us;
}

// Now is the clock's time at the stored precision (microseconds), so that
// what Begin returns equals what List reads back.
absl::Time Now(const Clock& clock) {
  return absl::FromUnixMicros(absl::ToUnixMicros(clock.Now()));
}

}  // namespace

// Connection is one sqlite3 handle, its prepared statements, and the path its
// errors name. Not thread-safe: its owner serializes use.
class SqliteJournal::Connection {
 public:
  static absl::StatusOr<std::unique_ptr<Connection>> Open(const std::string& path, bool read_only,
                                                          absl::Duration busy_timeout) {
    sqlite3* db = nullptr;
    int rc = sqlite3_open_v2(path.c_str(), &db,
                             read_only ? SQLITE_OPEN_READONLY : SQLITE_OPEN_READWRITE, nullptr);
    auto connection = std::unique_ptr<Connection>(new Connection(path, db));
    if (rc != SQLITE_OK) return connection->Error(rc, "cannot open");
    sqlite3_extended_result_codes(db, 1);
    // Fails only for a negative timeout, which Open refuses.
    sqlite3_busy_timeout(db, static_cast<int>(absl::ToInt64Milliseconds(busy_timeout)));
    if (!read_only && sqlite3_db_readonly(db, "main") == 1) {
      return absl::FailedPreconditionError(
          absl::StrCat("journal ", path, ": the file is read-only for this process"));
    }
    return connection;
  }

  ~Connection() {
    for (auto& [sql, stmt] : statements_) sqlite3_finalize(stmt);
    sqlite3_close_v2(db_);
  }

  sqlite3* db() const { return db_; }

  // Error is the status for SQLite result `rc` of the last call on this
  // connection, e.g. "journal /x/journal.sqlite3: cannot commit: disk I/O error".
  absl::Status Error(int rc, absl::string_view what) const {
    const char* message = db_ != nullptr && sqlite3_errcode(db_) != SQLITE_OK
                              ? sqlite3_errmsg(db_)
                              : sqlite3_errstr(rc);
    return absl::Status(CodeFor(rc), absl::StrCat("journal ", path_, ": ", what, ": ", message));
  }

  // Exec runs fixed SQL (never built from values).
  absl::Status Exec(const char* sql, absl::string_view what) {
    int rc = sqlite3_exec(db_, sql, nullptr, nullptr, nullptr);
    return rc == SQLITE_OK ? absl::OkStatus() : Error(rc, what);
  }

  // Prepare returns the statement for `sql` (a constant), prepared once.
  absl::StatusOr<sqlite3_stmt*> Prepare(const char* sql) {
    auto it = statements_.find(sql);
    if (it != statements_.end()) return it->second;
    sqlite3_stmt* stmt = nullptr;
    int rc = sqlite3_prepare_v3(db_, sql, -1, SQLITE_PREPARE_PERSISTENT, &stmt, nullptr);
    if (rc != SQLITE_OK) return Error(rc, "cannot prepare a statement");
    statements_.emplace(sql, stmt);
    return stmt;
  }

  absl::StatusOr<int64_t> UserVersion() {
    absl::StatusOr<sqlite3_stmt*> stmt = Prepare(kUserVersion);
    if (!stmt.ok()) return stmt.status();
    Statement s(*stmt);
    int rc = s.Step();
    if (rc != SQLITE_ROW) return Error(rc, "cannot read the schema version");
    return sqlite3_column_int64(s.get(), 0);
  }

  // CheckVersion fails for a schema newer than this build's.
  absl::Status CheckVersion(int64_t version) const {
    if (version <= kSchemaVersion) return absl::OkStatus();
    return absl::FailedPreconditionError(absl::StrCat(
        "journal ", path_, ": schema version ", version, " is newer than this build's (",
        kSchemaVersion, "); it was written by a newer defender-plugin"));
  }

  absl::Status PruneBefore(absl::Time cutoff) {
    absl::StatusOr<sqlite3_stmt*> stmt = Prepare(kPrune);
    if (!stmt.ok()) return stmt.status();
    Statement s(*stmt);
    s.Int(1, absl::ToUnixMicros(cutoff));
    int rc = s.Step();
    return rc == SQLITE_DONE ? absl::OkStatus() : Error(rc, "cannot delete old entries");
  }

 private:
  Connection(std::string path, sqlite3* db) : path_(std::move(path)), db_(db) {}

  const std::string path_;
  sqlite3* const db_;
  std::map<const char*, sqlite3_stmt*> statements_;
};

absl::StatusOr<std::unique_ptr<SqliteJournal>> SqliteJournal::Open(const std::string& state_dir,
                                                                   SqliteJournalOptions options) {
  if (state_dir.empty()) return absl::InvalidArgumentError("journal: empty state directory");
  if (options.retention <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError("journal: retention must be positive");
  }
  if (options.busy_timeout < absl::ZeroDuration() ||
      options.busy_timeout > absl::Milliseconds(INT32_MAX)) {
    return absl::InvalidArgumentError("journal: busy_timeout out of range");
  }
  Clock& clock = options.clock != nullptr ? *options.clock : Clock::Real();

  if (mkdir(state_dir.c_str(), 0700) != 0) {
    if (errno != EEXIST) return PathError("cannot create state directory", state_dir, errno);
    struct stat st;
    if (stat(state_dir.c_str(), &st) != 0) return PathError("cannot use", state_dir, errno);
    if (!S_ISDIR(st.st_mode)) return PathError("cannot use", state_dir, ENOTDIR);
  }
  const std::string path = absl::StrCat(state_dir, "/", kFileName);
  // SQLite would create the file 0644 and give its -wal and -shm files the
  // file's mode: create it 0600 first (an empty file is an empty database).
  int fd = open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  if (fd < 0) return PathError("cannot create or open", path, errno);
  close(fd);

  absl::StatusOr<std::unique_ptr<Connection>> writer =
      Connection::Open(path, /*read_only=*/false, options.busy_timeout);
  if (!writer.ok()) return writer.status();
  Connection& w = **writer;
  {
    // PRAGMA journal_mode answers with the mode it ended in.
    sqlite3_stmt* stmt = nullptr;
    int rc = sqlite3_prepare_v2(w.db(), "PRAGMA journal_mode = WAL", -1, &stmt, nullptr);
    if (rc != SQLITE_OK) return w.Error(rc, "cannot set WAL mode");
    rc = sqlite3_step(stmt);
    std::string mode = rc == SQLITE_ROW ? ColumnString(stmt, 0) : "";
    absl::Status status = rc == SQLITE_ROW ? absl::OkStatus() : w.Error(rc, "cannot set WAL mode");
    sqlite3_finalize(stmt);
    if (!status.ok()) return status;
    if (mode != "wal") {
      return absl::FailedPreconditionError(
          absl::StrCat("journal ", path, ": WAL mode unavailable (journal_mode is ", mode, ")"));
    }
  }
  if (absl::Status s = w.Exec(options.sync == SqliteJournalOptions::Sync::kFull
                                  ? "PRAGMA synchronous = FULL"
                                  : "PRAGMA synchronous = NORMAL",
                              "cannot set synchronous");
      !s.ok()) {
    return s;
  }

  absl::StatusOr<int64_t> version = w.UserVersion();
  if (!version.ok()) return version.status();
  if (absl::Status s = w.CheckVersion(*version); !s.ok()) return s;
  if (*version < kSchemaVersion) {
    // Another process may be creating it too: decide under the write lock.
    if (absl::Status s = w.Exec("BEGIN IMMEDIATE", "cannot lock to create the schema"); !s.ok()) {
      return s;
    }
    version = w.UserVersion();
    absl::Status s = version.status();
    if (s.ok()) s = w.CheckVersion(*version);
    if (s.ok() && *version == 0) s = w.Exec(kCreateSchema, "cannot create the schema");
    if (s.ok() && *version == 1) s = w.Exec(kMigrateFrom1, "cannot upgrade the schema");
    if (s.ok()) s = w.Exec("COMMIT", "cannot commit the schema");
    if (!s.ok()) {
      if (sqlite3_get_autocommit(w.db()) == 0) w.Exec("ROLLBACK", "").IgnoreError();
      return s;
    }
  }

  if (options.retention != absl::InfiniteDuration()) {
    if (absl::Status s = w.PruneBefore(Now(clock) - options.retention); !s.ok()) return s;
  }

  absl::StatusOr<std::unique_ptr<Connection>> reader =
      Connection::Open(path, /*read_only=*/true, options.busy_timeout);
  if (!reader.ok()) return reader.status();
  return std::unique_ptr<SqliteJournal>(
      new SqliteJournal(path, options, std::move(*writer), std::move(*reader)));
}

absl::StatusOr<std::unique_ptr<SqliteJournal>> SqliteJournal::OpenReadOnly(
    const std::string& state_dir) {
  if (state_dir.empty()) return absl::InvalidArgumentError("journal: empty state directory");
  const std::string path = absl::StrCat(state_dir, "/", kFileName);
  struct stat st;
  if (stat(path.c_str(), &st) != 0) {
    if (errno == ENOENT) return absl::NotFoundError(absl::StrCat("journal: no journal at ", path));
    return PathError("cannot use", path, errno);
  }
  if (!S_ISREG(st.st_mode)) {
    return absl::FailedPreconditionError(absl::StrCat("journal: ", path, " is not a file"));
  }
  SqliteJournalOptions options;
  absl::StatusOr<std::unique_ptr<Connection>> reader =
      Connection::Open(path, /*read_only=*/true, options.busy_timeout);
  if (!reader.ok()) return reader.status();
  absl::StatusOr<int64_t> version = (*reader)->UserVersion();
  if (!version.ok()) return version.status();
  if (absl::Status s = (*reader)->CheckVersion(*version); !s.ok()) return s;
  if (*version == 0) {
    return absl::FailedPreconditionError(
        absl::StrCat("journal ", path, ": not a journal (no schema yet)"));
  }
  if (*version < kSchemaVersion) {
    return absl::FailedPreconditionError(
        absl::StrCat("journal ", path, ": schema version ", *version,
                     " was written by an older defender-plugin; start the plugin once on "
                     "this state directory to upgrade it"));
  }
  return std::unique_ptr<SqliteJournal>(
      new SqliteJournal(path, options, nullptr, std::move(*reader)));
}

SqliteJournal::SqliteJournal(std::string path, SqliteJournalOptions options,
                             std::unique_ptr<Connection> writer,
                             std::unique_ptr<Connection> reader)
    : path_(std::move(path)),
      options_(options),
      clock_(options.clock != nullptr ? *options.clock : Clock::Real()),
      writer_(std::move(writer)),
      next_prune_(options.retention == absl::InfiniteDuration()
                      ? absl::InfiniteFuture()
                      : Now(clock_) + kPruneInterval),
      reader_(std::move(reader)) {
  if (writer_ != nullptr) thread_ = std::thread([this] { WriterLoop(); });
}

SqliteJournal::~SqliteJournal() {
  if (!thread_.joinable()) return;
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
    wake_.Signal();
  }
  thread_.join();
}

void SqliteJournal::Begin(Entry entry, absl::Time window_start, BeginCallback done) {
  if (writer_ == nullptr) {
    std::move(done)(absl::FailedPreconditionError(absl::StrCat("journal ", path_, " is open read-only")));
    return;
  }
  Op op;
  op.is_begin = true;
  op.entry = std::move(entry);
  op.window_start = window_start;
  op.begin_done = std::move(done);
  Enqueue(std::move(op));
}

void SqliteJournal::Update(Entry entry, DoneCallback done) {
  if (writer_ == nullptr) {
    std::move(done)(absl::FailedPreconditionError(absl::StrCat("journal ", path_, " is open read-only")));
    return;
  }
  Op op;
  op.is_begin = false;
  op.entry = std::move(entry);
  op.update_done = std::move(done);
  Enqueue(std::move(op));
}

void SqliteJournal::Enqueue(Op op) {
  absl::MutexLock lock(&mu_);
  // The writer waits only while the queue is empty.
  if (queue_.empty()) wake_.Signal();
  queue_.push_back(std::move(op));
}

void SqliteJournal::WriterLoop() {
  while (true) {
    std::vector<Op> batch;
    bool prune_due = false;
    {
      absl::MutexLock lock(&mu_);
      while (queue_.empty() && !stopping_) {
        absl::Duration left = next_prune_ - clock_.Now();
        if (left <= absl::ZeroDuration()) {
          prune_due = true;
          break;
        }
        wake_.WaitWithTimeout(&mu_, std::min(left, kPruneInterval));
      }
      if (queue_.empty() && !prune_due) return;  // stopping, and nothing left
      batch.swap(queue_);
    }
    absl::Time now = Now(clock_);
    if (now >= next_prune_) Prune(now);
    if (batch.empty()) continue;
    Commit(batch, now);
    for (Op& op : batch) {
      if (op.called_back) continue;
      if (op.is_begin) {
        std::move(op.begin_done)(std::move(op.begin_result));
      } else {
        std::move(op.update_done)(std::move(op.update_result));
      }
    }
  }
}

void SqliteJournal::Prune(absl::Time now) {
  // A failure has no caller to tell: the next attempt is an hour later.
  writer_->PruneBefore(now - options_.retention).IgnoreError();
  next_prune_ = now + kPruneInterval;
}

void SqliteJournal::Commit(std::vector<Op>& batch, absl::Time now) {
  Connection& w = *writer_;
  // IMMEDIATE takes the write lock now (waiting up to busy_timeout), so the
  // reads below see what no other process can change before COMMIT.
  absl::Status failed = w.Exec("BEGIN IMMEDIATE", "cannot begin a write transaction");
  for (Op& op : batch) {
    if (!failed.ok()) break;
    // Each op in a savepoint: a failed op leaves no half-write, and the
    // others in the batch still commit.
    failed = w.Exec("SAVEPOINT op", "cannot write");
    if (!failed.ok()) break;
    absl::Status op_status;
    if (op.is_begin) {
      op.begin_result = DoBegin(op.entry, op.window_start, now);
      op_status = op.begin_result.status();
    } else {
      op.update_result = DoUpdate(op.entry, now);
      op_status = op.update_result;
    }
    if (sqlite3_get_autocommit(w.db()) != 0) {
      // SQLite rolled the whole transaction back (I/O error, disk full).
      failed = !op_status.ok() ? op_status
                               : absl::InternalError(absl::StrCat(
                                     "journal ", path_, ": the transaction ended unexpectedly"));
      break;
    }
    if (op_status.ok()) {
      failed = w.Exec("RELEASE op", "cannot write");
      if (failed.ok() && op.is_begin && op.entry.request_key.empty()) {
        // Nothing can refuse this entry any more but the commit: its caller
        // need not wait for the disk (see the header).
        op.called_back = true;
        std::move(op.begin_done)(std::move(op.begin_result));
      }
    } else {
      failed = w.Exec("ROLLBACK TO op", "cannot undo a failed write");
      if (failed.ok()) failed = w.Exec("RELEASE op", "cannot undo a failed write");
    }
  }
  if (failed.ok()) failed = w.Exec("COMMIT", "cannot commit");
  if (failed.ok()) {
    commits_.fetch_add(1, std::memory_order_relaxed);
    return;
  }
  if (sqlite3_get_autocommit(w.db()) == 0) w.Exec("ROLLBACK", "").IgnoreError();
  for (Op& op : batch) {
    if (op.is_begin) {
      op.begin_result = failed;
    } else {
      op.update_result = failed;
    }
  }
}

absl::StatusOr<BeginResult> SqliteJournal::DoBegin(Entry entry, absl::Time window_start,
                                                   absl::Time now) {
  Connection& w = *writer_;
  entry.id = 0;
  entry.created = entry.updated = now;
  const bool keyed = !entry.request_key.empty();

  // read_active finds the entry holding the key, if any.
  auto read_active = [&](Entry* found) -> absl::StatusOr<bool> {
    absl::StatusOr<sqlite3_stmt*> stmt = w.Prepare(kSelectActive);
    if (!stmt.ok()) return stmt.status();
    Statement s(*stmt);
    s.Text(1, entry.request_key);
    int rc = s.Step();
    if (rc == SQLITE_DONE) return false;
    if (rc != SQLITE_ROW) return w.Error(rc, "cannot look up the request key");
    *found = ReadEntry(s.get());
    return true;
  };

  if (keyed) {
    Entry earlier;
    absl::StatusOr<bool> found = read_active(&earlier);
    if (!found.ok()) return found.status();
    if (*found) {
      if (earlier.created >= window_start) return BeginResult{false, std::move(earlier)};
      // Too old to be a repeat: the new entry takes the key over; the old one
      // stays for the audit.
      absl::StatusOr<sqlite3_stmt*> stmt = w.Prepare(kReleaseKey);
      if (!stmt.ok()) return stmt.status();
      Statement s(*stmt);
      s.Int(1, earlier.id);
      int rc = s.Step();
      if (rc != SQLITE_DONE) return w.Error(rc, "cannot release an old request key");
    }
  }

  absl::StatusOr<sqlite3_stmt*> stmt = w.Prepare(kInsert);
  if (!stmt.ok()) return stmt.status();
  int rc;
  {
    Statement s(*stmt);
    s.Text(1, entry.request_key);
    if (keyed) {
      s.Text(2, entry.request_key);
    } else {
      s.Null(2);
    }
    BindFields(s, 3, entry);
    s.Int(19, absl::ToUnixMicros(entry.created));
    s.Int(20, absl::ToUnixMicros(entry.updated));
    s.Blob(21, entry.action_proto);
    rc = s.Step();
  }
  if (rc == SQLITE_DONE) {
    entry.id = sqlite3_last_insert_rowid(w.db());
    return BeginResult{true, std::move(entry)};
  }
  if (keyed && (rc & 0xff) == SQLITE_CONSTRAINT) {
    // Another writer holds the key (cannot happen under BEGIN IMMEDIATE; the
    // UNIQUE index is the last line): answer with its entry.
    Entry holder;
    absl::StatusOr<bool> found = read_active(&holder);
    if (!found.ok()) return found.status();
    if (*found) return BeginResult{false, std::move(holder)};
  }
  return w.Error(rc, "cannot insert an entry");
}

absl::Status SqliteJournal::DoUpdate(const Entry& entry, absl::Time now) {
  Connection& w = *writer_;
  absl::StatusOr<sqlite3_stmt*> stmt = w.Prepare(kUpdate);
  if (!stmt.ok()) return stmt.status();
  Statement s(*stmt);
  s.Int(1, entry.id);
  BindFields(s, 2, entry);
  s.Int(18, absl::ToUnixMicros(now));
  s.Blob(19, entry.action_proto);
  int rc = s.Step();
  if (rc != SQLITE_DONE) return w.Error(rc, "cannot update an entry");
  if (sqlite3_changes(w.db()) == 0) {
    return absl::NotFoundError(absl::StrCat("journal ", path_, ": no entry with id ", entry.id));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<Entry>> SqliteJournal::List(const ListOptions& options) const {
  if (options.limit < 0) return absl::InvalidArgumentError("journal: negative limit");
  absl::MutexLock lock(&reader_mu_);
  absl::StatusOr<sqlite3_stmt*> stmt = reader_->Prepare(kList);
  if (!stmt.ok()) return stmt.status();
  Statement s(*stmt);
  s.Int(1, CeilMicros(options.since));
  s.Int(2, CeilMicros(options.until));
  s.Text(3, options.tenant);
  s.Text(4, options.request_key);
  s.Text(5, options.machine_id);
  s.Text(6, options.action_id);
  s.Int(7, options.limit == 0 ? -1 : options.limit);
  std::vector<Entry> entries;
  int rc;
  while ((rc = s.Step()) == SQLITE_ROW) entries.push_back(ReadEntry(s.get()));
  if (rc != SQLITE_DONE) return reader_->Error(rc, "cannot list entries");
  std::reverse(entries.begin(), entries.end());
  return entries;
}

}  // namespace defender::journal
