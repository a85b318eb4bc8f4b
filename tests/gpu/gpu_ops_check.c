/*
 * gpu_ops_check.c - every CUDA op against its CPU twin, on random inputs and
 * on real weights (a model folder given as argv[1], e.g. stories260K), plus
 * the GPU pruning kernels against the CPU pruning library, the weight
 * streamer and the memory limit. Needs a GPU: exits 77 (ctest "skipped")
 * when there is none.
 *
 * Tolerances (error = max |gpu - cpu| / max |cpu| over the tensor, unless
 * noted; the CPU backend is itself within ~1e-5 of double references):
 *   element ops (embedding, RoPE, SwiGLU, add, mask apply)   1e-6
 *   row reductions (RMSNorm, cross-entropy, lse)              1e-5
 *   attention forward/backward (FP32, different sum order)    1e-4
 *   GEMM FP32 (cuBLAS vs OpenBLAS, K <= 1024)                 1e-4
 *   GEMM TF32                                                  5e-3
 *   GEMM BF16 / F16 inputs, FP32 accumulation                  2e-2 / 5e-3
 *   F64 column sums of squares (FP32 partial sums per block)  1e-6 relative per column
 *   masks (row selection, N:M), counts                         bit-identical
 * Prints one line per check and "N passed, N failed".
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ap_cuda.h"
#include "ap_kernels.h"
#include "ap_prune_gpu.h"
#include "bitmap.h"
#include "dtype.h"
#include "mask.h"
#include "safetensors.h"
#include "score.h"
#include "test.h"

static apk_ctx *cpu, *gpu;

static uint64_t rs = 88172645463325252ull;
static uint64_t rnd(void) {
  rs ^= rs << 13;
  rs ^= rs >> 7;
  rs ^= rs << 17;
  return rs;
}
static float gauss(void) {
  double u = ((rnd() >> 11) + 1.0) / 9007199254740993.0, v = (rnd() >> 11) / 9007199254740992.0;
  return (float)(sqrt(-2 * log(u)) * cos(6.283185307179586 * v));
}
static void fill(float *x, int64_t n, float sc) {
  for (int64_t i = 0; i < n; i++) x[i] = gauss() * sc;
}

/* A tensor on both backends with the same contents. */
typedef struct {
  apk_tensor c, g;
  int64_t n;
  apk_dtype dt;
} pair;

static pair mk(apk_dtype dt, int ndim, const int64_t *shape, const void *host) {
  pair p;
  memset(&p, 0, sizeof p);
  if (apk_tensor_alloc(cpu, &p.c, dt, ndim, shape) || apk_tensor_alloc(gpu, &p.g, dt, ndim, shape)) {
    fprintf(stderr, "allocation failed: %s\n", apk_last_error());
    exit(1);
  }
  p.n = apk_tensor_numel(&p.c);
  p.dt = dt;
  if (host) {
    apk_upload(cpu, &p.c, host);
    apk_upload(gpu, &p.g, host);
  } else {
    apk_zero(cpu, &p.c);
    apk_zero(gpu, &p.g);
  }
  return p;
}
static pair mk2(apk_dtype dt, int64_t d0, int64_t d1, const void *host) {
  int64_t s[2] = {d0, d1};
  return mk(dt, 2, s, host);
}
static pair mkr(int ndim, const int64_t *shape, float sc) {
  int64_t n = 1;
  for (int i = 0; i < ndim; i++) n *= shape[i];
  float *h = malloc((size_t)n * sizeof *h);
  fill(h, n, sc);
  pair p = mk(APK_F32, ndim, shape, h);
  free(h);
  return p;
}
static void drop(pair *p) {
  apk_tensor_free(cpu, &p->c);
  apk_tensor_free(gpu, &p->g);
}

/* max |g - c| / max |c| of an F32 pair (F64 with dt). */
static double rel_err(const pair *p) {
  size_t es = apk_dtype_size(p->dt);
  void *g = malloc((size_t)p->n * es);
  if (apk_download(gpu, g, &p->g)) {
    fprintf(stderr, "download: %s\n", apk_last_error());
    free(g);
    return INFINITY;
  }
  double mx = 0, md = 0;
  for (int64_t i = 0; i < p->n; i++) {
    double a = p->dt == APK_F64 ? ((double *)p->c.data)[i] : ((float *)p->c.data)[i];
    double b = p->dt == APK_F64 ? ((double *)g)[i] : ((float *)g)[i];
    if (fabs(a) > mx) mx = fabs(a);
    double d = fabs(a - b);
    if (!(d <= md)) md = isnan(d) ? INFINITY : d;
  }
  free(g);
  return mx > 0 ? md / mx : md;
}

#define OP(call)                                                                    \
  do {                                                                              \
    int rc_ = (call);                                                               \
    if (rc_) fprintf(stderr, "%s:%d %s -> %d: %s\n", __FILE__, __LINE__, #call, rc_, apk_last_error()); \
    CHECK(rc_ == 0);                                                                \
  } while (0)

static void report(const char *what, double err, double tol) {
  printf("  %-34s err %.3g  tol %.1g  %s\n", what, err, tol, err <= tol ? "ok" : "FAIL");
  CHECKF(err <= tol, "%s: %g > %g", what, err, tol);
}

/* ---- transformer ops ------------------------------------------------------------- */

static void check_transformer(int64_t B, int64_t T, int64_t H, int64_t KVH, int64_t D, int64_t C, int64_t I,
                              int64_t V) {
  printf("transformer ops: B %lld T %lld H %lld KVH %lld D %lld C %lld I %lld V %lld\n", (long long)B, (long long)T,
         (long long)H, (long long)KVH, (long long)D, (long long)C, (long long)I, (long long)V);
  int64_t N = B * T;
  /* embedding */
  int32_t *tok = malloc((size_t)N * sizeof *tok);
  for (int64_t i = 0; i < N; i++) tok[i] = (int32_t)(rnd() % (uint64_t)V);
  int64_t sN[1] = {N}, sVC[2] = {V, C};
  pair tokens = mk(APK_I32, 1, sN, tok), table = mkr(2, sVC, 1.0f), emb = mk2(APK_F32, N, C, NULL);
  OP(apk_embedding_forward(cpu, &emb.c, &tokens.c, &table.c));
  OP(apk_embedding_forward(gpu, &emb.g, &tokens.g, &table.g));
  report("embedding", rel_err(&emb), 0);
  /* a bad token surfaces as APK_ERANGE at the next synchronising call */
  int32_t badtok = (int32_t)V;
  apk_tensor one = apk_view_rows(&tokens.g, 0, 1), erow = apk_view_rows(&emb.g, 0, 1);
  apk_upload(gpu, &one, &badtok);
  int rc = apk_embedding_forward(gpu, &erow, &one, &table.g);
  if (!rc) rc = apk_ctx_sync(gpu);
  CHECKF(rc == APK_ERANGE, "bad token gave %d", rc);
  CHECK(apk_ctx_sync(gpu) == 0); /* and the error is cleared */

  /* RMSNorm */
  pair x = mk2(APK_F32, N, C, NULL), w = mkr(1, &C, 0.2f), y = mk2(APK_F32, N, C, NULL), rstd = mk(APK_F32, 1, sN, NULL);
  {
    float *h = malloc((size_t)(N * C) * 4), *wh = malloc((size_t)C * 4);
    fill(h, N * C, 3.0f);
    for (int64_t i = 0; i < C; i++) wh[i] = 1.0f + 0.3f * gauss();
    apk_upload(cpu, &x.c, h), apk_upload(gpu, &x.g, h), apk_upload(cpu, &w.c, wh), apk_upload(gpu, &w.g, wh);
    free(h), free(wh);
  }
  OP(apk_rmsnorm_forward(cpu, &y.c, &rstd.c, &x.c, &w.c, 1e-5f));
  OP(apk_rmsnorm_forward(gpu, &y.g, &rstd.g, &x.g, &w.g, 1e-5f));
  report("rmsnorm forward", rel_err(&y), 1e-5);
  report("rmsnorm rstd", rel_err(&rstd), 1e-5);
  pair dy = mkr(2, (int64_t[]){N, C}, 1.0f), dx = mkr(2, (int64_t[]){N, C}, 0.5f);
  OP(apk_rmsnorm_backward(cpu, &dx.c, &dy.c, &x.c, &w.c, &rstd.c));
  OP(apk_rmsnorm_backward(gpu, &dx.g, &dy.g, &x.g, &w.g, &rstd.g));
  report("rmsnorm backward (+=)", rel_err(&dx), 1e-5);

  /* linear */
  pair W = mkr(2, (int64_t[]){I, C}, 0.05f), bias = mkr(1, &I, 0.1f), lo = mk2(APK_F32, N, I, NULL);
  OP(apk_linear_forward(cpu, &lo.c, &x.c, &W.c, &bias.c));
  OP(apk_linear_forward(gpu, &lo.g, &x.g, &W.g, &bias.g));
  report("linear forward (FP32 GEMM)", rel_err(&lo), 1e-4);
  pair dlo = mkr(2, (int64_t[]){N, I}, 1.0f), dW = mkr(2, (int64_t[]){I, C}, 0.1f), db = mkr(1, &I, 0.1f),
       dxi = mkr(2, (int64_t[]){N, C}, 0.1f);
  OP(apk_linear_backward(cpu, &dxi.c, &dW.c, &db.c, &dlo.c, &x.c, &W.c));
  OP(apk_linear_backward(gpu, &dxi.g, &dW.g, &db.g, &dlo.g, &x.g, &W.g));
  report("linear backward dinp", rel_err(&dxi), 1e-4);
  report("linear backward dweight", rel_err(&dW), 1e-4);
  report("linear backward dbias", rel_err(&db), 1e-5);

  /* RoPE */
  int64_t s3q[3] = {N, H, D}, s3k[3] = {N, KVH, D};
  pair q = mkr(3, s3q, 1.0f), qr = mk(APK_F32, 3, s3q, NULL);
  float *cs = malloc((size_t)(T * D / 2) * 4), *sn = malloc((size_t)(T * D / 2) * 4);
  apk_rope_tables(cs, sn, (int)T, (int)D, 10000.0, NULL);
  pair ct = mk2(APK_F32, T, D / 2, cs), st = mk2(APK_F32, T, D / 2, sn);
  free(cs), free(sn);
  OP(apk_rope_forward(cpu, &qr.c, &q.c, &ct.c, &st.c));
  OP(apk_rope_forward(gpu, &qr.g, &q.g, &ct.g, &st.g));
  report("rope forward", rel_err(&qr), 1e-6);
  OP(apk_rope_backward(cpu, &qr.c, &qr.c, &ct.c, &st.c));
  OP(apk_rope_backward(gpu, &qr.g, &qr.g, &ct.g, &st.g));
  report("rope backward (in place)", rel_err(&qr), 1e-6);

  /* attention */
  int64_t s4q[4] = {B, T, H, D}, s4k[4] = {B, T, KVH, D}, sl[3] = {B, H, T};
  pair aq = mkr(4, s4q, 1.0f), ak = mkr(4, s4k, 1.0f), av = mkr(4, s4k, 1.0f), ao = mk(APK_F32, 4, s4q, NULL),
       lse = mk(APK_F32, 3, sl, NULL);
  OP(apk_attention_forward(cpu, &ao.c, &lse.c, &aq.c, &ak.c, &av.c));
  OP(apk_attention_forward(gpu, &ao.g, &lse.g, &aq.g, &ak.g, &av.g));
  report("attention forward", rel_err(&ao), 1e-4);
  report("attention lse", rel_err(&lse), 1e-5);
  pair ado = mkr(4, s4q, 1.0f), adq = mkr(4, s4q, 0.1f), adk = mkr(4, s4k, 0.1f), adv = mkr(4, s4k, 0.1f);
  OP(apk_attention_backward(cpu, &adq.c, &adk.c, &adv.c, &ado.c, &aq.c, &ak.c, &av.c, &ao.c, &lse.c));
  OP(apk_attention_backward(gpu, &adq.g, &adk.g, &adv.g, &ado.g, &aq.g, &ak.g, &av.g, &ao.g, &lse.g));
  report("attention backward dq", rel_err(&adq), 1e-4);
  report("attention backward dk", rel_err(&adk), 1e-4);
  report("attention backward dv", rel_err(&adv), 1e-4);
  (void)s3k;

  /* SwiGLU, add */
  pair gt = mkr(2, (int64_t[]){N, I}, 2.0f), up = mkr(2, (int64_t[]){N, I}, 1.0f), so = mk2(APK_F32, N, I, NULL);
  OP(apk_swiglu_forward(cpu, &so.c, &gt.c, &up.c));
  OP(apk_swiglu_forward(gpu, &so.g, &gt.g, &up.g));
  report("swiglu forward", rel_err(&so), 1e-6);
  pair dg = mk2(APK_F32, N, I, NULL), du = mk2(APK_F32, N, I, NULL);
  OP(apk_swiglu_backward(cpu, &dg.c, &du.c, &so.c, &gt.c, &up.c));
  OP(apk_swiglu_backward(gpu, &dg.g, &du.g, &so.g, &gt.g, &up.g));
  report("swiglu backward dgate", rel_err(&dg), 1e-6);
  report("swiglu backward dup", rel_err(&du), 1e-6);
  OP(apk_add_inplace(cpu, &dg.c, &du.c));
  OP(apk_add_inplace(gpu, &dg.g, &du.g));
  report("add in place", rel_err(&dg), 1e-6);

  /* cross-entropy with ignored positions */
  int32_t *tg = malloc((size_t)N * sizeof *tg);
  for (int64_t i = 0; i < N; i++) tg[i] = i % T == T - 1 ? -1 : (int32_t)(rnd() % (uint64_t)V);
  pair targets = mk(APK_I32, 1, sN, tg), logits = mkr(2, (int64_t[]){N, V}, 3.0f), nll = mk(APK_F32, 1, sN, NULL),
       dl = mk2(APK_F32, N, V, NULL);
  free(tg);
  OP(apk_crossentropy_forward(cpu, &nll.c, &logits.c, &targets.c));
  OP(apk_crossentropy_forward(gpu, &nll.g, &logits.g, &targets.g));
  report("cross-entropy forward", rel_err(&nll), 1e-5);
  OP(apk_crossentropy_backward(cpu, &dl.c, &logits.c, &targets.c, 1.0f / (float)N));
  OP(apk_crossentropy_backward(gpu, &dl.g, &logits.g, &targets.g, 1.0f / (float)N));
  report("cross-entropy backward", rel_err(&dl), 1e-5);
  double *sc = calloc((size_t)B, sizeof *sc), *sg = calloc((size_t)B, sizeof *sg);
  OP(apk_nll_window_sums(cpu, sc, &nll.c, B));
  OP(apk_nll_window_sums(gpu, sg, &nll.g, B));
  double e = 0;
  for (int64_t b = 0; b < B; b++) e = fmax(e, fabs(sc[b] - sg[b]) / fabs(sc[b]));
  report("nll window sums", e, 1e-5);
  free(sc), free(sg);

  /* statistics */
  pair acc = mk(APK_F64, 1, &C, NULL);
  OP(apk_colsumsq_accumulate(cpu, &acc.c, &x.c));
  OP(apk_colsumsq_accumulate(gpu, &acc.g, &x.g));
  OP(apk_colsumsq_accumulate(cpu, &acc.c, &dx.c));
  OP(apk_colsumsq_accumulate(gpu, &acc.g, &dx.g));
  report("column sums of squares (F64)", rel_err(&acc), 1e-6);
  pair ga32 = mk2(APK_F32, I, C, NULL), ga64 = mk(APK_F64, 2, (int64_t[]){I, C}, NULL);
  for (int rep = 0; rep < 3; rep++) {
    OP(apk_absgrad_accumulate(cpu, &ga32.c, &dW.c));
    OP(apk_absgrad_accumulate(gpu, &ga32.g, &dW.g));
    OP(apk_absgrad_accumulate(cpu, &ga64.c, &dW.c));
    OP(apk_absgrad_accumulate(gpu, &ga64.g, &dW.g));
  }
  report("|grad| accumulate F32", rel_err(&ga32), 1e-6);
  report("|grad| accumulate F64", rel_err(&ga64), 1e-12);
  int64_t nb = (I * C + 7) / 8;
  uint8_t *mh = malloc((size_t)nb);
  for (int64_t i = 0; i < nb; i++) mh[i] = (uint8_t)rnd();
  pair mask = mk(APK_U8, 1, &nb, mh);
  double s1 = 0, s2 = 0;
  OP(apk_abs_sum_kept(cpu, &s1, &dW.c, &mask.c));
  OP(apk_abs_sum_kept(gpu, &s2, &dW.g, &mask.g));
  report("abs sum over kept weights", fabs(s1 - s2) / s1, 1e-12);

  /* mask apply from F32, BF16, F16 originals; restore */
  for (int d = 0; d < 3; d++) {
    apk_dtype dt = d == 0 ? APK_F32 : d == 1 ? APK_BF16 : APK_F16;
    size_t es = apk_dtype_size(dt);
    void *oh = malloc((size_t)(I * C) * es);
    float *tmp = malloc((size_t)(I * C) * 4);
    fill(tmp, I * C, 1.0f);
    ap_f32_to_dtype(dt == APK_F32 ? AP_F32 : dt == APK_BF16 ? AP_BF16 : AP_F16, tmp, oh, (size_t)(I * C));
    pair orig = mk(dt, 2, (int64_t[]){I, C}, oh), work = mk2(APK_F32, I, C, NULL);
    OP(apk_mask_apply(cpu, &work.c, &orig.c, &mask.c));
    OP(apk_mask_apply(gpu, &work.g, &orig.g, &mask.g));
    char name[64];
    snprintf(name, sizeof name, "mask apply (%s)", apk_dtype_name(dt));
    report(name, rel_err(&work), 0);
    OP(apk_mask_restore(cpu, &work.c, &orig.c));
    OP(apk_mask_restore(gpu, &work.g, &orig.g));
    snprintf(name, sizeof name, "mask restore (%s)", apk_dtype_name(dt));
    report(name, rel_err(&work), 0);
    drop(&orig), drop(&work);
    free(oh), free(tmp);
  }
  free(mh);
  free(tok);
  pair *all[] = {&tokens, &table, &emb, &x, &w, &y, &rstd, &dy, &dx, &W, &bias, &lo, &dlo, &dW, &db, &dxi,
                 &q, &qr, &ct, &st, &aq, &ak, &av, &ao, &lse, &ado, &adq, &adk, &adv, &gt, &up, &so,
                 &dg, &du, &targets, &logits, &nll, &dl, &acc, &ga32, &ga64, &mask};
  for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) drop(all[i]);
}

/* ---- pruning kernels against the CPU library ---------------------------------------- */

static void check_masks_on(const char *what, const float *w, int64_t rows, int64_t cols, const double *xsq) {
  size_t n = (size_t)(rows * cols), words = ap_bitmap_words(n);
  int64_t sw[1] = {(int64_t)words * 8}, sc[1] = {cols};
  apk_tensor gw, gx, gn, gm;
  OP(apk_tensor_alloc2(gpu, &gw, APK_F32, rows, cols));
  OP(apk_tensor_alloc(gpu, &gx, APK_F64, 1, sc));
  OP(apk_tensor_alloc(gpu, &gn, APK_F32, 1, sc));
  OP(apk_tensor_alloc(gpu, &gm, APK_U8, 1, sw));
  apk_upload(gpu, &gw, w);
  apk_upload(gpu, &gx, xsq);
  void *stream = apk_cuda_ctx_stream(gpu);
  OP(apk_gpu_wanda_norms(gn.data, gx.data, cols, stream));
  /* scores equal score.h's keys */
  apk_tensor gs;
  OP(apk_tensor_alloc2(gpu, &gs, APK_F32, rows, cols));
  OP(apk_gpu_wanda_scores(gs.data, gw.data, gn.data, rows, cols, stream));
  float *hs = malloc(n * 4), *hn = malloc((size_t)cols * 4);
  apk_download(gpu, hs, &gs);
  ap_score_norms(xsq, (size_t)cols, hn);
  size_t bad = 0;
  for (size_t i = 0; i < n; i++) bad += ap_score_bits(hs[i]) != ap_score_key(w[i], hn[i % (size_t)cols]);
  CHECKF(bad == 0, "%s: %zu Wanda scores differ from score.h", what, bad);
  uint64_t *cm = ap_bitmap_alloc(n), *gmh = malloc(words * 8);
  static const double targets[] = {0.3, 0.5, 0.7};
  for (int mag = 0; mag < 2; mag++)
    for (size_t t = 0; t < 3; t++) {
      /* each target grows the previous mask (masks only grow) */
      ap_mask_report crep;
      apk_prune_gpu_report grep;
      if (t == 0) {
        memset(cm, 0, words * 8);
        apk_zero(gpu, &gm);
      }
      OP(ap_mask_rows(w, mag ? NULL : xsq, (size_t)rows, (size_t)cols, targets[t], cm, &crep));
      OP(apk_gpu_mask_rows(gm.data, gw.data, mag ? NULL : gn.data, rows, cols, targets[t], &grep, stream));
      apk_download(gpu, gmh, &gm);
      int same = !memcmp(gmh, cm, words * 8) && grep.pruned_after == crep.pruned_after;
      printf("  %-20s rows %s %.2f: %s (%llu pruned)\n", what, mag ? "magnitude" : "wanda", targets[t],
             same ? "identical" : "DIFFERENT", (unsigned long long)grep.pruned_after);
      CHECKF(same, "%s: row masks differ at target %.2f", what, targets[t]);
    }
  static const unsigned nm[][2] = {{2, 4}, {4, 8}, {3, 7}};
  for (int k = 0; k < 3; k++) {
    memset(cm, 0, words * 8);
    apk_zero(gpu, &gm);
    ap_mask_report crep;
    apk_prune_gpu_report grep;
    OP(ap_mask_nm(w, xsq, (size_t)rows, (size_t)cols, nm[k][0], nm[k][1], cm, &crep));
    OP(apk_gpu_mask_nm(gm.data, gw.data, gn.data, rows, cols, nm[k][0], nm[k][1], &grep, stream));
    apk_download(gpu, gmh, &gm);
    int same = !memcmp(gmh, cm, words * 8) && grep.pruned_after == crep.pruned_after;
    printf("  %-20s N:M %u:%u: %s\n", what, nm[k][0], nm[k][1], same ? "identical" : "DIFFERENT");
    CHECKF(same, "%s: N:M %u:%u masks differ", what, nm[k][0], nm[k][1]);
  }
  /* apply with the u64 mask, then restore from a smaller mask */
  float *wk = malloc(n * 4), *ref = malloc(n * 4);
  OP(apk_gpu_mask_apply(gs.data, gw.data, APK_F32, gm.data, n, stream));
  apk_download(gpu, wk, &gs);
  ap_bitmap_apply_f32(w, cm, n, ref);
  CHECKF(!memcmp(wk, ref, n * 4), "%s: mask apply differs from ap_bitmap_apply_f32", what);
  apk_tensor gold;
  OP(apk_tensor_alloc(gpu, &gold, APK_U8, 1, sw));
  uint64_t *older = ap_bitmap_alloc(n);
  for (size_t i = 0; i < words; i++) older[i] = cm[i] & rnd();
  apk_upload(gpu, &gold, older);
  OP(apk_gpu_mask_restore(gs.data, gw.data, APK_F32, gm.data, gold.data, n, stream));
  apk_download(gpu, wk, &gs);
  OP(ap_bitmap_restore_f32(w, cm, older, n, ref));
  CHECKF(!memcmp(wk, ref, n * 4), "%s: rollback restore differs from ap_bitmap_restore_f32", what);
  uint64_t cnt = 0;
  OP(apk_gpu_mask_count(gold.data, n, &cnt, stream));
  CHECK_EQ_INT(cnt, ap_bitmap_count(older, n));
  apk_tensor_free(gpu, &gold);
  free(older), free(wk), free(ref), free(cm), free(gmh), free(hs), free(hn);
  apk_tensor_free(gpu, &gw), apk_tensor_free(gpu, &gx), apk_tensor_free(gpu, &gn), apk_tensor_free(gpu, &gm);
  apk_tensor_free(gpu, &gs);
}

static void check_masks_random(void) {
  printf("pruning kernels (random layers, with ties)\n");
  int64_t rows = 512, cols = 1000;
  float *w = malloc((size_t)(rows * cols) * 4);
  double *xsq = malloc((size_t)cols * 8);
  for (int64_t i = 0; i < rows * cols; i++) w[i] = roundf(gauss() * 8) / 8;
  for (int64_t c = 0; c < cols; c++) xsq[c] = (double)(1 + rnd() % 5);
  check_masks_on("random", w, rows, cols, xsq);
  free(w), free(xsq);
}

static void check_real(const char *dir) {
  ap_st *st = NULL;
  char err[512];
  if (ap_st_open(dir, &st, err, sizeof err)) {
    printf("real inputs: %s unreadable (%s): skipped\n", dir, err);
    return;
  }
  printf("real inputs: 2-D weights of %s\n", dir);
  int done = 0;
  for (size_t i = 0; i < ap_st_count(st) && done < 4; i++) {
    const ap_st_tensor *t = ap_st_get(st, i);
    if (t->ndim != 2 || !strstr(t->name, "proj")) continue;
    int64_t rows = t->shape[0], cols = t->shape[1];
    float *w = malloc(t->numel * 4);
    ap_st_tensor_to_f32(t, w);
    double *xsq = malloc((size_t)cols * 8);
    for (int64_t c = 0; c < cols; c++) xsq[c] = fabs(gauss()) * 10 + 0.01;
    check_masks_on(t->name, w, rows, cols, xsq);
    /* and a linear layer with this weight */
    int64_t N = 96;
    pair Wp = mk2(APK_F32, rows, cols, w), xin = mkr(2, (int64_t[]){N, cols}, 1.0f), o = mk2(APK_F32, N, rows, NULL);
    OP(apk_linear_forward(cpu, &o.c, &xin.c, &Wp.c, NULL));
    OP(apk_linear_forward(gpu, &o.g, &xin.g, &Wp.g, NULL));
    char name[160];
    snprintf(name, sizeof name, "linear %s", t->name);
    report(name, rel_err(&o), 1e-4);
    drop(&Wp), drop(&xin), drop(&o);
    free(w), free(xsq);
    done++;
  }
  ap_st_close(st);
}

/* ---- streamer and memory limit -------------------------------------------------------- */

static void check_stream(void) {
  printf("weight streamer: 9 blocks through 2 slots\n");
  enum { BLOCKS = 9, FL = 1 << 20 };
  float *host = NULL;
  OP(apk_cuda_host_alloc((size_t)BLOCKS * FL * 4, (void **)&host));
  if (!host) return;
  for (size_t i = 0; i < (size_t)BLOCKS * FL; i++) host[i] = (float)(i % 1000003) * 0.5f;
  apk_tensor out;
  OP(apk_tensor_alloc2(gpu, &out, APK_F32, BLOCKS, FL));
  apk_wstream *ws = NULL;
  OP(apk_wstream_create(gpu, (size_t)FL * 4, 2, &ws));
  if (ws) {
    OP(apk_wstream_prefetch(ws, 0, host, (size_t)FL * 4));
    for (int b = 0; b < BLOCKS; b++) {
      if (b + 1 < BLOCKS) OP(apk_wstream_prefetch(ws, b + 1, host + (size_t)(b + 1) * FL, (size_t)FL * 4));
      void *dev = NULL;
      OP(apk_wstream_acquire(ws, b, &dev));
      apk_tensor src = apk_view2(APK_CUDA, APK_F32, dev, 1, FL), dst = apk_view_rows(&out, b, 1);
      /* the compute stream reads the slot twice: a slow consumer */
      OP(apk_copy(gpu, &dst, &src));
      OP(apk_add_inplace(gpu, &dst, &src));
      OP(apk_wstream_release(ws, b));
    }
    CHECK(apk_wstream_prefetch(ws, 99, host, (size_t)FL * 8) == APK_EINVAL);
    CHECK_EQ_INT(apk_wstream_bytes(ws), (uint64_t)BLOCKS * FL * 4);
    float *res = malloc((size_t)BLOCKS * FL * 4);
    OP(apk_download(gpu, res, &out));
    size_t bad = 0;
    for (size_t i = 0; i < (size_t)BLOCKS * FL; i++) bad += res[i] != 2 * host[i];
    CHECKF(bad == 0, "%zu streamed values wrong (slot overwritten before use?)", bad);
    printf("  streamed %d blocks: %s\n", BLOCKS, bad ? "WRONG" : "ok");
    free(res);
    apk_wstream_destroy(ws);
  }
  apk_tensor_free(gpu, &out);
  apk_cuda_host_free(host);

  uint64_t cur = 0, peak = 0;
  apk_cuda_mem_usage(&cur, &peak);
  apk_cuda_set_mem_limit(cur + (1u << 20));
  apk_tensor big;
  int rc = apk_tensor_alloc2(gpu, &big, APK_F32, 1, 1 << 20);
  CHECKF(rc == APK_ENOMEM, "allocation past the memory limit returned %d", rc);
  if (!rc) apk_tensor_free(gpu, &big);
  printf("  memory limit: %s\n", rc == APK_ENOMEM ? apk_last_error() : "NOT ENFORCED");
  apk_cuda_set_mem_limit(0);
}

/* GEMM precision modes on a fresh context each (one CUDA context at a time). */
static void check_gemm_modes(void) {
  printf("GEMM modes (N 256, IC 1024, OC 768)\n");
  static const apk_gemm_mode modes[] = {APK_GEMM_TF32, APK_GEMM_BF16, APK_GEMM_F16};
  static const double tols[] = {5e-3, 2e-2, 5e-3};
  for (int i = 0; i < 3; i++) {
    apk_ctx_destroy(gpu);
    apk_cuda_set_gemm_mode(modes[i]);
    OP(apk_ctx_create(APK_CUDA, 0, &gpu));
    pair W = mkr(2, (int64_t[]){768, 1024}, 0.03f), x = mkr(2, (int64_t[]){256, 1024}, 1.0f),
         o = mk2(APK_F32, 256, 768, NULL);
    OP(apk_linear_forward(cpu, &o.c, &x.c, &W.c, NULL));
    OP(apk_linear_forward(gpu, &o.g, &x.g, &W.g, NULL));
    char name[64];
    snprintf(name, sizeof name, "linear forward (%s GEMM)", apk_gemm_mode_name(modes[i]));
    report(name, rel_err(&o), tols[i]);
    drop(&W), drop(&x), drop(&o);
  }
  apk_ctx_destroy(gpu);
  apk_cuda_set_gemm_mode(APK_GEMM_F32);
  OP(apk_ctx_create(APK_CUDA, 0, &gpu));
}

int main(int argc, char **argv) {
  if (apk_cuda_device_count() == 0) {
    printf("no CUDA device: skipped\n");
    return 77;
  }
  char name[128];
  size_t total = 0, freeb = 0;
  apk_cuda_device_info(0, name, sizeof name, &total, &freeb);
  printf("device 0: %s, %.1f GiB (%.1f free)\n", name, total / 1073741824.0, freeb / 1073741824.0);
  apk_cuda_set_gemm_mode(APK_GEMM_F32);
  if (apk_ctx_create(APK_CPU, 0, &cpu) || apk_ctx_create(APK_CUDA, 0, &gpu)) {
    fprintf(stderr, "context: %s\n", apk_last_error());
    return 1;
  }
  check_transformer(2, 67, 4, 2, 64, 192, 320, 1000);
  check_transformer(1, 300, 8, 2, 128, 256, 512, 5000);
  check_transformer(3, 33, 2, 1, 256, 64, 96, 50);
  check_masks_random();
  if (argc > 1) check_real(argv[1]);
  check_stream();
  check_gemm_modes();
  uint64_t cur, peak;
  apk_cuda_mem_usage(&cur, &peak);
  printf("device memory: peak %.1f MiB through the backend\n", peak / 1048576.0);
  apk_ctx_destroy(gpu);
  apk_ctx_destroy(cpu);
  TEST_DONE();
}
