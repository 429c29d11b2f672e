// Attention masks shared by the bf16 attention tests on the GPU (bf16_backend_test.cpp) and their CPU
// emulation (attention_bf16_emulation_test.cpp), so that both check the same inputs.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace electra::test {

// Right-padded masks [B,S] (lengths S, S - 9, 1, 1, ...), which both our kernels and cuDNN SDPA serve.
inline std::vector<int32_t> right_padded_mask(int B, int S) {
  std::vector<int32_t> mask(static_cast<size_t>(B) * S, 0);
  for (int b = 0; b < B; ++b) {
    const int length = b == 0 ? S : (b == 1 ? S - 9 : 1);
    for (int s = 0; s < length; ++s) mask[static_cast<size_t>(b) * S + s] = 1;
  }
  return mask;
}

}  // namespace electra::test
