/*
 * bitmap.h - the pruning mask of one layer: one bit per weight, 1 = pruned.
 *
 * Layout (chosen for checkpoints): a flat array of ceil(nbits/64) uint64_t
 * words, bit i of the matrix (i = row*cols + col, row-major) is bit (i % 64)
 * of word (i / 64), least significant bit first. Rows are NOT padded to a word
 * boundary, so the mask of a rows x cols layer is exactly ceil(rows*cols/64)
 * words whatever cols is, and a checkpoint can cut the array into chunks of
 * any number of words. Bits past nbits in the last word are always 0; every
 * function here keeps that invariant and ap_bitmap_check_tail() verifies it.
 * On little-endian hosts the words in memory are the byte stream that
 * ap_bitmap_store_le() writes; use store/load_le for portable files.
 *
 * Masks only grow during a job: a new mask must be a superset of the accepted
 * one (ap_bitmap_is_superset).
 *
 * Thread safety: functions only touch the buffers they are given; the OpenMP
 * ones parallelise internally. Concurrent writers to one mask must write
 * disjoint words.
 */
#ifndef AP_BITMAP_H
#define AP_BITMAP_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Number of 64-bit words that hold nbits bits. */
static inline size_t ap_bitmap_words(size_t nbits) { return (nbits + 63) / 64; }

/* Bytes of the flat word array (what a checkpoint stores). */
static inline size_t ap_bitmap_bytes(size_t nbits) { return ap_bitmap_words(nbits) * sizeof(uint64_t); }

static inline int ap_bitmap_get(const uint64_t *m, size_t i) { return (int)((m[i >> 6] >> (i & 63)) & 1u); }
static inline void ap_bitmap_set(uint64_t *m, size_t i) { m[i >> 6] |= (uint64_t)1 << (i & 63); }
static inline void ap_bitmap_clear(uint64_t *m, size_t i) { m[i >> 6] &= ~((uint64_t)1 << (i & 63)); }

/*
 * Returns `nb` (1..64) bits starting at bit `pos` in the low bits of the
 * result; bits at and past pos+nb are 0. Reads only words that hold those bits.
 */
static inline uint64_t ap_bitmap_load_bits(const uint64_t *m, size_t pos, unsigned nb) {
  size_t w = pos >> 6;
  unsigned sh = (unsigned)(pos & 63);
  uint64_t v = m[w] >> sh;
  if (sh + nb > 64) v |= m[w + 1] << (64 - sh);
  return nb == 64 ? v : v & (((uint64_t)1 << nb) - 1);
}

/* ORs the low `nb` (1..64) bits of `bits` into the mask at bit `pos`. */
static inline void ap_bitmap_or_bits(uint64_t *m, size_t pos, uint64_t bits, unsigned nb) {
  size_t w = pos >> 6;
  unsigned sh = (unsigned)(pos & 63);
  if (nb < 64) bits &= ((uint64_t)1 << nb) - 1;
  m[w] |= bits << sh;
  if (sh + nb > 64) m[w + 1] |= bits >> (64 - sh);
}

/*
 * Allocates a zeroed (nothing pruned) mask of nbits bits, 64-byte aligned.
 * Ownership: the caller frees it with free(). Returns NULL when nbits is 0 or
 * on allocation failure.
 */
uint64_t *ap_bitmap_alloc(size_t nbits);

/* Number of set bits among bits [begin, end). begin <= end is required. */
size_t ap_bitmap_count_range(const uint64_t *m, size_t begin, size_t end);

/* Number of set bits in a mask of nbits bits (OpenMP for large masks). */
size_t ap_bitmap_count(const uint64_t *m, size_t nbits);

/*
 * Pruned count of every row of a rows x cols mask into counts[rows].
 * Returns AP_PRUNE_EINVAL on NULL pointers or zero sizes.
 */
int ap_bitmap_row_counts(const uint64_t *m, size_t rows, size_t cols, size_t *counts);

/*
 * Apply: work[i] = bit i set ? 0 : orig[i], for i < n, in one parallel pass.
 * orig and work may alias (then it only zeroes pruned weights). The _u16
 * variant serves BF16 and FP16 buffers (both encode +0 as 0x0000).
 * Returns AP_PRUNE_EINVAL on NULL pointers.
 */
int ap_bitmap_apply_f32(const float *orig, const uint64_t *m, size_t n, float *work);
int ap_bitmap_apply_u16(const uint16_t *orig, const uint64_t *m, size_t n, uint16_t *work);

/*
 * Restore after a rollback from mask `newer` to mask `older` (older must be
 * a subset of newer): work[i] = orig[i] wherever newer has bit i and older
 * has not; other weights are not touched, so the cost is proportional to
 * the words that differ. Returns AP_PRUNE_EMASK when older is not a subset
 * of newer (nothing is written then), AP_PRUNE_EINVAL on NULL pointers.
 */
int ap_bitmap_restore_f32(const float *orig, const uint64_t *newer, const uint64_t *older, size_t n,
                          float *work);
int ap_bitmap_restore_u16(const uint16_t *orig, const uint64_t *newer, const uint64_t *older, size_t n,
                          uint16_t *work);

/* dst |= src over nbits bits ("masks only grow"). */
void ap_bitmap_union(uint64_t *dst, const uint64_t *src, size_t nbits);

/* 1 when every bit of `older` is also set in `newer`, else 0. */
int ap_bitmap_is_superset(const uint64_t *newer, const uint64_t *older, size_t nbits);

/* 1 when no bit at or past nbits is set in the last word, else 0. */
int ap_bitmap_check_tail(const uint64_t *m, size_t nbits);

/*
 * Portable serialisation: writes the ap_bitmap_bytes(nbits) bytes of the mask
 * as little-endian words into out / reads them back from in. load_le returns
 * AP_PRUNE_EMASK when the input has bits set past nbits (a corrupt or
 * mismatched checkpoint), leaving m filled but the error reported.
 */
void ap_bitmap_store_le(const uint64_t *m, size_t nbits, uint8_t *out);
int ap_bitmap_load_le(const uint8_t *in, size_t nbits, uint64_t *m);

#ifdef __cplusplus
}
#endif
#endif
