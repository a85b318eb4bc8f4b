/*
 * test_rule.c - the rule policy and the decision checker.
 *
 *  - property test: thousands of random tables, constraints and histories;
 *    every decision satisfies the constraints, checked by an independent
 *    checker here (not by ap_decision_validate alone);
 *  - determinism; direction (less sensitive and deeper layers get larger
 *    steps);
 *  - reflection: layers of a rolled-back decision are held for two
 *    iterations, then step at most half the cap, a quarter after two
 *    rollbacks; the global step after a rollback is half the tried one;
 *  - a simulated pruning loop (synthetic ppl model, tau rollbacks as the
 *    pruner does) reaches 50 % and 70 % within tolerance and beats the
 *    uniform allocation of the same sparsity on that model;
 *  - ap_decision_validate catches each kind of violation; request checks.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../test.h"
#include "agent_fixtures.h"
#include "policy.h"
#include "requests.h"
#include "rule_policy.h"

#define SID "0123456789abcdef0123456789abcdef"

static void free_msg(void *m) {
  if (m) protobuf_c_message_free_unpacked((ProtobufCMessage *)m, NULL);
}

static long find_row(const Agentprune__V1__ProfileTable *t, const char *name) {
  for (size_t i = 0; i < t->n_layers; i++)
    if (strcmp(t->layers[i]->name, name) == 0) return (long)i;
  return -1;
}

/* Independent check of every constraint; returns NULL or a description. */
static const char *check_decision(const Agentprune__V1__ProfileTable *t, const ap_limits *lim,
                                  const Agentprune__V1__Decision *d, double *after_out) {
  static char why[256];
  double P = 0, Z = 0;
  for (size_t i = 0; i < t->n_layers; i++) {
    P += (double)t->layers[i]->params;
    Z += (double)t->layers[i]->params * t->layers[i]->rho;
  }
  double G = Z / P, add = 0;
  for (size_t j = 0; j < d->n_layers; j++) {
    long r = find_row(t, d->layers[j]->name);
    if (r < 0) return "unknown layer";
    for (size_t k = 0; k < j; k++)
      if (strcmp(d->layers[k]->name, d->layers[j]->name) == 0) return "layer twice";
    double rho = t->layers[r]->rho, x = d->layers[j]->target_sparsity;
    if (!isfinite(x)) return "non-finite target";
    if (!(x > rho)) return "listed layer does not grow";
    if (x > rho + lim->step_cap + 1e-12) {
      snprintf(why, sizeof why, "step %.6f above cap %.6f", x - rho, lim->step_cap);
      return why;
    }
    if (x > lim->ceiling + 1e-12) return "above ceiling";
    add += (double)t->layers[r]->params * (x - rho);
  }
  double after = G + add / P;
  if (after_out) *after_out = after;
  if (G < lim->target - lim->tolerance && d->n_layers == 0) return "no progress";
  if (add > 0 && after > lim->target + 0.5 * lim->tolerance + 1e-9) {
    snprintf(why, sizeof why, "overshoot: %.6f > target %.6f", after, lim->target);
    return why;
  }
  return NULL;
}

static void decide(const ap_decide_ctx *ctx, Agentprune__V1__Decision *d, int *rc, char *err, size_t errlen) {
  agentprune__v1__decision__init(d);
  *rc = ap_rule_decide(ctx, d, err, errlen);
}

/* ---- property test -------------------------------------------------------------- */

static void test_property(void) {
  uint64_t rng = 42;
  int cases = 0, ok_cases = 0, checked_invalid = 0, validate_agree = 1;
  char err[512], verr[512];
  for (int c = 0; c < 3000; c++) {
    int blocks = 1 + (int)(fx_uniform(&rng) * 24);
    double rho0 = fx_uniform(&rng) < 0.3 ? 0 : fx_uniform(&rng) * 0.8;
    Agentprune__V1__ProfileTable *t = fx_table(blocks, rho0);
    double step_cap = fx_uniform(&rng) < 0.3 ? 0 : 0.01 + fx_uniform(&rng) * 0.29;
    double ceiling = fx_uniform(&rng) < 0.3 ? 0 : 0.5 + fx_uniform(&rng) * 0.49;
    double ceil_eff = ceiling > 0 ? ceiling : 0.9;
    double target = 0.05 + fx_uniform(&rng) * (ceil_eff - 0.06);
    double tol = fx_uniform(&rng) < 0.5 ? 0 : 0.001 + fx_uniform(&rng) * 0.02;
    for (size_t i = 0; i < t->n_layers; i++) {
      Agentprune__V1__LayerProfile *l = t->layers[i];
      double u = fx_uniform(&rng);
      l->rho = u < 0.6 ? rho0 : u < 0.9 ? fx_uniform(&rng) * 0.95 : ceil_eff; /* some at the ceiling */
      if (fx_uniform(&rng) < 0.1) l->params = 1 + (uint64_t)(fx_uniform(&rng) * 10); /* tiny layers */
      l->z_s = fx_normal(&rng) * (fx_uniform(&rng) < 0.05 ? 20 : 1);
      l->z_g = fx_normal(&rng);
      size_t nd = (size_t)(fx_uniform(&rng) * 4);
      if (nd) {
        l->n_dppl_history = nd;
        l->dppl_history = malloc(nd * sizeof(double));
        for (size_t k = 0; k < nd; k++) l->dppl_history[k] = fx_normal(&rng) * 0.05;
      }
    }
    uint32_t iteration = 1 + (uint32_t)(fx_uniform(&rng) * 30);
    Agentprune__V1__DecideRequest *req = fx_request(SID, iteration, t, target);
    if (fx_uniform(&rng) < 0.2) req->state->max_iterations = iteration + (uint32_t)(fx_uniform(&rng) * 3);
    if (fx_uniform(&rng) < 0.2) req->state->tau = 0.001 + fx_uniform(&rng) * 0.2;
    Agentprune__V1__Session *s = fx_session(SID, fx_constraints(target, step_cap, ceiling, tol));
    /* Random history: earlier iterations, some rolled back, some naming unknown layers. */
    Agentprune__V1__History *h = fx_history();
    for (uint32_t it = iteration > 10 ? iteration - 10 : 1; it < iteration; it++) {
      Agentprune__V1__Decision d = AGENTPRUNE__V1__DECISION__INIT;
      d.iteration = it;
      size_t nl = (size_t)(fx_uniform(&rng) * (double)t->n_layers);
      Agentprune__V1__LayerTarget **lts = calloc(nl + 2, sizeof *lts);
      char names[8][64];
      for (size_t k = 0; k < nl + 1; k++) {
        lts[k] = malloc(sizeof **lts);
        agentprune__v1__layer_target__init(lts[k]);
        if (k == nl) {
          snprintf(names[0], sizeof names[0], "gone.layer.%u", it);
          lts[k]->name = names[0];
        } else {
          lts[k]->name = t->layers[(size_t)(fx_uniform(&rng) * (double)t->n_layers)]->name;
        }
        lts[k]->target_sparsity = fx_uniform(&rng);
      }
      d.layers = lts;
      d.n_layers = nl + 1;
      double pb = 10 + fx_uniform(&rng), pa = pb * (1 + fx_uniform(&rng) * 0.1);
      fx_history_add(h, &d, req->state, fx_uniform(&rng) < 0.7, pb, pa, req->state->global_sparsity);
      h->entries[h->n_entries - 1]->state->global_sparsity = fmax(0, req->state->global_sparsity - 0.03);
      for (size_t k = 0; k < nl + 1; k++) free(lts[k]);
      free(lts);
    }
    ap_decide_ctx ctx = {.session = s, .req = req, .history = h, .deadline_ms = INT64_MAX};
    ap_limits lim;
    ap_limits_from(s->constraints, &lim);
    Agentprune__V1__Decision d;
    int rc;
    decide(&ctx, &d, &rc, err, sizeof err);
    cases++;
    double G = fx_global(t);
    if (rc == 0) {
      ok_cases++;
      double after = 0;
      const char *why = check_decision(t, &lim, &d, &after);
      if (why) CHECKF(0, "case %d: %s (G %.4f target %.4f cap %.3f ceil %.3f)", c, why, G, lim.target, lim.step_cap,
                      lim.ceiling);
      if (G < lim.target - lim.tolerance && !(after > G)) CHECKF(0, "case %d: no progress", c);
      if (!d.rationale || !*d.rationale || !d.policy || strcmp(d.policy, "rule") != 0)
        CHECKF(0, "case %d: rationale or policy missing", c);
      d.session_id = fx_strdup(SID);
      if (ap_decision_validate(&ctx, &d, verr, sizeof verr) != 0) {
        validate_agree = 0;
        fprintf(stderr, "case %d: validate disagrees: %s\n", c, verr);
      }
    } else {
      /* Only legitimate when no layer has room for a minimal step even after three halvings. */
      int room = 0;
      for (size_t i = 0; i < t->n_layers; i++) {
        double r = fmin(fmin(lim.step_cap / 8, 0.25 * (1 - t->layers[i]->rho)), lim.ceiling - t->layers[i]->rho);
        if (r >= 5e-4) room = 1;
      }
      checked_invalid++;
      if (room && G < lim.target - lim.tolerance) CHECKF(0, "case %d: refused although layers have room: %s", c, err);
    }
    ap_decision_clear(&d);
    free_msg(req);
    free_msg(s);
    free_msg(h);
  }
  CHECK(validate_agree);
  CHECKF(ok_cases > cases * 9 / 10, "%d of %d cases decided", ok_cases, cases);
  printf("property: %d cases, %d decided, %d refused\n", cases, ok_cases, checked_invalid);
}

/* ---- determinism and direction -------------------------------------------------- */

static void test_determinism_and_direction(void) {
  char err[256];
  uint64_t rng = 7;
  Agentprune__V1__ProfileTable *t = fx_table(12, 0.1);
  for (size_t i = 0; i < t->n_layers; i++) {
    t->layers[i]->z_s = fx_normal(&rng);
    t->layers[i]->z_g = fx_normal(&rng);
  }
  Agentprune__V1__DecideRequest *req = fx_request(SID, 1, t, 0.6);
  Agentprune__V1__Session *s = fx_session(SID, fx_constraints(0.6, 0, 0, 0));
  ap_decide_ctx ctx = {.session = s, .req = req, .history = NULL, .deadline_ms = INT64_MAX};
  Agentprune__V1__Decision a, b;
  int rc1, rc2;
  decide(&ctx, &a, &rc1, err, sizeof err);
  /* The same request through a pack/unpack copy: byte-identical decision. */
  size_t n = agentprune__v1__decide_request__get_packed_size(req);
  uint8_t *buf = malloc(n);
  agentprune__v1__decide_request__pack(req, buf);
  Agentprune__V1__DecideRequest *req2 = agentprune__v1__decide_request__unpack(NULL, n, buf);
  free(buf);
  ap_decide_ctx ctx2 = {.session = s, .req = req2, .history = NULL, .deadline_ms = 5};
  decide(&ctx2, &b, &rc2, err, sizeof err);
  CHECK(rc1 == 0 && rc2 == 0);
  size_t na = agentprune__v1__decision__get_packed_size(&a), nb = agentprune__v1__decision__get_packed_size(&b);
  uint8_t *ba = malloc(na), *bb = malloc(nb);
  agentprune__v1__decision__pack(&a, ba);
  agentprune__v1__decision__pack(&b, bb);
  CHECK(na == nb && memcmp(ba, bb, na) == 0);
  free(ba);
  free(bb);
  ap_decision_clear(&a);
  ap_decision_clear(&b);
  free_msg(req2);
  free_msg(req);

  /* Direction 1: one block, z = -2 for half the layers, +2 for the others. */
  t = fx_table(1, 0.2);
  for (size_t i = 0; i < t->n_layers; i++) t->layers[i]->z_s = t->layers[i]->z_g = (i % 2) ? 2.0 : -2.0;
  req = fx_request(SID, 1, t, 0.6);
  ctx.req = req;
  decide(&ctx, &a, &rc1, err, sizeof err);
  double ins = 0, sens = 0;
  int n_ins = 0, n_sens = 0;
  for (size_t j = 0; j < a.n_layers; j++) {
    long r = find_row(t, a.layers[j]->name);
    double step = a.layers[j]->target_sparsity - t->layers[r]->rho;
    if (r % 2) {
      sens += step;
      n_sens++;
    } else {
      ins += step;
      n_ins++;
    }
  }
  CHECKF(n_ins > 0 && (n_sens == 0 || ins / n_ins > sens / n_sens), "insensitive %.4f vs sensitive %.4f",
         n_ins ? ins / n_ins : 0, n_sens ? sens / n_sens : 0);
  ap_decision_clear(&a);
  free_msg(req);

  /* Direction 2: equal z-scores, 8 blocks: a deeper block never gets a smaller step (same kind). */
  t = fx_table(8, 0.2);
  req = fx_request(SID, 1, t, 0.6);
  ctx.req = req;
  decide(&ctx, &a, &rc1, err, sizeof err);
  double step_of[8][7] = {{0}};
  for (size_t j = 0; j < a.n_layers; j++) {
    long r = find_row(t, a.layers[j]->name);
    step_of[r / 7][r % 7] = a.layers[j]->target_sparsity - t->layers[r]->rho;
  }
  /* Ranks tie-break by row, so compare block means against the first block. */
  double first = 0, last = 0;
  for (int k = 0; k < 7; k++) {
    first += step_of[0][k];
    last += step_of[7][k];
  }
  CHECKF(last > first, "block 7 steps %.4f vs block 0 %.4f", last, first);
  ap_decision_clear(&a);
  free_msg(req);
  free_msg(s);
}

/* ---- reflection ------------------------------------------------------------------ */

/* A decision that lists `rows` of t at rho + step. */
static void make_decision(Agentprune__V1__Decision *d, uint32_t it, const Agentprune__V1__ProfileTable *t,
                          const long *rows, size_t n, double step) {
  agentprune__v1__decision__init(d);
  d->iteration = it;
  d->layers = calloc(n ? n : 1, sizeof *d->layers);
  for (size_t k = 0; k < n; k++) {
    Agentprune__V1__LayerTarget *lt = malloc(sizeof *lt);
    agentprune__v1__layer_target__init(lt);
    lt->name = fx_strdup(t->layers[rows[k]]->name);
    lt->target_sparsity = t->layers[rows[k]]->rho + step;
    d->layers[d->n_layers++] = lt;
  }
  d->policy = fx_strdup("rule");
}

static void test_reflection(void) {
  char err[256];
  uint64_t rng = 99;
  Agentprune__V1__ProfileTable *t = fx_table(8, 0.2);
  for (size_t i = 0; i < t->n_layers; i++) {
    t->layers[i]->z_s = fx_normal(&rng);
    t->layers[i]->z_g = fx_normal(&rng);
  }
  size_t n = t->n_layers;
  long s_rows[28], o_rows[28];
  size_t ns = 0, no = 0;
  for (size_t i = 0; i < n; i++) {
    if (i < n / 2) s_rows[ns++] = (long)i; /* blocks 0..3: the rolled-back set S */
    else o_rows[no++] = (long)i;
  }
  Agentprune__V1__Session *s = fx_session(SID, fx_constraints(0.7, 0, 0, 0));

  /* Without history: some S layers step above half the cap (so halving is observable). */
  Agentprune__V1__DecideRequest *req = fx_request(SID, 5, t, 0.7);
  ap_decide_ctx ctx = {.session = s, .req = req, .history = NULL, .deadline_ms = INT64_MAX};
  Agentprune__V1__Decision d;
  int rc;
  decide(&ctx, &d, &rc, err, sizeof err);
  double max_s_free = 0;
  for (size_t j = 0; j < d.n_layers; j++) {
    long r = find_row(t, d.layers[j]->name);
    if ((size_t)r < n / 2) max_s_free = fmax(max_s_free, d.layers[j]->target_sparsity - t->layers[r]->rho);
  }
  CHECKF(max_s_free > 0.05 + 1e-9, "precondition: S steps up to %.4f without history", max_s_free);
  ap_decision_clear(&d);

  /* History: 1..3 accepted (touching the other half), 4 rolled back touching S. */
  Agentprune__V1__History *h = fx_history();
  for (uint32_t it = 1; it <= 4; it++) {
    Agentprune__V1__Decision hd;
    if (it < 4) make_decision(&hd, it, t, o_rows, no, 0.0);
    else make_decision(&hd, it, t, s_rows, ns, 0.1);
    if (it < 4) { /* accepted entries that moved nothing measurable */
      for (size_t k = 0; k < hd.n_layers; k++) hd.layers[k]->target_sparsity += 0.01;
    }
    fx_history_add(h, &hd, req->state, it < 4, 10, it < 4 ? 10.1 : 12.0, 0.2);
    ap_decision_clear(&hd);
  }
  ctx.history = h;
  /* Iterations 5 and 6: S held (the other half has plenty of room). */
  for (uint32_t it = 5; it <= 6; it++) {
    req->iteration = it;
    req->state->iteration = it;
    decide(&ctx, &d, &rc, err, sizeof err);
    CHECK_EQ_INT(rc, 0);
    int s_listed = 0;
    double after = 0;
    for (size_t j = 0; j < d.n_layers; j++)
      if ((size_t)find_row(t, d.layers[j]->name) < n / 2) s_listed++;
    CHECKF(s_listed == 0, "iteration %u: %d held layers listed", it, s_listed);
    ap_limits lim;
    ap_limits_from(s->constraints, &lim);
    CHECK(check_decision(t, &lim, &d, &after) == NULL);
    if (it == 5) {
      /* Half of the step the rolled-back decision tried (S at +0.1). */
      double P = 0, PS = 0;
      for (size_t i = 0; i < n; i++) {
        P += (double)t->layers[i]->params;
        if (i < n / 2) PS += (double)t->layers[i]->params;
      }
      double tried = 0.1 * PS / P;
      CHECK_NEAR(after - fx_global(t), 0.5 * tried, 1e-6);
      CHECK(d.rationale && strstr(d.rationale, "rollback") != NULL);
    }
    ap_decision_clear(&d);
  }
  /* Iteration 7 (after accepted 5 and 6): S may move again, at most half the cap. */
  Agentprune__V1__History *h2 = fx_history();
  for (size_t e = 0; e < h->n_entries; e++) {
    Agentprune__V1__HistoryEntry *he = h->entries[e];
    fx_history_add(h2, he->decision, he->state, he->outcome->accepted, he->outcome->ppl_before,
                   he->outcome->ppl_after, he->outcome->global_sparsity);
  }
  for (uint32_t it = 5; it <= 6; it++) {
    Agentprune__V1__Decision hd;
    make_decision(&hd, it, t, o_rows, 1, 0.01);
    fx_history_add(h2, &hd, req->state, 1, 10, 10.01, 0.2);
    ap_decision_clear(&hd);
  }
  ctx.history = h2;
  req->iteration = 7;
  req->state->iteration = 7;
  decide(&ctx, &d, &rc, err, sizeof err);
  double max_s = 0;
  int s_listed = 0;
  for (size_t j = 0; j < d.n_layers; j++) {
    long r = find_row(t, d.layers[j]->name);
    if ((size_t)r < n / 2) {
      s_listed++;
      max_s = fmax(max_s, d.layers[j]->target_sparsity - t->layers[r]->rho);
    }
  }
  CHECKF(s_listed > 0, "iteration 7: S released");
  CHECKF(max_s <= 0.05 + 1e-12, "iteration 7: S step %.4f above half the cap", max_s);
  ap_decision_clear(&d);

  /* A second rollback of S (iteration 7) -> quarter cap at iteration 10. */
  Agentprune__V1__Decision hd;
  make_decision(&hd, 7, t, s_rows, ns, 0.05);
  fx_history_add(h2, &hd, req->state, 0, 10, 12, 0.2);
  ap_decision_clear(&hd);
  for (uint32_t it = 8; it <= 9; it++) {
    make_decision(&hd, it, t, o_rows, 1, 0.01);
    fx_history_add(h2, &hd, req->state, 1, 10, 10.01, 0.2);
    ap_decision_clear(&hd);
  }
  req->iteration = 10;
  req->state->iteration = 10;
  decide(&ctx, &d, &rc, err, sizeof err);
  max_s = 0;
  for (size_t j = 0; j < d.n_layers; j++) {
    long r = find_row(t, d.layers[j]->name);
    if ((size_t)r < n / 2) max_s = fmax(max_s, d.layers[j]->target_sparsity - t->layers[r]->rho);
  }
  CHECKF(max_s <= 0.025 + 1e-12, "iteration 10: S step %.4f above a quarter of the cap", max_s);
  ap_decision_clear(&d);

  /* Every layer in the rolled-back decision: holding all would stall, so they
   * are released with halved steps and the step is half the tried one. */
  Agentprune__V1__History *h3 = fx_history();
  long all[56];
  for (size_t i = 0; i < n; i++) all[i] = (long)i;
  make_decision(&hd, 1, t, all, n, 0.08);
  fx_history_add(h3, &hd, req->state, 0, 10, 13, 0.2);
  ap_decision_clear(&hd);
  ctx.history = h3;
  req->iteration = 2;
  req->state->iteration = 2;
  decide(&ctx, &d, &rc, err, sizeof err);
  CHECK_EQ_INT(rc, 0);
  double after = 0, maxstep = 0;
  ap_limits lim;
  ap_limits_from(s->constraints, &lim);
  CHECK(check_decision(t, &lim, &d, &after) == NULL);
  for (size_t j = 0; j < d.n_layers; j++) {
    long r = find_row(t, d.layers[j]->name);
    maxstep = fmax(maxstep, d.layers[j]->target_sparsity - t->layers[r]->rho);
  }
  CHECK_NEAR(after - fx_global(t), 0.04, 1e-6);
  CHECK(maxstep <= 0.05 + 1e-12);
  CHECK(d.rationale && strstr(d.rationale, "released") != NULL);
  ap_decision_clear(&d);

  free_msg(h);
  free_msg(h2);
  free_msg(h3);
  free_msg(req);
  free_msg(s);
}

/* ---- simulated loop --------------------------------------------------------------- */

typedef struct {
  size_t n;
  double *h;      /* true sensitivity per layer */
  double *noise;  /* fixed measurement noise per layer */
} sim_model;

/* log(ppl / dense) = sum_i w_i h_i (0.5 r^2 + 0.5 r^4): convex, so sensitive layers should stay sparser. */
static double sim_logppl(const sim_model *m, const Agentprune__V1__ProfileTable *t, const double *rho) {
  double P = 0, L = 0;
  for (size_t i = 0; i < m->n; i++) P += (double)t->layers[i]->params;
  for (size_t i = 0; i < m->n; i++) {
    double r = rho[i];
    L += (double)t->layers[i]->params / P * m->h[i] * (0.5 * r * r + 0.5 * r * r * r * r);
  }
  return L;
}

/* The profile the pruner would send: s and g track sensitivity and grow as the layer is pruned. */
static void sim_profile(const sim_model *m, Agentprune__V1__ProfileTable *t) {
  for (size_t i = 0; i < m->n; i++) {
    double r = t->layers[i]->rho;
    t->layers[i]->s = m->h[i] * (1 + 1.5 * r) * exp(0.15 * m->noise[i]);
    t->layers[i]->g = m->h[i] * (1 + r) * exp(-0.1 * m->noise[i]);
  }
  fx_zscores(t);
}

typedef struct {
  double final_sparsity, final_logppl, uniform_logppl;
  int iterations, rollbacks, reached;
} sim_result;

static sim_result simulate(double target, int depth_truth, uint64_t seed) {
  sim_result res = {0};
  uint64_t rng = seed;
  int blocks = 16;
  Agentprune__V1__ProfileTable *t = fx_table(blocks, 0);
  sim_model m = {t->n_layers, calloc(t->n_layers, sizeof(double)), calloc(t->n_layers, sizeof(double))};
  for (size_t i = 0; i < m.n; i++) {
    double depth = depth_truth ? 1.6 - 1.2 * (double)t->layers[i]->block / (blocks - 1) : 1.0;
    m.h[i] = depth * exp(0.6 * fx_normal(&rng));
    m.noise[i] = fx_normal(&rng);
  }
  Agentprune__V1__Session *s = fx_session(SID, fx_constraints(target, 0, 0, 0));
  ap_limits lim;
  ap_limits_from(s->constraints, &lim);
  Agentprune__V1__History *h = fx_history();
  double *rho = calloc(m.n, sizeof(double)), *trial = calloc(m.n, sizeof(double));
  double dense = 10, accepted_ppl = dense, tau = 0.05;
  int consecutive = 0;
  uint32_t it;
  for (it = 1; it <= 60; it++) {
    for (size_t i = 0; i < m.n; i++) t->layers[i]->rho = rho[i];
    double G = fx_global(t);
    if (fabs(G - target) <= lim.tolerance) break;
    sim_profile(&m, t);
    Agentprune__V1__DecideRequest *req = fx_request(SID, it, t, target);
    req->state->current_ppl = accepted_ppl;
    req->state->consecutive_rollbacks = (uint32_t)consecutive;
    ap_decide_ctx ctx = {.session = s, .req = req, .history = h, .deadline_ms = INT64_MAX};
    Agentprune__V1__Decision d;
    int rc;
    char err[256];
    decide(&ctx, &d, &rc, err, sizeof err);
    if (rc != 0) {
      CHECKF(0, "simulate: %s", err);
      req->profile = NULL;
      free_msg(req);
      break;
    }
    const char *why = check_decision(t, &lim, &d, NULL);
    if (why) CHECKF(0, "simulate iteration %u: %s", it, why);
    memcpy(trial, rho, m.n * sizeof(double));
    for (size_t j = 0; j < d.n_layers; j++) trial[find_row(t, d.layers[j]->name)] = d.layers[j]->target_sparsity;
    double ppl_new = dense * exp(sim_logppl(&m, t, trial));
    int ok = ppl_new <= accepted_ppl * (1 + tau);
    double G_after = ok ? 0 : G;
    if (ok) {
      memcpy(rho, trial, m.n * sizeof(double));
      for (size_t i = 0; i < m.n; i++) t->layers[i]->rho = rho[i];
      G_after = fx_global(t);
    }
    d.iteration = it;
    fx_history_add(h, &d, req->state, ok, accepted_ppl, ppl_new, G_after);
    /* dppl_history of the layers the iteration touched. */
    for (size_t j = 0; j < d.n_layers; j++) {
      Agentprune__V1__LayerProfile *l = t->layers[find_row(t, d.layers[j]->name)];
      l->dppl_history = realloc(l->dppl_history, (l->n_dppl_history + 1) * sizeof(double));
      l->dppl_history[l->n_dppl_history++] = ppl_new / accepted_ppl - 1;
    }
    if (ok) {
      accepted_ppl = ppl_new;
      consecutive = 0;
    } else {
      res.rollbacks++;
      consecutive++;
    }
    ap_decision_clear(&d);
    req->profile = NULL; /* t is reused */
    free_msg(req);
    if (consecutive >= 4) break;
  }
  for (size_t i = 0; i < m.n; i++) t->layers[i]->rho = rho[i];
  res.final_sparsity = fx_global(t);
  res.iterations = (int)it - 1;
  res.reached = fabs(res.final_sparsity - target) <= lim.tolerance;
  res.final_logppl = sim_logppl(&m, t, rho);
  for (size_t i = 0; i < m.n; i++) trial[i] = res.final_sparsity;
  res.uniform_logppl = sim_logppl(&m, t, trial);
  free(rho);
  free(trial);
  free(m.h);
  free(m.noise);
  free_msg(h);
  free_msg(s);
  free_msg(t);
  return res;
}

static void test_simulated_loop(void) {
  const double targets[2] = {0.5, 0.7};
  for (int k = 0; k < 2; k++)
    for (int depth_truth = 0; depth_truth <= 1; depth_truth++)
      for (uint64_t seed = 1; seed <= 3; seed++) {
        sim_result r = simulate(targets[k], depth_truth, seed);
        printf("simulated target %.2f depth-truth %d seed %llu: sparsity %.4f in %d iterations (%d rollbacks), "
               "ppl x%.4f vs uniform x%.4f\n",
               targets[k], depth_truth, (unsigned long long)seed, r.final_sparsity, r.iterations, r.rollbacks,
               exp(r.final_logppl), exp(r.uniform_logppl));
        CHECKF(r.reached, "target %.2f: reached %.4f", targets[k], r.final_sparsity);
        CHECK(r.final_sparsity <= targets[k] + 0.005 + 1e-9);
        CHECKF(r.final_logppl < r.uniform_logppl, "target %.2f depth %d seed %llu: %.5f vs uniform %.5f",
               targets[k], depth_truth, (unsigned long long)seed, r.final_logppl, r.uniform_logppl);
      }
}

/* ---- validation --------------------------------------------------------------------- */

static void test_validate(void) {
  char err[512];
  Agentprune__V1__ProfileTable *t = fx_table(2, 0.3);
  t->layers[3]->rho = 0.85;
  Agentprune__V1__DecideRequest *req = fx_request(SID, 1, t, 0.5);
  Agentprune__V1__Session *s = fx_session(SID, fx_constraints(0.5, 0, 0, 0));
  ap_decide_ctx ctx = {.session = s, .req = req, .history = NULL, .deadline_ms = INT64_MAX};
  ap_limits lim;
  ap_limits_from(s->constraints, &lim);
  CHECK_NEAR(lim.step_cap, 0.10, 0);
  CHECK_NEAR(lim.ceiling, 0.90, 0);
  CHECK_NEAR(lim.tolerance, 0.005, 0);
  CHECK_NEAR(lim.target, 0.5, 0);
  ap_limits_from(NULL, &lim);
  CHECK_NEAR(lim.target, 0.0, 0);

  Agentprune__V1__LayerTarget a = AGENTPRUNE__V1__LAYER_TARGET__INIT, b = AGENTPRUNE__V1__LAYER_TARGET__INIT;
  Agentprune__V1__LayerTarget *two[2] = {&a, &b};
  Agentprune__V1__Decision d = AGENTPRUNE__V1__DECISION__INIT;
  d.layers = two;
  d.n_layers = 1;
  a.name = t->layers[0]->name;
  a.target_sparsity = 0.4;
  CHECK(ap_decision_validate(&ctx, &d, err, sizeof err) == 0);
  a.target_sparsity = 0.4 + 1e-6; /* above rho + cap */
  CHECK(ap_decision_validate(&ctx, &d, err, sizeof err) != 0 && strstr(err, "exceeds"));
  a.target_sparsity = 0.29;
  CHECK(ap_decision_validate(&ctx, &d, err, sizeof err) != 0 && strstr(err, "below"));
  a.target_sparsity = NAN;
  CHECK(ap_decision_validate(&ctx, &d, err, sizeof err) != 0 && strstr(err, "finite"));
  a.target_sparsity = 0.3; /* no growth at all */
  CHECK(ap_decision_validate(&ctx, &d, err, sizeof err) != 0 && strstr(err, "no layer grows"));
  a.name = "model.layers.9.mlp.up_proj";
  a.target_sparsity = 0.35;
  CHECK(ap_decision_validate(&ctx, &d, err, sizeof err) != 0 && strstr(err, "not in the profile"));
  a.name = t->layers[0]->name;
  b.name = t->layers[0]->name;
  b.target_sparsity = 0.35;
  d.n_layers = 2;
  CHECK(ap_decision_validate(&ctx, &d, err, sizeof err) != 0 && strstr(err, "more than once"));
  b.name = t->layers[3]->name; /* rho 0.85: ceiling 0.90 binds before the cap */
  b.target_sparsity = 0.91;
  CHECK(ap_decision_validate(&ctx, &d, err, sizeof err) != 0 && strstr(err, "ceiling"));
  b.target_sparsity = 0.9;
  CHECK(ap_decision_validate(&ctx, &d, err, sizeof err) == 0);
  /* Overshoot: a target just above the current global. */
  ap_decision_clear(NULL);
  free_msg(s);
  double G = fx_global(t);
  s = fx_session(SID, fx_constraints(G + 0.001, 0, 0, 0.002));
  ctx.session = s;
  d.n_layers = 1;
  a.target_sparsity = 0.4;
  CHECK(ap_decision_validate(&ctx, &d, err, sizeof err) != 0 && strstr(err, "overshoots"));
  /* Target reached: an empty decision is fine. */
  d.n_layers = 0;
  CHECK(ap_decision_validate(&ctx, &d, err, sizeof err) == 0);

  /* ap_decision_clear frees what a policy allocated and re-initialises. */
  Agentprune__V1__Decision m = AGENTPRUNE__V1__DECISION__INIT;
  char e2[128];
  Agentprune__V1__Session *s6 = fx_session(SID, fx_constraints(0.6, 0, 0, 0));
  CHECK(ap_rule_decide(&(ap_decide_ctx){.session = s6, .req = req}, &m, e2, sizeof e2) == 0);
  CHECK(m.n_layers > 0);
  free_msg(s6);
  ap_decision_clear(&m);
  CHECK(m.n_layers == 0 && m.layers == NULL);

  free_msg(req);
  free_msg(s);
}

static void test_requests(void) {
  char err[512];
  Agentprune__V1__Constraints c = AGENTPRUNE__V1__CONSTRAINTS__INIT;
  c.target_sparsity = 0.5;
  Agentprune__V1__SessionSpec spec = AGENTPRUNE__V1__SESSION_SPEC__INIT;
  spec.job_id = "job-1";
  spec.constraints = &c;
  CHECK(ap_check_session_spec(&spec, err, sizeof err) == 0);
  spec.job_id = "";
  CHECK(ap_check_session_spec(&spec, err, sizeof err) != 0);
  spec.job_id = "job-1";
  spec.policy = "magic";
  CHECK(ap_check_session_spec(&spec, err, sizeof err) != 0);
  spec.policy = "llm";
  CHECK(ap_check_session_spec(&spec, err, sizeof err) == 0);
  double bad_targets[] = {0, 1, -0.1, NAN, 0.95 /* above the default ceiling */};
  for (int i = 0; i < 5; i++) {
    c.target_sparsity = bad_targets[i];
    CHECKF(ap_check_session_spec(&spec, err, sizeof err) != 0, "target %g accepted", bad_targets[i]);
  }
  c.target_sparsity = 0.5;
  c.step_cap = -0.1;
  CHECK(ap_check_session_spec(&spec, err, sizeof err) != 0);
  c.step_cap = 0;
  c.tolerance = NAN;
  CHECK(ap_check_session_spec(&spec, err, sizeof err) != 0);
  c.tolerance = 0;
  const char *structs_ok[] = {"", "unstructured", "2:4", "4:8"}, *structs_bad[] = {"4:2", "2:4x", "0:4", "nm"};
  for (int i = 0; i < 4; i++) {
    c.structure = (char *)structs_ok[i];
    CHECKF(ap_check_session_spec(&spec, err, sizeof err) == 0, "%s refused", structs_ok[i]);
    c.structure = (char *)structs_bad[i];
    CHECKF(ap_check_session_spec(&spec, err, sizeof err) != 0, "%s accepted", structs_bad[i]);
  }
  c.structure = "";
  spec.constraints = NULL;
  CHECK(ap_check_session_spec(&spec, err, sizeof err) != 0);

  Agentprune__V1__ProfileTable *t = fx_table(2, 0.1);
  Agentprune__V1__DecideRequest *req = fx_request(SID, 3, t, 0.5);
  CHECK(ap_check_decide_request(req, err, sizeof err) == 0);
  req->iteration = 0;
  CHECK(ap_check_decide_request(req, err, sizeof err) != 0);
  req->iteration = 3;
  req->state->iteration = 4;
  CHECK(ap_check_decide_request(req, err, sizeof err) != 0 && strstr(err, "differs"));
  req->state->iteration = 3;
  req->state->current_ppl = -1;
  CHECK(ap_check_decide_request(req, err, sizeof err) != 0);
  req->state->current_ppl = 10;
  t->layers[5]->rho = 1.5;
  CHECK(ap_check_decide_request(req, err, sizeof err) != 0 && strstr(err, "rho"));
  t->layers[5]->rho = 0.1;
  t->layers[4]->z_g = INFINITY;
  CHECK(ap_check_decide_request(req, err, sizeof err) != 0);
  t->layers[4]->z_g = 0;
  t->layers[2]->s = NAN;
  CHECK(ap_check_decide_request(req, err, sizeof err) != 0);
  t->layers[2]->s = 1;
  t->layers[1]->params = 0;
  CHECK(ap_check_decide_request(req, err, sizeof err) != 0);
  t->layers[1]->params = 10;
  free(t->layers[6]->name);
  t->layers[6]->name = fx_strdup(t->layers[0]->name);
  CHECK(ap_check_decide_request(req, err, sizeof err) != 0 && strstr(err, "twice"));
  free(t->layers[6]->name);
  t->layers[6]->name = fx_strdup("");
  CHECK(ap_check_decide_request(req, err, sizeof err) != 0);
  free(t->layers[6]->name);
  t->layers[6]->name = fx_strdup("x");
  t->layers[6]->n_dppl_history = 1;
  t->layers[6]->dppl_history = malloc(sizeof(double));
  t->layers[6]->dppl_history[0] = NAN;
  CHECK(ap_check_decide_request(req, err, sizeof err) != 0);
  t->layers[6]->dppl_history[0] = 0.01;
  CHECK(ap_check_decide_request(req, err, sizeof err) == 0);
  size_t keep = t->n_layers;
  t->n_layers = 100001; /* absurd size is refused before the rows are read */
  CHECK(ap_check_decide_request(req, err, sizeof err) != 0 && strstr(err, "more than"));
  t->n_layers = keep;
  free(req->session_id);
  req->session_id = fx_strdup("");
  CHECK(ap_check_decide_request(req, err, sizeof err) != 0);
  free(req->session_id);
  req->session_id = fx_strdup("0123456789ABCDEF0123456789abcdef");
  CHECK(ap_check_decide_request(req, err, sizeof err) != 0);
  free_msg(req);

  Agentprune__V1__Outcome o = AGENTPRUNE__V1__OUTCOME__INIT;
  o.session_id = SID;
  o.iteration = 1;
  o.ppl_before = 10;
  o.ppl_after = INFINITY; /* a broken model is a legitimate rollback */
  CHECK(ap_check_outcome(&o, err, sizeof err) == 0);
  o.ppl_after = NAN;
  CHECK(ap_check_outcome(&o, err, sizeof err) != 0);
  o.ppl_after = 11;
  o.global_sparsity = 1.2;
  CHECK(ap_check_outcome(&o, err, sizeof err) != 0);
  o.global_sparsity = 0.5;
  o.iteration = 0;
  CHECK(ap_check_outcome(&o, err, sizeof err) != 0);
}


/* ---- front-to-back schedule with probes (rule_blockwise.c) ----------------------- */

static double plan_mass(const Agentprune__V1__ProfileTable *t, const Agentprune__V1__Plan *pl) {
  double P = 0, m = 0;
  for (size_t i = 0; i < t->n_layers; i++) {
    double x = t->layers[i]->rho;
    for (size_t k = 0; k < pl->n_layers; k++)
      if (!strcmp(pl->layers[k]->name, t->layers[i]->name)) x = pl->layers[k]->target_sparsity;
    P += (double)t->layers[i]->params;
    m += (double)t->layers[i]->params * x;
  }
  return m / P;
}

static double plan_target(const Agentprune__V1__Plan *pl, const char *name, double dflt) {
  for (size_t k = 0; k < pl->n_layers; k++)
    if (!strcmp(pl->layers[k]->name, name)) return pl->layers[k]->target_sparsity;
  return dflt;
}

/* Gives the outcome of history entry e one measured result per ppl. */
static void set_probe_results(Agentprune__V1__HistoryEntry *e, const Agentprune__V1__Decision *d, const double *ppl,
                              size_t n) {
  Agentprune__V1__Outcome *o = e->outcome;
  o->probe_results = calloc(n, sizeof *o->probe_results);
  for (size_t p = 0; p < n; p++) {
    o->probe_results[p] = malloc(sizeof *o->probe_results[p]);
    agentprune__v1__probe_result__init(o->probe_results[p]);
    o->probe_results[p]->label = fx_strdup(d->probes[p]->label);
    o->probe_results[p]->ppl = ppl[p];
  }
  o->n_probe_results = n;
}

static void test_blockwise(void) {
  char err[512];
  const double T = 0.6;
  Agentprune__V1__ProfileTable *t = fx_table(4, 0.0);
  fx_zscores(t);
  for (size_t i = 0; i < t->n_layers; i++) t->layers[i]->outlier = 0.04 - 0.01 * t->layers[i]->block; /* block 0 most */
  Agentprune__V1__Constraints *c = fx_constraints(T, 0, 0, 0);
  Agentprune__V1__Session *s = fx_session(SID, c);
  Agentprune__V1__History *h = fx_history();
  Agentprune__V1__DecideRequest *req = fx_request(SID, 1, t, T);
  req->state->max_probes = 8;
  ap_decide_ctx ctx = {s, req, h, INT64_MAX};
  ap_limits lim;
  ap_limits_from(c, &lim);

  /* Iteration 1: probes for block 0, no layers; each plan meets the target. */
  Agentprune__V1__Decision d;
  int rc;
  decide(&ctx, &d, &rc, err, sizeof err);
  CHECKF(rc == 0, "%s", err);
  CHECK(d.n_layers == 0);
  CHECK(d.n_probes == 6);
  CHECKF(ap_decision_validate(&ctx, &d, err, sizeof err) == 0, "%s", err);
  for (size_t p = 0; p < d.n_probes; p++) {
    CHECKF(!strncmp(d.probes[p]->label, "b0+1/", 5), "label %s", d.probes[p]->label);
    CHECKF(fabs(plan_mass(t, d.probes[p]) - T) < 1e-6, "plan %s mass %.6f", d.probes[p]->label,
           plan_mass(t, d.probes[p]));
  }
  CHECK(!strcmp(d.probes[0]->label, "b0+1/owl/even") && !strcmp(d.probes[2]->label, "b0+1/owl/attn"));
  /* OWL: the block with the most outliers keeps the most weights. */
  const char *q0 = "model.layers.0.self_attn.q_proj", *q3 = "model.layers.3.self_attn.q_proj";
  const char *d0 = "model.layers.0.mlp.down_proj";
  CHECK(plan_target(d.probes[0], q0, 0) < plan_target(d.probes[0], q3, 0) - 0.1);
  CHECK(fabs(plan_target(d.probes[1], q0, 0) - T) < 1e-6); /* uniform */
  CHECK(plan_target(d.probes[2], q0, 0) > plan_target(d.probes[2], d0, 0) + 0.05); /* attention-heavy */
  /* Deterministic: the same input gives the same bytes. */
  Agentprune__V1__Decision d2;
  decide(&ctx, &d2, &rc, err, sizeof err);
  size_t n1 = agentprune__v1__decision__get_packed_size(&d), n2 = agentprune__v1__decision__get_packed_size(&d2);
  uint8_t *b1 = malloc(n1 + 1), *b2 = malloc(n2 + 1);
  agentprune__v1__decision__pack(&d, b1);
  agentprune__v1__decision__pack(&d2, b2);
  CHECK(n1 == n2 && !memcmp(b1, b2, n1));
  free(b1);
  free(b2);
  ap_decision_clear(&d2);

  /* The pruner measured them: owl/attn (index 2) is best. */
  d.iteration = 1;
  fx_history_add(h, &d, req->state, 1, 10, 10, 0);
  double ppl6[6];
  for (size_t p = 0; p < 6; p++) ppl6[p] = p == 2 ? 20.0 : 25.0 + (double)p;
  set_probe_results(h->entries[0], &d, ppl6, d.n_probes < 6 ? d.n_probes : 6);
  double goal[7];
  for (int k = 0; k < 7; k++) goal[k] = plan_target(d.probes[2], t->layers[k]->name, 0);
  ap_decision_clear(&d);

  /* Iteration 2: block 0 only, toward owl/attn, every layer the same share of its gap. */
  req->iteration = req->state->iteration = 2;
  decide(&ctx, &d, &rc, err, sizeof err);
  CHECKF(rc == 0, "%s", err);
  CHECK(d.n_probes == 0 && d.n_layers == 7);
  const char *why = check_decision(t, &lim, &d, NULL);
  CHECKF(!why, "%s", why ? why : "");
  CHECKF(ap_decision_validate(&ctx, &d, err, sizeof err) == 0, "%s", err);
  double share = -1;
  for (size_t k = 0; k < d.n_layers; k++) {
    long r = find_row(t, d.layers[k]->name);
    CHECK(r >= 0 && r < 7);
    if (r < 0 || r >= 7) continue;
    double x = d.layers[k]->target_sparsity / goal[r];
    CHECK(x > 0 && x <= 1 + 1e-9);
    if (share < 0) share = x;
    CHECKF(fabs(x - share) < 1e-6 || d.layers[k]->target_sparsity >= lim.step_cap - 1e-9, "share %.6f vs %.6f", x,
           share);
  }
  CHECK(strstr(d.rationale, "b0+1/owl/attn") != NULL);
  ap_decision_clear(&d);

  /* Block 0 at its goal: the next decision probes block 1. */
  for (int k = 0; k < 7; k++) t->layers[k]->rho = goal[k];
  req->state->global_sparsity = fx_global(t);
  req->iteration = req->state->iteration = 3;
  decide(&ctx, &d, &rc, err, sizeof err);
  CHECKF(rc == 0, "%s", err);
  CHECK(d.n_probes == 6 && d.n_layers == 0);
  if (d.n_probes) {
    CHECKF(!strncmp(d.probes[0]->label, "b1+1/", 5), "label %s", d.probes[0]->label);
    CHECKF(fabs(plan_mass(t, d.probes[0]) - T) < 1e-6, "mass %.6f", plan_mass(t, d.probes[0]));
    CHECK(plan_target(d.probes[0], t->layers[0]->name, -1) == -1); /* block 0 is not touched again */
  }
  ap_decision_clear(&d);

  /* A pruner that measures fewer than two probes gets the gradual policy. */
  req->state->max_probes = 1;
  decide(&ctx, &d, &rc, err, sizeof err);
  CHECKF(rc == 0, "%s", err);
  CHECK(d.n_probes == 0 && d.n_layers > 0);
  ap_decision_clear(&d);
  /* Too many probes for the pruner are refused by the validator. */
  req->state->max_probes = 8;
  decide(&ctx, &d, &rc, err, sizeof err);
  req->state->max_probes = 3;
  CHECK(ap_decision_validate(&ctx, &d, err, sizeof err) != 0 && strstr(err, "at most 3"));
  ap_decision_clear(&d);

  req->profile = NULL;
  free_msg(req);
  free_msg(t);
  free_msg(h);
  free_msg(s);

  /* 32 blocks and the default 60 iterations: blocks go in groups that fit
     the budget (one probe + ~1.5 x 6 capped steps each: 6 groups of 6). */
  t = fx_table(32, 0.0);
  fx_zscores(t);
  for (size_t i = 0; i < t->n_layers; i++) {
    t->layers[i]->outlier = 0.01 + 0.001 * (t->layers[i]->block % 5);
    t->layers[i]->in_features = t->layers[i]->kind == AGENTPRUNE__V1__LAYER_KIND__LAYER_KIND_DOWN ? 688 : 256;
  }
  c = fx_constraints(0.5, 0, 0, 0);
  s = fx_session(SID, c);
  h = fx_history();
  req = fx_request(SID, 1, t, 0.5);
  req->state->max_probes = 8;
  ctx = (ap_decide_ctx){s, req, h, INT64_MAX};
  decide(&ctx, &d, &rc, err, sizeof err);
  CHECKF(rc == 0 && d.n_probes == 6, "%s", err);
  if (d.n_probes == 6) {
    CHECKF(!strncmp(d.probes[0]->label, "b0+6/", 5), "label %s", d.probes[0]->label);
    /* (rounded to whole weights per row: within half a weight per row of the narrowest layer) */
    CHECKF(fabs(plan_mass(t, d.probes[3]) - 0.5) < 0.5 / 256, "mass %.6f", plan_mass(t, d.probes[3]));
    /* The MLP bias lands on the whole group, the OWL block ratios stay. */
    const Agentprune__V1__Plan *mlp = d.probes[3]; /* owl/mlp */
    CHECK(plan_target(mlp, "model.layers.5.mlp.up_proj", 0) > plan_target(mlp, "model.layers.5.self_attn.q_proj", 0));
    CHECK(plan_target(mlp, "model.layers.4.mlp.up_proj", 0) < plan_target(mlp, "model.layers.0.mlp.up_proj", 0));
    CHECK(fabs(plan_target(mlp, "model.layers.6.mlp.up_proj", 0) - plan_target(mlp, "model.layers.6.self_attn.q_proj", 0)) < 1e-12);
    /* On the pruner's grid (whole weights per row), so a plan is realised as asked. */
    int off_grid = 0;
    for (size_t p = 0; p < d.n_probes; p++)
      for (size_t k = 0; k < d.probes[p]->n_layers; k++) {
        double x = d.probes[p]->layers[k]->target_sparsity * t->layers[find_row(t, d.probes[p]->layers[k]->name)]->in_features;
        if (fabs(x - floor(x + 0.5)) > 1e-9) off_grid++;
      }
    CHECKF(off_grid == 0, "%d plan targets off the grid", off_grid);
    d.iteration = 1;
    fx_history_add(h, &d, req->state, 1, 10, 10, 0);
    set_probe_results(h->entries[0], &d, (const double[]){11.0}, 1);
  }
  ap_decision_clear(&d);
  req->iteration = req->state->iteration = 2;
  decide(&ctx, &d, &rc, err, sizeof err);
  CHECKF(rc == 0 && d.n_layers == 6 * 7, "rc %d, %zu layers: %s", rc, d.n_layers, err);
  for (size_t k = 0; k < d.n_layers; k++) {
    const Agentprune__V1__LayerProfile *lp = t->layers[find_row(t, d.layers[k]->name)];
    double x = d.layers[k]->target_sparsity * lp->in_features;
    CHECK(lp->block < 6);
    CHECKF(fabs(x - floor(x + 0.5)) < 1e-9, "step target %.6f of %s is off the grid", d.layers[k]->target_sparsity, lp->name);
  }
  why = check_decision(t, &lim, &d, NULL);
  CHECKF(!why, "%s", why ? why : "");
  ap_decision_clear(&d);
  req->profile = NULL;
  free_msg(req);
  free_msg(t);
  free_msg(h);
  free_msg(s);
}

int main(void) {
  test_property();
  test_determinism_and_direction();
  test_reflection();
  test_simulated_loop();
  test_validate();
  test_requests();
  test_blockwise();
  TEST_DONE();
}
