// Parity cases of memory, conversions and the elementwise ops: copies and fills, widen / narrow,
// activation_forward / _backward, add, accumulate, scale, dropout_forward / _backward. Elementwise ops do the
// same single rounding everywhere, so other backends give the reference's bits (activations: the same
// approximations, to 1e-5 in float).
#include <cmath>
#include <cstring>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "tests/backend/parity/parity.h"
#include "tests/backend/test_util.h"

namespace electra::test::parity {
namespace {

// Two tensors (the inputs of most elementwise cases).
struct TwoIn {
  std::vector<double> a, b;
};

// Values, ints and bytes round trip through the backend's memory; copy; fill with a few values (-0 and a
// large magnitude among them). Bit for bit everywhere.
struct MemoryIn {
  std::vector<double> values, fills;
  std::vector<int32_t> ints;
  std::vector<uint8_t> bytes;
};
class Memory : public CaseOf<Memory, MemoryIn> {
 public:
  explicit Memory(size_t n) : CaseOf("copy_fill", dims({{"n", static_cast<long long>(n)}})), n_(n) {}
  Tolerance tolerance(const Output&, Grade) const override { return bits(); }

  MemoryIn make(Storage s) const {
    MemoryIn in{
        draw(n_, 1, s, -100.0, 100.0), as_storage({0.0, 2.5, -0.0, -3.0e38}, s), random_ints(n_, 2, -1000, 1000), {}};
    for (size_t i = 0; i < n_; ++i) in.bytes.push_back(static_cast<uint8_t>(i * 7));
    return in;
  }
  template <typename E>
  Outputs run_on(Ctx<E>& c, const MemoryIn& in) const {
    auto buf = c.in(in.values);
    auto other = c.out(n_);
    c.be.copy(other.data(), buf.data(), n_);
    Outputs out = {c.get("copy_from_host", buf), c.get("copy", other)};
    for (size_t f = 0; f < in.fills.size(); ++f) {
      auto filled = c.out(n_);
      E value{};
      if constexpr (std::is_same_v<E, bfloat16>) {
        value = bfloat16(static_cast<float>(in.fills[f]));
      } else {
        value = static_cast<E>(in.fills[f]);
      }
      c.be.fill(filled.data(), n_, value);
      out.push_back(c.get("fill_" + std::to_string(f), filled));
    }
    out.push_back(c.get_ints("ints", c.in_ints(in.ints)));
    out.push_back(c.get_bytes("bytes", c.in_bytes(in.bytes)));
    return out;
  }
  Outputs reference(const MemoryIn& in) const {
    Outputs out = {loops_output("copy_from_host", Kind::kStorage, in.values),
                   loops_output("copy", Kind::kStorage, in.values)};
    for (size_t f = 0; f < in.fills.size(); ++f) {
      out.push_back(loops_output("fill_" + std::to_string(f), Kind::kStorage, std::vector<double>(n_, in.fills[f])));
    }
    out.push_back(loops_output("ints", Kind::kExact, std::vector<double>(in.ints.begin(), in.ints.end())));
    out.push_back(loops_output("bytes", Kind::kExact, std::vector<double>(in.bytes.begin(), in.bytes.end())));
    return out;
  }

 private:
  size_t n_;
};

float float_of_bits(uint32_t u) {
  float f = 0.0f;
  std::memcpy(&f, &u, sizeof(f));
  return f;
}

// widen (exact) of values a and narrow (round to nearest-even; copies where the storage is wide) of wide values
// b, with NaN, infinities, the largest float (which rounds to infinity in bf16) and exact ties. Bit for bit
// everywhere.
class WidenNarrow : public CaseOf<WidenNarrow, TwoIn> {
 public:
  explicit WidenNarrow(size_t n) : CaseOf("widen_narrow", dims({{"n", static_cast<long long>(n)}})), n_(n) {}
  Tolerance tolerance(const Output&, Grade) const override { return bits(); }

  TwoIn make(Storage s) const {
    std::vector<double> wide = random_values(n_, 2, -300.0, 300.0);
    wide[0] = std::numeric_limits<double>::quiet_NaN();
    wide[1] = std::numeric_limits<double>::infinity();
    wide[2] = -std::numeric_limits<double>::infinity();
    wide[3] = std::numeric_limits<float>::max();
    for (size_t i = 4; i < n_ && i < 1004; ++i) {  // halfway between two bf16 values
      wide[i] = float_of_bits((static_cast<uint32_t>(0x3f80 + i) << 16) | 0x8000u);
    }
    return {draw(n_, 1, s, -100.0, 100.0), as_wide(std::move(wide), s)};
  }
  template <typename E>
  Outputs run_on(Ctx<E>& c, const TwoIn& in) const {
    auto narrow_src = c.in(in.a);
    auto wide_src = c.in_wide(in.b);
    auto widened = c.out_wide(n_);
    auto narrowed = c.out(n_);
    c.be.widen(widened.data(), narrow_src.data(), n_);
    c.be.narrow(narrowed.data(), wide_src.data(), n_);
    return {c.get_wide("widen", widened), c.get("narrow", narrowed)};
  }
  Outputs reference(const TwoIn& in) const {
    // The loops' narrow keeps the wide values; the float CPU backend's result is rounded for cpu_bf16.
    return {loops_output("widen", Kind::kWide, in.a), loops_output("narrow", Kind::kStorage, in.b)};
  }

 private:
  size_t n_;
};

constexpr Activation kActivations[] = {Activation::kNone, Activation::kGelu, Activation::kRelu, Activation::kTanh};

// y = act(x) for every activation (outputs y_<name>), and GELU in place; or dx = dy act'(x).
struct ActivationIn {
  std::vector<double> x, dy;
};
class ActivationCase : public CaseOf<ActivationCase, ActivationIn> {
 public:
  ActivationCase(size_t n, bool backward)
      : CaseOf(backward ? "activation_backward" : "activation_forward", dims({{"n", static_cast<long long>(n)}})),
        n_(n),
        backward_(backward) {}
  // Same approximations on both sides; 1 - tanh^2 cancels near saturation, hence the absolute term.
  Tolerance tolerance(const Output& o, Grade g) const override {
    return g == Grade::kFastFloat ? absolute(1e-5, 1e-6) : Case::tolerance(o, g);
  }

  ActivationIn make(Storage s) const { return {draw(n_, 1, s, -6.0, 6.0), draw(n_, 2, s)}; }
  template <typename E>
  Outputs run_on(Ctx<E>& c, const ActivationIn& in) const {
    auto x = c.in(in.x), dy = c.in(in.dy);
    Outputs out;
    for (Activation act : kActivations) {
      auto y = c.out(n_);
      if (backward_) {
        c.be.activation_backward(act, y.data(), dy.data(), x.data(), n_);
      } else {
        c.be.activation_forward(act, y.data(), x.data(), n_);
      }
      out.push_back(c.get((backward_ ? "dx_" : "y_") + to_string(act), y));
    }
    if (!backward_) {
      auto in_place = c.in(in.x);
      c.be.activation_forward(Activation::kGelu, in_place.data(), in_place.data(), n_);
      out.push_back(c.get("y_gelu_in_place", in_place));
    }
    return out;
  }
  Outputs reference(const ActivationIn& in) const {
    Outputs out;
    for (Activation act : kActivations) {
      std::vector<double> y(n_);
      for (size_t i = 0; i < n_; ++i) {
        y[i] = backward_ ? in.dy[i] * ref::activation_grad(act, in.x[i]) : ref::activation(act, in.x[i]);
      }
      out.push_back(loops_output((backward_ ? "dx_" : "y_") + to_string(act), Kind::kStorage, std::move(y)));
    }
    if (!backward_) {
      Output in_place = out[1];  // gelu
      in_place.name = "y_gelu_in_place";
      out.push_back(std::move(in_place));
    }
    return out;
  }

 private:
  size_t n_;
  bool backward_;
};

// add: out = a + b, and the same with out aliasing a, then b; accumulate: y += x (the old value widened,
// added, rounded once). Bit for bit on other backends.
class Sum : public CaseOf<Sum, TwoIn> {
 public:
  Sum(size_t n, bool accumulate)
      : CaseOf(accumulate ? "accumulate" : "add", dims({{"n", static_cast<long long>(n)}})),
        n_(n),
        accumulate_(accumulate) {}
  Tolerance tolerance(const Output& o, Grade g) const override { return bits_elsewhere(o, g); }

  TwoIn make(Storage s) const { return {draw(n_, 1, s), draw(n_, 2, s)}; }
  template <typename E>
  Outputs run_on(Ctx<E>& c, const TwoIn& in) const {
    auto a = c.in(in.a), b = c.in(in.b);
    if (accumulate_) {
      c.be.accumulate(a.data(), b.data(), n_);
      return {c.get("y", a)};
    }
    auto out = c.out(n_), a2 = c.in(in.a), b2 = c.in(in.b);
    c.be.add(out.data(), a.data(), b.data(), n_);
    c.be.add(a2.data(), a2.data(), b.data(), n_);
    c.be.add(b2.data(), a.data(), b2.data(), n_);
    return {c.get("sum", out), c.get("sum_into_a", a2), c.get("sum_into_b", b2)};
  }
  Outputs reference(const TwoIn& in) const {
    std::vector<double> sum(n_);
    for (size_t i = 0; i < n_; ++i) sum[i] = in.a[i] + in.b[i];
    Outputs out;
    for (const char* name :
         accumulate_ ? std::vector<const char*>{"y"} : std::vector<const char*>{"sum", "sum_into_a", "sum_into_b"}) {
      out.push_back(loops_output(name, Kind::kStorage, sum));
    }
    return out;
  }

 private:
  size_t n_;
  bool accumulate_;
};

// x *= alpha for a few wide alphas (0.3 and -0.37 are not bf16 values).
class Scale : public CaseOf<Scale, TwoIn> {
 public:
  explicit Scale(size_t n) : CaseOf("scale", dims({{"n", static_cast<long long>(n)}})), n_(n) {}
  Tolerance tolerance(const Output& o, Grade g) const override { return bits_elsewhere(o, g); }

  TwoIn make(Storage s) const { return {draw(n_, 1, s), {}}; }
  template <typename E>
  Outputs run_on(Ctx<E>& c, const TwoIn& in) const {
    Outputs out;
    for (float alpha : kAlphas) {
      auto x = c.in(in.a);
      c.be.scale(x.data(), n_, typename Ctx<E>::W(alpha));
      out.push_back(c.get(label(alpha), x));
    }
    return out;
  }
  Outputs reference(const TwoIn& in) const {
    Outputs out;
    for (float alpha : kAlphas) {
      std::vector<double> y(n_);
      for (size_t i = 0; i < n_; ++i) y[i] = in.a[i] * static_cast<double>(alpha);
      out.push_back(loops_output(label(alpha), Kind::kStorage, std::move(y)));
    }
    return out;
  }

 private:
  static constexpr float kAlphas[] = {-3.0f, 0.3f, -0.37f};
  static std::string label(float alpha) {
    return "x_times_" + std::string(alpha < 0 ? "minus_" : "") + std::to_string(std::abs(alpha)).substr(0, 4);
  }
  size_t n_;
};

// y = x keep / (1 - p) with keep from the DropoutKey contract (ref::keep_bit) for several p (p = 0: a copy,
// every bit set), and in place (y = x). Keep masks and values bit for bit on other backends.
struct DropoutIn {
  std::vector<double> x, dy;
  std::vector<std::vector<uint8_t>> keep;  // per p, for the backward
};
class Dropout : public CaseOf<Dropout, DropoutIn> {
 public:
  Dropout(size_t n, std::vector<float> ps, DropoutKey key, bool backward)
      : CaseOf(backward ? "dropout_backward" : "dropout_forward",
               dims({{"n", static_cast<long long>(n)},
                     {"per_example", static_cast<long long>(key.elements_per_example)}})),
        n_(n),
        ps_(std::move(ps)),
        key_(key),
        backward_(backward) {}
  Tolerance tolerance(const Output& o, Grade g) const override { return bits_elsewhere(o, g); }

  DropoutIn make(Storage s) const {
    DropoutIn in{draw(n_, 1, s), draw(n_, 2, s), {}};
    for (float p : ps_) in.keep.push_back(keep_bits(p));
    return in;
  }
  template <typename E>
  Outputs run_on(Ctx<E>& c, const DropoutIn& in) const {
    Outputs out;
    for (size_t k = 0; k < ps_.size(); ++k) {
      const float p = ps_[k];
      if (backward_) {
        auto dy = c.in(in.dy), dx = c.out(n_);
        auto keep = c.in_bytes(in.keep[k]);
        c.be.dropout_backward(dx.data(), dy.data(), keep.data(), n_, p);
        out.push_back(c.get("dx_" + percent(p), dx));
        continue;
      }
      auto x = c.in(in.x), y = c.out(n_);
      auto keep = c.out_bytes(n_), keep_in_place = c.out_bytes(n_);
      c.be.dropout_forward(y.data(), keep.data(), x.data(), n_, p, key_);
      out.push_back(c.get("y_" + percent(p), y));
      out.push_back(c.get_bytes("keep_" + percent(p), keep));
      c.be.dropout_forward(x.data(), keep_in_place.data(), x.data(), n_, p, key_);
      out.push_back(c.get("y_in_place_" + percent(p), x));
    }
    return out;
  }
  Outputs reference(const DropoutIn& in) const {
    Outputs out;
    for (size_t k = 0; k < ps_.size(); ++k) {
      const float p = ps_[k];
      const std::vector<double>& src = backward_ ? in.dy : in.x;
      std::vector<double> y(n_);
      for (size_t i = 0; i < n_; ++i) y[i] = in.keep[k][i] ? src[i] / (1.0 - p) : 0.0;
      if (backward_) {
        out.push_back(loops_output("dx_" + percent(p), Kind::kStorage, std::move(y)));
        continue;
      }
      out.push_back(loops_output("y_" + percent(p), Kind::kStorage, y));
      out.push_back(
          loops_output("keep_" + percent(p), Kind::kExact, std::vector<double>(in.keep[k].begin(), in.keep[k].end())));
      out.push_back(loops_output("y_in_place_" + percent(p), Kind::kStorage, std::move(y)));
    }
    return out;
  }

 private:
  std::vector<uint8_t> keep_bits(float p) const {
    std::vector<uint8_t> keep(n_, 1);
    if (p > 0.0f) {
      for (size_t i = 0; i < n_; ++i) keep[i] = ref::keep_bit(key_, p, i);
    }
    return keep;
  }
  size_t n_;
  std::vector<float> ps_;
  DropoutKey key_;
  bool backward_;
};

}  // namespace

void add_elementwise_cases(Cases& cases) {
  for (size_t n : {size_t{1001}, size_t{100003}}) cases.push_back(std::make_unique<Memory>(n));
  for (size_t n : {size_t{5}, size_t{100003}}) cases.push_back(std::make_unique<WidenNarrow>(n));
  // A short tail, and above the parallel threshold with an odd tail.
  for (size_t n : {size_t{7}, size_t{70001}, size_t{100003}}) {
    cases.push_back(std::make_unique<ActivationCase>(n, false));
    cases.push_back(std::make_unique<ActivationCase>(n, true));
  }
  for (size_t n : {size_t{7}, size_t{40000}, size_t{70001}}) cases.push_back(std::make_unique<Sum>(n, false));
  for (size_t n : {size_t{7}, size_t{70001}}) {
    cases.push_back(std::make_unique<Sum>(n, true));
    cases.push_back(std::make_unique<Scale>(n));
  }
  // Per-example element counts that split a Philox group of 4 or not (n not a multiple of 4), p = 0.
  for (bool backward : {false, true}) {
    cases.push_back(std::make_unique<Dropout>(
        50000, std::vector<float>{0.3f},
        DropoutKey{.seed = 99, .step = 7, .lane = 3, .first_example = 11, .elements_per_example = 777}, backward));
    cases.push_back(std::make_unique<Dropout>(
        50001, std::vector<float>{0.0f, 0.1f},
        DropoutKey{.seed = 99, .step = 4, .lane = 3, .first_example = 10, .elements_per_example = 1000}, backward));
    for (uint64_t per : {1ull, 1001ull, 20000ull}) {
      cases.push_back(std::make_unique<Dropout>(
          10007, std::vector<float>{0.1f, 0.5f},
          DropoutKey{.seed = 9, .step = 4, .lane = 3, .first_example = 5, .elements_per_example = per}, backward));
    }
  }
}

}  // namespace electra::test::parity
