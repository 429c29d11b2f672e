// replace_masked_tokens on the host: the reference of backend.h's contract.
#include <cstddef>
#include <cstdint>

#include "lib/backend/cpu/kernels.h"
#include "lib/core/error.h"

namespace electra::cpu {

template <typename T>
void replace_masked_tokens(int32_t* corrupted, int32_t* disc_label, const int32_t* original_ids,
                           const int32_t* input_mask, const int32_t* positions, const T* weights,
                           const int32_t* samples, int B, int S, int P) {
  ELECTRA_CHECK(B >= 0 && S > 0 && P >= 0, "replace_masked_tokens: bad shape B=", B, " S=", S, " P=", P);
  for (int b = 0; b < B; ++b) {
    const size_t row = static_cast<size_t>(b) * S;
    for (int s = 0; s < S; ++s) corrupted[row + s] = original_ids[row + s];
    for (int p = 0; p < P; ++p) {
      const size_t i = static_cast<size_t>(b) * P + p;
      if (!(weights[i] > T(0))) continue;
      const int32_t position = positions[i];
      ELECTRA_CHECK(position >= 0 && position < S, "replace_masked_tokens: position ", position, " of row ", b,
                    ", prediction ", p, " is outside [0, ", S, ")");
      corrupted[row + position] = samples[i];
    }
    for (int s = 0; s < S; ++s) {
      // A sample equal to the original token is real (label 0), as in ELECTRA.
      disc_label[row + s] = input_mask[row + s] != 0 && corrupted[row + s] != original_ids[row + s] ? 1 : 0;
    }
  }
}

template void replace_masked_tokens<float>(int32_t*, int32_t*, const int32_t*, const int32_t*, const int32_t*,
                                           const float*, const int32_t*, int, int, int);
template void replace_masked_tokens<double>(int32_t*, int32_t*, const int32_t*, const int32_t*, const int32_t*,
                                            const double*, const int32_t*, int, int, int);

}  // namespace electra::cpu
