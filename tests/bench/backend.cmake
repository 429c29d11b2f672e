# backend_bench: CPU backend micro-benchmarks (GEMM, attention, layernorm, GELU, dropout, losses,
# sampling, embeddings, AdamW) at ELECTRA-small/base shapes. Included from tests/bench/CMakeLists.txt.
if(benchmark_FOUND)
  add_executable(backend_bench ${CMAKE_CURRENT_LIST_DIR}/backend_ops_bench.cpp)
  electra_target_defaults(backend_bench)
  target_link_libraries(backend_bench PRIVATE electra_backend benchmark::benchmark)
  set_target_properties(backend_bench PROPERTIES RUNTIME_OUTPUT_DIRECTORY ${PROJECT_BINARY_DIR}/bench)
endif()
