# tokenizer_bench: single-core tokenization throughput (MB/s) of BertTokenizer on a text corpus (default:
# the Python docs of Debian's python3-doc), plus word counting and vocab training speed. A plain program
# (no Google Benchmark needed) so tests/tokenizer/bench_hf_tokenizers.py can run it side by side with
# Hugging Face tokenizers on the same vocab and lines. Included from tests/bench/CMakeLists.txt.
add_executable(tokenizer_bench ${CMAKE_CURRENT_LIST_DIR}/tokenizer_bench.cpp)
electra_target_defaults(tokenizer_bench)
target_link_libraries(tokenizer_bench PRIVATE electra_tokenizer CLI11::CLI11)
set_target_properties(tokenizer_bench PROPERTIES RUNTIME_OUTPUT_DIRECTORY ${PROJECT_BINARY_DIR}/bench)
