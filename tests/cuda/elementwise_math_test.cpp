// The CUDA kernels' per-element arithmetic (lib/backend/cuda/elementwise_math.h) and the embedding
// gradient's segment passes (segment_sum.h), run on the CPU against the CPU backend. Needs no GPU: these
// are the same functions the kernels call, so a wrong formula, Philox key or segment rule fails here.
#include "lib/backend/cuda/elementwise_math.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <numeric>

#include "lib/backend/backend.h"
#include "lib/backend/cpu/vmath.h"
#include "lib/backend/cuda/scatter_rows_math.h"
#include "lib/backend/cuda/segment_sum.h"
#include "tests/backend/test_util.h"

namespace electra::test {
namespace {

namespace m = electra::cuda::math;

template <typename T>
bool same_bits(T a, T b) {
  return std::memcmp(&a, &b, sizeof(T)) == 0;
}

// Same expressions as vmath.h, compiled in the same unit: bitwise equal (no fused multiply-adds in the
// baseline x86-64 code of this test).
TEST(CudaMath, FloatApproximationsAreVmathsBitForBit) {
  namespace v = electra::cpu::vmath;
  size_t checked = 0;
  for (int i = 0; i <= 400000; ++i) {
    const float x = static_cast<float>(-95.0 + 190.0 * i / 400000.0);
    ASSERT_TRUE(same_bits(m::exp_f(x), v::exp_f(x))) << "exp_f(" << x << ")";
    ASSERT_TRUE(same_bits(m::erfc_f(x), v::erfc_f(x))) << "erfc_f(" << x << ")";
    ASSERT_TRUE(same_bits(m::gelu_f(x), v::gelu_f(x))) << "gelu_f(" << x << ")";
    ASSERT_TRUE(same_bits(m::gelu_grad_f(x), v::gelu_grad_f(x))) << "gelu_grad_f(" << x << ")";
    ASSERT_TRUE(same_bits(m::tanh_f(x), v::tanh_f(x))) << "tanh_f(" << x << ")";
    ++checked;
  }
  PhiloxSequence rng(3, RandomPurpose::kTest, 0, 0);
  for (int i = 0; i < 200000; ++i) {
    const double u = rng.next_uniform_open();
    const double x = i % 2 == 0 ? u : std::exp(-700.0 + 1400.0 * u);
    ASSERT_TRUE(same_bits(m::log_d(x), v::log_d(x))) << "log_d(" << x << ")";
  }
  EXPECT_EQ(checked, 400001u);
}

TEST(CudaMath, ActivationsMatchCpuBackend) {
  auto cpu = make_cpu_backend<float>();
  const size_t n = 200001;
  std::vector<float> x(n), dy = cast<float>(random_values(n, 2));
  for (size_t i = 0; i < n; ++i) x[i] = static_cast<float>(-12.0 + 24.0 * static_cast<double>(i) / (n - 1));
  for (Activation act : {Activation::kNone, Activation::kGelu, Activation::kRelu, Activation::kTanh}) {
    std::vector<float> y(n), dx(n);
    cpu->activation_forward(act, y.data(), x.data(), n);
    cpu->activation_backward(act, dx.data(), dy.data(), x.data(), n);
    std::vector<double> want_y(n), want_dx(n);
    std::vector<float> got_y(n), got_dx(n);
    for (size_t i = 0; i < n; ++i) {
      got_y[i] = m::activation(act, x[i]);
      got_dx[i] = m::activation_backward(act, dy[i], x[i]);
      want_y[i] = y[i];
      want_dx[i] = dx[i];
    }
    // The CPU backend may run fused multiply-adds (AVX2/AVX-512 clones): a few ulps apart, no more.
    EXPECT_TRUE(all_near(got_y, want_y, 1e-6, 1e-7)) << to_string(act);
    EXPECT_TRUE(all_near(got_dx, want_dx, 1e-6, 1e-7)) << to_string(act);
  }
}

// The keep bits of the dropout kernel (groups of four elements) and of the attention kernel (groups of
// four keys of a query row) against the CPU backend's masks.
TEST(CudaMath, DropoutKeepBitsMatchCpuBackend) {
  auto cpu = make_cpu_backend<float>();
  const size_t n = 10007;
  const std::vector<float> x(n, 1.0f);
  for (uint64_t per : {1ull, 3ull, 4ull, 1001ull, 4096ull, 20000ull}) {
    for (float p : {0.1f, 0.5f}) {
      const DropoutKey key{.seed = 77, .step = 3, .lane = 5, .first_example = 11, .elements_per_example = per};
      std::vector<float> y(n);
      std::vector<uint8_t> want(n), got(n);
      cpu->dropout_forward(y.data(), want.data(), x.data(), n, p, key);
      for (size_t i0 = 0; i0 < n; i0 += 4) {
        m::dropout_keep_group(got.data() + i0, key, i0, static_cast<int>(std::min<size_t>(4, n - i0)), p);
      }
      ASSERT_EQ(got, want) << "elements_per_example " << per << " p " << p;
    }
  }
  // Attention: rows of S keys (S not a multiple of 4), groups starting at 4 * lane of each row.
  const int B = 2, H = 3, S = 13, D = 4;
  const auto qkv = cast<float>(random_values(static_cast<size_t>(B) * S * 3 * H * D, 3));
  const DropoutKey key{.seed = 5, .step = 2, .lane = 9, .first_example = 40, .elements_per_example = H * S * S};
  std::vector<float> ctx(B * S * H * D), probs(B * H * S * S);
  std::vector<uint8_t> want(probs.size()), got(probs.size());
  cpu->attention_forward(ctx.data(), probs.data(), want.data(), qkv.data(), nullptr, B, S, H, D, 0.2f, key);
  for (int row = 0; row < B * H * S; ++row) {
    const size_t base = static_cast<size_t>(row) * S;
    for (int j0 = 0; j0 < S; j0 += 4)
      m::dropout_keep_group(got.data() + base + j0, key, base + j0, std::min(4, S - j0), 0.2f);
  }
  EXPECT_EQ(got, want);
}

// The sampling kernel's scores and its (score, smallest index) reduction give the CPU backend's samples.
TEST(CudaMath, GumbelSamplesMatchCpuBackend) {
  auto cpu = make_cpu_backend<float>();
  for (int V : {777, 30522}) {
    const int rows = 24, per = 4;
    const auto logits = cast<float>(random_values(static_cast<size_t>(rows) * V, 4, -3.0, 3.0));
    const auto disallow = random_ints(rows, 5, 0, V);
    for (float t : {1.0f, 0.7f}) {
      for (bool with_disallow : {false, true}) {
        std::vector<int32_t> want(rows);
        cpu->gumbel_sample(want.data(), logits.data(), with_disallow ? disallow.data() : nullptr, rows, V, t, 21, 6, 9,
                           per);
        for (int r = 0; r < rows; ++r) {
          const PhiloxStream stream(21, RandomPurpose::kSampling, 6, 9 + r / per);
          const uint64_t base = static_cast<uint64_t>(r % per) * V;
          m::ArgmaxPair best{-INFINITY, m::ArgmaxPair::kNoIndex};
          for (int v = 0; v < V; ++v) {
            const bool banned = with_disallow && v == disallow[r];
            const double score = m::gumbel_score(stream, base + v, logits[static_cast<size_t>(r) * V + v], banned, t);
            best = m::argmax_combine(best, m::ArgmaxPair{score, v});
            if (v < 3) {
              // The noise itself is PhiloxStream::gumbel's, to a few ulps (libm log vs fdlibm's).
              const double z = static_cast<double>(logits[static_cast<size_t>(r) * V + v]) - (banned ? 1000.0 : 0.0);
              const double expected = (t == 1.0f ? z : z / t) + stream.gumbel(base + v);
              ASSERT_NEAR(score, expected, 1e-14 * std::max(1.0, std::abs(expected)));
            }
          }
          ASSERT_EQ(best.index == m::ArgmaxPair::kNoIndex ? 0 : best.index, want[r])
              << "V " << V << " row " << r << " t " << t << " disallow " << with_disallow;
        }
      }
    }
  }
  // Ties go to the smallest index, NaN never wins, nothing above -inf gives the CPU's 0.
  EXPECT_EQ(m::argmax_combine({1.0, 7}, {1.0, 3}).index, 3);
  EXPECT_EQ(m::argmax_combine({1.0, 3}, {1.0, 7}).index, 3);
  EXPECT_EQ(m::argmax_combine({1.0, 3}, {NAN, 1}).index, 3);
  EXPECT_EQ(m::argmax_combine({-INFINITY, m::ArgmaxPair::kNoIndex}, {2.0, 9}).index, 9);
}

TEST(CudaMath, SigmoidCrossEntropyMatchesCpuBackend) {
  auto cpu = make_cpu_backend<float>();
  const size_t n = 1001;
  const auto logit = cast<float>(random_values(n, 6, -30.0, 30.0));
  const auto label = random_ints(n, 7, 0, 2);
  const auto scale = cast<float>(random_values(n, 8, 0.0, 2.0));
  std::vector<float> loss(n), dlogit(n);
  cpu->sigmoid_cross_entropy(loss.data(), dlogit.data(), logit.data(), label.data(), scale.data(), n);
  std::vector<float> got_loss(n), got_d(n);
  for (size_t i = 0; i < n; ++i) {
    m::sigmoid_cross_entropy(logit[i], static_cast<float>(label[i]), scale[i], &got_loss[i], &got_d[i]);
  }
  EXPECT_TRUE(all_near(got_loss, to_double(loss), 1e-6, 1e-7));
  EXPECT_TRUE(all_near(got_d, to_double(dlogit), 1e-6, 1e-7));
}

TEST(CudaMath, AdamwMatchesCpuBackend) {
  auto cpu = make_cpu_backend<float>();
  const size_t n = 5000;
  for (bool bias_correction : {true, false}) {
    auto params = cast<float>(random_values(n, 9)), m_cpu = std::vector<float>(n, 0.0f), v_cpu = m_cpu;
    auto p_got = params, m_got = m_cpu, v_got = v_cpu;
    for (long long t = 1; t <= 3; ++t) {
      const auto grads = cast<float>(random_values(n, 10 + t, -2.0, 2.0));
      cpu->adamw_step(params.data(), grads.data(), m_cpu.data(), v_cpu.data(), n, 1e-3f, 0.9f, 0.999f, 1e-6f, 0.01f, t,
                      0.5f, bias_correction);
      const m::AdamParams a = m::adam_params(1e-3f, 0.9f, 0.999f, 1e-6f, 0.01f, t, 0.5f, bias_correction);
      for (size_t i = 0; i < n; ++i) m::adamw_update(p_got[i], grads[i], m_got[i], v_got[i], a);
    }
    EXPECT_TRUE(all_near(p_got, to_double(params), 1e-6, 1e-9)) << "bias_correction " << bias_correction;
    // m cancels (b1 m + (1 - b1) g with g of either sign): an absolute term at the scale of |m|.
    EXPECT_TRUE(all_near(m_got, to_double(m_cpu), 1e-6, 1e-6 * max_abs(to_double(m_cpu))));
    EXPECT_TRUE(all_near(v_got, to_double(v_cpu), 1e-6, 1e-12));
  }
}

// table[keys[t]] += rows[t] through embedding_backward's segment passes, run exactly as the kernels run
// them (the stable sort on the host, then every (chunk, column) of pass 1, then of pass 2). Returns
// whether a negative key was met.
template <typename Row>
bool segment_scatter_add(std::vector<float>& table, const std::vector<Row>& rows, const std::vector<int32_t>& keys,
                         int E) {
  namespace seg = electra::cuda::segments;
  const int tokens = static_cast<int>(keys.size());
  std::vector<int32_t> perm(tokens);
  std::iota(perm.begin(), perm.end(), 0);
  std::stable_sort(perm.begin(), perm.end(), [&](int a, int b) { return keys[a] < keys[b]; });
  std::vector<int32_t> sorted(tokens);
  for (int k = 0; k < tokens; ++k) sorted[k] = keys[perm[k]];
  const int chunks = seg::chunk_count(tokens);
  std::vector<float> head(static_cast<size_t>(chunks) * E, NAN), tail(head);
  bool negative = false;
  for (int q = 0; q < chunks; ++q) {
    for (int c = 0; c < E; ++c) {
      negative |= seg::chunk_pass(table.data(), head.data(), tail.data(), rows.data(), sorted.data(), perm.data(),
                                  tokens, E, q, c);
    }
  }
  for (int q = 0; q < chunks; ++q) {
    for (int c = 0; c < E; ++c) seg::cross_pass(table.data(), head.data(), tail.data(), sorted.data(), tokens, E, q, c);
  }
  return negative;
}

// embedding_backward's segment passes against the CPU backend's scatter-add.
TEST(CudaMath, SegmentSumsMatchCpuEmbeddingBackward) {
  namespace seg = electra::cuda::segments;
  auto cpu = make_cpu_backend<float>();
  const int B = 8, S = 40, E = 5, V = 12, tokens = B * S;
  // Long runs of a few ids (crossing many chunks) and short ones.
  auto ids = random_ints(tokens, 11, 0, V);
  const auto coin = random_ints(tokens, 12, 0, 10);
  for (int t = 0; t < tokens; ++t) {
    if (coin[t] < 5) ids[t] = 3;
    if (coin[t] == 5) ids[t] = 7;
  }
  const auto type_ids = random_ints(tokens, 13, 0, 2);
  const auto dout = cast<float>(random_values(static_cast<size_t>(tokens) * E, 14));
  const auto word0 = cast<float>(random_values(static_cast<size_t>(V) * E, 15));
  const auto pos0 = cast<float>(random_values(static_cast<size_t>(S) * E, 16));
  const auto type0 = cast<float>(random_values(2 * E, 17));
  auto word = word0, pos = pos0, type = type0;
  cpu->embedding_backward(word.data(), pos.data(), type.data(), dout.data(), ids.data(), type_ids.data(), nullptr, B, S,
                          E);

  auto segment_add = [&](std::vector<float>& table, const std::vector<int32_t>& keys) {
    return segment_scatter_add(table, dout, keys, E);
  };
  // Bound: both sides sum at most `tokens` + 1 terms: |error| <= 2 (n + 1) 2^-24 sum |terms|.
  auto expect_close = [&](const std::vector<float>& got, const std::vector<float>& want, const std::vector<float>& init,
                          const std::vector<int32_t>& keys, const char* what) {
    std::vector<double> abs_sum(init.size());
    for (size_t i = 0; i < init.size(); ++i) abs_sum[i] = std::abs(init[i]);
    for (int t = 0; t < tokens; ++t) {
      for (int c = 0; c < E; ++c)
        abs_sum[static_cast<size_t>(keys[t]) * E + c] += std::abs(dout[static_cast<size_t>(t) * E + c]);
    }
    for (size_t i = 0; i < got.size(); ++i) {
      const double bound = 2.0 * (tokens + 1) * std::ldexp(1.0, -24) * abs_sum[i];
      ASSERT_LE(std::abs(static_cast<double>(got[i]) - want[i]), bound) << what << " element " << i;
    }
  };
  auto got_word = word0;
  EXPECT_FALSE(segment_add(got_word, ids));
  expect_close(got_word, word, word0, ids, "word table");
  // Rows whose tokens all fall inside one chunk of the sorted order are summed in the CPU's order:
  // bitwise equal. Sorted positions of key k are [first[k], first[k] + count[k]).
  int single_chunk_rows = 0;
  for (int k = 0, first = 0; k < V; ++k) {
    const int count = static_cast<int>(std::count(ids.begin(), ids.end(), k));
    if (count > 0 && first / seg::kChunk == (first + count - 1) / seg::kChunk) {
      ++single_chunk_rows;
      EXPECT_EQ(std::memcmp(got_word.data() + k * E, word.data() + k * E, E * sizeof(float)), 0) << "row " << k;
    }
    first += count;
  }
  EXPECT_GT(single_chunk_rows, 3);
  auto got_type = type0;
  EXPECT_FALSE(segment_add(got_type, type_ids));
  expect_close(got_type, type, type0, type_ids, "type table");
  // Without type ids every token is type 0: one run over all chunks.
  auto type_zero = type0, want_zero = type0;
  cpu->embedding_backward(nullptr, nullptr, want_zero.data(), dout.data(), ids.data(), nullptr, nullptr, B, S, E);
  const std::vector<int32_t> zeros(tokens, 0);
  EXPECT_FALSE(segment_add(type_zero, zeros));
  expect_close(type_zero, want_zero, type0, zeros, "type table without type ids");
  // Positions: the CPU's order exactly.
  auto got_pos = pos0;
  for (int s = 0; s < S; ++s) {
    for (int c = 0; c < E; ++c) seg::position_sum(got_pos.data(), dout.data(), B, S, E, s, c);
  }
  EXPECT_EQ(std::memcmp(got_pos.data(), pos.data(), pos.size() * sizeof(float)), 0);
  // A negative key is reported.
  auto bad = ids;
  bad[17] = -2;
  auto scratch = word0;
  EXPECT_TRUE(segment_add(scratch, bad));
}

// The same passes on bf16 rows (the CUDA bf16 backend's dout; fp32 tables) against the CPU bf16
// reference's embedding_backward: rows of one chunk and the position table bitwise, the rest within the
// fp32 summation bound.
TEST(CudaMath, SegmentSumsOfBf16RowsMatchCpuBf16EmbeddingBackward) {
  namespace seg = electra::cuda::segments;
  auto cpu_float = make_cpu_backend<float>();
  auto cpu = make_cpu_bf16_backend(*cpu_float);
  const int B = 6, S = 40, E = 4, V = 9, tokens = B * S;
  auto ids = random_ints(tokens, 21, 0, V);
  const auto coin = random_ints(tokens, 22, 0, 10);
  for (int t = 0; t < tokens; ++t) {
    if (coin[t] < 5) ids[t] = 2;  // one long run crossing many chunks
  }
  const auto wide_dout = random_values(static_cast<size_t>(tokens) * E, 23);
  std::vector<bfloat16> dout(wide_dout.size());
  for (size_t i = 0; i < dout.size(); ++i) dout[i] = bfloat16(static_cast<float>(wide_dout[i]));
  const auto word0 = cast<float>(random_values(static_cast<size_t>(V) * E, 24));
  const auto pos0 = cast<float>(random_values(static_cast<size_t>(S) * E, 25));
  auto word = word0, pos = pos0;
  cpu->embedding_backward(word.data(), pos.data(), nullptr, dout.data(), ids.data(), nullptr, nullptr, B, S, E);

  std::vector<int32_t> perm(tokens);
  std::iota(perm.begin(), perm.end(), 0);
  std::stable_sort(perm.begin(), perm.end(), [&](int a, int b) { return ids[a] < ids[b]; });
  std::vector<int32_t> sorted(tokens);
  for (int k = 0; k < tokens; ++k) sorted[k] = ids[perm[k]];
  const int chunks = seg::chunk_count(tokens);
  std::vector<float> head(static_cast<size_t>(chunks) * E, NAN), tail(head);
  auto got = word0;
  for (int q = 0; q < chunks; ++q) {
    for (int c = 0; c < E; ++c) {
      EXPECT_FALSE(seg::chunk_pass(got.data(), head.data(), tail.data(), dout.data(), sorted.data(), perm.data(),
                                   tokens, E, q, c));
    }
  }
  for (int q = 0; q < chunks; ++q) {
    for (int c = 0; c < E; ++c) seg::cross_pass(got.data(), head.data(), tail.data(), sorted.data(), tokens, E, q, c);
  }
  std::vector<double> abs_sum(word0.size());
  for (size_t i = 0; i < word0.size(); ++i) abs_sum[i] = std::abs(word0[i]);
  for (int t = 0; t < tokens; ++t) {
    for (int c = 0; c < E; ++c) {
      abs_sum[static_cast<size_t>(ids[t]) * E + c] +=
          std::abs(static_cast<float>(dout[static_cast<size_t>(t) * E + c]));
    }
  }
  int single_chunk_rows = 0;
  for (int k = 0, first = 0; k < V; ++k) {
    const int count = static_cast<int>(std::count(ids.begin(), ids.end(), k));
    const bool one_chunk = count > 0 && first / seg::kChunk == (first + count - 1) / seg::kChunk;
    single_chunk_rows += one_chunk ? 1 : 0;
    for (int c = 0; c < E; ++c) {
      const size_t i = static_cast<size_t>(k) * E + c;
      if (one_chunk) {
        EXPECT_EQ(std::memcmp(&got[i], &word[i], sizeof(float)), 0) << "row " << k;
      } else {
        EXPECT_LE(std::abs(static_cast<double>(got[i]) - word[i]),
                  2.0 * (tokens + 1) * std::ldexp(1.0, -24) * abs_sum[i])
            << "row " << k;
      }
    }
    first += count;
  }
  EXPECT_GT(single_chunk_rows, 2);
  EXPECT_GT(std::count(ids.begin(), ids.end(), 2), 2 * seg::kChunk);  // the crossing run is there
  auto got_pos = pos0;
  for (int s = 0; s < S; ++s) {
    for (int c = 0; c < E; ++c) seg::position_sum(got_pos.data(), dout.data(), B, S, E, s, c);
  }
  EXPECT_EQ(std::memcmp(got_pos.data(), pos.data(), pos.size() * sizeof(float)), 0);
}

// Packed rows (position ids restarting per example): the position table's gradient is the same sorted
// scatter-add keyed by position id, on float and on bf16 rows, against the CPU references. Positions
// whose tokens fall inside one chunk of the sorted order are bitwise the CPU's (token order); the rest
// within the fp32 summation bound. Position ids equal to s give the unpacked sums to that bound too.
TEST(CudaMath, SegmentSumsOfPackedPositionIdsMatchCpuEmbeddingBackward) {
  namespace seg = electra::cuda::segments;
  auto cpu_float = make_cpu_backend<float>();
  auto cpu_bf16 = make_cpu_bf16_backend(*cpu_float);
  const int B = 7, S = 40, E = 5, tokens = B * S;
  const PackedRows packed = packed_rows(B, S);
  const auto& position_ids = packed.position_ids;
  const auto ids = random_ints(tokens, 41, 0, 30);
  const auto wide_dout = random_values(static_cast<size_t>(tokens) * E, 42);
  const auto pos0 = cast<float>(random_values(static_cast<size_t>(S) * E, 43));
  std::vector<bfloat16> bf16_dout(wide_dout.size());
  for (size_t i = 0; i < wide_dout.size(); ++i) bf16_dout[i] = bfloat16(static_cast<float>(wide_dout[i]));
  const auto float_dout = cast<float>(wide_dout);
  // Position p's sorted positions are [first[p], first[p] + count[p]).
  auto check = [&](const std::vector<float>& got, const std::vector<float>& want, const std::vector<double>& abs_sum,
                   const std::vector<int32_t>& keys, const char* what) {
    int single_chunk_rows = 0;
    for (int p = 0, first = 0; p < S; ++p) {
      const int count = static_cast<int>(std::count(keys.begin(), keys.end(), p));
      const bool one_chunk = count > 0 && first / seg::kChunk == (first + count - 1) / seg::kChunk;
      single_chunk_rows += one_chunk ? 1 : 0;
      for (int c = 0; c < E; ++c) {
        const size_t i = static_cast<size_t>(p) * E + c;
        if (one_chunk) {
          EXPECT_EQ(std::memcmp(&got[i], &want[i], sizeof(float)), 0) << what << " position " << p;
        } else {
          EXPECT_LE(std::abs(static_cast<double>(got[i]) - want[i]),
                    2.0 * (tokens + 1) * std::ldexp(1.0, -24) * abs_sum[i])
              << what << " position " << p;
        }
      }
      first += count;
    }
    EXPECT_GT(single_chunk_rows, 3) << what;
  };
  auto abs_sums = [&](const std::vector<int32_t>& keys) {
    std::vector<double> abs_sum(pos0.size());
    for (size_t i = 0; i < pos0.size(); ++i) abs_sum[i] = std::abs(pos0[i]);
    for (int t = 0; t < tokens; ++t) {
      for (int c = 0; c < E; ++c) {
        abs_sum[static_cast<size_t>(keys[t]) * E + c] += std::abs(float_dout[static_cast<size_t>(t) * E + c]);
      }
    }
    return abs_sum;
  };
  // Position 0 starts every example (and pads): its run crosses chunks.
  EXPECT_GT(std::count(position_ids.begin(), position_ids.end(), 0), seg::kChunk);
  const std::vector<double> packed_abs = abs_sums(position_ids);

  auto want = pos0, got = pos0;
  cpu_float->embedding_backward(nullptr, want.data(), nullptr, float_dout.data(), ids.data(), nullptr,
                                position_ids.data(), B, S, E);
  EXPECT_FALSE(segment_scatter_add(got, float_dout, position_ids, E));
  check(got, want, packed_abs, position_ids, "float rows");

  auto want_bf16 = pos0, got_bf16 = pos0;
  cpu_bf16->embedding_backward(nullptr, want_bf16.data(), nullptr, bf16_dout.data(), ids.data(), nullptr,
                               position_ids.data(), B, S, E);
  EXPECT_FALSE(segment_scatter_add(got_bf16, bf16_dout, position_ids, E));
  check(got_bf16, want_bf16, packed_abs, position_ids, "bf16 rows");

  // Position ids s (one example per row): the plain position sum's values, to the summation bound.
  std::vector<int32_t> plain(tokens);
  for (int t = 0; t < tokens; ++t) plain[t] = t % S;
  auto want_plain = pos0, got_plain = pos0;
  cpu_float->embedding_backward(nullptr, want_plain.data(), nullptr, float_dout.data(), ids.data(), nullptr, nullptr, B,
                                S, E);
  EXPECT_FALSE(segment_scatter_add(got_plain, float_dout, plain, E));
  check(got_plain, want_plain, abs_sums(plain), plain, "position ids s");
}

// scatter_add_rows' per-thread function of the bf16 kernel, on bf16 rows, against the CPU bf16
// reference (one rounding per destination row: bitwise), and on float rows against the CPU float op.
TEST(CudaMath, ScatterAddColumnMatchesCpuReferences) {
  namespace rows = electra::cuda::rows;
  auto cpu_float = make_cpu_backend<float>();
  auto cpu = make_cpu_bf16_backend(*cpu_float);
  const int B = 3, S = 12, P = 7, C = 5;
  auto positions = random_ints(B * P, 31, 0, S);
  positions[1] = positions[0];  // duplicates, also not adjacent
  positions[4] = positions[0];
  positions[P + 2] = positions[P + 6];
  const auto wide_dx = random_values(static_cast<size_t>(B) * S * C, 32);
  const auto wide_dout = random_values(static_cast<size_t>(B) * P * C, 33, -1e-2, 1e-2);  // small: roundings matter
  std::vector<bfloat16> dx(wide_dx.size()), dout(wide_dout.size());
  for (size_t i = 0; i < dx.size(); ++i) dx[i] = bfloat16(static_cast<float>(wide_dx[i]));
  for (size_t i = 0; i < dout.size(); ++i) dout[i] = bfloat16(static_cast<float>(wide_dout[i]));
  auto want = dx;
  cpu->scatter_add_rows(want.data(), dout.data(), positions.data(), B, S, P, C);
  auto got = dx;
  for (int b = 0; b < B; ++b) {
    for (int c = 0; c < C; ++c) {
      EXPECT_FALSE(rows::scatter_add_column(got.data(), dout.data(), positions.data(), S, P, C, b, c));
    }
  }
  EXPECT_EQ(std::memcmp(got.data(), want.data(), got.size() * sizeof(bfloat16)), 0);
  // Rounding after every prediction would differ for the duplicated rows: the test can tell.
  auto stepwise = dx;
  for (int b = 0; b < B; ++b) {
    for (int p = 0; p < P; ++p) {
      for (int c = 0; c < C; ++c) {
        bfloat16& target = stepwise[(static_cast<size_t>(b) * S + positions[b * P + p]) * C + c];
        target =
            bfloat16(static_cast<float>(target) + static_cast<float>(dout[(static_cast<size_t>(b) * P + p) * C + c]));
      }
    }
  }
  EXPECT_NE(std::memcmp(stepwise.data(), want.data(), want.size() * sizeof(bfloat16)), 0);
  // float rows: the CPU float op exactly.
  const auto fdx = cast<float>(wide_dx), fdout = cast<float>(wide_dout);
  auto fwant = fdx, fgot = fdx;
  cpu_float->scatter_add_rows(fwant.data(), fdout.data(), positions.data(), B, S, P, C);
  for (int b = 0; b < B; ++b) {
    for (int c = 0; c < C; ++c) rows::scatter_add_column(fgot.data(), fdout.data(), positions.data(), S, P, C, b, c);
  }
  EXPECT_EQ(std::memcmp(fgot.data(), fwant.data(), fgot.size() * sizeof(float)), 0);
  // A position outside [0, S) is skipped and reported.
  auto bad = positions;
  bad[3] = S;
  auto scratch = dx;
  EXPECT_TRUE(rows::scatter_add_column(scratch.data(), dout.data(), bad.data(), S, P, C, 0, 0));
}

}  // namespace
}  // namespace electra::test
