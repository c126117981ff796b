#include "server/shared_requests.h"

#include <algorithm>
#include <map>
#include <optional>
#include <utility>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "adapters/common/error.h"
#include "adapters/common/scheduler.h"
#include "adapters/redis/redis_client.h"

namespace defender {
namespace {

// KEYS[1] the record (hash: params, state running|done|failed, owner, lease,
// since (µs, Redis's clock), action). ARGV: params, owner, lease_us,
// window_ms. Returns {'run', age_us of the earliest run or '-1'}, {'reused'},
// {'done', action}, {'wait', lease left in µs}.
const redis::Script kClaim(R"lua(
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local lease = string.format('%.0f', now + tonumber(ARGV[3]))
local r = redis.call('HMGET', KEYS[1], 'params', 'state', 'owner', 'lease', 'since', 'action')
if not r[1] then
  redis.call('HSET', KEYS[1], 'params', ARGV[1], 'state', 'running', 'owner', ARGV[2],
             'lease', lease, 'since', string.format('%.0f', now))
  redis.call('PEXPIRE', KEYS[1], ARGV[4])
  return {'run', '-1'}
end
if r[1] ~= ARGV[1] then return {'reused'} end
if r[2] == 'done' then return {'done', r[6]} end
if r[2] == 'running' and r[3] ~= ARGV[2] and tonumber(r[4]) > now then
  return {'wait', string.format('%.0f', tonumber(r[4]) - now)}
end
redis.call('HSET', KEYS[1], 'state', 'running', 'owner', ARGV[2], 'lease', lease)
return {'run', string.format('%.0f', now - tonumber(r[5]))}
)lua");

// KEYS[1] the record. ARGV: owner, lease_us. Renews a running record's lease
// if this replica still owns it. Returns 1 if it did.
const redis::Script kRenew(R"lua(
local r = redis.call('HMGET', KEYS[1], 'owner', 'state')
if r[1] ~= ARGV[1] or r[2] ~= 'running' then return 0 end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
redis.call('HSET', KEYS[1], 'lease', string.format('%.0f', now + tonumber(ARGV[2])))
return 1
)lua");

// KEYS[1] the record. ARGV: owner, outcome (done|unknown|none), action,
// window_ms. Only the owner finishes a record.
const redis::Script kFinish(R"lua(
local r = redis.call('HMGET', KEYS[1], 'owner', 'state')
if r[1] ~= ARGV[1] then
  -- Taken over meanwhile: a real action still wins over a run not yet done.
  if r[1] and ARGV[2] == 'done' and r[2] ~= 'done' then
    redis.call('HSET', KEYS[1], 'state', 'done', 'action', ARGV[3])
    redis.call('PEXPIRE', KEYS[1], ARGV[4])
  end
  return 0
end
if ARGV[2] == 'done' then
  redis.call('HSET', KEYS[1], 'state', 'done', 'action', ARGV[3])
  redis.call('PEXPIRE', KEYS[1], ARGV[4])
elseif ARGV[2] == 'unknown' then
  redis.call('HSET', KEYS[1], 'state', 'failed', 'lease', '0')
else
  redis.call('DEL', KEYS[1])
end
return 1
)lua");

// KEYS[1] the record. ARGV: params, outcome (done|unknown), action,
// window_ms, lookback_us. The outcome of a run made without a claim: creates
// the record (an unknown outcome as failed, since lookback_us ago, so the
// next claimer looks back that far), or marks a not-yet-done record with the
// same params done.
const redis::Script kRecord(R"lua(
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local r = redis.call('HMGET', KEYS[1], 'params', 'state')
if not r[1] then
  if ARGV[2] == 'done' then
    redis.call('HSET', KEYS[1], 'params', ARGV[1], 'state', 'done', 'owner', '', 'lease', '0',
               'since', string.format('%.0f', now), 'action', ARGV[3])
  else
    redis.call('HSET', KEYS[1], 'params', ARGV[1], 'state', 'failed', 'owner', '', 'lease', '0',
               'since', string.format('%.0f', now - tonumber(ARGV[5])))
  end
  redis.call('PEXPIRE', KEYS[1], ARGV[4])
elseif r[1] == ARGV[1] and r[2] ~= 'done' and ARGV[2] == 'done' then
  redis.call('HSET', KEYS[1], 'state', 'done', 'action', ARGV[3])
  redis.call('PEXPIRE', KEYS[1], ARGV[4])
end
return 1
)lua");

std::string Micros(absl::Duration d) { return absl::StrCat(absl::ToInt64Microseconds(d)); }
std::string Millis(absl::Duration d) { return absl::StrCat(absl::ToInt64Milliseconds(d)); }

}  // namespace

std::string RedisRequestKey(const std::string& key) {
  return absl::StrCat("defender-plugin:req:", key);
}

struct SharedRequests::Core : std::enable_shared_from_this<SharedRequests::Core> {
  struct Waiting {
    std::string key;
    std::string params;
    ClaimDone done;
    bool waited = false;
    int errors = 0;
    absl::Duration pause = absl::Milliseconds(100);
    Scheduler::TaskId timer = 0;
  };

  SharedState* state;
  SharedRequestsOptions options;
  absl::Mutex mu;
  bool stopped ABSL_GUARDED_BY(mu) = false;
  uint64_t next_id ABSL_GUARDED_BY(mu) = 1;
  std::map<uint64_t, Waiting> waiting ABSL_GUARDED_BY(mu);
  std::map<std::string, Scheduler::TaskId> renewals ABSL_GUARDED_BY(mu);
  // Unclaimed outcomes not yet in Redis: key -> {params, outcome, action}.
  struct Unrecorded {
    std::string params, outcome, action;
  };
  std::map<std::string, Unrecorded> unrecorded ABSL_GUARDED_BY(mu);
  Scheduler::TaskId record_timer ABSL_GUARDED_BY(mu) = 0;

  void WriteRecord(const std::string& key, const Unrecorded& record) {
    std::weak_ptr<Core> weak = weak_from_this();
    state->redis().Eval(
        kRecord, {RedisRequestKey(key)},
        {record.params, record.outcome, record.action, Millis(options.window),
         Micros(absl::Hours(1))},
        absl::Now() + state->options().call_timeout,
        [weak, key, action = record.action](absl::StatusOr<redis::Reply> reply) {
          auto core = weak.lock();
          if (core == nullptr) return;
          absl::MutexLock lock(&core->mu);
          auto it = core->unrecorded.find(key);
          if (reply.ok() && it != core->unrecorded.end() && it->second.action == action) {
            core->unrecorded.erase(it);
          }
          if (!core->unrecorded.empty()) core->ScheduleRecords();
        });
  }

  void ScheduleRecords() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    if (stopped || record_timer != 0) return;
    std::weak_ptr<Core> weak = weak_from_this();
    record_timer = state->scheduler().RunAt(absl::Now() + options.record_retry, [weak] {
      auto core = weak.lock();
      if (core == nullptr) return;
      std::map<std::string, Unrecorded> pending;
      {
        absl::MutexLock lock(&core->mu);
        core->record_timer = 0;
        if (core->stopped) return;
        pending = core->unrecorded;
      }
      for (const auto& [key, record] : pending) core->WriteRecord(key, record);
    });
  }

  std::optional<Waiting> Take(uint64_t id) {
    absl::MutexLock lock(&mu);
    auto it = waiting.find(id);
    if (it == waiting.end()) return std::nullopt;
    Waiting w = std::move(it->second);
    waiting.erase(it);
    return w;
  }

  void Attempt(uint64_t id) {
    std::string key, params;
    {
      absl::MutexLock lock(&mu);
      auto it = waiting.find(id);
      if (it == waiting.end()) return;
      it->second.timer = 0;
      key = it->second.key;
      params = it->second.params;
    }
    std::weak_ptr<Core> weak = weak_from_this();
    state->redis().Eval(
        kClaim, {RedisRequestKey(key)},
        {params, state->options().replica_id, Micros(options.lease), Millis(options.window)},
        absl::Now() + state->options().call_timeout,
        [weak, id](absl::StatusOr<redis::Reply> reply) {
          if (auto core = weak.lock()) core->OnReply(id, std::move(reply));
        });
  }

  void OnReply(uint64_t id, absl::StatusOr<redis::Reply> reply) {
    std::string kind;
    if (reply.ok() && reply->type == redis::Reply::Type::kArray && !reply->elements.empty()) {
      kind = reply->elements[0].str;
    }
    if (kind == "wait") {
      absl::MutexLock lock(&mu);
      auto it = waiting.find(id);
      if (it == waiting.end() || stopped) return;
      Waiting& w = it->second;
      w.waited = true;
      const absl::Duration pause = w.pause;
      w.pause = std::min(w.pause * 1.5, options.max_poll);
      std::weak_ptr<Core> weak = weak_from_this();
      w.timer = state->scheduler().RunAt(absl::Now() + pause, [weak, id] {
        if (auto core = weak.lock()) core->Attempt(id);
      });
      return;
    }
    const bool answered = kind == "run" || kind == "reused" || kind == "done";
    if (!answered) {
      // A blip or a slow answer while the shared state was thought up: try
      // again (a script that did run left this replica's own record, which
      // the next claim takes back).
      const bool deadline = !reply.ok() && reply.status().code() == absl::StatusCode::kDeadlineExceeded;
      absl::MutexLock lock(&mu);
      auto it = waiting.find(id);
      if (it == waiting.end()) return;
      if (!stopped && (deadline || state->shared()) && ++it->second.errors < 3) {
        std::weak_ptr<Core> weak = weak_from_this();
        it->second.timer = state->scheduler().RunAt(absl::Now() + options.retry_pause, [weak, id] {
          if (auto core = weak.lock()) core->Attempt(id);
        });
        return;
      }
    }
    std::optional<Waiting> w = Take(id);
    if (!w) return;
    RequestClaim claim;
    claim.waited = w->waited;
    if (kind == "run" && reply->elements.size() == 2) {
      long long age_us = -1;
      if (!absl::SimpleAtoi(reply->elements[1].str, &age_us)) age_us = -1;
      claim.kind = RequestClaim::Kind::kRun;
      if (age_us >= 0) claim.maybe_sent_since = absl::Now() - absl::Microseconds(age_us);
      StartRenewing(w->key);
    } else if (kind == "reused") {
      claim.kind = RequestClaim::Kind::kReused;
    } else if (kind == "done" && reply->elements.size() == 2 &&
               claim.action.ParseFromString(reply->elements[1].str)) {
      claim.kind = RequestClaim::Kind::kDone;
    } else {
      absl::Status error =
          !reply.ok() ? reply.status()
                      : MakeError(absl::StatusCode::kInternal,
                                  "Redis returned an unexpected request record",
                                  "REDIS_SCRIPT_ERROR");
      if (reply.ok() || reply.status().code() != absl::StatusCode::kDeadlineExceeded) {
        state->ReportFailure(error);  // (a call that never left this replica is not Redis's fault)
      }
      claim.kind = RequestClaim::Kind::kUnavailable;
      claim.error = std::move(error);
    }
    std::move(w->done)(std::move(claim));
  }

  void StartRenewing(const std::string& key) {
    absl::MutexLock lock(&mu);
    if (stopped) return;
    ScheduleRenewal(key);
  }

  void ScheduleRenewal(const std::string& key) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    std::weak_ptr<Core> weak = weak_from_this();
    renewals[key] = state->scheduler().RunAt(absl::Now() + options.lease / 4, [weak, key] {
      auto core = weak.lock();
      if (core == nullptr) return;
      {
        absl::MutexLock lock(&core->mu);
        if (core->stopped || core->renewals.count(key) == 0) return;
        core->ScheduleRenewal(key);
      }
      core->state->redis().Eval(kRenew, {RedisRequestKey(key)},
                                {core->state->options().replica_id, Micros(core->options.lease)},
                                absl::Now() + core->state->options().call_timeout,
                                [](absl::StatusOr<redis::Reply>) {});
    });
  }
};

SharedRequests::SharedRequests(SharedState& state, SharedRequestsOptions options)
    : core_(std::make_shared<Core>()) {
  core_->state = &state;
  core_->options = options;
}

SharedRequests::~SharedRequests() { Close(); }

void SharedRequests::Close() {
  std::map<uint64_t, Core::Waiting> waiting;
  {
    absl::MutexLock lock(&core_->mu);
    core_->stopped = true;
    waiting.swap(core_->waiting);
    for (auto& [key, timer] : core_->renewals) core_->state->scheduler().Cancel(timer);
    core_->renewals.clear();
    if (core_->record_timer != 0) core_->state->scheduler().Cancel(core_->record_timer);
  }
  for (auto& [id, w] : waiting) {
    if (w.timer != 0) core_->state->scheduler().Cancel(w.timer);
    RequestClaim claim;
    claim.kind = RequestClaim::Kind::kUnavailable;
    claim.waited = true;  // an error for the caller: no run starts while stopping
    claim.error = MakeError(absl::StatusCode::kUnavailable,
                            "the plugin is shutting down: call again", "SHUTTING_DOWN");
    std::move(w.done)(std::move(claim));
  }
}

void SharedRequests::Claim(const std::string& key, const std::string& params, ClaimDone done) {
  uint64_t id;
  {
    absl::MutexLock lock(&core_->mu);
    if (core_->stopped) {  // closed: an error, from the scheduler (never inside Claim)
      core_->state->scheduler().RunAt(absl::Now(), [done = std::move(done)]() mutable {
        RequestClaim claim;
        claim.kind = RequestClaim::Kind::kUnavailable;
        claim.waited = true;
        claim.error = MakeError(absl::StatusCode::kUnavailable,
                                "the plugin is shutting down: call again", "SHUTTING_DOWN");
        std::move(done)(std::move(claim));
      });
      return;
    }
    id = core_->next_id++;
    core_->waiting[id] = Core::Waiting{key, params, std::move(done)};
  }
  core_->Attempt(id);
}

void SharedRequests::Finish(const std::string& key,
                            const absl::StatusOr<v1::MachineAction>& result) {
  {
    absl::MutexLock lock(&core_->mu);
    auto it = core_->renewals.find(key);
    if (it != core_->renewals.end()) {
      core_->state->scheduler().Cancel(it->second);
      core_->renewals.erase(it);
    }
  }
  const std::string outcome =
      result.ok() ? "done" : OutcomeUnknown(result.status()) ? "unknown" : "none";
  core_->state->redis().Eval(
      kFinish, {RedisRequestKey(key)},
      {core_->state->options().replica_id, outcome,
       result.ok() ? result->SerializeAsString() : std::string(), Millis(core_->options.window)},
      absl::Now() + core_->state->options().call_timeout, [](absl::StatusOr<redis::Reply>) {});
}

void SharedRequests::Unclaimed(const std::string& key, const std::string& params,
                               const absl::StatusOr<v1::MachineAction>& result) {
  if (!result.ok() && !OutcomeUnknown(result.status())) return;  // nothing was created
  Core::Unrecorded record{params, result.ok() ? "done" : "unknown",
                          result.ok() ? result->SerializeAsString() : std::string()};
  {
    absl::ReleasableMutexLock lock(&core_->mu);
    if (core_->stopped) {  // closed: one write, no retries
      lock.Release();
      core_->WriteRecord(key, record);
      return;
    }
    if (core_->unrecorded.size() >= core_->options.max_unrecorded &&
        core_->unrecorded.count(key) == 0) {
      core_->unrecorded.erase(core_->unrecorded.begin());  // bounded: the budget of memory
    }
    core_->unrecorded[key] = record;
  }
  core_->WriteRecord(key, record);
}

size_t SharedRequests::Unrecorded() const {
  absl::MutexLock lock(&core_->mu);
  return core_->unrecorded.size();
}

}  // namespace defender
