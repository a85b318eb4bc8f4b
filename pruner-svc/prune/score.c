/* score.c - score keys and the layer-wide radix select (see score.h). */
#include "score.h"

#include <omp.h>
#include <stdlib.h>

#include "bitmap.h"
#include "prune_error.h"

/* Three digits of 12, 10 and 10 bits: each histogram fits in L1 (16 KiB at most). */
#define RADIX_BINS 4096
static const int digit_shift[3] = {20, 10, 0};
static const int digit_bits[3] = {12, 10, 10};

int ap_score_norms(const double *xsq, size_t cols, float *norms) {
  if (!xsq || !norms || cols == 0) return AP_PRUNE_EINVAL;
  for (size_t j = 0; j < cols; j++) {
    if (!(xsq[j] >= 0.0)) return AP_PRUNE_ENAN; /* also catches NaN */
    norms[j] = (float)sqrt(xsq[j]);
  }
  return AP_PRUNE_OK;
}

/*
 * Histogram of digit d of the keys of surviving weights whose higher digits
 * equal `prefix` (d = 0: all), summed over threads into total[]. Returns 1
 * when a NaN score was seen, -1 on allocation failure.
 */
static int radix_histogram(const float *w, const float *norms, const uint64_t *mask, size_t n, size_t cols, int d,
                           uint32_t prefix, size_t *total) {
  int nan = 0;
  int threads = omp_get_max_threads();
  if (n < ((size_t)1 << 18)) threads = 1;
  size_t bins = (size_t)1 << digit_bits[d];
  uint32_t *hists = calloc((size_t)threads * bins, sizeof *hists);
  if (!hists) return -1;
  size_t nw = ap_bitmap_words(n);
  int shift = digit_shift[d], up = shift + digit_bits[d];
  uint32_t dmask = (uint32_t)bins - 1;
#pragma omp parallel num_threads(threads) reduction(| : nan)
  {
    uint32_t *h = hists + (size_t)omp_get_thread_num() * bins;
    uint32_t keys[64];
#pragma omp for schedule(static)
    for (size_t wi = 0; wi < nw; wi++) {
      uint64_t bits = mask ? mask[wi] : 0;
      size_t len = ap_score_word_keys(w, norms, n, cols, wi, keys);
      for (size_t b = 0; b < len; b++) {
        uint32_t k = keys[b];
        if ((bits >> b) & 1) continue;
        nan |= k > AP_SCORE_INF_KEY;
        if (d > 0 && (k >> up) != prefix) continue;
        h[(k >> shift) & dmask]++;
      }
    }
  }
  for (size_t b = 0; b < bins; b++) {
    size_t s = 0;
    for (int t = 0; t < threads; t++) s += hists[(size_t)t * bins + b];
    total[b] = s;
  }
  free(hists);
  return nan;
}

int ap_score_select_layer(const float *w, const float *norms, const uint64_t *mask, size_t rows, size_t cols,
                          size_t k, uint32_t *key, size_t *n_less, size_t *n_equal) {
  if (!w || !key || rows == 0 || cols == 0) return AP_PRUNE_EINVAL;
  size_t n = rows * cols;
  size_t *hist = malloc(RADIX_BINS * sizeof *hist);
  if (!hist) return AP_PRUNE_ENOMEM;
  int rc = AP_PRUNE_OK;
  size_t below = 0;
  uint32_t prefix = 0;
  for (int d = 0; d < 3; d++) {
    int nan = radix_histogram(w, norms, mask, n, cols, d, prefix, hist);
    if (nan < 0) { rc = AP_PRUNE_ENOMEM; goto done; }
    if (nan) { rc = AP_PRUNE_ENAN; goto done; }
    size_t bins = (size_t)1 << digit_bits[d], b = 0;
    for (; b < bins; b++) {
      if (below + hist[b] > k) break;
      below += hist[b];
    }
    if (b == bins) { rc = AP_PRUNE_EINVAL; goto done; } /* k >= survivors */
    prefix = prefix << digit_bits[d] | (uint32_t)b;
    if (d == 2 && n_equal) *n_equal = hist[b];
  }
  *key = prefix;
  if (n_less) *n_less = below;
done:
  free(hist);
  return rc;
}
