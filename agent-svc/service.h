/*
 * service.h - the agentprune.v1.Agent service: OpenSession, Decide, Reflect,
 * GetHistory, CloseSession (DESIGN.md sections 3 and 5).
 *
 * Semantics:
 *  - OpenSession is idempotent per job_id (the same session comes back,
 *    unchanged, even if the spec differs; compare the returned constraints).
 *    Policy "llm" needs a configured foundation model (FAILED_PRECONDITION
 *    otherwise). An existing "llm" session on an agent restarted without one
 *    gets rule decisions marked fallback.
 *  - Decide(iteration n): n with a stored decision returns it (never decides
 *    twice); n == Session.next_iteration runs the session's policy, stores the
 *    decision with the job state, and returns it; anything else is
 *    FAILED_PRECONDITION, as is a closed session. Unknown session: NOT_FOUND.
 *  - Reflect(iteration n): stores the outcome of n's decision and advances
 *    next_iteration; the same outcome again returns the same Ack; an
 *    iteration without a decision, or a different outcome for a reflected
 *    one, is FAILED_PRECONDITION.
 *  - CloseSession marks the session closed (idempotent); Ack.iteration is the
 *    last reflected iteration. GetHistory works on closed sessions too and
 *    sums Decision.usage over the entries.
 *  - Every request is checked first (requests.h): INVALID_ARGUMENT.
 *    A full store is RESOURCE_EXHAUSTED, other store failures INTERNAL.
 *
 * Concurrency: calls on different sessions never wait for each other beyond
 * LMDB's short write transactions; Decide holds a per-session lock (a hash
 * table of mutexes, created on demand and freed when unused) across the
 * policy call, and no LMDB transaction is open during the policy.
 *
 * Ownership: the agent borrows the store and the llm engine; both must
 * outlive it. Messages returned through `out` parameters are freed with
 * protobuf_c_message_free_unpacked(&m->base, NULL).
 */
#ifndef AP_SERVICE_H
#define AP_SERVICE_H

#include <stddef.h>
#include <stdint.h>

#include "agentprune/v1/agent.pb-c.h"
#include "llm_policy.h"
#include "rpc_server.h"
#include "store.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
  ap_store *store;  /* required */
  ap_llm *llm;      /* NULL: no foundation model configured */
  /* Test seam: called inside Decide with the session lock held, just before
   * the policy runs (e.g. to delay one session). NULL in production. */
  void (*policy_hook)(const char *session_id, uint32_t iteration, void *user);
  void *hook_user;
} ap_agent_config;

typedef struct ap_agent ap_agent;

/* Returns NULL on allocation failure or a NULL store. */
ap_agent *ap_agent_new(const ap_agent_config *cfg);

/* Frees the agent; no call may be in flight. NULL is fine. */
void ap_agent_free(ap_agent *a);

/* Registers the five Agent methods on srv (before ap_rpc_server_start). Returns 0 or -1. */
int ap_agent_register(ap_agent *a, ap_rpc_server *srv);

/*
 * The operations behind the RPCs, for in-process callers and tests. Each
 * returns a status code of rpc_server.h (AP_OK, AP_INVALID_ARGUMENT, ...);
 * on error err holds the status message.
 * deadline_ms: ms left of the caller's deadline (INT64_MAX = none).
 */
int ap_agent_open_session(ap_agent *a, const Agentprune__V1__SessionSpec *spec, Agentprune__V1__Session **out,
                          char *err, size_t errlen);
int ap_agent_decide(ap_agent *a, const Agentprune__V1__DecideRequest *req, int64_t deadline_ms,
                    Agentprune__V1__Decision **out, char *err, size_t errlen);
int ap_agent_reflect(ap_agent *a, const Agentprune__V1__Outcome *outcome, char *err, size_t errlen);
int ap_agent_get_history(ap_agent *a, const char *session_id, Agentprune__V1__History **out, char *err,
                         size_t errlen);
/* *last_reflected (may be NULL) receives the last reflected iteration (0 = none). */
int ap_agent_close_session(ap_agent *a, const char *session_id, uint32_t *last_reflected, char *err,
                           size_t errlen);

#ifdef __cplusplus
}
#endif
#endif
