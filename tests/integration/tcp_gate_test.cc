// Tests of TcpGate (tests/integration/tcp_gate.h): relaying both ways with
// half-closes and back-pressure, resets before any byte flows, resets of open
// connections, an absent target, shutdown, and TLS to the sandbox through it.

#include "tests/integration/tcp_gate.h"

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <httplib.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdio>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "tools/sandbox/sandbox.h"

namespace defender::testing {
namespace {

// EchoServer listens on 127.0.0.1:0 and echoes every connection's bytes until
// EOF, then half-closes its side.
class EchoServer {
 public:
  EchoServer() {
    fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int yes = 1;
    ::setsockopt(fd_, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof yes);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof addr;
    if (::bind(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 ||
        ::listen(fd_, SOMAXCONN) != 0 ||
        ::getsockname(fd_, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
      ADD_FAILURE() << "echo server setup failed";
    }
    port_ = ntohs(addr.sin_port);
    acceptor_ = std::thread([this] {
      while (true) {
        int c = ::accept4(fd_, nullptr, nullptr, SOCK_CLOEXEC);
        if (c < 0) {
          if (errno == EINTR) continue;
          return;  // shut down
        }
        ++accepted_;
        std::lock_guard<std::mutex> lock(mu_);
        conns_.push_back(c);
        threads_.emplace_back([c] {
          char buf[16384];
          while (true) {
            ssize_t n = ::recv(c, buf, sizeof buf, 0);
            if (n < 0 && errno == EINTR) continue;
            if (n <= 0) break;
            for (ssize_t off = 0; off < n;) {
              ssize_t w = ::send(c, buf + off, static_cast<size_t>(n - off), MSG_NOSIGNAL);
              if (w <= 0) return;
              off += w;
            }
          }
          ::shutdown(c, SHUT_WR);
        });
      }
    });
  }

  ~EchoServer() {
    ::shutdown(fd_, SHUT_RDWR);  // wakes accept
    acceptor_.join();
    ::close(fd_);
    std::lock_guard<std::mutex> lock(mu_);
    for (int c : conns_) ::shutdown(c, SHUT_RDWR);
    for (std::thread& t : threads_) t.join();
    for (int c : conns_) ::close(c);
  }

  int port() const { return port_; }
  int accepted() const { return accepted_.load(); }

 private:
  int fd_ = -1;
  int port_ = 0;
  std::atomic<int> accepted_{0};
  std::thread acceptor_;
  std::mutex mu_;
  std::vector<int> conns_;
  std::vector<std::thread> threads_;
};

// Connect returns a blocking socket connected to 127.0.0.1:port with a 10 s
// receive timeout (so a broken gate fails the test instead of hanging it).
int Connect(int port) {
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = htons(static_cast<uint16_t>(port));
  timeval tv{10, 0};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
    ADD_FAILURE() << "connect: " << std::strerror(errno);
  }
  return fd;
}

bool SendAll(int fd, const std::string& data) {
  for (size_t off = 0; off < data.size();) {
    ssize_t n = ::send(fd, data.data() + off, data.size() - off, MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    off += static_cast<size_t>(n);
  }
  return true;
}

// ReadToEnd reads until EOF; *error is the errno of a failed read (0 = EOF).
std::string ReadToEnd(int fd, int* error) {
  std::string out;
  char buf[16384];
  *error = 0;
  while (true) {
    ssize_t n = ::recv(fd, buf, sizeof buf, 0);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      *error = errno;
      break;
    }
    if (n == 0) break;
    out.append(buf, static_cast<size_t>(n));
  }
  return out;
}

// ReadExactly reads `n` bytes (fewer on EOF or error).
std::string ReadExactly(int fd, size_t n) {
  std::string out;
  char buf[16384];
  while (out.size() < n) {
    ssize_t r = ::recv(fd, buf, std::min(sizeof buf, n - out.size()), 0);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) break;
    out.append(buf, static_cast<size_t>(r));
  }
  return out;
}

// SeesReset sends `data` on fd, then reads: true when either met a reset.
// (After a reset, the first call that notices it fails with ECONNRESET or
// EPIPE; later reads just see EOF.)
bool SeesReset(int fd, const std::string& data) {
  if (!SendAll(fd, data)) return errno == ECONNRESET || errno == EPIPE;
  int error = 0;
  std::string got = ReadToEnd(fd, &error);
  EXPECT_EQ(got, "");
  return error == ECONNRESET;
}

std::unique_ptr<TcpGate> StartGate(int target_port) {
  absl::StatusOr<std::unique_ptr<TcpGate>> gate = TcpGate::Start(target_port);
  EXPECT_TRUE(gate.ok()) << gate.status();
  return gate.ok() ? *std::move(gate) : nullptr;
}

TEST(TcpGateTest, RejectsBadTargetPorts) {
  EXPECT_EQ(TcpGate::Start(0).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(TcpGate::Start(70000).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(TcpGateTest, RelaysBothWaysAndPassesHalfCloseOn) {
  EchoServer echo;
  std::unique_ptr<TcpGate> gate = StartGate(echo.port());
  ASSERT_NE(gate, nullptr);
  EXPECT_GT(gate->port(), 0);
  EXPECT_NE(gate->port(), echo.port());
  int fd = Connect(gate->port());
  ASSERT_TRUE(SendAll(fd, "hello"));
  EXPECT_EQ(ReadExactly(fd, 5), "hello");
  ASSERT_TRUE(SendAll(fd, " world"));
  ::shutdown(fd, SHUT_WR);  // the echo server sees EOF, echoes the rest, closes
  int error = -1;
  EXPECT_EQ(ReadToEnd(fd, &error), " world");
  EXPECT_EQ(error, 0) << "a clean EOF, not a reset: " << std::strerror(error);
  ::close(fd);
  EXPECT_EQ(gate->Accepted(), 1);
  EXPECT_EQ(gate->ResetCount(), 0);
  EXPECT_EQ(echo.accepted(), 1);
}

TEST(TcpGateTest, RelaysMegabytesBothWaysConcurrently) {
  EchoServer echo;
  std::unique_ptr<TcpGate> gate = StartGate(echo.port());
  ASSERT_NE(gate, nullptr);
  std::string data(4 * 1024 * 1024, '\0');
  for (size_t i = 0; i < data.size(); ++i) data[i] = static_cast<char>((i * 131 + i / 7) & 0xff);
  int fd = Connect(gate->port());
  std::atomic<bool> sent{false};
  std::thread writer([&] {
    sent = SendAll(fd, data);
    ::shutdown(fd, SHUT_WR);
  });
  int error = -1;
  std::string echoed = ReadToEnd(fd, &error);
  writer.join();
  EXPECT_TRUE(sent.load());
  EXPECT_EQ(error, 0);
  EXPECT_EQ(echoed.size(), data.size());
  EXPECT_TRUE(echoed == data) << "the bytes differ";
  ::close(fd);
}

TEST(TcpGateTest, ResetsTheNextConnectionsBeforeAnyByteFlows) {
  EchoServer echo;
  std::unique_ptr<TcpGate> gate = StartGate(echo.port());
  ASSERT_NE(gate, nullptr);
  gate->ResetNextConnections(2);
  for (int i = 0; i < 2; ++i) {
    int fd = Connect(gate->port());
    EXPECT_TRUE(SeesReset(fd, "request")) << i;
    ::close(fd);
  }
  int fd = Connect(gate->port());
  ASSERT_TRUE(SendAll(fd, "through"));
  EXPECT_EQ(ReadExactly(fd, 7), "through");
  ::close(fd);
  EXPECT_EQ(gate->Accepted(), 3);
  EXPECT_EQ(gate->ResetCount(), 2);
  // Only the relayed connection reached the target (it connects only then).
  const absl::Time deadline = absl::Now() + absl::Seconds(5);
  while (echo.accepted() < 1 && absl::Now() < deadline) absl::SleepFor(absl::Milliseconds(5));
  EXPECT_EQ(echo.accepted(), 1);

  // A new budget replaces the old one; 0 turns it off.
  gate->ResetNextConnections(5);
  gate->ResetNextConnections(0);
  fd = Connect(gate->port());
  ASSERT_TRUE(SendAll(fd, "x"));
  EXPECT_EQ(ReadExactly(fd, 1), "x");
  ::close(fd);
}

TEST(TcpGateTest, ResetOpenConnectionsResetsBothSides) {
  EchoServer echo;
  std::unique_ptr<TcpGate> gate = StartGate(echo.port());
  ASSERT_NE(gate, nullptr);
  int fd = Connect(gate->port());
  ASSERT_TRUE(SendAll(fd, "ping"));
  ASSERT_EQ(ReadExactly(fd, 4), "ping");
  gate->ResetOpenConnections();
  int error = 0;
  EXPECT_EQ(ReadToEnd(fd, &error), "");
  EXPECT_EQ(error, ECONNRESET) << std::strerror(error);
  ::close(fd);
  // New connections still work.
  fd = Connect(gate->port());
  ASSERT_TRUE(SendAll(fd, "pong"));
  EXPECT_EQ(ReadExactly(fd, 4), "pong");
  ::close(fd);
}

TEST(TcpGateTest, AnAbsentTargetResetsTheClient) {
  // Find a free port, then leave it closed.
  int probe = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof addr;
  ASSERT_EQ(::bind(probe, reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
  ASSERT_EQ(::getsockname(probe, reinterpret_cast<sockaddr*>(&addr), &len), 0);
  const int closed_port = ntohs(addr.sin_port);
  ::close(probe);

  std::unique_ptr<TcpGate> gate = StartGate(closed_port);
  ASSERT_NE(gate, nullptr);
  int fd = Connect(gate->port());
  EXPECT_TRUE(SeesReset(fd, "anyone?"));
  ::close(fd);
  EXPECT_EQ(gate->Accepted(), 1);
}

TEST(TcpGateTest, DestructorResetsOpenConnectionsAndReturnsPromptly) {
  EchoServer echo;
  std::unique_ptr<TcpGate> gate = StartGate(echo.port());
  ASSERT_NE(gate, nullptr);
  std::vector<int> fds;
  for (int i = 0; i < 5; ++i) {
    fds.push_back(Connect(gate->port()));
    ASSERT_TRUE(SendAll(fds.back(), "k"));
    ASSERT_EQ(ReadExactly(fds.back(), 1), "k");
  }
  const absl::Time start = absl::Now();
  gate.reset();
  EXPECT_LT(absl::Now() - start, absl::Seconds(5));
  for (int fd : fds) {
    int error = 0;
    EXPECT_EQ(ReadToEnd(fd, &error), "");
    EXPECT_EQ(error, ECONNRESET) << std::strerror(error);
    ::close(fd);
  }
}

TEST(TcpGateTest, TlsToTheSandboxPassesThrough) {
  auto sandbox = sandbox::Sandbox::Start({});
  ASSERT_TRUE(sandbox.ok()) << sandbox.status();
  const std::string ca_file = absl::StrCat(::testing::TempDir(), "/tcp-gate-test-ca-", getpid(),
                                           "-", absl::ToUnixNanos(absl::Now()), ".pem");
  ASSERT_TRUE((*sandbox)->WriteCaFile(ca_file).ok());
  std::unique_ptr<TcpGate> gate = StartGate((*sandbox)->port());
  ASSERT_NE(gate, nullptr);
  {
    httplib::SSLClient client("127.0.0.1", gate->port());
    client.set_ca_cert_path(ca_file);
    client.enable_server_certificate_verification(true);
    client.set_connection_timeout(5, 0);
    client.set_read_timeout(10, 0);
    httplib::Result ok = client.Get("/sandbox/health");
    ASSERT_TRUE(ok) << httplib::to_string(ok.error());
    EXPECT_EQ(ok->status, 200);
    EXPECT_EQ(ok->body, "ok");

    gate->ResetNextConnections(1);
    httplib::Result reset = client.Get("/sandbox/health");
    EXPECT_FALSE(reset) << "the handshake met a reset";
    httplib::Result again = client.Get("/sandbox/health");
    ASSERT_TRUE(again) << httplib::to_string(again.error());
    EXPECT_EQ(again->status, 200);
  }
  EXPECT_EQ(gate->Accepted(), 3);
  EXPECT_EQ(gate->ResetCount(), 1);
  gate.reset();
  sandbox->reset();
  std::remove(ca_file.c_str());
}

}  // namespace
}  // namespace defender::testing
