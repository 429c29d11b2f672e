#include "lib/model/heads.h"

#include <vector>

#include "lib/core/error.h"

namespace electra {

// ---- MLM head ----

template <typename T>
MlmHead<T>::MlmHead(const MlmHeadSlots& slots, int hidden, int embedding_size, Activation act, float layer_norm_eps)
    : slots_(slots), hidden_(hidden), E_(embedding_size), act_(act), eps_(static_cast<W>(layer_norm_eps)) {}

template <typename T>
void MlmHead<T>::plan(Backend<T>& be, int B, int S, int P) {
  B_ = B;
  S_ = planned_S_ = S;
  P_ = P;
  const size_t M = static_cast<size_t>(B) * P;
  gathered_.reset(be, M * hidden_);
  pre_.reset(be, M * E_);
  act_out_.reset(be, M * E_);
  normed_.reset(be, M * E_);
  mean_.reset(be.wide(), M);
  rstd_.reset(be.wide(), M);
  logits_.reset(be, M * slots_.vocab_size);
  d_normed_.reset(be, M * E_);
  d_act_.reset(be, M * E_);
  d_pre_.reset(be, M * E_);
  d_gathered_.reset(be, M * hidden_);
}

template <typename T>
void MlmHead<T>::forward(Backend<T>& be, const T* params, const T* x, const int32_t* positions, int S) {
  ELECTRA_CHECK(B_ > 0, "MLM head: forward before plan");
  ELECTRA_CHECK(S <= planned_S_, "MLM head: forward over ", S, " positions, planned for ", planned_S_);
  S_ = S > 0 ? S : planned_S_;
  positions_ = positions;
  const int M = B_ * P_, V = slots_.vocab_size;
  be.gather_rows(gathered_.data(), x, positions, B_, S_, P_, hidden_);
  be.linear_forward(pre_.data(), gathered_.data(), params + slots_.dense.weight, params + slots_.dense.bias, M, hidden_,
                    E_);
  be.activation_forward(act_, act_out_.data(), pre_.data(), static_cast<size_t>(M) * E_);
  be.layernorm_forward(normed_.data(), mean_.data(), rstd_.data(), act_out_.data(), params + slots_.layer_norm.gamma,
                       params + slots_.layer_norm.beta, M, E_, eps_);
  // The output projection is tied to the word embeddings [V, E], used as a Linear weight.
  be.linear_forward(logits_.data(), normed_.data(), params + slots_.word, params + slots_.output_bias, M, E_, V);
}

template <typename T>
void MlmHead<T>::backward(Backend<T>& be, const T* params, W* grads, const T* dlogits, T* dx) {
  ELECTRA_CHECK(positions_ != nullptr, "MLM head: backward before forward");
  const int M = B_ * P_, V = slots_.vocab_size;
  be.linear_backward(d_normed_.data(), grads + slots_.word, grads + slots_.output_bias, dlogits, normed_.data(),
                     params + slots_.word, M, E_, V);
  be.layernorm_backward(d_act_.data(), grads + slots_.layer_norm.gamma, grads + slots_.layer_norm.beta,
                        d_normed_.data(), act_out_.data(), mean_.data(), rstd_.data(), params + slots_.layer_norm.gamma,
                        M, E_);
  be.activation_backward(act_, d_pre_.data(), d_act_.data(), pre_.data(), static_cast<size_t>(M) * E_);
  be.linear_backward(d_gathered_.data(), grads + slots_.dense.weight, grads + slots_.dense.bias, d_pre_.data(),
                     gathered_.data(), params + slots_.dense.weight, M, hidden_, E_);
  be.scatter_add_rows(dx, d_gathered_.data(), positions_, B_, S_, P_, hidden_);
}

// ---- sentence head ----

template <typename T>
SentenceHead<T>::SentenceHead(const SentenceHeadSlots& slots, int hidden, int num_classes)
    : slots_(slots), hidden_(hidden), classes_(num_classes) {}

template <typename T>
void SentenceHead<T>::plan(Backend<T>& be, int B, int S) {
  B_ = B;
  S_ = planned_S_ = S;
  zeros_.reset(be, B);
  const std::vector<int32_t> zeros(B, 0);
  be.copy_ints_from_host(zeros_.data(), zeros.data(), zeros.size());
  cls_.reset(be, static_cast<size_t>(B) * hidden_);
  pre_.reset(be, static_cast<size_t>(B) * hidden_);
  pooled_.reset(be, static_cast<size_t>(B) * hidden_);
  logits_.reset(be, static_cast<size_t>(B) * classes_);
  d_pooled_.reset(be, static_cast<size_t>(B) * hidden_);
  d_pre_.reset(be, static_cast<size_t>(B) * hidden_);
  d_cls_.reset(be, static_cast<size_t>(B) * hidden_);
}

template <typename T>
void SentenceHead<T>::forward(Backend<T>& be, const T* params, const T* x, int S) {
  ELECTRA_CHECK(B_ > 0, "sentence head: forward before plan");
  ELECTRA_CHECK(S <= planned_S_, "sentence head: forward over ", S, " positions, planned for ", planned_S_);
  S_ = S > 0 ? S : planned_S_;
  ran_ = true;
  be.gather_rows(cls_.data(), x, zeros_.data(), B_, S_, 1, hidden_);
  be.linear_forward(pre_.data(), cls_.data(), params + slots_.dense.weight, params + slots_.dense.bias, B_, hidden_,
                    hidden_);
  be.activation_forward(Activation::kTanh, pooled_.data(), pre_.data(), static_cast<size_t>(B_) * hidden_);
  be.linear_forward(logits_.data(), pooled_.data(), params + slots_.out_proj.weight, params + slots_.out_proj.bias, B_,
                    hidden_, classes_);
}

template <typename T>
void SentenceHead<T>::backward(Backend<T>& be, const T* params, W* grads, const T* dlogits, T* dx) {
  ELECTRA_CHECK(ran_, "sentence head: backward before forward");
  be.linear_backward(d_pooled_.data(), grads + slots_.out_proj.weight, grads + slots_.out_proj.bias, dlogits,
                     pooled_.data(), params + slots_.out_proj.weight, B_, hidden_, classes_);
  be.activation_backward(Activation::kTanh, d_pre_.data(), d_pooled_.data(), pre_.data(),
                         static_cast<size_t>(B_) * hidden_);
  be.linear_backward(d_cls_.data(), grads + slots_.dense.weight, grads + slots_.dense.bias, d_pre_.data(), cls_.data(),
                     params + slots_.dense.weight, B_, hidden_, hidden_);
  be.scatter_add_rows(dx, d_cls_.data(), zeros_.data(), B_, S_, 1, hidden_);
}

// ---- discriminator head ----

template <typename T>
DiscriminatorHead<T>::DiscriminatorHead(const DiscriminatorHeadSlots& slots, int hidden, Activation act)
    : slots_(slots), hidden_(hidden), act_(act) {}

template <typename T>
void DiscriminatorHead<T>::plan(Backend<T>& be, int rows) {
  rows_ = planned_rows_ = rows;
  const size_t n = static_cast<size_t>(rows) * hidden_;
  pre_.reset(be, n);
  act_out_.reset(be, n);
  logits_.reset(be, rows);
  d_act_.reset(be, n);
  d_pre_.reset(be, n);
}

template <typename T>
void DiscriminatorHead<T>::forward(Backend<T>& be, const T* params, const T* x, int rows) {
  ELECTRA_CHECK(planned_rows_ > 0, "discriminator head: forward before plan");
  ELECTRA_CHECK(rows <= planned_rows_, "discriminator head: forward over ", rows, " rows, planned for ", planned_rows_);
  rows_ = rows > 0 ? rows : planned_rows_;
  x_ = x;
  be.linear_forward(pre_.data(), x, params + slots_.dense.weight, params + slots_.dense.bias, rows_, hidden_, hidden_);
  be.activation_forward(act_, act_out_.data(), pre_.data(), static_cast<size_t>(rows_) * hidden_);
  be.linear_forward(logits_.data(), act_out_.data(), params + slots_.prediction.weight, params + slots_.prediction.bias,
                    rows_, hidden_, 1);
}

template <typename T>
void DiscriminatorHead<T>::backward(Backend<T>& be, const T* params, W* grads, const T* dlogits, T* dx) {
  ELECTRA_CHECK(x_ != nullptr, "discriminator head: backward before forward");
  be.linear_backward(d_act_.data(), grads + slots_.prediction.weight, grads + slots_.prediction.bias, dlogits,
                     act_out_.data(), params + slots_.prediction.weight, rows_, hidden_, 1);
  be.activation_backward(act_, d_pre_.data(), d_act_.data(), pre_.data(), static_cast<size_t>(rows_) * hidden_);
  be.linear_backward(dx, grads + slots_.dense.weight, grads + slots_.dense.bias, d_pre_.data(), x_,
                     params + slots_.dense.weight, rows_, hidden_, hidden_);
}

template class MlmHead<float>;
template class MlmHead<double>;
template class MlmHead<bfloat16>;
template class SentenceHead<float>;
template class SentenceHead<double>;
template class SentenceHead<bfloat16>;
template class DiscriminatorHead<float>;
template class DiscriminatorHead<double>;
template class DiscriminatorHead<bfloat16>;

}  // namespace electra
