/*
 * test_job_store_growth.c - map growth from a 64 KiB map through many
 * checkpoints of a multi-MB mask set; the growth limit (AP_JS_E_FULL, and the
 * store still works afterwards); concurrent writers, readers and an event
 * waiter from threads on one store while its map grows.
 */
#include <pthread.h>
#include <time.h>

#include "../test.h"
#include "jobs_test_util.h"

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static int add_job(ap_js *s, const char *id) {
  Agentprune__V1__Job j = tu_job(id, NULL, 0, NULL);
  return ap_js_job_put(s, &j, NULL, NULL);
}

/* Writes generation `gen` of a job: masks, state (gen-derived), job state iteration = gen. */
static int write_gen(ap_js *s, const char *job, const uint64_t *bits, uint32_t nl, uint64_t **bufs, uint64_t gen,
                     uint64_t *no) {
  ap_js_mask_in m[8];
  for (uint32_t i = 0; i < nl; i++) {
    tu_fill_mask(bufs[i], bits[i], job, gen, i);
    m[i].bits = bits[i];
    m[i].words = bufs[i];
  }
  uint8_t state[40];
  tu_fill_state(state, sizeof state, job, gen);
  Agentprune__V1__JobState st = AGENTPRUNE__V1__JOB_STATE__INIT;
  Agentprune__V1__Job j = tu_job(job, NULL, (uint32_t)gen, &st);
  return ap_js_checkpoint_write(s, &j, NULL, state, sizeof state, m, nl, no, NULL);
}

/* Reads checkpoint `no` (0 = latest); returns rc and in *ok whether it equals
 * the generation given by its own number. */
static int read_verify(ap_js *s, const char *job, uint64_t no, const uint64_t *bits, uint32_t nl, uint64_t **bufs,
                       int *ok, uint64_t *no_out) {
  ap_js_mask_out m[8];
  for (uint32_t i = 0; i < nl; i++) m[i] = (ap_js_mask_out){bits[i], bufs[i]};
  ap_js_ckpt *ck = NULL;
  int rc = ap_js_checkpoint_read(s, job, no, m, nl, &ck);
  *ok = 0;
  if (rc) return rc;
  uint64_t gen = ck->ckpt_no;
  *ok = ck->job && ck->job->state && ck->job->state->iteration == gen && ck->state_len == 40 &&
        tu_state_matches(ck->state, 40, job, gen);
  for (uint32_t i = 0; i < nl; i++) *ok = *ok && tu_mask_matches(bufs[i], bits[i], job, gen, i);
  if (no_out) *no_out = gen;
  ap_js_ckpt_free(ck);
  return 0;
}

static void test_growth(void) {
  static const uint64_t bits[] = {8000000 + 13, 7000001, 9000007, 5000000};
  const uint32_t nl = 4;
  uint64_t *bufs[4];
  size_t live = 0;
  for (uint32_t i = 0; i < nl; i++) {
    bufs[i] = malloc(tu_words(bits[i]) * 8);
    live += tu_words(bits[i]) * 8;
  }
  char dir[256];
  tu_mkdtemp(dir, sizeof dir, "grow");
  ap_js_options opt = {.initial_map_bytes = 64 << 10};
  ap_js *s = NULL;
  CHECK_EQ_INT(ap_js_open(dir, &opt, &s), 0);
  if (!s) return;
  ap_js_stats_t st0;
  CHECK_EQ_INT(ap_js_stats(s, &st0), 0);
  CHECK_EQ_INT(st0.map_bytes, 64 << 10);
  CHECK_EQ_INT(add_job(s, "big"), 0);
  const int gens = 12;
  double t0 = now_s();
  int all_ok = 1;
  for (int g = 1; g <= gens; g++) {
    uint64_t no = 0;
    int rc = write_gen(s, "big", bits, nl, bufs, (uint64_t)g, &no);
    CHECKF(rc == 0 && no == (uint64_t)g, "gen %d rc %d no %llu", g, rc, (unsigned long long)no);
    int ok;
    rc = read_verify(s, "big", 0, bits, nl, bufs, &ok, &no);
    all_ok = all_ok && rc == 0 && ok && no == (uint64_t)g;
  }
  double dt = now_s() - t0;
  CHECK(all_ok);
  int ok;
  uint64_t no;
  CHECK_EQ_INT(read_verify(s, "big", gens - 1, bits, nl, bufs, &ok, &no), 0);
  CHECK(ok && no == (uint64_t)gens - 1);
  ap_js_stats_t st;
  CHECK_EQ_INT(ap_js_stats(s, &st), 0);
  CHECK(st.grow_count > 0);
  CHECK(st.map_bytes > (size_t)(64 << 10) && st.map_bytes >= st.used_bytes);
  /* Two checkpoints are live; freed pages of older ones must be recycled, so
   * the file stays within a small multiple of that (COW needs ~3 copies). */
  CHECKF(st.used_bytes <= 5 * 2 * live, "used %zu live %zu", st.used_bytes, 2 * live);
  printf("growth: %d checkpoints of %.2f MB in %.2f s (%.1f MB/s incl. fsync and read-back); map 64 KiB -> %.1f MB in "
         "%u growths; file %.1f MB = %.2f x the 2 live checkpoints\n",
         gens, live / 1e6, dt, gens * live / 1e6 / dt, st.map_bytes / 1e6, st.grow_count, st.used_bytes / 1e6,
         (double)st.used_bytes / (2.0 * live));
  ap_js_close(s);

  /* Reopen: the map is sized from the file and everything is there. */
  s = NULL;
  CHECK_EQ_INT(ap_js_open(dir, &opt, &s), 0);
  if (s) {
    CHECK_EQ_INT(read_verify(s, "big", 0, bits, nl, bufs, &ok, &no), 0);
    CHECK(ok && no == (uint64_t)gens);
    ap_js_close(s);
  }
  tu_rmstore(dir);
  for (uint32_t i = 0; i < nl; i++) free(bufs[i]);
}

static void test_limit(void) {
  static const uint64_t bits[] = {8000000, 8000000, 8000000};
  uint64_t *bufs[3];
  for (int i = 0; i < 3; i++) bufs[i] = malloc(tu_words(bits[i]) * 8);
  char dir[256];
  tu_mkdtemp(dir, sizeof dir, "limit");
  ap_js_options opt = {.initial_map_bytes = 64 << 10, .max_map_bytes = 2 << 20};
  ap_js *s = NULL;
  CHECK_EQ_INT(ap_js_open(dir, &opt, &s), 0);
  if (!s) return;
  CHECK_EQ_INT(add_job(s, "lim"), 0);
  uint64_t small_bits[1] = {64 * 1000};
  uint64_t no;
  CHECK_EQ_INT(write_gen(s, "lim", small_bits, 1, bufs, 1, &no), 0);
  /* 3 MB of masks cannot fit in a 2 MiB map. */
  CHECK_EQ_INT(write_gen(s, "lim", bits, 3, bufs, 2, &no), AP_JS_E_FULL);
  ap_js_stats_t st;
  CHECK_EQ_INT(ap_js_stats(s, &st), 0);
  CHECK_EQ_INT(st.map_bytes, 2 << 20);
  /* Nothing of the failed checkpoint exists, the store still works. */
  uint64_t nos[4];
  size_t n;
  CHECK_EQ_INT(ap_js_checkpoint_list(s, "lim", nos, 4, &n), 0);
  CHECK(n == 1 && nos[0] == 1);
  int ok;
  CHECK_EQ_INT(write_gen(s, "lim", small_bits, 1, bufs, 2, &no), 0);
  CHECK_EQ_INT(no, 2);
  CHECK_EQ_INT(read_verify(s, "lim", 0, small_bits, 1, bufs, &ok, &no), 0);
  CHECK(ok && no == 2);
  ap_js_close(s);
  tu_rmstore(dir);
  for (int i = 0; i < 3; i++) free(bufs[i]);
}

/* ---- concurrency ---- */

#define CW_GENS 20
static const uint64_t cbits[] = {200003, 150000, 64 * 1000};
static ap_js *cs;
static volatile int writers_done;
static pthread_mutex_t cmu = PTHREAD_MUTEX_INITIALIZER;
static int c_errors, c_reads, c_mismatch;

static void *writer(void *p) {
  const char *job = p;
  uint64_t *bufs[3];
  for (int i = 0; i < 3; i++) bufs[i] = malloc(tu_words(cbits[i]) * 8);
  int errors = 0;
  for (uint64_t g = 1; g <= CW_GENS; g++) {
    uint64_t no;
    if (write_gen(cs, job, cbits, 3, bufs, g, &no) || no != g) errors++;
    Agentprune__V1__JobEvent ev = AGENTPRUNE__V1__JOB_EVENT__INIT;
    ev.job_id = (char *)job;
    ev.type = AGENTPRUNE__V1__JOB_EVENT_TYPE__JOB_EVENT_ACCEPTED;
    ev.iteration = (uint32_t)g;
    uint64_t seq;
    if (ap_js_event_append(cs, &ev, &seq) || seq != g) errors++;
  }
  pthread_mutex_lock(&cmu);
  c_errors += errors;
  pthread_mutex_unlock(&cmu);
  for (int i = 0; i < 3; i++) free(bufs[i]);
  return NULL;
}

static void *reader(void *p) {
  uintptr_t idx = (uintptr_t)p;
  uint64_t *bufs[3];
  for (int i = 0; i < 3; i++) bufs[i] = malloc(tu_words(cbits[i]) * 8);
  int errors = 0, reads = 0, mismatch = 0;
  for (unsigned it = 0; !writers_done || it < 5; it++) {
    const char *job = (it + idx) % 2 ? "w1" : "w0";
    int ok;
    uint64_t no;
    int rc = read_verify(cs, job, 0, cbits, 3, bufs, &ok, &no);
    if (rc == 0) {
      reads++;
      if (!ok) mismatch++;
    } else if (rc != AP_JS_E_NOTFOUND) {
      errors++;
    }
    Agentprune__V1__JobEvent **evs;
    size_t n;
    if (ap_js_events_read(cs, job, 0, 0, &evs, &n)) errors++;
    else {
      for (size_t i = 0; i < n; i++)
        if (evs[i]->seq != i + 1 || evs[i]->iteration != i + 1) mismatch++;
      ap_js_events_free(evs, n);
    }
    Agentprune__V1__Job *j;
    if (ap_js_job_get(cs, job, &j)) errors++;
    else agentprune__v1__job__free_unpacked(j, NULL);
  }
  pthread_mutex_lock(&cmu);
  c_errors += errors;
  c_reads += reads;
  c_mismatch += mismatch;
  pthread_mutex_unlock(&cmu);
  for (int i = 0; i < 3; i++) free(bufs[i]);
  return NULL;
}

static void *tail_waiter(void *p) {
  uint64_t seen = 0;
  int *result = p;
  while (seen < CW_GENS) {
    int rc = ap_js_events_wait(cs, "w0", seen, 20000);
    if (rc) { *result = rc; return NULL; }
    uint64_t last;
    if (ap_js_event_last_seq(cs, "w0", &last) || last <= seen) { *result = -100; return NULL; }
    seen = last;
  }
  *result = 0;
  return NULL;
}

static void test_concurrency(void) {
  char dir[256];
  tu_mkdtemp(dir, sizeof dir, "conc");
  ap_js_options opt = {.initial_map_bytes = 256 << 10, .chunk_bytes = 16384};
  CHECK_EQ_INT(ap_js_open(dir, &opt, &cs), 0);
  if (!cs) return;
  CHECK_EQ_INT(add_job(cs, "w0"), 0);
  CHECK_EQ_INT(add_job(cs, "w1"), 0);
  pthread_t w[2], r[3], t;
  int tail_rc = 1;
  pthread_create(&t, NULL, tail_waiter, &tail_rc);
  for (uintptr_t i = 0; i < 3; i++) pthread_create(&r[i], NULL, reader, (void *)i);
  pthread_create(&w[0], NULL, writer, "w0");
  pthread_create(&w[1], NULL, writer, "w1");
  pthread_join(w[0], NULL);
  pthread_join(w[1], NULL);
  writers_done = 1;
  for (int i = 0; i < 3; i++) pthread_join(r[i], NULL);
  pthread_join(t, NULL);
  CHECK_EQ_INT(c_errors, 0);
  CHECK_EQ_INT(c_mismatch, 0);
  CHECK(c_reads >= 6);
  CHECK_EQ_INT(tail_rc, 0);
  ap_js_stats_t st;
  CHECK_EQ_INT(ap_js_stats(cs, &st), 0);
  CHECK(st.grow_count > 0); /* growth happened while readers were active */
  CHECK_EQ_INT(st.reader_slots_used, 0);
  uint64_t nos[4];
  size_t n;
  for (int j = 0; j < 2; j++) {
    CHECK_EQ_INT(ap_js_checkpoint_list(cs, j ? "w1" : "w0", nos, 4, &n), 0);
    CHECK(n == 2 && nos[0] == CW_GENS - 1 && nos[1] == CW_GENS);
  }
  printf("concurrency: %d verified checkpoint reads during %d writes, %u map growths\n", c_reads, 2 * CW_GENS,
         st.grow_count);
  ap_js_close(cs);
  tu_rmstore(dir);
}

int main(void) {
  ap_log_init("test_job_store_growth", AP_LOG_WARN, 0);
  test_growth();
  test_limit();
  test_concurrency();
  TEST_DONE();
}
