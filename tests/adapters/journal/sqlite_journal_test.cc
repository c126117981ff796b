#include "adapters/journal/sqlite_journal.h"

#include <sqlite3.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <thread>
#include <tuple>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/blocking_counter.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "adapters/common/clock.h"
#include "adapters/journal/journal.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace defender::journal {
namespace {

using ::testing::HasSubstr;

// TempDir is a fresh directory, removed with its contents afterwards.
class TempDir {
 public:
  TempDir() {
    std::string pattern = ::testing::TempDir() + "/journal_test_XXXXXX";
    EXPECT_NE(mkdtemp(pattern.data()), nullptr);
    path_ = pattern;
  }
  ~TempDir() {
    std::error_code ignored;
    std::filesystem::permissions(path_, std::filesystem::perms::owner_all,
                                 std::filesystem::perm_options::add, ignored);
    std::filesystem::remove_all(path_, ignored);
  }
  const std::string& path() const { return path_; }
  std::string Sub(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

// Fields is everything in an entry, comparable and printable.
auto Fields(const Entry& e) {
  return std::make_tuple(e.id, e.request_key, e.params, e.method, e.caller, e.tenant,
                         e.machine_id, e.file_sha1, e.comment, static_cast<int>(e.state),
                         e.outcome_unknown, e.action_id, e.action_proto, e.action_json,
                         e.status_code, e.error_reason, e.error_message, e.attempts, e.replays,
                         e.created, e.updated);
}

Entry Keyed(const std::string& key, const std::string& params = "p") {
  Entry e;
  e.request_key = key;
  e.params = params;
  e.method = "QuarantineFile";
  e.tenant = "contoso";
  return e;
}

absl::StatusOr<BeginResult> BeginSync(Journal& journal, Entry entry, absl::Time window_start) {
  absl::Notification done;
  absl::StatusOr<BeginResult> result;
  journal.Begin(std::move(entry), window_start, [&](absl::StatusOr<BeginResult> r) {
    result = std::move(r);
    done.Notify();
  });
  done.WaitForNotification();
  return result;
}

absl::Status UpdateSync(Journal& journal, Entry entry) {
  absl::Notification done;
  absl::Status result;
  journal.Update(std::move(entry), [&](absl::Status s) {
    result = std::move(s);
    done.Notify();
  });
  done.WaitForNotification();
  return result;
}

std::vector<Entry> ListAll(const Journal& journal, const ListOptions& options = {}) {
  absl::StatusOr<std::vector<Entry>> entries = journal.List(options);
  EXPECT_TRUE(entries.ok()) << entries.status();
  return entries.ok() ? *entries : std::vector<Entry>();
}

std::vector<int64_t> Ids(const std::vector<Entry>& entries) {
  std::vector<int64_t> ids;
  for (const Entry& e : entries) ids.push_back(e.id);
  return ids;
}

class SqliteJournalTest : public ::testing::Test {
 protected:
  std::unique_ptr<SqliteJournal> OpenJournal(absl::Duration retention = absl::Hours(24 * 90)) {
    SqliteJournalOptions options;
    options.clock = &clock_;
    options.retention = retention;
    absl::StatusOr<std::unique_ptr<SqliteJournal>> journal = SqliteJournal::Open(dir_.path(), options);
    EXPECT_TRUE(journal.ok()) << journal.status();
    return journal.ok() ? std::move(*journal) : nullptr;
  }

  TempDir dir_;
  FakeClock clock_;
};

TEST_F(SqliteJournalTest, RoundTripsEveryField) {
  auto journal = OpenJournal();
  ASSERT_NE(journal, nullptr);
  const absl::Time t0 = clock_.Now();

  Entry entry;
  entry.request_key = "key-1";
  entry.params = std::string("sha1=ab\0cd", 10);  // bytes, not just text
  entry.method = "BatchQuarantineFile";
  entry.caller = "ipv4:10.0.0.1:5000";
  entry.tenant = "contoso";
  entry.machine_id = "m-1";
  entry.file_sha1 = "0123456789abcdef0123456789abcdef01234567";
  entry.comment = "incident 42 — ünïcode";
  entry.state = EntryState::kInFlight;
  entry.outcome_unknown = true;
  entry.action_id = "a-0";
  entry.action_proto = std::string("\x0a\x00\xff\xfe", 4);  // binary, NUL included
  entry.action_json = "\xff\xfe{}";
  entry.status_code = 14;
  entry.error_reason = "R0";
  entry.error_message = "M0";
  entry.attempts = 3;
  entry.replays = 4;
  entry.id = 999;                                // assigned by Begin
  entry.created = entry.updated = absl::Now();   // assigned by Begin

  absl::StatusOr<BeginResult> begun = BeginSync(*journal, entry, absl::InfinitePast());
  ASSERT_TRUE(begun.ok()) << begun.status();
  EXPECT_TRUE(begun->created);
  EXPECT_GT(begun->entry.id, 0);
  Entry expected = entry;
  expected.id = begun->entry.id;
  expected.created = expected.updated = t0;
  EXPECT_EQ(Fields(begun->entry), Fields(expected));
  std::vector<Entry> listed = ListAll(*journal);
  ASSERT_EQ(listed.size(), 1u);
  EXPECT_EQ(Fields(listed[0]), Fields(expected));

  clock_.Advance(absl::Seconds(5));
  Entry update = begun->entry;
  update.request_key = "not-updated";
  update.created = absl::UnixEpoch();  // not updated either
  update.params = "params-2";
  update.method = "CancelMachineAction";
  update.caller = "spiffe://caller";
  update.tenant = "fabrikam";
  update.machine_id = "m-2";
  update.file_sha1 = "";
  update.comment = "c2";
  update.state = EntryState::kFailed;
  update.outcome_unknown = false;
  update.action_id = "a-2";
  update.action_proto = std::string("\x12\x03a-2\x00", 6);
  update.action_json = "{\"id\":\"a-2\"}";
  update.status_code = 9;
  update.error_reason = "R2";
  update.error_message = "M2";
  update.attempts = 7;
  update.replays = 8;
  ASSERT_TRUE(UpdateSync(*journal, update).ok());

  expected = update;
  expected.request_key = "key-1";
  expected.created = t0;
  expected.updated = t0 + absl::Seconds(5);
  listed = ListAll(*journal);
  ASSERT_EQ(listed.size(), 1u);
  EXPECT_EQ(Fields(listed[0]), Fields(expected));
}

TEST_F(SqliteJournalTest, CreatesAPrivateDirectoryAndFile) {
  const std::string state_dir = dir_.Sub("state");
  SqliteJournalOptions options;
  auto journal = SqliteJournal::Open(state_dir, options);
  ASSERT_TRUE(journal.ok()) << journal.status();
  EXPECT_EQ((*journal)->path(), state_dir + "/journal.sqlite3");
  ASSERT_TRUE(BeginSync(**journal, Keyed("k"), absl::InfinitePast()).ok());
  for (const std::string& file : {state_dir, state_dir + "/journal.sqlite3",
                                  state_dir + "/journal.sqlite3-wal"}) {
    struct stat st;
    ASSERT_EQ(stat(file.c_str(), &st), 0) << file;
    EXPECT_EQ(st.st_mode & 077, 0u) << file << " is open to others";
  }
}

TEST_F(SqliteJournalTest, RepeatWithinTheWindowReturnsTheFirstEntryAndWritesNothing) {
  auto journal = OpenJournal();
  ASSERT_NE(journal, nullptr);
  absl::StatusOr<BeginResult> first = BeginSync(*journal, Keyed("k", "first"), absl::InfinitePast());
  ASSERT_TRUE(first.ok()) << first.status();
  ASSERT_TRUE(first->created);
  const std::string wal = dir_.Sub("journal.sqlite3-wal");
  const auto wal_size = std::filesystem::file_size(wal);

  clock_.Advance(absl::Minutes(1));
  absl::StatusOr<BeginResult> repeat =
      BeginSync(*journal, Keyed("k", "second"), clock_.Now() - absl::Minutes(10));
  ASSERT_TRUE(repeat.ok()) << repeat.status();
  EXPECT_FALSE(repeat->created);
  EXPECT_EQ(Fields(repeat->entry), Fields(first->entry));

  // The window's start is inclusive.
  repeat = BeginSync(*journal, Keyed("k", "third"), first->entry.created);
  ASSERT_TRUE(repeat.ok()) << repeat.status();
  EXPECT_FALSE(repeat->created);
  EXPECT_EQ(repeat->entry.id, first->entry.id);

  std::vector<Entry> listed = ListAll(*journal);
  ASSERT_EQ(listed.size(), 1u);
  EXPECT_EQ(Fields(listed[0]), Fields(first->entry));
  // Nothing reached the file: no page was written to the log.
  EXPECT_EQ(std::filesystem::file_size(wal), wal_size);
}

TEST_F(SqliteJournalTest, KeyOlderThanTheWindowIsTakenOverByANewEntry) {
  auto journal = OpenJournal();
  ASSERT_NE(journal, nullptr);
  absl::StatusOr<BeginResult> old = BeginSync(*journal, Keyed("k", "old"), absl::InfinitePast());
  ASSERT_TRUE(old.ok() && old->created);

  clock_.Advance(absl::Minutes(10));
  absl::StatusOr<BeginResult> renewed =
      BeginSync(*journal, Keyed("k", "new"), old->entry.created + absl::Microseconds(1));
  ASSERT_TRUE(renewed.ok()) << renewed.status();
  EXPECT_TRUE(renewed->created);
  EXPECT_GT(renewed->entry.id, old->entry.id);
  EXPECT_EQ(renewed->entry.params, "new");

  // The key now leads to the new entry.
  absl::StatusOr<BeginResult> repeat =
      BeginSync(*journal, Keyed("k", "again"), clock_.Now() - absl::Minutes(5));
  ASSERT_TRUE(repeat.ok()) << repeat.status();
  EXPECT_FALSE(repeat->created);
  EXPECT_EQ(Fields(repeat->entry), Fields(renewed->entry));

  // The old entry stays in the audit trail, under its key.
  ListOptions by_key;
  by_key.request_key = "k";
  EXPECT_THAT(Ids(ListAll(*journal, by_key)),
              ::testing::ElementsAre(old->entry.id, renewed->entry.id));
}

TEST_F(SqliteJournalTest, EntriesWithoutAKeyAreAlwaysInserted) {
  auto journal = OpenJournal();
  ASSERT_NE(journal, nullptr);
  std::vector<int64_t> ids;
  Entry last;
  for (int i = 0; i < 3; ++i) {
    absl::StatusOr<BeginResult> r = BeginSync(*journal, Keyed("", "same"), absl::InfinitePast());
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_TRUE(r->created);
    ids.push_back(r->entry.id);
    last = r->entry;
  }
  EXPECT_LT(ids[0], ids[1]);
  EXPECT_LT(ids[1], ids[2]);
  // The last Begin may not be committed yet; a later write's callback says
  // it is.
  ASSERT_TRUE(UpdateSync(*journal, last).ok());
  EXPECT_EQ(Ids(ListAll(*journal)), ids);
}

TEST_F(SqliteJournalTest, ReopeningKeepsEverything) {
  Entry a;
  Entry b;
  {
    auto journal = OpenJournal();
    ASSERT_NE(journal, nullptr);
    absl::StatusOr<BeginResult> r = BeginSync(*journal, Keyed("k", "a"), absl::InfinitePast());
    ASSERT_TRUE(r.ok() && r->created);
    a = r->entry;
    clock_.Advance(absl::Seconds(1));
    a.state = EntryState::kSucceeded;
    a.action_id = "action-a";
    a.updated = clock_.Now();
    ASSERT_TRUE(UpdateSync(*journal, a).ok());
    r = BeginSync(*journal, Keyed("", "b"), absl::InfinitePast());
    ASSERT_TRUE(r.ok() && r->created);
    b = r->entry;
  }
  auto journal = OpenJournal();
  ASSERT_NE(journal, nullptr);
  std::vector<Entry> listed = ListAll(*journal);
  ASSERT_EQ(listed.size(), 2u);
  EXPECT_EQ(Fields(listed[0]), Fields(a));
  EXPECT_EQ(Fields(listed[1]), Fields(b));

  // The key still holds after the restart.
  absl::StatusOr<BeginResult> repeat = BeginSync(*journal, Keyed("k", "again"), absl::InfinitePast());
  ASSERT_TRUE(repeat.ok()) << repeat.status();
  EXPECT_FALSE(repeat->created);
  EXPECT_EQ(Fields(repeat->entry), Fields(a));
  // Ids are not reused.
  absl::StatusOr<BeginResult> c = BeginSync(*journal, Keyed("", "c"), absl::InfinitePast());
  ASSERT_TRUE(c.ok() && c->created);
  EXPECT_GT(c->entry.id, b.id);
}

TEST_F(SqliteJournalTest, TwoInstancesRacingOneKeyCreateOneEntry) {
  // Two journals on one directory stand for two processes: each has its own
  // connections and writer thread; only the file is shared.
  auto first = SqliteJournal::Open(dir_.path());
  auto second = SqliteJournal::Open(dir_.path());
  ASSERT_TRUE(first.ok()) << first.status();
  ASSERT_TRUE(second.ok()) << second.status();
  Journal* journals[] = {first->get(), second->get()};

  constexpr int kKeys = 30;
  constexpr int kThreads = 6;
  absl::Mutex mu;
  std::map<std::string, std::vector<BeginResult>> results;
  std::vector<absl::Status> errors;
  absl::BlockingCounter done(kKeys * kThreads);
  absl::Notification start;
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      start.WaitForNotification();
      for (int k = 0; k < kKeys; ++k) {
        std::string key = absl::StrCat("race-", k);
        journals[t % 2]->Begin(Keyed(key, absl::StrCat("thread ", t)), absl::InfinitePast(),
                               [&, key](absl::StatusOr<BeginResult> r) {
                                 {
                                   absl::MutexLock lock(&mu);
                                   if (r.ok()) {
                                     results[key].push_back(*std::move(r));
                                   } else {
                                     errors.push_back(r.status());
                                   }
                                 }
                                 done.DecrementCount();
                               });
      }
    });
  }
  start.Notify();
  for (std::thread& thread : threads) thread.join();
  done.Wait();

  absl::MutexLock lock(&mu);
  EXPECT_TRUE(errors.empty()) << errors.front();
  ASSERT_EQ(results.size(), static_cast<size_t>(kKeys));
  for (const auto& [key, answers] : results) {
    ASSERT_EQ(answers.size(), static_cast<size_t>(kThreads)) << key;
    int created = 0;
    for (const BeginResult& answer : answers) {
      created += answer.created;
      EXPECT_EQ(Fields(answer.entry), Fields(answers.front().entry)) << key;
    }
    EXPECT_EQ(created, 1) << key;
  }
  EXPECT_EQ(ListAll(**first).size(), static_cast<size_t>(kKeys));
  EXPECT_EQ(ListAll(**second).size(), static_cast<size_t>(kKeys));
}

TEST_F(SqliteJournalTest, UpdateOfAnUnknownIdIsNotFoundAndSparesTheOthers) {
  auto journal = OpenJournal();
  ASSERT_NE(journal, nullptr);
  Entry unknown = Keyed("");
  unknown.id = 12345;
  absl::Status status = UpdateSync(*journal, unknown);
  EXPECT_EQ(status.code(), absl::StatusCode::kNotFound) << status;
  EXPECT_THAT(status.message(), HasSubstr("12345"));
  unknown.id = 0;
  EXPECT_EQ(UpdateSync(*journal, unknown).code(), absl::StatusCode::kNotFound);

  // In one transaction with good writes, the failed one alone fails.
  absl::BlockingCounter done(3);
  absl::Notification release;
  absl::StatusOr<BeginResult> blocker;
  journal->Begin(Keyed("blocker"), absl::InfinitePast(), [&](absl::StatusOr<BeginResult> r) {
    blocker = std::move(r);
    release.WaitForNotification();  // holds the writer while the rest queue up
  });
  absl::StatusOr<BeginResult> before, after;
  absl::Status missing;
  journal->Begin(Keyed("before"), absl::InfinitePast(), [&](absl::StatusOr<BeginResult> r) {
    before = std::move(r);
    done.DecrementCount();
  });
  unknown.id = 777;
  journal->Update(unknown, [&](absl::Status s) {
    missing = std::move(s);
    done.DecrementCount();
  });
  journal->Begin(Keyed("after"), absl::InfinitePast(), [&](absl::StatusOr<BeginResult> r) {
    after = std::move(r);
    done.DecrementCount();
  });
  release.Notify();
  done.Wait();
  ASSERT_TRUE(blocker.ok()) << blocker.status();
  ASSERT_TRUE(before.ok()) << before.status();
  ASSERT_TRUE(after.ok()) << after.status();
  EXPECT_EQ(missing.code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(Ids(ListAll(*journal)),
              ::testing::ElementsAre(blocker->entry.id, before->entry.id, after->entry.id));
}

TEST_F(SqliteJournalTest, RetentionPrunesAtOpenAndAtMostHourly) {
  const absl::Time t0 = clock_.Now();
  {
    auto journal = OpenJournal(absl::Minutes(10));
    ASSERT_NE(journal, nullptr);
    ASSERT_TRUE(BeginSync(*journal, Keyed("a"), absl::InfinitePast()).ok());
    clock_.Advance(absl::Minutes(30));
    // "a" is past retention, but the last pruning (at Open) is not an hour old.
    ASSERT_TRUE(BeginSync(*journal, Keyed("b"), absl::InfinitePast()).ok());
    std::vector<Entry> listed = ListAll(*journal);
    ASSERT_EQ(listed.size(), 2u);
    EXPECT_EQ(listed[0].created, t0);

    clock_.Advance(absl::Minutes(31));  // t0 + 61 min: prune what is older than t0 + 51 min
    absl::StatusOr<BeginResult> c = BeginSync(*journal, Keyed("c"), absl::InfinitePast());
    ASSERT_TRUE(c.ok()) << c.status();
    listed = ListAll(*journal);
    ASSERT_EQ(listed.size(), 1u);
    EXPECT_EQ(listed[0].id, c->entry.id);
  }
  clock_.Advance(absl::Minutes(11));
  auto journal = OpenJournal(absl::Minutes(10));
  ASSERT_NE(journal, nullptr);
  EXPECT_TRUE(ListAll(*journal).empty());
}

TEST_F(SqliteJournalTest, ReadOnlyOpenListsAndRefusesWrites) {
  EXPECT_EQ(SqliteJournal::OpenReadOnly(dir_.path()).status().code(), absl::StatusCode::kNotFound);
  auto writer = OpenJournal();
  ASSERT_NE(writer, nullptr);
  absl::StatusOr<BeginResult> a = BeginSync(*writer, Keyed("a"), absl::InfinitePast());
  ASSERT_TRUE(a.ok()) << a.status();

  auto reader = SqliteJournal::OpenReadOnly(dir_.path());
  ASSERT_TRUE(reader.ok()) << reader.status();
  EXPECT_EQ(Ids(ListAll(**reader)), std::vector<int64_t>{a->entry.id});

  bool called = false;
  (*reader)->Begin(Keyed("b"), absl::InfinitePast(), [&](absl::StatusOr<BeginResult> r) {
    EXPECT_EQ(r.status().code(), absl::StatusCode::kFailedPrecondition) << r.status();
    called = true;
  });
  EXPECT_TRUE(called);
  called = false;
  (*reader)->Update(a->entry, [&](absl::Status s) {
    EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << s;
    called = true;
  });
  EXPECT_TRUE(called);

  // It sees what the writer commits later.
  absl::StatusOr<BeginResult> b = BeginSync(*writer, Keyed("b"), absl::InfinitePast());
  ASSERT_TRUE(b.ok()) << b.status();
  EXPECT_EQ(Ids(ListAll(**reader)), (std::vector<int64_t>{a->entry.id, b->entry.id}));

  // And works without a writer.
  writer.reset();
  reader->reset();
  reader = SqliteJournal::OpenReadOnly(dir_.path());
  ASSERT_TRUE(reader.ok()) << reader.status();
  EXPECT_EQ(Ids(ListAll(**reader)), (std::vector<int64_t>{a->entry.id, b->entry.id}));
}

TEST_F(SqliteJournalTest, UnusableDirectoryOrFileFailsOpenClearly) {
  // The state directory is a file.
  const std::string file = dir_.Sub("plain-file");
  std::ofstream(file) << "x";
  absl::StatusOr<std::unique_ptr<SqliteJournal>> journal = SqliteJournal::Open(file);
  EXPECT_EQ(journal.status().code(), absl::StatusCode::kFailedPrecondition) << journal.status();
  EXPECT_THAT(journal.status().message(), HasSubstr(file));

  // Its parent is a file.
  journal = SqliteJournal::Open(file + "/state");
  EXPECT_EQ(journal.status().code(), absl::StatusCode::kFailedPrecondition) << journal.status();
  EXPECT_THAT(journal.status().message(), HasSubstr(file + "/state"));

  // The database is a directory.
  const std::string dir_db = dir_.Sub("dir-db");
  ASSERT_EQ(mkdir(dir_db.c_str(), 0700), 0);
  ASSERT_EQ(mkdir((dir_db + "/journal.sqlite3").c_str(), 0700), 0);
  journal = SqliteJournal::Open(dir_db);
  EXPECT_EQ(journal.status().code(), absl::StatusCode::kFailedPrecondition) << journal.status();
  EXPECT_THAT(journal.status().message(), HasSubstr(dir_db + "/journal.sqlite3"));

  // The database is not a database.
  const std::string garbage = dir_.Sub("garbage");
  ASSERT_EQ(mkdir(garbage.c_str(), 0700), 0);
  std::ofstream(garbage + "/journal.sqlite3") << std::string(4096, 'g');
  journal = SqliteJournal::Open(garbage);
  EXPECT_EQ(journal.status().code(), absl::StatusCode::kFailedPrecondition) << journal.status();
  EXPECT_THAT(journal.status().message(), HasSubstr(garbage + "/journal.sqlite3"));
  EXPECT_EQ(SqliteJournal::OpenReadOnly(garbage).status().code(),
            absl::StatusCode::kFailedPrecondition);

  // A directory this process may not write (permissions do not bind root).
  if (geteuid() != 0) {
    const std::string locked = dir_.Sub("locked");
    ASSERT_EQ(mkdir(locked.c_str(), 0500), 0);
    journal = SqliteJournal::Open(locked);
    EXPECT_EQ(journal.status().code(), absl::StatusCode::kFailedPrecondition) << journal.status();
    EXPECT_THAT(journal.status().message(), HasSubstr(locked));
    journal = SqliteJournal::Open(locked + "/state");
    EXPECT_EQ(journal.status().code(), absl::StatusCode::kFailedPrecondition) << journal.status();
  }

  SqliteJournalOptions options;
  options.retention = absl::ZeroDuration();
  EXPECT_EQ(SqliteJournal::Open(dir_.Sub("state"), options).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST_F(SqliteJournalTest, NewerSchemaIsRefused) {
  ASSERT_NE(OpenJournal(), nullptr);
  sqlite3* db = nullptr;
  ASSERT_EQ(sqlite3_open(dir_.Sub("journal.sqlite3").c_str(), &db), SQLITE_OK);
  ASSERT_EQ(sqlite3_exec(db, "PRAGMA user_version = 3", nullptr, nullptr, nullptr), SQLITE_OK);
  sqlite3_close(db);

  absl::StatusOr<std::unique_ptr<SqliteJournal>> journal = SqliteJournal::Open(dir_.path());
  EXPECT_EQ(journal.status().code(), absl::StatusCode::kFailedPrecondition) << journal.status();
  EXPECT_THAT(journal.status().message(), HasSubstr("schema version 3"));
  EXPECT_THAT(journal.status().message(), HasSubstr(dir_.Sub("journal.sqlite3")));
  journal = SqliteJournal::OpenReadOnly(dir_.path());
  EXPECT_EQ(journal.status().code(), absl::StatusCode::kFailedPrecondition) << journal.status();
}

TEST_F(SqliteJournalTest, SchemaOneFileIsUpgradedKeepingItsEntries) {
  // A journal as the first schema wrote it: the action only as JSON.
  sqlite3* db = nullptr;
  ASSERT_EQ(sqlite3_open(dir_.Sub("journal.sqlite3").c_str(), &db), SQLITE_OK);
  const char* v1 =
      "PRAGMA journal_mode = WAL;"
      "CREATE TABLE entries (id INTEGER PRIMARY KEY AUTOINCREMENT, request_key TEXT NOT NULL,"
      " active_key TEXT, params TEXT NOT NULL, method TEXT NOT NULL, caller TEXT NOT NULL,"
      " tenant TEXT NOT NULL, machine_id TEXT NOT NULL, file_sha1 TEXT NOT NULL,"
      " comment TEXT NOT NULL, state INTEGER NOT NULL, outcome_unknown INTEGER NOT NULL,"
      " action_id TEXT NOT NULL, action_json TEXT NOT NULL, status_code INTEGER NOT NULL,"
      " error_reason TEXT NOT NULL, error_message TEXT NOT NULL, attempts INTEGER NOT NULL,"
      " replays INTEGER NOT NULL, created_us INTEGER NOT NULL, updated_us INTEGER NOT NULL);"
      "CREATE UNIQUE INDEX entries_active_key ON entries (active_key);"
      "CREATE INDEX entries_created ON entries (created_us);"
      "INSERT INTO entries (request_key, active_key, params, method, caller, tenant, machine_id,"
      " file_sha1, comment, state, outcome_unknown, action_id, action_json, status_code,"
      " error_reason, error_message, attempts, replays, created_us, updated_us) VALUES"
      " ('k', 'k', 'p', 'QuarantineFile', 'c', 't', 'm', 's', 'x', 1, 0, 'a-1',"
      " '{\"id\":\"a-1\"}', 0, '', '', 1, 0, 1000, 1000);"
      "PRAGMA user_version = 1;";
  ASSERT_EQ(sqlite3_exec(db, v1, nullptr, nullptr, nullptr), SQLITE_OK) << sqlite3_errmsg(db);
  sqlite3_close(db);

  absl::StatusOr<std::unique_ptr<SqliteJournal>> read_only = SqliteJournal::OpenReadOnly(dir_.path());
  EXPECT_EQ(read_only.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(read_only.status().message(), HasSubstr("older defender-plugin"));

  std::unique_ptr<SqliteJournal> journal = OpenJournal(absl::InfiniteDuration());
  ASSERT_NE(journal, nullptr);
  std::vector<Entry> listed = ListAll(*journal);
  ASSERT_EQ(listed.size(), 1u);
  EXPECT_EQ(listed[0].action_id, "a-1");
  EXPECT_EQ(listed[0].action_json, "{\"id\":\"a-1\"}");
  EXPECT_EQ(listed[0].action_proto, "");
  Entry update = listed[0];
  update.action_proto = std::string("\x0a\x03a-1", 5);
  ASSERT_TRUE(UpdateSync(*journal, update).ok());
  EXPECT_EQ(ListAll(*journal)[0].action_proto, update.action_proto);
  journal.reset();
  read_only = SqliteJournal::OpenReadOnly(dir_.path());
  EXPECT_TRUE(read_only.ok()) << read_only.status();
}

TEST_F(SqliteJournalTest, BeginWithoutAKeyCallsBackBeforeItsCommitAndKeyedAfter) {
  std::unique_ptr<SqliteJournal> journal = OpenJournal();
  ASSERT_NE(journal, nullptr);
  const int64_t commits = journal->Commits();
  absl::Notification unkeyed_done, keyed_done;
  int64_t commits_at_unkeyed = -1, commits_at_keyed = -1;
  int64_t unkeyed_id = 0;
  journal->Begin(Entry(), absl::InfinitePast(), [&](absl::StatusOr<BeginResult> r) {
    ASSERT_TRUE(r.ok()) << r.status();
    unkeyed_id = r->entry.id;
    commits_at_unkeyed = journal->Commits();
    unkeyed_done.Notify();
  });
  unkeyed_done.WaitForNotification();
  journal->Begin(Keyed("k"), absl::InfinitePast(), [&](absl::StatusOr<BeginResult> r) {
    ASSERT_TRUE(r.ok()) << r.status();
    commits_at_keyed = journal->Commits();
    keyed_done.Notify();
  });
  keyed_done.WaitForNotification();
  EXPECT_EQ(commits_at_unkeyed, commits) << "the entry without a key did not wait for its commit";
  EXPECT_GT(commits_at_keyed, commits) << "a keyed entry is durable before its callback";
  // The early entry was committed all the same.
  EXPECT_EQ(ListAll(*journal).size(), 2u);
  EXPECT_GT(unkeyed_id, 0);
}

TEST_F(SqliteJournalTest, NormalSyncStillCommitsEveryWrite) {
  SqliteJournalOptions options;
  options.sync = SqliteJournalOptions::Sync::kNormal;
  absl::StatusOr<std::unique_ptr<SqliteJournal>> journal = SqliteJournal::Open(dir_.path(), options);
  ASSERT_TRUE(journal.ok()) << journal.status();
  absl::StatusOr<BeginResult> begun = BeginSync(**journal, Keyed("k"), absl::InfinitePast());
  ASSERT_TRUE(begun.ok()) << begun.status();
  journal->reset();
  std::unique_ptr<SqliteJournal> reopened = OpenJournal();
  ASSERT_NE(reopened, nullptr);
  ASSERT_EQ(ListAll(*reopened).size(), 1u);
  EXPECT_EQ(ListAll(*reopened)[0].request_key, "k");
}

TEST_F(SqliteJournalTest, GroupCommitPutsQueuedWritesInOneTransaction) {
  auto journal = OpenJournal();
  ASSERT_NE(journal, nullptr);
  absl::Notification in_callback, release;
  absl::StatusOr<BeginResult> blocker;
  journal->Begin(Keyed("blocker"), absl::InfinitePast(), [&](absl::StatusOr<BeginResult> r) {
    blocker = std::move(r);
    in_callback.Notify();
    release.WaitForNotification();
  });
  in_callback.WaitForNotification();
  ASSERT_TRUE(blocker.ok()) << blocker.status();
  const int64_t commits = journal->Commits();

  // Queued while the writer is busy: one transaction, callbacks in order.
  constexpr int kWrites = 60;
  absl::Mutex mu;
  std::vector<int> order;
  std::set<std::thread::id> threads;
  absl::BlockingCounter done(kWrites);
  for (int i = 0; i < kWrites; ++i) {
    auto record = [&, i] {
      absl::MutexLock lock(&mu);
      order.push_back(i);
      threads.insert(std::this_thread::get_id());
      done.DecrementCount();
    };
    if (i % 3 == 2) {
      Entry update = blocker->entry;
      update.attempts = i;
      journal->Update(update, [record](absl::Status s) {
        EXPECT_TRUE(s.ok()) << s;
        record();
      });
    } else {
      journal->Begin(Keyed(absl::StrCat("k", i % 7)), absl::InfinitePast(),
                     [record](absl::StatusOr<BeginResult> r) {
                       EXPECT_TRUE(r.ok()) << r.status();
                       record();
                     });
    }
  }
  release.Notify();
  done.Wait();
  EXPECT_EQ(journal->Commits(), commits + 1);
  absl::MutexLock lock(&mu);
  std::vector<int> expected(kWrites);
  for (int i = 0; i < kWrites; ++i) expected[i] = i;
  EXPECT_EQ(order, expected);
  EXPECT_EQ(threads.size(), 1u);
  EXPECT_EQ(threads.count(std::this_thread::get_id()), 0u);
  // 1 + 7 keys; the last update won.
  std::vector<Entry> listed = ListAll(*journal);
  ASSERT_EQ(listed.size(), 8u);
  EXPECT_EQ(listed[0].attempts, kWrites - 1);
}

TEST_F(SqliteJournalTest, ManyConcurrentBeginsAllComplete) {
  SqliteJournalOptions options;  // the real clock
  auto journal = SqliteJournal::Open(dir_.path(), options);
  ASSERT_TRUE(journal.ok()) << journal.status();
  constexpr int kThreads = 8;
  constexpr int kPerThread = 250;
  absl::Mutex mu;
  std::set<int64_t> ids;
  int failures = 0;
  // Each Begin's callback queues an Update (writes from the writer thread).
  absl::BlockingCounter done(2 * kThreads * kPerThread);
  const auto start = std::chrono::steady_clock::now();
  const int64_t commits = (*journal)->Commits();
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kPerThread; ++i) {
        std::string key = i % 2 == 0 ? absl::StrCat(t, "-", i) : "";
        (*journal)->Begin(Keyed(key), absl::InfinitePast(), [&](absl::StatusOr<BeginResult> r) {
          {
            absl::MutexLock lock(&mu);
            if (r.ok() && r->created) {
              ids.insert(r->entry.id);
            } else {
              ++failures;
            }
          }
          if (!r.ok()) {
            done.DecrementCount();
            done.DecrementCount();
            return;
          }
          Entry update = r->entry;
          update.state = EntryState::kSucceeded;
          (*journal)->Update(update, [&](absl::Status s) {
            if (!s.ok()) {
              absl::MutexLock lock(&mu);
              ++failures;
            }
            done.DecrementCount();
          });
          done.DecrementCount();
        });
      }
    });
  }
  for (std::thread& thread : threads) thread.join();
  done.Wait();
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  const int64_t transactions = (*journal)->Commits() - commits;
  std::printf("%d writes in %.3f s (%.0f/s), %lld transactions\n", 2 * kThreads * kPerThread,
              seconds, 2 * kThreads * kPerThread / seconds, static_cast<long long>(transactions));

  absl::MutexLock lock(&mu);
  EXPECT_EQ(failures, 0);
  EXPECT_EQ(ids.size(), static_cast<size_t>(kThreads * kPerThread));
  std::vector<Entry> listed = ListAll(**journal);
  ASSERT_EQ(listed.size(), static_cast<size_t>(kThreads * kPerThread));
  for (const Entry& e : listed) EXPECT_EQ(e.state, EntryState::kSucceeded) << e.id;
}

TEST_F(SqliteJournalTest, DestructionFinishesQueuedWrites) {
  constexpr int kWrites = 100;
  int begun = 0;
  bool updated = false;
  {
    auto journal = OpenJournal();
    ASSERT_NE(journal, nullptr);
    SqliteJournal* raw = journal.get();
    for (int i = 0; i < kWrites; ++i) {
      journal->Begin(Keyed(""), absl::InfinitePast(), [&, i, raw](absl::StatusOr<BeginResult> r) {
        ASSERT_TRUE(r.ok()) << r.status();
        ++begun;  // on the writer thread only
        if (i == kWrites - 1) {
          // A write queued by a callback during destruction still happens.
          Entry update = r->entry;
          update.comment = "last";
          raw->Update(update, [&](absl::Status s) { updated = s.ok(); });
        }
      });
    }
  }
  EXPECT_EQ(begun, kWrites);
  EXPECT_TRUE(updated);
  auto journal = OpenJournal();
  ASSERT_NE(journal, nullptr);
  std::vector<Entry> listed = ListAll(*journal);
  ASSERT_EQ(listed.size(), static_cast<size_t>(kWrites));
  EXPECT_EQ(listed.back().comment, "last");
}

TEST_F(SqliteJournalTest, ListFiltersAndLimits) {
  auto journal = OpenJournal();
  ASSERT_NE(journal, nullptr);
  const absl::Time t0 = clock_.Now();
  struct Row {
    const char* tenant;
    const char* machine;
    const char* key;
    const char* action;
  };
  const Row rows[] = {
      {"contoso", "m1", "k1", "a1"},  // t0
      {"contoso", "m2", "k2", ""},    // t0 + 1s
      {"fabrikam", "m1", "", "a3"},   // t0 + 2s
      {"contoso", "m1", "k4", "a4"},  // t0 + 3s
      {"fabrikam", "m2", "k5", ""},   // t0 + 4s
  };
  std::vector<int64_t> id;
  for (const Row& row : rows) {
    Entry e = Keyed(row.key);
    e.tenant = row.tenant;
    e.machine_id = row.machine;
    absl::StatusOr<BeginResult> r = BeginSync(*journal, e, absl::InfinitePast());
    ASSERT_TRUE(r.ok() && r->created);
    if (*row.action != '\0') {
      r->entry.action_id = row.action;
      ASSERT_TRUE(UpdateSync(*journal, r->entry).ok());
    }
    id.push_back(r->entry.id);
    clock_.Advance(absl::Seconds(1));
  }
  using ::testing::ElementsAre;
  EXPECT_THAT(Ids(ListAll(*journal)), ElementsAre(id[0], id[1], id[2], id[3], id[4]));

  ListOptions o;
  o.since = t0 + absl::Seconds(1);  // inclusive
  o.until = t0 + absl::Seconds(3);  // exclusive
  EXPECT_THAT(Ids(ListAll(*journal, o)), ElementsAre(id[1], id[2]));
  o.since = t0 + absl::Seconds(1) - absl::Nanoseconds(1);
  o.until = t0 + absl::Seconds(3) + absl::Nanoseconds(1);
  EXPECT_THAT(Ids(ListAll(*journal, o)), ElementsAre(id[1], id[2], id[3]));
  o.since = t0 + absl::Seconds(1) + absl::Nanoseconds(1);
  EXPECT_THAT(Ids(ListAll(*journal, o)), ElementsAre(id[2], id[3]));

  o = {};
  o.tenant = "contoso";
  EXPECT_THAT(Ids(ListAll(*journal, o)), ElementsAre(id[0], id[1], id[3]));
  o.machine_id = "m1";
  EXPECT_THAT(Ids(ListAll(*journal, o)), ElementsAre(id[0], id[3]));
  o = {};
  o.request_key = "k4";
  EXPECT_THAT(Ids(ListAll(*journal, o)), ElementsAre(id[3]));
  o = {};
  o.action_id = "a3";
  EXPECT_THAT(Ids(ListAll(*journal, o)), ElementsAre(id[2]));
  o.tenant = "contoso";
  EXPECT_TRUE(ListAll(*journal, o).empty());

  o = {};
  o.limit = 2;  // the newest two, oldest first
  EXPECT_THAT(Ids(ListAll(*journal, o)), ElementsAre(id[3], id[4]));
  o.machine_id = "m1";
  EXPECT_THAT(Ids(ListAll(*journal, o)), ElementsAre(id[2], id[3]));
  o.limit = 10;
  EXPECT_THAT(Ids(ListAll(*journal, o)), ElementsAre(id[0], id[2], id[3]));
  o.limit = -1;
  EXPECT_EQ(journal->List(o).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(NoJournalTest, CreatesEverythingAndKeepsNothing) {
  NoJournal journal;
  int64_t last_id = 0;
  for (int i = 1; i <= 2; ++i) {
    bool called = false;
    journal.Begin(Keyed("same"), absl::InfiniteFuture(), [&](absl::StatusOr<BeginResult> r) {
      ASSERT_TRUE(r.ok());
      EXPECT_TRUE(r->created);
      EXPECT_EQ(r->entry.request_key, "same");
      last_id = r->entry.id;
      called = true;
    });
    EXPECT_TRUE(called);  // inline
    EXPECT_EQ(last_id, i);
  }
  bool called = false;
  journal.Update(Keyed("x"), [&](absl::Status s) {
    EXPECT_TRUE(s.ok());
    called = true;
  });
  EXPECT_TRUE(called);
  absl::StatusOr<std::vector<Entry>> listed = journal.List({});
  ASSERT_TRUE(listed.ok());
  EXPECT_TRUE(listed->empty());
}

}  // namespace
}  // namespace defender::journal
