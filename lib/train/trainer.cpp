#include "lib/train/trainer.h"

#include <omp.h>
#include <sched.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iomanip>
#include <memory>
#include <optional>
#include <span>
#include <sstream>
#include <thread>

#include "data_pipeline/loader/loader.h"
#include "data_pipeline/loader/masking.h"
#include "lib/backend/backend.h"
#include "lib/core/atomic_file.h"
#include "lib/core/batch.h"
#include "lib/core/error.h"
#include "lib/core/log.h"
#include "lib/dist/gradient_transport.h"
#include "lib/dist/signals.h"
#include "lib/dist/watchdog.h"
#include "lib/eval/evaluate.h"
#include "lib/interop/hf_import.h"
#include "lib/model/config.h"
#include "lib/model/pretrainer.h"
#include "lib/optim/adamw.h"
#include "lib/optim/loss_scaler.h"
#include "lib/optim/optimizer.h"
#include "lib/train/collapse_check.h"
#include "lib/train/device.h"
#include "lib/train/held_out_eval.h"
#include "lib/train/log_window.h"
#include "lib/train/metrics.h"
#include "lib/train/rank_reducer.h"
#include "lib/train/run_checkpoints.h"
#include "lib/train/run_lock.h"
#include "lib/train/step.h"
#include "lib/train/step_profile.h"
#include "lib/train/tensorboard.h"
#include "lib/train/train_settings.h"

extern "C" void openblas_set_num_threads(int num_threads);

namespace electra::train {
namespace {

using Clock = std::chrono::steady_clock;
namespace fs = std::filesystem;

std::string format_duration(double seconds) {
  if (!std::isfinite(seconds) || seconds < 0) return "?";
  const long long s = static_cast<long long>(seconds + 0.5);
  std::ostringstream out;
  out << s / 3600 << ":" << std::setw(2) << std::setfill('0') << (s / 60) % 60 << ":" << std::setw(2)
      << std::setfill('0') << s % 60;
  return out.str();
}

// Per-rank threads: the machine's cores shared among the ranks on this node, unless set.
int choose_threads(int configured, const dist::Communicator& comm) {
  if (configured > 0) return configured;
  const int cores = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  return std::max(1, cores / std::max(1, comm.local_size()));
}

// CPUs this process may run on (0: unknown). mpirun binds each rank to one core by default (2 ranks or
// fewer), and threads bound to fewer CPUs than there are threads take turns on them.
int allowed_cpu_count() {
  cpu_set_t cpus;
  CPU_ZERO(&cpus);
  return sched_getaffinity(0, sizeof(cpus), &cpus) == 0 ? CPU_COUNT(&cpus) : 0;
}

// --output must be a directory this process can create or write into: checked at set-up, creating
// nothing (the directory itself when it exists, else its nearest existing ancestor).
void check_output_writable(const fs::path& run_dir) {
  std::error_code error;
  fs::path probe = fs::absolute(run_dir, error);
  if (error) fail("--output ", run_dir.string(), ": ", error.message());
  while (!fs::exists(probe, error) && probe != probe.parent_path()) probe = probe.parent_path();
  if (!fs::is_directory(probe, error)) {
    fail("--output ", run_dir.string(), " cannot be created: ", probe.string(), " is not a directory");
  }
  if (access(probe.c_str(), W_OK | X_OK) != 0) {
    fail("--output ", run_dir.string(), " is not writable: cannot write into ", probe.string(), " (",
         std::strerror(errno), ")");
  }
  // What the run writes into an existing directory must be able to go where it goes: a file named
  // checkpoints would only fail the first save, after the steps before it had trained.
  const std::pair<const char*, bool> entries[] = {
      {"checkpoints", true}, {"tensorboard", true}, {"logs", true}, {"metrics.jsonl", false}, {"config.json", false}};
  for (const auto& [name, is_directory] : entries) {
    const fs::path path = run_dir / name;
    const fs::file_status status = fs::status(path, error);
    if (!fs::exists(status)) continue;
    if (is_directory ? !fs::is_directory(status) : !fs::is_regular_file(status)) {
      fail("--output ", run_dir.string(), ": ", path.string(), " exists and is not a ",
           is_directory ? "directory" : "regular file", ": the run writes its ", name, " there");
    }
  }
}

}  // namespace

nlohmann::json default_run_config() {
  nlohmann::json config;
  config["model"] = model_preset("small");
  config["optim"] = to_json(OptimizerConfig{});
  config["data"] = {
      {"dir", ""},              // shards directory (manifest.json) or NVIDIA BERT HDF5 directory
      {"vocab", ""},            // vocab.txt; default: the shards directory's copy
      {"seq_length", 128},      // must equal the shards' max_seq_length
      {"mask_prob", 0.15},      // masked fraction (masked positions: model.num_token_predictions at most)
      {"shuffle", true},        // a new seeded permutation each epoch
      {"prefetch_batches", 4},  // batches assembled ahead by the loader thread
      {"cache_mb", 1024},       // decompressed shard-chunk cache per rank
      {"verify_checksums", false},
      // NVIDIA BERT shards' next-sentence labels: true adds TF Model Garden's next-sentence loss to MLM + RTD
      {"use_next_sentence_label", false},
      {"eval_dir", ""},  // held-out shards for train.eval_every ("": no evaluation)
      // Each micro-batch (and evaluation batch) computes on its rows' longest real length (rounded up to a
      // multiple of 8), not on data.seq_length: the same losses and gradients to float rounding
      {"trim_padding", true},
  };
  config["train"] = {
      {"steps", 1000000},       // T: optimizer steps (the learning rate decays to 0 at T)
      {"batch_size", 128},      // global batch (examples per step over all ranks)
      {"micro_batch_size", 0},  // examples per forward/backward on a rank (0: the whole slice)
      {"log_every", 100},
      {"checkpoint_every", 1000},
      {"keep_last", 3},           // checkpoints kept (at least 2)
      {"keep_every", 0},          // also keep every step that is a multiple of this (0: none)
      {"seed", 1},                // initialisation, dropout, masking, sampling, shuffling
      {"max_skipped_steps", 10},  // consecutive non-finite steps tolerated before stopping
      {"attention", "auto"},      // materialized | fused (keeps [B,H,S], not [B,H,S,S]) | auto: fused off the CPU
      {"step_timeout", 1800.0},   // seconds one step may take before the watchdog aborts the job
      // seconds a checkpoint save or an evaluation may take before the watchdog aborts the job (their
      // collectives can hang as a step's can; a save may take longer than a step)
      {"checkpoint_timeout", 3600.0},
      {"threads", 0},               // CPU threads per rank (0: cores / ranks on the node)
      {"parallel_chunks", 0},       // CPU: batch slices run concurrently, one per thread (0: = threads; 1: off)
      {"peak_gflops", 0.0},         // per-rank peak for MFU (0: measured with one large GEMM in train.precision)
      {"precision", "fp32"},        // GEMM/attention arithmetic: fp32 | tf32 | bf16 | fp16 (cpu: fp32 | bf16)
      {"storage", "auto"},          // activations + weight copies: fp32 | bf16 | auto (bf16 with precision bf16)
      {"tensorboard", true},        // RUN_DIR/tensorboard event files
      {"profile", false},           // log where each window's wall time went (phases, CPU time per step)
      {"eval_every", 0},            // evaluate on data.eval_dir every this many steps and at the end (0: off)
      {"eval_unigram_auc", false},  // also eval/disc_auc_unigram (lib/eval/evaluate.h): twice the evaluation's time
      {"eval_batches", 100},        // global batches (of train.batch_size) per evaluation (0: all of data.eval_dir)
      // Warn when the discriminator's gain over its prior (nats per token: the binary entropy of the replaced
      // fraction minus disc_loss) stays under min_gain for `windows` log windows in a row after warm-up
      // (collapse_check.h). windows = 0: off.
      {"collapse_warning", {{"min_gain", 0.005}, {"windows", 5}}},
  };
  config["device"] = {
      {"memory_fraction", 0.9},  // cuda: device-memory arena = this fraction of the free GPU memory at start
      {"arena_bytes", 0},        // cuda: the arena's size in bytes instead (0: use memory_fraction)
  };
  config["dist"] = {
      // auto (nccl on --device cuda with one GPU per rank, else host) | host (MPI on host memory; device
      // gradients are copied) | nccl | cuda_aware_mpi (MPI on device memory; needs a CUDA-aware MPI)
      {"gradient_transport", "auto"},
  };
  config["debug"] = {
      // Fault injection for the distributed tests: a non-finite loss gradient on one rank at one step, or
      // an exception thrown on one rank at one step. -1: off.
      {"nan_step", -1},
      {"nan_rank", -1},
      {"throw_step", -1},
      {"throw_rank", -1},
      // A rank that stops making progress at one step (the watchdog's case). -1: off.
      {"hang_step", -1},
      {"hang_rank", -1},
      // The same inside the checkpoint save after that step (before its collectives).
      {"hang_checkpoint_step", -1},
      {"hang_checkpoint_rank", -1},
  };
  return config;
}

namespace {

Config resolve_config_over(nlohmann::json defaults, const TrainOptions& options) {
  Config config(std::move(defaults));
  if (!options.config_path.empty()) config.merge_file(options.config_path);
  if (!options.data_dir.empty()) config.set("data.dir", nlohmann::json(options.data_dir));
  for (const std::string& assignment : options.sets) config.set(assignment);
  // Paths are recorded absolute (config.json, checkpoints): the tools that read them later (electra-export,
  // electra-score, a resume) may run from another directory.
  for (const char* key : {"data.dir", "data.vocab", "data.eval_dir"}) {
    const nlohmann::json& value = config.at(key);
    if (!value.is_string() || value.get<std::string>().empty()) continue;
    const std::filesystem::path path(value.get<std::string>());
    if (path.is_relative())
      config.set(key, nlohmann::json(std::filesystem::absolute(path).lexically_normal().string()));
  }
  return config;
}

// Whether the config file or a --set names model.vocab_size (the default preset has one too): resolved again
// over a default no file can mean.
bool names_vocab_size(const TrainOptions& options) {
  nlohmann::json defaults = default_run_config();
  defaults["model"]["vocab_size"] = -1;
  return resolve_config_over(std::move(defaults), options).at("model.vocab_size") != -1;
}

}  // namespace

Config resolve_config(const TrainOptions& options) { return resolve_config_over(default_run_config(), options); }

namespace {

// Everything a rank holds during a run. Built in setup(), which reports bad input before training.
class Trainer {
 public:
  Trainer(const dist::Communicator& comm, const TrainOptions& options) : comm_(comm), options_(options) {}

  // Returns an error message instead of throwing, so every rank can agree on failure before anyone
  // starts a collective of the training loop.
  std::optional<std::string> setup();
  // How many ranks use this rank's GPU (count_ranks_on_my_gpu, a collective run before setup()).
  void set_ranks_on_gpu(int ranks) { ranks_on_gpu_ = ranks; }
  // After a failed set-up (on any rank): gives up the run directory's lock, and removes the directory when
  // this set-up made it, so that a refused run leaves nothing behind.
  void abandon_run_dir();
  // After a resume: the checkpoint's parallel chunks when train.parallel_chunks is 0 (auto), else a warning
  // when they differ (TrainingState::parallel_chunks).
  void keep_resumed_parallel_chunks(int saved);
  // What this rank will train, for comparing the ranks (run_identity below).
  nlohmann::json run_identity() const;
  int train();

 private:
  std::unique_ptr<Backend<float>> make_backend() const;
  void log_device_memory(const char* when);
  StepOutcome train_step();
  void log_step(const LogWindow::Summary& window, double lr, double grad_norm);
  void warn_collapse(const MetricsRecord& window);
  void warn_of_capped_masking() const;
  void log_profile();
  std::unique_ptr<dist::GradientReducer> make_reducer();

  const dist::Communicator& comm_;
  TrainOptions options_;
  Config config_;
  fs::path run_dir_;
  std::unique_ptr<Backend<float>> backend_;
  std::unique_ptr<data::Loader> loader_;
  PretrainerConfig model_config_;
  std::unique_ptr<PretrainerModel<float>> model_;   // ElectraPretrainer<float> or <bfloat16> (train.storage)
  std::unique_ptr<Optimizer<float>> optimizer_;     // optim.name: AdamW or Lamb
  std::unique_ptr<LossScaler> loss_scaler_;         // optim.loss_scale (dynamic by default with fp16)
  CudaPrecision precision_ = CudaPrecision::kFp32;  // train.precision
  StorageType storage_ = StorageType::kFp32;        // train.storage, resolved
  DeviceOptions device_options_;                    // train.precision, device.*
  int ranks_on_gpu_ = 0;                            // set_ranks_on_gpu (0: estimated from the local ranks)
  dist::GradientTransport configured_transport_ = dist::GradientTransport::kAuto;  // dist.gradient_transport
  dist::GradientTransport transport_ = dist::GradientTransport::kHost;             // what it resolved to
  std::unique_ptr<dist::GradientReducer> reducer_;  // over transport_ (make_rank_reducer)
  bool reducer_stages_through_host_ = false;
  std::optional<RunLock> run_lock_;              // rank 0: RUN_DIR/.lock, held for the whole run
  std::unique_ptr<RunCheckpoints> checkpoints_;  // --resume, train.checkpoint_every, the stop checkpoint
  bool resumed_ = false;                         // progress_ came from a checkpoint (--resume)
  fs::path resumed_path_;                        // ... this one
  nlohmann::json resumed_log_windows_;           // the resumed checkpoint's open log windows, by rank
  std::unique_ptr<MetricsWriter> metrics_;
  std::unique_ptr<TensorBoardWriter> tensorboard_;
  std::unique_ptr<HeldOutEval> held_out_;  // train.eval_every on data.eval_dir
  std::optional<bool> lower_case_;         // the shards' tokenizer.lower_case (unknown without a manifest)

  TrainSettings settings_;  // train.*, data.*, optim.*, device.* (TrainSettings::from_config)
  int parallel_chunks_ = 1;
  std::optional<TrainStep> stepper_;   // the optimizer step (step.h), made with the reducer
  double peak_gflops_ = 0;             // train.peak_gflops, or measured
  bool warned_mfu_over_peak_ = false;  // MFU above 100% is reported once
  double flops_per_step_ = 0;

  TrainingState progress_;                       // step, tokens seen, skipped steps: what a checkpoint carries
  std::optional<CollapseCheck> collapse_check_;  // train.collapse_warning.*
  // The discriminator's scores on real tokens, by class, of this step (the log window's running disc_auc).
  eval::ScoreHistogram step_scores_{kRunningAucBins};
  std::optional<StepProfile> profile_;  // train.profile
  StepProfile* profile() { return profile_ ? &*profile_ : nullptr; }
};

std::optional<std::string> Trainer::setup() {
  try {
    config_ = resolve_config(options_);
    if (options_.output_dir.empty()) fail("--output RUN_DIR is required");
    run_dir_ = options_.output_dir;
    // Everything that can be checked without the data is checked before anything is read or written.
    check_output_writable(run_dir_);
    if (options_.max_time_s && !(*options_.max_time_s > 0)) {
      fail("--max-time must be a positive number of seconds, got ", *options_.max_time_s);
    }
    if (options_.stop_after && *options_.stop_after <= 0) {
      fail("--stop-after must be a positive number of steps, got ", *options_.stop_after);
    }
    settings_ = TrainSettings::from_config(config_, comm_.world_size(), comm_.rank());
    // Before the data: a transport that cannot work is a config error whatever the data (GPU cases below).
    // On GPUs this is provisional: make_reducer() checks that no two ranks share a GPU (a collective).
    configured_transport_ = dist::parse_gradient_transport(config_.get<std::string>(dist::kGradientTransportKey));
    transport_ = dist::resolve_gradient_transport(configured_transport_,
                                                  {.gpu = options_.device == DeviceKind::kCuda, .shared_gpu = ""});
    const std::string& data_dir = settings_.loader.data_dir;
    if (data_dir.empty()) fail("no data: pass --data SHARDS_DIR or set data.dir");

    if (settings_.profile) profile_.emplace();

    const int threads = choose_threads(settings_.threads, comm_);
    omp_set_num_threads(threads);
    openblas_set_num_threads(threads);
    if (const int allowed = allowed_cpu_count(); allowed > 0 && threads > allowed) {
      ELECTRA_LOG(warning) << "rank " << comm_.rank() << ": " << threads << " threads (train.threads) may run on only "
                           << allowed << " CPU(s) and will take turns on them (mpirun binds ranks to cores by "
                           << "default): run mpirun with --bind-to none, or --map-by slot:PE=" << threads
                           << " --bind-to core";
    }

    // The shards' examples are sentence pairs: segment ids 0 and 1 (the first step would fail on id 1).
    if (const int types = config_.get<int>("model.type_vocab_size"); types < 2) {
      fail("config key 'model.type_vocab_size' (", types,
           ") must be at least 2: the training examples are sentence pairs, with segment ids 0 and 1");
    }
    if (const int predictions = config_.get<int>("model.num_token_predictions"); predictions > settings_.seq_length) {
      fail("config key 'model.num_token_predictions' (", predictions, ") exceeds data.seq_length (",
           settings_.seq_length, "): a row has no room for that many predictions");
    }
    // The model section: the data's vocabulary decides vocab_size. A config that names another size (one
    // copied from Hugging Face says 30522) is told so: the embeddings it gets are not the ones it named.
    loader_ = std::make_unique<data::Loader>(settings_.loader);
    const auto data_vocab_size = static_cast<int64_t>(loader_->vocab().size());
    if (comm_.is_root() && names_vocab_size(options_)) {
      const nlohmann::json& named = config_.at("model.vocab_size");
      if (!named.is_number_integer() || named.get<int64_t>() != data_vocab_size) {
        ELECTRA_LOG(warning) << "config key 'model.vocab_size' = " << named.dump() << " is replaced by the size of "
                             << data_dir << "'s vocabulary, " << data_vocab_size
                             << ": the shards' token ids decide it (drop the key to silence this)";
      }
    }
    config_.set("model.vocab_size", nlohmann::json(data_vocab_size));
    lower_case_ = loader_->dataset().lower_case();

    model_config_ = pretrainer_config_from_json(config_.at("model"));
    warn_of_capped_masking();
    held_out_ = std::make_unique<HeldOutEval>(settings_, *loader_, comm_);
    collapse_check_.emplace(settings_.collapse);
    precision_ = settings_.precision;
    check_precision(precision_, options_.device, "config key 'train.precision' =");
    storage_ = resolve_storage(settings_.storage, options_.device, precision_, "config key 'train.storage'");
    loss_scaler_ = std::make_unique<LossScaler>(settings_.optim.loss_scale, precision_ == CudaPrecision::kFp16);
    device_options_.precision = precision_;
    device_options_.memory_fraction = settings_.memory_fraction;
    device_options_.arena_bytes = static_cast<size_t>(settings_.arena_bytes);
    device_options_.ranks_on_gpu = ranks_on_gpu_;
    device_options_.arena_size_hint =
        "config key device.arena_bytes (bytes) or device.memory_fraction (of the free GPU memory; now " +
        std::to_string(device_options_.memory_fraction) + ")";
    if (settings_.seq_length > model_config_.discriminator.max_position_embeddings) {
      fail("config key 'data.seq_length' (", settings_.seq_length, ") exceeds model.max_position_embeddings (",
           model_config_.discriminator.max_position_embeddings, ")");
    }
    backend_ = make_backend();
    check_gradient_transport_available(transport_, std::string("config key '") + dist::kGradientTransportKey + "'");
    model_ = make_rank_model(model_config_, *backend_, storage_);
    const AttentionImpl attention =
        attention_for_data(settings_.attention, options_.device, precision_, loader_->packed());
    if (attention != settings_.attention && comm_.rank() == 0) {
      ELECTRA_LOG(info) << "train.attention auto: materialized, since the shards hold packed rows (cuDNN's fused "
                           "attention takes only padding masks)";
    }
    model_->set_attention_impl(attention);
    // On the CPU, whole row slices per thread beat splitting every op across threads (electra-bench,
    // docs/performance.md); the gradient allreduce then starts after backward instead of during it.
    const int configured_chunks = settings_.parallel_chunks;
    parallel_chunks_ = backend_->device() != DeviceKind::kCpu ? 1 : configured_chunks > 0 ? configured_chunks : threads;
    parallel_chunks_ = std::min(parallel_chunks_, settings_.micro_rows);
    if (parallel_chunks_ > 1) model_->set_parallel_chunks(parallel_chunks_);
    optimizer_ = make_optimizer<float>(settings_.optim, model_->layout(), *backend_);
    model_->init_parameters(settings_.seed);
    flops_per_step_ = model_flops_per_step(model_config_, settings_.global_batch, settings_.seq_length);
    peak_gflops_ = settings_.peak_gflops > 0 ? settings_.peak_gflops : measure_gemm_gflops(*backend_, storage_);

    checkpoints_ = std::make_unique<RunCheckpoints>(CheckpointParts{.model = model_.get(),
                                                                    .optimizer = optimizer_.get(),
                                                                    .loss_scaler = loss_scaler_.get(),
                                                                    .backend = backend_.get(),
                                                                    .loader = loader_.get(),
                                                                    .config = &config_,
                                                                    .comm = &comm_},
                                                    settings_, run_dir_, lower_case_);
    // One run per directory, decided before --resume looks at its checkpoints (run_lock.h). The last
    // set-up step that can fail comes after it; a directory made here is removed again if it does.
    if (comm_.is_root()) run_lock_.emplace(run_dir_);
    const std::optional<RunCheckpoints::Resumed> resumed = checkpoints_->resume(options_.resume);
    if (resumed) {
      resumed_ = true;
      resumed_path_ = resumed->path;
      progress_ = resumed->state;
      keep_resumed_parallel_chunks(resumed->state.parallel_chunks);
      resumed_log_windows_ = resumed->log_windows;
      collapse_check_->restore(resumed->state.collapse_streak);
      if (!options_.init_from.empty()) ELECTRA_LOG(info) << "--init-from ignored: resuming " << resumed->path.string();
    } else if (!options_.init_from.empty()) {
      // Hugging Face weights over the fresh initialisation; fails naming the config key or tensor that
      // does not fit. The generator's sentence head, which HF has no place for, keeps its initial values.
      std::vector<float> host = model_->parameters_to_host();
      ELECTRA_LOG(info) << interop::init_from_hf(options_.init_from, model_config_, loader_->vocab(), lower_case_,
                                                 host);
      model_->parameters_from_host(host);
    }
    progress_.parallel_chunks = backend_->device() == DeviceKind::kCpu ? parallel_chunks_ : 0;
    return std::nullopt;
  } catch (const std::exception& e) {
    return std::string(e.what());
  }
}

// Every rank judges its own count (ranks may run other thread counts) and says so in its own log line.
void Trainer::keep_resumed_parallel_chunks(int saved) {
  if (saved <= 0 || saved == parallel_chunks_ || backend_->device() != DeviceKind::kCpu) return;
  if (settings_.parallel_chunks == 0 && saved <= settings_.micro_rows) {
    ELECTRA_LOG(info) << "train.parallel_chunks = 0 would give " << parallel_chunks_ << " chunk(s) with "
                      << "these threads; keeping the checkpoint's " << saved
                      << ", which fix the order of the gradient sums, so the run continues bitwise (set "
                      << "train.parallel_chunks to choose)";
    parallel_chunks_ = saved;
    model_->set_parallel_chunks(parallel_chunks_);
  } else {
    ELECTRA_LOG(warning) << "the checkpoint was trained with " << saved << " parallel chunk(s), this run uses "
                         << parallel_chunks_ << " (train.parallel_chunks, train.micro_batch_size): it continues "
                         << "correctly, but its sums differ in the last bits from an uninterrupted run's";
  }
}

void Trainer::abandon_run_dir() {
  if (!run_lock_) return;
  run_lock_->abandon();
  run_lock_.reset();
}

// The rank's device: the CPU, or GPU local_rank % visible GPUs (one rank per GPU is the intended layout).
std::unique_ptr<Backend<float>> Trainer::make_backend() const {
  return make_rank_backend(options_.device, comm_.local_rank(), device_options_, comm_.local_size());
}

// Every rank, GPU only: the device-memory arena's size, use and peak.
void Trainer::log_device_memory(const char* when) {
  const std::string summary = device_memory_summary(*backend_);
  if (!summary.empty()) ELECTRA_LOG(info) << summary << " (" << when << ")";
}

// One optimizer step: the batch, its global loss denominators, then TrainStep (step.h) with this trainer's
// own concerns around it: fault injection (debug.*), the running AUC's scores, and naming the ranks of a
// skipped step. `metrics` of the outcome are this rank's sums.
StepOutcome Trainer::train_step() {
  StepProfile* const prof = profile();
  std::optional<ScopedPhase> loading(std::in_place, prof, TrainPhase::kLoader);
  Batch batch = loader_->next();
  loading.reset();
  std::optional<ScopedPhase> counting(std::in_place, prof, TrainPhase::kCounts);
  const GlobalNormalizers global = global_normalizers(batch, comm_);
  counting.reset();

  step_scores_.clear();
  StepCallbacks callbacks;
  callbacks.on_micro_batch = [&](const Batch& rows, const PretrainerOutputs<float>& out) {
    for (size_t i = 0; i < rows.input_mask.size(); ++i) {
      if (rows.input_mask[i]) step_scores_.add(eval::sigmoid(out.disc_logits[i]), out.disc_label[i] == 1);
    }
  };
  // Fault injection (debug.*, TrainSettings::faults): the step at which this rank misbehaves, or -1.
  if (progress_.step == settings_.faults.nan_step) {
    callbacks.on_gradients_ready = [&](size_t offset, size_t) {
      if (offset == 0) backend_->fill(model_->gradients(), 1, std::numeric_limits<float>::quiet_NaN());
    };
  }
  callbacks.after_backward = [&] {
    if (progress_.step == settings_.faults.hang_step) {
      ELECTRA_LOG(warning) << "debug.hang_step: rank " << comm_.rank() << " stops making progress at step "
                           << progress_.step;
      std::this_thread::sleep_for(std::chrono::hours(1));
    }
    if (progress_.step == settings_.faults.throw_step) {
      fail("debug.throw_step: injected failure on rank ", comm_.rank(), " at step ", progress_.step);
    }
  };
  const StepOutcome outcome = stepper_->run(batch, global, progress_.step, progress_.skipped_steps, callbacks, prof);

  if (outcome.result == StepResult::kOverflow && comm_.is_root()) {
    ELECTRA_LOG(info) << "step " << progress_.step + 1 << ": gradients overflowed at loss scale " << outcome.loss_scale
                      << "; update skipped, loss scale now " << loss_scaler_->scale();
  }
  if (outcome.result == StepResult::kSkipped) {
    const std::vector<std::string> flags =
        comm_.gather_strings(outcome.locally_finite ? "" : std::to_string(comm_.rank()));
    if (comm_.is_root()) {
      std::string ranks;
      for (const std::string& f : flags) {
        if (!f.empty()) ranks += (ranks.empty() ? "" : ",") + f;
      }
      ELECTRA_LOG(warning) << "step " << progress_.step + 1 << ": non-finite loss or gradient on rank(s) " << ranks
                           << (outcome.ranges_checked ? "" : " (gradients checked after the device allreduce)")
                           << "; all ranks skip the update";
    }
  }
  if (outcome.result == StepResult::kApplied) {
    progress_.last_lr = outcome.lr;
    progress_.last_grad_norm = outcome.grad_norm;
  }
  return outcome;
}

// Rank 0: the training line, metrics.jsonl and TensorBoard for a closed log window.
void Trainer::log_step(const LogWindow::Summary& summary, double lr, double grad_norm) {
  const StepMetrics& window = summary.average;
  const int steps = summary.steps;
  const double step_seconds = summary.step_seconds;
  MetricsRecord m;
  m.step = progress_.step;
  m.loss = window.total_loss;
  m.gen_loss = window.mlm_loss;
  m.disc_loss = window.disc_loss;
  m.mlm_accuracy = window.mlm_weight > 0 ? window.mlm_correct / window.mlm_weight : 0.0;
  m.disc_accuracy = window.disc_tokens > 0 ? window.disc_correct / window.disc_tokens : 0.0;
  m.lr = lr;
  m.grad_norm = grad_norm;
  // Real (non-pad) tokens: what the model learns from. Slots (rows x data.seq_length) are what the data holds;
  // computed slots what the steps computed on (fewer with data.trim_padding). MFU counts the FLOPs of the
  // computed slots; mfu_slots those of every slot, padding included (the figure before trimming).
  m.tokens_per_s = window.disc_tokens / steps / step_seconds;
  const double slots_per_s = window.tokens / step_seconds;
  const double peak_flops = peak_gflops_ * 1e9 * comm_.world_size();
  const double mfu = window.computed_flops / step_seconds / peak_flops;
  const double mfu_slots = flops_per_step_ / step_seconds / peak_flops;
  const double computed_fraction = window.computed_tokens / window.tokens;
  const double replaced_fraction = window.disc_tokens > 0 ? window.disc_fake / window.disc_tokens : 0.0;
  const double disc_gain = eval::discriminator_gain(m.disc_loss, replaced_fraction);
  const double disc_auc = summary.disc_auc;  // NaN without both classes
  m.extra = {{"replaced_fraction", replaced_fraction},
             {"disc_prior_entropy", eval::binary_entropy(replaced_fraction)},
             {"disc_gain", disc_gain},
             {"disc_auc", std::isfinite(disc_auc) ? nlohmann::json(disc_auc) : nlohmann::json(nullptr)},
             {"slot_tokens_per_s", slots_per_s},
             // From the counts, not the two rates: the same in every run of the same steps, to the last bit.
             {"real_token_fraction", window.disc_tokens / steps / window.tokens},
             {"computed_slot_fraction", computed_fraction},
             {"step_seconds", step_seconds},
             {"mfu", mfu},
             {"mfu_slots", mfu_slots},
             {"loss_scale", loss_scaler_->scale()}};  // the scale after the step (what the next one uses)
  if (window.sentence_loss != 0) m.extra["sentence_loss"] = window.sentence_loss;
  const double eta = step_seconds * static_cast<double>(settings_.total_steps - progress_.step);
  std::ostringstream line;
  line << std::fixed << "step " << progress_.step << "/" << settings_.total_steps << " | loss " << std::setprecision(4)
       << m.loss << " | gen " << m.gen_loss << " | disc " << m.disc_loss << " | disc_gain " << std::showpos << disc_gain
       << std::noshowpos << " | disc_auc " << std::setprecision(3) << disc_auc << " | mlm_acc " << m.mlm_accuracy
       << " | disc_acc " << m.disc_accuracy << " | lr " << std::scientific << std::setprecision(2) << lr << std::fixed
       << " | gnorm " << std::setprecision(3) << grad_norm << " | " << std::setprecision(0) << m.tokens_per_s
       << " tok/s (" << 100.0 * m.tokens_per_s / slots_per_s << "% of " << slots_per_s << " slots/s, "
       << 100.0 * computed_fraction << "% computed) | MFU " << std::setprecision(1) << 100.0 * mfu << "% | ETA "
       << format_duration(eta);
  if (loss_scaler_->enabled()) line << " | loss scale " << std::setprecision(0) << loss_scaler_->scale();
  ELECTRA_LOG(info) << line.str();
  if (mfu > 1.0 && !warned_mfu_over_peak_) {
    // The peak is measured once at start-up: other work on the cores then makes it too low for the run.
    warned_mfu_over_peak_ = true;
    ELECTRA_LOG(warning) << "MFU " << std::fixed << std::setprecision(0) << 100.0 * mfu
                         << "% is above 100%: the peak of " << std::defaultfloat << std::setprecision(4) << peak_gflops_
                         << " GFLOP/s per rank"
                         << (settings_.peak_gflops > 0 ? " (train.peak_gflops)"
                                                       : " measured at start-up, probably while other work shared "
                                                         "the cores,")
                         << " is below what the steps achieve; set train.peak_gflops to this machine's peak for an "
                            "MFU that compares across runs";
  }
  metrics_->write(m);
  if (tensorboard_) tensorboard_->add_step_metrics(m);
  if (collapse_check_->observe(progress_.step, disc_gain)) warn_collapse(m);
  progress_.collapse_streak = collapse_check_->streak();  // checkpointed: the streak survives a resume
}

// Rank 0: masking takes at most model.num_token_predictions positions per row (google-research/electra's
// max_predictions_per_seq), so a data.mask_prob above it masks fewer tokens than it says on long rows.
void Trainer::warn_of_capped_masking() const {
  const int seq = settings_.seq_length, cap = model_config_.num_token_predictions;
  const float mask_prob = settings_.loader.mask_prob;
  // A full row has seq - 2 maskable tokens: [CLS] and a [SEP] never are.
  const int wanted = data::masked_count(seq - 2, mask_prob, seq), capped = data::masked_count(seq - 2, mask_prob, cap);
  if (!comm_.is_root() || capped >= wanted) return;
  ELECTRA_LOG(warning) << "config key 'data.mask_prob' = " << mask_prob << " asks for " << wanted
                       << " masked positions in a full row of " << seq
                       << " tokens, more than 'model.num_token_predictions' = " << cap << ": full rows get " << cap
                       << " (" << std::fixed << std::setprecision(1) << 100.0 * cap / (seq - 2)
                       << "% of their tokens). google-research/electra derives it: set "
                       << "model.num_token_predictions=" << static_cast<int>((mask_prob + 0.005) * seq)
                       << " (a new run: it is part of the model)";
}

// Rank 0: the discriminator has learned nothing beyond the base rate for several log windows.
void Trainer::warn_collapse(const MetricsRecord& window) {
  const CollapseCheckOptions& o = collapse_check_->options();
  const double prior = window.extra.at("disc_prior_entropy").get<double>();
  std::ostringstream text;
  text << std::fixed << std::setprecision(4) << "the discriminator is not learning: for " << o.windows
       << " log windows (steps " << collapse_check_->streak_start_step() << "-" << progress_.step
       << ") its gain over the prior (binary entropy of the replaced fraction, " << prior << " nats, minus disc_loss "
       << window.disc_loss << ") stayed under train.collapse_warning.min_gain = " << o.min_gain << " nats; disc_acc "
       << std::setprecision(3) << window.disc_accuracy
       << " is only the base rate. It predicts the prior for every token (a collapsed or dead discriminator). "
       << "Likely causes: a learning rate too high for the warm-up (optim.lr = " << std::defaultfloat
       << settings_.optim.lr << ", optim.warmup_steps = " << settings_.optim.warmup_steps
       << ": lower the first or lengthen the second), ";
  if (settings_.optim.name == "adamw") {  // LAMB always corrects
    text << "Adam's early steps without bias correction (optim.bias_correction = "
         << (settings_.optim.bias_correction ? "true" : "false") << "; true for short runs), ";
  }
  text << "or a generator too strong or too weak for the discriminator (model.generator.* "
       << "hidden_size " << model_config_.generator.hidden_size << " against the discriminator's "
       << model_config_.discriminator.hidden_size << "; ELECTRA uses 1/4 to 1/2). Set train.collapse_warning.windows=0 "
       << "to silence this check.";
  ELECTRA_LOG(warning) << text.str();
}

// train.profile: the window's phases summed over ranks (one allreduce), logged by rank 0. Collective.
void Trainer::log_profile() {
  std::vector<double> values = profile_->window_values();
  comm_.allreduce_sum(std::span<double>(values));
  if (comm_.is_root()) {
    ELECTRA_LOG(info) << StepProfile::format(values, comm_.world_size(), progress_.step - profile_->steps() + 1,
                                             progress_.step);
  }
  profile_->start_window();
}

// The gradient allreduce of dist.gradient_transport (resolved in setup()). Collective.
std::unique_ptr<dist::GradientReducer> Trainer::make_reducer() {
  RankReducerOptions options;
  options.reducer.op = dist::ReduceOp::kSum;  // losses are already normalised by global counts
  // The discriminator's gradients are final first (its backward runs first): buckets of their own.
  options.reducer.boundaries = {model_->layout().first_element_of(Network::kDiscriminator)};
  options.asked =
      std::string(dist::kGradientTransportKey) + " = " + config_.get<std::string>(dist::kGradientTransportKey);
  // Half the step timeout: a hung NCCL is reported by name before the watchdog aborts the job.
  options.nccl_timeout_seconds = settings_.step_timeout / 2;
  RankReducer made = make_rank_reducer(comm_, configured_transport_, transport_, *backend_, model_->gradients(),
                                       model_->layout().total_size(), options);
  transport_ = made.transport;
  reducer_stages_through_host_ = made.stages_through_host;
  return std::move(made.reducer);
}

// The ranks of a run must train the same run. A node whose copy of the config file or of the shards
// differs (node-local copies), or that sees other checkpoints in RUN_DIR, would otherwise train on a mix
// without a word, or fail at its first checkpoint ("ranks hold different parameters"). What is compared
// (dist::compare_with_rank0): the resolved config less what may differ per node (the paths, and the
// resources: threads, caches, device memory, the GFLOP/s peak), the training and held-out data's identity
// (counts, vocabulary hash, shard list) and the step resumed at.
nlohmann::json Trainer::run_identity() const {
  nlohmann::json config = config_.json();
  for (const char* per_node : {"/data/dir", "/data/eval_dir", "/data/vocab", "/data/cache_mb", "/data/prefetch_batches",
                               "/train/threads", "/train/peak_gflops", "/device"}) {
    const nlohmann::json::json_pointer pointer(per_node);
    if (config.contains(pointer)) config[pointer.parent_pointer()].erase(pointer.back());
  }
  return {{"config", std::move(config)},
          {"data", loader_->dataset().identity()},
          {"eval_data", held_out_->data_identity()},
          {"resumed_step", progress_.step}};
}

int Trainer::train() {
  const auto run_start = Clock::now();
  const bool root = comm_.is_root();
  if (root) {
    fs::create_directories(run_dir_);
    write_file_atomically(run_dir_ / "config.json", config_.dump(2) + "\n");
    // A fresh start is a resume of step 0: a run that crashed before its first checkpoint logged steps that
    // this run logs again (they were kept, twice over).
    metrics_ = std::make_unique<MetricsWriter>(run_dir_, std::optional<int64_t>(progress_.step));
    // After the metrics lines of a course this resume leaves are kept aside (MetricsWriter looks for its
    // later checkpoints), its checkpoints go aside too: `--resume auto` must not return to it.
    if (resumed_) checkpoints_->adopt_resumed(progress_.step, resumed_path_);
    if (settings_.tensorboard) {
      tensorboard_ =
          std::make_unique<TensorBoardWriter>(run_dir_ / "tensorboard", std::optional<int64_t>(progress_.step));
    } else if (TensorBoardWriter::holds_steps_after(run_dir_ / "tensorboard", progress_.step)) {
      // Off now, on before: the left course's steps still go aside (a writer opened and closed does it).
      const TensorBoardWriter setting_aside(run_dir_ / "tensorboard", std::optional<int64_t>(progress_.step));
    }
    ELECTRA_LOG(info) << "resolved config:\n" << config_.dump(2);
    ELECTRA_LOG(info) << "model: " << model_->layout().total_size() << " parameters; " << comm_.world_size()
                      << " rank(s) x " << settings_.local_rows << " rows (micro-batch " << settings_.micro_rows << ", "
                      << parallel_chunks_ << " parallel chunk(s)), seq " << settings_.seq_length << "; "
                      << loader_->num_examples() << " examples, " << loader_->batches_per_epoch()
                      << " steps per epoch; peak " << std::fixed << std::setprecision(1) << peak_gflops_
                      << " GFLOP/s per rank; optimizer " << optimizer_->name() << " (optim.name)";
    std::ostringstream scaling;
    scaling << to_string(loss_scaler_->mode());
    if (loss_scaler_->enabled()) scaling << ", scale " << std::fixed << std::setprecision(0) << loss_scaler_->scale();
    ELECTRA_LOG(info) << "precision " << to_string(precision_) << ", storage " << to_string(storage_) << " (backend "
                      << model_->backend_name() << "); loss scaling " << scaling.str();
  }

  check_parameters_agree(*model_, comm_, progress_.step, "at start");
  log_device_memory("at start");
  // Every rank's chunk count for the checkpoints: ranks of other thread counts (nodes of other sizes) each
  // keep their own on resume, so the sums stay bitwise.
  const std::vector<std::string> rank_chunks = comm_.gather_strings(std::to_string(progress_.parallel_chunks));
  progress_.rank_parallel_chunks.clear();
  for (const std::string& chunks : rank_chunks) progress_.rank_parallel_chunks.push_back(std::stoi(chunks));

  reducer_ = make_reducer();
  stepper_.emplace(StepParts{.model = model_.get(),
                             .optimizer = optimizer_.get(),
                             .loss_scaler = loss_scaler_.get(),
                             .backend = backend_.get(),
                             .comm = &comm_,
                             .reducer = reducer_.get()},
                   StepOptions{.seed = settings_.seed,
                               .micro_rows = settings_.micro_rows,
                               .trim_padding = settings_.trim_padding,
                               .overlap = true,
                               .stages_through_host = reducer_stages_through_host_});

  const double step_timeout = settings_.step_timeout;
  const double checkpoint_timeout = settings_.checkpoint_timeout;
  dist::Watchdog watchdog(step_timeout, comm_.rank(), dist::Watchdog::abort_action(comm_, kExitWatchdog));
  // Checkpoints and evaluations get their own deadline, not none: their collectives hang as a step's do.
  const auto longer_phase = [&](const std::string& phase) {
    watchdog.set_timeout(checkpoint_timeout,
                         phase + " after step " + std::to_string(progress_.step) + " (train.checkpoint_timeout)");
  };

  int64_t steps_this_run = 0;
  LogWindow window(Periodic{settings_.log_every, settings_.total_steps});
  // The stopped run's open window: on as many ranks, each its own (the same lines as without the stop); on
  // another number, rank 0 takes them all (the same sums, added in another order).
  if (resumed_log_windows_.is_array()) {
    const auto ranks = static_cast<size_t>(comm_.world_size());
    for (size_t r = 0; r < resumed_log_windows_.size(); ++r) {
      const bool mine = resumed_log_windows_.size() == ranks ? r == static_cast<size_t>(comm_.rank()) : root;
      if (mine) window.restore(resumed_log_windows_[r]);
    }
  }
  if (profile_) profile_->start_window();
  while (progress_.step < settings_.total_steps) {
    // Step boundary: everyone agrees on whether to stop before anyone starts the next step.
    const bool out_of_time = options_.max_time_s && seconds_since(run_start) >= *options_.max_time_s;
    const bool enough = options_.stop_after && steps_this_run >= *options_.stop_after;
    const int signal = dist::stop_signal();
    std::optional<ScopedPhase> stop_check(std::in_place, profile(), TrainPhase::kStopCheck);
    const bool stop = comm_.agree_any(signal != 0 || out_of_time || enough);
    stop_check.reset();
    if (stop) {
      // Say who asked: the signal may have reached one rank only.
      const std::string reason = signal        ? dist::signal_name(signal)
                                 : out_of_time ? "--max-time"
                                 : enough      ? "--stop-after"
                                               : "";
      const std::vector<std::string> reasons = comm_.gather_strings(reason);
      if (root) {
        std::string who;
        for (size_t r = 0; r < reasons.size(); ++r) {
          if (!reasons[r].empty()) who += (who.empty() ? "" : ", ") + ("rank " + std::to_string(r) + ": " + reasons[r]);
        }
        const bool interrupted = std::find(reasons.begin(), reasons.end(), "SIGINT") != reasons.end();
        ELECTRA_LOG(warning) << "stopping at step " << progress_.step << " (" << who << ")"
                             << (steps_this_run == 0 ? ", before the first step of this run" : "")
                             << "; writing a checkpoint, then exiting with code " << kExitStopped
                             << (interrupted ? " (Ctrl-C again quits at once, without it)" : "");
      }
      longer_phase("the stop checkpoint");
      checkpoints_->save(progress_, window);
      return kExitStopped;
    }

    const auto step_start = Clock::now();
    const StepOutcome outcome = train_step();
    const StepResult result = outcome.result;
    if (profile_) profile_->count_step(seconds_since(step_start));
    ++progress_.step;
    ++steps_this_run;
    progress_.tokens_seen += outcome.real_tokens;  // real tokens, not slots (issue 13)
    watchdog.heartbeat(progress_.step);
    if (result == StepResult::kApplied) {
      progress_.skipped_in_a_row = 0;
      window.add(outcome.metrics, step_scores_);
    } else {
      ++progress_.skipped_steps;
      // Overflow skips of dynamic loss scaling are expected and do not count toward max_skipped_steps.
      if (result == StepResult::kSkipped && ++progress_.skipped_in_a_row > settings_.max_skipped) {
        if (root) {
          ELECTRA_LOG(error) << progress_.skipped_in_a_row
                             << " consecutive non-finite steps (train.max_skipped_steps = " << settings_.max_skipped
                             << "): stopping without saving the damaged state";
        }
        return kExitTooManySkips;
      }
    }

    if (window.should_log(progress_.step)) {
      ScopedPhase phase(profile(), TrainPhase::kLogging);
      const LogWindow::Summary summary = window.close(comm_);
      if (root) log_step(summary, progress_.last_lr, progress_.last_grad_norm);
    }
    if (held_out_->should_evaluate(progress_.step)) {
      longer_phase("the evaluation");
      ScopedPhase phase(profile(), TrainPhase::kEval);
      held_out_->evaluate(*model_, progress_.step, metrics_.get(), tensorboard_.get());
      watchdog.set_timeout(step_timeout);
      window.restart_clock();
    }
    if (checkpoints_->should_save(progress_.step)) {
      longer_phase("the checkpoint");
      ScopedPhase phase(profile(), TrainPhase::kCheckpoint);
      checkpoints_->save(progress_, window);
      watchdog.set_timeout(step_timeout);
      window.restart_clock();
    }
    if (profile_ && window.at_log_step(progress_.step)) log_profile();
  }
  watchdog.stop();
  log_device_memory("at the end");
  if (root) {
    ELECTRA_LOG(info) << "done: " << progress_.step << " steps, " << progress_.tokens_seen << " real tokens, "
                      << progress_.skipped_steps << " skipped, " << format_duration(seconds_since(run_start))
                      << " wall";
  }
  return kExitDone;
}

}  // namespace

int run_training(const dist::Communicator& comm, const TrainOptions& options) {
  // Before the set-up (data, model, checkpoint), which may take minutes: a stop signal during it is kept
  // and honoured at the first step boundary (a checkpoint of the start state, exit 3).
  dist::install_stop_signals();
  Trainer trainer(comm, options);
  // Before setup, which may fail on one rank only: a collective every rank reaches.
  if (options.device == DeviceKind::kCuda) trainer.set_ranks_on_gpu(count_ranks_on_my_gpu(comm));
  std::optional<std::string> error = trainer.setup();
  if (!comm.agree_all(!error.has_value())) {
    if (error) {
      ELECTRA_LOG(error) << *error;
    }
    trainer.abandon_run_dir();
    return kExitBadInput;
  }
  if (const dist::RankAgreement agreement = dist::compare_with_rank0(comm, trainer.run_identity()); !agreement.agree) {
    if (comm.is_root()) {
      ELECTRA_LOG(error) << "the ranks would not train the same run: every rank must see the same config, the same "
                            "shards and the same checkpoints (node-local copies must be equal). Differences from "
                            "rank 0:\n"
                         << agreement.differences;
    }
    trainer.abandon_run_dir();
    return kExitBadInput;
  }
  log::open_deferred_file();  // RUN_DIR/logs/rank_<r>.log, with the set-up's records
  return trainer.train();
}

}  // namespace electra::train
