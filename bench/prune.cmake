# bench_mask: score+mask throughput of ap_prune against a streaming copy
# measured in the same run.
add_executable(bench_mask ${CMAKE_CURRENT_SOURCE_DIR}/bench_mask.c)
target_compile_options(bench_mask PRIVATE ${AP_WARN})
target_link_libraries(bench_mask PRIVATE ap_prune m)
