// The bf16-native kernels of the fast CPU bf16 backend (lib/backend/cpu/bf16_kernels.h) against the bf16
// reference (make_cpu_bf16_backend over the float CPU backend). Every op is one or more entries of a parity
// table: run on the same random bfloat16 inputs (sizes off the vector width and the chunks, aliasing, NaN
// and infinities), the kernels must write the reference's bits, for 1, 2 and 3 OpenMP threads alike.
// Invalid arguments fail with electra::Error. A timing test prints the speedup and asserts nothing.
#include "lib/backend/cpu/bf16_kernels.h"

#include <gtest/gtest.h>
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <functional>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "lib/backend/backend.h"
#include "lib/backend/cpu/kernels.h"
#include "lib/core/error.h"
#include "tests/backend/test_util.h"

namespace electra::test {
namespace {

namespace fast = cpu::bf16;
using T = bfloat16;

Backend<T>& reference() {
  static const std::unique_ptr<Backend<float>> wide = make_cpu_backend<float>();
  static const std::unique_ptr<Backend<T>> ref = make_cpu_bf16_backend(*wide);
  return *ref;
}

// ---- inputs ----
std::vector<T> bf16_values(size_t n, uint64_t id, double lo = -2.0, double hi = 2.0) {
  const std::vector<double> v = random_values(n, id, lo, hi);
  std::vector<T> out(n);
  for (size_t i = 0; i < n; ++i) out[i] = T(static_cast<float>(v[i]));
  return out;
}
std::vector<float> float_values(size_t n, uint64_t id, double lo = -1.0, double hi = 1.0) {
  return cast<float>(random_values(n, id, lo, hi));
}
// Random values whose magnitudes spread over 2^lo_exp .. 2^hi_exp, either sign: their float sums round, so
// a reduction that sums in another order shows in the bits (bf16 values of similar size often add exactly).
std::vector<T> bf16_spread(size_t n, uint64_t id, double lo_exp = -16, double hi_exp = 4) {
  const std::vector<double> sign = random_values(n, id, -1.0, 1.0), e = random_values(n, id + 1000, lo_exp, hi_exp);
  std::vector<T> out(n);
  for (size_t i = 0; i < n; ++i) out[i] = T(static_cast<float>(std::copysign(std::exp2(e[i]), sign[i])));
  return out;
}
// Random values with NaNs (quiet, signalling, negative), infinities, signed zeros, the largest finite values
// and subnormals spread over them.
std::vector<T> bf16_with_specials(size_t n, uint64_t id, double lo = -6.0, double hi = 6.0) {
  std::vector<T> x = bf16_values(n, id, lo, hi);
  constexpr uint16_t kSpecial[] = {0x7fc0, 0xffc1, 0x7f81, 0x7f80, 0xff80, 0x0000,
                                   0x8000, 0x7f7f, 0xff7f, 0x0001, 0x8005};
  for (size_t k = 0; k < std::size(kSpecial) && 2 * k < n; ++k) x[(k * 37 + id) % n] = T::from_bits(kSpecial[k]);
  return x;
}
std::vector<uint8_t> random_keep(size_t n, uint64_t id) {
  const std::vector<int32_t> k = random_ints(n, id, 0, 2);
  return std::vector<uint8_t>(k.begin(), k.end());
}
const T kSentinel = T::from_bits(0x4242);  // what an output holds before the op
// Every bf16 bit pattern once, permuted (odd multiplier), then three more: 65,539 values.
std::vector<T> every_bf16_value() {
  std::vector<T> x(65539);
  for (size_t i = 0; i < x.size(); ++i) x[i] = T::from_bits(static_cast<uint16_t>(i * 40503 + 3));
  return x;
}

DropoutKey test_key(uint64_t elements_per_example) {
  DropoutKey key;
  key.seed = 7;
  key.step = 3;
  key.lane = 2;
  key.first_example = 5;
  key.elements_per_example = elements_per_example;
  return key;
}

// ---- outputs, compared bit for bit ----
struct Blob {
  std::string name;
  char kind;  // 'b' bfloat16, 'f' float, 'd' double, 'i' int32, 'u' uint8
  size_t element;
  std::vector<uint8_t> bytes;
};
class Outputs {
 public:
  Outputs& add(const std::string& name, const std::vector<T>& v) { return put(name, 'b', v); }
  Outputs& add(const std::string& name, const std::vector<float>& v) { return put(name, 'f', v); }
  Outputs& add(const std::string& name, const std::vector<int32_t>& v) { return put(name, 'i', v); }
  Outputs& add(const std::string& name, const std::vector<uint8_t>& v) { return put(name, 'u', v); }
  Outputs& add(const std::string& name, double v) { return put(name, 'd', std::vector<double>{v}); }
  const std::vector<Blob>& blobs() const { return blobs_; }

 private:
  template <typename V>
  Outputs& put(const std::string& name, char kind, const std::vector<V>& v) {
    Blob b{name, kind, sizeof(V), std::vector<uint8_t>(v.size() * sizeof(V))};
    if (!v.empty()) std::memcpy(b.bytes.data(), v.data(), b.bytes.size());
    blobs_.push_back(std::move(b));
    return *this;
  }
  std::vector<Blob> blobs_;
};

std::string describe(const Blob& b, size_t i) {
  const uint8_t* p = b.bytes.data() + i * b.element;
  std::ostringstream out;
  switch (b.kind) {
    case 'b': {
      uint16_t bits = 0;
      std::memcpy(&bits, p, 2);
      out << static_cast<float>(T::from_bits(bits)) << " (0x" << std::hex << bits << ")";
      break;
    }
    case 'f': {
      float v = 0;
      std::memcpy(&v, p, 4);
      uint32_t bits = 0;
      std::memcpy(&bits, p, 4);
      out << v << " (0x" << std::hex << bits << ")";
      break;
    }
    case 'd': {
      double v = 0;
      std::memcpy(&v, p, 8);
      out.precision(17);
      out << v;
      break;
    }
    case 'i': {
      int32_t v = 0;
      std::memcpy(&v, p, 4);
      out << v;
      break;
    }
    default:
      out << static_cast<int>(*p);
  }
  return out.str();
}

// Whether element i of two bfloat16 or float blobs holds quiet NaNs. Two such count as equal: when both
// operands of an addition or a product are NaN, x86 returns the first one's payload, and which operand comes
// first is the compiler's choice (it swaps commutative operands freely). A NaN that meets a number keeps its
// payload, and that is compared bit for bit.
bool both_quiet_nans(const Blob& a, const Blob& b, size_t i) {
  if (a.kind != 'b' && a.kind != 'f') return false;
  auto quiet_nan = [&](const Blob& x) {
    if (x.kind == 'b') {
      uint16_t bits = 0;
      std::memcpy(&bits, x.bytes.data() + 2 * i, 2);
      return (bits & 0x7fc0) == 0x7fc0;
    }
    uint32_t bits = 0;
    std::memcpy(&bits, x.bytes.data() + 4 * i, 4);
    return (bits & 0x7fc00000u) == 0x7fc00000u;
  };
  return quiet_nan(a) && quiet_nan(b);
}

::testing::AssertionResult same_bits(const Outputs& expected, const Outputs& actual) {
  if (expected.blobs().size() != actual.blobs().size()) return ::testing::AssertionFailure() << "output counts differ";
  for (size_t k = 0; k < expected.blobs().size(); ++k) {
    const Blob& e = expected.blobs()[k];
    const Blob& a = actual.blobs()[k];
    if (e.bytes.size() != a.bytes.size()) return ::testing::AssertionFailure() << e.name << ": sizes differ";
    const size_t n = e.bytes.size() / e.element;
    size_t differing = 0, first = n;
    for (size_t i = 0; i < n; ++i) {
      if (std::memcmp(e.bytes.data() + i * e.element, a.bytes.data() + i * e.element, e.element) != 0 &&
          !both_quiet_nans(e, a, i)) {
        if (differing++ == 0) first = i;
      }
    }
    if (differing > 0) {
      return ::testing::AssertionFailure()
             << e.name << ": " << differing << " of " << n << " elements differ; first [" << first << "]: expected "
             << describe(e, first) << ", got " << describe(a, first);
    }
  }
  return ::testing::AssertionSuccess();
}

// ---- the parity table ----
enum class Impl { kReference, kFast };
// One op on fixed inputs; run(impl) calls the reference backend or the fast kernel with the same arguments
// and returns everything the op wrote.
struct Case {
  std::string name;
  std::function<Outputs(Impl)> run;
};

std::string shape(const std::string& op, std::initializer_list<long long> dims, const std::string& variant = "") {
  std::string s = op + "/";
  for (const long long* d = dims.begin(); d != dims.end(); ++d)
    s += (d == dims.begin() ? "" : "x") + std::to_string(*d);
  return variant.empty() ? s : s + "/" + variant;
}

std::vector<Case> elementwise_cases() {
  std::vector<Case> cases;
  // GELU is a table lookup in the fast kernels: every bf16 bit pattern (NaNs, infinities, subnormals), in an
  // order that puts none at its table index, against the reference's arithmetic.
  cases.push_back({"activation_forward/gelu/every_bf16_value", [](Impl impl) {
                     const std::vector<T> x = every_bf16_value();
                     std::vector<T> y(x.size(), kSentinel);
                     if (impl == Impl::kFast)
                       fast::activation_forward(Activation::kGelu, y.data(), x.data(), x.size());
                     else
                       reference().activation_forward(Activation::kGelu, y.data(), x.data(), x.size());
                     return Outputs().add("y", y);
                   }});
  cases.push_back({"activation_backward/gelu/every_bf16_value", [](Impl impl) {
                     const std::vector<T> x = every_bf16_value();
                     const std::vector<T> dy = bf16_with_specials(x.size(), 5);
                     std::vector<T> dx(x.size(), kSentinel);
                     if (impl == Impl::kFast)
                       fast::activation_backward(Activation::kGelu, dx.data(), dy.data(), x.data(), x.size());
                     else
                       reference().activation_backward(Activation::kGelu, dx.data(), dy.data(), x.data(), x.size());
                     return Outputs().add("dx", dx);
                   }});
  const Activation acts[] = {Activation::kNone, Activation::kGelu, Activation::kRelu, Activation::kTanh};
  for (size_t n : {size_t{1}, size_t{15}, size_t{33}, size_t{1000}, size_t{8193}, size_t{40001}}) {
    const long long N = static_cast<long long>(n);
    cases.push_back({shape("fill", {N}), [n](Impl impl) {
                       std::vector<T> x = bf16_values(n, 1);
                       if (impl == Impl::kFast)
                         fast::fill(x.data(), n, T(1.5f));
                       else
                         reference().fill(x.data(), n, T(1.5f));
                       return Outputs().add("x", x);
                     }});
    for (Activation act : acts) {
      for (bool in_place : {false, true}) {
        cases.push_back({shape("activation_forward/" + to_string(act), {N}, in_place ? "in_place" : ""),
                         [n, act, in_place](Impl impl) {
                           std::vector<T> x = bf16_with_specials(n, 2);
                           std::vector<T> y = in_place ? x : std::vector<T>(n, kSentinel);
                           const T* in = in_place ? y.data() : x.data();
                           if (impl == Impl::kFast)
                             fast::activation_forward(act, y.data(), in, n);
                           else
                             reference().activation_forward(act, y.data(), in, n);
                           return Outputs().add("y", y);
                         }});
        cases.push_back({shape("activation_backward/" + to_string(act), {N}, in_place ? "dx_aliases_dy" : ""),
                         [n, act, in_place](Impl impl) {
                           const std::vector<T> x = bf16_with_specials(n, 3);
                           std::vector<T> dy = bf16_with_specials(n, 4);
                           std::vector<T> dx = in_place ? dy : std::vector<T>(n, kSentinel);
                           const T* g = in_place ? dx.data() : dy.data();
                           if (impl == Impl::kFast)
                             fast::activation_backward(act, dx.data(), g, x.data(), n);
                           else
                             reference().activation_backward(act, dx.data(), g, x.data(), n);
                           return Outputs().add("dx", dx);
                         }});
      }
    }
    for (int alias : {0, 1, 2}) {  // out separate, out = a, out = b
      cases.push_back({shape("add", {N},
                             alias == 0   ? ""
                             : alias == 1 ? "out_aliases_a"
                                          : "out_aliases_b"),
                       [n, alias](Impl impl) {
                         std::vector<T> a = bf16_with_specials(n, 5), b = bf16_with_specials(n, 6);
                         std::vector<T> out(n, kSentinel);
                         T* o = alias == 0 ? out.data() : alias == 1 ? a.data() : b.data();
                         if (impl == Impl::kFast)
                           fast::add(o, a.data(), b.data(), n);
                         else
                           reference().add(o, a.data(), b.data(), n);
                         return Outputs().add("out", out).add("a", a).add("b", b);
                       }});
    }
    cases.push_back({shape("accumulate", {N}), [n](Impl impl) {
                       std::vector<T> y = bf16_with_specials(n, 7);
                       const std::vector<T> x = bf16_with_specials(n, 8);
                       if (impl == Impl::kFast)
                         fast::accumulate(y.data(), x.data(), n);
                       else
                         reference().accumulate(y.data(), x.data(), n);
                       return Outputs().add("y", y);
                     }});
    for (float alpha : {0.3f, -2.0f, 1e38f}) {  // 1e38: overflow to infinity
      cases.push_back({shape("scale", {N}, std::to_string(alpha)), [n, alpha](Impl impl) {
                         std::vector<T> x = bf16_with_specials(n, 9);
                         if (impl == Impl::kFast)
                           fast::scale(x.data(), n, alpha);
                         else
                           reference().scale(x.data(), n, alpha);
                         return Outputs().add("x", x);
                       }});
    }
    for (float p : {0.0f, 0.1f, 0.5f}) {
      for (int variant : {0, 1, 2}) {  // separate, y aliases x, keep null (p == 0 only)
        if (variant == 2 && p != 0.0f) continue;
        cases.push_back({shape("dropout_forward", {N},
                               "p" + std::to_string(p) +
                                   (variant == 1   ? "/in_place"
                                    : variant == 2 ? "/no_keep"
                                                   : "")),
                         [n, p, variant](Impl impl) {
                           std::vector<T> x = bf16_with_specials(n, 10);
                           std::vector<T> y = variant == 1 ? x : std::vector<T>(n, kSentinel);
                           std::vector<uint8_t> keep(n, 7);
                           uint8_t* k = variant == 2 ? nullptr : keep.data();
                           const T* in = variant == 1 ? y.data() : x.data();
                           const DropoutKey key = test_key(77);
                           if (impl == Impl::kFast)
                             fast::dropout_forward(y.data(), k, in, n, p, key);
                           else
                             reference().dropout_forward(y.data(), k, in, n, p, key);
                           return Outputs().add("y", y).add("keep", keep);
                         }});
      }
    }
    for (float p : {0.0f, 0.3f}) {
      cases.push_back({shape("dropout_backward", {N}, "p" + std::to_string(p)), [n, p](Impl impl) {
                         const std::vector<T> dy = bf16_with_specials(n, 11);
                         const std::vector<uint8_t> keep = random_keep(n, 12);
                         std::vector<T> dx(n, kSentinel);
                         if (impl == Impl::kFast)
                           fast::dropout_backward(dx.data(), dy.data(), keep.data(), n, p);
                         else
                           reference().dropout_backward(dx.data(), dy.data(), keep.data(), n, p);
                         return Outputs().add("dx", dx);
                       }});
    }
  }
  return cases;
}

// LayerNorm statistics of x from the reference forward (inputs of the backward cases).
void reference_stats(std::vector<float>& mean, std::vector<float>& rstd, const std::vector<T>& x,
                     const std::vector<T>& gamma, int rows, int cols) {
  std::vector<T> y(x.size());
  mean.assign(rows, 0.0f);
  rstd.assign(rows, 0.0f);
  reference().layernorm_forward(y.data(), mean.data(), rstd.data(), x.data(), gamma.data(), nullptr, rows, cols, 1e-5f);
}

std::vector<Case> normalisation_cases() {
  std::vector<Case> cases;
  const std::pair<int, int> shapes[] = {{1, 1}, {2, 3}, {5, 37}, {33, 256}, {70, 257}, {3, 1000}, {200, 100}};
  for (const auto& [rows, cols] : shapes) {
    const size_t n = static_cast<size_t>(rows) * cols;
    const std::initializer_list<long long> dims = {rows, cols};
    for (int variant : {0, 1, 2}) {  // all outputs, no beta, no statistics
      cases.push_back({shape("layernorm_forward", dims, std::to_string(variant)), [=](Impl impl) {
                         const std::vector<T> x = bf16_spread(n, 20);
                         const std::vector<T> gamma = bf16_values(cols, 21, 0.5, 1.5);
                         const std::vector<T> beta = bf16_values(cols, 22, -0.5, 0.5);
                         std::vector<T> y(n, kSentinel);
                         std::vector<float> mean(rows, -7.0f), rstd(rows, -7.0f);
                         const T* b = variant == 1 ? nullptr : beta.data();
                         float* m = variant == 2 ? nullptr : mean.data();
                         float* r = variant == 2 ? nullptr : rstd.data();
                         if (impl == Impl::kFast) {
                           fast::layernorm_forward(y.data(), m, r, x.data(), gamma.data(), b, rows, cols, 1e-5f);
                         } else {
                           reference().layernorm_forward(y.data(), m, r, x.data(), gamma.data(), b, rows, cols, 1e-5f);
                         }
                         return Outputs().add("y", y).add("mean", mean).add("rstd", rstd);
                       }});
    }
    for (int variant : {0, 1, 2, 3}) {  // all, no dx, no dgamma/dbeta, dbeta only
      cases.push_back({shape("layernorm_backward", dims, std::to_string(variant)), [=](Impl impl) {
                         const std::vector<T> x = bf16_spread(n, 23);
                         const std::vector<T> dy = bf16_spread(n, 24);
                         const std::vector<T> gamma = bf16_values(cols, 25, 0.5, 1.5);
                         std::vector<float> mean, rstd;
                         reference_stats(mean, rstd, x, gamma, rows, cols);
                         std::vector<T> dx(n, kSentinel);
                         std::vector<float> dgamma = float_values(cols, 26), dbeta = float_values(cols, 27);
                         T* d = variant == 1 ? nullptr : dx.data();
                         float* dg = variant >= 2 ? nullptr : dgamma.data();
                         float* db = variant == 2 ? nullptr : dbeta.data();
                         if (impl == Impl::kFast) {
                           fast::layernorm_backward(d, dg, db, dy.data(), x.data(), mean.data(), rstd.data(),
                                                    gamma.data(), rows, cols);
                         } else {
                           reference().layernorm_backward(d, dg, db, dy.data(), x.data(), mean.data(), rstd.data(),
                                                          gamma.data(), rows, cols);
                         }
                         return Outputs().add("dx", dx).add("dgamma", dgamma).add("dbeta", dbeta);
                       }});
    }
    for (float p : {0.0f, 0.1f}) {
      for (int variant : {0, 1, 2}) {  // separate, res aliases x, keep null (p == 0 only)
        if (variant == 2 && p != 0.0f) continue;
        cases.push_back(
            {shape("dropout_add_layernorm_forward", dims, "p" + std::to_string(p) + "/" + std::to_string(variant)),
             [=](Impl impl) {
               const std::vector<T> x = bf16_spread(n, 28), residual = bf16_spread(n, 29);
               const std::vector<T> gamma = bf16_values(cols, 30, 0.5, 1.5), beta = bf16_values(cols, 31);
               std::vector<T> y(n, kSentinel), res = variant == 1 ? x : std::vector<T>(n, kSentinel);
               std::vector<uint8_t> keep(n, 7);
               std::vector<float> mean(rows, -7.0f), rstd(rows, -7.0f);
               uint8_t* k = variant == 2 ? nullptr : keep.data();
               const T* in = variant == 1 ? res.data() : x.data();
               const DropoutKey key = test_key(100);  // examples end inside rows
               if (impl == Impl::kFast) {
                 fast::dropout_add_layernorm_forward(y.data(), res.data(), k, mean.data(), rstd.data(), in,
                                                     residual.data(), gamma.data(), beta.data(), rows, cols, p, key,
                                                     1e-5f);
               } else {
                 reference().dropout_add_layernorm_forward(y.data(), res.data(), k, mean.data(), rstd.data(), in,
                                                           residual.data(), gamma.data(), beta.data(), rows, cols, p,
                                                           key, 1e-5f);
               }
               return Outputs().add("y", y).add("res", res).add("keep", keep).add("mean", mean).add("rstd", rstd);
             }});
      }
      for (int variant : {0, 1, 2}) {  // all, no dx, keep null (p == 0 only)
        if (variant == 2 && p != 0.0f) continue;
        cases.push_back(
            {shape("layernorm_dropout_backward", dims, "p" + std::to_string(p) + "/" + std::to_string(variant)),
             [=](Impl impl) {
               const std::vector<T> res = bf16_spread(n, 32), dy = bf16_spread(n, 33);
               const std::vector<T> gamma = bf16_values(cols, 34, 0.5, 1.5);
               const std::vector<uint8_t> keep = random_keep(n, 35);
               std::vector<float> mean, rstd;
               reference_stats(mean, rstd, res, gamma, rows, cols);
               std::vector<T> d_res(n, kSentinel), dx(n, kSentinel);
               std::vector<float> dgamma = float_values(cols, 36), dbeta = float_values(cols, 37);
               T* d = variant == 1 ? nullptr : dx.data();
               const uint8_t* k = variant == 2 ? nullptr : keep.data();
               if (impl == Impl::kFast) {
                 fast::layernorm_dropout_backward(d_res.data(), d, dgamma.data(), dbeta.data(), dy.data(), res.data(),
                                                  mean.data(), rstd.data(), gamma.data(), k, rows, cols, p);
               } else {
                 reference().layernorm_dropout_backward(d_res.data(), d, dgamma.data(), dbeta.data(), dy.data(),
                                                        res.data(), mean.data(), rstd.data(), gamma.data(), k, rows,
                                                        cols, p);
               }
               return Outputs().add("d_res", d_res).add("dx", dx).add("dgamma", dgamma).add("dbeta", dbeta);
             }});
      }
    }
  }
  return cases;
}

std::vector<Case> embedding_cases() {
  std::vector<Case> cases;
  constexpr int kVocab = 7, kTypes = 2;
  const int dims3[][3] = {{1, 1, 1}, {2, 3, 5}, {3, 17, 64}, {4, 50, 100}};
  for (const auto& d : dims3) {
    const int B = d[0], S = d[1], E = d[2];
    const size_t tokens = static_cast<size_t>(B) * S, n = tokens * E;
    // all, no position, no type table, no type ids, word only, all with packed position ids
    for (int variant : {0, 1, 2, 3, 4, 5}) {
      const bool pos = variant != 1 && variant != 4, type = variant != 2 && variant != 4, tids = variant != 3;
      const std::vector<int32_t> position_ids = variant == 5 ? packed_rows(B, S).position_ids : std::vector<int32_t>{};
      cases.push_back({shape("embedding_forward", {B, S, E}, std::to_string(variant)), [=](Impl impl) {
                         const std::vector<int32_t> ids = random_ints(tokens, 40, 0, kVocab);
                         const std::vector<int32_t> type_ids = random_ints(tokens, 41, 0, kTypes);
                         const std::vector<T> word = bf16_with_specials(static_cast<size_t>(kVocab) * E, 42);
                         const std::vector<T> position = bf16_values(static_cast<size_t>(S) * E, 43);
                         const std::vector<T> types = bf16_values(static_cast<size_t>(kTypes) * E, 44);
                         std::vector<T> out(n, kSentinel);
                         const int32_t* ti = tids ? type_ids.data() : nullptr;
                         const int32_t* pids = variant == 5 ? position_ids.data() : nullptr;
                         const T* p = pos ? position.data() : nullptr;
                         const T* ty = type ? types.data() : nullptr;
                         if (impl == Impl::kFast)
                           fast::embedding_forward(out.data(), ids.data(), ti, pids, word.data(), p, ty, B, S, E);
                         else
                           reference().embedding_forward(out.data(), ids.data(), ti, pids, word.data(), p, ty, B, S, E);
                         return Outputs().add("out", out);
                       }});
      cases.push_back({shape("embedding_backward", {B, S, E}, std::to_string(variant)), [=](Impl impl) {
                         const std::vector<int32_t> ids = random_ints(tokens, 45, 0, kVocab);
                         const std::vector<int32_t> type_ids = random_ints(tokens, 46, 0, kTypes);
                         const std::vector<T> dout = bf16_spread(n, 47);
                         std::vector<float> dword = float_values(static_cast<size_t>(kVocab) * E, 48);
                         std::vector<float> dposition = float_values(static_cast<size_t>(S) * E, 49);
                         std::vector<float> dtype = float_values(static_cast<size_t>(kTypes) * E, 50);
                         const int32_t* ti = tids ? type_ids.data() : nullptr;
                         const int32_t* pids = variant == 5 ? position_ids.data() : nullptr;
                         float* p = pos ? dposition.data() : nullptr;
                         float* ty = type ? dtype.data() : nullptr;
                         float* w = variant == 4 ? nullptr : dword.data();
                         if (impl == Impl::kFast)
                           fast::embedding_backward(w, p, ty, dout.data(), ids.data(), ti, pids, B, S, E);
                         else
                           reference().embedding_backward(w, p, ty, dout.data(), ids.data(), ti, pids, B, S, E);
                         return Outputs().add("dword", dword).add("dposition", dposition).add("dtype", dtype);
                       }});
    }
  }
  const int dims4[][4] = {{1, 1, 1, 1}, {2, 5, 3, 7}, {3, 20, 9, 64}, {8, 40, 30, 100}, {2, 4, 0, 3}};
  for (const auto& d : dims4) {
    const int B = d[0], S = d[1], P = d[2], C = d[3];
    const size_t nx = static_cast<size_t>(B) * S * C, nout = static_cast<size_t>(B) * P * C;
    cases.push_back({shape("gather_rows", {B, S, P, C}), [=](Impl impl) {
                       const std::vector<T> x = bf16_with_specials(nx, 51);
                       const std::vector<int32_t> positions = random_ints(static_cast<size_t>(B) * P, 52, 0, S);
                       std::vector<T> out(nout, kSentinel);
                       if (impl == Impl::kFast)
                         fast::gather_rows(out.data(), x.data(), positions.data(), B, S, P, C);
                       else
                         reference().gather_rows(out.data(), x.data(), positions.data(), B, S, P, C);
                       return Outputs().add("out", out);
                     }});
    // Positions from the first half of each sequence, so predictions share rows.
    cases.push_back({shape("scatter_add_rows", {B, S, P, C}), [=](Impl impl) {
                       std::vector<T> dx = bf16_spread(nx, 53);
                       const std::vector<T> dout = bf16_spread(nout, 54);
                       const std::vector<int32_t> positions = random_ints(static_cast<size_t>(B) * P, 55, 0, S / 2 + 1);
                       if (impl == Impl::kFast)
                         fast::scatter_add_rows(dx.data(), dout.data(), positions.data(), B, S, P, C);
                       else
                         reference().scatter_add_rows(dx.data(), dout.data(), positions.data(), B, S, P, C);
                       return Outputs().add("dx", dx);
                     }});
  }
  return cases;
}

std::vector<Case> loss_cases() {
  std::vector<Case> cases;
  const std::pair<int, int> shapes[] = {{1, 1}, {3, 5}, {7, 1000}, {5, 3001}, {3, 20000}};
  for (const auto& [rows, V] : shapes) {
    const size_t n = static_cast<size_t>(rows) * V;
    for (int variant : {0, 1, 2, 3, 4}) {  // all, no dlogits, dlogits aliases logits, no grad_scale/loss, specials
      cases.push_back(
          {shape("softmax_cross_entropy", {rows, V}, std::to_string(variant)), [=](Impl impl) {
             std::vector<T> logits = variant == 4 ? bf16_with_specials(n, 60) : bf16_values(n, 60, -8, 8);
             const std::vector<int32_t> labels = random_ints(rows, 61, 0, V);
             const std::vector<float> grad_scale = float_values(rows, 62, 0.0, 2.0);
             std::vector<float> loss(rows, -7.0f);
             std::vector<int32_t> argmax(rows, -7);
             std::vector<T> dlogits(n, kSentinel);
             T* d = variant == 1 ? nullptr : variant == 2 ? logits.data() : dlogits.data();
             const float* gs = variant == 3 ? nullptr : grad_scale.data();
             float* l = variant == 3 ? nullptr : loss.data();
             if (impl == Impl::kFast) {
               fast::softmax_cross_entropy(l, d, argmax.data(), logits.data(), labels.data(), gs, rows, V);
             } else {
               reference().softmax_cross_entropy(l, d, argmax.data(), logits.data(), labels.data(), gs, rows, V);
             }
             return Outputs().add("loss", loss).add("dlogits", dlogits).add("logits", logits).add("argmax", argmax);
           }});
    }
    for (bool in_place : {false, true}) {
      cases.push_back({shape("log_softmax", {rows, V}, in_place ? "in_place" : ""), [=](Impl impl) {
                         std::vector<T> x = bf16_values(n, 63, -8, 8);
                         std::vector<T> y = in_place ? x : std::vector<T>(n, kSentinel);
                         const T* in = in_place ? y.data() : x.data();
                         if (impl == Impl::kFast)
                           fast::log_softmax(y.data(), in, rows, V);
                         else
                           reference().log_softmax(y.data(), in, rows, V);
                         return Outputs().add("y", y);
                       }});
    }
  }
  for (size_t n : {size_t{1}, size_t{100}, size_t{5000}, size_t{20000}}) {
    for (int variant : {0, 1, 2, 3}) {  // all, no dlogit, no loss, no grad_scale
      cases.push_back(
          {shape("sigmoid_cross_entropy", {static_cast<long long>(n)}, std::to_string(variant)), [=](Impl impl) {
             const std::vector<T> logit = bf16_with_specials(n, 64, -20, 20);
             const std::vector<int32_t> label = random_ints(n, 65, 0, 2);
             const std::vector<float> grad_scale = float_values(n, 66, 0.0, 2.0);
             std::vector<float> loss(n, -7.0f);
             std::vector<T> dlogit(n, kSentinel);
             float* l = variant == 2 ? nullptr : loss.data();
             T* d = variant == 1 ? nullptr : dlogit.data();
             const float* gs = variant == 3 ? nullptr : grad_scale.data();
             if (impl == Impl::kFast)
               fast::sigmoid_cross_entropy(l, d, logit.data(), label.data(), gs, n);
             else
               reference().sigmoid_cross_entropy(l, d, logit.data(), label.data(), gs, n);
             return Outputs().add("loss", loss).add("dlogit", dlogit);
           }});
    }
  }
  const int gumbel[][3] = {{1, 1, 1}, {7, 1000, 3}, {4, 300, 2}, {3, 30522, 2}};
  for (const auto& g : gumbel) {
    const int rows = g[0], V = g[1], rpe = g[2];
    for (float temperature : {1.0f, 0.7f}) {
      for (bool disallow : {false, true}) {
        cases.push_back(
            {shape("gumbel_sample", {rows, V, rpe}, std::to_string(temperature) + (disallow ? "/disallow" : "")),
             [=](Impl impl) {
               // Logits close together, so the noise decides.
               const std::vector<T> logits = bf16_values(static_cast<size_t>(rows) * V, 67, -0.5, 0.5);
               const std::vector<int32_t> banned = random_ints(rows, 68, -1, V + 1);  // some outside
               std::vector<int32_t> samples(rows, -7);
               const int32_t* b = disallow ? banned.data() : nullptr;
               if (impl == Impl::kFast) {
                 fast::gumbel_sample(samples.data(), logits.data(), b, rows, V, temperature, 11, 5, 9, rpe);
               } else {
                 reference().gumbel_sample(samples.data(), logits.data(), b, rows, V, temperature, 11, 5, 9, rpe);
               }
               return Outputs().add("samples", samples);
             }});
      }
    }
  }
  return cases;
}

std::vector<Case> reduction_cases() {
  std::vector<Case> cases;
  for (size_t n : {size_t{0}, size_t{1}, size_t{100}, size_t{16384}, size_t{3 * 16384 + 7}}) {
    cases.push_back({shape("sum_squares", {static_cast<long long>(n)}), [=](Impl impl) {
                       const std::vector<T> x = bf16_spread(n, 70, -30, 30);
                       const double s =
                           impl == Impl::kFast ? fast::sum_squares(x.data(), n) : reference().sum_squares(x.data(), n);
                       return Outputs().add("sum", s);
                     }});
  }
  // The reference of linear_backward's dbias: the float kernel on the widened dy.
  const std::pair<int, int> shapes[] = {{1, 1}, {5, 63}, {7, 130}, {300, 100}, {0, 5}};
  for (const auto& [rows, cols] : shapes) {
    cases.push_back({shape("column_sums_accumulate", {rows, cols}), [=](Impl impl) {
                       const size_t n = static_cast<size_t>(rows) * cols;
                       const std::vector<T> dy = bf16_spread(n, 71);
                       std::vector<float> dbias = float_values(cols, 72);
                       if (impl == Impl::kFast) {
                         fast::column_sums_accumulate(dbias.data(), dy.data(), rows, cols);
                       } else {
                         std::vector<float> wide(n);
                         widen_bfloat16(wide.data(), dy.data(), n);
                         cpu::column_sums_accumulate<float>(dbias.data(), wide.data(), rows, cols);
                       }
                       return Outputs().add("dbias", dbias);
                     }});
  }
  return cases;
}

std::vector<Case> all_cases() {
  std::vector<Case> all;
  for (auto cases : {elementwise_cases(), normalisation_cases(), embedding_cases(), loss_cases(), reduction_cases()}) {
    all.insert(all.end(), cases.begin(), cases.end());
  }
  return all;
}

// Sets the OpenMP thread count for a scope.
class OmpThreads {
 public:
  explicit OmpThreads(int n) : saved_(omp_get_max_threads()) { omp_set_num_threads(n); }
  ~OmpThreads() { omp_set_num_threads(saved_); }
  OmpThreads(const OmpThreads&) = delete;
  OmpThreads& operator=(const OmpThreads&) = delete;

 private:
  int saved_;
};

void expect_parity(const std::vector<Case>& cases) {
  for (const Case& c : cases) {
    EXPECT_TRUE(same_bits(c.run(Impl::kReference), c.run(Impl::kFast))) << c.name;
  }
}

TEST(Bf16Kernels, ElementwiseOpsGiveTheReferenceBits) { expect_parity(elementwise_cases()); }
TEST(Bf16Kernels, NormalisationGivesTheReferenceBits) { expect_parity(normalisation_cases()); }
TEST(Bf16Kernels, EmbeddingOpsGiveTheReferenceBits) { expect_parity(embedding_cases()); }
TEST(Bf16Kernels, LossesAndSamplingGiveTheReferenceBits) { expect_parity(loss_cases()); }
TEST(Bf16Kernels, ReductionsGiveTheReferenceBits) { expect_parity(reduction_cases()); }

TEST(Bf16Kernels, SameBitsForOneTwoAndThreeThreads) {
  for (const Case& c : all_cases()) {
    Outputs one;
    {
      OmpThreads threads(1);
      one = c.run(Impl::kFast);
    }
    for (int n : {2, 3}) {
      OmpThreads threads(n);
      EXPECT_TRUE(same_bits(one, c.run(Impl::kFast))) << c.name << " with " << n << " threads";
    }
  }
}

// The same kernels called from inside a parallel region (the model's parallel chunks): each call runs on
// its thread, with its own scratch, and gives the bits of a lone call.
TEST(Bf16Kernels, CallsFromParallelThreadsGiveTheSameBits) {
  const std::vector<Case> cases = normalisation_cases();
  std::vector<Outputs> expected;
  for (const Case& c : cases) expected.push_back(c.run(Impl::kFast));
  OmpThreads threads(3);
  std::vector<Outputs> got(cases.size());
  const int n = static_cast<int>(cases.size());
#pragma omp parallel for schedule(dynamic)
  for (int i = 0; i < n; ++i) got[i] = cases[i].run(Impl::kFast);
  for (size_t i = 0; i < cases.size(); ++i) EXPECT_TRUE(same_bits(expected[i], got[i])) << cases[i].name;
}

// ---- invalid arguments ----
TEST(Bf16Kernels, InvalidArgumentsFailLikeTheReference) {
  std::vector<T> a(64, T(1.0f)), b(64, T(1.0f)), c(64, T(1.0f));
  std::vector<float> f(64, 1.0f), g(64, 1.0f), h(64, 1.0f);
  std::vector<uint8_t> keep(64, 1);
  const DropoutKey key = test_key(8);
  DropoutKey no_examples = key;
  no_examples.elements_per_example = 0;
  const std::vector<int32_t> ok(8, 0), negative(8, -1), big(8, 100);
  struct Bad {
    std::string name;
    std::function<void(Impl)> call;
  };
  auto ref = [] { return &reference(); };
  const std::vector<Bad> bad = {
      {"activation_forward unknown",
       [&](Impl i) {
         const auto act = static_cast<Activation>(99);
         i == Impl::kFast ? fast::activation_forward(act, a.data(), b.data(), 4)
                          : ref()->activation_forward(act, a.data(), b.data(), 4);
       }},
      {"activation_backward unknown",
       [&](Impl i) {
         const auto act = static_cast<Activation>(99);
         i == Impl::kFast ? fast::activation_backward(act, a.data(), b.data(), c.data(), 4)
                          : ref()->activation_backward(act, a.data(), b.data(), c.data(), 4);
       }},
      {"dropout_forward p = 1",
       [&](Impl i) {
         i == Impl::kFast ? fast::dropout_forward(a.data(), keep.data(), b.data(), 8, 1.0f, key)
                          : ref()->dropout_forward(a.data(), keep.data(), b.data(), 8, 1.0f, key);
       }},
      {"dropout_forward p < 0",
       [&](Impl i) {
         i == Impl::kFast ? fast::dropout_forward(a.data(), keep.data(), b.data(), 8, -0.1f, key)
                          : ref()->dropout_forward(a.data(), keep.data(), b.data(), 8, -0.1f, key);
       }},
      {"dropout_forward keep null",
       [&](Impl i) {
         i == Impl::kFast ? fast::dropout_forward(a.data(), nullptr, b.data(), 8, 0.5f, key)
                          : ref()->dropout_forward(a.data(), nullptr, b.data(), 8, 0.5f, key);
       }},
      {"dropout_forward elements_per_example 0",
       [&](Impl i) {
         i == Impl::kFast ? fast::dropout_forward(a.data(), keep.data(), b.data(), 8, 0.5f, no_examples)
                          : ref()->dropout_forward(a.data(), keep.data(), b.data(), 8, 0.5f, no_examples);
       }},
      {"dropout_backward p = 1",
       [&](Impl i) {
         i == Impl::kFast ? fast::dropout_backward(a.data(), b.data(), keep.data(), 8, 1.0f)
                          : ref()->dropout_backward(a.data(), b.data(), keep.data(), 8, 1.0f);
       }},
      {"layernorm_forward cols 0",
       [&](Impl i) {
         i == Impl::kFast
             ? fast::layernorm_forward(a.data(), f.data(), g.data(), b.data(), c.data(), c.data(), 2, 0, 1e-5f)
             : ref()->layernorm_forward(a.data(), f.data(), g.data(), b.data(), c.data(), c.data(), 2, 0, 1e-5f);
       }},
      {"layernorm_forward rows < 0",
       [&](Impl i) {
         i == Impl::kFast
             ? fast::layernorm_forward(a.data(), f.data(), g.data(), b.data(), c.data(), c.data(), -1, 4, 1e-5f)
             : ref()->layernorm_forward(a.data(), f.data(), g.data(), b.data(), c.data(), c.data(), -1, 4, 1e-5f);
       }},
      {"layernorm_backward cols 0",
       [&](Impl i) {
         i == Impl::kFast ? fast::layernorm_backward(a.data(), f.data(), g.data(), b.data(), c.data(), h.data(),
                                                     h.data(), c.data(), 2, 0)
                          : ref()->layernorm_backward(a.data(), f.data(), g.data(), b.data(), c.data(), h.data(),
                                                      h.data(), c.data(), 2, 0);
       }},
      {"dropout_add_layernorm_forward p = 1",
       [&](Impl i) {
         i == Impl::kFast
             ? fast::dropout_add_layernorm_forward(a.data(), b.data(), keep.data(), f.data(), g.data(), c.data(),
                                                   c.data(), c.data(), c.data(), 2, 4, 1.0f, key, 1e-5f)
             : ref()->dropout_add_layernorm_forward(a.data(), b.data(), keep.data(), f.data(), g.data(), c.data(),
                                                    c.data(), c.data(), c.data(), 2, 4, 1.0f, key, 1e-5f);
       }},
      {"dropout_add_layernorm_forward keep null",
       [&](Impl i) {
         i == Impl::kFast
             ? fast::dropout_add_layernorm_forward(a.data(), b.data(), nullptr, f.data(), g.data(), c.data(), c.data(),
                                                   c.data(), c.data(), 2, 4, 0.5f, key, 1e-5f)
             : ref()->dropout_add_layernorm_forward(a.data(), b.data(), nullptr, f.data(), g.data(), c.data(), c.data(),
                                                    c.data(), c.data(), 2, 4, 0.5f, key, 1e-5f);
       }},
      {"dropout_add_layernorm_forward cols 0",
       [&](Impl i) {
         i == Impl::kFast
             ? fast::dropout_add_layernorm_forward(a.data(), b.data(), keep.data(), f.data(), g.data(), c.data(),
                                                   c.data(), c.data(), c.data(), 2, 0, 0.1f, key, 1e-5f)
             : ref()->dropout_add_layernorm_forward(a.data(), b.data(), keep.data(), f.data(), g.data(), c.data(),
                                                    c.data(), c.data(), c.data(), 2, 0, 0.1f, key, 1e-5f);
       }},
      {"layernorm_dropout_backward p = 1",
       [&](Impl i) {
         i == Impl::kFast
             ? fast::layernorm_dropout_backward(a.data(), b.data(), f.data(), g.data(), c.data(), c.data(), h.data(),
                                                h.data(), c.data(), keep.data(), 2, 4, 1.0f)
             : ref()->layernorm_dropout_backward(a.data(), b.data(), f.data(), g.data(), c.data(), c.data(), h.data(),
                                                 h.data(), c.data(), keep.data(), 2, 4, 1.0f);
       }},
      {"layernorm_dropout_backward cols 0",
       [&](Impl i) {
         i == Impl::kFast
             ? fast::layernorm_dropout_backward(a.data(), b.data(), f.data(), g.data(), c.data(), c.data(), h.data(),
                                                h.data(), c.data(), keep.data(), 2, 0, 0.1f)
             : ref()->layernorm_dropout_backward(a.data(), b.data(), f.data(), g.data(), c.data(), c.data(), h.data(),
                                                 h.data(), c.data(), keep.data(), 2, 0, 0.1f);
       }},
      {"embedding_forward negative id",
       [&](Impl i) {
         i == Impl::kFast ? fast::embedding_forward(a.data(), negative.data(), ok.data(), nullptr, b.data(), b.data(),
                                                    b.data(), 2, 4, 2)
                          : ref()->embedding_forward(a.data(), negative.data(), ok.data(), nullptr, b.data(), b.data(),
                                                     b.data(), 2, 4, 2);
       }},
      {"embedding_forward negative type id",
       [&](Impl i) {
         i == Impl::kFast ? fast::embedding_forward(a.data(), ok.data(), negative.data(), nullptr, b.data(), b.data(),
                                                    b.data(), 2, 4, 2)
                          : ref()->embedding_forward(a.data(), ok.data(), negative.data(), nullptr, b.data(), b.data(),
                                                     b.data(), 2, 4, 2);
       }},
      {"embedding_forward negative position id",
       [&](Impl i) {
         i == Impl::kFast ? fast::embedding_forward(a.data(), ok.data(), ok.data(), negative.data(), b.data(), b.data(),
                                                    b.data(), 2, 4, 2)
                          : ref()->embedding_forward(a.data(), ok.data(), ok.data(), negative.data(), b.data(),
                                                     b.data(), b.data(), 2, 4, 2);
       }},
      {"embedding_forward E = 0",
       [&](Impl i) {
         i == Impl::kFast
             ? fast::embedding_forward(a.data(), ok.data(), ok.data(), nullptr, b.data(), b.data(), b.data(), 2, 4, 0)
             : ref()->embedding_forward(a.data(), ok.data(), ok.data(), nullptr, b.data(), b.data(), b.data(), 2, 4, 0);
       }},
      {"embedding_backward negative id",
       [&](Impl i) {
         i == Impl::kFast ? fast::embedding_backward(f.data(), g.data(), h.data(), a.data(), negative.data(), ok.data(),
                                                     nullptr, 2, 4, 2)
                          : ref()->embedding_backward(f.data(), g.data(), h.data(), a.data(), negative.data(),
                                                      ok.data(), nullptr, 2, 4, 2);
       }},
      {"embedding_backward negative position id",
       [&](Impl i) {
         i == Impl::kFast ? fast::embedding_backward(f.data(), g.data(), h.data(), a.data(), ok.data(), ok.data(),
                                                     negative.data(), 2, 4, 2)
                          : ref()->embedding_backward(f.data(), g.data(), h.data(), a.data(), ok.data(), ok.data(),
                                                      negative.data(), 2, 4, 2);
       }},
      {"gather_rows position = S",
       [&](Impl i) {
         i == Impl::kFast ? fast::gather_rows(a.data(), b.data(), big.data(), 2, 8, 4, 2)
                          : ref()->gather_rows(a.data(), b.data(), big.data(), 2, 8, 4, 2);
       }},
      {"gather_rows negative position",
       [&](Impl i) {
         i == Impl::kFast ? fast::gather_rows(a.data(), b.data(), negative.data(), 2, 8, 4, 2)
                          : ref()->gather_rows(a.data(), b.data(), negative.data(), 2, 8, 4, 2);
       }},
      {"scatter_add_rows position = S",
       [&](Impl i) {
         i == Impl::kFast ? fast::scatter_add_rows(a.data(), b.data(), big.data(), 2, 8, 4, 2)
                          : ref()->scatter_add_rows(a.data(), b.data(), big.data(), 2, 8, 4, 2);
       }},
      {"scatter_add_rows S = 0",
       [&](Impl i) {
         i == Impl::kFast ? fast::scatter_add_rows(a.data(), b.data(), ok.data(), 2, 0, 4, 2)
                          : ref()->scatter_add_rows(a.data(), b.data(), ok.data(), 2, 0, 4, 2);
       }},
      {"softmax_cross_entropy label = V",
       [&](Impl i) {
         i == Impl::kFast
             ? fast::softmax_cross_entropy(f.data(), a.data(), nullptr, b.data(), big.data(), nullptr, 2, 8)
             : ref()->softmax_cross_entropy(f.data(), a.data(), nullptr, b.data(), big.data(), nullptr, 2, 8);
       }},
      {"softmax_cross_entropy negative label",
       [&](Impl i) {
         i == Impl::kFast
             ? fast::softmax_cross_entropy(f.data(), a.data(), nullptr, b.data(), negative.data(), nullptr, 2, 8)
             : ref()->softmax_cross_entropy(f.data(), a.data(), nullptr, b.data(), negative.data(), nullptr, 2, 8);
       }},
      {"softmax_cross_entropy V = 0",
       [&](Impl i) {
         i == Impl::kFast
             ? fast::softmax_cross_entropy(f.data(), a.data(), nullptr, b.data(), ok.data(), nullptr, 2, 0)
             : ref()->softmax_cross_entropy(f.data(), a.data(), nullptr, b.data(), ok.data(), nullptr, 2, 0);
       }},
      {"log_softmax V = 0",
       [&](Impl i) {
         i == Impl::kFast ? fast::log_softmax(a.data(), b.data(), 2, 0) : ref()->log_softmax(a.data(), b.data(), 2, 0);
       }},
      {"gumbel_sample temperature 0",
       [&](Impl i) {
         std::vector<int32_t> s(8);
         i == Impl::kFast ? fast::gumbel_sample(s.data(), a.data(), nullptr, 2, 8, 0.0f, 1, 2, 3, 1)
                          : ref()->gumbel_sample(s.data(), a.data(), nullptr, 2, 8, 0.0f, 1, 2, 3, 1);
       }},
      {"gumbel_sample rows_per_example 0",
       [&](Impl i) {
         std::vector<int32_t> s(8);
         i == Impl::kFast ? fast::gumbel_sample(s.data(), a.data(), nullptr, 2, 8, 1.0f, 1, 2, 3, 0)
                          : ref()->gumbel_sample(s.data(), a.data(), nullptr, 2, 8, 1.0f, 1, 2, 3, 0);
       }},
      {"gumbel_sample V = 0",
       [&](Impl i) {
         std::vector<int32_t> s(8);
         i == Impl::kFast ? fast::gumbel_sample(s.data(), a.data(), nullptr, 2, 0, 1.0f, 1, 2, 3, 1)
                          : ref()->gumbel_sample(s.data(), a.data(), nullptr, 2, 0, 1.0f, 1, 2, 3, 1);
       }},
  };
  for (const Bad& x : bad) {
    EXPECT_THROW(x.call(Impl::kReference), Error) << x.name << " (reference)";
    EXPECT_THROW(x.call(Impl::kFast), Error) << x.name;
  }
}

// ---- timing (prints, asserts nothing) ----
double best_ms(const std::function<void()>& f) {
  f();  // warm-up: scratch grows, pages are touched
  double best = 1e30;
  for (int rep = 0; rep < 3; ++rep) {
    const auto t0 = std::chrono::steady_clock::now();
    f();
    best = std::min(best, std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
  }
  return best;
}

TEST(Bf16Kernels, Timing) {
  struct Op {
    std::string name;
    std::function<void(Impl)> run;
  };
  // ELECTRA-small shapes: [4096, 1024] FFN activations, [4096, 256] layer norms, 608 x 30522 MLM logits.
  const int kTokens = 4096, kHidden = 256, kFfn = 1024, kRows = 608, kVocab = 30522;
  const size_t big = static_cast<size_t>(kTokens) * kFfn, ln = static_cast<size_t>(kTokens) * kHidden;
  const size_t logits_n = static_cast<size_t>(kRows) * kVocab;
  std::vector<T> x = bf16_values(big, 80, -4, 4), dy = bf16_values(big, 81), y(big);
  std::vector<T> gamma = bf16_values(kHidden, 82, 0.5, 1.5), beta = bf16_values(kHidden, 83);
  std::vector<T> residual = bf16_values(ln, 84), res(ln);
  std::vector<float> mean(kTokens), rstd(kTokens), dgamma(kHidden), dbeta(kHidden);
  std::vector<uint8_t> keep(ln);
  std::vector<T> logits = bf16_values(logits_n, 85, -8, 8), dlogits(logits_n);
  const std::vector<int32_t> labels = random_ints(kRows, 86, 0, kVocab);
  std::vector<float> loss(kRows);
  const DropoutKey key = test_key(static_cast<uint64_t>(128) * kHidden);
  reference().layernorm_forward(y.data(), mean.data(), rstd.data(), x.data(), gamma.data(), beta.data(), kTokens,
                                kHidden, 1e-12f);
  const std::vector<Op> ops = {
      {"gelu forward 4096x1024",
       [&](Impl i) {
         i == Impl::kFast ? fast::activation_forward(Activation::kGelu, y.data(), x.data(), big)
                          : reference().activation_forward(Activation::kGelu, y.data(), x.data(), big);
       }},
      {"gelu backward 4096x1024",
       [&](Impl i) {
         i == Impl::kFast ? fast::activation_backward(Activation::kGelu, y.data(), dy.data(), x.data(), big)
                          : reference().activation_backward(Activation::kGelu, y.data(), dy.data(), x.data(), big);
       }},
      {"layernorm forward 4096x256",
       [&](Impl i) {
         i == Impl::kFast ? fast::layernorm_forward(y.data(), mean.data(), rstd.data(), x.data(), gamma.data(),
                                                    beta.data(), kTokens, kHidden, 1e-12f)
                          : reference().layernorm_forward(y.data(), mean.data(), rstd.data(), x.data(), gamma.data(),
                                                          beta.data(), kTokens, kHidden, 1e-12f);
       }},
      {"layernorm backward 4096x256",
       [&](Impl i) {
         i == Impl::kFast ? fast::layernorm_backward(y.data(), dgamma.data(), dbeta.data(), dy.data(), x.data(),
                                                     mean.data(), rstd.data(), gamma.data(), kTokens, kHidden)
                          : reference().layernorm_backward(y.data(), dgamma.data(), dbeta.data(), dy.data(), x.data(),
                                                           mean.data(), rstd.data(), gamma.data(), kTokens, kHidden);
       }},
      {"dropout_add_layernorm fwd 4096x256",
       [&](Impl i) {
         i == Impl::kFast ? fast::dropout_add_layernorm_forward(y.data(), res.data(), keep.data(), mean.data(),
                                                                rstd.data(), x.data(), residual.data(), gamma.data(),
                                                                beta.data(), kTokens, kHidden, 0.1f, key, 1e-12f)
                          : reference().dropout_add_layernorm_forward(
                                y.data(), res.data(), keep.data(), mean.data(), rstd.data(), x.data(), residual.data(),
                                gamma.data(), beta.data(), kTokens, kHidden, 0.1f, key, 1e-12f);
       }},
      {"layernorm_dropout bwd 4096x256",
       [&](Impl i) {
         i == Impl::kFast ? fast::layernorm_dropout_backward(y.data(), res.data(), dgamma.data(), dbeta.data(),
                                                             dy.data(), x.data(), mean.data(), rstd.data(),
                                                             gamma.data(), keep.data(), kTokens, kHidden, 0.1f)
                          : reference().layernorm_dropout_backward(y.data(), res.data(), dgamma.data(), dbeta.data(),
                                                                   dy.data(), x.data(), mean.data(), rstd.data(),
                                                                   gamma.data(), keep.data(), kTokens, kHidden, 0.1f);
       }},
      {"softmax_cross_entropy 608x30522",
       [&](Impl i) {
         i == Impl::kFast ? fast::softmax_cross_entropy(loss.data(), dlogits.data(), nullptr, logits.data(),
                                                        labels.data(), nullptr, kRows, kVocab)
                          : reference().softmax_cross_entropy(loss.data(), dlogits.data(), nullptr, logits.data(),
                                                              labels.data(), nullptr, kRows, kVocab);
       }},
  };
  std::printf("%-36s %7s %14s %10s %8s\n", "op", "threads", "reference ms", "fast ms", "speedup");
  for (int threads : {1, 2}) {
    OmpThreads scope(threads);
    for (const Op& op : ops) {
      const double r = best_ms([&] { op.run(Impl::kReference); });
      const double f = best_ms([&] { op.run(Impl::kFast); });
      std::printf("%-36s %7d %14.3f %10.3f %7.2fx\n", op.name.c_str(), threads, r, f, r / f);
    }
  }
}

}  // namespace
}  // namespace electra::test
