// Tests of CurlTransport against real HTTPS servers on 127.0.0.1: an
// httplib::SSLServer for well-behaved exchanges and a raw OpenSSL server for
// broken ones, both with throwaway certificates from the sandbox.
#include "adapters/http/curl_transport.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <memory>
#include <set>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "adapters/common/error.h"
#include "adapters/http/http_transport.h"
#include "gtest/gtest.h"
#include "httplib.h"
#include "tools/sandbox/certs.h"

namespace defender::http {
namespace {

// A peer closing a socket mid-write must fail the write, not kill the binary;
// and a proxy configured on the machine must not capture 127.0.0.1. (Set
// before any thread starts: setenv races with libcurl's getenv.)
const bool kProcessSetUp = [] {
  std::signal(SIGPIPE, SIG_IGN);
  setenv("no_proxy", "127.0.0.1,localhost", 1);
  setenv("NO_PROXY", "127.0.0.1,localhost", 1);
  return true;
}();

// Generous bound for anything that should happen "soon" on a loaded machine.
constexpr absl::Duration kWait = absl::Seconds(20);

// TempFile writes `content` to a fresh file and removes it when destroyed.
class TempFile {
 public:
  explicit TempFile(const std::string& content) {
    std::string pattern = testing::TempDir() + "/curl_transport_test.XXXXXX";
    const int fd = mkstemp(pattern.data());
    if (fd < 0) std::abort();
    path_ = pattern;
    if (write(fd, content.data(), content.size()) != static_cast<ssize_t>(content.size())) {
      std::abort();
    }
    close(fd);
  }
  ~TempFile() { unlink(path_.c_str()); }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

// Outcome collects one callback's result and checks it comes exactly once, on
// another thread than the test's.
class Outcome {
 public:
  HttpTransport::Callback Callback() {
    return [this](absl::StatusOr<HttpResponse> result) {
      {
        absl::MutexLock lock(&mu_);
        result_ = std::move(result);
        thread_ = std::this_thread::get_id();
      }
      if (calls_.fetch_add(1) == 0) done_.Notify();
    };
  }
  // Wait returns the result, failing the test if it does not come in time.
  absl::StatusOr<HttpResponse> Wait() {
    EXPECT_TRUE(done_.WaitForNotificationWithTimeout(kWait)) << "no callback";
    absl::MutexLock lock(&mu_);
    EXPECT_NE(thread_, std::this_thread::get_id());
    return result_;
  }
  bool HasCompleted() const { return done_.HasBeenNotified(); }
  int calls() const { return calls_.load(); }

 private:
  absl::Notification done_;
  std::atomic<int> calls_{0};
  absl::Mutex mu_;
  absl::StatusOr<HttpResponse> result_ ABSL_GUARDED_BY(mu_) = absl::UnknownError("unset");
  std::thread::id thread_ ABSL_GUARDED_BY(mu_);
};

std::string RequestSent(const absl::Status& status) {
  auto info = GetErrorInfo(status);
  if (!info) return "<no ErrorInfo>";
  auto it = info->metadata().find("request_sent");
  return it == info->metadata().end() ? "<missing>" : it->second;
}

// ExpectError checks the code, reason and "request_sent" of a failed result.
void ExpectError(const absl::StatusOr<HttpResponse>& result, absl::StatusCode code,
                 const std::string& reason, const std::string& request_sent) {
  ASSERT_FALSE(result.ok()) << "status " << result->status;
  EXPECT_EQ(result.status().code(), code) << result.status();
  EXPECT_EQ(ErrorReason(result.status()), reason) << result.status();
  EXPECT_EQ(RequestSent(result.status()), request_sent) << result.status();
}

const sandbox::CertBundle& Certs() {
  static const auto* certs = [] {
    auto generated = sandbox::GenerateCertificates({"127.0.0.1", "localhost"});
    if (!generated.ok()) {
      std::fprintf(stderr, "GenerateCertificates: %s\n", generated.status().ToString().c_str());
      std::abort();
    }
    return new sandbox::CertBundle(*std::move(generated));
  }();
  return *certs;
}

// TlsServer is an httplib::SSLServer on 127.0.0.1 with an ephemeral port.
class TlsServer {
 public:
  explicit TlsServer(const sandbox::CertBundle& certs)
      : cert_(certs.cert_pem),
        key_(certs.key_pem),
        server_(cert_.path().c_str(), key_.path().c_str()) {
    // More threads than the transport opens connections (16 per host), so
    // keep-alive connections never starve each other.
    server_.new_task_queue = [] { return new httplib::ThreadPool(32); };
    server_.set_keep_alive_max_count(1000);
    server_.set_keep_alive_timeout(2);
  }
  ~TlsServer() { Stop(); }

  httplib::Server& server() { return server_; }

  // Start begins serving; call after registering the handlers.
  void Start() {
    ASSERT_TRUE(server_.is_valid());
    port_ = server_.bind_to_any_port("127.0.0.1");
    ASSERT_GT(port_, 0);
    thread_ = std::thread([this] { server_.listen_after_bind(); });
    // httplib's stop() is a no-op until the server runs: wait for it.
    const absl::Time give_up = absl::Now() + kWait;
    while (!server_.is_running() && absl::Now() < give_up) absl::SleepFor(absl::Milliseconds(1));
    ASSERT_TRUE(server_.is_running());
  }
  void Stop() {
    if (!thread_.joinable()) return;
    server_.stop();
    thread_.join();
  }
  std::string Url(const std::string& path) const {
    return absl::StrCat("https://127.0.0.1:", port_, path);
  }

 private:
  TempFile cert_;
  TempFile key_;
  httplib::SSLServer server_;
  int port_ = 0;
  std::thread thread_;
};

// ServerContext is an OpenSSL server context with the certificate of `certs`.
SSL_CTX* ServerContext(const sandbox::CertBundle& certs) {
  SSL_CTX* ctx = SSL_CTX_new(TLS_server_method());
  BIO* cert_bio = BIO_new_mem_buf(certs.cert_pem.data(), static_cast<int>(certs.cert_pem.size()));
  BIO* key_bio = BIO_new_mem_buf(certs.key_pem.data(), static_cast<int>(certs.key_pem.size()));
  X509* cert = PEM_read_bio_X509(cert_bio, nullptr, nullptr, nullptr);
  EVP_PKEY* key = PEM_read_bio_PrivateKey(key_bio, nullptr, nullptr, nullptr);
  if (ctx == nullptr || cert == nullptr || key == nullptr ||
      SSL_CTX_use_certificate(ctx, cert) != 1 || SSL_CTX_use_PrivateKey(ctx, key) != 1) {
    std::abort();
  }
  X509_free(cert);
  EVP_PKEY_free(key);
  BIO_free(cert_bio);
  BIO_free(key_bio);
  return ctx;
}

// ListenOnLoopback returns a listening socket on 127.0.0.1 and sets `port`.
int ListenOnLoopback(int& port) {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(addr);
  if (fd < 0 || bind(fd, reinterpret_cast<sockaddr*>(&addr), len) != 0 || listen(fd, 16) != 0 ||
      getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
    std::abort();
  }
  port = ntohs(addr.sin_port);
  return fd;
}

// RawTlsServer accepts connections one at a time on 127.0.0.1, completes the
// TLS handshake and hands the connection to `handler`, then closes the socket
// without a TLS close_notify (as a crashing server would).
class RawTlsServer {
 public:
  using Handler = std::function<void(SSL*)>;

  RawTlsServer(const sandbox::CertBundle& certs, Handler handler)
      : handler_(std::move(handler)), ctx_(ServerContext(certs)) {
    listen_fd_ = ListenOnLoopback(port_);
    thread_ = std::thread([this] { Serve(); });
  }
  ~RawTlsServer() {
    stopping_ = true;
    shutdown(listen_fd_, SHUT_RDWR);  // wakes accept()
    thread_.join();
    close(listen_fd_);
    SSL_CTX_free(ctx_);
  }

  std::string Url(const std::string& path) const {
    return absl::StrCat("https://127.0.0.1:", port_, path);
  }

  // ReadHead reads a request up to the end of its header block.
  static std::string ReadHead(SSL* ssl) {
    std::string data;
    char buf[4096];
    while (data.find("\r\n\r\n") == std::string::npos) {
      const int n = SSL_read(ssl, buf, sizeof(buf));
      if (n <= 0) break;
      data.append(buf, n);
    }
    return data;
  }
  static void Write(SSL* ssl, const std::string& data) {
    SSL_write(ssl, data.data(), static_cast<int>(data.size()));
  }

 private:
  void Serve() {
    while (!stopping_) {
      const int fd = accept(listen_fd_, nullptr, nullptr);
      if (fd < 0) return;
      timeval timeout{5, 0};  // never let a silent client wedge the server
      setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof(timeout));
      SSL* ssl = SSL_new(ctx_);
      SSL_set_fd(ssl, fd);
      if (SSL_accept(ssl) == 1) handler_(ssl);
      SSL_free(ssl);
      close(fd);
    }
  }

  Handler handler_;
  SSL_CTX* ctx_;
  int listen_fd_ = -1;
  int port_ = 0;
  std::atomic<bool> stopping_{false};
  std::thread thread_;
};

// KeepAliveTlsServer serves each connection on its own thread and keeps it
// open for further requests, like a real HTTP/1.1 server, but decides per
// request whether to answer or to drop the connection without a word. It
// records every request it read with the number of its connection (1 for
// the first accepted).
class KeepAliveTlsServer {
 public:
  // Reply returns the answer to the request whose head is `head`, or "" to
  // close the connection without answering.
  using Reply = std::function<std::string(const std::string& head)>;
  struct Seen {
    int connection;
    std::string request_line;
    bool tls_resumed;  // the connection resumed an earlier TLS session
  };

  // With `reset`, a dropped connection is reset (RST) instead of closed (FIN).
  KeepAliveTlsServer(const sandbox::CertBundle& certs, Reply reply, bool reset = false)
      : reply_(std::move(reply)), reset_(reset), ctx_(ServerContext(certs)) {
    listen_fd_ = ListenOnLoopback(port_);
    accept_thread_ = std::thread([this] { Accept(); });
  }
  ~KeepAliveTlsServer() {
    shutdown(listen_fd_, SHUT_RDWR);  // wakes accept()
    accept_thread_.join();
    {
      absl::MutexLock lock(&mu_);
      for (int fd : open_fds_) shutdown(fd, SHUT_RDWR);  // wakes SSL_read
    }
    for (auto& thread : connection_threads_) thread.join();
    close(listen_fd_);
    SSL_CTX_free(ctx_);
  }

  std::string Url(const std::string& path) const {
    return absl::StrCat("https://127.0.0.1:", port_, path);
  }
  std::vector<Seen> seen() {
    absl::MutexLock lock(&mu_);
    return seen_;
  }
  // Count is how many requests had a request line starting with `prefix`.
  int Count(const std::string& prefix) {
    int n = 0;
    for (const Seen& s : seen()) n += absl::StartsWith(s.request_line, prefix) ? 1 : 0;
    return n;
  }

 private:
  void Accept() {
    for (int number = 1;; ++number) {
      const int fd = accept(listen_fd_, nullptr, nullptr);
      if (fd < 0) return;
      timeval timeout{10, 0};  // never let a silent client wedge the server
      setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof(timeout));
      {
        absl::MutexLock lock(&mu_);
        open_fds_.insert(fd);
      }
      connection_threads_.emplace_back([this, fd, number] { Serve(fd, number); });
    }
  }

  void Serve(int fd, int number) {
    SSL* ssl = SSL_new(ctx_);
    SSL_set_fd(ssl, fd);
    if (SSL_accept(ssl) == 1) {
      std::string buffer;
      for (;;) {
        std::string head;
        if (!ReadRequest(ssl, buffer, head)) break;
        {
          absl::MutexLock lock(&mu_);
          seen_.push_back(
              {number, head.substr(0, head.find("\r\n")), SSL_session_reused(ssl) == 1});
        }
        const std::string answer = reply_(head);
        if (answer.empty()) break;
        SSL_write(ssl, answer.data(), static_cast<int>(answer.size()));
      }
    }
    if (reset_) {
      linger hard{1, 0};  // close() sends RST
      setsockopt(fd, SOL_SOCKET, SO_LINGER, &hard, sizeof(hard));
    }
    SSL_free(ssl);  // no close_notify: the peer sees the connection just end
    {
      absl::MutexLock lock(&mu_);
      open_fds_.erase(fd);
    }
    close(fd);
  }

  // ReadRequest reads one request (head and Content-Length body) from
  // `buffer` and the connection; false at the end of the connection.
  static bool ReadRequest(SSL* ssl, std::string& buffer, std::string& head) {
    char chunk[4096];
    size_t end;
    while ((end = buffer.find("\r\n\r\n")) == std::string::npos) {
      const int n = SSL_read(ssl, chunk, sizeof(chunk));
      if (n <= 0) return false;
      buffer.append(chunk, n);
    }
    head = buffer.substr(0, end + 4);
    size_t length = 0;
    const std::string lower = absl::AsciiStrToLower(head);
    if (const size_t at = lower.find("\r\ncontent-length:"); at != std::string::npos) {
      length = std::strtoul(lower.c_str() + at + 17, nullptr, 10);
    }
    while (buffer.size() < end + 4 + length) {
      const int n = SSL_read(ssl, chunk, sizeof(chunk));
      if (n <= 0) return false;
      buffer.append(chunk, n);
    }
    buffer.erase(0, end + 4 + length);
    return true;
  }

  Reply reply_;
  const bool reset_;
  SSL_CTX* ctx_;
  int listen_fd_ = -1;
  int port_ = 0;
  std::thread accept_thread_;
  std::vector<std::thread> connection_threads_;  // accept thread only, then destructor
  absl::Mutex mu_;
  std::set<int> open_fds_ ABSL_GUARDED_BY(mu_);
  std::vector<Seen> seen_ ABSL_GUARDED_BY(mu_);
};

// FakeProxy is a plain-TCP HTTP proxy on 127.0.0.1 that refuses every
// CONNECT with 403 and records the request lines it saw.
class FakeProxy {
 public:
  FakeProxy() {
    listen_fd_ = ListenOnLoopback(port_);
    thread_ = std::thread([this] { Serve(); });
  }
  ~FakeProxy() {
    shutdown(listen_fd_, SHUT_RDWR);
    thread_.join();
    close(listen_fd_);
  }
  int port() const { return port_; }
  std::string seen() {
    absl::MutexLock lock(&mu_);
    return seen_;
  }

 private:
  void Serve() {
    for (;;) {
      const int fd = accept(listen_fd_, nullptr, nullptr);
      if (fd < 0) return;
      timeval timeout{5, 0};
      setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof(timeout));
      std::string head;
      char buf[4096];
      while (head.find("\r\n\r\n") == std::string::npos) {
        const ssize_t n = read(fd, buf, sizeof(buf));
        if (n <= 0) break;
        head.append(buf, n);
      }
      {
        absl::MutexLock lock(&mu_);
        seen_ += head.substr(0, head.find("\r\n")) + "\n";
      }
      const std::string answer = "HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n";
      send(fd, answer.data(), answer.size(), MSG_NOSIGNAL);
      close(fd);
    }
  }

  int listen_fd_ = -1;
  int port_ = 0;
  std::thread thread_;
  absl::Mutex mu_;
  std::string seen_ ABSL_GUARDED_BY(mu_);
};

std::unique_ptr<CurlTransport> MakeTransport(CurlTransportOptions options) {
  auto transport = CurlTransport::Create(std::move(options));
  if (!transport.ok()) {
    ADD_FAILURE() << transport.status();
    return nullptr;
  }
  return *std::move(transport);
}

// A closed port on 127.0.0.1 (bound, then released).
int ClosedPort() {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(addr);
  bind(fd, reinterpret_cast<sockaddr*>(&addr), len);
  getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  close(fd);
  return ntohs(addr.sin_port);
}

// ---------------------------------------------------------------------------
// Helpers of http_transport.h

TEST(HttpResponseTest, HeaderIsCaseInsensitiveAndReturnsTheFirst) {
  HttpResponse response;
  response.headers = {{"Content-Type", "application/json"}, {"X-Twice", "one"},
                      {"x-twice", "two"}};
  EXPECT_EQ(response.Header("content-type"), "application/json");
  EXPECT_EQ(response.Header("CONTENT-TYPE"), "application/json");
  EXPECT_EQ(response.Header("X-TWICE"), "one");
  EXPECT_EQ(response.Header("Retry-After"), "");
}

TEST(UrlEscapeTest, EscapesAllButUnreservedCharacters) {
  EXPECT_EQ(UrlEscape(""), "");
  EXPECT_EQ(UrlEscape("AZaz09-._~"), "AZaz09-._~");
  EXPECT_EQ(UrlEscape("a b&c=d/e?f#g+h%"), "a%20b%26c%3Dd%2Fe%3Ff%23g%2Bh%25");
  EXPECT_EQ(UrlEscape("\xc3\xa9"), "%C3%A9");
  EXPECT_EQ(UrlEscape(std::string("a\0b", 3)), "a%00b");
}

TEST(UrlEscapeTest, HandlesInputsLargerThanLibcurlsLimit) {
  const std::string big(9u << 20, ' ');  // over CURL_MAX_INPUT_LENGTH (8 MB)
  const std::string escaped = UrlEscape(big);
  ASSERT_EQ(escaped.size(), 3 * big.size());
  EXPECT_EQ(escaped.substr(0, 6), "%20%20");
  EXPECT_EQ(escaped.find_first_not_of("%20"), std::string::npos);
}

TEST(FormEncodeTest, JoinsEscapedPairs) {
  EXPECT_EQ(FormEncode({}), "");
  EXPECT_EQ(FormEncode({{"grant_type", "client_credentials"},
                        {"scope", "https://api.securitycenter.microsoft.com/.default"},
                        {"client secret", "a+b=c&d"},
                        {"empty", ""}}),
            "grant_type=client_credentials"
            "&scope=https%3A%2F%2Fapi.securitycenter.microsoft.com%2F.default"
            "&client%20secret=a%2Bb%3Dc%26d"
            "&empty=");
}

// ---------------------------------------------------------------------------
// Create

TEST(CurlTransportCreateTest, RejectsAMissingCaFile) {
  auto transport = CurlTransport::Create({.ca_file = "/nonexistent/ca.pem"});
  ASSERT_FALSE(transport.ok());
  EXPECT_EQ(transport.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ErrorReason(transport.status()), "INVALID_CONFIGURATION");
}

TEST(CurlTransportCreateTest, RejectsACaFileWithoutCertificates) {
  TempFile not_pem("this is not a certificate\n");
  auto transport = CurlTransport::Create({.ca_file = not_pem.path()});
  ASSERT_FALSE(transport.ok());
  EXPECT_EQ(transport.status().code(), absl::StatusCode::kInvalidArgument);
}

// ---------------------------------------------------------------------------
// Exchanges with a well-behaved HTTPS server

class CurlTransportTest : public testing::Test {
 protected:
  CurlTransportTest() : ca_(Certs().ca_pem), server_(Certs()) {}

  void TearDown() override {
    // Connections close first, so the server's keep-alive loops end at once.
    transport_.reset();
    release_.Notify();
    server_.Stop();
  }

  CurlTransportOptions Options() {
    CurlTransportOptions options;
    options.ca_file = ca_.path();
    return options;
  }
  // StartAll starts the server (after the test registered its handlers) and a
  // transport with `options`.
  void StartAll(CurlTransportOptions options) {
    server_.Start();
    transport_ = MakeTransport(std::move(options));
    ASSERT_NE(transport_, nullptr);
  }
  void StartAll() { StartAll(Options()); }

  // Fetch sends one request and waits for its outcome.
  absl::StatusOr<HttpResponse> Fetch(HttpRequest request) {
    Outcome outcome;
    transport_->Send(std::move(request), outcome.Callback());
    return outcome.Wait();
  }
  static HttpRequest Get(std::string url) {
    HttpRequest request;
    request.url = std::move(url);
    return request;
  }

  TempFile ca_;
  TlsServer server_;
  // Handlers that must hang wait for this (TearDown sets it).
  absl::Notification release_;
  std::unique_ptr<CurlTransport> transport_;
};

TEST_F(CurlTransportTest, GetRoundTrip) {
  server_.server().Get("/api/machines", [](const httplib::Request& req, httplib::Response& res) {
    res.set_header("X-Method", req.method);
    res.set_header("X-Query", req.get_param_value("$filter"));
    res.set_header("X-Auth", req.get_header_value("Authorization"));
    res.set_header("X-UA", req.get_header_value("User-Agent"));
    res.set_header("X-Expect", req.has_header("Expect") ? "present" : "absent");
    res.set_content(R"({"value":[]})", "application/json");
  });
  StartAll();

  HttpRequest request = Get(server_.Url("/api/machines?%24filter=a%20b"));
  request.headers = {{"Authorization", "Bearer t0ken"}, {"Accept", "application/json"}};
  auto response = Fetch(std::move(request));
  ASSERT_TRUE(response.ok()) << response.status();
  EXPECT_EQ(response->status, 200);
  EXPECT_EQ(response->body, R"({"value":[]})");
  EXPECT_EQ(response->Header("x-method"), "GET");
  EXPECT_EQ(response->Header("X-Query"), "a b");
  EXPECT_EQ(response->Header("X-Auth"), "Bearer t0ken");
  EXPECT_EQ(response->Header("X-UA"), "defender-plugin/0.1");
  EXPECT_EQ(response->Header("X-Expect"), "absent");
  EXPECT_EQ(response->Header("Content-Type"), "application/json");
}

TEST_F(CurlTransportTest, PostRoundTripIsByteExact) {
  std::string body;
  for (int i = 0; i < 3; ++i) {
    for (int c = 0; c < 256; ++c) body.push_back(static_cast<char>(c));
  }
  body += "\r\n\r\nafter a blank line";
  std::string seen_body, seen_type, seen_method, seen_expect;
  server_.server().Post("/echo", [&](const httplib::Request& req, httplib::Response& res) {
    seen_body = req.body;
    seen_type = req.get_header_value("Content-Type");
    seen_method = req.method;
    seen_expect = req.has_header("Expect") ? "present" : "absent";
    res.status = 201;
    res.set_header("Location", "/echo/1");
    res.set_content(req.body, "application/octet-stream");
  });
  StartAll();

  HttpRequest request;
  request.method = "POST";
  request.url = server_.Url("/echo");
  request.headers = {{"Content-Type", "application/octet-stream"}};
  request.body = body;
  auto response = Fetch(std::move(request));
  ASSERT_TRUE(response.ok()) << response.status();
  EXPECT_EQ(response->status, 201);
  EXPECT_EQ(response->Header("Location"), "/echo/1");
  EXPECT_EQ(response->body, body);
  EXPECT_EQ(seen_body, body);
  EXPECT_EQ(seen_method, "POST");
  EXPECT_EQ(seen_type, "application/octet-stream");
  EXPECT_EQ(seen_expect, "absent");
}

TEST_F(CurlTransportTest, OtherMethodsAreSentAsGiven) {
  auto echo = [](const httplib::Request& req, httplib::Response& res) {
    res.set_content(req.method + ":" + req.body, "text/plain");
  };
  server_.server().Put("/r", echo).Patch("/r", echo).Delete("/r", echo);
  StartAll();

  for (const auto& [method, body] : std::vector<std::pair<std::string, std::string>>{
           {"PUT", "p"}, {"PATCH", "q"}, {"DELETE", ""}, {"PUT", ""}}) {
    HttpRequest request;
    request.method = method;
    request.url = server_.Url("/r");
    request.body = body;
    auto response = Fetch(std::move(request));
    ASSERT_TRUE(response.ok()) << method << ": " << response.status();
    EXPECT_EQ(response->body, method + ":" + body);
  }
}

TEST_F(CurlTransportTest, ErrorStatusesAreAnswersNotErrors) {
  server_.server().Get("/missing", [](const httplib::Request&, httplib::Response& res) {
    res.status = 404;
    res.set_content(R"({"error":{"code":"ResourceNotFound"}})", "application/json");
  });
  server_.server().Get("/busy", [](const httplib::Request&, httplib::Response& res) {
    res.status = 503;
    res.set_header("Retry-After", "7");
    res.set_content("busy", "text/plain");
  });
  server_.server().Get("/moved", [](const httplib::Request&, httplib::Response& res) {
    res.set_redirect("/missing");  // 302: returned, not followed
  });
  StartAll();

  auto missing = Fetch(Get(server_.Url("/missing")));
  ASSERT_TRUE(missing.ok()) << missing.status();
  EXPECT_EQ(missing->status, 404);
  EXPECT_EQ(missing->body, R"({"error":{"code":"ResourceNotFound"}})");

  auto busy = Fetch(Get(server_.Url("/busy")));
  ASSERT_TRUE(busy.ok()) << busy.status();
  EXPECT_EQ(busy->status, 503);
  EXPECT_EQ(busy->Header("retry-after"), "7");

  auto moved = Fetch(Get(server_.Url("/moved")));
  ASSERT_TRUE(moved.ok()) << moved.status();
  EXPECT_EQ(moved->status, 302);
  EXPECT_EQ(moved->Header("Location"), "/missing");
}

TEST_F(CurlTransportTest, DecodesCompressedAnswers) {
  const std::string text(200000, 'a');
  std::string accept_encoding;
  server_.server().Get("/big", [&](const httplib::Request& req, httplib::Response& res) {
    accept_encoding = req.get_header_value("Accept-Encoding");
    res.set_content(text, "text/plain");  // httplib gzips it when allowed
  });
  StartAll();

  auto response = Fetch(Get(server_.Url("/big")));
  ASSERT_TRUE(response.ok()) << response.status();
  EXPECT_TRUE(absl::StrContains(accept_encoding, "gzip")) << accept_encoding;
  EXPECT_EQ(response->body, text);
}

TEST_F(CurlTransportTest, ManyConcurrentRequestsEachCompleteOnce) {
  server_.server().Get(R"(/n/(\d+))", [](const httplib::Request& req, httplib::Response& res) {
    res.set_content("answer " + std::string(req.matches[1]), "text/plain");
  });
  StartAll();

  constexpr int kCount = 200;
  std::vector<Outcome> outcomes(kCount);
  for (int i = 0; i < kCount; ++i) {
    transport_->Send(Get(server_.Url(absl::StrCat("/n/", i))), outcomes[i].Callback());
  }
  for (int i = 0; i < kCount; ++i) {
    auto response = outcomes[i].Wait();
    ASSERT_TRUE(response.ok()) << i << ": " << response.status();
    EXPECT_EQ(response->body, absl::StrCat("answer ", i));
  }
  transport_.reset();  // nothing may come after the destructor
  for (int i = 0; i < kCount; ++i) EXPECT_EQ(outcomes[i].calls(), 1) << i;
}

TEST_F(CurlTransportTest, SequentialRequestsReuseOneConnection) {
  absl::Mutex mu;
  std::set<int> ports;
  server_.server().Get("/ping", [&](const httplib::Request& req, httplib::Response& res) {
    absl::MutexLock lock(&mu);
    ports.insert(req.remote_port);
    res.set_content("pong", "text/plain");
  });
  StartAll();

  for (int i = 0; i < 10; ++i) {
    auto response = Fetch(Get(server_.Url("/ping")));
    ASSERT_TRUE(response.ok()) << response.status();
  }
  absl::MutexLock lock(&mu);
  EXPECT_EQ(ports.size(), 1u);
}

TEST_F(CurlTransportTest, SendFromInsideACallback) {
  server_.server().Get(R"(/step/(\d))", [](const httplib::Request& req, httplib::Response& res) {
    res.set_content(std::string(req.matches[1]), "text/plain");
  });
  StartAll();

  Outcome second;
  Outcome first;
  std::string first_body;
  const std::string second_url = server_.Url("/step/2");
  transport_->Send(Get(server_.Url("/step/1")),
                   [&, done = first.Callback()](absl::StatusOr<HttpResponse> r) mutable {
                     first_body = r.ok() ? r->body : r.status().ToString();
                     transport_->Send(Get(second_url), second.Callback());
                     std::move(done)(std::move(r));
                   });
  ASSERT_TRUE(first.Wait().ok());
  EXPECT_EQ(first_body, "1");
  auto response = second.Wait();
  ASSERT_TRUE(response.ok()) << response.status();
  EXPECT_EQ(response->body, "2");
}

TEST_F(CurlTransportTest, SilentServerTimesOutAfterTheRequestWasSent) {
  std::atomic<int> arrived{0};
  server_.server().Get("/hang", [&](const httplib::Request&, httplib::Response& res) {
    ++arrived;
    release_.WaitForNotificationWithTimeout(kWait);
    res.set_content("late", "text/plain");
  });
  StartAll();

  HttpRequest request = Get(server_.Url("/hang"));
  request.deadline = absl::Now() + absl::Milliseconds(500);
  const absl::Time start = absl::Now();
  auto response = Fetch(std::move(request));
  const absl::Duration took = absl::Now() - start;
  ExpectError(response, absl::StatusCode::kDeadlineExceeded, "UPSTREAM_TIMEOUT", "true");
  EXPECT_EQ(arrived.load(), 1);
  EXPECT_GE(took, absl::Milliseconds(400));
  EXPECT_LT(took, absl::Seconds(5));
}

TEST_F(CurlTransportTest, DefaultTimeoutAppliesWithoutADeadline) {
  server_.server().Get("/hang", [&](const httplib::Request&, httplib::Response& res) {
    release_.WaitForNotificationWithTimeout(kWait);
  });
  CurlTransportOptions options = Options();
  options.default_timeout = absl::Milliseconds(300);
  StartAll(options);

  auto response = Fetch(Get(server_.Url("/hang")));
  ExpectError(response, absl::StatusCode::kDeadlineExceeded, "UPSTREAM_TIMEOUT", "true");
}

TEST_F(CurlTransportTest, PassedDeadlineFailsWithoutSendingAndNotInsideSend) {
  std::atomic<int> arrived{0};
  server_.server().Get("/x", [&](const httplib::Request&, httplib::Response& res) {
    ++arrived;
  });
  StartAll();

  HttpRequest request = Get(server_.Url("/x"));
  request.deadline = absl::Now() - absl::Seconds(1);
  Outcome outcome;
  transport_->Send(std::move(request), outcome.Callback());
  auto response = outcome.Wait();  // also checks it ran on another thread
  ExpectError(response, absl::StatusCode::kDeadlineExceeded, "UPSTREAM_TIMEOUT", "false");
  EXPECT_EQ(arrived.load(), 0);
}

TEST_F(CurlTransportTest, AnswerOverTheCapIsRejected) {
  server_.server().Get("/sized", [](const httplib::Request&, httplib::Response& res) {
    res.set_content(std::string(1000, 'x'), "application/octet-stream");
  });
  server_.server().Get("/chunked", [](const httplib::Request&, httplib::Response& res) {
    res.set_chunked_content_provider("application/octet-stream",
                                     [](size_t offset, httplib::DataSink& sink) {
                                       if (offset >= 5000) {
                                         sink.done();
                                       } else {
                                         sink.write(std::string(500, 'y').data(), 500);
                                       }
                                       return true;
                                     });
  });
  CurlTransportOptions options = Options();
  options.max_response_bytes = 999;
  StartAll(options);

  ExpectError(Fetch(Get(server_.Url("/sized"))), absl::StatusCode::kInternal,
              "UPSTREAM_RESPONSE_TOO_LARGE", "true");
  ExpectError(Fetch(Get(server_.Url("/chunked"))), absl::StatusCode::kInternal,
              "UPSTREAM_RESPONSE_TOO_LARGE", "true");
}

TEST_F(CurlTransportTest, AnswerExactlyAtTheCapIsAccepted) {
  server_.server().Get("/sized", [](const httplib::Request&, httplib::Response& res) {
    res.set_content(std::string(1000, 'x'), "application/octet-stream");
  });
  CurlTransportOptions options = Options();
  options.max_response_bytes = 1000;
  StartAll(options);

  auto response = Fetch(Get(server_.Url("/sized")));
  ASSERT_TRUE(response.ok()) << response.status();
  EXPECT_EQ(response->body.size(), 1000u);
}

TEST_F(CurlTransportTest, HeaderBlockOverTheCapIsRejected) {
  server_.server().Get("/h", [](const httplib::Request&, httplib::Response& res) {
    for (int i = 0; i < 20; ++i) res.set_header(absl::StrCat("X-Filler-", i), std::string(100, 'h'));
  });
  CurlTransportOptions options = Options();
  options.max_header_bytes = 1024;
  StartAll(options);

  ExpectError(Fetch(Get(server_.Url("/h"))), absl::StatusCode::kInternal,
              "UPSTREAM_RESPONSE_TOO_LARGE", "true");
}

TEST_F(CurlTransportTest, DestructorCancelsRequestsInFlight) {
  std::atomic<int> arrived{0};
  server_.server().Get("/hang", [&](const httplib::Request&, httplib::Response& res) {
    ++arrived;
    release_.WaitForNotificationWithTimeout(kWait);
  });
  StartAll();

  constexpr int kCount = 3;
  std::vector<Outcome> outcomes(kCount);
  for (int i = 0; i < kCount; ++i) {
    transport_->Send(Get(server_.Url("/hang")), outcomes[i].Callback());
  }
  // A Send from a cancelled request's callback is cancelled as well.
  Outcome from_callback;
  Outcome trigger;
  CurlTransport* transport = transport_.get();
  transport_->Send(Get(server_.Url("/hang")),
                   [&, done = trigger.Callback()](absl::StatusOr<HttpResponse> r) mutable {
                     transport->Send(Get(server_.Url("/hang")), from_callback.Callback());
                     std::move(done)(std::move(r));
                   });
  const absl::Time give_up = absl::Now() + kWait;
  while (arrived.load() < kCount + 1 && absl::Now() < give_up) absl::SleepFor(absl::Milliseconds(5));
  ASSERT_EQ(arrived.load(), kCount + 1);

  const absl::Time start = absl::Now();
  transport_.reset();
  EXPECT_LT(absl::Now() - start, absl::Seconds(5));

  for (int i = 0; i < kCount; ++i) {
    ASSERT_TRUE(outcomes[i].HasCompleted()) << i;
    ExpectError(outcomes[i].Wait(), absl::StatusCode::kCancelled, "TRANSPORT_SHUT_DOWN", "true");
    EXPECT_EQ(outcomes[i].calls(), 1);
  }
  ASSERT_TRUE(trigger.HasCompleted());
  ASSERT_TRUE(from_callback.HasCompleted());
  ExpectError(from_callback.Wait(), absl::StatusCode::kCancelled, "TRANSPORT_SHUT_DOWN", "false");
}

TEST_F(CurlTransportTest, MalformedRequestsAreRejectedBeforeSending) {
  std::atomic<int> arrived{0};
  server_.server().Get("/x", [&](const httplib::Request&, httplib::Response&) { ++arrived; });
  StartAll();

  HttpRequest injected = Get(server_.Url("/x"));
  injected.headers = {{"X-Evil", "a\r\nX-Injected: 1"}};
  ExpectError(Fetch(std::move(injected)), absl::StatusCode::kInvalidArgument,
              "INVALID_HTTP_REQUEST", "false");

  HttpRequest bad_method = Get(server_.Url("/x"));
  bad_method.method = "GET /y";
  ExpectError(Fetch(std::move(bad_method)), absl::StatusCode::kInvalidArgument,
              "INVALID_HTTP_REQUEST", "false");

  ExpectError(Fetch(Get("ftp://127.0.0.1/x")), absl::StatusCode::kInvalidArgument,
              "INVALID_HTTP_REQUEST", "false");
  EXPECT_EQ(arrived.load(), 0);
}

// ---------------------------------------------------------------------------
// Cancellation

// WaitFor polls `condition` until it holds or kWait passes.
bool WaitFor(const std::function<bool()>& condition) {
  const absl::Time give_up = absl::Now() + kWait;
  while (!condition()) {
    if (absl::Now() > give_up) return false;
    absl::SleepFor(absl::Milliseconds(2));
  }
  return true;
}

TEST_F(CurlTransportTest, RequestCancelledBeforeSendIsNeverSent) {
  std::atomic<int> arrived{0};
  server_.server().Get("/x", [&](const httplib::Request&, httplib::Response&) { ++arrived; });
  StartAll();

  HttpRequest request = Get(server_.Url("/x"));
  request.cancellation = std::make_shared<Cancellation>();
  request.cancellation->Cancel();
  Outcome outcome;
  transport_->Send(std::move(request), outcome.Callback());
  ExpectError(outcome.Wait(), absl::StatusCode::kCancelled, "REQUEST_CANCELLED", "false");
  EXPECT_EQ(arrived.load(), 0);
}

TEST_F(CurlTransportTest, CancellingARequestQueuedForAConnectionDropsItUnsent) {
  std::atomic<int> hung{0};
  std::atomic<int> arrived{0};
  absl::Notification release_first;
  server_.server().Get("/hang", [&](const httplib::Request&, httplib::Response&) {
    ++hung;
    release_first.WaitForNotificationWithTimeout(kWait);
  });
  server_.server().Get("/x", [&](const httplib::Request&, httplib::Response&) { ++arrived; });
  CurlTransportOptions options = Options();
  options.max_connections_per_host = 1;  // the second request waits for the first's connection
  StartAll(options);

  Outcome first;
  transport_->Send(Get(server_.Url("/hang")), first.Callback());
  ASSERT_TRUE(WaitFor([&] { return hung.load() == 1; }));
  HttpRequest queued = Get(server_.Url("/x"));
  auto cancellation = std::make_shared<Cancellation>();
  queued.cancellation = cancellation;
  Outcome second;
  transport_->Send(std::move(queued), second.Callback());
  absl::SleepFor(absl::Milliseconds(100));  // now in libcurl's queue
  EXPECT_FALSE(second.HasCompleted());

  const absl::Time start = absl::Now();
  cancellation->Cancel();
  ExpectError(second.Wait(), absl::StatusCode::kCancelled, "REQUEST_CANCELLED", "false");
  EXPECT_LT(absl::Now() - start, absl::Seconds(2));
  EXPECT_FALSE(first.HasCompleted());
  release_first.Notify();
  ASSERT_TRUE(first.Wait().ok());
  EXPECT_EQ(arrived.load(), 0);
}

TEST_F(CurlTransportTest, CancellingARequestInFlightEndsItPromptly) {
  std::atomic<int> hung{0};
  server_.server().Get("/hang", [&](const httplib::Request&, httplib::Response&) {
    ++hung;
    release_.WaitForNotificationWithTimeout(kWait);
  });
  server_.server().Get("/x", [](const httplib::Request&, httplib::Response& res) {
    res.set_content("fine", "text/plain");
  });
  StartAll();

  // Two requests to a server that never answers; only one is cancelled.
  auto cancellation = std::make_shared<Cancellation>();
  HttpRequest cancelled = Get(server_.Url("/hang"));
  cancelled.cancellation = cancellation;
  Outcome outcome;
  transport_->Send(std::move(cancelled), outcome.Callback());
  HttpRequest other = Get(server_.Url("/hang"));
  other.cancellation = std::make_shared<Cancellation>();
  Outcome other_outcome;
  transport_->Send(std::move(other), other_outcome.Callback());
  ASSERT_TRUE(WaitFor([&] { return hung.load() == 2; }));

  const absl::Time start = absl::Now();
  cancellation->Cancel();
  ExpectError(outcome.Wait(), absl::StatusCode::kCancelled, "REQUEST_CANCELLED", "true");
  // The Cancellation callback wakes the loop: far sooner than the loop's
  // 1-second poll or libcurl's progress callback would notice.
  EXPECT_LT(absl::Now() - start, absl::Milliseconds(800));
  EXPECT_EQ(outcome.calls(), 1);
  EXPECT_FALSE(other_outcome.HasCompleted());

  // The transport goes on serving.
  auto response = Fetch(Get(server_.Url("/x")));
  ASSERT_TRUE(response.ok()) << response.status();
  EXPECT_EQ(response->body, "fine");
  EXPECT_FALSE(other_outcome.HasCompleted());
  transport_.reset();  // before the outcomes go out of scope
  ExpectError(other_outcome.Wait(), absl::StatusCode::kCancelled, "TRANSPORT_SHUT_DOWN", "true");
}

TEST_F(CurlTransportTest, CancellingAfterCompletionChangesNothing) {
  server_.server().Get("/x", [](const httplib::Request&, httplib::Response& res) {
    res.set_content("done", "text/plain");
  });
  StartAll();

  auto cancellation = std::make_shared<Cancellation>();
  HttpRequest request = Get(server_.Url("/x"));
  request.cancellation = cancellation;
  Outcome outcome;
  transport_->Send(std::move(request), outcome.Callback());
  auto response = outcome.Wait();
  ASSERT_TRUE(response.ok()) << response.status();
  cancellation->Cancel();
  // A second request with the same (now raised) cancellation is not sent; the
  // first one's outcome stands.
  absl::SleepFor(absl::Milliseconds(50));
  EXPECT_EQ(outcome.calls(), 1);
  response = outcome.Wait();
  ASSERT_TRUE(response.ok());
  EXPECT_EQ(response->body, "done");
  ASSERT_TRUE(Fetch(Get(server_.Url("/x"))).ok());
}

TEST_F(CurlTransportTest, CancellingAtRandomTimesCompletesEachRequestOnce) {
  server_.server().Get("/slow", [](const httplib::Request&, httplib::Response& res) {
    absl::SleepFor(absl::Milliseconds(20));
    res.set_content("slow", "text/plain");
  });
  StartAll();

  constexpr int kCount = 60;
  std::vector<Outcome> outcomes(kCount);
  std::vector<std::shared_ptr<Cancellation>> cancellations;
  for (int i = 0; i < kCount; ++i) {
    HttpRequest request = Get(server_.Url("/slow"));
    request.cancellation = std::make_shared<Cancellation>();
    cancellations.push_back(request.cancellation);
    transport_->Send(std::move(request), outcomes[i].Callback());
  }
  // Cancel every other request from another thread, at staggered times.
  std::thread canceller([&] {
    for (int i = 0; i < kCount; i += 2) {
      absl::SleepFor(absl::Milliseconds(i % 7));
      cancellations[i]->Cancel();
    }
  });
  canceller.join();
  for (int i = 0; i < kCount; ++i) {
    auto response = outcomes[i].Wait();
    if (i % 2 == 1) {
      ASSERT_TRUE(response.ok()) << i << ": " << response.status();
    } else if (!response.ok()) {
      EXPECT_EQ(ErrorReason(response.status()), "REQUEST_CANCELLED") << response.status();
    }
  }
  transport_.reset();  // nothing may come after the destructor
  for (int i = 0; i < kCount; ++i) EXPECT_EQ(outcomes[i].calls(), 1) << i;
}

TEST_F(CurlTransportTest, DestructionForgetsTheCancellationCallbacks) {
  std::atomic<int> hung{0};
  server_.server().Get("/hang", [&](const httplib::Request&, httplib::Response&) {
    ++hung;
    release_.WaitForNotificationWithTimeout(kWait);
  });
  StartAll();

  auto cancellation = std::make_shared<Cancellation>();
  HttpRequest request = Get(server_.Url("/hang"));
  request.cancellation = cancellation;
  Outcome outcome;
  transport_->Send(std::move(request), outcome.Callback());
  ASSERT_TRUE(WaitFor([&] { return hung.load() == 1; }));
  transport_.reset();
  ExpectError(outcome.Wait(), absl::StatusCode::kCancelled, "TRANSPORT_SHUT_DOWN", "true");
  cancellation->Cancel();  // the transport is gone: nothing may run
  EXPECT_EQ(outcome.calls(), 1);
}

// ---------------------------------------------------------------------------
// TLS and connection failures

TEST(CurlTransportTlsTest, UntrustedCertificateFailsWithoutSending) {
  auto other = sandbox::GenerateCertificates({"127.0.0.1"});
  ASSERT_TRUE(other.ok()) << other.status();
  TempFile wrong_ca(other->ca_pem);
  std::atomic<int> arrived{0};
  TlsServer server(Certs());
  server.server().Get("/x", [&](const httplib::Request&, httplib::Response&) { ++arrived; });
  server.Start();

  auto transport = MakeTransport({.ca_file = wrong_ca.path()});
  ASSERT_NE(transport, nullptr);
  Outcome outcome;
  HttpRequest request;
  request.url = server.Url("/x");
  transport->Send(std::move(request), outcome.Callback());
  auto response = outcome.Wait();
  ExpectError(response, absl::StatusCode::kUnavailable, "UPSTREAM_TLS_FAILED", "false");
  EXPECT_TRUE(absl::StrContains(response.status().message(), "DEFENDER_CA_FILE"))
      << response.status();
  EXPECT_EQ(arrived.load(), 0);
}

TEST(CurlTransportTlsTest, CertificateForAnotherNameFailsWithoutSending) {
  auto elsewhere = sandbox::GenerateCertificates({"other.example"});
  ASSERT_TRUE(elsewhere.ok()) << elsewhere.status();
  TempFile ca(elsewhere->ca_pem);
  std::atomic<int> arrived{0};
  TlsServer server(*elsewhere);
  server.server().Get("/x", [&](const httplib::Request&, httplib::Response&) { ++arrived; });
  server.Start();

  auto transport = MakeTransport({.ca_file = ca.path()});
  ASSERT_NE(transport, nullptr);
  Outcome outcome;
  HttpRequest request;
  request.url = server.Url("/x");
  transport->Send(std::move(request), outcome.Callback());
  ExpectError(outcome.Wait(), absl::StatusCode::kUnavailable, "UPSTREAM_TLS_FAILED", "false");
  EXPECT_EQ(arrived.load(), 0);
}

TEST(CurlTransportConnectTest, RefusedConnectionFailsWithoutSending) {
  TempFile ca(Certs().ca_pem);
  auto transport = MakeTransport({.ca_file = ca.path()});
  ASSERT_NE(transport, nullptr);
  Outcome outcome;
  HttpRequest request;
  request.method = "POST";
  request.body = "{}";
  request.url = absl::StrCat("https://127.0.0.1:", ClosedPort(), "/x");
  transport->Send(std::move(request), outcome.Callback());
  ExpectError(outcome.Wait(), absl::StatusCode::kUnavailable, "UPSTREAM_CONNECT_FAILED", "false");
}

TEST(CurlTransportConnectTest, ServerDroppingTheConnectionLosesTheRequest) {
  std::atomic<int> heads{0};
  RawTlsServer server(Certs(), [&](SSL* ssl) {
    if (!RawTlsServer::ReadHead(ssl).empty()) ++heads;
    // Close without answering.
  });
  TempFile ca(Certs().ca_pem);
  auto transport = MakeTransport({.ca_file = ca.path()});
  ASSERT_NE(transport, nullptr);
  Outcome outcome;
  HttpRequest request;
  request.method = "POST";
  request.body = R"({"Comment":"quarantine"})";
  request.url = server.Url("/api/machines/1/StopAndQuarantineFile");
  transport->Send(std::move(request), outcome.Callback());
  ExpectError(outcome.Wait(), absl::StatusCode::kUnavailable, "UPSTREAM_CONNECTION_LOST", "true");
  EXPECT_GE(heads.load(), 1);
}

TEST(CurlTransportConnectTest, TruncatedAnswerLosesTheRequest) {
  RawTlsServer server(Certs(), [](SSL* ssl) {
    RawTlsServer::ReadHead(ssl);
    RawTlsServer::Write(ssl, "HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly a part");
  });
  TempFile ca(Certs().ca_pem);
  auto transport = MakeTransport({.ca_file = ca.path()});
  ASSERT_NE(transport, nullptr);
  Outcome outcome;
  HttpRequest request;
  request.url = server.Url("/x");
  transport->Send(std::move(request), outcome.Callback());
  ExpectError(outcome.Wait(), absl::StatusCode::kUnavailable, "UPSTREAM_CONNECTION_LOST", "true");
}

// DropFirstPost answers GETs with 200 and keeps the connection open; it drops
// the connection of the first POST without a word (as a server crashing, or
// closing an idle connection, just as the request arrived) and answers later
// POSTs with 201.
KeepAliveTlsServer::Reply DropFirstPost() {
  auto posts = std::make_shared<std::atomic<int>>(0);
  return [posts](const std::string& head) -> std::string {
    if (absl::StartsWith(head, "GET ")) return "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
    if (posts->fetch_add(1) == 0) return "";
    return "HTTP/1.1 201 Created\r\nContent-Length: 7\r\n\r\ncreated";
  };
}

// WarmUpAndPost sends a GET (leaving an idle connection in the pool), then
// a POST with `idempotent`, and returns the POST's outcome.
absl::StatusOr<HttpResponse> WarmUpAndPost(CurlTransport& transport,
                                           const KeepAliveTlsServer& server, bool idempotent) {
  Outcome warm;
  HttpRequest get;
  get.url = server.Url("/warm");
  transport.Send(std::move(get), warm.Callback());
  auto warmed = warm.Wait();
  EXPECT_TRUE(warmed.ok()) << warmed.status();
  Outcome outcome;
  HttpRequest post;
  post.method = "POST";
  post.url = server.Url("/api/machines/1/StopAndQuarantineFile");
  post.body = R"({"Comment":"quarantine"})";
  post.idempotent = idempotent;
  transport.Send(std::move(post), outcome.Callback());
  return outcome.Wait();
}

// OkReply answers every request 200 "ok", keeping the connection.
KeepAliveTlsServer::Reply OkReply() {
  return [](const std::string&) {
    return std::string("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
  };
}

// SendAndWait sends `method` to `url` and waits for the answer; a POST goes
// with body "{}" and idempotent = false, as the Defender client sends it.
absl::StatusOr<HttpResponse> SendAndWait(CurlTransport& transport, const std::string& method,
                                         const std::string& url) {
  Outcome outcome;
  HttpRequest request;
  request.method = method;
  request.url = url;
  if (method == "POST") {
    request.body = "{}";
    request.idempotent = false;
  }
  transport.Send(std::move(request), outcome.Callback());
  return outcome.Wait();
}

TEST(CurlTransportConnectTest, NonIdempotentRequestIsSentAtMostOnce) {
  for (bool reset : {false, true}) {
    SCOPED_TRACE(reset ? "connection reset" : "connection closed");
    KeepAliveTlsServer server(Certs(), DropFirstPost(), reset);
    TempFile ca(Certs().ca_pem);
    auto transport = MakeTransport({.ca_file = ca.path()});
    ASSERT_NE(transport, nullptr);

    auto response = WarmUpAndPost(*transport, server, /*idempotent=*/false);
    ExpectError(response, absl::StatusCode::kUnavailable, "UPSTREAM_CONNECTION_LOST", "true");
    EXPECT_TRUE(absl::StrContains(response.status().message(), "not sent again"))
        << response.status();
    transport.reset();
    // One POST, on the warm connection; libcurl's repeat on a new one was
    // stopped before it went out.
    const auto seen = server.seen();
    ASSERT_EQ(seen.size(), 2u);
    EXPECT_TRUE(absl::StartsWith(seen[0].request_line, "GET /warm ")) << seen[0].request_line;
    EXPECT_TRUE(absl::StartsWith(seen[1].request_line, "POST ")) << seen[1].request_line;
    EXPECT_EQ(seen[1].connection, seen[0].connection);
    EXPECT_EQ(server.Count("POST "), 1);
  }
}

// What the rule above prevents: libcurl repeats a request whose REUSED
// connection dies before any answer byte, so an idempotent request may reach
// the server twice, here creating a second resource.
TEST(CurlTransportConnectTest, IdempotentRequestOnADeadReusedConnectionIsRepeatedByLibcurl) {
  for (bool reset : {false, true}) {
    SCOPED_TRACE(reset ? "connection reset" : "connection closed");
    KeepAliveTlsServer server(Certs(), DropFirstPost(), reset);
    TempFile ca(Certs().ca_pem);
    auto transport = MakeTransport({.ca_file = ca.path()});
    ASSERT_NE(transport, nullptr);

    auto response = WarmUpAndPost(*transport, server, /*idempotent=*/true);
    ASSERT_TRUE(response.ok()) << response.status();
    EXPECT_EQ(response->status, 201);
    transport.reset();
    const auto seen = server.seen();
    ASSERT_EQ(seen.size(), 3u);
    EXPECT_EQ(server.Count("POST "), 2);
    EXPECT_EQ(seen[1].connection, seen[0].connection);  // the reused connection
    EXPECT_NE(seen[2].connection, seen[0].connection);  // libcurl's silent repeat
  }
}

TEST(CurlTransportConnectTest, NonIdempotentRequestsReuseOneConnection) {
  KeepAliveTlsServer server(Certs(), OkReply());
  TempFile ca(Certs().ca_pem);
  auto transport = MakeTransport({.ca_file = ca.path()});
  ASSERT_NE(transport, nullptr);
  for (int i = 0; i < 3; ++i) {
    auto response = SendAndWait(*transport, "POST", server.Url("/x"));
    ASSERT_TRUE(response.ok()) << response.status();
  }
  transport.reset();
  const auto seen = server.seen();
  ASSERT_EQ(seen.size(), 3u);
  EXPECT_EQ(seen[0].connection, seen[1].connection);
  EXPECT_EQ(seen[1].connection, seen[2].connection);
  EXPECT_FALSE(seen[0].tls_resumed);
}

TEST(CurlTransportConnectTest, NonIdempotentRequestTakesNoConnectionIdleForASecond) {
  // A server may have closed an idle connection in a way libcurl cannot see:
  // a POST after a pause opens a new connection (resuming TLS), while a GET
  // still reuses the idle one.
  KeepAliveTlsServer server(Certs(), OkReply());
  TempFile ca(Certs().ca_pem);
  auto transport = MakeTransport({.ca_file = ca.path()});
  ASSERT_NE(transport, nullptr);
  auto send = [&](const std::string& method) {
    auto response = SendAndWait(*transport, method, server.Url("/x"));
    EXPECT_TRUE(response.ok()) << response.status();
  };
  send("GET");
  absl::SleepFor(absl::Milliseconds(2100));
  send("GET");   // reuses the idle connection
  absl::SleepFor(absl::Milliseconds(2100));
  send("POST");  // does not
  transport.reset();
  const auto seen = server.seen();
  ASSERT_EQ(seen.size(), 3u);
  EXPECT_EQ(seen[1].connection, seen[0].connection);
  EXPECT_NE(seen[2].connection, seen[1].connection);
  EXPECT_TRUE(seen[2].tls_resumed);
}

// Nghttpd runs nghttp2's HTTP/2 server (Debian's nghttp2-server) over TLS on
// 127.0.0.1, serving `htdocs`, with a verbose frame log.
class Nghttpd {
 public:
  static constexpr char kBinary[] = "/usr/sbin/nghttpd";

  explicit Nghttpd(const std::string& htdocs)
      : key_(Certs().key_pem), cert_(Certs().cert_pem), log_("") {
    port_ = ClosedPort();
    pid_ = fork();
    if (pid_ == 0) {
      int fd = open(log_.path().c_str(), O_WRONLY | O_TRUNC);
      dup2(fd, 1);
      dup2(fd, 2);
      const std::string port = std::to_string(port_);
      execl(kBinary, kBinary, "-v", "--address=127.0.0.1", ("--htdocs=" + htdocs).c_str(),
            port.c_str(), key_.path().c_str(), cert_.path().c_str(), static_cast<char*>(nullptr));
      _exit(127);
    }
    // Ready once it accepts connections.
    for (int i = 0; i < 200; ++i) {
      const int fd = socket(AF_INET, SOCK_STREAM, 0);
      sockaddr_in addr{};
      addr.sin_family = AF_INET;
      addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
      addr.sin_port = htons(static_cast<uint16_t>(port_));
      const bool up = connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0;
      close(fd);
      if (up) return;
      absl::SleepFor(absl::Milliseconds(25));
    }
    ADD_FAILURE() << "nghttpd did not start";
  }
  ~Nghttpd() { Stop(); }

  void Stop() {
    if (pid_ <= 0) return;
    kill(pid_, SIGTERM);
    waitpid(pid_, nullptr, 0);
    pid_ = -1;
  }
  std::string Url(const std::string& path) const {
    return absl::StrCat("https://127.0.0.1:", port_, path);
  }
  // Connections returns how many connections carried requests: the log's
  // "[id=N]" prefixes on "recv HEADERS" lines (the readiness probe sent none).
  int Connections() const {
    std::ifstream in(log_.path());
    std::string line;
    std::set<std::string> ids;
    while (std::getline(in, line)) {
      const size_t at = line.find("[id=");
      if (at != std::string::npos && line.find("recv HEADERS") != std::string::npos) {
        ids.insert(line.substr(at, line.find(']', at) - at));
      }
    }
    return static_cast<int>(ids.size());
  }

 private:
  TempFile key_, cert_, log_;
  int port_ = 0;
  pid_t pid_ = -1;
};

TEST(CurlTransportHttp2Test, ConcurrentRequestsShareOneHttp2ConnectionWhenTheServerOffersIt) {
  if (access(Nghttpd::kBinary, X_OK) != 0) {
    GTEST_SKIP() << Nghttpd::kBinary << " is missing (Debian's nghttp2-server; scripts/install-deps)";
  }
  char dir[] = "/tmp/h2-htdocs-XXXXXX";
  ASSERT_NE(mkdtemp(dir), nullptr);
  { std::ofstream(absl::StrCat(dir, "/x")) << "hello"; }
  Nghttpd server(dir);
  TempFile ca(Certs().ca_pem);
  auto transport = MakeTransport({.ca_file = ca.path()});
  ASSERT_NE(transport, nullptr);
  constexpr int kRequests = 8;
  std::vector<Outcome> outcomes(kRequests);
  for (Outcome& outcome : outcomes) {
    HttpRequest request;
    request.url = server.Url("/x");
    transport->Send(std::move(request), outcome.Callback());
  }
  for (Outcome& outcome : outcomes) {
    auto response = outcome.Wait();
    ASSERT_TRUE(response.ok()) << response.status();
    EXPECT_EQ(response->status, 200);
    EXPECT_EQ(response->http_version, "2");
    EXPECT_EQ(response->body, "hello");
  }
  transport.reset();
  server.Stop();
  EXPECT_EQ(server.Connections(), 1) << "the requests were not multiplexed on one connection";
  std::remove(absl::StrCat(dir, "/x").c_str());
  rmdir(dir);
}

TEST(CurlTransportConnectTest, AnswerSaysItsHttpVersion) {
  KeepAliveTlsServer server(Certs(), OkReply());
  TempFile ca(Certs().ca_pem);
  auto transport = MakeTransport({.ca_file = ca.path()});
  ASSERT_NE(transport, nullptr);
  auto response = SendAndWait(*transport, "GET", server.Url("/x"));
  ASSERT_TRUE(response.ok()) << response.status();
  EXPECT_EQ(response->http_version, "1.1");
}

TEST(CurlTransportSchedulerTest, TasksRunInTimeOrderOnTheLoopThreadAndMaySend) {
  KeepAliveTlsServer server(Certs(), OkReply());
  TempFile ca(Certs().ca_pem);
  auto transport = MakeTransport({.ca_file = ca.path()});
  ASSERT_NE(transport, nullptr);
  Scheduler& timers = transport->scheduler();

  // The loop thread, as a transfer's callback sees it.
  std::thread::id loop_thread;
  {
    HttpRequest get;
    get.url = server.Url("/warm");
    absl::Notification seen;
    transport->Send(std::move(get), [&](absl::StatusOr<HttpResponse>) {
      loop_thread = std::this_thread::get_id();
      seen.Notify();
    });
    seen.WaitForNotification();
  }

  absl::Mutex mu;
  std::vector<int> order;
  std::vector<std::thread::id> threads;
  absl::Notification sent;
  const absl::Time start = absl::Now();
  const absl::Time later = start + absl::Milliseconds(80);
  bool early = false;
  timers.RunAt(later, [&] {
    early = absl::Now() < later;
    absl::MutexLock lock(&mu);
    order.push_back(2);
    threads.push_back(std::this_thread::get_id());
    // A task may send, and schedule another task.
    HttpRequest get;
    get.url = server.Url("/from-a-timer");
    transport->Send(std::move(get), [&](absl::StatusOr<HttpResponse> r) {
      EXPECT_TRUE(r.ok()) << r.status();
      sent.Notify();
    });
    timers.RunAt(absl::Now(), [&] {
      absl::MutexLock lock(&mu);
      order.push_back(3);
    });
  });
  timers.RunAt(start, [&] {
    absl::MutexLock lock(&mu);
    order.push_back(1);
    threads.push_back(std::this_thread::get_id());
  });
  const Scheduler::TaskId cancelled = timers.RunAt(start + absl::Milliseconds(40), [&] {
    absl::MutexLock lock(&mu);
    order.push_back(-1);
  });
  EXPECT_TRUE(timers.Cancel(cancelled));
  EXPECT_FALSE(timers.Cancel(cancelled));
  sent.WaitForNotification();
  for (int i = 0; i < 500 && transport->PendingTimers() > 0; ++i) {
    absl::SleepFor(absl::Milliseconds(10));
  }
  absl::MutexLock lock(&mu);
  EXPECT_EQ(order, (std::vector<int>{1, 2, 3}));
  EXPECT_FALSE(early) << "a task ran before its time";
  for (const std::thread::id& id : threads) EXPECT_EQ(id, loop_thread);
}

TEST(CurlTransportSchedulerTest, DestroyingTheTransportDropsTasksUnrun) {
  TempFile ca(Certs().ca_pem);
  auto transport = MakeTransport({.ca_file = ca.path()});
  ASSERT_NE(transport, nullptr);
  std::atomic<int> ran{0};
  auto flag = std::make_shared<int>(0);
  std::weak_ptr<int> watch = flag;
  transport->scheduler().RunAt(absl::Now() + absl::Hours(1),
                               [&ran, flag = std::move(flag)] { ++ran; });
  EXPECT_EQ(transport->PendingTimers(), 1u);
  transport.reset();
  EXPECT_EQ(ran.load(), 0);
  EXPECT_TRUE(watch.expired()) << "the dropped task's captures were not destroyed";
}

TEST(CurlTransportConnectTest, RequestHeadIsSentAsGiven) {
  absl::Mutex mu;
  std::string head;
  RawTlsServer server(Certs(), [&](SSL* ssl) {
    std::string got = RawTlsServer::ReadHead(ssl);
    {
      absl::MutexLock lock(&mu);
      head = got;
    }
    RawTlsServer::Write(ssl, "HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n");
  });
  TempFile ca(Certs().ca_pem);
  auto transport = MakeTransport({.ca_file = ca.path(), .user_agent = "test-agent/1"});
  ASSERT_NE(transport, nullptr);
  Outcome outcome;
  HttpRequest request;
  request.method = "POST";
  request.url = server.Url("/token");
  request.headers = {{"Content-Type", "application/x-www-form-urlencoded"}, {"X-Empty", ""}};
  request.body = FormEncode({{"a", "1"}});
  transport->Send(std::move(request), outcome.Callback());
  auto response = outcome.Wait();
  ASSERT_TRUE(response.ok()) << response.status();
  EXPECT_EQ(response->status, 204);
  absl::MutexLock lock(&mu);
  EXPECT_TRUE(absl::StartsWith(head, "POST /token HTTP/1.1\r\n")) << head;
  EXPECT_TRUE(absl::StrContains(head, "\r\nX-Empty:\r\n")) << head;
  EXPECT_TRUE(absl::StrContains(head, "\r\nContent-Length: 3\r\n")) << head;
  EXPECT_TRUE(absl::StrContains(head, "\r\nUser-Agent: test-agent/1\r\n")) << head;
  EXPECT_FALSE(absl::StrContains(head, "Expect:")) << head;
}

TEST(CurlTransportConnectTest, NewConnectionsResumeTheTlsSession) {
  absl::Mutex mu;
  std::vector<bool> resumed;
  RawTlsServer server(Certs(), [&](SSL* ssl) {
    RawTlsServer::ReadHead(ssl);
    {
      absl::MutexLock lock(&mu);
      resumed.push_back(SSL_session_reused(ssl) == 1);
    }
    // "Connection: close" makes each request open a new connection.
    RawTlsServer::Write(ssl, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok");
  });
  TempFile ca(Certs().ca_pem);
  auto transport = MakeTransport({.ca_file = ca.path()});
  ASSERT_NE(transport, nullptr);
  for (int i = 0; i < 3; ++i) {
    Outcome outcome;
    HttpRequest request;
    request.url = server.Url("/x");
    transport->Send(std::move(request), outcome.Callback());
    auto response = outcome.Wait();
    ASSERT_TRUE(response.ok()) << response.status();
  }
  absl::MutexLock lock(&mu);
  ASSERT_EQ(resumed.size(), 3u);
  EXPECT_FALSE(resumed[0]);
  EXPECT_TRUE(resumed[1]);
  EXPECT_TRUE(resumed[2]);
}

TEST(CurlTransportConnectTest, InterimAnswersDoNotLeakHeaders) {
  RawTlsServer server(Certs(), [](SSL* ssl) {
    RawTlsServer::ReadHead(ssl);
    RawTlsServer::Write(ssl,
                        "HTTP/1.1 100 Continue\r\nX-Interim: yes\r\n\r\n"
                        "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Final: yes\r\n"
                        "X-Folded: first\r\n  second\r\nConnection: close\r\n\r\nok");
  });
  TempFile ca(Certs().ca_pem);
  auto transport = MakeTransport({.ca_file = ca.path()});
  ASSERT_NE(transport, nullptr);
  Outcome outcome;
  HttpRequest request;
  request.url = server.Url("/x");
  transport->Send(std::move(request), outcome.Callback());
  auto response = outcome.Wait();
  ASSERT_TRUE(response.ok()) << response.status();
  EXPECT_EQ(response->status, 200);
  EXPECT_EQ(response->body, "ok");
  EXPECT_EQ(response->Header("X-Interim"), "");
  EXPECT_EQ(response->Header("X-Final"), "yes");
  EXPECT_EQ(response->Header("X-Folded"), "first second");
}

}  // namespace
}  // namespace defender::http

namespace defender::http {
namespace {

// Proxy variables are read by libcurl for each transfer; this test changes
// them only while no transport thread exists.
TEST(CurlTransportProxyTest, HonoursHttpsProxyFromTheEnvironment) {
  FakeProxy proxy;
  TempFile ca(Certs().ca_pem);
  setenv("https_proxy", absl::StrCat("http://127.0.0.1:", proxy.port()).c_str(), 1);
  setenv("no_proxy", "", 1);
  setenv("NO_PROXY", "", 1);
  absl::StatusOr<HttpResponse> response;
  {
    auto transport = MakeTransport({.ca_file = ca.path()});
    ASSERT_NE(transport, nullptr);
    Outcome outcome;
    HttpRequest request;
    request.method = "POST";
    request.url = absl::StrCat("https://127.0.0.1:", ClosedPort(), "/api/x");
    transport->Send(std::move(request), outcome.Callback());
    response = outcome.Wait();
  }
  unsetenv("https_proxy");
  setenv("no_proxy", "127.0.0.1,localhost", 1);
  setenv("NO_PROXY", "127.0.0.1,localhost", 1);

  EXPECT_TRUE(absl::StartsWith(proxy.seen(), "CONNECT 127.0.0.1:")) << proxy.seen();
  ExpectError(response, absl::StatusCode::kUnavailable, "UPSTREAM_CONNECT_FAILED", "false");
}

// A no_proxy request (managed identity endpoints) goes straight to its host
// even when every proxy variable points elsewhere; the same request without
// the flag still goes through the proxy.
TEST(CurlTransportProxyTest, NoProxyRequestsGoDirect) {
  FakeProxy proxy;
  TempFile ca(Certs().ca_pem);
  TlsServer tls(Certs());
  tls.server().Get("/tls", [](const httplib::Request&, httplib::Response& res) {
    res.set_content("direct tls", "text/plain");
  });
  tls.Start();
  httplib::Server plain;
  plain.Get(
      "/metadata/identity/oauth2/token", [](const httplib::Request& req, httplib::Response& res) {
        res.set_content(absl::StrCat("direct ", req.get_header_value("Metadata")), "text/plain");
      });
  const int plain_port = plain.bind_to_any_port("127.0.0.1");
  ASSERT_GT(plain_port, 0);
  std::thread plain_thread([&plain] { plain.listen_after_bind(); });
  const std::string plain_url = absl::StrCat(
      "http://127.0.0.1:", plain_port, "/metadata/identity/oauth2/token?api-version=2018-02-01");

  const std::string proxy_url = absl::StrCat("http://127.0.0.1:", proxy.port());
  setenv("https_proxy", proxy_url.c_str(), 1);
  setenv("http_proxy", proxy_url.c_str(), 1);
  setenv("all_proxy", proxy_url.c_str(), 1);
  setenv("no_proxy", "", 1);
  setenv("NO_PROXY", "", 1);
  absl::StatusOr<HttpResponse> direct_tls, direct_plain, proxied_plain, direct_again;
  {
    auto transport = MakeTransport({.ca_file = ca.path()});
    ASSERT_NE(transport, nullptr);
    auto send = [&transport](const std::string& url, bool no_proxy) {
      Outcome outcome;
      HttpRequest request;
      request.url = url;
      request.headers = {{"Metadata", "true"}};
      request.no_proxy = no_proxy;
      transport->Send(std::move(request), outcome.Callback());
      return outcome.Wait();
    };
    direct_tls = send(tls.Url("/tls"), true);
    direct_plain = send(plain_url, true);
    proxied_plain = send(plain_url, false);
    direct_again = send(plain_url, true);
  }
  unsetenv("https_proxy");
  unsetenv("http_proxy");
  unsetenv("all_proxy");
  setenv("no_proxy", "127.0.0.1,localhost", 1);
  setenv("NO_PROXY", "127.0.0.1,localhost", 1);
  plain.stop();
  plain_thread.join();

  ASSERT_TRUE(direct_tls.ok()) << direct_tls.status();
  EXPECT_EQ(direct_tls->status, 200);
  EXPECT_EQ(direct_tls->body, "direct tls");
  ASSERT_TRUE(direct_plain.ok()) << direct_plain.status();
  EXPECT_EQ(direct_plain->status, 200);
  EXPECT_EQ(direct_plain->body, "direct true");
  ASSERT_TRUE(direct_again.ok()) << direct_again.status();
  EXPECT_EQ(direct_again->body, "direct true");
  // Only the request without the flag reached the proxy (which refuses it).
  ASSERT_TRUE(proxied_plain.ok()) << proxied_plain.status();
  EXPECT_EQ(proxied_plain->status, 403);
  EXPECT_EQ(proxy.seen(), absl::StrCat("GET ", plain_url, " HTTP/1.1\n"));
}

}  // namespace
}  // namespace defender::http
