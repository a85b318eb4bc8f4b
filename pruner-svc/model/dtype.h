/*
 * dtype.h - the element types of model weights (F32, F16, BF16) and exact
 * scalar conversions between them and float.
 *
 * Header-only so the CUDA backend compiles the very same code for the device:
 * under nvcc every conversion is __host__ __device__. The name helpers use
 * the C library and stay host-only.
 *
 * Rounding: float -> bf16 and float -> f16 round to nearest, ties to even,
 * like PyTorch's .to(torch.bfloat16) / numpy's astype(float16). Overflow
 * rounds to +-inf. NaN stays NaN with its sign and as much payload as fits;
 * a NaN whose payload would truncate to zero gets the quiet bit, so the
 * result is never mistaken for inf. Consequently bf16 -> f32 -> bf16 and
 * f16 -> f32 -> f16 reproduce every one of the 65536 bit patterns exactly.
 */
#ifndef AP_DTYPE_H
#define AP_DTYPE_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#ifdef __CUDACC__
#define AP_HD __host__ __device__
#else
#define AP_HD
#endif

#ifdef __cplusplus
extern "C" {
#endif

/* Values are stable: they may be stored in checkpoints and sent over RPC. */
typedef enum ap_dtype { AP_F32 = 0, AP_F16 = 1, AP_BF16 = 2 } ap_dtype;

#define AP_DTYPE_COUNT 3

/* Bytes per element; 0 for a value outside the enum. */
static inline AP_HD size_t ap_dtype_size(ap_dtype t) {
  return t == AP_F32 ? 4 : (t == AP_F16 || t == AP_BF16) ? 2 : 0;
}

/* The safetensors spelling: "F32", "F16", "BF16"; "?" for a value outside the enum. */
static inline const char *ap_dtype_name(ap_dtype t) {
  return t == AP_F32 ? "F32" : t == AP_F16 ? "F16" : t == AP_BF16 ? "BF16" : "?";
}

/* Parses a safetensors dtype string. Returns 0 and sets *out, or -1 when the
 * string is not one of F32, F16, BF16 (case-sensitive, as in the format). */
static inline int ap_dtype_from_name(const char *s, ap_dtype *out) {
  if (!s) return -1;
  if (strcmp(s, "F32") == 0) { *out = AP_F32; return 0; }
  if (strcmp(s, "F16") == 0) { *out = AP_F16; return 0; }
  if (strcmp(s, "BF16") == 0) { *out = AP_BF16; return 0; }
  return -1;
}

/* memcpy is the portable, alias-safe bit cast in C and in CUDA device code. */
static inline AP_HD uint32_t ap_f32_bits(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }
static inline AP_HD float ap_bits_f32(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }

/* bf16 is the top half of an f32, so widening is exact. */
static inline AP_HD float ap_bf16_to_f32(uint16_t h) { return ap_bits_f32((uint32_t)h << 16); }

static inline AP_HD uint16_t ap_f32_to_bf16(float f) {
  uint32_t x = ap_f32_bits(f);
  if ((x & 0x7fffffffu) > 0x7f800000u) {
    uint16_t h = (uint16_t)(x >> 16);
    if ((h & 0x7fu) == 0) h |= 0x40u; /* payload lived in the dropped bits */
    return h;
  }
  /* Adding 0x7fff plus the lowest kept bit rounds half to even; a carry into
   * the exponent is the correct result, up to and including inf. */
  x += 0x7fffu + ((x >> 16) & 1u);
  return (uint16_t)(x >> 16);
}

static inline AP_HD float ap_f16_to_f32(uint16_t h) {
  uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1fu;
  uint32_t man = h & 0x3ffu;
  if (exp == 0x1fu) return ap_bits_f32(sign | 0x7f800000u | (man << 13)); /* inf, NaN */
  if (exp != 0) return ap_bits_f32(sign | ((exp + 112u) << 23) | (man << 13));
  if (man == 0) return ap_bits_f32(sign);
  /* Subnormal: shift the leading one up to the implicit position. */
  exp = 113u;
  while (!(man & 0x400u)) { man <<= 1; exp--; }
  return ap_bits_f32(sign | (exp << 23) | ((man & 0x3ffu) << 13));
}

static inline AP_HD uint16_t ap_f32_to_f16(float f) {
  uint32_t x = ap_f32_bits(f);
  uint16_t sign = (uint16_t)((x >> 16) & 0x8000u);
  uint32_t ax = x & 0x7fffffffu;
  if (ax > 0x7f800000u) {
    uint16_t man = (uint16_t)((ax >> 13) & 0x3ffu);
    if (man == 0) man = 0x200u;
    return (uint16_t)(sign | 0x7c00u | man);
  }
  if (ax >= 0x477ff000u) return (uint16_t)(sign | 0x7c00u); /* >= 65520 rounds to inf */
  if (ax < 0x38800000u) {                                   /* below 2^-14: subnormal or zero */
    if (ax <= 0x33000000u) return sign;                     /* <= 2^-25: ties to even zero */
    uint32_t e = ax >> 23;
    uint32_t m = (ax & 0x7fffffu) | 0x800000u;
    uint32_t shift = 126u - e; /* value / 2^-24 == m * 2^(e-126) */
    uint32_t q = m >> shift;
    uint32_t rem = m & ((1u << shift) - 1u);
    uint32_t half = 1u << (shift - 1u);
    if (rem > half || (rem == half && (q & 1u))) q++;
    return (uint16_t)(sign | q); /* q == 0x400 is the smallest normal, correctly */
  }
  uint32_t h = ((((ax >> 23) - 112u) << 10) | ((ax >> 13) & 0x3ffu));
  uint32_t rem = ax & 0x1fffu;
  if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) h++;
  return (uint16_t)(sign | h);
}

/* One element of type t at p (no alignment needed) as float. */
static inline AP_HD float ap_dtype_load_f32(ap_dtype t, const void *p) {
  if (t == AP_F32) { float f; memcpy(&f, p, 4); return f; }
  uint16_t h;
  memcpy(&h, p, 2);
  return t == AP_BF16 ? ap_bf16_to_f32(h) : ap_f16_to_f32(h);
}

/* Stores v as one element of type t at p (no alignment needed), rounding as above. */
static inline AP_HD void ap_dtype_store_f32(ap_dtype t, void *p, float v) {
  if (t == AP_F32) { memcpy(p, &v, 4); return; }
  uint16_t h = t == AP_BF16 ? ap_f32_to_bf16(v) : ap_f32_to_f16(v);
  memcpy(p, &h, 2);
}

#ifdef __cplusplus
}
#endif
#endif
