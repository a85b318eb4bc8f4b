/*
 * rule_blockwise.h - the front-to-back schedule of the `rule` policy, used
 * when the pruner measures probes (JobState.max_probes >= 2). See
 * rule_blockwise.c and docs/rule-policy.md.
 */
#ifndef AP_RULE_BLOCKWISE_H
#define AP_RULE_BLOCKWISE_H

#include "rule_policy.h"

#ifdef __cplusplus
extern "C" {
#endif

/*
 * Decides one iteration: a probe decision (Decision.probes, no layers) before
 * each block, or a step of the current block toward the best measured plan.
 * ctx->req->profile must be non-empty with valid rows (ap_rule_decide_with
 * checks). On 0, `out` holds heap-allocated fields (ap_decision_clear).
 * Returns 1 with `out` untouched when this schedule does not apply (the pruner
 * measures fewer than two probes, every block has had its turn, the remainder
 * is within the tolerance, or the history holds probes it did not make): the
 * caller then uses the gradual policy. -1 with err set: out of memory or a
 * bad profile table.
 */
int ap_rule_blockwise(const ap_decide_ctx *ctx, const ap_rule_params *p, Agentprune__V1__Decision *out, char *err,
                      size_t errlen);

#ifdef __cplusplus
}
#endif
#endif
