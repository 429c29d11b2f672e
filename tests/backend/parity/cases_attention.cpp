// Parity cases of attention: attention_forward / _backward (probabilities materialised) and
// fused_attention_forward / _backward (log-sum-exp stats instead), with padding masks, packed rows
// (block-diagonal masks) and dropout. The
// backward inputs forward saves (probabilities, keep bits, context, stats) come from the double loops,
// rounded to the storage, so every backend differentiates the same values.
#include <cmath>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "tests/backend/parity/parity.h"
#include "tests/backend/test_util.h"
#include "tests/cuda/attention_masks.h"

namespace electra::test::parity {
namespace {

constexpr double kU = 1.0 / (1 << 24);  // float unit roundoff

enum class Mask {
  kNone,        // null: every key
  kHoles,       // example 0: its last quarter of keys padding; 1: a hole at key 2; 2 (of 4+): [CLS] only;
                // the last (of 3+): nothing to attend to
  kRight,       // right padding with at least one key (tests/cuda/attention_masks.h), which cuDNN SDPA takes
  kRightEmpty,  // right padding S - 5b, example 2 [CLS] only, example 3 nothing to attend to
  kPacked,      // packed rows (test_util.h's packed_rows): 2-3 examples of different lengths, then padding
};
const char* to_string(Mask m) {
  constexpr const char* kNames[] = {"no_mask", "holes", "right_padded", "right_padded_empty", "packed_rows"};
  return kNames[static_cast<int>(m)];
}
std::vector<int32_t> make_mask(Mask kind, int B, int S) {
  std::vector<int32_t> mask(static_cast<size_t>(B) * S, 1);
  const auto set = [&](int b, int s, int v) { mask[static_cast<size_t>(b) * S + s] = v; };
  switch (kind) {
    case Mask::kNone:
      return {};
    case Mask::kHoles:
      for (int s = S - std::min(S - 1, (S + 3) / 4); s < S; ++s) set(0, s, 0);
      if (B > 1 && S > 2) set(1, 2, 0);
      if (B >= 4) {
        for (int s = 1; s < S; ++s) set(2, s, 0);
      }
      if (B >= 3) {
        for (int s = 0; s < S; ++s) set(B - 1, s, 0);
      }
      return mask;
    case Mask::kRight:
      return right_padded_mask(B, S);
    case Mask::kRightEmpty:
      for (int b = 0; b < B; ++b) {
        const int length = b == 2 ? 1 : (b == 3 ? 0 : S - 5 * b);
        for (int s = std::max(0, length); s < S; ++s) set(b, s, 0);
      }
      return mask;
    case Mask::kPacked:
      return packed_rows(B, S).mask;
  }
  return mask;
}

struct AttentionShape {
  int B, S, H, D;
  Mask mask;
};
std::string attention_shape(const AttentionShape& a) {
  return dims({{"B", a.B}, {"S", a.S}, {"H", a.H}, {"D", a.D}}) + "_" + to_string(a.mask);
}
DropoutKey attention_key(const AttentionShape& a) {
  return DropoutKey{.seed = 5,
                    .step = 2,
                    .lane = 9,
                    .first_example = 40,
                    .elements_per_example = static_cast<uint64_t>(a.H) * a.S * a.S};
}

// The keep bits of attention dropout from the key's contract (all ones without dropout).
std::vector<uint8_t> attention_keep(const AttentionShape& a, float p) {
  std::vector<uint8_t> keep(static_cast<size_t>(a.B) * a.H * a.S * a.S, 1);
  if (p > 0.0f) {
    const DropoutKey key = attention_key(a);
    for (size_t i = 0; i < keep.size(); ++i) keep[i] = ref::keep_bit(key, p, i);
  }
  return keep;
}

// The chain rule through context = dropout(softmax(q k^T / sqrt(D))) v, loop by loop, from the given
// probabilities.
std::vector<double> attention_backward_loops(const AttentionShape& a, const std::vector<double>& qkv,
                                             const std::vector<double>& dctx, const std::vector<double>& probs,
                                             const std::vector<uint8_t>& keep, float p) {
  const int B = a.B, S = a.S, H = a.H, D = a.D;
  std::vector<double> dqkv(qkv.size(), 0.0);
  auto idx = [&](int b, int s, int which, int h, int d) {
    return ((((static_cast<size_t>(b) * S + s) * 3 + which) * H + h) * D) + d;
  };
  for (int b = 0; b < B; ++b) {
    for (int h = 0; h < H; ++h) {
      for (int i = 0; i < S; ++i) {
        const size_t row = ((static_cast<size_t>(b) * H + h) * S + i) * S;
        std::vector<double> dprob(S, 0.0);
        for (int j = 0; j < S; ++j) {
          const double kscale = keep[row + j] / (1.0 - p);
          for (int d = 0; d < D; ++d) {
            const double g = dctx[((static_cast<size_t>(b) * S + i) * H + h) * D + d];
            dqkv[idx(b, j, 2, h, d)] += probs[row + j] * kscale * g;
            dprob[j] += g * qkv[idx(b, j, 2, h, d)] * kscale;
          }
        }
        double dot = 0;
        for (int j = 0; j < S; ++j) dot += dprob[j] * probs[row + j];
        for (int j = 0; j < S; ++j) {
          const double dscore = probs[row + j] * (dprob[j] - dot) / std::sqrt(static_cast<double>(D));
          for (int d = 0; d < D; ++d) {
            dqkv[idx(b, i, 0, h, d)] += dscore * qkv[idx(b, j, 1, h, d)];
            dqkv[idx(b, j, 1, h, d)] += dscore * qkv[idx(b, i, 0, h, d)];
          }
        }
      }
    }
  }
  return dqkv;
}

// Per query row, the log-sum-exp of the masked scaled scores (+infinity where no key is valid).
std::vector<double> attention_stats(const AttentionShape& a, const std::vector<double>& qkv,
                                    const std::vector<int32_t>& mask) {
  const int B = a.B, S = a.S, H = a.H, D = a.D;
  auto at = [&](int b, int s, int which, int h, int d) {
    return qkv[((((static_cast<size_t>(b) * S + s) * 3 + which) * H + h) * D) + d];
  };
  std::vector<double> stats(static_cast<size_t>(B) * H * S);
  for (int b = 0; b < B; ++b) {
    for (int h = 0; h < H; ++h) {
      for (int i = 0; i < S; ++i) {
        std::vector<double> scores;
        for (int j = 0; j < S; ++j) {
          if (!mask.empty() && !attends_key(mask[static_cast<size_t>(b) * S + i], mask[static_cast<size_t>(b) * S + j]))
            continue;
          double s = 0;
          for (int d = 0; d < D; ++d) s += at(b, i, 0, h, d) * at(b, j, 1, h, d);
          scores.push_back(s / std::sqrt(static_cast<double>(D)));
        }
        stats[(static_cast<size_t>(b) * H + h) * S + i] =
            scores.empty() ? std::numeric_limits<double>::infinity()
                           : ref::logsumexp(scores.data(), static_cast<int>(scores.size()));
      }
    }
  }
  return stats;
}

struct AttentionIn {
  std::vector<double> qkv, dctx;
  std::vector<int32_t> mask;
  // Per dropout probability: forward's outputs from the loops (rounded), for the backward.
  std::vector<std::vector<uint8_t>> keep;
  std::vector<std::vector<double>> probs, context, stats;
};
AttentionIn attention_inputs(const AttentionShape& a, const std::vector<float>& ps, Storage s) {
  AttentionIn in;
  in.qkv = draw(static_cast<size_t>(a.B) * a.S * 3 * a.H * a.D, 1, s, -2.0, 2.0);
  in.dctx = draw(static_cast<size_t>(a.B) * a.S * a.H * a.D, 2, s);
  in.mask = make_mask(a.mask, a.B, a.S);
  for (float p : ps) {
    in.keep.push_back(attention_keep(a, p));
    const ref::AttentionOut r =
        ref::attention(in.qkv, in.mask, p > 0.0f ? in.keep.back() : std::vector<uint8_t>{}, a.B, a.S, a.H, a.D, p);
    in.probs.push_back(as_storage(r.probs, s));
    in.context.push_back(as_storage(r.context, s));
    in.stats.push_back(as_wide(attention_stats(a, in.qkv, in.mask), s));
  }
  return in;
}

// Tolerances of the CUDA tests: float against cpu_float, chains of S- and D-long products (probabilities:
// a softmax over S keys of D-long dot products); bf16 against cpu_bf16, probabilities and score
// gradients rounded to bf16 as GEMM operands where the reference keeps them fp32 (kOperandFloor of
// tests/cuda/attention_bf16_emulation_test.cpp), and norm-wise 1e-2.
constexpr double kOperandFloor = 5e-3;

// Forward: context [B,S,H,D], probs [B,H,S,S] and keep [B,H,S,S] for each dropout probability. Backward:
// dqkv [B,S,3,H,D] (overwritten) from dcontext and the loops' probabilities and keep bits.
class Attention : public CaseOf<Attention, AttentionIn> {
 public:
  Attention(AttentionShape a, std::vector<float> ps, bool backward)
      : CaseOf(backward ? "attention_backward" : "attention_forward", attention_shape(a)),
        a_(a),
        ps_(std::move(ps)),
        backward_(backward) {}
  bool products() const override { return true; }
  Tolerance tolerance(const Output& o, Grade g) const override {
    const bool probs = o.name.starts_with("probs");
    Tolerance t = Case::tolerance(o, g);
    if (o.kind == Kind::kExact) return t;
    if (g == Grade::kFastFloat) {
      const double tol = (probs ? 4.0 : 8.0) * (a_.S + a_.D) * kU;
      t = near(tol, tol);
    } else if (g == Grade::kFastBf16 && !probs) {
      t = near(1e-2, kOperandFloor).with_normwise(1e-2);
    }
    return probs ? t.with_exact_zeros() : t;  // masked keys get exactly 0
  }

  AttentionIn make(Storage s) const { return attention_inputs(a_, ps_, s); }
  template <typename E>
  Outputs run_on(Ctx<E>& c, const AttentionIn& in) const {
    const size_t np = static_cast<size_t>(a_.B) * a_.H * a_.S * a_.S;
    auto qkv = c.in(in.qkv), dctx = c.in(in.dctx);
    auto mask = c.in_ints(in.mask);
    const int32_t* m = in.mask.empty() ? nullptr : mask.data();
    Outputs out;
    for (size_t k = 0; k < ps_.size(); ++k) {
      const std::string p = percent(ps_[k]);
      if (backward_) {
        auto probs = c.in(in.probs[k]);
        auto keep = c.in_bytes(in.keep[k]);
        auto dqkv = c.out(in.qkv.size()), scratch = c.out(np);
        c.be.attention_backward(dqkv.data(), scratch.data(), dctx.data(), qkv.data(), probs.data(), keep.data(), m,
                                a_.B, a_.S, a_.H, a_.D, ps_[k]);
        out.push_back(c.get("dqkv_" + p, dqkv));
        continue;
      }
      auto ctx = c.out(in.dctx.size()), probs = c.out(np);
      auto keep = c.out_bytes(np);
      c.be.attention_forward(ctx.data(), probs.data(), keep.data(), qkv.data(), m, a_.B, a_.S, a_.H, a_.D, ps_[k],
                             attention_key(a_));
      out.push_back(c.get("context_" + p, ctx));
      out.push_back(c.get("probs_" + p, probs));
      out.push_back(c.get_bytes("keep_" + p, keep));
    }
    return out;
  }
  Outputs reference(const AttentionIn& in) const {
    Outputs out;
    for (size_t k = 0; k < ps_.size(); ++k) {
      const float p = ps_[k];
      if (backward_) {
        out.push_back(loops_output("dqkv_" + percent(p), Kind::kStorage,
                                   attention_backward_loops(a_, in.qkv, in.dctx, in.probs[k], in.keep[k], p)));
        continue;
      }
      ref::AttentionOut r =
          ref::attention(in.qkv, in.mask, p > 0.0f ? in.keep[k] : std::vector<uint8_t>{}, a_.B, a_.S, a_.H, a_.D, p);
      out.push_back(loops_output("context_" + percent(p), Kind::kStorage, std::move(r.context)));
      out.push_back(loops_output("probs_" + percent(p), Kind::kStorage, std::move(r.probs)));
      out.push_back(
          loops_output("keep_" + percent(p), Kind::kExact, std::vector<double>(in.keep[k].begin(), in.keep[k].end())));
    }
    return out;
  }

 private:
  AttentionShape a_;
  std::vector<float> ps_;
  bool backward_;
};

// Forward: context and stats [B,H,S] (wide). Backward: dqkv from dcontext, the loops' context and stats (the
// probabilities and keep bits recomputed). The CUDA tests' tolerances: fp32 own kernels 1e-5 of the largest
// element, stats 1e-5 (1 + |stat|); bf16 norm-wise 1e-2, and elementwise where our kernels serve (not cuDNN).
class FusedAttention : public CaseOf<FusedAttention, AttentionIn> {
 public:
  FusedAttention(AttentionShape a, float p, bool backward)
      : CaseOf(backward ? "fused_attention_backward" : "fused_attention_forward",
               attention_shape(a) + "_" + percent(p)),
        a_(a),
        p_(p),
        backward_(backward) {}
  bool products() const override { return true; }
  std::string unsupported(const BackendTraits& b) const override {
    const bool cudnn = b.cudnn_sdpa && p_ == 0.0f && a_.D % 8 == 0 && a_.D <= 128;
    if (cudnn && a_.mask != Mask::kRight && a_.mask != Mask::kNone) {
      return std::string("cuDNN SDPA serves this call and takes right-padded masks with a key in every row, not ") +
             to_string(a_.mask);
    }
    return "";
  }
  Tolerance tolerance(const Output& o, Grade g) const override {
    const bool stats = o.name == "stats";
    if (g == Grade::kFastFloat) return stats ? absolute(1e-5, 1e-5) : near(1e-5, 1e-5);
    if (g == Grade::kFastBf16) {
      if (p_ == 0.0f && a_.D % 8 == 0) return normwise(1e-2);  // cuDNN SDPA where it serves
      return (stats ? near(1e-4, 1e-4) : near(1e-2, kOperandFloor)).with_normwise(1e-2);
    }
    return Case::tolerance(o, g);
  }

  AttentionIn make(Storage s) const { return attention_inputs(a_, {p_}, s); }
  template <typename E>
  Outputs run_on(Ctx<E>& c, const AttentionIn& in) const {
    if (!c.be.fused_attention_supported(a_.B, a_.S, a_.H, a_.D, p_)) {
      throw Unsupported{"fused_attention_supported says no to " + shape()};
    }
    auto qkv = c.in(in.qkv), dctx = c.in(in.dctx);
    auto mask = c.in_ints(in.mask);
    const int32_t* m = in.mask.empty() ? nullptr : mask.data();
    if (backward_) {
      auto ctx = c.in(in.context[0]), dqkv = c.out(in.qkv.size());
      auto stats = c.in_wide(in.stats[0]);
      c.be.fused_attention_backward(dqkv.data(), dctx.data(), qkv.data(), ctx.data(), stats.data(), m, a_.B, a_.S, a_.H,
                                    a_.D, p_, attention_key(a_));
      return {c.get("dqkv", dqkv)};
    }
    auto ctx = c.out(in.dctx.size());
    auto stats = c.out_wide(static_cast<size_t>(a_.B) * a_.H * a_.S);
    c.be.fused_attention_forward(ctx.data(), stats.data(), qkv.data(), m, a_.B, a_.S, a_.H, a_.D, p_,
                                 attention_key(a_));
    return {c.get("context", ctx), c.get_wide("stats", stats)};
  }
  Outputs reference(const AttentionIn& in) const {
    const std::vector<uint8_t> keep = p_ > 0.0f ? in.keep[0] : std::vector<uint8_t>{};
    ref::AttentionOut r = ref::attention(in.qkv, in.mask, keep, a_.B, a_.S, a_.H, a_.D, p_);
    if (backward_) {
      return {
          loops_output("dqkv", Kind::kStorage, attention_backward_loops(a_, in.qkv, in.dctx, r.probs, in.keep[0], p_))};
    }
    return {loops_output("context", Kind::kStorage, std::move(r.context)),
            loops_output("stats", Kind::kWide, attention_stats(a_, in.qkv, in.mask))};
  }

 private:
  AttentionShape a_;
  float p_;
  bool backward_;
};

}  // namespace

void add_attention_cases(Cases& cases) {
  // Padding, holes and examples with nothing to attend to; S not a multiple of 8 and S past a warp's
  // 128-key pass; oneDNN's batch-wide groups with and without a mask, and its one-row-at-a-time groups
  // (ELECTRA-base's heads at S = 512: one row's float scores fill its 16 MB budget); one key; packed rows
  // (each query attends its own example's keys; padding queries every real key).
  const std::vector<std::pair<AttentionShape, std::vector<float>>> materialised = {
      {{3, 7, 2, 4, Mask::kHoles}, {0.0f, 0.25f}},  {{2, 13, 3, 8, Mask::kHoles}, {0.0f, 0.2f}},
      {{3, 37, 2, 16, Mask::kHoles}, {0.0f, 0.1f}}, {{3, 37, 2, 16, Mask::kRight}, {0.0f, 0.1f}},
      {{2, 130, 2, 8, Mask::kNone}, {0.1f}},        {{1, 5, 1, 4, Mask::kNone}, {0.3f}},
      {{3, 40, 4, 16, Mask::kNone}, {0.0f, 0.1f}},  {{3, 40, 4, 16, Mask::kHoles}, {0.0f, 0.1f}},
      {{2, 512, 12, 8, Mask::kNone}, {0.1f}},       {{2, 1, 1, 4, Mask::kNone}, {0.0f}},
      {{3, 13, 2, 8, Mask::kPacked}, {0.0f, 0.2f}}, {{4, 40, 3, 16, Mask::kPacked}, {0.0f, 0.1f}},
      {{3, 130, 2, 8, Mask::kPacked}, {0.1f}}};
  for (const auto& [a, ps] : materialised) {
    for (bool backward : {false, true}) cases.push_back(std::make_unique<Attention>(a, ps, backward));
  }
  // cuDNN SDPA's path on cuda_bf16 (dropout 0, head size a multiple of 8, right padding) and our kernels'
  // (dropout, head size 12, masks with holes or empty rows, packed rows).
  const std::vector<std::pair<AttentionShape, float>> fused = {
      {{4, 9, 2, 8, Mask::kHoles}, 0.0f},         {{4, 9, 2, 8, Mask::kHoles}, 0.1f},
      {{4, 150, 3, 16, Mask::kRightEmpty}, 0.0f}, {{4, 150, 3, 16, Mask::kRightEmpty}, 0.1f},
      {{3, 64, 2, 32, Mask::kRight}, 0.0f},       {{3, 37, 2, 16, Mask::kRight}, 0.1f},
      {{3, 37, 2, 12, Mask::kRight}, 0.0f},       {{2, 6, 3, 4, Mask::kNone}, 0.2f},
      {{2, 13, 3, 8, Mask::kHoles}, 0.2f},        {{4, 37, 2, 12, Mask::kPacked}, 0.0f},
      {{4, 37, 2, 16, Mask::kPacked}, 0.1f},      {{3, 64, 2, 32, Mask::kPacked}, 0.0f},
      {{3, 150, 3, 16, Mask::kPacked}, 0.1f}};
  for (const auto& [a, p] : fused) {
    for (bool backward : {false, true}) cases.push_back(std::make_unique<FusedAttention>(a, p, backward));
  }
}

}  // namespace electra::test::parity
