/*
 * simd_math.h - AVX2/FMA vector helpers of the CPU backend (internal to
 * kernels/cpu): an 8-lane expf and horizontal reductions.
 *
 * Every function carries __attribute__((target("avx2,fma"))), so this header
 * compiles in a build for baseline x86-64; callers must themselves be
 * compiled for that target and be reached only after a runtime CPU check
 * (cpu_internal.h: apk_cpu_simd). On other architectures, or when built with
 * -DAPK_CPU_NO_SIMD, the header defines APK_CPU_HAVE_AVX2 0 and nothing
 * else, and the backend runs its scalar code.
 *
 * apk_exp8 accuracy: within 2 ulp of expf for x in [-87.33, 88]
 * (the Cephes expf polynomial on a range reduced by round-to-nearest
 * multiples of ln 2, with ln 2 split in two for an exact reduction).
 * Outside that range: x < -87.33654 (below FLT_MIN, including -inf) gives 0,
 * x > 88 gives exp(88) = 1.65e38 (callers only pass x <= 0 from a softmax
 * and -x of a SiLU, where exp(88) already makes the result exactly 0 or x);
 * NaN gives NaN.
 */
#ifndef AP_CPU_SIMD_MATH_H
#define AP_CPU_SIMD_MATH_H

#if defined(__x86_64__) && defined(__GNUC__) && !defined(APK_CPU_NO_SIMD)
#define APK_CPU_HAVE_AVX2 1
#include <immintrin.h>

#define APK_AVX2 __attribute__((target("avx2,fma")))

static inline APK_AVX2 __m256 apk_exp8(__m256 x) {
  const __m256 log2e = _mm256_set1_ps(1.44269504088896341f);
  const __m256 ln2_hi = _mm256_set1_ps(0.693359375f);     /* exact in 9 bits */
  const __m256 ln2_lo = _mm256_set1_ps(-2.12194440e-4f);  /* ln 2 - ln2_hi */
  /* 1.5 * 2^23: adding it rounds to an integer held in the low mantissa bits */
  const __m256 magic = _mm256_set1_ps(12582912.0f);
  __m256 underflow = _mm256_cmp_ps(x, _mm256_set1_ps(-87.33654f), _CMP_LT_OQ);
  /* min/max return their second operand when the first is NaN: NaN stays */
  x = _mm256_min_ps(_mm256_set1_ps(88.0f), x);
  x = _mm256_max_ps(_mm256_set1_ps(-87.33654f), x);
  __m256 t = _mm256_fmadd_ps(x, log2e, magic);
  __m256 n = _mm256_sub_ps(t, magic);
  __m256 r = _mm256_fnmadd_ps(n, ln2_hi, x);
  r = _mm256_fnmadd_ps(n, ln2_lo, r);
  __m256 p = _mm256_set1_ps(1.9875691500e-4f);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
  p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
  /* bits(t) = bits(magic) + n, whose low 9 bits are zero: (bits(t) + 127) << 23
   * is the float 2^n for n in [-126, 127] */
  __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_castps_si256(t), _mm256_set1_epi32(127)), 23);
  return _mm256_andnot_ps(underflow, _mm256_mul_ps(p, _mm256_castsi256_ps(e)));
}

static inline APK_AVX2 float apk_hsum8(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

static inline APK_AVX2 float apk_hmax8(__m256 v) {
  __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_max_ps(s, _mm_movehl_ps(s, s));
  s = _mm_max_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

static inline APK_AVX2 double apk_hsum4d(__m256d v) {
  __m128d s = _mm_add_pd(_mm256_castpd256_pd128(v), _mm256_extractf128_pd(v, 1));
  s = _mm_add_sd(s, _mm_unpackhi_pd(s, s));
  return _mm_cvtsd_f64(s);
}

/* Lanes 0..n-1 all ones (n in 0..8), for masked loads and stores of a tail. */
static inline APK_AVX2 __m256i apk_tail_mask8(int64_t n) {
  return _mm256_cmpgt_epi32(_mm256_set1_epi32((int)n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

#else
#define APK_CPU_HAVE_AVX2 0
#endif

#endif
