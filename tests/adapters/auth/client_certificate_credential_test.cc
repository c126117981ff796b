#include "adapters/auth/client_certificate_credential.h"

#include <openssl/bio.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rsa.h>
#include <openssl/x509.h>
#include <stdlib.h>
#include <unistd.h>

#include <cstdio>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/time.h"
#include "adapters/common/clock.h"
#include "adapters/common/error.h"
#include "adapters/common/openssl_ptr.h"
#include "adapters/common/scheduler.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/adapters/fake_transport.h"

namespace defender::auth {
namespace {

using ::defender::testing::FakeTransport;
using ::nlohmann::json;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::MatchesRegex;
using ::testing::Not;
using ::testing::Pair;
using ::testing::UnorderedElementsAre;

constexpr char kTenant[] = "72f988bf-86f1-41af-91ab-2d7cd011db47";
constexpr char kClientId[] = "11111111-2222-3333-4444-555555555555";
constexpr char kScope[] = "https://api.securitycenter.microsoft.com/.default";
constexpr char kPassword[] = "pa55-w0rd!With Blanks";
constexpr char kTokenAnswer[] = R"({"token_type":"Bearer","expires_in":3599,"access_token":"tok"})";


// SelfSigned is a certificate for `key`, signed by it.
UniqueX509 SelfSigned(EVP_PKEY* key) {
  UniqueX509 cert(X509_new());
  X509_set_version(cert.get(), 2);
  ASN1_INTEGER_set(X509_get_serialNumber(cert.get()), 1);
  X509_gmtime_adj(X509_getm_notBefore(cert.get()), 0);
  X509_gmtime_adj(X509_getm_notAfter(cert.get()), 3600L * 24 * 365);
  X509_NAME* name = X509_get_subject_name(cert.get());
  X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC,
                             reinterpret_cast<const unsigned char*>("defender-plugin test"), -1, -1,
                             0);
  X509_set_issuer_name(cert.get(), name);
  X509_set_pubkey(cert.get(), key);
  EXPECT_GT(X509_sign(cert.get(), key, EVP_sha256()), 0);
  return cert;
}

// Pem runs `write` on a memory BIO and returns what it wrote.
template <typename Write>
std::string Pem(Write write) {
  UniqueBio bio(BIO_new(BIO_s_mem()));
  EXPECT_EQ(write(bio.get()), 1);
  char* data = nullptr;
  const long size = BIO_get_mem_data(bio.get(), &data);
  return std::string(data, static_cast<size_t>(size));
}

std::string KeyPem(EVP_PKEY* key) {
  return Pem([key](BIO* bio) {
    return PEM_write_bio_PrivateKey(bio, key, nullptr, nullptr, 0, nullptr, nullptr);
  });
}
std::string TraditionalKeyPem(EVP_PKEY* key) {
  return Pem([key](BIO* bio) {
    return PEM_write_bio_PrivateKey_traditional(bio, key, nullptr, nullptr, 0, nullptr, nullptr);
  });
}
std::string EncryptedKeyPem(EVP_PKEY* key, const std::string& password) {
  return Pem([&](BIO* bio) {
    return PEM_write_bio_PKCS8PrivateKey(bio, key, EVP_aes_256_cbc(), password.data(),
                                         static_cast<int>(password.size()), nullptr, nullptr);
  });
}
std::string CertPem(X509* cert) {
  return Pem([cert](BIO* bio) { return PEM_write_bio_X509(bio, cert); });
}

// Digest is base64url(md(certificate DER)).
std::string Thumbprint(X509* cert, const EVP_MD* md) {
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int length = 0;
  EXPECT_EQ(X509_digest(cert, md, digest, &length), 1);
  return absl::WebSafeBase64Escape(
      absl::string_view(reinterpret_cast<const char*>(digest), length));
}

// RawForm splits a form body into its still-escaped fields, in order.
std::vector<std::pair<std::string, std::string>> RawForm(const std::string& body) {
  std::vector<std::pair<std::string, std::string>> fields;
  for (absl::string_view pair : absl::StrSplit(body, '&')) {
    std::vector<std::string> kv = absl::StrSplit(pair, absl::MaxSplits('=', 1));
    EXPECT_EQ(kv.size(), 2u) << body;
    if (kv.size() == 2) fields.emplace_back(kv[0], kv[1]);
  }
  return fields;
}

// Jwt is a decoded JWT.
struct Jwt {
  json header;
  json claims;
  std::string signing_input;  // "header.claims", as signed
  std::string signature;      // raw bytes
};

Jwt Decode(const std::string& jwt) {
  std::vector<std::string> parts = absl::StrSplit(jwt, '.');
  EXPECT_EQ(parts.size(), 3u) << jwt;
  if (parts.size() != 3) return {};
  Jwt out;
  std::string header, claims;
  EXPECT_TRUE(absl::WebSafeBase64Unescape(parts[0], &header));
  EXPECT_TRUE(absl::WebSafeBase64Unescape(parts[1], &claims));
  EXPECT_TRUE(absl::WebSafeBase64Unescape(parts[2], &out.signature));
  // base64url without padding, as JWTs must be.
  for (const std::string& part : parts) EXPECT_THAT(part, MatchesRegex("[A-Za-z0-9_-]+"));
  out.header = json::parse(header);
  out.claims = json::parse(claims);
  out.signing_input = absl::StrCat(parts[0], ".", parts[1]);
  return out;
}

// Verifies checks `jwt`'s signature with the public key of `cert`.
bool Verifies(const Jwt& jwt, X509* cert, CertificateSigning signing) {
  std::unique_ptr<EVP_MD_CTX, decltype(&EVP_MD_CTX_free)> ctx(EVP_MD_CTX_new(), EVP_MD_CTX_free);
  EVP_PKEY_CTX* pkey_ctx = nullptr;
  if (EVP_DigestVerifyInit(ctx.get(), &pkey_ctx, EVP_sha256(), nullptr, X509_get0_pubkey(cert)) !=
      1) {
    return false;
  }
  if (signing == CertificateSigning::kPs256) {
    EVP_PKEY_CTX_set_rsa_padding(pkey_ctx, RSA_PKCS1_PSS_PADDING);
    // The salt must be exactly as long as the digest (32 bytes).
    EVP_PKEY_CTX_set_rsa_pss_saltlen(pkey_ctx, 32);
    EVP_PKEY_CTX_set_rsa_mgf1_md(pkey_ctx, EVP_sha256());
  } else {
    EVP_PKEY_CTX_set_rsa_padding(pkey_ctx, RSA_PKCS1_PADDING);
  }
  return EVP_DigestVerify(ctx.get(), reinterpret_cast<const unsigned char*>(jwt.signature.data()),
                          jwt.signature.size(),
                          reinterpret_cast<const unsigned char*>(jwt.signing_input.data()),
                          jwt.signing_input.size()) == 1;
}

// Files is a temporary directory of PEM files, removed at the end.
class Files {
 public:
  Files() {
    std::string pattern = ::testing::TempDir() + "/cert_credential_XXXXXX";
    char* made = mkdtemp(pattern.data());
    EXPECT_NE(made, nullptr);
    dir_ = pattern;
  }
  ~Files() {
    for (const std::string& path : paths_) std::remove(path.c_str());
    rmdir(dir_.c_str());
  }
  std::string Write(const std::string& name, const std::string& content) {
    const std::string path = dir_ + "/" + name;
    FILE* file = std::fopen(path.c_str(), "wb");
    EXPECT_NE(file, nullptr) << path;
    std::fwrite(content.data(), 1, content.size(), file);
    std::fclose(file);
    paths_.push_back(path);
    return path;
  }
  const std::string& dir() const { return dir_; }

 private:
  std::string dir_;
  std::vector<std::string> paths_;
};

class ClientCertificateCredentialTest : public ::testing::Test {
 protected:
  // One RSA-2048 key for the whole suite: generating it is the slow part.
  static void SetUpTestSuite() {
    key_ = EVP_RSA_gen(2048);
    ASSERT_NE(key_, nullptr);
    cert_ = SelfSigned(key_).release();
    files_ = new Files;
    key_and_cert_ = files_->Write("key_and_cert.pem", KeyPem(key_) + CertPem(cert_));
    cert_and_traditional_key_ =
        files_->Write("cert_and_key.pem", CertPem(cert_) + TraditionalKeyPem(key_));
    encrypted_ = files_->Write("encrypted.pem", EncryptedKeyPem(key_, kPassword) + CertPem(cert_));
    cert_only_ = files_->Write("cert_only.pem", CertPem(cert_));
    key_only_ = files_->Write("key_only.pem", KeyPem(key_));
    UniquePkey ec(EVP_EC_gen("P-256"));
    ASSERT_NE(ec, nullptr);
    UniqueX509 ec_cert = SelfSigned(ec.get());
    ec_ = files_->Write("ec.pem", KeyPem(ec.get()) + CertPem(ec_cert.get()));
    UniquePkey other(EVP_RSA_gen(1024));
    ASSERT_NE(other, nullptr);
    mismatched_ = files_->Write("mismatched.pem", KeyPem(other.get()) + CertPem(cert_));
    not_pem_ = files_->Write("not_pem.pem", "this is not a PEM file\n");
  }
  static void TearDownTestSuite() {
    delete files_;
    X509_free(cert_);
    EVP_PKEY_free(key_);
  }

  ClientCertificateCredentialOptions Options(std::string path = key_and_cert_) const {
    ClientCertificateCredentialOptions options;
    options.tenant_id = kTenant;
    options.client_id = kClientId;
    options.certificate_pem_path = std::move(path);
    return options;
  }

  std::unique_ptr<ClientCertificateCredential> Make(ClientCertificateCredentialOptions options,
                                                    Scheduler* scheduler = nullptr) {
    auto credential =
        ClientCertificateCredential::Create(std::move(options), transport_, clock_, scheduler);
    EXPECT_TRUE(credential.ok()) << credential.status();
    return credential.ok() ? *std::move(credential) : nullptr;
  }

  absl::StatusOr<AccessToken> Get(TokenCredential& credential) {
    TokenRequestContext context;
    context.scopes = {kScope};
    std::optional<absl::StatusOr<AccessToken>> result;
    credential.GetToken(context, [&result](absl::StatusOr<AccessToken> token) {
      EXPECT_FALSE(result.has_value()) << "callback called twice";
      result = std::move(token);
    });
    EXPECT_TRUE(result.has_value()) << "callback not called";
    return result.value_or(absl::InternalError("no callback"));
  }

  // AssertionOf returns the client_assertion of request `i`.
  std::string AssertionOf(size_t i) {
    const auto requests = transport_.requests();
    EXPECT_LT(i, requests.size());
    if (i >= requests.size()) return "";
    for (const auto& [name, value] : RawForm(requests[i].body)) {
      if (name == "client_assertion") return value;
    }
    ADD_FAILURE() << "no client_assertion";
    return "";
  }

  static EVP_PKEY* key_;
  static X509* cert_;
  static Files* files_;
  static std::string key_and_cert_, cert_and_traditional_key_, encrypted_, cert_only_, key_only_,
      ec_, mismatched_, not_pem_;

  FakeTransport transport_;
  FakeClock clock_;
};

EVP_PKEY* ClientCertificateCredentialTest::key_ = nullptr;
X509* ClientCertificateCredentialTest::cert_ = nullptr;
Files* ClientCertificateCredentialTest::files_ = nullptr;
std::string ClientCertificateCredentialTest::key_and_cert_;
std::string ClientCertificateCredentialTest::cert_and_traditional_key_;
std::string ClientCertificateCredentialTest::encrypted_;
std::string ClientCertificateCredentialTest::cert_only_;
std::string ClientCertificateCredentialTest::key_only_;
std::string ClientCertificateCredentialTest::ec_;
std::string ClientCertificateCredentialTest::mismatched_;
std::string ClientCertificateCredentialTest::not_pem_;

TEST_F(ClientCertificateCredentialTest, SendsTheExactForm) {
  transport_.Enqueue(200, kTokenAnswer);
  auto credential = Make(Options());
  EXPECT_EQ(credential->Name(), "ClientCertificateCredential");
  auto token = Get(*credential);
  ASSERT_TRUE(token.ok()) << token.status();
  EXPECT_EQ(token->token, "tok");
  EXPECT_EQ(token->expires_on, clock_.Now() + absl::Seconds(3599));

  ASSERT_EQ(transport_.requests().size(), 1u);
  const http::HttpRequest request = transport_.requests()[0];
  EXPECT_EQ(request.method, "POST");
  EXPECT_EQ(request.url,
            absl::StrCat("https://login.microsoftonline.com/", kTenant, "/oauth2/v2.0/token"));
  EXPECT_EQ(request.url, credential->TokenUrl());
  EXPECT_THAT(request.headers,
              UnorderedElementsAre(Pair("Content-Type", "application/x-www-form-urlencoded"),
                                   Pair("Accept", "application/json")));
  const std::string assertion = AssertionOf(0);
  EXPECT_THAT(
      RawForm(request.body),
      ElementsAre(Pair("grant_type", "client_credentials"), Pair("client_id", kClientId),
                  Pair("client_assertion_type",
                       "urn%3Aietf%3Aparams%3Aoauth%3Aclient-assertion-type%3Ajwt-bearer"),
                  Pair("client_assertion", assertion), Pair("scope", http::UrlEscape(kScope))));
  EXPECT_EQ(http::UrlEscape("urn:ietf:params:oauth:client-assertion-type:jwt-bearer"),
            "urn%3Aietf%3Aparams%3Aoauth%3Aclient-assertion-type%3Ajwt-bearer");
}

TEST_F(ClientCertificateCredentialTest, Ps256AssertionIsSignedAndNamesTheCertificate) {
  transport_.Enqueue(200, kTokenAnswer);
  auto credential = Make(Options());
  ASSERT_TRUE(Get(*credential).ok());
  const Jwt jwt = Decode(AssertionOf(0));

  EXPECT_EQ(
      jwt.header,
      json({{"alg", "PS256"}, {"typ", "JWT"}, {"x5t#S256", Thumbprint(cert_, EVP_sha256())}}));
  EXPECT_EQ(jwt.signature.size(), 256u);
  EXPECT_TRUE(Verifies(jwt, cert_, CertificateSigning::kPs256));
  EXPECT_FALSE(Verifies(jwt, cert_, CertificateSigning::kRs256));

  const int64_t now = absl::ToUnixSeconds(clock_.Now());
  EXPECT_EQ(jwt.claims.at("aud"), credential->TokenUrl());
  EXPECT_EQ(jwt.claims.at("iss"), kClientId);
  EXPECT_EQ(jwt.claims.at("sub"), kClientId);
  EXPECT_EQ(jwt.claims.at("nbf"), now);
  EXPECT_EQ(jwt.claims.at("iat"), now);
  EXPECT_EQ(jwt.claims.at("exp"), now + 600);
  EXPECT_THAT(jwt.claims.at("jti").get<std::string>(),
              MatchesRegex("[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}"));
  EXPECT_EQ(jwt.claims.size(), 7u);
}

TEST_F(ClientCertificateCredentialTest, Rs256AssertionIsSignedAndNamesTheCertificate) {
  transport_.Enqueue(200, kTokenAnswer);
  ClientCertificateCredentialOptions options = Options();
  options.signing = CertificateSigning::kRs256;
  auto credential = Make(options);
  ASSERT_TRUE(Get(*credential).ok());
  const Jwt jwt = Decode(AssertionOf(0));

  EXPECT_EQ(jwt.header,
            json({{"alg", "RS256"}, {"typ", "JWT"}, {"x5t", Thumbprint(cert_, EVP_sha1())}}));
  EXPECT_TRUE(Verifies(jwt, cert_, CertificateSigning::kRs256));
  EXPECT_EQ(jwt.claims.at("aud"), credential->TokenUrl());
  EXPECT_EQ(jwt.claims.at("iss"), kClientId);
  EXPECT_EQ(jwt.claims.at("sub"), kClientId);
  EXPECT_EQ(jwt.claims.at("exp").get<int64_t>(), jwt.claims.at("nbf").get<int64_t>() + 600);
}

TEST_F(ClientCertificateCredentialTest, EveryRequestSignsANewAssertion) {
  auto credential = Make(Options());
  for (int i = 0; i < 3; ++i) {
    transport_.Enqueue(200, kTokenAnswer);
    ASSERT_TRUE(Get(*credential).ok());
    clock_.Advance(absl::Seconds(7));
  }
  std::set<std::string> jtis;
  for (size_t i = 0; i < 3; ++i) {
    const Jwt jwt = Decode(AssertionOf(i));
    EXPECT_TRUE(Verifies(jwt, cert_, CertificateSigning::kPs256));
    jtis.insert(jwt.claims.at("jti").get<std::string>());
    const int64_t sent = absl::ToUnixSeconds(absl::FromUnixSeconds(1700000000)) + 7 * i;
    EXPECT_EQ(jwt.claims.at("nbf"), sent);
    EXPECT_EQ(jwt.claims.at("exp"), sent + 600);
  }
  EXPECT_EQ(jtis.size(), 3u);
}

TEST_F(ClientCertificateCredentialTest, EveryRetrySignsANewAssertion) {
  ManualScheduler scheduler(clock_);
  auto credential = Make(Options(), &scheduler);
  transport_.Enqueue(503, "busy", {{"Retry-After", "2"}});
  transport_.Enqueue(200, kTokenAnswer);
  TokenRequestContext context;
  context.scopes = {kScope};
  std::optional<absl::StatusOr<AccessToken>> result;
  credential->GetToken(context, [&](absl::StatusOr<AccessToken> token) { result = token; });
  EXPECT_FALSE(result.has_value());
  clock_.Advance(absl::Seconds(2));
  EXPECT_EQ(scheduler.RunDue(), 1);
  ASSERT_TRUE(result.has_value());
  ASSERT_TRUE(result->ok()) << result->status();
  const Jwt first = Decode(AssertionOf(0));
  const Jwt second = Decode(AssertionOf(1));
  EXPECT_NE(first.claims.at("jti"), second.claims.at("jti"));
  EXPECT_EQ(second.claims.at("nbf").get<int64_t>(), first.claims.at("nbf").get<int64_t>() + 2);
  EXPECT_TRUE(Verifies(second, cert_, CertificateSigning::kPs256));
}

TEST_F(ClientCertificateCredentialTest, BuildAssertionIsWhatWouldBeSent) {
  auto credential = Make(Options());
  const absl::Time at = absl::FromUnixSeconds(1800000000);
  auto assertion = credential->BuildAssertion(at);
  ASSERT_TRUE(assertion.ok()) << assertion.status();
  const Jwt jwt = Decode(*assertion);
  EXPECT_TRUE(Verifies(jwt, cert_, CertificateSigning::kPs256));
  EXPECT_EQ(jwt.claims.at("nbf"), 1800000000);
  EXPECT_EQ(jwt.claims.at("exp"), 1800000600);
  EXPECT_NE(*credential->BuildAssertion(at), *assertion);  // new jti, new salt
}

TEST_F(ClientCertificateCredentialTest, CertificateFirstAndTraditionalKeyWork) {
  transport_.Enqueue(200, kTokenAnswer);
  auto credential = Make(Options(cert_and_traditional_key_));
  ASSERT_TRUE(Get(*credential).ok());
  EXPECT_TRUE(Verifies(Decode(AssertionOf(0)), cert_, CertificateSigning::kPs256));
}

TEST_F(ClientCertificateCredentialTest, EncryptedKeyWithItsPassword) {
  transport_.Enqueue(200, kTokenAnswer);
  ClientCertificateCredentialOptions options = Options(encrypted_);
  options.password = kPassword;
  auto credential = Make(options);
  ASSERT_TRUE(Get(*credential).ok());
  EXPECT_TRUE(Verifies(Decode(AssertionOf(0)), cert_, CertificateSigning::kPs256));
}

// ExpectConfigError checks `result` is INVALID_ARGUMENT naming `setting`, and
// holds neither the password nor any PEM content.
template <typename T>
void ExpectConfigError(const absl::StatusOr<T>& result, const std::string& setting) {
  ASSERT_FALSE(result.ok());
  const absl::Status& status = result.status();
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << status;
  EXPECT_EQ(ErrorReason(status), "INVALID_CONFIGURATION") << status;
  EXPECT_THAT(std::string(status.message()), HasSubstr(setting));
  EXPECT_EQ(GetErrorInfo(status)->metadata().at("setting"), setting);
  for (const std::string& text : {std::string(status.message()), std::string(status.ToString())}) {
    EXPECT_THAT(text, Not(HasSubstr(kPassword)));
    EXPECT_THAT(text, Not(HasSubstr("pa55")));
    EXPECT_THAT(text, Not(HasSubstr("-----BEGIN")));
  }
}

TEST_F(ClientCertificateCredentialTest, WrongPasswordIsRejectedWithoutEchoingIt) {
  ClientCertificateCredentialOptions options = Options(encrypted_);
  options.password = std::string(kPassword) + "x";
  auto credential = ClientCertificateCredential::Create(options, transport_, clock_);
  ExpectConfigError(credential, "AZURE_CLIENT_CERTIFICATE_PASSWORD");
  EXPECT_THAT(std::string(credential.status().message()), Not(HasSubstr(options.password)));
  EXPECT_THAT(std::string(credential.status().message()), Not(HasSubstr(encrypted_)));
}

TEST_F(ClientCertificateCredentialTest, EncryptedKeyWithoutPasswordNamesThePassword) {
  auto credential = ClientCertificateCredential::Create(Options(encrypted_), transport_, clock_);
  ExpectConfigError(credential, "AZURE_CLIENT_CERTIFICATE_PASSWORD");
}

TEST_F(ClientCertificateCredentialTest, PasswordForAnUnencryptedKeyIsIgnored) {
  ClientCertificateCredentialOptions options = Options();
  options.password = kPassword;
  EXPECT_NE(Make(options), nullptr);
}

TEST_F(ClientCertificateCredentialTest, UnusableFilesNameThePath) {
  const std::string missing = files_->dir() + "/missing.pem";
  for (const std::string& path : {std::string(""), missing, files_->dir(), cert_only_, key_only_,
                                  ec_, mismatched_, not_pem_}) {
    SCOPED_TRACE(path);
    auto credential = ClientCertificateCredential::Create(Options(path), transport_, clock_);
    ExpectConfigError(credential, "AZURE_CLIENT_CERTIFICATE_PATH");
  }
  EXPECT_TRUE(transport_.requests().empty());
}

TEST_F(ClientCertificateCredentialTest, NonRsaKeysAreRefusedForWhatTheyAre) {
  auto credential = ClientCertificateCredential::Create(Options(ec_), transport_, clock_);
  ASSERT_FALSE(credential.ok());
  EXPECT_THAT(std::string(credential.status().message()), HasSubstr("RSA"));
}

TEST_F(ClientCertificateCredentialTest, EndpointSettingsAreValidatedFirst) {
  ClientCertificateCredentialOptions options = Options(encrypted_);
  options.tenant_id = "not a tenant";
  ExpectConfigError(ClientCertificateCredential::Create(options, transport_, clock_),
                    "AZURE_TENANT_ID");
  options = Options();
  options.client_id = " ";
  ExpectConfigError(ClientCertificateCredential::Create(options, transport_, clock_),
                    "AZURE_CLIENT_ID");
  options = Options();
  options.authority_host = "http://login.microsoftonline.com";
  ExpectConfigError(ClientCertificateCredential::Create(options, transport_, clock_),
                    "AZURE_AUTHORITY_HOST");
}

TEST_F(ClientCertificateCredentialTest, AuthorityHostShapesTheAudience) {
  transport_.Enqueue(200, kTokenAnswer);
  ClientCertificateCredentialOptions options = Options();
  options.authority_host = "https://login.microsoftonline.us/";
  auto credential = Make(options);
  ASSERT_TRUE(Get(*credential).ok());
  const std::string url =
      absl::StrCat("https://login.microsoftonline.us/", kTenant, "/oauth2/v2.0/token");
  EXPECT_EQ(transport_.requests()[0].url, url);
  EXPECT_EQ(Decode(AssertionOf(0)).claims.at("aud"), url);
}

TEST_F(ClientCertificateCredentialTest, RejectionCarriesTheAadstsCode) {
  transport_.Enqueue(
      401,
      R"({"error":"invalid_client","error_description":"AADSTS700027: Client assertion failed signature validation.","error_codes":[700027],"correlation_id":"c0ffee00-0000-0000-0000-000000000000"})");
  auto credential = Make(Options());
  auto token = Get(*credential);
  ASSERT_FALSE(token.ok());
  EXPECT_EQ(token.status().code(), absl::StatusCode::kUnauthenticated);
  EXPECT_EQ(ErrorReason(token.status()), "TOKEN_REQUEST_REJECTED");
  EXPECT_EQ(GetErrorInfo(token.status())->metadata().at("aadsts_code"), "AADSTS700027");
  EXPECT_THAT(std::string(token.status().message()),
              HasSubstr("Hint: the client assertion was not accepted: check that "
                        "AZURE_CLIENT_CERTIFICATE_PATH holds a certificate registered"));
}

// EchoingTransport fails every request with an error quoting its body, as a
// careless proxy might.
class EchoingTransport final : public http::HttpTransport {
 public:
  void Send(http::HttpRequest request, Callback done) override {
    body = request.body;
    std::move(done)(MakeError(absl::StatusCode::kUnavailable,
                              absl::StrCat("proxy refused ", request.body),
                              "UPSTREAM_CONNECT_FAILED", {{"request", request.body}}));
  }
  std::string body;
};

TEST_F(ClientCertificateCredentialTest, TheAssertionNeverAppearsInErrors) {
  EchoingTransport transport;
  auto credential = ClientCertificateCredential::Create(Options(), transport, clock_);
  ASSERT_TRUE(credential.ok());
  auto token = Get(**credential);
  ASSERT_FALSE(token.ok());
  std::string assertion;
  for (const auto& [name, value] : RawForm(transport.body)) {
    if (name == "client_assertion") assertion = value;
  }
  ASSERT_GT(assertion.size(), 300u);
  EXPECT_THAT(std::string(token.status().message()), Not(HasSubstr(assertion)));
  EXPECT_THAT(std::string(token.status().message()), HasSubstr("[redacted]"));
  EXPECT_THAT(GetErrorInfo(token.status())->metadata().at("request"), Not(HasSubstr(assertion)));
}

}  // namespace
}  // namespace defender::auth
