/*
 * bench_cpu_ops.c - time per call of the CPU backend's vector kernels against
 * its scalar loops (APK_CPU_SIMD=0) in the same run, at the shapes of one
 * window of the shared models: stories260K (ctx 512, 8 heads of 8, 4 kv
 * heads, hidden 64, FFN 172, vocab 512), tinyqwen3-a (ctx 256, 4 heads of 32,
 * 2 kv heads, FFN 256, vocab 512) and bench_forward's random model (ctx 512,
 * 16 heads of 64, 8 kv heads, hidden 1024, FFN 2816, vocab 32000).
 *
 * Each figure is the best of 5 timings of enough calls to last ~20 ms (the
 * machine may be shared); threads = the OpenMP default.
 *
 * usage: bench_cpu_ops [filter]   (only the lines whose label contains filter)
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "ap_kernels.h"

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static float *rand_floats(int64_t n, float scale) {
  float *x = malloc((size_t)n * sizeof *x);
  unsigned s = 2463534242u;
  for (int64_t i = 0; i < n; i++) {
    s ^= s << 13, s ^= s >> 17, s ^= s << 5;
    x[i] = scale * ((float)(s >> 8) / 16777216.0f * 2.0f - 1.0f);
  }
  return x;
}

typedef struct {
  int kind; /* 0 attention fwd, 1 attention bwd, 2 ce fwd, 3 ce bwd, 4 swiglu fwd, 5 swiglu bwd, 6 rmsnorm fwd, 7 bwd */
  int64_t a, b, c, d, e;
  float *x[10];
  int32_t *tg;
} op_case;

static apk_tensor v4(float *p, int64_t a, int64_t b, int64_t c, int64_t d) {
  int64_t s[4] = {a, b, c, d};
  return apk_view(APK_CPU, APK_F32, p, 4, s);
}

static int run_case(apk_ctx *ctx, op_case *o) {
  float **x = o->x;
  switch (o->kind) {
    case 0:
    case 1: { /* a = T, b = H, c = KVH, d = D */
      apk_tensor q = v4(x[0], 1, o->a, o->b, o->d), k = v4(x[1], 1, o->a, o->c, o->d), v = v4(x[2], 1, o->a, o->c, o->d),
                 out = v4(x[3], 1, o->a, o->b, o->d), g = v4(x[5], 1, o->a, o->b, o->d),
                 dq = v4(x[6], 1, o->a, o->b, o->d), dk = v4(x[7], 1, o->a, o->c, o->d),
                 dv = v4(x[8], 1, o->a, o->c, o->d);
      int64_t ls[3] = {1, o->b, o->a};
      apk_tensor lse = apk_view(APK_CPU, APK_F32, x[4], 3, ls);
      if (o->kind == 0) return apk_attention_forward(ctx, &out, &lse, &q, &k, &v);
      return apk_attention_backward(ctx, &dq, &dk, &dv, &g, &q, &k, &v, &out, &lse);
    }
    case 2:
    case 3: { /* a = N, b = V */
      apk_tensor lg = apk_view2(APK_CPU, APK_F32, x[0], o->a, o->b), d = apk_view2(APK_CPU, APK_F32, x[1], o->a, o->b);
      int64_t n1[1] = {o->a};
      apk_tensor nll = apk_view(APK_CPU, APK_F32, x[2], 1, n1), tg = apk_view(APK_CPU, APK_I32, o->tg, 1, n1);
      if (o->kind == 2) return apk_crossentropy_forward(ctx, &nll, &lg, &tg);
      return apk_crossentropy_backward(ctx, &d, &lg, &tg, 1.0f / (float)o->a);
    }
    case 4:
    case 5: { /* a = n */
      int64_t n1[1] = {o->a};
      apk_tensor g = apk_view(APK_CPU, APK_F32, x[0], 1, n1), u = apk_view(APK_CPU, APK_F32, x[1], 1, n1),
                 out = apk_view(APK_CPU, APK_F32, x[2], 1, n1), d = apk_view(APK_CPU, APK_F32, x[3], 1, n1),
                 du = apk_view(APK_CPU, APK_F32, x[4], 1, n1);
      if (o->kind == 4) return apk_swiglu_forward(ctx, &out, &g, &u);
      return apk_swiglu_backward(ctx, &out, &du, &d, &g, &u);
    }
    default: { /* a = N, b = C */
      apk_tensor in = apk_view2(APK_CPU, APK_F32, x[0], o->a, o->b), out = apk_view2(APK_CPU, APK_F32, x[1], o->a, o->b),
                 dout = apk_view2(APK_CPU, APK_F32, x[3], o->a, o->b);
      int64_t n1[1] = {o->a}, c1[1] = {o->b};
      apk_tensor r = apk_view(APK_CPU, APK_F32, x[2], 1, n1), w = apk_view(APK_CPU, APK_F32, x[4], 1, c1);
      if (o->kind == 6) return apk_rmsnorm_forward(ctx, &out, &r, &in, &w, 1e-5f);
      return apk_rmsnorm_backward(ctx, &out, &dout, &in, &w, &r);
    }
  }
}

/* best of 5 timings of enough calls for ~20 ms; seconds per call */
static double time_case(apk_ctx *ctx, op_case *o) {
  if (run_case(ctx, o)) {
    fprintf(stderr, "op failed: %s\n", apk_last_error());
    exit(1);
  }
  int reps = 1;
  for (;;) {
    double t0 = now_s();
    for (int r = 0; r < reps; r++) run_case(ctx, o);
    if (now_s() - t0 > 0.02 || reps > (1 << 20)) break;
    reps *= 2;
  }
  double best = 1e30;
  for (int k = 0; k < 5; k++) {
    double t0 = now_s();
    for (int r = 0; r < reps; r++) run_case(ctx, o);
    double t = (now_s() - t0) / reps;
    if (t < best) best = t;
  }
  return best;
}

static void bench(const char *label, const char *filter, apk_ctx *simd, apk_ctx *scalar, op_case o) {
  if (filter && !strstr(label, filter)) return;
  int64_t n = 4 * o.a * (o.b + 1) * (o.c + 1) * (o.d + 1) + 4096; /* generous: every buffer of every kind fits */
  if (o.kind >= 2) n = o.a * o.b + o.a + 4096;
  for (int i = 0; i < 10; i++) o.x[i] = rand_floats(n, i == 0 || i == 1 ? 3.0f : 1.0f);
  o.tg = malloc((size_t)o.a * sizeof *o.tg);
  for (int64_t i = 0; i < o.a; i++) o.tg[i] = (int32_t)((i * 7919) % (o.b > 0 ? o.b : 1));
  if (o.kind == 1) { /* the backward needs the forward's output and lse */
    o.kind = 0;
    run_case(simd, &o);
    o.kind = 1;
  }
  if (o.kind == 7) { /* and the norm's rstd */
    o.kind = 6;
    run_case(simd, &o);
    o.kind = 7;
  }
  double ts = time_case(scalar, &o), tv = time_case(simd, &o);
  printf("%-34s scalar %9.1f us   vector %9.1f us   x%5.2f\n", label, ts * 1e6, tv * 1e6, ts / tv);
  for (int i = 0; i < 10; i++) free(o.x[i]);
  free(o.tg);
}

int main(int argc, char **argv) {
  const char *filter = argc > 1 ? argv[1] : NULL;
  apk_ctx *simd = NULL, *scalar = NULL;
  if (setenv("APK_CPU_SIMD", "0", 1) || apk_ctx_create(APK_CPU, 0, &scalar) || unsetenv("APK_CPU_SIMD") ||
      apk_ctx_create(APK_CPU, 0, &simd)) {
    fprintf(stderr, "cannot create CPU contexts: %s\n", apk_last_error());
    return 1;
  }
  printf("time per call, one window; baseline = the scalar loops of the same build\n");
  bench("attention fwd s260K T512 D8", filter, simd, scalar, (op_case){0, 512, 8, 4, 8, 0, {0}, 0});
  bench("attention bwd s260K T512 D8", filter, simd, scalar, (op_case){1, 512, 8, 4, 8, 0, {0}, 0});
  bench("attention fwd qwen3a T256 D32", filter, simd, scalar, (op_case){0, 256, 4, 2, 32, 0, {0}, 0});
  bench("attention bwd qwen3a T256 D32", filter, simd, scalar, (op_case){1, 256, 4, 2, 32, 0, {0}, 0});
  bench("attention fwd random T512 D64", filter, simd, scalar, (op_case){0, 512, 16, 8, 64, 0, {0}, 0});
  bench("attention bwd random T512 D64", filter, simd, scalar, (op_case){1, 512, 16, 8, 64, 0, {0}, 0});
  bench("cross-entropy fwd N512 V512", filter, simd, scalar, (op_case){2, 512, 512, 0, 0, 0, {0}, 0});
  bench("cross-entropy bwd N512 V512", filter, simd, scalar, (op_case){3, 512, 512, 0, 0, 0, {0}, 0});
  bench("cross-entropy fwd N512 V32000", filter, simd, scalar, (op_case){2, 512, 32000, 0, 0, 0, {0}, 0});
  bench("swiglu fwd s260K 512x172", filter, simd, scalar, (op_case){4, 512 * 172, 0, 0, 0, 0, {0}, 0});
  bench("swiglu bwd s260K 512x172", filter, simd, scalar, (op_case){5, 512 * 172, 0, 0, 0, 0, {0}, 0});
  bench("swiglu fwd random 512x2816", filter, simd, scalar, (op_case){4, 512 * 2816, 0, 0, 0, 0, {0}, 0});
  bench("rmsnorm fwd s260K 512x64", filter, simd, scalar, (op_case){6, 512, 64, 0, 0, 0, {0}, 0});
  bench("rmsnorm bwd s260K 512x64", filter, simd, scalar, (op_case){7, 512, 64, 0, 0, 0, {0}, 0});
  bench("rmsnorm fwd qwen3a q_norm 1024x32", filter, simd, scalar, (op_case){6, 1024, 32, 0, 0, 0, {0}, 0});
  bench("rmsnorm fwd random 512x1024", filter, simd, scalar, (op_case){6, 512, 1024, 0, 0, 0, {0}, 0});
  apk_ctx_destroy(simd);
  apk_ctx_destroy(scalar);
  return 0;
}
