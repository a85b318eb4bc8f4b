/*
 * test_stats.c - profile statistics, OWL ratios and baseline plans against
 * hand-computed values and brute-force references (full sorts, plain loops).
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

#include "../test.h"
#include "bitmap.h"
#include "owl.h"
#include "plan.h"
#include "prune_error.h"
#include "stats.h"

#define TEST_RNG_SEED 4242
#include "test_rng.h"

static int cmp_f(const void *a, const void *b) {
  float x = *(const float *)a, y = *(const float *)b;
  return (x > y) - (x < y);
}

static void test_zscores(void) {
  double x[5] = {1, 2, 3, 4, 5}, z[5];
  CHECK(ap_stats_zscores(x, 5, AP_STATS_Z_EPS, z) == 0);
  /* mean 3, population std sqrt(2) */
  for (int i = 0; i < 5; i++) CHECK_NEAR(z[i], (x[i] - 3) / (sqrt(2.0) + 1e-8), 1e-15);
  CHECK_NEAR(z[0], -1.414213555, 1e-8);
  double c[3] = {7, 7, 7}, zc[3];
  CHECK(ap_stats_zscores(c, 3, AP_STATS_Z_EPS, zc) == 0);
  CHECK(zc[0] == 0 && zc[1] == 0 && zc[2] == 0);
  double y[4] = {0, 0, 0, 1e-9}, zy[4];
  CHECK(ap_stats_zscores(y, 4, AP_STATS_Z_EPS, zy) == 0);
  /* std 4.33e-10 is below eps: eps dominates, z stays small */
  CHECK(fabs(zy[3]) < 0.1);
  x[2] = NAN;
  CHECK_EQ_INT(ap_stats_zscores(x, 5, 1e-8, z), AP_PRUNE_ENAN);
  CHECK_EQ_INT(ap_stats_zscores(x, 0, 1e-8, z), AP_PRUNE_EINVAL);
}

static void test_percentile_and_grad(void) {
  const size_t shapes[][2] = {{1, 1}, {3, 5}, {50, 172}, {128, 256}, {700, 1000}};
  int bad = 0;
  for (size_t si = 0; si < sizeof shapes / sizeof *shapes; si++) {
    size_t rows = shapes[si][0], cols = shapes[si][1], n = rows * cols;
    for (int variant = 0; variant < 4; variant++) {
      float *w = malloc(n * 4), *grad = malloc(n * 4), *sv = malloc(n * 4);
      double *xsq = malloc(cols * 8);
      uint64_t *m = ap_bitmap_alloc(n);
      for (size_t i = 0; i < n; i++) {
        w[i] = variant & 1 ? (float)((int)(rnd() % 5) - 2) : (float)(0.02 * gauss());
        grad[i] = (float)(unif() * 16);
        if (variant & 2 && rnd() % 3 == 0) ap_bitmap_set(m, i);
      }
      for (size_t j = 0; j < cols; j++) xsq[j] = exp(gauss()) * 50;
      size_t ns = 0;
      double gsum = 0;
      for (size_t i = 0; i < n; i++)
        if (!ap_bitmap_get(m, i)) {
          sv[ns++] = fabsf(w[i]) * (float)sqrt(xsq[i % cols]);
          gsum += grad[i];
        }
      qsort(sv, ns, 4, cmp_f);
      ap_layer_ref l = {w, xsq, m, rows, cols};
      ap_layer_stats st;
      int rc = ap_stats_layer(&l, grad, 16.0, &st);
      double want_s = 0;
      if (ns) {
        double h = (double)(ns - 1) * 0.1;
        size_t i = (size_t)h;
        double g = h - (double)i, a = sv[i], b = sv[i + 1 < ns ? i + 1 : ns - 1];
        want_s = g >= 0.5 ? b - (b - a) * (1 - g) : a + (b - a) * g;
      }
      if (rc || st.s != want_s) { bad++; fprintf(stderr, "s %zux%zu v%d: %.9g vs %.9g\n", rows, cols, variant, st.s, want_s); }
      if (ns && fabs(st.g - gsum / ns / 16.0) > 1e-12 * (gsum / ns)) bad++;
      if (st.params != n || st.pruned != n - ns || st.rho != (double)(n - ns) / n) bad++;
      /* magnitude percentile at another p */
      ap_layer_ref lm = {w, NULL, m, rows, cols};
      double s90;
      if (ap_stats_score_percentile(&lm, 90, &s90) != 0) bad++;
      free(w); free(grad); free(sv); free(xsq); free(m);
    }
  }
  CHECK_EQ_INT(bad, 0);
  /* fully pruned layer: s = g = 0 */
  float w[4] = {1, 2, 3, 4}, grad[4] = {1, 1, 1, 1};
  double xsq[2] = {1, 4};
  uint64_t m[1] = {0xF};
  ap_layer_ref l = {w, xsq, m, 2, 2};
  ap_layer_stats st;
  CHECK(ap_stats_layer(&l, grad, 1, &st) == 0);
  CHECK(st.s == 0 && st.g == 0 && st.rho == 1.0);
  /* hand value: scores |w|*sqrt(xsq) = 1,4,3,8 -> p10 over 4 values = 1 + 0.3*(3-1) = 1.6 */
  m[0] = 0;
  CHECK(ap_stats_layer(&l, grad, 1, &st) == 0);
  CHECK_NEAR(st.s, 1.6, 1e-12);
  xsq[0] = -1;
  CHECK_EQ_INT(ap_stats_layer(&l, grad, 1, &st), AP_PRUNE_ENAN);
  CHECK_EQ_INT(ap_stats_grad_mean(grad, NULL, 4, 0.0, &st.g), AP_PRUNE_EINVAL);
}

static void test_outlier(void) {
  /* three layers of one block, with outlier channels; brute-force pooled mean */
  size_t shapes[3][2] = {{64, 96}, {32, 96}, {96, 50}};
  float *w[3];
  double *xsq[3];
  uint64_t *m[3];
  ap_layer_ref l[3];
  double sum = 0, total = 0;
  for (int k = 0; k < 3; k++) {
    size_t n = shapes[k][0] * shapes[k][1];
    w[k] = malloc(n * 4);
    xsq[k] = malloc(shapes[k][1] * 8);
    m[k] = ap_bitmap_alloc(n);
    for (size_t i = 0; i < n; i++) {
      w[k][i] = (float)(0.02 * gauss());
      if (k == 1 && rnd() % 4 == 0) ap_bitmap_set(m[k], i);
    }
    for (size_t j = 0; j < shapes[k][1]; j++) xsq[k][j] = rnd() % 20 == 0 ? 1e4 : exp(gauss());
    l[k] = (ap_layer_ref){w[k], xsq[k], m[k], shapes[k][0], shapes[k][1]};
    for (size_t i = 0; i < n; i++)
      if (!ap_bitmap_get(m[k], i)) sum += fabsf(w[k][i]) * (float)sqrt(xsq[k][i % shapes[k][1]]);
    total += (double)n;
  }
  double thr = 5 * sum / total, above = 0;
  for (int k = 0; k < 3; k++)
    for (size_t i = 0; i < shapes[k][0] * shapes[k][1]; i++)
      above += !ap_bitmap_get(m[k], i) && fabsf(w[k][i]) * (float)sqrt(xsq[k][i % shapes[k][1]]) > thr;
  double frac = -1;
  CHECK(ap_stats_outlier_fraction(l, 3, 5.0, &frac) == 0);
  CHECK_NEAR(frac, above / total, 1e-15);
  CHECK(frac > 0.001 && frac < 0.2);
  l[2].xsq = NULL;
  CHECK_EQ_INT(ap_stats_outlier_fraction(l, 3, 5.0, &frac), AP_PRUNE_EINVAL);
  for (int k = 0; k < 3; k++) { free(w[k]); free(xsq[k]); free(m[k]); }
  size_t pruned[2] = {10, 30}, params[2] = {100, 100};
  CHECK_NEAR(ap_stats_global_sparsity(pruned, params, 2), 0.2, 1e-15);
}

static void test_owl(void) {
  double o[4] = {1, 2, 3, 5}, s[4];
  CHECK(ap_owl_sparsities(o, 4, 0.7, 0.08, s) == 0);
  /* r = (o-1)/4*0.16 = 0,.04,.08,.16; mean .07; sparsity = .7 + .07 - r */
  const double want[4] = {0.77, 0.73, 0.69, 0.61};
  for (int i = 0; i < 4; i++) CHECK_NEAR(s[i], want[i], 1e-12);
  double mean = (s[0] + s[1] + s[2] + s[3]) / 4;
  CHECK_NEAR(mean, 0.7, 1e-12);
  CHECK_NEAR(s[0] - s[3], 0.16, 1e-12); /* spread 2*lambda */
  double e[3] = {2, 2, 2}, se[3];
  CHECK(ap_owl_sparsities(e, 3, 0.5, 0.08, se) == 0);
  CHECK(se[0] == 0.5 && se[2] == 0.5);
  CHECK(ap_owl_sparsities(o, 4, 0.0, 0.08, s) == 0);
  CHECK(s[3] == 0.01); /* OWL's floor for non-positive sparsity */
  CHECK(ap_owl_sparsities(o, 4, 0.99, 0.08, s) == 0);
  CHECK(s[0] == 1.0);
  CHECK_EQ_INT(ap_owl_sparsities(o, 4, 1.5, 0.08, s), AP_PRUNE_EINVAL);
  o[1] = NAN;
  CHECK_EQ_INT(ap_owl_sparsities(o, 4, 0.5, 0.08, s), AP_PRUNE_ENAN);
}

static void test_plan(void) {
  ap_plan_layer l[3] = {{100, 0.8, 0}, {100, 0.0, 1}, {200, 0.1, 1}};
  double t[3], g;
  CHECK(ap_plan_uniform(l, 3, 0.5, 0, t, &g) == 0);
  CHECK(t[0] == 0.8 && t[1] == 0.5 && t[2] == 0.5);
  CHECK_NEAR(g, (80 + 50 + 100) / 400.0, 1e-15);
  CHECK(ap_plan_uniform(l, 3, 0.5, 1, t, &g) == 0);
  /* 80 + 300 t = 200 -> t = 0.4 */
  CHECK_NEAR(t[1], 0.4, 1e-9);
  CHECK_NEAR(t[2], 0.4, 1e-9);
  CHECK(t[0] == 0.8);
  CHECK_NEAR(g, 0.5, 1e-9);
  ap_plan_layer done[2] = {{10, 0.9, 0}, {10, 0.9, 0}};
  CHECK(ap_plan_uniform(done, 2, 0.5, 1, t, &g) == 0);
  CHECK(t[0] == 0.9 && t[1] == 0.9 && g == 0.9);
  double bs[2] = {0.45, 0.55};
  CHECK(ap_plan_owl(l, 3, bs, 2, t, &g) == 0);
  CHECK(t[0] == 0.8 && t[1] == 0.55 && t[2] == 0.55);
  CHECK_EQ_INT(ap_plan_owl(l, 3, bs, 1, t, &g), AP_PRUNE_EINVAL);
  l[0].rho = 1.5;
  CHECK_EQ_INT(ap_plan_uniform(l, 3, 0.5, 0, t, &g), AP_PRUNE_EINVAL);
}

int main(void) {
  test_zscores();
  test_percentile_and_grad();
  test_outlier();
  test_owl();
  test_plan();
  TEST_DONE();
}
