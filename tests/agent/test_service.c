/*
 * test_service.c - the Agent service through real gRPC (an in-process server
 * on 127.0.0.1:0 and the project's client):
 *  - Decide/Reflect idempotency per (session, iteration), FAILED_PRECONDITION
 *    for stale and out-of-order iterations, NOT_FOUND, INVALID_ARGUMENT,
 *    closed sessions, policy llm without a model;
 *  - concurrent retries of one Decide get one decision;
 *  - 200 sessions from 200 client threads, 5 iterations each, while one
 *    session's policy is blocked by a test hook: the other 199 finish while
 *    it is blocked (per-session locking), and no history is mixed or lost.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../test.h"
#include "agent_client.h"
#include "log.h"
#include "rpc_server.h"
#include "service.h"
#include "store.h"

static ap_rpc_client *client;
static char target_addr[64];

/* ---- the slow-session hook -------------------------------------------------- */

static pthread_mutex_t hook_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t hook_cv = PTHREAD_COND_INITIALIZER;
static char slow_sid[40];
static int others_done, others_total, hook_waited, hook_timed_out;

static void policy_hook(const char *sid, uint32_t iteration, void *user) {
  (void)user;
  pthread_mutex_lock(&hook_mu);
  if (slow_sid[0] && strcmp(sid, slow_sid) == 0 && iteration == 1) {
    /* Block this session's policy until every other session finished all of
     * its iterations, or 60 s. With a global lock the others could not finish,
     * and this would time out. */
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += 60;
    hook_waited = 1;
    while (others_done < others_total) {
      if (pthread_cond_timedwait(&hook_cv, &hook_mu, &until) != 0) {
        hook_timed_out = 1;
        break;
      }
    }
  }
  pthread_mutex_unlock(&hook_mu);
}

/* ---- helpers ------------------------------------------------------------------- */

static void free_msg(void *m) {
  if (m) protobuf_c_message_free_unpacked((ProtobufCMessage *)m, NULL);
}

static Agentprune__V1__Outcome outcome(const char *sid, uint32_t it, int accepted, double ppl_after,
                                       const char *note) {
  Agentprune__V1__Outcome o = AGENTPRUNE__V1__OUTCOME__INIT;
  o.session_id = (char *)sid;
  o.iteration = it;
  o.accepted = accepted;
  o.ppl_before = 10;
  o.ppl_after = ppl_after;
  o.global_sparsity = 0.1;
  o.note = (char *)note;
  return o;
}

/* ---- idempotency and preconditions --------------------------------------------- */

static void test_idempotency(void) {
  ap_rpc_status st;
  Agentprune__V1__Session *s = NULL, *s2 = NULL;
  CHECK_EQ_INT(ac_open(client, "job-idem", "", 0.5, &s, &st), AP_OK);
  if (!s) return;
  CHECK_STR(s->policy, "rule");
  CHECK_EQ_INT(s->next_iteration, 1);
  CHECK_EQ_INT(ac_open(client, "job-idem", "", 0.5, &s2, &st), AP_OK);
  if (s2) CHECK_STR(s2->session_id, s->session_id);
  free_msg(s2);
  const char *sid = s->session_id;

  Agentprune__V1__ProfileTable *t = fx_table(4, 0);
  Agentprune__V1__DecideRequest *req = fx_request(sid, 1, t, 0.5);
  Agentprune__V1__Decision *d1 = NULL, *d1b = NULL, *dx = NULL;
  CHECK_EQ_INT(ac_decide(client, req, &d1, &st), AP_OK);
  if (!d1) return;
  CHECK_STR(d1->session_id, sid);
  CHECK_EQ_INT(d1->iteration, 1);
  CHECK_STR(d1->policy, "rule");
  CHECK(d1->n_layers > 0);
  /* A retry with a different table still gets the stored decision. */
  t->layers[0]->z_s = 5;
  CHECK_EQ_INT(ac_decide(client, req, &d1b, &st), AP_OK);
  CHECK(ac_same(&d1->base, d1b ? &d1b->base : NULL));
  free_msg(d1b);
  /* Iteration 2 before Reflect 1; iteration 3 (skipping ahead). */
  req->iteration = req->state->iteration = 2;
  CHECK_EQ_INT(ac_decide(client, req, &dx, &st), AP_FAILED_PRECONDITION);
  CHECKF(strstr(st.message, "not reflected") != NULL, "%s", st.message);
  req->iteration = req->state->iteration = 3;
  CHECK_EQ_INT(ac_decide(client, req, &dx, &st), AP_FAILED_PRECONDITION);
  /* Reflect an unknown iteration; then 1; replay; conflicting replay. */
  Agentprune__V1__Ack *ack = NULL;
  Agentprune__V1__Outcome o5 = outcome(sid, 5, 1, 10.2, "");
  CHECK_EQ_INT(ac_reflect(client, &o5, &ack, &st), AP_FAILED_PRECONDITION);
  Agentprune__V1__Outcome o1 = outcome(sid, 1, 1, 10.2, "first");
  CHECK_EQ_INT(ac_reflect(client, &o1, &ack, &st), AP_OK);
  if (ack) {
    CHECK_STR(ack->session_id, sid);
    CHECK_EQ_INT(ack->iteration, 1);
  }
  Agentprune__V1__Ack *ack2 = NULL;
  CHECK_EQ_INT(ac_reflect(client, &o1, &ack2, &st), AP_OK);
  CHECK(ac_same(ack ? &ack->base : NULL, ack2 ? &ack2->base : NULL));
  free_msg(ack);
  free_msg(ack2);
  Agentprune__V1__Outcome o1x = outcome(sid, 1, 0, 10.2, "first");
  CHECK_EQ_INT(ac_reflect(client, &o1x, &ack, &st), AP_FAILED_PRECONDITION);
  CHECKF(strstr(st.message, "different") != NULL, "%s", st.message);
  /* Reflect of 2 before its Decide. */
  Agentprune__V1__Outcome o2 = outcome(sid, 2, 1, 10.3, "");
  CHECK_EQ_INT(ac_reflect(client, &o2, &ack, &st), AP_FAILED_PRECONDITION);
  /* Now iteration 2 decides (on the table after applying 1); 1 is still replayed. */
  ac_apply(t, d1);
  req->iteration = req->state->iteration = 2;
  req->state->global_sparsity = fx_global(t);
  Agentprune__V1__Decision *d2 = NULL;
  CHECK_EQ_INT(ac_decide(client, req, &d2, &st), AP_OK);
  if (d2) {
    CHECK_EQ_INT(d2->iteration, 2);
    CHECK(!ac_same(&d1->base, &d2->base));
  }
  req->iteration = req->state->iteration = 1;
  CHECK_EQ_INT(ac_decide(client, req, &d1b, &st), AP_OK);
  CHECK(ac_same(&d1->base, d1b ? &d1b->base : NULL));
  free_msg(d1b);
  /* Stale: iteration 1 of a session past it has a stored answer; 0 is invalid. */
  req->iteration = req->state->iteration = 0;
  CHECK_EQ_INT(ac_decide(client, req, &dx, &st), AP_INVALID_ARGUMENT);

  /* History: both entries, in order, the second without outcome. */
  Agentprune__V1__History *h = NULL;
  CHECK_EQ_INT(ac_history(client, sid, &h, &st), AP_OK);
  if (h) {
    CHECK_EQ_INT(h->n_entries, 2);
    if (h->n_entries == 2) {
      CHECK(ac_same(&h->entries[0]->decision->base, &d1->base));
      CHECK(h->entries[0]->outcome && strcmp(h->entries[0]->outcome->note, "first") == 0);
      CHECK(h->entries[1]->outcome == NULL);
      CHECK(h->entries[1]->state && h->entries[1]->state->iteration == 2);
    }
    CHECK_EQ_INT(h->session->next_iteration, 2);
    CHECK(h->usage != NULL);
  }
  free_msg(h);

  /* Close: Decide and Reflect refused, history still readable, close is idempotent. */
  CHECK_EQ_INT(ac_close(client, sid, &ack, &st), AP_OK);
  if (ack) CHECK_EQ_INT(ack->iteration, 1);
  free_msg(ack);
  CHECK_EQ_INT(ac_close(client, sid, &ack, &st), AP_OK);
  free_msg(ack);
  req->iteration = req->state->iteration = 2;
  CHECK_EQ_INT(ac_decide(client, req, &dx, &st), AP_FAILED_PRECONDITION);
  CHECK_EQ_INT(ac_reflect(client, &o2, &ack, &st), AP_FAILED_PRECONDITION);
  CHECK_EQ_INT(ac_history(client, sid, &h, &st), AP_OK);
  if (h) CHECK(h->session->closed && h->n_entries == 2);
  free_msg(h);
  /* Reopening the job returns the closed session. */
  CHECK_EQ_INT(ac_open(client, "job-idem", "", 0.5, &s2, &st), AP_OK);
  if (s2) CHECK(s2->closed && strcmp(s2->session_id, sid) == 0);
  free_msg(s2);

  free_msg(d1);
  free_msg(d2);
  free_msg(req);
  free_msg(s);
}

static void test_errors(void) {
  ap_rpc_status st;
  const char *ghost = "00000000000000000000000000000000";
  Agentprune__V1__ProfileTable *t = fx_table(2, 0);
  Agentprune__V1__DecideRequest *req = fx_request(ghost, 1, t, 0.5);
  Agentprune__V1__Decision *d = NULL;
  Agentprune__V1__Ack *ack = NULL;
  Agentprune__V1__History *h = NULL;
  CHECK_EQ_INT(ac_decide(client, req, &d, &st), AP_NOT_FOUND);
  Agentprune__V1__Outcome o = outcome(ghost, 1, 1, 10, "");
  CHECK_EQ_INT(ac_reflect(client, &o, &ack, &st), AP_NOT_FOUND);
  CHECK_EQ_INT(ac_history(client, ghost, &h, &st), AP_NOT_FOUND);
  CHECK_EQ_INT(ac_close(client, ghost, &ack, &st), AP_NOT_FOUND);
  CHECK_EQ_INT(ac_history(client, "", &h, &st), AP_INVALID_ARGUMENT);
  CHECK_EQ_INT(ac_close(client, "../../etc", &ack, &st), AP_INVALID_ARGUMENT);

  Agentprune__V1__Session *s = NULL;
  CHECK_EQ_INT(ac_open(client, "", "", 0.5, &s, &st), AP_INVALID_ARGUMENT);
  CHECK_EQ_INT(ac_open(client, "job-e", "", 1.5, &s, &st), AP_INVALID_ARGUMENT);
  CHECK_EQ_INT(ac_open(client, "job-e", "magic", 0.5, &s, &st), AP_INVALID_ARGUMENT);
  CHECK_EQ_INT(ac_open(client, "job-e", "llm", 0.5, &s, &st), AP_FAILED_PRECONDITION);
  CHECKF(strstr(st.message, "llm-url") != NULL, "%s", st.message);
  CHECK_EQ_INT(ac_open(client, "job-e", "rule", 0.5, &s, &st), AP_OK);
  if (!s) return;
  free(req->session_id);
  req->session_id = fx_strdup(s->session_id);
  /* Bad tables: every one INVALID_ARGUMENT, and nothing stored. */
  t->layers[2]->rho = -0.1;
  CHECK_EQ_INT(ac_decide(client, req, &d, &st), AP_INVALID_ARGUMENT);
  t->layers[2]->rho = 0;
  t->layers[3]->g = NAN;
  CHECK_EQ_INT(ac_decide(client, req, &d, &st), AP_INVALID_ARGUMENT);
  t->layers[3]->g = 1;
  free(t->layers[4]->name);
  t->layers[4]->name = fx_strdup(t->layers[5]->name);
  CHECK_EQ_INT(ac_decide(client, req, &d, &st), AP_INVALID_ARGUMENT);
  CHECKF(strstr(st.message, "twice") != NULL, "%s", st.message);
  free(t->layers[4]->name);
  t->layers[4]->name = fx_strdup("model.layers.0.mlp.gate_proj");
  req->state->tau = -1;
  CHECK_EQ_INT(ac_decide(client, req, &d, &st), AP_INVALID_ARGUMENT);
  req->state->tau = 0.05;
  Agentprune__V1__ProfileTable *keep = req->profile;
  req->profile = NULL;
  CHECK_EQ_INT(ac_decide(client, req, &d, &st), AP_INVALID_ARGUMENT);
  req->profile = keep;
  CHECK_EQ_INT(ac_history(client, s->session_id, &h, &st), AP_OK);
  if (h) CHECK_EQ_INT(h->n_entries, 0);
  free_msg(h);
  CHECK_EQ_INT(ac_decide(client, req, &d, &st), AP_OK);
  free_msg(d);
  free_msg(s);
  free_msg(req);
}

/* Eight simultaneous Decide calls of one iteration: one decision. */
typedef struct {
  const Agentprune__V1__DecideRequest *req;
  Agentprune__V1__Decision *d;
  int code;
} retry_arg;

static void *retry_worker(void *p) {
  retry_arg *a = p;
  ap_rpc_status st;
  a->code = ac_decide(client, a->req, &a->d, &st);
  return NULL;
}

static void test_concurrent_retries(void) {
  ap_rpc_status st;
  Agentprune__V1__Session *s = NULL;
  CHECK_EQ_INT(ac_open(client, "job-retry", "", 0.6, &s, &st), AP_OK);
  if (!s) return;
  Agentprune__V1__DecideRequest *req = fx_request(s->session_id, 1, fx_table(6, 0), 0.6);
  retry_arg args[8];
  pthread_t th[8];
  for (int i = 0; i < 8; i++) {
    args[i] = (retry_arg){req, NULL, -1};
    pthread_create(&th[i], NULL, retry_worker, &args[i]);
  }
  for (int i = 0; i < 8; i++) pthread_join(th[i], NULL);
  for (int i = 0; i < 8; i++) {
    CHECK_EQ_INT(args[i].code, AP_OK);
    CHECK(ac_same(&args[0].d->base, args[i].d ? &args[i].d->base : NULL));
  }
  Agentprune__V1__History *h = NULL;
  CHECK_EQ_INT(ac_history(client, s->session_id, &h, &st), AP_OK);
  if (h) CHECK_EQ_INT(h->n_entries, 1);
  free_msg(h);
  for (int i = 0; i < 8; i++) free_msg(args[i].d);
  free_msg(req);
  free_msg(s);
}

/* ---- 200 concurrent sessions ------------------------------------------------------- */

#define N_SESSIONS 200
#define N_ITER 5

typedef struct {
  int idx;
  char job[32];
  char sid[40];
  Agentprune__V1__Decision *got[N_ITER];
  int failures;
  double done_at;
  ap_rpc_client *c;
} sess_arg;

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void *session_worker(void *p) {
  sess_arg *a = p;
  ap_rpc_status st;
  uint64_t rng = 1000 + (uint64_t)a->idx;
  Agentprune__V1__ProfileTable *t = fx_table(3, 0);
  for (size_t i = 0; i < t->n_layers; i++) {
    t->layers[i]->z_s = fx_normal(&rng);
    t->layers[i]->z_g = fx_normal(&rng);
  }
  Agentprune__V1__DecideRequest *req = fx_request(a->sid, 1, t, 0.5);
  for (uint32_t it = 1; it <= N_ITER; it++) {
    req->iteration = req->state->iteration = it;
    req->state->global_sparsity = fx_global(t);
    int code = ac_decide(a->c, req, &a->got[it - 1], &st);
    if (code != AP_OK || !a->got[it - 1] || strcmp(a->got[it - 1]->session_id, a->sid) != 0) {
      fprintf(stderr, "session %d Decide %u: %s %s\n", a->idx, it, ap_status_name(code), st.message);
      a->failures++;
      break;
    }
    ac_apply(t, a->got[it - 1]);
    char note[64];
    snprintf(note, sizeof note, "%s/%u", a->job, it);
    Agentprune__V1__Outcome o = outcome(a->sid, it, 1, 10 + it, note);
    o.global_sparsity = fx_global(t);
    Agentprune__V1__Ack *ack = NULL;
    code = ac_reflect(a->c, &o, &ack, &st);
    if (code != AP_OK || !ack || ack->iteration != it) {
      fprintf(stderr, "session %d Reflect %u: %s %s\n", a->idx, it, ap_status_name(code), st.message);
      a->failures++;
    }
    free_msg(ack);
  }
  a->done_at = now_s();
  if (strcmp(a->sid, slow_sid) != 0) {
    pthread_mutex_lock(&hook_mu);
    others_done++;
    pthread_cond_broadcast(&hook_cv);
    pthread_mutex_unlock(&hook_mu);
  }
  free_msg(req);
  return NULL;
}

static void test_many_sessions(void) {
  static sess_arg args[N_SESSIONS];
  pthread_t th[N_SESSIONS];
  ap_rpc_client *clients[10];
  ap_rpc_status st;
  for (int k = 0; k < 10; k++) clients[k] = ap_rpc_client_new(target_addr, NULL);
  for (int i = 0; i < N_SESSIONS; i++) {
    memset(&args[i], 0, sizeof args[i]);
    args[i].idx = i;
    args[i].c = clients[i % 10];
    snprintf(args[i].job, sizeof args[i].job, "many-%03d", i);
    Agentprune__V1__Session *s = NULL;
    CHECK_EQ_INT(ac_open(args[i].c, args[i].job, "", 0.5, &s, &st), AP_OK);
    snprintf(args[i].sid, sizeof args[i].sid, "%s", s ? s->session_id : "");
    free_msg(s);
  }
  pthread_mutex_lock(&hook_mu);
  snprintf(slow_sid, sizeof slow_sid, "%s", args[0].sid);
  others_total = N_SESSIONS - 1;
  pthread_mutex_unlock(&hook_mu);
  double t0 = now_s();
  for (int i = 0; i < N_SESSIONS; i++) pthread_create(&th[i], NULL, session_worker, &args[i]);
  for (int i = 0; i < N_SESSIONS; i++) pthread_join(th[i], NULL);
  double wall = now_s() - t0;
  int failures = 0;
  double last_other = 0;
  for (int i = 0; i < N_SESSIONS; i++) {
    failures += args[i].failures;
    if (i) last_other = args[i].done_at > last_other ? args[i].done_at : last_other;
  }
  CHECK_EQ_INT(failures, 0);
  CHECK(hook_waited);
  CHECKF(!hook_timed_out, "the slow session blocked the others");
  CHECKF(args[0].done_at >= last_other, "slow session finished before the others");
  printf("200 sessions x %d iterations: %.2f s wall (%.0f calls/s), the slow session released after the others\n",
         N_ITER, wall, N_SESSIONS * N_ITER * 2 / wall);

  /* Every history: 5 entries of this session, in order, matching what the client got. */
  int mixed = 0, lost = 0;
  for (int i = 0; i < N_SESSIONS; i++) {
    Agentprune__V1__History *h = NULL;
    if (ac_history(args[i].c, args[i].sid, &h, &st) != AP_OK || !h) {
      lost++;
      continue;
    }
    if (h->n_entries != N_ITER || h->session->next_iteration != N_ITER + 1) lost++;
    for (size_t k = 0; k < h->n_entries && k < N_ITER; k++) {
      const Agentprune__V1__HistoryEntry *e = h->entries[k];
      char note[64];
      snprintf(note, sizeof note, "%s/%zu", args[i].job, k + 1);
      if (e->iteration != k + 1 || strcmp(e->decision->session_id, args[i].sid) != 0 || !e->outcome ||
          strcmp(e->outcome->note, note) != 0 || !ac_same(&e->decision->base, &args[i].got[k]->base))
        mixed++;
    }
    free_msg(h);
    for (int k = 0; k < N_ITER; k++) free_msg(args[i].got[k]);
  }
  CHECK_EQ_INT(mixed, 0);
  CHECK_EQ_INT(lost, 0);
  for (int k = 0; k < 10; k++) ap_rpc_client_free(clients[k]);
}

/* ---- llm policy integration ----------------------------------------------------------
 * An agent whose foundation model is unreachable: llm sessions still get
 * decisions (the llm policy falls back to rule), marked and counted. */

static void test_llm_fallback(ap_store *store) {
  ap_llm_config lc;
  ap_llm_config_defaults(&lc);
  lc.base_url = "http://127.0.0.1:1"; /* nothing listens on port 1 */
  lc.model = "unreachable";
  lc.max_retries = 0;
  lc.timeout_ms = 2000;
  ap_llm *llm = NULL;
  char err[512];
  CHECKF(ap_llm_new(&lc, &llm, err, sizeof err) == 0, "%s", err);
  ap_llm_config_clear(&lc);
  if (!llm) return;
  ap_agent_config ac = {.store = store, .llm = llm};
  ap_agent *a = ap_agent_new(&ac);
  Agentprune__V1__Constraints c = AGENTPRUNE__V1__CONSTRAINTS__INIT;
  c.target_sparsity = 0.5;
  Agentprune__V1__SessionSpec spec = AGENTPRUNE__V1__SESSION_SPEC__INIT;
  spec.job_id = "job-llm";
  spec.policy = "llm";
  spec.constraints = &c;
  Agentprune__V1__Session *s = NULL;
  CHECKF(ap_agent_open_session(a, &spec, &s, err, sizeof err) == AP_OK, "%s", err);
  if (!s) return;
  CHECK_STR(s->policy, "llm");
  Agentprune__V1__ProfileTable *t = fx_table(2, 0);
  Agentprune__V1__DecideRequest *req = fx_request(s->session_id, 1, t, 0.5);
  for (uint32_t it = 1; it <= 2; it++) {
    req->iteration = req->state->iteration = it;
    req->state->global_sparsity = fx_global(t);
    Agentprune__V1__Decision *d = NULL;
    CHECKF(ap_agent_decide(a, req, 30000, &d, err, sizeof err) == AP_OK, "%s", err);
    if (!d) break;
    CHECK_STR(d->policy, "rule-fallback");
    CHECK(d->fallback);
    CHECK(d->fallback_reason && *d->fallback_reason);
    CHECK(d->usage && d->usage->fallbacks == 1);
    CHECK(d->n_layers > 0);
    ac_apply(t, d);
    free_msg(d);
    Agentprune__V1__Outcome o = outcome(s->session_id, it, 1, 10.1, "");
    CHECKF(ap_agent_reflect(a, &o, err, sizeof err) == AP_OK, "%s", err);
  }
  Agentprune__V1__History *h = NULL;
  CHECK(ap_agent_get_history(a, s->session_id, &h, err, sizeof err) == AP_OK);
  if (h) {
    CHECK_EQ_INT(h->n_entries, 2);
    CHECK_EQ_INT(h->usage->fallbacks, 2);
    CHECK(h->entries[0]->decision->fallback && h->entries[1]->decision->fallback);
  }
  free_msg(h);
  free_msg(req);
  free_msg(s);
  ap_agent_free(a);
  ap_llm_free(llm);
}

/* ---- main ------------------------------------------------------------------------------- */

static void *serve(void *p) {
  ap_rpc_server_run(p);
  return NULL;
}

int main(void) {
  ap_log_init("test-agent", AP_LOG_WARN, 0);
  char dir[] = "/tmp/ap-agent-svc-test-XXXXXX";
  if (!mkdtemp(dir)) return 1;
  char err[256];
  ap_store *store = NULL;
  if (ap_store_open(dir, NULL, &store, err, sizeof err) != 0) {
    fprintf(stderr, "%s\n", err);
    return 1;
  }
  ap_agent_config ac = {.store = store, .llm = NULL, .policy_hook = policy_hook};
  ap_agent *agent = ap_agent_new(&ac);
  ap_rpc_server_config sc = {.listen_addr = "127.0.0.1:0", .handler_threads = 16, .grace_ms = 2000, .name = "agent-test"};
  ap_rpc_server *srv = ap_rpc_server_new(&sc);
  CHECK(ap_agent_register(agent, srv) == 0);
  int port = ap_rpc_server_start(srv);
  CHECK(port > 0);
  snprintf(target_addr, sizeof target_addr, "127.0.0.1:%d", port);
  pthread_t th;
  pthread_create(&th, NULL, serve, srv);
  client = ap_rpc_client_new(target_addr, NULL);

  test_idempotency();
  test_errors();
  test_concurrent_retries();
  test_many_sessions();
  test_llm_fallback(store);

  ap_rpc_client_free(client);
  ap_rpc_server_stop(srv);
  pthread_join(th, NULL);
  ap_rpc_server_free(srv);
  ap_agent_free(agent);
  ap_store_close(store);
  char cmd[128];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
  if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", dir);
  TEST_DONE();
}
