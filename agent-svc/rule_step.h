/*
 * rule_step.h - what both schedules of the `rule` policy (rule_policy.c,
 * rule_blockwise.c) read from the history to size a step: the latest
 * outcome, the latest accepted one, the step that keeps the predicted ppl
 * rise inside the budget, and the size of a rolled-back step. Internal to
 * agent-svc.
 */
#ifndef AP_RULE_STEP_H
#define AP_RULE_STEP_H

#include "agentprune/v1/agent.pb-c.h"
#include "layer_index.h"

/* 1 when the entry is a probe iteration that was measured (no mask changed). */
int ap_rule_entry_is_probe(const Agentprune__V1__HistoryEntry *e);

/*
 * The latest entry before `iteration` with an outcome (*last) and the latest
 * accepted one that carries its job state (*last_ok), probe iterations
 * skipped: they change no mask, so they say nothing about the ppl cost of a
 * step. Either may be set to NULL. h may be NULL.
 */
void ap_rule_recent(const Agentprune__V1__History *h, uint32_t iteration, const Agentprune__V1__HistoryEntry **last,
                    const Agentprune__V1__HistoryEntry **last_ok);

/*
 * The global step whose predicted relative ppl rise is margin * tau, from the
 * slope of the last accepted step (rise / realised global step), or INFINITY
 * when that step was below min_step, did not raise ppl, or is unknown.
 */
double ap_rule_slope_step(const Agentprune__V1__HistoryEntry *last_ok, double margin, double tau, double min_step);

/*
 * The global step (parameter-weighted, over table t) that entry `last`
 * asked for, measured from the table's current sparsities (a rollback
 * restores them), or 0 when `last` was not rolled back or grew nothing.
 */
double ap_rule_rolled_back_step(const Agentprune__V1__HistoryEntry *last, const Agentprune__V1__ProfileTable *t,
                                const ap_layer_index *ix);

#endif
