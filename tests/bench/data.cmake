# data_bench: electra-preprocess throughput (MB/s per rank, end to end on the Python docs corpus of
# Debian's python3-doc) and loader throughput (batches/s at batch 128, seq 128, with a warm and a cold
# chunk cache). Included from tests/bench/CMakeLists.txt; not run by CTest.
if(benchmark_FOUND)
  add_executable(data_bench ${CMAKE_CURRENT_LIST_DIR}/data_bench.cpp)
  electra_target_defaults(data_bench)
  target_link_libraries(data_bench PRIVATE electra_loader electra_preprocess electra_tokenizer benchmark::benchmark)
  set_target_properties(data_bench PROPERTIES RUNTIME_OUTPUT_DIRECTORY ${PROJECT_BINARY_DIR}/bench)
endif()
