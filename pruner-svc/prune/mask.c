/* mask.c - Wanda / magnitude / N:M mask growth (contracts in mask.h). */
#include "mask.h"

#include <math.h>
#include <omp.h>
#include <stdlib.h>

#include "bitmap.h"
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
 * Keys of one row into keys[0..cols): the score, or AP_SCORE_PRUNED_KEY where
 * the mask already prunes. Returns 1 when a surviving weight scores NaN.
 */
static int row_keys(const float *wrow, const float *norms, size_t cols, const uint64_t *mask, size_t pos,
                    size_t pruned, uint32_t *keys) {
  uint32_t nan = 0;
  if (norms) {
    for (size_t j = 0; j < cols; j++) keys[j] = ap_score_key(wrow[j], norms[j]);
  } else {
    for (size_t j = 0; j < cols; j++) keys[j] = ap_score_key(wrow[j], 1.0f);
  }
  if (pruned) {
    for (size_t c0 = 0; c0 < cols; c0 += 64) {
      unsigned nb = cols - c0 < 64 ? (unsigned)(cols - c0) : 64;
      uint64_t bits = ap_bitmap_load_bits(mask, pos + c0, nb);
      while (bits) {
        keys[c0 + (size_t)__builtin_ctzll(bits)] = AP_SCORE_PRUNED_KEY;
        bits &= bits - 1;
      }
    }
  }
  for (size_t j = 0; j < cols; j++) nan |= (keys[j] > AP_SCORE_INF_KEY) & (keys[j] != AP_SCORE_PRUNED_KEY);
  return nan != 0;
}

/* ORs into the mask the bits of keys < t, or <= t when `inclusive`. */
static void mark_below(const uint32_t *keys, size_t cols, uint32_t t, int inclusive, uint64_t *mask, size_t pos) {
  uint32_t lim = inclusive ? t : t - 1; /* t >= 1 whenever !inclusive is used with a pruning need */
  for (size_t c0 = 0; c0 < cols; c0 += 64) {
    unsigned nb = cols - c0 < 64 ? (unsigned)(cols - c0) : 64;
    uint64_t bits = 0;
    for (unsigned b = 0; b < nb; b++) bits |= (uint64_t)(keys[c0 + b] <= lim) << b;
    if (bits) ap_bitmap_or_bits(mask, pos + c0, bits, nb);
  }
}

/*
 * One row: grow its pruned count to k. Returns 0, or AP_PRUNE_ENAN.
 * *over is incremented when the row already exceeds k.
 */
static int mask_one_row(const float *wrow, const float *norms, size_t cols, size_t k, uint64_t *mask, size_t pos,
                        uint32_t *keys, uint32_t *scratch, size_t *over) {
  size_t pruned = ap_bitmap_count_range(mask, pos, pos + cols);
  if (pruned >= k) {
    *over += pruned > k;
    return AP_PRUNE_OK;
  }
  size_t need = k - pruned;
  if (need == cols - pruned) {
    set_run(mask, pos, cols);
    return AP_PRUNE_OK;
  }
  if (row_keys(wrow, norms, cols, mask, pos, pruned, keys)) return AP_PRUNE_ENAN;
  size_t less, equal;
  uint32_t t = ap_select_u32(keys, cols, need - 1, scratch, &less, &equal);
  size_t quota = need - less; /* how many of the keys equal to t go: 1..equal */
  if (quota == equal) {
    mark_below(keys, cols, t, 1, mask, pos);
    return AP_PRUNE_OK;
  }
  if (less) mark_below(keys, cols, t, 0, mask, pos);
  for (size_t j = 0; quota; j++) {
    if (keys[j] == t) {
      ap_bitmap_set(mask, pos + j);
      quota--;
    }
  }
  return AP_PRUNE_OK;
}

static int check_args(const float *w, size_t rows, size_t cols, const uint64_t *mask) {
  if (!w || !mask || rows == 0 || cols == 0) return AP_PRUNE_EINVAL;
  if (rows > SIZE_MAX / cols) return AP_PRUNE_EINVAL;
  return AP_PRUNE_OK;
}

static int check_target(double t) { return (t >= 0.0 && t <= 1.0) ? AP_PRUNE_OK : AP_PRUNE_EINVAL; }

int ap_mask_rows(const float *w, const double *xsq, size_t rows, size_t cols, double target, uint64_t *mask,
                 ap_mask_report *rep) {
  int rc = check_args(w, rows, cols, mask);
  if (!rc) rc = check_target(target);
  if (rc) return rc;
  float *norms = NULL;
  rc = make_norms(xsq, cols, &norms);
  if (rc) return rc;
  size_t n = rows * cols;
  if (rep) rep->pruned_before = ap_bitmap_count(mask, n);
  size_t k = ap_mask_count_target(cols, target);
  size_t block = rows_per_block(cols);
  size_t nblocks = (rows + block - 1) / block;
  size_t over = 0;
  int err = AP_PRUNE_OK;

#pragma omp parallel reduction(+ : over) reduction(min : err)
  {
    uint32_t *keys = malloc(2 * cols * sizeof *keys);
    if (!keys) err = AP_PRUNE_ENOMEM;
#pragma omp for schedule(dynamic, 1)
    for (size_t bi = 0; bi < nblocks; bi++) {
      if (!keys) continue;
      size_t r_end = (bi + 1) * block < rows ? (bi + 1) * block : rows;
      for (size_t r = bi * block; r < r_end; r++) {
        int e = mask_one_row(w + r * cols, norms, cols, k, mask, r * cols, keys, keys + cols, &over);
        if (e < err) err = e;
      }
    }
    free(keys);
  }
  free(norms);
  if (rep) {
    rep->pruned_after = ap_bitmap_count(mask, n);
    rep->units_over = over;
  }
  return err;
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
      size_t cnt = 0;
      for (size_t wi = c * per; wi < (c + 1) * per && wi < nw; wi++) {
        size_t base = wi * 64, len = n - base < 64 ? n - base : 64;
        size_t col = base % cols;
        uint64_t bits = mask[wi];
        for (size_t b = 0; b < len; b++, col = col + 1 == cols ? 0 : col + 1)
          cnt += !((bits >> b) & 1) && ap_score_key(w[base + b], norms ? norms[col] : 1.0f) == t;
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
    size_t take = ties ? ties[c] : 0;
    for (size_t wi = c * per; wi < (c + 1) * per && wi < nw; wi++) {
      size_t base = wi * 64, len = n - base < 64 ? n - base : 64;
      size_t col = base % cols;
      uint64_t old = mask[wi], bits = 0;
      for (size_t b = 0; b < len; b++, col = col + 1 == cols ? 0 : col + 1) {
        uint32_t key = ap_score_key(w[base + b], norms ? norms[col] : 1.0f);
        if (key < t || (!ties && key == t)) {
          bits |= (uint64_t)1 << b;
        } else if (key == t && take && !((old >> b) & 1)) {
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

int ap_mask_layer(const float *w, const double *xsq, size_t rows, size_t cols, double target, uint64_t *mask,
                  ap_mask_report *rep) {
  int rc = check_args(w, rows, cols, mask);
  if (!rc) rc = check_target(target);
  if (rc) return rc;
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
      uint32_t t;
      size_t less, equal;
      rc = ap_score_select_layer(w, norms, mask, rows, cols, need - 1, &t, &less, &equal);
      /* pruned weights never compare below t: their bits are already set, and
       * OR-ing them again is harmless, so only ties need the mask */
      if (!rc) rc = mark_layer(w, norms, cols, n, t, need - less, equal, mask);
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

static int check_nm(unsigned n, unsigned m) { return (m >= 1 && m <= 64 && n <= m) ? AP_PRUNE_OK : AP_PRUNE_EINVAL; }

/*
 * One group of t <= 64 weights at bit `pos`: prune its `need` lowest surviving
 * keys, ties to the lower index. Rank of i = keys ordered before it.
 */
static void mask_group(const uint32_t *keys, unsigned t, unsigned need, uint64_t pruned, uint64_t *mask,
                       size_t pos) {
  uint64_t bits = 0;
  for (unsigned i = 0; i < t; i++) {
    if ((pruned >> i) & 1) continue;
    unsigned rank = 0;
    for (unsigned j = 0; j < t; j++) rank += (keys[j] < keys[i]) | ((keys[j] == keys[i]) & (j < i));
    bits |= (uint64_t)(rank < need) << i;
  }
  ap_bitmap_or_bits(mask, pos, bits, t);
}

int ap_mask_nm(const float *w, const double *xsq, size_t rows, size_t cols, unsigned n, unsigned m,
               uint64_t *mask, ap_mask_report *rep) {
  int rc = check_args(w, rows, cols, mask);
  if (!rc) rc = check_nm(n, m);
  if (rc) return rc;
  float *norms = NULL;
  rc = make_norms(xsq, cols, &norms);
  if (rc) return rc;
  size_t total = rows * cols;
  if (rep) rep->pruned_before = ap_bitmap_count(mask, total);
  size_t block = rows_per_block(cols);
  size_t nblocks = (rows + block - 1) / block;
  size_t over = 0;
  int nan = 0;

#pragma omp parallel for schedule(static) reduction(+ : over) reduction(| : nan) if (n > 0)
  for (size_t bi = 0; bi < nblocks; bi++) {
    uint32_t keys[64];
    size_t r_end = (bi + 1) * block < rows ? (bi + 1) * block : rows;
    for (size_t r = bi * block; r < r_end; r++) {
      const float *wrow = w + r * cols;
      for (size_t c0 = 0; c0 < cols; c0 += m) {
        unsigned t = cols - c0 < m ? (unsigned)(cols - c0) : m;
        unsigned target = n < t ? n : t;
        size_t pos = r * cols + c0;
        uint64_t pruned = ap_bitmap_load_bits(mask, pos, t);
        unsigned have = (unsigned)__builtin_popcountll(pruned);
        if (have >= target) {
          over += have > target;
          continue;
        }
        for (unsigned i = 0; i < t; i++) {
          uint32_t key = ap_score_key(wrow[c0 + i], norms ? norms[c0 + i] : 1.0f);
          keys[i] = ((pruned >> i) & 1) ? AP_SCORE_PRUNED_KEY : key;
          nan |= !((pruned >> i) & 1) && key > AP_SCORE_INF_KEY;
        }
        mask_group(keys, t, target - have, pruned, mask, pos);
      }
    }
  }
  free(norms);
  if (rep) {
    rep->pruned_after = ap_bitmap_count(mask, total);
    rep->units_over = over;
  }
  return nan ? AP_PRUNE_ENAN : AP_PRUNE_OK;
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
