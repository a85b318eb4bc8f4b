/*
 * jobs_test_util.h - shared helpers of the job store tests: scratch
 * directories, deterministic masks and state blobs derived from
 * (job, checkpoint number), and raw LMDB access for corruption tests.
 * Header-only with static inline functions so each test uses what it needs.
 */
#ifndef AP_JOBS_TEST_UTIL_H
#define AP_JOBS_TEST_UTIL_H

#include <lmdb.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "job_store.h"
#include "log.h"

static inline uint64_t tu_splitmix(uint64_t *x) {
  uint64_t z = (*x += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

static inline uint64_t tu_seed(const char *job, uint64_t ckpt_no, uint32_t layer) {
  uint64_t h = 1469598103934665603ull;
  for (const char *p = job; *p; p++) h = (h ^ (uint8_t)*p) * 1099511628211ull;
  return h ^ (ckpt_no * 0x100000001B3ull) ^ ((uint64_t)layer << 40);
}

static inline size_t tu_words(uint64_t bits) { return (size_t)((bits + 63) / 64); }

/* Fills a layer bitmap for (job, ckpt, layer), random bits including garbage
 * past `bits` in the last word (the store must store those as 0). */
static inline void tu_fill_mask(uint64_t *w, uint64_t bits, const char *job, uint64_t ckpt_no, uint32_t layer) {
  uint64_t x = tu_seed(job, ckpt_no, layer);
  for (size_t i = 0; i < tu_words(bits); i++) w[i] = tu_splitmix(&x);
}

/* 1 when w equals the generated mask, with the tail bits expected as 0. */
static inline int tu_mask_matches(const uint64_t *w, uint64_t bits, const char *job, uint64_t ckpt_no, uint32_t layer) {
  uint64_t x = tu_seed(job, ckpt_no, layer);
  size_t n = tu_words(bits);
  for (size_t i = 0; i < n; i++) {
    uint64_t e = tu_splitmix(&x);
    if (i == n - 1 && bits % 64) e &= (UINT64_C(1) << (bits % 64)) - 1;
    if (w[i] != e) return 0;
  }
  return 1;
}

static inline void tu_fill_state(uint8_t *b, size_t n, const char *job, uint64_t ckpt_no) {
  uint64_t x = tu_seed(job, ckpt_no, 0xABCDu);
  for (size_t i = 0; i < n; i++) b[i] = (uint8_t)tu_splitmix(&x);
}

static inline int tu_state_matches(const uint8_t *b, size_t n, const char *job, uint64_t ckpt_no) {
  uint64_t x = tu_seed(job, ckpt_no, 0xABCDu);
  for (size_t i = 0; i < n; i++)
    if (b[i] != (uint8_t)tu_splitmix(&x)) return 0;
  return 1;
}

/* A fresh scratch directory for a store; the path is static per call site. */
static inline void tu_mkdtemp(char *buf, size_t cap, const char *tag) {
  const char *tmp = getenv("TMPDIR");
  snprintf(buf, cap, "%s/ap_js_%s_XXXXXX", tmp && *tmp ? tmp : "/tmp", tag);
  if (!mkdtemp(buf)) {
    perror("mkdtemp");
    exit(2);
  }
}

static inline void tu_rmstore(const char *dir) {
  char p[1024];
  snprintf(p, sizeof p, "%s/data.mdb", dir);
  unlink(p);
  snprintf(p, sizeof p, "%s/lock.mdb", dir);
  unlink(p);
  rmdir(dir);
}

/* Raw LMDB environment on a store directory (the store must be closed in
 * this process: LMDB forbids two opens of one environment per process). */
static inline MDB_env *tu_raw_open(const char *dir) {
  MDB_env *env;
  if (mdb_env_create(&env)) return NULL;
  mdb_env_set_maxdbs(env, 8);
  if (mdb_env_open(env, dir, 0, 0644)) {
    mdb_env_close(env);
    return NULL;
  }
  return env;
}

/* Key of a checkpoint chunk, per the layout in job_store.h. */
static inline size_t tu_chunk_key(uint8_t *k, const char *job, uint64_t no, uint32_t part, uint32_t chunk) {
  size_t n = strlen(job);
  memcpy(k, job, n);
  k[n++] = '/';
  for (int i = 7; i >= 0; i--) k[n++] = (uint8_t)(no >> (8 * i));
  k[n++] = '/';
  for (int i = 3; i >= 0; i--) k[n++] = (uint8_t)(part >> (8 * i));
  k[n++] = '/';
  for (int i = 3; i >= 0; i--) k[n++] = (uint8_t)(chunk >> (8 * i));
  return n;
}

static inline Agentprune__V1__Job tu_job(const char *id, Agentprune__V1__JobSpec *spec, uint32_t iteration,
                                         Agentprune__V1__JobState *st) {
  Agentprune__V1__Job j = AGENTPRUNE__V1__JOB__INIT;
  j.id = (char *)id;
  j.spec = spec;
  j.status = AGENTPRUNE__V1__JOB_STATUS__JOB_STATUS_RUNNING;
  if (st) {
    st->iteration = iteration;
    j.state = st;
  }
  return j;
}

#endif
