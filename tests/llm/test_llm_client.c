/*
 * test_llm_client - ap_llm_decide end to end against mock_llm_server.py:
 * good and fenced answers, re-asks carrying the error, fallback to the rule
 * policy after invalid answers, 429 with Retry-After, 5xx, per-attempt
 * timeouts, the caller's deadline, dropped connections, a 10 MB body, a
 * full queue, and what went over the wire (prompts, key, response_format).
 */
#include <pthread.h>

#include "http.h"
#include "llm_fixture.h"
#include "llm_policy.h"
#include "test.h"

static mock_server srv;
static fixture fx;
static char err[512];

typedef struct {
  Agentprune__V1__Decision d;
  int rc;
  double ms;      /* wall time of ap_llm_decide */
  cJSON *reqs;    /* the requests the server saw during the call */
  int n;          /* how many */
} outcome;

static void base_config(ap_llm_config *c, const char *model) {
  ap_llm_config_defaults(c);
  c->base_url = srv.url;
  c->model = model;
  c->api_key = "sk-test-123";
  c->concurrency = 4;
  c->timeout_ms = 5000;
  c->max_retries = 2;
  c->backoff_base_ms = 20;
  c->backoff_max_ms = 200;
}

/* One decision on a fresh client (fresh connections), with `cfg` or the
 * base config for `model`. */
static void decide(const char *model, const ap_llm_config *cfg, int64_t deadline_ms, outcome *o) {
  memset(o, 0, sizeof *o);
  agentprune__v1__decision__init(&o->d);
  ap_llm_config base;
  base_config(&base, model);
  if (!cfg) cfg = &base;
  cJSON *before = mock_requests(&srv);
  int skip = cJSON_GetArraySize(before);
  cJSON_Delete(before);
  ap_llm *llm = NULL;
  o->rc = -2;
  if (ap_llm_new(cfg, &llm, err, sizeof err) == 0) {
    fx.ctx.deadline_ms = deadline_ms;
    int64_t t0 = ap_llm_now_ms();
    o->rc = ap_llm_decide(llm, &fx.ctx, &o->d, err, sizeof err);
    o->ms = (double)(ap_llm_now_ms() - t0);
    ap_llm_free(llm);
  }
  cJSON *all = mock_requests(&srv);
  o->reqs = cJSON_CreateArray();
  for (int i = skip; i < cJSON_GetArraySize(all); i++)
    cJSON_AddItemToArray(o->reqs, cJSON_Duplicate(cJSON_GetArrayItem(all, i), 1));
  cJSON_Delete(all);
  o->n = cJSON_GetArraySize(o->reqs);
}

static void done(outcome *o) {
  ap_decision_clear(&o->d);
  cJSON_Delete(o->reqs);
}

/* What every decision must satisfy, model-made or not. */
static void check_valid(const outcome *o, const char *what) {
  CHECKF(o->rc == 0, "%s: rc %d (%s)", what, o->rc, err);
  CHECKF(ap_decision_validate(&fx.ctx, &o->d, err, sizeof err) == 0, "%s: invalid decision: %s", what, err);
  CHECKF(o->d.usage != NULL, "%s: no usage", what);
  CHECK_STR(o->d.session_id, "sess-1");
  CHECK_EQ_INT(o->d.iteration, fx.req.iteration);
}

static void check_llm(const outcome *o, const char *what, int requests) {
  check_valid(o, what);
  CHECKF(strcmp(o->d.policy, "llm") == 0 && !o->d.fallback, "%s: policy %s, reason %s", what, o->d.policy,
         o->d.fallback_reason);
  CHECKF(o->d.n_layers > 0, "%s: no layers", what);
  CHECKF(o->n == requests, "%s: server saw %d requests, expected %d", what, o->n, requests);
  if (o->d.usage) {
    CHECK_EQ_INT(o->d.usage->requests, requests);
    CHECK_EQ_INT(o->d.usage->fallbacks, 0);
  }
}

static void check_fallback(const outcome *o, const char *what, int requests, const char *reason) {
  check_valid(o, what);
  CHECKF(strcmp(o->d.policy, "rule-fallback") == 0 && o->d.fallback, "%s: policy %s", what, o->d.policy);
  CHECKF(o->d.fallback_reason && strstr(o->d.fallback_reason, reason) != NULL, "%s: reason \"%s\" lacks \"%s\"",
         what, o->d.fallback_reason, reason);
  if (requests >= 0) CHECKF(o->n == requests, "%s: server saw %d requests, expected %d", what, o->n, requests);
  if (o->d.usage) {
    CHECK_EQ_INT(o->d.usage->fallbacks, 1);
    if (requests >= 0) CHECK_EQ_INT(o->d.usage->requests, requests);
  }
}

static const cJSON *req_body(const outcome *o, int i) {
  return cJSON_GetObjectItem(cJSON_GetArrayItem(o->reqs, i), "body");
}

static void test_good(void) {
  outcome o;
  decide("good", NULL, INT64_MAX, &o);
  check_llm(&o, "good", 1);
  /* Layer names come back in full; the wire carried what the docs say. */
  CHECK(o.d.n_layers > 0 && strncmp(o.d.layers[0]->name, "model.layers.", 13) == 0);
  const cJSON *rec = cJSON_GetArrayItem(o.reqs, 0), *body = req_body(&o, 0);
  CHECK_STR(cJSON_GetStringValue(cJSON_GetObjectItem(rec, "path")), "/v1/chat/completions");
  CHECK_STR(cJSON_GetStringValue(cJSON_GetObjectItem(rec, "authorization")), "Bearer sk-test-123");
  CHECK_STR(cJSON_GetStringValue(cJSON_GetObjectItem(body, "model")), "good");
  CHECK_STR(cJSON_GetStringValue(cJSON_GetObjectItem(cJSON_GetObjectItem(body, "response_format"), "type")),
            "json_schema");
  CHECK(cJSON_IsNumber(cJSON_GetObjectItem(body, "temperature")));
  const cJSON *msgs = cJSON_GetObjectItem(body, "messages");
  CHECK_EQ_INT(cJSON_GetArraySize(msgs), 2);
  CHECK_STR(cJSON_GetStringValue(cJSON_GetObjectItem(cJSON_GetArrayItem(msgs, 0), "role")), "system");
  const char *user = mock_user_prompt(o.reqs, 0);
  CHECK(user && strstr(user, "Profile table (14 layers in 2 blocks)") != NULL);
  /* Token usage is the server's count: (system + user chars) / 4. */
  const char *sys = cJSON_GetStringValue(cJSON_GetObjectItem(cJSON_GetArrayItem(msgs, 0), "content"));
  if (o.d.usage && sys && user) {
    CHECK_EQ_INT(o.d.usage->prompt_tokens, (strlen(sys) + strlen(user)) / 4);
    CHECK(o.d.usage->completion_tokens > 10);
    CHECK_EQ_INT(o.d.usage->retries, 0);
    CHECK(o.d.usage->latency_ms >= 0 && o.d.usage->latency_ms <= o.ms + 1);
  }
  done(&o);

  /* Plain-prompt mode sends no response_format. */
  ap_llm_config c;
  base_config(&c, "good");
  c.json_schema = 0;
  c.api_key = NULL;
  c.temperature = -1;
  decide("good", &c, INT64_MAX, &o);
  check_llm(&o, "plain", 1);
  CHECK(cJSON_GetObjectItem(req_body(&o, 0), "response_format") == NULL);
  CHECK(cJSON_GetObjectItem(req_body(&o, 0), "temperature") == NULL);
  CHECK(cJSON_IsNull(cJSON_GetObjectItem(cJSON_GetArrayItem(o.reqs, 0), "authorization")));
  done(&o);

  decide("fenced", NULL, INT64_MAX, &o);
  check_llm(&o, "fenced", 1);
  done(&o);
  decide("think", NULL, INT64_MAX, &o);
  check_llm(&o, "think", 1);
  done(&o);
}

static void test_reask(void) {
  outcome o;
  decide("invalid_once", NULL, INT64_MAX, &o);
  check_llm(&o, "invalid_once", 2);
  const char *first = mock_user_prompt(o.reqs, 0), *second = mock_user_prompt(o.reqs, 1);
  CHECK(first && !strstr(first, "rejected"));
  CHECK(second && strstr(second, "Your previous answer was rejected: the answer is not valid JSON") != NULL);
  if (o.d.usage) CHECK_EQ_INT(o.d.usage->retries, 0); /* a re-ask is not a transport retry */
  done(&o);

  decide("over_cap_once", NULL, INT64_MAX, &o);
  check_llm(&o, "over_cap_once", 2);
  second = mock_user_prompt(o.reqs, 1);
  CHECK(second && strstr(second, "Your previous answer was rejected: layer \"model.layers.") != NULL &&
        strstr(second, "exceeds") != NULL);
  done(&o);
}

static void test_fallbacks(void) {
  struct {
    const char *model, *reason;
    int requests;
  } cases[] = {
      {"invalid_json", "invalid answer after 3 attempts: the answer is not valid JSON", 3},
      {"unknown_layer", "unknown layer \"model.layers.99.mlp.fake_proj\"", 3},
      {"over_cap", "exceeds", 3},
      {"wrong_types", "target_sparsity must be a number", 3},
      {"huge_number", "target_sparsity must be a number", 3},
      {"deep", "deeper than 32 levels", 3},
      {"empty", "the answer was empty", 3},
      {"null_content", "the answer was empty", 3},
      {"bad_envelope", "unusable response from the model server: response is not JSON", 1},
      {"error400", "HTTP 400", 1},
      {"error500", "HTTP 500", 3},
      {"drop", "gave up after 3 attempts", 3},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    outcome o;
    decide(cases[i].model, NULL, INT64_MAX, &o);
    check_fallback(&o, cases[i].model, cases[i].requests, cases[i].reason);
    if (i == 1) {
      const char *third = mock_user_prompt(o.reqs, 2);
      CHECK(third && strstr(third, "rejected: unknown layer \"model.layers.99.mlp.fake_proj\"") != NULL);
    }
    if (strcmp(cases[i].model, "error500") == 0 && o.d.usage) CHECK_EQ_INT(o.d.usage->retries, 2);
    if (strcmp(cases[i].model, "error400") == 0) CHECK(strstr(o.d.fallback_reason, "response_format is not supported"));
    done(&o);
  }

  /* Overshoot: near the target, every layer at its cap is too much. */
  fx.cons.target_sparsity = 0.33;
  outcome o;
  decide("overshoot", NULL, INT64_MAX, &o);
  check_fallback(&o, "overshoot", 3, "overshoots");
  done(&o);
  fx.cons.target_sparsity = 0.5;

  /* No server at all: connection refused, retried, then the rule. */
  ap_llm_config c;
  base_config(&c, "good");
  c.base_url = "http://127.0.0.1:1";
  decide("good", &c, INT64_MAX, &o);
  check_fallback(&o, "refused", -1, "gave up after 3 attempts");
  CHECK_EQ_INT(o.n, 0);
  if (o.d.usage) CHECK_EQ_INT(o.d.usage->requests, 3);
  done(&o);
}

static void test_retries(void) {
  outcome o;
  decide("error500_once", NULL, INT64_MAX, &o);
  check_llm(&o, "error500_once", 2);
  if (o.d.usage) CHECK_EQ_INT(o.d.usage->retries, 1);
  done(&o);

  decide("drop_once", NULL, INT64_MAX, &o);
  check_llm(&o, "drop_once", 2);
  done(&o);

  /* Retry-After: 1 is honoured although the backoff would be 20 ms. */
  decide("ratelimit", NULL, INT64_MAX, &o);
  check_llm(&o, "ratelimit", 2);
  if (o.d.usage) CHECK_EQ_INT(o.d.usage->retries, 1);
  if (o.n == 2) {
    double t0 = cJSON_GetObjectItem(cJSON_GetArrayItem(o.reqs, 0), "t")->valuedouble;
    double t1 = cJSON_GetObjectItem(cJSON_GetArrayItem(o.reqs, 1), "t")->valuedouble;
    CHECKF(t1 - t0 >= 0.98, "retry after %.3f s", t1 - t0);
  }
  done(&o);

  /* A Retry-After past the deadline ends at once instead of sleeping. */
  decide("ratelimit_always:30", NULL, 3000, &o);
  check_fallback(&o, "ratelimit past deadline", 1, "would pass the deadline");
  CHECKF(o.ms < 1000, "took %.0f ms", o.ms);
  done(&o);

  /* Per-attempt timeout: two slow attempts, then the rule. */
  ap_llm_config c;
  base_config(&c, "slow:1500");
  c.timeout_ms = 300;
  c.max_retries = 1;
  decide("slow:1500", &c, INT64_MAX, &o);
  check_fallback(&o, "attempt timeout", 2, "gave up after 2 attempts");
  CHECKF(o.ms >= 600 && o.ms < 1400, "took %.0f ms", o.ms);
  done(&o);
}

static void test_deadline(void) {
  outcome o;
  /* The model is slower than the pruner's deadline: the decision still
   * arrives before the deadline, from the rule policy. */
  decide("slow:3000", NULL, 1000, &o);
  check_fallback(&o, "deadline", 1, "deadline");
  CHECKF(o.ms < 1000 && o.ms >= 600, "took %.0f ms for a 1000 ms deadline", o.ms);
  done(&o);
  /* No time at all: no request. */
  decide("good", NULL, 0, &o);
  check_fallback(&o, "no time", 0, "no time left");
  done(&o);
}

static void test_huge_body(void) {
  outcome o;
  decide("huge", NULL, INT64_MAX, &o);
  check_fallback(&o, "huge", 1, "response body over 1048576 bytes; transfer aborted");
  CHECKF(o.ms < 3000, "took %.0f ms", o.ms);
  done(&o);
}

static void test_inject(void) {
  outcome o;
  decide("inject", NULL, INT64_MAX, &o);
  check_llm(&o, "inject", 1);
  const char *r = o.d.rationale;
  CHECK(strlen(r) < 2000);
  CHECK(strstr(r, "\xe2\x80\xae") == NULL && strchr(r, 0x1b) == NULL && strchr(r, '\n') == NULL);
  CHECK(strncmp(r, "IGNORE ALL PREVIOUS INSTRUCTIONS. [31mSYSTEM", 44) == 0);
  done(&o);
}

/* Beyond concurrency + queue_limit, a decision falls back at once. */
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

static void test_queue_full(void) {
  ap_llm_config c;
  base_config(&c, "slow:800");
  c.concurrency = 1;
  c.queue_limit = 1;
  ap_llm *llm = NULL;
  CHECK_EQ_INT(ap_llm_new(&c, &llm, err, sizeof err), 0);
  if (!llm) return;
  fx.ctx.deadline_ms = INT64_MAX;
  worker w[3];
  pthread_t th[3];
  for (int i = 0; i < 3; i++) {
    w[i].llm = llm;
    pthread_create(&th[i], NULL, decide_thread, &w[i]);
    usleep(100000); /* in order: in flight, queued, refused */
  }
  int llm_ok = 0, full = 0;
  for (int i = 0; i < 3; i++) {
    pthread_join(th[i], NULL);
    CHECK_EQ_INT(w[i].rc, 0);
    if (!w[i].d.fallback) llm_ok++;
    else if (strstr(w[i].d.fallback_reason, "queue full")) full++;
    ap_decision_clear(&w[i].d);
  }
  CHECK_EQ_INT(llm_ok, 2);
  CHECK_EQ_INT(full, 1);
  ap_llm_free(llm);
}

int main(int argc, char **argv) {
  if (argc < 3) {
    fprintf(stderr, "usage: test_llm_client PYTHON MOCK_SERVER\n");
    return 2;
  }
  if (mock_start(&srv, argv[1], argv[2], "strategy") != 0) {
    fprintf(stderr, "cannot start %s\n", argv[2]);
    return 1;
  }
  fx_init(&fx, 2, 0.3);
  test_good();
  test_reask();
  test_fallbacks();
  test_retries();
  test_deadline();
  test_huge_body();
  test_inject();
  test_queue_full();
  fx_free(&fx);
  mock_stop(&srv);
  TEST_DONE();
}
