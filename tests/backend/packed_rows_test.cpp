// Sequence packing on the CPU reference: a row holding several examples (backend.h's attention mask k > 0 per
// example, position ids restarting per example) gives each example what it gets alone in an unpadded row:
// attention context and dqkv (materialised and fused, dropout 0) to rounding, embeddings bit for bit.
#include <gtest/gtest.h>

#include <algorithm>
#include <vector>

#include "lib/backend/backend.h"
#include "tests/backend/test_util.h"

namespace electra::test {
namespace {

template <typename T>
class PackedRowsTest : public ::testing::Test {
 protected:
  std::unique_ptr<Backend<T>> be = make_cpu_backend<T>();
  // Packed and separate rows sum the same terms, the packed ones with exact zeros between them, in other
  // SIMD lane orders.
  static constexpr double kRel = sizeof(T) == 4 ? 1e-5 : 1e-12;
};
using Types = ::testing::Types<float, double>;
TYPED_TEST_SUITE(PackedRowsTest, Types);

// Row 0: examples of 5, 3 and 1 tokens, 2 padding; row 1: one example of 7 tokens, 4 padding.
constexpr int kB = 2, kS = 11, kH = 2, kD = 4;
const std::vector<std::vector<int>> kLengths = {{5, 3, 1}, {7}};

struct Example {
  int b, start, length;
};
std::vector<Example> examples() {
  std::vector<Example> out;
  for (int b = 0; b < kB; ++b) {
    int start = 0;
    for (int length : kLengths[b]) {
      out.push_back({b, start, length});
      start += length;
    }
  }
  return out;
}

// Rows [start, start + length) of row b of a [B,S,width] tensor.
template <typename T>
std::vector<T> slice(const std::vector<T>& x, const Example& e, size_t width) {
  const auto first = x.begin() + static_cast<std::ptrdiff_t>((static_cast<size_t>(e.b) * kS + e.start) * width);
  return std::vector<T>(first, first + static_cast<std::ptrdiff_t>(e.length * width));
}

template <typename T>
struct AttentionRun {
  std::vector<T> ctx, dqkv;
};
// Materialised or fused attention forward and backward, dropout 0.
template <typename T>
AttentionRun<T> attention(Backend<T>& be, bool fused, const std::vector<T>& qkv, const std::vector<T>& dctx,
                          const int32_t* mask, int B, int S) {
  const size_t probs = static_cast<size_t>(B) * kH * S * S;
  AttentionRun<T> r{std::vector<T>(dctx.size()), std::vector<T>(qkv.size())};
  const DropoutKey key{.elements_per_example = static_cast<uint64_t>(kH) * S * S};
  if (fused) {
    std::vector<T> stats(static_cast<size_t>(B) * kH * S);
    be.fused_attention_forward(r.ctx.data(), stats.data(), qkv.data(), mask, B, S, kH, kD, 0.0f, key);
    be.fused_attention_backward(r.dqkv.data(), dctx.data(), qkv.data(), r.ctx.data(), stats.data(), mask, B, S, kH, kD,
                                0.0f, key);
  } else {
    std::vector<T> p(probs), scratch(probs);
    be.attention_forward(r.ctx.data(), p.data(), nullptr, qkv.data(), mask, B, S, kH, kD, 0.0f, key);
    be.attention_backward(r.dqkv.data(), scratch.data(), dctx.data(), qkv.data(), p.data(), nullptr, mask, B, S, kH, kD,
                          0.0f);
  }
  return r;
}

TYPED_TEST(PackedRowsTest, AttentionEqualsSeparateRows) {
  using T = TypeParam;
  const size_t qkv_width = 3 * kH * kD, ctx_width = kH * kD;
  const PackedRows packed = packed_rows(kLengths, kS);
  const auto qkv = cast<T>(random_values(kB * kS * qkv_width, 1, -2.0, 2.0));
  // No gradient reaches padding outputs (as in the model, whose losses skip padding).
  auto dctx = cast<T>(random_values(kB * kS * ctx_width, 2));
  for (size_t t = 0; t < packed.mask.size(); ++t) {
    if (packed.mask[t] == 0) std::fill_n(dctx.begin() + static_cast<std::ptrdiff_t>(t * ctx_width), ctx_width, T(0));
  }
  for (bool fused : {false, true}) {
    const AttentionRun<T> row = attention(*this->be, fused, qkv, dctx, packed.mask.data(), kB, kS);
    for (const Example& e : examples()) {
      const AttentionRun<T> alone =
          attention(*this->be, fused, slice(qkv, e, qkv_width), slice(dctx, e, ctx_width), nullptr, 1, e.length);
      const auto ctx = to_double(alone.ctx), dqkv = to_double(alone.dqkv);
      EXPECT_TRUE(all_near(slice(row.ctx, e, ctx_width), ctx, this->kRel, this->kRel * max_abs(ctx)))
          << "context, fused " << fused << ", row " << e.b << " start " << e.start;
      EXPECT_TRUE(all_near(slice(row.dqkv, e, qkv_width), dqkv, this->kRel, this->kRel * max_abs(dqkv)))
          << "dqkv, fused " << fused << ", row " << e.b << " start " << e.start;
    }
    // Padding tokens get no gradient: no query attends them, and their own queries get none.
    for (size_t t = 0; t < packed.mask.size(); ++t) {
      if (packed.mask[t] != 0) continue;
      for (size_t i = 0; i < qkv_width; ++i) ASSERT_EQ(row.dqkv[t * qkv_width + i], T(0)) << t << " fused " << fused;
    }
    // A padding query attends every real key of its row, as with a 0/1 mask: the same bits.
    std::vector<int32_t> ones(packed.mask.size());
    for (size_t t = 0; t < ones.size(); ++t) ones[t] = packed.mask[t] != 0 ? 1 : 0;
    const AttentionRun<T> flat = attention(*this->be, fused, qkv, dctx, ones.data(), kB, kS);
    for (size_t t = 0; t < packed.mask.size(); ++t) {
      if (packed.mask[t] != 0) continue;
      for (size_t i = 0; i < ctx_width; ++i) ASSERT_EQ(row.ctx[t * ctx_width + i], flat.ctx[t * ctx_width + i]) << t;
    }
  }
}

TYPED_TEST(PackedRowsTest, EmbeddingsEqualSeparateRows) {
  using T = TypeParam;
  const int E = 5, V = 9, types = 2;
  const PackedRows packed = packed_rows(kLengths, kS);
  const auto word = cast<T>(random_values(V * E, 1)), position = cast<T>(random_values(kS * E, 2)),
             type = cast<T>(random_values(types * E, 3));
  auto ids = random_ints(kB * kS, 4, 0, V);
  const auto type_ids = random_ints(kB * kS, 5, 0, types);
  auto dout = cast<T>(random_values(kB * kS * E, 6));
  for (size_t t = 0; t < packed.mask.size(); ++t) {
    if (packed.mask[t] != 0) continue;
    ids[t] = 0;  // [PAD], whose gradient rows get +0
    std::fill_n(dout.begin() + static_cast<std::ptrdiff_t>(t * E), E, T(0));
  }
  std::vector<T> out(dout.size());
  std::vector<T> dword(V * E, T(0)), dposition(kS * E, T(0)), dtype(types * E, T(0));
  this->be->embedding_forward(out.data(), ids.data(), type_ids.data(), packed.position_ids.data(), word.data(),
                              position.data(), type.data(), kB, kS, E);
  this->be->embedding_backward(dword.data(), dposition.data(), dtype.data(), dout.data(), ids.data(), type_ids.data(),
                               packed.position_ids.data(), kB, kS, E);
  // The examples alone, their gradients added in the packed rows' token order: the same sums.
  std::vector<T> dword_alone(dword.size(), T(0)), dposition_alone(dposition.size(), T(0)),
      dtype_alone(dtype.size(), T(0));
  for (const Example& e : examples()) {
    const auto ids_e = slice(ids, e, 1), types_e = slice(type_ids, e, 1);
    std::vector<T> alone(static_cast<size_t>(e.length) * E);
    this->be->embedding_forward(alone.data(), ids_e.data(), types_e.data(), nullptr, word.data(), position.data(),
                                type.data(), 1, e.length, E);
    EXPECT_EQ(slice(out, e, E), alone) << "row " << e.b << " start " << e.start;
    const auto dout_e = slice(dout, e, E);
    this->be->embedding_backward(dword_alone.data(), dposition_alone.data(), dtype_alone.data(), dout_e.data(),
                                 ids_e.data(), types_e.data(), nullptr, 1, e.length, E);
  }
  EXPECT_EQ(dword, dword_alone);
  EXPECT_EQ(dposition, dposition_alone);
  EXPECT_EQ(dtype, dtype_alone);
}

}  // namespace
}  // namespace electra::test
