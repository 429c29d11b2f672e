#include "lib/model/embeddings.h"

#include "lib/core/error.h"

namespace electra {

template <typename T>
Embeddings<T>::Embeddings(const EmbeddingSlots& slots, int embedding_size, int hidden_size, float dropout, float eps,
                          uint32_t dropout_lane)
    : slots_(slots),
      E_(embedding_size),
      hidden_(hidden_size),
      dropout_(dropout),
      eps_(static_cast<W>(eps)),
      lane_(dropout_lane) {
  if (slots_.has_project != (E_ != hidden_)) {
    fail("embeddings: embeddings_project must exist exactly when embedding_size (", E_, ") != hidden_size (", hidden_,
         ")");
  }
}

template <typename T>
void Embeddings<T>::plan(Backend<T>& be, int B, int S) {
  B_ = B;
  S_ = planned_S_ = S;
  const size_t n = static_cast<size_t>(B) * S;
  sum_.reset(be, n * E_);
  normed_.reset(be, n * E_);
  mean_.reset(be.wide(), n);
  rstd_.reset(be.wide(), n);
  dropped_.reset(be, n * E_);
  keep_.reset(be, n * E_);
  projected_.reset(be, slots_.has_project ? n * hidden_ : 0);
  d_dropped_.reset(be, slots_.has_project ? n * E_ : 0);
  d_normed_.reset(be, n * E_);
  d_sum_.reset(be, n * E_);
}

template <typename T>
void Embeddings<T>::forward(Backend<T>& be, const T* params, const int32_t* ids, const int32_t* type_ids,
                            const int32_t* position_ids, const DropoutContext& dropout, int S) {
  ELECTRA_CHECK(B_ > 0, "embeddings: forward before plan");
  ELECTRA_CHECK(S <= planned_S_, "embeddings: forward over ", S, " positions, planned for ", planned_S_);
  S_ = S > 0 ? S : planned_S_;
  ids_ = ids;
  type_ids_ = type_ids;
  position_ids_ = position_ids;
  const int N = B_ * S_;
  const size_t n = static_cast<size_t>(N) * E_;
  be.embedding_forward(sum_.data(), ids, type_ids, position_ids, params + slots_.word, params + slots_.position,
                       params + slots_.type, B_, S_, E_);
  be.layernorm_forward(normed_.data(), mean_.data(), rstd_.data(), sum_.data(), params + slots_.layer_norm.gamma,
                       params + slots_.layer_norm.beta, N, E_, eps_);
  used_rate_ = dropout.rate(dropout_);
  be.dropout_forward(dropped_.data(), keep_.data(), normed_.data(), n, used_rate_,
                     dropout.key(lane_, static_cast<uint64_t>(S_) * E_));
  if (slots_.has_project) {
    const LinearSlots& p = slots_.project;
    be.linear_forward(projected_.data(), dropped_.data(), params + p.weight, params + p.bias, N, E_, hidden_);
  }
}

template <typename T>
void Embeddings<T>::backward(Backend<T>& be, const T* params, W* grads, const T* dout) {
  ELECTRA_CHECK(ids_ != nullptr, "embeddings: backward before forward");
  const int N = B_ * S_;
  const size_t n = static_cast<size_t>(N) * E_;
  const T* d = dout;
  if (slots_.has_project) {
    const LinearSlots& p = slots_.project;
    be.linear_backward(d_dropped_.data(), grads + p.weight, grads + p.bias, dout, dropped_.data(), params + p.weight, N,
                       E_, hidden_);
    d = d_dropped_.data();
  }
  be.dropout_backward(d_normed_.data(), d, keep_.data(), n, used_rate_);
  be.layernorm_backward(d_sum_.data(), grads + slots_.layer_norm.gamma, grads + slots_.layer_norm.beta,
                        d_normed_.data(), sum_.data(), mean_.data(), rstd_.data(), params + slots_.layer_norm.gamma, N,
                        E_);
  be.embedding_backward(grads + slots_.word, grads + slots_.position, grads + slots_.type, d_sum_.data(), ids_,
                        type_ids_, position_ids_, B_, S_, E_);
}

template class Embeddings<float>;
template class Embeddings<double>;
template class Embeddings<bfloat16>;

}  // namespace electra
