// The log's record format: JSON lines with hclog's keys, or text; levels.
#include "server/log.h"

#include <regex>
#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace defender {
namespace {

using ::testing::HasSubstr;
using ::testing::StartsWith;

TEST(LogTest, JsonRecordIsOneObjectOnOneLineWithHclogKeysThenFieldsInOrder) {
  const std::string line = FormatLogRecord(
      LogFormat::kJson, "2026-12-03T06:40:00.123Z", LogLevel::kWarn, "QuarantineFile NOT_FOUND",
      {{"rpc", std::string("QuarantineFile")}, {"upstream_status", int64_t{404}},
       {"latency_ms", 12.5}, {"replayed", true}});
  ASSERT_FALSE(line.empty());
  EXPECT_EQ(line.back(), '\n');
  EXPECT_EQ(line.find('\n'), line.size() - 1);  // exactly one line
  EXPECT_THAT(line, StartsWith(R"({"@timestamp":"2026-12-03T06:40:00.123Z","@level":"warn",)"));
  nlohmann::json record = nlohmann::json::parse(line);
  EXPECT_EQ(record["@level"], "warn");
  EXPECT_EQ(record["@module"], "defender-plugin");
  EXPECT_EQ(record["@message"], "QuarantineFile NOT_FOUND");
  EXPECT_EQ(record["rpc"], "QuarantineFile");
  EXPECT_EQ(record["upstream_status"], 404);
  EXPECT_DOUBLE_EQ(record["latency_ms"].get<double>(), 12.5);
  EXPECT_EQ(record["replayed"], true);
}

TEST(LogTest, JsonRecordSurvivesQuotesNewlinesAndBytesThatAreNotUtf8) {
  const std::string hostile = "a\"b\nc\xff\xfe" "d";
  const std::string line = FormatLogRecord(LogFormat::kJson, "t", LogLevel::kInfo, hostile,
                                           {{"tenant", hostile}});
  EXPECT_EQ(line.find('\n'), line.size() - 1);
  nlohmann::json record = nlohmann::json::parse(line);  // valid JSON, valid UTF-8
  EXPECT_EQ(record["tenant"], "a\"b\nc\xEF\xBF\xBD\xEF\xBF\xBD" "d");
}

TEST(LogTest, TextRecordQuotesOnlyValuesThatNeedIt) {
  const std::string line =
      FormatLogRecord(LogFormat::kText, "2026-12-03T06:40:00.123Z", LogLevel::kInfo,
                      "QuarantineFile OK",
                      {{"rpc", std::string("QuarantineFile")}, {"error", std::string("a b")},
                       {"status", int64_t{201}}, {"empty", std::string()}});
  EXPECT_EQ(line,
            "2026-12-03T06:40:00.123Z INFO QuarantineFile OK rpc=QuarantineFile error=\"a b\" "
            "status=201 empty=\"\"\n");
}

TEST(LogTest, LevelsFilterAndParse) {
  const LogOptions saved = GetLogOptions();
  SetLogOptions({LogLevel::kWarn, LogFormat::kJson});
  EXPECT_FALSE(LogEnabled(LogLevel::kDebug));
  EXPECT_FALSE(LogEnabled(LogLevel::kInfo));
  EXPECT_TRUE(LogEnabled(LogLevel::kWarn));
  EXPECT_TRUE(LogEnabled(LogLevel::kError));
  ::testing::internal::CaptureStderr();
  Log(LogLevel::kInfo, "dropped");
  Log(LogLevel::kError, "kept", {{"n", int64_t{1}}});
  const std::string written = ::testing::internal::GetCapturedStderr();
  SetLogOptions(saved);
  EXPECT_THAT(written, Not(HasSubstr("dropped")));
  EXPECT_THAT(written, HasSubstr(R"("@level":"error","@module":"defender-plugin","@message":"kept","n":1})"));
  // hclog's time format, with microseconds: go-plugin hosts parse nothing else.
  const std::string stamp = nlohmann::json::parse(written)["@timestamp"];
  EXPECT_TRUE(std::regex_match(stamp, std::regex(R"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z)")))
      << stamp;

  EXPECT_EQ(*ParseLogLevel("DEBUG"), LogLevel::kDebug);
  EXPECT_EQ(*ParseLogLevel("warning"), LogLevel::kWarn);
  EXPECT_FALSE(ParseLogLevel("verbose").ok());
  EXPECT_EQ(*ParseLogFormat("Text"), LogFormat::kText);
  EXPECT_FALSE(ParseLogFormat("xml").ok());
}

}  // namespace
}  // namespace defender
