#!/usr/bin/env bash
# Builds the CUDA tests (and electra-bench) here and copies them, with the shared libraries a bare GPU
# machine lacks (OpenBLAS, gfortran, OpenMP, MPI, HDF5, Boost, the CUDA runtime; not libc/libstdc++, the
# driver or cuBLAS, which the GPU machine has), into build-gpu-bundle/{bin,lib}. Then on the GPU machine, with the bundle carried:
#   tests/cuda/run_on_gpu.sh --bundle build-gpu-bundle
# Usage: tests/cuda/make_gpu_bundle.sh [BUILD_DIR (default build-cuda)]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
build="${1:-build-cuda}"
out=build-gpu-bundle
cmake -S . -B "$build" -DELECTRA_CUDA=ON >/dev/null
targets=(cuda_backend_tests)
cmake --build "$build" --target help | grep -q electra-bench && targets+=(electra-bench)
cmake --build "$build" --target "${targets[@]}" -j2
rm -rf "$out" && mkdir -p "$out/bin" "$out/lib"
cp "$build/tests/cuda_backend_tests" "$out/bin/"
[[ -x "$build/bin/electra-bench" ]] && cp "$build/bin/electra-bench" "$out/bin/"
for binary in "$out"/bin/*; do
  ldd "$binary" | awk '$3 ~ /^\// {print $3}' | while read -r lib; do
    case "$(basename "$lib")" in
      libc.so*|libm.so*|libdl.so*|librt.so*|libpthread.so*|ld-linux*|libstdc++.so*|libgcc_s.so*) ;;
      libcuda.so*|libcublas*|libcudnn*|libnccl*|libnvrtc*|libnvJitLink*) ;;  # the driver; large CUDA libraries
      *) cp -Ln "$lib" "$out/lib/" ;;
    esac
  done
done
du -sh "$out" && ls "$out/bin" "$out/lib"
