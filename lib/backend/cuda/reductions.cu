// Kernels that reduce along rows or columns: column sums (bias gradients), LayerNorm forward/backward,
// softmax cross-entropy, log-softmax, Gumbel-max sampling, and attention's masked softmax.
//
// Shapes: "warp per row" kernels (LayerNorm, attention rows: widths up to a few thousand) run 8 rows per
// 256-thread block; "block per row" kernels (vocabulary-wide rows: cross-entropy, log-softmax, sampling)
// run one row per 256-thread block. Column sums are two fixed-shape passes (see kernels.h).
// Storage-typed kernels take D = float or __nv_bfloat16 (storage.cuh): elements are read as float, all
// arithmetic is float, and stores round to nearest-even; the launchers are instantiated for float and
// electra::bfloat16 at the end of the file.
#include <climits>

#include "lib/backend/cuda/attention_rows.cuh"
#include "lib/backend/cuda/device_util.cuh"
#include "lib/backend/cuda/elementwise_math.h"
#include "lib/backend/cuda/kernels.h"
#include "lib/backend/cuda/layernorm_rows.cuh"
#include "lib/backend/cuda/storage.cuh"

namespace electra::cuda {
namespace {

constexpr int kRowsPerBlock = kBlock / kWarp;  // warp-per-row kernels
constexpr int kColumnTile = 32;                // columns per block of the column-sum passes
constexpr int kRowLanes = 8;                   // threads along rows in those blocks

int partial_blocks(int rows) { return (rows + kPartialRows - 1) / kPartialRows; }

// ---- column sums ----

// partials[blockIdx.y, c] = sum of x[r, c] over rows r of row block blockIdx.y.
template <typename D>
__global__ void column_partials_kernel(float* partials, const D* x, int rows, int cols) {
  __shared__ float smem[kRowLanes][kColumnTile + 1];
  const int c = blockIdx.x * kColumnTile + threadIdx.x;
  const int r0 = blockIdx.y * kPartialRows;
  const int r1 = r0 + kPartialRows < rows ? r0 + kPartialRows : rows;
  float acc = 0.0f;
  if (c < cols) {
    for (int r = r0 + threadIdx.y; r < r1; r += kRowLanes) acc += to_float(x[static_cast<size_t>(r) * cols + c]);
  }
  smem[threadIdx.y][threadIdx.x] = acc;
  __syncthreads();
  if (threadIdx.y == 0 && c < cols) {
    float total = smem[0][threadIdx.x];
    for (int i = 1; i < kRowLanes; ++i) total += smem[i][threadIdx.x];
    partials[static_cast<size_t>(blockIdx.y) * cols + c] = total;
  }
}

// The LayerNorm parameter-gradient partials: dgamma (dy * xhat) and dbeta (dy).
template <typename D>
__global__ void layernorm_param_partials_kernel(float* partial_gamma, float* partial_beta, const D* dy, const D* x,
                                                const float* mean, const float* rstd, int rows, int cols) {
  __shared__ float sg[kRowLanes][kColumnTile + 1];
  __shared__ float sb[kRowLanes][kColumnTile + 1];
  const int c = blockIdx.x * kColumnTile + threadIdx.x;
  const int r0 = blockIdx.y * kPartialRows;
  const int r1 = r0 + kPartialRows < rows ? r0 + kPartialRows : rows;
  float g = 0.0f, b = 0.0f;
  if (c < cols) {
    for (int r = r0 + threadIdx.y; r < r1; r += kRowLanes) {
      const size_t i = static_cast<size_t>(r) * cols + c;
      const float d = to_float(dy[i]);
      g += d * (to_float(x[i]) - mean[r]) * rstd[r];
      b += d;
    }
  }
  sg[threadIdx.y][threadIdx.x] = g;
  sb[threadIdx.y][threadIdx.x] = b;
  __syncthreads();
  if (threadIdx.y == 0 && c < cols) {
    float tg = sg[0][threadIdx.x], tb = sb[0][threadIdx.x];
    for (int i = 1; i < kRowLanes; ++i) {
      tg += sg[i][threadIdx.x];
      tb += sb[i][threadIdx.x];
    }
    const size_t slot = static_cast<size_t>(blockIdx.y) * cols + c;
    partial_gamma[slot] = tg;
    partial_beta[slot] = tb;
  }
}

// out[c] += sum over the `blocks` partial rows of column c.
__global__ void add_partials_kernel(float* out, const float* partials, int blocks, int cols) {
  __shared__ float smem[kRowLanes][kColumnTile + 1];
  const int c = blockIdx.x * kColumnTile + threadIdx.x;
  float acc = 0.0f;
  if (c < cols) {
    for (int p = threadIdx.y; p < blocks; p += kRowLanes) acc += partials[static_cast<size_t>(p) * cols + c];
  }
  smem[threadIdx.y][threadIdx.x] = acc;
  __syncthreads();
  if (threadIdx.y == 0 && c < cols) {
    float total = smem[0][threadIdx.x];
    for (int i = 1; i < kRowLanes; ++i) total += smem[i][threadIdx.x];
    out[c] += total;
  }
}

void add_partials(const Stream& s, float* out, const float* partials, int blocks, int cols) {
  const dim3 block(kColumnTile, kRowLanes);
  add_partials_kernel<<<(cols + kColumnTile - 1) / kColumnTile, block, 0, s.stream>>>(out, partials, blocks, cols);
  ELECTRA_CUDA_CHECK_LAUNCH("add_partials_kernel");
}

dim3 partials_grid(int rows, int cols) {
  const int blocks = partial_blocks(rows);
  ELECTRA_CHECK(blocks <= 65535, "column sums: ", rows, " rows is more than this kernel's grid covers");
  return dim3((cols + kColumnTile - 1) / kColumnTile, blocks);
}

// ---- LayerNorm ----

template <typename D>
__global__ void layernorm_forward_kernel(D* y, float* mean, float* rstd, const D* x, const D* gamma, const D* beta,
                                         int rows, int cols, float eps) {
  const int row = blockIdx.x * kRowsPerBlock + threadIdx.x / kWarp;
  const int lane = threadIdx.x % kWarp;
  if (row >= rows) return;  // whole warps only
  const D* xr = x + static_cast<size_t>(row) * cols;
  D* yr = y + static_cast<size_t>(row) * cols;
  // Two passes (mean, then centred squares), as the CPU backend.
  float sum = 0.0f;
  for (int c = lane; c < cols; c += kWarp) sum += to_float(xr[c]);
  sum = warp_reduce(sum, SumOp{});
  const float mu = math::layernorm_mean(sum, cols);
  const float rs = math::layernorm_rstd(warp_centred_squares(xr, mu, cols, lane), cols, eps);
  if (lane == 0) {
    if (mean != nullptr) mean[row] = mu;
    if (rstd != nullptr) rstd[row] = rs;
  }
  for (int c = lane; c < cols; c += kWarp) yr[c] = layernorm_output(to_float(xr[c]), mu, rs, gamma, beta, c);
}

// dx = rstd * (g - mean(g) - xhat * mean(g * xhat)), g = dy * gamma
template <typename D>
__global__ void layernorm_dx_kernel(D* dx, const D* dy, const D* x, const float* mean, const float* rstd,
                                    const D* gamma, int rows, int cols) {
  const int row = blockIdx.x * kRowsPerBlock + threadIdx.x / kWarp;
  const int lane = threadIdx.x % kWarp;
  if (row >= rows) return;
  const size_t off = static_cast<size_t>(row) * cols;
  const D* xr = x + off;
  const D* dyr = dy + off;
  const float mu = mean[row], rs = rstd[row];
  const LayerNormGradientMeans means = warp_layernorm_gradient_means(dyr, xr, gamma, mu, rs, cols, lane);
  D* dxr = dx + off;
  for (int c = lane; c < cols; c += kWarp) {
    dxr[c] = from_float<D>(layernorm_input_gradient_at(dyr, xr, gamma, mu, rs, means, c));
  }
}

// ---- vocabulary-wide rows ----

template <typename D>
__global__ void softmax_cross_entropy_kernel(float* loss, D* dlogits, int32_t* argmax, const D* logits,
                                             const int32_t* labels, const float* grad_scale, int V, unsigned* errors) {
  __shared__ float fsmem[32];
  __shared__ int ismem[32];
  const int r = blockIdx.x;
  const int label = labels[r];
  if (label < 0 || label >= V) {  // uniform over the block
    if (threadIdx.x == 0) report(errors, kErrorLabel);
    return;
  }
  const D* x = logits + static_cast<size_t>(r) * V;
  D* d = dlogits != nullptr ? dlogits + static_cast<size_t>(r) * V : nullptr;  // may alias x
  // Read before any thread writes d; every later pass has each thread touch only its own j.
  const float x_label = to_float(x[label]);
  float mx = -INFINITY;
  for (int j = threadIdx.x; j < V; j += blockDim.x) mx = fmaxf(mx, to_float(x[j]));
  mx = block_reduce(mx, MaxOp{}, fsmem);
  if (argmax != nullptr) {
    int first = INT_MAX;
    for (int j = threadIdx.x; j < V; j += blockDim.x) {
      if (to_float(x[j]) == mx) {
        first = j;
        break;
      }
    }
    first = block_reduce(first, MinOp{}, ismem);
    if (threadIdx.x == 0) argmax[r] = first == INT_MAX ? 0 : first;
  }
  float sum = 0.0f;
  for (int j = threadIdx.x; j < V; j += blockDim.x) sum += math::exp_f(to_float(x[j]) - mx);
  sum = block_reduce(sum, SumOp{}, fsmem);
  if (loss != nullptr && threadIdx.x == 0) loss[r] = mx + logf(sum) - x_label;
  if (d != nullptr) {
    const float gs = grad_scale != nullptr ? grad_scale[r] : 1.0f;
    const float f = gs / sum;
    for (int j = threadIdx.x; j < V; j += blockDim.x) {
      float v = math::exp_f(to_float(x[j]) - mx) * f;
      if (j == label) v -= gs;
      d[j] = from_float<D>(v);
    }
  }
}

template <typename D>
__global__ void log_softmax_kernel(D* y, const D* x, int V) {
  __shared__ float smem[32];
  const size_t off = static_cast<size_t>(blockIdx.x) * V;
  const D* xr = x + off;
  D* yr = y + off;  // may alias xr: each thread touches only its own j
  float mx = -INFINITY;
  for (int j = threadIdx.x; j < V; j += blockDim.x) mx = fmaxf(mx, to_float(xr[j]));
  mx = block_reduce(mx, MaxOp{}, smem);
  float sum = 0.0f;
  for (int j = threadIdx.x; j < V; j += blockDim.x) sum += math::exp_f(to_float(xr[j]) - mx);
  sum = block_reduce(sum, SumOp{}, smem);
  const float lse = mx + logf(sum);
  for (int j = threadIdx.x; j < V; j += blockDim.x) yr[j] = from_float<D>(to_float(xr[j]) - lse);
}

template <typename D>
__global__ void gumbel_sample_kernel(int32_t* samples, const D* logits, const int32_t* disallow, int V,
                                     double temperature, uint64_t seed, uint64_t step, uint64_t first_example,
                                     int rows_per_example) {
  __shared__ double score_smem[32];
  __shared__ int index_smem[32];
  const int r = blockIdx.x;
  const D* x = logits + static_cast<size_t>(r) * V;
  const PhiloxStream stream(seed, RandomPurpose::kSampling, step, first_example + r / rows_per_example);
  const uint64_t base = static_cast<uint64_t>(r % rows_per_example) * V;
  const int banned = disallow != nullptr ? disallow[r] : -1;
  math::ArgmaxPair best{-INFINITY, math::ArgmaxPair::kNoIndex};
  for (int v = threadIdx.x; v < V; v += blockDim.x) {
    const double score = math::gumbel_score(stream, base + v, to_float(x[v]), v == banned, temperature);
    if (score > best.score) best = math::ArgmaxPair{score, v};
  }
  // Warp butterfly, then warps in order.
  for (int m = kWarp / 2; m > 0; m >>= 1) {
    const math::ArgmaxPair other{__shfl_xor_sync(0xffffffffu, best.score, m),
                                 __shfl_xor_sync(0xffffffffu, best.index, m)};
    best = math::argmax_combine(best, other);
  }
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp;
  if (lane == 0) {
    score_smem[warp] = best.score;
    index_smem[warp] = best.index;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    math::ArgmaxPair total{score_smem[0], index_smem[0]};
    for (int w = 1; w < static_cast<int>(blockDim.x) / kWarp; ++w) {
      total = math::argmax_combine(total, math::ArgmaxPair{score_smem[w], index_smem[w]});
    }
    samples[r] = total.index == math::ArgmaxPair::kNoIndex ? 0 : total.index;
  }
}

// ---- attention rows (one warp per query row of head h; attention_rows.cuh) ----

__global__ void attention_softmax_forward_kernel(float* probs, uint8_t* keep, float* dropped, const int32_t* mask,
                                                 int B, int H, int S, int h, float dropout, DropoutKey key,
                                                 float keep_scale) {
  const int row = blockIdx.x * kRowsPerBlock + threadIdx.x / kWarp;  // b * S + i
  const int lane = threadIdx.x % kWarp;
  if (row >= B * S) return;
  const int b = row / S, i = row % S;
  const size_t base = ((static_cast<size_t>(b) * H + h) * S + i) * S;  // element (b, h, i, 0)
  float* p = probs + base;
  const int32_t* m = mask != nullptr ? mask + static_cast<size_t>(b) * S : nullptr;
  warp_masked_softmax_row(p, m, query_mask_of(m, i), S, lane);
  float* out = dropout > 0.0f ? dropped + (static_cast<size_t>(b) * S + i) * S : nullptr;
  warp_dropout_row(out, keep, p, key, base, math::attention_keep_index(key, b, H, h, S, i, 0), S, lane, dropout,
                   keep_scale);
}

__global__ void attention_apply_keep_kernel(float* dropped, const float* probs, const uint8_t* keep, int B, int H,
                                            int S, int h, float keep_scale) {
  const size_t SS = static_cast<size_t>(S) * S, n = static_cast<size_t>(B) * SS;
  for (size_t e = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; e < n;
       e += static_cast<size_t>(blockDim.x) * gridDim.x) {
    const size_t b = e / SS, src = (b * H + h) * SS + (e - b * SS);
    dropped[e] = probs[src] * (keep[src] ? keep_scale : 0.0f);
  }
}

__global__ void attention_softmax_backward_kernel(float* ds, const float* probs, const uint8_t* keep, int B, int H,
                                                  int S, int h, float keep_scale, float score_scale) {
  const int row = blockIdx.x * kRowsPerBlock + threadIdx.x / kWarp;
  const int lane = threadIdx.x % kWarp;
  if (row >= B * S) return;
  const int b = row / S, i = row % S;
  const size_t base = ((static_cast<size_t>(b) * H + h) * S + i) * S;
  float* d = ds + base;
  const float* p = probs + base;
  const uint8_t* k = keep != nullptr ? keep + base : nullptr;
  const float dot = warp_dropout_gradient_dot(d, p, k, S, lane, keep_scale);
  ELECTRA_ATTENTION_KEYS(j, S, lane) d[j] = math::score_gradient(p[j], d[j], dot, score_scale);
}

unsigned warp_rows_grid(long long rows) { return static_cast<unsigned>((rows + kRowsPerBlock - 1) / kRowsPerBlock); }

}  // namespace

size_t column_partials(int rows, int cols) { return static_cast<size_t>(partial_blocks(rows)) * cols; }

template <typename T>
void column_sums_accumulate(const Stream& s, float* out, const T* x, int rows, int cols, float* partials) {
  if (rows <= 0 || cols <= 0) return;
  column_partials_kernel<<<partials_grid(rows, cols), dim3(kColumnTile, kRowLanes), 0, s.stream>>>(
      partials, device_ptr(x), rows, cols);
  ELECTRA_CUDA_CHECK_LAUNCH("column_partials_kernel");
  add_partials(s, out, partials, partial_blocks(rows), cols);
}

template <typename T>
void layernorm_forward(const Stream& s, T* y, float* mean, float* rstd, const T* x, const T* gamma, const T* beta,
                       int rows, int cols, float eps) {
  if (rows <= 0) return;
  layernorm_forward_kernel<<<warp_rows_grid(rows), kBlock, 0, s.stream>>>(
      device_ptr(y), mean, rstd, device_ptr(x), device_ptr(gamma), device_ptr(beta), rows, cols, eps);
  ELECTRA_CUDA_CHECK_LAUNCH("layernorm_forward_kernel");
}

template <typename T>
void layernorm_backward(const Stream& s, T* dx, float* dgamma, float* dbeta, const T* dy, const T* x, const float* mean,
                        const float* rstd, const T* gamma, int rows, int cols, float* partials) {
  if (rows <= 0) return;
  if (dx != nullptr) {
    layernorm_dx_kernel<<<warp_rows_grid(rows), kBlock, 0, s.stream>>>(device_ptr(dx), device_ptr(dy), device_ptr(x),
                                                                       mean, rstd, device_ptr(gamma), rows, cols);
    ELECTRA_CUDA_CHECK_LAUNCH("layernorm_dx_kernel");
  }
  if (dgamma == nullptr && dbeta == nullptr) return;
  float* partial_gamma = partials;
  float* partial_beta = partials + column_partials(rows, cols);
  layernorm_param_partials_kernel<<<partials_grid(rows, cols), dim3(kColumnTile, kRowLanes), 0, s.stream>>>(
      partial_gamma, partial_beta, device_ptr(dy), device_ptr(x), mean, rstd, rows, cols);
  ELECTRA_CUDA_CHECK_LAUNCH("layernorm_param_partials_kernel");
  if (dgamma != nullptr) add_partials(s, dgamma, partial_gamma, partial_blocks(rows), cols);
  if (dbeta != nullptr) add_partials(s, dbeta, partial_beta, partial_blocks(rows), cols);
}

template <typename T>
void softmax_cross_entropy(const Stream& s, float* loss, T* dlogits, int32_t* argmax, const T* logits,
                           const int32_t* labels, const float* grad_scale, int rows, int V) {
  if (rows <= 0) return;
  softmax_cross_entropy_kernel<<<rows, kBlock, 0, s.stream>>>(loss, device_ptr(dlogits), argmax, device_ptr(logits),
                                                              labels, grad_scale, V, s.errors);
  ELECTRA_CUDA_CHECK_LAUNCH("softmax_cross_entropy_kernel");
}

template <typename T>
void log_softmax(const Stream& s, T* y, const T* x, int rows, int V) {
  if (rows <= 0) return;
  log_softmax_kernel<<<rows, kBlock, 0, s.stream>>>(device_ptr(y), device_ptr(x), V);
  ELECTRA_CUDA_CHECK_LAUNCH("log_softmax_kernel");
}

template <typename T>
void gumbel_sample(const Stream& s, int32_t* samples, const T* logits, const int32_t* disallow, int rows, int V,
                   float temperature, uint64_t seed, uint64_t step, uint64_t first_example, int rows_per_example) {
  if (rows <= 0) return;
  gumbel_sample_kernel<<<rows, kBlock, 0, s.stream>>>(samples, device_ptr(logits), disallow, V,
                                                      static_cast<double>(temperature), seed, step, first_example,
                                                      rows_per_example);
  ELECTRA_CUDA_CHECK_LAUNCH("gumbel_sample_kernel");
}

void attention_softmax_forward(const Stream& s, float* probs, uint8_t* keep, float* dropped, const int32_t* mask, int B,
                               int H, int S, int h, float dropout, const DropoutKey& key) {
  const long long rows = static_cast<long long>(B) * S;
  if (rows <= 0) return;
  const float keep_scale = dropout > 0.0f ? 1.0f / (1.0f - dropout) : 1.0f;
  attention_softmax_forward_kernel<<<warp_rows_grid(rows), kBlock, 0, s.stream>>>(probs, keep, dropped, mask, B, H, S,
                                                                                  h, dropout, key, keep_scale);
  ELECTRA_CUDA_CHECK_LAUNCH("attention_softmax_forward_kernel");
}

void attention_apply_keep(const Stream& s, float* dropped, const float* probs, const uint8_t* keep, int B, int H, int S,
                          int h, float keep_scale) {
  const size_t n = static_cast<size_t>(B) * S * S;
  if (n == 0) return;
  attention_apply_keep_kernel<<<grid_for(n, s), kBlock, 0, s.stream>>>(dropped, probs, keep, B, H, S, h, keep_scale);
  ELECTRA_CUDA_CHECK_LAUNCH("attention_apply_keep_kernel");
}

void attention_softmax_backward(const Stream& s, float* ds, const float* probs, const uint8_t* keep, int B, int H,
                                int S, int h, float keep_scale, float score_scale) {
  const long long rows = static_cast<long long>(B) * S;
  if (rows <= 0) return;
  attention_softmax_backward_kernel<<<warp_rows_grid(rows), kBlock, 0, s.stream>>>(ds, probs, keep, B, H, S, h,
                                                                                   keep_scale, score_scale);
  ELECTRA_CUDA_CHECK_LAUNCH("attention_softmax_backward_kernel");
}

#define ELECTRA_INSTANTIATE_REDUCTIONS(T)                                                                             \
  template void column_sums_accumulate<T>(const Stream&, float*, const T*, int, int, float*);                         \
  template void layernorm_forward<T>(const Stream&, T*, float*, float*, const T*, const T*, const T*, int, int,       \
                                     float);                                                                          \
  template void layernorm_backward<T>(const Stream&, T*, float*, float*, const T*, const T*, const float*,            \
                                      const float*, const T*, int, int, float*);                                      \
  template void softmax_cross_entropy<T>(const Stream&, float*, T*, int32_t*, const T*, const int32_t*, const float*, \
                                         int, int);                                                                   \
  template void log_softmax<T>(const Stream&, T*, const T*, int, int);                                                \
  template void gumbel_sample<T>(const Stream&, int32_t*, const T*, const int32_t*, int, int, float, uint64_t,        \
                                 uint64_t, uint64_t, int);
ELECTRA_INSTANTIATE_REDUCTIONS(float)
ELECTRA_INSTANTIATE_REDUCTIONS(bfloat16)
#undef ELECTRA_INSTANTIATE_REDUCTIONS

}  // namespace electra::cuda
