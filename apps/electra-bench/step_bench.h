// electra-bench's body: times full ELECTRA pre-training steps (electra-train's TrainStep, lib/train/step.h:
// generator and discriminator forward and backward with dropout on, Gumbel sampling, gradient allreduce
// across MPI ranks, the finite check, global-norm clipping and AdamW) on synthetic batches, and reports what
// docs/performance.md tabulates: median step time, tokens/s, model GFLOP/s (model_flops_per_step of the shapes
// computed), the fraction of a measured sgemm peak, peak RSS, and optionally the time per phase of the step.
//
// The library (electra_step_bench) holds the logic; apps/electra-bench/main.cpp only parses flags.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "lib/backend/backend.h"
#include "lib/dist/communicator.h"
#include "lib/dist/gradient_transport.h"
#include "lib/model/config.h"

namespace electra::bench {

// --peak-gemm's largest n: three n x n fp32 matrices of 16384 are 3 GiB.
inline constexpr int kMaxPeakGemmSize = 16384;

struct StepBenchOptions {
  std::string config = "small";          // tiny|small|base|large or a JSON file (a run config or a model section)
  int batch = 32;                        // global batch (split evenly over the ranks)
  int seq = 0;                           // 0: the file's data.seq_length, else 128 (512 for base/large)
  int steps = 10;                        // timed steps
  int warmup = 3;                        // untimed steps first (plans, page faults, caches)
  int threads = 0;                       // OpenMP threads per rank; 0: cores / ranks on the node
  int chunks = 0;                        // ElectraPretrainer::set_parallel_chunks; 0: the thread count
  int vocab = 0;                         // vocabulary size; 0: the config's (30522 for the presets)
  DeviceKind device = DeviceKind::kCpu;  // --device
  bool breakdown = false;                // time each phase of the step
  bool overlap = true;                   // start each bucket's allreduce during backward (else after it)
  bool recompute_ffn = false;            // ElectraPretrainer::set_recompute_ffn_activations
  std::optional<float> dropout;          // nullopt: the config's (0.1); else in [0, 1)
  uint64_t seed = 1;
  int peak_gemm_size = 2048;  // n of the n x n x n sgemm that measures the peak
  // ElectraPretrainer::set_attention_impl: auto | materialized | fused
  std::string attention = "auto";
  // GEMM/attention arithmetic (tf32, fp16: --device cuda; bf16 on the CPU: bf16 storage). The peak GEMM
  // runs in the same mode, so the peak fraction is against that mode's dense peak. fp16 trains with
  // dynamic loss scaling, as electra-train does.
  CudaPrecision precision = CudaPrecision::kFp32;
  // Activations and weight copies, as train.storage: nullopt (auto) is bf16 with precision bf16.
  std::optional<StorageType> storage;
  // Gradient allreduce: auto | host | nccl | cuda_aware_mpi, as electra-train's dist.gradient_transport
  // (auto: nccl on GPUs when every rank has its own, else host). With one rank, auto measures no allreduce;
  // an explicit transport runs it anyway (NCCL over one GPU, for a smoke test).
  std::string transport = "auto";
  // The optimizer, as electra-train's optim.name: adamw | lamb.
  std::string optimizer = "adamw";
  // Row lengths: "" for full rows (every slot a real token); else a shards directory (electra-mpi, or NVIDIA
  // BERT HDF5 with vocab.txt beside them) whose examples' lengths the rows take: a sample of its examples
  // drawn with the seed, each row real tokens then [PAD] (input_mask 0). load_row_lengths fills the sample;
  // run_step_bench calls it when row_lengths is empty.
  std::string lengths_from;
  std::vector<int> row_lengths;  // lengths of the sampled examples, [CLS] and [SEP] included
  uint64_t corpus_rows = 0;      // rows in lengths_from (examples, or packed rows of several)
  // Each rank's batch computes on its longest row (rounded up to a multiple of 8), as electra-train's
  // data.trim_padding does (copy_rows in the timed step); false: on every slot. Full rows are never trimmed.
  bool trim_padding = true;
};

// Time of one phase of the step: the median over the timed steps, and the mean.
struct PhaseTime {
  std::string name;
  double median_s = 0.0;
  double mean_s = 0.0;
};

struct StepBenchResult {
  // What ran.
  std::string config_name, backend;
  PretrainerConfig model;
  int batch = 0, seq = 0, predictions = 0, ranks = 1, threads = 1, chunks = 1, steps = 0, warmup = 0;
  size_t parameters = 0;
  bool overlap = true, recompute_ffn = false, trim_padding = true;
  std::string attention = "auto";                  // the --attention asked for (auto: fused except on the CPU)
  CudaPrecision precision = CudaPrecision::kFp32;  // the --precision
  StorageType storage = StorageType::kFp32;        // the --storage, resolved
  std::string optimizer = "adamw";                 // --optimizer
  std::string transport = "none";  // the --transport, resolved; "none" without an allreduce (one rank, auto)
  double loss_scale = 1.0;         // the loss scale after the last step (fp16: dynamic)
  // Per step (the slowest rank's time at each step; medians over the timed steps).
  double median_step_s = 0.0, min_step_s = 0.0, max_step_s = 0.0;
  double cpu_s_per_step = 0.0;  // process CPU time (user + system) per timed step, summed over ranks
  // Tokens: real (input_mask 1) tokens per second, what the model learns from; slot tokens (rows x seq, padding
  // included) per second, what the data holds (the steps compute computed_slot_fraction of them).
  double tokens_per_s = 0.0, slot_tokens_per_s = 0.0;
  double real_token_fraction = 1.0;  // real tokens / slots over the timed steps
  // Slots a step computes with each rank's rows trimmed to their longest (rounded up to a multiple of 8),
  // over all slots: what trimming saves, whether or not it ran.
  double trimmed_slot_fraction = 1.0;
  double computed_slot_fraction = 1.0;  // slots the timed steps computed on / all slots (trimmed_slot_fraction or 1)
  std::string lengths_from;             // --lengths-from ("" for full rows)
  uint64_t corpus_rows = 0;
  double flops_per_step = 0.0;       // model_flops_per_step of the shapes computed (mean over the timed steps)
  double slot_flops_per_step = 0.0;  // model_flops_per_step over all slots, padding included
  double model_gflops = 0.0;         // flops_per_step / median step: the FLOPs actually computed
  double slot_gflops = 0.0;          // slot_flops_per_step / median step (padding counted as work)
  double peak_gflops_per_rank = 0.0;
  double peak_fraction = 0.0;       // model_gflops / (peak_gflops_per_rank * ranks)
  double slot_peak_fraction = 0.0;  // slot_gflops / (peak_gflops_per_rank * ranks)
  double peak_rss_mib = 0.0;        // the largest ru_maxrss over ranks, before the peak GEMM
  double allreduce_s = 0.0;         // median per step: time spent in the reducer (launch, poll, wait)
  double allreduce_share = 0.0;     // allreduce_s / median step
  double first_loss = 0.0, last_loss = 0.0;
  std::vector<PhaseTime> phases;  // with --breakdown (rank 0's)
};

// Samples `count` example lengths of the shards in `options.lengths_from` into options.row_lengths (uniform
// over its examples, with options.seed), for rows of `seq` slots. Fails, naming --lengths-from and the path,
// when it is not a readable shards directory of that sequence length.
void load_row_lengths(StepBenchOptions& options, int seq, size_t count);

// The sequence length a run of `options` uses (--seq, else the config's).
int resolve_seq(const StepBenchOptions& options);

// The model a run of `options` on `ranks` ranks measures, after checking every option that needs no device:
// fails naming the flag (electra-bench exits 2 on every rank before any step).
PretrainerConfig checked_bench_model(const StepBenchOptions& options, int ranks);

// Examples load_row_lengths samples for run_step_bench: enough for every row of the distinct batches.
size_t row_length_sample_size(const StepBenchOptions& options);

// Collective over `comm`: every rank runs the same steps on its slice of each global batch.
StepBenchResult run_step_bench(const StepBenchOptions& options, const dist::Communicator& comm);

std::string format_text(const StepBenchResult& result);
nlohmann::json to_json(const StepBenchResult& result);

// "" when `--device cuda` can run here, else why not (this build has no CUDA backend, or no usable GPU).
std::string cuda_unavailable_reason();

// The --transport on `device` through electra-train's parse and resolve functions
// (lib/dist/gradient_transport.h), before anyone knows whether ranks share a GPU (the allreduce checks that
// itself). Fails with their message, prefixed with "--transport: ": an unknown name, or nccl /
// cuda_aware_mpi on the CPU.
dist::GradientTransport resolve_transport(const std::string& transport, DeviceKind device);

// What `config` (a preset name, or a file: a run config or a model section) says of the step measured.
struct BenchConfig {
  PretrainerConfig model;   // `vocab` > 0 replaces its vocabulary size
  int seq = 128;            // data.seq_length (512 for base and large)
  double mask_prob = 0.15;  // data.mask_prob (0.25 for large): the predictions of another --seq
  // A run config's sections (empty for a preset or a model section): electra-bench's main takes the step's
  // settings from it for the flags not given (the flags win). Values unchecked.
  nlohmann::json run_config = nlohmann::json::object();
};
BenchConfig resolve_model(const std::string& config, int vocab);

}  // namespace electra::bench
