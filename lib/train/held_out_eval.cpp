#include "lib/train/held_out_eval.h"

#include <cmath>
#include <iomanip>
#include <nlohmann/json.hpp>
#include <optional>
#include <sstream>
#include <utility>
#include <vector>

#include "lib/core/error.h"
#include "lib/core/log.h"
#include "lib/eval/evaluate.h"

namespace electra::train {

HeldOutEval::HeldOutEval(const TrainSettings& settings, const data::Loader& training_loader,
                         const dist::Communicator& comm)
    : settings_(settings), comm_(comm) {
  const std::string& eval_dir = settings.eval_dir;
  const data::LoaderOptions& training = settings.loader;
  if (settings.eval_every > 0 && !eval_dir.empty()) {
    schedule_ = Periodic{settings.eval_every, settings.total_steps};
    try {  // the same messages as data.dir's: they must say which directory is meant
      loader_ = eval::make_eval_loader(eval_dir, settings.global_batch, settings.seq_length, training.mask_prob,
                                       training.max_predictions, eval::kEvalSeed, comm, training.vocab_path);
    } catch (const std::exception& e) {
      fail("config key 'data.eval_dir': ", e.what());
    }
    if (loader_->vocab().hash() != training_loader.vocab().hash()) {
      fail("config key 'data.eval_dir': ", eval_dir, " was made with another vocabulary (", loader_->vocab().origin(),
           ") than data.dir (", training_loader.vocab().origin(), ")");
    }
    // Held-out data is small: a bad row fails set-up (exit 2), not the first evaluation hours later (exit 1).
    loader_->check_every_row();
    const std::optional<bool> eval_lower = loader_->dataset().lower_case();
    const std::optional<bool> training_lower = training_loader.dataset().lower_case();
    if (eval_lower && training_lower && *eval_lower != *training_lower) {
      fail("config key 'data.eval_dir': ", eval_dir, " was tokenized with lower_case ", *eval_lower ? "true" : "false",
           ", data.dir with lower_case ", *training_lower ? "true" : "false",
           " (their manifest.json files): the held-out text would not read as the training text did");
    }
  } else if ((settings.eval_every > 0 || !eval_dir.empty()) && comm.is_root()) {
    ELECTRA_LOG(warning) << "held-out evaluation is off: it needs both train.eval_every > 0 and data.eval_dir";
  }
}

void HeldOutEval::evaluate(PretrainerModel<float>& model, int64_t step, MetricsWriter* metrics,
                           TensorBoardWriter* tensorboard) {
  eval::EvalOptions options;
  options.max_batches = settings_.eval_batches;
  options.seed = eval::kEvalSeed;
  options.trim_padding = settings_.trim_padding;
  options.unigram_auc = settings_.eval_unigram_auc;
  const eval::EvalMetrics m = eval::evaluate(model, *loader_, comm_, options);
  if (!comm_.is_root()) return;
  nlohmann::json record = {{"step", step}};
  std::vector<std::pair<std::string, float>> scalars;
  std::ostringstream line;
  line << std::fixed << std::setprecision(4) << "eval step " << step;
  for (const auto& [name, value] : m.scalars("eval/")) {
    record[name] = std::isfinite(value) ? nlohmann::json(value) : nlohmann::json(nullptr);
    scalars.emplace_back(name, static_cast<float>(value));
    line << " | " << name.substr(5) << " " << value;
  }
  record["eval/examples"] = m.sums.examples;
  record["eval/seconds"] = m.seconds;
  line << " | " << m.sums.examples << " examples, " << std::setprecision(1) << m.seconds << " s";
  ELECTRA_LOG(info) << line.str();
  metrics->write(record);
  if (tensorboard) tensorboard->add_scalars(step, scalars);
}

}  // namespace electra::train
