#include "server/validation.h"

#include <cstdio>
#include <string>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "adapters/common/error.h"
#include "gtest/gtest.h"

namespace defender {
namespace {

v1::QuarantineFileRequest Valid() {
  v1::QuarantineFileRequest request;
  request.set_machine_id("1e5bc9d7e413ddd7902c2932e418702b84d0cc07");
  request.set_sha1("87662BC3D60E4200CEAF7AAE249D1C343F4B83C9");
  request.set_comment("c");
  return request;
}

TEST(ValidationTest, AcceptsAValidRequestInEitherCase) {
  EXPECT_TRUE(ValidateQuarantineFileRequest(Valid()).ok());
}

TEST(ValidationTest, IsHexChecksLengthAndAlphabet) {
  EXPECT_TRUE(IsHex("0123456789abcdefABCDEF", 22));
  EXPECT_FALSE(IsHex("0123", 5));
  EXPECT_FALSE(IsHex("012g", 4));
  EXPECT_FALSE(IsHex("", 40));
}

TEST(ValidationTest, NamesTheFieldAndReason) {
  v1::QuarantineFileRequest request = Valid();
  request.set_sha1("xyz");
  absl::Status status = ValidateQuarantineFileRequest(request);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  auto info = GetErrorInfo(status);
  ASSERT_TRUE(info.has_value());
  EXPECT_EQ(info->reason(), "INVALID_SHA1");
  EXPECT_EQ(info->metadata().at("field"), "sha1");
}

TEST(ValidationTest, CommentBoundCountsCharactersNotBytes) {
  v1::QuarantineFileRequest request = Valid();
  std::string comment;
  for (size_t i = 0; i < kMaxCommentChars; ++i) comment += "✓";  // 3 bytes each
  request.set_comment(comment);
  EXPECT_TRUE(ValidateQuarantineFileRequest(request).ok());
  request.set_comment(comment + "x");
  EXPECT_EQ(ErrorReason(ValidateQuarantineFileRequest(request)), "COMMENT_TOO_LONG");
  request.set_comment("");
  EXPECT_EQ(ErrorReason(ValidateQuarantineFileRequest(request)), "COMMENT_REQUIRED");
}

TEST(ValidationTest, ActionIdsAreGuidLike) {
  v1::GetMachineActionRequest request;
  request.set_id("141408d1-384c-4c19-8b57-ba39e378011a");
  EXPECT_TRUE(ValidateGetMachineActionRequest(request).ok());
  for (const char* bad : {"", "a/b", "a b", "x?y=1", "%2e%2e"}) {
    request.set_id(bad);
    EXPECT_EQ(ErrorReason(ValidateGetMachineActionRequest(request)), "INVALID_ACTION_ID") << bad;
  }
  request.set_id(std::string(kMaxActionIdChars + 1, 'a'));
  EXPECT_FALSE(ValidateGetMachineActionRequest(request).ok());
}

// Reason and metadata of a validation failure, for compact checks.
std::string FieldOf(const absl::Status& status) {
  auto info = GetErrorInfo(status);
  if (!info.has_value() || info->metadata().count("field") == 0) return "";
  return info->metadata().at("field");
}
std::string IndexOf(const absl::Status& status) {
  auto info = GetErrorInfo(status);
  if (!info.has_value() || info->metadata().count("index") == 0) return "";
  return info->metadata().at("index");
}

constexpr char kSha256[] = "275a021bbfb6489e54d471899f7db9d1663fc695ec2fe2a2c4538aabf651fd0f";
constexpr char kMachineId[] = "1e5bc9d7e413ddd7902c2932e418702b84d0cc07";

TEST(ValidationTest, QuarantineTakesExactlyOneOfSha1AndSha256) {
  v1::QuarantineFileRequest request = Valid();
  request.clear_sha1();
  request.set_sha256(kSha256);
  EXPECT_TRUE(ValidateQuarantineFileRequest(request).ok());
  request.set_sha256(absl::AsciiStrToUpper(kSha256));
  EXPECT_TRUE(ValidateQuarantineFileRequest(request).ok());

  // Neither: the file is required (named as sha1, the historical field).
  request.clear_sha256();
  absl::Status status = ValidateQuarantineFileRequest(request);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ErrorReason(status), "INVALID_SHA1");
  EXPECT_EQ(FieldOf(status), "sha1");

  // Both, even equal-looking ones: conflicting.
  request.set_sha1(Valid().sha1());
  request.set_sha256(kSha256);
  status = ValidateQuarantineFileRequest(request);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ErrorReason(status), "CONFLICTING_FIELDS");
  EXPECT_EQ(FieldOf(status), "sha256");

  // A malformed sha256.
  request.clear_sha1();
  for (const std::string& bad : {std::string(63, 'a'), std::string(65, 'a'),
                                 std::string(63, 'a') + "g", std::string(Valid().sha1())}) {
    request.set_sha256(bad);
    status = ValidateQuarantineFileRequest(request);
    EXPECT_EQ(ErrorReason(status), "INVALID_SHA256") << bad;
    EXPECT_EQ(FieldOf(status), "sha256") << bad;
  }
}

TEST(ValidationTest, QuarantineTakesExactlyOneOfMachineIdAndComputerDnsName) {
  v1::QuarantineFileRequest request = Valid();
  request.clear_machine_id();
  for (const char* name : {"desktop-1.contoso.com", "DESKTOP-1", "host_1.corp.example", "h"}) {
    request.set_computer_dns_name(name);
    EXPECT_TRUE(ValidateQuarantineFileRequest(request).ok()) << name;
  }
  request.set_computer_dns_name(std::string(kMaxDnsNameChars, 'a'));
  EXPECT_TRUE(ValidateQuarantineFileRequest(request).ok());

  // Neither: the device is required.
  request.clear_computer_dns_name();
  absl::Status status = ValidateQuarantineFileRequest(request);
  EXPECT_EQ(ErrorReason(status), "INVALID_MACHINE_ID");
  EXPECT_EQ(FieldOf(status), "machine_id");

  // Both: conflicting.
  request.set_machine_id(kMachineId);
  request.set_computer_dns_name("desktop-1.contoso.com");
  status = ValidateQuarantineFileRequest(request);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ErrorReason(status), "CONFLICTING_FIELDS");
  EXPECT_EQ(FieldOf(status), "computer_dns_name");

  // Malformed names.
  request.clear_machine_id();
  for (const std::string& bad :
       {std::string("desktop 1"), std::string(".contoso.com"), std::string("-host"),
        std::string("host/1"), std::string("host\n"), std::string("höst"),
        std::string("host'or'1"), std::string(kMaxDnsNameChars + 1, 'a')}) {
    request.set_computer_dns_name(bad);
    status = ValidateQuarantineFileRequest(request);
    EXPECT_EQ(ErrorReason(status), "INVALID_COMPUTER_DNS_NAME") << bad;
    EXPECT_EQ(FieldOf(status), "computer_dns_name") << bad;
  }
}

TEST(ValidationTest, RequestIdIsBoundedAndHasNoControlCharacters) {
  v1::QuarantineFileRequest request = Valid();
  for (const std::string& good :
       {std::string(""), std::string("ticket-4711/step 2"), std::string(kMaxRequestIdChars, 'r'),
        std::string("ünïcödé ✓")}) {
    request.set_request_id(good);
    EXPECT_TRUE(ValidateQuarantineFileRequest(request).ok()) << good;
  }
  std::string max_wide;
  for (size_t i = 0; i < kMaxRequestIdChars; ++i) max_wide += "✓";  // counted in characters
  request.set_request_id(max_wide);
  EXPECT_TRUE(ValidateQuarantineFileRequest(request).ok());

  for (const std::string& bad :
       {std::string("a\nb"), std::string("tab\there"), std::string("bell\a"),
        std::string("nul\0x", 5), std::string("del\x7f"), std::string("esc\x1b[31m"),
        std::string("nel\xc2\x85"), std::string("csi\xc2\x9b"),
        std::string(kMaxRequestIdChars + 1, 'r'), max_wide + "✓"}) {
    request.set_request_id(bad);
    absl::Status status = ValidateQuarantineFileRequest(request);
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << absl::CHexEscape(bad);
    EXPECT_EQ(ErrorReason(status), "INVALID_REQUEST_ID") << absl::CHexEscape(bad);
    EXPECT_EQ(FieldOf(status), "request_id") << absl::CHexEscape(bad);
  }
}

TEST(ValidationTest, WatchMachineActionChecksTheId) {
  v1::WatchMachineActionRequest request;
  request.set_id("141408d1-384c-4c19-8b57-ba39e378011a");
  EXPECT_TRUE(ValidateWatchMachineActionRequest(request).ok());
  request.set_tenant("anything: the tenant is checked elsewhere");
  EXPECT_TRUE(ValidateWatchMachineActionRequest(request).ok());
  for (const std::string& bad : {std::string(""), std::string("a/b"), std::string("../x"),
                                 std::string("a b"), std::string(kMaxActionIdChars + 1, 'a')}) {
    request.set_id(bad);
    absl::Status status = ValidateWatchMachineActionRequest(request);
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << bad;
    EXPECT_EQ(ErrorReason(status), "INVALID_ACTION_ID") << bad;
    EXPECT_EQ(FieldOf(status), "id") << bad;
  }
}

TEST(ValidationTest, CancelMachineActionChecksTheIdAndRequiresAComment) {
  v1::CancelMachineActionRequest request;
  request.set_id("141408d1-384c-4c19-8b57-ba39e378011a");
  request.set_comment("false positive, ticket 4711");
  EXPECT_TRUE(ValidateCancelMachineActionRequest(request).ok());

  request.clear_comment();
  absl::Status status = ValidateCancelMachineActionRequest(request);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ErrorReason(status), "COMMENT_REQUIRED");
  EXPECT_EQ(FieldOf(status), "comment");

  request.set_comment(std::string(kMaxCommentChars + 1, 'c'));
  EXPECT_EQ(ErrorReason(ValidateCancelMachineActionRequest(request)), "COMMENT_TOO_LONG");

  request.set_comment("c");
  request.set_id("not a guid");
  EXPECT_EQ(ErrorReason(ValidateCancelMachineActionRequest(request)), "INVALID_ACTION_ID");
}

v1::BatchQuarantineFileRequest ValidBatch() {
  v1::BatchQuarantineFileRequest request;
  request.add_machine_ids(kMachineId);
  request.add_machine_ids("2e5bc9d7e413ddd7902c2932e418702b84d0cc07");
  request.add_computer_dns_names("desktop-1.contoso.com");
  request.set_sha1("87662BC3D60E4200CEAF7AAE249D1C343F4B83C9");
  request.set_comment("c");
  return request;
}

// HexId is the i-th distinct 40-hex machine id.
std::string HexId(int i) {
  char id[41];
  std::snprintf(id, sizeof(id), "%040x", static_cast<unsigned>(i));
  return id;
}

TEST(ValidationTest, BatchAcceptsIdsNamesOrBoth) {
  EXPECT_TRUE(ValidateBatchQuarantineFileRequest(ValidBatch()).ok());
  v1::BatchQuarantineFileRequest ids_only = ValidBatch();
  ids_only.clear_computer_dns_names();
  EXPECT_TRUE(ValidateBatchQuarantineFileRequest(ids_only).ok());
  v1::BatchQuarantineFileRequest names_only = ValidBatch();
  names_only.clear_machine_ids();
  EXPECT_TRUE(ValidateBatchQuarantineFileRequest(names_only).ok());
  v1::BatchQuarantineFileRequest by_sha256 = ValidBatch();
  by_sha256.clear_sha1();
  by_sha256.set_sha256(kSha256);
  EXPECT_TRUE(ValidateBatchQuarantineFileRequest(by_sha256).ok());
}

TEST(ValidationTest, BatchNeedsOneToMaxDevices) {
  v1::BatchQuarantineFileRequest request = ValidBatch();
  request.clear_machine_ids();
  request.clear_computer_dns_names();
  absl::Status status = ValidateBatchQuarantineFileRequest(request);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ErrorReason(status), "MACHINE_REQUIRED");

  // kMaxBatchMachines in all is fine, split between ids and names or not.
  for (int i = 0; i < static_cast<int>(kMaxBatchMachines) - 1; ++i) {
    request.add_machine_ids(HexId(i));
  }
  request.add_computer_dns_names("desktop-1.contoso.com");
  EXPECT_TRUE(ValidateBatchQuarantineFileRequest(request).ok())
      << ValidateBatchQuarantineFileRequest(request);
  request.add_computer_dns_names("desktop-2.contoso.com");
  status = ValidateBatchQuarantineFileRequest(request);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ErrorReason(status), "TOO_MANY_MACHINES");

  request.clear_computer_dns_names();
  request.add_machine_ids(HexId(100000));
  EXPECT_EQ(request.machine_ids_size(), static_cast<int>(kMaxBatchMachines));
  EXPECT_TRUE(ValidateBatchQuarantineFileRequest(request).ok());
  request.add_machine_ids(HexId(100001));
  EXPECT_EQ(ErrorReason(ValidateBatchQuarantineFileRequest(request)), "TOO_MANY_MACHINES");
}

TEST(ValidationTest, BatchRefusesTheSameDeviceTwiceWhateverTheCase) {
  v1::BatchQuarantineFileRequest request = ValidBatch();
  request.add_machine_ids(absl::AsciiStrToUpper(kMachineId));  // index 2 repeats index 0
  absl::Status status = ValidateBatchQuarantineFileRequest(request);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ErrorReason(status), "DUPLICATE_MACHINE");
  EXPECT_EQ(FieldOf(status), "machine_ids");
  EXPECT_EQ(IndexOf(status), "2");

  request = ValidBatch();
  request.add_computer_dns_names("Desktop-1.CONTOSO.com");  // repeats the first name
  status = ValidateBatchQuarantineFileRequest(request);
  EXPECT_EQ(ErrorReason(status), "DUPLICATE_MACHINE");
  EXPECT_EQ(FieldOf(status), "computer_dns_names");
  // Indexes count machine_ids first, as the batch's results do.
  EXPECT_EQ(IndexOf(status), "3");

  // A name that looks like an id is not compared with the ids.
  request = ValidBatch();
  request.add_computer_dns_names(kMachineId);
  EXPECT_TRUE(ValidateBatchQuarantineFileRequest(request).ok());
}

TEST(ValidationTest, BatchNamesTheBadDevicesIndex) {
  v1::BatchQuarantineFileRequest request = ValidBatch();
  request.add_machine_ids("not-a-machine-id");  // index 2
  absl::Status status = ValidateBatchQuarantineFileRequest(request);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ErrorReason(status), "INVALID_MACHINE_ID");
  EXPECT_EQ(FieldOf(status), "machine_ids");
  EXPECT_EQ(IndexOf(status), "2");

  request = ValidBatch();
  request.add_computer_dns_names("bad name");  // computer_dns_names[1]: index 2 + 1
  status = ValidateBatchQuarantineFileRequest(request);
  EXPECT_EQ(ErrorReason(status), "INVALID_COMPUTER_DNS_NAME");
  EXPECT_EQ(FieldOf(status), "computer_dns_names");
  EXPECT_EQ(IndexOf(status), "3");
}

TEST(ValidationTest, BatchChecksHashCommentAndRequestIdAsQuarantineDoes) {
  v1::BatchQuarantineFileRequest request = ValidBatch();
  request.set_sha256(kSha256);
  EXPECT_EQ(ErrorReason(ValidateBatchQuarantineFileRequest(request)), "CONFLICTING_FIELDS");
  request.clear_sha1();
  request.set_sha256("xyz");
  EXPECT_EQ(ErrorReason(ValidateBatchQuarantineFileRequest(request)), "INVALID_SHA256");
  request.clear_sha256();
  EXPECT_EQ(ErrorReason(ValidateBatchQuarantineFileRequest(request)), "INVALID_SHA1");

  request = ValidBatch();
  request.clear_comment();
  EXPECT_EQ(ErrorReason(ValidateBatchQuarantineFileRequest(request)), "COMMENT_REQUIRED");

  request = ValidBatch();
  request.set_request_id("batch\r\n7");
  EXPECT_EQ(ErrorReason(ValidateBatchQuarantineFileRequest(request)), "INVALID_REQUEST_ID");
  request.set_request_id("batch-7");
  EXPECT_TRUE(ValidateBatchQuarantineFileRequest(request).ok());
}

}  // namespace
}  // namespace defender
