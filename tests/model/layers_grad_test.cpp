// Finite-difference checks (double precision, central differences) of every layer's backward:
// embeddings (with and without projection), one transformer layer with padding, a 2-layer encoder and
// the three heads. Dropout is ON with a fixed key: the masks are a pure function of the key, so the
// loss stays a smooth function of the parameters and the check covers the dropout paths too.
#include <gtest/gtest.h>

#include <memory>

#include "lib/model/device_buffer.h"
#include "lib/model/encoder.h"
#include "lib/model/heads.h"
#include "lib/model/parameter_layout.h"
#include "tests/model/model_test_util.h"

namespace electra {
namespace {

using test::all_indices;
using test::fd_ok;
using test::finite_difference;

constexpr double kTol = 1e-6;

struct Fixture {
  std::unique_ptr<Backend<double>> be = make_cpu_backend<double>();
};

// Indices of every element of the views whose name starts with one of the prefixes.
std::vector<size_t> view_indices(const ParameterLayout& layout, const std::vector<std::string>& prefixes) {
  std::vector<size_t> out;
  for (const ParameterSlice& v : layout.slices()) {
    for (const std::string& p : prefixes) {
      if (v.name.rfind(p, 0) == 0) {
        for (size_t i = 0; i < v.size; ++i) out.push_back(v.offset + i);
        break;
      }
    }
  }
  return out;
}

std::vector<double> random_params(const ParameterLayout& layout, uint64_t seed) {
  std::vector<double> p = test::random_values(layout.total_size(), seed, -0.5, 0.5);
  // LayerNorm gammas near 1, as after initialisation.
  for (const ParameterSlice& v : layout.slices()) {
    if (v.init == ParamInit::kOnes) {
      for (size_t i = 0; i < v.size; ++i) p[v.offset + i] += 1.0;
    }
  }
  return p;
}

std::vector<int32_t> lengths_mask(int B, int S, const std::vector<int>& lengths) {
  std::vector<int32_t> mask(static_cast<size_t>(B) * S);
  for (int b = 0; b < B; ++b) {
    for (int s = 0; s < S; ++s) mask[b * S + s] = s < lengths[b];
  }
  return mask;
}

const DropoutContext kDropout{/*training=*/true, /*seed=*/11, /*step=*/3, /*first_example=*/5};

// packed: the rows hold examples of 2 and 3 tokens, their positions restarting (position_ids), so position
// rows 0..2 take every gradient.
void check_embeddings(int E, int hidden, bool packed = false) {
  Fixture fx;
  Backend<double>& be = *fx.be;
  EncoderConfig c = test::tiny_config().discriminator;
  c.embedding_size = E;
  c.hidden_size = hidden;
  c.num_layers = 0;
  c.hidden_dropout = 0.2f;
  ParameterLayout layout;
  const EmbeddingSlots shared = add_shared_embeddings(layout, c);
  const EncoderSlots enc = add_encoder(layout, c, "electra", Network::kDiscriminator, shared);
  ASSERT_EQ(enc.embeddings.has_project, E != hidden);
  const int B = 3, S = 5, N = B * S;
  std::vector<int32_t> ids(N), types(N);
  for (int i = 0; i < N; ++i) {
    ids[i] = (7 * i + 3) % c.vocab_size;
    types[i] = (i / 2) % 2;
  }
  ids[4] = ids[9];  // a repeated id: its table row sums two gradients
  DeviceBuffer<double, int32_t> d_ids(be, N), d_types(be, N), d_positions(be, N);
  be.copy_ints_from_host(d_ids.data(), ids.data(), N);
  be.copy_ints_from_host(d_types.data(), types.data(), N);
  std::vector<int32_t> positions(N);
  for (int i = 0; i < N; ++i) positions[i] = i % S < 2 ? i % S : i % S - 2;
  be.copy_ints_from_host(d_positions.data(), positions.data(), N);
  const int32_t* position_ids = packed ? d_positions.data() : nullptr;
  const int used_positions = packed ? 3 : S;

  std::vector<double> params = random_params(layout, 1);
  const std::vector<double> R = test::random_values(static_cast<size_t>(N) * hidden, 2);
  DeviceBuffer<double> d_params(be, layout.total_size()), d_grads(be, layout.total_size()), d_R(be, R.size());
  be.copy_from_host(d_R.data(), R.data(), R.size());
  Embeddings<double> emb(enc.embeddings, E, hidden, c.hidden_dropout, c.layer_norm_eps, 77);
  emb.plan(be, B, S);

  auto loss = [&]() {
    be.copy_from_host(d_params.data(), params.data(), params.size());
    emb.forward(be, d_params.data(), d_ids.data(), d_types.data(), position_ids, kDropout);
    const std::vector<double> out = test::to_host(be, emb.output(), R.size());
    double l = 0;
    for (size_t i = 0; i < R.size(); ++i) l += out[i] * R[i];
    return l;
  };
  loss();
  be.fill(d_grads.data(), layout.total_size(), 0.0);
  emb.backward(be, d_params.data(), d_grads.data(), d_R.data());
  const std::vector<double> grads = test::to_host(be, d_grads.data(), layout.total_size());
  const auto r = finite_difference(params, grads, all_indices(layout.total_size()), loss);
  EXPECT_TRUE(fd_ok(r, kTol, "embeddings"));
  // Position rows no token uses must get no gradient.
  const ParameterSlice& pos = layout.find("electra.embeddings.position_embeddings.weight");
  for (size_t i = static_cast<size_t>(used_positions) * E; i < pos.size; ++i) ASSERT_EQ(grads[pos.offset + i], 0.0);
}

TEST(ModelLayerGrad, EmbeddingsWithProjection) { check_embeddings(8, 12); }
TEST(ModelLayerGrad, EmbeddingsWithoutProjection) { check_embeddings(8, 8); }
TEST(ModelLayerGrad, EmbeddingsOfPackedRows) { check_embeddings(8, 12, true); }

TEST(ModelLayerGrad, TransformerLayerWithPadding) {
  Fixture fx;
  Backend<double>& be = *fx.be;
  EncoderConfig c = test::tiny_config().discriminator;
  c.num_layers = 1;
  c.hidden_dropout = 0.2f;
  c.attention_dropout = 0.25f;
  ParameterLayout layout;
  const EmbeddingSlots shared = add_shared_embeddings(layout, c);
  const EncoderSlots enc = add_encoder(layout, c, "electra", Network::kDiscriminator, shared);
  const int B = 3, S = 5, N = B * S, C = c.hidden_size;
  const std::vector<int32_t> mask = lengths_mask(B, S, {5, 3, 4});
  DeviceBuffer<double, int32_t> d_mask(be, N);
  be.copy_ints_from_host(d_mask.data(), mask.data(), N);

  TransformerLayerShape shape{
      C, c.num_heads, c.intermediate_size, Activation::kGelu, c.hidden_dropout, c.attention_dropout, c.layer_norm_eps};
  TransformerLayer<double> layer(enc.layers[0], shape, Network::kDiscriminator, 0);
  layer.plan(be, B, S);
  LayerScratch<double> scratch;
  scratch.plan(be, B, S, C, c.intermediate_size, c.num_heads);

  std::vector<double> params = random_params(layout, 3);
  std::vector<double> x = test::random_values(static_cast<size_t>(N) * C, 4);
  const std::vector<double> R = test::random_values(static_cast<size_t>(N) * C, 5);
  DeviceBuffer<double> d_params(be, layout.total_size()), d_grads(be, layout.total_size()), d_x(be, x.size()),
      d_dx(be, x.size()), d_R(be, R.size());
  be.copy_from_host(d_R.data(), R.data(), R.size());
  auto loss = [&]() {
    be.copy_from_host(d_params.data(), params.data(), params.size());
    be.copy_from_host(d_x.data(), x.data(), x.size());
    layer.forward(be, d_params.data(), d_x.data(), d_mask.data(), kDropout, scratch);
    const std::vector<double> out = test::to_host(be, layer.output(), R.size());
    double l = 0;
    for (size_t i = 0; i < R.size(); ++i) l += out[i] * R[i];
    return l;
  };
  loss();
  be.fill(d_grads.data(), layout.total_size(), 0.0);
  layer.backward(be, d_params.data(), d_grads.data(), d_R.data(), d_dx.data(), scratch);
  const std::vector<double> grads = test::to_host(be, d_grads.data(), layout.total_size());
  const std::vector<double> dx = test::to_host(be, d_dx.data(), x.size());
  EXPECT_TRUE(fd_ok(finite_difference(params, grads, view_indices(layout, {"electra.encoder.layer.0."}), loss), kTol,
                    "layer parameters"));
  EXPECT_TRUE(fd_ok(finite_difference(x, dx, all_indices(x.size()), loss), kTol, "layer input"));
}

TEST(ModelLayerGrad, EncoderTwoLayers) {
  Fixture fx;
  Backend<double>& be = *fx.be;
  const PretrainerConfig pc = test::tiny_config();
  const EncoderConfig& c = pc.generator;  // 6 wide, 2 heads, projected embeddings
  ParameterLayout layout;
  const EmbeddingSlots shared = add_shared_embeddings(layout, c);
  const EncoderSlots enc = add_encoder(layout, c, "generator", Network::kGenerator, shared);
  const int B = 2, S = 6, N = B * S;
  const std::vector<int32_t> mask = lengths_mask(B, S, {6, 4});
  std::vector<int32_t> ids(N), types(N, 0);
  for (int i = 0; i < N; ++i) ids[i] = (5 * i + 1) % c.vocab_size;
  DeviceBuffer<double, int32_t> d_mask(be, N), d_ids(be, N), d_types(be, N);
  be.copy_ints_from_host(d_mask.data(), mask.data(), N);
  be.copy_ints_from_host(d_ids.data(), ids.data(), N);
  be.copy_ints_from_host(d_types.data(), types.data(), N);
  Encoder<double> encoder(c, enc, Network::kGenerator);
  encoder.plan(be, B, S);

  std::vector<double> params = random_params(layout, 6);
  const std::vector<double> R = test::random_values(static_cast<size_t>(N) * c.hidden_size, 7);
  DeviceBuffer<double> d_params(be, layout.total_size()), d_grads(be, layout.total_size()), d_R(be, R.size());
  be.copy_from_host(d_R.data(), R.data(), R.size());
  auto loss = [&]() {
    be.copy_from_host(d_params.data(), params.data(), params.size());
    encoder.forward(be, d_params.data(), d_ids.data(), d_types.data(), nullptr, d_mask.data(), kDropout);
    const std::vector<double> out = test::to_host(be, encoder.output(), R.size());
    double l = 0;
    for (size_t i = 0; i < R.size(); ++i) l += out[i] * R[i];
    return l;
  };
  loss();
  be.fill(d_grads.data(), layout.total_size(), 0.0);
  encoder.backward(be, d_params.data(), d_grads.data(), d_R.data());
  const std::vector<double> grads = test::to_host(be, d_grads.data(), layout.total_size());
  EXPECT_TRUE(fd_ok(finite_difference(params, grads, all_indices(params.size()), loss), kTol, "encoder"));
}

// Shared set-up of the head checks: the tiny pretrainer layout, random parameters and a random input.
struct HeadCase {
  Fixture fx;
  PretrainerConfig config = test::tiny_config();
  PretrainerLayout pl = build_pretrainer_layout(config);
  std::vector<double> params = random_params(pl.layout, 8);
  DeviceBuffer<double> d_params, d_grads;
  HeadCase() {
    d_params.reset(*fx.be, pl.layout.total_size());
    d_grads.reset(*fx.be, pl.layout.total_size());
  }
  void upload() { fx.be->copy_from_host(d_params.data(), params.data(), params.size()); }
  std::vector<double> grads() { return test::to_host(*fx.be, d_grads.data(), params.size()); }
};

double dot(const std::vector<double>& a, const std::vector<double>& b) {
  double s = 0;
  for (size_t i = 0; i < a.size(); ++i) s += a[i] * b[i];
  return s;
}

void check_mlm_head(Activation act) {
  HeadCase h;
  Backend<double>& be = *h.fx.be;
  const int B = 2, S = 5, P = 3, Cg = h.config.generator.hidden_size, E = h.config.embedding_size(),
            V = h.config.vocab_size;
  const std::vector<int32_t> positions = {1, 3, 3, 0, 4, 2};  // a repeated position in row 0
  DeviceBuffer<double, int32_t> d_pos(be, positions.size());
  be.copy_ints_from_host(d_pos.data(), positions.data(), positions.size());
  MlmHead<double> head(h.pl.slots.mlm_head, Cg, E, act, 1e-12f);
  head.plan(be, B, S, P);
  std::vector<double> x = test::random_values(static_cast<size_t>(B) * S * Cg, 9);
  const std::vector<double> R = test::random_values(static_cast<size_t>(B) * P * V, 10);
  DeviceBuffer<double> d_x(be, x.size()), d_dx(be, x.size()), d_R(be, R.size());
  be.copy_from_host(d_R.data(), R.data(), R.size());
  auto loss = [&]() {
    h.upload();
    be.copy_from_host(d_x.data(), x.data(), x.size());
    head.forward(be, h.d_params.data(), d_x.data(), d_pos.data());
    return dot(test::to_host(be, head.logits(), R.size()), R);
  };
  loss();
  be.fill(h.d_grads.data(), h.params.size(), 0.0);
  be.fill(d_dx.data(), x.size(), 0.0);  // MLM head backward accumulates into dx
  head.backward(be, h.d_params.data(), h.d_grads.data(), d_R.data(), d_dx.data());
  const std::vector<double> grads = h.grads(), dx = test::to_host(be, d_dx.data(), x.size());
  const auto idx = view_indices(
      h.pl.layout, {"generator_predictions.", "generator_lm_head.", "electra.embeddings.word_embeddings."});
  EXPECT_TRUE(fd_ok(finite_difference(h.params, grads, idx, loss), kTol, "MLM head parameters"));
  EXPECT_TRUE(fd_ok(finite_difference(x, dx, all_indices(x.size()), loss), kTol, "MLM head input"));
}

TEST(ModelLayerGrad, MlmHeadGelu) { check_mlm_head(Activation::kGelu); }
TEST(ModelLayerGrad, MlmHeadTanh) { check_mlm_head(Activation::kTanh); }

TEST(ModelLayerGrad, SentenceHead) {
  HeadCase h;
  Backend<double>& be = *h.fx.be;
  const int B = 3, S = 4, Cg = h.config.generator.hidden_size, NC = h.config.num_classes;
  SentenceHead<double> head(h.pl.slots.sentence_head, Cg, NC);
  head.plan(be, B, S);
  std::vector<double> x = test::random_values(static_cast<size_t>(B) * S * Cg, 11);
  const std::vector<double> R = test::random_values(static_cast<size_t>(B) * NC, 12);
  DeviceBuffer<double> d_x(be, x.size()), d_dx(be, x.size()), d_R(be, R.size());
  be.copy_from_host(d_R.data(), R.data(), R.size());
  auto loss = [&]() {
    h.upload();
    be.copy_from_host(d_x.data(), x.data(), x.size());
    head.forward(be, h.d_params.data(), d_x.data());
    return dot(test::to_host(be, head.logits(), R.size()), R);
  };
  loss();
  be.fill(h.d_grads.data(), h.params.size(), 0.0);
  be.fill(d_dx.data(), x.size(), 0.0);
  head.backward(be, h.d_params.data(), h.d_grads.data(), d_R.data(), d_dx.data());
  const std::vector<double> grads = h.grads(), dx = test::to_host(be, d_dx.data(), x.size());
  EXPECT_TRUE(
      fd_ok(finite_difference(h.params, grads, view_indices(h.pl.layout, {"generator_classification_head."}), loss),
            kTol, "sentence head parameters"));
  EXPECT_TRUE(fd_ok(finite_difference(x, dx, all_indices(x.size()), loss), kTol, "sentence head input"));
  // Only position 0 of each row feeds the head.
  for (int b = 0; b < B; ++b) {
    for (int i = Cg; i < S * Cg; ++i) ASSERT_EQ(dx[static_cast<size_t>(b) * S * Cg + i], 0.0);
  }
}

TEST(ModelLayerGrad, DiscriminatorHead) {
  HeadCase h;
  Backend<double>& be = *h.fx.be;
  const int rows = 7, Cd = h.config.discriminator.hidden_size;
  DiscriminatorHead<double> head(h.pl.slots.discriminator_head, Cd, Activation::kGelu);
  head.plan(be, rows);
  std::vector<double> x = test::random_values(static_cast<size_t>(rows) * Cd, 13);
  const std::vector<double> R = test::random_values(rows, 14);
  DeviceBuffer<double> d_x(be, x.size()), d_dx(be, x.size()), d_R(be, R.size());
  be.copy_from_host(d_R.data(), R.data(), R.size());
  auto loss = [&]() {
    h.upload();
    be.copy_from_host(d_x.data(), x.data(), x.size());
    head.forward(be, h.d_params.data(), d_x.data());
    return dot(test::to_host(be, head.logits(), R.size()), R);
  };
  loss();
  be.fill(h.d_grads.data(), h.params.size(), 0.0);
  head.backward(be, h.d_params.data(), h.d_grads.data(), d_R.data(), d_dx.data());
  const std::vector<double> grads = h.grads(), dx = test::to_host(be, d_dx.data(), x.size());
  EXPECT_TRUE(fd_ok(finite_difference(h.params, grads, view_indices(h.pl.layout, {"discriminator_predictions."}), loss),
                    kTol, "discriminator head parameters"));
  EXPECT_TRUE(fd_ok(finite_difference(x, dx, all_indices(x.size()), loss), kTol, "discriminator head input"));
}

}  // namespace
}  // namespace electra
