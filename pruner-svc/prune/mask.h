/*
 * mask.h - growing a layer's pruning mask: Wanda (per output row),
 * magnitude (whole layer, as locuslab/wanda's baseline) and N:M.
 *
 * Inputs are those of score.h: original F32 weights w (rows x cols,
 * row-major, read-only), xsq (per input column FP64 sum of squares of the
 * activations; NULL selects the magnitude score |w|), and the mask
 * (bitmap.h layout, 1 = pruned), updated in place. Masks only grow: no
 * function here ever clears a bit; weights already pruned count toward the
 * target and are never candidates again.
 *
 * Targets: a row of `cols` weights at sparsity t has exactly
 * ap_mask_count_target(cols, t) = floor(t*cols + 0.5) pruned weights (round
 * half up), so the achieved sparsity equals the target to within half a
 * weight per row. (locuslab/wanda truncates: int(cols*t); the two agree
 * whenever t*cols is an integer or has a fraction below .5, e.g. 50% of an
 * even width.) When a row already has more pruned weights than the target it
 * is left as it is and counted in the report.
 *
 * Order and ties: weights are pruned in increasing (score, column index)
 * order, i.e. among equal scores the lower column index goes first, which is
 * what locuslab/wanda's torch.sort(W_metric, dim=-1, stable=True) does. The
 * layer scope uses (score, flat row-major index). N:M groups use the same
 * rule (torch.topk, used there by locuslab/wanda, leaves ties unspecified).
 *
 * N:M convention (locuslab/wanda main.py "2:4" -> prune_n=2, prune_m=4, and
 * its note "pruning n out of m"): `n` is the number PRUNED in every group of
 * `m` consecutive input weights of a row; 2:4 and 4:8 leave half the group.
 * (NVIDIA's "2:4" counts the kept weights; the two agree when n = m/2.)
 * Groups start at column 0 of every row. When cols is not a multiple of m,
 * the last group of a row has t < m weights and prunes min(n, t) of them, as
 * locuslab/wanda's loop over column slices does.
 *
 * Parallelism: OpenMP over blocks of rows whose first bit starts a mask word
 * (64/gcd(cols,64) rows), so no two threads write one word. Results do not
 * depend on the thread count.
 *
 * Errors (all functions): AP_PRUNE_EINVAL for NULL w/mask, zero rows or
 * cols, a target outside [0,1] (or NaN), n > m or m outside [1,64];
 * AP_PRUNE_ENAN for a NaN or negative xsq, or a NaN weight in a row or group
 * that needs pruning; AP_PRUNE_ENOMEM. On error the mask may be partly
 * updated (still a superset of the input; every bit set is a valid pruning
 * decision for its row), so callers that need atomicity work on a copy.
 */
#ifndef AP_MASK_H
#define AP_MASK_H

#include <stddef.h>
#include <stdint.h>

#include "prune_error.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
  size_t pruned_before; /* bits set on entry */
  size_t pruned_after;  /* bits set on return */
  size_t units_over;    /* rows (row scope), 0/1 (layer scope) or groups (N:M) that already had MORE pruned
                           weights than the target; left unchanged. For N:M a non-zero value means the
                           existing mask makes an exact n-of-m pattern impossible in those groups (they
                           still satisfy "at least n pruned", which is what sparse kernels need). */
} ap_mask_report;

/* Number of pruned weights that sparsity t demands of `count` weights: floor(t*count + 0.5). */
size_t ap_mask_count_target(size_t count, double t);

/*
 * Per output row (Wanda's comparison group): prune surviving weights in
 * increasing score order until each row has ap_mask_count_target(cols,
 * target) pruned. xsq != NULL: Wanda score |w|*||X_j||; xsq == NULL:
 * magnitude per row. Linear time per row (sample-bracketed selection, no
 * sort). rep may be NULL.
 */
int ap_mask_rows(const float *w, const double *xsq, size_t rows, size_t cols, double target, uint64_t *mask,
                 ap_mask_report *rep);

/*
 * Which implementation of the per-row, N:M and layer selection runs. Both
 * give bit-identical masks; the choice only changes speed.
 *   AP_MASK_IMPL_AUTO:   AVX2 when the CPU has it (checked at run time),
 *                        unless the environment has APK_CPU_SIMD=0 (the CPU
 *                        kernels' switch), else scalar. What ap_mask_rows uses.
 *   AP_MASK_IMPL_SCALAR: the portable reference.
 *   AP_MASK_IMPL_SIMD:   AVX2; AP_PRUNE_EINVAL where it is not available.
 */
typedef enum { AP_MASK_IMPL_AUTO = 0, AP_MASK_IMPL_SCALAR = 1, AP_MASK_IMPL_SIMD = 2 } ap_mask_impl;

/* 1 when `impl` can run on this machine (AUTO and SCALAR always can), else 0. */
int ap_mask_impl_available(ap_mask_impl impl);

/*
 * ap_mask_rows with an explicit implementation (tests and benchmarks).
 * Errors: those of ap_mask_rows, and AP_PRUNE_EINVAL for AP_MASK_IMPL_SIMD
 * on a machine without it or an unknown impl.
 */
int ap_mask_rows_impl(const float *w, const double *xsq, size_t rows, size_t cols, double target, uint64_t *mask,
                      ap_mask_report *rep, ap_mask_impl impl);

/*
 * ap_mask_layer with an explicit implementation (the SIMD one selects the
 * threshold in one pass over the weights, see mask.c). Errors: those of
 * ap_mask_layer, and AP_PRUNE_EINVAL as for ap_mask_rows_impl.
 */
int ap_mask_layer_impl(const float *w, const double *xsq, size_t rows, size_t cols, double target, uint64_t *mask,
                       ap_mask_report *rep, ap_mask_impl impl);

/*
 * ap_mask_nm with an explicit implementation (the SIMD one covers m = 2, 4
 * and 8; other m run scalar under any impl). Errors: those of ap_mask_nm,
 * and AP_PRUNE_EINVAL as for ap_mask_rows_impl.
 */
int ap_mask_nm_impl(const float *w, const double *xsq, size_t rows, size_t cols, unsigned n, unsigned m,
                    uint64_t *mask, ap_mask_report *rep, ap_mask_impl impl);

/*
 * Whole-matrix comparison group: prune surviving weights in increasing
 * score order until the layer has ap_mask_count_target(rows*cols, target)
 * pruned. With xsq == NULL this is locuslab/wanda's prune_magnitude
 * (unstructured branch), except that it prunes exactly that many weights:
 * the original keeps W_metric <= sort(W_metric)[int(numel*t)], i.e. one
 * weight more plus every weight tied with the threshold. One parallel
 * pass over w with AVX2 (a sampled bracket around the threshold; the
 * marking works from what the pass recorded; see mask.c), else a radix
 * selection in three passes and the marking.
 */
int ap_mask_layer(const float *w, const double *xsq, size_t rows, size_t cols, double target, uint64_t *mask,
                  ap_mask_report *rep);

/*
 * N:M: in every group of m consecutive input weights of each row, prune the
 * lowest-score surviving weights until the group has n pruned (fewer for a
 * short tail group, see above). Existing pruned weights in a group count
 * toward its n. n == 0 leaves the mask unchanged.
 */
int ap_mask_nm(const float *w, const double *xsq, size_t rows, size_t cols, unsigned n, unsigned m,
               uint64_t *mask, ap_mask_report *rep);

/*
 * Verifies an N:M mask: *short_groups = groups with fewer than their n
 * pruned weights (an invalid pattern), *over_groups = groups with more.
 * Either pointer may be NULL. Errors: AP_PRUNE_EINVAL as above.
 */
int ap_mask_check_nm(const uint64_t *mask, size_t rows, size_t cols, unsigned n, unsigned m,
                     size_t *short_groups, size_t *over_groups);

/* The baselines under their own names (ap_mask_wanda requires xsq). */
static inline int ap_mask_wanda(const float *w, const double *xsq, size_t rows, size_t cols, double target,
                                uint64_t *mask, ap_mask_report *rep) {
  return xsq ? ap_mask_rows(w, xsq, rows, cols, target, mask, rep) : AP_PRUNE_EINVAL;
}
static inline int ap_mask_magnitude(const float *w, size_t rows, size_t cols, double target, uint64_t *mask,
                                    ap_mask_report *rep) {
  return ap_mask_layer(w, NULL, rows, cols, target, mask, rep);
}

#ifdef __cplusplus
}
#endif
#endif
