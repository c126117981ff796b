// token_cache.h: a TokenCredential that caches another's tokens.
//
// Tokens are cached per scope set (the scopes joined by ' ', in the order
// given) and reused while `expires_on - refresh_margin` is in the future
// (Azure SDK for C++ renews 2 minutes ahead). A token whose lifetime, when it
// arrived, was shorter than twice the margin uses half that lifetime as its
// margin instead, so short-lived tokens are still reused.
//
// Concurrent callers that find no fresh token share one request to the inner
// credential; it is started with the first caller's context (its deadline).
// When it fails, every waiting caller gets the error and nothing is cached:
// the next caller starts a new request.
//
// A caller that reports a token as rejected (context.rejected_token) makes the
// cache drop that token, once: callers reporting the same token join the same
// new request, and callers reporting a token that has already been replaced
// get the newer one without a request.
//
// Callbacks run outside the cache's lock: inside GetToken for a cached token,
// else on the thread where the inner credential answers. The cache must
// outlive the requests it has started.
//
//   auto secret = ClientSecretCredential::Create(options, transport);
//   CachingTokenCredential cached(std::move(*secret));
#ifndef DEFENDER_ADAPTERS_AUTH_TOKEN_CACHE_H_
#define DEFENDER_ADAPTERS_AUTH_TOKEN_CACHE_H_

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "adapters/auth/token_credential.h"
#include "adapters/common/clock.h"

namespace defender::auth {

// CachingTokenCredential caches the tokens of `inner`. Thread-safe.
class CachingTokenCredential final : public TokenCredential {
 public:
  explicit CachingTokenCredential(std::unique_ptr<TokenCredential> inner,
                                  Clock& clock = Clock::Real(),
                                  absl::Duration refresh_margin = absl::Minutes(2));

  void GetToken(const TokenRequestContext& context, Callback done) override;
  std::string Name() const override { return inner_->Name(); }

  // TokenRequests counts the requests made to the inner credential.
  int64_t TokenRequests() const;

 private:
  struct Entry {
    // The cached token; token.token is empty when there is none.
    AccessToken token;
    // The token is fresh while now < refresh_after.
    absl::Time refresh_after = absl::InfinitePast();
    bool in_flight = false;         // a request to `inner_` is running
    std::vector<Callback> waiters;  // callers waiting for it
  };
  void Complete(const std::string& key, absl::StatusOr<AccessToken> result);

  std::unique_ptr<TokenCredential> inner_;
  Clock& clock_;
  const absl::Duration refresh_margin_;
  mutable absl::Mutex mu_;
  std::map<std::string, Entry> entries_ ABSL_GUARDED_BY(mu_);
  int64_t token_requests_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace defender::auth

#endif  // DEFENDER_ADAPTERS_AUTH_TOKEN_CACHE_H_
