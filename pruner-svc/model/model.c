/*
 * model.c - the transformer on the kernels backend. See model.h.
 *
 * One window runs at a time through a set of activation buffers sized for
 * T rows; the ops themselves use both cores. For the backward pass the input
 * of every block is kept ("checkpoint"), and each block is recomputed from it
 * right before its backward step, so memory is layers*T*hidden floats plus
 * one block's activations. Weight gradients are folded into the per-layer
 * accumulators as soon as they exist, one layer at a time.
 */
#include "model.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "safetensors.h"

typedef struct block_weights {
  apk_tensor ln1, ln2, q_norm, k_norm;
} block_weights;

/* Activations of one window (T rows) and the buffers of the backward pass. */
typedef struct acts {
  int T;
  apk_tensor tokens, targets, hid, xc;
  apk_tensor xn1, rstd1, q, k, v, qn, kn, rstdq, rstdk, qr, kr, att, lse, attp, h, xn2, rstd2, gate, up, act, mlp;
  apk_tensor hn, hrstd, logits, nll;
  int logit_rows;
  /* backward */
  int bwd;
  apk_tensor dres, dxn, dqr, dkr, dq, dk, dv, datt, dgate, dup, dact, dw, ckpt;
} acts;

struct ap_model {
  ap_hf_config cfg;
  apk_ctx *ctx;
  ap_st *st;
  ap_linear *lin;
  int n_lin;
  block_weights *blk;
  apk_tensor embed, lm_head, final_norm;
  void **owned_orig; /* random models own their originals */
  apk_tensor rope_cos, rope_sin;
  int rope_T;
  acts a;
  int64_t max_weight;
  /* Device backends only (NULL on the CPU), one per eligible layer: the
   * originals in the checkpoint dtype (mask apply reads them on the device),
   * the mask as last applied (U8, mask_bytes), and the F64 column sums that
   * collect_stats accumulates; act_sumsq is their host mirror. */
  int on_device;
  apk_tensor *orig_dev, *mask_dev, *sumsq_dev;
  ap_grad_hook grad_hook;
  void *grad_hook_user;
  char err[320];
};

static const char *kind_names[AP_LIN_KINDS] = {"q", "k", "v", "o", "gate", "up", "down"};
static const char *kind_paths[AP_LIN_KINDS] = {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                                               "self_attn.o_proj", "mlp.gate_proj",    "mlp.up_proj",
                                               "mlp.down_proj"};

const char *ap_linear_kind_name(ap_linear_kind k) { return (unsigned)k < AP_LIN_KINDS ? kind_names[k] : "?"; }

static int fail(ap_model *m, int rc, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(m->err, sizeof m->err, fmt, ap);
  va_end(ap);
  return rc;
}

const char *ap_model_error(const ap_model *m) { return m ? m->err : "no model"; }

/* Runs a kernel op; on failure records the kernel's message and returns. */
#define K(call)                                                                           \
  do {                                                                                    \
    int krc_ = (call);                                                                    \
    if (krc_) return fail(m, AP_MODEL_EKERNEL, "%s: %s", #call, apk_last_error());        \
  } while (0)

static apk_tensor shaped(const apk_tensor *t, int nd, int64_t d0, int64_t d1, int64_t d2, int64_t d3) {
  int64_t s[4] = {d0, d1, d2, d3};
  return apk_reshape(t, nd, s);
}

/* ---- accessors ----------------------------------------------------------------- */

const ap_hf_config *ap_model_config(const ap_model *m) { return &m->cfg; }
apk_ctx *ap_model_ctx(ap_model *m) { return m->ctx; }
int ap_model_num_linears(const ap_model *m) { return m->n_lin; }
ap_linear *ap_model_linear(ap_model *m, int index) {
  return index >= 0 && index < m->n_lin ? &m->lin[index] : NULL;
}
int ap_model_default_ctx(const ap_model *m) {
  return m->cfg.max_position_embeddings < 2048 ? m->cfg.max_position_embeddings : 2048;
}
int ap_model_find_linear(const ap_model *m, const char *name) {
  for (int i = 0; i < m->n_lin; i++)
    if (strcmp(m->lin[i].name, name) == 0) return i;
  return -1;
}

/* ---- construction --------------------------------------------------------------- */

static void free_acts(ap_model *m) {
  apk_tensor *all[] = {&m->a.tokens, &m->a.targets, &m->a.hid, &m->a.xc, &m->a.xn1, &m->a.rstd1, &m->a.q,
                       &m->a.k, &m->a.v, &m->a.qn, &m->a.kn, &m->a.rstdq, &m->a.rstdk, &m->a.qr, &m->a.kr,
                       &m->a.att, &m->a.lse, &m->a.attp, &m->a.h, &m->a.xn2, &m->a.rstd2, &m->a.gate, &m->a.up,
                       &m->a.act, &m->a.mlp, &m->a.hn, &m->a.hrstd, &m->a.logits, &m->a.nll, &m->a.dres,
                       &m->a.dxn, &m->a.dqr, &m->a.dkr, &m->a.dq, &m->a.dk, &m->a.dv, &m->a.datt, &m->a.dgate,
                       &m->a.dup, &m->a.dact, &m->a.dw, &m->a.ckpt};
  for (size_t i = 0; i < sizeof all / sizeof *all; i++) apk_tensor_free(m->ctx, all[i]);
  m->a.T = 0;
  m->a.bwd = 0;
}

void ap_model_free(ap_model *m) {
  if (!m) return;
  if (m->ctx) {
    free_acts(m);
    for (int i = 0; i < m->n_lin; i++) {
      apk_tensor_free(m->ctx, &m->lin[i].weight);
      apk_tensor_free(m->ctx, &m->lin[i].bias);
      if (m->on_device) free(m->lin[i].act_sumsq.data); /* host mirror, a non-owning view */
      apk_tensor_free(m->ctx, &m->lin[i].act_sumsq);
      if (m->orig_dev) apk_tensor_free(m->ctx, &m->orig_dev[i]);
      if (m->mask_dev) apk_tensor_free(m->ctx, &m->mask_dev[i]);
      if (m->sumsq_dev) apk_tensor_free(m->ctx, &m->sumsq_dev[i]);
      apk_tensor_free(m->ctx, &m->lin[i].grad_abs);
      free(m->lin[i].mask);
    }
    if (m->blk)
      for (int b = 0; b < m->cfg.num_hidden_layers; b++) {
        apk_tensor_free(m->ctx, &m->blk[b].ln1);
        apk_tensor_free(m->ctx, &m->blk[b].ln2);
        apk_tensor_free(m->ctx, &m->blk[b].q_norm);
        apk_tensor_free(m->ctx, &m->blk[b].k_norm);
      }
    apk_tensor_free(m->ctx, &m->embed);
    apk_tensor_free(m->ctx, &m->lm_head); /* a view when tied: no-op */
    apk_tensor_free(m->ctx, &m->final_norm);
    apk_tensor_free(m->ctx, &m->rope_cos);
    apk_tensor_free(m->ctx, &m->rope_sin);
  }
  if (m->owned_orig)
    for (int i = 0; i < m->n_lin; i++) free(m->owned_orig[i]);
  free(m->owned_orig);
  free(m->orig_dev);
  free(m->mask_dev);
  free(m->sumsq_dev);
  free(m->lin);
  free(m->blk);
  apk_ctx_destroy(m->ctx);
  ap_st_close(m->st);
  free(m);
}

static void copy_err(char *err, size_t errlen, const char *msg) {
  if (err && errlen) snprintf(err, errlen, "%s", msg);
}

/* Common skeleton: context, layer table, names and shapes. */
static int model_skeleton(ap_model *m, const ap_model_opts *opts) {
  const ap_hf_config *c = &m->cfg;
  apk_backend_kind backend = opts ? opts->backend : APK_CPU;
  if (backend != APK_CPU && backend != APK_CUDA) return fail(m, AP_MODEL_EUNSUP, "unknown backend %d", (int)backend);
  int crc = apk_ctx_create(backend, opts ? opts->device : 0, &m->ctx);
  if (crc == APK_ENOMEM) return fail(m, AP_MODEL_ENOMEM, "cannot create a compute context: %s", apk_last_error());
  if (crc && backend == APK_CUDA)
    return fail(m, AP_MODEL_EDEVICE, "no usable CUDA device: %s", apk_last_error());
  if (crc) return fail(m, AP_MODEL_EUNSUP, "cannot create a compute context: %s", apk_last_error());
  m->on_device = backend != APK_CPU;
  if (c->head_dim % 2 != 0) return fail(m, AP_MODEL_EUNSUP, "head_dim %d is odd; RoPE needs pairs", c->head_dim);
  int L = c->num_hidden_layers;
  m->n_lin = L * AP_LIN_KINDS;
  m->lin = calloc((size_t)m->n_lin, sizeof *m->lin);
  m->blk = calloc((size_t)L, sizeof *m->blk);
  if (!m->lin || !m->blk) return fail(m, AP_MODEL_ENOMEM, "out of memory for the layer table");
  if (m->on_device) {
    m->orig_dev = calloc((size_t)m->n_lin, sizeof *m->orig_dev);
    m->mask_dev = calloc((size_t)m->n_lin, sizeof *m->mask_dev);
    m->sumsq_dev = calloc((size_t)m->n_lin, sizeof *m->sumsq_dev);
    if (!m->orig_dev || !m->mask_dev || !m->sumsq_dev) return fail(m, AP_MODEL_ENOMEM, "out of memory for the layer table");
  }
  int64_t C = c->hidden_size, I = c->intermediate_size, QD = (int64_t)c->num_attention_heads * c->head_dim,
          KD = (int64_t)c->num_key_value_heads * c->head_dim;
  int64_t shapes[AP_LIN_KINDS][2] = {{QD, C}, {KD, C}, {KD, C}, {C, QD}, {I, C}, {I, C}, {C, I}};
  for (int b = 0; b < L; b++)
    for (int k = 0; k < AP_LIN_KINDS; k++) {
      ap_linear *l = &m->lin[b * AP_LIN_KINDS + k];
      snprintf(l->name, sizeof l->name, "model.layers.%d.%s", b, kind_paths[k]);
      l->kind = (ap_linear_kind)k;
      l->block = b;
      l->rows = shapes[k][0];
      l->cols = shapes[k][1];
      if (l->rows * l->cols > m->max_weight) m->max_weight = l->rows * l->cols;
      l->mask_words = (size_t)((l->rows * l->cols + 63) / 64);
      l->mask_bytes = l->mask_words * sizeof *l->mask;
      l->mask = calloc(l->mask_words, sizeof *l->mask);
      if (!l->mask) return fail(m, AP_MODEL_ENOMEM, "out of memory for masks");
      if (apk_tensor_alloc2(m->ctx, &l->weight, APK_F32, l->rows, l->cols))
        return fail(m, AP_MODEL_ENOMEM, "out of memory for %s: %s", l->name, apk_last_error());
      if (m->on_device) {
        int64_t s[1] = {(int64_t)l->mask_bytes};
        apk_tensor *md = &m->mask_dev[b * AP_LIN_KINDS + k];
        if (apk_tensor_alloc(m->ctx, md, APK_U8, 1, s) || apk_zero(m->ctx, md))
          return fail(m, AP_MODEL_ENOMEM, "device mask of %s: %s", l->name, apk_last_error());
      }
      int has_bias = k <= AP_LIN_V ? c->qkv_bias : k == AP_LIN_O ? c->o_bias : c->mlp_bias;
      if (has_bias) {
        int64_t s[1] = {l->rows};
        if (apk_tensor_alloc(m->ctx, &l->bias, APK_F32, 1, s))
          return fail(m, AP_MODEL_ENOMEM, "out of memory for %s.bias", l->name);
      }
    }
  int64_t sC[1] = {C}, sD[1] = {c->head_dim};
  for (int b = 0; b < L; b++) {
    if (apk_tensor_alloc(m->ctx, &m->blk[b].ln1, APK_F32, 1, sC) ||
        apk_tensor_alloc(m->ctx, &m->blk[b].ln2, APK_F32, 1, sC))
      return fail(m, AP_MODEL_ENOMEM, "out of memory for norms");
    if (c->qk_norm && (apk_tensor_alloc(m->ctx, &m->blk[b].q_norm, APK_F32, 1, sD) ||
                       apk_tensor_alloc(m->ctx, &m->blk[b].k_norm, APK_F32, 1, sD)))
      return fail(m, AP_MODEL_ENOMEM, "out of memory for q/k norms");
  }
  if (apk_tensor_alloc2(m->ctx, &m->embed, APK_F32, c->vocab_size, C) ||
      apk_tensor_alloc(m->ctx, &m->final_norm, APK_F32, 1, sC))
    return fail(m, AP_MODEL_ENOMEM, "out of memory for embeddings");
  if (c->tie_word_embeddings) {
    m->lm_head = m->embed;
    m->lm_head.owned = 0;
  } else if (apk_tensor_alloc2(m->ctx, &m->lm_head, APK_F32, c->vocab_size, C)) {
    return fail(m, AP_MODEL_ENOMEM, "out of memory for lm_head");
  }
  return AP_MODEL_OK;
}

/* Host F32 storage to fill for `t`: t's own memory on the CPU backend, a
 * staging buffer on a device backend (then commit_host uploads and frees it). */
static float *host_for(ap_model *m, apk_tensor *t) {
  if (!m->on_device) return t->data;
  float *h = malloc((size_t)apk_tensor_numel(t) * sizeof(float));
  if (!h) fail(m, AP_MODEL_ENOMEM, "out of memory staging %lld floats", (long long)apk_tensor_numel(t));
  return h;
}

static int commit_host(ap_model *m, apk_tensor *t, float *h) {
  if (!m->on_device) return AP_MODEL_OK;
  int rc = apk_upload(m->ctx, t, h);
  free(h);
  if (rc) return fail(m, AP_MODEL_EKERNEL, "upload: %s", apk_last_error());
  return AP_MODEL_OK;
}

/* Converts a checkpoint tensor into an F32 tensor of the same element count. */
static int load_tensor(ap_model *m, const char *name, apk_tensor *dst) {
  const ap_st_tensor *t = ap_st_find(m->st, name);
  if (!t) return fail(m, AP_MODEL_ELOAD, "tensor %s is missing", name);
  if ((int64_t)t->numel != apk_tensor_numel(dst))
    return fail(m, AP_MODEL_ELOAD, "tensor %s has %zu elements, expected %lld", name, t->numel,
                (long long)apk_tensor_numel(dst));
  char msg[256];
  float *h = host_for(m, dst);
  if (!h) return AP_MODEL_ENOMEM;
  if (ap_st_tensor_to_f32_err(t, h, msg, sizeof msg)) {
    if (m->on_device) free(h);
    return fail(m, AP_MODEL_ELOAD, "%s", msg);
  }
  return commit_host(m, dst, h);
}

static apk_dtype apk_of(ap_dtype d) { return d == AP_BF16 ? APK_BF16 : d == AP_F16 ? APK_F16 : APK_F32; }

/* Device backends: a device copy of layer i's originals in their own dtype. */
static int upload_orig(ap_model *m, int i) {
  ap_linear *l = &m->lin[i];
  if (!m->on_device) return AP_MODEL_OK;
  apk_tensor *o = &m->orig_dev[i];
  if (apk_tensor_alloc2(m->ctx, o, apk_of(l->orig_dtype), l->rows, l->cols))
    return fail(m, AP_MODEL_ENOMEM, "device originals of %s: %s", l->name, apk_last_error());
  if (apk_upload(m->ctx, o, l->orig)) return fail(m, AP_MODEL_EKERNEL, "upload %s: %s", l->name, apk_last_error());
  return AP_MODEL_OK;
}

static int load_weights(ap_model *m) {
  const ap_hf_config *c = &m->cfg;
  char name[160];
  int rc;
  if ((rc = load_tensor(m, "model.embed_tokens.weight", &m->embed))) return rc;
  if ((rc = load_tensor(m, "model.norm.weight", &m->final_norm))) return rc;
  if (!c->tie_word_embeddings && (rc = load_tensor(m, "lm_head.weight", &m->lm_head))) return rc;
  for (int b = 0; b < c->num_hidden_layers; b++) {
    snprintf(name, sizeof name, "model.layers.%d.input_layernorm.weight", b);
    if ((rc = load_tensor(m, name, &m->blk[b].ln1))) return rc;
    snprintf(name, sizeof name, "model.layers.%d.post_attention_layernorm.weight", b);
    if ((rc = load_tensor(m, name, &m->blk[b].ln2))) return rc;
    if (c->qk_norm) {
      snprintf(name, sizeof name, "model.layers.%d.self_attn.q_norm.weight", b);
      if ((rc = load_tensor(m, name, &m->blk[b].q_norm))) return rc;
      snprintf(name, sizeof name, "model.layers.%d.self_attn.k_norm.weight", b);
      if ((rc = load_tensor(m, name, &m->blk[b].k_norm))) return rc;
    }
  }
  for (int i = 0; i < m->n_lin; i++) {
    ap_linear *l = &m->lin[i];
    snprintf(name, sizeof name, "%s.weight", l->name);
    const ap_st_tensor *t = ap_st_find(m->st, name);
    if (!t) return fail(m, AP_MODEL_ELOAD, "tensor %s is missing", name);
    l->orig = t->data;
    l->orig_dtype = t->dtype;
    if ((rc = load_tensor(m, name, &l->weight))) return rc;
    if ((rc = upload_orig(m, i))) return rc;
    if (l->bias.data) {
      snprintf(name, sizeof name, "%s.bias", l->name);
      if ((rc = load_tensor(m, name, &l->bias))) return rc;
    }
  }
  return AP_MODEL_OK;
}

int ap_model_load(const char *dir, const ap_model_opts *opts, ap_model **out, char *err, size_t errlen) {
  if (!dir || !out) {
    copy_err(err, errlen, "ap_model_load: NULL argument");
    return AP_MODEL_EARG;
  }
  *out = NULL;
  ap_model *m = calloc(1, sizeof *m);
  if (!m) {
    copy_err(err, errlen, "out of memory");
    return AP_MODEL_ENOMEM;
  }
  int rc;
  if (ap_hf_config_load(dir, &m->cfg, m->err, sizeof m->err) ||
      ap_st_open(dir, &m->st, m->err, sizeof m->err) ||
      ap_hf_config_check_tensors(&m->cfg, m->st, m->err, sizeof m->err)) {
    rc = AP_MODEL_ELOAD;
    goto fail;
  }
  if ((rc = model_skeleton(m, opts))) goto fail;
  if ((rc = load_weights(m))) goto fail;
  *out = m;
  return AP_MODEL_OK;
fail:
  copy_err(err, errlen, m->err);
  ap_model_free(m);
  return rc;
}

/* splitmix64: small, seedable, and the same on every platform. */
static uint64_t splitmix64(uint64_t *s) {
  uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

static void fill_uniform(float *x, int64_t n, float scale, uint64_t *s) {
  for (int64_t i = 0; i < n; i++) x[i] = scale * (float)((double)(splitmix64(s) >> 11) / 4503599627370496.0 - 1.0);
}

int ap_model_create_random(const ap_hf_config *cfg, uint64_t seed, const ap_model_opts *opts, ap_model **out,
                           char *err, size_t errlen) {
  if (!cfg || !out) {
    copy_err(err, errlen, "ap_model_create_random: NULL argument");
    return AP_MODEL_EARG;
  }
  *out = NULL;
  ap_model *m = calloc(1, sizeof *m);
  if (!m) {
    copy_err(err, errlen, "out of memory");
    return AP_MODEL_ENOMEM;
  }
  m->cfg = *cfg;
  int rc = model_skeleton(m, opts);
  if (rc) goto fail;
  uint64_t s = seed;
  float *h;
  if (!(h = host_for(m, &m->embed))) goto nomem;
  fill_uniform(h, apk_tensor_numel(&m->embed), 1.0f, &s);
  if ((rc = commit_host(m, &m->embed, h))) goto fail;
  if (!cfg->tie_word_embeddings) {
    if (!(h = host_for(m, &m->lm_head))) goto nomem;
    fill_uniform(h, apk_tensor_numel(&m->lm_head), 1.0f / sqrtf((float)cfg->hidden_size), &s);
    if ((rc = commit_host(m, &m->lm_head, h))) goto fail;
  }
  for (int b = -1; b < cfg->num_hidden_layers; b++) {
    apk_tensor *nt[4] = {&m->final_norm, NULL, NULL, NULL};
    if (b >= 0) nt[0] = &m->blk[b].ln1, nt[1] = &m->blk[b].ln2, nt[2] = &m->blk[b].q_norm, nt[3] = &m->blk[b].k_norm;
    for (int j = 0; j < 4; j++) {
      if (!nt[j] || !nt[j]->data) continue;
      if (!(h = host_for(m, nt[j]))) goto nomem;
      for (int64_t i = 0; i < apk_tensor_numel(nt[j]); i++) h[i] = 1.0f;
      if ((rc = commit_host(m, nt[j], h))) goto fail;
    }
  }
  m->owned_orig = calloc((size_t)m->n_lin, sizeof *m->owned_orig);
  if (!m->owned_orig) {
    rc = fail(m, AP_MODEL_ENOMEM, "out of memory");
    goto fail;
  }
  for (int i = 0; i < m->n_lin; i++) {
    ap_linear *l = &m->lin[i];
    float *o = malloc((size_t)(l->rows * l->cols) * sizeof(float));
    if (!o) {
      rc = fail(m, AP_MODEL_ENOMEM, "out of memory for %s", l->name);
      goto fail;
    }
    fill_uniform(o, l->rows * l->cols, 1.0f / sqrtf((float)l->cols), &s);
    m->owned_orig[i] = o;
    l->orig = o;
    l->orig_dtype = AP_F32;
    if (!m->on_device) {
      memcpy(l->weight.data, o, (size_t)(l->rows * l->cols) * sizeof(float));
    } else if ((rc = upload_orig(m, i)) || (rc = apk_upload(m->ctx, &l->weight, o) ? AP_MODEL_EKERNEL : 0)) {
      if (rc == AP_MODEL_EKERNEL) fail(m, rc, "upload %s: %s", l->name, apk_last_error());
      goto fail;
    }
    if (l->bias.data) {
      if (!(h = host_for(m, &l->bias))) goto nomem;
      fill_uniform(h, l->rows, 0.02f, &s);
      if ((rc = commit_host(m, &l->bias, h))) goto fail;
    }
  }
  *out = m;
  return AP_MODEL_OK;
nomem:
  rc = AP_MODEL_ENOMEM;
fail:
  copy_err(err, errlen, m->err);
  ap_model_free(m);
  return rc;
}

void ap_model_set_grad_hook(ap_model *m, ap_grad_hook fn, void *user) {
  m->grad_hook = fn;
  m->grad_hook_user = user;
}

/* ---- masks and statistics ----------------------------------------------------- */

/* The originals and the mask as the kernels of the model's backend read
 * them: host memory on the CPU, the device copies elsewhere. */
static apk_tensor orig_view(const ap_model *m, const ap_linear *l) {
  if (m->on_device) return m->orig_dev[l - m->lin];
  return apk_view2(APK_CPU, apk_of(l->orig_dtype), (void *)l->orig, l->rows, l->cols);
}

static apk_tensor mask_view(const ap_model *m, const ap_linear *l) {
  if (m->on_device) return m->mask_dev[l - m->lin];
  int64_t s[1] = {(int64_t)(l->mask_words * sizeof *l->mask)};
  return apk_view(APK_CPU, APK_U8, l->mask, 1, s);
}

int ap_model_apply_mask(ap_model *m, int index) {
  ap_linear *l = ap_model_linear(m, index);
  if (!l) return fail(m, AP_MODEL_EARG, "no eligible layer %d", index);
  apk_tensor o = orig_view(m, l), mk = mask_view(m, l);
  if (m->on_device) K(apk_upload(m->ctx, &mk, l->mask));
  K(apk_mask_apply(m->ctx, &l->weight, &o, &mk));
  return AP_MODEL_OK;
}

int ap_model_weights_host(ap_model *m, int index, float *out) {
  ap_linear *l = ap_model_linear(m, index);
  if (!l || !out) return fail(m, AP_MODEL_EARG, "no eligible layer %d or no output buffer", index);
  if (!m->on_device) {
    memcpy(out, l->weight.data, apk_tensor_bytes(&l->weight));
    return AP_MODEL_OK;
  }
  K(apk_download(m->ctx, out, &l->weight));
  return AP_MODEL_OK;
}

/* Device backends: act_sumsq (host) = the device sums of layers [first, end). */
static int sync_stats(ap_model *m, int first, int end) {
  if (!m->on_device) return AP_MODEL_OK;
  for (int i = first; i < end; i++)
    if (m->sumsq_dev[i].data) K(apk_download(m->ctx, m->lin[i].act_sumsq.data, &m->sumsq_dev[i]));
  return AP_MODEL_OK;
}

int ap_model_restore(ap_model *m, int index) {
  ap_linear *l = ap_model_linear(m, index);
  if (!l) return fail(m, AP_MODEL_EARG, "no eligible layer %d", index);
  apk_tensor o = orig_view(m, l);
  K(apk_mask_restore(m->ctx, &l->weight, &o));
  return AP_MODEL_OK;
}

int ap_model_stats_enable(ap_model *m) {
  for (int i = 0; i < m->n_lin; i++) {
    ap_linear *l = &m->lin[i];
    int64_t s[1] = {l->cols};
    if (m->on_device) {
      /* accumulated on the device, mirrored into act_sumsq (host) */
      if (!m->sumsq_dev[i].data && apk_tensor_alloc(m->ctx, &m->sumsq_dev[i], APK_F64, 1, s))
        return fail(m, AP_MODEL_ENOMEM, "device statistics: %s", apk_last_error());
      K(apk_zero(m->ctx, &m->sumsq_dev[i]));
      if (!l->act_sumsq.data) {
        double *h = calloc((size_t)l->cols, sizeof *h);
        if (!h) return fail(m, AP_MODEL_ENOMEM, "out of memory for statistics");
        l->act_sumsq = apk_view(APK_CPU, APK_F64, h, 1, s);
      }
      memset(l->act_sumsq.data, 0, (size_t)l->cols * sizeof(double));
      l->act_tokens = 0;
      continue;
    }
    if (!l->act_sumsq.data) {
      if (apk_tensor_alloc(m->ctx, &l->act_sumsq, APK_F64, 1, s))
        return fail(m, AP_MODEL_ENOMEM, "out of memory for statistics");
    }
    K(apk_zero(m->ctx, &l->act_sumsq));
    l->act_tokens = 0;
  }
  return AP_MODEL_OK;
}

int ap_model_grad_enable(ap_model *m, int per_weight) {
  for (int i = 0; i < m->n_lin; i++) {
    ap_linear *l = &m->lin[i];
    if (per_weight && !l->grad_abs.data) {
      if (apk_tensor_alloc2(m->ctx, &l->grad_abs, APK_F32, l->rows, l->cols))
        return fail(m, AP_MODEL_ENOMEM, "out of memory for gradient accumulators: %s", apk_last_error());
    }
    if (!per_weight) apk_tensor_free(m->ctx, &l->grad_abs);
    if (l->grad_abs.data) K(apk_zero(m->ctx, &l->grad_abs));
    l->grad_abs_kept = 0;
    l->grad_windows = 0;
  }
  return AP_MODEL_OK;
}

/* ---- buffers ---------------------------------------------------------------------- */

static int alloc2(ap_model *m, apk_tensor *t, apk_dtype dt, int64_t r, int64_t c) {
  if (apk_tensor_alloc2(m->ctx, t, dt, r, c)) return fail(m, AP_MODEL_ENOMEM, "out of memory for activations");
  return AP_MODEL_OK;
}

static int ensure_rope(ap_model *m, int T) {
  if (m->rope_T == T) return AP_MODEL_OK;
  apk_tensor_free(m->ctx, &m->rope_cos);
  apk_tensor_free(m->ctx, &m->rope_sin);
  m->rope_T = 0;
  int half = m->cfg.head_dim / 2;
  int rc;
  if ((rc = alloc2(m, &m->rope_cos, APK_F32, T, half)) || (rc = alloc2(m, &m->rope_sin, APK_F32, T, half))) return rc;
  float *c = malloc((size_t)T * half * sizeof(float)), *s = malloc((size_t)T * half * sizeof(float));
  if (!c || !s) {
    free(c), free(s);
    return fail(m, AP_MODEL_ENOMEM, "out of memory for RoPE tables");
  }
  apk_rope_scaling sc = {0, 1, 1, 1, 1};
  if (m->cfg.rope_scaling.type == AP_ROPE_LLAMA3) {
    sc.type = 1;
    sc.factor = m->cfg.rope_scaling.factor;
    sc.low_freq_factor = m->cfg.rope_scaling.low_freq_factor;
    sc.high_freq_factor = m->cfg.rope_scaling.high_freq_factor;
    sc.original_max_position = m->cfg.rope_scaling.original_max_position_embeddings;
  }
  apk_rope_tables(c, s, T, m->cfg.head_dim, m->cfg.rope_theta, &sc);
  int up = apk_upload(m->ctx, &m->rope_cos, c) || apk_upload(m->ctx, &m->rope_sin, s);
  free(c), free(s);
  if (up) return fail(m, AP_MODEL_EKERNEL, "RoPE tables: %s", apk_last_error());
  m->rope_T = T;
  return AP_MODEL_OK;
}

/* Sizes the activation buffers for windows of T tokens (and, with bwd, the
 * backward buffers and the block-input checkpoints). */
static int ensure_acts(ap_model *m, int T, int bwd) {
  if (m->a.T == T && (!bwd || m->a.bwd)) return AP_MODEL_OK;
  free_acts(m);
  const ap_hf_config *c = &m->cfg;
  int64_t C = c->hidden_size, I = c->intermediate_size, H = c->num_attention_heads, KVH = c->num_key_value_heads,
          D = c->head_dim, V = c->vocab_size;
  acts *a = &m->a;
  /* logits in row chunks of at most ~32 MiB */
  int64_t rows = (32 << 20) / (V * 4);
  a->logit_rows = (int)(rows < 1 ? 1 : rows > T ? T : rows);
  int rc = 0;
#define A(t, dt, r, cc) \
  if ((rc = alloc2(m, &a->t, dt, r, cc))) return rc
  A(tokens, APK_I32, T, 1);
  A(targets, APK_I32, T, 1);
  A(hid, APK_F32, T, C);
  A(xc, APK_F32, T, C);
  A(xn1, APK_F32, T, C);
  A(rstd1, APK_F32, T, 1);
  A(q, APK_F32, T, H * D);
  A(k, APK_F32, T, KVH * D);
  A(v, APK_F32, T, KVH * D);
  if (c->qk_norm) {
    A(qn, APK_F32, T, H * D);
    A(kn, APK_F32, T, KVH * D);
    A(rstdq, APK_F32, T * H, 1);
    A(rstdk, APK_F32, T * KVH, 1);
  }
  A(qr, APK_F32, T, H * D);
  A(kr, APK_F32, T, KVH * D);
  A(att, APK_F32, T, H * D);
  A(lse, APK_F32, H, T);
  A(attp, APK_F32, T, C);
  A(h, APK_F32, T, C);
  A(xn2, APK_F32, T, C);
  A(rstd2, APK_F32, T, 1);
  A(gate, APK_F32, T, I);
  A(up, APK_F32, T, I);
  A(act, APK_F32, T, I);
  A(mlp, APK_F32, T, C);
  A(hn, APK_F32, T, C);
  A(hrstd, APK_F32, T, 1);
  A(logits, APK_F32, a->logit_rows, V);
  A(nll, APK_F32, a->logit_rows, 1);
  if (bwd) {
    A(dres, APK_F32, T, C);
    A(dxn, APK_F32, T, C);
    A(dqr, APK_F32, T, H * D);
    A(dkr, APK_F32, T, KVH * D);
    if (c->qk_norm) {
      A(dq, APK_F32, T, H * D);
      A(dk, APK_F32, T, KVH * D);
    }
    A(dv, APK_F32, T, KVH * D);
    A(datt, APK_F32, T, H * D);
    A(dgate, APK_F32, T, I);
    A(dup, APK_F32, T, I);
    A(dact, APK_F32, T, I);
    A(dw, APK_F32, m->max_weight, 1);
    A(ckpt, APK_F32, (int64_t)c->num_hidden_layers * T, C);
    a->bwd = 1;
  }
#undef A
  a->T = T;
  return ensure_rope(m, T);
}

/* Validates window length and tokens, and uploads one window's tokens and
 * next-token targets (-1 at the last position). */
static int check_windows(ap_model *m, const int32_t *tokens, int64_t n, int T) {
  if (!tokens) return fail(m, AP_MODEL_EARG, "no tokens");
  if (T < 2) return fail(m, AP_MODEL_EARG, "window length %d: need at least 2 tokens", T);
  if (T > m->cfg.max_position_embeddings)
    return fail(m, AP_MODEL_EARG, "window length %d exceeds max_position_embeddings %d", T,
                m->cfg.max_position_embeddings);
  if (ap_hf_config_window_matters(&m->cfg, T))
    return fail(m, AP_MODEL_EUNSUP,
                "sliding-window attention (window %d) is shorter than the window length %d: not implemented; "
                "use a window length of at most %d",
                m->cfg.sliding_window, T, m->cfg.sliding_window);
  for (int64_t i = 0; i < n; i++)
    if (tokens[i] < 0 || tokens[i] >= m->cfg.vocab_size)
      return fail(m, AP_MODEL_EARG, "token %d at position %lld is outside the vocabulary (%d)", tokens[i],
                  (long long)i, m->cfg.vocab_size);
  return AP_MODEL_OK;
}

static int upload_targets(ap_model *m, const int32_t *win, int T) {
  int32_t *tg = malloc((size_t)T * sizeof *tg);
  if (!tg) return fail(m, AP_MODEL_ENOMEM, "out of memory");
  for (int t = 0; t + 1 < T; t++) tg[t] = win[t + 1];
  tg[T - 1] = -1;
  int rc = apk_upload(m->ctx, &m->a.targets, tg);
  free(tg);
  if (rc) return fail(m, AP_MODEL_EKERNEL, "upload: %s", apk_last_error());
  return AP_MODEL_OK;
}

/* ---- one block ------------------------------------------------------------------ */

static int stat_acc(ap_model *m, ap_linear *l, const apk_tensor *inp, int T) {
  if (!l->act_sumsq.data) return fail(m, AP_MODEL_EARG, "statistics requested but not enabled");
  apk_tensor *acc = m->on_device ? &m->sumsq_dev[l - m->lin] : &l->act_sumsq;
  K(apk_colsumsq_accumulate(m->ctx, acc, inp));
  l->act_tokens += T;
  return AP_MODEL_OK;
}

/* x [T, C] -> block output, in place. Leaves every intermediate in m->a. */
static int block_fwd(ap_model *m, int b, apk_tensor *x, int T, int stats) {
  const ap_hf_config *c = &m->cfg;
  acts *a = &m->a;
  apk_ctx *ctx = m->ctx;
  int64_t H = c->num_attention_heads, KVH = c->num_key_value_heads, D = c->head_dim;
  float eps = (float)c->rms_norm_eps;
  ap_linear *l = &m->lin[b * AP_LIN_KINDS];
  block_weights *w = &m->blk[b];
  int rc;
  K(apk_rmsnorm_forward(ctx, &a->xn1, &a->rstd1, x, &w->ln1, eps));
  if (stats)
    for (int k = AP_LIN_Q; k <= AP_LIN_V; k++)
      if ((rc = stat_acc(m, &l[k], &a->xn1, T))) return rc;
  K(apk_linear_forward(ctx, &a->q, &a->xn1, &l[AP_LIN_Q].weight, l[AP_LIN_Q].bias.data ? &l[AP_LIN_Q].bias : NULL));
  K(apk_linear_forward(ctx, &a->k, &a->xn1, &l[AP_LIN_K].weight, l[AP_LIN_K].bias.data ? &l[AP_LIN_K].bias : NULL));
  K(apk_linear_forward(ctx, &a->v, &a->xn1, &l[AP_LIN_V].weight, l[AP_LIN_V].bias.data ? &l[AP_LIN_V].bias : NULL));
  apk_tensor *qs = &a->q, *ks = &a->k;
  if (c->qk_norm) {
    apk_tensor qi = shaped(&a->q, 2, T * H, D, 0, 0), qo = shaped(&a->qn, 2, T * H, D, 0, 0);
    apk_tensor ki = shaped(&a->k, 2, T * KVH, D, 0, 0), ko = shaped(&a->kn, 2, T * KVH, D, 0, 0);
    K(apk_rmsnorm_forward(ctx, &qo, &a->rstdq, &qi, &w->q_norm, eps));
    K(apk_rmsnorm_forward(ctx, &ko, &a->rstdk, &ki, &w->k_norm, eps));
    qs = &a->qn, ks = &a->kn;
  }
  apk_tensor q3 = shaped(qs, 3, T, H, D, 0), qr3 = shaped(&a->qr, 3, T, H, D, 0);
  apk_tensor k3 = shaped(ks, 3, T, KVH, D, 0), kr3 = shaped(&a->kr, 3, T, KVH, D, 0);
  K(apk_rope_forward(ctx, &qr3, &q3, &m->rope_cos, &m->rope_sin));
  K(apk_rope_forward(ctx, &kr3, &k3, &m->rope_cos, &m->rope_sin));
  apk_tensor q4 = shaped(&a->qr, 4, 1, T, H, D), k4 = shaped(&a->kr, 4, 1, T, KVH, D),
             v4 = shaped(&a->v, 4, 1, T, KVH, D), o4 = shaped(&a->att, 4, 1, T, H, D);
  K(apk_attention_forward(ctx, &o4, &a->lse, &q4, &k4, &v4));
  if (stats && (rc = stat_acc(m, &l[AP_LIN_O], &a->att, T))) return rc;
  K(apk_linear_forward(ctx, &a->attp, &a->att, &l[AP_LIN_O].weight,
                       l[AP_LIN_O].bias.data ? &l[AP_LIN_O].bias : NULL));
  K(apk_copy(ctx, &a->h, x));
  K(apk_add_inplace(ctx, &a->h, &a->attp));
  K(apk_rmsnorm_forward(ctx, &a->xn2, &a->rstd2, &a->h, &w->ln2, eps));
  if (stats) {
    if ((rc = stat_acc(m, &l[AP_LIN_GATE], &a->xn2, T))) return rc;
    if ((rc = stat_acc(m, &l[AP_LIN_UP], &a->xn2, T))) return rc;
  }
  K(apk_linear_forward(ctx, &a->gate, &a->xn2, &l[AP_LIN_GATE].weight,
                       l[AP_LIN_GATE].bias.data ? &l[AP_LIN_GATE].bias : NULL));
  K(apk_linear_forward(ctx, &a->up, &a->xn2, &l[AP_LIN_UP].weight,
                       l[AP_LIN_UP].bias.data ? &l[AP_LIN_UP].bias : NULL));
  K(apk_swiglu_forward(ctx, &a->act, &a->gate, &a->up));
  if (stats && (rc = stat_acc(m, &l[AP_LIN_DOWN], &a->act, T))) return rc;
  K(apk_linear_forward(ctx, &a->mlp, &a->act, &l[AP_LIN_DOWN].weight,
                       l[AP_LIN_DOWN].bias.data ? &l[AP_LIN_DOWN].bias : NULL));
  K(apk_copy(ctx, x, &a->h));
  K(apk_add_inplace(ctx, x, &a->mlp));
  return AP_MODEL_OK;
}

/* Folds the gradient in a->dw (for layer l) into l's accumulators. */
static int fold_grad(ap_model *m, ap_linear *l) {
  /* dw is sized for the largest layer: this layer's gradient is its prefix */
  apk_tensor g = apk_view2(m->a.dw.backend, APK_F32, m->a.dw.data, l->rows, l->cols);
  if (m->grad_hook) m->grad_hook(m->grad_hook_user, (int)(l - m->lin), &g);
  if (l->grad_abs.data) K(apk_absgrad_accumulate(m->ctx, &l->grad_abs, &g));
  apk_tensor mk = mask_view(m, l);
  double s = 0;
  K(apk_abs_sum_kept(m->ctx, &s, &g, &mk));
  l->grad_abs_kept += s;
  return AP_MODEL_OK;
}

/* dinp += dout W, dW = dout^T inp folded into the layer's accumulators. */
static int linear_bwd(ap_model *m, ap_linear *l, apk_tensor *dinp, const apk_tensor *dout, const apk_tensor *inp) {
  apk_tensor g = apk_view2(m->a.dw.backend, APK_F32, m->a.dw.data, l->rows, l->cols);
  K(apk_zero(m->ctx, &g));
  K(apk_linear_backward(m->ctx, dinp, &g, NULL, dout, inp, &l->weight));
  return fold_grad(m, l);
}

/* Backward through block b, whose intermediates block_fwd left in m->a for
 * input x_in. a->dres holds dL/d(output) on entry and dL/d(x_in) on exit. */
static int block_bwd(ap_model *m, int b, const apk_tensor *x_in, int T) {
  const ap_hf_config *c = &m->cfg;
  acts *a = &m->a;
  apk_ctx *ctx = m->ctx;
  int64_t H = c->num_attention_heads, KVH = c->num_key_value_heads, D = c->head_dim;
  ap_linear *l = &m->lin[b * AP_LIN_KINDS];
  block_weights *w = &m->blk[b];
  int rc;
  /* MLP branch: out = h + down(swiglu(gate(xn2), up(xn2))) */
  K(apk_zero(ctx, &a->dact));
  if ((rc = linear_bwd(m, &l[AP_LIN_DOWN], &a->dact, &a->dres, &a->act))) return rc;
  K(apk_swiglu_backward(ctx, &a->dgate, &a->dup, &a->dact, &a->gate, &a->up));
  K(apk_zero(ctx, &a->dxn));
  if ((rc = linear_bwd(m, &l[AP_LIN_GATE], &a->dxn, &a->dgate, &a->xn2))) return rc;
  if ((rc = linear_bwd(m, &l[AP_LIN_UP], &a->dxn, &a->dup, &a->xn2))) return rc;
  K(apk_rmsnorm_backward(ctx, &a->dres, &a->dxn, &a->h, &w->ln2, &a->rstd2)); /* dres = dL/dh */
  /* attention branch: h = x + o(attn(rope(norm(q(xn1))), ...)) */
  K(apk_zero(ctx, &a->datt));
  if ((rc = linear_bwd(m, &l[AP_LIN_O], &a->datt, &a->dres, &a->att))) return rc;
  K(apk_zero(ctx, &a->dqr));
  K(apk_zero(ctx, &a->dkr));
  K(apk_zero(ctx, &a->dv));
  {
    apk_tensor q4 = shaped(&a->qr, 4, 1, T, H, D), k4 = shaped(&a->kr, 4, 1, T, KVH, D),
               v4 = shaped(&a->v, 4, 1, T, KVH, D), o4 = shaped(&a->att, 4, 1, T, H, D),
               dq4 = shaped(&a->dqr, 4, 1, T, H, D), dk4 = shaped(&a->dkr, 4, 1, T, KVH, D),
               dv4 = shaped(&a->dv, 4, 1, T, KVH, D), do4 = shaped(&a->datt, 4, 1, T, H, D);
    K(apk_attention_backward(ctx, &dq4, &dk4, &dv4, &do4, &q4, &k4, &v4, &o4, &a->lse));
  }
  apk_tensor dq3 = shaped(&a->dqr, 3, T, H, D, 0), dk3 = shaped(&a->dkr, 3, T, KVH, D, 0);
  K(apk_rope_backward(ctx, &dq3, &dq3, &m->rope_cos, &m->rope_sin));
  K(apk_rope_backward(ctx, &dk3, &dk3, &m->rope_cos, &m->rope_sin));
  apk_tensor *dq = &a->dqr, *dk = &a->dkr;
  if (c->qk_norm) {
    K(apk_zero(ctx, &a->dq));
    K(apk_zero(ctx, &a->dk));
    apk_tensor dqi = shaped(&a->dq, 2, T * H, D, 0, 0), dqo = shaped(&a->dqr, 2, T * H, D, 0, 0),
               qi = shaped(&a->q, 2, T * H, D, 0, 0);
    apk_tensor dki = shaped(&a->dk, 2, T * KVH, D, 0, 0), dko = shaped(&a->dkr, 2, T * KVH, D, 0, 0),
               ki = shaped(&a->k, 2, T * KVH, D, 0, 0);
    K(apk_rmsnorm_backward(ctx, &dqi, &dqo, &qi, &w->q_norm, &a->rstdq));
    K(apk_rmsnorm_backward(ctx, &dki, &dko, &ki, &w->k_norm, &a->rstdk));
    dq = &a->dq, dk = &a->dk;
  }
  K(apk_zero(ctx, &a->dxn));
  if ((rc = linear_bwd(m, &l[AP_LIN_Q], &a->dxn, dq, &a->xn1))) return rc;
  if ((rc = linear_bwd(m, &l[AP_LIN_K], &a->dxn, dk, &a->xn1))) return rc;
  if ((rc = linear_bwd(m, &l[AP_LIN_V], &a->dxn, &a->dv, &a->xn1))) return rc;
  K(apk_rmsnorm_backward(ctx, &a->dres, &a->dxn, x_in, &w->ln1, &a->rstd1)); /* dres = dL/dx_in */
  return AP_MODEL_OK;
}

/* ---- head --------------------------------------------------------------------------- */

/* Final norm + lm_head + cross-entropy over one window's hidden states x.
 * Adds the NLL sum to *nll. With logits_out, copies the logits there; with
 * bwd, writes dL/dx (L = mean NLL over T-1 predictions) into a->dres. */
static int head(ap_model *m, const apk_tensor *x, int T, double *nll, float *logits_out, int bwd) {
  acts *a = &m->a;
  apk_ctx *ctx = m->ctx;
  int64_t V = m->cfg.vocab_size;
  K(apk_rmsnorm_forward(ctx, &a->hn, &a->hrstd, x, &m->final_norm, (float)m->cfg.rms_norm_eps));
  if (bwd) K(apk_zero(ctx, &a->dxn));
  for (int r0 = 0; r0 < T; r0 += a->logit_rows) {
    int R = T - r0 < a->logit_rows ? T - r0 : a->logit_rows;
    apk_tensor hn = apk_view_rows(&a->hn, r0, R), lg = apk_view_rows(&a->logits, 0, R),
               nl = apk_view_rows(&a->nll, 0, R), tg = apk_view_rows(&a->targets, r0, R);
    K(apk_linear_forward(ctx, &lg, &hn, &m->lm_head, NULL));
    if (logits_out) K(apk_download(ctx, logits_out + (size_t)r0 * V, &lg));
    K(apk_crossentropy_forward(ctx, &nl, &lg, &tg));
    K(apk_nll_window_sums(ctx, nll, &nl, 1));
    if (bwd) {
      apk_tensor dx = apk_view_rows(&a->dxn, r0, R);
      K(apk_crossentropy_backward(ctx, &lg, &lg, &tg, 1.0f / (float)(T - 1)));
      K(apk_linear_backward(ctx, &dx, NULL, NULL, &lg, &hn, &m->lm_head));
    }
  }
  if (bwd) {
    K(apk_zero(ctx, &a->dres));
    K(apk_rmsnorm_backward(ctx, &a->dres, &a->dxn, x, &m->final_norm, &a->hrstd));
  }
  return AP_MODEL_OK;
}

/* ---- public runs ------------------------------------------------------------------ */

static int embed_window(ap_model *m, const int32_t *win, int T, apk_tensor *dst) {
  if (apk_upload(m->ctx, &m->a.tokens, win)) return fail(m, AP_MODEL_EKERNEL, "upload: %s", apk_last_error());
  apk_tensor tk = shaped(&m->a.tokens, 1, T, 0, 0, 0);
  K(apk_embedding_forward(m->ctx, dst, &tk, &m->embed));
  return AP_MODEL_OK;
}

static int run_window(ap_model *m, const int32_t *win, int T, int stats, double *nll, float *logits_out) {
  int rc;
  if ((rc = embed_window(m, win, T, &m->a.hid))) return rc;
  for (int b = 0; b < m->cfg.num_hidden_layers; b++)
    if ((rc = block_fwd(m, b, &m->a.hid, T, stats))) return rc;
  if ((rc = upload_targets(m, win, T))) return rc;
  return head(m, &m->a.hid, T, nll, logits_out, 0);
}

int ap_model_forward(ap_model *m, const int32_t *tokens, int n_windows, int T, int collect_stats, double *nll_sum,
                     int64_t *n_predicted, double *window_nll) {
  if (!m || !nll_sum || !n_predicted || n_windows < 0) return m ? fail(m, AP_MODEL_EARG, "bad argument") : AP_MODEL_EARG;
  int rc;
  if ((rc = check_windows(m, tokens, (int64_t)n_windows * T, T))) return rc;
  if ((rc = ensure_acts(m, T, 0))) return rc;
  for (int w = 0; w < n_windows; w++) {
    double s = 0;
    if ((rc = run_window(m, tokens + (size_t)w * T, T, collect_stats, &s, NULL))) return rc;
    *nll_sum += s;
    *n_predicted += T - 1;
    if (window_nll) window_nll[w] = s;
  }
  return collect_stats ? sync_stats(m, 0, m->n_lin) : AP_MODEL_OK;
}

int ap_model_logits(ap_model *m, const int32_t *tokens, int T, float *out) {
  if (!m || !out) return m ? fail(m, AP_MODEL_EARG, "bad argument") : AP_MODEL_EARG;
  int rc;
  if ((rc = check_windows(m, tokens, T, T))) return rc;
  if ((rc = ensure_acts(m, T, 0))) return rc;
  double s = 0;
  return run_window(m, tokens, T, 0, &s, out);
}

int ap_model_backward_window(ap_model *m, const int32_t *tokens, int T, double *loss) {
  if (!m) return AP_MODEL_EARG;
  int rc;
  if ((rc = check_windows(m, tokens, T, T))) return rc;
  if ((rc = ensure_acts(m, T, 1))) return rc;
  acts *a = &m->a;
  int L = m->cfg.num_hidden_layers;
  if ((rc = embed_window(m, tokens, T, &a->hid))) return rc;
  for (int b = 0; b < L; b++) {
    apk_tensor ck = apk_view_rows(&a->ckpt, (int64_t)b * T, T);
    K(apk_copy(m->ctx, &ck, &a->hid));
    if ((rc = block_fwd(m, b, &a->hid, T, 0))) return rc;
  }
  if ((rc = upload_targets(m, tokens, T))) return rc;
  double nll = 0;
  if ((rc = head(m, &a->hid, T, &nll, NULL, 1))) return rc;
  for (int b = L - 1; b >= 0; b--) {
    apk_tensor ck = apk_view_rows(&a->ckpt, (int64_t)b * T, T);
    K(apk_copy(m->ctx, &a->xc, &ck));
    if ((rc = block_fwd(m, b, &a->xc, T, 0))) return rc;
    if ((rc = block_bwd(m, b, &ck, T))) return rc;
  }
  for (int i = 0; i < m->n_lin; i++) m->lin[i].grad_windows++;
  if (loss) *loss = nll / (T - 1);
  return AP_MODEL_OK;
}

/* ---- block-by-block -------------------------------------------------------------- */

int ap_model_embed(ap_model *m, const int32_t *tokens, int n_windows, int T, apk_tensor *hidden) {
  if (!m || !hidden || n_windows < 1) return m ? fail(m, AP_MODEL_EARG, "bad argument") : AP_MODEL_EARG;
  memset(hidden, 0, sizeof *hidden);
  int rc;
  if ((rc = check_windows(m, tokens, (int64_t)n_windows * T, T))) return rc;
  if ((rc = ensure_acts(m, T, 0))) return rc;
  if ((rc = alloc2(m, hidden, APK_F32, (int64_t)n_windows * T, m->cfg.hidden_size))) return rc;
  for (int w = 0; w < n_windows; w++) {
    apk_tensor dst = apk_view_rows(hidden, (int64_t)w * T, T);
    if ((rc = embed_window(m, tokens + (size_t)w * T, T, &dst))) {
      apk_tensor_free(m->ctx, hidden);
      return rc;
    }
  }
  return AP_MODEL_OK;
}

static int check_hidden(ap_model *m, const apk_tensor *hidden, int T) {
  if (!hidden || !hidden->data || hidden->ndim != 2 || hidden->shape[1] != m->cfg.hidden_size || T < 2 ||
      hidden->shape[0] % T != 0)
    return fail(m, AP_MODEL_EARG, "hidden states must be [windows * %d, %d]", T, m->cfg.hidden_size);
  int rc;
  if ((rc = check_windows(m, (const int32_t[]){0}, 1, T))) return rc;
  return ensure_acts(m, T, 0);
}

int ap_model_block_forward(ap_model *m, int block, apk_tensor *hidden, int T, int collect_stats) {
  if (!m) return AP_MODEL_EARG;
  if (block < 0 || block >= m->cfg.num_hidden_layers) return fail(m, AP_MODEL_EARG, "no block %d", block);
  int rc;
  if ((rc = check_hidden(m, hidden, T))) return rc;
  for (int64_t w = 0; w < hidden->shape[0] / T; w++) {
    apk_tensor x = apk_view_rows(hidden, w * T, T);
    if ((rc = block_fwd(m, block, &x, T, collect_stats))) return rc;
  }
  return collect_stats ? sync_stats(m, block * AP_LIN_KINDS, (block + 1) * AP_LIN_KINDS) : AP_MODEL_OK;
}

int ap_model_head_nll(ap_model *m, const apk_tensor *hidden, const int32_t *tokens, int T, double *nll_sum,
                      int64_t *n_predicted, double *window_nll) {
  if (!m || !nll_sum || !n_predicted) return m ? fail(m, AP_MODEL_EARG, "bad argument") : AP_MODEL_EARG;
  int rc;
  if ((rc = check_hidden(m, hidden, T))) return rc;
  int64_t nw = hidden->shape[0] / T;
  if ((rc = check_windows(m, tokens, nw * T, T))) return rc;
  for (int64_t w = 0; w < nw; w++) {
    apk_tensor x = apk_view_rows(hidden, w * T, T);
    double s = 0;
    if ((rc = upload_targets(m, tokens + w * T, T))) return rc;
    if ((rc = head(m, &x, T, &s, NULL, 0))) return rc;
    *nll_sum += s;
    *n_predicted += T - 1;
    if (window_nll) window_nll[w] = s;
  }
  return AP_MODEL_OK;
}
