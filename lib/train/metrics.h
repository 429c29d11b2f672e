// Training metrics as JSON lines: RUN_DIR/metrics.jsonl, one object per logged step, each line written
// with a single append (O_APPEND) so a crash leaves at most one torn last line.
#pragma once

#include <cstdint>
#include <filesystem>
#include <limits>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace electra::train {

// One metrics.jsonl line: the numbers logged at one step (electra-train: its log window's averages, made
// from the StepMetrics sums of step.h; `lr` and `grad_norm` are the window's last step's). NaN means "not measured" and
// is left out (non-finite values in `extra` become JSON null, since JSON has no NaN).
struct MetricsRecord {
  static constexpr double kUnset = std::numeric_limits<double>::quiet_NaN();
  int64_t step = 0;
  double loss = kUnset;
  double gen_loss = kUnset;
  double disc_loss = kUnset;
  double mlm_accuracy = kUnset;
  double disc_accuracy = kUnset;
  double lr = kUnset;
  double grad_norm = kUnset;
  double tokens_per_s = kUnset;
  nlohmann::json extra = nlohmann::json::object();  // more keys; numbers also go to TensorBoard

  // {"step": ..., "loss": ..., ...} without unset fields, then `extra`'s keys.
  nlohmann::json to_json() const;
  // (tag, value) pairs of the set numeric fields and numeric extras, in a stable order.
  std::vector<std::pair<std::string, double>> scalars() const;
};

class MetricsWriter {
 public:
  // Appends to RUN_DIR/metrics.jsonl (creating RUN_DIR). With `resume_step`, lines of later steps
  // (written after that checkpoint by the run that crashed, about to be written again) and a torn last
  // line are dropped first; the file is rewritten atomically. The file as it was is kept in
  // metrics.jsonl.abandoned[.N] when the run leaves a course (checkpoints past resume_step) or starts afresh
  // (resume_step 0) over lines. Without it only a torn last line is dropped.
  explicit MetricsWriter(const std::filesystem::path& run_dir, std::optional<int64_t> resume_step = std::nullopt);
  ~MetricsWriter();
  MetricsWriter(const MetricsWriter&) = delete;
  MetricsWriter& operator=(const MetricsWriter&) = delete;

  void write(const MetricsRecord& metrics);
  // Any JSON object as one line.
  void write(const nlohmann::json& record);

  const std::filesystem::path& path() const { return path_; }

 private:
  std::filesystem::path path_;
  int fd_ = -1;
};

}  // namespace electra::train
