// Backend<bfloat16> on the host: the reference of bf16 storage. Every op widens its bfloat16 inputs into
// float scratch, runs the float kernel of lib/backend/cpu/kernels.h and rounds the bfloat16 outputs to
// nearest-even; W (float) arguments go to the kernel as they are. Reading every input before writing any
// output makes the aliasing backend.h allows (add, log_softmax, softmax_cross_entropy's dlogits) safe, and
// the float kernels' own checks run first, so invalid arguments fail with the float backend's messages.
#include <algorithm>
#include <array>
#include <cstdlib>
#include <cstring>
#include <memory>

#include "lib/backend/backend.h"
#include "lib/backend/cpu/detail.h"
#include "lib/backend/cpu/kernels.h"
#include "lib/core/error.h"

namespace electra {
namespace {

// Conversions: elementwise, so fixed chunks give the same bits for any thread count.
constexpr size_t kConvertChunk = 16384;
constexpr size_t kConvertMinParallel = 4 * kConvertChunk;

ELECTRA_CPU_CLONES void widen_range(float* dst, const bfloat16* src, size_t n) { widen_bfloat16(dst, src, n); }
ELECTRA_CPU_CLONES void narrow_range(bfloat16* dst, const float* src, size_t n) { narrow_to_bfloat16(dst, src, n); }

void widen_parallel(float* dst, const bfloat16* src, size_t n) {
  cpu::detail::parallel_chunks(n, kConvertChunk, kConvertMinParallel,
                               [&](size_t begin, size_t end) { widen_range(dst + begin, src + begin, end - begin); });
}
void narrow_parallel(bfloat16* dst, const float* src, size_t n) {
  cpu::detail::parallel_chunks(n, kConvertChunk, kConvertMinParallel,
                               [&](size_t begin, size_t end) { narrow_range(dst + begin, src + begin, end - begin); });
}

// Element counts of a shape; 0 when a dimension is negative, so that an invalid shape reaches the float
// kernel (which names it) instead of a huge allocation here.
size_t count(long long a, long long b = 1, long long c = 1, long long d = 1) {
  if (a < 0 || b < 0 || c < 0 || d < 0) return 0;
  return static_cast<size_t>(a) * static_cast<size_t>(b) * static_cast<size_t>(c) * static_cast<size_t>(d);
}

// Elements spanned by a row-major [rows, cols] matrix with leading dimension ld (0 when invalid: the
// GEMM kernel's argument check then fails).
size_t matrix_span(int rows, int cols, int ld) {
  if (rows <= 0 || cols <= 0 || ld < cols) return 0;
  return static_cast<size_t>(rows - 1) * static_cast<size_t>(ld) + static_cast<size_t>(cols);
}
// The same for `batch` matrices stride elements apart.
size_t batched_span(int rows, int cols, int ld, long long stride, int batch) {
  const size_t one = matrix_span(rows, cols, ld);
  if (one == 0 || batch <= 0) return 0;
  return static_cast<size_t>(batch - 1) * static_cast<size_t>(stride) + one;
}

// 1 + the largest non-negative id (0 when there is none): the table rows an embedding lookup can read.
// Negative ids are left to the float kernel's check.
size_t rows_used(const int32_t* ids, size_t n) {
  if (ids == nullptr) return 0;
  int32_t largest = -1;
  for (size_t i = 0; i < n; ++i) largest = std::max(largest, ids[i]);
  return largest < 0 ? 0 : static_cast<size_t>(largest) + 1;
}

// Float room for argument `slot` of the running op (an op gives each argument its own slot, so no two share
// memory); never null (a null argument means "absent" to the kernels). Per host thread, as the float
// kernels' scratch is: the model's parallel chunks call one backend from several OpenMP threads at once.
// Grown on demand and kept: no allocation in the steady state.
constexpr int kArgumentSlots = 5;
float* argument_scratch(int slot, size_t n) {
  struct FreeDeleter {
    void operator()(float* p) const { std::free(p); }
  };
  struct Buffer {
    std::unique_ptr<float, FreeDeleter> data;
    size_t capacity = 0;
  };
  thread_local std::array<Buffer, kArgumentSlots> buffers;
  n = std::max<size_t>(n, 1);
  Buffer& buffer = buffers.at(static_cast<size_t>(slot));
  if (buffer.capacity < n) {
    buffer.data.reset();  // free before allocating: the old contents are not needed
    buffer.data.reset(static_cast<float*>(cpu::detail::aligned_allocate(n * sizeof(float))));
    buffer.capacity = n;
  }
  return buffer.data.get();
}

class CpuBf16Backend final : public Backend<bfloat16> {
 public:
  using T = bfloat16;

  explicit CpuBf16Backend(Backend<float>& wide) : wide_(wide) {}

  DeviceKind device() const override { return DeviceKind::kCpu; }
  std::string name() const override { return "cpu-bf16"; }

  T* allocate(size_t n) override { return static_cast<T*>(cpu::detail::aligned_allocate(n * sizeof(T))); }
  void deallocate(T* p) override { std::free(p); }
  int32_t* allocate_ints(size_t n) override {
    return static_cast<int32_t*>(cpu::detail::aligned_allocate(n * sizeof(int32_t)));
  }
  void deallocate_ints(int32_t* p) override { std::free(p); }
  uint8_t* allocate_bytes(size_t n) override { return static_cast<uint8_t*>(cpu::detail::aligned_allocate(n)); }
  void deallocate_bytes(uint8_t* p) override { std::free(p); }
  void copy_to_host(T* host, const T* src, size_t n) override { copy_bytes(host, src, n * sizeof(T)); }
  void copy_from_host(T* dst, const T* host, size_t n) override { copy_bytes(dst, host, n * sizeof(T)); }
  void copy_ints_from_host(int32_t* dst, const int32_t* host, size_t n) override {
    copy_bytes(dst, host, n * sizeof(int32_t));
  }
  void copy_ints_to_host(int32_t* host, const int32_t* src, size_t n) override {
    copy_bytes(host, src, n * sizeof(int32_t));
  }
  void fill(T* x, size_t n, T value) override {
    cpu::detail::parallel_chunks(n, kConvertChunk, kConvertMinParallel,
                                 [&](size_t begin, size_t end) { std::fill(x + begin, x + end, value); });
  }
  void copy(T* dst, const T* src, size_t n) override { copy_bytes(dst, src, n * sizeof(T)); }
  void synchronize() override {}

  Backend<W>& wide() override { return wide_; }
  void widen(W* dst, const T* src, size_t n) override { widen_parallel(dst, src, n); }
  void narrow(T* dst, const W* src, size_t n) override { narrow_parallel(dst, src, n); }

  // ---- matrix products ----
  void gemm(Transpose trans_a, Transpose trans_b, int m, int n, int k, W alpha, const T* a, int lda, const T* b,
            int ldb, W beta, T* c, int ldc) override {
    gemm_strided_batched(trans_a, trans_b, m, n, k, alpha, a, lda, 0, b, ldb, 0, beta, c, ldc, 0, 1);
  }
  void gemm_strided_batched(Transpose trans_a, Transpose trans_b, int m, int n, int k, W alpha, const T* a, int lda,
                            long long stride_a, const T* b, int ldb, long long stride_b, W beta, T* c, int ldc,
                            long long stride_c, int batch) override {
    ELECTRA_CHECK(stride_a >= 0 && stride_b >= 0 && stride_c >= 0, name(), " gemm_strided_batched: negative stride (a ",
                  stride_a, ", b ", stride_b, ", c ", stride_c, ")");
    const bool ta = trans_a == Transpose::kYes, tb = trans_b == Transpose::kYes;
    const size_t span_a = batched_span(ta ? k : m, ta ? m : k, lda, stride_a, batch);
    const size_t span_b = batched_span(tb ? n : k, tb ? k : n, ldb, stride_b, batch);
    const size_t span_c = batched_span(m, n, ldc, stride_c, batch);
    const float* wa = in(0, a, span_a);
    const float* wb = in(1, b, span_b);
    // C is an input only when beta != 0 (BLAS: with beta 0 it is not read, and may hold anything).
    float* wc = beta != 0.0f ? const_cast<float*>(in(2, c, span_c)) : scratch(2, span_c);
    if (batch == 1) {
      cpu::gemm(trans_a, trans_b, m, n, k, alpha, wa, lda, wb, ldb, beta, wc, ldc);
    } else {
      cpu::gemm_strided_batched(trans_a, trans_b, m, n, k, alpha, wa, lda, stride_a, wb, ldb, stride_b, beta, wc, ldc,
                                stride_c, batch);
    }
    // Only the [m, n] blocks: the gaps between rows (ldc > n) and batches are not the op's to touch.
    if (span_c == 0) return;
    if (ldc == n && (batch == 1 || stride_c == static_cast<long long>(m) * n)) {
      narrow_parallel(c, wc, span_c);
      return;
    }
    for (int i = 0; i < batch; ++i) {
      for (int r = 0; r < m; ++r) {
        const size_t offset = static_cast<size_t>(i) * static_cast<size_t>(stride_c) + static_cast<size_t>(r) * ldc;
        narrow_parallel(c + offset, wc + offset, static_cast<size_t>(n));
      }
    }
  }

  // ---- linear layers ----
  void linear_forward(T* y, const T* x, const T* weight, const T* bias, int rows, int in_features,
                      int out_features) override {
    const float* wx = in(0, x, count(rows, in_features));
    const float* wweight = in(1, weight, count(out_features, in_features));
    const float* wbias = in(2, bias, count(out_features));
    float* wy = out(3, y, count(rows, out_features));
    cpu::linear_forward(wy, wx, wweight, wbias, rows, in_features, out_features);
    store(y, wy, count(rows, out_features));
  }
  void linear_backward(T* dx, W* dweight, W* dbias, const T* dy, const T* x, const T* weight, int rows, int in_features,
                       int out_features) override {
    const float* wdy = in(0, dy, count(rows, out_features));
    const float* wx = in(1, x, count(rows, in_features));
    const float* wweight = in(2, weight, count(out_features, in_features));
    float* wdx = out(3, dx, count(rows, in_features));
    cpu::linear_backward(wdx, dweight, dbias, wdy, wx, wweight, rows, in_features, out_features);
    store(dx, wdx, count(rows, in_features));
  }

  // ---- elementwise ----
  void activation_forward(Activation act, T* y, const T* x, size_t n) override {
    const float* wx = in(0, x, n);
    float* wy = out(1, y, n);
    cpu::activation_forward(act, wy, wx, n);
    store(y, wy, n);
  }
  void activation_backward(Activation act, T* dx, const T* dy, const T* x, size_t n) override {
    const float* wdy = in(0, dy, n);
    const float* wx = in(1, x, n);
    float* wdx = out(2, dx, n);
    cpu::activation_backward(act, wdx, wdy, wx, n);
    store(dx, wdx, n);
  }
  void add(T* out_values, const T* a, const T* b, size_t n) override {
    const float* wa = in(0, a, n);
    const float* wb = in(1, b, n);
    float* wout = out(2, out_values, n);
    cpu::add(wout, wa, wb, n);
    store(out_values, wout, n);
  }
  void accumulate(T* y, const T* x, size_t n) override {
    float* wy = const_cast<float*>(in(0, y, n));
    const float* wx = in(1, x, n);
    cpu::accumulate(wy, wx, n);
    store(y, wy, n);
  }
  void scale(T* x, size_t n, W alpha) override {
    float* wx = const_cast<float*>(in(0, x, n));
    cpu::scale(wx, n, alpha);
    store(x, wx, n);
  }
  void dropout_forward(T* y, uint8_t* keep, const T* x, size_t n, float p, const DropoutKey& key) override {
    const float* wx = in(0, x, n);
    float* wy = out(1, y, n);
    cpu::dropout_forward(wy, keep, wx, n, p, key);
    store(y, wy, n);
  }
  void dropout_backward(T* dx, const T* dy, const uint8_t* keep, size_t n, float p) override {
    const float* wdy = in(0, dy, n);
    float* wdx = out(1, dx, n);
    cpu::dropout_backward(wdx, wdy, keep, n, p);
    store(dx, wdx, n);
  }

  // ---- normalisation ----
  void layernorm_forward(T* y, W* mean, W* rstd, const T* x, const T* gamma, const T* beta, int rows, int cols,
                         W eps) override {
    const float* wx = in(0, x, count(rows, cols));
    const float* wgamma = in(1, gamma, count(cols));
    const float* wbeta = in(2, beta, count(cols));
    float* wy = out(3, y, count(rows, cols));
    cpu::layernorm_forward(wy, mean, rstd, wx, wgamma, wbeta, rows, cols, eps);
    store(y, wy, count(rows, cols));
  }
  void layernorm_backward(T* dx, W* dgamma, W* dbeta, const T* dy, const T* x, const W* mean, const W* rstd,
                          const T* gamma, int rows, int cols) override {
    const float* wdy = in(0, dy, count(rows, cols));
    const float* wx = in(1, x, count(rows, cols));
    const float* wgamma = in(2, gamma, count(cols));
    float* wdx = out(3, dx, count(rows, cols));
    cpu::layernorm_backward(wdx, dgamma, dbeta, wdy, wx, mean, rstd, wgamma, rows, cols);
    store(dx, wdx, count(rows, cols));
  }

  // ---- embeddings ----
  // The table sizes are not passed: only the rows the ids can reach are widened.
  void embedding_forward(T* out_values, const int32_t* ids, const int32_t* type_ids, const int32_t* position_ids,
                         const T* word_table, const T* position_table, const T* type_table, int B, int S,
                         int E) override {
    const size_t tokens = count(B, S);
    const size_t type_rows = type_ids != nullptr ? rows_used(type_ids, tokens) : (tokens > 0 ? 1 : 0);
    const size_t position_rows =
        position_ids != nullptr ? rows_used(position_ids, tokens) : (tokens > 0 ? count(S) : 0);
    const float* wword = in(0, word_table, count(E) * rows_used(ids, tokens));
    const float* wposition = in(1, position_table, count(E) * position_rows);
    const float* wtype = in(2, type_table, count(E) * type_rows);
    float* wout = out(3, out_values, count(B, S, E));
    cpu::embedding_forward(wout, ids, type_ids, position_ids, wword, wposition, wtype, B, S, E);
    store(out_values, wout, count(B, S, E));
  }
  void embedding_backward(W* dword, W* dposition, W* dtype, const T* dout, const int32_t* ids, const int32_t* type_ids,
                          const int32_t* position_ids, int B, int S, int E) override {
    const float* wdout = in(0, dout, count(B, S, E));
    cpu::embedding_backward(dword, dposition, dtype, wdout, ids, type_ids, position_ids, B, S, E);
  }
  void gather_rows(T* out_values, const T* x, const int32_t* positions, int B, int S, int P, int C) override {
    const float* wx = in(0, x, count(B, S, C));
    float* wout = out(1, out_values, count(B, P, C));
    cpu::gather_rows(wout, wx, positions, B, S, P, C);
    store(out_values, wout, count(B, P, C));
  }
  void scatter_add_rows(T* dx, const T* dout, const int32_t* positions, int B, int S, int P, int C) override {
    float* wdx = const_cast<float*>(in(0, dx, count(B, S, C)));
    const float* wdout = in(1, dout, count(B, P, C));
    cpu::scatter_add_rows(wdx, wdout, positions, B, S, P, C);
    store(dx, wdx, count(B, S, C));
  }

  // ---- attention ----
  void attention_forward(T* context, T* probs, uint8_t* keep, const T* qkv, const int32_t* mask, int B, int S, int H,
                         int D, float dropout, const DropoutKey& key) override {
    const float* wqkv = in(0, qkv, count(B, S, 3 * static_cast<long long>(H), D));
    float* wcontext = out(1, context, count(B, S, H, D));
    float* wprobs = out(2, probs, count(B, H, S, S));
    cpu::attention_forward(wcontext, wprobs, keep, wqkv, mask, B, S, H, D, dropout, key);
    store(context, wcontext, count(B, S, H, D));
    store(probs, wprobs, count(B, H, S, S));
  }
  // The caller's bfloat16 scratch is too small for float d(scores): the float scratch is our own.
  void attention_backward(T* dqkv, T* /*scratch*/, const T* dcontext, const T* qkv, const T* probs, const uint8_t* keep,
                          const int32_t* mask, int B, int S, int H, int D, float dropout) override {
    const float* wdcontext = in(0, dcontext, count(B, S, H, D));
    const float* wqkv = in(1, qkv, count(B, S, 3 * static_cast<long long>(H), D));
    const float* wprobs = in(2, probs, count(B, H, S, S));
    float* wscratch = scratch(3, count(B, H, S, S));
    float* wdqkv = out(4, dqkv, count(B, S, 3 * static_cast<long long>(H), D));
    cpu::attention_backward(wdqkv, wscratch, wdcontext, wqkv, wprobs, keep, mask, B, S, H, D, dropout);
    store(dqkv, wdqkv, count(B, S, 3 * static_cast<long long>(H), D));
  }
  bool fused_attention_supported(int B, int S, int H, int D, float dropout) const override {
    return wide_.fused_attention_supported(B, S, H, D, dropout);
  }
  void fused_attention_forward(T* context, W* stats, const T* qkv, const int32_t* mask, int B, int S, int H, int D,
                               float dropout, const DropoutKey& key) override {
    const float* wqkv = in(0, qkv, count(B, S, 3 * static_cast<long long>(H), D));
    float* wcontext = out(1, context, count(B, S, H, D));
    cpu::fused_attention_forward(wcontext, stats, wqkv, mask, B, S, H, D, dropout, key);
    store(context, wcontext, count(B, S, H, D));
  }
  void fused_attention_backward(T* dqkv, const T* dcontext, const T* qkv, const T* context, const W* stats,
                                const int32_t* mask, int B, int S, int H, int D, float dropout,
                                const DropoutKey& key) override {
    const float* wdcontext = in(0, dcontext, count(B, S, H, D));
    const float* wqkv = in(1, qkv, count(B, S, 3 * static_cast<long long>(H), D));
    const float* wcontext = in(2, context, count(B, S, H, D));
    float* wdqkv = out(3, dqkv, count(B, S, 3 * static_cast<long long>(H), D));
    cpu::fused_attention_backward(wdqkv, wdcontext, wqkv, wcontext, stats, mask, B, S, H, D, dropout, key);
    store(dqkv, wdqkv, count(B, S, 3 * static_cast<long long>(H), D));
  }

  // ---- losses and sampling ----
  void softmax_cross_entropy(W* loss, T* dlogits, int32_t* argmax, const T* logits, const int32_t* labels,
                             const W* grad_scale, int rows, int V) override {
    const float* wlogits = in(0, logits, count(rows, V));
    float* wdlogits = out(1, dlogits, count(rows, V));
    cpu::softmax_cross_entropy(loss, wdlogits, argmax, wlogits, labels, grad_scale, rows, V);
    store(dlogits, wdlogits, count(rows, V));
  }
  void log_softmax(T* y, const T* x, int rows, int V) override {
    const float* wx = in(0, x, count(rows, V));
    float* wy = out(1, y, count(rows, V));
    cpu::log_softmax(wy, wx, rows, V);
    store(y, wy, count(rows, V));
  }
  void sigmoid_cross_entropy(W* loss, T* dlogit, const T* logit, const int32_t* label, const W* grad_scale,
                             size_t n) override {
    const float* wlogit = in(0, logit, n);
    float* wdlogit = out(1, dlogit, n);
    cpu::sigmoid_cross_entropy(loss, wdlogit, wlogit, label, grad_scale, n);
    store(dlogit, wdlogit, n);
  }
  void gumbel_sample(int32_t* samples, const T* logits, const int32_t* disallow, int rows, int V, float temperature,
                     uint64_t seed, uint64_t step, uint64_t first_example, int rows_per_example) override {
    const float* wlogits = in(0, logits, count(rows, V));
    cpu::gumbel_sample(samples, wlogits, disallow, rows, V, temperature, seed, step, first_example, rows_per_example);
  }
  void replace_masked_tokens(int32_t* corrupted, int32_t* disc_label, const int32_t* original_ids,
                             const int32_t* input_mask, const int32_t* positions, const W* weights,
                             const int32_t* samples, int B, int S, int P) override {
    cpu::replace_masked_tokens(corrupted, disc_label, original_ids, input_mask, positions, weights, samples, B, S, P);
  }

  // ---- reductions and optimizer ----
  double sum_squares(const T* x, size_t n) override { return cpu::sum_squares(in(0, x, n), n); }
  void adamw_step(T*, const T*, T*, T*, size_t, float, float, float, float, float, long long, float, bool) override {
    fail_optimizer("adamw_step");
  }
  void adamw_step_runs(T*, const T*, T*, T*, const AdamWRun*, size_t, float, float, float, float, long long, float,
                       bool) override {
    fail_optimizer("adamw_step_runs");
  }

 private:
  static float* scratch(int slot, size_t n) { return argument_scratch(slot, n); }
  // The widened copy of an input (null stays null: the kernels read null as "absent").
  const float* in(int slot, const T* src, size_t n) {
    if (src == nullptr) return nullptr;
    float* dst = scratch(slot, n);
    widen_parallel(dst, src, n);
    return dst;
  }
  // Float room for an output (null stays null: the kernels skip null outputs).
  float* out(int slot, const T* dst, size_t n) { return dst == nullptr ? nullptr : scratch(slot, n); }
  static void store(T* dst, const float* src, size_t n) {
    if (dst != nullptr) narrow_parallel(dst, src, n);
  }

  [[noreturn]] void fail_optimizer(const char* op) const {
    fail("backend ", name(), ": ", op,
         " is not available on bfloat16 storage; the optimizer runs on wide() (fp32 master weights, gradients and "
         "moments)");
  }
  static void copy_bytes(void* dst, const void* src, size_t bytes) {
    if (bytes != 0 && dst != src) std::memcpy(dst, src, bytes);
  }

  Backend<float>& wide_;
};

}  // namespace

std::unique_ptr<Backend<bfloat16>> make_cpu_bf16_backend(Backend<float>& wide) {
  if (wide.device() != DeviceKind::kCpu) {
    fail("make_cpu_bf16_backend: the wide backend ", wide.name(),
         " is not a CPU backend (the bf16 CPU backend runs the float CPU kernels on host memory)");
  }
  cpu::detail::set_blas_single_threaded();
  return std::make_unique<CpuBf16Backend>(wide);
}

}  // namespace electra
