// Storage types in device code. The launchers of kernels.h take float* or electra::bfloat16* (bit-identical
// to __nv_bfloat16, lib/core/bfloat16.h); kernels are templated on the device type (float or __nv_bfloat16),
// load elements as float, compute in float and store with round-to-nearest-even. For float, load and
// store are plain reads and writes, so the float kernels are the ones they were before templating.
#pragma once

#include <cuda_bf16.h>

#include "lib/core/bfloat16.h"

namespace electra::cuda {

template <typename T>
struct DeviceTypeOf {
  using type = T;
};
template <>
struct DeviceTypeOf<bfloat16> {
  using type = __nv_bfloat16;
};
template <typename T>
using DeviceType = typename DeviceTypeOf<T>::type;
static_assert(sizeof(__nv_bfloat16) == sizeof(bfloat16));

template <typename T>
DeviceType<T>* device_ptr(T* p) {
  return reinterpret_cast<DeviceType<T>*>(p);
}
template <typename T>
const DeviceType<T>* device_ptr(const T* p) {
  return reinterpret_cast<const DeviceType<T>*>(p);
}

__device__ inline float to_float(float v) { return v; }
__device__ inline float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename D>
__device__ inline D from_float(float v);
template <>
__device__ inline float from_float<float>(float v) {
  return v;
}
template <>
__device__ inline __nv_bfloat16 from_float<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}

}  // namespace electra::cuda
