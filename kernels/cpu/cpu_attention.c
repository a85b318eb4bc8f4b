/*
 * cpu_attention.c - causal grouped-query attention on the CPU, forward and
 * backward (the entries apk_cpu_attention_* of the backend table).
 *
 * Two paths give the same results within float rounding:
 *
 *  - AVX2+FMA (head_dim a multiple of 8): the keys of each (window, kv head)
 *    are first packed transposed, Kt[d][j], so that one query's scores for 16
 *    consecutive keys are 2 vector FMAs per dimension, and QR = 4 query rows
 *    are computed together so that every key vector loaded serves 4 rows.
 *    The scores of those rows (QR x T floats) stay in L1, exp is the vector
 *    polynomial of simd_math.h, and the weighted sum of values again serves
 *    4 rows per value loaded. With small heads (head_dim 8 or 32) the old
 *    one-row-at-a-time loop spent its time in scalar expf and in horizontal
 *    sums of 8-element dot products; this layout has neither. Softmax row
 *    sums are kept in 16 float lanes (at most T/16 terms each, all <= 1)
 *    instead of the scalar path's F64: ~1e-7 relative, well inside the
 *    ~1e-5 the tests allow.
 *  - scalar (any head_dim, or no AVX2): one score row per query, libm expf.
 *
 * Threads: the forward runs (window, head, block of QBLOCK queries) tasks,
 * largest blocks first; the backward runs (window, kv head) tasks, because
 * every query head of a group and every query row adds into the same dk/dv
 * rows, and one owner keeps the sums free of races and of atomics. Each
 * output element is computed by exactly one task in a fixed order, so the
 * results do not depend on the thread count. (So one window of a model with
 * a single kv head runs its attention backward on one thread.)
 *
 * Memory (AVX2 path): the forward packs the keys of the whole call,
 * B x KVH x D x T floats (T rounded up to 16), plus QR x T scores per
 * thread; the backward packs one (window, kv head) per thread, 2 x D x T
 * floats, plus 2 x QR x T. No T x T matrix is materialised.
 */
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "ap_backend.h"
#include "cpu_internal.h"
#include "simd_math.h"

static inline float dotf(const float *a, const float *b, int64_t n) {
  float s = 0.0f;
#pragma omp simd reduction(+ : s)
  for (int64_t i = 0; i < n; i++) s += a[i] * b[i];
  return s;
}

static inline void axpyf(float *y, float a, const float *x, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; i++) y[i] += a * x[i];
}

/* Work (in multiply-adds) above which attention runs on the OpenMP team. */
static int attention_parallel(int64_t B, int64_t T, int64_t H, int64_t D) {
  return B * H * T * T * D > 2 * APK_CPU_PAR_MIN;
}

/* ---- scalar path --------------------------------------------------------------- */

/* One (window, head, query) row at a time: scores for keys 0..t into a row of
 * T floats, softmax, weighted sum of values. */
static int scalar_forward(float *out, float *lse, const float *q, const float *k, const float *v, int64_t B, int64_t T,
                          int64_t H, int64_t KVH, int64_t D) {
  float scale = 1.0f / sqrtf((float)D);
  int64_t group = H / KVH;
  int failed = 0;
#pragma omp parallel if (attention_parallel(B, T, H, D))
  {
    float *row = malloc((size_t)T * sizeof(float));
    float *acc = malloc((size_t)D * sizeof(float));
    if (!row || !acc) {
#pragma omp atomic write
      failed = 1;
    }
#pragma omp for schedule(dynamic, 8)
    for (int64_t idx = 0; idx < B * H * T; idx++) {
      if (!row || !acc) continue;
      int64_t t = idx % T, h = (idx / T) % H, b = idx / (T * H);
      int64_t kh = h / group;
      const float *qv = q + ((b * T + t) * H + h) * D;
      float mx = -INFINITY;
      for (int64_t j = 0; j <= t; j++) {
        float s = dotf(qv, k + ((b * T + j) * KVH + kh) * D, D) * scale;
        row[j] = s;
        if (s > mx) mx = s;
      }
      double sum = 0.0;
      for (int64_t j = 0; j <= t; j++) {
        float p = expf(row[j] - mx);
        row[j] = p;
        sum += p;
      }
      memset(acc, 0, (size_t)D * sizeof(float));
      for (int64_t j = 0; j <= t; j++) axpyf(acc, row[j], v + ((b * T + j) * KVH + kh) * D, D);
      float inv = (float)(1.0 / sum);
      float *o = out + ((b * T + t) * H + h) * D;
      for (int64_t d = 0; d < D; d++) o[d] = acc[d] * inv;
      if (lse) lse[(b * H + h) * T + t] = mx + (float)log(sum);
    }
    free(row);
    free(acc);
  }
  if (failed) return apk_fail(APK_ENOMEM, "attention: out of memory for a score row");
  return APK_OK;
}

static int scalar_backward(float *dq, float *dk, float *dv, const float *dout, const float *q, const float *k,
                           const float *v, const float *out, const float *lse, int64_t B, int64_t T, int64_t H,
                           int64_t KVH, int64_t D) {
  float scale = 1.0f / sqrtf((float)D);
  int64_t group = H / KVH;
  int failed = 0;
#pragma omp parallel if (attention_parallel(B, T, H, D))
  {
    float *row = malloc((size_t)T * sizeof(float));
    if (!row) {
#pragma omp atomic write
      failed = 1;
    }
#pragma omp for schedule(dynamic, 1)
    for (int64_t idx = 0; idx < B * KVH; idx++) {
      if (!row) continue;
      int64_t b = idx / KVH, kh = idx % KVH;
      for (int64_t h = kh * group; h < (kh + 1) * group; h++) {
        for (int64_t t = 0; t < T; t++) {
          const float *qv = q + ((b * T + t) * H + h) * D;
          const float *go = dout + ((b * T + t) * H + h) * D;
          const float *o = out + ((b * T + t) * H + h) * D;
          float *gq = dq + ((b * T + t) * H + h) * D;
          float l = lse[(b * H + h) * T + t];
          float delta = dotf(go, o, D);
          for (int64_t j = 0; j <= t; j++) {
            const float *kv = k + ((b * T + j) * KVH + kh) * D;
            const float *vv = v + ((b * T + j) * KVH + kh) * D;
            float p = expf(dotf(qv, kv, D) * scale - l);
            float dp = dotf(go, vv, D);
            row[j] = p * (dp - delta);
            axpyf(dv + ((b * T + j) * KVH + kh) * D, p, go, D);
          }
          for (int64_t j = 0; j <= t; j++) {
            float ds = row[j] * scale;
            axpyf(gq, ds, k + ((b * T + j) * KVH + kh) * D, D);
            axpyf(dk + ((b * T + j) * KVH + kh) * D, ds, qv, D);
          }
        }
      }
    }
    free(row);
  }
  if (failed) return apk_fail(APK_ENOMEM, "attention backward: out of memory for a score row");
  return APK_OK;
}

/* ---- AVX2 path ------------------------------------------------------------------ */

#if APK_CPU_HAVE_AVX2

enum {
  QR = 4,       /* query rows computed together (register blocking) */
  KC = 16,      /* keys per score step: two 8-lane vectors */
  QBLOCK = 32   /* query rows per forward task */
};

static inline int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

static float *alloc_floats(int64_t n) {
  size_t bytes = ((size_t)n * sizeof(float) + 63) & ~(size_t)63;
  return aligned_alloc(64, bytes ? bytes : 64);
}

/* Kt[d * ldk + j] = x[j * stride + d] for j < T, 0 for T <= j < ldk. */
static void pack_transposed(float *Kt, int64_t ldk, const float *x, int64_t stride, int64_t T, int64_t D) {
  for (int64_t j = 0; j < T; j++) {
    const float *src = x + j * stride;
    for (int64_t d = 0; d < D; d++) Kt[d * ldk + j] = src[d];
  }
  for (int64_t d = 0; d < D; d++)
    for (int64_t j = T; j < ldk; j++) Kt[d * ldk + j] = 0.0f;
}

/* S[i * lds + j] = sum_d a[i * D + d] * Kt[d * ldk + j] for the QR rows of a
 * and the keys j < len (len a multiple of KC; Kt and S 32-byte aligned).
 * With valid0 > 0 the causal mask is applied on the way: row i keeps keys
 * j < valid0 + i and gets -inf beyond (exp then gives 0), and rowmax[i]
 * receives the row's maximum. */
static APK_AVX2 void scores_avx2(float *S, int64_t lds, const float *a, const float *Kt, int64_t ldk, int64_t D,
                                 int64_t len, int64_t valid0, float *rowmax) {
  const __m256 ninf = _mm256_set1_ps(-INFINITY);
  const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  __m256 mx[QR];
  for (int i = 0; i < QR; i++) mx[i] = ninf;
  for (int64_t j = 0; j < len; j += KC) {
    __m256 acc[QR][2];
    for (int i = 0; i < QR; i++) acc[i][0] = acc[i][1] = _mm256_setzero_ps();
    const float *kt = Kt + j;
    for (int64_t d = 0; d < D; d++, kt += ldk) {
      __m256 k0 = _mm256_load_ps(kt), k1 = _mm256_load_ps(kt + 8);
      for (int i = 0; i < QR; i++) {
        __m256 x = _mm256_broadcast_ss(a + i * D + d);
        acc[i][0] = _mm256_fmadd_ps(x, k0, acc[i][0]);
        acc[i][1] = _mm256_fmadd_ps(x, k1, acc[i][1]);
      }
    }
    if (valid0 > 0 && j + KC > valid0) { /* the chunk that holds the diagonal */
      __m256i idx0 = _mm256_add_epi32(_mm256_set1_epi32((int)j), lane);
      __m256i idx1 = _mm256_add_epi32(idx0, _mm256_set1_epi32(8));
      for (int i = 0; i < QR; i++) {
        __m256i lim = _mm256_set1_epi32((int)(valid0 + i));
        acc[i][0] = _mm256_blendv_ps(ninf, acc[i][0], _mm256_castsi256_ps(_mm256_cmpgt_epi32(lim, idx0)));
        acc[i][1] = _mm256_blendv_ps(ninf, acc[i][1], _mm256_castsi256_ps(_mm256_cmpgt_epi32(lim, idx1)));
      }
    }
    for (int i = 0; i < QR; i++) {
      _mm256_store_ps(S + i * lds + j, acc[i][0]);
      _mm256_store_ps(S + i * lds + j + 8, acc[i][1]);
      mx[i] = _mm256_max_ps(mx[i], _mm256_max_ps(acc[i][0], acc[i][1]));
    }
  }
  if (rowmax)
    for (int i = 0; i < QR; i++) rowmax[i] = apk_hmax8(mx[i]);
}

/* Row softmax numerator in place, s[j] = exp(s[j] - m) for the row max m;
 * returns the sum of the exponentials. */
static APK_AVX2 float softmax_row_avx2(float *s, int64_t len, float m) {
  __m256 vm = _mm256_set1_ps(m);
  __m256 s0 = _mm256_setzero_ps(), s1 = s0;
  for (int64_t j = 0; j < len; j += KC) {
    __m256 p0 = apk_exp8(_mm256_sub_ps(_mm256_load_ps(s + j), vm));
    __m256 p1 = apk_exp8(_mm256_sub_ps(_mm256_load_ps(s + j + 8), vm));
    _mm256_store_ps(s + j, p0);
    _mm256_store_ps(s + j + 8, p1);
    s0 = _mm256_add_ps(s0, p0);
    s1 = _mm256_add_ps(s1, p1);
  }
  return apk_hsum8(_mm256_add_ps(s0, s1));
}

/* o[i * ldo + c] = row_scale[i] * sum_{j < nkeys} P[i * lds + j] v[j * ldv + c]
 * for the first `rows` of the QR rows. */
static APK_AVX2 void weighted_values_avx2(float *o, int64_t ldo, const float *P, int64_t lds, const float *v,
                                          int64_t ldv, int64_t nkeys, int64_t D, const float *row_scale, int rows) {
  for (int64_t c = 0; c < D; c += 8) {
    __m256 acc[QR];
    for (int i = 0; i < QR; i++) acc[i] = _mm256_setzero_ps();
    const float *vj = v + c;
#pragma GCC unroll 2
    for (int64_t j = 0; j < nkeys; j++, vj += ldv) {
      __m256 x = _mm256_loadu_ps(vj);
      for (int i = 0; i < QR; i++) acc[i] = _mm256_fmadd_ps(_mm256_broadcast_ss(P + i * lds + j), x, acc[i]);
    }
    /* constant trip count with a test inside: acc then stays in registers
     * (a variable bound makes GCC keep the array in memory) */
    for (int i = 0; i < QR; i++)
      if (i < rows) _mm256_storeu_ps(o + i * ldo + c, _mm256_mul_ps(acc[i], _mm256_set1_ps(row_scale[i])));
  }
}

static APK_AVX2 int avx2_forward(float *out, float *lse, const float *q, const float *k, const float *v, int64_t B,
                                 int64_t T, int64_t H, int64_t KVH, int64_t D) {
  float scale = 1.0f / sqrtf((float)D);
  int64_t group = H / KVH, ldk = round_up(T, KC), nblk = (T + QBLOCK - 1) / QBLOCK;
  int64_t ldq = H * D, ldkv = KVH * D;
  float *Kt = alloc_floats(B * KVH * D * ldk);
  if (!Kt) return apk_fail(APK_ENOMEM, "attention: out of memory for %lld packed keys", (long long)(B * KVH * T));
  int failed = 0;
#pragma omp parallel if (attention_parallel(B, T, H, D))
  {
    float *S = alloc_floats(QR * ldk), *qs = alloc_floats(QR * D);
    if (!S || !qs) {
#pragma omp atomic write
      failed = 1;
    }
#pragma omp for schedule(static)
    for (int64_t bk = 0; bk < B * KVH; bk++) {
      int64_t b = bk / KVH, kh = bk % KVH;
      pack_transposed(Kt + bk * D * ldk, ldk, k + (b * T * KVH + kh) * D, ldkv, T, D);
    }
    /* the implicit barrier: every Kt is packed before any task reads it */
#pragma omp for schedule(dynamic, 1)
    for (int64_t task = 0; task < B * H * nblk; task++) {
      if (!S || !qs) continue;
      int64_t blk = nblk - 1 - task % nblk, h = (task / nblk) % H, b = task / (nblk * H), kh = h / group;
      const float *kt = Kt + (b * KVH + kh) * D * ldk;
      const float *vb = v + (b * T * KVH + kh) * D;
      int64_t t_end = (blk + 1) * QBLOCK < T ? (blk + 1) * QBLOCK : T;
      for (int64_t t0 = blk * QBLOCK; t0 < t_end; t0 += QR) {
        int rows = t_end - t0 < QR ? (int)(t_end - t0) : QR;
        int64_t len = round_up(t0 + rows, KC);
        for (int i = 0; i < QR; i++)
          for (int64_t d = 0; d < D; d++) qs[i * D + d] = i < rows ? q[((b * T + t0 + i) * H + h) * D + d] * scale : 0.0f;
        float inv[QR], mx[QR];
        scores_avx2(S, ldk, qs, kt, ldk, D, len, t0 + 1, mx);
        for (int i = 0; i < QR; i++) {
          float *s = S + i * ldk;
          if (i >= rows) { /* no query: zero weights, no output */
            memset(s, 0, (size_t)len * sizeof(float));
            inv[i] = 0.0f;
            continue;
          }
          float sum = softmax_row_avx2(s, len, mx[i]);
          inv[i] = 1.0f / sum;
          if (lse) lse[(b * H + h) * T + t0 + i] = mx[i] + logf(sum);
        }
        weighted_values_avx2(out + ((b * T + t0) * H + h) * D, ldq, S, ldk, vb, ldkv, t0 + rows, D, inv, rows);
      }
    }
    free(S);
    free(qs);
  }
  free(Kt);
  if (failed) return apk_fail(APK_ENOMEM, "attention: out of memory for score rows");
  return APK_OK;
}

/* For QR query rows against keys j < nkeys, 8 dimensions [c, c + 8) at a time:
 *   dv[j] += sum_i P[i][j] go[i],  dk[j] += sum_i dS[i][j] qr[i],
 *   dq[i] += sum_j dS[i][j] k[j]   (dS already carries the 1/sqrt(D) factor). */
static APK_AVX2 void backward_updates_avx2(float *dq, int64_t lddq, float *dk, float *dv, int64_t ldkv,
                                           const float *kb, const float *P, const float *dS, int64_t lds,
                                           const float *go, const float *qr, int rows, int64_t nkeys, int64_t D) {
  for (int64_t c = 0; c < D; c += 8) {
    __m256 g[QR], x[QR], acc[QR];
    for (int i = 0; i < QR; i++) {
      g[i] = _mm256_load_ps(go + i * D + c);
      x[i] = _mm256_load_ps(qr + i * D + c);
      acc[i] = _mm256_setzero_ps();
    }
    for (int64_t j = 0; j < nkeys; j++) {
      float *dvj = dv + j * ldkv + c, *dkj = dk + j * ldkv + c;
      __m256 kj = _mm256_loadu_ps(kb + j * ldkv + c);
      __m256 a = _mm256_loadu_ps(dvj), e = _mm256_loadu_ps(dkj);
      for (int i = 0; i < QR; i++) {
        __m256 p = _mm256_broadcast_ss(P + i * lds + j), ds = _mm256_broadcast_ss(dS + i * lds + j);
        a = _mm256_fmadd_ps(p, g[i], a);
        e = _mm256_fmadd_ps(ds, x[i], e);
        acc[i] = _mm256_fmadd_ps(ds, kj, acc[i]);
      }
      _mm256_storeu_ps(dvj, a);
      _mm256_storeu_ps(dkj, e);
    }
    for (int i = 0; i < QR; i++) /* constant trip count: see weighted_values_avx2 */
      if (i < rows) {
        float *d = dq + i * lddq + c;
        _mm256_storeu_ps(d, _mm256_add_ps(_mm256_loadu_ps(d), acc[i]));
      }
  }
}

static APK_AVX2 int avx2_backward(float *dq, float *dk, float *dv, const float *dout, const float *q, const float *k,
                                  const float *v, const float *out, const float *lse, int64_t B, int64_t T, int64_t H,
                                  int64_t KVH, int64_t D) {
  float scale = 1.0f / sqrtf((float)D);
  int64_t group = H / KVH, ldk = round_up(T, KC), ldq = H * D, ldkv = KVH * D;
  int failed = 0;
#pragma omp parallel if (attention_parallel(B, T, H, D))
  {
    float *Kt = alloc_floats(D * ldk), *Vt = alloc_floats(D * ldk);
    float *P = alloc_floats(QR * ldk), *dS = alloc_floats(QR * ldk);
    float *qs = alloc_floats(QR * D), *qr = alloc_floats(QR * D), *go = alloc_floats(QR * D);
    int ok = Kt && Vt && P && dS && qs && qr && go;
    if (!ok) {
#pragma omp atomic write
      failed = 1;
    }
#pragma omp for schedule(dynamic, 1)
    for (int64_t bk = 0; bk < B * KVH; bk++) {
      if (!ok) continue;
      int64_t b = bk / KVH, kh = bk % KVH;
      const float *kb = k + (b * T * KVH + kh) * D, *vb = v + (b * T * KVH + kh) * D;
      float *dkb = dk + (b * T * KVH + kh) * D, *dvb = dv + (b * T * KVH + kh) * D;
      pack_transposed(Kt, ldk, kb, ldkv, T, D);
      pack_transposed(Vt, ldk, vb, ldkv, T, D);
      for (int64_t h = kh * group; h < (kh + 1) * group; h++) {
        for (int64_t t0 = 0; t0 < T; t0 += QR) {
          int rows = T - t0 < QR ? (int)(T - t0) : QR;
          int64_t len = round_up(t0 + rows, KC);
          float l[QR], delta[QR];
          for (int i = 0; i < QR; i++) {
            int64_t off = ((b * T + t0 + i) * H + h) * D;
            for (int64_t d = 0; d < D; d++) {
              qr[i * D + d] = i < rows ? q[off + d] : 0.0f;
              qs[i * D + d] = i < rows ? q[off + d] * scale : 0.0f;
              go[i * D + d] = i < rows ? dout[off + d] : 0.0f;
            }
            l[i] = i < rows ? lse[(b * H + h) * T + t0 + i] : 0.0f;
            delta[i] = i < rows ? dotf(dout + off, out + off, D) : 0.0f;
          }
          scores_avx2(P, ldk, qs, Kt, ldk, D, len, t0 + 1, NULL);
          scores_avx2(dS, ldk, go, Vt, ldk, D, len, 0, NULL);
          for (int i = 0; i < QR; i++) {
            float *p = P + i * ldk, *ds = dS + i * ldk;
            if (i >= rows) {
              memset(p, 0, (size_t)len * sizeof(float));
              memset(ds, 0, (size_t)len * sizeof(float));
              continue;
            }
            __m256 vl = _mm256_set1_ps(l[i]), vd = _mm256_set1_ps(delta[i]), vs = _mm256_set1_ps(scale);
            for (int64_t j = 0; j < len; j += 8) {
              __m256 pj = apk_exp8(_mm256_sub_ps(_mm256_load_ps(p + j), vl));
              __m256 dp = _mm256_sub_ps(_mm256_load_ps(ds + j), vd);
              _mm256_store_ps(p + j, pj);
              _mm256_store_ps(ds + j, _mm256_mul_ps(_mm256_mul_ps(pj, dp), vs));
            }
          }
          backward_updates_avx2(dq + ((b * T + t0) * H + h) * D, ldq, dkb, dvb, ldkv, kb, P, dS, ldk, go, qr, rows,
                                t0 + rows, D);
        }
      }
    }
    free(Kt), free(Vt), free(P), free(dS), free(qs), free(qr), free(go);
  }
  if (failed) return apk_fail(APK_ENOMEM, "attention backward: out of memory for score rows");
  return APK_OK;
}

#endif /* APK_CPU_HAVE_AVX2 */

/* ---- entries --------------------------------------------------------------------- */

int apk_cpu_attention_forward(void *state, float *out, float *lse, const float *q, const float *k, const float *v,
                              int64_t B, int64_t T, int64_t H, int64_t KVH, int64_t D) {
  if (B == 0 || T == 0 || H == 0) return APK_OK;
#if APK_CPU_HAVE_AVX2
  if (apk_cpu_simd(state) && D % 8 == 0) return avx2_forward(out, lse, q, k, v, B, T, H, KVH, D);
#endif
  return scalar_forward(out, lse, q, k, v, B, T, H, KVH, D);
}

int apk_cpu_attention_backward(void *state, float *dq, float *dk, float *dv, const float *dout, const float *q,
                               const float *k, const float *v, const float *out, const float *lse, int64_t B,
                               int64_t T, int64_t H, int64_t KVH, int64_t D) {
  if (B == 0 || T == 0 || H == 0) return APK_OK;
#if APK_CPU_HAVE_AVX2
  if (apk_cpu_simd(state) && D % 8 == 0) return avx2_backward(dq, dk, dv, dout, q, k, v, out, lse, B, T, H, KVH, D);
#endif
  return scalar_backward(dq, dk, dv, dout, q, k, v, out, lse, B, T, H, KVH, D);
}
