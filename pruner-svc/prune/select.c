/* select.c - introselect and sample-bracketed selection (see select.h). */
#include "select.h"

#include <math.h>
#include <stdlib.h>

#include "prune_error.h"

/* Below this size the sampling bookkeeping costs more than a plain select. */
#define SELECT_SMALL 512
#define INSERTION_MAX 16

static void insertion_sort(uint32_t *a, size_t n) {
  for (size_t i = 1; i < n; i++) {
    uint32_t v = a[i];
    size_t j = i;
    for (; j > 0 && a[j - 1] > v; j--) a[j] = a[j - 1];
    a[j] = v;
  }
}

static uint32_t median3(uint32_t a, uint32_t b, uint32_t c) {
  if (a > b) { uint32_t t = a; a = b; b = t; }
  if (b > c) b = c;
  return a > b ? a : b;
}

/*
 * Median of the medians of groups of 5: a pivot guaranteed to have at least
 * ~30% of the elements on each side, which keeps the fallback linear.
 * Reorders a (the group medians end up at the front).
 */
static uint32_t median_of_medians(uint32_t *a, size_t n) {
  size_t groups = 0;
  for (size_t i = 0; i < n; i += 5, groups++) {
    size_t len = n - i < 5 ? n - i : 5;
    insertion_sort(a + i, len);
    uint32_t t = a[groups];
    a[groups] = a[i + len / 2];
    a[i + len / 2] = t;
  }
  return ap_select_u32_inplace(a, groups, groups / 2);
}

uint32_t ap_select_u32_inplace(uint32_t *a, size_t n, size_t k) {
  size_t lo = 0, hi = n;
  int budget = 4;
  for (size_t m = n; m > 1; m >>= 1) budget += 2;
  while (hi - lo > INSERTION_MAX) {
    uint32_t pivot = budget-- > 0 ? median3(a[lo], a[lo + (hi - lo) / 2], a[hi - 1])
                                  : median_of_medians(a + lo, hi - lo);
    /* Dutch-flag partition: [lo,lt) < pivot, [lt,gt) == pivot, [gt,hi) > pivot */
    size_t lt = lo, i = lo, gt = hi;
    while (i < gt) {
      uint32_t v = a[i];
      if (v < pivot) {
        a[i++] = a[lt];
        a[lt++] = v;
      } else if (v > pivot) {
        a[i] = a[--gt];
        a[gt] = v;
      } else {
        i++;
      }
    }
    if (k < lt) hi = lt;
    else if (k >= gt) lo = gt;
    else return pivot;
  }
  insertion_sort(a + lo, hi - lo);
  return a[k];
}

static void count_less_equal(const uint32_t *keys, size_t n, uint32_t t, size_t *n_less, size_t *n_equal) {
  size_t lt = 0, eq = 0;
  for (size_t i = 0; i < n; i++) {
    lt += keys[i] < t;
    eq += keys[i] == t;
  }
  if (n_less) *n_less = lt;
  if (n_equal) *n_equal = eq;
}

static uint32_t select_copy(const uint32_t *keys, size_t n, size_t k, uint32_t *scratch, size_t *n_less,
                            size_t *n_equal) {
  memcpy(scratch, keys, n * sizeof *keys);
  uint32_t t = ap_select_u32_inplace(scratch, n, k);
  count_less_equal(keys, n, t, n_less, n_equal);
  return t;
}

uint32_t ap_select_u32(const uint32_t *keys, size_t n, size_t k, uint32_t *scratch, size_t *n_less,
                       size_t *n_equal) {
  if (n <= SELECT_SMALL) return select_copy(keys, n, k, scratch, n_less, n_equal);

  /* A fixed-seed sample keeps results and timings reproducible; the answer is
   * exact whatever the sample. Sample size ~ 4*sqrt(n) balances sampling cost
   * against the width of the bracket. */
  size_t s = (size_t)(4.0 * sqrt((double)n));
  if (s < 128) s = 128;
  if (s > 2048) s = 2048;
  uint64_t x = 0x9E3779B97F4A7C15ull ^ n;
  for (size_t i = 0; i < s; i++) {
    x = x * 6364136223846793005ull + 1442695040888963407ull;
    scratch[i] = keys[(size_t)(((x >> 32) * (uint64_t)n) >> 32)];
  }
  double p = ((double)k + 0.5) / (double)n;
  double r = p * (double)s;
  double d = 2.5 * sqrt((double)s * p * (1.0 - p)) + 3.0;
  double lo_r = floor(r - d), hi_r = ceil(r + d);
  uint32_t lo = 0, hi = UINT32_MAX;
  if (lo_r > 0) lo = ap_select_u32_inplace(scratch, s, (size_t)lo_r);
  if (hi_r < (double)(s - 1)) hi = ap_select_u32_inplace(scratch, s, (size_t)hi_r);

  /* Branch-free bracket pass: the copy is unconditional, the cursor moves
   * only for keys inside [lo, hi]. */
  size_t below = 0, c = 0;
  for (size_t i = 0; i < n; i++) {
    uint32_t v = keys[i];
    below += v < lo;
    scratch[c] = v;
    c += (v >= lo) & (v <= hi);
  }
  if (k < below || k >= below + c) return select_copy(keys, n, k, scratch, n_less, n_equal);

  uint32_t t = ap_select_u32_inplace(scratch, c, k - below);
  /* every key equal to t lies inside the bracket, so counting there suffices */
  size_t lt, eq;
  count_less_equal(scratch, c, t, &lt, &eq);
  if (n_less) *n_less = below + lt;
  if (n_equal) *n_equal = eq;
  return t;
}

/* Copies a into keys; returns AP_PRUNE_ENAN when a holds a NaN. */
static int float_keys(const float *a, size_t n, uint32_t *keys) {
  int nan = 0;
  for (size_t i = 0; i < n; i++) {
    nan |= a[i] != a[i];
    keys[i] = ap_f32_key(a[i]);
  }
  return nan ? AP_PRUNE_ENAN : AP_PRUNE_OK;
}

int ap_select_f32(const float *a, size_t n, size_t k, float *out) {
  if (!a || !out || n == 0 || k >= n) return AP_PRUNE_EINVAL;
  uint32_t *buf = malloc(2 * n * sizeof *buf);
  if (!buf) return AP_PRUNE_ENOMEM;
  int rc = float_keys(a, n, buf);
  if (rc == AP_PRUNE_OK) *out = ap_key_f32(ap_select_u32(buf, n, k, buf + n, NULL, NULL));
  free(buf);
  return rc;
}

void ap_percentile_index(size_t n, double p, size_t *lo, size_t *hi, double *g) {
  double h = (double)(n - 1) * (p / 100.0);
  double fl = floor(h);
  if (fl < 0) fl = 0;
  if (fl > (double)(n - 1)) fl = (double)(n - 1);
  *lo = (size_t)fl;
  *hi = *lo + 1 < n ? *lo + 1 : n - 1;
  *g = h - fl;
  if (*g < 0) *g = 0;
}

double ap_percentile_lerp(double x_lo, double x_hi, double g) {
  double d = x_hi - x_lo;
  /* numpy's form: exact at both ends and monotone in g */
  return g >= 0.5 ? x_hi - d * (1.0 - g) : x_lo + d * g;
}

int ap_percentile_f32(const float *a, size_t n, double p, double *out) {
  if (!a || !out || n == 0 || !(p >= 0.0 && p <= 100.0)) return AP_PRUNE_EINVAL;
  uint32_t *buf = malloc(2 * n * sizeof *buf);
  if (!buf) return AP_PRUNE_ENOMEM;
  int rc = float_keys(a, n, buf);
  if (rc == AP_PRUNE_OK) {
    size_t lo, hi, lt, eq;
    double g;
    ap_percentile_index(n, p, &lo, &hi, &g);
    uint32_t k_lo = ap_select_u32(buf, n, lo, buf + n, &lt, &eq);
    uint32_t k_hi = k_lo;
    /* the next order statistic is the same key unless lo was its last copy */
    if (hi != lo && lt + eq <= hi) k_hi = ap_select_u32(buf, n, hi, buf + n, NULL, NULL);
    *out = ap_percentile_lerp((double)ap_key_f32(k_lo), (double)ap_key_f32(k_hi), g);
  }
  free(buf);
  return rc;
}
