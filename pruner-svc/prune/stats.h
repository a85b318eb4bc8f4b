/*
 * stats.h - per-layer profile statistics (DESIGN.md section 1, step 3) and
 * the OWL outlier fraction.
 *
 * Definitions:
 *   s   = ap_stats_score_percentile(layer, 10): the 10th percentile
 *         (numpy 'linear' definition, select.h) of the Wanda scores
 *         |W_ij|*||X_j|| (score.h) over the layer's SURVIVING weights,
 *         with ||X_j|| = sqrt(xsq[j]) as given (so s scales with it).
 *   g   = ap_stats_grad_mean(): mean over surviving weights of
 *         grad_sum[i] / grad_div, where grad_sum accumulates |dL_i/dW| over
 *         M calibration windows and grad_div = M (1 if already divided).
 *   z   = ap_stats_zscores(): (x - mean) / (std + eps) with the population
 *         std (divide by n), eps = AP_STATS_Z_EPS = 1e-8 by default.
 *   rho = pruned / params of the layer.
 *   global sparsity = sum of pruned / sum of params over the given layers
 *         (weighted by parameter count).
 * A layer with no surviving weight has s = g = 0.
 *
 * Thread safety: reentrant; the per-layer passes use OpenMP internally.
 */
#ifndef AP_STATS_H
#define AP_STATS_H

#include <stddef.h>
#include <stdint.h>

#include "mask.h"
#include "score.h"

#ifdef __cplusplus
extern "C" {
#endif

#define AP_STATS_Z_EPS 1e-8

typedef struct {
  size_t params; /* rows*cols */
  size_t pruned; /* set bits of the mask */
  double rho;    /* pruned / params */
  double s;      /* p10 of surviving Wanda scores */
  double g;      /* mean surviving gradient importance; 0 when no gradient was given */
} ap_layer_stats;

/*
 * *out = percentile p (0..100) of the scores of the surviving weights of
 * layer l (xsq NULL: magnitudes). Linear time, no full buffer of scores:
 * with AVX2 one pass over the weights (the sampled bracket of
 * ap_mask_layer, both neighbours of the percentile from it), else a
 * layer-wide radix select (three passes per order statistic). Errors:
 * AP_PRUNE_EINVAL (NULL, zero size, p outside [0,100]), AP_PRUNE_ENAN (NaN
 * score or negative xsq), AP_PRUNE_ENOMEM.
 */
int ap_stats_score_percentile(const ap_layer_ref *l, double p, double *out);

/*
 * ap_stats_score_percentile with an explicit implementation (mask.h's
 * ap_mask_impl; tests and benchmarks). Both give the same value bit for bit.
 * Errors: those above, and AP_PRUNE_EINVAL for AP_MASK_IMPL_SIMD on a
 * machine without it.
 */
int ap_stats_score_percentile_impl(const ap_layer_ref *l, double p, double *out, ap_mask_impl impl);

/*
 * *out = mean over the n weights not pruned by mask (NULL: all) of
 * grad_sum[i] / grad_div, accumulated in double. Errors: AP_PRUNE_EINVAL
 * (NULL, n 0, grad_div <= 0), AP_PRUNE_ENAN (a NaN among the survivors).
 */
int ap_stats_grad_mean(const float *grad_sum, const uint64_t *mask, size_t n, double grad_div, double *out);

/*
 * Fills *out for layer l: params, pruned, rho, s (p10) and g (when grad_sum
 * is not NULL; else g = 0). Errors as above.
 */
int ap_stats_layer(const ap_layer_ref *l, const float *grad_sum, double grad_div, ap_layer_stats *out);

/*
 * z[i] = (x[i] - mean) / (std + eps), population std over n values.
 * Errors: AP_PRUNE_EINVAL (NULL, n 0, eps < 0), AP_PRUNE_ENAN (a NaN in x).
 */
int ap_stats_zscores(const double *x, size_t n, double eps, double *z);

/* Sum of pruned / sum of params over n layers; 0 when the params sum to 0. */
double ap_stats_global_sparsity(const size_t *pruned, const size_t *params, size_t n);

/*
 * OWL's outlier fraction of one block (owl.h step 1): the share of the Wanda
 * scores of all n layers of the block, pooled, that exceed m times their
 * pooled mean. Pruned weights enter as score 0 (they are zeros in the model
 * OWL measures). Two parallel passes per layer.
 * Errors: AP_PRUNE_EINVAL (NULL, n 0, a layer without xsq, m negative),
 * AP_PRUNE_ENAN.
 */
int ap_stats_outlier_fraction(const ap_layer_ref *layers, size_t n, double m, double *frac);

#ifdef __cplusplus
}
#endif
#endif
