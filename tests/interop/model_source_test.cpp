// Where electra-eval, electra-export and electra-score find a model's vocabulary and lower-casing: the
// checkpoint's own record (state vocab.hash, tokenizer.lower_case) wins over the training manifest, and a
// vocabulary of the right size but other content (from --vocab or from the evaluation data) is refused,
// for checkpoints and for Hugging Face directories alike.
#include "lib/interop/model_source.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <fstream>
#include <functional>
#include <iterator>
#include <limits>

#include "lib/core/error.h"
#include "lib/interop/hf_export.h"
#include "lib/train/checkpoint_manager.h"
#include "tests/interop/interop_test_util.h"

namespace electra::interop {
namespace {

using namespace testing;

// The tiny run's vocabulary with two tokens swapped: the same size, other ids.
fs::path swapped_vocab(const fs::path& dir) {
  std::vector<std::string> tokens = tiny_vocab_tokens();
  std::swap(tokens[6], tokens[7]);
  const fs::path path = dir / "swapped_vocab.txt";
  text::Vocab::from_tokens(tokens).save(path.string());
  return path;
}

// A checkpoint of the run's parameters as electra-train writes it now: with the vocabulary's hash and the
// lower-casing in its state, and a data directory that no longer exists.
fs::path checkpoint_with_record(const TinyRun& run, const fs::path& dir, bool lower_case) {
  const PretrainerLayout layout = build_pretrainer_layout(run.config);
  const std::vector<TensorSlice> tensors = layout.layout.tensor_slices();
  train::CheckpointContent content;
  content.layout = tensors;
  content.params = run.params;
  content.state = {{"step", 9},
                   {"seed", 1},
                   {"vocab", {{"hash", run.vocab.hash()}, {"size", run.vocab.size()}}},
                   {"tokenizer", {{"lower_case", lower_case}}}};
  content.config = {{"model", run.model_json}, {"data", {{"dir", (dir / "moved_data").string()}, {"vocab", ""}}}};
  return train::CheckpointManager(dir / "checkpoints").save(content);
}

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

TEST(ModelSource, CheckpointRefusesAVocabularyItWasNotTrainedWith) {
  TempDir tmp;
  const TinyRun run = make_tiny_run(tmp.path() / "a");
  const fs::path checkpoint = checkpoint_with_record(run, tmp.path() / "b", /*lower_case=*/false);
  const fs::path original = run.data_dir / "vocab.txt", swapped = swapped_vocab(tmp.path());

  // The data directory is gone: --vocab is the only vocabulary, and the record says whether it fits.
  const PretrainerBundle bundle = load_checkpoint_bundle(checkpoint, original.string());
  EXPECT_EQ(bundle.vocab.hash(), run.vocab.hash());
  EXPECT_FALSE(bundle.tokenizer.lower_case);  // recorded, not BERT's default
  const std::string error = error_of([&] { load_checkpoint_bundle(checkpoint, swapped.string()); });
  EXPECT_NE(error.find("swapped_vocab.txt"), std::string::npos) << error;
  EXPECT_NE(error.find("token ids would mean different words"), std::string::npos) << error;
  EXPECT_NE(error.find(std::to_string(run.vocab.hash())), std::string::npos) << error;
}

TEST(ModelSource, RecordedLowerCasingWinsOverTheManifest) {
  TempDir tmp;
  const TinyRun run = make_tiny_run(tmp.path() / "a", /*lower_case=*/true);
  fs::path checkpoint = checkpoint_with_record(run, tmp.path() / "b", /*lower_case=*/false);
  // Move the data back under the recorded path: its manifest says lower_case true, the record false.
  fs::rename(run.data_dir, tmp.path() / "b" / "moved_data");
  const PretrainerBundle bundle = load_checkpoint_bundle(checkpoint, "");
  EXPECT_FALSE(bundle.tokenizer.lower_case);
  EXPECT_TRUE(bundle.tokenizer_recorded);
}

// Whether the lower-casing is known (electra-eval compares it with the held-out shards') or assumed: an older
// checkpoint without the record, whose training data has moved, has only BERT's default.
TEST(ModelSource, SaysWhetherTheLowerCasingWasRecordedOrAssumed) {
  TempDir tmp;
  const TinyRun run = make_tiny_run(tmp.path() / "a", /*lower_case=*/false);
  EXPECT_TRUE(load_checkpoint_bundle(run.run_dir).tokenizer_recorded);  // the manifest beside the data
  const PretrainerLayout layout = build_pretrainer_layout(run.config);
  const std::vector<TensorSlice> tensors = layout.layout.tensor_slices();  // content.layout is a view
  train::CheckpointContent content;
  content.layout = tensors;
  content.params = run.params;
  content.state = {{"step", 9}, {"seed", 1}};
  content.config = {{"model", run.model_json},
                    {"data", {{"dir", (tmp.path() / "moved_data").string()}, {"vocab", ""}}}};
  const fs::path older = train::CheckpointManager(tmp.path() / "b" / "checkpoints").save(content);
  const PretrainerBundle assumed = load_checkpoint_bundle(older, (run.data_dir / "vocab.txt").string());
  EXPECT_FALSE(assumed.tokenizer_recorded);
  EXPECT_TRUE(assumed.tokenizer.lower_case);
  // A run on NVIDIA shards (no manifest) records null: not recorded either. It was refused as "not a boolean",
  // so such a run could not be exported or evaluated.
  content.state["tokenizer"] = {{"lower_case", nullptr}};
  const fs::path nvidia = train::CheckpointManager(tmp.path() / "c" / "checkpoints").save(content);
  const PretrainerBundle unrecorded = load_checkpoint_bundle(nvidia, (run.data_dir / "vocab.txt").string());
  EXPECT_FALSE(unrecorded.tokenizer_recorded);
  EXPECT_TRUE(unrecorded.tokenizer.lower_case);
  // An export writes tokenizer_config.json: recorded, and false as trained.
  const fs::path out = tmp.path() / "hf";
  export_hf(load_checkpoint_bundle(run.run_dir), out);
  const PretrainerBundle exported = load_pretrainer_bundle(out);
  EXPECT_TRUE(exported.tokenizer_recorded);
  EXPECT_FALSE(exported.tokenizer.lower_case);
  fs::remove(out / "discriminator" / "tokenizer_config.json");
  fs::remove(out / "generator" / "tokenizer_config.json");
  EXPECT_FALSE(load_pretrainer_bundle(out).tokenizer_recorded);
}

TEST(ModelSource, ExportDirectoryRefusesAnotherVocabulary) {
  TempDir tmp;
  const TinyRun run = make_tiny_run(tmp.path() / "a");
  const fs::path out = tmp.path() / "hf";
  export_hf(load_checkpoint_bundle(run.run_dir), out);
  EXPECT_EQ(load_pretrainer_bundle(out, (run.data_dir / "vocab.txt").string()).vocab.hash(), run.vocab.hash());
  const std::string error = error_of([&] { load_pretrainer_bundle(out, swapped_vocab(tmp.path()).string()); });
  EXPECT_NE(error.find("token ids would mean different words"), std::string::npos) << error;
}

// Parameters that are not finite (a damaged or edited file whose checksum still fits) are refused naming
// the tensor: a NaN made electra-score print null for every token with exit 0. The same for an export, and a
// file of an export half that is a directory is named too.
TEST(ModelSource, NonFiniteParametersAndDirectoriesForFilesAreNamed) {
  TempDir tmp;
  TinyRun run = make_tiny_run(tmp.path() / "a");
  const fs::path out = tmp.path() / "hf";
  export_hf(load_checkpoint_bundle(run.run_dir), out);
  const PretrainerLayout layout = build_pretrainer_layout(run.config);
  const ParameterSlice& tensor = layout.layout.slices()[3];
  run.params[tensor.offset + 1] = std::numeric_limits<float>::quiet_NaN();
  const fs::path checkpoint = checkpoint_with_record(run, tmp.path() / "b", /*lower_case=*/true);
  std::string error = error_of([&] { load_checkpoint_bundle(checkpoint, (run.data_dir / "vocab.txt").string()); });
  EXPECT_NE(error.find("tensor " + tensor.name + " holds nan at element 1"), std::string::npos) << error;
  PretrainerBundle damaged = load_checkpoint_bundle(run.run_dir);
  damaged.params[tensor.offset] = std::numeric_limits<float>::infinity();
  const fs::path damaged_out = tmp.path() / "hf_damaged";
  export_hf(damaged, damaged_out);
  error = error_of([&] { load_pretrainer_bundle(damaged_out); });
  EXPECT_NE(error.find("holds inf at element 0"), std::string::npos) << error;
  fs::remove(out / "discriminator" / "config.json");
  fs::create_directory(out / "discriminator" / "config.json");
  error = error_of([&] { load_pretrainer_bundle(out); });
  EXPECT_NE(error.find((out / "discriminator" / "config.json").string() + ": is a directory"), std::string::npos)
      << error;
  fs::remove(damaged_out / "generator" / "model.safetensors");
  fs::create_directory(damaged_out / "generator" / "model.safetensors");
  error = error_of([&] { load_pretrainer_bundle(damaged_out); });
  EXPECT_NE(error.find((damaged_out / "generator" / "model.safetensors").string() + ": is a directory"),
            std::string::npos)
      << error;
}

// electra-eval reads the evaluation data's vocab.txt: data made with another vocabulary of the same size is
// refused (exit 2) instead of being scored with the wrong words.
TEST(ModelSource, ElectraEvalRefusesDataOfAnotherVocabulary) {
  TempDir tmp;
  const TinyRun run = make_tiny_run(tmp.path() / "a");
  const fs::path checkpoint = checkpoint_with_record(run, tmp.path() / "b", true);
  const fs::path corpus = tmp.path() / "corpus.txt";
  write_bytes(corpus,
              "the quick brown fox jumps over the lazy dog .\nhello world , it was good .\n\n"
              "the cat sat on the mat and then it was good .\na b a b hello .\n");
  const fs::path shards = tmp.path() / "shards";
  const CommandResult pre =
      run_command(shell_quote(program("electra-preprocess")) + " --input " + shell_quote(corpus.string()) +
                  " --vocab " + shell_quote(swapped_vocab(tmp.path()).string()) + " --output " +
                  shell_quote(shards.string()) + " --max-seq-length 32 2>&1");
  ASSERT_EQ(pre.status, 0) << pre.out;
  const CommandResult eval =
      run_command(shell_quote(program("electra-eval")) + " --checkpoint " + shell_quote(checkpoint.string()) +
                  " --data " + shell_quote(shards.string()) + " --seq-length 32 --batch-size 2 2>&1");
  EXPECT_EQ(eval.status, 2) << eval.out;
  EXPECT_NE(eval.out.find("token ids would mean different words"), std::string::npos) << eval.out;
}

std::string file_bytes(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

// electra-export --force writes the new export aside and swaps it in: a write that fails (here the file
// size limit, as a full disk would) leaves the earlier export whole, never half old and half new.
TEST(ExportReplace, AFailedWriteLeavesTheEarlierExportWhole) {
  TempDir tmp;
  const TinyRun first = make_tiny_run(tmp.path() / "a", true, /*seed=*/7);
  const TinyRun second = make_tiny_run(tmp.path() / "b", true, /*seed=*/8);
  const fs::path out = tmp.path() / "hf";
  const std::string exporter = shell_quote(program("electra-export"));
  const auto export_to_out = [&](const TinyRun& run, const std::string& prefix) {
    return run_command(prefix + exporter + " --checkpoint " + shell_quote(run.run_dir.string()) + " --output " +
                       shell_quote(out.string()) + " --force 2>&1");
  };
  ASSERT_EQ(export_to_out(first, "").status, 0);
  const fs::path disc = out / "discriminator" / "model.safetensors", gen = out / "generator" / "model.safetensors";
  const std::string disc_before = file_bytes(disc), gen_before = file_bytes(gen);

  // A file size limit of at most half the discriminator's weights (ulimit -f counts 512- or 1024-byte
  // blocks), with SIGXFSZ ignored so that the write fails instead of killing the process.
  const size_t blocks = disc_before.size() / 2 / 1024;
  ASSERT_GT(blocks, 0u);
  const CommandResult failed = export_to_out(second, "trap '' XFSZ; ulimit -f " + std::to_string(blocks) + "; ");
  EXPECT_EQ(failed.status, 1) << failed.out;
  EXPECT_EQ(file_bytes(disc), disc_before);
  EXPECT_EQ(file_bytes(gen), gen_before);
  EXPECT_FALSE(fs::exists(out / ".electra-export-staging"));

  const CommandResult replaced = export_to_out(second, "");
  ASSERT_EQ(replaced.status, 0) << replaced.out;
  EXPECT_NE(file_bytes(disc), disc_before);
  EXPECT_NE(file_bytes(gen), gen_before);
  EXPECT_FALSE(fs::exists(out / ".electra-export-staging"));
}

}  // namespace
}  // namespace electra::interop
