// call_log.h: the record of one RPC. It gathers the call's fields while the
// call runs and, when the call ends, writes its one log line (server/log.h)
// and its RPC metrics.
//
//   auto log = CallLog::Start("QuarantineFile", context, metrics);
//   log->Set("tenant", "contoso");
//   client->StopAndQuarantineFile(params, CallContext(deadline, cancel, log->trace()), ...);
//   log->Finish(status);   // the line: rpc, call_id, caller, peer, the fields set,
//                          // code, reason, upstream_status, tracking_id, latency_ms
//
// call_id names the call: the caller's "x-request-id" metadata when it sent a
// usable one (at most 128 printable ASCII characters), else 16 random hex
// digits; it is sent back as "x-request-id" initial metadata. The caller's
// own request_id field, when given, is a field of its own ("request_id").
#ifndef DEFENDER_SERVER_CALL_LOG_H_
#define DEFENDER_SERVER_CALL_LOG_H_

#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "adapters/common/metrics.h"
#include "adapters/defender/defender_client.h"
#include "grpcpp/grpcpp.h"
#include "server/log.h"

namespace defender {

// CallLog is one RPC's record. Thread-safe.
class CallLog {
 public:
  // Start opens the record of a call of `method` and counts it in flight.
  // `metrics` must outlive the record.
  static std::shared_ptr<CallLog> Start(absl::string_view method,
                                        grpc::CallbackServerContext& context, Metrics& metrics);

  ~CallLog();

  // Set adds (or replaces) a field of the line.
  void Set(const std::string& key, LogValue value);

  // caller is the authenticated caller's name once SetCaller ran, else the
  // client certificate's identity, else the peer address.
  std::string caller() const;
  void SetCaller(std::string name);

  const std::string& call_id() const { return call_id_; }
  const std::string& method() const { return method_; }

  // trace collects what Defender answered, for the line.
  const std::shared_ptr<api::CallTrace>& trace() const { return trace_; }

  // Finish writes the line (info when OK, warn otherwise, error for
  // INTERNAL, UNKNOWN and DATA_LOSS) and records the RPC's metrics. Only
  // the first Finish counts.
  void Finish(const absl::Status& status);

 private:
  CallLog(std::string method, std::string call_id, std::string caller, std::string peer,
          Metrics& metrics);

  const std::string method_;
  const std::string call_id_;
  const std::string peer_;
  const absl::Time started_;
  Metrics& metrics_;
  const std::shared_ptr<api::CallTrace> trace_ = std::make_shared<api::CallTrace>();
  mutable absl::Mutex mu_;
  std::string caller_ ABSL_GUARDED_BY(mu_);
  LogFields fields_ ABSL_GUARDED_BY(mu_);
  bool finished_ ABSL_GUARDED_BY(mu_) = false;
};

// CallIdFrom is the call id a caller's "x-request-id" metadata value gives,
// or "" when it is empty, longer than 128 or not printable ASCII.
std::string CallIdFrom(absl::string_view x_request_id);

}  // namespace defender

#endif  // DEFENDER_SERVER_CALL_LOG_H_
