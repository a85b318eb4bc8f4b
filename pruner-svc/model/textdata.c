/*
 * textdata.c - whole-text tokenization and window selection. See textdata.h.
 */
#include "textdata.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void set_err(char *err, size_t errlen, const char *fmt, const char *a, const char *b) {
  if (err && errlen) snprintf(err, errlen, fmt, a, b);
}

static int read_file(const char *path, char **data, size_t *len, char *err, size_t errlen) {
  FILE *f = fopen(path, "rb");
  if (!f) {
    set_err(err, errlen, "cannot open %s: %s", path, strerror(errno));
    return AP_TEXT_EIO;
  }
  size_t cap = 1 << 16, n = 0;
  char *buf = malloc(cap);
  while (buf) {
    size_t got = fread(buf + n, 1, cap - n, f);
    n += got;
    if (n < cap) break;
    char *bigger = realloc(buf, cap * 2);
    if (!bigger) {
      free(buf);
      buf = NULL;
      break;
    }
    buf = bigger;
    cap *= 2;
  }
  int bad = ferror(f);
  fclose(f);
  if (!buf) {
    set_err(err, errlen, "out of memory reading %s%s", path, "");
    return AP_TEXT_ENOMEM;
  }
  if (bad) {
    free(buf);
    set_err(err, errlen, "cannot read %s%s", path, "");
    return AP_TEXT_EIO;
  }
  *data = buf;
  *len = n;
  return AP_TEXT_OK;
}

int ap_textdata_load(const char *path, const ap_tokenizer *tok, ap_textdata *out, char *err, size_t errlen) {
  if (!path || !tok || !out) {
    set_err(err, errlen, "%s%s", "ap_textdata_load: NULL argument", "");
    return AP_TEXT_EARG;
  }
  memset(out, 0, sizeof *out);
  char *text = NULL;
  size_t len = 0;
  int rc = read_file(path, &text, &len, err, errlen);
  if (rc) return rc;
  rc = ap_tokenizer_encode(tok, text, len, 1, &out->tokens, &out->n_tokens);
  free(text);
  if (rc) {
    set_err(err, errlen, "cannot tokenize %s: %s", path, rc == AP_TOK_ENOMEM ? "out of memory" : "tokenizer error");
    return rc == AP_TOK_ENOMEM ? AP_TEXT_ENOMEM : AP_TEXT_ETOK;
  }
  return AP_TEXT_OK;
}

int ap_textdata_from_tokens(const int32_t *ids, size_t n, ap_textdata *out) {
  if (!out || (!ids && n)) return AP_TEXT_EARG;
  out->tokens = malloc((n ? n : 1) * sizeof *ids);
  if (!out->tokens) return AP_TEXT_ENOMEM;
  if (n) memcpy(out->tokens, ids, n * sizeof *ids);
  out->n_tokens = n;
  return AP_TEXT_OK;
}

void ap_textdata_free(ap_textdata *td) {
  if (!td) return;
  free(td->tokens);
  td->tokens = NULL;
  td->n_tokens = 0;
}

int64_t ap_textdata_window_count(const ap_textdata *td, int L) {
  return td && L > 0 ? (int64_t)(td->n_tokens / (size_t)L) : 0;
}

const int32_t *ap_textdata_window(const ap_textdata *td, int L, int64_t i) { return td->tokens + (size_t)i * L; }

static uint64_t splitmix64(uint64_t *s) {
  uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

int ap_textdata_select(const ap_textdata *td, int L, int64_t n, ap_sample_mode mode, uint64_t seed, int64_t **index,
                       int64_t *count, char *err, size_t errlen) {
  char num[96];
  if (!td || !index || !count || L < 2) {
    set_err(err, errlen, "%s%s", "window selection: bad argument (window length must be at least 2)", "");
    return AP_TEXT_EARG;
  }
  *index = NULL;
  *count = 0;
  int64_t W = ap_textdata_window_count(td, L);
  if (W == 0) {
    snprintf(num, sizeof num, "%zu tokens < window %d", td->n_tokens, L);
    set_err(err, errlen, "the text is too short for one window: %s%s", num, "");
    return AP_TEXT_EEMPTY;
  }
  int random = mode == AP_SAMPLE_RANDOM && n > 0;
  if (random && n > W) {
    snprintf(num, sizeof num, "%lld windows asked, %lld available", (long long)n, (long long)W);
    set_err(err, errlen, "random sample larger than the text: %s%s", num, "");
    return AP_TEXT_EARG;
  }
  int64_t k = n <= 0 || n > W ? W : n;
  int64_t *idx = malloc((size_t)W * sizeof *idx);
  if (!idx) return AP_TEXT_ENOMEM;
  for (int64_t i = 0; i < W; i++) idx[i] = i;
  if (random) {
    uint64_t s = seed;
    for (int64_t j = 0; j < k; j++) {
      int64_t r = j + (int64_t)(splitmix64(&s) % (uint64_t)(W - j));
      int64_t t = idx[j];
      idx[j] = idx[r];
      idx[r] = t;
    }
  }
  *index = idx;
  *count = k;
  return AP_TEXT_OK;
}
