/*
 * ap_math_ext.h - more per-element math shared by the CPU code and the CUDA
 * kernels (kernels/cuda), in the spirit of ap_math.h: every function is
 * `static inline`, __host__ __device__ under nvcc, free of libc state, and
 * the single definition of its piece of math. tests/kernels_shared checks
 * them on the CPU against double-precision references and against the CPU
 * pruning library (pruner-svc/prune), so most of the GPU logic is covered by
 * CI on machines without a GPU.
 *
 * Contents
 *  - F32 -> F16 narrowing (the twin of dtype.h's ap_f32_to_f16, for the
 *    GEMM input conversion on the GPU);
 *  - online softmax (running max and sum), as the attention kernels use it;
 *  - RMSNorm, cross-entropy and attention-backward element formulas;
 *  - pruning: Wanda score keys (identical to score.h's ap_score_key), the
 *    per-row target count (identical to ap_mask_count_target), radix-select
 *    digit steps and the N:M decision for one group.
 */
#ifndef AP_MATH_EXT_H
#define AP_MATH_EXT_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>

#include "ap_math.h"

/* ---- F16 narrowing -------------------------------------------------------
 * Round to nearest, ties to even; overflow to +-inf; NaN stays NaN (quiet bit
 * set when the payload would vanish). Bit-identical to ap_f32_to_f16. */
static inline APK_HD uint16_t apk_f32_to_f16(float f) {
  uint32_t x = apk_f32_to_bits(f);
  uint16_t sign = (uint16_t)((x >> 16) & 0x8000u);
  uint32_t ax = x & 0x7fffffffu;
  if (ax > 0x7f800000u) {
    uint16_t man = (uint16_t)((ax >> 13) & 0x3ffu);
    if (man == 0) man = 0x200u;
    return (uint16_t)(sign | 0x7c00u | man);
  }
  if (ax >= 0x477ff000u) return (uint16_t)(sign | 0x7c00u);
  if (ax < 0x38800000u) {
    if (ax <= 0x33000000u) return sign;
    uint32_t e = ax >> 23;
    uint32_t m = (ax & 0x7fffffu) | 0x800000u;
    uint32_t shift = 126u - e;
    uint32_t q = m >> shift;
    uint32_t rem = m & ((1u << shift) - 1u);
    uint32_t half = 1u << (shift - 1u);
    if (rem > half || (rem == half && (q & 1u))) q++;
    return (uint16_t)(sign | q);
  }
  uint32_t h = ((((ax >> 23) - 112u) << 10) | ((ax >> 13) & 0x3ffu));
  uint32_t rem = ax & 0x1fffu;
  if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) h++;
  return (uint16_t)(sign | h);
}

/* ---- online softmax ------------------------------------------------------
 * State (m, l) of a row of scores seen so far: m = max, l = sum exp(s - m).
 * Start with m = -INFINITY, l = 0. The guard keeps a row whose scores are all
 * -inf (fully masked) at l = 0 instead of producing NaN from inf - inf. */
static inline APK_HD void apk_softmax_step(float *m, float *l, float s, float *rescale, float *p) {
  float mn = s > *m ? s : *m;
  if (mn == -INFINITY) {
    *rescale = 1.0f;
    *p = 0.0f;
    return;
  }
  *rescale = expf(*m - mn);
  *p = expf(s - mn);
  *l = *l * *rescale + *p;
  *m = mn;
}

/* Merges state (m2, l2) into (m, l); *r1 and *r2 receive the factors that
 * rescale accumulators of the first and second part. */
static inline APK_HD void apk_softmax_merge(float *m, float *l, float m2, float l2, float *r1, float *r2) {
  float mn = m2 > *m ? m2 : *m;
  if (mn == -INFINITY) {
    *r1 = 1.0f;
    *r2 = 0.0f;
    return;
  }
  *r1 = expf(*m - mn);
  *r2 = expf(m2 - mn);
  *l = *l * *r1 + l2 * *r2;
  *m = mn;
}

/* Log-sum-exp of a finished row (what attention keeps for its backward). */
static inline APK_HD float apk_softmax_lse(float m, float l) { return m + logf(l); }

/* Attention backward for one (query, key) pair: p = exp(s - lse) with s the
 * scaled score, returned in *p; the result is dS = p * (dP - delta), where dP
 * = dout . v and delta = dout . out of the query row. */
static inline APK_HD float apk_attn_dscore(float s, float lse, float dp, float delta, float *p) {
  *p = expf(s - lse);
  return *p * (dp - delta);
}

/* ---- RMSNorm -------------------------------------------------------------- */

/* 1 / sqrt(mean square + eps) from the row's sum of squares (in double). */
static inline APK_HD float apk_rmsnorm_rstd(double sumsq, int64_t C, float eps) {
  return (float)(1.0 / sqrt(sumsq / (double)C + (double)eps));
}

static inline APK_HD float apk_rmsnorm_out(float x, float rstd, float w) { return (x * rstd) * w; }

/* Backward: with dot = sum_i dy_i w_i x_i (double), k = dot rstd^3 / C and
 * dx_i = rstd w_i dy_i - k x_i. */
static inline APK_HD float apk_rmsnorm_bwd_k(double dot, float rstd, int64_t C) {
  return (float)(dot * (double)rstd * rstd * rstd / (double)C);
}

static inline APK_HD float apk_rmsnorm_dx(float dy, float x, float w, float rstd, float k) {
  return rstd * w * dy - k * x;
}

/* ---- cross-entropy ---------------------------------------------------------
 * Gradient of scale * nll wrt one logit x of a row with log-sum-exp lse. */
static inline APK_HD float apk_ce_grad(float x, double lse, float scale, int is_target) {
  float g = scale * (float)exp((double)x - lse);
  return is_target ? g - scale : g;
}

/* ---- pruning -------------------------------------------------------------
 * Scores are non-negative floats; their bit patterns are order-preserving
 * keys (score.h). Pruned weights get APK_KEY_PRUNED, above every score; a
 * key above APK_KEY_INF (other than the pruned marker) is a NaN score. */
#define APK_KEY_INF 0x7f800000u
#define APK_KEY_PRUNED 0xffffffffu

/* ||X_j|| from the sum of squares, rounded to float as score.h does. */
static inline APK_HD float apk_wanda_norm(double xsq) { return (float)sqrt(xsq); }

/* Key of |w| * norm (norm 1.0f for magnitude scores). */
static inline APK_HD uint32_t apk_score_key_of(float w, float norm) { return apk_f32_to_bits(fabsf(w) * norm); }

static inline APK_HD int apk_key_is_nan(uint32_t key) { return key > APK_KEY_INF && key != APK_KEY_PRUNED; }

/* Pruned weights demanded of `count` weights at sparsity t: floor(t*count + 0.5),
 * clamped to [0, count] (ap_mask_count_target). */
static inline APK_HD uint64_t apk_prune_target(uint64_t count, double t) {
  double k = floor(t * (double)count + 0.5);
  if (k < 0) return 0;
  if (k > (double)count) return count;
  return (uint64_t)k;
}

/* The pruning order: increasing key, then increasing index. */
static inline APK_HD int apk_key_before(uint32_t ka, uint64_t ia, uint32_t kb, uint64_t ib) {
  return ka < kb || (ka == kb && ia < ib);
}

static inline APK_HD int apk_popcount64(uint64_t x) {
#ifdef __CUDA_ARCH__
  return __popcll(x);
#else
  return __builtin_popcountll(x);
#endif
}

/* Radix selection, 8-bit digits from the most significant: pass 0 looks at
 * bits 31..24, pass 3 at bits 7..0. A key takes part in pass p when its
 * upper 8*p bits equal those of `prefix` (the digits chosen so far). */
#define APK_RADIX_BITS 8
#define APK_RADIX_BINS 256
#define APK_RADIX_PASSES 4

static inline APK_HD unsigned apk_radix_digit(uint32_t key, int pass) {
  return (key >> (24 - 8 * pass)) & 0xffu;
}

static inline APK_HD int apk_radix_in_prefix(uint32_t key, uint32_t prefix, int pass) {
  if (pass == 0) return 1;
  uint32_t hi_mask = 0xffffffffu << (32 - 8 * pass);
  return (key & hi_mask) == (prefix & hi_mask);
}

/* Given the histogram of one pass and the 0-based rank *k among the keys
 * that took part, returns the digit that holds rank *k and lowers *k by the
 * number of keys in smaller digits. *k must be below the histogram total. */
static inline APK_HD unsigned apk_radix_pick(const uint32_t *hist, uint64_t *k) {
  uint64_t below = 0;
  for (unsigned d = 0; d < APK_RADIX_BINS; d++) {
    if (below + hist[d] > *k) {
      *k -= below;
      return d;
    }
    below += hist[d];
  }
  return APK_RADIX_BINS - 1; /* unreachable when *k < total */
}

/* Adds digit d of pass p to the prefix being built. */
static inline APK_HD uint32_t apk_radix_extend(uint32_t prefix, int pass, unsigned d) {
  return prefix | ((uint32_t)d << (24 - 8 * pass));
}

/* N:M for one group of `len` (1..64) consecutive weights of a row: keys[i]
 * their scores, `pruned` the bits already set (bit i = weight i). Returns the
 * group's new pruned bits: the lowest surviving (key, index) weights are
 * added until min(n, len) are pruned. *over = 1 when the group already had
 * more than that. *nan = 1 when the group needed pruning and a survivor's
 * score is NaN; as in the CPU library (mask.c) the group is still pruned,
 * NaN keys ordering above every number, and the caller reports the error. */
static inline APK_HD uint64_t apk_nm_group(const uint32_t *keys, uint64_t pruned, unsigned len, unsigned n, int *over,
                                           int *nan) {
  unsigned target = n < len ? n : len;
  unsigned have = (unsigned)apk_popcount64(pruned);
  *over = have > target;
  *nan = 0;
  if (have >= target) return pruned;
  unsigned need = target - have;
  uint64_t out = pruned;
  for (unsigned i = 0; i < len; i++) {
    if ((pruned >> i) & 1u) continue;
    if (apk_key_is_nan(keys[i])) *nan = 1;
    unsigned rank = 0;
    for (unsigned j = 0; j < len; j++)
      if (j != i && !((pruned >> j) & 1u) && apk_key_before(keys[j], j, keys[i], i)) rank++;
    if (rank < need) out |= (uint64_t)1 << i;
  }
  return out;
}

#endif
