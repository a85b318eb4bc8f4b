/* stats.c - profile statistics (definitions in stats.h). */
#include "stats.h"

#include <math.h>
#include <stdlib.h>

#include "bitmap.h"
#include "mask_simd.h"
#include "prune_error.h"
#include "select.h"

static int check_layer(const ap_layer_ref *l) {
  if (!l || !l->w || l->rows == 0 || l->cols == 0 || l->rows > SIZE_MAX / l->cols) return AP_PRUNE_EINVAL;
  return AP_PRUNE_OK;
}

static int layer_norms(const ap_layer_ref *l, float **norms) {
  *norms = NULL;
  if (!l->xsq) return AP_PRUNE_OK;
  *norms = malloc(l->cols * sizeof **norms);
  if (!*norms) return AP_PRUNE_ENOMEM;
  int rc = ap_score_norms(l->xsq, l->cols, *norms);
  if (rc) {
    free(*norms);
    *norms = NULL;
  }
  return rc;
}

int ap_stats_score_percentile_impl(const ap_layer_ref *l, double p, double *out, ap_mask_impl impl) {
  int rc = check_layer(l);
  if (rc) return rc;
  if (!out || !(p >= 0.0 && p <= 100.0)) return AP_PRUNE_EINVAL;
  int simd = ap_prune_use_simd(impl);
  if (simd < 0) return simd;
  size_t n = l->rows * l->cols;
  size_t survivors = n - (l->mask ? ap_bitmap_count(l->mask, n) : 0);
  if (survivors == 0) {
    *out = 0.0;
    return AP_PRUNE_OK;
  }
  float *norms;
  rc = layer_norms(l, &norms);
  if (rc) return rc;
  size_t lo, hi, less, equal;
  double g;
  uint32_t k_lo, k_hi;
  ap_percentile_index(survivors, p, &lo, &hi, &g);
  rc = simd ? ap_select_layer_avx2(l->w, norms, l->mask, l->rows, l->cols, lo, &k_lo, NULL, NULL,
                                   hi != lo ? &k_hi : NULL)
            : AP_SIMD_DECLINE;
  if (rc == AP_SIMD_DECLINE) {
    rc = ap_score_select_layer(l->w, norms, l->mask, l->rows, l->cols, lo, &k_lo, &less, &equal);
    k_hi = k_lo;
    if (!rc && hi != lo && less + equal <= hi)
      rc = ap_score_select_layer(l->w, norms, l->mask, l->rows, l->cols, hi, &k_hi, NULL, NULL);
  } else if (hi == lo) {
    k_hi = k_lo;
  }
  if (!rc) *out = ap_percentile_lerp((double)ap_score_from_key(k_lo), (double)ap_score_from_key(k_hi), g);
  free(norms);
  return rc;
}

int ap_stats_score_percentile(const ap_layer_ref *l, double p, double *out) {
  return ap_stats_score_percentile_impl(l, p, out, AP_MASK_IMPL_AUTO);
}

int ap_stats_grad_mean(const float *grad_sum, const uint64_t *mask, size_t n, double grad_div, double *out) {
  if (!grad_sum || !out || n == 0 || !(grad_div > 0.0)) return AP_PRUNE_EINVAL;
  size_t nw = ap_bitmap_words(n), count = 0;
  double sum = 0.0;
  int nan = 0;
#pragma omp parallel for schedule(static) reduction(+ : sum, count) reduction(| : nan)
  for (size_t wi = 0; wi < nw; wi++) {
    uint64_t bits = mask ? mask[wi] : 0;
    size_t base = wi * 64, len = n - base < 64 ? n - base : 64;
    for (size_t b = 0; b < len; b++) {
      if ((bits >> b) & 1) continue;
      float v = grad_sum[base + b];
      nan |= v != v;
      sum += v;
      count++;
    }
  }
  if (nan) return AP_PRUNE_ENAN;
  *out = count ? sum / (double)count / grad_div : 0.0;
  return AP_PRUNE_OK;
}

int ap_stats_layer(const ap_layer_ref *l, const float *grad_sum, double grad_div, ap_layer_stats *out) {
  int rc = check_layer(l);
  if (rc) return rc;
  if (!out) return AP_PRUNE_EINVAL;
  size_t n = l->rows * l->cols;
  out->params = n;
  out->pruned = l->mask ? ap_bitmap_count(l->mask, n) : 0;
  out->rho = (double)out->pruned / (double)n;
  out->g = 0.0;
  rc = ap_stats_score_percentile(l, 10.0, &out->s);
  if (!rc && grad_sum) rc = ap_stats_grad_mean(grad_sum, l->mask, n, grad_div, &out->g);
  return rc;
}

int ap_stats_zscores(const double *x, size_t n, double eps, double *z) {
  if (!x || !z || n == 0 || !(eps >= 0.0)) return AP_PRUNE_EINVAL;
  double mean = 0.0;
  for (size_t i = 0; i < n; i++) {
    if (x[i] != x[i]) return AP_PRUNE_ENAN;
    mean += x[i];
  }
  mean /= (double)n;
  double var = 0.0;
  for (size_t i = 0; i < n; i++) var += (x[i] - mean) * (x[i] - mean);
  double sd = sqrt(var / (double)n);
  for (size_t i = 0; i < n; i++) z[i] = (x[i] - mean) / (sd + eps);
  return AP_PRUNE_OK;
}

double ap_stats_global_sparsity(const size_t *pruned, const size_t *params, size_t n) {
  if (!pruned || !params) return 0.0;
  double p = 0.0, t = 0.0;
  for (size_t i = 0; i < n; i++) {
    p += (double)pruned[i];
    t += (double)params[i];
  }
  return t > 0 ? p / t : 0.0;
}

/* Sum of the scores of the surviving weights (pruned ones are zeros). */
static int score_sum(const ap_layer_ref *l, const float *norms, double *sum_out) {
  size_t n = l->rows * l->cols, nw = ap_bitmap_words(n), cols = l->cols;
  double sum = 0.0;
  int nan = 0;
#pragma omp parallel for schedule(static) reduction(+ : sum) reduction(| : nan)
  for (size_t wi = 0; wi < nw; wi++) {
    uint64_t bits = l->mask ? l->mask[wi] : 0;
    size_t base = wi * 64, len = n - base < 64 ? n - base : 64, col = base % cols;
    double part = 0.0;
    for (size_t b = 0; b < len; b++, col = col + 1 == cols ? 0 : col + 1) {
      if ((bits >> b) & 1) continue;
      float s = fabsf(l->w[base + b]) * norms[col];
      nan |= s != s;
      part += s;
    }
    sum += part;
  }
  *sum_out = sum;
  return nan ? AP_PRUNE_ENAN : AP_PRUNE_OK;
}

static size_t count_above(const ap_layer_ref *l, const float *norms, double thr) {
  size_t n = l->rows * l->cols, nw = ap_bitmap_words(n), cols = l->cols, count = 0;
#pragma omp parallel for schedule(static) reduction(+ : count)
  for (size_t wi = 0; wi < nw; wi++) {
    uint64_t bits = l->mask ? l->mask[wi] : 0;
    size_t base = wi * 64, len = n - base < 64 ? n - base : 64, col = base % cols;
    for (size_t b = 0; b < len; b++, col = col + 1 == cols ? 0 : col + 1)
      count += !((bits >> b) & 1) && (double)(fabsf(l->w[base + b]) * norms[col]) > thr;
  }
  return count;
}

int ap_stats_outlier_fraction(const ap_layer_ref *layers, size_t n, double m, double *frac) {
  if (!layers || !frac || n == 0 || !(m >= 0.0)) return AP_PRUNE_EINVAL;
  for (size_t i = 0; i < n; i++) {
    int rc = check_layer(&layers[i]);
    if (rc) return rc;
    if (!layers[i].xsq) return AP_PRUNE_EINVAL;
  }
  float **norms = calloc(n, sizeof *norms);
  if (!norms) return AP_PRUNE_ENOMEM;
  int rc = AP_PRUNE_OK;
  double sum = 0.0, total = 0.0;
  for (size_t i = 0; i < n && !rc; i++) {
    double part = 0.0;
    rc = layer_norms(&layers[i], &norms[i]);
    if (!rc) rc = score_sum(&layers[i], norms[i], &part);
    sum += part;
    total += (double)(layers[i].rows * layers[i].cols);
  }
  if (!rc) {
    double thr = m * (sum / total);
    size_t above = 0;
    for (size_t i = 0; i < n; i++) above += count_above(&layers[i], norms[i], thr);
    *frac = (double)above / total;
  }
  for (size_t i = 0; i < n; i++) free(norms[i]);
  free(norms);
  return rc;
}
