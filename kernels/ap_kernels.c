/*
 * ap_kernels.c - contexts, tensors, and the checked dispatch of every op to
 * the backend of its context. Shapes are validated here once so that the
 * backends can trust their arguments.
 */
#include "ap_kernels.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ap_backend.h"

struct apk_ctx {
  apk_backend_kind kind;
  const apk_backend_ops *ops;
  void *state;
};

static _Thread_local char last_error[256];

int apk_fail(int rc, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(last_error, sizeof last_error, fmt, ap);
  va_end(ap);
  return rc;
}

const char *apk_last_error(void) { return last_error; }

const char *apk_strerror(int rc) {
  switch (rc) {
    case APK_OK: return "ok";
    case APK_EINVAL: return "invalid argument";
    case APK_ENOMEM: return "out of memory";
    case APK_ENOTSUP: return "not supported by this build";
    case APK_EDEVICE: return "device error";
    case APK_ERANGE: return "value out of range";
    default: return "unknown error";
  }
}

size_t apk_dtype_size(apk_dtype dt) {
  switch (dt) {
    case APK_F32: return 4;
    case APK_F16: return 2;
    case APK_BF16: return 2;
    case APK_F64: return 8;
    case APK_I32: return 4;
    case APK_U8: return 1;
  }
  return 0;
}

const char *apk_dtype_name(apk_dtype dt) {
  switch (dt) {
    case APK_F32: return "F32";
    case APK_F16: return "F16";
    case APK_BF16: return "BF16";
    case APK_F64: return "F64";
    case APK_I32: return "I32";
    case APK_U8: return "U8";
  }
  return "?";
}

/* ---- context ---------------------------------------------------------------- */

int apk_ctx_create(apk_backend_kind backend, int device, apk_ctx **out) {
  *out = NULL;
  const apk_backend_ops *ops = NULL;
  if (backend == APK_CPU) {
    ops = apk_cpu_backend();
  } else if (backend == APK_CUDA) {
#ifdef APK_HAVE_CUDA
    ops = apk_cuda_backend();
#else
    return apk_fail(APK_ENOTSUP, "this build has no CUDA backend");
#endif
  } else {
    return apk_fail(APK_EINVAL, "unknown backend %d", (int)backend);
  }
  apk_ctx *ctx = calloc(1, sizeof *ctx);
  if (!ctx) return apk_fail(APK_ENOMEM, "out of memory for a context");
  ctx->kind = backend;
  ctx->ops = ops;
  int rc = ops->init(device, &ctx->state);
  if (rc) {
    free(ctx);
    return rc;
  }
  *out = ctx;
  return APK_OK;
}

void apk_ctx_destroy(apk_ctx *ctx) {
  if (!ctx) return;
  ctx->ops->shutdown(ctx->state);
  free(ctx);
}

apk_backend_kind apk_ctx_backend(const apk_ctx *ctx) { return ctx->kind; }

void *apk_ctx_backend_state(apk_ctx *ctx) { return ctx ? ctx->state : NULL; }

int apk_ctx_sync(apk_ctx *ctx) { return ctx->ops->sync(ctx->state); }

/* ---- tensors ----------------------------------------------------------------- */

int64_t apk_tensor_numel(const apk_tensor *t) {
  int64_t n = 1;
  for (int i = 0; i < t->ndim; i++) n *= t->shape[i];
  return n;
}

size_t apk_tensor_bytes(const apk_tensor *t) { return (size_t)apk_tensor_numel(t) * apk_dtype_size(t->dtype); }

static int shape_ok(int ndim, const int64_t *shape) {
  if (ndim < 1 || ndim > APK_MAX_DIMS) return 0;
  for (int i = 0; i < ndim; i++)
    if (shape[i] < 0) return 0;
  return 1;
}

apk_tensor apk_view(apk_backend_kind backend, apk_dtype dt, void *data, int ndim, const int64_t *shape) {
  apk_tensor t;
  memset(&t, 0, sizeof t);
  if (!shape_ok(ndim, shape)) return t;
  t.backend = backend;
  t.dtype = dt;
  t.ndim = ndim;
  memcpy(t.shape, shape, (size_t)ndim * sizeof *shape);
  t.data = data;
  t.owned = 0;
  return t;
}

apk_tensor apk_view2(apk_backend_kind backend, apk_dtype dt, void *data, int64_t d0, int64_t d1) {
  int64_t shape[2] = {d0, d1};
  return apk_view(backend, dt, data, 2, shape);
}

apk_tensor apk_view_rows(const apk_tensor *t, int64_t row0, int64_t nrows) {
  apk_tensor v = *t;
  v.owned = 0;
  if (t->ndim < 1 || row0 < 0 || nrows < 0 || row0 + nrows > t->shape[0]) {
    v.data = NULL;
    return v;
  }
  int64_t row_elems = 1;
  for (int i = 1; i < t->ndim; i++) row_elems *= t->shape[i];
  v.shape[0] = nrows;
  v.data = (char *)t->data + (size_t)(row0 * row_elems) * apk_dtype_size(t->dtype);
  return v;
}

apk_tensor apk_reshape(const apk_tensor *t, int ndim, const int64_t *shape) {
  apk_tensor v = apk_view(t->backend, t->dtype, t->data, ndim, shape);
  if (v.ndim == 0 || apk_tensor_numel(&v) != apk_tensor_numel(t)) v.data = NULL;
  return v;
}

int apk_tensor_alloc(apk_ctx *ctx, apk_tensor *t, apk_dtype dt, int ndim, const int64_t *shape) {
  memset(t, 0, sizeof *t);
  if (!shape_ok(ndim, shape)) return apk_fail(APK_EINVAL, "tensor_alloc: bad shape (ndim %d)", ndim);
  apk_tensor v = apk_view(ctx->kind, dt, NULL, ndim, shape);
  size_t bytes = apk_tensor_bytes(&v);
  void *p = NULL;
  int rc = ctx->ops->alloc(ctx->state, bytes ? bytes : 1, &p);
  if (rc) return rc;
  *t = v;
  t->data = p;
  t->owned = 1;
  return APK_OK;
}

int apk_tensor_alloc2(apk_ctx *ctx, apk_tensor *t, apk_dtype dt, int64_t d0, int64_t d1) {
  int64_t shape[2] = {d0, d1};
  return apk_tensor_alloc(ctx, t, dt, 2, shape);
}

void apk_tensor_free(apk_ctx *ctx, apk_tensor *t) {
  if (!t) return;
  if (t->owned && t->data) ctx->ops->release(ctx->state, t->data);
  memset(t, 0, sizeof *t);
}

/* ---- argument checks ---------------------------------------------------------- */

static int check_t(const apk_ctx *ctx, const char *op, const char *name, const apk_tensor *t, apk_dtype dt) {
  if (!t || !t->data) return apk_fail(APK_EINVAL, "%s: %s is missing", op, name);
  if (t->backend != ctx->kind) return apk_fail(APK_EINVAL, "%s: %s lives on another backend", op, name);
  if (t->dtype != dt)
    return apk_fail(APK_EINVAL, "%s: %s is %s, expected %s", op, name, apk_dtype_name(t->dtype),
                    apk_dtype_name(dt));
  return APK_OK;
}

/* Rows and columns of t seen as a matrix [rows, last dim]. */
static int64_t t_cols(const apk_tensor *t) { return t->shape[t->ndim - 1]; }
static int64_t t_rows(const apk_tensor *t) { return apk_tensor_numel(t) / (t_cols(t) ? t_cols(t) : 1); }

#define CHECK_T(name, t, dt)                             \
  do {                                                   \
    int rc_ = check_t(ctx, op, name, t, dt);             \
    if (rc_) return rc_;                                 \
  } while (0)

#define REQUIRE(cond, ...)                               \
  do {                                                   \
    if (!(cond)) return apk_fail(APK_EINVAL, __VA_ARGS__); \
  } while (0)

int apk_upload(apk_ctx *ctx, apk_tensor *t, const void *host) {
  if (!t || !t->data || t->backend != ctx->kind) return apk_fail(APK_EINVAL, "upload: bad tensor");
  return ctx->ops->upload(ctx->state, t->data, host, apk_tensor_bytes(t));
}

int apk_download(apk_ctx *ctx, void *host, const apk_tensor *t) {
  if (!t || !t->data || t->backend != ctx->kind) return apk_fail(APK_EINVAL, "download: bad tensor");
  return ctx->ops->download(ctx->state, host, t->data, apk_tensor_bytes(t));
}

int apk_zero(apk_ctx *ctx, apk_tensor *t) {
  if (!t || !t->data || t->backend != ctx->kind) return apk_fail(APK_EINVAL, "zero: bad tensor");
  return ctx->ops->memzero(ctx->state, t->data, apk_tensor_bytes(t));
}

int apk_copy(apk_ctx *ctx, apk_tensor *dst, const apk_tensor *src) {
  const char *op = "copy";
  CHECK_T("dst", dst, dst->dtype);
  CHECK_T("src", src, dst->dtype);
  REQUIRE(apk_tensor_numel(dst) == apk_tensor_numel(src), "copy: element counts differ");
  return ctx->ops->memcopy(ctx->state, dst->data, src->data, apk_tensor_bytes(dst));
}

/* ---- ops ---------------------------------------------------------------------- */

int apk_embedding_forward(apk_ctx *ctx, apk_tensor *out, const apk_tensor *tokens, const apk_tensor *table) {
  const char *op = "embedding_forward";
  CHECK_T("out", out, APK_F32);
  CHECK_T("tokens", tokens, APK_I32);
  CHECK_T("table", table, APK_F32);
  REQUIRE(table->ndim == 2, "%s: table must be [V,C]", op);
  int64_t C = table->shape[1], N = apk_tensor_numel(tokens);
  REQUIRE(t_cols(out) == C && t_rows(out) == N, "%s: out must be [%lld,%lld]", op, (long long)N, (long long)C);
  return ctx->ops->embedding_forward(ctx->state, out->data, tokens->data, table->data, N, C, table->shape[0]);
}

int apk_rmsnorm_forward(apk_ctx *ctx, apk_tensor *out, apk_tensor *rstd, const apk_tensor *inp,
                        const apk_tensor *weight, float eps) {
  const char *op = "rmsnorm_forward";
  CHECK_T("out", out, APK_F32);
  CHECK_T("inp", inp, APK_F32);
  CHECK_T("weight", weight, APK_F32);
  int64_t C = apk_tensor_numel(weight), N = t_rows(inp);
  REQUIRE(t_cols(inp) == C, "%s: inp has %lld columns, weight %lld", op, (long long)t_cols(inp), (long long)C);
  REQUIRE(apk_tensor_numel(out) == N * C, "%s: out size differs from inp", op);
  if (rstd) {
    CHECK_T("rstd", rstd, APK_F32);
    REQUIRE(apk_tensor_numel(rstd) == N, "%s: rstd must have %lld elements", op, (long long)N);
  }
  return ctx->ops->rmsnorm_forward(ctx->state, out->data, rstd ? rstd->data : NULL, inp->data, weight->data, N, C,
                                   eps);
}

int apk_rmsnorm_backward(apk_ctx *ctx, apk_tensor *dinp, const apk_tensor *dout, const apk_tensor *inp,
                         const apk_tensor *weight, const apk_tensor *rstd) {
  const char *op = "rmsnorm_backward";
  CHECK_T("dinp", dinp, APK_F32);
  CHECK_T("dout", dout, APK_F32);
  CHECK_T("inp", inp, APK_F32);
  CHECK_T("weight", weight, APK_F32);
  CHECK_T("rstd", rstd, APK_F32);
  int64_t C = apk_tensor_numel(weight), N = t_rows(inp);
  REQUIRE(t_cols(inp) == C, "%s: inp columns differ from weight", op);
  REQUIRE(apk_tensor_numel(dinp) == N * C && apk_tensor_numel(dout) == N * C, "%s: size mismatch", op);
  REQUIRE(apk_tensor_numel(rstd) == N, "%s: rstd must have N elements", op);
  return ctx->ops->rmsnorm_backward(ctx->state, dinp->data, dout->data, inp->data, weight->data, rstd->data, N, C);
}

int apk_linear_forward(apk_ctx *ctx, apk_tensor *out, const apk_tensor *inp, const apk_tensor *weight,
                       const apk_tensor *bias) {
  const char *op = "linear_forward";
  CHECK_T("out", out, APK_F32);
  CHECK_T("inp", inp, APK_F32);
  CHECK_T("weight", weight, APK_F32);
  REQUIRE(weight->ndim == 2, "%s: weight must be [OC,IC]", op);
  int64_t OC = weight->shape[0], IC = weight->shape[1], N = t_rows(inp);
  REQUIRE(t_cols(inp) == IC, "%s: inp has %lld columns, weight expects %lld", op, (long long)t_cols(inp),
          (long long)IC);
  REQUIRE(t_cols(out) == OC && t_rows(out) == N, "%s: out must be [%lld,%lld]", op, (long long)N, (long long)OC);
  if (bias) {
    CHECK_T("bias", bias, APK_F32);
    REQUIRE(apk_tensor_numel(bias) == OC, "%s: bias must have %lld elements", op, (long long)OC);
  }
  return ctx->ops->linear_forward(ctx->state, out->data, inp->data, weight->data, bias ? bias->data : NULL, N, IC,
                                  OC);
}

int apk_linear_backward(apk_ctx *ctx, apk_tensor *dinp, apk_tensor *dweight, apk_tensor *dbias,
                        const apk_tensor *dout, const apk_tensor *inp, const apk_tensor *weight) {
  const char *op = "linear_backward";
  CHECK_T("dout", dout, APK_F32);
  CHECK_T("inp", inp, APK_F32);
  CHECK_T("weight", weight, APK_F32);
  REQUIRE(weight->ndim == 2, "%s: weight must be [OC,IC]", op);
  int64_t OC = weight->shape[0], IC = weight->shape[1], N = t_rows(inp);
  REQUIRE(t_cols(inp) == IC, "%s: inp columns differ from weight", op);
  REQUIRE(t_cols(dout) == OC && t_rows(dout) == N, "%s: dout must be [N,OC]", op);
  if (dinp) {
    CHECK_T("dinp", dinp, APK_F32);
    REQUIRE(apk_tensor_numel(dinp) == N * IC, "%s: dinp must be [N,IC]", op);
  }
  if (dweight) {
    CHECK_T("dweight", dweight, APK_F32);
    REQUIRE(apk_tensor_numel(dweight) == OC * IC, "%s: dweight must be [OC,IC]", op);
  }
  if (dbias) {
    CHECK_T("dbias", dbias, APK_F32);
    REQUIRE(apk_tensor_numel(dbias) == OC, "%s: dbias must be [OC]", op);
  }
  return ctx->ops->linear_backward(ctx->state, dinp ? dinp->data : NULL, dweight ? dweight->data : NULL,
                                   dbias ? dbias->data : NULL, dout->data, inp->data, weight->data, N, IC, OC);
}

static int rope_common(apk_ctx *ctx, const char *op, apk_tensor *out, const apk_tensor *inp,
                       const apk_tensor *cos_t, const apk_tensor *sin_t, int sign) {
  CHECK_T("out", out, APK_F32);
  CHECK_T("inp", inp, APK_F32);
  CHECK_T("cos", cos_t, APK_F32);
  CHECK_T("sin", sin_t, APK_F32);
  REQUIRE(inp->ndim == 3, "%s: x must be [N,H,D]", op);
  REQUIRE(cos_t->ndim == 2 && sin_t->ndim == 2 && cos_t->shape[0] == sin_t->shape[0] &&
              cos_t->shape[1] == sin_t->shape[1],
          "%s: cos/sin must both be [T,D/2]", op);
  int64_t N = inp->shape[0], H = inp->shape[1], D = inp->shape[2], T = cos_t->shape[0];
  REQUIRE(D % 2 == 0 && cos_t->shape[1] == D / 2, "%s: tables must be [T,%lld]", op, (long long)(D / 2));
  REQUIRE(T > 0 && N % T == 0, "%s: rows (%lld) must be a multiple of T (%lld)", op, (long long)N, (long long)T);
  REQUIRE(apk_tensor_numel(out) == N * H * D, "%s: out size differs", op);
  return ctx->ops->rope(ctx->state, out->data, inp->data, cos_t->data, sin_t->data, N, H, D, T, sign);
}

int apk_rope_forward(apk_ctx *ctx, apk_tensor *out, const apk_tensor *inp, const apk_tensor *cos_t,
                     const apk_tensor *sin_t) {
  return rope_common(ctx, "rope_forward", out, inp, cos_t, sin_t, +1);
}

int apk_rope_backward(apk_ctx *ctx, apk_tensor *dinp, const apk_tensor *dout, const apk_tensor *cos_t,
                      const apk_tensor *sin_t) {
  return rope_common(ctx, "rope_backward", dinp, dout, cos_t, sin_t, -1);
}

static int attn_shapes(apk_ctx *ctx, const char *op, const apk_tensor *q, const apk_tensor *k, const apk_tensor *v,
                       int64_t *B, int64_t *T, int64_t *H, int64_t *KVH, int64_t *D) {
  CHECK_T("q", q, APK_F32);
  CHECK_T("k", k, APK_F32);
  CHECK_T("v", v, APK_F32);
  REQUIRE(q->ndim == 4 && k->ndim == 4 && v->ndim == 4, "%s: q, k, v must be 4-D [B,T,heads,D]", op);
  *B = q->shape[0];
  *T = q->shape[1];
  *H = q->shape[2];
  *D = q->shape[3];
  *KVH = k->shape[2];
  REQUIRE(k->shape[0] == *B && k->shape[1] == *T && k->shape[3] == *D, "%s: k must be [B,T,KVH,D]", op);
  REQUIRE(memcmp(k->shape, v->shape, sizeof k->shape) == 0, "%s: k and v shapes differ", op);
  REQUIRE(*KVH > 0 && *H % *KVH == 0, "%s: heads (%lld) must be a multiple of kv heads (%lld)", op, (long long)*H,
          (long long)*KVH);
  return APK_OK;
}

int apk_attention_forward(apk_ctx *ctx, apk_tensor *out, apk_tensor *lse, const apk_tensor *q,
                          const apk_tensor *k, const apk_tensor *v) {
  const char *op = "attention_forward";
  int64_t B = 0, T = 0, H = 0, KVH = 1, D = 0;
  int rc = attn_shapes(ctx, op, q, k, v, &B, &T, &H, &KVH, &D);
  if (rc) return rc;
  CHECK_T("out", out, APK_F32);
  REQUIRE(apk_tensor_numel(out) == B * T * H * D, "%s: out must be [B,T,H,D]", op);
  if (lse) {
    CHECK_T("lse", lse, APK_F32);
    REQUIRE(apk_tensor_numel(lse) == B * H * T, "%s: lse must be [B,H,T]", op);
  }
  return ctx->ops->attention_forward(ctx->state, out->data, lse ? lse->data : NULL, q->data, k->data, v->data, B,
                                     T, H, KVH, D);
}

int apk_attention_backward(apk_ctx *ctx, apk_tensor *dq, apk_tensor *dk, apk_tensor *dv, const apk_tensor *dout,
                           const apk_tensor *q, const apk_tensor *k, const apk_tensor *v, const apk_tensor *out,
                           const apk_tensor *lse) {
  const char *op = "attention_backward";
  int64_t B = 0, T = 0, H = 0, KVH = 1, D = 0;
  int rc = attn_shapes(ctx, op, q, k, v, &B, &T, &H, &KVH, &D);
  if (rc) return rc;
  CHECK_T("dq", dq, APK_F32);
  CHECK_T("dk", dk, APK_F32);
  CHECK_T("dv", dv, APK_F32);
  CHECK_T("dout", dout, APK_F32);
  CHECK_T("out", out, APK_F32);
  CHECK_T("lse", lse, APK_F32);
  REQUIRE(apk_tensor_numel(dq) == B * T * H * D && apk_tensor_numel(dout) == B * T * H * D &&
              apk_tensor_numel(out) == B * T * H * D,
          "%s: dq, dout, out must be [B,T,H,D]", op);
  REQUIRE(apk_tensor_numel(dk) == B * T * KVH * D && apk_tensor_numel(dv) == B * T * KVH * D,
          "%s: dk, dv must be [B,T,KVH,D]", op);
  REQUIRE(apk_tensor_numel(lse) == B * H * T, "%s: lse must be [B,H,T]", op);
  return ctx->ops->attention_backward(ctx->state, dq->data, dk->data, dv->data, dout->data, q->data, k->data,
                                      v->data, out->data, lse->data, B, T, H, KVH, D);
}

int apk_swiglu_forward(apk_ctx *ctx, apk_tensor *out, const apk_tensor *gate, const apk_tensor *up) {
  const char *op = "swiglu_forward";
  CHECK_T("out", out, APK_F32);
  CHECK_T("gate", gate, APK_F32);
  CHECK_T("up", up, APK_F32);
  int64_t n = apk_tensor_numel(gate);
  REQUIRE(apk_tensor_numel(up) == n && apk_tensor_numel(out) == n, "%s: sizes differ", op);
  return ctx->ops->swiglu_forward(ctx->state, out->data, gate->data, up->data, n);
}

int apk_swiglu_backward(apk_ctx *ctx, apk_tensor *dgate, apk_tensor *dup, const apk_tensor *dout,
                        const apk_tensor *gate, const apk_tensor *up) {
  const char *op = "swiglu_backward";
  CHECK_T("dgate", dgate, APK_F32);
  CHECK_T("dup", dup, APK_F32);
  CHECK_T("dout", dout, APK_F32);
  CHECK_T("gate", gate, APK_F32);
  CHECK_T("up", up, APK_F32);
  int64_t n = apk_tensor_numel(gate);
  REQUIRE(apk_tensor_numel(up) == n && apk_tensor_numel(dout) == n && apk_tensor_numel(dgate) == n &&
              apk_tensor_numel(dup) == n,
          "%s: sizes differ", op);
  return ctx->ops->swiglu_backward(ctx->state, dgate->data, dup->data, dout->data, gate->data, up->data, n);
}

int apk_add_inplace(apk_ctx *ctx, apk_tensor *a, const apk_tensor *b) {
  const char *op = "add_inplace";
  CHECK_T("a", a, APK_F32);
  CHECK_T("b", b, APK_F32);
  REQUIRE(apk_tensor_numel(a) == apk_tensor_numel(b), "%s: sizes differ", op);
  return ctx->ops->add_inplace(ctx->state, a->data, b->data, apk_tensor_numel(a));
}

int apk_crossentropy_forward(apk_ctx *ctx, apk_tensor *nll, const apk_tensor *logits, const apk_tensor *targets) {
  const char *op = "crossentropy_forward";
  CHECK_T("nll", nll, APK_F32);
  CHECK_T("logits", logits, APK_F32);
  CHECK_T("targets", targets, APK_I32);
  int64_t V = t_cols(logits), N = t_rows(logits);
  REQUIRE(apk_tensor_numel(targets) == N && apk_tensor_numel(nll) == N, "%s: targets and nll must have N=%lld", op,
          (long long)N);
  return ctx->ops->crossentropy_forward(ctx->state, nll->data, logits->data, targets->data, N, V);
}

int apk_crossentropy_backward(apk_ctx *ctx, apk_tensor *dlogits, const apk_tensor *logits,
                              const apk_tensor *targets, float scale) {
  const char *op = "crossentropy_backward";
  CHECK_T("dlogits", dlogits, APK_F32);
  CHECK_T("logits", logits, APK_F32);
  CHECK_T("targets", targets, APK_I32);
  int64_t V = t_cols(logits), N = t_rows(logits);
  REQUIRE(apk_tensor_numel(targets) == N, "%s: targets must have N elements", op);
  REQUIRE(apk_tensor_numel(dlogits) == N * V, "%s: dlogits must be [N,V]", op);
  return ctx->ops->crossentropy_backward(ctx->state, dlogits->data, logits->data, targets->data, N, V, scale);
}

int apk_nll_window_sums(apk_ctx *ctx, double *sums, const apk_tensor *nll, int64_t n_windows) {
  const char *op = "nll_window_sums";
  CHECK_T("nll", nll, APK_F32);
  int64_t n = apk_tensor_numel(nll);
  REQUIRE(sums && n_windows > 0 && n % n_windows == 0, "%s: %lld values do not split into %lld windows", op,
          (long long)n, (long long)n_windows);
  return ctx->ops->nll_window_sums(ctx->state, sums, nll->data, n_windows, n / n_windows);
}

int apk_colsumsq_accumulate(apk_ctx *ctx, apk_tensor *acc, const apk_tensor *inp) {
  const char *op = "colsumsq_accumulate";
  CHECK_T("acc", acc, APK_F64);
  CHECK_T("inp", inp, APK_F32);
  REQUIRE(apk_tensor_numel(acc) == t_cols(inp), "%s: acc must have one entry per input column (%lld)", op,
          (long long)t_cols(inp));
  return ctx->ops->colsumsq_accumulate(ctx->state, acc->data, inp->data, t_rows(inp), t_cols(inp));
}

int apk_absgrad_accumulate(apk_ctx *ctx, apk_tensor *acc, const apk_tensor *grad) {
  const char *op = "absgrad_accumulate";
  if (!acc || (acc->dtype != APK_F32 && acc->dtype != APK_F64)) return apk_fail(APK_EINVAL, "%s: acc must be F32 or F64", op);
  CHECK_T("acc", acc, acc->dtype);
  CHECK_T("grad", grad, APK_F32);
  REQUIRE(apk_tensor_numel(acc) == apk_tensor_numel(grad), "%s: sizes differ", op);
  return ctx->ops->absgrad_accumulate(ctx->state, acc->data, acc->dtype, grad->data, apk_tensor_numel(grad));
}

int apk_abs_sum_kept(apk_ctx *ctx, double *sum, const apk_tensor *x, const apk_tensor *mask) {
  const char *op = "abs_sum_kept";
  CHECK_T("x", x, APK_F32);
  int64_t n = apk_tensor_numel(x);
  REQUIRE(sum != NULL, "%s: sum is NULL", op);
  if (mask) {
    CHECK_T("mask", mask, APK_U8);
    REQUIRE(apk_tensor_numel(mask) >= (n + 7) / 8, "%s: mask needs %lld bytes", op, (long long)((n + 7) / 8));
  }
  return ctx->ops->abs_sum_kept(ctx->state, sum, x->data, mask ? mask->data : NULL, n);
}

int apk_mask_apply(apk_ctx *ctx, apk_tensor *working, const apk_tensor *orig, const apk_tensor *mask) {
  const char *op = "mask_apply";
  CHECK_T("working", working, APK_F32);
  if (!orig || (orig->dtype != APK_F32 && orig->dtype != APK_F16 && orig->dtype != APK_BF16))
    return apk_fail(APK_EINVAL, "%s: orig must be F32, F16 or BF16", op);
  CHECK_T("orig", orig, orig->dtype);
  int64_t n = apk_tensor_numel(working);
  REQUIRE(apk_tensor_numel(orig) == n, "%s: orig and working sizes differ", op);
  if (mask) {
    CHECK_T("mask", mask, APK_U8);
    REQUIRE(apk_tensor_numel(mask) >= (n + 7) / 8, "%s: mask needs %lld bytes", op, (long long)((n + 7) / 8));
  }
  return ctx->ops->mask_apply(ctx->state, working->data, orig->data, orig->dtype, mask ? mask->data : NULL, n);
}

int apk_mask_restore(apk_ctx *ctx, apk_tensor *working, const apk_tensor *orig) {
  return apk_mask_apply(ctx, working, orig, NULL);
}
