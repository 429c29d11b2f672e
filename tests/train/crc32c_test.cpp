#include "lib/train/crc32c.h"

#include <gtest/gtest.h>

#include <random>
#include <string>
#include <vector>

namespace electra::train {
namespace {

// Bit-at-a-time CRC-32C: the obvious twin of the table-driven one.
uint32_t crc32c_bitwise(const unsigned char* data, size_t size) {
  uint32_t crc = 0xFFFFFFFFu;
  for (size_t i = 0; i < size; ++i) {
    crc ^= data[i];
    for (int bit = 0; bit < 8; ++bit) crc = (crc & 1) ? (crc >> 1) ^ 0x82F63B78u : crc >> 1;
  }
  return ~crc;
}

TEST(Crc32c, CheckValue) {
  const std::string text = "123456789";
  EXPECT_EQ(crc32c(text.data(), text.size()), 0xE3069283u);
  EXPECT_EQ(crc32c(nullptr, 0), 0u);
}

// RFC 3720 (iSCSI) appendix B.4 test vectors.
TEST(Crc32c, Rfc3720Vectors) {
  std::vector<unsigned char> data(32, 0x00);
  EXPECT_EQ(crc32c(data.data(), data.size()), 0x8A9136AAu);
  std::fill(data.begin(), data.end(), 0xFF);
  EXPECT_EQ(crc32c(data.data(), data.size()), 0x62A8AB43u);
  for (int i = 0; i < 32; ++i) data[i] = static_cast<unsigned char>(i);
  EXPECT_EQ(crc32c(data.data(), data.size()), 0x46DD794Eu);
  for (int i = 0; i < 32; ++i) data[i] = static_cast<unsigned char>(31 - i);
  EXPECT_EQ(crc32c(data.data(), data.size()), 0x113FDB5Cu);
}

TEST(Crc32c, MatchesBitwiseAtEveryLengthAndAlignment) {
  std::mt19937 rng(5);
  std::vector<unsigned char> data(300);
  for (auto& b : data) b = static_cast<unsigned char>(rng());
  for (size_t start = 0; start < 9; ++start) {
    for (size_t size = 0; start + size <= data.size(); size += 1 + size / 8) {
      ASSERT_EQ(crc32c(data.data() + start, size), crc32c_bitwise(data.data() + start, size))
          << "start " << start << " size " << size;
    }
  }
}

TEST(Crc32c, ContinuesOverSplitData) {
  const std::string text = "The quick brown fox jumps over the lazy dog";
  for (size_t split = 0; split <= text.size(); ++split) {
    EXPECT_EQ(crc32c(text.data() + split, text.size() - split, crc32c(text.data(), split)),
              crc32c(text.data(), text.size()));
  }
}

TEST(Crc32c, Mask) {
  // ((crc >> 15) | (crc << 17)) + 0xa282ead8, computed by hand for two values.
  EXPECT_EQ(mask_crc32c(0u), 0xA282EAD8u);
  EXPECT_EQ(mask_crc32c(0xE3069283u), ((0xE3069283u >> 15) | (0xE3069283u << 17)) + 0xA282EAD8u);
  EXPECT_EQ(mask_crc32c(0x00008000u), 0x00000001u + 0xA282EAD8u);
}

}  // namespace
}  // namespace electra::train
