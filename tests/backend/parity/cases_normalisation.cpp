// Parity cases of LayerNorm and of the fused post-LN residual block: layernorm_forward / _backward,
// dropout_add_layernorm_forward, layernorm_dropout_backward. Backward inputs that forward saves (mean, rstd,
// res, keep) come from the double loops, rounded to the storage, so every backend runs on the same values.
#include <cmath>
#include <memory>
#include <string>
#include <vector>

#include "tests/backend/fused_layernorm_cases.h"
#include "tests/backend/parity/parity.h"
#include "tests/backend/test_util.h"

namespace electra::test::parity {
namespace {

struct LayerNormIn {
  Storage storage = Storage::kFloat;
  std::vector<double> x, gamma, beta, dy, mean, rstd, dgamma0, dbeta0;
};

// The backward of LayerNorm from the definition: d_j = sum_i dy_i gamma_i dxhat_i/dx_j, with the given
// statistics; dgamma += dy xhat, dbeta += dy (and their abs sums for the float reduction bound).
struct LayerNormGrads {
  std::vector<double> dx, dgamma, dbeta, dgamma_abs, dbeta_abs;
};
LayerNormGrads layernorm_grads(const std::vector<double>& x, const std::vector<double>& gamma,
                               const std::vector<double>& dy, const std::vector<double>& mean,
                               const std::vector<double>& rstd, const std::vector<double>& dgamma0,
                               const std::vector<double>& dbeta0, int rows, int cols) {
  LayerNormGrads g{std::vector<double>(x.size(), 0.0), dgamma0, dbeta0, dgamma0, dbeta0};
  for (double& v : g.dgamma_abs) v = std::abs(v);
  for (double& v : g.dbeta_abs) v = std::abs(v);
  std::vector<double> xhat(cols);
  for (int r = 0; r < rows; ++r) {
    const size_t row = static_cast<size_t>(r) * cols;
    for (int c = 0; c < cols; ++c) xhat[c] = (x[row + c] - mean[r]) * rstd[r];
    double sum_g = 0.0, sum_gx = 0.0;
    for (int c = 0; c < cols; ++c) {
      g.dgamma[c] += dy[row + c] * xhat[c];
      g.dbeta[c] += dy[row + c];
      g.dgamma_abs[c] += std::abs(dy[row + c] * xhat[c]);
      g.dbeta_abs[c] += std::abs(dy[row + c]);
      sum_g += dy[row + c] * gamma[c];
      sum_gx += dy[row + c] * gamma[c] * xhat[c];
    }
    for (int c = 0; c < cols; ++c) {
      g.dx[row + c] = rstd[r] * (dy[row + c] * gamma[c] - sum_g / cols - xhat[c] * sum_gx / cols);
    }
  }
  return g;
}

struct LayerNormShape {
  int rows, cols;
  double eps;
  double x_lo, x_hi;
  double gamma_lo, gamma_hi;
  bool large_mean_row = false;
};

LayerNormIn layernorm_inputs(const LayerNormShape& sh, Storage s) {
  const size_t n = static_cast<size_t>(sh.rows) * sh.cols;
  std::vector<double> x = random_values(n, 1, sh.x_lo, sh.x_hi);
  // Double only: a row with a large mean and a small spread (a two-pass variance is needed); in float the
  // rounding of the input alone moves that row's output by ~1e-3.
  if (sh.large_mean_row && s == Storage::kDouble) {
    for (int c = 0; c < sh.cols; ++c) x[c] = 100.0 + 0.01 * x[c];
  }
  LayerNormIn in{s,
                 as_storage(std::move(x), s),
                 draw(sh.cols, 2, s, sh.gamma_lo, sh.gamma_hi),
                 draw(sh.cols, 3, s),
                 draw(n, 4, s),
                 {},
                 {},
                 draw_wide(sh.cols, 5, s),
                 draw_wide(sh.cols, 6, s)};
  const ref::LayerNormOut r = ref::layernorm(in.x, in.gamma, in.beta, sh.rows, sh.cols, sh.eps);
  in.mean = as_wide(r.mean, s);
  in.rstd = as_wide(r.rstd, s);
  return in;
}

// y = (x - mean) rstd gamma + beta, mean and rstd [rows] saved (wide).
class LayerNormForward : public CaseOf<LayerNormForward, LayerNormIn> {
 public:
  explicit LayerNormForward(LayerNormShape s)
      : CaseOf("layernorm_forward", dims({{"rows", s.rows}, {"cols", s.cols}})), s_(s) {}

  LayerNormIn make(Storage s) const { return layernorm_inputs(s_, s); }
  template <typename E>
  Outputs run_on(Ctx<E>& c, const LayerNormIn& in) const {
    using W = typename Ctx<E>::W;
    auto x = c.in(in.x), gamma = c.in(in.gamma), beta = c.in(in.beta);
    auto y = c.out(in.x.size());
    auto mean = c.out_wide(s_.rows), rstd = c.out_wide(s_.rows);
    c.be.layernorm_forward(y.data(), mean.data(), rstd.data(), x.data(), gamma.data(), beta.data(), s_.rows, s_.cols,
                           static_cast<W>(s_.eps));
    return {c.get("y", y), c.get_wide("mean", mean), c.get_wide("rstd", rstd)};
  }
  Outputs reference(const LayerNormIn& in) const {
    // eps as the backend sees it (W).
    const double eps = in.storage == Storage::kDouble ? s_.eps : static_cast<float>(s_.eps);
    ref::LayerNormOut r = ref::layernorm(in.x, in.gamma, in.beta, s_.rows, s_.cols, eps);
    return {loops_output("y", Kind::kStorage, std::move(r.y)), loops_output("mean", Kind::kWide, std::move(r.mean)),
            loops_output("rstd", Kind::kWide, std::move(r.rstd))};
  }

 private:
  LayerNormShape s_;
};

// dx (overwritten), dgamma and dbeta (accumulated onto random values), from the loops' statistics; then with
// null dgamma / dbeta (dx only) and with null dx (parameters only).
class LayerNormBackward : public CaseOf<LayerNormBackward, LayerNormIn> {
 public:
  explicit LayerNormBackward(LayerNormShape s)
      : CaseOf("layernorm_backward", dims({{"rows", s.rows}, {"cols", s.cols}})), s_(s) {}
  Tolerance tolerance(const Output& o, Grade g) const override {
    if (g == Grade::kFastFloat && o.name.starts_with("dgamma")) return sum_bound(s_.rows + 5);  // 4 more roundings
    if (g == Grade::kFastFloat && o.name.starts_with("dbeta")) return sum_bound(s_.rows + 1);
    if (g == Grade::kFastBf16 && o.name.starts_with("dgamma")) return near(1e-2, 1e-3);  // products of bf16 values
    return Case::tolerance(o, g);
  }

  LayerNormIn make(Storage s) const { return layernorm_inputs(s_, s); }
  template <typename E>
  Outputs run_on(Ctx<E>& c, const LayerNormIn& in) const {
    auto x = c.in(in.x), gamma = c.in(in.gamma), dy = c.in(in.dy);
    auto mean = c.in_wide(in.mean), rstd = c.in_wide(in.rstd);
    Outputs out;
    for (const Call& k : kCalls) {
      auto dx = c.out(in.x.size());
      auto dgamma = c.in_wide(in.dgamma0), dbeta = c.in_wide(in.dbeta0);
      c.be.layernorm_backward(k.dx ? dx.data() : nullptr, k.parameters ? dgamma.data() : nullptr,
                              k.parameters ? dbeta.data() : nullptr, dy.data(), x.data(), mean.data(), rstd.data(),
                              gamma.data(), s_.rows, s_.cols);
      if (k.dx) out.push_back(c.get(std::string("dx") + k.suffix, dx));
      if (k.parameters) {
        out.push_back(c.get_wide(std::string("dgamma") + k.suffix, dgamma));
        out.push_back(c.get_wide(std::string("dbeta") + k.suffix, dbeta));
      }
    }
    return out;
  }
  Outputs reference(const LayerNormIn& in) const {
    const LayerNormGrads g =
        layernorm_grads(in.x, in.gamma, in.dy, in.mean, in.rstd, in.dgamma0, in.dbeta0, s_.rows, s_.cols);
    Outputs out;
    for (const Call& k : kCalls) {
      if (k.dx) out.push_back(loops_output(std::string("dx") + k.suffix, Kind::kStorage, g.dx));
      if (k.parameters) {
        out.push_back(loops_output(std::string("dgamma") + k.suffix, Kind::kWide, g.dgamma, g.dgamma_abs));
        out.push_back(loops_output(std::string("dbeta") + k.suffix, Kind::kWide, g.dbeta, g.dbeta_abs));
      }
    }
    return out;
  }

 private:
  // Which outputs a call asks for (the others null).
  struct Call {
    const char* suffix;
    bool dx, parameters;
  };
  static constexpr Call kCalls[] = {
      {"", true, true}, {"_without_parameters", true, false}, {"_without_dx", false, true}};
  LayerNormShape s_;
};

// ---- the fused post-LN residual block, on the cases of tests/backend/fused_layernorm_cases.h ----

struct FusedIn {
  Storage storage = Storage::kFloat;
  std::vector<double> x, residual, gamma, beta, dy, dgamma0, dbeta0;
  std::vector<uint8_t> keep;            // from the key (all ones without dropout)
  std::vector<double> res, mean, rstd;  // forward's, from the loops, for the backward
};

std::string fused_shape(const FusedLayerNormCase& c) {
  return dims({{"rows", c.rows}, {"cols", c.cols}}) + "_" + percent(c.p) +
         dims({{"_per_example", c.rows_per_example}, {"first", static_cast<long long>(c.first_example)}}) +
         (c.res_aliases_x ? "_res_is_x" : "") + (c.with_dx ? "" : "_no_dx") + (c.with_beta ? "" : "_no_beta") +
         (c.null_keep ? "_no_keep" : "");
}

FusedIn fused_inputs(const FusedLayerNormCase& c, Storage s) {
  const FusedLayerNormInputs raw = inputs_of(c);
  FusedIn in{s,
             as_storage(raw.x, s),
             as_storage(raw.residual, s),
             as_storage(raw.gamma, s),
             c.with_beta ? as_storage(raw.beta, s) : std::vector<double>(c.cols, 0.0),
             as_storage(raw.dy, s),
             as_wide(raw.dgamma0, s),
             as_wide(raw.dbeta0, s),
             std::vector<uint8_t>(static_cast<size_t>(c.rows) * c.cols, 1),
             {},
             {},
             {}};
  const DropoutKey key = key_of(c);
  for (size_t i = 0; i < in.keep.size(); ++i) {
    if (c.p > 0.0f) in.keep[i] = ref::keep_bit(key, c.p, i);
    in.res.push_back(in.residual[i] + in.x[i] * in.keep[i] / (1.0 - c.p));
  }
  in.res = as_storage(std::move(in.res), s);  // stored in T
  const ref::LayerNormOut ln = ref::layernorm(in.res, in.gamma, in.beta, c.rows, c.cols, 1e-5);
  in.mean = as_wide(ln.mean, s);
  in.rstd = as_wide(ln.rstd, s);
  return in;
}

// Forward: res = residual + dropout(x); y = LayerNorm(res), mean and rstd saved. Backward: d_res = LayerNorm
// backward of dy (dgamma, dbeta accumulate), dx = dropout backward of d_res.
class FusedLayerNorm : public CaseOf<FusedLayerNorm, FusedIn> {
 public:
  FusedLayerNorm(FusedLayerNormCase c, bool backward)
      : CaseOf(backward ? "layernorm_dropout_backward" : "dropout_add_layernorm_forward", fused_shape(c)),
        c_(c),
        backward_(backward) {}
  // Norm-wise: 1e-5 for float (CUDA against cpu_float, cpu_float against the loops, also per element),
  // 1e-2 for bf16 storage; keep masks and res bit for bit (each stored value rounded once on both sides).
  // cpu_bf16 runs the op sequence, rounding res (twice) and d_res to bf16 where its float oracle does not:
  // norm-wise 1e-2 (bit for bit against the sequence: tests/backend/fused_layernorm_test.cpp).
  Tolerance tolerance(const Output& o, Grade g) const override {
    if (g == Grade::kFastFloat || g == Grade::kFastBf16) {
      if (o.name == "res" || o.name == "keep") return bits();
      return normwise(g == Grade::kFastFloat ? 1e-5 : 1e-2);
    }
    if (g == Grade::kBf16Oracle && o.kind != Kind::kExact) return normwise(1e-2);
    // Against the loops also norm-wise, 1e-5 in float and 1e-12 in double.
    if (g == Grade::kLoopsFloat && o.kind != Kind::kExact) return Case::tolerance(o, g).with_normwise(1e-5);
    if (g == Grade::kLoopsDouble && o.kind != Kind::kExact) return Case::tolerance(o, g).with_normwise(1e-12);
    return Case::tolerance(o, g);
  }

  FusedIn make(Storage s) const { return fused_inputs(c_, s); }
  template <typename E>
  Outputs run_on(Ctx<E>& c, const FusedIn& in) const {
    using W = typename Ctx<E>::W;
    const size_t n = in.x.size();
    auto gamma = c.in(in.gamma);
    if (backward_) {
      auto res = c.in(in.res), dy = c.in(in.dy), d_res = c.out(n), dx = c.out(n);
      auto mean = c.in_wide(in.mean), rstd = c.in_wide(in.rstd), dgamma = c.in_wide(in.dgamma0),
           dbeta = c.in_wide(in.dbeta0);
      auto keep = c.in_bytes(c_.null_keep ? std::vector<uint8_t>{} : in.keep);
      c.be.layernorm_dropout_backward(d_res.data(), c_.with_dx ? dx.data() : nullptr, dgamma.data(), dbeta.data(),
                                      dy.data(), res.data(), mean.data(), rstd.data(), gamma.data(),
                                      c_.null_keep ? nullptr : keep.data(), c_.rows, c_.cols, c_.p);
      Outputs out = {c.get("d_res", d_res), c.get_wide("dgamma", dgamma), c.get_wide("dbeta", dbeta)};
      if (c_.with_dx) out.push_back(c.get("dx", dx));
      return out;
    }
    auto x = c.in(in.x), residual = c.in(in.residual), beta = c.in(in.beta);
    auto y = c.out(n), res_own = c.out(c_.res_aliases_x ? 0 : n);
    auto mean = c.out_wide(c_.rows), rstd = c.out_wide(c_.rows);
    auto keep = c.out_bytes(c_.null_keep ? 0 : n);
    E* res = c_.res_aliases_x ? x.data() : res_own.data();
    c.be.dropout_add_layernorm_forward(y.data(), res, c_.null_keep ? nullptr : keep.data(), mean.data(), rstd.data(),
                                       x.data(), residual.data(), gamma.data(), c_.with_beta ? beta.data() : nullptr,
                                       c_.rows, c_.cols, c_.p, key_of(c_), static_cast<W>(1e-5));
    Outputs out = {c.get("y", y), c.get("res", res, n), c.get_wide("mean", mean), c.get_wide("rstd", rstd)};
    if (!c_.null_keep) out.push_back(c.get_bytes("keep", keep));
    return out;
  }
  Outputs reference(const FusedIn& in) const {
    if (backward_) {
      LayerNormGrads g =
          layernorm_grads(in.res, in.gamma, in.dy, in.mean, in.rstd, in.dgamma0, in.dbeta0, c_.rows, c_.cols);
      Outputs out = {loops_output("d_res", Kind::kStorage, g.dx), loops_output("dgamma", Kind::kWide, g.dgamma),
                     loops_output("dbeta", Kind::kWide, g.dbeta)};
      if (c_.with_dx) {
        // The dropout backward of d_res as stored (T).
        std::vector<double> d_res = as_storage(g.dx, in.storage), dx(d_res.size());
        for (size_t i = 0; i < dx.size(); ++i) dx[i] = d_res[i] * in.keep[i] / (1.0 - c_.p);
        out.push_back(loops_output("dx", Kind::kStorage, std::move(dx)));
      }
      return out;
    }
    const double eps = in.storage == Storage::kDouble ? 1e-5 : static_cast<float>(1e-5);
    ref::LayerNormOut ln = ref::layernorm(in.res, in.gamma, in.beta, c_.rows, c_.cols, eps);
    Outputs out = {loops_output("y", Kind::kStorage, std::move(ln.y)), loops_output("res", Kind::kStorage, in.res),
                   loops_output("mean", Kind::kWide, std::move(ln.mean)),
                   loops_output("rstd", Kind::kWide, std::move(ln.rstd))};
    if (!c_.null_keep) {
      out.push_back(loops_output("keep", Kind::kExact, std::vector<double>(in.keep.begin(), in.keep.end())));
    }
    return out;
  }

 private:
  FusedLayerNormCase c_;
  bool backward_;
};

}  // namespace

void add_normalisation_cases(Cases& cases) {
  // Rows not a multiple of the 32-row block, widths below, at and above a warp and past 1024, one row.
  for (const LayerNormShape& s :
       {LayerNormShape{75, 33, 1e-5, -2.0, 3.0, -1.0, 1.0, true}, LayerNormShape{67, 130, 1e-12, -3.0, 3.0, 0.5, 1.5},
        LayerNormShape{300, 200, 1e-5, -2.0, 3.0, 0.5, 1.5}, LayerNormShape{5, 31, 1e-5, -2.0, 3.0, 0.5, 1.5},
        LayerNormShape{3, 1030, 1e-5, -2.0, 3.0, 0.5, 1.5}, LayerNormShape{300, 256, 1e-12, -3.0, 5.0, 0.5, 1.5},
        LayerNormShape{7, 1000, 1e-12, -3.0, 5.0, 0.5, 1.5}, LayerNormShape{129, 33, 1e-12, -3.0, 5.0, 0.5, 1.5},
        LayerNormShape{1, 7, 1e-5, -2.0, 3.0, 0.5, 1.5}}) {
    cases.push_back(std::make_unique<LayerNormForward>(s));
    cases.push_back(std::make_unique<LayerNormBackward>(s));
  }
  for (const FusedLayerNormCase& c : fused_layernorm_cases()) {
    if (c.with_dx) cases.push_back(std::make_unique<FusedLayerNorm>(c, false));  // no_dx is backward only
    cases.push_back(std::make_unique<FusedLayerNorm>(c, true));
  }
}

}  // namespace electra::test::parity
