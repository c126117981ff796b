// redis_server.h: a real redis-server (Debian's) on 127.0.0.1 for tests, on a
// free port, with no persistence; stopped (and restartable on the same port)
// by the test.
//
//   RedisServer redis;
//   ASSERT_TRUE(redis.Start());
//   ... "redis://127.0.0.1:" + std::to_string(redis.port()) ...
//   redis.Stop();  // and Start() again: the same port, empty
#ifndef DEFENDER_TESTS_REDIS_SERVER_H_
#define DEFENDER_TESTS_REDIS_SERVER_H_

#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <string>
#include <thread>
#include <vector>

#include "absl/time/clock.h"
#include "absl/time/time.h"

extern char** environ;

namespace defender::testing {

class RedisServer {
 public:
  RedisServer() : port_(FreePort()) {}
  ~RedisServer() { Stop(); }

  // Start runs redis-server and waits (5 s at most) until it accepts connections.
  bool Start() {
    if (pid_ > 0) return true;
    std::string port = std::to_string(port_);
    std::vector<std::string> args = {"redis-server", "--bind",      "127.0.0.1", "--port",
                                      port,          "--save",      "",          "--appendonly",
                                      "no",          "--logfile",   "/dev/null", "--daemonize",
                                      "no"};
    std::vector<char*> argv;
    for (std::string& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    if (posix_spawn(&pid_, "/usr/bin/redis-server", nullptr, nullptr, argv.data(), environ) != 0) {
      pid_ = 0;
      return false;
    }
    for (absl::Time end = absl::Now() + absl::Seconds(5); absl::Now() < end;) {
      if (Accepts()) return true;
      absl::SleepFor(absl::Milliseconds(20));
    }
    return false;
  }

  void Stop() {
    if (pid_ <= 0) return;
    kill(pid_, SIGKILL);
    waitpid(pid_, nullptr, 0);
    pid_ = 0;
  }

  int port() const { return port_; }
  std::string url() const { return "redis://127.0.0.1:" + std::to_string(port_); }

 private:
  static int FreePort() {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr);
    socklen_t len = sizeof addr;
    getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
    close(fd);
    return ntohs(addr.sin_port);
  }

  bool Accepts() const {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(port_);
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    bool ok = connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0;
    close(fd);
    return ok;
  }

  int port_;
  pid_t pid_ = 0;
};

}  // namespace defender::testing

#endif  // DEFENDER_TESTS_REDIS_SERVER_H_
