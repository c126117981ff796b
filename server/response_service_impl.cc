#include "server/response_service_impl.h"

#include <atomic>
#include <utility>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "adapters/common/cancellation.h"
#include "adapters/common/error.h"
#include "google/protobuf/util/json_util.h"
#include "server/call_log.h"
#include "server/log.h"
#include "server/status_conversion.h"
#include "server/stream_sink.h"
#include "server/validation.h"

namespace defender {
namespace {

// CallReactor is a unary reactor whose cancellation (the caller went away or
// its deadline passed) raises a Cancellation that stops the upstream work.
class CallReactor final : public grpc::ServerUnaryReactor {
 public:
  const std::shared_ptr<Cancellation>& cancellation() const { return cancellation_; }
  void OnCancel() override { cancellation_->Cancel(); }
  void OnDone() override { delete this; }

 private:
  std::shared_ptr<Cancellation> cancellation_ = std::make_shared<Cancellation>();
};

// FinishCall ends `reactor` with `status`, writing the call's line first. The
// reactor may be gone once this returns.
void FinishCall(grpc::ServerUnaryReactor* reactor, CallLog& log, const absl::Status& status) {
  log.Finish(status);
  reactor->Finish(ToGrpcStatus(status));
}

// TenantName is the tenant a request names, for the journal.
std::string TenantName(const std::string& tenant) {
  return tenant.empty() ? kDefaultTenantName : tenant;
}

// TenantForLog is the caller's tenant name made safe for one log line.
std::string TenantForLog(const std::string& tenant) {
  if (tenant.empty()) return kDefaultTenantName;
  return absl::CHexEscape(tenant.substr(0, 64));
}

// Canonical is `message` as the params a request id is bound to.
std::string Canonical(absl::string_view method, const google::protobuf::Message& message) {
  std::string json;
  (void)google::protobuf::util::MessageToJsonString(message, &json);
  return absl::StrCat(method, " ", json);
}

// QuarantineParams is a QuarantineFileRequest without its request_id, with
// hashes and ids in lower case: what a repeat must match.
v1::QuarantineFileRequest Normalized(v1::QuarantineFileRequest request) {
  request.clear_request_id();
  request.set_machine_id(absl::AsciiStrToLower(request.machine_id()));
  request.set_sha1(absl::AsciiStrToLower(request.sha1()));
  request.set_sha256(absl::AsciiStrToLower(request.sha256()));
  return request;
}

// Target is one device and file to quarantine, as the caller named them.
struct Target {
  std::string machine_id;
  std::string computer_dns_name;
  std::string sha1;
  std::string sha256;
  std::string comment;
};

// QuarantineWork resolves the target and asks Defender, as one ledger work.
RequestLedger::Work QuarantineWork(std::shared_ptr<api::DefenderClient> client,
                                   TargetResolver& resolver, Target target,
                                   api::CallContext context) {
  return [client = std::move(client), &resolver, target = std::move(target),
          context = std::move(context)](absl::Time maybe_sent_since,
                                        RequestLedger::WorkDone done) mutable {
    api::DefenderClient& api = *client;
    resolver.ResolveMachine(
        api, target.machine_id, target.computer_dns_name, context,
        [client, &resolver, target, context, maybe_sent_since, done = std::move(done)](
            absl::StatusOr<std::string> machine_id) mutable {
          if (!machine_id.ok()) return std::move(done)(WorkResult{machine_id.status(), "", ""});
          api::DefenderClient& api = *client;
          resolver.ResolveFile(
              api, target.sha1, target.sha256, context,
              [client, machine_id = *machine_id, target, context, maybe_sent_since,
               done = std::move(done)](absl::StatusOr<std::string> sha1) mutable {
                if (!sha1.ok()) {
                  return std::move(done)(WorkResult{sha1.status(), machine_id, ""});
                }
                api::StopAndQuarantineFileParams params;
                params.machine_id = machine_id;
                params.sha1 = *sha1;
                params.comment = target.comment;
                params.maybe_sent_since = maybe_sent_since;
                client->StopAndQuarantineFile(
                    params, context,
                    [client, machine_id, sha1 = *sha1, done = std::move(done)](
                        absl::StatusOr<api::MachineAction> action) mutable {
                      WorkResult result{absl::UnknownError(""), machine_id, sha1};
                      if (action.ok()) {
                        v1::MachineAction proto;
                        ToProto(*action, &proto);
                        result.action = std::move(proto);
                      } else {
                        result.action = action.status();
                      }
                      std::move(done)(std::move(result));
                    });
              });
        });
  };
}

absl::Status AlreadyFinal(const api::MachineAction& action) {
  return MakeError(absl::StatusCode::kFailedPrecondition,
                   absl::StrCat("machine action ", action.id, " is already final (",
                                action.status,
                                "): only pending or in-progress actions can be cancelled"),
                   "ACTION_ALREADY_FINAL", {{"action_id", action.id}, {"status", action.status}});
}

WorkResult ActionResult(const api::MachineAction& action) {
  v1::MachineAction proto;
  ToProto(action, &proto);
  return WorkResult{std::move(proto), action.machine_id, ""};
}

}  // namespace

ResponseServiceImpl::ResponseServiceImpl(const TenantDirectory& tenants, ServiceParts parts,
                                         absl::Duration default_timeout, Clock& clock)
    : tenants_(tenants), parts_(parts), default_timeout_(default_timeout), clock_(clock) {}

absl::StatusOr<std::shared_ptr<api::DefenderClient>> ResponseServiceImpl::Admit(
    const grpc::CallbackServerContext& context, CallLog& log, const absl::Status& valid,
    const std::string& tenant) const {
  log.Set("tenant", TenantForLog(tenant));
  if (!valid.ok()) return valid;
  if (parts_.authorizer != nullptr) {
    const std::string name = tenant.empty() ? tenants_.DefaultName() : tenant;
    // A refusal names the caller; the call's own log line carries it.
    absl::StatusOr<std::string> caller = parts_.authorizer->Check(IdentityOf(context), name);
    if (!caller.ok()) return caller.status();
    log.SetCaller(*caller);
  }
  std::shared_ptr<api::DefenderClient> client = tenants_.Find(tenant);
  if (client == nullptr) {
    return MakeError(absl::StatusCode::kInvalidArgument,
                     absl::StrCat("tenant '", absl::CHexEscape(tenant.substr(0, 64)),
                                  "' is not configured"),
                     "UNKNOWN_TENANT", {{"field", "tenant"}, {"tenant", tenant}});
  }
  return client;
}

absl::Time ResponseServiceImpl::Deadline(const grpc::CallbackServerContext& context) const {
  const auto caller = context.deadline();
  if (caller == std::chrono::system_clock::time_point::max()) {
    return clock_.Now() + default_timeout_;
  }
  return absl::FromChrono(caller);
}

grpc::ServerUnaryReactor* ResponseServiceImpl::QuarantineFile(
    grpc::CallbackServerContext* context, const v1::QuarantineFileRequest* request,
    v1::QuarantineFileResponse* response) {
  auto* reactor = new CallReactor();
  auto log = CallLog::Start("QuarantineFile", *context, metrics());
  absl::StatusOr<std::shared_ptr<api::DefenderClient>> client =
      Admit(*context, *log, ValidateQuarantineFileRequest(*request), request->tenant());
  if (!client.ok()) {
    FinishCall(reactor, *log, client.status());
    return reactor;
  }
  Target target{absl::AsciiStrToLower(request->machine_id()), request->computer_dns_name(),
                absl::AsciiStrToLower(request->sha1()), absl::AsciiStrToLower(request->sha256()),
                request->comment()};
  log->Set("machine", target.machine_id.empty() ? target.computer_dns_name : target.machine_id);
  log->Set("file", target.sha1.empty() ? target.sha256 : target.sha1);
  if (!request->request_id().empty()) log->Set("request_id", request->request_id());
  journal::Entry entry;
  entry.request_key = request->request_id();
  entry.params = Canonical("QuarantineFile", Normalized(*request));
  entry.method = "QuarantineFile";
  entry.caller = log->caller();
  entry.tenant = TenantName(request->tenant());
  entry.machine_id = target.machine_id;
  entry.file_sha1 = target.sha1;
  entry.comment = target.comment;
  parts_.ledger->Run(
      std::move(entry),
      QuarantineWork(*client, *parts_.resolver, std::move(target),
                     api::CallContext(Deadline(*context), reactor->cancellation(), log->trace())),
      [reactor, response, log](absl::StatusOr<v1::MachineAction> action, bool replayed) {
        if (!action.ok()) return FinishCall(reactor, *log, action.status());
        *response->mutable_action() = *action;
        log->Set("action_id", action->id());
        if (replayed) log->Set("replayed", true);
        FinishCall(reactor, *log, absl::OkStatus());
      });
  return reactor;
}

grpc::ServerUnaryReactor* ResponseServiceImpl::GetMachineAction(
    grpc::CallbackServerContext* context, const v1::GetMachineActionRequest* request,
    v1::MachineAction* response) {
  auto* reactor = new CallReactor();
  auto log = CallLog::Start("GetMachineAction", *context, metrics());
  absl::StatusOr<std::shared_ptr<api::DefenderClient>> client =
      Admit(*context, *log, ValidateGetMachineActionRequest(*request), request->tenant());
  if (!client.ok()) {
    FinishCall(reactor, *log, client.status());
    return reactor;
  }
  log->Set("action_id", request->id());
  (*client)->GetMachineAction(
      request->id(), api::CallContext(Deadline(*context), reactor->cancellation(), log->trace()),
      // The callback holds the client: a reload cannot take it away mid-call.
      [reactor, response, log, held = *client](absl::StatusOr<api::MachineAction> action) {
        if (action.ok()) ToProto(*action, response);
        FinishCall(reactor, *log, action.status());
      });
  return reactor;
}

grpc::ServerWriteReactor<v1::MachineAction>* ResponseServiceImpl::WatchMachineAction(
    grpc::CallbackServerContext* context, const v1::WatchMachineActionRequest* request) {
  // The watch's id comes after Watch(); a cancellation may come before.
  struct State {
    absl::Mutex mu;
    WatchHub::WatchId id = 0;
    bool cancelled = false;
  };
  auto state = std::make_shared<State>();
  WatchHub* hub = parts_.watches;
  auto log = CallLog::Start("WatchMachineAction", *context, metrics());
  log->Set("action_id", absl::CHexEscape(request->id().substr(0, 64)));
  auto sink = StreamSink<v1::MachineAction>::Create([state, hub, log] {
    WatchHub::WatchId id = 0;
    {
      absl::MutexLock lock(&state->mu);
      state->cancelled = true;
      id = state->id;
    }
    if (id != 0) hub->Unwatch(id);
    log->Finish(
        MakeError(absl::StatusCode::kCancelled, "the caller ended the watch", "CANCELLED"));
  });
  auto close = [sink, log](const absl::Status& status) {
    log->Finish(status);
    sink->Close(ToGrpcStatus(status));
  };
  absl::StatusOr<std::shared_ptr<api::DefenderClient>> client =
      Admit(*context, *log, ValidateWatchMachineActionRequest(*request), request->tenant());
  if (!client.ok()) {
    close(client.status());
    return sink->reactor();
  }

  class SinkWatcher final : public Watcher {
   public:
    SinkWatcher(std::shared_ptr<StreamSink<v1::MachineAction>> sink,
                std::function<void(const absl::Status&)> close)
        : sink_(std::move(sink)), close_(std::move(close)) {}
    void Update(const v1::MachineAction& action) override { sink_->Push(action); }
    void End(const absl::Status& status) override { close_(status); }

   private:
    std::shared_ptr<StreamSink<v1::MachineAction>> sink_;
    std::function<void(const absl::Status&)> close_;
  };
  auto* reactor = sink->reactor();
  const WatchHub::WatchId id =
      hub->Watch(*client, request->id(), std::make_shared<SinkWatcher>(sink, close));
  bool cancelled = false;
  {
    absl::MutexLock lock(&state->mu);
    state->id = id;
    cancelled = state->cancelled;
  }
  // Cancelled before the id was known: the sink has finished the stream.
  if (cancelled) hub->Unwatch(id);
  return reactor;
}

grpc::ServerUnaryReactor* ResponseServiceImpl::CancelMachineAction(
    grpc::CallbackServerContext* context, const v1::CancelMachineActionRequest* request,
    v1::MachineAction* response) {
  auto* reactor = new CallReactor();
  auto log = CallLog::Start("CancelMachineAction", *context, metrics());
  absl::StatusOr<std::shared_ptr<api::DefenderClient>> client =
      Admit(*context, *log, ValidateCancelMachineActionRequest(*request), request->tenant());
  if (!client.ok()) {
    FinishCall(reactor, *log, client.status());
    return reactor;
  }
  log->Set("action_id", request->id());
  journal::Entry entry;
  entry.method = "CancelMachineAction";
  entry.caller = log->caller();
  entry.tenant = TenantName(request->tenant());
  entry.action_id = request->id();
  entry.comment = request->comment();
  const api::CallContext call(Deadline(*context), reactor->cancellation(), log->trace());
  // Defender cancels only actions that are not final; asking first gives a
  // precise FAILED_PRECONDITION whatever Defender's refusal looks like. A
  // refusal after the cancel was sent is checked again: an earlier attempt of
  // this same cancel may be what made the action final.
  auto work = [client = *client, id = request->id(), comment = request->comment(), call](
                  absl::Time, RequestLedger::WorkDone done) mutable {
    api::DefenderClient& api = *client;
    api.GetMachineAction(id, call, [client, id, comment, call, done = std::move(done)](
                                       absl::StatusOr<api::MachineAction> before) mutable {
      if (!before.ok()) return std::move(done)(WorkResult{before.status(), "", ""});
      if (before->IsFinal()) {
        return std::move(done)(WorkResult{AlreadyFinal(*before), before->machine_id, ""});
      }
      api::DefenderClient& api = *client;
      api.CancelMachineAction(
          id, comment, call,
          [client, id, comment, call, done = std::move(done)](
              absl::StatusOr<api::MachineAction> cancelled) mutable {
            if (cancelled.ok()) return std::move(done)(ActionResult(*cancelled));
            const absl::StatusCode code = cancelled.status().code();
            if (code != absl::StatusCode::kInvalidArgument &&
                code != absl::StatusCode::kFailedPrecondition &&
                code != absl::StatusCode::kAlreadyExists) {
              return std::move(done)(WorkResult{cancelled.status(), "", ""});
            }
            api::DefenderClient& api = *client;
            api.GetMachineAction(
                id, call,
                [comment, refusal = cancelled.status(), done = std::move(done)](
                    absl::StatusOr<api::MachineAction> after) mutable {
                  if (!after.ok()) return std::move(done)(WorkResult{refusal, "", ""});
                  if (after->IsFinal() && absl::StartsWith(after->status, "Cancel") &&
                      after->cancellation_comment == comment) {
                    return std::move(done)(ActionResult(*after));
                  }
                  if (after->IsFinal()) {
                    return std::move(done)(
                        WorkResult{AlreadyFinal(*after), after->machine_id, ""});
                  }
                  std::move(done)(WorkResult{refusal, after->machine_id, ""});
                });
          });
    });
  };
  parts_.ledger->Run(std::move(entry), std::move(work),
                     [reactor, response, log](absl::StatusOr<v1::MachineAction> action, bool) {
                       if (action.ok()) *response = *action;
                       FinishCall(reactor, *log, action.status());
                     });
  return reactor;
}

// BatchRun drives one BatchQuarantineFile call: at most kBatchConcurrency
// devices in flight, each through the ledger, each result streamed as it
// comes.
class ResponseServiceImpl::BatchRun : public std::enable_shared_from_this<BatchRun> {
 public:
  struct Device {
    int index = 0;
    std::string machine_id;
    std::string computer_dns_name;
  };

  BatchRun(const ResponseServiceImpl& service, v1::BatchQuarantineFileRequest request,
           std::shared_ptr<api::DefenderClient> client, std::shared_ptr<CallLog> log,
           absl::Time deadline)
      : service_(service),
        request_(std::move(request)),
        client_(std::move(client)),
        log_(std::move(log)),
        caller_(log_->caller()),
        deadline_(deadline) {
    log_->Set("devices",
              int64_t{request_.machine_ids_size() + request_.computer_dns_names_size()});
    log_->Set("file", request_.sha1().empty() ? absl::AsciiStrToLower(request_.sha256())
                                              : absl::AsciiStrToLower(request_.sha1()));
    if (!request_.request_id().empty()) log_->Set("request_id", request_.request_id());
    int index = 0;
    for (const std::string& id : request_.machine_ids()) {
      devices_.push_back(Device{index++, absl::AsciiStrToLower(id), ""});
    }
    for (const std::string& name : request_.computer_dns_names()) {
      devices_.push_back(Device{index++, "", name});
    }
  }

  void set_sink(std::shared_ptr<StreamSink<v1::BatchQuarantineFileResponse>> sink) {
    sink_ = std::move(sink);
  }
  const std::shared_ptr<Cancellation>& cancellation() const { return cancellation_; }

  // Start journals the batch, resolves the file, then starts the devices.
  void Start() {
    journal::Entry header;
    header.request_key = request_.request_id();
    v1::BatchQuarantineFileRequest normalized = request_;
    normalized.clear_request_id();
    for (std::string& id : *normalized.mutable_machine_ids()) id = absl::AsciiStrToLower(id);
    normalized.set_sha1(absl::AsciiStrToLower(normalized.sha1()));
    normalized.set_sha256(absl::AsciiStrToLower(normalized.sha256()));
    header.params = Canonical("BatchQuarantineFile", normalized);
    header.method = "BatchQuarantineFile";
    header.caller = caller_;
    header.tenant = TenantName(request_.tenant());
    header.file_sha1 = normalized.sha1();
    header.comment = request_.comment();
    service_.parts_.ledger->journal().Begin(
        header, service_.parts_.ledger->WindowStart(),
        [self = shared_from_this(), params = header.params](
            absl::StatusOr<journal::BeginResult> begun) {
          if (!begun.ok()) return self->Close(JournalUnavailable(begun.status()));
          if (!begun->created && begun->entry.params != params) {
            return self->Close(RequestIdReused());
          }
          self->header_ = std::move(begun->entry);
          self->ResolveFile();
        });
  }

 private:
  void ResolveFile() {
    service_.parts_.resolver->ResolveFile(
        *client_, request_.sha1(), request_.sha256(),
        api::CallContext(deadline_, cancellation_, log_->trace()),
        [self = shared_from_this()](absl::StatusOr<std::string> sha1) {
          if (!sha1.ok()) return self->Close(sha1.status());
          {
            absl::MutexLock lock(&self->mu_);
            self->sha1_ = *sha1;
          }
          self->LaunchMore();
        });
  }

  // LaunchMore starts devices while fewer than kBatchConcurrency are in flight.
  // When none is left to start (or the call was cancelled) and none is in
  // flight, the batch completes.
  void LaunchMore() {
    std::vector<Device> starting;
    bool complete = false;
    {
      absl::MutexLock lock(&mu_);
      while (!cancellation_->IsCancelled() && next_ < devices_.size() &&
             in_flight_ < kBatchConcurrency) {
        starting.push_back(devices_[next_++]);
        ++in_flight_;
      }
      if (in_flight_ == 0 && !completed_ &&
          (next_ == devices_.size() || cancellation_->IsCancelled())) {
        complete = completed_ = true;
      }
    }
    for (Device& device : starting) Launch(std::move(device));
    if (complete) Complete();
  }

  void Launch(Device device) {
    journal::Entry entry;
    if (!request_.request_id().empty()) {
      // Unit separator: request ids hold no control characters.
      entry.request_key = absl::StrCat(request_.request_id(), "\x1f",
                                       device.machine_id.empty()
                                           ? absl::StrCat("name:", device.computer_dns_name)
                                           : device.machine_id);
    }
    v1::QuarantineFileRequest item;
    item.set_machine_id(device.machine_id);
    item.set_computer_dns_name(device.computer_dns_name);
    item.set_sha1(absl::AsciiStrToLower(request_.sha1()));
    item.set_sha256(absl::AsciiStrToLower(request_.sha256()));
    item.set_comment(request_.comment());
    item.set_tenant(request_.tenant());
    entry.params = Canonical("BatchQuarantineFile.device", item);
    entry.method = "BatchQuarantineFile";
    entry.caller = caller_;
    entry.tenant = TenantName(request_.tenant());
    entry.machine_id = device.machine_id;
    entry.comment = request_.comment();
    std::string sha1;
    {
      absl::MutexLock lock(&mu_);
      sha1 = sha1_;
    }
    entry.file_sha1 = sha1;
    Target target{device.machine_id, device.computer_dns_name, sha1, "", request_.comment()};
    service_.parts_.ledger->Run(
        std::move(entry),
        QuarantineWork(client_, *service_.parts_.resolver, std::move(target),
                       api::CallContext(deadline_, cancellation_, log_->trace())),
        [self = shared_from_this(), device](absl::StatusOr<v1::MachineAction> action, bool) {
          self->OnDeviceDone(device, std::move(action));
        });
  }

  void OnDeviceDone(const Device& device, absl::StatusOr<v1::MachineAction> action) {
    v1::BatchQuarantineFileResponse result;
    result.set_index(device.index);
    result.set_computer_dns_name(device.computer_dns_name);
    if (action.ok()) {
      result.set_machine_id(action->machine_id().empty() ? device.machine_id
                                                         : absl::AsciiStrToLower(
                                                               action->machine_id()));
      *result.mutable_action() = *std::move(action);
    } else {
      result.set_machine_id(device.machine_id);
      *result.mutable_error() = ToRpcStatus(action.status());
    }
    bool ok = action.ok();
    sink_->Push(std::move(result));
    {
      absl::MutexLock lock(&mu_);
      --in_flight_;
      (ok ? succeeded_ : failed_)++;
    }
    LaunchMore();
  }

  // Complete records the batch's outcome, then ends the stream.
  void Complete() {
    journal::Entry header = header_;
    int succeeded = 0, failed = 0;
    bool cancelled = cancellation_->IsCancelled();
    {
      absl::MutexLock lock(&mu_);
      succeeded = succeeded_;
      failed = failed_;
    }
    header.state = failed == 0 && !cancelled ? journal::EntryState::kSucceeded
                                             : journal::EntryState::kFailed;
    header.status_code = cancelled ? static_cast<int>(absl::StatusCode::kCancelled) : 0;
    header.error_message = absl::StrCat(succeeded, " devices succeeded, ", failed, " failed",
                                        cancelled ? ", the rest cancelled" : "");
    service_.parts_.ledger->journal().Update(
        std::move(header), [self = shared_from_this(), cancelled](absl::Status) {
          self->Close(cancelled ? MakeError(absl::StatusCode::kCancelled,
                                            "the caller cancelled the batch", "CANCELLED")
                                : absl::OkStatus());
        });
  }

  void Close(const absl::Status& status) {
    {
      absl::MutexLock lock(&mu_);
      log_->Set("succeeded", int64_t{succeeded_});
      log_->Set("failed", int64_t{failed_});
    }
    log_->Finish(status);
    sink_->Close(ToGrpcStatus(status));
  }

  const ResponseServiceImpl& service_;
  const v1::BatchQuarantineFileRequest request_;
  const std::shared_ptr<api::DefenderClient> client_;
  const std::shared_ptr<CallLog> log_;
  const std::string caller_;
  const absl::Time deadline_;
  std::vector<Device> devices_;
  std::shared_ptr<Cancellation> cancellation_ = std::make_shared<Cancellation>();
  std::shared_ptr<StreamSink<v1::BatchQuarantineFileResponse>> sink_;
  journal::Entry header_;  // set before any device starts

  absl::Mutex mu_;
  std::string sha1_ ABSL_GUARDED_BY(mu_);
  size_t next_ ABSL_GUARDED_BY(mu_) = 0;
  int in_flight_ ABSL_GUARDED_BY(mu_) = 0;
  bool completed_ ABSL_GUARDED_BY(mu_) = false;
  int succeeded_ ABSL_GUARDED_BY(mu_) = 0;
  int failed_ ABSL_GUARDED_BY(mu_) = 0;
};

grpc::ServerWriteReactor<v1::BatchQuarantineFileResponse>*
ResponseServiceImpl::BatchQuarantineFile(grpc::CallbackServerContext* context,
                                         const v1::BatchQuarantineFileRequest* request) {
  absl::Time deadline = clock_.Now() + kBatchDefaultTimeout;
  if (context->deadline() != std::chrono::system_clock::time_point::max()) {
    deadline = absl::FromChrono(context->deadline());
  }
  auto log = CallLog::Start("BatchQuarantineFile", *context, metrics());
  absl::StatusOr<std::shared_ptr<api::DefenderClient>> client =
      Admit(*context, *log, ValidateBatchQuarantineFileRequest(*request), request->tenant());
  if (!client.ok()) {
    auto sink = StreamSink<v1::BatchQuarantineFileResponse>::Create();
    log->Finish(client.status());
    sink->Close(ToGrpcStatus(client.status()));
    return sink->reactor();
  }
  auto run = std::make_shared<BatchRun>(*this, *request, *client, std::move(log), deadline);
  auto sink = StreamSink<v1::BatchQuarantineFileResponse>::Create(
      [cancellation = run->cancellation()] { cancellation->Cancel(); });
  run->set_sink(sink);
  auto* reactor = sink->reactor();
  run->Start();
  return reactor;
}

}  // namespace defender
