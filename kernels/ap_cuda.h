/*
 * ap_cuda.h - what the CUDA backend offers beyond the generic op table of
 * ap_kernels.h: GEMM precision, device memory accounting and limit, matrix
 * products with low-precision (BF16/F16) weights, and the weight streamer
 * that keeps a model larger than GPU memory in pinned host memory and uploads
 * it one transformer block at a time, overlapped with compute.
 *
 * Defined by kernels/cuda, i.e. only in builds with APK_HAVE_CUDA (callers
 * guard with #ifdef APK_HAVE_CUDA). All return APK_ codes (ap_kernels.h) and
 * set apk_last_error() on failure.
 *
 * Streams: a CUDA context (apk_ctx_create(APK_CUDA, ...)) owns one
 * non-blocking compute stream; apk_cuda_ctx_stream() returns it as a void *
 * (a cudaStream_t) for the functions below and for ap_prune_gpu.h.
 */
#ifndef AP_CUDA_H
#define AP_CUDA_H

#include <stddef.h>
#include <stdint.h>

#include "ap_kernels.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Number of usable CUDA devices; 0 when there is no driver or no GPU
 * (never an error). */
int apk_cuda_device_count(void);

/* Name (NUL-terminated, truncated to len) and memory of a device.
 * Errors: APK_EDEVICE (bad index / runtime error). */
int apk_cuda_device_info(int device, char *name, size_t len, size_t *total_bytes, size_t *free_bytes);

/* ---- GEMM precision -------------------------------------------------------
 * Matrix products of apk_linear_forward/backward on CUDA contexts:
 *   APK_GEMM_F32  FP32 inputs, FP32 compute (the default; matches the CPU
 *                 backend within 1e-4 relative)
 *   APK_GEMM_TF32 FP32 inputs, TF32 tensor cores (~1e-3 relative)
 *   APK_GEMM_BF16 inputs rounded to BF16, FP32 accumulation (~1e-2 relative
 *                 per product; what production pruning runs use)
 *   APK_GEMM_F16  inputs rounded to F16, FP32 accumulation
 * The mode is read when a context is created: set it before
 * apk_ctx_create. The initial default comes from the environment variable
 * AP_CUDA_GEMM (f32|tf32|bf16|f16), else F32. */
typedef enum { APK_GEMM_F32 = 0, APK_GEMM_TF32 = 1, APK_GEMM_BF16 = 2, APK_GEMM_F16 = 3 } apk_gemm_mode;
int apk_cuda_set_gemm_mode(apk_gemm_mode mode); /* APK_EINVAL for an unknown mode */
apk_gemm_mode apk_cuda_gemm_mode(void);
const char *apk_gemm_mode_name(apk_gemm_mode mode);

/* ---- device memory ----------------------------------------------------------
 * Every allocation of every CUDA context is counted (process-wide, which is
 * how the pruner runs: one job, one GPU). With a limit set, an allocation
 * that would take the total past it fails with APK_ENOMEM and a message
 * naming the limit: that is how --gpu-mem-limit is honoured. 0 = no limit.
 * The initial limit comes from AP_GPU_MEM_LIMIT (e.g. "40G"), else none. */
void apk_cuda_set_mem_limit(uint64_t bytes);
uint64_t apk_cuda_mem_limit(void);
/* Bytes allocated now and the high-water mark since the last reset. */
void apk_cuda_mem_usage(uint64_t *current, uint64_t *peak);
void apk_cuda_mem_reset_peak(void);

/* The compute stream (cudaStream_t) of a CUDA context, or NULL (and
 * apk_last_error) for another backend. */
void *apk_cuda_ctx_stream(apk_ctx *ctx);

/* out[N,OC] = inp[N,IC] W^T (+ bias) with W [OC,IC] in device memory as
 * APK_BF16, APK_F16 or APK_F32 (not converted to F32 first: the input is
 * rounded to W's dtype, products accumulate in FP32). For streamed weights.
 * out, inp, bias: F32 device memory of `ctx`. Asynchronous on ctx's stream. */
int apk_cuda_linear_lowp(apk_ctx *ctx, float *out, const float *inp, const void *weight, apk_dtype weight_dtype,
                         const float *bias, int64_t N, int64_t IC, int64_t OC);

/* ---- pinned host memory -----------------------------------------------------
 * Page-locked host memory, needed for copies that overlap with compute.
 * apk_cuda_host_alloc: *out owned by the caller, freed with
 * apk_cuda_host_free. apk_cuda_host_register pins existing memory (e.g. an
 * mmap'd safetensors file, read-only registration), undone by
 * apk_cuda_host_unregister before the memory goes away. */
int apk_cuda_host_alloc(size_t bytes, void **out);
void apk_cuda_host_free(void *p);
int apk_cuda_host_register(const void *p, size_t bytes);
void apk_cuda_host_unregister(const void *p);

/* ---- weight streamer ---------------------------------------------------------
 * Double-buffered upload of per-block weight bytes, on a copy stream of its
 * own, ordered against the compute stream with events (no host waits):
 *
 *   apk_wstream *ws;
 *   apk_wstream_create(ctx, max_block_bytes, 2, &ws);
 *   apk_wstream_prefetch(ws, 0, host_block[0], bytes[0]);
 *   for (b = 0; b < L; b++) {
 *     if (b + 1 < L) apk_wstream_prefetch(ws, b + 1, host_block[b + 1], bytes[b + 1]);
 *     void *dev; apk_wstream_acquire(ws, b, &dev);   // compute stream waits for b's copy
 *     ... enqueue block b's ops on ctx using dev ...
 *     apk_wstream_release(ws, b);                     // slot reusable once those ops ran
 *   }
 *
 * A block's bytes are one contiguous host range (the model packs a block's
 * originals, masks and norms together); the caller splits the device copy
 * with offsets. Prefetching into a slot waits (on the copy stream) for the
 * release of the block that used it last, so n_slots bounds device memory:
 * n_slots * max_block_bytes. Host memory should be pinned
 * (apk_cuda_host_alloc/register); pageable memory works but the copy then
 * does not overlap. Errors: APK_EINVAL (bytes > max_block_bytes, a block not
 * prefetched, a slot still acquired, n_slots < 1), APK_ENOMEM (device limit),
 * APK_EDEVICE. Counters for the benchmark: bytes
 * uploaded. Not thread-safe; one streamer per context. */
typedef struct apk_wstream apk_wstream;
int apk_wstream_create(apk_ctx *ctx, size_t max_block_bytes, int n_slots, apk_wstream **out);
int apk_wstream_prefetch(apk_wstream *ws, int block, const void *host, size_t bytes);
int apk_wstream_acquire(apk_wstream *ws, int block, void **dev);
int apk_wstream_release(apk_wstream *ws, int block);
/* Total bytes uploaded since creation. */
uint64_t apk_wstream_bytes(const apk_wstream *ws);
/* Waits for every copy and frees the device slots. NULL is a no-op. */
void apk_wstream_destroy(apk_wstream *ws);

#ifdef __cplusplus
}
#endif
#endif
