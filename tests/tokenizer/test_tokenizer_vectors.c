/*
 * test_tokenizer_vectors - published test vectors:
 *   llamacpp TOKENIZER_JSON INP OUT
 *       llama.cpp's ggml-vocab-*.gguf.{inp,out}: strings separated by
 *       "\n__ggml_vocab_test__\n", one line of ids per string, made by HF
 *       tokenizers without special tokens. (SOURCES.md says llama-bpe lines
 *       start with BOS 128000; a leading 128000 is dropped when our
 *       tokenizer.json adds no BOS, as the Llama 3 file in use does not.)
 *   jsonl TOKENIZER_JSON VECTORS_JSONL
 *       {"text": ..., "ids": [...]} lines, ids including the special tokens
 *       (stories260K's vectors from llama2.c's encoder); also checks that
 *       decode(ids) gives the text back.
 */
#include <cjson/cJSON.h>

#include "../test.h"
#include "tokenizer.h"

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

static void compare(const ap_tokenizer *t, size_t idx, const char *text, size_t len, int sp, const int32_t *want,
                    size_t nwant) {
  int32_t *ids = NULL;
  size_t n = 0;
  int rc = ap_tokenizer_encode(t, text, len, sp, &ids, &n);
  int same = rc == 0 && n == nwant && (n == 0 || memcmp(ids, want, n * sizeof *ids) == 0);
  CHECKF(same, "vector %zu \"%.60s\": ids differ (ours %zu ids, expected %zu)", idx + 1, text, n, nwant);
  if (!same) {
    fprintf(stderr, "    ours:");
    for (size_t i = 0; i < n && i < 24; i++) fprintf(stderr, " %d", ids[i]);
    fprintf(stderr, "\n    want:");
    for (size_t i = 0; i < nwant && i < 24; i++) fprintf(stderr, " %d", want[i]);
    fputc('\n', stderr);
  }
  free(ids);
}

static int run_llamacpp(const ap_tokenizer *t, const char *inp_path, const char *out_path) {
  size_t il, ol;
  char *inp = read_file(inp_path, &il), *out = read_file(out_path, &ol);
  CHECKF(inp && out, "cannot read %s / %s", inp_path, out_path);
  if (!inp || !out) return 0;
  static const char sep[] = "\n__ggml_vocab_test__\n";
  char *s = inp, *line = out;
  size_t count = 0;
  int32_t want[4096];
  while (s < inp + il) {
    char *end = strstr(s, sep);
    if (!end) break;
    char *nl = strchr(line, '\n');
    CHECKF(nl != NULL, "%s has fewer lines than %s has strings", out_path, inp_path);
    if (!nl) break;
    *nl = 0;
    size_t nwant = 0;
    for (char *p = line, *q; nwant < 4096; p = q) {
      long v = strtol(p, &q, 10);
      if (q == p) break;
      want[nwant++] = (int32_t)v;
    }
    size_t skip = nwant && want[0] == 128000 && ap_tokenizer_bos_id(t) != 128000;
    compare(t, count, s, (size_t)(end - s), 0, want + skip, nwant - skip);
    count++;
    s = end + strlen(sep);
    line = nl + 1;
  }
  printf("%s: %zu vectors\n", inp_path, count);
  CHECK(count >= 40);
  free(inp);
  free(out);
  return 0;
}

static int run_jsonl(const ap_tokenizer *t, const char *path) {
  size_t len;
  char *all = read_file(path, &len);
  CHECKF(all != NULL, "cannot read %s", path);
  if (!all) return 0;
  size_t count = 0;
  for (char *line = all, *nl; line < all + len; line = nl + 1) {
    nl = strchr(line, '\n');
    if (!nl) nl = all + len;
    cJSON *o = cJSON_ParseWithLength(line, (size_t)(nl - line));
    const cJSON *text = cJSON_GetObjectItem(o, "text"), *ids = cJSON_GetObjectItem(o, "ids"), *it;
    if (!cJSON_IsString(text) || !cJSON_IsArray(ids)) { cJSON_Delete(o); continue; }
    size_t nwant = 0;
    int32_t *want = malloc(((size_t)cJSON_GetArraySize(ids) + 1) * sizeof *want);
    cJSON_ArrayForEach(it, ids) want[nwant++] = (int32_t)it->valuedouble;
    compare(t, count, text->valuestring, strlen(text->valuestring), 1, want, nwant);
    char *back = NULL;
    size_t bl;
    int rc = ap_tokenizer_decode(t, want, nwant, 1, &back, &bl);
    CHECKF(rc == 0 && strcmp(back, text->valuestring) == 0, "vector %zu: decode gives \"%.60s\"", count + 1,
           back ? back : "(error)");
    free(back);
    free(want);
    cJSON_Delete(o);
    count++;
  }
  printf("%s: %zu vectors\n", path, count);
  CHECK(count >= 60);
  free(all);
  return 0;
}

int main(int argc, char **argv) {
  if (argc < 4 || (strcmp(argv[1], "llamacpp") == 0 && argc != 5)) {
    fprintf(stderr, "usage: %s llamacpp TOKENIZER_JSON INP OUT | jsonl TOKENIZER_JSON VECTORS_JSONL\n", argv[0]);
    return 2;
  }
  char err[512];
  ap_tokenizer *t = NULL;
  int rc = ap_tokenizer_load(argv[2], &t, err, sizeof err);
  CHECKF(rc == 0, "load: %s", err);
  if (rc) TEST_DONE();
  if (strcmp(argv[1], "llamacpp") == 0) run_llamacpp(t, argv[3], argv[4]);
  else run_jsonl(t, argv[3]);
  ap_tokenizer_free(t);
  TEST_DONE();
}
