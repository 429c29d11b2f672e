// Parity cases of the reductions and optimizer ops: sum_squares, adamw_step, adamw_step_runs,
// lamb_step_runs. The optimizer runs on the wide backend (fp32 master weights), so bf16 storage does not
// take it (its refusal is tested in tests/backend/bf16_backend_test.cpp and tests/cuda/bf16_backend_test.cpp).
#include <cmath>
#include <memory>
#include <string>
#include <vector>

#include "tests/backend/parity/parity.h"
#include "tests/backend/test_util.h"

namespace electra::test::parity {
namespace {

std::string wide_only(const BackendTraits& b) {
  return b.storage == Storage::kBf16 ? "the optimizer runs on wide(): bf16 storage keeps fp32 master weights" : "";
}

// Sum of squares in double, in a fixed order.
class SumSquares : public CaseOf<SumSquares, std::vector<double>> {
 public:
  SumSquares(size_t n, double range)
      : CaseOf("sum_squares", dims({{"n", static_cast<long long>(n)}})), n_(n), range_(range) {}
  Tolerance tolerance(const Output& o, Grade g) const override {
    if (g == Grade::kFastFloat) {
      // Exact squares, summed in double in different orders: n 2^-53 relative at worst.
      return near(2.0 * static_cast<double>(n_) * 1.1102230246251565e-16, 0.0);
    }
    if (g == Grade::kLoopsDouble || g == Grade::kLoopsFloat || g == Grade::kFastBf16) {
      Tolerance t = near(0.0, 1e-12);
      t.max_floor = 1.0;  // 1e-12 max(1, sum)
      return t;
    }
    return Case::tolerance(o, g);
  }

  std::vector<double> make(Storage s) const { return draw(n_, n_ + 1, s, -range_, range_); }
  template <typename E>
  Outputs run_on(Ctx<E>& c, const std::vector<double>& in) const {
    auto x = c.in(in);
    return {Output{"sum", Kind::kWide, {c.be.sum_squares(x.data(), n_)}, {}}};
  }
  Outputs reference(const std::vector<double>& in) const {
    double sum = 0.0;
    for (double v : in) sum += v * v;
    return {loops_output("sum", Kind::kWide, {sum})};
  }

 private:
  size_t n_;
  double range_;
};

struct AdamWSettings {
  size_t n;
  int steps;
  float lr;
};
struct AdamWIn {
  std::vector<double> params;
  std::vector<std::vector<double>> grads;  // per step
};

// `steps` AdamW steps from zero moments, with and without bias correction; the update written out by hand.
class AdamW : public CaseOf<AdamW, AdamWIn> {
 public:
  explicit AdamW(AdamWSettings s)
      : CaseOf("adamw_step", dims({{"n", static_cast<long long>(s.n)}, {"steps", s.steps}})), s_(s) {}
  std::string unsupported(const BackendTraits& b) const override { return wide_only(b); }
  Tolerance tolerance(const Output& o, Grade g) const override {
    if (g == Grade::kFastFloat) {
      if (o.name.starts_with("m")) return near(1e-6, 1e-6);  // m cancels: an absolute term at the scale of |m|
      return absolute(1e-6, o.name.starts_with("v") ? 1e-12 : 1e-9);
    }
    return Case::tolerance(o, g);
  }

  AdamWIn make(Storage s) const {
    AdamWIn in{draw(s_.n, 1, s), {}};
    for (int t = 1; t <= s_.steps; ++t) in.grads.push_back(draw(s_.n, 10 + t, s, -2.0, 2.0));
    return in;
  }
  template <typename E>
  Outputs run_on(Ctx<E>& c, const AdamWIn& in) const {
    Outputs out;
    for (bool bias_correction : {true, false}) {
      auto p = c.in(in.params), m = c.in(std::vector<double>(s_.n, 0.0)), v = c.in(std::vector<double>(s_.n, 0.0));
      for (int t = 1; t <= s_.steps; ++t) {
        auto g = c.in(in.grads[t - 1]);
        c.be.adamw_step(p.data(), g.data(), m.data(), v.data(), s_.n, s_.lr, kB1, kB2, kEps, kWd, t, kScale,
                        bias_correction);
      }
      const std::string suffix = bias_correction ? "" : "_no_bias_correction";
      for (auto [name, buffer] : {std::pair{"params", &p}, std::pair{"m", &m}, std::pair{"v", &v}}) {
        out.push_back(c.get(std::string(name) + suffix, *buffer));
      }
    }
    return out;
  }
  Outputs reference(const AdamWIn& in) const {
    Outputs out;
    for (bool bias_correction : {true, false}) {
      std::vector<double> p = in.params, m(s_.n, 0.0), v(s_.n, 0.0);
      for (int t = 1; t <= s_.steps; ++t) {
        for (size_t i = 0; i < s_.n; ++i) {
          const double g = in.grads[t - 1][i] * kScale;
          m[i] = kB1 * m[i] + (1.0 - kB1) * g;
          v[i] = kB2 * v[i] + (1.0 - kB2) * g * g;
          const double mh = bias_correction ? m[i] / (1.0 - std::pow(double(kB1), double(t))) : m[i];
          const double vh = bias_correction ? v[i] / (1.0 - std::pow(double(kB2), double(t))) : v[i];
          p[i] -= s_.lr * (mh / (std::sqrt(vh) + kEps) + kWd * p[i]);
        }
      }
      const std::string suffix = bias_correction ? "" : "_no_bias_correction";
      out.push_back(loops_output("params" + suffix, Kind::kStorage, std::move(p)));
      out.push_back(loops_output("m" + suffix, Kind::kStorage, std::move(m)));
      out.push_back(loops_output("v" + suffix, Kind::kStorage, std::move(v)));
    }
    return out;
  }

 private:
  static constexpr float kB1 = 0.9f, kB2 = 0.999f, kEps = 1e-6f, kWd = 0.01f, kScale = 0.5f;
  AdamWSettings s_;
};

// Runs of one buffer as a parameter layout has them (weights and biases alternating decay, a single
// element, a gap that stays untouched), from non-zero moments.
struct RunsIn {
  std::vector<double> params, grads, m, v;
};
struct RunSpec {
  size_t offset, size;
  float weight_decay;
  bool adapt;
};
constexpr RunSpec kRuns[] = {{0, 1000, 0.01f, true}, {1000, 7, 0.0f, false},  {1007, 2048, 0.01f, true},
                             {3055, 1, 0.0f, false}, {3056, 600, 0.0f, true}, {3656 + 50, 1500, 0.01f, true}};
constexpr size_t kRunsSize = 3656 + 50 + 1500;

RunsIn runs_inputs(Storage s, bool zero_run) {
  RunsIn in{draw(kRunsSize, 1, s), draw(kRunsSize, 2, s, -0.1, 0.1), draw(kRunsSize, 3, s, -0.01, 0.01),
            draw(kRunsSize, 4, s, 0.0, 1e-4)};
  if (zero_run) {
    for (size_t i = 3056; i < 3656; ++i) in.params[i] = 0.0;  // ||p|| = 0: trust ratio 1
  }
  return in;
}

// The per-element AdamW/LAMB update direction u and the new moments, in double.
void moments(const RunsIn& in, size_t i, double b1, double b2, double eps, long long t, bool bias_correction,
             double scale, double wd, double& m, double& v, double& u) {
  const double g = in.grads[i] * scale;
  m = b1 * in.m[i] + (1.0 - b1) * g;
  v = b2 * in.v[i] + (1.0 - b2) * g * g;
  const double mh = bias_correction ? m / (1.0 - std::pow(b1, double(t))) : m;
  const double vh = bias_correction ? v / (1.0 - std::pow(b2, double(t))) : v;
  u = mh / (std::sqrt(vh) + eps) + wd * in.params[i];
}

class AdamWRuns : public CaseOf<AdamWRuns, RunsIn> {
 public:
  AdamWRuns(long long t, bool bias_correction)
      : CaseOf("adamw_step_runs",
               dims({{"n", static_cast<long long>(kRunsSize)}, {"t", t}}) + (bias_correction ? "" : "_no_bc")),
        t_(t),
        bias_correction_(bias_correction) {}
  std::string unsupported(const BackendTraits& b) const override { return wide_only(b); }
  Tolerance tolerance(const Output& o, Grade g) const override {
    if (g == Grade::kFastFloat) {
      if (o.name == "m") return near(1e-6, 1e-6);
      return absolute(1e-6, o.name == "v" ? 1e-12 : 1e-9);
    }
    return Case::tolerance(o, g);
  }

  RunsIn make(Storage s) const { return runs_inputs(s, false); }
  template <typename E>
  Outputs run_on(Ctx<E>& c, const RunsIn& in) const {
    std::vector<typename Backend<E>::AdamWRun> runs;
    for (const RunSpec& r : kRuns) runs.push_back({r.offset, r.size, r.weight_decay});
    auto p = c.in(in.params), g = c.in(in.grads), m = c.in(in.m), v = c.in(in.v);
    c.be.adamw_step_runs(p.data(), g.data(), m.data(), v.data(), runs.data(), runs.size(), kLr, 0.9f, 0.999f, 1e-6f, t_,
                         0.5f, bias_correction_);
    return {c.get("params", p), c.get("m", m), c.get("v", v)};
  }
  Outputs reference(const RunsIn& in) const {
    RunsIn out = in;
    for (const RunSpec& r : kRuns) {
      for (size_t i = r.offset; i < r.offset + r.size; ++i) {
        double m = 0, v = 0, u = 0;
        moments(in, i, 0.9f, 0.999f, 1e-6f, t_, bias_correction_, 0.5, r.weight_decay, m, v, u);
        out.m[i] = m, out.v[i] = v;
        out.params[i] = in.params[i] - static_cast<double>(kLr) * u;
      }
    }
    return {loops_output("params", Kind::kStorage, out.params), loops_output("m", Kind::kStorage, out.m),
            loops_output("v", Kind::kStorage, out.v)};
  }

 private:
  static constexpr float kLr = 1e-3f;
  long long t_;
  bool bias_correction_;
};

// LAMB: per-run trust ratios ||p|| / ||u|| (1 for adapt = false and for a run of zero parameters).
class LambRuns : public CaseOf<LambRuns, RunsIn> {
 public:
  explicit LambRuns(long long t)
      : CaseOf("lamb_step_runs", dims({{"n", static_cast<long long>(kRunsSize)}, {"t", t}})), t_(t) {}
  std::string unsupported(const BackendTraits& b) const override {
    if (b.device == DeviceKind::kCuda && b.storage != Storage::kBf16) {
      return "no lamb_step_runs on CUDA (the backend refuses optim.name = lamb)";
    }
    return wide_only(b);
  }

  RunsIn make(Storage s) const { return runs_inputs(s, true); }
  template <typename E>
  Outputs run_on(Ctx<E>& c, const RunsIn& in) const {
    std::vector<typename Backend<E>::LambRun> runs;
    for (const RunSpec& r : kRuns) runs.push_back({r.offset, r.size, r.weight_decay, r.adapt});
    auto p = c.in(in.params), g = c.in(in.grads), m = c.in(in.m), v = c.in(in.v);
    c.be.lamb_step_runs(p.data(), g.data(), m.data(), v.data(), runs.data(), runs.size(), kLr, 0.9f, 0.999f, 1e-6f, t_,
                        0.5f);
    return {c.get("params", p), c.get("m", m), c.get("v", v)};
  }
  Outputs reference(const RunsIn& in) const {
    RunsIn out = in;
    for (const RunSpec& r : kRuns) {
      std::vector<double> u(r.size);
      double p2 = 0.0, u2 = 0.0;
      for (size_t i = r.offset; i < r.offset + r.size; ++i) {
        double m = 0, v = 0;
        moments(in, i, 0.9f, 0.999f, 1e-6f, t_, true, 0.5, r.weight_decay, m, v, u[i - r.offset]);
        out.m[i] = m, out.v[i] = v;
        p2 += in.params[i] * in.params[i];
        u2 += u[i - r.offset] * u[i - r.offset];
      }
      const double ratio = !r.adapt || p2 == 0.0 || u2 == 0.0 ? 1.0 : std::sqrt(p2) / std::sqrt(u2);
      for (size_t i = r.offset; i < r.offset + r.size; ++i) {
        out.params[i] = in.params[i] - static_cast<double>(kLr) * ratio * u[i - r.offset];
      }
    }
    return {loops_output("params", Kind::kStorage, out.params), loops_output("m", Kind::kStorage, out.m),
            loops_output("v", Kind::kStorage, out.v)};
  }

 private:
  static constexpr float kLr = 1e-2f;
  long long t_;
};

}  // namespace

void add_optimizer_cases(Cases& cases) {
  // Empty, a partial vector, a block and a tail, above the parallel threshold, a million.
  for (auto [n, range] :
       {std::pair{size_t{0}, 1.0}, std::pair{size_t{1}, 1.0}, std::pair{size_t{5}, 3.0}, std::pair{size_t{16383}, 1.0},
        std::pair{size_t{100003}, 10.0}, std::pair{size_t{1000003}, 3.0}}) {
    cases.push_back(std::make_unique<SumSquares>(n, range));
  }
  cases.push_back(std::make_unique<AdamW>(AdamWSettings{50000, 4, 1e-2f}));
  cases.push_back(std::make_unique<AdamW>(AdamWSettings{100003, 3, 1e-3f}));
  cases.push_back(std::make_unique<AdamWRuns>(1, false));
  cases.push_back(std::make_unique<AdamWRuns>(7, true));
  cases.push_back(std::make_unique<LambRuns>(1));
  cases.push_back(std::make_unique<LambRuns>(7));
}

}  // namespace electra::test::parity
