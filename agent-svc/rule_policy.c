/*
 * rule_policy.c - the built-in, deterministic `rule` policy (DESIGN.md
 * section 5; docs/rule-policy.md has the same text for users).
 *
 * Notation: p_i parameters, rho_i current sparsity of layer i; P = sum p_i;
 * G = sum p_i rho_i / P the global sparsity; T the target; R = T - G.
 *
 * 1. Sensitivity. c_i = clip((z_s + z_g) / 2, -3, 3) + w_dppl * zd_i, where
 *    zd_i is the z-score over layers of the mean of the layer's last three
 *    dppl_history values (0 when the spread is nil). Low s (the weights next in
 *    line carry little Wanda score) and low g (little loss gradient) mean low
 *    sensitivity. Layers are ranked by c (equal values share their mean
 *    rank) and the rank is mapped to ins_i in [-1, 1], +1 = least
 *    sensitive. Ranks rather than raw z-scores keep one extreme layer from
 *    dominating.
 * 2. Block prior. With the profile's `outlier` column (OWL's outlier share of
 *    the dense model, per layer), the shares pooled per block are min-max
 *    mapped to dep_i = 1 - 2 (o_b - min) / (max - min): blocks with more
 *    outliers keep more weights, as in OWL. Without it (all zero), depth:
 *    dep_i = 2 block_i / (B - 1) - 1 in [-1, 1] (B = number of blocks).
 * 3. Final allocation. a_i = w_sens ins_i + w_depth dep_i, and
 *    t_i = clamp(T + lambda a_i + mu, rho_i, ceiling) with
 *    lambda = spread * clamp(T / 0.7, 0.25, 1.25) (OWL's +-0.08 at 70 %) and
 *    mu found by bisection so that sum p_i t_i = T P. This is water-filling:
 *    a layer already past its share keeps rho_i (masks only grow) and the
 *    others absorb the difference. The allocation is recomputed every
 *    iteration from the fresh profile, so it follows the pruned model.
 * 4. Reflection. A rollback is a history entry whose outcome is not
 *    accepted; its layers are the ones its decision listed. Those layers are
 *    held (no step) for hold_iterations iterations after it, and their step
 *    cap is halved for every rollback within the last halving_window
 *    iterations (at most three halvings: 1/8).
 * 5. Global step. D = min(step_cap_frac * step_cap, step_frac * (1 - G)):
 *    smaller steps as sparsity rises. When the last accepted entry raised ppl
 *    by r = ppl_after / ppl_before - 1 for a realised step s, the ppl slope is
 *    k = r / s and D <= ppl_margin * tau / k (aim well inside the pruner's
 *    per-iteration budget tau, since k grows with sparsity). D is then raised
 *    to at least R / (0.6 * iterations left) so that the target is reachable
 *    within max_iterations, lowered to half the step the latest decision tried
 *    when that decision was rolled back, and to at most R. When R <= 1.25 D
 *    (and the last entry was not a rollback) D = R: the last step lands on the
 *    target instead of leaving a sliver.
 * 6. Distribution. cap_i = min(step_cap * halving_i, survivor_frac * (1 - rho_i),
 *    ceiling - rho_i): a step removes at most a quarter of a layer's
 *    survivors. Phase 1 gives the non-held layers delta_i =
 *    min(cap_i, gap_i, theta * pref_i * gap_i) with gap_i = t_i - rho_i,
 *    pref_i = 1 + 0.5 ins_i, and theta found by bisection so that
 *    sum p_i delta_i = D P without exceeding it: layers far below their
 *    share, and the least sensitive ones, get the larger steps. If that cannot
 *    absorb D, phase 2 lets non-held layers pass their share (up to cap_i,
 *    again weighted by pref_i), and phase 3 releases the held layers with
 *    their halved caps, so that the pruner always gets forward progress.
 *    Steps below min_layer_step are dropped; if that loses more than half of
 *    D, the step is instead concentrated on the most preferred layers.
 *
 * Every output satisfies ap_decision_validate: targets in
 * [rho, min(rho + step_cap, ceiling)], at least one growing layer while the
 * target is not reached, and no overshoot (sum p_i delta_i <= R P).
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "layer_index.h"
#include "policy.h"
#include "rule_policy.h"
#include "rule_blockwise.h"
#include "rule_step.h"

void ap_rule_params_default(ap_rule_params *p) {
  p->spread = 0.08;
  p->w_sensitivity = 0.5;
  p->w_depth = 0.5;
  p->w_dppl = 0.5;
  p->step_frac = 0.125;
  p->step_cap_frac = 0.8;
  p->survivor_frac = 0.25;
  p->ppl_margin = 0.6;
  p->hold_iterations = 2;
  p->halving_window = 8;
  p->min_layer_step = 5e-4;
  p->probes = 6;
  p->probe_bias = 0.10;
  p->owl_lambda = 0.08;
}

typedef struct {
  double p, rho, ins, pref, target, cap, delta;
  int held, halvings, block;
} layer_work;

typedef struct {
  const Agentprune__V1__ProfileTable *t;
  layer_work *w;
  size_t n;
  const long *order; /* rows sorted by sensitivity, least sensitive first */
} rule_state;

static double clampd(double x, double lo, double hi) { return x < lo ? lo : x > hi ? hi : x; }

/* ---- sensitivity ranking ---------------------------------------------------- */

typedef struct {
  double key;
  long row;
} keyed_row;

static int by_key_then_row(const void *a, const void *b) {
  const keyed_row *x = a, *y = b;
  if (x->key < y->key) return -1;
  if (x->key > y->key) return 1;
  return (x->row > y->row) - (x->row < y->row);
}

/* Sorts rows by keys[row] ascending, ties by row: a total order, so deterministic. */
static int sort_rows(long *rows, size_t n, const double *keys) {
  keyed_row *kr = malloc(n * sizeof *kr);
  if (!kr) return -1;
  for (size_t i = 0; i < n; i++) kr[i] = (keyed_row){keys[rows[i]], rows[i]};
  qsort(kr, n, sizeof *kr, by_key_then_row);
  for (size_t i = 0; i < n; i++) rows[i] = kr[i].row;
  free(kr);
  return 0;
}

static double recent_dppl(const Agentprune__V1__LayerProfile *lp) {
  size_t n = lp->n_dppl_history, k = n < 3 ? n : 3;
  if (!k) return 0;
  double s = 0;
  for (size_t i = n - k; i < n; i++) s += lp->dppl_history[i];
  return s / (double)k;
}

/* ---- allocation helpers ----------------------------------------------------- */

/* sum p_i clamp(base_i + mu, rho_i, ceiling) for the water-filling bisection. */
static double filled_mass(const rule_state *rs, const double *base, double mu, double ceiling) {
  double m = 0;
  for (size_t i = 0; i < rs->n; i++) {
    const layer_work *l = &rs->w[i];
    double hi = ceiling > l->rho ? ceiling : l->rho;
    m += l->p * clampd(base[i] + mu, l->rho, hi);
  }
  return m;
}

typedef enum { PHASE_SHARE = 1, PHASE_PASS_SHARE = 2, PHASE_HELD = 3 } phase;

/* The extra step layer i would get at scale theta in `ph`, on top of extra[i]. */
static double phase_step(const layer_work *l, double already, phase ph, double theta) {
  double room;
  if (ph == PHASE_SHARE) {
    if (l->held) return 0;
    double gap = l->target - l->rho;
    if (gap <= 0) return 0;
    room = fmin(l->cap, gap);
    return fmin(room, theta * l->pref * gap);
  }
  if (ph == PHASE_PASS_SHARE && l->held) return 0;
  if (ph == PHASE_HELD && !l->held) return 0;
  room = l->cap - already;
  if (room <= 0) return 0;
  return fmin(room, theta * l->pref);
}

/* Adds up to `want` param-weighted sparsity in phase ph; returns what it added. */
static double run_phase(rule_state *rs, phase ph, double want) {
  double full = 0;
  for (size_t i = 0; i < rs->n; i++) full += rs->w[i].p * phase_step(&rs->w[i], rs->w[i].delta, ph, 1e30);
  if (full <= 0 || want <= 0) return 0;
  double theta;
  if (full <= want) {
    theta = 1e30;
  } else {
    double lo = 0, hi = 1;
    for (;;) { /* grow hi until it covers want */
      double m = 0;
      for (size_t i = 0; i < rs->n; i++) m += rs->w[i].p * phase_step(&rs->w[i], rs->w[i].delta, ph, hi);
      if (m >= want || hi > 1e12) break;
      hi *= 4;
    }
    for (int it = 0; it < 100; it++) {
      double mid = 0.5 * (lo + hi), m = 0;
      for (size_t i = 0; i < rs->n; i++) m += rs->w[i].p * phase_step(&rs->w[i], rs->w[i].delta, ph, mid);
      if (m > want) hi = mid;
      else lo = mid;
    }
    theta = lo; /* the side that never exceeds want */
  }
  double added = 0;
  for (size_t i = 0; i < rs->n; i++) {
    double d = phase_step(&rs->w[i], rs->w[i].delta, ph, theta);
    rs->w[i].delta += d;
    added += rs->w[i].p * d;
  }
  return added;
}

/*
 * Fallback when spreading `want` would leave only steps below min_step: the
 * most preferred layers (non-held first) take whole steps instead. When even
 * one minimal step exceeds `want` + slack, nothing is assigned.
 */
static void concentrate(rule_state *rs, double want, double min_step, double slack) {
  for (size_t i = 0; i < rs->n; i++) rs->w[i].delta = 0;
  int assigned = 0;
  for (int pass = 0; pass < 2; pass++) {
    for (size_t k = 0; k < rs->n; k++) {
      layer_work *l = &rs->w[rs->order[k]];
      if (l->held != pass || l->cap < min_step) continue;
      double d = fmin(l->cap, want / l->p);
      if (d < min_step) {
        if (assigned || l->p * min_step > want + slack) continue;
        d = min_step;
      }
      l->delta = d;
      want -= l->p * d;
      assigned = 1;
      if (want <= 0) return;
    }
  }
}

/* ---- history ---------------------------------------------------------------- */

static int entry_rolled_back(const Agentprune__V1__HistoryEntry *e) {
  return e && e->outcome && !e->outcome->accepted && e->decision;
}

/* ---- main --------------------------------------------------------------------- */

static char *dup_str(const char *s) {
  size_t n = strlen(s) + 1;
  char *d = malloc(n);
  if (d) memcpy(d, s, n);
  return d;
}

int ap_rule_decide(const ap_decide_ctx *ctx, Agentprune__V1__Decision *out, char *err, size_t errlen) {
  ap_rule_params p;
  ap_rule_params_default(&p);
  return ap_rule_decide_with(ctx, &p, out, err, errlen);
}

int ap_rule_decide_with(const ap_decide_ctx *ctx, const ap_rule_params *prm, Agentprune__V1__Decision *out,
                        char *err, size_t errlen) {
  const Agentprune__V1__ProfileTable *t = ctx && ctx->req ? ctx->req->profile : NULL;
  if (!t || t->n_layers == 0) {
    snprintf(err, errlen, "rule: the request has no profile table");
    return -1;
  }
  size_t n = t->n_layers;
  ap_limits lim;
  ap_limits_from(ctx->session ? ctx->session->constraints : NULL, &lim);
  if (!(lim.target > 0 && lim.target < 1)) {
    snprintf(err, errlen, "rule: the session has no target sparsity in (0, 1)");
    return -1;
  }
  const Agentprune__V1__JobState *js = ctx->req->state;
  uint32_t iteration = ctx->req->iteration;
  uint32_t max_it = js && js->max_iterations ? js->max_iterations : 60;
  double tau = js && js->tau > 0 && isfinite(js->tau) ? js->tau : 0.05;

  ap_layer_index *ix = NULL;
  layer_work *w = calloc(n, sizeof *w);
  double *keys = calloc(n, sizeof *keys), *base = calloc(n, sizeof *base);
  long *order = calloc(n, sizeof *order);
  char *rationale = NULL;
  int rc = -1;
  size_t bad = 0;
  if (!w || !keys || !base || !order) {
    snprintf(err, errlen, "rule: out of memory");
    goto done;
  }
  int irc = ap_layer_index_build(t, &ix, &bad);
  if (irc) {
    snprintf(err, errlen, irc == -1 ? "rule: out of memory" : "rule: profile row %zu has an empty or repeated name",
             bad);
    goto done;
  }

  /* Table scan: weights, global sparsity, depth range, dppl statistics. */
  double P = 0, pruned = 0, dm = 0, dv = 0;
  uint32_t max_block = 0;
  for (size_t i = 0; i < n; i++) {
    const Agentprune__V1__LayerProfile *lp = t->layers[i];
    if (!(lp->params > 0) || !isfinite(lp->rho) || lp->rho < 0 || lp->rho > 1 || !isfinite(lp->z_s) ||
        !isfinite(lp->z_g)) {
      snprintf(err, errlen, "rule: profile row %zu (%.200s) has no parameters or a non-finite value", i, lp->name);
      goto done;
    }
    w[i].p = (double)lp->params;
    w[i].rho = lp->rho;
    w[i].block = (int)lp->block;
    P += w[i].p;
    pruned += w[i].p * lp->rho;
    if (lp->block > max_block) max_block = lp->block;
    dm += recent_dppl(lp);
  }
  dm /= (double)n;
  for (size_t i = 0; i < n; i++) dv += (recent_dppl(t->layers[i]) - dm) * (recent_dppl(t->layers[i]) - dm);
  double dsd = sqrt(dv / (double)n);
  double G = pruned / P, T = lim.target, R = T - G;

  /* With a pruner that measures probes, blocks go front to back with
     measured plans (rule_blockwise.c); this gradual policy takes over when
     that schedule does not apply. */
  if (prm->probes > 0) {
    int brc = ap_rule_blockwise(ctx, prm, out, err, errlen);
    if (brc <= 0) {
      rc = brc;
      goto done;
    }
  }

  out->policy = dup_str("rule");
  if (!out->policy) goto oom;

  if (R <= 1e-6) {
    char buf[160];
    snprintf(buf, sizeof buf, "rule: the global sparsity %.4f has reached the target %.4f; nothing to prune", G, T);
    out->rationale = dup_str(buf);
    if (!out->rationale) goto oom;
    rc = 0;
    goto done;
  }

  /* 1. sensitivity rank: keys ascending = most sensitive last. */
  for (size_t i = 0; i < n; i++) {
    const Agentprune__V1__LayerProfile *lp = t->layers[i];
    double zd = dsd > 1e-8 ? clampd((recent_dppl(lp) - dm) / dsd, -3, 3) : 0;
    keys[i] = clampd(0.5 * (lp->z_s + lp->z_g), -3, 3) + prm->w_dppl * zd;
    order[i] = (long)i;
  }
  if (sort_rows(order, n, keys)) goto oom;
  for (size_t k = 0; k < n;) {
    /* Equal sensitivities share their mean rank, so ties carry no preference. */
    size_t e = k + 1;
    while (e < n && keys[order[e]] == keys[order[k]]) e++;
    double rank = 0.5 * (double)(k + e - 1);
    for (size_t j = k; j < e; j++) {
      layer_work *l = &w[order[j]];
      l->ins = n > 1 ? 1.0 - 2.0 * rank / (double)(n - 1) : 0.0;
      l->pref = 1.0 + 0.5 * l->ins;
    }
    k = e;
  }

  /* 2. block prior: OWL's outlier share pooled per block when the pruner
     measured it (more outliers -> less sparsity, scaled to [-1, 1] as OWL's
     min-max mapping does), else block depth. */
  double *bo = calloc((size_t)max_block + 1, 2 * sizeof(double));
  if (!bo) goto oom;
  for (size_t i = 0; i < n; i++) {
    bo[2 * w[i].block] += w[i].p * t->layers[i]->outlier;
    bo[2 * w[i].block + 1] += w[i].p;
  }
  double omin = INFINITY, omax = -INFINITY;
  for (uint32_t b = 0; b <= max_block; b++) {
    if (bo[2 * b + 1] <= 0) continue;
    bo[2 * b] /= bo[2 * b + 1];
    omin = fmin(omin, bo[2 * b]);
    omax = fmax(omax, bo[2 * b]);
  }
  int use_outliers = isfinite(omin) && omax - omin > 1e-9;

  /* 3. final allocation by water-filling. */
  double lambda = prm->spread * clampd(T / 0.7, 0.25, 1.25);
  for (size_t i = 0; i < n; i++) {
    double dep = use_outliers ? 1.0 - 2.0 * (bo[2 * w[i].block] - omin) / (omax - omin)
                              : max_block > 0 ? 2.0 * w[i].block / (double)max_block - 1.0 : 0.0;
    base[i] = T + lambda * (prm->w_sensitivity * w[i].ins + prm->w_depth * dep);
  }
  free(bo);
  double lo = -2, hi = 2;
  for (int it = 0; it < 100; it++) {
    double mid = 0.5 * (lo + hi);
    if (filled_mass(&(rule_state){t, w, n, order}, base, mid, lim.ceiling) > T * P) hi = mid;
    else lo = mid;
  }
  for (size_t i = 0; i < n; i++) {
    double top = lim.ceiling > w[i].rho ? lim.ceiling : w[i].rho;
    w[i].target = clampd(base[i] + lo, w[i].rho, top);
  }

  /* 4. reflection from the history. */
  const Agentprune__V1__History *h = ctx->history;
  size_t n_hist = h ? h->n_entries : 0;
  int held_layers = 0, rollbacks_seen = 0;
  for (size_t e = 0; e < n_hist; e++) {
    const Agentprune__V1__HistoryEntry *he = h->entries[e];
    if (!entry_rolled_back(he) || he->iteration >= iteration) continue;
    uint32_t age = iteration - he->iteration;
    if (age > (uint32_t)prm->halving_window) continue;
    rollbacks_seen++;
    for (size_t j = 0; j < he->decision->n_layers; j++) {
      long row = ap_layer_index_find(ix, he->decision->layers[j]->name);
      if (row < 0) continue;
      w[row].halvings++;
      if (age <= (uint32_t)prm->hold_iterations && !w[row].held) {
        w[row].held = 1;
        held_layers++;
      }
    }
  }
  for (size_t i = 0; i < n; i++) {
    int hv = w[i].halvings > 3 ? 3 : w[i].halvings;
    double cap = lim.step_cap * ldexp(1.0, -hv);
    cap = fmin(cap, prm->survivor_frac * (1.0 - w[i].rho));
    cap = fmin(cap, lim.ceiling - w[i].rho);
    w[i].cap = cap > 0 ? cap : 0;
  }

  /* 5. global step. */
  double G_clamped = clampd(G, 0, 1);
  double D = fmin(prm->step_cap_frac * lim.step_cap, prm->step_frac * (1.0 - G_clamped));
  const char *step_note = "schedule";
  const Agentprune__V1__HistoryEntry *last, *last_ok;
  ap_rule_recent(h, iteration, &last, &last_ok);
  double dp = ap_rule_slope_step(last_ok, prm->ppl_margin, tau, 1e-4);
  if (dp < D) {
    D = dp;
    step_note = "ppl slope";
  }
  uint32_t left = max_it >= iteration ? max_it - iteration + 1 : 1;
  double floor_step = R / fmax(1.0, 0.6 * left);
  if (D < floor_step) {
    D = floor_step;
    step_note = "iteration budget";
  }
  int after_rollback = last && entry_rolled_back(last);
  if (after_rollback) {
    double tried = ap_rule_rolled_back_step(last, t, ix); /* rho is unchanged since a rollback restores the masks */
    if (tried > 0 && 0.5 * tried < D) {
      D = 0.5 * tried;
      step_note = "half the rolled-back step";
    }
  }
  if (D > R) D = R;
  if (!after_rollback && R <= 1.25 * D) {
    D = R;
    step_note = "final step onto the target";
  }

  /* 6. distribution. */
  rule_state rs = {t, w, n, order};
  double want = D * P, got = 0;
  got += run_phase(&rs, PHASE_SHARE, want - got);
  if (got < want * (1 - 1e-9)) got += run_phase(&rs, PHASE_PASS_SHARE, want - got);
  int released = 0;
  if (got < want * (1 - 1e-9) && held_layers) {
    double before = got;
    got += run_phase(&rs, PHASE_HELD, want - got);
    released = got > before;
  }
  double kept = 0;
  for (size_t i = 0; i < n; i++) {
    if (w[i].delta < prm->min_layer_step) w[i].delta = 0;
    kept += w[i].p * w[i].delta;
  }
  if (kept < 0.5 * got) concentrate(&rs, got, prm->min_layer_step, 0.5 * lim.tolerance * P);

  /* Emit: only the layers that grow, in table order. */
  size_t moved = 0;
  double added = 0, dmin = 1, dmax = 0;
  for (size_t i = 0; i < n; i++)
    if (w[i].delta > 0) moved++;
  if (moved == 0 && R <= lim.tolerance) {
    /* The remainder is smaller than one meaningful step and within tolerance. */
    char buf[200];
    snprintf(buf, sizeof buf,
             "rule: the global sparsity %.4f is within the tolerance %.4f of the target %.4f; nothing to prune", G,
             lim.tolerance, T);
    out->rationale = dup_str(buf);
    if (!out->rationale) goto oom;
    rc = 0;
    goto done;
  }
  if (moved == 0) {
    snprintf(err, errlen,
             "rule: no layer can grow (global %.4f, target %.4f): every layer is at the ceiling %.2f or its "
             "step is below %.4g",
             G, T, lim.ceiling, prm->min_layer_step);
    goto done;
  }
  out->layers = calloc(moved, sizeof *out->layers);
  if (!out->layers) goto oom;
  for (size_t i = 0; i < n; i++) {
    if (w[i].delta <= 0) continue;
    Agentprune__V1__LayerTarget *lt = malloc(sizeof *lt);
    if (!lt) goto oom;
    agentprune__v1__layer_target__init(lt);
    out->layers[out->n_layers++] = lt;
    lt->name = dup_str(t->layers[i]->name);
    if (!lt->name) goto oom;
    double hi_t = fmin(w[i].rho + lim.step_cap, lim.ceiling);
    lt->target_sparsity = fmin(w[i].rho + w[i].delta, hi_t);
    added += w[i].p * (lt->target_sparsity - w[i].rho);
    dmin = fmin(dmin, w[i].delta);
    dmax = fmax(dmax, w[i].delta);
  }

  /* Rationale: the numbers a reader needs to follow the choice. */
  size_t cap_r = 1024;
  rationale = malloc(cap_r);
  if (!rationale) goto oom;
  int len = snprintf(rationale, cap_r,
                     "rule: global %.4f -> %.4f (target %.4f, step %.4f: %s); %zu of %zu layers grow by "
                     "%.4f..%.4f; allocation T%+.3f..%+.3f by sensitivity rank and block %s; least "
                     "sensitive: %s; most sensitive: %s",
                     G, G + added / P, T, added / P, step_note, moved, n, dmin, dmax, -lambda, lambda,
                     use_outliers ? "outliers (OWL, dense model)" : "depth",
                     t->layers[order[0]]->name, t->layers[order[n - 1]]->name);
  if (len > 0 && (size_t)len < cap_r && rollbacks_seen) {
    snprintf(rationale + len, cap_r - (size_t)len,
             "; reflection: %d rollback(s) in the last %d iterations, %d layer(s) held%s, their steps halved",
             rollbacks_seen, prm->halving_window, held_layers, released ? " (released: no other room)" : "");
  }
  out->rationale = rationale;
  rationale = NULL;
  rc = 0;
  goto done;

oom:
  snprintf(err, errlen, "rule: out of memory");
done:
  if (rc) ap_decision_clear(out);
  free(rationale);
  ap_layer_index_free(ix);
  free(w);
  free(keys);
  free(base);
  free(order);
  return rc;
}
