/*
 * prune_select.cu - per-row selection to a target count and N:M masks on the
 * GPU (ap_prune_gpu.h), twins of ap_mask_rows / ap_mask_nm (mask.c). The
 * score keys, target count, radix steps and the N:M group rule are the
 * shared functions of ap_math_ext.h; only the loops are CUDA.
 */
#include "cuda_common.cuh"

extern "C" {
#include "ap_prune_gpu.h"
}

#define SEL_THREADS 256
#define SEL_WARPS (SEL_THREADS / 32)

/* Device-side results of one call. */
struct sel_status {
  unsigned long long over;
  unsigned long long nan;
};

__device__ __forceinline__ int bit_of(const uint64_t *mask, uint64_t i) { return (int)((mask[i >> 6] >> (i & 63)) & 1u); }

__device__ __forceinline__ uint32_t key_at(const float *w, const float *norms, int64_t row, int64_t cols, int64_t c) {
  return apk_score_key_of(w[row * cols + c], norms ? norms[c] : 1.0f);
}

/* ORs the warp's decisions for 32 consecutive bits starting at `pos` into the
 * mask: the bits straddle at most two 64-bit words. Called by all lanes. */
__device__ __forceinline__ void warp_or_bits(uint64_t *mask, uint64_t pos, int lane_bit) {
  unsigned bits = __ballot_sync(0xffffffffu, lane_bit);
  if ((threadIdx.x & 31) != 0 || bits == 0) return;
  uint64_t w = pos >> 6;
  unsigned sh = (unsigned)(pos & 63);
  uint64_t b = (uint64_t)bits;
  atomicOr((unsigned long long *)&mask[w], (unsigned long long)(b << sh));
  if (sh > 32) atomicOr((unsigned long long *)&mask[w + 1], (unsigned long long)(b >> (64 - sh)));
}

__global__ void k_mask_rows(uint64_t *mask, const float *w, const float *norms, int64_t cols, uint64_t k,
                            sel_status *status) {
  __shared__ uint32_t hist[APK_RADIX_BINS];
  __shared__ unsigned long long sh_u[32];
  __shared__ uint32_t sh_prefix;
  __shared__ unsigned long long sh_k;
  __shared__ unsigned warp_ties[SEL_WARPS];
  const int64_t row = blockIdx.x;
  const uint64_t pos0 = (uint64_t)row * (uint64_t)cols;
  const int lane = threadIdx.x & 31, wid = threadIdx.x >> 5;

  /* 1. pruned count of the row */
  unsigned long long have = 0;
  for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) have += bit_of(mask, pos0 + c);
  have = block_sum_u64(have, sh_u);
  if (have >= k) {
    if (have > k && threadIdx.x == 0) atomicAdd(&status->over, 1ull);
    return;
  }
  const uint64_t need = k - have;
  const bool all = need == (uint64_t)cols - have;

  /* 2. NaN scores among the survivors stop the row (unless all of it goes) */
  if (!all) {
    unsigned long long nan = 0;
    for (int64_t c = threadIdx.x; c < cols; c += blockDim.x)
      nan += !bit_of(mask, pos0 + c) && apk_key_is_nan(key_at(w, norms, row, cols, c));
    nan = block_sum_u64(nan, sh_u);
    if (nan) {
      if (threadIdx.x == 0) atomicAdd(&status->nan, 1ull);
      return;
    }
  }

  /* 3. radix select of the need-th smallest surviving key (rank need-1) */
  uint32_t thr = 0xffffffffu;
  uint64_t quota = 0;
  if (!all) {
    if (threadIdx.x == 0) {
      sh_prefix = 0;
      sh_k = need - 1;
    }
    for (int pass = 0; pass < APK_RADIX_PASSES; pass++) {
      for (int i = threadIdx.x; i < APK_RADIX_BINS; i += blockDim.x) hist[i] = 0;
      __syncthreads();
      uint32_t prefix = sh_prefix;
      for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) {
        if (bit_of(mask, pos0 + c)) continue;
        uint32_t key = key_at(w, norms, row, cols, c);
        if (apk_radix_in_prefix(key, prefix, pass)) atomicAdd(&hist[apk_radix_digit(key, pass)], 1u);
      }
      __syncthreads();
      if (threadIdx.x == 0) {
        uint64_t kk = sh_k;
        unsigned d = apk_radix_pick(hist, &kk);
        sh_k = kk;
        sh_prefix = apk_radix_extend(prefix, pass, d);
      }
      __syncthreads();
    }
    thr = sh_prefix;
    quota = sh_k + 1; /* keys equal to thr that go, in column order */
  }

  /* 4. marking: keys below thr, and the first `quota` equal ones */
  uint64_t ties_before = 0;
  for (int64_t c0 = 0; c0 < cols; c0 += blockDim.x) {
    int64_t c = c0 + threadIdx.x;
    int surv = 0, eq = 0, lt = 0;
    if (c < cols && !bit_of(mask, pos0 + c)) {
      surv = 1;
      uint32_t key = all ? 0u : key_at(w, norms, row, cols, c);
      lt = all || key < thr;
      eq = !all && key == thr;
    }
    unsigned eqb = __ballot_sync(0xffffffffu, eq);
    if (lane == 0) warp_ties[wid] = __popc(eqb);
    __syncthreads();
    uint64_t rank = ties_before + __popc(eqb & ((1u << lane) - 1u));
    for (int i = 0; i < wid; i++) rank += warp_ties[i];
    uint64_t chunk_ties = 0;
    for (int i = 0; i < (int)(blockDim.x >> 5); i++) chunk_ties += warp_ties[i];
    int prune = surv && (lt || (eq && rank < quota));
    warp_or_bits(mask, pos0 + (uint64_t)(c0 + wid * 32), prune && c < cols);
    ties_before += chunk_ties;
    __syncthreads(); /* warp_ties reused */
  }
}

__global__ void k_mask_nm(uint64_t *mask, const float *w, const float *norms, int64_t rows, int64_t cols, unsigned n,
                          unsigned m, sel_status *status) {
  int64_t groups_per_row = (cols + m - 1) / m;
  int64_t total = rows * groups_per_row;
  for (int64_t g = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; g < total; g += (int64_t)gridDim.x * blockDim.x) {
    int64_t row = g / groups_per_row, c0 = (g % groups_per_row) * m;
    unsigned len = (unsigned)(cols - c0 < (int64_t)m ? cols - c0 : (int64_t)m);
    uint64_t pos = (uint64_t)row * (uint64_t)cols + (uint64_t)c0;
    uint32_t keys[64];
    uint64_t old = 0;
    for (unsigned i = 0; i < len; i++) {
      keys[i] = key_at(w, norms, row, cols, c0 + i);
      if (bit_of(mask, pos + i)) {
        old |= (uint64_t)1 << i;
        keys[i] = APK_KEY_PRUNED;
      }
    }
    int over = 0, nan = 0;
    uint64_t bits = apk_nm_group(keys, old, len, n, &over, &nan);
    if (over) atomicAdd(&status->over, 1ull);
    if (nan) atomicAdd(&status->nan, 1ull);
    uint64_t add = bits & ~old;
    if (!add) continue;
    uint64_t wi = pos >> 6;
    unsigned sh = (unsigned)(pos & 63);
    atomicOr((unsigned long long *)&mask[wi], (unsigned long long)(add << sh));
    if (sh && sh + len > 64) atomicOr((unsigned long long *)&mask[wi + 1], (unsigned long long)(add >> (64 - sh)));
  }
}

static int run_select(int nm, uint64_t *mask, const float *w, const float *norms, int64_t rows, int64_t cols,
                      double target, unsigned n, unsigned m, apk_prune_gpu_report *rep, void *stream) {
  cudaStream_t s = cu_stream_of(stream);
  uint64_t nbits = (uint64_t)rows * (uint64_t)cols;
  uint64_t before = 0, after = 0;
  int rc;
  if (rep && (rc = apk_gpu_mask_count(mask, nbits, &before, stream))) return rc;
  sel_status *dst = NULL;
  cudaError_t e = cudaMallocAsync((void **)&dst, sizeof *dst, s);
  if (e != cudaSuccess) return cu_fail(e, "selection status");
  sel_status hs = {0, 0};
  e = cudaMemsetAsync(dst, 0, sizeof *dst, s);
  if (e == cudaSuccess) {
    if (nm) {
      int64_t groups = rows * ((cols + m - 1) / m);
      k_mask_nm<<<cu_blocks(groups, 128), 128, 0, s>>>(mask, w, norms, rows, cols, n, m, dst);
    } else {
      k_mask_rows<<<(unsigned)rows, SEL_THREADS, 0, s>>>(mask, w, norms, cols, apk_prune_target((uint64_t)cols, target),
                                                         dst);
    }
    e = cudaGetLastError();
  }
  if (e == cudaSuccess) e = cudaMemcpyAsync(&hs, dst, sizeof hs, cudaMemcpyDeviceToHost, s);
  cudaFreeAsync(dst, s);
  if (e == cudaSuccess) e = cudaStreamSynchronize(s);
  if (e != cudaSuccess) return cu_fail(e, nm ? "N:M mask" : "row selection");
  if (rep) {
    if ((rc = apk_gpu_mask_count(mask, nbits, &after, stream))) return rc;
    rep->pruned_before = before;
    rep->pruned_after = after;
    rep->units_over = hs.over;
  }
  if (hs.nan)
    return apk_fail(APK_ENAN, "%s: %llu %s with a NaN score among weights that needed pruning",
                    nm ? "N:M mask" : "row selection", hs.nan, nm ? "groups" : "rows");
  return APK_OK;
}

extern "C" int apk_gpu_mask_rows(uint64_t *mask, const float *w, const float *norms, int64_t rows, int64_t cols,
                                 double target, apk_prune_gpu_report *rep, void *stream) {
  if (!mask || !w || rows <= 0 || cols <= 0 || !(target >= 0.0 && target <= 1.0))
    return apk_fail(APK_EINVAL, "mask_rows: NULL pointer, empty layer or target outside [0,1]");
  if (rows > INT32_MAX) return apk_fail(APK_EINVAL, "mask_rows: too many rows");
  return run_select(0, mask, w, norms, rows, cols, target, 0, 0, rep, stream);
}

extern "C" int apk_gpu_mask_nm(uint64_t *mask, const float *w, const float *norms, int64_t rows, int64_t cols,
                               unsigned n, unsigned m, apk_prune_gpu_report *rep, void *stream) {
  if (!mask || !w || rows <= 0 || cols <= 0 || m < 1 || m > 64 || n > m)
    return apk_fail(APK_EINVAL, "mask_nm: NULL pointer, empty layer, m outside [1,64] or n > m");
  if (n == 0) {
    if (rep) {
      uint64_t c = 0;
      int rc = apk_gpu_mask_count(mask, (uint64_t)rows * (uint64_t)cols, &c, stream);
      if (rc) return rc;
      rep->pruned_before = rep->pruned_after = c;
      rep->units_over = 0;
    }
    return APK_OK;
  }
  return run_select(1, mask, w, norms, rows, cols, 0.0, n, m, rep, stream);
}
