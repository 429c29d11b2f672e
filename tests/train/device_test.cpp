// lib/train/device.h on this machine: the CPU backend, the checks that run before any GPU is touched,
// GPU sharing between node-local ranks, the launcher's local rank; --device cuda without a usable GPU
// names what is missing (skipped where a GPU is usable).
#include "lib/train/device.h"

#include <gtest/gtest.h>

#include <cstdlib>
#include <string>
#include <vector>

#include "lib/backend/cpu/onednn_matmul.h"
#include "lib/core/error.h"

namespace electra {
namespace {

std::string error_of(const std::string& device, const DeviceOptions& options) {
  try {
    make_rank_backend(device, 0, options);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

TEST(Device, CpuBackendAndItsChecks) {
  auto cpu = make_rank_backend("cpu", 3);
  ASSERT_NE(cpu, nullptr);
  EXPECT_EQ(cpu->device(), DeviceKind::kCpu);
  EXPECT_EQ(device_memory_summary(*cpu), "");
  DeviceOptions tf32;
  tf32.precision = "tf32";
  EXPECT_NE(error_of("cpu", tf32).find("precision tf32 needs --device cuda"), std::string::npos);
  DeviceOptions bf16;  // the CPU's bf16 products (with bf16 storage)
  bf16.precision = "bf16";
  EXPECT_EQ(make_rank_backend("cpu", 0, bf16)->device(), DeviceKind::kCpu);
  DeviceOptions fp8;
  fp8.precision = "fp8";
  EXPECT_NE(error_of("cuda", fp8).find("precision must be fp32, tf32, bf16 or fp16, got 'fp8'"), std::string::npos);
  EXPECT_NE(error_of("tpu", {}).find("--device must be cpu or cuda, got 'tpu'"), std::string::npos);
  DeviceOptions fraction;
  fraction.memory_fraction = 0.0;
  fraction.arena_size_hint = "key x.y";
  const std::string what = error_of("cuda", fraction);
  EXPECT_NE(what.find("memory fraction 0 outside (0, 1] (key x.y)"), std::string::npos) << what;
  EXPECT_NO_THROW(check_device_name("cuda", "--device"));
  EXPECT_THROW(check_device_name("CPU", "--device"), Error);
}

TEST(Device, CudaWithoutAGpuNamesWhatIsMissing) {
  std::string what;
  try {
    make_rank_backend("cuda", 0);
  } catch (const Error& e) {
    what = e.what();
  }
  if (what.empty()) GTEST_SKIP() << "a GPU is usable here";
  EXPECT_EQ(what.rfind("--device cuda: ", 0), 0u) << what;
  EXPECT_TRUE(what.find("driver") != std::string::npos || what.find("no CUDA GPU") != std::string::npos ||
              what.find("this build has no CUDA backend") != std::string::npos)
      << what;
}

std::string storage_error(const std::string& storage, const std::string& device, const std::string& precision) {
  try {
    resolve_storage(storage, device, precision, "--storage");
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

TEST(Device, StorageFollowsPrecisionAndRefusesContradictions) {
  EXPECT_EQ(resolve_storage("auto", "cpu", "fp32", "k"), "fp32");
  EXPECT_EQ(resolve_storage("auto", "cuda", "bf16", "k"), "bf16");
  EXPECT_EQ(resolve_storage("auto", "cuda", "tf32", "k"), "fp32");
  EXPECT_EQ(resolve_storage("auto", "cuda", "fp16", "k"), "fp32");
  EXPECT_EQ(resolve_storage("fp32", "cuda", "bf16", "k"), "fp32");
  EXPECT_EQ(resolve_storage("bf16", "cpu", "fp32", "k"), "bf16");  // the CPU reference of the GPU's bf16 mode
  // Precision bf16 on the CPU: bf16 storage where the CPU has bf16 instructions, fp32 where they would be
  // emulated (ONEDNN_MAX_CPU_ISA=AVX512_CORE shows the second on any CPU: BenchSmoke.Bf16WithoutBf16Isa).
  EXPECT_EQ(resolve_storage("auto", "cpu", "bf16", "k"), cpu::cpu_bf16_support().native ? "bf16" : "fp32");
  EXPECT_EQ(resolve_storage("bf16", "cpu", "bf16", "k"), "bf16");
  EXPECT_NE(storage_error("fp32", "cpu", "bf16").find("--storage = fp32 contradicts precision bf16"),
            std::string::npos);
  EXPECT_EQ(resolve_storage("bf16", "cuda", "bf16", "k"), "bf16");
  EXPECT_NE(storage_error("fp16", "cpu", "fp32").find("--storage must be auto, fp32 or bf16, got 'fp16'"),
            std::string::npos);
  const std::string gpu = storage_error("bf16", "cuda", "tf32");
  EXPECT_NE(gpu.find("--storage = bf16 on a GPU"), std::string::npos) << gpu;
  EXPECT_NE(gpu.find("needs precision bf16, not tf32"), std::string::npos) << gpu;
}

TEST(Device, RankModelOfEachStorageOnTheCpu) {
  auto cpu = make_rank_backend("cpu", 0);
  PretrainerConfig config = pretrainer_config_from_json(model_preset("tiny", 50));
  const auto fp32 = make_rank_model(config, *cpu, "fp32");
  const auto bf16 = make_rank_model(config, *cpu, "bf16");
  EXPECT_EQ(fp32->storage_name(), "fp32");
  EXPECT_EQ(bf16->storage_name(), "bf16");
  // The same fp32 parameters either way (checkpoints are one format), in the given backend's memory.
  EXPECT_EQ(&bf16->parameter_backend(), cpu.get());
  fp32->init_parameters(3);
  bf16->init_parameters(3);
  EXPECT_EQ(fp32->parameters_to_host(), bf16->parameters_to_host());
  EXPECT_THROW(make_rank_model(config, *cpu, "fp16"), Error);
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
