#!/usr/bin/env bash
# Builds the GPU tests that need no MPI launcher (and electra-bench) here and copies them, with the shared
# libraries a bare GPU machine lacks (OpenBLAS, gfortran, OpenMP, MPI, HDF5, Boost, the CUDA runtime; not
# libc/libstdc++, the driver, cuBLAS, cuDNN or NCCL, which the GPU machine has through pip's nvidia-*
# packages and which are too large to carry), into build-gpu-bundle/{bin,lib}. Open MPI's components and
# orted come along so that dist_nccl_tests can start as a one-rank MPI singleton (best effort: the GPU
# image has no Open MPI of its own). Then on the GPU machine, with the bundle carried:
#   tests/cuda/run_on_gpu.sh --bundle build-gpu-bundle
# The tests that drive electra-train under mpirun (CudaCheckpointMove, CudaTrainPrecision, EvalE2E.Cuda*,
# TransportConfig) need the full build: tests/cuda/run_on_gpu.sh without --bundle on a GPU node that has the
# project's build packages.
# Usage: tests/cuda/make_gpu_bundle.sh [BUILD_DIR (default build-cuda)]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
build="${1:-build-cuda}"
out=build-gpu-bundle
cmake -S . -B "$build" -DELECTRA_CUDA=ON -DCMAKE_BUILD_TYPE=Release >/dev/null
targets=(cuda_backend_tests cuda_host_tests backend_parity_tests dist_nccl_tests electra-bench)
cmake --build "$build" --target "${targets[@]}" -j2
rm -rf "$out" && mkdir -p "$out/bin" "$out/lib"
cp "$build/tests/cuda_backend_tests" "$build/tests/cuda_host_tests" "$build/tests/backend_parity_tests" \
  "$build/tests/dist_nccl_tests" "$out/bin/"
cp "$build/bin/electra-bench" "$out/bin/"
for binary in "$out"/bin/*; do
  ldd "$binary" | awk '$3 ~ /^\// {print $3}' | while read -r lib; do
    case "$(basename "$lib")" in
      libc.so*|libm.so*|libdl.so*|librt.so*|libpthread.so*|ld-linux*|libstdc++.so*|libgcc_s.so*) ;;
      libcuda.so*|libcublas*|libcudnn*|libnccl*|libnvrtc*|libnvJitLink*) ;;  # the driver; large CUDA libraries
      *) cp -Ln "$lib" "$out/lib/" ;;
    esac
  done
done
ompi_components=$(ls -d /usr/lib/x86_64-linux-gnu/openmpi/lib/openmpi3 2>/dev/null || true)
if [[ -n "$ompi_components" ]]; then
  mkdir -p "$out/openmpi"
  cp -rL "$ompi_components" "$out/openmpi/components"
  cp -L /usr/bin/orted "$out/bin/" 2>/dev/null || true
fi
du -sh "$out" && ls "$out/bin" "$out/lib"
