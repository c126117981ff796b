#include "adapters/common/retry.h"

#include <atomic>
#include <thread>
#include <vector>

#include "absl/time/time.h"
#include "gtest/gtest.h"

namespace defender {
namespace {

// Sun, 06 Nov 1994 08:49:37 GMT, the example date of RFC 9110.
const absl::Time kRfcExample = absl::FromUnixSeconds(784111777);

TEST(ParseRetryAfterTest, DelaySeconds) {
  const absl::Time now = absl::FromUnixSeconds(1700000000);
  EXPECT_EQ(ParseRetryAfter("120", now), absl::Seconds(120));
  EXPECT_EQ(ParseRetryAfter("0", now), absl::ZeroDuration());
  EXPECT_EQ(ParseRetryAfter(" 7 \t", now), absl::Seconds(7));
  EXPECT_EQ(ParseRetryAfter("007", now), absl::Seconds(7));
  EXPECT_EQ(ParseRetryAfter("86400", now), absl::Hours(24));
}

TEST(ParseRetryAfterTest, NegativeOrMalformedSecondsAreUnreadable) {
  const absl::Time now = absl::FromUnixSeconds(1700000000);
  for (const char* value : {"-5", "+5", "1.5", "5s", "0x10", "1 2", "99999999999999999999999"}) {
    EXPECT_EQ(ParseRetryAfter(value, now), absl::nullopt) << value;
  }
}

TEST(ParseRetryAfterTest, AbsentOrGarbageIsUnreadable) {
  const absl::Time now = absl::FromUnixSeconds(1700000000);
  for (const char* value :
       {"", "   ", "soon", "Sun, 06 Nov 1994", "Sun, 06 Nov 1994 08:49:37",
        "Sun, 06 Nov 1994 08:49:37 GMT trailing", "Sun, 31 Feb 1994 08:49:37 GMT",
        "Sun, 06 Nov 1994 25:49:37 GMT", "2015-10-21T07:28:00Z",
        // absl::ParseTime's special values, whatever the format (found by fuzzing).
        "infinite-future", "infinite-past", " infinite-future "}) {
    EXPECT_EQ(ParseRetryAfter(value, now), absl::nullopt) << value;
  }
}

TEST(ParseRetryAfterTest, ImfFixdate) {
  EXPECT_EQ(ParseRetryAfter("Sun, 06 Nov 1994 08:49:37 GMT", kRfcExample - absl::Seconds(90)),
            absl::Seconds(90));
  // FakeClock's start, 1700000000, is Tue, 14 Nov 2023 22:13:20 GMT.
  EXPECT_EQ(ParseRetryAfter("Tue, 14 Nov 2023 22:14:00 GMT", absl::FromUnixSeconds(1700000000)),
            absl::Seconds(40));
}

TEST(ParseRetryAfterTest, Rfc850Date) {
  EXPECT_EQ(ParseRetryAfter("Sunday, 06-Nov-94 08:49:37 GMT", kRfcExample - absl::Seconds(3)),
            absl::Seconds(3));
}

TEST(ParseRetryAfterTest, Rfc850TwoDigitYearIsNeverMoreThanFiftyYearsAhead) {
  // In 2023, "30" is 2030 (7 years ahead), "94" is 1994 (not 2094).
  const absl::Time now = absl::FromUnixSeconds(1700000000);
  const absl::Time in_2030 = absl::FromUnixSeconds(1920185377);  // Wed, 06 Nov 2030 08:49:37
  EXPECT_EQ(ParseRetryAfter("Wednesday, 06-Nov-30 08:49:37 GMT", now), in_2030 - now);
  EXPECT_EQ(ParseRetryAfter("Sunday, 06-Nov-94 08:49:37 GMT", now), absl::ZeroDuration());
}

TEST(ParseRetryAfterTest, AsctimeDate) {
  EXPECT_EQ(ParseRetryAfter("Sun Nov  6 08:49:37 1994", kRfcExample - absl::Seconds(10)),
            absl::Seconds(10));
  EXPECT_EQ(ParseRetryAfter("Wed Nov 16 08:49:37 1994", kRfcExample), absl::Hours(24 * 10));
}

TEST(ParseRetryAfterTest, PastDateIsZero) {
  EXPECT_EQ(ParseRetryAfter("Sun, 06 Nov 1994 08:49:37 GMT", kRfcExample + absl::Hours(1)),
            absl::ZeroDuration());
  EXPECT_EQ(ParseRetryAfter("Sun, 06 Nov 1994 08:49:37 GMT", kRfcExample), absl::ZeroDuration());
}

TEST(BackoffDelayTest, StaysWithinHalfAndFullOfTheExponentialStep) {
  const BackoffPolicy policy;  // 200 ms, x2, at most 5 s
  const absl::Duration expected[] = {absl::Milliseconds(200),  absl::Milliseconds(400),
                                     absl::Milliseconds(800),  absl::Milliseconds(1600),
                                     absl::Milliseconds(3200), absl::Seconds(5),
                                     absl::Seconds(5)};
  for (int attempt = 1; attempt <= 7; ++attempt) {
    const absl::Duration d = expected[attempt - 1];
    for (int i = 0; i < 200; ++i) {
      const absl::Duration delay = BackoffDelay(attempt, policy);
      ASSERT_GE(delay, d / 2) << attempt;
      ASSERT_LE(delay, d) << attempt;
    }
  }
}

TEST(BackoffDelayTest, IsJittered) {
  absl::Duration low = absl::InfiniteDuration();
  absl::Duration high = absl::ZeroDuration();
  for (int i = 0; i < 1000; ++i) {
    const absl::Duration delay = BackoffDelay(3);
    low = std::min(low, delay);
    high = std::max(high, delay);
  }
  // Uniform over [400 ms, 800 ms]: 1000 draws spread over most of it.
  EXPECT_LT(low, absl::Milliseconds(450));
  EXPECT_GT(high, absl::Milliseconds(750));
}

TEST(BackoffDelayTest, HugeAttemptNumbersStayAtTheCap) {
  const BackoffPolicy policy{
      .initial = absl::Milliseconds(100), .multiplier = 3.0, .max = absl::Seconds(2)};
  for (int attempt : {20, 1000, 1 << 30}) {
    const absl::Duration delay = BackoffDelay(attempt, policy);
    EXPECT_GE(delay, absl::Seconds(1)) << attempt;
    EXPECT_LE(delay, absl::Seconds(2)) << attempt;
  }
}

TEST(BackoffDelayTest, DegeneratePolicies) {
  // Attempt numbers below 1 count as the first retry.
  EXPECT_LE(BackoffDelay(0), absl::Milliseconds(200));
  EXPECT_GE(BackoffDelay(-3), absl::Milliseconds(100));
  // No growth: every pause is around `initial`.
  const BackoffPolicy flat{.initial = absl::Seconds(1), .multiplier = 1.0};
  EXPECT_LE(BackoffDelay(1 << 30, flat), absl::Seconds(1));
  // A first pause over the cap is capped.
  const BackoffPolicy capped{.initial = absl::Seconds(10), .max = absl::Seconds(4)};
  EXPECT_LE(BackoffDelay(1, capped), absl::Seconds(4));
  EXPECT_GE(BackoffDelay(1, capped), absl::Seconds(2));
  // Zero or negative pauses are zero.
  EXPECT_EQ(BackoffDelay(5, {.initial = absl::ZeroDuration()}), absl::ZeroDuration());
  EXPECT_EQ(BackoffDelay(5, {.initial = absl::Seconds(-1)}), absl::ZeroDuration());
  EXPECT_EQ(BackoffDelay(5, {.max = absl::ZeroDuration()}), absl::ZeroDuration());
}

TEST(BackoffDelayTest, IsThreadSafe) {
  std::atomic<int> out_of_range{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&] {
      for (int i = 0; i < 10000; ++i) {
        const absl::Duration delay = BackoffDelay(2);
        if (delay < absl::Milliseconds(200) || delay > absl::Milliseconds(400)) ++out_of_range;
      }
    });
  }
  for (auto& thread : threads) thread.join();
  EXPECT_EQ(out_of_range.load(), 0);
}

}  // namespace
}  // namespace defender
