// scatter_add_rows for one (example b, column c), as one thread of the CUDA kernel runs it for bfloat16
// rows (embedding.cu), written once as a __host__ __device__ function so that tests/cuda runs it on the
// CPU. Plain C++: includable without nvcc.
#pragma once

#include <cstddef>
#include <cstdint>

#include "lib/backend/cuda/segment_sum.h"  // row_value
#include "lib/core/philox.h"               // ELECTRA_HD

namespace electra::cuda::rows {

// Every distinct position of example b in [0, S) gets its old value plus the values of all its predictions,
// summed in float in prediction order and stored once: a bf16 destination is rounded once, as the CPU
// reference does (the float op on the widened dx, then narrowed), and duplicates add up. For float the
// result is that of adding the predictions one by one. Returns true when a position outside [0, S) was
// met (that prediction is skipped).
template <typename T>
ELECTRA_HD inline bool scatter_add_column(T* dx, const T* dout, const int32_t* positions, int S, int P, int C, size_t b,
                                          int c) {
  const int32_t* row_positions = positions + b * P;
  bool out_of_range = false;
  for (int p = 0; p < P; ++p) {
    const int pos = row_positions[p];
    if (pos < 0 || pos >= S) {
      out_of_range = true;
      continue;
    }
    bool seen = false;  // an earlier prediction of this position already summed this one
    for (int q = 0; q < p && !seen; ++q) seen = row_positions[q] == pos;
    if (seen) continue;
    T* target = dx + (b * S + pos) * C + c;
    float acc = segments::row_value(*target);
    for (int q = p; q < P; ++q) {
      if (row_positions[q] == pos) acc += segments::row_value(dout[(b * P + q) * C + c]);
    }
    *target = T(acc);
  }
  return out_of_range;
}

}  // namespace electra::cuda::rows
