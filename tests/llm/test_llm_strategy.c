/*
 * test_llm_strategy - a whole job's worth of decisions through the llm
 * policy against the mock's "strategy" scenario (the one a --policy llm job
 * run will use): a simulated pruner applies each decision to a 4-block
 * table, charges a ppl rise that grows with the layers' sensitivity, rolls
 * back moves over tau, and feeds outcomes back as history. The loop must
 * reach the target within its iteration budget without a single fallback,
 * every decision within the constraints, and after a rollback the next
 * decision must be a smaller move (the reflection reached the model
 * through the prompt).
 */
#include "llm_fixture.h"
#include "llm_policy.h"
#include "test.h"

int main(int argc, char **argv) {
  if (argc < 3) {
    fprintf(stderr, "usage: test_llm_strategy PYTHON MOCK_SERVER\n");
    return 2;
  }
  mock_server srv;
  if (mock_start(&srv, argv[1], argv[2], "strategy") != 0) {
    fprintf(stderr, "cannot start %s\n", argv[2]);
    return 1;
  }
  fixture fx;
  fx_init(&fx, 4, 0.0);
  ap_llm_config c;
  ap_llm_config_defaults(&c);
  c.base_url = srv.url;
  c.model = "some-served-model"; /* not a scenario name: the server's default, strategy */
  char err[256];
  ap_llm *llm = NULL;
  CHECKF(ap_llm_new(&c, &llm, err, sizeof err) == 0, "%s", err);
  if (!llm) return 1;

  const double tau = 0.03, target = fx.cons.target_sparsity, tol = fx.cons.tolerance;
  double ppl = 10.0;
  unsigned rollbacks = 0, consecutive = 0, it;
  int fallbacks = 0, smaller_after_rollback = 1, last_rolled_back = 0;
  double prev_added = 0;
  for (it = 1; it <= 40 && fx_global(&fx) < target - tol; it++) {
    double before = fx_global(&fx);
    fx.req.iteration = it;
    fx.state.iteration = it;
    fx.state.global_sparsity = before;
    fx.state.current_ppl = ppl;
    fx.state.dense_ppl = 10.0;
    fx.state.tau = tau;
    fx.state.rollbacks = rollbacks;
    fx.state.consecutive_rollbacks = consecutive;
    Agentprune__V1__Decision d = AGENTPRUNE__V1__DECISION__INIT;
    CHECK_EQ_INT(ap_llm_decide(llm, &fx.ctx, &d, err, sizeof err), 0);
    CHECKF(ap_decision_validate(&fx.ctx, &d, err, sizeof err) == 0, "iteration %u: %s", it, err);
    if (d.fallback) {
      fallbacks++;
      fprintf(stderr, "iteration %u fell back: %s\n", it, d.fallback_reason);
    }
    /* The simulated pruner: ppl rises with the weighted growth of each
     * layer times its sensitivity. */
    double total = 0, dppl = 0, added = 0;
    for (size_t i = 0; i < fx.table.n_layers; i++) total += (double)fx.table.layers[i]->params;
    for (size_t i = 0; i < d.n_layers; i++)
      for (size_t r = 0; r < fx.table.n_layers; r++) {
        Agentprune__V1__LayerProfile *l = fx.table.layers[r];
        if (strcmp(l->name, d.layers[i]->name) != 0) continue;
        added += (d.layers[i]->target_sparsity - l->rho) * (double)l->params;
        double sens = 0.3 + 0.15 * (l->z_s + l->z_g);
        dppl += (d.layers[i]->target_sparsity - l->rho) * (double)l->params / total * (sens > 0.05 ? sens : 0.05) *
                (1 + 6 * l->rho);
      }
    if (last_rolled_back && added >= prev_added) smaller_after_rollback = 0;
    int accepted = dppl <= tau;
    if (getenv("AP_TEST_VERBOSE")) fprintf(stderr, "iteration %u: %zu layers, dppl %.4f\n", it, d.n_layers, dppl);
    if (accepted) {
      for (size_t i = 0; i < d.n_layers; i++)
        for (size_t r = 0; r < fx.table.n_layers; r++) {
          Agentprune__V1__LayerProfile *l = fx.table.layers[r];
          if (strcmp(l->name, d.layers[i]->name) != 0) continue;
          l->rho = d.layers[i]->target_sparsity;
          l->dppl_history = realloc(l->dppl_history, (l->n_dppl_history + 1) * sizeof(double));
          l->dppl_history[l->n_dppl_history++] = dppl;
        }
      consecutive = 0;
    } else {
      rollbacks++;
      consecutive++;
    }
    fx_add_history(&fx, it, &d, 1, accepted, ppl, ppl * (1 + dppl), before, fx_global(&fx));
    if (accepted) ppl *= 1 + dppl;
    last_rolled_back = !accepted;
    prev_added = added;
    ap_decision_clear(&d);
  }
  double final = fx_global(&fx);
  printf("strategy run: %u iterations, global sparsity %.4f (target %.2f), %u rollbacks, ppl %.3f -> %.3f\n",
         it - 1, final, target, rollbacks, 10.0, ppl);
  CHECKF(final >= target - tol && final <= target + tol, "final sparsity %.4f", final);
  CHECK_EQ_INT(fallbacks, 0);
  CHECK(smaller_after_rollback);
  CHECKF(rollbacks >= 1, "no rollback happened: the reflection path went untested");
  for (size_t r = 0; r < fx.table.n_layers; r++) CHECK(fx.table.layers[r]->rho <= 0.9 + 1e-9);

  /* The last prompts carried the digest and the quoted rollbacks. */
  cJSON *reqs = mock_requests(&srv);
  const char *last = mock_user_prompt(reqs, cJSON_GetArraySize(reqs) - 1);
  CHECK(last && strstr(last, "Digest of iterations 1-") != NULL);
  CHECK(last && strstr(last, "rolled back") != NULL);
  cJSON_Delete(reqs);

  ap_llm_free(llm);
  fx_free(&fx);
  mock_stop(&srv);
  TEST_DONE();
}
