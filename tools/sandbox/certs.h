// tools/sandbox/certs.h: throwaway TLS certificates for the Defender sandbox.
//
// The sandbox serves real HTTPS on 127.0.0.1 so that clients run with peer
// verification ON. GenerateCertificates() makes a fresh private CA and a server
// certificate signed by it; clients trust `ca_pem` and nothing else.
//
// Example:
//
//   absl::StatusOr<defender::sandbox::CertBundle> certs =
//       defender::sandbox::GenerateCertificates({"127.0.0.1", "localhost"});
//   if (!certs.ok()) return certs.status();
//   // Serve with certs->cert_pem + certs->key_pem; give certs->ca_pem to clients.
//
// Everything lives in memory; nothing is written to disk.

#ifndef DEFENDER_TOOLS_SANDBOX_CERTS_H_
#define DEFENDER_TOOLS_SANDBOX_CERTS_H_

#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace defender::sandbox {

// CertBundle holds PEM texts: the CA certificate that clients should trust, the
// server certificate (leaf only, signed by the CA) and the server's private key
// (unencrypted PKCS#8).
struct CertBundle {
  std::string ca_pem;
  std::string cert_pem;
  std::string key_pem;
};

// GenerateCertificates makes a fresh CA (self-signed, CA:TRUE, keyCertSign) and a
// server certificate signed by it (CA:FALSE, serverAuth), both valid from now-1h
// to now+7d, with EC P-256 keys and SHA-256 signatures. The server certificate
// carries one SubjectAltName per entry of `names`: entries that parse as IPv4 or
// IPv6 addresses become IP SANs, all others DNS SANs; its CN is names[0].
// Returns INVALID_ARGUMENT when `names` is empty or holds an empty string, and
// INTERNAL when OpenSSL fails. `extended_key_usage` is the leaf's
// extendedKeyUsage ("clientAuth" for a client certificate, or both
// "serverAuth,clientAuth").
absl::StatusOr<CertBundle> GenerateCertificates(
    const std::vector<std::string>& names = {"127.0.0.1", "localhost"},
    const std::string& extended_key_usage = "serverAuth");

}  // namespace defender::sandbox

#endif  // DEFENDER_TOOLS_SANDBOX_CERTS_H_
