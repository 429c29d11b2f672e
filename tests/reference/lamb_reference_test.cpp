// Lamb<float> and Lamb<double> (lib/optim/lamb.h, the CPU backend) against an independent PyTorch LAMB
// (tests/reference/lamb_reference.py: NVIDIA's ELECTRA recipe, tfa.optimizers.LAMB with their exclusion
// lists applied to the tensor NAMES, global-norm clipping, in float64) over a few steps of a real pretrainer
// layout, with a tensor that starts at zero (||w|| = 0) and one that stays at zero (both norms 0).
//
//  float:  parameters and moments within 2e-6 of the tensor's largest magnitude (float rounding over 5
//          steps; 3e-7 seen).
//  double: within 1e-12 (5e-16 seen; the hyperparameters are float in both, as TensorFlow holds them).
//
// Needs ELECTRA_PYTHON (set by CTest to .venv/bin/python) with torch and numpy; skips when it is missing.
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <tuple>
#include <vector>

#include "lib/core/philox.h"
#include "lib/model/config.h"
#include "lib/model/device_buffer.h"
#include "lib/model/parameter_layout.h"
#include "lib/optim/lamb.h"

#ifndef ELECTRA_SOURCE_DIR
#error "ELECTRA_SOURCE_DIR must point at the repository root"
#endif

namespace electra {
namespace {

namespace fs = std::filesystem;

std::string python_unavailable() {
  const char* py = std::getenv("ELECTRA_PYTHON");
  if (py == nullptr || *py == '\0') return "ELECTRA_PYTHON is not set (CTest sets it to .venv/bin/python)";
  const std::string cmd = "\"" + std::string(py) + "\" -c \"import torch, numpy\" > /dev/null 2>&1";
  if (std::system(cmd.c_str()) != 0) return "ELECTRA_PYTHON=" + std::string(py) + " cannot import torch and numpy";
  return "";
}

template <typename E>
void write_raw(const fs::path& path, const std::vector<E>& data) {
  std::ofstream out(path, std::ios::binary);
  out.write(reinterpret_cast<const char*>(data.data()), static_cast<std::streamsize>(data.size() * sizeof(E)));
  ASSERT_TRUE(out.good()) << path;
}

std::vector<double> read_f64(const fs::path& path, size_t n) {
  std::vector<double> out(n);
  std::ifstream in(path, std::ios::binary);
  in.read(reinterpret_cast<char*>(out.data()), static_cast<std::streamsize>(n * sizeof(double)));
  if (!in.good()) ADD_FAILURE() << "cannot read " << n << " doubles from " << path;
  return out;
}

template <typename T>
void compare_with_pytorch(double tolerance) {
  const std::string why = python_unavailable();
  if (!why.empty()) GTEST_SKIP() << why;
  // The tiny preset with one layer per network: every kind of tensor ELECTRA has (embeddings, projections,
  // attention, LayerNorms, heads), ~100 of them.
  PretrainerConfig pc = pretrainer_config_from_json(model_preset("tiny", 40));
  pc.discriminator.num_layers = pc.generator.num_layers = 1;
  const ParameterLayout layout = build_pretrainer_layout(pc).layout;
  const size_t n = layout.total_size();
  const int steps = 5;

  OptimizerConfig c;
  c.name = "lamb";
  c.lr = 6e-3;  // NVIDIA's phase-1 lr and betas
  c.beta1 = 0.878;
  c.beta2 = 0.974;
  c.warmup_steps = 2;
  c.total_steps = 8;
  c.decay_power = 0.5;
  c.weight_decay = 0.01;
  c.clip_norm = 1.0;

  // Parameters ~ U(-0.1, 0.1) (LayerNorm gammas around 1), gradients whose global norm crosses clip_norm:
  // steps 0 and 3 are not clipped, the others are.
  std::vector<float> params(n), grads(static_cast<size_t>(steps) * n);
  PhiloxStream random(3, RandomPurpose::kTest, 0, 0);
  for (size_t i = 0; i < n; ++i) params[i] = static_cast<float>(-0.1 + 0.2 * random.uniform(i));
  const double scales[steps] = {0.1, 3.0, 1.0, 0.05, 10.0};
  for (int s = 0; s < steps; ++s) {
    const double scale = scales[s] / std::sqrt(static_cast<double>(n) / 3.0);
    for (size_t i = 0; i < n; ++i)
      grads[s * n + i] = static_cast<float>(scale * (2 * random.uniform(n * (s + 1) + i) - 1));
  }
  std::string zero_name, still_name;
  for (const ParameterSlice& v : layout.slices()) {
    if (v.name.find("LayerNorm.weight") != std::string::npos) {
      for (size_t i = 0; i < v.size; ++i) params[v.offset + i] += 1.0f;
    }
    if (!v.weight_decay) continue;
    if (zero_name.empty() && v.name.find("attention.self.key.weight") != std::string::npos) {
      zero_name = v.name;  // starts at zero: ||w|| = 0 on the first step
      std::fill(params.begin() + v.offset, params.begin() + v.offset + v.size, 0.0f);
    } else if (still_name.empty() && v.name.find("attention.self.value.weight") != std::string::npos) {
      still_name = v.name;  // zero and never a gradient: both norms 0 every step
      std::fill(params.begin() + v.offset, params.begin() + v.offset + v.size, 0.0f);
      for (int s = 0; s < steps; ++s)
        std::fill(grads.begin() + s * n + v.offset, grads.begin() + s * n + v.offset + v.size, 0.0f);
    }
  }
  ASSERT_FALSE(zero_name.empty());
  ASSERT_FALSE(still_name.empty());

  // electra-mpi.
  auto be = make_cpu_backend<T>();
  Lamb<T> lamb(c, layout, *be);
  DeviceBuffer<T> d_p(*be, n), d_g(*be, n);
  std::vector<T> host(params.begin(), params.end());
  be->copy_from_host(d_p.data(), host.data(), n);
  std::vector<double> lrs, factors;
  for (int s = 0; s < steps; ++s) {
    host.assign(grads.begin() + s * n, grads.begin() + (s + 1) * n);
    be->copy_from_host(d_g.data(), host.data(), n);
    const OptimizerStepStats stats = lamb.step(d_p.data(), d_g.data(), s);
    lrs.push_back(static_cast<float>(stats.lr));
    factors.push_back(static_cast<float>(stats.clip_factor));
  }
  std::vector<T> p(n), m(n), v(n);
  be->copy_to_host(p.data(), d_p.data(), n);
  be->copy_to_host(m.data(), lamb.first_moment(), n);
  be->copy_to_host(v.data(), lamb.second_moment(), n);

  // PyTorch.
  const fs::path dir =
      fs::path(::testing::TempDir()) / ("lamb_reference_" + std::to_string(sizeof(T)) + "_" + std::to_string(getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir);
  nlohmann::json tensors = nlohmann::json::array();
  for (const ParameterSlice& view : layout.slices()) {
    tensors.push_back({{"name", view.name}, {"offset", view.offset}, {"size", view.size}});
  }
  const nlohmann::json spec = {{"n", n},
                               {"steps", steps},
                               {"lr", c.lr},
                               {"warmup_steps", c.warmup_steps},
                               {"total_steps", c.total_steps},
                               {"decay_power", c.decay_power},
                               {"beta1", c.beta1},
                               {"beta2", c.beta2},
                               {"eps", c.eps},
                               {"weight_decay", c.weight_decay},
                               {"clip_norm", c.clip_norm},
                               {"tensors", tensors}};
  std::ofstream(dir / "case.json") << spec.dump();
  ASSERT_NO_FATAL_FAILURE(write_raw(dir / "params.f32", params));
  ASSERT_NO_FATAL_FAILURE(write_raw(dir / "grads.f32", grads));
  const std::string script = std::string(ELECTRA_SOURCE_DIR) + "/tests/reference/lamb_reference.py";
  const std::string cmd = "\"" + std::string(std::getenv("ELECTRA_PYTHON")) + "\" \"" + script + "\" \"" +
                          dir.string() + "\" > \"" + (dir / "script.log").string() + "\" 2>&1";
  ASSERT_EQ(std::system(cmd.c_str()), 0) << "lamb_reference.py failed; see " << (dir / "script.log").string();
  const std::vector<double> ref_p = read_f64(dir / "out_params.f64", n), ref_m = read_f64(dir / "out_m.f64", n),
                            ref_v = read_f64(dir / "out_v.f64", n);
  nlohmann::json out;
  std::ifstream(dir / "out.json") >> out;

  // The schedule and clipping agree, and the case exercises what it should.
  for (int s = 0; s < steps; ++s) {
    EXPECT_EQ(out["lr"][s].get<double>(), lrs[s]) << "step " << s;
    EXPECT_NEAR(out["clip_factor"][s].get<double>(), factors[s], 1e-6 * factors[s]) << "step " << s;
  }
  EXPECT_EQ(factors[0], 1.0);
  EXPECT_LT(factors[1], 1.0);
  int adapted = 0;
  for (double r : out["trust_ratio"][2]) adapted += r != 1.0;
  EXPECT_GT(adapted, 10) << "few tensors had a trust ratio other than 1";

  // Parameters and moments, tensor by tensor: the largest error relative to the tensor's largest magnitude.
  double worst = 0;
  std::string where;
  for (const ParameterSlice& view : layout.slices()) {
    for (const auto& [ours, theirs, what] :
         {std::tuple{&p, &ref_p, "params"}, std::tuple{&m, &ref_m, "m"}, std::tuple{&v, &ref_v, "v"}}) {
      double scale = 0;
      for (size_t i = 0; i < view.size; ++i) scale = std::max(scale, std::abs((*theirs)[view.offset + i]));
      for (size_t i = 0; i < view.size; ++i) {
        const size_t j = view.offset + i;
        const double error = std::abs(static_cast<double>((*ours)[j]) - (*theirs)[j]) / std::max(scale, 1e-30);
        if (!(error <= worst)) {
          worst = error;
          where = std::string(what) + " of " + view.name + " [" + std::to_string(i) + "]";
        }
      }
    }
  }
  EXPECT_LE(worst, tolerance) << "largest relative error " << worst << " at " << where;
  // Both norms zero: it never moved.
  const ParameterSlice& still = layout.find(still_name);
  for (size_t i = 0; i < still.size; ++i) EXPECT_EQ(p[still.offset + i], T(0)) << still_name;
  fs::remove_all(dir);
}

TEST(LambReference, FloatMatchesPyTorch) { compare_with_pytorch<float>(2e-6); }
TEST(LambReference, DoubleMatchesPyTorch) { compare_with_pytorch<double>(1e-12); }

}  // namespace
}  // namespace electra
