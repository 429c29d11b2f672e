// Attention's per-(batch, head) products (S x S x D and S x D x S, D = 64) in float. OpenBLAS reaches
// 56-62 GFLOP/s on them against ~95 on large GEMMs: packing both operands and a separate beta pass cost
// more than the product itself at this size. This kernel packs only what must be transposed (the
// right operand of A B^T, D x S) and keeps a 6 x 64 block of C in 24 AVX-512 registers over the whole
// K loop, reading A and B in place. Picked at run time: without AVX-512 it calls OpenBLAS.
#include <immintrin.h>

#include <algorithm>
#include <cstddef>

#include "lib/backend/cpu/detail.h"
#include "lib/backend/cpu/kernels.h"
#include "lib/core/error.h"

namespace electra::cpu {
namespace {

#if defined(__x86_64__) && defined(__GNUC__)
#define ELECTRA_SMALL_GEMM_AVX512 1
#define ELECTRA_AVX512 __attribute__((target("avx512f,fma")))

constexpr int kRowsPerTile = 6;   // rows of C per register tile
constexpr int kVectorWidth = 16;  // floats per zmm register
constexpr int kMaxVectors = 4;    // columns of C per register tile: 4 x 16 = 64
constexpr int kTileColumns = kMaxVectors * kVectorWidth;

// C[0:Rows, 0:16*Vectors] = alpha * sum_p A(i, p) B[p, :], A(i, p) = a[i * a_row + p * a_col]; the last
// vector's columns are limited by last_mask. Every element of C is one K-long chain of fused
// multiply-adds in p order, then one multiplication by alpha. The accumulators are named variables, not
// an array: GCC keeps a 24-vector array in registers but also stores it to the stack on every p.
#define ELECTRA_TILE_FOR_VECTORS(X, i) X(i, 0) X(i, 1) X(i, 2) X(i, 3)
#define ELECTRA_TILE_FOR_ALL(X)  \
  ELECTRA_TILE_FOR_VECTORS(X, 0) \
  ELECTRA_TILE_FOR_VECTORS(X, 1) \
  ELECTRA_TILE_FOR_VECTORS(X, 2) \
  ELECTRA_TILE_FOR_VECTORS(X, 3) ELECTRA_TILE_FOR_VECTORS(X, 4) ELECTRA_TILE_FOR_VECTORS(X, 5)
#define ELECTRA_TILE_ZERO(i, v) __m512 c##i##v = _mm512_setzero_ps();
#define ELECTRA_TILE_LOAD_B(v)                                                     \
  __m512 b##v = _mm512_setzero_ps();                                               \
  if constexpr (v < Vectors - 1) b##v = _mm512_loadu_ps(b_row + v * kVectorWidth); \
  if constexpr (v == Vectors - 1) b##v = _mm512_maskz_loadu_ps(last_mask, b_row + v * kVectorWidth);
#define ELECTRA_TILE_BROADCAST_A(i) \
  const __m512 a##i = i < Rows ? _mm512_set1_ps(a_p[(i < Rows ? i : 0) * a_row]) : _mm512_setzero_ps();
#define ELECTRA_TILE_FMA(i, v) \
  if constexpr (i < Rows && v < Vectors) c##i##v = _mm512_fmadd_ps(a##i, b##v, c##i##v);
#define ELECTRA_TILE_STORE(i, v)                                                                     \
  if constexpr (i < Rows && v < Vectors - 1) {                                                       \
    _mm512_storeu_ps(c + i * ldc + v * kVectorWidth, _mm512_mul_ps(c##i##v, scale));                 \
  } else if constexpr (i < Rows && v == Vectors - 1) {                                               \
    _mm512_mask_storeu_ps(c + i * ldc + v * kVectorWidth, last_mask, _mm512_mul_ps(c##i##v, scale)); \
  }

template <int Rows, int Vectors>
ELECTRA_AVX512 void register_tile(int k, float alpha, const float* a, ptrdiff_t a_row, ptrdiff_t a_col, const float* b,
                                  ptrdiff_t ldb, float* c, ptrdiff_t ldc, __mmask16 last_mask) {
  static_assert(Rows >= 1 && Rows <= kRowsPerTile && Vectors >= 1 && Vectors <= kMaxVectors);
  // The macros expand to whole statements, which clang-format cannot lay out.
  // clang-format off
  ELECTRA_TILE_FOR_ALL(ELECTRA_TILE_ZERO)
  for (int p = 0; p < k; ++p) {
    const float* b_row = b + p * ldb;
    ELECTRA_TILE_LOAD_B(0) ELECTRA_TILE_LOAD_B(1) ELECTRA_TILE_LOAD_B(2) ELECTRA_TILE_LOAD_B(3)
    const float* a_p = a + p * a_col;
    ELECTRA_TILE_BROADCAST_A(0) ELECTRA_TILE_BROADCAST_A(1) ELECTRA_TILE_BROADCAST_A(2)
    ELECTRA_TILE_BROADCAST_A(3) ELECTRA_TILE_BROADCAST_A(4) ELECTRA_TILE_BROADCAST_A(5)
    ELECTRA_TILE_FOR_ALL(ELECTRA_TILE_FMA)
  }
  // clang-format on
  const __m512 scale = _mm512_set1_ps(alpha);
  ELECTRA_TILE_FOR_ALL(ELECTRA_TILE_STORE)
}
#undef ELECTRA_TILE_FOR_VECTORS
#undef ELECTRA_TILE_FOR_ALL
#undef ELECTRA_TILE_ZERO
#undef ELECTRA_TILE_LOAD_B
#undef ELECTRA_TILE_BROADCAST_A
#undef ELECTRA_TILE_FMA
#undef ELECTRA_TILE_STORE

using TileKernel = void (*)(int, float, const float*, ptrdiff_t, ptrdiff_t, const float*, ptrdiff_t, float*, ptrdiff_t,
                            __mmask16);

template <int Rows>
TileKernel tile_for_vectors(int vectors) {
  switch (vectors) {
    case 1:
      return register_tile<Rows, 1>;
    case 2:
      return register_tile<Rows, 2>;
    case 3:
      return register_tile<Rows, 3>;
    default:
      return register_tile<Rows, 4>;
  }
}
TileKernel tile_for(int rows, int vectors) {
  switch (rows) {
    case 1:
      return tile_for_vectors<1>(vectors);
    case 2:
      return tile_for_vectors<2>(vectors);
    case 3:
      return tile_for_vectors<3>(vectors);
    case 4:
      return tile_for_vectors<4>(vectors);
    case 5:
      return tile_for_vectors<5>(vectors);
    default:
      return tile_for_vectors<6>(vectors);
  }
}

// C[m,n] = alpha * A(m x k) B[k,n], B row-major with leading dimension ldb, tiled 6 x 64.
void tiled_product(int m, int n, int k, float alpha, const float* a, ptrdiff_t a_row, ptrdiff_t a_col, const float* b,
                   ptrdiff_t ldb, float* c, ptrdiff_t ldc) {
  for (int j0 = 0; j0 < n; j0 += kTileColumns) {
    const int width = std::min(kTileColumns, n - j0);
    const int vectors = (width + kVectorWidth - 1) / kVectorWidth;
    const int last_columns = width - (vectors - 1) * kVectorWidth;
    const __mmask16 last_mask = static_cast<__mmask16>((1u << last_columns) - 1u);
    const TileKernel full = tile_for(kRowsPerTile, vectors);
    int i0 = 0;
    for (; i0 + kRowsPerTile <= m; i0 += kRowsPerTile) {
      full(k, alpha, a + i0 * a_row, a_row, a_col, b + j0, ldb, c + i0 * ldc + j0, ldc, last_mask);
    }
    if (i0 < m) {
      tile_for(m - i0, vectors)(k, alpha, a + i0 * a_row, a_row, a_col, b + j0, ldb, c + i0 * ldc + j0, ldc, last_mask);
    }
  }
}

// Transposes a 16 x 16 block in registers: dst[p * ld_dst + j] = src[j * ld_src + p] for j, p < 16.
// Three rounds of interleaving (32-bit elements, 64-bit pairs, then 128-bit lanes twice). The maskz forms
// with every lane set are the plain instructions; GCC 12's unmasked intrinsics trip -Wuninitialized.
constexpr __mmask16 kAllLanes = 0xffff;
constexpr __mmask8 kAllPairs = 0xff;
ELECTRA_AVX512 void transpose_block_16(float* dst, ptrdiff_t ld_dst, const float* src, ptrdiff_t ld_src) {
  __m512 r[16], t[16];
  for (int j = 0; j < 16; ++j) r[j] = _mm512_loadu_ps(src + j * ld_src);
  for (int j = 0; j < 16; j += 2) {
    t[j] = _mm512_maskz_unpacklo_ps(kAllLanes, r[j], r[j + 1]);
    t[j + 1] = _mm512_maskz_unpackhi_ps(kAllLanes, r[j], r[j + 1]);
  }
  for (int j = 0; j < 16; j += 4) {
    for (int h = 0; h < 2; ++h) {
      const __m512d lo = _mm512_castps_pd(t[j + h]), hi = _mm512_castps_pd(t[j + h + 2]);
      r[j + 2 * h] = _mm512_castpd_ps(_mm512_maskz_unpacklo_pd(kAllPairs, lo, hi));
      r[j + 2 * h + 1] = _mm512_castpd_ps(_mm512_maskz_unpackhi_pd(kAllPairs, lo, hi));
    }
  }
  // Now r[4g + e] holds, in each 128-bit lane l, column 4l + e of rows 4g .. 4g + 3.
  for (int g = 0; g < 4; g += 2) {
    for (int e = 0; e < 4; ++e) {
      t[4 * g + e] = _mm512_maskz_shuffle_f32x4(kAllLanes, r[4 * g + e], r[4 * g + 4 + e], 0x88);      // lanes 0, 2
      t[4 * g + 4 + e] = _mm512_maskz_shuffle_f32x4(kAllLanes, r[4 * g + e], r[4 * g + 4 + e], 0xdd);  // lanes 1, 3
    }
  }
  for (int e = 0; e < 8; ++e) {
    r[e] = _mm512_maskz_shuffle_f32x4(kAllLanes, t[e], t[8 + e], 0x88);
    r[8 + e] = _mm512_maskz_shuffle_f32x4(kAllLanes, t[e], t[8 + e], 0xdd);
  }
  // r[p] is now column p of the 16 rows.
  for (int p = 0; p < 16; ++p) _mm512_storeu_ps(dst + p * ld_dst, r[p]);
}

// dst[p, j] = src[j, p] for src [rows, cols] with leading dimension ld_src; dst has leading dimension rows.
ELECTRA_AVX512 void transpose_into(float* dst, const float* src, int rows, int cols, ptrdiff_t ld_src) {
  const int full_rows = rows / 16 * 16, full_cols = cols / 16 * 16;
  for (int j0 = 0; j0 < full_rows; j0 += 16) {
    for (int p0 = 0; p0 < full_cols; p0 += 16)
      transpose_block_16(dst + p0 * rows + j0, rows, src + j0 * ld_src + p0, ld_src);
  }
  // The edges element by element.
  for (int j = 0; j < rows; ++j) {
    for (int p = j < full_rows ? full_cols : 0; p < cols; ++p) dst[p * rows + j] = src[j * ld_src + p];
  }
}

bool cpu_has_avx512() {
  static const bool has = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("fma");
  return has;
}
#endif

}  // namespace

bool attention_gemm_uses_own_kernel() {
#if defined(ELECTRA_SMALL_GEMM_AVX512)
  return cpu_has_avx512();
#else
  return false;
#endif
}

template <>
void attention_gemm<float>(Transpose ta, Transpose tb, int m, int n, int k, float alpha, const float* a, int lda,
                           const float* b, int ldb, float* c, int ldc) {
  ELECTRA_CHECK(m >= 0 && n >= 0 && k >= 0, "attention_gemm: negative size m=", m, " n=", n, " k=", k);
  ELECTRA_CHECK(lda >= std::max(1, ta == Transpose::kNo ? k : m) && ldb >= std::max(1, tb == Transpose::kNo ? n : k) &&
                    ldc >= std::max(1, n),
                "attention_gemm: leading dimension too small: lda=", lda, " ldb=", ldb, " ldc=", ldc, " for m=", m,
                " n=", n, " k=", k);
#if defined(ELECTRA_SMALL_GEMM_AVX512)
  if (cpu_has_avx512() && !(ta == Transpose::kYes && tb == Transpose::kYes)) {
    if (m == 0 || n == 0) return;
    // A(i, p): op(A) = A reads row i contiguously; op(A) = A^T reads A's row p.
    const ptrdiff_t a_row = ta == Transpose::kNo ? lda : 1, a_col = ta == Transpose::kNo ? 1 : lda;
    if (tb == Transpose::kNo) {
      tiled_product(m, n, k, alpha, a, a_row, a_col, b, ldb, c, ldc);
    } else {
      // B is [n, k]: its transpose [k, n] is packed once and reused by every row tile.
      float* packed = detail::thread_scratch<float, detail::kScratchAttentionPack>(static_cast<size_t>(n) * k);
      transpose_into(packed, b, n, k, ldb);
      tiled_product(m, n, k, alpha, a, a_row, a_col, packed, n, c, ldc);
    }
    return;
  }
#endif
  gemm(ta, tb, m, n, k, alpha, a, lda, b, ldb, 0.0f, c, ldc);
}

template <>
void attention_gemm<double>(Transpose ta, Transpose tb, int m, int n, int k, double alpha, const double* a, int lda,
                            const double* b, int ldb, double* c, int ldc) {
  gemm(ta, tb, m, n, k, alpha, a, lda, b, ldb, 0.0, c, ldc);
}

}  // namespace electra::cpu
