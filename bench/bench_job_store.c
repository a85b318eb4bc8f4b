/*
 * bench_job_store.c - checkpoint cost of the job store (pruner-svc/jobs).
 * Usage: bench_job_store [MiB of mask per checkpoint, default 64] [dir]
 * Prints the time of a checkpoint write (one LMDB txn, synced) and of a
 * verified read (CRC-32 of every chunk) as ratios to baselines measured in the
 * same run: writing the same bytes to a plain file with write()+fdatasync, and
 * memcpy of the same bytes.
 */
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "job_store.h"

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

int main(int argc, char **argv) {
  size_t mib = argc > 1 ? (size_t)atoi(argv[1]) : 64;
  if (mib < 1 || mib > 4096) {
    fprintf(stderr, "usage: bench_job_store [MiB 1..4096] [dir]\n");
    return 2;
  }
  char dir[512];
  snprintf(dir, sizeof dir, "%s/ap_js_bench_XXXXXX", argc > 2 ? argv[2] : "/tmp");
  if (!mkdtemp(dir)) { perror("mkdtemp"); return 1; }
  const uint32_t nl = 8;
  size_t words = mib * (1u << 20) / 8 / nl;
  uint64_t *w[8], *r[8];
  uint64_t x = 88172645463325252ull;
  for (uint32_t i = 0; i < nl; i++) {
    w[i] = malloc(words * 8);
    r[i] = malloc(words * 8);
    if (!w[i] || !r[i]) { fprintf(stderr, "out of memory\n"); return 1; }
    for (size_t k = 0; k < words; k++) { x ^= x << 13; x ^= x >> 7; x ^= x << 17; w[i][k] = x; }
  }
  size_t total = words * 8 * nl;

  /* Baseline: one file, write + fdatasync. */
  char path[600];
  snprintf(path, sizeof path, "%s/raw.bin", dir);
  double best_raw_w = 1e30, best_memcpy = 1e30, best_w = 1e30, best_r = 1e30;
  for (int rep = 0; rep < 3; rep++) {
    double t = now_s();
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    for (uint32_t i = 0; i < nl; i++)
      if (write(fd, w[i], words * 8) != (ssize_t)(words * 8)) { perror("write"); return 1; }
    fdatasync(fd);
    close(fd);
    t = now_s() - t;
    if (t < best_raw_w) best_raw_w = t;
    t = now_s();
    for (uint32_t i = 0; i < nl; i++) memcpy(r[i], w[i], words * 8);
    t = now_s() - t;
    if (t < best_memcpy) best_memcpy = t;
  }
  unlink(path);

  ap_js *s;
  ap_js_options opt = {.initial_map_bytes = (size_t)4 * total};
  if (ap_js_open(dir, &opt, &s)) { fprintf(stderr, "open failed\n"); return 1; }
  Agentprune__V1__Job job = AGENTPRUNE__V1__JOB__INIT;
  job.id = "bench";
  if (ap_js_job_put(s, &job, NULL, NULL)) return 1;
  ap_js_mask_in in[8];
  ap_js_mask_out out[8];
  for (uint32_t i = 0; i < nl; i++) {
    in[i] = (ap_js_mask_in){words * 64, w[i]};
    out[i] = (ap_js_mask_out){words * 64, r[i]};
  }
  uint8_t state[256] = {1};
  for (int rep = 0; rep < 4; rep++) {
    double t = now_s();
    int rc = ap_js_checkpoint_write(s, &job, NULL, state, sizeof state, in, nl, NULL, NULL);
    t = now_s() - t;
    if (rc) { fprintf(stderr, "write: %s\n", ap_js_strerror(rc)); return 1; }
    if (t < best_w) best_w = t;
    t = now_s();
    rc = ap_js_checkpoint_read(s, "bench", 0, out, nl, NULL);
    t = now_s() - t;
    if (rc) { fprintf(stderr, "read: %s\n", ap_js_strerror(rc)); return 1; }
    if (t < best_r) best_r = t;
  }
  if (memcmp(r[0], w[0], words * 8) != 0) { fprintf(stderr, "read-back differs\n"); return 1; }
  ap_js_stats_t st;
  ap_js_stats(s, &st);
  ap_js_close(s);
  printf("checkpoint of %.1f MB (%u layers):\n", total / 1e6, nl);
  printf("  write (1 txn, synced): %.3f s = %.0f MB/s, %.2fx write+fdatasync of a plain file (%.0f MB/s)\n", best_w,
         total / 1e6 / best_w, best_w / best_raw_w, total / 1e6 / best_raw_w);
  printf("  read (CRC verified):   %.3f s = %.0f MB/s, %.2fx memcpy (%.0f MB/s)\n", best_r, total / 1e6 / best_r,
         best_r / best_memcpy, total / 1e6 / best_memcpy);
  printf("  store file %.1f MB after 4 checkpoints (2 kept) = %.2fx the live data\n", st.used_bytes / 1e6,
         st.used_bytes / (2.0 * total));
  char p2[600];
  snprintf(p2, sizeof p2, "%s/data.mdb", dir);
  unlink(p2);
  snprintf(p2, sizeof p2, "%s/lock.mdb", dir);
  unlink(p2);
  rmdir(dir);
  for (uint32_t i = 0; i < nl; i++) { free(w[i]); free(r[i]); }
  return 0;
}
