#include "lib/optim/optimizer.h"

#include "lib/core/error.h"
#include "lib/optim/adamw.h"
#include "lib/optim/lamb.h"

namespace electra {

template <typename T>
std::unique_ptr<Optimizer<T>> make_optimizer(const OptimizerConfig& config, const ParameterLayout& layout,
                                             Backend<T>& backend) {
  if (config.name == "adamw") return std::make_unique<AdamW<T>>(config, layout, backend);
  if (config.name == "lamb") return std::make_unique<Lamb<T>>(config, layout, backend);
  fail("config key 'optim.name' must be adamw or lamb, got '", config.name, "'");
}

template std::unique_ptr<Optimizer<float>> make_optimizer(const OptimizerConfig&, const ParameterLayout&,
                                                          Backend<float>&);
template std::unique_ptr<Optimizer<double>> make_optimizer(const OptimizerConfig&, const ParameterLayout&,
                                                           Backend<double>&);

}  // namespace electra
