// go-plugin mode's parts: the environment it reads, the cookie, version and
// port choice, the AutoMTLS certificate (checked with OpenSSL the way a Go
// host's crypto/x509 would look at it), the handshake line, and the
// controller and stdio services over real AutoMTLS on 127.0.0.1.
#include "server/go_plugin.h"
#include "adapters/common/openssl_ptr.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <map>
#include <memory>
#include <string>
#include <thread>

#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/security/credentials.h"
#include "grpcpp/server_builder.h"
#include "gtest/gtest.h"
#include "plugin/grpc_controller.grpc.pb.h"
#include "plugin/grpc_stdio.grpc.pb.h"

namespace defender {
namespace {

using ::testing::HasSubstr;

EnvLookup FakeEnv(std::map<std::string, std::string> vars) {
  return [vars](const std::string& name) -> absl::optional<std::string> {
    auto it = vars.find(name);
    if (it == vars.end()) return absl::nullopt;
    return it->second;
  };
}

GoPluginEnvironment Read(std::map<std::string, std::string> vars, bool flag = false) {
  const char* with_flag[] = {"defender-plugin", "--go-plugin"};
  const char* without[] = {"defender-plugin"};
  return flag ? ReadGoPluginEnvironment(2, with_flag, FakeEnv(vars))
              : ReadGoPluginEnvironment(1, without, FakeEnv(vars));
}

TEST(GoPluginEnvironmentTest, TheCookieVariableOrTheFlagAskForTheMode) {
  EXPECT_FALSE(Read({}).requested);
  EXPECT_TRUE(Read({}, /*flag=*/true).requested);
  GoPluginEnvironment env = Read({{"DEFENDER_PLUGIN_MAGIC_COOKIE", ""},
                                  {"PLUGIN_PROTOCOL_VERSIONS", "1,2"},
                                  {"PLUGIN_MIN_PORT", "10000"},
                                  {"PLUGIN_MAX_PORT", "25000"},
                                  {"PLUGIN_CLIENT_CERT", "PEM"}});
  EXPECT_TRUE(env.requested);
  EXPECT_EQ(env.magic_cookie, "");
  EXPECT_EQ(env.protocol_versions, "1,2");
  EXPECT_EQ(env.min_port, "10000");
  EXPECT_EQ(env.max_port, "25000");
  EXPECT_EQ(env.client_certificate_pem, "PEM");
}

TEST(GoPluginHandshakeTest, OnlyTheDocumentedCookieIsAccepted) {
  EXPECT_TRUE(CheckGoPluginCookie(Read({{kGoPluginMagicCookieKey, kGoPluginMagicCookieValue}})).ok());
  for (const GoPluginEnvironment& env :
       {Read({}, true), Read({{kGoPluginMagicCookieKey, "nope"}}),
        Read({{kGoPluginMagicCookieKey, ""}})}) {
    absl::Status status = CheckGoPluginCookie(env);
    EXPECT_EQ(status.code(), absl::StatusCode::kFailedPrecondition);
    EXPECT_THAT(std::string(status.message()), HasSubstr("This binary is a plugin."));
  }
}

TEST(GoPluginHandshakeTest, VersionOneIsPickedWhenListedOrWhenNoListIsSent) {
  EXPECT_EQ(*NegotiateGoPluginVersion(Read({})), 1);
  for (const char* list : {"1", "3,1", "x,1", "2, 1"}) {
    absl::StatusOr<int> version = NegotiateGoPluginVersion(Read({{"PLUGIN_PROTOCOL_VERSIONS", list}}));
    ASSERT_TRUE(version.ok()) << list << ": " << version.status();
    EXPECT_EQ(*version, 1);
  }
  absl::StatusOr<int> none = NegotiateGoPluginVersion(Read({{"PLUGIN_PROTOCOL_VERSIONS", "2,3"}}));
  EXPECT_EQ(none.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(none.status().message()), HasSubstr("2,3"));
  EXPECT_THAT(std::string(none.status().message()), HasSubstr("only version 1"));
}

TEST(GoPluginHandshakeTest, PortComesFromTheRangeSkippingBusyPorts) {
  EXPECT_EQ(*PickGoPluginPort(Read({})), 0);
  EXPECT_EQ(*PickGoPluginPort(Read({{"PLUGIN_MIN_PORT", "0"}, {"PLUGIN_MAX_PORT", "0"}})), 0);
  EXPECT_EQ(PickGoPluginPort(Read({{"PLUGIN_MIN_PORT", "9"}, {"PLUGIN_MAX_PORT", "8"}})).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(PickGoPluginPort(Read({{"PLUGIN_MIN_PORT", "ten"}, {"PLUGIN_MAX_PORT", "20"}}))
                .status()
                .code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(PickGoPluginPort(Read({{"PLUGIN_MIN_PORT", "1"}, {"PLUGIN_MAX_PORT", "70000"}}))
                .status()
                .code(),
            absl::StatusCode::kInvalidArgument);

  // A listening socket holds one port; the range starting there gives another.
  int busy = socket(AF_INET, SOCK_STREAM, 0);
  ASSERT_GE(busy, 0);
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(bind(busy, reinterpret_cast<sockaddr*>(&address), sizeof(address)), 0);
  ASSERT_EQ(listen(busy, 1), 0);
  socklen_t size = sizeof(address);
  ASSERT_EQ(getsockname(busy, reinterpret_cast<sockaddr*>(&address), &size), 0);
  const int busy_port = ntohs(address.sin_port);
  absl::StatusOr<int> port = PickGoPluginPort(Read(
      {{"PLUGIN_MIN_PORT", std::to_string(busy_port)},
       {"PLUGIN_MAX_PORT", std::to_string(std::min(busy_port + 50, 65535))}}));
  ASSERT_TRUE(port.ok()) << port.status();
  EXPECT_GT(*port, busy_port);
  absl::StatusOr<int> only_busy = PickGoPluginPort(Read(
      {{"PLUGIN_MIN_PORT", std::to_string(busy_port)}, {"PLUGIN_MAX_PORT", std::to_string(busy_port)}}));
  EXPECT_EQ(only_busy.status().code(), absl::StatusCode::kUnavailable);
  close(busy);
}

TEST(GoPluginModeTest, NextPortMovesPastAPortTakenAfterTheCheck) {
  absl::StatusOr<std::unique_ptr<GoPluginMode>> any = GoPluginMode::Prepare(
      Read({{kGoPluginMagicCookieKey, kGoPluginMagicCookieValue}}), nullptr);
  ASSERT_TRUE(any.ok()) << any.status();
  EXPECT_EQ((*any)->listen(), "127.0.0.1:0");
  EXPECT_EQ((*any)->NextPort().code(), absl::StatusCode::kUnavailable);  // gRPC's choice

  // A range of three; another process takes the chosen port after the check.
  int taken = -1;
  int first = 0;
  for (first = 20000; first < 60000; first += 3) {
    absl::StatusOr<std::unique_ptr<GoPluginMode>> mode = GoPluginMode::Prepare(
        Read({{kGoPluginMagicCookieKey, kGoPluginMagicCookieValue},
              {"PLUGIN_MIN_PORT", std::to_string(first)},
              {"PLUGIN_MAX_PORT", std::to_string(first + 2)}}),
        nullptr);
    ASSERT_TRUE(mode.ok()) << mode.status();
    if ((*mode)->listen() != absl::StrCat("127.0.0.1:", first)) continue;  // busy: next range
    taken = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in address{};
    address.sin_family = AF_INET;
    address.sin_port = htons(first);
    address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ASSERT_EQ(bind(taken, reinterpret_cast<sockaddr*>(&address), sizeof(address)), 0);
    ASSERT_EQ(listen(taken, 1), 0);
    ASSERT_TRUE((*mode)->NextPort().ok());
    const std::string next = (*mode)->listen();
    EXPECT_TRUE(next == absl::StrCat("127.0.0.1:", first + 1) ||
                next == absl::StrCat("127.0.0.1:", first + 2))
        << next;
    // Past the end of the range: no retry left.
    while ((*mode)->NextPort().ok()) {
    }
    EXPECT_EQ((*mode)->NextPort().code(), absl::StatusCode::kUnavailable);
    break;
  }
  ASSERT_GE(taken, 0) << "no free range of three ports found";
  close(taken);
}

UniqueX509 FromDer(const std::string& der) {
  const unsigned char* data = reinterpret_cast<const unsigned char*>(der.data());
  return UniqueX509(d2i_X509(nullptr, &data, static_cast<long>(der.size())));
}

TEST(AutoMtlsIdentityTest, CertificateIsWhatAGoPluginHostVerifies) {
  absl::StatusOr<AutoMtlsIdentity> identity = GenerateAutoMtlsIdentity();
  ASSERT_TRUE(identity.ok()) << identity.status();
  UniqueX509 cert = FromDer(identity->certificate_der);
  ASSERT_NE(cert, nullptr);

  // The PEM and the DER are the same certificate; the key is its key.
  BIO* bio = BIO_new_mem_buf(identity->certificate_pem.data(),
                             static_cast<int>(identity->certificate_pem.size()));
  UniqueX509 from_pem(PEM_read_bio_X509(bio, nullptr, nullptr, nullptr));
  BIO_free(bio);
  ASSERT_NE(from_pem, nullptr);
  EXPECT_EQ(X509_cmp(cert.get(), from_pem.get()), 0);
  EXPECT_THAT(identity->private_key_pem, HasSubstr("-----BEGIN PRIVATE KEY-----"));
  bio = BIO_new_mem_buf(identity->private_key_pem.data(),
                        static_cast<int>(identity->private_key_pem.size()));
  EVP_PKEY* key = PEM_read_bio_PrivateKey(bio, nullptr, nullptr, nullptr);
  BIO_free(bio);
  ASSERT_NE(key, nullptr);
  EXPECT_EQ(X509_check_private_key(cert.get(), key), 1);
  EXPECT_TRUE(EVP_PKEY_is_a(key, "EC"));
  char group[64] = {};
  size_t group_size = 0;
  ASSERT_EQ(EVP_PKEY_get_utf8_string_param(key, "group", group, sizeof(group), &group_size), 1);
  EXPECT_STREQ(group, "prime256v1");
  EVP_PKEY_free(key);

  // Self-signed, a CA, CN and SAN localhost, the key usages go-plugin sets.
  EVP_PKEY* public_key = X509_get0_pubkey(cert.get());
  EXPECT_EQ(X509_verify(cert.get(), public_key), 1);
  EXPECT_EQ(X509_NAME_cmp(X509_get_subject_name(cert.get()), X509_get_issuer_name(cert.get())), 0);
  EXPECT_EQ(X509_check_ca(cert.get()), 1);
  EXPECT_EQ(X509_check_host(cert.get(), "localhost", 0, 0, nullptr), 1);
  char common_name[64] = {};
  X509_NAME_get_text_by_NID(X509_get_subject_name(cert.get()), NID_commonName, common_name,
                            sizeof(common_name));
  EXPECT_STREQ(common_name, "localhost");
  const uint32_t usage = X509_get_key_usage(cert.get());
  EXPECT_TRUE(usage & KU_DIGITAL_SIGNATURE);
  EXPECT_TRUE(usage & KU_KEY_ENCIPHERMENT);
  EXPECT_TRUE(usage & KU_KEY_CERT_SIGN);
  const uint32_t extended = X509_get_extended_key_usage(cert.get());
  EXPECT_TRUE(extended & XKU_SSL_SERVER);
  EXPECT_TRUE(extended & XKU_SSL_CLIENT);
  EXPECT_LT(X509_cmp_current_time(X509_get0_notBefore(cert.get())), 0);
  EXPECT_GT(X509_cmp_current_time(X509_get0_notAfter(cert.get())), 0);

  // Fresh each time.
  absl::StatusOr<AutoMtlsIdentity> other = GenerateAutoMtlsIdentity();
  ASSERT_TRUE(other.ok());
  EXPECT_NE(other->certificate_der, identity->certificate_der);
  EXPECT_NE(other->private_key_pem, identity->private_key_pem);
}

TEST(GoPluginHandshakeTest, Base64IsStdAlphabetWithoutPadding) {
  EXPECT_EQ(Base64RawStd(""), "");
  EXPECT_EQ(Base64RawStd("f"), "Zg");
  EXPECT_EQ(Base64RawStd("fo"), "Zm8");
  EXPECT_EQ(Base64RawStd("foo"), "Zm9v");
  EXPECT_EQ(Base64RawStd("foob"), "Zm9vYg");
  EXPECT_EQ(Base64RawStd(std::string("\xfb\xff\xbf", 3)), "+/+/");  // not '-' '_'
}

TEST(GoPluginHandshakeTest, LineHasFiveFieldsOrSixWithTheCertificate) {
  EXPECT_EQ(GoPluginHandshakeLine(1, "127.0.0.1:10001", ""), "1|1|tcp|127.0.0.1:10001|grpc\n");
  EXPECT_EQ(GoPluginHandshakeLine(1, "127.0.0.1:10001", "foob"),
            "1|1|tcp|127.0.0.1:10001|grpc|Zm9vYg\n");
}

// The services over AutoMTLS: the server's identity and the host's, both
// fresh self-signed certificates as in go-plugin.
class GoPluginServicesTest : public ::testing::Test {
 protected:
  void SetUp() override {
    absl::StatusOr<AutoMtlsIdentity> server = GenerateAutoMtlsIdentity();
    absl::StatusOr<AutoMtlsIdentity> host = GenerateAutoMtlsIdentity();
    absl::StatusOr<AutoMtlsIdentity> stranger = GenerateAutoMtlsIdentity();
    ASSERT_TRUE(server.ok() && host.ok() && stranger.ok());
    server_identity_ = *server;
    host_ = *host;
    stranger_ = *stranger;
    services_ = std::make_unique<GoPluginServices>([this] { ++shutdowns_; });
    grpc::ServerBuilder builder;
    builder.AddListeningPort("127.0.0.1:0",
                             AutoMtlsServerCredentials(server_identity_, host_.certificate_pem),
                             &port_);
    for (grpc::Service* service : services_->services()) builder.RegisterService(service);
    server_ = builder.BuildAndStart();
    ASSERT_NE(server_, nullptr);
  }
  void TearDown() override {
    services_->EndStreams();
    server_->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(5));
  }

  std::shared_ptr<grpc::Channel> Connect(const AutoMtlsIdentity& client) {
    grpc::SslCredentialsOptions options;
    options.pem_root_certs = server_identity_.certificate_pem;
    options.pem_private_key = client.private_key_pem;
    options.pem_cert_chain = client.certificate_pem;
    grpc::ChannelArguments args;
    args.SetSslTargetNameOverride("localhost");
    return grpc::CreateCustomChannel(absl::StrCat("127.0.0.1:", port_),
                                     grpc::SslCredentials(options), args);
  }

  static grpc::Status CallShutdown(const std::shared_ptr<grpc::Channel>& channel) {
    auto stub = ::plugin::GRPCController::NewStub(channel);
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
    ::plugin::Empty request, response;
    return stub->Shutdown(&context, request, &response);
  }

  AutoMtlsIdentity server_identity_, host_, stranger_;
  std::atomic<int> shutdowns_{0};
  std::unique_ptr<GoPluginServices> services_;
  std::unique_ptr<grpc::Server> server_;
  int port_ = 0;
};

TEST_F(GoPluginServicesTest, ShutdownAnswersAndRunsTheCallbackOnce) {
  std::shared_ptr<grpc::Channel> channel = Connect(host_);
  EXPECT_TRUE(CallShutdown(channel).ok());
  EXPECT_TRUE(CallShutdown(channel).ok());
  EXPECT_EQ(shutdowns_.load(), 1);
}

TEST_F(GoPluginServicesTest, ClientCertificateOtherThanTheHostsIsRefused) {
  EXPECT_EQ(CallShutdown(Connect(stranger_)).error_code(), grpc::StatusCode::UNAVAILABLE);
  // The server's own identity is not the host's either.
  EXPECT_EQ(CallShutdown(Connect(server_identity_)).error_code(), grpc::StatusCode::UNAVAILABLE);
  EXPECT_EQ(shutdowns_.load(), 0);
}

TEST_F(GoPluginServicesTest, StreamStdioStaysOpenSendsNothingAndEndsWithTheDrain) {
  auto stub = ::plugin::GRPCStdio::NewStub(Connect(host_));
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  google::protobuf::Empty request;
  std::unique_ptr<grpc::ClientReader<::plugin::StdioData>> reader =
      stub->StreamStdio(&context, request);
  for (int i = 0; i < 100 && services_->open_streams() == 0; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  ASSERT_EQ(services_->open_streams(), 1);
  services_->EndStreams();
  ::plugin::StdioData data;
  EXPECT_FALSE(reader->Read(&data));
  EXPECT_TRUE(reader->Finish().ok());

  // A stream opened after the drain began ends at once.
  grpc::ClientContext late_context;
  late_context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
  auto late = stub->StreamStdio(&late_context, request);
  EXPECT_FALSE(late->Read(&data));
  EXPECT_TRUE(late->Finish().ok());
}

TEST_F(GoPluginServicesTest, CancelledStreamStdioIsFinishedAndForgotten) {
  auto stub = ::plugin::GRPCStdio::NewStub(Connect(host_));
  {
    grpc::ClientContext context;
    google::protobuf::Empty request;
    auto reader = stub->StreamStdio(&context, request);
    for (int i = 0; i < 100 && services_->open_streams() == 0; ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    ASSERT_EQ(services_->open_streams(), 1);
    context.TryCancel();
    ::plugin::StdioData data;
    EXPECT_FALSE(reader->Read(&data));
    EXPECT_EQ(reader->Finish().error_code(), grpc::StatusCode::CANCELLED);
  }
  for (int i = 0; i < 100 && services_->open_streams() != 0; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  EXPECT_EQ(services_->open_streams(), 0);
}

}  // namespace
}  // namespace defender
