// authorization.h: which caller may act on which tenant (--authz FILE,
// proto/defender/v1/config.proto's AuthorizationFile in JSON).
//
//   auto authz = Authorizer::Load("/etc/defender/authz.json");
//   absl::StatusOr<std::string> caller = (*authz)->Check(IdentityOf(context), "contoso");
//
// A caller is recognised by its client certificate (one of its identities
// listed in certificate_names) or by its bearer token (the content of its
// token_file, compared in constant time). Check returns the caller's name,
// or PERMISSION_DENIED (reason CALLER_NOT_ALLOWED; metadata "caller" and
// "tenant") for an unknown caller or a tenant its entry does not list. Tokens
// never appear in a message.
#ifndef DEFENDER_SERVER_AUTHORIZATION_H_
#define DEFENDER_SERVER_AUTHORIZATION_H_

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "grpcpp/grpcpp.h"

namespace defender {

// CallerIdentity is what a call says about its caller.
struct CallerIdentity {
  std::vector<std::string> certificate_names;  // the verified client certificate's identities
  std::string bearer_token;                    // from "authorization: Bearer ..."; "" = none
  std::string peer;                            // the peer address, for messages
};

// IdentityOf reads the caller's identity from a call.
CallerIdentity IdentityOf(const grpc::CallbackServerContext& context);

// Authorizer decides. Thread-safe; ReplaceWith swaps its whole map at once
// (SIGHUP), so a check sees the old map or the new one, never a mix.
class Authorizer {
 public:
  // Load reads and checks the file: unknown keys, missing names, tenants or
  // identities, duplicate names and unreadable token files are
  // INVALID_ARGUMENT naming the key.
  static absl::StatusOr<std::unique_ptr<Authorizer>> Load(const std::string& path);
  // Parse does the same for the file's text (`origin` names it in messages).
  static absl::StatusOr<std::unique_ptr<Authorizer>> Parse(const std::string& json,
                                                           const std::string& origin);

  // Check returns the name of the caller `who` when it may act on `tenant`.
  absl::StatusOr<std::string> Check(const CallerIdentity& who, const std::string& tenant) const;

  // ReplaceWith makes `other`'s map this one's, for every check from now on.
  void ReplaceWith(Authorizer&& other);

 private:
  struct Caller {
    std::string name;
    std::vector<std::string> certificate_names;
    std::string token;  // "" = none
    std::vector<std::string> tenants;
  };
  explicit Authorizer(std::vector<Caller> callers)
      : callers_(std::make_shared<const std::vector<Caller>>(std::move(callers))) {}
  mutable absl::Mutex mu_;
  std::shared_ptr<const std::vector<Caller>> callers_ ABSL_GUARDED_BY(mu_);
};

}  // namespace defender

#endif  // DEFENDER_SERVER_AUTHORIZATION_H_
