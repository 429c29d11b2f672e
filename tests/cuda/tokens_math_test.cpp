// replace_masked_tokens on the CPU (runs everywhere): the CPU backend against a straightforward
// reference (a map of the last weighted sample per position), with duplicate positions, zero and negative
// weights, ignored out-of-range positions of unweighted predictions, samples equal to the original and
// padding; the per-token functions of the CUDA kernel (tokens_math.h) against the CPU backend.
#include "lib/backend/cuda/tokens_math.h"

#include <gtest/gtest.h>

#include <map>
#include <memory>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "lib/backend/backend.h"
#include "lib/core/error.h"
#include "tests/backend/test_util.h"

namespace electra::test {
namespace {

struct TokenCase {
  int B, S, P;
  std::vector<int32_t> original, mask, positions, samples;
  std::vector<double> weights;
};

// Random inputs with every special case present: rows with repeated positions, zero and negative weights
// (some at positions outside [0, S), which must be ignored), samples equal to the original, padding.
TokenCase make_case(int B, int S, int P, uint64_t id) {
  TokenCase c{B, S, P, random_ints(static_cast<size_t>(B) * S, id, 0, 50), {}, {}, {}, {}};
  c.mask.assign(c.original.size(), 1);
  for (int b = 0; b < B; ++b) {
    for (int s = S - 1 - b % 3; s < S; ++s) c.mask[b * S + s] = 0;  // trailing padding
  }
  c.positions = random_ints(static_cast<size_t>(B) * P, id + 1, 0, S / 2);  // half the range: duplicates
  c.samples = random_ints(static_cast<size_t>(B) * P, id + 2, 0, 50);
  const std::vector<int32_t> kind = random_ints(static_cast<size_t>(B) * P, id + 3, 0, 6);
  c.weights.resize(static_cast<size_t>(B) * P);
  for (size_t i = 0; i < c.weights.size(); ++i) {
    const int b = static_cast<int>(i) / P;
    c.weights[i] = kind[i] == 0 ? 0.0 : kind[i] == 1 ? -1.0 : 1.0;
    if (kind[i] == 0 && i % 2 == 0) c.positions[i] = i % 4 == 0 ? -3 : S + 5;  // ignored: weight 0
    if (kind[i] == 2) c.samples[i] = c.original[b * S + c.positions[i]];       // a "replacement" that is real
    if (kind[i] == 3) c.positions[i] = S - 1;                                  // into the padding
  }
  return c;
}

// The contract read literally: the last weighted sample per (row, position) wins.
std::pair<std::vector<int32_t>, std::vector<int32_t>> reference(const TokenCase& c) {
  std::map<std::pair<int, int>, int32_t> replaced;
  for (int b = 0; b < c.B; ++b) {
    for (int p = 0; p < c.P; ++p) {
      const size_t i = static_cast<size_t>(b) * c.P + p;
      if (c.weights[i] > 0) replaced[{b, c.positions[i]}] = c.samples[i];
    }
  }
  std::vector<int32_t> corrupted(c.original), label(c.original.size());
  for (const auto& [where, sample] : replaced) corrupted[where.first * c.S + where.second] = sample;
  for (size_t i = 0; i < label.size(); ++i) label[i] = c.mask[i] != 0 && corrupted[i] != c.original[i];
  return {corrupted, label};
}

template <typename T>
std::pair<std::vector<int32_t>, std::vector<int32_t>> run_cpu(const TokenCase& c) {
  auto be = make_cpu_backend<T>();
  std::vector<T> weights(c.weights.begin(), c.weights.end());
  std::vector<int32_t> corrupted(c.original.size(), -7), label(c.original.size(), -7);
  be->replace_masked_tokens(corrupted.data(), label.data(), c.original.data(), c.mask.data(), c.positions.data(),
                            weights.data(), c.samples.data(), c.B, c.S, c.P);
  return {corrupted, label};
}

TEST(ReplaceMaskedTokens, CpuMatchesReference) {
  for (const auto& [B, S, P] :
       {std::tuple{1, 1, 1}, std::tuple{3, 8, 5}, std::tuple{4, 16, 20}, std::tuple{2, 33, 7}, std::tuple{2, 6, 0}}) {
    const TokenCase c = make_case(B, S, P, 100 + B * 1000 + S * 10 + P);
    const auto expected = reference(c);
    const auto f = run_cpu<float>(c);
    const auto d = run_cpu<double>(c);
    EXPECT_EQ(f.first, expected.first) << B << "x" << S << "x" << P;
    EXPECT_EQ(f.second, expected.second) << B << "x" << S << "x" << P;
    EXPECT_EQ(d, f);
  }
}

TEST(ReplaceMaskedTokens, CasesAreCovered) {
  // The random case really has duplicates, real "replacements", and replaced tokens (so the test can fail).
  const TokenCase c = make_case(4, 16, 20, 4180);
  const auto [corrupted, label] = reference(c);
  int replaced = 0, same_sample = 0, duplicates = 0;
  for (int32_t l : label) replaced += l;
  for (int b = 0; b < c.B; ++b) {
    for (int p = 0; p < c.P; ++p) {
      const size_t i = static_cast<size_t>(b) * c.P + p;
      if (!(c.weights[i] > 0)) continue;
      same_sample += c.samples[i] == c.original[b * c.S + c.positions[i]];
      for (int q = p + 1; q < c.P; ++q) {
        const size_t j = static_cast<size_t>(b) * c.P + q;
        duplicates += c.weights[j] > 0 && c.positions[j] == c.positions[i] && c.samples[j] != c.samples[i];
      }
    }
  }
  EXPECT_GT(replaced, 5);
  EXPECT_GT(same_sample, 0);
  EXPECT_GT(duplicates, 0);
}

TEST(ReplaceMaskedTokens, WeightedPositionOutsideSequenceFails) {
  TokenCase c = make_case(2, 8, 3, 7);
  c.weights[4] = 1.0;
  c.positions[4] = 8;
  try {
    run_cpu<float>(c);
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("position 8 of row 1, prediction 1"), std::string::npos) << e.what();
  }
}

// The CUDA kernel's per-token functions give the CPU backend's outputs.
TEST(CudaTokensMath, PerTokenFunctionsMatchCpu) {
  for (const auto& [B, S, P] : {std::tuple{3, 8, 5}, std::tuple{4, 16, 20}, std::tuple{2, 33, 7}}) {
    const TokenCase c = make_case(B, S, P, 7 + B + S + P);
    const auto cpu = run_cpu<float>(c);
    const std::vector<float> weights(c.weights.begin(), c.weights.end());
    for (int b = 0; b < B; ++b) {
      for (int s = 0; s < S; ++s) {
        const size_t i = static_cast<size_t>(b) * S + s;
        const int32_t token = cuda::math::corrupted_token(c.original.data(), c.positions.data(), weights.data(),
                                                          c.samples.data(), S, P, b, s);
        ASSERT_EQ(token, cpu.first[i]) << b << "," << s;
        ASSERT_EQ(cuda::math::replaced_label(token, c.original[i], c.mask[i]), cpu.second[i]) << b << "," << s;
      }
    }
  }
}

}  // namespace
}  // namespace electra::test
