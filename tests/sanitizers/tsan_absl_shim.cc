// tsan_absl_shim.cc: makes Debian's (uninstrumented) Abseil synchronization
// visible to ThreadSanitizer. Linked only into the executables of a
// DEFENDER_SANITIZE=thread build (see the top-level CMakeLists.txt).
//
// Why: absl::Mutex, CondVar, Notification and BlockingCounter are implemented
// in libabsl_synchronization.so, which Debian builds without -fsanitize=thread.
// TSan then sees neither their locks nor their happens-before edges, and every
// ABSL_GUARDED_BY field touched by two threads looks like a data race.
//
// How: the executable (linked with -rdynamic) defines the same symbols, so the
// dynamic linker binds every caller to these definitions: our code, gRPC, and
// libabsl_synchronization.so itself (its internal calls go through the PLT).
// Each one calls the real function (dlsym(RTLD_NEXT, mangled name)) and tells
// TSan the happens-before edges a mutex makes: every release of the mutex
// (Unlock, ReaderUnlock, the unlock inside Await and CondVar::Wait) is a
// __tsan_release on its address, every acquisition (Lock, ReaderLock, a
// successful TryLock, LockWhen*, the relock after a wait) an __tsan_acquire.
// Memory accesses inside the real call are ignored: they are the Condition
// functions Abseil evaluates on whichever thread holds or releases the mutex,
// and they are protected by the real lock.
//
// We first used the lock-state annotations Abseil's own TSan build uses
// (__tsan_mutex_pre_lock/post_lock/pre_unlock/post_unlock): clang 14's TSan
// then reported, now and then, "double lock" / "destroy of a locked mutex"
// for mutexes every thread had unlocked (a Notification after a contended
// LockWhen). Plain release/acquire has no such state and gives the same
// edges; what it gives up is TSan's lock-order (deadlock) checking and the
// "mutexes held" lines in reports. Readers are synchronized with each other
// too (a reader's release reaches the next reader), which is stronger than
// needed but hides no write race: a write under a reader lock races with the
// writer-locked accesses regardless.
//
// The shim only adds synchronization that really exists; it never hides an
// access. tests/sanitizers/tsan_shim_test.cc checks both directions: guarded
// accesses pass, an unguarded one is reported.
#include <dlfcn.h>
#include <sanitizer/tsan_interface.h>  // __tsan_acquire, __tsan_release

#include <cstdio>
#include <cstdlib>

#include "absl/synchronization/blocking_counter.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"

#if !defined(__SANITIZE_THREAD__) && !(defined(__has_feature) && __has_feature(thread_sanitizer))
#error "tsan_absl_shim.cc belongs in a -fsanitize=thread build only"
#endif

namespace {

// Real returns the definition of `mangled` that the next object (Abseil's
// shared library) provides, or aborts: a shim that silently calls nothing
// would be worse than none.
void* Real(const char* mangled) {
  void* fn = dlsym(RTLD_NEXT, mangled);
  if (fn == nullptr) {
    std::fprintf(stderr, "tsan_absl_shim: %s not found: %s\n", mangled, dlerror());
    std::abort();
  }
  return fn;
}

template <typename Fn>
Fn RealAs(const char* mangled) {
  return reinterpret_cast<Fn>(Real(mangled));
}

using KernelTimeout = absl::synchronization_internal::KernelTimeout;

// While a real call runs, this thread's memory accesses are not checked (see
// above); synchronization still is.
extern "C" void __tsan_ignore_thread_begin();
extern "C" void __tsan_ignore_thread_end();
struct IgnoreAccesses {
  IgnoreAccesses() { __tsan_ignore_thread_begin(); }
  ~IgnoreAccesses() { __tsan_ignore_thread_end(); }
  IgnoreAccesses(const IgnoreAccesses&) = delete;
  IgnoreAccesses& operator=(const IgnoreAccesses&) = delete;
};

// Notification's atomic flag follows its mutex (notification.h: `Mutex mutex_;
// std::atomic<bool> notified_yet_;`). HasBeenNotified() is inline, so our
// instrumented code acquire-loads that flag; the release store happens in the
// library, so Notify also releases on the flag's address for TSan.
static_assert(sizeof(absl::Notification) == sizeof(absl::Mutex) + sizeof(std::atomic<bool>) ||
                  sizeof(absl::Notification) == 2 * sizeof(absl::Mutex),
              "absl::Notification layout changed: recheck NotifiedFlag");
void* NotifiedFlag(const absl::Notification* n) {
  return const_cast<char*>(reinterpret_cast<const char*>(n) + sizeof(absl::Mutex));
}

}  // namespace

// Every shimmed executable reads tests/sanitizers/tsan.supp (TSAN_OPTIONS in the
// environment still wins) and stops at its first report, so a test that
// races fails there, with one report to read.
extern "C" const char* __tsan_default_options() {
  return "halt_on_error=1 second_deadlock_stack=1 suppressions=" DEFENDER_TSAN_SUPPRESSIONS;
}

namespace absl {
ABSL_NAMESPACE_BEGIN

// The mangled names below are those of Debian's Abseil 20220623 (inline
// namespace "debian3"); a mismatch aborts at the first call, never silently.

void Mutex::Lock() {
  static const auto real = RealAs<void (*)(Mutex*)>("_ZN4absl7debian35Mutex4LockEv");
  { IgnoreAccesses ignore; real(this); }
  __tsan_acquire(this);
}

void Mutex::ReaderLock() {
  static const auto real = RealAs<void (*)(Mutex*)>("_ZN4absl7debian35Mutex10ReaderLockEv");
  { IgnoreAccesses ignore; real(this); }
  __tsan_acquire(this);
}

bool Mutex::TryLock() {
  static const auto real = RealAs<bool (*)(Mutex*)>("_ZN4absl7debian35Mutex7TryLockEv");
  bool locked;
  { IgnoreAccesses ignore; locked = real(this); }
  if (locked) __tsan_acquire(this);
  return locked;
}

bool Mutex::ReaderTryLock() {
  static const auto real = RealAs<bool (*)(Mutex*)>("_ZN4absl7debian35Mutex13ReaderTryLockEv");
  bool locked;
  { IgnoreAccesses ignore; locked = real(this); }
  if (locked) __tsan_acquire(this);
  return locked;
}

void Mutex::Unlock() {
  static const auto real = RealAs<void (*)(Mutex*)>("_ZN4absl7debian35Mutex6UnlockEv");
  __tsan_release(this);
  IgnoreAccesses ignore;
  real(this);
}

void Mutex::ReaderUnlock() {
  static const auto real = RealAs<void (*)(Mutex*)>("_ZN4absl7debian35Mutex12ReaderUnlockEv");
  __tsan_release(this);
  IgnoreAccesses ignore;
  real(this);
}

// LockWhen*: the mutex is held on return whatever the result.
void Mutex::LockWhen(const Condition& cond) {
  static const auto real = RealAs<void (*)(Mutex*, const Condition&)>(
      "_ZN4absl7debian35Mutex8LockWhenERKNS0_9ConditionE");
  { IgnoreAccesses ignore; real(this, cond); }
  __tsan_acquire(this);
}

bool Mutex::LockWhenWithTimeout(const Condition& cond, Duration timeout) {
  static const auto real = RealAs<bool (*)(Mutex*, const Condition&, Duration)>(
      "_ZN4absl7debian35Mutex19LockWhenWithTimeoutERKNS0_9ConditionENS0_8DurationE");
  bool met;
  { IgnoreAccesses ignore; met = real(this, cond, timeout); }
  __tsan_acquire(this);
  return met;
}

bool Mutex::LockWhenWithDeadline(const Condition& cond, Time deadline) {
  static const auto real = RealAs<bool (*)(Mutex*, const Condition&, Time)>(
      "_ZN4absl7debian35Mutex20LockWhenWithDeadlineERKNS0_9ConditionENS0_4TimeE");
  bool met;
  { IgnoreAccesses ignore; met = real(this, cond, deadline); }
  __tsan_acquire(this);
  return met;
}

void Mutex::ReaderLockWhen(const Condition& cond) {
  static const auto real = RealAs<void (*)(Mutex*, const Condition&)>(
      "_ZN4absl7debian35Mutex14ReaderLockWhenERKNS0_9ConditionE");
  { IgnoreAccesses ignore; real(this, cond); }
  __tsan_acquire(this);
}

bool Mutex::ReaderLockWhenWithTimeout(const Condition& cond, Duration timeout) {
  static const auto real = RealAs<bool (*)(Mutex*, const Condition&, Duration)>(
      "_ZN4absl7debian35Mutex25ReaderLockWhenWithTimeoutERKNS0_9ConditionENS0_8DurationE");
  bool met;
  { IgnoreAccesses ignore; met = real(this, cond, timeout); }
  __tsan_acquire(this);
  return met;
}

bool Mutex::ReaderLockWhenWithDeadline(const Condition& cond, Time deadline) {
  static const auto real = RealAs<bool (*)(Mutex*, const Condition&, Time)>(
      "_ZN4absl7debian35Mutex26ReaderLockWhenWithDeadlineERKNS0_9ConditionENS0_4TimeE");
  bool met;
  { IgnoreAccesses ignore; met = real(this, cond, deadline); }
  __tsan_acquire(this);
  return met;
}

// Await, AwaitWithTimeout and AwaitWithDeadline all go through AwaitCommon
// (via the PLT): the mutex is released while waiting and held again on
// return.
bool Mutex::AwaitCommon(const Condition& cond, KernelTimeout t) {
  static const auto real = RealAs<bool (*)(Mutex*, const Condition&, KernelTimeout)>(
      "_ZN4absl7debian35Mutex11AwaitCommonERKNS0_9ConditionENS0_24synchronization_"
      "internal13KernelTimeoutE");
  __tsan_release(this);
  bool met;
  { IgnoreAccesses ignore; met = real(this, cond, t); }
  __tsan_acquire(this);
  return met;
}

// Wait, WaitWithTimeout and WaitWithDeadline all go through WaitCommon.
bool CondVar::WaitCommon(Mutex* mutex, KernelTimeout t) {
  static const auto real = RealAs<bool (*)(CondVar*, Mutex*, KernelTimeout)>(
      "_ZN4absl7debian37CondVar10WaitCommonEPNS0_5MutexENS0_24synchronization_"
      "internal13KernelTimeoutE");
  __tsan_release(mutex);
  bool timed_out;
  { IgnoreAccesses ignore; timed_out = real(this, mutex, t); }
  __tsan_acquire(mutex);
  return timed_out;
}

// Notify publishes everything before it to whoever sees the notification,
// including through the inline HasBeenNotified() or the lock-free fast path of
// WaitForNotification (which takes no lock once notified).
void Notification::Notify() {
  static const auto real =
      RealAs<void (*)(Notification*)>("_ZN4absl7debian312Notification6NotifyEv");
  __tsan_release(this);
  __tsan_release(NotifiedFlag(this));
  real(this);
}

void Notification::WaitForNotification() const {
  static const auto real = RealAs<void (*)(const Notification*)>(
      "_ZNK4absl7debian312Notification19WaitForNotificationEv");
  real(this);
  __tsan_acquire(const_cast<Notification*>(this));
}

bool Notification::WaitForNotificationWithTimeout(Duration timeout) const {
  static const auto real = RealAs<bool (*)(const Notification*, Duration)>(
      "_ZNK4absl7debian312Notification30WaitForNotificationWithTimeoutENS0_8DurationE");
  const bool notified = real(this, timeout);
  if (notified) __tsan_acquire(const_cast<Notification*>(this));
  return notified;
}

bool Notification::WaitForNotificationWithDeadline(Time deadline) const {
  static const auto real = RealAs<bool (*)(const Notification*, Time)>(
      "_ZNK4absl7debian312Notification31WaitForNotificationWithDeadlineENS0_4TimeE");
  const bool notified = real(this, deadline);
  if (notified) __tsan_acquire(const_cast<Notification*>(this));
  return notified;
}

// A decrement that does not reach zero takes no lock; the waiter must still
// see what every decrementing thread did before it.
bool BlockingCounter::DecrementCount() {
  static const auto real =
      RealAs<bool (*)(BlockingCounter*)>("_ZN4absl7debian315BlockingCounter14DecrementCountEv");
  __tsan_release(this);
  return real(this);
}

void BlockingCounter::Wait() {
  static const auto real =
      RealAs<void (*)(BlockingCounter*)>("_ZN4absl7debian315BlockingCounter4WaitEv");
  real(this);
  __tsan_acquire(this);
}

ABSL_NAMESPACE_END
}  // namespace absl
