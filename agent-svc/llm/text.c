#include "text.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* Length of the valid UTF-8 sequence at s (1..4) and its code point, or 0
 * when the bytes there are not valid UTF-8 (overlong forms, surrogates and
 * values past U+10FFFF count as invalid). */
static size_t utf8_decode(const unsigned char *s, size_t avail, uint32_t *cp) {
  unsigned char c = s[0];
  size_t n;
  uint32_t v, min;
  if (c < 0x80) { *cp = c; return 1; }
  if ((c & 0xE0) == 0xC0) { n = 2; v = c & 0x1F; min = 0x80; }
  else if ((c & 0xF0) == 0xE0) { n = 3; v = c & 0x0F; min = 0x800; }
  else if ((c & 0xF8) == 0xF0) { n = 4; v = c & 0x07; min = 0x10000; }
  else return 0;
  if (avail < n) return 0;
  for (size_t i = 1; i < n; i++) {
    if ((s[i] & 0xC0) != 0x80) return 0;
    v = (v << 6) | (s[i] & 0x3F);
  }
  if (v < min || v > 0x10FFFF || (v >= 0xD800 && v <= 0xDFFF)) return 0;
  *cp = v;
  return n;
}

static int is_dropped(uint32_t cp) {
  if (cp < 0x20 || cp == 0x7F) return 1;
  if (cp >= 0x80 && cp <= 0x9F) return 1;
  if (cp >= 0x202A && cp <= 0x202E) return 1;
  if (cp >= 0x2066 && cp <= 0x2069) return 1;
  return 0;
}

char *ap_llm_sanitize(const char *s, size_t len, size_t max_bytes) {
  if (max_bytes < 4) max_bytes = 4;
  if (!s) len = 0;
  /* Every replacement is no longer than what it replaces, so the clean text
   * fits in len bytes; it is cut afterwards if it is too long. */
  char *out = malloc(len + 1);
  if (!out) return NULL;
  const unsigned char *p = (const unsigned char *)s;
  size_t o = 0, i = 0;
  int pending_space = 0;
  while (i < len) {
    uint32_t cp = 0;
    size_t n = utf8_decode(p + i, len - i, &cp);
    if (n == 0) {
      if (pending_space) out[o++] = ' ';
      pending_space = 0;
      out[o++] = '?';
      i++;
      continue;
    }
    if (cp == '\n' || cp == '\r' || cp == '\t' || cp == ' ') pending_space = o > 0;
    else if (!is_dropped(cp)) {
      if (pending_space) out[o++] = ' ';
      pending_space = 0;
      memcpy(out + o, p + i, n);
      o += n;
    }
    i += n;
  }
  if (o > max_bytes - 1) {
    o = max_bytes - 4;
    /* Step back to the start of a character so the cut stays valid UTF-8. */
    while (o > 0 && ((unsigned char)out[o] & 0xC0) == 0x80) o--;
    while (o > 0 && out[o - 1] == ' ') o--;
    memcpy(out + o, "...", 3);
    o += 3;
  }
  out[o] = '\0';
  return out;
}
