/*
 * mask_simd.c - AVX2 kernels of ap_mask_rows (see mask_simd.h; the design
 * note is in mask.c).
 *
 * Compiled for the baseline x86-64 target: every AVX2 function carries a
 * target attribute and is reached only after ap_mask_simd_available(), as
 * the CPU kernels (kernels/cpu/simd_math.h) do. Other architectures get stubs
 * that report "not available".
 */
#include "mask_simd.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "bitmap.h"
#include "prune_error.h"
#include "score.h"
#include "select.h"

static void first_sample_positions(ap_simd_row_ws *ws, size_t cols);

int ap_simd_row_ws_init(ap_simd_row_ws *ws, size_t cols) {
  /* +8: the final rank select pads its input to whole vectors */
  size_t n = cols + 8;
  /* 64-byte aligned (whole cache lines), so the vector stores to keys never split a line */
  size_t bytes = (n * sizeof(uint32_t) + 63) & ~(size_t)63;
  ws->s1 = 0;
  ws->keys = aligned_alloc(64, bytes);
  ws->a = aligned_alloc(64, bytes);
  ws->b = aligned_alloc(64, bytes);
  if (!ws->keys || !ws->a || !ws->b) return AP_PRUNE_ENOMEM;
  first_sample_positions(ws, cols);
  return AP_PRUNE_OK;
}

void ap_simd_row_ws_free(ap_simd_row_ws *ws) {
  free(ws->keys);
  free(ws->a);
  free(ws->b);
  ws->keys = ws->a = ws->b = NULL;
}

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#include <pthread.h>

#define AVX2 __attribute__((target("avx2,popcnt")))
#define AVX2_INLINE __attribute__((target("avx2,popcnt"), always_inline)) static inline

/* Below this many keys a set is ranked directly (quadratic but vectorised and branch-free). */
#define RANK_MAX 64

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

AVX2_INLINE uint32_t hmax_epi32(__m256i v) {
  __m128i s = _mm_max_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  s = _mm_max_epi32(s, _mm_shuffle_epi32(s, 0x4e));
  s = _mm_max_epi32(s, _mm_shuffle_epi32(s, 0xb1));
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
 * The first round's sample positions of a row of `cols`: stratified, one
 * pseudo-random column in each of s equal slices, the same for every row
 * (a fixed seed keeps masks and timings reproducible; the answer is exact
 * whatever the sample).
 */
static void first_sample_positions(ap_simd_row_ws *ws, size_t cols) {
  ws->s1 = cols >= 1024 ? 64 : 32;
  uint64_t x = 0x9E3779B97F4A7C15ull ^ cols;
  for (size_t i = 0; i < ws->s1; i++) {
    size_t lo = i * cols / ws->s1, span = (i + 1) * cols / ws->s1 - lo;
    x = x * 6364136223846793005ull + 1442695040888963407ull;
    ws->pos1[i] = (uint32_t)(lo + (size_t)(((x >> 32) * (uint64_t)span) >> 32));
  }
}

/*
 * The q[0..3]-th smallest (0-based) of x[0..s) into o[0..3], s a multiple
 * of 8 and at most RANK_MAX. With lt_i = #{j : x_j < x_i}, the q-th smallest
 * is max{x_i : lt_i <= q}: every larger key has more than q keys below it.
 * Quadratic, but s is small and it is all vector compares, no branches.
 */
AVX2 static void rank_select4(const uint32_t *x, size_t s, const size_t q[4], uint32_t o[4]) {
  __m256i vq[4], best[4];
  for (int i = 0; i < 4; i++) {
    vq[i] = _mm256_set1_epi32((int)q[i] + 1);
    best[i] = _mm256_setzero_si256();
  }
  for (size_t i = 0; i < s; i += 16) {
    /* two vectors of x_i per sweep over x_j: half the broadcasts */
    __m256i xa = _mm256_loadu_si256((const __m256i *)(const void *)(x + i));
    __m256i xb = i + 8 < s ? _mm256_loadu_si256((const __m256i *)(const void *)(x + i + 8)) : xa;
    __m256i la0 = _mm256_setzero_si256(), la1 = la0, lb0 = la0, lb1 = la0;
    for (size_t j = 0; j < s; j += 2) {
      __m256i y0 = _mm256_set1_epi32((int)x[j]), y1 = _mm256_set1_epi32((int)x[j + 1]);
      la0 = _mm256_sub_epi32(la0, _mm256_cmpgt_epi32(xa, y0));
      lb0 = _mm256_sub_epi32(lb0, _mm256_cmpgt_epi32(xb, y0));
      la1 = _mm256_sub_epi32(la1, _mm256_cmpgt_epi32(xa, y1));
      lb1 = _mm256_sub_epi32(lb1, _mm256_cmpgt_epi32(xb, y1));
    }
    __m256i la = _mm256_add_epi32(la0, la1), lb = _mm256_add_epi32(lb0, lb1);
    for (int k = 0; k < 4; k++) {
      best[k] = _mm256_max_epi32(best[k], _mm256_and_si256(_mm256_cmpgt_epi32(vq[k], la), xa));
      best[k] = _mm256_max_epi32(best[k], _mm256_and_si256(_mm256_cmpgt_epi32(vq[k], lb), xb));
    }
  }
  for (int k = 0; k < 4; k++) o[k] = hmax_epi32(best[k]);
}

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
AVX2 static bracket sample_bracket(const uint32_t *x, size_t s, size_t r, size_t m) {
  float p = ((float)r + 0.5f) / (float)m, q = p * (float)s;
  float d = 1.5f * sqrtf((float)s * p * (1.0f - p)) + 1.0f;
  float e[4] = {q - 3.0f * d, q - d, q + d, q + 3.0f * d};
  long qi[4];
  size_t qs[4];
  uint32_t o[4];
  for (int k = 0; k < 4; k++) {
    long t = (long)e[k]; /* truncation toward zero, then floor (k < 2) or ceil (k >= 2) */
    qi[k] = k < 2 ? t - ((float)t > e[k]) : t + ((float)t < e[k]);
    qs[k] = qi[k] < 0 ? 0 : qi[k] > (long)s - 1 ? s - 1 : (size_t)qi[k];
  }
  rank_select4(x, s, qs, o);
  bracket b;
  b.lo2 = qi[0] > 0 ? o[0] : 0;
  b.lo = qi[1] > 0 ? o[1] : 0;
  b.hi = qi[2] < (long)s - 1 ? o[2] : AP_SIMD_PRUNED_KEY;
  b.hi2 = qi[3] < (long)s - 1 ? o[3] : AP_SIMD_PRUNED_KEY;
  return b;
}

/* One bracket step on 8 keys: count those below lo, append those in [lo, hi] to out at *c. */
AVX2_INLINE __m256i bracket8(__m256i k, __m256i vlo, __m256i vhi, __m256i cnt, uint32_t *out, size_t *c) {
  __m256i lt = _mm256_cmpgt_epi32(vlo, k);
  __m256i outside = _mm256_or_si256(lt, _mm256_cmpgt_epi32(k, vhi));
  unsigned keep = ~(unsigned)_mm256_movemask_ps(_mm256_castsi256_ps(outside)) & 0xffu;
  __m256i perm = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(const void *)&compact_lut[keep]));
  _mm256_storeu_si256((__m256i *)(void *)(out + *c), _mm256_permutevar8x32_epi32(k, perm));
  *c += (size_t)__builtin_popcount(keep);
  return _mm256_sub_epi32(cnt, lt);
}

/*
 * The first pass over a row, from memory: keys of w into keys[0..cols)
 * (pruned weights as AP_SIMD_PRUNED_KEY), the count of keys below lo into
 * *below and the keys in [lo, hi] compacted into out; returns how many.
 * *nan = 1 when a surviving weight scores NaN. The score is the scalar
 * path's, fabsf(w) * norm with one rounding (the sign cleared by a mask).
 * A quarter of the row ahead is prefetched alongside. c <= j at every store, so out
 * needs no slack.
 */
AVX2_INLINE size_t keys_bracket_impl(const float *w, const float *norms, size_t cols, const uint64_t *mask,
                                     size_t pos, int has_pruned, uint32_t lo, uint32_t hi, uint32_t *keys,
                                     uint32_t *out, size_t *below, int *nan, pf_cursor *pf) {
  const __m256 absm = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
  const __m256i pk = _mm256_set1_epi32((int)AP_SIMD_PRUNED_KEY);
  const __m256i vlo = _mm256_set1_epi32((int)lo), vhi = _mm256_set1_epi32((int)hi);
  __m256i vnan = _mm256_setzero_si256(), cnt = _mm256_setzero_si256();
  size_t c = 0, b_tail = 0;
  int nan_tail = 0;
  for (size_t c0 = 0; c0 < cols; c0 += 64) {
    unsigned nb = cols - c0 < 64 ? (unsigned)(cols - c0) : 64;
    uint64_t bits = has_pruned ? ap_bitmap_load_bits(mask, pos + c0, nb) : 0;
    size_t j = c0, end8 = c0 + (nb & ~7u);
    pf_lines(pf, 1);
    for (; j < end8; j += 8) {
      __m256 a = _mm256_and_ps(_mm256_loadu_ps(w + j), absm);
      if (norms) a = _mm256_mul_ps(a, _mm256_loadu_ps(norms + j));
      /* a float compare: inf * 0 is the default NaN, sign bit set, below +inf as an int */
      __m256i bad = _mm256_castps_si256(_mm256_cmp_ps(a, a, _CMP_UNORD_Q));
      __m256i k = _mm256_castps_si256(a);
      if (has_pruned) {
        __m256i p = lanes_of_bits((unsigned)(bits & 0xff));
        bits >>= 8;
        bad = _mm256_andnot_si256(p, bad);
        k = _mm256_blendv_epi8(k, pk, p); /* not an OR: a NaN key may have its sign bit set */
      }
      vnan = _mm256_or_si256(vnan, bad);
      _mm256_storeu_si256((__m256i *)(void *)(keys + j), k);
      cnt = bracket8(k, vlo, vhi, cnt, out, &c);
    }
    for (; j < c0 + nb; j++, bits >>= 1) {
      uint32_t k = ap_score_bits(norms ? fabsf(w[j]) * norms[j] : fabsf(w[j]));
      if (bits & 1) k = AP_SIMD_PRUNED_KEY;
      else nan_tail |= k > AP_SCORE_INF_KEY;
      keys[j] = k;
      b_tail += k < lo;
      out[c] = k;
      c += (k >= lo) & (k <= hi);
    }
  }
  *nan = nan_tail || !_mm256_testz_si256(vnan, vnan);
  *below = hsum_epi32(cnt) + b_tail;
  return c;
}

AVX2 static size_t keys_bracket(const float *w, const float *norms, size_t cols, const uint64_t *mask, size_t pos,
                                int has_pruned, uint32_t lo, uint32_t hi, uint32_t *keys, uint32_t *out,
                                size_t *below, int *nan, pf_cursor *pf) {
  /* separate instances so the common dense row carries no mask work */
  if (has_pruned) return keys_bracket_impl(w, norms, cols, mask, pos, 1, lo, hi, keys, out, below, nan, pf);
  if (norms) return keys_bracket_impl(w, norms, cols, mask, pos, 0, lo, hi, keys, out, below, nan, pf);
  return keys_bracket_impl(w, NULL, cols, mask, pos, 0, lo, hi, keys, out, below, nan, pf);
}

/* The same bracket pass over keys already computed (in may not alias out). */
AVX2 static size_t bracket_pass(const uint32_t *in, size_t m, uint32_t lo, uint32_t hi, uint32_t *out,
                                size_t *below, pf_cursor *pf) {
  const __m256i vlo = _mm256_set1_epi32((int)lo), vhi = _mm256_set1_epi32((int)hi);
  __m256i cnt = _mm256_setzero_si256();
  size_t c = 0, j = 0;
  for (; j + 8 <= m; j += 8) {
    if (!(j & 63)) pf_lines(pf, 1);
    cnt = bracket8(_mm256_loadu_si256((const __m256i *)(const void *)(in + j)), vlo, vhi, cnt, out, &c);
  }
  size_t b = hsum_epi32(cnt);
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

/* Pseudo-random 32-bit offsets for the stratified samples of later rounds (fixed: reproducible). */
static const uint32_t sample_jitter[32] = {
    0x8f1bbcdcu, 0x2a3d6e51u, 0xd4c7a1f3u, 0x5e0b9a27u, 0xb3f4c06du, 0x17a95e82u, 0xe86d2b49u, 0x41c0f7b5u,
    0x9c2e4a1du, 0x6b5f83c0u, 0x0ed71c64u, 0xc3a6f912u, 0x7490d5abu, 0x28e13b7fu, 0xf1527e08u, 0x56b8a2e4u,
    0xa71d64c9u, 0x3c8ef015u, 0xde43978au, 0x62fa1b3eu, 0x0b85c6d1u, 0xc96e2f47u, 0x4f37a8bcu, 0x95d04163u,
    0x1ae9fd2cu, 0xe0725398u, 0x79cb8e05u, 0x33146af1u, 0xbd5f2c7au, 0x06a3e49fu, 0x8842b716u, 0x5cf90d83u};

/*
 * Continues a selection: the r-th smallest (0-based) of cur[0..m), with
 * *less / *equal the keys below / equal to it among them (m >= 1, r < m).
 * cur is one of a, b (m + 8 keys each); the rounds ping-pong between them.
 *
 * Floyd-Rivest rounds: a stratified sample of 32 keys gives two pivots that
 * bracket rank r with a margin of about two standard deviations; one vector
 * pass counts the keys below the bracket and compacts those inside. Every
 * key equal to the answer lies inside every bracket, so the last set still
 * holds them all. A bracket that misses is widened to the side that holds r
 * (an exact pass); a round that does not shrink the set (heavy duplicates)
 * hands over to introselect.
 */
AVX2 static uint32_t select_rounds(uint32_t *cur, size_t m, size_t r, uint32_t *a, uint32_t *b, size_t *less,
                                   size_t *equal, pf_cursor *pf) {
  size_t base = 0;
  uint32_t sample[32], t;
  while (m > 32) {
    for (size_t i = 0; i < 32; i++) sample[i] = cur[(i * m + (((uint64_t)sample_jitter[i] * m) >> 32)) >> 5];
    bracket bk = sample_bracket(sample, 32, r, m);
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
  /* small: rank directly, padding with the largest key (never the answer) */
  size_t m8 = (m + 7) & ~(size_t)7;
  for (size_t i = m; i < m8; i++) cur[i] = AP_SIMD_PRUNED_KEY;
  const size_t q[4] = {r, r, r, r};
  uint32_t o[4];
  rank_select4(cur, m8, q, o);
  t = o[0];
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

int ap_mask_row_avx2(const float *wrow, const float *norms, size_t cols, size_t pruned, size_t need,
                     uint64_t *mask, size_t pos, const float *ahead, ap_simd_row_ws *ws) {
  size_t r = need - 1, less, equal, below, c;
  bracket bk = {0, AP_SIMD_PRUNED_KEY, 0, AP_SIMD_PRUNED_KEY};
  uint32_t t;
  int nan;
  if (cols > 32) {
    /* the sample comes from the weights, so the first pass can bracket as it computes the keys */
    uint32_t sample[64];
    for (size_t i = 0; i < ws->s1; i++) {
      size_t j = ws->pos1[i];
      uint32_t k = ap_score_bits(norms ? fabsf(wrow[j]) * norms[j] : fabsf(wrow[j]));
      sample[i] = pruned && ap_bitmap_get(mask, pos + j) ? AP_SIMD_PRUNED_KEY : k;
    }
    bk = sample_bracket(sample, ws->s1, r, cols);
  }
  pf_cursor pf = {NULL, NULL};
  if (ahead) {
    pf.p = (const char *)((uintptr_t)ahead & ~(uintptr_t)63);
    pf.end = (const char *)(ahead + cols);
  }
  c = keys_bracket(wrow, norms, cols, mask, pos, pruned > 0, bk.lo, bk.hi, ws->keys, ws->a, &below, &nan, &pf);
  if (nan) return AP_PRUNE_ENAN;
  c = bracket_retry(ws->keys, cols, r, &bk, ws->a, &below, c, &pf);
  if (bk.lo == bk.hi) { /* every key inside equals the answer */
    t = bk.lo;
    less = below;
    equal = c;
  } else {
    t = select_rounds(ws->a, c, r - below, ws->a, ws->b, &less, &equal, &pf);
    less += below;
  }
  mark_row(ws->keys, cols, t, need - less, equal, mask, pos, &pf);
  return AP_PRUNE_OK;
}

/*
 * N:M, m in {2, 4, 8}: a group never straddles a vector of 8 keys, so the
 * rank of every key inside its group is m-1 compares against rotated copies
 * of the vector (a lane-index permute per rotation), with the tie rule of
 * the scalar code: key j is ordered before key i when k_j < k_i, or k_j ==
 * k_i and j < i. The scalar code orders the keys as unsigned integers
 * (pruned weights 0xffffffff, NaN just below); flipping the sign bit gives
 * the same order under signed vector compares, NaN groups included, whose
 * bits the scalar code also writes before it reports the error.
 */

/* Lane permutes and tie masks for rotation s of groups of m lanes (0 < s < m). */
static void nm_rotation(unsigned m, unsigned s, int32_t idx[8], int32_t tie[8]) {
  for (unsigned i = 0; i < 8; i++) {
    unsigned base = i & ~(m - 1), off = i & (m - 1);
    idx[i] = (int32_t)(base + (off + s) % m);
    tie[i] = off + s >= m ? -1 : 0; /* the compared key has the lower column */
  }
}

AVX2 int ap_mask_nm_row_avx2(const float *wrow, const float *norms, size_t cols8, unsigned n, unsigned m,
                             uint64_t *mask, size_t pos, size_t *over) {
  __m256i idx[7], tie[7];
  for (unsigned s = 1; s < m; s++) {
    int32_t a[8], b[8];
    nm_rotation(m, s, a, b);
    idx[s - 1] = _mm256_loadu_si256((const __m256i *)(const void *)a);
    tie[s - 1] = _mm256_loadu_si256((const __m256i *)(const void *)b);
  }
  const __m256 absm = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
  const __m256i bias = _mm256_set1_epi32(INT32_MIN);
  const __m256i pk = _mm256_set1_epi32(INT32_MAX); /* 0xffffffff, the scalar pruned key, biased */
  const __m256i infb = _mm256_set1_epi32((int)(AP_SCORE_INF_KEY ^ 0x80000000u));
  const __m256i nv = _mm256_set1_epi32((int)n), zero = _mm256_setzero_si256();
  __m256i vnan = zero;
  size_t ov = 0;
  for (size_t c0 = 0; c0 < cols8; c0 += 64) {
    unsigned nb = cols8 - c0 < 64 ? (unsigned)(cols8 - c0) : 64; /* a multiple of 8 */
    uint64_t old = ap_bitmap_load_bits(mask, pos + c0, nb), bits = 0;
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
        for (unsigned s = 1; s < m; s++) have = _mm256_add_epi32(have, _mm256_permutevar8x32_epi32(p, idx[s - 1]));
        x = _mm256_blendv_epi8(x, pk, p);
        need = _mm256_max_epi32(_mm256_add_epi32(nv, have), zero);
        /* groups over their n: every lane of such a group is counted, m per group */
        __m256i is_over = _mm256_cmpgt_epi32(_mm256_sub_epi32(zero, have), nv);
        ov += (size_t)__builtin_popcount((unsigned)_mm256_movemask_ps(_mm256_castsi256_ps(is_over))) / m;
        live = _mm256_andnot_si256(p, need);
      }
      __m256i rank = zero;
      for (unsigned s = 1; s < m; s++) {
        __m256i y = _mm256_permutevar8x32_epi32(x, idx[s - 1]);
        __m256i before = _mm256_or_si256(_mm256_cmpgt_epi32(x, y), _mm256_and_si256(_mm256_cmpeq_epi32(x, y), tie[s - 1]));
        rank = _mm256_sub_epi32(rank, before);
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

/*
 * N:M, m in {2, 4, 8}: a group never straddles a vector of 8 keys, so the
 * rank of every key inside its group is m-1 compares against rotated copies
 * of the vector (a lane-index permute per rotation), with the tie rule of
 * the scalar code: key j is ordered before key i when k_j < k_i, or k_j ==
 * k_i and j < i. The scalar code orders the keys as unsigned integers
 * (pruned weights 0xffffffff, NaN just below); flipping the sign bit gives
 * the same order under signed vector compares, NaN groups included, whose
 * bits the scalar code also writes before it reports the error.
 */
#else /* not x86-64 with GCC/Clang: the scalar path only */

int ap_mask_nm_row_avx2(const float *wrow, const float *norms, size_t cols8, unsigned n, unsigned m, uint64_t *mask,
                        size_t pos, size_t *over) {
  (void)wrow, (void)norms, (void)cols8, (void)n, (void)m, (void)mask, (void)pos, (void)over;
  return 0;
}

static void first_sample_positions(ap_simd_row_ws *ws, size_t cols) { (void)ws, (void)cols; }

size_t ap_simd_count_range(const uint64_t *m, size_t begin, size_t end) { return ap_bitmap_count_range(m, begin, end); }

int ap_mask_simd_available(void) { return 0; }

int ap_mask_row_avx2(const float *wrow, const float *norms, size_t cols, size_t pruned, size_t need,
                     uint64_t *mask, size_t pos, const float *ahead, ap_simd_row_ws *ws) {
  (void)wrow, (void)norms, (void)cols, (void)pruned, (void)need, (void)mask, (void)pos, (void)ahead, (void)ws;
  return AP_PRUNE_EINVAL;
}

#endif
