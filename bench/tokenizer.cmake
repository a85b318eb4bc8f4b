# bench_tokenizer: encode throughput of WikiText-2 test with the Qwen3
# tokenizer, against HF's Rust tokenizers (via Node) and a memory scan, both
# measured in the same run. Run: build/bench/bench_tokenizer [TOKENIZER_JSON TEXT]
add_executable(bench_tokenizer ${CMAKE_CURRENT_SOURCE_DIR}/bench_tokenizer.c)
target_link_libraries(bench_tokenizer PRIVATE ap_model)
target_compile_options(bench_tokenizer PRIVATE ${AP_WARN})
target_compile_definitions(bench_tokenizer PRIVATE AP_REPO_DIR="${CMAKE_SOURCE_DIR}" AP_DATA_DIR="${AP_DATA_DIR}")
