// Randomness and determinism: dropout and Gumbel sampling statistics, independence from how a batch is
// split into calls, and bitwise-identical results for 1, 2 and 3 OpenMP threads (and 1 or 2 OpenBLAS
// threads).
#include <cblas.h>
#include <gtest/gtest.h>
#include <omp.h>

#include <algorithm>
#include <cstring>
#include <limits>

#include "lib/backend/backend.h"
#include "lib/backend/cpu/philox_simd.h"
#include "lib/core/philox.h"
#include "tests/backend/test_util.h"

namespace electra::test {
namespace {

template <typename T>
bool bitwise_equal(const std::vector<T>& a, const std::vector<T>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(T)) == 0;
}

// Restores the thread counts a test changed.
class ThreadCounts {
 public:
  ThreadCounts() : omp_(omp_get_max_threads()), blas_(openblas_get_num_threads()) {}
  ~ThreadCounts() {
    omp_set_num_threads(omp_);
    openblas_set_num_threads(blas_);
  }
  void set(int omp, int blas) {
    omp_set_num_threads(omp);
    openblas_set_num_threads(blas);
  }

 private:
  int omp_, blas_;
};

TEST(BackendDropout, KeepFractionIsOneMinusP) {
  auto be = make_cpu_backend<float>();
  const size_t n = 1 << 20;
  std::vector<float> x(n, 1.0f), y(n);
  std::vector<uint8_t> keep(n);
  for (float p : {0.1f, 0.5f}) {
    const DropoutKey key{.seed = 11, .step = 4, .lane = 1, .first_example = 0, .elements_per_example = 4096};
    be->dropout_forward(y.data(), keep.data(), x.data(), n, p, key);
    size_t kept = 0;
    for (uint8_t k : keep) kept += k;
    const double frac = static_cast<double>(kept) / n, sigma = std::sqrt(p * (1.0 - p) / n);
    EXPECT_NEAR(frac, 1.0 - p, 5 * sigma) << "p=" << p;
    // Kept elements are scaled so the expectation is unchanged.
    for (size_t i = 0; i < n; i += 9973) EXPECT_FLOAT_EQ(y[i], keep[i] ? 1.0f / (1.0f - p) : 0.0f);
  }
}

TEST(BackendDropout, DifferentLanesStepsAndExamplesGiveDifferentMasks) {
  auto be = make_cpu_backend<float>();
  const size_t n = 4096;
  std::vector<float> x(n, 1.0f), y(n);
  auto mask = [&](DropoutKey key) {
    std::vector<uint8_t> keep(n);
    be->dropout_forward(y.data(), keep.data(), x.data(), n, 0.5f, key);
    return keep;
  };
  const DropoutKey base{.seed = 1, .step = 1, .lane = 1, .first_example = 0, .elements_per_example = n};
  const auto m0 = mask(base);
  DropoutKey k = base;
  k.lane = 2;
  EXPECT_NE(mask(k), m0);
  k = base;
  k.step = 2;
  EXPECT_NE(mask(k), m0);
  k = base;
  k.first_example = 1;
  EXPECT_NE(mask(k), m0);
  k = base;
  k.seed = 2;
  EXPECT_NE(mask(k), m0);
  EXPECT_EQ(mask(base), m0);
}

TEST(BackendDropout, ZeroProbabilityIsIdentity) {
  auto be = make_cpu_backend<double>();
  const auto x = random_values(1000, 1);
  std::vector<double> y(1000), dx(1000);
  std::vector<uint8_t> keep(1000, 0);
  be->dropout_forward(y.data(), keep.data(), x.data(), x.size(), 0.0f, DropoutKey{});
  EXPECT_TRUE(bitwise_equal(y, x));
  for (uint8_t k : keep) ASSERT_EQ(k, 1);
  be->dropout_backward(dx.data(), x.data(), keep.data(), x.size(), 0.0f);
  EXPECT_TRUE(bitwise_equal(dx, x));
}

TEST(BackendDropout, SplitIndependence) {
  auto be = make_cpu_backend<float>();
  const size_t per = 1000, examples = 37, n = per * examples;
  const auto x = cast<float>(random_values(n, 1));
  const DropoutKey whole{.seed = 21, .step = 9, .lane = 4, .first_example = 100, .elements_per_example = per};
  std::vector<float> y(n), y_split(n);
  std::vector<uint8_t> keep(n), keep_split(n);
  be->dropout_forward(y.data(), keep.data(), x.data(), n, 0.1f, whole);
  // Examples [0, 13) in one call, [13, 37) in another with first_example shifted.
  const size_t k = 13;
  DropoutKey head = whole, tail = whole;
  tail.first_example = whole.first_example + k;
  be->dropout_forward(y_split.data(), keep_split.data(), x.data(), k * per, 0.1f, head);
  be->dropout_forward(y_split.data() + k * per, keep_split.data() + k * per, x.data() + k * per, n - k * per, 0.1f,
                      tail);
  EXPECT_TRUE(bitwise_equal(keep, keep_split));
  EXPECT_TRUE(bitwise_equal(y, y_split));
}

TEST(BackendAttention, DropoutSplitIndependence) {
  auto be = make_cpu_backend<float>();
  const int B = 5, S = 16, H = 2, D = 8, k = 2;
  const auto qkv = cast<float>(random_values(B * S * 3 * H * D, 1));
  std::vector<int32_t> mask(B * S, 1);
  for (int s = 10; s < S; ++s) mask[3 * S + s] = 0;
  const DropoutKey key{.seed = 2, .step = 5, .lane = 7, .first_example = 64, .elements_per_example = H * S * S};
  std::vector<float> ctx(B * S * H * D), probs(B * H * S * S), ctx_s(ctx.size()), probs_s(probs.size());
  std::vector<uint8_t> keep(probs.size()), keep_s(probs.size());
  be->attention_forward(ctx.data(), probs.data(), keep.data(), qkv.data(), mask.data(), B, S, H, D, 0.1f, key);
  DropoutKey tail = key;
  tail.first_example += k;
  be->attention_forward(ctx_s.data(), probs_s.data(), keep_s.data(), qkv.data(), mask.data(), k, S, H, D, 0.1f, key);
  const size_t c_off = static_cast<size_t>(k) * S * H * D, p_off = static_cast<size_t>(k) * H * S * S;
  be->attention_forward(ctx_s.data() + c_off, probs_s.data() + p_off, keep_s.data() + p_off,
                        qkv.data() + static_cast<size_t>(k) * S * 3 * H * D, mask.data() + k * S, B - k, S, H, D, 0.1f,
                        tail);
  EXPECT_TRUE(bitwise_equal(keep, keep_s));
  EXPECT_TRUE(bitwise_equal(probs, probs_s));
  EXPECT_TRUE(bitwise_equal(ctx, ctx_s));
}

// Empirical frequencies of Gumbel-max samples against softmax(logits / t): every row has the same
// logits, and many rows share an example (rows_per_example), so each draw uses its own offsets.
TEST(BackendGumbelSample, FrequenciesMatchSoftmax) {
  auto be = make_cpu_backend<float>();
  const int V = 5, rows = 40000, per = 8;
  const std::vector<double> base = {1.0, -0.5, 0.3, 2.0, 0.0};
  for (float t : {1.0f, 0.6f}) {
    for (bool with_disallow : {false, true}) {
      std::vector<float> logits(static_cast<size_t>(rows) * V);
      for (int r = 0; r < rows; ++r) {
        for (int v = 0; v < V; ++v) logits[r * V + v] = static_cast<float>(base[v]);
      }
      std::vector<int32_t> disallow(rows, 3), samples(rows);
      be->gumbel_sample(samples.data(), logits.data(), with_disallow ? disallow.data() : nullptr, rows, V, t, 99, 3,
                        500, per);
      std::vector<double> expected(V);
      double z = 0;
      for (int v = 0; v < V; ++v) {
        expected[v] = (with_disallow && v == 3) ? 0.0 : std::exp(static_cast<float>(base[v]) / t);
        z += expected[v];
      }
      std::vector<int> counts(V, 0);
      for (int s : samples) {
        ASSERT_GE(s, 0);
        ASSERT_LT(s, V);
        ++counts[s];
      }
      double chi2 = 0;
      for (int v = 0; v < V; ++v) {
        const double e = rows * expected[v] / z;
        if (e == 0) {
          EXPECT_EQ(counts[v], 0) << "disallowed token drawn";
          continue;
        }
        chi2 += (counts[v] - e) * (counts[v] - e) / e;
      }
      // 4 (or 3) degrees of freedom: P(chi2 > 25) < 1e-4.
      EXPECT_LT(chi2, 25.0) << "t=" << t << " disallow=" << with_disallow;
    }
  }
}

TEST(BackendGumbelSample, DisallowedTokenNeverDrawnEvenWhenItDominates) {
  auto be = make_cpu_backend<float>();
  const int V = 50, rows = 2000;
  std::vector<float> logits(rows * V, 0.0f);
  std::vector<int32_t> disallow(rows), samples(rows);
  for (int r = 0; r < rows; ++r) {
    disallow[r] = r % V;
    logits[r * V + disallow[r]] = 30.0f;  // would win nearly always
  }
  be->gumbel_sample(samples.data(), logits.data(), disallow.data(), rows, V, 1.0f, 4, 4, 0, 1);
  for (int r = 0; r < rows; ++r) ASSERT_NE(samples[r], disallow[r]) << "row " << r;
}

// gumbel_sample_rows skips chunks of tokens that cannot win; the samples stay those of scoring every token
// (backend.h's definition, here in double with libm), also on rows with infinite or NaN logits, huge ones,
// one dominant token, and with the disallowed token the largest.
TEST(BackendGumbelSample, SkippingChunksKeepsTheSamplesOfScoringEveryToken) {
  auto be = make_cpu_backend<float>();
  const int V = 1000, per = 2;
  const float inf = std::numeric_limits<float>::infinity(), nan = std::numeric_limits<float>::quiet_NaN();
  std::vector<std::vector<float>> rows;
  rows.push_back(std::vector<float>(V, 0.0f));                   // flat
  rows.push_back(cast<float>(random_values(V, 11, -5.0, 5.0)));  // spread
  rows.push_back(cast<float>(random_values(V, 12, -5.0, 5.0)));  // one token far above the rest
  rows.back()[517] = 45.0f;
  rows.push_back(std::vector<float>(V, -inf));  // nothing finite: token 0
  rows.push_back(std::vector<float>(V, -inf));  // a few finite tokens
  for (int v : {3, 400, 999}) rows.back()[v] = static_cast<float>(v % 7);
  rows.push_back(cast<float>(random_values(V, 13, -5.0, 5.0)));  // +inf: the first one wins
  rows.back()[640] = inf;
  rows.back()[900] = inf;
  rows.push_back(cast<float>(random_values(V, 14, -5.0, 5.0)));  // NaN never wins
  for (int v = 0; v < V; v += 37) rows.back()[v] = nan;
  rows.push_back(cast<float>(random_values(V, 15, -1e6, 1e6)));    // huge logits
  rows.push_back(cast<float>(random_values(V, 16, -40.0, 40.0)));  // peaked, disallowed token largest
  const int R = static_cast<int>(rows.size());
  std::vector<float> logits;
  for (const auto& row : rows) logits.insert(logits.end(), row.begin(), row.end());
  std::vector<int32_t> disallow(R, -1);
  disallow[8] = static_cast<int32_t>(std::max_element(rows[8].begin(), rows[8].end()) - rows[8].begin());
  disallow[2] = 517;
  for (float t : {1.0f, 0.5f}) {
    for (bool with_disallow : {false, true}) {
      std::vector<int32_t> samples(R);
      be->gumbel_sample(samples.data(), logits.data(), with_disallow ? disallow.data() : nullptr, R, V, t, 5, 6, 70,
                        per);
      for (int r = 0; r < R; ++r) {
        const PhiloxStream stream(5, RandomPurpose::kSampling, 6, 70 + r / per);
        double best = -std::numeric_limits<double>::infinity();
        int want = 0;
        for (int v = 0; v < V; ++v) {
          const double z = static_cast<double>(rows[r][v]) - (with_disallow && v == disallow[r] ? 1000.0 : 0.0);
          const double score = z / static_cast<double>(t) + stream.gumbel(static_cast<uint64_t>(r % per) * V + v);
          if (score > best) {
            best = score;
            want = v;
          }
        }
        EXPECT_EQ(samples[r], want) << "row " << r << " t=" << t << " disallow=" << with_disallow;
      }
    }
  }
}

// The Philox bound gumbel_sample_rows skips chunks by: the largest high word of the uniforms of the
// tokens' blocks, the same from the AVX-512 kernel (where the CPU has it) and the portable loop, across the
// 32-bit block counter's wrap, odd first tokens and runs of 1 to 70 tokens.
TEST(BackendGumbelSample, UniformBoundIsTheLargestHighWordOfTheBlocks) {
  int checked = 0;
  for (uint64_t example : {0ull, 3ull, 12345ull}) {
    const PhiloxStream stream(99, RandomPurpose::kSampling, 7, example);
    for (uint64_t n0 : {0ull, 1ull, 30ull, 8001ull, (1ull << 33) - 41, (1ull << 33) - 2}) {
      for (int count = 1; count <= 70; ++count) {
        uint32_t want = 0;
        for (uint64_t block = n0 >> 1; block <= (n0 + count - 1) >> 1; ++block) {
          want = std::max({want, stream.at(4 * block), stream.at(4 * block + 2)});
        }
        for (uint64_t n = n0; n < n0 + count; ++n) ASSERT_GE(want, stream.at(2 * n));  // each token's high word
        ASSERT_EQ(cpu::detail::max_uniform_high_word_portable(stream, n0, count), want) << n0 << " " << count;
        ASSERT_EQ(cpu::detail::max_uniform_high_word(stream, n0, count), want) << n0 << " " << count;
        ++checked;
      }
    }
  }
  EXPECT_EQ(checked, 3 * 6 * 70);
  if (!cpu::detail::philox_uses_avx512()) GTEST_LOG_(INFO) << "no AVX-512: the portable loop only";
}

// Dropout's Philox words from the AVX-512 kernel (where the CPU has it) and the portable loop: the
// stream's own words, in order, across the block counter's wrap and for 1 to 40 blocks.
TEST(BackendPhiloxWords, SimdAndPortableGiveTheStreamsWords) {
  std::vector<uint32_t> simd(4 * 40), portable(4 * 40);
  for (uint64_t example : {0ull, 9ull}) {
    const PhiloxStream stream(31, RandomPurpose::kDropout, 4, example, 2);
    for (uint64_t first : {0ull, 5ull, 1000ull, (1ull << 32) - 20, (1ull << 32) + 3}) {
      for (int count = 1; count <= 40; ++count) {
        cpu::detail::philox_words_simd(simd.data(), stream, first, count);
        cpu::detail::philox_words_portable(portable.data(), stream, first, count);
        for (int i = 0; i < 4 * count; ++i) {
          ASSERT_EQ(simd[i], stream.at(4 * first + i)) << first << " " << count << " " << i;
          ASSERT_EQ(portable[i], simd[i]) << first << " " << count << " " << i;
        }
      }
    }
  }
}

TEST(BackendGumbelSample, SplitIndependence) {
  auto be = make_cpu_backend<float>();
  const int V = 1000, per = 3, examples = 11, rows = per * examples, k = 4;
  const auto logits = cast<float>(random_values(static_cast<size_t>(rows) * V, 1, -2.0, 2.0));
  const auto disallow = random_ints(rows, 2, 0, V);
  std::vector<int32_t> whole(rows), split(rows);
  be->gumbel_sample(whole.data(), logits.data(), disallow.data(), rows, V, 1.0f, 7, 8, 20, per);
  be->gumbel_sample(split.data(), logits.data(), disallow.data(), k * per, V, 1.0f, 7, 8, 20, per);
  be->gumbel_sample(split.data() + k * per, logits.data() + static_cast<size_t>(k) * per * V, disallow.data() + k * per,
                    rows - k * per, V, 1.0f, 7, 8, 20 + k, per);
  EXPECT_EQ(whole, split);
}

// Everything whose parallel decomposition could leak into the result, run with 1, 2 and 3 OpenMP
// threads (and OpenBLAS with 1 and 2): outputs must be bitwise identical.
template <typename T>
std::vector<std::vector<T>> run_everything(Backend<T>& be, double* sumsq) {
  const int B = 3, S = 40, H = 2, D = 16, E = H * D, V = 2000, rows = B * S;
  const auto x = cast<T>(random_values(rows * E, 1)), w = cast<T>(random_values(3 * E * E, 2));
  const auto dy = cast<T>(random_values(rows * 3 * E, 3));
  const auto ids = random_ints(rows, 4, 0, 50), tids = random_ints(rows, 5, 0, 2);
  std::vector<int32_t> mask(rows, 1);
  mask[S - 1] = 0;
  std::vector<std::vector<T>> outs;
  std::vector<T> y(rows * 3 * E), dx(rows * E), dw(w.size(), T(0)), db(3 * E, T(0));
  be.linear_forward(y.data(), x.data(), w.data(), nullptr, rows, E, 3 * E);
  be.linear_backward(dx.data(), dw.data(), db.data(), dy.data(), x.data(), w.data(), rows, E, 3 * E);
  outs.insert(outs.end(), {y, dx, dw, db});
  std::vector<T> ln(rows * E), mean(rows), rstd(rows), dln(rows * E), dg(E, T(0)), dbeta(E, T(0));
  be.layernorm_forward(ln.data(), mean.data(), rstd.data(), x.data(), w.data(), w.data() + E, rows, E, T(1e-5));
  be.layernorm_backward(dln.data(), dg.data(), dbeta.data(), dy.data(), x.data(), mean.data(), rstd.data(), w.data(),
                        rows, E);
  outs.insert(outs.end(), {ln, dln, dg, dbeta});
  std::vector<T> dword(50 * E, T(0)), dpos(S * E, T(0)), dtype(2 * E, T(0));
  be.embedding_backward(dword.data(), dpos.data(), dtype.data(), x.data(), ids.data(), tids.data(), nullptr, B, S, E);
  outs.insert(outs.end(), {dword, dpos, dtype});
  const DropoutKey key{.seed = 3, .step = 1, .lane = 0, .first_example = 0, .elements_per_example = H * S * S};
  std::vector<T> ctx(rows * E), probs(B * H * S * S), dqkv(y.size()), scratch(probs.size());
  std::vector<uint8_t> keep(probs.size());
  be.attention_forward(ctx.data(), probs.data(), keep.data(), y.data(), mask.data(), B, S, H, D, 0.1f, key);
  be.attention_backward(dqkv.data(), scratch.data(), x.data(), y.data(), probs.data(), keep.data(), mask.data(), B, S,
                        H, D, 0.1f);
  outs.insert(outs.end(), {ctx, probs, dqkv, std::vector<T>(keep.begin(), keep.end())});
  const auto logits = cast<T>(random_values(64 * V, 6, -4.0, 4.0));
  const auto labels = random_ints(64, 7, 0, V);
  std::vector<T> loss(64), dlogits(logits.size());
  std::vector<int32_t> samples(64);
  be.softmax_cross_entropy(loss.data(), dlogits.data(), nullptr, logits.data(), labels.data(), nullptr, 64, V);
  be.gumbel_sample(samples.data(), logits.data(), labels.data(), 64, V, 1.0f, 5, 6, 7, 2);
  outs.insert(outs.end(), {loss, dlogits, std::vector<T>(samples.begin(), samples.end())});
  // GEMMs large enough to be split over threads, by rows and by columns, with ragged pieces.
  const auto ga = cast<T>(random_values(300 * 64, 9)), gb = cast<T>(random_values(600 * 64, 10));
  std::vector<T> rows_split(300 * 200), cols_split(48 * 600), dw_split(200 * 64, T(0));
  be.linear_forward(rows_split.data(), ga.data(), gb.data(), nullptr, 300, 64, 200);
  be.gemm(Transpose::kNo, Transpose::kYes, 48, 600, 64, T(1), ga.data(), 64, gb.data(), 64, T(0), cols_split.data(),
          600);
  be.linear_backward(nullptr, dw_split.data(), nullptr, rows_split.data(), ga.data(), gb.data(), 300, 64, 200);
  outs.insert(outs.end(), {rows_split, cols_split, dw_split});
  const auto big = cast<T>(random_values(1'000'003, 8));
  *sumsq = be.sum_squares(big.data(), big.size());
  return outs;
}

TEST(BackendDeterminism, IndependentOfThreadCounts) {
  ThreadCounts threads;
  auto be = make_cpu_backend<float>();
  threads.set(1, 1);
  double ss_ref = 0;
  const auto ref = run_everything(*be, &ss_ref);
  for (auto [omp, blas] : {std::pair{2, 1}, std::pair{2, 2}, std::pair{3, 2}, std::pair{1, 2}}) {
    threads.set(omp, blas);
    double ss = 0;
    const auto got = run_everything(*be, &ss);
    ASSERT_EQ(got.size(), ref.size());
    for (size_t i = 0; i < ref.size(); ++i) {
      EXPECT_TRUE(bitwise_equal(got[i], ref[i])) << "output " << i << " omp " << omp << " blas " << blas;
    }
    EXPECT_EQ(ss, ss_ref) << "sum_squares, omp " << omp;
  }
}

TEST(BackendDeterminism, SumSquaresDoubleIndependentOfThreads) {
  ThreadCounts threads;
  auto be = make_cpu_backend<double>();
  const auto x = random_values(3'000'017, 1, -1e3, 1e3);
  threads.set(1, 1);
  const double one = be->sum_squares(x.data(), x.size());
  threads.set(2, 2);
  EXPECT_EQ(be->sum_squares(x.data(), x.size()), one);
  threads.set(3, 2);
  EXPECT_EQ(be->sum_squares(x.data(), x.size()), one);
}

}  // namespace
}  // namespace electra::test
