#include "adapters/auth/chained_token_credential.h"

#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "adapters/common/error.h"

namespace defender::auth {

// Walk is one GetToken call going down the chain, one source at a time.
// Kept alive by the callback of the source it is waiting for.
class ChainedTokenCredential::Walk : public std::enable_shared_from_this<Walk> {
 public:
  Walk(ChainedTokenCredential& chain, const TokenRequestContext& context, Callback done)
      : chain_(chain), context_(context), done_(std::move(done)) {}

  // Try asks source `index_`, or reports the chain's failure after the last.
  void Try() {
    if (index_ >= chain_.sources_.size()) return Fail();
    auto self = shared_from_this();  // alive while the source may still use context_
    chain_.sources_[index_]->GetToken(
        context_, [self](absl::StatusOr<AccessToken> token) { self->OnAnswer(std::move(token)); });
  }

 private:
  void OnAnswer(absl::StatusOr<AccessToken> token) {
    if (token.ok()) {
      chain_.Select(index_);
      return std::move(done_)(std::move(token));
    }
    errors_.push_back(token.status());
    ++index_;
    Try();
  }

  void Fail() {
    std::vector<std::string> parts;
    std::map<std::string, std::string> metadata;
    for (size_t i = 0; i < errors_.size(); ++i) {
      const std::string name = chain_.sources_[i]->Name();
      const absl::Status& error = errors_[i];
      parts.push_back(absl::StrCat(name, ": ", error.message()));
      const std::string prefix = absl::StrCat("source_", i + 1);
      metadata[prefix] = name;
      std::string reason = ErrorReason(error);
      if (reason.empty()) reason = absl::StatusCodeToString(error.code());
      if (auto info = GetErrorInfo(error)) {
        for (const auto& [key, value] : info->metadata()) {
          metadata[absl::StrCat(prefix, "_", key)] = value;
        }
      }
      metadata[absl::StrCat(prefix, "_reason")] = reason;
    }
    const std::string message =
        parts.empty()
            ? "no credential configured to get a token with"
            : absl::StrCat("no credential in the chain got a token: ", absl::StrJoin(parts, "; "));
    std::move(done_)(MakeError(absl::StatusCode::kUnauthenticated, message,
                               "CREDENTIAL_CHAIN_FAILED", metadata));
  }

  ChainedTokenCredential& chain_;
  const TokenRequestContext context_;
  Callback done_;
  // Sources answer one after another, so these need no lock.
  size_t index_ = 0;
  std::vector<absl::Status> errors_;  // one per source tried, in order
};

namespace {

std::vector<std::unique_ptr<TokenCredential>> WithoutNulls(
    std::vector<std::unique_ptr<TokenCredential>> sources) {
  std::vector<std::unique_ptr<TokenCredential>> out;
  for (auto& source : sources) {
    if (source != nullptr) out.push_back(std::move(source));
  }
  return out;
}

}  // namespace

ChainedTokenCredential::ChainedTokenCredential(
    std::vector<std::unique_ptr<TokenCredential>> sources)
    : sources_(WithoutNulls(std::move(sources))) {}

void ChainedTokenCredential::GetToken(const TokenRequestContext& context, Callback done) {
  const size_t selected = SelectedSource();
  if (selected != kNone) return sources_[selected]->GetToken(context, std::move(done));
  std::make_shared<Walk>(*this, context, std::move(done))->Try();
}

size_t ChainedTokenCredential::SelectedSource() const {
  absl::MutexLock lock(&mu_);
  return selected_;
}

void ChainedTokenCredential::Select(size_t index) {
  absl::MutexLock lock(&mu_);
  if (selected_ == kNone) selected_ = index;
}

}  // namespace defender::auth
