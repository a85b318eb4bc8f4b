/*
 * test_shared_math.c - the element math that the CUDA kernels share with the
 * CPU (kernels/ap_math_ext.h), checked on the CPU so that CI covers most of
 * the GPU logic without a GPU:
 *  - F16 narrowing against dtype.h's ap_f32_to_f16 (every f16 value, edge
 *    cases, random bit patterns);
 *  - online softmax and its tile merge, run exactly as the attention kernel
 *    runs it (tiles of 32), against double-precision softmax and weighted sums;
 *  - attention backward element, RMSNorm forward/backward, cross-entropy
 *    gradient against double references;
 *  - pruning: score keys, target counts, and CPU emulations of the GPU row
 *    selection (4-pass radix select + column-ordered ties) and N:M kernels
 *    built only from the shared functions, which must reproduce the masks of
 *    the CPU pruning library (ap_mask_rows / ap_mask_nm) bit for bit;
 *  - the GPU memory planner (ap_gpu_mem.h).
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ap_gpu_mem.h"
#include "ap_math.h"
#include "ap_math_ext.h"
#include "bitmap.h"
#include "dtype.h"
#include "mask.h"
#include "score.h"
#include "test.h"

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;
static uint64_t rnd(void) {
  rng_state ^= rng_state << 13;
  rng_state ^= rng_state >> 7;
  rng_state ^= rng_state << 17;
  return rng_state;
}
static double unif(void) { return (double)(rnd() >> 11) / 9007199254740992.0; }
static float gauss(void) {
  double u = unif() + 1e-12, v = unif();
  return (float)(sqrt(-2.0 * log(u)) * cos(6.283185307179586 * v));
}

/* ---- F16 ------------------------------------------------------------------- */

static void test_f16(void) {
  long bad = 0;
  for (uint32_t h = 0; h < 65536; h++) {
    float f = ap_f16_to_f32((uint16_t)h);
    if (apk_f32_to_f16(f) != ap_f32_to_f16(f)) bad++;
    if (!isnan(f) && apk_f32_to_f16(f) != h) bad++; /* exact round trip */
  }
  CHECKF(bad == 0, "%ld f16 round-trip mismatches", bad);
  static const uint32_t edge[] = {0x00000000u, 0x80000000u, 0x33000000u, 0x33000001u, 0x337fffffu, 0x33800000u,
                                  0x387fc000u, 0x387fe000u, 0x38800000u, 0x477fe000u, 0x477fefffu, 0x477ff000u,
                                  0x7f800000u, 0xff800000u, 0x7fc00000u, 0x7f800001u, 0xffffffffu, 0x3f800000u};
  bad = 0;
  for (size_t i = 0; i < sizeof edge / sizeof edge[0]; i++) {
    float f = apk_bits_to_f32(edge[i]);
    if (apk_f32_to_f16(f) != ap_f32_to_f16(f)) bad++;
  }
  CHECKF(bad == 0, "%ld f16 edge-case mismatches", bad);
  bad = 0;
  for (int i = 0; i < 2000000; i++) {
    float f = apk_bits_to_f32((uint32_t)rnd());
    if (apk_f32_to_f16(f) != ap_f32_to_f16(f)) bad++;
  }
  CHECKF(bad == 0, "%ld random f16 mismatches", bad);
  /* bf16 of ap_math.h agrees with dtype.h too (both feed GPU GEMM inputs) */
  bad = 0;
  for (int i = 0; i < 1000000; i++) {
    float f = apk_bits_to_f32((uint32_t)rnd());
    if (!isnan(f) && apk_f32_to_bf16(f) != ap_f32_to_bf16(f)) bad++;
  }
  CHECKF(bad == 0, "%ld bf16 mismatches", bad);
}

/* ---- online softmax as the attention kernel runs it --------------------------- */

/* One query row: scores s[0..n-1], values v[n][D]; tiles of 32 keys, each
 * tile reduced to (max, sum) and merged, accumulators rescaled: the exact
 * sequence of k_attn_fwd. */
static void emu_attention_row(const float *s, const float *v, int n, int D, float *out, float *lse) {
  float m = -INFINITY, l = 0.0f, acc[256] = {0};
  for (int j0 = 0; j0 < n; j0 += 32) {
    int nk = n - j0 < 32 ? n - j0 : 32;
    float mt = -INFINITY, p[32];
    for (int j = 0; j < nk; j++) mt = s[j0 + j] > mt ? s[j0 + j] : mt;
    float lt = 0.0f;
    for (int j = 0; j < nk; j++) {
      p[j] = s[j0 + j] == -INFINITY ? 0.0f : expf(s[j0 + j] - mt);
      lt += p[j];
    }
    float r1, r2;
    apk_softmax_merge(&m, &l, mt, lt, &r1, &r2);
    for (int d = 0; d < D; d++) acc[d] *= r1;
    for (int j = 0; j < nk; j++)
      for (int d = 0; d < D; d++) acc[d] += p[j] * r2 * v[(j0 + j) * D + d];
  }
  for (int d = 0; d < D; d++) out[d] = acc[d] / l;
  *lse = apk_softmax_lse(m, l);
}

static void test_softmax(void) {
  enum { NMAX = 300, D = 64 };
  static float s[NMAX], v[NMAX * D], out[D];
  double max_out_err = 0, max_lse_err = 0, max_step_err = 0;
  for (int trial = 0; trial < 200; trial++) {
    int n = 1 + (int)(rnd() % NMAX);
    float spread = trial % 3 == 0 ? 30.0f : 3.0f; /* large spreads exercise the rescaling */
    for (int j = 0; j < n; j++) s[j] = gauss() * spread;
    if (trial % 5 == 0 && n > 2) s[n / 2] = -INFINITY; /* masked key */
    for (int i = 0; i < n * D; i++) v[i] = gauss();
    float lse;
    emu_attention_row(s, v, n, D, out, &lse);
    double mx = -INFINITY;
    for (int j = 0; j < n; j++) mx = s[j] > mx ? s[j] : mx;
    double sum = 0;
    for (int j = 0; j < n; j++) sum += exp((double)s[j] - mx);
    double ref_lse = mx + log(sum);
    double e = fabs(lse - ref_lse) / (1 + fabs(ref_lse));
    if (e > max_lse_err) max_lse_err = e;
    for (int d = 0; d < D; d++) {
      double r = 0, scale = 0;
      for (int j = 0; j < n; j++) {
        double p = exp((double)s[j] - ref_lse);
        r += p * v[j * D + d];
        scale += p * fabs(v[j * D + d]);
      }
      e = fabs(out[d] - r) / (scale + 1e-30);
      if (e > max_out_err) max_out_err = e;
    }
    /* the per-element step gives the same state as the tile merge */
    float m = -INFINITY, l = 0, rs, p;
    for (int j = 0; j < n; j++) apk_softmax_step(&m, &l, s[j], &rs, &p);
    e = fabs(apk_softmax_lse(m, l) - ref_lse) / (1 + fabs(ref_lse));
    if (e > max_step_err) max_step_err = e;
  }
  CHECKF(max_lse_err < 1e-6, "lse error %g", max_lse_err);
  CHECKF(max_out_err < 2e-6, "weighted sum error %g (relative to sum p|v|)", max_out_err);
  CHECKF(max_step_err < 1e-6, "element-step lse error %g", max_step_err);
  /* a fully masked row keeps l == 0 and no NaN */
  float m = -INFINITY, l = 0, r1, r2, rs, p;
  apk_softmax_merge(&m, &l, -INFINITY, 0.0f, &r1, &r2);
  apk_softmax_step(&m, &l, -INFINITY, &rs, &p);
  CHECK(l == 0.0f && m == -INFINITY && p == 0.0f && r1 == 1.0f && !isnan(r2));
}

/* ---- attention backward, RMSNorm, cross-entropy ------------------------------- */

static void test_elementwise(void) {
  double max_e = 0;
  for (int i = 0; i < 100000; i++) {
    float s = gauss() * 5, lse = s + (float)unif() * 4, dp = gauss(), delta = gauss();
    float p;
    float ds = apk_attn_dscore(s, lse, dp, delta, &p);
    double pr = exp((double)s - lse), r = pr * ((double)dp - delta);
    double e = fabs(ds - r) / (fabs(r) + pr * (fabs(dp) + fabs(delta)) + 1e-30);
    if (e > max_e) max_e = e;
  }
  CHECKF(max_e < 1e-6, "attention dS error %g", max_e);

  /* RMSNorm: forward and backward of one row against double math */
  enum { C = 777 };
  static float x[C], w[C], dy[C];
  double max_f = 0, max_b = 0;
  for (int trial = 0; trial < 50; trial++) {
    double ss = 0;
    for (int i = 0; i < C; i++) {
      x[i] = gauss() * (trial % 2 ? 100 : 1);
      w[i] = 1 + 0.1f * gauss();
      dy[i] = gauss();
      ss += (double)x[i] * x[i];
    }
    float eps = 1e-5f;
    float r = apk_rmsnorm_rstd(ss, C, eps);
    double rd = 1.0 / sqrt(ss / C + eps);
    double dot = 0;
    for (int i = 0; i < C; i++) dot += (double)dy[i] * w[i] * x[i];
    float k = apk_rmsnorm_bwd_k(dot, r, C);
    for (int i = 0; i < C; i++) {
      double yr = x[i] * rd * w[i];
      double e = fabs(apk_rmsnorm_out(x[i], r, w[i]) - yr) / (fabs(yr) + 1e-30);
      if (e > max_f) max_f = e;
      /* d/dx_i of sum_j dy_j w_j x_j r: r w_i dy_i - x_i r^3 dot / C */
      double gr = rd * w[i] * dy[i] - x[i] * rd * rd * rd * dot / C;
      double sc = fabs(rd * w[i] * dy[i]) + fabs(x[i] * rd * rd * rd * dot / C);
      e = fabs(apk_rmsnorm_dx(dy[i], x[i], w[i], r, k) - gr) / (sc + 1e-30);
      if (e > max_b) max_b = e;
    }
  }
  CHECKF(max_f < 1e-6, "rmsnorm forward error %g", max_f);
  CHECKF(max_b < 1e-6, "rmsnorm backward error %g", max_b);

  /* cross-entropy gradient: softmax - onehot, and it sums to ~0 */
  enum { V = 1000 };
  static float lg[V];
  double max_g = 0, max_sum = 0;
  for (int trial = 0; trial < 20; trial++) {
    float mx = -INFINITY;
    for (int i = 0; i < V; i++) {
      lg[i] = gauss() * 4;
      mx = lg[i] > mx ? lg[i] : mx;
    }
    double s = 0;
    for (int i = 0; i < V; i++) s += exp((double)(lg[i] - mx));
    double lse = mx + log(s);
    int t = (int)(rnd() % V);
    float scale = 1.0f / 37;
    double sum = 0;
    for (int i = 0; i < V; i++) {
      float g = apk_ce_grad(lg[i], lse, scale, i == t);
      double r = scale * (exp((double)lg[i] - lse) - (i == t));
      double e = fabs(g - r) / scale;
      if (e > max_g) max_g = e;
      sum += g;
    }
    if (fabs(sum) / scale > max_sum) max_sum = fabs(sum) / scale;
  }
  CHECKF(max_g < 1e-6, "cross-entropy gradient error %g", max_g);
  CHECKF(max_sum < 1e-5, "cross-entropy gradient row sum %g", max_sum);

  /* SwiGLU derivative (ap_math.h) against a central difference */
  max_e = 0;
  for (int i = 0; i < 2000; i++) {
    double xx = gauss() * 4, h = 1e-4;
    double sp = (xx + h) / (1 + exp(-(xx + h))), sm = (xx - h) / (1 + exp(-(xx - h)));
    double e = fabs(apk_silu_grad((float)xx) - (sp - sm) / (2 * h));
    if (e > max_e) max_e = e;
  }
  CHECKF(max_e < 1e-5, "silu' error %g", max_e);
}

/* ---- pruning ------------------------------------------------------------------ */

static void test_keys_targets(void) {
  long bad = 0;
  for (int i = 0; i < 1000000; i++) {
    float wv = apk_bits_to_f32((uint32_t)rnd());
    float nv = (float)unif() * 10;
    if (apk_score_key_of(wv, nv) != ap_score_key(wv, nv)) bad++;
  }
  CHECKF(bad == 0, "%ld score-key mismatches against score.h", bad);
  bad = 0;
  for (int i = 0; i < 200000; i++) {
    size_t count = (size_t)(rnd() % 100000);
    double t = i % 7 == 0 ? (double)(rnd() % 11) / 10 : unif();
    if (i % 13 == 0) t = (double)(rnd() % 1000) / 1000.0; /* exact fractions, halves */
    if (apk_prune_target(count, t) != ap_mask_count_target(count, t)) bad++;
  }
  CHECKF(bad == 0, "%ld target-count mismatches against ap_mask_count_target", bad);
  bad = 0;
  for (int i = 0; i < 100000; i++) {
    double xsq = unif() * 1e6;
    if (apk_wanda_norm(xsq) != (float)sqrt(xsq)) bad++;
  }
  CHECK(bad == 0);
  /* radix steps: selecting every rank of a small multiset by 4 passes */
  uint32_t keys[500];
  bad = 0;
  for (int trial = 0; trial < 20; trial++) {
    for (int i = 0; i < 500; i++) keys[i] = (uint32_t)(rnd() % (trial % 2 ? 40 : 0xffffffffu)) * (trial % 3 + 1);
    for (int k = 0; k < 500; k += 7) {
      uint32_t prefix = 0, hist[256];
      uint64_t kk = (uint64_t)k;
      for (int pass = 0; pass < 4; pass++) {
        memset(hist, 0, sizeof hist);
        for (int i = 0; i < 500; i++)
          if (apk_radix_in_prefix(keys[i], prefix, pass)) hist[apk_radix_digit(keys[i], pass)]++;
        prefix = apk_radix_extend(prefix, pass, apk_radix_pick(hist, &kk));
      }
      size_t less = 0, eq = 0;
      for (int i = 0; i < 500; i++) {
        less += keys[i] < prefix;
        eq += keys[i] == prefix;
      }
      /* prefix is the k-th smallest, kk its rank among the equal ones */
      if (!(less <= (size_t)k && (size_t)k < less + eq && kk == (uint64_t)k - less)) bad++;
    }
  }
  CHECKF(bad == 0, "%ld radix selections wrong", bad);
}

/* CPU emulation of k_mask_rows (prune_select.cu), shared functions only.
 * Returns 1 when a row was refused for NaN scores. */
static int emu_mask_rows(uint64_t *mask, const float *w, const float *norms, size_t rows, size_t cols, double target,
                         size_t *over) {
  uint64_t k = apk_prune_target(cols, target);
  int nan_rows = 0;
  *over = 0;
  for (size_t r = 0; r < rows; r++) {
    size_t pos0 = r * cols;
    uint64_t have = 0;
    for (size_t c = 0; c < cols; c++) have += ap_bitmap_get(mask, pos0 + c);
    if (have >= k) {
      *over += have > k;
      continue;
    }
    uint64_t need = k - have;
    int all = need == cols - have;
    if (!all) {
      int nan = 0;
      for (size_t c = 0; c < cols; c++)
        nan |= !ap_bitmap_get(mask, pos0 + c) && apk_key_is_nan(apk_score_key_of(w[pos0 + c], norms ? norms[c] : 1.0f));
      if (nan) {
        nan_rows = 1;
        continue;
      }
    }
    uint32_t thr = 0;
    uint64_t quota = 0;
    if (!all) {
      uint32_t prefix = 0, hist[APK_RADIX_BINS];
      uint64_t kk = need - 1;
      for (int pass = 0; pass < APK_RADIX_PASSES; pass++) {
        memset(hist, 0, sizeof hist);
        for (size_t c = 0; c < cols; c++) {
          if (ap_bitmap_get(mask, pos0 + c)) continue;
          uint32_t key = apk_score_key_of(w[pos0 + c], norms ? norms[c] : 1.0f);
          if (apk_radix_in_prefix(key, prefix, pass)) hist[apk_radix_digit(key, pass)]++;
        }
        prefix = apk_radix_extend(prefix, pass, apk_radix_pick(hist, &kk));
      }
      thr = prefix;
      quota = kk + 1;
    }
    uint64_t ties = 0;
    size_t set[4096];
    size_t nset = 0;
    for (size_t c = 0; c < cols; c++) {
      if (ap_bitmap_get(mask, pos0 + c)) continue;
      uint32_t key = all ? 0 : apk_score_key_of(w[pos0 + c], norms ? norms[c] : 1.0f);
      int prune = all || key < thr;
      if (!all && key == thr) prune = ties++ < quota;
      if (prune) set[nset++] = pos0 + c;
    }
    for (size_t i = 0; i < nset; i++) ap_bitmap_set(mask, set[i]);
  }
  return nan_rows;
}

/* CPU emulation of k_mask_nm. */
static int emu_mask_nm(uint64_t *mask, const float *w, const float *norms, size_t rows, size_t cols, unsigned n,
                       unsigned m, size_t *over) {
  int any_nan = 0;
  *over = 0;
  size_t gpr = (cols + m - 1) / m;
  for (size_t g = 0; g < rows * gpr; g++) {
    size_t r = g / gpr, c0 = (g % gpr) * m;
    unsigned len = (unsigned)(cols - c0 < m ? cols - c0 : m);
    size_t pos = r * cols + c0;
    uint32_t keys[64];
    uint64_t old = 0;
    for (unsigned i = 0; i < len; i++) {
      keys[i] = apk_score_key_of(w[pos + i], norms ? norms[c0 + i] : 1.0f);
      if (ap_bitmap_get(mask, pos + i)) {
        old |= (uint64_t)1 << i;
        keys[i] = APK_KEY_PRUNED;
      }
    }
    int ov, nan;
    uint64_t bits = apk_nm_group(keys, old, len, n, &ov, &nan);
    *over += (size_t)ov;
    any_nan |= nan;
    for (unsigned i = 0; i < len; i++)
      if ((bits >> i) & 1) ap_bitmap_set(mask, pos + i);
  }
  return any_nan;
}

static void fill_layer(float *w, double *xsq, float *norms, size_t rows, size_t cols, int ties) {
  for (size_t i = 0; i < rows * cols; i++) {
    float g = gauss();
    w[i] = ties ? roundf(g * 4) / 4 : g; /* quantised weights: many equal scores */
  }
  for (size_t c = 0; c < cols; c++) {
    xsq[c] = ties ? (double)(1 + rnd() % 3) : unif() * 50;
    norms[c] = apk_wanda_norm(xsq[c]);
  }
}

static void random_mask(uint64_t *m, size_t nbits, double density) {
  for (size_t i = 0; i < nbits; i++)
    if (unif() < density) ap_bitmap_set(m, i);
}

static void test_masks(void) {
  static const size_t shapes[][2] = {{37, 200}, {5, 64}, {16, 130}, {3, 1000}, {64, 7}};
  static const double targets[] = {0.0, 0.25, 0.5, 0.7, 0.77, 1.0};
  long row_bad = 0, row_cases = 0, nm_bad = 0, nm_cases = 0;
  for (size_t si = 0; si < sizeof shapes / sizeof shapes[0]; si++) {
    size_t rows = shapes[si][0], cols = shapes[si][1], n = rows * cols;
    float *w = malloc(n * sizeof *w), *norms = malloc(cols * sizeof *norms);
    double *xsq = malloc(cols * sizeof *xsq);
    uint64_t *a = ap_bitmap_alloc(n), *b = ap_bitmap_alloc(n);
    for (int ties = 0; ties < 2; ties++) {
      fill_layer(w, xsq, norms, rows, cols, ties);
      for (int magnitude = 0; magnitude < 2; magnitude++) {
        for (size_t ti = 0; ti < sizeof targets / sizeof targets[0]; ti++) {
          for (int pre = 0; pre < 2; pre++) {
            memset(a, 0, ap_bitmap_bytes(n));
            if (pre) random_mask(a, n, 0.3);
            memcpy(b, a, ap_bitmap_bytes(n));
            ap_mask_report rep;
            int rc = ap_mask_rows(w, magnitude ? NULL : xsq, rows, cols, targets[ti], a, &rep);
            size_t over = 0;
            int nan = emu_mask_rows(b, w, magnitude ? NULL : norms, rows, cols, targets[ti], &over);
            row_cases++;
            if (rc != AP_PRUNE_OK || nan || memcmp(a, b, ap_bitmap_bytes(n)) || over != rep.units_over) row_bad++;
          }
        }
        static const unsigned nms[][2] = {{2, 4}, {4, 8}, {1, 3}, {3, 5}, {8, 16}, {30, 64}, {1, 1}};
        for (size_t k = 0; k < sizeof nms / sizeof nms[0]; k++) {
          for (int pre = 0; pre < 2; pre++) {
            memset(a, 0, ap_bitmap_bytes(n));
            if (pre) random_mask(a, n, 0.2);
            memcpy(b, a, ap_bitmap_bytes(n));
            ap_mask_report rep;
            int rc = ap_mask_nm(w, magnitude ? NULL : xsq, rows, cols, nms[k][0], nms[k][1], a, &rep);
            size_t over = 0;
            int nan = emu_mask_nm(b, w, magnitude ? NULL : norms, rows, cols, nms[k][0], nms[k][1], &over);
            nm_cases++;
            if (rc != AP_PRUNE_OK || nan || memcmp(a, b, ap_bitmap_bytes(n)) || over != rep.units_over) {
              nm_bad++;
              fprintf(stderr, "N:M %u:%u %zux%zu ties %d mag %d pre %d differs\n", nms[k][0], nms[k][1], rows, cols,
                      ties, magnitude, pre);
            }
          }
        }
      }
    }
    /* NaN: a row that needs pruning refuses, both sides; other rows agree */
    fill_layer(w, xsq, norms, rows, cols, 0);
    w[cols / 2] = NAN;
    memset(a, 0, ap_bitmap_bytes(n));
    memset(b, 0, ap_bitmap_bytes(n));
    int rc = ap_mask_rows(w, xsq, rows, cols, 0.5, a, NULL);
    size_t over;
    int nan = emu_mask_rows(b, w, norms, rows, cols, 0.5, &over);
    CHECKF(rc == AP_PRUNE_ENAN && nan && !memcmp(a, b, ap_bitmap_bytes(n)), "NaN row handling differs (%zux%zu)",
           rows, cols);
    memset(a, 0, ap_bitmap_bytes(n));
    memset(b, 0, ap_bitmap_bytes(n));
    rc = ap_mask_nm(w, xsq, rows, cols, 2, 4, a, NULL);
    nan = emu_mask_nm(b, w, norms, rows, cols, 2, 4, &over);
    CHECKF(rc == AP_PRUNE_ENAN && nan && !memcmp(a, b, ap_bitmap_bytes(n)), "NaN N:M handling differs (%zux%zu)",
           rows, cols);
    free(w), free(norms), free(xsq), free(a), free(b);
  }
  CHECKF(row_bad == 0, "%ld of %ld row-selection cases differ from ap_mask_rows", row_bad, row_cases);
  CHECKF(nm_bad == 0, "%ld of %ld N:M cases differ from ap_mask_nm", nm_bad, nm_cases);
  CHECK(row_cases > 200 && nm_cases > 200);
}

/* ---- GPU memory planner ---------------------------------------------------------- */

static void test_mem_plan(void) {
  /* a Llama-3.2-1B-like shape */
  apk_mem_model m = {2048, 8192, 16, 32, 8, 64, 128256, 2, 1, 0};
  apk_mem_estimate e1, e8, eb;
  CHECK(apk_mem_estimate_compute(&m, 1, 2048, 0, 0, &e1) == 0);
  CHECK(apk_mem_estimate_compute(&m, 8, 2048, 0, 0, &e8) == 0);
  CHECK(apk_mem_estimate_compute(&m, 1, 2048, 1, 0, &eb) == 0);
  uint64_t P = apk_mem_block_params(&m);
  CHECK_EQ_INT(P, 2048ull * 2048 * 2 + 2ull * 2048 * 512 + 3ull * 2048 * 8192);
  CHECK(e8.activations > 7 * e1.activations && e8.activations < 9 * e1.activations);
  CHECK(eb.peak_resident > e1.peak_resident && eb.backward >= 4ull * 16 * 2048 * 2048);
  CHECK(e1.peak_streaming < e1.peak_resident);
  /* resident total = blocks * (4 + 2 + 1/8) bytes per weight + rest */
  CHECK(e1.peak_resident - e1.peak_streaming == 16 * e1.block_weights - 2 * e1.block_stream - e1.block_working);
  int streaming = -1;
  int64_t windows = 0;
  CHECK(apk_mem_plan(&m, 2048, 0, 0, 0, 64, &streaming, &windows) == 0 && streaming == 0 && windows == 64);
  /* a limit between the streamed and the resident need picks streaming */
  uint64_t limit = (e1.peak_streaming + e1.peak_resident) / 2;
  CHECK(apk_mem_plan(&m, 2048, 0, 0, limit, 64, &streaming, &windows) == 0 && streaming == 1 && windows >= 1);
  apk_mem_estimate ew;
  apk_mem_estimate_compute(&m, windows, 2048, 0, 0, &ew);
  CHECK(ew.peak_streaming <= limit);
  apk_mem_estimate_compute(&m, windows + 1, 2048, 0, 0, &ew);
  CHECK(windows == 64 || ew.peak_streaming > limit);
  CHECK(apk_mem_plan(&m, 2048, 0, 0, e1.peak_streaming / 2, 64, &streaming, &windows) == -1);
  apk_mem_model bad = m;
  bad.hidden = 0;
  CHECK(apk_mem_estimate_compute(&bad, 1, 2048, 0, 0, &e1) == -1);

  uint64_t v = 0;
  CHECK(apk_parse_mem_size("40G", &v) == 0 && v == 40ull << 30);
  CHECK(apk_parse_mem_size("512MiB", &v) == 0 && v == 512ull << 20);
  CHECK(apk_parse_mem_size("1.5T", &v) == 0 && v == (3ull << 40) / 2);
  CHECK(apk_parse_mem_size("123456", &v) == 0 && v == 123456);
  CHECK(apk_parse_mem_size("", &v) == -1 && apk_parse_mem_size("-1G", &v) == -1 &&
        apk_parse_mem_size("12Q", &v) == -1 && apk_parse_mem_size("G", &v) == -1 &&
        apk_parse_mem_size("1e30T", &v) == -1 && apk_parse_mem_size(NULL, &v) == -1);
}

int main(void) {
  test_f16();
  test_softmax();
  test_elementwise();
  test_keys_targets();
  test_masks();
  test_mem_plan();
  TEST_DONE();
}
