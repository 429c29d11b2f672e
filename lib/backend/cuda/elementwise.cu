// Elementwise kernels: fill, activations, add/accumulate/scale, dropout, bias rows, sigmoid
// cross-entropy, AdamW, and the sum of squares. Per-element arithmetic lives in elementwise_math.h.
#include "lib/backend/cuda/device_util.cuh"
#include "lib/backend/cuda/elementwise_math.h"
#include "lib/backend/cuda/kernels.h"

namespace electra::cuda {
namespace {

// Grid-stride loop over [0, n).
#define ELECTRA_GRID_LOOP(i, n)                                                        \
  for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < (n); \
       i += static_cast<size_t>(blockDim.x) * gridDim.x)

__global__ void fill_kernel(float* x, size_t n, float value) { ELECTRA_GRID_LOOP(i, n) x[i] = value; }

__global__ void activation_forward_kernel(Activation act, float* y, const float* x, size_t n) {
  ELECTRA_GRID_LOOP(i, n) y[i] = math::activation(act, x[i]);
}

__global__ void activation_backward_kernel(Activation act, float* dx, const float* dy, const float* x, size_t n) {
  ELECTRA_GRID_LOOP(i, n) dx[i] = math::activation_backward(act, dy[i], x[i]);
}

__global__ void add_kernel(float* out, const float* a, const float* b, size_t n) {
  ELECTRA_GRID_LOOP(i, n) out[i] = a[i] + b[i];
}

__global__ void accumulate_kernel(float* y, const float* x, size_t n) { ELECTRA_GRID_LOOP(i, n) y[i] += x[i]; }

__global__ void scale_kernel(float* x, size_t n, float alpha) { ELECTRA_GRID_LOOP(i, n) x[i] *= alpha; }

// One thread per group of four elements: one index division and (usually) one Philox block per group.
__global__ void dropout_forward_kernel(float* y, uint8_t* keep, const float* x, size_t n, float p, DropoutKey key,
                                       float keep_scale) {
  const size_t groups = (n + 3) / 4;
  ELECTRA_GRID_LOOP(g, groups) {
    const size_t i0 = 4 * g;
    const int count = n - i0 < 4 ? static_cast<int>(n - i0) : 4;
    uint8_t bits[4];
    math::dropout_keep_group(bits, key, i0, count, p);
    for (int u = 0; u < count; ++u) {
      keep[i0 + u] = bits[u];
      y[i0 + u] = x[i0 + u] * (bits[u] ? keep_scale : 0.0f);
    }
  }
}

__global__ void dropout_backward_kernel(float* dx, const float* dy, const uint8_t* keep, size_t n, float keep_scale) {
  ELECTRA_GRID_LOOP(i, n) dx[i] = dy[i] * (keep[i] ? keep_scale : 0.0f);
}

__global__ void broadcast_rows_kernel(float* y, const float* bias, size_t n, int cols) {
  ELECTRA_GRID_LOOP(i, n) y[i] = bias[i % cols];
}

__global__ void sigmoid_cross_entropy_kernel(float* loss, float* dlogit, const float* logit, const int32_t* label,
                                             const float* grad_scale, size_t n) {
  ELECTRA_GRID_LOOP(i, n) {
    math::sigmoid_cross_entropy(logit[i], static_cast<float>(label[i]), grad_scale != nullptr ? grad_scale[i] : 1.0f,
                                loss != nullptr ? loss + i : nullptr, dlogit != nullptr ? dlogit + i : nullptr);
  }
}

__global__ void adamw_kernel(float* params, const float* grads, float* m, float* v, size_t n, math::AdamParams a) {
  ELECTRA_GRID_LOOP(i, n) {
    float p = params[i], mi = m[i], vi = v[i];
    math::adamw_update(p, grads[i], mi, vi, a);
    params[i] = p;
    m[i] = mi;
    v[i] = vi;
  }
}

// Block c sums the squares of chunk c (kSumSquaresChunk elements) in double.
__global__ void sum_squares_chunks_kernel(double* partials, const float* x, size_t n) {
  __shared__ double smem[32];
  const size_t begin = blockIdx.x * kSumSquaresChunk;
  const size_t end = begin + kSumSquaresChunk < n ? begin + kSumSquaresChunk : n;
  double s = 0.0;
  for (size_t i = begin + threadIdx.x; i < end; i += blockDim.x) {
    const double v = x[i];
    s += v * v;
  }
  s = block_reduce(s, SumOp{}, smem);
  if (threadIdx.x == 0) partials[blockIdx.x] = s;
}

// One block adds the chunk sums.
__global__ void sum_partials_kernel(double* result, const double* partials, size_t chunks) {
  __shared__ double smem[32];
  double s = 0.0;
  for (size_t i = threadIdx.x; i < chunks; i += blockDim.x) s += partials[i];
  s = block_reduce(s, SumOp{}, smem);
  if (threadIdx.x == 0) *result = s;
}

#undef ELECTRA_GRID_LOOP

}  // namespace

void fill(const Stream& s, float* x, size_t n, float value) {
  if (n == 0) return;
  fill_kernel<<<grid_for(n, s), kBlock, 0, s.stream>>>(x, n, value);
  ELECTRA_CUDA_CHECK_LAUNCH("fill_kernel");
}

void activation_forward(const Stream& s, Activation act, float* y, const float* x, size_t n) {
  if (n == 0) return;
  activation_forward_kernel<<<grid_for(n, s), kBlock, 0, s.stream>>>(act, y, x, n);
  ELECTRA_CUDA_CHECK_LAUNCH("activation_forward_kernel");
}

void activation_backward(const Stream& s, Activation act, float* dx, const float* dy, const float* x, size_t n) {
  if (n == 0) return;
  activation_backward_kernel<<<grid_for(n, s), kBlock, 0, s.stream>>>(act, dx, dy, x, n);
  ELECTRA_CUDA_CHECK_LAUNCH("activation_backward_kernel");
}

void add(const Stream& s, float* out, const float* a, const float* b, size_t n) {
  if (n == 0) return;
  add_kernel<<<grid_for(n, s), kBlock, 0, s.stream>>>(out, a, b, n);
  ELECTRA_CUDA_CHECK_LAUNCH("add_kernel");
}

void accumulate(const Stream& s, float* y, const float* x, size_t n) {
  if (n == 0) return;
  accumulate_kernel<<<grid_for(n, s), kBlock, 0, s.stream>>>(y, x, n);
  ELECTRA_CUDA_CHECK_LAUNCH("accumulate_kernel");
}

void scale(const Stream& s, float* x, size_t n, float alpha) {
  if (n == 0) return;
  scale_kernel<<<grid_for(n, s), kBlock, 0, s.stream>>>(x, n, alpha);
  ELECTRA_CUDA_CHECK_LAUNCH("scale_kernel");
}

void dropout_forward(const Stream& s, float* y, uint8_t* keep, const float* x, size_t n, float p,
                     const DropoutKey& key) {
  if (n == 0) return;
  const float keep_scale = 1.0f / (1.0f - p);
  dropout_forward_kernel<<<grid_for((n + 3) / 4, s), kBlock, 0, s.stream>>>(y, keep, x, n, p, key, keep_scale);
  ELECTRA_CUDA_CHECK_LAUNCH("dropout_forward_kernel");
}

void dropout_backward(const Stream& s, float* dx, const float* dy, const uint8_t* keep, size_t n, float keep_scale) {
  if (n == 0) return;
  dropout_backward_kernel<<<grid_for(n, s), kBlock, 0, s.stream>>>(dx, dy, keep, n, keep_scale);
  ELECTRA_CUDA_CHECK_LAUNCH("dropout_backward_kernel");
}

void broadcast_rows(const Stream& s, float* y, const float* bias, int rows, int cols) {
  const size_t n = static_cast<size_t>(rows) * cols;
  if (n == 0) return;
  broadcast_rows_kernel<<<grid_for(n, s), kBlock, 0, s.stream>>>(y, bias, n, cols);
  ELECTRA_CUDA_CHECK_LAUNCH("broadcast_rows_kernel");
}

void sigmoid_cross_entropy(const Stream& s, float* loss, float* dlogit, const float* logit, const int32_t* label,
                           const float* grad_scale, size_t n) {
  if (n == 0) return;
  sigmoid_cross_entropy_kernel<<<grid_for(n, s), kBlock, 0, s.stream>>>(loss, dlogit, logit, label, grad_scale, n);
  ELECTRA_CUDA_CHECK_LAUNCH("sigmoid_cross_entropy_kernel");
}

void adamw_step(const Stream& s, float* params, const float* grads, float* m, float* v, size_t n,
                const math::AdamParams& a) {
  if (n == 0) return;
  adamw_kernel<<<grid_for(n, s), kBlock, 0, s.stream>>>(params, grads, m, v, n, a);
  ELECTRA_CUDA_CHECK_LAUNCH("adamw_kernel");
}

size_t sum_squares_partials(size_t n) { return (n + kSumSquaresChunk - 1) / kSumSquaresChunk; }

void sum_squares(const Stream& s, double* result, double* partials, const float* x, size_t n) {
  const size_t chunks = sum_squares_partials(n);
  if (chunks == 0) {
    ELECTRA_CUDA_CHECK(cudaMemsetAsync(result, 0, sizeof(double), s.stream));
    return;
  }
  ELECTRA_CHECK(chunks <= 0x7fffffffu, "sum_squares: ", n, " elements is too many");
  sum_squares_chunks_kernel<<<static_cast<unsigned>(chunks), kBlock, 0, s.stream>>>(partials, x, n);
  ELECTRA_CUDA_CHECK_LAUNCH("sum_squares_chunks_kernel");
  sum_partials_kernel<<<1, 1024, 0, s.stream>>>(result, partials, chunks);
  ELECTRA_CUDA_CHECK_LAUNCH("sum_partials_kernel");
}

}  // namespace electra::cuda
