// The small kernels around cuDNN SDPA (sdpa_cudnn.h): sequence lengths from the mask, conversions
// between the backend's fp32 storage and the bf16/fp16 copies cuDNN reads and writes, and the padding-key
// gradients of a bf16-storage dqkv that cuDNN wrote in place.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "lib/backend/cuda/device_util.cuh"
#include "lib/backend/cuda/sdpa_cudnn.h"

namespace electra::cuda::sdpa {
namespace {

// Round to nearest even, as cuDNN's own conversions.
template <typename Half>
__device__ Half narrow(float x);
template <>
__device__ __nv_bfloat16 narrow<__nv_bfloat16>(float x) {
  return __float2bfloat16_rn(x);
}
template <>
__device__ __half narrow<__half>(float x) {
  return __float2half_rn(x);
}
__device__ float widen(__nv_bfloat16 x) { return __bfloat162float(x); }
__device__ float widen(__half x) { return __half2float(x); }

__global__ void sequence_lengths_kernel(int32_t* q_lengths, int32_t* kv_lengths, const int32_t* mask, int B, int S,
                                        unsigned* errors) {
  const int b = blockIdx.x * blockDim.x + threadIdx.x;
  if (b >= B) return;
  q_lengths[b] = S;
  if (mask == nullptr) {
    kv_lengths[b] = S;
    return;
  }
  MaskRow kind = MaskRow::kRightPadded;
  const int length = key_length(mask + static_cast<size_t>(b) * S, S, &kind);
  if (kind == MaskRow::kNotRightPadded) report(errors, kErrorAttentionMask);
  if (kind == MaskRow::kPacked) report(errors, kErrorPackedMask);
  kv_lengths[b] = length > 0 ? length : 1;  // a length of 0 is flagged; keep cuDNN away from empty rows
}

template <typename Half>
__global__ void to_half_kernel(Half* out, const float* in, size_t n) {
  for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<size_t>(gridDim.x) * blockDim.x) {
    out[i] = narrow<Half>(in[i]);
  }
}

template <typename Half>
__global__ void from_half_kernel(float* out, const Half* in, size_t n) {
  for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<size_t>(gridDim.x) * blockDim.x) {
    out[i] = widen(in[i]);
  }
}

template <typename Half>
__global__ void dqkv_from_half_kernel(float* dqkv, const Half* dqkv_half, const int32_t* kv_lengths, size_t n, int S,
                                      int H, int D) {
  for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<size_t>(gridDim.x) * blockDim.x) {
    dqkv[i] = is_padding_key_gradient(i, S, H, D, kv_lengths) ? 0.0f : widen(dqkv_half[i]);
  }
}

// Grid-stride over the whole [B,S,3,H,D] buffer, writing only the padding keys' elements.
__global__ void zero_padding_key_gradients_kernel(__nv_bfloat16* dqkv, const int32_t* kv_lengths, size_t n, int S,
                                                  int H, int D) {
  for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<size_t>(gridDim.x) * blockDim.x) {
    if (is_padding_key_gradient(i, S, H, D, kv_lengths)) dqkv[i] = __float2bfloat16_rn(0.0f);
  }
}

}  // namespace

void sequence_lengths(const Stream& s, int32_t* q_lengths, int32_t* kv_lengths, const int32_t* mask, int B, int S) {
  if (B <= 0) return;
  const unsigned blocks = static_cast<unsigned>((B + kBlock - 1) / kBlock);
  sequence_lengths_kernel<<<blocks, kBlock, 0, s.stream>>>(q_lengths, kv_lengths, mask, B, S, s.errors);
  ELECTRA_CUDA_CHECK_LAUNCH("sequence_lengths_kernel");
}

void to_half(const Stream& s, void* out, const float* in, size_t n, CudaPrecision precision) {
  if (n == 0) return;
  if (precision == CudaPrecision::kBf16) {
    to_half_kernel<<<grid_for(n, s), kBlock, 0, s.stream>>>(static_cast<__nv_bfloat16*>(out), in, n);
  } else {
    to_half_kernel<<<grid_for(n, s), kBlock, 0, s.stream>>>(static_cast<__half*>(out), in, n);
  }
  ELECTRA_CUDA_CHECK_LAUNCH("to_half_kernel");
}

void from_half(const Stream& s, float* out, const void* in, size_t n, CudaPrecision precision) {
  if (n == 0) return;
  if (precision == CudaPrecision::kBf16) {
    from_half_kernel<<<grid_for(n, s), kBlock, 0, s.stream>>>(out, static_cast<const __nv_bfloat16*>(in), n);
  } else {
    from_half_kernel<<<grid_for(n, s), kBlock, 0, s.stream>>>(out, static_cast<const __half*>(in), n);
  }
  ELECTRA_CUDA_CHECK_LAUNCH("from_half_kernel");
}

void dqkv_from_half(const Stream& s, float* dqkv, const void* dqkv_half, const int32_t* kv_lengths, int B, int S, int H,
                    int D, CudaPrecision precision) {
  const size_t n = 3 * static_cast<size_t>(B) * S * H * D;
  if (n == 0) return;
  if (precision == CudaPrecision::kBf16) {
    dqkv_from_half_kernel<<<grid_for(n, s), kBlock, 0, s.stream>>>(dqkv, static_cast<const __nv_bfloat16*>(dqkv_half),
                                                                   kv_lengths, n, S, H, D);
  } else {
    dqkv_from_half_kernel<<<grid_for(n, s), kBlock, 0, s.stream>>>(dqkv, static_cast<const __half*>(dqkv_half),
                                                                   kv_lengths, n, S, H, D);
  }
  ELECTRA_CUDA_CHECK_LAUNCH("dqkv_from_half_kernel");
}

void zero_padding_key_gradients(const Stream& s, bfloat16* dqkv, const int32_t* kv_lengths, int B, int S, int H,
                                int D) {
  const size_t n = 3 * static_cast<size_t>(B) * S * H * D;
  if (n == 0) return;
  zero_padding_key_gradients_kernel<<<grid_for(n, s), kBlock, 0, s.stream>>>(reinterpret_cast<__nv_bfloat16*>(dqkv),
                                                                             kv_lengths, n, S, H, D);
  ELECTRA_CUDA_CHECK_LAUNCH("zero_padding_key_gradients_kernel");
}

}  // namespace electra::cuda::sdpa
