# electra-bench smoke tests (the program is apps/electra-bench; docs/performance.md has the numbers).
# They check that the step benchmark runs end to end and reports what the performance table needs; they
# measure nothing. CTest runs them (label bench_smoke).
if(TARGET electra-bench)
  add_test(NAME BenchSmoke.ElectraBenchTinyJson
    COMMAND $<TARGET_FILE:electra-bench> --config tiny --batch 4 --seq 32 --steps 2 --warmup 1 --threads 2
            --peak-gemm 256 --breakdown --json)
  set_tests_properties(BenchSmoke.ElectraBenchTinyJson PROPERTIES LABELS bench_smoke TIMEOUT 120
    PASS_REGULAR_EXPRESSION "\"chunks\":2.*\"impl\":\"electra-mpi\".*\"model_gflops_per_s\":[0-9].*\"peak_rss_mib\":[0-9].*\"generator_forward\".*\"transport\":\"none\"")
  add_test(NAME BenchSmoke.ElectraBenchTwoRanks
    COMMAND ${MPIEXEC_EXECUTABLE} ${MPIEXEC_NUMPROC_FLAG} 2 --oversubscribe --allow-run-as-root --bind-to none
            $<TARGET_FILE:electra-bench> --config tiny --batch 4 --seq 32 --steps 2 --warmup 1 --threads 1
            --peak-gemm 256)
  set_tests_properties(BenchSmoke.ElectraBenchTwoRanks PROPERTIES LABELS bench_smoke TIMEOUT 120
    ENVIRONMENT "OMPI_MCA_rmaps_base_oversubscribe=1;ELECTRA_SKIP_SLURM_CHECK=1"
    PASS_REGULAR_EXPRESSION "2 rank\\(s\\) x 1 thread.*allreduce +[0-9.]+ ms per step \\([0-9.]+% of the step; overlapped with backward; transport host\\)")
  # The loss it reports is the step's, summed over the ranks' shares.
  add_test(NAME BenchSmoke.ElectraBenchLossIsTheWholeStepsOnTwoRanks
    COMMAND sh ${CMAKE_CURRENT_LIST_DIR}/ranks_loss_smoke.sh ${MPIEXEC_EXECUTABLE} $<TARGET_FILE:electra-bench>)
  set_tests_properties(BenchSmoke.ElectraBenchLossIsTheWholeStepsOnTwoRanks PROPERTIES LABELS bench_smoke
    TIMEOUT 120 ENVIRONMENT "OMPI_MCA_rmaps_base_oversubscribe=1;ELECTRA_SKIP_SLURM_CHECK=1"
    PASS_REGULAR_EXPRESSION "PASS: the same loss")
  # --transport (electra-train's dist.gradient_transport): the device transports are refused on the CPU with
  # exit code 2 and the trainer's message; host runs on two CPU ranks, after backward here.
  add_test(NAME BenchSmoke.ElectraBenchDeviceTransportsNeedCuda
    COMMAND sh -c "\"$0\" --transport nccl; echo \"exit=$?\"; \"$0\" --transport cuda_aware_mpi; echo \"exit=$?\""
            $<TARGET_FILE:electra-bench>)
  set_tests_properties(BenchSmoke.ElectraBenchDeviceTransportsNeedCuda PROPERTIES LABELS bench_smoke TIMEOUT 60
    PASS_REGULAR_EXPRESSION "--transport: config key 'dist.gradient_transport' = nccl reduces device buffers and needs --device cuda.*exit=2.*--transport: config key 'dist.gradient_transport' = cuda_aware_mpi reduces device buffers and needs --device cuda.*exit=2")
  add_test(NAME BenchSmoke.ElectraBenchTwoRanksHostTransport
    COMMAND ${MPIEXEC_EXECUTABLE} ${MPIEXEC_NUMPROC_FLAG} 2 --oversubscribe --allow-run-as-root --bind-to none
            $<TARGET_FILE:electra-bench> --config tiny --batch 4 --seq 32 --steps 2 --warmup 1 --threads 1
            --peak-gemm 256 --transport host --no-overlap --json)
  set_tests_properties(BenchSmoke.ElectraBenchTwoRanksHostTransport PROPERTIES LABELS bench_smoke TIMEOUT 120
    ENVIRONMENT "OMPI_MCA_rmaps_base_oversubscribe=1;ELECTRA_SKIP_SLURM_CHECK=1"
    PASS_REGULAR_EXPRESSION "\"allreduce_s\":[0-9].*\"overlap\":false.*\"ranks\":2.*\"transport\":\"host\"")
  # A --config file is read as electra-train reads it: a key twice in one object is refused (it was taken,
  # the last one winning), naming the file and the key.
  # --dropout -1 was a sentinel for the config's rate, and a --peak-gemm too large for memory ran every step
  # before bad_alloc (exit 1): both are refused before the first step.
  add_test(NAME BenchSmoke.ElectraBenchRefusesOutOfRangeFlags
    COMMAND sh -c "\"$0\" --config tiny --dropout -1; echo \"exit=$?\"; \"$0\" --config tiny --peak-gemm 100000; echo \"exit=$?\""
            $<TARGET_FILE:electra-bench>)
  set_tests_properties(BenchSmoke.ElectraBenchRefusesOutOfRangeFlags PROPERTIES LABELS bench_smoke TIMEOUT 60
    PASS_REGULAR_EXPRESSION "--dropout -1 is outside \\[0, 1\\).*exit=2.*--peak-gemm: Value 100000 not in range 1 to 16384.*exit=2")
  # A run config is measured as electra-train would run it: its step settings for the flags not given, and
  # its model.num_token_predictions at its length (they were ignored: adamw, fp32 and int(0.155 x seq)).
  add_test(NAME BenchSmoke.ElectraBenchMeasuresTheRunConfigsStep
    COMMAND sh -c "f=$(mktemp); printf '{\"model\": {\"embedding_size\": 32, \"hidden_size\": 32, \"num_layers\": 1, \"num_heads\": 2, \"intermediate_size\": 64, \"num_token_predictions\": 8, \"generator\": {\"hidden_size\": 16, \"num_layers\": 1, \"num_heads\": 1, \"intermediate_size\": 32}}, \"data\": {\"seq_length\": 32, \"trim_padding\": false}, \"train\": {\"parallel_chunks\": 1}, \"optim\": {\"name\": \"lamb\"}}' > \"$f\"; \"$0\" --config \"$f\" --batch 4 --steps 1 --warmup 0 --peak-gemm 64 --threads 2 --json; \"$0\" --config \"$f\" --batch 4 --steps 1 --warmup 0 --peak-gemm 64 --threads 2 --optimizer adamw --json; rm -f \"$f\""
            $<TARGET_FILE:electra-bench>)
  set_tests_properties(BenchSmoke.ElectraBenchMeasuresTheRunConfigsStep PROPERTIES LABELS bench_smoke TIMEOUT 120
    PASS_REGULAR_EXPRESSION "\"chunks\":1,.*\"optimizer\":\"lamb\",.*\"predictions\":8,.*\"trim_padding\":false.*\"optimizer\":\"adamw\"")
  # A run config's step settings are checked as the flags are, and named as config keys (train.threads 100000
  # segfaulted; a bad train.precision was called --precision; "optim": "lamb" was ignored).
  add_test(NAME BenchSmoke.ElectraBenchChecksTheRunConfigsSettings
    COMMAND sh -c "f=$(mktemp); for c in '{\"train\": {\"threads\": 100000}}' '{\"train\": {\"precision\": \"fp16\"}}' '{\"optim\": \"lamb\"}'; do printf '%s' \"$c\" > \"$f\"; \"$0\" --config \"$f\" --steps 1; echo \"exit=$?\"; done; rm -f \"$f\""
            $<TARGET_FILE:electra-bench>)
  set_tests_properties(BenchSmoke.ElectraBenchChecksTheRunConfigsSettings PROPERTIES LABELS bench_smoke TIMEOUT 60
    PASS_REGULAR_EXPRESSION "config key 'train.threads' must be an integer in \\[0, 4096\\], got 100000.*exit=2.*config key 'train.precision' fp16 needs --device cuda.*exit=2.*'optim' must be a JSON object.*exit=2")
  add_test(NAME BenchSmoke.ElectraBenchConfigWithARepeatedKey
    COMMAND sh -c "f=$(mktemp); printf '{\"model\": {\"hidden_size\": 64, \"hidden_size\": 128}}' > \"$f\"; \"$0\" --config \"$f\" --steps 1; echo \"exit=$?\"; rm -f \"$f\""
            $<TARGET_FILE:electra-bench>)
  set_tests_properties(BenchSmoke.ElectraBenchConfigWithARepeatedKey PROPERTIES LABELS bench_smoke TIMEOUT 60
    PASS_REGULAR_EXPRESSION "key 'hidden_size' appears twice in one object.*exit=2")
  # TF32 and fp16 are tensor-core precisions: refused on the CPU with exit code 2 (bf16 is the CPU's
  # bf16 storage, so --storage fp32 contradicts it: exit 2 before MPI starts, not an MPI abort); fp32 is
  # reported.
  add_test(NAME BenchSmoke.ElectraBenchPrecisionNeedsCuda
    COMMAND sh -c "\"$0\" --precision tf32; echo \"exit=$?\"; \"$0\" --precision bf16 --storage fp32; echo \"exit=$?\""
            $<TARGET_FILE:electra-bench>)
  set_tests_properties(BenchSmoke.ElectraBenchPrecisionNeedsCuda PROPERTIES LABELS bench_smoke TIMEOUT 60
    PASS_REGULAR_EXPRESSION "--precision tf32 needs --device cuda.*exit=2.*--storage = fp32 contradicts precision bf16.*exit=2")
  add_test(NAME BenchSmoke.ElectraBenchReportsPrecision
    COMMAND $<TARGET_FILE:electra-bench> --config tiny --batch 2 --seq 32 --steps 1 --warmup 0 --threads 1
            --peak-gemm 64 --precision fp32)
  set_tests_properties(BenchSmoke.ElectraBenchReportsPrecision PROPERTIES LABELS bench_smoke TIMEOUT 120
    PASS_REGULAR_EXPRESSION "cpu-float, precision fp32, storage fp32.*GEMM peak +[0-9.]+ GFLOP/s per rank \\(fp32 GEMM")
  # Precision bf16 on the CPU: bf16 storage on oneDNN where the CPU has bf16 instructions; held to an ISA
  # without them (ONEDNN_MAX_CPU_ISA) it says so, naming the flags it looked for, and computes in fp32.
  if(ELECTRA_ONEDNN)
    add_test(NAME BenchSmoke.Bf16WithoutBf16Isa
      COMMAND ${CMAKE_COMMAND} -E env ONEDNN_MAX_CPU_ISA=AVX512_CORE DNNL_MAX_CPU_ISA=AVX512_CORE
              $<TARGET_FILE:electra-bench> --config tiny --batch 2 --seq 32 --steps 1 --warmup 0 --threads 1
              --peak-gemm 64 --precision bf16)
    set_tests_properties(BenchSmoke.Bf16WithoutBf16Isa PROPERTIES LABELS bench_smoke TIMEOUT 120
      PASS_REGULAR_EXPRESSION
      "no avx512_bf16 or amx_bf16 in effect.*computing in fp32 instead.*precision bf16, storage fp32")
  endif()
  # LAMB (optim.name) in the benchmark's step.
  add_test(NAME BenchSmoke.ElectraBenchLamb
    COMMAND $<TARGET_FILE:electra-bench> --config tiny --batch 2 --seq 32 --steps 2 --warmup 0 --threads 1
            --peak-gemm 64 --optimizer lamb --json)
  set_tests_properties(BenchSmoke.ElectraBenchLamb PROPERTIES LABELS bench_smoke TIMEOUT 120
    PASS_REGULAR_EXPRESSION "\"optimizer\":\"lamb\".*\"tokens_per_s\":[0-9]")
  # bf16 storage on the CPU (the oneDNN backend where the build has it; the reference otherwise).
  add_test(NAME BenchSmoke.ElectraBenchBf16StorageJson
    COMMAND $<TARGET_FILE:electra-bench> --config tiny --batch 2 --seq 32 --steps 1 --warmup 0 --threads 1
            --peak-gemm 64 --storage bf16 --json)
  set_tests_properties(BenchSmoke.ElectraBenchBf16StorageJson PROPERTIES LABELS bench_smoke TIMEOUT 120
    PASS_REGULAR_EXPRESSION "\"storage\":\"bf16\".*\"tokens_per_s\":[0-9]")
  # --lengths-from: rows as long as a corpus's examples (shards of short documents made in the test), the rest
  # padding; tokens/s counts the real tokens, below the slot tokens/s; steps trimmed to the longest row unless
  # --no-trim-padding (the same first loss). A path that is not a shards directory is a usage error: exit code 2,
  # naming the path.
  if(TARGET electra-preprocess)
    add_test(NAME BenchSmoke.ElectraBenchLengthsFrom
      COMMAND sh ${CMAKE_CURRENT_LIST_DIR}/lengths_smoke.sh $<TARGET_FILE:electra-preprocess>
              $<TARGET_FILE:electra-bench>)
    set_tests_properties(BenchSmoke.ElectraBenchLengthsFrom PROPERTIES LABELS bench_smoke TIMEOUT 120
      PASS_REGULAR_EXPRESSION "\"lengths_from\":\"[^\"]+/shards\".*PASS: real_token_fraction")
  endif()
  # Option values out of range: exit 2 naming the flag, on every rank before any step (they ended in an MPI
  # abort with exit 1, or ran: --vocab -5, --seq -8, --seed -1 read as 2^64 - 1).
  add_test(NAME BenchSmoke.ElectraBenchBadValuesExitTwo
    COMMAND sh -c "for a in '--batch 0' '--seq -8' '--steps 0' '--warmup -1' '--peak-gemm 0' '--chunks -1' '--vocab -5' '--dropout 1' '--seq 100000' '--seed -1'; do \"$0\" --config tiny $a; echo \"[$a] exit=$?\"; done"
            $<TARGET_FILE:electra-bench>)
  set_tests_properties(BenchSmoke.ElectraBenchBadValuesExitTwo PROPERTIES LABELS bench_smoke TIMEOUT 60
    PASS_REGULAR_EXPRESSION "--batch 0 must be a positive multiple.*\\[--batch 0\\] exit=2.*--seq -8 must be positive.*exit=2.*--steps must be positive.*\\[--steps 0\\] exit=2.*\\[--warmup -1\\] exit=2.*--peak-gemm: Value 0 not in range 1 to 16384.*exit=2.*--chunks -1 must be.*exit=2.*--vocab -5 must be positive.*exit=2.*--dropout 1 is outside \\[0, 1\\).*exit=2.*--seq 100000 exceeds the model's max_position_embeddings.*exit=2.*--seed: Value -1 not in range.*\\[--seed -1\\] exit=2"
    FAIL_REGULAR_EXPRESSION "exit=[013-9]")
  # Values that crashed it (exit 139 or 134): a thread count libgomp cannot start, --steps + --warmup beyond
  # int, config files that are not a JSON object or have a non-integer seq_length, a directory; and a
  # vocabulary below the synthetic rows' [MASK] id (103), which ended in an MPI abort (exit 1).
  add_test(NAME BenchSmoke.ElectraBenchCrashingValuesExitTwo
    COMMAND sh -c "d=$(mktemp -d); echo '[]' > $d/arr.json; echo '{\"data\": {\"seq_length\": \"abc\"}}' > $d/seq.json; for a in '--threads 1048576' '--steps 2147483647 --warmup 1' \"--config $d/arr.json\" \"--config $d/seq.json\" \"--config $d\" '--vocab 103'; do \"$0\" --batch 2 --seq 16 --peak-gemm 64 $a; echo \"[$a] exit=$?\"; done; rm -rf $d"
            $<TARGET_FILE:electra-bench>)
  set_tests_properties(BenchSmoke.ElectraBenchCrashingValuesExitTwo PROPERTIES LABELS bench_smoke TIMEOUT 60
    PASS_REGULAR_EXPRESSION "not in range 0 to 4096.*exit=2.*--steps \\+ --warmup must be at most 1e9.*exit=2.*top level must be a JSON object.*exit=2.*data.seq_length must be an integer.*exit=2.*is a directory.*exit=2.*vocabulary size 103 must be at least 104.*exit=2"
    FAIL_REGULAR_EXPRESSION "exit=[013-9]")
  # Figures that cannot be written (a full disk) are an error: exit 1, not a silent success.
  if(EXISTS /dev/full)
    add_test(NAME BenchSmoke.ElectraBenchFullStdoutExitsOne
      COMMAND sh -c "\"$0\" --config tiny --batch 2 --seq 32 --steps 1 --warmup 0 --threads 1 --peak-gemm 64 >/dev/full; echo \"exit=$?\""
              $<TARGET_FILE:electra-bench>)
    set_tests_properties(BenchSmoke.ElectraBenchFullStdoutExitsOne PROPERTIES LABELS bench_smoke TIMEOUT 60
      PASS_REGULAR_EXPRESSION "stdout: write failed.*exit=1")
  endif()
  add_test(NAME BenchSmoke.ElectraBenchLengthsFromBadPath
    COMMAND sh -c "\"$0\" --config tiny --lengths-from /nonexistent/electra-shards; echo \"exit=$?\""
            $<TARGET_FILE:electra-bench>)
  set_tests_properties(BenchSmoke.ElectraBenchLengthsFromBadPath PROPERTIES LABELS bench_smoke TIMEOUT 60
    PASS_REGULAR_EXPRESSION "--lengths-from /nonexistent/electra-shards: not a directory.*exit=2")
  # On GPUs (skips without one; picked up by tests/cuda/run_on_gpu.sh's -R "...|Nccl|..."): nccl on one GPU
  # per rank (two ranks with two GPUs, else one), overlapped and not, against host staging, bitwise.
  if(TARGET electra_backend_cuda)
    add_test(NAME BenchSmoke.ElectraBenchCudaNccl
      COMMAND ${CMAKE_CURRENT_LIST_DIR}/gpu_transport_smoke.sh ${MPIEXEC_EXECUTABLE} $<TARGET_FILE:electra-bench>)
    set_tests_properties(BenchSmoke.ElectraBenchCudaNccl PROPERTIES LABELS "bench_smoke;cuda" TIMEOUT 300
      SKIP_RETURN_CODE 77 ENVIRONMENT "OMPI_MCA_rmaps_base_oversubscribe=1;ELECTRA_SKIP_SLURM_CHECK=1")
  endif()
  # No CUDA backend in this build: a clear message and exit code 2, not a crash.
  if(NOT TARGET electra_backend_cuda)
    add_test(NAME BenchSmoke.ElectraBenchCudaIsRefusedClearly
      COMMAND sh -c "\"$0\" --device cuda; echo \"exit=$?\"" $<TARGET_FILE:electra-bench>)
    set_tests_properties(BenchSmoke.ElectraBenchCudaIsRefusedClearly PROPERTIES LABELS bench_smoke TIMEOUT 60
      PASS_REGULAR_EXPRESSION "no CUDA backend.*exit=2")
  endif()
endif()
# The Hugging Face baseline (tests/bench/hf_electra_step.py, the step to beat on a GPU) runs end to end on
# the CPU with the pinned transformers.
add_test(NAME BenchSmoke.HfElectraStepTiny
  COMMAND ${ELECTRA_PYTHON} ${CMAKE_CURRENT_LIST_DIR}/hf_electra_step.py --config tiny --batch 4 --seq 32
          --steps 2 --warmup 1 --threads 1 --json
  WORKING_DIRECTORY ${PROJECT_SOURCE_DIR})
set_tests_properties(BenchSmoke.HfElectraStepTiny PROPERTIES LABELS bench_smoke TIMEOUT 300
  PASS_REGULAR_EXPRESSION "\"impl\": \"hf-transformers-eager\".*\"tokens_per_s\": [0-9]")
