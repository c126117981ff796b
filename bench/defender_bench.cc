// defender-bench: the load generators and probes of bench/run (not a test).
//
//   defender-bench grpc    --target HOST:PORT --concurrency N --seconds S ...
//       N closed-loop callers of ResponseService.QuarantineFile (gRPC
//       callback API, one channel): each sends its next call as soon as the
//       last one is answered.
//   defender-bench direct  --url https://HOST:PORT --ca FILE --concurrency N ...
//       the ceiling: the same POST /api/machines/{id}/StopAndQuarantineFile
//       sent straight to the API with libcurl's multi interface, N transfers
//       in flight on one thread, connections and TLS sessions reused.
//   With --rate R (grpc and direct), the N callers are paced instead: a call
//   starts every 1/R s on a free caller (a tick finding none is counted as
//   "missed"), so both paths can be compared at the same offered load, below
//   saturation, where latency is the path's own and not queueing.
//   defender-bench hold    --target HOST:PORT --calls N ...
//       N QuarantineFile calls at once, left waiting (on the plugin's rate
//       limiter); prints {"sent": N} then waits for a line on stdin, cancels
//       every call still waiting and prints how each call ended.
//   defender-bench serving --target HOST:PORT --since-monotonic-ns T0
//       polls grpc.health.v1.Health until SERVING; prints the milliseconds
//       since T0 (CLOCK_MONOTONIC, e.g. Python's time.monotonic_ns()).
//
// Every mode prints one JSON object on stdout. Each call quarantines a
// different SHA-1 (--tag, then a counter), so the API never refuses one as a
// repeat of an action in progress.
#include <curl/curl.h>
#include <time.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdio>
#include <iostream>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include <grpcpp/grpcpp.h>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "defender/v1/response_service.grpc.pb.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "nlohmann/json.hpp"

namespace {

using json = nlohmann::ordered_json;

constexpr char kUsage[] =
    "usage: defender-bench MODE [flags]\n"
    "  grpc    --target HOST:PORT --concurrency N --seconds S [--warmup-seconds W]\n"
    "          [--rate R] [--machine ID] [--tag HEX8] [--tenant T] [--request-ids 1]\n"
    "  direct  --url https://HOST:PORT --ca FILE --concurrency N --seconds S\n"
    "          [--warmup-seconds W] [--rate R] [--machine ID] [--tag HEX8] [--tenant-id ID]\n"
    "          [--client-id ID] (secret: $BENCH_CLIENT_SECRET) [--scope SCOPE]\n"
    "          [--fresh-connect 1] (a new connection per POST)\n"
    "  hold    --target HOST:PORT --calls N [--deadline-seconds D] [--machine ID] [--tag HEX8]\n"
    "  serving --target HOST:PORT --since-monotonic-ns T0 [--timeout-seconds S]\n";

[[noreturn]] void Usage(const std::string& message) {
  std::cerr << "defender-bench: " << message << "\n" << kUsage;
  std::exit(2);
}

int64_t MonotonicNs() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return int64_t{ts.tv_sec} * 1000000000 + ts.tv_nsec;
}

// Flags are --name value pairs after the mode.
class Flags {
 public:
  Flags(int argc, char** argv) {
    for (int i = 2; i < argc; i += 2) {
      std::string name = argv[i];
      if (name.rfind("--", 0) != 0 || i + 1 >= argc) Usage("flags are --name value pairs");
      values_[name.substr(2)] = argv[i + 1];
    }
  }
  std::string Str(const std::string& name, const std::string& fallback = "") {
    used_.push_back(name);
    auto it = values_.find(name);
    if (it != values_.end()) return it->second;
    if (fallback.empty()) Usage(absl::StrCat("--", name, " is required"));
    return fallback;
  }
  int64_t Int(const std::string& name, int64_t fallback = -1) {
    used_.push_back(name);
    auto it = values_.find(name);
    if (it == values_.end()) {
      if (fallback < 0) Usage(absl::StrCat("--", name, " is required"));
      return fallback;
    }
    int64_t v = 0;
    if (!absl::SimpleAtoi(it->second, &v) || v < 0) {
      Usage(absl::StrCat("--", name, " wants a whole number"));
    }
    return v;
  }
  double Double(const std::string& name, double fallback) {
    used_.push_back(name);
    auto it = values_.find(name);
    if (it == values_.end()) return fallback;
    double v = 0;
    if (!absl::SimpleAtod(it->second, &v) || v < 0) {
      Usage(absl::StrCat("--", name, " wants a number"));
    }
    return v;
  }
  // CheckAllUsed refuses flags the mode does not know.
  void CheckAllUsed() const {
    for (const auto& [name, value] : values_) {
      if (std::find(used_.begin(), used_.end(), name) == used_.end()) {
        Usage(absl::StrCat("unknown flag --", name));
      }
    }
  }

 private:
  std::map<std::string, std::string> values_;
  std::vector<std::string> used_;
};

constexpr char kDefaultMachine[] = "1e5bc9d7e413ddd7902c2932e418702b84d0cc07";
constexpr char kDefaultTag[] = "0000000f";

// Sha1For makes the n-th distinct SHA-1 of a run: the 8-hex-digit tag, then n.
std::string Sha1For(const std::string& tag, uint64_t n) {  // tag: 8 hex digits
  return absl::StrFormat("%s%032x", tag, n);
}

// Samples are per-caller latency records, merged at the end.
struct Samples {
  std::vector<int64_t> latency_ns;  // calls completed inside the window
  int64_t ok = 0;
  std::map<std::string, int64_t> errors;  // by code
};

json Report(const std::string& mode, int concurrency, double window_s,
            const std::vector<Samples>& per_caller, double rate = 0, int64_t missed = 0) {
  std::vector<int64_t> all;
  int64_t ok = 0;
  std::map<std::string, int64_t> errors;
  for (const Samples& s : per_caller) {
    all.insert(all.end(), s.latency_ns.begin(), s.latency_ns.end());
    ok += s.ok;
    for (const auto& [code, n] : s.errors) errors[code] += n;
  }
  std::sort(all.begin(), all.end());
  auto pct = [&all](double p) -> double {
    if (all.empty()) return 0;
    size_t i = std::min(all.size() - 1, static_cast<size_t>(p * static_cast<double>(all.size())));
    return static_cast<double>(all[i]) / 1e6;
  };
  json j;
  j["mode"] = mode;
  j["concurrency"] = concurrency;
  j["seconds"] = window_s;
  j["ok"] = ok;
  j["errors"] = errors;
  j["rps"] = window_s > 0 ? static_cast<double>(ok) / window_s : 0;
  j["p50_ms"] = pct(0.50);
  j["p99_ms"] = pct(0.99);
  if (rate > 0) {
    j["offered_rps"] = rate;
    j["missed_ticks"] = missed;
  }
  return j;
}

// ---------------------------------------------------------------------------
// grpc: closed-loop QuarantineFile callers.

class GrpcLoad {
 public:
  GrpcLoad(std::shared_ptr<grpc::Channel> channel, int concurrency, std::string machine,
           std::string tag, std::string tenant, double rate)
      : rate_(rate),
        stub_(defender::v1::ResponseService::NewStub(channel)),
        machine_(std::move(machine)),
        tag_(std::move(tag)),
        tenant_(std::move(tenant)),
        callers_(static_cast<size_t>(concurrency)) {}

  json Run(absl::Duration warmup, absl::Duration window) {
    const int64_t start = MonotonicNs();
    window_start_ = start + absl::ToInt64Nanoseconds(warmup);
    window_end_ = window_start_ + absl::ToInt64Nanoseconds(window);
    if (rate_ > 0) {
      Pace();
    } else {
      for (Caller& c : callers_) Next(c);
    }
    absl::MutexLock lock(&mu_);
    mu_.Await(absl::Condition(
        +[](GrpcLoad* self) { return self->finished_ == self->callers_.size(); }, this));
    std::vector<Samples> samples;
    for (Caller& c : callers_) samples.push_back(std::move(c.samples));
    return Report("grpc", static_cast<int>(callers_.size()), absl::ToDoubleSeconds(window),
                  samples, rate_, missed_);
  }

 private:
  struct Caller {
    std::atomic<bool> busy{false};  // paced mode: a call is in flight
    std::unique_ptr<grpc::ClientContext> context;
    defender::v1::QuarantineFileRequest request;
    defender::v1::QuarantineFileResponse response;
    int64_t sent_ns = 0;
    Samples samples;
  };

  // Pace starts a call every 1/rate_ s on a free caller until the window
  // ends, then marks each caller finished once it is idle.
  void Pace() {
    const int64_t interval = static_cast<int64_t>(1e9 / rate_);
    int64_t next = MonotonicNs();
    size_t round_robin = 0;
    while (next < window_end_) {
      int64_t now = MonotonicNs();
      if (now < next) {
        std::this_thread::sleep_for(std::chrono::nanoseconds(next - now));
      }
      bool sent = false;
      for (size_t i = 0; i < callers_.size() && !sent; ++i) {
        Caller& c = callers_[(round_robin + i) % callers_.size()];
        bool idle = false;
        if (c.busy.compare_exchange_strong(idle, true)) {
          round_robin = (round_robin + i + 1) % callers_.size();
          Send(c);
          sent = true;
        }
      }
      if (!sent && next >= window_start_) ++missed_;
      next += interval;
    }
    for (Caller& c : callers_) {
      while (c.busy.load()) std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    absl::MutexLock lock(&mu_);
    finished_ = callers_.size();
  }

  void Next(Caller& c) {
    if (rate_ > 0) {
      c.busy.store(false);
      return;
    }
    if (MonotonicNs() >= window_end_) {
      absl::MutexLock lock(&mu_);
      ++finished_;
      return;
    }
    Send(c);
  }

  void Send(Caller& c) {
    c.context = std::make_unique<grpc::ClientContext>();
    c.context->set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(60));
    c.request.set_machine_id(machine_);
    const uint64_t n = counter_.fetch_add(1);
    c.request.set_sha1(Sha1For(tag_, n));
    // A fresh request_id per call: the exactly-once path (journal, shared claims).
    if (request_ids_) c.request.set_request_id(absl::StrCat("bench-", tag_, "-", n));
    c.request.set_comment("defender-bench");
    if (!tenant_.empty()) c.request.set_tenant(tenant_);
    c.response.Clear();
    c.sent_ns = MonotonicNs();
    stub_->async()->QuarantineFile(c.context.get(), &c.request, &c.response,
                                   [this, &c](grpc::Status status) { Done(c, status); });
  }

  void Done(Caller& c, const grpc::Status& status) {
    const int64_t now = MonotonicNs();
    if (now >= window_start_ && now < window_end_) {
      if (status.ok()) {
        ++c.samples.ok;
        c.samples.latency_ns.push_back(now - c.sent_ns);
      } else {
        ++c.samples.errors[absl::StrCat(status.error_code())];
        if (time_errors_) c.samples.latency_ns.push_back(now - c.sent_ns);
        if (c.samples.errors.size() == 1 && first_error_.exchange(true) == false) {
          std::cerr << "defender-bench: first error: " << status.error_code() << " "
                    << status.error_message() << "\n";
        }
      }
    }
    Next(c);
  }

  const double rate_;  // 0 = closed loop
 public:
  bool time_errors_ = false;  // latency samples include failed calls
  bool request_ids_ = false;  // each call carries a new request_id
 private:
  int64_t missed_ = 0;
  std::unique_ptr<defender::v1::ResponseService::Stub> stub_;
  const std::string machine_, tag_, tenant_;
  std::vector<Caller> callers_;
  std::atomic<uint64_t> counter_{0};
  std::atomic<bool> first_error_{false};
  int64_t window_start_ = 0, window_end_ = 0;
  absl::Mutex mu_;
  size_t finished_ ABSL_GUARDED_BY(mu_) = 0;
};

// LoadFlags are the flags grpc and direct share.
struct LoadFlags {
  int concurrency = 0;
  double seconds = 0, warmup = 0, rate = 0;
  std::string machine, tag;
};

LoadFlags ReadLoadFlags(Flags& f) {
  LoadFlags l;
  l.concurrency = static_cast<int>(f.Int("concurrency"));
  if (l.concurrency < 1) Usage("--concurrency must be at least 1");
  l.seconds = f.Double("seconds", 3);
  l.warmup = f.Double("warmup-seconds", 0.5);
  l.rate = f.Double("rate", 0);
  l.machine = f.Str("machine", kDefaultMachine);
  l.tag = f.Str("tag", kDefaultTag);  // checked by main
  return l;
}

int RunGrpc(Flags& f) {
  const std::string target = f.Str("target");
  const LoadFlags l = ReadLoadFlags(f);
  const std::string tenant = f.Str("tenant", "-");
  // Failed calls' latency too (e.g. to time validation errors alone).
  const bool time_errors = f.Int("time-errors", 0) != 0;
  const bool request_ids = f.Int("request-ids", 0) != 0;
  f.CheckAllUsed();
  auto channel = grpc::CreateChannel(target, grpc::InsecureChannelCredentials());
  if (!channel->WaitForConnected(std::chrono::system_clock::now() + std::chrono::seconds(10))) {
    std::cerr << "defender-bench: cannot connect to " << target << "\n";
    return 1;
  }
  GrpcLoad load(channel, l.concurrency, l.machine, l.tag, tenant == "-" ? "" : tenant, l.rate);
  load.time_errors_ = time_errors;
  load.request_ids_ = request_ids;
  std::cout << load.Run(absl::Seconds(l.warmup), absl::Seconds(l.seconds)).dump() << std::endl;
  return 0;
}

// ---------------------------------------------------------------------------
// direct: the same POSTs straight to the API, libcurl multi, one thread.

size_t Collect(char* data, size_t size, size_t n, void* out) {
  static_cast<std::string*>(out)->append(data, size * n);
  return size * n;
}

// CurlPost is one prepared easy handle.
struct CurlPost {
  CURL* easy = nullptr;
  curl_slist* headers = nullptr;
  std::string body, response;
  int64_t sent_ns = 0;
  Samples samples;
};

void PrepareCommon(CURL* easy, const std::string& ca) {
  curl_easy_setopt(easy, CURLOPT_CAINFO, ca.c_str());
  curl_easy_setopt(easy, CURLOPT_SSL_VERIFYPEER, 1L);
  curl_easy_setopt(easy, CURLOPT_SSL_VERIFYHOST, 2L);
  curl_easy_setopt(easy, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(easy, CURLOPT_HTTP_VERSION, static_cast<long>(CURL_HTTP_VERSION_2TLS));
  curl_easy_setopt(easy, CURLOPT_TIMEOUT_MS, 60000L);
}

// FetchToken gets one client-credentials token, as any script would.
std::string FetchToken(const std::string& url, const std::string& ca, const std::string& tenant,
                       const std::string& client_id, const std::string& secret,
                       const std::string& scope) {
  CURL* easy = curl_easy_init();
  PrepareCommon(easy, ca);
  auto escape = [easy](const std::string& s) {
    char* e = curl_easy_escape(easy, s.c_str(), static_cast<int>(s.size()));
    std::string out(e);
    curl_free(e);
    return out;
  };
  const std::string form = absl::StrCat("grant_type=client_credentials&client_id=",
                                        escape(client_id), "&client_secret=", escape(secret),
                                        "&scope=", escape(scope));
  const std::string token_url = absl::StrCat(url, "/", tenant, "/oauth2/v2.0/token");
  std::string response;
  curl_easy_setopt(easy, CURLOPT_URL, token_url.c_str());
  curl_easy_setopt(easy, CURLOPT_POSTFIELDS, form.c_str());
  curl_easy_setopt(easy, CURLOPT_WRITEFUNCTION, &Collect);
  curl_easy_setopt(easy, CURLOPT_WRITEDATA, &response);
  CURLcode rc = curl_easy_perform(easy);
  long code = 0;
  curl_easy_getinfo(easy, CURLINFO_RESPONSE_CODE, &code);
  curl_easy_cleanup(easy);
  json j = json::parse(response, nullptr, false);
  if (rc != CURLE_OK || code != 200 || !j.is_object() || !j["access_token"].is_string()) {
    std::cerr << "defender-bench: token request failed (curl " << rc << ", HTTP " << code
              << ")\n";
    std::exit(1);
  }
  return j["access_token"].get<std::string>();
}

int RunDirect(Flags& f) {
  const std::string url = f.Str("url");
  const std::string ca = f.Str("ca");
  const LoadFlags l = ReadLoadFlags(f);
  const int concurrency = l.concurrency;
  const double seconds = l.seconds, rate = l.rate;
  const std::string& tag = l.tag;
  const std::string tenant = f.Str("tenant-id", "11111111-1111-1111-1111-111111111111");
  const std::string client_id = f.Str("client-id", "22222222-2222-2222-2222-222222222222");
  const std::string scope = f.Str("scope", "https://api.securitycenter.microsoft.com/.default");
  const bool fresh = f.Int("fresh-connect", 0) != 0;
  f.CheckAllUsed();
  const char* secret = std::getenv("BENCH_CLIENT_SECRET");
  curl_global_init(CURL_GLOBAL_DEFAULT);
  const std::string token = FetchToken(url, ca, tenant, client_id,
                                       secret != nullptr ? secret : "sandbox-secret", scope);
  const std::string post_url =
      absl::StrCat(url, "/api/machines/", l.machine, "/StopAndQuarantineFile");
  const std::string authorization = absl::StrCat("Authorization: Bearer ", token);

  CURLM* multi = curl_multi_init();
  std::vector<CurlPost> posts(static_cast<size_t>(concurrency));
  uint64_t counter = 0;
  const int64_t window_start = MonotonicNs() + static_cast<int64_t>(l.warmup * 1e9);
  const int64_t window_end = window_start + static_cast<int64_t>(seconds * 1e9);
  auto send = [&](CurlPost& p) {
    p.body = json{{"Comment", "defender-bench"}, {"Sha1", Sha1For(tag, counter++)}}.dump();
    p.response.clear();
    curl_easy_setopt(p.easy, CURLOPT_POSTFIELDSIZE, static_cast<long>(p.body.size()));
    curl_easy_setopt(p.easy, CURLOPT_POSTFIELDS, p.body.c_str());
    p.sent_ns = MonotonicNs();
    curl_multi_add_handle(multi, p.easy);
  };
  std::vector<CurlPost*> idle;  // paced mode: handles with no transfer
  for (CurlPost& p : posts) {
    p.easy = curl_easy_init();
    PrepareCommon(p.easy, ca);
    p.headers = curl_slist_append(p.headers, authorization.c_str());
    p.headers = curl_slist_append(p.headers, "Content-Type: application/json");
    curl_easy_setopt(p.easy, CURLOPT_URL, post_url.c_str());
    curl_easy_setopt(p.easy, CURLOPT_HTTPHEADER, p.headers);
    curl_easy_setopt(p.easy, CURLOPT_WRITEFUNCTION, &Collect);
    curl_easy_setopt(p.easy, CURLOPT_WRITEDATA, &p.response);
    curl_easy_setopt(p.easy, CURLOPT_PRIVATE, &p);
    if (fresh) curl_easy_setopt(p.easy, CURLOPT_FRESH_CONNECT, 1L);
    if (rate > 0) {
      idle.push_back(&p);
    } else {
      send(p);
    }
  }
  int running = rate > 0 ? 0 : concurrency;
  const int64_t interval = rate > 0 ? static_cast<int64_t>(1e9 / rate) : 0;
  int64_t next_tick = MonotonicNs();
  int64_t missed = 0;
  bool first_error = true;
  while (running > 0 || (rate > 0 && next_tick < window_end)) {
    if (rate > 0) {
      for (int64_t now = MonotonicNs(); next_tick <= now && next_tick < window_end;
           next_tick += interval) {
        if (idle.empty()) {
          if (next_tick >= window_start) ++missed;
          continue;
        }
        CurlPost* p = idle.back();
        idle.pop_back();
        ++running;
        send(*p);
      }
    }
    int still = 0;
    curl_multi_perform(multi, &still);
    int queued = 0;
    while (CURLMsg* msg = curl_multi_info_read(multi, &queued)) {
      if (msg->msg != CURLMSG_DONE) continue;
      CurlPost* p = nullptr;
      curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, reinterpret_cast<char**>(&p));
      const CURLcode rc = msg->data.result;
      long code = 0;
      curl_easy_getinfo(msg->easy_handle, CURLINFO_RESPONSE_CODE, &code);
      curl_multi_remove_handle(multi, msg->easy_handle);
      const int64_t now = MonotonicNs();
      if (now >= window_start && now < window_end) {
        if (rc == CURLE_OK && code == 201) {
          ++p->samples.ok;
          p->samples.latency_ns.push_back(now - p->sent_ns);
        } else {
          const std::string key = rc != CURLE_OK ? absl::StrCat("curl_", rc) : absl::StrCat(code);
          ++p->samples.errors[key];
          if (first_error) {
            first_error = false;
            std::cerr << "defender-bench: first error: " << key << " " << p->response << "\n";
          }
        }
      }
      if (rate > 0) {
        idle.push_back(p);
        --running;
      } else if (now < window_end) {
        send(*p);
      } else {
        --running;
      }
    }
    int wait_ms = 100;
    if (rate > 0 && next_tick < window_end) {
      wait_ms = static_cast<int>(std::max<int64_t>(0, (next_tick - MonotonicNs()) / 1000000));
    }
    if (running > 0 || (rate > 0 && next_tick < window_end)) {
      curl_multi_poll(multi, nullptr, 0, wait_ms, nullptr);
    }
  }
  std::vector<Samples> samples;
  for (CurlPost& p : posts) {
    samples.push_back(std::move(p.samples));
    curl_easy_cleanup(p.easy);
    curl_slist_free_all(p.headers);
  }
  curl_multi_cleanup(multi);
  std::cout << Report("direct", concurrency, seconds, samples, rate, missed).dump() << std::endl;
  return 0;
}

// ---------------------------------------------------------------------------
// hold: many calls at once, left waiting, then cancelled.

int RunHold(Flags& f) {
  const std::string target = f.Str("target");
  const int calls = static_cast<int>(f.Int("calls"));
  const int64_t deadline_s = f.Int("deadline-seconds", 7200);
  const std::string machine = f.Str("machine", kDefaultMachine);
  const std::string tag = f.Str("tag", kDefaultTag);
  f.CheckAllUsed();
  auto channel = grpc::CreateChannel(target, grpc::InsecureChannelCredentials());
  if (!channel->WaitForConnected(std::chrono::system_clock::now() + std::chrono::seconds(10))) {
    std::cerr << "defender-bench: cannot connect to " << target << "\n";
    return 1;
  }
  auto stub = defender::v1::ResponseService::NewStub(channel);
  struct Call {
    grpc::ClientContext context;
    defender::v1::QuarantineFileRequest request;
    defender::v1::QuarantineFileResponse response;
  };
  std::vector<std::unique_ptr<Call>> all;
  absl::Mutex mu;
  int done = 0;
  bool cancelling = false;
  std::map<std::string, int> before, after;  // outcome by code, before / after cancel
  const auto deadline = std::chrono::system_clock::now() + std::chrono::seconds(deadline_s);
  for (int i = 0; i < calls; ++i) {
    auto call = std::make_unique<Call>();
    call->context.set_deadline(deadline);
    call->request.set_machine_id(machine);
    call->request.set_sha1(Sha1For(tag, static_cast<uint64_t>(i)));
    call->request.set_comment("defender-bench hold");
    Call* c = call.get();
    all.push_back(std::move(call));
    stub->async()->QuarantineFile(&c->context, &c->request, &c->response,
                                  [&](grpc::Status status) {
                                    absl::MutexLock lock(&mu);
                                    ++(cancelling ? after : before)[absl::StrCat(
                                        status.error_code())];
                                    ++done;
                                  });
  }
  std::cout << json{{"sent", calls}}.dump() << std::endl;
  std::string line;
  std::getline(std::cin, line);
  int finished_before = 0;
  {
    absl::MutexLock lock(&mu);
    cancelling = true;
    finished_before = done;
  }
  for (auto& c : all) c->context.TryCancel();
  {
    absl::MutexLock lock(&mu);
    struct AllDone {
      const int* done;
      int calls;
      bool operator()() const { return *done == calls; }
    } all_done{&done, calls};
    mu.Await(absl::Condition(&all_done, &AllDone::operator()));
  }
  json j{{"mode", "hold"},
         {"calls", calls},
         {"answered_before_cancel", finished_before},
         {"waiting_at_cancel", calls - finished_before},
         {"before_cancel_by_code", before},
         {"after_cancel_by_code", after}};
  std::cout << j.dump() << std::endl;
  return 0;
}

// ---------------------------------------------------------------------------
// serving: time until the health service answers SERVING.

int RunServing(Flags& f) {
  const std::string target = f.Str("target");
  const int64_t since = f.Int("since-monotonic-ns");
  const double timeout_s = f.Double("timeout-seconds", 10);
  f.CheckAllUsed();
  const int64_t give_up = MonotonicNs() + static_cast<int64_t>(timeout_s * 1e9);
  int attempts = 0;
  while (MonotonicNs() < give_up) {
    // A fresh channel per attempt: a refused connection puts a channel into
    // backoff (up to a second), which would be measured instead of the plugin.
    auto channel = grpc::CreateChannel(target, grpc::InsecureChannelCredentials());
    auto stub = grpc::health::v1::Health::NewStub(channel);
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(200));
    grpc::health::v1::HealthCheckRequest request;
    grpc::health::v1::HealthCheckResponse response;
    ++attempts;
    grpc::Status status = stub->Check(&context, request, &response);
    if (status.ok() && response.status() == grpc::health::v1::HealthCheckResponse::SERVING) {
      const double ms = static_cast<double>(MonotonicNs() - since) / 1e6;
      std::cout << json{{"mode", "serving"}, {"ms", ms}, {"attempts", attempts}}.dump()
                << std::endl;
      return 0;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  std::cerr << "defender-bench: " << target << " did not become SERVING\n";
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) Usage("a mode is required");
  const std::string mode = argv[1];
  Flags flags(argc, argv);
  const std::string tag = flags.Str("tag", kDefaultTag);
  if (tag.size() != 8 || tag.find_first_not_of("0123456789abcdef") != std::string::npos) {
    Usage("--tag wants 8 lowercase hex digits");
  }
  if (mode == "grpc") return RunGrpc(flags);
  if (mode == "direct") return RunDirect(flags);
  if (mode == "hold") return RunHold(flags);
  if (mode == "serving") return RunServing(flags);
  Usage(absl::StrCat("unknown mode ", mode));
}
