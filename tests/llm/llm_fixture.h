/*
 * llm_fixture.h - shared pieces of the llm policy tests: a decision context
 * with a deterministic profile table and history, and the scripted mock
 * server (mock_llm_server.py) run as a child process.
 */
#ifndef AP_LLM_FIXTURE_H
#define AP_LLM_FIXTURE_H

#include <cjson/cJSON.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "policy.h"

/* Each test uses a different subset of these helpers. */
#define FX_FN static __attribute__((unused))

static const Agentprune__V1__LayerKind fx_kinds[7] = {
    AGENTPRUNE__V1__LAYER_KIND__LAYER_KIND_Q,    AGENTPRUNE__V1__LAYER_KIND__LAYER_KIND_K,
    AGENTPRUNE__V1__LAYER_KIND__LAYER_KIND_V,    AGENTPRUNE__V1__LAYER_KIND__LAYER_KIND_O,
    AGENTPRUNE__V1__LAYER_KIND__LAYER_KIND_GATE, AGENTPRUNE__V1__LAYER_KIND__LAYER_KIND_UP,
    AGENTPRUNE__V1__LAYER_KIND__LAYER_KIND_DOWN};
static const char *const fx_proj[7] = {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                                       "self_attn.o_proj", "mlp.gate_proj",    "mlp.up_proj",
                                       "mlp.down_proj"};

typedef struct {
  Agentprune__V1__Session session;
  Agentprune__V1__Constraints cons;
  Agentprune__V1__DecideRequest req;
  Agentprune__V1__JobState state;
  Agentprune__V1__ProfileTable table;
  Agentprune__V1__History history;
  ap_decide_ctx ctx;
} fixture;

/* A table of `blocks` blocks x 7 layers with fixed, varied z-scores, every
 * layer at sparsity `rho`; a fresh job state; an empty history. */
FX_FN void fx_init(fixture *f, unsigned blocks, double rho) {
  memset(f, 0, sizeof *f);
  agentprune__v1__session__init(&f->session);
  agentprune__v1__constraints__init(&f->cons);
  agentprune__v1__decide_request__init(&f->req);
  agentprune__v1__job_state__init(&f->state);
  agentprune__v1__profile_table__init(&f->table);
  agentprune__v1__history__init(&f->history);
  f->cons.step_cap = 0.10;
  f->cons.ceiling = 0.90;
  f->cons.target_sparsity = 0.50;
  f->cons.tolerance = 0.005;
  f->cons.structure = strdup("unstructured");
  f->session.constraints = &f->cons;
  f->session.session_id = strdup("sess-1");
  f->session.policy = strdup("llm");
  size_t n = (size_t)blocks * 7;
  f->table.n_layers = n;
  f->table.layers = calloc(n, sizeof *f->table.layers);
  for (size_t i = 0; i < n; i++) {
    Agentprune__V1__LayerProfile *l = calloc(1, sizeof *l);
    agentprune__v1__layer_profile__init(l);
    unsigned b = (unsigned)(i / 7), k = (unsigned)(i % 7);
    char name[96];
    snprintf(name, sizeof name, "model.layers.%u.%s", b, fx_proj[k]);
    l->name = strdup(name);
    l->kind = fx_kinds[k];
    l->block = b;
    l->params = k < 4 ? 4096 : 11008;
    l->s = 0.01 + 0.001 * (double)((i * 7) % 11);
    l->g = 1e-4 * (1 + (double)((i * 5) % 7));
    l->z_s = ((double)((i * 37) % 17) - 8.0) / 4.0;
    l->z_g = ((double)((i * 53) % 13) - 6.0) / 3.0;
    l->rho = rho;
    f->table.layers[i] = l;
  }
  f->state.iteration = 1;
  f->state.global_sparsity = rho;
  f->state.target_sparsity = 0.5;
  f->state.dense_ppl = 12.5;
  f->state.current_ppl = 12.5;
  f->state.max_iterations = 60;
  f->state.tau = 0.05;
  f->req.session_id = strdup("sess-1");
  f->req.iteration = 1;
  f->req.state = &f->state;
  f->req.profile = &f->table;
  f->ctx.session = &f->session;
  f->ctx.req = &f->req;
  f->ctx.history = &f->history;
  f->ctx.deadline_ms = INT64_MAX;
}

/* Appends a history entry (decision copied, outcome optional). */
FX_FN void fx_add_history(fixture *f, unsigned iteration, const Agentprune__V1__Decision *d, int has_outcome,
                           int accepted, double ppl_before, double ppl_after, double sparsity_before,
                           double sparsity_after) {
  Agentprune__V1__HistoryEntry *e = calloc(1, sizeof *e);
  agentprune__v1__history_entry__init(e);
  e->iteration = iteration;
  Agentprune__V1__Decision *dc = calloc(1, sizeof *dc);
  agentprune__v1__decision__init(dc);
  dc->iteration = iteration;
  dc->n_layers = d->n_layers;
  dc->layers = d->n_layers ? calloc(d->n_layers, sizeof *dc->layers) : NULL;
  for (size_t i = 0; i < d->n_layers; i++) {
    dc->layers[i] = calloc(1, sizeof *dc->layers[i]);
    agentprune__v1__layer_target__init(dc->layers[i]);
    dc->layers[i]->name = strdup(d->layers[i]->name);
    dc->layers[i]->target_sparsity = d->layers[i]->target_sparsity;
  }
  dc->rationale = strdup(d->rationale ? d->rationale : "");
  dc->policy = strdup(d->policy ? d->policy : "llm");
  dc->fallback = d->fallback;
  dc->fallback_reason = strdup(d->fallback_reason ? d->fallback_reason : "");
  e->decision = dc;
  if (has_outcome) {
    Agentprune__V1__Outcome *o = calloc(1, sizeof *o);
    agentprune__v1__outcome__init(o);
    o->iteration = iteration;
    o->accepted = accepted;
    o->ppl_before = ppl_before;
    o->ppl_after = ppl_after;
    o->global_sparsity = accepted ? sparsity_after : sparsity_before;
    e->outcome = o;
  }
  Agentprune__V1__JobState *st = calloc(1, sizeof *st);
  agentprune__v1__job_state__init(st);
  st->iteration = iteration;
  st->global_sparsity = sparsity_before;
  e->state = st;
  f->history.entries = realloc(f->history.entries, (f->history.n_entries + 1) * sizeof *f->history.entries);
  f->history.entries[f->history.n_entries++] = e;
}

FX_FN void fx_free(fixture *f) {
  for (size_t i = 0; i < f->table.n_layers; i++) {
    free(f->table.layers[i]->name);
    free(f->table.layers[i]->dppl_history);
    free(f->table.layers[i]);
  }
  free(f->table.layers);
  for (size_t i = 0; i < f->history.n_entries; i++) {
    Agentprune__V1__HistoryEntry *e = f->history.entries[i];
    Agentprune__V1__Decision *d = e->decision;
    for (size_t k = 0; k < d->n_layers; k++) {
      free(d->layers[k]->name);
      free(d->layers[k]);
    }
    free(d->layers);
    free(d->rationale);
    free(d->policy);
    free(d->fallback_reason);
    free(d);
    free(e->outcome);
    free(e->state);
    free(e);
  }
  free(f->history.entries);
  free(f->cons.structure);
  free(f->session.session_id);
  free(f->session.policy);
  free(f->req.session_id);
}

FX_FN double fx_global(const fixture *f) {
  double num = 0, den = 0;
  for (size_t i = 0; i < f->table.n_layers; i++) {
    num += (double)f->table.layers[i]->params * f->table.layers[i]->rho;
    den += (double)f->table.layers[i]->params;
  }
  return num / den;
}

/* ------------------------------------------------------------ mock server */

typedef struct {
  pid_t pid;
  int port;
  char log[256];
  char url[64];
} mock_server;

/* Starts mock_llm_server.py; returns 0 once it printed its port. */
FX_FN int mock_start(mock_server *m, const char *python, const char *script, const char *scenario) {
  memset(m, 0, sizeof *m);
  snprintf(m->log, sizeof m->log, "/tmp/ap_llm_mock_%d_%ld.jsonl", (int)getpid(), random());
  unlink(m->log);
  int fds[2];
  if (pipe(fds) != 0) return -1;
  pid_t pid = fork();
  if (pid < 0) return -1;
  if (pid == 0) {
    dup2(fds[1], 1);
    close(fds[0]);
    close(fds[1]);
    execl(python, python, script, "--log", m->log, "--scenario", scenario ? scenario : "strategy", (char *)NULL);
    _exit(127);
  }
  close(fds[1]);
  FILE *f = fdopen(fds[0], "r");
  char line[64] = "";
  if (!f || !fgets(line, sizeof line, f) || sscanf(line, "PORT %d", &m->port) != 1) {
    if (f) fclose(f);
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
    return -1;
  }
  fclose(f);
  m->pid = pid;
  snprintf(m->url, sizeof m->url, "http://127.0.0.1:%d", m->port);
  return 0;
}

FX_FN void mock_stop(mock_server *m) {
  if (m->pid > 0) {
    kill(m->pid, SIGTERM);
    waitpid(m->pid, NULL, 0);
  }
  unlink(m->log);
  m->pid = 0;
}

/* Every request logged so far, as a cJSON array (caller deletes). */
FX_FN cJSON *mock_requests(const mock_server *m) {
  cJSON *arr = cJSON_CreateArray();
  FILE *f = fopen(m->log, "r");
  if (!f) return arr;
  size_t cap = 1 << 16;
  char *line = malloc(cap);
  size_t len = 0;
  int c;
  while ((c = fgetc(f)) != EOF) {
    if (len + 1 >= cap) line = realloc(line, cap *= 2);
    if (c != '\n') { line[len++] = (char)c; continue; }
    line[len] = '\0';
    cJSON *rec = cJSON_Parse(line);
    if (rec) cJSON_AddItemToArray(arr, rec);
    len = 0;
  }
  free(line);
  fclose(f);
  return arr;
}

/* The user prompt of logged request i. */
FX_FN const char *mock_user_prompt(const cJSON *reqs, int i) {
  const cJSON *body = cJSON_GetObjectItem(cJSON_GetArrayItem(reqs, i), "body");
  const cJSON *msgs = cJSON_GetObjectItem(body, "messages");
  const cJSON *m;
  cJSON_ArrayForEach(m, msgs) {
    const cJSON *role = cJSON_GetObjectItem(m, "role");
    if (cJSON_IsString(role) && strcmp(role->valuestring, "user") == 0)
      return cJSON_GetStringValue(cJSON_GetObjectItem(m, "content"));
  }
  return NULL;
}

#endif
