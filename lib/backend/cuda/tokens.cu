// replace_masked_tokens: the discriminator's input and labels built on the device (no host round trip
// between the generator's sampling and the discriminator). One thread per token; the per-token logic is
// tokens_math.h, shared with the CPU tests.
#include "lib/backend/cuda/device_util.cuh"
#include "lib/backend/cuda/kernels.h"
#include "lib/backend/cuda/tokens_math.h"

namespace electra::cuda {
namespace {

__global__ void replace_masked_tokens_kernel(int32_t* corrupted, int32_t* disc_label, const int32_t* original_ids,
                                             const int32_t* input_mask, const int32_t* positions, const float* weights,
                                             const int32_t* samples, int S, int P, size_t n, unsigned* errors) {
  for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<size_t>(blockDim.x) * gridDim.x) {
    const int b = static_cast<int>(i / S), s = static_cast<int>(i % S);
    // Thread (b, s) also checks predictions s, s + S, ... of row b, so every weighted position is checked
    // once (one outside [0, S) matches no token and would be dropped silently).
    for (int p = s; p < P; p += S) {
      const size_t row = static_cast<size_t>(b) * P + p;
      if (weights[row] > 0.0f && (positions[row] < 0 || positions[row] >= S)) report(errors, kErrorPosition);
    }
    const int32_t token = math::corrupted_token(original_ids, positions, weights, samples, S, P, b, s);
    corrupted[i] = token;
    disc_label[i] = math::replaced_label(token, original_ids[i], input_mask[i]);
  }
}

}  // namespace

void replace_masked_tokens(const Stream& s, int32_t* corrupted, int32_t* disc_label, const int32_t* original_ids,
                           const int32_t* input_mask, const int32_t* positions, const float* weights,
                           const int32_t* samples, int B, int S, int P) {
  const size_t n = static_cast<size_t>(B) * S;
  if (n == 0) return;
  replace_masked_tokens_kernel<<<grid_for(n, s), kBlock, 0, s.stream>>>(corrupted, disc_label, original_ids, input_mask,
                                                                        positions, weights, samples, S, P, n, s.errors);
  ELECTRA_CUDA_CHECK_LAUNCH("replace_masked_tokens_kernel");
}

}  // namespace electra::cuda
