/*
 * test_select.c - selection and percentiles against a full-sort reference on
 * many random sizes, with heavy duplicates, negative values and adversarial
 * orders (sorted, reversed, organ-pipe) that break naive quickselect.
 */
#include <stdint.h>
#include <stdlib.h>

#include "../test.h"
#include "prune_error.h"
#include "select.h"

#define TEST_RNG_SEED 12345
#include "test_rng.h"

static int cmp_f(const void *a, const void *b) {
  float x = *(const float *)a, y = *(const float *)b;
  return (x > y) - (x < y);
}
static int cmp_u(const void *a, const void *b) {
  uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
  return (x > y) - (x < y);
}

/* numpy 'linear' on a sorted float64 copy, written independently of select.c */
static double ref_percentile(const float *sorted, size_t n, double p) {
  double h = (double)(n - 1) * (p / 100.0);
  size_t i = (size_t)h;
  double g = h - (double)i;
  double a = sorted[i], b = sorted[i + 1 < n ? i + 1 : n - 1];
  return g >= 0.5 ? b - (b - a) * (1 - g) : a + (b - a) * g;
}

static void fill(float *a, size_t n, int kind) {
  for (size_t i = 0; i < n; i++) {
    switch (kind) {
    case 0: a[i] = (float)(unif() * 2 - 1); break;                       /* distinct-ish */
    case 1: a[i] = (float)(rnd() % 7) - 3.0f; break;                      /* heavy duplicates */
    case 2: a[i] = (float)i; break;                                       /* sorted */
    case 3: a[i] = (float)(n - i); break;                                 /* reversed */
    case 4: a[i] = (float)(i < n / 2 ? i : n - i); break;                 /* organ pipe */
    case 5: a[i] = 1.0f; break;                                           /* all equal */
    default: a[i] = (float)(unif() < 0.5 ? 0.0 : unif() * 1e-3); break;   /* half zeros */
    }
  }
}

static void test_random_sizes(void) {
  const size_t sizes[] = {1, 2, 3, 5, 16, 17, 100, 511, 512, 513, 1000, 4096, 4097, 11008, 50000};
  const double ps[] = {0, 10, 25, 33.3, 50, 90, 99.9, 100};
  int bad_sel = 0, bad_pct = 0, checks = 0;
  for (size_t si = 0; si < sizeof sizes / sizeof *sizes; si++) {
    size_t n = sizes[si];
    float *a = malloc(n * sizeof *a), *s = malloc(n * sizeof *s);
    for (int kind = 0; kind < 7; kind++) {
      fill(a, n, kind);
      memcpy(s, a, n * sizeof *a);
      qsort(s, n, sizeof *s, cmp_f);
      size_t ks[] = {0, n / 10, n / 2, n - 1, rnd() % n};
      for (int ki = 0; ki < 5; ki++) {
        float got;
        int rc = ap_select_f32(a, n, ks[ki], &got);
        checks++;
        if (rc || got != s[ks[ki]]) {
          bad_sel++;
          fprintf(stderr, "select n=%zu kind=%d k=%zu: %g vs %g\n", n, kind, ks[ki], got, s[ks[ki]]);
        }
      }
      for (size_t pi = 0; pi < sizeof ps / sizeof *ps; pi++) {
        double got, want = ref_percentile(s, n, ps[pi]);
        int rc = ap_percentile_f32(a, n, ps[pi], &got);
        if (rc || got != want) {
          bad_pct++;
          fprintf(stderr, "pct n=%zu kind=%d p=%g: %.17g vs %.17g\n", n, kind, ps[pi], got, want);
        }
      }
    }
    free(a);
    free(s);
  }
  CHECK_EQ_INT(bad_sel, 0);
  CHECK_EQ_INT(bad_pct, 0);
  CHECK(checks > 400);
}

/* The sampled selector must report exact less/equal counts, also with duplicates. */
static void test_u32_counts(void) {
  int bad = 0;
  for (int iter = 0; iter < 300; iter++) {
    size_t n = 1 + rnd() % 20000;
    uint32_t mod = iter % 3 == 0 ? 5 : (iter % 3 == 1 ? 1000 : UINT32_MAX);
    uint32_t *k = malloc(n * 4), *s = malloc(n * 4), *scratch = malloc(n * 4);
    for (size_t i = 0; i < n; i++) k[i] = mod == UINT32_MAX ? rnd() * 2u + (rnd() & 1) : rnd() % mod;
    memcpy(s, k, n * 4);
    qsort(s, n, 4, cmp_u);
    size_t kk = rnd() % n, less, eq;
    uint32_t t = ap_select_u32(k, n, kk, scratch, &less, &eq);
    size_t rl = 0, re = 0;
    for (size_t i = 0; i < n; i++) {
      rl += s[i] < t;
      re += s[i] == t;
    }
    if (t != s[kk] || less != rl || eq != re) bad++;
    free(k);
    free(s);
    free(scratch);
  }
  CHECK_EQ_INT(bad, 0);
}

/* Median-of-medians fallback path: the in-place select on adversarial input stays exact. */
static void test_inplace_adversarial(void) {
  size_t n = 1 << 16;
  uint32_t *a = malloc(n * 4), *s = malloc(n * 4);
  int bad = 0;
  for (int kind = 0; kind < 3; kind++) {
    for (size_t i = 0; i < n; i++)
      a[i] = kind == 0 ? (uint32_t)i : kind == 1 ? (uint32_t)(n - i) : (uint32_t)((i * 2654435761u) % 97);
    memcpy(s, a, n * 4);
    qsort(s, n, 4, cmp_u);
    for (size_t k = 0; k < n; k += n / 7) {
      memcpy(a, s, n * 4); /* sorted input: median-of-3 best case; reversed below */
      if (kind == 1)
        for (size_t i = 0; i < n / 2; i++) { uint32_t t = a[i]; a[i] = a[n - 1 - i]; a[n - 1 - i] = t; }
      if (ap_select_u32_inplace(a, n, k) != s[k]) bad++;
      /* partition property */
      for (size_t i = 0; i < n; i += 97) if ((i < k && a[i] > s[k]) || (i > k && a[i] < s[k])) { bad++; break; }
    }
  }
  CHECK_EQ_INT(bad, 0);
  free(a);
  free(s);
}

static void test_errors(void) {
  float a[3] = {1, NAN, 2}, out;
  double d;
  CHECK_EQ_INT(ap_select_f32(a, 3, 0, &out), AP_PRUNE_ENAN);
  CHECK_EQ_INT(ap_percentile_f32(a, 3, 10, &d), AP_PRUNE_ENAN);
  CHECK_EQ_INT(ap_select_f32(a, 3, 3, &out), AP_PRUNE_EINVAL);
  CHECK_EQ_INT(ap_select_f32(NULL, 3, 0, &out), AP_PRUNE_EINVAL);
  CHECK_EQ_INT(ap_percentile_f32(a, 0, 10, &d), AP_PRUNE_EINVAL);
  CHECK_EQ_INT(ap_percentile_f32(a, 3, 100.5, &d), AP_PRUNE_EINVAL);
  CHECK_EQ_INT(ap_percentile_f32(a, 3, NAN, &d), AP_PRUNE_EINVAL);
  CHECK(strlen(ap_prune_strerror(AP_PRUNE_ENAN)) > 10);
  /* numpy.percentile([1,2,3,4], 10) = 1.3 and ([0,10], 25) = 2.5, computed by numpy */
  float b[4] = {4, 2, 1, 3}, c[2] = {10, 0};
  CHECK(ap_percentile_f32(b, 4, 10, &d) == 0);
  CHECK_NEAR(d, 1.3, 1e-15);
  CHECK(ap_percentile_f32(c, 2, 25, &d) == 0);
  CHECK_NEAR(d, 2.5, 1e-15);
  /* key map preserves order across signs and zeros */
  CHECK(ap_f32_key(-1.0f) < ap_f32_key(-0.0f));
  CHECK(ap_f32_key(-0.0f) < ap_f32_key(0.0f));
  CHECK(ap_f32_key(0.0f) < ap_f32_key(1e-30f));
  CHECK(ap_key_f32(ap_f32_key(-3.5f)) == -3.5f);
}

int main(void) {
  test_random_sizes();
  test_u32_counts();
  test_inplace_adversarial();
  test_errors();
  TEST_DONE();
}
