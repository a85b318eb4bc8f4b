/*
 * cuda_attention.cu - causal grouped-query attention on the GPU, memory-
 * efficient: keys and values pass through shared memory in tiles of 32 and
 * each query row keeps an online-softmax state (ap_math_ext.h), so no T x T
 * matrix exists at any time; memory is O(T) per (window, head) for lse and
 * delta. FP32 throughout, products on CUDA cores: a straightforward kernel
 * that favours agreement with the CPU backend over speed (a tensor-core
 * flash kernel is the next step for long windows).
 *
 * Layout (ap_kernels.h): q, out [B,T,H,D]; k, v [B,T,KVH,D]; lse [B,H,T].
 * Head dims up to 256 (8 values per lane), even.
 *
 * Forward: a block of ROWS warps takes ROWS consecutive query rows of one
 * (window, head); lane j scores key j of the tile, the warp merges the tile
 * into its running (max, sum) and accumulates p * v with the value tile in
 * shared memory.
 * Backward: delta = dout . out per query row, then two kernels without
 * atomics: dq (warp per query row, loop over keys <= t) and dk/dv (warp per
 * key row of a kv head, loop over the group's query heads and queries >= j).
 */
#include "cuda_common.cuh"

#define ROWS 8      /* warps (rows) per block */
#define TILE 32     /* keys (or queries) per shared-memory tile */
#define MAXD 256
#define DPL (MAXD / 32) /* values per lane */

/* Shared memory layout helpers: tiles padded to D+1 floats per row so that
 * lane j reading row j, column d hits bank (j*(D+1)+d) % 32 = distinct. */
static size_t fwd_smem(int64_t D) { return sizeof(float) * (size_t)(2 * TILE * (D + 1) + ROWS * D); }
static size_t dq_smem(int64_t D) { return sizeof(float) * (size_t)(2 * TILE * (D + 1) + 2 * ROWS * D); }
static size_t dkv_smem(int64_t D) { return sizeof(float) * (size_t)(2 * TILE * (D + 1) + 2 * ROWS * D + 2 * TILE); }

__global__ void k_attn_fwd(float *out, float *lse, const float *q, const float *k, const float *v, int T, int H,
                           int KVH, int D, float scale) {
  extern __shared__ float sm[];
  const int Dp = D + 1;
  float *Ks = sm, *Vs = Ks + TILE * Dp, *Qs = Vs + TILE * Dp;
  const int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
  const int b = blockIdx.z, h = blockIdx.y, kh = h / (H / KVH);
  const int t0 = blockIdx.x * ROWS, t = t0 + w;
  const int tlast = min(t0 + ROWS, T) - 1;
  const bool active = t < T;
  float *qrow = Qs + w * D;
  if (active)
    for (int d = lane; d < D; d += 32) qrow[d] = q[(((int64_t)b * T + t) * H + h) * D + d];
  float m = -INFINITY, l = 0.0f, acc[DPL];
#pragma unroll
  for (int i = 0; i < DPL; i++) acc[i] = 0.0f;

  for (int j0 = 0; j0 <= tlast; j0 += TILE) {
    __syncthreads(); /* previous tile consumed, q rows written */
    for (int idx = threadIdx.x; idx < TILE * D; idx += blockDim.x) {
      int jj = idx / D, d = idx % D, j = j0 + jj;
      float kv = 0.0f, vv = 0.0f;
      if (j < T) {
        int64_t off = (((int64_t)b * T + j) * KVH + kh) * D + d;
        kv = k[off];
        vv = v[off];
      }
      Ks[jj * Dp + d] = kv;
      Vs[jj * Dp + d] = vv;
    }
    __syncthreads();
    if (!active || j0 > t) continue;
    int j = j0 + lane;
    float s = -INFINITY;
    if (j <= t) {
      float dot = 0.0f;
      const float *kr = Ks + lane * Dp;
      for (int d = 0; d < D; d++) dot += qrow[d] * kr[d];
      s = dot * scale;
    }
    /* tile state, then merge into the running state */
    float mt = warp_max_f(s);
    float p = s == -INFINITY ? 0.0f : expf(s - mt);
    float lt = warp_sum_f(p);
    float r1, r2;
    apk_softmax_merge(&m, &l, mt, lt, &r1, &r2);
#pragma unroll
    for (int i = 0; i < DPL; i++) acc[i] *= r1;
    int nk = min(TILE, t - j0 + 1);
    for (int jj = 0; jj < nk; jj++) {
      float pj = __shfl_sync(0xffffffffu, p, jj) * r2;
      const float *vr = Vs + jj * Dp;
#pragma unroll
      for (int i = 0; i < DPL; i++) {
        int d = lane + 32 * i;
        if (d < D) acc[i] += pj * vr[d];
      }
    }
  }
  if (!active) return;
  float inv = 1.0f / l;
  float *o = out + (((int64_t)b * T + t) * H + h) * D;
#pragma unroll
  for (int i = 0; i < DPL; i++) {
    int d = lane + 32 * i;
    if (d < D) o[d] = acc[i] * inv;
  }
  if (lse && lane == 0) lse[((int64_t)b * H + h) * T + t] = apk_softmax_lse(m, l);
}

static int check_dims(int64_t B, int64_t T, int64_t H, int64_t KVH, int64_t D) {
  if (D > MAXD || D < 1) return apk_fail(APK_ENOTSUP, "cuda attention: head_dim %lld (supported: 1..%d)", (long long)D, MAXD);
  if (T > INT32_MAX / 2 || H > 65535 || B > 65535 || KVH < 1)
    return apk_fail(APK_ENOTSUP, "cuda attention: sizes beyond the grid (B %lld, H %lld, T %lld)", (long long)B,
                    (long long)H, (long long)T);
  return APK_OK;
}

static int set_smem(const void *fn, size_t bytes) {
  if (bytes <= 48 * 1024) return APK_OK;
  cudaError_t e = cudaFuncSetAttribute(fn, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)bytes);
  return e == cudaSuccess ? APK_OK : cu_fail(e, "attention shared memory");
}

int cu_attention_forward(cuda_state *st, float *out, float *lse, const float *q, const float *k, const float *v,
                         int64_t B, int64_t T, int64_t H, int64_t KVH, int64_t D) {
  int rc = check_dims(B, T, H, KVH, D);
  if (rc || B * T * H == 0) return rc;
  size_t sm = fwd_smem(D);
  if ((rc = set_smem((const void *)k_attn_fwd, sm))) return rc;
  dim3 grid((unsigned)((T + ROWS - 1) / ROWS), (unsigned)H, (unsigned)B);
  k_attn_fwd<<<grid, ROWS * 32, sm, st->stream>>>(out, lse, q, k, v, (int)T, (int)H, (int)KVH, (int)D,
                                                  1.0f / sqrtf((float)D));
  return cu_check_launch("attention forward");
}

/* delta[b,h,t] = dout . out over the head (float, as the CPU's dotf). */
__global__ void k_attn_delta(float *delta, const float *dout, const float *out, int T, int H, int D, int64_t rows) {
  int lane = threadIdx.x & 31;
  int64_t warps = ((int64_t)gridDim.x * blockDim.x) >> 5;
  for (int64_t r = (blockIdx.x * (int64_t)blockDim.x + threadIdx.x) >> 5; r < rows; r += warps) {
    /* r enumerates [B,T,H] rows; delta is [B,H,T] */
    int64_t h = r % H, bt = r / H, t = bt % T, b = bt / T;
    const float *go = dout + r * D, *o = out + r * D;
    float s = 0.0f;
    for (int d = lane; d < D; d += 32) s += go[d] * o[d];
    s = warp_sum_f(s);
    if (lane == 0) delta[(b * H + h) * T + t] = s;
  }
}

__global__ void k_attn_dq(float *dq, const float *dout, const float *q, const float *k, const float *v,
                          const float *lse, const float *delta, int T, int H, int KVH, int D, float scale) {
  extern __shared__ float sm[];
  const int Dp = D + 1;
  float *Ks = sm, *Vs = Ks + TILE * Dp, *Qs = Vs + TILE * Dp, *Gs = Qs + ROWS * D;
  const int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
  const int b = blockIdx.z, h = blockIdx.y, kh = h / (H / KVH);
  const int t0 = blockIdx.x * ROWS, t = t0 + w;
  const int tlast = min(t0 + ROWS, T) - 1;
  const bool active = t < T;
  float *qrow = Qs + w * D, *grow = Gs + w * D;
  float l = 0.0f, dl = 0.0f;
  if (active) {
    int64_t off = (((int64_t)b * T + t) * H + h) * D;
    for (int d = lane; d < D; d += 32) {
      qrow[d] = q[off + d];
      grow[d] = dout[off + d];
    }
    l = lse[((int64_t)b * H + h) * T + t];
    dl = delta[((int64_t)b * H + h) * T + t];
  }
  float acc[DPL];
#pragma unroll
  for (int i = 0; i < DPL; i++) acc[i] = 0.0f;
  for (int j0 = 0; j0 <= tlast; j0 += TILE) {
    __syncthreads();
    for (int idx = threadIdx.x; idx < TILE * D; idx += blockDim.x) {
      int jj = idx / D, d = idx % D, j = j0 + jj;
      float kv = 0.0f, vv = 0.0f;
      if (j < T) {
        int64_t off = (((int64_t)b * T + j) * KVH + kh) * D + d;
        kv = k[off];
        vv = v[off];
      }
      Ks[jj * Dp + d] = kv;
      Vs[jj * Dp + d] = vv;
    }
    __syncthreads();
    if (!active || j0 > t) continue;
    int j = j0 + lane;
    float ds = 0.0f;
    if (j <= t) {
      float sdot = 0.0f, pdot = 0.0f;
      const float *kr = Ks + lane * Dp, *vr = Vs + lane * Dp;
      for (int d = 0; d < D; d++) {
        sdot += qrow[d] * kr[d];
        pdot += grow[d] * vr[d];
      }
      float p;
      ds = apk_attn_dscore(sdot * scale, l, pdot, dl, &p) * scale;
    }
    int nk = min(TILE, t - j0 + 1);
    for (int jj = 0; jj < nk; jj++) {
      float g = __shfl_sync(0xffffffffu, ds, jj);
      const float *kr = Ks + jj * Dp;
#pragma unroll
      for (int i = 0; i < DPL; i++) {
        int d = lane + 32 * i;
        if (d < D) acc[i] += g * kr[d];
      }
    }
  }
  if (!active) return;
  float *o = dq + (((int64_t)b * T + t) * H + h) * D;
#pragma unroll
  for (int i = 0; i < DPL; i++) {
    int d = lane + 32 * i;
    if (d < D) o[d] += acc[i];
  }
}

/* Warp w owns key row j = blockIdx.x*ROWS + w of kv head kh: it sums over the
 * query heads of the group and the queries t >= j, so dk/dv need no atomics. */
__global__ void k_attn_dkv(float *dk, float *dv, const float *dout, const float *q, const float *k, const float *v,
                           const float *lse, const float *delta, int T, int H, int KVH, int D, float scale) {
  extern __shared__ float sm[];
  const int Dp = D + 1;
  float *Qs = sm, *Gs = Qs + TILE * Dp, *Kr = Gs + TILE * Dp, *Vr = Kr + ROWS * D, *Ls = Vr + ROWS * D,
        *Ds = Ls + TILE;
  const int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
  const int b = blockIdx.z, kh = blockIdx.y, group = H / KVH;
  const int j0 = blockIdx.x * ROWS, j = j0 + w;
  const bool active = j < T;
  float *krow = Kr + w * D, *vrow = Vr + w * D;
  if (active) {
    int64_t off = (((int64_t)b * T + j) * KVH + kh) * D;
    for (int d = lane; d < D; d += 32) {
      krow[d] = k[off + d];
      vrow[d] = v[off + d];
    }
  }
  float adk[DPL], adv[DPL];
#pragma unroll
  for (int i = 0; i < DPL; i++) adk[i] = adv[i] = 0.0f;
  for (int h = kh * group; h < (kh + 1) * group; h++) {
    for (int q0 = j0 - j0 % TILE; q0 < T; q0 += TILE) {
      __syncthreads();
      for (int idx = threadIdx.x; idx < TILE * D; idx += blockDim.x) {
        int tt = idx / D, d = idx % D, t = q0 + tt;
        float qv = 0.0f, gv = 0.0f;
        if (t < T) {
          int64_t off = (((int64_t)b * T + t) * H + h) * D + d;
          qv = q[off];
          gv = dout[off];
        }
        Qs[tt * Dp + d] = qv;
        Gs[tt * Dp + d] = gv;
      }
      for (int tt = threadIdx.x; tt < TILE; tt += blockDim.x) {
        int t = q0 + tt;
        Ls[tt] = t < T ? lse[((int64_t)b * H + h) * T + t] : 0.0f;
        Ds[tt] = t < T ? delta[((int64_t)b * H + h) * T + t] : 0.0f;
      }
      __syncthreads();
      if (!active || q0 + TILE - 1 < j) continue;
      int t = q0 + lane;
      float p = 0.0f, ds = 0.0f;
      if (t >= j && t < T) {
        float sdot = 0.0f, pdot = 0.0f;
        const float *qr = Qs + lane * Dp, *gr = Gs + lane * Dp;
        for (int d = 0; d < D; d++) {
          sdot += qr[d] * krow[d];
          pdot += gr[d] * vrow[d];
        }
        ds = apk_attn_dscore(sdot * scale, Ls[lane], pdot, Ds[lane], &p) * scale;
      }
      for (int tt = 0; tt < TILE; tt++) {
        float pt = __shfl_sync(0xffffffffu, p, tt), gt = __shfl_sync(0xffffffffu, ds, tt);
        if (pt == 0.0f && gt == 0.0f) continue;
        const float *qr = Qs + tt * Dp, *gr = Gs + tt * Dp;
#pragma unroll
        for (int i = 0; i < DPL; i++) {
          int d = lane + 32 * i;
          if (d < D) {
            adv[i] += pt * gr[d];
            adk[i] += gt * qr[d];
          }
        }
      }
    }
  }
  if (!active) return;
  int64_t off = (((int64_t)b * T + j) * KVH + kh) * D;
#pragma unroll
  for (int i = 0; i < DPL; i++) {
    int d = lane + 32 * i;
    if (d < D) {
      dk[off + d] += adk[i];
      dv[off + d] += adv[i];
    }
  }
}

int cu_attention_backward(cuda_state *st, float *dq, float *dk, float *dv, const float *dout, const float *q,
                          const float *k, const float *v, const float *out, const float *lse, int64_t B, int64_t T,
                          int64_t H, int64_t KVH, int64_t D) {
  int rc = check_dims(B, T, H, KVH, D);
  if (rc || B * T * H == 0) return rc;
  float *delta = NULL;
  if ((rc = cu_scratch(st, sizeof(float) * (size_t)(B * H * T), (void **)&delta))) return rc;
  int64_t rows = B * T * H;
  k_attn_delta<<<cu_blocks(rows * 32, 256), 256, 0, st->stream>>>(delta, dout, out, (int)T, (int)H, (int)D, rows);
  if ((rc = cu_check_launch("attention delta"))) return rc;
  float scale = 1.0f / sqrtf((float)D);
  size_t sm1 = dq_smem(D), sm2 = dkv_smem(D);
  if ((rc = set_smem((const void *)k_attn_dq, sm1)) || (rc = set_smem((const void *)k_attn_dkv, sm2))) return rc;
  dim3 g1((unsigned)((T + ROWS - 1) / ROWS), (unsigned)H, (unsigned)B);
  k_attn_dq<<<g1, ROWS * 32, sm1, st->stream>>>(dq, dout, q, k, v, lse, delta, (int)T, (int)H, (int)KVH, (int)D,
                                                scale);
  if ((rc = cu_check_launch("attention dq"))) return rc;
  dim3 g2((unsigned)((T + ROWS - 1) / ROWS), (unsigned)KVH, (unsigned)B);
  k_attn_dkv<<<g2, ROWS * 32, sm2, st->stream>>>(dk, dv, dout, q, k, v, lse, delta, (int)T, (int)H, (int)KVH, (int)D,
                                                 scale);
  return cu_check_launch("attention dk/dv");
}
