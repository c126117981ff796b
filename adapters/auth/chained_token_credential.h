// chained_token_credential.h: several ways of getting a token, tried in order
// until one works, as Azure Identity's ChainedTokenCredential and
// DefaultAzureCredential do (the default chain: environment, workload
// identity, managed identity).
//
// The first source that returns a token is kept: from then on every request
// goes straight to it, and its errors are returned as they are. Until then,
// each request walks the chain from the start; when every source fails the
// error lists them all.
//
//   std::vector<std::unique_ptr<TokenCredential>> sources;
//   sources.push_back(*ClientSecretCredential::Create(...));
//   sources.push_back(*WorkloadIdentityCredential::Create(...));
//   CachingTokenCredential credential(
//       std::make_unique<ChainedTokenCredential>(std::move(sources)));
#ifndef DEFENDER_ADAPTERS_AUTH_CHAINED_TOKEN_CREDENTIAL_H_
#define DEFENDER_ADAPTERS_AUTH_CHAINED_TOKEN_CREDENTIAL_H_

#include <cstddef>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "adapters/auth/token_credential.h"

namespace defender::auth {

// ChainedTokenCredential tries its sources in order. Thread-safe.
class ChainedTokenCredential final : public TokenCredential {
 public:
  // kNone is what SelectedSource() returns before a source has worked.
  static constexpr size_t kNone = static_cast<size_t>(-1);

  // `sources` are tried in this order; null entries are dropped. The chain
  // must outlive the requests it has started.
  explicit ChainedTokenCredential(std::vector<std::unique_ptr<TokenCredential>> sources);

  ChainedTokenCredential(const ChainedTokenCredential&) = delete;
  ChainedTokenCredential& operator=(const ChainedTokenCredential&) = delete;

  // GetToken asks the kept source, if one has worked already; else each
  // source in turn (the next only after the previous one failed), and keeps
  // the first that returns a token. Concurrent first callers each walk the
  // chain; the first success is kept, and later ones do not replace it.
  // `done` is called once, on whichever thread the answering source calls
  // back on.
  //
  // When every source fails: UNAUTHENTICATED, reason CREDENTIAL_CHAIN_FAILED,
  // the message listing each source's Name() and error in order
  // ("... ClientSecretCredential: ...; WorkloadIdentityCredential: ..."), and
  // ErrorInfo metadata for source i (1, 2, ...): "source_<i>" its Name(),
  // "source_<i>_reason" its error's reason (or canonical code name), and its
  // error's own metadata prefixed "source_<i>_" (e.g. "source_1_aadsts_code").
  // No sources at all fails the same way.
  void GetToken(const TokenRequestContext& context, Callback done) override;
  std::string Name() const override { return "ChainedTokenCredential"; }

  // SelectedSource is the index of the kept source, or kNone.
  size_t SelectedSource() const;

 private:
  class Walk;

  // Select keeps source `index` unless one is kept already.
  void Select(size_t index);

  const std::vector<std::unique_ptr<TokenCredential>> sources_;
  mutable absl::Mutex mu_;
  size_t selected_ ABSL_GUARDED_BY(mu_) = kNone;
};

}  // namespace defender::auth

#endif  // DEFENDER_ADAPTERS_AUTH_CHAINED_TOKEN_CREDENTIAL_H_
