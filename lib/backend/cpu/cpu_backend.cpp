// Backend<T> on the host: 64-byte aligned memory, the kernels of lib/backend/cpu/kernels.h.
#include <cstdlib>
#include <cstring>

#include "lib/backend/backend.h"
#include "lib/backend/cpu/detail.h"
#include "lib/backend/cpu/kernels.h"
#include "lib/core/error.h"

namespace electra {

void fail_fused_attention_unsupported(const std::string& name, int B, int S, int H, int D, float dropout) {
  fail("backend ", name, " has no fused attention for B=", B, " S=", S, " H=", H, " D=", D, " dropout=", dropout,
       " (use the materialised attention_forward / attention_backward)");
}

void fail_no_wide_backend(const std::string& name) {
  fail("backend ", name, " stores a narrow type but has no wide() backend, widen or narrow");
}

void fail_op_unsupported(const std::string& name, const std::string& op) {
  fail("backend ", name, " does not implement ", op);
}

void* cpu::detail::aligned_allocate(size_t bytes) {
  // aligned_alloc wants a size that is a multiple of the alignment.
  constexpr size_t kAlignment = 64;
  if (bytes == 0) return nullptr;
  const size_t rounded = (bytes + kAlignment - 1) / kAlignment * kAlignment;
  void* p = std::aligned_alloc(kAlignment, rounded);
  if (p == nullptr) {
    fail("cpu backend: out of memory allocating ", bytes, " bytes (", bytes >> 20,
         " MiB): the model, the batch or the sequence length is too large for this machine's memory (electra-train: "
         "model.*, train.batch_size, train.micro_batch_size, data.seq_length)");
  }
  return p;
}

namespace {

using cpu::detail::aligned_allocate;

template <typename T>
class CpuBackend final : public Backend<T> {
 public:
  DeviceKind device() const override { return DeviceKind::kCpu; }
  std::string name() const override { return sizeof(T) == 4 ? "cpu-float" : "cpu-double"; }

  T* allocate(size_t n) override { return static_cast<T*>(aligned_allocate(n * sizeof(T))); }
  void deallocate(T* p) override { std::free(p); }
  int32_t* allocate_ints(size_t n) override { return static_cast<int32_t*>(aligned_allocate(n * sizeof(int32_t))); }
  void deallocate_ints(int32_t* p) override { std::free(p); }
  uint8_t* allocate_bytes(size_t n) override { return static_cast<uint8_t*>(aligned_allocate(n)); }
  void deallocate_bytes(uint8_t* p) override { std::free(p); }
  void copy_to_host(T* host, const T* src, size_t n) override { copy_bytes(host, src, n * sizeof(T)); }
  void copy_from_host(T* dst, const T* host, size_t n) override { copy_bytes(dst, host, n * sizeof(T)); }
  void copy_ints_from_host(int32_t* dst, const int32_t* host, size_t n) override {
    copy_bytes(dst, host, n * sizeof(int32_t));
  }
  void copy_ints_to_host(int32_t* host, const int32_t* src, size_t n) override {
    copy_bytes(host, src, n * sizeof(int32_t));
  }
  void fill(T* x, size_t n, T value) override { cpu::fill(x, n, value); }
  void copy(T* dst, const T* src, size_t n) override { copy_bytes(dst, src, n * sizeof(T)); }
  void synchronize() override {}

  void gemm(Transpose trans_a, Transpose trans_b, int m, int n, int k, T alpha, const T* a, int lda, const T* b,
            int ldb, T beta, T* c, int ldc) override {
    cpu::gemm(trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
  }
  void gemm_strided_batched(Transpose trans_a, Transpose trans_b, int m, int n, int k, T alpha, const T* a, int lda,
                            long long stride_a, const T* b, int ldb, long long stride_b, T beta, T* c, int ldc,
                            long long stride_c, int batch) override {
    cpu::gemm_strided_batched(trans_a, trans_b, m, n, k, alpha, a, lda, stride_a, b, ldb, stride_b, beta, c, ldc,
                              stride_c, batch);
  }
  void linear_forward(T* y, const T* x, const T* weight, const T* bias, int rows, int in, int out) override {
    cpu::linear_forward(y, x, weight, bias, rows, in, out);
  }
  void linear_backward(T* dx, T* dweight, T* dbias, const T* dy, const T* x, const T* weight, int rows, int in,
                       int out) override {
    cpu::linear_backward(dx, dweight, dbias, dy, x, weight, rows, in, out);
  }

  void activation_forward(Activation act, T* y, const T* x, size_t n) override {
    cpu::activation_forward(act, y, x, n);
  }
  void activation_backward(Activation act, T* dx, const T* dy, const T* x, size_t n) override {
    cpu::activation_backward(act, dx, dy, x, n);
  }
  void add(T* out, const T* a, const T* b, size_t n) override { cpu::add(out, a, b, n); }
  void accumulate(T* y, const T* x, size_t n) override { cpu::accumulate(y, x, n); }
  void scale(T* x, size_t n, T alpha) override { cpu::scale(x, n, alpha); }
  void dropout_forward(T* y, uint8_t* keep, const T* x, size_t n, float p, const DropoutKey& key) override {
    cpu::dropout_forward(y, keep, x, n, p, key);
  }
  void dropout_backward(T* dx, const T* dy, const uint8_t* keep, size_t n, float p) override {
    cpu::dropout_backward(dx, dy, keep, n, p);
  }

  void layernorm_forward(T* y, T* mean, T* rstd, const T* x, const T* gamma, const T* beta, int rows, int cols,
                         T eps) override {
    cpu::layernorm_forward(y, mean, rstd, x, gamma, beta, rows, cols, eps);
  }
  void layernorm_backward(T* dx, T* dgamma, T* dbeta, const T* dy, const T* x, const T* mean, const T* rstd,
                          const T* gamma, int rows, int cols) override {
    cpu::layernorm_backward(dx, dgamma, dbeta, dy, x, mean, rstd, gamma, rows, cols);
  }

  void embedding_forward(T* out, const int32_t* ids, const int32_t* type_ids, const int32_t* position_ids,
                         const T* word_table, const T* position_table, const T* type_table, int B, int S,
                         int E) override {
    cpu::embedding_forward(out, ids, type_ids, position_ids, word_table, position_table, type_table, B, S, E);
  }
  void embedding_backward(T* dword, T* dposition, T* dtype, const T* dout, const int32_t* ids, const int32_t* type_ids,
                          const int32_t* position_ids, int B, int S, int E) override {
    cpu::embedding_backward(dword, dposition, dtype, dout, ids, type_ids, position_ids, B, S, E);
  }
  void gather_rows(T* out, const T* x, const int32_t* positions, int B, int S, int P, int C) override {
    cpu::gather_rows(out, x, positions, B, S, P, C);
  }
  void scatter_add_rows(T* dx, const T* dout, const int32_t* positions, int B, int S, int P, int C) override {
    cpu::scatter_add_rows(dx, dout, positions, B, S, P, C);
  }

  void attention_forward(T* context, T* probs, uint8_t* keep, const T* qkv, const int32_t* mask, int B, int S, int H,
                         int D, float dropout, const DropoutKey& key) override {
    cpu::attention_forward(context, probs, keep, qkv, mask, B, S, H, D, dropout, key);
  }
  void attention_backward(T* dqkv, T* scratch, const T* dcontext, const T* qkv, const T* probs, const uint8_t* keep,
                          const int32_t* mask, int B, int S, int H, int D, float dropout) override {
    cpu::attention_backward(dqkv, scratch, dcontext, qkv, probs, keep, mask, B, S, H, D, dropout);
  }
  // Every valid shape: the CPU kernels keep O(S*S) scratch per thread (materialised attention is faster
  // here, so models use it on the CPU unless told otherwise).
  bool fused_attention_supported(int B, int S, int H, int D, float dropout) const override {
    return B >= 0 && S > 0 && H > 0 && D > 0 && dropout >= 0.0f && dropout < 1.0f;
  }
  void fused_attention_forward(T* context, T* stats, const T* qkv, const int32_t* mask, int B, int S, int H, int D,
                               float dropout, const DropoutKey& key) override {
    cpu::fused_attention_forward(context, stats, qkv, mask, B, S, H, D, dropout, key);
  }
  void fused_attention_backward(T* dqkv, const T* dcontext, const T* qkv, const T* context, const T* stats,
                                const int32_t* mask, int B, int S, int H, int D, float dropout,
                                const DropoutKey& key) override {
    cpu::fused_attention_backward(dqkv, dcontext, qkv, context, stats, mask, B, S, H, D, dropout, key);
  }

  void softmax_cross_entropy(T* loss, T* dlogits, int32_t* argmax, const T* logits, const int32_t* labels,
                             const T* grad_scale, int rows, int V) override {
    cpu::softmax_cross_entropy(loss, dlogits, argmax, logits, labels, grad_scale, rows, V);
  }
  void log_softmax(T* y, const T* x, int rows, int V) override { cpu::log_softmax(y, x, rows, V); }
  void sigmoid_cross_entropy(T* loss, T* dlogit, const T* logit, const int32_t* label, const T* grad_scale,
                             size_t n) override {
    cpu::sigmoid_cross_entropy(loss, dlogit, logit, label, grad_scale, n);
  }
  void gumbel_sample(int32_t* samples, const T* logits, const int32_t* disallow, int rows, int V, float temperature,
                     uint64_t seed, uint64_t step, uint64_t first_example, int rows_per_example) override {
    cpu::gumbel_sample(samples, logits, disallow, rows, V, temperature, seed, step, first_example, rows_per_example);
  }
  void replace_masked_tokens(int32_t* corrupted, int32_t* disc_label, const int32_t* original_ids,
                             const int32_t* input_mask, const int32_t* positions, const T* weights,
                             const int32_t* samples, int B, int S, int P) override {
    cpu::replace_masked_tokens(corrupted, disc_label, original_ids, input_mask, positions, weights, samples, B, S, P);
  }

  double sum_squares(const T* x, size_t n) override { return cpu::sum_squares(x, n); }
  void adamw_step(T* params, const T* grads, T* m, T* v, size_t n, float lr, float beta1, float beta2, float eps,
                  float weight_decay, long long t, float grad_scale, bool bias_correction) override {
    cpu::adamw_step(params, grads, m, v, n, lr, beta1, beta2, eps, weight_decay, t, grad_scale, bias_correction);
  }
  void adamw_step_runs(T* params, const T* grads, T* m, T* v, const typename Backend<T>::AdamWRun* runs,
                       size_t num_runs, float lr, float beta1, float beta2, float eps, long long t, float grad_scale,
                       bool bias_correction) override {
    cpu::adamw_step_runs(params, grads, m, v, runs, num_runs, lr, beta1, beta2, eps, t, grad_scale, bias_correction);
  }
  void lamb_step_runs(T* params, const T* grads, T* m, T* v, const typename Backend<T>::LambRun* runs, size_t num_runs,
                      float lr, float beta1, float beta2, float eps, long long t, float grad_scale) override {
    cpu::lamb_step_runs(params, grads, m, v, runs, num_runs, lr, beta1, beta2, eps, t, grad_scale);
  }

 private:
  static void copy_bytes(void* dst, const void* src, size_t bytes) {
    if (bytes != 0 && dst != src) std::memcpy(dst, src, bytes);
  }
};

}  // namespace

template <typename T>
std::unique_ptr<Backend<T>> make_cpu_backend() {
  // The kernels thread with OpenMP (OMP_NUM_THREADS) and split GEMMs themselves; OpenBLAS stays on
  // one thread so the two pools never compete (see kernels.h).
  cpu::detail::set_blas_single_threaded();
  return std::make_unique<CpuBackend<T>>();
}

template std::unique_ptr<Backend<float>> make_cpu_backend<float>();
template std::unique_ptr<Backend<double>> make_cpu_backend<double>();

}  // namespace electra
