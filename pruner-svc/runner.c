/*
 * The job runner: one thread per job, running DESIGN.md section 1:
 *   load -> baseline -> (profile -> Decide -> apply -> evaluate -> accept or
 *   roll back -> Reflect)* -> export
 * for the agent policies (rule, llm), or one shot for the baselines
 * (wanda, owl, magnitude).
 *
 * Durability: after every iteration the runner writes one checkpoint (every
 * layer's mask, its state as a JSON blob, the Job) in one LMDB transaction.
 * A restarted pruner-svc resumes from the latest checkpoint with the same
 * agent session; the agent answers a repeated Decide or Reflect with what it
 * stored, so the resumed job continues exactly where it was.
 *
 * Stopping: a cancel (CancelJob) ends the job as CANCELLED, keeping its last
 * checkpoint; a shutdown (SIGTERM) leaves the job RUNNING in the store so
 * that the next start resumes it.
 */
#include <math.h>
#include <stdarg.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "agentprune/v1/agent.pb-c.h"
#include "bitmap.h"
#include "export.h"
#include "log.h"
#include "owl.h"
#include "plan.h"
#include "policy.h"
#include "pruner.h"
#include "report.h"
#include "rpc_client.h"
#include "workload.h"

struct job_runner {
  char id[AP_JS_ID_MAX + 1];
  volatile int cancel;
  pruner *p;
  job_runner *next;
};

static uint64_t now_ms(void) {
  struct timeval tv;
  gettimeofday(&tv, NULL);
  return (uint64_t)tv.tv_sec * 1000u + (uint64_t)tv.tv_usec / 1000u;
}

static double mono_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* ---- one job ---------------------------------------------------------------- */

typedef struct {
  pruner *p;
  job_runner *r;
  Agentprune__V1__Job *stored;      /* as read at start: spec, created time */
  const Agentprune__V1__JobSpec *spec;
  /* effective parameters */
  const char *policy;
  double target, tau, step_cap, ceiling, owl_m, owl_lambda;
  unsigned nm_n, nm_m;
  int calib_windows, eval_windows, grad_windows, max_iter, max_rb, L, random;
  int fallback_rule;
  /* compute */
  workload w;
  wl_windows calib, check, eval_all, test_all;
  uint64_t **accepted;              /* masks of the last accepted state */
  /* progress, persisted in the state blob */
  Agentprune__V1__JobState state;
  int status;
  char stop_reason[64];
  char error[512];
  double dense_full_ppl, dense_test_ppl, ppl_full, test_ppl;
  int has_test;
  char session_id[128];
  uint32_t event_iteration;         /* the iteration in progress, which its events carry; 0 between them */
  int local_mode;                   /* the agent is unreachable for good: rule decisions made here */
  int no_progress;                  /* consecutive iterations whose decision changed no layer */
  cJSON *trajectory;                /* array, one object per iteration */
  cJSON *last_outcome;              /* the Reflect to (re)send on resume; NULL when none */
  cJSON *baselines;
  double wall_s, started;
  ap_rpc_client *agent;
  Agentprune__V1__Usage usage;
} job;

static int should_stop(void *arg) {
  job *j = arg;
  return j->r->cancel || j->p->stopping;
}

/* Persists the job record with one event in the same transaction. */
static void emit(job *j, Agentprune__V1__JobEventType type, double ppl, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static Agentprune__V1__Job build_job(job *j, Agentprune__V1__LayerSparsity ***layers_out) {
  Agentprune__V1__Job out = AGENTPRUNE__V1__JOB__INIT;
  out.id = j->stored->id;
  out.spec = (Agentprune__V1__JobSpec *)j->spec;
  out.status = (Agentprune__V1__JobStatus)j->status;
  out.state = &j->state;
  out.stop_reason = j->stop_reason;
  out.error = j->error;
  out.dense_ppl = j->dense_full_ppl;
  out.ppl = j->ppl_full;
  out.dense_test_ppl = j->dense_test_ppl;
  out.test_ppl = j->test_ppl;
  out.has_test = j->has_test && j->test_ppl > 0;
  out.agent_session_id = j->session_id;
  out.created_unix_ms = j->stored->created_unix_ms;
  out.updated_unix_ms = now_ms();
  out.out_dir = j->spec->out_dir;
  out.agent_usage = &j->usage;
  *layers_out = NULL;
  if (j->w.model && j->w.n_layers) {
    Agentprune__V1__LayerSparsity **ls = calloc((size_t)j->w.n_layers, sizeof *ls);
    Agentprune__V1__LayerSparsity *cells = calloc((size_t)j->w.n_layers, sizeof *cells);
    if (ls && cells) {
      for (int i = 0; i < j->w.n_layers; i++) {
        agentprune__v1__layer_sparsity__init(&cells[i]);
        cells[i].name = ap_model_linear(j->w.model, j->w.layer_index[i])->name;
        cells[i].sparsity = wl_layer_sparsity(&j->w, i);
        cells[i].params = wl_layer_params(&j->w, i);
        ls[i] = &cells[i];
      }
      out.n_layers = (size_t)j->w.n_layers;
      out.layers = ls;
      *layers_out = ls;
    } else {
      free(ls);
      free(cells);
    }
  }
  return out;
}

static void free_layers(Agentprune__V1__LayerSparsity **ls) {
  if (!ls) return;
  free(ls[0]);
  free(ls);
}

static double eta_seconds(job *j) {
  double done = j->state.global_sparsity, left = j->target - done;
  if (j->state.iteration == 0 || done <= 0 || left <= 0) return 0;
  double per_iter = (mono_s() - j->started) / (double)j->state.iteration;
  return per_iter * ceil(left / (done / j->state.iteration));
}

static void fill_event(job *j, Agentprune__V1__JobEvent *ev, Agentprune__V1__JobEventType type, double ppl,
                       char *msg) {
  agentprune__v1__job_event__init(ev);
  ev->job_id = j->stored->id;
  ev->time_unix_ms = now_ms();
  ev->type = type;
  ev->iteration = j->event_iteration ? j->event_iteration : j->state.iteration;
  ev->global_sparsity = j->state.global_sparsity;
  ev->ppl = ppl;
  ev->accepted_ppl = j->state.current_ppl;
  ev->rollbacks = j->state.rollbacks;
  ev->message = msg;
  ev->eta_s = eta_seconds(j);
  ev->status = (Agentprune__V1__JobStatus)j->status;
}

static void emit(job *j, Agentprune__V1__JobEventType type, double ppl, const char *fmt, ...) {
  char msg[1024];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  Agentprune__V1__LayerSparsity **ls = NULL;
  Agentprune__V1__Job rec = build_job(j, &ls);
  Agentprune__V1__JobEvent ev;
  fill_event(j, &ev, type, ppl, msg);
  int rc = ap_js_job_put(j->p->store, &rec, &ev, NULL);
  if (rc) AP_ERROR("job %s: cannot record event: %s", j->stored->id, ap_js_strerror(rc));
  free_layers(ls);
  AP_INFO("job %s: %s", j->stored->id, msg);
}

/* ---- state blob (JSON) --------------------------------------------------------- */

/* cJSON prints a double with 15 digits whenever that parses back to within
   an epsilon of it, so values drift by an ulp per save. A resumed job must
   continue from exactly the saved numbers (the tau test, the JobState and
   the re-sent Reflect), so the blob carries every finite number with 17
   digits, as a raw token that cJSON_Parse reads back exactly. */
static void exact_numbers(cJSON *node) {
  for (cJSON *c = node; c; c = c->next) {
    if (cJSON_IsNumber(c) && isfinite(c->valuedouble)) {
      char buf[40];
      snprintf(buf, sizeof buf, "%.17g", c->valuedouble);
      char *raw = strdup(buf);
      if (!raw) continue; /* keeps the 15-digit form */
      c->type = cJSON_Raw | (c->type & cJSON_StringIsConst);
      c->valuestring = raw;
    }
    if (c->child) exact_numbers(c->child);
  }
}

static char *state_blob(job *j) {
  cJSON *o = cJSON_CreateObject();
  cJSON_AddNumberToObject(o, "version", 1);
  cJSON_AddNumberToObject(o, "iteration", j->state.iteration);
  cJSON_AddNumberToObject(o, "rollbacks", j->state.rollbacks);
  cJSON_AddNumberToObject(o, "consecutive_rollbacks", j->state.consecutive_rollbacks);
  cJSON_AddNumberToObject(o, "dense_ppl", j->state.dense_ppl);
  cJSON_AddNumberToObject(o, "accepted_ppl", j->state.current_ppl);
  cJSON_AddNumberToObject(o, "dense_full_ppl", j->dense_full_ppl);
  cJSON_AddNumberToObject(o, "dense_test_ppl", j->dense_test_ppl);
  cJSON_AddStringToObject(o, "session_id", j->session_id);
  cJSON_AddBoolToObject(o, "local_mode", j->local_mode);
  cJSON_AddNumberToObject(o, "no_progress", j->no_progress);
  cJSON_AddNumberToObject(o, "wall_s", j->wall_s + (mono_s() - j->started));
  cJSON_AddItemToObject(o, "trajectory", cJSON_Duplicate(j->trajectory, 1));
  if (j->last_outcome) cJSON_AddItemToObject(o, "last_outcome", cJSON_Duplicate(j->last_outcome, 1));
  cJSON_AddNumberToObject(o, "usage_requests", (double)j->usage.requests);
  cJSON_AddNumberToObject(o, "usage_retries", (double)j->usage.retries);
  cJSON_AddNumberToObject(o, "usage_prompt_tokens", (double)j->usage.prompt_tokens);
  cJSON_AddNumberToObject(o, "usage_completion_tokens", (double)j->usage.completion_tokens);
  cJSON_AddNumberToObject(o, "usage_latency_ms", j->usage.latency_ms);
  cJSON_AddNumberToObject(o, "usage_fallbacks", (double)j->usage.fallbacks);
  exact_numbers(o->child);
  char *s = cJSON_PrintUnformatted(o);
  cJSON_Delete(o);
  return s;
}

static double jnum(const cJSON *o, const char *k) {
  const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
  return cJSON_IsNumber(v) ? v->valuedouble : 0;
}

static int load_state_blob(job *j, const uint8_t *blob, size_t len) {
  cJSON *o = cJSON_ParseWithLength((const char *)blob, len);
  if (!o) return -1;
  j->state.iteration = (uint32_t)jnum(o, "iteration");
  j->state.rollbacks = (uint32_t)jnum(o, "rollbacks");
  j->state.consecutive_rollbacks = (uint32_t)jnum(o, "consecutive_rollbacks");
  j->state.dense_ppl = jnum(o, "dense_ppl");
  j->state.current_ppl = jnum(o, "accepted_ppl");
  j->dense_full_ppl = jnum(o, "dense_full_ppl");
  j->dense_test_ppl = jnum(o, "dense_test_ppl");
  j->wall_s = jnum(o, "wall_s");
  const cJSON *sid = cJSON_GetObjectItemCaseSensitive(o, "session_id");
  if (cJSON_IsString(sid)) snprintf(j->session_id, sizeof j->session_id, "%s", sid->valuestring);
  j->local_mode = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(o, "local_mode"));
  j->no_progress = (int)jnum(o, "no_progress");
  cJSON *t = cJSON_DetachItemFromObjectCaseSensitive(o, "trajectory");
  if (cJSON_IsArray(t)) {
    cJSON_Delete(j->trajectory);
    j->trajectory = t;
  } else {
    cJSON_Delete(t);
  }
  j->last_outcome = cJSON_DetachItemFromObjectCaseSensitive(o, "last_outcome");
  j->usage.requests = (uint64_t)jnum(o, "usage_requests");
  j->usage.retries = (uint64_t)jnum(o, "usage_retries");
  j->usage.prompt_tokens = (uint64_t)jnum(o, "usage_prompt_tokens");
  j->usage.completion_tokens = (uint64_t)jnum(o, "usage_completion_tokens");
  j->usage.latency_ms = jnum(o, "usage_latency_ms");
  j->usage.fallbacks = (uint64_t)jnum(o, "usage_fallbacks");
  cJSON_Delete(o);
  return 0;
}

/* Writes masks, state, the Job and the event `type` in one transaction. */
static int checkpoint(job *j, Agentprune__V1__JobEventType type, double ppl, const char *msg, char *err,
                      size_t errlen) {
  ap_js_mask_in *m = calloc((size_t)j->w.n_layers, sizeof *m);
  char *blob = state_blob(j);
  int rc = AP_JS_E_NOMEM;
  if (m && blob) {
    for (int i = 0; i < j->w.n_layers; i++) m[i] = (ap_js_mask_in){wl_layer_params(&j->w, i), j->w.masks[i]};
    Agentprune__V1__LayerSparsity **ls = NULL;
    Agentprune__V1__Job rec = build_job(j, &ls);
    char text[1024];
    snprintf(text, sizeof text, "%s", msg);
    Agentprune__V1__JobEvent ev;
    fill_event(j, &ev, type, ppl, text);
    rc = ap_js_checkpoint_write(j->p->store, &rec, &ev, blob, strlen(blob), m, (uint32_t)j->w.n_layers, NULL, NULL);
    free_layers(ls);
    if (rc == 0) AP_INFO("job %s: %s", j->stored->id, msg);
  }
  free(m);
  cJSON_free(blob);
  if (rc) snprintf(err, errlen, "checkpoint: %s", ap_js_strerror(rc));
  return rc ? (rc == AP_JS_E_FULL || rc == AP_JS_E_NOMEM ? AP_RESOURCE_EXHAUSTED : AP_INTERNAL) : AP_OK;
}

/* Restores the masks and the state of the latest checkpoint. Returns 1 when
   there was one, 0 when none, a negative value on error. */
static int restore(job *j, char *err, size_t errlen) {
  ap_js_mask_out *m = calloc((size_t)j->w.n_layers, sizeof *m);
  if (!m) return -1;
  for (int i = 0; i < j->w.n_layers; i++) m[i] = (ap_js_mask_out){wl_layer_params(&j->w, i), j->w.masks[i]};
  ap_js_ckpt *c = NULL;
  int rc = ap_js_checkpoint_read(j->p->store, j->stored->id, 0, m, (uint32_t)j->w.n_layers, &c);
  free(m);
  if (rc == AP_JS_E_NOTFOUND) return 0;
  if (rc) {
    snprintf(err, errlen, "reading the last checkpoint: %s", ap_js_strerror(rc));
    return -1;
  }
  int ok = load_state_blob(j, c->state, c->state_len) == 0;
  ap_js_ckpt_free(c);
  if (!ok) {
    snprintf(err, errlen, "the last checkpoint's state does not parse");
    return -1;
  }
  for (int i = 0; i < j->w.n_layers; i++)
    if (wl_apply(&j->w, i, err, errlen) != AP_OK) return -1;
  return 1;
}

/* ---- agent ------------------------------------------------------------------ */

static int transient(int code) {
  return code == AP_UNAVAILABLE || code == AP_DEADLINE_EXCEEDED || code == AP_RESOURCE_EXHAUSTED ||
         code == AP_CANCELLED || code == AP_UNKNOWN;
}

/* A unary call to the agent. While the agent is unreachable: with the rule
   fallback, returns the error at once (the caller decides locally); without
   it, waits with exponential backoff, reporting the wait as job events. */
static int agent_call(job *j, const char *method, const ProtobufCMessage *req,
                      const ProtobufCMessageDescriptor *rd, ProtobufCMessage **resp, int64_t timeout_ms,
                      ap_rpc_status *st) {
  int backoff_ms = 500, attempt = 0;
  for (;;) {
    *resp = NULL;
    int code = ap_rpc_unary(j->agent, method, req, rd, resp, timeout_ms, st);
    if (code == AP_OK || !transient(code) || j->fallback_rule) return code;
    attempt++;
    emit(j, AGENTPRUNE__V1__JOB_EVENT_TYPE__JOB_EVENT_AGENT_WAIT, 0,
         "agent %s unreachable (%s: %s); retry %d in %.1f s", j->spec->agent_addr, ap_status_name(code), st->message,
         attempt, backoff_ms / 1000.0);
    for (int waited = 0; waited < backoff_ms; waited += 100) {
      if (should_stop(j)) return AP_CANCELLED;
      usleep(100 * 1000);
    }
    backoff_ms = backoff_ms * 2 > 30000 ? 30000 : backoff_ms * 2;
  }
}

static void constraints_of(job *j, Agentprune__V1__Constraints *c) {
  agentprune__v1__constraints__init(c);
  c->step_cap = j->step_cap;
  c->ceiling = j->ceiling;
  c->target_sparsity = j->target;
  c->tolerance = 0.005;
  c->structure = "unstructured";
}

static int open_session(job *j, char *err, size_t errlen) {
  if (j->session_id[0] || j->local_mode) return AP_OK;
  Agentprune__V1__Constraints c;
  constraints_of(j, &c);
  Agentprune__V1__SessionSpec spec = AGENTPRUNE__V1__SESSION_SPEC__INIT;
  spec.job_id = j->stored->id;
  spec.policy = (char *)j->policy;
  spec.constraints = &c;
  const char *base = strrchr(j->spec->model_dir, '/');
  spec.model = (char *)(base ? base + 1 : j->spec->model_dir);
  spec.num_blocks = (uint32_t)ap_model_config(j->w.model)->num_hidden_layers;
  Agentprune__V1__Session *s = NULL;
  ap_rpc_status st;
  int code = agent_call(j, "/agentprune.v1.Agent/OpenSession", &spec.base, &agentprune__v1__session__descriptor,
                        (ProtobufCMessage **)&s, 30000, &st);
  if (code == AP_OK) {
    snprintf(j->session_id, sizeof j->session_id, "%s", s->session_id);
    protobuf_c_message_free_unpacked(&s->base, NULL);
    return AP_OK;
  }
  if (j->fallback_rule && transient(code)) {
    j->local_mode = 1;
    emit(j, AGENTPRUNE__V1__JOB_EVENT_TYPE__JOB_EVENT_AGENT_WAIT, 0,
         "agent %s unreachable (%s); deciding locally with the rule policy (--agent-fallback rule)",
         j->spec->agent_addr, st.message);
    return AP_OK;
  }
  snprintf(err, errlen, "agent OpenSession: %s", st.message);
  return code == AP_CANCELLED ? AP_CANCELLED : AP_FAILED_PRECONDITION;
}

/* out->probe_results (when the outcome has probes) are heap-allocated:
 * release with outcome_clear. Strings point into `o`. */
static void outcome_from_json(const cJSON *o, const char *session, Agentprune__V1__Outcome *out) {
  agentprune__v1__outcome__init(out);
  out->session_id = (char *)session;
  out->iteration = (uint32_t)jnum(o, "iteration");
  out->accepted = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(o, "accepted"));
  out->ppl_before = jnum(o, "ppl_before");
  out->ppl_after = jnum(o, "ppl_after");
  out->global_sparsity = jnum(o, "global_sparsity");
  const cJSON *n = cJSON_GetObjectItemCaseSensitive(o, "note");
  out->note = cJSON_IsString(n) ? n->valuestring : "";
  const cJSON *pr = cJSON_GetObjectItemCaseSensitive(o, "probes");
  int np = cJSON_GetArraySize(pr);
  if (np <= 0) return;
  Agentprune__V1__ProbeResult *cells = calloc((size_t)np, sizeof *cells);
  out->probe_results = calloc((size_t)np, sizeof *out->probe_results);
  if (!cells || !out->probe_results) {
    free(cells);
    free(out->probe_results);
    out->probe_results = NULL;
    return;
  }
  const cJSON *r;
  cJSON_ArrayForEach(r, pr) {
    Agentprune__V1__ProbeResult *c = &cells[out->n_probe_results];
    agentprune__v1__probe_result__init(c);
    const cJSON *lb = cJSON_GetObjectItemCaseSensitive(r, "label");
    c->label = cJSON_IsString(lb) ? lb->valuestring : "";
    c->ppl = jnum(r, "ppl");
    c->global_sparsity = jnum(r, "global_sparsity");
    out->probe_results[out->n_probe_results++] = c;
  }
}

static void outcome_clear(Agentprune__V1__Outcome *out) {
  if (out->n_probe_results) free(out->probe_results[0]); /* one block of cells */
  free(out->probe_results);
  out->probe_results = NULL;
  out->n_probe_results = 0;
}

static int reflect(job *j, const cJSON *outcome, char *err, size_t errlen) {
  if (j->local_mode || !j->session_id[0]) return AP_OK;
  Agentprune__V1__Outcome o;
  outcome_from_json(outcome, j->session_id, &o);
  Agentprune__V1__Ack *ack = NULL;
  ap_rpc_status st;
  int code = agent_call(j, "/agentprune.v1.Agent/Reflect", &o.base, &agentprune__v1__ack__descriptor,
                        (ProtobufCMessage **)&ack, 30000, &st);
  outcome_clear(&o);
  if (ack) protobuf_c_message_free_unpacked(&ack->base, NULL);
  if (code == AP_OK) return AP_OK;
  if (j->fallback_rule && transient(code)) {
    j->local_mode = 1;
    emit(j, AGENTPRUNE__V1__JOB_EVENT_TYPE__JOB_EVENT_AGENT_WAIT, 0,
         "agent unreachable for Reflect (%s); deciding locally from now on", st.message);
    return AP_OK;
  }
  /* A resumed iteration re-measured with other float rounding may carry an
     outcome that differs from the stored one in the last digits: the agent
     keeps its first record, which is the one it reasons from. */
  if (code == AP_FAILED_PRECONDITION && strstr(st.message, "different")) {
    AP_WARN("job %s: agent kept its earlier outcome of iteration %u (%s)", j->stored->id, o.iteration, st.message);
    return AP_OK;
  }
  snprintf(err, errlen, "agent Reflect: %s", st.message);
  return code == AP_CANCELLED ? AP_CANCELLED : AP_FAILED_PRECONDITION;
}

/* Fills tg/tp from a JSON array of {name, target_sparsity}; returns the
 * count. Names point into the JSON. */
static size_t targets_from_json(const cJSON *arr, Agentprune__V1__LayerTarget *tg, Agentprune__V1__LayerTarget **tp) {
  size_t n = 0;
  const cJSON *d;
  cJSON_ArrayForEach(d, arr) {
    agentprune__v1__layer_target__init(&tg[n]);
    const cJSON *nm = cJSON_GetObjectItemCaseSensitive(d, "name");
    tg[n].name = cJSON_IsString(nm) ? nm->valuestring : "";
    tg[n].target_sparsity = jnum(d, "target_sparsity");
    tp[n] = &tg[n];
    n++;
  }
  return n;
}

/* Local rule decision: the same policy code the agent runs, over a history
   rebuilt from this job's trajectory. */
static int decide_local(job *j, const Agentprune__V1__DecideRequest *req, Agentprune__V1__Decision *out, char *err,
                        size_t errlen) {
  int n = cJSON_GetArraySize(j->trajectory);
  Agentprune__V1__HistoryEntry *ents = calloc((size_t)n + 1, sizeof *ents);
  Agentprune__V1__HistoryEntry **ep = calloc((size_t)n + 1, sizeof *ep);
  Agentprune__V1__Decision *decs = calloc((size_t)n + 1, sizeof *decs);
  Agentprune__V1__Outcome *outs = calloc((size_t)n + 1, sizeof *outs);
  int total_targets = 0, total_plans = 0, k = 0, t = 0;
  const cJSON *e, *pe;
  cJSON_ArrayForEach(e, j->trajectory) {
    total_targets += cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(e, "decision"));
    cJSON_ArrayForEach(pe, cJSON_GetObjectItemCaseSensitive(e, "probes")) {
      total_plans++;
      total_targets += cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(pe, "layers"));
    }
  }
  Agentprune__V1__Plan *plans = calloc((size_t)total_plans + 1, sizeof *plans);
  Agentprune__V1__Plan **pp = calloc((size_t)total_plans + 1, sizeof *pp);
  Agentprune__V1__LayerTarget *tg = calloc((size_t)total_targets + 1, sizeof *tg);
  Agentprune__V1__LayerTarget **tp = calloc((size_t)total_targets + 1, sizeof *tp);
  int rc = -1;
  if (!ents || !ep || !decs || !outs || !tg || !tp || !plans || !pp) {
    snprintf(err, errlen, "out of memory");
    goto done;
  }
  t = 0;
  int q = 0;
  cJSON_ArrayForEach(e, j->trajectory) {
    agentprune__v1__history_entry__init(&ents[k]);
    agentprune__v1__decision__init(&decs[k]);
    ents[k].iteration = (uint32_t)jnum(e, "iteration");
    decs[k].iteration = ents[k].iteration;
    decs[k].layers = &tp[t];
    decs[k].n_layers = targets_from_json(cJSON_GetObjectItemCaseSensitive(e, "decision"), &tg[t], &tp[t]);
    t += (int)decs[k].n_layers;
    decs[k].probes = &pp[q];
    cJSON_ArrayForEach(pe, cJSON_GetObjectItemCaseSensitive(e, "probes")) {
      agentprune__v1__plan__init(&plans[q]);
      const cJSON *lb = cJSON_GetObjectItemCaseSensitive(pe, "label");
      plans[q].label = cJSON_IsString(lb) ? lb->valuestring : "";
      plans[q].layers = &tp[t];
      plans[q].n_layers = targets_from_json(cJSON_GetObjectItemCaseSensitive(pe, "layers"), &tg[t], &tp[t]);
      t += (int)plans[q].n_layers;
      pp[q] = &plans[q];
      q++;
      decs[k].n_probes++;
    }
    ents[k].decision = &decs[k];
    outcome_from_json(e, "", &outs[k]);
    outs[k].ppl_after = jnum(e, "ppl");
    ents[k].outcome = &outs[k];
    ep[k] = &ents[k];
    k++;
  }
  Agentprune__V1__Constraints c;
  constraints_of(j, &c);
  Agentprune__V1__Session sess = AGENTPRUNE__V1__SESSION__INIT;
  sess.session_id = "local";
  sess.job_id = j->stored->id;
  sess.policy = "rule";
  sess.constraints = &c;
  sess.next_iteration = req->iteration;
  Agentprune__V1__History hist = AGENTPRUNE__V1__HISTORY__INIT;
  hist.session = &sess;
  hist.n_entries = (size_t)k;
  hist.entries = ep;
  ap_decide_ctx ctx = {&sess, req, &hist, INT64_MAX};
  rc = ap_rule_decide(&ctx, out, err, errlen);
done:
  for (int x = 0; outs && x < k; x++) outcome_clear(&outs[x]);
  free(plans);
  free(pp);
  free(ents);
  free(ep);
  free(decs);
  free(outs);
  free(tg);
  free(tp);
  return rc;
}

/* The DECISION event: the per-layer targets of this iteration as applied (after clamping). */
static void emit_decision(job *j, const cJSON *dec, const char *policy) {
  int n = cJSON_GetArraySize(dec);
  Agentprune__V1__LayerTarget *cells = calloc((size_t)n + 1, sizeof *cells);
  Agentprune__V1__LayerTarget **ptrs = calloc((size_t)n + 1, sizeof *ptrs);
  if (!cells || !ptrs) {
    free(cells);
    free(ptrs);
    AP_ERROR("job %s: out of memory for the decision event", j->stored->id);
    return;
  }
  int k = 0;
  const cJSON *d;
  cJSON_ArrayForEach(d, dec) {
    agentprune__v1__layer_target__init(&cells[k]);
    cells[k].name = cJSON_GetObjectItemCaseSensitive(d, "name")->valuestring;
    cells[k].target_sparsity = jnum(d, "target_sparsity");
    ptrs[k] = &cells[k];
    k++;
  }
  char msg[256];
  snprintf(msg, sizeof msg, "decision (%s): %d layer targets", policy, n);
  Agentprune__V1__LayerSparsity **ls = NULL;
  Agentprune__V1__Job rec = build_job(j, &ls);
  Agentprune__V1__JobEvent ev;
  fill_event(j, &ev, AGENTPRUNE__V1__JOB_EVENT_TYPE__JOB_EVENT_DECISION, 0, msg);
  ev.n_decision = (size_t)k;
  ev.decision = ptrs;
  int rc = ap_js_job_put(j->p->store, &rec, &ev, NULL);
  if (rc) AP_ERROR("job %s: cannot record event: %s", j->stored->id, ap_js_strerror(rc));
  free_layers(ls);
  free(cells);
  free(ptrs);
}

/* ---- the agent loop ------------------------------------------------------------ */

/* Each layer's relative ppl change in earlier iterations that touched it. */
static void fill_dppl_history(job *j, Agentprune__V1__ProfileTable *table) {
  for (size_t i = 0; i < table->n_layers; i++) {
    Agentprune__V1__LayerProfile *l = table->layers[i];
    double vals[8];
    size_t n = 0;
    const cJSON *e;
    cJSON_ArrayForEach(e, j->trajectory) {
      double before = jnum(e, "ppl_before"), after = jnum(e, "ppl");
      if (before <= 0) continue;
      const cJSON *d;
      cJSON_ArrayForEach(d, cJSON_GetObjectItemCaseSensitive(e, "decision")) {
        const cJSON *nm = cJSON_GetObjectItemCaseSensitive(d, "name");
        if (cJSON_IsString(nm) && !strcmp(nm->valuestring, l->name)) {
          if (n == 8) { /* keep the 8 most recent */
            memmove(vals, vals + 1, sizeof(double) * 7);
            n = 7;
          }
          vals[n++] = after / before - 1;
        }
      }
    }
    if (n) {
      l->dppl_history = malloc(sizeof(double) * n);
      if (l->dppl_history) {
        memcpy(l->dppl_history, vals, sizeof(double) * n);
        l->n_dppl_history = n;
      }
    }
  }
}

static int find_layer(job *j, const char *name) {
  for (int i = 0; i < j->w.n_layers; i++)
    if (!strcmp(ap_model_linear(j->w.model, j->w.layer_index[i])->name, name)) return i;
  return -1;
}

static void snapshot_accepted(job *j) {
  for (int i = 0; i < j->w.n_layers; i++)
    memcpy(j->accepted[i], j->w.masks[i], ap_bitmap_bytes(wl_layer_params(&j->w, i)));
}

static int roll_back(job *j, char *err, size_t errlen) {
  for (int i = 0; i < j->w.n_layers; i++) {
    size_t bytes = ap_bitmap_bytes(wl_layer_params(&j->w, i));
    if (memcmp(j->accepted[i], j->w.masks[i], bytes)) {
      memcpy(j->w.masks[i], j->accepted[i], bytes);
      int rc = wl_apply(&j->w, i, err, errlen);
      if (rc != AP_OK) return rc;
    }
  }
  return AP_OK;
}

/* Plans a probe iteration measures at most (JobState.max_probes). */
#define AP_MAX_PROBES 8

/* A probe iteration: rolls each plan out from the accepted masks (every
 * listed layer grown to its target in one sequential pass), measures the
 * check ppl, and restores the accepted masks. Results go to `out` as
 * {label, ppl, global_sparsity} in the decision's order. */
static int run_probes(job *j, const Agentprune__V1__Decision *d, double *targets, cJSON *out,
                      const engine_stop *stop, char *err, size_t errlen) {
  size_t n = d->n_probes < AP_MAX_PROBES ? d->n_probes : AP_MAX_PROBES;
  if (d->n_probes > n)
    AP_WARN("job %s: the decision has %zu probes; measuring the first %zu", j->stored->id, d->n_probes, n);
  for (size_t p = 0; p < n; p++) {
    const Agentprune__V1__Plan *pl = d->probes[p];
    for (int i = 0; i < j->w.n_layers; i++) targets[i] = wl_layer_sparsity(&j->w, i);
    for (size_t k = 0; pl && k < pl->n_layers; k++) {
      int i = find_layer(j, pl->layers[k]->name);
      double t = pl->layers[k]->target_sparsity;
      if (i < 0 || !isfinite(t)) continue;
      targets[i] = fmax(targets[i], fmin(t, j->ceiling));
    }
    double ppl = NAN, nll;
    int rc = wl_prune_sequential(&j->w, &j->calib, targets, 0, 0, stop, err, errlen);
    if (rc == AP_OK) rc = wl_perplexity(&j->w, &j->check, stop, &ppl, &nll, NULL, err, errlen);
    double gs = wl_global_sparsity(&j->w);
    int rb = roll_back(j, err, errlen);
    if (rc != AP_OK) return rc;
    if (rb != AP_OK) return AP_INTERNAL;
    const char *label = pl && pl->label ? pl->label : "";
    cJSON *r = cJSON_CreateObject();
    cJSON_AddStringToObject(r, "label", label);
    cJSON_AddNumberToObject(r, "ppl", ppl);
    cJSON_AddNumberToObject(r, "global_sparsity", gs);
    /* The plan itself, so that a local rule decision (agent unreachable) can
       rebuild the history the agent keeps. */
    cJSON *ls = cJSON_AddArrayToObject(r, "layers");
    for (int i = 0; i < j->w.n_layers; i++) {
      if (!(targets[i] > wl_layer_sparsity(&j->w, i))) continue;
      cJSON *x = cJSON_CreateObject();
      cJSON_AddStringToObject(x, "name", ap_model_linear(j->w.model, j->w.layer_index[i])->name);
      cJSON_AddNumberToObject(x, "target_sparsity", targets[i]);
      cJSON_AddItemToArray(ls, x);
    }
    cJSON_AddItemToArray(out, r);
    emit(j, AGENTPRUNE__V1__JOB_EVENT_TYPE__JOB_EVENT_EVALUATED, ppl, "probe %zu/%zu %s: ppl %.4f at sparsity %.4f",
         p + 1, n, label, ppl, gs);
  }
  return AP_OK;
}

static int one_iteration(job *j, char *err, size_t errlen) {
  int *no_progress = &j->no_progress;
  engine_stop stop = {should_stop, j};
  uint32_t it = j->state.iteration + 1;
  emit(j, AGENTPRUNE__V1__JOB_EVENT_TYPE__JOB_EVENT_ITERATION_STARTED, 0, "iteration %u started", it);

  Agentprune__V1__ProfileTable table = AGENTPRUNE__V1__PROFILE_TABLE__INIT;
  int rc = wl_profile(&j->w, &j->calib, j->grad_windows, &stop, &table, err, errlen);
  if (rc != AP_OK) return rc;
  fill_dppl_history(j, &table);
  emit(j, AGENTPRUNE__V1__JOB_EVENT_TYPE__JOB_EVENT_PROFILED, 0, "profiled %zu layers", table.n_layers);

  Agentprune__V1__JobState st = j->state;
  st.iteration = it;
  Agentprune__V1__DecideRequest req = AGENTPRUNE__V1__DECIDE_REQUEST__INIT;
  req.session_id = j->session_id;
  req.iteration = it;
  req.state = &st;
  req.profile = &table;

  Agentprune__V1__Decision local = AGENTPRUNE__V1__DECISION__INIT, *remote = NULL;
  const Agentprune__V1__Decision *d = NULL;
  int local_used = 0;
  if (!j->local_mode) {
    ap_rpc_status rs;
    int code = agent_call(j, "/agentprune.v1.Agent/Decide", &req.base, &agentprune__v1__decision__descriptor,
                          (ProtobufCMessage **)&remote, 600000, &rs);
    if (code == AP_OK) {
      d = remote;
    } else if (j->fallback_rule && transient(code)) {
      j->local_mode = 1;
      emit(j, AGENTPRUNE__V1__JOB_EVENT_TYPE__JOB_EVENT_AGENT_WAIT, 0,
           "agent unreachable for Decide (%s); deciding locally with the rule policy from now on", rs.message);
    } else {
      snprintf(err, errlen, "agent Decide: %s", rs.message);
      wl_table_clear(&table);
      return code == AP_CANCELLED ? AP_CANCELLED : AP_FAILED_PRECONDITION;
    }
  }
  if (!d) {
    if (decide_local(j, &req, &local, err, errlen) != 0) {
      wl_table_clear(&table);
      return AP_INTERNAL;
    }
    d = &local;
    local_used = 1;
  }

  /* Never trust a decision: unknown layers are skipped, targets clamped to
     [current, min(current + step cap, ceiling)]. */
  cJSON *entry = cJSON_CreateObject(), *dec = cJSON_AddArrayToObject(entry, "decision");
  cJSON_AddNumberToObject(entry, "iteration", it);
  char d_policy[64];
  snprintf(d_policy, sizeof d_policy, "%s", d->policy ? d->policy : "");
  cJSON_AddStringToObject(entry, "policy", local_used ? "rule-local-fallback" : d->policy);
  cJSON_AddBoolToObject(entry, "fallback", local_used || d->fallback);
  cJSON_AddStringToObject(entry, "fallback_reason",
                          local_used ? "agent unreachable: decided in pruner-svc" : d->fallback_reason);
  cJSON_AddStringToObject(entry, "rationale", d->rationale);
  if (d->usage) {
    j->usage.requests += d->usage->requests;
    j->usage.retries += d->usage->retries;
    j->usage.prompt_tokens += d->usage->prompt_tokens;
    j->usage.completion_tokens += d->usage->completion_tokens;
    j->usage.latency_ms += d->usage->latency_ms;
    j->usage.fallbacks += d->usage->fallbacks;
  }
  int changed = 0, probing = d->n_layers == 0 && d->n_probes > 0;
  double *targets = malloc((size_t)j->w.n_layers * sizeof(double));
  if (!targets) {
    snprintf(err, errlen, "out of memory for the layer targets");
    rc = AP_RESOURCE_EXHAUSTED;
  }
  for (int i = 0; targets && i < j->w.n_layers; i++) targets[i] = wl_layer_sparsity(&j->w, i);
  for (size_t k = 0; k < d->n_layers && rc == AP_OK; k++) {
    int i = find_layer(j, d->layers[k]->name);
    if (i < 0) {
      AP_WARN("job %s: the decision names an unknown layer %s: skipped", j->stored->id, d->layers[k]->name);
      continue;
    }
    double rho = wl_layer_sparsity(&j->w, i), t = d->layers[k]->target_sparsity;
    double hi = fmin(rho + j->step_cap, j->ceiling);
    if (!isfinite(t) || t <= rho) continue;
    if (t > hi + 1e-9) t = hi;
    cJSON *x = cJSON_CreateObject();
    cJSON_AddStringToObject(x, "name", d->layers[k]->name);
    cJSON_AddNumberToObject(x, "target_sparsity", t);
    cJSON_AddItemToArray(dec, x);
    targets[i] = t;
    changed++;
  }
  /* One sequential pass grows every chosen layer, block by block, as the
     one-shot baselines do (workload.h). */
  if (rc == AP_OK && changed) rc = wl_prune_sequential(&j->w, &j->calib, targets, 0, 0, &stop, err, errlen);
  cJSON *probes = NULL;
  if (rc == AP_OK && probing) {
    probes = cJSON_AddArrayToObject(entry, "probes");
    rc = run_probes(j, d, targets, probes, &stop, err, errlen);
  }
  free(targets);
  if (remote) protobuf_c_message_free_unpacked(&remote->base, NULL);
  if (local_used) ap_decision_clear(&local);
  wl_table_clear(&table);
  if (rc != AP_OK) {
    cJSON_Delete(entry);
    return rc;
  }
  emit_decision(j, dec, local_used ? "rule-local-fallback" : d_policy);
  double before_sparsity = j->state.global_sparsity;
  j->state.global_sparsity = wl_global_sparsity(&j->w);
  emit(j, AGENTPRUNE__V1__JOB_EVENT_TYPE__JOB_EVENT_APPLIED, 0, "applied %d layer targets: sparsity %.4f -> %.4f",
       changed, before_sparsity, j->state.global_sparsity);

  double ppl = j->state.current_ppl, nll;
  if (changed) {
    rc = wl_perplexity(&j->w, &j->check, &stop, &ppl, &nll, NULL, err, errlen);
    if (rc != AP_OK) {
      cJSON_Delete(entry);
      return rc;
    }
  }
  emit(j, AGENTPRUNE__V1__JOB_EVENT_TYPE__JOB_EVENT_EVALUATED, ppl, "ppl %.4f (accepted %.4f)", ppl,
       j->state.current_ppl);
  double before = j->state.current_ppl;
  /* A probe iteration changes no mask: it neither counts as a rollback nor
     as an iteration without progress. */
  int accepted = probing || (changed > 0 && isfinite(ppl) && ppl <= before * (1 + j->tau));
  *no_progress = changed == 0 && !probing ? *no_progress + 1 : 0;
  cJSON_AddNumberToObject(entry, "ppl", ppl);
  cJSON_AddNumberToObject(entry, "ppl_before", before);
  cJSON_AddBoolToObject(entry, "accepted", accepted);
  j->state.iteration = it;
  if (accepted) {
    j->state.current_ppl = ppl;
    j->state.consecutive_rollbacks = 0;
    snapshot_accepted(j);
  } else if (changed) {
    j->state.rollbacks++;
    j->state.consecutive_rollbacks++;
    rc = roll_back(j, err, errlen);
    j->state.global_sparsity = wl_global_sparsity(&j->w);
  }
  cJSON_AddNumberToObject(entry, "accepted_ppl", j->state.current_ppl);
  cJSON_AddNumberToObject(entry, "global_sparsity", j->state.global_sparsity);
  cJSON_AddItemToArray(j->trajectory, entry);
  cJSON_Delete(j->last_outcome);
  j->last_outcome = cJSON_CreateObject();
  cJSON_AddNumberToObject(j->last_outcome, "iteration", it);
  cJSON_AddBoolToObject(j->last_outcome, "accepted", accepted);
  cJSON_AddNumberToObject(j->last_outcome, "ppl_before", before);
  cJSON_AddNumberToObject(j->last_outcome, "ppl_after", ppl);
  cJSON_AddNumberToObject(j->last_outcome, "global_sparsity", j->state.global_sparsity);
  cJSON_AddStringToObject(j->last_outcome, "note",
                          probing   ? "probes measured"
                          : changed ? (accepted ? "accepted" : "rolled back: ppl rose past tau")
                                    : "no layer changed");
  if (probes) cJSON_AddItemToObject(j->last_outcome, "probes", cJSON_Duplicate(probes, 1));
  if (rc != AP_OK) return rc;
  /* The checkpoint carries the outcome before the agent hears it, so a
     resumed job re-sends exactly this Reflect. */
  char msg[256];
  snprintf(msg, sizeof msg, "iteration %u %s: ppl %.4f, sparsity %.4f", it,
           probing ? "measured probes" : accepted ? "accepted" : "rolled back", ppl,
           j->state.global_sparsity);
  rc = checkpoint(j, accepted ? AGENTPRUNE__V1__JOB_EVENT_TYPE__JOB_EVENT_ACCEPTED
                              : AGENTPRUNE__V1__JOB_EVENT_TYPE__JOB_EVENT_ROLLED_BACK,
                  ppl, msg, err, errlen);
  if (rc != AP_OK) return rc;
  return reflect(j, j->last_outcome, err, errlen);
}

/* ---- one-shot baselines --------------------------------------------------------- */

/* Prunes w to `target` with a baseline under the same engine and protocol. */
static int oneshot(workload *w, const char *policy, double target, unsigned nm_n, unsigned nm_m,
                   const wl_windows *calib, double owl_m, double owl_lambda, const engine_stop *stop, char *err,
                   size_t errlen) {
  int n = w->n_layers, rc = AP_OK;
  double *targets = calloc((size_t)n, sizeof(double));
  ap_plan_layer *pl = calloc((size_t)n, sizeof *pl);
  int nblocks = ap_model_config(w->model)->num_hidden_layers;
  double *frac = calloc((size_t)nblocks, sizeof(double)), *bs = calloc((size_t)nblocks, sizeof(double));
  if (!targets || !pl || !frac || !bs) {
    snprintf(err, errlen, "out of memory");
    rc = AP_RESOURCE_EXHAUSTED;
    goto done;
  }
  for (int i = 0; i < n; i++) {
    pl[i].params = wl_layer_params(w, i);
    pl[i].rho = wl_layer_sparsity(w, i);
    pl[i].block = (size_t)ap_model_linear(w->model, w->layer_index[i])->block;
  }
  if (!strcmp(policy, "owl") && !nm_m) {
    /* OWL's first pass measures outliers on the dense model. */
    rc = wl_collect_activations(w, calib, stop, err, errlen);
    if (rc == AP_OK) rc = wl_owl_outliers(w, owl_m, frac, err, errlen);
    if (rc == AP_OK && (ap_owl_sparsities(frac, (size_t)nblocks, target, owl_lambda, bs) != 0 ||
                        ap_plan_owl(pl, (size_t)n, bs, (size_t)nblocks, targets, NULL) != 0)) {
      snprintf(err, errlen, "OWL ratios could not be computed");
      rc = AP_INTERNAL;
    }
  } else if (ap_plan_uniform(pl, (size_t)n, target, 0, targets, NULL) != 0) {
    snprintf(err, errlen, "uniform plan failed");
    rc = AP_INTERNAL;
  }
  if (rc != AP_OK) goto done;
  if (!strcmp(policy, "magnitude")) {
    for (int i = 0; i < n && rc == AP_OK; i++) rc = wl_prune_layer(w, i, targets[i], nm_n, nm_m, 1, err, errlen);
  } else {
    rc = wl_prune_sequential(w, calib, targets, nm_n, nm_m, stop, err, errlen);
  }
done:
  free(targets);
  free(pl);
  free(frac);
  free(bs);
  return rc;
}

/* ---- finishing ------------------------------------------------------------------ */

static const char *kind_name(int k) { return ap_linear_kind_name((ap_linear_kind)k); }

static cJSON *job_document(job *j) {
  cJSON *doc = cJSON_CreateObject();
  cJSON_AddStringToObject(doc, "agentprune_version", "0.1.0");
  cJSON *jo = cJSON_AddObjectToObject(doc, "job");
  const Agentprune__V1__JobSpec *s = j->spec;
  cJSON_AddStringToObject(jo, "id", j->stored->id);
  cJSON_AddStringToObject(jo, "model_dir", s->model_dir);
  cJSON_AddStringToObject(jo, "calib", s->calib_path);
  cJSON_AddStringToObject(jo, "eval", s->eval_path);
  cJSON_AddStringToObject(jo, "test", s->test_path);
  cJSON_AddStringToObject(jo, "policy", j->policy);
  cJSON_AddStringToObject(jo, "structure", j->nm_m ? s->structure : "unstructured");
  cJSON_AddNumberToObject(jo, "target_sparsity", j->target);
  cJSON *pa = cJSON_AddObjectToObject(jo, "params");
  cJSON_AddNumberToObject(pa, "tau", j->tau);
  cJSON_AddNumberToObject(pa, "step_cap", j->step_cap);
  cJSON_AddNumberToObject(pa, "ceiling", j->ceiling);
  cJSON_AddNumberToObject(pa, "calib_windows", j->calib.n);
  cJSON_AddNumberToObject(pa, "eval_windows", j->check.n);
  cJSON_AddNumberToObject(pa, "grad_windows", j->grad_windows);
  cJSON_AddNumberToObject(pa, "ctx", j->L);
  cJSON_AddNumberToObject(pa, "max_iterations", j->max_iter);
  cJSON_AddNumberToObject(pa, "max_consecutive_rollbacks", j->max_rb);
  cJSON_AddNumberToObject(pa, "owl_m", j->owl_m);
  cJSON_AddNumberToObject(pa, "owl_lambda", j->owl_lambda);
  cJSON_AddNumberToObject(pa, "seed", (double)s->seed);
  cJSON_AddStringToObject(pa, "sample", j->random ? "random" : "first");
  cJSON_AddStringToObject(pa, "agent", s->agent_addr);
  cJSON *res = cJSON_AddObjectToObject(doc, "result");
  cJSON_AddNumberToObject(res, "dense_ppl", j->dense_full_ppl);
  cJSON_AddNumberToObject(res, "ppl", j->ppl_full);
  if (j->has_test) {
    cJSON_AddNumberToObject(res, "dense_test_ppl", j->dense_test_ppl);
    cJSON_AddNumberToObject(res, "test_ppl", j->test_ppl);
  }
  cJSON_AddNumberToObject(res, "check_dense_ppl", j->state.dense_ppl);
  cJSON_AddNumberToObject(res, "check_ppl", j->state.current_ppl);
  cJSON_AddNumberToObject(res, "sparsity", j->state.global_sparsity);
  cJSON_AddNumberToObject(res, "iterations", j->state.iteration);
  cJSON_AddNumberToObject(res, "rollbacks", j->state.rollbacks);
  cJSON_AddStringToObject(res, "stop_reason", j->stop_reason);
  cJSON_AddNumberToObject(res, "wall_s", j->wall_s + (mono_s() - j->started));
  cJSON *layers = cJSON_AddArrayToObject(doc, "layers");
  for (int i = 0; i < j->w.n_layers; i++) {
    const ap_linear *l = ap_model_linear(j->w.model, j->w.layer_index[i]);
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "name", l->name);
    cJSON_AddStringToObject(o, "kind", kind_name(l->kind));
    cJSON_AddNumberToObject(o, "block", l->block);
    cJSON_AddNumberToObject(o, "params", (double)wl_layer_params(&j->w, i));
    cJSON_AddNumberToObject(o, "sparsity", wl_layer_sparsity(&j->w, i));
    cJSON_AddItemToArray(layers, o);
  }
  cJSON_AddItemToObject(doc, "trajectory", cJSON_Duplicate(j->trajectory, 1));
  if (j->baselines) cJSON_AddItemToObject(doc, "baselines", cJSON_Duplicate(j->baselines, 1));
  cJSON *u = cJSON_AddObjectToObject(doc, "agent_usage");
  cJSON_AddNumberToObject(u, "requests", (double)j->usage.requests);
  cJSON_AddNumberToObject(u, "retries", (double)j->usage.retries);
  cJSON_AddNumberToObject(u, "prompt_tokens", (double)j->usage.prompt_tokens);
  cJSON_AddNumberToObject(u, "completion_tokens", (double)j->usage.completion_tokens);
  cJSON_AddNumberToObject(u, "latency_ms", j->usage.latency_ms);
  cJSON_AddNumberToObject(u, "fallbacks", (double)j->usage.fallbacks);
  return doc;
}

/* The final profile of the pruned model for the report (best effort). */
static void add_final_profile(job *j, cJSON *doc) {
  engine_stop stop = {should_stop, j};
  Agentprune__V1__ProfileTable t = AGENTPRUNE__V1__PROFILE_TABLE__INIT;
  char err[256];
  if (wl_profile(&j->w, &j->calib, j->grad_windows, &stop, &t, err, sizeof err) != AP_OK) return;
  cJSON *arr = cJSON_AddArrayToObject(doc, "profile");
  for (size_t i = 0; i < t.n_layers; i++) {
    const Agentprune__V1__LayerProfile *l = t.layers[i];
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "name", l->name);
    cJSON_AddStringToObject(o, "kind", kind_name((int)l->kind - 1));
    cJSON_AddNumberToObject(o, "block", l->block);
    cJSON_AddNumberToObject(o, "params", (double)l->params);
    cJSON_AddNumberToObject(o, "s", l->s);
    cJSON_AddNumberToObject(o, "g", l->g);
    cJSON_AddNumberToObject(o, "z_s", l->z_s);
    cJSON_AddNumberToObject(o, "z_g", l->z_g);
    cJSON_AddNumberToObject(o, "rho", l->rho);
    cJSON_AddItemToArray(arr, o);
  }
  wl_table_clear(&t);
}

static int run_baselines(job *j, char *err, size_t errlen) {
  const char *cmp = j->spec->compare;
  if (!cmp || !*cmp) return AP_OK;
  engine_stop stop = {should_stop, j};
  j->baselines = cJSON_CreateArray();
  char buf[256];
  snprintf(buf, sizeof buf, "%s", cmp);
  for (char *save = NULL, *pol = strtok_r(buf, ",", &save); pol; pol = strtok_r(NULL, ",", &save)) {
    workload b;
    int rc = wl_open(&b, j->spec->model_dir, j->p->device, j->p->threads, j->spec->include_pattern,
                     j->spec->exclude_pattern, err, errlen);
    if (rc != AP_OK) return rc;
    /* The same global sparsity as this job reached: a fair comparison. */
    rc = oneshot(&b, pol, j->state.global_sparsity, j->nm_n, j->nm_m, &j->calib, j->owl_m, j->owl_lambda, &stop, err,
                 errlen);
    double ppl = 0, nll, tppl = 0;
    if (rc == AP_OK) rc = wl_perplexity(&b, &j->eval_all, &stop, &ppl, &nll, NULL, err, errlen);
    if (rc == AP_OK && j->has_test) rc = wl_perplexity(&b, &j->test_all, &stop, &tppl, &nll, NULL, err, errlen);
    if (rc == AP_OK) {
      cJSON *o = cJSON_CreateObject();
      cJSON_AddStringToObject(o, "policy", pol);
      cJSON_AddNumberToObject(o, "sparsity", wl_global_sparsity(&b));
      cJSON_AddNumberToObject(o, "ppl", ppl);
      if (j->has_test) cJSON_AddNumberToObject(o, "test_ppl", tppl);
      cJSON_AddItemToArray(j->baselines, o);
      emit(j, AGENTPRUNE__V1__JOB_EVENT_TYPE__JOB_EVENT_EVALUATED, ppl, "baseline %s at %.4f: ppl %.4f%s", pol,
           wl_global_sparsity(&b), ppl, j->has_test ? " (test measured too)" : "");
    }
    wl_close(&b);
    if (rc != AP_OK) return rc;
  }
  return AP_OK;
}

static int write_text_file(const char *path, const char *text, char *err, size_t errlen) {
  char tmp[4300];
  if (snprintf(tmp, sizeof tmp, "%s.tmp", path) >= (int)sizeof tmp) {
    snprintf(err, errlen, "output path too long");
    return -1;
  }
  FILE *f = fopen(tmp, "w");
  int ok = f && fputs(text, f) >= 0;
  if (f) ok &= fclose(f) == 0;
  if (!ok || rename(tmp, path) != 0) {
    snprintf(err, errlen, "cannot write %.900s", path);
    return -1;
  }
  return 0;
}

static int finish(job *j, char *err, size_t errlen) {
  engine_stop stop = {should_stop, j};
  double nll;
  int rc = wl_perplexity(&j->w, &j->eval_all, &stop, &j->ppl_full, &nll, NULL, err, errlen);
  if (rc == AP_OK && j->has_test) rc = wl_perplexity(&j->w, &j->test_all, &stop, &j->test_ppl, &nll, NULL, err, errlen);
  if (rc == AP_OK) rc = run_baselines(j, err, errlen);
  if (rc != AP_OK) return rc;

  ap_st *st = NULL;
  if (ap_st_open(j->spec->model_dir, &st, err, errlen) != 0) return AP_INTERNAL;
  export_layer *el = calloc((size_t)j->w.n_layers, sizeof *el);
  if (!el) {
    ap_st_close(st);
    snprintf(err, errlen, "out of memory");
    return AP_RESOURCE_EXHAUSTED;
  }
  for (int i = 0; i < j->w.n_layers; i++) {
    const ap_linear *l = ap_model_linear(j->w.model, j->w.layer_index[i]);
    el[i] = (export_layer){l->name, j->w.masks[i], (size_t)l->rows, (size_t)l->cols};
  }
  rc = export_model(j->spec->model_dir, st, el, (size_t)j->w.n_layers, j->spec->out_dir, err, errlen);
  free(el);
  ap_st_close(st);
  if (rc != 0) return AP_INTERNAL;

  cJSON *doc = job_document(j);
  add_final_profile(j, doc);
  char *text = cJSON_Print(doc);
  char path[4200];
  snprintf(path, sizeof path, "%s/agentprune.json", j->spec->out_dir);
  rc = text ? write_text_file(path, text, err, errlen) : -1;
  cJSON_free(text);
  snprintf(path, sizeof path, "%s/report.html", j->spec->out_dir);
  if (rc == 0) rc = ap_report_write(doc, path, err, errlen);
  cJSON_Delete(doc);
  if (rc != 0) return AP_INTERNAL;
  emit(j, AGENTPRUNE__V1__JOB_EVENT_TYPE__JOB_EVENT_EXPORTED, j->ppl_full, "exported to %s", j->spec->out_dir);
  return AP_OK;
}

/* ---- the job ------------------------------------------------------------------- */

static int agent_policy_name(const char *p) { return !strcmp(p, "rule") || !strcmp(p, "llm"); }

static void set_params(job *j) {
  const Agentprune__V1__JobSpec *s = j->spec;
  j->policy = s->policy && *s->policy ? s->policy : "rule";
  j->target = s->target_sparsity;
  j->tau = s->tau > 0 ? s->tau : 0.05;
  j->step_cap = s->step_cap > 0 ? s->step_cap : 0.10;
  j->ceiling = s->ceiling > 0 ? s->ceiling : 0.90;
  j->owl_m = s->owl_m > 0 ? s->owl_m : AP_OWL_DEFAULT_M;
  j->owl_lambda = s->owl_lambda > 0 ? s->owl_lambda : AP_OWL_DEFAULT_LAMBDA;
  j->calib_windows = s->calib_windows ? (int)s->calib_windows : 128;
  j->eval_windows = s->eval_windows ? (int)s->eval_windows : 64;
  j->grad_windows = s->grad_windows ? (int)s->grad_windows : 16;
  j->max_iter = s->max_iterations ? (int)s->max_iterations : 60;
  j->max_rb = s->max_consecutive_rollbacks ? (int)s->max_consecutive_rollbacks : 4;
  j->random = s->sample && !strcmp(s->sample, "random");
  j->fallback_rule = s->agent_fallback && !strcmp(s->agent_fallback, "rule");
  if (s->structure && *s->structure && strcmp(s->structure, "unstructured"))
    sscanf(s->structure, "%u:%u", &j->nm_n, &j->nm_m);
}

static int prepare(job *j, char *err, size_t errlen) {
  const Agentprune__V1__JobSpec *s = j->spec;
  int rc = wl_open(&j->w, s->model_dir, s->device && *s->device ? s->device : j->p->device, j->p->threads,
                   s->include_pattern, s->exclude_pattern, err, errlen);
  if (rc != AP_OK) return rc;
  j->L = s->ctx ? (int)s->ctx : ap_model_default_ctx(j->w.model);
  if ((rc = wl_windows_from_file(&j->w, s->calib_path, j->L, j->calib_windows, j->random, s->seed, &j->calib, err,
                                 errlen)) ||
      (rc = wl_windows_from_file(&j->w, s->eval_path, j->L, j->eval_windows, j->random, s->seed + 1, &j->check, err,
                                 errlen)) ||
      (rc = wl_windows_from_file(&j->w, s->eval_path, j->L, 0, 0, 0, &j->eval_all, err, errlen)))
    return rc;
  j->has_test = s->test_path && *s->test_path;
  if (j->has_test && (rc = wl_windows_from_file(&j->w, s->test_path, j->L, 0, 0, 0, &j->test_all, err, errlen)))
    return rc;
  /* OWL's outlier shares of the dense model, the allocation prior of the
     agent policies: measured before any checkpoint's masks are applied, so a
     resumed job sends the same profile values. */
  if (agent_policy_name(j->policy)) {
    engine_stop stop = {should_stop, j};
    if ((rc = wl_measure_dense_outliers(&j->w, &j->calib, &stop, err, errlen))) return rc;
  }
  j->accepted = calloc((size_t)j->w.n_layers, sizeof *j->accepted);
  if (!j->accepted) return AP_RESOURCE_EXHAUSTED;
  for (int i = 0; i < j->w.n_layers; i++)
    if (!(j->accepted[i] = ap_bitmap_alloc((size_t)wl_layer_params(&j->w, i)))) return AP_RESOURCE_EXHAUSTED;
  return AP_OK;
}

static int agent_policy(const job *j) { return !strcmp(j->policy, "rule") || !strcmp(j->policy, "llm"); }

static int run(job *j, char *err, size_t errlen) {
  engine_stop stop = {should_stop, j};
  int rc = prepare(j, err, errlen);
  if (rc != AP_OK) return rc;
  if (j->nm_m && agent_policy(j)) {
    snprintf(err, errlen, "structure %s runs with the one-shot baselines (wanda, magnitude); the agent policies prune "
                          "unstructured", j->spec->structure);
    return AP_INVALID_ARGUMENT;
  }
  int resumed = restore(j, err, errlen);
  if (resumed < 0) return AP_DATA_LOSS;
  j->state.global_sparsity = wl_global_sparsity(&j->w);
  j->state.target_sparsity = j->target;
  j->state.max_iterations = (uint32_t)j->max_iter;
  j->state.tau = j->tau;
  j->state.max_probes = AP_MAX_PROBES;
  if (resumed) {
    snapshot_accepted(j);
    emit(j, AGENTPRUNE__V1__JOB_EVENT_TYPE__JOB_EVENT_RESUMED, j->state.current_ppl,
         "resumed from the checkpoint of iteration %u (sparsity %.4f)", j->state.iteration, j->state.global_sparsity);
  } else {
    double nll;
    emit(j, AGENTPRUNE__V1__JOB_EVENT_TYPE__JOB_EVENT_STARTED, 0, "started: %d layers, %d calibration windows of %d",
         j->w.n_layers, j->calib.n, j->L);
    if ((rc = wl_perplexity(&j->w, &j->check, &stop, &j->state.dense_ppl, &nll, NULL, err, errlen)) ||
        (rc = wl_perplexity(&j->w, &j->eval_all, &stop, &j->dense_full_ppl, &nll, NULL, err, errlen)) ||
        (j->has_test && (rc = wl_perplexity(&j->w, &j->test_all, &stop, &j->dense_test_ppl, &nll, NULL, err, errlen))))
      return rc;
    j->state.current_ppl = j->state.dense_ppl;
    char msg[256];
    snprintf(msg, sizeof msg, "dense ppl %.4f on %d check windows (%.4f over all %d eval windows)", j->state.dense_ppl,
             j->check.n, j->dense_full_ppl, j->eval_all.n);
    if ((rc = checkpoint(j, AGENTPRUNE__V1__JOB_EVENT_TYPE__JOB_EVENT_BASELINE, j->state.dense_ppl, msg, err, errlen)))
      return rc;
  }

  if (!agent_policy(j)) {
    rc = oneshot(&j->w, j->policy, j->nm_m ? (double)j->nm_n / j->nm_m : j->target, j->nm_n, j->nm_m, &j->calib,
                 j->owl_m, j->owl_lambda, &stop, err, errlen);
    if (rc != AP_OK) return rc;
    double nll;
    j->state.global_sparsity = wl_global_sparsity(&j->w);
    j->state.iteration = 1;
    if ((rc = wl_perplexity(&j->w, &j->check, &stop, &j->state.current_ppl, &nll, NULL, err, errlen))) return rc;
    snprintf(j->stop_reason, sizeof j->stop_reason, "one_shot");
    emit(j, AGENTPRUNE__V1__JOB_EVENT_TYPE__JOB_EVENT_APPLIED, j->state.current_ppl, "%s at %.4f: ppl %.4f", j->policy,
         j->state.global_sparsity, j->state.current_ppl);
    return finish(j, err, errlen);
  }

  if ((rc = open_session(j, err, errlen))) return rc;
  /* A resumed job re-sends the outcome it checkpointed; the agent answers a
     repeat with its stored Ack, so this is safe whether or not it arrived. */
  if (resumed && j->last_outcome && (rc = reflect(j, j->last_outcome, err, errlen))) return rc;
  for (;;) {
    double tol = 0.005;
    if (j->state.global_sparsity >= j->target - tol) {
      snprintf(j->stop_reason, sizeof j->stop_reason, "target_reached");
      break;
    }
    if ((int)j->state.iteration >= j->max_iter) {
      snprintf(j->stop_reason, sizeof j->stop_reason, "max_iterations");
      break;
    }
    if ((int)j->state.consecutive_rollbacks >= j->max_rb) {
      snprintf(j->stop_reason, sizeof j->stop_reason, "consecutive_rollbacks");
      break;
    }
    if (j->no_progress >= 2) {
      snprintf(j->stop_reason, sizeof j->stop_reason, "no_progress");
      break;
    }
    if (should_stop(j)) return AP_CANCELLED;
    j->event_iteration = j->state.iteration + 1;
    rc = one_iteration(j, err, errlen);
    j->event_iteration = 0;
    if (rc) return rc;
  }
  return finish(j, err, errlen);
}

/* Closes the agent session of a job whose FINISHED event is durable. Never
   before: a pruner killed between the two would resume the job and re-send
   its last Reflect to a closed session, which fails the finished job. */
static void close_session(job *j) {
  if (j->local_mode || !j->session_id[0] || !j->agent) return;
  Agentprune__V1__CloseSessionRequest req = AGENTPRUNE__V1__CLOSE_SESSION_REQUEST__INIT;
  req.session_id = j->session_id;
  ProtobufCMessage *ack = NULL;
  ap_rpc_status st;
  if (ap_rpc_unary(j->agent, "/agentprune.v1.Agent/CloseSession", &req.base, &agentprune__v1__ack__descriptor, &ack,
                   10000, &st) != AP_OK)
    AP_WARN("job %s: CloseSession failed: %s", j->stored->id, st.message);
  if (ack) protobuf_c_message_free_unpacked(ack, NULL);
}

static void run_job(pruner *p, job_runner *r) {
  job j;
  memset(&j, 0, sizeof j);
  j.p = p;
  j.r = r;
  j.started = mono_s();
  j.trajectory = cJSON_CreateArray();
  agentprune__v1__job_state__init(&j.state);
  agentprune__v1__usage__init(&j.usage);
  char err[1024] = "";
  if (ap_js_job_get(p->store, r->id, &j.stored) != 0) {
    AP_ERROR("job %s vanished from the store", r->id);
    cJSON_Delete(j.trajectory);
    return;
  }
  if (j.stored->status == AGENTPRUNE__V1__JOB_STATUS__JOB_STATUS_SUCCEEDED ||
      j.stored->status == AGENTPRUNE__V1__JOB_STATUS__JOB_STATUS_FAILED ||
      j.stored->status == AGENTPRUNE__V1__JOB_STATUS__JOB_STATUS_CANCELLED || !j.stored->spec) {
    agentprune__v1__job__free_unpacked(j.stored, NULL);
    cJSON_Delete(j.trajectory);
    return;
  }
  j.spec = j.stored->spec;
  set_params(&j);
  j.status = AGENTPRUNE__V1__JOB_STATUS__JOB_STATUS_RUNNING;
  if (j.spec->agent_addr && *j.spec->agent_addr)
    j.agent = ap_rpc_client_new(j.spec->agent_addr, &(ap_rpc_client_opts){.max_attempts = 1});

  int rc = run(&j, err, sizeof err);
  if (rc == AP_OK) {
    j.status = AGENTPRUNE__V1__JOB_STATUS__JOB_STATUS_SUCCEEDED;
    emit(&j, AGENTPRUNE__V1__JOB_EVENT_TYPE__JOB_EVENT_FINISHED, j.ppl_full,
         "finished (%s): sparsity %.4f, eval ppl %.4f -> %.4f%s", j.stop_reason, j.state.global_sparsity,
         j.dense_full_ppl, j.ppl_full, j.has_test ? ", test measured" : "");
    close_session(&j);
  } else if (p->stopping && !r->cancel) {
    /* Shutdown: leave the job RUNNING so the next start resumes it. */
    AP_INFO("job %s paused by shutdown at iteration %u", r->id, j.state.iteration);
  } else if (rc == AP_CANCELLED || r->cancel) {
    j.status = AGENTPRUNE__V1__JOB_STATUS__JOB_STATUS_CANCELLED;
    snprintf(j.stop_reason, sizeof j.stop_reason, "cancelled");
    emit(&j, AGENTPRUNE__V1__JOB_EVENT_TYPE__JOB_EVENT_CANCELLED, 0,
         "cancelled at iteration %u; the last accepted checkpoint is kept", j.state.iteration);
  } else {
    j.status = AGENTPRUNE__V1__JOB_STATUS__JOB_STATUS_FAILED;
    snprintf(j.error, sizeof j.error, "%.500s", err); /* err may be longer than the record holds */
    emit(&j, AGENTPRUNE__V1__JOB_EVENT_TYPE__JOB_EVENT_FAILED, 0, "failed (%s): %s", ap_status_name(rc), err);
  }
  ap_rpc_client_free(j.agent);
  if (j.accepted)
    for (int i = 0; i < j.w.n_layers; i++) free(j.accepted[i]);
  free(j.accepted);
  wl_windows_free(&j.calib);
  wl_windows_free(&j.check);
  wl_windows_free(&j.eval_all);
  wl_windows_free(&j.test_all);
  wl_close(&j.w);
  cJSON_Delete(j.trajectory);
  cJSON_Delete(j.last_outcome);
  cJSON_Delete(j.baselines);
  agentprune__v1__job__free_unpacked(j.stored, NULL);
}

/* ---- runner threads ------------------------------------------------------------- */

/* A job cancelled while it waited for a free slot never runs: it is marked
   cancelled here, as CancelJob leaves that to the runner it found. */
static void cancel_queued(pruner *p, const char *id) {
  Agentprune__V1__Job *rec = NULL;
  if (ap_js_job_get(p->store, id, &rec) != 0) return;
  if (rec->status != AGENTPRUNE__V1__JOB_STATUS__JOB_STATUS_SUCCEEDED &&
      rec->status != AGENTPRUNE__V1__JOB_STATUS__JOB_STATUS_FAILED &&
      rec->status != AGENTPRUNE__V1__JOB_STATUS__JOB_STATUS_CANCELLED) {
    char *saved_reason = rec->stop_reason;
    rec->status = AGENTPRUNE__V1__JOB_STATUS__JOB_STATUS_CANCELLED;
    rec->stop_reason = "cancelled";
    rec->updated_unix_ms = now_ms();
    Agentprune__V1__JobEvent ev = AGENTPRUNE__V1__JOB_EVENT__INIT;
    ev.job_id = rec->id;
    ev.time_unix_ms = now_ms();
    ev.type = AGENTPRUNE__V1__JOB_EVENT_TYPE__JOB_EVENT_CANCELLED;
    ev.status = AGENTPRUNE__V1__JOB_STATUS__JOB_STATUS_CANCELLED;
    ev.message = "cancelled before it ran";
    int rc = ap_js_job_put(p->store, rec, &ev, NULL);
    if (rc) AP_ERROR("job %s: cannot record the cancel: %s", id, ap_js_strerror(rc));
    else AP_INFO("job %s cancelled before it ran", id);
    rec->stop_reason = saved_reason; /* free_unpacked must not free the literal */
  }
  agentprune__v1__job__free_unpacked(rec, NULL);
}

static void *runner_main(void *arg) {
  job_runner *r = arg;
  pruner *p = r->p;
  pthread_mutex_lock(&p->lock);
  while (p->running >= p->max_running && !p->stopping && !r->cancel) pthread_cond_wait(&p->changed, &p->lock);
  int cancelled = r->cancel, go = !p->stopping && !cancelled;
  if (go) p->running++;
  pthread_mutex_unlock(&p->lock);
  if (go) run_job(p, r);
  else if (cancelled) cancel_queued(p, r->id);
  pthread_mutex_lock(&p->lock);
  if (go) p->running--;
  for (job_runner **pp = &p->runners; *pp; pp = &(*pp)->next)
    if (*pp == r) {
      *pp = r->next;
      break;
    }
  pthread_cond_broadcast(&p->changed);
  pthread_mutex_unlock(&p->lock);
  free(r);
  return NULL;
}

int jobs_start(pruner *p, const char *job_id, char *err, size_t errlen) {
  pthread_mutex_lock(&p->lock);
  if (p->stopping) {
    pthread_mutex_unlock(&p->lock);
    snprintf(err, errlen, "pruner-svc is shutting down");
    return AP_UNAVAILABLE;
  }
  for (job_runner *r = p->runners; r; r = r->next)
    if (!strcmp(r->id, job_id)) {
      pthread_mutex_unlock(&p->lock);
      return AP_OK;
    }
  job_runner *r = calloc(1, sizeof *r);
  if (!r) {
    pthread_mutex_unlock(&p->lock);
    snprintf(err, errlen, "out of memory");
    return AP_RESOURCE_EXHAUSTED;
  }
  snprintf(r->id, sizeof r->id, "%s", job_id);
  r->p = p;
  pthread_t th;
  pthread_attr_t attr;
  pthread_attr_init(&attr);
  pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
  if (pthread_create(&th, &attr, runner_main, r) != 0) {
    pthread_attr_destroy(&attr);
    pthread_mutex_unlock(&p->lock);
    free(r);
    snprintf(err, errlen, "cannot start a runner thread");
    return AP_RESOURCE_EXHAUSTED;
  }
  pthread_attr_destroy(&attr);
  r->next = p->runners;
  p->runners = r;
  pthread_mutex_unlock(&p->lock);
  return AP_OK;
}

int jobs_cancel(pruner *p, const char *job_id) {
  int found = 0;
  pthread_mutex_lock(&p->lock);
  for (job_runner *r = p->runners; r; r = r->next)
    if (!strcmp(r->id, job_id)) {
      r->cancel = 1;
      found = 1;
    }
  pthread_cond_broadcast(&p->changed);
  pthread_mutex_unlock(&p->lock);
  return found;
}

void jobs_resume_all(pruner *p) {
  Agentprune__V1__Job **jobs = NULL;
  size_t n = 0;
  int rc = ap_js_job_list(p->store, 0, 1, &jobs, &n);
  if (rc) {
    AP_ERROR("cannot list unfinished jobs: %s", ap_js_strerror(rc));
    return;
  }
  for (size_t i = 0; i < n; i++) {
    char err[256];
    AP_INFO("resuming job %s", jobs[i]->id);
    if (jobs_start(p, jobs[i]->id, err, sizeof err) != AP_OK) AP_ERROR("job %s: %s", jobs[i]->id, err);
  }
  ap_js_jobs_free(jobs, n);
}

void jobs_shutdown(pruner *p) {
  pthread_mutex_lock(&p->lock);
  p->stopping = 1;
  pthread_cond_broadcast(&p->changed);
  while (p->runners) pthread_cond_wait(&p->changed, &p->lock);
  pthread_mutex_unlock(&p->lock);
}
