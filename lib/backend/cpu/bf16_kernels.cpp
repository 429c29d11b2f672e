// The non-GEMM ops of the fast CPU bf16 backend on bfloat16 storage (bf16_kernels.h).
//
// How the bits stay the reference's (widen, float kernel, round):
//  - Elementwise work widens and rounds in registers around the float kernels' own expressions, inside
//    ELECTRA_CPU_CLONES leaves, so the same ISA clone fuses the same multiply-adds. GELU is looked up in
//    tables of the float kernel's own results for every bf16 value (GeluTables below).
//  - A reduction's partial sums follow the shape the compiler gives its vectorised loop (lanes, epilogue),
//    chosen per loop. So a row that feeds a reduction is widened once into a per-thread float row (L1), and
//    the float kernels' loops run on it unchanged; the row's later passes read it from there too.
//  - losses.cpp is compiled without contraction, so the losses call its float kernels on per-thread tiles
//    of widened rows; Gumbel sampling (whose Philox offsets need the batch's row index) repeats its
//    arithmetic here with contraction switched off.
//  - Sums across rows keep the float kernels' fixed orders (LayerNorm's 32-row blocks, token order, chunk
//    order), so they are bitwise the reference's too, for any thread count.
#include "lib/backend/cpu/bf16_kernels.h"

#include <algorithm>
#include <array>
#include <bit>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <memory>
#include <vector>

#include "lib/backend/cpu/detail.h"
#include "lib/backend/cpu/kernels.h"
#include "lib/backend/cpu/vmath.h"
#include "lib/core/error.h"

// losses.cpp is compiled with -ffp-contract=off; the Gumbel scores here must be too.
#if defined(__GNUC__) && !defined(__clang__)
#define ELECTRA_NO_FP_CONTRACT __attribute__((optimize("fp-contract=off")))
#else
#define ELECTRA_NO_FP_CONTRACT
#endif

namespace electra::cpu::bf16 {
namespace {

// Thresholds and work units: those of the float kernels (elementwise.cpp, layernorm.cpp, ...).
constexpr size_t kParallelMin = 1 << 15;
constexpr size_t kChunk = 8192;
constexpr long long kRowsParallelMin = 16384;  // elements of a row-wise op worth a thread team
constexpr int kRowBlock = 32;                  // LayerNorm rows per dgamma/dbeta partial sum
constexpr int kEmbeddingColumnBlock = 32;
constexpr int kColumnSumBlock = 64;
// The losses run the float kernel on tiles of at most this many elements (a longer row is a tile by
// itself): below its own threshold (16384) it stays on the calling thread, and the tile stays in L2.
constexpr int kLossTile = 16384;
constexpr size_t kSigmoidTile = 4096;

// ---- conversions, inlined into the vectorised loops ----
// Loop bodies hold bits (uint16_t), not bfloat16 objects: OpenMP simd turns a local of class type into a
// per-lane array and the loop no longer vectorises.
ELECTRA_VMATH_INLINE float wide_bits(uint16_t bits) { return std::bit_cast<float>(static_cast<uint32_t>(bits) << 16); }
ELECTRA_VMATH_INLINE float wide(T v) { return wide_bits(v.bits); }
ELECTRA_VMATH_INLINE uint16_t narrow_bits(float f) { return bfloat16::round_bits(f); }
ELECTRA_VMATH_INLINE T narrow(float f) { return T::from_bits(narrow_bits(f)); }
// What storing f as bfloat16 and loading it again gives (the reference rounds every tensor it stores).
ELECTRA_VMATH_INLINE float round_trip(float f) { return wide_bits(narrow_bits(f)); }

ELECTRA_VMATH_INLINE void widen_row(float* dst, const T* src, int n) {
#pragma omp simd
  for (int i = 0; i < n; ++i) dst[i] = wide(src[i]);
}
ELECTRA_CPU_CLONES void widen_chunk(float* dst, const T* src, size_t n) {
#pragma omp simd
  for (size_t i = 0; i < n; ++i) dst[i] = wide(src[i]);
}
ELECTRA_CPU_CLONES void narrow_chunk(T* dst, const float* src, size_t n) {
#pragma omp simd
  for (size_t i = 0; i < n; ++i) dst[i] = narrow(src[i]);
}

// ---- per-thread scratch ----
// One buffer per slot and thread, so no two live buffers of a thread alias; 64-byte aligned like the
// reference's widened copies; grown once and reused: nothing is allocated in the steady state.
enum Slot : int { kRowA, kRowB, kGamma, kPartials, kTileA, kTileB, kSumPartials };
template <int S, typename E = float>
E* scratch(size_t n) {
  struct Free {
    void operator()(E* p) const { std::free(p); }
  };
  thread_local std::unique_ptr<E, Free> data;
  thread_local size_t capacity = 0;
  n = std::max<size_t>(n, 1);
  if (capacity < n) {
    data.reset();  // the old contents are not needed
    data.reset(static_cast<E*>(detail::aligned_allocate(n * sizeof(E))));
    capacity = n;
  }
  return data.get();
}
// Where in a 64-byte-aligned buffer (15 floats to spare) to widen a row that starts at element `offset` of
// its tensor: at the alignment that row has in the reference's aligned float copy, so that a vectoriser
// that peels for alignment would peel the same elements and keep the partial sums the reference's.
float* at_reference_alignment(float* buffer, size_t offset) { return buffer + offset % 16; }
// Floats per row in a buffer of such rows (each row's start stays 64-byte aligned).
size_t row_stride(int cols) { return (static_cast<size_t>(cols) + 15) / 16 * 16 + 16; }

// ---- elementwise ----
// The float kernels' expressions (elementwise.cpp) on widened values.
struct Identity {
  ELECTRA_VMATH_INLINE static float f(float x) { return x; }
};
struct TanhForward {
  ELECTRA_VMATH_INLINE static float f(float x) { return vmath::tanh_f(x); }
};
struct ReluForward {
  ELECTRA_VMATH_INLINE static float f(float x) { return x > 0.0f ? x : 0.0f; }
};
struct TanhBackward {
  ELECTRA_VMATH_INLINE static float f(float dy, float x) {
    const float t = vmath::tanh_f(x);
    return dy * (1.0f - t * t);
  }
};
struct ReluBackward {
  ELECTRA_VMATH_INLINE static float f(float dy, float x) { return x > 0.0f ? dy : 0.0f; }
};
struct Sum {
  ELECTRA_VMATH_INLINE static float f(float a, float b) { return a + b; }
};

// y[i] = Op(x[i]) and y[i] = Op(a[i], b[i]); y may alias an input (each element is read before it is written).
template <class Op>
ELECTRA_CPU_CLONES void map_chunk(T* y, const T* x, size_t n) {
#pragma omp simd
  for (size_t i = 0; i < n; ++i) y[i] = narrow(Op::f(wide(x[i])));
}
template <class Op>
ELECTRA_CPU_CLONES void map2_chunk(T* y, const T* a, const T* b, size_t n) {
#pragma omp simd
  for (size_t i = 0; i < n; ++i) y[i] = narrow(Op::f(wide(a[i]), wide(b[i])));
}
ELECTRA_CPU_CLONES void scale_chunk(T* x, size_t n, float alpha) {
#pragma omp simd
  for (size_t i = 0; i < n; ++i) x[i] = narrow(wide(x[i]) * alpha);
}
// y = x * keep * keep_scale, as elementwise.cpp's apply_keep (y may alias x).
ELECTRA_CPU_CLONES void apply_keep_chunk(T* y, const T* x, const uint8_t* keep, float keep_scale, size_t n) {
#pragma omp simd
  for (size_t i = 0; i < n; ++i) y[i] = narrow(wide(x[i]) * (keep[i] ? keep_scale : 0.0f));
}

// Elementwise work is the same for any split: fixed chunks only decide who computes what.
template <class Op>
void map(T* y, const T* x, size_t n, size_t min_parallel) {
  detail::parallel_chunks(n, kChunk, min_parallel, [&](size_t b, size_t e) { map_chunk<Op>(y + b, x + b, e - b); });
}
template <class Op>
void map2(T* y, const T* a, const T* b, size_t n, size_t min_parallel) {
  detail::parallel_chunks(n, kChunk, min_parallel,
                          [&](size_t s, size_t e) { map2_chunk<Op>(y + s, a + s, b + s, e - s); });
}

// ---- GELU by lookup ----
// A bf16 input takes one of 65,536 values, so GELU and its derivative are looked up rather than computed
// (ggml does the same for fp16): the erf form costs about 35 vector operations per element, and was the
// largest non-GEMM cost of a step. The tables hold the float kernels' own results (kernels.h) for every
// bf16 bit pattern, NaNs included, so the results are the reference's bits on every CPU and in every build.
// Backward: the float kernel computes dy * gelu'(x) with the multiply last, so dy times the kernel's result
// for dy = 1 is the same float before rounding. 384 KiB, filled once (backend construction); a
// step reads the few KiB of entries that activations near zero use.
struct GeluTables {
  static constexpr size_t kSize = size_t{1} << 16;
  GeluTables() {
    std::vector<float> x(kSize), y(kSize);
    const std::vector<float> ones(kSize, 1.0f);
    for (size_t bits = 0; bits < kSize; ++bits) x[bits] = wide_bits(static_cast<uint16_t>(bits));
    cpu::activation_forward(Activation::kGelu, y.data(), x.data(), kSize);
    for (size_t bits = 0; bits < kSize; ++bits) forward[bits] = narrow_bits(y[bits]);
    cpu::activation_backward(Activation::kGelu, derivative.data(), ones.data(), x.data(), kSize);
  }
  alignas(64) std::array<uint16_t, kSize> forward;  // GELU(x), rounded to bf16
  alignas(64) std::array<float, kSize> derivative;  // GELU'(x), float
};
const GeluTables& gelu_tables() {
  static const GeluTables tables;  // static storage: nothing on the heap after construction
  return tables;
}

ELECTRA_CPU_CLONES void gelu_forward_chunk(T* y, const T* x, size_t n, const uint16_t* table) {
  for (size_t i = 0; i < n; ++i) y[i].bits = table[x[i].bits];
}
ELECTRA_CPU_CLONES void gelu_backward_chunk(T* dx, const T* dy, const T* x, size_t n, const float* table) {
#pragma omp simd
  for (size_t i = 0; i < n; ++i) dx[i] = narrow(wide(dy[i]) * table[x[i].bits]);
}

void check_dropout_p(float p, const char* op) {
  ELECTRA_CHECK(p >= 0.0f && p < 1.0f, op, ": dropout probability ", p, " outside [0, 1)");
}

// ---- LayerNorm ----
constexpr int kStatRows = 4;
// layernorm.cpp's two passes over a float row (the same loops, so the same bits).
ELECTRA_VMATH_INLINE float row_sum(const float* x, int cols) {
  float sum = 0;
#pragma omp simd reduction(+ : sum)
  for (int c = 0; c < cols; ++c) sum += x[c];
  return sum;
}
ELECTRA_VMATH_INLINE float centred_squares(const float* x, float mu, int cols) {
  float sq = 0;
#pragma omp simd reduction(+ : sq)
  for (int c = 0; c < cols; ++c) {
    const float d = x[c] - mu;
    sq += d * d;
  }
  return sq;
}
// Mean and rstd of n <= kStatRows float rows. A row's sums are a chain of dependent additions (latency-bound
// at LayerNorm widths), so the rows go side by side and their chains overlap.
ELECTRA_VMATH_INLINE void row_stats(const float* const* x, int n, int cols, float eps, float* mu, float* rs) {
  for (int k = 0; k < n; ++k) mu[k] = row_sum(x[k], cols) / float(cols);
  for (int k = 0; k < n; ++k) rs[k] = float(1) / std::sqrt(centred_squares(x[k], mu[k], cols) / float(cols) + eps);
}

// y = (x - mu) * rs * gamma + beta of one row from its float copy, rounded; statistics stored when asked.
ELECTRA_VMATH_INLINE void normalise_row(T* y, float* mean, float* rstd, const float* xr, float mu, float rs,
                                        const T* gamma, const T* beta, int cols) {
  if (mean != nullptr) *mean = mu;
  if (rstd != nullptr) *rstd = rs;
  if (beta != nullptr) {
#pragma omp simd
    for (int c = 0; c < cols; ++c) y[c] = narrow((xr[c] - mu) * rs * wide(gamma[c]) + wide(beta[c]));
  } else {
#pragma omp simd
    for (int c = 0; c < cols; ++c) y[c] = narrow((xr[c] - mu) * rs * wide(gamma[c]));
  }
}

float* row_or_null(float* p, int r) { return p != nullptr ? p + r : nullptr; }

// Rows [r0, r1) of a LayerNorm whose float rows fill_row(r, row) writes, kStatRows at a time.
template <class FillRow>
ELECTRA_VMATH_INLINE void normalise_rows(T* y, float* mean, float* rstd, const T* gamma, const T* beta, int r0, int r1,
                                         int cols, float eps, const FillRow& fill_row) {
  const size_t stride = row_stride(cols);
  float* buffer = scratch<kRowA>(kStatRows * stride);
  for (int r = r0; r < r1; r += kStatRows) {
    const int n = std::min(kStatRows, r1 - r);
    const float* rows[kStatRows];
    for (int k = 0; k < n; ++k) {
      float* row = at_reference_alignment(buffer + k * stride, static_cast<size_t>(r + k) * cols);
      fill_row(r + k, row);
      rows[k] = row;
    }
    float mu[kStatRows], rs[kStatRows];
    row_stats(rows, n, cols, eps, mu, rs);
    for (int k = 0; k < n; ++k) {
      normalise_row(y + static_cast<size_t>(r + k) * cols, row_or_null(mean, r + k), row_or_null(rstd, r + k), rows[k],
                    mu[k], rs[k], gamma, beta, cols);
    }
  }
}

// The float rows of a plain LayerNorm: x widened.
struct WidenedRows {
  const T* x;
  int cols;
  ELECTRA_VMATH_INLINE void operator()(int r, float* row) const {
    widen_row(row, x + static_cast<size_t>(r) * cols, cols);
  }
};
// The float rows of the fused forward: res = residual + dropout(x) (keep null when p == 0: dropout copies),
// rounded as the reference stores it between its ops, and written to res too.
template <bool kDropout>
struct DroppedResidualRows {
  T* res;
  const uint8_t* keep;
  float keep_scale;
  const T* x;
  const T* residual;
  int cols;
  ELECTRA_VMATH_INLINE void operator()(int r, float* row) const {
    const size_t off = static_cast<size_t>(r) * cols;
    const T* xr = x + off;
    const T* sr = residual + off;
    T* out = res + off;
    if constexpr (kDropout) {
      const uint8_t* k = keep + off;
#pragma omp simd
      for (int c = 0; c < cols; ++c) {
        const float dropped = round_trip(wide(xr[c]) * (k[c] ? keep_scale : 0.0f));
        const uint16_t sum = narrow_bits(dropped + wide(sr[c]));
        out[c].bits = sum;
        row[c] = wide_bits(sum);
      }
    } else {
#pragma omp simd
      for (int c = 0; c < cols; ++c) {
        const uint16_t sum = narrow_bits(round_trip(wide(xr[c])) + wide(sr[c]));
        out[c].bits = sum;
        row[c] = wide_bits(sum);
      }
    }
  }
};

ELECTRA_CPU_CLONES void layernorm_forward_rows(T* y, float* mean, float* rstd, const T* x, const T* gamma,
                                               const T* beta, int r0, int r1, int cols, float eps) {
  normalise_rows(y, mean, rstd, gamma, beta, r0, r1, cols, eps, WidenedRows{x, cols});
}
template <bool kDropout>
ELECTRA_CPU_CLONES void dropout_add_layernorm_rows(T* y, T* res, const uint8_t* keep, float keep_scale, float* mean,
                                                   float* rstd, const T* x, const T* residual, const T* gamma,
                                                   const T* beta, int r0, int r1, int cols, float eps) {
  normalise_rows(y, mean, rstd, gamma, beta, r0, r1, cols, eps,
                 DroppedResidualRows<kDropout>{res, keep, keep_scale, x, residual, cols});
}

// dx = rstd * (g - mean(g) - xhat * mean(g * xhat)), g = dy * gamma: the two sums (layernorm.cpp's loop).
ELECTRA_VMATH_INLINE void gradient_sums(const float* dyr, const float* xr, const float* gamma, float mu, float rs,
                                        int cols, float& sum_g, float& sum_gx) {
  float sg = 0, sgx = 0;
#pragma omp simd reduction(+ : sg, sgx)
  for (int c = 0; c < cols; ++c) {
    const float g = dyr[c] * gamma[c];
    sg += g;
    sgx += g * (xr[c] - mu) * rs;
  }
  sum_g = sg;
  sum_gx = sgx;
}

// Rows [r0, r1) of the backward (layernorm.cpp's arithmetic on float copies of the rows of dy and x), in
// groups of kStatRows rows so that the rows' latency-bound sums overlap: d_res (when non-null) = the input
// gradient rounded; dx (when non-null, only with d_res) = the dropout backward of the ROUNDED d_res, as the
// unfused ops compute it (keep null: p == 0, a copy); pg/pb (when non-null) this block's dgamma/dbeta
// partial sums (rows added in order), zeroed here. gamma: widened (read only for d_res).
ELECTRA_CPU_CLONES void layernorm_backward_rows(T* d_res, T* dx, const uint8_t* keep, float keep_scale, float* pg,
                                                float* pb, const T* dy, const T* x, const float* mean,
                                                const float* rstd, const float* gamma, int r0, int r1, int cols) {
  if (pg != nullptr) std::fill(pg, pg + cols, 0.0f);
  if (pb != nullptr) std::fill(pb, pb + cols, 0.0f);
  const size_t stride = row_stride(cols);
  float* x_buffer = scratch<kRowA>(kStatRows * stride);
  float* dy_buffer = scratch<kRowB>(kStatRows * stride);
  for (int r = r0; r < r1; r += kStatRows) {
    const int n = std::min(kStatRows, r1 - r);
    float* xs[kStatRows];
    float* dys[kStatRows];
    for (int k = 0; k < n; ++k) {
      const size_t off = static_cast<size_t>(r + k) * cols;
      xs[k] = at_reference_alignment(x_buffer + k * stride, off);
      dys[k] = at_reference_alignment(dy_buffer + k * stride, off);
      widen_row(xs[k], x + off, cols);
      widen_row(dys[k], dy + off, cols);
    }
    if (pg != nullptr) {
      for (int k = 0; k < n; ++k) {
        const float* xr = xs[k];
        const float* dyr = dys[k];
        const float mu = mean[r + k], rs = rstd[r + k];
#pragma omp simd
        for (int c = 0; c < cols; ++c) {
          pg[c] += dyr[c] * (xr[c] - mu) * rs;
          pb[c] += dyr[c];
        }
      }
    }
    if (d_res == nullptr) continue;
    float sum_g[kStatRows], sum_gx[kStatRows];
    for (int k = 0; k < n; ++k)
      gradient_sums(dys[k], xs[k], gamma, mean[r + k], rstd[r + k], cols, sum_g[k], sum_gx[k]);
    for (int k = 0; k < n; ++k) {
      const size_t off = static_cast<size_t>(r + k) * cols;
      const float* xr = xs[k];
      const float* dyr = dys[k];
      const float mu = mean[r + k], rs = rstd[r + k];
      const float mean_g = sum_g[k] / float(cols), mean_gx = sum_gx[k] / float(cols);
      T* dr = d_res + off;
      if (dx == nullptr) {
#pragma omp simd
        for (int c = 0; c < cols; ++c) {
          const float xhat = (xr[c] - mu) * rs;
          dr[c] = narrow(rs * (dyr[c] * gamma[c] - mean_g - xhat * mean_gx));
        }
      } else if (keep == nullptr) {
        T* dxr = dx + off;
#pragma omp simd
        for (int c = 0; c < cols; ++c) {
          const float xhat = (xr[c] - mu) * rs;
          const uint16_t d = narrow_bits(rs * (dyr[c] * gamma[c] - mean_g - xhat * mean_gx));
          dr[c].bits = d;
          dxr[c].bits = d;
        }
      } else {
        T* dxr = dx + off;
        const uint8_t* kr = keep + off;
#pragma omp simd
        for (int c = 0; c < cols; ++c) {
          const float xhat = (xr[c] - mu) * rs;
          const uint16_t d = narrow_bits(rs * (dyr[c] * gamma[c] - mean_g - xhat * mean_gx));
          dr[c].bits = d;
          dxr[c] = narrow(wide_bits(d) * (kr[c] ? keep_scale : 0.0f));
        }
      }
    }
  }
}

// layernorm_backward, and with dx / keep the fused layernorm_dropout_backward; `op` names it in errors.
void layernorm_backward_impl(T* d_res, T* dx, const uint8_t* keep, float keep_scale, float* dgamma, float* dbeta,
                             const T* dy, const T* x, const float* mean, const float* rstd, const T* gamma, int rows,
                             int cols, const char* op) {
  ELECTRA_CHECK(rows >= 0 && cols > 0, op, ": bad shape rows=", rows, " cols=", cols);
  const int blocks = (rows + kRowBlock - 1) / kRowBlock;
  const bool param_grads = dgamma != nullptr || dbeta != nullptr;
  // partial[blk] = [dgamma part (cols), dbeta part (cols)], as layernorm.cpp; the calling thread's
  // buffers, shared with the team below (as is the widened gamma).
  float* partial = param_grads ? scratch<kPartials>(static_cast<size_t>(blocks) * 2 * cols) : nullptr;
  float* gamma_f = nullptr;
  if (d_res != nullptr) {
    gamma_f = scratch<kGamma>(static_cast<size_t>(cols));
    widen_chunk(gamma_f, gamma, static_cast<size_t>(cols));
  }
  const bool parallel = static_cast<long long>(rows) * cols > kRowsParallelMin;
#pragma omp parallel if (parallel)
  {
#pragma omp for schedule(static)
    for (int blk = 0; blk < blocks; ++blk) {
      float* pg = param_grads ? partial + static_cast<size_t>(blk) * 2 * cols : nullptr;
      layernorm_backward_rows(d_res, dx, keep, keep_scale, pg, param_grads ? pg + cols : nullptr, dy, x, mean, rstd,
                              gamma_f, blk * kRowBlock, std::min(rows, (blk + 1) * kRowBlock), cols);
    }
    if (param_grads) {
      // Block partials added in block order for every column.
#pragma omp for schedule(static)
      for (int c = 0; c < cols; ++c) {
        float sg = 0, sb = 0;
        for (int blk = 0; blk < blocks; ++blk) {
          sg += partial[static_cast<size_t>(blk) * 2 * cols + c];
          sb += partial[static_cast<size_t>(blk) * 2 * cols + cols + c];
        }
        if (dgamma != nullptr) dgamma[c] += sg;
        if (dbeta != nullptr) dbeta[c] += sb;
      }
    }
  }
}

// ---- embeddings ----
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

// Tokens [t0, t1): summed in the order word + position + type, as embedding.cpp.
ELECTRA_CPU_CLONES void embedding_tokens(T* out, const int32_t* ids, const int32_t* type_ids,
                                         const int32_t* position_ids, const T* word_table, const T* position_table,
                                         const T* type_table, size_t t0, size_t t1, int S, int E) {
  for (size_t t = t0; t < t1; ++t) {
    const T* w = word_table + static_cast<size_t>(ids[t]) * E;
    T* o = out + t * E;
    const size_t s = position_ids != nullptr ? static_cast<size_t>(position_ids[t]) : t % S;
    const T* p = position_table != nullptr ? position_table + s * E : nullptr;
    const T* ty = type_table != nullptr ? type_table + static_cast<size_t>(type_ids ? type_ids[t] : 0) * E : nullptr;
    if (p != nullptr && ty != nullptr) {
#pragma omp simd
      for (int c = 0; c < E; ++c) o[c] = narrow(wide(w[c]) + wide(p[c]) + wide(ty[c]));
    } else if (p != nullptr) {
#pragma omp simd
      for (int c = 0; c < E; ++c) o[c] = narrow(wide(w[c]) + wide(p[c]));
    } else if (ty != nullptr) {
#pragma omp simd
      for (int c = 0; c < E; ++c) o[c] = narrow(wide(w[c]) + wide(ty[c]));
    } else {
#pragma omp simd
      for (int c = 0; c < E; ++c) o[c] = narrow(wide(w[c]));
    }
  }
}

// Columns [c0, c1) of every table, tokens in (b, s) order: embedding.cpp's order, so the same float sums.
ELECTRA_CPU_CLONES void embedding_backward_columns(float* dword, float* dposition, float* dtype, const T* dout,
                                                   const int32_t* ids, const int32_t* type_ids,
                                                   const int32_t* position_ids, size_t tokens, int S, int E, int c0,
                                                   int c1) {
  for (size_t t = 0; t < tokens; ++t) {
    const T* d = dout + t * E;
    if (dword != nullptr) {
      float* w = dword + static_cast<size_t>(ids[t]) * E;
#pragma omp simd
      for (int c = c0; c < c1; ++c) w[c] += wide(d[c]);
    }
    if (dposition != nullptr) {
      const size_t s = position_ids != nullptr ? static_cast<size_t>(position_ids[t]) : t % S;
      float* p = dposition + s * E;
#pragma omp simd
      for (int c = c0; c < c1; ++c) p[c] += wide(d[c]);
    }
    if (dtype != nullptr) {
      float* ty = dtype + static_cast<size_t>(type_ids ? type_ids[t] : 0) * E;
#pragma omp simd
      for (int c = c0; c < c1; ++c) ty[c] += wide(d[c]);
    }
  }
}

// Example b of scatter_add_rows. The reference adds all predictions of one row in float and rounds once,
// so a row hit several times is summed in a float row before it is rounded.
ELECTRA_CPU_CLONES void scatter_add_example(T* dx, const T* dout, const int32_t* positions, int P, int C) {
  for (int p = 0; p < P; ++p) {
    bool seen = false, repeated = false;
    for (int q = 0; q < P; ++q) {
      seen |= q < p && positions[q] == positions[p];
      repeated |= q > p && positions[q] == positions[p];
    }
    if (seen) continue;  // added with its first occurrence
    T* dst = dx + static_cast<size_t>(positions[p]) * C;
    const T* src = dout + static_cast<size_t>(p) * C;
    if (!repeated) {
#pragma omp simd
      for (int c = 0; c < C; ++c) dst[c] = narrow(wide(dst[c]) + wide(src[c]));
      continue;
    }
    float* acc = scratch<kRowA>(static_cast<size_t>(C));
    widen_row(acc, dst, C);
    for (int q = p; q < P; ++q) {
      if (positions[q] != positions[p]) continue;
      const T* s = dout + static_cast<size_t>(q) * C;
#pragma omp simd
      for (int c = 0; c < C; ++c) acc[c] += wide(s[c]);
    }
#pragma omp simd
    for (int c = 0; c < C; ++c) dst[c] = narrow(acc[c]);
  }
}

ELECTRA_CPU_CLONES void gather_row(T* dst, const T* src, int C) {
#pragma omp simd
  for (int c = 0; c < C; ++c) dst[c] = narrow(wide(src[c]));  // the reference's round trip quiets NaNs
}

// ---- losses ----
// Row tiles for the float loss kernels: rows [r0, r0 + rows_per_tile * ...) of a [rows, V] tensor.
int loss_tile_rows(int V) { return std::max(1, kLossTile / V); }

// Runs f(r0, r1, w) over row tiles of a [rows, V] bfloat16 tensor x, w being the tile's rows widened into
// this thread's float tile (at the reference's alignment, so the float kernel's vector loops split alike);
// f may overwrite w. In parallel over tiles when the tensor is large.
template <typename F>
void for_each_widened_tile(const T* x, int rows, int V, F&& f) {
  const int per_tile = loss_tile_rows(V);
  const int tiles = (rows + per_tile - 1) / per_tile;
  const bool parallel = static_cast<long long>(rows) * V > kRowsParallelMin;
#pragma omp parallel for schedule(static) if (parallel)
  for (int t = 0; t < tiles; ++t) {
    const int r0 = t * per_tile, r1 = std::min(rows, r0 + per_tile);
    const size_t begin = static_cast<size_t>(r0) * V, count = static_cast<size_t>(r1 - r0) * V;
    float* w = at_reference_alignment(scratch<kTileA>(count + 15), begin);
    widen_chunk(w, x + begin, count);
    f(r0, r1, w);
  }
}

// losses.cpp's gumbel_scores on bfloat16 logits: the same double arithmetic, without contraction.
ELECTRA_CPU_CLONES ELECTRA_NO_FP_CONTRACT void gumbel_scores(double* score, const PhiloxStream& stream, uint64_t n0,
                                                             const T* x, int count, int banned, double temperature) {
#if defined(__clang__)
#pragma clang fp contract(off)
#endif
  alignas(64) uint32_t block_words[2 * detail::kGumbelChunk + 4];
  const uint64_t first_block = n0 >> 1, last_block = ((n0 + count - 1) >> 1) + 1;
  detail::philox_words(block_words, stream, first_block, static_cast<int>(last_block - first_block));
  const uint32_t* words = block_words + (2 * n0 - 4 * first_block);
#pragma omp simd
  for (int i = 0; i < count; ++i) {
    const uint64_t hi = words[2 * i], lo = words[2 * i + 1];
    const int64_t bits = static_cast<int64_t>(((hi << 32) | lo) >> 12);
    const double u = (static_cast<double>(bits) + 0.5) * (1.0 / 4503599627370496.0);
    const double g = -vmath::log_d(-vmath::log_d(u));
    const double penalty = i == banned ? 1000.0 : 0.0;
    const double z = static_cast<double>(wide(x[i])) - penalty;
    score[i] = (temperature == 1.0 ? z : z / temperature) + g;
  }
}

// ---- reductions ----
// One chunk of sum_squares: widened into an aligned float chunk (as the reference's chunk is), then
// optimizer.cpp's loop, so the same partial sums.
ELECTRA_CPU_CLONES double sum_squares_chunk(const T* x, size_t n) {
  float* w = scratch<kTileA>(kSumSquaresChunk);
#pragma omp simd
  for (size_t i = 0; i < n; ++i) w[i] = wide(x[i]);
  double s = 0.0;
#pragma omp simd reduction(+ : s)
  for (size_t i = 0; i < n; ++i) {
    const double v = static_cast<double>(w[i]);
    s += v * v;
  }
  return s;
}

// Columns [c0, c0 + width) summed over rows in order (blas.cpp's column_sums_accumulate).
ELECTRA_CPU_CLONES void column_block_sums(float* dbias, const T* dy, int rows, int cols, int c0, int width) {
  float acc[kColumnSumBlock] = {};
  for (int r = 0; r < rows; ++r) {
    const T* row = dy + static_cast<size_t>(r) * cols + c0;
#pragma omp simd
    for (int c = 0; c < width; ++c) acc[c] += wide(row[c]);
  }
  for (int c = 0; c < width; ++c) dbias[c0 + c] += acc[c];
}

// Attention rows: one pass for the maximum, one for the exponentials (kept in the scores row) and their
// sum, one for the rounded probabilities (and the dropped ones).
ELECTRA_CPU_CLONES void attention_softmax_row_block(T* probs, T* attend, float* scores, const int32_t* mask,
                                                    const uint8_t* keep, float keep_scale, int rows, int S) {
  constexpr float kNegInf = -std::numeric_limits<float>::infinity();
  for (int i = 0; i < rows; ++i) {
    float* row = scores + static_cast<size_t>(i) * S;
    uint16_t* p = &probs[static_cast<size_t>(i) * S].bits;
    const int32_t query = mask[i];
    float max_score = kNegInf;
#pragma omp simd reduction(max : max_score)
    for (int j = 0; j < S; ++j) max_score = std::max(max_score, attends_key(query, mask[j]) ? row[j] : kNegInf);
    if (max_score == kNegInf) {
      std::fill(p, p + S, uint16_t{0});
      if (attend != nullptr)
        std::fill(&attend[static_cast<size_t>(i) * S].bits, &attend[static_cast<size_t>(i) * S].bits + S, uint16_t{0});
      continue;
    }
    float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
    for (int j = 0; j < S; ++j) {
      const float e = attends_key(query, mask[j]) ? vmath::exp_t(row[j] - max_score) : 0.0f;
      row[j] = e;
      sum += e;
    }
    const float inv = 1.0f / sum;
    if (attend == nullptr) {
#pragma omp simd
      for (int j = 0; j < S; ++j) p[j] = narrow_bits(row[j] * inv);
    } else {
      uint16_t* a = &attend[static_cast<size_t>(i) * S].bits;
      const uint8_t* k = keep + static_cast<size_t>(i) * S;
#pragma omp simd
      for (int j = 0; j < S; ++j) {
        const uint16_t pj = narrow_bits(row[j] * inv);
        p[j] = pj;
        a[j] = narrow_bits(wide_bits(pj) * (k[j] ? keep_scale : 0.0f));
      }
    }
  }
}

ELECTRA_CPU_CLONES void attention_dropped_chunk(T* attend, const T* probs, const uint8_t* keep, float keep_scale,
                                                size_t n) {
  uint16_t* a = &attend[0].bits;
  const uint16_t* p = &probs[0].bits;
#pragma omp simd
  for (size_t e = 0; e < n; ++e) a[e] = narrow_bits(wide_bits(p[e]) * (keep[e] ? keep_scale : 0.0f));
}

ELECTRA_CPU_CLONES void attention_softmax_backward_block(T* ds, const float* d_attend, const T* probs,
                                                         const uint8_t* keep, float keep_scale, int rows, int S) {
  for (int i = 0; i < rows; ++i) {
    const size_t o = static_cast<size_t>(i) * S;
    const float* da = d_attend + o;
    const uint16_t* p = &probs[o].bits;
    uint16_t* out = &ds[o].bits;
    float dot = 0.0f;
    if (keep != nullptr) {
      const uint8_t* k = keep + o;
#pragma omp simd reduction(+ : dot)
      for (int j = 0; j < S; ++j) dot += wide_bits(p[j]) * (da[j] * (k[j] ? keep_scale : 0.0f));
#pragma omp simd
      for (int j = 0; j < S; ++j) out[j] = narrow_bits(wide_bits(p[j]) * (da[j] * (k[j] ? keep_scale : 0.0f) - dot));
    } else {
#pragma omp simd reduction(+ : dot)
      for (int j = 0; j < S; ++j) dot += wide_bits(p[j]) * da[j];
#pragma omp simd
      for (int j = 0; j < S; ++j) out[j] = narrow_bits(wide_bits(p[j]) * (da[j] - dot));
    }
  }
}

}  // namespace

// ---- elementwise ----

void prepare_tables() { gelu_tables(); }

void fill(T* x, size_t n, T value) {
  detail::parallel_chunks(n, 2 * kChunk, 8 * kChunk, [&](size_t b, size_t e) { std::fill(x + b, x + e, value); });
}

void activation_forward(Activation act, T* y, const T* x, size_t n) {
  switch (act) {
    case Activation::kNone:
      map<Identity>(y, x, n, kParallelMin);
      return;
    case Activation::kGelu: {
      const uint16_t* table = gelu_tables().forward.data();
      detail::parallel_chunks(n, kChunk, kParallelMin,
                              [&](size_t b, size_t e) { gelu_forward_chunk(y + b, x + b, e - b, table); });
      return;
    }
    case Activation::kRelu:
      map<ReluForward>(y, x, n, kParallelMin);
      return;
    case Activation::kTanh:
      map<TanhForward>(y, x, n, kChunk);
      return;
  }
  fail("activation_forward: unknown activation");
}

void activation_backward(Activation act, T* dx, const T* dy, const T* x, size_t n) {
  switch (act) {
    case Activation::kNone:
      map<Identity>(dx, dy, n, kParallelMin);
      return;
    case Activation::kGelu: {
      const float* table = gelu_tables().derivative.data();
      detail::parallel_chunks(n, kChunk, kParallelMin,
                              [&](size_t b, size_t e) { gelu_backward_chunk(dx + b, dy + b, x + b, e - b, table); });
      return;
    }
    case Activation::kRelu:
      map2<ReluBackward>(dx, dy, x, n, kParallelMin);
      return;
    case Activation::kTanh:
      map2<TanhBackward>(dx, dy, x, n, kChunk);
      return;
  }
  fail("activation_backward: unknown activation");
}

void add(T* out, const T* a, const T* b, size_t n) { map2<Sum>(out, a, b, n, kParallelMin); }

void accumulate(T* y, const T* x, size_t n) { map2<Sum>(y, y, x, n, kParallelMin); }

void scale(T* x, size_t n, float alpha) {
  detail::parallel_chunks(n, kChunk, kParallelMin, [&](size_t b, size_t e) { scale_chunk(x + b, e - b, alpha); });
}

void dropout_forward(T* y, uint8_t* keep, const T* x, size_t n, float p, const DropoutKey& key) {
  check_dropout_p(p, "dropout_forward");
  if (p == 0.0f) {
    map<Identity>(y, x, n, kParallelMin);
    if (keep != nullptr) std::memset(keep, 1, n);
    return;
  }
  ELECTRA_CHECK(keep != nullptr, "dropout_forward: keep mask is null");
  ELECTRA_CHECK(key.elements_per_example > 0, "dropout_forward: elements_per_example must be positive");
  const float keep_scale = 1.0f / (1.0f - p);
  // Every keep bit is a function of its element index, so the chunks only decide who computes what.
  detail::parallel_chunks(n, kChunk, kChunk, [&](size_t b, size_t e) {
    cpu::dropout_keep_mask(keep + b, b, e - b, p, key);
    apply_keep_chunk(y + b, x + b, keep + b, keep_scale, e - b);
  });
}

void dropout_backward(T* dx, const T* dy, const uint8_t* keep, size_t n, float p) {
  check_dropout_p(p, "dropout_backward");
  if (p == 0.0f) {
    map<Identity>(dx, dy, n, kParallelMin);
    return;
  }
  const float keep_scale = 1.0f / (1.0f - p);
  detail::parallel_chunks(n, kChunk, kParallelMin,
                          [&](size_t b, size_t e) { apply_keep_chunk(dx + b, dy + b, keep + b, keep_scale, e - b); });
}

// ---- normalisation ----

void layernorm_forward(T* y, float* mean, float* rstd, const T* x, const T* gamma, const T* beta, int rows, int cols,
                       float eps) {
  ELECTRA_CHECK(rows >= 0 && cols > 0, "layernorm_forward: bad shape rows=", rows, " cols=", cols);
  const int blocks = (rows + kRowBlock - 1) / kRowBlock;
  const bool parallel = static_cast<long long>(rows) * cols > kRowsParallelMin;
#pragma omp parallel for schedule(static) if (parallel)
  for (int blk = 0; blk < blocks; ++blk) {
    layernorm_forward_rows(y, mean, rstd, x, gamma, beta, blk * kRowBlock, std::min(rows, (blk + 1) * kRowBlock), cols,
                           eps);
  }
}

void layernorm_backward(T* dx, float* dgamma, float* dbeta, const T* dy, const T* x, const float* mean,
                        const float* rstd, const T* gamma, int rows, int cols) {
  layernorm_backward_impl(dx, nullptr, nullptr, 1.0f, dgamma, dbeta, dy, x, mean, rstd, gamma, rows, cols,
                          "layernorm_backward");
}

void dropout_add_layernorm_forward(T* y, T* res, uint8_t* keep, float* mean, float* rstd, const T* x, const T* residual,
                                   const T* gamma, const T* beta, int rows, int cols, float p, const DropoutKey& key,
                                   float eps) {
  // The unfused sequence's checks, in its order.
  check_dropout_p(p, "dropout_forward");
  if (p != 0.0f) {
    ELECTRA_CHECK(keep != nullptr, "dropout_forward: keep mask is null");
    ELECTRA_CHECK(key.elements_per_example > 0, "dropout_forward: elements_per_example must be positive");
  }
  ELECTRA_CHECK(rows >= 0 && cols > 0, "layernorm_forward: bad shape rows=", rows, " cols=", cols);
  const float keep_scale = p == 0.0f ? 1.0f : 1.0f / (1.0f - p);
  const int blocks = (rows + kRowBlock - 1) / kRowBlock;
  const bool parallel = static_cast<long long>(rows) * cols > kRowsParallelMin;
#pragma omp parallel for schedule(static) if (parallel)
  for (int blk = 0; blk < blocks; ++blk) {
    const int r0 = blk * kRowBlock, r1 = std::min(rows, (blk + 1) * kRowBlock);
    const size_t begin = static_cast<size_t>(r0) * cols, count = static_cast<size_t>(r1 - r0) * cols;
    if (p != 0.0f) {
      cpu::dropout_keep_mask(keep + begin, begin, count, p, key);
      dropout_add_layernorm_rows<true>(y, res, keep, keep_scale, mean, rstd, x, residual, gamma, beta, r0, r1, cols,
                                       eps);
    } else {
      if (keep != nullptr) std::memset(keep + begin, 1, count);
      dropout_add_layernorm_rows<false>(y, res, nullptr, keep_scale, mean, rstd, x, residual, gamma, beta, r0, r1, cols,
                                        eps);
    }
  }
}

void layernorm_dropout_backward(T* d_res, T* dx, float* dgamma, float* dbeta, const T* dy, const T* res,
                                const float* mean, const float* rstd, const T* gamma, const uint8_t* keep, int rows,
                                int cols, float p) {
  ELECTRA_CHECK(d_res != nullptr || dx == nullptr, "layernorm_dropout_backward: dx needs d_res");
  if (dx != nullptr) check_dropout_p(p, "dropout_backward");
  const bool dropout = dx != nullptr && p != 0.0f;
  layernorm_backward_impl(d_res, dx, dropout ? keep : nullptr, dropout ? 1.0f / (1.0f - p) : 1.0f, dgamma, dbeta, dy,
                          res, mean, rstd, gamma, rows, cols, "layernorm_backward");
}

// ---- embeddings ----

void embedding_forward(T* out, const int32_t* ids, const int32_t* type_ids, const int32_t* position_ids,
                       const T* word_table, const T* position_table, const T* type_table, int B, int S, int E) {
  ELECTRA_CHECK(B >= 0 && S >= 0 && E > 0, "embedding_forward: bad shape B=", B, " S=", S, " E=", E);
  const size_t tokens = static_cast<size_t>(B) * S;
  check_non_negative(ids, tokens, "embedding_forward: ids");
  check_non_negative(type_ids, tokens, "embedding_forward: type_ids");
  check_non_negative(position_ids, tokens, "embedding_forward: position_ids");
  // Blocks of 32 tokens: each token's row is independent, so any split gives the same bits.
  constexpr size_t kTokens = 32;
  const size_t blocks = (tokens + kTokens - 1) / kTokens;
#pragma omp parallel for schedule(static) if (tokens * E > 16384)
  for (size_t blk = 0; blk < blocks; ++blk) {
    embedding_tokens(out, ids, type_ids, position_ids, word_table, position_table, type_table, blk * kTokens,
                     std::min(tokens, (blk + 1) * kTokens), S, E);
  }
}

void embedding_backward(float* dword, float* dposition, float* dtype, const T* dout, const int32_t* ids,
                        const int32_t* type_ids, const int32_t* position_ids, int B, int S, int E) {
  ELECTRA_CHECK(B >= 0 && S >= 0 && E > 0, "embedding_backward: bad shape B=", B, " S=", S, " E=", E);
  const size_t tokens = static_cast<size_t>(B) * S;
  check_non_negative(ids, tokens, "embedding_backward: ids");
  check_non_negative(type_ids, tokens, "embedding_backward: type_ids");
  check_non_negative(position_ids, tokens, "embedding_backward: position_ids");
  // Each thread owns a block of columns of all three tables: no races, and every element sums its
  // tokens in (b, s) order whatever the split.
  const int blocks = (E + kEmbeddingColumnBlock - 1) / kEmbeddingColumnBlock;
#pragma omp parallel for schedule(static) if (tokens * E > 16384)
  for (int blk = 0; blk < blocks; ++blk) {
    const int c0 = blk * kEmbeddingColumnBlock, c1 = std::min(E, c0 + kEmbeddingColumnBlock);
    embedding_backward_columns(dword, dposition, dtype, dout, ids, type_ids, position_ids, tokens, S, E, c0, c1);
  }
}

void gather_rows(T* out, const T* x, const int32_t* positions, int B, int S, int P, int C) {
  ELECTRA_CHECK(B >= 0 && S > 0 && P >= 0 && C > 0, "gather_rows: bad shape");
  check_positions(positions, B, P, S, "gather_rows");
  const size_t rows = static_cast<size_t>(B) * P;
#pragma omp parallel for schedule(static) if (rows * C > 16384)
  for (size_t i = 0; i < rows; ++i) {
    gather_row(out + i * C, x + ((i / P) * S + positions[i]) * C, C);
  }
}

void scatter_add_rows(T* dx, const T* dout, const int32_t* positions, int B, int S, int P, int C) {
  ELECTRA_CHECK(B >= 0 && S > 0 && P >= 0 && C > 0, "scatter_add_rows: bad shape");
  check_positions(positions, B, P, S, "scatter_add_rows");
  // Examples never share rows of dx, so they run in parallel; inside one, predictions add in order.
  const bool parallel = static_cast<size_t>(B) * P * C > 16384;
#pragma omp parallel for schedule(static) if (parallel)
  for (int b = 0; b < B; ++b) {
    scatter_add_example(dx + static_cast<size_t>(b) * S * C, dout + static_cast<size_t>(b) * P * C,
                        positions + static_cast<size_t>(b) * P, P, C);
  }
}

// ---- losses and sampling ----

void softmax_cross_entropy(float* loss, T* dlogits, int32_t* argmax, const T* logits, const int32_t* labels,
                           const float* grad_scale, int rows, int V) {
  ELECTRA_CHECK(rows >= 0 && V > 0, "softmax_cross_entropy: bad shape rows=", rows, " V=", V);
  for (int r = 0; r < rows; ++r) {
    ELECTRA_CHECK(labels[r] >= 0 && labels[r] < V, "softmax_cross_entropy: labels[", r, "] = ", labels[r],
                  " outside [0, ", V, ")");
  }
  for_each_widened_tile(logits, rows, V, [&](int r0, int r1, float* w) {
    // The float kernel turns the widened logits into dlogits in place (it allows the alias).
    cpu::softmax_cross_entropy<float>(loss != nullptr ? loss + r0 : nullptr, dlogits != nullptr ? w : nullptr,
                                      argmax != nullptr ? argmax + r0 : nullptr, w, labels + r0,
                                      grad_scale != nullptr ? grad_scale + r0 : nullptr, r1 - r0, V);
    if (dlogits != nullptr) narrow_chunk(dlogits + static_cast<size_t>(r0) * V, w, static_cast<size_t>(r1 - r0) * V);
  });
}

void log_softmax(T* y, const T* x, int rows, int V) {
  ELECTRA_CHECK(rows >= 0 && V > 0, "log_softmax: bad shape rows=", rows, " V=", V);
  for_each_widened_tile(x, rows, V, [&](int r0, int r1, float* w) {
    cpu::log_softmax<float>(w, w, r1 - r0, V);
    narrow_chunk(y + static_cast<size_t>(r0) * V, w, static_cast<size_t>(r1 - r0) * V);
  });
}

void sigmoid_cross_entropy(float* loss, T* dlogit, const T* logit, const int32_t* label, const float* grad_scale,
                           size_t n) {
  detail::parallel_chunks(n, kSigmoidTile, 16384, [&](size_t b, size_t e) {
    float* w = scratch<kTileA>(kSigmoidTile);
    float* d = dlogit != nullptr ? scratch<kTileB>(kSigmoidTile) : nullptr;
    widen_chunk(w, logit + b, e - b);
    cpu::sigmoid_cross_entropy<float>(loss != nullptr ? loss + b : nullptr, d, w, label + b,
                                      grad_scale != nullptr ? grad_scale + b : nullptr, e - b);
    if (d != nullptr) narrow_chunk(dlogit + b, d, e - b);
  });
}

void gumbel_sample(int32_t* samples, const T* logits, const int32_t* disallow, int rows, int V, float temperature,
                   uint64_t seed, uint64_t step, uint64_t first_example, int rows_per_example) {
  detail::gumbel_sample_rows(samples, logits, disallow, rows, V, temperature, seed, step, first_example,
                             rows_per_example,
                             [](double* score, const PhiloxStream& stream, uint64_t n0, const T* x, int count,
                                int banned, double t) { gumbel_scores(score, stream, n0, x, count, banned, t); });
}

// ---- reductions ----

void attention_softmax_rows(T* probs, T* attend, float* scores, const int32_t* mask, const uint8_t* keep,
                            float keep_scale, int rows, int S) {
  attention_softmax_row_block(probs, attend, scores, mask, keep, keep_scale, rows, S);
}

void attention_dropped_probs(T* attend, const T* probs, const uint8_t* keep, float keep_scale, size_t n) {
  detail::parallel_chunks(n, kChunk, kParallelMin, [&](size_t b, size_t e) {
    attention_dropped_chunk(attend + b, probs + b, keep + b, keep_scale, e - b);
  });
}

void attention_softmax_backward_rows(T* ds, const float* d_attend, const T* probs, const uint8_t* keep,
                                     float keep_scale, int rows, int S) {
  attention_softmax_backward_block(ds, d_attend, probs, keep, keep_scale, rows, S);
}

double sum_squares(const T* x, size_t n) {
  const size_t chunks = (n + kSumSquaresChunk - 1) / kSumSquaresChunk;
  if (chunks == 0) return 0.0;
  // One partial per chunk, then a serial sum in chunk order (optimizer.cpp's order).
  double* partial = scratch<kSumPartials, double>(chunks);
#pragma omp parallel for schedule(static) if (chunks > 1)
  for (size_t c = 0; c < chunks; ++c) {
    const size_t begin = c * kSumSquaresChunk, end = std::min(n, begin + kSumSquaresChunk);
    partial[c] = sum_squares_chunk(x + begin, end - begin);
  }
  double total = 0.0;
  for (size_t c = 0; c < chunks; ++c) total += partial[c];
  return total;
}

void column_sums_accumulate(float* dbias, const T* dy, int rows, int cols) {
  // Fixed column blocks, rows in order inside each: blas.cpp's order, whatever the thread count.
  const int blocks = (cols + kColumnSumBlock - 1) / kColumnSumBlock;
  const bool parallel = static_cast<long long>(rows) * cols > kRowsParallelMin;
#pragma omp parallel for schedule(static) if (parallel)
  for (int blk = 0; blk < blocks; ++blk) {
    const int c0 = blk * kColumnSumBlock;
    column_block_sums(dbias, dy, rows, cols, c0, std::min(kColumnSumBlock, cols - c0));
  }
}

}  // namespace electra::cpu::bf16
