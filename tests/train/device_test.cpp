// lib/train/device.h on this machine: the CPU backend, the checks that run before any GPU is touched,
// GPU sharing between node-local ranks, the launcher's local rank; --device cuda without a usable GPU
// names what is missing (skipped where a GPU is usable).
#include "lib/train/device.h"

#include <gtest/gtest.h>

#include <cstdlib>
#include <optional>
#include <string>
#include <vector>

#include "lib/backend/cpu/onednn_matmul.h"
#include "lib/core/error.h"

namespace electra {
namespace {

std::string error_of(DeviceKind device, const DeviceOptions& options) {
  try {
    make_rank_backend(device, 0, options);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

constexpr DeviceKind kCpu = DeviceKind::kCpu, kCuda = DeviceKind::kCuda;
constexpr CudaPrecision kFp32 = CudaPrecision::kFp32, kTf32 = CudaPrecision::kTf32, kBf16 = CudaPrecision::kBf16,
                        kFp16 = CudaPrecision::kFp16;
constexpr std::optional<StorageType> kAuto = std::nullopt;
constexpr StorageType kFp32Storage = StorageType::kFp32, kBf16Storage = StorageType::kBf16;

template <typename F>
std::string error_in(F&& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

TEST(Device, NamesParseAndPrintBack) {
  for (DeviceKind d : {kCpu, kCuda}) EXPECT_EQ(parse_device_kind(to_string(d), "--device"), d);
  for (CudaPrecision p : {kFp32, kTf32, kBf16, kFp16}) EXPECT_EQ(parse_cuda_precision(to_string(p), "--precision"), p);
  for (StorageType t : {kFp32Storage, kBf16Storage}) EXPECT_EQ(parse_storage_type(to_string(t), "--storage"), t);
  EXPECT_EQ(to_string(kCpu), "cpu");
  EXPECT_EQ(to_string(kCuda), "cuda");
  EXPECT_EQ(to_string(kTf32), "tf32");
  EXPECT_EQ(to_string(kBf16Storage), "bf16");
  EXPECT_EQ(parse_storage_type("auto", "--storage"), kAuto);
  EXPECT_EQ(error_in([] { parse_device_kind("tpu", "--device"); }), "--device must be cpu or cuda, got 'tpu'");
  EXPECT_THROW(parse_device_kind("CPU", "--device"), Error);
  EXPECT_EQ(error_in([] { parse_cuda_precision("fp8", "precision"); }),
            "precision must be fp32, tf32, bf16 or fp16, got 'fp8'");
  EXPECT_EQ(error_in([] { parse_storage_type("fp16", "--storage"); }),
            "--storage must be auto, fp32 or bf16, got 'fp16'");
}

TEST(Device, CpuBackendAndItsChecks) {
  auto cpu = make_rank_backend(kCpu, 3);
  ASSERT_NE(cpu, nullptr);
  EXPECT_EQ(cpu->device(), DeviceKind::kCpu);
  EXPECT_EQ(device_memory_summary(*cpu), "");
  EXPECT_NE(error_of(kCpu, {.precision = kTf32}).find("precision tf32 needs --device cuda"), std::string::npos);
  EXPECT_NE(error_of(kCpu, {.precision = kFp16}).find("precision fp16 needs --device cuda"), std::string::npos);
  // The CPU's bf16 products (with bf16 storage).
  EXPECT_EQ(make_rank_backend(kCpu, 0, {.precision = kBf16})->device(), DeviceKind::kCpu);
  EXPECT_NO_THROW(check_precision(kTf32, kCuda, "--precision"));
  DeviceOptions fraction;
  fraction.memory_fraction = 0.0;
  fraction.arena_size_hint = "key x.y";
  const std::string what = error_of(kCuda, fraction);
  EXPECT_NE(what.find("memory fraction 0 outside (0, 1] (key x.y)"), std::string::npos) << what;
}

TEST(Device, CudaWithoutAGpuNamesWhatIsMissing) {
  const std::string what = error_of(kCuda, {});
  if (what.empty()) GTEST_SKIP() << "a GPU is usable here";
  EXPECT_EQ(what.rfind("--device cuda: ", 0), 0u) << what;
  EXPECT_TRUE(what.find("driver") != std::string::npos || what.find("no CUDA GPU") != std::string::npos ||
              what.find("this build has no CUDA backend") != std::string::npos)
      << what;
}

std::string storage_error(std::optional<StorageType> storage, DeviceKind device, CudaPrecision precision) {
  return error_in([&] { resolve_storage(storage, device, precision, "--storage"); });
}

TEST(Device, StorageFollowsPrecisionAndRefusesContradictions) {
  EXPECT_EQ(resolve_storage(kAuto, kCpu, kFp32, "k"), kFp32Storage);
  EXPECT_EQ(resolve_storage(kAuto, kCuda, kBf16, "k"), kBf16Storage);
  EXPECT_EQ(resolve_storage(kAuto, kCuda, kTf32, "k"), kFp32Storage);
  EXPECT_EQ(resolve_storage(kAuto, kCuda, kFp16, "k"), kFp32Storage);
  EXPECT_EQ(resolve_storage(kFp32Storage, kCuda, kBf16, "k"), kFp32Storage);
  EXPECT_EQ(resolve_storage(kBf16Storage, kCpu, kFp32, "k"), kBf16Storage);  // the CPU reference of the GPU's bf16
  // Precision bf16 on the CPU: bf16 storage where the CPU has bf16 instructions, fp32 where they would be
  // emulated (ONEDNN_MAX_CPU_ISA=AVX512_CORE shows the second on any CPU: BenchSmoke.Bf16WithoutBf16Isa).
  EXPECT_EQ(resolve_storage(kAuto, kCpu, kBf16, "k"), cpu::cpu_bf16_support().native ? kBf16Storage : kFp32Storage);
  EXPECT_EQ(resolve_storage(kBf16Storage, kCpu, kBf16, "k"), kBf16Storage);
  EXPECT_NE(storage_error(kFp32Storage, kCpu, kBf16).find("--storage = fp32 contradicts precision bf16"),
            std::string::npos);
  EXPECT_EQ(resolve_storage(kBf16Storage, kCuda, kBf16, "k"), kBf16Storage);
  const std::string gpu = storage_error(kBf16Storage, kCuda, kTf32);
  EXPECT_NE(gpu.find("--storage = bf16 on a GPU"), std::string::npos) << gpu;
  EXPECT_NE(gpu.find("needs precision bf16, not tf32"), std::string::npos) << gpu;
}

TEST(Device, RankModelOfEachStorageOnTheCpu) {
  auto cpu = make_rank_backend(kCpu, 0);
  PretrainerConfig config = pretrainer_config_from_json(model_preset("tiny", 50));
  const auto fp32 = make_rank_model(config, *cpu, kFp32Storage);
  const auto bf16 = make_rank_model(config, *cpu, kBf16Storage);
  EXPECT_EQ(fp32->storage_name(), "fp32");
  EXPECT_EQ(bf16->storage_name(), "bf16");
  // The same fp32 parameters either way (checkpoints are one format), in the given backend's memory.
  EXPECT_EQ(&bf16->parameter_backend(), cpu.get());
  fp32->init_parameters(3);
  bf16->init_parameters(3);
  EXPECT_EQ(fp32->parameters_to_host(), bf16->parameters_to_host());
}

TEST(Device, RanksSharingAGpu) {
  EXPECT_EQ(ranks_sharing_gpu(0, 1, 1), 1);
  EXPECT_EQ(ranks_sharing_gpu(0, 4, 4), 1);
  EXPECT_EQ(ranks_sharing_gpu(1, 4, 2), 2);  // ranks 1 and 3 on GPU 1
  EXPECT_EQ(ranks_sharing_gpu(0, 3, 2), 2);  // ranks 0 and 2 on GPU 0
  EXPECT_EQ(ranks_sharing_gpu(1, 3, 2), 1);  // rank 1 alone on GPU 1
  EXPECT_EQ(ranks_sharing_gpu(2, 3, 1), 3);
  EXPECT_EQ(ranks_sharing_gpu(0, 0, 0), 1);
}

// The collective count compares host name + PCI bus id: ranks that each see "their" GPU 0 (srun
// --gpus-per-task) share nothing; ranks on one physical GPU split it; ranks without a GPU count 1.
TEST(Device, RanksPerGpuIdComparesPhysicalGpus) {
  EXPECT_EQ(ranks_per_gpu_id({"n1 0000:41:00.0", "n1 0000:42:00.0", "n1 0000:43:00.0"}), (std::vector<int>{1, 1, 1}));
  EXPECT_EQ(ranks_per_gpu_id({"n1 0000:41:00.0", "n1 0000:41:00.0", "n2 0000:41:00.0", "", ""}),
            (std::vector<int>{2, 2, 1, 1, 1}));
  EXPECT_TRUE(ranks_per_gpu_id({}).empty());
}

TEST(Device, LocalRankFromTheLauncher) {
  for (const char* name : {"OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID", "SLURM_LOCALID"}) unsetenv(name);
  EXPECT_EQ(local_rank_from_environment(), 0);
  setenv("SLURM_LOCALID", "3", 1);
  EXPECT_EQ(local_rank_from_environment(), 3);
  setenv("OMPI_COMM_WORLD_LOCAL_RANK", "5", 1);  // Open MPI's variable first
  EXPECT_EQ(local_rank_from_environment(), 5);
  setenv("OMPI_COMM_WORLD_LOCAL_RANK", "x", 1);  // not a number: the next one
  EXPECT_EQ(local_rank_from_environment(), 3);
  for (const char* name : {"OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID", "SLURM_LOCALID"}) unsetenv(name);
}

}  // namespace
}  // namespace electra
