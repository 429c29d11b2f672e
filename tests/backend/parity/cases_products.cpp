// Parity cases of the matrix products: gemm, gemm_strided_batched, linear_forward, linear_backward.
// A float backend against cpu_float: the float reduction bound (both sum the same terms in other orders).
#include <cmath>
#include <memory>
#include <string>
#include <tuple>
#include <vector>

#include "tests/backend/parity/parity.h"
#include "tests/backend/test_util.h"

namespace electra::test::parity {
namespace {

Transpose transpose(bool t) { return t ? Transpose::kYes : Transpose::kNo; }

// Into `out` (0 outside the product's block, whose elements must keep their bits): |alpha| sum_k |op(A)[i,k]
// op(B)[k,j]| + |beta C[i,j]|, the product of the magnitudes.
void gemm_abs(bool ta, bool tb, int m, int n, int k, double alpha, const std::vector<double>& a, int lda,
              const std::vector<double>& b, int ldb, double beta, const std::vector<double>& c, int ldc,
              std::vector<double>& out, size_t a_off = 0, size_t b_off = 0, size_t c_off = 0) {
  const auto magnitudes = [](std::vector<double> v) {
    for (double& x : v) x = std::abs(x);
    return v;
  };
  for (size_t i = 0; i < static_cast<size_t>(m); ++i) {
    for (size_t j = 0; j < static_cast<size_t>(n); ++j) out[c_off + i * ldc + j] = std::abs(c[c_off + i * ldc + j]);
  }
  ref::gemm(ta, tb, m, n, k, std::abs(alpha), magnitudes(a), lda, magnitudes(b), ldb, std::abs(beta), out, ldc, a_off,
            b_off, c_off);
}

// C = 0.75 op(A) op(B) + beta C with padded leading dimensions, every transpose combination (outputs
// C_NN, C_NT, C_TN, C_TT; "_beta0": beta 0 on a C of NaNs, which must not be read). The gaps between rows
// of C are not the op's: they keep their values.
class Gemm : public CaseOf<Gemm, std::vector<std::vector<double>>> {
 public:
  Gemm(int m, int n, int k, bool with_beta0)
      : CaseOf("gemm", dims({{"m", m}, {"n", n}, {"k", k}})), m_(m), n_(n), k_(k) {
    for (bool ta : {false, true}) {
      for (bool tb : {false, true}) {
        variants_.push_back({ta, tb, -0.5});
        if (with_beta0) variants_.push_back({ta, tb, 0.0});
      }
    }
  }
  bool products() const override { return true; }
  Tolerance tolerance(const Output& o, Grade g) const override {
    return g == Grade::kFastFloat ? sum_bound(k_) : Case::tolerance(o, g);
  }

  // Per variant: A, B, C.
  std::vector<std::vector<double>> make(Storage s) const {
    std::vector<std::vector<double>> in;
    for (const Variant& v : variants_) {
      const Dims d = dims_of(v);
      in.push_back(draw(static_cast<size_t>(v.ta ? k_ : m_) * d.lda, 1, s));
      in.push_back(draw(static_cast<size_t>(v.tb ? n_ : k_) * d.ldb, 2, s));
      in.push_back(v.beta == 0.0 ? std::vector<double>(static_cast<size_t>(m_) * d.ldc, NAN)
                                 : draw(static_cast<size_t>(m_) * d.ldc, 3, s));
    }
    return in;
  }
  template <typename E>
  Outputs run_on(Ctx<E>& c, const std::vector<std::vector<double>>& in) const {
    using W = typename Ctx<E>::W;
    Outputs out;
    for (size_t i = 0; i < variants_.size(); ++i) {
      const Variant& v = variants_[i];
      const Dims d = dims_of(v);
      auto a = c.in(in[3 * i]), b = c.in(in[3 * i + 1]), cc = c.in(in[3 * i + 2]);
      c.be.gemm(transpose(v.ta), transpose(v.tb), m_, n_, k_, W(0.75f), a.data(), d.lda, b.data(), d.ldb,
                W(static_cast<float>(v.beta)), cc.data(), d.ldc);
      out.push_back(c.get(label(v), cc));
    }
    return out;
  }
  Outputs reference(const std::vector<std::vector<double>>& in) const {
    Outputs out;
    for (size_t i = 0; i < variants_.size(); ++i) {
      const Variant& v = variants_[i];
      const Dims d = dims_of(v);
      std::vector<double> c = in[3 * i + 2], abs(c.size(), 0.0);
      gemm_abs(v.ta, v.tb, m_, n_, k_, 0.75, in[3 * i], d.lda, in[3 * i + 1], d.ldb, v.beta, c, d.ldc, abs);
      ref::gemm(v.ta, v.tb, m_, n_, k_, 0.75, in[3 * i], d.lda, in[3 * i + 1], d.ldb, v.beta, c, d.ldc);
      out.push_back(loops_output(label(v), Kind::kStorage, std::move(c), std::move(abs)));
    }
    return out;
  }

 private:
  struct Variant {
    bool ta, tb;
    double beta;
  };
  struct Dims {
    int lda, ldb, ldc;
  };
  Dims dims_of(const Variant& v) const { return {(v.ta ? m_ : k_) + 3, (v.tb ? k_ : n_) + 2, n_ + 5}; }
  static std::string label(const Variant& v) {
    return std::string("C_") + (v.ta ? "T" : "N") + (v.tb ? "T" : "N") + (v.beta == 0.0 ? "_beta0" : "");
  }
  int m_, n_, k_;
  std::vector<Variant> variants_;
};

// `batch` products C_i = alpha op(A_i) op(B_i) + beta C_i with strides that leave gaps (untouched), or a
// packed C, or one A for all (stride 0).
class GemmStridedBatched : public CaseOf<GemmStridedBatched, std::vector<std::vector<double>>> {
 public:
  struct Shape {
    int m, n, k, batch;
    bool ta = true, tb = true;
    bool packed = false;     // C without gaps
    bool broadcast = false;  // stride 0 for A
    double alpha = 1.5, beta = 0.25;
  };
  explicit GemmStridedBatched(Shape s)
      : CaseOf("gemm_strided_batched", std::string(s.ta ? "T" : "N") + (s.tb ? "T" : "N") + "_" +
                                           dims({{"m", s.m}, {"n", s.n}, {"k", s.k}, {"batch", s.batch}}) +
                                           (s.packed ? "_packed" : "") + (s.broadcast ? "_broadcastA" : "") +
                                           (s.beta == 0.0 ? "_beta0" : "")),
        s_(s) {}
  bool products() const override { return true; }
  Tolerance tolerance(const Output& o, Grade g) const override {
    return g == Grade::kFastFloat ? sum_bound(s_.k) : Case::tolerance(o, g);
  }

  std::vector<std::vector<double>> make(Storage st) const {
    const L l = layout();
    return {draw(s_.broadcast ? static_cast<size_t>(l.rows_a) * l.lda : l.sa * s_.batch, 4, st),
            draw(l.sb * s_.batch, 5, st), draw(l.sc * s_.batch, 6, st)};
  }
  template <typename E>
  Outputs run_on(Ctx<E>& c, const std::vector<std::vector<double>>& in) const {
    using W = typename Ctx<E>::W;
    const L l = layout();
    auto a = c.in(in[0]), b = c.in(in[1]), cc = c.in(in[2]);
    c.be.gemm_strided_batched(transpose(s_.ta), transpose(s_.tb), s_.m, s_.n, s_.k, W(static_cast<float>(s_.alpha)),
                              a.data(), l.lda, l.sa, b.data(), l.ldb, l.sb, W(static_cast<float>(s_.beta)), cc.data(),
                              l.ldc, l.sc, s_.batch);
    return {c.get("C", cc)};
  }
  Outputs reference(const std::vector<std::vector<double>>& in) const {
    const L l = layout();
    std::vector<double> c = in[2], abs(c.size(), 0.0);
    for (int i = 0; i < s_.batch; ++i) {
      gemm_abs(s_.ta, s_.tb, s_.m, s_.n, s_.k, s_.alpha, in[0], l.lda, in[1], l.ldb, s_.beta, c, l.ldc, abs, i * l.sa,
               i * l.sb, i * l.sc);
      ref::gemm(s_.ta, s_.tb, s_.m, s_.n, s_.k, s_.alpha, in[0], l.lda, in[1], l.ldb, s_.beta, c, l.ldc, i * l.sa,
                i * l.sb, i * l.sc);
    }
    return {loops_output("C", Kind::kStorage, std::move(c), std::move(abs))};
  }

 private:
  struct L {
    int rows_a, lda, ldb, ldc;
    long long sa, sb, sc;
  };
  L layout() const {
    L l{};
    l.rows_a = s_.ta ? s_.k : s_.m;
    l.lda = s_.ta ? s_.m : s_.k;
    const int rows_b = s_.tb ? s_.n : s_.k;
    l.ldb = s_.tb ? s_.k : s_.n;
    l.ldc = s_.n;
    l.sa = s_.broadcast ? 0 : static_cast<long long>(l.rows_a) * l.lda + 7;
    l.sb = static_cast<long long>(rows_b) * l.ldb + 3;
    l.sc = static_cast<long long>(s_.m) * l.ldc + (s_.packed ? 0 : 1);
    return l;
  }
  Shape s_;
};

struct LinearIn {
  std::vector<double> x, w, bias, dy, dw0, db0;
};
LinearIn linear_inputs(int rows, int in, int out, Storage s) {
  return {draw(static_cast<size_t>(rows) * in, 1, s),
          draw(static_cast<size_t>(out) * in, 2, s),
          draw(out + 1, 3, s),
          draw(static_cast<size_t>(rows) * out, 4, s),
          draw_wide(static_cast<size_t>(out) * in, 5, s),
          draw_wide(out, 6, s)};
}

// Forward: y = x W^T + bias, with a bias, without, and with a bias one element (2 bytes in bf16) off
// alignment. Backward: dx = dy W (overwritten), dW += dy^T x and dbias += column sums of dy (wide, onto random
// values); then with null dx and dbias (dW only).
class Linear : public CaseOf<Linear, LinearIn> {
 public:
  Linear(int rows, int in, int out, bool backward)
      : CaseOf(backward ? "linear_backward" : "linear_forward", dims({{"rows", rows}, {"in", in}, {"out", out}})),
        rows_(rows),
        in_(in),
        out_(out),
        backward_(backward) {}
  bool products() const override { return true; }
  Tolerance tolerance(const Output& o, Grade g) const override {
    if (g == Grade::kFastFloat) return sum_bound(!backward_ ? in_ + 1 : (o.name == "dx" ? out_ : rows_ + 1));
    if (g == Grade::kFastBf16 && o.name.starts_with("dW")) return near(1e-2, 1e-3);  // sums of bf16 products
    return Case::tolerance(o, g);
  }

  LinearIn make(Storage s) const { return linear_inputs(rows_, in_, out_, s); }
  template <typename E>
  Outputs run_on(Ctx<E>& c, const LinearIn& in) const {
    auto x = c.in(in.x), w = c.in(in.w), bias = c.in(in.bias), dy = c.in(in.dy);
    if (backward_) {
      auto dx = c.out(static_cast<size_t>(rows_) * in_);
      auto dw = c.in_wide(in.dw0), db = c.in_wide(in.db0), dw_only = c.in_wide(in.dw0);
      c.be.linear_backward(dx.data(), dw.data(), db.data(), dy.data(), x.data(), w.data(), rows_, in_, out_);
      c.be.linear_backward(nullptr, dw_only.data(), nullptr, dy.data(), x.data(), w.data(), rows_, in_, out_);
      return {c.get("dx", dx), c.get_wide("dW", dw), c.get_wide("dbias", db),
              c.get_wide("dW_without_dx_dbias", dw_only)};
    }
    Outputs out;
    for (int variant = 0; variant < 3; ++variant) {
      auto y = c.out(static_cast<size_t>(rows_) * out_);
      const E* b = variant == 0 ? bias.data() : (variant == 1 ? nullptr : bias.data() + 1);
      c.be.linear_forward(y.data(), x.data(), w.data(), b, rows_, in_, out_);
      out.push_back(c.get(kLabels[variant], y));
    }
    return out;
  }
  Outputs reference(const LinearIn& in) const {
    const size_t R = rows_, I = in_, O = out_;
    Outputs out;
    if (backward_) {
      std::vector<double> dx(R * I, 0.0), dx_abs(R * I, 0.0), dw = in.dw0, dw_abs(O * I), db = in.db0, db_abs(O);
      gemm_abs(false, false, rows_, in_, out_, 1.0, in.dy, out_, in.w, in_, 0.0, dx, in_, dx_abs);
      ref::gemm(false, false, rows_, in_, out_, 1.0, in.dy, out_, in.w, in_, 0.0, dx, in_);
      gemm_abs(true, false, out_, in_, rows_, 1.0, in.dy, out_, in.x, in_, 1.0, in.dw0, in_, dw_abs);
      ref::gemm(true, false, out_, in_, rows_, 1.0, in.dy, out_, in.x, in_, 1.0, dw, in_);
      for (size_t o = 0; o < O; ++o) {
        db_abs[o] = std::abs(in.db0[o]);
        for (size_t r = 0; r < R; ++r) db[o] += in.dy[r * O + o], db_abs[o] += std::abs(in.dy[r * O + o]);
      }
      return {loops_output("dx", Kind::kStorage, std::move(dx), std::move(dx_abs)),
              loops_output("dW", Kind::kWide, dw, dw_abs), loops_output("dbias", Kind::kWide, db, db_abs),
              loops_output("dW_without_dx_dbias", Kind::kWide, dw, dw_abs)};
    }
    for (int variant = 0; variant < 3; ++variant) {
      // C starts as the bias rows; the product adds x W^T.
      std::vector<double> y(R * O, 0.0), abs(R * O, 0.0);
      for (size_t r = 0; r < R && variant != 1; ++r) {
        for (size_t o = 0; o < O; ++o) y[r * O + o] = in.bias[o + (variant == 2 ? 1 : 0)];
      }
      gemm_abs(false, true, rows_, out_, in_, 1.0, in.x, in_, in.w, in_, 1.0, y, out_, abs);
      ref::gemm(false, true, rows_, out_, in_, 1.0, in.x, in_, in.w, in_, 1.0, y, out_);
      out.push_back(loops_output(kLabels[variant], Kind::kStorage, std::move(y), std::move(abs)));
    }
    return out;
  }

 private:
  static constexpr const char* kLabels[3] = {"y_bias", "y_no_bias", "y_bias_off_by_one"};
  int rows_, in_, out_;
  bool backward_;
};

}  // namespace

void add_product_cases(Cases& cases) {
  // One BLAS call, split over threads by columns and by rows, a tensor-core tile, oneDNN's shape of odd
  // sizes, one row. Beta 0 on a C of NaNs where beta0: also the gaps between rows stay NaN, bit for bit.
  for (auto [m, n, k, beta0] :
       {std::tuple{7, 9, 11, true}, std::tuple{70, 90, 400, true}, std::tuple{90, 70, 400, false},
        std::tuple{128, 64, 32, false}, std::tuple{37, 45, 70, true}, std::tuple{1, 5, 3, false}}) {
    cases.push_back(std::make_unique<Gemm>(m, n, k, beta0));
  }
  // Small products one per thread, large ones (>= 64 MFLOP) split over the threads; packed C and a
  // broadcast A; an NT product with beta 0.
  using S = GemmStridedBatched::Shape;
  for (const S& s : {S{6, 4, 7, 5}, S{260, 131, 261, 3}, S{400, 300, 300, 2}, S{130, 33, 61, 3}, S{33, 17, 61, 3},
                     S{33, 17, 20, 3, true, true, true}, S{70, 50, 40, 2}, S{9, 8, 5, 4, true, true, true, true},
                     S{16, 24, 40, 3, false, true, false, false, 1.0, 0.0}}) {
    cases.push_back(std::make_unique<GemmStridedBatched>(s));
  }
  // out > 64: more than one column block for dbias; rows > 128: more than one column-sum block on CUDA;
  // the oneDNN test's shape; one row.
  for (auto [rows, in, out] : {std::tuple{37, 19, 70}, std::tuple{300, 29, 23}, std::tuple{300, 64, 48},
                               std::tuple{130, 96, 72}, std::tuple{1, 5, 3}}) {
    for (bool backward : {false, true}) cases.push_back(std::make_unique<Linear>(rows, in, out, backward));
  }
}

}  // namespace electra::test::parity
