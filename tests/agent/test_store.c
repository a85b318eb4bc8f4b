/*
 * test_store.c - the LMDB session store: persistence across reopen, history
 * order (big-endian iteration keys past 255 and 65535), idempotent job index,
 * preconditions inside the write transaction, map growth from a tiny map
 * (also with concurrent writers), stale reader slots of a killed process.
 */
#include <lmdb.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "../test.h"
#include "agent_fixtures.h"
#include "store.h"

static char root[256];

static void tmpdir(char *out, size_t n, const char *name) {
  snprintf(out, n, "%s/%s", root, name);
}

static Agentprune__V1__SessionSpec spec_for(const char *job, Agentprune__V1__Constraints *c) {
  Agentprune__V1__SessionSpec s = AGENTPRUNE__V1__SESSION_SPEC__INIT;
  s.job_id = (char *)job;
  s.constraints = c;
  return s;
}

/* A decision with n layers named after the iteration, so that mixing shows. */
static Agentprune__V1__HistoryEntry *make_entry(uint32_t iteration, size_t n_layers, const char *tag) {
  Agentprune__V1__HistoryEntry *e = malloc(sizeof *e);
  agentprune__v1__history_entry__init(e);
  e->iteration = iteration;
  e->decision = malloc(sizeof *e->decision);
  agentprune__v1__decision__init(e->decision);
  e->decision->iteration = iteration;
  e->decision->rationale = fx_strdup(tag);
  e->decision->policy = fx_strdup("rule");
  e->decision->usage = malloc(sizeof *e->decision->usage);
  agentprune__v1__usage__init(e->decision->usage);
  e->decision->usage->requests = 2;
  e->decision->usage->prompt_tokens = 100 + iteration;
  e->decision->usage->latency_ms = 1.5;
  e->decision->n_layers = n_layers;
  e->decision->layers = calloc(n_layers ? n_layers : 1, sizeof *e->decision->layers);
  for (size_t i = 0; i < n_layers; i++) {
    Agentprune__V1__LayerTarget *lt = malloc(sizeof *lt);
    agentprune__v1__layer_target__init(lt);
    char name[96];
    snprintf(name, sizeof name, "model.layers.%zu.mlp.up_proj.%s.%u", i, tag, iteration);
    lt->name = fx_strdup(name);
    lt->target_sparsity = 0.001 * iteration;
    e->decision->layers[i] = lt;
  }
  e->state = malloc(sizeof *e->state);
  agentprune__v1__job_state__init(e->state);
  e->state->iteration = iteration;
  e->state->global_sparsity = 0.0005 * iteration;
  return e;
}

static Agentprune__V1__Outcome outcome_for(const char *sid, uint32_t it, int accepted) {
  Agentprune__V1__Outcome o = AGENTPRUNE__V1__OUTCOME__INIT;
  o.session_id = (char *)sid;
  o.iteration = it;
  o.accepted = accepted;
  o.ppl_before = 10;
  o.ppl_after = 10.1 + it;
  o.global_sparsity = 0.01 * (it % 100);
  return o;
}

static void free_msg(void *m) {
  if (m) protobuf_c_message_free_unpacked((ProtobufCMessage *)m, NULL);
}

static void test_sessions_and_reopen(void) {
  char dir[512], err[256], sid[40], sid2[40];
  tmpdir(dir, sizeof dir, "basic");
  ap_store *st = NULL;
  CHECK_EQ_INT(ap_store_open(dir, NULL, &st, err, sizeof err), AP_STORE_OK);
  if (!st) return;
  Agentprune__V1__Constraints c = AGENTPRUNE__V1__CONSTRAINTS__INIT;
  c.target_sparsity = 0.6;
  Agentprune__V1__SessionSpec spec = spec_for("job-A", &c);
  Agentprune__V1__Session *s = NULL, *s2 = NULL;
  int created = -1;
  CHECK_EQ_INT(ap_store_open_session(st, &spec, 1234, &s, &created), AP_STORE_OK);
  CHECK_EQ_INT(created, 1);
  CHECK_EQ_INT(strlen(s->session_id), 32);
  CHECK_STR(s->policy, "rule");
  CHECK_EQ_INT(s->next_iteration, 1);
  CHECK_EQ_INT(s->created_unix_ms, 1234);
  CHECK_NEAR(s->constraints->target_sparsity, 0.6, 0);
  snprintf(sid, sizeof sid, "%s", s->session_id);

  /* Same job -> same session, unchanged, even with another spec. */
  c.target_sparsity = 0.3;
  spec.policy = "llm";
  CHECK_EQ_INT(ap_store_open_session(st, &spec, 9999, &s2, &created), AP_STORE_OK);
  CHECK_EQ_INT(created, 0);
  CHECK_STR(s2->session_id, sid);
  CHECK_NEAR(s2->constraints->target_sparsity, 0.6, 0);
  CHECK_STR(s2->policy, "rule");
  free_msg(s2);
  s2 = NULL;
  Agentprune__V1__SessionSpec other = spec_for("job-B", &c);
  CHECK_EQ_INT(ap_store_open_session(st, &other, 1, &s2, &created), AP_STORE_OK);
  CHECK_EQ_INT(created, 1);
  CHECK(strcmp(s2->session_id, sid) != 0);
  snprintf(sid2, sizeof sid2, "%s", s2->session_id);
  free_msg(s2);
  Agentprune__V1__SessionSpec empty = spec_for("", &c);
  s2 = NULL;
  CHECK_EQ_INT(ap_store_open_session(st, &empty, 1, &s2, &created), AP_STORE_BAD_ARG);

  /* Preconditions inside the write txn. */
  Agentprune__V1__HistoryEntry *e2 = make_entry(2, 3, "a");
  CHECK_EQ_INT(ap_store_put_decision(st, sid, e2), AP_STORE_CONFLICT); /* next is 1 */
  Agentprune__V1__Outcome o1 = outcome_for(sid, 1, 1);
  CHECK_EQ_INT(ap_store_put_outcome(st, sid, &o1), AP_STORE_CONFLICT); /* nothing decided */
  CHECK_EQ_INT(ap_store_put_decision(st, "0123456789abcdef0123456789abcdef", e2), AP_STORE_NOT_FOUND);
  CHECK_EQ_INT(ap_store_put_decision(st, "not-a-session", e2), AP_STORE_BAD_ARG);

  /* 300 iterations: key order must be numeric (big-endian), past 255. */
  for (uint32_t it = 1; it <= 300; it++) {
    Agentprune__V1__HistoryEntry *e = make_entry(it, 2, "a");
    int rc = ap_store_put_decision(st, sid, e);
    if (rc) CHECKF(0, "put_decision %u: %s", it, ap_store_strerror(rc));
    CHECK_EQ_INT(ap_store_put_decision(st, sid, e), AP_STORE_CONFLICT); /* never twice */
    free_msg(e);
    Agentprune__V1__Outcome o = outcome_for(sid, it, it % 3 != 0);
    rc = ap_store_put_outcome(st, sid, &o);
    if (rc) CHECKF(0, "put_outcome %u: %s", it, ap_store_strerror(rc));
    if (it == 7) {
      CHECK_EQ_INT(ap_store_put_outcome(st, sid, &o), AP_STORE_DUPLICATE);
      Agentprune__V1__Outcome o_diff = o;
      o_diff.ppl_after += 1;
      CHECK_EQ_INT(ap_store_put_outcome(st, sid, &o_diff), AP_STORE_CONFLICT);
    }
  }
  /* An entry of another session in between must not leak into this one. */
  Agentprune__V1__HistoryEntry *eb = make_entry(1, 1, "b");
  CHECK_EQ_INT(ap_store_put_decision(st, sid2, eb), AP_STORE_OK);
  free_msg(eb);
  /* A pending (unreflected) decision keeps next_iteration on it. */
  Agentprune__V1__HistoryEntry *e301 = make_entry(301, 1, "a");
  CHECK_EQ_INT(ap_store_put_decision(st, sid, e301), AP_STORE_OK);
  free_msg(e301);
  Agentprune__V1__Session *cur = NULL;
  CHECK_EQ_INT(ap_store_get_session(st, sid, &cur), AP_STORE_OK);
  if (cur) CHECK_EQ_INT(cur->next_iteration, 301);
  free_msg(cur);
  free_msg(e2);
  free_msg(s);
  ap_store_close(st);

  /* Reopen: everything is there, in order. */
  st = NULL;
  CHECK_EQ_INT(ap_store_open(dir, NULL, &st, err, sizeof err), AP_STORE_OK);
  if (!st) return;
  Agentprune__V1__History *h = NULL;
  CHECK_EQ_INT(ap_store_get_history(st, sid, &h), AP_STORE_OK);
  if (h) {
    CHECK_EQ_INT(h->n_entries, 301);
    int ordered = 1, tagged = 1;
    for (size_t i = 0; i < h->n_entries; i++) {
      const Agentprune__V1__HistoryEntry *e = h->entries[i];
      if (e->iteration != i + 1 || e->decision->iteration != i + 1 || e->state->iteration != i + 1) ordered = 0;
      if (strcmp(e->decision->rationale, "a") != 0) tagged = 0;
      if (i < 300 && (!e->outcome || e->outcome->accepted != ((i + 1) % 3 != 0))) ordered = 0;
    }
    CHECK(ordered);
    CHECK(tagged);
    CHECK(h->entries[300]->outcome == NULL);
    CHECK_EQ_INT(h->usage->requests, 2 * 301);
    CHECK_EQ_INT(h->usage->prompt_tokens, 100 * 301 + 301 * 302 / 2);
    CHECK_NEAR(h->usage->latency_ms, 1.5 * 301, 1e-9);
    CHECK_EQ_INT(h->session->next_iteration, 301);
  }
  free_msg(h);
  Agentprune__V1__HistoryEntry *one = NULL;
  CHECK_EQ_INT(ap_store_get_entry(st, sid, 256, &one), AP_STORE_OK);
  if (one) CHECK_EQ_INT(one->decision->layers[0]->target_sparsity * 1000 + 0.5, 256);
  free_msg(one);
  one = NULL;
  CHECK_EQ_INT(ap_store_get_entry(st, sid, 302, &one), AP_STORE_NOT_FOUND);

  /* Close: kept for history, writes refused. */
  Agentprune__V1__Session *closed = NULL;
  CHECK_EQ_INT(ap_store_close_session(st, sid, &closed), AP_STORE_OK);
  if (closed) CHECK(closed->closed);
  free_msg(closed);
  CHECK_EQ_INT(ap_store_close_session(st, sid, NULL), AP_STORE_OK);
  Agentprune__V1__Outcome o301 = outcome_for(sid, 301, 1);
  CHECK_EQ_INT(ap_store_put_outcome(st, sid, &o301), AP_STORE_CLOSED);
  h = NULL;
  CHECK_EQ_INT(ap_store_get_history(st, sid, &h), AP_STORE_OK);
  if (h) {
    CHECK(h->session->closed);
    CHECK_EQ_INT(h->n_entries, 301);
  }
  free_msg(h);
  ap_store_close(st);
}

static int count_cb(const char *sid, void *user) {
  (void)sid;
  (*(int *)user)++;
  return 0;
}

/* The map starts at 128 KiB and must double its way up under load. */
typedef struct {
  ap_store *st;
  char sid[40];
  int failures;
} grow_arg;

static void *grow_worker(void *p) {
  grow_arg *a = p;
  for (uint32_t it = 1; it <= 40; it++) {
    Agentprune__V1__HistoryEntry *e = make_entry(it, 60, a->sid);
    if (ap_store_put_decision(a->st, a->sid, e) != AP_STORE_OK) a->failures++;
    free_msg(e);
    Agentprune__V1__Outcome o = outcome_for(a->sid, it, 1);
    if (ap_store_put_outcome(a->st, a->sid, &o) != AP_STORE_OK) a->failures++;
  }
  return NULL;
}

static void test_map_growth(void) {
  char dir[512], err[256];
  tmpdir(dir, sizeof dir, "grow");
  ap_store_opts o = {.initial_map_bytes = 128 << 10, .max_map_bytes = 1 << 30};
  ap_store *st = NULL;
  CHECK_EQ_INT(ap_store_open(dir, &o, &st, err, sizeof err), AP_STORE_OK);
  if (!st) return;
  ap_store_stats s0;
  ap_store_get_stats(st, &s0);
  CHECK(s0.map_bytes <= (size_t)(128 << 10));
  enum { NT = 6 };
  grow_arg args[NT];
  pthread_t th[NT];
  Agentprune__V1__Constraints c = AGENTPRUNE__V1__CONSTRAINTS__INIT;
  c.target_sparsity = 0.5;
  for (int i = 0; i < NT; i++) {
    char job[32];
    snprintf(job, sizeof job, "grow-%d", i);
    Agentprune__V1__SessionSpec spec = spec_for(job, &c);
    Agentprune__V1__Session *s = NULL;
    CHECK_EQ_INT(ap_store_open_session(st, &spec, 1, &s, NULL), AP_STORE_OK);
    args[i].st = st;
    args[i].failures = 0;
    snprintf(args[i].sid, sizeof args[i].sid, "%s", s ? s->session_id : "");
    free_msg(s);
  }
  for (int i = 0; i < NT; i++) pthread_create(&th[i], NULL, grow_worker, &args[i]);
  for (int i = 0; i < NT; i++) pthread_join(th[i], NULL);
  for (int i = 0; i < NT; i++) CHECK_EQ_INT(args[i].failures, 0);
  ap_store_stats s1;
  ap_store_get_stats(st, &s1);
  CHECKF(s1.map_growths >= 3, "growths %u, map %zu", s1.map_growths, s1.map_bytes);
  CHECK(s1.map_bytes >= (size_t)(1 << 20));
  for (int i = 0; i < NT; i++) {
    Agentprune__V1__History *h = NULL;
    CHECK_EQ_INT(ap_store_get_history(st, args[i].sid, &h), AP_STORE_OK);
    if (!h) continue;
    CHECK_EQ_INT(h->n_entries, 40);
    int mine = 1;
    for (size_t k = 0; k < h->n_entries; k++)
      if (strcmp(h->entries[k]->decision->rationale, args[i].sid) != 0 || h->entries[k]->iteration != k + 1 ||
          !h->entries[k]->outcome)
        mine = 0;
    CHECK(mine);
    free_msg(h);
  }
  int count = 0;
  CHECK_EQ_INT(ap_store_foreach_session(st, count_cb, &count), AP_STORE_OK);
  CHECK_EQ_INT(count, NT);
  ap_store_close(st);

  /* A ceiling that cannot hold the data: FULL, not a crash, and earlier data intact. */
  tmpdir(dir, sizeof dir, "full");
  ap_store_opts small = {.initial_map_bytes = 64 << 10, .max_map_bytes = 256 << 10};
  st = NULL;
  CHECK_EQ_INT(ap_store_open(dir, &small, &st, err, sizeof err), AP_STORE_OK);
  if (!st) return;
  Agentprune__V1__SessionSpec spec = spec_for("full", &c);
  Agentprune__V1__Session *s = NULL;
  CHECK_EQ_INT(ap_store_open_session(st, &spec, 1, &s, NULL), AP_STORE_OK);
  int rc = AP_STORE_OK;
  uint32_t it;
  for (it = 1; it <= 400 && rc == AP_STORE_OK; it++) {
    Agentprune__V1__HistoryEntry *e = make_entry(it, 100, "x");
    rc = ap_store_put_decision(st, s->session_id, e);
    free_msg(e);
    if (rc == AP_STORE_OK) {
      Agentprune__V1__Outcome oc = outcome_for(s->session_id, it, 1);
      rc = ap_store_put_outcome(st, s->session_id, &oc);
    }
  }
  CHECK_EQ_INT(rc, AP_STORE_FULL);
  Agentprune__V1__History *h = NULL;
  CHECK_EQ_INT(ap_store_get_history(st, s->session_id, &h), AP_STORE_OK);
  if (h) CHECK(h->n_entries >= it - 2 && h->n_entries > 5);
  free_msg(h);
  free_msg(s);
  ap_store_close(st);
}

/*
 * A child takes a reader slot and dies with it (kill -9) while another
 * process keeps the environment open. (When the opener is alone, LMDB resets
 * the whole reader table by itself; mdb_reader_check matters when a tool or
 * a second process shares the lock file.)
 */
static pid_t spawn_reader(const char *dir, int take_txn) {
  int pipefd[2];
  if (pipe(pipefd) != 0) return -1;
  pid_t pid = fork();
  if (pid == 0) {
    MDB_env *env;
    MDB_txn *txn;
    close(pipefd[0]);
    if (mdb_env_create(&env) || mdb_env_set_maxdbs(env, 8) || mdb_env_set_maxreaders(env, 512) ||
        mdb_env_open(env, dir, MDB_NOTLS, 0644))
      _exit(3);
    if (take_txn && mdb_txn_begin(env, NULL, MDB_RDONLY, &txn)) _exit(3);
    if (write(pipefd[1], "r", 1) != 1) _exit(4);
    pause(); /* holds the environment (and the reader slot) until killed */
    _exit(0);
  }
  close(pipefd[1]);
  char ch = 0;
  if (read(pipefd[0], &ch, 1) != 1 || ch != 'r') pid = -1;
  close(pipefd[0]);
  return pid;
}

static void test_stale_reader(void) {
  char dir[512], err[256];
  tmpdir(dir, sizeof dir, "stale");
  ap_store *st = NULL;
  CHECK_EQ_INT(ap_store_open(dir, NULL, &st, err, sizeof err), AP_STORE_OK);
  ap_store_close(st);
  pid_t holder = spawn_reader(dir, 0);
  pid_t stale = spawn_reader(dir, 1);
  CHECK(holder > 0 && stale > 0);
  if (holder <= 0 || stale <= 0) return;
  int status = 0;
  kill(stale, SIGKILL);
  waitpid(stale, &status, 0);
  st = NULL;
  CHECK_EQ_INT(ap_store_open(dir, NULL, &st, err, sizeof err), AP_STORE_OK);
  if (st) {
    ap_store_stats s;
    ap_store_get_stats(st, &s);
    CHECK_EQ_INT(s.stale_readers_cleared, 1);
    /* The store works normally alongside the other process. */
    Agentprune__V1__Constraints c = AGENTPRUNE__V1__CONSTRAINTS__INIT;
    c.target_sparsity = 0.5;
    Agentprune__V1__SessionSpec spec = spec_for("after-stale", &c);
    Agentprune__V1__Session *sess = NULL;
    CHECK_EQ_INT(ap_store_open_session(st, &spec, 1, &sess, NULL), AP_STORE_OK);
    free_msg(sess);
    ap_store_close(st);
  }
  kill(holder, SIGKILL);
  waitpid(holder, &status, 0);
}

static void test_bad_open(void) {
  char err[256] = "";
  ap_store *st = NULL;
  CHECK(ap_store_open("/proc/definitely/not/here", NULL, &st, err, sizeof err) != AP_STORE_OK);
  CHECK(st == NULL);
  CHECK(strlen(err) > 0);
  CHECK(ap_store_open("", NULL, &st, err, sizeof err) == AP_STORE_BAD_ARG);
}

int main(void) {
  snprintf(root, sizeof root, "/tmp/ap-store-test-XXXXXX");
  if (!mkdtemp(root)) {
    perror("mkdtemp");
    return 1;
  }
  test_sessions_and_reopen();
  test_map_growth();
  test_stale_reader();
  test_bad_open();
  char cmd[512];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", root);
  if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", root);
  TEST_DONE();
}
