#include "adapters/auth/client_certificate_credential.h"

#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/rsa.h>
#include <openssl/x509.h>

#include <cstring>
#include <fstream>
#include <memory>
#include <string>
#include <utility>

#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "adapters/common/error.h"
#include "adapters/common/openssl_ptr.h"
#include "nlohmann/json.hpp"

namespace defender::auth {
namespace {

using nlohmann::json;

constexpr char kPathSetting[] = "AZURE_CLIENT_CERTIFICATE_PATH";
constexpr char kPasswordSetting[] = "AZURE_CLIENT_CERTIFICATE_PASSWORD";
// A PEM of a key and a certificate chain is a few kilobytes; more than this
// is not one.
constexpr size_t kMaxPemSize = 1 << 20;
// How long an assertion is valid (Entra accepts up to 10 minutes).
constexpr absl::Duration kAssertionLifetime = absl::Minutes(10);


// SecretString is a string wiped when it goes (a PEM with a private key, a
// password).
class SecretString {
 public:
  SecretString() = default;
  explicit SecretString(std::string value) : value_(std::move(value)) {}
  SecretString(const SecretString&) = delete;
  SecretString& operator=(const SecretString&) = delete;
  ~SecretString() { OPENSSL_cleanse(value_.data(), value_.size()); }
  std::string& value() { return value_; }

 private:
  std::string value_;
};

// PasswordCallback hands OpenSSL the password `u` points to (a std::string);
// with none it fails, so OpenSSL never prompts on a terminal.
int PasswordCallback(char* buf, int size, int /*rwflag*/, void* u) {
  const auto* password = static_cast<const std::string*>(u);
  if (password == nullptr || password->empty() || password->size() > static_cast<size_t>(size)) {
    return -1;
  }
  std::memcpy(buf, password->data(), password->size());
  return static_cast<int>(password->size());
}

// NoPasswordCallback is for reading what needs no password (certificates).
int NoPasswordCallback(char* /*buf*/, int /*size*/, int /*rwflag*/, void* /*u*/) { return -1; }

// ReadPem reads at most kMaxPemSize bytes of `path` into `out`.
absl::Status ReadPem(const std::string& path, std::string& out) {
  std::ifstream file(path, std::ios::binary);
  if (!file) return ConfigurationError(kPathSetting, "names a file that cannot be read");
  char chunk[4096];
  while (file.read(chunk, sizeof chunk) || file.gcount() > 0) {
    out.append(chunk, static_cast<size_t>(file.gcount()));
    if (out.size() > kMaxPemSize) {
      OPENSSL_cleanse(chunk, sizeof chunk);
      return ConfigurationError(kPathSetting, "names a file too large to be a PEM certificate");
    }
  }
  OPENSSL_cleanse(chunk, sizeof chunk);
  if (file.bad()) return ConfigurationError(kPathSetting, "names a file that cannot be read");
  return absl::OkStatus();
}

// Base64Url is base64url without padding, as JWTs use it.
std::string Base64Url(absl::string_view bytes) { return absl::WebSafeBase64Escape(bytes); }

// Thumbprint is base64url(digest(certificate DER)).
absl::StatusOr<std::string> Thumbprint(X509* cert, const EVP_MD* md) {
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int length = 0;
  if (X509_digest(cert, md, digest, &length) != 1) {
    ERR_clear_error();
    return ConfigurationError(kPathSetting, "holds a certificate whose thumbprint fails");
  }
  return Base64Url(absl::string_view(reinterpret_cast<const char*>(digest), length));
}

// NewGuid is a random (version 4) GUID, lower case.
absl::StatusOr<std::string> NewGuid() {
  unsigned char bytes[16];
  if (RAND_bytes(bytes, sizeof bytes) != 1) {
    ERR_clear_error();
    return MakeError(absl::StatusCode::kInternal, "no random bytes for the assertion's jti",
                     "CLIENT_ASSERTION_FAILED");
  }
  bytes[6] = static_cast<unsigned char>((bytes[6] & 0x0f) | 0x40);
  bytes[8] = static_cast<unsigned char>((bytes[8] & 0x3f) | 0x80);
  const std::string hex =
      absl::BytesToHexString(absl::string_view(reinterpret_cast<const char*>(bytes), 16));
  return absl::StrCat(hex.substr(0, 8), "-", hex.substr(8, 4), "-", hex.substr(12, 4), "-",
                      hex.substr(16, 4), "-", hex.substr(20, 12));
}

absl::Status SigningError() {
  ERR_clear_error();
  return MakeError(absl::StatusCode::kInternal, "could not sign the client assertion",
                   "CLIENT_ASSERTION_FAILED");
}

}  // namespace

class ClientCertificateCredential::Signer {
 public:
  Signer(UniquePkey key, CertificateSigning signing, std::string encoded_header,
         std::string client_id)
      : key_(std::move(key)),
        signing_(signing),
        encoded_header_(std::move(encoded_header)),
        client_id_(std::move(client_id)) {}

  // Load reads the key and the certificate from `path` and prepares the
  // JWT header. Errors name the settings, never the password or content.
  static absl::StatusOr<std::shared_ptr<const Signer>> Load(const std::string& path,
                                                            const std::string& password,
                                                            CertificateSigning signing,
                                                            std::string client_id) {
    if (path.empty()) return ConfigurationError(kPathSetting, "is empty");
    SecretString pem;
    if (absl::Status read = ReadPem(path, pem.value()); !read.ok()) return read;
    const bool encrypted =
        absl::StrContains(pem.value(), "-----BEGIN ENCRYPTED PRIVATE KEY-----") ||
        absl::StrContains(pem.value(), "Proc-Type: 4,ENCRYPTED");

    UniqueBio key_bio(BIO_new_mem_buf(pem.value().data(), static_cast<int>(pem.value().size())));
    if (key_bio == nullptr) return SigningError();
    UniquePkey key(PEM_read_bio_PrivateKey(key_bio.get(), nullptr, PasswordCallback,
                                           const_cast<std::string*>(&password)));
    ERR_clear_error();
    if (key == nullptr) {
      if (encrypted && password.empty()) {
        return ConfigurationError(kPasswordSetting,
                                  "is not set, but the private key in "
                                  "AZURE_CLIENT_CERTIFICATE_PATH is encrypted");
      }
      if (encrypted) {
        return ConfigurationError(kPasswordSetting,
                                  "does not decrypt the private key in "
                                  "AZURE_CLIENT_CERTIFICATE_PATH");
      }
      return ConfigurationError(kPathSetting, "names a file without a readable private key");
    }
    // Entra signs and checks client assertions with RSA only.
    if (EVP_PKEY_is_a(key.get(), "RSA") != 1) {
      return ConfigurationError(kPathSetting,
                                "holds a private key that is not RSA (Entra ID requires RSA)");
    }

    UniqueBio cert_bio(BIO_new_mem_buf(pem.value().data(), static_cast<int>(pem.value().size())));
    if (cert_bio == nullptr) return SigningError();
    UniqueX509 cert(PEM_read_bio_X509(cert_bio.get(), nullptr, NoPasswordCallback, nullptr));
    ERR_clear_error();
    if (cert == nullptr) {
      return ConfigurationError(kPathSetting, "names a file without a readable certificate");
    }
    if (X509_check_private_key(cert.get(), key.get()) != 1) {
      ERR_clear_error();
      return ConfigurationError(kPathSetting,
                                "holds a certificate that does not match its private key");
    }

    json header = {{"typ", "JWT"}};
    if (signing == CertificateSigning::kPs256) {
      auto thumbprint = Thumbprint(cert.get(), EVP_sha256());
      if (!thumbprint.ok()) return thumbprint.status();
      header["alg"] = "PS256";
      header["x5t#S256"] = *thumbprint;
    } else {
      auto thumbprint = Thumbprint(cert.get(), EVP_sha1());
      if (!thumbprint.ok()) return thumbprint.status();
      header["alg"] = "RS256";
      header["x5t"] = *thumbprint;
    }
    return std::make_shared<const Signer>(std::move(key), signing, Base64Url(header.dump()),
                                          std::move(client_id));
  }

  // Assertion is a JWT for `audience` valid from `now` for 10 minutes.
  // Thread-safe: the key is only read.
  absl::StatusOr<std::string> Assertion(const std::string& audience, absl::Time now) const {
    auto jti = NewGuid();
    if (!jti.ok()) return jti.status();
    const int64_t issued = absl::ToUnixSeconds(now);
    const json claims = {{"aud", audience},
                         {"iss", client_id_},
                         {"sub", client_id_},
                         {"jti", *jti},
                         {"nbf", issued},
                         {"iat", issued},
                         {"exp", issued + absl::ToInt64Seconds(kAssertionLifetime)}};
    std::string signing_input = absl::StrCat(encoded_header_, ".", Base64Url(claims.dump()));
    auto signature = Sign(signing_input);
    if (!signature.ok()) return signature.status();
    return absl::StrCat(signing_input, ".", Base64Url(*signature));
  }

 private:
  absl::StatusOr<std::string> Sign(absl::string_view data) const {
    UniqueMdCtx ctx(EVP_MD_CTX_new());
    if (ctx == nullptr) return SigningError();
    EVP_PKEY_CTX* pkey_ctx = nullptr;  // owned by ctx
    if (EVP_DigestSignInit(ctx.get(), &pkey_ctx, EVP_sha256(), nullptr, key_.get()) != 1) {
      return SigningError();
    }
    if (signing_ == CertificateSigning::kPs256) {
      if (EVP_PKEY_CTX_set_rsa_padding(pkey_ctx, RSA_PKCS1_PSS_PADDING) <= 0 ||
          EVP_PKEY_CTX_set_rsa_pss_saltlen(pkey_ctx, RSA_PSS_SALTLEN_DIGEST) <= 0 ||
          EVP_PKEY_CTX_set_rsa_mgf1_md(pkey_ctx, EVP_sha256()) <= 0) {
        return SigningError();
      }
    } else if (EVP_PKEY_CTX_set_rsa_padding(pkey_ctx, RSA_PKCS1_PADDING) <= 0) {
      return SigningError();
    }
    size_t length = static_cast<size_t>(EVP_PKEY_get_size(key_.get()));
    std::string signature(length, '\0');
    if (EVP_DigestSign(ctx.get(), reinterpret_cast<unsigned char*>(signature.data()), &length,
                       reinterpret_cast<const unsigned char*>(data.data()), data.size()) != 1) {
      return SigningError();
    }
    signature.resize(length);
    return signature;
  }

  const UniquePkey key_;
  const CertificateSigning signing_;
  const std::string encoded_header_;  // base64url of the JSON header
  const std::string client_id_;
};

absl::StatusOr<std::unique_ptr<ClientCertificateCredential>> ClientCertificateCredential::Create(
    ClientCertificateCredentialOptions options, http::HttpTransport& transport, Clock& clock,
    Scheduler* scheduler) {
  SecretString password(options.password);
  OPENSSL_cleanse(options.password.data(), options.password.size());
  TokenEndpointOptions endpoint_options{.authority_host = std::move(options.authority_host),
                                        .tenant_id = std::move(options.tenant_id),
                                        .client_id = std::move(options.client_id)};
  if (absl::Status valid = NormalizeTokenEndpointOptions(endpoint_options); !valid.ok()) {
    return valid;
  }
  auto signer = Signer::Load(options.certificate_pem_path, password.value(), options.signing,
                             endpoint_options.client_id);
  if (!signer.ok()) return signer.status();

  auto endpoint = TokenEndpointClient::Create(
      std::move(endpoint_options),
      [signer = *signer](const std::string& token_url,
                         absl::Time now) -> absl::StatusOr<TokenEndpointClient::ClientAuth> {
        auto assertion = signer->Assertion(token_url, now);
        if (!assertion.ok()) return assertion.status();
        TokenEndpointClient::ClientAuth auth;
        auth.fields = {{"client_assertion_type", kJwtBearerAssertionType},
                       {"client_assertion", *assertion}};
        auth.secrets = {*std::move(assertion)};
        return auth;
      },
      transport, clock, scheduler);
  if (!endpoint.ok()) return endpoint.status();
  return std::unique_ptr<ClientCertificateCredential>(
      new ClientCertificateCredential(*std::move(signer), *std::move(endpoint)));
}

ClientCertificateCredential::ClientCertificateCredential(
    std::shared_ptr<const Signer> signer, std::unique_ptr<TokenEndpointClient> endpoint)
    : signer_(std::move(signer)), endpoint_(std::move(endpoint)) {}

ClientCertificateCredential::~ClientCertificateCredential() = default;

void ClientCertificateCredential::GetToken(const TokenRequestContext& context, Callback done) {
  endpoint_->GetToken(context, std::move(done));
}

absl::StatusOr<std::string> ClientCertificateCredential::BuildAssertion(absl::Time now) const {
  return signer_->Assertion(endpoint_->TokenUrl(), now);
}

const std::string& ClientCertificateCredential::TokenUrl() const { return endpoint_->TokenUrl(); }

}  // namespace defender::auth
