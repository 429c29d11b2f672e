// Elementwise kernels: fill, bf16 <-> float conversion, activations, add/accumulate/scale, dropout, bias
// rows, sigmoid cross-entropy, AdamW, and the sum of squares. Per-element arithmetic lives in
// elementwise_math.h. Storage-typed kernels take D = float or __nv_bfloat16 (storage.cuh) and compute in
// float; each launcher is instantiated for float and electra::bfloat16 at the end of the file.
#include "lib/backend/cuda/device_util.cuh"
#include "lib/backend/cuda/elementwise_math.h"
#include "lib/backend/cuda/kernels.h"
#include "lib/backend/cuda/storage.cuh"

namespace electra::cuda {
namespace {

// Grid-stride loop over [0, n).
#define ELECTRA_GRID_LOOP(i, n)                                                        \
  for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < (n); \
       i += static_cast<size_t>(blockDim.x) * gridDim.x)

template <typename D>
__global__ void fill_kernel(D* x, size_t n, D value) {
  ELECTRA_GRID_LOOP(i, n) x[i] = value;
}

__global__ void widen_kernel(float* dst, const __nv_bfloat16* src, size_t n) {
  ELECTRA_GRID_LOOP(i, n) dst[i] = __bfloat162float(src[i]);
}

__global__ void narrow_kernel(__nv_bfloat16* dst, const float* src, size_t n) {
  ELECTRA_GRID_LOOP(i, n) dst[i] = __float2bfloat16_rn(src[i]);
}

template <typename D>
__global__ void activation_forward_kernel(Activation act, D* y, const D* x, size_t n) {
  ELECTRA_GRID_LOOP(i, n) y[i] = from_float<D>(math::activation(act, to_float(x[i])));
}

template <typename D>
__global__ void activation_backward_kernel(Activation act, D* dx, const D* dy, const D* x, size_t n) {
  ELECTRA_GRID_LOOP(i, n) dx[i] = from_float<D>(math::activation_backward(act, to_float(dy[i]), to_float(x[i])));
}

template <typename D>
__global__ void add_kernel(D* out, const D* a, const D* b, size_t n) {
  ELECTRA_GRID_LOOP(i, n) out[i] = from_float<D>(to_float(a[i]) + to_float(b[i]));
}

template <typename D>
__global__ void accumulate_kernel(D* y, const D* x, size_t n) {
  ELECTRA_GRID_LOOP(i, n) y[i] = from_float<D>(to_float(y[i]) + to_float(x[i]));
}

template <typename D>
__global__ void scale_kernel(D* x, size_t n, float alpha) {
  ELECTRA_GRID_LOOP(i, n) x[i] = from_float<D>(to_float(x[i]) * alpha);
}

// One thread per group of four elements: one index division and (usually) one Philox block per group.
template <typename D>
__global__ void dropout_forward_kernel(D* y, uint8_t* keep, const D* x, size_t n, float p, DropoutKey key,
                                       float keep_scale) {
  const size_t groups = (n + 3) / 4;
  ELECTRA_GRID_LOOP(g, groups) {
    const size_t i0 = 4 * g;
    const int count = n - i0 < 4 ? static_cast<int>(n - i0) : 4;
    uint8_t bits[4];
    math::dropout_keep_group(bits, key, i0, count, p);
    for (int u = 0; u < count; ++u) {
      keep[i0 + u] = bits[u];
      y[i0 + u] = from_float<D>(to_float(x[i0 + u]) * (bits[u] ? keep_scale : 0.0f));
    }
  }
}

template <typename D>
__global__ void dropout_backward_kernel(D* dx, const D* dy, const uint8_t* keep, size_t n, float keep_scale) {
  ELECTRA_GRID_LOOP(i, n) dx[i] = from_float<D>(to_float(dy[i]) * (keep[i] ? keep_scale : 0.0f));
}

template <typename D>
__global__ void broadcast_rows_kernel(D* y, const D* bias, size_t n, int cols) {
  ELECTRA_GRID_LOOP(i, n) y[i] = bias[i % cols];
}

template <typename D>
__global__ void sigmoid_cross_entropy_kernel(float* loss, D* dlogit, const D* logit, const int32_t* label,
                                             const float* grad_scale, size_t n) {
  ELECTRA_GRID_LOOP(i, n) {
    float d = 0.0f;
    math::sigmoid_cross_entropy(to_float(logit[i]), static_cast<float>(label[i]),
                                grad_scale != nullptr ? grad_scale[i] : 1.0f, loss != nullptr ? loss + i : nullptr,
                                dlogit != nullptr ? &d : nullptr);
    if (dlogit != nullptr) dlogit[i] = from_float<D>(d);
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
template <typename D>
__global__ void sum_squares_chunks_kernel(double* partials, const D* x, size_t n) {
  __shared__ double smem[32];
  const size_t begin = blockIdx.x * kSumSquaresChunk;
  const size_t end = begin + kSumSquaresChunk < n ? begin + kSumSquaresChunk : n;
  double s = 0.0;
  for (size_t i = begin + threadIdx.x; i < end; i += blockDim.x) {
    const double v = to_float(x[i]);
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

template <typename T>
void fill(const Stream& s, T* x, size_t n, T value) {
  if (n == 0) return;
  fill_kernel<<<grid_for(n, s), kBlock, 0, s.stream>>>(x, n, value);
  ELECTRA_CUDA_CHECK_LAUNCH("fill_kernel");
}

void widen(const Stream& s, float* dst, const bfloat16* src, size_t n) {
  if (n == 0) return;
  widen_kernel<<<grid_for(n, s), kBlock, 0, s.stream>>>(dst, device_ptr(src), n);
  ELECTRA_CUDA_CHECK_LAUNCH("widen_kernel");
}

void narrow(const Stream& s, bfloat16* dst, const float* src, size_t n) {
  if (n == 0) return;
  narrow_kernel<<<grid_for(n, s), kBlock, 0, s.stream>>>(device_ptr(dst), src, n);
  ELECTRA_CUDA_CHECK_LAUNCH("narrow_kernel");
}

template <typename T>
void activation_forward(const Stream& s, Activation act, T* y, const T* x, size_t n) {
  if (n == 0) return;
  activation_forward_kernel<<<grid_for(n, s), kBlock, 0, s.stream>>>(act, device_ptr(y), device_ptr(x), n);
  ELECTRA_CUDA_CHECK_LAUNCH("activation_forward_kernel");
}

template <typename T>
void activation_backward(const Stream& s, Activation act, T* dx, const T* dy, const T* x, size_t n) {
  if (n == 0) return;
  activation_backward_kernel<<<grid_for(n, s), kBlock, 0, s.stream>>>(act, device_ptr(dx), device_ptr(dy),
                                                                      device_ptr(x), n);
  ELECTRA_CUDA_CHECK_LAUNCH("activation_backward_kernel");
}

template <typename T>
void add(const Stream& s, T* out, const T* a, const T* b, size_t n) {
  if (n == 0) return;
  add_kernel<<<grid_for(n, s), kBlock, 0, s.stream>>>(device_ptr(out), device_ptr(a), device_ptr(b), n);
  ELECTRA_CUDA_CHECK_LAUNCH("add_kernel");
}

template <typename T>
void accumulate(const Stream& s, T* y, const T* x, size_t n) {
  if (n == 0) return;
  accumulate_kernel<<<grid_for(n, s), kBlock, 0, s.stream>>>(device_ptr(y), device_ptr(x), n);
  ELECTRA_CUDA_CHECK_LAUNCH("accumulate_kernel");
}

template <typename T>
void scale(const Stream& s, T* x, size_t n, float alpha) {
  if (n == 0) return;
  scale_kernel<<<grid_for(n, s), kBlock, 0, s.stream>>>(device_ptr(x), n, alpha);
  ELECTRA_CUDA_CHECK_LAUNCH("scale_kernel");
}

template <typename T>
void dropout_forward(const Stream& s, T* y, uint8_t* keep, const T* x, size_t n, float p, const DropoutKey& key) {
  if (n == 0) return;
  const float keep_scale = 1.0f / (1.0f - p);
  dropout_forward_kernel<<<grid_for((n + 3) / 4, s), kBlock, 0, s.stream>>>(device_ptr(y), keep, device_ptr(x), n, p,
                                                                            key, keep_scale);
  ELECTRA_CUDA_CHECK_LAUNCH("dropout_forward_kernel");
}

template <typename T>
void dropout_backward(const Stream& s, T* dx, const T* dy, const uint8_t* keep, size_t n, float keep_scale) {
  if (n == 0) return;
  dropout_backward_kernel<<<grid_for(n, s), kBlock, 0, s.stream>>>(device_ptr(dx), device_ptr(dy), keep, n, keep_scale);
  ELECTRA_CUDA_CHECK_LAUNCH("dropout_backward_kernel");
}

template <typename T>
void broadcast_rows(const Stream& s, T* y, const T* bias, int rows, int cols) {
  const size_t n = static_cast<size_t>(rows) * cols;
  if (n == 0) return;
  broadcast_rows_kernel<<<grid_for(n, s), kBlock, 0, s.stream>>>(device_ptr(y), device_ptr(bias), n, cols);
  ELECTRA_CUDA_CHECK_LAUNCH("broadcast_rows_kernel");
}

template <typename T>
void sigmoid_cross_entropy(const Stream& s, float* loss, T* dlogit, const T* logit, const int32_t* label,
                           const float* grad_scale, size_t n) {
  if (n == 0) return;
  sigmoid_cross_entropy_kernel<<<grid_for(n, s), kBlock, 0, s.stream>>>(loss, device_ptr(dlogit), device_ptr(logit),
                                                                        label, grad_scale, n);
  ELECTRA_CUDA_CHECK_LAUNCH("sigmoid_cross_entropy_kernel");
}

void adamw_step(const Stream& s, float* params, const float* grads, float* m, float* v, size_t n,
                const math::AdamParams& a) {
  if (n == 0) return;
  adamw_kernel<<<grid_for(n, s), kBlock, 0, s.stream>>>(params, grads, m, v, n, a);
  ELECTRA_CUDA_CHECK_LAUNCH("adamw_kernel");
}

size_t sum_squares_partials(size_t n) { return (n + kSumSquaresChunk - 1) / kSumSquaresChunk; }

template <typename T>
void sum_squares(const Stream& s, double* result, double* partials, const T* x, size_t n) {
  const size_t chunks = sum_squares_partials(n);
  if (chunks == 0) {
    ELECTRA_CUDA_CHECK(cudaMemsetAsync(result, 0, sizeof(double), s.stream));
    return;
  }
  ELECTRA_CHECK(chunks <= 0x7fffffffu, "sum_squares: ", n, " elements is too many");
  sum_squares_chunks_kernel<<<static_cast<unsigned>(chunks), kBlock, 0, s.stream>>>(partials, device_ptr(x), n);
  ELECTRA_CUDA_CHECK_LAUNCH("sum_squares_chunks_kernel");
  sum_partials_kernel<<<1, 1024, 0, s.stream>>>(result, partials, chunks);
  ELECTRA_CUDA_CHECK_LAUNCH("sum_partials_kernel");
}

#define ELECTRA_INSTANTIATE_ELEMENTWISE(T)                                                                           \
  template void fill<T>(const Stream&, T*, size_t, T);                                                               \
  template void activation_forward<T>(const Stream&, Activation, T*, const T*, size_t);                              \
  template void activation_backward<T>(const Stream&, Activation, T*, const T*, const T*, size_t);                   \
  template void add<T>(const Stream&, T*, const T*, const T*, size_t);                                               \
  template void accumulate<T>(const Stream&, T*, const T*, size_t);                                                  \
  template void scale<T>(const Stream&, T*, size_t, float);                                                          \
  template void dropout_forward<T>(const Stream&, T*, uint8_t*, const T*, size_t, float, const DropoutKey&);         \
  template void dropout_backward<T>(const Stream&, T*, const T*, const uint8_t*, size_t, float);                     \
  template void broadcast_rows<T>(const Stream&, T*, const T*, int, int);                                            \
  template void sigmoid_cross_entropy<T>(const Stream&, float*, T*, const T*, const int32_t*, const float*, size_t); \
  template void sum_squares<T>(const Stream&, double*, double*, const T*, size_t);
ELECTRA_INSTANTIATE_ELEMENTWISE(float)
ELECTRA_INSTANTIATE_ELEMENTWISE(bfloat16)
#undef ELECTRA_INSTANTIATE_ELEMENTWISE

}  // namespace electra::cuda
