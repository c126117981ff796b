// metered_credential.h: a TokenCredential that reports each token request of
// another to Metrics, as a refresh of `tenant`'s token (or its failure, with
// the error's reason). Placed under the cache, it counts real token
// requests, not cache hits:
//
//   CachingTokenCredential cached(
//       std::make_unique<MeteredTokenCredential>(std::move(secret), "contoso", metrics));
#ifndef DEFENDER_ADAPTERS_AUTH_METERED_CREDENTIAL_H_
#define DEFENDER_ADAPTERS_AUTH_METERED_CREDENTIAL_H_

#include <memory>
#include <string>

#include "adapters/auth/token_credential.h"
#include "adapters/common/clock.h"
#include "adapters/common/metrics.h"

namespace defender::auth {

// MeteredTokenCredential forwards to `inner`. Thread-safe; `metrics` and
// `clock` must outlive it and the requests it starts.
class MeteredTokenCredential final : public TokenCredential {
 public:
  MeteredTokenCredential(std::unique_ptr<TokenCredential> inner, std::string tenant,
                         Metrics& metrics, Clock& clock = Clock::Real())
      : inner_(std::move(inner)), tenant_(std::move(tenant)), metrics_(metrics), clock_(clock) {}

  void GetToken(const TokenRequestContext& context, Callback done) override;
  std::string Name() const override { return inner_->Name(); }

 private:
  std::unique_ptr<TokenCredential> inner_;
  const std::string tenant_;
  Metrics& metrics_;
  Clock& clock_;
};

}  // namespace defender::auth

#endif  // DEFENDER_ADAPTERS_AUTH_METERED_CREDENTIAL_H_
