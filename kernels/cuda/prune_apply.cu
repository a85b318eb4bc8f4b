/*
 * prune_apply.cu - Wanda norms and scores, mask bit counts, mask apply and
 * rollback restore on the GPU (ap_prune_gpu.h). Element math from
 * ap_math.h / ap_math_ext.h.
 */
#include "cuda_common.cuh"

extern "C" {
#include "ap_prune_gpu.h"
}

__global__ void k_norms(float *norms, const double *xsq, int64_t cols, unsigned long long *bad) {
  for (int64_t j = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; j < cols; j += (int64_t)gridDim.x * blockDim.x) {
    double x = xsq[j];
    if (!(x >= 0.0)) atomicAdd(bad, 1ull); /* NaN or negative */
    norms[j] = apk_wanda_norm(x);
  }
}

extern "C" int apk_gpu_wanda_norms(float *norms, const double *xsq, int64_t cols, void *stream) {
  if (!norms || !xsq || cols <= 0) return apk_fail(APK_EINVAL, "wanda_norms: NULL pointer or cols <= 0");
  cudaStream_t s = cu_stream_of(stream);
  unsigned long long *d = NULL, h = 0;
  cudaError_t e = cudaMallocAsync((void **)&d, sizeof *d, s);
  if (e != cudaSuccess) return cu_fail(e, "wanda norms");
  e = cudaMemsetAsync(d, 0, sizeof *d, s);
  if (e == cudaSuccess) {
    k_norms<<<cu_blocks(cols, 256), 256, 0, s>>>(norms, xsq, cols, d);
    e = cudaGetLastError();
  }
  if (e == cudaSuccess) e = cudaMemcpyAsync(&h, d, sizeof h, cudaMemcpyDeviceToHost, s);
  cudaFreeAsync(d, s);
  if (e == cudaSuccess) e = cudaStreamSynchronize(s);
  if (e != cudaSuccess) return cu_fail(e, "wanda norms");
  if (h) return apk_fail(APK_ENAN, "wanda_norms: %llu column statistics are NaN or negative", h);
  return APK_OK;
}

__global__ void k_scores(float *scores, const float *w, const float *norms, int64_t rows, int64_t cols) {
  int64_t n = rows * cols;
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
    scores[i] = apk_bits_to_f32(apk_score_key_of(w[i], norms ? norms[i % cols] : 1.0f));
}

extern "C" int apk_gpu_wanda_scores(float *scores, const float *w, const float *norms, int64_t rows, int64_t cols,
                                    void *stream) {
  if (!scores || !w || rows <= 0 || cols <= 0) return apk_fail(APK_EINVAL, "wanda_scores: NULL pointer or empty layer");
  k_scores<<<cu_blocks(rows * cols, 256), 256, 0, cu_stream_of(stream)>>>(scores, w, norms, rows, cols);
  return cu_check_launch("wanda scores");
}

__global__ void k_count(const uint64_t *mask, uint64_t nbits, unsigned long long *out) {
  __shared__ unsigned long long sh[32];
  uint64_t nw = (nbits + 63) / 64;
  unsigned long long c = 0;
  for (uint64_t i = blockIdx.x * (uint64_t)blockDim.x + threadIdx.x; i < nw; i += (uint64_t)gridDim.x * blockDim.x) {
    uint64_t v = mask[i];
    if (i == nw - 1 && (nbits & 63)) v &= ((uint64_t)1 << (nbits & 63)) - 1;
    c += (unsigned long long)apk_popcount64(v);
  }
  c = block_sum_u64(c, sh);
  if (threadIdx.x == 0) atomicAdd(out, c);
}

extern "C" int apk_gpu_mask_count(const uint64_t *mask, uint64_t nbits, uint64_t *count, void *stream) {
  if (!mask || !count) return apk_fail(APK_EINVAL, "mask_count: NULL pointer");
  *count = 0;
  if (nbits == 0) return APK_OK;
  cudaStream_t s = cu_stream_of(stream);
  unsigned long long *d = NULL, h = 0;
  cudaError_t e = cudaMallocAsync((void **)&d, sizeof *d, s);
  if (e != cudaSuccess) return cu_fail(e, "mask count");
  e = cudaMemsetAsync(d, 0, sizeof *d, s);
  if (e == cudaSuccess) {
    unsigned blocks = cu_blocks((int64_t)((nbits + 63) / 64), 256);
    if (blocks > 2048) blocks = 2048;
    k_count<<<blocks, 256, 0, s>>>(mask, nbits, d);
    e = cudaGetLastError();
  }
  if (e == cudaSuccess) e = cudaMemcpyAsync(&h, d, sizeof h, cudaMemcpyDeviceToHost, s);
  cudaFreeAsync(d, s);
  if (e == cudaSuccess) e = cudaStreamSynchronize(s);
  if (e != cudaSuccess) return cu_fail(e, "mask count");
  *count = h;
  return APK_OK;
}

/* One thread per weight: coalesced loads and stores; the 32 threads of a
 * warp share one or two mask words, which the cache serves. */
__global__ void k_apply(float *work, const void *orig, int dt, const uint64_t *mask, uint64_t n) {
  for (uint64_t i = blockIdx.x * (uint64_t)blockDim.x + threadIdx.x; i < n; i += (uint64_t)gridDim.x * blockDim.x)
    work[i] = (mask && ((mask[i >> 6] >> (i & 63)) & 1)) ? 0.0f : cu_load_orig(orig, (apk_dtype)dt, (int64_t)i);
}

static int check_orig(const void *orig, apk_dtype dt, const char *op) {
  if (dt != APK_F32 && dt != APK_F16 && dt != APK_BF16)
    return apk_fail(APK_EINVAL, "%s: original weights must be F32, F16 or BF16", op);
  if ((uintptr_t)orig % apk_dtype_size(dt))
    return apk_fail(APK_EINVAL, "%s: original weights not aligned to their element size", op);
  return APK_OK;
}

extern "C" int apk_gpu_mask_apply(float *work, const void *orig, apk_dtype orig_dtype, const uint64_t *mask,
                                  uint64_t n, void *stream) {
  if (!work || !orig) return apk_fail(APK_EINVAL, "mask_apply: NULL pointer");
  int rc = check_orig(orig, orig_dtype, "mask_apply");
  if (rc || n == 0) return rc;
  k_apply<<<cu_blocks((int64_t)n, 256), 256, 0, cu_stream_of(stream)>>>(work, orig, (int)orig_dtype, mask, n);
  return cu_check_launch("mask apply");
}

__global__ void k_restore(float *work, const void *orig, int dt, const uint64_t *newer, const uint64_t *older,
                          uint64_t n) {
  uint64_t nw = (n + 63) / 64;
  for (uint64_t wi = blockIdx.x * (uint64_t)blockDim.x + threadIdx.x; wi < nw; wi += (uint64_t)gridDim.x * blockDim.x) {
    uint64_t diff = newer[wi] & ~older[wi];
    while (diff) {
      uint64_t i = wi * 64 + (uint64_t)(__ffsll((long long)diff) - 1);
      if (i < n) work[i] = cu_load_orig(orig, (apk_dtype)dt, (int64_t)i);
      diff &= diff - 1;
    }
  }
}

extern "C" int apk_gpu_mask_restore(float *work, const void *orig, apk_dtype orig_dtype, const uint64_t *newer,
                                    const uint64_t *older, uint64_t n, void *stream) {
  if (!work || !orig || !newer || !older) return apk_fail(APK_EINVAL, "mask_restore: NULL pointer");
  int rc = check_orig(orig, orig_dtype, "mask_restore");
  if (rc || n == 0) return rc;
  k_restore<<<cu_blocks((int64_t)((n + 63) / 64), 128), 128, 0, cu_stream_of(stream)>>>(work, orig, (int)orig_dtype,
                                                                                         newer, older, n);
  return cu_check_launch("mask restore");
}
