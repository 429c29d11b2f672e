// The parity table's shared parts: rounding, tolerances, the comparison of one output, the list of cases.
#include "tests/backend/parity/parity.h"

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>
#include <limits>
#include <sstream>

#include "tests/backend/parity/backends.h"
#include "tests/backend/test_util.h"

namespace electra::test::parity {

std::vector<double> as_storage(std::vector<double> values, Storage storage) {
  for (double& v : values) {
    if (storage == Storage::kFloat) v = static_cast<float>(v);
    if (storage == Storage::kBf16) v = static_cast<float>(bfloat16(static_cast<float>(v)));
  }
  return values;
}
std::vector<double> as_wide(std::vector<double> values, Storage storage) {
  return as_storage(std::move(values), storage == Storage::kDouble ? Storage::kDouble : Storage::kFloat);
}

Tolerance bits() {
  Tolerance t;
  t.bitwise = true;
  return t;
}
Tolerance near(double rtol, double floor) {
  Tolerance t;
  t.rtol = rtol;
  t.max_rel = floor;
  return t;
}
Tolerance absolute(double rtol, double atol) {
  Tolerance t;
  t.rtol = rtol;
  t.atol = atol;
  return t;
}
Tolerance reference_tol(double rel) {
  Tolerance t = near(rel, rel);
  t.max_floor = 1.0;
  return t;
}
Tolerance sum_bound(double n) {
  Tolerance t;
  t.sum_terms = n;
  return t;
}
Tolerance normwise(double tol) {
  Tolerance t;
  t.normwise = tol;
  return t;
}

Tolerance Case::tolerance(const Output& output, Grade grade) const {
  if (output.kind == Kind::kExact) return bits();
  switch (grade) {
    case Grade::kBf16Oracle:
      return bits();
    case Grade::kLoopsDouble:
      return reference_tol(Tol<double>::kRel);
    case Grade::kLoopsFloat:
      return reference_tol(Tol<float>::kRel);
    case Grade::kFastFloat:
      return near(1e-5, 1e-5);
    case Grade::kFastBf16:
      return output.kind == Kind::kWide ? near(1e-4, 1e-4) : near(1e-2, 1e-3);
  }
  return bits();
}

namespace {

bool same_bits(double a, double b) {
  if (std::isnan(a) && std::isnan(b)) return true;
  return std::bit_cast<uint64_t>(a) == std::bit_cast<uint64_t>(b);
}

}  // namespace

Verdict compare(const Output& got, const Output& want, const std::vector<double>& abs_sum, const Tolerance& t) {
  Verdict v;
  v.bitwise = t.bitwise;
  const auto fail = [&](size_t i, const std::string& why) {
    std::ostringstream s;
    s.precision(9);
    s << got.name << " element " << i << ": got " << got.values[i] << " want " << want.values[i] << " (" << why << ")";
    v.ok = false;
    if (v.message.empty()) v.message = s.str();
  };
  if (got.values.size() != want.values.size()) {
    v.ok = false;
    v.ratio = std::numeric_limits<double>::infinity();
    v.message =
        got.name + ": " + std::to_string(got.values.size()) + " elements, want " + std::to_string(want.values.size());
    return v;
  }
  const size_t n = got.values.size();
  if (t.sum_terms > 0.0 && abs_sum.size() != n) {
    v.ok = false;
    v.ratio = std::numeric_limits<double>::infinity();
    v.message = got.name + ": the loops give no abs_sum for the sum bound";
    return v;
  }
  if (t.bitwise) {
    size_t differ = 0;
    for (size_t i = 0; i < n; ++i) {
      if (!same_bits(got.values[i], want.values[i]) && differ++ == 0) fail(i, "bits differ");
    }
    if (differ > 0) {
      v.ratio = std::numeric_limits<double>::infinity();
      v.message += "; " + std::to_string(differ) + " of " + std::to_string(n) + " elements differ";
    }
    return v;
  }
  double max_want = 0.0;
  for (double w : want.values) {
    if (std::isfinite(w)) max_want = std::max(max_want, std::abs(w));
  }
  const bool elementwise = t.rtol > 0.0 || t.atol > 0.0 || t.max_rel > 0.0 || t.sum_terms > 0.0 || t.normwise == 0.0;
  const double floor = t.atol + t.max_rel * std::max(t.max_floor, max_want);
  constexpr double kU = 1.0 / (1 << 24);
  double worst = 0.0, diff2 = 0.0, want2 = 0.0;
  for (size_t i = 0; i < n; ++i) {
    const double g = got.values[i], w = want.values[i];
    if (!std::isfinite(w) || (t.exact_zeros && w == 0.0)) {
      if (!(same_bits(g, w) || (w == 0.0 && g == 0.0))) {
        fail(i, "must be matched exactly");
        worst = std::numeric_limits<double>::infinity();
      }
      continue;
    }
    const double err = std::abs(g - w);
    diff2 += err * err;
    want2 += w * w;
    if (!elementwise) continue;
    double bound = t.rtol * std::abs(w) + floor;
    if (t.sum_terms > 0.0) bound += 2.0 * t.sum_terms * kU * abs_sum[i] + 1e-30;
    const double ratio = bound > 0.0 ? err / bound : (err == 0.0 ? 0.0 : std::numeric_limits<double>::infinity());
    if (!(ratio <= 1.0)) {
      std::ostringstream why;
      why << "error " << err << " > bound " << bound;
      fail(i, why.str());
    }
    if (!(ratio <= worst)) worst = ratio;
  }
  if (t.normwise > 0.0) {
    const double rel = want2 > 0.0 ? std::sqrt(diff2 / want2) : std::sqrt(diff2);
    const double ratio = rel / t.normwise;
    if (!(ratio <= 1.0)) {
      v.ok = false;
      std::ostringstream s;
      s << got.name << ": norm-wise relative error " << rel << " > " << t.normwise;
      v.message = v.message.empty() ? s.str() : v.message + "; " + s.str();
    }
    if (!(ratio <= worst)) worst = ratio;
  }
  v.ratio = worst;
  return v;
}

std::string dims(std::initializer_list<std::pair<const char*, long long>> parts) {
  std::string out;
  for (const auto& [name, value] : parts) {
    if (!out.empty()) out += "_";
    out += name;
    out += std::to_string(value);
  }
  return out;
}

std::string percent(float p) {
  std::string out = "p";
  out += std::to_string(static_cast<int>(std::lround(p * 100.0f)));
  return out;
}

std::vector<double> draw(size_t n, uint64_t id, Storage storage, double lo, double hi) {
  return as_storage(random_values(n, id, lo, hi), storage);
}
std::vector<double> draw_wide(size_t n, uint64_t id, Storage storage, double lo, double hi) {
  return as_wide(random_values(n, id, lo, hi), storage);
}

Output loops_output(std::string name, Kind kind, std::vector<double> values, std::vector<double> abs_sum) {
  return Output{std::move(name), kind, std::move(values), std::move(abs_sum)};
}

const Cases& all_cases() {
  static const Cases cases = [] {
    Cases c;
    add_elementwise_cases(c);
    add_product_cases(c);
    add_normalisation_cases(c);
    add_embedding_cases(c);
    add_attention_cases(c);
    add_loss_cases(c);
    add_optimizer_cases(c);
    return c;
  }();
  return cases;
}

}  // namespace electra::test::parity
