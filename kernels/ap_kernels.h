/*
 * ap_kernels.h - the compute engine: tensors on a backend, a context
 * (backend + stream), and the ops the transformer and the pruning statistics
 * need, each dispatched to the tensor's backend.
 *
 * Backends: APK_CPU (kernels/cpu: OpenBLAS SGEMM for matrix products, OpenMP
 * loops elsewhere) and APK_CUDA (kernels/cuda, written against
 * kernels/ap_backend.h). Element math lives in ap_math.h, shared by both.
 *
 * Conventions
 *  - Tensors are dense, row-major, contiguous. `shape[0]` is the slowest dim.
 *    Token rows are laid out window-major: row = window * T + position.
 *  - Every op checks backend, dtype and shapes of its arguments and returns
 *    APK_EINVAL (with a message through apk_last_error()) when they do not fit;
 *    it never aborts on bad arguments.
 *  - Backward ops ACCUMULATE (+=) into gradient outputs unless said otherwise,
 *    as llm.c does; callers zero them first (apk_zero).
 *  - Ops are asynchronous on the context's stream where the backend has one;
 *    apk_download and apk_ctx_sync synchronise.
 *  - Activations and weights computed in F32; statistics accumulate in F64.
 *
 * Tolerances (CPU backend, checked by tests/kernels against double-precision
 * references): element ops within 1e-6 relative; reductions (RMSNorm,
 * softmax, attention, cross-entropy, SGEMM with K up to 4096) within
 * ~1e-5 relative to the magnitude of the terms summed; F64 accumulators
 * (column sums of squares) within 1e-12 relative. A GPU backend is expected
 * to match the CPU one within 1e-4 relative on F32 data.
 */
#ifndef AP_KERNELS_H
#define AP_KERNELS_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

enum {
  APK_OK = 0,
  APK_EINVAL = -1,  /* wrong shape, dtype, backend or argument */
  APK_ENOMEM = -2,  /* allocation failed */
  APK_ENOTSUP = -3, /* backend not compiled in / op not available */
  APK_EDEVICE = -4, /* backend runtime error (CUDA error...) */
  APK_ERANGE = -5   /* data out of range (token id >= vocab...) */
};

typedef enum { APK_CPU = 0, APK_CUDA = 1 } apk_backend_kind;

typedef enum { APK_F32 = 0, APK_F16, APK_BF16, APK_F64, APK_I32, APK_U8 } apk_dtype;

#define APK_MAX_DIMS 4

typedef struct apk_tensor {
  apk_backend_kind backend;
  apk_dtype dtype;
  int ndim;
  int64_t shape[APK_MAX_DIMS];
  void *data;  /* device pointer of `backend` (host memory for APK_CPU) */
  int owned;   /* 1 when apk_tensor_free must release `data` */
} apk_tensor;

typedef struct apk_ctx apk_ctx;

/* Size in bytes of one element of `dt`. */
size_t apk_dtype_size(apk_dtype dt);
const char *apk_dtype_name(apk_dtype dt);
const char *apk_strerror(int rc);

/* Message of the last failure in this thread (static storage, never NULL). */
const char *apk_last_error(void);

/* ---- context ----------------------------------------------------------------
 * apk_ctx_create: backend APK_CPU (device ignored; threads = OpenMP threads,
 * 0 = OpenMP default) or APK_CUDA (device index). *out is owned by the caller,
 * released with apk_ctx_destroy. Errors: APK_ENOTSUP when the backend is not
 * compiled in, APK_EDEVICE, APK_ENOMEM. */
int apk_ctx_create(apk_backend_kind backend, int device, apk_ctx **out);
void apk_ctx_destroy(apk_ctx *ctx);
apk_backend_kind apk_ctx_backend(const apk_ctx *ctx);
/* Waits until all queued work on the context finished. */
int apk_ctx_sync(apk_ctx *ctx);

/* ---- tensors ----------------------------------------------------------------
 * apk_tensor_alloc: allocates uninitialised storage on the context's backend;
 * the tensor owns it and apk_tensor_free releases it (free of a view or of a
 * zeroed struct is a no-op apart from clearing it). */
int apk_tensor_alloc(apk_ctx *ctx, apk_tensor *t, apk_dtype dt, int ndim, const int64_t *shape);
int apk_tensor_alloc2(apk_ctx *ctx, apk_tensor *t, apk_dtype dt, int64_t d0, int64_t d1);
void apk_tensor_free(apk_ctx *ctx, apk_tensor *t);
int64_t apk_tensor_numel(const apk_tensor *t);
size_t apk_tensor_bytes(const apk_tensor *t);

/* A non-owning view over existing memory (e.g. an mmap'd weight). */
apk_tensor apk_view(apk_backend_kind backend, apk_dtype dt, void *data, int ndim, const int64_t *shape);
apk_tensor apk_view2(apk_backend_kind backend, apk_dtype dt, void *data, int64_t d0, int64_t d1);
/* Rows [row0, row0 + nrows) of `t` along dim 0, same trailing dims. */
apk_tensor apk_view_rows(const apk_tensor *t, int64_t row0, int64_t nrows);
/* The same memory seen with another shape of the same element count;
 * returns a tensor with data NULL when the counts differ. */
apk_tensor apk_reshape(const apk_tensor *t, int ndim, const int64_t *shape);

/* Host <-> tensor copies of exactly apk_tensor_bytes(t) bytes. */
int apk_upload(apk_ctx *ctx, apk_tensor *t, const void *host);
int apk_download(apk_ctx *ctx, void *host, const apk_tensor *t);
int apk_zero(apk_ctx *ctx, apk_tensor *t);
/* dst = src, same dtype and element count. */
int apk_copy(apk_ctx *ctx, apk_tensor *dst, const apk_tensor *src);

/* ---- ops: transformer ------------------------------------------------------ */

/* out[N,C] = table[tokens[n], :]; tokens I32 [N], table F32 [V,C].
 * APK_ERANGE when a token is outside [0, V). */
int apk_embedding_forward(apk_ctx *ctx, apk_tensor *out, const apk_tensor *tokens, const apk_tensor *table);

/* out[N,C] = inp / sqrt(mean(inp^2) + eps) * weight; rstd[N] (F32, may be
 * NULL) receives 1/sqrt(mean + eps) for the backward pass. out may alias inp.
 * Also used per head (N = tokens*heads, C = head_dim) for Qwen3 q_norm/k_norm. */
int apk_rmsnorm_forward(apk_ctx *ctx, apk_tensor *out, apk_tensor *rstd, const apk_tensor *inp,
                        const apk_tensor *weight, float eps);
/* dinp += d(out)/d(inp)^T dout. Needs rstd from the forward pass. The weight
 * gradient is not computed (norm weights are never pruned). */
int apk_rmsnorm_backward(apk_ctx *ctx, apk_tensor *dinp, const apk_tensor *dout, const apk_tensor *inp,
                         const apk_tensor *weight, const apk_tensor *rstd);

/* out[N,OC] = inp[N,IC] weight[OC,IC]^T + bias[OC] (bias may be NULL). */
int apk_linear_forward(apk_ctx *ctx, apk_tensor *out, const apk_tensor *inp, const apk_tensor *weight,
                       const apk_tensor *bias);
/* dinp[N,IC] += dout weight; dweight[OC,IC] += dout^T inp; dbias[OC] += sum_n dout.
 * Any of dinp, dweight, dbias may be NULL. */
int apk_linear_backward(apk_ctx *ctx, apk_tensor *dinp, apk_tensor *dweight, apk_tensor *dbias,
                        const apk_tensor *dout, const apk_tensor *inp, const apk_tensor *weight);

/* Rotary embedding on x[N, H, D] (N = windows*T, position = row % T) with
 * tables cos/sin [T, D/2] (apk_rope_tables). out may alias inp. */
int apk_rope_forward(apk_ctx *ctx, apk_tensor *out, const apk_tensor *inp, const apk_tensor *cos_t,
                     const apk_tensor *sin_t);
/* dinp = R(-angle) dout (overwrites; may alias dout). */
int apk_rope_backward(apk_ctx *ctx, apk_tensor *dinp, const apk_tensor *dout, const apk_tensor *cos_t,
                      const apk_tensor *sin_t);

typedef struct apk_rope_scaling {
  int type;                      /* 0 none, 1 llama3 */
  double factor;                 /* llama3: "factor" */
  double low_freq_factor;        /* llama3: "low_freq_factor" */
  double high_freq_factor;       /* llama3: "high_freq_factor" */
  double original_max_position;  /* llama3: "original_max_position_embeddings" */
} apk_rope_scaling;

/* Host helper: cos/sin tables [T, D/2] (row-major, F32) for positions 0..T-1,
 * inv_freq[i] = theta^(-2i/D), adjusted per HF's llama3 rule when
 * scaling->type == 1 (scaling may be NULL). Angles computed in double. */
void apk_rope_tables(float *cos_out, float *sin_out, int T, int D, double theta, const apk_rope_scaling *scaling);

/* Causal grouped-query attention, softmax(q k^T / sqrt(D)) v, per window.
 * q, out [B,T,H,D]; k, v [B,T,KVH,D] with H % KVH == 0 (query head h reads kv
 * head h / (H/KVH)). lse [B,H,T] (F32, may be NULL) keeps the log-sum-exp of
 * each score row for the backward pass. Memory: no T x T matrix is ever
 * materialised; the CPU vector path keeps 4 score rows (4 T floats) per
 * thread plus the keys packed transposed (B KVH D T floats per call). */
int apk_attention_forward(apk_ctx *ctx, apk_tensor *out, apk_tensor *lse, const apk_tensor *q,
                          const apk_tensor *k, const apk_tensor *v);
/* dq, dk, dv += gradients of the attention output wrt q, k, v, given dout,
 * the forward inputs, its output and lse. */
int apk_attention_backward(apk_ctx *ctx, apk_tensor *dq, apk_tensor *dk, apk_tensor *dv, const apk_tensor *dout,
                           const apk_tensor *q, const apk_tensor *k, const apk_tensor *v, const apk_tensor *out,
                           const apk_tensor *lse);

/* out = silu(gate) * up, all [N, I]. out may alias gate or up. */
int apk_swiglu_forward(apk_ctx *ctx, apk_tensor *out, const apk_tensor *gate, const apk_tensor *up);
/* dgate = dout * up * silu'(gate), dup = dout * silu(gate) (overwrite).
 * dgate may alias gate and dup may alias up (computed element by element). */
int apk_swiglu_backward(apk_ctx *ctx, apk_tensor *dgate, apk_tensor *dup, const apk_tensor *dout,
                        const apk_tensor *gate, const apk_tensor *up);

/* a += b, same shape, F32. */
int apk_add_inplace(apk_ctx *ctx, apk_tensor *a, const apk_tensor *b);

/* nll[n] = logsumexp(logits[n,:]) - logits[n, targets[n]]; targets I32 [N],
 * a negative target marks a position that predicts nothing: nll 0.
 * APK_ERANGE when a target is >= V. */
int apk_crossentropy_forward(apk_ctx *ctx, apk_tensor *nll, const apk_tensor *logits, const apk_tensor *targets);
/* dlogits[n,:] = scale * (softmax(logits[n,:]) - onehot(targets[n])), rows
 * with negative targets get 0 (overwrites; dlogits may alias logits). For the
 * mean loss over M predicted tokens use scale = 1/M. */
int apk_crossentropy_backward(apk_ctx *ctx, apk_tensor *dlogits, const apk_tensor *logits,
                              const apk_tensor *targets, float scale);
/* Host result: sums[b] += sum over t of nll[b, t] (in F64) for nll viewed as
 * [B, T] (shape [B*T] or [B,T] with the given B). Synchronises. */
int apk_nll_window_sums(apk_ctx *ctx, double *sums, const apk_tensor *nll, int64_t n_windows);

/* ---- ops: pruning statistics and masks ----------------------------------- */

/* acc[j] += sum_n inp[n,j]^2; acc F64 [C], inp F32 [N,C] (the input of a
 * linear layer). sqrt(acc[j]) is Wanda's ||X_j||_2. */
int apk_colsumsq_accumulate(apk_ctx *ctx, apk_tensor *acc, const apk_tensor *inp);
/* acc += |grad| elementwise; acc F32 or F64, grad F32, same element count. */
int apk_absgrad_accumulate(apk_ctx *ctx, apk_tensor *acc, const apk_tensor *grad);
/* *sum = sum over the elements kept by mask (bit 0) of |x|, in F64; mask U8
 * as for apk_mask_apply or NULL (every element). Host result; synchronises.
 * Used for the mean gradient magnitude over a layer's surviving weights. */
int apk_abs_sum_kept(apk_ctx *ctx, double *sum, const apk_tensor *x, const apk_tensor *mask);
/* working = orig where kept, 0 where pruned (mask bit 1, see ap_math.h).
 * orig F32, F16 or BF16 with the same element count as working (F32);
 * mask U8 of at least ceil(n/8) bytes, or NULL: restore working = orig. */
int apk_mask_apply(apk_ctx *ctx, apk_tensor *working, const apk_tensor *orig, const apk_tensor *mask);
/* working = orig converted to F32 (same as apk_mask_apply with no mask). */
int apk_mask_restore(apk_ctx *ctx, apk_tensor *working, const apk_tensor *orig);

#ifdef __cplusplus
}
#endif
#endif
