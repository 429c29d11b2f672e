#include "lib/optim/adamw.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <set>
#include <string>

#include "lib/core/error.h"

namespace electra {

namespace {

template <typename V>
void read(const nlohmann::json& node, const char* key, V& out) {
  if (!node.contains(key)) return;
  const nlohmann::json& value = node.at(key);
  if constexpr (std::is_same_v<V, std::string>) {
    if (!value.is_string()) fail("config key 'optim.", key, "': expected a string, got ", value.dump());
  } else if constexpr (std::is_same_v<V, bool>) {
    if (!value.is_boolean()) fail("config key 'optim.", key, "': expected true/false, got ", value.dump());
  } else if constexpr (std::is_integral_v<V>) {
    if (!value.is_number_integer()) fail("config key 'optim.", key, "': expected an integer, got ", value.dump());
    // An unsigned value past the signed range would wrap (2^64 - 1 read as -1).
    if (value.is_number_unsigned() && value.get<uint64_t>() > static_cast<uint64_t>(std::numeric_limits<V>::max()))
      fail("config key 'optim.", key, "': ", value.dump(), " is too large");
  } else {
    if (!value.is_number()) fail("config key 'optim.", key, "': expected a number, got ", value.dump());
    // The optimizer computes in float: a value that float cannot hold would be infinity in every step.
    if (!std::isfinite(static_cast<float>(value.get<double>())))
      fail("config key 'optim.", key, "': ", value.dump(), " is not a finite float");
  }
  out = value.get<V>();
}

}  // namespace

OptimizerConfig optimizer_config_from_json(const nlohmann::json& optim, long long total_steps) {
  static const std::set<std::string> keys = {"name",      "lr",  "warmup_steps", "decay_power", "beta1",
                                             "beta2",     "eps", "weight_decay", "clip_norm",   "bias_correction",
                                             "loss_scale"};
  if (!optim.is_object()) fail("config section 'optim' must be a JSON object");
  for (const auto& [key, value] : optim.items()) {
    if (!keys.count(key)) fail("unknown config key 'optim.", key, "'");
  }
  OptimizerConfig c;
  read(optim, "name", c.name);
  read(optim, "lr", c.lr);
  read(optim, "warmup_steps", c.warmup_steps);
  read(optim, "decay_power", c.decay_power);
  read(optim, "beta1", c.beta1);
  read(optim, "beta2", c.beta2);
  read(optim, "eps", c.eps);
  read(optim, "weight_decay", c.weight_decay);
  read(optim, "clip_norm", c.clip_norm);
  read(optim, "bias_correction", c.bias_correction);
  if (optim.contains("loss_scale")) c.loss_scale = loss_scale_config_from_json(optim.at("loss_scale"));
  c.total_steps = total_steps;
  if (c.name != "adamw" && c.name != "lamb") fail("config key 'optim.name' must be adamw or lamb, got '", c.name, "'");
  if (!(c.lr >= 0)) fail("config key 'optim.lr' must be >= 0, got ", c.lr);
  if (c.warmup_steps < 0) fail("config key 'optim.warmup_steps' must be >= 0, got ", c.warmup_steps);
  if (!(c.decay_power >= 0)) fail("config key 'optim.decay_power' must be >= 0, got ", c.decay_power);
  // Judged as the float the step computes with: 1e-50 is 0 there, and 0.99999999999 is 1.
  if (!(c.beta1 >= 0 && static_cast<float>(c.beta1) < 1.0f))
    fail("config key 'optim.beta1' must be in [0, 1) as a float, got ", c.beta1);
  if (!(c.beta2 >= 0 && static_cast<float>(c.beta2) < 1.0f))
    fail("config key 'optim.beta2' must be in [0, 1) as a float, got ", c.beta2);
  if (!(static_cast<float>(c.eps) > 0.0f)) fail("config key 'optim.eps' must be > 0 as a float, got ", c.eps);
  if (!(c.weight_decay >= 0)) fail("config key 'optim.weight_decay' must be >= 0, got ", c.weight_decay);
  if (std::isnan(c.clip_norm)) fail("config key 'optim.clip_norm' is NaN");
  if (total_steps <= 0) fail("optimizer: total steps (train.steps) must be positive, got ", total_steps);
  return c;
}

nlohmann::json to_json(const OptimizerConfig& c) {
  return nlohmann::json{{"name", c.name},
                        {"lr", c.lr},
                        {"warmup_steps", c.warmup_steps},
                        {"decay_power", c.decay_power},
                        {"beta1", c.beta1},
                        {"beta2", c.beta2},
                        {"eps", c.eps},
                        {"weight_decay", c.weight_decay},
                        {"clip_norm", c.clip_norm},
                        {"bias_correction", c.bias_correction},
                        {"loss_scale", to_json(c.loss_scale)}};
}

double learning_rate(const OptimizerConfig& c, long long step) {
  const double T = static_cast<double>(c.total_steps);
  const double t = static_cast<double>(std::clamp<long long>(step, 0, c.total_steps));
  double lr = c.lr * std::pow(1.0 - t / T, c.decay_power);
  if (c.warmup_steps > 0) lr *= std::min(1.0, static_cast<double>(step) / static_cast<double>(c.warmup_steps));
  return lr;
}

double clip_factor(double grad_norm, double clip_norm) {
  if (!(clip_norm > 0)) return 1.0;
  return clip_norm / std::max(grad_norm, clip_norm);
}

template <typename T>
MomentOptimizer<T>::MomentOptimizer(const OptimizerConfig& config, Backend<T>& backend, size_t size)
    : config_(config), backend_(backend), size_(size) {
  m_.reset(backend_, size_);
  v_.reset(backend_, size_);
  reset_moments();
}

template <typename T>
void MomentOptimizer<T>::reset_moments() {
  backend_.fill(m_.data(), size_, T(0));
  backend_.fill(v_.data(), size_, T(0));
}

template <typename T>
double MomentOptimizer<T>::gradient_norm(const T* grads) {
  return std::sqrt(backend_.sum_squares(grads, size_));
}

template <typename T>
OptimizerStepStats MomentOptimizer<T>::step(T* params, const T* grads, long long step) {
  return this->step_with_norm(params, grads, step, gradient_norm(grads));
}

template <typename T>
OptimizerStepStats MomentOptimizer<T>::step_stats(long long step, double grad_norm, double loss_scale) const {
  ELECTRA_CHECK(loss_scale > 0 && std::isfinite(loss_scale), this->name(), " step: loss scale ", loss_scale,
                " must be positive and finite");
  OptimizerStepStats stats;
  stats.lr = learning_rate(config_, step);
  stats.grad_norm = grad_norm;
  stats.clip_factor = clip_factor(grad_norm, config_.clip_norm);
  return stats;
}

template <typename T>
AdamW<T>::AdamW(const OptimizerConfig& config, const ParameterLayout& layout, Backend<T>& backend)
    : MomentOptimizer<T>(config, backend, layout.total_size()) {
  for (const ParameterSlice& v : layout.slices()) {
    const bool decay = v.weight_decay && config.weight_decay > 0;
    if (!runs_.empty() && runs_.back().decay == decay && runs_.back().offset + runs_.back().size == v.offset) {
      runs_.back().size += v.size;
    } else {
      runs_.push_back({v.offset, v.size, decay});
    }
  }
}

template <typename T>
OptimizerStepStats AdamW<T>::step_with_norm(T* params, const T* grads, long long step, double grad_norm,
                                            double loss_scale, long long updates_before) {
  const OptimizerStepStats stats = this->step_stats(step, grad_norm, loss_scale);
  const OptimizerConfig& c = this->config_;
  // One call for all runs (weights and biases alternate: hundreds of runs), the same numbers as one
  // adamw_step per run; the CPU backend then uses one parallel region instead of one per run.
  std::vector<typename Backend<T>::AdamWRun> runs;
  runs.reserve(runs_.size());
  for (const Run& r : runs_) runs.push_back({r.offset, r.size, r.decay ? static_cast<float>(c.weight_decay) : 0.0f});
  this->backend_.adamw_step_runs(params, grads, this->m_.data(), this->v_.data(), runs.data(), runs.size(),
                                 static_cast<float>(stats.lr), static_cast<float>(c.beta1), static_cast<float>(c.beta2),
                                 static_cast<float>(c.eps), (updates_before < 0 ? step : updates_before) + 1,
                                 static_cast<float>(stats.clip_factor / loss_scale), c.bias_correction);
  return stats;
}

template class MomentOptimizer<float>;
template class MomentOptimizer<double>;
template class AdamW<float>;
template class AdamW<double>;

}  // namespace electra
