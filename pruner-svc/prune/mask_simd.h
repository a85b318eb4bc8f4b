/*
 * mask_simd.h - the AVX2 kernels behind ap_mask_rows, ap_mask_layer and
 * ap_mask_nm (internal to ap_prune; the contracts are those of mask.h).
 *
 * mask.c keeps the portable scalar implementation and calls these only when
 * ap_mask_simd_available() says the CPU has the instructions. Both produce
 * bit-identical masks: same float score (one IEEE multiply, |w| * norm, no
 * contraction possible), same order (score, then column), same tie rule.
 *
 * Keys inside the row and layer kernels: a surviving weight's score bits
 * (sign bit clear, so signed 32-bit compares order them), a pruned weight
 * AP_SIMD_PRUNED_KEY (INT32_MAX, above every score; a NaN score is reported
 * before any key is ordered, so the two never meet). The N:M kernel orders
 * the scalar code's unsigned keys instead, NaN included (mask_simd.c).
 */
#ifndef AP_MASK_SIMD_H
#define AP_MASK_SIMD_H

#include <stddef.h>
#include <stdint.h>

#define AP_SIMD_PRUNED_KEY 0x7fffffffu

/* Returned by a kernel that leaves the case to the scalar path (not an error). */
#define AP_SIMD_DECLINE 1

/* 1 when this build and CPU run the AVX2 kernels (AVX2 and POPCNT), else 0. */
int ap_mask_simd_available(void);

/*
 * Whether the AVX2 kernels run for an ap_mask_impl (mask.h; an int here so
 * this header needs no other): 1 yes, 0 no, AP_PRUNE_EINVAL for SIMD on a
 * machine without it or an unknown value. AUTO honours APK_CPU_SIMD=0.
 * Defined in mask.c; stats.c asks it too.
 */
int ap_prune_use_simd(int impl);

/*
 * Scratch of one thread for ap_mask_row_avx2, and the threshold predictor it
 * learns over the rows this thread masks in one call (see mask_simd.c).
 */
typedef struct {
  uint32_t *keys, *a, *b; /* cols + 8 keys each: the row's keys, selection ping-pong */
  uint32_t *ck, *ci;      /* cols + 8 each: candidates inside the predicted bracket: keys, columns */
  uint64_t *bw;           /* cols / 64 + 1 words: per word of the row, its keys below the bracket */
  float *ones;            /* cols norms of 1 (magnitude scores through the Wanda pass) */
  size_t seen;            /* rows learned from (0: no prediction yet) */
  double off, dev;        /* threshold key - 2^23 log2 of the row's mean |w|, and the mean miss of that guess */
  const float *next_row;  /* the row whose scale the last pass read ahead (NULL: none) */
  double next_scale;      /* its row_scale */
  size_t hits, misses;    /* rows whose predicted bracket held the threshold, or not (tests, tuning) */
  size_t streak, skip;    /* misses in a row; rows left before the next prediction */
  const float *norms_seen; /* the norms last checked for finiteness (NULL: magnitude) */
  int norms_checked;      /* whether norms_seen holds a checked array */
  int norms_finite;       /* whether all of its norms are finite */
} ap_simd_row_ws;

/*
 * Allocates / frees the scratch; init also resets the predictor (one call
 * of ap_mask_rows masks one layer: what it learns is that layer's).
 * init returns AP_PRUNE_OK or AP_PRUNE_ENOMEM (free is then still safe).
 */
int ap_simd_row_ws_init(ap_simd_row_ws *ws, size_t cols);
void ap_simd_row_ws_free(ap_simd_row_ws *ws);

/*
 * Sorts x[0..s) ascending, s = 32 or 64, every key <= INT32_MAX: the
 * sample sorter of the selection, here for its test. AVX2 required (call it
 * only when ap_mask_simd_available()).
 */
void ap_simd_sort_sample(uint32_t *x, size_t s);

/* Set bits among bits [begin, end) of a mask (ap_bitmap_count_range with POPCNT). */
size_t ap_simd_count_range(const uint64_t *m, size_t begin, size_t end);

/*
 * One row of ap_mask_rows: prunes the `need` lowest-key surviving weights of
 * wrow[0..cols) (mask bits pos..pos+cols, `pruned` of them set on entry,
 * 0 < need < cols - pruned). norms NULL = magnitude. ahead: how many rows
 * of cols weights follow wrow in memory that the caller handles next, in
 * order, with the same ws: the kernel reads the next one and prefetches
 * the one after while it works on this row (a stream the memory keeps up
 * with), and the next call then finds its row's scale ready. Returns
 * AP_PRUNE_OK, or AP_PRUNE_ENAN (a surviving weight scores NaN; the row
 * is left unchanged).
 */
int ap_mask_row_avx2(const float *wrow, const float *norms, size_t cols, size_t pruned, size_t need,
                     uint64_t *mask, size_t pos, size_t ahead, ap_simd_row_ws *ws);

/*
 * The selection and marking of ap_mask_layer (k = the rank, among the
 * surviving weights, of the last one to prune; k below their number), with
 * the same result, from one pass over the weights; OpenMP inside. Returns
 * AP_PRUNE_OK, AP_PRUNE_ENAN (mask untouched), or AP_SIMD_DECLINE, mask
 * untouched, for small layers, when its sampled bracket misses or its
 * candidates overflow (rare), or when its buffers cannot be allocated: the
 * caller then runs the scalar path.
 */
int ap_mask_layer_avx2(const float *w, const float *norms, uint64_t *mask, size_t rows, size_t cols, size_t k);

/*
 * ap_score_select_layer's order statistic (score.h: the k-th smallest key
 * among the surviving weights, k below their number; n_less / n_equal
 * optional) from one pass over the weights; OpenMP inside. key_next, when
 * not NULL, also receives the key of rank k + 1 (the caller makes sure
 * there is one): a percentile's two neighbours from the same pass. Returns
 * AP_PRUNE_OK, AP_PRUNE_ENAN, or AP_SIMD_DECLINE (as ap_mask_layer_avx2,
 * nothing written): the caller then runs the radix select.
 */
int ap_select_layer_avx2(const float *w, const float *norms, const uint64_t *mask, size_t rows, size_t cols,
                         size_t k, uint32_t *key, size_t *n_less, size_t *n_equal, uint32_t *key_next);

/*
 * One row of ap_mask_nm for m in {2, 4, 8}, over its first cols8 columns
 * (a multiple of 8, so whole groups; the caller does the rest). Same
 * result, *over count and NaN rule as the scalar code: returns 1 when a
 * surviving weight of a group that needs pruning scores NaN (that group's
 * bits are still written, as the scalar code does), else 0.
 */
int ap_mask_nm_row_avx2(const float *wrow, const float *norms, size_t cols8, unsigned n, unsigned m, uint64_t *mask,
                        size_t pos, size_t *over);

#endif
