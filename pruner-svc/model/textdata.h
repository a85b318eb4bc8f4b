/*
 * textdata.h - a text file tokenized once, cut into non-overlapping windows
 * (DESIGN.md section 2).
 *
 * The whole file is encoded in one call with the tokenizer's special-token
 * behaviour (add_special = 1: BOS at the very start only where the
 * tokenizer's post-processor adds one, as HF's tokenizer(text) does).
 * Window i is tokens [i*L, (i+1)*L); the tail shorter than L is dropped.
 *
 * Selection: AP_SAMPLE_FIRST takes the first n windows in order (default,
 * reproducible, comparable with published numbers). AP_SAMPLE_RANDOM takes n
 * distinct windows drawn uniformly without replacement with a seeded
 * generator: splitmix64 (Vigna) seeded with `seed` drives a partial
 * Fisher-Yates shuffle of the window indices 0..W-1 (draw j swaps index j
 * with j + (next() % (W - j))); the first n indices, in draw order, are the
 * selection. Same seed, same text, same L -> same windows on every machine.
 */
#ifndef AP_TEXTDATA_H
#define AP_TEXTDATA_H

#include <stddef.h>
#include <stdint.h>

#include "tokenizer.h"

#ifdef __cplusplus
extern "C" {
#endif

enum {
  AP_TEXT_OK = 0,
  AP_TEXT_EARG = -1,   /* NULL pointer, L < 2, n larger than the windows available */
  AP_TEXT_EIO = -2,    /* the file cannot be read */
  AP_TEXT_ETOK = -3,   /* the tokenizer failed */
  AP_TEXT_ENOMEM = -4,
  AP_TEXT_EEMPTY = -5, /* the text has fewer than L tokens: no window */
};

typedef enum ap_sample_mode { AP_SAMPLE_FIRST = 0, AP_SAMPLE_RANDOM = 1 } ap_sample_mode;

typedef struct ap_textdata {
  int32_t *tokens; /* owned; n_tokens ids of the whole text */
  size_t n_tokens;
} ap_textdata;

/* Reads `path` and tokenizes it whole. On success *out owns the tokens
 * (ap_textdata_free). Errors: AP_TEXT_EIO, AP_TEXT_ETOK, AP_TEXT_ENOMEM. */
int ap_textdata_load(const char *path, const ap_tokenizer *tok, ap_textdata *out, char *err, size_t errlen);

/* Takes a copy of n ids (for tests and callers that tokenized already). */
int ap_textdata_from_tokens(const int32_t *ids, size_t n, ap_textdata *out);

void ap_textdata_free(ap_textdata *td);

/* Number of whole windows of L tokens: n_tokens / L (0 when L < 1). */
int64_t ap_textdata_window_count(const ap_textdata *td, int L);

/* Tokens of window i (no copy): td->tokens + i*L. */
const int32_t *ap_textdata_window(const ap_textdata *td, int L, int64_t i);

/* Chooses n windows (n <= 0: all of them, in order, whatever the mode).
 * *index receives a malloc'ed array of *count window indices (caller frees).
 * Errors: AP_TEXT_EARG (L < 2, n > available windows in random mode),
 * AP_TEXT_EEMPTY (no whole window), AP_TEXT_ENOMEM. In first mode n larger
 * than the available windows is clipped to them. */
int ap_textdata_select(const ap_textdata *td, int L, int64_t n, ap_sample_mode mode, uint64_t seed, int64_t **index,
                       int64_t *count, char *err, size_t errlen);

#ifdef __cplusplus
}
#endif
#endif
