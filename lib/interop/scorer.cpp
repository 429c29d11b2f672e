#include "lib/interop/scorer.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "lib/backend/backend.h"
#include "lib/core/batch.h"
#include "lib/core/error.h"
#include "lib/model/pretrainer.h"

namespace electra::interop {

std::vector<int32_t> encode_keeping_special_tokens(const text::BertTokenizer& tokenizer, std::string_view text,
                                                   text::TokenizeStats* stats) {
  const text::Vocab& vocab = tokenizer.vocab();
  struct Special {
    std::string_view token;
    int32_t id;
  };
  std::vector<Special> specials;
  for (std::string_view t : {text::kClsToken, text::kSepToken, text::kPadToken, text::kUnkToken, text::kMaskToken}) {
    if (vocab.has(t)) specials.push_back({t, vocab.id(t)});
  }
  std::vector<int32_t> ids;
  size_t pos = 0;
  while (pos < text.size()) {
    // The earliest special token from here (none is a prefix of another, so the first match is the one).
    size_t best = std::string_view::npos;
    const Special* found = nullptr;
    for (const Special& s : specials) {
      const size_t at = text.find(s.token, pos);
      if (at < best) {
        best = at;
        found = &s;
      }
    }
    tokenizer.encode_append(text.substr(pos, best == std::string_view::npos ? std::string_view::npos : best - pos), ids,
                            stats);
    if (found == nullptr) break;
    ids.push_back(found->id);
    pos = best + found->token.size();
  }
  return ids;
}

Scorer::Scorer(PretrainerBundle model) : Scorer(std::move(model), make_cpu_backend<float>()) {}

Scorer::Scorer(PretrainerBundle model, std::unique_ptr<Backend<float>> backend, const ModelFactory& make_model)
    : model_(std::move(model)) {
  ELECTRA_CHECK(backend != nullptr, "scorer: no backend");
  if (static_cast<int64_t>(model_.vocab.size()) != model_.config.vocab_size) {
    fail("scorer: vocabulary ", model_.vocab.origin(), " has ", model_.vocab.size(), " tokens, the model (",
         model_.source, ") ", model_.config.vocab_size);
  }
  model_.vocab.cls_id();
  model_.vocab.sep_id();
  model_.vocab.mask_id();
  tokenizer_ = std::make_unique<text::BertTokenizer>(model_.vocab, model_.tokenizer);
  backend_ = std::move(backend);
  if (make_model) {
    net_ = make_model(model_.config, *backend_);
  } else {
    net_ = std::make_unique<ElectraPretrainer<float>>(model_.config, *backend_);
  }
  ELECTRA_CHECK(net_ != nullptr, "scorer: the model factory returned no model");
  net_->parameters_from_host(model_.params);
}

Scorer::~Scorer() = default;

std::vector<int32_t> Scorer::encode(std::string_view line, size_t* dropped_pieces, text::TokenizeStats* stats) const {
  std::vector<int32_t> pieces = encode_keeping_special_tokens(*tokenizer_, line, stats);
  const size_t max_pieces = static_cast<size_t>(std::max(0, model_.config.discriminator.max_position_embeddings - 2));
  if (dropped_pieces != nullptr) *dropped_pieces = pieces.size() > max_pieces ? pieces.size() - max_pieces : 0;
  if (pieces.size() > max_pieces) pieces.resize(max_pieces);
  std::vector<int32_t> ids;
  ids.reserve(pieces.size() + 2);
  ids.push_back(model_.vocab.cls_id());
  ids.insert(ids.end(), pieces.begin(), pieces.end());
  ids.push_back(model_.vocab.sep_id());
  return ids;
}

ScoredLine Scorer::score(std::string_view line, const ScoreOptions& options) {
  size_t dropped = 0;
  text::TokenizeStats stats;
  const std::vector<int32_t> ids = encode(line, &dropped, &stats);
  ScoredLine scored = score_ids(ids, options);
  scored.dropped_pieces = dropped;
  scored.invalid_utf8 = stats.invalid_utf8;
  return scored;
}

ScoredLine Scorer::score_ids(const std::vector<int32_t>& ids, const ScoreOptions& options) {
  if (options.fill_mask && options.top_k <= 0) fail("--top-k must be positive, got ", options.top_k);
  if (options.fill_mask && !model_.has_generator) {
    fail("--fill-mask needs the generator, and ", model_.source, " is a discriminator alone");
  }
  const int S = static_cast<int>(ids.size());
  const int32_t mask_id = model_.vocab.mask_id();
  std::vector<int32_t> mask_positions;
  for (int i = 0; i < S; ++i) {
    if (ids[i] == mask_id) mask_positions.push_back(i);
  }

  // One row; the [MASK]s are the prediction positions, all with weight 0 (see scorer.h). With no [MASK],
  // one dummy position keeps the batch valid.
  Batch batch;
  batch.rows = 1;
  batch.seq_length = S;
  batch.num_predictions = std::max<int>(1, static_cast<int>(mask_positions.size()));
  batch.input_word_ids = ids;
  batch.input_mask.assign(S, 1);
  batch.input_type_ids.assign(S, 0);
  batch.masked_lm_positions = mask_positions.empty() ? std::vector<int32_t>{0} : mask_positions;
  batch.masked_lm_ids.assign(batch.num_predictions, 0);
  batch.masked_lm_weights.assign(batch.num_predictions, 0.0f);
  batch.global_batch_rows = 1;
  StepContext context;
  context.training = false;
  context.copy_outputs = options.fill_mask && !mask_positions.empty();
  const PretrainerOutputs<float>& out = net_->forward(batch, context);

  ScoredLine scored;
  scored.ids = ids;
  for (int32_t id : ids) scored.tokens.push_back(model_.vocab.token(id));
  scored.disc_logits.assign(out.disc_logits.begin(), out.disc_logits.begin() + S);
  for (float logit : scored.disc_logits) scored.replaced_prob.push_back(1.0 / (1.0 + std::exp(-double(logit))));

  if (context.copy_outputs) {
    const int V = out.vocab_size;
    std::vector<double> probs(V);
    std::vector<int32_t> order(V);
    for (size_t m = 0; m < mask_positions.size(); ++m) {
      // Softmax in double; with output_type predictions lm_outputs is a log-softmax, which gives the same.
      const float* row = out.lm_outputs.data() + m * V;
      const double top = *std::max_element(row, row + V);
      double sum = 0;
      for (int v = 0; v < V; ++v) sum += probs[v] = std::exp(double(row[v]) - top);
      for (double& p : probs) p /= sum;
      std::iota(order.begin(), order.end(), 0);
      const int k = std::min(options.top_k, V);
      std::partial_sort(order.begin(), order.begin() + k, order.end(),
                        [&](int32_t a, int32_t b) { return probs[a] != probs[b] ? probs[a] > probs[b] : a < b; });
      MaskFill fill;
      fill.position = mask_positions[m];
      for (int i = 0; i < k; ++i) fill.candidates.push_back({model_.vocab.token(order[i]), order[i], probs[order[i]]});
      scored.masks.push_back(std::move(fill));
    }
  }
  return scored;
}

nlohmann::ordered_json to_json(const ScoredLine& line, bool fill_mask) {
  nlohmann::ordered_json j = {{"tokens", line.tokens}, {"ids", line.ids}, {"replaced_prob", line.replaced_prob}};
  if (fill_mask) {
    nlohmann::ordered_json masks = nlohmann::ordered_json::array();
    for (const MaskFill& m : line.masks) {
      nlohmann::ordered_json predictions = nlohmann::ordered_json::array();
      for (const FillCandidate& c : m.candidates) {
        predictions.push_back({{"token", c.token}, {"id", c.id}, {"prob", c.prob}});
      }
      masks.push_back({{"position", m.position}, {"predictions", predictions}});
    }
    j["masks"] = masks;
  }
  if (line.dropped_pieces > 0) j["dropped_pieces"] = line.dropped_pieces;  // only then: lines keep one shape
  return j;
}

}  // namespace electra::interop
