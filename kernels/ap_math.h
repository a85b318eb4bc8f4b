/*
 * ap_math.h - per-element math shared by every kernels backend.
 *
 * Each function here is the single definition of one piece of element math
 * (dtype conversion, SiLU, a RoPE rotation, a mask bit...). The CPU backend
 * (kernels/cpu) and the CUDA backend (kernels/cuda, compiled by nvcc) both
 * call them, so that the two backends cannot drift apart in what they compute;
 * only loop structure and reductions differ between them.
 *
 * Everything is `static inline` and free of libc state, so nvcc can compile it
 * as device code.
 */
#ifndef AP_MATH_H
#define AP_MATH_H

#include <math.h>
#include <stdint.h>
#include <string.h>

#ifdef __CUDACC__
#define APK_HD __host__ __device__
#else
#define APK_HD
#endif

/* ---- dtype conversions -------------------------------------------------- */

/* Bit-exact reinterpretation without aliasing problems (memcpy folds away). */
static inline APK_HD float apk_bits_to_f32(uint32_t u) {
  float f;
  memcpy(&f, &u, sizeof f);
  return f;
}

static inline APK_HD uint32_t apk_f32_to_bits(float f) {
  uint32_t u;
  memcpy(&u, &f, sizeof u);
  return u;
}

/* BF16 is the upper half of an IEEE float32: exact widening. */
static inline APK_HD float apk_bf16_to_f32(uint16_t h) { return apk_bits_to_f32((uint32_t)h << 16); }

/* Round-to-nearest-even narrowing, NaN kept quiet (as torch does). */
static inline APK_HD uint16_t apk_f32_to_bf16(float f) {
  uint32_t u = apk_f32_to_bits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40);
  u += 0x7fffu + ((u >> 16) & 1u);
  return (uint16_t)(u >> 16);
}

/* IEEE binary16 -> binary32, exact for every input including subnormals. */
static inline APK_HD float apk_f16_to_f32(uint16_t h) {
  uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1fu;
  uint32_t man = h & 0x3ffu;
  uint32_t bits;
  if (exp == 0x1f) {
    bits = sign | 0x7f800000u | (man << 13);
  } else if (exp != 0) {
    bits = sign | ((exp + 112u) << 23) | (man << 13);
  } else if (man == 0) {
    bits = sign;
  } else {
    /* Subnormal: value = man * 2^-24, exactly representable in f32. */
    float v = (float)man * 5.9604644775390625e-8f;
    bits = sign | apk_f32_to_bits(v);
  }
  return apk_bits_to_f32(bits);
}

/* ---- activations -------------------------------------------------------- */

static inline APK_HD float apk_silu(float x) { return x / (1.0f + expf(-x)); }

/* d silu(x) / dx = s(x) * (1 + x * (1 - s(x))) with s the logistic function. */
static inline APK_HD float apk_silu_grad(float x) {
  float s = 1.0f / (1.0f + expf(-x));
  return s * (1.0f + x * (1.0f - s));
}

/* ---- RoPE (Hugging Face rotate_half layout) -----------------------------
 * A head vector x of size D is split in halves x1 = x[0:D/2], x2 = x[D/2:D].
 * For pair i: out[i] = x1 c - x2 s, out[i + D/2] = x2 c + x1 s,
 * with c = cos(pos * inv_freq[i]), s = sin(...). The backward pass is the
 * rotation by -angle (the transpose of an orthogonal 2x2 block). */
static inline APK_HD void apk_rope_rotate(float x1, float x2, float c, float s, float *o1, float *o2) {
  *o1 = x1 * c - x2 * s;
  *o2 = x2 * c + x1 * s;
}

/* ---- pruning masks -------------------------------------------------------
 * A mask is a bitmap with 1 bit per weight, row-major over the weight matrix,
 * bit i in byte i/8 at bit position i%8 (LSB first); 1 = pruned. */
static inline APK_HD int apk_mask_bit(const uint8_t *mask, uint64_t i) {
  return (mask[i >> 3] >> (i & 7)) & 1;
}

static inline APK_HD void apk_mask_set(uint8_t *mask, uint64_t i) {
  mask[i >> 3] = (uint8_t)(mask[i >> 3] | (1u << (i & 7)));
}

#endif
