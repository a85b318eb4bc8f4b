/*
 * cpu_ops.c - the CPU backend: matrix products on OpenBLAS SGEMM, everything
 * else as OpenMP loops over rows (or columns for the column statistics).
 *
 * BLAS is never called from inside an OpenMP region: OpenBLAS (pthread build)
 * runs its own threads, and nesting the two oversubscribes the cores. The
 * attention is therefore written by hand (cpu_attention.c).
 *
 * Two paths (cpu_internal.h): AVX2+FMA kernels (simd_math.h: vector expf;
 * the norms and cross-entropy still sum in F64) when the processor has
 * them, else the scalar loops below. Each output element is computed by one
 * thread in an order fixed by the data, not by the team's split, so results
 * do not depend on the thread count; the one exception is abs_sum_kept, an
 * OpenMP reduction of F64 partial sums (its callers need ~1e-12, not bits).
 */
#include <cblas.h>
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "ap_backend.h"
#include "ap_math.h"
#include "cpu_internal.h"
#include "simd_math.h"

#define PAR_MIN APK_CPU_PAR_MIN
/* Thresholds of the ops rewritten with vector kernels, in elements: a fork
 * and join of the team costs ~15-20 us with OMP_WAIT_POLICY=passive on the
 * 2-core CI machine (measured), about what one core needs for ~100K
 * elements of a streaming op or ~30K vector exponentials. */
#define PAR_MIN_CHEAP (1 << 17)
#define PAR_MIN_EXP (1 << 15)

/* ---- context and memory --------------------------------------------------- */

static int cpu_init(int device, void **state) {
  apk_cpu_state *st = calloc(1, sizeof *st);
  if (!st) return apk_fail(APK_ENOMEM, "cpu: out of memory for the backend state");
#if APK_CPU_HAVE_AVX2
  const char *env = getenv("APK_CPU_SIMD");
  st->simd = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && !(env && strcmp(env, "0") == 0);
#endif
  *state = st;
  return APK_OK;
}

static void cpu_shutdown(void *state) { free(state); }
static int cpu_sync(void *state) { return APK_OK; }

static int cpu_alloc(void *state, size_t bytes, void **out) {
  /* 64-byte alignment for vector loads; size rounded as aligned_alloc wants. */
  size_t rounded = (bytes + 63) & ~(size_t)63;
  void *p = aligned_alloc(64, rounded);
  if (!p) return apk_fail(APK_ENOMEM, "cpu: cannot allocate %zu bytes", bytes);
  *out = p;
  return APK_OK;
}

static void cpu_release(void *state, void *ptr) { free(ptr); }

static int cpu_upload(void *state, void *dst, const void *host, size_t bytes) {
  if (dst != host) memcpy(dst, host, bytes);
  return APK_OK;
}

static int cpu_download(void *state, void *host, const void *src, size_t bytes) {
  if (host != src) memcpy(host, src, bytes);
  return APK_OK;
}

static int cpu_memzero(void *state, void *dst, size_t bytes) {
  memset(dst, 0, bytes);
  return APK_OK;
}

static int cpu_memcopy(void *state, void *dst, const void *src, size_t bytes) {
  memmove(dst, src, bytes);
  return APK_OK;
}

/* ---- transformer ops ---------------------------------------------------------- */

static int cpu_embedding_forward(void *state, float *out, const int32_t *tokens, const float *table, int64_t N,
                                 int64_t C, int64_t V) {
  for (int64_t n = 0; n < N; n++)
    if (tokens[n] < 0 || tokens[n] >= V)
      return apk_fail(APK_ERANGE, "embedding: token %d at row %lld outside vocabulary of %lld", tokens[n],
                      (long long)n, (long long)V);
#pragma omp parallel for schedule(static) if (N * C > PAR_MIN)
  for (int64_t n = 0; n < N; n++) memcpy(out + n * C, table + (int64_t)tokens[n] * C, (size_t)C * sizeof(float));
  return APK_OK;
}

/* Vector versions of the row and element loops below (same math; float
 * rounding differs only in the order of the sums). Each runs on one row or
 * one contiguous range, called from the ops' OpenMP loops. */
#if APK_CPU_HAVE_AVX2
/* sum of squares in F64 of x[0..C) */
static APK_AVX2 double sumsq_avx2(const float *x, int64_t C) {
  __m256d s0 = _mm256_setzero_pd(), s1 = _mm256_setzero_pd();
  int64_t i = 0;
  for (; i + 8 <= C; i += 8) {
    __m256 v = _mm256_loadu_ps(x + i);
    __m256d lo = _mm256_cvtps_pd(_mm256_castps256_ps128(v)), hi = _mm256_cvtps_pd(_mm256_extractf128_ps(v, 1));
    s0 = _mm256_fmadd_pd(lo, lo, s0);
    s1 = _mm256_fmadd_pd(hi, hi, s1);
  }
  double ss = apk_hsum4d(_mm256_add_pd(s0, s1));
  for (; i < C; i++) ss += (double)x[i] * x[i];
  return ss;
}

static APK_AVX2 void rmsnorm_rows_avx2(float *out, float *rstd, const float *inp, const float *weight, int64_t n0,
                                       int64_t n1, int64_t C, float eps) {
  for (int64_t n = n0; n < n1; n++) {
    const float *x = inp + n * C;
    float *y = out + n * C;
    float r = (float)(1.0 / sqrt(sumsq_avx2(x, C) / (double)C + (double)eps));
    __m256 vr = _mm256_set1_ps(r);
    int64_t i = 0;
    for (; i + 8 <= C; i += 8)
      _mm256_storeu_ps(y + i, _mm256_mul_ps(_mm256_mul_ps(_mm256_loadu_ps(x + i), vr), _mm256_loadu_ps(weight + i)));
    for (; i < C; i++) y[i] = (x[i] * r) * weight[i];
    if (rstd) rstd[n] = r;
  }
}

static APK_AVX2 void rmsnorm_bwd_rows_avx2(float *dinp, const float *dout, const float *inp, const float *weight,
                                           const float *rstd, int64_t n0, int64_t n1, int64_t C) {
  for (int64_t n = n0; n < n1; n++) {
    const float *x = inp + n * C, *dy = dout + n * C;
    float *dx = dinp + n * C;
    float r = rstd[n];
    __m256d s0 = _mm256_setzero_pd(), s1 = _mm256_setzero_pd();
    int64_t i = 0;
    for (; i + 8 <= C; i += 8) {
      __m256 a = _mm256_loadu_ps(dy + i), w = _mm256_loadu_ps(weight + i), v = _mm256_loadu_ps(x + i);
      __m256d a0 = _mm256_cvtps_pd(_mm256_castps256_ps128(a)), a1 = _mm256_cvtps_pd(_mm256_extractf128_ps(a, 1));
      __m256d w0 = _mm256_cvtps_pd(_mm256_castps256_ps128(w)), w1 = _mm256_cvtps_pd(_mm256_extractf128_ps(w, 1));
      __m256d v0 = _mm256_cvtps_pd(_mm256_castps256_ps128(v)), v1 = _mm256_cvtps_pd(_mm256_extractf128_ps(v, 1));
      s0 = _mm256_fmadd_pd(_mm256_mul_pd(a0, w0), v0, s0);
      s1 = _mm256_fmadd_pd(_mm256_mul_pd(a1, w1), v1, s1);
    }
    double dot = apk_hsum4d(_mm256_add_pd(s0, s1));
    for (; i < C; i++) dot += (double)dy[i] * weight[i] * x[i];
    float k = (float)(dot * (double)r * r * r / (double)C);
    __m256 vr = _mm256_set1_ps(r), vk = _mm256_set1_ps(k);
    for (i = 0; i + 8 <= C; i += 8) {
      __m256 g = _mm256_mul_ps(_mm256_mul_ps(vr, _mm256_loadu_ps(weight + i)), _mm256_loadu_ps(dy + i));
      g = _mm256_fnmadd_ps(vk, _mm256_loadu_ps(x + i), g);
      _mm256_storeu_ps(dx + i, _mm256_add_ps(_mm256_loadu_ps(dx + i), g));
    }
    for (; i < C; i++) dx[i] += r * weight[i] * dy[i] - k * x[i];
  }
}

/* out[i] = silu(gate[i]) * up[i] for i in [i0, i1) */
static APK_AVX2 void swiglu_range_avx2(float *out, const float *gate, const float *up, int64_t i0, int64_t i1) {
  const __m256 one = _mm256_set1_ps(1.0f), sign = _mm256_set1_ps(-0.0f);
  int64_t i = i0;
  for (; i + 8 <= i1; i += 8) {
    __m256 g = _mm256_loadu_ps(gate + i);
    __m256 e = apk_exp8(_mm256_xor_ps(g, sign));
    _mm256_storeu_ps(out + i, _mm256_mul_ps(_mm256_div_ps(g, _mm256_add_ps(one, e)), _mm256_loadu_ps(up + i)));
  }
  for (; i < i1; i++) out[i] = apk_silu(gate[i]) * up[i];
}

static APK_AVX2 void swiglu_bwd_range_avx2(float *dgate, float *dup, const float *dout, const float *gate,
                                           const float *up, int64_t i0, int64_t i1) {
  const __m256 one = _mm256_set1_ps(1.0f), sign = _mm256_set1_ps(-0.0f);
  int64_t i = i0;
  for (; i + 8 <= i1; i += 8) {
    __m256 g = _mm256_loadu_ps(gate + i), u = _mm256_loadu_ps(up + i), d = _mm256_loadu_ps(dout + i);
    __m256 s = _mm256_div_ps(one, _mm256_add_ps(one, apk_exp8(_mm256_xor_ps(g, sign))));
    /* silu'(g) = s (1 + g (1 - s)) */
    __m256 grad = _mm256_mul_ps(s, _mm256_fmadd_ps(g, _mm256_sub_ps(one, s), one));
    _mm256_storeu_ps(dgate + i, _mm256_mul_ps(_mm256_mul_ps(d, u), grad));
    _mm256_storeu_ps(dup + i, _mm256_mul_ps(d, _mm256_mul_ps(g, s)));
  }
  for (; i < i1; i++) {
    float g = gate[i], u = up[i], d = dout[i];
    float dg = d * u * apk_silu_grad(g);
    float du = d * apk_silu(g);
    dgate[i] = dg;
    dup[i] = du;
  }
}

/* Row max and sum of exp(x - max) (in F64) of x[0..V). */
static APK_AVX2 double row_expsum_avx2(const float *x, int64_t V, float *mx_out) {
  const __m256 ninf = _mm256_set1_ps(-INFINITY);
  __m256 m0 = ninf, m1 = ninf;
  int64_t i = 0;
  for (; i + 16 <= V; i += 16) {
    m0 = _mm256_max_ps(m0, _mm256_loadu_ps(x + i));
    m1 = _mm256_max_ps(m1, _mm256_loadu_ps(x + i + 8));
  }
  for (; i + 8 <= V; i += 8) m0 = _mm256_max_ps(m0, _mm256_loadu_ps(x + i));
  __m256i tail = apk_tail_mask8(V - i);
  __m256 xt = _mm256_blendv_ps(ninf, _mm256_maskload_ps(x + i, tail), _mm256_castsi256_ps(tail));
  float mx = apk_hmax8(_mm256_max_ps(_mm256_max_ps(m0, m1), xt));
  __m256 vm = _mm256_set1_ps(mx);
  __m256d s0 = _mm256_setzero_pd(), s1 = _mm256_setzero_pd();
  for (i = 0; i + 8 <= V; i += 8) {
    __m256 p = apk_exp8(_mm256_sub_ps(_mm256_loadu_ps(x + i), vm));
    s0 = _mm256_add_pd(s0, _mm256_cvtps_pd(_mm256_castps256_ps128(p)));
    s1 = _mm256_add_pd(s1, _mm256_cvtps_pd(_mm256_extractf128_ps(p, 1)));
  }
  __m256 p = apk_exp8(_mm256_sub_ps(xt, vm)); /* the -inf lanes give 0 */
  s0 = _mm256_add_pd(s0, _mm256_cvtps_pd(_mm256_castps256_ps128(p)));
  s1 = _mm256_add_pd(s1, _mm256_cvtps_pd(_mm256_extractf128_ps(p, 1)));
  *mx_out = mx;
  return apk_hsum4d(_mm256_add_pd(s0, s1));
}

static APK_AVX2 float nll_row_avx2(const float *x, int64_t V, int32_t target) {
  float mx;
  double s = row_expsum_avx2(x, V, &mx);
  return (float)((double)mx + log(s) - (double)x[target]);
}

/* d[i] = scale * softmax(x)[i] - scale * [i == target]; d may alias x. */
static APK_AVX2 void ce_grad_row_avx2(float *d, const float *x, int64_t V, int32_t target, float scale) {
  float mx;
  double s = row_expsum_avx2(x, V, &mx);
  __m256 vm = _mm256_set1_ps(mx), c = _mm256_set1_ps((float)((double)scale / s));
  int64_t i = 0;
  for (; i + 8 <= V; i += 8) _mm256_storeu_ps(d + i, _mm256_mul_ps(apk_exp8(_mm256_sub_ps(_mm256_loadu_ps(x + i), vm)), c));
  if (i < V) {
    __m256i tail = apk_tail_mask8(V - i);
    __m256 p = apk_exp8(_mm256_sub_ps(_mm256_maskload_ps(x + i, tail), vm));
    _mm256_maskstore_ps(d + i, tail, _mm256_mul_ps(p, c));
  }
  d[target] -= scale;
}
#endif

/* Part `part` of `parts` near-equal parts of [0, n), cut at multiples of
 * `align`: the vector loops then always see the same 8-element groups and
 * only the last n % 8 elements go through the scalar tail, whatever the
 * thread count (so results do not depend on it). */
static inline void part_range(int64_t n, int64_t align, int part, int parts, int64_t *lo, int64_t *hi) {
  *lo = part == 0 ? 0 : n * part / parts / align * align;
  *hi = part == parts - 1 ? n : n * (part + 1) / parts / align * align;
}

static int cpu_rmsnorm_forward(void *state, float *out, float *rstd, const float *inp, const float *weight,
                               int64_t N, int64_t C, float eps) {
#if APK_CPU_HAVE_AVX2
  if (apk_cpu_simd(state)) {
#pragma omp parallel if (N * C > PAR_MIN_CHEAP)
    {
      int64_t n0, n1;
      part_range(N, 1, omp_get_thread_num(), omp_get_num_threads(), &n0, &n1);
      rmsnorm_rows_avx2(out, rstd, inp, weight, n0, n1, C, eps);
    }
    return APK_OK;
  }
#endif
#pragma omp parallel for schedule(static) if (N * C > PAR_MIN_CHEAP)
  for (int64_t n = 0; n < N; n++) {
    const float *x = inp + n * C;
    float *y = out + n * C;
    double ss = 0.0;
    for (int64_t i = 0; i < C; i++) ss += (double)x[i] * x[i];
    float r = (float)(1.0 / sqrt(ss / (double)C + (double)eps));
    for (int64_t i = 0; i < C; i++) y[i] = (x[i] * r) * weight[i];
    if (rstd) rstd[n] = r;
  }
  return APK_OK;
}

static int cpu_rmsnorm_backward(void *state, float *dinp, const float *dout, const float *inp, const float *weight,
                                const float *rstd, int64_t N, int64_t C) {
#if APK_CPU_HAVE_AVX2
  if (apk_cpu_simd(state)) {
#pragma omp parallel if (N * C > PAR_MIN_CHEAP)
    {
      int64_t n0, n1;
      part_range(N, 1, omp_get_thread_num(), omp_get_num_threads(), &n0, &n1);
      rmsnorm_bwd_rows_avx2(dinp, dout, inp, weight, rstd, n0, n1, C);
    }
    return APK_OK;
  }
#endif
#pragma omp parallel for schedule(static) if (N * C > PAR_MIN_CHEAP)
  for (int64_t n = 0; n < N; n++) {
    const float *x = inp + n * C, *dy = dout + n * C;
    float *dx = dinp + n * C;
    float r = rstd[n];
    double dot = 0.0;
    for (int64_t i = 0; i < C; i++) dot += (double)dy[i] * weight[i] * x[i];
    float k = (float)(dot * (double)r * r * r / (double)C);
    for (int64_t i = 0; i < C; i++) dx[i] += r * weight[i] * dy[i] - k * x[i];
  }
  return APK_OK;
}

static int cpu_swiglu_forward(void *state, float *out, const float *gate, const float *up, int64_t n) {
#if APK_CPU_HAVE_AVX2
  if (apk_cpu_simd(state)) {
#pragma omp parallel if (n > PAR_MIN_EXP)
    {
      int64_t i0, i1;
      part_range(n, 8, omp_get_thread_num(), omp_get_num_threads(), &i0, &i1);
      swiglu_range_avx2(out, gate, up, i0, i1);
    }
    return APK_OK;
  }
#endif
#pragma omp parallel for schedule(static) if (n > PAR_MIN_EXP)
  for (int64_t i = 0; i < n; i++) out[i] = apk_silu(gate[i]) * up[i];
  return APK_OK;
}

static int cpu_swiglu_backward(void *state, float *dgate, float *dup, const float *dout, const float *gate,
                               const float *up, int64_t n) {
#if APK_CPU_HAVE_AVX2
  if (apk_cpu_simd(state)) {
#pragma omp parallel if (n > PAR_MIN_EXP)
    {
      int64_t i0, i1;
      part_range(n, 8, omp_get_thread_num(), omp_get_num_threads(), &i0, &i1);
      swiglu_bwd_range_avx2(dgate, dup, dout, gate, up, i0, i1);
    }
    return APK_OK;
  }
#endif
#pragma omp parallel for schedule(static) if (n > PAR_MIN_EXP)
  for (int64_t i = 0; i < n; i++) {
    float g = gate[i], u = up[i], d = dout[i];
    float dg = d * u * apk_silu_grad(g);
    float du = d * apk_silu(g);
    dgate[i] = dg;
    dup[i] = du;
  }
  return APK_OK;
}

static int cpu_add_inplace(void *state, float *a, const float *b, int64_t n) {
#pragma omp parallel for schedule(static) if (n > PAR_MIN_CHEAP)
  for (int64_t i = 0; i < n; i++) a[i] += b[i];
  return APK_OK;
}

static double row_logsumexp(const float *x, int64_t V) {
  float mx = -INFINITY;
  for (int64_t i = 0; i < V; i++)
    if (x[i] > mx) mx = x[i];
  double s = 0.0;
  for (int64_t i = 0; i < V; i++) s += exp((double)(x[i] - mx));
  return (double)mx + log(s);
}

static int check_targets(const int32_t *targets, int64_t N, int64_t V) {
  for (int64_t n = 0; n < N; n++)
    if (targets[n] >= V)
      return apk_fail(APK_ERANGE, "cross-entropy: target %d at row %lld outside vocabulary of %lld", targets[n],
                      (long long)n, (long long)V);
  return APK_OK;
}

static int cpu_crossentropy_forward(void *state, float *nll, const float *logits, const int32_t *targets, int64_t N,
                                    int64_t V) {
  int rc = check_targets(targets, N, V);
  if (rc) return rc;
  int simd = apk_cpu_simd(state);
#pragma omp parallel for schedule(static) if (N * V > PAR_MIN_EXP)
  for (int64_t n = 0; n < N; n++) {
    const float *x = logits + n * V;
    if (targets[n] < 0)
      nll[n] = 0.0f;
#if APK_CPU_HAVE_AVX2
    else if (simd)
      nll[n] = nll_row_avx2(x, V, targets[n]);
#endif
    else
      nll[n] = (float)(row_logsumexp(x, V) - (double)x[targets[n]]);
  }
  (void)simd;
  return APK_OK;
}

static int cpu_crossentropy_backward(void *state, float *dlogits, const float *logits, const int32_t *targets,
                                     int64_t N, int64_t V, float scale) {
  int rc = check_targets(targets, N, V);
  if (rc) return rc;
  int simd = apk_cpu_simd(state);
#pragma omp parallel for schedule(static) if (N * V > PAR_MIN_EXP)
  for (int64_t n = 0; n < N; n++) {
    const float *x = logits + n * V;
    float *d = dlogits + n * V;
    if (targets[n] < 0) {
      memset(d, 0, (size_t)V * sizeof(float));
      continue;
    }
#if APK_CPU_HAVE_AVX2
    if (simd) {
      ce_grad_row_avx2(d, x, V, targets[n], scale);
      continue;
    }
#endif
    double lse = row_logsumexp(x, V);
    for (int64_t i = 0; i < V; i++) d[i] = scale * (float)exp((double)x[i] - lse);
    d[targets[n]] -= scale;
  }
  (void)simd;
  return APK_OK;
}

static int cpu_linear_forward(void *state, float *out, const float *inp, const float *weight, const float *bias,
                              int64_t N, int64_t IC, int64_t OC) {
  if (N == 0) return APK_OK;
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)N, (int)OC, (int)IC, 1.0f, inp, (int)IC, weight,
              (int)IC, 0.0f, out, (int)OC);
  if (bias) {
#pragma omp parallel for schedule(static) if (N * OC > PAR_MIN)
    for (int64_t n = 0; n < N; n++)
      for (int64_t o = 0; o < OC; o++) out[n * OC + o] += bias[o];
  }
  return APK_OK;
}

static int cpu_linear_backward(void *state, float *dinp, float *dweight, float *dbias, const float *dout,
                               const float *inp, const float *weight, int64_t N, int64_t IC, int64_t OC) {
  if (N == 0) return APK_OK;
  if (dinp)
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)N, (int)IC, (int)OC, 1.0f, dout, (int)OC, weight,
                (int)IC, 1.0f, dinp, (int)IC);
  if (dweight)
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)OC, (int)IC, (int)N, 1.0f, dout, (int)OC, inp,
                (int)IC, 1.0f, dweight, (int)IC);
  if (dbias) {
#pragma omp parallel for schedule(static) if (N * OC > PAR_MIN)
    for (int64_t o = 0; o < OC; o++) {
      double s = 0.0;
      for (int64_t n = 0; n < N; n++) s += dout[n * OC + o];
      dbias[o] += (float)s;
    }
  }
  return APK_OK;
}

#if APK_CPU_HAVE_AVX2
/* Rows [n0, n1) of cpu_rope. Multiplies and subtractions without FMA, in the
 * order of apk_rope_rotate: the same bits as the scalar loop. */
static APK_AVX2 void rope_rows_avx2(float *out, const float *inp, const float *cos_t, const float *sin_t, int64_t n0,
                                    int64_t n1, int64_t H, int64_t D, int64_t T, int sign) {
  int64_t half = D / 2;
  const __m256 flip8 = _mm256_set1_ps(sign > 0 ? 0.0f : -0.0f);
  const __m128 flip4 = _mm_set1_ps(sign > 0 ? 0.0f : -0.0f);
  for (int64_t n = n0; n < n1; n++) {
    const float *c = cos_t + (n % T) * half, *s = sin_t + (n % T) * half;
    for (int64_t h = 0; h < H; h++) {
      const float *x = inp + (n * H + h) * D;
      float *y = out + (n * H + h) * D;
      int64_t i = 0;
      for (; i + 8 <= half; i += 8) {
        __m256 vc = _mm256_loadu_ps(c + i), vs = _mm256_xor_ps(_mm256_loadu_ps(s + i), flip8);
        __m256 x1 = _mm256_loadu_ps(x + i), x2 = _mm256_loadu_ps(x + i + half);
        _mm256_storeu_ps(y + i, _mm256_sub_ps(_mm256_mul_ps(x1, vc), _mm256_mul_ps(x2, vs)));
        _mm256_storeu_ps(y + i + half, _mm256_add_ps(_mm256_mul_ps(x2, vc), _mm256_mul_ps(x1, vs)));
      }
      for (; i + 4 <= half; i += 4) {
        __m128 vc = _mm_loadu_ps(c + i), vs = _mm_xor_ps(_mm_loadu_ps(s + i), flip4);
        __m128 x1 = _mm_loadu_ps(x + i), x2 = _mm_loadu_ps(x + i + half);
        _mm_storeu_ps(y + i, _mm_sub_ps(_mm_mul_ps(x1, vc), _mm_mul_ps(x2, vs)));
        _mm_storeu_ps(y + i + half, _mm_add_ps(_mm_mul_ps(x2, vc), _mm_mul_ps(x1, vs)));
      }
      for (; i < half; i++) {
        float o1, o2;
        apk_rope_rotate(x[i], x[i + half], c[i], sign > 0 ? s[i] : -s[i], &o1, &o2);
        y[i] = o1;
        y[i + half] = o2;
      }
    }
  }
}
#endif

static int cpu_rope(void *state, float *out, const float *inp, const float *cos_t, const float *sin_t, int64_t N,
                    int64_t H, int64_t D, int64_t T, int sign) {
#if APK_CPU_HAVE_AVX2
  if (apk_cpu_simd(state)) {
#pragma omp parallel if (N * H * D > PAR_MIN_CHEAP)
    {
      int64_t n0, n1;
      part_range(N, 1, omp_get_thread_num(), omp_get_num_threads(), &n0, &n1);
      rope_rows_avx2(out, inp, cos_t, sin_t, n0, n1, H, D, T, sign);
    }
    return APK_OK;
  }
#endif
  int64_t half = D / 2;
#pragma omp parallel for schedule(static) if (N * H * D > PAR_MIN_CHEAP)
  for (int64_t n = 0; n < N; n++) {
    const float *c = cos_t + (n % T) * half, *s = sin_t + (n % T) * half;
    for (int64_t h = 0; h < H; h++) {
      const float *x = inp + (n * H + h) * D;
      float *y = out + (n * H + h) * D;
      for (int64_t i = 0; i < half; i++) {
        float o1, o2;
        apk_rope_rotate(x[i], x[i + half], c[i], sign > 0 ? s[i] : -s[i], &o1, &o2);
        y[i] = o1;
        y[i + half] = o2;
      }
    }
  }
  return APK_OK;
}

static int cpu_nll_window_sums(void *state, double *sums, const float *nll, int64_t B, int64_t T) {
  for (int64_t b = 0; b < B; b++) {
    double s = 0.0;
    for (int64_t t = 0; t < T; t++) s += nll[b * T + t];
    sums[b] += s;
  }
  return APK_OK;
}

/* ---- pruning statistics and masks --------------------------------------------- */

enum { COLSQ_BLOCK = 256 };

static int cpu_colsumsq_accumulate(void *state, double *acc, const float *inp, int64_t N, int64_t C) {
  int64_t nblocks = (C + COLSQ_BLOCK - 1) / COLSQ_BLOCK;
#pragma omp parallel for schedule(dynamic, 1) if (N * C > PAR_MIN)
  for (int64_t blk = 0; blk < nblocks; blk++) {
    int64_t c0 = blk * COLSQ_BLOCK, c1 = c0 + COLSQ_BLOCK < C ? c0 + COLSQ_BLOCK : C;
    double local[COLSQ_BLOCK];
    memset(local, 0, sizeof local);
    for (int64_t n = 0; n < N; n++) {
      const float *x = inp + n * C;
      for (int64_t c = c0; c < c1; c++) local[c - c0] += (double)x[c] * (double)x[c];
    }
    for (int64_t c = c0; c < c1; c++) acc[c] += local[c - c0];
  }
  return APK_OK;
}

static int cpu_absgrad_accumulate(void *state, void *acc, apk_dtype acc_dtype, const float *grad, int64_t n) {
  if (acc_dtype == APK_F64) {
    double *a = acc;
#pragma omp parallel for schedule(static) if (n > PAR_MIN)
    for (int64_t i = 0; i < n; i++) a[i] += fabs((double)grad[i]);
  } else {
    float *a = acc;
#pragma omp parallel for schedule(static) if (n > PAR_MIN)
    for (int64_t i = 0; i < n; i++) a[i] += fabsf(grad[i]);
  }
  return APK_OK;
}

static int cpu_abs_sum_kept(void *state, double *sum, const float *x, const uint8_t *mask, int64_t n) {
  double s = 0.0;
#pragma omp parallel for schedule(static) reduction(+ : s) if (n > PAR_MIN)
  for (int64_t i = 0; i < n; i++)
    if (!mask || !apk_mask_bit(mask, (uint64_t)i)) s += fabs((double)x[i]);
  *sum = s;
  return APK_OK;
}

/* Originals are often views into an mmap'd safetensors file, whose tensors
 * need not be aligned to their element size: load through memcpy. */
static inline float load_orig(const void *orig, apk_dtype dt, int64_t i) {
  if (dt == APK_F32) {
    float f;
    memcpy(&f, (const char *)orig + 4 * i, 4);
    return f;
  }
  uint16_t h;
  memcpy(&h, (const char *)orig + 2 * i, 2);
  return dt == APK_BF16 ? apk_bf16_to_f32(h) : apk_f16_to_f32(h);
}

static int cpu_mask_apply(void *state, float *working, const void *orig, apk_dtype orig_dtype, const uint8_t *mask,
                          int64_t n) {
  if (!mask) {
    if (orig_dtype == APK_F32) {
      memcpy(working, orig, (size_t)n * sizeof(float));
      return APK_OK;
    }
#pragma omp parallel for schedule(static) if (n > PAR_MIN)
    for (int64_t i = 0; i < n; i++) working[i] = load_orig(orig, orig_dtype, i);
    return APK_OK;
  }
#pragma omp parallel for schedule(static) if (n > PAR_MIN)
  for (int64_t i = 0; i < n; i++) working[i] = apk_mask_bit(mask, (uint64_t)i) ? 0.0f : load_orig(orig, orig_dtype, i);
  return APK_OK;
}

static const apk_backend_ops cpu_ops = {
    .name = "cpu",
    .init = cpu_init,
    .shutdown = cpu_shutdown,
    .sync = cpu_sync,
    .alloc = cpu_alloc,
    .release = cpu_release,
    .upload = cpu_upload,
    .download = cpu_download,
    .memzero = cpu_memzero,
    .memcopy = cpu_memcopy,
    .embedding_forward = cpu_embedding_forward,
    .rmsnorm_forward = cpu_rmsnorm_forward,
    .rmsnorm_backward = cpu_rmsnorm_backward,
    .linear_forward = cpu_linear_forward,
    .linear_backward = cpu_linear_backward,
    .rope = cpu_rope,
    .attention_forward = apk_cpu_attention_forward,
    .attention_backward = apk_cpu_attention_backward,
    .swiglu_forward = cpu_swiglu_forward,
    .swiglu_backward = cpu_swiglu_backward,
    .add_inplace = cpu_add_inplace,
    .crossentropy_forward = cpu_crossentropy_forward,
    .crossentropy_backward = cpu_crossentropy_backward,
    .nll_window_sums = cpu_nll_window_sums,
    .colsumsq_accumulate = cpu_colsumsq_accumulate,
    .absgrad_accumulate = cpu_absgrad_accumulate,
    .abs_sum_kept = cpu_abs_sum_kept,
    .mask_apply = cpu_mask_apply,
};

const apk_backend_ops *apk_cpu_backend(void) { return &cpu_ops; }
