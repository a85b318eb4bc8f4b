# GPU benchmark tools (run by tests/gpu/run.sh on a machine with a GPU):
# gen_model writes a random-weight Llama folder (config.json + safetensors,
# BF16 by default, ~1.1B parameters); bench_gpu times forward, backward,
# profiling and a pruning iteration against cuBLAS's own GEMM rate.
if(TARGET ap_model)
  add_executable(gen_model ${CMAKE_CURRENT_SOURCE_DIR}/gen_model.c)
  target_compile_options(gen_model PRIVATE ${AP_WARN})
  target_link_libraries(gen_model PRIVATE ap_model m)
  if(AP_HAVE_CUDA)
    add_executable(bench_gpu ${CMAKE_CURRENT_SOURCE_DIR}/bench_gpu.c)
    target_compile_options(bench_gpu PRIVATE ${AP_WARN})
    target_link_libraries(bench_gpu PRIVATE ap_model ap_kernels m)
  endif()
endif()
