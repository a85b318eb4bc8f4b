/*
 * test_bitmap.c - mask bitmap helpers against per-bit reference loops:
 * unaligned ranges, row counts with widths that are not multiples of 64,
 * apply/restore on F32 and 16-bit buffers, union/superset, serialisation.
 */
#include <stdint.h>
#include <stdlib.h>

#include "../test.h"
#include "bitmap.h"
#include "prune_error.h"

#define TEST_RNG_SEED 99
#include "test_rng.h"

static void test_counts(void) {
  size_t n = 64 * 50 + 37;
  uint64_t *m = ap_bitmap_alloc(n);
  char *ref = calloc(n, 1);
  CHECK(m != NULL && ap_bitmap_alloc(0) == NULL);
  for (size_t i = 0; i < n; i++)
    if (rnd() % 3 == 0) { ap_bitmap_set(m, i); ref[i] = 1; }
  ap_bitmap_clear(m, 5);
  ref[5] = 0;
  int bad = 0;
  for (int it = 0; it < 2000; it++) {
    size_t a = rnd() % (n + 1), b = rnd() % (n + 1);
    if (a > b) { size_t t = a; a = b; b = t; }
    size_t want = 0;
    for (size_t i = a; i < b; i++) want += ref[i];
    if (ap_bitmap_count_range(m, a, b) != want) bad++;
  }
  CHECK_EQ_INT(bad, 0);
  size_t total = 0;
  for (size_t i = 0; i < n; i++) total += ref[i];
  CHECK_EQ_INT(ap_bitmap_count(m, n), total);
  CHECK(ap_bitmap_check_tail(m, n));
  /* rows of 37 bits straddle words */
  size_t rows = n / 37, counts[200];
  CHECK(ap_bitmap_row_counts(m, rows, 37, counts) == 0);
  for (size_t r = 0; r < rows; r++) {
    size_t want = 0;
    for (size_t i = r * 37; i < (r + 1) * 37; i++) want += ref[i];
    if (counts[r] != want) bad++;
  }
  CHECK_EQ_INT(bad, 0);
  CHECK_EQ_INT(ap_bitmap_row_counts(m, 0, 37, counts), AP_PRUNE_EINVAL);
  /* load/or bits at every offset */
  for (size_t pos = 0; pos + 64 <= n; pos += 7) {
    for (unsigned nb = 1; nb <= 64; nb += 9) {
      uint64_t v = ap_bitmap_load_bits(m, pos, nb), want = 0;
      for (unsigned b = 0; b < nb; b++) want |= (uint64_t)ref[pos + b] << b;
      if (v != want) bad++;
    }
  }
  CHECK_EQ_INT(bad, 0);
  uint64_t z[3] = {0, 0, 0};
  ap_bitmap_or_bits(z, 60, 0xFFull, 8); /* straddles words 0 and 1 */
  CHECK(z[0] == 0xF000000000000000ull && z[1] == 0xF && z[2] == 0);
  ap_bitmap_or_bits(z, 128, ~0ull, 3); /* bits above nb are ignored */
  CHECK(z[2] == 7);
  free(m);
  free(ref);
}

static void test_apply_restore(void) {
  size_t n = 1000;
  float *orig = malloc(n * 4), *work = malloc(n * 4);
  uint16_t *o16 = malloc(n * 2), *w16 = malloc(n * 2);
  uint64_t *older = ap_bitmap_alloc(n), *newer = ap_bitmap_alloc(n);
  for (size_t i = 0; i < n; i++) {
    orig[i] = (float)i + 0.5f;
    o16[i] = (uint16_t)(0x3f80 + i);
    if (rnd() % 4 == 0) ap_bitmap_set(older, i);
  }
  memcpy(newer, older, ap_bitmap_bytes(n));
  for (size_t i = 0; i < n; i++)
    if (rnd() % 4 == 0) ap_bitmap_set(newer, i);
  CHECK(ap_bitmap_is_superset(newer, older, n));
  CHECK(!ap_bitmap_is_superset(older, newer, n));
  CHECK(ap_bitmap_apply_f32(orig, newer, n, work) == 0);
  CHECK(ap_bitmap_apply_u16(o16, newer, n, w16) == 0);
  int bad = 0;
  for (size_t i = 0; i < n; i++) {
    if (work[i] != (ap_bitmap_get(newer, i) ? 0.0f : orig[i])) bad++;
    if (w16[i] != (ap_bitmap_get(newer, i) ? 0 : o16[i])) bad++;
  }
  CHECK_EQ_INT(bad, 0);
  /* rollback to the older mask restores exactly the newly pruned weights */
  CHECK(ap_bitmap_restore_f32(orig, newer, older, n, work) == 0);
  CHECK(ap_bitmap_restore_u16(o16, newer, older, n, w16) == 0);
  for (size_t i = 0; i < n; i++) {
    if (work[i] != (ap_bitmap_get(older, i) ? 0.0f : orig[i])) bad++;
    if (w16[i] != (ap_bitmap_get(older, i) ? 0 : o16[i])) bad++;
  }
  CHECK_EQ_INT(bad, 0);
  CHECK_EQ_INT(ap_bitmap_restore_f32(orig, older, newer, n, work), AP_PRUNE_EMASK);
  /* in-place apply */
  memcpy(work, orig, n * 4);
  CHECK(ap_bitmap_apply_f32(work, older, n, work) == 0);
  for (size_t i = 0; i < n; i++)
    if (work[i] != (ap_bitmap_get(older, i) ? 0.0f : orig[i])) bad++;
  CHECK_EQ_INT(bad, 0);
  CHECK_EQ_INT(ap_bitmap_apply_f32(NULL, older, n, work), AP_PRUNE_EINVAL);
  /* union */
  uint64_t *u = ap_bitmap_alloc(n);
  ap_bitmap_union(u, older, n);
  CHECK(memcmp(u, older, ap_bitmap_bytes(n)) == 0);
  ap_bitmap_union(u, newer, n);
  CHECK(memcmp(u, newer, ap_bitmap_bytes(n)) == 0);
  free(orig); free(work); free(o16); free(w16); free(older); free(newer); free(u);
}

static void test_serialise(void) {
  size_t n = 64 * 3 + 5;
  uint64_t *m = ap_bitmap_alloc(n), *back = ap_bitmap_alloc(n);
  uint8_t buf[4 * 8];
  ap_bitmap_set(m, 0);
  ap_bitmap_set(m, 9);
  ap_bitmap_set(m, n - 1);
  ap_bitmap_store_le(m, n, buf);
  CHECK(buf[0] == 1 && buf[1] == 2); /* bit 9 = byte 1, bit 1 */
  CHECK(buf[24] == 0x10);            /* bit 196 = word 3 bit 4 */
  CHECK(ap_bitmap_load_le(buf, n, back) == 0);
  CHECK(memcmp(m, back, ap_bitmap_bytes(n)) == 0);
  buf[24] |= 0x20; /* a bit past the end: corrupt checkpoint */
  CHECK_EQ_INT(ap_bitmap_load_le(buf, n, back), AP_PRUNE_EMASK);
  CHECK_EQ_INT(ap_bitmap_words(n), 4);
  CHECK_EQ_INT(ap_bitmap_bytes(n), 32);
  free(m);
  free(back);
}

int main(void) {
  test_counts();
  test_apply_restore();
  test_serialise();
  TEST_DONE();
}
