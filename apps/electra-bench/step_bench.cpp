#include "apps/electra-bench/step_bench.h"

#include <omp.h>
#include <sys/resource.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <iomanip>
#include <memory>
#include <numeric>
#include <random>
#include <span>
#include <sstream>
#include <thread>

#include "data_pipeline/loader/shard_dataset.h"
#include "lib/backend/backend.h"
#include "lib/core/batch.h"
#include "lib/core/config.h"
#include "lib/core/error.h"
#include "lib/model/pretrainer.h"
#include "lib/optim/adamw.h"
#include "lib/optim/loss_scaler.h"
#include "lib/optim/optimizer.h"
#include "lib/train/device.h"
#include "lib/train/rank_reducer.h"
#include "lib/train/step.h"

#ifdef ELECTRA_BENCH_HAVE_CUDA
#include "lib/backend/cuda/cuda_backend.h"
#endif

namespace electra::bench {
namespace {

using Clock = std::chrono::steady_clock;

double seconds(Clock::time_point a, Clock::time_point b) { return std::chrono::duration<double>(b - a).count(); }

double median(std::vector<double> v) {
  if (v.empty()) return 0.0;
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

double mean(const std::vector<double>& v) {
  return v.empty() ? 0.0 : std::accumulate(v.begin(), v.end(), 0.0) / static_cast<double>(v.size());
}

double cpu_seconds() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return static_cast<double>(u.ru_utime.tv_sec + u.ru_stime.tv_sec) +
         1e-6 * static_cast<double>(u.ru_utime.tv_usec + u.ru_stime.tv_usec);
}

double peak_rss_mib() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return static_cast<double>(u.ru_maxrss) / 1024.0;  // Linux: KiB
}

// BERT uncased special ids (ids below 1000 are [unused] / specials in that vocabulary).
constexpr int32_t kCls = 101, kSep = 102, kMask = 103;

// Masked positions of a row of `length` real tokens ([CLS] and [SEP] included) with at most P: the loader's
// rule (masking.h), max(1, min(P, round((length - 2) * mask_prob))), never more than there are candidates.
int row_predictions(int length, int P, double mask_prob) {
  return std::min({P, length - 2, std::max(1, static_cast<int>(std::nearbyint(mask_prob * (length - 2))))});
}

// One rank's slice of a synthetic global batch: rows of random tokens, [CLS] ... [SEP], two segments.
// Without `lengths` every row is full and has P distinct masked positions (never [CLS]/[SEP]), all with
// weight 1. With `lengths` (one per global row, [CLS] and [SEP] included) row g has lengths[g] real tokens
// and [PAD] (input_mask 0) after them, and max(1, min(P, round((lengths[g] - 2) * mask_prob))) masked positions
// among its real tokens, padded to P with position 0, weight 0 (the loader's rule, masking.h). 85% of the
// masked positions become [MASK], 15% are left as they are (ELECTRA's masking).
Batch synthetic_batch(std::mt19937_64& rng, int global_rows, int rank, int ranks, int S, int P, double mask_prob, int V,
                      const int* lengths) {
  const int rows = global_rows / ranks;
  Batch b;
  b.rows = rows;
  b.seq_length = S;
  b.num_predictions = P;
  b.global_row_offset = static_cast<uint64_t>(rank) * rows;
  b.global_batch_rows = global_rows;
  const size_t N = static_cast<size_t>(rows) * S, M = static_cast<size_t>(rows) * P;
  b.input_word_ids.assign(N, 0);
  b.input_mask.assign(N, 0);
  b.input_type_ids.assign(N, 0);
  b.masked_lm_positions.assign(M, 0);
  b.masked_lm_ids.assign(M, 0);
  b.masked_lm_weights.assign(M, 0.0f);
  const int lo = std::min(1000, V / 2);
  std::uniform_int_distribution<int32_t> token(lo, V - 1);
  std::uniform_real_distribution<double> unit(0.0, 1.0);
  // Every rank draws the whole global batch and keeps its rows, so the batch does not depend on ranks.
  std::vector<int> candidates;
  for (int g = 0; g < global_rows; ++g) {
    const int L = lengths != nullptr ? std::clamp(lengths[g], 2, S) : S;
    const int n = lengths == nullptr ? P : row_predictions(L, P, mask_prob);
    std::vector<int32_t> ids(L), positions;
    for (int s = 0; s < L; ++s) ids[s] = token(rng);
    ids[0] = kCls;
    ids[L - 1] = kSep;
    candidates.resize(L - 2);
    std::iota(candidates.begin(), candidates.end(), 1);
    for (int p = 0; p < n; ++p) {
      std::uniform_int_distribution<int> pick(p, L - 3);
      std::swap(candidates[p], candidates[pick(rng)]);
    }
    positions.assign(candidates.begin(), candidates.begin() + n);
    std::sort(positions.begin(), positions.end());
    std::vector<int32_t> labels(n), masked_ids = ids;
    for (int p = 0; p < n; ++p) {
      labels[p] = ids[positions[p]];
      if (unit(rng) < 0.85) masked_ids[positions[p]] = kMask;
    }
    const int r = g - rank * rows;
    if (r < 0 || r >= rows) continue;
    for (int s = 0; s < L; ++s) {
      b.input_word_ids[static_cast<size_t>(r) * S + s] = masked_ids[s];
      b.input_mask[static_cast<size_t>(r) * S + s] = 1;
      b.input_type_ids[static_cast<size_t>(r) * S + s] = s < (lengths != nullptr ? L : S) / 2 ? 0 : 1;
    }
    for (int p = 0; p < n; ++p) {
      b.masked_lm_positions[static_cast<size_t>(r) * P + p] = positions[p];
      b.masked_lm_ids[static_cast<size_t>(r) * P + p] = labels[p];
      b.masked_lm_weights[static_cast<size_t>(r) * P + p] = 1.0f;
    }
  }
  return b;
}

nlohmann::json read_json_file(const std::string& path) {
  try {
    return read_config_file(path);  // electra-train's reader: a repeated key is refused, as there
  } catch (const Error& e) {
    fail("--config ", path, " (expected tiny|small|base|large or a JSON file): ", e.what());
  }
}

// Records the start of each phase of a step; the time of a phase runs to the next mark.
class PhaseClock {
 public:
  explicit PhaseClock(Backend<float>& backend) : backend_(backend) {}
  void start_step() { marks_.clear(); }
  void mark(const std::string& name) {
    backend_.synchronize();
    marks_.emplace_back(name, Clock::now());
  }
  // Adds this step's phase durations (the last mark closes the step).
  void finish_step(std::vector<std::pair<std::string, std::vector<double>>>& table) const {
    for (size_t i = 0; i + 1 < marks_.size(); ++i) {
      const std::string& name = marks_[i].first;
      auto it = std::find_if(table.begin(), table.end(), [&](const auto& e) { return e.first == name; });
      if (it == table.end()) {
        table.emplace_back(name, std::vector<double>{});
        it = std::prev(table.end());
      }
      // A phase may run more than once per step: add into this step's entry.
      const double d = seconds(marks_[i].second, marks_[i + 1].second);
      if (it->second.size() < steps_seen_ + 1) it->second.resize(steps_seen_ + 1, 0.0);
      it->second[steps_seen_] += d;
    }
  }
  void next_step() { ++steps_seen_; }

 private:
  Backend<float>& backend_;
  std::vector<std::pair<std::string, Clock::time_point>> marks_;
  size_t steps_seen_ = 0;
};

}  // namespace

std::string cuda_unavailable_reason() {
#ifdef ELECTRA_BENCH_HAVE_CUDA
  return cuda_device_count() > 0 ? "" : electra::cuda_unavailable_reason();
#else
  return "this build has no CUDA backend (configure with -DELECTRA_CUDA=ON where nvcc, cuDNN and NCCL are "
         "installed); only the CPU backend can be measured";
#endif
}

dist::GradientTransport resolve_transport(const std::string& transport, DeviceKind device) {
  try {
    return dist::resolve_gradient_transport(dist::parse_gradient_transport(transport),
                                            {.gpu = device == DeviceKind::kCuda, .shared_gpu = ""});
  } catch (const Error& e) {
    fail("--transport: ", e.what());
  }
}

BenchConfig resolve_model(const std::string& config, int vocab) {
  BenchConfig out;
  nlohmann::json model;
  if (config == "tiny" || config == "small" || config == "base" || config == "large") {
    model = model_preset(config, vocab);
    if (config == "base" || config == "large") out.seq = 512;
    if (config == "large") out.mask_prob = 0.25;  // google-research/electra's large recipe
  } else {
    const nlohmann::json file = read_json_file(config);
    // A run config (any of its sections present) or a model section alone.
    const bool run_config = file.contains("model") || file.contains("data") || file.contains("train") ||
                            file.contains("optim") || file.contains("dist") || file.contains("device");
    model = run_config ? file.value("model", nlohmann::json::object()) : file;
    if (run_config) {
      for (const char* section : {"model", "data", "train", "optim", "dist", "device"}) {
        if (file.contains(section) && !file.at(section).is_object())
          fail("--config ", config, ": '", section, "' must be a JSON object");
      }
    }
    if (!model.is_object()) fail("--config ", config, ": 'model' must be a JSON object");
    const nlohmann::json data =
        file.contains("data") && file.at("data").is_object() ? file.at("data") : nlohmann::json();
    if (data.contains("seq_length")) {
      const nlohmann::json& value = data.at("seq_length");
      if (!value.is_number_integer() || value.get<int64_t>() < 1 || value.get<int64_t>() > (1 << 20)) {
        fail("--config ", config, ": data.seq_length must be an integer in [1, 1048576], got ", value.dump());
      }
      out.seq = value.get<int>();
    }
    if (data.contains("mask_prob")) {
      const nlohmann::json& value = data.at("mask_prob");
      if (!value.is_number() || !(value.get<double>() > 0 && value.get<double>() < 1)) {
        fail("--config ", config, ": data.mask_prob must be a number in (0, 1), got ", value.dump());
      }
      out.mask_prob = value.get<double>();
    }
    if (vocab > 0) model["vocab_size"] = vocab;
    if (run_config) out.run_config = file;
  }
  out.model = pretrainer_config_from_json(model);
  return out;
}

namespace {

// Distinct synthetic batches, cycled over the steps: more with --lengths-from, so that the real-token count
// is averaged over more rows of the corpus.
int distinct_batches(const StepBenchOptions& o) {
  return std::max(1, std::min(o.warmup + o.steps, o.lengths_from.empty() ? 4 : 16));
}

}  // namespace

int resolve_seq(const StepBenchOptions& o) { return o.seq > 0 ? o.seq : resolve_model(o.config, o.vocab).seq; }

PretrainerConfig checked_bench_model(const StepBenchOptions& o, int ranks) {
  if (o.steps <= 0 || o.warmup < 0) fail("--steps must be positive and --warmup >= 0");
  if (static_cast<int64_t>(o.steps) + o.warmup > 1'000'000'000) fail("--steps + --warmup must be at most 1e9");
  if (o.batch <= 0 || o.batch % ranks != 0) {
    fail("--batch ", o.batch, " must be a positive multiple of the number of ranks (", ranks, ")");
  }
  if (o.seq < 0) fail("--seq ", o.seq, " must be positive (0: the config's)");
  if (o.vocab < 0) fail("--vocab ", o.vocab, " must be positive (0: the config's)");
  if (o.chunks < 0) fail("--chunks ", o.chunks, " must be >= 0 (0: the thread count)");
  if (o.peak_gemm_size <= 0 || o.peak_gemm_size > kMaxPeakGemmSize)
    fail("--peak-gemm ", o.peak_gemm_size, " is outside [1, ", kMaxPeakGemmSize, "]");
  // A probability dropout can scale by 1/(1-p).
  if (o.dropout && !(*o.dropout >= 0.0f && *o.dropout < 1.0f)) fail("--dropout ", *o.dropout, " is outside [0, 1)");
  const BenchConfig config = resolve_model(o.config, o.vocab);
  PretrainerConfig model = config.model;
  const int S = o.seq > 0 ? o.seq : config.seq;
  if (S > model.discriminator.max_position_embeddings) {
    fail("--seq ", S, " exceeds the model's max_position_embeddings (", model.discriminator.max_position_embeddings,
         ")");
  }
  // At the config's length, its model.num_token_predictions (given or the default, as electra-train takes it);
  // at another --seq, google-research/electra's int((mask_prob + 0.005) * L) with the config's mask_prob.
  const int P = S == config.seq ? model.num_token_predictions : static_cast<int>((config.mask_prob + 0.005) * S);
  if (P <= 0 || P > S - 2) {
    fail("--seq ", S, ": ", P, " masked positions per row (model.num_token_predictions, or int((data.mask_prob + ",
         "0.005) x seq)) do not fit between [CLS] and [SEP]; a row needs at least one");
  }
  model.num_token_predictions = P;
  // The synthetic rows hold BERT's [CLS] 101, [SEP] 102 and [MASK] 103 (make_batch).
  if (model.vocab_size < 104)
    fail("vocabulary size ", model.vocab_size, " must be at least 104 (--vocab or model.vocab_size)");
  if (o.dropout) {
    model.discriminator.hidden_dropout = model.discriminator.attention_dropout = *o.dropout;
    model.generator.hidden_dropout = model.generator.attention_dropout = *o.dropout;
  }
  validate(model);
  return model;
}

size_t row_length_sample_size(const StepBenchOptions& o) {
  return static_cast<size_t>(distinct_batches(o)) * static_cast<size_t>(std::max(0, o.batch));
}

void load_row_lengths(StepBenchOptions& o, int seq, size_t count) {
  const std::string& dir = o.lengths_from;
  if (!std::filesystem::is_directory(dir)) {
    fail("--lengths-from ", dir,
         ": not a directory (expected shards: manifest.json and shard-*.h5 from electra-preprocess, or NVIDIA "
         "BERT HDF5 files with vocab.txt)");
  }
  try {
    data::DatasetOptions d;
    d.data_dir = dir;
    d.seq_length = seq;
    d.cache_bytes = uint64_t{64} << 20;
    if (!std::filesystem::exists(std::filesystem::path(dir) / "manifest.json")) {
      d.vocab_path = (std::filesystem::path(dir) / "vocab.txt").string();  // NVIDIA shards
    }
    data::ShardDataset dataset(d);
    const uint64_t n = dataset.num_examples();
    // Uniform draws of example indices, read in index order (chunk locality), kept in draw order.
    std::mt19937_64 rng(o.seed ^ 0x6c656e67746873ULL);  // "lengths": its own stream, apart from the batches'
    std::uniform_int_distribution<uint64_t> pick(0, n - 1);
    std::vector<std::pair<uint64_t, size_t>> draws(count);
    for (size_t i = 0; i < count; ++i) draws[i] = {pick(rng), i};
    std::sort(draws.begin(), draws.end());
    std::vector<int32_t> ids(static_cast<size_t>(seq)), segments(static_cast<size_t>(seq));
    o.row_lengths.assign(count, 0);
    for (const auto& [index, slot] : draws) {
      int length = 0;
      int32_t next_sentence = -1;
      dataset.read(index, ids.data(), segments.data(), &length, &next_sentence);
      o.row_lengths[slot] = length;
    }
    o.corpus_rows = n;
  } catch (const Error& e) {
    fail("--lengths-from ", dir, ": ", e.what());
  }
}

StepBenchResult run_step_bench(const StepBenchOptions& o, const dist::Communicator& comm) {
  const bool cuda = o.device == DeviceKind::kCuda;
  if (cuda) {
    const std::string why = cuda_unavailable_reason();
    if (!why.empty()) fail("--device cuda: ", why);
  }
  const dist::GradientTransport transport = resolve_transport(o.transport, o.device);
  check_gradient_transport_available(transport, "--transport");
  check_precision(o.precision, o.device, "--precision");
  const StorageType storage = resolve_storage(o.storage, o.device, o.precision, "--storage");
  const int ranks = comm.world_size();
  const PretrainerConfig model = checked_bench_model(o, ranks);
  const int S = resolve_seq(o);
  const int P = model.num_token_predictions;
  const double mask_prob = resolve_model(o.config, o.vocab).mask_prob;  // data.mask_prob: rows of --lengths-from

  StepBenchResult r;
  r.config_name = o.config;

  const int threads = o.threads > 0 ? o.threads
                                    : std::max(1, static_cast<int>(std::max(1u, std::thread::hardware_concurrency())) /
                                                      std::max(1, comm.local_size()));
  omp_set_num_threads(threads);
  DeviceOptions device_options;
  device_options.precision = o.precision;
  const std::unique_ptr<Backend<float>> backend = make_rank_backend(o.device, comm, device_options);

  const std::unique_ptr<PretrainerModel<float>> owned_net = make_rank_model(model, *backend, storage);
  PretrainerModel<float>& net = *owned_net;
  net.init_parameters(o.seed);
  // Chunks are a CPU strategy, at most one per row of the rank's batch (as electra-train's).
  const int chunks = cuda ? 1 : std::min(o.chunks > 0 ? o.chunks : threads, o.batch / ranks);
  net.set_parallel_chunks(chunks);
  net.set_recompute_ffn_activations(o.recompute_ffn);
  net.set_attention_impl(parse_attention_impl(o.attention, "--attention"));
  OptimizerConfig optim;
  optim.name = o.optimizer;
  optim.warmup_steps = 0;  // a non-zero learning rate from the first step
  optim.total_steps = 1000000;
  const std::unique_ptr<Optimizer<float>> owned_optimizer = make_optimizer(optim, net.layout(), *backend);
  Optimizer<float>& optimizer = *owned_optimizer;
  LossScaler loss_scaler(LossScaleConfig{}, o.precision == CudaPrecision::kFp16);  // dynamic for fp16, else off
  const size_t n_params = net.layout().total_size();

  // electra-train's allreduce (rank_reducer.h): NCCL on the device buffer, or host staging when ranks
  // share a GPU. One rank needs none, unless a transport is named (NCCL over one GPU, for a smoke test).
  std::unique_ptr<dist::GradientReducer> reducer;
  std::string transport_name = "none";
  bool stages_through_host = false;
  if (ranks > 1 || o.transport != "auto") {
    RankReducerOptions ro;
    ro.reducer.op = dist::ReduceOp::kSum;  // losses are normalised by global counts, as electra-train does
    ro.reducer.boundaries = {net.layout().first_element_of(Network::kDiscriminator)};  // as electra-train
    ro.setting = "--transport";
    ro.asked = "--transport " + o.transport;
    RankReducer made = make_rank_reducer(comm, dist::parse_gradient_transport(o.transport), transport, *backend,
                                         net.gradients(), n_params, ro);
    transport_name = dist::to_string(made.transport);
    stages_through_host = made.stages_through_host;
    reducer = std::move(made.reducer);
  }

  // A few distinct batches, cycled. With --lengths-from the rows take the sampled corpus lengths in turn.
  std::vector<int> lengths = o.row_lengths;
  uint64_t corpus_rows = o.corpus_rows;
  const int n_batches = distinct_batches(o);
  if (!o.lengths_from.empty() && lengths.size() < static_cast<size_t>(n_batches) * o.batch) {
    StepBenchOptions with_lengths = o;
    load_row_lengths(with_lengths, S, row_length_sample_size(o));
    lengths = std::move(with_lengths.row_lengths);
    corpus_rows = with_lengths.corpus_rows;
  }
  std::mt19937_64 rng(o.seed);
  const int total = o.warmup + o.steps;
  std::vector<Batch> batches;
  std::vector<GlobalNormalizers> globals;
  std::vector<double> real_tokens;  // per batch, global
  // Per batch, summed over ranks: slots trimmed to each rank's longest row, slots computed, FLOPs computed.
  std::vector<double> shape_sums;
  for (int i = 0; i < n_batches; ++i) {
    const int* row_lengths = lengths.empty() ? nullptr : lengths.data() + static_cast<size_t>(i) * o.batch;
    batches.push_back(
        synthetic_batch(rng, o.batch, comm.rank(), ranks, S, P, mask_prob, model.vocab_size, row_lengths));
    // The global counts, as the loader's allreduce would give them: every rank knows every row's length.
    double real = 0.0, predictions = 0.0;
    for (int g = 0; g < o.batch; ++g) {
      const int L = row_lengths != nullptr ? std::clamp(row_lengths[g], 2, S) : S;
      real += L;
      predictions += row_lengths == nullptr ? P : row_predictions(L, P, mask_prob);
    }
    globals.push_back(GlobalNormalizers{predictions, real, static_cast<double>(o.batch)});
    real_tokens.push_back(real);
    const Batch& b = batches.back();
    const int needed = needed_seq_length(b, 0, b.rows);
    const int computed_seq = o.trim_padding ? needed : S;  // as the step trims (one micro-batch)
    shape_sums.push_back(static_cast<double>(b.rows) * needed);
    shape_sums.push_back(static_cast<double>(b.rows) * computed_seq);
    shape_sums.push_back(model_flops_per_step(model, b.rows, computed_seq));
  }
  if (ranks > 1) comm.allreduce_sum(std::span<double>(shape_sums));

  // electra-train's step (lib/train/step.h), on the whole slice as one micro-batch.
  train::TrainStep train_step(train::StepParts{.model = &net,
                                               .optimizer = &optimizer,
                                               .loss_scaler = &loss_scaler,
                                               .backend = backend.get(),
                                               .comm = &comm,
                                               .reducer = reducer.get()},
                              train::StepOptions{.seed = o.seed,
                                                 .micro_rows = 0,
                                                 .trim_padding = o.trim_padding,
                                                 .overlap = o.overlap,
                                                 .stages_through_host = stages_through_host});
  PhaseClock clock(*backend);
  std::vector<std::pair<std::string, std::vector<double>>> phase_table;
  std::vector<double> step_times, reduce_times;
  double timed_real_tokens = 0.0, timed_trimmed_slots = 0.0, timed_computed_slots = 0.0, timed_flops = 0.0;
  double cpu_start = 0.0;
  // The wait for the allreduce after backward: from its "allreduce" phase to the next one.
  Clock::time_point wait_start{};
  double wait_s = 0.0;
  train::StepCallbacks callbacks;
  callbacks.on_phase = [&](const char* phase) {
    const std::string name = phase;
    if (name == "allreduce") {
      if (o.breakdown) clock.mark(name);
      backend->synchronize();
      wait_start = Clock::now();
      return;
    }
    if (name == "finite_check" && reducer) wait_s = seconds(wait_start, Clock::now());
    if (o.breakdown) clock.mark(name);
  };
  if (o.breakdown) {
    callbacks.on_model_phase = [&](StepPhase p) {
      if (p != StepPhase::kForwardDone && p != StepPhase::kBackwardDone) clock.mark(to_string(p));
      if (p == StepPhase::kForwardDone) clock.mark("other");
    };
  }
  comm.barrier();
  int64_t skipped = 0;  // steps an overflow skipped (fp16): Adam's t leaves them out, as training does
  for (int i = 0; i < total; ++i) {
    const bool timed = i >= o.warmup;
    if (i == o.warmup) {
      comm.barrier();
      cpu_start = cpu_seconds();
    }
    if (o.breakdown) clock.start_step();
    wait_s = 0.0;
    backend->synchronize();
    const auto start = Clock::now();
    const train::StepOutcome outcome =
        train_step.run(batches[i % batches.size()], globals[i % batches.size()], i, skipped, callbacks);
    if (outcome.result != train::StepResult::kApplied) ++skipped;
    backend->synchronize();
    if (o.breakdown) clock.mark("end");
    const double local = seconds(start, Clock::now());
    if (i == 0) r.first_loss = outcome.metrics.total_loss;
    r.last_loss = outcome.metrics.total_loss;
    const double reduce_s = reducer ? wait_s + outcome.reducer_seconds : 0.0;
    const double slowest = ranks > 1 ? comm.allreduce_max(local) : local;
    if (timed) {
      step_times.push_back(slowest);
      const size_t k = i % batches.size();
      timed_real_tokens += real_tokens[k];
      timed_trimmed_slots += shape_sums[3 * k];
      timed_computed_slots += shape_sums[3 * k + 1];
      timed_flops += shape_sums[3 * k + 2];
      reduce_times.push_back(reduce_s);
      if (o.breakdown) {
        clock.finish_step(phase_table);
        clock.next_step();
      }
    }
  }
  // Each rank's loss is its share (normalized by the global counts): the step's loss is their sum.
  if (ranks > 1) {
    double losses[2] = {r.first_loss, r.last_loss};
    comm.allreduce_sum(std::span<double>(losses, 2));
    r.first_loss = losses[0];
    r.last_loss = losses[1];
  }
  const double cpu_used = cpu_seconds() - cpu_start;
  r.peak_rss_mib = ranks > 1 ? comm.allreduce_max(peak_rss_mib()) : peak_rss_mib();
  r.cpu_s_per_step = (ranks > 1 ? comm.allreduce_sum(cpu_used) : cpu_used) / o.steps;

  comm.barrier();  // every rank measures the peak at once, as they share the cores during training
  const double peak = measure_gemm_gflops(*backend, storage, o.peak_gemm_size);
  r.peak_gflops_per_rank = ranks > 1 ? comm.allreduce_min(peak) : peak;

  r.backend = owned_net->backend_name();
  r.model = model;
  r.batch = o.batch;
  r.seq = S;
  r.predictions = P;
  r.ranks = ranks;
  r.threads = threads;
  r.chunks = chunks;
  r.steps = o.steps;
  r.warmup = o.warmup;
  r.parameters = n_params;
  r.overlap = o.overlap;
  r.recompute_ffn = o.recompute_ffn;
  r.trim_padding = o.trim_padding;
  r.attention = o.attention;
  r.precision = o.precision;
  r.storage = storage;
  r.optimizer = o.optimizer;
  r.transport = transport_name;
  r.loss_scale = loss_scaler.scale();
  r.median_step_s = median(step_times);
  r.min_step_s = *std::min_element(step_times.begin(), step_times.end());
  r.max_step_s = *std::max_element(step_times.begin(), step_times.end());
  const double slots = static_cast<double>(o.batch) * S;  // per step
  r.slot_tokens_per_s = slots / r.median_step_s;
  r.real_token_fraction = timed_real_tokens / (slots * o.steps);
  r.tokens_per_s = r.real_token_fraction * r.slot_tokens_per_s;
  r.trimmed_slot_fraction = timed_trimmed_slots / (slots * o.steps);
  r.computed_slot_fraction = timed_computed_slots / (slots * o.steps);
  r.lengths_from = o.lengths_from;
  r.corpus_rows = corpus_rows;
  r.flops_per_step = timed_flops / o.steps;
  r.slot_flops_per_step = model_flops_per_step(model, o.batch, S);
  r.model_gflops = r.flops_per_step / r.median_step_s / 1e9;
  r.slot_gflops = r.slot_flops_per_step / r.median_step_s / 1e9;
  r.peak_fraction = r.model_gflops / (r.peak_gflops_per_rank * ranks);
  r.slot_peak_fraction = r.slot_gflops / (r.peak_gflops_per_rank * ranks);
  r.allreduce_s = median(reduce_times);
  r.allreduce_share = r.allreduce_s / r.median_step_s;
  for (const auto& [name, times] : phase_table) {
    if (name == "end") continue;
    r.phases.push_back(PhaseTime{name, median(times), mean(times)});
  }
  return r;
}

std::string format_text(const StepBenchResult& r) {
  const EncoderConfig& d = r.model.discriminator;
  const EncoderConfig& g = r.model.generator;
  std::ostringstream s;
  s << std::fixed;
  s << "electra-bench: " << r.config_name << " (discriminator " << d.num_layers << "x" << d.hidden_size << ", "
    << d.num_heads << " heads, FFN " << d.intermediate_size << "; generator " << g.num_layers << "x" << g.hidden_size
    << "; E " << r.model.embedding_size() << ", V " << r.model.vocab_size << "), " << std::setprecision(2)
    << r.parameters / 1e6 << "M parameters\n";
  s << "  batch " << r.batch << " x seq " << r.seq << ", " << r.predictions << " predictions per row; " << r.ranks
    << " rank(s) x " << r.threads << " thread(s), " << r.chunks << " parallel chunk(s), " << r.backend << ", precision "
    << to_string(r.precision) << ", storage " << to_string(r.storage) << ", attention " << r.attention << ", optimizer "
    << r.optimizer << "\n";
  s << std::setprecision(1);
  s << "  step        median " << 1e3 * r.median_step_s << " ms (min " << 1e3 * r.min_step_s << ", max "
    << 1e3 * r.max_step_s << ") over " << r.steps << " steps after " << r.warmup << " warm-up; CPU "
    << 1e3 * r.cpu_s_per_step << " ms per step\n";
  if (!r.lengths_from.empty()) {
    s << "  lengths     of " << r.corpus_rows << " rows of " << r.lengths_from << ": real tokens fill "
      << std::setprecision(1) << 100.0 * r.real_token_fraction << "% of the slots; trimmed to each rank's longest row "
      << "(a multiple of 8) a step computes " << 100.0 * r.trimmed_slot_fraction << "% of them"
      << (r.trim_padding ? "" : " (--no-trim-padding: every slot is computed)") << "\n";
  }
  s << "  throughput  " << std::setprecision(0) << r.tokens_per_s << " tokens/s";
  if (r.lengths_from.empty()) {
    s << " (every slot a real token)";
  } else {
    s << " real (non-pad), " << r.slot_tokens_per_s << " slot tokens/s";
  }
  s << ", " << std::setprecision(1) << r.model_gflops << " model GFLOP/s computed (" << std::setprecision(2)
    << r.flops_per_step / 1e9 << " GFLOP per step";
  if (r.computed_slot_fraction < 1.0) {
    s << " on " << std::setprecision(1) << 100.0 * r.computed_slot_fraction
      << "% of the slots; all slots: " << std::setprecision(2) << r.slot_flops_per_step / 1e9 << " GFLOP, "
      << std::setprecision(1) << r.slot_gflops << " GFLOP/s";
  }
  s << ")\n";
  s << "  GEMM peak   " << std::setprecision(1) << r.peak_gflops_per_rank << " GFLOP/s per rank ("
    << (r.storage == StorageType::kBf16 ? std::string("bf16") : to_string(r.precision)) << " GEMM, " << r.threads
    << " thread(s)): " << 100.0 * r.peak_fraction << "% of peak";
  if (r.computed_slot_fraction < 1.0) s << " (" << 100.0 * r.slot_peak_fraction << "% counting every slot)";
  s << "\n";
  s << "  peak RSS    " << std::setprecision(0) << r.peak_rss_mib << " MiB" << (r.ranks > 1 ? " (largest rank)" : "")
    << "\n";
  if (r.transport != "none") {
    s << "  allreduce   " << std::setprecision(1) << 1e3 * r.allreduce_s << " ms per step ("
      << 100.0 * r.allreduce_share << "% of the step; " << (r.overlap ? "overlapped with backward" : "after backward")
      << "; transport " << r.transport << ")\n";
  }
  s << "  loss        " << std::setprecision(4) << r.first_loss << " -> " << r.last_loss << "\n";
  if (!r.phases.empty()) {
    s << "  phases (rank 0, median ms per step, % of the median step):\n";
    double sum = 0.0;
    for (const PhaseTime& p : r.phases) {
      s << "    " << std::left << std::setw(24) << p.name << std::right << std::setw(9) << std::setprecision(1)
        << 1e3 * p.median_s << std::setw(7) << 100.0 * p.median_s / r.median_step_s << "%\n";
      sum += p.median_s;
    }
    s << "    " << std::left << std::setw(24) << "(sum of medians)" << std::right << std::setw(9) << 1e3 * sum << "\n";
  }
  return s.str();
}

nlohmann::json to_json(const StepBenchResult& r) {
  nlohmann::json phases = nlohmann::json::object();
  for (const PhaseTime& p : r.phases) phases[p.name] = {{"median_s", p.median_s}, {"mean_s", p.mean_s}};
  return nlohmann::json{{"impl", "electra-mpi"},
                        {"backend", r.backend},
                        {"config", r.config_name},
                        {"batch", r.batch},
                        {"seq", r.seq},
                        {"predictions", r.predictions},
                        {"vocab", r.model.vocab_size},
                        {"ranks", r.ranks},
                        {"threads", r.threads},
                        {"chunks", r.chunks},
                        {"params", r.parameters},
                        {"steps", r.steps},
                        {"warmup", r.warmup},
                        {"overlap", r.overlap},
                        {"recompute_ffn", r.recompute_ffn},
                        {"trim_padding", r.trim_padding},
                        {"attention", r.attention},
                        {"precision", to_string(r.precision)},
                        {"storage", to_string(r.storage)},
                        {"optimizer", r.optimizer},
                        {"transport", r.transport},
                        {"loss_scale", r.loss_scale},
                        {"median_step_s", r.median_step_s},
                        {"min_step_s", r.min_step_s},
                        {"max_step_s", r.max_step_s},
                        {"cpu_s_per_step", r.cpu_s_per_step},
                        {"tokens_per_s", r.tokens_per_s},
                        {"slot_tokens_per_s", r.slot_tokens_per_s},
                        {"real_token_fraction", r.real_token_fraction},
                        {"trimmed_slot_fraction", r.trimmed_slot_fraction},
                        {"computed_slot_fraction", r.computed_slot_fraction},
                        {"lengths_from", r.lengths_from},
                        {"corpus_rows", r.corpus_rows},
                        {"flops_per_step", r.flops_per_step},
                        {"slot_flops_per_step", r.slot_flops_per_step},
                        {"model_gflops_per_s", r.model_gflops},
                        {"slot_gflops_per_s", r.slot_gflops},
                        {"peak_gflops_per_rank", r.peak_gflops_per_rank},
                        {"peak_fraction", r.peak_fraction},
                        {"slot_peak_fraction", r.slot_peak_fraction},
                        {"peak_rss_mib", r.peak_rss_mib},
                        {"allreduce_s", r.allreduce_s},
                        {"allreduce_share", r.allreduce_share},
                        {"first_loss", r.first_loss},
                        {"last_loss", r.last_loss},
                        {"phases", phases}};
}

}  // namespace electra::bench
