// The CPU backend (float and double) beyond parity: every op against its double loops is in the parity table
// (tests/backend/parity: the cpu_double and cpu_float columns). Here: activation names, memory alignment,
// argument errors, and the bit-for-bit equality of calls that skip or alias outputs with the plain call.
#include <gtest/gtest.h>

#include <cstdint>
#include <limits>
#include <vector>

#include "lib/backend/backend.h"
#include "lib/core/error.h"
#include "tests/backend/test_util.h"

namespace electra::test {
namespace {

template <typename T>
class BackendOps : public ::testing::Test {
 protected:
  std::unique_ptr<Backend<T>> be = make_cpu_backend<T>();
};
using Types = ::testing::Types<float, double>;
TYPED_TEST_SUITE(BackendOps, Types);

TEST(BackendActivation, ParseAndPrint) {
  EXPECT_EQ(parse_activation("gelu"), Activation::kGelu);
  EXPECT_EQ(parse_activation("relu"), Activation::kRelu);
  EXPECT_EQ(parse_activation("tanh"), Activation::kTanh);
  EXPECT_EQ(parse_activation("none"), Activation::kNone);
  EXPECT_EQ(parse_activation("linear"), Activation::kNone);
  EXPECT_THROW(parse_activation("swish"), Error);
  for (Activation a : {Activation::kNone, Activation::kGelu, Activation::kRelu, Activation::kTanh}) {
    EXPECT_EQ(parse_activation(to_string(a)), a);
  }
}

TYPED_TEST(BackendOps, MemoryIsAligned) {
  auto& be = *this->be;
  EXPECT_EQ(be.device(), DeviceKind::kCpu);
  TypeParam* buf = be.allocate(1001);
  int32_t* ints = be.allocate_ints(13);
  uint8_t* bytes = be.allocate_bytes(7);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(buf) % 64, 0u);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(ints) % 64, 0u);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(bytes) % 64, 0u);
  be.deallocate(buf);
  be.deallocate_ints(ints);
  be.deallocate_bytes(bytes);
}

// The CPU backend checks indices and leading dimensions before running an op.
TYPED_TEST(BackendOps, InvalidArgumentsAreRefused) {
  using T = TypeParam;
  auto& be = *this->be;
  std::vector<T> out(64), table(64, T(0.5));
  EXPECT_THROW(be.gemm(Transpose::kNo, Transpose::kNo, 4, 5, 3, T(1), nullptr, 2, nullptr, 5, T(0), out.data(), 5),
               Error);  // lda < k
  const std::vector<int32_t> ids = {0, 1, -1, 2}, types = {0, 0, 1, 1};
  EXPECT_THROW(
      be.embedding_forward(out.data(), ids.data(), types.data(), nullptr, table.data(), nullptr, nullptr, 1, 4, 8),
      Error);
  const std::vector<int32_t> positions = {0, 4};
  EXPECT_THROW(be.gather_rows(out.data(), table.data(), positions.data(), 1, 4, 2, 8), Error);
  const std::vector<int32_t> labels = {0, 8};
  EXPECT_THROW(be.softmax_cross_entropy(out.data(), nullptr, nullptr, table.data(), labels.data(), nullptr, 2, 8),
               Error);
}

// dlogits over the logits and a LayerNorm backward without parameter gradients give the plain call's bits.
TYPED_TEST(BackendOps, AliasedAndSkippedOutputsGiveThePlainBits) {
  using T = TypeParam;
  auto& be = *this->be;
  const int rows = 9, V = 1031;
  const auto logits = cast<T>(random_values(rows * V, 1, -8.0, 8.0));
  const auto labels = random_ints(rows, 2, 0, V);
  const auto scale = cast<T>(random_values(rows, 3, 0.0, 2.0));
  std::vector<T> loss(rows), dlogits(rows * V), loss_in_place(rows), in_place = logits;
  be.softmax_cross_entropy(loss.data(), dlogits.data(), nullptr, logits.data(), labels.data(), scale.data(), rows, V);
  be.softmax_cross_entropy(loss_in_place.data(), in_place.data(), nullptr, in_place.data(), labels.data(), scale.data(),
                           rows, V);
  EXPECT_EQ(loss_in_place, loss);
  EXPECT_EQ(in_place, dlogits);

  const int cols = 33;
  const auto x = cast<T>(random_values(rows * cols, 4, -2.0, 3.0)), gamma = cast<T>(random_values(cols, 5));
  const auto dy = cast<T>(random_values(rows * cols, 6));
  std::vector<T> y(rows * cols), mean(rows), rstd(rows), dx(rows * cols), dx_only(rows * cols), dg(cols), db(cols);
  be.layernorm_forward(y.data(), mean.data(), rstd.data(), x.data(), gamma.data(), gamma.data(), rows, cols, T(1e-5));
  be.layernorm_backward(dx.data(), dg.data(), db.data(), dy.data(), x.data(), mean.data(), rstd.data(), gamma.data(),
                        rows, cols);
  be.layernorm_backward(dx_only.data(), nullptr, nullptr, dy.data(), x.data(), mean.data(), rstd.data(), gamma.data(),
                        rows, cols);
  EXPECT_EQ(dx_only, dx);
}

}  // namespace
}  // namespace electra::test
