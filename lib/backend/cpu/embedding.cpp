// Embedding lookups and their scatter-add gradients; row gathers for the masked-LM head.
#include <algorithm>

#include "lib/backend/cpu/kernels.h"
#include "lib/core/error.h"

namespace electra::cpu {
namespace {

// Serial validation before the parallel loops (an exception must not leave an OpenMP region).
void check_non_negative(const int32_t* ids, size_t n, const char* what) {
  if (ids == nullptr) return;
  for (size_t i = 0; i < n; ++i) ELECTRA_CHECK(ids[i] >= 0, what, "[", i, "] = ", ids[i], " is negative");
}

void check_positions(const int32_t* positions, int B, int P, int S, const char* op) {
  for (size_t i = 0; i < static_cast<size_t>(B) * P; ++i) {
    ELECTRA_CHECK(positions[i] >= 0 && positions[i] < S, op, ": positions[", i, "] = ", positions[i], " outside [0, ",
                  S, ")");
  }
}

// Column block width of the deterministic scatter-adds.
constexpr int kColumnBlock = 32;

}  // namespace

template <typename T>
void embedding_forward(T* out, const int32_t* ids, const int32_t* type_ids, const int32_t* position_ids,
                       const T* word_table, const T* position_table, const T* type_table, int B, int S, int E) {
  ELECTRA_CHECK(B >= 0 && S >= 0 && E > 0, "embedding_forward: bad shape B=", B, " S=", S, " E=", E);
  const size_t tokens = static_cast<size_t>(B) * S;
  check_non_negative(ids, tokens, "embedding_forward: ids");
  check_non_negative(type_ids, tokens, "embedding_forward: type_ids");
  check_non_negative(position_ids, tokens, "embedding_forward: position_ids");
#pragma omp parallel for schedule(static) if (tokens * E > 16384)
  for (size_t t = 0; t < tokens; ++t) {
    const size_t s = position_ids != nullptr ? static_cast<size_t>(position_ids[t]) : t % S;
    const T* w = word_table + static_cast<size_t>(ids[t]) * E;
    T* o = out + t * E;
    const T* p = position_table != nullptr ? position_table + s * E : nullptr;
    const T* ty = type_table != nullptr ? type_table + static_cast<size_t>(type_ids ? type_ids[t] : 0) * E : nullptr;
    // Summed in the order word + position + type, as Hugging Face does.
    if (p != nullptr && ty != nullptr) {
#pragma omp simd
      for (int c = 0; c < E; ++c) o[c] = w[c] + p[c] + ty[c];
    } else if (p != nullptr) {
#pragma omp simd
      for (int c = 0; c < E; ++c) o[c] = w[c] + p[c];
    } else if (ty != nullptr) {
#pragma omp simd
      for (int c = 0; c < E; ++c) o[c] = w[c] + ty[c];
    } else {
#pragma omp simd
      for (int c = 0; c < E; ++c) o[c] = w[c];
    }
  }
}

template <typename T>
void embedding_backward(T* dword, T* dposition, T* dtype, const T* dout, const int32_t* ids, const int32_t* type_ids,
                        const int32_t* position_ids, int B, int S, int E) {
  ELECTRA_CHECK(B >= 0 && S >= 0 && E > 0, "embedding_backward: bad shape B=", B, " S=", S, " E=", E);
  const size_t tokens = static_cast<size_t>(B) * S;
  check_non_negative(ids, tokens, "embedding_backward: ids");
  check_non_negative(type_ids, tokens, "embedding_backward: type_ids");
  check_non_negative(position_ids, tokens, "embedding_backward: position_ids");
  // Each thread owns a block of columns of all three tables and walks the tokens in order: no two
  // threads touch the same element, and every element sums its tokens in (b, s) order (position ids
  // repeat across a packed row's examples, so the position table is a scatter-add like the others).
  const int blocks = (E + kColumnBlock - 1) / kColumnBlock;
#pragma omp parallel for schedule(static) if (tokens * E > 16384)
  for (int blk = 0; blk < blocks; ++blk) {
    const int c0 = blk * kColumnBlock, c1 = std::min(E, c0 + kColumnBlock);
    for (size_t t = 0; t < tokens; ++t) {
      const T* d = dout + t * E;
      if (dword != nullptr) {
        T* w = dword + static_cast<size_t>(ids[t]) * E;
#pragma omp simd
        for (int c = c0; c < c1; ++c) w[c] += d[c];
      }
      if (dposition != nullptr) {
        const size_t s = position_ids != nullptr ? static_cast<size_t>(position_ids[t]) : t % S;
        T* p = dposition + s * E;
#pragma omp simd
        for (int c = c0; c < c1; ++c) p[c] += d[c];
      }
      if (dtype != nullptr) {
        T* ty = dtype + static_cast<size_t>(type_ids ? type_ids[t] : 0) * E;
#pragma omp simd
        for (int c = c0; c < c1; ++c) ty[c] += d[c];
      }
    }
  }
}

template <typename T>
void gather_rows(T* out, const T* x, const int32_t* positions, int B, int S, int P, int C) {
  ELECTRA_CHECK(B >= 0 && S > 0 && P >= 0 && C > 0, "gather_rows: bad shape");
  check_positions(positions, B, P, S, "gather_rows");
  const size_t rows = static_cast<size_t>(B) * P;
#pragma omp parallel for schedule(static) if (rows * C > 16384)
  for (size_t i = 0; i < rows; ++i) {
    const size_t b = i / P;
    const T* src = x + (b * S + positions[i]) * C;
    T* dst = out + i * C;
#pragma omp simd
    for (int c = 0; c < C; ++c) dst[c] = src[c];
  }
}

template <typename T>
void scatter_add_rows(T* dx, const T* dout, const int32_t* positions, int B, int S, int P, int C) {
  ELECTRA_CHECK(B >= 0 && S > 0 && P >= 0 && C > 0, "scatter_add_rows: bad shape");
  check_positions(positions, B, P, S, "scatter_add_rows");
  // Different examples never share rows of dx, so examples run in parallel; inside an example the
  // predictions are added in order (duplicates add up deterministically).
  const bool parallel = static_cast<size_t>(B) * P * C > 16384;  // else not worth a thread team
#pragma omp parallel for schedule(static) if (parallel)
  for (int b = 0; b < B; ++b) {
    for (int p = 0; p < P; ++p) {
      const size_t i = static_cast<size_t>(b) * P + p;
      T* dst = dx + (static_cast<size_t>(b) * S + positions[i]) * C;
      const T* src = dout + i * C;
#pragma omp simd
      for (int c = 0; c < C; ++c) dst[c] += src[c];
    }
  }
}

#define ELECTRA_INSTANTIATE(T)                                                                                         \
  template void embedding_forward<T>(T*, const int32_t*, const int32_t*, const int32_t*, const T*, const T*, const T*, \
                                     int, int, int);                                                                   \
  template void embedding_backward<T>(T*, T*, T*, const T*, const int32_t*, const int32_t*, const int32_t*, int, int,  \
                                      int);                                                                            \
  template void gather_rows<T>(T*, const T*, const int32_t*, int, int, int, int);                                      \
  template void scatter_add_rows<T>(T*, const T*, const int32_t*, int, int, int, int);
ELECTRA_INSTANTIATE(float)
ELECTRA_INSTANTIATE(double)
#undef ELECTRA_INSTANTIATE

}  // namespace electra::cpu
