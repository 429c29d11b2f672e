// Per-token arithmetic of replace_masked_tokens (backend.h) as ELECTRA_HD functions: the CUDA kernel
// (tokens.cu) computes one (b, s) element per thread with these, and tests/cuda/tokens_test.cpp checks
// them against the CPU backend without a GPU. Plain C++: includable without nvcc.
#pragma once

#include <cstdint>

#include "lib/core/philox.h"  // ELECTRA_HD

namespace electra::cuda::math {

// The discriminator's input at (b, s): the sample of the LAST prediction of row b with weight > 0 at
// position s (the CPU backend scatters predictions in order, so a later duplicate overwrites an earlier
// one), else the original token.
template <typename W>
ELECTRA_HD inline int32_t corrupted_token(const int32_t* original_ids, const int32_t* positions, const W* weights,
                                          const int32_t* samples, int S, int P, int b, int s) {
  const long long row = static_cast<long long>(b) * P;
  for (int p = P - 1; p >= 0; --p) {
    if (positions[row + p] == s && weights[row + p] > W(0)) return samples[row + p];
  }
  return original_ids[static_cast<long long>(b) * S + s];
}

// 1 where a real (input_mask != 0) token was replaced by a different one; a sample equal to the original
// counts as real, as in ELECTRA.
ELECTRA_HD inline int32_t replaced_label(int32_t corrupted, int32_t original, int32_t input_mask) {
  return input_mask != 0 && corrupted != original ? 1 : 0;
}

}  // namespace electra::cuda::math
