/*
 * store.c - LMDB store of agent sessions and reflection history (see store.h
 * for the key layout and the guarantees).
 */
#define _GNU_SOURCE /* pthread_rwlockattr_setkind_np: writer preference, so a map resize is not starved */
#include "store.h"

#include <errno.h>
#include <lmdb.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>

#include "log.h"

#define SID_LEN 32
#define HKEY_LEN (SID_LEN + 4)
#define MAX_JOB_ID 256
#define SCHEMA_VERSION "1"

/* Internal result of a write body: abort the txn but report success. */
#define STORE_NOWRITE (-100)

struct ap_store {
  MDB_env *env;
  MDB_dbi db_meta, db_sessions, db_jobs, db_history;
  /* Held shared by every transaction, exclusively by a map resize: LMDB
   * requires that no transaction of the process is open during
   * mdb_env_set_mapsize. */
  pthread_rwlock_t resize_lock;
  size_t map_bytes, max_map_bytes;
  unsigned map_growths;
  int stale_readers_cleared;
};

const char *ap_store_strerror(int rc) {
  switch (rc) {
    case AP_STORE_OK: return "OK";
    case AP_STORE_NOT_FOUND: return "NOT_FOUND";
    case AP_STORE_CONFLICT: return "CONFLICT";
    case AP_STORE_FULL: return "FULL";
    case AP_STORE_IO: return "IO";
    case AP_STORE_CORRUPT: return "CORRUPT";
    case AP_STORE_NOMEM: return "NOMEM";
    case AP_STORE_CLOSED: return "CLOSED";
    case AP_STORE_DUPLICATE: return "DUPLICATE";
    case AP_STORE_BAD_ARG: return "BAD_ARG";
    default: return "UNKNOWN";
  }
}

static int sid_valid(const char *sid) {
  if (!sid || strlen(sid) != SID_LEN) return 0;
  for (int i = 0; i < SID_LEN; i++) {
    char c = sid[i];
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return 0;
  }
  return 1;
}

static void history_key(const char *sid, uint32_t iteration, unsigned char key[HKEY_LEN]) {
  memcpy(key, sid, SID_LEN);
  key[SID_LEN + 0] = (unsigned char)(iteration >> 24);
  key[SID_LEN + 1] = (unsigned char)(iteration >> 16);
  key[SID_LEN + 2] = (unsigned char)(iteration >> 8);
  key[SID_LEN + 3] = (unsigned char)iteration;
}

/* Packs a message into a malloc'd buffer; NULL on allocation failure. */
static void *pack_alloc(const ProtobufCMessage *m, size_t *len) {
  size_t n = protobuf_c_message_get_packed_size(m);
  void *buf = malloc(n ? n : 1);
  if (!buf) return NULL;
  *len = protobuf_c_message_pack(m, buf);
  return buf;
}

/* ---- transactions --------------------------------------------------------- */

/* Doubles the map unless another thread already grew it past `seen`. */
static int store_grow(ap_store *st, size_t seen) {
  int rc = AP_STORE_OK;
  pthread_rwlock_wrlock(&st->resize_lock);
  if (st->map_bytes == seen) {
    if (seen >= st->max_map_bytes) {
      rc = AP_STORE_FULL;
    } else {
      size_t want = seen * 2 > st->max_map_bytes ? st->max_map_bytes : seen * 2;
      int mrc = mdb_env_set_mapsize(st->env, want);
      if (mrc) {
        AP_ERROR("store: growing the map to %zu bytes failed: %s", want, mdb_strerror(mrc));
        rc = AP_STORE_IO;
      } else {
        AP_INFO("store: map grown from %zu to %zu bytes", seen, want);
        st->map_bytes = want;
        st->map_growths++;
      }
    }
  }
  pthread_rwlock_unlock(&st->resize_lock);
  return rc;
}

/* Another process grew the map (MDB_MAP_RESIZED): adopt its size. */
static void store_adopt_map(ap_store *st) {
  MDB_envinfo info;
  pthread_rwlock_wrlock(&st->resize_lock);
  mdb_env_set_mapsize(st->env, 0);
  if (mdb_env_info(st->env, &info) == 0) st->map_bytes = info.me_mapsize;
  pthread_rwlock_unlock(&st->resize_lock);
}

static int map_mdb_rc(int rc, const char *what) {
  if (rc == MDB_NOTFOUND) return AP_STORE_NOT_FOUND;
  if (rc == ENOMEM) return AP_STORE_NOMEM;
  AP_ERROR("store: %s: %s", what, mdb_strerror(rc));
  return AP_STORE_IO;
}

typedef int (*txn_body)(ap_store *st, MDB_txn *txn, void *arg);

/*
 * Runs `body` in a write txn and commits when it returns 0. A body returns
 * AP_STORE_* codes (abort, returned as is), STORE_NOWRITE (abort, OK), or an
 * LMDB code (abort; MDB_MAP_FULL grows the map and reruns the body).
 */
static int store_write(ap_store *st, txn_body body, void *arg) {
  for (;;) {
    MDB_txn *txn = NULL;
    pthread_rwlock_rdlock(&st->resize_lock);
    size_t seen = st->map_bytes;
    int rc = mdb_txn_begin(st->env, NULL, 0, &txn);
    if (rc == 0) {
      rc = body(st, txn, arg);
      if (rc == 0) rc = mdb_txn_commit(txn); /* frees txn whatever the result */
      else mdb_txn_abort(txn);
    }
    pthread_rwlock_unlock(&st->resize_lock);
    if (rc == 0 || rc == STORE_NOWRITE) return AP_STORE_OK;
    if (rc <= AP_STORE_OK && rc >= AP_STORE_BAD_ARG) return rc;
    if (rc == MDB_MAP_FULL) {
      int grc = store_grow(st, seen);
      if (grc) return grc;
      continue;
    }
    if (rc == MDB_MAP_RESIZED) {
      store_adopt_map(st);
      continue;
    }
    return map_mdb_rc(rc, "write transaction");
  }
}

/* Runs `body` in a read-only txn (always aborted). Same codes as store_write. */
static int store_read(ap_store *st, txn_body body, void *arg) {
  for (;;) {
    MDB_txn *txn = NULL;
    pthread_rwlock_rdlock(&st->resize_lock);
    int rc = mdb_txn_begin(st->env, NULL, MDB_RDONLY, &txn);
    if (rc == 0) {
      rc = body(st, txn, arg);
      mdb_txn_abort(txn);
    }
    pthread_rwlock_unlock(&st->resize_lock);
    if (rc == 0 || rc == STORE_NOWRITE) return AP_STORE_OK;
    if (rc <= AP_STORE_OK && rc >= AP_STORE_BAD_ARG) return rc;
    if (rc == MDB_MAP_RESIZED) {
      store_adopt_map(st);
      continue;
    }
    return map_mdb_rc(rc, "read transaction");
  }
}

/* ---- record helpers (inside a txn) --------------------------------------- */

static int load_session(ap_store *st, MDB_txn *txn, const char *sid, Agentprune__V1__Session **out) {
  MDB_val k = {SID_LEN, (void *)sid}, v;
  int rc = mdb_get(txn, st->db_sessions, &k, &v);
  if (rc == MDB_NOTFOUND) return AP_STORE_NOT_FOUND;
  if (rc) return rc;
  *out = agentprune__v1__session__unpack(NULL, v.mv_size, v.mv_data);
  if (!*out) {
    AP_ERROR("store: session %s does not unpack", sid);
    return AP_STORE_CORRUPT;
  }
  return 0;
}

static int save_message(MDB_txn *txn, MDB_dbi dbi, const void *key, size_t klen, const ProtobufCMessage *m,
                        unsigned flags) {
  size_t len = 0;
  void *buf = pack_alloc(m, &len);
  if (!buf) return AP_STORE_NOMEM;
  MDB_val k = {klen, (void *)key}, v = {len, buf};
  int rc = mdb_put(txn, dbi, &k, &v, flags);
  free(buf);
  return rc;
}

static int load_entry(ap_store *st, MDB_txn *txn, const char *sid, uint32_t iteration,
                      Agentprune__V1__HistoryEntry **out) {
  unsigned char key[HKEY_LEN];
  history_key(sid, iteration, key);
  MDB_val k = {HKEY_LEN, key}, v;
  int rc = mdb_get(txn, st->db_history, &k, &v);
  if (rc == MDB_NOTFOUND) return AP_STORE_NOT_FOUND;
  if (rc) return rc;
  *out = agentprune__v1__history_entry__unpack(NULL, v.mv_size, v.mv_data);
  if (!*out) {
    AP_ERROR("store: history entry %s/%u does not unpack", sid, iteration);
    return AP_STORE_CORRUPT;
  }
  return 0;
}

/* ---- open / close ---------------------------------------------------------- */

static int open_dbis(ap_store *st, MDB_txn *txn, void *arg) {
  char *err = arg;
  int rc;
  if ((rc = mdb_dbi_open(txn, "meta", MDB_CREATE, &st->db_meta)) ||
      (rc = mdb_dbi_open(txn, "sessions", MDB_CREATE, &st->db_sessions)) ||
      (rc = mdb_dbi_open(txn, "jobs", MDB_CREATE, &st->db_jobs)) ||
      (rc = mdb_dbi_open(txn, "history", MDB_CREATE, &st->db_history)))
    return rc;
  MDB_val k = {6, "schema"}, v;
  rc = mdb_get(txn, st->db_meta, &k, &v);
  if (rc == MDB_NOTFOUND) {
    v.mv_size = strlen(SCHEMA_VERSION);
    v.mv_data = SCHEMA_VERSION;
    return mdb_put(txn, st->db_meta, &k, &v, 0);
  }
  if (rc) return rc;
  if (v.mv_size != strlen(SCHEMA_VERSION) || memcmp(v.mv_data, SCHEMA_VERSION, v.mv_size) != 0) {
    snprintf(err, 128, "store schema \"%.*s\" is not the supported \"%s\"", (int)(v.mv_size < 16 ? v.mv_size : 16),
             (const char *)v.mv_data, SCHEMA_VERSION);
    return AP_STORE_CORRUPT;
  }
  return 0;
}

int ap_store_open(const char *dir, const ap_store_opts *opts, ap_store **out, char *err, size_t errlen) {
  ap_store_opts o = {0};
  if (opts) o = *opts;
  if (!o.initial_map_bytes) o.initial_map_bytes = (size_t)64 << 20;
  if (!o.max_map_bytes) o.max_map_bytes = (size_t)64 << 30;
  if (!o.max_readers) o.max_readers = 512;
  if (o.initial_map_bytes > o.max_map_bytes) o.max_map_bytes = o.initial_map_bytes;
  *out = NULL;
  if (!dir || !*dir) {
    snprintf(err, errlen, "store: empty data directory");
    return AP_STORE_BAD_ARG;
  }
  if (mkdir(dir, 0755) != 0 && errno != EEXIST) {
    snprintf(err, errlen, "store: cannot create %s: %s", dir, strerror(errno));
    return AP_STORE_IO;
  }
  ap_store *st = calloc(1, sizeof *st);
  if (!st) {
    snprintf(err, errlen, "store: out of memory");
    return AP_STORE_NOMEM;
  }
  pthread_rwlockattr_t ra;
  pthread_rwlockattr_init(&ra);
  pthread_rwlockattr_setkind_np(&ra, PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
  pthread_rwlock_init(&st->resize_lock, &ra);
  pthread_rwlockattr_destroy(&ra);
  st->max_map_bytes = o.max_map_bytes;

  int rc = mdb_env_create(&st->env);
  if (rc) goto mdb_fail;
  if ((rc = mdb_env_set_maxdbs(st->env, 8)) || (rc = mdb_env_set_maxreaders(st->env, o.max_readers)) ||
      (rc = mdb_env_set_mapsize(st->env, o.initial_map_bytes)))
    goto mdb_fail;
  /* MDB_NOTLS: read txns are not tied to a thread's slot (handler pools). */
  if ((rc = mdb_env_open(st->env, dir, MDB_NOTLS, 0644))) goto mdb_fail;
  int dead = 0;
  if ((rc = mdb_reader_check(st->env, &dead))) goto mdb_fail;
  st->stale_readers_cleared = dead;
  if (dead) AP_WARN("store: cleared %d stale reader slot(s) left by dead processes", dead);
  MDB_envinfo info;
  mdb_env_info(st->env, &info);
  /* LMDB raises the map to the file's committed size when that is larger. */
  st->map_bytes = info.me_mapsize;
  if (st->map_bytes > st->max_map_bytes) st->max_map_bytes = st->map_bytes;

  char why[128] = "";
  rc = store_write(st, open_dbis, why);
  if (rc) {
    snprintf(err, errlen, "store: %s: %s", dir, why[0] ? why : ap_store_strerror(rc));
    ap_store_close(st);
    return rc;
  }
  *out = st;
  return AP_STORE_OK;

mdb_fail:
  snprintf(err, errlen, "store: %s: %s", dir, mdb_strerror(rc));
  ap_store_close(st);
  return AP_STORE_IO;
}

void ap_store_close(ap_store *st) {
  if (!st) return;
  if (st->env) mdb_env_close(st->env);
  pthread_rwlock_destroy(&st->resize_lock);
  free(st);
}

void ap_store_get_stats(ap_store *st, ap_store_stats *out) {
  pthread_rwlock_rdlock(&st->resize_lock);
  out->map_bytes = st->map_bytes;
  out->map_growths = st->map_growths;
  out->stale_readers_cleared = st->stale_readers_cleared;
  pthread_rwlock_unlock(&st->resize_lock);
}

/* ---- sessions ---------------------------------------------------------------- */

typedef struct {
  const Agentprune__V1__SessionSpec *spec;
  uint64_t now_ms;
  Agentprune__V1__Session *out;
  int created;
} open_arg;

static int open_session_body(ap_store *st, MDB_txn *txn, void *arg) {
  open_arg *a = arg;
  const char *job = a->spec->job_id;
  a->created = 0;
  if (a->out) { /* left by a run that ended in MDB_MAP_FULL */
    protobuf_c_message_free_unpacked(&a->out->base, NULL);
    a->out = NULL;
  }
  MDB_val jk = {strlen(job), (void *)job}, jv;
  int rc = mdb_get(txn, st->db_jobs, &jk, &jv);
  if (rc == 0) {
    char sid[SID_LEN + 1];
    if (jv.mv_size != SID_LEN) return AP_STORE_CORRUPT;
    memcpy(sid, jv.mv_data, SID_LEN);
    sid[SID_LEN] = 0;
    rc = load_session(st, txn, sid, &a->out);
    if (rc == AP_STORE_NOT_FOUND) {
      AP_ERROR("store: job %s points at missing session %s", job, sid);
      return AP_STORE_CORRUPT;
    }
    return rc ? rc : STORE_NOWRITE;
  }
  if (rc != MDB_NOTFOUND) return rc;

  unsigned char raw[16];
  if (getrandom(raw, sizeof raw, 0) != (ssize_t)sizeof raw) {
    AP_ERROR("store: getrandom: %s", strerror(errno));
    return AP_STORE_IO;
  }
  char sid[SID_LEN + 1];
  for (int i = 0; i < 16; i++) snprintf(sid + 2 * i, 3, "%02x", raw[i]);

  Agentprune__V1__Session s = AGENTPRUNE__V1__SESSION__INIT;
  s.session_id = sid;
  s.job_id = (char *)job;
  s.policy = (char *)(a->spec->policy && a->spec->policy[0] ? a->spec->policy : "rule");
  s.constraints = a->spec->constraints;
  s.created_unix_ms = a->now_ms;
  s.closed = 0;
  s.next_iteration = 1;
  size_t len = 0;
  void *buf = pack_alloc(&s.base, &len);
  if (!buf) return AP_STORE_NOMEM;
  MDB_val sk = {SID_LEN, sid}, sv = {len, buf};
  rc = mdb_put(txn, st->db_sessions, &sk, &sv, MDB_NOOVERWRITE);
  if (rc == 0) {
    MDB_val jv2 = {SID_LEN, sid};
    rc = mdb_put(txn, st->db_jobs, &jk, &jv2, MDB_NOOVERWRITE);
  }
  if (rc == 0) {
    a->out = agentprune__v1__session__unpack(NULL, len, buf);
    if (!a->out) rc = AP_STORE_NOMEM;
  }
  free(buf);
  if (rc == MDB_KEYEXIST) return AP_STORE_CONFLICT; /* 128 random bits collided: astronomically unlikely */
  if (rc == 0) a->created = 1;
  return rc;
}

int ap_store_open_session(ap_store *st, const Agentprune__V1__SessionSpec *spec, uint64_t now_ms,
                          Agentprune__V1__Session **out, int *created) {
  *out = NULL;
  if (created) *created = 0;
  if (!spec || !spec->job_id || !spec->job_id[0] || strlen(spec->job_id) > MAX_JOB_ID) return AP_STORE_BAD_ARG;
  open_arg a = {spec, now_ms, NULL, 0};
  int rc = store_write(st, open_session_body, &a);
  if (rc) {
    /* A body that loaded the session and then failed later leaves it behind. */
    if (a.out) protobuf_c_message_free_unpacked(&a.out->base, NULL);
    return rc;
  }
  *out = a.out;
  if (created) *created = a.created;
  return AP_STORE_OK;
}

typedef struct {
  const char *sid;
  uint32_t iteration;
  Agentprune__V1__Session *session;
  Agentprune__V1__HistoryEntry *entry;
  Agentprune__V1__History *history;
  const Agentprune__V1__HistoryEntry *in_entry;
  const Agentprune__V1__Outcome *in_outcome;
} sess_arg;

static int get_session_body(ap_store *st, MDB_txn *txn, void *arg) {
  sess_arg *a = arg;
  return load_session(st, txn, a->sid, &a->session);
}

int ap_store_get_session(ap_store *st, const char *session_id, Agentprune__V1__Session **out) {
  *out = NULL;
  if (!sid_valid(session_id)) return AP_STORE_BAD_ARG;
  sess_arg a = {.sid = session_id};
  int rc = store_read(st, get_session_body, &a);
  if (rc == AP_STORE_OK) *out = a.session;
  return rc;
}

static int get_entry_body(ap_store *st, MDB_txn *txn, void *arg) {
  sess_arg *a = arg;
  return load_entry(st, txn, a->sid, a->iteration, &a->entry);
}

int ap_store_get_entry(ap_store *st, const char *session_id, uint32_t iteration,
                       Agentprune__V1__HistoryEntry **out) {
  *out = NULL;
  if (!sid_valid(session_id)) return AP_STORE_BAD_ARG;
  sess_arg a = {.sid = session_id, .iteration = iteration};
  int rc = store_read(st, get_entry_body, &a);
  if (rc == AP_STORE_OK) *out = a.entry;
  return rc;
}

static void usage_add(Agentprune__V1__Usage *sum, const Agentprune__V1__Usage *u) {
  if (!u) return;
  sum->requests += u->requests;
  sum->retries += u->retries;
  sum->prompt_tokens += u->prompt_tokens;
  sum->completion_tokens += u->completion_tokens;
  sum->latency_ms += u->latency_ms;
  sum->fallbacks += u->fallbacks;
}

static int get_history_body(ap_store *st, MDB_txn *txn, void *arg) {
  sess_arg *a = arg;
  Agentprune__V1__History *h = calloc(1, sizeof *h);
  if (!h) return AP_STORE_NOMEM;
  agentprune__v1__history__init(h);
  /* From here on h owns everything attached, so one free_unpacked releases it all. */
  a->history = h;
  h->usage = calloc(1, sizeof *h->usage);
  if (!h->usage) return AP_STORE_NOMEM;
  agentprune__v1__usage__init(h->usage);
  int rc = load_session(st, txn, a->sid, &h->session);
  if (rc) return rc;

  MDB_cursor *cur = NULL;
  if ((rc = mdb_cursor_open(txn, st->db_history, &cur))) return rc;
  unsigned char key[HKEY_LEN];
  history_key(a->sid, 0, key);
  MDB_val k = {HKEY_LEN, key}, v;
  size_t cap = 0;
  for (rc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE); rc == 0; rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
    if (k.mv_size != HKEY_LEN || memcmp(k.mv_data, a->sid, SID_LEN) != 0) break;
    if (h->n_entries == cap) {
      size_t ncap = cap ? cap * 2 : 16;
      void *p = realloc(h->entries, ncap * sizeof *h->entries);
      if (!p) {
        rc = AP_STORE_NOMEM;
        break;
      }
      h->entries = p;
      cap = ncap;
    }
    Agentprune__V1__HistoryEntry *e = agentprune__v1__history_entry__unpack(NULL, v.mv_size, v.mv_data);
    if (!e) {
      AP_ERROR("store: a history entry of %s does not unpack", a->sid);
      rc = AP_STORE_CORRUPT;
      break;
    }
    h->entries[h->n_entries++] = e;
    if (e->decision) usage_add(h->usage, e->decision->usage);
  }
  mdb_cursor_close(cur);
  return rc == MDB_NOTFOUND ? 0 : rc;
}

int ap_store_get_history(ap_store *st, const char *session_id, Agentprune__V1__History **out) {
  *out = NULL;
  if (!sid_valid(session_id)) return AP_STORE_BAD_ARG;
  sess_arg a = {.sid = session_id};
  int rc = store_read(st, get_history_body, &a);
  if (rc) {
    if (a.history) protobuf_c_message_free_unpacked(&a.history->base, NULL);
    return rc;
  }
  *out = a.history;
  return AP_STORE_OK;
}

static int put_decision_body(ap_store *st, MDB_txn *txn, void *arg) {
  sess_arg *a = arg;
  Agentprune__V1__Session *s = NULL;
  int rc = load_session(st, txn, a->sid, &s);
  if (rc) return rc;
  uint32_t it = a->in_entry->iteration;
  if (s->closed) rc = AP_STORE_CLOSED;
  else if (it != s->next_iteration) rc = AP_STORE_CONFLICT;
  protobuf_c_message_free_unpacked(&s->base, NULL);
  if (rc) return rc;
  unsigned char key[HKEY_LEN];
  history_key(a->sid, it, key);
  rc = save_message(txn, st->db_history, key, HKEY_LEN, &a->in_entry->base, MDB_NOOVERWRITE);
  return rc == MDB_KEYEXIST ? AP_STORE_CONFLICT : rc;
}

int ap_store_put_decision(ap_store *st, const char *session_id, const Agentprune__V1__HistoryEntry *entry) {
  if (!sid_valid(session_id) || !entry || entry->iteration == 0 || !entry->decision || entry->outcome)
    return AP_STORE_BAD_ARG;
  sess_arg a = {.sid = session_id, .in_entry = entry};
  return store_write(st, put_decision_body, &a);
}

static int same_message(const ProtobufCMessage *x, const ProtobufCMessage *y) {
  size_t lx = 0, ly = 0;
  void *bx = pack_alloc(x, &lx), *by = pack_alloc(y, &ly);
  int same = bx && by && lx == ly && memcmp(bx, by, lx) == 0;
  int oom = !bx || !by;
  free(bx);
  free(by);
  return oom ? -1 : same;
}

static int put_outcome_body(ap_store *st, MDB_txn *txn, void *arg) {
  sess_arg *a = arg;
  Agentprune__V1__Session *s = NULL;
  Agentprune__V1__HistoryEntry *e = NULL;
  const Agentprune__V1__Outcome *o = a->in_outcome;
  int rc = load_session(st, txn, a->sid, &s);
  if (rc) return rc;
  if (s->closed) {
    rc = AP_STORE_CLOSED;
    goto done;
  }
  rc = load_entry(st, txn, a->sid, o->iteration, &e);
  if (rc == AP_STORE_NOT_FOUND) rc = AP_STORE_CONFLICT;
  if (rc) goto done;
  if (e->outcome) {
    int same = same_message(&e->outcome->base, &o->base);
    rc = same < 0 ? AP_STORE_NOMEM : same ? AP_STORE_DUPLICATE : AP_STORE_CONFLICT;
    goto done;
  }
  /* Borrow the caller's outcome for packing; detach it before freeing e. */
  e->outcome = (Agentprune__V1__Outcome *)o;
  unsigned char key[HKEY_LEN];
  history_key(a->sid, o->iteration, key);
  rc = save_message(txn, st->db_history, key, HKEY_LEN, &e->base, 0);
  e->outcome = NULL;
  if (rc) goto done;
  if (o->iteration + 1 > s->next_iteration) {
    s->next_iteration = o->iteration + 1;
    rc = save_message(txn, st->db_sessions, a->sid, SID_LEN, &s->base, 0);
  }
done:
  if (e) protobuf_c_message_free_unpacked(&e->base, NULL);
  protobuf_c_message_free_unpacked(&s->base, NULL);
  return rc;
}

int ap_store_put_outcome(ap_store *st, const char *session_id, const Agentprune__V1__Outcome *outcome) {
  if (!sid_valid(session_id) || !outcome || outcome->iteration == 0 || outcome->iteration == UINT32_MAX)
    return AP_STORE_BAD_ARG;
  sess_arg a = {.sid = session_id, .in_outcome = outcome};
  return store_write(st, put_outcome_body, &a);
}

static int close_session_body(ap_store *st, MDB_txn *txn, void *arg) {
  sess_arg *a = arg;
  if (a->session) { /* left by a run that ended in MDB_MAP_FULL */
    protobuf_c_message_free_unpacked(&a->session->base, NULL);
    a->session = NULL;
  }
  int rc = load_session(st, txn, a->sid, &a->session);
  if (rc) return rc;
  if (a->session->closed) return STORE_NOWRITE;
  a->session->closed = 1;
  return save_message(txn, st->db_sessions, a->sid, SID_LEN, &a->session->base, 0);
}

int ap_store_close_session(ap_store *st, const char *session_id, Agentprune__V1__Session **out) {
  if (out) *out = NULL;
  if (!sid_valid(session_id)) return AP_STORE_BAD_ARG;
  sess_arg a = {.sid = session_id};
  int rc = store_write(st, close_session_body, &a);
  if (rc == AP_STORE_OK && out) *out = a.session;
  else if (a.session) protobuf_c_message_free_unpacked(&a.session->base, NULL);
  return rc;
}

typedef struct {
  int (*fn)(const char *, void *);
  void *user;
} each_arg;

static int foreach_body(ap_store *st, MDB_txn *txn, void *arg) {
  each_arg *a = arg;
  MDB_cursor *cur = NULL;
  int rc = mdb_cursor_open(txn, st->db_sessions, &cur);
  if (rc) return rc;
  MDB_val k, v;
  char sid[SID_LEN + 1];
  for (rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST); rc == 0; rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
    if (k.mv_size != SID_LEN) continue;
    memcpy(sid, k.mv_data, SID_LEN);
    sid[SID_LEN] = 0;
    if (a->fn(sid, a->user)) break;
  }
  mdb_cursor_close(cur);
  return rc == MDB_NOTFOUND ? 0 : rc;
}

int ap_store_foreach_session(ap_store *st, int (*fn)(const char *session_id, void *user), void *user) {
  each_arg a = {fn, user};
  return store_read(st, foreach_body, &a);
}
