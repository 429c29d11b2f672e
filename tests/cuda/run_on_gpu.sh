#!/usr/bin/env bash
# Runs the CUDA tests (ctest -R Cuda) and the benchmark on a machine with an NVIDIA GPU, in one call.
#
#   tests/cuda/run_on_gpu.sh                 configure with -DELECTRA_CUDA=ON into build-gpu, build the CUDA
#                                            tests (and electra-bench), run them and the benchmark
#   tests/cuda/run_on_gpu.sh --bundle DIR    run a bundle made by tests/cuda/make_gpu_bundle.sh instead: for
#                                            GPU machines without the project's build dependencies (MPI,
#                                            HDF5, OpenBLAS, GoogleTest dev packages)
#   add --sanitize                           also run the CUDA op tests under compute-sanitizer (memcheck,
#                                            racecheck) when it is installed
#
# Logs go to $OUT when it is set (the lent GPU machines collect it), else to build-gpu/logs. Exits
# non-zero when a test fails; a benchmark failure is logged and reported but does not fail the run.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

bundle="" sanitize=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --bundle) bundle="$2"; shift 2 ;;
    --sanitize) sanitize=1; shift ;;
    *) echo "usage: $0 [--bundle DIR] [--sanitize]" >&2; exit 2 ;;
  esac
done
logs="${OUT:-build-gpu/logs}"
mkdir -p "$logs"
status=0

{ nvidia-smi || echo "nvidia-smi not found"; nvcc --version || true; } 2>&1 | tee "$logs/gpu.txt"

if [[ -n "$bundle" ]]; then
  # cuBLAS, cuDNN and NCCL are not in the bundle (too large to carry): the CUDA toolkit's, else those that
  # pip's nvidia-cublas / nvidia-cudnn-cu13 / nvidia-nccl-cu13 packages installed.
  extra=""
  if command -v python3 >/dev/null; then
    extra=$(python3 -c 'import glob, os, site; print(":".join(sorted(set(os.path.dirname(p) for d in site.getsitepackages() for lib in ("libcublas", "libcudnn", "libnccl") for p in glob.glob(d + "/nvidia/*/lib/" + lib + "*.so*")))))' 2>/dev/null || true)
  fi
  export LD_LIBRARY_PATH="$bundle/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}:/usr/local/cuda/lib64${extra:+:$extra}"
  tests="$bundle/bin/cuda_backend_tests"
  bench="$bundle/bin/electra-bench"
  "$tests" --gtest_filter='Cuda*' 2>&1 | tee "$logs/cuda_tests.txt" || status=1
else
  generator=()
  command -v ninja >/dev/null && generator=(-G Ninja)
  { cmake -S . -B build-gpu "${generator[@]}" -DELECTRA_CUDA=ON -DCMAKE_BUILD_TYPE=Release &&
    targets=(cuda_backend_tests) &&
    { cmake --build build-gpu --target help | grep -q electra-bench && targets+=(electra-bench) || true; } &&
    # The GPU tests that drive electra-train (their targets depend on the programs).
    for t in cuda_train_precision_tests cuda_checkpoint_move_tests; do
      { cmake --build build-gpu --target help | grep -q "$t" && targets+=("$t") || true; }
    done &&
    cmake --build build-gpu --target "${targets[@]}" -j "$(nproc)"; } 2>&1 | tee "$logs/build.txt"
  if [[ ${PIPESTATUS[0]} -ne 0 ]]; then
    echo "build failed (log: $logs/build.txt)"
    exit 1
  fi
  tests=build-gpu/tests/cuda_backend_tests
  bench=build-gpu/bin/electra-bench
  ctest --test-dir build-gpu -R Cuda --output-on-failure 2>&1 | tee "$logs/cuda_tests.txt" || status=1
fi

if [[ $sanitize -eq 1 ]]; then
  if command -v compute-sanitizer >/dev/null; then
    for tool in memcheck racecheck; do
      compute-sanitizer --tool "$tool" --error-exitcode 9 "$tests" --gtest_filter='CudaOps.*:-CudaOps.Tf32*' \
        > "$logs/sanitizer_$tool.txt" 2>&1 || { echo "compute-sanitizer $tool found problems"; status=1; }
      tail -3 "$logs/sanitizer_$tool.txt"
    done
  else
    echo "compute-sanitizer not found: skipped"
  fi
fi

if [[ -x "$bench" ]]; then
  for args in "--device cuda --config small --batch 128 --seq 128 --steps 10 --warmup 3" \
              "--device cuda --config base --batch 32 --seq 512 --steps 5 --warmup 2"; do
    echo "== electra-bench $args" | tee -a "$logs/bench.txt"
    # shellcheck disable=SC2086
    "$bench" $args 2>&1 | tee -a "$logs/bench.txt" || echo "electra-bench failed: $args" | tee -a "$logs/bench.txt"
  done
else
  echo "electra-bench not built: no benchmark" | tee "$logs/bench.txt"
fi

[[ $status -eq 0 ]] && echo "run_on_gpu: all CUDA tests passed" || echo "run_on_gpu: FAILURES (logs in $logs)"
exit $status
