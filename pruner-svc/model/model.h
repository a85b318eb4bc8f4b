/*
 * model.h - the decoder-only transformer of Llama, Mistral, Qwen2 and Qwen3
 * checkpoints in Hugging Face layout, run on the kernels backend
 * (ap_kernels.h), with the hooks pruning needs:
 *
 *  - the eligible linear layers (q,k,v,o,gate,up,down of every block) with
 *    their read-only original weights, F32 working weights and a mask bitmap;
 *  - forward over windows -> NLL sum, optionally accumulating Wanda's
 *    per-input-column sum of squares of every eligible layer's input;
 *  - backward of the mean LM loss of one window, accumulating |dL/dW| per
 *    layer (activation checkpointing: block inputs are kept, each block is
 *    recomputed during the backward pass);
 *  - a block-by-block API (embed, one block, head) for sequential profiling.
 *
 * Windows: each window of T tokens starts at position 0 and predicts its
 * tokens 1..T-1 from the tokens before them (DESIGN.md section 2). Token rows
 * are window-major.
 *
 * Threading: a model is used by one thread at a time; the kernels use the
 * OpenMP threads (both cores) inside each op.
 *
 * Backends: APK_CPU, or APK_CUDA in builds with the CUDA backend. On CUDA
 * every weight, activation and statistic the kernels touch is device memory
 * (resident: the whole model must fit in GPU memory, see docs/engine.md);
 * what the caller reads or edits directly stays on the host, as each field
 * of ap_linear says. Results on CUDA match the CPU within the kernels'
 * tolerance (ap_kernels.h), not bit for bit.
 */
#ifndef AP_MODEL_H
#define AP_MODEL_H

#include <stddef.h>
#include <stdint.h>

#include "ap_kernels.h"
#include "dtype.h"
#include "hf_config.h"

#ifdef __cplusplus
extern "C" {
#endif

enum ap_model_error {
  AP_MODEL_OK = 0,
  AP_MODEL_EARG = -1,     /* NULL pointer, bad window length, token out of range, bad layer index */
  AP_MODEL_ENOMEM = -2,
  AP_MODEL_ELOAD = -3,    /* config.json / safetensors refused (message from the loader) */
  AP_MODEL_EUNSUP = -4,   /* a feature we do not run: sliding window shorter than T, backend */
  AP_MODEL_EKERNEL = -5,  /* a kernel op failed (message from apk_last_error) */
  AP_MODEL_EDEVICE = -6,  /* the requested device backend is unavailable: no GPU or driver, or a build
                             without it (message from the kernels) */
};

typedef enum ap_linear_kind {
  AP_LIN_Q = 0,
  AP_LIN_K,
  AP_LIN_V,
  AP_LIN_O,
  AP_LIN_GATE,
  AP_LIN_UP,
  AP_LIN_DOWN,
  AP_LIN_KINDS
} ap_linear_kind;

/* "q", "k", "v", "o", "gate", "up", "down". */
const char *ap_linear_kind_name(ap_linear_kind k);

/* One eligible linear layer: out = in W^T (+ b), W [rows = out features,
 * cols = in features]. Everything is owned by the model.
 * Memory: [host] = host memory on every backend; [backend] = memory of the
 * model's backend (host on the CPU, device on CUDA: never dereference it on
 * the host there; use apk_download or ap_model_weights_host). */
typedef struct ap_linear {
  char name[96];            /* HF name without ".weight": "model.layers.3.self_attn.q_proj" */
  ap_linear_kind kind;
  int block;
  int64_t rows, cols;
  ap_dtype orig_dtype;      /* dtype of the checkpoint tensor */
  const void *orig;         /* [host] read-only original weights (mmap view; may be unaligned). On CUDA the
                               model also keeps a private device copy in orig_dtype for mask apply. */
  apk_tensor weight;        /* [backend] F32 working weights used for compute [rows, cols] */
  apk_tensor bias;          /* [backend] F32 [rows], data NULL when the layer has none */
  /* Mask: rows*cols bits, row-major, 1 = pruned: the layout of
   * pruner-svc/prune/bitmap.h (ceil(n/64) uint64_t words, bit i = bit i%64
   * of word i/64), so ap_bitmap_* functions work on it directly. On the
   * little-endian hosts we build for, its bytes are the LSB-first byte
   * bitmap of ap_math.h that the kernels read. All zero after load. The
   * caller edits it, then calls ap_model_apply_mask(). [host] On CUDA the
   * kernels read a private device copy that ap_model_apply_mask uploads:
   * edits count once applied (the backward pass's kept-gradient sums use
   * the mask as last applied there, the current one on the CPU). */
  uint64_t *mask;
  size_t mask_words;
  size_t mask_bytes;        /* mask_words * 8 */
  /* Statistics: see ap_model_stats_enable and ap_model_grad_enable. NULL
   * data until enabled. */
  apk_tensor act_sumsq;     /* [host] F64 [cols]: sum over tokens of x_j^2 of this layer's input. On CUDA
                               the sums accumulate on the device and are copied here at the end of every
                               ap_model_forward / ap_model_block_forward with collect_stats. */
  int64_t act_tokens;       /* [host] tokens accumulated into act_sumsq */
  apk_tensor grad_abs;      /* [backend] F32 [rows, cols]: sum over windows of |dL_i/dW| (optional) */
  double grad_abs_kept;     /* [host] sum over windows of sum over kept weights of |dL_i/dW| */
  int64_t grad_windows;     /* [host] windows accumulated into grad_abs / grad_abs_kept */
} ap_linear;

typedef struct ap_model ap_model;

typedef struct ap_model_opts {
  apk_backend_kind backend; /* APK_CPU (default when opts is NULL) or APK_CUDA */
  int device;               /* CUDA device index */
} ap_model_opts;

/* Loads an HF model folder (config.json + model.safetensors or shards).
 * Embeddings, norms and lm_head are converted to F32 once; eligible layers
 * keep a view of the mmap'd original and an F32 working copy. On CUDA all
 * of them are uploaded (originals in their checkpoint dtype as well), under
 * the process-wide limit of apk_cuda_set_mem_limit. Refuses non-finite
 * weights. On success *out is owned by the caller (ap_model_free).
 * Errors: AP_MODEL_ELOAD / AP_MODEL_EUNSUP / AP_MODEL_ENOMEM (host memory,
 * device memory or the device limit) / AP_MODEL_EDEVICE (no usable device)
 * with a message. */
int ap_model_load(const char *dir, const ap_model_opts *opts, ap_model **out, char *err, size_t errlen);

/* A model of the given architecture with random weights (uniform, scaled
 * 1/sqrt(fan_in); norms 1), for benchmarks and tests. cfg is copied; the
 * originals are owned F32 buffers. */
int ap_model_create_random(const ap_hf_config *cfg, uint64_t seed, const ap_model_opts *opts, ap_model **out,
                           char *err, size_t errlen);

void ap_model_free(ap_model *m);

const ap_hf_config *ap_model_config(const ap_model *m);
apk_ctx *ap_model_ctx(ap_model *m);
/* min(2048, max_position_embeddings): DESIGN.md's default window length. */
int ap_model_default_ctx(const ap_model *m);

/* Eligible linear layers, block-major in the order q,k,v,o,gate,up,down:
 * index = block * AP_LIN_KINDS + kind. */
int ap_model_num_linears(const ap_model *m);
ap_linear *ap_model_linear(ap_model *m, int index);
/* Index of the layer called `name` (HF name without ".weight"), or -1. */
int ap_model_find_linear(const ap_model *m, const char *name);

/* working = original where the mask keeps, 0 where it prunes (one pass). */
int ap_model_apply_mask(ap_model *m, int index);
/* working = original; the mask bitmap is left as it is. */
int ap_model_restore(ap_model *m, int index);

/* Copies layer `index`'s F32 working weights (rows*cols floats, the values
 * the forward uses, 0 where the applied mask prunes) into the caller's host
 * buffer `out`: a memcpy on the CPU, a download (synchronising) on CUDA.
 * Errors: AP_MODEL_EARG, AP_MODEL_EKERNEL. */
int ap_model_weights_host(ap_model *m, int index, float *out);

/* Allocates (if needed) and zeroes every layer's act_sumsq / act_tokens.
 * Afterwards forwards with collect_stats accumulate into them. */
int ap_model_stats_enable(ap_model *m);
/* Allocates (if needed) and zeroes the gradient accumulators: grad_abs_kept
 * and grad_windows always; the per-weight grad_abs (F32, as large as the
 * weights) only when per_weight != 0 (otherwise it is freed). */
int ap_model_grad_enable(ap_model *m, int per_weight);

/* Forward over n_windows windows of T tokens (tokens [n_windows * T]).
 * Adds to *nll_sum the NLL of every predicted token (positions 1..T-1 of each
 * window, in F64) and to *n_predicted their count; window_nll (may be NULL)
 * [n_windows] receives each window's NLL sum. With collect_stats, every
 * eligible layer's act_sumsq accumulates its input (ap_model_stats_enable
 * first). Errors: AP_MODEL_EARG (T < 2, T > max_position_embeddings, token
 * outside the vocabulary), AP_MODEL_EUNSUP (sliding window < T). */
int ap_model_forward(ap_model *m, const int32_t *tokens, int n_windows, int T, int collect_stats, double *nll_sum,
                     int64_t *n_predicted, double *window_nll);

/* Logits of one window: out [T, vocab] (caller's host buffer). */
int ap_model_logits(ap_model *m, const int32_t *tokens, int T, float *out);

/* Backward of the mean LM loss of ONE window (mean NLL over its T-1
 * predictions) to the weights of every eligible layer: for each layer adds
 * sum_{kept} |dL/dW| to grad_abs_kept, |dL/dW| to grad_abs when enabled, and
 * increments grad_windows (ap_model_grad_enable first). *loss (may be NULL)
 * receives the window's mean NLL. Memory: the inputs of every block
 * (layers * T * hidden floats) plus one block's activations. */
int ap_model_backward_window(ap_model *m, const int32_t *tokens, int T, double *loss);

/* Optional observer of every eligible layer's weight gradient during
 * ap_model_backward_window: called once per layer per window with dL/dW
 * [rows, cols] (memory of the model's backend: host memory on CPU, valid
 * only during the call), before it is folded into the accumulators. Used by
 * the golden tests to compare signed gradients. fn NULL removes it. */
typedef void (*ap_grad_hook)(void *user, int layer_index, const apk_tensor *grad);
void ap_model_set_grad_hook(ap_model *m, ap_grad_hook fn, void *user);

/* ---- block-by-block API (sequential profiling) ------------------------------
 * hidden: F32 [n_windows * T, hidden_size] on the model's backend.
 * ap_model_embed allocates *hidden (release with apk_tensor_free(ap_model_ctx(m), hidden)).
 * ap_model_block_forward runs block `block` in place over every window, with
 * the statistics hook for that block's layers when collect_stats.
 * ap_model_head_nll applies the final norm and lm_head and adds NLL sums as
 * ap_model_forward does. */
int ap_model_embed(ap_model *m, const int32_t *tokens, int n_windows, int T, apk_tensor *hidden);
int ap_model_block_forward(ap_model *m, int block, apk_tensor *hidden, int T, int collect_stats);
int ap_model_head_nll(ap_model *m, const apk_tensor *hidden, const int32_t *tokens, int T, double *nll_sum,
                      int64_t *n_predicted, double *window_nll);

/* Message of the last failure of this model (never NULL). */
const char *ap_model_error(const ap_model *m);

#ifdef __cplusplus
}
#endif
#endif
