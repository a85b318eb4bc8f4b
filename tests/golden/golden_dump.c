/*
 * golden_dump.c - runs our engine on a model and a text and writes what the
 * PyTorch reference (torch_ref.py) recomputes independently:
 *
 *   tokens.i32        every token id of the whole text (our C tokenizer)
 *   window_nll.f64    NLL sum of each of the first min(8, --windows) windows
 *   logits0.f32       logits of window 0, [ctx, vocab]
 *   grad/<i>.f32      dL/dW of eligible layer i for window 0 (L = mean NLL)
 *   colsq/<i>.f64     Wanda column sums of squares over the first --stats-windows windows
 *   meta.json         ctx, counts, ppl, the loss of window 0, per-layer names and
 *                     grad_abs_kept summed over the first --grad-windows windows,
 *                     and the ppl recomputed through the block-by-block API
 *
 * usage: golden_dump --model DIR --text FILE --ctx L --windows N (0 = all)
 *                    --grad-windows G --stats-windows S --out DIR [--ppl-only 1]
 * With --ppl-only 1 it only prints the perplexity over the windows as JSON.
 */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "model.h"
#include "perplexity.h"
#include "textdata.h"
#include "tokenizer.h"

static int write_file(const char *dir, const char *name, const void *data, size_t bytes) {
  char path[4096];
  snprintf(path, sizeof path, "%s/%s", dir, name);
  FILE *f = fopen(path, "wb");
  if (!f || fwrite(data, 1, bytes, f) != bytes) {
    fprintf(stderr, "golden_dump: cannot write %s: %s\n", path, strerror(errno));
    if (f) fclose(f);
    return -1;
  }
  return fclose(f) == 0 ? 0 : -1;
}

typedef struct {
  const char *out;
  int failed;
} hook_ctx;

static void on_grad(void *user, int layer, const apk_tensor *g) {
  hook_ctx *h = user;
  char name[64];
  snprintf(name, sizeof name, "grad/%d.f32", layer);
  if (write_file(h->out, name, g->data, apk_tensor_bytes(g))) h->failed = 1;
}

int main(int argc, char **argv) {
  const char *model_dir = NULL, *text = NULL, *out = NULL;
  int ctx = 0;
  long windows = 0, grad_windows = 1, stats_windows = 1, ppl_only = 0;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (!strcmp(argv[i], "--model")) model_dir = argv[i + 1];
    else if (!strcmp(argv[i], "--text")) text = argv[i + 1];
    else if (!strcmp(argv[i], "--out")) out = argv[i + 1];
    else if (!strcmp(argv[i], "--ctx")) ctx = atoi(argv[i + 1]);
    else if (!strcmp(argv[i], "--windows")) windows = atol(argv[i + 1]);
    else if (!strcmp(argv[i], "--grad-windows")) grad_windows = atol(argv[i + 1]);
    else if (!strcmp(argv[i], "--stats-windows")) stats_windows = atol(argv[i + 1]);
    else if (!strcmp(argv[i], "--ppl-only")) ppl_only = atol(argv[i + 1]);
    else {
      fprintf(stderr, "golden_dump: unknown option %s\n", argv[i]);
      return 2;
    }
  }
  if (!model_dir || !text || !out || ctx < 2 || grad_windows < 1 || stats_windows < 1) {
    fprintf(stderr, "usage: golden_dump --model DIR --text FILE --ctx L --windows N --grad-windows G "
                    "--stats-windows S --out DIR\n");
    return 2;
  }
  char err[512], path[4096];
  ap_tokenizer *tok = NULL;
  ap_model *m = NULL;
  ap_textdata td = {0};
  int rc = 1;
  snprintf(path, sizeof path, "%s/tokenizer.json", model_dir);
  if (ap_tokenizer_load(path, &tok, err, sizeof err)) goto fail;
  if (ap_model_load(model_dir, NULL, &m, err, sizeof err)) goto fail;
  if (ap_textdata_load(text, tok, &td, err, sizeof err)) goto fail;
  mkdir(out, 0755);
  snprintf(path, sizeof path, "%s/grad", out);
  mkdir(path, 0755);
  snprintf(path, sizeof path, "%s/colsq", out);
  mkdir(path, 0755);
  if (write_file(out, "tokens.i32", td.tokens, td.n_tokens * sizeof *td.tokens)) goto fail_quiet;

  const ap_hf_config *cfg = ap_model_config(m);
  int64_t W = ap_textdata_window_count(&td, ctx);
  int64_t nw = windows <= 0 || windows > W ? W : windows;
  if (nw < stats_windows || nw < grad_windows) {
    snprintf(err, sizeof err, "text has %lld windows of %d, fewer than asked", (long long)W, ctx);
    goto fail;
  }

  /* perplexity over the first nw windows, and each window's NLL sum */
  ap_ppl_opts po = {.ctx = ctx, .max_windows = nw};
  ap_ppl_result pr;
  if (ap_perplexity(m, &td, &po, &pr, err, sizeof err)) goto fail;
  if (ppl_only) { /* reference numbers: print and stop */
    printf("{\"ppl\": %.6f, \"nll\": %.8f, \"tokens\": %lld, \"windows\": %lld, \"ctx\": %d, "
           "\"tokens_per_s\": %.0f}\n",
           pr.ppl, pr.nll, (long long)pr.tokens, (long long)pr.windows, pr.ctx, pr.tokens_per_s);
    rc = 0;
    goto done;
  }
  int64_t nw_each = nw < 8 ? nw : 8; /* per-window NLL of the first few windows */
  double *wnll = calloc((size_t)nw_each, sizeof *wnll);
  double nll = 0;
  int64_t pred = 0;
  if (!wnll || ap_model_forward(m, td.tokens, (int)nw_each, ctx, 0, &nll, &pred, wnll)) goto fail_model;
  int werr = write_file(out, "window_nll.f64", wnll, (size_t)nw_each * sizeof *wnll);
  free(wnll);
  if (werr) goto fail_quiet;

  /* logits of window 0 */
  size_t nlog = (size_t)ctx * cfg->vocab_size;
  float *logits = malloc(nlog * sizeof *logits);
  if (!logits || ap_model_logits(m, td.tokens, ctx, logits)) {
    free(logits);
    goto fail_model;
  }
  werr = write_file(out, "logits0.f32", logits, nlog * sizeof *logits);
  free(logits);
  if (werr) goto fail_quiet;

  /* Wanda statistics through the full forward */
  if (ap_model_stats_enable(m)) goto fail_model;
  double snll = 0;
  int64_t spred = 0;
  if (ap_model_forward(m, td.tokens, (int)stats_windows, ctx, 1, &snll, &spred, NULL)) goto fail_model;
  int nl = ap_model_num_linears(m);
  for (int i = 0; i < nl; i++) {
    ap_linear *l = ap_model_linear(m, i);
    char name[64];
    snprintf(name, sizeof name, "colsq/%d.f64", i);
    if (write_file(out, name, l->act_sumsq.data, apk_tensor_bytes(&l->act_sumsq))) goto fail_quiet;
  }

  /* the same windows through the block-by-block API: stats and ppl must agree */
  double block_stats_maxrel = 0;
  {
    double **saved = calloc((size_t)nl, sizeof *saved);
    for (int i = 0; saved && i < nl; i++) {
      ap_linear *l = ap_model_linear(m, i);
      saved[i] = malloc(apk_tensor_bytes(&l->act_sumsq));
      if (saved[i]) memcpy(saved[i], l->act_sumsq.data, apk_tensor_bytes(&l->act_sumsq));
    }
    apk_tensor hid;
    if (!saved || ap_model_stats_enable(m) || ap_model_embed(m, td.tokens, (int)stats_windows, ctx, &hid)) {
      free(saved);
      goto fail_model;
    }
    for (int b = 0; b < cfg->num_hidden_layers; b++)
      if (ap_model_block_forward(m, b, &hid, ctx, 1)) goto fail_model;
    double bn = 0;
    int64_t bp = 0;
    if (ap_model_head_nll(m, &hid, td.tokens, ctx, &bn, &bp, NULL)) goto fail_model;
    apk_tensor_free(ap_model_ctx(m), &hid);
    if (fabs(bn - snll) > 1e-9 * fabs(snll) || bp != spred) block_stats_maxrel = INFINITY;
    for (int i = 0; i < nl; i++) {
      ap_linear *l = ap_model_linear(m, i);
      const double *a = l->act_sumsq.data;
      for (int64_t j = 0; saved[i] && j < l->cols; j++)
        block_stats_maxrel = fmax(block_stats_maxrel, fabs(a[j] - saved[i][j]) / fmax(fabs(saved[i][j]), 1e-30));
      free(saved[i]);
    }
    free(saved);
  }

  /* gradients: window 0 signed through the hook, then the |grad| sums over G windows */
  hook_ctx hc = {out, 0};
  if (ap_model_grad_enable(m, 1)) goto fail_model;
  ap_model_set_grad_hook(m, on_grad, &hc);
  double loss0 = 0;
  if (ap_model_backward_window(m, td.tokens, ctx, &loss0)) goto fail_model;
  ap_model_set_grad_hook(m, NULL, NULL);
  if (hc.failed) goto fail_quiet;
  for (long w = 1; w < grad_windows; w++)
    if (ap_model_backward_window(m, td.tokens + (size_t)w * ctx, ctx, NULL)) goto fail_model;

  snprintf(path, sizeof path, "%s/meta.json", out);
  FILE *f = fopen(path, "w");
  if (!f) goto fail_quiet;
  fprintf(f, "{\"ctx\": %d, \"n_tokens\": %zu, \"windows\": %lld, \"ppl\": %.17g, \"nll_sum\": %.17g,\n", ctx,
          td.n_tokens, (long long)nw, pr.ppl, pr.nll_sum);
  fprintf(f, " \"predicted\": %lld, \"loss0\": %.17g, \"grad_windows\": %ld, \"stats_windows\": %ld,\n",
          (long long)pr.tokens, loss0, grad_windows, stats_windows);
  fprintf(f, " \"block_api_stats_maxrel\": %.17g, \"bos\": %d, \"layers\": [\n", block_stats_maxrel,
          ap_tokenizer_bos_id(tok));
  for (int i = 0; i < nl; i++) {
    ap_linear *l = ap_model_linear(m, i);
    /* mean over windows of sum |dL/dW| recomputed from the per-weight accumulator too */
    double acc_sum = 0;
    const float *ga = l->grad_abs.data;
    for (int64_t j = 0; j < l->rows * l->cols; j++) acc_sum += ga[j];
    fprintf(f, "  {\"name\": \"%s\", \"kind\": \"%s\", \"block\": %d, \"rows\": %lld, \"cols\": %lld, "
               "\"act_tokens\": %lld, \"grad_abs_kept\": %.17g, \"grad_abs_acc\": %.17g, \"grad_windows\": %lld}%s\n",
            l->name, ap_linear_kind_name(l->kind), l->block, (long long)l->rows, (long long)l->cols,
            (long long)l->act_tokens, l->grad_abs_kept, acc_sum, (long long)l->grad_windows, i + 1 < nl ? "," : "");
  }
  fprintf(f, "]}\n");
  if (fclose(f)) goto fail_quiet;
  rc = 0;
  goto done;
fail_model:
  snprintf(err, sizeof err, "%s", ap_model_error(m));
fail:
  fprintf(stderr, "golden_dump: %s\n", err);
fail_quiet:
done:
  ap_textdata_free(&td);
  ap_model_free(m);
  ap_tokenizer_free(tok);
  return rc;
}
