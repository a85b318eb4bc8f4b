/*
 * rule_policy.h - the tunable knobs of the built-in `rule` policy. The
 * policy itself is ap_rule_decide in policy.h (which uses the defaults
 * below); ap_rule_decide_with exists for benchmarks and tests that sweep
 * the knobs. The algorithm is described in rule_policy.c and
 * docs/rule-policy.md.
 */
#ifndef AP_RULE_POLICY_H
#define AP_RULE_POLICY_H

#include "policy.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
  double spread;           /* allocation half-width lambda at a 0.70 target (scaled with the target): 0.08 */
  double w_sensitivity;    /* weight of the sensitivity rank in the allocation score: 0.5 */
  double w_depth;          /* weight of the block-depth prior (later blocks prune more): 0.5 */
  double w_dppl;           /* weight of the Δppl-history z-score inside the sensitivity: 0.5 */
  double step_frac;        /* global step = step_frac x remaining density (1 - global): 0.125 */
  double step_cap_frac;    /* ... at most step_cap_frac x step_cap: 0.8 */
  double survivor_frac;    /* one layer's step removes at most this share of its survivors: 0.25 */
  double ppl_margin;       /* aim the predicted ppl rise at ppl_margin x tau: 0.6 */
  int hold_iterations;     /* layers of a rolled-back decision sit out this many iterations: 2 */
  int halving_window;      /* a rollback halves the layers' step for this many iterations: 8 */
  double min_layer_step;   /* smaller per-layer steps are dropped (below one weight per row): 5e-4 */
  int probes;              /* plans measured before each block when the pruner can (0 = gradual only): 6 */
  double probe_bias;       /* attention- or MLP-heavy plans add this to their kinds' share in the block: 0.10 */
  double owl_lambda;       /* half-spread of the OWL block ratios of the plans (OWL's default): 0.08 */
} ap_rule_params;

void ap_rule_params_default(ap_rule_params *p);

/* ap_rule_decide with explicit knobs; same contract. */
int ap_rule_decide_with(const ap_decide_ctx *ctx, const ap_rule_params *p, Agentprune__V1__Decision *out,
                        char *err, size_t errlen);

#ifdef __cplusplus
}
#endif
#endif
