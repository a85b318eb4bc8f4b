/*
 * bench_gpu.c - GPU benchmark of the kernels on a model folder (e.g. the
 * random ~1B model of gen_model): forward, backward (the op sequence of one
 * block-wise gradient pass), profiling (forward + column statistics) and one
 * pruning iteration (Wanda norms, row selection to 50%, mask apply for every
 * layer), resident or streamed block by block from pinned host memory.
 *
 * Baseline measured in the same run: cuBLAS's own GEMM rate on the model's
 * largest projection shape through apk_linear_forward; the forward's GEMM
 * FLOP rate is reported as a fraction of it.
 *
 * usage: bench_gpu MODEL_DIR [--windows W] [--ctx T] [--iters K]
 *                  [--gpu-mem-limit SIZE] [--stream] [--json FILE]
 * GEMM precision from AP_CUDA_GEMM (f32 default, tf32, bf16, f16).
 * With --gpu-mem-limit the planner (ap_gpu_mem.h) picks resident or streamed
 * and the window count; the backend refuses allocations past the limit.
 * Exit 0 on success, 1 on failure, 77 without a GPU.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "ap_cuda.h"
#include "ap_gpu_mem.h"
#include "ap_kernels.h"
#include "ap_prune_gpu.h"
#include "hf_config.h"
#include "safetensors.h"

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec * 1e-9;
}

#define K(call)                                                                                   \
  do {                                                                                            \
    int rc_ = (call);                                                                             \
    if (rc_) {                                                                                    \
      fprintf(stderr, "bench_gpu: %s failed (%d): %s\n", #call, rc_, apk_last_error());          \
      exit(1);                                                                                    \
    }                                                                                             \
  } while (0)

enum { NL = 7 };
typedef struct {
  apk_tensor orig[NL], work[NL], ln1, ln2; /* resident mode */
  apk_tensor acc[NL];                       /* F64 column sums of each layer's input */
  apk_tensor gacc[NL];                      /* F32 sums of |dL/dW| (resident mode) */
  const void *host[NL];                              /* streamed mode: host originals */
  size_t off[NL];                                    /* offsets inside the packed block */
  int64_t rows[NL], cols[NL];
} block;

static apk_ctx *ctx;
static ap_hf_config cfg;
static block *blk;
static int streaming;
static apk_dtype odt;
static void *packed;      /* streamed: all blocks packed, pinned */
static size_t block_bytes;
static apk_wstream *ws;

typedef struct {
  apk_tensor x, xn, q, k, v, att, lse, h, g, u, a, mlp, rstd1, rstd2, ct, st, logits, nll, tok, tgt, dW;
  apk_tensor dx, dxn, dq, dk, dv, datt, dg, du, da;
} acts;

static apk_tensor A2(int64_t r, int64_t c) {
  apk_tensor t;
  K(apk_tensor_alloc2(ctx, &t, APK_F32, r, c));
  return t;
}

static apk_dtype to_apk(ap_dtype d) { return d == AP_BF16 ? APK_BF16 : d == AP_F16 ? APK_F16 : APK_F32; }

/* out = inp W_j^T with layer j of block b, resident (F32 working) or streamed (low precision, in the slot) */
static void lin(int b, int j, void *slot, apk_tensor *out, const apk_tensor *inp) {
  block *B = &blk[b];
  if (!streaming) {
    K(apk_linear_forward(ctx, out, inp, &B->work[j], NULL));
  } else {
    int64_t N = apk_tensor_numel(inp) / B->cols[j];
    K(apk_cuda_linear_lowp(ctx, out->data, inp->data, (char *)slot + B->off[j], odt, NULL, N, B->cols[j], B->rows[j]));
  }
}

static void *block_begin(int b) {
  if (!streaming) return NULL;
  int L = cfg.num_hidden_layers;
  if (b + 1 < L) K(apk_wstream_prefetch(ws, b + 1, (char *)packed + (size_t)(b + 1) * block_bytes, block_bytes));
  void *dev = NULL;
  K(apk_wstream_acquire(ws, b, &dev));
  return dev;
}

static void block_end(int b) {
  if (streaming) K(apk_wstream_release(ws, b));
}

/* One forward over N = W*T rows; stats: column sums of every layer input. */
static void forward(acts *a, int64_t W, int64_t T, int stats, int64_t *vq) {
  int64_t N = W * T, H = cfg.num_attention_heads, KVH = cfg.num_key_value_heads, D = cfg.head_dim;
  int L = cfg.num_hidden_layers;
  if (streaming) K(apk_wstream_prefetch(ws, 0, packed, block_bytes));
  for (int b = 0; b < L; b++) {
    void *slot = block_begin(b);
    apk_tensor ln1 = blk[b].ln1, ln2 = blk[b].ln2;
    K(apk_rmsnorm_forward(ctx, &a->xn, &a->rstd1, &a->x, &ln1, 1e-5f));
    if (stats) K(apk_colsumsq_accumulate(ctx, &blk[b].acc[0], &a->xn));
    lin(b, 0, slot, &a->q, &a->xn);
    lin(b, 1, slot, &a->k, &a->xn);
    lin(b, 2, slot, &a->v, &a->xn);
    apk_tensor q3 = apk_reshape(&a->q, 3, (int64_t[]){N, H, D}), k3 = apk_reshape(&a->k, 3, (int64_t[]){N, KVH, D});
    K(apk_rope_forward(ctx, &q3, &q3, &a->ct, &a->st));
    K(apk_rope_forward(ctx, &k3, &k3, &a->ct, &a->st));
    apk_tensor q4 = apk_reshape(&a->q, 4, (int64_t[]){W, T, H, D}), k4 = apk_reshape(&a->k, 4, (int64_t[]){W, T, KVH, D}),
               v4 = apk_reshape(&a->v, 4, (int64_t[]){W, T, KVH, D}), o4 = apk_reshape(&a->att, 4, (int64_t[]){W, T, H, D});
    K(apk_attention_forward(ctx, &o4, &a->lse, &q4, &k4, &v4));
    if (stats) K(apk_colsumsq_accumulate(ctx, &blk[b].acc[3], &a->att));
    lin(b, 3, slot, &a->h, &a->att);
    K(apk_add_inplace(ctx, &a->x, &a->h));
    K(apk_rmsnorm_forward(ctx, &a->xn, &a->rstd2, &a->x, &ln2, 1e-5f));
    if (stats) K(apk_colsumsq_accumulate(ctx, &blk[b].acc[4], &a->xn));
    lin(b, 4, slot, &a->g, &a->xn);
    lin(b, 5, slot, &a->u, &a->xn);
    K(apk_swiglu_forward(ctx, &a->a, &a->g, &a->u));
    if (stats) K(apk_colsumsq_accumulate(ctx, &blk[b].acc[6], &a->a));
    lin(b, 6, slot, &a->mlp, &a->a);
    K(apk_add_inplace(ctx, &a->x, &a->mlp));
    block_end(b);
  }
  *vq = N;
}

/* The backward op sequence of every block (shapes and data flow of the real
 * pass; gradients of the weights folded into |dL/dW| accumulators). */
static void backward(acts *a, int64_t W, int64_t T) {
  int64_t N = W * T, H = cfg.num_attention_heads, KVH = cfg.num_key_value_heads, D = cfg.head_dim;
  int L = cfg.num_hidden_layers;
  for (int b = L - 1; b >= 0; b--) {
    block *B = &blk[b];
    apk_tensor dW;
#define DW(j) (dW = apk_view2(APK_CUDA, APK_F32, a->dW.data, B->rows[j], B->cols[j]), &dW)
#define ACC(j) K(apk_absgrad_accumulate(ctx, &B->gacc[j], DW(j)))
    K(apk_zero(ctx, &a->da));
    K(apk_zero(ctx, &a->dW));
    K(apk_linear_backward(ctx, &a->da, DW(6), NULL, &a->dx, &a->a, &B->work[6]));
    ACC(6);
    K(apk_swiglu_backward(ctx, &a->dg, &a->du, &a->da, &a->g, &a->u));
    K(apk_zero(ctx, &a->dxn));
    K(apk_zero(ctx, &a->dW));
    K(apk_linear_backward(ctx, &a->dxn, DW(4), NULL, &a->dg, &a->xn, &B->work[4]));
    ACC(4);
    K(apk_zero(ctx, &a->dW));
    K(apk_linear_backward(ctx, &a->dxn, DW(5), NULL, &a->du, &a->xn, &B->work[5]));
    ACC(5);
    K(apk_rmsnorm_backward(ctx, &a->dx, &a->dxn, &a->x, &B->ln2, &a->rstd2));
    K(apk_zero(ctx, &a->datt));
    K(apk_zero(ctx, &a->dW));
    K(apk_linear_backward(ctx, &a->datt, DW(3), NULL, &a->dx, &a->att, &B->work[3]));
    ACC(3);
    apk_tensor q4 = apk_reshape(&a->q, 4, (int64_t[]){W, T, H, D}), k4 = apk_reshape(&a->k, 4, (int64_t[]){W, T, KVH, D}),
               v4 = apk_reshape(&a->v, 4, (int64_t[]){W, T, KVH, D}), o4 = apk_reshape(&a->att, 4, (int64_t[]){W, T, H, D}),
               do4 = apk_reshape(&a->datt, 4, (int64_t[]){W, T, H, D}), dq4 = apk_reshape(&a->dq, 4, (int64_t[]){W, T, H, D}),
               dk4 = apk_reshape(&a->dk, 4, (int64_t[]){W, T, KVH, D}), dv4 = apk_reshape(&a->dv, 4, (int64_t[]){W, T, KVH, D});
    K(apk_zero(ctx, &a->dq));
    K(apk_zero(ctx, &a->dk));
    K(apk_zero(ctx, &a->dv));
    K(apk_attention_backward(ctx, &dq4, &dk4, &dv4, &do4, &q4, &k4, &v4, &o4, &a->lse));
    apk_tensor dq3 = apk_reshape(&a->dq, 3, (int64_t[]){N, H, D}), dk3 = apk_reshape(&a->dk, 3, (int64_t[]){N, KVH, D});
    K(apk_rope_backward(ctx, &dq3, &dq3, &a->ct, &a->st));
    K(apk_rope_backward(ctx, &dk3, &dk3, &a->ct, &a->st));
    K(apk_zero(ctx, &a->dxn));
    const apk_tensor *dd[3] = {&a->dq, &a->dk, &a->dv};
    for (int j = 0; j < 3; j++) {
      K(apk_zero(ctx, &a->dW));
      K(apk_linear_backward(ctx, &a->dxn, DW(j), NULL, dd[j], &a->xn, &B->work[j]));
      ACC(j);
    }
    K(apk_rmsnorm_backward(ctx, &a->dx, &a->dxn, &a->x, &B->ln1, &a->rstd1));
#undef DW
#undef ACC
  }
}

int main(int argc, char **argv) {
  if (argc < 2 || argv[1][0] == '-') {
    fprintf(stderr, "usage: bench_gpu MODEL_DIR [--windows W] [--ctx T] [--iters K] [--gpu-mem-limit SIZE] "
                    "[--stream] [--json FILE]\n");
    return 1;
  }
  if (apk_cuda_device_count() == 0) {
    printf("bench_gpu: no CUDA device: skipped\n");
    return 77;
  }
  const char *dir = argv[1], *json = NULL;
  int64_t W = 4, T = 1024;
  int iters = 3, force_stream = 0;
  uint64_t limit = 0;
  for (int i = 2; i < argc; i++) {
    if (!strcmp(argv[i], "--stream")) force_stream = 1;
    else if (i + 1 < argc && !strcmp(argv[i], "--windows")) W = atoll(argv[++i]);
    else if (i + 1 < argc && !strcmp(argv[i], "--ctx")) T = atoll(argv[++i]);
    else if (i + 1 < argc && !strcmp(argv[i], "--iters")) iters = atoi(argv[++i]);
    else if (i + 1 < argc && !strcmp(argv[i], "--json")) json = argv[++i];
    else if (i + 1 < argc && !strcmp(argv[i], "--gpu-mem-limit")) {
      if (apk_parse_mem_size(argv[++i], &limit)) {
        fprintf(stderr, "bench_gpu: --gpu-mem-limit: not a size: %s\n", argv[i]);
        return 1;
      }
    } else {
      fprintf(stderr, "bench_gpu: unknown or incomplete option %s\n", argv[i]);
      return 1;
    }
  }
  if (W < 1 || T < 2 || iters < 1) {
    fprintf(stderr, "bench_gpu: windows >= 1, ctx >= 2, iters >= 1\n");
    return 1;
  }
  char err[512], path[4096];
  snprintf(path, sizeof path, "%s/config.json", dir);
  if (ap_hf_config_load(path, &cfg, err, sizeof err)) {
    fprintf(stderr, "bench_gpu: %s\n", err);
    return 1;
  }
  ap_st *st = NULL;
  if (ap_st_open(dir, &st, err, sizeof err)) {
    fprintf(stderr, "bench_gpu: %s\n", err);
    return 1;
  }
  int L = cfg.num_hidden_layers;
  int64_t C = cfg.hidden_size, I = cfg.intermediate_size, H = cfg.num_attention_heads, KVH = cfg.num_key_value_heads,
          D = cfg.head_dim, V = cfg.vocab_size;
  const ap_st_tensor *t0 = ap_st_find(st, "model.layers.0.mlp.up_proj.weight");
  if (!t0) {
    fprintf(stderr, "bench_gpu: model.layers.0.mlp.up_proj.weight missing\n");
    return 1;
  }
  odt = to_apk(t0->dtype);
  apk_mem_model mm = {C, I, L, H, KVH, D, V, (int)ap_dtype_size(t0->dtype), cfg.tie_word_embeddings, cfg.qk_norm};
  apk_mem_estimate est;
  /* the benchmark keeps acc (F64 col sums + F32 |dW| sums): per-weight gradients */
  if (limit) {
    int s = 0;
    int64_t w = 0;
    if (apk_mem_plan(&mm, T, 1, 0, limit, W, &s, &w)) {
      fprintf(stderr, "bench_gpu: the model does not fit in %llu bytes even streamed with one window\n",
              (unsigned long long)limit);
      return 1;
    }
    streaming = s;
    W = w;
    apk_cuda_set_mem_limit(limit);
  }
  if (force_stream) streaming = 1;
  apk_mem_estimate_compute(&mm, W, T, 1, !streaming, &est);
  char dev[128];
  size_t total = 0, freeb = 0;
  apk_cuda_device_info(0, dev, sizeof dev, &total, &freeb);
  printf("bench_gpu: %s on %s (%.0f GiB), GEMM %s, %s, %lld windows x %lld tokens\n", dir, dev, total / 1073741824.0,
         apk_gemm_mode_name(apk_cuda_gemm_mode()), streaming ? "weights streamed per block" : "weights resident",
         (long long)W, (long long)T);
  printf("  planner: peak %.2f GiB resident, %.2f GiB streamed (limit %s)\n", est.peak_resident / 1073741824.0,
         est.peak_streaming / 1073741824.0, limit ? "set" : "none");
  K(apk_ctx_create(APK_CUDA, 0, &ctx));
  apk_cuda_mem_reset_peak();

  /* weights */
  blk = calloc((size_t)L, sizeof *blk);
  static const char *names[NL] = {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                                  "mlp.gate_proj",    "mlp.up_proj",      "mlp.down_proj"};
  uint64_t lin_params = 0;
  size_t es = apk_dtype_size(odt);
  for (int b = 0; b < L; b++) {
    size_t off = 0;
    for (int j = 0; j < NL; j++) {
      snprintf(path, sizeof path, "model.layers.%d.%s.weight", b, names[j]);
      const ap_st_tensor *t = ap_st_find(st, path);
      if (!t || t->ndim != 2 || to_apk(t->dtype) != odt) {
        fprintf(stderr, "bench_gpu: %s missing or of another dtype\n", path);
        return 1;
      }
      blk[b].rows[j] = t->shape[0];
      blk[b].cols[j] = t->shape[1];
      blk[b].host[j] = t->data;
      blk[b].off[j] = off;
      off += (t->nbytes + 255) & ~(size_t)255;
      lin_params += t->numel;
      K(apk_tensor_alloc(ctx, &blk[b].acc[j], APK_F64, 1, &blk[b].cols[j]));
      K(apk_zero(ctx, &blk[b].acc[j]));
      if (!streaming) {
        K(apk_tensor_alloc2(ctx, &blk[b].orig[j], odt, t->shape[0], t->shape[1]));
        K(apk_upload(ctx, &blk[b].orig[j], t->data));
        K(apk_tensor_alloc2(ctx, &blk[b].work[j], APK_F32, t->shape[0], t->shape[1]));
        K(apk_mask_restore(ctx, &blk[b].work[j], &blk[b].orig[j]));
        K(apk_tensor_alloc2(ctx, &blk[b].gacc[j], APK_F32, t->shape[0], t->shape[1]));
        K(apk_zero(ctx, &blk[b].gacc[j]));
      }
    }
    if (b == 0) block_bytes = off;
    float *ones = malloc((size_t)C * 4);
    for (int64_t i = 0; i < C; i++) ones[i] = 1.0f;
    K(apk_tensor_alloc(ctx, &blk[b].ln1, APK_F32, 1, &C));
    K(apk_tensor_alloc(ctx, &blk[b].ln2, APK_F32, 1, &C));
    K(apk_upload(ctx, &blk[b].ln1, ones));
    K(apk_upload(ctx, &blk[b].ln2, ones));
    free(ones);
  }
  if (streaming) {
    K(apk_cuda_host_alloc(block_bytes * (size_t)L, &packed));
    for (int b = 0; b < L; b++)
      for (int j = 0; j < NL; j++)
        memcpy((char *)packed + (size_t)b * block_bytes + blk[b].off[j], blk[b].host[j],
               (size_t)(blk[b].rows[j] * blk[b].cols[j]) * es);
    K(apk_wstream_create(ctx, block_bytes, 2, &ws));
  }

  /* activations */
  int64_t N = W * T;
  acts a;
  memset(&a, 0, sizeof a);
  a.x = A2(N, C), a.xn = A2(N, C), a.q = A2(N, H * D), a.k = A2(N, KVH * D), a.v = A2(N, KVH * D);
  a.att = A2(N, H * D), a.h = A2(N, C), a.g = A2(N, I), a.u = A2(N, I), a.a = A2(N, I), a.mlp = A2(N, C);
  a.rstd1 = A2(N, 1), a.rstd2 = A2(N, 1), a.lse = A2(W * H, T), a.ct = A2(T, D / 2), a.st = A2(T, D / 2);
  float *cs = malloc((size_t)(T * D / 2) * 4), *sn = malloc((size_t)(T * D / 2) * 4);
  apk_rope_tables(cs, sn, (int)T, (int)D, cfg.rope_theta, NULL);
  K(apk_upload(ctx, &a.ct, cs));
  K(apk_upload(ctx, &a.st, sn));
  free(cs), free(sn);
  float *xh = malloc((size_t)(N * C) * 4);
  for (int64_t i = 0; i < N * C; i++) xh[i] = (float)((i * 2654435761u) % 2001) / 1000.0f - 1.0f;

  /* baseline: cuBLAS on the largest projection shape, in this run */
  apk_tensor gw = A2(I, C), go = A2(N, I);
  K(apk_zero(ctx, &gw));
  K(apk_linear_forward(ctx, &go, &a.xn, &gw, NULL));
  K(apk_ctx_sync(ctx));
  double t = now();
  for (int r = 0; r < 10; r++) K(apk_linear_forward(ctx, &go, &a.xn, &gw, NULL));
  K(apk_ctx_sync(ctx));
  double gemm_rate = 10 * 2.0 * (double)N * (double)I * (double)C / (now() - t);
  apk_tensor_free(ctx, &gw);
  apk_tensor_free(ctx, &go);
  printf("  cuBLAS GEMM [%lld x %lld x %lld]: %.1f TFLOP/s (baseline)\n", (long long)N, (long long)C, (long long)I,
         gemm_rate / 1e12);

  double fwd_flops = 2.0 * (double)N * (double)lin_params, best_fwd = 1e30, best_prof = 1e30, best_bwd = 1e30;
  int64_t dummy;
  for (int r = 0; r < iters + 1; r++) {
    K(apk_upload(ctx, &a.x, xh));
    K(apk_ctx_sync(ctx));
    t = now();
    forward(&a, W, T, 0, &dummy);
    K(apk_ctx_sync(ctx));
    if (r) best_fwd = fmin(best_fwd, now() - t); /* first run warms up */
  }
  for (int r = 0; r < iters; r++) {
    K(apk_upload(ctx, &a.x, xh));
    K(apk_ctx_sync(ctx));
    t = now();
    forward(&a, W, T, 1, &dummy);
    K(apk_ctx_sync(ctx));
    best_prof = fmin(best_prof, now() - t);
  }
  printf("  forward:   %.3f s, %.0f tokens/s (transformer blocks; embedding and head not timed), GEMM %.1f TFLOP/s = %.2f of cuBLAS\n", best_fwd, N / best_fwd,
         fwd_flops / best_fwd / 1e12, fwd_flops / best_fwd / gemm_rate);
  printf("  profiling: %.3f s, %.0f tokens/s (forward + column sums of squares)\n", best_prof, N / best_prof);
  if (!streaming) {
    /* backward buffers; per-weight |dL/dW| sums for every layer */
    a.dx = A2(N, C), a.dxn = A2(N, C), a.dq = A2(N, H * D), a.dk = A2(N, KVH * D), a.dv = A2(N, KVH * D);
    a.datt = A2(N, H * D), a.dg = A2(N, I), a.du = A2(N, I), a.da = A2(N, I), a.dW = A2(I, C > H * D ? C : H * D);
    for (int r = 0; r < iters; r++) {
      K(apk_upload(ctx, &a.dx, xh));
      K(apk_ctx_sync(ctx));
      t = now();
      backward(&a, W, T);
      K(apk_ctx_sync(ctx));
      best_bwd = fmin(best_bwd, now() - t);
    }
    printf("  backward:  %.3f s, %.0f tokens/s (GEMM work 2x forward: %.2f of cuBLAS)\n", best_bwd, N / best_bwd,
           2 * fwd_flops / best_bwd / gemm_rate);
  }

  /* one pruning iteration: norms, select 50% per row, apply, every layer */
  double prune_s = 0;
  if (!streaming) {
    void *stream = apk_cuda_ctx_stream(ctx);
    K(apk_ctx_sync(ctx));
    t = now();
    for (int b = 0; b < L; b++)
      for (int j = 0; j < NL; j++) {
        block *B = &blk[b];
        int64_t n = B->rows[j] * B->cols[j], words = (n + 63) / 64;
        apk_tensor norms, mask;
        K(apk_tensor_alloc(ctx, &norms, APK_F32, 1, &B->cols[j]));
        K(apk_tensor_alloc(ctx, &mask, APK_U8, 1, (int64_t[]){words * 8}));
        K(apk_zero(ctx, &mask));
        K(apk_gpu_wanda_norms(norms.data, B->acc[j == 1 || j == 2 ? 0 : j == 5 ? 4 : j].data, B->cols[j], stream));
        K(apk_gpu_mask_rows(mask.data, B->work[j].data, norms.data, B->rows[j], B->cols[j], 0.5, NULL, stream));
        K(apk_gpu_mask_apply(B->work[j].data, B->orig[j].data, odt, mask.data, (uint64_t)n, stream));
        apk_tensor_free(ctx, &norms);
        apk_tensor_free(ctx, &mask);
      }
    K(apk_ctx_sync(ctx));
    prune_s = now() - t;
    printf("  pruning iteration (Wanda 50%%, %d layers: norms + row select + apply): %.3f s + one eval forward %.3f s\n",
           L * NL, prune_s, best_fwd);
  }
  uint64_t cur = 0, peak = 0;
  apk_cuda_mem_usage(&cur, &peak);
  printf("  peak GPU memory through the backend: %.2f GiB (planner: %.2f GiB)\n", peak / 1073741824.0,
         (streaming ? est.peak_streaming : est.peak_resident) / 1073741824.0);
  if (json) {
    FILE *f = fopen(json, "w");
    if (f) {
      fprintf(f,
              "{\"gemm\":\"%s\",\"streaming\":%d,\"windows\":%lld,\"ctx\":%lld,\"cublas_tflops\":%.3f,"
              "\"forward_s\":%.5f,\"forward_tokens_per_s\":%.1f,\"forward_gemm_fraction\":%.4f,"
              "\"profile_tokens_per_s\":%.1f,\"backward_tokens_per_s\":%.1f,\"prune_iteration_s\":%.4f,"
              "\"peak_gib\":%.3f,\"planner_peak_gib\":%.3f}\n",
              apk_gemm_mode_name(apk_cuda_gemm_mode()), streaming, (long long)W, (long long)T, gemm_rate / 1e12,
              best_fwd, N / best_fwd, fwd_flops / best_fwd / gemm_rate, N / best_prof,
              streaming ? 0.0 : N / best_bwd, prune_s, peak / 1073741824.0,
              (streaming ? est.peak_streaming : est.peak_resident) / 1073741824.0);
      fclose(f);
    }
  }
  free(xh);
  if (ws) apk_wstream_destroy(ws);
  if (packed) apk_cuda_host_free(packed);
  apk_ctx_destroy(ctx);
  ap_st_close(st);
  return 0;
}
