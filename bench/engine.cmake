# Engine throughput against the OpenBLAS SGEMM rate of the same machine.
add_executable(bench_forward ${CMAKE_CURRENT_LIST_DIR}/bench_forward.c)
target_compile_options(bench_forward PRIVATE ${AP_WARN})
target_compile_definitions(bench_forward PRIVATE AP_DATA_DIR_DEFAULT="${AP_DATA_DIR}")
target_link_libraries(bench_forward PRIVATE ap_model m)
