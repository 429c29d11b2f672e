#!/usr/bin/env bash
# Runs the GPU tests (CUDA backend, cuDNN SDPA, cuBLASLt precisions, NCCL, electra-train/-eval on the GPU)
# and the GPU benchmarks on a machine with an NVIDIA GPU, in one call.
#
#   tests/cuda/run_on_gpu.sh                 configure with -DELECTRA_CUDA=ON into build-gpu, build everything,
#                                            run every GPU test and the benchmarks
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
  # Open MPI from the bundle (for the singleton NCCL test): its components and orted.
  if [[ -d "$bundle/openmpi/components" ]]; then
    export OMPI_MCA_mca_base_component_path="$bundle/openmpi/components" PATH="$bundle/bin:$PATH"
    export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
  fi
  tests="$bundle/bin/cuda_backend_tests"
  parity="$bundle/bin/backend_parity_tests"
  bench="$bundle/bin/electra-bench"
  # The bundle carries no MPI launcher: the tests that drive electra-train under mpirun (checkpoint move,
  # train precision, eval, transports) need the full build above, on a GPU node with the build packages.
  for binary in cuda_backend_tests cuda_host_tests; do
    "$bundle/bin/$binary" 2>&1 | tee -a "$logs/cuda_tests.txt" || status=1
  done
  # One rank as an MPI singleton (no mpirun); NCCL with two ranks needs two GPUs and mpirun.
  if [[ -x "$bundle/bin/dist_nccl_tests" ]]; then
    "$bundle/bin/dist_nccl_tests" 2>&1 | tee -a "$logs/cuda_tests.txt" || status=1
  fi
else
  generator=()
  command -v ninja >/dev/null && generator=(-G Ninja)
  # Everything: the GPU tests drive electra-train / electra-eval and need the programs.
  { cmake -S . -B build-gpu "${generator[@]}" -DELECTRA_CUDA=ON -DCMAKE_BUILD_TYPE=Release &&
    cmake --build build-gpu -j "$(nproc)"; } 2>&1 | tee "$logs/build.txt"
  if [[ ${PIPESTATUS[0]} -ne 0 ]]; then
    echo "build failed (log: $logs/build.txt)"
    exit 1
  fi
  tests=build-gpu/tests/cuda_backend_tests
  parity=build-gpu/tests/backend_parity_tests
  bench=build-gpu/bin/electra-bench
  # Every test that needs a GPU (they skip themselves elsewhere): the CUDA backend and its host-side
  # parts, the bf16 storage backend (CudaBf16Ops), cuDNN SDPA, cuBLASLt precisions, electra-train --device cuda in every precision, checkpoints
  # moved between GPU and CPU, electra-eval on the GPU, the NCCL reducer and the gradient transports
  # (electra-train's, and electra-bench's: BenchSmoke.ElectraBenchCudaNccl). Every op on both CUDA backends
  # against the CPU is the backend parity table (BackendParity, below).
  ctest --test-dir build-gpu -R "Cuda|Nccl|TransportConfig|EvalE2E|nccl" --output-on-failure 2>&1 |
    tee "$logs/cuda_tests.txt" || status=1
fi

# The backend parity table: every op of backend.h on every backend, the CUDA columns included, against its
# reference (tests/backend/parity); the op x backend table goes to the log.
ELECTRA_PARITY_TABLE=1 "$parity" --gtest_brief=1 2>&1 | tee "$logs/parity_table.txt" || status=1

if [[ $sanitize -eq 1 ]]; then
  if command -v compute-sanitizer >/dev/null; then
    for tool in memcheck racecheck; do
      compute-sanitizer --tool "$tool" --error-exitcode 9 "$tests" --gtest_filter='CudaOps.*:CudaBf16Ops.*:CudaFusedLayerNorm.*:-CudaOps.Tf32*' \
        > "$logs/sanitizer_$tool.txt" 2>&1 || { echo "compute-sanitizer $tool found problems"; status=1; }
      tail -3 "$logs/sanitizer_$tool.txt"
      # The ops themselves: the parity table's CUDA columns.
      compute-sanitizer --tool "$tool" --error-exitcode 9 "$parity" --gtest_brief=1 --gtest_filter='Parity/*.cuda_*' \
        > "$logs/sanitizer_parity_$tool.txt" 2>&1 || { echo "compute-sanitizer $tool found problems (parity)"; status=1; }
      tail -3 "$logs/sanitizer_parity_$tool.txt"
    done
  else
    echo "compute-sanitizer not found: skipped"
  fi
fi

if [[ -x "$bench" ]]; then
  # The issue's figures: ELECTRA-small and base at sequence 128 in bf16 (storage auto = bf16 mixed
  # precision; sequences/s = tokens/s / 128), bf16 arithmetic on fp32 storage to see what bf16 storage
  # buys, fp32 and tf32 for reference, fused attention (auto on a GPU), base at 512.
  for args in "--device cuda --config small --batch 128 --seq 128 --steps 20 --warmup 5 --precision bf16" \
              "--device cuda --config small --batch 128 --seq 128 --steps 10 --warmup 3 --precision fp32" \
              "--device cuda --config base --batch 128 --seq 128 --steps 20 --warmup 5 --precision bf16" \
              "--device cuda --config base --batch 128 --seq 128 --steps 10 --warmup 3 --precision bf16 --storage fp32" \
              "--device cuda --config base --batch 128 --seq 128 --steps 10 --warmup 3 --precision tf32" \
              "--device cuda --config base --batch 128 --seq 128 --steps 10 --warmup 3 --precision bf16 --dropout 0" \
              "--device cuda --config base --batch 32 --seq 512 --steps 5 --warmup 2 --precision bf16"; do
    echo "== electra-bench $args" | tee -a "$logs/bench.txt"
    # shellcheck disable=SC2086
    "$bench" $args 2>&1 | tee -a "$logs/bench.txt" || echo "electra-bench failed: $args" | tee -a "$logs/bench.txt"
  done
  # Two GPUs: one rank per GPU, gradients summed on the device with NCCL (overlapped with backward), and
  # staged through host memory for comparison; the allreduce line says what the transport costs.
  gpus=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU ' || true)
  if [[ "${gpus:-0}" -ge 2 ]] && command -v mpirun >/dev/null; then
    for transport in nccl host; do
      args="--device cuda --config small --batch 128 --seq 128 --steps 20 --warmup 5 --precision bf16 --transport $transport"
      echo "== mpirun -np 2 electra-bench $args" | tee -a "$logs/bench.txt"
      # shellcheck disable=SC2086
      mpirun -np 2 --allow-run-as-root --bind-to none -x ELECTRA_SKIP_SLURM_CHECK=1 "$bench" $args 2>&1 |
        tee -a "$logs/bench.txt" || echo "electra-bench failed: mpirun -np 2 $args" | tee -a "$logs/bench.txt"
    done
  else
    echo "fewer than 2 GPUs (or no mpirun): no 2-GPU NCCL benchmark" | tee -a "$logs/bench.txt"
  fi
else
  echo "electra-bench not built: no benchmark" | tee "$logs/bench.txt"
fi

# The baseline on the same card: Hugging Face transformers + PyTorch eager, bf16 autocast (the python3
# that has torch with CUDA; the GPU image's own).
baseline=tests/bench/hf_electra_step.py
if python3 -c 'import torch, transformers; assert torch.cuda.is_available()' 2>/dev/null; then
  for args in "--config small --batch 128 --seq 128 --amp bf16" "--config base --batch 128 --seq 128 --amp bf16" \
              "--config base --batch 128 --seq 128 --amp bf16 --sdpa --dropout 0"; do
    echo "== hf_electra_step.py --device cuda $args" | tee -a "$logs/bench.txt"
    # shellcheck disable=SC2086
    python3 "$baseline" --device cuda $args 2>&1 | tail -6 | tee -a "$logs/bench.txt" ||
      echo "hf_electra_step.py failed: $args" | tee -a "$logs/bench.txt"
  done
else
  echo "no python3 with torch (CUDA) and transformers: no PyTorch baseline" | tee -a "$logs/bench.txt"
fi

[[ $status -eq 0 ]] && echo "run_on_gpu: all CUDA tests passed" || echo "run_on_gpu: FAILURES (logs in $logs)"
exit $status
