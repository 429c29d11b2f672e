// The fixture shared by the CUDA backend tests of both storage types (ops_test.cpp: CudaOps on float,
// bf16_backend_test.cpp: CudaBf16Ops on bfloat16) for what is not parity (that is the parity table,
// tests/backend/parity): host <-> device copies, values in the storage type, a bitwise comparison that names
// the first differing element. The derived fixtures' SetUp makes the backends (and skips without a GPU).
#pragma once

#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>
#include <memory>
#include <type_traits>
#include <vector>

#include "lib/backend/backend.h"
#include "lib/backend/cuda/cuda_backend.h"
#include "lib/core/bfloat16.h"
#include "lib/model/device_buffer.h"
#include "tests/backend/test_util.h"

namespace electra::test {

// Values in storage type E: float, or bf16 rounded from the float (as the bf16 tests have always drawn them).
template <typename E>
std::vector<E> storage_values(const std::vector<double>& x) {
  if constexpr (std::is_same_v<E, float>) {
    return cast<float>(x);
  } else {
    std::vector<E> out(x.size());
    for (size_t i = 0; i < x.size(); ++i) out[i] = E(static_cast<float>(x[i]));
    return out;
  }
}

inline double value_of(bfloat16 x) { return static_cast<float>(x); }
inline double value_of(float x) { return x; }
template <typename E>
std::vector<double> values(const std::vector<E>& x) {
  std::vector<double> out(x.size());
  for (size_t i = 0; i < x.size(); ++i) out[i] = value_of(x[i]);
  return out;
}

template <typename E>
::testing::AssertionResult bitwise(const std::vector<E>& got, const std::vector<E>& want) {
  if (got.size() != want.size()) return ::testing::AssertionFailure() << "sizes " << got.size() << " " << want.size();
  for (size_t i = 0; i < got.size(); ++i) {
    if (std::memcmp(&got[i], &want[i], sizeof(E)) != 0) {
      return ::testing::AssertionFailure()
             << "element " << i << ": gpu " << value_of(got[i]) << " cpu " << value_of(want[i]);
    }
  }
  return ::testing::AssertionSuccess();
}

// gpu and cpu: the CUDA backend under test and the CPU reference, on storage type E. For bf16, gpu_float
// and cpu_float are the float backends under them (declared first, so that they outlive them).
template <typename E>
class CudaOpsFixture : public ::testing::Test {
 protected:
  DeviceBuffer<E> up(const std::vector<E>& h) {
    DeviceBuffer<E> d(*gpu, h.size());
    gpu->copy_from_host(d.data(), h.data(), h.size());
    return d;
  }
  DeviceBuffer<E, int32_t> up(const std::vector<int32_t>& h) {
    DeviceBuffer<E, int32_t> d(*gpu, h.size());
    gpu->copy_ints_from_host(d.data(), h.data(), h.size());
    return d;
  }
  DeviceBuffer<E, uint8_t> bytes(size_t n) { return DeviceBuffer<E, uint8_t>(*gpu, n); }
  std::vector<E> down(const DeviceBuffer<E>& d) {
    std::vector<E> h(d.size());
    gpu->copy_to_host(h.data(), d.data(), h.size());
    return h;
  }
  std::vector<int32_t> down(const DeviceBuffer<E, int32_t>& d) {
    std::vector<int32_t> h(d.size());
    gpu->copy_ints_to_host(h.data(), d.data(), h.size());
    return h;
  }
  std::vector<uint8_t> down(const DeviceBuffer<E, uint8_t>& d) {
    std::vector<uint8_t> h(d.size());
    cuda_copy_bytes_to_host(float_gpu(), h.data(), d.data(), h.size());
    return h;
  }
  // The float CUDA backend: gpu itself, or the one under the bf16 gpu.
  Backend<float>& float_gpu() {
    if constexpr (std::is_same_v<E, float>) {
      return *gpu;
    } else {
      return *gpu_float;
    }
  }

  std::unique_ptr<Backend<float>> gpu_float, cpu_float;  // bf16 only
  std::unique_ptr<Backend<E>> gpu, cpu;
};

}  // namespace electra::test
