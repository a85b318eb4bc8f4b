/*
 * tokenizer.c - Hugging Face tokenizer.json BPE tokenizers (see tokenizer.h).
 *
 * Encode pipeline, in HF's order:
 *   bytes -> valid UTF-8 (lossy) -> split out added tokens (raw text)
 *   -> normalizer per remaining segment -> split out normalized added tokens
 *   -> pre-tokenizer steps (regex Split, ByteLevel, Metaspace) -> pieces
 *   -> BPE per piece (cached per call) -> post-processor template.
 *
 * Byte-level models are run on raw bytes: at load time every vocab entry is
 * translated back from GPT-2's byte-to-unicode alphabet, so a pre-token never
 * has to be re-encoded into that alphabet at encode time.
 */
#include "tokenizer.h"

#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>
#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

typedef struct { uint32_t lo, hi, v; } nfc_range_val;
typedef struct { uint32_t a, b, c; } nfc_triple;
typedef struct { uint32_t lo, hi; } nfc_range;
#include "tokenizer_nfc_tables.h"

/* ------------------------------------------------------------------------- */
/* Growable buffers                                                          */

typedef struct { char *p; size_t n, cap; } strbuf;
typedef struct { int32_t *p; size_t n, cap; } ivec;

static int grow(void **p, size_t *cap, size_t need, size_t elem) {
  if (need <= *cap) return 0;
  size_t c = *cap ? *cap : 16;
  while (c < need) {
    if (c > SIZE_MAX / 2 / elem) return AP_TOK_ENOMEM;
    c *= 2;
  }
  void *q = realloc(*p, c * elem);
  if (!q) return AP_TOK_ENOMEM;
  *p = q;
  *cap = c;
  return 0;
}

static int sb_append(strbuf *b, const void *s, size_t n) {
  /* +1 keeps room for a terminating NUL that callers may add */
  if (grow((void **)&b->p, &b->cap, b->n + n + 1, 1)) return AP_TOK_ENOMEM;
  if (n) memcpy(b->p + b->n, s, n);
  b->n += n;
  return 0;
}

static int iv_push(ivec *v, int32_t x) {
  if (v->n == v->cap && grow((void **)&v->p, &v->cap, v->n + 1, sizeof *v->p)) return AP_TOK_ENOMEM;
  v->p[v->n++] = x;
  return 0;
}

static int iv_append(ivec *v, const int32_t *x, size_t n) {
  if (grow((void **)&v->p, &v->cap, v->n + n, sizeof *v->p)) return AP_TOK_ENOMEM;
  if (n) memcpy(v->p + v->n, x, n * sizeof *x);
  v->n += n;
  return 0;
}

/* memmem is a GNU extension; the build asks only for POSIX + default. */
static const char *find_bytes(const char *h, size_t hn, const char *nd, size_t nn) {
  if (!nn || nn > hn) return NULL;
  const char *end = h + hn - nn;
  for (const char *p = h; p <= end; p++) {
    p = memchr(p, nd[0], (size_t)(end - p) + 1);
    if (!p) return NULL;
    if (memcmp(p, nd, nn) == 0) return p;
  }
  return NULL;
}

static uint64_t hash_bytes(const void *p, size_t n) {
  const unsigned char *s = p;
  uint64_t h = 0x9E3779B97F4A7C15ull ^ (n * 0xff51afd7ed558ccdull);
  while (n >= 8) {
    uint64_t v;
    memcpy(&v, s, 8);
    h = (h ^ v) * 0xff51afd7ed558ccdull;
    h ^= h >> 32;
    s += 8;
    n -= 8;
  }
  uint64_t v = 0;
  memcpy(&v, s, n);
  h = (h ^ v) * 0xc4ceb9fe1a85ec53ull;
  h ^= h >> 29;
  h *= 0x9E3779B97F4A7C15ull;
  h ^= h >> 32;
  return h;
}

/* ------------------------------------------------------------------------- */
/* String -> id map (keys are offsets into an arena owned by the caller)     */

typedef struct { uint64_t hash; size_t off; uint32_t len; int32_t id; } smap_ent;
typedef struct { smap_ent *e; size_t cap, n; } smap;

static int smap_init(smap *m, size_t expected) {
  size_t cap = 64;
  while (cap < expected * 2) cap *= 2;
  m->e = malloc(cap * sizeof *m->e);
  if (!m->e) return AP_TOK_ENOMEM;
  for (size_t i = 0; i < cap; i++) m->e[i].id = -1;
  m->cap = cap;
  m->n = 0;
  return 0;
}

static int32_t smap_get(const smap *m, const char *base, const char *k, size_t len) {
  if (!m->e) return -1;
  uint64_t h = hash_bytes(k, len);
  for (size_t i = h & (m->cap - 1);; i = (i + 1) & (m->cap - 1)) {
    const smap_ent *e = &m->e[i];
    if (e->id < 0) return -1;
    if (e->hash == h && e->len == len && memcmp(base + e->off, k, len) == 0) return e->id;
  }
}

/* Inserts unless the key exists; returns the id already there, or -1. */
static int32_t smap_put(smap *m, const char *base, size_t off, size_t len, int32_t id) {
  uint64_t h = hash_bytes(base + off, len);
  size_t i = h & (m->cap - 1);
  for (;; i = (i + 1) & (m->cap - 1)) {
    smap_ent *e = &m->e[i];
    if (e->id < 0) break;
    if (e->hash == h && e->len == len && memcmp(base + e->off, base + off, len) == 0) return e->id;
  }
  m->e[i] = (smap_ent){h, off, (uint32_t)len, id};
  m->n++;
  return -1;
}

/* ------------------------------------------------------------------------- */
/* Merge map: (left id, right id) -> (rank, merged id)                       */

typedef struct { uint64_t key; int32_t rank, id; } pmap_ent;
typedef struct { pmap_ent *e; size_t cap; } pmap;

#define PMAP_EMPTY UINT64_MAX

static uint64_t pair_key(int32_t a, int32_t b) { return ((uint64_t)(uint32_t)a << 32) | (uint32_t)b; }

static size_t pmap_slot(uint64_t key, size_t cap) {
  uint64_t h = key * 0x9E3779B97F4A7C15ull;
  return (size_t)(h ^ (h >> 29)) & (cap - 1);
}

static const pmap_ent *pmap_get(const pmap *m, int32_t a, int32_t b) {
  if (!m->e) return NULL;
  uint64_t k = pair_key(a, b);
  for (size_t i = pmap_slot(k, m->cap);; i = (i + 1) & (m->cap - 1)) {
    if (m->e[i].key == k) return &m->e[i];
    if (m->e[i].key == PMAP_EMPTY) return NULL;
  }
}

/* A later duplicate overwrites the earlier rank, as HF's HashMap collect does. */
static void pmap_put(pmap *m, int32_t a, int32_t b, int32_t rank, int32_t id) {
  uint64_t k = pair_key(a, b);
  size_t i = pmap_slot(k, m->cap);
  while (m->e[i].key != PMAP_EMPTY && m->e[i].key != k) i = (i + 1) & (m->cap - 1);
  m->e[i] = (pmap_ent){k, rank, id};
}

/* ------------------------------------------------------------------------- */
/* UTF-8                                                                     */

/* Length of the well-formed UTF-8 sequence at s[0..n) (Unicode table 3-7),
 * or 0 when there is none; then *bad is the length of the maximal subpart
 * that one U+FFFD replaces (the rule of from_utf8_lossy and TextDecoder). */
static size_t utf8_seq(const unsigned char *s, size_t n, size_t *bad) {
  unsigned b0 = s[0], lo = 0x80, hi = 0xBF;
  size_t need;
  if (b0 < 0x80) return 1;
  if (b0 >= 0xC2 && b0 <= 0xDF) need = 1;
  else if (b0 == 0xE0) { need = 2; lo = 0xA0; }
  else if ((b0 >= 0xE1 && b0 <= 0xEC) || b0 == 0xEE || b0 == 0xEF) need = 2;
  else if (b0 == 0xED) { need = 2; hi = 0x9F; }
  else if (b0 == 0xF0) { need = 3; lo = 0x90; }
  else if (b0 >= 0xF1 && b0 <= 0xF3) need = 3;
  else if (b0 == 0xF4) { need = 3; hi = 0x8F; }
  else { *bad = 1; return 0; }
  for (size_t k = 1; k <= need; k++) {
    if (k >= n || s[k] < lo || s[k] > hi) { *bad = k; return 0; }
    lo = 0x80;
    hi = 0xBF;
  }
  return need + 1;
}

/* Returns the length of the longest valid prefix. */
static size_t utf8_valid_prefix(const char *text, size_t n) {
  const unsigned char *s = (const unsigned char *)text;
  size_t i = 0, bad;
  while (i < n) {
    if (s[i] < 0x80) { i++; continue; }
    size_t k = utf8_seq(s + i, n - i, &bad);
    if (!k) return i;
    i += k;
  }
  return n;
}

static int utf8_lossy(const char *text, size_t n, strbuf *out) {
  const unsigned char *s = (const unsigned char *)text;
  size_t i = 0, bad;
  while (i < n) {
    size_t k = utf8_seq(s + i, n - i, &bad);
    if (k) {
      if (sb_append(out, s + i, k)) return AP_TOK_ENOMEM;
      i += k;
    } else {
      if (sb_append(out, "\xEF\xBF\xBD", 3)) return AP_TOK_ENOMEM;
      i += bad;
    }
  }
  return 0;
}

/* Decodes one code point of valid UTF-8 at s[*i], advancing *i. */
static uint32_t utf8_next(const unsigned char *s, size_t *i) {
  uint32_t c = s[*i];
  if (c < 0x80) { *i += 1; return c; }
  if (c < 0xE0) { c = ((c & 0x1F) << 6) | (s[*i + 1] & 0x3F); *i += 2; return c; }
  if (c < 0xF0) {
    c = ((c & 0x0F) << 12) | ((uint32_t)(s[*i + 1] & 0x3F) << 6) | (s[*i + 2] & 0x3F);
    *i += 3;
    return c;
  }
  c = ((c & 0x07) << 18) | ((uint32_t)(s[*i + 1] & 0x3F) << 12) | ((uint32_t)(s[*i + 2] & 0x3F) << 6) |
      (s[*i + 3] & 0x3F);
  *i += 4;
  return c;
}

static size_t utf8_put(uint32_t c, char *o) {
  if (c < 0x80) { o[0] = (char)c; return 1; }
  if (c < 0x800) { o[0] = (char)(0xC0 | (c >> 6)); o[1] = (char)(0x80 | (c & 0x3F)); return 2; }
  if (c < 0x10000) {
    o[0] = (char)(0xE0 | (c >> 12));
    o[1] = (char)(0x80 | ((c >> 6) & 0x3F));
    o[2] = (char)(0x80 | (c & 0x3F));
    return 3;
  }
  o[0] = (char)(0xF0 | (c >> 18));
  o[1] = (char)(0x80 | ((c >> 12) & 0x3F));
  o[2] = (char)(0x80 | ((c >> 6) & 0x3F));
  o[3] = (char)(0x80 | (c & 0x3F));
  return 4;
}

/* Unicode White_Space: Rust's char::is_whitespace and Oniguruma's \s. */
static int is_white_space(uint32_t c) {
  return (c >= 0x09 && c <= 0x0D) || c == 0x20 || c == 0x85 || c == 0xA0 || c == 0x1680 ||
         (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F ||
         c == 0x3000;
}
#define WHITE_SPACE_CLASS "\\t-\\r\\x20\\x{85}\\x{a0}\\x{1680}\\x{2000}-\\x{200a}\\x{2028}\\x{2029}\\x{202f}\\x{205f}\\x{3000}"

/* ------------------------------------------------------------------------- */
/* GPT-2 byte <-> unicode alphabet                                           */

static uint32_t byte_to_char[256];
static int16_t char_to_byte[324]; /* the alphabet's code points are all below 0x144 */

static pthread_once_t bytelevel_once = PTHREAD_ONCE_INIT;

static void bytelevel_tables(void) {
  int n = 0;
  for (int c = 0; c < 324; c++) char_to_byte[c] = -1;
  for (int b = 0; b < 256; b++) {
    int printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174);
    byte_to_char[b] = printable ? (uint32_t)b : (uint32_t)(256 + n++);
    char_to_byte[byte_to_char[b]] = (int16_t)b;
  }
}

/* ------------------------------------------------------------------------- */
/* NFC                                                                       */

#define HANGUL_S 0xAC00u
#define HANGUL_L 0x1100u
#define HANGUL_V 0x1161u
#define HANGUL_T 0x11A7u
#define HANGUL_VN 21u
#define HANGUL_TN 28u
#define HANGUL_NN (HANGUL_VN * HANGUL_TN)
#define HANGUL_SN 11172u

static uint32_t nfc_ccc_of(uint32_t c) {
  if (c < nfc_ccc[0].lo) return 0;
  size_t lo = 0, hi = sizeof nfc_ccc / sizeof nfc_ccc[0];
  while (lo < hi) {
    size_t mid = (lo + hi) / 2;
    if (c < nfc_ccc[mid].lo) hi = mid;
    else if (c > nfc_ccc[mid].hi) lo = mid + 1;
    else return nfc_ccc[mid].v;
  }
  return 0;
}

static int nfc_unsafe_cp(uint32_t c) {
  if (c < nfc_unsafe[0].lo) return 0;
  size_t lo = 0, hi = sizeof nfc_unsafe / sizeof nfc_unsafe[0];
  while (lo < hi) {
    size_t mid = (lo + hi) / 2;
    if (c < nfc_unsafe[mid].lo) hi = mid;
    else if (c > nfc_unsafe[mid].hi) lo = mid + 1;
    else return 1;
  }
  return 0;
}

static const nfc_triple *nfc_decomp_of(uint32_t c) {
  size_t lo = 0, hi = sizeof nfc_decomp / sizeof nfc_decomp[0];
  while (lo < hi) {
    size_t mid = (lo + hi) / 2;
    if (c < nfc_decomp[mid].a) hi = mid;
    else if (c > nfc_decomp[mid].a) lo = mid + 1;
    else return &nfc_decomp[mid];
  }
  return NULL;
}

/* Primary composite of (a, b), or 0. */
static uint32_t nfc_compose_pair(uint32_t a, uint32_t b) {
  if (a >= HANGUL_L && a < HANGUL_L + 19 && b >= HANGUL_V && b < HANGUL_V + HANGUL_VN)
    return HANGUL_S + ((a - HANGUL_L) * HANGUL_VN + (b - HANGUL_V)) * HANGUL_TN;
  if (a >= HANGUL_S && a < HANGUL_S + HANGUL_SN && (a - HANGUL_S) % HANGUL_TN == 0 && b > HANGUL_T &&
      b < HANGUL_T + HANGUL_TN)
    return a + (b - HANGUL_T);
  size_t lo = 0, hi = sizeof nfc_comp / sizeof nfc_comp[0];
  while (lo < hi) {
    size_t mid = (lo + hi) / 2;
    const nfc_triple *e = &nfc_comp[mid];
    if (a < e->a || (a == e->a && b < e->b)) hi = mid;
    else if (a > e->a || (a == e->a && b > e->b)) lo = mid + 1;
    else return e->c;
  }
  return 0;
}

static int nfc_decompose(uint32_t c, uint32_t **d, size_t *n, size_t *cap) {
  if (c >= HANGUL_S && c < HANGUL_S + HANGUL_SN) {
    uint32_t s = c - HANGUL_S, t = s % HANGUL_TN;
    uint32_t parts[3] = {HANGUL_L + s / HANGUL_NN, HANGUL_V + (s % HANGUL_NN) / HANGUL_TN, HANGUL_T + t};
    for (int k = 0; k < (t ? 3 : 2); k++) {
      if (grow((void **)d, cap, *n + 1, sizeof **d)) return AP_TOK_ENOMEM;
      (*d)[(*n)++] = parts[k];
    }
    return 0;
  }
  const nfc_triple *e = nfc_decomp_of(c);
  if (e) {
    if (nfc_decompose(e->b, d, n, cap)) return AP_TOK_ENOMEM;
    return e->c ? nfc_decompose(e->c, d, n, cap) : 0;
  }
  if (grow((void **)d, cap, *n + 1, sizeof **d)) return AP_TOK_ENOMEM;
  (*d)[(*n)++] = c;
  return 0;
}

/* Byte offset of the first character at or after i that NFC may change or
 * move (NFC_Quick_Check != Yes, or ccc != 0), or n. Every other character is
 * a normalization boundary: text on either side normalizes independently. */
static size_t nfc_next_unsafe(const unsigned char *u, size_t n, size_t i, size_t *end) {
  while (i < n) {
    if (u[i] < 0xCC) { i += u[i] < 0x80 ? 1 : 2; continue; } /* below U+0300 */
    size_t j = i;
    if (nfc_unsafe_cp(utf8_next(u, &j))) { *end = j; return i; }
    i = j;
  }
  return n;
}

static int nfc_quick_yes(const char *s, size_t n) {
  size_t end;
  return nfc_next_unsafe((const unsigned char *)s, n, 0, &end) == n;
}

static int nfc_into(const char *s, size_t n, strbuf *out);

/* Appends NFC(s) to out, normalizing only the spans around unsafe
 * characters: from the character before one (it may compose with it) to the
 * next safe character. */
static int nfc_spans(const char *s, size_t n, strbuf *out) {
  const unsigned char *u = (const unsigned char *)s;
  size_t copied = 0, end;
  for (size_t at = nfc_next_unsafe(u, n, 0, &end); at < n; at = nfc_next_unsafe(u, n, copied, &end)) {
    size_t start = at;
    if (start > copied) {
      start--;
      while (start > copied && (u[start] & 0xC0) == 0x80) start--;
    }
    size_t stop = end;
    while (stop < n) {
      size_t next;
      if (nfc_next_unsafe(u, n, stop, &next) != stop) break;
      stop = next;
    }
    if (sb_append(out, s + copied, start - copied) || nfc_into(s + start, stop - start, out)) return AP_TOK_ENOMEM;
    copied = stop;
  }
  return sb_append(out, s + copied, n - copied);
}

/* Appends NFC(s) to out. s is valid UTF-8. */
static int nfc_into(const char *s, size_t n, strbuf *out) {
  uint32_t *d = NULL;
  size_t dn = 0, dcap = 0, i = 0;
  int rc = AP_TOK_ENOMEM;
  const unsigned char *u = (const unsigned char *)s;
  while (i < n)
    if (nfc_decompose(utf8_next(u, &i), &d, &dn, &dcap)) goto fail;
  /* canonical ordering: stable sort of each run of non-starters by ccc */
  for (size_t k = 1; k < dn; k++) {
    uint32_t ck = nfc_ccc_of(d[k]);
    if (!ck) continue;
    size_t j = k;
    while (j > 0) {
      uint32_t cj = nfc_ccc_of(d[j - 1]);
      if (cj <= ck) break;
      uint32_t tmp = d[j - 1];
      d[j - 1] = d[j];
      d[j] = tmp;
      j--;
    }
  }
  if (dn) {
    size_t starter = 0, outn = 1;
    uint32_t last_class = nfc_ccc_of(d[0]) ? 256 : 0;
    for (size_t k = 1; k < dn; k++) {
      uint32_t ch = d[k], cc = nfc_ccc_of(ch);
      uint32_t comp = nfc_compose_pair(d[starter], ch);
      if (comp && (last_class < cc || last_class == 0)) {
        d[starter] = comp;
      } else {
        if (cc == 0) starter = outn;
        last_class = cc;
        d[outn++] = ch;
      }
    }
    dn = outn;
  }
  for (size_t k = 0; k < dn; k++) {
    char tmp[4];
    if (sb_append(out, tmp, utf8_put(d[k], tmp))) goto fail;
  }
  rc = 0;
fail:
  free(d);
  return rc;
}

/* ------------------------------------------------------------------------- */
/* The tokenizer                                                             */

enum { NORM_NFC, NORM_PREPEND, NORM_REPLACE };
typedef struct { int kind; char *a, *b; size_t alen, blen; } norm_step;

enum { PRE_SPLIT, PRE_BYTELEVEL, PRE_METASPACE };
enum { PREPEND_NEVER, PREPEND_ALWAYS, PREPEND_FIRST };
typedef struct {
  int kind;
  pcre2_code *re;       /* Split, or ByteLevel with use_regex */
  int add_prefix_space; /* ByteLevel */
  char rep[5];          /* Metaspace replacement character */
  size_t replen;
  int prepend, split;   /* Metaspace */
} pre_step;

enum { DEC_BYTELEVEL, DEC_REPLACE, DEC_BYTEFALLBACK, DEC_FUSE, DEC_STRIP, DEC_METASPACE };
typedef struct {
  int kind;
  char *a, *b; /* Replace: pattern, content; Strip/Metaspace: the character in a */
  size_t alen, blen;
  int start, stop, prepend;
} dec_step;

typedef struct {
  size_t off, noff; /* content, and its normalized form, in t->strs */
  uint32_t len, nlen;
  int32_t id;
  uint8_t special, lstrip, rstrip, single_word, normalized;
} added_tok;

/* Added tokens of one kind (raw or normalized), bucketed by first byte,
 * longest first, for leftmost-longest matching. */
typedef struct {
  uint32_t *idx;     /* indices into t->added */
  size_t n;
  uint32_t start[257];
} match_set;

struct ap_tokenizer {
  strbuf strs;                /* every token text and model-space key */
  int32_t n_ids;
  size_t *tok_off;            /* per id; SIZE_MAX = no token */
  uint32_t *tok_len;
  uint8_t *tok_special;
  smap vocab;                 /* model vocab, as written in the JSON */
  smap bytes_vocab;           /* byte-level: model vocab translated to raw bytes */
  int byte_level;
  pmap merges;
  int32_t unk_id;
  int fuse_unk, byte_fallback, ignore_merges;
  int32_t fallback_id[256];   /* <0xXX> */
  int32_t sym_ascii[128];     /* single-byte symbols of the model (raw bytes when byte-level) */
  int32_t sym_byte[256];      /* byte-level: every byte's symbol */
  added_tok *added;
  size_t n_added;
  match_set raw_set, norm_set;
  pcre2_code *word_re;        /* \w, for single_word added tokens */
  norm_step *norm;
  size_t n_norm;
  pre_step *pre;
  size_t n_pre;
  dec_step *dec;
  size_t n_dec;
  int has_decoder;
  ivec prefix, suffix;        /* TemplateProcessing around $A */
  int32_t max_id;             /* ids beyond this are refused at load (see ensure_ids) */
};

static const smap *model_map(const ap_tokenizer *t) { return t->byte_level ? &t->bytes_vocab : &t->vocab; }

static int set_err(char *err, size_t errlen, int code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static int set_err(char *err, size_t errlen, int code, const char *fmt, ...) {
  if (err && errlen) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
  }
  return code;
}

/* ------------------------------------------------------------------------- */
/* Normalization                                                             */

/* Applies the normalizer to s[0..n); the result goes to out (cleared first). */
static int normalize(const ap_tokenizer *t, const char *s, size_t n, strbuf *out, strbuf *tmp) {
  const char *cur = s;
  size_t curn = n;
  int in_out = 0; /* cur lives in out (1) or tmp (2) instead of s (0) */
  for (size_t k = 0; k < t->n_norm; k++) {
    const norm_step *st = &t->norm[k];
    strbuf *dst = in_out == 1 ? tmp : out;
    if (st->kind == NORM_NFC) {
      if (nfc_quick_yes(cur, curn)) continue;
      dst->n = 0;
      if (nfc_spans(cur, curn, dst)) return AP_TOK_ENOMEM;
    } else if (st->kind == NORM_PREPEND) {
      if (!curn) continue;
      dst->n = 0;
      if (sb_append(dst, st->a, st->alen) || sb_append(dst, cur, curn)) return AP_TOK_ENOMEM;
    } else {
      const char *hit = curn >= st->alen ? find_bytes(cur, curn, st->a, st->alen) : NULL;
      if (!hit) continue;
      dst->n = 0;
      const char *p = cur, *end = cur + curn;
      while (hit) {
        if (sb_append(dst, p, (size_t)(hit - p)) || sb_append(dst, st->b, st->blen)) return AP_TOK_ENOMEM;
        p = hit + st->alen;
        hit = (size_t)(end - p) >= st->alen ? find_bytes(p, (size_t)(end - p), st->a, st->alen) : NULL;
      }
      if (sb_append(dst, p, (size_t)(end - p))) return AP_TOK_ENOMEM;
    }
    cur = dst->p;
    curn = dst->n;
    in_out = dst == out ? 1 : 2;
  }
  if (in_out == 1) return 0;
  out->n = 0;
  return sb_append(out, cur, curn);
}

/* ------------------------------------------------------------------------- */
/* Encoding                                                                  */

typedef struct { size_t off, len; int first; } piece;
typedef struct { piece *p; size_t n, cap; } pvec;

typedef struct { int32_t id, prev, next; } bsym;
typedef struct { int32_t rank, pos, left, right, id; } bmerge;

typedef struct { uint64_t hash; size_t koff; uint32_t klen, ioff, in; } centry;

#define CACHE_MAX_KEY 128
#define CACHE_MAX_ENTRIES (1u << 20)

typedef struct {
  const ap_tokenizer *t;
  ivec out;
  strbuf arena, nb0, nb1;
  pvec pv[2];
  bsym *sym;
  size_t sym_cap;
  bmerge *heap;
  size_t heap_cap;
  centry *cache;
  size_t cache_cap, cache_n;
  strbuf ckeys;
  ivec cids;
  pcre2_match_data *md;
} enc_ctx;

static int pv_push(pvec *v, size_t off, size_t len, int first) {
  if (v->n == v->cap && grow((void **)&v->p, &v->cap, v->n + 1, sizeof *v->p)) return AP_TOK_ENOMEM;
  v->p[v->n++] = (piece){off, len, first};
  return 0;
}

static int heap_less(const bmerge *a, const bmerge *b) {
  return a->rank < b->rank || (a->rank == b->rank && a->pos < b->pos);
}

static int heap_push(enc_ctx *c, size_t *n, bmerge m) {
  if (*n == c->heap_cap && grow((void **)&c->heap, &c->heap_cap, *n + 1, sizeof *c->heap)) return AP_TOK_ENOMEM;
  size_t i = (*n)++;
  while (i > 0) {
    size_t p = (i - 1) / 2;
    if (!heap_less(&m, &c->heap[p])) break;
    c->heap[i] = c->heap[p];
    i = p;
  }
  c->heap[i] = m;
  return 0;
}

static bmerge heap_pop(enc_ctx *c, size_t *n) {
  bmerge top = c->heap[0], last = c->heap[--(*n)];
  size_t i = 0;
  for (;;) {
    size_t l = 2 * i + 1, r = l + 1, m = i;
    const bmerge *best = &last;
    if (l < *n && heap_less(&c->heap[l], best)) { m = l; best = &c->heap[l]; }
    if (r < *n && heap_less(&c->heap[r], best)) m = r;
    if (m == i) break;
    c->heap[i] = c->heap[m];
    i = m;
  }
  if (*n) c->heap[i] = last;
  return top;
}

static int push_pair(enc_ctx *c, size_t *hn, int32_t pos) {
  const bsym *s = &c->sym[pos];
  const pmap_ent *e = pmap_get(&c->t->merges, s->id, c->sym[s->next].id);
  if (!e) return 0;
  return heap_push(c, hn, (bmerge){e->rank, pos, s->id, c->sym[s->next].id, e->id});
}

static int sym_add(enc_ctx *c, size_t *n, int32_t id) {
  if (*n == c->sym_cap && grow((void **)&c->sym, &c->sym_cap, *n + 1, sizeof *c->sym)) return AP_TOK_ENOMEM;
  c->sym[*n] = (bsym){id, (int32_t)*n - 1, (int32_t)*n + 1};
  (*n)++;
  return 0;
}

/* One character (or, byte-level, one byte whose alphabet character is ch[])
 * that is not in the vocab: byte fallback, else unk (fused or not), else
 * dropped - the order of HF's BPE::merge_word. */
static int sym_missing(enc_ctx *c, size_t *n, const unsigned char *ch, size_t chlen, int *pending_unk) {
  const ap_tokenizer *t = c->t;
  if (t->byte_fallback) {
    size_t k = 0;
    while (k < chlen && t->fallback_id[ch[k]] >= 0) k++;
    if (k == chlen) {
      for (k = 0; k < chlen; k++)
        if (sym_add(c, n, t->fallback_id[ch[k]])) return AP_TOK_ENOMEM;
      return 0;
    }
  }
  if (t->unk_id >= 0) {
    if (*pending_unk && !t->fuse_unk && sym_add(c, n, t->unk_id)) return AP_TOK_ENOMEM;
    *pending_unk = 1;
  }
  return 0;
}

static int bpe_piece(enc_ctx *c, const char *p, size_t len) {
  const ap_tokenizer *t = c->t;
  if (!len) return 0;
  uint64_t h = 0;
  if (len <= CACHE_MAX_KEY) {
    h = hash_bytes(p, len);
    for (size_t i = h & (c->cache_cap - 1);; i = (i + 1) & (c->cache_cap - 1)) {
      const centry *e = &c->cache[i];
      if (!e->klen) break;
      if (e->hash == h && e->klen == len && memcmp(c->ckeys.p + e->koff, p, len) == 0)
        return iv_append(&c->out, c->cids.p + e->ioff, e->in);
    }
  }
  size_t out_start = c->out.n;
  const smap *mm = model_map(t);
  int32_t whole = t->ignore_merges ? smap_get(mm, t->strs.p, p, len) : -1;
  if (whole >= 0) {
    if (iv_push(&c->out, whole)) return AP_TOK_ENOMEM;
  } else {
    const unsigned char *u = (const unsigned char *)p;
    size_t n = 0, i = 0;
    int pending_unk = 0;
    while (i < len) {
      int32_t id;
      const unsigned char *ch = u + i;
      size_t chlen;
      unsigned char alpha[4];
      if (t->byte_level) {
        id = t->sym_byte[u[i]];
        chlen = utf8_put(byte_to_char[u[i]], (char *)alpha);
        ch = alpha;
        i++;
      } else if (u[i] < 0x80) {
        id = t->sym_ascii[u[i]];
        chlen = 1;
        i++;
      } else {
        size_t j = i;
        utf8_next(u, &j);
        chlen = j - i;
        id = smap_get(mm, t->strs.p, p + i, chlen);
        i = j;
      }
      if (id >= 0) {
        if (pending_unk && sym_add(c, &n, t->unk_id)) return AP_TOK_ENOMEM;
        pending_unk = 0;
        if (sym_add(c, &n, id)) return AP_TOK_ENOMEM;
      } else if (sym_missing(c, &n, ch, chlen, &pending_unk)) {
        return AP_TOK_ENOMEM;
      }
    }
    if (pending_unk && sym_add(c, &n, t->unk_id)) return AP_TOK_ENOMEM;
    if (n) {
      c->sym[n - 1].next = -1;
      size_t hn = 0;
      for (size_t k = 0; k + 1 < n; k++)
        if (push_pair(c, &hn, (int32_t)k)) return AP_TOK_ENOMEM;
      while (hn) {
        bmerge m = heap_pop(c, &hn);
        bsym *s = &c->sym[m.pos];
        if (s->id != m.left || s->next < 0 || c->sym[s->next].id != m.right) continue;
        bsym *r = &c->sym[s->next];
        s->id = m.id;
        r->id = -1;
        s->next = r->next;
        if (s->next >= 0) c->sym[s->next].prev = m.pos;
        if (s->prev >= 0 && push_pair(c, &hn, s->prev)) return AP_TOK_ENOMEM;
        if (s->next >= 0 && push_pair(c, &hn, m.pos)) return AP_TOK_ENOMEM;
      }
      for (int32_t k = 0; k >= 0; k = c->sym[k].next)
        if (iv_push(&c->out, c->sym[k].id)) return AP_TOK_ENOMEM;
    }
  }
  if (len > CACHE_MAX_KEY || c->cache_n >= CACHE_MAX_ENTRIES) return 0;
  if ((c->cache_n + 1) * 2 > c->cache_cap) {
    size_t ncap = c->cache_cap * 2;
    centry *nc = calloc(ncap, sizeof *nc);
    if (!nc) return AP_TOK_ENOMEM;
    for (size_t k = 0; k < c->cache_cap; k++) {
      if (!c->cache[k].klen) continue;
      size_t j = c->cache[k].hash & (ncap - 1);
      while (nc[j].klen) j = (j + 1) & (ncap - 1);
      nc[j] = c->cache[k];
    }
    free(c->cache);
    c->cache = nc;
    c->cache_cap = ncap;
  }
  size_t j = h & (c->cache_cap - 1);
  while (c->cache[j].klen) j = (j + 1) & (c->cache_cap - 1);
  size_t nids = c->out.n - out_start;
  if (c->ckeys.n > UINT32_MAX || c->cids.n + nids > UINT32_MAX) return 0;
  c->cache[j] = (centry){h, c->ckeys.n, (uint32_t)len, (uint32_t)c->cids.n, (uint32_t)nids};
  if (sb_append(&c->ckeys, p, len) || iv_append(&c->cids, c->out.p + out_start, nids)) return AP_TOK_ENOMEM;
  c->cache_n++;
  return 0;
}

/* Pieces of arena[off..off+len) split at the regex matches (behavior
 * Isolated: matches and the text between them are all pieces). */
static int split_regex(enc_ctx *c, const pcre2_code *re, const piece *pc, pvec *dst) {
  PCRE2_SIZE start = 0, last = 0;
  const PCRE2_SPTR subj = (PCRE2_SPTR)(c->arena.p + pc->off);
  size_t len = pc->len;
  pcre2_match_data *md = c->md;
  while (start < len) {
    int rc = pcre2_match(re, subj, len, start, PCRE2_NO_UTF_CHECK, md, NULL);
    if (rc == PCRE2_ERROR_JIT_STACKLIMIT)
      rc = pcre2_match(re, subj, len, start, PCRE2_NO_UTF_CHECK | PCRE2_NO_JIT, md, NULL);
    if (rc == PCRE2_ERROR_NOMATCH) break;
    if (rc < 0) return AP_TOK_EMATCH;
    PCRE2_SIZE *ov = pcre2_get_ovector_pointer(md);
    if (ov[0] == ov[1]) { /* empty match: no piece; step one character */
      size_t i = ov[0];
      if (i >= len) break;
      utf8_next((const unsigned char *)subj, &i);
      start = i;
      continue;
    }
    if (ov[0] > last && pv_push(dst, pc->off + last, ov[0] - last, pc->first && last == 0)) return AP_TOK_ENOMEM;
    if (pv_push(dst, pc->off + ov[0], ov[1] - ov[0], pc->first && ov[0] == 0)) return AP_TOK_ENOMEM;
    last = start = ov[1];
  }
  if (last < len && pv_push(dst, pc->off + last, len - last, pc->first && last == 0)) return AP_TOK_ENOMEM;
  return 0;
}

static int metaspace_piece(enc_ctx *c, const pre_step *st, const piece *pc, pvec *dst) {
  const char *s = c->arena.p + pc->off;
  int has_space = memchr(s, ' ', pc->len) != NULL;
  /* HF replaces spaces first, then checks for a leading replacement */
  int starts = (pc->len >= st->replen && memcmp(s, st->rep, st->replen) == 0) || s[0] == ' ';
  int prepend = !starts && (st->prepend == PREPEND_ALWAYS || (st->prepend == PREPEND_FIRST && pc->first));
  size_t off = pc->off, len = pc->len;
  if (has_space || prepend) {
    off = c->arena.n;
    if (grow((void **)&c->arena.p, &c->arena.cap, c->arena.n + st->replen * (pc->len + 1) + 1, 1))
      return AP_TOK_ENOMEM;
    s = c->arena.p + pc->off;
    char *o = c->arena.p + off;
    size_t k = 0;
    if (prepend) { memcpy(o, st->rep, st->replen); k = st->replen; }
    for (size_t i = 0; i < pc->len; i++) {
      if (s[i] == ' ') { memcpy(o + k, st->rep, st->replen); k += st->replen; }
      else o[k++] = s[i];
    }
    c->arena.n += k;
    len = k;
  }
  if (!st->split) return pv_push(dst, off, len, pc->first);
  /* MergedWithNext: each replacement character starts a new piece */
  const char *b = c->arena.p + off;
  size_t last = 0;
  for (size_t i = 1; i + st->replen <= len; i++) {
    if (memcmp(b + i, st->rep, st->replen) == 0) {
      if (pv_push(dst, off + last, i - last, pc->first && last == 0)) return AP_TOK_ENOMEM;
      last = i;
      i += st->replen - 1;
    }
  }
  return len > last ? pv_push(dst, off + last, len - last, pc->first && last == 0) : 0;
}

/* Pre-tokenizes arena[off..off+len) and runs BPE on every piece. */
static int pretokenize_and_bpe(enc_ctx *c, size_t off, size_t len, int first) {
  const ap_tokenizer *t = c->t;
  pvec *a = &c->pv[0], *b = &c->pv[1];
  a->n = 0;
  if (!len) return 0;
  if (pv_push(a, off, len, first)) return AP_TOK_ENOMEM;
  for (size_t k = 0; k < t->n_pre; k++) {
    const pre_step *st = &t->pre[k];
    if (st->kind == PRE_BYTELEVEL && !st->add_prefix_space && !st->re) continue;
    b->n = 0;
    for (size_t i = 0; i < a->n; i++) {
      piece pc = a->p[i];
      int rc = 0;
      if (st->kind == PRE_SPLIT) {
        rc = split_regex(c, st->re, &pc, b);
      } else if (st->kind == PRE_BYTELEVEL) {
        if (st->add_prefix_space && (pc.len == 0 || c->arena.p[pc.off] != ' ')) {
          size_t noff = c->arena.n;
          if (grow((void **)&c->arena.p, &c->arena.cap, c->arena.n + pc.len + 2, 1)) return AP_TOK_ENOMEM;
          c->arena.p[noff] = ' ';
          memcpy(c->arena.p + noff + 1, c->arena.p + pc.off, pc.len);
          c->arena.n += pc.len + 1;
          pc.off = noff;
          pc.len++;
        }
        rc = st->re ? split_regex(c, st->re, &pc, b) : pv_push(b, pc.off, pc.len, pc.first);
      } else {
        rc = metaspace_piece(c, st, &pc, b);
      }
      if (rc) return rc;
    }
    pvec tmp = *a;
    *a = *b;
    *b = tmp;
  }
  for (size_t i = 0; i < a->n; i++) {
    int rc = bpe_piece(c, c->arena.p + a->p[i].off, a->p[i].len);
    if (rc) return rc;
  }
  return 0;
}

static int is_word_at(const ap_tokenizer *t, pcre2_match_data *md, const char *s, size_t n, size_t at) {
  int rc = pcre2_match(t->word_re, (PCRE2_SPTR)s, n, at, PCRE2_NO_UTF_CHECK | PCRE2_ANCHORED, md, NULL);
  return rc >= 0;
}

/* Next added-token match in s[from..n), leftmost-longest, with HF's
 * single_word / lstrip / rstrip adjustments. Returns 1 and fills *ms, *me
 * (the span the token takes, strips included), *id; 0 when none. */
static int next_added(const ap_tokenizer *t, const match_set *set, pcre2_match_data *md, const char *s,
                      size_t n, size_t from, size_t seg_start, size_t *ms, size_t *me, int32_t *id) {
  if (!set->n) return 0;
  const unsigned char *u = (const unsigned char *)s;
  for (size_t i = from; i < n; i++) {
    uint32_t lo = set->start[u[i]], hi = set->start[u[i] + 1];
    for (uint32_t k = lo; k < hi; k++) {
      const added_tok *a = &t->added[set->idx[k]];
      size_t alen = a->normalized ? a->nlen : a->len;
      const char *as = t->strs.p + (a->normalized ? a->noff : a->off);
      if (alen > n - i || memcmp(s + i, as, alen) != 0) continue;
      size_t start = i, stop = i + alen;
      if (a->single_word) {
        int word_before = 0, word_after = 0;
        if (start > 0) {
          size_t j = start - 1;
          while (j > 0 && (u[j] & 0xC0) == 0x80) j--;
          word_before = is_word_at(t, md, s, n, j);
        }
        if (stop < n) word_after = is_word_at(t, md, s, n, stop);
        if (word_before || word_after) { i = stop - 1; goto next_pos; }
      }
      if (a->lstrip) {
        size_t j = start;
        while (j > seg_start) {
          size_t q = j - 1;
          while (q > 0 && (u[q] & 0xC0) == 0x80) q--;
          size_t r = q;
          if (!is_white_space(utf8_next(u, &r))) break;
          j = q;
        }
        start = j;
      }
      if (a->rstrip) {
        while (stop < n) {
          size_t r = stop;
          if (!is_white_space(utf8_next(u, &r))) break;
          stop = r;
        }
      }
      *ms = start;
      *me = stop;
      *id = a->id;
      return 1;
    }
  next_pos:;
  }
  return 0;
}

/* A stretch of text between raw added tokens: normalize, split out the
 * normalized added tokens, pre-tokenize, BPE. */
static int encode_segment(enc_ctx *c, const char *s, size_t n, int first) {
  const ap_tokenizer *t = c->t;
  c->arena.n = 0;
  if (normalize(t, s, n, &c->arena, &c->nb0)) return AP_TOK_ENOMEM;
  size_t total = c->arena.n, pos = 0, done = 0, ms, me;
  int32_t id;
  /* the normalized added tokens are matched in the normalized text; pieces
   * appended to the arena later never overlap [0, total) */
  while (next_added(t, &t->norm_set, c->md, c->arena.p, total, pos, done, &ms, &me, &id)) {
    if (ms > done) {
      int rc = pretokenize_and_bpe(c, done, ms - done, first && done == 0);
      if (rc) return rc;
    }
    if (iv_push(&c->out, id)) return AP_TOK_ENOMEM;
    done = pos = me;
  }
  return total > done ? pretokenize_and_bpe(c, done, total - done, first && done == 0) : 0;
}

static void enc_free(enc_ctx *c) {
  free(c->arena.p);
  free(c->nb0.p);
  free(c->nb1.p);
  free(c->pv[0].p);
  free(c->pv[1].p);
  free(c->sym);
  free(c->heap);
  free(c->cache);
  free(c->ckeys.p);
  free(c->cids.p);
  pcre2_match_data_free(c->md);
}

int ap_tokenizer_encode(const ap_tokenizer *t, const char *text, size_t len, int add_special, int32_t **ids,
                        size_t *n) {
  if (ids) *ids = NULL;
  if (n) *n = 0;
  if (!t || !ids || !n || (!text && len) || len > AP_TOKENIZER_MAX_TEXT) return AP_TOK_EARG;
  enc_ctx c;
  memset(&c, 0, sizeof c);
  c.t = t;
  strbuf fixed = {0};
  int rc = AP_TOK_ENOMEM;
  c.cache_cap = 64; /* grows with the text; small calls stay cheap */
  c.cache = calloc(c.cache_cap, sizeof *c.cache);
  /* ovector of 1 pair is enough: only whole-match offsets are read */
  c.md = pcre2_match_data_create(1, NULL);
  if (!c.cache || !c.md) goto done;
  if (len && utf8_valid_prefix(text, len) != len) {
    if (utf8_lossy(text, len, &fixed)) goto done;
    text = fixed.p;
    len = fixed.n;
  }
  if (add_special && iv_append(&c.out, t->prefix.p, t->prefix.n)) goto done;
  size_t pos = 0, done_to = 0, ms, me;
  int32_t id;
  while (next_added(t, &t->raw_set, c.md, text, len, pos, done_to, &ms, &me, &id)) {
    if (ms > done_to && (rc = encode_segment(&c, text + done_to, ms - done_to, done_to == 0))) goto done;
    rc = AP_TOK_ENOMEM;
    if (iv_push(&c.out, id)) goto done;
    done_to = pos = me;
  }
  if (len > done_to && (rc = encode_segment(&c, text + done_to, len - done_to, done_to == 0))) goto done;
  rc = AP_TOK_ENOMEM;
  if (add_special && iv_append(&c.out, t->suffix.p, t->suffix.n)) goto done;
  *ids = c.out.p;
  *n = c.out.n;
  c.out.p = NULL;
  rc = 0;
done:
  free(c.out.p);
  free(fixed.p);
  enc_free(&c);
  return rc;
}

/* ------------------------------------------------------------------------- */
/* Decoding                                                                  */

typedef struct { strbuf *s; size_t n, cap; } tlist;

static void tl_free(tlist *l) {
  for (size_t i = 0; i < l->n; i++) free(l->s[i].p);
  free(l->s);
  l->s = NULL;
  l->n = l->cap = 0;
}

static int tl_push(tlist *l, const char *p, size_t n) {
  if (l->n == l->cap && grow((void **)&l->s, &l->cap, l->n + 1, sizeof *l->s)) return AP_TOK_ENOMEM;
  strbuf b = {0};
  if (sb_append(&b, p, n)) return AP_TOK_ENOMEM;
  l->s[l->n++] = b;
  return 0;
}

static int tl_push_buf(tlist *l, strbuf *b) {
  if (l->n == l->cap && grow((void **)&l->s, &l->cap, l->n + 1, sizeof *l->s)) return AP_TOK_ENOMEM;
  l->s[l->n++] = *b;
  memset(b, 0, sizeof *b);
  return 0;
}

static int replace_all(const char *s, size_t n, const char *a, size_t alen, const char *b, size_t blen,
                       strbuf *out) {
  const char *p = s, *end = s + n;
  while ((size_t)(end - p) >= alen) {
    const char *hit = find_bytes(p, (size_t)(end - p), a, alen);
    if (!hit) break;
    if (sb_append(out, p, (size_t)(hit - p)) || sb_append(out, b, blen)) return AP_TOK_ENOMEM;
    p = hit + alen;
  }
  return sb_append(out, p, (size_t)(end - p));
}

static int hexval(char ch) {
  if (ch >= '0' && ch <= '9') return ch - '0';
  if (ch >= 'a' && ch <= 'f') return ch - 'a' + 10;
  if (ch >= 'A' && ch <= 'F') return ch - 'A' + 10;
  return -1;
}

static int decode_step(const dec_step *st, tlist *in, tlist *out) {
  strbuf b = {0};
  int rc = AP_TOK_ENOMEM;
  switch (st->kind) {
  case DEC_BYTELEVEL: {
    strbuf raw = {0};
    for (size_t i = 0; i < in->n; i++) {
      const unsigned char *u = (const unsigned char *)in->s[i].p;
      size_t n = in->s[i].n, j = 0, mark = raw.n;
      int ok = 1;
      while (j < n) {
        uint32_t ch = utf8_next(u, &j);
        if (ch >= 324 || char_to_byte[ch] < 0) { ok = 0; break; }
        unsigned char byte = (unsigned char)char_to_byte[ch];
        if (sb_append(&raw, &byte, 1)) { free(raw.p); goto fail; }
      }
      if (!ok) {
        raw.n = mark;
        if (sb_append(&raw, u, n)) { free(raw.p); goto fail; }
      }
    }
    int e = utf8_lossy(raw.p ? raw.p : "", raw.n, &b);
    free(raw.p);
    if (e || (!b.p && sb_append(&b, "", 0)) || tl_push_buf(out, &b)) goto fail;
    break;
  }
  case DEC_REPLACE:
    for (size_t i = 0; i < in->n; i++) {
      if (replace_all(in->s[i].p, in->s[i].n, st->a, st->alen, st->b, st->blen, &b) || tl_push_buf(out, &b))
        goto fail;
    }
    break;
  case DEC_BYTEFALLBACK: {
    strbuf pend = {0};
    size_t npend = 0;
    for (size_t i = 0; i <= in->n; i++) {
      const char *s = i < in->n ? in->s[i].p : NULL;
      size_t n = i < in->n ? in->s[i].n : 0;
      int byte = -1;
      if (s && n == 6 && memcmp(s, "<0x", 3) == 0 && s[5] == '>' && hexval(s[3]) >= 0 && hexval(s[4]) >= 0)
        byte = hexval(s[3]) * 16 + hexval(s[4]);
      if (byte >= 0) {
        unsigned char ub = (unsigned char)byte;
        if (sb_append(&pend, &ub, 1)) { free(pend.p); goto fail; }
        npend++;
        continue;
      }
      if (npend) {
        if (utf8_valid_prefix(pend.p, pend.n) == pend.n) {
          if (tl_push(out, pend.p, pend.n)) { free(pend.p); goto fail; }
        } else {
          for (size_t k = 0; k < npend; k++)
            if (tl_push(out, "\xEF\xBF\xBD", 3)) { free(pend.p); goto fail; }
        }
        pend.n = 0;
        npend = 0;
      }
      if (s && tl_push(out, s, n)) { free(pend.p); goto fail; }
    }
    free(pend.p);
    break;
  }
  case DEC_FUSE:
    for (size_t i = 0; i < in->n; i++)
      if (sb_append(&b, in->s[i].p, in->s[i].n)) goto fail;
    if ((!b.p && sb_append(&b, "", 0)) || tl_push_buf(out, &b)) goto fail;
    break;
  case DEC_STRIP:
    for (size_t i = 0; i < in->n; i++) {
      const char *s = in->s[i].p;
      size_t n = in->s[i].n, lo = 0, hi = n;
      for (int k = 0; k < st->start && hi - lo >= st->alen && memcmp(s + lo, st->a, st->alen) == 0; k++)
        lo += st->alen;
      for (int k = 0; k < st->stop && hi - lo >= st->alen && memcmp(s + hi - st->alen, st->a, st->alen) == 0;
           k++)
        hi -= st->alen;
      if (tl_push(out, s + lo, hi - lo)) goto fail;
    }
    break;
  case DEC_METASPACE:
    for (size_t i = 0; i < in->n; i++) {
      const char *s = in->s[i].p, *end = s + in->s[i].n, *p = s;
      int drop = i == 0 && st->prepend != PREPEND_NEVER;
      while ((size_t)(end - p) >= st->alen) {
        const char *hit = find_bytes(p, (size_t)(end - p), st->a, st->alen);
        if (!hit) break;
        if (sb_append(&b, p, (size_t)(hit - p)) || (!drop && sb_append(&b, " ", 1))) goto fail;
        p = hit + st->alen;
      }
      if (sb_append(&b, p, (size_t)(end - p)) || tl_push_buf(out, &b)) goto fail;
    }
    break;
  }
  rc = 0;
fail:
  free(b.p);
  return rc;
}

int ap_tokenizer_decode(const ap_tokenizer *t, const int32_t *ids, size_t n, int skip_special, char **text,
                        size_t *len) {
  if (text) *text = NULL;
  if (len) *len = 0;
  if (!t || (!ids && n) || !text || !len) return AP_TOK_EARG;
  tlist a = {0}, b = {0};
  strbuf out = {0};
  int rc = AP_TOK_ENOMEM;
  for (size_t i = 0; i < n; i++) {
    int32_t id = ids[i];
    if (id < 0 || id >= t->n_ids || t->tok_off[id] == SIZE_MAX) { rc = AP_TOK_EARG; goto fail; }
    if (skip_special && t->tok_special[id]) continue;
    if (tl_push(&a, t->strs.p + t->tok_off[id], t->tok_len[id])) goto fail;
  }
  if (t->has_decoder) {
    for (size_t k = 0; k < t->n_dec; k++) {
      if (decode_step(&t->dec[k], &a, &b)) goto fail;
      tl_free(&a);
      a = b;
      memset(&b, 0, sizeof b);
    }
  }
  for (size_t i = 0; i < a.n; i++) {
    if (!t->has_decoder && i && sb_append(&out, " ", 1)) goto fail;
    if (sb_append(&out, a.s[i].p, a.s[i].n)) goto fail;
  }
  if (sb_append(&out, "", 0)) goto fail;
  out.p[out.n] = '\0';
  *text = out.p;
  *len = out.n;
  out.p = NULL;
  rc = 0;
fail:
  tl_free(&a);
  tl_free(&b);
  free(out.p);
  return rc;
}

/* ------------------------------------------------------------------------- */
/* Loading                                                                   */

typedef struct { char *err; size_t errlen; } lctx;

/* Reads an optional boolean; null or absent gives dflt. */
static int jbool(lctx *L, const cJSON *o, const char *key, int dflt, int *out, const char *where) {
  const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
  if (!v || cJSON_IsNull(v)) { *out = dflt; return 0; }
  if (!cJSON_IsBool(v)) return set_err(L->err, L->errlen, AP_TOK_EFORMAT, "%s: \"%s\" is not a boolean", where, key);
  *out = cJSON_IsTrue(v);
  return 0;
}

static const char *jtype(const cJSON *o) {
  const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, "type");
  return cJSON_IsString(v) ? v->valuestring : NULL;
}

/* Reads a non-negative integer id. */
static int jid(const cJSON *v, int32_t *out) {
  if (!cJSON_IsNumber(v)) return -1;
  double d = v->valuedouble;
  if (d < 0 || d > (double)(1 << 28) || d != (double)(int32_t)d) return -1;
  *out = (int32_t)d;
  return 0;
}

static int dupstr(const char *s, char **out, size_t *len) {
  *len = strlen(s);
  *out = malloc(*len + 1);
  if (!*out) return AP_TOK_ENOMEM;
  memcpy(*out, s, *len + 1);
  return 0;
}

/* The string of a {"String": "..."} pattern; regex patterns are refused. */
static int string_pattern(lctx *L, const cJSON *o, const char *where, const char **out) {
  const cJSON *p = cJSON_GetObjectItemCaseSensitive(o, "pattern");
  const cJSON *s = cJSON_GetObjectItemCaseSensitive(p, "String");
  if (cJSON_IsString(s) && s->valuestring[0]) { *out = s->valuestring; return 0; }
  if (cJSON_GetObjectItemCaseSensitive(p, "Regex"))
    return set_err(L->err, L->errlen, AP_TOK_EUNSUPPORTED, "%s with a Regex pattern is not supported", where);
  return set_err(L->err, L->errlen, AP_TOK_EFORMAT, "%s: missing or empty pattern.String", where);
}

static int one_char(lctx *L, const char *s, const char *where, char *buf, size_t *blen) {
  size_t n = strlen(s), bad;
  size_t k = n ? utf8_seq((const unsigned char *)s, n, &bad) : 0;
  if (!k || k != n) return set_err(L->err, L->errlen, AP_TOK_EFORMAT, "%s: expected exactly one character", where);
  memcpy(buf, s, n);
  *blen = n;
  return 0;
}

static int add_norm(ap_tokenizer *t, lctx *L, const cJSON *o) {
  const char *type = jtype(o);
  if (!type) return set_err(L->err, L->errlen, AP_TOK_EFORMAT, "normalizer without a \"type\"");
  if (!strcmp(type, "Sequence")) {
    const cJSON *list = cJSON_GetObjectItemCaseSensitive(o, "normalizers"), *it;
    if (!cJSON_IsArray(list))
      return set_err(L->err, L->errlen, AP_TOK_EFORMAT, "normalizer Sequence without a \"normalizers\" array");
    cJSON_ArrayForEach(it, list) {
      int rc = add_norm(t, L, it);
      if (rc) return rc;
    }
    return 0;
  }
  norm_step st = {0};
  if (!strcmp(type, "NFC")) {
    st.kind = NORM_NFC;
  } else if (!strcmp(type, "Prepend")) {
    const cJSON *p = cJSON_GetObjectItemCaseSensitive(o, "prepend");
    if (!cJSON_IsString(p)) return set_err(L->err, L->errlen, AP_TOK_EFORMAT, "normalizer Prepend without \"prepend\"");
    st.kind = NORM_PREPEND;
    if (dupstr(p->valuestring, &st.a, &st.alen)) return AP_TOK_ENOMEM;
  } else if (!strcmp(type, "Replace")) {
    const char *pat;
    const cJSON *content = cJSON_GetObjectItemCaseSensitive(o, "content");
    int rc = string_pattern(L, o, "normalizer Replace", &pat);
    if (rc) return rc;
    if (!cJSON_IsString(content))
      return set_err(L->err, L->errlen, AP_TOK_EFORMAT, "normalizer Replace without \"content\"");
    st.kind = NORM_REPLACE;
    if (dupstr(pat, &st.a, &st.alen) || dupstr(content->valuestring, &st.b, &st.blen)) {
      free(st.a);
      return AP_TOK_ENOMEM;
    }
  } else {
    return set_err(L->err, L->errlen, AP_TOK_EUNSUPPORTED, "normalizer type \"%s\" is not supported", type);
  }
  if (grow((void **)&t->norm, &(size_t){t->n_norm}, t->n_norm + 1, sizeof *t->norm)) {
    free(st.a);
    free(st.b);
    return AP_TOK_ENOMEM;
  }
  t->norm[t->n_norm++] = st;
  return 0;
}

/* Rewrites Oniguruma's \s / \S to Unicode White_Space, which PCRE2's UCP \s
 * is not (it lacks U+0085). */
static int rewrite_pattern(lctx *L, const char *pat, strbuf *out) {
  int in_class = 0;
  for (size_t i = 0; pat[i]; i++) {
    char ch = pat[i];
    if (ch == '\\' && pat[i + 1]) {
      char e = pat[i + 1];
      i++;
      if (e == 's') {
        if (sb_append(out, in_class ? "" : "[", in_class ? 0 : 1) ||
            sb_append(out, WHITE_SPACE_CLASS, strlen(WHITE_SPACE_CLASS)) ||
            sb_append(out, "]", in_class ? 0 : 1))
          return AP_TOK_ENOMEM;
      } else if (e == 'S') {
        if (in_class)
          return set_err(L->err, L->errlen, AP_TOK_EUNSUPPORTED, "regex: \\S inside a character class is not supported");
        if (sb_append(out, "[^", 2) || sb_append(out, WHITE_SPACE_CLASS, strlen(WHITE_SPACE_CLASS)) ||
            sb_append(out, "]", 1))
          return AP_TOK_ENOMEM;
      } else {
        char two[2] = {'\\', e};
        if (sb_append(out, two, 2)) return AP_TOK_ENOMEM;
      }
      continue;
    }
    if (ch == '[' && !in_class) {
      in_class = 1;
      if (sb_append(out, "[", 1)) return AP_TOK_ENOMEM;
      /* a ']' right after '[' or '[^' is a literal */
      if (pat[i + 1] == '^') { if (sb_append(out, "^", 1)) return AP_TOK_ENOMEM; i++; }
      if (pat[i + 1] == ']') { if (sb_append(out, "]", 1)) return AP_TOK_ENOMEM; i++; }
      continue;
    }
    if (ch == '[' && in_class && pat[i + 1] == ':') {
      return set_err(L->err, L->errlen, AP_TOK_EUNSUPPORTED, "regex: POSIX classes [:...:] are not supported");
    }
    if (ch == ']' && in_class) in_class = 0;
    if (sb_append(out, &ch, 1)) return AP_TOK_ENOMEM;
  }
  return 0;
}

static int compile_regex(lctx *L, const char *pat, int literal, pcre2_code **out) {
  strbuf rw = {0};
  int rc;
  if (literal) rc = sb_append(&rw, pat, strlen(pat));
  else rc = rewrite_pattern(L, pat, &rw);
  if (rc) { free(rw.p); return rc; }
  int ec;
  PCRE2_SIZE eo;
  uint32_t opts = PCRE2_UTF | PCRE2_UCP | (literal ? PCRE2_LITERAL : 0);
  *out = pcre2_compile((PCRE2_SPTR)rw.p, rw.n, opts, &ec, &eo, NULL);
  free(rw.p);
  if (!*out) {
    PCRE2_UCHAR msg[256];
    pcre2_get_error_message(ec, msg, sizeof msg);
    return set_err(L->err, L->errlen, AP_TOK_EREGEX, "regex \"%.200s\" does not compile at offset %zu: %s", pat,
                   (size_t)eo, (const char *)msg);
  }
  /* JIT is an optimization only: without it pcre2_match interprets */
  pcre2_jit_compile(*out, PCRE2_JIT_COMPLETE);
  return 0;
}

/* Rust regex's Unicode \w (UTS #18), which HF uses for single_word; PCRE2's
 * UCP \w lacks marks and Join_Control. */
#define RUST_WORD_CLASS "[\\p{Alphabetic}\\p{M}\\p{Nd}\\p{Pc}\\p{Join_Control}]"

#define GPT2_REGEX "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+"

static int push_pre(ap_tokenizer *t, pre_step *st) {
  if (grow((void **)&t->pre, &(size_t){t->n_pre}, t->n_pre + 1, sizeof *t->pre)) {
    pcre2_code_free(st->re);
    return AP_TOK_ENOMEM;
  }
  t->pre[t->n_pre++] = *st;
  return 0;
}

static int add_pre(ap_tokenizer *t, lctx *L, const cJSON *o) {
  const char *type = jtype(o);
  int rc;
  if (!type) return set_err(L->err, L->errlen, AP_TOK_EFORMAT, "pre_tokenizer without a \"type\"");
  if (t->byte_level)
    return set_err(L->err, L->errlen, AP_TOK_EUNSUPPORTED,
                   "pre_tokenizer \"%s\" after ByteLevel is not supported (ByteLevel must come last)", type);
  pre_step st = {0};
  if (!strcmp(type, "Sequence")) {
    const cJSON *list = cJSON_GetObjectItemCaseSensitive(o, "pretokenizers"), *it;
    if (!cJSON_IsArray(list))
      return set_err(L->err, L->errlen, AP_TOK_EFORMAT, "pre_tokenizer Sequence without a \"pretokenizers\" array");
    cJSON_ArrayForEach(it, list) {
      if ((rc = add_pre(t, L, it))) return rc;
    }
    return 0;
  }
  if (!strcmp(type, "Split")) {
    const cJSON *pat = cJSON_GetObjectItemCaseSensitive(o, "pattern");
    const cJSON *re = cJSON_GetObjectItemCaseSensitive(pat, "Regex");
    const cJSON *lit = cJSON_GetObjectItemCaseSensitive(pat, "String");
    const cJSON *beh = cJSON_GetObjectItemCaseSensitive(o, "behavior");
    int invert = 0;
    if ((rc = jbool(L, o, "invert", 0, &invert, "pre_tokenizer Split"))) return rc;
    if (!cJSON_IsString(re) && !cJSON_IsString(lit))
      return set_err(L->err, L->errlen, AP_TOK_EFORMAT, "pre_tokenizer Split without pattern.Regex or pattern.String");
    if (!cJSON_IsString(beh) || strcmp(beh->valuestring, "Isolated") || invert)
      return set_err(L->err, L->errlen, AP_TOK_EUNSUPPORTED,
                     "pre_tokenizer Split: only behavior \"Isolated\" without invert is supported (got \"%s\"%s)",
                     cJSON_IsString(beh) ? beh->valuestring : "?", invert ? ", invert" : "");
    st.kind = PRE_SPLIT;
    if (cJSON_IsString(lit) && !lit->valuestring[0])
      return set_err(L->err, L->errlen, AP_TOK_EFORMAT, "pre_tokenizer Split with an empty pattern");
    if ((rc = compile_regex(L, cJSON_IsString(re) ? re->valuestring : lit->valuestring, !cJSON_IsString(re),
                            &st.re)))
      return rc;
    return push_pre(t, &st);
  }
  if (!strcmp(type, "ByteLevel")) {
    int use_regex = 0;
    st.kind = PRE_BYTELEVEL;
    if ((rc = jbool(L, o, "add_prefix_space", 1, &st.add_prefix_space, "pre_tokenizer ByteLevel")) ||
        (rc = jbool(L, o, "use_regex", 1, &use_regex, "pre_tokenizer ByteLevel")))
      return rc;
    if (use_regex && (rc = compile_regex(L, GPT2_REGEX, 0, &st.re))) return rc;
    if ((rc = push_pre(t, &st))) return rc;
    t->byte_level = 1;
    return 0;
  }
  if (!strcmp(type, "Metaspace")) {
    const cJSON *rep = cJSON_GetObjectItemCaseSensitive(o, "replacement");
    const cJSON *scheme = cJSON_GetObjectItemCaseSensitive(o, "prepend_scheme");
    st.kind = PRE_METASPACE;
    if (!cJSON_IsString(rep))
      return set_err(L->err, L->errlen, AP_TOK_EFORMAT, "pre_tokenizer Metaspace without \"replacement\"");
    if ((rc = one_char(L, rep->valuestring, "pre_tokenizer Metaspace replacement", st.rep, &st.replen))) return rc;
    if ((rc = jbool(L, o, "split", 1, &st.split, "pre_tokenizer Metaspace"))) return rc;
    if (cJSON_IsString(scheme)) {
      const char *s = scheme->valuestring;
      if (!strcmp(s, "always")) st.prepend = PREPEND_ALWAYS;
      else if (!strcmp(s, "never")) st.prepend = PREPEND_NEVER;
      else if (!strcmp(s, "first")) st.prepend = PREPEND_FIRST;
      else return set_err(L->err, L->errlen, AP_TOK_EFORMAT, "pre_tokenizer Metaspace: unknown prepend_scheme \"%s\"", s);
    } else {
      int aps = 0;
      if ((rc = jbool(L, o, "add_prefix_space", 1, &aps, "pre_tokenizer Metaspace"))) return rc;
      st.prepend = aps ? PREPEND_ALWAYS : PREPEND_NEVER;
    }
    return push_pre(t, &st);
  }
  return set_err(L->err, L->errlen, AP_TOK_EUNSUPPORTED, "pre_tokenizer type \"%s\" is not supported", type);
}

static int add_dec(ap_tokenizer *t, lctx *L, const cJSON *o) {
  const char *type = jtype(o);
  int rc;
  if (!type) return set_err(L->err, L->errlen, AP_TOK_EFORMAT, "decoder without a \"type\"");
  if (!strcmp(type, "Sequence")) {
    const cJSON *list = cJSON_GetObjectItemCaseSensitive(o, "decoders"), *it;
    if (!cJSON_IsArray(list))
      return set_err(L->err, L->errlen, AP_TOK_EFORMAT, "decoder Sequence without a \"decoders\" array");
    cJSON_ArrayForEach(it, list) {
      if ((rc = add_dec(t, L, it))) return rc;
    }
    return 0;
  }
  dec_step st = {0};
  if (!strcmp(type, "ByteLevel")) {
    st.kind = DEC_BYTELEVEL;
  } else if (!strcmp(type, "ByteFallback")) {
    st.kind = DEC_BYTEFALLBACK;
  } else if (!strcmp(type, "Fuse")) {
    st.kind = DEC_FUSE;
  } else if (!strcmp(type, "Replace")) {
    const char *pat;
    const cJSON *content = cJSON_GetObjectItemCaseSensitive(o, "content");
    if ((rc = string_pattern(L, o, "decoder Replace", &pat))) return rc;
    if (!cJSON_IsString(content))
      return set_err(L->err, L->errlen, AP_TOK_EFORMAT, "decoder Replace without \"content\"");
    st.kind = DEC_REPLACE;
    if (dupstr(pat, &st.a, &st.alen)) return AP_TOK_ENOMEM;
    if (dupstr(content->valuestring, &st.b, &st.blen)) { free(st.a); return AP_TOK_ENOMEM; }
  } else if (!strcmp(type, "Strip")) {
    const cJSON *content = cJSON_GetObjectItemCaseSensitive(o, "content");
    const cJSON *start = cJSON_GetObjectItemCaseSensitive(o, "start");
    const cJSON *stop = cJSON_GetObjectItemCaseSensitive(o, "stop");
    int32_t a, b;
    char ch[5];
    size_t chlen;
    if (!cJSON_IsString(content) || jid(start, &a) || jid(stop, &b))
      return set_err(L->err, L->errlen, AP_TOK_EFORMAT, "decoder Strip needs \"content\", \"start\", \"stop\"");
    if ((rc = one_char(L, content->valuestring, "decoder Strip content", ch, &chlen))) return rc;
    st.kind = DEC_STRIP;
    st.start = a;
    st.stop = b;
    if (dupstr(content->valuestring, &st.a, &st.alen)) return AP_TOK_ENOMEM;
  } else if (!strcmp(type, "Metaspace")) {
    const cJSON *rep = cJSON_GetObjectItemCaseSensitive(o, "replacement");
    const cJSON *scheme = cJSON_GetObjectItemCaseSensitive(o, "prepend_scheme");
    char ch[5];
    size_t chlen;
    if (!cJSON_IsString(rep))
      return set_err(L->err, L->errlen, AP_TOK_EFORMAT, "decoder Metaspace without \"replacement\"");
    if ((rc = one_char(L, rep->valuestring, "decoder Metaspace replacement", ch, &chlen))) return rc;
    st.kind = DEC_METASPACE;
    if (cJSON_IsString(scheme)) {
      st.prepend = !strcmp(scheme->valuestring, "never") ? PREPEND_NEVER : PREPEND_ALWAYS;
    } else {
      int aps = 0;
      if ((rc = jbool(L, o, "add_prefix_space", 1, &aps, "decoder Metaspace"))) return rc;
      st.prepend = aps ? PREPEND_ALWAYS : PREPEND_NEVER;
    }
    if (dupstr(rep->valuestring, &st.a, &st.alen)) return AP_TOK_ENOMEM;
  } else {
    return set_err(L->err, L->errlen, AP_TOK_EUNSUPPORTED, "decoder type \"%s\" is not supported", type);
  }
  if (grow((void **)&t->dec, &(size_t){t->n_dec}, t->n_dec + 1, sizeof *t->dec)) {
    free(st.a);
    free(st.b);
    return AP_TOK_ENOMEM;
  }
  t->dec[t->n_dec++] = st;
  return 0;
}

static int add_post(ap_tokenizer *t, lctx *L, const cJSON *o) {
  const char *type = jtype(o);
  int rc;
  if (!type) return set_err(L->err, L->errlen, AP_TOK_EFORMAT, "post_processor without a \"type\"");
  if (!strcmp(type, "Sequence")) {
    const cJSON *list = cJSON_GetObjectItemCaseSensitive(o, "processors"), *it;
    if (!cJSON_IsArray(list))
      return set_err(L->err, L->errlen, AP_TOK_EFORMAT, "post_processor Sequence without a \"processors\" array");
    cJSON_ArrayForEach(it, list) {
      if ((rc = add_post(t, L, it))) return rc;
    }
    return 0;
  }
  if (!strcmp(type, "ByteLevel")) return 0; /* only adjusts offsets, which we do not report */
  if (strcmp(type, "TemplateProcessing"))
    return set_err(L->err, L->errlen, AP_TOK_EUNSUPPORTED, "post_processor type \"%s\" is not supported", type);
  if (t->prefix.n || t->suffix.n)
    return set_err(L->err, L->errlen, AP_TOK_EUNSUPPORTED, "more than one TemplateProcessing post_processor");
  const cJSON *single = cJSON_GetObjectItemCaseSensitive(o, "single");
  const cJSON *specials = cJSON_GetObjectItemCaseSensitive(o, "special_tokens"), *it;
  if (!cJSON_IsArray(single))
    return set_err(L->err, L->errlen, AP_TOK_EFORMAT, "TemplateProcessing without a \"single\" array");
  int seen_a = 0;
  cJSON_ArrayForEach(it, single) {
    const cJSON *sp = cJSON_GetObjectItemCaseSensitive(it, "SpecialToken");
    const cJSON *sq = cJSON_GetObjectItemCaseSensitive(it, "Sequence");
    if (sq) {
      const cJSON *id = cJSON_GetObjectItemCaseSensitive(sq, "id");
      if (!cJSON_IsString(id) || strcmp(id->valuestring, "A") || seen_a)
        return set_err(L->err, L->errlen, AP_TOK_EFORMAT, "TemplateProcessing single: expected one Sequence \"A\"");
      seen_a = 1;
      continue;
    }
    const cJSON *name = cJSON_GetObjectItemCaseSensitive(sp, "id");
    if (!cJSON_IsString(name))
      return set_err(L->err, L->errlen, AP_TOK_EFORMAT, "TemplateProcessing single: piece is neither SpecialToken nor Sequence");
    const cJSON *def = cJSON_GetObjectItemCaseSensitive(specials, name->valuestring);
    const cJSON *ids = cJSON_GetObjectItemCaseSensitive(def, "ids"), *idv;
    if (!cJSON_IsArray(ids))
      return set_err(L->err, L->errlen, AP_TOK_EFORMAT, "TemplateProcessing: special token \"%s\" has no ids",
                     name->valuestring);
    cJSON_ArrayForEach(idv, ids) {
      int32_t id;
      if (jid(idv, &id))
        return set_err(L->err, L->errlen, AP_TOK_EFORMAT, "TemplateProcessing: bad id for \"%s\"", name->valuestring);
      if (iv_push(seen_a ? &t->suffix : &t->prefix, id)) return AP_TOK_ENOMEM;
    }
  }
  if (!seen_a) return set_err(L->err, L->errlen, AP_TOK_EFORMAT, "TemplateProcessing single: no Sequence \"A\"");
  return 0;
}

/* Ensures id slots exist up to id. Ids are dense in real files; a hostile
 * file must not make us allocate per-id arrays far larger than its token
 * count, hence t->max_id. */
static int ensure_ids(ap_tokenizer *t, lctx *L, int32_t id, size_t *cap) {
  if (id < t->n_ids) return 0;
  if (id > t->max_id)
    return set_err(L->err, L->errlen, AP_TOK_EFORMAT, "id %d is far beyond the %d tokens of the file", id,
                   (t->max_id - 65536) / 4);
  size_t need = (size_t)id + 1, old = *cap;
  if (need > *cap) {
    size_t c = old ? old : 1024;
    while (c < need) c *= 2;
    size_t *o = realloc(t->tok_off, c * sizeof *o);
    if (!o) return AP_TOK_ENOMEM;
    t->tok_off = o;
    uint32_t *l = realloc(t->tok_len, c * sizeof *l);
    if (!l) return AP_TOK_ENOMEM;
    t->tok_len = l;
    uint8_t *s = realloc(t->tok_special, c);
    if (!s) return AP_TOK_ENOMEM;
    t->tok_special = s;
    *cap = c;
  }
  for (size_t i = (size_t)t->n_ids; i < need; i++) {
    t->tok_off[i] = SIZE_MAX;
    t->tok_len[i] = 0;
    t->tok_special[i] = 0;
  }
  t->n_ids = (int32_t)need;
  return 0;
}

static int load_model(ap_tokenizer *t, lctx *L, const cJSON *m, size_t *idcap) {
  int rc;
  if (!cJSON_IsObject(m)) return set_err(L->err, L->errlen, AP_TOK_EFORMAT, "no \"model\" object");
  const char *type = jtype(m);
  if (!type) return set_err(L->err, L->errlen, AP_TOK_EFORMAT, "model without a \"type\"");
  if (strcmp(type, "BPE"))
    return set_err(L->err, L->errlen, AP_TOK_EUNSUPPORTED, "model type \"%s\" is not supported (only BPE)", type);
  const cJSON *dropout = cJSON_GetObjectItemCaseSensitive(m, "dropout");
  if (dropout && !cJSON_IsNull(dropout) && !(cJSON_IsNumber(dropout) && dropout->valuedouble == 0.0))
    return set_err(L->err, L->errlen, AP_TOK_EUNSUPPORTED, "BPE dropout is not supported");
  static const char *const affixes[] = {"continuing_subword_prefix", "end_of_word_suffix"};
  for (int k = 0; k < 2; k++) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(m, affixes[k]);
    if (v && !cJSON_IsNull(v) && !(cJSON_IsString(v) && !v->valuestring[0]))
      return set_err(L->err, L->errlen, AP_TOK_EUNSUPPORTED, "BPE %s is not supported", affixes[k]);
  }
  if ((rc = jbool(L, m, "fuse_unk", 0, &t->fuse_unk, "model")) ||
      (rc = jbool(L, m, "byte_fallback", 0, &t->byte_fallback, "model")) ||
      (rc = jbool(L, m, "ignore_merges", 0, &t->ignore_merges, "model")))
    return rc;
  const cJSON *vocab = cJSON_GetObjectItemCaseSensitive(m, "vocab"), *it;
  if (!cJSON_IsObject(vocab)) return set_err(L->err, L->errlen, AP_TOK_EFORMAT, "model has no \"vocab\" object");
  if ((rc = smap_init(&t->vocab, (size_t)cJSON_GetArraySize(vocab)))) return rc;
  cJSON_ArrayForEach(it, vocab) {
    int32_t id;
    if (jid(it, &id))
      return set_err(L->err, L->errlen, AP_TOK_EFORMAT, "vocab entry \"%.100s\": id is not an integer in [0, 2^28]",
                     it->string);
    if ((rc = ensure_ids(t, L, id, idcap))) return rc;
    if (t->tok_off[id] != SIZE_MAX)
      return set_err(L->err, L->errlen, AP_TOK_EFORMAT, "vocab: id %d is given to two tokens", id);
    size_t len = strlen(it->string), off = t->strs.n;
    if (len > UINT32_MAX / 2) return set_err(L->err, L->errlen, AP_TOK_EFORMAT, "vocab: token too long");
    if (sb_append(&t->strs, it->string, len)) return AP_TOK_ENOMEM;
    if (smap_put(&t->vocab, t->strs.p, off, len, id) >= 0)
      return set_err(L->err, L->errlen, AP_TOK_EFORMAT, "vocab: token \"%.100s\" appears twice", it->string);
    t->tok_off[id] = off;
    t->tok_len[id] = (uint32_t)len;
  }
  const cJSON *unk = cJSON_GetObjectItemCaseSensitive(m, "unk_token");
  t->unk_id = -1;
  if (cJSON_IsString(unk)) {
    t->unk_id = smap_get(&t->vocab, t->strs.p, unk->valuestring, strlen(unk->valuestring));
    if (t->unk_id < 0)
      return set_err(L->err, L->errlen, AP_TOK_EFORMAT, "unk_token \"%.100s\" is not in the vocab", unk->valuestring);
  } else if (unk && !cJSON_IsNull(unk)) {
    return set_err(L->err, L->errlen, AP_TOK_EFORMAT, "unk_token is not a string");
  }
  const cJSON *merges = cJSON_GetObjectItemCaseSensitive(m, "merges");
  if (!cJSON_IsArray(merges)) return set_err(L->err, L->errlen, AP_TOK_EFORMAT, "model has no \"merges\" array");
  size_t nm = (size_t)cJSON_GetArraySize(merges), cap = 64;
  while (cap < nm * 2) cap *= 2;
  t->merges.e = malloc(cap * sizeof *t->merges.e);
  if (!t->merges.e) return AP_TOK_ENOMEM;
  t->merges.cap = cap;
  for (size_t i = 0; i < cap; i++) t->merges.e[i].key = PMAP_EMPTY;
  strbuf joined = {0};
  int32_t rank = 0;
  cJSON_ArrayForEach(it, merges) {
    const char *a, *b;
    size_t alen, blen;
    if (cJSON_IsString(it)) {
      const char *sp = strchr(it->valuestring, ' ');
      if (!sp || strchr(sp + 1, ' ')) {
        free(joined.p);
        return set_err(L->err, L->errlen, AP_TOK_EFORMAT, "merge %d \"%.100s\" is not two tokens separated by one space",
                       rank, it->valuestring);
      }
      a = it->valuestring;
      alen = (size_t)(sp - a);
      b = sp + 1;
      blen = strlen(b);
    } else if (cJSON_IsArray(it) && cJSON_GetArraySize(it) == 2 && cJSON_IsString(cJSON_GetArrayItem(it, 0)) &&
               cJSON_IsString(cJSON_GetArrayItem(it, 1))) {
      a = cJSON_GetArrayItem(it, 0)->valuestring;
      b = cJSON_GetArrayItem(it, 1)->valuestring;
      alen = strlen(a);
      blen = strlen(b);
    } else {
      free(joined.p);
      return set_err(L->err, L->errlen, AP_TOK_EFORMAT, "merge %d is neither a \"a b\" string nor a pair of strings", rank);
    }
    joined.n = 0;
    if (sb_append(&joined, a, alen) || sb_append(&joined, b, blen)) { free(joined.p); return AP_TOK_ENOMEM; }
    int32_t ia = smap_get(&t->vocab, t->strs.p, a, alen), ib = smap_get(&t->vocab, t->strs.p, b, blen);
    int32_t ij = smap_get(&t->vocab, t->strs.p, joined.p, joined.n);
    if (ia < 0 || ib < 0 || ij < 0) {
      joined.p[joined.n] = '\0';
      int rc2 = set_err(L->err, L->errlen, AP_TOK_EFORMAT, "merge %d: token \"%.100s\" is not in the vocab", rank,
                        ia < 0 ? a : ib < 0 ? b : joined.p);
      free(joined.p);
      return rc2;
    }
    pmap_put(&t->merges, ia, ib, rank, ij);
    rank++;
  }
  free(joined.p);
  return 0;
}

/* Byte-level models: the vocab in raw bytes, and each byte's symbol. */
static int build_byte_vocab(ap_tokenizer *t) {
  int rc;
  if ((rc = smap_init(&t->bytes_vocab, t->vocab.n))) return rc;
  for (size_t i = 0; i < t->vocab.cap; i++) {
    const smap_ent *e = &t->vocab.e[i];
    if (e->id < 0) continue;
    size_t off = t->strs.n, j = 0;
    int ok = 1;
    while (j < e->len) {
      uint32_t ch = utf8_next((const unsigned char *)t->strs.p + e->off, &j);
      if (ch >= 324 || char_to_byte[ch] < 0) { ok = 0; break; }
      unsigned char b = (unsigned char)char_to_byte[ch];
      if (sb_append(&t->strs, &b, 1)) return AP_TOK_ENOMEM;
    }
    if (!ok) { t->strs.n = off; continue; }
    smap_put(&t->bytes_vocab, t->strs.p, off, t->strs.n - off, e->id);
  }
  for (int b = 0; b < 256; b++) {
    char c = (char)b;
    t->sym_byte[b] = smap_get(&t->bytes_vocab, t->strs.p, &c, 1);
  }
  return 0;
}

static const char *added_text(const ap_tokenizer *t, const added_tok *a, uint32_t *len) {
  *len = a->normalized ? a->nlen : a->len;
  return t->strs.p + (a->normalized ? a->noff : a->off);
}

/* Orders a set's tokens by first byte, then longest first, so the first hit
 * at a position is HF's leftmost-longest match. */
static int added_before(const ap_tokenizer *t, uint32_t x, uint32_t y) {
  uint32_t xl, yl;
  const unsigned char *xs = (const unsigned char *)added_text(t, &t->added[x], &xl);
  const unsigned char *ys = (const unsigned char *)added_text(t, &t->added[y], &yl);
  if (xs[0] != ys[0]) return xs[0] < ys[0];
  if (xl != yl) return xl > yl;
  return x < y;
}

static int build_set(const ap_tokenizer *t, match_set *set, int normalized) {
  set->idx = malloc((t->n_added ? t->n_added : 1) * sizeof *set->idx);
  if (!set->idx) return AP_TOK_ENOMEM;
  set->n = 0;
  for (size_t i = 0; i < t->n_added; i++) {
    uint32_t len;
    added_text(t, &t->added[i], &len);
    if (t->added[i].normalized != normalized || !len) continue;
    /* insertion sort: there are a few hundred added tokens at most */
    size_t j = set->n++;
    while (j > 0 && added_before(t, (uint32_t)i, set->idx[j - 1])) {
      set->idx[j] = set->idx[j - 1];
      j--;
    }
    set->idx[j] = (uint32_t)i;
  }
  size_t k = 0;
  for (int b = 0; b <= 256; b++) {
    while (k < set->n) {
      uint32_t len;
      const unsigned char *s = (const unsigned char *)added_text(t, &t->added[set->idx[k]], &len);
      if (s[0] >= b) break;
      k++;
    }
    set->start[b] = (uint32_t)k;
  }
  return 0;
}

static int load_added(ap_tokenizer *t, lctx *L, const cJSON *list, size_t *idcap) {
  const cJSON *it;
  int rc;
  if (!list || cJSON_IsNull(list)) return 0;
  if (!cJSON_IsArray(list)) return set_err(L->err, L->errlen, AP_TOK_EFORMAT, "\"added_tokens\" is not an array");
  size_t n = (size_t)cJSON_GetArraySize(list);
  t->added = calloc(n ? n : 1, sizeof *t->added);
  if (!t->added) return AP_TOK_ENOMEM;
  cJSON_ArrayForEach(it, list) {
    const cJSON *content = cJSON_GetObjectItemCaseSensitive(it, "content");
    int32_t id;
    int special = 0, lstrip = 0, rstrip = 0, single_word = 0, normalized = 0;
    if (!cJSON_IsString(content) || jid(cJSON_GetObjectItemCaseSensitive(it, "id"), &id))
      return set_err(L->err, L->errlen, AP_TOK_EFORMAT, "added_tokens[%zu]: needs a string \"content\" and an integer \"id\"",
                     t->n_added);
    if ((rc = jbool(L, it, "special", 0, &special, "added token")) ||
        (rc = jbool(L, it, "lstrip", 0, &lstrip, "added token")) ||
        (rc = jbool(L, it, "rstrip", 0, &rstrip, "added token")) ||
        (rc = jbool(L, it, "single_word", 0, &single_word, "added token")) ||
        (rc = jbool(L, it, "normalized", !special, &normalized, "added token")))
      return rc;
    size_t len = strlen(content->valuestring);
    int32_t in_vocab = smap_get(&t->vocab, t->strs.p, content->valuestring, len);
    if (in_vocab >= 0 && in_vocab != id)
      return set_err(L->err, L->errlen, AP_TOK_EFORMAT, "added token \"%.100s\" has id %d but the vocab says %d",
                     content->valuestring, id, in_vocab);
    if ((rc = ensure_ids(t, L, id, idcap))) return rc;
    if (in_vocab < 0 && t->tok_off[id] != SIZE_MAX) {
      uint32_t ol = t->tok_len[id];
      if (ol != len || memcmp(t->strs.p + t->tok_off[id], content->valuestring, len))
        return set_err(L->err, L->errlen, AP_TOK_EFORMAT, "added token \"%.100s\": id %d already belongs to another token",
                       content->valuestring, id);
    }
    added_tok *a = &t->added[t->n_added++];
    a->off = t->strs.n;
    a->len = (uint32_t)len;
    a->id = id;
    a->special = (uint8_t)special;
    a->lstrip = (uint8_t)lstrip;
    a->rstrip = (uint8_t)rstrip;
    a->single_word = (uint8_t)single_word;
    a->normalized = (uint8_t)normalized;
    if (sb_append(&t->strs, content->valuestring, len)) return AP_TOK_ENOMEM;
    /* the added token's text wins over the model's for this id, as in HF */
    t->tok_off[id] = a->off;
    t->tok_len[id] = a->len;
    if (special) t->tok_special[id] = 1;
  }
  return 0;
}

/* Normalized added tokens are matched in normalized text, so their pattern
 * is their content run through the normalizer (HF does the same). */
static int normalize_added(ap_tokenizer *t) {
  strbuf out = {0}, tmp = {0}, copy = {0};
  int rc = 0;
  for (size_t i = 0; i < t->n_added && !rc; i++) {
    added_tok *a = &t->added[i];
    if (!a->normalized) continue;
    copy.n = 0;
    if ((rc = sb_append(&copy, t->strs.p + a->off, a->len))) break;
    if ((rc = normalize(t, copy.p, copy.n, &out, &tmp))) break;
    a->noff = t->strs.n;
    a->nlen = (uint32_t)out.n;
    rc = sb_append(&t->strs, out.p, out.n);
  }
  free(out.p);
  free(tmp.p);
  free(copy.p);
  return rc;
}

int ap_tokenizer_load_json(const char *json, size_t len, ap_tokenizer **out, char *err, size_t errlen) {
  lctx L = {err, errlen};
  if (out) *out = NULL;
  if (err && errlen) err[0] = '\0';
  if (!json || !out) return set_err(err, errlen, AP_TOK_EARG, "NULL argument");
  pthread_once(&bytelevel_once, bytelevel_tables);
  const char *end = NULL;
  cJSON *root = cJSON_ParseWithLengthOpts(json, len, &end, 0);
  if (!root) {
    size_t at = end && end >= json ? (size_t)(end - json) : 0;
    return set_err(err, errlen, AP_TOK_EJSON, "not valid JSON (parse error near byte %zu of %zu)", at, len);
  }
  ap_tokenizer *t = calloc(1, sizeof *t);
  int rc = AP_TOK_ENOMEM;
  size_t idcap = 0;
  if (!t) goto fail;
  if (!cJSON_IsObject(root)) { rc = set_err(err, errlen, AP_TOK_EFORMAT, "top level is not a JSON object"); goto fail; }
  static const char *const unsupported_keys[] = {"truncation", "padding"};
  for (int k = 0; k < 2; k++) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, unsupported_keys[k]);
    if (v && !cJSON_IsNull(v)) {
      rc = set_err(err, errlen, AP_TOK_EUNSUPPORTED, "\"%s\" is set; only null is supported", unsupported_keys[k]);
      goto fail;
    }
  }
  {
    const cJSON *m = cJSON_GetObjectItemCaseSensitive(root, "model");
    long long ntok = (long long)cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(m, "vocab")) +
                     cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(root, "added_tokens"));
    long long cap_ids = 4 * ntok + 65536;
    t->max_id = (int32_t)(cap_ids < (1 << 28) ? cap_ids : (1 << 28));
    if ((rc = load_model(t, &L, m, &idcap))) goto fail;
  }
  if ((rc = load_added(t, &L, cJSON_GetObjectItemCaseSensitive(root, "added_tokens"), &idcap))) goto fail;
  const cJSON *norm = cJSON_GetObjectItemCaseSensitive(root, "normalizer");
  if (norm && !cJSON_IsNull(norm) && (rc = add_norm(t, &L, norm))) goto fail;
  const cJSON *pre = cJSON_GetObjectItemCaseSensitive(root, "pre_tokenizer");
  if (pre && !cJSON_IsNull(pre) && (rc = add_pre(t, &L, pre))) goto fail;
  const cJSON *post = cJSON_GetObjectItemCaseSensitive(root, "post_processor");
  if (post && !cJSON_IsNull(post) && (rc = add_post(t, &L, post))) goto fail;
  const cJSON *dec = cJSON_GetObjectItemCaseSensitive(root, "decoder");
  if (dec && !cJSON_IsNull(dec)) {
    t->has_decoder = 1;
    if ((rc = add_dec(t, &L, dec))) goto fail;
  }
  for (size_t i = 0; i < t->prefix.n + t->suffix.n; i++) {
    int32_t id = i < t->prefix.n ? t->prefix.p[i] : t->suffix.p[i - t->prefix.n];
    if (id >= t->n_ids || t->tok_off[id] == SIZE_MAX) {
      rc = set_err(err, errlen, AP_TOK_EFORMAT, "post_processor adds id %d, which has no token", id);
      goto fail;
    }
  }
  rc = AP_TOK_ENOMEM;
  if (t->byte_level && build_byte_vocab(t)) goto fail;
  for (int b = 0; b < 128; b++) {
    char c = (char)b;
    t->sym_ascii[b] = smap_get(&t->vocab, t->strs.p, &c, 1);
  }
  for (int b = 0; b < 256; b++) {
    char name[8];
    snprintf(name, sizeof name, "<0x%02X>", b);
    t->fallback_id[b] = smap_get(&t->vocab, t->strs.p, name, 6);
  }
  if (normalize_added(t) || build_set(t, &t->raw_set, 0) || build_set(t, &t->norm_set, 1)) goto fail;
  for (size_t i = 0; i < t->n_added; i++) {
    if (!t->added[i].single_word || t->word_re) continue;
    if ((rc = compile_regex(&L, RUST_WORD_CLASS, 0, &t->word_re))) goto fail;
  }
  cJSON_Delete(root);
  *out = t;
  return 0;
fail:
  if (rc == AP_TOK_ENOMEM) set_err(err, errlen, rc, "out of memory");
  cJSON_Delete(root);
  ap_tokenizer_free(t);
  return rc;
}

int ap_tokenizer_load(const char *path, ap_tokenizer **out, char *err, size_t errlen) {
  if (out) *out = NULL;
  if (!path || !out) return set_err(err, errlen, AP_TOK_EARG, "NULL argument");
  FILE *f = fopen(path, "rb");
  if (!f) return set_err(err, errlen, AP_TOK_EIO, "%s: %s", path, strerror(errno));
  strbuf b = {0};
  char chunk[1 << 16];
  size_t got;
  while ((got = fread(chunk, 1, sizeof chunk, f)) > 0) {
    if (sb_append(&b, chunk, got)) {
      fclose(f);
      free(b.p);
      return set_err(err, errlen, AP_TOK_ENOMEM, "%s: out of memory", path);
    }
  }
  int read_err = ferror(f);
  fclose(f);
  if (read_err) {
    free(b.p);
    return set_err(err, errlen, AP_TOK_EIO, "%s: read error", path);
  }
  char inner[400];
  int rc = ap_tokenizer_load_json(b.p ? b.p : "", b.n, out, inner, sizeof inner);
  free(b.p);
  if (rc) set_err(err, errlen, rc, "%s: %s", path, inner);
  return rc;
}

int32_t ap_tokenizer_bos_id(const ap_tokenizer *t) { return t && t->prefix.n ? t->prefix.p[0] : -1; }

int32_t ap_tokenizer_vocab_size(const ap_tokenizer *t) { return t ? t->n_ids : 0; }

int32_t ap_tokenizer_token_id(const ap_tokenizer *t, const char *str) {
  if (!t || !str) return -1;
  size_t len = strlen(str);
  for (size_t i = 0; i < t->n_added; i++)
    if (t->added[i].len == len && memcmp(t->strs.p + t->added[i].off, str, len) == 0) return t->added[i].id;
  return smap_get(&t->vocab, t->strs.p, str, len);
}

void ap_tokenizer_free(ap_tokenizer *t) {
  if (!t) return;
  free(t->strs.p);
  free(t->tok_off);
  free(t->tok_len);
  free(t->tok_special);
  free(t->vocab.e);
  free(t->bytes_vocab.e);
  free(t->merges.e);
  free(t->added);
  free(t->raw_set.idx);
  free(t->norm_set.idx);
  pcre2_code_free(t->word_re);
  for (size_t i = 0; i < t->n_norm; i++) {
    free(t->norm[i].a);
    free(t->norm[i].b);
  }
  free(t->norm);
  for (size_t i = 0; i < t->n_pre; i++) pcre2_code_free(t->pre[i].re);
  free(t->pre);
  for (size_t i = 0; i < t->n_dec; i++) {
    free(t->dec[i].a);
    free(t->dec[i].b);
  }
  free(t->dec);
  free(t->prefix.p);
  free(t->suffix.p);
  free(t);
}
