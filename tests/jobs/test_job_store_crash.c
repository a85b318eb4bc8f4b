/*
 * test_job_store_crash.c - durability under SIGKILL.
 *
 * A child process writes checkpoints of one job in a loop (each with its
 * ACCEPTED event in the same transaction) and reports each committed checkpoint number on a pipe. The parent
 * kills it with SIGKILL at random moments - and, every other round, exactly
 * while it sleeps inside a checkpoint's write transaction between two chunk
 * puts (the store's test hook reports "H" and sleeps). After each kill the
 * parent reopens the store and checks that the latest checkpoint is complete
 * (CRCs, manifest, content equal to what the child wrote for that number),
 * that it is the last reported one or the one right after (committed, not yet
 * reported), never the interrupted one, that the previous one is intact too,
 * and that no chunk of any other checkpoint number was left behind.
 *
 * Also: a reader slot of a killed process is cleared by ap_js_open.
 */
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>

#include "../test.h"
#include "jobs_test_util.h"

#define JOB "crash"
#define CHUNK (64 << 10)
#define ROUNDS 14
static const uint64_t bits[] = {3000017, 2000000, 1000003};
#define NL 3

typedef struct {
  char type; /* 'C' committed, 'H' inside the txn (about to sleep), 'E' child error */
  uint64_t no;
} record;

typedef struct {
  int fd;
  int mid_mode;
  uint64_t hold_no; /* the checkpoint number whose txn sleeps */
  uint32_t hold_chunk;
  uint64_t rng;
} child_ctx;

static void send_rec(int fd, char type, uint64_t no) {
  uint8_t b[9];
  b[0] = (uint8_t)type;
  memcpy(b + 1, &no, 8);
  if (write(fd, b, 9) != 9) _exit(3);
}

static void hook(void *arg, uint64_t no, uint32_t part, uint32_t chunk) {
  child_ctx *c = arg;
  if (c->mid_mode && no == c->hold_no && part == 1 && chunk == c->hold_chunk) {
    send_rec(c->fd, 'H', no);
    usleep(400000); /* the parent kills during this sleep */
  } else if (!c->mid_mode && tu_splitmix(&c->rng) % 4 == 0) {
    usleep((useconds_t)(tu_splitmix(&c->rng) % 1500)); /* widen the txn window */
  }
}

static void child_main(const char *dir, int fd, int mid_mode, uint64_t seed) {
  prctl(PR_SET_PDEATHSIG, SIGKILL);
  child_ctx c = {.fd = fd, .mid_mode = mid_mode, .rng = seed};
  ap_js_options opt = {.chunk_bytes = CHUNK, .initial_map_bytes = 1 << 20, .test_hook = hook, .test_hook_arg = &c};
  ap_js *s;
  if (ap_js_open(dir, &opt, &s)) { send_rec(fd, 'E', 1); _exit(2); }
  uint64_t nos[4];
  size_t n;
  if (ap_js_checkpoint_list(s, JOB, nos, 4, &n)) { send_rec(fd, 'E', 2); _exit(2); }
  uint64_t next = n ? nos[n > 4 ? 3 : n - 1] + 1 : 1;
  c.hold_no = next + tu_splitmix(&c.rng) % 3;
  uint32_t chunks1 = (uint32_t)((tu_words(bits[1]) * 8 + CHUNK - 1) / CHUNK);
  c.hold_chunk = (uint32_t)(tu_splitmix(&c.rng) % chunks1);
  uint64_t *bufs[NL];
  for (int i = 0; i < NL; i++) bufs[i] = malloc(tu_words(bits[i]) * 8);
  for (;; next++) {
    ap_js_mask_in m[NL];
    for (int i = 0; i < NL; i++) {
      tu_fill_mask(bufs[i], bits[i], JOB, next, (uint32_t)i);
      m[i] = (ap_js_mask_in){bits[i], bufs[i]};
    }
    uint8_t state[40];
    tu_fill_state(state, sizeof state, JOB, next);
    Agentprune__V1__JobState st = AGENTPRUNE__V1__JOB_STATE__INIT;
    Agentprune__V1__Job j = tu_job(JOB, NULL, (uint32_t)next, &st);
    /* The ACCEPTED event commits with the checkpoint, so seq == number. */
    Agentprune__V1__JobEvent ev = AGENTPRUNE__V1__JOB_EVENT__INIT;
    ev.job_id = JOB;
    ev.type = AGENTPRUNE__V1__JOB_EVENT_TYPE__JOB_EVENT_ACCEPTED;
    ev.iteration = (uint32_t)next;
    uint64_t no, seq;
    int rc = ap_js_checkpoint_write(s, &j, &ev, state, sizeof state, m, NL, &no, &seq);
    if (rc || no != next || seq != next) { send_rec(fd, 'E', 3); _exit(2); }
    send_rec(fd, 'C', no);
  }
}

static double now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec * 1e3 + ts.tv_nsec * 1e-6;
}

/* Reads whole records from fd until `until_ms` (monotonic) or, if stop_on_h,
 * the first 'H'. Returns 1 when stopped by an 'H'. */
static int pump(int fd, double until_ms, int stop_on_h, uint64_t *last_c, uint64_t *last_h, int *child_err) {
  static uint8_t buf[9];
  static size_t have;
  for (;;) {
    double left = until_ms - now_ms();
    if (left <= 0) return 0;
    struct pollfd p = {fd, POLLIN, 0};
    int pr = poll(&p, 1, (int)left + 1);
    if (pr <= 0) continue;
    ssize_t r = read(fd, buf + have, 9 - have);
    if (r <= 0) return 0;
    have += (size_t)r;
    if (have < 9) continue;
    have = 0;
    uint64_t no;
    memcpy(&no, buf + 1, 8);
    if (buf[0] == 'C' && no > *last_c) *last_c = no;
    if (buf[0] == 'H') *last_h = no;
    if (buf[0] == 'E') *child_err = (int)no;
    if (buf[0] == 'H' && stop_on_h) return 1;
  }
}

/* Counts chunks of JOB per checkpoint number with a raw read-only scan. */
static int orphan_chunks(const char *dir, uint64_t keep_a, uint64_t keep_b, size_t *count) {
  *count = 0;
  MDB_env *env = tu_raw_open(dir);
  if (!env) return -1;
  MDB_txn *txn;
  MDB_dbi db;
  MDB_cursor *c;
  int orphans = 0;
  if (mdb_txn_begin(env, NULL, MDB_RDONLY, &txn) == 0) {
    if (mdb_dbi_open(txn, "ckpt_chunk", 0, &db) == 0 && mdb_cursor_open(txn, db, &c) == 0) {
      MDB_val k, v;
      int op = MDB_FIRST;
      size_t jl = strlen(JOB);
      while (mdb_cursor_get(c, &k, &v, op) == 0) {
        op = MDB_NEXT;
        const uint8_t *p = k.mv_data;
        if (k.mv_size != jl + 19 || memcmp(p, JOB "/", jl + 1) != 0) continue;
        uint64_t no = 0;
        for (int i = 0; i < 8; i++) no = (no << 8) | p[jl + 1 + i];
        if (no != keep_a && no != keep_b) orphans++;
        (*count)++;
      }
      mdb_cursor_close(c);
    }
    mdb_txn_abort(txn);
  }
  mdb_env_close(env);
  return orphans;
}

static uint64_t *vbufs[NL];

/* Reads checkpoint `no` (0 = latest), 0 rc and content equal to generation
 * ck->ckpt_no -> returns that number; else 0 with *rc set. */
static uint64_t verify_ckpt(ap_js *s, uint64_t no, int *rc) {
  ap_js_mask_out m[NL];
  for (int i = 0; i < NL; i++) m[i] = (ap_js_mask_out){bits[i], vbufs[i]};
  ap_js_ckpt *ck = NULL;
  *rc = ap_js_checkpoint_read(s, JOB, no, m, NL, &ck);
  if (*rc) return 0;
  uint64_t g = ck->ckpt_no;
  int ok = ck->job && ck->job->state && ck->job->state->iteration == g && ck->state_len == 40 &&
           tu_state_matches(ck->state, 40, JOB, g);
  for (int i = 0; i < NL; i++) ok = ok && tu_mask_matches(vbufs[i], bits[i], JOB, g, (uint32_t)i);
  ap_js_ckpt_free(ck);
  if (!ok) *rc = 1000;
  return ok ? g : 0;
}

static void test_kill_loop(void) {
  char dir[256];
  tu_mkdtemp(dir, sizeof dir, "crash");
  ap_js_options popt = {.chunk_bytes = CHUNK};
  ap_js *s;
  CHECK_EQ_INT(ap_js_open(dir, &popt, &s), 0);
  if (!s) return;
  Agentprune__V1__Job j = tu_job(JOB, NULL, 0, NULL);
  CHECK_EQ_INT(ap_js_job_put(s, &j, NULL, NULL), 0);
  ap_js_close(s);
  for (int i = 0; i < NL; i++) vbufs[i] = malloc(tu_words(bits[i]) * 8);

  const char *seed_env = getenv("AP_JS_CRASH_SEED");
  uint64_t rng = seed_env ? strtoull(seed_env, NULL, 10) : 20261128;
  uint64_t last_c = 0;
  int mid_kills = 0, mid_strict = 0, latest_unreported = 0;
  for (int round = 0; round < ROUNDS; round++) {
    int mid = round % 2;
    int fds[2];
    if (pipe(fds)) { perror("pipe"); exit(2); }
    fflush(NULL);
    pid_t pid = fork();
    if (pid == 0) {
      close(fds[0]);
      child_main(dir, fds[1], mid, tu_splitmix(&rng) + (uint64_t)round);
      _exit(0);
    }
    close(fds[1]);
    uint64_t last_h = 0;
    int child_err = 0, got_h = 0;
    if (mid) {
      got_h = pump(fds[0], now_ms() + 20000, 1, &last_c, &last_h, &child_err);
      CHECKF(got_h, "round %d: child never reached the hook", round);
    } else {
      double delay = 5 + (double)(tu_splitmix(&rng) % 300);
      pump(fds[0], now_ms() + delay, 0, &last_c, &last_h, &child_err);
    }
    kill(pid, SIGKILL);
    int status;
    waitpid(pid, &status, 0);
    CHECKF(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL, "round %d: child exited by itself (status %d)", round,
           status);
    /* Drain what it wrote before dying (no 'H' stop now). */
    uint64_t dummy_h = 0;
    pump(fds[0], now_ms() + 50, 0, &last_c, &dummy_h, &child_err);
    close(fds[0]);
    CHECKF(child_err == 0, "round %d: child error %d", round, child_err);

    s = NULL;
    CHECK_EQ_INT(ap_js_open(dir, &popt, &s), 0);
    if (!s) break;
    int rc;
    uint64_t latest = verify_ckpt(s, 0, &rc);
    if (last_c == 0 && rc == AP_JS_E_NOTFOUND) {
      ap_js_close(s);
      continue;
    }
    CHECKF(rc == 0, "round %d: latest checkpoint unreadable rc %d", round, rc);
    CHECKF(latest == last_c || latest == last_c + 1, "round %d: latest %llu, last reported commit %llu", round,
           (unsigned long long)latest, (unsigned long long)last_c);
    if (latest == last_c + 1) latest_unreported++;
    if (mid && got_h) {
      mid_kills++;
      /* Killed while sleeping inside checkpoint last_h's transaction. */
      if (last_h == last_c + 1) {
        mid_strict++;
        CHECKF(latest == last_c, "round %d: interrupted checkpoint %llu is visible", round, (unsigned long long)last_h);
      }
    }
    if (latest > 1) {
      uint64_t prev = verify_ckpt(s, latest - 1, &rc);
      CHECKF(rc == 0 && prev == latest - 1, "round %d: previous checkpoint rc %d", round, rc);
    }
    uint64_t nos[8];
    size_t n;
    CHECK_EQ_INT(ap_js_checkpoint_list(s, JOB, nos, 8, &n), 0);
    CHECKF(n == (latest > 1 ? 2 : 1), "round %d: %zu checkpoints", round, n);
    Agentprune__V1__JobEvent **evs;
    size_t ne;
    CHECK_EQ_INT(ap_js_events_read(s, JOB, 0, 0, &evs, &ne), 0);
    int ev_ok = ne == latest;
    for (size_t i = 0; i < ne; i++) ev_ok = ev_ok && evs[i]->seq == i + 1 && evs[i]->iteration == i + 1;
    CHECKF(ev_ok, "round %d: %zu events for checkpoint %llu", round, ne, (unsigned long long)latest);
    ap_js_events_free(evs, ne);
    Agentprune__V1__Job *jr;
    CHECK_EQ_INT(ap_js_job_get(s, JOB, &jr), 0);
    if (jr) {
      CHECKF(jr->state && jr->state->iteration == latest, "round %d: job record not at checkpoint", round);
      agentprune__v1__job__free_unpacked(jr, NULL);
    }
    ap_js_close(s);
    size_t nchunks;
    int orphans = orphan_chunks(dir, latest, latest - 1, &nchunks);
    size_t per_ckpt = 2; /* state + job part */
    for (int i = 0; i < NL; i++) per_ckpt += (tu_words(bits[i]) * 8 + CHUNK - 1) / CHUNK;
    CHECKF(orphans == 0 && nchunks == per_ckpt * n, "round %d: %d orphan chunks, %zu chunks", round, orphans,
           nchunks);
    last_c = latest; /* the next child continues from what is durable */
  }
  printf("crash: %d kills, %d inside a checkpoint transaction (%d strictly checked), latest = last reported + 1 in %d; "
         "reached checkpoint %llu\n",
         ROUNDS, mid_kills, mid_strict, latest_unreported, (unsigned long long)last_c);
  CHECK(mid_strict >= ROUNDS / 2 - 2);
  CHECK(last_c >= 5);
  for (int i = 0; i < NL; i++) free(vbufs[i]);
  tu_rmstore(dir);
}

/* Forks a process that opens the store's environment raw and, with
 * `reader`, holds a read transaction; returns once it reports ready. */
static pid_t spawn_raw(const char *dir, int reader) {
  int fds[2];
  if (pipe(fds)) { perror("pipe"); exit(2); }
  fflush(NULL);
  pid_t pid = fork();
  if (pid == 0) {
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    close(fds[0]);
    MDB_env *env = tu_raw_open(dir);
    MDB_txn *txn;
    char ok = env && (!reader || mdb_txn_begin(env, NULL, MDB_RDONLY, &txn) == 0) ? 'R' : 'E';
    if (write(fds[1], &ok, 1) != 1) _exit(3);
    for (;;) pause();
  }
  close(fds[1]);
  char c = 0;
  CHECK(read(fds[0], &c, 1) == 1 && c == 'R');
  close(fds[0]);
  return pid;
}

static void kill_wait(pid_t pid) {
  kill(pid, SIGKILL);
  waitpid(pid, NULL, 0);
}

static void check_open_stats(const char *dir, int want_cleared, unsigned want_slots) {
  ap_js *s = NULL;
  ap_js_stats_t st;
  CHECK_EQ_INT(ap_js_open(dir, NULL, &s), 0);
  if (!s) return;
  CHECK_EQ_INT(ap_js_stats(s, &st), 0);
  CHECK_EQ_INT(st.stale_readers_cleared, want_cleared);
  CHECK_EQ_INT(st.reader_slots_used, want_slots);
  Agentprune__V1__Job *g;
  CHECK_EQ_INT(ap_js_job_get(s, "r", &g), 0);
  if (g) agentprune__v1__job__free_unpacked(g, NULL);
  ap_js_close(s);
}

/* A reader slot of a killed process only survives while some other process
 * keeps the environment open (the first opener re-initialises the lock
 * table); that is when mdb_reader_check at open must clear it. */
static void test_stale_reader(void) {
  char dir[256];
  tu_mkdtemp(dir, sizeof dir, "stale");
  ap_js *s;
  CHECK_EQ_INT(ap_js_open(dir, NULL, &s), 0);
  if (!s) return;
  Agentprune__V1__Job j = tu_job("r", NULL, 0, NULL);
  CHECK_EQ_INT(ap_js_job_put(s, &j, NULL, NULL), 0);
  ap_js_close(s);

  pid_t holder = spawn_raw(dir, 0);
  pid_t reader = spawn_raw(dir, 1);
  check_open_stats(dir, 0, 1); /* the reader is alive: its slot stays */
  kill_wait(reader);
  check_open_stats(dir, 1, 0); /* dead reader's slot cleared at open */
  kill_wait(holder);

  /* Without another process holding the environment, the lock table is
   * rebuilt on open: no slot is left either. */
  reader = spawn_raw(dir, 1);
  kill_wait(reader);
  check_open_stats(dir, 0, 0);
  tu_rmstore(dir);
}

/* Another process grows the map while this one has the store open: our next
 * transactions see MDB_MAP_RESIZED, adopt the new size and carry on. */
static void test_other_process_growth(void) {
  char dir[256];
  tu_mkdtemp(dir, sizeof dir, "resized");
  int go[2], done[2];
  if (pipe(go) || pipe(done)) { perror("pipe"); exit(2); }
  fflush(NULL);
  pid_t pid = fork();
  if (pid == 0) {
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    char c;
    if (read(go[0], &c, 1) != 1) _exit(3);
    ap_js_options o = {.initial_map_bytes = 1 << 20, .chunk_bytes = CHUNK};
    ap_js *cs;
    if (ap_js_open(dir, &o, &cs)) _exit(4);
    uint64_t *w = malloc(tu_words(bits[0]) * 8);
    int rc = 0;
    for (uint64_t g = 1; g <= 6 && !rc; g++) {
      tu_fill_mask(w, bits[0], JOB, g, 0);
      ap_js_mask_in m = {bits[0], w};
      Agentprune__V1__JobState st = AGENTPRUNE__V1__JOB_STATE__INIT;
      Agentprune__V1__Job j = tu_job(JOB, NULL, (uint32_t)g, &st);
      rc = ap_js_checkpoint_write(cs, &j, NULL, NULL, 0, &m, 1, NULL, NULL);
    }
    ap_js_stats_t st;
    ap_js_stats(cs, &st);
    char r = !rc && st.grow_count > 0 ? 'D' : 'E';
    if (write(done[1], &r, 1) != 1) _exit(3);
    _exit(0);
  }
  ap_js_options o = {.initial_map_bytes = 1 << 20, .chunk_bytes = CHUNK};
  ap_js *s = NULL;
  CHECK_EQ_INT(ap_js_open(dir, &o, &s), 0);
  if (!s) return;
  Agentprune__V1__Job j = tu_job(JOB, NULL, 0, NULL);
  CHECK_EQ_INT(ap_js_job_put(s, &j, NULL, NULL), 0);
  char c = 'g';
  CHECK(write(go[1], &c, 1) == 1);
  CHECK(read(done[0], &c, 1) == 1 && c == 'D');
  waitpid(pid, NULL, 0);
  ap_js_stats_t st0;
  CHECK_EQ_INT(ap_js_stats(s, &st0), 0);
  ap_js_mask_out m = {bits[0], malloc(tu_words(bits[0]) * 8)};
  ap_js_ckpt *ck = NULL;
  CHECK_EQ_INT(ap_js_checkpoint_read(s, JOB, 0, &m, 1, &ck), 0);
  CHECK(ck && ck->ckpt_no == 6 && tu_mask_matches(m.words, bits[0], JOB, 6, 0));
  ap_js_ckpt_free(ck);
  ap_js_stats_t st;
  CHECK_EQ_INT(ap_js_stats(s, &st), 0);
  CHECKF(st0.map_bytes == (size_t)(1 << 20) && st.map_bytes > st0.map_bytes, "map %zu -> %zu", st0.map_bytes,
         st.map_bytes);
  /* And write on top of it. */
  ap_js_mask_in mi = {bits[0], m.words};
  uint64_t no;
  CHECK_EQ_INT(ap_js_checkpoint_write(s, &j, NULL, NULL, 0, &mi, 1, &no, NULL), 0);
  CHECK_EQ_INT(no, 7);
  free(m.words);
  ap_js_close(s);
  close(go[0]); close(go[1]); close(done[0]); close(done[1]);
  tu_rmstore(dir);
}

int main(void) {
  ap_log_init("test_job_store_crash", AP_LOG_ERROR, 0);
  test_stale_reader();
  test_other_process_growth();
  test_kill_loop();
  TEST_DONE();
}
