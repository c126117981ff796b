// stream_sink.h: a server-streaming reactor that producers on any thread can
// feed, and that outlives none of them.
//
// gRPC allows one write in flight per stream; StreamSink queues messages and
// writes them in order, then finishes with the status given to Close once the
// queue is drained. Producers hold a shared_ptr<StreamSink>; once the reactor
// is done (finished, or the caller went away) Push and Close do nothing.
//
//   auto sink = StreamSink<v1::MachineAction>::Create(on_cancel);
//   sink->Push(action);                 // from any thread
//   sink->Close(grpc::Status::OK);      // from any thread
//   return sink->reactor();             // from the RPC handler
#ifndef DEFENDER_SERVER_STREAM_SINK_H_
#define DEFENDER_SERVER_STREAM_SINK_H_

#include <deque>
#include <functional>
#include <memory>
#include <utility>

#include "absl/synchronization/mutex.h"
#include "grpcpp/support/server_callback.h"
#include "grpcpp/support/status.h"

namespace defender {

template <typename Message>
class StreamSink : public std::enable_shared_from_this<StreamSink<Message>> {
 public:
  // Create makes a sink and its reactor. `on_cancel` runs once if the caller
  // cancels or its deadline passes (on a gRPC thread; it must not block);
  // the stream is then finished with CANCELLED.
  static std::shared_ptr<StreamSink> Create(std::function<void()> on_cancel = nullptr) {
    std::shared_ptr<StreamSink> sink(new StreamSink());
    sink->reactor_ = new Reactor(sink, std::move(on_cancel));
    return sink;
  }

  grpc::ServerWriteReactor<Message>* reactor() { return reactor_; }

  // Push queues `message` for writing; false when the stream is closed.
  bool Push(Message message) {
    absl::MutexLock lock(&mu_);
    if (closed_ || reactor_ == nullptr) return false;
    queue_.push_back(std::move(message));
    if (!writing_) WriteNextLocked();
    return true;
  }

  // Close ends the stream with `status` after the queued messages. Only the
  // first Close counts.
  void Close(grpc::Status status) {
    absl::MutexLock lock(&mu_);
    if (closed_) return;
    closed_ = true;
    status_ = std::move(status);
    if (!writing_ && reactor_ != nullptr) {
      finishing_ = true;
      reactor_->Finish(status_);
    }
  }

 private:
  class Reactor final : public grpc::ServerWriteReactor<Message> {
   public:
    Reactor(std::shared_ptr<StreamSink> sink, std::function<void()> on_cancel)
        : sink_(std::move(sink)), on_cancel_(std::move(on_cancel)) {}
    void OnWriteDone(bool ok) override { sink_->OnWriteDone(ok); }
    void OnCancel() override {
      if (on_cancel_) on_cancel_();
      // A cancelled stream still has to be finished; the producers' later
      // Push and Close calls then do nothing.
      sink_->Close(grpc::Status(grpc::StatusCode::CANCELLED, "the call was cancelled"));
    }
    void OnDone() override {
      sink_->OnDone();
      delete this;
    }

   private:
    std::shared_ptr<StreamSink> sink_;  // a cycle, broken in OnDone
    std::function<void()> on_cancel_;
  };

  StreamSink() = default;

  void WriteNextLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    writing_ = true;
    current_ = std::move(queue_.front());
    queue_.pop_front();
    reactor_->StartWrite(&current_);
  }

  void OnWriteDone(bool ok) {
    absl::MutexLock lock(&mu_);
    writing_ = false;
    if (reactor_ == nullptr || finishing_) return;
    if (!ok) {
      // The caller is gone: nothing more can be written.
      queue_.clear();
      closed_ = true;
      finishing_ = true;
      reactor_->Finish(grpc::Status(grpc::StatusCode::CANCELLED, "the stream was broken"));
      return;
    }
    if (!queue_.empty()) return WriteNextLocked();
    if (closed_) {
      finishing_ = true;
      reactor_->Finish(status_);
    }
  }

  void OnDone() {
    absl::MutexLock lock(&mu_);
    reactor_ = nullptr;
    closed_ = true;
    queue_.clear();
  }

  absl::Mutex mu_;
  Reactor* reactor_ ABSL_GUARDED_BY(mu_) = nullptr;
  std::deque<Message> queue_ ABSL_GUARDED_BY(mu_);
  Message current_;  // the message being written (gRPC reads it until OnWriteDone)
  bool writing_ ABSL_GUARDED_BY(mu_) = false;
  bool closed_ ABSL_GUARDED_BY(mu_) = false;
  bool finishing_ ABSL_GUARDED_BY(mu_) = false;
  grpc::Status status_ ABSL_GUARDED_BY(mu_);
};

}  // namespace defender

#endif  // DEFENDER_SERVER_STREAM_SINK_H_
