// Backend<float> on a CUDA device: the factory and the free functions of cuda_backend.h. The class is in
// cuda_backend_impl.h (shared with the bf16 storage backend); the kernels behind kernels.h.
#include "lib/backend/cuda/cuda_backend.h"

#include <cuda_runtime_api.h>

#include <memory>
#include <string>

#include "lib/backend/cuda/cuda_backend_impl.h"
#include "lib/core/error.h"

namespace electra {
namespace {

std::string cuda_version(int v) { return std::to_string(v / 1000) + "." + std::to_string(v % 1000 / 10); }

// The reason behind a failed cudaGetDeviceCount (or a count of 0), in words.
std::string explain(cudaError_t error, int count) {
  int driver = 0, runtime = 0;
  cudaDriverGetVersion(&driver);
  cudaRuntimeGetVersion(&runtime);
  if (driver == 0) {
    return "no NVIDIA driver was found (libcuda.so is missing): this machine cannot run the CUDA backend";
  }
  if (error == cudaErrorInsufficientDriver) {
    return "the NVIDIA driver supports CUDA " + cuda_version(driver) + " but this program was built with CUDA " +
           cuda_version(runtime) + ": update the driver (CUDA " + cuda_version(runtime) +
           " needs a driver of the same major version)";
  }
  if (error == cudaErrorNoDevice || (error == cudaSuccess && count == 0)) {
    return "no CUDA GPU is visible (driver CUDA " + cuda_version(driver) +
           "; check nvidia-smi and CUDA_VISIBLE_DEVICES)";
  }
  if (error != cudaSuccess) {
    return std::string("cudaGetDeviceCount failed: ") + cudaGetErrorName(error) + " (" + cudaGetErrorString(error) +
           ")";
  }
  return "";
}

using cuda::CudaBackend;

CudaBackend& as_cuda(Backend<float>& backend) {
  auto* cuda = dynamic_cast<CudaBackend*>(&backend);
  if (cuda == nullptr) fail("backend '", backend.name(), "' is not a CUDA backend");
  return *cuda;
}

}  // namespace

int cuda_device_count() noexcept {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  return count;
}

std::string cuda_unavailable_reason() noexcept {
  try {
    int count = 0;
    const cudaError_t error = cudaGetDeviceCount(&count);
    cudaGetLastError();
    return explain(error, count);
  } catch (...) {
    return "the CUDA runtime could not be queried";
  }
}

std::string cuda_device_pci_bus_id(int device) noexcept {
  char bus_id[64] = {};
  if (cudaDeviceGetPCIBusId(bus_id, sizeof(bus_id), device) != cudaSuccess) {
    cudaGetLastError();
    return "";
  }
  return bus_id;
}

std::unique_ptr<Backend<float>> make_cuda_backend(int device, const CudaBackendOptions& options) {
  int count = 0;
  const cudaError_t error = cudaGetDeviceCount(&count);
  if (error != cudaSuccess || count == 0) {
    cudaGetLastError();
    fail("CUDA backend unavailable: ", explain(error, count));
  }
  if (device < 0 || device >= count) {
    fail("CUDA device ", device, " does not exist: ", count, " device", count == 1 ? " is" : "s are", " visible (0..",
         count - 1, ")");
  }
  return std::make_unique<CudaBackend>(device, options);
}

void* cuda_stream_of(Backend<float>& backend) { return as_cuda(backend).stream(); }
int cuda_device_of(Backend<float>& backend) { return as_cuda(backend).device_index(); }
CudaPrecision cuda_precision_of(Backend<float>& backend) { return as_cuda(backend).precision(); }
CudaMemoryStats cuda_memory_stats(Backend<float>& backend) { return as_cuda(backend).memory_stats(); }

void cuda_copy_bytes_to_host(Backend<float>& backend, void* host, const void* device, size_t bytes) {
  as_cuda(backend).to_host(host, device, bytes);
}

void cuda_copy_bytes_from_host(Backend<float>& backend, void* device, const void* host, size_t bytes) {
  CudaBackend& cuda = as_cuda(backend);
  cuda.from_host(device, host, bytes);
  cuda.synchronize();
}

}  // namespace electra
