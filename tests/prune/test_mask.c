/*
 * test_mask.c - mask invariants against a brute-force reference (a full sort
 * of each comparison group by (score, index)): exact per-row counts, masks
 * only grow, already-pruned weights stay pruned and count toward the target,
 * deterministic ties (lower index first) independent of the thread count,
 * N:M validity of every group, layer scope, and bad input.
 */
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <stdlib.h>

#include "../test.h"
#include "bitmap.h"
#include "mask.h"
#include "prune_error.h"

#define TEST_RNG_SEED 777
#include "test_rng.h"

typedef struct {
  float score;
  size_t idx;
} item;

static int cmp_item(const void *a, const void *b) {
  const item *x = a, *y = b;
  if (x->score != y->score) return x->score < y->score ? -1 : 1;
  return (x->idx > y->idx) - (x->idx < y->idx);
}

static float ref_score(const float *w, const double *xsq, size_t i, size_t cols) {
  return fabsf(w[i]) * (xsq ? (float)sqrt(xsq[i % cols]) : 1.0f);
}

/* Reference: within [begin, begin+len) (stride 1), prune the lowest surviving until `target` are pruned. */
static void ref_group(const float *w, const double *xsq, size_t cols, size_t begin, size_t len, size_t target,
                      uint64_t *mask) {
  size_t have = 0, ns = 0;
  item *it = malloc(len * sizeof *it);
  for (size_t i = begin; i < begin + len; i++) {
    if (ap_bitmap_get(mask, i)) have++;
    else it[ns++] = (item){ref_score(w, xsq, i, cols), i};
  }
  if (have < target) {
    qsort(it, ns, sizeof *it, cmp_item);
    for (size_t i = 0; i < target - have; i++) ap_bitmap_set(mask, it[i].idx);
  }
  free(it);
}

static void gen(float *w, double *xsq, size_t rows, size_t cols, int ties) {
  for (size_t i = 0; i < rows * cols; i++)
    w[i] = ties ? (float)((int)(rnd() % 9) - 4) * 0.01f : (float)(0.02 * gauss());
  for (size_t j = 0; j < cols; j++) {
    xsq[j] = ties ? (double)(1 + rnd() % 3) : exp(2 * gauss()) * 100.0;
    if (!ties && rnd() % 50 == 0) xsq[j] *= 1e4; /* outlier channels */
  }
}

static void random_mask(uint64_t *m, size_t n, double density) {
  for (size_t i = 0; i < n; i++)
    if (unif() < density) ap_bitmap_set(m, i);
}

static int masks_equal(const uint64_t *a, const uint64_t *b, size_t n) {
  return memcmp(a, b, ap_bitmap_bytes(n)) == 0;
}

static void test_rows_vs_reference(void) {
  const size_t shapes[][2] = {{1, 1}, {3, 7}, {17, 64}, {33, 100}, {20, 172}, {64, 513}, {9, 1000}, {5, 4096},
                              {130, 65}};
  int bad = 0, bad_count = 0, bad_grow = 0, runs = 0;
  for (size_t si = 0; si < sizeof shapes / sizeof *shapes; si++) {
    size_t rows = shapes[si][0], cols = shapes[si][1], n = rows * cols;
    float *w = malloc(n * sizeof *w);
    double *xsq = malloc(cols * sizeof *xsq);
    for (int ties = 0; ties < 2; ties++) {
      for (int mag = 0; mag < 2; mag++) {
        const double targets[] = {0.0, 0.25, 0.5, 0.7, 1.0, unif()};
        for (size_t ti = 0; ti < 6; ti++) {
          gen(w, xsq, rows, cols, ties);
          uint64_t *m = ap_bitmap_alloc(n), *ref = ap_bitmap_alloc(n), *orig = ap_bitmap_alloc(n);
          random_mask(m, n, ti % 2 ? 0.3 * unif() : 0.0);
          memcpy(ref, m, ap_bitmap_bytes(n));
          memcpy(orig, m, ap_bitmap_bytes(n));
          ap_mask_report rep;
          const double *xs = mag ? NULL : xsq;
          int rc = ap_mask_rows(w, xs, rows, cols, targets[ti], m, &rep);
          size_t k = ap_mask_count_target(cols, targets[ti]);
          for (size_t r = 0; r < rows; r++) ref_group(w, xs, cols, r * cols, cols, k, ref);
          runs++;
          if (rc || !masks_equal(m, ref, n)) bad++;
          if (!ap_bitmap_is_superset(m, orig, n) || !ap_bitmap_check_tail(m, n)) bad_grow++;
          for (size_t r = 0; r < rows; r++) {
            size_t before = ap_bitmap_count_range(orig, r * cols, (r + 1) * cols);
            size_t after = ap_bitmap_count_range(m, r * cols, (r + 1) * cols);
            if (after != (before > k ? before : k)) bad_count++;
          }
          if (rep.pruned_before != ap_bitmap_count(orig, n) || rep.pruned_after != ap_bitmap_count(m, n)) bad++;
          free(m);
          free(ref);
          free(orig);
        }
      }
    }
    free(w);
    free(xsq);
  }
  CHECKF(bad == 0, "%d of %d runs differ from the reference", bad, runs);
  CHECK_EQ_INT(bad_count, 0);
  CHECK_EQ_INT(bad_grow, 0);
}

/* Growing in steps gives the same mask as one step (same scores), and 1 thread = many. */
static void test_incremental_and_threads(void) {
  size_t rows = 96, cols = 300, n = rows * cols;
  float *w = malloc(n * sizeof *w);
  double *xsq = malloc(cols * sizeof *xsq);
  gen(w, xsq, rows, cols, 1); /* many ties: the hard case for determinism */
  uint64_t *a = ap_bitmap_alloc(n), *b = ap_bitmap_alloc(n), *c = ap_bitmap_alloc(n);
  CHECK(ap_mask_rows(w, xsq, rows, cols, 0.3, a, NULL) == 0);
  CHECK(ap_mask_rows(w, xsq, rows, cols, 0.55, a, NULL) == 0);
  CHECK(ap_mask_rows(w, xsq, rows, cols, 0.55, b, NULL) == 0);
  CHECK(masks_equal(a, b, n));
  int threads = omp_get_max_threads();
  omp_set_num_threads(1);
  CHECK(ap_mask_rows(w, xsq, rows, cols, 0.55, c, NULL) == 0);
  omp_set_num_threads(threads > 1 ? threads : 3);
  CHECK(masks_equal(b, c, n));
  /* same for the layer scope and N:M */
  memset(a, 0, ap_bitmap_bytes(n));
  memset(b, 0, ap_bitmap_bytes(n));
  CHECK(ap_mask_layer(w, NULL, rows, cols, 0.4, a, NULL) == 0);
  omp_set_num_threads(1);
  CHECK(ap_mask_layer(w, NULL, rows, cols, 0.4, b, NULL) == 0);
  omp_set_num_threads(threads);
  CHECK(masks_equal(a, b, n));
  free(w);
  free(xsq);
  free(a);
  free(b);
  free(c);
}

static void test_layer_vs_reference(void) {
  const size_t shapes[][2] = {{1, 1}, {7, 9}, {64, 64}, {100, 172}, {300, 1000}};
  int bad = 0, runs = 0;
  for (size_t si = 0; si < sizeof shapes / sizeof *shapes; si++) {
    size_t rows = shapes[si][0], cols = shapes[si][1], n = rows * cols;
    float *w = malloc(n * sizeof *w);
    double *xsq = malloc(cols * sizeof *xsq);
    for (int ties = 0; ties < 2; ties++) {
      for (int mag = 0; mag < 2; mag++) {
        for (int pre = 0; pre < 2; pre++) {
          double target = pre ? 0.6 : 0.5 * unif() + 0.1;
          gen(w, xsq, rows, cols, ties);
          uint64_t *m = ap_bitmap_alloc(n), *ref = ap_bitmap_alloc(n), *orig = ap_bitmap_alloc(n);
          if (pre) random_mask(m, n, 0.2);
          memcpy(ref, m, ap_bitmap_bytes(n));
          memcpy(orig, m, ap_bitmap_bytes(n));
          const double *xs = mag ? xsq : NULL;
          int rc = ap_mask_layer(w, xs, rows, cols, target, m, NULL);
          ref_group(w, xs, cols, 0, n, ap_mask_count_target(n, target), ref);
          runs++;
          if (rc || !masks_equal(m, ref, n) || !ap_bitmap_is_superset(m, orig, n)) bad++;
          free(m);
          free(ref);
          free(orig);
        }
      }
    }
    free(w);
    free(xsq);
  }
  CHECKF(bad == 0, "%d of %d layer-scope runs differ", bad, runs);
}

static void test_nm(void) {
  const unsigned nm[][2] = {{2, 4}, {4, 8}, {1, 4}, {3, 4}, {5, 8}, {0, 4}, {4, 4}, {16, 32}};
  const size_t shapes[][2] = {{5, 8}, {31, 64}, {20, 172}, {7, 100}, {3, 6}};
  int bad_ref = 0, bad_valid = 0, bad_grow = 0, runs = 0;
  for (size_t si = 0; si < sizeof shapes / sizeof *shapes; si++) {
    size_t rows = shapes[si][0], cols = shapes[si][1], n = rows * cols;
    float *w = malloc(n * sizeof *w);
    double *xsq = malloc(cols * sizeof *xsq);
    for (size_t ni = 0; ni < sizeof nm / sizeof *nm; ni++) {
      unsigned N = nm[ni][0], M = nm[ni][1];
      for (int variant = 0; variant < 4; variant++) {
        gen(w, xsq, rows, cols, variant & 1);
        uint64_t *m = ap_bitmap_alloc(n), *ref = ap_bitmap_alloc(n), *orig = ap_bitmap_alloc(n);
        if (variant & 2) random_mask(m, n, 0.25);
        memcpy(ref, m, ap_bitmap_bytes(n));
        memcpy(orig, m, ap_bitmap_bytes(n));
        ap_mask_report rep;
        int rc = ap_mask_nm(w, variant == 3 ? NULL : xsq, rows, cols, N, M, m, &rep);
        size_t over_ref = 0;
        for (size_t r = 0; r < rows; r++)
          for (size_t c0 = 0; c0 < cols; c0 += M) {
            size_t t = cols - c0 < M ? cols - c0 : M, target = N < t ? N : t;
            size_t have = ap_bitmap_count_range(orig, r * cols + c0, r * cols + c0 + t);
            over_ref += have > target;
            ref_group(w, variant == 3 ? NULL : xsq, cols, r * cols + c0, t, target, ref);
          }
        size_t shrt = 1, over = 0;
        runs++;
        if (rc || !masks_equal(m, ref, n)) bad_ref++;
        if (ap_mask_check_nm(m, rows, cols, N, M, &shrt, &over) || shrt != 0 || over != over_ref ||
            rep.units_over != over_ref)
          bad_valid++;
        if (!ap_bitmap_is_superset(m, orig, n)) bad_grow++;
        free(m);
        free(ref);
        free(orig);
      }
    }
    free(w);
    free(xsq);
  }
  CHECKF(bad_ref == 0, "%d of %d N:M runs differ from the reference", bad_ref, runs);
  CHECK_EQ_INT(bad_valid, 0);
  CHECK_EQ_INT(bad_grow, 0);
  /* the checker does flag an invalid pattern */
  uint64_t *m = ap_bitmap_alloc(8);
  size_t shrt = 0;
  ap_bitmap_set(m, 0);
  ap_bitmap_set(m, 1);
  ap_bitmap_set(m, 4);
  CHECK(ap_mask_check_nm(m, 1, 8, 2, 4, &shrt, NULL) == 0);
  CHECK_EQ_INT(shrt, 1);
  free(m);
}

static void test_exact_sparsity(void) {
  size_t rows = 64, cols = 4096, n = rows * cols;
  float *w = malloc(n * sizeof *w);
  double *xsq = malloc(cols * sizeof *xsq);
  gen(w, xsq, rows, cols, 0);
  uint64_t *m = ap_bitmap_alloc(n);
  ap_mask_report rep;
  CHECK(ap_mask_rows(w, xsq, rows, cols, 0.5, m, &rep) == 0);
  CHECK_EQ_INT(rep.pruned_after, n / 2);
  CHECK(ap_mask_rows(w, xsq, rows, cols, 0.3, m, &rep) == 0); /* lower target: nothing changes */
  CHECK_EQ_INT(rep.pruned_after, n / 2);
  CHECK_EQ_INT(rep.units_over, rows);
  CHECK(ap_mask_nm(w, xsq, rows, cols, 4, 8, m, &rep) == 0);
  CHECK(rep.pruned_after >= rep.pruned_before && rep.pruned_after <= rep.pruned_before + n / 8);
  size_t shrt = 1;
  CHECK(ap_mask_check_nm(m, rows, cols, 4, 8, &shrt, NULL) == 0 && shrt == 0);
  CHECK(ap_mask_count_target(10, 0.25) == 3); /* 2.5 rounds half up */
  CHECK(ap_mask_count_target(4096, 0.7) == 2867);
  CHECK(ap_mask_count_target(10, 0.3) == 3);
  free(w);
  free(xsq);
  free(m);
}

static void test_errors(void) {
  float w[8] = {1, 2, 3, 4, 5, 6, 7, 8};
  double xsq[4] = {1, 1, 1, 1};
  uint64_t m[1] = {0};
  CHECK_EQ_INT(ap_mask_rows(w, xsq, 2, 4, 1.5, m, NULL), AP_PRUNE_EINVAL);
  CHECK_EQ_INT(ap_mask_rows(w, xsq, 2, 4, NAN, m, NULL), AP_PRUNE_EINVAL);
  CHECK_EQ_INT(ap_mask_rows(NULL, xsq, 2, 4, 0.5, m, NULL), AP_PRUNE_EINVAL);
  CHECK_EQ_INT(ap_mask_rows(w, xsq, 0, 4, 0.5, m, NULL), AP_PRUNE_EINVAL);
  CHECK_EQ_INT(ap_mask_nm(w, xsq, 2, 4, 5, 4, m, NULL), AP_PRUNE_EINVAL);
  CHECK_EQ_INT(ap_mask_nm(w, xsq, 2, 4, 2, 0, m, NULL), AP_PRUNE_EINVAL);
  CHECK_EQ_INT(ap_mask_nm(w, xsq, 2, 4, 2, 65, m, NULL), AP_PRUNE_EINVAL);
  CHECK_EQ_INT(ap_mask_wanda(w, NULL, 2, 4, 0.5, m, NULL), AP_PRUNE_EINVAL);
  xsq[2] = -1;
  CHECK_EQ_INT(ap_mask_rows(w, xsq, 2, 4, 0.5, m, NULL), AP_PRUNE_ENAN);
  CHECK_EQ_INT(ap_mask_layer(w, xsq, 2, 4, 0.5, m, NULL), AP_PRUNE_ENAN);
  xsq[2] = NAN;
  CHECK_EQ_INT(ap_mask_nm(w, xsq, 2, 4, 2, 4, m, NULL), AP_PRUNE_ENAN);
  xsq[2] = 1;
  w[5] = NAN;
  CHECK_EQ_INT(ap_mask_rows(w, xsq, 2, 4, 0.5, m, NULL), AP_PRUNE_ENAN);
  CHECK_EQ_INT(ap_mask_nm(w, xsq, 2, 4, 2, 4, m, NULL), AP_PRUNE_ENAN);
  m[0] = 0;
  CHECK_EQ_INT(ap_mask_layer(w, NULL, 2, 4, 0.5, m, NULL), AP_PRUNE_ENAN);
  CHECK(m[0] == 0); /* layer scope selects before it writes */
  /* an infinite weight in a dead channel scores inf * 0, the default NaN
   * (sign bit set): an error like any NaN, and no out-of-range key */
  float wi[8] = {1, 2, INFINITY, 4, 5, 6, -INFINITY, 8};
  double xz[4] = {1, 1, 0, 1};
  m[0] = 0;
  CHECK_EQ_INT(ap_mask_rows(wi, xz, 2, 4, 0.5, m, NULL), AP_PRUNE_ENAN);
  CHECK(m[0] == 0);
  CHECK_EQ_INT(ap_mask_nm(wi, xz, 2, 4, 2, 4, m, NULL), AP_PRUNE_ENAN);
  m[0] = 0;
  CHECK_EQ_INT(ap_mask_layer(wi, xz, 2, 4, 0.5, m, NULL), AP_PRUNE_ENAN);
  CHECK(m[0] == 0);
}

int main(void) {
  test_rows_vs_reference();
  test_incremental_and_threads();
  test_layer_vs_reference();
  test_nm();
  test_exact_sparsity();
  test_errors();
  TEST_DONE();
}
