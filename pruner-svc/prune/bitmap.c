/* bitmap.c - pruning mask helpers (layout and contracts in bitmap.h). */
#include "bitmap.h"

#include <stdlib.h>
#include <string.h>

#include "prune_error.h"

/* Below this many words a parallel region costs more than it saves. */
#define PAR_MIN_WORDS 4096

uint64_t *ap_bitmap_alloc(size_t nbits) {
  if (nbits == 0) return NULL;
  size_t bytes = ap_bitmap_bytes(nbits);
  /* aligned_alloc wants a multiple of the alignment */
  size_t rounded = (bytes + 63) & ~(size_t)63;
  uint64_t *m = aligned_alloc(64, rounded);
  if (!m) return NULL;
  memset(m, 0, rounded);
  return m;
}

size_t ap_bitmap_count_range(const uint64_t *m, size_t begin, size_t end) {
  if (begin >= end) return 0;
  size_t wb = begin >> 6, we = (end - 1) >> 6;
  if (wb == we) return (size_t)__builtin_popcountll(ap_bitmap_load_bits(m, begin, (unsigned)(end - begin)));
  size_t n = (size_t)__builtin_popcountll(m[wb] >> (begin & 63));
  for (size_t w = wb + 1; w < we; w++) n += (size_t)__builtin_popcountll(m[w]);
  unsigned tail = (unsigned)(end - (we << 6)); /* 1..64 bits of the last word */
  uint64_t last = tail == 64 ? m[we] : m[we] & (((uint64_t)1 << tail) - 1);
  return n + (size_t)__builtin_popcountll(last);
}

size_t ap_bitmap_count(const uint64_t *m, size_t nbits) {
  size_t nw = ap_bitmap_words(nbits);
  size_t total = 0;
  /* the tail invariant makes the last partial word safe to count whole */
#pragma omp parallel for reduction(+ : total) schedule(static) if (nw > PAR_MIN_WORDS)
  for (size_t w = 0; w < nw; w++) total += (size_t)__builtin_popcountll(m[w]);
  return total;
}

int ap_bitmap_row_counts(const uint64_t *m, size_t rows, size_t cols, size_t *counts) {
  if (!m || !counts || rows == 0 || cols == 0) return AP_PRUNE_EINVAL;
#pragma omp parallel for schedule(static) if (rows * cols / 64 > PAR_MIN_WORDS)
  for (size_t r = 0; r < rows; r++) counts[r] = ap_bitmap_count_range(m, r * cols, (r + 1) * cols);
  return AP_PRUNE_OK;
}

int ap_bitmap_apply_f32(const float *orig, const uint64_t *m, size_t n, float *work) {
  if (!orig || !m || !work) return AP_PRUNE_EINVAL;
  size_t nw = ap_bitmap_words(n);
#pragma omp parallel for schedule(static) if (nw > PAR_MIN_WORDS)
  for (size_t w = 0; w < nw; w++) {
    size_t base = w * 64;
    size_t len = n - base < 64 ? n - base : 64;
    uint64_t bits = m[w];
    /* select through an integer mask so the loop vectorises without branches */
    const uint32_t *src = (const uint32_t *)(const void *)(orig + base);
    uint32_t *dst = (uint32_t *)(void *)(work + base);
    for (size_t b = 0; b < len; b++) dst[b] = src[b] & ((uint32_t)((bits >> b) & 1u) - 1u);
  }
  return AP_PRUNE_OK;
}

int ap_bitmap_apply_u16(const uint16_t *orig, const uint64_t *m, size_t n, uint16_t *work) {
  if (!orig || !m || !work) return AP_PRUNE_EINVAL;
  size_t nw = ap_bitmap_words(n);
#pragma omp parallel for schedule(static) if (nw > PAR_MIN_WORDS)
  for (size_t w = 0; w < nw; w++) {
    size_t base = w * 64;
    size_t len = n - base < 64 ? n - base : 64;
    uint64_t bits = m[w];
    for (size_t b = 0; b < len; b++)
      work[base + b] = (uint16_t)(orig[base + b] & (uint16_t)((uint32_t)((bits >> b) & 1u) - 1u));
  }
  return AP_PRUNE_OK;
}

/* 1 when some bit of older is missing from newer. */
static int lost_bits(const uint64_t *newer, const uint64_t *older, size_t nw) {
  int lost = 0;
#pragma omp parallel for reduction(| : lost) schedule(static) if (nw > PAR_MIN_WORDS)
  for (size_t w = 0; w < nw; w++) lost |= (older[w] & ~newer[w]) != 0;
  return lost;
}

int ap_bitmap_restore_f32(const float *orig, const uint64_t *newer, const uint64_t *older, size_t n,
                          float *work) {
  if (!orig || !newer || !older || !work) return AP_PRUNE_EINVAL;
  size_t nw = ap_bitmap_words(n);
  if (lost_bits(newer, older, nw)) return AP_PRUNE_EMASK;
#pragma omp parallel for schedule(static) if (nw > PAR_MIN_WORDS)
  for (size_t w = 0; w < nw; w++) {
    uint64_t diff = newer[w] & ~older[w];
    while (diff) {
      size_t i = w * 64 + (size_t)__builtin_ctzll(diff);
      work[i] = orig[i];
      diff &= diff - 1;
    }
  }
  return AP_PRUNE_OK;
}

int ap_bitmap_restore_u16(const uint16_t *orig, const uint64_t *newer, const uint64_t *older, size_t n,
                          uint16_t *work) {
  if (!orig || !newer || !older || !work) return AP_PRUNE_EINVAL;
  size_t nw = ap_bitmap_words(n);
  if (lost_bits(newer, older, nw)) return AP_PRUNE_EMASK;
#pragma omp parallel for schedule(static) if (nw > PAR_MIN_WORDS)
  for (size_t w = 0; w < nw; w++) {
    uint64_t diff = newer[w] & ~older[w];
    while (diff) {
      size_t i = w * 64 + (size_t)__builtin_ctzll(diff);
      work[i] = orig[i];
      diff &= diff - 1;
    }
  }
  return AP_PRUNE_OK;
}

void ap_bitmap_union(uint64_t *dst, const uint64_t *src, size_t nbits) {
  size_t nw = ap_bitmap_words(nbits);
#pragma omp parallel for schedule(static) if (nw > PAR_MIN_WORDS)
  for (size_t w = 0; w < nw; w++) dst[w] |= src[w];
}

int ap_bitmap_is_superset(const uint64_t *newer, const uint64_t *older, size_t nbits) {
  return !lost_bits(newer, older, ap_bitmap_words(nbits));
}

int ap_bitmap_check_tail(const uint64_t *m, size_t nbits) {
  if (nbits % 64 == 0) return 1;
  return (m[nbits / 64] >> (nbits % 64)) == 0;
}

void ap_bitmap_store_le(const uint64_t *m, size_t nbits, uint8_t *out) {
  size_t nw = ap_bitmap_words(nbits);
  for (size_t w = 0; w < nw; w++)
    for (int b = 0; b < 8; b++) out[w * 8 + (size_t)b] = (uint8_t)(m[w] >> (8 * b));
}

int ap_bitmap_load_le(const uint8_t *in, size_t nbits, uint64_t *m) {
  size_t nw = ap_bitmap_words(nbits);
  for (size_t w = 0; w < nw; w++) {
    uint64_t v = 0;
    for (int b = 0; b < 8; b++) v |= (uint64_t)in[w * 8 + (size_t)b] << (8 * b);
    m[w] = v;
  }
  return ap_bitmap_check_tail(m, nbits) ? AP_PRUNE_OK : AP_PRUNE_EMASK;
}
