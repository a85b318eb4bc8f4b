/*
 * job_store.c - LMDB-backed job, event and checkpoint store (see job_store.h
 * for the key layout and contracts, docs/checkpoints.md for the reasoning).
 *
 * Concurrency model. LMDB allows one write transaction at a time and readers
 * that never block; what it does not allow is mdb_env_set_mapsize while any
 * transaction of this process is open. So:
 *   - write_mu serialises our writers (LMDB would too, but we must know that
 *     no writer is mid-transaction when we grow the map);
 *   - a "gate" (gate_mu, gate_cv, active, resizing) counts open transactions,
 *     read or write. Growing the map closes the gate (new transactions wait),
 *     waits for active == 0, resizes, reopens it.
 * No function keeps a transaction open after it returns, so a thread never
 * waits on the gate while holding a transaction itself.
 */
#include "job_store.h"

#include <errno.h>
#include <lmdb.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "log.h"

/* Layer bitmaps are stored as little-endian words and copied with memcpy. */
_Static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "job_store stores bitmaps as little-endian words");

#define DEFAULT_MAP_BYTES ((size_t)64 << 20)
#define DEFAULT_MAX_MAP_BYTES ((size_t)1 << 40)
#define MANIFEST_MAGIC 0x4B435041u
#define MANIFEST_VERSION 1
#define MANIFEST_HEADER 32
#define MANIFEST_PART 16
#define KEY_MAX (AP_JS_ID_MAX + 1 + 8 + 1 + 4 + 1 + 4)
/* Internal only: a write ran out of map; run_write grows and retries. */
#define E_MAPFULL (-1000)

struct ap_js {
  MDB_env *env;
  MDB_dbi db_jobs, db_reqids, db_events, db_manifest, db_chunk;
  size_t max_map_bytes;
  uint32_t chunk_bytes;
  void (*test_hook)(void *, uint64_t, uint32_t, uint32_t);
  void *test_hook_arg;

  pthread_mutex_t write_mu;
  pthread_mutex_t gate_mu;
  pthread_cond_t gate_cv;
  unsigned active;
  int resizing;
  unsigned grow_count;
  int stale_cleared;

  pthread_mutex_t ev_mu;
  pthread_cond_t ev_cv;
  uint64_t ev_gen;
};

/* ---- small helpers --------------------------------------------------------- */

const char *ap_js_strerror(int code) {
  switch (code) {
  case AP_JS_OK: return "ok";
  case AP_JS_E_INVAL: return "invalid argument";
  case AP_JS_E_NOTFOUND: return "not found";
  case AP_JS_E_EXISTS: return "already exists";
  case AP_JS_E_FULL: return "store full (map size limit or disk full)";
  case AP_JS_E_CORRUPT: return "stored data corrupt (CRC mismatch or malformed record)";
  case AP_JS_E_IO: return "storage I/O error";
  case AP_JS_E_NOMEM: return "out of memory";
  case AP_JS_E_SHAPE: return "checkpoint layer shapes differ from the caller's";
  case AP_JS_E_TIMEOUT: return "timed out";
  default: return "unknown error";
  }
}

static uint32_t crc_table[8][256];
static pthread_once_t crc_once = PTHREAD_ONCE_INIT;

static void crc_init(void) {
  for (uint32_t i = 0; i < 256; i++) {
    uint32_t c = i;
    for (int k = 0; k < 8; k++) c = (c & 1) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
    crc_table[0][i] = c;
  }
  for (uint32_t i = 0; i < 256; i++)
    for (int t = 1; t < 8; t++) crc_table[t][i] = (crc_table[t - 1][i] >> 8) ^ crc_table[0][crc_table[t - 1][i] & 0xFF];
}

/* Slicing-by-8: a checkpoint of a 7B model is ~875 MB of bitmap, so the
 * byte-at-a-time loop (~0.4 GB/s) would dominate the checkpoint time. */
uint32_t ap_js_crc32(uint32_t crc, const void *data, size_t len) {
  pthread_once(&crc_once, crc_init);
  const uint8_t *p = data;
  crc = ~crc;
  while (len >= 8) {
    uint32_t lo, hi;
    memcpy(&lo, p, 4);
    memcpy(&hi, p + 4, 4);
    lo ^= crc;
    crc = crc_table[7][lo & 0xFF] ^ crc_table[6][(lo >> 8) & 0xFF] ^ crc_table[5][(lo >> 16) & 0xFF] ^
          crc_table[4][lo >> 24] ^ crc_table[3][hi & 0xFF] ^ crc_table[2][(hi >> 8) & 0xFF] ^
          crc_table[1][(hi >> 16) & 0xFF] ^ crc_table[0][hi >> 24];
    p += 8;
    len -= 8;
  }
  while (len--) crc = crc_table[0][(crc ^ *p++) & 0xFF] ^ (crc >> 8);
  return ~crc;
}

static void put_be32(uint8_t *p, uint32_t v) {
  p[0] = (uint8_t)(v >> 24); p[1] = (uint8_t)(v >> 16); p[2] = (uint8_t)(v >> 8); p[3] = (uint8_t)v;
}
static void put_be64(uint8_t *p, uint64_t v) {
  put_be32(p, (uint32_t)(v >> 32));
  put_be32(p + 4, (uint32_t)v);
}
static uint64_t get_be64(const uint8_t *p) {
  uint64_t v = 0;
  for (int i = 0; i < 8; i++) v = (v << 8) | p[i];
  return v;
}
static void put_le16(uint8_t *p, uint16_t v) { p[0] = (uint8_t)v; p[1] = (uint8_t)(v >> 8); }
static void put_le32(uint8_t *p, uint32_t v) { for (int i = 0; i < 4; i++) p[i] = (uint8_t)(v >> (8 * i)); }
static void put_le64(uint8_t *p, uint64_t v) { for (int i = 0; i < 8; i++) p[i] = (uint8_t)(v >> (8 * i)); }
static uint16_t get_le16(const uint8_t *p) { return (uint16_t)(p[0] | (p[1] << 8)); }
static uint32_t get_le32(const uint8_t *p) {
  return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}
static uint64_t get_le64(const uint8_t *p) { return (uint64_t)get_le32(p) | ((uint64_t)get_le32(p + 4) << 32); }

static uint64_t now_unix_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* Ids become key prefixes followed by "/", so they must not contain "/". */
static size_t valid_id(const char *id) {
  if (!id) return 0;
  size_t n = 0;
  for (; id[n]; n++) {
    char c = id[n];
    int ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' || c == '_' ||
             c == '-';
    if (!ok || n >= AP_JS_ID_MAX) return 0;
  }
  return n;
}

/* Maps an LMDB/errno code to ours; MDB_MAP_FULL stays internal so that
 * run_write can grow the map. */
static int lm(int rc, const char *what) {
  switch (rc) {
  case MDB_SUCCESS: return 0;
  case MDB_MAP_FULL: return E_MAPFULL;
  case MDB_NOTFOUND: return AP_JS_E_NOTFOUND;
  case ENOMEM: return AP_JS_E_NOMEM;
  case MDB_CORRUPTED:
  case MDB_PAGE_NOTFOUND:
  case MDB_INVALID:
  case MDB_VERSION_MISMATCH:
    AP_ERROR("job store: %s: %s", what, mdb_strerror(rc));
    return AP_JS_E_CORRUPT;
  case ENOSPC:
  case MDB_TXN_FULL:
    AP_ERROR("job store: %s: %s", what, mdb_strerror(rc));
    return AP_JS_E_FULL;
  default:
    AP_ERROR("job store: %s: %s", what, mdb_strerror(rc));
    return AP_JS_E_IO;
  }
}

static size_t key_seq(uint8_t *k, const char *id, size_t idlen, uint64_t n) {
  memcpy(k, id, idlen);
  k[idlen] = '/';
  put_be64(k + idlen + 1, n);
  return idlen + 9;
}

static size_t key_chunk(uint8_t *k, const char *id, size_t idlen, uint64_t ckpt_no, uint32_t part, uint32_t chunk) {
  size_t n = key_seq(k, id, idlen, ckpt_no);
  k[n] = '/';
  put_be32(k + n + 1, part);
  k[n + 5] = '/';
  put_be32(k + n + 6, chunk);
  return n + 10;
}

/* ---- the gate: transactions vs. map resizing --------------------------------- */

static void gate_enter(ap_js *s) {
  pthread_mutex_lock(&s->gate_mu);
  while (s->resizing) pthread_cond_wait(&s->gate_cv, &s->gate_mu);
  s->active++;
  pthread_mutex_unlock(&s->gate_mu);
}

static void gate_leave(ap_js *s) {
  pthread_mutex_lock(&s->gate_mu);
  if (--s->active == 0) pthread_cond_broadcast(&s->gate_cv);
  pthread_mutex_unlock(&s->gate_mu);
}

/* Grows the map (or adopts another process's growth when adopt_only). Caller
 * holds no transaction. `hint` = bytes the failed write wanted to add. */
static int resize_map(ap_js *s, size_t hint, int adopt_only) {
  int ret = 0;
  pthread_mutex_lock(&s->gate_mu);
  while (s->resizing) pthread_cond_wait(&s->gate_cv, &s->gate_mu);
  s->resizing = 1;
  while (s->active > 0) pthread_cond_wait(&s->gate_cv, &s->gate_mu);

  if (adopt_only) {
    int rc = mdb_env_set_mapsize(s->env, 0);
    if (rc) ret = lm(rc, "adopt map size");
    goto done;
  }
  /* Dead readers of other processes pin old pages; free them before growing. */
  int dead = 0;
  mdb_reader_check(s->env, &dead);
  MDB_envinfo info;
  MDB_stat st;
  if (mdb_env_info(s->env, &info) || mdb_env_stat(s->env, &st)) {
    ret = AP_JS_E_IO;
    goto done;
  }
  size_t cur = info.me_mapsize;
  if (cur >= s->max_map_bytes) {
    AP_ERROR("job store: map full at %zu bytes, the configured maximum", cur);
    ret = AP_JS_E_FULL;
    goto done;
  }
  size_t used = ((size_t)info.me_last_pgno + 1) * st.ms_psize;
  size_t target = cur * 2;
  /* Copy-on-write keeps the previous snapshot alive while a transaction
   * writes its new pages, and freed pages recycle only a commit later, so a
   * write of `hint` bytes can need about 3x that in free pages. */
  if (hint / 3 < (SIZE_MAX - used) / 9 && used + 3 * hint > target) target = used + 3 * hint;
  if (target > s->max_map_bytes) target = s->max_map_bytes;
  size_t os_page = (size_t)sysconf(_SC_PAGESIZE);
  target = (target + os_page - 1) / os_page * os_page;
  int rc = mdb_env_set_mapsize(s->env, target);
  if (rc) {
    ret = lm(rc, "grow map");
    goto done;
  }
  s->grow_count++;
  AP_INFO("job store: map grown from %zu to %zu bytes (%zu used)", cur, target, used);
done:
  s->resizing = 0;
  pthread_cond_broadcast(&s->gate_cv);
  pthread_mutex_unlock(&s->gate_mu);
  return ret;
}

static int read_begin(ap_js *s, MDB_txn **txn) {
  for (;;) {
    gate_enter(s);
    int rc = mdb_txn_begin(s->env, NULL, MDB_RDONLY, txn);
    if (rc == 0) return 0;
    gate_leave(s);
    if (rc != MDB_MAP_RESIZED) return lm(rc, "begin read txn");
    int r = resize_map(s, 0, 1);
    if (r) return r;
  }
}

static void read_end(ap_js *s, MDB_txn *txn) {
  mdb_txn_abort(txn);
  gate_leave(s);
}

typedef int (*write_fn)(ap_js *s, MDB_txn *txn, void *ctx);

/* Runs fn inside one write transaction and commits it; on MDB_MAP_FULL
 * (from a put or from the commit) aborts, grows the map and runs fn again,
 * until it fits or the map reached max_map_bytes. fn must therefore have no
 * effects outside the transaction other than overwriting its outputs. */
static int run_write(ap_js *s, size_t hint, write_fn fn, void *ctx) {
  int r;
  pthread_mutex_lock(&s->write_mu);
  for (;;) {
    MDB_txn *txn;
    gate_enter(s);
    int rc = mdb_txn_begin(s->env, NULL, 0, &txn);
    if (rc) {
      gate_leave(s);
      if (rc == MDB_MAP_RESIZED) {
        r = resize_map(s, 0, 1);
        if (r) break;
        continue;
      }
      r = lm(rc, "begin write txn");
      if (r != E_MAPFULL) break;
    } else {
      r = fn(s, txn, ctx);
      if (r == 0) r = lm(mdb_txn_commit(txn), "commit");
      else mdb_txn_abort(txn);
      gate_leave(s);
    }
    if (r != E_MAPFULL) break;
    r = resize_map(s, hint, 0);
    if (r) break;
  }
  pthread_mutex_unlock(&s->write_mu);
  return r;
}

/* Positions c on the last key that starts with prefix (plen bytes) followed
 * by exactly `suffix` more bytes. Returns AP_JS_E_NOTFOUND when there is none. */
static int seek_last(MDB_cursor *c, const uint8_t *prefix, size_t plen, size_t suffix, MDB_val *k, MDB_val *v) {
  uint8_t probe[KEY_MAX + 16];
  memcpy(probe, prefix, plen);
  memset(probe + plen, 0xFF, suffix + 1); /* greater than any key of that shape */
  MDB_val pk = {plen + suffix + 1, probe};
  *k = pk;
  int rc = mdb_cursor_get(c, k, v, MDB_SET_RANGE);
  if (rc == 0) rc = mdb_cursor_get(c, k, v, MDB_PREV);
  else if (rc == MDB_NOTFOUND) rc = mdb_cursor_get(c, k, v, MDB_LAST);
  if (rc == MDB_NOTFOUND) return AP_JS_E_NOTFOUND;
  if (rc) return lm(rc, "cursor");
  if (k->mv_size != plen + suffix || memcmp(k->mv_data, prefix, plen) != 0) return AP_JS_E_NOTFOUND;
  return 0;
}

/* The highest be64 number under "<id>/" in db (0 when none). */
static int last_number(MDB_txn *txn, MDB_dbi db, const char *id, size_t idlen, uint64_t *out) {
  MDB_cursor *c;
  int rc = mdb_cursor_open(txn, db, &c);
  if (rc) return lm(rc, "cursor open");
  uint8_t prefix[AP_JS_ID_MAX + 1];
  memcpy(prefix, id, idlen);
  prefix[idlen] = '/';
  MDB_val k, v;
  int r = seek_last(c, prefix, idlen + 1, 8, &k, &v);
  *out = 0;
  if (r == 0) *out = get_be64((const uint8_t *)k.mv_data + idlen + 1);
  else if (r == AP_JS_E_NOTFOUND) r = 0;
  mdb_cursor_close(c);
  return r;
}

/* Deletes every key of db that starts with prefix. */
static int delete_prefix(MDB_txn *txn, MDB_dbi db, const uint8_t *prefix, size_t plen) {
  MDB_cursor *c;
  int rc = mdb_cursor_open(txn, db, &c);
  if (rc) return lm(rc, "cursor open");
  int r = 0;
  for (;;) {
    /* Re-seek after each delete rather than rely on post-delete cursor state. */
    MDB_val k = {plen, (void *)prefix}, v;
    rc = mdb_cursor_get(c, &k, &v, MDB_SET_RANGE);
    if (rc == MDB_NOTFOUND) break;
    if (rc) { r = lm(rc, "cursor"); break; }
    if (k.mv_size < plen || memcmp(k.mv_data, prefix, plen) != 0) break;
    rc = mdb_cursor_del(c, 0);
    if (rc) { r = lm(rc, "delete"); break; }
  }
  mdb_cursor_close(c);
  return r;
}

static int pack_message(const ProtobufCMessage *m, uint8_t **buf, size_t *len) {
  *len = protobuf_c_message_get_packed_size(m);
  *buf = malloc(*len ? *len : 1);
  if (!*buf) return AP_JS_E_NOMEM;
  protobuf_c_message_pack(m, *buf);
  return 0;
}

static const char *request_id_of(const Agentprune__V1__Job *job) {
  if (!job->spec || !job->spec->client_request_id || !job->spec->client_request_id[0]) return NULL;
  return job->spec->client_request_id;
}

/* Stores the job record and indexes its request id. */
static int put_job_record(ap_js *s, MDB_txn *txn, const Agentprune__V1__Job *job, const uint8_t *packed,
                          size_t len) {
  size_t idlen = strlen(job->id);
  const char *req = request_id_of(job);
  if (req) {
    MDB_val rk = {strlen(req), (void *)req}, rv;
    int rc = mdb_get(txn, s->db_reqids, &rk, &rv);
    if (rc == 0) {
      if (rv.mv_size != idlen || memcmp(rv.mv_data, job->id, idlen) != 0) return AP_JS_E_EXISTS;
    } else if (rc == MDB_NOTFOUND) {
      MDB_val iv = {idlen, job->id};
      rc = mdb_put(txn, s->db_reqids, &rk, &iv, 0);
      if (rc) return lm(rc, "put request id");
    } else {
      return lm(rc, "get request id");
    }
  }
  MDB_val k = {idlen, job->id}, v = {len, (void *)packed};
  return lm(mdb_put(txn, s->db_jobs, &k, &v, 0), "put job");
}

static int get_job_in_txn(ap_js *s, MDB_txn *txn, const char *id, size_t idlen, Agentprune__V1__Job **out) {
  MDB_val k = {idlen, (void *)id}, v;
  int rc = mdb_get(txn, s->db_jobs, &k, &v);
  if (rc) return lm(rc, "get job");
  *out = agentprune__v1__job__unpack(NULL, v.mv_size, v.mv_data);
  if (!*out) {
    AP_ERROR("job store: job record %.*s does not unpack", (int)idlen, id);
    return AP_JS_E_CORRUPT;
  }
  /* Events appended without a job update move the last seq on. */
  int r = last_number(txn, s->db_events, id, idlen, &(*out)->last_event_seq);
  if (r) {
    agentprune__v1__job__free_unpacked(*out, NULL);
    *out = NULL;
  }
  return r;
}

static int job_exists(ap_js *s, MDB_txn *txn, const char *id, size_t idlen) {
  MDB_val k = {idlen, (void *)id}, v;
  int rc = mdb_get(txn, s->db_jobs, &k, &v);
  return rc == MDB_NOTFOUND ? AP_JS_E_NOTFOUND : lm(rc, "get job");
}

/* Stores `job` with last_event_seq set from the events db (the store assigns
 * seqs, so the caller's value may be stale). When packed_out is not NULL it
 * receives the packed bytes (caller frees). */
static int store_job(ap_js *s, MDB_txn *txn, const Agentprune__V1__Job *job, uint8_t **packed_out, size_t *len_out) {
  Agentprune__V1__Job copy = *job;
  int r = last_number(txn, s->db_events, job->id, strlen(job->id), &copy.last_event_seq);
  if (r) return r;
  uint8_t *buf;
  size_t len;
  if ((r = pack_message(&copy.base, &buf, &len))) return r;
  r = put_job_record(s, txn, job, buf, len);
  if (r || !packed_out) {
    free(buf);
    return r;
  }
  *packed_out = buf;
  *len_out = len;
  return 0;
}

static void notify_events(ap_js *s) {
  pthread_mutex_lock(&s->ev_mu);
  s->ev_gen++;
  pthread_cond_broadcast(&s->ev_cv);
  pthread_mutex_unlock(&s->ev_mu);
}

/* ---- open / close ------------------------------------------------------------ */

static int open_dbs(ap_js *s, MDB_txn *txn, void *ctx) {
  (void)ctx;
  struct { const char *name; MDB_dbi *dbi; } dbs[] = {
      {"jobs", &s->db_jobs},           {"request_ids", &s->db_reqids},  {"events", &s->db_events},
      {"ckpt_manifest", &s->db_manifest}, {"ckpt_chunk", &s->db_chunk},
  };
  for (size_t i = 0; i < sizeof dbs / sizeof dbs[0]; i++) {
    int rc = mdb_dbi_open(txn, dbs[i].name, MDB_CREATE, dbs[i].dbi);
    if (rc) return lm(rc, dbs[i].name);
  }
  return 0;
}

int ap_js_open(const char *dir, const ap_js_options *opt, ap_js **out) {
  if (!dir || !*dir || !out) return AP_JS_E_INVAL;
  *out = NULL;
  ap_js_options o = {0};
  if (opt) o = *opt;
  if (!o.initial_map_bytes) o.initial_map_bytes = DEFAULT_MAP_BYTES;
  if (!o.max_map_bytes) o.max_map_bytes = DEFAULT_MAX_MAP_BYTES;
  if (!o.chunk_bytes) o.chunk_bytes = AP_JS_CHUNK_BYTES_MAX;
  if (!o.max_readers) o.max_readers = 126;
  /* Multiples of 8 keep each bitmap word inside one chunk. */
  if (o.chunk_bytes < 64 || o.chunk_bytes > AP_JS_CHUNK_BYTES_MAX || o.chunk_bytes % 8 ||
      o.max_map_bytes < o.initial_map_bytes) {
    AP_ERROR("job store: invalid options (chunk_bytes %u, map %zu..%zu)", o.chunk_bytes, o.initial_map_bytes,
             o.max_map_bytes);
    return AP_JS_E_INVAL;
  }
  if (mkdir(dir, 0755) != 0 && errno != EEXIST) {
    AP_ERROR("job store: cannot create %s: %s", dir, strerror(errno));
    return AP_JS_E_INVAL;
  }
  ap_js *s = calloc(1, sizeof *s);
  if (!s) return AP_JS_E_NOMEM;
  s->max_map_bytes = o.max_map_bytes;
  s->chunk_bytes = o.chunk_bytes;
  s->test_hook = o.test_hook;
  s->test_hook_arg = o.test_hook_arg;
  pthread_mutex_init(&s->write_mu, NULL);
  pthread_mutex_init(&s->gate_mu, NULL);
  pthread_cond_init(&s->gate_cv, NULL);
  pthread_mutex_init(&s->ev_mu, NULL);
  pthread_condattr_t ca;
  pthread_condattr_init(&ca);
  pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
  pthread_cond_init(&s->ev_cv, &ca);
  pthread_condattr_destroy(&ca);

  int r;
  int rc = mdb_env_create(&s->env);
  if (rc) { r = lm(rc, "env create"); s->env = NULL; goto fail; }
  if ((rc = mdb_env_set_maxdbs(s->env, 8)) || (rc = mdb_env_set_maxreaders(s->env, o.max_readers)) ||
      (rc = mdb_env_set_mapsize(s->env, o.initial_map_bytes))) {
    r = lm(rc, "env setup");
    goto fail;
  }
  /* MDB_NOTLS: read slots belong to transactions, not threads, so pooled gRPC
   * threads do not each pin a slot. Sync stays on (no NOSYNC/WRITEMAP). */
  rc = mdb_env_open(s->env, dir, MDB_NOTLS, 0644);
  if (rc) {
    AP_ERROR("job store: cannot open LMDB environment in %s: %s", dir, mdb_strerror(rc));
    r = (rc == MDB_INVALID || rc == MDB_VERSION_MISMATCH) ? AP_JS_E_CORRUPT : rc == ENOMEM ? AP_JS_E_NOMEM : AP_JS_E_IO;
    goto fail;
  }
  rc = mdb_reader_check(s->env, &s->stale_cleared);
  if (rc) { r = lm(rc, "reader check"); goto fail; }
  if (s->stale_cleared) AP_WARN("job store: cleared %d reader slot(s) of dead processes", s->stale_cleared);
  r = run_write(s, 0, open_dbs, NULL);
  if (r) goto fail;
  *out = s;
  return 0;
fail:
  ap_js_close(s);
  return r == E_MAPFULL ? AP_JS_E_FULL : r;
}

void ap_js_close(ap_js *s) {
  if (!s) return;
  if (s->env) mdb_env_close(s->env);
  pthread_mutex_destroy(&s->write_mu);
  pthread_mutex_destroy(&s->gate_mu);
  pthread_cond_destroy(&s->gate_cv);
  pthread_mutex_destroy(&s->ev_mu);
  pthread_cond_destroy(&s->ev_cv);
  free(s);
}

static int count_reader(const char *msg, void *ctx) {
  /* mdb_reader_list prints a header line, then one line per held slot. */
  if (strncmp(msg, "    pid", 7) != 0 && strncmp(msg, "(no active", 10) != 0) (*(unsigned *)ctx)++;
  return 0;
}

int ap_js_stats(ap_js *s, ap_js_stats_t *st) {
  if (!s || !st) return AP_JS_E_INVAL;
  memset(st, 0, sizeof *st);
  MDB_envinfo info;
  MDB_stat ms;
  /* Under the gate so the map size cannot change underneath. */
  gate_enter(s);
  int rc = mdb_env_info(s->env, &info);
  if (!rc) rc = mdb_env_stat(s->env, &ms);
  unsigned readers = 0;
  if (!rc) rc = mdb_reader_list(s->env, count_reader, &readers);
  gate_leave(s);
  if (rc) return lm(rc, "stats");
  st->map_bytes = info.me_mapsize;
  st->page_bytes = ms.ms_psize;
  st->used_bytes = ((size_t)info.me_last_pgno + 1) * ms.ms_psize;
  pthread_mutex_lock(&s->gate_mu);
  st->grow_count = s->grow_count;
  pthread_mutex_unlock(&s->gate_mu);
  st->stale_readers_cleared = s->stale_cleared;
  st->reader_slots_used = readers;
  return 0;
}

/* ---- jobs --------------------------------------------------------------------- */

typedef struct {
  const Agentprune__V1__Job *job;
  const Agentprune__V1__JobEvent *ev;
  Agentprune__V1__Job *existing;
  uint64_t seq;
} job_ctx;

static int submit_fn(ap_js *s, MDB_txn *txn, void *ctx) {
  job_ctx *c = ctx;
  if (c->existing) {
    agentprune__v1__job__free_unpacked(c->existing, NULL);
    c->existing = NULL;
  }
  const char *req = request_id_of(c->job);
  if (req) {
    MDB_val rk = {strlen(req), (void *)req}, rv;
    int rc = mdb_get(txn, s->db_reqids, &rk, &rv);
    if (rc == 0) {
      char id[AP_JS_ID_MAX + 1];
      if (rv.mv_size == 0 || rv.mv_size > AP_JS_ID_MAX) return AP_JS_E_CORRUPT;
      memcpy(id, rv.mv_data, rv.mv_size);
      id[rv.mv_size] = 0;
      int r = get_job_in_txn(s, txn, id, rv.mv_size, &c->existing);
      /* An index entry without its job (deleted job) is no duplicate. */
      if (r != AP_JS_E_NOTFOUND) return r;
      rc = mdb_del(txn, s->db_reqids, &rk, NULL);
      if (rc) return lm(rc, "delete stale request id");
    } else if (rc != MDB_NOTFOUND) {
      return lm(rc, "get request id");
    }
  }
  int r = job_exists(s, txn, c->job->id, strlen(c->job->id));
  if (r == 0) return AP_JS_E_EXISTS;
  if (r != AP_JS_E_NOTFOUND) return r;
  return store_job(s, txn, c->job, NULL, NULL);
}

static int check_job(const Agentprune__V1__Job *job) {
  if (!job || !valid_id(job->id)) return AP_JS_E_INVAL;
  const char *req = request_id_of(job);
  if (req && strlen(req) > AP_JS_REQUEST_ID_MAX) return AP_JS_E_INVAL;
  return 0;
}

int ap_js_job_submit(ap_js *s, const Agentprune__V1__Job *job, Agentprune__V1__Job **existing) {
  if (!s || !existing) return AP_JS_E_INVAL;
  *existing = NULL;
  int r = check_job(job);
  if (r) return r;
  job_ctx c = {.job = job};
  r = run_write(s, protobuf_c_message_get_packed_size(&job->base) + 4096, submit_fn, &c);
  if (r) {
    if (c.existing) agentprune__v1__job__free_unpacked(c.existing, NULL);
    return r;
  }
  *existing = c.existing;
  return 0;
}

/* Appends an event (seq = last + 1) inside txn; c->seq receives the seq. */
static int append_event(ap_js *s, MDB_txn *txn, const Agentprune__V1__JobEvent *ev, uint64_t *seq_out) {
  size_t idlen = strlen(ev->job_id);
  uint64_t last;
  int r = last_number(txn, s->db_events, ev->job_id, idlen, &last);
  if (r) return r;
  Agentprune__V1__JobEvent copy = *ev;
  copy.seq = last + 1;
  uint8_t *buf;
  size_t len;
  r = pack_message(&copy.base, &buf, &len);
  if (r) return r;
  uint8_t key[KEY_MAX];
  MDB_val k = {key_seq(key, ev->job_id, idlen, copy.seq), key}, v = {len, buf};
  r = lm(mdb_put(txn, s->db_events, &k, &v, 0), "put event");
  free(buf);
  if (!r) *seq_out = copy.seq;
  return r;
}

static int put_fn(ap_js *s, MDB_txn *txn, void *ctx) {
  job_ctx *c = ctx;
  c->seq = 0;
  int r;
  if (c->ev && (r = append_event(s, txn, c->ev, &c->seq))) return r;
  return store_job(s, txn, c->job, NULL, NULL);
}

int ap_js_job_put(ap_js *s, const Agentprune__V1__Job *job, const Agentprune__V1__JobEvent *ev,
                  uint64_t *seq_out) {
  if (seq_out) *seq_out = 0;
  if (!s) return AP_JS_E_INVAL;
  int r = check_job(job);
  if (r) return r;
  if (ev && (!ev->job_id || strcmp(ev->job_id, job->id) != 0)) return AP_JS_E_INVAL;
  job_ctx c = {.job = job, .ev = ev};
  size_t hint = protobuf_c_message_get_packed_size(&job->base) + 4096;
  if (ev) hint += protobuf_c_message_get_packed_size(&ev->base);
  r = run_write(s, hint, put_fn, &c);
  if (r) return r;
  if (ev) notify_events(s);
  if (seq_out) *seq_out = c.seq;
  return 0;
}

int ap_js_job_get(ap_js *s, const char *job_id, Agentprune__V1__Job **out) {
  if (out) *out = NULL;
  size_t idlen = valid_id(job_id);
  if (!s || !out || !idlen) return AP_JS_E_INVAL;
  MDB_txn *txn;
  int r = read_begin(s, &txn);
  if (r) return r;
  r = get_job_in_txn(s, txn, job_id, idlen, out);
  read_end(s, txn);
  return r;
}

static int is_unfinished(const Agentprune__V1__Job *j) {
  return j->status == AGENTPRUNE__V1__JOB_STATUS__JOB_STATUS_QUEUED ||
         j->status == AGENTPRUNE__V1__JOB_STATUS__JOB_STATUS_RUNNING ||
         j->status == AGENTPRUNE__V1__JOB_STATUS__JOB_STATUS_UNSPECIFIED;
}

static int cmp_oldest_first(const void *a, const void *b) {
  const Agentprune__V1__Job *x = *(Agentprune__V1__Job *const *)a, *y = *(Agentprune__V1__Job *const *)b;
  if (x->created_unix_ms != y->created_unix_ms) return x->created_unix_ms < y->created_unix_ms ? -1 : 1;
  return strcmp(x->id, y->id);
}

static int cmp_newest_first(const void *a, const void *b) { return cmp_oldest_first(b, a); }

int ap_js_job_list(ap_js *s, uint32_t limit, int unfinished_only, Agentprune__V1__Job ***jobs_out,
                   size_t *n_out) {
  if (jobs_out) *jobs_out = NULL;
  if (n_out) *n_out = 0;
  if (!s || !jobs_out || !n_out) return AP_JS_E_INVAL;
  Agentprune__V1__Job **jobs = NULL;
  size_t n = 0, cap = 0;
  MDB_txn *txn;
  MDB_cursor *cur = NULL;
  int r = read_begin(s, &txn);
  if (r) return r;
  int rc = mdb_cursor_open(txn, s->db_jobs, &cur);
  if (rc) { r = lm(rc, "cursor open"); goto fail; }
  MDB_val k, v;
  for (rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST); rc == 0; rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
    Agentprune__V1__Job *j = agentprune__v1__job__unpack(NULL, v.mv_size, v.mv_data);
    if (!j) {
      AP_ERROR("job store: job record %.*s does not unpack", (int)k.mv_size, (const char *)k.mv_data);
      r = AP_JS_E_CORRUPT;
      goto fail;
    }
    if (unfinished_only && !is_unfinished(j)) {
      agentprune__v1__job__free_unpacked(j, NULL);
      continue;
    }
    r = last_number(txn, s->db_events, k.mv_data, k.mv_size, &j->last_event_seq);
    if (r) {
      agentprune__v1__job__free_unpacked(j, NULL);
      goto fail;
    }
    if (n == cap) {
      size_t nc = cap ? cap * 2 : 16;
      Agentprune__V1__Job **nj = realloc(jobs, nc * sizeof *nj);
      if (!nj) { agentprune__v1__job__free_unpacked(j, NULL); r = AP_JS_E_NOMEM; goto fail; }
      jobs = nj;
      cap = nc;
    }
    jobs[n++] = j;
  }
  if (rc != MDB_NOTFOUND) { r = lm(rc, "cursor"); goto fail; }
  mdb_cursor_close(cur);
  read_end(s, txn);
  if (n) qsort(jobs, n, sizeof *jobs, unfinished_only ? cmp_oldest_first : cmp_newest_first);
  if (limit && n > limit) {
    for (size_t i = limit; i < n; i++) agentprune__v1__job__free_unpacked(jobs[i], NULL);
    n = limit;
  }
  if (!n) { free(jobs); jobs = NULL; }
  *jobs_out = jobs;
  *n_out = n;
  return 0;
fail:
  if (cur) mdb_cursor_close(cur);
  read_end(s, txn);
  ap_js_jobs_free(jobs, n);
  return r;
}

void ap_js_jobs_free(Agentprune__V1__Job **jobs, size_t n) {
  if (!jobs) return;
  for (size_t i = 0; i < n; i++) agentprune__v1__job__free_unpacked(jobs[i], NULL);
  free(jobs);
}

static int delete_fn(ap_js *s, MDB_txn *txn, void *ctx) {
  const char *id = ctx;
  size_t idlen = strlen(id);
  Agentprune__V1__Job *job = NULL;
  int r = get_job_in_txn(s, txn, id, idlen, &job);
  /* A record that no longer unpacks can still be deleted. */
  if (r && r != AP_JS_E_CORRUPT) return r;
  const char *req = job ? request_id_of(job) : NULL;
  int rc = 0;
  if (req) {
    MDB_val rk = {strlen(req), (void *)req}, rv;
    rc = mdb_get(txn, s->db_reqids, &rk, &rv);
    if (rc == 0 && rv.mv_size == idlen && memcmp(rv.mv_data, id, idlen) == 0) rc = mdb_del(txn, s->db_reqids, &rk, NULL);
  }
  if (job) agentprune__v1__job__free_unpacked(job, NULL);
  if (rc && rc != MDB_NOTFOUND) return lm(rc, "delete request id");
  MDB_val k = {idlen, (void *)id};
  if ((r = lm(mdb_del(txn, s->db_jobs, &k, NULL), "delete job"))) return r;
  uint8_t prefix[AP_JS_ID_MAX + 1];
  memcpy(prefix, id, idlen);
  prefix[idlen] = '/';
  if ((r = delete_prefix(txn, s->db_events, prefix, idlen + 1))) return r;
  if ((r = delete_prefix(txn, s->db_manifest, prefix, idlen + 1))) return r;
  return delete_prefix(txn, s->db_chunk, prefix, idlen + 1);
}

int ap_js_job_delete(ap_js *s, const char *job_id) {
  if (!s || !valid_id(job_id)) return AP_JS_E_INVAL;
  return run_write(s, 65536, delete_fn, (void *)job_id);
}

/* ---- events -------------------------------------------------------------------- */

typedef struct {
  const Agentprune__V1__JobEvent *ev;
  uint64_t seq;
} event_ctx;

static int event_fn(ap_js *s, MDB_txn *txn, void *ctx) {
  event_ctx *c = ctx;
  int r = job_exists(s, txn, c->ev->job_id, strlen(c->ev->job_id));
  if (r) return r;
  return append_event(s, txn, c->ev, &c->seq);
}

int ap_js_event_append(ap_js *s, const Agentprune__V1__JobEvent *ev, uint64_t *seq_out) {
  if (seq_out) *seq_out = 0;
  if (!s || !ev || !valid_id(ev->job_id)) return AP_JS_E_INVAL;
  event_ctx c = {.ev = ev};
  int r = run_write(s, protobuf_c_message_get_packed_size(&ev->base) + 4096, event_fn, &c);
  if (r) return r;
  notify_events(s);
  if (seq_out) *seq_out = c.seq;
  return 0;
}

int ap_js_events_read(ap_js *s, const char *job_id, uint64_t from_seq, size_t max,
                      Agentprune__V1__JobEvent ***events_out, size_t *n_out) {
  if (events_out) *events_out = NULL;
  if (n_out) *n_out = 0;
  size_t idlen = valid_id(job_id);
  if (!s || !idlen || !events_out || !n_out) return AP_JS_E_INVAL;
  Agentprune__V1__JobEvent **evs = NULL;
  size_t n = 0, cap = 0;
  MDB_txn *txn;
  MDB_cursor *cur = NULL;
  int r = read_begin(s, &txn);
  if (r) return r;
  int rc = mdb_cursor_open(txn, s->db_events, &cur);
  if (rc) { r = lm(rc, "cursor open"); goto fail; }
  uint8_t key[KEY_MAX];
  MDB_val k = {key_seq(key, job_id, idlen, from_seq), key}, v;
  for (rc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE); rc == 0 && (!max || n < max);
       rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
    if (k.mv_size != idlen + 9 || memcmp(k.mv_data, key, idlen + 1) != 0) break;
    Agentprune__V1__JobEvent *e = agentprune__v1__job_event__unpack(NULL, v.mv_size, v.mv_data);
    if (!e) {
      AP_ERROR("job store: an event of job %s does not unpack", job_id);
      r = AP_JS_E_CORRUPT;
      goto fail;
    }
    if (n == cap) {
      size_t nc = cap ? cap * 2 : 16;
      Agentprune__V1__JobEvent **ne = realloc(evs, nc * sizeof *ne);
      if (!ne) { agentprune__v1__job_event__free_unpacked(e, NULL); r = AP_JS_E_NOMEM; goto fail; }
      evs = ne;
      cap = nc;
    }
    evs[n++] = e;
  }
  if (rc && rc != MDB_NOTFOUND) { r = lm(rc, "cursor"); goto fail; }
  mdb_cursor_close(cur);
  read_end(s, txn);
  *events_out = evs;
  *n_out = n;
  return 0;
fail:
  if (cur) mdb_cursor_close(cur);
  read_end(s, txn);
  ap_js_events_free(evs, n);
  return r;
}

void ap_js_events_free(Agentprune__V1__JobEvent **events, size_t n) {
  if (!events) return;
  for (size_t i = 0; i < n; i++) agentprune__v1__job_event__free_unpacked(events[i], NULL);
  free(events);
}

int ap_js_event_last_seq(ap_js *s, const char *job_id, uint64_t *seq_out) {
  if (seq_out) *seq_out = 0;
  size_t idlen = valid_id(job_id);
  if (!s || !idlen || !seq_out) return AP_JS_E_INVAL;
  MDB_txn *txn;
  int r = read_begin(s, &txn);
  if (r) return r;
  r = last_number(txn, s->db_events, job_id, idlen, seq_out);
  read_end(s, txn);
  return r;
}

int ap_js_events_wait(ap_js *s, const char *job_id, uint64_t after_seq, int timeout_ms) {
  if (!s || !valid_id(job_id) || timeout_ms < 0) return AP_JS_E_INVAL;
  struct timespec deadline;
  clock_gettime(CLOCK_MONOTONIC, &deadline);
  deadline.tv_sec += timeout_ms / 1000;
  deadline.tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
  if (deadline.tv_nsec >= 1000000000L) { deadline.tv_sec++; deadline.tv_nsec -= 1000000000L; }
  for (;;) {
    /* Read the generation before looking, so an append between the look and
     * the wait changes it and the wait returns at once. */
    pthread_mutex_lock(&s->ev_mu);
    uint64_t gen = s->ev_gen;
    pthread_mutex_unlock(&s->ev_mu);
    uint64_t last;
    int r = ap_js_event_last_seq(s, job_id, &last);
    if (r) return r;
    if (last > after_seq) return 0;
    int timed_out = 0;
    pthread_mutex_lock(&s->ev_mu);
    while (s->ev_gen == gen && !timed_out)
      timed_out = pthread_cond_timedwait(&s->ev_cv, &s->ev_mu, &deadline) == ETIMEDOUT;
    pthread_mutex_unlock(&s->ev_mu);
    if (timed_out) {
      r = ap_js_event_last_seq(s, job_id, &last);
      if (r) return r;
      return last > after_seq ? 0 : AP_JS_E_TIMEOUT;
    }
  }
}

/* ---- checkpoints ----------------------------------------------------------------- */

typedef struct {
  const Agentprune__V1__Job *job;
  const Agentprune__V1__JobEvent *ev;
  uint64_t seq;
  const uint8_t *state;
  size_t state_len;
  const ap_js_mask_in *masks;
  uint32_t n_layers;
  uint64_t ckpt_no;
} ckpt_ctx;

static uint64_t layer_bytes(uint64_t bits) { return (bits + 63) / 64 * 8; }

/* Writes one part as chunks; returns its CRC in *crc and chunk count in *nch.
 * For layers, `tail_bits` (bits % 64) masks the unused bits of the last word. */
static int write_part(ap_js *s, MDB_txn *txn, const char *id, size_t idlen, uint64_t no, uint32_t part,
                      const uint8_t *data, uint64_t len, unsigned tail_bits, uint32_t *crc, uint32_t *nch) {
  uint64_t n = (len + s->chunk_bytes - 1) / s->chunk_bytes;
  if (n > UINT32_MAX) return AP_JS_E_INVAL;
  *crc = 0;
  *nch = (uint32_t)n;
  uint8_t key[KEY_MAX];
  for (uint64_t c = 0; c < n; c++) {
    uint64_t off = c * s->chunk_bytes;
    size_t sz = (size_t)(len - off < s->chunk_bytes ? len - off : s->chunk_bytes);
    MDB_val k = {key_chunk(key, id, idlen, no, part, (uint32_t)c), key}, v = {sz, NULL};
    /* MDB_RESERVE: copy straight into the page LMDB allocated. */
    int rc = mdb_put(txn, s->db_chunk, &k, &v, MDB_RESERVE);
    if (rc) return lm(rc, "put chunk");
    memcpy(v.mv_data, data + off, sz);
    if (c == n - 1 && tail_bits) {
      uint64_t w;
      uint8_t *last = (uint8_t *)v.mv_data + sz - 8;
      memcpy(&w, last, 8);
      w &= (UINT64_C(1) << tail_bits) - 1;
      memcpy(last, &w, 8);
    }
    *crc = ap_js_crc32(*crc, v.mv_data, sz);
    if (s->test_hook) s->test_hook(s->test_hook_arg, no, part, (uint32_t)c);
  }
  return 0;
}

static int ckpt_fn(ap_js *s, MDB_txn *txn, void *ctx) {
  ckpt_ctx *c = ctx;
  const char *id = c->job->id;
  size_t idlen = strlen(id);
  int r = job_exists(s, txn, id, idlen);
  if (r) return r;
  uint64_t last;
  if ((r = last_number(txn, s->db_manifest, id, idlen, &last))) return r;
  uint64_t no = last + 1;
  c->seq = 0;
  if (c->ev && (r = append_event(s, txn, c->ev, &c->seq))) return r;
  /* The job record moves with its checkpoint, in the same transaction, and
   * the checkpoint keeps the same bytes as its job part. */
  uint8_t *job_packed;
  size_t job_len;
  if ((r = store_job(s, txn, c->job, &job_packed, &job_len))) return r;

  size_t mlen = MANIFEST_HEADER + ((size_t)c->n_layers + 2) * MANIFEST_PART + 4;
  uint8_t *man = calloc(1, mlen);
  if (!man) {
    free(job_packed);
    return AP_JS_E_NOMEM;
  }
  put_le32(man, MANIFEST_MAGIC);
  put_le16(man + 4, MANIFEST_VERSION);
  put_le16(man + 6, 0);
  put_le64(man + 8, no);
  put_le64(man + 16, now_unix_ms());
  put_le32(man + 24, c->n_layers);
  put_le32(man + 28, s->chunk_bytes);
  for (uint32_t p = 0; p < c->n_layers + 2; p++) {
    uint32_t part, crc, nch;
    uint64_t length;
    if (p < c->n_layers) {
      part = p;
      length = c->masks[p].bits;
      r = write_part(s, txn, id, idlen, no, part, (const uint8_t *)c->masks[p].words, layer_bytes(length),
                     (unsigned)(length % 64), &crc, &nch);
    } else if (p == c->n_layers) {
      part = AP_JS_PART_STATE;
      length = c->state_len;
      r = write_part(s, txn, id, idlen, no, part, c->state, length, 0, &crc, &nch);
    } else {
      part = AP_JS_PART_JOB;
      length = job_len;
      r = write_part(s, txn, id, idlen, no, part, job_packed, length, 0, &crc, &nch);
    }
    if (r) goto fail;
    uint8_t *rec = man + MANIFEST_HEADER + (size_t)p * MANIFEST_PART;
    put_le64(rec, length);
    put_le32(rec + 8, nch);
    put_le32(rec + 12, crc);
  }
  put_le32(man + mlen - 4, ap_js_crc32(0, man, mlen - 4));
  uint8_t key[KEY_MAX];
  MDB_val k = {key_seq(key, id, idlen, no), key}, v = {mlen, man};
  r = lm(mdb_put(txn, s->db_manifest, &k, &v, 0), "put manifest");
  if (r) goto fail;

  /* Keep `no` and `last`; delete older ones now so that their pages are on
   * the free list from this commit on. */
  MDB_cursor *cur;
  int rc = mdb_cursor_open(txn, s->db_manifest, &cur);
  if (rc) { r = lm(rc, "cursor open"); goto fail; }
  for (;;) {
    uint8_t first[KEY_MAX];
    MDB_val fk = {key_seq(first, id, idlen, 0), first}, fv;
    rc = mdb_cursor_get(cur, &fk, &fv, MDB_SET_RANGE);
    if (rc == MDB_NOTFOUND) break;
    if (rc) { r = lm(rc, "cursor"); break; }
    if (fk.mv_size != idlen + 9 || memcmp(fk.mv_data, first, idlen + 1) != 0) break;
    uint64_t old = get_be64((const uint8_t *)fk.mv_data + idlen + 1);
    if (old >= last) break;
    rc = mdb_cursor_del(cur, 0);
    if (rc) { r = lm(rc, "delete manifest"); break; }
    uint8_t prefix[KEY_MAX];
    size_t plen = key_seq(prefix, id, idlen, old);
    prefix[plen++] = '/';
    if ((r = delete_prefix(txn, s->db_chunk, prefix, plen))) break;
  }
  mdb_cursor_close(cur);
  if (r) goto fail;
  c->ckpt_no = no;
fail:
  free(man);
  free(job_packed);
  return r;
}

int ap_js_checkpoint_write(ap_js *s, const Agentprune__V1__Job *job, const Agentprune__V1__JobEvent *ev,
                           const void *state, size_t state_len, const ap_js_mask_in *masks, uint32_t n_layers,
                           uint64_t *ckpt_no_out, uint64_t *seq_out) {
  if (ckpt_no_out) *ckpt_no_out = 0;
  if (seq_out) *seq_out = 0;
  if (!s || check_job(job) || !masks || n_layers == 0 || n_layers > AP_JS_MAX_LAYERS ||
      state_len > UINT32_MAX || (state_len && !state) || (ev && (!ev->job_id || strcmp(ev->job_id, job->id) != 0)))
    return AP_JS_E_INVAL;
  size_t hint = state_len + protobuf_c_message_get_packed_size(&job->base) + 4096;
  for (uint32_t i = 0; i < n_layers; i++) {
    if (masks[i].bits && !masks[i].words) return AP_JS_E_INVAL;
    hint += (size_t)layer_bytes(masks[i].bits);
  }
  if (ev) hint += protobuf_c_message_get_packed_size(&ev->base);
  ckpt_ctx c = {.job = job, .ev = ev, .state = state, .state_len = state_len, .masks = masks, .n_layers = n_layers};
  int r = run_write(s, hint, ckpt_fn, &c);
  if (r) return r;
  if (ev) notify_events(s);
  if (ckpt_no_out) *ckpt_no_out = c.ckpt_no;
  if (seq_out) *seq_out = c.seq;
  return 0;
}

/* Reads one part and checks chunk count, sizes and CRC; copies to dst if given. */
static int read_part(ap_js *s, MDB_txn *txn, const char *id, size_t idlen, uint64_t no, uint32_t part,
                     uint64_t len, uint32_t chunk_bytes, uint32_t nch, uint32_t crc, uint8_t *dst) {
  uint64_t expect = (len + chunk_bytes - 1) / chunk_bytes;
  if (expect != nch) goto corrupt;
  uint8_t key[KEY_MAX];
  uint32_t got = 0;
  for (uint32_t c = 0; c < nch; c++) {
    uint64_t off = (uint64_t)c * chunk_bytes;
    size_t sz = (size_t)(len - off < chunk_bytes ? len - off : chunk_bytes);
    MDB_val k = {key_chunk(key, id, idlen, no, part, c), key}, v;
    int rc = mdb_get(txn, s->db_chunk, &k, &v);
    if (rc == MDB_NOTFOUND) goto corrupt;
    if (rc) return lm(rc, "get chunk");
    if (v.mv_size != sz) goto corrupt;
    got = ap_js_crc32(got, v.mv_data, sz);
    if (dst) memcpy(dst + off, v.mv_data, sz);
  }
  if (got != crc) goto corrupt;
  {
    /* A chunk past the count means the manifest and the data disagree. */
    MDB_val k = {key_chunk(key, id, idlen, no, part, nch), key}, v;
    int rc = mdb_get(txn, s->db_chunk, &k, &v);
    if (rc == 0) goto corrupt;
    if (rc != MDB_NOTFOUND) return lm(rc, "get chunk");
  }
  return 0;
corrupt:
  if (part == AP_JS_PART_STATE || part == AP_JS_PART_JOB)
    AP_ERROR("job store: checkpoint %s/%llu: the %s part is corrupt (chunks or CRC-32 do not match the manifest)", id,
             (unsigned long long)no, part == AP_JS_PART_STATE ? "state" : "job");
  else
    AP_ERROR("job store: checkpoint %s/%llu: layer %u is corrupt (chunks or CRC-32 do not match the manifest)", id,
             (unsigned long long)no, part);
  return AP_JS_E_CORRUPT;
}

int ap_js_checkpoint_read(ap_js *s, const char *job_id, uint64_t ckpt_no, const ap_js_mask_out *masks,
                          uint32_t n_layers, ap_js_ckpt **ckpt_out) {
  if (ckpt_out) *ckpt_out = NULL;
  size_t idlen = valid_id(job_id);
  if (!s || !idlen) return AP_JS_E_INVAL;
  MDB_txn *txn;
  int r = read_begin(s, &txn);
  if (r) return r;
  ap_js_ckpt *ck = NULL;
  uint8_t *man = NULL, *jobbuf = NULL;
  int rc;
  if (!ckpt_no) {
    if ((r = last_number(txn, s->db_manifest, job_id, idlen, &ckpt_no))) goto fail;
    if (!ckpt_no) { r = AP_JS_E_NOTFOUND; goto fail; }
  }
  uint8_t key[KEY_MAX];
  MDB_val k = {key_seq(key, job_id, idlen, ckpt_no), key}, v;
  rc = mdb_get(txn, s->db_manifest, &k, &v);
  if (rc) { r = lm(rc, "get manifest"); goto fail; }
  size_t mlen = v.mv_size;
  man = malloc(mlen ? mlen : 1);
  if (!man) { r = AP_JS_E_NOMEM; goto fail; }
  memcpy(man, v.mv_data, mlen);
  if (mlen < MANIFEST_HEADER + 2 * MANIFEST_PART + 4 || get_le32(man) != MANIFEST_MAGIC ||
      get_le32(man + mlen - 4) != ap_js_crc32(0, man, mlen - 4) || get_le16(man + 4) != MANIFEST_VERSION ||
      get_le16(man + 6) != 0 || get_le64(man + 8) != ckpt_no)
    goto corrupt;
  uint32_t nl = get_le32(man + 24), chunk_bytes = get_le32(man + 28);
  if (nl > AP_JS_MAX_LAYERS || mlen != MANIFEST_HEADER + ((size_t)nl + 2) * MANIFEST_PART + 4 || chunk_bytes == 0 ||
      chunk_bytes % 8)
    goto corrupt;
  if (masks) {
    if (n_layers != nl) { r = AP_JS_E_SHAPE; goto fail; }
    for (uint32_t i = 0; i < nl; i++)
      if (masks[i].bits != get_le64(man + MANIFEST_HEADER + (size_t)i * MANIFEST_PART) ||
          (masks[i].bits && !masks[i].words)) {
        r = masks[i].words ? AP_JS_E_SHAPE : AP_JS_E_INVAL;
        goto fail;
      }
  }
  ck = calloc(1, sizeof *ck);
  if (!ck) { r = AP_JS_E_NOMEM; goto fail; }
  ck->ckpt_no = ckpt_no;
  ck->created_unix_ms = get_le64(man + 16);
  ck->n_layers = nl;
  ck->layer_bits = malloc((nl ? nl : 1) * sizeof *ck->layer_bits);
  ck->layer_crc32 = malloc((nl ? nl : 1) * sizeof *ck->layer_crc32);
  const uint8_t *srec = man + MANIFEST_HEADER + (size_t)nl * MANIFEST_PART, *jrec = srec + MANIFEST_PART;
  uint64_t slen = get_le64(srec), jlen = get_le64(jrec);
  if (slen > UINT32_MAX || jlen > UINT32_MAX) goto corrupt;
  ck->state_len = (size_t)slen;
  ck->state = malloc(slen ? slen : 1);
  jobbuf = malloc(jlen ? jlen : 1);
  if (!ck->layer_bits || !ck->layer_crc32 || !ck->state || !jobbuf) { r = AP_JS_E_NOMEM; goto fail; }
  for (uint32_t i = 0; i < nl; i++) {
    const uint8_t *rec = man + MANIFEST_HEADER + (size_t)i * MANIFEST_PART;
    ck->layer_bits[i] = get_le64(rec);
    ck->layer_crc32[i] = get_le32(rec + 12);
    r = read_part(s, txn, job_id, idlen, ckpt_no, i, layer_bytes(ck->layer_bits[i]), chunk_bytes,
                  get_le32(rec + 8), get_le32(rec + 12), masks ? (uint8_t *)masks[i].words : NULL);
    if (r) goto fail;
  }
  r = read_part(s, txn, job_id, idlen, ckpt_no, AP_JS_PART_STATE, slen, chunk_bytes, get_le32(srec + 8),
                get_le32(srec + 12), ck->state);
  if (r) goto fail;
  r = read_part(s, txn, job_id, idlen, ckpt_no, AP_JS_PART_JOB, jlen, chunk_bytes, get_le32(jrec + 8),
                get_le32(jrec + 12), jobbuf);
  if (r) goto fail;
  ck->job = agentprune__v1__job__unpack(NULL, (size_t)jlen, jobbuf);
  if (!ck->job) goto corrupt;
  read_end(s, txn);
  free(man);
  free(jobbuf);
  if (ckpt_out) *ckpt_out = ck;
  else ap_js_ckpt_free(ck);
  return 0;
corrupt:
  AP_ERROR("job store: checkpoint %s/%llu has a corrupt manifest or job record", job_id, (unsigned long long)ckpt_no);
  r = AP_JS_E_CORRUPT;
fail:
  read_end(s, txn);
  free(man);
  free(jobbuf);
  ap_js_ckpt_free(ck);
  return r;
}

void ap_js_ckpt_free(ap_js_ckpt *c) {
  if (!c) return;
  free(c->layer_bits);
  free(c->layer_crc32);
  free(c->state);
  if (c->job) agentprune__v1__job__free_unpacked(c->job, NULL);
  free(c);
}

int ap_js_checkpoint_list(ap_js *s, const char *job_id, uint64_t *nos, size_t cap, size_t *n_out) {
  if (n_out) *n_out = 0;
  size_t idlen = valid_id(job_id);
  if (!s || !idlen || !n_out || (cap && !nos)) return AP_JS_E_INVAL;
  MDB_txn *txn;
  int r = read_begin(s, &txn);
  if (r) return r;
  MDB_cursor *cur;
  int rc = mdb_cursor_open(txn, s->db_manifest, &cur);
  if (rc) { read_end(s, txn); return lm(rc, "cursor open"); }
  uint8_t key[KEY_MAX];
  MDB_val k = {key_seq(key, job_id, idlen, 0), key}, v;
  size_t n = 0;
  for (rc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE); rc == 0; rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
    if (k.mv_size != idlen + 9 || memcmp(k.mv_data, key, idlen + 1) != 0) break;
    if (n < cap) nos[n] = get_be64((const uint8_t *)k.mv_data + idlen + 1);
    n++;
  }
  if (rc && rc != MDB_NOTFOUND) r = lm(rc, "cursor");
  mdb_cursor_close(cur);
  read_end(s, txn);
  *n_out = n;
  return r;
}
