// tools/sandbox/certs.cc: a private CA and a server certificate, made with
// OpenSSL 3's API (see certs.h).

#include "tools/sandbox/certs.h"

#include <openssl/asn1.h>
#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace defender::sandbox {
namespace {

template <typename T, void (*F)(T*)>
struct Deleter {
  void operator()(T* p) const { F(p); }
};
using PkeyPtr = std::unique_ptr<EVP_PKEY, Deleter<EVP_PKEY, EVP_PKEY_free>>;
using X509Ptr = std::unique_ptr<X509, Deleter<X509, X509_free>>;
using BioPtr = std::unique_ptr<BIO, Deleter<BIO, BIO_free_all>>;
using BnPtr = std::unique_ptr<BIGNUM, Deleter<BIGNUM, BN_free>>;
using ExtPtr = std::unique_ptr<X509_EXTENSION, Deleter<X509_EXTENSION, X509_EXTENSION_free>>;
using GenNamesPtr = std::unique_ptr<GENERAL_NAMES, Deleter<GENERAL_NAMES, GENERAL_NAMES_free>>;
using GenNamePtr = std::unique_ptr<GENERAL_NAME, Deleter<GENERAL_NAME, GENERAL_NAME_free>>;
using Ia5Ptr = std::unique_ptr<ASN1_IA5STRING, Deleter<ASN1_IA5STRING, ASN1_IA5STRING_free>>;

constexpr long kNotBeforeOffsetSeconds = -60 * 60;         // now - 1h
constexpr long kNotAfterOffsetSeconds = 7 * 24 * 60 * 60;  // now + 7d

// OpenSslError returns INTERNAL with `what` and the first queued OpenSSL error,
// and clears OpenSSL's error queue.
absl::Status OpenSslError(const char* what) {
  unsigned long code = ERR_get_error();
  char buf[256] = "no OpenSSL error queued";
  if (code != 0) ERR_error_string_n(code, buf, sizeof buf);
  ERR_clear_error();
  return absl::InternalError(absl::StrCat("GenerateCertificates: ", what, ": ", buf));
}

absl::StatusOr<PkeyPtr> NewP256Key() {
  PkeyPtr key(EVP_EC_gen("P-256"));
  if (!key) return OpenSslError("EC P-256 key generation failed");
  return key;
}

// AddExtension adds one extension given in openssl.cnf syntax ("critical,CA:TRUE").
absl::Status AddExtension(X509* cert, X509* issuer, int nid, const char* value) {
  X509V3_CTX ctx;
  X509V3_set_ctx_nodb(&ctx);
  X509V3_set_ctx(&ctx, issuer, cert, nullptr, nullptr, 0);
  ExtPtr ext(X509V3_EXT_conf_nid(nullptr, &ctx, nid, value));
  if (!ext) return OpenSslError(OBJ_nid2sn(nid));
  if (X509_add_ext(cert, ext.get(), -1) != 1) return OpenSslError("X509_add_ext");
  return absl::OkStatus();
}

// AddSubjectAltNames adds one IP or DNS SubjectAltName per entry of `names`.
absl::Status AddSubjectAltNames(X509* cert, const std::vector<std::string>& names) {
  GenNamesPtr gens(sk_GENERAL_NAME_new_null());
  if (!gens) return OpenSslError("sk_GENERAL_NAME_new_null");
  for (const std::string& name : names) {
    GenNamePtr gen(GENERAL_NAME_new());
    if (!gen) return OpenSslError("GENERAL_NAME_new");
    if (ASN1_OCTET_STRING* ip = a2i_IPADDRESS(name.c_str())) {
      GENERAL_NAME_set0_value(gen.get(), GEN_IPADD, ip);
    } else {
      ERR_clear_error();  // a2i_IPADDRESS queues an error for non-addresses.
      Ia5Ptr dns(ASN1_IA5STRING_new());
      if (!dns || ASN1_STRING_set(dns.get(), name.data(), static_cast<int>(name.size())) != 1) {
        return OpenSslError("ASN1_STRING_set");
      }
      GENERAL_NAME_set0_value(gen.get(), GEN_DNS, dns.release());
    }
    if (sk_GENERAL_NAME_push(gens.get(), gen.get()) == 0) return OpenSslError("sk_push");
    gen.release();
  }
  if (X509_add1_ext_i2d(cert, NID_subject_alt_name, gens.get(), 0, X509V3_ADD_DEFAULT) != 1) {
    return OpenSslError("subjectAltName");
  }
  return absl::OkStatus();
}

// NewCertificate makes an unsigned v3 certificate for `key` with a random serial,
// subject CN=`common_name`, the sandbox's validity window and issuer name taken
// from `issuer` (or its own subject when `issuer` is null).
absl::StatusOr<X509Ptr> NewCertificate(EVP_PKEY* key, const std::string& common_name,
                                       X509* issuer) {
  X509Ptr cert(X509_new());
  if (!cert) return OpenSslError("X509_new");
  if (X509_set_version(cert.get(), 2) != 1) return OpenSslError("X509_set_version");

  BnPtr serial(BN_new());
  if (!serial || BN_rand(serial.get(), 127, BN_RAND_TOP_ANY, BN_RAND_BOTTOM_ANY) != 1 ||
      BN_to_ASN1_INTEGER(serial.get(), X509_get_serialNumber(cert.get())) == nullptr) {
    return OpenSslError("serial number");
  }
  if (X509_gmtime_adj(X509_getm_notBefore(cert.get()), kNotBeforeOffsetSeconds) == nullptr ||
      X509_gmtime_adj(X509_getm_notAfter(cert.get()), kNotAfterOffsetSeconds) == nullptr) {
    return OpenSslError("validity");
  }
  X509_NAME* subject = X509_get_subject_name(cert.get());
  if (X509_NAME_add_entry_by_txt(subject, "O", MBSTRING_UTF8,
                                 reinterpret_cast<const unsigned char*>("defender-sandbox"), -1, -1,
                                 0) != 1 ||
      X509_NAME_add_entry_by_txt(subject, "CN", MBSTRING_UTF8,
                                 reinterpret_cast<const unsigned char*>(common_name.c_str()), -1,
                                 -1, 0) != 1) {
    return OpenSslError("subject name");
  }
  X509_NAME* issuer_name = issuer ? X509_get_subject_name(issuer) : subject;
  if (X509_set_issuer_name(cert.get(), issuer_name) != 1) return OpenSslError("issuer name");
  if (X509_set_pubkey(cert.get(), key) != 1) return OpenSslError("X509_set_pubkey");
  return cert;
}

absl::StatusOr<std::string> CertToPem(X509* cert) {
  BioPtr bio(BIO_new(BIO_s_mem()));
  if (!bio || PEM_write_bio_X509(bio.get(), cert) != 1) return OpenSslError("PEM_write_bio_X509");
  char* data = nullptr;
  long len = BIO_get_mem_data(bio.get(), &data);
  return std::string(data, static_cast<size_t>(len));
}

absl::StatusOr<std::string> KeyToPem(EVP_PKEY* key) {
  BioPtr bio(BIO_new(BIO_s_mem()));
  if (!bio ||
      PEM_write_bio_PrivateKey(bio.get(), key, nullptr, nullptr, 0, nullptr, nullptr) != 1) {
    return OpenSslError("PEM_write_bio_PrivateKey");
  }
  char* data = nullptr;
  long len = BIO_get_mem_data(bio.get(), &data);
  return std::string(data, static_cast<size_t>(len));
}

}  // namespace

absl::StatusOr<CertBundle> GenerateCertificates(const std::vector<std::string>& names,
                                                const std::string& extended_key_usage) {
  if (names.empty()) {
    return absl::InvalidArgumentError("GenerateCertificates: no subject names given");
  }
  for (const std::string& name : names) {
    if (name.empty()) {
      return absl::InvalidArgumentError("GenerateCertificates: empty subject name");
    }
  }

  // The CA: self-signed, may sign certificates and nothing else.
  absl::StatusOr<PkeyPtr> ca_key = NewP256Key();
  if (!ca_key.ok()) return ca_key.status();
  absl::StatusOr<X509Ptr> ca =
      NewCertificate(ca_key->get(), "defender-sandbox test CA", /*issuer=*/nullptr);
  if (!ca.ok()) return ca.status();
  X509* ca_cert = ca->get();
  for (absl::Status s : {
           AddExtension(ca_cert, ca_cert, NID_basic_constraints, "critical,CA:TRUE,pathlen:0"),
           AddExtension(ca_cert, ca_cert, NID_key_usage, "critical,keyCertSign,cRLSign"),
           AddExtension(ca_cert, ca_cert, NID_subject_key_identifier, "hash"),
       }) {
    if (!s.ok()) return s;
  }
  // The authority key id refers to the subject key id added just above.
  if (absl::Status s = AddExtension(ca_cert, ca_cert, NID_authority_key_identifier, "keyid:always");
      !s.ok()) {
    return s;
  }
  if (X509_sign(ca_cert, ca_key->get(), EVP_sha256()) == 0) return OpenSslError("signing the CA");

  // The server certificate, signed by the CA.
  absl::StatusOr<PkeyPtr> key = NewP256Key();
  if (!key.ok()) return key.status();
  absl::StatusOr<X509Ptr> leaf = NewCertificate(key->get(), names.front(), ca_cert);
  if (!leaf.ok()) return leaf.status();
  X509* leaf_cert = leaf->get();
  for (absl::Status s : {
           AddExtension(leaf_cert, ca_cert, NID_basic_constraints, "critical,CA:FALSE"),
           AddExtension(leaf_cert, ca_cert, NID_key_usage,
                        "critical,digitalSignature,keyAgreement"),
           AddExtension(leaf_cert, ca_cert, NID_ext_key_usage, extended_key_usage.c_str()),
           AddExtension(leaf_cert, ca_cert, NID_subject_key_identifier, "hash"),
           AddExtension(leaf_cert, ca_cert, NID_authority_key_identifier, "keyid:always"),
           AddSubjectAltNames(leaf_cert, names),
       }) {
    if (!s.ok()) return s;
  }
  if (X509_sign(leaf_cert, ca_key->get(), EVP_sha256()) == 0) {
    return OpenSslError("signing the server certificate");
  }

  CertBundle bundle;
  absl::StatusOr<std::string> pem = CertToPem(ca_cert);
  if (!pem.ok()) return pem.status();
  bundle.ca_pem = *std::move(pem);
  pem = CertToPem(leaf_cert);
  if (!pem.ok()) return pem.status();
  bundle.cert_pem = *std::move(pem);
  pem = KeyToPem(key->get());
  if (!pem.ok()) return pem.status();
  bundle.key_pem = *std::move(pem);
  return bundle;
}

}  // namespace defender::sandbox
