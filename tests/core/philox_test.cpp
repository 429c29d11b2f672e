#include <gtest/gtest.h>

#include <cmath>
#include <set>

#include "lib/core/philox.h"

namespace electra {
namespace {

TEST(Philox, MatchesRandom123KnownAnswer) {
  // Known-answer vectors of Philox4x32-10 from the Random123 distribution (kat_vectors).
  Philox4x32 zero = philox4x32_10(0, 0, 0, 0, 0, 0);
  EXPECT_EQ(zero.v[0], 0x6627e8d5u);
  EXPECT_EQ(zero.v[1], 0xe169c58du);
  EXPECT_EQ(zero.v[2], 0xbc57ac4cu);
  EXPECT_EQ(zero.v[3], 0x9b00dbd8u);
  Philox4x32 ones = philox4x32_10(0xffffffffu, 0xffffffffu, 0xffffffffu, 0xffffffffu, 0xffffffffu, 0xffffffffu);
  EXPECT_EQ(ones.v[0], 0x408f276du);
  EXPECT_EQ(ones.v[1], 0x41c83b0eu);
  EXPECT_EQ(ones.v[2], 0xa20bc7c6u);
  EXPECT_EQ(ones.v[3], 0x6d5451fdu);
  Philox4x32 pi = philox4x32_10(0x243f6a88u, 0x85a308d3u, 0x13198a2eu, 0x03707344u, 0xa4093822u, 0x299f31d0u);
  EXPECT_EQ(pi.v[0], 0xd16cfe09u);
  EXPECT_EQ(pi.v[1], 0x94fdccebu);
  EXPECT_EQ(pi.v[2], 0x5001e420u);
  EXPECT_EQ(pi.v[3], 0x24126ea1u);
}

TEST(Philox, StreamsDifferByEveryKeyPart) {
  const PhiloxStream base(7, RandomPurpose::kDropout, 3, 11, 2);
  std::set<uint32_t> seen{base.at(0)};
  seen.insert(PhiloxStream(8, RandomPurpose::kDropout, 3, 11, 2).at(0));
  seen.insert(PhiloxStream(7, RandomPurpose::kMasking, 3, 11, 2).at(0));
  seen.insert(PhiloxStream(7, RandomPurpose::kDropout, 4, 11, 2).at(0));
  seen.insert(PhiloxStream(7, RandomPurpose::kDropout, 3, 12, 2).at(0));
  seen.insert(PhiloxStream(7, RandomPurpose::kDropout, 3, 11, 3).at(0));
  seen.insert(base.at(1));
  EXPECT_EQ(seen.size(), 7u);
  EXPECT_EQ(base.at(5), PhiloxStream(7, RandomPurpose::kDropout, 3, 11, 2).at(5));
}

TEST(Philox, UniformMomentsAndRange) {
  PhiloxSequence seq(1, RandomPurpose::kTest, 0, 0);
  const int n = 200000;
  double sum = 0, sum_sq = 0;
  for (int i = 0; i < n; ++i) {
    const float u = seq.next_uniform();
    ASSERT_GE(u, 0.0f);
    ASSERT_LT(u, 1.0f);
    sum += u;
    sum_sq += u * u;
  }
  EXPECT_NEAR(sum / n, 0.5, 0.005);
  EXPECT_NEAR(sum_sq / n - (sum / n) * (sum / n), 1.0 / 12.0, 0.002);
  const PhiloxStream stream(1, RandomPurpose::kTest, 0, 0);
  double gumbel_sum = 0;
  for (int i = 0; i < n; ++i) {
    const double u = stream.uniform_open(i);
    ASSERT_GT(u, 0.0);
    ASSERT_LT(u, 1.0);
    gumbel_sum += stream.gumbel(i);
  }
  EXPECT_NEAR(gumbel_sum / n, 0.5772156649, 0.01);  // Euler-Mascheroni constant
}

}  // namespace
}  // namespace electra
