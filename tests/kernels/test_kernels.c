/*
 * test_kernels.c - every CPU op against a naive double-precision reference,
 * and every backward op against central finite differences of that reference
 * (loss = sum_i g_i * out_i for a random g, so dL/dout = g).
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ap_kernels.h"
#include "ap_math.h"
#include "test.h"

static apk_ctx *ctx;

/* ---- helpers --------------------------------------------------------------- */

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;
static double urand(void) { /* splitmix64 -> [0,1) */
  uint64_t z = (rng_state += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  z ^= z >> 31;
  return (double)(z >> 11) / 9007199254740992.0;
}
static float frand(void) { return (float)(2.0 * urand() - 1.0); }
static void fill(float *x, int64_t n, float scale) {
  for (int64_t i = 0; i < n; i++) x[i] = frand() * scale;
}
static double *to_d(const float *x, int64_t n) {
  double *d = malloc((size_t)n * sizeof *d);
  for (int64_t i = 0; i < n; i++) d[i] = x[i];
  return d;
}
/* max |a-b| / max(|b|, floor) over the arrays */
static double max_rel(const float *a, const double *b, int64_t n, double floor) {
  double mx = floor, err = 0;
  for (int64_t i = 0; i < n; i++)
    if (fabs(b[i]) > mx) mx = fabs(b[i]);
  for (int64_t i = 0; i < n; i++)
    if (fabs(a[i] - b[i]) > err) err = fabs(a[i] - b[i]);
  return err / mx;
}
static apk_tensor host(apk_dtype dt, void *p, int ndim, int64_t d0, int64_t d1, int64_t d2, int64_t d3) {
  int64_t s[4] = {d0, d1, d2, d3};
  return apk_view(APK_CPU, dt, p, ndim, s);
}
#define T1(dt, p, a) host(dt, p, 1, a, 0, 0, 0)
#define T2(dt, p, a, b) host(dt, p, 2, a, b, 0, 0)
#define T3(dt, p, a, b, c) host(dt, p, 3, a, b, c, 0)
#define T4(dt, p, a, b, c, d) host(dt, p, 4, a, b, c, d)

/* Reference forward: maps the double input x (n_in) to the output y. The
 * extra pointer carries the op's other (fixed) arguments. */
typedef void (*ref_fn)(const double *x, double *y, void *arg);

/* Central differences of L = g . f(x) wrt every x_j. */
static void fd_grad(ref_fn f, void *arg, double *x, int64_t n_in, const double *g, int64_t n_out, double *grad) {
  double *y = malloc((size_t)n_out * sizeof *y);
  const double h = 1e-5;
  for (int64_t j = 0; j < n_in; j++) {
    double keep = x[j], lp = 0, lm = 0;
    x[j] = keep + h;
    f(x, y, arg);
    for (int64_t i = 0; i < n_out; i++) lp += g[i] * y[i];
    x[j] = keep - h;
    f(x, y, arg);
    for (int64_t i = 0; i < n_out; i++) lm += g[i] * y[i];
    x[j] = keep;
    grad[j] = (lp - lm) / (2 * h);
  }
  free(y);
}

/* ---- embedding -------------------------------------------------------------- */

static void test_embedding(void) {
  enum { V = 11, C = 6, N = 9 };
  float table[V * C], out[N * C];
  int32_t tok[N];
  fill(table, V * C, 1);
  for (int i = 0; i < N; i++) tok[i] = (i * 7) % V;
  apk_tensor to = T2(APK_F32, out, N, C), tt = T1(APK_I32, tok, N), tb = T2(APK_F32, table, V, C);
  CHECK_EQ_INT(apk_embedding_forward(ctx, &to, &tt, &tb), APK_OK);
  int ok = 1;
  for (int n = 0; n < N; n++)
    for (int c = 0; c < C; c++) ok &= out[n * C + c] == table[tok[n] * C + c];
  CHECK(ok);
  tok[3] = V;
  CHECK_EQ_INT(apk_embedding_forward(ctx, &to, &tt, &tb), APK_ERANGE);
  tok[3] = -1;
  CHECK_EQ_INT(apk_embedding_forward(ctx, &to, &tt, &tb), APK_ERANGE);
  apk_tensor bad = T2(APK_F32, out, N, C - 1);
  tok[3] = 0;
  CHECK_EQ_INT(apk_embedding_forward(ctx, &bad, &tt, &tb), APK_EINVAL);
  CHECK(strlen(apk_last_error()) > 0);
}

/* ---- rmsnorm ------------------------------------------------------------------ */

typedef struct { int64_t N, C; const double *w; double eps; } rms_arg;
static void rms_ref(const double *x, double *y, void *va) {
  rms_arg *a = va;
  for (int64_t n = 0; n < a->N; n++) {
    double ss = 0;
    for (int64_t c = 0; c < a->C; c++) ss += x[n * a->C + c] * x[n * a->C + c];
    double r = 1.0 / sqrt(ss / a->C + a->eps);
    for (int64_t c = 0; c < a->C; c++) y[n * a->C + c] = x[n * a->C + c] * r * a->w[c];
  }
}

static void test_rmsnorm(void) {
  enum { N = 5, C = 37 };
  float x[N * C], w[C], y[N * C], rstd[N], g[N * C], dx[N * C];
  fill(x, N * C, 2);
  fill(w, C, 1.5);
  fill(g, N * C, 1);
  apk_tensor tx = T2(APK_F32, x, N, C), tw = T1(APK_F32, w, C), ty = T2(APK_F32, y, N, C), tr = T1(APK_F32, rstd, N);
  CHECK_EQ_INT(apk_rmsnorm_forward(ctx, &ty, &tr, &tx, &tw, 1e-5f), APK_OK);
  double *xd = to_d(x, N * C), *wd = to_d(w, C), *gd = to_d(g, N * C), yd[N * C], gradd[N * C];
  rms_arg a = {N, C, wd, 1e-5};
  rms_ref(xd, yd, &a);
  CHECK_NEAR(max_rel(y, yd, N * C, 1e-3), 0, 1e-6);
  for (int i = 0; i < N * C; i++) dx[i] = 1.0f; /* backward accumulates */
  apk_tensor tg = T2(APK_F32, g, N, C), tdx = T2(APK_F32, dx, N, C);
  CHECK_EQ_INT(apk_rmsnorm_backward(ctx, &tdx, &tg, &tx, &tw, &tr), APK_OK);
  fd_grad(rms_ref, &a, xd, N * C, gd, N * C, gradd);
  for (int i = 0; i < N * C; i++) gradd[i] += 1.0;
  CHECK_NEAR(max_rel(dx, gradd, N * C, 1e-3), 0, 1e-5);
  /* in-place forward */
  memcpy(y, x, sizeof x);
  CHECK_EQ_INT(apk_rmsnorm_forward(ctx, &ty, NULL, &ty, &tw, 1e-5f), APK_OK);
  CHECK_NEAR(max_rel(y, yd, N * C, 1e-3), 0, 1e-6);
  free(xd), free(wd), free(gd);
}

/* ---- linear ---------------------------------------------------------------------- */

typedef struct { int64_t N, IC, OC; const double *x, *w, *b; int wrt; } lin_arg;
static void lin_eval(const double *x, const double *w, const double *b, double *y, const lin_arg *a) {
  for (int64_t n = 0; n < a->N; n++)
    for (int64_t o = 0; o < a->OC; o++) {
      double s = b ? b[o] : 0;
      for (int64_t i = 0; i < a->IC; i++) s += x[n * a->IC + i] * w[o * a->IC + i];
      y[n * a->OC + o] = s;
    }
}
static void lin_ref(const double *v, double *y, void *va) {
  lin_arg *a = va; /* wrt: 0 input, 1 weight, 2 bias */
  lin_eval(a->wrt == 0 ? v : a->x, a->wrt == 1 ? v : a->w, a->wrt == 2 ? v : a->b, y, a);
}

static void test_linear(void) {
  enum { N = 7, IC = 13, OC = 9 };
  float x[N * IC], w[OC * IC], b[OC], y[N * OC], g[N * OC], dx[N * IC], dw[OC * IC], db[OC];
  fill(x, N * IC, 1);
  fill(w, OC * IC, 1);
  fill(b, OC, 1);
  fill(g, N * OC, 1);
  apk_tensor tx = T2(APK_F32, x, N, IC), tw = T2(APK_F32, w, OC, IC), tb = T1(APK_F32, b, OC),
             ty = T2(APK_F32, y, N, OC), tg = T2(APK_F32, g, N, OC), tdx = T2(APK_F32, dx, N, IC),
             tdw = T2(APK_F32, dw, OC, IC), tdb = T1(APK_F32, db, OC);
  double *xd = to_d(x, N * IC), *wd = to_d(w, OC * IC), *bd = to_d(b, OC), *gd = to_d(g, N * OC), yd[N * OC];
  lin_arg a = {N, IC, OC, xd, wd, bd, 0};
  CHECK_EQ_INT(apk_linear_forward(ctx, &ty, &tx, &tw, &tb), APK_OK);
  lin_eval(xd, wd, bd, yd, &a);
  CHECK_NEAR(max_rel(y, yd, N * OC, 1e-3), 0, 1e-6);
  CHECK_EQ_INT(apk_linear_forward(ctx, &ty, &tx, &tw, NULL), APK_OK);
  lin_eval(xd, wd, NULL, yd, &a);
  CHECK_NEAR(max_rel(y, yd, N * OC, 1e-3), 0, 1e-6);

  memset(dx, 0, sizeof dx), memset(dw, 0, sizeof dw), memset(db, 0, sizeof db);
  CHECK_EQ_INT(apk_linear_backward(ctx, &tdx, &tdw, &tdb, &tg, &tx, &tw), APK_OK);
  double gx[N * IC], gw[OC * IC], gb[OC];
  a.wrt = 0, fd_grad(lin_ref, &a, xd, N * IC, gd, N * OC, gx);
  a.wrt = 1, fd_grad(lin_ref, &a, wd, OC * IC, gd, N * OC, gw);
  a.wrt = 2, fd_grad(lin_ref, &a, bd, OC, gd, N * OC, gb);
  CHECK_NEAR(max_rel(dx, gx, N * IC, 1e-3), 0, 1e-5);
  CHECK_NEAR(max_rel(dw, gw, OC * IC, 1e-3), 0, 1e-5);
  CHECK_NEAR(max_rel(db, gb, OC, 1e-3), 0, 1e-5);
  /* accumulation: a second call doubles the gradients */
  CHECK_EQ_INT(apk_linear_backward(ctx, NULL, &tdw, NULL, &tg, &tx, &tw), APK_OK);
  for (int i = 0; i < OC * IC; i++) gw[i] *= 2;
  CHECK_NEAR(max_rel(dw, gw, OC * IC, 1e-3), 0, 1e-5);
  apk_tensor wrong = T2(APK_F32, w, IC, OC);
  CHECK_EQ_INT(apk_linear_forward(ctx, &ty, &tx, &wrong, NULL), APK_EINVAL);
  free(xd), free(wd), free(bd), free(gd);
}

/* ---- rope ------------------------------------------------------------------------ */

typedef struct { int64_t N, H, D, T; const double *cs, *sn; } rope_arg;
static void rope_ref(const double *x, double *y, void *va) {
  rope_arg *a = va;
  int64_t half = a->D / 2;
  for (int64_t n = 0; n < a->N; n++)
    for (int64_t h = 0; h < a->H; h++)
      for (int64_t i = 0; i < half; i++) {
        const double *v = x + (n * a->H + h) * a->D;
        double c = a->cs[(n % a->T) * half + i], s = a->sn[(n % a->T) * half + i];
        y[(n * a->H + h) * a->D + i] = v[i] * c - v[i + half] * s;
        y[(n * a->H + h) * a->D + i + half] = v[i + half] * c + v[i] * s;
      }
}

static void test_rope(void) {
  enum { T = 6, B = 2, N = B * T, H = 3, D = 8, HALF = D / 2 };
  float cs[T * HALF], sn[T * HALF], x[N * H * D], y[N * H * D], g[N * H * D];
  /* tables against the formula in double: theta^(-2i/D), angle pos*inv_freq */
  apk_rope_tables(cs, sn, T, D, 10000.0, NULL);
  double cd[T * HALF], sd[T * HALF], maxerr = 0;
  for (int t = 0; t < T; t++)
    for (int i = 0; i < HALF; i++) {
      double ang = t * pow(10000.0, -2.0 * i / D);
      cd[t * HALF + i] = cos(ang), sd[t * HALF + i] = sin(ang);
      maxerr = fmax(maxerr, fabs(cs[t * HALF + i] - cd[t * HALF + i]) + fabs(sn[t * HALF + i] - sd[t * HALF + i]));
    }
  CHECK_NEAR(maxerr, 0, 1e-6);
  /* llama3 scaling: low frequencies divided by factor, high ones kept, the
   * band between interpolated (HF _compute_llama3_parameters) */
  {
    enum { D2 = 64, H2 = D2 / 2 };
    float c2[2 * H2], s2[2 * H2];
    apk_rope_scaling sc = {1, 8.0, 1.0, 4.0, 64.0};
    apk_rope_tables(c2, s2, 2, D2, 500000.0, &sc);
    double worst = 0;
    for (int i = 0; i < H2; i++) {
      double inv = pow(500000.0, -2.0 * i / D2), wl = 2 * M_PI / inv, f;
      if (wl < 64.0 / 4.0) f = inv;
      else if (wl > 64.0 / 1.0) f = inv / 8.0;
      else {
        double sm = (64.0 / wl - 1.0) / (4.0 - 1.0);
        f = (1 - sm) * inv / 8.0 + sm * inv;
      }
      worst = fmax(worst, fabs(atan2(s2[H2 + i], c2[H2 + i]) - f) / f); /* angle at position 1 = inv_freq */
    }
    CHECK_NEAR(worst, 0, 1e-6);
  }
  fill(x, N * H * D, 1);
  fill(g, N * H * D, 1);
  apk_tensor tc = T2(APK_F32, cs, T, HALF), ts = T2(APK_F32, sn, T, HALF), tx = T3(APK_F32, x, N, H, D),
             ty = T3(APK_F32, y, N, H, D), tg = T3(APK_F32, g, N, H, D);
  CHECK_EQ_INT(apk_rope_forward(ctx, &ty, &tx, &tc, &ts), APK_OK);
  double *xd = to_d(x, N * H * D), *gd = to_d(g, N * H * D), *cdd = to_d(cs, T * HALF), *sdd = to_d(sn, T * HALF);
  double yd[N * H * D], gx[N * H * D];
  rope_arg a = {N, H, D, T, cdd, sdd};
  rope_ref(xd, yd, &a);
  CHECK_NEAR(max_rel(y, yd, N * H * D, 1e-3), 0, 1e-6);
  CHECK_EQ_INT(apk_rope_backward(ctx, &tg, &tg, &tc, &ts), APK_OK); /* in place */
  fd_grad(rope_ref, &a, xd, N * H * D, gd, N * H * D, gx);
  CHECK_NEAR(max_rel(g, gx, N * H * D, 1e-3), 0, 1e-5);
  apk_tensor bad_tables = T2(APK_F32, cs, T - 1, HALF);
  CHECK_EQ_INT(apk_rope_forward(ctx, &ty, &tx, &bad_tables, &ts), APK_EINVAL);
  free(xd), free(gd), free(cdd), free(sdd);
}

/* ---- attention ------------------------------------------------------------------- */

typedef struct { int64_t B, T, H, KVH, D; const double *q, *k, *v; int wrt; } att_arg;
static void att_eval(const double *q, const double *k, const double *v, double *o, const att_arg *a) {
  int64_t B = a->B, T = a->T, H = a->H, KVH = a->KVH, D = a->D, grp = H / KVH;
  double *p = malloc((size_t)T * sizeof *p);
  for (int64_t b = 0; b < B; b++)
    for (int64_t h = 0; h < H; h++)
      for (int64_t t = 0; t < T; t++) {
        double mx = -1e300, sum = 0;
        for (int64_t j = 0; j <= t; j++) {
          double s = 0;
          for (int64_t d = 0; d < D; d++) s += q[((b * T + t) * H + h) * D + d] * k[((b * T + j) * KVH + h / grp) * D + d];
          p[j] = s / sqrt((double)D);
          mx = fmax(mx, p[j]);
        }
        for (int64_t j = 0; j <= t; j++) sum += (p[j] = exp(p[j] - mx));
        for (int64_t d = 0; d < D; d++) {
          double s = 0;
          for (int64_t j = 0; j <= t; j++) s += p[j] * v[((b * T + j) * KVH + h / grp) * D + d];
          o[((b * T + t) * H + h) * D + d] = s / sum;
        }
      }
  free(p);
}
static void att_ref(const double *x, double *y, void *va) {
  att_arg *a = va;
  att_eval(a->wrt == 0 ? x : a->q, a->wrt == 1 ? x : a->k, a->wrt == 2 ? x : a->v, y, a);
}

static void test_attention(void) {
  enum { B = 2, T = 7, H = 4, KVH = 2, D = 8, NQ = B * T * H * D, NK = B * T * KVH * D };
  float q[NQ], k[NK], v[NK], o[NQ], lse[B * H * T], g[NQ], dq[NQ], dk[NK], dv[NK];
  fill(q, NQ, 1.5), fill(k, NK, 1.5), fill(v, NK, 1), fill(g, NQ, 1);
  apk_tensor tq = T4(APK_F32, q, B, T, H, D), tk = T4(APK_F32, k, B, T, KVH, D), tv = T4(APK_F32, v, B, T, KVH, D),
             to = T4(APK_F32, o, B, T, H, D), tl = T3(APK_F32, lse, B, H, T), tg = T4(APK_F32, g, B, T, H, D),
             tdq = T4(APK_F32, dq, B, T, H, D), tdk = T4(APK_F32, dk, B, T, KVH, D),
             tdv = T4(APK_F32, dv, B, T, KVH, D);
  CHECK_EQ_INT(apk_attention_forward(ctx, &to, &tl, &tq, &tk, &tv), APK_OK);
  double *qd = to_d(q, NQ), *kd = to_d(k, NK), *vd = to_d(v, NK), *gd = to_d(g, NQ), od[NQ];
  att_arg a = {B, T, H, KVH, D, qd, kd, vd, 0};
  att_eval(qd, kd, vd, od, &a);
  CHECK_NEAR(max_rel(o, od, NQ, 1e-3), 0, 2e-6);
  /* position 0 attends only to itself: output = v[0] of its kv head */
  CHECK_NEAR(o[(1 * T * H + 3) * D + 2], v[(1 * T * KVH + 1) * D + 2], 1e-6);
  memset(dq, 0, sizeof dq), memset(dk, 0, sizeof dk), memset(dv, 0, sizeof dv);
  CHECK_EQ_INT(apk_attention_backward(ctx, &tdq, &tdk, &tdv, &tg, &tq, &tk, &tv, &to, &tl), APK_OK);
  double gq[NQ], gk[NK], gv[NK];
  a.wrt = 0, fd_grad(att_ref, &a, qd, NQ, gd, NQ, gq);
  a.wrt = 1, fd_grad(att_ref, &a, kd, NK, gd, NQ, gk);
  a.wrt = 2, fd_grad(att_ref, &a, vd, NK, gd, NQ, gv);
  CHECK_NEAR(max_rel(dq, gq, NQ, 1e-3), 0, 1e-4);
  CHECK_NEAR(max_rel(dk, gk, NK, 1e-3), 0, 1e-4);
  CHECK_NEAR(max_rel(dv, gv, NK, 1e-3), 0, 1e-4);
  apk_tensor badk = T4(APK_F32, k, B, T, 3, D * KVH / 3 * 0 + D);
  CHECK_EQ_INT(apk_attention_forward(ctx, &to, &tl, &tq, &badk, &badk), APK_EINVAL);
  free(qd), free(kd), free(vd), free(gd);
}

/* A longer window checks the row buffer, the numerics of long softmax rows,
 * and the parallel split (T = 600 rows over the OpenMP threads). */
static void test_attention_long(void) {
  enum { B = 1, T = 600, H = 2, KVH = 1, D = 16, NQ = B * T * H * D, NK = B * T * KVH * D };
  float *q = malloc(NQ * 4), *k = malloc(NK * 4), *v = malloc(NK * 4), *o = malloc(NQ * 4);
  fill(q, NQ, 2), fill(k, NK, 2), fill(v, NK, 1);
  apk_tensor tq = T4(APK_F32, q, B, T, H, D), tk = T4(APK_F32, k, B, T, KVH, D), tv = T4(APK_F32, v, B, T, KVH, D),
             to = T4(APK_F32, o, B, T, H, D);
  CHECK_EQ_INT(apk_attention_forward(ctx, &to, NULL, &tq, &tk, &tv), APK_OK);
  double *qd = to_d(q, NQ), *kd = to_d(k, NK), *vd = to_d(v, NK), *od = malloc(NQ * sizeof(double));
  att_arg a = {B, T, H, KVH, D, qd, kd, vd, 0};
  att_eval(qd, kd, vd, od, &a);
  CHECK_NEAR(max_rel(o, od, NQ, 1e-3), 0, 1e-5);
  free(q), free(k), free(v), free(o), free(qd), free(kd), free(vd), free(od);
}

/* ---- swiglu, add ---------------------------------------------------------------- */

typedef struct { int64_t n; const double *gate, *up; int wrt; } sw_arg;
static void sw_ref(const double *x, double *y, void *va) {
  sw_arg *a = va;
  for (int64_t i = 0; i < a->n; i++) {
    double g = a->wrt == 0 ? x[i] : a->gate[i], u = a->wrt == 1 ? x[i] : a->up[i];
    y[i] = g / (1 + exp(-g)) * u;
  }
}

static void test_swiglu(void) {
  enum { N = 301 };
  float gt[N], up[N], o[N], g[N], dg[N], du[N];
  fill(gt, N, 6), fill(up, N, 2), fill(g, N, 1);
  apk_tensor tgt = T1(APK_F32, gt, N), tup = T1(APK_F32, up, N), to = T1(APK_F32, o, N), tg = T1(APK_F32, g, N),
             tdg = T1(APK_F32, dg, N), tdu = T1(APK_F32, du, N);
  CHECK_EQ_INT(apk_swiglu_forward(ctx, &to, &tgt, &tup), APK_OK);
  double *gtd = to_d(gt, N), *upd = to_d(up, N), *gd = to_d(g, N), od[N], ggt[N], gup[N];
  sw_arg a = {N, gtd, upd, 0};
  sw_ref(gtd, od, &a);
  CHECK_NEAR(max_rel(o, od, N, 1e-3), 0, 1e-6);
  CHECK_EQ_INT(apk_swiglu_backward(ctx, &tdg, &tdu, &tg, &tgt, &tup), APK_OK);
  a.wrt = 0, fd_grad(sw_ref, &a, gtd, N, gd, N, ggt);
  a.wrt = 1, fd_grad(sw_ref, &a, upd, N, gd, N, gup);
  CHECK_NEAR(max_rel(dg, ggt, N, 1e-3), 0, 1e-5);
  CHECK_NEAR(max_rel(du, gup, N, 1e-3), 0, 1e-5);
  float acc[N];
  for (int i = 0; i < N; i++) acc[i] = (float)i;
  apk_tensor ta = T1(APK_F32, acc, N);
  CHECK_EQ_INT(apk_add_inplace(ctx, &ta, &tup), APK_OK);
  CHECK_NEAR(acc[17], 17 + up[17], 1e-6);
  free(gtd), free(upd), free(gd);
}

/* ---- cross-entropy ------------------------------------------------------------------ */

typedef struct { int64_t N, V; const int32_t *tg; } ce_arg;
static void ce_ref(const double *x, double *y, void *va) {
  ce_arg *a = va;
  for (int64_t n = 0; n < a->N; n++) {
    if (a->tg[n] < 0) {
      y[n] = 0;
      continue;
    }
    double mx = -1e300, s = 0;
    for (int64_t i = 0; i < a->V; i++) mx = fmax(mx, x[n * a->V + i]);
    for (int64_t i = 0; i < a->V; i++) s += exp(x[n * a->V + i] - mx);
    y[n] = mx + log(s) - x[n * a->V + a->tg[n]];
  }
}

static void test_crossentropy(void) {
  enum { B = 2, T = 4, N = B * T, V = 50 };
  float lg[N * V], nll[N], dl[N * V];
  int32_t tg[N];
  fill(lg, N * V, 8);
  for (int n = 0; n < N; n++) tg[n] = (n * 13) % V;
  tg[T - 1] = -1, tg[N - 1] = -1; /* the last position of each window predicts nothing */
  apk_tensor tl = T2(APK_F32, lg, N, V), tn = T1(APK_F32, nll, N), tt = T1(APK_I32, tg, N), td = T2(APK_F32, dl, N, V);
  CHECK_EQ_INT(apk_crossentropy_forward(ctx, &tn, &tl, &tt), APK_OK);
  double *ld = to_d(lg, N * V), nd[N], gd[N], gl[N * V];
  ce_arg a = {N, V, tg};
  ce_ref(ld, nd, &a);
  CHECK_NEAR(max_rel(nll, nd, N, 1e-3), 0, 1e-6);
  double sums[B] = {0.5, 0};
  CHECK_EQ_INT(apk_nll_window_sums(ctx, sums, &tn, B), APK_OK);
  CHECK_NEAR(sums[0], 0.5 + nd[0] + nd[1] + nd[2], 1e-5);
  CHECK_NEAR(sums[1], nd[4] + nd[5] + nd[6], 1e-5);
  float scale = 1.0f / 6;
  CHECK_EQ_INT(apk_crossentropy_backward(ctx, &td, &tl, &tt, scale), APK_OK);
  for (int n = 0; n < N; n++) gd[n] = scale;
  fd_grad(ce_ref, &a, ld, N * V, gd, N, gl);
  CHECK_NEAR(max_rel(dl, gl, N * V, 1e-3), 0, 1e-5);
  /* in place */
  CHECK_EQ_INT(apk_crossentropy_backward(ctx, &tl, &tl, &tt, scale), APK_OK);
  CHECK_NEAR(max_rel(lg, gl, N * V, 1e-3), 0, 1e-5);
  tg[2] = V;
  CHECK_EQ_INT(apk_crossentropy_forward(ctx, &tn, &tl, &tt), APK_ERANGE);
  free(ld);
}

/* ---- pruning statistics and masks ----------------------------------------------- */

static void test_stats_and_masks(void) {
  enum { N = 123, C = 300 }; /* C spans two column blocks of the CPU kernel */
  float *x = malloc(N * C * 4);
  double acc[C], ref[C];
  fill(x, N * C, 3);
  for (int c = 0; c < C; c++) acc[c] = ref[c] = c * 0.25;
  for (int n = 0; n < N; n++)
    for (int c = 0; c < C; c++) ref[c] += (double)x[n * C + c] * x[n * C + c];
  apk_tensor tx = T2(APK_F32, x, N, C), ta = T1(APK_F64, acc, C);
  CHECK_EQ_INT(apk_colsumsq_accumulate(ctx, &ta, &tx), APK_OK);
  double worst = 0;
  for (int c = 0; c < C; c++) worst = fmax(worst, fabs(acc[c] - ref[c]) / ref[c]);
  CHECK_NEAR(worst, 0, 1e-12);
  apk_tensor ta32 = T1(APK_F32, x, C);
  CHECK_EQ_INT(apk_colsumsq_accumulate(ctx, &ta32, &tx), APK_EINVAL);

  /* |grad| accumulation, F32 and F64 */
  float g[C], a32[C];
  double a64[C];
  fill(g, C, 1);
  for (int c = 0; c < C; c++) a32[c] = 1, a64[c] = 2;
  apk_tensor tg = T1(APK_F32, g, C), t32 = T1(APK_F32, a32, C), t64 = T1(APK_F64, a64, C);
  CHECK_EQ_INT(apk_absgrad_accumulate(ctx, &t32, &tg), APK_OK);
  CHECK_EQ_INT(apk_absgrad_accumulate(ctx, &t64, &tg), APK_OK);
  CHECK_EQ_INT(apk_absgrad_accumulate(ctx, &t64, &tg), APK_OK);
  int ok = 1;
  for (int c = 0; c < C; c++) ok &= a32[c] == 1 + fabsf(g[c]) && fabs(a64[c] - (2 + 2 * fabs((double)g[c]))) < 1e-12;
  CHECK(ok);

  /* mask apply / restore from F32, BF16 and F16 originals, unaligned */
  enum { R = 5, K = 13, NW = R * K };
  float o32[NW], work[NW];
  uint16_t obf[NW], of16[NW];
  uint8_t mask[(NW + 7) / 8];
  for (int i = 0; i < NW; i++) {
    o32[i] = (float)(i - 30) / 8.0f; /* exact in bf16 and f16 */
    obf[i] = apk_f32_to_bf16(o32[i]);
    of16[i] = 0;
  }
  /* f16 bit patterns of the same values built by hand: sign, exponent, mantissa */
  for (int i = 0; i < NW; i++) {
    float v = o32[i];
    if (v == 0) continue;
    float av = fabsf(v);
    int e = (int)floor(log2(av));
    int man = (int)lround((av / ldexp(1.0, e) - 1.0) * 1024);
    of16[i] = (uint16_t)((v < 0 ? 0x8000 : 0) | ((e + 15) << 10) | man);
  }
  memset(mask, 0, sizeof mask);
  for (int i = 0; i < NW; i += 3) apk_mask_set(mask, (uint64_t)i);
  char *unaligned = malloc(NW * 4 + 1);
  memcpy(unaligned + 1, obf, sizeof obf);
  apk_tensor tw = T2(APK_F32, work, R, K), tm = T1(APK_U8, mask, sizeof mask);
  apk_tensor origs[3] = {T2(APK_F32, o32, R, K), T2(APK_BF16, unaligned + 1, R, K), T2(APK_F16, of16, R, K)};
  for (int k = 0; k < 3; k++) {
    CHECK_EQ_INT(apk_mask_apply(ctx, &tw, &origs[k], &tm), APK_OK);
    int good = 1;
    for (int i = 0; i < NW; i++) good &= work[i] == (i % 3 == 0 ? 0.0f : o32[i]);
    CHECKF(good, "mask apply from %s", apk_dtype_name(origs[k].dtype));
    CHECK_EQ_INT(apk_mask_restore(ctx, &tw, &origs[k]), APK_OK);
    good = 1;
    for (int i = 0; i < NW; i++) good &= work[i] == o32[i];
    CHECKF(good, "restore from %s", apk_dtype_name(origs[k].dtype));
  }
  /* |x| summed over kept elements only */
  double kept = 0, ref_kept = 0, all = 0;
  for (int i = 0; i < NW; i++) {
    if (i % 3) ref_kept += fabs((double)o32[i]);
  }
  apk_tensor t_o32 = T2(APK_F32, o32, R, K);
  CHECK_EQ_INT(apk_abs_sum_kept(ctx, &kept, &t_o32, &tm), APK_OK);
  CHECK_NEAR(kept, ref_kept, 1e-12);
  CHECK_EQ_INT(apk_abs_sum_kept(ctx, &all, &t_o32, NULL), APK_OK);
  CHECK(all > kept);
  apk_tensor short_mask = T1(APK_U8, mask, 3);
  CHECK_EQ_INT(apk_mask_apply(ctx, &tw, &origs[0], &short_mask), APK_EINVAL);
  free(unaligned);
  free(x);
}

/* ---- conversions ---------------------------------------------------------------- */

static void test_conversions(void) {
  /* bf16/f16 -> f32 -> bf16/f16 is the identity on every finite pattern */
  int bad_bf = 0, bad_f16 = 0;
  for (uint32_t h = 0; h < 65536; h++) {
    float f = apk_bf16_to_f32((uint16_t)h);
    if (!isnan(f) && apk_f32_to_bf16(f) != h) bad_bf++;
    float g = apk_f16_to_f32((uint16_t)h);
    if (isfinite(g) && g != 0) { /* compare against ldexp construction */
      int e = (h >> 10) & 31, m = h & 1023;
      double ref = e ? ldexp(1.0 + m / 1024.0, e - 15) : ldexp(m / 1024.0, -14);
      if (h & 0x8000) ref = -ref;
      if ((double)g != ref) bad_f16++;
    }
  }
  CHECK_EQ_INT(bad_bf, 0);
  CHECK_EQ_INT(bad_f16, 0);
  CHECK_EQ_INT(apk_f32_to_bf16(1.00390625f), 0x3f80); /* tie to even: 1 + 2^-8 -> 1 */
  CHECK_EQ_INT(apk_f32_to_bf16(1.01171875f), 0x3f82); /* 1 + 3*2^-8 -> 1 + 2^-6 */
}

static void test_tensors(void) {
  apk_tensor t;
  CHECK_EQ_INT(apk_tensor_alloc2(ctx, &t, APK_F32, 4, 3), APK_OK);
  float src[12], dst[12];
  fill(src, 12, 1);
  CHECK_EQ_INT(apk_upload(ctx, &t, src), APK_OK);
  apk_tensor r = apk_view_rows(&t, 1, 2);
  CHECK(r.data == (float *)t.data + 3 && r.shape[0] == 2 && !r.owned);
  apk_tensor bad = apk_view_rows(&t, 3, 2);
  CHECK(bad.data == NULL);
  int64_t s3[3] = {2, 2, 3};
  apk_tensor re = apk_reshape(&t, 3, s3);
  CHECK(re.data == t.data && apk_tensor_numel(&re) == 12);
  int64_t s_bad[2] = {5, 3};
  CHECK(apk_reshape(&t, 2, s_bad).data == NULL);
  CHECK_EQ_INT(apk_download(ctx, dst, &t), APK_OK);
  CHECK(memcmp(src, dst, sizeof src) == 0);
  CHECK_EQ_INT(apk_zero(ctx, &r), APK_OK);
  CHECK_EQ_INT(apk_download(ctx, dst, &t), APK_OK);
  CHECK(dst[0] == src[0] && dst[3] == 0 && dst[8] == 0 && dst[9] == src[9]);
  apk_tensor_free(ctx, &t);
  CHECK(t.data == NULL);
  apk_ctx *cuda = NULL;
#ifndef APK_HAVE_CUDA
  CHECK_EQ_INT(apk_ctx_create(APK_CUDA, 0, &cuda), APK_ENOTSUP);
#endif
  CHECK(cuda == NULL || apk_ctx_backend(cuda) == APK_CUDA);
  apk_ctx_destroy(cuda);
}

int main(void) {
  if (apk_ctx_create(APK_CPU, 0, &ctx) != APK_OK) {
    fprintf(stderr, "no CPU context: %s\n", apk_last_error());
    return 1;
  }
  test_tensors();
  test_conversions();
  test_embedding();
  test_rmsnorm();
  test_linear();
  test_rope();
  test_attention();
  test_attention_long();
  test_swiglu();
  test_crossentropy();
  test_stats_and_masks();
  apk_ctx_destroy(ctx);
  TEST_DONE();
}
