#include "data_pipeline/tokenizer/vocab_trainer.h"

#include <algorithm>
#include <chrono>
#include <map>
#include <queue>

#include "data_pipeline/tokenizer/text_files.h"
#include "data_pipeline/tokenizer/unicode.h"
#include "lib/core/error.h"
#include "lib/core/log.h"

namespace electra::text {

WordCounter::WordCounter(TokenizerOptions options) : basic_(options) {}

void WordCounter::add_word(std::string_view word, uint32_t chars, uint64_t count) {
  total_words_ += count;
  if (chars > basic_.options().max_input_chars_per_word) {
    skipped_long_ += count;
    return;
  }
  auto it = table_.find(word);
  if (it == table_.end()) it = table_.emplace(std::string(word), Entry{0, chars}).first;
  it->second.count += count;
}

void WordCounter::add_text(std::string_view text) {
  bytes_ += text.size();
  basic_.for_each_word(
      text, [this](std::string_view word, uint32_t chars) { add_word(word, chars); }, &stats_);
}

void WordCounter::add_file(const std::string& path, uint64_t log_every_bytes) {
  LineReader reader(path);
  std::string_view line;
  const auto t0 = std::chrono::steady_clock::now();
  uint64_t next_log = log_every_bytes;
  const uint64_t invalid_before = stats_.invalid_utf8;
  while (reader.next(line)) {
    add_text(line);
    bytes_ += 1;  // the '\n'
    if (reader.bytes_read() >= next_log) {
      const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      ELECTRA_LOG(info) << "counting " << path << ": " << reader.bytes_read() / 1e6 << " MB, " << total_words_
                        << " words, " << table_.size() << " distinct, " << (s > 0 ? reader.bytes_read() / 1e6 / s : 0.0)
                        << " MB/s";
      next_log += log_every_bytes;
    }
  }
  if (stats_.invalid_utf8 > invalid_before) {
    ELECTRA_LOG(warning) << path << ": " << stats_.invalid_utf8 - invalid_before
                         << " invalid UTF-8 sequence(s) replaced and dropped";
  }
}

namespace {

struct CharStats {
  uint64_t total = 0;
  uint64_t inside = 0;  // occurrences after the first character of a word
};

struct PairEntry {
  int64_t count;
  uint64_t key;
  // Max-heap on count; among equal counts the smaller key (earlier ids) first.
  bool operator<(const PairEntry& other) const {
    if (count != other.count) return count < other.count;
    return key > other.key;
  }
};

uint64_t pair_key(int32_t a, int32_t b) { return (static_cast<uint64_t>(a) << 32) | static_cast<uint32_t>(b); }

struct TrainWord {
  std::vector<int32_t> symbols;
  int64_t count;
};

}  // namespace

Vocab train_wordpiece_vocab(const WordCounter& words, const VocabTrainerOptions& options, VocabTrainerReport* report,
                            std::string origin) {
  const size_t kSpecials = 5;
  if (options.vocab_size < kSpecials + 1) fail("vocab trainer: vocab_size ", options.vocab_size, " is too small");
  VocabTrainerReport rep;

  // Character statistics over word occurrences. Words are kept in sorted order so that everything below
  // is deterministic regardless of the hash table's iteration order.
  std::vector<const WordCounter::Table::value_type*> sorted;
  sorted.reserve(words.table().size());
  for (const auto& entry : words.table()) sorted.push_back(&entry);
  std::sort(sorted.begin(), sorted.end(), [](auto* a, auto* b) { return a->first < b->first; });

  std::map<char32_t, CharStats> chars;
  std::vector<std::u32string> decoded(sorted.size());
  for (size_t w = 0; w < sorted.size(); ++w) {
    const std::string& word = sorted[w]->first;
    const uint64_t count = sorted[w]->second.count;
    const auto* p = reinterpret_cast<const unsigned char*>(word.data());
    const auto* end = p + word.size();
    bool first = true;
    while (p < end) {
      const unicode::Decoded d = unicode::decode_utf8(p, end);
      p += d.len;
      decoded[w].push_back(d.cp);
      CharStats& cs = chars[d.cp];
      cs.total += count;
      if (!first) cs.inside += count;
      first = false;
    }
  }

  // Keep the most frequent characters (ties: smaller code point) within limit_alphabet and the size budget.
  std::vector<std::pair<char32_t, CharStats>> by_freq(chars.begin(), chars.end());
  std::stable_sort(by_freq.begin(), by_freq.end(),
                   [](const auto& a, const auto& b) { return a.second.total > b.second.total; });
  size_t keep = by_freq.size();
  if (options.limit_alphabet > 0) keep = std::min(keep, options.limit_alphabet);
  size_t budget = kSpecials;
  size_t fits = 0;
  for (; fits < keep; ++fits) {
    const size_t cost = 1 + (by_freq[fits].second.inside > 0 ? 1 : 0);
    if (budget + cost > options.vocab_size) break;
    budget += cost;
  }
  if (fits < keep) {
    ELECTRA_LOG(warning) << "vocab trainer: only " << fits << " of " << keep
                         << " characters (and their ## forms) fit in " << options.vocab_size
                         << " tokens; the rarest are left out";
    keep = fits;
  }
  rep.alphabet = keep;
  rep.dropped_chars = by_freq.size() - keep;
  std::vector<char32_t> alphabet;
  for (size_t i = 0; i < keep; ++i) alphabet.push_back(by_freq[i].first);
  std::sort(alphabet.begin(), alphabet.end());

  std::vector<std::string> tokens = {std::string(kPadToken), std::string(kUnkToken), std::string(kClsToken),
                                     std::string(kSepToken), std::string(kMaskToken)};
  std::unordered_map<std::string, int32_t, WordCounter::Hash, std::equal_to<>> token_ids;
  auto add_token = [&](std::string token) {
    const int32_t id = static_cast<int32_t>(tokens.size());
    token_ids.emplace(token, id);
    tokens.push_back(std::move(token));
    return id;
  };
  for (size_t i = 0; i < tokens.size(); ++i) token_ids.emplace(tokens[i], static_cast<int32_t>(i));
  std::map<char32_t, int32_t> initial_id, inside_id;
  for (char32_t cp : alphabet) {
    std::string s;
    unicode::append_utf8(cp, s);
    // A corpus can contain "[UNK]"-like words only split up (brackets are punctuation), so no clash.
    initial_id[cp] = add_token(s);
  }
  for (char32_t cp : alphabet) {
    if (chars[cp].inside == 0) continue;
    std::string s = "##";
    unicode::append_utf8(cp, s);
    inside_id[cp] = add_token(s);
  }

  // Words as symbol sequences; words using a left-out character are not trained on.
  std::vector<TrainWord> train;
  for (size_t w = 0; w < sorted.size(); ++w) {
    const std::u32string& cps = decoded[w];
    if (cps.size() < 2) continue;  // nothing to merge
    TrainWord tw{{}, static_cast<int64_t>(sorted[w]->second.count)};
    bool ok = true;
    for (size_t i = 0; i < cps.size() && ok; ++i) {
      const auto& table = i == 0 ? initial_id : inside_id;
      const auto it = table.find(cps[i]);
      if (it == table.end()) {
        ok = false;
      } else {
        tw.symbols.push_back(it->second);
      }
    }
    if (!ok) {
      rep.words_with_unknown_chars += sorted[w]->second.count;
      continue;
    }
    train.push_back(std::move(tw));
  }
  decoded.clear();
  decoded.shrink_to_fit();

  std::unordered_map<uint64_t, int64_t> pair_counts;
  std::unordered_map<uint64_t, std::vector<uint32_t>> pair_words;
  for (uint32_t w = 0; w < train.size(); ++w) {
    const auto& s = train[w].symbols;
    for (size_t i = 0; i + 1 < s.size(); ++i) {
      const uint64_t key = pair_key(s[i], s[i + 1]);
      pair_counts[key] += train[w].count;
      std::vector<uint32_t>& where = pair_words[key];
      if (where.empty() || where.back() != w) where.push_back(w);
    }
  }
  std::priority_queue<PairEntry> heap;
  for (const auto& [key, count] : pair_counts) heap.push({count, key});

  const int64_t min_count = static_cast<int64_t>(std::max<uint64_t>(1, options.min_frequency));
  std::vector<uint32_t> stamp(train.size(), 0);
  uint32_t epoch = 0;
  std::vector<uint64_t> touched;
  const auto t0 = std::chrono::steady_clock::now();
  while (tokens.size() < options.vocab_size && !heap.empty()) {
    const PairEntry top = heap.top();
    heap.pop();
    const auto count_it = pair_counts.find(top.key);
    const int64_t current = count_it == pair_counts.end() ? 0 : count_it->second;
    if (current != top.count) {  // stale entry: counts only drop lazily
      if (current > 0) heap.push({current, top.key});
      continue;
    }
    if (current < min_count) break;
    const int32_t a = static_cast<int32_t>(top.key >> 32), b = static_cast<int32_t>(top.key & 0xffffffffu);
    std::string merged = tokens[a] + tokens[b].substr(2);  // b is always a "##" symbol
    int32_t n;
    if (auto it = token_ids.find(merged); it != token_ids.end()) {
      n = it->second;  // the same string can arise from different splits
    } else {
      n = add_token(std::move(merged));
    }
    ++rep.merges;

    ++epoch;
    touched.clear();
    std::vector<uint32_t> where = std::move(pair_words[top.key]);
    pair_words.erase(top.key);
    auto add = [&](int32_t x, int32_t y, int64_t delta, uint32_t w) {
      const uint64_t key = pair_key(x, y);
      pair_counts[key] += delta;
      if (delta > 0) {
        std::vector<uint32_t>& list = pair_words[key];
        if (list.empty() || list.back() != w) list.push_back(w);
        touched.push_back(key);
      }
    };
    for (uint32_t w : where) {
      if (stamp[w] == epoch) continue;
      stamp[w] = epoch;
      std::vector<int32_t>& s = train[w].symbols;
      const int64_t c = train[w].count;
      // Merge left to right on the live sequence, updating the counts of neighbouring pairs as we go.
      size_t out = 0;
      for (size_t i = 0; i < s.size();) {
        if (i + 1 < s.size() && s[i] == a && s[i + 1] == b) {
          if (out > 0) {
            add(s[out - 1], a, -c, w);
            add(s[out - 1], n, c, w);
          }
          add(a, b, -c, w);
          if (i + 2 < s.size()) {
            add(b, s[i + 2], -c, w);
            add(n, s[i + 2], c, w);
          }
          s[out++] = n;
          i += 2;
        } else {
          s[out++] = s[i++];
        }
      }
      s.resize(out);
    }
    pair_counts.erase(top.key);
    std::sort(touched.begin(), touched.end());
    touched.erase(std::unique(touched.begin(), touched.end()), touched.end());
    for (uint64_t key : touched) {
      const int64_t c = pair_counts[key];
      if (c > 0) heap.push({c, key});
    }
    if (rep.merges % 5000 == 0) {
      const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      ELECTRA_LOG(info) << "vocab trainer: " << rep.merges << " merges, " << tokens.size() << " tokens, " << s << " s";
    }
  }
  if (tokens.size() < options.vocab_size) {
    ELECTRA_LOG(warning) << "vocab trainer: the corpus yields only " << tokens.size() << " tokens (requested "
                         << options.vocab_size << "; no pair occurs " << min_count << "+ times)";
  }
  if (report) *report = rep;
  return Vocab::from_tokens(std::move(tokens), std::move(origin));
}

}  // namespace electra::text
