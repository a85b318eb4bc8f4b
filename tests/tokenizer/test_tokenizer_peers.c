/*
 * test_tokenizer_peers - compares our tokenizer with Hugging Face's Rust
 * tokenizers on the cases gen_expected.js wrote (ids, decode with and
 * without special tokens, round trips), then encodes every case again from
 * several threads at once on the same tokenizer and compares again.
 *
 * Usage: test_tokenizer_peers TOKENIZER_JSON EXPECTED_JSONL
 */
#include <pthread.h>
#include <stdint.h>

#include <cjson/cJSON.h>

#include "../test.h"
#include "tokenizer.h"

typedef struct {
  char *text;      /* raw bytes */
  size_t len;
  int sp, rt;
  int32_t *ids;    /* expected */
  size_t n;
  char *dec, *dec_all;
} tcase;

static char *read_file(const char *path, size_t *len) {
  FILE *f = fopen(path, "rb");
  if (!f) return NULL;
  fseek(f, 0, SEEK_END);
  long sz = ftell(f);
  fseek(f, 0, SEEK_SET);
  char *b = malloc((size_t)sz + 1);
  if (b && fread(b, 1, (size_t)sz, f) != (size_t)sz) { free(b); b = NULL; }
  fclose(f);
  if (b) { b[sz] = 0; *len = (size_t)sz; }
  return b;
}

static int hexval(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  return -1;
}

static int parse_case(const cJSON *o, tcase *c) {
  const cJSON *hex = cJSON_GetObjectItem(o, "hex"), *file = cJSON_GetObjectItem(o, "file");
  const cJSON *ids = cJSON_GetObjectItem(o, "ids"), *it;
  memset(c, 0, sizeof *c);
  if (cJSON_IsString(hex)) {
    size_t hl = strlen(hex->valuestring);
    c->text = malloc(hl / 2 + 1);
    for (size_t i = 0; i < hl / 2; i++)
      c->text[i] = (char)(hexval(hex->valuestring[2 * i]) * 16 + hexval(hex->valuestring[2 * i + 1]));
    c->len = hl / 2;
  } else if (cJSON_IsString(file)) {
    c->text = read_file(file->valuestring, &c->len);
    if (!c->text) return -1;
  } else {
    return -1;
  }
  c->sp = cJSON_IsTrue(cJSON_GetObjectItem(o, "sp")) || cJSON_GetObjectItem(o, "sp")->valueint;
  const cJSON *rt = cJSON_GetObjectItem(o, "rt");
  c->rt = rt && rt->valueint;
  c->n = (size_t)cJSON_GetArraySize(ids);
  c->ids = malloc((c->n ? c->n : 1) * sizeof *c->ids);
  size_t k = 0;
  cJSON_ArrayForEach(it, ids) c->ids[k++] = (int32_t)it->valuedouble;
  const cJSON *dec = cJSON_GetObjectItem(o, "dec"), *dec_all = cJSON_GetObjectItem(o, "dec_all");
  if (cJSON_IsString(dec)) c->dec = strdup(dec->valuestring);
  if (cJSON_IsString(dec_all)) c->dec_all = strdup(dec_all->valuestring);
  return 0;
}

static void print_ids(const char *label, const int32_t *ids, size_t n, size_t from) {
  fprintf(stderr, "    %s (%zu ids) from #%zu:", label, n, from);
  for (size_t i = from; i < n && i < from + 12; i++) fprintf(stderr, " %d", ids[i]);
  fputc('\n', stderr);
}

static int same_ids(const int32_t *a, size_t an, const int32_t *b, size_t bn) {
  return an == bn && (an == 0 || memcmp(a, b, an * sizeof *a) == 0);
}

typedef struct {
  const ap_tokenizer *t;
  const tcase *cases;
  size_t n, start;
  int mismatches;
} worker;

static void *work(void *arg) {
  worker *w = arg;
  for (size_t k = 0; k < w->n; k++) {
    const tcase *c = &w->cases[(w->start + k) % w->n];
    int32_t *ids;
    size_t n;
    if (ap_tokenizer_encode(w->t, c->text, c->len, c->sp, &ids, &n) || !same_ids(ids, n, c->ids, c->n))
      w->mismatches++;
    free(ids);
  }
  return NULL;
}

int main(int argc, char **argv) {
  if (argc != 3) {
    fprintf(stderr, "usage: %s TOKENIZER_JSON EXPECTED_JSONL\n", argv[0]);
    return 2;
  }
  char err[512];
  ap_tokenizer *t = NULL;
  int rc = ap_tokenizer_load(argv[1], &t, err, sizeof err);
  CHECKF(rc == 0, "load: %s", err);
  if (rc) TEST_DONE();
  size_t flen;
  char *all = read_file(argv[2], &flen);
  CHECKF(all != NULL, "cannot read %s", argv[2]);
  if (!all) TEST_DONE();

  tcase *cases = NULL;
  size_t ncases = 0, cap = 0;
  for (char *line = all, *nl; line < all + flen; line = nl + 1) {
    nl = memchr(line, '\n', (size_t)(all + flen - line));
    if (!nl) nl = all + flen;
    if (nl == line) continue;
    cJSON *o = cJSON_ParseWithLength(line, (size_t)(nl - line));
    if (ncases == cap) cases = realloc(cases, (cap = cap ? cap * 2 : 256) * sizeof *cases);
    int ok = o && parse_case(o, &cases[ncases]) == 0;
    CHECKF(ok, "bad expected line %zu", ncases + 1);
    cJSON_Delete(o);
    if (ok) ncases++;
  }
  free(all);

  int id_fail = 0, dec_fail = 0, rt_checked = 0, rt_fail = 0;
  size_t total_ids = 0;
  for (size_t i = 0; i < ncases; i++) {
    const tcase *c = &cases[i];
    int32_t *ids = NULL;
    size_t n = 0;
    rc = ap_tokenizer_encode(t, c->text, c->len, c->sp, &ids, &n);
    CHECKF(rc == 0, "case %zu: encode rc %d", i + 1, rc);
    total_ids += n;
    int same = rc == 0 && same_ids(ids, n, c->ids, c->n);
    CHECKF(same, "case %zu: ids differ from HF (input %zu bytes: \"%.60s\")", i + 1, c->len, c->text);
    if (!same && id_fail++ < 8) {
      size_t at = 0;
      while (at < n && at < c->n && ids[at] == c->ids[at]) at++;
      print_ids("ours", ids, n, at > 2 ? at - 2 : 0);
      print_ids("HF  ", c->ids, c->n, at > 2 ? at - 2 : 0);
    }
    if (c->dec) {
      /* decode HF's ids, so a decode check does not depend on encode */
      char *txt = NULL, *txt_all = NULL;
      size_t tl, tal;
      int r1 = ap_tokenizer_decode(t, c->ids, c->n, 1, &txt, &tl);
      int r2 = ap_tokenizer_decode(t, c->ids, c->n, 0, &txt_all, &tal);
      int dsame = r1 == 0 && r2 == 0 && strcmp(txt, c->dec) == 0 && strcmp(txt_all, c->dec_all) == 0;
      CHECKF(dsame, "case %zu: decode differs from HF: ours \"%.80s\" / \"%.80s\", HF \"%.80s\" / \"%.80s\"", i + 1,
             txt ? txt : "(error)", txt_all ? txt_all : "(error)", c->dec, c->dec_all);
      if (!dsame) dec_fail++;
      if (c->rt) {
        rt_checked++;
        char *back = NULL;
        size_t bl = 0;
        int ok = ap_tokenizer_decode(t, ids, n, 1, &back, &bl) == 0 && bl == c->len && memcmp(back, c->text, bl) == 0;
        CHECKF(ok, "case %zu: decode(encode(s)) != s: \"%.60s\" -> \"%.60s\"", i + 1, c->text, back ? back : "");
        if (!ok) rt_fail++;
        free(back);
      }
      free(txt);
      free(txt_all);
    }
    free(ids);
  }
  printf("%s: %zu cases, %zu ids; id mismatches %d, decode mismatches %d, round trips %d checked / %d failed\n",
         argv[2], ncases, total_ids, id_fail, dec_fail, rt_checked, rt_fail);

  /* The same cases from 4 threads at once, each starting elsewhere. */
  enum { NT = 4 };
  pthread_t th[NT];
  worker w[NT];
  for (int k = 0; k < NT; k++) {
    w[k] = (worker){t, cases, ncases, ncases * (size_t)k / NT, 0};
    pthread_create(&th[k], NULL, work, &w[k]);
  }
  for (int k = 0; k < NT; k++) {
    pthread_join(th[k], NULL);
    CHECKF(w[k].mismatches == 0, "thread %d: %d cases differ when encoding concurrently", k, w[k].mismatches);
  }

  for (size_t i = 0; i < ncases; i++) {
    free(cases[i].text);
    free(cases[i].ids);
    free(cases[i].dec);
    free(cases[i].dec_all);
  }
  free(cases);
  ap_tokenizer_free(t);
  TEST_DONE();
}
