/*
 * test_mask_simd.c - the AVX2 per-row selection (mask_simd.c) must give
 * bit-identical masks, reports and error codes to the scalar reference
 * (AP_MASK_IMPL_SCALAR), which test_mask.c checks against a full sort.
 *
 * Inputs aim at the paths of the sampled selection: widths around the
 * vector (8), word (64) and sample (32/64, 1024) sizes; rows of one repeated
 * key, of a few distinct keys (ties at the threshold), of zeros, of
 * subnormals and infinities, sorted rows, rows with a gap or a cluster at the
 * threshold (sample brackets that miss), existing masks of every density
 * (rows already over the target included), targets 0, 1, 1/cols and in
 * between, Wanda and magnitude scores, and NaN rows (ENAN, the other rows
 * still pruned, identically). A sort-based oracle checks the scalar path on
 * the same inputs, so a bug shared by both paths fails too.
 *
 * N:M (ap_mask_nm_impl, vector kernel for m = 2, 4, 8): the same
 * comparison over every n <= m, widths with a scalar tail, ties, existing
 * masks (groups at and over n), and NaN groups, whose bits the scalar code
 * writes before it reports the error, signalling NaNs included.
 *
 * Layer scope (ap_mask_layer_impl, one-pass sampled select over the whole
 * matrix for layers of 2^16 weights and more): the same comparison, with
 * widths whose words wrap rows, ties, masks, NaN and targets at the ends.
 *
 * The row kernel's threshold predictor on its own: rows that differ in
 * scale mostly take the predicted path; misses stay exact.
 *
 * Percentile (ap_stats_score_percentile_impl, the profile's s = p10, whose
 * AVX2 path takes both neighbouring order statistics from the layer pass):
 * the same value bit for bit as the radix path, and both equal to numpy's
 * 'linear' percentile of the sorted surviving scores.
 */
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "../test.h"
#include "bitmap.h"
#include "mask.h"
#include "mask_simd.h"
#include "prune_error.h"
#include "select.h"
#include "stats.h"

#define TEST_RNG_SEED 4242
#include "test_rng.h"

enum {
  ROW_GAUSS,     /* Gaussian weights */
  ROW_FEW,       /* a few distinct values: many ties, also at the threshold */
  ROW_CONST,     /* one value */
  ROW_ZEROS,     /* mostly +0 and -0 */
  ROW_SORTED,    /* increasing magnitude along the row */
  ROW_REVERSED,  /* decreasing */
  ROW_GAP,       /* two clusters far apart: a sample bracket easily misses */
  ROW_SPIKE,     /* many copies of one value near the middle of the order */
  ROW_TINY,      /* subnormals, zeros and infinities */
  ROW_KINDS
};

static float row_value(int kind, size_t j, size_t cols) {
  switch (kind) {
  case ROW_GAUSS: return (float)(0.02 * gauss());
  case ROW_FEW: return (float)((int)(rnd() % 5) - 2) * 0.25f;
  case ROW_CONST: return 0.125f;
  case ROW_ZEROS: return rnd() % 4 ? (rnd() % 2 ? 0.0f : -0.0f) : (float)gauss();
  case ROW_SORTED: return (float)j / (float)cols + 1e-3f;
  case ROW_REVERSED: return (float)(cols - j) / (float)cols - 0.5f;
  case ROW_GAP: return rnd() % 2 ? (float)(1e-6 * unif()) : (float)(1e6 * (1.0 + unif()));
  case ROW_SPIKE: return rnd() % 3 ? 0.5f : (float)(2.0 * unif() - 1.0);
  case ROW_TINY: {
    uint32_t c = rnd() % 8;
    if (c == 0) return INFINITY;
    if (c == 1) return -INFINITY;
    if (c == 2) return 0.0f;
    float f;
    uint32_t bits = rnd() % 0x00800000u; /* a subnormal */
    memcpy(&f, &bits, sizeof f);
    return f;
  }
  }
  return 0.0f;
}

/* Sort oracle: the lowest-(score, column) survivors of each row go first. */
typedef struct {
  float s;
  size_t j;
} item;

static int cmp_item(const void *a, const void *b) {
  const item *x = a, *y = b;
  if (x->s != y->s) return x->s < y->s ? -1 : 1;
  return (x->j > y->j) - (x->j < y->j);
}

static void oracle(const float *w, const double *xsq, size_t rows, size_t cols, double target, uint64_t *mask) {
  size_t k = ap_mask_count_target(cols, target);
  item *it = malloc(cols * sizeof *it);
  for (size_t r = 0; r < rows; r++) {
    size_t have = 0, ns = 0;
    for (size_t j = 0; j < cols; j++) {
      if (ap_bitmap_get(mask, r * cols + j)) have++;
      else it[ns++] = (item){fabsf(w[r * cols + j]) * (xsq ? (float)sqrt(xsq[j]) : 1.0f), j};
    }
    if (have >= k) continue;
    qsort(it, ns, sizeof *it, cmp_item);
    for (size_t i = 0; i < k - have; i++) ap_bitmap_set(mask, r * cols + it[i].j);
  }
  free(it);
}

typedef struct {
  int runs, differ, oracle_differ, rc_differ, report_differ;
} tally;

/*
 * One case: the same inputs through both paths (and the oracle when no row
 * has a NaN). Every row draws its own kind unless `kind` >= 0.
 */
static void run_case(tally *t, size_t rows, size_t cols, double target, int magnitude, int kind, double density,
                     int nan_rows) {
  size_t n = rows * cols;
  float *w = malloc(n * sizeof *w);
  double *xsq = malloc(cols * sizeof *xsq);
  for (size_t r = 0; r < rows; r++) {
    int kd = kind >= 0 ? kind : (int)(rnd() % ROW_KINDS);
    for (size_t j = 0; j < cols; j++) w[r * cols + j] = row_value(kd, j, cols);
  }
  for (size_t j = 0; j < cols; j++) {
    xsq[j] = exp(2 * gauss()) * 100.0;
    if (rnd() % 50 == 0) xsq[j] *= 1e4; /* outlier channels */
    if (rnd() % 97 == 0) xsq[j] = 0.0;  /* dead channels: zero scores */
    if (kind == ROW_FEW || kind == ROW_SPIKE) xsq[j] = (double)(1 + rnd() % 2); /* ties survive the norms */
  }
  if (nan_rows)
    for (int i = 0; i < nan_rows; i++) w[(rnd() % rows) * cols + rnd() % cols] = NAN;
  uint64_t *m0 = ap_bitmap_alloc(n), *ms = ap_bitmap_alloc(n), *mv = ap_bitmap_alloc(n);
  for (size_t i = 0; i < n; i++)
    if (unif() < density) ap_bitmap_set(m0, i);
  memcpy(ms, m0, ap_bitmap_bytes(n));
  memcpy(mv, m0, ap_bitmap_bytes(n));
  const double *xs = magnitude ? NULL : xsq;
  ap_mask_report rs = {0}, rv = {0};
  int rc_s = ap_mask_rows_impl(w, xs, rows, cols, target, ms, &rs, AP_MASK_IMPL_SCALAR);
  int rc_v = ap_mask_rows_impl(w, xs, rows, cols, target, mv, &rv, AP_MASK_IMPL_SIMD);
  t->runs++;
  if (rc_s != rc_v) t->rc_differ++;
  if (memcmp(ms, mv, ap_bitmap_bytes(n)) != 0) {
    if (t->differ++ < 3)
      fprintf(stderr, "  differ: %zux%zu target %.4f %s kind %d density %.2f nan %d\n", rows, cols, target,
              magnitude ? "magnitude" : "wanda", kind, density, nan_rows);
  }
  if (rs.pruned_before != rv.pruned_before || rs.pruned_after != rv.pruned_after || rs.units_over != rv.units_over)
    t->report_differ++;
  int nan_scores = 0; /* also 0 * inf from a dead channel and an infinite weight */
  for (size_t i = 0; i < n && !nan_scores; i++)
    nan_scores = isnan(fabsf(w[i]) * (xs ? (float)sqrt(xs[i % cols]) : 1.0f));
  if (!nan_scores) {
    oracle(w, xs, rows, cols, target, m0);
    if (rc_s != AP_PRUNE_OK || memcmp(ms, m0, ap_bitmap_bytes(n)) != 0) t->oracle_differ++;
  }
  free(w);
  free(xsq);
  free(m0);
  free(ms);
  free(mv);
}

static void check_tally(const tally *t, const char *what) {
  CHECKF(t->differ == 0, "%s: %d of %d masks differ between SIMD and scalar", what, t->differ, t->runs);
  CHECKF(t->rc_differ == 0, "%s: %d return codes differ", what, t->rc_differ);
  CHECKF(t->report_differ == 0, "%s: %d reports differ", what, t->report_differ);
  CHECKF(t->oracle_differ == 0, "%s: %d scalar masks differ from the sort oracle", what, t->oracle_differ);
}

/* Every width near a boundary of the vector, word, sample and round sizes, mixed rows. */
static void test_widths(void) {
  const size_t widths[] = {1,   2,   3,   7,   8,   9,   15,  16,  17,  31,  32,   33,   34,   63,   64,  65,
                           96,  100, 127, 128, 129, 172, 255, 256, 257, 511, 1000, 1023, 1024, 1025, 1031, 2048,
                           4096, 4100};
  tally t = {0};
  for (size_t wi = 0; wi < sizeof widths / sizeof *widths; wi++) {
    size_t cols = widths[wi];
    size_t rows = cols >= 1024 ? 12 : cols >= 128 ? 40 : 70;
    const double targets[] = {0.0, 1.0, 1.0 / (double)cols, 0.5, 0.7, unif()};
    for (size_t ti = 0; ti < sizeof targets / sizeof *targets; ti++) {
      run_case(&t, rows, cols, targets[ti], (int)(ti % 2), -1, 0.0, 0);
      run_case(&t, rows, cols, targets[ti], (int)((ti + 1) % 2), -1, ti % 3 ? 0.15 : 0.6, 0);
    }
  }
  check_tally(&t, "widths");
}

/* Each row kind on its own at the realistic widths, dense and with masks. */
static void test_kinds(void) {
  const size_t widths[] = {173, 1024, 4096};
  tally t = {0};
  for (int kind = 0; kind < ROW_KINDS; kind++)
    for (size_t wi = 0; wi < sizeof widths / sizeof *widths; wi++) {
      size_t cols = widths[wi], rows = cols > 1024 ? 8 : 24;
      run_case(&t, rows, cols, 0.5, 0, kind, 0.0, 0);
      run_case(&t, rows, cols, 0.3 + 0.6 * unif(), kind % 2, kind, 0.0, 0);
      run_case(&t, rows, cols, 0.6, 0, kind, 0.3, 0);
      run_case(&t, rows, cols, 0.9, 1, kind, 0.85, 0);
    }
  check_tally(&t, "row kinds");
}

/* Many Gaussian rows: the sampled brackets miss now and then, on both sides, and must still be exact. */
static void test_many_rows(void) {
  tally t = {0};
  for (int i = 0; i < 6; i++) {
    run_case(&t, 300, 4096, 0.05 + 0.15 * i, i % 2, ROW_GAUSS, 0.0, 0);
    run_case(&t, 400, 1100, 0.5, 0, ROW_GAUSS, 0.1 * i, 0);
  }
  run_case(&t, 64, 11008, 0.5, 0, ROW_GAUSS, 0.0, 0);
  check_tally(&t, "many rows");
}

/* Growing a mask in steps (the job loop) takes the masked paths and rows at or over the target. */
static void test_incremental(void) {
  size_t rows = 50, cols = 1500, n = rows * cols;
  float *w = malloc(n * sizeof *w);
  double *xsq = malloc(cols * sizeof *xsq);
  for (size_t i = 0; i < n; i++) w[i] = i % 7 ? (float)(0.02 * gauss()) : 0.01f;
  for (size_t j = 0; j < cols; j++) xsq[j] = exp(2 * gauss());
  uint64_t *ms = ap_bitmap_alloc(n), *mv = ap_bitmap_alloc(n);
  const double steps[] = {0.1, 0.3, 0.3, 0.45, 0.2, 0.7, 0.95, 1.0};
  int bad = 0;
  for (size_t i = 0; i < sizeof steps / sizeof *steps; i++) {
    ap_mask_report rs, rv;
    int a = ap_mask_rows_impl(w, xsq, rows, cols, steps[i], ms, &rs, AP_MASK_IMPL_SCALAR);
    int b = ap_mask_rows_impl(w, xsq, rows, cols, steps[i], mv, &rv, AP_MASK_IMPL_SIMD);
    if (a || b || memcmp(ms, mv, ap_bitmap_bytes(n)) || rs.units_over != rv.units_over) bad++;
  }
  CHECK_EQ_INT(bad, 0);
  free(w);
  free(xsq);
  free(ms);
  free(mv);
}

/* NaN scores: AP_PRUNE_ENAN from both, the NaN rows untouched and every other row pruned the same. */
static void test_nan(void) {
  tally t = {0};
  run_case(&t, 40, 4096, 0.5, 0, ROW_GAUSS, 0.0, 3);
  run_case(&t, 40, 100, 0.5, 1, -1, 0.2, 5);
  run_case(&t, 70, 9, 0.5, 0, -1, 0.0, 4);
  check_tally(&t, "NaN rows");
  /* an infinite norm: inf * 0 is NaN in the one row with a zero weight there, and inf elsewhere */
  {
    size_t rows = 40, cols = 4096, n = rows * cols;
    float *w = malloc(n * sizeof *w);
    double *xsq = malloc(cols * sizeof *xsq);
    for (size_t i = 0; i < n; i++) w[i] = (float)(0.02 * gauss());
    for (size_t j = 0; j < cols; j++) xsq[j] = exp(2 * gauss());
    xsq[5] = INFINITY;
    uint64_t *ms = ap_bitmap_alloc(n), *mv = ap_bitmap_alloc(n);
    CHECK_EQ_INT(ap_mask_rows_impl(w, xsq, rows, cols, 0.5, ms, NULL, AP_MASK_IMPL_SCALAR), AP_PRUNE_OK);
    CHECK_EQ_INT(ap_mask_rows_impl(w, xsq, rows, cols, 0.5, mv, NULL, AP_MASK_IMPL_SIMD), AP_PRUNE_OK);
    CHECK(memcmp(ms, mv, ap_bitmap_bytes(n)) == 0);
    w[20 * cols + 5] = 0.0f;
    memset(ms, 0, ap_bitmap_bytes(n));
    memset(mv, 0, ap_bitmap_bytes(n));
    CHECK_EQ_INT(ap_mask_rows_impl(w, xsq, rows, cols, 0.5, ms, NULL, AP_MASK_IMPL_SCALAR), AP_PRUNE_ENAN);
    CHECK_EQ_INT(ap_mask_rows_impl(w, xsq, rows, cols, 0.5, mv, NULL, AP_MASK_IMPL_SIMD), AP_PRUNE_ENAN);
    CHECK(memcmp(ms, mv, ap_bitmap_bytes(n)) == 0);
    free(w);
    free(xsq);
    free(ms);
    free(mv);
  }
  /* a NaN weight in a row that needs no pruning is not an error */
  float w[64];
  for (int i = 0; i < 64; i++) w[i] = (float)i;
  w[3] = NAN;
  uint64_t ms[1] = {~(uint64_t)0 >> 32}, mv[1] = {~(uint64_t)0 >> 32};
  CHECK_EQ_INT(ap_mask_rows_impl(w, NULL, 1, 64, 0.5, ms, NULL, AP_MASK_IMPL_SCALAR), AP_PRUNE_OK);
  CHECK_EQ_INT(ap_mask_rows_impl(w, NULL, 1, 64, 0.5, mv, NULL, AP_MASK_IMPL_SIMD), AP_PRUNE_OK);
  /* nor is a NaN weight that is already pruned */
  ms[0] = mv[0] = 8;
  CHECK_EQ_INT(ap_mask_rows_impl(w, NULL, 1, 64, 0.5, ms, NULL, AP_MASK_IMPL_SCALAR), AP_PRUNE_OK);
  CHECK_EQ_INT(ap_mask_rows_impl(w, NULL, 1, 64, 0.5, mv, NULL, AP_MASK_IMPL_SIMD), AP_PRUNE_OK);
  CHECK(ms[0] == mv[0]);
}

/* The SIMD masks do not depend on the thread count either. */
static void test_threads(void) {
  size_t rows = 200, cols = 1111, n = rows * cols;
  float *w = malloc(n * sizeof *w);
  double *xsq = malloc(cols * sizeof *xsq);
  for (size_t i = 0; i < n; i++) w[i] = (float)((int)(rnd() % 9) - 4) * 0.01f;
  for (size_t j = 0; j < cols; j++) xsq[j] = (double)(1 + rnd() % 3);
  uint64_t *a = ap_bitmap_alloc(n), *b = ap_bitmap_alloc(n);
  int threads = omp_get_max_threads();
  CHECK(ap_mask_rows_impl(w, xsq, rows, cols, 0.55, a, NULL, AP_MASK_IMPL_SIMD) == 0);
  omp_set_num_threads(1);
  CHECK(ap_mask_rows_impl(w, xsq, rows, cols, 0.55, b, NULL, AP_MASK_IMPL_SIMD) == 0);
  omp_set_num_threads(threads > 1 ? threads : 3);
  CHECK(memcmp(a, b, ap_bitmap_bytes(n)) == 0);
  /* the layer scope splits ties between thread ranges: 1 and 3 threads, same mask */
  memset(a, 0, ap_bitmap_bytes(n));
  memset(b, 0, ap_bitmap_bytes(n));
  omp_set_num_threads(1);
  CHECK(ap_mask_layer_impl(w, xsq, rows, cols, 0.55, a, NULL, AP_MASK_IMPL_SIMD) == 0);
  omp_set_num_threads(3);
  CHECK(ap_mask_layer_impl(w, xsq, rows, cols, 0.55, b, NULL, AP_MASK_IMPL_SIMD) == 0);
  CHECK(memcmp(a, b, ap_bitmap_bytes(n)) == 0);
  omp_set_num_threads(threads);
  free(w);
  free(xsq);
  free(a);
  free(b);
}

/* N:M: SIMD against scalar, mask, report and return code, on mixed rows. */
static void nm_case(int *runs, int *bad, size_t rows, size_t cols, unsigned n, unsigned m, int magnitude,
                    double density, int nans) {
  size_t total = rows * cols;
  float *w = malloc(total * sizeof *w);
  double *xsq = malloc(cols * sizeof *xsq);
  for (size_t r = 0; r < rows; r++) {
    int kd = (int)(rnd() % ROW_KINDS);
    for (size_t j = 0; j < cols; j++) w[r * cols + j] = row_value(kd, j, cols);
  }
  for (size_t j = 0; j < cols; j++) xsq[j] = rnd() % 3 ? (double)(1 + rnd() % 2) : exp(2 * gauss());
  for (int i = 0; i < nans; i++) {
    /* a signalling NaN, or a quiet one of either sign */
    uint32_t u = rnd() % 2 ? 0x7f800001u + rnd() % 0x3fffffu : 0xffc00000u | rnd();
    memcpy(&w[(rnd() % rows) * cols + rnd() % cols], &u, sizeof u);
  }
  uint64_t *ms = ap_bitmap_alloc(total), *mv = ap_bitmap_alloc(total);
  for (size_t i = 0; i < total; i++)
    if (unif() < density) ap_bitmap_set(ms, i);
  memcpy(mv, ms, ap_bitmap_bytes(total));
  const double *xs = magnitude ? NULL : xsq;
  ap_mask_report rs = {0}, rv = {0};
  int a = ap_mask_nm_impl(w, xs, rows, cols, n, m, ms, &rs, AP_MASK_IMPL_SCALAR);
  int b = ap_mask_nm_impl(w, xs, rows, cols, n, m, mv, &rv, AP_MASK_IMPL_SIMD);
  (*runs)++;
  if (a != b || memcmp(ms, mv, ap_bitmap_bytes(total)) || rs.pruned_after != rv.pruned_after ||
      rs.units_over != rv.units_over) {
    if ((*bad)++ < 3)
      fprintf(stderr, "  N:M differ: %zux%zu %u:%u %s density %.2f nans %d (rc %d %d)\n", rows, cols, n, m,
              magnitude ? "magnitude" : "wanda", density, nans, a, b);
  }
  free(w);
  free(xsq);
  free(ms);
  free(mv);
}

static void test_nm(void) {
  const unsigned nm[][2] = {{1, 2}, {2, 2}, {0, 2}, {2, 4}, {1, 4}, {3, 4}, {4, 4}, {0, 4},
                            {4, 8}, {1, 8}, {7, 8}, {8, 8}, {2, 3}, {5, 16}};
  const size_t widths[] = {2, 4, 8, 12, 63, 64, 65, 100, 172, 4096, 4100};
  int runs = 0, bad = 0;
  for (size_t i = 0; i < sizeof nm / sizeof *nm; i++)
    for (size_t wi = 0; wi < sizeof widths / sizeof *widths; wi++) {
      size_t cols = widths[wi], rows = cols >= 4096 ? 6 : 37;
      nm_case(&runs, &bad, rows, cols, nm[i][0], nm[i][1], (int)(wi % 2), 0.0, 0);
      nm_case(&runs, &bad, rows, cols, nm[i][0], nm[i][1], (int)((wi + 1) % 2), 0.2, 0);
      nm_case(&runs, &bad, rows, cols, nm[i][0], nm[i][1], 0, 0.6, 0);
      nm_case(&runs, &bad, rows, cols, nm[i][0], nm[i][1], (int)(wi % 2), 0.1, 3);
    }
  /* NaN-dense groups: the order among NaN keys (quiet vs signalling payloads) decides the bits */
  for (unsigned m = 2; m <= 8; m *= 2) {
    nm_case(&runs, &bad, 40, 64, m / 2, m, 1, 0.0, 1500);
    nm_case(&runs, &bad, 40, 64, m / 2, m, 0, 0.1, 1500);
  }
  CHECKF(bad == 0, "%d of %d N:M runs differ between SIMD and scalar", bad, runs);
}

/* Layer scope: SIMD against scalar on mixed rows (the scalar path is test_mask's, against a sort). */
/*
 * A random layer for the layer-scope cases: rows of `kind` (-1: each row its
 * own), `nans` NaN weights, and a mask with about `density` of its bits set.
 * The caller frees the three arrays.
 */
static void make_layer(size_t rows, size_t cols, int kind, double density, int nans, float **w_out, double **xsq_out,
                       uint64_t **mask_out) {
  size_t n = rows * cols;
  float *w = malloc(n * sizeof *w);
  double *xsq = malloc(cols * sizeof *xsq);
  for (size_t r = 0; r < rows; r++) {
    int kd = kind >= 0 ? kind : (int)(rnd() % ROW_KINDS);
    if (kd == ROW_TINY && nans == 0) kd = ROW_GAUSS; /* inf * 0 would be a NaN */
    for (size_t j = 0; j < cols; j++) w[r * cols + j] = row_value(kd, j, cols);
  }
  for (size_t j = 0; j < cols; j++) xsq[j] = kind == ROW_FEW ? (double)(1 + rnd() % 2) : exp(2 * gauss()) * 100.0;
  for (int i = 0; i < nans; i++) w[rnd() % n] = NAN;
  uint64_t *mask = ap_bitmap_alloc(n);
  for (size_t i = 0; i < n; i++)
    if (unif() < density) ap_bitmap_set(mask, i);
  *w_out = w;
  *xsq_out = xsq;
  *mask_out = mask;
}

static void layer_case(int *runs, int *bad, size_t rows, size_t cols, double target, int magnitude, int kind,
                       double density, int nans) {
  size_t n = rows * cols;
  float *w;
  double *xsq;
  uint64_t *ms, *mv = ap_bitmap_alloc(n);
  make_layer(rows, cols, kind, density, nans, &w, &xsq, &ms);
  memcpy(mv, ms, ap_bitmap_bytes(n));
  const double *xs = magnitude ? NULL : xsq;
  ap_mask_report rs = {0}, rv = {0};
  int a = ap_mask_layer_impl(w, xs, rows, cols, target, ms, &rs, AP_MASK_IMPL_SCALAR);
  int b = ap_mask_layer_impl(w, xs, rows, cols, target, mv, &rv, AP_MASK_IMPL_SIMD);
  (*runs)++;
  if (a != b || memcmp(ms, mv, ap_bitmap_bytes(n)) || rs.pruned_after != rv.pruned_after ||
      rs.units_over != rv.units_over) {
    if ((*bad)++ < 3)
      fprintf(stderr, "  layer differ: %zux%zu target %.4f %s kind %d density %.2f nans %d (rc %d %d)\n", rows,
              cols, target, magnitude ? "magnitude" : "wanda", kind, density, nans, a, b);
  }
  free(w);
  free(xsq);
  free(ms);
  free(mv);
}

static void test_layer(void) {
  int runs = 0, bad = 0;
  const size_t shapes[][2] = {{256, 256}, {64, 1100}, {700, 97}, {33, 4096}, {1, 70000}, {200, 333}};
  for (size_t si = 0; si < sizeof shapes / sizeof *shapes; si++) {
    size_t rows = shapes[si][0], cols = shapes[si][1];
    const double targets[] = {0.5, 0.1, 0.93, 1.0 / (double)(rows * cols), 0.0, 1.0, unif()};
    for (size_t ti = 0; ti < sizeof targets / sizeof *targets; ti++)
      layer_case(&runs, &bad, rows, cols, targets[ti], (int)(ti % 2), -1, ti % 3 ? 0.0 : 0.3, 0);
    layer_case(&runs, &bad, rows, cols, 0.6, 0, ROW_FEW, 0.2, 0);    /* ties at the threshold */
    layer_case(&runs, &bad, rows, cols, 0.5, 1, ROW_CONST, 0.0, 0);  /* one value */
    layer_case(&runs, &bad, rows, cols, 0.5, 0, ROW_GAP, 0.0, 0);    /* two clusters */
    layer_case(&runs, &bad, rows, cols, 0.5, 0, ROW_SORTED, 0.0, 0); /* order along rows */
    layer_case(&runs, &bad, rows, cols, 0.7, 1, -1, 0.65, 0);        /* mostly pruned already */
    layer_case(&runs, &bad, rows, cols, 0.5, 0, ROW_GAUSS, 0.1, 2);  /* NaN: ENAN, mask untouched */
  }
  CHECKF(bad == 0, "%d of %d layer runs differ between SIMD and scalar", bad, runs);
}

static int cmp_float(const void *a, const void *b) {
  float x = *(const float *)a, y = *(const float *)b;
  return (x > y) - (x < y);
}

/* One percentile case: SIMD, scalar and the sorted survivors agree. */
static void pct_case(int *runs, int *bad, size_t rows, size_t cols, double p, int magnitude, int kind, double density,
                     int nans) {
  size_t n = rows * cols;
  float *w, *sorted = malloc(n * sizeof *sorted);
  double *xsq;
  uint64_t *mask;
  make_layer(rows, cols, kind, density, nans, &w, &xsq, &mask);
  ap_layer_ref l = {w, magnitude ? NULL : xsq, mask, rows, cols};
  double vs = -1, vv = -2;
  int a = ap_stats_score_percentile_impl(&l, p, &vs, AP_MASK_IMPL_SCALAR);
  int b = ap_stats_score_percentile_impl(&l, p, &vv, AP_MASK_IMPL_SIMD);
  double want = 0.0;
  size_t m = 0;
  for (size_t i = 0; i < n; i++)
    if (!ap_bitmap_get(mask, i)) sorted[m++] = fabsf(w[i]) * (magnitude ? 1.0f : (float)sqrt(xsq[i % cols]));
  if (m && !nans) {
    qsort(sorted, m, sizeof *sorted, cmp_float);
    size_t lo, hi;
    double g;
    ap_percentile_index(m, p, &lo, &hi, &g);
    want = ap_percentile_lerp(sorted[lo], sorted[hi], g);
  }
  (*runs)++;
  int ok = a == b && (a != AP_PRUNE_OK || memcmp(&vs, &vv, sizeof vs) == 0);
  if (nans) ok = ok && a == AP_PRUNE_ENAN;
  else ok = ok && a == AP_PRUNE_OK && vs == want;
  if (!ok && (*bad)++ < 3)
    fprintf(stderr, "  percentile differ: %zux%zu p %.3f %s kind %d density %.2f nans %d: rc %d %d, %.9g %.9g want %.9g\n",
            rows, cols, p, magnitude ? "magnitude" : "wanda", kind, density, nans, a, b, vs, vv, want);
  free(w);
  free(sorted);
  free(xsq);
  free(mask);
}

static void test_percentile(void) {
  int runs = 0, bad = 0;
  /* the last shape is below the AVX2 path's minimum: both sides take the radix select */
  const size_t shapes[][2] = {{256, 256}, {64, 1100}, {700, 97}, {33, 4096}, {1, 70000}, {20, 333}};
  for (size_t si = 0; si < sizeof shapes / sizeof *shapes; si++) {
    size_t rows = shapes[si][0], cols = shapes[si][1];
    const double ps[] = {10.0, 0.0, 100.0, 50.0, 99.9, 100.0 * unif()};
    for (size_t pi = 0; pi < sizeof ps / sizeof *ps; pi++)
      pct_case(&runs, &bad, rows, cols, ps[pi], (int)(pi % 2), -1, pi % 3 ? 0.0 : 0.4, 0);
    pct_case(&runs, &bad, rows, cols, 10.0, 0, ROW_FEW, 0.2, 0);   /* ties at and beside the percentile */
    pct_case(&runs, &bad, rows, cols, 10.0, 1, ROW_CONST, 0.0, 0); /* one value */
    pct_case(&runs, &bad, rows, cols, 10.0, 0, ROW_GAP, 0.0, 0);   /* two clusters */
    pct_case(&runs, &bad, rows, cols, 10.0, 0, ROW_ZEROS, 0.0, 0); /* mostly signed zeros */
    pct_case(&runs, &bad, rows, cols, 10.0, 0, ROW_GAUSS, 0.9, 0); /* most weights pruned */
    pct_case(&runs, &bad, rows, cols, 10.0, 0, ROW_GAUSS, 0.0, 2); /* NaN: ENAN from both */
  }
  CHECKF(bad == 0, "%d of %d percentile runs differ between SIMD, scalar and the sort", bad, runs);
}

static int cmp_u32(const void *a, const void *b) {
  uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
  return (x > y) - (x < y);
}

/* The sample sorter picks the pivots: a wrong order would only slow the selection, so test it here. */
static void test_sample_sort(void) {
  int bad = 0;
  for (int it = 0; it < 3000; it++) {
    size_t s = it % 2 ? 64 : 32;
    uint32_t x[64], y[64];
    int mode = it % 5;
    for (size_t i = 0; i < s; i++) {
      uint32_t v = rnd();
      if (mode == 1) v %= 4;                                /* duplicates */
      if (mode == 2) v = (uint32_t)(s - i);                 /* reversed */
      if (mode == 3) v = (uint32_t)i;                       /* sorted */
      if (mode == 4) v = rnd() % 3 ? 0x7fffffffu : rnd() % 2; /* extremes */
      x[i] = y[i] = v & 0x7fffffffu;
    }
    ap_simd_sort_sample(x, s);
    qsort(y, s, sizeof *y, cmp_u32);
    bad += memcmp(x, y, s * sizeof *x) != 0;
  }
  CHECK_EQ_INT(bad, 0);
}

static void test_impl_errors(void) {
  float w[4] = {1, 2, 3, 4};
  uint64_t m[1] = {0};
  CHECK(ap_mask_impl_available(AP_MASK_IMPL_AUTO));
  CHECK(ap_mask_impl_available(AP_MASK_IMPL_SCALAR));
  CHECK_EQ_INT(ap_mask_rows_impl(w, NULL, 1, 4, 0.5, m, NULL, (ap_mask_impl)7), AP_PRUNE_EINVAL);
  CHECK_EQ_INT(ap_mask_rows_impl(w, NULL, 1, 4, 1.5, m, NULL, AP_MASK_IMPL_SCALAR), AP_PRUNE_EINVAL);
  CHECK_EQ_INT(ap_mask_nm_impl(w, NULL, 1, 4, 2, 4, m, NULL, (ap_mask_impl)7), AP_PRUNE_EINVAL);
  CHECK_EQ_INT(ap_mask_nm_impl(w, NULL, 1, 4, 5, 4, m, NULL, AP_MASK_IMPL_SCALAR), AP_PRUNE_EINVAL);
  CHECK(m[0] == 0);
}

/*
 * The row kernel's threshold predictor (mask_simd.c), called as ap_mask_rows
 * calls it. Rows that differ in scale, as the rows of a weight matrix do,
 * must mostly take the predicted one-pass path: a test that fails when the
 * fast path silently stops being taken. Rows of another shape in between, a
 * row of zeros and calls with no row ahead make it miss; every row must
 * still equal the scalar reference, also when an existing mask grows.
 */
/* mixed: 1 = a few odd rows, 2 = every other row of another shape (no one offset fits both) */
static void predictor_case(size_t rows, size_t cols, int mixed, int magnitude, size_t *hits, size_t *misses,
                           int *bad) {
  size_t n = rows * cols;
  float *w = malloc(n * sizeof *w), *norms = malloc(cols * sizeof *norms);
  double *xsq = malloc(cols * sizeof *xsq);
  for (size_t r = 0; r < rows; r++) {
    double scale = 0.02 * exp(0.7 * gauss());
    int kind = mixed == 1 && r % 5 == 3 ? ROW_GAP : mixed == 1 && r == 7 ? ROW_ZEROS : ROW_GAUSS;
    for (size_t j = 0; j < cols; j++) {
      w[r * cols + j] = kind == ROW_GAUSS ? (float)(scale * gauss()) : row_value(kind, j, cols);
      if (mixed == 1 && r == 7) w[r * cols + j] = 0.0f;
      /* odd rows with a few huge weights: their mean |w| says nothing of their median */
      if (mixed == 2 && r % 2 && rnd() % 50 == 0) w[r * cols + j] *= 1e4f;
    }
  }
  for (size_t j = 0; j < cols; j++) xsq[j] = exp(2 * gauss()) * (rnd() % 50 ? 1.0 : 1e4);
  CHECK_EQ_INT(ap_score_norms(xsq, cols, norms), AP_PRUNE_OK);
  uint64_t *ms = ap_bitmap_alloc(n), *mv = ap_bitmap_alloc(n);
  ap_simd_row_ws ws;
  CHECK_EQ_INT(ap_simd_row_ws_init(&ws, cols), AP_PRUNE_OK);
  const double targets[] = {0.5, 0.7}; /* then grow the mask: rows with weights pruned already */
  for (int ti = 0; ti < 2; ti++) {
    size_t k = ap_mask_count_target(cols, targets[ti]);
    if (ap_mask_rows_impl(w, magnitude ? NULL : xsq, rows, cols, targets[ti], ms, NULL, AP_MASK_IMPL_SCALAR) !=
        AP_PRUNE_OK)
      (*bad)++;
    for (size_t r = 0; r < rows; r++) {
      size_t pruned = ap_bitmap_count_range(mv, r * cols, (r + 1) * cols);
      size_t ahead = mixed && r % 4 == 0 ? 0 : rows - r - 1;
      if (ap_mask_row_avx2(w + r * cols, magnitude ? NULL : norms, cols, pruned, k - pruned, mv, r * cols, ahead,
                           &ws) != AP_PRUNE_OK)
        (*bad)++;
    }
    if (memcmp(ms, mv, ap_bitmap_bytes(n)) != 0) (*bad)++;
  }
  *hits += ws.hits;
  *misses += ws.misses;
  ap_simd_row_ws_free(&ws);
  free(w);
  free(norms);
  free(xsq);
  free(ms);
  free(mv);
}

static void test_predictor(void) {
  size_t hits = 0, misses = 0;
  int bad = 0;
  predictor_case(200, 4096, 0, 0, &hits, &misses, &bad);
  /* 400 rows in two calls on one scratch: the first learns, the rest should mostly be predicted */
  CHECKF(hits >= 340, "predicted rows: %zu hits, %zu misses of 400", hits, misses);
  hits = misses = 0;
  predictor_case(200, 4096, 0, 1, &hits, &misses, &bad); /* magnitude: no norms */
  CHECKF(hits >= 340, "predicted magnitude rows: %zu hits, %zu misses of 400", hits, misses);
  size_t h2 = 0, m2 = 0;
  predictor_case(120, 1100, 1, 0, &h2, &m2, &bad);
  predictor_case(60, 257, 1, 1, &h2, &m2, &bad);
  CHECKF(m2 > 0 && h2 > 0, "mixed rows should both hit and miss: %zu hits, %zu misses", h2, m2);
  /* rows of two alternating shapes: the predictor must back off, not miss or bracket most of every row */
  size_t h3 = 0, m3 = 0;
  predictor_case(300, 1024, 2, 0, &h3, &m3, &bad);
  CHECKF(h3 + m3 < 100, "alternating rows: %zu predicted of 600 (%zu missed), the predictor did not back off", h3 + m3,
         m3);
  CHECKF(bad == 0, "%d predictor runs differ from the scalar path", bad);
}

int main(void) {
  test_impl_errors();
  if (!ap_mask_impl_available(AP_MASK_IMPL_SIMD)) {
    /* nothing to compare on this CPU; the scalar path is test_mask's */
    printf("SIMD path not available on this machine: skipped\n");
    TEST_DONE();
  }
  test_sample_sort();
  test_widths();
  test_kinds();
  test_many_rows();
  test_predictor();
  test_incremental();
  test_nan();
  test_threads();
  test_nm();
  test_layer();
  test_percentile();
  TEST_DONE();
}
