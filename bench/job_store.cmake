# bench_job_store: checkpoint write/read throughput of the LMDB job store
# against a plain write()+fdatasync file and a memcpy, measured in the same run.
add_executable(bench_job_store ${CMAKE_CURRENT_LIST_DIR}/bench_job_store.c)
target_compile_options(bench_job_store PRIVATE ${AP_WARN})
target_link_libraries(bench_job_store PRIVATE ap_jobs)
