#include "lib/train/run_checkpoints.h"

#include <chrono>
#include <iomanip>
#include <thread>
#include <utility>

#include "lib/core/error.h"
#include "lib/core/fnv1a.h"
#include "lib/core/log.h"
#include "lib/train/device.h"
#include "lib/train/step_profile.h"
#include "lib/train/trainer.h"

namespace electra::train {
namespace {

namespace fs = std::filesystem;

// A hash of the parameter bytes: equal on every rank when the parameters are bitwise equal.
int64_t parameter_fingerprint(const PretrainerModel<float>& model) {
  const std::vector<float> host = model.parameters_to_host();
  return static_cast<int64_t>(Fnv1a().add(host.data(), host.size() * sizeof(float)).value() >> 1);
}

}  // namespace

void check_parameters_agree(const PretrainerModel<float>& model, const dist::Communicator& comm, int64_t step,
                            const char* when) {
  const int64_t fingerprint = parameter_fingerprint(model);
  if (comm.allreduce_max(fingerprint) != comm.allreduce_min(fingerprint)) {
    fail("ranks hold different parameters ", when, " (step ", step, ", fingerprint ", fingerprint, " on rank ",
         comm.rank(), ")");
  }
}

RunCheckpoints::RunCheckpoints(const CheckpointParts& parts, const TrainSettings& settings, fs::path run_dir,
                               std::optional<bool> lower_case)
    : parts_(parts),
      settings_(settings),
      run_dir_(std::move(run_dir)),
      lower_case_(lower_case),
      files_(run_dir_ / "checkpoints", settings.keep_last, settings.keep_every),
      layout_(parts.model->layout().tensor_slices()),
      schedule_{settings.checkpoint_every, settings.total_steps} {}

std::optional<RunCheckpoints::Resumed> RunCheckpoints::resume(const std::string& resume_option) {
  std::optional<fs::path> resume_path;
  if (resume_option == "auto") {
    // The newest checkpoint whose tensors read back intact; a corrupt one (a flipped bit on disk) is skipped
    // with a warning, as truncated ones are. Every rank reads the same files, so all take the same one.
    const std::vector<CheckpointEntry> complete = files_.complete_newest_first();
    for (const CheckpointEntry& candidate : complete) {
      Resumed resumed{.state = {}, .path = candidate.path, .log_windows = nullptr};
      try {
        resume_from(resumed.path, resumed.state, resumed.log_windows);
        return resumed;
      } catch (const CorruptCheckpointError& e) {
        ELECTRA_LOG(warning) << "skipping checkpoint " << candidate.path.string() << ": " << e.what()
                             << "; trying an older one";
      }
    }
    if (!complete.empty()) {
      fail("run directory ", run_dir_.string(),
           ": every complete checkpoint is corrupt (the log names each); "
           "nothing to resume from. Move them aside to start afresh, or use another --output (nothing was "
           "overwritten)");
    }
    if (const std::vector<CheckpointEntry> damaged = files_.list(); !damaged.empty()) {
      // Starting afresh would write over the run's metrics and checkpoints as if they were not there.
      fail("run directory ", run_dir_.string(), " has ", damaged.size(), " checkpoint(s) (",
           damaged.front().path.filename().string(), damaged.size() > 1 ? " ... " : "",
           damaged.size() > 1 ? damaged.back().path.filename().string() : "",
           ") but none is complete and readable (the log names what is wrong with each): nothing to resume "
           "from. Move them aside to start this run afresh, resume a file with --resume PATH, or use another "
           "--output (nothing was overwritten)");
    }
  } else if (resume_option != "none" && !resume_option.empty()) {
    resume_path = resume_option;
  } else if (!files_.list().empty()) {
    fail("run directory ", run_dir_.string(), " already has checkpoints; use --resume auto to continue it or ",
         "another --output (nothing was overwritten)");
  }
  if (!resume_path) return std::nullopt;
  Resumed resumed{.state = {}, .path = *resume_path, .log_windows = nullptr};
  resume_from(resumed.path, resumed.state, resumed.log_windows);
  return resumed;
}

void RunCheckpoints::resume_from(const fs::path& path, TrainingState& state_out, nlohmann::json& log_windows_out) {
  CheckpointFile file = CheckpointFile::open(path);
  const nlohmann::json& saved = file.config();
  if (!saved.contains("model")) fail("checkpoint ", path.string(), " has no model configuration");
  check_vocabulary(file);
  if (const auto diff = config_differences(saved.at("model"), parts_.config->at("model"), "model"); !diff.empty()) {
    fail("checkpoint ", path.string(), " was trained with another model configuration: ", diff.front());
  }
  Optimizer<float>& optimizer = *parts_.optimizer;
  // The moments are the optimizer's own state: AdamW's and LAMB's mean different updates. A checkpoint from
  // before the record is AdamW's (the only optimizer then).
  const std::string saved_optimizer = file.state().value("optimizer", std::string("adamw"));
  if (saved_optimizer != optimizer.name()) {
    fail("checkpoint ", path.string(), " was written by optimizer ", saved_optimizer,
         " but config key 'optim.name' is ", optimizer.name(),
         ": its moments belong to the other optimizer. Resume with --set optim.name=", saved_optimizer,
         ", or start a new run (another --output)");
  }
  std::vector<float> host(parts_.model->layout().total_size());
  file.read_into(Section::kParams, layout_, host);
  parts_.model->parameters_from_host(host);
  const bool has_moments = file.has_section(Section::kAdamM) && file.has_section(Section::kAdamV);
  if (has_moments) {
    file.read_into(Section::kAdamM, layout_, host);
    parts_.backend->copy_from_host(optimizer.first_moment(), host.data(), host.size());
    file.read_into(Section::kAdamV, layout_, host);
    parts_.backend->copy_from_host(optimizer.second_moment(), host.data(), host.size());
  }
  const nlohmann::json& state = file.state();
  state_out.step = state.at("step").get<int64_t>();
  // Lowering train.steps below a run's step would train nothing, end with exit 0 and no final checkpoint,
  // and leave config.json saying fewer steps than the checkpoints hold: refused before anything is written.
  if (state_out.step > settings_.total_steps) {
    fail("checkpoint ", path.string(), " is at step ", state_out.step, ", past config key 'train.steps' (",
         settings_.total_steps, "): nothing would be trained. Set train.steps to ", state_out.step,
         " or more to go on (nothing was written)");
  }
  warn_of_changed_settings(path, saved);  // after the refusals: a refused resume does not "continue"
  // Before data.use_next_sentence_label, NVIDIA shards' labels always added the next-sentence loss.
  if (parts_.comm->is_root() && !saved.contains(dotted_to_pointer("data.use_next_sentence_label")) &&
      state.value("data", nlohmann::json::object()).value("format", "") == "nvidia" &&
      !parts_.config->at("data.use_next_sentence_label").get<bool>()) {
    ELECTRA_LOG(warning) << "checkpoint " << path.string() << " is from before data.use_next_sentence_label: its "
                         << "run trained the NVIDIA shards' next-sentence loss, which this run leaves out; set "
                         << "data.use_next_sentence_label=true to continue it exactly";
  }
  log_windows_out = state.value("log_windows", nlohmann::json());
  if (!log_windows_out.is_null()) {
    try {
      if (!log_windows_out.is_array()) fail("not an array");
      LogWindow check(Periodic{});
      for (const nlohmann::json& w : log_windows_out) check.restore(w);
    } catch (const Error& e) {
      fail("checkpoint ", path.string(), ": state log_windows: ", e.what());
    }
  }
  state_out.tokens_seen = state.value("tokens_seen", int64_t{0});
  state_out.skipped_steps = state.value("skipped_steps", int64_t{0});
  state_out.skipped_in_a_row = state.value("skipped_in_a_row", int64_t{0});
  state_out.last_lr = state.value("last_lr", 0.0);
  state_out.last_grad_norm = state.value("last_grad_norm", 0.0);
  state_out.parallel_chunks = state.value("parallel_chunks", 0);
  if (const nlohmann::json by_rank = state.value("rank_parallel_chunks", nlohmann::json());
      by_rank.is_array() && by_rank.size() == static_cast<size_t>(parts_.comm->world_size())) {
    const nlohmann::json& mine = by_rank.at(static_cast<size_t>(parts_.comm->rank()));
    if (!mine.is_number_integer()) fail("checkpoint ", path.string(), ": state rank_parallel_chunks: not integers");
    state_out.parallel_chunks = mine.get<int>();
  }
  if (const nlohmann::json streak = state.value("collapse_streak", nlohmann::json()); !streak.is_null()) {
    try {
      state_out.collapse_streak = {.windows = streak.at("windows").get<int>(),
                                   .start_step = streak.at("start_step").get<int64_t>(),
                                   .reported = streak.at("reported").get<bool>()};
    } catch (const nlohmann::json::exception& e) {
      fail("checkpoint ", path.string(), ": state collapse_streak: ", e.what());
    }
  }
  LossScaler& loss_scaler = *parts_.loss_scaler;
  if (loss_scaler.restore(state)) {
    ELECTRA_LOG(info) << "loss scale " << loss_scaler.scale() << " (" << loss_scaler.good_steps()
                      << " finite steps since its last change) from the checkpoint";
  }
  const uint64_t saved_seed = state.value("seed", settings_.seed);
  if (saved_seed != settings_.seed) {
    ELECTRA_LOG(warning) << "checkpoint seed " << saved_seed << " differs from train.seed " << settings_.seed
                         << ": masking, dropout and sampling continue with train.seed";
  }
  const int saved_batch =
      saved.contains("train") ? saved["train"].value("batch_size", settings_.global_batch) : settings_.global_batch;
  if (saved_batch != settings_.global_batch) {
    ELECTRA_LOG(warning) << "checkpoint global batch " << saved_batch << " differs from train.batch_size "
                         << settings_.global_batch << ": the data order continues, but not exactly as before";
  }
  // Other shards (same vocabulary) are allowed, but the loader's position then means other examples.
  const nlohmann::json saved_data = state.value("data", nlohmann::json());
  const nlohmann::json data = parts_.loader->dataset().identity();
  if (parts_.comm->is_root() && saved_data.is_object() && saved_data != data) {
    std::string changed;
    for (const auto& [key, value] : data.items()) {
      if (saved_data.contains(key) && saved_data.at(key) != value)
        changed += (changed.empty() ? "" : ", ") + key + " " + saved_data.at(key).dump() + " -> " + value.dump();
    }
    ELECTRA_LOG(warning) << "checkpoint " << path.string() << " was trained on other shards than data.dir "
                         << settings_.loader.data_dir << " (" << changed
                         << "): its data position (epoch and examples read) goes on over these";
  }
  data::LoaderState position = data::LoaderState::from_json(file.loader());
  if (const uint64_t examples = parts_.loader->num_examples(); position.cursor > examples) {
    // Other shards, fewer examples than the checkpoint's epoch had read: that epoch is over here.
    if (parts_.comm->is_root()) {
      ELECTRA_LOG(warning) << "checkpoint " << path.string() << " had read " << position.cursor
                           << " examples of its epoch " << position.epoch << ", more than the " << examples
                           << " of data.dir " << settings_.loader.data_dir << ": training goes on with epoch "
                           << position.epoch + 1;
    }
    position.cursor = examples;  // the loader starts the next epoch at its next batch
  }
  parts_.loader->restore(position);
  last_saved_step_ = state_out.step;
  ELECTRA_LOG(info) << "resumed from " << path.string() << " at step " << state_out.step
                    << (has_moments ? "" : " (no optimizer moments in the file: they start at zero)");
  if (parts_.comm->is_root() && state_out.step == settings_.total_steps) {
    ELECTRA_LOG(info) << "the run is complete (train.steps " << settings_.total_steps
                      << "): nothing is left to train; set train.steps higher to go on";
  }
}

// The settings that decide the updates from here on (the learning-rate schedule, the optimizer, the
// masking), where they differ from the checkpoint's: the run goes on with its own values, allowed (a run
// may be lengthened), but then it no longer continues exactly as the checkpointed run would have.
// train.seed and train.batch_size have warnings of their own.
void RunCheckpoints::warn_of_changed_settings(const fs::path& path, const nlohmann::json& saved) const {
  if (!parts_.comm->is_root()) return;
  std::string changed;
  for (const char* key : {"train.steps", "optim", "data.mask_prob", "data.shuffle", "data.use_next_sentence_label"}) {
    const nlohmann::json::json_pointer pointer = dotted_to_pointer(key);
    if (!saved.contains(pointer)) continue;  // a checkpoint from before the key
    for (const std::string& difference : config_differences(saved.at(pointer), parts_.config->at(key), key))
      changed += (changed.empty() ? "" : "; ") + difference;
  }
  if (changed.empty()) return;
  ELECTRA_LOG(warning) << "resuming " << path.string() << " with settings that differ from its own: " << changed
                       << ". The run continues with this run's values (the learning rate follows train.steps and "
                       << "optim.*), not exactly as the checkpointed run would have";
}

// The checkpoint's record of the vocabulary and tokenizer options it was trained with (state "vocab" and
// "tokenizer") against the training data's: another vocabulary of the same size would pass every shape
// check and silently relabel every token id.
void RunCheckpoints::check_vocabulary(const CheckpointFile& file) const {
  const nlohmann::json& state = file.state();
  const text::Vocab& vocab = parts_.loader->vocab();
  if (!state.contains("vocab")) {
    if (parts_.comm->is_root()) {
      ELECTRA_LOG(warning) << "checkpoint " << file.path().string()
                           << " records no vocabulary (written by an older electra-train): cannot check that the "
                           << "training data's " << vocab.origin() << " (vocab_hash " << vocab.hash()
                           << ") is the one it was trained with";
    }
    return;
  }
  uint64_t saved_hash = 0, saved_size = 0;
  try {
    saved_hash = state.at("vocab").at("hash").get<uint64_t>();
    saved_size = state.at("vocab").at("size").get<uint64_t>();
  } catch (const nlohmann::json::exception& e) {
    fail("checkpoint ", file.path().string(),
         ": cannot read its vocabulary record (state vocab.hash, vocab.size): ", e.what());
  }
  if (saved_hash != vocab.hash() || saved_size != vocab.size()) {
    fail("checkpoint ", file.path().string(), " was trained with another vocabulary (vocab_hash ", saved_hash, ", ",
         saved_size, " tokens) than the training data's ", vocab.origin(), " (vocab_hash ", vocab.hash(), ", ",
         vocab.size(), " tokens): token ids would mean different words");
  }
  const nlohmann::json saved_lower =
      state.contains("tokenizer") ? state.at("tokenizer").value("lower_case", nlohmann::json()) : nlohmann::json();
  if (saved_lower.is_boolean() && lower_case_ && saved_lower.get<bool>() != *lower_case_) {
    fail("checkpoint ", file.path().string(),
         " was trained on text tokenized with tokenizer.lower_case = ", saved_lower.dump(),
         ", but the training data's manifest says ", *lower_case_ ? "true" : "false");
  }
}

void RunCheckpoints::save(const TrainingState& state, const LogWindow& window) {
  if (last_saved_step_ == state.step) return;
  const dist::Communicator& comm = *parts_.comm;
  // Data parallelism is only right while every rank holds the same weights; a checkpoint is the moment
  // to prove it (one allreduce of a hash).
  if (state.step == settings_.faults.hang_checkpoint_step) {
    ELECTRA_LOG(warning) << "debug.hang_checkpoint_step: rank " << comm.rank()
                         << " stops making progress in the checkpoint after step " << state.step;
    std::this_thread::sleep_for(std::chrono::hours(1));
  }
  check_parameters_agree(*parts_.model, comm, state.step, "at a checkpoint");
  const std::vector<std::string> windows = comm.gather_strings(window.state().dump());
  // Loader state is global and identical on every rank, so rank 0 writes it alone.
  if (comm.is_root()) {
    if (!temp_files_removed_) {  // the partial files of a save a crash or a kill interrupted
      temp_files_removed_ = true;
      if (const int removed = files_.remove_temp_files(); removed > 0) {
        ELECTRA_LOG(info) << "removed " << removed << " temporary file(s) an interrupted save left in "
                          << files_.dir().string();
      }
    }
    const size_t n = parts_.model->layout().total_size();
    std::vector<float> params = parts_.model->parameters_to_host();
    std::vector<float> m(n), v(n);
    parts_.backend->copy_to_host(m.data(), parts_.optimizer->first_moment(), n);
    parts_.backend->copy_to_host(v.data(), parts_.optimizer->second_moment(), n);
    CheckpointContent content;
    content.layout = layout_;
    content.params = params;
    content.adam_m = m;
    content.adam_v = v;
    content.state = {{"step", state.step},
                     {"tokens_seen", state.tokens_seen},
                     {"seed", settings_.seed},
                     {"skipped_steps", state.skipped_steps},
                     {"skipped_in_a_row", state.skipped_in_a_row},
                     {"last_lr", state.last_lr},
                     {"last_grad_norm", state.last_grad_norm},
                     {"parallel_chunks", state.parallel_chunks},
                     {"rank_parallel_chunks", state.rank_parallel_chunks},
                     {"world_size", comm.world_size()},
                     {"optimizer", parts_.optimizer->name()}};  // optim.name: checked on resume
    content.state.update(parts_.loss_scaler->state());          // loss_scale, loss_scale_mode, loss_scale_good_steps
    content.state["collapse_streak"] = {{"windows", state.collapse_streak.windows},
                                        {"start_step", state.collapse_streak.start_step},
                                        {"reported", state.collapse_streak.reported}};
    content.state["log_windows"] = nlohmann::json::array();
    for (const std::string& w : windows) content.state["log_windows"].push_back(nlohmann::json::parse(w));
    // What the token ids mean: checked on resume (check_vocabulary).
    const text::Vocab& vocab = parts_.loader->vocab();
    content.state["vocab"] = {{"hash", vocab.hash()}, {"size", vocab.size()}};
    content.state["tokenizer"] = {{"lower_case", lower_case_ ? nlohmann::json(*lower_case_) : nlohmann::json()}};
    // What the loader's position counts in (compared on resume): the shards' counts and list, not their path.
    content.state["data"] = parts_.loader->dataset().identity();
    content.loader = parts_.loader->state().to_json();
    content.config = parts_.config->json();
    const auto start = std::chrono::steady_clock::now();
    const fs::path path = files_.save(content);
    ELECTRA_LOG(info) << "checkpoint " << path.string() << " (" << std::fixed << std::setprecision(2)
                      << seconds_since(start) << " s)";
  }
  // Nobody runs ahead of a checkpoint that is still being written: a stop right after must find it.
  comm.barrier();
  last_saved_step_ = state.step;
  if (const std::string memory = device_memory_summary(*parts_.backend); !memory.empty()) {
    ELECTRA_LOG(info) << memory << " (at a checkpoint)";
  }
}

}  // namespace electra::train
