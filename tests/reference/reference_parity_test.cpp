// Parity of ElectraPretrainer<T> (CPU backend) with an independent PyTorch implementation
// (tests/reference/electra_reference.py, float64, autograd). Each test builds a small random model and
// batch, runs forward + backward here, writes the parameters and inputs to an HDF5 case file, runs the
// script on it and compares outputs, losses and every parameter gradient with what the script wrote.
//
//  double model: sampled ids, corrupted ids and discriminator labels exactly equal; outputs, losses and
//                gradients within 1e-9 (max-abs-normalised per tensor).
//  float model:  the script takes the C++ samples (--use-sampled-ids; a near-tie could flip an argmax in
//                float) and computes in float64 from the float weights; everything within 1e-4.
//
// Needs ELECTRA_PYTHON (set by CTest to .venv/bin/python) with torch and h5py; skips when it is missing.
#include <gtest/gtest.h>
#include <hdf5.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iostream>
#include <map>
#include <memory>
#include <numbers>
#include <sstream>
#include <string>
#include <type_traits>
#include <vector>

#include "lib/backend/backend.h"
#include "lib/core/batch.h"
#include "lib/core/philox.h"
#include "lib/model/config.h"
#include "lib/model/pretrainer.h"

#ifndef ELECTRA_SOURCE_DIR
#error "ELECTRA_SOURCE_DIR must point at the repository root"
#endif

namespace electra {
namespace {

namespace fs = std::filesystem;

// ---- a minimal HDF5 layer (this test's own; errors are test failures via exceptions) ----

struct H5Id {
  hid_t id = H5I_INVALID_HID;
  herr_t (*close)(hid_t) = nullptr;
  H5Id(hid_t i, herr_t (*c)(hid_t), const std::string& what) : id(i), close(c) {
    if (id < 0) throw std::runtime_error("HDF5: " + what);
  }
  H5Id(const H5Id&) = delete;
  H5Id& operator=(const H5Id&) = delete;
  ~H5Id() {
    if (id >= 0) close(id);
  }
  operator hid_t() const { return id; }  // NOLINT
};

void h5_ok(herr_t status, const std::string& what) {
  if (status < 0) throw std::runtime_error("HDF5: " + what);
}

template <typename E>
hid_t h5_type() {
  if constexpr (std::is_same_v<E, double>) return H5T_NATIVE_DOUBLE;
  if constexpr (std::is_same_v<E, float>) return H5T_NATIVE_FLOAT;
  if constexpr (std::is_same_v<E, int32_t>) return H5T_NATIVE_INT32;
}

template <typename E>
void write_dataset(hid_t file, const std::string& path, const std::vector<hsize_t>& dims, const std::vector<E>& data) {
  size_t n = 1;
  for (hsize_t d : dims) n *= d;
  if (n != data.size()) throw std::runtime_error("write_dataset " + path + ": size mismatch");
  H5Id lcpl(H5Pcreate(H5P_LINK_CREATE), H5Pclose, "link property list");
  h5_ok(H5Pset_create_intermediate_group(lcpl, 1), "intermediate groups");
  H5Id space(H5Screate_simple(static_cast<int>(dims.size()), dims.data(), nullptr), H5Sclose, "dataspace " + path);
  H5Id set(H5Dcreate2(file, path.c_str(), h5_type<E>(), space, lcpl, H5P_DEFAULT, H5P_DEFAULT), H5Dclose,
           "create " + path);
  h5_ok(H5Dwrite(set, h5_type<E>(), H5S_ALL, H5S_ALL, H5P_DEFAULT, data.data()), "write " + path);
}

void write_string_attribute(hid_t object, const char* name, const std::string& value) {
  H5Id type(H5Tcopy(H5T_C_S1), H5Tclose, "string type");
  h5_ok(H5Tset_size(type, H5T_VARIABLE), "string size");
  H5Id space(H5Screate(H5S_SCALAR), H5Sclose, "scalar space");
  H5Id attr(H5Acreate2(object, name, type, space, H5P_DEFAULT, H5P_DEFAULT), H5Aclose, name);
  const char* text = value.c_str();
  h5_ok(H5Awrite(attr, type, &text), name);
}

template <typename E>
void write_scalar_attribute(hid_t object, const char* name, E value) {
  hid_t type = std::is_same_v<E, uint64_t> ? H5T_NATIVE_UINT64 : H5T_NATIVE_DOUBLE;
  H5Id space(H5Screate(H5S_SCALAR), H5Sclose, "scalar space");
  H5Id attr(H5Acreate2(object, name, type, space, H5P_DEFAULT, H5P_DEFAULT), H5Aclose, name);
  h5_ok(H5Awrite(attr, type, &value), name);
}

double read_double_attribute(hid_t object, const char* name) {
  H5Id attr(H5Aopen(object, name, H5P_DEFAULT), H5Aclose, std::string("attribute ") + name);
  double value = 0;
  h5_ok(H5Aread(attr, H5T_NATIVE_DOUBLE, &value), name);
  return value;
}

// Reads a dataset converted to E; its dimensions go to dims.
template <typename E>
std::vector<E> read_dataset(hid_t file, const std::string& path, std::vector<hsize_t>* dims = nullptr) {
  H5Id set(H5Dopen2(file, path.c_str(), H5P_DEFAULT), H5Dclose, "open " + path);
  H5Id space(H5Dget_space(set), H5Sclose, "space of " + path);
  const int rank = H5Sget_simple_extent_ndims(space);
  std::vector<hsize_t> d(static_cast<size_t>(std::max(rank, 0)));
  H5Sget_simple_extent_dims(space, d.data(), nullptr);
  size_t n = 1;
  for (hsize_t x : d) n *= x;
  std::vector<E> out(n);
  if (n > 0) h5_ok(H5Dread(set, h5_type<E>(), H5S_ALL, H5S_ALL, H5P_DEFAULT, out.data()), "read " + path);
  if (dims) *dims = d;
  return out;
}

// ---- the reference environment ----

std::string python() {
  const char* p = std::getenv("ELECTRA_PYTHON");
  return p ? std::string(p) : std::string();
}

// Empty when usable, else why not.
std::string python_unavailable() {
  static const std::string reason = [] {
    const std::string py = python();
    if (py.empty()) return std::string("ELECTRA_PYTHON is not set (CTest sets it to .venv/bin/python)");
    const std::string cmd = "\"" + py + "\" -c \"import torch, h5py\" > /dev/null 2>&1";
    if (std::system(cmd.c_str()) != 0) {
      return "ELECTRA_PYTHON=" + py + " cannot import torch and h5py (run jobs/setup.sh)";
    }
    return std::string();
  }();
  return reason;
}

std::string read_text(const fs::path& path) {
  std::ifstream in(path);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

// ---- the case ----

struct CaseSpec {
  std::string name;
  std::string output_type = "logits";
  bool disallow_correct = false;
  bool next_sentence = true;
  bool global_normalizers = false;
  double temperature = 1.0;
  uint64_t global_row_offset = 0;
  uint64_t seed = 20240611;
  uint64_t step = 7;
  // For the sensitivity check: the case file gets this parameter element changed by `perturb_by`.
  std::string perturb_name;
  double perturb_by = 0.0;
};

constexpr int kB = 3, kS = 16, kP = 4;

nlohmann::json model_section(const CaseSpec& spec) {
  return nlohmann::json{
      {"vocab_size", 50},
      {"embedding_size", 16},
      {"hidden_size", 24},
      {"num_layers", 2},
      {"num_heads", 2},
      {"intermediate_size", 40},
      {"max_position_embeddings", 20},
      {"type_vocab_size", 2},
      {"hidden_dropout", 0.1},  // must not matter: the forward runs with training = false
      {"attention_dropout", 0.1},
      {"generator", {{"hidden_size", 12}, {"num_layers", 2}, {"num_heads", 1}, {"intermediate_size", 20}}},
      {"num_classes", 2},
      {"num_token_predictions", kP},
      {"mlm_activation", "gelu"},
      {"output_type", spec.output_type},
      {"disallow_correct", spec.disallow_correct},
      {"temperature", spec.temperature},
      {"disc_loss_weight", 50.0},
  };
}

// A standard normal from two Philox uniforms (Box-Muller).
double normal(PhiloxSequence& rng) {
  const double u1 = rng.next_uniform_open(), u2 = rng.next_uniform_open();
  return std::sqrt(-2.0 * std::log(u1)) * std::cos(2.0 * std::numbers::pi * u2);
}

// Random parameters with non-trivial LayerNorms and biases, so every gradient path is exercised.
template <typename T>
std::vector<T> random_parameters(const ParameterLayout& layout) {
  std::vector<T> host(layout.total_size());
  PhiloxSequence rng(99, RandomPurpose::kTest, 0, 0);
  for (const ParameterSlice& view : layout.slices()) {
    const bool is_gamma = view.name.ends_with("LayerNorm.weight");
    const bool is_bias = view.name.ends_with(".bias");
    const bool is_table = view.name.ends_with("_embeddings.weight");
    const double scale = is_gamma ? 0.2 : is_bias ? 0.2 : is_table ? 0.5 : 0.25;
    for (size_t i = 0; i < view.size; ++i) {
      host[view.offset + i] = static_cast<T>((is_gamma ? 1.0 : 0.0) + scale * normal(rng));
    }
  }
  return host;
}

// Three rows of lengths 16, 11 and 7 (padding), masked positions inside each row (row b has b padded
// prediction slots), [MASK] = 4 at most masked positions and one kept original token per row.
Batch make_batch(const CaseSpec& spec) {
  Batch b;
  b.rows = kB;
  b.seq_length = kS;
  b.num_predictions = kP;
  b.input_word_ids.assign(kB * kS, 0);
  b.input_mask.assign(kB * kS, 0);
  b.input_type_ids.assign(kB * kS, 0);
  b.masked_lm_positions.assign(kB * kP, 0);
  b.masked_lm_ids.assign(kB * kP, 0);
  b.masked_lm_weights.assign(kB * kP, 0.0f);
  const int lengths[kB] = {16, 11, 7};
  PhiloxSequence rng(5, RandomPurpose::kTest, 1, 0);
  for (int r = 0; r < kB; ++r) {
    const int n = lengths[r];
    for (int s = 0; s < n; ++s) {
      b.input_word_ids[r * kS + s] = s == 0 ? 1 : 5 + static_cast<int>(rng.next_below(45));
      b.input_mask[r * kS + s] = 1;
      b.input_type_ids[r * kS + s] = s >= n / 2 ? 1 : 0;
    }
    // k distinct positions in [1, n), ascending.
    const int k = kP - r;
    std::vector<int> candidates;
    for (int s = 1; s < n; ++s) candidates.push_back(s);
    for (int i = 0; i < k; ++i) {
      const int j = i + static_cast<int>(rng.next_below(static_cast<uint32_t>(candidates.size() - i)));
      std::swap(candidates[i], candidates[j]);
    }
    std::sort(candidates.begin(), candidates.begin() + k);
    for (int i = 0; i < k; ++i) {
      const int pos = candidates[i];
      b.masked_lm_positions[r * kP + i] = pos;
      b.masked_lm_ids[r * kP + i] = b.input_word_ids[r * kS + pos];
      b.masked_lm_weights[r * kP + i] = 1.0f;
      if (i + 1 < k) b.input_word_ids[r * kS + pos] = 4;  // [MASK]; the last one keeps its token
    }
  }
  if (spec.next_sentence) b.next_sentence_labels = {0, 1, 1};
  b.global_row_offset = spec.global_row_offset;
  b.global_batch_rows = static_cast<int>(spec.global_row_offset) + kB + (spec.global_normalizers ? 3 : 0);
  for (int r = 0; r < kB; ++r) b.example_index.push_back(spec.global_row_offset + r);
  return b;
}

struct Comparison {
  std::map<std::string, double> errors;  // max |got - want| / max |want| per quantity
  std::vector<std::string> mismatches;   // exact comparisons that failed
  int own_sample_mismatches = 0;         // the script's own samples vs the C++ (float cases)
  int replaced_tokens = 0;               // disc_label == 1 in the C++ output
  double worst_gradient_error = 0.0;
};

// max |got - want| / max |want|; when want is all zero, got must be exactly zero.
template <typename G>
double normalised_error(const std::vector<G>& got, const std::vector<double>& want) {
  if (got.size() != want.size()) return INFINITY;
  double diff = 0.0, scale = 0.0;
  for (size_t i = 0; i < got.size(); ++i) {
    const double g = static_cast<double>(got[i]);
    if (!std::isfinite(g)) return INFINITY;
    diff = std::max(diff, std::abs(g - want[i]));
    scale = std::max(scale, std::abs(want[i]));
  }
  if (scale == 0.0) return diff == 0.0 ? 0.0 : INFINITY;
  return diff / scale;
}

double scalar_error(double got, double want) {
  if (!std::isfinite(got)) return INFINITY;
  if (want == 0.0) return got == 0.0 ? 0.0 : INFINITY;
  return std::abs(got - want) / std::abs(want);
}

// Runs the model and the script on one case. Returns false (with a GTest failure or skip recorded)
// when the comparison could not be made.
template <typename T>
bool run_case(const CaseSpec& spec, Comparison& result) {
  const bool is_float = std::is_same_v<T, float>;
  const PretrainerConfig config = pretrainer_config_from_json(model_section(spec));
  auto backend = make_cpu_backend<T>();
  ElectraPretrainer<T> model(config, *backend);
  std::vector<T> params = random_parameters<T>(model.layout());
  model.parameters_from_host(params);
  const Batch batch = make_batch(spec);

  StepContext context;
  context.seed = spec.seed;
  context.step = spec.step;
  context.training = false;
  GlobalNormalizers global;
  if (spec.global_normalizers) {
    // As if this slice were part of a larger global batch (other rows elsewhere).
    double weights = 0, tokens = 0;
    for (float w : batch.masked_lm_weights) weights += w;
    for (int32_t m : batch.input_mask) tokens += m;
    global.masked_lm_weight_sum = weights + 5.0;
    global.input_mask_count = tokens + 23.0;
    global.examples = kB + 3.0;
    context.global = global;
  }
  const PretrainerOutputs<T> out = model.forward(batch, context);  // a copy: backward may reuse buffers
  model.zero_gradients();
  model.backward();
  const std::vector<T> grads = model.gradients_to_host();

  // Case file.
  const fs::path dir = fs::temp_directory_path() / ("electra_parity_" + spec.name + "_" + std::to_string(getpid()));
  fs::create_directories(dir);
  const fs::path case_path = dir / "case.h5", expected_path = dir / "expected.h5", log_path = dir / "script.log";
  {
    H5Id file(H5Fcreate(case_path.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT), H5Fclose, case_path.string());
    write_string_attribute(file, "config", to_json(config).dump());
    write_scalar_attribute<uint64_t>(file, "seed", spec.seed);
    write_scalar_attribute<uint64_t>(file, "step", spec.step);
    write_scalar_attribute<uint64_t>(file, "global_row_offset", spec.global_row_offset);
    if (spec.global_normalizers) {
      write_scalar_attribute<double>(file, "masked_lm_weight_sum", global.masked_lm_weight_sum);
      write_scalar_attribute<double>(file, "input_mask_count", global.input_mask_count);
      write_scalar_attribute<double>(file, "examples", global.examples);
    }
    bool perturbed = false;
    for (const ParameterSlice& view : model.layout().slices()) {
      std::vector<T> values(params.begin() + view.offset, params.begin() + view.offset + view.size);
      if (view.name == spec.perturb_name) {
        values[0] += static_cast<T>(spec.perturb_by);
        perturbed = true;
      }
      std::vector<hsize_t> dims(view.shape.begin(), view.shape.end());
      write_dataset(file, "params/" + view.name, dims, values);
    }
    if (!spec.perturb_name.empty() && !perturbed) {
      ADD_FAILURE() << "no parameter named " << spec.perturb_name;
      return false;
    }
    const std::vector<hsize_t> bs = {kB, kS}, bp = {kB, kP};
    write_dataset(file, "inputs/input_word_ids", bs, batch.input_word_ids);
    write_dataset(file, "inputs/input_mask", bs, batch.input_mask);
    write_dataset(file, "inputs/input_type_ids", bs, batch.input_type_ids);
    write_dataset(file, "inputs/masked_lm_positions", bp, batch.masked_lm_positions);
    write_dataset(file, "inputs/masked_lm_ids", bp, batch.masked_lm_ids);
    write_dataset(file, "inputs/masked_lm_weights", bp, batch.masked_lm_weights);
    if (spec.next_sentence) write_dataset(file, "inputs/next_sentence_labels", {kB}, batch.next_sentence_labels);
    write_dataset(file, "inputs/sampled_ids", bp, out.sampled_ids);
  }

  const std::string script = std::string(ELECTRA_SOURCE_DIR) + "/tests/reference/electra_reference.py";
  const std::string cmd = "\"" + python() + "\" \"" + script + "\" \"" + case_path.string() + "\" \"" +
                          expected_path.string() + "\"" + (is_float ? " --use-sampled-ids" : "") + " > \"" +
                          log_path.string() + "\" 2>&1";
  if (std::system(cmd.c_str()) != 0) {
    ADD_FAILURE() << "the reference script failed:\n" << cmd << "\n" << read_text(log_path);
    return false;
  }
  std::cout << read_text(log_path);

  H5Id file(H5Fopen(expected_path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT), H5Fclose, expected_path.string());
  auto exact = [&](const char* what, const std::vector<int32_t>& got) {
    const std::vector<int32_t> want = read_dataset<int32_t>(file, std::string("outputs/") + what);
    if (got != want) {
      std::ostringstream s;
      s << what << " differ:\n  C++:    ";
      for (int32_t x : got) s << x << ' ';
      s << "\n  PyTorch: ";
      for (int32_t x : want) s << x << ' ';
      result.mismatches.push_back(s.str());
    }
  };
  exact("sampled_ids", out.sampled_ids);
  exact("corrupted_ids", out.corrupted_ids);
  exact("disc_label", out.disc_label);
  for (int32_t label : out.disc_label) result.replaced_tokens += label != 0;
  {
    const std::vector<int32_t> own = read_dataset<int32_t>(file, "own_sampled_ids");
    for (size_t i = 0; i < own.size() && i < out.sampled_ids.size(); ++i) {
      result.own_sample_mismatches += own[i] != out.sampled_ids[i];
    }
  }
  result.errors["lm_outputs"] = normalised_error(out.lm_outputs, read_dataset<double>(file, "outputs/lm_outputs"));
  result.errors["sentence_outputs"] =
      normalised_error(out.sentence_outputs, read_dataset<double>(file, "outputs/sentence_outputs"));
  result.errors["disc_logits"] = normalised_error(out.disc_logits, read_dataset<double>(file, "outputs/disc_logits"));
  result.errors["loss:total"] = scalar_error(out.losses.total_loss, read_double_attribute(file, "total_loss"));
  result.errors["loss:mlm"] = scalar_error(out.losses.mlm_loss, read_double_attribute(file, "mlm_loss"));
  result.errors["loss:disc"] = scalar_error(out.losses.disc_loss, read_double_attribute(file, "disc_loss"));
  result.errors["loss:sentence"] = scalar_error(out.losses.sentence_loss, read_double_attribute(file, "sentence_loss"));
  std::map<std::string, std::vector<double>> want_grads;
  for (const ParameterSlice& view : model.layout().slices()) {
    std::vector<hsize_t> dims;
    want_grads[view.name] = read_dataset<double>(file, "grads/" + view.name, &dims);
    if (!std::equal(dims.begin(), dims.end(), view.shape.begin(), view.shape.end())) {
      result.mismatches.push_back("gradient " + view.name + " has another shape in the reference");
      want_grads.erase(view.name);
    }
  }
  for (const ParameterSlice& view : model.layout().slices()) {
    if (!want_grads.count(view.name)) continue;
    const std::vector<double>& want = want_grads[view.name];
    const std::vector<T> got(grads.begin() + view.offset, grads.begin() + view.offset + view.size);
    double e = 0.0;
    const std::string key_bias = "attention.self.key.bias";
    if (view.name.ends_with(key_bias)) {
      // Exactly zero in exact arithmetic (a key bias adds the same q.b to every score of a query, and
      // softmax ignores shifts), so both sides hold rounding noise: measure it against the scale of the
      // same layer's key weight gradient.
      const std::string weight = view.name.substr(0, view.name.size() - 4) + "weight";
      double noise = 0.0, scale = 0.0;
      for (size_t i = 0; i < got.size(); ++i) noise = std::max({noise, std::abs(double(got[i])), std::abs(want[i])});
      for (double w : want_grads.at(weight)) scale = std::max(scale, std::abs(w));
      e = scale > 0.0 && std::isfinite(noise) ? noise / scale : INFINITY;
    } else {
      e = normalised_error(got, want);
    }
    result.errors["grad:" + view.name] = e;
    result.worst_gradient_error = std::max(result.worst_gradient_error, e);
  }
  // The number of gradient datasets must equal the number of parameters (no tensor left out).
  {
    H5Id grads_group(H5Gopen2(file, "grads", H5P_DEFAULT), H5Gclose, "grads");
    H5G_info_t info;
    h5_ok(H5Gget_info(grads_group, &info), "grads info");
    if (info.nlinks != model.layout().slices().size()) {
      result.mismatches.push_back("the reference has " + std::to_string(info.nlinks) + " gradients, the layout " +
                                  std::to_string(model.layout().slices().size()) + " parameters");
    }
  }
  // Worst five, for the log.
  std::vector<std::pair<double, std::string>> worst;
  for (const auto& [name, e] : result.errors) worst.emplace_back(e, name);
  std::sort(worst.rbegin(), worst.rend());
  std::cout << spec.name << ": largest errors";
  for (size_t i = 0; i < worst.size() && i < 5; ++i) std::cout << "  " << worst[i].second << " " << worst[i].first;
  std::cout << "; own samples of the script differ at " << result.own_sample_mismatches << " of "
            << out.sampled_ids.size() << "\n";
  fs::remove_all(dir);
  return true;
}

template <typename T>
void expect_parity(const CaseSpec& spec) {
  const std::string why = python_unavailable();
  if (!why.empty()) GTEST_SKIP() << why;
  const double tolerance = std::is_same_v<T, double> ? 1e-9 : 1e-4;
  Comparison result;
  if (!run_case<T>(spec, result)) return;
  for (const std::string& m : result.mismatches) ADD_FAILURE() << m;
  // The case must exercise the replaced-token path.
  EXPECT_GT(result.replaced_tokens, 0) << "no token was replaced: the discriminator labels are all 0";
  for (const auto& [name, e] : result.errors) {
    EXPECT_LE(e, tolerance) << name << " differs from the PyTorch reference (max-abs-normalised error)";
  }
  if (std::is_same_v<T, double>) {
    EXPECT_EQ(result.own_sample_mismatches, 0);
  }
}

TEST(ReferenceParity, DoubleLogitsWithNextSentence) {
  CaseSpec spec;
  spec.name = "double_logits_nsp";
  expect_parity<double>(spec);
}

TEST(ReferenceParity, DoublePredictionsDisallowCorrectWithoutNextSentence) {
  CaseSpec spec;
  spec.name = "double_predictions_disallow";
  spec.output_type = "predictions";
  spec.disallow_correct = true;
  spec.next_sentence = false;
  spec.step = 12;
  expect_parity<double>(spec);
}

TEST(ReferenceParity, DoubleGlobalNormalizersRowOffsetTemperature) {
  CaseSpec spec;
  spec.name = "double_global";
  spec.disallow_correct = true;
  spec.global_normalizers = true;
  spec.global_row_offset = 6;
  spec.temperature = 0.8;
  spec.seed = 0x1234567890abcdefULL;
  expect_parity<double>(spec);
}

TEST(ReferenceParity, FloatLogitsDisallowCorrectWithNextSentence) {
  CaseSpec spec;
  spec.name = "float_logits_disallow_nsp";
  spec.disallow_correct = true;
  expect_parity<float>(spec);
}

TEST(ReferenceParity, FloatPredictionsWithoutNextSentence) {
  CaseSpec spec;
  spec.name = "float_predictions";
  spec.output_type = "predictions";
  spec.next_sentence = false;
  spec.step = 3;
  expect_parity<float>(spec);
}

// The comparison must be able to fail: a 1e-6 change of one LayerNorm weight in the case file has to show
// up in the loss and the gradients far above the double tolerance.
TEST(ReferenceParity, DetectsAPerturbedParameter) {
  const std::string why = python_unavailable();
  if (!why.empty()) GTEST_SKIP() << why;
  CaseSpec spec;
  spec.name = "double_perturbed";
  spec.perturb_name = "electra.encoder.layer.1.output.LayerNorm.weight";
  spec.perturb_by = 1e-6;
  Comparison result;
  if (!run_case<double>(spec, result)) return;
  EXPECT_GT(result.errors["loss:total"], 1e-12);
  EXPECT_GT(result.errors["grad:electra.encoder.layer.1.output.LayerNorm.weight"], 1e-8);
  EXPECT_GT(result.worst_gradient_error, 1e-8);
}

}  // namespace
}  // namespace electra
