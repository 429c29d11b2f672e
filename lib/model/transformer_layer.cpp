#include "lib/model/transformer_layer.h"

#include "lib/core/error.h"

namespace electra {

template <typename T>
void LayerScratch<T>::plan(Backend<T>& be, int B, int S, int hidden, int ffn, int heads, bool materialized_attention) {
  const size_t N = static_cast<size_t>(B) * S;
  tmp.reset(be, N * hidden);
  d_res1.reset(be, N * hidden);
  d_res2.reset(be, N * hidden);
  d_ln1.reset(be, N * hidden);
  d_context.reset(be, N * hidden);
  d_inter_act.reset(be, N * ffn);
  d_inter_pre.reset(be, N * ffn);
  d_qkv.reset(be, N * 3 * hidden);
  attention.reset(be, materialized_attention ? static_cast<size_t>(B) * heads * S * S : 0);
}

template <typename T>
TransformerLayer<T>::TransformerLayer(const TransformerLayerSlots& slots, const TransformerLayerShape& shape,
                                      Network network, int layer_index)
    : slots_(slots), shape_(shape), network_(network), layer_(layer_index) {
  if (shape.hidden % shape.num_heads != 0) {
    fail("transformer layer ", layer_index, ": hidden size ", shape.hidden, " not divisible by ", shape.num_heads,
         " heads");
  }
}

template <typename T>
void TransformerLayer<T>::plan(Backend<T>& be, int B, int S, bool recompute_activation, AttentionImpl attention) {
  B_ = B;
  S_ = planned_S_ = S;
  recompute_act_ = recompute_activation;
  const int H = shape_.num_heads, D = shape_.hidden / H;
  fused_attention_ = use_fused_attention(be, attention, B, S, H, D, shape_.attention_dropout);
  const size_t N = static_cast<size_t>(B) * S;
  const size_t C = shape_.hidden, F = shape_.intermediate;
  // Fused: [B,H,S] statistics instead of the [B,H,S,S] probabilities and keep bits.
  const size_t probs = fused_attention_ ? 0 : static_cast<size_t>(B) * H * S * S;
  qkv_.reset(be, N * 3 * C);
  probs_.reset(be, probs);
  keep_attention_.reset(be, probs);
  attention_stats_.reset(be.wide(), fused_attention_ ? static_cast<size_t>(B) * H * S : 0);
  context_.reset(be, N * C);
  keep1_.reset(be, N * C);
  res1_.reset(be, N * C);
  ln1_.reset(be, N * C);
  mean1_.reset(be.wide(), N);
  rstd1_.reset(be.wide(), N);
  inter_pre_.reset(be, N * F);
  inter_act_.reset(be, recompute_activation ? 0 : N * F);
  keep2_.reset(be, N * C);
  res2_.reset(be, N * C);
  out_.reset(be, N * C);
  mean2_.reset(be.wide(), N);
  rstd2_.reset(be.wide(), N);
}

template <typename T>
void TransformerLayer<T>::forward(Backend<T>& be, const T* params, const T* x, const int32_t* mask,
                                  const DropoutContext& dropout, LayerScratch<T>& scratch, int S) {
  ELECTRA_CHECK(B_ > 0, "transformer layer ", layer_, ": forward before plan");
  ELECTRA_CHECK(S <= planned_S_, "transformer layer ", layer_, ": forward over ", S, " positions, planned for ",
                planned_S_);
  S_ = S > 0 ? S : planned_S_;
  x_ = x;
  mask_ = mask;
  const int N = B_ * S_, C = shape_.hidden, F = shape_.intermediate, H = shape_.num_heads, D = C / H;
  const TransformerLayerSlots& p = slots_;
  hidden_rate_ = dropout.rate(shape_.hidden_dropout);
  attention_rate_ = dropout.rate(shape_.attention_dropout);
  const uint64_t per_example = static_cast<uint64_t>(S_) * C;
  const W eps = static_cast<W>(shape_.layer_norm_eps);

  // Self-attention block.
  be.linear_forward(qkv_.data(), x, params + p.qkv.weight, params + p.qkv.bias, N, C, 3 * C);
  attention_key_ = dropout.attention_key(dropout_lane(network_, layer_, DropoutSlot::kAttentionProbs), H, S_);
  if (fused_attention_) {
    be.fused_attention_forward(context_.data(), attention_stats_.data(), qkv_.data(), mask, B_, S_, H, D,
                               attention_rate_, attention_key_);
  } else {
    be.attention_forward(context_.data(), probs_.data(), keep_attention_.data(), qkv_.data(), mask, B_, S_, H, D,
                         attention_rate_, attention_key_);
  }
  be.linear_forward(scratch.tmp.data(), context_.data(), params + p.attention_output.weight,
                    params + p.attention_output.bias, N, C, C);
  // res1 = x + dropout(tmp); ln1 = LayerNorm(res1): one pass on a GPU.
  be.dropout_add_layernorm_forward(
      ln1_.data(), res1_.data(), keep1_.data(), mean1_.data(), rstd1_.data(), scratch.tmp.data(), x,
      params + p.attention_norm.gamma, params + p.attention_norm.beta, N, C, hidden_rate_,
      dropout.key(dropout_lane(network_, layer_, DropoutSlot::kAttentionOutput), per_example), eps);

  // Feed-forward block.
  be.linear_forward(inter_pre_.data(), ln1_.data(), params + p.intermediate.weight, params + p.intermediate.bias, N, C,
                    F);
  // act(inter_pre) is kept for the output dense's weight gradient, or (recompute_act_) computed again in
  // backward: d_inter_act is free during forward. Keeping it costs N x F floats per layer (240 MB for
  // ELECTRA-small at batch 32), recomputing ~1% of the step (docs/performance.md).
  T* inter_act = recompute_act_ ? scratch.d_inter_act.data() : inter_act_.data();
  be.activation_forward(shape_.act, inter_act, inter_pre_.data(), static_cast<size_t>(N) * F);
  be.linear_forward(scratch.tmp.data(), inter_act, params + p.output.weight, params + p.output.bias, N, F, C);
  be.dropout_add_layernorm_forward(
      out_.data(), res2_.data(), keep2_.data(), mean2_.data(), rstd2_.data(), scratch.tmp.data(), ln1_.data(),
      params + p.output_norm.gamma, params + p.output_norm.beta, N, C, hidden_rate_,
      dropout.key(dropout_lane(network_, layer_, DropoutSlot::kFfnOutput), per_example), eps);
}

template <typename T>
void TransformerLayer<T>::backward(Backend<T>& be, const T* params, W* grads, const T* dout, T* dx,
                                   LayerScratch<T>& s) {
  ELECTRA_CHECK(x_ != nullptr, "transformer layer ", layer_, ": backward before forward");
  const int N = B_ * S_, C = shape_.hidden, F = shape_.intermediate, H = shape_.num_heads, D = C / H;
  const size_t nc = static_cast<size_t>(N) * C;
  const TransformerLayerSlots& p = slots_;

  // Feed-forward block, output LayerNorm first.
  // d_res2 flows down the residual path, tmp into the dropped FFN output.
  be.layernorm_dropout_backward(s.d_res2.data(), s.tmp.data(), grads + p.output_norm.gamma, grads + p.output_norm.beta,
                                dout, res2_.data(), mean2_.data(), rstd2_.data(), params + p.output_norm.gamma,
                                keep2_.data(), N, C, hidden_rate_);
  const T* inter_act = inter_act_.data();
  if (recompute_act_) {
    // act(inter_pre) again, exactly as forward computed it, into d_inter_pre (activation_backward
    // overwrites it below, once the output dense no longer needs it).
    be.activation_forward(shape_.act, s.d_inter_pre.data(), inter_pre_.data(), static_cast<size_t>(N) * F);
    inter_act = s.d_inter_pre.data();
  }
  be.linear_backward(s.d_inter_act.data(), grads + p.output.weight, grads + p.output.bias, s.tmp.data(), inter_act,
                     params + p.output.weight, N, F, C);
  be.activation_backward(shape_.act, s.d_inter_pre.data(), s.d_inter_act.data(), inter_pre_.data(),
                         static_cast<size_t>(N) * F);
  be.linear_backward(s.d_ln1.data(), grads + p.intermediate.weight, grads + p.intermediate.bias, s.d_inter_pre.data(),
                     ln1_.data(), params + p.intermediate.weight, N, C, F);
  be.accumulate(s.d_ln1.data(), s.d_res2.data(), nc);  // residual path around the FFN

  // Self-attention block.
  be.layernorm_dropout_backward(s.d_res1.data(), s.tmp.data(), grads + p.attention_norm.gamma,
                                grads + p.attention_norm.beta, s.d_ln1.data(), res1_.data(), mean1_.data(),
                                rstd1_.data(), params + p.attention_norm.gamma, keep1_.data(), N, C, hidden_rate_);
  be.linear_backward(s.d_context.data(), grads + p.attention_output.weight, grads + p.attention_output.bias,
                     s.tmp.data(), context_.data(), params + p.attention_output.weight, N, C, C);
  if (fused_attention_) {
    be.fused_attention_backward(s.d_qkv.data(), s.d_context.data(), qkv_.data(), context_.data(),
                                attention_stats_.data(), mask_, B_, S_, H, D, attention_rate_, attention_key_);
  } else {
    be.attention_backward(s.d_qkv.data(), s.attention.data(), s.d_context.data(), qkv_.data(), probs_.data(),
                          keep_attention_.data(), mask_, B_, S_, H, D, attention_rate_);
  }
  be.linear_backward(dx, grads + p.qkv.weight, grads + p.qkv.bias, s.d_qkv.data(), x_, params + p.qkv.weight, N, C,
                     3 * C);
  be.accumulate(dx, s.d_res1.data(), nc);  // residual path around attention
}

template struct LayerScratch<float>;
template struct LayerScratch<double>;
template struct LayerScratch<bfloat16>;
template class TransformerLayer<float>;
template class TransformerLayer<double>;
template class TransformerLayer<bfloat16>;

}  // namespace electra
