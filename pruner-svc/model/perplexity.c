/*
 * perplexity.c - DESIGN.md section 2 perplexity. See perplexity.h.
 */
#include "perplexity.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* Windows go through the model in batches of this many (gathered into one
 * contiguous buffer when a random selection scatters them). */
enum { PPL_BATCH = 8 };

int ap_perplexity(ap_model *m, const ap_textdata *td, const ap_ppl_opts *opts, ap_ppl_result *out, char *err,
                  size_t errlen) {
  if (!m || !td || !out) {
    if (err && errlen) snprintf(err, errlen, "perplexity: NULL argument");
    return AP_MODEL_EARG;
  }
  memset(out, 0, sizeof *out);
  ap_ppl_opts o = {0};
  if (opts) o = *opts;
  int L = o.ctx > 0 ? o.ctx : ap_model_default_ctx(m);
  int64_t *idx = NULL, count = 0;
  int rc = ap_textdata_select(td, L, o.max_windows, o.sample, o.seed, &idx, &count, err, errlen);
  if (rc) return AP_MODEL_EARG;
  int32_t *batch = malloc((size_t)PPL_BATCH * L * sizeof *batch);
  if (!batch) {
    free(idx);
    if (err && errlen) snprintf(err, errlen, "out of memory");
    return AP_MODEL_ENOMEM;
  }
  double t0 = now_s(), nll = 0;
  int64_t predicted = 0;
  for (int64_t w0 = 0; w0 < count && !rc; w0 += PPL_BATCH) {
    int nb = (int)(count - w0 < PPL_BATCH ? count - w0 : PPL_BATCH);
    for (int j = 0; j < nb; j++)
      memcpy(batch + (size_t)j * L, ap_textdata_window(td, L, idx[w0 + j]), (size_t)L * sizeof *batch);
    rc = ap_model_forward(m, batch, nb, L, 0, &nll, &predicted, NULL);
    if (rc && err && errlen) snprintf(err, errlen, "%s", ap_model_error(m));
  }
  double secs = now_s() - t0;
  free(batch);
  free(idx);
  if (rc) return rc;
  out->ctx = L;
  out->windows = count;
  out->tokens = predicted;
  out->nll_sum = nll;
  out->nll = nll / (double)predicted;
  out->ppl = exp(out->nll);
  out->seconds = secs;
  out->tokens_per_s = secs > 0 ? (double)count * L / secs : 0;
  return AP_MODEL_OK;
}

int ap_perplexity_file(ap_model *m, const ap_tokenizer *tok, const char *path, const ap_ppl_opts *opts,
                       ap_ppl_result *out, char *err, size_t errlen) {
  ap_textdata td;
  if (ap_textdata_load(path, tok, &td, err, errlen)) return AP_MODEL_ELOAD;
  int rc = ap_perplexity(m, &td, opts, out, err, errlen);
  ap_textdata_free(&td);
  return rc;
}
