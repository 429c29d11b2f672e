// electra-train --init-from: a run exported by electra-export starts another run with exactly its
// weights (checked with lr 0: the next checkpoint exports to the same bytes), and a run whose model
// config differs is refused before training, naming the key; checkpoints and exports made with another
// vocabulary of the same size are refused too (TrainVocabularyRecord).
#include <gtest/gtest.h>

#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <utility>
#include <vector>

#include "lib/core/philox.h"
#include "lib/train/checkpoint.h"
#include "tests/interop/interop_test_util.h"

namespace electra::interop {
namespace {

using namespace testing;

std::string train_command(const fs::path& root, const fs::path& run_dir, const std::string& extra) {
  std::ostringstream cmd;
  cmd << shell_quote(program("electra-train")) << " --config "
      << shell_quote(std::string(ELECTRA_SOURCE_DIR) + "/jobs/configs/tiny.json") << " --data "
      << shell_quote((root / "shards").string()) << " --output " << shell_quote(run_dir.string())
      << " --set model.embedding_size=16 --set model.hidden_size=32 --set model.num_layers=2"
         " --set model.num_heads=2 --set model.intermediate_size=64 --set model.generator.hidden_size=16"
         " --set model.generator.num_layers=2 --set model.generator.num_heads=1"
         " --set model.generator.intermediate_size=32 --set model.num_token_predictions=5"
         " --set data.seq_length=32 --set train.batch_size=4 --set train.log_every=1 --set train.peak_gflops=50"
         " --set data.prefetch_batches=2 --set train.tensorboard=false --set train.threads=1 "
      << extra << " 2>&1";
  return cmd.str();
}

// ROOT/corpus (generated), ROOT/vocab.txt (electra-vocab --vocab-size 100) and ROOT/shards (electra-preprocess).
void prepare_shards(const fs::path& root) {
  fs::create_directories(root / "corpus");
  {
    const std::vector<std::string> words = {"the",       "model", "learns", "to",    "detect", "replaced",
                                            "tokens",    "in",    "text",   "while", "a",      "small",
                                            "generator", "fills", "masked", "words"};
    PhiloxSequence rng(3, RandomPurpose::kTest, 0, 0);
    std::ofstream out(root / "corpus" / "a.txt");
    for (int doc = 0; doc < 30; ++doc) {
      for (int s = 0; s < 5; ++s) {
        const int n = 4 + static_cast<int>(rng.next_below(9));
        for (int w = 0; w < n; ++w) out << (w ? " " : "") << words[rng.next_below(words.size())];
        out << ".\n";
      }
      out << "\n";
    }
  }
  CommandResult r =
      run_command(shell_quote(program("electra-vocab")) + " --input " + shell_quote((root / "corpus").string()) +
                  " --vocab-size 100 --output " + shell_quote((root / "vocab.txt").string()) + " 2>&1");
  ASSERT_EQ(r.status, 0) << r.out;
  r = run_command(shell_quote(program("electra-preprocess")) + " --input " + shell_quote((root / "corpus").string()) +
                  " --vocab " + shell_quote((root / "vocab.txt").string()) + " --output " +
                  shell_quote((root / "shards").string()) + " --max-seq-length 32 2>&1");
  ASSERT_EQ(r.status, 0) << r.out;
}

TEST(TrainInitFrom, StartsFromExportedWeightsAndChecksTheConfig) {
  TempDir tmp;
  const fs::path root = tmp.path();
  ASSERT_NO_FATAL_FAILURE(prepare_shards(root));
  CommandResult r;

  // Run A trains two steps and is exported.
  r = run_command(train_command(root, root / "a", "--set train.steps=2 --set train.checkpoint_every=2"));
  ASSERT_EQ(r.status, 0) << r.out;
  auto export_run = [&](const fs::path& run, const fs::path& out) {
    return run_command(shell_quote(program("electra-export")) + " --checkpoint " + shell_quote(run.string()) +
                       " --output " + shell_quote(out.string()) + " 2>&1");
  };
  r = export_run(root / "a", root / "hf_a");
  ASSERT_EQ(r.status, 0) << r.out;

  // Run B starts from A's export and takes one step with learning rate 0: its weights stay A's.
  r = run_command(train_command(root, root / "b",
                                "--set train.steps=1 --set train.checkpoint_every=1 --set optim.lr=0 --init-from " +
                                    shell_quote((root / "hf_a").string())));
  ASSERT_EQ(r.status, 0) << r.out;
  EXPECT_NE(r.out.find("initialised 80 tensors"), std::string::npos) << r.out;
  r = export_run(root / "b", root / "hf_b");
  ASSERT_EQ(r.status, 0) << r.out;
  for (const char* f : {"discriminator/model.safetensors", "generator/model.safetensors"}) {
    EXPECT_EQ(read_bytes(root / "hf_a" / f), read_bytes(root / "hf_b" / f)) << f;
  }
  // Without --init-from the same run starts elsewhere (the comparison above has teeth).
  r = run_command(
      train_command(root, root / "c", "--set train.steps=1 --set train.checkpoint_every=1 --set optim.lr=0"));
  ASSERT_EQ(r.status, 0) << r.out;
  r = export_run(root / "c", root / "hf_c");
  ASSERT_EQ(r.status, 0) << r.out;
  EXPECT_NE(read_bytes(root / "hf_a/discriminator/model.safetensors"),
            read_bytes(root / "hf_c/discriminator/model.safetensors"));

  // A directory without vocab.txt or tokenizer_config.json, and with other dropout rates: it loads, and what
  // could not be checked or is the run's choice is said.
  fs::copy(root / "hf_a", root / "hf_bare", fs::copy_options::recursive);
  for (const char* half : {"discriminator", "generator"}) {
    fs::remove(root / "hf_bare" / half / "vocab.txt");
    fs::remove(root / "hf_bare" / half / "tokenizer_config.json");
    nlohmann::json config = nlohmann::json::parse(read_bytes(root / "hf_bare" / half / "config.json"));
    config["hidden_dropout_prob"] = 0.0;
    std::ofstream(root / "hf_bare" / half / "config.json") << config.dump(2);
  }
  r = run_command(
      train_command(root, root / "bare",
                    "--set train.steps=1 --set optim.lr=0 --init-from " + shell_quote((root / "hf_bare").string())));
  ASSERT_EQ(r.status, 0) << r.out;
  EXPECT_NE(r.out.find("no vocab.txt in discriminator/ or generator/"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("no tokenizer_config.json, so its lower-casing cannot be checked"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("its hidden_dropout_prob is 0, the run's model.hidden_dropout 0.1"), std::string::npos) << r.out;
  EXPECT_EQ(r.out.find("attention_probs_dropout_prob is"), std::string::npos) << r.out;

  // Another depth: refused before training (exit 2), naming the key; nothing trained.
  r = run_command(train_command(
      root, root / "d",
      "--set train.steps=1 --set model.num_layers=3 --init-from " + shell_quote((root / "hf_a").string())));
  EXPECT_EQ(r.status, 2) << r.out;
  EXPECT_NE(r.out.find("model.num_layers: run 3, Hugging Face 2"), std::string::npos) << r.out;
  EXPECT_FALSE(fs::exists(root / "d" / "checkpoints" / "ckpt-00000001.h5"));
}

// ROOT/shards_swapped: the same corpus tokenized with ROOT/vocab.txt's last two tokens swapped, another
// vocabulary of the same size (so every shape check passes). Returns the two manifests' vocab_hash.
std::pair<uint64_t, uint64_t> prepare_swapped_shards(const fs::path& root) {
  std::vector<std::string> lines;
  {
    std::ifstream in(root / "vocab.txt");
    for (std::string line; std::getline(in, line);) lines.push_back(line);
  }
  std::swap(lines[lines.size() - 1], lines[lines.size() - 2]);
  fs::create_directories(root / "swapped");
  {
    std::ofstream out(root / "swapped" / "vocab.txt");
    for (const std::string& line : lines) out << line << "\n";
  }
  const CommandResult r =
      run_command(shell_quote(program("electra-preprocess")) + " --input " + shell_quote((root / "corpus").string()) +
                  " --vocab " + shell_quote((root / "swapped" / "vocab.txt").string()) + " --output " +
                  shell_quote((root / "shards_swapped").string()) + " --max-seq-length 32 2>&1");
  EXPECT_EQ(r.status, 0) << r.out;
  auto hash = [](const fs::path& manifest) {
    std::ifstream in(manifest);
    return nlohmann::json::parse(in).at("vocab_hash").get<uint64_t>();
  };
  return {hash(root / "shards" / "manifest.json"), hash(root / "shards_swapped" / "manifest.json")};
}

// Rewrites a checkpoint as an electra-train from before the vocabulary record wrote it (no state "vocab"
// or "tokenizer").
void drop_vocabulary_record(const fs::path& path) {
  std::vector<std::vector<float>> sections;
  std::vector<TensorSlice> layout;
  nlohmann::json state, loader, config;
  {
    const train::CheckpointFile file = train::CheckpointFile::open(path);
    size_t offset = 0;
    for (const train::StoredTensor& t : file.tensors(train::Section::kParams)) {
      size_t size = 1;
      for (int64_t d : t.shape) size *= static_cast<size_t>(d);
      layout.push_back({t.name, t.shape, offset, size});
      offset += size;
    }
    for (train::Section section : {train::Section::kParams, train::Section::kAdamM, train::Section::kAdamV}) {
      sections.emplace_back(offset);
      file.read_into(section, layout, sections.back());
    }
    state = file.state();
    loader = file.loader();
    config = file.config();
  }
  state.erase("vocab");
  state.erase("tokenizer");
  train::CheckpointContent content;
  content.layout = layout;
  content.params = sections[0];
  content.adam_m = sections[1];
  content.adam_v = sections[2];
  content.state = state;
  content.loader = loader;
  content.config = config;
  train::write_checkpoint(path, content);
}

// Checkpoints record the vocabulary (hash, size) and the shards' lower_case: resuming, or starting
// --init-from an export, on shards made with another vocabulary of the same size is refused before
// training (exit 2) naming both hashes; a checkpoint without the record resumes with a warning.
TEST(TrainVocabularyRecord, AnotherVocabularyOfTheSameSizeIsRefused) {
  TempDir tmp;
  const fs::path root = tmp.path();
  ASSERT_NO_FATAL_FAILURE(prepare_shards(root));
  const auto [hash, swapped_hash] = prepare_swapped_shards(root);
  ASSERT_NE(hash, swapped_hash);
  const std::string swapped_data = " --set data.dir=" + shell_quote((root / "shards_swapped").string());

  CommandResult r = run_command(train_command(root, root / "a", "--set train.steps=2 --set train.checkpoint_every=2"));
  ASSERT_EQ(r.status, 0) << r.out;
  const fs::path ckpt = root / "a" / "checkpoints" / "ckpt-00000002.h5";
  {
    const train::CheckpointFile file = train::CheckpointFile::open(ckpt);
    EXPECT_EQ(file.state().at("vocab").at("hash").get<uint64_t>(), hash);
    std::ifstream manifest(root / "shards" / "manifest.json");
    EXPECT_EQ(file.state().at("vocab").at("size"), nlohmann::json::parse(manifest).at("vocab_size"));
    EXPECT_EQ(file.state().at("tokenizer").at("lower_case"), true);
  }
  const std::string config_before = read_bytes(root / "a" / "config.json");
  const std::string ckpt_before = read_bytes(ckpt);

  // Resume on the other shards: refused, naming both hashes; nothing written.
  r = run_command(train_command(root, root / "a", "--set train.steps=4" + swapped_data));
  EXPECT_EQ(r.status, 2) << r.out;
  EXPECT_NE(r.out.find("another vocabulary (vocab_hash " + std::to_string(hash)), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("(vocab_hash " + std::to_string(swapped_hash)), std::string::npos) << r.out;
  EXPECT_EQ(read_bytes(root / "a" / "config.json"), config_before);
  EXPECT_EQ(read_bytes(ckpt), ckpt_before);
  EXPECT_FALSE(fs::exists(root / "a" / "checkpoints" / "ckpt-00000004.h5"));

  // --init-from an export (its vocab.txt) on the other shards: refused the same way.
  r = run_command(shell_quote(program("electra-export")) + " --checkpoint " + shell_quote((root / "a").string()) +
                  " --output " + shell_quote((root / "hf_a").string()) + " 2>&1");
  ASSERT_EQ(r.status, 0) << r.out;
  r = run_command(
      train_command(root, root / "b",
                    "--set train.steps=1" + swapped_data + " --init-from " + shell_quote((root / "hf_a").string())));
  EXPECT_EQ(r.status, 2) << r.out;
  EXPECT_NE(r.out.find("(vocab_hash " + std::to_string(hash)), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("(vocab_hash " + std::to_string(swapped_hash)), std::string::npos) << r.out;
  EXPECT_FALSE(fs::exists(root / "b" / "checkpoints"));

  // The same vocabulary, but shards made without lower-casing: refused, naming the tokenizer option.
  r = run_command(shell_quote(program("electra-preprocess")) + " --input " + shell_quote((root / "corpus").string()) +
                  " --vocab " + shell_quote((root / "vocab.txt").string()) + " --output " +
                  shell_quote((root / "shards_cased").string()) + " --max-seq-length 32 --no-lower-case 2>&1");
  ASSERT_EQ(r.status, 0) << r.out;
  r = run_command(train_command(root, root / "a",
                                "--set train.steps=4 --set data.dir=" + shell_quote((root / "shards_cased").string())));
  EXPECT_EQ(r.status, 2) << r.out;
  EXPECT_NE(r.out.find("tokenizer.lower_case = true"), std::string::npos) << r.out;
  EXPECT_EQ(read_bytes(ckpt), ckpt_before);

  // A checkpoint from before the record still resumes (on its own shards), with a warning.
  drop_vocabulary_record(ckpt);
  r = run_command(train_command(root, root / "a", "--set train.steps=3"));
  EXPECT_EQ(r.status, 0) << r.out;
  EXPECT_NE(r.out.find("records no vocabulary"), std::string::npos) << r.out;
  EXPECT_TRUE(fs::exists(root / "a" / "checkpoints" / "ckpt-00000003.h5"));
}

}  // namespace
}  // namespace electra::interop
