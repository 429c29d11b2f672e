#include "data_pipeline/preprocess/example_builder.h"

#include <algorithm>

#include "lib/core/error.h"

namespace electra::data {

ExampleBuilder::ExampleBuilder(int max_seq_length, SpecialTokenIds special, PhiloxSequence rng)
    : max_length_(max_seq_length), special_(special), rng_(rng), target_length_(max_seq_length) {
  ELECTRA_CHECK(max_seq_length >= 5, "max_seq_length must be at least 5, got ", max_seq_length);
}

bool ExampleBuilder::add_sentence(const std::vector<int32_t>& tokens, Example& out) {
  tokens_.insert(tokens_.end(), tokens.begin(), tokens.end());
  sentence_ends_.push_back(tokens_.size());
  if (static_cast<int64_t>(tokens_.size()) >= target_length_) {
    create_example(out);
    return true;
  }
  return false;
}

bool ExampleBuilder::add_blank_line(Example& out) {
  if (!tokens_.empty()) {
    create_example(out);
    return true;
  }
  // The reference tokenizes the empty line and appends an empty sentence.
  sentence_ends_.push_back(tokens_.size());
  return false;
}

void ExampleBuilder::create_example(Example& out) {
  // Small chance of a single segment, as in classification tasks.
  const int64_t first_target = rng_.next_uniform_open() < 0.1 ? 100000 : (target_length_ - 3) / 2;
  first_.clear();
  second_.clear();
  size_t begin = 0;
  for (const size_t end : sentence_ends_) {
    const int64_t len = static_cast<int64_t>(end - begin);
    const int64_t first_len = static_cast<int64_t>(first_.size());
    // Same short-circuit order as the reference, so random numbers are drawn in the same cases.
    const bool to_first = first_.empty() || first_len + len < first_target ||
                          (second_.empty() && first_len < first_target && rng_.next_uniform_open() < 0.5);
    std::vector<int32_t>& segment = to_first ? first_ : second_;
    segment.insert(segment.end(), tokens_.begin() + static_cast<std::ptrdiff_t>(begin),
                   tokens_.begin() + static_cast<std::ptrdiff_t>(end));
    begin = end;
  }
  // Trim to max_length, counting the [CLS]/[SEP] tokens still to come.
  const size_t before = first_.size() + second_.size();
  if (static_cast<int>(first_.size()) > max_length_ - 2) first_.resize(static_cast<size_t>(max_length_ - 2));
  const int second_room = std::max(0, max_length_ - static_cast<int>(first_.size()) - 3);
  if (static_cast<int>(second_.size()) > second_room) second_.resize(static_cast<size_t>(second_room));
  truncated_tokens_ += before - first_.size() - second_.size();

  tokens_.clear();
  sentence_ends_.clear();
  // Small chance of a random-length example next.
  if (rng_.next_uniform_open() < 0.05) {
    target_length_ = 5 + static_cast<int>(rng_.next_below(static_cast<uint32_t>(max_length_ - 4)));
  } else {
    target_length_ = max_length_;
  }

  out.input_ids.assign(static_cast<size_t>(max_length_), special_.pad);
  out.segment_ids.assign(static_cast<size_t>(max_length_), 0);
  size_t pos = 0;
  out.input_ids[pos++] = special_.cls;
  for (const int32_t id : first_) out.input_ids[pos++] = id;
  out.input_ids[pos++] = special_.sep;
  if (!second_.empty()) {
    for (const int32_t id : second_) {
      out.segment_ids[pos] = 1;
      out.input_ids[pos++] = id;
    }
    out.segment_ids[pos] = 1;
    out.input_ids[pos++] = special_.sep;
  }
  out.length = static_cast<int>(pos);
}

}  // namespace electra::data
