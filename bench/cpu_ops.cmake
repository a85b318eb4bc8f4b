# bench_cpu_ops: the CPU backend's vector kernels against its scalar loops
# (APK_CPU_SIMD=0), per op at the shared models' shapes, in the same run.
add_executable(bench_cpu_ops ${CMAKE_CURRENT_LIST_DIR}/bench_cpu_ops.c)
target_compile_options(bench_cpu_ops PRIVATE ${AP_WARN})
target_link_libraries(bench_cpu_ops PRIVATE ap_kernels m)
