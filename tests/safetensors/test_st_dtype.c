/*
 * test_st_dtype - bf16/f16 <-> f32 conversions of dtype.h against an
 * independent reference: a decoder written with ldexp, and nearest-value
 * search over the sorted table of all representable values (ties to the
 * even bit pattern). Exhaustive over all 65536 patterns of each 16-bit type,
 * and over millions of random and tie-constructed floats.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "dtype.h"
#include "test.h"

static double ref_f16_decode(uint16_t h) {
  int e = (h >> 10) & 31, m = h & 1023;
  double v = e == 0 ? ldexp(m, -24) : ldexp(1024 + m, e - 25);
  return (h & 0x8000) ? -v : v;
}

static double ref_bf16_decode(uint16_t h) {
  int e = (h >> 7) & 255, m = h & 127;
  double v = e == 0 ? ldexp(m, -133) : ldexp(128 + m, e - 134);
  return (h & 0x8000) ? -v : v;
}

/* Non-negative finite values of a 16-bit type, index == bit pattern; plus one
 * virtual entry past the largest finite value at max + ulp, where rounding to
 * nearest even sends everything from max + ulp/2 on to infinity. */
static double f16_table[0x7c01], bf16_table[0x7f81];

static uint16_t ref_round(const double *table, uint16_t n_finite, uint16_t inf_bits, double v) {
  uint16_t sign = signbit(v) ? 0x8000 : 0;
  double a = fabs(v);
  /* largest index whose value <= a */
  uint32_t lo = 0, hi = n_finite; /* table[hi] is the virtual entry */
  if (a >= table[hi]) return sign | inf_bits;
  while (hi - lo > 1) {
    uint32_t mid = (lo + hi) / 2;
    if (table[mid] <= a) lo = mid;
    else hi = mid;
  }
  double dl = a - table[lo], dh = table[hi] - a;
  uint32_t pick = dl < dh ? lo : dh < dl ? hi : ((lo & 1) ? hi : lo);
  return (uint16_t)(sign | (pick == n_finite ? inf_bits : pick));
}

static uint64_t rng = 0x9e3779b97f4a7c15ull;
static uint32_t next_u32(void) {
  rng ^= rng << 13;
  rng ^= rng >> 7;
  rng ^= rng << 17;
  return (uint32_t)(rng >> 16);
}

static int mismatches_f16, mismatches_bf16;

static void check_float(float f) {
  uint32_t bits = ap_f32_bits(f);
  if (isnan(f)) {
    uint16_t h = ap_f32_to_f16(f), b = ap_f32_to_bf16(f);
    if (!isnan(ap_f16_to_f32(h)) || (h >> 15) != (bits >> 31)) mismatches_f16++;
    if (!isnan(ap_bf16_to_f32(b)) || (b >> 15) != (bits >> 31)) mismatches_bf16++;
    return;
  }
  uint16_t want16 = ref_round(f16_table, 0x7c00, 0x7c00, f);
  uint16_t wantb = ref_round(bf16_table, 0x7f80, 0x7f80, f);
  if (ap_f32_to_f16(f) != want16 && mismatches_f16++ < 5)
    fprintf(stderr, "f16: %a (0x%08x) -> 0x%04x, want 0x%04x\n", f, bits, ap_f32_to_f16(f), want16);
  if (ap_f32_to_bf16(f) != wantb && mismatches_bf16++ < 5)
    fprintf(stderr, "bf16: %a (0x%08x) -> 0x%04x, want 0x%04x\n", f, bits, ap_f32_to_bf16(f), wantb);
}

int main(void) {
  for (uint32_t i = 0; i < 0x7c00; i++) f16_table[i] = ref_f16_decode((uint16_t)i);
  f16_table[0x7c00] = 65536.0;
  for (uint32_t i = 0; i < 0x7f80; i++) bf16_table[i] = ref_bf16_decode((uint16_t)i);
  bf16_table[0x7f80] = ldexp(1.0, 128);

  /* Exhaustive: decode matches the reference, and every pattern round-trips. */
  int bad_dec16 = 0, bad_decb = 0, bad_rt16 = 0, bad_rtb = 0, bad_nan = 0;
  for (uint32_t i = 0; i < 65536; i++) {
    uint16_t h = (uint16_t)i;
    float f = ap_f16_to_f32(h), b = ap_bf16_to_f32(h);
    int nan16 = (h & 0x7c00) == 0x7c00 && (h & 0x3ff), nanb = (h & 0x7f80) == 0x7f80 && (h & 0x7f);
    int inf16 = (h & 0x7fff) == 0x7c00, infb = (h & 0x7fff) == 0x7f80;
    if (nan16) bad_nan += !isnan(f) || (signbit(f) != 0) != (h >> 15);
    else if (inf16) bad_dec16 += !isinf(f) || (signbit(f) != 0) != (h >> 15);
    else bad_dec16 += (double)f != ref_f16_decode(h) || (signbit(f) != 0) != (h >> 15);
    if (nanb) bad_nan += !isnan(b) || (signbit(b) != 0) != (h >> 15);
    else if (infb) bad_decb += !isinf(b) || (signbit(b) != 0) != (h >> 15);
    else bad_decb += (double)b != ref_bf16_decode(h) || (signbit(b) != 0) != (h >> 15);
    bad_rt16 += ap_f32_to_f16(f) != h;
    bad_rtb += ap_f32_to_bf16(b) != h;
  }
  CHECK_EQ_INT(bad_dec16, 0);
  CHECK_EQ_INT(bad_decb, 0);
  CHECK_EQ_INT(bad_nan, 0);
  CHECK_EQ_INT(bad_rt16, 0);
  CHECK_EQ_INT(bad_rtb, 0);

  /* Hand-picked values with known answers. */
  CHECK_EQ_INT(ap_f32_to_f16(65504.0f), 0x7bff);
  CHECK_EQ_INT(ap_f32_to_f16(65519.99f), 0x7bff);
  CHECK_EQ_INT(ap_f32_to_f16(65520.0f), 0x7c00);
  CHECK_EQ_INT(ap_f32_to_f16(-1e10f), 0xfc00);
  CHECK_EQ_INT(ap_f32_to_f16(ldexpf(1, -24)), 0x0001);
  CHECK_EQ_INT(ap_f32_to_f16(ldexpf(1, -25)), 0x0000);            /* tie to even zero */
  CHECK_EQ_INT(ap_f32_to_f16(ldexpf(3, -25)), 0x0002);            /* 1.5 ulp: tie to even 2 */
  CHECK_EQ_INT(ap_f32_to_f16(ldexpf(1, -14)), 0x0400);
  CHECK_EQ_INT(ap_f32_to_f16(ldexpf(1023.5f, -24)), 0x0400);      /* subnormal rounds up into normal */
  CHECK_EQ_INT(ap_f32_to_f16(-0.0f), 0x8000);
  CHECK_EQ_INT(ap_f32_to_bf16(1.0f), 0x3f80);
  CHECK_EQ_INT(ap_f32_to_bf16(ap_bits_f32(0x3f808000u)), 0x3f80); /* tie, even stays */
  CHECK_EQ_INT(ap_f32_to_bf16(ap_bits_f32(0x3f818000u)), 0x3f82); /* tie, odd rounds up */
  CHECK_EQ_INT(ap_f32_to_bf16(ap_bits_f32(0x7f7fffffu)), 0x7f80); /* FLT_MAX overflows to inf */
  CHECK(isnan(ap_bf16_to_f32(ap_f32_to_bf16(ap_bits_f32(0x7f800001u))))); /* payload only in low bits */
  CHECK(isnan(ap_f16_to_f32(ap_f32_to_f16(ap_bits_f32(0xff800001u)))));
  CHECK(signbit(ap_f16_to_f32(ap_f32_to_f16(ap_bits_f32(0xff800001u)))));
  float v = 3.14159f;
  unsigned char buf[4];
  ap_dtype_store_f32(AP_BF16, buf, v);
  CHECK(ap_dtype_load_f32(AP_BF16, buf) == ap_bf16_to_f32(ap_f32_to_bf16(v)));
  CHECK_EQ_INT(ap_dtype_size(AP_F32), 4);
  CHECK_EQ_INT(ap_dtype_size(AP_BF16), 2);
  CHECK_EQ_INT(ap_dtype_size(AP_F16), 2);
  CHECK_STR(ap_dtype_name(AP_BF16), "BF16");
  ap_dtype t;
  CHECK(ap_dtype_from_name("F16", &t) == 0 && t == AP_F16);
  CHECK(ap_dtype_from_name("F64", &t) == -1);

  /* Every f32 bit pattern that is an exact tie for f16 or bf16 in each
   * exponent, plus 4M random bit patterns (all exponents, NaN included). */
  for (uint32_t e = 0; e < 255; e++)
    for (uint32_t k = 0; k < 64; k++) {
      uint32_t m = next_u32() & 0x7fffffu;
      check_float(ap_bits_f32((e << 23) | (m & ~0xffffu) | 0x8000u));
      check_float(ap_bits_f32((e << 23) | (m & ~0x1fffu) | 0x1000u));
      check_float(ap_bits_f32(0x80000000u | (e << 23) | (m & ~0xffffu) | 0x8000u));
      /* subnormal-f16 ties: low bits exactly half of the shifted-out part */
      for (uint32_t s = 14; s <= 24; s++) check_float(ap_bits_f32((e << 23) | (m & ~((1u << s) - 1)) | (1u << (s - 1))));
    }
  for (int i = 0; i < 4000000; i++) check_float(ap_bits_f32(next_u32() ^ (next_u32() << 16)));
  /* Dense sweep over the f16 range, where all the subnormal/overflow logic lives. */
  for (uint32_t x = 0x33000000u - 4096; x < 0x47800000u + 4096; x += 97) check_float(ap_bits_f32(x));
  CHECK_EQ_INT(mismatches_f16, 0);
  CHECK_EQ_INT(mismatches_bf16, 0);
  TEST_DONE();
}
