// tests/integration/tcp_gate.cc: see tcp_gate.h.
//
// One acceptor thread polls the listening socket and a stop pipe. Each relayed
// connection gets a thread running a poll loop over non-blocking sockets with
// one buffer per direction (a direction reads again only once its buffer has
// been written out, which gives back-pressure). Every poll loop also watches
// the stop pipe, which the destructor makes readable for good, and the
// connection's own abort pipe (ResetOpenConnections).

#include "tests/integration/tcp_gate.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace defender::testing {
namespace {

constexpr size_t kBufferBytes = 64 * 1024;
constexpr int kConnectTimeoutMs = 10000;

absl::Status ErrnoError(absl::string_view what) {
  return absl::InternalError(absl::StrCat("TcpGate: ", what, ": ", std::strerror(errno)));
}

// ResetAndClose closes `fd` so that the peer gets a RST instead of a FIN.
void ResetAndClose(int fd) {
  if (fd < 0) return;
  linger l{};
  l.l_onoff = 1;
  l.l_linger = 0;
  ::setsockopt(fd, SOL_SOCKET, SO_LINGER, &l, sizeof l);
  ::close(fd);
}

void SetNoDelay(int fd) {
  int yes = 1;
  ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &yes, sizeof yes);
}

sockaddr_in Loopback(int port) {
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = htons(static_cast<uint16_t>(port));
  return addr;
}

// Readable reports whether a pollfd saw its fd become readable or closed.
bool Readable(const pollfd& p) { return (p.revents & (POLLIN | POLLHUP | POLLERR)) != 0; }

}  // namespace

struct TcpGate::Connection {
  ~Connection() {
    if (abort_read >= 0) ::close(abort_read);
    if (abort_write >= 0) ::close(abort_write);
  }

  int client_fd = -1;  // owned (and closed) by the relay thread
  int abort_read = -1;
  int abort_write = -1;
  std::thread thread;
  absl::Notification finished;  // the relay closed both sockets
};

absl::StatusOr<std::unique_ptr<TcpGate>> TcpGate::Start(int target_port) {
  if (target_port <= 0 || target_port > 65535) {
    return absl::InvalidArgumentError(absl::StrCat("TcpGate: bad target port ", target_port));
  }
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (fd < 0) return ErrnoError("socket");
  int yes = 1;
  ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof yes);
  sockaddr_in addr = Loopback(0);
  if (::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 ||
      ::listen(fd, SOMAXCONN) != 0) {
    absl::Status status = ErrnoError("bind/listen on 127.0.0.1:0");
    ::close(fd);
    return status;
  }
  socklen_t len = sizeof addr;
  if (::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
    absl::Status status = ErrnoError("getsockname");
    ::close(fd);
    return status;
  }
  int stop[2];
  if (::pipe2(stop, O_CLOEXEC | O_NONBLOCK) != 0) {
    absl::Status status = ErrnoError("pipe2");
    ::close(fd);
    return status;
  }
  std::unique_ptr<TcpGate> gate(
      new TcpGate(fd, ntohs(addr.sin_port), target_port, stop[0], stop[1]));
  gate->acceptor_ = std::thread([g = gate.get()] { g->AcceptLoop(); });
  return gate;
}

TcpGate::TcpGate(int listen_fd, int port, int target_port, int stop_read, int stop_write)
    : listen_fd_(listen_fd),
      port_(port),
      target_port_(target_port),
      stop_read_(stop_read),
      stop_write_(stop_write) {}

TcpGate::~TcpGate() {
  // The stop pipe is never drained: once written, every poll loop wakes.
  while (::write(stop_write_, "x", 1) < 0 && errno == EINTR) {
  }
  if (acceptor_.joinable()) acceptor_.join();
  ::close(listen_fd_);
  std::list<std::shared_ptr<Connection>> connections;
  {
    absl::MutexLock lock(&mu_);
    connections.swap(connections_);
  }
  for (const std::shared_ptr<Connection>& c : connections) {
    if (c->thread.joinable()) c->thread.join();
  }
  ::close(stop_read_);
  ::close(stop_write_);
}

void TcpGate::ResetNextConnections(int n) {
  absl::MutexLock lock(&mu_);
  reset_budget_ = n < 0 ? 0 : n;
}

void TcpGate::ResetOpenConnections() {
  std::vector<std::shared_ptr<Connection>> open;
  {
    absl::MutexLock lock(&mu_);
    for (const std::shared_ptr<Connection>& c : connections_) {
      if (c->finished.HasBeenNotified()) continue;
      open.push_back(c);
      while (::write(c->abort_write, "x", 1) < 0 && errno == EINTR) {
      }
    }
  }
  // Return once the resets have happened, so callers can rely on them.
  for (const std::shared_ptr<Connection>& c : open) {
    c->finished.WaitForNotificationWithTimeout(absl::Seconds(10));
  }
}

void TcpGate::ReapFinished() {
  absl::MutexLock lock(&mu_);
  for (auto it = connections_.begin(); it != connections_.end();) {
    if ((*it)->finished.HasBeenNotified()) {
      if ((*it)->thread.joinable()) (*it)->thread.join();
      it = connections_.erase(it);
    } else {
      ++it;
    }
  }
}

void TcpGate::AcceptLoop() {
  while (true) {
    pollfd fds[2] = {{listen_fd_, POLLIN, 0}, {stop_read_, POLLIN, 0}};
    int n = ::poll(fds, 2, -1);
    if (n < 0) {
      if (errno == EINTR) continue;
      return;  // cannot happen with valid fds; the destructor still cleans up
    }
    if (fds[1].revents != 0) return;
    if (fds[0].revents == 0) continue;
    int fd = ::accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK);
    if (fd < 0) {
      // EAGAIN: the client went away; EMFILE and the like: back off a little.
      if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR && errno != ECONNABORTED) {
        absl::SleepFor(absl::Milliseconds(10));
      }
      continue;
    }
    ++accepted_;
    ReapFinished();
    bool reset = false;
    {
      absl::MutexLock lock(&mu_);
      if (reset_budget_ > 0) {
        --reset_budget_;
        reset = true;
      }
    }
    if (reset) {
      ++reset_;
      ResetAndClose(fd);
      continue;
    }
    auto c = std::make_shared<Connection>();
    c->client_fd = fd;
    int abort_pipe[2];
    if (::pipe2(abort_pipe, O_CLOEXEC | O_NONBLOCK) != 0) {
      ResetAndClose(fd);
      continue;
    }
    c->abort_read = abort_pipe[0];
    c->abort_write = abort_pipe[1];
    absl::MutexLock lock(&mu_);
    connections_.push_back(c);
    c->thread = std::thread([this, c] { Relay(*c); });
  }
}

void TcpGate::Relay(Connection& c) {
  const int client = c.client_fd;
  int server = -1;
  // Abort resets both sides (a reset on one side is passed on as a reset).
  auto abort = [&] {
    ResetAndClose(client);
    ResetAndClose(server);
    c.finished.Notify();
  };

  // Connect to the target without blocking, watching the stop/abort pipes.
  server = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (server < 0) return abort();
  sockaddr_in target = Loopback(target_port_);
  if (::connect(server, reinterpret_cast<sockaddr*>(&target), sizeof target) != 0) {
    if (errno != EINPROGRESS) return abort();
    pollfd fds[3] = {{server, POLLOUT, 0}, {stop_read_, POLLIN, 0}, {c.abort_read, POLLIN, 0}};
    int n;
    do {
      n = ::poll(fds, 3, kConnectTimeoutMs);
    } while (n < 0 && errno == EINTR);
    if (n <= 0 || fds[1].revents != 0 || fds[2].revents != 0) return abort();
    int error = 0;
    socklen_t len = sizeof error;
    if (::getsockopt(server, SOL_SOCKET, SO_ERROR, &error, &len) != 0 || error != 0) {
      return abort();
    }
  }
  SetNoDelay(client);
  SetNoDelay(server);

  struct Direction {
    Direction(int from_fd, int to_fd) : from(from_fd), to(to_fd) {}
    const int from;
    const int to;
    std::string buffer;
    size_t offset = 0;    // bytes of `buffer` already written
    bool eof = false;     // `from` said EOF
    bool closed = false;  // EOF passed on with shutdown(to, SHUT_WR)
    bool pending() const { return offset < buffer.size(); }
  };
  Direction up(client, server);    // client -> target
  Direction down(server, client);  // target -> client
  Direction* const directions[2] = {&up, &down};
  std::string chunk(kBufferBytes, '\0');

  // Flush writes what it can of d's buffer; false on a fatal error.
  auto flush = [](Direction& d) {
    while (d.pending()) {
      ssize_t n =
          ::send(d.to, d.buffer.data() + d.offset, d.buffer.size() - d.offset, MSG_NOSIGNAL);
      if (n > 0) {
        d.offset += static_cast<size_t>(n);
      } else if (n < 0 && errno == EINTR) {
        continue;
      } else {
        return n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK);
      }
    }
    d.buffer.clear();
    d.offset = 0;
    return true;
  };

  while (!(up.closed && down.closed)) {
    // fds[0] = client, fds[1] = server; an fd nothing is wanted from is left
    // out (-1) so that a POLLHUP on it cannot spin the loop.
    pollfd fds[4] = {{-1, 0, 0}, {-1, 0, 0}, {stop_read_, POLLIN, 0}, {c.abort_read, POLLIN, 0}};
    short events[2] = {0, 0};
    for (Direction* d : directions) {
      const int from = d->from == client ? 0 : 1;
      const int to = 1 - from;
      if (!d->eof && !d->pending()) events[from] |= POLLIN;
      if (d->pending()) events[to] |= POLLOUT;
    }
    for (int i = 0; i < 2; ++i) {
      if (events[i] != 0) fds[i] = {i == 0 ? client : server, events[i], 0};
    }
    if (::poll(fds, 4, -1) < 0) {
      if (errno == EINTR) continue;
      return abort();
    }
    if (fds[2].revents != 0 || fds[3].revents != 0) return abort();
    if ((fds[0].revents & POLLERR) || (fds[1].revents & POLLERR)) return abort();
    for (Direction* d : directions) {
      const pollfd& from = fds[d->from == client ? 0 : 1];
      const pollfd& to = fds[d->to == client ? 0 : 1];
      if (!d->eof && !d->pending() && Readable(from)) {
        ssize_t n = ::recv(d->from, chunk.data(), chunk.size(), 0);
        if (n > 0) {
          d->buffer.assign(chunk.data(), static_cast<size_t>(n));
          d->offset = 0;
        } else if (n == 0) {
          d->eof = true;
        } else if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
          return abort();
        }
      }
      // Write right away (most writes complete) or when poll said we can.
      if (d->pending() || (to.revents & (POLLOUT | POLLHUP))) {
        if (!flush(*d)) return abort();
      }
      if (d->eof && !d->pending() && !d->closed) {
        ::shutdown(d->to, SHUT_WR);
        d->closed = true;
      }
    }
  }
  ::close(client);
  ::close(server);
  c.finished.Notify();
}

}  // namespace defender::testing
