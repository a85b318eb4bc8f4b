/*
 * test_cpu_paths.c - the CPU backend's two code paths (AVX2+FMA kernels and
 * scalar loops, the latter forced with APK_CPU_SIMD=0) at the shapes the
 * shared models run (head_dim 8 and 32, windows of 256 and 512) and at
 * awkward ones (lengths that are no multiple of the vector width, head_dim
 * not a multiple of 8, one-token windows), each against a double-precision
 * reference, plus:
 *  - the vector expf (simd_math.h) against exp() over its whole range and at
 *    its edges (underflow to 0, -inf, NaN, the clamp at 88);
 *  - thread-count independence: 1, 2 and 3 OpenMP threads give the same bits;
 *  - backward ops accumulate (+=) into what their outputs held.
 */
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ap_kernels.h"
#include "simd_math.h"
#include "test.h"

static apk_ctx *ctx_simd, *ctx_scalar;
static int have_avx2;

static uint64_t rng_state = 0x2545f4914f6cdd1dull;
static double urand(void) {
  uint64_t z = (rng_state += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  z ^= z >> 31;
  return (double)(z >> 11) / 9007199254740992.0;
}
static float *frand_array(int64_t n, double scale) {
  float *x = malloc((size_t)n * sizeof *x);
  for (int64_t i = 0; i < n; i++) x[i] = (float)((2.0 * urand() - 1.0) * scale);
  return x;
}
static float *copy_array(const float *x, int64_t n) {
  float *y = malloc((size_t)n * sizeof *y);
  memcpy(y, x, (size_t)n * sizeof *y);
  return y;
}
/* max |a - b| / max(max |b|, floor) */
static double max_rel(const float *a, const double *b, int64_t n, double floor) {
  double mx = floor, err = 0;
  for (int64_t i = 0; i < n; i++) mx = fmax(mx, fabs(b[i]));
  for (int64_t i = 0; i < n; i++) err = fmax(err, fabs((double)a[i] - b[i]));
  return err / mx;
}
static apk_tensor view(void *p, apk_dtype dt, int ndim, int64_t d0, int64_t d1, int64_t d2, int64_t d3) {
  int64_t s[4] = {d0, d1, d2, d3};
  return apk_view(APK_CPU, dt, p, ndim, s);
}

/* ---- vector expf ---------------------------------------------------------------- */

#if APK_CPU_HAVE_AVX2
static APK_AVX2 void exp8_array(float *y, const float *x, int n) {
  for (int i = 0; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, apk_exp8(_mm256_loadu_ps(x + i)));
}

static void test_exp8(void) {
  if (!have_avx2) {
    printf("skip: no AVX2+FMA on this processor, vector expf not tested\n");
    return;
  }
  enum { N = 1 << 16 };
  static float x[N], y[N];
  double worst = 0;
  /* [-87.3, 88] in steps, plus dense coverage of [-1, 1] */
  for (int pass = 0; pass < 40; pass++) {
    for (int i = 0; i < N; i++) {
      double u = (pass * (double)N + i) / (40.0 * N);
      x[i] = pass < 30 ? (float)(-87.3 + u * (88.0 + 87.3) * 40.0 / 30.0) : (float)(2.0 * urand() - 1.0);
    }
    exp8_array(y, x, N);
    for (int i = 0; i < N; i++) {
      double ref = exp((double)x[i]);
      worst = fmax(worst, fabs(y[i] - ref) / ref);
    }
  }
  CHECKF(worst < 2.5e-7, "vector expf max relative error %.3g", worst);
  float sx[8] = {0.0f, -INFINITY, -88.0f, -1000.0f, NAN, 100.0f, INFINITY, -87.0f}, sy[8];
  exp8_array(sy, sx, 8);
  CHECK(sy[0] == 1.0f);
  CHECK(sy[1] == 0.0f && sy[2] == 0.0f && sy[3] == 0.0f);
  CHECK(isnan(sy[4]));
  CHECK(isfinite(sy[5]) && fabs(sy[5] / exp(88.0) - 1) < 1e-6 && sy[6] == sy[5]);
  CHECK(fabs(sy[7] / exp(-87.0) - 1) < 1e-6);
}
#endif

/* ---- attention -------------------------------------------------------------------- */

typedef struct { int64_t B, T, H, KVH, D; } att_shape;

/* Double forward and backward (analytic) of causal GQA attention. */
static void att_ref(const att_shape *s, const float *q, const float *k, const float *v, const float *g, double *o,
                    double *lse, double *dq, double *dk, double *dv) {
  int64_t B = s->B, T = s->T, H = s->H, KVH = s->KVH, D = s->D, grp = H / KVH;
  double scale = 1.0 / sqrt((double)D);
  double *p = malloc((size_t)T * sizeof *p), *dp = malloc((size_t)T * sizeof *dp);
  memset(dq, 0, sizeof *dq * (size_t)(B * T * H * D));
  memset(dk, 0, sizeof *dk * (size_t)(B * T * KVH * D));
  memset(dv, 0, sizeof *dv * (size_t)(B * T * KVH * D));
  for (int64_t b = 0; b < B; b++)
    for (int64_t h = 0; h < H; h++)
      for (int64_t t = 0; t < T; t++) {
        const float *qt = q + ((b * T + t) * H + h) * D, *gt = g + ((b * T + t) * H + h) * D;
        double mx = -INFINITY, sum = 0;
        for (int64_t j = 0; j <= t; j++) {
          const float *kj = k + ((b * T + j) * KVH + h / grp) * D;
          double d = 0;
          for (int64_t c = 0; c < D; c++) d += (double)qt[c] * kj[c];
          p[j] = d * scale;
          mx = fmax(mx, p[j]);
        }
        for (int64_t j = 0; j <= t; j++) sum += (p[j] = exp(p[j] - mx));
        for (int64_t j = 0; j <= t; j++) p[j] /= sum;
        lse[(b * H + h) * T + t] = mx + log(sum);
        double *ot = o + ((b * T + t) * H + h) * D, delta = 0;
        for (int64_t c = 0; c < D; c++) {
          double a = 0;
          for (int64_t j = 0; j <= t; j++) a += p[j] * v[((b * T + j) * KVH + h / grp) * D + c];
          ot[c] = a;
          delta += a * gt[c];
        }
        for (int64_t j = 0; j <= t; j++) {
          const float *vj = v + ((b * T + j) * KVH + h / grp) * D;
          double a = 0;
          for (int64_t c = 0; c < D; c++) a += (double)gt[c] * vj[c];
          dp[j] = p[j] * (a - delta) * scale; /* d loss / d (q.k) */
        }
        for (int64_t j = 0; j <= t; j++) {
          int64_t kv = ((b * T + j) * KVH + h / grp) * D;
          for (int64_t c = 0; c < D; c++) {
            dq[((b * T + t) * H + h) * D + c] += dp[j] * k[kv + c];
            dk[kv + c] += dp[j] * qt[c];
            dv[kv + c] += p[j] * gt[c];
          }
        }
      }
  free(p), free(dp);
}

typedef struct { float *o, *lse, *dq, *dk, *dv; } att_out;

static void att_run(apk_ctx *ctx, const att_shape *s, const float *q, const float *k, const float *v, const float *g,
                    const float *prefill_q, const float *prefill_kv, att_out *r) {
  int64_t B = s->B, T = s->T, H = s->H, KVH = s->KVH, D = s->D, NQ = B * T * H * D, NK = B * T * KVH * D;
  r->o = malloc((size_t)NQ * 4), r->lse = malloc((size_t)(B * H * T) * 4);
  r->dq = copy_array(prefill_q, NQ), r->dk = copy_array(prefill_kv, NK), r->dv = copy_array(prefill_kv, NK);
  apk_tensor tq = view((void *)q, APK_F32, 4, B, T, H, D), tk = view((void *)k, APK_F32, 4, B, T, KVH, D),
             tv = view((void *)v, APK_F32, 4, B, T, KVH, D), tg = view((void *)g, APK_F32, 4, B, T, H, D),
             to = view(r->o, APK_F32, 4, B, T, H, D), tl = view(r->lse, APK_F32, 3, B, H, T, 0),
             tdq = view(r->dq, APK_F32, 4, B, T, H, D), tdk = view(r->dk, APK_F32, 4, B, T, KVH, D),
             tdv = view(r->dv, APK_F32, 4, B, T, KVH, D);
  CHECK_EQ_INT(apk_attention_forward(ctx, &to, &tl, &tq, &tk, &tv), APK_OK);
  CHECK_EQ_INT(apk_attention_backward(ctx, &tdq, &tdk, &tdv, &tg, &tq, &tk, &tv, &to, &tl), APK_OK);
}

static void att_free(att_out *r) { free(r->o), free(r->lse), free(r->dq), free(r->dk), free(r->dv); }

static int same_bits(const float *a, const float *b, int64_t n) { return memcmp(a, b, (size_t)n * sizeof *a) == 0; }

static void test_attention_shape(const att_shape *s) {
  int64_t B = s->B, T = s->T, H = s->H, KVH = s->KVH, D = s->D, NQ = B * T * H * D, NK = B * T * KVH * D;
  float *q = frand_array(NQ, 2.0), *k = frand_array(NK, 2.0), *v = frand_array(NK, 1.0), *g = frand_array(NQ, 1.0);
  float *pq = frand_array(NQ, 0.5), *pkv = frand_array(NK, 0.5);
  double *o = malloc((size_t)NQ * 8), *lse = malloc((size_t)(B * H * T) * 8), *dq = malloc((size_t)NQ * 8),
         *dk = malloc((size_t)NK * 8), *dv = malloc((size_t)NK * 8);
  att_ref(s, q, k, v, g, o, lse, dq, dk, dv);
  /* the backward ops add to what the outputs held */
  for (int64_t i = 0; i < NQ; i++) dq[i] += pq[i];
  for (int64_t i = 0; i < NK; i++) dk[i] += pkv[i], dv[i] += pkv[i];
  apk_ctx *ctxs[2] = {ctx_simd, ctx_scalar};
  const char *names[2] = {"simd", "scalar"};
  for (int c = 0; c < 2; c++) {
    att_out r;
    att_run(ctxs[c], s, q, k, v, g, pq, pkv, &r);
    double eo = max_rel(r.o, o, NQ, 1e-3), el = max_rel(r.lse, lse, B * H * T, 1.0);
    double eq = max_rel(r.dq, dq, NQ, 1e-3), ek = max_rel(r.dk, dk, NK, 1e-3), ev = max_rel(r.dv, dv, NK, 1e-3);
    CHECKF(eo < 2e-6 && el < 1e-6, "%s B%lld T%lld H%lld KVH%lld D%lld: out %.3g lse %.3g", names[c], (long long)B,
           (long long)T, (long long)H, (long long)KVH, (long long)D, eo, el);
    CHECKF(eq < 1e-5 && ek < 1e-5 && ev < 1e-5, "%s B%lld T%lld H%lld KVH%lld D%lld: dq %.3g dk %.3g dv %.3g",
           names[c], (long long)B, (long long)T, (long long)H, (long long)KVH, (long long)D, eq, ek, ev);
    att_free(&r);
  }
  /* thread count: same bits with 1, 2 and 3 threads */
  int keep = omp_get_max_threads();
  att_out r1, rn;
  omp_set_num_threads(1);
  att_run(ctx_simd, s, q, k, v, g, pq, pkv, &r1);
  for (int nt = 2; nt <= 3; nt++) {
    omp_set_num_threads(nt);
    att_run(ctx_simd, s, q, k, v, g, pq, pkv, &rn);
    CHECKF(same_bits(r1.o, rn.o, NQ) && same_bits(r1.lse, rn.lse, B * H * T) && same_bits(r1.dq, rn.dq, NQ) &&
               same_bits(r1.dk, rn.dk, NK) && same_bits(r1.dv, rn.dv, NK),
           "T%lld D%lld: %d threads differ from 1", (long long)T, (long long)D, nt);
    att_free(&rn);
  }
  att_free(&r1);
  omp_set_num_threads(keep);
  free(q), free(k), free(v), free(g), free(pq), free(pkv), free(o), free(lse), free(dq), free(dk), free(dv);
}

static void test_attention(void) {
  const att_shape shapes[] = {
      {1, 512, 8, 4, 8},   /* stories260K */
      {1, 256, 4, 2, 32},  /* tinyqwen3-a */
      {2, 77, 2, 1, 64},   /* MQA, T no multiple of 16 */
      {1, 130, 6, 2, 16},
      {1, 33, 4, 4, 12},   /* head_dim not a multiple of 8: scalar on both */
      {3, 1, 2, 2, 8},     /* one-token windows */
      {1, 19, 2, 1, 8},
  };
  for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++) test_attention_shape(&shapes[i]);
}

/* ---- cross-entropy ---------------------------------------------------------------- */

static void test_crossentropy_shape(int64_t N, int64_t V) {
  float *x = frand_array(N * V, 12.0);
  int32_t *tg = malloc((size_t)N * sizeof *tg);
  for (int64_t n = 0; n < N; n++) tg[n] = n % 5 == 4 ? -1 : (int32_t)((n * 7919) % V);
  double *nll = malloc((size_t)N * 8), *d = malloc((size_t)(N * V) * 8);
  float scale = 1.0f / (float)N;
  for (int64_t n = 0; n < N; n++) {
    const float *r = x + n * V;
    double mx = -INFINITY, s = 0;
    for (int64_t i = 0; i < V; i++) mx = fmax(mx, r[i]);
    for (int64_t i = 0; i < V; i++) s += exp(r[i] - mx);
    nll[n] = tg[n] < 0 ? 0 : mx + log(s) - r[tg[n]];
    for (int64_t i = 0; i < V; i++) d[n * V + i] = tg[n] < 0 ? 0 : scale * (exp(r[i] - mx) / s - (i == tg[n]));
  }
  apk_ctx *ctxs[2] = {ctx_simd, ctx_scalar};
  for (int c = 0; c < 2; c++) {
    float *out = malloc((size_t)N * 4), *dl = malloc((size_t)(N * V) * 4), *inplace = copy_array(x, N * V);
    apk_tensor tx = view(x, APK_F32, 2, N, V, 0, 0), tt = view(tg, APK_I32, 1, N, 0, 0, 0),
               tn = view(out, APK_F32, 1, N, 0, 0, 0), td = view(dl, APK_F32, 2, N, V, 0, 0),
               ti = view(inplace, APK_F32, 2, N, V, 0, 0);
    CHECK_EQ_INT(apk_crossentropy_forward(ctxs[c], &tn, &tx, &tt), APK_OK);
    CHECK_EQ_INT(apk_crossentropy_backward(ctxs[c], &td, &tx, &tt, scale), APK_OK);
    CHECK_EQ_INT(apk_crossentropy_backward(ctxs[c], &ti, &ti, &tt, scale), APK_OK);
    double en = max_rel(out, nll, N, 1.0), ed = max_rel(dl, d, N * V, 1e-6);
    CHECKF(en < 1e-6 && ed < 1e-5, "%s N%lld V%lld: nll %.3g dlogits %.3g", c ? "scalar" : "simd", (long long)N,
           (long long)V, en, ed);
    CHECK(same_bits(dl, inplace, N * V));
    free(out), free(dl), free(inplace);
  }
  free(x), free(tg), free(nll), free(d);
}

static void test_crossentropy(void) {
  test_crossentropy_shape(70, 515); /* parallel (N V > 32768), tail of 3 */
  test_crossentropy_shape(9, 512);
  test_crossentropy_shape(6, 7);   /* tail only */
  test_crossentropy_shape(5, 8);
}

/* ---- swiglu, rmsnorm ----------------------------------------------------------- */

static void test_swiglu(void) {
  enum { N = 100003 }; /* parallel, odd tail */
  float *gt = frand_array(N, 20.0), *up = frand_array(N, 2.0), *d = frand_array(N, 1.0);
  gt[0] = -100.0f, gt[1] = 100.0f, gt[2] = 0.0f, gt[N - 1] = -95.0f;
  double *o = malloc(N * 8), *dg = malloc(N * 8), *du = malloc(N * 8);
  for (int i = 0; i < N; i++) {
    double g = gt[i], s = 1.0 / (1.0 + exp(-g));
    o[i] = g * s * up[i];
    dg[i] = d[i] * up[i] * s * (1 + g * (1 - s));
    du[i] = d[i] * g * s;
  }
  apk_ctx *ctxs[2] = {ctx_simd, ctx_scalar};
  float *first = NULL;
  for (int c = 0; c < 2; c++) {
    float *out = malloc(N * 4), *odg = malloc(N * 4), *odu = malloc(N * 4);
    apk_tensor tg = view(gt, APK_F32, 1, N, 0, 0, 0), tu = view(up, APK_F32, 1, N, 0, 0, 0),
               td = view(d, APK_F32, 1, N, 0, 0, 0), to = view(out, APK_F32, 1, N, 0, 0, 0),
               tdg = view(odg, APK_F32, 1, N, 0, 0, 0), tdu = view(odu, APK_F32, 1, N, 0, 0, 0);
    CHECK_EQ_INT(apk_swiglu_forward(ctxs[c], &to, &tg, &tu), APK_OK);
    CHECK_EQ_INT(apk_swiglu_backward(ctxs[c], &tdg, &tdu, &td, &tg, &tu), APK_OK);
    /* element by element, relative to each element (with an absolute floor
     * for the values that underflow), and for dgate to at least a tenth of
     * |dout * up|: silu' crosses zero near gate -2.4, where 1 + g (1 - s)
     * cancels in float arithmetic whatever the exp */
    double eo = 0, eg = 0, eu = 0;
    for (int i = 0; i < N; i++) {
      eo = fmax(eo, fabs(out[i] - o[i]) / fmax(fabs(o[i]), 1e-12));
      eg = fmax(eg, fabs(odg[i] - dg[i]) / fmax(fabs(dg[i]), 0.1 * fabs((double)d[i] * up[i])));
      eu = fmax(eu, fabs(odu[i] - du[i]) / fmax(fabs(du[i]), 1e-12));
    }
    CHECKF(eo < 1e-6 && eg < 1e-5 && eu < 1e-6, "%s: out %.3g dgate %.3g dup %.3g", c ? "scalar" : "simd", eo, eg, eu);
    if (c == 0) {
      /* thread count: the vector groups must not move with the split */
      int keep = omp_get_max_threads();
      first = copy_array(out, N);
      omp_set_num_threads(3);
      CHECK_EQ_INT(apk_swiglu_forward(ctxs[c], &to, &tg, &tu), APK_OK);
      CHECK(same_bits(first, out, N));
      omp_set_num_threads(keep);
    }
    free(out), free(odg), free(odu);
  }
  free(first), free(gt), free(up), free(d), free(o), free(dg), free(du);
}

static void test_rmsnorm_shape(int64_t N, int64_t C) {
  float *x = frand_array(N * C, 3.0), *w = frand_array(C, 1.5), *g = frand_array(N * C, 1.0);
  float *pre = frand_array(N * C, 0.5);
  double *y = malloc((size_t)(N * C) * 8), *dx = malloc((size_t)(N * C) * 8);
  const double eps = 1e-5;
  for (int64_t n = 0; n < N; n++) {
    const float *r = x + n * C;
    double ss = 0, dot = 0;
    for (int64_t i = 0; i < C; i++) ss += (double)r[i] * r[i], dot += (double)g[n * C + i] * w[i] * r[i];
    double rs = 1.0 / sqrt(ss / C + eps);
    for (int64_t i = 0; i < C; i++) {
      y[n * C + i] = r[i] * rs * w[i];
      dx[n * C + i] = pre[n * C + i] + rs * w[i] * g[n * C + i] - dot * rs * rs * rs / C * r[i];
    }
  }
  apk_ctx *ctxs[2] = {ctx_simd, ctx_scalar};
  for (int c = 0; c < 2; c++) {
    float *out = malloc((size_t)(N * C) * 4), *rstd = malloc((size_t)N * 4), *gx = copy_array(pre, N * C);
    apk_tensor tx = view(x, APK_F32, 2, N, C, 0, 0), tw = view(w, APK_F32, 1, C, 0, 0, 0),
               ty = view(out, APK_F32, 2, N, C, 0, 0), tr = view(rstd, APK_F32, 1, N, 0, 0, 0),
               tg = view(g, APK_F32, 2, N, C, 0, 0), tdx = view(gx, APK_F32, 2, N, C, 0, 0);
    CHECK_EQ_INT(apk_rmsnorm_forward(ctxs[c], &ty, &tr, &tx, &tw, (float)eps), APK_OK);
    CHECK_EQ_INT(apk_rmsnorm_backward(ctxs[c], &tdx, &tg, &tx, &tw, &tr), APK_OK);
    double ey = max_rel(out, y, N * C, 1e-3), ed = max_rel(gx, dx, N * C, 1e-3);
    CHECKF(ey < 1e-6 && ed < 1e-5, "%s N%lld C%lld: out %.3g dinp %.3g", c ? "scalar" : "simd", (long long)N,
           (long long)C, ey, ed);
    free(out), free(rstd), free(gx);
  }
  free(x), free(w), free(g), free(pre), free(y), free(dx);
}

static void test_rmsnorm(void) {
  test_rmsnorm_shape(2100, 67); /* parallel, tail of 3 */
  test_rmsnorm_shape(64, 32);
  test_rmsnorm_shape(5, 5);
}

/* ---- rope ------------------------------------------------------------------------ */

/* Both paths use apk_rope_rotate's operations in its order: the same bits;
 * and against the rotation in double. */
static void test_rope_shape(int64_t N, int64_t H, int64_t D, int64_t T) {
  int64_t half = D / 2, n = N * H * D;
  float *x = frand_array(n, 2.0), *cs = malloc((size_t)(T * half) * 4), *sn = malloc((size_t)(T * half) * 4);
  apk_rope_tables(cs, sn, (int)T, (int)D, 10000.0, NULL);
  float *y[2][2];
  apk_ctx *ctxs[2] = {ctx_simd, ctx_scalar};
  apk_tensor tc = view(cs, APK_F32, 2, T, half, 0, 0), ts = view(sn, APK_F32, 2, T, half, 0, 0),
             tx = view(x, APK_F32, 3, N, H, D, 0);
  for (int c = 0; c < 2; c++) {
    y[c][0] = malloc((size_t)n * 4), y[c][1] = copy_array(x, n);
    apk_tensor ty = view(y[c][0], APK_F32, 3, N, H, D, 0), tin = view(y[c][1], APK_F32, 3, N, H, D, 0);
    CHECK_EQ_INT(apk_rope_forward(ctxs[c], &ty, &tx, &tc, &ts), APK_OK);
    CHECK_EQ_INT(apk_rope_forward(ctxs[c], &tin, &tin, &tc, &ts), APK_OK); /* in place */
    CHECK_EQ_INT(apk_rope_backward(ctxs[c], &tin, &tin, &tc, &ts), APK_OK); /* and back */
  }
  CHECKF(same_bits(y[0][0], y[1][0], n) && same_bits(y[0][1], y[1][1], n), "rope N%lld H%lld D%lld: paths differ",
         (long long)N, (long long)H, (long long)D);
  double err = 0, back = 0;
  for (int64_t r = 0; r < N; r++)
    for (int64_t h = 0; h < H; h++)
      for (int64_t i = 0; i < half; i++) {
        int64_t o = (r * H + h) * D;
        double c = cs[(r % T) * half + i], s = sn[(r % T) * half + i], x1 = x[o + i], x2 = x[o + i + half];
        err = fmax(err, fabs(y[0][0][o + i] - (x1 * c - x2 * s)));
        err = fmax(err, fabs(y[0][0][o + i + half] - (x2 * c + x1 * s)));
        back = fmax(back, fmax(fabs(y[0][1][o + i] - x1), fabs(y[0][1][o + i + half] - x2)));
      }
  CHECKF(err < 1e-6 && back < 2e-6, "rope N%lld H%lld D%lld: forward err %.3g, forward+backward err %.3g",
         (long long)N, (long long)H, (long long)D, err, back);
  for (int c = 0; c < 2; c++) free(y[c][0]), free(y[c][1]);
  free(x), free(cs), free(sn);
}

static void test_rope(void) {
  test_rope_shape(1024, 8, 8, 512);  /* stories260K q: half 4, parallel */
  test_rope_shape(256, 2, 32, 256);  /* tinyqwen3-a k */
  test_rope_shape(40, 3, 64, 20);
  test_rope_shape(32, 2, 12, 16);    /* half 6: 4 + a scalar tail */
  test_rope_shape(8, 1, 2, 4);
}

int main(void) {
#if APK_CPU_HAVE_AVX2
  have_avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#endif
  if (setenv("APK_CPU_SIMD", "0", 1) || apk_ctx_create(APK_CPU, 0, &ctx_scalar) || unsetenv("APK_CPU_SIMD") ||
      apk_ctx_create(APK_CPU, 0, &ctx_simd)) {
    fprintf(stderr, "cannot create CPU contexts: %s\n", apk_last_error());
    return 1;
  }
  printf("vector path %s\n", have_avx2 ? "AVX2+FMA" : "absent (both contexts scalar)");
#if APK_CPU_HAVE_AVX2
  test_exp8();
#endif
  test_attention();
  test_crossentropy();
  test_swiglu();
  test_rmsnorm();
  test_rope();
  apk_ctx_destroy(ctx_simd);
  apk_ctx_destroy(ctx_scalar);
  TEST_DONE();
}
