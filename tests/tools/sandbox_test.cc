// Tests of the Defender sandbox (tools/sandbox): certificates, the token
// endpoint, the Defender API emulation, fault injection and the control
// endpoints, all through a real TLS client (httplib::SSLClient, verification on)
// against an in-process Sandbox on port 0.

#include "tools/sandbox/sandbox.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <httplib.h>
#include <openssl/bio.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rsa.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <memory>
#include <regex>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/escaping.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "nlohmann/json.hpp"
#include "tools/sandbox/certs.h"

namespace defender::sandbox {
namespace {

using json = nlohmann::json;
using ::testing::HasSubstr;
using ::testing::StartsWith;

constexpr char kTenant[] = "11111111-1111-1111-1111-111111111111";
constexpr char kClient[] = "22222222-2222-2222-2222-222222222222";
constexpr char kSecret[] = "sandbox-secret";
constexpr char kScope[] = "https://api.securitycenter.microsoft.com/.default";
constexpr char kLinuxMachine[] = "4f8e2d6c0b4a8e2d6c0b4a8e2d6c0b4a8e2d6c0b";
constexpr char kOtherMachine[] = "7b0f3a5e2c9d4e1f8a6b5c4d3e2f1a0b9c8d7e6f";
constexpr char kSha1[] = "87662bc3d60e4200ceaf7aae249d1c343f4b83c9";

std::string TokenPath() { return absl::StrCat("/", kTenant, "/oauth2/v2.0/token"); }
std::string QuarantinePath(const std::string& machine) {
  return absl::StrCat("/api/machines/", machine, "/StopAndQuarantineFile");
}

json Parse(const std::string& body) { return json::parse(body, nullptr, false); }

std::string QuarantineBody(const std::string& comment, const std::string& sha1 = kSha1) {
  return json{{"Comment", comment}, {"Sha1", sha1}}.dump();
}

std::string FormBody(const httplib::Params& params) {
  return httplib::detail::params_to_query_str(params);
}

absl::Time ParseTime7(const std::string& text) {
  absl::Time t;
  std::string err;
  EXPECT_TRUE(absl::ParseTime("%Y-%m-%dT%H:%M:%E*SZ", text, absl::UTCTimeZone(), &t, &err))
      << text << ": " << err;
  return t;
}

class SandboxTest : public ::testing::Test {
 protected:
  void SetUp() override { StartSandbox(SandboxOptions()); }

  void TearDown() override {
    sandbox_.reset();
    if (!ca_file_.empty()) std::remove(ca_file_.c_str());
  }

  void StartSandbox(SandboxOptions options) {
    sandbox_.reset();
    auto started = Sandbox::Start(std::move(options));
    ASSERT_TRUE(started.ok()) << started.status();
    sandbox_ = *std::move(started);
    if (ca_file_.empty()) {
      ca_file_ = absl::StrCat(::testing::TempDir(), "/sandbox-test-ca-", getpid(), "-",
                              absl::ToUnixNanos(absl::Now()), ".pem");
    }
    ASSERT_TRUE(sandbox_->WriteCaFile(ca_file_).ok());
  }

  // Client returns a TLS client that trusts only the sandbox's CA.
  std::unique_ptr<httplib::SSLClient> Client() const {
    auto client = std::make_unique<httplib::SSLClient>("127.0.0.1", sandbox_->port());
    client->set_ca_cert_path(ca_file_);
    client->enable_server_certificate_verification(true);
    client->set_connection_timeout(5, 0);
    client->set_read_timeout(10, 0);
    return client;
  }

  httplib::Result RequestToken(const httplib::Params& params,
                               const std::string& tenant = kTenant) const {
    return Client()->Post(absl::StrCat("/", tenant, "/oauth2/v2.0/token"), FormBody(params),
                          "application/x-www-form-urlencoded");
  }

  static httplib::Params GoodTokenParams() {
    return {{"grant_type", "client_credentials"},
            {"client_id", kClient},
            {"client_secret", kSecret},
            {"scope", kScope}};
  }

  // Token gets a fresh access token (and fails the test if it cannot).
  std::string Token() const {
    httplib::Result res = RequestToken(GoodTokenParams());
    if (!res || res->status != 200) {
      ADD_FAILURE() << "token request failed";
      return "";
    }
    return Parse(res->body)["access_token"].get<std::string>();
  }

  httplib::Headers Auth(const std::string& token) const {
    return {{"Authorization", absl::StrCat("Bearer ", token)}};
  }

  httplib::Result Quarantine(const std::string& token, const std::string& machine,
                             const std::string& body) const {
    return Client()->Post(QuarantinePath(machine), Auth(token), body, "application/json");
  }

  httplib::Result Get(const std::string& token, const std::string& path,
                      const httplib::Params& params = {}) const {
    return Client()->Get(path, params, Auth(token));
  }

  // ExpectDefenderError checks a Defender error answer.
  static void ExpectDefenderError(const httplib::Result& res, int status, const std::string& code) {
    ASSERT_TRUE(res) << httplib::to_string(res.error());
    EXPECT_EQ(res->status, status) << res->body;
    json body = Parse(res->body);
    ASSERT_TRUE(body.is_object()) << res->body;
    EXPECT_EQ(body["error"]["code"], code) << res->body;
    EXPECT_TRUE(body["error"]["message"].is_string());
    EXPECT_TRUE(body["error"]["target"].is_string());
  }

  std::unique_ptr<Sandbox> sandbox_;
  std::string ca_file_;
};

// ---------------------------------------------------------------------------
// Certificates.

TEST(CertsTest, ServerCertificateChainsToTheCaWithIpAndDnsNames) {
  auto certs = GenerateCertificates({"127.0.0.1", "localhost", "::1"});
  ASSERT_TRUE(certs.ok()) << certs.status();
  auto load = [](const std::string& pem) {
    BIO* bio = BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size()));
    X509* cert = PEM_read_bio_X509(bio, nullptr, nullptr, nullptr);
    BIO_free(bio);
    return cert;
  };
  X509* ca = load(certs->ca_pem);
  X509* leaf = load(certs->cert_pem);
  ASSERT_NE(ca, nullptr);
  ASSERT_NE(leaf, nullptr);
  X509_STORE* store = X509_STORE_new();
  X509_STORE_add_cert(store, ca);
  X509_STORE_CTX* ctx = X509_STORE_CTX_new();
  X509_STORE_CTX_init(ctx, store, leaf, nullptr);
  X509_VERIFY_PARAM_set1_ip_asc(X509_STORE_CTX_get0_param(ctx), "127.0.0.1");
  EXPECT_EQ(X509_verify_cert(ctx), 1)
      << X509_verify_cert_error_string(X509_STORE_CTX_get_error(ctx));
  EXPECT_EQ(X509_check_ip_asc(leaf, "::1", 0), 1);
  EXPECT_EQ(X509_check_host(leaf, "localhost", 0, 0, nullptr), 1);
  EXPECT_NE(X509_check_host(leaf, "example.com", 0, 0, nullptr), 1);
  EXPECT_EQ(X509_check_ca(ca), 1);
  EXPECT_EQ(X509_check_ca(leaf), 0);
  X509_STORE_CTX_free(ctx);
  X509_STORE_free(store);
  X509_free(leaf);
  X509_free(ca);
  EXPECT_THAT(certs->key_pem, HasSubstr("BEGIN PRIVATE KEY"));
}

TEST(CertsTest, RejectsEmptyNames) {
  EXPECT_EQ(GenerateCertificates({}).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(GenerateCertificates({""}).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(SandboxTest, ClientWithoutTheCaRefusesTheServer) {
  auto other = GenerateCertificates();
  ASSERT_TRUE(other.ok());
  const std::string other_ca = absl::StrCat(ca_file_, ".other");
  {
    std::ofstream out(other_ca);
    out << other->ca_pem;
  }
  httplib::SSLClient client("127.0.0.1", sandbox_->port());
  client.set_ca_cert_path(other_ca);
  client.enable_server_certificate_verification(true);
  httplib::Result res = client.Get("/sandbox/health");
  EXPECT_FALSE(res);
  EXPECT_EQ(res.error(), httplib::Error::SSLServerVerification);
  std::remove(other_ca.c_str());
}

TEST_F(SandboxTest, BaseUrlAndHealth) {
  EXPECT_EQ(sandbox_->base_url(), absl::StrCat("https://127.0.0.1:", sandbox_->port()));
  httplib::Result res = Client()->Get("/sandbox/health");
  ASSERT_TRUE(res) << httplib::to_string(res.error());
  EXPECT_EQ(res->status, 200);
  EXPECT_EQ(res->body, "ok");
  EXPECT_TRUE(sandbox_->Requests().empty()) << "control calls are not recorded";
}

// ---------------------------------------------------------------------------
// Token endpoint.

TEST_F(SandboxTest, TokenSuccess) {
  httplib::Result res = RequestToken(GoodTokenParams());
  ASSERT_TRUE(res) << httplib::to_string(res.error());
  EXPECT_EQ(res->status, 200) << res->body;
  json body = Parse(res->body);
  EXPECT_EQ(body["token_type"], "Bearer");
  EXPECT_EQ(body["expires_in"], 3599);
  EXPECT_EQ(body["ext_expires_in"], 3599);
  EXPECT_THAT(body["access_token"].get<std::string>(), StartsWith("sbx."));
  EXPECT_EQ(sandbox_->TokenRequests(), 1);
  // Every accepted spelling of the Defender audience works.
  for (const char* scope : {"https://securitycenter.onmicrosoft.com/windowsatpservice/.default",
                            "https://api.security.microsoft.com/.default"}) {
    httplib::Params params = GoodTokenParams();
    params.find("scope")->second = scope;
    httplib::Result other = RequestToken(params);
    ASSERT_TRUE(other);
    EXPECT_EQ(other->status, 200) << scope;
  }
  EXPECT_EQ(sandbox_->TokenRequests(), 3);
}

TEST_F(SandboxTest, TokenLifetimeFollowsOptions) {
  SandboxOptions options;
  options.token_lifetime = absl::Minutes(5);
  StartSandbox(options);
  httplib::Result res = RequestToken(GoodTokenParams());
  ASSERT_TRUE(res);
  EXPECT_EQ(Parse(res->body)["expires_in"], 299);
}

TEST_F(SandboxTest, TokenErrorsLookLikeEntra) {
  struct Case {
    std::string name;
    std::string tenant;
    std::string key;    // parameter to change ("" = none)
    std::string value;  // its new value ("" = remove it)
    int status;
    std::string error;
    int code;
  };
  const std::vector<Case> cases = {
      {"wrong secret", kTenant, "client_secret", "wrong", 401, "invalid_client", 7000215},
      {"unknown tenant", "99999999-9999-9999-9999-999999999999", "", "", 400, "invalid_request",
       90002},
      {"unknown client", kTenant, "client_id", "33333333-3333-3333-3333-333333333333", 400,
       "unauthorized_client", 700016},
      {"scope without .default", kTenant, "scope", "https://api.securitycenter.microsoft.com", 400,
       "invalid_scope", 1002012},
      {"other resource", kTenant, "scope", "https://graph.microsoft.com/.default", 400,
       "invalid_scope", 70011},
      {"no secret", kTenant, "client_secret", "", 401, "invalid_client", 7000216},
      {"wrong grant", kTenant, "grant_type", "password", 400, "unsupported_grant_type", 70003},
      {"no grant", kTenant, "grant_type", "", 400, "invalid_request", 900144},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    httplib::Params params = GoodTokenParams();
    if (!c.key.empty()) {
      params.erase(c.key);
      if (!c.value.empty()) params.emplace(c.key, c.value);
    }
    httplib::Result res = RequestToken(params, c.tenant);
    ASSERT_TRUE(res) << httplib::to_string(res.error());
    EXPECT_EQ(res->status, c.status) << res->body;
    json body = Parse(res->body);
    EXPECT_EQ(body["error"], c.error);
    EXPECT_EQ(body["error_codes"], json::array({c.code}));
    EXPECT_THAT(body["error_description"].get<std::string>(),
                StartsWith(absl::StrCat("AADSTS", c.code, ":")));
    EXPECT_TRUE(body["trace_id"].is_string());
    EXPECT_TRUE(body["correlation_id"].is_string());
    EXPECT_TRUE(body["timestamp"].is_string());
    EXPECT_THAT(res->body, ::testing::Not(HasSubstr(kSecret)));
    EXPECT_FALSE(body.contains("access_token"));
  }
  EXPECT_EQ(sandbox_->TokenRequests(), static_cast<int>(cases.size()));
}

TEST_F(SandboxTest, MalformedClientAssertionIsRejected) {
  httplib::Params params = {
      {"grant_type", "client_credentials"},
      {"client_id", kClient},
      {"client_assertion_type", "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"},
      {"client_assertion", "eyJhbGciOiJQUzI1NiJ9.e30.c2ln"},
      {"scope", kScope}};
  httplib::Result res = RequestToken(params);
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 401);
  json body = Parse(res->body);
  EXPECT_EQ(body["error"], "invalid_client");
  EXPECT_EQ(body["error_codes"], json::array({700027}));
}

// ---------------------------------------------------------------------------
// StopAndQuarantineFile.

TEST_F(SandboxTest, QuarantineHappyPathReturnsAMachineAction) {
  const std::string token = Token();
  const std::string comment =
      "quotes \" ' backslash \\ \\\\ newline\nline two\r\ttab\t end; "
      "non-ASCII: \xC3\x9Cn\xC3\xAF c\xC3\xB8"
      "d\xC3\xA9 \xE6\x97\xA5\xE6\x9C\xAC "
      "\xF0\x9F\x9A\xA8 </script> {\"json\": true}";
  const absl::Time before = absl::Now();
  httplib::Result res = Quarantine(token, kDefaultMachineId, QuarantineBody(comment));
  ASSERT_TRUE(res) << httplib::to_string(res.error());
  ASSERT_EQ(res->status, 201) << res->body;
  EXPECT_THAT(res->get_header_value("Content-Type"), StartsWith("application/json"));
  json a = Parse(res->body);
  ASSERT_TRUE(a.is_object());
  EXPECT_THAT(a["@odata.context"].get<std::string>(), HasSubstr("$metadata#MachineActions"));
  EXPECT_TRUE(std::regex_match(a["id"].get<std::string>(),
                               std::regex("[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-"
                                          "[0-9a-f]{12}")))
      << a["id"];
  EXPECT_EQ(a["type"], "StopAndQuarantineFile");
  EXPECT_TRUE(a["scope"].is_null());
  EXPECT_EQ(a["requestor"], kClient);
  EXPECT_EQ(a["requestorComment"].get<std::string>(), comment);  // byte for byte
  EXPECT_EQ(a["status"], "Pending");
  EXPECT_EQ(a["machineId"], kDefaultMachineId);
  EXPECT_EQ(a["computerDnsName"], "desktop-1.contoso.com");
  const std::regex seven_digits(R"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{7}Z)");
  EXPECT_TRUE(std::regex_match(a["creationDateTimeUtc"].get<std::string>(), seven_digits))
      << a["creationDateTimeUtc"];
  EXPECT_EQ(a["lastUpdateDateTimeUtc"], a["creationDateTimeUtc"]);
  absl::Time created = ParseTime7(a["creationDateTimeUtc"]);
  EXPECT_GE(created, before - absl::Milliseconds(1));
  EXPECT_LE(created, absl::Now());
  for (const char* null_field : {"cancellationRequestor", "cancellationComment",
                                 "cancellationDateTimeUtc", "externalId", "troubleshootInfo"}) {
    EXPECT_TRUE(a[null_field].is_null()) << null_field;
  }
  EXPECT_EQ(a["errorHResult"], 0);
  EXPECT_TRUE(a["title"].is_string());
  EXPECT_EQ(a["requestSource"], "PublicApi");
  EXPECT_EQ(a["commands"], json::array());
  EXPECT_EQ(a["relatedFileInfo"],
            (json{{"fileIdentifier", kSha1}, {"fileIdentifierType", "Sha1"}}));
  EXPECT_EQ(a["sandboxExtra"], (json{{"x", 1}}));

  // The same action comes back from GET.
  httplib::Result got =
      Get(token, absl::StrCat("/api/machineactions/", a["id"].get<std::string>()));
  ASSERT_TRUE(got);
  EXPECT_EQ(got->status, 200);
  EXPECT_EQ(Parse(got->body)["requestorComment"].get<std::string>(), comment);
}

TEST_F(SandboxTest, ApiRequiresAValidToken) {
  const std::string path = QuarantinePath(kDefaultMachineId);
  const std::string body = QuarantineBody("no token");
  ExpectDefenderError(Client()->Post(path, body, "application/json"), 401, "Unauthorized");
  ExpectDefenderError(Quarantine("sbx.not-issued-here", kDefaultMachineId, body), 401,
                      "Unauthorized");
  ExpectDefenderError(Client()->Get("/api/machines"), 401, "Unauthorized");

  const std::string token = Token();
  httplib::Result ok = Get(token, "/api/machines");
  ASSERT_TRUE(ok);
  EXPECT_EQ(ok->status, 200);
  sandbox_->ExpireAllTokens();
  ExpectDefenderError(Get(token, "/api/machines"), 401, "Unauthorized");
  ok = Get(Token(), "/api/machines");
  ASSERT_TRUE(ok);
  EXPECT_EQ(ok->status, 200) << "tokens issued after ExpireAllTokens work";
}

TEST_F(SandboxTest, TokensExpireAfterTheirLifetime) {
  SandboxOptions options;
  options.token_lifetime = absl::Seconds(2);
  StartSandbox(options);
  httplib::Result res = RequestToken(GoodTokenParams());
  ASSERT_TRUE(res);
  EXPECT_EQ(Parse(res->body)["expires_in"], 1);
  const std::string token = Parse(res->body)["access_token"];
  httplib::Result ok = Get(token, "/api/machines");
  ASSERT_TRUE(ok);
  EXPECT_EQ(ok->status, 200);
  absl::SleepFor(absl::Milliseconds(2100));
  ExpectDefenderError(Get(token, "/api/machines"), 401, "Unauthorized");
}

TEST_F(SandboxTest, QuarantineValidation) {
  const std::string token = Token();
  struct Case {
    std::string name;
    std::string machine;
    std::string body;
    std::string content_type;
    int status;
    std::string code;
  };
  const std::vector<Case> cases = {
      {"unknown machine", "ffffffffffffffffffffffffffffffffffffffff", QuarantineBody("x"),
       "application/json", 404, "ResourceNotFound"},
      {"linux machine", kLinuxMachine, QuarantineBody("x"), "application/json", 400,
       "OsPlatformNotSupported"},
      {"absent file", kDefaultMachineId, QuarantineBody("x", kAbsentSha1), "application/json", 404,
       "ResourceNotFound"},
      {"bad hash", kDefaultMachineId, QuarantineBody("x", "xyz"), "application/json", 400,
       "InvalidHashValue"},
      {"sha256 is not sha1", kDefaultMachineId, QuarantineBody("x", kKnownFileSha256),
       "application/json", 400, "InvalidHashValue"},
      {"no comment", kDefaultMachineId, json{{"Sha1", kSha1}}.dump(), "application/json", 400,
       "MissingRequiredParameter"},
      {"empty comment", kDefaultMachineId, QuarantineBody(""), "application/json", 400,
       "MissingRequiredParameter"},
      {"lower-case names", kDefaultMachineId, json{{"comment", "x"}, {"sha1", kSha1}}.dump(),
       "application/json", 400, "MissingRequiredParameter"},
      {"not json", kDefaultMachineId, "Comment=x&Sha1=y", "application/json", 400,
       "InvalidRequestBody"},
      {"json array", kDefaultMachineId, "[]", "application/json", 400, "InvalidRequestBody"},
      {"form content type", kDefaultMachineId, QuarantineBody("x"),
       "application/x-www-form-urlencoded", 400, "InvalidRequestBody"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    httplib::Result res =
        Client()->Post(QuarantinePath(c.machine), Auth(token), c.body, c.content_type);
    ExpectDefenderError(res, c.status, c.code);
  }
  httplib::Result absent = Quarantine(token, kDefaultMachineId, QuarantineBody("x", kAbsentSha1));
  ASSERT_TRUE(absent);
  EXPECT_THAT(Parse(absent->body)["error"]["message"].get<std::string>(),
              HasSubstr("was not found in machine"));

  httplib::Result list = Get(token, "/api/machineactions");
  ASSERT_TRUE(list);
  EXPECT_EQ(Parse(list->body)["value"], json::array()) << "no failed call created an action";
}

TEST_F(SandboxTest, SecondRequestWhileActiveIsRefused) {
  const std::string token = Token();
  httplib::Result first = Quarantine(token, kDefaultMachineId, QuarantineBody("one"));
  ASSERT_TRUE(first);
  ASSERT_EQ(first->status, 201);
  httplib::Result second = Quarantine(token, kDefaultMachineId, QuarantineBody("two"));
  ExpectDefenderError(second, 400, "ActiveRequestAlreadyExists");
  EXPECT_EQ(Parse(second->body)["error"]["message"], "Action is already in progress");
  // Another machine, or another file, is independent.
  httplib::Result other = Quarantine(token, kOtherMachine, QuarantineBody("three"));
  ASSERT_TRUE(other);
  EXPECT_EQ(other->status, 201);
  other = Quarantine(token, kDefaultMachineId, QuarantineBody("four", kKnownFileSha1));
  ASSERT_TRUE(other);
  EXPECT_EQ(other->status, 201);
  // The hash compares without regard to case.
  httplib::Result upper =
      Quarantine(token, kDefaultMachineId, QuarantineBody("five", absl::AsciiStrToUpper(kSha1)));
  ExpectDefenderError(upper, 400, "ActiveRequestAlreadyExists");
  // Once the active action is cancelled (final), the same pair is accepted again.
  const std::string id = Parse(first->body)["id"];
  httplib::Result cancelled =
      Client()->Post(absl::StrCat("/api/machineactions/", absl::AsciiStrToUpper(id), "/cancel"),
                     Auth(token), json{{"Comment", "stop"}}.dump(), "application/json");
  ASSERT_TRUE(cancelled);
  ASSERT_EQ(cancelled->status, 200) << cancelled->body;
  httplib::Result again = Quarantine(token, kDefaultMachineId, QuarantineBody("six"));
  ASSERT_TRUE(again);
  EXPECT_EQ(again->status, 201) << again->body;
  ExpectDefenderError(Quarantine(token, kDefaultMachineId, QuarantineBody("seven")), 400,
                      "ActiveRequestAlreadyExists");
  // Reset forgets every action.
  sandbox_->Reset();
  httplib::Result after_reset =
      Quarantine(Token(), kDefaultMachineId, QuarantineBody("eight"));
  ASSERT_TRUE(after_reset);
  EXPECT_EQ(after_reset->status, 201) << after_reset->body;
}

TEST_F(SandboxTest, StatsCountRequestsTokensAndActions) {
  auto stats = [this] {
    httplib::Result res = Client()->Get("/sandbox/stats");
    EXPECT_TRUE(res);
    return res ? Parse(res->body) : json();
  };
  json before = stats();
  EXPECT_EQ(before["requests"], 0);
  EXPECT_EQ(before["token_requests"], 0);
  EXPECT_EQ(before["actions"], 0);
  const std::string token = Token();
  ASSERT_TRUE(Quarantine(token, kDefaultMachineId, QuarantineBody("one")));
  ASSERT_TRUE(Quarantine(token, kOtherMachine, QuarantineBody("two")));
  ASSERT_TRUE(Get(token, "/api/machines"));
  json after = stats();
  EXPECT_EQ(after["requests"], 4);  // the token request, two POSTs and one GET
  EXPECT_EQ(after["token_requests"], 1);
  EXPECT_EQ(after["managed_identity_requests"], 0);
  EXPECT_EQ(after["actions"], 2);
  ASSERT_TRUE(Client()->Delete("/sandbox/requests"));
  EXPECT_EQ(stats()["requests"], 0);
  EXPECT_EQ(stats()["token_requests"], 1) << "clearing the record keeps the count of tokens";
}

TEST_F(SandboxTest, StatusProgressesWithTime) {
  SandboxOptions options;
  options.action_step = absl::Milliseconds(300);
  StartSandbox(options);
  const std::string token = Token();
  httplib::Result res = Quarantine(token, kDefaultMachineId, QuarantineBody("progress"));
  ASSERT_TRUE(res);
  ASSERT_EQ(res->status, 201);
  json created = Parse(res->body);
  const std::string id = created["id"];
  EXPECT_EQ(created["status"], "Pending");

  const std::vector<std::string> order = {"Pending", "InProgress", "Succeeded"};
  size_t last_index = 0;
  json final_action;
  const absl::Time deadline = absl::Now() + absl::Seconds(10);
  while (absl::Now() < deadline) {
    httplib::Result got = Get(token, absl::StrCat("/api/machineactions/", id));
    ASSERT_TRUE(got);
    ASSERT_EQ(got->status, 200);
    json a = Parse(got->body);
    auto it = std::find(order.begin(), order.end(), a["status"].get<std::string>());
    ASSERT_NE(it, order.end()) << a["status"];
    size_t index = static_cast<size_t>(it - order.begin());
    EXPECT_GE(index, last_index) << "status went backwards";
    last_index = index;
    if (a["status"] == "Succeeded") {
      final_action = a;
      break;
    }
    absl::SleepFor(absl::Milliseconds(50));
  }
  ASSERT_EQ(final_action["status"], "Succeeded");
  // lastUpdate is exactly creation + 2 steps.
  EXPECT_EQ(ParseTime7(final_action["lastUpdateDateTimeUtc"]),
            ParseTime7(created["creationDateTimeUtc"]) + absl::Milliseconds(600));
  // A final action no longer blocks a new one for the same file.
  httplib::Result again = Quarantine(token, kDefaultMachineId, QuarantineBody("again"));
  ASSERT_TRUE(again);
  EXPECT_EQ(again->status, 201);
}

TEST_F(SandboxTest, GetUnknownActionIs404) {
  ExpectDefenderError(Get(Token(), "/api/machineactions/00000000-0000-4000-8000-000000000000"), 404,
                      "ResourceNotFound");
}

// ---------------------------------------------------------------------------
// Listing actions.

TEST_F(SandboxTest, FilterQuery) {
  const std::string token = Token();
  std::vector<std::string> ids;
  for (const auto& [machine, sha1] :
       std::vector<std::pair<std::string, std::string>>{{kDefaultMachineId, kSha1},
                                                        {kOtherMachine, kSha1},
                                                        {kDefaultMachineId, kKnownFileSha1}}) {
    httplib::Result res = Quarantine(token, machine, QuarantineBody("filter", sha1));
    ASSERT_TRUE(res);
    ASSERT_EQ(res->status, 201);
    ids.push_back(Parse(res->body)["id"]);
    absl::SleepFor(absl::Milliseconds(2));  // distinct creation times
  }
  auto list = [&](const std::string& filter, const std::string& top = "") {
    httplib::Params params;
    if (!filter.empty()) params.emplace("$filter", filter);
    if (!top.empty()) params.emplace("$top", top);
    httplib::Result res = Get(token, "/api/machineactions", params);
    EXPECT_TRUE(res);
    std::vector<std::string> found;
    if (!res) return found;
    EXPECT_EQ(res->status, 200) << res->body;
    json body = Parse(res->body);
    EXPECT_THAT(body["@odata.context"].get<std::string>(), HasSubstr("MachineActions"));
    for (const json& a : body["value"]) found.push_back(a["id"]);
    return found;
  };
  using V = std::vector<std::string>;
  EXPECT_EQ(list(""), (V{ids[2], ids[1], ids[0]})) << "newest first";
  EXPECT_EQ(list(absl::StrCat("machineId eq '", kDefaultMachineId, "'")), (V{ids[2], ids[0]}));
  EXPECT_EQ(list(absl::StrCat("machineId eq '", kDefaultMachineId,
                              "' and type eq 'StopAndQuarantineFile'")),
            (V{ids[2], ids[0]}));
  EXPECT_EQ(list("type eq 'Isolate'"), V{});
  EXPECT_EQ(list("status eq 'Pending'").size(), 3u);
  EXPECT_EQ(list("status eq 'Succeeded'"), V{});
  EXPECT_EQ(list(absl::StrCat("requestor eq '", kClient, "'")).size(), 3u);
  EXPECT_EQ(list("creationDateTimeUtc ge 2020-01-01T00:00:00Z").size(), 3u);
  EXPECT_EQ(list("creationDateTimeUtc gt 2999-01-01T00:00:00.1234567Z"), V{});
  EXPECT_EQ(list("", "1"), V{ids[2]});
  EXPECT_EQ(list(absl::StrCat("machineId eq '", kOtherMachine, "'"), "5"), V{ids[1]});

  for (const std::string bad :
       {"computerDnsName eq 'x'", "machineId gt 'x'", "machineId eq 'unterminated",
        "creationDateTimeUtc ge yesterday", "machineId eq 'x' or type eq 'y'"}) {
    SCOPED_TRACE(bad);
    ExpectDefenderError(Get(token, "/api/machineactions", {{"$filter", bad}}), 400, "ODataError");
  }
  ExpectDefenderError(Get(token, "/api/machineactions", {{"$top", "-1"}}), 400, "ODataError");
  ExpectDefenderError(Get(token, "/api/machineactions", {{"$orderby", "id"}}), 400, "ODataError");
}

TEST_F(SandboxTest, CancelAnAction) {
  const std::string token = Token();
  httplib::Result res = Quarantine(token, kDefaultMachineId, QuarantineBody("to cancel"));
  ASSERT_TRUE(res);
  ASSERT_EQ(res->status, 201);
  const std::string id = Parse(res->body)["id"];
  const std::string cancel_path = absl::StrCat("/api/machineactions/", id, "/cancel");
  const std::string comment = "changed my mind \"now\"";

  httplib::Result cancelled = Client()->Post(cancel_path, Auth(token),
                                             json{{"Comment", comment}}.dump(), "application/json");
  ASSERT_TRUE(cancelled);
  ASSERT_EQ(cancelled->status, 200) << cancelled->body;
  json a = Parse(cancelled->body);
  EXPECT_EQ(a["id"], id);
  EXPECT_EQ(a["status"], "Cancelled");
  EXPECT_EQ(a["cancellationRequestor"], kClient);
  EXPECT_EQ(a["cancellationComment"], comment);
  ASSERT_TRUE(a["cancellationDateTimeUtc"].is_string());
  EXPECT_EQ(a["lastUpdateDateTimeUtc"], a["cancellationDateTimeUtc"]);

  httplib::Result got = Get(token, absl::StrCat("/api/machineactions/", id));
  ASSERT_TRUE(got);
  EXPECT_EQ(Parse(got->body)["status"], "Cancelled");
  EXPECT_EQ(Get(token, "/api/machineactions", {{"$filter", "status eq 'Cancelled'"}})->body,
            Get(token, "/api/machineactions")->body);

  // Final: cannot cancel again; unknown ids are 404; a new request is allowed.
  ExpectDefenderError(Client()->Post(cancel_path, Auth(token), json{{"Comment", "again"}}.dump(),
                                     "application/json"),
                      400, "BadRequest");
  ExpectDefenderError(
      Client()->Post("/api/machineactions/00000000-0000-4000-8000-000000000000/cancel", Auth(token),
                     json{{"Comment", "x"}}.dump(), "application/json"),
      404, "ResourceNotFound");
  httplib::Result again = Quarantine(token, kDefaultMachineId, QuarantineBody("again"));
  ASSERT_TRUE(again);
  EXPECT_EQ(again->status, 201);
}

// ---------------------------------------------------------------------------
// Machines and files.

TEST_F(SandboxTest, MachinesAndFiles) {
  const std::string token = Token();
  auto by_name = [&](const std::string& name) {
    httplib::Result res =
        Get(token, "/api/machines", {{"$filter", absl::StrCat("computerDnsName eq '", name, "'")}});
    EXPECT_TRUE(res);
    EXPECT_EQ(res->status, 200);
    return Parse(res->body)["value"];
  };
  json one = by_name("desktop-1.contoso.com");
  ASSERT_EQ(one.size(), 1u);
  EXPECT_EQ(one[0]["id"], kDefaultMachineId);
  EXPECT_EQ(one[0]["osPlatform"], "Windows11");
  EXPECT_EQ(one[0]["healthStatus"], "Active");
  EXPECT_TRUE(one[0]["lastSeen"].is_string());
  EXPECT_EQ(by_name("dup.contoso.com").size(), 2u);
  EXPECT_EQ(by_name("nobody.contoso.com").size(), 0u);

  httplib::Result machine = Get(token, absl::StrCat("/api/machines/", kLinuxMachine));
  ASSERT_TRUE(machine);
  EXPECT_EQ(machine->status, 200);
  EXPECT_EQ(Parse(machine->body)["osPlatform"], "Linux");
  ExpectDefenderError(Get(token, "/api/machines/ffffffffffffffffffffffffffffffffffffffff"), 404,
                      "ResourceNotFound");

  for (const char* hash : {kKnownFileSha1, kKnownFileSha256}) {
    httplib::Result file = Get(token, absl::StrCat("/api/files/", hash));
    ASSERT_TRUE(file);
    ASSERT_EQ(file->status, 200);
    json f = Parse(file->body);
    EXPECT_EQ(f["sha1"], kKnownFileSha1);
    EXPECT_EQ(f["sha256"], kKnownFileSha256);
    EXPECT_EQ(f["md5"], "900150983cd24fb0d6963f7d28e17f72");
    EXPECT_EQ(f["size"], 3);
    EXPECT_EQ(f["fileType"], "PortableExecutable");
    EXPECT_EQ(f["isPeFile"], true);
  }
  ExpectDefenderError(Get(token, absl::StrCat("/api/files/", kSha1)), 404, "ResourceNotFound");
  httplib::Result seen = Get(token, absl::StrCat("/api/files/", kKnownFileSha1, "/machines"));
  ASSERT_TRUE(seen);
  EXPECT_FALSE(Parse(seen->body)["value"].empty());
}

TEST_F(SandboxTest, CustomMachines) {
  SandboxOptions options;
  options.machines = {{"abcdefabcdefabcdefabcdefabcdefabcdefabcd", "only.example", "Windows10"}};
  StartSandbox(options);
  const std::string token = Token();
  httplib::Result res = Get(token, "/api/machines");
  ASSERT_TRUE(res);
  json value = Parse(res->body)["value"];
  ASSERT_EQ(value.size(), 1u);
  EXPECT_EQ(value[0]["computerDnsName"], "only.example");
  ExpectDefenderError(Quarantine(token, kDefaultMachineId, QuarantineBody("x")), 404,
                      "ResourceNotFound");

  options.machines = {{"not-hex", "bad.example", "Windows10"}};
  EXPECT_EQ(Sandbox::Start(options).status().code(), absl::StatusCode::kInvalidArgument);
}

// ---------------------------------------------------------------------------
// Faults.

TEST_F(SandboxTest, FaultRespondsWithStatusAndRetryAfter) {
  const std::string token = Token();
  FaultRule rule;
  rule.method = "POST";
  rule.path_regex = "/StopAndQuarantineFile$";
  rule.status = 429;
  rule.retry_after = "7";
  rule.times = 2;
  sandbox_->AddFault(rule);
  for (int i = 0; i < 2; ++i) {
    httplib::Result res = Quarantine(token, kDefaultMachineId, QuarantineBody("throttled"));
    ExpectDefenderError(res, 429, "TooManyRequests");
    EXPECT_EQ(res->get_header_value("Retry-After"), "7");
  }
  // GETs do not match the rule's method.
  httplib::Result list = Get(token, "/api/machineactions");
  ASSERT_TRUE(list);
  EXPECT_EQ(list->status, 200);
  EXPECT_EQ(Parse(list->body)["value"], json::array()) << "faulted calls created nothing";
  // Used up: the third call is real.
  httplib::Result real = Quarantine(token, kDefaultMachineId, QuarantineBody("real"));
  ASSERT_TRUE(real);
  EXPECT_EQ(real->status, 201);
  EXPECT_FALSE(real->has_header("Retry-After"));
  EXPECT_EQ(sandbox_->Requests().size(), 5u) << "token + 2 faulted + list + real";
}

TEST_F(SandboxTest, FaultWithCustomBodyDelayAndForever) {
  FaultRule rule;
  rule.path_regex = "^/api/machines$";
  rule.status = 503;
  rule.body = "<html>upstream down</html>";
  rule.delay = absl::Milliseconds(100);
  rule.times = -1;
  sandbox_->AddFault(rule);
  const std::string token = Token();  // the token path does not match
  for (int i = 0; i < 3; ++i) {
    const absl::Time start = absl::Now();
    httplib::Result res = Get(token, "/api/machines");
    ASSERT_TRUE(res);
    EXPECT_EQ(res->status, 503);
    EXPECT_EQ(res->body, "<html>upstream down</html>");
    EXPECT_GE(absl::Now() - start, absl::Milliseconds(100));
  }
  sandbox_->ClearFaults();
  httplib::Result res = Get(token, "/api/machines");
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 200);
}

TEST_F(SandboxTest, FaultsCanHitTheTokenEndpoint) {
  FaultRule rule;
  rule.path_regex = "oauth2";
  rule.status = 500;
  sandbox_->AddFault(rule);
  httplib::Result res = RequestToken(GoodTokenParams());
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 500);
  EXPECT_EQ(sandbox_->TokenRequests(), 1);
  EXPECT_FALSE(Token().empty());
  EXPECT_EQ(sandbox_->TokenRequests(), 2);
}

TEST_F(SandboxTest, DropConnectionGivesAClientErrorAndRunsNothing) {
  const std::string token = Token();
  FaultRule rule;
  rule.path_regex = "StopAndQuarantineFile";
  rule.kind = FaultRule::Kind::kDropConnection;
  sandbox_->AddFault(rule);
  httplib::Result res = Quarantine(token, kDefaultMachineId, QuarantineBody("dropped"));
  EXPECT_FALSE(res) << "got a response: " << res->status;
  EXPECT_NE(res.error(), httplib::Error::Success);

  std::vector<RecordedRequest> requests = sandbox_->Requests();
  ASSERT_EQ(requests.size(), 2u) << "the dropped request is recorded";
  EXPECT_EQ(requests[1].body, QuarantineBody("dropped"));
  httplib::Result list = Get(token, "/api/machineactions");
  ASSERT_TRUE(list);
  EXPECT_EQ(Parse(list->body)["value"], json::array()) << "the real handler did not run";
  httplib::Result real = Quarantine(token, kDefaultMachineId, QuarantineBody("retried"));
  ASSERT_TRUE(real);
  EXPECT_EQ(real->status, 201);
}

TEST_F(SandboxTest, DropConnectionOnAKeepAliveConnection) {
  const std::string token = Token();
  auto client = Client();
  client->set_keep_alive(true);
  httplib::Result first = client->Get("/api/machines", Auth(token));
  ASSERT_TRUE(first);
  EXPECT_EQ(first->status, 200);
  FaultRule rule;
  rule.kind = FaultRule::Kind::kDropConnection;
  sandbox_->AddFault(rule);
  httplib::Result dropped = client->Get("/api/machines", Auth(token));
  EXPECT_FALSE(dropped);
  httplib::Result after = client->Get("/api/machines", Auth(token));
  ASSERT_TRUE(after) << httplib::to_string(after.error());
  EXPECT_EQ(after->status, 200);
}

TEST_F(SandboxTest, MalformedBodyKeepsStatusAndRunsTheHandler) {
  const std::string token = Token();
  FaultRule rule;
  rule.path_regex = "StopAndQuarantineFile";
  rule.kind = FaultRule::Kind::kMalformedBody;
  rule.retry_after = "3";
  sandbox_->AddFault(rule);
  httplib::Result res = Quarantine(token, kDefaultMachineId, QuarantineBody("malformed"));
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 201);
  EXPECT_EQ(res->get_header_value("Retry-After"), "3");
  EXPECT_TRUE(Parse(res->body).is_discarded()) << res->body;
  httplib::Result list = Get(token, "/api/machineactions");
  ASSERT_TRUE(list);
  EXPECT_EQ(Parse(list->body)["value"].size(), 1u) << "the action was created";
}

TEST_F(SandboxTest, SlowBodyArrivesCompleteButLate) {
  const std::string token = Token();
  httplib::Result normal = Get(token, absl::StrCat("/api/machines/", kDefaultMachineId));
  ASSERT_TRUE(normal);
  FaultRule rule;
  rule.path_regex = "^/api/machines/";
  rule.kind = FaultRule::Kind::kSlowBody;
  rule.delay = absl::Milliseconds(2);
  sandbox_->AddFault(rule);
  const absl::Time start = absl::Now();
  httplib::Result slow = Get(token, absl::StrCat("/api/machines/", kDefaultMachineId));
  const absl::Duration took = absl::Now() - start;
  ASSERT_TRUE(slow) << httplib::to_string(slow.error());
  EXPECT_EQ(slow->status, 200);
  EXPECT_EQ(slow->body, normal->body);
  EXPECT_THAT(slow->get_header_value("Content-Type"), StartsWith("application/json"));
  const size_t chunks = (normal->body.size() + 7) / 8;
  EXPECT_GE(took, absl::Milliseconds(2) * static_cast<int64_t>(chunks - 1)) << took;
}

TEST_F(SandboxTest, OversizeBodyIs16MiB) {
  const std::string token = Token();
  FaultRule rule;
  rule.kind = FaultRule::Kind::kOversizeBody;
  sandbox_->AddFault(rule);
  httplib::Result res = Get(token, "/api/machineactions");
  ASSERT_TRUE(res) << httplib::to_string(res.error());
  EXPECT_EQ(res->status, 200);
  EXPECT_EQ(res->body.size(), 16u * 1024 * 1024);
  EXPECT_EQ(res->body.front(), '{');
  EXPECT_EQ(res->body.back(), '}');
}

TEST_F(SandboxTest, InvalidFaultRegexMatchesNothing) {
  FaultRule rule;
  rule.path_regex = "([unclosed";
  rule.status = 500;
  sandbox_->AddFault(rule);
  httplib::Result res = Get(Token(), "/api/machines");
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 200);
}

TEST_F(SandboxTest, StoppingCutsFaultDelaysShort) {
  FaultRule rule;
  rule.status = 500;
  rule.delay = absl::Seconds(60);
  sandbox_->AddFault(rule);
  std::atomic<bool> answered{false};
  auto client = Client();
  std::thread caller([&] {
    client->Get("/api/machines");
    answered = true;
  });
  // Wait until the request is in the sandbox, then stop it.
  const absl::Time deadline = absl::Now() + absl::Seconds(5);
  while (sandbox_->Requests().empty() && absl::Now() < deadline) {
    absl::SleepFor(absl::Milliseconds(5));
  }
  const absl::Time start = absl::Now();
  sandbox_.reset();
  EXPECT_LT(absl::Now() - start, absl::Seconds(5));
  caller.join();
  EXPECT_TRUE(answered);
}

// ---------------------------------------------------------------------------
// Recording and control endpoints.

TEST_F(SandboxTest, RequestsAreRecorded) {
  const std::string token = Token();
  httplib::Result res = Get(token, "/api/machines", {{"$filter", "osPlatform eq 'Linux'"}});
  ASSERT_TRUE(res);
  EXPECT_EQ(Parse(res->body)["value"].size(), 1u);
  Client()->Get("/sandbox/health");
  std::vector<RecordedRequest> requests = sandbox_->Requests();
  ASSERT_EQ(requests.size(), 2u);
  EXPECT_EQ(requests[0].method, "POST");
  EXPECT_EQ(requests[0].path, TokenPath());
  EXPECT_THAT(requests[0].body, HasSubstr("grant_type=client_credentials"));
  EXPECT_THAT(requests[0].Header("content-type"), StartsWith("application/x-www-form-urlencoded"));
  EXPECT_EQ(requests[1].method, "GET");
  EXPECT_EQ(requests[1].path, "/api/machines");
  EXPECT_THAT(requests[1].target, StartsWith("/api/machines?"));
  EXPECT_THAT(requests[1].target, HasSubstr("filter=osPlatform%20eq%20%27Linux%27"));
  EXPECT_EQ(requests[1].Header("authorization"), absl::StrCat("Bearer ", token));
  EXPECT_EQ(requests[1].Header("REMOTE_ADDR"), "") << "httplib's pseudo headers are dropped";
  sandbox_->ClearRequests();
  EXPECT_TRUE(sandbox_->Requests().empty());
}

TEST_F(SandboxTest, ControlEndpoints) {
  auto client = Client();
  const std::string token = Token();

  // A fault over HTTP.
  json fault = {{"method", "GET"},    {"path_regex", "^/api/machines$"},
                {"times", 1},         {"status", 503},
                {"retry_after", "2"}, {"delay_ms", 1},
                {"kind", "respond"}};
  httplib::Result added = client->Post("/sandbox/faults", fault.dump(), "application/json");
  ASSERT_TRUE(added);
  EXPECT_EQ(added->status, 200) << added->body;
  httplib::Result hit = Get(token, "/api/machines");
  ASSERT_TRUE(hit);
  EXPECT_EQ(hit->status, 503);
  EXPECT_EQ(hit->get_header_value("Retry-After"), "2");
  for (const std::string bad :
       {R"({"kind":"explode"})", R"({"path_regex":"(["})", R"({"unknown":1})", "[]", "not json"}) {
    httplib::Result rejected = client->Post("/sandbox/faults", bad, "application/json");
    ASSERT_TRUE(rejected);
    EXPECT_EQ(rejected->status, 400) << bad;
  }
  added = client->Post("/sandbox/faults", R"({"kind":"drop"})", "application/json");
  ASSERT_TRUE(added);
  httplib::Result cleared = client->Delete("/sandbox/faults");
  ASSERT_TRUE(cleared);
  EXPECT_EQ(cleared->status, 200);
  httplib::Result fine = Get(token, "/api/machines");
  ASSERT_TRUE(fine);
  EXPECT_EQ(fine->status, 200);

  // Recorded requests over HTTP.
  httplib::Result requests = client->Get("/sandbox/requests");
  ASSERT_TRUE(requests);
  json list = Parse(requests->body);
  ASSERT_TRUE(list.is_array());
  ASSERT_EQ(list.size(), 3u);  // token, 503, 200
  EXPECT_EQ(list[1]["method"], "GET");
  EXPECT_EQ(list[1]["path"], "/api/machines");
  EXPECT_EQ(list[1]["headers"]["Authorization"], absl::StrCat("Bearer ", token));
  EXPECT_EQ(list[0]["body"].get<std::string>(), sandbox_->Requests()[0].body);
  ASSERT_TRUE(client->Delete("/sandbox/requests"));
  EXPECT_TRUE(sandbox_->Requests().empty());

  // Token expiry and reset.
  ASSERT_TRUE(client->Post("/sandbox/expire-tokens", "", "application/json"));
  ExpectDefenderError(Get(token, "/api/machines"), 401, "Unauthorized");
  const std::string fresh = Token();
  httplib::Result created = Quarantine(fresh, kDefaultMachineId, QuarantineBody("x"));
  ASSERT_TRUE(created);
  EXPECT_EQ(created->status, 201);
  ASSERT_TRUE(client->Post("/sandbox/reset", "", "application/json"));
  EXPECT_TRUE(sandbox_->Requests().empty());
  EXPECT_EQ(sandbox_->TokenRequests(), 0);
  ExpectDefenderError(Get(fresh, "/api/machines"), 401, "Unauthorized");
  httplib::Result actions = Get(Token(), "/api/machineactions");
  ASSERT_TRUE(actions);
  EXPECT_EQ(Parse(actions->body)["value"], json::array());

  httplib::Result unknown = client->Get("/sandbox/nothing");
  ASSERT_TRUE(unknown);
  EXPECT_EQ(unknown->status, 404);
}

TEST_F(SandboxTest, UnknownPathsAndMethods) {
  const std::string token = Token();
  ExpectDefenderError(Get(token, "/api/nothing"), 404, "NotFound");
  ExpectDefenderError(Client()->Delete(absl::StrCat("/api/machines/", kDefaultMachineId)), 405,
                      "MethodNotAllowed");
}

TEST_F(SandboxTest, ManyConcurrentClients) {
  const std::string token = Token();
  constexpr int kCallers = 24;
  std::vector<std::thread> threads;
  std::atomic<int> created{0};
  for (int i = 0; i < kCallers; ++i) {
    threads.emplace_back([&, i] {
      std::string sha1 = std::string(38, 'a') + absl::StrCat(10 + i);
      httplib::Result res = Quarantine(token, kDefaultMachineId, QuarantineBody("many", sha1));
      if (res && res->status == 201) ++created;
    });
  }
  for (std::thread& t : threads) t.join();
  EXPECT_EQ(created.load(), kCallers);
  EXPECT_EQ(sandbox_->Requests().size(), static_cast<size_t>(kCallers + 1));
}

// ---------------------------------------------------------------------------
// Dropping after the handler ran, accessors, Stop.

TEST_F(SandboxTest, DropAfterHandlingRunsTheHandlerThenDrops) {
  const std::string token = Token();
  FaultRule rule;
  rule.method = "POST";
  rule.path_regex = "StopAndQuarantineFile$";
  rule.kind = FaultRule::Kind::kDropAfterHandling;
  sandbox_->AddFault(rule);
  httplib::Result res = Quarantine(token, kDefaultMachineId, QuarantineBody("dropped after"));
  EXPECT_FALSE(res) << "got a response: " << res->status;
  ASSERT_EQ(sandbox_->ActionCount(), 1) << "the real handler ran";
  std::vector<std::string> ids = sandbox_->ActionIds();
  ASSERT_EQ(ids.size(), 1u);
  httplib::Result action = Get(token, absl::StrCat("/api/machineactions/", ids[0]));
  ASSERT_TRUE(action);
  EXPECT_EQ(action->status, 200);
  EXPECT_EQ(Parse(action->body)["requestorComment"], "dropped after");
  // A retry of the same request meets the action the first one created.
  ExpectDefenderError(Quarantine(token, kDefaultMachineId, QuarantineBody("retry")), 400,
                      "ActiveRequestAlreadyExists");
  EXPECT_EQ(sandbox_->ActionCount(), 1);
}

TEST_F(SandboxTest, DropAfterHandlingOverHttpWithDelay) {
  const std::string token = Token();
  auto client = Client();
  httplib::Result added = client->Post(
      "/sandbox/faults", R"({"kind":"drop_after","path_regex":"^/api/machines/","delay_ms":50})",
      "application/json");
  ASSERT_TRUE(added);
  ASSERT_EQ(added->status, 200) << added->body;
  const absl::Time start = absl::Now();
  EXPECT_FALSE(Quarantine(token, kDefaultMachineId, QuarantineBody("late drop")));
  EXPECT_GE(absl::Now() - start, absl::Milliseconds(50));
  httplib::Result ids = client->Get("/sandbox/actions");
  ASSERT_TRUE(ids);
  json body = Parse(ids->body);
  ASSERT_TRUE(body["ids"].is_array()) << ids->body;
  ASSERT_EQ(body["ids"].size(), 1u);
  EXPECT_EQ(body["ids"][0], sandbox_->ActionIds()[0]);
  for (const std::string bad : {R"({"delay_ms":-2})", R"({"kind":"drop_later"})"}) {
    httplib::Result rejected = client->Post("/sandbox/faults", bad, "application/json");
    ASSERT_TRUE(rejected);
    EXPECT_EQ(rejected->status, 400) << bad;
  }
}

TEST_F(SandboxTest, ActionIdsAreInCreationOrder) {
  const std::string token = Token();
  EXPECT_TRUE(sandbox_->ActionIds().empty());
  std::vector<std::string> created;
  for (int i = 0; i < 3; ++i) {
    std::string sha1 = std::string(39, 'b') + absl::StrCat(i);
    httplib::Result res = Quarantine(token, kDefaultMachineId, QuarantineBody("order", sha1));
    ASSERT_TRUE(res);
    ASSERT_EQ(res->status, 201);
    created.push_back(Parse(res->body)["id"].get<std::string>());
  }
  EXPECT_EQ(sandbox_->ActionIds(), created);
  EXPECT_EQ(sandbox_->ActionCount(), 3);
  sandbox_->Reset();
  EXPECT_EQ(sandbox_->ActionCount(), 0);
}

TEST_F(SandboxTest, CountRequestsByMethodAndPath) {
  const std::string token = Token();
  ASSERT_TRUE(Get(token, "/api/machines"));
  ASSERT_TRUE(Get(token, absl::StrCat("/api/machines/", kDefaultMachineId)));
  ASSERT_TRUE(Quarantine(token, kDefaultMachineId, QuarantineBody("count")));
  Client()->Get("/sandbox/health");  // control calls are not recorded
  EXPECT_EQ(sandbox_->CountRequests("", ""), 4);
  EXPECT_EQ(sandbox_->CountRequests("GET", ""), 2);
  EXPECT_EQ(sandbox_->CountRequests("POST", ""), 2);
  EXPECT_EQ(sandbox_->CountRequests("POST", "StopAndQuarantineFile$"), 1);
  EXPECT_EQ(sandbox_->CountRequests("", "^/api/machines"), 3);
  EXPECT_EQ(sandbox_->CountRequests("GET", "^/api/machines$"), 1);
  EXPECT_EQ(sandbox_->CountRequests("DELETE", ""), 0);
  EXPECT_EQ(sandbox_->CountRequests("", "oauth2"), 1);
  EXPECT_EQ(sandbox_->CountRequests("", "([unclosed"), -1);
}

TEST_F(SandboxTest, StopCutsAnEndlessDelayAndDropsDropAfter) {
  FaultRule never;
  never.path_regex = "^/api/machines$";
  never.delay = absl::InfiniteDuration();
  sandbox_->AddFault(never);
  FaultRule drop_after;
  drop_after.path_regex = "StopAndQuarantineFile$";
  drop_after.kind = FaultRule::Kind::kDropAfterHandling;
  drop_after.delay = absl::Seconds(60);
  sandbox_->AddFault(drop_after);
  const std::string token = Token();
  std::atomic<int> finished{0};
  int never_status = 0;  // -1 = no answer
  bool drop_answered = true;
  auto never_client = Client();
  auto drop_client = Client();
  never_client->set_read_timeout(120, 0);
  drop_client->set_read_timeout(120, 0);
  std::thread a([&] {
    httplib::Result res = never_client->Get("/api/machines", Auth(token));
    never_status = res ? res->status : -1;
    ++finished;
  });
  std::thread b([&] {
    drop_answered =
        static_cast<bool>(drop_client->Post(QuarantinePath(kDefaultMachineId), Auth(token),
                                            QuarantineBody("stopped"), "application/json"));
    ++finished;
  });
  const absl::Time deadline = absl::Now() + absl::Seconds(10);
  while ((sandbox_->Requests().size() < 3 || sandbox_->ActionCount() < 1) &&
         absl::Now() < deadline) {
    absl::SleepFor(absl::Milliseconds(5));
  }
  ASSERT_EQ(sandbox_->ActionCount(), 1);
  absl::SleepFor(absl::Milliseconds(100));
  EXPECT_EQ(finished.load(), 0) << "both requests still wait";
  const absl::Time start = absl::Now();
  sandbox_->Stop();
  EXPECT_LT(absl::Now() - start, absl::Seconds(8));
  a.join();
  b.join();
  EXPECT_EQ(never_status, 503);
  EXPECT_FALSE(drop_answered) << "dropped, not answered";
  // Accessors still work after Stop; Stop is idempotent.
  EXPECT_EQ(sandbox_->ActionCount(), 1);
  EXPECT_EQ(sandbox_->CountRequests("POST", "StopAndQuarantineFile$"), 1);
  sandbox_->Stop();
}

// ---------------------------------------------------------------------------
// Rate limits.

class RateLimitTest : public SandboxTest {
 protected:
  void SetUp() override {}
  void StartWithLimits(int per_minute, int per_hour) {
    SandboxOptions options;
    options.rate_per_minute = per_minute;
    options.rate_per_hour = per_hour;
    StartSandbox(options);
  }
  static int RetryAfter(const httplib::Result& res) {
    int seconds = -1;
    if (res && !absl::SimpleAtoi(res->get_header_value("Retry-After"), &seconds)) return -2;
    return seconds;
  }
};

TEST_F(RateLimitTest, DefaultsAreDefendersLimits) {
  SandboxOptions options;
  EXPECT_EQ(options.rate_per_minute, 100);
  EXPECT_EQ(options.rate_per_hour, 1500);
}

TEST_F(RateLimitTest, PerMinuteLimitAnswers429WithRetryAfter) {
  ASSERT_NO_FATAL_FAILURE(StartWithLimits(3, 0));
  const std::string token = Token();
  auto client = Client();
  client->set_keep_alive(true);
  for (int i = 0; i < 3; ++i) {
    httplib::Result res = client->Get("/api/machines", Auth(token));
    ASSERT_TRUE(res);
    EXPECT_EQ(res->status, 200) << i;
  }
  for (int i = 0; i < 2; ++i) {  // 429s do not count (and do not extend the wait)
    httplib::Result res = client->Get(absl::StrCat("/api/machines/", kDefaultMachineId),
                                      Auth(token));  // same API: machines
    ExpectDefenderError(res, 429, "TooManyRequests");
    const int retry_after = RetryAfter(res);
    EXPECT_GE(retry_after, 1);
    EXPECT_LE(retry_after, 60);
    EXPECT_THAT(Parse(res->body)["error"]["message"].get<std::string>(), HasSubstr("Machines"));
  }
  // Other APIs have their own budgets.
  httplib::Result files = client->Get(absl::StrCat("/api/files/", kKnownFileSha1), Auth(token));
  ASSERT_TRUE(files);
  EXPECT_EQ(files->status, 200);
  httplib::Result list = client->Get("/api/machineactions", Auth(token));
  ASSERT_TRUE(list);
  EXPECT_EQ(list->status, 200);
  // The token endpoint is not limited here.
  for (int i = 0; i < 4; ++i) EXPECT_FALSE(Token().empty());
  // Requests without a valid token are refused before counting.
  ExpectDefenderError(Client()->Get("/api/files/x"), 401, "Unauthorized");
  EXPECT_EQ(sandbox_->CountRequests("GET", "^/api/machines"), 5);
}

TEST_F(RateLimitTest, RetryAfterCountsDown) {
  // A one-call-per-minute budget: the wait is about a minute and shrinks.
  ASSERT_NO_FATAL_FAILURE(StartWithLimits(1, 0));
  const std::string token = Token();
  httplib::Result first = Quarantine(token, kDefaultMachineId, QuarantineBody("one"));
  ASSERT_TRUE(first);
  EXPECT_EQ(first->status, 201);
  httplib::Result second = Quarantine(token, kOtherMachine, QuarantineBody("two"));
  ExpectDefenderError(second, 429, "TooManyRequests");
  const int wait1 = RetryAfter(second);
  EXPECT_GE(wait1, 50) << "a minute minus the time the calls took";
  EXPECT_LE(wait1, 60);
  EXPECT_EQ(sandbox_->ActionCount(), 1) << "a throttled call creates nothing";
  absl::SleepFor(absl::Milliseconds(1100));
  httplib::Result third = Quarantine(token, kOtherMachine, QuarantineBody("three"));
  ExpectDefenderError(third, 429, "TooManyRequests");
  EXPECT_LT(RetryAfter(third), wait1);
  EXPECT_GE(RetryAfter(third), 1);
  // Reset clears the windows.
  sandbox_->Reset();
  httplib::Result after_reset = Quarantine(Token(), kOtherMachine, QuarantineBody("four"));
  ASSERT_TRUE(after_reset);
  EXPECT_EQ(after_reset->status, 201);
}

TEST_F(RateLimitTest, PerHourLimitCountsErrorsAndApisSeparately) {
  ASSERT_NO_FATAL_FAILURE(StartWithLimits(0, 2));
  const std::string token = Token();
  const std::string path = absl::StrCat("/api/machineactions/", "00000000-0000-0000-0000-0");
  ExpectDefenderError(Get(token, path), 404, "ResourceNotFound");  // errors count too
  ExpectDefenderError(Get(token, path), 404, "ResourceNotFound");
  httplib::Result throttled = Get(token, path);
  ExpectDefenderError(throttled, 429, "TooManyRequests");
  const int wait = RetryAfter(throttled);
  EXPECT_GT(wait, 3500);
  EXPECT_LE(wait, 3600);
  // Cancel is another API.
  ExpectDefenderError(Client()->Post(absl::StrCat(path, "/cancel"), Auth(token),
                                     R"({"Comment":"c"})", "application/json"),
                      404, "ResourceNotFound");
}

TEST_F(RateLimitTest, ZeroTurnsLimitsOff) {
  ASSERT_NO_FATAL_FAILURE(StartWithLimits(0, 0));
  const std::string token = Token();
  auto client = Client();
  client->set_keep_alive(true);
  for (int i = 0; i < 120; ++i) {
    httplib::Result res = client->Get("/api/machines", Auth(token));
    ASSERT_TRUE(res);
    ASSERT_EQ(res->status, 200) << i;
  }
}

TEST_F(RateLimitTest, DefaultLimitBitesAfter100Calls) {
  ASSERT_NO_FATAL_FAILURE(StartWithLimits(100, 1500));
  const std::string token = Token();
  auto client = Client();
  client->set_keep_alive(true);
  int ok = 0, throttled = 0;
  for (int i = 0; i < 103; ++i) {
    httplib::Result res = client->Get("/api/machineactions", Auth(token));
    ASSERT_TRUE(res);
    if (res->status == 200) ++ok;
    if (res->status == 429) ++throttled;
  }
  EXPECT_EQ(ok, 100);
  EXPECT_EQ(throttled, 3);
}

TEST(SandboxStartTest, RejectsBadOptionsAndBusyPorts) {
  SandboxOptions options;
  options.threads = 0;
  EXPECT_EQ(Sandbox::Start(options).status().code(), absl::StatusCode::kInvalidArgument);
  options = SandboxOptions();
  options.rate_per_minute = -1;
  EXPECT_EQ(Sandbox::Start(options).status().code(), absl::StatusCode::kInvalidArgument);
  auto first = Sandbox::Start(SandboxOptions());
  ASSERT_TRUE(first.ok()) << first.status();
  SandboxOptions same;
  same.port = (*first)->port();
  EXPECT_EQ(Sandbox::Start(same).status().code(), absl::StatusCode::kUnavailable);
}

// ---------------------------------------------------------------------------
// Many apps and tenants, certificate and federated client assertions.

constexpr char kTenantB[] = "bbbbbbbb-0000-4000-8000-bbbbbbbbbbbb";
constexpr char kClientB[] = "b0b0b0b0-0000-4000-8000-b0b0b0b0b0b0";
constexpr char kSecretB[] = "secret-of-b";
constexpr char kCertClient[] = "c0c0c0c0-0000-4000-8000-c0c0c0c0c0c0";
constexpr char kFedClient[] = "f0f0f0f0-0000-4000-8000-f0f0f0f0f0f0";
constexpr char kFedToken1[] =
    "eyJhbGciOiJSUzI1NiIsImtpZCI6Im9uZSJ9.eyJzdWIiOiJzeXN0ZW06c2EifQ.c2ln";
constexpr char kFedToken2[] =
    "eyJhbGciOiJSUzI1NiIsImtpZCI6InR3byJ9.eyJzdWIiOiJzeXN0ZW06c2EifQ.c2ln";
constexpr char kJwtBearer[] = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

using PKey = std::shared_ptr<EVP_PKEY>;

// TestCertificate is an RSA-2048 key with a self-signed certificate.
struct TestCertificate {
  PKey key;
  std::string cert_pem;
  std::string x5t;       // base64url(SHA-1(DER))
  std::string x5t_s256;  // base64url(SHA-256(DER))
};

std::string RawDigest(const EVP_MD* md, const std::string& data) {
  unsigned char out[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  EXPECT_EQ(EVP_Digest(data.data(), data.size(), out, &len, md, nullptr), 1);
  return std::string(reinterpret_cast<char*>(out), len);
}

TestCertificate MakeTestCertificate(const std::string& cn) {
  TestCertificate t;
  t.key.reset(EVP_RSA_gen(2048), &EVP_PKEY_free);
  EXPECT_NE(t.key, nullptr);
  std::unique_ptr<X509, decltype(&X509_free)> cert(X509_new(), &X509_free);
  X509_set_version(cert.get(), 2);
  ASN1_INTEGER_set(X509_get_serialNumber(cert.get()), 1);
  X509_gmtime_adj(X509_getm_notBefore(cert.get()), -3600);
  X509_gmtime_adj(X509_getm_notAfter(cert.get()), 86400);
  X509_NAME* name = X509_get_subject_name(cert.get());
  X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC,
                             reinterpret_cast<const unsigned char*>(cn.c_str()), -1, -1, 0);
  X509_set_issuer_name(cert.get(), name);
  X509_set_pubkey(cert.get(), t.key.get());
  EXPECT_GT(X509_sign(cert.get(), t.key.get(), EVP_sha256()), 0);
  std::unique_ptr<BIO, decltype(&BIO_free)> bio(BIO_new(BIO_s_mem()), &BIO_free);
  PEM_write_bio_X509(bio.get(), cert.get());
  char* data = nullptr;
  long len = BIO_get_mem_data(bio.get(), &data);
  t.cert_pem.assign(data, static_cast<size_t>(len));
  unsigned char* der = nullptr;
  int der_len = i2d_X509(cert.get(), &der);
  std::string der_bytes(reinterpret_cast<char*>(der), static_cast<size_t>(der_len));
  OPENSSL_free(der);
  t.x5t = absl::WebSafeBase64Escape(RawDigest(EVP_sha1(), der_bytes));
  t.x5t_s256 = absl::WebSafeBase64Escape(RawDigest(EVP_sha256(), der_bytes));
  return t;
}

// The registered certificate and another key (made once: RSA keys are slow).
const TestCertificate& GoodCert() {
  static const TestCertificate* cert = new TestCertificate(MakeTestCertificate("good"));
  return *cert;
}
const TestCertificate& OtherCert() {
  static const TestCertificate* cert = new TestCertificate(MakeTestCertificate("other"));
  return *cert;
}

// SignJwt makes header.payload.signature, signed RS256 or (pss) PS256.
std::string SignJwt(const json& header, const json& payload, EVP_PKEY* key, bool pss) {
  std::string input = absl::StrCat(absl::WebSafeBase64Escape(header.dump()), ".",
                                   absl::WebSafeBase64Escape(payload.dump()));
  std::unique_ptr<EVP_MD_CTX, decltype(&EVP_MD_CTX_free)> ctx(EVP_MD_CTX_new(), &EVP_MD_CTX_free);
  EVP_PKEY_CTX* pctx = nullptr;
  EXPECT_EQ(EVP_DigestSignInit(ctx.get(), &pctx, EVP_sha256(), nullptr, key), 1);
  if (pss) {
    EXPECT_EQ(EVP_PKEY_CTX_set_rsa_padding(pctx, RSA_PKCS1_PSS_PADDING), 1);
    EXPECT_EQ(EVP_PKEY_CTX_set_rsa_pss_saltlen(pctx, RSA_PSS_SALTLEN_DIGEST), 1);
    EXPECT_EQ(EVP_PKEY_CTX_set_rsa_mgf1_md(pctx, EVP_sha256()), 1);
  }
  size_t len = 0;
  EXPECT_EQ(EVP_DigestSign(ctx.get(), nullptr, &len,
                           reinterpret_cast<const unsigned char*>(input.data()), input.size()),
            1);
  std::string sig(len, '\0');
  EXPECT_EQ(EVP_DigestSign(ctx.get(), reinterpret_cast<unsigned char*>(sig.data()), &len,
                           reinterpret_cast<const unsigned char*>(input.data()), input.size()),
            1);
  sig.resize(len);
  return absl::StrCat(input, ".", absl::WebSafeBase64Escape(sig));
}

class AppsTest : public SandboxTest {
 protected:
  void SetUp() override {
    SandboxOptions options;
    SandboxApp b;
    b.tenant_id = kTenantB;
    b.client_id = kClientB;
    b.client_secret = kSecretB;
    SandboxApp cert;
    cert.tenant_id = kTenant;
    cert.client_id = kCertClient;
    cert.certificate_pem = GoodCert().cert_pem;
    SandboxApp fed;
    fed.tenant_id = kTenantB;
    fed.client_id = kFedClient;
    fed.federated_tokens = {kFedToken1};
    options.extra_apps = {b, cert, fed};
    StartSandbox(options);
  }

  std::string TokenUrl(const std::string& tenant = kTenant) const {
    return absl::StrCat("https://127.0.0.1:", sandbox_->port(), "/", tenant, "/oauth2/v2.0/token");
  }

  // Claims of a good certificate assertion for kCertClient.
  json GoodClaims() const {
    const int64_t now = absl::ToUnixSeconds(absl::Now());
    return {{"aud", TokenUrl()},  {"iss", kCertClient},
            {"sub", kCertClient}, {"jti", absl::StrCat("jti-", ++jti_counter_)},
            {"nbf", now},         {"exp", now + 600}};
  }
  static json Rs256Header(const std::string& x5t = GoodCert().x5t) {
    return {{"alg", "RS256"}, {"typ", "JWT"}, {"x5t", x5t}};
  }
  static json Ps256Header(const std::string& x5t_s256 = GoodCert().x5t_s256) {
    return {{"alg", "PS256"}, {"typ", "JWT"}, {"x5t#S256", x5t_s256}};
  }

  httplib::Result AssertionToken(const std::string& client, const std::string& assertion,
                                 const std::string& tenant = kTenant) const {
    return RequestToken({{"grant_type", "client_credentials"},
                         {"client_id", client},
                         {"client_assertion_type", kJwtBearer},
                         {"client_assertion", assertion},
                         {"scope", kScope}},
                        tenant);
  }

  static void ExpectEntraError(const httplib::Result& res, int status, const std::string& error,
                               int code) {
    ASSERT_TRUE(res) << httplib::to_string(res.error());
    EXPECT_EQ(res->status, status) << res->body;
    json body = Parse(res->body);
    EXPECT_EQ(body["error"], error) << res->body;
    EXPECT_EQ(body["error_codes"], json::array({code})) << res->body;
    EXPECT_THAT(body["error_description"].get<std::string>(),
                StartsWith(absl::StrCat("AADSTS", code, ":")));
  }

  // TokenFrom returns the access token of a 200 answer ("" and a failure otherwise).
  static std::string TokenFrom(const httplib::Result& res) {
    if (!res || res->status != 200) {
      ADD_FAILURE() << "no token: " << (res ? res->body : httplib::to_string(res.error()));
      return "";
    }
    return Parse(res->body)["access_token"].get<std::string>();
  }

  mutable int jti_counter_ = 0;
};

TEST_F(AppsTest, EachTenantsTokensAreBoundToTheirTenantAndClient) {
  const std::string token_a = Token();
  const std::string token_b = TokenFrom(RequestToken({{"grant_type", "client_credentials"},
                                                      {"client_id", kClientB},
                                                      {"client_secret", kSecretB},
                                                      {"scope", kScope}},
                                                     kTenantB));
  // Each app exists only in its own tenant, with its own secret.
  ExpectEntraError(RequestToken({{"grant_type", "client_credentials"},
                                 {"client_id", kClientB},
                                 {"client_secret", kSecretB},
                                 {"scope", kScope}},
                                kTenant),
                   400, "unauthorized_client", 700016);
  ExpectEntraError(RequestToken(GoodTokenParams(), kTenantB), 400, "unauthorized_client", 700016);
  ExpectEntraError(RequestToken(GoodTokenParams(), "99999999-9999-9999-9999-999999999999"), 400,
                   "invalid_request", 90002);
  // A secret-less app accepts no secret.
  ExpectEntraError(RequestToken({{"grant_type", "client_credentials"},
                                 {"client_id", kCertClient},
                                 {"client_secret", ""},
                                 {"scope", kScope}}),
                   401, "invalid_client", 7000215);

  sandbox_->ClearRequests();
  ASSERT_TRUE(Get(token_a, "/api/machines"));
  ASSERT_TRUE(Get(token_b, "/api/machines"));
  ASSERT_TRUE(Get("not-a-token", "/api/machines"));
  ASSERT_TRUE(Client()->Get("/api/machines"));
  sandbox_->ExpireAllTokens();
  ExpectDefenderError(Get(token_b, "/api/machines"), 401, "Unauthorized");
  std::vector<RecordedRequest> requests = sandbox_->Requests();
  ASSERT_EQ(requests.size(), 5u);
  EXPECT_EQ(requests[0].token_tenant, kTenant);
  EXPECT_EQ(requests[0].token_client_id, kClient);
  EXPECT_EQ(requests[1].token_tenant, kTenantB);
  EXPECT_EQ(requests[1].token_client_id, kClientB);
  EXPECT_EQ(requests[2].token_tenant, "");
  EXPECT_EQ(requests[3].token_client_id, "");
  EXPECT_EQ(requests[4].token_tenant, kTenantB) << "an expired token still names its owner";

  httplib::Result json_requests = Client()->Get("/sandbox/requests");
  ASSERT_TRUE(json_requests);
  json list = Parse(json_requests->body);
  ASSERT_EQ(list.size(), 5u);
  EXPECT_EQ(list[1]["token_tenant"], kTenantB);
  EXPECT_EQ(list[1]["token_client_id"], kClientB);
  EXPECT_EQ(list[2]["token_tenant"], "");
}

TEST_F(AppsTest, OneClientIdInTwoTenantsHasSeparateCredentials) {
  // A multi-tenant app: the same client id registered in both tenants.
  SandboxApp in_b;
  in_b.tenant_id = kTenantB;
  in_b.client_id = kClient;
  in_b.client_secret = "secret-in-b";
  sandbox_->AddApp(in_b);
  httplib::Params in_b_params = GoodTokenParams();
  in_b_params.erase("client_secret");
  in_b_params.emplace("client_secret", "secret-in-b");
  ExpectEntraError(RequestToken(GoodTokenParams(), kTenantB), 401, "invalid_client", 7000215);
  const std::string token = TokenFrom(RequestToken(in_b_params, kTenantB));
  sandbox_->ClearRequests();
  ASSERT_TRUE(Get(token, "/api/machines"));
  EXPECT_EQ(sandbox_->Requests()[0].token_tenant, kTenantB);
  EXPECT_EQ(sandbox_->Requests()[0].token_client_id, kClient);

  // Apps added at run time (also over HTTP) bring their tenants along.
  const std::string tenant_c = "cccccccc-0000-4000-8000-cccccccccccc";
  ExpectEntraError(RequestToken(GoodTokenParams(), tenant_c), 400, "invalid_request", 90002);
  auto client = Client();
  httplib::Result added = client->Post(
      "/sandbox/apps",
      json{{"tenant_id", tenant_c}, {"client_id", kClient}, {"client_secret", kSecret}}.dump(),
      "application/json");
  ASSERT_TRUE(added);
  EXPECT_EQ(added->status, 200) << added->body;
  EXPECT_FALSE(TokenFrom(RequestToken(GoodTokenParams(), tenant_c)).empty());
  for (const std::string bad : {R"({"tenant_id":"t"})", R"({"tenant_id":"t","client_id":"c",
       "certificate_pem":"not a certificate"})",
                                R"({"tenant_id":1})", "[]"}) {
    httplib::Result rejected = client->Post("/sandbox/apps", bad, "application/json");
    ASSERT_TRUE(rejected);
    EXPECT_EQ(rejected->status, 400) << bad;
  }

  // Bad apps in the options fail Start.
  SandboxOptions options;
  options.extra_apps.push_back(SandboxApp{kTenantB, kClientB, "", "not a certificate", {}});
  EXPECT_EQ(Sandbox::Start(options).status().code(), absl::StatusCode::kInvalidArgument);
  options.extra_apps = {SandboxApp{"", kClientB, "s", "", {}}};
  EXPECT_EQ(Sandbox::Start(options).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(AppsTest, CertificateAssertionsRs256WithX5tAndPs256WithX5tS256) {
  const json rs256_claims = GoodClaims();
  const json ps256_claims = GoodClaims();
  const std::string rs256 = SignJwt(Rs256Header(), rs256_claims, GoodCert().key.get(), false);
  const std::string ps256 = SignJwt(Ps256Header(), ps256_claims, GoodCert().key.get(), true);
  const std::string token_rs = TokenFrom(AssertionToken(kCertClient, rs256));
  const std::string token_ps = TokenFrom(AssertionToken(kCertClient, ps256));
  // Both thumbprints at once are fine too.
  json both = Ps256Header();
  both["x5t"] = GoodCert().x5t;
  EXPECT_FALSE(TokenFrom(AssertionToken(kCertClient,
                                        SignJwt(both, GoodClaims(), GoodCert().key.get(), true)))
                   .empty());

  sandbox_->ClearRequests();
  ASSERT_TRUE(Get(token_rs, "/api/machines"));
  ASSERT_TRUE(Get(token_ps, "/api/machines"));
  for (const RecordedRequest& r : sandbox_->Requests()) {
    EXPECT_EQ(r.token_tenant, kTenant);
    EXPECT_EQ(r.token_client_id, kCertClient);
  }
  std::vector<AssertionCheck> checks = sandbox_->AssertionChecks();
  ASSERT_EQ(checks.size(), 3u);
  EXPECT_EQ(checks[0].alg, "RS256");
  EXPECT_EQ(checks[0].x5t_kind, "x5t");
  EXPECT_EQ(checks[1].alg, "PS256");
  EXPECT_EQ(checks[1].x5t_kind, "x5t#S256");
  EXPECT_EQ(checks[1].jti, ps256_claims["jti"]);
  for (const AssertionCheck& c : checks) {
    EXPECT_EQ(c.aud, TokenUrl());
    EXPECT_EQ(c.iss, kCertClient);
    EXPECT_EQ(c.sub, kCertClient);
    EXPECT_TRUE(c.signature_ok);
    EXPECT_TRUE(c.accepted);
    EXPECT_EQ(c.aadsts, 0);
  }
  httplib::Result over_http = Client()->Get("/sandbox/assertion-checks");
  ASSERT_TRUE(over_http);
  EXPECT_EQ(Parse(over_http->body)[0]["x5t_kind"], "x5t");
  sandbox_->Reset();
  EXPECT_TRUE(sandbox_->AssertionChecks().empty());
}

TEST_F(AppsTest, CertificateAssertionsAreRejectedLikeEntra) {
  EVP_PKEY* good = GoodCert().key.get();
  EVP_PKEY* other = OtherCert().key.get();
  const int64_t now = absl::ToUnixSeconds(absl::Now());
  struct Case {
    std::string name;
    std::string assertion;
    int code;
    bool signature_ok;
  };
  auto claims_with = [&](const char* key, const json& value) {
    json c = GoodClaims();
    if (value.is_null()) {
      c.erase(key);
    } else {
      c[key] = value;
    }
    return c;
  };
  const std::vector<Case> cases = {
      {"wrong key", SignJwt(Rs256Header(), GoodClaims(), other, false), 700027, false},
      {"wrong key PS256", SignJwt(Ps256Header(), GoodClaims(), other, true), 700027, false},
      {"RS256-signed but says PS256", SignJwt(Ps256Header(), GoodClaims(), good, false), 700027,
       false},
      {"x5t of another certificate",
       SignJwt(Rs256Header(OtherCert().x5t), GoodClaims(), good, false), 700027, false},
      {"x5t#S256 of another certificate",
       SignJwt(Ps256Header(OtherCert().x5t_s256), GoodClaims(), good, true), 700027, false},
      {"PS256 with only x5t",
       SignJwt({{"alg", "PS256"}, {"typ", "JWT"}, {"x5t", GoodCert().x5t}}, GoodClaims(), good,
               true),
       700027, false},
      {"alg none",
       SignJwt({{"alg", "none"}, {"typ", "JWT"}, {"x5t", GoodCert().x5t}}, GoodClaims(), good,
               false),
       700027, false},
      {"no typ", SignJwt({{"alg", "RS256"}, {"x5t", GoodCert().x5t}}, GoodClaims(), good, false),
       700027, false},
      {"wrong aud", SignJwt(Rs256Header(), claims_with("aud", TokenUrl(kTenantB)), good, false),
       700027, true},
      {"aud without port",
       SignJwt(
           Rs256Header(),
           claims_with("aud", absl::StrCat("https://127.0.0.1/", kTenant, "/oauth2/v2.0/token")),
           good, false),
       700027, true},
      {"wrong iss", SignJwt(Rs256Header(), claims_with("iss", kClient), good, false), 700027, true},
      {"wrong sub", SignJwt(Rs256Header(), claims_with("sub", kClient), good, false), 700027, true},
      {"no jti", SignJwt(Rs256Header(), claims_with("jti", ""), good, false), 700027, true},
      {"expired",
       SignJwt(
           Rs256Header(),
           [&] {
             json c = GoodClaims();
             c["nbf"] = now - 700;
             c["exp"] = now - 100;
             return c;
           }(),
           good, false),
       700024, true},
      {"not yet valid",
       SignJwt(
           Rs256Header(),
           [&] {
             json c = GoodClaims();
             c["nbf"] = now + 3600;
             c["exp"] = now + 3600 + 600;
             return c;
           }(),
           good, false),
       700024, true},
      {"lives too long", SignJwt(Rs256Header(), claims_with("exp", now + 3600), good, false),
       700024, true},
      {"no exp", SignJwt(Rs256Header(), claims_with("exp", nullptr), good, false), 700027, true},
      {"not a JWT", "abc.def", 700027, false},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    const size_t before = sandbox_->AssertionChecks().size();
    ExpectEntraError(AssertionToken(kCertClient, c.assertion), 401, "invalid_client", c.code);
    std::vector<AssertionCheck> checks = sandbox_->AssertionChecks();
    ASSERT_EQ(checks.size(), before + 1);
    EXPECT_EQ(checks.back().signature_ok, c.signature_ok);
    EXPECT_FALSE(checks.back().accepted);
    EXPECT_EQ(checks.back().aadsts, c.code);
  }

  // A replayed jti: accepted once, refused afterwards (also by another client).
  const std::string once = SignJwt(Ps256Header(), GoodClaims(), good, true);
  EXPECT_FALSE(TokenFrom(AssertionToken(kCertClient, once)).empty());
  ExpectEntraError(AssertionToken(kCertClient, once), 401, "invalid_client", 700027);
  EXPECT_TRUE(sandbox_->AssertionChecks().back().signature_ok);
  EXPECT_FALSE(sandbox_->AssertionChecks().back().accepted);

  // An app without a certificate accepts no certificate assertion.
  json claims = GoodClaims();
  claims["iss"] = claims["sub"] = kClient;
  ExpectEntraError(AssertionToken(kClient, SignJwt(Rs256Header(), claims, good, false)), 401,
                   "invalid_client", 700027);
  // Registering the certificate on the default app (same tenant and client id)
  // makes it work.
  SandboxApp with_cert{kTenant, kClient, kSecret, GoodCert().cert_pem, {}};
  sandbox_->AddApp(with_cert);
  claims["jti"] = "fresh";
  EXPECT_FALSE(
      TokenFrom(AssertionToken(kClient, SignJwt(Rs256Header(), claims, good, false))).empty());
  EXPECT_FALSE(Token().empty()) << "the secret still works";
}

TEST_F(AppsTest, FederatedTokensAreAcceptedAndRotate) {
  const std::string token = TokenFrom(AssertionToken(kFedClient, kFedToken1, kTenantB));
  sandbox_->ClearRequests();
  ASSERT_TRUE(Get(token, "/api/machines"));
  EXPECT_EQ(sandbox_->Requests()[0].token_tenant, kTenantB);
  EXPECT_EQ(sandbox_->Requests()[0].token_client_id, kFedClient);
  EXPECT_FALSE(TokenFrom(AssertionToken(kFedClient, kFedToken1, kTenantB)).empty())
      << "a federated token may be used until it rotates";

  // The token file rotates.
  sandbox_->SetFederatedTokens(kFedClient, {kFedToken2});
  ExpectEntraError(AssertionToken(kFedClient, kFedToken1, kTenantB), 400, "invalid_client", 70021);
  EXPECT_FALSE(TokenFrom(AssertionToken(kFedClient, kFedToken2, kTenantB)).empty());
  ExpectEntraError(AssertionToken(kFedClient, "some-opaque-string", kTenantB), 400,
                   "invalid_client", 70021);
  // Over HTTP.
  httplib::Result put = Client()->Put(
      "/sandbox/federated-tokens", json{{"client_id", kFedClient}, {"tokens", {kFedToken1}}}.dump(),
      "application/json");
  ASSERT_TRUE(put);
  EXPECT_EQ(put->status, 200) << put->body;
  EXPECT_FALSE(TokenFrom(AssertionToken(kFedClient, kFedToken1, kTenantB)).empty());
  ExpectEntraError(AssertionToken(kFedClient, kFedToken2, kTenantB), 400, "invalid_client", 70021);
  httplib::Result bad =
      Client()->Put("/sandbox/federated-tokens", R"({"client_id":"x"})", "application/json");
  ASSERT_TRUE(bad);
  EXPECT_EQ(bad->status, 400);
  // A federated token works only for its own app, and is no certificate
  // assertion for an app without federation.
  ExpectEntraError(AssertionToken(kCertClient, kFedToken1), 401, "invalid_client", 700027);
  EXPECT_TRUE(sandbox_->AssertionChecks().size() == 1u &&
              !sandbox_->AssertionChecks()[0].signature_ok);
}

// ---------------------------------------------------------------------------
// Managed identity.

constexpr char kMiResource[] = "https://api.securitycenter.microsoft.com";
constexpr char kUserAssigned[] = "a1a1a1a1-0000-4000-8000-a1a1a1a1a1a1";
constexpr char kMiTenant[] = "e0e0e0e0-0000-4000-8000-e0e0e0e0e0e0";

class ManagedIdentityTest : public SandboxTest {
 protected:
  void SetUp() override {
    SandboxOptions options;
    options.managed_identity = true;
    options.managed_identity_tenant = kMiTenant;
    options.user_assigned_client_ids = {kUserAssigned};
    StartSandbox(options);
  }

  std::unique_ptr<httplib::Client> MiClient() const {
    const std::string prefix = "http://127.0.0.1:";
    EXPECT_THAT(sandbox_->imds_base_url(), StartsWith(prefix));
    int port = 0;
    EXPECT_TRUE(absl::SimpleAtoi(sandbox_->imds_base_url().substr(prefix.size()), &port));
    auto client = std::make_unique<httplib::Client>("127.0.0.1", port);
    client->set_connection_timeout(5, 0);
    client->set_read_timeout(10, 0);
    return client;
  }

  httplib::Result Imds(const httplib::Params& params, bool metadata = true) const {
    httplib::Headers headers;
    if (metadata) headers.emplace("Metadata", "true");
    return MiClient()->Get("/metadata/identity/oauth2/token", params, headers);
  }

  static httplib::Params ImdsParams() {
    return {{"api-version", "2018-02-01"}, {"resource", kMiResource}};
  }

  httplib::Result AppService(const httplib::Params& params, const std::string& header) const {
    httplib::Headers headers;
    if (!header.empty()) headers.emplace("X-IDENTITY-HEADER", header);
    return MiClient()->Get("/msi/token", params, headers);
  }

  static void ExpectAzureError(const httplib::Result& res, int status, const std::string& error,
                               const std::string& description = "") {
    ASSERT_TRUE(res) << httplib::to_string(res.error());
    EXPECT_EQ(res->status, status) << res->body;
    json body = Parse(res->body);
    EXPECT_EQ(body["error"], error) << res->body;
    EXPECT_TRUE(body["error_description"].is_string()) << res->body;
    if (!description.empty()) {
      EXPECT_EQ(body["error_description"], description);
    }
  }
};

TEST_F(SandboxTest, ManagedIdentityIsOffByDefault) {
  EXPECT_EQ(sandbox_->imds_base_url(), "");
  EXPECT_EQ(sandbox_->identity_endpoint(), "");
  EXPECT_EQ(sandbox_->identity_header(), "");
  EXPECT_EQ(sandbox_->ManagedIdentityRequests(), 0);
  EXPECT_FALSE(SandboxOptions().managed_identity);
}

TEST_F(ManagedIdentityTest, ImdsNeedsTheMetadataHeaderAndAnswersStrings) {
  ExpectAzureError(Imds(ImdsParams(), /*metadata=*/false), 400, "invalid_request",
                   "Required metadata header not specified");
  const int64_t before = absl::ToUnixSeconds(absl::Now());
  httplib::Result res = Imds(ImdsParams());
  ASSERT_TRUE(res);
  ASSERT_EQ(res->status, 200) << res->body;
  json body = Parse(res->body);
  for (const char* key : {"access_token", "client_id", "expires_in", "expires_on", "ext_expires_in",
                          "not_before", "resource", "token_type"}) {
    EXPECT_TRUE(body[key].is_string()) << key << ": " << res->body;
  }
  EXPECT_EQ(body["client_id"], kSystemAssignedClientId);
  EXPECT_EQ(body["expires_in"], "3599");
  EXPECT_EQ(body["resource"], kMiResource);
  EXPECT_EQ(body["token_type"], "Bearer");
  int64_t expires_on = 0;
  ASSERT_TRUE(absl::SimpleAtoi(body["expires_on"].get<std::string>(), &expires_on));
  EXPECT_GE(expires_on, before + 3599);
  EXPECT_LE(expires_on, before + 3600 + 60);

  // The token works for the API, bound to the managed identity's tenant.
  const std::string token = body["access_token"].get<std::string>();
  httplib::Result api = Get(token, "/api/machines");
  ASSERT_TRUE(api);
  EXPECT_EQ(api->status, 200);
  std::vector<RecordedRequest> requests = sandbox_->Requests();
  ASSERT_EQ(requests.size(), 3u);
  EXPECT_EQ(requests[0].path, "/metadata/identity/oauth2/token");
  EXPECT_EQ(requests[0].Header("Metadata"), "");
  EXPECT_EQ(requests[1].Header("Metadata"), "true");
  EXPECT_EQ(requests[2].token_tenant, kMiTenant);
  EXPECT_EQ(requests[2].token_client_id, kSystemAssignedClientId);
  EXPECT_EQ(sandbox_->ManagedIdentityRequests(), 2);
  EXPECT_EQ(sandbox_->TokenRequests(), 0);
}

TEST_F(ManagedIdentityTest, UserAssignedIdentitiesAndBadRequests) {
  httplib::Params params = ImdsParams();
  params.emplace("client_id", kUserAssigned);
  httplib::Result res = Imds(params);
  ASSERT_TRUE(res);
  ASSERT_EQ(res->status, 200) << res->body;
  EXPECT_EQ(Parse(res->body)["client_id"], kUserAssigned);
  sandbox_->ClearRequests();
  ASSERT_TRUE(Get(Parse(res->body)["access_token"].get<std::string>(), "/api/machines"));
  EXPECT_EQ(sandbox_->Requests()[0].token_client_id, kUserAssigned);
  EXPECT_EQ(sandbox_->Requests()[0].token_tenant, kMiTenant);

  params = ImdsParams();
  params.emplace("client_id", "99999999-0000-4000-8000-999999999999");
  ExpectAzureError(Imds(params), 400, "invalid_request", "Identity not found");
  params = ImdsParams();
  params.emplace("object_id", kUserAssigned);
  ExpectAzureError(Imds(params), 400, "invalid_request", "Identity not found");
  ExpectAzureError(Imds({{"api-version", "2018-02-01"}, {"resource", kScope}}), 400,
                   "invalid_resource");
  ExpectAzureError(
      Imds({{"api-version", "2018-02-01"}, {"resource", "https://graph.microsoft.com"}}), 400,
      "invalid_resource");
  ExpectAzureError(Imds({{"api-version", "2018-02-01"}}), 400, "invalid_request");
  ExpectAzureError(Imds({{"resource", kMiResource}}), 400, "invalid_request");
  ExpectAzureError(MiClient()->Get("/elsewhere"), 404, "not_found");
  EXPECT_EQ(sandbox_->ManagedIdentityRequests(), 8);
}

TEST_F(ManagedIdentityTest, AppServiceNeedsTheIdentityHeader) {
  EXPECT_EQ(sandbox_->identity_endpoint(), absl::StrCat(sandbox_->imds_base_url(), "/msi/token"));
  const std::string header = sandbox_->identity_header();
  EXPECT_GE(header.size(), 16u);
  const httplib::Params params = {{"resource", kMiResource}, {"api-version", "2019-08-01"}};
  ExpectAzureError(AppService(params, ""), 401, "unauthorized");
  ExpectAzureError(AppService(params, "wrong"), 401, "unauthorized");
  ExpectAzureError(AppService({{"resource", kMiResource}, {"api-version", "2017-09-01"}}, header),
                   400, "invalid_request");
  httplib::Result res = AppService(params, header);
  ASSERT_TRUE(res);
  ASSERT_EQ(res->status, 200) << res->body;
  json body = Parse(res->body);
  EXPECT_TRUE(body["access_token"].is_string());
  EXPECT_TRUE(body["expires_on"].is_string());
  EXPECT_EQ(body["resource"], kMiResource);
  EXPECT_EQ(body["token_type"], "Bearer");
  EXPECT_EQ(body["client_id"], kSystemAssignedClientId);
  EXPECT_FALSE(body.contains("expires_in"));
  httplib::Params user = params;
  user.emplace("client_id", kUserAssigned);
  httplib::Result user_res = AppService(user, header);
  ASSERT_TRUE(user_res);
  EXPECT_EQ(Parse(user_res->body)["client_id"], kUserAssigned);
  httplib::Result api = Get(body["access_token"].get<std::string>(), "/api/machines");
  ASSERT_TRUE(api);
  EXPECT_EQ(api->status, 200);
  // The managed identity's tokens expire like the others.
  sandbox_->ExpireAllTokens();
  ExpectDefenderError(Get(body["access_token"].get<std::string>(), "/api/machines"), 401,
                      "Unauthorized");
}

TEST_F(ManagedIdentityTest, FaultsApplyToTheManagedIdentityEndpoints) {
  FaultRule throttle;
  throttle.path_regex = "^/metadata/identity/";
  throttle.status = 429;
  throttle.retry_after = "3";
  sandbox_->AddFault(throttle);
  httplib::Result res = Imds(ImdsParams());
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 429);
  EXPECT_EQ(res->get_header_value("Retry-After"), "3");
  EXPECT_TRUE(Parse(res->body)["error"].is_string()) << res->body;
  res = Imds(ImdsParams());
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 200) << "the fault was used up";

  FaultRule drop;
  drop.path_regex = "^/msi/token$";
  drop.kind = FaultRule::Kind::kDropConnection;
  drop.times = 2;
  sandbox_->AddFault(drop);
  res = AppService({{"resource", kMiResource}, {"api-version", "2019-08-01"}},
                   sandbox_->identity_header());
  EXPECT_FALSE(res) << "got an answer: " << res->status;

  FaultRule malformed;
  malformed.path_regex = "^/metadata/";
  malformed.kind = FaultRule::Kind::kMalformedBody;
  sandbox_->AddFault(malformed);
  res = Imds(ImdsParams());
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 200);
  EXPECT_TRUE(Parse(res->body).is_discarded());

  EXPECT_EQ(sandbox_->CountRequests("GET", "^/metadata/identity/oauth2/token$"), 3);
  EXPECT_GE(sandbox_->CountRequests("GET", "^/msi/token$"), 1);
  EXPECT_EQ(sandbox_->ManagedIdentityRequests(), sandbox_->CountRequests("", "^/(metadata|msi)/"));
  sandbox_->Reset();
  EXPECT_EQ(sandbox_->ManagedIdentityRequests(), 0);
}

}  // namespace
}  // namespace defender::sandbox
