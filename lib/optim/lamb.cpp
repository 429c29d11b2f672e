#include "lib/optim/lamb.h"

#include <cmath>

#include "lib/core/error.h"

namespace electra {

template <typename T>
Lamb<T>::Lamb(const OptimizerConfig& config, const ParameterLayout& layout, Backend<T>& backend)
    : MomentOptimizer<T>(config, backend, layout.total_size()) {
  // An empty call: a backend without LAMB fails here, at set-up, rather than at the first step.
  this->backend_.lamb_step_runs(nullptr, nullptr, nullptr, nullptr, nullptr, 0, 0.0f, 0.0f, 0.0f, 1.0f, 1, 1.0f);
  for (const ParameterSlice& v : layout.slices()) {
    // The slice's flag is the name rule (LayerNorm parameters and biases: false) whatever optim.weight_decay
    // is, as NVIDIA's exclusion lists are names.
    const float decay = v.weight_decay && config.weight_decay > 0 ? static_cast<float>(config.weight_decay) : 0.0f;
    runs_.push_back({v.offset, v.size, decay, v.weight_decay});
  }
}

template <typename T>
OptimizerStepStats Lamb<T>::step_with_norm(T* params, const T* grads, long long step, double grad_norm,
                                           double loss_scale, long long updates_before) {
  const OptimizerStepStats stats = this->step_stats(step, grad_norm, loss_scale);
  const OptimizerConfig& c = this->config_;
  this->backend_.lamb_step_runs(params, grads, this->m_.data(), this->v_.data(), runs_.data(), runs_.size(),
                                static_cast<float>(stats.lr), static_cast<float>(c.beta1), static_cast<float>(c.beta2),
                                static_cast<float>(c.eps), (updates_before < 0 ? step : updates_before) + 1,
                                static_cast<float>(stats.clip_factor / loss_scale));
  return stats;
}

template class Lamb<float>;
template class Lamb<double>;

}  // namespace electra
