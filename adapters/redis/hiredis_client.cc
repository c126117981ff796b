#include "adapters/redis/hiredis_client.h"

#include <hiredis/hiredis.h>
#include <pthread.h>
#include <signal.h>
#include <sys/time.h>

#include <algorithm>
#include <cerrno>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "adapters/common/error.h"

namespace defender::redis {
namespace {

timeval AtLeastAMillisecond(absl::Duration d) {
  d = std::max(d, absl::Milliseconds(1));
  return absl::ToTimeval(d);
}

absl::Status Unavailable(const RedisUrl& url, absl::string_view why) {
  return MakeError(absl::StatusCode::kUnavailable,
                   absl::StrCat("Redis at ", url.Display(), " is unavailable: ", why),
                   "REDIS_UNAVAILABLE");
}

Reply Convert(const redisReply& r) {
  Reply out;
  switch (r.type) {
    case REDIS_REPLY_INTEGER:
      out.type = Reply::Type::kInteger;
      out.integer = r.integer;
      break;
    case REDIS_REPLY_STRING:
    case REDIS_REPLY_STATUS:
      out.type = Reply::Type::kString;
      out.str.assign(r.str, r.len);
      break;
    case REDIS_REPLY_ARRAY:
      out.type = Reply::Type::kArray;
      out.elements.reserve(r.elements);
      for (size_t i = 0; i < r.elements; ++i) out.elements.push_back(Convert(*r.element[i]));
      break;
    default:
      break;  // nil
  }
  return out;
}

struct ReplyDeleter {
  void operator()(redisReply* r) const { freeReplyObject(r); }
};
using ReplyPtr = std::unique_ptr<redisReply, ReplyDeleter>;

}  // namespace

std::unique_ptr<HiredisClient> HiredisClient::Create(HiredisClientOptions options) {
  std::unique_ptr<HiredisClient> client(new HiredisClient(std::move(options)));
  client->thread_ = std::thread([c = client.get()] { c->Run(); });
  return client;
}

HiredisClient::HiredisClient(HiredisClientOptions options) : options_(std::move(options)) {}

HiredisClient::~HiredisClient() {
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
  }
  thread_.join();
  Disconnect();
}

void HiredisClient::Eval(const Script& script, std::vector<std::string> keys,
                         std::vector<std::string> args, absl::Time deadline, Callback done) {
  absl::MutexLock lock(&mu_);
  queue_.push_back(Call{&script, std::move(keys), std::move(args), deadline, std::move(done)});
}

void HiredisClient::Run() {
  // A write to a connection Redis has reset raises SIGPIPE in the writing
  // thread, which would end the process: blocked here, the write fails with
  // EPIPE instead and the call gets UNAVAILABLE.
  sigset_t pipe;
  sigemptyset(&pipe);
  sigaddset(&pipe, SIGPIPE);
  pthread_sigmask(SIG_BLOCK, &pipe, nullptr);
  while (true) {
    std::vector<Call> calls;
    bool stopping;
    {
      absl::MutexLock lock(&mu_);
      auto ready = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
        return stopping_ || !queue_.empty();
      };
      mu_.Await(absl::Condition(&ready));
      if (stopping_ && queue_.empty()) return;
      for (Call& call : queue_) calls.push_back(std::move(call));
      queue_.clear();
      stopping = stopping_;
    }
    if (!stopping) {
      RunBatch(calls);
      continue;
    }
    // Closing: fail what is queued (outside the lock: a callback may Eval again,
    // which only queues; the next turn fails that too).
    for (Call& call : calls) {
      std::move(call.done)(Unavailable(options_.url, "the client is closing"));
    }
  }
}

bool HiredisClient::Connect(std::string& error) {
  timeval timeout = AtLeastAMillisecond(options_.connect_timeout);
  redisContext* c = redisConnectWithTimeout(options_.url.host.c_str(), options_.url.port, timeout);
  if (c == nullptr || c->err != 0) {
    error = c != nullptr ? c->errstr : "out of memory";
    if (c != nullptr) redisFree(c);
    return false;
  }
  redisEnableKeepAlive(c);
  if (options_.url.db != 0) {
    redisSetTimeout(c, AtLeastAMillisecond(options_.command_timeout));
    ReplyPtr r(static_cast<redisReply*>(redisCommand(c, "SELECT %d", options_.url.db)));
    if (r == nullptr || r->type == REDIS_REPLY_ERROR) {
      error = r == nullptr ? c->errstr : absl::StrCat("SELECT ", options_.url.db, ": ", r->str);
      redisFree(c);
      return false;
    }
  }
  context_ = c;
  return true;
}

void HiredisClient::Disconnect() {
  if (context_ != nullptr) redisFree(context_);
  context_ = nullptr;
  loaded_.clear();
}

void HiredisClient::RunBatch(std::vector<Call>& calls) {
  absl::Time now = absl::Now();
  // Calls whose deadline has passed are not sent.
  std::vector<Call> live;
  for (Call& call : calls) {
    if (call.deadline <= now) {
      std::move(call.done)(MakeError(absl::StatusCode::kDeadlineExceeded,
                                     "the call's deadline passed before it reached Redis",
                                     "REDIS_QUEUE_TIMEOUT"));
    } else {
      live.push_back(std::move(call));
    }
  }
  if (live.empty()) return;
  if (context_ == nullptr) {
    std::string error = "not connected";
    if (now < next_connect_ || !Connect(error)) {
      if (now >= next_connect_) next_connect_ = now + options_.reconnect_pause;
      for (Call& call : live) std::move(call.done)(Unavailable(options_.url, error));
      return;
    }
  }
  absl::Time latest = now;
  for (const Call& call : live) latest = std::max(latest, call.deadline);
  redisSetTimeout(context_, AtLeastAMillisecond(std::min(latest - now, options_.command_timeout)));

  auto append = [this](const Call& call, bool by_sha) {
    by_sha = by_sha && loaded_.count(call.script->sha1()) > 0;
    std::vector<const char*> argv;
    std::vector<size_t> lens;
    std::string nkeys = absl::StrCat(call.keys.size());
    auto add = [&](const std::string& s) {
      argv.push_back(s.data());
      lens.push_back(s.size());
    };
    static const std::string kEvalSha = "EVALSHA", kEval = "EVAL";
    add(by_sha ? kEvalSha : kEval);
    add(by_sha ? call.script->sha1() : call.script->body());
    add(nkeys);
    for (const std::string& k : call.keys) add(k);
    for (const std::string& a : call.args) add(a);
    return redisAppendCommandArgv(context_, static_cast<int>(argv.size()), argv.data(),
                                  lens.data()) == REDIS_OK;
  };
  // Two rounds at most: EVALSHA for all, then EVAL for the NOSCRIPT ones.
  for (int round = 0; round < 2 && !live.empty(); ++round) {
    bool by_sha = round == 0;
    size_t appended = 0;
    for (; appended < live.size(); ++appended) {
      if (!append(live[appended], by_sha)) break;
    }
    std::vector<Call> unknown_script;
    std::string broken;
    for (size_t i = 0; i < live.size(); ++i) {
      if (broken.empty() && i >= appended) broken = "could not queue the command";
      void* raw = nullptr;
      if (broken.empty() && redisGetReply(context_, &raw) != REDIS_OK) {
        broken = context_->errstr[0] != '\0' ? context_->errstr : "the connection broke";
        if (context_->err == REDIS_ERR_IO && (errno == EAGAIN || errno == EWOULDBLOCK)) {
          broken = "no answer in time";
        }
      }
      if (!broken.empty()) {
        std::move(live[i].done)(Unavailable(options_.url, broken));
        continue;
      }
      ReplyPtr reply(static_cast<redisReply*>(raw));
      if (reply->type == REDIS_REPLY_ERROR) {
        std::string message(reply->str, reply->len);
        if (by_sha && absl::StartsWith(message, "NOSCRIPT")) {
          loaded_.erase(live[i].script->sha1());
          unknown_script.push_back(std::move(live[i]));
          continue;
        }
        std::move(live[i].done)(MakeError(absl::StatusCode::kInternal,
                                          absl::StrCat("Redis refused a script: ", message),
                                          "REDIS_SCRIPT_ERROR"));
        continue;
      }
      loaded_.insert(live[i].script->sha1());
      std::move(live[i].done)(Convert(*reply));
    }
    if (!broken.empty()) {
      Disconnect();  // replies in flight are lost: the next batch reconnects
      for (Call& call : unknown_script) std::move(call.done)(Unavailable(options_.url, broken));
      return;
    }
    live = std::move(unknown_script);
  }
  for (Call& call : live) {  // NOSCRIPT even after EVAL: should not happen
    std::move(call.done)(MakeError(absl::StatusCode::kInternal, "Redis did not load a script",
                                   "REDIS_SCRIPT_ERROR"));
  }
}

}  // namespace defender::redis
