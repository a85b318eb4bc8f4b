/*
 * test_llm_concurrency - many sessions waiting on the model at once: 100
 * decisions on 100 threads against a model that takes 500 ms per answer,
 * with a limit of 16 requests in flight. The server must never see more
 * than the limit, and the wall time must scale with it (about 100/16
 * rounds of 0.5 s, far from 100 x 0.5 s). A second run with limit 4 checks
 * the limit from the other side: it cannot finish faster than the limit
 * allows.
 */
#include <pthread.h>

#include "http.h"
#include "llm_fixture.h"
#include "llm_policy.h"
#include "test.h"

static mock_server srv;
static fixture fx;

typedef struct {
  ap_llm *llm;
  Agentprune__V1__Decision d;
  int rc;
} worker;

static void *decide_thread(void *arg) {
  worker *w = arg;
  char e[256];
  agentprune__v1__decision__init(&w->d);
  w->rc = ap_llm_decide(w->llm, &fx.ctx, &w->d, e, sizeof e);
  return NULL;
}

/* Runs n decisions at once through a client with the given limit; returns
 * the wall time in seconds and the server's peak of requests in flight. */
static double run(int n, int limit, const char *model, int *peak, int *llm_ok) {
  ap_llm_config c;
  ap_llm_config_defaults(&c);
  c.base_url = srv.url;
  c.model = model;
  c.concurrency = limit;
  c.timeout_ms = 20000;
  char err[256];
  ap_llm *llm = NULL;
  CHECKF(ap_llm_new(&c, &llm, err, sizeof err) == 0, "%s", err);
  if (!llm) return -1;
  cJSON *before = mock_requests(&srv);
  int skip = cJSON_GetArraySize(before);
  cJSON_Delete(before);

  worker *w = calloc((size_t)n, sizeof *w);
  pthread_t *th = calloc((size_t)n, sizeof *th);
  int64_t t0 = ap_llm_now_ms();
  for (int i = 0; i < n; i++) {
    w[i].llm = llm;
    CHECK(pthread_create(&th[i], NULL, decide_thread, &w[i]) == 0);
  }
  *llm_ok = 0;
  for (int i = 0; i < n; i++) {
    pthread_join(th[i], NULL);
    CHECK_EQ_INT(w[i].rc, 0);
    if (w[i].rc == 0 && strcmp(w[i].d.policy, "llm") == 0 && w[i].d.n_layers > 0) (*llm_ok)++;
    ap_decision_clear(&w[i].d);
  }
  double secs = (double)(ap_llm_now_ms() - t0) / 1000.0;
  ap_llm_free(llm);
  free(w);
  free(th);

  cJSON *all = mock_requests(&srv);
  *peak = 0;
  int seen = 0;
  for (int i = skip; i < cJSON_GetArraySize(all); i++) {
    int inflight = cJSON_GetObjectItem(cJSON_GetArrayItem(all, i), "inflight")->valueint;
    if (inflight > *peak) *peak = inflight;
    seen++;
  }
  cJSON_Delete(all);
  CHECK_EQ_INT(seen, n);
  return secs;
}

int main(int argc, char **argv) {
  if (argc < 3) {
    fprintf(stderr, "usage: test_llm_concurrency PYTHON MOCK_SERVER\n");
    return 2;
  }
  if (mock_start(&srv, argv[1], argv[2], "strategy") != 0) {
    fprintf(stderr, "cannot start %s\n", argv[2]);
    return 1;
  }
  fx_init(&fx, 2, 0.1);

  int peak = 0, ok = 0;
  double secs = run(100, 16, "slow:500", &peak, &ok);
  printf("100 decisions, 500 ms model latency, limit 16: %.2f s (serial would be 50 s; ideal 3.5 s), "
         "server peak in flight %d\n",
         secs, peak);
  CHECK_EQ_INT(ok, 100);
  CHECKF(peak <= 16, "server saw %d requests in flight", peak);
  CHECKF(peak >= 12, "the limit was not used: peak %d", peak);
  CHECKF(secs >= 3.4 && secs < 10.0, "%.2f s", secs);

  secs = run(20, 4, "slow:200", &peak, &ok);
  printf("20 decisions, 200 ms model latency, limit 4: %.2f s (the limit allows no less than 1.0 s), peak %d\n",
         secs, peak);
  CHECK_EQ_INT(ok, 20);
  CHECKF(peak <= 4 && peak >= 3, "peak %d", peak);
  CHECKF(secs >= 0.98 && secs < 4.0, "%.2f s", secs);

  fx_free(&fx);
  mock_stop(&srv);
  TEST_DONE();
}
