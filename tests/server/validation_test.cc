#include "server/validation.h"

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

}  // namespace
}  // namespace defender
