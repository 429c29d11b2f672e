// One run of the fused post-LN residual block (dropout_add_layernorm_forward, then
// layernorm_dropout_backward) or of the op sequence it replaces, on any Backend<T>, with its outputs
// brought to the host. Shared by the CPU tests (tests/backend/fused_layernorm_test.cpp) and the CUDA
// tests (tests/cuda/fused_layernorm_test.cpp), so both backends run exactly the same cases.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <string>
#include <type_traits>
#include <vector>

#include "lib/backend/backend.h"
#include "lib/model/device_buffer.h"
#include "tests/backend/test_util.h"

namespace electra::test {

// Copies n bytes of backend memory (keep masks) to the host: memcpy on the CPU, cuda_copy_bytes_to_host on
// a GPU.
using ByteDownload = std::function<void(void* host, const void* src, size_t n)>;
inline void host_bytes(void* host, const void* src, size_t n) { std::memcpy(host, src, n); }

struct FusedLayerNormCase {
  int rows = 0, cols = 0;
  float p = 0.0f;
  int rows_per_example = 1;  // the dropout key's elements_per_example is rows_per_example * cols
  uint64_t first_example = 0;
  bool res_aliases_x = false;  // forward writes res over x
  bool with_dx = true;         // backward asked for dx
  bool with_beta = true;       // LayerNorm with a bias
  bool null_keep = false;      // no keep mask (p == 0 only)
};
inline std::string describe(const FusedLayerNormCase& c) {
  return "rows " + std::to_string(c.rows) + " cols " + std::to_string(c.cols) + " p " + std::to_string(c.p) +
         " rows/example " + std::to_string(c.rows_per_example) + " first example " + std::to_string(c.first_example) +
         (c.res_aliases_x ? " res=x" : "") + (c.with_dx ? "" : " no dx") + (c.with_beta ? "" : " no beta") +
         (c.null_keep ? " no keep" : "");
}
inline DropoutKey key_of(const FusedLayerNormCase& c) {
  return DropoutKey{.seed = 7,
                    .step = 2,
                    .lane = 5,
                    .first_example = c.first_example,
                    .elements_per_example = static_cast<uint64_t>(c.rows_per_example) * c.cols};
}

// The inputs of a case, in double: x, residual, gamma, beta, dy, and the values dgamma/dbeta hold before
// backward accumulates into them.
struct FusedLayerNormInputs {
  std::vector<double> x, residual, gamma, beta, dy, dgamma0, dbeta0;
};
inline FusedLayerNormInputs inputs_of(const FusedLayerNormCase& c) {
  const size_t n = static_cast<size_t>(c.rows) * c.cols, C = static_cast<size_t>(c.cols);
  return {random_values(n, 101, -2.0, 2.0),
          random_values(n, 102, -2.0, 2.0),
          random_values(C, 103, 0.5, 1.5),
          random_values(C, 104),
          random_values(n, 105),
          random_values(C, 106),
          random_values(C, 107)};
}

template <typename T>
std::vector<T> values_as(const std::vector<double>& v) {
  std::vector<T> out(v.size());
  for (size_t i = 0; i < v.size(); ++i) {
    if constexpr (std::is_same_v<T, bfloat16>) {
      out[i] = bfloat16(static_cast<float>(v[i]));
    } else {
      out[i] = static_cast<T>(v[i]);
    }
  }
  return out;
}

template <typename T>
struct FusedLayerNormRun {
  std::vector<T> y, res, d_res, dx;
  std::vector<Wide<T>> mean, rstd, dgamma, dbeta;
  std::vector<uint8_t> keep;  // empty with null_keep
};

// fused: the two fused ops; otherwise the sequence of backend.h's comments, op by op.
template <typename T>
FusedLayerNormRun<T> run_residual_layernorm(Backend<T>& be, const ByteDownload& download, const FusedLayerNormCase& c,
                                            bool fused) {
  using W = Wide<T>;
  Backend<W>& wide = be.wide();
  const FusedLayerNormInputs in = inputs_of(c);
  const int rows = c.rows, cols = c.cols;
  const size_t n = static_cast<size_t>(rows) * cols, C = static_cast<size_t>(cols);
  auto upload = [&](const std::vector<double>& h) {
    DeviceBuffer<T> d(be, h.size());
    const std::vector<T> v = values_as<T>(h);
    be.copy_from_host(d.data(), v.data(), v.size());
    return d;
  };
  auto upload_wide = [&](const std::vector<double>& h) {
    DeviceBuffer<W> d(wide, h.size());
    const std::vector<W> v = values_as<W>(h);
    wide.copy_from_host(d.data(), v.data(), v.size());
    return d;
  };
  DeviceBuffer<T> x = upload(in.x), residual = upload(in.residual), gamma = upload(in.gamma), beta = upload(in.beta);
  DeviceBuffer<T> dy = upload(in.dy), y(be, n), res_own(be, c.res_aliases_x ? 0 : n), d_res(be, n), dx(be, n);
  DeviceBuffer<W> mean(wide, rows), rstd(wide, rows), dgamma = upload_wide(in.dgamma0), dbeta = upload_wide(in.dbeta0);
  DeviceBuffer<T, uint8_t> keep_own(be, c.null_keep ? 0 : n);
  T* res = c.res_aliases_x ? x.data() : res_own.data();
  uint8_t* keep = c.null_keep ? nullptr : keep_own.data();
  const T* beta_ptr = c.with_beta ? beta.data() : nullptr;
  T* dx_ptr = c.with_dx ? dx.data() : nullptr;
  const DropoutKey key = key_of(c);
  const W eps = static_cast<W>(1e-5);

  if (fused) {
    be.dropout_add_layernorm_forward(y.data(), res, keep, mean.data(), rstd.data(), x.data(), residual.data(),
                                     gamma.data(), beta_ptr, rows, cols, c.p, key, eps);
    be.layernorm_dropout_backward(d_res.data(), dx_ptr, dgamma.data(), dbeta.data(), dy.data(), res, mean.data(),
                                  rstd.data(), gamma.data(), keep, rows, cols, c.p);
  } else {
    be.dropout_forward(res, keep, x.data(), n, c.p, key);
    be.add(res, res, residual.data(), n);
    be.layernorm_forward(y.data(), mean.data(), rstd.data(), res, gamma.data(), beta_ptr, rows, cols, eps);
    be.layernorm_backward(d_res.data(), dgamma.data(), dbeta.data(), dy.data(), res, mean.data(), rstd.data(),
                          gamma.data(), rows, cols);
    if (dx_ptr != nullptr) be.dropout_backward(dx_ptr, d_res.data(), keep, n, c.p);
  }

  FusedLayerNormRun<T> out;
  auto down = [&](std::vector<T>& h, const T* d, size_t count) {
    h.resize(count);
    be.copy_to_host(h.data(), d, count);
  };
  auto down_wide = [&](std::vector<W>& h, const W* d, size_t count) {
    h.resize(count);
    wide.copy_to_host(h.data(), d, count);
  };
  down(out.y, y.data(), n);
  down(out.res, res, n);
  down(out.d_res, d_res.data(), n);
  if (c.with_dx) down(out.dx, dx.data(), n);
  down_wide(out.mean, mean.data(), rows);
  down_wide(out.rstd, rstd.data(), rows);
  down_wide(out.dgamma, dgamma.data(), C);
  down_wide(out.dbeta, dbeta.data(), C);
  if (keep != nullptr) {
    be.synchronize();
    out.keep.resize(n);
    download(out.keep.data(), keep, n);
  }
  return out;
}

template <typename V>
bool same_bits(const std::vector<V>& a, const std::vector<V>& b) {
  return a.size() == b.size() && (a.empty() || std::memcmp(a.data(), b.data(), a.size() * sizeof(V)) == 0);
}

// Every output of two runs bit for bit; names the first field that differs.
template <typename T>
::testing::AssertionResult runs_bitwise_equal(const FusedLayerNormRun<T>& a, const FusedLayerNormRun<T>& b) {
  const std::pair<const char*, bool> fields[] = {{"y", same_bits(a.y, b.y)},
                                                 {"res", same_bits(a.res, b.res)},
                                                 {"keep", same_bits(a.keep, b.keep)},
                                                 {"mean", same_bits(a.mean, b.mean)},
                                                 {"rstd", same_bits(a.rstd, b.rstd)},
                                                 {"d_res", same_bits(a.d_res, b.d_res)},
                                                 {"dx", same_bits(a.dx, b.dx)},
                                                 {"dgamma", same_bits(a.dgamma, b.dgamma)},
                                                 {"dbeta", same_bits(a.dbeta, b.dbeta)}};
  for (const auto& [name, equal] : fields) {
    if (!equal) return ::testing::AssertionFailure() << name << " differs";
  }
  return ::testing::AssertionSuccess();
}

// The cases both test files run: widths below, at and above a warp (32 columns) and not multiples of 4
// (dropout's Philox groups then straddle rows), several rows per example and an offset first example,
// no dropout with and without a keep mask, res written over x, no dx, no beta. Widths past 1024 take the
// CUDA kernels' path that does not keep a row in registers.
inline std::vector<FusedLayerNormCase> fused_layernorm_cases() {
  std::vector<FusedLayerNormCase> cases = {
      {.rows = 7, .cols = 13, .p = 0.1f, .rows_per_example = 3, .first_example = 4},
      {.rows = 9, .cols = 64, .p = 0.1f, .rows_per_example = 2},
      {.rows = 5, .cols = 130, .p = 0.3f, .rows_per_example = 1, .first_example = 11},
      {.rows = 17, .cols = 256, .p = 0.1f, .rows_per_example = 4, .first_example = 2},
      {.rows = 3, .cols = 1030, .p = 0.1f, .rows_per_example = 2, .first_example = 1},
      {.rows = 6, .cols = 64, .p = 0.0f, .rows_per_example = 2},
      {.rows = 6, .cols = 64, .p = 0.0f, .rows_per_example = 2, .null_keep = true},
      {.rows = 7, .cols = 13, .p = 0.1f, .rows_per_example = 3, .res_aliases_x = true},
      {.rows = 9, .cols = 64, .p = 0.1f, .rows_per_example = 2, .with_dx = false},
      {.rows = 9, .cols = 64, .p = 0.1f, .rows_per_example = 2, .with_beta = false},
  };
  return cases;
}

}  // namespace electra::test
