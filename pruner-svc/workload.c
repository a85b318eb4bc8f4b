#include "workload.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include "ap_gpu_mem.h"
#include "bitmap.h"
#include "log.h"
#include "mask.h"
#include "prune_error.h"
#include "rpc_server.h"
#include "stats.h"
#ifdef APK_HAVE_CUDA
#include "ap_cuda.h"
#endif

static int stopped(const engine_stop *s) { return s && s->fn && s->fn(s->arg); }

static int model_status(int rc) {
  switch (rc) {
  case AP_MODEL_ENOMEM: return AP_RESOURCE_EXHAUSTED;
  case AP_MODEL_EDEVICE: return AP_FAILED_PRECONDITION;
  case AP_MODEL_ELOAD:
  case AP_MODEL_EUNSUP:
  case AP_MODEL_EARG: return AP_INVALID_ARGUMENT;
  default: return AP_INTERNAL;
  }
}

static int match(pcre2_code *re, const char *s) {
  pcre2_match_data *md = pcre2_match_data_create_from_pattern(re, NULL);
  if (!md) return 0;
  int rc = pcre2_match(re, (PCRE2_SPTR)s, PCRE2_ZERO_TERMINATED, 0, 0, md, NULL);
  pcre2_match_data_free(md);
  return rc >= 0;
}

static pcre2_code *compile(const char *pat, const char *what, char *err, size_t errlen) {
  int ec;
  PCRE2_SIZE off;
  pcre2_code *re = pcre2_compile((PCRE2_SPTR)pat, PCRE2_ZERO_TERMINATED, PCRE2_UTF, &ec, &off, NULL);
  if (!re) snprintf(err, errlen, "%s pattern is not a valid regular expression", what);
  return re;
}

static uint64_t gpu_mem_limit; /* bytes, 0 = the device's own memory */

void wl_set_gpu_mem_limit(uint64_t bytes) {
  gpu_mem_limit = bytes;
#ifdef APK_HAVE_CUDA
  apk_cuda_set_mem_limit(bytes);
#endif
}

/* Whether the model of `dir` fits in GPU memory with every weight resident
 * (the only mode the model runs on CUDA; streaming blocks from host memory
 * is planned by ap_gpu_mem.h but not wired into model.c). Counts the weights
 * and one window of the default length with the backward pass. Returns
 * AP_OK, or AP_RESOURCE_EXHAUSTED with the figures in err. A config that
 * does not parse passes: the load reports it properly. */
#ifdef APK_HAVE_CUDA
static int cuda_fits(const char *dir, char *err, size_t errlen) {
  ap_hf_config c;
  char cerr[256];
  if (ap_hf_config_load(dir, &c, cerr, sizeof cerr) != 0) return AP_OK;
  uint64_t limit = gpu_mem_limit;
  const char *what = "--gpu-mem-limit";
  if (!limit) {
    size_t total = 0, freeb = 0;
    if (apk_cuda_device_info(0, NULL, 0, &total, &freeb) != APK_OK) return AP_OK;
    limit = freeb;
    what = "free GPU memory";
  }
  apk_mem_model mm = {c.hidden_size, c.intermediate_size, c.num_hidden_layers, c.num_attention_heads,
                      c.num_key_value_heads, c.head_dim, c.vocab_size,
                      c.has_torch_dtype ? (int)ap_dtype_size(c.torch_dtype) : 4, c.tie_word_embeddings, c.qk_norm};
  int T = c.max_position_embeddings < 2048 ? c.max_position_embeddings : 2048;
  apk_mem_estimate e;
  if (apk_mem_estimate_compute(&mm, 1, T, 1, 0, &e) != 0) return AP_OK;
  if (e.peak_resident <= limit) return AP_OK;
  snprintf(err, errlen,
           "the model needs %.2f GiB of GPU memory with its weights resident (windows of %d tokens), more than the "
           "%s of %.2f GiB; streaming weights from host memory (%.2f GiB by the planner) is not implemented in the "
           "model yet",
           e.peak_resident / 1073741824.0, T, what, limit / 1073741824.0, e.peak_streaming / 1073741824.0);
  return AP_RESOURCE_EXHAUSTED;
}
#endif

/* Loads the model on the device that `device` asks for: "cpu"; "cuda"
 * (refused with FAILED_PRECONDITION when no CUDA device answers); "auto" or
 * NULL: CUDA when a device answers and the model fits, else the CPU. */
static int load_on_device(workload *w, const char *dir, const char *device, char *err, size_t errlen) {
  int want_cuda = !device || !*device || !strcmp(device, "auto") || !strcmp(device, "cuda");
  int must_cuda = device && !strcmp(device, "cuda");
  if (want_cuda) {
    char why[400];
    int rc = AP_FAILED_PRECONDITION;
#ifdef APK_HAVE_CUDA
    if (apk_cuda_device_count() == 0) snprintf(why, sizeof why, "no CUDA device (or no driver) on this machine");
    else rc = cuda_fits(dir, why, sizeof why);
#else
    snprintf(why, sizeof why, "this build of pruner-svc has no CUDA backend");
#endif
    if (rc == AP_OK) {
      ap_model_opts opts = {.backend = APK_CUDA, .device = 0};
      int mrc = ap_model_load(dir, &opts, &w->model, why, sizeof why);
      if (mrc == AP_MODEL_OK) {
        w->device = "cuda";
        if (!must_cuda) AP_INFO("device auto: a CUDA device answered; running %s on cuda", dir);
        return AP_OK;
      }
      rc = model_status(mrc);
      /* a model the loader refuses is refused on the CPU too: no fallback */
      if (mrc != AP_MODEL_EDEVICE && mrc != AP_MODEL_ENOMEM) {
        snprintf(err, errlen, "%s", why);
        return rc;
      }
    }
    if (must_cuda) {
      snprintf(err, errlen, "device cuda: %s", why);
      return rc;
    }
    AP_INFO("device auto: %s; running %s on the CPU", why, dir);
  }
  w->device = "cpu";
  ap_model_opts opts = {.backend = APK_CPU, .device = 0};
  int rc = ap_model_load(dir, &opts, &w->model, err, errlen);
  return rc == AP_MODEL_OK ? AP_OK : model_status(rc);
}

static int adopt_zeros(workload *w, char *err, size_t errlen);

int wl_open(workload *w, const char *dir, const char *device, int threads, const char *include,
            const char *exclude, char *err, size_t errlen) {
  memset(w, 0, sizeof *w);
  w->threads = threads;
  if (device && *device && strcmp(device, "auto") && strcmp(device, "cpu") && strcmp(device, "cuda")) {
    snprintf(err, errlen, "device must be auto, cpu or cuda, got '%.40s'", device);
    return AP_INVALID_ARGUMENT;
  }
  int rc = load_on_device(w, dir, device, err, errlen);
  if (rc != AP_OK) return rc;
  char tpath[4096];
  snprintf(tpath, sizeof tpath, "%s/tokenizer.json", dir);
  char terr[400];
  if (ap_tokenizer_load(tpath, &w->tok, terr, sizeof terr) != 0) {
    snprintf(err, errlen, "tokenizer: %s", terr);
    wl_close(w);
    return AP_INVALID_ARGUMENT;
  }
  pcre2_code *inc = NULL, *exc = NULL;
  if (include && *include && !(inc = compile(include, "include", err, errlen))) goto bad;
  if (exclude && *exclude && !(exc = compile(exclude, "exclude", err, errlen))) goto bad;
  int n = ap_model_num_linears(w->model);
  w->layer_index = calloc((size_t)n, sizeof *w->layer_index);
  w->masks = calloc((size_t)n, sizeof *w->masks);
  if (!w->layer_index || !w->masks) goto nomem;
  for (int i = 0; i < n; i++) {
    const ap_linear *l = ap_model_linear(w->model, i);
    if (inc && !match(inc, l->name)) continue;
    if (exc && match(exc, l->name)) continue;
    int k = w->n_layers++;
    w->layer_index[k] = i;
    w->masks[k] = ap_bitmap_alloc((size_t)(l->rows * l->cols));
    if (!w->masks[k]) goto nomem;
  }
  pcre2_code_free(inc);
  pcre2_code_free(exc);
  if (w->n_layers == 0) {
    snprintf(err, errlen, "no eligible layer matches the include/exclude patterns");
    wl_close(w);
    return AP_INVALID_ARGUMENT;
  }
  if ((rc = adopt_zeros(w, err, errlen)) != AP_OK) {
    wl_close(w);
    return rc;
  }
  return AP_OK;
nomem:
  snprintf(err, errlen, "out of memory");
  pcre2_code_free(inc);
  pcre2_code_free(exc);
  wl_close(w);
  return AP_RESOURCE_EXHAUSTED;
bad:
  pcre2_code_free(inc);
  pcre2_code_free(exc);
  wl_close(w);
  return AP_INVALID_ARGUMENT;
}

void wl_close(workload *w) {
  free(w->dense_outlier);
  if (w->masks)
    for (int i = 0; i < w->n_layers; i++) free(w->masks[i]);
  free(w->masks);
  free(w->layer_index);
  ap_tokenizer_free(w->tok);
  ap_model_free(w->model);
  memset(w, 0, sizeof *w);
}

static uint64_t splitmix64(uint64_t *s) {
  uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

int wl_windows_from_file(workload *w, const char *path, int L, int want, int random, uint64_t seed,
                         wl_windows *out, char *err, size_t errlen) {
  memset(out, 0, sizeof *out);
  FILE *f = fopen(path, "rb");
  if (!f) {
    snprintf(err, errlen, "%s: %s", path, strerror(errno));
    return AP_INVALID_ARGUMENT;
  }
  char *text = NULL;
  size_t len = 0, cap = 0;
  for (;;) {
    if (len + 65536 > cap) {
      cap = cap ? cap * 2 : 1 << 20;
      char *p = realloc(text, cap);
      if (!p) {
        free(text);
        fclose(f);
        snprintf(err, errlen, "out of memory reading %s", path);
        return AP_RESOURCE_EXHAUSTED;
      }
      text = p;
    }
    size_t n = fread(text + len, 1, 65536, f);
    len += n;
    if (n < 65536) break;
  }
  fclose(f);
  int32_t *ids = NULL;
  size_t nids = 0;
  int rc = ap_tokenizer_encode(w->tok, text ? text : "", len, 1, &ids, &nids);
  free(text);
  if (rc != 0) {
    snprintf(err, errlen, "%s: the tokenizer refused the text", path);
    return AP_INVALID_ARGUMENT;
  }
  int total = (int)(nids / (size_t)L);
  if (total == 0) {
    free(ids);
    snprintf(err, errlen, "%s holds %zu tokens, fewer than one window of %d", path, nids, L);
    return AP_INVALID_ARGUMENT;
  }
  int n = want <= 0 || want > total ? total : want;
  out->tokens = malloc(sizeof(int32_t) * (size_t)n * (size_t)L);
  if (!out->tokens) {
    free(ids);
    snprintf(err, errlen, "out of memory for %d windows", n);
    return AP_RESOURCE_EXHAUSTED;
  }
  int *pick = malloc(sizeof(int) * (size_t)total);
  if (!pick) {
    free(ids);
    wl_windows_free(out);
    snprintf(err, errlen, "out of memory");
    return AP_RESOURCE_EXHAUSTED;
  }
  for (int i = 0; i < total; i++) pick[i] = i;
  if (random) { /* partial Fisher-Yates: the first n of a seeded permutation */
    uint64_t s = seed;
    for (int i = 0; i < n; i++) {
      int j = i + (int)(splitmix64(&s) % (uint64_t)(total - i));
      int t = pick[i];
      pick[i] = pick[j];
      pick[j] = t;
    }
  }
  for (int i = 0; i < n; i++)
    memcpy(out->tokens + (size_t)i * L, ids + (size_t)pick[i] * L, sizeof(int32_t) * (size_t)L);
  free(pick);
  free(ids);
  out->n = n;
  out->L = L;
  out->total = total;
  return AP_OK;
}

void wl_windows_free(wl_windows *win) {
  free(win->tokens);
  memset(win, 0, sizeof *win);
}

/* Windows per forward call: bounds activation memory and lets a stop request
   be noticed between batches. */
static int batch_windows(int L) {
  int b = 16384 / (L > 0 ? L : 1);
  return b < 1 ? 1 : b;
}

int wl_perplexity(workload *w, const wl_windows *win, const engine_stop *stop, double *ppl, double *nll,
                  int64_t *predicted, char *err, size_t errlen) {
  double sum = 0;
  int64_t cnt = 0;
  int B = batch_windows(win->L);
  for (int i = 0; i < win->n; i += B) {
    if (stopped(stop)) {
      snprintf(err, errlen, "stopped");
      return AP_CANCELLED;
    }
    int nb = win->n - i < B ? win->n - i : B;
    int rc = ap_model_forward(w->model, win->tokens + (size_t)i * win->L, nb, win->L, 0, &sum, &cnt, NULL);
    if (rc != AP_MODEL_OK) {
      snprintf(err, errlen, "forward: %s", ap_model_error(w->model));
      return model_status(rc);
    }
  }
  if (cnt == 0) {
    snprintf(err, errlen, "no predicted tokens");
    return AP_INVALID_ARGUMENT;
  }
  *nll = sum / (double)cnt;
  *ppl = exp(*nll);
  if (predicted) *predicted = cnt;
  return AP_OK;
}

static const ap_linear *lin(const workload *w, int i) { return ap_model_linear(w->model, w->layer_index[i]); }

uint64_t wl_layer_params(const workload *w, int i) {
  const ap_linear *l = lin(w, i);
  return (uint64_t)(l->rows * l->cols);
}

double wl_layer_sparsity(const workload *w, int i) {
  uint64_t n = wl_layer_params(w, i);
  return n ? (double)ap_bitmap_count(w->masks[i], n) / (double)n : 0;
}

double wl_global_sparsity(const workload *w) {
  double pruned = 0, total = 0;
  for (int i = 0; i < w->n_layers; i++) {
    uint64_t n = wl_layer_params(w, i);
    pruned += (double)ap_bitmap_count(w->masks[i], n);
    total += (double)n;
  }
  return total > 0 ? pruned / total : 0;
}

int wl_apply(workload *w, int i, char *err, size_t errlen) {
  ap_linear *l = ap_model_linear(w->model, w->layer_index[i]);
  memcpy(l->mask, w->masks[i], l->mask_bytes); /* little-endian: same bytes */
  int rc = ap_model_apply_mask(w->model, w->layer_index[i]);
  if (rc != AP_MODEL_OK) {
    snprintf(err, errlen, "apply mask %s: %s", l->name, ap_model_error(w->model));
    return model_status(rc);
  }
  return AP_OK;
}

int wl_collect_activations(workload *w, const wl_windows *calib, const engine_stop *stop, char *err, size_t errlen) {
  int rc = ap_model_stats_enable(w->model);
  if (rc != AP_MODEL_OK) {
    snprintf(err, errlen, "statistics: %s", ap_model_error(w->model));
    return model_status(rc);
  }
  double sum = 0;
  int64_t cnt = 0;
  int B = batch_windows(calib->L);
  for (int i = 0; i < calib->n; i += B) {
    if (stopped(stop)) {
      snprintf(err, errlen, "stopped");
      return AP_CANCELLED;
    }
    int nb = calib->n - i < B ? calib->n - i : B;
    rc = ap_model_forward(w->model, calib->tokens + (size_t)i * calib->L, nb, calib->L, 1, &sum, &cnt, NULL);
    if (rc != AP_MODEL_OK) {
      snprintf(err, errlen, "forward: %s", ap_model_error(w->model));
      return model_status(rc);
    }
  }
  return AP_OK;
}

/* Layer i's F32 working weights in host memory for the mask selection and
 * the statistics (pruner-svc/prune): the model's own buffer on the CPU, a
 * download into *owned (the caller frees it) on a device. NULL with err set
 * on failure. */
static const float *host_weights(workload *w, int i, float **owned, char *err, size_t errlen) {
  ap_linear *l = ap_model_linear(w->model, w->layer_index[i]);
  *owned = NULL;
  if (apk_ctx_backend(ap_model_ctx(w->model)) == APK_CPU) return (const float *)l->weight.data;
  float *buf = malloc((size_t)(l->rows * l->cols) * sizeof *buf);
  if (!buf) {
    snprintf(err, errlen, "out of memory for the host copy of %s", l->name);
    return NULL;
  }
  if (ap_model_weights_host(w->model, w->layer_index[i], buf) != AP_MODEL_OK) {
    snprintf(err, errlen, "weights of %s: %s", l->name, ap_model_error(w->model));
    free(buf);
    return NULL;
  }
  *owned = buf;
  return buf;
}

/* A folder that is already sparse (an earlier export, another tool's) has
   exact zeros: they are pruned weights, so they start in the masks. The
   profile then sees the layer's real sparsity (rho) and takes s over the
   surviving non-zero weights (DESIGN.md section 1 step 3), and the loop
   starts from the model's actual global sparsity. Dense models have none. */
static int adopt_zeros(workload *w, char *err, size_t errlen) {
  for (int i = 0; i < w->n_layers; i++) {
    float *owned;
    const float *wt = host_weights(w, i, &owned, err, errlen);
    if (!wt) return AP_RESOURCE_EXHAUSTED;
    uint64_t n = wl_layer_params(w, i), zeros = 0;
    for (uint64_t k = 0; k < n; k++)
      if (wt[k] == 0.0f) {
        w->masks[i][k >> 6] |= UINT64_C(1) << (k & 63);
        zeros++;
      }
    free(owned);
    if (zeros) {
      int rc = wl_apply(w, i, err, errlen);
      if (rc != AP_OK) return rc;
    }
  }
  return AP_OK;
}

static int prune_status(int rc, const char *name, char *err, size_t errlen) {
  snprintf(err, errlen, "masking %s: %s", name, ap_prune_strerror(rc));
  return rc == AP_PRUNE_ENOMEM ? AP_RESOURCE_EXHAUSTED : AP_INTERNAL;
}

int wl_prune_layer(workload *w, int i, double target, unsigned nm_n, unsigned nm_m, int magnitude, char *err,
                   size_t errlen) {
  ap_linear *l = ap_model_linear(w->model, w->layer_index[i]);
  const double *xsq = magnitude ? NULL : (const double *)l->act_sumsq.data;
  if (!magnitude && !xsq) {
    snprintf(err, errlen, "masking %s: no activation statistics collected", l->name);
    return AP_INTERNAL;
  }
  float *owned;
  const float *wt = host_weights(w, i, &owned, err, errlen); /* pruned entries are 0 but masked out */
  if (!wt) return AP_RESOURCE_EXHAUSTED;
  int rc;
  if (nm_m)
    rc = ap_mask_nm(wt, xsq, (size_t)l->rows, (size_t)l->cols, nm_n, nm_m, w->masks[i], NULL);
  else if (magnitude)
    rc = ap_mask_magnitude(wt, (size_t)l->rows, (size_t)l->cols, target, w->masks[i], NULL);
  else
    rc = ap_mask_rows(wt, xsq, (size_t)l->rows, (size_t)l->cols, target, w->masks[i], NULL);
  free(owned);
  if (rc != AP_PRUNE_OK) return prune_status(rc, l->name, err, errlen);
  return wl_apply(w, i, err, errlen);
}

int wl_prune_sequential(workload *w, const wl_windows *calib, const double *targets, unsigned nm_n, unsigned nm_m,
                        const engine_stop *stop, char *err, size_t errlen) {
  ap_model *m = w->model;
  apk_ctx *ctx = ap_model_ctx(m);
  /* Blocks after the last one that grows need no pass: their inputs do not
     matter to any mask chosen here (the agent loop grows one block at a time). */
  int last = -1;
  for (int i = 0; i < w->n_layers; i++)
    if (targets[i] > wl_layer_sparsity(w, i) + 1e-12 && lin(w, i)->block > last) last = lin(w, i)->block;
  if (last < 0) return AP_OK;
  apk_tensor hidden = {0}, probe = {0};
  int rc = ap_model_stats_enable(m);
  if (rc != AP_MODEL_OK) goto model_fail;
  rc = ap_model_embed(m, calib->tokens, calib->n, calib->L, &hidden);
  if (rc != AP_MODEL_OK) goto model_fail;
  if (apk_tensor_alloc(ctx, &probe, APK_F32, hidden.ndim, hidden.shape) != APK_OK) {
    snprintf(err, errlen, "out of memory for the calibration activations");
    apk_tensor_free(ctx, &hidden);
    return AP_RESOURCE_EXHAUSTED;
  }
  int status = AP_OK;
  for (int b = 0; b <= last && status == AP_OK; b++) {
    if (stopped(stop)) {
      snprintf(err, errlen, "stopped");
      status = AP_CANCELLED;
      break;
    }
    int grows = 0;
    for (int i = 0; i < w->n_layers; i++)
      if (lin(w, i)->block == b && targets[i] > wl_layer_sparsity(w, i) + 1e-12) grows = 1;
    if (grows) {
      /* Statistics of block b as the Wanda repository sees them: inputs from
         the pruned blocks before it, block b itself unpruned. Measuring a
         partly pruned block instead compounds: a gate/up row pruned earlier
         shrinks its down_proj input channel, which then loses its weights
         too (stories260K at 70 %: dev ppl 148 against 105 for the same
         targets). The probe's outputs are thrown away. */
      for (int i = 0; i < w->n_layers && status == AP_OK; i++)
        if (lin(w, i)->block == b && wl_layer_sparsity(w, i) > 0 &&
            ap_model_restore(m, w->layer_index[i]) != AP_MODEL_OK) {
          snprintf(err, errlen, "restore %s: %s", lin(w, i)->name, ap_model_error(m));
          status = AP_INTERNAL;
        }
      if (status == AP_OK && (apk_copy(ctx, &probe, &hidden) != APK_OK ||
                              (rc = ap_model_block_forward(m, b, &probe, calib->L, 1)) != AP_MODEL_OK)) {
        snprintf(err, errlen, "block %d: %s", b, ap_model_error(m));
        status = AP_INTERNAL;
      }
      for (int i = 0; i < w->n_layers && status == AP_OK; i++) {
        if (lin(w, i)->block != b) continue;
        if (targets[i] > wl_layer_sparsity(w, i) + 1e-12)
          status = wl_prune_layer(w, i, targets[i], nm_n, nm_m, 0, err, errlen);
        else if (wl_layer_sparsity(w, i) > 0)
          status = wl_apply(w, i, err, errlen);
      }
    }
    if (status == AP_OK && b < last && (rc = ap_model_block_forward(m, b, &hidden, calib->L, 0)) != AP_MODEL_OK) {
      snprintf(err, errlen, "block %d: %s", b, ap_model_error(m));
      status = AP_INTERNAL;
    }
  }
  apk_tensor_free(ctx, &probe);
  apk_tensor_free(ctx, &hidden);
  return status;
model_fail:
  snprintf(err, errlen, "sequential pass: %s", ap_model_error(m));
  return model_status(rc);
}

int wl_owl_outliers(workload *w, double m, double *frac, char *err, size_t errlen) {
  int nblocks = ap_model_config(w->model)->num_hidden_layers;
  ap_layer_ref *refs = calloc((size_t)w->n_layers, sizeof *refs);
  float **owned = calloc((size_t)w->n_layers, sizeof *owned);
  if (!refs || !owned) {
    free(refs);
    free(owned);
    snprintf(err, errlen, "out of memory");
    return AP_RESOURCE_EXHAUSTED;
  }
  int status = AP_OK;
  for (int b = 0; b < nblocks && status == AP_OK; b++) {
    size_t n = 0;
    for (int i = 0; i < w->n_layers && status == AP_OK; i++) {
      const ap_linear *l = lin(w, i);
      if (l->block != b) continue;
      const float *wt = host_weights(w, i, &owned[n], err, errlen);
      if (!wt) {
        status = AP_RESOURCE_EXHAUSTED;
        break;
      }
      refs[n++] = (ap_layer_ref){wt, (const double *)l->act_sumsq.data, w->masks[i], (size_t)l->rows,
                                 (size_t)l->cols};
    }
    frac[b] = 0;
    if (n > 0 && status == AP_OK) {
      int rc = ap_stats_outlier_fraction(refs, n, m, &frac[b]);
      if (rc != AP_PRUNE_OK) status = prune_status(rc, "OWL outliers", err, errlen);
    }
    for (size_t k = 0; k < n; k++) {
      free(owned[k]);
      owned[k] = NULL;
    }
  }
  free(owned);
  free(refs);
  return status;
}

static Agentprune__V1__LayerKind proto_kind(ap_linear_kind k) {
  return (Agentprune__V1__LayerKind)(k + 1); /* q=1 ... down=7 in common.proto */
}

int wl_measure_dense_outliers(workload *w, const wl_windows *calib, const engine_stop *stop, char *err,
                              size_t errlen) {
  int status = wl_collect_activations(w, calib, stop, err, errlen);
  if (status != AP_OK) return status;
  int nblocks = ap_model_config(w->model)->num_hidden_layers;
  double *frac = calloc((size_t)nblocks, sizeof(double));
  free(w->dense_outlier);
  w->dense_outlier = calloc((size_t)w->n_layers, sizeof(double));
  if (!frac || !w->dense_outlier) {
    free(frac);
    snprintf(err, errlen, "out of memory");
    return AP_RESOURCE_EXHAUSTED;
  }
  /* OWL pools the scores of all of a block's layers (luuyin/OWL
     check_outlier_mean), so every layer reports its block's share. */
  status = wl_owl_outliers(w, 5.0, frac, err, errlen);
  for (int i = 0; i < w->n_layers && status == AP_OK; i++) w->dense_outlier[i] = frac[lin(w, i)->block];
  free(frac);
  return status;
}

int wl_profile(workload *w, const wl_windows *calib, int grad_windows, const engine_stop *stop,
               Agentprune__V1__ProfileTable *table, char *err, size_t errlen) {
  int n = w->n_layers;
  int status = wl_collect_activations(w, calib, stop, err, errlen);
  if (status != AP_OK) return status;
  int rc = ap_model_grad_enable(w->model, 0);
  if (rc != AP_MODEL_OK) {
    snprintf(err, errlen, "gradients: %s", ap_model_error(w->model));
    return model_status(rc);
  }
  int M = grad_windows < calib->n ? grad_windows : calib->n;
  for (int i = 0; i < M; i++) {
    if (stopped(stop)) {
      snprintf(err, errlen, "stopped");
      return AP_CANCELLED;
    }
    rc = ap_model_backward_window(w->model, calib->tokens + (size_t)i * calib->L, calib->L, NULL);
    if (rc != AP_MODEL_OK) {
      snprintf(err, errlen, "backward: %s", ap_model_error(w->model));
      return model_status(rc);
    }
  }
  double *s = calloc((size_t)n * 4, sizeof(double));
  Agentprune__V1__LayerProfile **rows = calloc((size_t)n, sizeof *rows);
  if (!s || !rows) {
    free(s);
    free(rows);
    snprintf(err, errlen, "out of memory");
    return AP_RESOURCE_EXHAUSTED;
  }
  double *g = s + n, *zs = s + 2 * n, *zg = s + 3 * n;
  for (int i = 0; i < n && status == AP_OK; i++) {
    const ap_linear *l = lin(w, i);
    uint64_t params = wl_layer_params(w, i), pruned = ap_bitmap_count(w->masks[i], params);
    if (pruned < params) {
      float *owned;
      const float *wt = host_weights(w, i, &owned, err, errlen);
      if (!wt) {
        status = AP_RESOURCE_EXHAUSTED;
        break;
      }
      ap_layer_ref ref = {wt, (const double *)l->act_sumsq.data, w->masks[i], (size_t)l->rows, (size_t)l->cols};
      rc = ap_stats_score_percentile(&ref, 10.0, &s[i]);
      free(owned);
      if (rc != AP_PRUNE_OK) status = prune_status(rc, l->name, err, errlen);
      /* grad_abs_kept sums |dL_i/dW| over kept weights and windows. */
      g[i] = l->grad_windows > 0 ? l->grad_abs_kept / ((double)l->grad_windows * (double)(params - pruned)) : 0;
    }
  }
  if (status == AP_OK && (ap_stats_zscores(s, (size_t)n, AP_STATS_Z_EPS, zs) != AP_PRUNE_OK ||
                          ap_stats_zscores(g, (size_t)n, AP_STATS_Z_EPS, zg) != AP_PRUNE_OK)) {
    snprintf(err, errlen, "z-scores: a statistic is not a number");
    status = AP_INTERNAL;
  }
  for (int i = 0; i < n && status == AP_OK; i++) {
    const ap_linear *l = lin(w, i);
    Agentprune__V1__LayerProfile *r = malloc(sizeof *r);
    char *name = strdup(l->name);
    if (!r || !name) {
      free(r);
      free(name);
      snprintf(err, errlen, "out of memory");
      status = AP_RESOURCE_EXHAUSTED;
      break;
    }
    agentprune__v1__layer_profile__init(r);
    r->name = name;
    r->kind = proto_kind(l->kind);
    r->block = (uint32_t)l->block;
    r->params = wl_layer_params(w, i);
    r->s = s[i];
    r->g = g[i];
    r->z_s = zs[i];
    r->z_g = zg[i];
    r->rho = wl_layer_sparsity(w, i);
    r->outlier = w->dense_outlier ? w->dense_outlier[i] : 0;
    r->in_features = (uint32_t)l->cols;
    rows[i] = r;
  }
  free(s);
  table->n_layers = (size_t)n;
  table->layers = rows;
  if (status != AP_OK) wl_table_clear(table);
  return status;
}

void wl_table_clear(Agentprune__V1__ProfileTable *table) {
  for (size_t i = 0; i < table->n_layers; i++) {
    if (!table->layers[i]) continue;
    free(table->layers[i]->name);
    free(table->layers[i]->dppl_history);
    free(table->layers[i]);
  }
  free(table->layers);
  table->layers = NULL;
  table->n_layers = 0;
}
