/*
 * test_job_store.c - round trips of jobs, events and checkpoints; the
 * last-two retention rule; reopen; corruption detected by CRC-32 after raw
 * LMDB edits of stored chunks and manifests; argument validation.
 */
#include <pthread.h>

#include "../test.h"
#include "jobs_test_util.h"

#define CHUNK 4096 /* small chunks so that small masks span many chunks */

static const uint64_t layer_bits[] = {64 * 1000, 123457, 1, 0, 70000 * 64 + 63};
#define NL (sizeof layer_bits / sizeof layer_bits[0])

static uint64_t *bufs[NL];

static void alloc_bufs(void) {
  for (size_t i = 0; i < NL; i++) bufs[i] = calloc(tu_words(layer_bits[i]) + 1, 8);
}

static int write_ckpt(ap_js *s, const char *job, uint64_t gen, uint64_t *no_out) {
  ap_js_mask_in m[NL];
  for (size_t i = 0; i < NL; i++) {
    tu_fill_mask(bufs[i], layer_bits[i], job, gen, (uint32_t)i);
    m[i].bits = layer_bits[i];
    m[i].words = bufs[i];
  }
  uint8_t state[77];
  tu_fill_state(state, sizeof state, job, gen);
  Agentprune__V1__JobState st = AGENTPRUNE__V1__JOB_STATE__INIT;
  Agentprune__V1__Job j = tu_job(job, NULL, (uint32_t)gen, &st);
  return ap_js_checkpoint_write(s, &j, NULL, state, sizeof state, m, NL, no_out, NULL);
}

/* Reads checkpoint `no` (0 = latest) and checks it equals generation `gen`. */
static int read_ckpt_matches(ap_js *s, const char *job, uint64_t no, uint64_t gen, int *rc_out) {
  ap_js_mask_out m[NL];
  for (size_t i = 0; i < NL; i++) {
    memset(bufs[i], 0xEE, (tu_words(layer_bits[i]) + 1) * 8);
    m[i].bits = layer_bits[i];
    m[i].words = bufs[i];
  }
  ap_js_ckpt *ck = NULL;
  int rc = ap_js_checkpoint_read(s, job, no, m, NL, &ck);
  if (rc_out) *rc_out = rc;
  if (rc) return 0;
  int ok = ck->n_layers == NL && ck->state_len == 77 && tu_state_matches(ck->state, 77, job, gen) && ck->job &&
           strcmp(ck->job->id, job) == 0 && ck->job->state && ck->job->state->iteration == gen;
  for (size_t i = 0; i < NL; i++) {
    ok = ok && ck->layer_bits[i] == layer_bits[i] && tu_mask_matches(bufs[i], layer_bits[i], job, gen, (uint32_t)i);
    /* The word past the bitmap must be untouched. */
    ok = ok && bufs[i][tu_words(layer_bits[i])] == 0xEEEEEEEEEEEEEEEEull;
    ok = ok && ck->layer_crc32[i] == ap_js_crc32(0, bufs[i], tu_words(layer_bits[i]) * 8);
  }
  ap_js_ckpt_free(ck);
  return ok;
}

static void test_crc32(void) {
  CHECK_EQ_INT(ap_js_crc32(0, "123456789", 9), 0xCBF43926u);
  CHECK_EQ_INT(ap_js_crc32(0, "", 0), 0);
  /* Slicing-by-8 path and incremental use agree with one-shot byte path. */
  uint8_t buf[1000];
  for (int i = 0; i < 1000; i++) buf[i] = (uint8_t)(i * 7 + 3);
  uint32_t one = ap_js_crc32(0, buf, 1000);
  uint32_t inc = 0;
  for (int i = 0; i < 1000; i += 13) inc = ap_js_crc32(inc, buf + i, i + 13 <= 1000 ? 13 : (size_t)(1000 - i));
  CHECK_EQ_INT(one, inc);
  CHECK_EQ_INT(ap_js_crc32(0, "The quick brown fox jumps over the lazy dog", 43), 0x414FA339u);
}

static void test_jobs(ap_js *s) {
  Agentprune__V1__JobSpec spec = AGENTPRUNE__V1__JOB_SPEC__INIT;
  spec.model_dir = "m/stories";
  spec.client_request_id = "req-1";
  spec.target_sparsity = 0.5;
  Agentprune__V1__Job a = tu_job("job-a", &spec, 0, NULL);
  a.status = AGENTPRUNE__V1__JOB_STATUS__JOB_STATUS_QUEUED;
  a.created_unix_ms = 1000;
  Agentprune__V1__Job *existing = (void *)1;
  CHECK_EQ_INT(ap_js_job_submit(s, &a, &existing), 0);
  CHECK(existing == NULL);

  /* A retried submit with the same request id returns the stored job, even
   * with a different proposed id, and writes nothing. */
  Agentprune__V1__Job a2 = tu_job("job-a-retry", &spec, 0, NULL);
  CHECK_EQ_INT(ap_js_job_submit(s, &a2, &existing), 0);
  CHECK(existing != NULL);
  if (existing) {
    CHECK_STR(existing->id, "job-a");
    CHECK_STR(existing->spec->model_dir, "m/stories");
    CHECK(existing->spec->target_sparsity == 0.5);
    agentprune__v1__job__free_unpacked(existing, NULL);
  }
  Agentprune__V1__Job *g = NULL;
  CHECK_EQ_INT(ap_js_job_get(s, "job-a-retry", &g), AP_JS_E_NOTFOUND);
  CHECK(g == NULL);

  /* Same job id with another request id: a conflict, not a duplicate. */
  Agentprune__V1__JobSpec spec2 = spec;
  spec2.client_request_id = "req-2";
  Agentprune__V1__Job a3 = tu_job("job-a", &spec2, 0, NULL);
  CHECK_EQ_INT(ap_js_job_submit(s, &a3, &existing), AP_JS_E_EXISTS);
  CHECK(existing == NULL);

  Agentprune__V1__Job b = tu_job("job-b", NULL, 0, NULL);
  b.status = AGENTPRUNE__V1__JOB_STATUS__JOB_STATUS_SUCCEEDED;
  b.created_unix_ms = 2000;
  CHECK_EQ_INT(ap_js_job_put(s, &b, NULL, NULL), 0);
  Agentprune__V1__Job c = tu_job("job-c", NULL, 0, NULL);
  c.created_unix_ms = 3000; /* RUNNING */
  CHECK_EQ_INT(ap_js_job_put(s, &c, NULL, NULL), 0);

  /* Update with an event: status change and event in one transaction. */
  Agentprune__V1__JobEvent ev = AGENTPRUNE__V1__JOB_EVENT__INIT;
  ev.job_id = "job-a";
  ev.type = AGENTPRUNE__V1__JOB_EVENT_TYPE__JOB_EVENT_STARTED;
  ev.seq = 999; /* ignored */
  a.status = AGENTPRUNE__V1__JOB_STATUS__JOB_STATUS_RUNNING;
  uint64_t seq = 0;
  CHECK_EQ_INT(ap_js_job_put(s, &a, &ev, &seq), 0);
  CHECK_EQ_INT(seq, 1);
  CHECK_EQ_INT(ev.seq, 999); /* caller's struct untouched */
  CHECK_EQ_INT(ap_js_job_get(s, "job-a", &g), 0);
  if (g) {
    CHECK_EQ_INT(g->status, AGENTPRUNE__V1__JOB_STATUS__JOB_STATUS_RUNNING);
    CHECK_EQ_INT(g->last_event_seq, 1);
    CHECK_STR(g->spec->client_request_id, "req-1");
    agentprune__v1__job__free_unpacked(g, NULL);
  }
  Agentprune__V1__JobEvent bad = ev;
  bad.job_id = "job-b";
  CHECK_EQ_INT(ap_js_job_put(s, &a, &bad, &seq), AP_JS_E_INVAL);

  Agentprune__V1__Job **jobs;
  size_t n;
  CHECK_EQ_INT(ap_js_job_list(s, 0, 0, &jobs, &n), 0);
  CHECK_EQ_INT(n, 3);
  if (n == 3) {
    CHECK_STR(jobs[0]->id, "job-c"); /* newest first */
    CHECK_STR(jobs[2]->id, "job-a");
  }
  ap_js_jobs_free(jobs, n);
  CHECK_EQ_INT(ap_js_job_list(s, 2, 0, &jobs, &n), 0);
  CHECK_EQ_INT(n, 2);
  if (n == 2) CHECK_STR(jobs[1]->id, "job-b");
  ap_js_jobs_free(jobs, n);
  CHECK_EQ_INT(ap_js_job_list(s, 0, 1, &jobs, &n), 0);
  CHECK_EQ_INT(n, 2); /* a RUNNING, c RUNNING; b finished */
  if (n == 2) {
    CHECK_STR(jobs[0]->id, "job-a"); /* oldest first for resume */
    CHECK_STR(jobs[1]->id, "job-c");
  }
  ap_js_jobs_free(jobs, n);

  /* Invalid ids are refused before touching LMDB. */
  Agentprune__V1__Job badid = tu_job("a/b", NULL, 0, NULL);
  CHECK_EQ_INT(ap_js_job_put(s, &badid, NULL, NULL), AP_JS_E_INVAL);
  badid.id = "";
  CHECK_EQ_INT(ap_js_job_put(s, &badid, NULL, NULL), AP_JS_E_INVAL);
  char longid[AP_JS_ID_MAX + 2];
  memset(longid, 'x', sizeof longid - 1);
  longid[sizeof longid - 1] = 0;
  badid.id = longid;
  CHECK_EQ_INT(ap_js_job_put(s, &badid, NULL, NULL), AP_JS_E_INVAL);
  longid[AP_JS_ID_MAX] = 0;
  CHECK_EQ_INT(ap_js_job_put(s, &badid, NULL, NULL), 0);
  CHECK_EQ_INT(ap_js_job_delete(s, longid), 0);
  CHECK_EQ_INT(ap_js_job_get(s, NULL, &g), AP_JS_E_INVAL);
}

static void test_events(ap_js *s) {
  Agentprune__V1__JobEvent ev = AGENTPRUNE__V1__JOB_EVENT__INIT;
  ev.job_id = "job-nope";
  CHECK_EQ_INT(ap_js_event_append(s, &ev, NULL), AP_JS_E_NOTFOUND);

  /* job-a has seq 1 already; append 2..40 with payloads. */
  Agentprune__V1__LayerTarget lt = AGENTPRUNE__V1__LAYER_TARGET__INIT, *ltp = &lt;
  lt.name = "model.layers.0.mlp.up_proj";
  lt.target_sparsity = 0.25;
  for (int i = 2; i <= 40; i++) {
    ev.job_id = "job-a";
    ev.type = AGENTPRUNE__V1__JOB_EVENT_TYPE__JOB_EVENT_DECISION;
    ev.iteration = (uint32_t)i;
    ev.ppl = 10.0 + i;
    ev.n_decision = 1;
    ev.decision = &ltp;
    uint64_t seq;
    CHECK_EQ_INT(ap_js_event_append(s, &ev, &seq), 0);
    CHECK_EQ_INT(seq, i);
  }
  /* Another job's events do not interleave into job-a's sequence. */
  ev.job_id = "job-c";
  uint64_t seq;
  CHECK_EQ_INT(ap_js_event_append(s, &ev, &seq), 0);
  CHECK_EQ_INT(seq, 1);

  Agentprune__V1__JobEvent **evs;
  size_t n;
  CHECK_EQ_INT(ap_js_events_read(s, "job-a", 0, 0, &evs, &n), 0);
  CHECK_EQ_INT(n, 40);
  int ok = 1;
  for (size_t i = 0; i < n; i++) {
    ok = ok && evs[i]->seq == i + 1 && strcmp(evs[i]->job_id, "job-a") == 0;
    if (i > 0) ok = ok && evs[i]->iteration == i + 1 && evs[i]->ppl == 10.0 + (double)(i + 1) &&
                    evs[i]->n_decision == 1 && strcmp(evs[i]->decision[0]->name, lt.name) == 0;
  }
  CHECK(ok);
  ap_js_events_free(evs, n);
  CHECK_EQ_INT(ap_js_events_read(s, "job-a", 25, 5, &evs, &n), 0);
  CHECK_EQ_INT(n, 5);
  if (n == 5) {
    CHECK_EQ_INT(evs[0]->seq, 25);
    CHECK_EQ_INT(evs[4]->seq, 29);
  }
  ap_js_events_free(evs, n);
  CHECK_EQ_INT(ap_js_events_read(s, "job-a", 41, 0, &evs, &n), 0);
  CHECK_EQ_INT(n, 0);
  CHECK(evs == NULL);
  CHECK_EQ_INT(ap_js_events_read(s, "job-zzz", 0, 0, &evs, &n), 0);
  CHECK_EQ_INT(n, 0);
  CHECK_EQ_INT(ap_js_event_last_seq(s, "job-a", &seq), 0);
  CHECK_EQ_INT(seq, 40);
  CHECK_EQ_INT(ap_js_events_wait(s, "job-a", 39, 0), 0);
  CHECK_EQ_INT(ap_js_events_wait(s, "job-a", 40, 30), AP_JS_E_TIMEOUT);

  /* last_event_seq follows plain appends, and a put with a stale value
   * does not move it back. */
  Agentprune__V1__Job *g;
  CHECK_EQ_INT(ap_js_job_get(s, "job-a", &g), 0);
  if (g) {
    CHECK_EQ_INT(g->last_event_seq, 40);
    g->last_event_seq = 3;
    CHECK_EQ_INT(ap_js_job_put(s, g, NULL, NULL), 0);
    agentprune__v1__job__free_unpacked(g, NULL);
  }
  Agentprune__V1__Job **jobs;
  size_t nj;
  CHECK_EQ_INT(ap_js_job_list(s, 0, 0, &jobs, &nj), 0);
  int seen = 0;
  for (size_t i = 0; i < nj; i++)
    if (strcmp(jobs[i]->id, "job-a") == 0) seen = jobs[i]->last_event_seq == 40;
    else if (strcmp(jobs[i]->id, "job-c") == 0) CHECK_EQ_INT(jobs[i]->last_event_seq, 1);
  CHECK(seen);
  ap_js_jobs_free(jobs, nj);
}

typedef struct {
  ap_js *s;
  int rc;
} waiter_arg;

static void *waiter(void *p) {
  waiter_arg *w = p;
  w->rc = ap_js_events_wait(w->s, "job-a", 40, 10000);
  return NULL;
}

static void test_event_wait_wakes(ap_js *s) {
  waiter_arg w = {s, 1};
  pthread_t t;
  pthread_create(&t, NULL, waiter, &w);
  usleep(50000);
  Agentprune__V1__JobEvent ev = AGENTPRUNE__V1__JOB_EVENT__INIT;
  ev.job_id = "job-a";
  uint64_t seq;
  CHECK_EQ_INT(ap_js_event_append(s, &ev, &seq), 0);
  CHECK_EQ_INT(seq, 41);
  pthread_join(t, NULL);
  CHECK_EQ_INT(w.rc, 0);
}

static void test_checkpoints(ap_js *s) {
  uint64_t nos[8];
  size_t n;
  int rc;
  CHECK_EQ_INT(ap_js_checkpoint_read(s, "job-a", 0, NULL, 0, NULL), AP_JS_E_NOTFOUND);
  Agentprune__V1__Job ghost = tu_job("job-ghost", NULL, 0, NULL);
  ap_js_mask_in one = {64, bufs[0]};
  CHECK_EQ_INT(ap_js_checkpoint_write(s, &ghost, NULL, NULL, 0, &one, 1, NULL, NULL), AP_JS_E_NOTFOUND);
  CHECK_EQ_INT(ap_js_checkpoint_write(s, &ghost, NULL, NULL, 0, &one, 0, NULL, NULL), AP_JS_E_INVAL);

  for (uint64_t gen = 1; gen <= 5; gen++) {
    uint64_t no = 0;
    CHECK_EQ_INT(write_ckpt(s, "job-a", gen, &no), 0);
    CHECK_EQ_INT(no, gen);
    CHECKF(read_ckpt_matches(s, "job-a", 0, gen, &rc), "gen %llu rc %d", (unsigned long long)gen, rc);
    CHECK_EQ_INT(ap_js_checkpoint_list(s, "job-a", nos, 8, &n), 0);
    CHECK_EQ_INT(n, gen < 2 ? gen : 2);
    if (n == 2) {
      CHECK_EQ_INT(nos[0], gen - 1);
      CHECK_EQ_INT(nos[1], gen);
    }
  }
  /* The previous accepted checkpoint is still complete; older ones are gone. */
  CHECK(read_ckpt_matches(s, "job-a", 4, 4, &rc));
  CHECK_EQ_INT(ap_js_checkpoint_read(s, "job-a", 3, NULL, 0, NULL), AP_JS_E_NOTFOUND);
  /* The job record moved with the checkpoint. */
  Agentprune__V1__Job *g;
  CHECK_EQ_INT(ap_js_job_get(s, "job-a", &g), 0);
  if (g) {
    CHECK(g->state && g->state->iteration == 5);
    agentprune__v1__job__free_unpacked(g, NULL);
  }
  /* Checkpoints of another job are independent. */
  uint64_t no;
  CHECK_EQ_INT(write_ckpt(s, "job-c", 100, &no), 0);
  CHECK_EQ_INT(no, 1);
  CHECK(read_ckpt_matches(s, "job-c", 0, 100, &rc));
  CHECK(read_ckpt_matches(s, "job-a", 0, 5, &rc));

  /* Metadata only (masks NULL) still verifies and reports shapes. */
  ap_js_ckpt *ck;
  CHECK_EQ_INT(ap_js_checkpoint_read(s, "job-a", 0, NULL, 0, &ck), 0);
  if (ck) {
    CHECK_EQ_INT(ck->ckpt_no, 5);
    CHECK_EQ_INT(ck->n_layers, NL);
    CHECK_EQ_INT(ck->layer_bits[1], layer_bits[1]);
    ap_js_ckpt_free(ck);
  }
  /* Shape mismatch: wrong layer count, wrong bits. */
  ap_js_mask_out m[NL];
  for (size_t i = 0; i < NL; i++) m[i] = (ap_js_mask_out){layer_bits[i], bufs[i]};
  CHECK_EQ_INT(ap_js_checkpoint_read(s, "job-a", 0, m, NL - 1, NULL), AP_JS_E_SHAPE);
  m[2].bits = 2;
  CHECK_EQ_INT(ap_js_checkpoint_read(s, "job-a", 0, m, NL, NULL), AP_JS_E_SHAPE);

  /* A checkpoint with its ACCEPTED event, in one transaction. */
  ap_js_mask_in mi = {64 * 10, bufs[0]};
  Agentprune__V1__Job jc = tu_job("job-c", NULL, 7, NULL);
  Agentprune__V1__JobEvent ev = AGENTPRUNE__V1__JOB_EVENT__INIT;
  ev.job_id = "job-a";
  CHECK_EQ_INT(ap_js_checkpoint_write(s, &jc, &ev, NULL, 0, &mi, 1, &no, NULL), AP_JS_E_INVAL);
  ev.job_id = "job-c";
  ev.type = AGENTPRUNE__V1__JOB_EVENT_TYPE__JOB_EVENT_ACCEPTED;
  uint64_t seq = 0;
  CHECK_EQ_INT(ap_js_checkpoint_write(s, &jc, &ev, NULL, 0, &mi, 1, &no, &seq), 0);
  CHECK_EQ_INT(no, 2);
  CHECK_EQ_INT(seq, 2); /* job-c had one event */
  CHECK_EQ_INT(ap_js_job_get(s, "job-c", &g), 0);
  if (g) {
    CHECK_EQ_INT(g->last_event_seq, 2);
    agentprune__v1__job__free_unpacked(g, NULL);
  }
  CHECK_EQ_INT(ap_js_checkpoint_read(s, "job-c", 0, NULL, 0, &ck), 0);
  if (ck) {
    CHECK(ck->job && ck->job->last_event_seq == 2 && ck->n_layers == 1 && ck->state_len == 0);
    ap_js_ckpt_free(ck);
  }
  Agentprune__V1__JobEvent **evs;
  CHECK_EQ_INT(ap_js_events_read(s, "job-c", 2, 0, &evs, &n), 0);
  CHECK(n == 1 && evs[0]->type == AGENTPRUNE__V1__JOB_EVENT_TYPE__JOB_EVENT_ACCEPTED);
  ap_js_events_free(evs, n);
}

/* Raw edit of the store (closed by the caller). mode: 0 flip a byte in a
 * chunk, 1 delete a chunk, 2 add an extra chunk, 3 flip a manifest byte,
 * 4 flip a byte in the state part. Returns 0 when the edit was made. */
static int raw_edit(const char *dir, const char *job, uint64_t no, int mode, void *saved, size_t *saved_len) {
  MDB_env *env = tu_raw_open(dir);
  if (!env) return -1;
  MDB_txn *txn;
  MDB_dbi chunks, man;
  int rc = mdb_txn_begin(env, NULL, 0, &txn);
  if (!rc) rc = mdb_dbi_open(txn, "ckpt_chunk", 0, &chunks);
  if (!rc) rc = mdb_dbi_open(txn, "ckpt_manifest", 0, &man);
  uint8_t key[256];
  MDB_val k, v;
  if (!rc && mode <= 2) {
    /* Layer 4 has 70001 words = 560008 bytes = 137 chunks of 4096 bytes. */
    k.mv_size = tu_chunk_key(key, job, no, 4, mode == 2 ? 137 : 66);
    k.mv_data = key;
    if (mode == 0 || mode == 1) {
      rc = mdb_get(txn, chunks, &k, &v);
      if (!rc) {
        memcpy(saved, v.mv_data, v.mv_size);
        *saved_len = v.mv_size;
      }
      if (!rc && mode == 0) {
        uint8_t *copy = malloc(v.mv_size);
        memcpy(copy, v.mv_data, v.mv_size);
        copy[1234] ^= 0x10;
        MDB_val nv = {v.mv_size, copy};
        rc = mdb_put(txn, chunks, &k, &nv, 0);
        free(copy);
      } else if (!rc) {
        rc = mdb_del(txn, chunks, &k, NULL);
      }
    } else {
      uint8_t extra[8] = {0};
      MDB_val nv = {8, extra};
      rc = mdb_put(txn, chunks, &k, &nv, MDB_NOOVERWRITE);
    }
  } else if (!rc && mode == 3) {
    size_t n = tu_chunk_key(key, job, no, 0, 0);
    k.mv_size = n - 10;
    k.mv_data = key;
    rc = mdb_get(txn, man, &k, &v);
    if (!rc) {
      uint8_t *copy = malloc(v.mv_size);
      memcpy(copy, v.mv_data, v.mv_size);
      memcpy(saved, v.mv_data, v.mv_size);
      *saved_len = v.mv_size;
      copy[40] ^= 1; /* layer 0's chunk count */
      MDB_val nv = {v.mv_size, copy};
      rc = mdb_put(txn, man, &k, &nv, 0);
      free(copy);
    }
  } else if (!rc && mode == 4) {
    k.mv_size = tu_chunk_key(key, job, no, AP_JS_PART_STATE, 0);
    k.mv_data = key;
    rc = mdb_get(txn, chunks, &k, &v);
    if (!rc) {
      uint8_t copy[256];
      memcpy(copy, v.mv_data, v.mv_size);
      memcpy(saved, v.mv_data, v.mv_size);
      *saved_len = v.mv_size;
      copy[5] ^= 0x80;
      MDB_val nv = {v.mv_size, copy};
      rc = mdb_put(txn, chunks, &k, &nv, 0);
    }
  }
  if (!rc) rc = mdb_txn_commit(txn);
  else mdb_txn_abort(txn);
  mdb_env_close(env);
  return rc;
}

/* Puts back what raw_edit changed. */
static int raw_restore(const char *dir, const char *job, uint64_t no, int mode, const void *saved, size_t len) {
  MDB_env *env = tu_raw_open(dir);
  if (!env) return -1;
  MDB_txn *txn;
  MDB_dbi chunks, man;
  int rc = mdb_txn_begin(env, NULL, 0, &txn);
  if (!rc) rc = mdb_dbi_open(txn, "ckpt_chunk", 0, &chunks);
  if (!rc) rc = mdb_dbi_open(txn, "ckpt_manifest", 0, &man);
  uint8_t key[256];
  MDB_val k = {0, key}, v = {len, (void *)saved};
  if (!rc) {
    if (mode <= 2) k.mv_size = tu_chunk_key(key, job, no, 4, mode == 2 ? 137 : 66);
    else if (mode == 3) k.mv_size = tu_chunk_key(key, job, no, 0, 0) - 10;
    else k.mv_size = tu_chunk_key(key, job, no, AP_JS_PART_STATE, 0);
    rc = mode == 2 ? mdb_del(txn, chunks, &k, NULL) : mdb_put(txn, mode == 3 ? man : chunks, &k, &v, 0);
  }
  if (!rc) rc = mdb_txn_commit(txn);
  else mdb_txn_abort(txn);
  mdb_env_close(env);
  return rc;
}

static void test_corruption(const char *dir, const ap_js_options *opt) {
  static uint8_t saved[8192];
  for (int mode = 0; mode <= 4; mode++) {
    size_t len = 0;
    CHECKF(raw_edit(dir, "job-a", 5, mode, saved, &len) == 0, "raw edit mode %d", mode);
    ap_js *s = NULL;
    CHECK_EQ_INT(ap_js_open(dir, opt, &s), 0);
    if (!s) return;
    int rc = 0;
    CHECKF(!read_ckpt_matches(s, "job-a", 0, 5, &rc) && rc == AP_JS_E_CORRUPT, "mode %d rc %d", mode, rc);
    /* Verification without copying finds it too. */
    CHECK_EQ_INT(ap_js_checkpoint_read(s, "job-a", 5, NULL, 0, NULL), AP_JS_E_CORRUPT);
    /* The previous checkpoint is the fallback and is intact. */
    CHECKF(read_ckpt_matches(s, "job-a", 4, 4, &rc), "mode %d fallback rc %d", mode, rc);
    ap_js_close(s);
    CHECKF(raw_restore(dir, "job-a", 5, mode, saved, len) == 0, "restore mode %d", mode);
  }
  ap_js *s = NULL;
  CHECK_EQ_INT(ap_js_open(dir, opt, &s), 0);
  int rc = 0;
  CHECKF(read_ckpt_matches(s, "job-a", 0, 5, &rc), "restored rc %d", rc);
  ap_js_close(s);
}

static void test_reopen(const char *dir, const ap_js_options *opt) {
  ap_js *s = NULL;
  CHECK_EQ_INT(ap_js_open(dir, opt, &s), 0);
  if (!s) return;
  Agentprune__V1__Job **jobs;
  size_t n;
  CHECK_EQ_INT(ap_js_job_list(s, 0, 0, &jobs, &n), 0);
  CHECK_EQ_INT(n, 3);
  ap_js_jobs_free(jobs, n);
  Agentprune__V1__JobEvent **evs;
  CHECK_EQ_INT(ap_js_events_read(s, "job-a", 0, 0, &evs, &n), 0);
  CHECK_EQ_INT(n, 41);
  ap_js_events_free(evs, n);
  int rc;
  CHECK(read_ckpt_matches(s, "job-a", 0, 5, &rc));
  CHECK(read_ckpt_matches(s, "job-a", 4, 4, &rc));
  CHECK(read_ckpt_matches(s, "job-c", 1, 100, &rc));
  /* Numbering continues after a reopen. */
  uint64_t no;
  CHECK_EQ_INT(write_ckpt(s, "job-a", 6, &no), 0);
  CHECK_EQ_INT(no, 6);
  /* Idempotent submit still answers from the index. */
  Agentprune__V1__JobSpec spec = AGENTPRUNE__V1__JOB_SPEC__INIT;
  spec.client_request_id = "req-1";
  Agentprune__V1__Job a = tu_job("job-new", &spec, 0, NULL);
  Agentprune__V1__Job *existing = NULL;
  CHECK_EQ_INT(ap_js_job_submit(s, &a, &existing), 0);
  CHECK(existing && strcmp(existing->id, "job-a") == 0);
  if (existing) agentprune__v1__job__free_unpacked(existing, NULL);

  /* Delete removes the job, its request id, events and checkpoints. */
  CHECK_EQ_INT(ap_js_job_delete(s, "job-a"), 0);
  CHECK_EQ_INT(ap_js_job_delete(s, "job-a"), AP_JS_E_NOTFOUND);
  CHECK_EQ_INT(ap_js_events_read(s, "job-a", 0, 0, &evs, &n), 0);
  CHECK_EQ_INT(n, 0);
  uint64_t nos[4];
  CHECK_EQ_INT(ap_js_checkpoint_list(s, "job-a", nos, 4, &n), 0);
  CHECK_EQ_INT(n, 0);
  CHECK_EQ_INT(ap_js_checkpoint_read(s, "job-c", 0, NULL, 0, NULL), 0);
  CHECK_EQ_INT(ap_js_job_submit(s, &a, &existing), 0);
  CHECK(existing == NULL); /* req-1 is free again */
  ap_js_close(s);

  /* No chunk of job-a is left behind (raw scan). */
  MDB_env *env = tu_raw_open(dir);
  CHECK(env != NULL);
  if (env) {
    MDB_txn *txn;
    MDB_dbi chunks;
    MDB_cursor *c;
    size_t left = 0, total = 0;
    if (!mdb_txn_begin(env, NULL, MDB_RDONLY, &txn) && !mdb_dbi_open(txn, "ckpt_chunk", 0, &chunks) &&
        !mdb_cursor_open(txn, chunks, &c)) {
      MDB_val k, v;
      while (!mdb_cursor_get(c, &k, &v, total ? MDB_NEXT : MDB_FIRST)) {
        total++;
        if (k.mv_size > 6 && memcmp(k.mv_data, "job-a/", 6) == 0) left++;
      }
      mdb_cursor_close(c);
      mdb_txn_abort(txn);
    }
    CHECK_EQ_INT(left, 0);
    CHECK(total > 0); /* job-c's chunks */
    mdb_env_close(env);
  }
}

static void test_bad_open(void) {
  ap_js *s = (void *)1;
  CHECK_EQ_INT(ap_js_open(NULL, NULL, &s), AP_JS_E_INVAL);
  ap_js_options o = {.chunk_bytes = 100}; /* not a multiple of 8 */
  char dir[256];
  tu_mkdtemp(dir, sizeof dir, "bad");
  CHECK_EQ_INT(ap_js_open(dir, &o, &s), AP_JS_E_INVAL);
  CHECK(s == NULL);
  /* A directory holding garbage as data.mdb is refused, not crashed on. */
  char p[300];
  snprintf(p, sizeof p, "%s/data.mdb", dir);
  FILE *f = fopen(p, "wb");
  for (int i = 0; i < 20000; i++) fputc(i * 31, f);
  fclose(f);
  int rc = ap_js_open(dir, NULL, &s);
  CHECKF(rc == AP_JS_E_CORRUPT || rc == AP_JS_E_IO, "rc %d", rc);
  CHECK(s == NULL);
  tu_rmstore(dir);
  CHECK_EQ_INT(ap_js_open("/proc/no/such/dir", NULL, &s), AP_JS_E_INVAL);
  CHECK(strcmp(ap_js_strerror(AP_JS_E_CORRUPT), "unknown error") != 0);
}

int main(void) {
  ap_log_init("test_job_store", AP_LOG_ERROR, 0);
  alloc_bufs();
  char dir[256];
  tu_mkdtemp(dir, sizeof dir, "basic");
  ap_js_options opt = {.chunk_bytes = CHUNK, .initial_map_bytes = 1 << 20};
  test_crc32();
  ap_js *s = NULL;
  CHECK_EQ_INT(ap_js_open(dir, &opt, &s), 0);
  if (!s) TEST_DONE();
  test_jobs(s);
  test_events(s);
  test_event_wait_wakes(s);
  test_checkpoints(s);
  ap_js_close(s);
  test_corruption(dir, &opt);
  test_reopen(dir, &opt);
  test_bad_open();
  tu_rmstore(dir);
  for (size_t i = 0; i < NL; i++) free(bufs[i]);
  TEST_DONE();
}
