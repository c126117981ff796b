// openssl_ptr.h: owning pointers for the OpenSSL objects the plugin makes
// (keys, certificates, BIOs, big numbers, digest contexts), each freed with
// its own OpenSSL free function.
//
//   UniquePkey key(EVP_EC_gen("P-256"));
//   UniqueX509 cert(X509_new());
#ifndef DEFENDER_ADAPTERS_COMMON_OPENSSL_PTR_H_
#define DEFENDER_ADAPTERS_COMMON_OPENSSL_PTR_H_

#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/evp.h>
#include <openssl/x509.h>

#include <memory>

namespace defender {
namespace openssl_internal {

struct BioFree {
  void operator()(BIO* bio) const { BIO_free(bio); }
};
struct PkeyFree {
  void operator()(EVP_PKEY* key) const { EVP_PKEY_free(key); }
};
struct X509Free {
  void operator()(X509* cert) const { X509_free(cert); }
};
struct BignumFree {
  void operator()(BIGNUM* bn) const { BN_free(bn); }
};
struct MdCtxFree {
  void operator()(EVP_MD_CTX* ctx) const { EVP_MD_CTX_free(ctx); }
};

}  // namespace openssl_internal

using UniqueBio = std::unique_ptr<BIO, openssl_internal::BioFree>;
using UniquePkey = std::unique_ptr<EVP_PKEY, openssl_internal::PkeyFree>;
using UniqueX509 = std::unique_ptr<X509, openssl_internal::X509Free>;
using UniqueBignum = std::unique_ptr<BIGNUM, openssl_internal::BignumFree>;
using UniqueMdCtx = std::unique_ptr<EVP_MD_CTX, openssl_internal::MdCtxFree>;

}  // namespace defender

#endif  // DEFENDER_ADAPTERS_COMMON_OPENSSL_PTR_H_
