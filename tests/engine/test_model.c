/*
 * test_model.c - the transformer's pruning hooks, errors and window
 * selection on the shared stories260K model (numbers against torch live in
 * tests/golden): masks apply and restore exactly, the gradient sum over kept
 * weights equals the per-weight accumulator over the same weights, shared
 * inputs give identical column statistics, bad input is refused with a
 * message, sliding windows shorter than the context are refused, and the
 * window selection is deterministic and documented.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dtype.h"
#include "hf_config.h"
#include "model.h"
#include "perplexity.h"
#include "test.h"
#include "textdata.h"

static const char *data_dir;

static void make_tokens(int32_t *t, int n, int vocab, unsigned seed) {
  for (int i = 0; i < n; i++) {
    seed = seed * 1103515245u + 12345u;
    t[i] = 3 + (int32_t)((seed >> 8) % (unsigned)(vocab - 3));
  }
  t[0] = 1;
}

static double max_abs_diff(const float *a, const float *b, size_t n) {
  double d = 0;
  for (size_t i = 0; i < n; i++) d = fmax(d, fabs((double)a[i] - b[i]));
  return d;
}

static void test_load_errors(void) {
  ap_model *m = NULL;
  char err[256] = "";
  CHECK_EQ_INT(ap_model_load("/nonexistent/model", NULL, &m, err, sizeof err), AP_MODEL_ELOAD);
  CHECK(m == NULL && strlen(err) > 0);
  ap_model_opts cuda = {APK_CUDA, 0};
  char path[1024];
  snprintf(path, sizeof path, "%s/stories260K-hf-derived", data_dir);
  /* CUDA: loads where a device answers, else a clear AP_MODEL_EDEVICE */
  apk_ctx *probe = NULL;
  int have_gpu = apk_ctx_create(APK_CUDA, 0, &probe) == APK_OK;
  apk_ctx_destroy(probe);
  err[0] = 0;
  int rc = ap_model_load(path, &cuda, &m, err, sizeof err);
  if (have_gpu) {
    CHECK_EQ_INT(rc, AP_MODEL_OK);
    ap_model_free(m);
  } else {
    CHECK_EQ_INT(rc, AP_MODEL_EDEVICE);
    CHECK(m == NULL && strstr(err, "CUDA") != NULL);
  }
}

static void test_stories(void) {
  char path[1024], err[256];
  snprintf(path, sizeof path, "%s/stories260K-hf-derived", data_dir);
  ap_model *m = NULL;
  if (ap_model_load(path, NULL, &m, err, sizeof err)) {
    CHECKF(0, "load: %s", err);
    return;
  }
  const ap_hf_config *c = ap_model_config(m);
  CHECK_EQ_INT(ap_model_num_linears(m), 5 * 7);
  CHECK_EQ_INT(ap_model_default_ctx(m), 512);
  int idx = ap_model_find_linear(m, "model.layers.3.mlp.down_proj");
  CHECK_EQ_INT(idx, 3 * 7 + 6);
  ap_linear *down = ap_model_linear(m, idx);
  CHECK(down && down->kind == AP_LIN_DOWN && down->block == 3 && down->rows == 64 && down->cols == 172);
  CHECK_STR(ap_linear_kind_name(AP_LIN_GATE), "gate");
  CHECK(ap_model_find_linear(m, "model.embed_tokens") == -1 && ap_model_linear(m, 35) == NULL);

  enum { T = 64 };
  int32_t tok[2 * T];
  make_tokens(tok, 2 * T, c->vocab_size, 7);
  size_t nlog = (size_t)T * c->vocab_size;
  float *base = malloc(nlog * 4), *cur = malloc(nlog * 4);
  CHECK_EQ_INT(ap_model_logits(m, tok, T, base), AP_MODEL_OK);

  /* mask every other weight of block 0's q_proj */
  ap_linear *q = ap_model_linear(m, 0);
  for (int64_t i = 0; i < q->rows * q->cols; i += 2) q->mask[i >> 6] |= (uint64_t)1 << (i & 63);
  CHECK_EQ_INT(ap_model_apply_mask(m, 0), AP_MODEL_OK);
  const float *w = q->weight.data;
  int ok = 1;
  for (int64_t i = 0; i < q->rows * q->cols; i++) {
    float o = ap_dtype_load_f32(q->orig_dtype, (const char *)q->orig + i * 4);
    ok &= w[i] == (i % 2 == 0 ? 0.0f : o);
  }
  CHECK(ok);
  CHECK_EQ_INT(ap_model_logits(m, tok, T, cur), AP_MODEL_OK);
  CHECK(max_abs_diff(cur, base, nlog) > 1e-2);

  /* gradients: sum over kept weights == per-weight accumulator over kept weights */
  CHECK_EQ_INT(ap_model_grad_enable(m, 1), AP_MODEL_OK);
  double loss = 0;
  CHECK_EQ_INT(ap_model_backward_window(m, tok, T, &loss), AP_MODEL_OK);
  CHECK_EQ_INT(ap_model_backward_window(m, tok + T, T, NULL), AP_MODEL_OK);
  CHECK(isfinite(loss) && loss > 0);
  double kept = 0, all = 0;
  const float *ga = q->grad_abs.data;
  for (int64_t i = 0; i < q->rows * q->cols; i++) {
    all += ga[i];
    if (i % 2) kept += ga[i];
  }
  CHECK_NEAR(q->grad_abs_kept / kept, 1.0, 1e-5);
  CHECK(all > kept * 1.5);
  CHECK_EQ_INT(q->grad_windows, 2);
  ap_linear *k1 = ap_model_linear(m, 1);
  double all_k = 0;
  for (int64_t i = 0; i < k1->rows * k1->cols; i++) all_k += ((const float *)k1->grad_abs.data)[i];
  CHECK_NEAR(k1->grad_abs_kept / all_k, 1.0, 1e-5);
  CHECK_EQ_INT(ap_model_grad_enable(m, 0), AP_MODEL_OK);
  CHECK(q->grad_abs.data == NULL && q->grad_abs_kept == 0 && q->grad_windows == 0);

  /* restore: logits back to the dense ones */
  CHECK_EQ_INT(ap_model_restore(m, 0), AP_MODEL_OK);
  CHECK_EQ_INT(ap_model_logits(m, tok, T, cur), AP_MODEL_OK);
  CHECK_NEAR(max_abs_diff(cur, base, nlog), 0, 1e-6);

  /* statistics: q/k/v share their input, gate/up too; token counts */
  CHECK_EQ_INT(ap_model_stats_enable(m), AP_MODEL_OK);
  double nll = 0;
  int64_t pred = 0;
  CHECK_EQ_INT(ap_model_forward(m, tok, 2, T, 1, &nll, &pred, NULL), AP_MODEL_OK);
  CHECK_EQ_INT(pred, 2 * (T - 1));
  ap_linear *l = ap_model_linear(m, 2 * 7);
  CHECK(memcmp(l[0].act_sumsq.data, l[1].act_sumsq.data, 64 * 8) == 0);
  CHECK(memcmp(l[0].act_sumsq.data, l[2].act_sumsq.data, 64 * 8) == 0);
  CHECK(memcmp(l[4].act_sumsq.data, l[5].act_sumsq.data, 64 * 8) == 0);
  CHECK_EQ_INT(l[6].act_tokens, 2 * T);
  /* statistics off: nothing accumulates */
  double before = ((double *)l[6].act_sumsq.data)[5];
  CHECK_EQ_INT(ap_model_forward(m, tok, 1, T, 0, &nll, &pred, NULL), AP_MODEL_OK);
  CHECK(((double *)l[6].act_sumsq.data)[5] == before && l[6].act_tokens == 2 * T);

  /* bad input */
  int32_t bad[T];
  memcpy(bad, tok, sizeof bad);
  bad[10] = c->vocab_size;
  CHECK_EQ_INT(ap_model_forward(m, bad, 1, T, 0, &nll, &pred, NULL), AP_MODEL_EARG);
  CHECK(strstr(ap_model_error(m), "vocabulary") != NULL);
  CHECK_EQ_INT(ap_model_forward(m, tok, 1, 1, 0, &nll, &pred, NULL), AP_MODEL_EARG);
  int32_t *longw = calloc(1024, sizeof *longw);
  CHECK_EQ_INT(ap_model_forward(m, longw, 1, 1024, 0, &nll, &pred, NULL), AP_MODEL_EARG);
  CHECK(strstr(ap_model_error(m), "max_position_embeddings") != NULL);
  CHECK_EQ_INT(ap_model_block_forward(m, 5, NULL, T, 0), AP_MODEL_EARG);
  free(longw);

  /* perplexity with a random selection equals the forward over those windows */
  ap_textdata td;
  int32_t *many = malloc(sizeof(int32_t) * 10 * T);
  make_tokens(many, 10 * T, c->vocab_size, 99);
  CHECK_EQ_INT(ap_textdata_from_tokens(many, 10 * T, &td), AP_TEXT_OK);
  ap_ppl_opts po = {.ctx = T, .max_windows = 3, .sample = AP_SAMPLE_RANDOM, .seed = 42};
  ap_ppl_result pr;
  CHECK_EQ_INT(ap_perplexity(m, &td, &po, &pr, err, sizeof err), AP_MODEL_OK);
  int64_t *sel = NULL, cnt = 0;
  CHECK_EQ_INT(ap_textdata_select(&td, T, 3, AP_SAMPLE_RANDOM, 42, &sel, &cnt, err, sizeof err), AP_TEXT_OK);
  double s2 = 0;
  int64_t p2 = 0;
  for (int64_t i = 0; i < cnt; i++)
    CHECK_EQ_INT(ap_model_forward(m, ap_textdata_window(&td, T, sel[i]), 1, T, 0, &s2, &p2, NULL), AP_MODEL_OK);
  CHECK_EQ_INT(pr.windows, 3);
  CHECK_EQ_INT(pr.tokens, 3 * (T - 1));
  CHECK_NEAR(pr.ppl, exp(s2 / (double)p2), 1e-9 * pr.ppl);
  po.max_windows = 20;
  CHECK_EQ_INT(ap_perplexity(m, &td, &po, &pr, err, sizeof err), AP_MODEL_EARG);
  CHECK(strlen(err) > 0);
  CHECK_EQ_INT(ap_perplexity_file(m, NULL, "/nonexistent.txt", NULL, &pr, err, sizeof err), AP_MODEL_ELOAD);
  free(sel);
  free(many);
  ap_textdata_free(&td);
  free(base);
  free(cur);
  ap_model_free(m);
}

static void test_textdata(void) {
  int32_t ids[1005];
  for (int i = 0; i < 1005; i++) ids[i] = i;
  ap_textdata td;
  CHECK_EQ_INT(ap_textdata_from_tokens(ids, 1005, &td), AP_TEXT_OK);
  CHECK_EQ_INT(ap_textdata_window_count(&td, 100), 10);
  CHECK_EQ_INT(ap_textdata_window(&td, 100, 3)[0], 300);
  int64_t *sel = NULL, n = 0;
  char err[200];
  CHECK_EQ_INT(ap_textdata_select(&td, 100, 3, AP_SAMPLE_FIRST, 0, &sel, &n, err, sizeof err), AP_TEXT_OK);
  CHECK(n == 3 && sel[0] == 0 && sel[1] == 1 && sel[2] == 2);
  free(sel);
  CHECK_EQ_INT(ap_textdata_select(&td, 100, 0, AP_SAMPLE_RANDOM, 5, &sel, &n, err, sizeof err), AP_TEXT_OK);
  CHECK(n == 10 && sel[9] == 9); /* all windows: in order, whatever the mode */
  free(sel);
  CHECK_EQ_INT(ap_textdata_select(&td, 100, 50, AP_SAMPLE_FIRST, 0, &sel, &n, err, sizeof err), AP_TEXT_OK);
  CHECK_EQ_INT(n, 10);
  free(sel);
  int64_t *a = NULL, *b = NULL, *c = NULL, na, nb, nc;
  CHECK_EQ_INT(ap_textdata_select(&td, 100, 5, AP_SAMPLE_RANDOM, 7, &a, &na, err, sizeof err), AP_TEXT_OK);
  CHECK_EQ_INT(ap_textdata_select(&td, 100, 5, AP_SAMPLE_RANDOM, 7, &b, &nb, err, sizeof err), AP_TEXT_OK);
  CHECK_EQ_INT(ap_textdata_select(&td, 100, 5, AP_SAMPLE_RANDOM, 8, &c, &nc, err, sizeof err), AP_TEXT_OK);
  CHECK(na == 5 && nb == 5 && memcmp(a, b, 5 * sizeof *a) == 0 && memcmp(a, c, 5 * sizeof *a) != 0);
  int distinct = 1;
  for (int i = 0; i < 5; i++)
    for (int j = 0; j < i; j++) distinct &= a[i] != a[j] && a[i] >= 0 && a[i] < 10;
  CHECK(distinct);
  /* the documented generator: splitmix64(seed 7), partial Fisher-Yates */
  {
    uint64_t s = 7;
    int64_t idx[10];
    for (int i = 0; i < 10; i++) idx[i] = i;
    for (int j = 0; j < 5; j++) {
      uint64_t z = (s += 0x9e3779b97f4a7c15ull);
      z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
      z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
      z ^= z >> 31;
      int64_t r = j + (int64_t)(z % (uint64_t)(10 - j)), t = idx[j];
      idx[j] = idx[r], idx[r] = t;
    }
    CHECK(memcmp(idx, a, 5 * sizeof *a) == 0);
  }
  free(a), free(b), free(c);
  CHECK_EQ_INT(ap_textdata_select(&td, 100, 11, AP_SAMPLE_RANDOM, 1, &sel, &n, err, sizeof err), AP_TEXT_EARG);
  CHECK_EQ_INT(ap_textdata_select(&td, 2000, 1, AP_SAMPLE_FIRST, 1, &sel, &n, err, sizeof err), AP_TEXT_EEMPTY);
  CHECK(strstr(err, "too short") != NULL);
  ap_textdata_free(&td);
}

static void test_sliding_window(void) {
  const char *json =
      "{\"architectures\":[\"MistralForCausalLM\"],\"model_type\":\"mistral\",\"hidden_size\":32,"
      "\"intermediate_size\":48,\"num_hidden_layers\":2,\"num_attention_heads\":4,\"num_key_value_heads\":2,"
      "\"vocab_size\":64,\"max_position_embeddings\":256,\"sliding_window\":64,\"hidden_act\":\"silu\"}";
  ap_hf_config cfg;
  char err[256];
  if (ap_hf_config_parse(json, strlen(json), &cfg, err, sizeof err)) {
    CHECKF(0, "config: %s", err);
    return;
  }
  ap_model *m = NULL;
  CHECK_EQ_INT(ap_model_create_random(&cfg, 3, NULL, &m, err, sizeof err), AP_MODEL_OK);
  if (!m) return;
  int32_t tok[128];
  make_tokens(tok, 128, 64, 1);
  double nll = 0;
  int64_t pred = 0;
  CHECK_EQ_INT(ap_model_forward(m, tok, 1, 128, 0, &nll, &pred, NULL), AP_MODEL_EUNSUP);
  CHECK(strstr(ap_model_error(m), "sliding") != NULL);
  CHECK_EQ_INT(ap_model_forward(m, tok, 2, 64, 0, &nll, &pred, NULL), AP_MODEL_OK);
  CHECK(isfinite(nll) && pred == 126);
  /* backward through the random model (GQA) runs and counts */
  CHECK_EQ_INT(ap_model_grad_enable(m, 0), AP_MODEL_OK);
  double loss = 0;
  CHECK_EQ_INT(ap_model_backward_window(m, tok, 64, &loss), AP_MODEL_OK);
  CHECK(isfinite(loss) && ap_model_linear(m, 13)->grad_windows == 1 && ap_model_linear(m, 13)->grad_abs_kept > 0);
  ap_model_free(m);
}

int main(int argc, char **argv) {
  data_dir = argc > 1 ? argv[1] : "../shared/data";
  test_load_errors();
  test_textdata();
  test_sliding_window();
  test_stories();
  TEST_DONE();
}
