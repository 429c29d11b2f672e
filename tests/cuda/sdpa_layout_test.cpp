// The plain logic behind cuDNN SDPA (lib/backend/cuda/sdpa_cudnn.h), run on the CPU: the strided views
// cuDNN gets of our packed buffers, the mask -> sequence length rule and its right-padding and
// packed-row checks, which dqkv elements are padding-key gradients, the support rules and the plan-cache
// key. Runs everywhere.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <map>
#include <set>
#include <string>
#include <tuple>
#include <vector>

#include "lib/backend/cuda/sdpa_cudnn.h"
#include "tests/backend/test_util.h"

namespace electra::test {
namespace {

using cuda::sdpa::Operand;
using cuda::sdpa::TensorView;

struct Shape {
  int B, S, H, D;
};
const Shape kShapes[] = {{1, 1, 1, 8}, {2, 5, 3, 8}, {3, 7, 2, 16}, {2, 4, 4, 24}};

// Every element of the view, in logical [d0, d1, d2, d3] order.
std::vector<int64_t> offsets_of(const TensorView& v) {
  std::vector<int64_t> out;
  for (int64_t a = 0; a < v.dims[0]; ++a)
    for (int64_t b = 0; b < v.dims[1]; ++b)
      for (int64_t c = 0; c < v.dims[2]; ++c)
        for (int64_t d = 0; d < v.dims[3]; ++d) out.push_back(cuda::sdpa::element_offset(v, a, b, c, d));
  return out;
}

TEST(CudaSdpaLayout, PackedQkvViewsAddressTheRightElements) {
  for (const Shape& s : kShapes) {
    const Operand operands[] = {Operand::kQuery, Operand::kKey, Operand::kValue};
    std::multiset<int64_t> covered;
    for (int which = 0; which < 3; ++which) {
      const TensorView v = cuda::sdpa::packed_qkv_view(operands[which], s.B, s.S, s.H, s.D);
      ASSERT_EQ(v.dims[0], s.B);
      ASSERT_EQ(v.dims[1], s.H);
      ASSERT_EQ(v.dims[2], s.S);
      ASSERT_EQ(v.dims[3], s.D);
      EXPECT_EQ(v.strides[3], 1) << "cuDNN needs the head dimension contiguous";
      for (int b = 0; b < s.B; ++b)
        for (int h = 0; h < s.H; ++h)
          for (int t = 0; t < s.S; ++t)
            for (int d = 0; d < s.D; ++d) {
              // qkv[b, t, which, h, d] of the packed [B,S,3,H,D] buffer.
              const int64_t want = (((static_cast<int64_t>(b) * s.S + t) * 3 + which) * s.H + h) * s.D + d;
              ASSERT_EQ(cuda::sdpa::element_offset(v, b, h, t, d), want)
                  << "operand " << which << " b=" << b << " h=" << h << " s=" << t << " d=" << d;
            }
      for (int64_t o : offsets_of(v)) covered.insert(o);
    }
    // Q, K and V together cover the buffer exactly once.
    const int64_t n = 3LL * s.B * s.S * s.H * s.D;
    ASSERT_EQ(static_cast<int64_t>(covered.size()), n);
    int64_t expect = 0;
    for (int64_t o : covered) ASSERT_EQ(o, expect++);
  }
}

TEST(CudaSdpaLayout, ContextAndStatsViews) {
  for (const Shape& s : kShapes) {
    const TensorView c = cuda::sdpa::context_view(s.B, s.S, s.H, s.D);
    const TensorView st = cuda::sdpa::stats_view(s.B, s.S, s.H);
    EXPECT_EQ(st.dims[3], 1);
    for (int b = 0; b < s.B; ++b)
      for (int h = 0; h < s.H; ++h)
        for (int t = 0; t < s.S; ++t) {
          for (int d = 0; d < s.D; ++d) {
            const int64_t want = ((static_cast<int64_t>(b) * s.S + t) * s.H + h) * s.D + d;  // [B,S,H,D]
            ASSERT_EQ(cuda::sdpa::element_offset(c, b, h, t, d), want);
          }
          ASSERT_EQ(cuda::sdpa::element_offset(st, b, h, t, 0), (static_cast<int64_t>(b) * s.H + h) * s.S + t);
        }
    const TensorView len = cuda::sdpa::sequence_lengths_view(s.B);
    EXPECT_EQ(len.dims[0], s.B);
    EXPECT_EQ(len.dims[1] * len.dims[2] * len.dims[3], 1);
    for (int b = 0; b < s.B; ++b) EXPECT_EQ(cuda::sdpa::element_offset(len, b, 0, 0, 0), b);
  }
}

TEST(CudaSdpaLayout, KvLengthsStartAligned) {
  for (int B = 1; B <= 40; ++B) {
    const size_t at = cuda::sdpa::kv_lengths_offset(B);
    EXPECT_GE(at, static_cast<size_t>(B));                  // after the q lengths
    EXPECT_LT(at, static_cast<size_t>(B) + 4);              // no more padding than needed
    EXPECT_EQ(at * sizeof(int32_t) % 16, 0u) << "B=" << B;  // cuDNN's 16-byte alignment
  }
}

using cuda::sdpa::MaskRow;

std::tuple<int, MaskRow> length_of(const std::vector<int32_t>& row) {
  MaskRow kind = MaskRow::kRightPadded;
  const int n = cuda::sdpa::key_length(row.data(), static_cast<int>(row.size()), &kind);
  return {n, kind};
}
bool right_padded(const std::vector<int32_t>& row) { return std::get<1>(length_of(row)) == MaskRow::kRightPadded; }

TEST(CudaSdpaLayout, KeyLengthOfRightPaddedMasks) {
  EXPECT_EQ(length_of({1, 1, 1, 1}), std::make_tuple(4, MaskRow::kRightPadded));
  EXPECT_EQ(length_of({1, 1, 0, 0}), std::make_tuple(2, MaskRow::kRightPadded));
  EXPECT_EQ(length_of({1, 0, 0, 0}), std::make_tuple(1, MaskRow::kRightPadded));
  EXPECT_EQ(length_of({1}), std::make_tuple(1, MaskRow::kRightPadded));
  // One example under another number is still one example.
  EXPECT_EQ(length_of({3, 3, 3, 0}), std::make_tuple(3, MaskRow::kRightPadded));
}

TEST(CudaSdpaLayout, KeyLengthRejectsMasksThatAreNotRightPadding) {
  EXPECT_FALSE(right_padded({0, 0, 0}));  // no key at all
  EXPECT_FALSE(right_padded({0}));
  EXPECT_EQ(std::get<1>(length_of({1, 0, 1, 0})), MaskRow::kNotRightPadded);  // a hole
  EXPECT_EQ(std::get<1>(length_of({0, 1, 1, 1})), MaskRow::kNotRightPadded);  // left padding
  EXPECT_EQ(std::get<1>(length_of({1, 1, 1, 0, 0, 1})), MaskRow::kNotRightPadded);
  // Random 0/1 rows: the answer agrees with a direct reading of the rule.
  const std::vector<int32_t> bits = random_ints(64 * 9, 7, 0, 2);
  for (int r = 0; r < 64; ++r) {
    const std::vector<int32_t> row(bits.begin() + r * 9, bits.begin() + (r + 1) * 9);
    int prefix = 0;
    while (prefix < 9 && row[prefix] != 0) ++prefix;
    int later_ones = 0;
    for (int j = prefix; j < 9; ++j) later_ones += row[j] != 0;
    const MaskRow want = prefix > 0 && later_ones == 0 ? MaskRow::kRightPadded : MaskRow::kNotRightPadded;
    EXPECT_EQ(length_of(row), std::make_tuple(prefix, want)) << "row " << r;
  }
}

// Several examples in a row (sequence packing): block-diagonal attention, which no key length expresses.
// Flagged as packed even where the row would also fail as padding.
TEST(CudaSdpaLayout, KeyLengthFlagsPackedRows) {
  EXPECT_EQ(length_of({1, 1, 2, 2, 2, 0}), std::make_tuple(2, MaskRow::kPacked));
  EXPECT_EQ(length_of({1, 2, 3, 3}), std::make_tuple(1, MaskRow::kPacked));
  EXPECT_EQ(std::get<1>(length_of({1, 1, 0, 2})), MaskRow::kPacked);
  EXPECT_EQ(std::get<1>(length_of({0, 1, 2})), MaskRow::kPacked);
  EXPECT_EQ(std::get<1>(length_of({2, -1, 7, 0})), MaskRow::kPacked);
  // The shared packed layout of the backend tests: every row with two or more examples is flagged.
  const int B = 6, S = 40;
  const PackedRows packed = packed_rows(B, S);
  for (int b = 0; b < B; ++b) {
    const std::vector<int32_t> row(packed.mask.begin() + b * S, packed.mask.begin() + (b + 1) * S);
    const int32_t examples = *std::max_element(row.begin(), row.end());
    EXPECT_EQ(std::get<1>(length_of(row)), examples > 1 ? MaskRow::kPacked : MaskRow::kRightPadded) << "row " << b;
  }
}

TEST(CudaSdpaLayout, PaddingKeyGradientsAreTheKeyAndValueRowsPastTheLength) {
  const int B = 3, S = 5, H = 2, D = 8;
  const std::vector<int32_t> lengths = {5, 2, 1};
  size_t padding = 0;
  for (size_t i = 0; i < 3ull * B * S * H * D; ++i) {
    const size_t d = i % D, h = i / D % H, which = i / (D * H) % 3, t = i / (3 * D * H) % S, b = i / (3 * D * H * S);
    (void)d, (void)h;
    const bool want = which != 0 && static_cast<int>(t) >= lengths[b];
    ASSERT_EQ(cuda::sdpa::is_padding_key_gradient(i, S, H, D, lengths.data()), want) << "element " << i;
    padding += want;
  }
  EXPECT_EQ(padding, static_cast<size_t>((0 + 3 + 4) * 2 * H * D));  // K and V of the padding keys
}

TEST(CudaSdpaLayout, SupportRules) {
  using cuda::sdpa::unsupported_reason;
  const auto bf16 = CudaPrecision::kBf16, fp16 = CudaPrecision::kFp16;
  EXPECT_EQ(unsupported_reason(bf16, 8, 4, 128, 4, 64, 0.0f), "");
  EXPECT_EQ(unsupported_reason(fp16, 9, 1, 1, 1, 8, 0.0f), "");
  EXPECT_EQ(unsupported_reason(bf16, 9, 2, 512, 12, 128, 0.0f), "");
  EXPECT_NE(unsupported_reason(CudaPrecision::kFp32, 9, 4, 128, 4, 64, 0.0f).find("precision"), std::string::npos);
  EXPECT_NE(unsupported_reason(CudaPrecision::kTf32, 9, 4, 128, 4, 64, 0.0f), "");
  EXPECT_NE(unsupported_reason(bf16, 9, 4, 128, 4, 64, 0.1f).find("dropout"), std::string::npos);
  EXPECT_NE(unsupported_reason(bf16, 9, 4, 128, 4, 60, 0.0f).find("head size"), std::string::npos);
  EXPECT_NE(unsupported_reason(bf16, 9, 4, 128, 4, 136, 0.0f), "");
  EXPECT_NE(unsupported_reason(bf16, 9, 4, 128, 4, 256, 0.0f), "");
  EXPECT_NE(unsupported_reason(bf16, 7, 4, 128, 4, 64, 0.0f).find("compute capability"), std::string::npos);
  EXPECT_NE(unsupported_reason(bf16, 9, 0, 128, 4, 64, 0.0f), "");
  EXPECT_NE(unsupported_reason(bf16, 9, 4, 0, 4, 64, 0.0f), "");
}

TEST(CudaSdpaLayout, PlanKeysSeparateEveryField) {
  using cuda::sdpa::PlanKey;
  const PlanKey base{2, 128, 4, 64, CudaPrecision::kBf16, false};
  const PlanKey variants[] = {
      {3, 128, 4, 64, CudaPrecision::kBf16, false}, {2, 64, 4, 64, CudaPrecision::kBf16, false},
      {2, 128, 8, 64, CudaPrecision::kBf16, false}, {2, 128, 4, 32, CudaPrecision::kBf16, false},
      {2, 128, 4, 64, CudaPrecision::kFp16, false}, {2, 128, 4, 64, CudaPrecision::kBf16, true},
  };
  std::map<PlanKey, int> cache;
  cache[base] = 0;
  for (int i = 0; i < 6; ++i) {
    EXPECT_FALSE(variants[i] == base) << "variant " << i;
    cache[variants[i]] = i + 1;
  }
  EXPECT_EQ(cache.size(), 7u);
  EXPECT_EQ(cache.at(PlanKey{2, 128, 4, 64, CudaPrecision::kBf16, false}), 0);
  EXPECT_EQ(cache.at(PlanKey{2, 128, 4, 64, CudaPrecision::kBf16, true}), 6);
  EXPECT_NE(cuda::sdpa::to_string(variants[5]).find("backward"), std::string::npos);
  EXPECT_NE(cuda::sdpa::to_string(base).find("B=2 S=128 H=4 D=64 bf16"), std::string::npos);
}

}  // namespace
}  // namespace electra::test
