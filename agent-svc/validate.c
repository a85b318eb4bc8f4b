/*
 * validate.c - constraint defaults, the decision checker shared by both
 * policies, and the release of policy-made decisions (policy.h).
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "layer_index.h"
#include "policy.h"

/* Slack for float comparisons: targets are computed as rho + step and must
 * not be rejected over the last ulp. */
#define VALIDATE_EPS 1e-9

void ap_limits_from(const Agentprune__V1__Constraints *c, ap_limits *out) {
  out->step_cap = 0.10;
  out->ceiling = 0.90;
  out->target = 0.0;
  out->tolerance = 0.005;
  if (!c) return;
  if (isfinite(c->step_cap) && c->step_cap > 0) out->step_cap = c->step_cap;
  if (isfinite(c->ceiling) && c->ceiling > 0) out->ceiling = c->ceiling;
  if (isfinite(c->target_sparsity) && c->target_sparsity > 0) out->target = c->target_sparsity;
  if (isfinite(c->tolerance) && c->tolerance > 0) out->tolerance = c->tolerance;
}

int ap_decision_validate(const ap_decide_ctx *ctx, const Agentprune__V1__Decision *d, char *err,
                         size_t errlen) {
  const Agentprune__V1__ProfileTable *t = ctx && ctx->req ? ctx->req->profile : NULL;
  if (!t || t->n_layers == 0) {
    snprintf(err, errlen, "the request has no profile table");
    return -1;
  }
  if (!d) {
    snprintf(err, errlen, "no decision");
    return -1;
  }
  ap_limits lim;
  ap_limits_from(ctx->session ? ctx->session->constraints : NULL, &lim);

  ap_layer_index *ix = NULL;
  unsigned char *seen = NULL;
  int rc = -1;
  size_t bad = 0;
  int irc = ap_layer_index_build(t, &ix, &bad);
  if (irc) {
    snprintf(err, errlen, irc == -1 ? "out of memory" : "profile table row %zu has an empty or repeated name", bad);
    return -1;
  }
  seen = calloc(t->n_layers, 1);
  if (!seen) {
    snprintf(err, errlen, "out of memory");
    goto done;
  }
  double total = 0, pruned = 0;
  for (size_t i = 0; i < t->n_layers; i++) {
    total += (double)t->layers[i]->params;
    pruned += (double)t->layers[i]->params * t->layers[i]->rho;
  }
  if (!(total > 0)) {
    snprintf(err, errlen, "the profile table has no parameters");
    goto done;
  }
  double added = 0;
  int grows = 0;
  for (size_t j = 0; j < d->n_layers; j++) {
    const Agentprune__V1__LayerTarget *lt = d->layers[j];
    const char *name = lt && lt->name ? lt->name : "";
    long row = ap_layer_index_find(ix, name);
    if (row < 0) {
      snprintf(err, errlen, "layer \"%.200s\" is not in the profile table", name);
      goto done;
    }
    if (seen[row]) {
      snprintf(err, errlen, "layer \"%.200s\" appears more than once", name);
      goto done;
    }
    seen[row] = 1;
    const Agentprune__V1__LayerProfile *lp = t->layers[row];
    double target = lt->target_sparsity;
    double hi = fmin(lp->rho + lim.step_cap, lim.ceiling);
    if (!isfinite(target)) {
      snprintf(err, errlen, "layer \"%.200s\": target_sparsity is not a finite number", name);
      goto done;
    }
    if (target < lp->rho - VALIDATE_EPS) {
      snprintf(err, errlen,
               "layer \"%.200s\": target_sparsity %.4f is below its current sparsity %.4f (masks only grow)",
               name, target, lp->rho);
      goto done;
    }
    if (target > hi + VALIDATE_EPS) {
      snprintf(err, errlen,
               "layer \"%.200s\": target_sparsity %.4f exceeds %.4f = min(current %.4f + step cap %.4f, "
               "ceiling %.4f)",
               name, target, hi, lp->rho, lim.step_cap, lim.ceiling);
      goto done;
    }
    if (target > lp->rho + VALIDATE_EPS) grows = 1;
    added += (double)lp->params * (target - lp->rho);
  }
  double global = pruned / total, after = (pruned + added) / total;
  if (d->n_probes) {
    const Agentprune__V1__JobState *st = ctx->req->state;
    uint32_t maxp = st ? st->max_probes : 0;
    if (d->n_layers) {
      snprintf(err, errlen, "a decision either grows layers or asks for probes, not both");
      goto done;
    }
    if (d->n_probes > maxp) {
      snprintf(err, errlen, "the decision asks for %zu probes; the pruner measures at most %u", d->n_probes, maxp);
      goto done;
    }
    for (size_t p = 0; p < d->n_probes; p++) {
      const Agentprune__V1__Plan *pl = d->probes[p];
      for (size_t k = 0; pl && k < pl->n_layers; k++) {
        const Agentprune__V1__LayerTarget *lt = pl->layers[k];
        const char *name = lt && lt->name ? lt->name : "";
        long row = ap_layer_index_find(ix, name);
        if (row < 0) {
          snprintf(err, errlen, "probe %zu: layer \"%.200s\" is not in the profile table", p, name);
          goto done;
        }
        double tg = lt->target_sparsity, rho = t->layers[row]->rho;
        if (!isfinite(tg) || tg < rho - VALIDATE_EPS || tg > fmax(lim.ceiling, rho) + VALIDATE_EPS) {
          snprintf(err, errlen, "probe %zu: layer \"%.200s\": target %.4f is outside [current %.4f, ceiling %.4f]", p,
                   name, tg, rho, lim.ceiling);
          goto done;
        }
      }
    }
    rc = 0;
    goto done;
  }
  if (!grows && global < lim.target - lim.tolerance) {
    snprintf(err, errlen,
             "no layer grows: the global sparsity %.4f is still below the target %.4f, so at least one "
             "layer must get a target above its current sparsity",
             global, lim.target);
    goto done;
  }
  /* Only what the decision adds can overshoot: a table already past the
   * target with an empty decision is not the decision's fault. */
  if (added > 0 && after > lim.target + lim.tolerance + VALIDATE_EPS) {
    snprintf(err, errlen,
             "the decision overshoots: the global sparsity would become %.4f, above the target %.4f + "
             "tolerance %.4f (current %.4f)",
             after, lim.target, lim.tolerance, global);
    goto done;
  }
  rc = 0;
done:
  free(seen);
  ap_layer_index_free(ix);
  return rc;
}

static void free_str(char *s) {
  if (s && s != protobuf_c_empty_string) free(s);
}

void ap_decision_clear(Agentprune__V1__Decision *d) {
  if (!d) return;
  free_str(d->session_id);
  for (size_t i = 0; i < d->n_layers; i++) {
    if (!d->layers[i]) continue;
    free_str(d->layers[i]->name);
    free(d->layers[i]);
  }
  free(d->layers);
  for (size_t i = 0; i < d->n_probes; i++) {
    Agentprune__V1__Plan *pl = d->probes[i];
    if (!pl) continue;
    for (size_t k = 0; k < pl->n_layers; k++) {
      if (!pl->layers[k]) continue;
      free_str(pl->layers[k]->name);
      free(pl->layers[k]);
    }
    free(pl->layers);
    free_str(pl->label);
    free(pl);
  }
  free(d->probes);
  free_str(d->rationale);
  free_str(d->policy);
  free_str(d->fallback_reason);
  free(d->usage);
  agentprune__v1__decision__init(d);
}
