// electra-score on an exported random model: one JSON line per input line, one probability per token,
// equal to the sigmoid of the model's own discriminator logits; --fill-mask gives k candidates per
// [MASK] sorted by probability, equal to the softmax of the generator's logits there.
#include <gtest/gtest.h>

#include <cmath>

#include "lib/interop/hf_export.h"
#include "lib/interop/model_source.h"
#include "lib/interop/safetensors.h"
#include "lib/interop/scorer.h"
#include "tests/interop/interop_test_util.h"

namespace electra::interop {
namespace {

using namespace testing;

std::vector<nlohmann::json> json_lines(const std::string& out) {
  std::vector<nlohmann::json> lines;
  size_t pos = 0;
  while (pos < out.size()) {
    size_t nl = out.find('\n', pos);
    if (nl == std::string::npos) nl = out.size();
    lines.push_back(nlohmann::json::parse(out.substr(pos, nl - pos)));  // throws (fails the test) when not JSON
    pos = nl + 1;
  }
  return lines;
}

CommandResult score(const fs::path& model, const fs::path& input, const std::string& flags) {
  return run_command(shell_quote(program("electra-score")) + " --model " + shell_quote(model.string()) + " " + flags +
                     " < " + shell_quote(input.string()));
}

class ScoreTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(fs::exists(program("electra-score"))) << program("electra-score");
    run_ = make_tiny_run(tmp_.path());
    export_dir_ = tmp_.path() / "hf";
    export_hf(load_checkpoint_bundle(run_.run_dir), export_dir_);
  }
  TempDir tmp_;
  TinyRun run_;
  fs::path export_dir_;
};

TEST_F(ScoreTest, ReplacedProbIsSigmoidOfDiscriminatorLogits) {
  std::string long_line = std::string(200, 'a');
  for (int i = 0; i < 60; ++i) long_line += " the";
  const std::vector<std::string> lines = {"The quick brown fox jumps over the lazy dog.", "", "hello [MASK] world !",
                                          long_line, "hello \xff\xfe world"};
  const fs::path input = tmp_.path() / "in.txt";
  std::string text;
  for (const auto& l : lines) text += l + "\n";
  write_bytes(input, text);
  const fs::path warnings = tmp_.path() / "warnings.txt";
  const CommandResult r = score(export_dir_, input, "2>" + shell_quote(warnings.string()));
  ASSERT_EQ(r.status, 0) << r.out;
  const std::vector<nlohmann::json> out = json_lines(r.out);
  ASSERT_EQ(out.size(), lines.size());

  Scorer reference(load_checkpoint_bundle(run_.checkpoint));
  for (size_t i = 0; i < lines.size(); ++i) {
    const nlohmann::json& j = out[i];
    ASSERT_TRUE(j.contains("tokens") && j.contains("ids") && j.contains("replaced_prob")) << j.dump();
    EXPECT_FALSE(j.contains("masks"));
    const auto ids = j["ids"].get<std::vector<int32_t>>();
    const auto tokens = j["tokens"].get<std::vector<std::string>>();
    const auto probs = j["replaced_prob"].get<std::vector<double>>();
    EXPECT_EQ(ids, reference.encode(lines[i]));
    ASSERT_EQ(tokens.size(), ids.size());
    ASSERT_EQ(probs.size(), ids.size());
    EXPECT_EQ(tokens.front(), "[CLS]");
    EXPECT_EQ(tokens.back(), "[SEP]");
    for (size_t t = 0; t < ids.size(); ++t) EXPECT_EQ(tokens[t], run_.vocab.token(ids[t]));

    // The checkpoint's own pretrainer on the same ids (independent of the export files).
    const int S = static_cast<int>(ids.size());
    const OwnOutputs own =
        own_forward(run_.config, run_.params, 1, S, ids, std::vector<int32_t>(S, 1), std::vector<int32_t>(S, 0));
    for (int t = 0; t < S; ++t) {
      EXPECT_GT(probs[t], 0.0);
      EXPECT_LT(probs[t], 1.0);
      const double want = 1.0 / (1.0 + std::exp(-static_cast<double>(own.disc_logits[t])));
      EXPECT_NEAR(probs[t], want, 1e-12 + 1e-9 * want) << "line " << i << " token " << t;
    }
  }
  EXPECT_EQ(out[1]["ids"], nlohmann::json({2, 3}));  // an empty line is [CLS] [SEP]
  EXPECT_EQ(out[3]["ids"].size(), 40u);              // truncated to max_position_embeddings
  // The truncated line says how much was cut, in its JSON and on stderr; the others have no such key.
  size_t dropped = 0;
  reference.encode(long_line, &dropped);
  EXPECT_GT(dropped, 0u);
  EXPECT_EQ(out[3].value("dropped_pieces", size_t{0}), dropped);
  for (size_t i = 0; i < 3; ++i) EXPECT_FALSE(out[i].contains("dropped_pieces")) << out[i].dump();
  const std::string warned = read_bytes(warnings);
  EXPECT_NE(warned.find("line 4: " + std::to_string(dropped) + " word pieces past the model's 38"), std::string::npos)
      << warned;
  EXPECT_EQ(warned.find("line 1:"), std::string::npos) << warned;
  // Invalid UTF-8 is dropped as BERT drops it (U+FFFD is a control-like character to BERT), and said.
  EXPECT_EQ(out[4]["tokens"], nlohmann::json({"[CLS]", "hello", "world", "[SEP]"}));
  EXPECT_NE(warned.find("line 5: 2 invalid UTF-8 sequence(s) replaced and dropped"), std::string::npos) << warned;
  EXPECT_EQ(warned.find("line 4: 0 invalid"), std::string::npos) << warned;
  EXPECT_EQ(out[2]["tokens"], nlohmann::json({"[CLS]", "hello", "[MASK]", "world", "!", "[SEP]"}));

  // A run directory scores the same as its export, and so do the export's halves (what Hugging Face
  // loads, so what users point at).
  const CommandResult from_run = score(run_.run_dir, input, "");
  ASSERT_EQ(from_run.status, 0);
  EXPECT_EQ(from_run.out, r.out);
  for (const fs::path& half : {export_dir_ / "discriminator", export_dir_ / "generator/"}) {
    const CommandResult from_half = score(half, input, "");
    ASSERT_EQ(from_half.status, 0) << half;
    EXPECT_EQ(from_half.out, r.out) << half;
  }
  // A Hugging Face discriminator alone (no export around it, as google/electra-*-discriminator comes)
  // scores the same to the bit: the placeholder generator never reaches the discriminator's input.
  const fs::path lone = tmp_.path() / "lone";
  fs::copy(export_dir_ / "discriminator", lone);
  const CommandResult from_lone = score(lone, input, "");
  ASSERT_EQ(from_lone.status, 0) << from_lone.out;
  EXPECT_EQ(from_lone.out, r.out);
  // ... but it cannot fill masks, and a generator alone cannot score: both refused by name (exit 2).
  const CommandResult lone_fill = score(lone, input, "--fill-mask 2>&1");
  EXPECT_EQ(lone_fill.status, 2) << lone_fill.out;
  EXPECT_NE(lone_fill.out.find("--fill-mask needs the generator: " + lone.string()), std::string::npos)
      << lone_fill.out;
  fs::copy(export_dir_ / "generator", tmp_.path() / "lone_generator");
  const CommandResult generator = score(tmp_.path() / "lone_generator", input, "2>&1");
  EXPECT_EQ(generator.status, 2) << generator.out;
  EXPECT_NE(generator.out.find("lone_generator is an ELECTRA generator (ElectraForMaskedLM): scoring tokens needs "
                               "the discriminator"),
            std::string::npos)
      << generator.out;
  // An encoder without the discriminator head (ElectraModel) is refused too.
  const fs::path encoder = tmp_.path() / "encoder";
  fs::create_directories(encoder);
  fs::copy(export_dir_ / "discriminator" / "config.json", encoder / "config.json");
  const std::vector<float> embeddings(16 * run_.config.vocab_size, 0.5f);
  write_safetensors(encoder / "model.safetensors",
                    {{"electra.embeddings.word_embeddings.weight", {run_.config.vocab_size, 16}, embeddings}});
  const CommandResult headless = score(encoder, input, "2>&1");
  EXPECT_EQ(headless.status, 2) << headless.out;
  EXPECT_NE(headless.out.find("has no discriminator head (no tensor 'discriminator_predictions.dense_prediction"),
            std::string::npos)
      << headless.out;
  // electra-eval needs both networks: a lone directory is refused there by name.
  const CommandResult eval =
      run_command(shell_quote(program("electra-eval")) + " --checkpoint " + shell_quote(lone.string()) + " --data " +
                  shell_quote(run_.data_dir.string()) + " 2>&1");
  EXPECT_EQ(eval.status, 2) << eval.out;
  EXPECT_NE(eval.out.find("holds one Hugging Face model"), std::string::npos) << eval.out;
}

TEST_F(ScoreTest, FillMaskGivesTopKSortedByProbability) {
  const fs::path input = tmp_.path() / "in.txt";
  write_bytes(input, "the [MASK] fox [MASK] over\nno masks here\n");
  const CommandResult r = score(export_dir_, input, "--fill-mask --top-k 3");
  ASSERT_EQ(r.status, 0) << r.out;
  const std::vector<nlohmann::json> out = json_lines(r.out);
  ASSERT_EQ(out.size(), 2u);
  const nlohmann::json& masks = out[0]["masks"];
  ASSERT_EQ(masks.size(), 2u);
  EXPECT_EQ(masks[0]["position"], 2);
  EXPECT_EQ(masks[1]["position"], 4);
  EXPECT_EQ(out[1]["masks"], nlohmann::json::array());

  const auto ids = out[0]["ids"].get<std::vector<int32_t>>();
  const int S = static_cast<int>(ids.size()), V = run_.config.vocab_size;
  const OwnOutputs own =
      own_forward(run_.config, run_.params, 1, S, ids, std::vector<int32_t>(S, 1), std::vector<int32_t>(S, 0));
  for (const nlohmann::json& m : masks) {
    const int pos = m["position"].get<int>();
    const nlohmann::json& preds = m["predictions"];
    ASSERT_EQ(preds.size(), 3u);
    // Softmax of the generator's logits at this position.
    const float* row = own.gen_logits.data() + static_cast<size_t>(pos) * V;
    double top = row[0], sum = 0;
    for (int v = 0; v < V; ++v) top = std::max(top, static_cast<double>(row[v]));
    std::vector<double> p(V);
    for (int v = 0; v < V; ++v) sum += p[v] = std::exp(row[v] - top);
    for (double& x : p) x /= sum;
    std::vector<double> sorted = p;
    std::sort(sorted.rbegin(), sorted.rend());
    for (size_t k = 0; k < preds.size(); ++k) {
      const int id = preds[k]["id"].get<int>();
      const double prob = preds[k]["prob"].get<double>();
      EXPECT_EQ(preds[k]["token"], run_.vocab.token(id));
      EXPECT_NEAR(prob, p[id], 1e-9);
      EXPECT_NEAR(prob, sorted[k], 1e-9);  // the k-th largest
      if (k > 0) {
        EXPECT_GE(preds[k - 1]["prob"].get<double>(), prob);
      }
    }
  }
}

// --storage bf16: the same tokens, probabilities to bf16 tolerance (the CPU bf16 reference backend).
TEST_F(ScoreTest, Bf16StorageScoresCloseToFp32) {
  const fs::path input = tmp_.path() / "in.txt";
  write_bytes(input, "The quick brown fox jumps over the lazy dog.\nhello [MASK] world !\n");
  const CommandResult fp32 = score(export_dir_, input, "--storage fp32 --fill-mask");
  const CommandResult bf16 = score(export_dir_, input, "--storage bf16 --fill-mask");
  ASSERT_EQ(fp32.status, 0) << fp32.out;
  ASSERT_EQ(bf16.status, 0) << bf16.out;
  EXPECT_NE(fp32.out, bf16.out) << "--storage bf16 was not used";
  const auto a = json_lines(fp32.out), b = json_lines(bf16.out);
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) {
    EXPECT_EQ(a[i]["ids"], b[i]["ids"]);
    const auto pa = a[i]["replaced_prob"].get<std::vector<double>>(),
               pb = b[i]["replaced_prob"].get<std::vector<double>>();
    ASSERT_EQ(pa.size(), pb.size());
    for (size_t t = 0; t < pa.size(); ++t) EXPECT_NEAR(pa[t], pb[t], 2e-2) << "line " << i << " token " << t;
  }
  const CommandResult bad = score(export_dir_, input, "--storage fp16 2>&1");
  EXPECT_NE(bad.status, 0);
}

TEST_F(ScoreTest, LowerCasingFollowsTheModelUnlessTurnedOff) {
  const fs::path input = tmp_.path() / "in.txt";
  write_bytes(input, "Hello HELLO\n");
  const CommandResult lower = score(export_dir_, input, "");
  const CommandResult cased = score(export_dir_, input, "--no-lower-case");
  ASSERT_EQ(lower.status, 0);
  ASSERT_EQ(cased.status, 0);
  EXPECT_EQ(json_lines(lower.out)[0]["tokens"], nlohmann::json({"[CLS]", "hello", "hello", "[SEP]"}));
  EXPECT_EQ(json_lines(cased.out)[0]["tokens"], nlohmann::json({"[CLS]", "Hello", "[UNK]", "[SEP]"}));

  const CommandResult bad = run_command(shell_quote(program("electra-score")) + " --model " +
                                        shell_quote((tmp_.path() / "missing").string()) + " < /dev/null 2>&1");
  EXPECT_EQ(bad.status, 2) << bad.out;
  EXPECT_NE(bad.out.find("missing"), std::string::npos) << bad.out;

  // A directory as stdin read as an empty input (exit 0, no output).
  const CommandResult directory = score(export_dir_, tmp_.path(), "2>&1");
  EXPECT_EQ(directory.status, 2) << directory.out;
  EXPECT_NE(directory.out.find("stdin is a directory"), std::string::npos) << directory.out;
}

}  // namespace
}  // namespace electra::interop
