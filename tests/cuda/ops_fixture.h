// The fixture shared by the CUDA op tests of both storage types (ops_test.cpp: CudaOps on float,
// bf16_backend_test.cpp: CudaBf16Ops on bfloat16): host <-> device copies, random inputs in the storage
// type, a bitwise comparison that names the first differing element, and the test bodies that are the
// same for both types. The derived fixtures' SetUp makes the backends (and skips without a GPU).
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

  // Dropout forward and backward give the CPU's keep masks and values bitwise (per-example element
  // counts that split a Philox group or not, in place too); p = 0 copies and sets every keep bit.
  void expect_dropout_is_the_cpus() {
    const size_t n = 10007;  // not a multiple of 4
    const auto x = storage_values<E>(random_values(n, 1)), dy = storage_values<E>(random_values(n, 2));
    for (uint64_t per : {1ull, 1001ull, 20000ull}) {
      for (float p : {0.1f, 0.5f}) {
        const DropoutKey key{.seed = 9, .step = 4, .lane = 3, .first_example = 5, .elements_per_example = per};
        std::vector<E> y(n), dx(n);
        std::vector<uint8_t> keep(n);
        cpu->dropout_forward(y.data(), keep.data(), x.data(), n, p, key);
        cpu->dropout_backward(dx.data(), dy.data(), keep.data(), n, p);
        auto gx = up(x);
        auto gdy = up(dy);
        DeviceBuffer<E> gy(*gpu, n), gdx(*gpu, n);
        auto gkeep = bytes(n);
        gpu->dropout_forward(gy.data(), gkeep.data(), gx.data(), n, p, key);
        gpu->dropout_backward(gdx.data(), gdy.data(), gkeep.data(), n, p);
        EXPECT_EQ(down(gkeep), keep) << "per " << per << " p " << p;
        EXPECT_TRUE(bitwise(down(gy), y));
        EXPECT_TRUE(bitwise(down(gdx), dx));
        gpu->dropout_forward(gx.data(), gkeep.data(), gx.data(), n, p, key);  // in place
        EXPECT_TRUE(bitwise(down(gx), y));
      }
    }
    auto gx = up(x);
    DeviceBuffer<E> gy(*gpu, n);
    auto gkeep = bytes(n);
    gpu->dropout_forward(gy.data(), gkeep.data(), gx.data(), n, 0.0f, DropoutKey{});
    EXPECT_TRUE(bitwise(down(gy), x));
    EXPECT_EQ(down(gkeep), std::vector<uint8_t>(n, 1));
  }

  // Every activation forward and backward, and GELU in place; near(got, want) compares a GPU result with
  // the CPU's.
  template <typename Near>
  void expect_activations_are_the_cpus(const Near& near) {
    const size_t n = 100003;
    const auto x = storage_values<E>(random_values(n, 1, -6.0, 6.0)), dy = storage_values<E>(random_values(n, 2));
    auto gx = up(x);
    auto gdy = up(dy);
    for (Activation act : {Activation::kNone, Activation::kGelu, Activation::kRelu, Activation::kTanh}) {
      std::vector<E> y(n), dx(n);
      cpu->activation_forward(act, y.data(), x.data(), n);
      cpu->activation_backward(act, dx.data(), dy.data(), x.data(), n);
      DeviceBuffer<E> gy(*gpu, n), gdx(*gpu, n);
      gpu->activation_forward(act, gy.data(), gx.data(), n);
      gpu->activation_backward(act, gdx.data(), gdy.data(), gx.data(), n);
      EXPECT_TRUE(near(down(gy), y)) << to_string(act);
      EXPECT_TRUE(near(down(gdx), dx)) << to_string(act);
    }
    // In place.
    auto inplace = up(x);
    gpu->activation_forward(Activation::kGelu, inplace.data(), inplace.data(), n);
    std::vector<E> y(n);
    cpu->activation_forward(Activation::kGelu, y.data(), x.data(), n);
    EXPECT_TRUE(near(down(inplace), y));
  }

  // Gumbel-max samples are the CPU's exactly (a small and a BERT-sized vocabulary, two temperatures, with
  // and without a disallowed token per row).
  void expect_gumbel_samples_are_the_cpus() {
    for (int V : {777, 30522}) {
      const int rows = 24, per = 4;
      const auto logits = storage_values<E>(random_values(static_cast<size_t>(rows) * V, 1, -3.0, 3.0));
      const auto disallow = random_ints(rows, 2, 0, V);
      auto glogits = up(logits);
      auto gdisallow = up(disallow);
      for (float t : {1.0f, 0.7f}) {
        for (bool with_disallow : {false, true}) {
          std::vector<int32_t> want(rows);
          cpu->gumbel_sample(want.data(), logits.data(), with_disallow ? disallow.data() : nullptr, rows, V, t, 21, 6,
                             9, per);
          DeviceBuffer<E, int32_t> got(*gpu, rows);
          gpu->gumbel_sample(got.data(), glogits.data(), with_disallow ? gdisallow.data() : nullptr, rows, V, t, 21, 6,
                             9, per);
          EXPECT_EQ(down(got), want) << "V " << V << " t " << t << " disallow " << with_disallow;
        }
      }
    }
  }

  std::unique_ptr<Backend<float>> gpu_float, cpu_float;  // bf16 only
  std::unique_ptr<Backend<E>> gpu, cpu;
};

}  // namespace electra::test
