/* score.c - score keys and the layer-wide radix select (see score.h). */
#include "score.h"

#include <omp.h>
#include <stdlib.h>

#include "bitmap.h"
#include "prune_error.h"

#define RADIX_BINS 65536

int ap_score_norms(const double *xsq, size_t cols, float *norms) {
  if (!xsq || !norms || cols == 0) return AP_PRUNE_EINVAL;
  for (size_t j = 0; j < cols; j++) {
    if (!(xsq[j] >= 0.0)) return AP_PRUNE_ENAN; /* also catches NaN */
    norms[j] = (float)sqrt(xsq[j]);
  }
  return AP_PRUNE_OK;
}

/*
 * Histogram of (key >> shift) & 0xffff over surviving weights whose
 * key >> 16 equals `prefix` (prefix < 0: all), summed over threads into
 * total[RADIX_BINS]. Returns 1 when a NaN score was seen.
 */
static int radix_histogram(const float *w, const float *norms, const uint64_t *mask, size_t n, size_t cols,
                           int shift, long prefix, size_t *total) {
  int nan = 0;
  int threads = omp_get_max_threads();
  if (n < ((size_t)1 << 18)) threads = 1;
  uint32_t *hists = calloc((size_t)threads * RADIX_BINS, sizeof *hists);
  if (!hists) return -1;
  size_t nw = ap_bitmap_words(n);
#pragma omp parallel num_threads(threads) reduction(| : nan)
  {
    uint32_t *h = hists + (size_t)omp_get_thread_num() * RADIX_BINS;
#pragma omp for schedule(static)
    for (size_t wi = 0; wi < nw; wi++) {
      uint64_t bits = mask ? mask[wi] : 0;
      size_t base = wi * 64, len = n - base < 64 ? n - base : 64;
      size_t col = base % cols; /* one division per word, then a wrapping counter */
      for (size_t b = 0; b < len; b++, col = col + 1 == cols ? 0 : col + 1) {
        if ((bits >> b) & 1) continue;
        uint32_t k = ap_score_key(w[base + b], norms ? norms[col] : 1.0f);
        nan |= k > AP_SCORE_INF_KEY;
        if (prefix >= 0 && (long)(k >> 16) != prefix) continue;
        h[(k >> shift) & 0xffff]++;
      }
    }
  }
  for (size_t b = 0; b < RADIX_BINS; b++) {
    size_t s = 0;
    for (int t = 0; t < threads; t++) s += hists[(size_t)t * RADIX_BINS + b];
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

  int nan = radix_histogram(w, norms, mask, n, cols, 16, -1, hist);
  if (nan < 0) { rc = AP_PRUNE_ENOMEM; goto done; }
  if (nan) { rc = AP_PRUNE_ENAN; goto done; }
  size_t below = 0, hi_bin = 0;
  for (; hi_bin < RADIX_BINS; hi_bin++) {
    if (below + hist[hi_bin] > k) break;
    below += hist[hi_bin];
  }
  if (hi_bin == RADIX_BINS) { rc = AP_PRUNE_EINVAL; goto done; } /* k >= survivors */

  if (radix_histogram(w, norms, mask, n, cols, 0, (long)hi_bin, hist) < 0) { rc = AP_PRUNE_ENOMEM; goto done; }
  size_t lo_bin = 0;
  for (; lo_bin < RADIX_BINS; lo_bin++) {
    if (below + hist[lo_bin] > k) break;
    below += hist[lo_bin];
  }
  *key = (uint32_t)(hi_bin << 16 | lo_bin);
  if (n_less) *n_less = below;
  if (n_equal) *n_equal = hist[lo_bin];
done:
  free(hist);
  return rc;
}
