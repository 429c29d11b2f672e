// The CUDA attention kernels' keep-bit index for a batch trimmed of its padding (data.trim_padding), on the
// CPU: math::attention_keep_index(key, ...) with key_seq_length set, drawn four keys at a time as the row
// kernels (attention_rows.cuh, attention_fused.cu, attention_bf16.cu) draw them, gives the CPU backend's
// bits (cpu::attention_keep_mask), which are the untrimmed batch's. The kernels themselves run on a GPU only.
#include <gtest/gtest.h>

#include <cstdint>
#include <vector>

#include "lib/backend/backend.h"
#include "lib/backend/cpu/kernels.h"
#include "lib/backend/cuda/attention_fused_math.h"

namespace electra::test {
namespace {

TEST(CudaMath, TrimmedAttentionKeepBitsAreTheCpuOnes) {
  const int B = 2, H = 3, S = 10;
  const float dropout = 0.25f;
  for (int Sk : {10, 13, 16}) {  // untrimmed, an odd slot length (Philox blocks straddle rows), a multiple of 8
    DropoutKey key{9, 4, 21, 7, static_cast<uint64_t>(H) * Sk * Sk};
    key.key_seq_length = Sk;
    std::vector<uint8_t> cpu(static_cast<size_t>(S) * S);
    for (int b = 0; b < B; ++b) {
      for (int h = 0; h < H; ++h) {
        cpu::attention_keep_mask(cpu.data(), b, h, H, S, dropout, key);
        for (int i = 0; i < S; ++i) {
          for (int j0 = 0; j0 < S; j0 += 4) {
            const int count = S - j0 < 4 ? S - j0 : 4;
            uint8_t bits[4] = {1, 1, 1, 1};
            cuda::math::dropout_keep_group(bits, key, cuda::math::attention_keep_index(key, b, H, h, S, i, j0), count,
                                           dropout);
            for (int u = 0; u < count; ++u) {
              ASSERT_EQ(bits[u], cpu[static_cast<size_t>(i) * S + j0 + u])
                  << "Sk " << Sk << " (b, h, i, j) = (" << b << ", " << h << ", " << i << ", " << j0 + u << ")";
            }
          }
        }
      }
    }
    // key_seq_length = S, or unset, is the plain index the kernels used before.
    DropoutKey plain = key;
    plain.key_seq_length = 0;
    if (Sk == S) {
      EXPECT_EQ(cuda::math::attention_keep_index(key, 1, H, 2, S, 3, 4),
                cuda::math::attention_keep_index(1, H, 2, S, 3, 4));
      EXPECT_EQ(cuda::math::attention_keep_index(plain, 1, H, 2, S, 3, 4),
                cuda::math::attention_keep_index(1, H, 2, S, 3, 4));
    } else {
      EXPECT_EQ(cuda::math::attention_keep_index(key, 1, H, 2, S, 3, 4),
                cuda::math::attention_keep_index(1, H, 2, Sk, 3, 4));
    }
  }
}

}  // namespace
}  // namespace electra::test
