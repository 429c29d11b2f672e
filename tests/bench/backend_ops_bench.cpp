// Micro-benchmarks of the CPU backend at ELECTRA-small/base shapes (batch 32, sequence 128 -> 4096 token
// rows; 19 predictions per row -> 608 vocabulary rows). Counters: FLOP/s for products, items/s
// (elements or rows) for the rest. Wall-clock time (the ops are multi-threaded).
//   build-*/bench/backend_bench --benchmark_filter=Gemm
#include <benchmark/benchmark.h>
#include <omp.h>

#include <algorithm>
#include <vector>

#include "lib/backend/backend.h"
#include "lib/backend/cpu/kernels.h"
#include "lib/core/philox.h"

namespace electra {
namespace {

std::vector<float> random_floats(size_t n, uint64_t id, float scale = 1.0f) {
  PhiloxStream stream(1, RandomPurpose::kTest, 0, id);
  std::vector<float> out(n);
  for (size_t i = 0; i < n; ++i) out[i] = scale * (2.0f * stream.uniform(i) - 1.0f);
  return out;
}
std::vector<int32_t> random_ints(size_t n, uint64_t id, uint32_t bound) {
  PhiloxStream stream(2, RandomPurpose::kTest, 0, id);
  std::vector<int32_t> out(n);
  for (size_t i = 0; i < n; ++i) out[i] = static_cast<int32_t>(stream.below(i, bound));
  return out;
}

Backend<float>& cpu() {
  static auto backend = make_cpu_backend<float>();
  return *backend;
}

void flops_counter(benchmark::State& state, double flops_per_iteration) {
  state.counters["FLOP/s"] = benchmark::Counter(flops_per_iteration, benchmark::Counter::kIsIterationInvariantRate,
                                                benchmark::Counter::kIs1000);
}

// C[m,n] = op(A) op(B); args: m, n, k, trans_a, trans_b.
void BM_Gemm(benchmark::State& state) {
  const int m = state.range(0), n = state.range(1), k = state.range(2);
  const Transpose ta = state.range(3) ? Transpose::kYes : Transpose::kNo;
  const Transpose tb = state.range(4) ? Transpose::kYes : Transpose::kNo;
  const auto a = random_floats(static_cast<size_t>(m) * k, 1), b = random_floats(static_cast<size_t>(k) * n, 2);
  std::vector<float> c(static_cast<size_t>(m) * n);
  const int lda = ta == Transpose::kNo ? k : m, ldb = tb == Transpose::kNo ? n : k;
  for (auto _ : state) {
    cpu().gemm(ta, tb, m, n, k, 1.0f, a.data(), lda, b.data(), ldb, 0.0f, c.data(), n);
    benchmark::ClobberMemory();
  }
  flops_counter(state, 2.0 * m * n * k);
}
// Forward x W^T (N,T), backward dx = dy W (N,N), dW = dy^T x (T,N) of the main ELECTRA layers.
BENCHMARK(BM_Gemm)
    ->ArgNames({"m", "n", "k", "ta", "tb"})
    ->Args({4096, 768, 256, 0, 1})   // small: fused QKV projection
    ->Args({4096, 1024, 256, 0, 1})  // small: FFN in
    ->Args({4096, 256, 1024, 0, 1})  // small: FFN out
    ->Args({4096, 256, 1024, 0, 0})  // small: FFN in, dx
    ->Args({1024, 256, 4096, 1, 0})  // small: FFN in, dW
    ->Args({608, 30522, 128, 0, 1})  // small: generator vocabulary logits (tied embeddings)
    ->Args({4096, 3072, 768, 0, 1})  // base: FFN in
    ->Args({4096, 768, 3072, 0, 1})  // base: FFN out
    ->Args({2048, 1024, 256, 0, 1})  // small, half batch (one of two parallel chunks): FFN in
    ->Args({1024, 256, 2048, 1, 0})  // small, half batch: FFN in, dW
    ->Args({2048, 192, 64, 0, 1})    // small generator, half batch: fused QKV (hidden 64)
    ->UseRealTime()
    ->Unit(benchmark::kMillisecond);

// Attention of one layer, forward + backward; args: B, S, H, D, dropout percent.
void BM_Attention(benchmark::State& state) {
  const int B = state.range(0), S = state.range(1), H = state.range(2), D = state.range(3);
  const float p = static_cast<float>(state.range(4)) / 100.0f;
  const auto qkv = random_floats(static_cast<size_t>(B) * S * 3 * H * D, 1);
  const auto dctx = random_floats(static_cast<size_t>(B) * S * H * D, 2);
  std::vector<int32_t> mask(static_cast<size_t>(B) * S, 1);
  for (int b = 0; b < B; b += 2) {
    for (int s = S - S / 4; s < S; ++s) mask[b * S + s] = 0;  // some padding
  }
  const size_t probs_n = static_cast<size_t>(B) * H * S * S;
  std::vector<float> ctx(dctx.size()), probs(probs_n), scratch(probs_n), dqkv(qkv.size());
  std::vector<uint8_t> keep(probs_n);
  const DropoutKey key{
      .seed = 1, .step = 1, .lane = 1, .first_example = 0, .elements_per_example = static_cast<uint64_t>(H) * S * S};
  const bool backward = state.range(5) != 0;
  for (auto _ : state) {
    cpu().attention_forward(ctx.data(), probs.data(), keep.data(), qkv.data(), mask.data(), B, S, H, D, p, key);
    if (backward) {
      cpu().attention_backward(dqkv.data(), scratch.data(), dctx.data(), qkv.data(), probs.data(), keep.data(),
                               mask.data(), B, S, H, D, p);
    }
    benchmark::ClobberMemory();
  }
  // Two S x S x D products forward, four backward.
  flops_counter(state, (backward ? 6.0 : 2.0) * 2.0 * B * H * S * S * D);
}
BENCHMARK(BM_Attention)
    ->ArgNames({"B", "S", "H", "D", "drop%", "bwd"})
    ->Args({32, 128, 4, 64, 10, 0})  // small discriminator, forward
    ->Args({32, 128, 4, 64, 10, 1})  // small discriminator, forward + backward
    ->Args({32, 128, 4, 64, 0, 1})   // without dropout
    ->Args({32, 128, 1, 64, 10, 1})  // small generator
    ->Args({4, 512, 12, 64, 10, 1})  // base discriminator at seq 512 (4 rows)
    ->UseRealTime()
    ->Unit(benchmark::kMillisecond);

// One (batch, head) product of attention on one thread, operands strided inside a [S, 3, H, D] qkv
// buffer as attention reads them. args: S, D, product (0: scores Q K^T [S,S,D]; 1: context P V
// [S,D,S]; 2: dV = P^T dC [S,D,S]), kernel (0: OpenBLAS through cpu::gemm; 1: cpu::attention_gemm).
void BM_AttentionGemm(benchmark::State& state) {
  const int S = state.range(0), D = state.range(1), product = state.range(2);
  const bool own = state.range(3) != 0;
  constexpr int H = 4;
  const int ld_qkv = 3 * H * D;
  const auto qkv = random_floats(static_cast<size_t>(S) * ld_qkv, 1);
  const auto square = random_floats(static_cast<size_t>(S) * S, 2);
  std::vector<float> out(static_cast<size_t>(S) * S);
  const float* q = qkv.data();
  const float* k = q + H * D;
  const int saved_threads = omp_get_max_threads();
  omp_set_num_threads(1);  // cpu::gemm would split the S = 512 products over threads
  auto run = [&](Transpose ta, Transpose tb, int m, int n, int kk, const float* a, int lda, const float* b, int ldb,
                 int ldc) {
    if (own) {
      cpu::attention_gemm(ta, tb, m, n, kk, 0.125f, a, lda, b, ldb, out.data(), ldc);
    } else {
      cpu::gemm(ta, tb, m, n, kk, 0.125f, a, lda, b, ldb, 0.0f, out.data(), ldc);
    }
  };
  for (auto _ : state) {
    if (product == 0) run(Transpose::kNo, Transpose::kYes, S, S, D, q, ld_qkv, k, ld_qkv, S);
    if (product == 1) run(Transpose::kNo, Transpose::kNo, S, D, S, square.data(), S, k, ld_qkv, D);
    if (product == 2) run(Transpose::kYes, Transpose::kNo, S, D, S, square.data(), S, k, ld_qkv, D);
    benchmark::ClobberMemory();
  }
  omp_set_num_threads(saved_threads);
  flops_counter(state, 2.0 * S * S * D);
  state.SetLabel(own ? (cpu::attention_gemm_uses_own_kernel() ? "own AVX-512" : "own (OpenBLAS fallback)")
                     : "OpenBLAS");
}
BENCHMARK(BM_AttentionGemm)
    ->ArgNames({"S", "D", "product", "own"})
    ->ArgsProduct({{128, 512}, {64}, {0, 1, 2}, {0, 1}})
    ->Unit(benchmark::kMicrosecond);

// args: rows, cols, backward
void BM_LayerNorm(benchmark::State& state) {
  const int rows = state.range(0), cols = state.range(1);
  const bool backward = state.range(2) != 0;
  const auto x = random_floats(static_cast<size_t>(rows) * cols, 1), dy = random_floats(x.size(), 2);
  const auto gamma = random_floats(cols, 3), beta = random_floats(cols, 4);
  std::vector<float> y(x.size()), dx(x.size()), mean(rows), rstd(rows), dg(cols), db(cols);
  cpu().layernorm_forward(y.data(), mean.data(), rstd.data(), x.data(), gamma.data(), beta.data(), rows, cols, 1e-12f);
  for (auto _ : state) {
    if (backward) {
      cpu().layernorm_backward(dx.data(), dg.data(), db.data(), dy.data(), x.data(), mean.data(), rstd.data(),
                               gamma.data(), rows, cols);
    } else {
      cpu().layernorm_forward(y.data(), mean.data(), rstd.data(), x.data(), gamma.data(), beta.data(), rows, cols,
                              1e-12f);
    }
    benchmark::ClobberMemory();
  }
  state.SetItemsProcessed(state.iterations() * static_cast<int64_t>(rows) * cols);
}
BENCHMARK(BM_LayerNorm)
    ->ArgNames({"rows", "cols", "bwd"})
    ->Args({4096, 256, 0})
    ->Args({4096, 256, 1})
    ->Args({4096, 768, 0})
    ->Args({4096, 768, 1})
    ->UseRealTime()
    ->Unit(benchmark::kMicrosecond);

// args: n, backward; activation from the benchmark name.
void activation_bench(benchmark::State& state, Activation act) {
  const size_t n = state.range(0);
  const bool backward = state.range(1) != 0;
  const auto x = random_floats(n, 1, 4.0f), dy = random_floats(n, 2);
  std::vector<float> y(n);
  for (auto _ : state) {
    if (backward) {
      cpu().activation_backward(act, y.data(), dy.data(), x.data(), n);
    } else {
      cpu().activation_forward(act, y.data(), x.data(), n);
    }
    benchmark::ClobberMemory();
  }
  state.SetItemsProcessed(state.iterations() * static_cast<int64_t>(n));
}
void BM_Gelu(benchmark::State& state) { activation_bench(state, Activation::kGelu); }
void BM_Tanh(benchmark::State& state) { activation_bench(state, Activation::kTanh); }
BENCHMARK(BM_Gelu)
    ->ArgNames({"n", "bwd"})
    ->Args({4096 * 1024, 0})
    ->Args({4096 * 1024, 1})
    ->Args({4096 * 3072, 0})  // base FFN
    ->Args({4096 * 3072, 1})
    ->UseRealTime()
    ->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_Tanh)->ArgNames({"n", "bwd"})->Args({4096 * 256, 0})->UseRealTime()->Unit(benchmark::kMicrosecond);
// ReLU: the same memory passes as GELU with almost no arithmetic, so GELU - ReLU is GELU's arithmetic.
void BM_Relu(benchmark::State& state) { activation_bench(state, Activation::kRelu); }
BENCHMARK(BM_Relu)
    ->ArgNames({"n", "bwd"})
    ->Args({4096 * 1024, 0})
    ->Args({4096 * 1024, 1})
    ->UseRealTime()
    ->Unit(benchmark::kMicrosecond);

void BM_Dropout(benchmark::State& state) {
  const size_t n = state.range(0);
  const auto x = random_floats(n, 1);
  std::vector<float> y(n);
  std::vector<uint8_t> keep(n);
  const DropoutKey key{.seed = 1, .step = 1, .lane = 1, .first_example = 0, .elements_per_example = 128 * 256};
  for (auto _ : state) {
    cpu().dropout_forward(y.data(), keep.data(), x.data(), n, 0.1f, key);
    benchmark::ClobberMemory();
  }
  state.SetItemsProcessed(state.iterations() * static_cast<int64_t>(n));
}
BENCHMARK(BM_Dropout)->Arg(4096 * 256)->UseRealTime()->Unit(benchmark::kMicrosecond);

// Generator MLM loss over the vocabulary: rows x V, with dlogits and argmax; in_place: dlogits
// overwrites the logits, as the model calls it (the logits are restored outside the timing).
void BM_SoftmaxCrossEntropy(benchmark::State& state) {
  const int rows = state.range(0), V = state.range(1);
  const bool in_place = state.range(2) != 0;
  const auto logits = random_floats(static_cast<size_t>(rows) * V, 1, 8.0f);
  const auto labels = random_ints(rows, 2, V);
  std::vector<float> loss(rows), dlogits(logits.size());
  std::vector<int32_t> argmax(rows);
  for (auto _ : state) {
    if (in_place) {
      state.PauseTiming();
      std::copy(logits.begin(), logits.end(), dlogits.begin());
      state.ResumeTiming();
    }
    cpu().softmax_cross_entropy(loss.data(), dlogits.data(), argmax.data(), in_place ? dlogits.data() : logits.data(),
                                labels.data(), nullptr, rows, V);
    benchmark::ClobberMemory();
  }
  state.SetItemsProcessed(state.iterations() * static_cast<int64_t>(rows) * V);
}
BENCHMARK(BM_SoftmaxCrossEntropy)
    ->ArgNames({"rows", "V", "in_place"})
    ->Args({608, 30522, 0})  // small: 32 rows x 19 predictions
    ->Args({608, 30522, 1})
    ->Args({632, 30522, 1})  // base: 8 rows x 79 predictions
    ->UseRealTime()
    ->Unit(benchmark::kMillisecond);

// Generator sampling of replacements: rows x V Gumbel-max draws.
void BM_GumbelSample(benchmark::State& state) {
  const int rows = state.range(0), V = state.range(1);
  const auto logits = random_floats(static_cast<size_t>(rows) * V, 1, 8.0f);
  const auto disallow = random_ints(rows, 2, V);
  std::vector<int32_t> samples(rows);
  uint64_t step = 0;
  for (auto _ : state) {
    cpu().gumbel_sample(samples.data(), logits.data(), disallow.data(), rows, V, 1.0f, 1, ++step, 0, 19);
    benchmark::ClobberMemory();
  }
  state.SetItemsProcessed(state.iterations() * static_cast<int64_t>(rows) * V);
}
BENCHMARK(BM_GumbelSample)->ArgNames({"rows", "V"})->Args({608, 30522})->UseRealTime()->Unit(benchmark::kMillisecond);

// Token, position and type embeddings of a batch (E = 128, vocabulary 30522), forward or backward.
void BM_Embedding(benchmark::State& state) {
  const int B = 32, S = 128, E = 128, V = 30522;
  const bool backward = state.range(0) != 0;
  const auto word = random_floats(static_cast<size_t>(V) * E, 1), pos = random_floats(512 * E, 2),
             type = random_floats(2 * E, 3), dout = random_floats(static_cast<size_t>(B) * S * E, 4);
  const auto ids = random_ints(B * S, 5, V), tids = random_ints(B * S, 6, 2);
  std::vector<float> out(dout.size()), dword(word.size()), dpos(pos.size()), dtype(type.size());
  for (auto _ : state) {
    if (backward) {
      cpu().embedding_backward(dword.data(), dpos.data(), dtype.data(), dout.data(), ids.data(), tids.data(), nullptr,
                               B, S, E);
    } else {
      cpu().embedding_forward(out.data(), ids.data(), tids.data(), nullptr, word.data(), pos.data(), type.data(), B, S,
                              E);
    }
    benchmark::ClobberMemory();
  }
  state.SetItemsProcessed(state.iterations() * static_cast<int64_t>(B) * S * E);
}
BENCHMARK(BM_Embedding)->ArgNames({"bwd"})->Arg(0)->Arg(1)->UseRealTime()->Unit(benchmark::kMicrosecond);

// One optimizer step / one global-norm reduction over n parameters (ELECTRA-small with its generator: ~14M).
void BM_AdamW(benchmark::State& state) {
  const size_t n = state.range(0);
  auto params = random_floats(n, 1);
  const auto grads = random_floats(n, 2);
  std::vector<float> m(n, 0.0f), v(n, 0.0f);
  long long t = 0;
  for (auto _ : state) {
    cpu().adamw_step(params.data(), grads.data(), m.data(), v.data(), n, 1e-4f, 0.9f, 0.999f, 1e-6f, 0.01f, ++t, 1.0f,
                     true);
    benchmark::ClobberMemory();
  }
  state.SetItemsProcessed(state.iterations() * static_cast<int64_t>(n));
}
// ELECTRA-small with its generator: 14.2M; ELECTRA-base with its generator: ~134M (2.1 GB of state).
BENCHMARK(BM_AdamW)->Arg(14'000'000)->Arg(134'000'000)->UseRealTime()->Unit(benchmark::kMillisecond);

void BM_SumSquares(benchmark::State& state) {
  const size_t n = state.range(0);
  const auto x = random_floats(n, 1);
  for (auto _ : state) benchmark::DoNotOptimize(cpu().sum_squares(x.data(), n));
  state.SetItemsProcessed(state.iterations() * static_cast<int64_t>(n));
}
BENCHMARK(BM_SumSquares)->Arg(14'000'000)->Arg(134'000'000)->UseRealTime()->Unit(benchmark::kMillisecond);

}  // namespace
}  // namespace electra

BENCHMARK_MAIN();
