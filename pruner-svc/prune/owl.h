/*
 * owl.h - OWL layerwise sparsity ratios (Outlier Weighed Layerwise sparsity,
 * Yin et al. 2023), as implemented in luuyin/OWL lib/prune_all.py,
 * prune_wanda_outlier():
 *
 *   1. per decoder block i, concatenate the Wanda scores |W|*sqrt(scaler_row)
 *      of ALL the block's linear layers into one vector and take
 *      outlier_i = share of entries > Hyper_m * mean(vector)
 *      (check_outlier_mean; the code reports it in percent, we use the
 *      fraction, which the min-max scaling below makes irrelevant). The
 *      pooling is per block, not an average of per-layer ratios. Computed by
 *      ap_stats_outlier_fraction() in stats.h.
 *   2. r_i = (outlier_i - min) * (1/(max - min) * Lamda * 2)
 *      density_i = r_i - mean(r) + (1 - target)
 *      sparsity_i = 1 - density_i, and 0.01 where that is <= 0
 *      so a block with more outliers keeps more weights, the ratios span
 *      2*Lamda and their mean is the target. Every linear layer of block i
 *      gets sparsity_i (luuyin/OWL issues #9, #12 confirm the per-block use).
 *   Defaults from the OWL README: Hyper_m = 5, Lamda = 0.08.
 *
 * Our additions, where the original would fail or return nonsense:
 *   - all outlier ratios equal (or one block): the original divides 0 by 0
 *     (NaN); we return the target for every block.
 *   - a sparsity above 1 (target + spread > 1) is clamped to 1.
 */
#ifndef AP_OWL_H
#define AP_OWL_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

#define AP_OWL_DEFAULT_M 5.0
#define AP_OWL_DEFAULT_LAMBDA 0.08

/*
 * sparsity[i] for each of nblocks blocks from their outlier fractions (step 2
 * above). Caller owns both arrays. Errors: AP_PRUNE_EINVAL (NULL, nblocks 0,
 * target outside [0,1], lambda negative or NaN), AP_PRUNE_ENAN (a NaN
 * outlier fraction).
 */
int ap_owl_sparsities(const double *outlier, size_t nblocks, double target, double lambda, double *sparsity);

#ifdef __cplusplus
}
#endif
#endif
