// cancellation.h: a flag a caller raises to stop work done on its behalf
// (a cancelled gRPC call), with callbacks run when it is raised.
//
//   auto token = std::make_shared<Cancellation>();
//   token->OnCancel([] { ... stop waiting ... });   // runs at once if already cancelled
//   token->Cancel();                                  // from gRPC's OnCancel
//   if (token->IsCancelled()) ...
#ifndef DEFENDER_ADAPTERS_COMMON_CANCELLATION_H_
#define DEFENDER_ADAPTERS_COMMON_CANCELLATION_H_

#include <atomic>
#include <cstdint>
#include <map>
#include <memory>

#include "absl/functional/any_invocable.h"
#include "absl/synchronization/mutex.h"

namespace defender {

// Cancellation is shared (std::shared_ptr) between the caller and the work.
// Thread-safe.
class Cancellation {
 public:
  using Callback = absl::AnyInvocable<void() &&>;
  using CallbackId = uint64_t;

  // Cancel raises the flag and runs every registered callback once (outside
  // the lock, on the calling thread). Later calls do nothing.
  void Cancel() {
    std::map<CallbackId, Callback> callbacks;
    {
      absl::MutexLock lock(&mu_);
      if (cancelled_.exchange(true)) return;
      callbacks.swap(callbacks_);
    }
    for (auto& [id, callback] : callbacks) std::move(callback)();
  }

  bool IsCancelled() const { return cancelled_.load(std::memory_order_acquire); }

  // OnCancel registers `callback`; if already cancelled it runs now and 0 is
  // returned. Remove it with Forget(id) once the work it would stop is done.
  CallbackId OnCancel(Callback callback) {
    {
      absl::MutexLock lock(&mu_);
      if (!cancelled_.load()) {
        CallbackId id = next_id_++;
        callbacks_.emplace(id, std::move(callback));
        return id;
      }
    }
    std::move(callback)();
    return 0;
  }

  // Forget unregisters a callback (no effect if it already ran or id is 0).
  void Forget(CallbackId id) {
    absl::MutexLock lock(&mu_);
    callbacks_.erase(id);
  }

  // A pointer to the flag, for code that can only poll (libcurl's progress
  // callback). Valid while this object lives.
  const std::atomic<bool>* flag() const { return &cancelled_; }

 private:
  std::atomic<bool> cancelled_{false};
  absl::Mutex mu_;
  std::map<CallbackId, Callback> callbacks_ ABSL_GUARDED_BY(mu_);
  CallbackId next_id_ ABSL_GUARDED_BY(mu_) = 1;
};

}  // namespace defender

#endif  // DEFENDER_ADAPTERS_COMMON_CANCELLATION_H_
