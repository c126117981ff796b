#include "adapters/auth/token_cache.h"

#include <algorithm>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "adapters/common/error.h"

namespace defender::auth {

CachingTokenCredential::CachingTokenCredential(std::unique_ptr<TokenCredential> inner, Clock& clock,
                                               absl::Duration refresh_margin)
    : inner_(std::move(inner)), clock_(clock), refresh_margin_(refresh_margin) {}

void CachingTokenCredential::GetToken(const TokenRequestContext& context, Callback done) {
  const std::string key = absl::StrJoin(context.scopes, " ");
  AccessToken cached;
  {
    absl::MutexLock lock(&mu_);
    Entry& entry = entries_[key];
    if (!context.rejected_token.empty() && entry.token.token == context.rejected_token) {
      // The API refused this token: forget it. Later callers reporting the
      // same token find the entry empty (or in flight) and share one request.
      entry.token = AccessToken{};
      entry.refresh_after = absl::InfinitePast();
    }
    if (!entry.token.token.empty() && clock_.Now() < entry.refresh_after) {
      cached = entry.token;
    } else {
      entry.waiters.push_back(std::move(done));
      if (entry.in_flight) return;  // the running request answers this caller too
      entry.in_flight = true;
      ++token_requests_;
    }
  }
  if (!cached.token.empty()) {
    std::move(done)(std::move(cached));
    return;
  }
  TokenRequestContext inner_context = context;
  inner_context.rejected_token.clear();
  inner_->GetToken(inner_context, [this, key](absl::StatusOr<AccessToken> result) {
    Complete(key, std::move(result));
  });
}

void CachingTokenCredential::Complete(const std::string& key, absl::StatusOr<AccessToken> result) {
  if (result.ok() && result->token.empty()) {
    result =
        MakeError(absl::StatusCode::kInternal,
                  absl::StrCat(inner_->Name(), " returned an empty token"), "BAD_TOKEN_RESPONSE");
  }
  std::vector<Callback> waiters;
  {
    absl::MutexLock lock(&mu_);
    Entry& entry = entries_[key];
    if (result.ok()) {
      const absl::Time now = clock_.Now();
      const absl::Duration lifetime = result->expires_on - now;
      const absl::Duration margin = lifetime < 2 * refresh_margin_
                                        ? std::max(lifetime / 2, absl::ZeroDuration())
                                        : refresh_margin_;
      entry.token = *result;
      entry.refresh_after = result->expires_on - margin;
    } else {
      entry.token = AccessToken{};
      entry.refresh_after = absl::InfinitePast();
    }
    entry.in_flight = false;
    waiters.swap(entry.waiters);
  }
  for (Callback& waiter : waiters) std::move(waiter)(result);
}

int64_t CachingTokenCredential::TokenRequests() const {
  absl::MutexLock lock(&mu_);
  return token_requests_;
}

}  // namespace defender::auth
