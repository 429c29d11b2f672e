// Parameter names and shapes against Hugging Face transformers: ElectraForPreTraining (discriminator)
// and ElectraForMaskedLM (generator, after export renaming) built from the same ElectraConfig.
// Runs when ELECTRA_PYTHON points to a Python with transformers (CTest sets it to .venv/bin/python).
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>

#include "lib/model/config.h"
#include "lib/model/parameter_layout.h"
#include "lib/model/pretrainer.h"

namespace electra {
namespace {

const char* kScript = R"PY(
import json, sys
from transformers import ElectraConfig, ElectraForMaskedLM, ElectraForPreTraining
m = json.loads(sys.argv[1])
def config(hidden, layers, heads, ffn):
    return ElectraConfig(vocab_size=m["vocab_size"], embedding_size=m["embedding_size"], hidden_size=hidden,
                         num_hidden_layers=layers, num_attention_heads=heads, intermediate_size=ffn,
                         max_position_embeddings=m["max_position_embeddings"],
                         type_vocab_size=m["type_vocab_size"])
g = m["generator"]
disc = ElectraForPreTraining(config(m["hidden_size"], m["num_layers"], m["num_heads"], m["intermediate_size"]))
gen = ElectraForMaskedLM(config(g["hidden_size"], g["num_layers"], g["num_heads"], g["intermediate_size"]))
shapes = lambda model: {k: list(v.shape) for k, v in model.state_dict().items()}
print(json.dumps({"discriminator": shapes(disc), "generator": shapes(gen)}))
)PY";

std::string run_python(const std::string& python, const std::string& model_json) {
  const auto dir = std::filesystem::temp_directory_path();
  const auto script = dir / ("electra_hf_names_" + std::to_string(::getpid()) + ".py");
  std::ofstream(script) << kScript;
  // Single quotes are safe: the JSON dump of a model section contains none.
  const std::string cmd = "'" + python + "' '" + script.string() + "' '" + model_json + "' 2>/dev/null";
  std::string out;
  if (FILE* pipe = ::popen(cmd.c_str(), "r")) {
    char buf[4096];
    size_t n;
    while ((n = std::fread(buf, 1, sizeof(buf), pipe)) > 0) out.append(buf, n);
    ::pclose(pipe);
  }
  std::filesystem::remove(script);
  return out;
}

TEST(ModelHuggingFaceNames, MatchTransformersStateDicts) {
  const char* python = std::getenv("ELECTRA_PYTHON");
  if (python == nullptr || !std::filesystem::exists(python)) GTEST_SKIP() << "ELECTRA_PYTHON not set or missing";
  // ELECTRA-small (both networks project their embeddings: E 128 vs 256 and 64) and tiny (the
  // generator's width equals E, so only the discriminator has embeddings_project).
  for (const char* preset : {"small", "tiny"}) {
    const nlohmann::json model = model_preset(preset);
    const std::string out = run_python(python, model.dump());
    if (out.find("discriminator") == std::string::npos) GTEST_SKIP() << "transformers not importable by " << python;
    const nlohmann::json hf = nlohmann::json::parse(out);
    const PretrainerLayout pl = build_pretrainer_layout(pretrainer_config_from_json(model));

    std::map<std::string, std::vector<int64_t>> disc, gen, hf_disc, hf_gen;
    for (const ParameterSlice& v : pl.layout.slices()) {
      if (v.network != Network::kGenerator) disc[v.name] = v.shape;
      const std::string g = generator_hf_name(v.name);
      if (!g.empty()) gen[g] = v.shape;
    }
    // generator_lm_head.weight is tied to the word embeddings in our layout.
    gen["generator_lm_head.weight"] = pl.layout.find("electra.embeddings.word_embeddings.weight").shape;
    for (const auto& [k, v] : hf["discriminator"].items()) hf_disc[k] = v.get<std::vector<int64_t>>();
    for (const auto& [k, v] : hf["generator"].items()) hf_gen[k] = v.get<std::vector<int64_t>>();
    EXPECT_EQ(disc, hf_disc) << preset;
    EXPECT_EQ(gen, hf_gen) << preset;
  }
}

}  // namespace
}  // namespace electra
