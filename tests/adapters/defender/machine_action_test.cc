#include "adapters/defender/machine_action.h"

#include <string>
#include <vector>

#include "absl/time/civil_time.h"
#include "absl/time/time.h"
#include "adapters/common/error.h"
#include "adapters/defender/entities.h"
#include "gtest/gtest.h"

namespace defender::api {
namespace {

// Utc returns the UTC time given, plus `nanos`.
absl::Time Utc(int y, int mo, int d, int h, int mi, int s, int64_t nanos = 0) {
  return absl::FromCivil(absl::CivilSecond(y, mo, d, h, mi, s), absl::UTCTimeZone()) +
         absl::Nanoseconds(nanos);
}

// ExpectBadResponse checks the error for a body that is not a MachineAction.
void ExpectBadResponse(const absl::StatusOr<MachineAction>& action) {
  ASSERT_FALSE(action.ok());
  EXPECT_EQ(action.status().code(), absl::StatusCode::kInternal);
  EXPECT_EQ(ErrorReason(action.status()), "BAD_UPSTREAM_RESPONSE");
}

// Microsoft's example answer to StopAndQuarantineFile (stop-and-quarantine-file.md),
// tab included.
constexpr char kMicrosoftExample[] = R"({
    "@odata.context": "https://api.securitycenter.windows.com/api/$metadata#MachineActions/$entity",
    "id": "141408d1-384c-4c19-8b57-ba39e378011a",
    "type": "StopAndQuarantineFile",
    "requestor": "Analyst@contoso.com ",
    "requestorComment": "Stop and quarantine file on machine due to alert 441688558380765161_2136280442",
    "status": "InProgress",
    "machineId": "1e5bc9d7e413ddd7902c2932e418702b84d0cc07",
    "creationDateTimeUtc": "2018-12-04T12:15:04.3825985Z",
    "lastUpdateTimeUtc": "2018-12-04T12:15:04.3825985Z",
	"relatedFileInfo": {
        "fileIdentifier": "87662bc3d60e4200ceaf7aae249d1c343f4b83c9",
        "fileIdentifierType": "Sha1"
	}
})";

TEST(MachineActionTest, ParsesMicrosoftExample) {
  absl::StatusOr<MachineAction> action = ParseMachineAction(kMicrosoftExample);
  ASSERT_TRUE(action.ok()) << action.status();
  EXPECT_EQ(action->id, "141408d1-384c-4c19-8b57-ba39e378011a");
  EXPECT_EQ(action->type, "StopAndQuarantineFile");
  EXPECT_EQ(action->requestor, "Analyst@contoso.com ");
  EXPECT_EQ(action->requestor_comment,
            "Stop and quarantine file on machine due to alert 441688558380765161_2136280442");
  EXPECT_EQ(action->status, "InProgress");
  EXPECT_FALSE(action->IsFinal());
  EXPECT_EQ(action->machine_id, "1e5bc9d7e413ddd7902c2932e418702b84d0cc07");
  const absl::Time expected = Utc(2018, 12, 4, 12, 15, 4, 382598500);
  EXPECT_EQ(action->creation_time, expected);
  EXPECT_EQ(action->last_update_time, expected);  // from lastUpdateTimeUtc
  EXPECT_EQ(action->cancellation_time, std::nullopt);
  EXPECT_EQ(action->file_identifier, "87662bc3d60e4200ceaf7aae249d1c343f4b83c9");
  EXPECT_EQ(action->file_identifier_type, "Sha1");
  EXPECT_EQ(action->scope, "");
  EXPECT_EQ(action->title, "");
}

TEST(MachineActionTest, ParsesEveryDocumentedField) {
  absl::StatusOr<MachineAction> action = ParseMachineAction(R"({
    "id": "a1", "type": "StopAndQuarantineFile", "scope": "Full",
    "requestor": "app-id", "externalID": "ext-7", "requestSource": "PublicApi",
    "commands": [], "cancellationRequestor": "someone", "requestorComment": "why",
    "cancellationComment": "never mind", "status": "Cancelled",
    "machineId": "m1", "computerDnsName": "host.contoso.com",
    "creationDateTimeUtc": "2024-01-02T03:04:05Z",
    "cancellationDateTimeUtc": "2024-01-02T03:05:05.5Z",
    "lastUpdateDateTimeUtc": "2024-01-02T03:06:05.123456789Z",
    "title": "Stop and quarantine",
    "relatedFileInfo": {"fileIdentifier": "abc", "fileIdentifierType": "Sha256"}
  })");
  ASSERT_TRUE(action.ok()) << action.status();
  EXPECT_EQ(action->scope, "Full");
  EXPECT_EQ(action->requestor, "app-id");
  EXPECT_EQ(action->external_id, "ext-7");
  EXPECT_EQ(action->request_source, "PublicApi");
  EXPECT_EQ(action->cancellation_requestor, "someone");
  EXPECT_EQ(action->requestor_comment, "why");
  EXPECT_EQ(action->cancellation_comment, "never mind");
  EXPECT_EQ(action->status, "Cancelled");
  EXPECT_TRUE(action->IsFinal());
  EXPECT_EQ(action->machine_id, "m1");
  EXPECT_EQ(action->computer_dns_name, "host.contoso.com");
  EXPECT_EQ(action->title, "Stop and quarantine");
  EXPECT_EQ(action->creation_time, Utc(2024, 1, 2, 3, 4, 5));
  EXPECT_EQ(action->cancellation_time, Utc(2024, 1, 2, 3, 5, 5, 500000000));
  EXPECT_EQ(action->last_update_time, Utc(2024, 1, 2, 3, 6, 5, 123456789));
  EXPECT_EQ(action->file_identifier, "abc");
  EXPECT_EQ(action->file_identifier_type, "Sha256");
}

TEST(MachineActionTest, IgnoresUnknownFields) {
  absl::StatusOr<MachineAction> action = ParseMachineAction(R"({
    "id": "a1", "status": "Pending", "errorHResult": 0,
    "troubleshootInfo": {"nested": [1, 2, {"x": null}]}, "Id": "other", "ID": 5,
    "fileInstances": [], "newField2030": true
  })");
  ASSERT_TRUE(action.ok()) << action.status();
  EXPECT_EQ(action->id, "a1");  // keys are case-sensitive
  EXPECT_EQ(action->status, "Pending");
}

TEST(MachineActionTest, AcceptsNullsEverywhere) {
  absl::StatusOr<MachineAction> action = ParseMachineAction(R"({
    "id": "a1", "type": null, "scope": null, "requestor": null, "externalID": null,
    "requestSource": null, "commands": null, "cancellationRequestor": null,
    "requestorComment": null, "cancellationComment": null, "status": null,
    "machineId": null, "computerDnsName": null, "creationDateTimeUtc": null,
    "cancellationDateTimeUtc": null, "lastUpdateDateTimeUtc": null,
    "lastUpdateTimeUtc": null, "title": null, "relatedFileInfo": null
  })");
  ASSERT_TRUE(action.ok()) << action.status();
  EXPECT_EQ(action->id, "a1");
  EXPECT_EQ(action->type, "");
  EXPECT_EQ(action->status, "");
  EXPECT_FALSE(action->IsFinal());
  EXPECT_EQ(action->machine_id, "");
  EXPECT_EQ(action->creation_time, std::nullopt);
  EXPECT_EQ(action->last_update_time, std::nullopt);
  EXPECT_EQ(action->cancellation_time, std::nullopt);
  EXPECT_EQ(action->file_identifier, "");
  EXPECT_EQ(action->file_identifier_type, "");
}

TEST(MachineActionTest, NullsInsideRelatedFileInfo) {
  absl::StatusOr<MachineAction> action = ParseMachineAction(
      R"({"id": "a1", "relatedFileInfo": {"fileIdentifier": null, "fileIdentifierType": null}})");
  ASSERT_TRUE(action.ok()) << action.status();
  EXPECT_EQ(action->file_identifier, "");
  EXPECT_EQ(action->file_identifier_type, "");
}

TEST(MachineActionTest, OnlyIdIsEnough) {
  absl::StatusOr<MachineAction> action = ParseMachineAction(R"({"id": "a1"})");
  ASSERT_TRUE(action.ok()) << action.status();
  EXPECT_EQ(action->id, "a1");
  EXPECT_EQ(action->status, "");
  EXPECT_EQ(action->creation_time, std::nullopt);
}

TEST(MachineActionTest, WrongTypesCountAsMissing) {
  absl::StatusOr<MachineAction> action = ParseMachineAction(R"({
    "id": "a1", "type": 7, "status": ["Succeeded"], "machineId": {"id": "m"},
    "requestor": true, "title": 1.5, "creationDateTimeUtc": 1543925704,
    "lastUpdateDateTimeUtc": {"value": "2018-12-04T12:15:04Z"},
    "lastUpdateTimeUtc": false, "cancellationDateTimeUtc": [],
    "relatedFileInfo": ["87662bc3d60e4200ceaf7aae249d1c343f4b83c9", "Sha1"]
  })");
  ASSERT_TRUE(action.ok()) << action.status();
  EXPECT_EQ(action->type, "");
  EXPECT_EQ(action->status, "");
  EXPECT_EQ(action->machine_id, "");
  EXPECT_EQ(action->requestor, "");
  EXPECT_EQ(action->title, "");
  EXPECT_EQ(action->creation_time, std::nullopt);
  EXPECT_EQ(action->last_update_time, std::nullopt);
  EXPECT_EQ(action->cancellation_time, std::nullopt);
  EXPECT_EQ(action->file_identifier, "");
}

TEST(MachineActionTest, WrongTypesInsideRelatedFileInfo) {
  absl::StatusOr<MachineAction> action = ParseMachineAction(
      R"({"id": "a1", "relatedFileInfo": {"fileIdentifier": 12, "fileIdentifierType": "Md5"}})");
  ASSERT_TRUE(action.ok()) << action.status();
  EXPECT_EQ(action->file_identifier, "");
  EXPECT_EQ(action->file_identifier_type, "Md5");
}

TEST(MachineActionTest, UnreadableTimeIsMissing) {
  absl::StatusOr<MachineAction> action = ParseMachineAction(
      R"({"id": "a1", "creationDateTimeUtc": "yesterday", "lastUpdateDateTimeUtc": ""})");
  ASSERT_TRUE(action.ok()) << action.status();
  EXPECT_EQ(action->creation_time, std::nullopt);
  EXPECT_EQ(action->last_update_time, std::nullopt);
}

TEST(MachineActionTest, SevenDigitFractionsKeepTheirPrecision) {
  absl::StatusOr<MachineAction> action = ParseMachineAction(
      R"({"id": "a1", "creationDateTimeUtc": "2018-12-04T12:15:04.3825985Z",
          "lastUpdateDateTimeUtc": "2018-12-04T12:15:04.0000001Z"})");
  ASSERT_TRUE(action.ok()) << action.status();
  ASSERT_TRUE(action->creation_time.has_value());
  EXPECT_EQ(absl::ToUnixNanos(*action->creation_time) % 1000000000, 382598500);
  EXPECT_EQ(action->last_update_time, Utc(2018, 12, 4, 12, 15, 4, 100));
}

TEST(MachineActionTest, LastUpdateDateTimeUtcWinsOverOlderSpelling) {
  absl::StatusOr<MachineAction> action = ParseMachineAction(
      R"({"id": "a1", "lastUpdateDateTimeUtc": "2020-01-01T00:00:02Z",
          "lastUpdateTimeUtc": "2020-01-01T00:00:01Z"})");
  ASSERT_TRUE(action.ok()) << action.status();
  EXPECT_EQ(action->last_update_time, Utc(2020, 1, 1, 0, 0, 2));
}

TEST(MachineActionTest, LastUpdateTimeUtcFallbackWhenNewSpellingIsNull) {
  absl::StatusOr<MachineAction> action = ParseMachineAction(
      R"({"id": "a1", "lastUpdateDateTimeUtc": null,
          "lastUpdateTimeUtc": "2020-01-01T00:00:01Z"})");
  ASSERT_TRUE(action.ok()) << action.status();
  EXPECT_EQ(action->last_update_time, Utc(2020, 1, 1, 0, 0, 1));
}

TEST(MachineActionTest, CanceledIsNormalisedToCancelled) {
  absl::StatusOr<MachineAction> action =
      ParseMachineAction(R"({"id": "a1", "status": "Canceled"})");
  ASSERT_TRUE(action.ok()) << action.status();
  EXPECT_EQ(action->status, "Cancelled");
  EXPECT_TRUE(action->IsFinal());
}

TEST(MachineActionTest, TimedOutIsNormalisedToTimeOut) {
  absl::StatusOr<MachineAction> action =
      ParseMachineAction(R"({"id": "a1", "status": "TimedOut"})");
  ASSERT_TRUE(action.ok()) << action.status();
  EXPECT_EQ(action->status, "TimeOut");
  EXPECT_TRUE(action->IsFinal());
}

TEST(MachineActionTest, UnknownStatusIsKeptAndNotFinal) {
  absl::StatusOr<MachineAction> action =
      ParseMachineAction(R"({"id": "a1", "status": "Queued"})");
  ASSERT_TRUE(action.ok()) << action.status();
  EXPECT_EQ(action->status, "Queued");
  EXPECT_FALSE(action->IsFinal());
}

TEST(MachineActionTest, IsFinal) {
  MachineAction action;
  for (const char* status :
       {"Succeeded", "Failed", "TimeOut", "TimedOut", "Cancelled", "Canceled"}) {
    action.status = status;
    EXPECT_TRUE(action.IsFinal()) << status;
  }
  for (const char* status : {"Pending", "InProgress", "", "succeeded", "Unknown"}) {
    action.status = status;
    EXPECT_FALSE(action.IsFinal()) << status;
  }
}

TEST(MachineActionTest, KeepsUnicodeStrings) {
  absl::StatusOr<MachineAction> action = ParseMachineAction(
      R"({"id": "a1", "requestorComment": "Ünïcødé ✓ \u00e9\n\"q\""})");
  ASSERT_TRUE(action.ok()) << action.status();
  EXPECT_EQ(action->requestor_comment, "Ünïcødé ✓ é\n\"q\"");
}

TEST(MachineActionTest, MissingIdIsBadResponse) {
  ExpectBadResponse(ParseMachineAction(R"({"type": "StopAndQuarantineFile"})"));
}

TEST(MachineActionTest, NullOrEmptyOrNonStringIdIsBadResponse) {
  ExpectBadResponse(ParseMachineAction(R"({"id": null})"));
  ExpectBadResponse(ParseMachineAction(R"({"id": ""})"));
  ExpectBadResponse(ParseMachineAction(R"({"id": 42})"));
  ExpectBadResponse(ParseMachineAction(R"({"id": {"value": "a1"}})"));
}

TEST(MachineActionTest, NotJsonIsBadResponse) {
  ExpectBadResponse(ParseMachineAction("<html><body>Bad Gateway</body></html>"));
  ExpectBadResponse(ParseMachineAction(R"({"id": "a1")"));  // truncated
  ExpectBadResponse(ParseMachineAction(R"({"id": "a1"} trailing)"));
  ExpectBadResponse(ParseMachineAction("{\"id\": \"\xff\xfe\"}"));  // invalid UTF-8
}

TEST(MachineActionTest, EmptyIsBadResponse) {
  ExpectBadResponse(ParseMachineAction(""));
  ExpectBadResponse(ParseMachineAction("   \n"));
}

TEST(MachineActionTest, NonObjectsAreBadResponse) {
  ExpectBadResponse(ParseMachineAction(R"([{"id": "a1"}])"));
  ExpectBadResponse(ParseMachineAction("[]"));
  ExpectBadResponse(ParseMachineAction("null"));
  ExpectBadResponse(ParseMachineAction("\"a1\""));
  ExpectBadResponse(ParseMachineAction("42"));
  ExpectBadResponse(ParseMachineAction(R"({"value": [{"id": "a1"}]})"));  // a list answer
}

TEST(MachineActionTest, DeepGarbageDoesNotCrash) {
  ExpectBadResponse(ParseMachineAction(std::string(100000, '[')));
  ExpectBadResponse(ParseMachineAction(std::string(100000, '{')));
  const std::string deep = std::string(50000, '[') + std::string(50000, ']');
  ExpectBadResponse(ParseMachineAction(deep));
  std::string nested_field = R"({"id": "a1", "troubleshootInfo": )";
  nested_field += std::string(20000, '[') + std::string(20000, ']') + "}";
  absl::StatusOr<MachineAction> action = ParseMachineAction(nested_field);
  ASSERT_TRUE(action.ok()) << action.status();
  EXPECT_EQ(action->id, "a1");
  std::string binary;
  for (int i = 0; i < 256; ++i) binary.push_back(static_cast<char>(i));
  ExpectBadResponse(ParseMachineAction(binary));
}

TEST(MachineActionTest, ErrorDoesNotQuoteTheBody) {
  const std::string body = R"({"type": "secret-looking-content-0123456789"})";
  absl::StatusOr<MachineAction> action = ParseMachineAction(body);
  ExpectBadResponse(action);
  EXPECT_EQ(action.status().message().find("secret-looking-content"), std::string::npos);
}

TEST(ParseDefenderTimeTest, SevenDigits) {
  EXPECT_EQ(ParseDefenderTime("2018-12-04T12:15:04.3825985Z"),
            Utc(2018, 12, 4, 12, 15, 4, 382598500));
}

TEST(ParseDefenderTimeTest, ZeroToNineDigits) {
  EXPECT_EQ(ParseDefenderTime("2018-12-04T12:15:04Z"), Utc(2018, 12, 4, 12, 15, 4));
  EXPECT_EQ(ParseDefenderTime("2018-12-04T12:15:04.1Z"), Utc(2018, 12, 4, 12, 15, 4, 100000000));
  EXPECT_EQ(ParseDefenderTime("2018-12-04T12:15:04.123Z"),
            Utc(2018, 12, 4, 12, 15, 4, 123000000));
  EXPECT_EQ(ParseDefenderTime("2018-12-04T12:15:04.123456Z"),
            Utc(2018, 12, 4, 12, 15, 4, 123456000));
  EXPECT_EQ(ParseDefenderTime("2018-12-04T12:15:04.123456789Z"),
            Utc(2018, 12, 4, 12, 15, 4, 123456789));
  EXPECT_EQ(ParseDefenderTime("2018-12-04T12:15:04.000000000Z"), Utc(2018, 12, 4, 12, 15, 4));
}

TEST(ParseDefenderTimeTest, Offsets) {
  EXPECT_EQ(ParseDefenderTime("2018-12-04T12:15:04+00:00"), Utc(2018, 12, 4, 12, 15, 4));
  EXPECT_EQ(ParseDefenderTime("2018-12-04T12:15:04.5+02:00"),
            Utc(2018, 12, 4, 10, 15, 4, 500000000));
  EXPECT_EQ(ParseDefenderTime("2018-12-04T00:15:04-05:30"), Utc(2018, 12, 4, 5, 45, 4));
  EXPECT_EQ(ParseDefenderTime("2018-12-31T23:59:59-01:00"), Utc(2019, 1, 1, 0, 59, 59));
}

TEST(ParseDefenderTimeTest, LowercaseSeparatorsAccepted) {
  EXPECT_EQ(ParseDefenderTime("2018-12-04t12:15:04z"), Utc(2018, 12, 4, 12, 15, 4));
}

TEST(ParseDefenderTimeTest, LeapDay) {
  EXPECT_EQ(ParseDefenderTime("2024-02-29T00:00:00Z"), Utc(2024, 2, 29, 0, 0, 0));
  EXPECT_EQ(ParseDefenderTime("2023-02-29T00:00:00Z"), std::nullopt);
}

TEST(ParseDefenderTimeTest, Rejects) {
  for (const char* text : {
           "",
           "2018-12-04",
           "2018-12-04T12:15:04",             // no zone
           "2018-12-04 12:15:04Z",            // space instead of T
           "2018-12-04T12:15Z",               // no seconds
           "2018-12-04T12:15:04.Z",           // a dot without digits
           "2018-12-04T12:15:04.1234567890Z",  // ten digits
           "2018-12-04T12:15:04+0200",        // offset without colon
           "2018-12-04T12:15:04+02",          // offset without minutes
           " 2018-12-04T12:15:04Z",           // surrounding spaces
           "2018-12-04T12:15:04Z ",
           "2018-12-04T12:15:04ZZ",
           "2018-13-04T12:15:04Z",            // month 13
           "2018-12-32T12:15:04Z",            // day 32
           "2018-12-04T24:15:04Z",            // hour 24
           "2018-12-04T12:61:04Z",            // minute 61
           "18-12-04T12:15:04Z",              // two-digit year
           "+2018-12-04T12:15:04Z",
           "2018-1-4T12:15:04Z",
           "infinite-future",
           "infinite-past",
           "1543925704",
           "2018-12-04T12:15:04.3825985GMT",
       }) {
    EXPECT_EQ(ParseDefenderTime(text), std::nullopt) << "\"" << text << "\"";
  }
}

TEST(ParseDefenderTimeTest, RejectsEmbeddedNul) {
  const std::string text("2018-12-04T12:15:04Z\0junk", 25);
  EXPECT_EQ(ParseDefenderTime(text), std::nullopt);
}

// --- ParseFileInfo

// ExpectBadUpstream checks the error for an unreadable entity.
void ExpectBadUpstream(const absl::Status& status) {
  EXPECT_EQ(status.code(), absl::StatusCode::kInternal) << status;
  EXPECT_EQ(ErrorReason(status), "BAD_UPSTREAM_RESPONSE") << status;
}

// A File answer shaped like Microsoft's example (get-file-information.md).
constexpr char kFileExample[] = R"({
    "@odata.context": "https://api.securitycenter.microsoft.com/api/$metadata#Files/$entity",
    "sha1": "4388963aaa83afe2042a46a3c017ad50bdcdafb3",
    "sha256": "413c58c8267d2c8648d8f6384bacc2ae9c929b2b96578b6860b5087cd1bd6462",
    "md5": "5d4f8ba8c5e3c1f2d8b9e0a7a6c3b2e1",
    "globalPrevalence": 180022,
    "globalFirstObserved": "2017-09-19T03:51:27.6785431Z",
    "size": 22139496,
    "fileType": "APP",
    "isPeFile": true,
    "filePublisher": "CHENGDU YIWO Tech Development Co., Ltd.",
    "fileProductName": "EaseUS MobiSaver for Android",
    "signer": "CHENGDU YIWO Tech Development Co., Ltd.",
    "issuer": "VeriSign Class 3 Code Signing 2010 CA",
    "isValidCertificate": false,
    "determinationType": "Pup",
    "determinationValue": "PUA:Win32/FusionCore"
})";

TEST(ParseFileInfoTest, ParsesExample) {
  absl::StatusOr<FileInfo> file = ParseFileInfo(kFileExample);
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_EQ(file->sha1, "4388963aaa83afe2042a46a3c017ad50bdcdafb3");
  EXPECT_EQ(file->sha256, "413c58c8267d2c8648d8f6384bacc2ae9c929b2b96578b6860b5087cd1bd6462");
  EXPECT_EQ(file->md5, "5d4f8ba8c5e3c1f2d8b9e0a7a6c3b2e1");
  EXPECT_EQ(file->size, 22139496);
  EXPECT_EQ(file->file_type, "APP");
  EXPECT_EQ(file->file_publisher, "CHENGDU YIWO Tech Development Co., Ltd.");
  EXPECT_EQ(file->signer, "CHENGDU YIWO Tech Development Co., Ltd.");
  EXPECT_EQ(file->is_valid_certificate, false);
  EXPECT_EQ(file->determination_type, "Pup");
}

TEST(ParseFileInfoTest, HashesAreLowercased) {
  absl::StatusOr<FileInfo> file = ParseFileInfo(
      R"({"sha1": "4388963AAA83AFE2042A46A3C017AD50BDCDAFB3",
          "sha256": "413C58C8267D2C8648D8F6384BACC2AE9C929B2B96578B6860B5087CD1BD6462"})");
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_EQ(file->sha1, "4388963aaa83afe2042a46a3c017ad50bdcdafb3");
  EXPECT_EQ(file->sha256, "413c58c8267d2c8648d8f6384bacc2ae9c929b2b96578b6860b5087cd1bd6462");
}

TEST(ParseFileInfoTest, EitherHashIsEnough) {
  absl::StatusOr<FileInfo> only_sha1 = ParseFileInfo(R"({"sha1": "ab", "sha256": null})");
  ASSERT_TRUE(only_sha1.ok()) << only_sha1.status();
  EXPECT_EQ(only_sha1->sha1, "ab");
  EXPECT_EQ(only_sha1->sha256, "");
  absl::StatusOr<FileInfo> only_sha256 = ParseFileInfo(R"({"sha256": "CD"})");
  ASSERT_TRUE(only_sha256.ok()) << only_sha256.status();
  EXPECT_EQ(only_sha256->sha1, "");
  EXPECT_EQ(only_sha256->sha256, "cd");
}

TEST(ParseFileInfoTest, NullsAndWrongTypesAreAbsent) {
  for (const char* body : {
           R"({"sha1": "ab", "md5": null, "fileType": null, "size": null, "filePublisher": null,
               "signer": null, "isValidCertificate": null, "determinationType": null})",
           R"({"sha1": "ab", "md5": 5, "fileType": [], "size": "123", "filePublisher": {},
               "signer": true, "isValidCertificate": "true", "determinationType": 1})",
           R"({"sha1": "ab"})",
       }) {
    absl::StatusOr<FileInfo> file = ParseFileInfo(body);
    ASSERT_TRUE(file.ok()) << body;
    EXPECT_EQ(file->md5, "") << body;
    EXPECT_EQ(file->file_type, "") << body;
    EXPECT_EQ(file->size, std::nullopt) << body;
    EXPECT_EQ(file->file_publisher, "") << body;
    EXPECT_EQ(file->signer, "") << body;
    EXPECT_EQ(file->is_valid_certificate, std::nullopt) << body;
    EXPECT_EQ(file->determination_type, "") << body;
  }
}

TEST(ParseFileInfoTest, SizeMustBeANonNegativeInteger) {
  auto size = [](const std::string& value) {
    absl::StatusOr<FileInfo> file = ParseFileInfo(R"({"sha1": "ab", "size": )" + value + "}");
    EXPECT_TRUE(file.ok()) << value;
    return file.ok() ? file->size : std::optional<int64_t>(-42);
  };
  EXPECT_EQ(size("0"), 0);
  EXPECT_EQ(size("9223372036854775807"), INT64_MAX);
  EXPECT_EQ(size("9223372036854775808"), std::nullopt);
  EXPECT_EQ(size("18446744073709551616"), std::nullopt);  // beyond uint64: a double
  EXPECT_EQ(size("-1"), std::nullopt);
  EXPECT_EQ(size("1.5"), std::nullopt);
  EXPECT_EQ(size("true"), std::nullopt);
}

TEST(ParseFileInfoTest, ValidCertificateTrue) {
  absl::StatusOr<FileInfo> file = ParseFileInfo(R"({"sha1": "ab", "isValidCertificate": true})");
  ASSERT_TRUE(file.ok());
  EXPECT_EQ(file->is_valid_certificate, true);
}

TEST(ParseFileInfoTest, WithoutAHashIsBadResponse) {
  for (const char* body : {R"({})", R"({"sha1": null, "sha256": null})", R"({"sha1": ""})",
                           R"({"sha1": 5, "sha256": ["ab"]})", R"({"md5": "ab", "size": 1})"}) {
    absl::StatusOr<FileInfo> file = ParseFileInfo(body);
    ASSERT_FALSE(file.ok()) << body;
    ExpectBadUpstream(file.status());
  }
}

TEST(ParseFileInfoTest, NotAnObjectIsBadResponse) {
  for (const char* body : {"", "null", "[]", R"(["sha1"])", R"("sha1")", "42", "<html>",
                           R"({"sha1": "ab")", R"({"value": [{"sha1": "ab"}]})"}) {
    absl::StatusOr<FileInfo> file = ParseFileInfo(body);
    ASSERT_FALSE(file.ok()) << body;
    ExpectBadUpstream(file.status());
  }
}

TEST(ParseFileInfoTest, ErrorDoesNotQuoteTheBody) {
  absl::StatusOr<FileInfo> file = ParseFileInfo(R"({"signer": "secret-looking-content"})");
  ASSERT_FALSE(file.ok());
  EXPECT_EQ(file.status().message().find("secret-looking-content"), std::string::npos);
}

// --- ParseMachineList

// A machine list answer shaped like Microsoft's example (get-machines.md).
constexpr char kMachineListExample[] = R"({
    "@odata.context": "https://api.securitycenter.microsoft.com/api/$metadata#Machines",
    "value": [
        {
            "id": "1e5bc9d7e413ddd7902c2932e418702b84d0cc07",
            "computerDnsName": "mymachine1.contoso.com",
            "firstSeen": "2018-08-02T14:55:03.7791856Z",
            "lastSeen": "2018-08-02T14:55:03.7791856Z",
            "osPlatform": "Windows10",
            "version": "1709",
            "osProcessor": "x64",
            "lastIpAddress": "172.17.230.209",
            "lastExternalIpAddress": "167.220.196.71",
            "osBuild": 18209,
            "healthStatus": "Active",
            "rbacGroupId": 140,
            "rbacGroupName": "The-A-Team",
            "riskScore": "Low",
            "exposureLevel": "Medium",
            "isAadJoined": true,
            "aadDeviceId": "80fe8ff8-2624-418e-9591-41f0491218f9",
            "machineTags": ["test tag 1", "test tag 2"]
        }
    ]
})";

TEST(ParseMachineListTest, ParsesExample) {
  absl::StatusOr<std::vector<MachineInfo>> machines = ParseMachineList(kMachineListExample);
  ASSERT_TRUE(machines.ok()) << machines.status();
  ASSERT_EQ(machines->size(), 1u);
  const MachineInfo& machine = (*machines)[0];
  EXPECT_EQ(machine.id, "1e5bc9d7e413ddd7902c2932e418702b84d0cc07");
  EXPECT_EQ(machine.computer_dns_name, "mymachine1.contoso.com");
  EXPECT_EQ(machine.os_platform, "Windows10");
  EXPECT_EQ(machine.health_status, "Active");
  EXPECT_EQ(machine.last_ip_address, "172.17.230.209");
  EXPECT_EQ(machine.last_seen, Utc(2018, 8, 2, 14, 55, 3, 779185600));
}

TEST(ParseMachineListTest, EmptyList) {
  absl::StatusOr<std::vector<MachineInfo>> machines = ParseMachineList(R"({"value": []})");
  ASSERT_TRUE(machines.ok()) << machines.status();
  EXPECT_TRUE(machines->empty());
}

TEST(ParseMachineListTest, IdIsLowercasedAndEntriesWithoutIdAreSkipped) {
  absl::StatusOr<std::vector<MachineInfo>> machines = ParseMachineList(R"({"value": [
      {"id": "1E5BC9D7E413DDD7902C2932E418702B84D0CC07"},
      {"id": null, "computerDnsName": "a"}, {"id": ""}, {"id": 7}, {"id": ["x"]},
      {"computerDnsName": "b"}, null, 3, "id", [],
      {"id": "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"}]})");
  ASSERT_TRUE(machines.ok()) << machines.status();
  ASSERT_EQ(machines->size(), 2u);
  EXPECT_EQ((*machines)[0].id, "1e5bc9d7e413ddd7902c2932e418702b84d0cc07");
  EXPECT_EQ((*machines)[1].id, std::string(40, 'b'));
}

TEST(ParseMachineListTest, NullsWrongTypesAndBadTimesAreAbsent) {
  absl::StatusOr<std::vector<MachineInfo>> machines = ParseMachineList(R"({"value": [
      {"id": "a1", "computerDnsName": null, "osPlatform": 5, "healthStatus": {},
       "lastIpAddress": [], "lastSeen": "2018-08-02 14:55:03"},
      {"id": "a2", "lastSeen": 1533221703}]})");
  ASSERT_TRUE(machines.ok()) << machines.status();
  ASSERT_EQ(machines->size(), 2u);
  for (const MachineInfo& machine : *machines) {
    EXPECT_EQ(machine.computer_dns_name, "");
    EXPECT_EQ(machine.os_platform, "");
    EXPECT_EQ(machine.health_status, "");
    EXPECT_EQ(machine.last_ip_address, "");
    EXPECT_EQ(machine.last_seen, std::nullopt);
  }
}

TEST(ParseMachineListTest, WithoutValueArrayIsBadResponse) {
  for (const char* body : {"", "null", "[]", R"({})", R"({"value": null})", R"({"value": {}})",
                           R"({"id": "1e5bc9d7e413ddd7902c2932e418702b84d0cc07"})",
                           R"({"value": [)", "<html>"}) {
    absl::StatusOr<std::vector<MachineInfo>> machines = ParseMachineList(body);
    ASSERT_FALSE(machines.ok()) << body;
    ExpectBadUpstream(machines.status());
  }
}

}  // namespace
}  // namespace defender::api
