// Parity cases of the losses and of sampling: softmax_cross_entropy, log_softmax, sigmoid_cross_entropy,
// gumbel_sample, replace_masked_tokens. Samples, argmax and token ids bit for bit everywhere.
#include <algorithm>
#include <cmath>
#include <limits>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "lib/core/philox.h"
#include "tests/backend/parity/parity.h"
#include "tests/backend/test_util.h"

namespace electra::test::parity {
namespace {

constexpr double kU = 1.0 / (1 << 24);  // float unit roundoff

// A softmax row of V: both sides sum V exponentials with at most ~V/16 + 256 sequential additions.
double softmax_rtol(int V) { return (V / 16.0 + 256.0) * kU; }

struct RowsShape {
  int rows, V;
  double lo, hi;
  bool peaked = false;  // one logit of 40 in row 3
};
std::string rows_shape(const RowsShape& s) { return dims({{"rows", s.rows}, {"V", s.V}}); }

struct LossIn {
  std::vector<double> logits, grad_scale;
  std::vector<int32_t> labels;
};
LossIn softmax_inputs(const RowsShape& sh, Storage s) {
  std::vector<double> logits = random_values(static_cast<size_t>(sh.rows) * sh.V, 1, sh.lo, sh.hi);
  if (sh.peaked && sh.rows > 3) logits[3 * static_cast<size_t>(sh.V) + 17 % sh.V] = 40.0;
  return {as_storage(std::move(logits), s), draw_wide(sh.rows, 3, s, 0.0, 2.0), random_ints(sh.rows, 2, 0, sh.V)};
}

// The calls of a loss op a case makes: which outputs each asks for (the others null), with grad_scale or
// without (1), the gradient over the logits or not. Outputs are named loss<suffix>, <grad><suffix>.
struct LossCall {
  const char* suffix;
  bool loss, grad, scaled, in_place, argmax;
};
// Each call on fresh outputs: op(call, loss or null, grad or null), loss [rows] wide, grad [logits] (a copy of
// the logits for a call in place); the outputs it asked for.
template <typename E, typename Op>
Outputs run_loss_calls(Ctx<E>& c, std::span<const LossCall> calls, size_t rows, const std::vector<double>& logits,
                       const char* grad_name, const Op& op) {
  Outputs out;
  for (const LossCall& k : calls) {
    auto loss = c.out_wide(rows);
    auto grad = k.in_place ? c.in(logits) : c.out(logits.size());
    op(k, k.loss ? loss.data() : nullptr, k.grad ? grad.data() : nullptr);
    if (k.loss) out.push_back(c.get_wide(std::string("loss") + k.suffix, loss));
    if (k.grad) out.push_back(c.get(std::string(grad_name) + k.suffix, grad));
  }
  return out;
}
void add_loss_outputs(Outputs& out, const LossCall& k, const char* grad_name, const std::vector<double>& loss,
                      const std::vector<double>& grad, const std::vector<double>& grad_unscaled) {
  if (k.loss) out.push_back(loops_output(std::string("loss") + k.suffix, Kind::kWide, loss));
  if (k.grad)
    out.push_back(loops_output(std::string(grad_name) + k.suffix, Kind::kStorage, k.scaled ? grad : grad_unscaled));
}

// loss = logsumexp - logit[label], dlogits = (softmax - onehot) grad_scale, argmax; without grad_scale;
// the loss alone; dlogits written over the logits; and that without loss or grad_scale.
constexpr LossCall kSoftmaxCalls[] = {{"", true, true, true, false, true},
                                      {"_unscaled", true, true, false, false, false},
                                      {"_without_dlogits", true, false, true, false, false},
                                      {"_in_place", true, true, true, true, false},
                                      {"_in_place_unscaled_no_loss", false, true, false, true, false}};
class SoftmaxCrossEntropy : public CaseOf<SoftmaxCrossEntropy, LossIn> {
 public:
  explicit SoftmaxCrossEntropy(RowsShape s) : CaseOf("softmax_cross_entropy", rows_shape(s)), s_(s) {}
  Tolerance tolerance(const Output& o, Grade g) const override {
    if (g == Grade::kFastFloat && o.kind != Kind::kExact) {
      const double rtol = softmax_rtol(s_.V);
      return o.name.starts_with("loss") ? absolute(rtol, 10 * rtol) : near(rtol, rtol);
    }
    return Case::tolerance(o, g);
  }

  LossIn make(Storage s) const { return softmax_inputs(s_, s); }
  template <typename E>
  Outputs run_on(Ctx<E>& c, const LossIn& in) const {
    auto logits = c.in(in.logits);
    auto labels = c.in_ints(in.labels), argmax = c.out_ints(s_.rows);
    auto scale = c.in_wide(in.grad_scale);
    Outputs out =
        run_loss_calls(c, kSoftmaxCalls, s_.rows, in.logits, "dlogits", [&](const LossCall& k, auto* loss, E* grad) {
          c.be.softmax_cross_entropy(loss, grad, k.argmax ? argmax.data() : nullptr, k.in_place ? grad : logits.data(),
                                     labels.data(), k.scaled ? scale.data() : nullptr, s_.rows, s_.V);
        });
    out.push_back(c.get_ints("argmax", argmax));
    return out;
  }
  Outputs reference(const LossIn& in) const {
    const size_t V = s_.V;
    std::vector<double> loss(s_.rows), dlogits(in.logits.size()), dlogits_unscaled(in.logits.size()), argmax(s_.rows);
    for (int r = 0; r < s_.rows; ++r) {
      const double* x = in.logits.data() + r * V;
      const double lse = ref::logsumexp(x, static_cast<int>(V));
      loss[r] = lse - x[in.labels[r]];
      argmax[r] = static_cast<double>(std::max_element(x, x + V) - x);
      for (size_t j = 0; j < V; ++j) {
        const double d = std::exp(x[j] - lse) - (static_cast<int>(j) == in.labels[r] ? 1.0 : 0.0);
        dlogits_unscaled[r * V + j] = d;
        dlogits[r * V + j] = d * in.grad_scale[r];
      }
    }
    Outputs out = {loops_output("argmax", Kind::kExact, std::move(argmax))};
    for (const LossCall& k : kSoftmaxCalls) add_loss_outputs(out, k, "dlogits", loss, dlogits, dlogits_unscaled);
    return out;
  }

 private:
  RowsShape s_;
};

// y = log_softmax(x) per row, and in place.
class LogSoftmax : public CaseOf<LogSoftmax, LossIn> {
 public:
  explicit LogSoftmax(RowsShape s) : CaseOf("log_softmax", rows_shape(s)), s_(s) {}
  Tolerance tolerance(const Output& o, Grade g) const override {
    const double rtol = softmax_rtol(s_.V);
    return g == Grade::kFastFloat ? absolute(rtol, 10 * rtol) : Case::tolerance(o, g);
  }

  LossIn make(Storage s) const { return softmax_inputs(s_, s); }
  template <typename E>
  Outputs run_on(Ctx<E>& c, const LossIn& in) const {
    auto x = c.in(in.logits), in_place = c.in(in.logits), y = c.out(in.logits.size());
    c.be.log_softmax(y.data(), x.data(), s_.rows, s_.V);
    c.be.log_softmax(in_place.data(), in_place.data(), s_.rows, s_.V);
    return {c.get("y", y), c.get("y_in_place", in_place)};
  }
  Outputs reference(const LossIn& in) const {
    std::vector<double> y(in.logits.size());
    const size_t V = s_.V;
    for (int r = 0; r < s_.rows; ++r) {
      const double lse = ref::logsumexp(in.logits.data() + r * V, s_.V);
      for (size_t j = 0; j < V; ++j) y[r * V + j] = in.logits[r * V + j] - lse;
    }
    return {loops_output("y", Kind::kStorage, y), loops_output("y_in_place", Kind::kStorage, y)};
  }

 private:
  RowsShape s_;
};

struct SigmoidShape {
  size_t n;
  double lo, hi, scale_hi;
  bool extremes = false;  // logits of +-200: exp(200) overflows float, the stable form must not
};

// loss = BCE with logits, dlogit = (sigmoid - label) grad_scale; without grad_scale; the loss alone; dlogit
// alone (no loss, no grad_scale).
constexpr LossCall kSigmoidCalls[] = {{"", true, true, true, false, false},
                                      {"_unscaled", true, true, false, false, false},
                                      {"_without_dlogit", true, false, true, false, false},
                                      {"_dlogit_only_unscaled", false, true, false, false, false}};
class SigmoidCrossEntropy : public CaseOf<SigmoidCrossEntropy, LossIn> {
 public:
  explicit SigmoidCrossEntropy(SigmoidShape s)
      : CaseOf("sigmoid_cross_entropy", dims({{"n", static_cast<long long>(s.n)}, {"range", std::lround(s.hi)}}) +
                                            (s.extremes ? "_extremes" : "")),
        s_(s) {}
  // CUDA's expf / log1pf are within 2 ulps of glibc's.
  Tolerance tolerance(const Output& o, Grade g) const override {
    return g == Grade::kFastFloat ? absolute(1e-6, 1e-7) : Case::tolerance(o, g);
  }

  LossIn make(Storage s) const {
    std::vector<double> logits = random_values(s_.n, 1, s_.lo, s_.hi);
    if (s_.extremes) logits[0] = 200.0, logits[1] = -200.0;
    return {as_storage(std::move(logits), s), draw_wide(s_.n, 3, s, 0.0, s_.scale_hi), random_ints(s_.n, 2, 0, 2)};
  }
  template <typename E>
  Outputs run_on(Ctx<E>& c, const LossIn& in) const {
    auto logits = c.in(in.logits);
    auto labels = c.in_ints(in.labels);
    auto scale = c.in_wide(in.grad_scale);
    return run_loss_calls(c, kSigmoidCalls, s_.n, in.logits, "dlogit", [&](const LossCall& k, auto* loss, E* grad) {
      c.be.sigmoid_cross_entropy(loss, grad, logits.data(), labels.data(), k.scaled ? scale.data() : nullptr, s_.n);
    });
  }
  Outputs reference(const LossIn& in) const {
    std::vector<double> loss(s_.n), dlogit(s_.n), dlogit_unscaled(s_.n);
    for (size_t i = 0; i < s_.n; ++i) {
      const double x = in.logits[i], y = in.labels[i];
      // log(1 + e^x) - x y, written the other stable way round
      loss[i] = (x > 0 ? x + std::log1p(std::exp(-x)) : std::log1p(std::exp(x))) - x * y;
      dlogit_unscaled[i] = 1.0 / (1.0 + std::exp(-x)) - y;
      dlogit[i] = dlogit_unscaled[i] * in.grad_scale[i];
    }
    Outputs out;
    for (const LossCall& k : kSigmoidCalls) add_loss_outputs(out, k, "dlogit", loss, dlogit, dlogit_unscaled);
    return out;
  }

 private:
  SigmoidShape s_;
};

// Gumbel-max samples for a few temperatures, with a disallowed token per row (one outside [0, V):
// disallows nothing) and without; against backend.h's definition, evaluated in double.
struct GumbelIn {
  std::vector<double> logits;
  std::vector<int32_t> disallow;
};
class GumbelSample : public CaseOf<GumbelSample, GumbelIn> {
 public:
  // Logits in [-spread, spread]: flat rows (an untrained generator) and peaked ones (a trained one, where
  // most chunks of a row cannot win and gumbel_sample_rows skips them).
  GumbelSample(int rows, int V, double spread = 3.0)
      : CaseOf("gumbel_sample", dims({{"rows", rows}, {"V", V}, {"spread", static_cast<int>(spread)}})),
        rows_(rows),
        V_(V),
        spread_(spread) {}

  GumbelIn make(Storage s) const {
    GumbelIn in{draw(static_cast<size_t>(rows_) * V_, 1, s, -spread_, spread_), random_ints(rows_, 2, 0, V_)};
    in.disallow[3 % rows_] = -1;
    return in;
  }
  template <typename E>
  Outputs run_on(Ctx<E>& c, const GumbelIn& in) const {
    auto logits = c.in(in.logits);
    auto disallow = c.in_ints(in.disallow);
    Outputs out;
    for (float t : kTemperatures) {
      for (bool with_disallow : {true, false}) {
        auto samples = c.out_ints(rows_);
        c.be.gumbel_sample(samples.data(), logits.data(), with_disallow ? disallow.data() : nullptr, rows_, V_, t,
                           kSeed, kStep, kFirst, kRowsPerExample);
        out.push_back(c.get_ints(label(t, with_disallow), samples));
      }
    }
    return out;
  }
  Outputs reference(const GumbelIn& in) const {
    Outputs out;
    for (float t : kTemperatures) {
      for (bool with_disallow : {true, false}) {
        std::vector<double> samples(rows_);
        for (int r = 0; r < rows_; ++r) {
          const PhiloxStream stream(kSeed, RandomPurpose::kSampling, kStep, kFirst + r / kRowsPerExample);
          double best = -std::numeric_limits<double>::infinity();
          for (int v = 0; v < V_; ++v) {
            const double z =
                in.logits[static_cast<size_t>(r) * V_ + v] - (with_disallow && v == in.disallow[r] ? 1000.0 : 0.0);
            const double score =
                z / static_cast<double>(t) + stream.gumbel(static_cast<uint64_t>(r % kRowsPerExample) * V_ + v);
            if (score > best) {
              best = score;
              samples[r] = v;
            }
          }
        }
        out.push_back(loops_output(label(t, with_disallow), Kind::kExact, std::move(samples)));
      }
    }
    return out;
  }

 private:
  static constexpr float kTemperatures[] = {0.5f, 0.7f, 1.0f};
  static constexpr uint64_t kSeed = 77, kStep = 5, kFirst = 1000;
  static constexpr int kRowsPerExample = 4;
  static std::string label(float t, bool with_disallow) {
    return "samples_t" + std::to_string(std::lround(t * 100)) + (with_disallow ? "_disallow" : "");
  }
  int rows_, V_;
  double spread_;
};

// ELECTRA's replaced-token input and labels from the samples (backend.h's contract): duplicate positions
// (the later wins), weights <= 0 ignored, with their positions out of range.
struct TokensIn {
  std::vector<int32_t> original, input_mask, positions, samples;
  std::vector<double> weights;
};
class ReplaceMaskedTokens : public CaseOf<ReplaceMaskedTokens, TokensIn> {
 public:
  ReplaceMaskedTokens(int B, int S, int P)
      : CaseOf("replace_masked_tokens", dims({{"B", B}, {"S", S}, {"P", P}})), B_(B), S_(S), P_(P) {}

  TokensIn make(Storage s) const {
    TokensIn in{random_ints(B_ * S_, 3, 0, 30), random_ints(B_ * S_, 4, 0, 2), random_ints(B_ * P_, 5, 0, S_),
                random_ints(B_ * P_, 6, 0, 30), draw_wide(B_ * P_, 7, s, -0.5, 1.0)};
    in.positions[1] = in.positions[0];  // a later duplicate wins
    in.weights[2] = 0.0;
    in.weights[5] = -1.0;
    in.positions[5] = S_ + 4;  // ignored: weight <= 0
    return in;
  }
  template <typename E>
  Outputs run_on(Ctx<E>& c, const TokensIn& in) const {
    auto original = c.in_ints(in.original), input_mask = c.in_ints(in.input_mask), positions = c.in_ints(in.positions),
         samples = c.in_ints(in.samples);
    auto weights = c.in_wide(in.weights);
    auto corrupted = c.out_ints(B_ * S_), label = c.out_ints(B_ * S_);
    c.be.replace_masked_tokens(corrupted.data(), label.data(), original.data(), input_mask.data(), positions.data(),
                               weights.data(), samples.data(), B_, S_, P_);
    return {c.get_ints("corrupted", corrupted), c.get_ints("disc_label", label)};
  }
  Outputs reference(const TokensIn& in) const {
    std::vector<double> corrupted(in.original.begin(), in.original.end()), label(corrupted.size());
    for (int b = 0; b < B_; ++b) {
      for (int p = 0; p < P_; ++p) {
        const size_t i = static_cast<size_t>(b) * P_ + p;
        if (in.weights[i] > 0.0) corrupted[static_cast<size_t>(b) * S_ + in.positions[i]] = in.samples[i];
      }
    }
    for (size_t i = 0; i < label.size(); ++i) {
      label[i] = in.input_mask[i] != 0 && corrupted[i] != in.original[i] ? 1.0 : 0.0;
    }
    return {loops_output("corrupted", Kind::kExact, std::move(corrupted)),
            loops_output("disc_label", Kind::kExact, std::move(label))};
  }

 private:
  int B_, S_, P_;
};

}  // namespace

void add_loss_cases(Cases& cases) {
  // A small vocabulary with a peaked row, the oneDNN and bf16 tests' width, BERT's vocabulary, one row.
  for (const RowsShape& s :
       {RowsShape{9, 1031, -8.0, 8.0, true}, RowsShape{9, 301, -5.0, 5.0}, RowsShape{13, 1000, -8.0, 8.0},
        RowsShape{13, 30522, -8.0, 8.0}, RowsShape{1, 7, -8.0, 8.0}}) {
    cases.push_back(std::make_unique<SoftmaxCrossEntropy>(s));
  }
  for (const RowsShape& s : {RowsShape{9, 1031, -8.0, 8.0, true}, RowsShape{5, 77, -4.0, 4.0},
                             RowsShape{13, 1000, -8.0, 8.0}, RowsShape{13, 30522, -8.0, 8.0}}) {
    cases.push_back(std::make_unique<LogSoftmax>(s));
  }
  for (const SigmoidShape& s : {SigmoidShape{1000, -20.0, 20.0, 3.0, true}, SigmoidShape{1001, -8.0, 8.0, 50.0},
                                SigmoidShape{1001, -30.0, 30.0, 2.0}, SigmoidShape{5001, -10.0, 10.0, 2.0}}) {
    cases.push_back(std::make_unique<SigmoidCrossEntropy>(s));
  }
  for (auto [rows, V, spread] : {std::tuple{23, 301, 3.0}, std::tuple{12, 97, 3.0}, std::tuple{24, 777, 3.0},
                                 std::tuple{24, 30522, 3.0}, std::tuple{16, 8000, 12.0}, std::tuple{16, 30522, 40.0}}) {
    cases.push_back(std::make_unique<GumbelSample>(rows, V, spread));
  }
  for (auto [B, S, P] : {std::tuple{3, 10, 4}, std::tuple{4, 30, 6}}) {
    cases.push_back(std::make_unique<ReplaceMaskedTokens>(B, S, P));
  }
}

}  // namespace electra::test::parity
