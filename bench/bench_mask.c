/*
 * bench_mask.c - time to score and mask a layer (Wanda unstructured 50%,
 * Wanda 2:4, whole-layer magnitude 50%, p10 statistic) on LLaMA-7B shapes,
 * against the machine's memory bandwidth measured in the same run with a
 * plain streaming copy (memcpy of a large buffer, split over the same
 * OpenMP threads). The "(scalar)" lines run the portable reference of the
 * same step (AP_MASK_IMPL_SCALAR); the others run what ap_mask_* pick on
 * this CPU (AVX2 where available, see mask.c). Both give the same masks.
 *
 * Bandwidth convention: bytes read + bytes written. The copy moves 2 bytes per
 * byte copied; a mask pass reads 4 bytes of weight per weight and reads and
 * writes its mask bit (n/4 bytes in all). The ratio mask/copy is the share of
 * the memory bandwidth the mask step reaches: near 1 means memory-bound.
 * For context the run also prints a read-only pass over the weights, the
 * ceiling of a step that reads them once (below 1 where writes stream as
 * fast as reads).
 *
 * Bound: each step is also timed on a layer that stays in the last-level
 * cache (1024 x 4096, 16 MiB, repeated): its compute, with no wait on
 * memory (a smaller layer would time the fixed cost of a call). "read/step" is
 * the read-only pass's time over the step's time on the big layer (1 =
 * as fast as reading the weights once), and "bound" says which one limits
 * the step on this machine: memory when its compute in cache is at least a
 * quarter faster than reading the weights, else compute. On a machine with
 * more cores per memory channel the same code moves towards memory-bound.
 *
 * Floor: the first line times the cheapest possible per-row mask step, one
 * pass that scores each weight, compares it with a threshold known in
 * advance and writes the mask bits; "step/floor" is each step's time over
 * the floor's on the same layer, so what finding the threshold adds to
 * streaming, scoring and marking (1 = nothing).
 *
 * Usage: bench_mask [repeats=5]; OMP_NUM_THREADS sets the threads.
 */
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#ifdef __SSE2__
#include <emmintrin.h>
#endif

#include "bitmap.h"
#include "mask.h"
#include "prune_error.h"
#include "stats.h"

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static uint64_t rng_state = 1;
static double unif(void) {
  rng_state = rng_state * 6364136223846793005ull + 1442695040888963407ull;
  return ((double)(rng_state >> 11) + 0.5) / 9007199254740992.0;
}
static double gauss(void) { return sqrt(-2 * log(unif())) * cos(6.283185307179586 * unif()); }

/* Best-of-repeats GB/s of a parallel memcpy of `bytes` (read + write counted). */
static double copy_bandwidth(size_t bytes, int repeats) {
  char *src = malloc(bytes), *dst = malloc(bytes);
  if (!src || !dst) { fprintf(stderr, "bench_mask: cannot allocate %zu bytes\n", bytes); exit(1); }
  memset(src, 1, bytes);
  memset(dst, 2, bytes);
  double best = 1e30;
  for (int r = 0; r < repeats; r++) {
    double t0 = now();
#pragma omp parallel
    {
      int nt = omp_get_num_threads(), id = omp_get_thread_num();
      size_t chunk = (bytes / (size_t)nt + 4095) & ~(size_t)4095;
      size_t b = (size_t)id * chunk, e = b + chunk < bytes ? b + chunk : bytes;
      if (b < e) memcpy(dst + b, src + b, e - b);
    }
    double t = now() - t0;
    if (t < best) best = t;
  }
  volatile char sink = dst[bytes / 2];
  (void)sink;
  free(src);
  free(dst);
  return 2.0 * (double)bytes / best / 1e9;
}

/*
 * Best-of-repeats GB/s of a parallel read of n floats (read only):
 * the practical ceiling of a step that reads the weights once, for context.
 * A copy counts its writes too, which this machine streams (non-temporal)
 * about as fast as it reads, so a read-only pass tops out below ratio 1.
 */
static double read_bandwidth(const float *a, size_t n, int repeats) {
  /* XOR of 16-byte words into four accumulators: no floating-point order to
   * keep and no dependency chain, so the loop waits only on memory */
  size_t nv = n / 16;
  double best = 1e30;
  uint64_t total = 0;
  for (int r = 0; r < repeats; r++) {
    double t0 = now();
    uint64_t x = 0;
#pragma omp parallel reduction(^ : x)
    {
      int nt = omp_get_num_threads(), id = omp_get_thread_num();
      size_t b = nv * (size_t)id / (size_t)nt, e = nv * (size_t)(id + 1) / (size_t)nt;
#ifdef __SSE2__
      const __m128i *v = (const __m128i *)(const void *)a;
      __m128i x0 = _mm_setzero_si128(), x1 = x0, x2 = x0, x3 = x0;
      for (size_t i = b; i < e; i++) {
        x0 = _mm_xor_si128(x0, _mm_loadu_si128(v + 4 * i));
        x1 = _mm_xor_si128(x1, _mm_loadu_si128(v + 4 * i + 1));
        x2 = _mm_xor_si128(x2, _mm_loadu_si128(v + 4 * i + 2));
        x3 = _mm_xor_si128(x3, _mm_loadu_si128(v + 4 * i + 3));
      }
      __m128i y = _mm_xor_si128(_mm_xor_si128(x0, x1), _mm_xor_si128(x2, x3));
      x ^= (uint64_t)_mm_cvtsi128_si64(y) ^ (uint64_t)_mm_cvtsi128_si64(_mm_unpackhi_epi64(y, y));
#else
      const uint64_t *u = (const uint64_t *)(const void *)a;
      for (size_t i = 8 * b; i < 8 * e; i++) x ^= u[i];
#endif
    }
    double t = now() - t0;
    if (t < best) best = t;
    total ^= x;
  }
  volatile uint64_t sink = total;
  (void)sink;
  return 64.0 * (double)nv / best / 1e9;
}

/*
 * The floor of any per-row mask step: one pass that scores every weight,
 * compares it with a threshold already known and ORs the bits into the
 * mask (cols a multiple of 64). A selection that is bound by moving the
 * data, not by finding the threshold, runs near it; it needs AVX2, as the
 * kernels it is the yardstick of.
 */
#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
__attribute__((target("avx2"))) static void floor_rows(const float *w, const float *norms, size_t rows, size_t cols,
                                                       float t, uint64_t *mask) {
  const __m256 absm = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff)), vt = _mm256_set1_ps(t);
#pragma omp parallel for schedule(static)
  for (size_t r = 0; r < rows; r++) {
    const float *wr = w + r * cols;
    uint64_t *mw = mask + r * cols / 64;
    for (size_t c0 = 0; c0 < cols; c0 += 64) {
      uint64_t bits = 0;
      for (size_t i = 0; i < 8; i++) {
        __m256 sc = _mm256_mul_ps(_mm256_and_ps(_mm256_loadu_ps(wr + c0 + 8 * i), absm),
                                  _mm256_loadu_ps(norms + c0 + 8 * i));
        bits |= (uint64_t)(unsigned)_mm256_movemask_ps(_mm256_cmp_ps(sc, vt, _CMP_LT_OQ)) << (8 * i);
      }
      mw[c0 / 64] |= bits;
    }
  }
}
#define HAVE_FLOOR 1
#else
#define HAVE_FLOOR 0
#endif

typedef enum {
  RUN_FLOOR,
  RUN_WANDA50,
  RUN_WANDA50_SCALAR,
  RUN_WANDA_24,
  RUN_WANDA_24_SCALAR,
  RUN_MAG50,
  RUN_MAG50_SCALAR,
  RUN_P10,
  RUN_P10_SCALAR,
  RUN_KINDS
} run_kind;
static const char *kind_name[] = {"floor: threshold known", "wanda unstructured 50%", "  (scalar)",
                                  "wanda 2:4",              "  (scalar)",             "magnitude layer 50%",
                                  "  (scalar)",             "p10 statistic (s)",      "  (scalar)"};

/* The floor's inputs: the Wanda norms of the run and a threshold near the median score. */
static float floor_norms[4096], floor_t;
static int have_floor;

static int cmp_float(const void *a, const void *b) {
  float x = *(const float *)a, y = *(const float *)b;
  return (x > y) - (x < y);
}

static double time_kind(run_kind kind, const float *w, const double *xsq, size_t rows, size_t cols, uint64_t *mask,
                        int repeats) {
  size_t n = rows * cols;
  double best = 1e30;
  for (int r = 0; r < repeats; r++) {
    memset(mask, 0, ap_bitmap_bytes(n));
    int rc = 0;
    double s, t0 = now();
    ap_layer_ref l = {w, xsq, NULL, rows, cols};
    switch (kind) {
    case RUN_FLOOR:
#if HAVE_FLOOR
      floor_rows(w, floor_norms, rows, cols, floor_t, mask);
#endif
      break;
    case RUN_WANDA50: rc = ap_mask_rows(w, xsq, rows, cols, 0.5, mask, NULL); break;
    case RUN_WANDA50_SCALAR: rc = ap_mask_rows_impl(w, xsq, rows, cols, 0.5, mask, NULL, AP_MASK_IMPL_SCALAR); break;
    case RUN_WANDA_24: rc = ap_mask_nm(w, xsq, rows, cols, 2, 4, mask, NULL); break;
    case RUN_WANDA_24_SCALAR: rc = ap_mask_nm_impl(w, xsq, rows, cols, 2, 4, mask, NULL, AP_MASK_IMPL_SCALAR); break;
    case RUN_MAG50: rc = ap_mask_layer(w, NULL, rows, cols, 0.5, mask, NULL); break;
    case RUN_MAG50_SCALAR: rc = ap_mask_layer_impl(w, NULL, rows, cols, 0.5, mask, NULL, AP_MASK_IMPL_SCALAR); break;
    case RUN_P10: rc = ap_stats_score_percentile(&l, 10.0, &s); break;
    case RUN_P10_SCALAR: rc = ap_stats_score_percentile_impl(&l, 10.0, &s, AP_MASK_IMPL_SCALAR); break;
    case RUN_KINDS: break;
    }
    double t = now() - t0;
    if (rc) { fprintf(stderr, "bench_mask: %s\n", ap_prune_strerror(rc)); exit(1); }
    if (t < best) best = t;
  }
  if (kind != RUN_P10 && kind != RUN_P10_SCALAR && kind != RUN_FLOOR && ap_bitmap_count(mask, n) != n / 2) {
    fprintf(stderr, "bench_mask: %s pruned %zu of %zu\n", kind_name[kind], ap_bitmap_count(mask, n), n);
    exit(1);
  }
  return best;
}

int main(int argc, char **argv) {
  int repeats = argc > 1 ? atoi(argv[1]) : 5;
  if (repeats < 1) repeats = 1;
  const size_t shapes[2][2] = {{4096, 4096}, {11008, 4096}};
  size_t max_n = shapes[1][0] * shapes[1][1];
  float *w = malloc(max_n * sizeof *w);
  double *xsq = malloc(4096 * sizeof *xsq);
  uint64_t *mask = ap_bitmap_alloc(max_n);
  if (!w || !xsq || !mask) { fprintf(stderr, "bench_mask: out of memory\n"); return 1; }
  for (size_t i = 0; i < max_n; i++) w[i] = (float)(0.02 * gauss());
  for (size_t j = 0; j < 4096; j++) xsq[j] = 65536.0 * exp(1.6 * gauss()) * (unif() < 0.01 ? 2500.0 : 1.0);
#if HAVE_FLOOR
  have_floor = __builtin_cpu_supports("avx2") && ap_score_norms(xsq, 4096, floor_norms) == AP_PRUNE_OK;
  if (have_floor) {
    float sc[4096];
    for (size_t j = 0; j < 4096; j++) sc[j] = fabsf(w[j]) * floor_norms[j];
    qsort(sc, 4096, sizeof *sc, cmp_float);
    floor_t = sc[2048];
  }
#endif

  size_t copy_bytes = (size_t)512 << 20;
  double copy_gbs = copy_bandwidth(copy_bytes, repeats);
  printf("threads %d, best of %d\n", omp_get_max_threads(), repeats);
  double read_gbs = read_bandwidth(w, max_n, repeats);
  printf("baseline: streaming copy of %zu MiB: %.2f GB/s (read+write)\n", copy_bytes >> 20, copy_gbs);
  printf("context: read-only pass over the %zu MiB of weights: %.2f GB/s, ratio %.3f (the ceiling of one read)\n",
         max_n * sizeof *w >> 20, read_gbs, read_gbs / copy_gbs);
  /* the cache-resident layer: the same 4096 columns, 1024 rows (16 MiB: the last-level cache of a small server) */
  size_t cache_rows = 1024;
  double read_ms_mw = 4.0 / read_gbs; /* 4 bytes per weight: ms per million weights */
  /* both big shapes have the same columns: one cache-resident timing per step serves both */
  double cache_ms_mw[RUN_KINDS];
  for (int k = 0; k < RUN_KINDS; k++) {
    if (k == RUN_FLOOR && !have_floor) continue;
    double tc = time_kind((run_kind)k, w, xsq, cache_rows, shapes[0][1], mask, 10 * repeats);
    cache_ms_mw[k] = 1e3 * tc / ((double)(cache_rows * shapes[0][1]) / 1e6);
  }
  printf("%-24s %-12s %10s %12s %10s %8s %10s %14s %8s %11s\n", "step", "layer", "ms", "ms/Mweight", "GB/s", "ratio",
         "read/step", "in-cache ms/Mw", "bound", "step/floor");
  for (int si = 0; si < 2; si++) {
    size_t rows = shapes[si][0], cols = shapes[si][1], n = rows * cols;
    double floor_ms = 0;
    for (int k = 0; k < RUN_KINDS; k++) {
      if (k == RUN_FLOOR && !have_floor) continue;
      double t = time_kind((run_kind)k, w, xsq, rows, cols, mask, repeats);
      /* weights read once; mask bits read (counting) and written. The
       * scalar layer scope and statistic read the weights several times,
       * but their ratio is still against one read, the lower bound of any
       * method. */
      double bytes = 4.0 * (double)n + (double)n / 4.0;
      double gbs = bytes / t / 1e9;
      char shape[32];
      snprintf(shape, sizeof shape, "%zux%zu", rows, cols);
      double ms_mw = 1e3 * t / ((double)n / 1e6);
      if (k == RUN_FLOOR) floor_ms = 1e3 * t;
      printf("%-24s %-12s %10.2f %12.3f %10.2f %8.3f %10.3f %14.3f %8s %11.2f\n", kind_name[k], shape, 1e3 * t, ms_mw,
             gbs, gbs / copy_gbs, read_ms_mw / ms_mw, cache_ms_mw[k],
             cache_ms_mw[k] < 0.75 * read_ms_mw ? "memory" : "compute", floor_ms > 0 ? 1e3 * t / floor_ms : 0.0);
    }
  }
  free(w);
  free(xsq);
  free(mask);
  return 0;
}
