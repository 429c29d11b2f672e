// Data pipeline benchmarks.
//   BM_Preprocess: one rank's end-to-end throughput (read, tokenize, pack, write + compress + fsync
//     shards) in MB of input text per second. Corpus: $ELECTRA_BENCH_CORPUS or the Python docs
//     (/usr/share/doc/python3.11/html/_sources); vocabulary: $ELECTRA_BENCH_VOCAB or one trained here
//     (30,522 tokens) from the corpus before timing.
//   BM_Loader/cache_mib/chunk_rows/threads: batches/s of Loader::next() at global batch 128, seq 128 on the shards
//     written above (one rank, shuffled; the consumer does nothing, so this is the prefetch thread's
//     rate). Cache 1024 MiB holds the whole data set once warm; 4 MiB forces a chunk decompression per
//     row most of the time, as on a corpus much larger than memory; shards are written with the
//     given HDF5 chunk height (electra-preprocess --chunk-rows); `threads` is LoaderOptions::reader_threads.
// Run: build/bench/data_bench [--benchmark_filter=...]
#include <benchmark/benchmark.h>

#include <cstdlib>
#include <filesystem>

#include "data_pipeline/loader/loader.h"
#include "data_pipeline/preprocess/preprocess.h"
#include "data_pipeline/tokenizer/text_files.h"
#include "data_pipeline/tokenizer/vocab_trainer.h"

namespace {
namespace fs = std::filesystem;
using namespace electra;

std::string env_or(const char* name, const std::string& fallback) {
  const char* v = std::getenv(name);
  return v != nullptr && *v != '\0' ? v : fallback;
}

struct BenchData {
  std::string corpus = env_or("ELECTRA_BENCH_CORPUS", "/usr/share/doc/python3.11/html/_sources");
  std::string root;
  std::string vocab_path;
  std::string shards;
  std::string error;

  BenchData() {
    if (!fs::exists(corpus)) {
      error = corpus + " does not exist (install python3-doc or set ELECTRA_BENCH_CORPUS)";
      return;
    }
    root = (fs::temp_directory_path() / ("electra-data-bench-" + std::to_string(::getpid()))).string();
    fs::create_directories(root);
    vocab_path = env_or("ELECTRA_BENCH_VOCAB", "");
    if (vocab_path.empty()) {
      text::WordCounter counter(text::TokenizerOptions{});
      for (const std::string& f : text::list_text_files({corpus})) counter.add_file(f);
      text::VocabTrainerOptions o;
      o.vocab_size = 30522;
      vocab_path = root + "/vocab.txt";
      text::train_wordpiece_vocab(counter, o).save(vocab_path);
    }
    shards = root + "/shards";
  }
  ~BenchData() {
    std::error_code ec;
    if (!root.empty()) fs::remove_all(root, ec);
  }
};

BenchData& data() {
  static BenchData d;
  return d;
}

data::PreprocessOptions preprocess_options(const std::string& out) {
  data::PreprocessOptions o;
  o.inputs = {data().corpus};
  o.vocab_path = data().vocab_path;
  o.output_dir = out;
  o.max_seq_length = 128;
  o.progress_interval_s = 0;
  return o;
}

void BM_Preprocess(benchmark::State& state) {
  if (!data().error.empty()) {
    state.SkipWithError(data().error.c_str());
    return;
  }
  const text::Vocab vocab = text::Vocab::load(data().vocab_path);
  const data::PreprocessOptions o = preprocess_options(data().root + "/bench-out");
  fs::create_directories(o.output_dir);
  const std::vector<data::InputFile> files = data::list_input_files(o.inputs);
  const std::vector<int> owner(files.size(), 0);
  uint64_t bytes = 0, examples = 0;
  for (auto _ : state) {
    const data::RankResult r = data::preprocess_rank(o, vocab, files, owner, 0);
    bytes += r.stats.bytes;
    examples += r.stats.examples;
  }
  state.SetBytesProcessed(static_cast<int64_t>(bytes));
  state.counters["MB/s"] = benchmark::Counter(static_cast<double>(bytes) / 1e6, benchmark::Counter::kIsRate);
  state.counters["examples/s"] = benchmark::Counter(static_cast<double>(examples), benchmark::Counter::kIsRate);
}
BENCHMARK(BM_Preprocess)->Unit(benchmark::kMillisecond)->UseRealTime()->MinTime(3.0);

void BM_Loader(benchmark::State& state) {
  if (!data().error.empty()) {
    state.SkipWithError(data().error.c_str());
    return;
  }
  const int chunk_rows = static_cast<int>(state.range(1));
  const std::string shards = data().shards + "-" + std::to_string(chunk_rows);
  if (!fs::exists(shards + "/manifest.json")) {
    // run_preprocess needs MPI; one rank's shards + manifest are written by hand here instead.
    data::PreprocessOptions o = preprocess_options(shards);
    o.chunk_rows = chunk_rows;
    fs::create_directories(o.output_dir);
    const std::vector<data::InputFile> files = data::list_input_files(o.inputs);
    const text::Vocab vocab = text::Vocab::load(o.vocab_path);
    const data::RankResult r = data::preprocess_rank(o, vocab, files, std::vector<int>(files.size(), 0), 0);
    data::Manifest m;
    m.shards = r.shards;
    for (const auto& s : r.shards) m.total_rows += s.rows;
    m.vocab_hash = vocab.hash();
    m.vocab_size = vocab.size();
    m.max_seq_length = o.max_seq_length;
    vocab.save(o.output_dir + "/vocab.txt");
    m.save(o.output_dir);
  }
  data::LoaderOptions o;
  o.data_dir = shards;
  o.global_batch_size = 128;
  o.seq_length = 128;
  o.cache_bytes = static_cast<uint64_t>(state.range(0)) << 20;
  o.reader_threads = static_cast<int>(state.range(2));
  data::Loader loader(o);
  for (int i = 0; i < 100; ++i) loader.next();  // warm: 12,800 random rows touch every chunk once
  for (auto _ : state) benchmark::DoNotOptimize(loader.next());
  state.counters["batches/s"] =
      benchmark::Counter(static_cast<double>(state.iterations()), benchmark::Counter::kIsRate);
  const auto cache = loader.dataset().cache_stats();
  state.counters["hit_rate"] = static_cast<double>(cache.hits) / static_cast<double>(cache.hits + cache.misses);
  state.counters["examples"] = static_cast<double>(loader.num_examples());
}
BENCHMARK(BM_Loader)
    ->ArgNames({"cache_mib", "chunk_rows", "threads"})
    ->Args({1024, 64, 1})
    ->Args({4, 256, 1})
    ->Args({4, 64, 1})
    ->Args({4, 16, 1})
    ->Args({4, 64, 2})
    ->Args({4, 64, 4})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime()
    ->MinTime(3.0);

}  // namespace

BENCHMARK_MAIN();
