/*
 * ap_backend.h - what a kernels backend implements (internal to kernels/).
 *
 * ap_kernels.c validates tensors and shapes once, then calls these functions
 * with raw device pointers and plain dimensions. A backend fills one
 * apk_backend_ops table: CPU in kernels/cpu/cpu_ops.c, CUDA in kernels/cuda.
 * `state` is the backend's per-context state (a CUDA stream and cuBLAS
 * handle, for instance) created by init and released by shutdown.
 *
 * Semantics of each entry = the op of the same name in ap_kernels.h, with
 * shapes already checked. Every entry returns APK_OK or a negative APK_ code;
 * errors of asynchronous work may surface at the next sync.
 */
#ifndef AP_BACKEND_H
#define AP_BACKEND_H

#include "ap_kernels.h"

typedef struct apk_backend_ops {
  const char *name;
  int (*init)(int device, void **state);
  void (*shutdown)(void *state);
  int (*sync)(void *state);

  int (*alloc)(void *state, size_t bytes, void **out);
  void (*release)(void *state, void *ptr);
  int (*upload)(void *state, void *dst, const void *host, size_t bytes);
  int (*download)(void *state, void *host, const void *src, size_t bytes);
  int (*memzero)(void *state, void *dst, size_t bytes);
  int (*memcopy)(void *state, void *dst, const void *src, size_t bytes);

  /* tokens[N] in [0,V) already checked by the caller where possible; the
   * backend returns APK_ERANGE if it sees one outside. */
  int (*embedding_forward)(void *state, float *out, const int32_t *tokens, const float *table, int64_t N,
                           int64_t C, int64_t V);
  int (*rmsnorm_forward)(void *state, float *out, float *rstd, const float *inp, const float *weight, int64_t N,
                         int64_t C, float eps);
  int (*rmsnorm_backward)(void *state, float *dinp, const float *dout, const float *inp, const float *weight,
                          const float *rstd, int64_t N, int64_t C);
  int (*linear_forward)(void *state, float *out, const float *inp, const float *weight, const float *bias,
                        int64_t N, int64_t IC, int64_t OC);
  int (*linear_backward)(void *state, float *dinp, float *dweight, float *dbias, const float *dout,
                         const float *inp, const float *weight, int64_t N, int64_t IC, int64_t OC);
  /* x[N, H, D]; position of row n is n % T; tables [T, D/2]; sign +1 forward, -1 backward. */
  int (*rope)(void *state, float *out, const float *inp, const float *cos_t, const float *sin_t, int64_t N,
              int64_t H, int64_t D, int64_t T, int sign);
  int (*attention_forward)(void *state, float *out, float *lse, const float *q, const float *k, const float *v,
                           int64_t B, int64_t T, int64_t H, int64_t KVH, int64_t D);
  int (*attention_backward)(void *state, float *dq, float *dk, float *dv, const float *dout, const float *q,
                            const float *k, const float *v, const float *out, const float *lse, int64_t B,
                            int64_t T, int64_t H, int64_t KVH, int64_t D);
  int (*swiglu_forward)(void *state, float *out, const float *gate, const float *up, int64_t n);
  int (*swiglu_backward)(void *state, float *dgate, float *dup, const float *dout, const float *gate,
                         const float *up, int64_t n);
  int (*add_inplace)(void *state, float *a, const float *b, int64_t n);
  int (*crossentropy_forward)(void *state, float *nll, const float *logits, const int32_t *targets, int64_t N,
                              int64_t V);
  int (*crossentropy_backward)(void *state, float *dlogits, const float *logits, const int32_t *targets,
                               int64_t N, int64_t V, float scale);
  /* sums (host) [B] += row sums of nll [B, T] in double. */
  int (*nll_window_sums)(void *state, double *sums, const float *nll, int64_t B, int64_t T);

  int (*colsumsq_accumulate)(void *state, double *acc, const float *inp, int64_t N, int64_t C);
  /* acc_dtype APK_F32 or APK_F64. */
  int (*absgrad_accumulate)(void *state, void *acc, apk_dtype acc_dtype, const float *grad, int64_t n);
  /* *sum (host) = sum of |x[i]| over i with mask bit 0 (mask may be NULL). */
  int (*abs_sum_kept)(void *state, double *sum, const float *x, const uint8_t *mask, int64_t n);
  /* orig_dtype APK_F32, APK_F16 or APK_BF16; mask may be NULL (restore). */
  int (*mask_apply)(void *state, float *working, const void *orig, apk_dtype orig_dtype, const uint8_t *mask,
                    int64_t n);
} apk_backend_ops;

/* The CPU backend (always present). */
const apk_backend_ops *apk_cpu_backend(void);
/* The CUDA backend, defined in kernels/cuda when built with APK_HAVE_CUDA. */
const apk_backend_ops *apk_cuda_backend(void);

/* The backend state (init's *state) behind a context, NULL for NULL. Lets
 * backend extensions (ap_cuda.h, ap_prune_gpu.h) that receive an apk_ctx find
 * their per-context state when several contexts are alive. */
void *apk_ctx_backend_state(apk_ctx *ctx);

/* Records a message for apk_last_error() and returns rc (for `return apk_fail(...)`). */
int apk_fail(int rc, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;

#endif
