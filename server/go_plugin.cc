#include "server/go_plugin.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <utility>
#include <vector>

#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "absl/synchronization/mutex.h"
#include "adapters/common/error.h"
#include "adapters/common/openssl_ptr.h"
#include "grpcpp/security/server_credentials.h"
#include "plugin/grpc_controller.grpc.pb.h"
#include "plugin/grpc_stdio.grpc.pb.h"
#include "server/log.h"

namespace defender {
namespace {

absl::Status HandshakeError(absl::StatusCode code, const std::string& message,
                            const char* reason) {
  return MakeError(code, message, reason);
}

// ParsePort reads one of PLUGIN_MIN_PORT / PLUGIN_MAX_PORT ("" = 0).
absl::StatusOr<int> ParsePort(const std::string& text, const char* var) {
  int port = 0;
  if (text.empty()) return 0;
  if (!absl::SimpleAtoi(text, &port) || port < 0 || port > 65535) {
    return HandshakeError(absl::StatusCode::kInvalidArgument,
                          absl::StrCat(var, " must be a port number (0-65535), not '", text, "'"),
                          "GO_PLUGIN_BAD_PORT");
  }
  return port;
}

// CanBind says whether 127.0.0.1:`port` can be bound now (with SO_REUSEADDR,
// as gRPC binds it).
bool CanBind(int port) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return false;
  int one = 1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_port = htons(static_cast<uint16_t>(port));
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  const bool bound = bind(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address)) == 0;
  close(fd);
  return bound;
}


absl::Status CryptoError(const std::string& step) {
  return HandshakeError(absl::StatusCode::kInternal,
                        absl::StrCat("AutoMTLS: cannot ", step, " (OpenSSL)"),
                        "GO_PLUGIN_CERTIFICATE_FAILED");
}

std::string BioText(BIO* bio) {
  char* data = nullptr;
  const long size = BIO_get_mem_data(bio, &data);
  return std::string(data, size > 0 ? static_cast<size_t>(size) : 0);
}

// AddExtension adds one X.509v3 extension in OpenSSL's config syntax.
bool AddExtension(X509* cert, int nid, const char* value) {
  X509V3_CTX context;
  X509V3_set_ctx_nodb(&context);
  X509V3_set_ctx(&context, cert, cert, nullptr, nullptr, 0);
  X509_EXTENSION* extension = X509V3_EXT_conf_nid(nullptr, &context, nid, value);
  if (extension == nullptr) return false;
  const bool added = X509_add_ext(cert, extension, -1) == 1;
  X509_EXTENSION_free(extension);
  return added;
}

}  // namespace

absl::Status CheckGoPluginCookie(const GoPluginEnvironment& env) {
  if (env.magic_cookie && *env.magic_cookie == kGoPluginMagicCookieValue) {
    return absl::OkStatus();
  }
  return HandshakeError(absl::StatusCode::kFailedPrecondition, kGoPluginNotAPluginMessage,
                        "GO_PLUGIN_BAD_COOKIE");
}

absl::StatusOr<int> NegotiateGoPluginVersion(const GoPluginEnvironment& env) {
  // A host that sends no list is a legacy one: go-plugin then serves its
  // handshake's version, which is ours.
  if (!env.protocol_versions || env.protocol_versions->empty()) {
    return kGoPluginAppProtocolVersion;
  }
  for (absl::string_view entry : absl::StrSplit(*env.protocol_versions, ',')) {
    int version = 0;
    if (absl::SimpleAtoi(absl::StripAsciiWhitespace(entry), &version) &&
        version == kGoPluginAppProtocolVersion) {
      return version;
    }
  }
  return HandshakeError(
      absl::StatusCode::kFailedPrecondition,
      absl::StrCat("go-plugin: the host speaks app protocol version(s) ", *env.protocol_versions,
                   " (PLUGIN_PROTOCOL_VERSIONS); this defender-plugin speaks only version ",
                   kGoPluginAppProtocolVersion,
                   ": set ProtocolVersion: 1 in the host's HandshakeConfig"),
      "GO_PLUGIN_VERSION_MISMATCH");
}

namespace {

// FirstFreePort is the first port of first..last that 127.0.0.1 can bind.
absl::StatusOr<int> FirstFreePort(int first, int last, int range_start) {
  for (int port = std::max(first, 1); port <= last; ++port) {
    if (CanBind(port)) return port;
  }
  return HandshakeError(absl::StatusCode::kUnavailable,
                        absl::StrCat("go-plugin: no free port on 127.0.0.1 in PLUGIN_MIN_PORT..",
                                     "PLUGIN_MAX_PORT (", range_start, "-", last, ")"),
                        "GO_PLUGIN_NO_PORT");
}

}  // namespace

absl::StatusOr<int> PickGoPluginPort(const GoPluginEnvironment& env) {
  absl::StatusOr<int> min_port = ParsePort(env.min_port, "PLUGIN_MIN_PORT");
  if (!min_port.ok()) return min_port.status();
  absl::StatusOr<int> max_port = ParsePort(env.max_port, "PLUGIN_MAX_PORT");
  if (!max_port.ok()) return max_port.status();
  if (*min_port == 0 && *max_port == 0) return 0;
  if (*min_port > *max_port) {
    return HandshakeError(absl::StatusCode::kInvalidArgument,
                          absl::StrCat("PLUGIN_MIN_PORT (", *min_port,
                                       ") is greater than PLUGIN_MAX_PORT (", *max_port, ")"),
                          "GO_PLUGIN_BAD_PORT");
  }
  return FirstFreePort(*min_port, *max_port, *min_port);
}

absl::StatusOr<AutoMtlsIdentity> GenerateAutoMtlsIdentity() {
  UniquePkey key(EVP_EC_gen("P-256"));
  if (key == nullptr) return CryptoError("generate a P-256 key");
  UniqueX509 cert(X509_new());
  if (cert == nullptr || X509_set_version(cert.get(), 2) != 1) {
    return CryptoError("make a certificate");
  }
  // A random 128-bit serial, as go-plugin's.
  UniqueBignum serial(BN_new());
  if (serial == nullptr || BN_rand(serial.get(), 128, BN_RAND_TOP_ANY, BN_RAND_BOTTOM_ANY) != 1 ||
      BN_to_ASN1_INTEGER(serial.get(), X509_get_serialNumber(cert.get())) == nullptr) {
    return CryptoError("make a serial number");
  }
  X509_NAME* name = X509_get_subject_name(cert.get());
  if (X509_NAME_add_entry_by_txt(name, "O", MBSTRING_ASC,
                                 reinterpret_cast<const unsigned char*>("defender-plugin"), -1,
                                 -1, 0) != 1 ||
      X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC,
                                 reinterpret_cast<const unsigned char*>("localhost"), -1, -1,
                                 0) != 1 ||
      X509_set_issuer_name(cert.get(), name) != 1) {
    return CryptoError("name the certificate");
  }
  constexpr long kThirtyYears = 262980L * 3600;  // go-plugin's validity
  if (X509_gmtime_adj(X509_getm_notBefore(cert.get()), -30) == nullptr ||
      X509_gmtime_adj(X509_getm_notAfter(cert.get()), kThirtyYears) == nullptr ||
      X509_set_pubkey(cert.get(), key.get()) != 1) {
    return CryptoError("set the validity and key");
  }
  if (!AddExtension(cert.get(), NID_basic_constraints, "critical,CA:TRUE") ||
      !AddExtension(cert.get(), NID_key_usage,
                    "critical,digitalSignature,keyEncipherment,keyAgreement,keyCertSign") ||
      !AddExtension(cert.get(), NID_ext_key_usage, "clientAuth,serverAuth") ||
      !AddExtension(cert.get(), NID_subject_alt_name, "DNS:localhost") ||
      !AddExtension(cert.get(), NID_subject_key_identifier, "hash")) {
    return CryptoError("add the certificate's extensions");
  }
  if (X509_sign(cert.get(), key.get(), EVP_sha256()) == 0) return CryptoError("sign");

  AutoMtlsIdentity identity;
  UniqueBio cert_pem(BIO_new(BIO_s_mem()));
  UniqueBio key_pem(BIO_new(BIO_s_mem()));
  if (cert_pem == nullptr || key_pem == nullptr ||
      PEM_write_bio_X509(cert_pem.get(), cert.get()) != 1 ||
      PEM_write_bio_PrivateKey(key_pem.get(), key.get(), nullptr, nullptr, 0, nullptr,
                               nullptr) != 1) {
    return CryptoError("write PEM");
  }
  identity.certificate_pem = BioText(cert_pem.get());
  identity.private_key_pem = BioText(key_pem.get());
  unsigned char* der = nullptr;
  const int der_size = i2d_X509(cert.get(), &der);
  if (der_size <= 0) return CryptoError("write DER");
  identity.certificate_der.assign(reinterpret_cast<const char*>(der), der_size);
  OPENSSL_free(der);
  return identity;
}

std::shared_ptr<grpc::ServerCredentials> AutoMtlsServerCredentials(
    const AutoMtlsIdentity& identity, const std::string& client_certificate_pem) {
  grpc::SslServerCredentialsOptions options(
      GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY);
  options.pem_root_certs = client_certificate_pem;
  options.pem_key_cert_pairs.push_back({identity.private_key_pem, identity.certificate_pem});
  return grpc::SslServerCredentials(options);
}

std::string Base64RawStd(absl::string_view der) {
  std::string text(4 * ((der.size() + 2) / 3) + 1, '\0');
  const int written = EVP_EncodeBlock(reinterpret_cast<unsigned char*>(text.data()),
                                      reinterpret_cast<const unsigned char*>(der.data()),
                                      static_cast<int>(der.size()));
  text.resize(written);
  // RawStdEncoding: the standard alphabet without '=' padding.
  while (!text.empty() && text.back() == '=') text.pop_back();
  return text;
}

std::string GoPluginHandshakeLine(int app_version, absl::string_view address,
                                  absl::string_view certificate_der) {
  std::string line =
      absl::StrCat(kGoPluginCoreProtocolVersion, "|", app_version, "|tcp|", address, "|grpc");
  if (!certificate_der.empty()) absl::StrAppend(&line, "|", Base64RawStd(certificate_der));
  line += "\n";
  return line;
}

// --- The services ----------------------------------------------------------

// Controller: GRPCController.Shutdown replies, then runs on_shutdown once.
class GoPluginServices::Controller final : public ::plugin::GRPCController::CallbackService {
 public:
  explicit Controller(std::function<void()> on_shutdown) : on_shutdown_(std::move(on_shutdown)) {}

  grpc::ServerUnaryReactor* Shutdown(grpc::CallbackServerContext* context,
                                     const ::plugin::Empty* request,
                                     ::plugin::Empty* response) override {
    grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
    reactor->Finish(grpc::Status::OK);
    if (!asked_.exchange(true)) {
      Log(LogLevel::kInfo, "go-plugin: the host called GRPCController.Shutdown");
      if (on_shutdown_) on_shutdown_();
    }
    return reactor;
  }

 private:
  std::function<void()> on_shutdown_;
  std::atomic<bool> asked_{false};
};

// Stdio: GRPCStdio.StreamStdio streams nothing and stays open until
// EndStreams() or the caller cancels.
class GoPluginServices::Stdio final : public ::plugin::GRPCStdio::CallbackService {
 public:
  class Reactor final : public grpc::ServerWriteReactor<::plugin::StdioData> {
   public:
    explicit Reactor(Stdio& owner) : owner_(owner) {}

    void OnCancel() override {
      if (owner_.Claim(this)) Finish(grpc::Status::CANCELLED);
    }
    void OnDone() override {
      owner_.Forget(this);
      delete this;
    }

   private:
    Stdio& owner_;
  };

  grpc::ServerWriteReactor<::plugin::StdioData>* StreamStdio(
      grpc::CallbackServerContext* context, const google::protobuf::Empty* request) override {
    auto* reactor = new Reactor(*this);
    bool ended = false;
    {
      absl::MutexLock lock(&mu_);
      ended = ended_;
      ++open_;
      if (!ended) waiting_.insert(reactor);
    }
    if (ended) reactor->Finish(grpc::Status::OK);
    return reactor;
  }

  void EndAll() {
    std::vector<Reactor*> ending;
    {
      absl::MutexLock lock(&mu_);
      ended_ = true;
      ending.assign(waiting_.begin(), waiting_.end());
      waiting_.clear();
    }
    // Each is alive until its OnDone, which needs this Finish.
    for (Reactor* reactor : ending) reactor->Finish(grpc::Status::OK);
  }

  int open() const {
    absl::MutexLock lock(&mu_);
    return open_;
  }

 private:
  // Claim takes a reactor out of the waiting set: true when the caller is the
  // one to finish it.
  bool Claim(Reactor* reactor) {
    absl::MutexLock lock(&mu_);
    return waiting_.erase(reactor) == 1;
  }
  void Forget(Reactor* reactor) {
    absl::MutexLock lock(&mu_);
    waiting_.erase(reactor);
    --open_;
  }

  mutable absl::Mutex mu_;
  absl::flat_hash_set<Reactor*> waiting_ ABSL_GUARDED_BY(mu_);  // not finished yet
  int open_ ABSL_GUARDED_BY(mu_) = 0;                            // not done yet
  bool ended_ ABSL_GUARDED_BY(mu_) = false;
};

GoPluginServices::GoPluginServices(std::function<void()> on_shutdown)
    : controller_(std::make_unique<Controller>(std::move(on_shutdown))),
      stdio_(std::make_unique<Stdio>()) {}

GoPluginServices::~GoPluginServices() = default;

std::vector<grpc::Service*> GoPluginServices::services() {
  return {controller_.get(), stdio_.get()};
}

void GoPluginServices::EndStreams() { stdio_->EndAll(); }

int GoPluginServices::open_streams() const { return stdio_->open(); }

// --- The mode ----------------------------------------------------------------

absl::StatusOr<std::unique_ptr<GoPluginMode>> GoPluginMode::Prepare(
    const GoPluginEnvironment& env, std::function<void()> on_shutdown) {
  if (absl::Status cookie = CheckGoPluginCookie(env); !cookie.ok()) return cookie;
  std::unique_ptr<GoPluginMode> mode(new GoPluginMode());
  absl::StatusOr<int> version = NegotiateGoPluginVersion(env);
  if (!version.ok()) return version.status();
  mode->app_version_ = *version;
  absl::StatusOr<int> port = PickGoPluginPort(env);
  if (!port.ok()) return port.status();
  mode->port_ = *port;
  if (*port != 0) mode->max_port_ = *ParsePort(env.max_port, "PLUGIN_MAX_PORT");
  if (!env.client_certificate_pem.empty()) {
    // The host's certificate must parse: a typo here would otherwise show as
    // every handshake failing.
    UniqueBio bio(BIO_new_mem_buf(env.client_certificate_pem.data(),
                                                      static_cast<int>(
                                                          env.client_certificate_pem.size())));
    UniqueX509 host_cert(
        bio == nullptr ? nullptr : PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr));
    if (host_cert == nullptr) {
      return HandshakeError(absl::StatusCode::kInvalidArgument,
                            "go-plugin: PLUGIN_CLIENT_CERT holds no PEM certificate",
                            "GO_PLUGIN_BAD_CLIENT_CERT");
    }
    absl::StatusOr<AutoMtlsIdentity> identity = GenerateAutoMtlsIdentity();
    if (!identity.ok()) return identity.status();
    mode->identity_ = *std::move(identity);
    mode->client_certificate_pem_ = env.client_certificate_pem;
  }
  mode->services_ = std::make_unique<GoPluginServices>(std::move(on_shutdown));
  return mode;
}

GoPluginMode::~GoPluginMode() = default;

std::string GoPluginMode::listen() const { return absl::StrCat("127.0.0.1:", port_); }

absl::Status GoPluginMode::NextPort() {
  if (port_ == 0) {
    return HandshakeError(absl::StatusCode::kUnavailable,
                          "go-plugin: cannot listen on 127.0.0.1", "GO_PLUGIN_NO_PORT");
  }
  absl::StatusOr<int> next = FirstFreePort(port_ + 1, max_port_, port_);
  if (!next.ok()) return next.status();
  port_ = *next;
  return absl::OkStatus();
}

ServerOptions GoPluginMode::server_options() {
  ServerOptions options;
  options.extra_services = services_->services();
  options.extra_health_names = {kGoPluginHealthName};
  if (auto_mtls()) {
    options.credentials = AutoMtlsServerCredentials(identity_, client_certificate_pem_);
  }
  GoPluginServices* services = services_.get();
  options.before_drain = [services] { services->EndStreams(); };
  return options;
}

std::string GoPluginMode::HandshakeLine(int port) const {
  return GoPluginHandshakeLine(app_version_, absl::StrCat("127.0.0.1:", port),
                               identity_.certificate_der);
}

}  // namespace defender
