/*
 * service.c - the Agent service handlers (service.h).
 */
#include "service.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "log.h"
#include "policy.h"
#include "requests.h"

/* ---- per-session locks ---------------------------------------------------------
 * A chained hash of mutexes keyed by session id. A slot lives while some call
 * holds or waits for it (refs > 0), so the table stays as small as the number
 * of sessions being worked on right now. The table mutex is only held to find
 * or drop a slot, never while waiting for a session. */

#define LOCK_BUCKETS 256

typedef struct lock_slot {
  char sid[33];
  pthread_mutex_t mu;
  int refs;
  struct lock_slot *next;
} lock_slot;

struct ap_agent {
  ap_agent_config cfg;
  pthread_mutex_t table_mu;
  lock_slot *buckets[LOCK_BUCKETS];
};

static unsigned bucket_of(const char *sid) {
  unsigned h = 2166136261u;
  for (; *sid; sid++) h = (h ^ (unsigned char)*sid) * 16777619u;
  return h % LOCK_BUCKETS;
}

static lock_slot *session_lock(ap_agent *a, const char *sid) {
  unsigned b = bucket_of(sid);
  pthread_mutex_lock(&a->table_mu);
  lock_slot *s = a->buckets[b];
  while (s && strcmp(s->sid, sid) != 0) s = s->next;
  if (!s) {
    s = calloc(1, sizeof *s);
    if (!s) {
      pthread_mutex_unlock(&a->table_mu);
      return NULL;
    }
    snprintf(s->sid, sizeof s->sid, "%s", sid);
    pthread_mutex_init(&s->mu, NULL);
    s->next = a->buckets[b];
    a->buckets[b] = s;
  }
  s->refs++;
  pthread_mutex_unlock(&a->table_mu);
  pthread_mutex_lock(&s->mu);
  return s;
}

static void session_unlock(ap_agent *a, lock_slot *s) {
  pthread_mutex_unlock(&s->mu);
  pthread_mutex_lock(&a->table_mu);
  if (--s->refs == 0) {
    lock_slot **pp = &a->buckets[bucket_of(s->sid)];
    while (*pp != s) pp = &(*pp)->next;
    *pp = s->next;
    pthread_mutex_destroy(&s->mu);
    free(s);
  }
  pthread_mutex_unlock(&a->table_mu);
}

/* ---- lifecycle ------------------------------------------------------------------ */

ap_agent *ap_agent_new(const ap_agent_config *cfg) {
  if (!cfg || !cfg->store) return NULL;
  ap_agent *a = calloc(1, sizeof *a);
  if (!a) return NULL;
  a->cfg = *cfg;
  pthread_mutex_init(&a->table_mu, NULL);
  return a;
}

void ap_agent_free(ap_agent *a) {
  if (!a) return;
  for (int b = 0; b < LOCK_BUCKETS; b++) {
    lock_slot *s = a->buckets[b];
    while (s) { /* only left behind if a call was still in flight: a caller bug */
      lock_slot *next = s->next;
      pthread_mutex_destroy(&s->mu);
      free(s);
      s = next;
    }
  }
  pthread_mutex_destroy(&a->table_mu);
  free(a);
}

static uint64_t now_unix_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static double mono_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

/* Maps a store failure to a status code and message. */
static int store_status(int rc, const char *what, const char *sid, char *err, size_t errlen) {
  switch (rc) {
    case AP_STORE_NOT_FOUND:
      snprintf(err, errlen, "no session %s", sid);
      return AP_NOT_FOUND;
    case AP_STORE_CLOSED:
      snprintf(err, errlen, "session %s is closed", sid);
      return AP_FAILED_PRECONDITION;
    case AP_STORE_FULL:
      snprintf(err, errlen, "%s: the session store is full", what);
      return AP_RESOURCE_EXHAUSTED;
    case AP_STORE_BAD_ARG:
      snprintf(err, errlen, "%s: bad argument", what);
      return AP_INVALID_ARGUMENT;
    default:
      snprintf(err, errlen, "%s: session store error (%s)", what, ap_store_strerror(rc));
      return AP_INTERNAL;
  }
}

/* ---- operations ---------------------------------------------------------------- */

int ap_agent_open_session(ap_agent *a, const Agentprune__V1__SessionSpec *spec, Agentprune__V1__Session **out,
                          char *err, size_t errlen) {
  *out = NULL;
  if (ap_check_session_spec(spec, err, errlen)) return AP_INVALID_ARGUMENT;
  if (spec->policy && strcmp(spec->policy, "llm") == 0 && !a->cfg.llm) {
    snprintf(err, errlen,
             "policy llm needs a foundation model, and this agent has none configured (--llm-url and "
             "--llm-model, or AP_LLM_URL and AP_LLM_MODEL)");
    return AP_FAILED_PRECONDITION;
  }
  int created = 0;
  int rc = ap_store_open_session(a->cfg.store, spec, now_unix_ms(), out, &created);
  if (rc) return store_status(rc, "OpenSession", "", err, errlen);
  AP_INFO("session %s %s for job %s (policy %s, model %s)", (*out)->session_id, created ? "opened" : "reopened",
          (*out)->job_id, (*out)->policy, spec->model && spec->model[0] ? spec->model : "-");
  return AP_OK;
}

/* Runs the session's policy into d (caller-initialised). Returns a status code. */
static int run_policy(ap_agent *a, const ap_decide_ctx *ctx, Agentprune__V1__Decision *d, char *err,
                      size_t errlen) {
  const char *policy = ctx->session->policy && ctx->session->policy[0] ? ctx->session->policy : "rule";
  char why[512] = "";
  if (strcmp(policy, "llm") == 0) {
    if (a->cfg.llm) {
      if (ap_llm_decide(a->cfg.llm, ctx, d, why, sizeof why) == 0) return AP_OK;
      ap_decision_clear(d);
      snprintf(err, errlen, "llm policy: %s", why);
      return AP_FAILED_PRECONDITION;
    }
    if (ap_rule_decide(ctx, d, why, sizeof why) != 0) {
      snprintf(err, errlen, "%s", why);
      return AP_FAILED_PRECONDITION;
    }
    /* A session opened with a model, on an agent restarted without one. */
    free(d->policy);
    d->policy = strdup("rule-fallback");
    d->fallback = 1;
    d->fallback_reason = strdup("this agent has no foundation model configured");
    d->usage = calloc(1, sizeof *d->usage);
    if (!d->policy || !d->fallback_reason || !d->usage) {
      snprintf(err, errlen, "out of memory");
      return AP_INTERNAL;
    }
    agentprune__v1__usage__init(d->usage);
    d->usage->fallbacks = 1;
    return AP_OK;
  }
  if (ap_rule_decide(ctx, d, why, sizeof why) != 0) {
    snprintf(err, errlen, "%s", why);
    return AP_FAILED_PRECONDITION;
  }
  return AP_OK;
}

/* A deep copy of d in the free_unpacked ownership model (pack + unpack). */
static Agentprune__V1__Decision *copy_decision(const Agentprune__V1__Decision *d) {
  size_t n = agentprune__v1__decision__get_packed_size(d);
  uint8_t *buf = malloc(n ? n : 1);
  if (!buf) return NULL;
  agentprune__v1__decision__pack(d, buf);
  Agentprune__V1__Decision *c = agentprune__v1__decision__unpack(NULL, n, buf);
  free(buf);
  return c;
}

int ap_agent_decide(ap_agent *a, const Agentprune__V1__DecideRequest *req, int64_t deadline_ms,
                    Agentprune__V1__Decision **out, char *err, size_t errlen) {
  *out = NULL;
  if (ap_check_decide_request(req, err, errlen)) return AP_INVALID_ARGUMENT;
  const char *sid = req->session_id;
  uint32_t it = req->iteration;
  lock_slot *lk = session_lock(a, sid);
  if (!lk) {
    snprintf(err, errlen, "out of memory");
    return AP_RESOURCE_EXHAUSTED;
  }
  Agentprune__V1__History *hist = NULL;
  Agentprune__V1__Decision d = AGENTPRUNE__V1__DECISION__INIT;
  int code;

  int rc = ap_store_get_history(a->cfg.store, sid, &hist);
  if (rc) {
    code = store_status(rc, "Decide", sid, err, errlen);
    goto done;
  }
  const Agentprune__V1__Session *s = hist->session;
  if (s->closed) {
    snprintf(err, errlen, "session %s is closed", sid);
    code = AP_FAILED_PRECONDITION;
    goto done;
  }
  for (size_t i = 0; i < hist->n_entries; i++)
    if (hist->entries[i]->iteration == it && hist->entries[i]->decision) {
      /* A retry: answer what was decided, never decide twice. */
      *out = copy_decision(hist->entries[i]->decision);
      code = *out ? AP_OK : AP_INTERNAL;
      if (!*out) snprintf(err, errlen, "out of memory");
      else AP_DEBUG("session %s: Decide %u replayed from the history", sid, it);
      goto done;
    }
  if (it != s->next_iteration) {
    if (it > s->next_iteration && hist->n_entries &&
        hist->entries[hist->n_entries - 1]->iteration == s->next_iteration)
      snprintf(err, errlen, "iteration %u is out of order: iteration %u is decided but not reflected yet (Reflect it "
               "first)", it, s->next_iteration);
    else if (it > s->next_iteration)
      snprintf(err, errlen, "iteration %u is out of order: the next iteration of session %s is %u", it, sid,
               s->next_iteration);
    else
      snprintf(err, errlen, "iteration %u is stale: the next iteration of session %s is %u", it, sid,
               s->next_iteration);
    code = AP_FAILED_PRECONDITION;
    goto done;
  }
  /* The pending entry of next_iteration (if any) was matched above, so the
   * whole history is earlier iterations: exactly what the policy should see. */
  ap_decide_ctx ctx = {.session = s, .req = req, .history = hist, .deadline_ms = deadline_ms};
  if (a->cfg.policy_hook) a->cfg.policy_hook(sid, it, a->cfg.hook_user);
  double t0 = mono_ms();
  code = run_policy(a, &ctx, &d, err, errlen);
  if (code) goto done;
  if (d.session_id && d.session_id != protobuf_c_empty_string) free(d.session_id);
  d.session_id = strdup(sid);
  d.iteration = it;
  if (!d.session_id) {
    snprintf(err, errlen, "out of memory");
    code = AP_INTERNAL;
    goto done;
  }
  char why[512];
  if (ap_decision_validate(&ctx, &d, why, sizeof why) != 0) {
    /* Both policies promise valid decisions: this is a bug, not bad input. */
    AP_ERROR("session %s iteration %u: the %s policy produced an invalid decision: %s", sid, it, d.policy, why);
    snprintf(err, errlen, "the %s policy produced an invalid decision: %s", d.policy, why);
    code = AP_INTERNAL;
    goto done;
  }
  Agentprune__V1__HistoryEntry e = AGENTPRUNE__V1__HISTORY_ENTRY__INIT;
  e.iteration = it;
  e.decision = &d;
  e.state = req->state;
  rc = ap_store_put_decision(a->cfg.store, sid, &e);
  if (rc == AP_STORE_CONFLICT) {
    snprintf(err, errlen, "iteration %u of session %s changed while deciding; retry", it, sid);
    code = AP_ABORTED;
    goto done;
  }
  if (rc) {
    code = store_status(rc, "Decide", sid, err, errlen);
    goto done;
  }
  *out = copy_decision(&d);
  if (!*out) {
    snprintf(err, errlen, "out of memory");
    code = AP_INTERNAL;
    goto done;
  }
  AP_INFO("session %s iteration %u: %s decided %zu layer(s) in %.1f ms%s", sid, it, d.policy, d.n_layers,
          mono_ms() - t0, d.fallback ? " (fallback)" : "");
  code = AP_OK;
done:
  ap_decision_clear(&d);
  if (hist) protobuf_c_message_free_unpacked(&hist->base, NULL);
  session_unlock(a, lk);
  return code;
}

int ap_agent_reflect(ap_agent *a, const Agentprune__V1__Outcome *o, char *err, size_t errlen) {
  if (ap_check_outcome(o, err, errlen)) return AP_INVALID_ARGUMENT;
  const char *sid = o->session_id;
  /* Ordered with Decide on the same session (a Reflect arriving while its
   * Decide is still storing must see the decision). */
  lock_slot *lk = session_lock(a, sid);
  if (!lk) {
    snprintf(err, errlen, "out of memory");
    return AP_RESOURCE_EXHAUSTED;
  }
  int code = AP_OK;
  int rc = ap_store_put_outcome(a->cfg.store, sid, o);
  if (rc == AP_STORE_DUPLICATE) {
    AP_DEBUG("session %s: Reflect %u replayed", sid, o->iteration);
  } else if (rc == AP_STORE_CONFLICT) {
    Agentprune__V1__HistoryEntry *e = NULL;
    int grc = ap_store_get_entry(a->cfg.store, sid, o->iteration, &e);
    if (grc == AP_STORE_OK && e->outcome)
      snprintf(err, errlen, "iteration %u of session %s is already reflected with a different outcome", o->iteration,
               sid);
    else
      snprintf(err, errlen, "iteration %u of session %s has no decision to reflect on", o->iteration, sid);
    if (e) protobuf_c_message_free_unpacked(&e->base, NULL);
    code = AP_FAILED_PRECONDITION;
  } else if (rc) {
    code = store_status(rc, "Reflect", sid, err, errlen);
  } else {
    AP_INFO("session %s iteration %u: %s (ppl %.4g -> %.4g, sparsity %.4f)", sid, o->iteration,
            o->accepted ? "accepted" : "rolled back", o->ppl_before, o->ppl_after, o->global_sparsity);
  }
  session_unlock(a, lk);
  return code;
}

int ap_agent_get_history(ap_agent *a, const char *sid, Agentprune__V1__History **out, char *err,
                         size_t errlen) {
  *out = NULL;
  if (!sid || !*sid) {
    snprintf(err, errlen, "session_id is empty");
    return AP_INVALID_ARGUMENT;
  }
  if (!ap_session_id_valid(sid)) {
    snprintf(err, errlen, "session_id \"%.64s\" is not a session id (32 lowercase hex digits)", sid);
    return AP_INVALID_ARGUMENT;
  }
  int rc = ap_store_get_history(a->cfg.store, sid, out);
  return rc ? store_status(rc, "GetHistory", sid, err, errlen) : AP_OK;
}

int ap_agent_close_session(ap_agent *a, const char *sid, uint32_t *last_reflected, char *err, size_t errlen) {
  if (last_reflected) *last_reflected = 0;
  if (!sid || !*sid) {
    snprintf(err, errlen, "session_id is empty");
    return AP_INVALID_ARGUMENT;
  }
  if (!ap_session_id_valid(sid)) {
    snprintf(err, errlen, "session_id \"%.64s\" is not a session id (32 lowercase hex digits)", sid);
    return AP_INVALID_ARGUMENT;
  }
  /* No session lock: a Decide in flight (maybe waiting on the model) finds
   * the session closed when it stores, instead of delaying the close. */
  Agentprune__V1__Session *s = NULL;
  int rc = ap_store_close_session(a->cfg.store, sid, &s);
  if (rc) return store_status(rc, "CloseSession", sid, err, errlen);
  if (last_reflected) *last_reflected = s->next_iteration ? s->next_iteration - 1 : 0;
  AP_INFO("session %s closed", sid);
  protobuf_c_message_free_unpacked(&s->base, NULL);
  return AP_OK;
}

/* ---- RPC handlers ---------------------------------------------------------------- */

static int h_open_session(ap_rpc_call *call, const ProtobufCMessage *req, void *user) {
  char err[1024];
  Agentprune__V1__Session *s = NULL;
  int code = ap_agent_open_session(user, (const Agentprune__V1__SessionSpec *)req, &s, err, sizeof err);
  if (code) return ap_rpc_error(call, code, "%s", err);
  ap_rpc_reply(call, &s->base);
  protobuf_c_message_free_unpacked(&s->base, NULL);
  return AP_OK;
}

static int h_decide(ap_rpc_call *call, const ProtobufCMessage *req, void *user) {
  char err[1024];
  Agentprune__V1__Decision *d = NULL;
  int code = ap_agent_decide(user, (const Agentprune__V1__DecideRequest *)req, ap_rpc_call_deadline_ms(call), &d,
                             err, sizeof err);
  if (code) return ap_rpc_error(call, code, "%s", err);
  ap_rpc_reply(call, &d->base);
  protobuf_c_message_free_unpacked(&d->base, NULL);
  return AP_OK;
}

static int h_reflect(ap_rpc_call *call, const ProtobufCMessage *req, void *user) {
  char err[1024];
  const Agentprune__V1__Outcome *o = (const Agentprune__V1__Outcome *)req;
  int code = ap_agent_reflect(user, o, err, sizeof err);
  if (code) return ap_rpc_error(call, code, "%s", err);
  Agentprune__V1__Ack ack = AGENTPRUNE__V1__ACK__INIT;
  ack.session_id = o->session_id;
  ack.iteration = o->iteration;
  ap_rpc_reply(call, &ack.base);
  return AP_OK;
}

static int h_get_history(ap_rpc_call *call, const ProtobufCMessage *req, void *user) {
  char err[1024];
  Agentprune__V1__History *h = NULL;
  int code = ap_agent_get_history(user, ((const Agentprune__V1__GetHistoryRequest *)req)->session_id, &h, err,
                                  sizeof err);
  if (code) return ap_rpc_error(call, code, "%s", err);
  ap_rpc_reply(call, &h->base);
  protobuf_c_message_free_unpacked(&h->base, NULL);
  return AP_OK;
}

static int h_close_session(ap_rpc_call *call, const ProtobufCMessage *req, void *user) {
  char err[1024];
  const char *sid = ((const Agentprune__V1__CloseSessionRequest *)req)->session_id;
  uint32_t last = 0;
  int code = ap_agent_close_session(user, sid, &last, err, sizeof err);
  if (code) return ap_rpc_error(call, code, "%s", err);
  Agentprune__V1__Ack ack = AGENTPRUNE__V1__ACK__INIT;
  ack.session_id = (char *)sid;
  ack.iteration = last;
  ap_rpc_reply(call, &ack.base);
  return AP_OK;
}

int ap_agent_register(ap_agent *a, ap_rpc_server *srv) {
  const ProtobufCServiceDescriptor *svc = &agentprune__v1__agent__descriptor;
  if (ap_rpc_server_add_method(srv, svc, "OpenSession", AP_RPC_UNARY, h_open_session, a) ||
      ap_rpc_server_add_method(srv, svc, "Decide", AP_RPC_UNARY, h_decide, a) ||
      ap_rpc_server_add_method(srv, svc, "Reflect", AP_RPC_UNARY, h_reflect, a) ||
      ap_rpc_server_add_method(srv, svc, "GetHistory", AP_RPC_UNARY, h_get_history, a) ||
      ap_rpc_server_add_method(srv, svc, "CloseSession", AP_RPC_UNARY, h_close_session, a))
    return -1;
  return 0;
}
