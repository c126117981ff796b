// tests/integration/tcp_gate.h: a TCP relay for tests that can reset new
// connections before any byte flows.
//
// A TcpGate listens on 127.0.0.1 (a free port) and relays every accepted
// connection, byte for byte in both directions, to 127.0.0.1:target_port. It
// does not parse what it relays, so TLS passes through end to end: point a
// client at the gate's port while it trusts the target's certificate (the
// sandbox's certificate names 127.0.0.1). Half-closes are relayed (EOF one way
// becomes shutdown(SHUT_WR) on the other side), and a reset or error on one
// side resets the other.
//
// ResetNextConnections(n) makes the gate reset the next n connections it
// accepts at once (SO_LINGER 0, then close) without connecting to the target:
// the client's connect succeeds, then its first read or write fails with
// ECONNRESET, which emulates "connection reset before the request was sent".
// Clients that keep connections alive reuse an already relayed connection,
// which the budget does not touch: ResetOpenConnections resets those.
//
// Example:
//
//   auto gate = TcpGate::Start(sandbox->port());
//   ASSERT_TRUE(gate.ok()) << gate.status();
//   (*gate)->ResetNextConnections(1);
//   ... call https://127.0.0.1:(*gate)->port() ...
//   EXPECT_EQ((*gate)->Accepted(), 2);  // the reset one and the retry
//
// Threading: all methods may be called from any thread. The gate uses one
// thread to accept and one per relayed connection. The destructor closes the
// listening socket and every connection (with a reset) and joins all threads.

#ifndef DEFENDER_TESTS_INTEGRATION_TCP_GATE_H_
#define DEFENDER_TESTS_INTEGRATION_TCP_GATE_H_

#include <atomic>
#include <list>
#include <memory>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"

namespace defender::testing {

class TcpGate {
 public:
  // Start listens on 127.0.0.1:0 and relays to 127.0.0.1:target_port (which is
  // only connected to when a connection arrives; if that connect fails, the
  // client's connection is reset). INVALID_ARGUMENT for a bad port,
  // INTERNAL when a socket cannot be set up.
  static absl::StatusOr<std::unique_ptr<TcpGate>> Start(int target_port);

  TcpGate(const TcpGate&) = delete;
  TcpGate& operator=(const TcpGate&) = delete;
  // Stops accepting, resets every open connection and joins all threads.
  ~TcpGate();

  // port returns the gate's listening port on 127.0.0.1.
  int port() const { return port_; }

  // ResetNextConnections sets how many of the next accepted connections are
  // reset at once (replacing any budget left; 0 = relay all).
  void ResetNextConnections(int n);

  // ResetOpenConnections resets every connection being relayed now (both
  // sides see a RST), e.g. to force clients onto new connections.
  void ResetOpenConnections();

  // Accepted returns how many connections the gate accepted, reset ones
  // included; ResetCount returns how many of them it reset at once.
  int Accepted() const { return accepted_.load(); }
  int ResetCount() const { return reset_.load(); }

 private:
  struct Connection;

  TcpGate(int listen_fd, int port, int target_port, int wake_read, int wake_write);
  void AcceptLoop();
  void Relay(Connection& c);
  // ReapFinished joins and frees connections whose relay thread has ended.
  void ReapFinished() ABSL_LOCKS_EXCLUDED(mu_);

  const int listen_fd_;
  const int port_;
  const int target_port_;
  // A pipe that becomes readable (forever) when the gate stops; every poll
  // loop watches it.
  const int stop_read_;
  const int stop_write_;
  std::atomic<int> accepted_{0};
  std::atomic<int> reset_{0};
  std::thread acceptor_;

  absl::Mutex mu_;
  int reset_budget_ ABSL_GUARDED_BY(mu_) = 0;
  // Relayed connections whose thread has not been joined yet.
  std::list<std::shared_ptr<Connection>> connections_ ABSL_GUARDED_BY(mu_);
};

}  // namespace defender::testing

#endif  // DEFENDER_TESTS_INTEGRATION_TCP_GATE_H_
