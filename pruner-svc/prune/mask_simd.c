/*
 * mask_simd.c - AVX2 kernels of ap_mask_rows, ap_mask_layer and ap_mask_nm (see
 * mask_simd.h; the design note is in mask.c).
 *
 * Compiled for the baseline x86-64 target: every AVX2 function carries a
 * target attribute and is reached only after ap_mask_simd_available(), as
 * the CPU kernels (kernels/cpu/simd_math.h) do. Other architectures get stubs
 * that report "not available".
 */
#include "mask_simd.h"

#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "bitmap.h"
#include "prune_error.h"
#include "score.h"
#include "select.h"

int ap_simd_row_ws_init(ap_simd_row_ws *ws, size_t cols) {
  /* +8: slack (the vector stores of a pass stay below the count of its input) */
  size_t n = cols + 8;
  /* 64-byte aligned (whole cache lines), so the vector stores to keys never split a line */
  size_t bytes = (n * sizeof(uint32_t) + 63) & ~(size_t)63;
  size_t wbytes = ((cols / 64 + 1) * sizeof(uint64_t) + 63) & ~(size_t)63;
  memset(ws, 0, sizeof *ws);
  ws->keys = aligned_alloc(64, bytes);
  ws->a = aligned_alloc(64, bytes);
  ws->b = aligned_alloc(64, bytes);
  ws->ck = aligned_alloc(64, bytes);
  ws->ci = aligned_alloc(64, bytes);
  ws->bw = aligned_alloc(64, wbytes);
  ws->ones = aligned_alloc(64, bytes);
  if (!ws->keys || !ws->a || !ws->b || !ws->ck || !ws->ci || !ws->bw || !ws->ones) return AP_PRUNE_ENOMEM;
  for (size_t j = 0; j < cols; j++) ws->ones[j] = 1.0f;
  return AP_PRUNE_OK;
}

void ap_simd_row_ws_free(ap_simd_row_ws *ws) {
  free(ws->keys);
  free(ws->a);
  free(ws->b);
  free(ws->ck);
  free(ws->ci);
  free(ws->bw);
  free(ws->ones);
  memset(ws, 0, sizeof *ws);
}

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#include <pthread.h>

#define AVX2 __attribute__((target("avx2,popcnt")))
#define AVX2_INLINE __attribute__((target("avx2,popcnt"), always_inline)) static inline


/*
 * Compaction table: for an 8-bit lane mask, the indices of the set lanes
 * packed to the front (one byte each), so one permute moves the selected
 * keys together and one unaligned store writes them.
 */
static uint64_t compact_lut[256];
static pthread_once_t lut_once = PTHREAD_ONCE_INIT;

static void lut_init(void) {
  for (unsigned m = 0; m < 256; m++) {
    uint64_t v = 0;
    unsigned c = 0;
    for (unsigned i = 0; i < 8; i++)
      if ((m >> i) & 1) v |= (uint64_t)i << (8 * c++);
    compact_lut[m] = v;
  }
}

int ap_mask_simd_available(void) {
  if (!__builtin_cpu_supports("avx2") || !__builtin_cpu_supports("popcnt")) return 0;
  pthread_once(&lut_once, lut_init);
  return 1;
}

AVX2_INLINE uint32_t hsum_epi32(__m256i v) {
  __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4e));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xb1));
  return (uint32_t)_mm_cvtsi128_si32(s);
}

/* All lanes set where bit i of b (i < 8) is set. */
AVX2_INLINE __m256i lanes_of_bits(unsigned b) {
  const __m256i sel = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128);
  return _mm256_cmpeq_epi32(_mm256_and_si256(_mm256_set1_epi32((int)b), sel), sel);
}

/*
 * The row the caller handles a few rows ahead, prefetched a few lines at a
 * time: every phase of the current row issues some, in proportion to its
 * length, so the memory stream never waits for the selection work (a burst
 * in one phase leaves the memory idle in the others).
 */
typedef struct {
  const char *p, *end;
} pf_cursor;

AVX2_INLINE void pf_lines(pf_cursor *pf, unsigned n) {
  for (; n && pf->p < pf->end; n--, pf->p += 64) _mm_prefetch(pf->p, _MM_HINT_T0);
}

/*
 * Sorting a sample: a bitonic network on 4 (or 8) registers of 8 keys,
 * signed order (every key lies in [0, INT32_MAX]). Columns first (a 4-key
 * network across the registers), a 4x4 transpose per 128-bit half, then
 * bitonic merges: 4+4 inside a register, 8+8 and 16+16 across registers
 * (32+32 for 64 keys). About 180 instructions for 32 keys, no branches.
 */
#define CX(a, b)                       \
  do {                                 \
    __m256i t_ = _mm256_min_epi32(a, b); \
    b = _mm256_max_epi32(a, b);        \
    a = t_;                            \
  } while (0)

/* Sorts a register that holds a bitonic sequence of 8 (the half-cleaners at distances 4, 2, 1). */
AVX2_INLINE __m256i bitonic_clean8(__m256i v) {
  __m256i sw = _mm256_permute2x128_si256(v, v, 1);
  v = _mm256_blend_epi32(_mm256_min_epi32(v, sw), _mm256_max_epi32(v, sw), 0xf0);
  sw = _mm256_shuffle_epi32(v, 0x4e);
  v = _mm256_blend_epi32(_mm256_min_epi32(v, sw), _mm256_max_epi32(v, sw), 0xcc);
  sw = _mm256_shuffle_epi32(v, 0xb1);
  return _mm256_blend_epi32(_mm256_min_epi32(v, sw), _mm256_max_epi32(v, sw), 0xaa);
}

AVX2_INLINE __m256i reverse8(__m256i v) {
  return _mm256_permutevar8x32_epi32(v, _mm256_setr_epi32(7, 6, 5, 4, 3, 2, 1, 0));
}

/* Merges two sorted registers into the sorted 16 (*a low, *b high). */
AVX2_INLINE void merge8x2(__m256i *a, __m256i *b) {
  __m256i r = reverse8(*b);
  __m256i lo = _mm256_min_epi32(*a, r), hi = _mm256_max_epi32(*a, r);
  *a = bitonic_clean8(lo);
  *b = bitonic_clean8(hi);
}

/* Sorts 32 keys held in 4 registers (r[0] smallest). */
AVX2_INLINE void sort32_regs(__m256i r[4]) {
  CX(r[0], r[1]);
  CX(r[2], r[3]);
  CX(r[0], r[2]);
  CX(r[1], r[3]);
  CX(r[1], r[2]);
  /* every column is sorted: transpose so that each 128-bit half holds one column */
  __m256i t0 = _mm256_unpacklo_epi32(r[0], r[1]), t1 = _mm256_unpackhi_epi32(r[0], r[1]);
  __m256i t2 = _mm256_unpacklo_epi32(r[2], r[3]), t3 = _mm256_unpackhi_epi32(r[2], r[3]);
  r[0] = _mm256_unpacklo_epi64(t0, t2);
  r[1] = _mm256_unpackhi_epi64(t0, t2);
  r[2] = _mm256_unpacklo_epi64(t1, t3);
  r[3] = _mm256_unpackhi_epi64(t1, t3);
  /* two sorted runs of 4 per register: reverse the upper one, then clean */
  const __m256i rev_hi = _mm256_setr_epi32(0, 1, 2, 3, 7, 6, 5, 4);
  for (int i = 0; i < 4; i++) r[i] = bitonic_clean8(_mm256_permutevar8x32_epi32(r[i], rev_hi));
  merge8x2(&r[0], &r[1]);
  merge8x2(&r[2], &r[3]);
  /* 16 + 16: reverse the second run, compare, then clean each bitonic half */
  __m256i b0 = reverse8(r[3]), b1 = reverse8(r[2]);
  __m256i l0 = _mm256_min_epi32(r[0], b0), h0 = _mm256_max_epi32(r[0], b0);
  __m256i l1 = _mm256_min_epi32(r[1], b1), h1 = _mm256_max_epi32(r[1], b1);
  CX(l0, l1);
  CX(h0, h1);
  r[0] = bitonic_clean8(l0);
  r[1] = bitonic_clean8(l1);
  r[2] = bitonic_clean8(h0);
  r[3] = bitonic_clean8(h1);
}

/* Sorts x[0..s) in place, s = 32 or 64. */
AVX2 static void sort_sample(uint32_t *x, size_t s) {
  __m256i r[8];
  for (size_t i = 0; i < s / 8; i++) r[i] = _mm256_loadu_si256((const __m256i *)(const void *)(x + 8 * i));
  sort32_regs(r);
  if (s == 64) {
    sort32_regs(r + 4);
    /* 32 + 32: reverse the second run, compare, then clean each bitonic 32 */
    for (int i = 0; i < 4; i++) {
      __m256i b = reverse8(r[7 - i]);
      __m256i lo = _mm256_min_epi32(r[i], b), hi = _mm256_max_epi32(r[i], b);
      r[i] = lo;
      r[7 - i] = hi;
    }
    /* r[4..7] now hold the upper half in reversed register order: restore it */
    __m256i t = r[4];
    r[4] = r[7];
    r[7] = t;
    t = r[5];
    r[5] = r[6];
    r[6] = t;
    for (int h = 0; h < 8; h += 4) {
      CX(r[h], r[h + 2]);
      CX(r[h + 1], r[h + 3]);
      CX(r[h], r[h + 1]);
      CX(r[h + 2], r[h + 3]);
      for (int i = h; i < h + 4; i++) r[i] = bitonic_clean8(r[i]);
    }
  }
  for (size_t i = 0; i < s / 8; i++) _mm256_storeu_si256((__m256i *)(void *)(x + 8 * i), r[i]);
}
#undef CX

void ap_simd_sort_sample(uint32_t *x, size_t s) { sort_sample(x, s); }

/*
 * Pivots for one round: the inner bracket [lo, hi] that should hold the
 * answer, and an outer one [lo2, hi2] to fall back on when it does not.
 * Open ends are 0 and AP_SIMD_PRUNED_KEY (every key lies in [0, INT32_MAX]).
 */
typedef struct {
  uint32_t lo, hi, lo2, hi2;
} bracket;

/*
 * The pivots for rank r of m keys from a sample x[0..s) of them: the inner
 * bracket is the sample's own estimate of rank r +- (1.5 standard deviations
 * + 1) sample ranks, the outer one three times as wide. A narrow inner
 * bracket leaves fewer keys for the next round; a miss (~10%) costs one
 * more pass, usually into the outer bracket. Single precision and an integer
 * floor/ceil keep the arithmetic off libm; the margins need not be exact.
 */
AVX2 static bracket sample_bracket(uint32_t *x, size_t s, size_t r, size_t m) {
  float p = ((float)r + 0.5f) / (float)m, q = p * (float)s;
  float d = 1.5f * sqrtf((float)s * p * (1.0f - p)) + 1.0f;
  float e[4] = {q - 3.0f * d, q - d, q + d, q + 3.0f * d};
  long qi[4];
  for (int k = 0; k < 4; k++) {
    long t = (long)e[k]; /* truncation toward zero, then floor (k < 2) or ceil (k >= 2) */
    qi[k] = k < 2 ? t - ((float)t > e[k]) : t + ((float)t < e[k]);
  }
  sort_sample(x, s);
  bracket b;
  b.lo2 = qi[0] > 0 ? x[qi[0]] : 0;
  b.lo = qi[1] > 0 ? x[qi[1]] : 0;
  b.hi = qi[2] < (long)s - 1 ? x[qi[2]] : AP_SIMD_PRUNED_KEY;
  b.hi2 = qi[3] < (long)s - 1 ? x[qi[3]] : AP_SIMD_PRUNED_KEY;
  return b;
}

/*
 * One bracket step on 8 keys: append those in [lo, hi] to out at *c and
 * count those at or above lo (vlo1 = lo - 1: two compares and an andnot give
 * the lanes to keep, and the count needs no extra compare).
 */
AVX2_INLINE __m256i bracket8(__m256i k, __m256i vlo1, __m256i vhi, __m256i ge_cnt, uint32_t *out, size_t *c) {
  __m256i ge = _mm256_cmpgt_epi32(k, vlo1);
  __m256i inside = _mm256_andnot_si256(_mm256_cmpgt_epi32(k, vhi), ge);
  unsigned keep = (unsigned)_mm256_movemask_ps(_mm256_castsi256_ps(inside));
  __m256i perm = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(const void *)&compact_lut[keep]));
  _mm256_storeu_si256((__m256i *)(void *)(out + *c), _mm256_permutevar8x32_epi32(k, perm));
  *c += (size_t)__builtin_popcount(keep);
  return _mm256_sub_epi32(ge_cnt, ge);
}

AVX2_INLINE uint32_t hmax_epu32(__m256i v) {
  __m128i s = _mm_max_epu32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  s = _mm_max_epu32(s, _mm_shuffle_epi32(s, 0x4e));
  s = _mm_max_epu32(s, _mm_shuffle_epi32(s, 0xb1));
  return (uint32_t)_mm_cvtsi128_si32(s);
}

/* The sum of the 8 lanes, in double (the row scales below keep their lanes in FP32). */
AVX2_INLINE double hsum_ps(__m256 v) {
  float lane[8];
  _mm256_storeu_ps(lane, v);
  double sum = 0;
  for (int i = 0; i < 8; i++) sum += lane[i];
  return sum;
}

/*
 * The scale of a row: the sum of its |w| (pruned weights too: every row of
 * a layer has the same share pruned, so they shift every row's scale
 * alike). The threshold predictor works relative to its log. FP32 lanes,
 * summed in double: the predictor needs a few digits, not all.
 */
AVX2 static double row_scale(const float *w, size_t cols) {
  const __m256 absm = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
  __m256 acc0 = _mm256_setzero_ps(), acc1 = acc0;
  size_t j = 0;
  for (; j + 16 <= cols; j += 16) {
    acc0 = _mm256_add_ps(acc0, _mm256_and_ps(_mm256_loadu_ps(w + j), absm));
    acc1 = _mm256_add_ps(acc1, _mm256_and_ps(_mm256_loadu_ps(w + j + 8), absm));
  }
  double sum = hsum_ps(_mm256_add_ps(acc0, acc1));
  for (; j < cols; j++) sum += fabsf(w[j]);
  return sum;
}

/*
 * The pass of the selection when no prediction is at hand, from memory:
 * keys of w into keys[0..cols) (pruned weights as AP_SIMD_PRUNED_KEY).
 * *nan = 1 when a surviving weight scores NaN. The score is the scalar
 * path's, fabsf(w) * norm with one rounding (the sign cleared by a mask).
 * Half of the next row is prefetched alongside.
 */
AVX2_INLINE double keys_pass_impl(const float *w, const float *norms, size_t cols, const uint64_t *mask, size_t pos,
                                  int has_pruned, uint32_t *keys, int *nan, pf_cursor *pf) {
  const __m256 absm = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
  const __m256i pk = _mm256_set1_epi32((int)AP_SIMD_PRUNED_KEY);
  /* NaN test: the unsigned maximum of the surviving keys is above +inf only
   * for a NaN, of either sign (inf * 0 gives the default NaN, sign bit set) */
  __m256i vmax = _mm256_setzero_si256();
  /* per 64 columns a sum of their |w|, added to the row's: no long chain of dependent adds */
  __m256 acc = _mm256_setzero_ps();
  double sum = 0;
  int nan_tail = 0;
  for (size_t c0 = 0; c0 < cols; c0 += 64) {
    unsigned nb = cols - c0 < 64 ? (unsigned)(cols - c0) : 64;
    uint64_t bits = has_pruned ? ap_bitmap_load_bits(mask, pos + c0, nb) : 0;
    size_t j = c0, end8 = c0 + (nb & ~7u);
    __m256 part = _mm256_setzero_ps();
    pf_lines(pf, 2);
    for (; j < end8; j += 8) {
      __m256 a = _mm256_and_ps(_mm256_loadu_ps(w + j), absm);
      part = _mm256_add_ps(part, a);
      if (norms) a = _mm256_mul_ps(a, _mm256_loadu_ps(norms + j));
      __m256i k = _mm256_castps_si256(a);
      if (has_pruned) {
        __m256i p = lanes_of_bits((unsigned)(bits & 0xff));
        bits >>= 8;
        vmax = _mm256_max_epu32(vmax, _mm256_andnot_si256(p, k));
        k = _mm256_blendv_epi8(k, pk, p); /* not an OR: a NaN key may have its sign bit set */
      } else {
        vmax = _mm256_max_epu32(vmax, k);
      }
      _mm256_storeu_si256((__m256i *)(void *)(keys + j), k);
    }
    acc = _mm256_add_ps(acc, part);
    for (; j < c0 + nb; j++, bits >>= 1) {
      sum += fabsf(w[j]);
      uint32_t k = ap_score_bits(norms ? fabsf(w[j]) * norms[j] : fabsf(w[j]));
      if (bits & 1) k = AP_SIMD_PRUNED_KEY;
      else nan_tail |= k > AP_SCORE_INF_KEY;
      keys[j] = k;
    }
  }
  *nan = nan_tail || hmax_epu32(vmax) > AP_SCORE_INF_KEY;
  return sum + hsum_ps(acc);
}

/* Also returns the row's row_scale (its sum of |w|), for the predictor to learn from. */
AVX2 static double keys_pass(const float *w, const float *norms, size_t cols, const uint64_t *mask, size_t pos,
                             int has_pruned, uint32_t *keys, int *nan, pf_cursor *pf) {
  /* separate instances so the common dense row carries no mask work */
  if (has_pruned) return keys_pass_impl(w, norms, cols, mask, pos, 1, keys, nan, pf);
  if (norms) return keys_pass_impl(w, norms, cols, mask, pos, 0, keys, nan, pf);
  return keys_pass_impl(w, NULL, cols, mask, pos, 0, keys, nan, pf);
}

/*
 * 32 lane masks (4 registers of compare results, -1 or 0 per key) as the
 * bits of one word, bit i = key i: two saturating packs, a
 * permute that undoes their per-half interleave, one byte movemask. Fewer
 * instructions than a movemask, shift and OR per register.
 */
AVX2_INLINE uint32_t lanes32_to_bits(__m256i m0, __m256i m1, __m256i m2, __m256i m3) {
  const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
  __m256i b = _mm256_packs_epi16(_mm256_packs_epi32(m0, m1), _mm256_packs_epi32(m2, m3));
  return (uint32_t)_mm256_movemask_epi8(_mm256_permutevar8x32_epi32(b, order));
}

/*
 * Appends to ci the columns c0 + i of the set bits i of `in`, in order, and
 * returns how many. Four unconditional steps take the usual two or three (a
 * branch per group of keys would miss its prediction every few groups); ci
 * has slack for the steps past the count.
 */
AVX2_INLINE size_t take_columns(uint64_t in, size_t c0, uint32_t *ci) {
  size_t cnt = (size_t)__builtin_popcountll(in);
  uint64_t x = in;
  for (int u = 0; u < 4; u++, x &= x - 1) ci[u] = (uint32_t)(c0 + (size_t)__builtin_ctzll(x | (1ull << 63)));
  for (size_t u = 4; u < cnt; u++, x &= x - 1) ci[u] = (uint32_t)(c0 + (size_t)__builtin_ctzll(x));
  return cnt;
}

/*
 * The selection's one pass over a row, from memory, with a predicted
 * bracket [lo, hi] (hi below AP_SIMD_PRUNED_KEY): computes each key
 * (fabsf(w) * norm, the scalar path's rounding; pruned weights above the
 * bracket) and compares it with both ends. bw[i] gets the bits of the keys
 * below lo in word i of the row (64 columns from 64 * i), *below their
 * count; the columns of the keys inside go to ci in column order; returns
 * how many. No score can be NaN here: the caller takes this pass only for
 * a row whose sum of |w| is finite (no NaN or infinite weight) with finite
 * norms, so a NaN (NaN * x, inf * 0) cannot arise. With `ahead` (the
 * next row, of cols weights) it also reads that row and returns its
 * row_scale in *ahead_scale: the next call's prediction is then ready, and
 * the next row is on its way into the cache while this one is worked on.
 */
AVX2_INLINE size_t fused_impl(const float *w, const float *norms, size_t cols, const uint64_t *mask, size_t pos,
                              int has_pruned, uint32_t lo, uint32_t hi, uint64_t *bw, uint32_t *ci,
                              size_t *below, const float *ahead, double *ahead_scale, pf_cursor *pf) {
  const __m256 absm = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
  const __m256i pk = _mm256_set1_epi32((int)AP_SIMD_PRUNED_KEY);
  const __m256i vlo = _mm256_set1_epi32((int)lo), vhi = _mm256_set1_epi32((int)hi);
  __m256 acc[2] = {_mm256_setzero_ps(), _mm256_setzero_ps()};
  double scale = 0;
  size_t c = 0, nbelow = 0;
  for (size_t c0 = 0, wi = 0; c0 < cols; c0 += 64, wi++) {
    unsigned nb = cols - c0 < 64 ? (unsigned)(cols - c0) : 64;
    uint64_t bits = has_pruned ? ap_bitmap_load_bits(mask, pos + c0, nb) : 0, ltw = 0, gtw = 0;
    size_t j = c0;
    pf_lines(pf, 4); /* as fast as this pass moves: the row after next arrives in time */
    if (nb == 64) {
      /* two halves of 32 keys: their compare results fit in registers */
      for (int h = 0; h < 2; h++) {
        __m256i lt[4], gt[4];
        __m256 ah[4];
        for (int i = 0; i < 4; i++, j += 8) {
          __m256i k = _mm256_castps_si256(_mm256_mul_ps(_mm256_and_ps(_mm256_loadu_ps(w + j), absm),
                                                        _mm256_loadu_ps(norms + j)));
          if (has_pruned) k = _mm256_blendv_epi8(k, pk, lanes_of_bits((unsigned)(bits >> (32 * h + 8 * i)) & 0xffu));
          lt[i] = _mm256_cmpgt_epi32(vlo, k);
          gt[i] = _mm256_cmpgt_epi32(k, vhi);
          if (ahead) ah[i] = _mm256_and_ps(_mm256_loadu_ps(ahead + j), absm);
        }
        ltw |= (uint64_t)lanes32_to_bits(lt[0], lt[1], lt[2], lt[3]) << (32 * h);
        gtw |= (uint64_t)lanes32_to_bits(gt[0], gt[1], gt[2], gt[3]) << (32 * h);
        /* a tree, then one add per half into its own sum: no long chain of dependent adds */
        if (ahead)
          acc[h] = _mm256_add_ps(acc[h], _mm256_add_ps(_mm256_add_ps(ah[0], ah[1]), _mm256_add_ps(ah[2], ah[3])));
      }
    } else { /* the row's last, partial word */
      for (unsigned i = 0; i < nb; i++, j++) {
        uint32_t k = ap_score_bits(fabsf(w[j]) * norms[j]);
        if ((bits >> i) & 1) k = AP_SIMD_PRUNED_KEY;
        ltw |= (uint64_t)(k < lo) << i;
        gtw |= (uint64_t)(k > hi) << i;
        if (ahead) scale += fabsf(ahead[j]);
      }
    }
    uint64_t in = ~(ltw | gtw);
    if (nb < 64) in &= ((uint64_t)1 << nb) - 1;
    bw[wi] = ltw;
    nbelow += (size_t)__builtin_popcountll(ltw);
    c += take_columns(in, c0, ci + c);
  }
  *below = nbelow;
  if (ahead) {
    *ahead_scale = scale + hsum_ps(_mm256_add_ps(acc[0], acc[1]));
  }
  return c;
}

AVX2 static size_t fused_pass(const float *w, const float *norms, size_t cols, const uint64_t *mask, size_t pos,
                              int has_pruned, uint32_t lo, uint32_t hi, uint64_t *bw, uint32_t *ci, size_t *below,
                              const float *ahead, double *ahead_scale, pf_cursor *pf) {
  /* separate instances so the common dense row carries no mask work */
  if (has_pruned && ahead)
    return fused_impl(w, norms, cols, mask, pos, 1, lo, hi, bw, ci, below, ahead, ahead_scale, pf);
  if (has_pruned) return fused_impl(w, norms, cols, mask, pos, 1, lo, hi, bw, ci, below, NULL, ahead_scale, pf);
  if (ahead) return fused_impl(w, norms, cols, mask, pos, 0, lo, hi, bw, ci, below, ahead, ahead_scale, pf);
  return fused_impl(w, norms, cols, mask, pos, 0, lo, hi, bw, ci, below, NULL, ahead_scale, pf);
}

/*
 * Marks the row from fused_pass's output, with t the answer (inside the
 * bracket) and ck[i] the key of column ci[i]: the keys below the bracket,
 * the candidates below t, and the first `quota` candidates equal to t in
 * column order (every key equal to t is a candidate; pruned keys are never
 * below the bracket or inside it). acc (2 * (cols / 64 + 1) words) is
 * scratch: even and odd candidates set their bits in separate copies of
 * the row's words, so two in a row in one word do not wait on each other's
 * store.
 */
AVX2 static void mark_record(const uint64_t *bw, size_t cols, const uint32_t *ck, const uint32_t *ci, size_t c,
                             uint32_t t, size_t quota, size_t equal, uint64_t *acc, uint64_t *mask, size_t pos) {
  size_t nw = (cols + 63) / 64;
  uint64_t *acc1 = acc + nw;
  memset(acc, 0, 2 * nw * sizeof *acc);
  /* all ties, or none, is the usual case: one compare per candidate, no chain through the quota */
  uint32_t lim = quota == equal ? t + 1 : t; /* t is below AP_SIMD_PRUNED_KEY: no overflow */
  size_t i = 0;
  for (; i + 2 <= c; i += 2) {
    acc[ci[i] >> 6] |= (uint64_t)(ck[i] < lim) << (ci[i] & 63);
    acc1[ci[i + 1] >> 6] |= (uint64_t)(ck[i + 1] < lim) << (ci[i + 1] & 63);
  }
  if (i < c) acc[ci[i] >> 6] |= (uint64_t)(ck[i] < lim) << (ci[i] & 63);
  if (quota != equal) /* the first `quota` ties, in column order */
    for (i = 0; i < c && quota; i++)
      if (ck[i] == t) {
        acc[ci[i] >> 6] |= (uint64_t)1 << (ci[i] & 63);
        quota--;
      }
  if (!(pos & 63)) { /* the row starts on a word: whole words, no shifts */
    uint64_t *mw = mask + (pos >> 6);
    size_t wi = 0;
    for (; wi < cols / 64; wi++) mw[wi] |= bw[wi] | acc[wi] | acc1[wi];
    if (cols & 63) ap_bitmap_or_bits(mask, pos + 64 * wi, bw[wi] | acc[wi] | acc1[wi], (unsigned)(cols & 63));
    return;
  }
  for (size_t c0 = 0, wi = 0; c0 < cols; c0 += 64, wi++)
    ap_bitmap_or_bits(mask, pos + c0, bw[wi] | acc[wi] | acc1[wi], cols - c0 < 64 ? (unsigned)(cols - c0) : 64);
}

/* The same bracket pass over keys already computed (in may not alias out). */
AVX2 static size_t bracket_pass(const uint32_t *in, size_t m, uint32_t lo, uint32_t hi, uint32_t *out,
                                size_t *below, pf_cursor *pf) {
  const __m256i vlo1 = _mm256_set1_epi32((int)lo - 1), vhi = _mm256_set1_epi32((int)hi);
  __m256i ge_cnt = _mm256_setzero_si256();
  size_t c = 0, j = 0;
  for (; j + 8 <= m; j += 8) {
    if (!(j & 15)) pf_lines(pf, 1);
    ge_cnt = bracket8(_mm256_loadu_si256((const __m256i *)(const void *)(in + j)), vlo1, vhi, ge_cnt, out, &c);
  }
  size_t b = j - hsum_epi32(ge_cnt);
  for (; j < m; j++) {
    uint32_t v = in[j];
    b += v < lo;
    out[c] = v;
    c += (v >= lo) & (v <= hi);
  }
  *below = b;
  return c;
}

/*
 * After a pass with bracket [b->lo, b->hi] over in[0..m) (*below keys under
 * it, c inside): when rank r is not inside, redo the pass into the outer
 * bracket on r's side, then, if that misses too, into everything on that
 * side. Every pass but the first is exact about where r lies, so this ends
 * with r inside [b->lo, b->hi]; returns the count inside.
 */
AVX2 static size_t bracket_retry(const uint32_t *in, size_t m, size_t r, bracket *b, uint32_t *out, size_t *below,
                                 size_t c, pf_cursor *pf) {
  for (int round = 0; round < 2; round++) {
    if (r < *below) { /* b->lo > 0 here: some key is below it */
      b->hi = b->lo - 1;
      b->lo = round == 0 && b->lo2 < b->lo ? b->lo2 : 0;
    } else if (r >= *below + c) { /* b->hi < INT32_MAX here: some key is above it */
      b->lo = b->hi + 1;
      b->hi = round == 0 && b->hi2 > b->hi ? b->hi2 : AP_SIMD_PRUNED_KEY;
    } else {
      return c;
    }
    c = bracket_pass(in, m, b->lo, b->hi, out, below, pf);
  }
  return c;
}

/* Keys of a[0..m) below t and equal to t. */
AVX2 static void count_lt_eq(const uint32_t *a, size_t m, uint32_t t, size_t *lt, size_t *eq) {
  const __m256i vt = _mm256_set1_epi32((int)t);
  __m256i l = _mm256_setzero_si256(), e = _mm256_setzero_si256();
  size_t j = 0;
  for (; j + 8 <= m; j += 8) {
    __m256i k = _mm256_loadu_si256((const __m256i *)(const void *)(a + j));
    l = _mm256_sub_epi32(l, _mm256_cmpgt_epi32(vt, k));
    e = _mm256_sub_epi32(e, _mm256_cmpeq_epi32(vt, k));
  }
  size_t nl = hsum_epi32(l), ne = hsum_epi32(e);
  for (; j < m; j++) {
    nl += a[j] < t;
    ne += a[j] == t;
  }
  *lt = nl;
  *eq = ne;
}

/*
 * Continues a selection: the r-th smallest (0-based) of cur[0..m), with
 * *less / *equal the keys below / equal to it among them (m >= 1, r < m).
 * cur is one of a, b (m keys each at least); the rounds ping-pong between them.
 *
 * Floyd-Rivest rounds: a stratified sample of 32-64 keys gives two pivots
 * that bracket rank r (sample_bracket); one vector pass counts the keys
 * below the bracket and compacts those inside. Every key equal to the
 * answer lies inside every bracket, so the last set still holds them all. A
 * bracket that misses is widened to the side that holds r (bracket_retry);
 * a round that does not shrink the set (heavy duplicates) hands over to
 * introselect, and 64 keys or fewer are sorted.
 */
AVX2 static uint32_t select_rounds(uint32_t *cur, size_t m, size_t r, uint32_t *a, uint32_t *b, size_t *less,
                                   size_t *equal, pf_cursor *pf) {
  size_t base = 0;
  uint32_t sample[64], t;
  while (m > 64) {
    /* 64 keys while the set is large (a narrower bracket saves a round), 32 after */
    unsigned lg = m >= 256 ? 6 : 5;
    size_t s = (size_t)1 << lg;
    for (size_t i = 0; i < s; i++) {
      /* one key from each of s equal slices, at a fixed pseudo-random offset (Fibonacci hashing) */
      uint64_t jitter = ((i + 1) * 0x9E3779B97F4A7C15ull) >> 32;
      sample[i] = cur[(i * m + ((jitter * m) >> 32)) >> lg];
    }
    bracket bk = sample_bracket(sample, s, r, m);
    uint32_t *out = cur == a ? b : a;
    pf_lines(pf, 2); /* for the sample and its ranks */
    size_t below, c = bracket_pass(cur, m, bk.lo, bk.hi, out, &below, pf);
    c = bracket_retry(cur, m, r, &bk, out, &below, c, pf);
    if (bk.lo == bk.hi) { /* every key left equals the answer */
      *less = base + below;
      *equal = c;
      return bk.lo;
    }
    if (c > m - m / 8) { /* duplicates defeat sampling: exact select on a copy */
      memcpy(out, cur, m * sizeof *cur);
      t = ap_select_u32_inplace(out, m, r);
      count_lt_eq(cur, m, t, less, equal);
      *less += base;
      return t;
    }
    base += below;
    r -= below;
    cur = out;
    m = c;
  }
  /* small: sort it, padded with the largest key (never the answer) */
  size_t s = m <= 32 ? 32 : 64;
  memcpy(sample, cur, m * sizeof *cur);
  for (size_t i = m; i < s; i++) sample[i] = AP_SIMD_PRUNED_KEY;
  sort_sample(sample, s);
  t = sample[r];
  count_lt_eq(cur, m, t, less, equal);
  *less += base;
  return t;
}

/*
 * Marks the row: every key below t, and the first `quota` keys equal to t
 * in column order (all of them when quota == equal). Pruned keys are above
 * t, so they are never marked again (their bits are set anyway).
 */
AVX2 static void mark_row(const uint32_t *keys, size_t cols, uint32_t t, size_t quota, size_t equal, uint64_t *mask,
                          size_t pos, pf_cursor *pf) {
  /* the rest of the row ahead, spread over this pass */
  size_t blocks = cols / 64 + 1, left = pf->p < pf->end ? (size_t)(pf->end - pf->p + 63) / 64 : 0;
  unsigned per = (unsigned)((left + blocks - 1) / blocks);
  int all = quota == equal;
  /* key <= t is key < t + 1; t is a finite or infinite score, so t + 1 does not overflow */
  uint32_t lim = all ? t + 1 : t;
  const __m256i vlt = _mm256_set1_epi32((int)lim), veq = _mm256_set1_epi32((int)t);
#define LT8(i) \
  ((uint64_t)(unsigned)_mm256_movemask_ps(_mm256_castsi256_ps(_mm256_cmpgt_epi32( \
       vlt, _mm256_loadu_si256((const __m256i *)(const void *)(k + 8 * (i))))))     \
   << (8 * (i)))
#define EQ8(i) \
  ((uint64_t)(unsigned)_mm256_movemask_ps(_mm256_castsi256_ps(_mm256_cmpeq_epi32( \
       veq, _mm256_loadu_si256((const __m256i *)(const void *)(k + 8 * (i))))))     \
   << (8 * (i)))
  size_t c0 = 0;
  for (; c0 + 64 <= cols; c0 += 64) {
    const uint32_t *k = keys + c0;
    pf_lines(pf, per);
    uint64_t bits = (LT8(0) | LT8(1) | LT8(2) | LT8(3)) | (LT8(4) | LT8(5) | LT8(6) | LT8(7));
    if (quota && !all) {
      uint64_t eq = (EQ8(0) | EQ8(1) | EQ8(2) | EQ8(3)) | (EQ8(4) | EQ8(5) | EQ8(6) | EQ8(7));
      size_t ne = (size_t)__builtin_popcountll(eq);
      if (ne <= quota) {
        quota -= ne;
        bits |= eq;
      } else {
        for (; quota; quota--, eq &= eq - 1) bits |= eq & (~eq + 1);
      }
    }
    if (bits) ap_bitmap_or_bits(mask, pos + c0, bits, 64);
  }
#undef LT8
#undef EQ8
  if (c0 < cols) { /* the last partial word of the row */
    unsigned nb = (unsigned)(cols - c0);
    uint64_t bits = 0;
    for (unsigned i = 0; i < nb; i++) {
      uint32_t k = keys[c0 + i];
      int take = k < lim;
      if (!take && quota && !all && k == t) {
        take = 1;
        quota--;
      }
      bits |= (uint64_t)take << i;
    }
    if (bits) ap_bitmap_or_bits(mask, pos + c0, bits, nb);
  }
}

/* Set bits among [begin, end) of the mask, with the POPCNT instruction. */
AVX2 static size_t count_range(const uint64_t *m, size_t begin, size_t end) {
  size_t n = 0;
  while (begin < end && (begin & 63)) {
    unsigned nb = 64 - (unsigned)(begin & 63);
    if (nb > end - begin) nb = (unsigned)(end - begin);
    n += (size_t)__builtin_popcountll(ap_bitmap_load_bits(m, begin, nb));
    begin += nb;
  }
  for (; begin + 64 <= end; begin += 64) n += (size_t)__builtin_popcountll(m[begin >> 6]);
  if (begin < end) n += (size_t)__builtin_popcountll(ap_bitmap_load_bits(m, begin, (unsigned)(end - begin)));
  return n;
}

size_t ap_simd_count_range(const uint64_t *m, size_t begin, size_t end) { return count_range(m, begin, end); }

/*
 * The threshold predictor. Within a layer the rows' scores differ mostly in
 * scale, which shifts every key of a row by about the same amount, so the
 * threshold key minus 2^23 * log2 of the row's mean |w| (row_scale)
 * changes little from row to row: the rows already done predict it, and the
 * miss of that guess sets the bracket's half-width. A bracket that misses
 * only costs time: the row then takes the sampled selection on its keys.
 * Rows that keep missing, or whose brackets grow to hold most of the row
 * (no common shape), turn the predictor off for a growing number of rows,
 * so such a layer costs little more than the sampled selection alone.
 */
#define PREDICT_MIN_COLS 256    /* shorter rows: the sampled selection is as cheap */
#define PREDICT_DEV0 1048576.0  /* first guess of the miss: 1/8 of an octave */
#define PREDICT_HALF_MIN 4096.0 /* the narrowest half-width, about 0.03% of a score */
#define PREDICT_SPREAD 3.0      /* half-width in mean misses */
#define PREDICT_STREAK 2        /* misses (or brackets over 1/8 of the row) in a row before it backs off */
#define PREDICT_WARMUP 8        /* rows before a wide bracket counts as one */

/* Learns from a row whose threshold key minus mean log |w| was off; miss = its bracket missed. */
static void predict_learn(ap_simd_row_ws *ws, double off, int miss) {
  if (!ws->seen++) {
    ws->off = off;
    ws->dev = PREDICT_DEV0;
    return;
  }
  double e = fabs(off - ws->off);
  ws->off += 0.25 * (off - ws->off);
  ws->dev = miss ? (2.0 * ws->dev > e ? 2.0 * ws->dev : e) : 0.75 * ws->dev + 0.25 * e;
}

/* A row whose bracket missed, or held much of the row: after PREDICT_STREAK in a row, skip 4, 8, ... 128 rows. */
static void predict_strike(ap_simd_row_ws *ws) {
  if (++ws->streak >= PREDICT_STREAK) ws->skip = (size_t)1 << (ws->streak < 7 ? ws->streak : 7);
}

/* A row's scale in key units: a key is nearly 2^23 * log2 of its score (plus a constant the offset absorbs). */
static double scale_key(double scale, size_t cols) { return 8388608.0 * log2(scale / (double)cols); }

/* A key in [0, AP_SIMD_PRUNED_KEY - 1] nearest to x. */
static uint32_t key_clamp(double x) {
  if (!(x > 0.0)) return 0;
  if (x >= (double)(AP_SIMD_PRUNED_KEY - 1)) return AP_SIMD_PRUNED_KEY - 1;
  return (uint32_t)x;
}

/* A cursor that prefetches row `row` (cols weights), or nothing for NULL. */
static pf_cursor pf_row(const float *row, size_t cols) {
  pf_cursor pf = {NULL, NULL};
  if (row) {
    pf.p = (const char *)((uintptr_t)row & ~(uintptr_t)63);
    pf.end = (const char *)(row + cols);
  }
  return pf;
}

int ap_mask_row_avx2(const float *wrow, const float *norms, size_t cols, size_t pruned, size_t need,
                     uint64_t *mask, size_t pos, size_t rows_ahead, ap_simd_row_ws *ws) {
  const float *ahead = rows_ahead ? wrow + cols : NULL;
  size_t r = need - 1, less, equal;
  /* learn: rows long enough for the predictor; predict: also a bracket to try on this row */
  int nan, miss = 0, learn = cols >= PREDICT_MIN_COLS, predict = learn && ws->seen;
  double mean = NAN;
  uint32_t t;
  if (predict && ws->skip) { /* rows that keep missing: back off (the fallback still learns) */
    ws->skip--;
    predict = 0;
  }
  if (predict && (!ws->norms_checked || ws->norms_seen != norms)) { /* once per call: are the norms all finite? */
    ws->norms_checked = 1;
    ws->norms_seen = norms;
    ws->norms_finite = 1;
    for (size_t j = 0; norms && j < cols; j++) ws->norms_finite &= isfinite(norms[j]) != 0;
  }
  if (predict) {
    /* the scale comes from the previous row's pass when it read this row ahead */
    double scale = ws->next_row == wrow ? ws->next_scale : row_scale(wrow, cols);
    mean = scale_key(scale, cols);
    /* a finite sum of |w| (no NaN or infinite weight) and finite norms: no score is NaN, which the
     * one-pass path relies on; a row of zeros, or any other row, takes the fallback, which checks */
    predict = isfinite(mean) && ws->norms_finite;
  }
  ws->next_row = NULL;
  if (predict) {
    double center = mean + ws->off, half = PREDICT_SPREAD * ws->dev + PREDICT_HALF_MIN;
    uint32_t lo = key_clamp(center - half), hi = key_clamp(center + half);
    size_t below;
    double next_scale = 0;
    pf_cursor pf2 = pf_row(rows_ahead >= 2 ? wrow + 2 * cols : NULL, cols);
    size_t c = fused_pass(wrow, norms ? norms : ws->ones, cols, mask, pos, pruned > 0, lo, hi, ws->bw, ws->ci,
                          &below, ahead, &next_scale, &pf2);
    if (ahead) {
      ws->next_row = ahead;
      ws->next_scale = next_scale;
    }
    if (below <= r && r < below + c) {
      for (size_t i = 0; i < c; i++) {
        size_t j = ws->ci[i];
        ws->ck[i] = ap_score_bits(norms ? fabsf(wrow[j]) * norms[j] : fabsf(wrow[j]));
      }
      pf_cursor none = {NULL, NULL};
      t = select_rounds(ws->ck, c, r - below, ws->a, ws->b, &less, &equal, &none);
      /* the selection is done with a: it is the marking's scratch */
      mark_record(ws->bw, cols, ws->ck, ws->ci, c, t, need - below - less, equal, (uint64_t *)(void *)ws->a, mask,
                  pos);
      ws->hits++;
      predict_learn(ws, (double)t - mean, 0);
      /* a bracket that holds much of the row saves little (the first ones are wide on purpose) */
      if (c <= cols / 8 || ws->seen <= PREDICT_WARMUP) ws->streak = 0;
      else predict_strike(ws);
      return AP_PRUNE_OK;
    }
    ws->misses++;
    miss = 1;
    predict_strike(ws);
    ahead = NULL; /* already read */
  }
  pf_cursor pf = pf_row(ahead, cols);
  double scale = keys_pass(wrow, norms, cols, mask, pos, pruned > 0, ws->keys, &nan, &pf);
  if (nan) return AP_PRUNE_ENAN;
  t = select_rounds(ws->keys, cols, r, ws->a, ws->b, &less, &equal, &pf);
  mark_row(ws->keys, cols, t, need - less, equal, mask, pos, &pf);
  if (learn && !miss) mean = scale_key(scale, cols);
  if (learn && isfinite(mean)) predict_learn(ws, (double)t - mean, miss);
  return AP_PRUNE_OK;
}

/*
 * Whole-layer selection (ap_mask_layer): the same bracket idea over the
 * flat matrix. A stratified sample of up to 65536 keys, two pivots
 * 3 standard deviations + 2 sample ranks around rank k (a miss is rare, and
 * costs only the radix path the caller falls back to), one parallel pass
 * that counts the keys below the bracket and compacts those inside into a
 * buffer per thread (~1-3% of the layer), then the row kernel's rounds on
 * the candidates. One read of the weights instead of the radix select's
 * three (and the marking's one more).
 */
#define LAYER_RUN 8 /* sample keys are taken in runs of contiguous weights: one memory wait per run */
/*
 * Sample runs at most: 65536 keys when marking (a bracket of about 1.2% of
 * the layer at the median; fewer candidates to select and mark), 16384 for
 * an order statistic alone (the selection among the candidates is cheap,
 * the larger sample is not).
 */
#define LAYER_RUNS_MARK 8192
#define LAYER_RUNS_STAT 2048
#define LAYER_MIN ((size_t)1 << 16) /* below this the radix select is as fast */

/*
 * Keys of one mask word (len <= 64 weights from flat index base, whose column
 * is col) into k[64], pruned weights and the padding as AP_SIMD_PRUNED_KEY.
 * has_mask 0 (a constant at every call) skips the pruned-lane blend.
 */
AVX2_INLINE void layer_word_keys(const float *w, const float *norms, size_t cols, size_t base, size_t col,
                                 unsigned len, int has_mask, uint64_t bits, uint32_t *k, __m256i *vmax) {
  const __m256 absm = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
  const __m256i pk = _mm256_set1_epi32((int)AP_SIMD_PRUNED_KEY);
  if (len == 64 && (!norms || col + 64 <= cols)) {
    for (unsigned i = 0; i < 64; i += 8) {
      __m256 a = _mm256_and_ps(_mm256_loadu_ps(w + base + i), absm);
      if (norms) a = _mm256_mul_ps(a, _mm256_loadu_ps(norms + col + i));
      __m256i v = _mm256_castps_si256(a);
      if (has_mask) {
        __m256i p = lanes_of_bits((unsigned)(bits >> i) & 0xffu);
        *vmax = _mm256_max_epu32(*vmax, _mm256_andnot_si256(p, v));
        v = _mm256_blendv_epi8(v, pk, p);
      } else {
        *vmax = _mm256_max_epu32(*vmax, v);
      }
      _mm256_storeu_si256((__m256i *)(void *)(k + i), v);
    }
    return;
  }
  /* a word that wraps to the next row, or the last one: scalar, padded with pruned keys */
  uint32_t mx = 0;
  for (unsigned i = 0; i < 64; i++) {
    if (i >= len) {
      k[i] = AP_SIMD_PRUNED_KEY;
      continue;
    }
    uint32_t v = ap_score_bits(norms ? fabsf(w[base + i]) * norms[col] : fabsf(w[base + i]));
    if ((bits >> i) & 1) v = AP_SIMD_PRUNED_KEY;
    else mx = v > mx ? v : mx;
    k[i] = v;
    if (++col == cols) col = 0;
  }
  *vmax = _mm256_max_epu32(*vmax, _mm256_set1_epi32((int)mx));
}

/*
 * One thread's share of the pass: words [w0, w1). Compacts the keys in
 * [lo, hi] into out (cap keys, 64 of slack after them), returns 1 when a
 * surviving key is NaN; *overflow = 1 when the candidates do not fit. With
 * `marks` (for the marking, so that the weights are read once) it also
 * compacts each candidate's index from w0 * 64 into idx, in step with out,
 * and writes below[wi], the word's keys under lo, for every word.
 */
AVX2_INLINE int layer_pass_impl(const float *w, const float *norms, const uint64_t *mask, size_t n, size_t cols,
                                size_t w0, size_t w1, uint32_t lo, uint32_t hi, uint32_t *out, size_t cap,
                                size_t *cnt, size_t *ge, int *overflow, int marks, uint32_t *idx, uint64_t *below) {
  uint32_t kk[64];
  size_t c = 0, col = (w0 * 64) % cols;
  const __m256i vlo1 = _mm256_set1_epi32((int)lo - 1), vhi = _mm256_set1_epi32((int)hi);
  const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  __m256i gcnt = _mm256_setzero_si256(), vmax = _mm256_setzero_si256();
  for (size_t wi = w0; wi < w1; wi++) {
    size_t base = wi * 64;
    unsigned len = n - base < 64 ? (unsigned)(n - base) : 64;
    if (mask) layer_word_keys(w, norms, cols, base, col, len, 1, mask[wi], kk, &vmax);
    else layer_word_keys(w, norms, cols, base, col, len, 0, 0, kk, &vmax);
    if (c + 64 > cap) { /* more candidates than planned: the exact path does it */
      *overflow = 1;
      break;
    }
    if (!marks) {
      for (unsigned i = 0; i < 64; i += 8)
        gcnt = bracket8(_mm256_loadu_si256((const __m256i *)(const void *)(kk + i)), vlo1, vhi, gcnt, out, &c);
    } else {
      uint64_t bl = 0;
      uint32_t rel = (uint32_t)(base - w0 * 64);
      for (unsigned i = 0; i < 64; i += 8) {
        __m256i k = _mm256_loadu_si256((const __m256i *)(const void *)(kk + i));
        __m256i g = _mm256_cmpgt_epi32(k, vlo1);
        __m256i inside = _mm256_andnot_si256(_mm256_cmpgt_epi32(k, vhi), g);
        unsigned keep = (unsigned)_mm256_movemask_ps(_mm256_castsi256_ps(inside));
        if (keep) { /* a few percent of the keys: most groups have none, and the branch predicts well */
          __m256i perm = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(const void *)&compact_lut[keep]));
          __m256i ix = _mm256_add_epi32(_mm256_set1_epi32((int)(rel + i)), lane);
          _mm256_storeu_si256((__m256i *)(void *)(out + c), _mm256_permutevar8x32_epi32(k, perm));
          _mm256_storeu_si256((__m256i *)(void *)(idx + c), _mm256_permutevar8x32_epi32(ix, perm));
          c += (size_t)__builtin_popcount(keep);
        }
        gcnt = _mm256_sub_epi32(gcnt, g);
        bl |= (uint64_t)(~(unsigned)_mm256_movemask_ps(_mm256_castsi256_ps(g)) & 0xffu) << i;
      }
      below[wi] = bl; /* the padding lanes hold pruned keys: never below */
    }
    for (col += 64; col >= cols;) col -= cols;
  }
  *cnt = c;
  *ge = hsum_epi32(gcnt);
  return hmax_epu32(vmax) > AP_SCORE_INF_KEY;
}

AVX2 static int layer_pass(const float *w, const float *norms, const uint64_t *mask, size_t n, size_t cols, size_t w0,
                           size_t w1, uint32_t lo, uint32_t hi, uint32_t *out, size_t cap, size_t *cnt, size_t *ge,
                           int *overflow, uint32_t *idx, uint64_t *below) {
  /* two instances: the percentile needs neither indices nor the bits below */
  if (idx) return layer_pass_impl(w, norms, mask, n, cols, w0, w1, lo, hi, out, cap, cnt, ge, overflow, 1, idx, below);
  return layer_pass_impl(w, norms, mask, n, cols, w0, w1, lo, hi, out, cap, cnt, ge, overflow, 0, NULL, NULL);
}

/*
 * One thread's share of the marking, from the pass's record alone: words
 * [w0, w1) get their keys below lo, then the candidates (in flat order)
 * below t, and all ties too when `all`, else the first `ties` of them.
 * Ranges are whole words, so no two threads write one word.
 */
static void layer_mark(uint64_t *mask, size_t w0, size_t w1, const uint64_t *below, const uint32_t *keys,
                       const uint32_t *idx, size_t cnt, uint32_t t, int all, size_t ties) {
  for (size_t wi = w0; wi < w1; wi++) mask[wi] |= below[wi];
  size_t base = w0 * 64;
  for (size_t i = 0; i < cnt; i++) {
    uint32_t v = keys[i];
    int take = v < t;
    if (v == t && (all || ties)) {
      take = 1;
      ties -= !all;
    }
    if (take) ap_bitmap_set(mask, base + idx[i]);
  }
}

/*
 * The candidates of a layer-wide selection around rank k: per thread range
 * of mask words (in flat order), the keys inside the bracket, and how many
 * keys lie below it.
 */
typedef struct {
  int nt;
  size_t below, c;        /* keys (of the padded words) below the bracket; candidates in all */
  size_t *cnt, *off, *ge; /* per range: candidates, their offset in buf, keys at or above lo */
  uint32_t *buf;
  uint32_t *idx;        /* with marks: each candidate's index from its range's first word (buf's layout) */
  uint64_t *below_bits; /* with marks: per mask word, its surviving keys below the bracket */
} layer_cands;

static void layer_cands_free(layer_cands *lc) {
  free(lc->cnt);
  free(lc->off);
  free(lc->ge);
  free(lc->buf);
  free(lc->idx);
  free(lc->below_bits);
  memset(lc, 0, sizeof *lc);
}

/*
 * Steps 1 and 2 of the layer selection for rank k (k below the number of
 * surviving weights): pivots from a stratified sample, then one parallel
 * pass over the weights (with `marks`, also what the marking needs, so the
 * weights are read once; see layer_pass). Returns AP_PRUNE_OK with rank k inside the
 * candidates (below <= k < below + c), AP_PRUNE_ENAN, or AP_SIMD_DECLINE
 * (small layer, no memory, a missed bracket or an overflow); lc owns its
 * buffers on AP_PRUNE_OK only.
 */
AVX2 static int layer_candidates(const float *w, const float *norms, const uint64_t *mask, size_t rows, size_t cols,
                                 size_t k, int marks, layer_cands *lc) {
  size_t n = rows * cols, nw = ap_bitmap_words(n);
  memset(lc, 0, sizeof *lc);
  if (n < LAYER_MIN) return AP_SIMD_DECLINE;
  int rc = AP_PRUNE_OK;
  int nt = omp_get_max_threads();
  /* indices are 32-bit from the start of a range */
  if (marks && (nw / (size_t)nt + 1) * 64 > UINT32_MAX) return AP_SIMD_DECLINE;
  lc->nt = nt;
  size_t runs_max = marks ? LAYER_RUNS_MARK : LAYER_RUNS_STAT;
  uint32_t *smp = malloc((n / 128 < runs_max ? n / 128 : runs_max) * LAYER_RUN * sizeof *smp);
  size_t *cap = calloc((size_t)nt, sizeof *cap);
  lc->cnt = calloc((size_t)nt, sizeof *lc->cnt);
  lc->ge = calloc((size_t)nt, sizeof *lc->ge);
  lc->off = calloc((size_t)nt + 1, sizeof *lc->off);
  if (!smp || !cap || !lc->cnt || !lc->ge || !lc->off) {
    rc = AP_SIMD_DECLINE; /* the radix path needs far less memory */
    goto done;
  }
  /* 1. pivots from a stratified sample of runs (sign bits cleared: a NaN stays above every score) */
  size_t runs = n / 128 < runs_max ? n / 128 : runs_max, S = runs * LAYER_RUN;
#pragma omp parallel for num_threads(nt) schedule(static)
  for (size_t i = 0; i < runs; i++) {
    size_t lo = (size_t)((double)i * (double)n / (double)runs);
    size_t hi = (size_t)((double)(i + 1) * (double)n / (double)runs) - LAYER_RUN; /* runs stay inside */
    uint64_t x = (0x9E3779B97F4A7C15ull ^ n) + i * 0xBF58476D1CE4E5B9ull; /* splitmix64 of the run */
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
    x ^= x >> 31;
    size_t j0 = lo + (size_t)(((x >> 32) * (uint64_t)(hi - lo + 1)) >> 32);
    for (size_t r = 0; r < LAYER_RUN; r++) {
      size_t j = j0 + r;
      uint32_t v = ap_score_bits(norms ? fabsf(w[j]) * norms[j % cols] : fabsf(w[j])) & 0x7fffffffu;
      smp[i * LAYER_RUN + r] = mask && ap_bitmap_get(mask, j) ? AP_SIMD_PRUNED_KEY : v;
    }
  }
  double p = ((double)k + 0.5) / (double)n, q = p * (double)S;
  double d = 3.0 * sqrt((double)S * p * (1.0 - p)) + 2.0;
  double qlo = floor(q - d), qhi = ceil(q + d);
  /* the first select leaves everything above qlo behind it: the second looks only there */
  uint32_t lo = qlo > 0 ? ap_select_u32_inplace(smp, S, (size_t)qlo) : 0;
  size_t from = qlo > 0 ? (size_t)qlo + 1 : 0;
  uint32_t hi = qhi < (double)S - 1 ? ap_select_u32_inplace(smp + from, S - from, (size_t)qhi - from) : AP_SIMD_PRUNED_KEY;
  /* 2. one pass: count keys at or above lo, compact those in [lo, hi] (capacity: 1.5x the expectation) */
  double frac = (qhi - qlo + 1.0) / (double)S;
  size_t total = 0;
  for (int t = 0; t < nt; t++) {
    size_t words = (size_t)(t + 1) * nw / (size_t)nt - (size_t)t * nw / (size_t)nt;
    cap[t] = (size_t)(1.5 * frac * (double)(words * 64)) + 1024;
    lc->off[t] = total;
    total += cap[t] + 64;
  }
  lc->buf = malloc(total * sizeof *lc->buf);
  if (marks) {
    lc->idx = malloc(total * sizeof *lc->idx);
    lc->below_bits = malloc(nw * sizeof *lc->below_bits);
  }
  if (!lc->buf || (marks && (!lc->idx || !lc->below_bits))) {
    rc = AP_SIMD_DECLINE; /* the radix path needs far less memory */
    goto done;
  }
  int nan = 0, overflow = 0;
  /* one range of words per thread, in flat order (any thread may take any range) */
#pragma omp parallel for num_threads(nt) schedule(static, 1) reduction(| : nan, overflow)
  for (int i = 0; i < nt; i++) {
    size_t w0 = (size_t)i * nw / (size_t)nt, w1 = (size_t)(i + 1) * nw / (size_t)nt;
    nan |= layer_pass(w, norms, mask, n, cols, w0, w1, lo, hi, lc->buf + lc->off[i], cap[i], &lc->cnt[i], &lc->ge[i],
                      &overflow, marks ? lc->idx + lc->off[i] : NULL, lc->below_bits);
  }
  if (nan) {
    rc = AP_PRUNE_ENAN;
    goto done;
  }
  if (overflow) {
    rc = AP_SIMD_DECLINE;
    goto done;
  }
  /* keys below lo: every key of the padded words minus those at or above it */
  lc->below = nw * 64;
  for (int t = 0; t < nt; t++) lc->below -= lc->ge[t];
  for (int t = 0; t < nt; t++) lc->c += lc->cnt[t];
  if (k < lc->below || k >= lc->below + lc->c) rc = AP_SIMD_DECLINE; /* the sample missed (rare): the exact path */
done:
  free(smp);
  free(cap);
  if (rc) layer_cands_free(lc);
  return rc;
}

/*
 * Step 3: the key of rank k (inside the candidates) and the keys below and
 * equal to it, from a copy of the candidates (lc keeps each range's own, in
 * order, for the tie split of the marking).
 */
AVX2 static int layer_cands_select(const layer_cands *lc, size_t k, uint32_t *key, size_t *less, size_t *equal) {
  uint32_t *b2 = malloc(2 * (lc->c + 8) * sizeof *b2);
  if (!b2) return AP_SIMD_DECLINE; /* the radix path needs far less memory */
  size_t c = 0;
  for (int t = 0; t < lc->nt; t++) {
    memcpy(b2 + c, lc->buf + lc->off[t], lc->cnt[t] * sizeof *b2);
    c += lc->cnt[t];
  }
  pf_cursor none = {NULL, NULL};
  *key = select_rounds(b2, c, k - lc->below, b2, b2 + c + 8, less, equal, &none);
  *less += lc->below;
  free(b2);
  return AP_PRUNE_OK;
}

int ap_select_layer_avx2(const float *w, const float *norms, const uint64_t *mask, size_t rows, size_t cols,
                         size_t k, uint32_t *key, size_t *n_less, size_t *n_equal, uint32_t *key_next) {
  layer_cands lc;
  int rc = layer_candidates(w, norms, mask, rows, cols, k, 0, &lc);
  if (rc) return rc;
  size_t less, equal;
  rc = layer_cands_select(&lc, k, key, &less, &equal);
  if (!rc && key_next) {
    if (k + 1 < less + equal) {
      *key_next = *key;
    } else if (k + 1 >= lc.below + lc.c) {
      rc = AP_SIMD_DECLINE; /* rank k + 1 lies above the bracket (rare) */
    } else {
      /* the smallest candidate above the key: the next rank is inside the candidates */
      uint32_t next = AP_SIMD_PRUNED_KEY;
      for (int t = 0; t < lc.nt; t++)
        for (size_t i = 0; i < lc.cnt[t]; i++) {
          uint32_t v = lc.buf[lc.off[t] + i];
          if (v > *key && v < next) next = v;
        }
      *key_next = next;
    }
  }
  if (!rc && n_less) *n_less = less;
  if (!rc && n_equal) *n_equal = equal;
  layer_cands_free(&lc);
  return rc;
}

int ap_mask_layer_avx2(const float *w, const float *norms, uint64_t *mask, size_t rows, size_t cols, size_t k) {
  layer_cands lc;
  int rc = layer_candidates(w, norms, mask, rows, cols, k, 1, &lc);
  if (rc) return rc;
  size_t n = rows * cols, nw = ap_bitmap_words(n), less, equal;
  uint32_t t;
  rc = layer_cands_select(&lc, k, &t, &less, &equal);
  if (rc) goto done;
  /* 4. mark: below t, and the first `quota` ties in flat order, shared out by thread range */
  int nt = lc.nt;
  size_t quota = k + 1 - less;
  int all = quota == equal;
  for (int i = 0; i < nt && !all; i++) {
    size_t lt, eq;
    count_lt_eq(lc.buf + lc.off[i], lc.cnt[i], t, &lt, &eq); /* every surviving tie of range i is a candidate */
    lc.ge[i] = eq < quota ? eq : quota;                       /* reused: range i's share of the ties */
    quota -= lc.ge[i];
  }
#pragma omp parallel for num_threads(nt) schedule(static, 1)
  for (int i = 0; i < nt; i++) {
    size_t w0 = (size_t)i * nw / (size_t)nt, w1 = (size_t)(i + 1) * nw / (size_t)nt;
    size_t o = lc.off[i];
    layer_mark(mask, w0, w1, lc.below_bits, lc.buf + o, lc.idx + o, lc.cnt[i], t, all, all ? 0 : lc.ge[i]);
  }
done:
  layer_cands_free(&lc);
  return rc;
}

/*
 * N:M, m in {2, 4, 8}: a group never straddles a vector of 8 keys, so the
 * rank of every key inside its group counts the keys ordered before it,
 * from compares against rotated copies of the vector, with the tie rule of the scalar code: key j is ordered
 * before key i when k_j < k_i, or k_j == k_i and j < i. The scalar code
 * orders the keys as unsigned integers (pruned weights 0xffffffff, NaN just
 * below); flipping the sign bit gives the same order under signed vector
 * compares, NaN groups included, whose bits the scalar code also writes
 * before it reports the error.
 */

/* Weights prefetched ahead of the N:M pass (rows are contiguous, so into the next row). */
#define NM_PREFETCH 2048

/* x rotated by s inside groups of m lanes: lane i gets the key of lane (i + s) mod m of its group. */
AVX2_INLINE __m256i nm_rot(__m256i x, unsigned m, unsigned s) {
  if (m == 2) return _mm256_shuffle_epi32(x, 0xb1);
  if (m == 4) {
    if (s == 1) return _mm256_shuffle_epi32(x, 0x39);
    if (s == 2) return _mm256_shuffle_epi32(x, 0x4e);
    return _mm256_shuffle_epi32(x, 0x93);
  }
  return _mm256_permutevar8x32_epi32(x, _mm256_add_epi32(_mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
                                                         _mm256_set1_epi32((int)s)) /* vpermd reads idx mod 8 */);
}

/* All lanes set where the rotated key (lane (i + s) mod m) has the lower column, i.e. i mod m >= m - s. */
AVX2_INLINE __m256i nm_tie(unsigned m, unsigned s) {
  const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  __m256i off = _mm256_and_si256(lane, _mm256_set1_epi32((int)m - 1));
  return _mm256_cmpgt_epi32(off, _mm256_set1_epi32((int)(m - s) - 1));
}

/* The kernel for one constant m (inlined three times, so the rotations are immediates). */
AVX2_INLINE int nm_row_m(const float *wrow, const float *norms, size_t cols8, unsigned n, const unsigned m,
                         uint64_t *mask, size_t pos, size_t *over) {
  __m256i tie[4];
  for (unsigned s = 1; 2 * s <= m; s++) tie[s - 1] = nm_tie(m, s);
  const __m256 absm = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
  const __m256i bias = _mm256_set1_epi32(INT32_MIN);
  const __m256i pk = _mm256_set1_epi32(INT32_MAX); /* 0xffffffff, the scalar pruned key, biased */
  const __m256i infb = _mm256_set1_epi32((int)(AP_SCORE_INF_KEY ^ 0x80000000u));
  const __m256i nv = _mm256_set1_epi32((int)n), zero = _mm256_setzero_si256(), ones = _mm256_set1_epi32(-1);
  __m256i vnan = zero;
  size_t ov = 0;
  for (size_t c0 = 0; c0 < cols8; c0 += 64) {
    unsigned nb = cols8 - c0 < 64 ? (unsigned)(cols8 - c0) : 64; /* a multiple of 8 */
    uint64_t old = ap_bitmap_load_bits(mask, pos + c0, nb), bits = 0;
    /* a prefetch past the end of the matrix is harmless: it never faults */
    for (unsigned l = 0; l < 256; l += 64) _mm_prefetch((const char *)(wrow + c0 + NM_PREFETCH) + l, _MM_HINT_T0);
    for (unsigned v = 0; v < nb; v += 8) {
      size_t j = c0 + v;
      /* the scalar key: |w| * norm, or |w| itself for magnitude (NaN payloads included) */
      __m256 a = _mm256_and_ps(_mm256_loadu_ps(wrow + j), absm);
      if (norms) a = _mm256_mul_ps(a, _mm256_loadu_ps(norms + j));
      __m256i x = _mm256_xor_si256(_mm256_castps_si256(a), bias);
      __m256i need = nv, live = nv;
      unsigned pb = (unsigned)(old >> v) & 0xffu;
      if (pb) {
        __m256i p = lanes_of_bits(pb), have = p; /* minus the pruned count of each lane's group */
        for (unsigned s = 1; s < m; s++) have = _mm256_add_epi32(have, nm_rot(p, m, s));
        x = _mm256_blendv_epi8(x, pk, p);
        need = _mm256_max_epi32(_mm256_add_epi32(nv, have), zero);
        /* groups over their n: every lane of such a group is counted, m per group */
        __m256i is_over = _mm256_cmpgt_epi32(_mm256_sub_epi32(zero, have), nv);
        ov += (size_t)__builtin_popcount((unsigned)_mm256_movemask_ps(_mm256_castsi256_ps(is_over))) / m;
        live = _mm256_andnot_si256(p, need);
      }
      __m256i rank = zero;
      for (unsigned s = 1; 2 * s <= m; s++) {
        __m256i y = nm_rot(x, m, s);
        __m256i tied = _mm256_and_si256(_mm256_cmpeq_epi32(x, y), tie[s - 1]);
        __m256i before = _mm256_or_si256(_mm256_cmpgt_epi32(x, y), tied);
        rank = _mm256_sub_epi32(rank, before);
        /* rotation m - s compares the same pairs the other way round, and
         * (key, column) is a strict order: its answer is the negation, moved */
        if (2 * s < m) rank = _mm256_sub_epi32(rank, _mm256_xor_si256(nm_rot(before, m, m - s), ones));
      }
      bits |= (uint64_t)(unsigned)_mm256_movemask_ps(_mm256_castsi256_ps(_mm256_cmpgt_epi32(need, rank))) << v;
      /* NaN among the surviving keys of a group that needs pruning */
      vnan = _mm256_or_si256(vnan, _mm256_and_si256(_mm256_cmpgt_epi32(x, infb), _mm256_cmpgt_epi32(live, zero)));
    }
    if (bits) ap_bitmap_or_bits(mask, pos + c0, bits, nb);
  }
  *over += ov;
  return !_mm256_testz_si256(vnan, vnan);
}

AVX2 int ap_mask_nm_row_avx2(const float *wrow, const float *norms, size_t cols8, unsigned n, unsigned m,
                             uint64_t *mask, size_t pos, size_t *over) {
  if (m == 2) return nm_row_m(wrow, norms, cols8, n, 2, mask, pos, over);
  if (m == 4) return nm_row_m(wrow, norms, cols8, n, 4, mask, pos, over);
  return nm_row_m(wrow, norms, cols8, n, 8, mask, pos, over);
}

#else /* not x86-64 with GCC/Clang: the scalar path only */

void ap_simd_sort_sample(uint32_t *x, size_t s) {
  for (size_t i = 1; i < s; i++) /* never called in production here; an insertion sort keeps the test linking */
    for (size_t j = i; j > 0 && x[j - 1] > x[j]; j--) {
      uint32_t t = x[j];
      x[j] = x[j - 1];
      x[j - 1] = t;
    }
}

int ap_mask_layer_avx2(const float *w, const float *norms, uint64_t *mask, size_t rows, size_t cols, size_t k) {
  (void)w, (void)norms, (void)mask, (void)rows, (void)cols, (void)k;
  return AP_SIMD_DECLINE;
}

int ap_select_layer_avx2(const float *w, const float *norms, const uint64_t *mask, size_t rows, size_t cols,
                         size_t k, uint32_t *key, size_t *n_less, size_t *n_equal, uint32_t *key_next) {
  (void)w, (void)norms, (void)mask, (void)rows, (void)cols, (void)k, (void)key, (void)n_less, (void)n_equal,
      (void)key_next;
  return AP_SIMD_DECLINE;
}

int ap_mask_nm_row_avx2(const float *wrow, const float *norms, size_t cols8, unsigned n, unsigned m, uint64_t *mask,
                        size_t pos, size_t *over) {
  (void)wrow, (void)norms, (void)cols8, (void)n, (void)m, (void)mask, (void)pos, (void)over;
  return 0;
}


size_t ap_simd_count_range(const uint64_t *m, size_t begin, size_t end) { return ap_bitmap_count_range(m, begin, end); }

int ap_mask_simd_available(void) { return 0; }

int ap_mask_row_avx2(const float *wrow, const float *norms, size_t cols, size_t pruned, size_t need,
                     uint64_t *mask, size_t pos, size_t rows_ahead, ap_simd_row_ws *ws) {
  (void)wrow, (void)norms, (void)cols, (void)pruned, (void)need, (void)mask, (void)pos, (void)rows_ahead, (void)ws;
  return AP_PRUNE_EINVAL;
}

#endif
