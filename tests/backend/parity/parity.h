// The backend parity table (after ggml's tests/test-backend-ops.cpp): every op of lib/backend/backend.h is
// a Case (cases_*.cpp: shapes, inputs from seeded Philox streams, a run on any Backend<E>, the op written
// as double loops, tolerances), every backend a column (backends.cpp), and one runner (parity_test.cpp)
// checks each (case, backend) as one GoogleTest test, Parity/<op>_<shape>.<backend>, against the
// backend's reference on the same inputs:
//   cpu_double, cpu_float        the case's double loops (the op's definition in backend.h);
//   cpu_bf16                     cpu_float on the widened inputs, bf16 outputs rounded: bit for bit;
//   cpu_bf16_onednn, cuda_bf16   cpu_bf16;
//   cuda_float                   cpu_float.
// Every backend also runs each case twice and must give the same bits (backend.h promises determinism).
// ELECTRA_PARITY_TABLE=1 prints the op x backend table at the end (ctest -R BackendParity -V). A new op is
// a Case added by its file's add_*_cases; a new backend is one entry in backends.cpp (README.md here).
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "lib/backend/backend.h"
#include "lib/core/bfloat16.h"
#include "lib/model/device_buffer.h"

namespace electra::test::parity {

// ---- storage types and rounding ----

enum class Storage { kDouble, kFloat, kBf16 };

// Values drawn in double, rounded to what a backend of `storage` holds: its element type E (bf16 through
// float, as the bf16 tests have always drawn them) or its wide type (double for double, float otherwise).
std::vector<double> as_storage(std::vector<double> values, Storage storage);
std::vector<double> as_wide(std::vector<double> values, Storage storage);

// ---- outputs ----

// What an output holds, which says how it is rounded and compared.
enum class Kind {
  kStorage,  // Backend<E>'s E (activations, input gradients): rounded to E when the reference is wider
  kWide,     // Wide<E> (parameter gradients, statistics, losses) and double results
  kExact,    // integers and bytes (keep masks, samples, argmax, token ids): bit for bit everywhere
};

struct Output {
  Output() = default;
  Output(std::string n, Kind k, std::vector<double> v, std::vector<double> a = {})
      : name(std::move(n)), kind(k), values(std::move(v)), abs_sum(std::move(a)) {}
  std::string name;
  Kind kind = Kind::kStorage;
  std::vector<double> values;
  // From the double loops only, where a float reduction bound applies (Tolerance::sum_terms): per element
  // the sum of the magnitudes of the terms it sums (|alpha| sum_k |a b| + |beta c| for a product).
  std::vector<double> abs_sum;
};
using Outputs = std::vector<Output>;

// ---- tolerances ----

// What a backend is checked against, and so which of a case's tolerances applies.
enum class Grade {
  kLoopsDouble,  // cpu_double against the double loops
  kLoopsFloat,   // cpu_float against the double loops
  kFastFloat,    // a float backend (CUDA) against cpu_float
  kFastBf16,     // a bf16 backend (oneDNN, CUDA) against cpu_bf16
  kBf16Oracle,   // cpu_bf16 against cpu_float on the widened inputs, bf16 outputs rounded to nearest-even:
                 // bit for bit for one op (its definition); a composite op (the fused post-LN block is the op
                 // sequence, each bf16 output rounded) says its own tolerance
};

// Per element |got - want| <= rtol |want| + atol + max_rel * max(max_floor, max|want|)
//                              + 2 sum_terms 2^-24 abs_sum (the bound of a float sum of sum_terms terms in
//                                two orders: twice the classic gamma_n, abs_sum from the loops),
// and, with normwise > 0, ||got - want|| / ||want|| <= normwise (alone when the per-element terms are 0).
// Non-finite expected values must be matched exactly; with exact_zeros, so must expected zeros.
struct Tolerance {
  bool bitwise = false;
  double rtol = 0.0, atol = 0.0, max_rel = 0.0, max_floor = 1e-30, sum_terms = 0.0, normwise = 0.0;
  bool exact_zeros = false;

  Tolerance with_normwise(double tol) const {
    Tolerance t = *this;
    t.normwise = tol;
    return t;
  }
  Tolerance with_exact_zeros() const {
    Tolerance t = *this;
    t.exact_zeros = true;
    return t;
  }
};
// Bit for bit (NaNs of any payload are equal).
Tolerance bits();
// rtol |want| + floor * max|want| (the CUDA tests' `close`).
Tolerance near(double rtol, double floor);
// rtol |want| + atol (all_near with a fixed atol).
Tolerance absolute(double rtol, double atol);
// rel |want| + rel * max(1, max|want|): close_to_reference of tests/backend/test_util.h.
Tolerance reference_tol(double rel);
// The float reduction bound for n terms.
Tolerance sum_bound(double n);
// Norm-wise only.
Tolerance normwise(double tol);

// ---- running a case on a backend ----

// Byte copies between the host and a backend's memory (keep masks): Backend<T> has none (memcpy on the CPU,
// cuda_copy_bytes_* on a GPU).
struct ByteCopies {
  std::function<void(void* host, const void* src, size_t n)> to_host;
  std::function<void(void* dst, const void* host, size_t n)> from_host;
};

// Thrown by a case's run when the backend does not serve it (fused attention for a shape it does not
// take): the test skips naming `reason`.
struct Unsupported {
  std::string reason;
};

// What a case's run works with: the backend, uploads of its inputs, outputs filled with this run's poison
// (every run has another, so an element an op fails to write shows), downloads as Outputs.
template <typename E>
class Ctx {
 public:
  using W = Wide<E>;
  Ctx(Backend<E>& backend, const ByteCopies& bytes, double poison) : be(backend), bytes_(bytes), poison_(poison) {}

  Backend<E>& be;

  DeviceBuffer<E> in(const std::vector<double>& host) { return upload(be, host); }
  DeviceBuffer<W> in_wide(const std::vector<double>& host) { return upload(be.wide(), host); }
  DeviceBuffer<E, int32_t> in_ints(const std::vector<int32_t>& host) {
    DeviceBuffer<E, int32_t> d(be, host.size());
    if (!host.empty()) be.copy_ints_from_host(d.data(), host.data(), host.size());
    return d;
  }
  DeviceBuffer<E, uint8_t> in_bytes(const std::vector<uint8_t>& host) {
    DeviceBuffer<E, uint8_t> d(be, host.size());
    if (!host.empty()) bytes_.from_host(d.data(), host.data(), host.size());
    return d;
  }
  DeviceBuffer<E> out(size_t n) { return in(std::vector<double>(n, poison_)); }
  DeviceBuffer<W> out_wide(size_t n) { return in_wide(std::vector<double>(n, poison_)); }
  DeviceBuffer<E, int32_t> out_ints(size_t n) {
    return in_ints(std::vector<int32_t>(n, static_cast<int32_t>(poison_) - 1000));
  }
  DeviceBuffer<E, uint8_t> out_bytes(size_t n) {
    return in_bytes(std::vector<uint8_t>(n, static_cast<uint8_t>(static_cast<int>(poison_) & 0xff)));
  }

  Output get(std::string name, const E* d, size_t n) { return {std::move(name), Kind::kStorage, download(be, d, n)}; }
  Output get(std::string name, const DeviceBuffer<E>& d) { return get(std::move(name), d.data(), d.size()); }
  Output get_wide(std::string name, const DeviceBuffer<W>& d) {
    return {std::move(name), Kind::kWide, download(be.wide(), d.data(), d.size())};
  }
  Output get_ints(std::string name, const DeviceBuffer<E, int32_t>& d) {
    std::vector<int32_t> host(d.size());
    if (!host.empty()) be.copy_ints_to_host(host.data(), d.data(), host.size());
    return {std::move(name), Kind::kExact, std::vector<double>(host.begin(), host.end())};
  }
  Output get_bytes(std::string name, const DeviceBuffer<E, uint8_t>& d) {
    be.synchronize();
    std::vector<uint8_t> host(d.size());
    if (!host.empty()) bytes_.to_host(host.data(), d.data(), host.size());
    return {std::move(name), Kind::kExact, std::vector<double>(host.begin(), host.end())};
  }

 private:
  template <typename V>
  static V to(double x) {
    if constexpr (std::is_same_v<V, bfloat16>) {
      return bfloat16(static_cast<float>(x));
    } else {
      return static_cast<V>(x);
    }
  }
  template <typename V>
  static double from(V x) {
    if constexpr (std::is_same_v<V, bfloat16>) {
      return static_cast<float>(x);
    } else {
      return static_cast<double>(x);
    }
  }
  template <typename V>
  static DeviceBuffer<V> upload(Backend<V>& backend, const std::vector<double>& host) {
    std::vector<V> v(host.size());
    for (size_t i = 0; i < host.size(); ++i) v[i] = to<V>(host[i]);
    DeviceBuffer<V> d(backend, host.size());
    if (!host.empty()) backend.copy_from_host(d.data(), v.data(), v.size());
    return d;
  }
  template <typename V>
  static std::vector<double> download(Backend<V>& backend, const V* d, size_t n) {
    std::vector<V> v(n);
    if (n > 0) backend.copy_to_host(v.data(), d, n);
    std::vector<double> out(n);
    for (size_t i = 0; i < n; ++i) out[i] = from(v[i]);
    return out;
  }

  const ByteCopies& bytes_;
  double poison_;
};

// ---- cases ----

// What a case may ask of the backend it is about to run on.
struct BackendTraits {
  std::string name;  // the column: "cpu_float", "cuda_bf16", ...
  Storage storage = Storage::kFloat;
  DeviceKind device = DeviceKind::kCpu;
  // Fused attention without dropout goes to cuDNN SDPA where the head size allows (multiple of 8, <= 128),
  // which takes right-padded masks with at least one key.
  bool cudnn_sdpa = false;
};

// One op (or a forward or backward pair member) on one shape. A run calls ops whose storage outputs no
// later op of the same run reads, so that cpu_bf16's oracle (the float backend on the widened inputs,
// outputs rounded once) holds; independent calls (variants: transposes, null outputs, aliasing) may share a
// case as separate outputs.
class Case {
 public:
  // The backend.h op the case calls ("layernorm_backward"), and its shape and variant ("rows75_cols33").
  Case(std::string op, std::string shape) : op_(std::move(op)), shape_(std::move(shape)) {}
  virtual ~Case() = default;
  const std::string& op() const { return op_; }
  const std::string& shape() const { return shape_; }
  std::string name() const { return op_ + "_" + shape_; }
  // A matrix product (GEMMs, linear layers, attention): other backends sum in other orders and, with bf16
  // storage, round their GEMM operands differently.
  virtual bool products() const { return false; }
  // Why the backend does not take this case ("" when it does).
  virtual std::string unsupported(const BackendTraits& backend) const {
    (void)backend;
    return "";
  }
  // The default: bit for bit for exact outputs and grade kBf16Oracle; the reference tolerance of the storage
  // type against the loops (test_util.h's close_to_reference); near(1e-5, 1e-5) for a float backend against
  // cpu_float; near(1e-2, 1e-3) for bf16 outputs and near(1e-4, 1e-4) for wide ones against cpu_bf16.
  virtual Tolerance tolerance(const Output& output, Grade grade) const;

  // Inputs drawn for a backend of `storage` (values rounded to it), opaque to the runner; the runs and the
  // loops take them back.
  virtual std::shared_ptr<const void> inputs(Storage storage) const = 0;
  virtual Outputs run(Ctx<double>& c, const void* in) const = 0;
  virtual Outputs run(Ctx<float>& c, const void* in) const = 0;
  virtual Outputs run(Ctx<bfloat16>& c, const void* in) const = 0;
  // The op as double loops on the same inputs.
  virtual Outputs loops(const void* in) const = 0;

 protected:
  // The tolerance of an op that rounds each stored value once (copies, additions, lookups, dropout): the
  // other backends give the reference's bits.
  Tolerance bits_elsewhere(const Output& output, Grade grade) const {
    return grade == Grade::kFastFloat || grade == Grade::kFastBf16 ? bits() : Case::tolerance(output, grade);
  }

 private:
  std::string op_, shape_;
};

// Derived defines `In make(Storage) const`, `template <typename E> Outputs run_on(Ctx<E>&, const In&) const`
// and `Outputs reference(const In&) const`.
template <typename Derived, typename In>
class CaseOf : public Case {
 public:
  using Case::Case;
  std::shared_ptr<const void> inputs(Storage storage) const final {
    return std::make_shared<const In>(self().make(storage));
  }
  Outputs run(Ctx<double>& c, const void* in) const final { return self().run_on(c, of(in)); }
  Outputs run(Ctx<float>& c, const void* in) const final { return self().run_on(c, of(in)); }
  Outputs run(Ctx<bfloat16>& c, const void* in) const final { return self().run_on(c, of(in)); }
  Outputs loops(const void* in) const final { return self().reference(of(in)); }

 private:
  const Derived& self() const { return static_cast<const Derived&>(*this); }
  static const In& of(const void* in) { return *static_cast<const In*>(in); }
};

using Cases = std::vector<std::unique_ptr<Case>>;
// The instances, by file: cases_products.cpp, cases_elementwise.cpp, cases_normalisation.cpp,
// cases_embeddings.cpp, cases_attention.cpp, cases_losses.cpp, cases_optimizer.cpp.
void add_product_cases(Cases& cases);
void add_elementwise_cases(Cases& cases);
void add_normalisation_cases(Cases& cases);
void add_embedding_cases(Cases& cases);
void add_attention_cases(Cases& cases);
void add_loss_cases(Cases& cases);
void add_optimizer_cases(Cases& cases);
// All of them, in the table's order.
const Cases& all_cases();

// ---- helpers for cases ----

// "m7_n9_k11" from ("m", 7), ("n", 9), ("k", 11).
std::string dims(std::initializer_list<std::pair<const char*, long long>> parts);
// A dropout probability in a name: 0.25 -> "p25".
std::string percent(float p);
// Philox-drawn inputs (tests/backend/test_util.h), rounded: values in [lo, hi) and ints in [lo, hi).
std::vector<double> draw(size_t n, uint64_t id, Storage storage, double lo = -1.0, double hi = 1.0);
std::vector<double> draw_wide(size_t n, uint64_t id, Storage storage, double lo = -1.0, double hi = 1.0);
Output loops_output(std::string name, Kind kind, std::vector<double> values, std::vector<double> abs_sum = {});

}  // namespace electra::test::parity
