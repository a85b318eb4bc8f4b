/*
 * agent_fixtures.h - builders shared by the agent-svc tests: synthetic
 * profile tables of a Llama-like model, sessions, requests, and a small
 * deterministic PRNG. Every message is built from malloc'd parts so that
 * protobuf_c_message_free_unpacked(&m->base, NULL) releases it.
 */
#ifndef AP_AGENT_FIXTURES_H
#define AP_AGENT_FIXTURES_H

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "agentprune/v1/agent.pb-c.h"

static inline uint64_t fx_rng_next(uint64_t *s) { /* splitmix64 */
  uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}
static inline double fx_uniform(uint64_t *s) { return (double)(fx_rng_next(s) >> 11) / 9007199254740992.0; }
static inline double fx_normal(uint64_t *s) {
  double u = fx_uniform(s), v = fx_uniform(s);
  if (u < 1e-300) u = 1e-300;
  return sqrt(-2 * log(u)) * cos(6.283185307179586 * v);
}

static inline char *fx_strdup(const char *s) {
  size_t n = strlen(s) + 1;
  char *d = malloc(n);
  memcpy(d, s, n);
  return d;
}

static const char *const fx_kind_names[7] = {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                                             "self_attn.o_proj", "mlp.gate_proj",    "mlp.up_proj",
                                             "mlp.down_proj"};

/* A table of blocks x 7 layers, all at sparsity rho0, z-scores zero. */
static inline Agentprune__V1__ProfileTable *fx_table(int blocks, double rho0) {
  Agentprune__V1__ProfileTable *t = malloc(sizeof *t);
  agentprune__v1__profile_table__init(t);
  t->n_layers = (size_t)blocks * 7;
  t->layers = calloc(t->n_layers, sizeof *t->layers);
  for (int b = 0; b < blocks; b++)
    for (int k = 0; k < 7; k++) {
      Agentprune__V1__LayerProfile *l = malloc(sizeof *l);
      agentprune__v1__layer_profile__init(l);
      char name[128];
      snprintf(name, sizeof name, "model.layers.%d.%s", b, fx_kind_names[k]);
      l->name = fx_strdup(name);
      l->kind = (Agentprune__V1__LayerKind)(k + 1);
      l->block = (uint32_t)b;
      l->params = k < 4 ? (k == 1 || k == 2 ? 64 * 256 : 256 * 256) : 256 * 688;
      l->s = 1.0;
      l->g = 1.0;
      l->rho = rho0;
      t->layers[(size_t)b * 7 + (size_t)k] = l;
    }
  return t;
}

/* Param-weighted mean sparsity of a table. */
static inline double fx_global(const Agentprune__V1__ProfileTable *t) {
  double P = 0, z = 0;
  for (size_t i = 0; i < t->n_layers; i++) {
    P += (double)t->layers[i]->params;
    z += (double)t->layers[i]->params * t->layers[i]->rho;
  }
  return z / P;
}

/* Recomputes z_s and z_g from s and g (population std, eps 1e-8), as the pruner does. */
static inline void fx_zscores(Agentprune__V1__ProfileTable *t) {
  size_t n = t->n_layers;
  double ms = 0, mg = 0, vs = 0, vg = 0;
  for (size_t i = 0; i < n; i++) {
    ms += t->layers[i]->s;
    mg += t->layers[i]->g;
  }
  ms /= (double)n;
  mg /= (double)n;
  for (size_t i = 0; i < n; i++) {
    vs += (t->layers[i]->s - ms) * (t->layers[i]->s - ms);
    vg += (t->layers[i]->g - mg) * (t->layers[i]->g - mg);
  }
  double ss = sqrt(vs / (double)n) + 1e-8, sg = sqrt(vg / (double)n) + 1e-8;
  for (size_t i = 0; i < n; i++) {
    t->layers[i]->z_s = (t->layers[i]->s - ms) / ss;
    t->layers[i]->z_g = (t->layers[i]->g - mg) / sg;
  }
}

static inline Agentprune__V1__Constraints *fx_constraints(double target, double step_cap, double ceiling,
                                                          double tolerance) {
  Agentprune__V1__Constraints *c = malloc(sizeof *c);
  agentprune__v1__constraints__init(c);
  c->target_sparsity = target;
  c->step_cap = step_cap;
  c->ceiling = ceiling;
  c->tolerance = tolerance;
  return c;
}

static inline Agentprune__V1__Session *fx_session(const char *sid, Agentprune__V1__Constraints *c) {
  Agentprune__V1__Session *s = malloc(sizeof *s);
  agentprune__v1__session__init(s);
  s->session_id = fx_strdup(sid);
  s->policy = fx_strdup("rule");
  s->constraints = c;
  return s;
}

/* A Decide request owning `t` and a fresh state. */
static inline Agentprune__V1__DecideRequest *fx_request(const char *sid, uint32_t iteration,
                                                        Agentprune__V1__ProfileTable *t, double target) {
  Agentprune__V1__DecideRequest *r = malloc(sizeof *r);
  agentprune__v1__decide_request__init(r);
  r->session_id = fx_strdup(sid);
  r->iteration = iteration;
  r->profile = t;
  r->state = malloc(sizeof *r->state);
  agentprune__v1__job_state__init(r->state);
  r->state->iteration = iteration;
  r->state->global_sparsity = fx_global(t);
  r->state->target_sparsity = target;
  r->state->dense_ppl = 10;
  r->state->current_ppl = 10;
  r->state->max_iterations = 60;
  r->state->tau = 0.05;
  return r;
}

/* An empty history (entries appended with fx_history_add). */
static inline Agentprune__V1__History *fx_history(void) {
  Agentprune__V1__History *h = malloc(sizeof *h);
  agentprune__v1__history__init(h);
  return h;
}

/* Appends an entry holding copies of decision d, state and an outcome. */
static inline void fx_history_add(Agentprune__V1__History *h, const Agentprune__V1__Decision *d,
                                  const Agentprune__V1__JobState *state, int accepted, double ppl_before,
                                  double ppl_after, double sparsity_after) {
  Agentprune__V1__HistoryEntry *e = malloc(sizeof *e);
  agentprune__v1__history_entry__init(e);
  e->iteration = d->iteration;
  size_t n = agentprune__v1__decision__get_packed_size(d);
  uint8_t *buf = malloc(n + 1);
  agentprune__v1__decision__pack(d, buf);
  e->decision = agentprune__v1__decision__unpack(NULL, n, buf);
  free(buf);
  n = agentprune__v1__job_state__get_packed_size(state);
  buf = malloc(n + 1);
  agentprune__v1__job_state__pack(state, buf);
  e->state = agentprune__v1__job_state__unpack(NULL, n, buf);
  free(buf);
  e->outcome = malloc(sizeof *e->outcome);
  agentprune__v1__outcome__init(e->outcome);
  e->outcome->iteration = d->iteration;
  e->outcome->accepted = accepted;
  e->outcome->ppl_before = ppl_before;
  e->outcome->ppl_after = ppl_after;
  e->outcome->global_sparsity = sparsity_after;
  h->entries = realloc(h->entries, (h->n_entries + 1) * sizeof *h->entries);
  h->entries[h->n_entries++] = e;
}

#endif
