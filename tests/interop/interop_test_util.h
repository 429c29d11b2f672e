// Helpers shared by the interop tests: temporary directories, running programs, and a tiny random
// pretrainer saved as a training run (data dir with vocab.txt + manifest.json, RUN/checkpoints/...).
#pragma once

#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "data_pipeline/tokenizer/vocab.h"
#include "lib/backend/backend.h"
#include "lib/core/philox.h"
#include "lib/model/config.h"
#include "lib/model/parameter_layout.h"
#include "lib/model/pretrainer.h"
#include "lib/train/checkpoint.h"
#include "lib/train/checkpoint_manager.h"

namespace electra::interop::testing {

namespace fs = std::filesystem;

class TempDir {
 public:
  TempDir() {
    std::string tmpl = (fs::temp_directory_path() / "electra_interop_XXXXXX").string();
    if (!::mkdtemp(tmpl.data())) throw std::runtime_error("mkdtemp failed");
    path_ = tmpl;
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const fs::path& path() const { return path_; }

 private:
  fs::path path_;
};

inline std::string read_bytes(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

inline void write_bytes(const fs::path& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

inline std::string shell_quote(const std::string& s) {
  std::string out = "'";
  for (char c : s) out += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return out + "'";
}

struct CommandResult {
  int status = -1;
  std::string out;  // stdout (stderr goes to the test log unless redirected)
};

// Runs `command` through the shell, capturing stdout.
inline CommandResult run_command(const std::string& command) {
  CommandResult r;
  FILE* pipe = ::popen(command.c_str(), "r");
  if (pipe == nullptr) return r;
  char buf[4096];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof(buf), pipe)) > 0) r.out.append(buf, n);
  const int status = ::pclose(pipe);
  r.status = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return r;
}

// ELECTRA_BUILD_DIR/bin/<name>, else the build directory this test was configured in.
inline std::string program(const std::string& name) {
  const char* build = std::getenv("ELECTRA_BUILD_DIR");
  return (fs::path(build && *build ? build : ELECTRA_BINARY_DIR) / "bin" / name).string();
}

inline std::vector<std::string> tiny_vocab_tokens() {
  return {"[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "quick", "brown", "fox", "jump", "##s",
          "over",  "lazy",  "dog",   ".",     ",",      "!",   "hello", "world", "a",   "b",    "##ing",
          "run",   "cat",   "sat",   "on",    "mat",    "and", "then",  "it",    "was", "good", "[",
          "]",     "mask",  "##ed",  "Hello", "##ly",   "is",  "of",    "to",    "in"};
}

// A tiny pretrainer with random parameters (every tensor, biases and LayerNorm included, is perturbed,
// so a tensor written under the wrong name or shape changes the outputs), saved as a run.
struct TinyRun {
  fs::path data_dir, run_dir, checkpoint;
  PretrainerConfig config;
  nlohmann::json model_json;
  std::vector<float> params;
  text::Vocab vocab;
};

inline PretrainerConfig tiny_config(int vocab_size) {
  nlohmann::json m = model_preset("tiny", vocab_size);
  m["embedding_size"] = 16;
  m["hidden_size"] = 32;  // != E: the discriminator has embeddings_project
  m["num_layers"] = 2;
  m["num_heads"] = 2;
  m["intermediate_size"] = 64;
  m["max_position_embeddings"] = 40;
  m["generator"] = {{"hidden_size", 16}, {"num_layers", 2}, {"num_heads", 2}, {"intermediate_size", 32}};  // == E
  m["num_token_predictions"] = 5;
  return pretrainer_config_from_json(m);
}

inline std::vector<float> random_params(const PretrainerConfig& config, uint64_t seed) {
  auto backend = make_cpu_backend<float>();
  ElectraPretrainer<float> model(config, *backend);
  model.init_parameters(seed);
  std::vector<float> params = model.parameters_to_host();
  PhiloxSequence rng(seed, RandomPurpose::kTest, 0, 0);
  for (float& p : params) p += 0.2f * (rng.next_uniform() - 0.5f);
  return params;
}

inline TinyRun make_tiny_run(const fs::path& root, bool lower_case = true, uint64_t seed = 7) {
  TinyRun run;
  run.data_dir = root / "data";
  run.run_dir = root / "run";
  fs::create_directories(run.data_dir);
  run.vocab = text::Vocab::from_tokens(tiny_vocab_tokens());
  run.vocab.save((run.data_dir / "vocab.txt").string());
  run.vocab = text::Vocab::load((run.data_dir / "vocab.txt").string());
  std::ofstream((run.data_dir / "manifest.json").string()) << nlohmann::json{
      {"format", "electra-mpi shards"},
      {"tokenizer", {{"lower_case", lower_case}}},
      {"vocab_hash", run.vocab.hash()},
      {"vocab_size", run.vocab.size()}}.dump();
  run.config = tiny_config(static_cast<int>(run.vocab.size()));
  run.model_json = to_json(run.config);
  run.params = random_params(run.config, seed);

  const PretrainerLayout layout = build_pretrainer_layout(run.config);
  const std::vector<TensorSlice> tensors = layout.layout.tensor_slices();
  train::CheckpointContent content;
  content.layout = tensors;
  content.params = run.params;
  content.state = {{"step", 7}, {"seed", seed}};
  content.config = {{"model", run.model_json}, {"data", {{"dir", run.data_dir.string()}, {"vocab", ""}}}};
  run.checkpoint = train::CheckpointManager(run.run_dir / "checkpoints").save(content);
  return run;
}

// The discriminator's logits [B*S] and the generator's MLM logits at every position [B*S*V] of our own
// pretrainer on `ids` (eval mode; prediction weights 0, so the discriminator sees `ids` unchanged).
struct OwnOutputs {
  std::vector<float> disc_logits, gen_logits;
};

inline OwnOutputs own_forward(const PretrainerConfig& config, const std::vector<float>& params, int B, int S,
                              const std::vector<int32_t>& ids, const std::vector<int32_t>& mask,
                              const std::vector<int32_t>& type_ids) {
  auto backend = make_cpu_backend<float>();
  ElectraPretrainer<float> model(config, *backend);
  model.parameters_from_host(params);
  Batch batch;
  batch.rows = B;
  batch.seq_length = S;
  batch.num_predictions = S;
  batch.input_word_ids = ids;
  batch.input_mask = mask;
  batch.input_type_ids = type_ids;
  for (int b = 0; b < B; ++b) {
    for (int s = 0; s < S; ++s) batch.masked_lm_positions.push_back(s);
  }
  batch.masked_lm_ids.assign(static_cast<size_t>(B) * S, 0);
  batch.masked_lm_weights.assign(static_cast<size_t>(B) * S, 0.0f);
  batch.global_batch_rows = B;
  StepContext context;
  context.training = false;
  const PretrainerOutputs<float>& out = model.forward(batch, context);
  return {out.disc_logits, out.lm_outputs};
}

// Python with transformers and torch, or an empty string and the reason.
inline std::string python_with_transformers(std::string* why) {
  const char* python = std::getenv("ELECTRA_PYTHON");
  if (python == nullptr || *python == '\0') {
    *why = "ELECTRA_PYTHON is not set";
    return "";
  }
  const CommandResult r =
      run_command(shell_quote(python) + " -c 'import torch, transformers, safetensors' > /dev/null 2>&1");
  if (r.status != 0) {
    *why = std::string(python) + " cannot import torch, transformers and safetensors";
    return "";
  }
  return python;
}

}  // namespace electra::interop::testing
