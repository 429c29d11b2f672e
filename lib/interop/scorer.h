// electra-score's logic: replaced-token probabilities from the discriminator, and optionally the
// generator's top-k fillers for each [MASK], for one line of text at a time.
//
// Both come from one ElectraPretrainer::forward in eval mode (dropout off) on a batch of one row whose
// masked positions are the line's [MASK]s with weight 0: weight 0 keeps the generator's samples out of
// the discriminator's input, so the discriminator sees exactly the line's ids, while lm_outputs still
// holds the generator's scores at those positions.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>
#include <vector>

#include "data_pipeline/tokenizer/bert_tokenizer.h"
#include "lib/interop/model_source.h"

namespace electra {
template <typename T>
class Backend;
template <typename P>
class PretrainerModel;
struct PretrainerConfig;
}  // namespace electra

namespace electra::interop {

// Word pieces of `text` with literal special tokens ([CLS], [SEP], [PAD], [UNK], [MASK], exact case)
// kept whole, as Hugging Face's BertTokenizer does for its special tokens (never_split): the text
// between them goes through the BERT tokenizer. No [CLS]/[SEP] are added.
std::vector<int32_t> encode_keeping_special_tokens(const text::BertTokenizer& tokenizer, std::string_view text,
                                                   text::TokenizeStats* stats = nullptr);

struct FillCandidate {
  std::string token;
  int32_t id = 0;
  double prob = 0;
};

struct MaskFill {
  int position = 0;                       // index into tokens
  std::vector<FillCandidate> candidates;  // top-k by probability, descending (ties: lower id first)
};

struct ScoredLine {
  std::vector<std::string> tokens;  // [CLS] pieces... [SEP]
  std::vector<int32_t> ids;
  std::vector<float> disc_logits;     // one per token
  std::vector<double> replaced_prob;  // sigmoid(disc_logits)
  std::vector<MaskFill> masks;        // with fill_mask: one per [MASK], in order
  size_t dropped_pieces = 0;          // word pieces past max_position_embeddings - 2, not scored
  uint64_t invalid_utf8 = 0;          // invalid UTF-8 sequences, each replaced by U+FFFD and dropped as BERT does
};

struct ScoreOptions {
  bool fill_mask = false;
  int top_k = 5;
};

class Scorer {
 public:
  // Takes the model; fails when the vocabulary does not fit it or lacks [CLS]/[SEP]/[MASK]/[UNK]. Runs on
  // `backend` (electra-score --device), the CPU backend by default.
  // make_model builds the network on the backend (electra-score --storage: lib/train/device.h's
  // make_rank_model); by default an fp32-storage ElectraPretrainer<float>.
  using ModelFactory =
      std::function<std::unique_ptr<PretrainerModel<float>>(const PretrainerConfig& config, Backend<float>& backend)>;
  explicit Scorer(PretrainerBundle model);
  Scorer(PretrainerBundle model, std::unique_ptr<Backend<float>> backend, const ModelFactory& make_model = {});
  ~Scorer();
  Scorer(const Scorer&) = delete;
  Scorer& operator=(const Scorer&) = delete;

  // [CLS] + pieces (truncated to max_position_embeddings - 2; *dropped_pieces says how many were cut) + [SEP].
  // *stats counts what the tokenizer replaced (invalid UTF-8).
  std::vector<int32_t> encode(std::string_view line, size_t* dropped_pieces = nullptr,
                              text::TokenizeStats* stats = nullptr) const;
  ScoredLine score(std::string_view line, const ScoreOptions& options);
  ScoredLine score_ids(const std::vector<int32_t>& ids, const ScoreOptions& options);

  const PretrainerBundle& model() const { return model_; }

 private:
  PretrainerBundle model_;
  std::unique_ptr<text::BertTokenizer> tokenizer_;
  std::unique_ptr<Backend<float>> backend_;
  std::unique_ptr<PretrainerModel<float>> net_;
};

// {"tokens": [...], "ids": [...], "replaced_prob": [...]} (in this key order) plus, with fill_mask,
// "masks": [{"position": p, "predictions": [{"token": t, "id": i, "prob": x}, ...]}, ...].
nlohmann::ordered_json to_json(const ScoredLine& line, bool fill_mask);

}  // namespace electra::interop
