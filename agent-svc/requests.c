/*
 * requests.c - request checks (requests.h).
 */
#include "requests.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "layer_index.h"

int ap_session_id_valid(const char *s) {
  if (!s || strlen(s) != 32) return 0;
  for (const char *c = s; *c; c++)
    if (!((*c >= '0' && *c <= '9') || (*c >= 'a' && *c <= 'f'))) return 0;
  return 1;
}

static int check_session_id(const char *s, char *err, size_t errlen) {
  if (!s || !*s) {
    snprintf(err, errlen, "session_id is empty");
    return -1;
  }
  if (!ap_session_id_valid(s)) {
    snprintf(err, errlen, "session_id \"%.64s\" is not a session id (32 lowercase hex digits)", s);
    return -1;
  }
  return 0;
}

/* A value in [lo, hi] and finite. */
static int in_range(double v, double lo, double hi) { return isfinite(v) && v >= lo && v <= hi; }

int ap_check_session_spec(const Agentprune__V1__SessionSpec *s, char *err, size_t errlen) {
  const char *job = s->job_id ? s->job_id : "";
  size_t jl = strlen(job);
  if (jl == 0) {
    snprintf(err, errlen, "job_id is empty");
    return -1;
  }
  if (jl > AP_MAX_JOB_ID) {
    snprintf(err, errlen, "job_id is %zu bytes, more than %d", jl, AP_MAX_JOB_ID);
    return -1;
  }
  for (size_t i = 0; i < jl; i++) {
    unsigned char c = (unsigned char)job[i];
    if (c < 0x20 || c == 0x7f) {
      snprintf(err, errlen, "job_id contains a control character at byte %zu", i);
      return -1;
    }
  }
  const char *pol = s->policy ? s->policy : "";
  if (*pol && strcmp(pol, "rule") != 0 && strcmp(pol, "llm") != 0) {
    snprintf(err, errlen, "policy \"%.64s\" is unknown (rule or llm)", pol);
    return -1;
  }
  const Agentprune__V1__Constraints *c = s->constraints;
  if (!c) {
    snprintf(err, errlen, "constraints are missing (target_sparsity is required)");
    return -1;
  }
  if (!(isfinite(c->target_sparsity) && c->target_sparsity > 0 && c->target_sparsity < 1)) {
    snprintf(err, errlen, "constraints.target_sparsity %g is not in (0, 1)", c->target_sparsity);
    return -1;
  }
  if (!in_range(c->step_cap, 0, 1)) {
    snprintf(err, errlen, "constraints.step_cap %g is not in [0, 1] (0 = 0.10)", c->step_cap);
    return -1;
  }
  if (!in_range(c->ceiling, 0, 1)) {
    snprintf(err, errlen, "constraints.ceiling %g is not in [0, 1] (0 = 0.90)", c->ceiling);
    return -1;
  }
  double ceiling = c->ceiling > 0 ? c->ceiling : 0.90;
  if (ceiling < c->target_sparsity) {
    snprintf(err, errlen, "constraints.ceiling %g is below target_sparsity %g: the target is unreachable", ceiling,
             c->target_sparsity);
    return -1;
  }
  if (!in_range(c->tolerance, 0, 0.5) || c->tolerance == 0.5) {
    snprintf(err, errlen, "constraints.tolerance %g is not in [0, 0.5) (0 = 0.005)", c->tolerance);
    return -1;
  }
  const char *st = c->structure ? c->structure : "";
  if (*st && strcmp(st, "unstructured") != 0) {
    int nn = 0, mm = 0, used = 0;
    if (sscanf(st, "%d:%d%n", &nn, &mm, &used) != 2 || (size_t)used != strlen(st) || nn < 1 || mm > 64 ||
        nn >= mm) {
      snprintf(err, errlen, "constraints.structure \"%.32s\" is neither unstructured nor N:M with 1 <= N < M <= 64",
               st);
      return -1;
    }
  }
  return 0;
}

int ap_check_decide_request(const Agentprune__V1__DecideRequest *r, char *err, size_t errlen) {
  if (check_session_id(r->session_id, err, errlen)) return -1;
  if (r->iteration == 0) {
    snprintf(err, errlen, "iteration must be >= 1");
    return -1;
  }
  const Agentprune__V1__JobState *js = r->state;
  if (!js) {
    snprintf(err, errlen, "state is missing");
    return -1;
  }
  if (js->iteration != 0 && js->iteration != r->iteration) {
    snprintf(err, errlen, "state.iteration %u differs from the request's iteration %u", js->iteration,
             r->iteration);
    return -1;
  }
  if (!in_range(js->global_sparsity, 0, 1) || !in_range(js->target_sparsity, 0, 1)) {
    snprintf(err, errlen, "state.global_sparsity and state.target_sparsity must be finite and in [0, 1]");
    return -1;
  }
  if (!in_range(js->dense_ppl, 0, INFINITY) || !in_range(js->current_ppl, 0, INFINITY) ||
      !in_range(js->tau, 0, INFINITY)) {
    snprintf(err, errlen, "state.dense_ppl, current_ppl and tau must be finite and >= 0");
    return -1;
  }
  const Agentprune__V1__ProfileTable *t = r->profile;
  if (!t || t->n_layers == 0) {
    snprintf(err, errlen, "profile has no layers");
    return -1;
  }
  if (t->n_layers > AP_MAX_LAYERS) {
    snprintf(err, errlen, "profile has %zu layers, more than %d", t->n_layers, AP_MAX_LAYERS);
    return -1;
  }
  for (size_t i = 0; i < t->n_layers; i++) {
    const Agentprune__V1__LayerProfile *lp = t->layers[i];
    const char *name = lp->name ? lp->name : "";
    if (!*name || strlen(name) > AP_MAX_NAME) {
      snprintf(err, errlen, "profile row %zu: the name is empty or longer than %d bytes", i, AP_MAX_NAME);
      return -1;
    }
    if (lp->params == 0) {
      snprintf(err, errlen, "profile row %zu (%.200s): params is 0", i, name);
      return -1;
    }
    if (!in_range(lp->rho, 0, 1)) {
      snprintf(err, errlen, "profile row %zu (%.200s): rho %g is not in [0, 1]", i, name, lp->rho);
      return -1;
    }
    if (!in_range(lp->s, 0, INFINITY) || !in_range(lp->g, 0, INFINITY)) {
      snprintf(err, errlen, "profile row %zu (%.200s): s and g must be finite and >= 0", i, name);
      return -1;
    }
    if (!isfinite(lp->z_s) || !isfinite(lp->z_g)) {
      snprintf(err, errlen, "profile row %zu (%.200s): z_s and z_g must be finite", i, name);
      return -1;
    }
    if ((int)lp->kind < 0 || (int)lp->kind > AGENTPRUNE__V1__LAYER_KIND__LAYER_KIND_DOWN) {
      snprintf(err, errlen, "profile row %zu (%.200s): unknown kind %d", i, name, (int)lp->kind);
      return -1;
    }
    if (lp->block >= AP_MAX_BLOCKS) {
      snprintf(err, errlen, "profile row %zu (%.200s): block %u is implausible", i, name, lp->block);
      return -1;
    }
    if (lp->n_dppl_history > AP_MAX_DPPL_HISTORY) {
      snprintf(err, errlen, "profile row %zu (%.200s): %zu dppl_history values, more than %d", i, name,
               lp->n_dppl_history, AP_MAX_DPPL_HISTORY);
      return -1;
    }
    for (size_t k = 0; k < lp->n_dppl_history; k++)
      if (!isfinite(lp->dppl_history[k])) {
        snprintf(err, errlen, "profile row %zu (%.200s): dppl_history[%zu] is not finite", i, name, k);
        return -1;
      }
  }
  ap_layer_index *ix = NULL;
  size_t bad = 0;
  int rc = ap_layer_index_build(t, &ix, &bad);
  ap_layer_index_free(ix);
  if (rc == -3) {
    snprintf(err, errlen, "profile row %zu: the name \"%.200s\" appears twice", bad, t->layers[bad]->name);
    return -1;
  }
  if (rc) {
    snprintf(err, errlen, "profile: out of memory while checking names");
    return -1;
  }
  return 0;
}

int ap_check_outcome(const Agentprune__V1__Outcome *o, char *err, size_t errlen) {
  if (check_session_id(o->session_id, err, errlen)) return -1;
  if (o->iteration == 0 || o->iteration == UINT32_MAX) {
    snprintf(err, errlen, "iteration must be >= 1");
    return -1;
  }
  /* ppl_after may be +inf: a step that broke the model is a legitimate rollback. */
  if (!in_range(o->ppl_before, 0, INFINITY) || isnan(o->ppl_after) || o->ppl_after < 0) {
    snprintf(err, errlen, "ppl_before must be finite and >= 0, ppl_after a number >= 0");
    return -1;
  }
  if (!in_range(o->global_sparsity, 0, 1)) {
    snprintf(err, errlen, "global_sparsity %g is not in [0, 1]", o->global_sparsity);
    return -1;
  }
  if (o->note && strlen(o->note) > AP_MAX_NOTE) {
    snprintf(err, errlen, "note is longer than %d bytes", AP_MAX_NOTE);
    return -1;
  }
  return 0;
}
