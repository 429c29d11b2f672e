// Parity cases of the embeddings and row gathers: embedding_forward / _backward, gather_rows,
// scatter_add_rows. Lookups and single additions give the reference's bits on every backend; the table
// gradients sum tokens in another order on a GPU (the position table's order is the CPU's).
#include <cmath>
#include <memory>
#include <string>
#include <vector>

#include "tests/backend/parity/parity.h"
#include "tests/backend/test_util.h"

namespace electra::test::parity {
namespace {

struct EmbeddingShape {
  int B, S, E, V, T;
  bool long_runs = false;  // 40% of the ids are one token (as [MASK] or [PAD]): runs across the GPU's chunks
  bool packed = false;     // position_ids of packed rows (restarting per example), else null (position s)
};

struct EmbeddingIn {
  std::vector<int32_t> ids, type_ids, position_ids;  // position_ids empty: null
  std::vector<double> word, position, type, dout, dword0, dposition0, dtype0;
  // The position of token t (b, s).
  size_t position_of(size_t t, int S) const { return position_ids.empty() ? t % S : position_ids[t]; }
};

EmbeddingIn embedding_inputs(const EmbeddingShape& sh, Storage s) {
  const size_t tokens = static_cast<size_t>(sh.B) * sh.S, E = sh.E;
  EmbeddingIn in{random_ints(tokens, 1, 0, sh.V),
                 random_ints(tokens, 2, 0, sh.T),
                 sh.packed ? packed_rows(sh.B, sh.S).position_ids : std::vector<int32_t>{},
                 draw(sh.V * E, 3, s),
                 draw(sh.S * E, 4, s),
                 draw(sh.T * E, 5, s),
                 draw(tokens * E, 6, s),
                 draw_wide(sh.V * E, 7, s),
                 draw_wide(sh.S * E, 8, s),
                 draw_wide(sh.T * E, 9, s)};
  if (sh.long_runs) {
    const auto coin = random_ints(tokens, 10, 0, 10);
    for (size_t t = 0; t < tokens; ++t) {
      if (coin[t] < 4) in.ids[t] = 3;
    }
  }
  return in;
}

std::string embedding_shape(const EmbeddingShape& sh) {
  return dims({{"B", sh.B}, {"S", sh.S}, {"E", sh.E}, {"V", sh.V}}) + (sh.long_runs ? "_long_runs" : "") +
         (sh.packed ? "_packed_rows" : "");
}

// out = word[id] + position[pos] + type[type id]: every term, no type ids (type 0), no position table, no
// type table; pos is s, or the packed rows' position ids. Bit for bit on other backends.
class EmbeddingForward : public CaseOf<EmbeddingForward, EmbeddingIn> {
 public:
  explicit EmbeddingForward(EmbeddingShape s) : CaseOf("embedding_forward", embedding_shape(s)), s_(s) {}
  Tolerance tolerance(const Output& o, Grade g) const override { return bits_elsewhere(o, g); }

  EmbeddingIn make(Storage s) const { return embedding_inputs(s_, s); }
  template <typename E>
  Outputs run_on(Ctx<E>& c, const EmbeddingIn& in) const {
    auto ids = c.in_ints(in.ids), type_ids = c.in_ints(in.type_ids), position_ids = c.in_ints(in.position_ids);
    const int32_t* pids = in.position_ids.empty() ? nullptr : position_ids.data();
    auto word = c.in(in.word), position = c.in(in.position), type = c.in(in.type);
    Outputs out;
    for (int variant = 0; variant < 4; ++variant) {
      auto o = c.out(in.dout.size());
      c.be.embedding_forward(o.data(), ids.data(), variant == 1 ? nullptr : type_ids.data(), pids, word.data(),
                             variant == 2 ? nullptr : position.data(), variant == 3 ? nullptr : type.data(), s_.B, s_.S,
                             s_.E);
      out.push_back(c.get(kLabels[variant], o));
    }
    return out;
  }
  Outputs reference(const EmbeddingIn& in) const {
    Outputs out;
    const size_t E = s_.E;
    for (int variant = 0; variant < 4; ++variant) {
      std::vector<double> o(in.dout.size());
      for (size_t t = 0; t < in.ids.size(); ++t) {
        const size_t s = in.position_of(t, s_.S), tid = variant == 1 ? 0 : in.type_ids[t];
        for (size_t c = 0; c < E; ++c) {
          double v = in.word[in.ids[t] * E + c];
          if (variant != 2) v += in.position[s * E + c];
          if (variant != 3) v += in.type[tid * E + c];
          o[t * E + c] = v;
        }
      }
      out.push_back(loops_output(kLabels[variant], Kind::kStorage, std::move(o)));
    }
    return out;
  }

 private:
  static constexpr const char* kLabels[4] = {"out", "out_no_type_ids", "out_no_position_table", "out_no_type_table"};
  EmbeddingShape s_;
};

// Scatter-adds of dout into the three tables (wide, accumulated onto random values); then with type ids
// null (type 0), with the word table alone, and without it. Packed rows' position ids make the position
// table a scatter-add with repeats like the others.
class EmbeddingBackward : public CaseOf<EmbeddingBackward, EmbeddingIn> {
 public:
  explicit EmbeddingBackward(EmbeddingShape s) : CaseOf("embedding_backward", embedding_shape(s)), s_(s) {}
  Tolerance tolerance(const Output& o, Grade g) const override {
    // Without position ids a GPU sums a position's tokens in the CPU's order; with them it may not.
    const bool position = o.name.starts_with("dposition") && !s_.packed;
    if (g == Grade::kFastFloat) return position ? bits() : sum_bound(static_cast<double>(s_.B) * s_.S + 1);
    if (g == Grade::kFastBf16 && position) return bits();
    return Case::tolerance(o, g);
  }

  EmbeddingIn make(Storage s) const { return embedding_inputs(s_, s); }
  template <typename E>
  Outputs run_on(Ctx<E>& c, const EmbeddingIn& in) const {
    auto ids = c.in_ints(in.ids), type_ids = c.in_ints(in.type_ids), dout = c.in(in.dout);
    auto position_ids = c.in_ints(in.position_ids);
    const int32_t* pids = in.position_ids.empty() ? nullptr : position_ids.data();
    Outputs out;
    for (int variant = 0; variant < 4; ++variant) {
      auto dword = c.in_wide(in.dword0), dposition = c.in_wide(in.dposition0), dtype = c.in_wide(in.dtype0);
      const bool word = variant != 3, position_and_type = variant != 2;
      c.be.embedding_backward(word ? dword.data() : nullptr, position_and_type ? dposition.data() : nullptr,
                              position_and_type ? dtype.data() : nullptr, dout.data(), ids.data(),
                              variant == 0 || variant == 3 ? type_ids.data() : nullptr, pids, s_.B, s_.S, s_.E);
      const std::string suffix = kSuffixes[variant];
      if (word) out.push_back(c.get_wide("dword" + suffix, dword));
      if (position_and_type) {
        out.push_back(c.get_wide("dposition" + suffix, dposition));
        out.push_back(c.get_wide("dtype" + suffix, dtype));
      }
    }
    return out;
  }
  Outputs reference(const EmbeddingIn& in) const {
    Outputs out;
    const size_t E = s_.E;
    for (int variant = 0; variant < 4; ++variant) {
      std::vector<double> dword = in.dword0, dposition = in.dposition0, dtype = in.dtype0;
      std::vector<double> word_abs = abs_of(in.dword0), position_abs = abs_of(in.dposition0),
                          type_abs = abs_of(in.dtype0);
      for (size_t t = 0; t < in.ids.size(); ++t) {
        const size_t s = in.position_of(t, s_.S), tid = variant == 0 || variant == 3 ? in.type_ids[t] : 0;
        for (size_t c = 0; c < E; ++c) {
          const double d = in.dout[t * E + c];
          dword[in.ids[t] * E + c] += d;
          word_abs[in.ids[t] * E + c] += std::abs(d);
          dposition[s * E + c] += d;
          position_abs[s * E + c] += std::abs(d);
          dtype[tid * E + c] += d;
          type_abs[tid * E + c] += std::abs(d);
        }
      }
      const std::string suffix = kSuffixes[variant];
      if (variant != 3)
        out.push_back(loops_output("dword" + suffix, Kind::kWide, std::move(dword), std::move(word_abs)));
      if (variant != 2) {
        out.push_back(loops_output("dposition" + suffix, Kind::kWide, std::move(dposition), std::move(position_abs)));
        out.push_back(loops_output("dtype" + suffix, Kind::kWide, std::move(dtype), std::move(type_abs)));
      }
    }
    return out;
  }

 private:
  static std::vector<double> abs_of(std::vector<double> v) {
    for (double& x : v) x = std::abs(x);
    return v;
  }
  static constexpr const char* kSuffixes[4] = {"", "_no_type_ids", "_word_only", "_no_word"};
  EmbeddingShape s_;
};

struct RowsShape {
  int B, S, P, C;
  int duplicates;  // positions 1.. of the first example repeat position 0 (they add up in the scatter)
};
struct RowsIn {
  std::vector<int32_t> positions;
  std::vector<double> x, dout;
};
RowsIn rows_inputs(const RowsShape& sh, Storage s) {
  RowsIn in{random_ints(static_cast<size_t>(sh.B) * sh.P, 3, 0, sh.S),
            draw(static_cast<size_t>(sh.B) * sh.S * sh.C, 1, s), draw(static_cast<size_t>(sh.B) * sh.P * sh.C, 2, s)};
  for (int d = 1; d <= sh.duplicates; ++d) in.positions[d] = in.positions[0];
  return in;
}

// out[b,p,:] = x[b, positions[b,p], :], or dx[b, positions[b,p], :] += dout[b,p,:]. Bit for bit on other
// backends.
class Rows : public CaseOf<Rows, RowsIn> {
 public:
  Rows(RowsShape s, bool scatter)
      : CaseOf(scatter ? "scatter_add_rows" : "gather_rows",
               dims({{"B", s.B}, {"S", s.S}, {"P", s.P}, {"C", s.C}, {"duplicates", s.duplicates}})),
        s_(s),
        scatter_(scatter) {}
  Tolerance tolerance(const Output& o, Grade g) const override { return bits_elsewhere(o, g); }

  RowsIn make(Storage s) const { return rows_inputs(s_, s); }
  template <typename E>
  Outputs run_on(Ctx<E>& c, const RowsIn& in) const {
    auto positions = c.in_ints(in.positions), x = c.in(in.x);
    if (scatter_) {
      auto dout = c.in(in.dout);
      c.be.scatter_add_rows(x.data(), dout.data(), positions.data(), s_.B, s_.S, s_.P, s_.C);
      return {c.get("dx", x)};
    }
    auto out = c.out(in.dout.size());
    c.be.gather_rows(out.data(), x.data(), positions.data(), s_.B, s_.S, s_.P, s_.C);
    return {c.get("out", out)};
  }
  Outputs reference(const RowsIn& in) const {
    std::vector<double> out(in.dout.size()), dx = in.x;
    const size_t C = s_.C;
    for (int b = 0; b < s_.B; ++b) {
      for (int p = 0; p < s_.P; ++p) {
        const size_t row = static_cast<size_t>(b) * s_.S + in.positions[static_cast<size_t>(b) * s_.P + p];
        const size_t prow = static_cast<size_t>(b) * s_.P + p;
        for (size_t c = 0; c < C; ++c) {
          out[prow * C + c] = in.x[row * C + c];
          dx[row * C + c] += in.dout[prow * C + c];
        }
      }
    }
    if (scatter_) return {loops_output("dx", Kind::kStorage, std::move(dx))};
    return {loops_output("out", Kind::kStorage, std::move(out))};
  }

 private:
  RowsShape s_;
  bool scatter_;
};

}  // namespace

void add_embedding_cases(Cases& cases) {
  // Few ids (many duplicates in the scatter-add); widths below and above a 128-column block; long runs of
  // one id across 16 chunks of 32 sorted tokens; packed rows' position ids.
  for (const EmbeddingShape& s :
       {EmbeddingShape{3, 6, 70, 5, 2}, EmbeddingShape{3, 11, 40, 50, 2}, EmbeddingShape{3, 17, 40, 50, 2},
        EmbeddingShape{3, 50, 40, 17, 2}, EmbeddingShape{8, 64, 130, 50, 2, true}, EmbeddingShape{1, 1, 3, 2, 2},
        EmbeddingShape{3, 17, 40, 50, 2, false, true}, EmbeddingShape{8, 64, 130, 50, 2, true, true}}) {
    cases.push_back(std::make_unique<EmbeddingForward>(s));
    cases.push_back(std::make_unique<EmbeddingBackward>(s));
  }
  for (const RowsShape& s :
       {RowsShape{3, 8, 4, 5, 1}, RowsShape{3, 11, 4, 40, 1}, RowsShape{4, 20, 6, 33, 2}, RowsShape{3, 20, 9, 33, 2}}) {
    cases.push_back(std::make_unique<Rows>(s, false));
    cases.push_back(std::make_unique<Rows>(s, true));
  }
}

}  // namespace electra::test::parity
