/*
 * requests.h - checks of agent-svc's incoming requests, done before any
 * work (DESIGN.md section 3: a bad request is INVALID_ARGUMENT). Each returns
 * 0, or -1 with the first problem described in err.
 */
#ifndef AP_REQUESTS_H
#define AP_REQUESTS_H

#include <stddef.h>

#include "agentprune/v1/agent.pb-c.h"

#ifdef __cplusplus
extern "C" {
#endif

#define AP_MAX_LAYERS 100000     /* rows of one profile table */
#define AP_MAX_NAME 512          /* bytes of a layer name */
#define AP_MAX_JOB_ID 256        /* bytes of a job id */
#define AP_MAX_DPPL_HISTORY 4096 /* entries of one layer's dppl_history */
#define AP_MAX_NOTE 4096         /* bytes of Outcome.note */
#define AP_MAX_BLOCKS 100000

/* 1 when s is a session id as the store makes them (32 lowercase hex). */
int ap_session_id_valid(const char *s);

/* job_id 1..256 printable bytes; policy "", "rule" or "llm"; constraints
 * present with a target in (0, 1), finite non-negative fields, step_cap and
 * ceiling in [0, 1], ceiling (0 = 0.90) at or above the target, tolerance
 * below 0.5; structure "", "unstructured" or "N:M" with 1 <= N < M <= 64. */
int ap_check_session_spec(const Agentprune__V1__SessionSpec *s, char *err, size_t errlen);

/* Session id, iteration >= 1, a job state with finite non-negative numbers
 * (sparsities in [0, 1], state.iteration 0 or equal to the request's), and a
 * profile table of 1..100000 rows with unique non-empty names, params > 0,
 * finite s, g >= 0, finite z-scores, rho in [0, 1], a known kind, and finite
 * dppl_history values. */
int ap_check_decide_request(const Agentprune__V1__DecideRequest *r, char *err, size_t errlen);

/* Session id, iteration >= 1, ppl_before finite >= 0, ppl_after >= 0 (+inf allowed), global
 * sparsity in [0, 1], a note of at most 4096 bytes. */
int ap_check_outcome(const Agentprune__V1__Outcome *o, char *err, size_t errlen);

#ifdef __cplusplus
}
#endif
#endif
