/*
 * select.h - linear-time order statistics (k-th smallest, percentiles)
 * without a full sort.
 *
 * Everything selects on 32-bit unsigned keys. Floats are mapped to keys by an
 * order-preserving bijection (ap_f32_key), so "k-th smallest float" is the
 * inverse map of the k-th smallest key; non-negative floats (Wanda scores,
 * magnitudes) map to keys that compare like their IEEE bit patterns.
 *
 * Algorithms:
 *   ap_select_u32_inplace: introselect, i.e. quickselect with a median-of-3
 *     pivot and a three-way (<, ==, >) partition (so runs of duplicates cost
 *     one pass), switching to a median-of-medians pivot after 2*log2(n)
 *     rounds, which bounds the worst case at O(n).
 *   ap_select_u32: the same result without touching the input: a
 *     deterministic sample of the keys brackets the answer, one pass counts
 *     the keys below the bracket and copies the few inside it, and only
 *     those are selected in place (Floyd-Rivest style). If the bracket misses
 *     it falls back to introselect on a full copy, so it is always exact.
 *
 * Percentile definition (ap_percentile_*): numpy.percentile's default
 * 'linear' method (Hyndman & Fan type 7). For n sorted values x[0..n-1] and
 * p in [0,100]: h = (n-1)*(p/100), i = floor(h), g = h - i,
 * result = x[i] + g*(x[i+1]-x[i]), written as numpy writes it
 * (x[i+1] - (x[i+1]-x[i])*(1-g) when g >= 0.5), in double precision. It
 * equals numpy.percentile(np.asarray(x, dtype=np.float64), p).
 *
 * Thread safety: all functions are reentrant (no global state).
 */
#ifndef AP_SELECT_H
#define AP_SELECT_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Order-preserving map float -> uint32 (NaN excluded) and its inverse. */
static inline uint32_t ap_f32_key(float f) {
  uint32_t u;
  memcpy(&u, &f, sizeof u);
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}
static inline float ap_key_f32(uint32_t k) {
  uint32_t u = (k & 0x80000000u) ? (k & 0x7fffffffu) : ~k;
  float f;
  memcpy(&f, &u, sizeof f);
  return f;
}

/*
 * Returns the k-th smallest (0-based) of a[0..n-1] and partially reorders a
 * so that a[k] holds it, everything before is <= and everything after is >=.
 * Preconditions (checked by the caller): a != NULL, k < n.
 */
uint32_t ap_select_u32_inplace(uint32_t *a, size_t n, size_t k);

/*
 * Returns the k-th smallest (0-based) of keys[0..n-1] without modifying keys.
 * scratch must hold n keys (it is overwritten). When not NULL, *n_less
 * receives the number of keys strictly below the result and *n_equal the
 * number equal to it, so the k+1 smallest keys are "all below, then the first
 * k+1-n_less of the equal ones".
 * Preconditions (checked by the caller): keys, scratch != NULL, k < n.
 */
uint32_t ap_select_u32(const uint32_t *keys, size_t n, size_t k, uint32_t *scratch, size_t *n_less,
                       size_t *n_equal);

/*
 * *out = k-th smallest (0-based) of a[0..n-1]; a is not modified.
 * Errors: AP_PRUNE_EINVAL (NULL, n == 0, k >= n), AP_PRUNE_ENAN (a NaN in a),
 * AP_PRUNE_ENOMEM. Allocates and frees its own scratch (4n bytes).
 */
int ap_select_f32(const float *a, size_t n, size_t k, float *out);

/*
 * Where percentile p (0..100) of n values falls in sorted order: indices lo
 * and hi (= lo+1, clipped to n-1) and the weight g in [0,1) of hi.
 * Preconditions: n > 0, 0 <= p <= 100.
 */
void ap_percentile_index(size_t n, double p, size_t *lo, size_t *hi, double *g);

/* numpy's linear interpolation between the order statistics at lo and hi. */
double ap_percentile_lerp(double x_lo, double x_hi, double g);

/*
 * *out = percentile p (0..100) of a[0..n-1] by the definition above; a is not
 * modified. Errors: AP_PRUNE_EINVAL (NULL, n == 0, p outside [0,100] or NaN),
 * AP_PRUNE_ENAN (a NaN in a), AP_PRUNE_ENOMEM.
 */
int ap_percentile_f32(const float *a, size_t n, double p, double *out);

#ifdef __cplusplus
}
#endif
#endif
