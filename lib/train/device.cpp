#include "lib/train/device.h"

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <map>
#include <sstream>

#if defined(ELECTRA_HAVE_CUDA)
#include "lib/backend/cuda/arena.h"
#include "lib/backend/cuda/cuda_backend.h"
#endif
#include "lib/backend/cpu/onednn_matmul.h"
#include "lib/core/error.h"
#include "lib/core/host.h"
#include "lib/core/log.h"

namespace electra {

bool cuda_backend_built() {
#if defined(ELECTRA_HAVE_CUDA)
  return true;
#else
  return false;
#endif
}

int ranks_sharing_gpu(int local_rank, int local_size, int gpus) {
  if (gpus <= 0 || local_size <= 0) return 1;
  const int gpu = std::max(0, local_rank) % gpus;
  int sharing = 0;
  for (int r = 0; r < local_size; ++r) sharing += r % gpus == gpu ? 1 : 0;
  return std::max(1, sharing);
}

void check_precision(CudaPrecision precision, DeviceKind device, const std::string& what) {
  if (device == DeviceKind::kCpu && precision != CudaPrecision::kFp32 && precision != CudaPrecision::kBf16) {
    fail(what, " ", to_string(precision), " needs --device cuda (the CPU computes in fp32, or bf16 with bf16 storage)");
  }
}

std::unique_ptr<Backend<float>> make_rank_backend(DeviceKind device, int local_rank, const DeviceOptions& options,
                                                  int local_size) {
  check_precision(options.precision, device, "precision");
  // Checked on the CPU too, where it is unused: a bad value is refused whatever the device.
  if (options.arena_bytes == 0 && !(options.memory_fraction > 0.0 && options.memory_fraction <= 1.0)) {
    fail("memory fraction ", options.memory_fraction, " outside (0, 1] (", options.arena_size_hint, ")");
  }
  // The CPU's bf16 products are its bf16 storage backend's (make_bf16_backend); the float backend is fp32.
  if (device == DeviceKind::kCpu) return make_cpu_backend<float>();
#if defined(ELECTRA_HAVE_CUDA)
  const int gpus = cuda_device_count();
  if (gpus == 0) fail("--device cuda: ", cuda_unavailable_reason());
  CudaBackendOptions cuda;
  cuda.precision = options.precision;
  cuda.arena_bytes = options.arena_bytes;
  const int sharing = options.ranks_on_gpu > 0 ? options.ranks_on_gpu : ranks_sharing_gpu(local_rank, local_size, gpus);
  cuda.memory_fraction = options.memory_fraction / sharing;
  cuda.arena_size_hint = options.arena_size_hint;
  return make_cuda_backend(std::max(0, local_rank) % gpus, cuda);
#else
  (void)local_rank, (void)local_size;
  fail("--device cuda: this build has no CUDA backend (configure with -DELECTRA_CUDA=ON where nvcc is installed)");
#endif
}

StorageType resolve_storage(std::optional<StorageType> storage, DeviceKind device, CudaPrecision precision,
                            const std::string& what) {
  const bool bf16_precision = precision == CudaPrecision::kBf16;
  const StorageType resolved = storage.value_or(bf16_precision ? StorageType::kBf16 : StorageType::kFp32);
  if (resolved == StorageType::kBf16 && device == DeviceKind::kCuda && !bf16_precision) {
    fail(what, " = bf16 on a GPU computes its GEMMs on bf16 tensor cores: it needs precision bf16, not ",
         to_string(precision), " (or storage fp32)");
  }
  if (!storage && resolved == StorageType::kBf16 && device == DeviceKind::kCpu && !cpu::cpu_bf16_support().native) {
    // Emulated bf16 products are slower than fp32 ones: precision bf16 asks for speed, so it gets fp32.
    static bool said = false;
    if (!said) {
      said = true;
      ELECTRA_LOG(warning) << "precision bf16 on the CPU: " << cpu::cpu_bf16_support().summary()
                           << "; computing in fp32 instead (set " << what << "=bf16 to store bf16 anyway)";
    }
    return StorageType::kFp32;
  }
  if (resolved == StorageType::kFp32 && device == DeviceKind::kCpu && bf16_precision) {
    fail(what, " = fp32 contradicts precision bf16 on the CPU: its bf16 products are those of bf16 storage (set ", what,
         " to bf16 or auto, or precision to fp32)");
  }
  return resolved;
}

std::unique_ptr<Backend<bfloat16>> make_bf16_backend(Backend<float>& wide) {
  if (wide.device() == DeviceKind::kCpu) {
    const cpu::CpuBf16Support support = cpu::cpu_bf16_support();
    static bool said = false;  // once per process, not per model
    if (!said) {
      said = true;
      if (!support.onednn_built) {
        ELECTRA_LOG(warning) << "bf16 storage on the CPU: this build has no oneDNN (libdnnl-dev), so it runs the "
                                "slow reference backend (widen, fp32 kernel, round)";
      } else if (!support.native) {
        ELECTRA_LOG(warning) << "bf16 storage on the CPU: " << support.summary()
                             << "; without avx512_bf16 or amx_bf16 the products run in fp32 on widened operands, so "
                                "expect fp32 speed at best (train.storage=fp32 is the faster choice here)";
      } else {
        ELECTRA_LOG(info) << "bf16 storage on the CPU: " << support.summary();
      }
    }
    return support.onednn_built ? make_onednn_bf16_backend(wide) : make_cpu_bf16_backend(wide);
  }
#if defined(ELECTRA_HAVE_CUDA)
  return make_cuda_bf16_backend(wide);
#else
  fail("bf16 storage: backend ", wide.name(), " is neither the CPU nor a CUDA backend of this build");
#endif
}

namespace {
template <typename T>
double best_square_gemm_gflops(Backend<T>& backend, int n, int reps) {
  const size_t nn = static_cast<size_t>(n) * n;
  std::vector<T> host(nn);
  for (size_t i = 0; i < nn; ++i) host[i] = T(static_cast<float>((i * 7919) % 1000) * 1e-3f - 0.5f);
  T* a = backend.allocate(nn);
  T* b = backend.allocate(nn);
  T* c = backend.allocate(nn);
  backend.copy_from_host(a, host.data(), nn);
  backend.copy_from_host(b, host.data(), nn);
  double best = 0.0;
  for (int rep = 0; rep < reps + 1; ++rep) {  // the first call warms up (page faults, packing, primitives)
    backend.synchronize();
    const auto start = std::chrono::steady_clock::now();
    backend.gemm(Transpose::kNo, Transpose::kNo, n, n, n, 1.0f, a, n, b, n, 0.0f, c, n);
    backend.synchronize();
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    if (rep > 0) best = std::max(best, 2.0 * n * n * static_cast<double>(n) / s / 1e9);
  }
  backend.deallocate(a);
  backend.deallocate(b);
  backend.deallocate(c);
  return best;
}
}  // namespace

double measure_gemm_gflops(Backend<float>& wide, StorageType storage, int n, int reps) {
  if (storage == StorageType::kBf16) {
    const std::unique_ptr<Backend<bfloat16>> bf16 = make_bf16_backend(wide);
    return best_square_gemm_gflops(*bf16, n, reps);
  }
  return best_square_gemm_gflops(wide, n, reps);
}

std::unique_ptr<PretrainerModel<float>> make_rank_model(const PretrainerConfig& config, Backend<float>& backend,
                                                        StorageType storage) {
  if (storage == StorageType::kFp32) return std::make_unique<ElectraPretrainer<float>>(config, backend);
  return std::make_unique<ElectraPretrainer<bfloat16>>(config, make_bf16_backend(backend));
}

std::vector<int> ranks_per_gpu_id(const std::vector<std::string>& gpu_ids) {
  std::map<std::string, int> users;
  for (const std::string& id : gpu_ids) {
    if (!id.empty()) ++users[id];
  }
  std::vector<int> counts;
  counts.reserve(gpu_ids.size());
  for (const std::string& id : gpu_ids) counts.push_back(id.empty() ? 1 : users[id]);
  return counts;
}

int count_ranks_on_my_gpu(const dist::Communicator& comm) {
  // This rank's GPU as "<host> <PCI bus id>" ("" without one).
  std::string id;
#if defined(ELECTRA_HAVE_CUDA)
  const int gpus = cuda_device_count();
  if (gpus > 0) {
    const std::string bus = cuda_device_pci_bus_id(std::max(0, comm.local_rank()) % gpus);
    if (!bus.empty()) id = host_name() + " " + bus;
  }
#endif
  const std::vector<std::string> ids = comm.gather_strings(id);
  std::string counts;
  if (comm.is_root()) {
    std::ostringstream out;
    for (int c : ranks_per_gpu_id(ids)) out << c << ' ';
    counts = out.str();
  }
  comm.broadcast(counts);
  std::istringstream in(counts);
  int mine = 1;
  for (int r = 0; r <= comm.rank(); ++r) in >> mine;
  return std::max(1, mine);
}

std::unique_ptr<Backend<float>> make_rank_backend(DeviceKind device, const dist::Communicator& comm,
                                                  const DeviceOptions& options) {
  DeviceOptions counted = options;
  if (device == DeviceKind::kCuda && counted.ranks_on_gpu == 0) counted.ranks_on_gpu = count_ranks_on_my_gpu(comm);
  return make_rank_backend(device, comm.local_rank(), counted, comm.local_size());
}

int local_rank_from_environment() {
  for (const char* name : {"OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID", "SLURM_LOCALID"}) {
    const char* value = std::getenv(name);
    if (value == nullptr || *value == '\0') continue;
    char* end = nullptr;
    const long rank = std::strtol(value, &end, 10);
    if (*end == '\0' && rank >= 0 && rank < (1L << 20)) return static_cast<int>(rank);
  }
  return 0;
}

std::string device_memory_summary(Backend<float>& backend) {
  if (backend.device() != DeviceKind::kCuda) return "";
#if defined(ELECTRA_HAVE_CUDA)
  const CudaMemoryStats s = cuda_memory_stats(backend);
  return "GPU " + std::to_string(cuda_device_of(backend)) + " (" + backend.name() + "): device memory arena " +
         cuda::format_bytes(s.capacity) + ", in use " + cuda::format_bytes(s.in_use) + ", peak " +
         cuda::format_bytes(s.peak);
#else
  return "";
#endif
}

}  // namespace electra
