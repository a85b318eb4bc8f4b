/*
 * score.h - pruning scores of one layer and their order statistics.
 *
 * A layer is `rows` (output features) x `cols` (input features) row-major F32
 * weights w (the original, unpruned weights), a per-input-column FP64 sum of
 * squares of the activations xsq (||X_j||_2 = sqrt(xsq[j])), and an optional
 * mask (bitmap.h, 1 = pruned).
 *
 * Scores, in float exactly as below so that ties and order are reproducible
 * (and identical to torch's float32 arithmetic on the same inputs):
 *   Wanda:     score_ij = fabsf(w_ij) * norm_j, norm_j = (float)sqrt(xsq[j])
 *   magnitude: score_ij = fabsf(w_ij)                    (norms == NULL)
 * Only ||X_j|| up to a common factor matters for masks (rows are ranked
 * within themselves), so xsq may be a sum or a mean of squares; the
 * percentile statistic s (stats.h) does depend on the scale.
 *
 * Keys: a score is non-negative, so its IEEE bit pattern read as uint32 is
 * an order-preserving key (ap_score_key); pruned weights get
 * AP_SCORE_PRUNED_KEY, above every finite or infinite score. A key above
 * AP_SCORE_INF_KEY (and not the pruned marker) means NaN.
 *
 * Thread safety: reentrant; the layer-wide functions use OpenMP internally.
 */
#ifndef AP_SCORE_H
#define AP_SCORE_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#ifdef __cplusplus
extern "C" {
#endif

/* One layer as the statistics see it (all pointers borrowed, read-only). */
typedef struct {
  const float *w;        /* rows*cols original weights, row-major */
  const double *xsq;     /* cols sums of squares of the input activations; NULL = magnitude scores */
  const uint64_t *mask;  /* rows*cols bits, 1 = pruned; NULL = dense */
  size_t rows, cols;
} ap_layer_ref;

#define AP_SCORE_INF_KEY 0x7f800000u
#define AP_SCORE_PRUNED_KEY 0xffffffffu

static inline uint32_t ap_score_bits(float s) {
  uint32_t u;
  memcpy(&u, &s, sizeof u);
  return u;
}
static inline float ap_score_from_key(uint32_t k) {
  float f;
  memcpy(&f, &k, sizeof f);
  return f;
}
static inline uint32_t ap_score_key(float w, float norm) { return ap_score_bits(fabsf(w) * norm); }

/*
 * Keys of the (up to 64) weights of mask word wi of a flat n-weight layer
 * with `cols` columns into keys[] (norms NULL: magnitude); returns how many.
 * Vectorised when the word does not wrap to the next row.
 */
static inline size_t ap_score_word_keys(const float *w, const float *norms, size_t n, size_t cols, size_t wi,
                                        uint32_t *keys) {
  size_t base = wi * 64, len = n - base < 64 ? n - base : 64;
  size_t col = base % cols;
  if (!norms) {
#pragma omp simd
    for (size_t b = 0; b < len; b++) keys[b] = ap_score_key(w[base + b], 1.0f);
  } else if (col + len <= cols) {
#pragma omp simd
    for (size_t b = 0; b < len; b++) keys[b] = ap_score_key(w[base + b], norms[col + b]);
  } else {
    for (size_t b = 0; b < len; b++, col = col + 1 == cols ? 0 : col + 1)
      keys[b] = ap_score_key(w[base + b], norms[col]);
  }
  return len;
}

/*
 * norms[j] = (float)sqrt(xsq[j]) for j < cols (the caller owns both arrays).
 * Errors: AP_PRUNE_EINVAL (NULL, cols == 0), AP_PRUNE_ENAN (a NaN or
 * negative xsq[j]).
 */
int ap_score_norms(const double *xsq, size_t cols, float *norms);

/*
 * Layer-wide order statistic: *key = the k-th smallest (0-based) score key
 * among the surviving weights of the whole matrix (mask NULL = all survive);
 * norms NULL = magnitude scores. Optional *n_less / *n_equal: surviving
 * weights with a key below / equal to *key. Three parallel radix passes
 * (digits of 12, 10 and 10 bits, histograms in L1) over w: linear, no
 * buffer of scores.
 * Errors: AP_PRUNE_EINVAL (NULL w or key, zero size, k >= survivors),
 * AP_PRUNE_ENAN (a NaN score among the survivors), AP_PRUNE_ENOMEM.
 */
int ap_score_select_layer(const float *w, const float *norms, const uint64_t *mask, size_t rows, size_t cols,
                          size_t k, uint32_t *key, size_t *n_less, size_t *n_equal);

#ifdef __cplusplus
}
#endif
#endif
