/*
 * mask.c - Wanda / magnitude / N:M mask growth (contracts in mask.h).
 *
 * Per-row selection (ap_mask_rows), the step bench/bench_mask measures
 * against a streaming copy. It must run at memory speed, so the work per
 * weight is a few vector instructions and the weights are read from memory
 * once. Two implementations give bit-identical masks:
 *
 *   AVX2 (mask_simd.c, chosen at run time; APK_CPU_SIMD=0 turns it off):
 *   1. A predicted bracket around the row's threshold. Within a layer the
 *      rows differ mostly in scale, so the threshold key minus the log of
 *      the row's mean |w| (its scale) changes little from row to row: the
 *      rows this thread has done give that offset and how far the guess
 *      tends to miss (the bracket's half-width, three mean misses, about
 *      3% of the row for Gaussian rows). The scale of a row is read while
 *      the row before it is worked on.
 *   2. One pass over the weights computes every key (|w| * norm, the same
 *      single rounding as the scalar code) and compares it with both ends
 *      of the bracket: per 64 columns, a word of the keys below it (kept
 *      for the marking) and the columns of the few inside it; it also reads
 *      the next row's scale and prefetches the row after that. No key is
 *      stored. Only rows with a finite sum of |w| and finite norms take
 *      this path: no score can be NaN there (the fallback checks).
 *   3. When rank k lies inside (about 97% of Gaussian rows), an exact
 *      select among the candidates (sampled rounds, then a sorting network)
 *      gives t, and the marking needs nothing else: the words below, the
 *      candidates below t, and the first `quota` equal to t in column order
 *      (the tie rule of the reference).
 *   4. Otherwise (the first row a thread does, short rows, a miss, rows
 *      where the predictor has backed off after misses or brackets that
 *      held much of the row): the keys of the row go to an L1-sized
 *      buffer, the same sampled rounds select on all of them (Floyd-Rivest
 *      brackets; a miss is redone into an outer bracket, heavy duplicates
 *      hand over to introselect), and a vector pass marks key < t and the
 *      ties. The pass also sums |w|, so the predictor learns from these
 *      rows too. Exact whatever the prediction; it only costs time.
 *   Pruned weights get the largest key, so they are never candidates.
 *
 *   Scalar (the reference, select_row_scalar): keys, a histogram of their
 *   top 12 bits, the bin holding rank k, an exact select inside it, and the
 *   same marking rule. tests/prune/test_mask_simd.c holds the two to
 *   identical masks, reports and errors.
 *
 * N:M (ap_mask_nm) with AVX2 for m = 2, 4, 8: the rank of each key in its
 * group from compares with rotated copies of a vector of 8 keys; one pass.
 *
 * Whole layer (ap_mask_layer) with AVX2: the same sampled bracket over the
 * flat matrix (up to 65536 keys, in runs of 8 contiguous weights so the
 * sample waits on memory once per run), one parallel pass that compacts the
 * candidates with their indices per thread range and records, per mask
 * word, the keys below the bracket; the row rounds on the candidates give
 * t; the marking then needs only that record (the words' bits below the
 * bracket, the candidates below t, and the ties shared out between the
 * thread ranges in flat order), so the weights are read once. Small layers,
 * and the rare bracket that misses, take the scalar path: a radix select
 * (three passes, score.c) and mark_layer. The profile's p10 statistic
 * (stats.c) uses the same pass without the marking record.
 */
#include "mask.h"

#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>
#ifdef __SSE2__
#include <emmintrin.h>
#endif

#include "bitmap.h"
#include "mask_simd.h"
#include "prune_error.h"
#include "score.h"
#include "select.h"

size_t ap_mask_count_target(size_t count, double t) {
  double k = floor(t * (double)count + 0.5);
  if (k < 0) return 0;
  if (k > (double)count) return count;
  return (size_t)k;
}

static size_t gcd(size_t a, size_t b) {
  while (b) {
    size_t t = a % b;
    a = b;
    b = t;
  }
  return a;
}

/* Rows per parallel block: the smallest run of rows that ends on a word boundary. */
static size_t rows_per_block(size_t cols) { return 64 / gcd(cols, 64); }

/* Optional norms from xsq; *norms stays NULL for magnitude. */
static int make_norms(const double *xsq, size_t cols, float **norms) {
  *norms = NULL;
  if (!xsq) return AP_PRUNE_OK;
  *norms = malloc(cols * sizeof **norms);
  if (!*norms) return AP_PRUNE_ENOMEM;
  int rc = ap_score_norms(xsq, cols, *norms);
  if (rc) {
    free(*norms);
    *norms = NULL;
  }
  return rc;
}

static void set_run(uint64_t *mask, size_t pos, size_t len) {
  while (len) {
    unsigned nb = len < 64 ? (unsigned)len : 64;
    ap_bitmap_or_bits(mask, pos, ~(uint64_t)0, nb);
    pos += nb;
    len -= nb;
  }
}

/*
 * Per-row selection, scalar. A row of scores sits in L1, so the cost is a
 * few cheap passes over it: keys (vectorised), a histogram of the top bits
 * of each key (exponent + 4 mantissa bits: 16 bins per octave), a scan to
 * the bin that holds the k-th key, a branch-free copy of that bin's few
 * keys, an exact select among them, and a vectorised compare that writes
 * the mask bits. No sort, and no pass depends on the data order.
 */
#define ROW_BIN_SHIFT 19
#define ROW_BINS 4096 /* keys are < 2^31: scores are non-negative, NaN keys get their sign bit cleared */

typedef struct {
  uint32_t *keys; /* cols */
  uint32_t *cand; /* cols */
  uint32_t *hist; /* ROW_BINS, all zero between rows */
} row_ws;

static int row_ws_init(row_ws *ws, size_t cols) {
  ws->keys = malloc(cols * sizeof *ws->keys);
  ws->cand = malloc(cols * sizeof *ws->cand);
  ws->hist = calloc(ROW_BINS, sizeof *ws->hist);
  return ws->keys && ws->cand && ws->hist ? AP_PRUNE_OK : AP_PRUNE_ENOMEM;
}

static void row_ws_free(row_ws *ws) {
  free(ws->keys);
  free(ws->cand);
  free(ws->hist);
}

/* Bits of keys[0..nb) that are <= lim (nb <= 64). */
static inline uint64_t le_bits(const uint32_t *keys, unsigned nb, uint32_t lim) {
  uint64_t bits = 0;
  unsigned b = 0;
#ifdef __SSE2__
  /* SSE2 compares signed lanes: flip the sign bit to compare unsigned keys */
  const __m128i bias = _mm_set1_epi32((int)0x80000000u);
  const __m128i vlim = _mm_set1_epi32((int)(lim ^ 0x80000000u));
  for (; b + 4 <= nb; b += 4) {
    __m128i v = _mm_xor_si128(_mm_loadu_si128((const __m128i *)(const void *)(keys + b)), bias);
    unsigned gt = (unsigned)_mm_movemask_ps(_mm_castsi128_ps(_mm_cmpgt_epi32(v, vlim)));
    bits |= (uint64_t)(~gt & 0xFu) << b;
  }
#endif
  for (; b < nb; b++) bits |= (uint64_t)(keys[b] <= lim) << b;
  return bits;
}

/* ORs into the mask the bits of keys <= lim. */
static void mark_le(const uint32_t *keys, size_t cols, uint32_t lim, uint64_t *mask, size_t pos) {
  for (size_t c0 = 0; c0 < cols; c0 += 64) {
    unsigned nb = cols - c0 < 64 ? (unsigned)(cols - c0) : 64;
    uint64_t bits = le_bits(keys + c0, nb, lim);
    if (bits) ap_bitmap_or_bits(mask, pos + c0, bits, nb);
  }
}

/*
 * Scalar selection for one row (the reference the AVX2 path must match):
 * prunes the `need` lowest-key surviving weights of the row, 0 < need <
 * cols - pruned. Returns 0, or AP_PRUNE_ENAN (row left unchanged).
 */
static int select_row_scalar(const float *wrow, const float *norms, size_t cols, size_t pruned, size_t need,
                             uint64_t *mask, size_t pos, row_ws *ws) {
  uint32_t *keys = ws->keys, *hist = ws->hist;
  uint32_t kmin = UINT32_MAX, kmax = 0;
  if (norms) {
#pragma omp simd reduction(min : kmin) reduction(max : kmax)
    for (size_t j = 0; j < cols; j++) {
      /* inf * 0 (an infinite weight in a dead channel) gives the default NaN,
       * whose sign bit is set: clear it, so the key still reads as NaN (above
       * +inf) and indexes inside the histogram */
      uint32_t key = ap_score_key(wrow[j], norms[j]) & 0x7fffffffu;
      keys[j] = key;
      kmin = key < kmin ? key : kmin;
      kmax = key > kmax ? key : kmax;
    }
  } else {
#pragma omp simd reduction(min : kmin) reduction(max : kmax)
    for (size_t j = 0; j < cols; j++) {
      uint32_t key = ap_score_bits(fabsf(wrow[j])); /* |w|, not |w| * 1: see nm_row */
      keys[j] = key;
      kmin = key < kmin ? key : kmin;
      kmax = key > kmax ? key : kmax;
    }
  }
  for (size_t j = 0; j < cols; j++) hist[keys[j] >> ROW_BIN_SHIFT]++;
  if (pruned) {
    /* pruned weights leave the histogram and become the largest keys */
    for (size_t c0 = 0; c0 < cols; c0 += 64) {
      unsigned nb = cols - c0 < 64 ? (unsigned)(cols - c0) : 64;
      uint64_t bits = ap_bitmap_load_bits(mask, pos + c0, nb);
      while (bits) {
        uint32_t *kp = &keys[c0 + (size_t)__builtin_ctzll(bits)];
        hist[*kp >> ROW_BIN_SHIFT]--;
        *kp = AP_SCORE_PRUNED_KEY;
        bits &= bits - 1;
      }
    }
  }
  size_t lo_bin = kmin >> ROW_BIN_SHIFT, hi_bin = kmax >> ROW_BIN_SHIFT;
  int rc = AP_PRUNE_OK;
  /* bins at and above the one of +inf may hold NaN scores: look closer */
  for (size_t b = AP_SCORE_INF_KEY >> ROW_BIN_SHIFT; b <= hi_bin && !rc; b++) {
    if (!hist[b]) continue;
    for (size_t j = 0; j < cols; j++)
      if (keys[j] > AP_SCORE_INF_KEY && keys[j] != AP_SCORE_PRUNED_KEY) rc = AP_PRUNE_ENAN;
    break;
  }
  if (rc) goto clean;

  size_t below = 0, bin = lo_bin;
  for (; below + hist[bin] < need; bin++) below += hist[bin];
  /* the bin holds a few percent of the row: find them with vector compares */
  uint32_t bin_lo = (uint32_t)(bin << ROW_BIN_SHIFT), bin_hi = bin_lo + ((1u << ROW_BIN_SHIFT) - 1);
  size_t c = 0;
  for (size_t c0 = 0; c0 < cols; c0 += 64) {
    unsigned nb = cols - c0 < 64 ? (unsigned)(cols - c0) : 64;
    uint64_t in = le_bits(keys + c0, nb, bin_hi);
    if (bin_lo) in &= ~le_bits(keys + c0, nb, bin_lo - 1);
    while (in) {
      ws->cand[c++] = keys[c0 + (size_t)__builtin_ctzll(in)];
      in &= in - 1;
    }
  }
  uint32_t t = ap_select_u32_inplace(ws->cand, c, need - 1 - below);
  size_t less = below, equal = 0;
  for (size_t j = 0; j < c; j++) {
    less += ws->cand[j] < t;
    equal += ws->cand[j] == t;
  }
  size_t quota = need - less; /* how many of the keys equal to t go: 1..equal */
  if (quota == equal) {
    mark_le(keys, cols, t, mask, pos);
  } else {
    if (less) mark_le(keys, cols, t - 1, mask, pos); /* less > 0 implies t > 0 */
    for (size_t j = 0; quota; j++) {
      if (keys[j] == t) {
        ap_bitmap_set(mask, pos + j);
        quota--;
      }
    }
  }
clean:
  memset(hist + lo_bin, 0, (hi_bin - lo_bin + 1) * sizeof *hist);
  return rc;
}

static int check_args(const float *w, size_t rows, size_t cols, const uint64_t *mask) {
  if (!w || !mask || rows == 0 || cols == 0) return AP_PRUNE_EINVAL;
  if (rows > SIZE_MAX / cols) return AP_PRUNE_EINVAL;
  return AP_PRUNE_OK;
}

static int check_target(double t) { return (t >= 0.0 && t <= 1.0) ? AP_PRUNE_OK : AP_PRUNE_EINVAL; }

int ap_prune_use_simd(int impl) {
  switch ((ap_mask_impl)impl) {
  case AP_MASK_IMPL_SCALAR: return 0;
  case AP_MASK_IMPL_SIMD: return ap_mask_simd_available() ? 1 : AP_PRUNE_EINVAL;
  case AP_MASK_IMPL_AUTO: {
    /* the CPU kernels' switch (kernels/cpu), so one variable turns every SIMD path off */
    const char *env = getenv("APK_CPU_SIMD");
    return !(env && strcmp(env, "0") == 0) && ap_mask_simd_available();
  }
  }
  return AP_PRUNE_EINVAL;
}

int ap_mask_impl_available(ap_mask_impl impl) { return ap_prune_use_simd(impl) >= 0; }

/* Rows per scheduled task: whole blocks, ~64 rows, so a thread streams through consecutive rows. */
static size_t rows_per_task(size_t block) { return block >= 64 ? block : (64 / block) * block; }

typedef struct {
  row_ws s;
  ap_simd_row_ws v;
} rows_ws;

/*
 * One row: grow its pruned count to k. Returns 0, or AP_PRUNE_ENAN.
 * *over is incremented when the row already exceeds k.
 */
static int mask_one_row(const float *wrow, const float *norms, size_t cols, size_t k, uint64_t *mask, size_t pos,
                        size_t ahead, int simd, rows_ws *ws, size_t *over) {
  size_t pruned = simd ? ap_simd_count_range(mask, pos, pos + cols) : ap_bitmap_count_range(mask, pos, pos + cols);
  if (pruned >= k) {
    *over += pruned > k;
    return AP_PRUNE_OK;
  }
  size_t need = k - pruned;
  if (need == cols - pruned) {
    set_run(mask, pos, cols);
    return AP_PRUNE_OK;
  }
  if (simd) return ap_mask_row_avx2(wrow, norms, cols, pruned, need, mask, pos, ahead, &ws->v);
  return select_row_scalar(wrow, norms, cols, pruned, need, mask, pos, &ws->s);
}

int ap_mask_rows_impl(const float *w, const double *xsq, size_t rows, size_t cols, double target, uint64_t *mask,
                      ap_mask_report *rep, ap_mask_impl impl) {
  int rc = check_args(w, rows, cols, mask);
  if (!rc) rc = check_target(target);
  if (rc) return rc;
  int simd = ap_prune_use_simd(impl);
  if (simd < 0) return simd;
  float *norms = NULL;
  rc = make_norms(xsq, cols, &norms);
  if (rc) return rc;
  size_t n = rows * cols;
  if (rep) rep->pruned_before = ap_bitmap_count(mask, n);
  size_t k = ap_mask_count_target(cols, target);
  size_t task = rows_per_task(rows_per_block(cols));
  size_t ntasks = (rows + task - 1) / task;
  size_t over = 0;
  int err = AP_PRUNE_OK;

#pragma omp parallel reduction(+ : over) reduction(min : err)
  {
    rows_ws ws = {0};
    int ok = simd ? ap_simd_row_ws_init(&ws.v, cols) == AP_PRUNE_OK : row_ws_init(&ws.s, cols) == AP_PRUNE_OK;
    if (!ok) err = AP_PRUNE_ENOMEM;
#pragma omp for schedule(dynamic, 1)
    for (size_t ti = 0; ti < ntasks; ti++) {
      if (!ok) continue;
      size_t r_end = (ti + 1) * task < rows ? (ti + 1) * task : rows;
      for (size_t r = ti * task; r < r_end; r++) {
        /* the rows after this one in the task: the SIMD kernel reads the next while it works on this one */
        int e = mask_one_row(w + r * cols, norms, cols, k, mask, r * cols, r_end - r - 1, simd, &ws, &over);
        if (e < err) err = e;
      }
    }
    if (simd) ap_simd_row_ws_free(&ws.v);
    else row_ws_free(&ws.s);
  }
  free(norms);
  if (rep) {
    rep->pruned_after = ap_bitmap_count(mask, n);
    rep->units_over = over;
  }
  return err;
}

int ap_mask_rows(const float *w, const double *xsq, size_t rows, size_t cols, double target, uint64_t *mask,
                 ap_mask_report *rep) {
  return ap_mask_rows_impl(w, xsq, rows, cols, target, mask, rep, AP_MASK_IMPL_AUTO);
}

/*
 * Marks, over the whole flat matrix, surviving weights with key < t plus the
 * first `quota` (in flat order) with key == t. Ties are split across chunks
 * by a prefix sum of per-chunk tie counts so the result is thread-invariant.
 */
static int mark_layer(const float *w, const float *norms, size_t cols, size_t n, uint32_t t, size_t quota,
                      size_t equal, uint64_t *mask) {
  size_t nw = ap_bitmap_words(n);
  size_t nchunks = nw < 1024 ? 1 : 1024;
  size_t per = (nw + nchunks - 1) / nchunks;
  size_t *ties = NULL;
  if (quota != equal) {
    ties = calloc(nchunks, sizeof *ties);
    if (!ties) return AP_PRUNE_ENOMEM;
#pragma omp parallel for schedule(static)
    for (size_t c = 0; c < nchunks; c++) {
      uint32_t keys[64];
      size_t cnt = 0;
      for (size_t wi = c * per; wi < (c + 1) * per && wi < nw; wi++) {
        size_t len = ap_score_word_keys(w, norms, n, cols, wi, keys);
        uint64_t bits = mask[wi];
        for (size_t b = 0; b < len; b++) cnt += !((bits >> b) & 1) && keys[b] == t;
      }
      ties[c] = cnt;
    }
    /* turn counts into each chunk's share of the quota, in flat order */
    size_t left = quota;
    for (size_t c = 0; c < nchunks; c++) {
      size_t take = ties[c] < left ? ties[c] : left;
      ties[c] = take;
      left -= take;
    }
  }
#pragma omp parallel for schedule(static)
  for (size_t c = 0; c < nchunks; c++) {
    uint32_t keys[64];
    size_t take = ties ? ties[c] : 0;
    for (size_t wi = c * per; wi < (c + 1) * per && wi < nw; wi++) {
      unsigned len = (unsigned)ap_score_word_keys(w, norms, n, cols, wi, keys);
      uint64_t old = mask[wi], bits;
      /* pruned weights already have their bit: OR-ing it again is harmless */
      if (!ties) {
        bits = le_bits(keys, len, t);
      } else {
        bits = t ? le_bits(keys, len, t - 1) : 0;
        for (unsigned b = 0; b < len && take; b++)
          if (keys[b] == t && !((old >> b) & 1)) {
            bits |= (uint64_t)1 << b;
            take--;
          }
      }
      mask[wi] = old | bits;
    }
  }
  free(ties);
  return AP_PRUNE_OK;
}

int ap_mask_layer_impl(const float *w, const double *xsq, size_t rows, size_t cols, double target, uint64_t *mask,
                       ap_mask_report *rep, ap_mask_impl impl) {
  int rc = check_args(w, rows, cols, mask);
  if (!rc) rc = check_target(target);
  if (rc) return rc;
  int simd = ap_prune_use_simd(impl);
  if (simd < 0) return simd;
  float *norms = NULL;
  rc = make_norms(xsq, cols, &norms);
  if (rc) return rc;
  size_t n = rows * cols;
  size_t before = ap_bitmap_count(mask, n);
  size_t k = ap_mask_count_target(n, target);
  size_t over = before > k;
  if (before < k) {
    size_t need = k - before;
    if (need == n - before) {
      set_run(mask, 0, n);
    } else {
      rc = simd ? ap_mask_layer_avx2(w, norms, mask, rows, cols, need - 1) : AP_SIMD_DECLINE;
      if (rc == AP_SIMD_DECLINE) {
        uint32_t t;
        size_t less, equal;
        rc = ap_score_select_layer(w, norms, mask, rows, cols, need - 1, &t, &less, &equal);
        /* pruned weights never compare below t: their bits are already set, and
         * OR-ing them again is harmless, so only ties need the mask */
        if (!rc) rc = mark_layer(w, norms, cols, n, t, need - less, equal, mask);
      }
    }
  }
  free(norms);
  if (rep) {
    rep->pruned_before = before;
    rep->pruned_after = ap_bitmap_count(mask, n);
    rep->units_over = over;
  }
  return rc;
}

int ap_mask_layer(const float *w, const double *xsq, size_t rows, size_t cols, double target, uint64_t *mask,
                  ap_mask_report *rep) {
  return ap_mask_layer_impl(w, xsq, rows, cols, target, mask, rep, AP_MASK_IMPL_AUTO);
}

static int check_nm(unsigned n, unsigned m) { return (m >= 1 && m <= 64 && n <= m) ? AP_PRUNE_OK : AP_PRUNE_EINVAL; }

static inline unsigned popcount64(uint64_t x) {
  /* SWAR: the build does not assume a POPCNT instruction */
  x = x - ((x >> 1) & 0x5555555555555555ull);
  x = (x & 0x3333333333333333ull) + ((x >> 2) & 0x3333333333333333ull);
  x = (x + (x >> 4)) & 0x0f0f0f0f0f0f0f0full;
  return (unsigned)((x * 0x0101010101010101ull) >> 56);
}

/*
 * Bits of the `need` lowest keys of one group of t <= 64 keys, ties to the
 * lower index: rank[i] counts the keys ordered before key i, one comparison
 * per pair. Pruned weights carry AP_SCORE_PRUNED_KEY and rank last, so they
 * are never chosen (need <= surviving count). Inlined with a constant t for
 * 2:4 and 4:8 so the ranks live in registers.
 */
static inline uint64_t nm_group_bits(const uint32_t *keys, unsigned t, unsigned need) {
  unsigned rank[64];
  for (unsigned i = 0; i < t; i++) rank[i] = 0;
  for (unsigned i = 0; i < t; i++)
    for (unsigned j = i + 1; j < t; j++) {
      unsigned j_first = keys[j] < keys[i];
      rank[i] += j_first;
      rank[j] += 1u - j_first;
    }
  uint64_t bits = 0;
  for (unsigned i = 0; i < t; i++) bits |= (uint64_t)(rank[i] < need) << i;
  return bits;
}

/* The same for groups of 4 (2:4, 1:4, 3:4), written out so it stays in registers. */
static inline uint64_t nm4_group_bits(const uint32_t *k, unsigned need) {
  uint32_t a = k[0], b = k[1], c = k[2], d = k[3];
  unsigned r0 = (b < a) + (c < a) + (d < a);
  unsigned r1 = (a <= b) + (c < b) + (d < b);
  unsigned r2 = (a <= c) + (b <= c) + (d < c);
  unsigned r3 = (a <= d) + (b <= d) + (c <= d);
  return (uint64_t)((r0 < need) | (r1 < need) << 1 | (r2 < need) << 2 | (r3 < need) << 3);
}

/*
 * One row of N:M, from column `from` (a multiple of m) on. Columns go in
 * chunks of whole groups that fit a 64-bit mask word, so the mask is read
 * and written once per chunk. Returns 1 when a surviving weight of a group
 * that needs pruning scores NaN.
 */
static inline int nm_row(const float *wrow, const float *norms, size_t from, size_t cols, unsigned n, unsigned m,
                         uint64_t *mask, size_t pos, size_t *over) {
  uint32_t keys[64];
  const size_t chunk = (64 / m) * m;
  const uint64_t gmask = m == 64 ? ~(uint64_t)0 : (((uint64_t)1 << m) - 1);
  int nan = 0;
  for (size_t c0 = from; c0 < cols; c0 += chunk) {
    unsigned nb = cols - c0 < chunk ? (unsigned)(cols - c0) : (unsigned)chunk;
    uint64_t old = ap_bitmap_load_bits(mask, pos + c0, nb), bits = 0;
    const float *wc = wrow + c0;
    if (norms) {
      const float *nc = norms + c0;
#pragma omp simd
      for (unsigned i = 0; i < nb; i++) keys[i] = ap_score_key(wc[i], nc[i]);
    } else {
#pragma omp simd
      /* |w| itself: |w| * 1.0f would quiet a signalling NaN, or not, as the
       * optimiser folds it, and NaN keys order the bits of a NaN group */
      for (unsigned i = 0; i < nb; i++) keys[i] = ap_score_bits(fabsf(wc[i]));
    }
    for (uint64_t p = old; p; p &= p - 1) keys[__builtin_ctzll(p)] = AP_SCORE_PRUNED_KEY;
    for (unsigned g0 = 0; g0 < nb; g0 += m) {
      unsigned t = nb - g0 < m ? nb - g0 : m;
      unsigned target = n < t ? n : t;
      unsigned have = old ? popcount64((old >> g0) & gmask) : 0;
      if (have >= target) {
        *over += have > target;
        continue;
      }
      if (t == 4) bits |= nm4_group_bits(keys + g0, target - have) << g0;
      else bits |= nm_group_bits(keys + g0, t, target - have) << g0;
      /* NaN keys sort above every score but below the pruned marker */
      for (unsigned i = 0; i < t; i++)
        nan |= (keys[g0 + i] > AP_SCORE_INF_KEY) & (keys[g0 + i] != AP_SCORE_PRUNED_KEY);
    }
    if (bits) ap_bitmap_or_bits(mask, pos + c0, bits, nb);
  }
  return nan;
}

int ap_mask_nm_impl(const float *w, const double *xsq, size_t rows, size_t cols, unsigned n, unsigned m,
                    uint64_t *mask, ap_mask_report *rep, ap_mask_impl impl) {
  int rc = check_args(w, rows, cols, mask);
  if (!rc) rc = check_nm(n, m);
  if (rc) return rc;
  int simd = ap_prune_use_simd(impl);
  if (simd < 0) return simd;
  /* the vector kernel takes groups that tile a vector of 8 keys; the rest of a row stays scalar */
  size_t cols8 = simd && (m == 2 || m == 4 || m == 8) ? cols & ~(size_t)7 : 0;
  float *norms = NULL;
  rc = make_norms(xsq, cols, &norms);
  if (rc) return rc;
  size_t total = rows * cols;
  if (rep) rep->pruned_before = ap_bitmap_count(mask, total);
  size_t block = rows_per_block(cols);
  size_t nblocks = (rows + block - 1) / block;
  size_t over = 0;
  int nan = 0;

#pragma omp parallel for schedule(static) reduction(+ : over) reduction(| : nan)
  for (size_t bi = 0; bi < nblocks; bi++) {
    size_t r_end = (bi + 1) * block < rows ? (bi + 1) * block : rows;
    for (size_t r = bi * block; r < r_end; r++) {
      if (cols8) nan |= ap_mask_nm_row_avx2(w + r * cols, norms, cols8, n, m, mask, r * cols, &over);
      if (cols8 < cols) nan |= nm_row(w + r * cols, norms, cols8, cols, n, m, mask, r * cols, &over);
    }
  }
  free(norms);
  if (rep) {
    rep->pruned_after = ap_bitmap_count(mask, total);
    rep->units_over = over;
  }
  return nan ? AP_PRUNE_ENAN : AP_PRUNE_OK;
}

int ap_mask_nm(const float *w, const double *xsq, size_t rows, size_t cols, unsigned n, unsigned m,
               uint64_t *mask, ap_mask_report *rep) {
  return ap_mask_nm_impl(w, xsq, rows, cols, n, m, mask, rep, AP_MASK_IMPL_AUTO);
}

int ap_mask_check_nm(const uint64_t *mask, size_t rows, size_t cols, unsigned n, unsigned m,
                     size_t *short_groups, size_t *over_groups) {
  if (!mask || rows == 0 || cols == 0 || check_nm(n, m)) return AP_PRUNE_EINVAL;
  size_t shrt = 0, over = 0;
#pragma omp parallel for schedule(static) reduction(+ : shrt, over)
  for (size_t r = 0; r < rows; r++) {
    for (size_t c0 = 0; c0 < cols; c0 += m) {
      unsigned t = cols - c0 < m ? (unsigned)(cols - c0) : m;
      unsigned target = n < t ? n : t;
      unsigned have = (unsigned)__builtin_popcountll(ap_bitmap_load_bits(mask, r * cols + c0, t));
      shrt += have < target;
      over += have > target;
    }
  }
  if (short_groups) *short_groups = shrt;
  if (over_groups) *over_groups = over;
  return AP_PRUNE_OK;
}
