/*
 * plan.h - per-layer target sparsities for the non-agent baselines.
 *
 * Masks only grow, so a layer already pruned beyond the baseline's ratio
 * keeps its current sparsity: every target is max(ratio, rho).
 *
 *   uniform (wanda, magnitude): ratio = the global target for every layer.
 *     With `compensate`, the common ratio t is instead lowered so that the
 *     parameter-weighted global sparsity sum(params*max(t, rho))/sum(params)
 *     equals the target when some layers are already above it (bisection on
 *     t, 1e-12). Without it, or when no layer is above the target, t = target.
 *   OWL: ratio = the sparsity of the layer's block (owl.h).
 *
 * Thread safety: reentrant. The caller owns every array.
 */
#ifndef AP_PLAN_H
#define AP_PLAN_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
  size_t params; /* rows*cols */
  double rho;    /* current sparsity in [0,1] */
  size_t block;  /* decoder block index (OWL) */
} ap_plan_layer;

/*
 * targets[i] for n layers; *global (may be NULL) = the resulting
 * parameter-weighted sparsity. Errors: AP_PRUNE_EINVAL (NULL, n 0, a target
 * or rho outside [0,1], all params 0).
 */
int ap_plan_uniform(const ap_plan_layer *layers, size_t n, double target, int compensate, double *targets,
                    double *global);

/*
 * targets[i] = max(block_sparsity[layers[i].block], rho_i). Errors:
 * AP_PRUNE_EINVAL (NULL, n 0, a block index >= nblocks, a value outside [0,1]).
 */
int ap_plan_owl(const ap_plan_layer *layers, size_t n, const double *block_sparsity, size_t nblocks,
                double *targets, double *global);

#ifdef __cplusplus
}
#endif
#endif
