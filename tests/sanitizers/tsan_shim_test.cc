// tsan_shim_test.cc: proves the ThreadSanitizer setup both ways, under the
// flags of build-tsan. `tsan_shim_test guarded` hands data between threads
// only through Abseil (Mutex, LockWhen, Await, CondVar, Notification,
// BlockingCounter; implemented in the uninstrumented libabsl_synchronization
// .so) and must run clean: without tsan_absl_shim.cc TSan reports each of
// them (ctest tsan_shim_needed runs it unshimmed and expects a report).
// `tsan_shim_test racy` writes one int from two threads, one of them without
// the lock, and must be reported (ctest tsan_finds_a_race).
#include <cstdio>
#include <cstring>
#include <thread>
#include <vector>

#include "absl/synchronization/blocking_counter.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"

namespace {

// Each handoff publishes plain (non-atomic) data; a missed happens-before
// edge is a TSan report.
int Guarded() {
  absl::Mutex mu;
  long counter = 0;  // guarded by mu
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&] {
      for (int i = 0; i < 1000; ++i) {
        absl::MutexLock lock(&mu);
        ++counter;
      }
    });
  }
  for (auto& thread : threads) thread.join();
  threads.clear();

  // LockWhen / Await: a producer sets a flag the consumer waits for.
  bool ready = false;  // guarded by mu
  int payload = 0;     // written before ready, read after
  std::thread producer([&] {
    payload = 42;
    absl::MutexLock lock(&mu);
    ready = true;
  });
  mu.LockWhen(absl::Condition(&ready));
  int seen = payload;
  ready = false;
  mu.Unlock();
  producer.join();

  std::thread producer2([&] {
    payload = 43;
    absl::MutexLock lock(&mu);
    ready = true;
  });
  {
    absl::MutexLock lock(&mu);
    mu.Await(absl::Condition(&ready));
    seen += payload;
  }
  producer2.join();

  // CondVar.
  absl::CondVar cv;
  bool signalled = false;
  std::thread signaller([&] {
    payload = 44;
    absl::MutexLock lock(&mu);
    signalled = true;
    cv.Signal();
  });
  {
    absl::MutexLock lock(&mu);
    while (!signalled) cv.Wait(&mu);
    seen += payload;
  }
  signaller.join();

  // Notification: the waiter may take the lock-free fast path (already
  // notified) or the inline HasBeenNotified().
  for (int round = 0; round < 50; ++round) {
    absl::Notification done;
    int result = 0;
    std::thread worker([&] {
      result = round;
      done.Notify();
    });
    if (round % 2 == 0) {
      done.WaitForNotification();
    } else {
      while (!done.HasBeenNotified()) std::this_thread::yield();
    }
    seen += result;
    worker.join();
  }

  // BlockingCounter: decrements that do not reach zero take no lock.
  std::vector<int> slots(4, 0);
  absl::BlockingCounter left(4);
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      slots[t] = t + 1;
      left.DecrementCount();
    });
  }
  left.Wait();
  for (int value : slots) seen += value;
  for (auto& thread : threads) thread.join();

  absl::MutexLock lock(&mu);
  std::printf("counter=%ld seen=%d\n", counter, seen);
  return counter == 4000 && seen == 42 + 43 + 44 + 1225 + 10 ? 0 : 1;
}

// One thread writes under the lock, the other without: a real race.
int Racy() {
  absl::Mutex mu;
  int shared = 0;
  std::thread locked([&] {
    for (int i = 0; i < 1000; ++i) {
      absl::MutexLock lock(&mu);
      ++shared;
    }
  });
  std::thread unlocked([&] {
    for (int i = 0; i < 1000; ++i) ++shared;
  });
  locked.join();
  unlocked.join();
  std::printf("shared=%d\n", shared);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc == 2 && std::strcmp(argv[1], "guarded") == 0) return Guarded();
  if (argc == 2 && std::strcmp(argv[1], "racy") == 0) return Racy();
  std::fprintf(stderr, "usage: tsan_shim_test guarded|racy\n");
  return 2;
}
