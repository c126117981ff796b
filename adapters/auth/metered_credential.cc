#include "adapters/auth/metered_credential.h"

#include <utility>

#include "adapters/common/error.h"

namespace defender::auth {

void MeteredTokenCredential::GetToken(const TokenRequestContext& context, Callback done) {
  const absl::Time started = clock_.Now();
  inner_->GetToken(context, [this, started, done = std::move(done)](
                                absl::StatusOr<AccessToken> token) mutable {
    std::string reason;
    if (!token.ok()) {
      reason = ErrorReason(token.status());
      if (reason.empty()) reason = absl::StatusCodeToString(token.status().code());
    }
    metrics_.TokenRefreshed(tenant_, reason, clock_.Now() - started);
    std::move(done)(std::move(token));
  });
}

}  // namespace defender::auth
