// The columns of the parity table. A new backend is one entry here: its storage type, what it is checked
// against, when it cannot run, and how to make it.
#include "tests/backend/parity/backends.h"

#include <cstring>
#include <map>
#include <stdexcept>

#include "lib/backend/cpu/onednn_matmul.h"
#ifdef ELECTRA_PARITY_CUDA
#include "lib/backend/cuda/cuda_backend.h"
#endif

namespace electra::test::parity {
namespace {

template <typename E>
class InstanceOf : public Instance {
 public:
  InstanceOf(std::unique_ptr<Backend<float>> wide, std::unique_ptr<Backend<E>> backend, ByteCopies bytes)
      : wide_(std::move(wide)), backend_(std::move(backend)), bytes_(std::move(bytes)) {}
  Outputs run(const Case& c, const void* in, double poison) override {
    Ctx<E> ctx(*backend_, bytes_, poison);
    Outputs out = c.run(ctx, in);
    backend_->synchronize();
    return out;
  }

 private:
  std::unique_ptr<Backend<float>> wide_;  // under a bf16 backend; declared first so that it outlives it
  std::unique_ptr<Backend<E>> backend_;
  ByteCopies bytes_;
};

ByteCopies host_copies() {
  return {[](void* host, const void* src, size_t n) { std::memcpy(host, src, n); },
          [](void* dst, const void* host, size_t n) { std::memcpy(dst, host, n); }};
}

#ifdef ELECTRA_PARITY_CUDA
ByteCopies cuda_copies(Backend<float>& backend) {
  return {[&backend](void* host, const void* src, size_t n) { cuda_copy_bytes_to_host(backend, host, src, n); },
          [&backend](void* dst, const void* host, size_t n) { cuda_copy_bytes_from_host(backend, dst, host, n); }};
}
std::string no_gpu() { return cuda_device_count() > 0 ? "" : "no usable CUDA GPU: " + cuda_unavailable_reason(); }
constexpr size_t kArenaBytes = size_t{1} << 30;
#else
std::string no_gpu() { return "this build has no CUDA backend (ELECTRA_CUDA=OFF or no nvcc)"; }
#endif

BackendEntry entry(std::string name, Storage storage, DeviceKind device, Against against, std::string against_name,
                   std::function<std::string()> unavailable, std::function<std::unique_ptr<Instance>()> make) {
  BackendEntry e;
  e.traits.name = std::move(name);
  e.traits.storage = storage;
  e.traits.device = device;
  e.against = against;
  e.against_name = std::move(against_name);
  e.unavailable = std::move(unavailable);
  e.make = std::move(make);
  return e;
}
std::string available() { return ""; }

std::vector<BackendEntry> make_entries() {
  std::vector<BackendEntry> e;
  e.push_back(entry("cpu_double", Storage::kDouble, DeviceKind::kCpu, Against::kLoops, "loops", available, [] {
    return std::make_unique<InstanceOf<double>>(nullptr, make_cpu_backend<double>(), host_copies());
  }));
  e.push_back(entry("cpu_float", Storage::kFloat, DeviceKind::kCpu, Against::kLoops, "loops", available, [] {
    return std::make_unique<InstanceOf<float>>(nullptr, make_cpu_backend<float>(), host_copies());
  }));
  e.push_back(entry("cpu_bf16", Storage::kBf16, DeviceKind::kCpu, Against::kFloatOracle, "cpu_float", available, [] {
    auto wide = make_cpu_backend<float>();
    auto bf16 = make_cpu_bf16_backend(*wide);
    return std::make_unique<InstanceOf<bfloat16>>(std::move(wide), std::move(bf16), host_copies());
  }));
  e.push_back(entry(
      "cpu_bf16_onednn", Storage::kBf16, DeviceKind::kCpu, Against::kCpuBf16, "cpu_bf16",
      [] { return cpu::cpu_bf16_support().onednn_built ? std::string() : "this build has no oneDNN"; },
      [] {
        auto wide = make_cpu_backend<float>();
        auto bf16 = make_onednn_bf16_backend(*wide);
        return std::make_unique<InstanceOf<bfloat16>>(std::move(wide), std::move(bf16), host_copies());
      }));
  // Its own kernels are the reference's arithmetic on bf16 (bf16_kernels.h), and its fused attention is the
  // reference's: only its products round differently.
  e.back().bitwise_for = [](const Case& c) { return !c.products() || c.op().starts_with("fused_attention"); };
  e.push_back(entry("cuda_float", Storage::kFloat, DeviceKind::kCuda, Against::kCpuFloat, "cpu_float", no_gpu,
                    []() -> std::unique_ptr<Instance> {
#ifdef ELECTRA_PARITY_CUDA
                      auto gpu = make_cuda_backend(0, CudaBackendOptions{.arena_bytes = kArenaBytes});
                      ByteCopies copies = cuda_copies(*gpu);
                      return std::make_unique<InstanceOf<float>>(nullptr, std::move(gpu), std::move(copies));
#else
                      throw std::logic_error("no CUDA backend in this build");
#endif
                    }));
  e.push_back(entry("cuda_bf16", Storage::kBf16, DeviceKind::kCuda, Against::kCpuBf16, "cpu_bf16", no_gpu,
                    []() -> std::unique_ptr<Instance> {
#ifdef ELECTRA_PARITY_CUDA
                      auto wide = make_cuda_backend(
                          0, CudaBackendOptions{.precision = CudaPrecision::kBf16, .arena_bytes = kArenaBytes});
                      auto bf16 = make_cuda_bf16_backend(*wide);
                      ByteCopies copies = cuda_copies(*wide);
                      return std::make_unique<InstanceOf<bfloat16>>(std::move(wide), std::move(bf16),
                                                                    std::move(copies));
#else
                      throw std::logic_error("no CUDA backend in this build");
#endif
                    }));
  // Fused attention without dropout goes to cuDNN SDPA where it serves (lib/backend/cuda/sdpa_cudnn.h).
  e.back().traits.cudnn_sdpa = true;
  return e;
}

std::map<std::string, std::unique_ptr<Instance>>& instances() {
  static std::map<std::string, std::unique_ptr<Instance>> made;
  return made;
}

}  // namespace

const std::vector<BackendEntry>& backend_entries() {
  static const std::vector<BackendEntry> entries = make_entries();
  return entries;
}

const BackendEntry& backend_entry(const std::string& name) {
  for (const BackendEntry& e : backend_entries()) {
    if (e.traits.name == name) return e;
  }
  throw std::logic_error("no parity backend " + name);
}

Instance& instance(const std::string& name) {
  std::unique_ptr<Instance>& made = instances()[name];
  if (!made) made = backend_entry(name).make();
  return *made;
}

void release_instances() {
  // bf16 backends first: the CUDA one shares its float backend's stream and arena.
  for (const char* name : {"cuda_bf16", "cuda_float", "cpu_bf16_onednn", "cpu_bf16"}) instances().erase(name);
  instances().clear();
}

}  // namespace electra::test::parity
