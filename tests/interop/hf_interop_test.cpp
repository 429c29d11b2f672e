// Export to / import from Hugging Face directories: the real client (transformers) loads what
// electra-export writes and computes the same logits and token ids; export -> import -> export is
// byte-identical; import rejects inconsistent directories naming the tensor or key; --init-from's
// library half copies exactly the Hugging Face tensors.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <map>
#include <set>
#include <sstream>

#include "data_pipeline/tokenizer/bert_tokenizer.h"
#include "lib/core/dir_lock.h"
#include "lib/core/error.h"
#include "lib/interop/hf_export.h"
#include "lib/interop/hf_format.h"
#include "lib/interop/hf_import.h"
#include "lib/interop/model_source.h"
#include "lib/interop/safetensors.h"
#include "lib/interop/scorer.h"
#include "tests/interop/interop_test_util.h"

namespace electra::interop {
namespace {

using namespace testing;

std::string source_dir() { return ELECTRA_SOURCE_DIR; }

// max |a - b| / max |b| over the positions where `keep` is true.
double relative_error(const std::vector<float>& ours, const std::vector<double>& ref, const std::vector<bool>& keep) {
  double diff = 0, scale = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    if (!keep[i]) continue;
    diff = std::max(diff, std::abs(static_cast<double>(ours[i]) - ref[i]));
    scale = std::max(scale, std::abs(ref[i]));
  }
  return diff / std::max(scale, 1e-30);
}

std::vector<fs::path> files_under(const fs::path& dir) {
  std::vector<fs::path> out;
  for (const auto& e : fs::recursive_directory_iterator(dir)) {
    if (e.is_regular_file()) out.push_back(fs::relative(e.path(), dir));
  }
  std::sort(out.begin(), out.end());
  return out;
}

void export_with_program(const TinyRun& run, const fs::path& out, const std::string& extra = "") {
  const std::string exe = program("electra-export");
  const CommandResult r = run_command(shell_quote(exe) + " --checkpoint " + shell_quote(run.run_dir.string()) +
                                      " --output " + shell_quote(out.string()) + " " + extra);
  ASSERT_EQ(r.status, 0) << r.out;
}

TEST(HfInterop, TransformersLoadsExportAndComputesOurLogits) {
  std::string why;
  const std::string python = python_with_transformers(&why);
  if (python.empty()) GTEST_SKIP() << why;
  TempDir tmp;
  const TinyRun run = make_tiny_run(tmp.path());
  const fs::path out = tmp.path() / "hf";
  ASSERT_NO_FATAL_FAILURE(export_with_program(run, out));

  // Two rows: one with segment B tokens, one with trailing padding.
  const int B = 2, S = 12;
  const std::vector<int32_t> ids = {2, 5,  6,  7,  8,  9, 10, 3, 11, 5, 12, 3,  //
                                    2, 17, 15, 18, 16, 4, 21, 3, 0,  0, 0,  0};
  const std::vector<int32_t> mask = {1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,  //
                                     1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0};
  const std::vector<int32_t> type_ids = {0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1,  //
                                         0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0};
  const std::vector<std::string> lines = {"The quick brown fox jumps over the lazy dog.",
                                          "Hello, WORLD!",
                                          "a [MASK] b",
                                          "hello[MASK]world and [mask] then",
                                          "cats sat on a mat",
                                          "  jumping\tover , unknownword !"};
  auto to_rows = [&](const std::vector<int32_t>& v) {
    nlohmann::json rows = nlohmann::json::array();
    for (int b = 0; b < B; ++b) rows.push_back(std::vector<int32_t>(v.begin() + b * S, v.begin() + (b + 1) * S));
    return rows;
  };
  const fs::path input = tmp.path() / "input.json", output = tmp.path() / "output.json";
  std::ofstream(input) << nlohmann::json{
      {"ids", to_rows(ids)},
      {"mask", to_rows(mask)},
      {"type_ids", to_rows(type_ids)},
      {"lines", lines}}.dump();
  const CommandResult r =
      run_command(shell_quote(python) + " " + shell_quote(source_dir() + "/tests/interop/hf_load.py") + " " +
                  shell_quote(out.string()) + " " + shell_quote(input.string()) + " " + shell_quote(output.string()) +
                  " " + shell_quote((tmp.path() / "saved").string()) + " 2>&1");
  ASSERT_EQ(r.status, 0) << r.out;
  const nlohmann::json hf = nlohmann::json::parse(read_bytes(output));

  const OwnOutputs own = own_forward(run.config, run.params, B, S, ids, mask, type_ids);
  const int V = run.config.vocab_size;
  std::vector<double> hf_disc, hf_gen;
  std::vector<bool> keep_disc, keep_gen;
  for (int b = 0; b < B; ++b) {
    for (int s = 0; s < S; ++s) {
      hf_disc.push_back(hf["disc_logits"][b][s].get<double>());
      keep_disc.push_back(mask[b * S + s] == 1);
      for (int v = 0; v < V; ++v) {
        hf_gen.push_back(hf["gen_logits"][b][s][v].get<double>());
        keep_gen.push_back(mask[b * S + s] == 1);
      }
    }
  }
  ASSERT_EQ(own.disc_logits.size(), hf_disc.size());
  ASSERT_EQ(own.gen_logits.size(), hf_gen.size());
  EXPECT_LE(relative_error(own.disc_logits, hf_disc, keep_disc), 1e-4);
  EXPECT_LE(relative_error(own.gen_logits, hf_gen, keep_gen), 1e-4);
  // The comparison has teeth: the outputs are not all alike.
  EXPECT_GT(std::abs(hf_disc[0] - hf_disc[1]), 1e-3);

  // Same ids as BertTokenizer(vocab.txt, do_lower_case) and ElectraTokenizer.from_pretrained, with
  // literal [MASK] kept whole.
  EXPECT_TRUE(hf["do_lower_case"].get<bool>());
  Scorer scorer(load_pretrainer_bundle(out));
  for (size_t i = 0; i < lines.size(); ++i) {
    const std::vector<int32_t> ours = scorer.encode(lines[i]);
    EXPECT_EQ(ours, hf["tokenizer_ids"]["bert"][i].get<std::vector<int32_t>>()) << lines[i];
    EXPECT_EQ(ours, hf["tokenizer_ids"]["electra"][i].get<std::vector<int32_t>>()) << lines[i];
  }
  EXPECT_EQ(scorer.encode("a [MASK] b"), (std::vector<int32_t>{2, 19, 4, 20, 3}));

  // What Hugging Face's own save_pretrained writes (as for Google's converted checkpoints) imports to
  // the same weights, vocabulary and tokenizer settings.
  const fs::path saved = tmp.path() / "saved";
  EXPECT_FALSE(SafetensorsFile::load(saved / "generator/model.safetensors").contains("generator_lm_head.weight"));
  const HfPretrainer back = load_hf_pretrainer(saved / "discriminator", saved / "generator");
  EXPECT_EQ(hf_config_difference(run.config, back.config), std::nullopt);
  ASSERT_TRUE(back.vocab.has_value());
  EXPECT_EQ(back.vocab->tokens(), run.vocab.tokens());
  EXPECT_TRUE(back.tokenizer.lower_case);
  const PretrainerLayout layout = build_pretrainer_layout(run.config);
  for (const ParameterSlice& v : layout.layout.slices()) {
    if (v.name.rfind("generator_classification_head.", 0) == 0) continue;
    for (size_t i = 0; i < v.size; ++i) ASSERT_EQ(back.params[v.offset + i], run.params[v.offset + i]) << v.name;
  }
  // Hugging Face's discriminator alone (as google/electra-*-discriminator comes) scores every line as the
  // export does, whose logits equal transformers' above.
  fs::copy(saved / "discriminator", tmp.path() / "lone");
  Scorer lone(load_scoring_bundle(tmp.path() / "lone"));
  EXPECT_FALSE(lone.model().has_generator);
  for (const std::string& line : lines) {
    EXPECT_EQ(lone.score(line, {}).disc_logits, scorer.score(line, {}).disc_logits) << line;
  }
}

// A discriminator that transformers made and saved itself (its own config.json keys, its own tokenizer
// files), alone in its directory as google/electra-*-discriminator comes: electra-score gives
// transformers' ids and sigmoid(logits).
TEST(HfInterop, ElectraScoreScoresADiscriminatorThatTransformersMade) {
  std::string why;
  const std::string python = python_with_transformers(&why);
  if (python.empty()) GTEST_SKIP() << why;
  TempDir tmp;
  const TinyRun run = make_tiny_run(tmp.path());
  const fs::path model = tmp.path() / "electra-discriminator", lines = tmp.path() / "lines.txt",
                 want = tmp.path() / "transformers.json";
  write_bytes(lines, "The quick brown fox jumps over the lazy dog.\nhello [MASK] world\n\ncats sat, on a MAT!\n");
  const CommandResult made =
      run_command(shell_quote(python) + " " + shell_quote(source_dir() + "/tests/interop/hf_discriminator.py") + " " +
                  shell_quote((run.data_dir / "vocab.txt").string()) + " " + shell_quote(model.string()) + " " +
                  shell_quote(lines.string()) + " " + shell_quote(want.string()) + " 2>&1");
  ASSERT_EQ(made.status, 0) << made.out;
  const CommandResult scored = run_command(shell_quote(program("electra-score")) + " --model " +
                                           shell_quote(model.string()) + " < " + shell_quote(lines.string()));
  ASSERT_EQ(scored.status, 0) << scored.out;
  const nlohmann::json expected = nlohmann::json::parse(read_bytes(want));
  std::istringstream ours(scored.out);
  std::string line;
  size_t n = 0;
  for (; std::getline(ours, line); ++n) {
    ASSERT_LT(n, expected.size()) << scored.out;
    const nlohmann::json got = nlohmann::json::parse(line);
    EXPECT_EQ(got["ids"], expected[n]["ids"]) << "line " << n;
    const auto probs = got["replaced_prob"].get<std::vector<double>>();
    const auto reference = expected[n]["replaced_prob"].get<std::vector<double>>();
    ASSERT_EQ(probs.size(), reference.size()) << "line " << n;
    for (size_t i = 0; i < probs.size(); ++i)
      EXPECT_NEAR(probs[i], reference[i], 1e-6) << "line " << n << " token " << i;
  }
  EXPECT_EQ(n, expected.size());
  // The comparison has teeth: the probabilities are not all alike.
  const auto first = expected[0]["replaced_prob"].get<std::vector<double>>();
  EXPECT_GT(*std::max_element(first.begin(), first.end()) - *std::min_element(first.begin(), first.end()), 1e-3);
}

// Lines where tokenizers part ways: accents and case, CJK and other scripts, punctuation, control, zero-width
// and replacement characters, decomposed accents and compatibility characters that NFC changes (U+212B
// ANGSTROM SIGN, U+212A KELVIN SIGN), a word over Hugging Face's default limit of 100 characters and
// one over ours (200), literal special tokens, empty and blank lines.
std::vector<std::string> tricky_lines() {
  std::vector<std::string> lines = nlohmann::json::parse(R"([
    "H\u00e9llo W\u00d6RLD, the caf\u00e9 and the \u00c7at!",
    "the \u732b sat\u5728\u4e2d mat \u3042\u3044 \uac00 \ud840\udc00x",
    "hello,world!!...(a)b [mask] \u00bfok? \u2014 \"quick\"-brown's $5 ^_^ ~",
    "hello\u0001world\tthe\r\ndog\u0000cat\u200bsat\u00a0on\u007fa\ufffdb\u0085it\u2028was",
    "a [MASK] b hello[MASK]world [CLS] x [SEP] [PAD][UNK] [MASK",
    "",
    "   \t  ",
    "It was GOOD. Hello HELLO hello",
    "\u1e9b\u0323 \ufb01 \u00df \u0130 the\u0301 A\u030a",
    "the cat\u0301 Cafe\u0301 \u212bngstrom \u212a hello"
  ])");
  lines.push_back("jump" + std::string(146, 's'));  // 150 characters: pieces for us, [UNK] at HF's default 100
  lines.push_back("jump" + std::string(246, 's'));  // 250 characters: [UNK] for us too
  return lines;
}

// AutoTokenizer (the fast tokenizer, built from the exported tokenizer.json) gives our ids exactly,
// with our 200-character word limit, also on text NFC changes; the slow ElectraTokenizer
// still loads and differs only where its hard-coded limit of 100 characters applies.
TEST(HfInterop, FastTokenizerFromTokenizerJsonGivesOurIds) {
  std::string why;
  const std::string python = python_with_transformers(&why);
  if (python.empty()) GTEST_SKIP() << why;
  TempDir tmp;
  const TinyRun run = make_tiny_run(tmp.path());
  PretrainerBundle bundle = load_checkpoint_bundle(run.run_dir);
  const std::vector<std::string> lines = tricky_lines();
  const size_t word150 = lines.size() - 2;
  const std::vector<std::string> pair = {"Hello, the dog!", "jumps over [MASK] mat"};
  const fs::path input = tmp.path() / "input.json";
  std::ofstream(input) << nlohmann::json{{"lines", lines}, {"pair", pair}}.dump();

  text::TokenizerOptions cased;
  cased.lower_case = false;
  text::TokenizerOptions lower_keeping_accents_no_cjk;
  lower_keeping_accents_no_cjk.strip_accents = false;
  lower_keeping_accents_no_cjk.tokenize_chinese_chars = false;
  const std::pair<const char*, text::TokenizerOptions> variants[] = {
      {"uncased", text::TokenizerOptions{}},
      {"cased", cased},
      {"lower_keeping_accents_no_cjk", lower_keeping_accents_no_cjk}};
  for (const auto& [name, options] : variants) {
    SCOPED_TRACE(name);
    bundle.tokenizer = options;
    const fs::path out = tmp.path() / name;
    export_hf(bundle, out);
    const fs::path output = tmp.path() / (std::string(name) + ".json");
    const CommandResult r =
        run_command(shell_quote(python) + " " + shell_quote(source_dir() + "/tests/interop/hf_tokenize.py") + " " +
                    shell_quote((out / "discriminator").string()) + " " + shell_quote(input.string()) + " " +
                    shell_quote(output.string()) + " 2>&1");
    ASSERT_EQ(r.status, 0) << r.out;
    const nlohmann::json hf = nlohmann::json::parse(read_bytes(output));
    EXPECT_EQ(hf["fast_class"], "ElectraTokenizerFast");
    EXPECT_EQ(hf["slow_class"], "ElectraTokenizer");
    EXPECT_EQ(hf["max_input_chars_per_word"], 200);
    EXPECT_EQ(hf["differs_from_bert_tokenizer_fast"], nlohmann::json::array());

    const text::BertTokenizer tokenizer(bundle.vocab, options);
    auto ours = [&](const std::string& line) {
      std::vector<int32_t> ids = {bundle.vocab.cls_id()};
      for (int32_t id : encode_keeping_special_tokens(tokenizer, line)) ids.push_back(id);
      ids.push_back(bundle.vocab.sep_id());
      return ids;
    };
    for (size_t i = 0; i < lines.size(); ++i) {
      const std::vector<int32_t> want = ours(lines[i]);
      EXPECT_EQ(hf["fast"][i].get<std::vector<int32_t>>(), want) << "fast, line " << i << ": " << lines[i];
      EXPECT_EQ(hf["raw"][i].get<std::vector<int32_t>>(), want) << "tokenizer.json, line " << i << ": " << lines[i];
      if (i == word150) {
        EXPECT_EQ(want.size(), 149u);  // jump + 146 x ##s + [CLS] [SEP]: not [UNK] for us
        EXPECT_EQ(hf["slow"][i].get<std::vector<int32_t>>(),
                  (std::vector<int32_t>{bundle.vocab.cls_id(), bundle.vocab.unk_id(), bundle.vocab.sep_id()}));
      } else {
        EXPECT_EQ(hf["slow"][i].get<std::vector<int32_t>>(), want) << "slow, line " << i << ": " << lines[i];
      }
    }
    // [CLS] A [SEP] B [SEP] with segment ids 0 then 1.
    std::vector<int32_t> pair_ids = ours(pair[0]);
    const std::vector<int32_t> second = ours(pair[1]);
    std::vector<int32_t> pair_types(pair_ids.size(), 0);
    pair_ids.insert(pair_ids.end(), second.begin() + 1, second.end());
    pair_types.resize(pair_ids.size(), 1);
    EXPECT_EQ(hf["pair_ids"].get<std::vector<int32_t>>(), pair_ids);
    EXPECT_EQ(hf["pair_type_ids"].get<std::vector<int32_t>>(), pair_types);
  }
}

TEST(HfInterop, ExportImportExportIsByteIdentical) {
  TempDir tmp;
  const TinyRun run = make_tiny_run(tmp.path(), /*lower_case=*/false);
  const fs::path first = tmp.path() / "first", second = tmp.path() / "second";
  ASSERT_NO_FATAL_FAILURE(export_with_program(run, first));

  const PretrainerBundle imported = load_pretrainer_bundle(first);
  EXPECT_EQ(hf_config_difference(run.config, imported.config), std::nullopt);
  EXPECT_FALSE(imported.tokenizer.lower_case);
  EXPECT_EQ(imported.vocab.tokens(), run.vocab.tokens());
  // Every tensor Hugging Face holds comes back bit-exactly; the sentence head is not exported.
  const PretrainerLayout layout = build_pretrainer_layout(run.config);
  for (const ParameterSlice& v : layout.layout.slices()) {
    const bool sentence_head = v.name.rfind("generator_classification_head.", 0) == 0;
    for (size_t i = 0; i < v.size; ++i) {
      const float want = sentence_head ? 0.0f : run.params[v.offset + i];
      ASSERT_EQ(imported.params[v.offset + i], want) << v.name << "[" << i << "]";
    }
  }
  const HfPretrainer hf = load_hf_pretrainer(first / "discriminator", first / "generator");
  EXPECT_EQ(hf.not_loaded,
            (std::vector<std::string>{
                "generator_classification_head.dense.weight", "generator_classification_head.dense.bias",
                "generator_classification_head.out_proj.weight", "generator_classification_head.out_proj.bias"}));
  EXPECT_EQ(hf.shared_embeddings_max_abs_diff, 0.0);

  export_hf(imported, second);
  const std::vector<fs::path> files = files_under(first);
  EXPECT_EQ(files, files_under(second));
  EXPECT_EQ(files.size(), 12u);
  for (const fs::path& f : files) EXPECT_EQ(read_bytes(first / f), read_bytes(second / f)) << f;

  // The files say what Hugging Face needs.
  const nlohmann::json disc = nlohmann::json::parse(read_bytes(first / "discriminator/config.json"));
  const nlohmann::json gen = nlohmann::json::parse(read_bytes(first / "generator/config.json"));
  EXPECT_EQ(disc["architectures"][0], "ElectraForPreTraining");
  EXPECT_EQ(gen["architectures"][0], "ElectraForMaskedLM");
  EXPECT_EQ(disc["hidden_size"], 32);
  EXPECT_EQ(gen["hidden_size"], 16);
  EXPECT_EQ(disc["embedding_size"], 16);
  EXPECT_EQ(disc["layer_norm_eps"].get<double>(), 1e-12);
  EXPECT_EQ(disc["pad_token_id"], 0);
  const nlohmann::json tok = nlohmann::json::parse(read_bytes(first / "generator/tokenizer_config.json"));
  EXPECT_EQ(tok["do_lower_case"], false);
  EXPECT_EQ(tok["tokenizer_class"], "ElectraTokenizer");
  const nlohmann::json tok_json = nlohmann::json::parse(read_bytes(first / "generator/tokenizer.json"));
  EXPECT_EQ(tok_json["model"]["max_input_chars_per_word"], 200);
  EXPECT_EQ(tok_json["model"]["vocab"].size(), run.vocab.size());
  EXPECT_EQ(tok_json["model"]["vocab"]["##ing"], run.vocab.id("##ing"));
  EXPECT_EQ(tok_json["normalizer"]["normalizers"][0]["type"], "NFC");  // cased: composed first, as ours
  const nlohmann::json& bert_normalizer = tok_json["normalizer"]["normalizers"][1];
  EXPECT_EQ(bert_normalizer["type"], "BertNormalizer");
  EXPECT_EQ(bert_normalizer["lowercase"], false);
  EXPECT_EQ(bert_normalizer["strip_accents"], nullptr);  // follows lowercase, as in tokenizer_config.json
  EXPECT_EQ(tok_json["added_tokens"][4]["content"], "[MASK]");
  EXPECT_EQ(tok_json["added_tokens"][4]["id"], run.vocab.mask_id());
  const SafetensorsFile g = SafetensorsFile::load(first / "generator/model.safetensors");
  EXPECT_TRUE(g.contains("generator_lm_head.weight"));
  EXPECT_TRUE(g.contains("electra.encoder.layer.1.output.LayerNorm.bias"));
  EXPECT_FALSE(g.contains("electra.embeddings_project.weight"));  // generator hidden == E
  EXPECT_FALSE(g.contains("discriminator_predictions.dense.weight"));
  EXPECT_FALSE(g.contains("generator_classification_head.dense.weight"));
  EXPECT_EQ(g.read_floats("generator_lm_head.weight"), g.read_floats("electra.embeddings.word_embeddings.weight"));
  const SafetensorsFile d = SafetensorsFile::load(first / "discriminator/model.safetensors");
  EXPECT_TRUE(d.contains("electra.embeddings_project.weight"));
  EXPECT_FALSE(d.contains("generator_predictions.dense.weight"));
}

// Two exports into one directory share its staging directory: the second one is refused (exit 2, naming the
// holder) while the first writes. Two at once could both exit 0 with a discriminator/ without weights.
TEST(HfInterop, AnExportIntoADirectoryBeingWrittenIsRefused) {
  TempDir tmp;
  const TinyRun run = make_tiny_run(tmp.path());
  const fs::path out = tmp.path() / "out";
  const std::string cmd = shell_quote(program("electra-export")) + " --checkpoint " +
                          shell_quote(run.checkpoint.string()) + " --output " + shell_quote(out.string()) + " 2>&1";
  {
    const DirectoryLock writing(out, kExportLockName);  // another export, as far as electra-export can tell
    ASSERT_EQ(writing.state(), DirectoryLock::State::kHeld);
    const CommandResult refused = run_command(cmd);
    EXPECT_EQ(refused.status, 2) << refused.out;
    EXPECT_NE(refused.out.find("is being written by another electra-export"), std::string::npos) << refused.out;
    EXPECT_FALSE(fs::exists(out / "discriminator"));
  }
  fs::remove(out / kExportLockName);
  fs::remove(out);
  const CommandResult done = run_command(cmd);
  ASSERT_EQ(done.status, 0) << done.out;
  EXPECT_TRUE(fs::exists(out / "discriminator" / "model.safetensors"));
  EXPECT_FALSE(fs::exists(out / kExportLockName)) << "the lock file goes with the export";
  // An output that is a link to nothing is refused before anything is written (exit 1 when the lock's
  // create_directories failed on it).
  const fs::path dangling = tmp.path() / "dangling";
  fs::create_symlink(tmp.path() / "nowhere", dangling);
  const CommandResult refused =
      run_command(shell_quote(program("electra-export")) + " --checkpoint " + shell_quote(run.checkpoint.string()) +
                  " --output " + shell_quote(dangling.string()) + " 2>&1");
  EXPECT_EQ(refused.status, 2) << refused.out;
  EXPECT_NE(refused.out.find("is a symbolic link to nothing"), std::string::npos) << refused.out;
}

TEST(HfInterop, ExportRefusesNonEmptyDirectoryWithoutForce) {
  TempDir tmp;
  const TinyRun run = make_tiny_run(tmp.path());
  const fs::path out = tmp.path() / "out";
  fs::create_directories(out);
  write_bytes(out / "keep.txt", "mine");
  const std::string cmd = shell_quote(program("electra-export")) + " --checkpoint " +
                          shell_quote(run.checkpoint.string()) + " --output " + shell_quote(out.string());
  const CommandResult refused = run_command(cmd + " 2>&1");
  EXPECT_EQ(refused.status, 2) << refused.out;  // bad input: exit 2, as the other programs
  EXPECT_NE(refused.out.find("not empty"), std::string::npos) << refused.out;
  EXPECT_FALSE(fs::exists(out / "discriminator"));
  const CommandResult forced = run_command(cmd + " --force 2>&1");
  EXPECT_EQ(forced.status, 0) << forced.out;
  EXPECT_TRUE(fs::exists(out / "generator/model.safetensors"));
  EXPECT_EQ(read_bytes(out / "keep.txt"), "mine");

  // --output '' was the working directory, unchecked: its discriminator/ was replaced without --force. And an
  // output below a regular file failed at the first write (exit 1). Both are refused up front (exit 2).
  const std::string export_cmd =
      shell_quote(program("electra-export")) + " --checkpoint " + shell_quote(run.checkpoint.string());
  const CommandResult empty_output =
      run_command("cd " + shell_quote(out.string()) + " && " + export_cmd + " --output '' 2>&1");
  EXPECT_EQ(empty_output.status, 2) << empty_output.out;
  EXPECT_NE(empty_output.out.find("--output: is empty"), std::string::npos) << empty_output.out;
  EXPECT_TRUE(fs::exists(out / "generator/model.safetensors"));
  const CommandResult below_file =
      run_command(export_cmd + " --output " + shell_quote((out / "keep.txt" / "sub" / "out").string()) + " 2>&1");
  EXPECT_EQ(below_file.status, 2) << below_file.out;
  EXPECT_NE(below_file.out.find((out / "keep.txt").string() + " is not a directory"), std::string::npos)
      << below_file.out;

  // No vocabulary to be found: a clear error, nothing written.
  const CommandResult no_vocab =
      run_command(shell_quote(program("electra-export")) + " --checkpoint " + shell_quote(run.checkpoint.string()) +
                  " --output " + shell_quote((tmp.path() / "x").string()) + " --vocab /nonexistent/vocab.txt 2>&1");
  EXPECT_EQ(no_vocab.status, 2) << no_vocab.out;
  EXPECT_NE(no_vocab.out.find("/nonexistent/vocab.txt"), std::string::npos) << no_vocab.out;
  EXPECT_FALSE(fs::exists(tmp.path() / "x"));

  // A vocabulary of the right size that the shards were not made with.
  std::vector<std::string> tokens = tiny_vocab_tokens();
  std::swap(tokens[5], tokens[6]);
  text::Vocab::from_tokens(tokens).save((tmp.path() / "other_vocab.txt").string());
  const CommandResult other =
      run_command(shell_quote(program("electra-export")) + " --checkpoint " + shell_quote(run.run_dir.string()) +
                  " --output " + shell_quote((tmp.path() / "y").string()) + " --vocab " +
                  shell_quote((tmp.path() / "other_vocab.txt").string()) + " 2>&1");
  EXPECT_EQ(other.status, 2) << other.out;
  EXPECT_NE(other.out.find("is not the one the training data was made with"), std::string::npos) << other.out;
  EXPECT_FALSE(fs::exists(tmp.path() / "y"));
}

// Rewrites one directory's model.safetensors with `edit` applied to its tensors.
void rewrite_weights(
    const fs::path& dir,
    const std::function<void(std::map<std::string, std::pair<std::vector<int64_t>, std::vector<float>>>&)>& edit) {
  const SafetensorsFile file = SafetensorsFile::load(dir / "model.safetensors");
  std::map<std::string, std::pair<std::vector<int64_t>, std::vector<float>>> tensors;
  for (const SafetensorsEntry& e : file.entries()) tensors[e.name] = {e.shape, file.read_floats(e.name)};
  edit(tensors);
  std::vector<SafetensorsTensorRef> refs;
  for (const auto& [name, t] : tensors) refs.push_back({name, t.first, t.second});
  write_safetensors(dir / "model.safetensors", refs);
}

void expect_import_error(const fs::path& export_dir, const std::string& needle) {
  try {
    load_hf_pretrainer(export_dir / "discriminator", export_dir / "generator");
    ADD_FAILURE() << "import succeeded; expected an error containing '" << needle << "'";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
  }
}

TEST(HfInterop, ImportRejectsInconsistentDirectoriesNamingTheProblem) {
  TempDir tmp;
  const TinyRun run = make_tiny_run(tmp.path());
  const fs::path good = tmp.path() / "good";
  const PretrainerBundle bundle = load_checkpoint_bundle(run.run_dir);
  export_hf(bundle, good);
  int n = 0;
  auto fresh = [&] {
    const fs::path dir = tmp.path() / ("case" + std::to_string(n++));
    fs::copy(good, dir, fs::copy_options::recursive);
    return dir;
  };

  fs::path dir = fresh();
  rewrite_weights(dir / "discriminator", [](auto& t) { t.erase("electra.encoder.layer.1.attention.self.key.bias"); });
  expect_import_error(dir, "missing tensor 'electra.encoder.layer.1.attention.self.key.bias'");

  dir = fresh();
  rewrite_weights(dir / "generator", [](auto& t) { t["generator_predictions.extra.weight"] = {{2}, {1.0f, 2.0f}}; });
  expect_import_error(dir, "unexpected tensor 'generator_predictions.extra.weight'");

  dir = fresh();
  rewrite_weights(dir / "discriminator", [](auto& t) {
    auto& w = t["discriminator_predictions.dense.weight"];
    w.first = {16, 64};
  });
  expect_import_error(dir, "tensor 'discriminator_predictions.dense.weight' has shape [16, 64]");

  // HF's non-persistent buffers in old files are skipped; the tied LM head may be left out.
  dir = fresh();
  rewrite_weights(dir / "generator", [](auto& t) { t.erase("generator_lm_head.weight"); });
  write_bytes(dir / "generator/pytorch_model.bin", "ignored");
  EXPECT_NO_THROW(load_hf_pretrainer(dir / "discriminator", dir / "generator"));

  // A generator whose copy of the shared embeddings differs: the discriminator's wins.
  dir = fresh();
  rewrite_weights(dir / "generator", [](auto& t) { t["electra.embeddings.LayerNorm.bias"].second[3] += 0.5f; });
  const HfPretrainer differ = load_hf_pretrainer(dir / "discriminator", dir / "generator");
  EXPECT_NEAR(differ.shared_embeddings_max_abs_diff, 0.5, 1e-6);
  const ParameterSlice& ln = build_pretrainer_layout(differ.config).layout.find("electra.embeddings.LayerNorm.bias");
  const ParameterSlice& ln_run = build_pretrainer_layout(run.config).layout.find("electra.embeddings.LayerNorm.bias");
  EXPECT_EQ(differ.params[ln.offset + 3], run.params[ln_run.offset + 3]);

  auto edit_config = [&](const fs::path& d, const char* key, const nlohmann::json& value) {
    nlohmann::json c = nlohmann::json::parse(read_bytes(d / "config.json"));
    c[key] = value;
    write_bytes(d / "config.json", c.dump(2));
  };
  dir = fresh();
  edit_config(dir / "generator", "vocab_size", 99);
  expect_import_error(dir, "key 'vocab_size' is 99");
  dir = fresh();
  edit_config(dir / "discriminator", "hidden_act", "relu");
  expect_import_error(dir, "key 'hidden_act' is 'relu'");
  // Keys transformers reads as another model than ours: refused, naming them.
  dir = fresh();
  edit_config(dir / "discriminator", "position_embedding_type", nullptr);  // transformers: no positions
  expect_import_error(dir, "key 'position_embedding_type' is null");
  dir = fresh();
  edit_config(dir / "generator", "is_decoder", true);  // causal attention
  expect_import_error(dir, "key 'is_decoder' is true");
  dir = fresh();
  edit_config(dir / "discriminator", "add_cross_attention", true);
  expect_import_error(dir, "key 'add_cross_attention' is true");
  dir = fresh();
  edit_config(dir / "generator", "tie_word_embeddings", nullptr);  // transformers unties the LM head
  expect_import_error(dir, "key 'tie_word_embeddings' is null");
  dir = fresh();
  edit_config(dir / "discriminator", "layer_norm_eps", nullptr);
  expect_import_error(dir, "key 'layer_norm_eps' is null");
  // The discriminator has no LM head to tie; a null is_decoder is an encoder for transformers too.
  dir = fresh();
  edit_config(dir / "discriminator", "tie_word_embeddings", false);
  edit_config(dir / "discriminator", "is_decoder", nullptr);
  edit_config(dir / "generator", "is_decoder", 0);
  edit_config(dir / "generator", "tie_word_embeddings", 1);
  EXPECT_NO_THROW(load_hf_pretrainer(dir / "discriminator", dir / "generator"));
  EXPECT_NO_THROW(load_hf_discriminator(dir / "discriminator"));
  dir = fresh();
  edit_config(dir / "discriminator", "num_hidden_layers", 3);
  expect_import_error(dir, "missing tensor 'electra.encoder.layer.2.");
  dir = fresh();
  fs::remove(dir / "discriminator/model.safetensors");
  write_bytes(dir / "discriminator/pytorch_model.bin", "x");
  expect_import_error(dir, "only pytorch_model.bin");
  dir = fresh();
  write_bytes(dir / "generator/vocab.txt", "[PAD]\n[UNK]\n");
  expect_import_error(dir, "differs from");
  dir = fresh();
  {
    // A truncated weights file is reported, not crashed on.
    const std::string bytes = read_bytes(dir / "discriminator/model.safetensors");
    write_bytes(dir / "discriminator/model.safetensors", bytes.substr(0, bytes.size() / 2));
  }
  expect_import_error(dir, "model.safetensors");

  // The word limit comes from tokenizer.json when there is one (what HF's fast tokenizer applies: 100 in
  // Google's converted models), else transformers' BertTokenizer's 100 (what AutoTokenizer gives such a
  // directory, fast or slow); a bad value is named.
  EXPECT_EQ(load_hf_pretrainer(good / "discriminator", good / "generator").tokenizer.max_input_chars_per_word, 200u);
  auto edit_word_limit = [&](const fs::path& d, const nlohmann::json& value) {
    nlohmann::json t = nlohmann::json::parse(read_bytes(d / "tokenizer.json"));
    t["model"]["max_input_chars_per_word"] = value;
    write_bytes(d / "tokenizer.json", t.dump());
  };
  dir = fresh();
  edit_word_limit(dir / "discriminator", 100);
  EXPECT_EQ(load_hf_pretrainer(dir / "discriminator", dir / "generator").tokenizer.max_input_chars_per_word, 100u);
  dir = fresh();
  fs::remove(dir / "discriminator/tokenizer.json");
  fs::remove(dir / "generator/tokenizer.json");
  EXPECT_EQ(load_hf_pretrainer(dir / "discriminator", dir / "generator").tokenizer.max_input_chars_per_word, 100u);
  dir = fresh();
  edit_word_limit(dir / "discriminator", -5);
  expect_import_error(dir, "model.max_input_chars_per_word");
}

TEST(HfInterop, ImportReadsShardedAndHalfPrecisionFiles) {
  TempDir tmp;
  const TinyRun run = make_tiny_run(tmp.path());
  const fs::path dir = tmp.path() / "hf";
  export_hf(load_checkpoint_bundle(run.checkpoint), dir);
  // Split the discriminator into two shards with an index, the generator's encoder stored as BF16.
  const fs::path d = dir / "discriminator";
  const SafetensorsFile whole = SafetensorsFile::load(d / "model.safetensors");
  std::vector<std::vector<float>> keep;
  std::vector<SafetensorsTensorRef> first, second;
  nlohmann::json weight_map;
  for (const SafetensorsEntry& e : whole.entries()) {
    keep.push_back(whole.read_floats(e.name));
    const bool in_first = e.name.find("layer.1") == std::string::npos;
    (in_first ? first : second).push_back({e.name, e.shape, keep.back()});
    weight_map[e.name] = in_first ? "model-00001-of-00002.safetensors" : "model-00002-of-00002.safetensors";
  }
  write_safetensors(d / "model-00001-of-00002.safetensors", first);
  write_safetensors(d / "model-00002-of-00002.safetensors", second);
  write_bytes(d / "model.safetensors.index.json", nlohmann::json{{"weight_map", weight_map}}.dump());
  fs::remove(d / "model.safetensors");

  const fs::path g = dir / "generator";
  const SafetensorsFile gen = SafetensorsFile::load(g / "model.safetensors");
  nlohmann::json header = {{"__metadata__", {{"format", "pt"}}}};
  std::string data;
  for (const SafetensorsEntry& e : gen.entries()) {
    const std::vector<float> values = gen.read_floats(e.name);
    const uint64_t begin = data.size();
    for (float v : values) {
      uint32_t bits;
      std::memcpy(&bits, &v, 4);
      const uint16_t top = static_cast<uint16_t>(bits >> 16);  // truncation: exact in the check below
      data.append(reinterpret_cast<const char*>(&top), 2);
    }
    header[e.name] = {{"dtype", "BF16"}, {"shape", e.shape}, {"data_offsets", {begin, data.size()}}};
  }
  std::string json = header.dump();
  std::string file(8, '\0');
  const uint64_t len = json.size();
  std::memcpy(file.data(), &len, 8);
  write_bytes(g / "model.safetensors", file + json + data);

  const HfPretrainer hf = load_hf_pretrainer(d, g);
  const PretrainerLayout layout = build_pretrainer_layout(hf.config);
  for (const ParameterSlice& v : layout.layout.slices()) {
    if (v.name.rfind("generator_classification_head.", 0) == 0) continue;
    for (size_t i = 0; i < v.size; ++i) {
      float want = run.params[v.offset + i];
      if (v.network == Network::kGenerator) {
        uint32_t bits;
        std::memcpy(&bits, &want, 4);
        bits &= 0xffff0000u;
        std::memcpy(&want, &bits, 4);
      }
      ASSERT_EQ(hf.params[v.offset + i], want) << v.name;
    }
  }
  // The BF16 copy of the shared embeddings differs from the discriminator's F32 one, which is kept.
  EXPECT_GT(hf.shared_embeddings_max_abs_diff, 0.0);
}

TEST(HfInterop, InitFromHfChecksConfigAndVocabAndCopiesTensors) {
  TempDir tmp;
  const TinyRun run = make_tiny_run(tmp.path());
  const fs::path dir = tmp.path() / "hf";
  export_hf(load_checkpoint_bundle(run.run_dir), dir);

  // A run with the same structure but its own sentence-head size and training settings.
  PretrainerConfig config = run.config;
  config.num_classes = 3;
  config.num_token_predictions = 9;
  config.discriminator.hidden_dropout = 0.0f;
  const PretrainerLayout layout = build_pretrainer_layout(config);
  std::vector<float> params = random_params(config, 99);
  const std::vector<float> before = params;
  const std::string summary = init_from_hf(dir, config, run.vocab, std::nullopt, params);
  EXPECT_NE(summary.find("keep their initialisation"), std::string::npos) << summary;
  const PretrainerLayout run_layout = build_pretrainer_layout(run.config);
  for (const ParameterSlice& v : layout.layout.slices()) {
    const bool head = v.name.rfind("generator_classification_head.", 0) == 0;
    const ParameterSlice* src = head ? nullptr : &run_layout.layout.find(v.name);
    for (size_t i = 0; i < v.size; ++i) {
      ASSERT_EQ(params[v.offset + i], head ? before[v.offset + i] : run.params[src->offset + i]) << v.name;
    }
  }

  PretrainerConfig other = run.config;
  other.generator.num_layers = 3;
  std::vector<float> other_params(build_pretrainer_layout(other).layout.total_size());
  try {
    init_from_hf(dir, other, run.vocab, std::nullopt, other_params);
    ADD_FAILURE() << "accepted a run with another generator depth";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("model.generator.num_layers: run 3, Hugging Face 2"), std::string::npos)
        << e.what();
  }
  std::vector<std::string> tokens = tiny_vocab_tokens();
  std::swap(tokens[5], tokens[6]);
  EXPECT_THROW(init_from_hf(dir, config, text::Vocab::from_tokens(tokens), std::nullopt, params), Error);
  EXPECT_THROW(init_from_hf(tmp.path() / "nowhere", config, run.vocab, std::nullopt, params), Error);
}

}  // namespace
}  // namespace electra::interop
