/*
 * cuda_common.cuh - internal to kernels/cuda: the per-context state, error
 * helpers, launch sizes and block reductions shared by the .cu files.
 */
#ifndef AP_CUDA_COMMON_CUH
#define AP_CUDA_COMMON_CUH

#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

/* ap_backend.h declares C functions (apk_fail, apk_cuda_backend) without an
 * extern "C" block of its own. */
extern "C" {
#include "ap_backend.h"
}
#include "ap_cuda.h"
#include "ap_math.h"
#include "ap_math_ext.h"

/* Bits of the context's pending-error word, set by kernels that find bad
 * data (they cannot return); reported at the next synchronising call. */
enum { CU_ERR_TOKEN = 1, CU_ERR_TARGET = 2 };

struct cuda_state {
  int device;
  cudaStream_t stream;
  cublasHandle_t blas;
  apk_gemm_mode gemm;
  void *blas_ws;           /* cuBLAS workspace */
  size_t blas_ws_bytes;
  void *scratch;           /* conversions (BF16/F16 GEMM inputs), attention delta */
  size_t scratch_bytes;
  unsigned *dflags;        /* device pending-error word */
  double *dred;            /* device reduction slots */
  size_t dred_n;
  unsigned *hflags;        /* pinned host mirrors */
  double *hred;
};

/* Records a CUDA failure for apk_last_error() and returns APK_EDEVICE. */
int cu_fail(cudaError_t e, const char *what);
int cublas_fail(cublasStatus_t s, const char *what);
/* Launch error of the last kernel, as cu_fail. */
int cu_check_launch(const char *what);

/* Makes sure st->scratch holds `bytes` (stream-ordered reallocation). */
int cu_scratch(cuda_state *st, size_t bytes, void **out);
/* Makes sure st->dred holds n doubles. */
int cu_dred(cuda_state *st, size_t n);

/* Process-wide accounting of device memory (cuda_backend.cu). */
int cu_mem_take(size_t bytes, const char *what);
void cu_mem_give(size_t bytes);

/* Launch geometry: grid-stride loops over n elements. */
static inline unsigned cu_blocks(int64_t n, int threads) {
  int64_t b = (n + threads - 1) / threads;
  if (b < 1) b = 1;
  if (b > 65535 * 8) b = 65535 * 8;
  return (unsigned)b;
}

static inline cudaStream_t cu_stream_of(void *stream) { return (cudaStream_t)stream; }

__device__ __forceinline__ float warp_sum_f(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
__device__ __forceinline__ double warp_sum_d(double v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
__device__ __forceinline__ float warp_max_f(float v) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

/* Block-wide sums and max (blockDim.x a multiple of 32, at most 1024). Every
 * thread gets the result. `sh` needs 32 slots. */
__device__ __forceinline__ double block_sum_d(double v, double *sh) {
  int lane = threadIdx.x & 31, wid = threadIdx.x >> 5, nw = blockDim.x >> 5;
  v = warp_sum_d(v);
  __syncthreads();
  if (lane == 0) sh[wid] = v;
  __syncthreads();
  v = lane < nw ? sh[lane] : 0.0;
  v = warp_sum_d(v);
  return v;
}
__device__ __forceinline__ float block_max_f(float v, float *sh) {
  int lane = threadIdx.x & 31, wid = threadIdx.x >> 5, nw = blockDim.x >> 5;
  v = warp_max_f(v);
  __syncthreads();
  if (lane == 0) sh[wid] = v;
  __syncthreads();
  v = lane < nw ? sh[lane] : -INFINITY;
  v = warp_max_f(v);
  return v;
}
__device__ __forceinline__ unsigned long long block_sum_u64(unsigned long long v, unsigned long long *sh) {
  int lane = threadIdx.x & 31, wid = threadIdx.x >> 5, nw = blockDim.x >> 5;
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  __syncthreads();
  if (lane == 0) sh[wid] = v;
  __syncthreads();
  v = lane < nw ? sh[lane] : 0ull;
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

/* Element i of an F32/F16/BF16 array as float (exact widening). */
__device__ __forceinline__ float cu_load_orig(const void *orig, apk_dtype dt, int64_t i) {
  if (dt == APK_F32) return ((const float *)orig)[i];
  uint16_t h = ((const uint16_t *)orig)[i];
  return dt == APK_BF16 ? apk_bf16_to_f32(h) : apk_f16_to_f32(h);
}

/* Attention kernels (cuda_attention.cu). */
int cu_attention_forward(cuda_state *st, float *out, float *lse, const float *q, const float *k, const float *v,
                         int64_t B, int64_t T, int64_t H, int64_t KVH, int64_t D);
int cu_attention_backward(cuda_state *st, float *dq, float *dk, float *dv, const float *dout, const float *q,
                          const float *k, const float *v, const float *out, const float *lse, int64_t B, int64_t T,
                          int64_t H, int64_t KVH, int64_t D);

/* The state behind a CUDA apk_ctx (cuda_backend.cu), or NULL with a message. */
cuda_state *cu_state_of_ctx(apk_ctx *ctx);

/* GEMM with A/B of `dt` (F32/BF16/F16) already in device memory
 * (cuda_backend.cu): C (col-major m x n, ldc) = alpha op(A) op(B) + beta C. */
int cu_gemm(cuda_state *st, cublasOperation_t ta, cublasOperation_t tb, int64_t m, int64_t n, int64_t k,
            const void *A, apk_dtype adt, int64_t lda, const void *B, apk_dtype bdt, int64_t ldb, float beta,
            float *C, int64_t ldc, cublasComputeType_t compute);
/* dst[i] = src[i] rounded to dt (BF16/F16), n elements. */
int cu_convert(cuda_state *st, void *dst, apk_dtype dt, const float *src, int64_t n);

#endif
