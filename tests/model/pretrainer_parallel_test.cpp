// ElectraPretrainer's execution options and hooks: set_parallel_chunks gives the whole batch's results
// (up to summation order) independently of the thread count; set_recompute_ffn_activations changes no
// bit; StepHooks report phases in order and every gradient range exactly once, when it is final (with
// parallel chunks: the discriminator's before the generator's backward, without changing a bit).
#include <gtest/gtest.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <string>
#include <thread>
#include <vector>

#include "lib/core/error.h"
#include "lib/model/pretrainer.h"
#include "tests/model/model_test_util.h"

namespace electra {
namespace {

// Restores the OpenMP thread count at the end of a test.
class ThreadCount {
 public:
  ThreadCount() : saved_(omp_get_max_threads()) {}
  ~ThreadCount() { omp_set_num_threads(saved_); }

 private:
  int saved_;
};

StepContext training_context() {
  StepContext ctx;
  ctx.seed = 31;
  ctx.step = 4;
  ctx.training = true;
  return ctx;
}

TEST(ModelPretrainer, ParallelChunksMatchTheWholeBatch) {
  ThreadCount restore;
  omp_set_num_threads(2);
  auto be = make_cpu_backend<double>();
  const PretrainerConfig c = test::tiny_config();
  ElectraPretrainer<double> model(c, *be);
  model.init_parameters(32);
  Batch batch = test::random_batch(5, 8, 3, c.vocab_size, 33, /*with_nsp=*/true, c.num_classes);
  batch.global_row_offset = 10;
  const StepContext ctx = training_context();
  const test::StepResult<double> whole = test::run_step(model, batch, ctx);
  double gmax = 0;
  for (double g : whole.grads) gmax = std::max(gmax, std::abs(g));
  ASSERT_GT(gmax, 0);
  for (int chunks : {2, 3, 9}) {  // 9 > rows: one row per chunk
    model.set_parallel_chunks(chunks);
    const test::StepResult<double> split = test::run_step(model, batch, ctx);
    // Randomness is keyed by global example: samples, labels and corrupted ids are exactly the same.
    EXPECT_EQ(split.out.sampled_ids, whole.out.sampled_ids) << chunks;
    EXPECT_EQ(split.out.corrupted_ids, whole.out.corrupted_ids) << chunks;
    EXPECT_EQ(split.out.disc_label, whole.out.disc_label) << chunks;
    ASSERT_EQ(split.out.lm_outputs.size(), whole.out.lm_outputs.size());
    for (size_t i = 0; i < whole.out.lm_outputs.size(); ++i) {
      ASSERT_NEAR(split.out.lm_outputs[i], whole.out.lm_outputs[i], 1e-12) << chunks;
    }
    for (size_t i = 0; i < whole.out.disc_logits.size(); ++i) {
      ASSERT_NEAR(split.out.disc_logits[i], whole.out.disc_logits[i], 1e-12) << chunks;
    }
    for (size_t i = 0; i < whole.out.sentence_outputs.size(); ++i) {
      ASSERT_NEAR(split.out.sentence_outputs[i], whole.out.sentence_outputs[i], 1e-12) << chunks;
    }
    const PretrainerLosses &a = split.out.losses, &b = whole.out.losses;
    EXPECT_NEAR(a.total_loss, b.total_loss, 1e-10 * std::abs(b.total_loss));
    EXPECT_NEAR(a.mlm_loss, b.mlm_loss, 1e-10 * std::abs(b.mlm_loss));
    EXPECT_NEAR(a.disc_loss, b.disc_loss, 1e-10 * std::abs(b.disc_loss));
    EXPECT_NEAR(a.sentence_loss, b.sentence_loss, 1e-10 * std::abs(b.sentence_loss));
    EXPECT_EQ(a.mlm_correct_sum, b.mlm_correct_sum);
    EXPECT_EQ(a.disc_correct_sum, b.disc_correct_sum);
    EXPECT_EQ(a.disc_fake_count, b.disc_fake_count);
    EXPECT_EQ(a.sentence_correct_sum, b.sentence_correct_sum);
    for (size_t i = 0; i < whole.grads.size(); ++i) {
      ASSERT_NEAR(split.grads[i], whole.grads[i], 1e-10 * (std::abs(whole.grads[i]) + 1e-3 * gmax))
          << "chunks " << chunks << ", parameter element " << i;
    }
  }
}

TEST(ModelPretrainer, ParallelChunksDoNotDependOnTheThreadCount) {
  ThreadCount restore;
  auto be = make_cpu_backend<float>();
  const PretrainerConfig c = test::tiny_config();
  ElectraPretrainer<float> model(c, *be);
  model.init_parameters(34);
  model.set_parallel_chunks(2);
  const Batch batch = test::random_batch(6, 8, 3, c.vocab_size, 35, true, c.num_classes);
  const StepContext ctx = training_context();
  omp_set_num_threads(1);
  const test::StepResult<float> one = test::run_step(model, batch, ctx);
  omp_set_num_threads(2);
  const test::StepResult<float> two = test::run_step(model, batch, ctx);
  omp_set_num_threads(3);
  const test::StepResult<float> three = test::run_step(model, batch, ctx);
  for (const test::StepResult<float>* r : {&two, &three}) {
    EXPECT_EQ(r->grads, one.grads);
    EXPECT_EQ(r->out.lm_outputs, one.out.lm_outputs);
    EXPECT_EQ(r->out.disc_logits, one.out.disc_logits);
    EXPECT_EQ(r->out.losses.total_loss, one.out.losses.total_loss);
  }
}

TEST(ModelPretrainer, ParallelChunksAccumulateAndRejectBadSettings) {
  ThreadCount restore;
  omp_set_num_threads(2);
  auto be = make_cpu_backend<double>();
  const PretrainerConfig c = test::tiny_config();
  ElectraPretrainer<double> model(c, *be);
  model.init_parameters(36);
  EXPECT_THROW(model.set_parallel_chunks(0), Error);
  model.set_parallel_chunks(2);
  EXPECT_EQ(model.parallel_chunks(), 2);
  const Batch batch = test::random_batch(4, 8, 3, c.vocab_size, 37);
  const StepContext ctx = training_context();
  model.zero_gradients();
  model.forward(batch, ctx);
  model.backward();
  const std::vector<double> once = model.gradients_to_host();
  EXPECT_THROW(model.backward(), Error);  // the same forward may not be back-propagated twice
  model.forward(batch, ctx);
  model.backward();
  const std::vector<double> twice = model.gradients_to_host();
  for (size_t i = 0; i < once.size(); ++i) ASSERT_NEAR(twice[i], 2 * once[i], 1e-12 * (1 + std::abs(once[i])));
  // A bad batch fails before any chunk runs, naming the tensor.
  Batch bad = batch;
  bad.input_word_ids[5] = c.vocab_size;
  EXPECT_THROW(model.forward(bad, ctx), Error);
}

TEST(ModelPretrainer, RecomputedFfnActivationsGiveTheSameBits) {
  ThreadCount restore;
  omp_set_num_threads(2);
  auto be = make_cpu_backend<float>();
  const PretrainerConfig c = test::tiny_config();
  ElectraPretrainer<float> model(c, *be);
  model.init_parameters(43);
  const Batch batch = test::random_batch(4, 8, 3, c.vocab_size, 44, true, c.num_classes);
  const StepContext ctx = training_context();
  const test::StepResult<float> kept = test::run_step(model, batch, ctx);
  for (int chunks : {1, 2}) {
    model.set_parallel_chunks(chunks);
    model.set_recompute_ffn_activations(true);
    EXPECT_TRUE(model.recompute_ffn_activations());
    const test::StepResult<float> recomputed = test::run_step(model, batch, ctx);
    model.set_recompute_ffn_activations(false);
    const test::StepResult<float> kept_again = test::run_step(model, batch, ctx);
    EXPECT_EQ(recomputed.grads, kept_again.grads) << "chunks " << chunks;
    EXPECT_EQ(recomputed.out.lm_outputs, kept_again.out.lm_outputs);
    EXPECT_EQ(recomputed.out.disc_logits, kept_again.out.disc_logits);
    EXPECT_EQ(recomputed.out.losses.total_loss, kept_again.out.losses.total_loss);
    if (chunks == 1) {
      EXPECT_EQ(recomputed.grads, kept.grads);
    }
  }
  // Switching re-plans: a backward of the forward before the switch is refused.
  model.forward(batch, ctx);
  model.set_recompute_ffn_activations(true);
  EXPECT_THROW(model.backward(), Error);
}

// Ranges reported by on_gradients_ready, with the gradient values they held when reported.
struct ReadyLog {
  std::vector<std::pair<size_t, size_t>> ranges;
  std::vector<std::vector<float>> values;
};

ReadyLog run_with_ready_hook(ElectraPretrainer<float>& model, const Batch& batch) {
  ReadyLog log;
  StepContext ctx = training_context();
  ctx.hooks.on_gradients_ready = [&](size_t offset, size_t count) {
    log.ranges.emplace_back(offset, count);
    std::vector<float> v(count);
    model.backend().copy_to_host(v.data(), model.gradients() + offset, count);
    log.values.push_back(std::move(v));
  };
  model.zero_gradients();
  model.forward(batch, ctx);
  model.backward();
  return log;
}

TEST(ModelPretrainer, GradientReadyHookReportsEveryRangeOnceWhenFinal) {
  ThreadCount restore;
  omp_set_num_threads(2);
  auto be = make_cpu_backend<float>();
  const PretrainerConfig c = test::tiny_config();
  ElectraPretrainer<float> model(c, *be);
  model.init_parameters(38);
  const size_t total = model.layout().total_size();
  for (bool nsp : {false, true}) {
    const Batch batch = test::random_batch(4, 8, 3, c.vocab_size, 39, nsp, c.num_classes);
    const ReadyLog log = run_with_ready_hook(model, batch);
    const std::vector<float> final_grads = model.gradients_to_host();
    // Every element exactly once.
    std::vector<int> covered(total, 0);
    for (const auto& [offset, count] : log.ranges) {
      ASSERT_LE(offset + count, total);
      for (size_t i = offset; i < offset + count; ++i) ++covered[i];
    }
    for (size_t i = 0; i < total; ++i) ASSERT_EQ(covered[i], 1) << "element " << i << " (nsp " << nsp << ")";
    // Final when reported.
    for (size_t r = 0; r < log.ranges.size(); ++r) {
      const auto [offset, count] = log.ranges[r];
      for (size_t i = 0; i < count; ++i) {
        ASSERT_EQ(log.values[r][i], final_grads[offset + i]) << "range " << r << " element " << offset + i;
      }
    }
    // Backward runs the discriminator first: its last layer is the first range, the shared embeddings
    // (offset 0) the last.
    EXPECT_GT(log.ranges.front().first, log.ranges.back().first);
    EXPECT_EQ(log.ranges.back().first, 0u);
  }
}

// What backward reported, in order: each phase as it began and each on_gradients_ready range, with the
// values the range held when it was reported.
template <typename P>
struct HookEvents {
  std::vector<std::string> phases;  // "" where a range was reported
  std::vector<std::pair<size_t, size_t>> ranges;
  std::vector<std::vector<P>> values;
  std::vector<size_t> range_event;  // index in `phases` of each range's report
};

template <typename T>
HookEvents<Wide<T>> run_with_hooks(ElectraPretrainer<T>& model, const Batch& batch, std::vector<Wide<T>>& grads,
                                   PretrainerLosses& losses) {
  HookEvents<Wide<T>> events;
  StepContext ctx = training_context();
  ctx.hooks.on_phase = [&](StepPhase p) { events.phases.push_back(to_string(p)); };
  ctx.hooks.on_gradients_ready = [&](size_t offset, size_t count) {
    events.range_event.push_back(events.phases.size());
    events.phases.push_back("");
    events.ranges.emplace_back(offset, count);
    std::vector<Wide<T>> v(count);
    model.parameter_backend().copy_to_host(v.data(), model.gradients() + offset, count);
    events.values.push_back(std::move(v));
  };
  const test::StepResult<Wide<T>> r = test::run_step(model, batch, ctx);
  grads = r.grads;
  losses = r.out.losses;
  return events;
}

// The ranges reported between the discriminator_backward and generator_backward phase marks.
template <typename P>
std::vector<std::pair<size_t, size_t>> ranges_between(const HookEvents<P>& e, const std::string& from,
                                                      const std::string& to) {
  const auto at = [&](const std::string& name) {
    const auto it = std::find(e.phases.begin(), e.phases.end(), name);
    EXPECT_NE(it, e.phases.end()) << name;
    return static_cast<size_t>(it - e.phases.begin());
  };
  const size_t begin = at(from), end = at(to);
  std::vector<std::pair<size_t, size_t>> out;
  for (size_t r = 0; r < e.ranges.size(); ++r) {
    if (e.range_event[r] > begin && e.range_event[r] < end) out.push_back(e.ranges[r]);
  }
  return out;
}

// With K parallel chunks the hook reports the discriminator's ranges (exactly those, in the order the
// one-chunk backward reports them) before the generator's backward begins, the rest after it; every
// element once, each range final when reported; and the gradients and losses are bitwise those of the
// same K without the hook (which adds the chunks' buffers at the end, in one pass, as before the hook
// reported anything early).
template <typename T>
void check_chunked_gradient_reports(ElectraPretrainer<T>& model, const Batch& batch, const std::string& what) {
  using P = Wide<T>;
  const size_t total = model.layout().total_size();
  model.set_parallel_chunks(1);
  std::vector<P> grads_one;
  PretrainerLosses losses_one;
  const HookEvents<P> one = run_with_hooks(model, batch, grads_one, losses_one);
  ASSERT_FALSE(one.ranges.empty()) << what;
  const auto discriminator_ranges = ranges_between(one, "discriminator_backward", "generator_backward");
  ASSERT_FALSE(discriminator_ranges.empty()) << what;
  for (const auto& [offset, count] : discriminator_ranges) {
    ASSERT_GT(offset, 0u) << what << ": the shared embeddings (offset 0) are not final after the discriminator";
  }

  for (int chunks : {2, 3}) {
    const std::string label = what + ", " + std::to_string(chunks) + " chunks";
    model.set_parallel_chunks(chunks);
    const test::StepResult<P> plain = test::run_step(model, batch, training_context());
    std::vector<P> grads;
    PretrainerLosses losses;
    const HookEvents<P> e = run_with_hooks(model, batch, grads, losses);

    // Bitwise the same with and without the hook.
    ASSERT_EQ(grads.size(), total);
    for (size_t i = 0; i < total; ++i) ASSERT_EQ(grads[i], plain.grads[i]) << label << ": element " << i;
    EXPECT_EQ(losses.total_loss, plain.out.losses.total_loss) << label;
    EXPECT_EQ(losses.mlm_loss_sum, plain.out.losses.mlm_loss_sum) << label;
    EXPECT_EQ(losses.disc_loss_sum, plain.out.losses.disc_loss_sum) << label;

    // Every element exactly once, each range final when reported.
    std::vector<int> covered(total, 0);
    for (size_t r = 0; r < e.ranges.size(); ++r) {
      const auto [offset, count] = e.ranges[r];
      ASSERT_LE(offset + count, total) << label;
      for (size_t i = 0; i < count; ++i) {
        ++covered[offset + i];
        ASSERT_EQ(e.values[r][i], grads[offset + i]) << label << ": range " << r << " element " << offset + i;
      }
    }
    for (size_t i = 0; i < total; ++i) ASSERT_EQ(covered[i], 1) << label << ": element " << i;

    // The discriminator's ranges come before the generator's backward begins, the rest after it and
    // before backward returns, from the end of the buffer to its start.
    EXPECT_EQ(ranges_between(e, "discriminator_backward", "generator_backward"), discriminator_ranges) << label;
    const auto rest = ranges_between(e, "generator_backward", "backward_done");
    ASSERT_FALSE(rest.empty()) << label;
    EXPECT_EQ(discriminator_ranges.size() + rest.size(), e.ranges.size()) << label << ": a range outside backward";
    for (size_t r = 1; r < rest.size(); ++r) EXPECT_GT(rest[r - 1].first, rest[r].first) << label;
    EXPECT_EQ(rest.back().first, 0u) << label;
  }
}

TEST(ModelPretrainer, ParallelChunksReportTheDiscriminatorBeforeTheGeneratorBackward) {
  ThreadCount restore;
  const PretrainerConfig c = test::tiny_config();
  for (int threads : {1, 2}) {  // one thread runs the chunks one after the other
    omp_set_num_threads(threads);
    const std::string t = std::to_string(threads) + " thread(s)";
    for (bool nsp : {false, true}) {
      const Batch batch = test::random_batch(5, 8, 3, c.vocab_size, 46, nsp, c.num_classes);
      const std::string n = nsp ? ", NSP" : "";
      {
        auto be = make_cpu_backend<float>();
        ElectraPretrainer<float> model(c, *be);
        model.init_parameters(47);
        ASSERT_NO_FATAL_FAILURE(check_chunked_gradient_reports(model, batch, "float, " + t + n));
      }
      {
        auto be = make_cpu_backend<double>();
        ElectraPretrainer<double> model(c, *be);
        model.init_parameters(47);
        ASSERT_NO_FATAL_FAILURE(check_chunked_gradient_reports(model, batch, "double, " + t + n));
      }
      {
        auto wide = make_cpu_backend<float>();
        ElectraPretrainer<bfloat16> model(c, make_cpu_bf16_backend(*wide));
        model.init_parameters(47);
        ASSERT_NO_FATAL_FAILURE(check_chunked_gradient_reports(model, batch, "bf16 storage, " + t + n));
      }
    }
  }
}

// With chunks, the progress hook (where the trainer lets MPI advance the discriminator's allreduce) runs
// on the calling thread during the generator's backward, once per generator layer at least, and neither
// with one chunk (on_gradients_ready is called between layers there) nor without a gradient hook.
TEST(ModelPretrainer, ParallelChunksCallTheProgressHookOnTheCallingThreadDuringTheGeneratorBackward) {
  ThreadCount restore;
  omp_set_num_threads(2);
  auto be = make_cpu_backend<float>();
  const PretrainerConfig c = test::tiny_config();
  ElectraPretrainer<float> model(c, *be);
  model.init_parameters(51);
  const Batch batch = test::random_batch(4, 8, 3, c.vocab_size, 52);
  const std::thread::id caller = std::this_thread::get_id();
  for (int chunks : {1, 2, 3}) {
    for (bool with_ready_hook : {true, false}) {
      model.set_parallel_chunks(chunks);
      StepContext ctx = training_context();
      std::string phase;
      int calls = 0, outside_generator_backward = 0, other_thread = 0;
      ctx.hooks.on_phase = [&](StepPhase p) { phase = to_string(p); };
      if (with_ready_hook) ctx.hooks.on_gradients_ready = [](size_t, size_t) {};
      ctx.hooks.on_progress = [&] {
        ++calls;
        outside_generator_backward += phase != "generator_backward";
        other_thread += std::this_thread::get_id() != caller;
      };
      model.zero_gradients();
      model.forward(batch, ctx);
      model.backward();
      const std::string what = std::to_string(chunks) + " chunk(s), ready hook " + (with_ready_hook ? "on" : "off");
      if (chunks == 1 || !with_ready_hook) {
        EXPECT_EQ(calls, 0) << what;
      } else {
        EXPECT_GE(calls, c.generator.num_layers) << what;
        EXPECT_EQ(outside_generator_backward, 0) << what;
        EXPECT_EQ(other_thread, 0) << what;
      }
    }
  }
}

// The gradient allreduce puts a bucket boundary at layout().first_element_of(kDiscriminator): the ranges
// the discriminator's backward finishes are exactly [that element, end of buffer).
TEST(ModelPretrainer, DiscriminatorGradientsAreTheBufferTailFromItsFirstElement) {
  auto be = make_cpu_backend<float>();
  const PretrainerConfig c = test::tiny_config();
  ElectraPretrainer<float> model(c, *be);
  model.init_parameters(53);
  const size_t n = model.layout().total_size(), first = model.layout().first_element_of(Network::kDiscriminator);
  ASSERT_GT(first, 0u);
  ASSERT_LT(first, n);
  EXPECT_EQ(model.layout().first_element_of(Network::kShared), 0u);  // the shared embeddings come first
  EXPECT_LT(model.layout().first_element_of(Network::kGenerator), first);
  StepContext ctx = training_context();
  bool generator_started = false;
  std::vector<std::pair<size_t, size_t>> discriminator_ranges;
  ctx.hooks.on_phase = [&](StepPhase p) { generator_started |= p == StepPhase::kGeneratorBackward; };
  ctx.hooks.on_gradients_ready = [&](size_t offset, size_t count) {
    if (!generator_started) discriminator_ranges.emplace_back(offset, count);
  };
  model.zero_gradients();
  model.forward(test::random_batch(3, 8, 3, c.vocab_size, 54), ctx);
  model.backward();
  std::sort(discriminator_ranges.begin(), discriminator_ranges.end());
  size_t next = first;
  for (const auto& [offset, count] : discriminator_ranges) {
    EXPECT_EQ(offset, next);
    next = offset + count;
  }
  EXPECT_EQ(next, n);
}

TEST(ModelPretrainer, PhaseHookMarksTheStepInOrder) {
  auto be = make_cpu_backend<float>();
  const PretrainerConfig c = test::tiny_config();
  ElectraPretrainer<float> model(c, *be);
  model.init_parameters(41);
  const Batch batch = test::random_batch(4, 8, 3, c.vocab_size, 42);
  for (int chunks : {1, 2}) {
    model.set_parallel_chunks(chunks);
    std::vector<std::string> seen;
    StepContext ctx = training_context();
    ctx.hooks.on_phase = [&](StepPhase p) { seen.push_back(to_string(p)); };
    model.zero_gradients();
    model.forward(batch, ctx);
    model.backward();
    const std::vector<std::string> expected = {
        "generator_forward",      "sampling",           "discriminator_forward", "forward_done",
        "discriminator_backward", "generator_backward", "backward_done"};
    EXPECT_EQ(seen, expected) << "chunks " << chunks;
  }
}

}  // namespace
}  // namespace electra
