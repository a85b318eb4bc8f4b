/*
 * test_tokenizer_hostile - broken or unsupported tokenizer.json files must be
 * refused at load time with the right code and a message; bad API use and
 * arbitrary input bytes must never crash (run under ASan/UBSan in CI).
 *
 * Usage: test_tokenizer_hostile STORIES260K_TOKENIZER_JSON QWEN3_TOKENIZER_JSON
 * Mutations are made with cJSON on the stories260K file (small, SentencePiece
 * style) and checked one at a time.
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

static void expect_fail(const char *what, const char *json, size_t len, int want_rc) {
  char err[512] = "untouched";
  ap_tokenizer *t = (ap_tokenizer *)&err; /* must be reset to NULL */
  int rc = ap_tokenizer_load_json(json, len, &t, err, sizeof err);
  CHECKF(rc == want_rc, "%s: rc %d, want %d (%s)", what, rc, want_rc, err);
  CHECKF(t == NULL, "%s: *out not NULL on failure", what);
  CHECKF(err[0] && strcmp(err, "untouched") != 0, "%s: no error message", what);
  if (rc == want_rc) printf("  ok %-44s -> %s\n", what, err);
  if (rc == 0) ap_tokenizer_free(t);
}

typedef void (*mutator)(cJSON *root);

static cJSON *model(cJSON *root) { return cJSON_GetObjectItem(root, "model"); }
static void set(cJSON *o, const char *key, cJSON *v) {
  if (cJSON_GetObjectItem(o, key)) cJSON_ReplaceItemInObject(o, key, v);
  else cJSON_AddItemToObject(o, key, v);
}
static cJSON *parse(const char *s) { return cJSON_Parse(s); }

static void m_wordpiece(cJSON *r) { set(model(r), "type", cJSON_CreateString("WordPiece")); }
static void m_unigram(cJSON *r) { set(model(r), "type", cJSON_CreateString("Unigram")); }
static void m_no_type(cJSON *r) { cJSON_DeleteItemFromObject(model(r), "type"); }
static void m_no_model(cJSON *r) { cJSON_DeleteItemFromObject(r, "model"); }
static void m_no_vocab(cJSON *r) { cJSON_DeleteItemFromObject(model(r), "vocab"); }
static void m_vocab_array(cJSON *r) { set(model(r), "vocab", parse("[\"a\", \"b\"]")); }
static void m_vocab_negative(cJSON *r) { set(cJSON_GetObjectItem(model(r), "vocab"), "zz", cJSON_CreateNumber(-3)); }
static void m_vocab_fraction(cJSON *r) { set(cJSON_GetObjectItem(model(r), "vocab"), "zz", cJSON_CreateNumber(2.5)); }
static void m_vocab_string_id(cJSON *r) { set(cJSON_GetObjectItem(model(r), "vocab"), "zz", cJSON_CreateString("7")); }
static void m_vocab_huge_id(cJSON *r) { set(cJSON_GetObjectItem(model(r), "vocab"), "zz", cJSON_CreateNumber(200000000)); }
static void m_vocab_dup_id(cJSON *r) { set(cJSON_GetObjectItem(model(r), "vocab"), "zz", cJSON_CreateNumber(300)); }
static void m_no_merges(cJSON *r) { cJSON_DeleteItemFromObject(model(r), "merges"); }
static void m_merge_unknown(cJSON *r) {
  cJSON_AddItemToArray(cJSON_GetObjectItem(model(r), "merges"), cJSON_CreateString("\xe2\x96\x81 nosuchtoken"));
}
static void m_merge_three(cJSON *r) { cJSON_AddItemToArray(cJSON_GetObjectItem(model(r), "merges"), cJSON_CreateString("a b c")); }
static void m_merge_nospace(cJSON *r) { cJSON_AddItemToArray(cJSON_GetObjectItem(model(r), "merges"), cJSON_CreateString("ab")); }
static void m_merge_number(cJSON *r) { cJSON_AddItemToArray(cJSON_GetObjectItem(model(r), "merges"), parse("[1, 2]")); }
static void m_merge_result_missing(cJSON *r) {
  /* both halves exist, their concatenation does not */
  cJSON_AddItemToArray(cJSON_GetObjectItem(model(r), "merges"), cJSON_CreateString("<0x00> <0x01>"));
}
static void m_unk_missing(cJSON *r) { set(model(r), "unk_token", cJSON_CreateString("<nope>")); }
static void m_dropout(cJSON *r) { set(model(r), "dropout", cJSON_CreateNumber(0.1)); }
static void m_prefix(cJSON *r) { set(model(r), "continuing_subword_prefix", cJSON_CreateString("##")); }
static void m_norm_lowercase(cJSON *r) { set(r, "normalizer", parse("{\"type\": \"Lowercase\"}")); }
static void m_norm_regex_replace(cJSON *r) {
  set(r, "normalizer", parse("{\"type\": \"Replace\", \"pattern\": {\"Regex\": \" +\"}, \"content\": \" \"}"));
}
static void m_pre_whitespace(cJSON *r) { set(r, "pre_tokenizer", parse("{\"type\": \"Whitespace\"}")); }
static void m_pre_bad_regex(cJSON *r) {
  set(r, "pre_tokenizer", parse("{\"type\": \"Split\", \"pattern\": {\"Regex\": \"(\\\\p{L}+\"}, \"behavior\": \"Isolated\", \"invert\": false}"));
}
static void m_pre_removed(cJSON *r) {
  set(r, "pre_tokenizer", parse("{\"type\": \"Split\", \"pattern\": {\"Regex\": \" \"}, \"behavior\": \"Removed\", \"invert\": false}"));
}
static void m_pre_bytelevel_then_split(cJSON *r) {
  set(r, "pre_tokenizer", parse("{\"type\": \"Sequence\", \"pretokenizers\": [{\"type\": \"ByteLevel\"}, "
                                "{\"type\": \"Split\", \"pattern\": {\"String\": \" \"}, \"behavior\": \"Isolated\"}]}"));
}
static void m_pre_no_type(cJSON *r) { set(r, "pre_tokenizer", parse("{\"pattern\": 1}")); }
static void m_dec_wordpiece(cJSON *r) { set(r, "decoder", parse("{\"type\": \"WordPiece\", \"prefix\": \"##\"}")); }
static void m_dec_strip_bad(cJSON *r) { set(r, "decoder", parse("{\"type\": \"Strip\", \"content\": \"ab\", \"start\": 1, \"stop\": 0}")); }
static void m_post_bert(cJSON *r) { set(r, "post_processor", parse("{\"type\": \"BertProcessing\", \"sep\": [\"</s>\", 2], \"cls\": [\"<s>\", 1]}")); }
static void m_post_unknown_special(cJSON *r) {
  cJSON *pp = cJSON_GetObjectItem(r, "post_processor");
  set(pp, "special_tokens", cJSON_CreateObject());
}
static void m_post_bad_id(cJSON *r) {
  cJSON *pp = cJSON_GetObjectItem(r, "post_processor");
  set(pp, "special_tokens", parse("{\"<s>\": {\"id\": \"<s>\", \"ids\": [99999], \"tokens\": [\"<s>\"]}}"));
}
static void m_added_conflict(cJSON *r) {
  cJSON_AddItemToArray(cJSON_GetObjectItem(r, "added_tokens"),
                       parse("{\"id\": 5, \"content\": \"<s>\", \"special\": true, \"normalized\": false}"));
}
static void m_added_no_content(cJSON *r) { cJSON_AddItemToArray(cJSON_GetObjectItem(r, "added_tokens"), parse("{\"id\": 600}")); }
static void m_added_bad_flag(cJSON *r) {
  cJSON_AddItemToArray(cJSON_GetObjectItem(r, "added_tokens"), parse("{\"id\": 600, \"content\": \"x\", \"lstrip\": \"yes\"}"));
}
static void m_truncation(cJSON *r) { set(r, "truncation", parse("{\"max_length\": 8}")); }

static void mutate(const char *base, const char *what, mutator m, int want_rc) {
  cJSON *root = cJSON_Parse(base);
  m(root);
  char *txt = cJSON_PrintUnformatted(root);
  expect_fail(what, txt, strlen(txt), want_rc);
  free(txt);
  cJSON_Delete(root);
}

static uint64_t rng = 0x9E3779B97F4A7C15ull;
static uint32_t next_rand(void) {
  rng ^= rng << 13;
  rng ^= rng >> 7;
  rng ^= rng << 17;
  return (uint32_t)(rng >> 11);
}

/* Arbitrary bytes in, ids and text out: the ids must all be valid, and the
 * byte-level decode of ids must be valid UTF-8 (U+FFFD for cut characters). */
static void fuzz(const ap_tokenizer *t, const char *name, int rounds) {
  int bad = 0;
  char buf[512];
  for (int r = 0; r < rounds; r++) {
    size_t len = next_rand() % sizeof buf;
    for (size_t i = 0; i < len; i++) {
      uint32_t x = next_rand();
      /* mostly ASCII and UTF-8 lead/continuation bytes, sometimes token text */
      buf[i] = (char)(x % 4 == 0 ? 0x80 + (x >> 8) % 0x80 : x % 4 == 1 ? 0xC0 + (x >> 8) % 0x40 : ' ' + (x >> 8) % 95);
      if (x % 97 == 0 && i + 3 < len) { memcpy(buf + i, "<s>", 3); i += 2; }
    }
    int32_t *ids = NULL;
    size_t n = 0;
    if (ap_tokenizer_encode(t, buf, len, (int)(r & 1), &ids, &n)) { bad++; continue; }
    for (size_t i = 0; i < n; i++)
      if (ids[i] < 0 || ids[i] >= ap_tokenizer_vocab_size(t)) bad++;
    char *txt = NULL;
    size_t tl;
    if (ap_tokenizer_decode(t, ids, n, r & 2, &txt, &tl) || strlen(txt) > tl) bad++;
    free(txt);
    free(ids);
  }
  CHECKF(bad == 0, "%s fuzz: %d failures", name, bad);
}

int main(int argc, char **argv) {
  if (argc != 3) {
    fprintf(stderr, "usage: %s STORIES260K_TOKENIZER_JSON QWEN3_TOKENIZER_JSON\n", argv[0]);
    return 2;
  }
  size_t len;
  char *base = read_file(argv[1], &len);
  CHECKF(base != NULL, "cannot read %s", argv[1]);
  if (!base) TEST_DONE();

  /* the unmodified file loads, so every failure below is the mutation's */
  char err[512];
  ap_tokenizer *t = NULL;
  CHECKF(ap_tokenizer_load_json(base, len, &t, err, sizeof err) == 0, "base: %s", err);
  ap_tokenizer_free(t);

  ap_tokenizer *none = NULL;
  CHECK_EQ_INT(ap_tokenizer_load("/nonexistent/tokenizer.json", &none, err, sizeof err), AP_TOK_EIO);
  CHECK(strstr(err, "/nonexistent/tokenizer.json") != NULL);
  CHECK_EQ_INT(ap_tokenizer_load(NULL, &none, err, sizeof err), AP_TOK_EARG);
  CHECK_EQ_INT(ap_tokenizer_load(argv[1], NULL, err, sizeof err), AP_TOK_EARG);

  expect_fail("empty input", "", 0, AP_TOK_EJSON);
  size_t cuts[] = {1, 2, 17, 100, len / 3, len / 2, len - 2, len - 1};
  for (size_t i = 0; i < sizeof cuts / sizeof cuts[0]; i++) {
    char what[64];
    snprintf(what, sizeof what, "truncated to %zu of %zu bytes", cuts[i], len);
    expect_fail(what, base, cuts[i], AP_TOK_EJSON);
  }
  expect_fail("garbage", "\x01\x02tokenizer", 11, AP_TOK_EJSON);
  expect_fail("top level array", "[1, 2]", 6, AP_TOK_EFORMAT);
  expect_fail("empty object", "{}", 2, AP_TOK_EFORMAT);

  mutate(base, "model type WordPiece", m_wordpiece, AP_TOK_EUNSUPPORTED);
  mutate(base, "model type Unigram", m_unigram, AP_TOK_EUNSUPPORTED);
  mutate(base, "model without type", m_no_type, AP_TOK_EFORMAT);
  mutate(base, "no model", m_no_model, AP_TOK_EFORMAT);
  mutate(base, "no vocab", m_no_vocab, AP_TOK_EFORMAT);
  mutate(base, "vocab is an array", m_vocab_array, AP_TOK_EFORMAT);
  mutate(base, "negative id", m_vocab_negative, AP_TOK_EFORMAT);
  mutate(base, "fractional id", m_vocab_fraction, AP_TOK_EFORMAT);
  mutate(base, "string id", m_vocab_string_id, AP_TOK_EFORMAT);
  mutate(base, "two tokens with one id", m_vocab_dup_id, AP_TOK_EFORMAT);
  mutate(base, "id far beyond the token count", m_vocab_huge_id, AP_TOK_EFORMAT);
  mutate(base, "no merges", m_no_merges, AP_TOK_EFORMAT);
  mutate(base, "merge of an unknown token", m_merge_unknown, AP_TOK_EFORMAT);
  mutate(base, "merge with three parts", m_merge_three, AP_TOK_EFORMAT);
  mutate(base, "merge without a space", m_merge_nospace, AP_TOK_EFORMAT);
  mutate(base, "merge of numbers", m_merge_number, AP_TOK_EFORMAT);
  mutate(base, "merge result not in vocab", m_merge_result_missing, AP_TOK_EFORMAT);
  mutate(base, "unk_token not in vocab", m_unk_missing, AP_TOK_EFORMAT);
  mutate(base, "BPE dropout", m_dropout, AP_TOK_EUNSUPPORTED);
  mutate(base, "continuing_subword_prefix", m_prefix, AP_TOK_EUNSUPPORTED);
  mutate(base, "normalizer Lowercase", m_norm_lowercase, AP_TOK_EUNSUPPORTED);
  mutate(base, "normalizer Replace with a regex", m_norm_regex_replace, AP_TOK_EUNSUPPORTED);
  mutate(base, "pre_tokenizer Whitespace", m_pre_whitespace, AP_TOK_EUNSUPPORTED);
  mutate(base, "Split regex does not compile", m_pre_bad_regex, AP_TOK_EREGEX);
  mutate(base, "Split behavior Removed", m_pre_removed, AP_TOK_EUNSUPPORTED);
  mutate(base, "Split after ByteLevel", m_pre_bytelevel_then_split, AP_TOK_EUNSUPPORTED);
  mutate(base, "pre_tokenizer without type", m_pre_no_type, AP_TOK_EFORMAT);
  mutate(base, "decoder WordPiece", m_dec_wordpiece, AP_TOK_EUNSUPPORTED);
  mutate(base, "Strip content of two chars", m_dec_strip_bad, AP_TOK_EFORMAT);
  mutate(base, "post_processor BertProcessing", m_post_bert, AP_TOK_EUNSUPPORTED);
  mutate(base, "template names an unknown special", m_post_unknown_special, AP_TOK_EFORMAT);
  mutate(base, "template adds an id with no token", m_post_bad_id, AP_TOK_EFORMAT);
  mutate(base, "added token id differs from vocab", m_added_conflict, AP_TOK_EFORMAT);
  mutate(base, "added token without content", m_added_no_content, AP_TOK_EFORMAT);
  mutate(base, "added token flag not a boolean", m_added_bad_flag, AP_TOK_EFORMAT);
  mutate(base, "truncation set", m_truncation, AP_TOK_EUNSUPPORTED);

  /* API misuse on a good tokenizer */
  CHECK_EQ_INT(ap_tokenizer_load_json(base, len, &t, err, sizeof err), 0);
  int32_t *ids = (int32_t *)1;
  size_t n = 7;
  CHECK_EQ_INT(ap_tokenizer_encode(NULL, "a", 1, 1, &ids, &n), AP_TOK_EARG);
  CHECK(ids == NULL && n == 0);
  CHECK_EQ_INT(ap_tokenizer_encode(t, NULL, 3, 1, &ids, &n), AP_TOK_EARG);
  CHECK_EQ_INT(ap_tokenizer_encode(t, NULL, 0, 0, &ids, &n), 0);
  CHECK(n == 0);
  free(ids);
  /* NUL bytes are ordinary characters: "a\0b" byte-falls-back to <0x00> */
  CHECK_EQ_INT(ap_tokenizer_encode(t, "a\0b", 3, 0, &ids, &n), 0);
  CHECK(n >= 3 && ids[n - 2] == ap_tokenizer_token_id(t, "<0x00>"));
  free(ids);
  char *txt = NULL;
  size_t tl;
  int32_t bad_ids[] = {1, 512};
  CHECK_EQ_INT(ap_tokenizer_decode(t, bad_ids, 2, 0, &txt, &tl), AP_TOK_EARG);
  CHECK(txt == NULL);
  bad_ids[1] = -1;
  CHECK_EQ_INT(ap_tokenizer_decode(t, bad_ids, 2, 0, &txt, &tl), AP_TOK_EARG);
  CHECK_EQ_INT(ap_tokenizer_decode(t, NULL, 0, 0, &txt, &tl), 0);
  CHECK(txt && tl == 0 && txt[0] == 0);
  free(txt);
  CHECK_EQ_INT(ap_tokenizer_bos_id(t), 1);
  CHECK_EQ_INT(ap_tokenizer_vocab_size(t), 512);
  CHECK_EQ_INT(ap_tokenizer_token_id(t, "<s>"), 1);
  CHECK_EQ_INT(ap_tokenizer_token_id(t, "no such token"), -1);
  CHECK_EQ_INT(ap_tokenizer_bos_id(NULL), -1);
  ap_tokenizer_free(NULL);
  fuzz(t, "stories260K", 3000);
  ap_tokenizer_free(t);

  CHECKF(ap_tokenizer_load(argv[2], &t, err, sizeof err) == 0, "qwen3: %s", err);
  if (t) {
    CHECK_EQ_INT(ap_tokenizer_bos_id(t), -1);
    CHECK_EQ_INT(ap_tokenizer_vocab_size(t), 151669);
    CHECK_EQ_INT(ap_tokenizer_token_id(t, "<think>"), 151667);
    fuzz(t, "qwen3", 3000);
    /* a cut UTF-8 character decodes to U+FFFD, like HF's from_utf8_lossy */
    int32_t *e = NULL;
    size_t en = 0;
    CHECK_EQ_INT(ap_tokenizer_encode(t, "\xe4\xb8\xad\xe6\x96\x87", 6, 0, &e, &en), 0);
    if (en == 1) {
      /* one token for both characters: nothing to cut; use the byte tokens instead */
      free(e);
      int32_t parts[] = {ap_tokenizer_token_id(t, "\xc3\xa4")}; /* byte 0xE4 in GPT-2's alphabet: 'ä' */
      CHECK_EQ_INT(ap_tokenizer_decode(t, parts, 1, 0, &txt, &tl), 0);
    } else {
      CHECK_EQ_INT(ap_tokenizer_decode(t, e, 1, 0, &txt, &tl), 0);
      free(e);
    }
    CHECKF(txt && strstr(txt, "\xef\xbf\xbd") != NULL, "cut character should decode to U+FFFD, got \"%s\"", txt ? txt : "");
    free(txt);
    ap_tokenizer_free(t);
  }
  free(base);
  TEST_DONE();
}
