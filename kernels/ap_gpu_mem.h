/*
 * ap_gpu_mem.h - how much GPU memory a model needs, and the plan that fits a
 * --gpu-mem-limit: all weights resident, or weights streamed from pinned host
 * memory one transformer block at a time (kernels/ap_cuda.h, apk_wstream).
 *
 * Host-only arithmetic (no CUDA), header-only so that the planner is tested
 * on the CPU (tests/kernels_shared) and usable from model code in any build.
 *
 * What is counted (bytes), mirroring pruner-svc/model/model.c's buffers with
 * `windows` windows of T tokens processed together (N = windows * T rows):
 *  - per block: the eligible linear layers' F32 working weights, their
 *    original weights in the checkpoint dtype, their mask bits, norms;
 *  - outside the blocks: embedding and lm_head (F32; once when tied) and the
 *    final norm;
 *  - forward activations: hidden state, residual copies, normed input, q, k,
 *    v (and their rotated/normed copies), attention output, lse, gate, up,
 *    SwiGLU output, MLP output, a chunk of logits (~32 MiB as model.c);
 *  - backward (when asked): gradient buffers of one block, one dW of the
 *    largest layer, and the block-input checkpoints (layers * N * C floats);
 *  - statistics: one F64 column sum per eligible layer and, when per-weight
 *    gradients are kept, an F32 |dL/dW| per weight;
 *  - fixed: the cuBLAS workspace and the backend's scratch (APK_GPU_FIXED).
 * Streaming keeps 2 blocks of originals + masks in flight (double buffer)
 * and ONE block of F32 working weights instead of all of them; statistics
 * stay resident (they are small for column sums; per-weight gradients would
 * have to be streamed back, which the plan refuses).
 */
#ifndef AP_GPU_MEM_H
#define AP_GPU_MEM_H

#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#ifdef __cplusplus
extern "C" {
#endif

/* cuBLAS workspace (32 MiB) + backend scratch for conversions and
 * reductions (64 MiB), held once per context. */
#define APK_GPU_FIXED ((uint64_t)96 << 20)

typedef struct apk_mem_model {
  int64_t hidden, intermediate, layers, heads, kv_heads, head_dim, vocab;
  int orig_bytes;   /* bytes per original weight: 4 (F32), 2 (BF16/F16) */
  int tied;         /* lm_head shares the embedding */
  int qk_norm;      /* Qwen3 q_norm / k_norm buffers */
} apk_mem_model;

typedef struct apk_mem_estimate {
  uint64_t block_weights;   /* one block: F32 working + originals + masks + norms */
  uint64_t block_stream;    /* one block as streamed: originals + masks + norms */
  uint64_t block_working;   /* one block's F32 working weights */
  uint64_t outer_weights;   /* embedding, lm_head, final norm */
  uint64_t activations;     /* forward buffers for N rows */
  uint64_t backward;        /* backward buffers and checkpoints (0 without backward) */
  uint64_t statistics;      /* column sums (+ per-weight gradient sums) */
  uint64_t peak_resident;   /* everything on the GPU */
  uint64_t peak_streaming;  /* blocks streamed, double-buffered */
} apk_mem_estimate;

/* Eligible weights of one block (q, k, v, o, gate, up, down). */
static inline uint64_t apk_mem_block_params(const apk_mem_model *m) {
  uint64_t C = (uint64_t)m->hidden, I = (uint64_t)m->intermediate, qd = (uint64_t)(m->heads * m->head_dim),
           kvd = (uint64_t)(m->kv_heads * m->head_dim);
  return C * qd + 2 * C * kvd + qd * C + 3 * C * I;
}

/* Fills *e for `windows` windows of T tokens; backward != 0 adds the
 * backward pass, per_weight_grad != 0 the per-weight |dL/dW| sums.
 * Returns 0, or -1 for a model with a non-positive size. */
static inline int apk_mem_estimate_compute(const apk_mem_model *m, int64_t windows, int64_t T, int backward,
                                           int per_weight_grad, apk_mem_estimate *e) {
  if (!m || !e || m->hidden <= 0 || m->intermediate <= 0 || m->layers <= 0 || m->heads <= 0 || m->kv_heads <= 0 ||
      m->head_dim <= 0 || m->vocab <= 0 || windows <= 0 || T <= 0 || (m->orig_bytes != 2 && m->orig_bytes != 4))
    return -1;
  uint64_t C = (uint64_t)m->hidden, I = (uint64_t)m->intermediate, V = (uint64_t)m->vocab,
           L = (uint64_t)m->layers, N = (uint64_t)(windows * T), qd = (uint64_t)(m->heads * m->head_dim),
           kvd = (uint64_t)(m->kv_heads * m->head_dim), H = (uint64_t)m->heads, KVH = (uint64_t)m->kv_heads;
  uint64_t P = apk_mem_block_params(m);
  uint64_t norms = 4 * (2 * C + (m->qk_norm ? 2 * (uint64_t)m->head_dim : 0));
  uint64_t masks = (P + 7) / 8;
  e->block_working = 4 * P;
  e->block_stream = (uint64_t)m->orig_bytes * P + masks + norms;
  e->block_weights = e->block_working + e->block_stream;
  e->outer_weights = 4 * (V * C * (m->tied ? 1 : 2) + C);
  uint64_t logit_rows = ((uint64_t)32 << 20) / (V * 4);
  if (logit_rows < 1) logit_rows = 1;
  if (logit_rows > N) logit_rows = N;
  uint64_t f = 0;
  f += 2 * 4 * N;                           /* tokens, targets */
  f += 4 * N * C * 7;                       /* hid, xc, xn1, attp, h, xn2, mlp (+hn below) */
  f += 4 * N * C;                           /* hn */
  f += 4 * N * 3;                           /* rstd1, rstd2, hrstd */
  f += 4 * N * (3 * qd + 4 * kvd);          /* q, qr, att, k, v, kr (+1 spare kv) */
  if (m->qk_norm) f += 4 * N * (qd + kvd + H + KVH);
  f += 4 * H * N;                           /* lse */
  f += 4 * N * I * 3;                       /* gate, up, act */
  f += 4 * logit_rows * (V + 1);            /* logits, nll */
  e->activations = f;
  uint64_t b = 0;
  if (backward) {
    uint64_t maxw = C * I > C * qd ? C * I : C * qd;
    b += 4 * N * C * 2;                     /* dres, dxn */
    b += 4 * N * (2 * qd + 3 * kvd);        /* dqr, datt, dkr, dv (+dk) */
    if (m->qk_norm) b += 4 * N * (qd + kvd);
    b += 4 * N * I * 3;                     /* dgate, dup, dact */
    b += 4 * maxw;                          /* dw */
    b += 4 * L * N * C;                     /* block-input checkpoints */
    b += 4 * H * N;                         /* attention delta scratch */
  }
  e->backward = b;
  uint64_t s = 8 * L * (4 * C + 2 * qd + I); /* column sums of every eligible layer's input */
  if (per_weight_grad) s += 4 * L * P;
  e->statistics = s;
  uint64_t common = e->outer_weights + e->activations + e->backward + e->statistics + APK_GPU_FIXED;
  e->peak_resident = common + L * e->block_weights;
  e->peak_streaming = common + 2 * e->block_stream + e->block_working;
  return 0;
}

/* Chooses how to run under `limit` bytes (0 = no limit): *streaming = 0 when
 * everything fits resident, else 1; *windows = the most windows (up to
 * max_windows) processed together that fit. Returns 0, or -1 when not even
 * one window fits streamed (or a per-weight gradient plan would not fit: those
 * sums live on the GPU). */
static inline int apk_mem_plan(const apk_mem_model *m, int64_t T, int backward, int per_weight_grad, uint64_t limit,
                               int64_t max_windows, int *streaming, int64_t *windows) {
  apk_mem_estimate e;
  if (max_windows < 1) max_windows = 1;
  for (int mode = 0; mode < 2; mode++) {
    if (apk_mem_estimate_compute(m, 1, T, backward, per_weight_grad, &e)) return -1;
    uint64_t one = mode ? e.peak_streaming : e.peak_resident;
    if (limit && one > limit) continue;
    int64_t lo = 1, hi = max_windows;
    while (lo < hi) { /* largest w that fits: estimates grow monotonically in w */
      int64_t mid = lo + (hi - lo + 1) / 2;
      apk_mem_estimate_compute(m, mid, T, backward, per_weight_grad, &e);
      uint64_t need = mode ? e.peak_streaming : e.peak_resident;
      if (!limit || need <= limit) lo = mid;
      else hi = mid - 1;
    }
    *streaming = mode;
    *windows = lo;
    return 0;
  }
  return -1;
}

/* Parses a size such as "40G", "40GiB", "512M", "1.5T", "123456" (bytes);
 * K/M/G/T are powers of 1024, an optional "i" and "B" are accepted.
 * Returns 0, or -1 on anything else (empty, negative, junk, overflow). */
static inline int apk_parse_mem_size(const char *s, uint64_t *out) {
  if (!s || !*s || *s == '-' || *s == '+') return -1;
  char *end = NULL;
  double v = strtod(s, &end);
  if (end == s || !(v >= 0)) return -1;
  double mul = 1;
  switch (*end) {
    case 'k': case 'K': mul = 1024.0; end++; break;
    case 'm': case 'M': mul = 1024.0 * 1024; end++; break;
    case 'g': case 'G': mul = 1024.0 * 1024 * 1024; end++; break;
    case 't': case 'T': mul = 1024.0 * 1024 * 1024 * 1024; end++; break;
    default: break;
  }
  if (mul > 1 && *end == 'i') end++;
  if (*end == 'B' || *end == 'b') end++;
  if (*end) return -1;
  double bytes = v * mul;
  if (bytes >= 18446744073709549568.0) return -1;
  *out = (uint64_t)bytes;
  return 0;
}

#ifdef __cplusplus
}
#endif
#endif
