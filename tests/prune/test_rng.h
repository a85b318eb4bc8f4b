/*
 * test_rng.h - the deterministic random numbers of the ap_prune tests: a
 * 64-bit LCG (Knuth's MMIX constants), uniform in (0, 1), and Box-Muller
 * normals. Each test program defines TEST_RNG_SEED before including this,
 * so its inputs stay what they were when its expectations were written.
 */
#ifndef AP_TEST_RNG_H
#define AP_TEST_RNG_H

#include <math.h>
#include <stdint.h>

#ifndef TEST_RNG_SEED
#error "define TEST_RNG_SEED before including test_rng.h"
#endif

static uint64_t rng_state = TEST_RNG_SEED;

static inline uint32_t rnd(void) {
  rng_state = rng_state * 6364136223846793005ull + 1442695040888963407ull;
  return (uint32_t)(rng_state >> 33);
}

static inline double unif(void) { return (rnd() + 0.5) / 2147483648.0; }

static inline double gauss(void) { return sqrt(-2 * log(unif())) * cos(6.283185307179586 * unif()); }

#endif
