/*
 * policy.h - the decision policies of agent-svc (DESIGN.md section 5).
 *
 * A policy reads the session (constraints), the Decide request (job state and
 * profile table) and the session's history, and fills a Decision: per-layer
 * target sparsities for this iteration plus a rationale.
 *
 * Ownership: every string and array inside a Decision filled by a policy is
 * heap-allocated (malloc); release them with ap_decision_clear(), which
 * leaves protobuf_c_empty_string alone. The context is borrowed.
 */
#ifndef AP_POLICY_H
#define AP_POLICY_H

#include <stddef.h>
#include <stdint.h>

#include "agentprune/v1/agent.pb-c.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
  const Agentprune__V1__Session *session;     /* constraints and policy name */
  const Agentprune__V1__DecideRequest *req;   /* iteration, job state, profile table */
  const Agentprune__V1__History *history;     /* earlier entries of this session, oldest first */
  int64_t deadline_ms;                        /* ms left of the pruner's Decide call; INT64_MAX = none */
} ap_decide_ctx;

/* Effective constraint values, with the documented defaults applied. */
typedef struct {
  double step_cap, ceiling, target, tolerance;
} ap_limits;
void ap_limits_from(const Agentprune__V1__Constraints *c, ap_limits *out);

/*
 * The built-in deterministic `rule` policy. Fills `out` (initialised by the
 * caller with agentprune__v1__decision__init). Returns 0, or -1 with a reason
 * in err (bad profile table).
 */
int ap_rule_decide(const ap_decide_ctx *ctx, Agentprune__V1__Decision *out, char *err, size_t errlen);

/*
 * Checks a decision against the constraints: known layer names (each at most
 * once), finite targets within [rho, min(rho + step_cap, ceiling)], forward
 * progress (at least one layer grows, unless the target is already reached),
 * and no overshoot of the global target beyond the tolerance. A probe
 * decision (Decision.probes) grows no layer and carries at most
 * JobState.max_probes plans whose targets are known layers within
 * [rho, ceiling] (no step cap: plans are measured, not applied). Returns 0, or
 * -1 with the first violation described in err (this text is shown to the
 * foundation model when it is asked again).
 */
int ap_decision_validate(const ap_decide_ctx *ctx, const Agentprune__V1__Decision *d, char *err,
                         size_t errlen);

/* Frees what a policy allocated inside `d` and re-initialises it. */
void ap_decision_clear(Agentprune__V1__Decision *d);

#ifdef __cplusplus
}
#endif
#endif
