/*
 * cuda_backend.cu - the CUDA backend of ap_kernels (the op table of
 * ap_backend.h) and the extension API of ap_cuda.h: contexts, memory with a
 * process-wide limit, cuBLAS matrix products in FP32/TF32/BF16/F16, and the
 * row and element kernels of the transformer and of the pruning statistics.
 * Attention lives in cuda_attention.cu, pruning masks in prune_*.cu, the
 * weight streamer in weight_stream.cu.
 *
 * Element math comes from ap_math.h / ap_math_ext.h, the same functions the
 * CPU backend uses; reductions accumulate in double where the CPU does.
 */
#include <mutex>
#include <stdio.h>
#include <stdlib.h>
#include <unordered_map>
#include <vector>

#include "cuda_common.cuh"

#define THREADS 256

/* ---- errors ------------------------------------------------------------------ */

int cu_fail(cudaError_t e, const char *what) {
  if (e == cudaErrorMemoryAllocation)
    return apk_fail(APK_ENOMEM, "cuda: %s: out of device memory", what);
  return apk_fail(APK_EDEVICE, "cuda: %s: %s", what, cudaGetErrorString(e));
}

int cublas_fail(cublasStatus_t s, const char *what) {
  return apk_fail(APK_EDEVICE, "cublas: %s: status %d", what, (int)s);
}

int cu_check_launch(const char *what) {
  cudaError_t e = cudaGetLastError();
  return e == cudaSuccess ? APK_OK : cu_fail(e, what);
}

#define CU(call, what)                              \
  do {                                              \
    cudaError_t e_ = (call);                        \
    if (e_ != cudaSuccess) return cu_fail(e_, what); \
  } while (0)

#define LAUNCHED(what)                 \
  do {                                 \
    int rc_ = cu_check_launch(what);   \
    if (rc_) return rc_;               \
  } while (0)

/* ---- process-wide memory accounting ----------------------------------------- */

static std::mutex g_mem_mu;
static uint64_t g_mem_cur, g_mem_peak, g_mem_limit;
static int g_mem_limit_init;
static std::unordered_map<void *, size_t> *g_sizes;

static void mem_limit_init_locked(void) {
  if (g_mem_limit_init) return;
  g_mem_limit_init = 1;
  const char *s = getenv("AP_GPU_MEM_LIMIT");
  if (s && *s) {
    char *end = NULL;
    double v = strtod(s, &end);
    double mul = 1;
    if (end && (*end == 'G' || *end == 'g')) mul = 1073741824.0;
    else if (end && (*end == 'M' || *end == 'm')) mul = 1048576.0;
    else if (end && (*end == 'T' || *end == 't')) mul = 1099511627776.0;
    if (v > 0) g_mem_limit = (uint64_t)(v * mul);
  }
}

int cu_mem_take(size_t bytes, const char *what) {
  std::lock_guard<std::mutex> lk(g_mem_mu);
  mem_limit_init_locked();
  if (g_mem_limit && g_mem_cur + bytes > g_mem_limit)
    return apk_fail(APK_ENOMEM, "cuda: %s of %zu bytes would exceed the GPU memory limit of %llu bytes (%llu in use)",
                    what, bytes, (unsigned long long)g_mem_limit, (unsigned long long)g_mem_cur);
  g_mem_cur += bytes;
  if (g_mem_cur > g_mem_peak) g_mem_peak = g_mem_cur;
  return APK_OK;
}

void cu_mem_give(size_t bytes) {
  std::lock_guard<std::mutex> lk(g_mem_mu);
  g_mem_cur = bytes > g_mem_cur ? 0 : g_mem_cur - bytes;
}

extern "C" void apk_cuda_set_mem_limit(uint64_t bytes) {
  std::lock_guard<std::mutex> lk(g_mem_mu);
  g_mem_limit_init = 1;
  g_mem_limit = bytes;
}

extern "C" uint64_t apk_cuda_mem_limit(void) {
  std::lock_guard<std::mutex> lk(g_mem_mu);
  mem_limit_init_locked();
  return g_mem_limit;
}

extern "C" void apk_cuda_mem_usage(uint64_t *current, uint64_t *peak) {
  std::lock_guard<std::mutex> lk(g_mem_mu);
  if (current) *current = g_mem_cur;
  if (peak) *peak = g_mem_peak;
}

extern "C" void apk_cuda_mem_reset_peak(void) {
  std::lock_guard<std::mutex> lk(g_mem_mu);
  g_mem_peak = g_mem_cur;
}

/* Device allocation through the accounting; sizes remembered for release. */
static int dev_alloc(size_t bytes, void **out, const char *what) {
  int rc = cu_mem_take(bytes, what);
  if (rc) return rc;
  void *p = NULL;
  cudaError_t e = cudaMalloc(&p, bytes);
  if (e != cudaSuccess) {
    cu_mem_give(bytes);
    return cu_fail(e, what);
  }
  std::lock_guard<std::mutex> lk(g_mem_mu);
  if (!g_sizes) g_sizes = new std::unordered_map<void *, size_t>();
  (*g_sizes)[p] = bytes;
  *out = p;
  return APK_OK;
}

static void dev_free(void *p) {
  if (!p) return;
  size_t bytes = 0;
  {
    std::lock_guard<std::mutex> lk(g_mem_mu);
    if (g_sizes) {
      auto it = g_sizes->find(p);
      if (it != g_sizes->end()) {
        bytes = it->second;
        g_sizes->erase(it);
      }
    }
  }
  cudaFree(p);
  cu_mem_give(bytes);
}

/* ---- contexts ------------------------------------------------------------------ */

static std::mutex g_ctx_mu;
static apk_gemm_mode g_gemm = APK_GEMM_F32;
static int g_gemm_init;
static std::vector<cuda_state *> *g_live;

static apk_gemm_mode gemm_default_locked(void) {
  if (!g_gemm_init) {
    g_gemm_init = 1;
    const char *s = getenv("AP_CUDA_GEMM");
    if (s && !strcmp(s, "tf32")) g_gemm = APK_GEMM_TF32;
    else if (s && !strcmp(s, "bf16")) g_gemm = APK_GEMM_BF16;
    else if (s && !strcmp(s, "f16")) g_gemm = APK_GEMM_F16;
  }
  return g_gemm;
}

extern "C" int apk_cuda_set_gemm_mode(apk_gemm_mode mode) {
  if (mode < APK_GEMM_F32 || mode > APK_GEMM_F16) return apk_fail(APK_EINVAL, "unknown GEMM mode %d", (int)mode);
  std::lock_guard<std::mutex> lk(g_ctx_mu);
  g_gemm_init = 1;
  g_gemm = mode;
  return APK_OK;
}

extern "C" apk_gemm_mode apk_cuda_gemm_mode(void) {
  std::lock_guard<std::mutex> lk(g_ctx_mu);
  return gemm_default_locked();
}

extern "C" const char *apk_gemm_mode_name(apk_gemm_mode mode) {
  switch (mode) {
    case APK_GEMM_F32: return "f32";
    case APK_GEMM_TF32: return "tf32";
    case APK_GEMM_BF16: return "bf16";
    case APK_GEMM_F16: return "f16";
  }
  return "?";
}

extern "C" int apk_cuda_device_count(void) {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError(); /* clear the sticky "no driver" error */
    return 0;
  }
  return n;
}

extern "C" int apk_cuda_device_info(int device, char *name, size_t len, size_t *total_bytes, size_t *free_bytes) {
  cudaDeviceProp prop;
  CU(cudaGetDeviceProperties(&prop, device), "device properties");
  if (name && len) snprintf(name, len, "%s", prop.name);
  CU(cudaSetDevice(device), "set device");
  size_t fr = 0, tot = 0;
  CU(cudaMemGetInfo(&fr, &tot), "memory info");
  if (total_bytes) *total_bytes = tot;
  if (free_bytes) *free_bytes = fr;
  return APK_OK;
}

static void cuda_shutdown(void *state);

static int cuda_init(int device, void **state) {
  *state = NULL;
  int n = apk_cuda_device_count();
  if (n == 0) return apk_fail(APK_EDEVICE, "cuda: no CUDA device (or no driver) on this machine");
  if (device < 0 || device >= n) return apk_fail(APK_EINVAL, "cuda: device %d does not exist (%d devices)", device, n);
  CU(cudaSetDevice(device), "set device");
  cuda_state *st = (cuda_state *)calloc(1, sizeof *st);
  if (!st) return apk_fail(APK_ENOMEM, "cuda: out of host memory for a context");
  st->device = device;
  {
    std::lock_guard<std::mutex> lk(g_ctx_mu);
    st->gemm = gemm_default_locked();
  }
  int rc = APK_OK;
  cudaError_t e;
  cublasStatus_t bs;
  if ((e = cudaStreamCreateWithFlags(&st->stream, cudaStreamNonBlocking)) != cudaSuccess) {
    rc = cu_fail(e, "stream");
    goto fail;
  }
  if ((bs = cublasCreate(&st->blas)) != CUBLAS_STATUS_SUCCESS) {
    rc = cublas_fail(bs, "create handle");
    goto fail;
  }
  cublasSetStream(st->blas, st->stream);
  /* an explicit workspace keeps cuBLAS from allocating behind our accounting */
  st->blas_ws_bytes = (size_t)32 << 20;
  if ((rc = dev_alloc(st->blas_ws_bytes, &st->blas_ws, "cuBLAS workspace"))) goto fail;
  cublasSetWorkspace(st->blas, st->blas_ws, st->blas_ws_bytes);
  if ((rc = dev_alloc(sizeof(unsigned), (void **)&st->dflags, "error word"))) goto fail;
  if ((e = cudaMemsetAsync(st->dflags, 0, sizeof(unsigned), st->stream)) != cudaSuccess) {
    rc = cu_fail(e, "memset");
    goto fail;
  }
  if ((e = cudaMallocHost((void **)&st->hflags, sizeof(unsigned))) != cudaSuccess ||
      (e = cudaMallocHost((void **)&st->hred, 64 * sizeof(double))) != cudaSuccess) {
    rc = cu_fail(e, "pinned host buffers");
    goto fail;
  }
  {
    std::lock_guard<std::mutex> lk(g_ctx_mu);
    if (!g_live) g_live = new std::vector<cuda_state *>();
    g_live->push_back(st);
  }
  *state = st;
  return APK_OK;
fail:
  cuda_shutdown(st);
  return rc;
}

static void cuda_shutdown(void *state) {
  cuda_state *st = (cuda_state *)state;
  if (!st) return;
  {
    std::lock_guard<std::mutex> lk(g_ctx_mu);
    if (g_live)
      for (size_t i = 0; i < g_live->size(); i++)
        if ((*g_live)[i] == st) {
          g_live->erase(g_live->begin() + (long)i);
          break;
        }
  }
  if (st->stream) cudaStreamSynchronize(st->stream);
  if (st->blas) cublasDestroy(st->blas);
  dev_free(st->blas_ws);
  dev_free(st->scratch);
  dev_free(st->dred);
  dev_free(st->dflags);
  if (st->hflags) cudaFreeHost(st->hflags);
  if (st->hred) cudaFreeHost(st->hred);
  if (st->stream) cudaStreamDestroy(st->stream);
  free(st);
}

/* Waits for the stream and reports errors that kernels recorded. */
static int cuda_sync(void *state) {
  cuda_state *st = (cuda_state *)state;
  CU(cudaMemcpyAsync(st->hflags, st->dflags, sizeof(unsigned), cudaMemcpyDeviceToHost, st->stream), "read errors");
  CU(cudaStreamSynchronize(st->stream), "synchronize");
  unsigned f = *st->hflags;
  if (!f) return APK_OK;
  CU(cudaMemsetAsync(st->dflags, 0, sizeof(unsigned), st->stream), "clear errors");
  if (f & CU_ERR_TOKEN) return apk_fail(APK_ERANGE, "embedding: a token id is outside the vocabulary");
  return apk_fail(APK_ERANGE, "cross-entropy: a target id is outside the vocabulary");
}

int cu_scratch(cuda_state *st, size_t bytes, void **out) {
  if (bytes > st->scratch_bytes) {
    /* the old buffer may still be read by queued kernels */
    CU(cudaStreamSynchronize(st->stream), "scratch resize");
    dev_free(st->scratch);
    st->scratch = NULL;
    st->scratch_bytes = 0;
    size_t want = bytes + bytes / 4;
    int rc = dev_alloc(want, &st->scratch, "scratch");
    if (rc) return rc;
    st->scratch_bytes = want;
  }
  *out = st->scratch;
  return APK_OK;
}

int cu_dred(cuda_state *st, size_t n) {
  if (n <= st->dred_n) return APK_OK;
  CU(cudaStreamSynchronize(st->stream), "reduction buffer resize");
  dev_free(st->dred);
  st->dred = NULL;
  st->dred_n = 0;
  int rc = dev_alloc(n * sizeof(double), (void **)&st->dred, "reduction buffer");
  if (rc) return rc;
  st->dred_n = n;
  return APK_OK;
}

/* The state behind an apk_ctx. ap_kernels.c keeps it private; when it
 * exports apk_ctx_backend_state() (a one-line accessor proposed to the
 * kernels owner) that is used,
 * otherwise the only live CUDA context is (one job per GPU per process). */
extern "C" void *apk_ctx_backend_state(apk_ctx *ctx) __attribute__((weak));

cuda_state *cu_state_of_ctx(apk_ctx *ctx) {
  if (!ctx || apk_ctx_backend(ctx) != APK_CUDA) {
    apk_fail(APK_EINVAL, "cuda: not a CUDA context");
    return NULL;
  }
  if (apk_ctx_backend_state) return (cuda_state *)apk_ctx_backend_state(ctx);
  std::lock_guard<std::mutex> lk(g_ctx_mu);
  if (g_live && g_live->size() == 1) return (*g_live)[0];
  apk_fail(APK_ENOTSUP, "cuda: several CUDA contexts are alive and ap_kernels.c does not export "
                        "apk_ctx_backend_state(); cannot tell which one this is");
  return NULL;
}

extern "C" void *apk_cuda_ctx_stream(apk_ctx *ctx) {
  cuda_state *st = cu_state_of_ctx(ctx);
  return st ? (void *)st->stream : NULL;
}

/* ---- memory ops --------------------------------------------------------------------- */

static int cuda_alloc(void *state, size_t bytes, void **out) { return dev_alloc(bytes, out, "tensor allocation"); }

static void cuda_release(void *state, void *ptr) {
  cuda_state *st = (cuda_state *)state;
  /* queued kernels may still use the buffer */
  cudaStreamSynchronize(st->stream);
  dev_free(ptr);
}

static int cuda_upload(void *state, void *dst, const void *host, size_t bytes) {
  cuda_state *st = (cuda_state *)state;
  /* synchronous with respect to the host buffer, which the caller may reuse */
  CU(cudaMemcpyAsync(dst, host, bytes, cudaMemcpyHostToDevice, st->stream), "upload");
  CU(cudaStreamSynchronize(st->stream), "upload");
  return APK_OK;
}

static int cuda_download(void *state, void *host, const void *src, size_t bytes) {
  cuda_state *st = (cuda_state *)state;
  CU(cudaMemcpyAsync(host, src, bytes, cudaMemcpyDeviceToHost, st->stream), "download");
  return cuda_sync(st);
}

static int cuda_memzero(void *state, void *dst, size_t bytes) {
  cuda_state *st = (cuda_state *)state;
  CU(cudaMemsetAsync(dst, 0, bytes, st->stream), "memset");
  return APK_OK;
}

static int cuda_memcopy(void *state, void *dst, const void *src, size_t bytes) {
  cuda_state *st = (cuda_state *)state;
  if (dst == src) return APK_OK;
  CU(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, st->stream), "copy");
  return APK_OK;
}

/* ---- matrix products ----------------------------------------------------------------- */

static cudaDataType_t cu_dtype(apk_dtype dt) {
  return dt == APK_BF16 ? CUDA_R_16BF : dt == APK_F16 ? CUDA_R_16F : CUDA_R_32F;
}

int cu_gemm(cuda_state *st, cublasOperation_t ta, cublasOperation_t tb, int64_t m, int64_t n, int64_t k,
            const void *A, apk_dtype adt, int64_t lda, const void *B, apk_dtype bdt, int64_t ldb, float beta,
            float *C, int64_t ldc, cublasComputeType_t compute) {
  if (m > INT32_MAX || n > INT32_MAX || k > INT32_MAX || lda > INT32_MAX || ldb > INT32_MAX || ldc > INT32_MAX)
    return apk_fail(APK_EINVAL, "cublas: matrix dimension beyond 2^31");
  float alpha = 1.0f;
  cublasStatus_t s = cublasGemmEx(st->blas, ta, tb, (int)m, (int)n, (int)k, &alpha, A, cu_dtype(adt), (int)lda, B,
                                  cu_dtype(bdt), (int)ldb, &beta, C, CUDA_R_32F, (int)ldc, compute,
                                  CUBLAS_GEMM_DEFAULT);
  return s == CUBLAS_STATUS_SUCCESS ? APK_OK : cublas_fail(s, "GemmEx");
}

__global__ void k_convert(void *dst, int dt, const float *src, int64_t n) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
    ((uint16_t *)dst)[i] = dt == APK_BF16 ? apk_f32_to_bf16(src[i]) : apk_f32_to_f16(src[i]);
}

int cu_convert(cuda_state *st, void *dst, apk_dtype dt, const float *src, int64_t n) {
  if (n <= 0) return APK_OK;
  k_convert<<<cu_blocks(n, THREADS), THREADS, 0, st->stream>>>(dst, (int)dt, src, n);
  return cu_check_launch("convert");
}

/* The operands of one product in the context's GEMM mode: F32 pointers as
 * they are, or rounded copies in the scratch buffer for BF16/F16. */
struct gemm_in {
  const void *a, *b;
  apk_dtype dt;
  cublasComputeType_t compute;
};

static int gemm_prepare(cuda_state *st, const float *a, int64_t na, const float *b, int64_t nb, gemm_in *g) {
  g->a = a;
  g->b = b;
  g->dt = APK_F32;
  g->compute = st->gemm == APK_GEMM_TF32 ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F;
  if (st->gemm != APK_GEMM_BF16 && st->gemm != APK_GEMM_F16) return APK_OK;
  g->dt = st->gemm == APK_GEMM_BF16 ? APK_BF16 : APK_F16;
  void *buf = NULL;
  int rc = cu_scratch(st, (size_t)(na + nb) * 2, &buf);
  if (rc) return rc;
  uint16_t *ca = (uint16_t *)buf, *cb = ca + na;
  if ((rc = cu_convert(st, ca, g->dt, a, na)) || (rc = cu_convert(st, cb, g->dt, b, nb))) return rc;
  g->a = ca;
  g->b = cb;
  return APK_OK;
}

__global__ void k_add_bias(float *out, const float *bias, int64_t N, int64_t OC) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < N * OC; i += (int64_t)gridDim.x * blockDim.x)
    out[i] += bias[i % OC];
}

static int cuda_linear_forward(void *state, float *out, const float *inp, const float *weight, const float *bias,
                               int64_t N, int64_t IC, int64_t OC) {
  cuda_state *st = (cuda_state *)state;
  if (N == 0 || OC == 0) return APK_OK;
  gemm_in g;
  int rc = gemm_prepare(st, weight, OC * IC, inp, N * IC, &g);
  /* row-major out[N,OC] = inp W^T is column-major out^T = W^T(op T of IC x OC) * inp^T */
  if (!rc) rc = cu_gemm(st, CUBLAS_OP_T, CUBLAS_OP_N, OC, N, IC, g.a, g.dt, IC, g.b, g.dt, IC, 0.0f, out, OC, g.compute);
  if (rc) return rc;
  if (bias) {
    k_add_bias<<<cu_blocks(N * OC, THREADS), THREADS, 0, st->stream>>>(out, bias, N, OC);
    LAUNCHED("add bias");
  }
  return APK_OK;
}

/* dbias[o] += sum_n dout[n, o], accumulated in double as the CPU does. */
__global__ void k_dbias(float *dbias, const float *dout, int64_t N, int64_t OC) {
  int64_t o = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
  if (o >= OC) return;
  double s = 0.0;
  for (int64_t n = 0; n < N; n++) s += dout[n * OC + o];
  dbias[o] += (float)s;
}

static int cuda_linear_backward(void *state, float *dinp, float *dweight, float *dbias, const float *dout,
                                const float *inp, const float *weight, int64_t N, int64_t IC, int64_t OC) {
  cuda_state *st = (cuda_state *)state;
  if (N == 0) return APK_OK;
  int rc;
  if (dinp) {
    gemm_in g;
    /* dinp[N,IC] += dout W: column-major dinp^T = W^T(IC x OC, as stored) * dout^T */
    if ((rc = gemm_prepare(st, weight, OC * IC, dout, N * OC, &g)) ||
        (rc = cu_gemm(st, CUBLAS_OP_N, CUBLAS_OP_N, IC, N, OC, g.a, g.dt, IC, g.b, g.dt, OC, 1.0f, dinp, IC,
                      g.compute)))
      return rc;
  }
  if (dweight) {
    gemm_in g;
    /* dW[OC,IC] += dout^T inp: column-major dW^T = inp^T (IC x N) * dout (N x OC) */
    if ((rc = gemm_prepare(st, inp, N * IC, dout, N * OC, &g)) ||
        (rc = cu_gemm(st, CUBLAS_OP_N, CUBLAS_OP_T, IC, OC, N, g.a, g.dt, IC, g.b, g.dt, OC, 1.0f, dweight, IC,
                      g.compute)))
      return rc;
  }
  if (dbias) {
    k_dbias<<<cu_blocks(OC, THREADS), THREADS, 0, st->stream>>>(dbias, dout, N, OC);
    LAUNCHED("bias gradient");
  }
  return APK_OK;
}

extern "C" int apk_cuda_linear_lowp(apk_ctx *ctx, float *out, const float *inp, const void *weight,
                                    apk_dtype weight_dtype, const float *bias, int64_t N, int64_t IC, int64_t OC) {
  cuda_state *st = cu_state_of_ctx(ctx);
  if (!st) return APK_EINVAL;
  if (!out || !inp || !weight || N < 0 || IC <= 0 || OC <= 0)
    return apk_fail(APK_EINVAL, "linear_lowp: NULL pointer or bad size");
  if (weight_dtype != APK_F32 && weight_dtype != APK_BF16 && weight_dtype != APK_F16)
    return apk_fail(APK_EINVAL, "linear_lowp: weight must be F32, BF16 or F16");
  if (N == 0) return APK_OK;
  const void *b = inp;
  int rc;
  if (weight_dtype != APK_F32) {
    void *buf = NULL;
    if ((rc = cu_scratch(st, (size_t)(N * IC) * 2, &buf)) || (rc = cu_convert(st, buf, weight_dtype, inp, N * IC)))
      return rc;
    b = buf;
  }
  rc = cu_gemm(st, CUBLAS_OP_T, CUBLAS_OP_N, OC, N, IC, weight, weight_dtype, IC, b, weight_dtype, IC, 0.0f, out, OC,
               CUBLAS_COMPUTE_32F);
  if (rc) return rc;
  if (bias) {
    k_add_bias<<<cu_blocks(N * OC, THREADS), THREADS, 0, st->stream>>>(out, bias, N, OC);
    LAUNCHED("add bias");
  }
  return APK_OK;
}

/* ---- transformer element and row kernels ------------------------------------------------ */

__global__ void k_embedding(float *out, const int32_t *tokens, const float *table, int64_t N, int64_t C, int64_t V,
                            unsigned *flags) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < N * C; i += (int64_t)gridDim.x * blockDim.x) {
    int64_t n = i / C, c = i % C;
    int32_t t = tokens[n];
    if (t < 0 || t >= V) {
      out[i] = 0.0f;
      if (c == 0) atomicOr(flags, (unsigned)CU_ERR_TOKEN);
      continue;
    }
    out[i] = table[(int64_t)t * C + c];
  }
}

static int cuda_embedding_forward(void *state, float *out, const int32_t *tokens, const float *table, int64_t N,
                                  int64_t C, int64_t V) {
  cuda_state *st = (cuda_state *)state;
  if (N * C == 0) return APK_OK;
  k_embedding<<<cu_blocks(N * C, THREADS), THREADS, 0, st->stream>>>(out, tokens, table, N, C, V, st->dflags);
  return cu_check_launch("embedding");
}

/* One block per row; the sum of squares in double as the CPU backend. */
__global__ void k_rmsnorm_fwd(float *out, float *rstd, const float *inp, const float *weight, int64_t C, float eps) {
  __shared__ double sh[32];
  int64_t n = blockIdx.x;
  const float *x = inp + n * C;
  float *y = out + n * C;
  double ss = 0.0;
  for (int64_t i = threadIdx.x; i < C; i += blockDim.x) ss += (double)x[i] * x[i];
  ss = block_sum_d(ss, sh);
  float r = apk_rmsnorm_rstd(ss, C, eps);
  for (int64_t i = threadIdx.x; i < C; i += blockDim.x) y[i] = apk_rmsnorm_out(x[i], r, weight[i]);
  if (rstd && threadIdx.x == 0) rstd[n] = r;
}

static int cuda_rmsnorm_forward(void *state, float *out, float *rstd, const float *inp, const float *weight,
                                int64_t N, int64_t C, float eps) {
  cuda_state *st = (cuda_state *)state;
  if (N == 0) return APK_OK;
  if (N > INT32_MAX) return apk_fail(APK_EINVAL, "rmsnorm: too many rows");
  k_rmsnorm_fwd<<<(unsigned)N, C >= 1024 ? 256 : 128, 0, st->stream>>>(out, rstd, inp, weight, C, eps);
  return cu_check_launch("rmsnorm forward");
}

__global__ void k_rmsnorm_bwd(float *dinp, const float *dout, const float *inp, const float *weight,
                              const float *rstd, int64_t C) {
  __shared__ double sh[32];
  int64_t n = blockIdx.x;
  const float *x = inp + n * C, *dy = dout + n * C;
  float *dx = dinp + n * C;
  float r = rstd[n];
  double dot = 0.0;
  for (int64_t i = threadIdx.x; i < C; i += blockDim.x) dot += (double)dy[i] * weight[i] * x[i];
  dot = block_sum_d(dot, sh);
  float k = apk_rmsnorm_bwd_k(dot, r, C);
  for (int64_t i = threadIdx.x; i < C; i += blockDim.x) dx[i] += apk_rmsnorm_dx(dy[i], x[i], weight[i], r, k);
}

static int cuda_rmsnorm_backward(void *state, float *dinp, const float *dout, const float *inp, const float *weight,
                                 const float *rstd, int64_t N, int64_t C) {
  cuda_state *st = (cuda_state *)state;
  if (N == 0) return APK_OK;
  if (N > INT32_MAX) return apk_fail(APK_EINVAL, "rmsnorm: too many rows");
  k_rmsnorm_bwd<<<(unsigned)N, C >= 1024 ? 256 : 128, 0, st->stream>>>(dinp, dout, inp, weight, rstd, C);
  return cu_check_launch("rmsnorm backward");
}

__global__ void k_rope(float *out, const float *inp, const float *cos_t, const float *sin_t, int64_t N, int64_t H,
                       int64_t D, int64_t T, int sign) {
  int64_t half = D / 2, total = N * H * half;
  for (int64_t idx = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; idx < total;
       idx += (int64_t)gridDim.x * blockDim.x) {
    int64_t i = idx % half, nh = idx / half, n = nh / H;
    int64_t tab = (n % T) * half + i;
    float c = cos_t[tab], s = sin_t[tab];
    const float *x = inp + nh * D;
    float o1, o2;
    apk_rope_rotate(x[i], x[i + half], c, sign > 0 ? s : -s, &o1, &o2);
    out[nh * D + i] = o1;
    out[nh * D + i + half] = o2;
  }
}

static int cuda_rope(void *state, float *out, const float *inp, const float *cos_t, const float *sin_t, int64_t N,
                     int64_t H, int64_t D, int64_t T, int sign) {
  cuda_state *st = (cuda_state *)state;
  int64_t total = N * H * (D / 2);
  if (total == 0) return APK_OK;
  k_rope<<<cu_blocks(total, THREADS), THREADS, 0, st->stream>>>(out, inp, cos_t, sin_t, N, H, D, T, sign);
  return cu_check_launch("rope");
}

static int cuda_attention_forward(void *state, float *out, float *lse, const float *q, const float *k, const float *v,
                                  int64_t B, int64_t T, int64_t H, int64_t KVH, int64_t D) {
  return cu_attention_forward((cuda_state *)state, out, lse, q, k, v, B, T, H, KVH, D);
}

static int cuda_attention_backward(void *state, float *dq, float *dk, float *dv, const float *dout, const float *q,
                                   const float *k, const float *v, const float *out, const float *lse, int64_t B,
                                   int64_t T, int64_t H, int64_t KVH, int64_t D) {
  return cu_attention_backward((cuda_state *)state, dq, dk, dv, dout, q, k, v, out, lse, B, T, H, KVH, D);
}

__global__ void k_swiglu_fwd(float *out, const float *gate, const float *up, int64_t n) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
    out[i] = apk_silu(gate[i]) * up[i];
}

static int cuda_swiglu_forward(void *state, float *out, const float *gate, const float *up, int64_t n) {
  cuda_state *st = (cuda_state *)state;
  if (n == 0) return APK_OK;
  k_swiglu_fwd<<<cu_blocks(n, THREADS), THREADS, 0, st->stream>>>(out, gate, up, n);
  return cu_check_launch("swiglu forward");
}

__global__ void k_swiglu_bwd(float *dgate, float *dup, const float *dout, const float *gate, const float *up,
                             int64_t n) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
    float g = gate[i], u = up[i], d = dout[i];
    float dg = d * u * apk_silu_grad(g);
    float du = d * apk_silu(g);
    dgate[i] = dg;
    dup[i] = du;
  }
}

static int cuda_swiglu_backward(void *state, float *dgate, float *dup, const float *dout, const float *gate,
                                const float *up, int64_t n) {
  cuda_state *st = (cuda_state *)state;
  if (n == 0) return APK_OK;
  k_swiglu_bwd<<<cu_blocks(n, THREADS), THREADS, 0, st->stream>>>(dgate, dup, dout, gate, up, n);
  return cu_check_launch("swiglu backward");
}

__global__ void k_add(float *a, const float *b, int64_t n) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
    a[i] += b[i];
}

static int cuda_add_inplace(void *state, float *a, const float *b, int64_t n) {
  cuda_state *st = (cuda_state *)state;
  if (n == 0) return APK_OK;
  k_add<<<cu_blocks(n, THREADS), THREADS, 0, st->stream>>>(a, b, n);
  return cu_check_launch("add");
}

/* Log-sum-exp of one row by the block, as cpu_ops.c's row_logsumexp: float
 * max, then exp((double)(x - max)) summed in double. */
__device__ double row_lse(const float *x, int64_t V, float *shf, double *shd) {
  float mx = -INFINITY;
  for (int64_t i = threadIdx.x; i < V; i += blockDim.x) mx = fmaxf(mx, x[i]);
  mx = block_max_f(mx, shf);
  double s = 0.0;
  for (int64_t i = threadIdx.x; i < V; i += blockDim.x) s += exp((double)(x[i] - mx));
  s = block_sum_d(s, shd);
  return (double)mx + log(s);
}

__global__ void k_ce_fwd(float *nll, const float *logits, const int32_t *targets, int64_t V, unsigned *flags) {
  __shared__ float shf[32];
  __shared__ double shd[32];
  int64_t n = blockIdx.x;
  int32_t t = targets[n];
  if (t >= V) {
    if (threadIdx.x == 0) {
      nll[n] = 0.0f;
      atomicOr(flags, (unsigned)CU_ERR_TARGET);
    }
    return;
  }
  if (t < 0) {
    if (threadIdx.x == 0) nll[n] = 0.0f;
    return;
  }
  const float *x = logits + n * V;
  double lse = row_lse(x, V, shf, shd);
  if (threadIdx.x == 0) nll[n] = (float)(lse - (double)x[t]);
}

static int cuda_crossentropy_forward(void *state, float *nll, const float *logits, const int32_t *targets, int64_t N,
                                     int64_t V) {
  cuda_state *st = (cuda_state *)state;
  if (N == 0) return APK_OK;
  if (N > INT32_MAX) return apk_fail(APK_EINVAL, "cross-entropy: too many rows");
  k_ce_fwd<<<(unsigned)N, 512, 0, st->stream>>>(nll, logits, targets, V, st->dflags);
  return cu_check_launch("cross-entropy forward");
}

__global__ void k_ce_bwd(float *dlogits, const float *logits, const int32_t *targets, int64_t V, float scale,
                         unsigned *flags) {
  __shared__ float shf[32];
  __shared__ double shd[32];
  int64_t n = blockIdx.x;
  int32_t t = targets[n];
  const float *x = logits + n * V;
  float *d = dlogits + n * V;
  if (t < 0 || t >= V) {
    if (t >= V && threadIdx.x == 0) atomicOr(flags, (unsigned)CU_ERR_TARGET);
    for (int64_t i = threadIdx.x; i < V; i += blockDim.x) d[i] = 0.0f;
    return;
  }
  double lse = row_lse(x, V, shf, shd);
  /* every thread reads and writes only its own elements after the reductions,
   * so dlogits may alias logits */
  for (int64_t i = threadIdx.x; i < V; i += blockDim.x) d[i] = apk_ce_grad(x[i], lse, scale, i == t);
}

static int cuda_crossentropy_backward(void *state, float *dlogits, const float *logits, const int32_t *targets,
                                      int64_t N, int64_t V, float scale) {
  cuda_state *st = (cuda_state *)state;
  if (N == 0) return APK_OK;
  if (N > INT32_MAX) return apk_fail(APK_EINVAL, "cross-entropy: too many rows");
  k_ce_bwd<<<(unsigned)N, 512, 0, st->stream>>>(dlogits, logits, targets, V, scale, st->dflags);
  return cu_check_launch("cross-entropy backward");
}

__global__ void k_row_sums(double *out, const float *x, int64_t T) {
  __shared__ double sh[32];
  double s = 0.0;
  for (int64_t t = threadIdx.x; t < T; t += blockDim.x) s += x[blockIdx.x * T + t];
  s = block_sum_d(s, sh);
  if (threadIdx.x == 0) out[blockIdx.x] = s;
}

static int cuda_nll_window_sums(void *state, double *sums, const float *nll, int64_t B, int64_t T) {
  cuda_state *st = (cuda_state *)state;
  int rc = cu_dred(st, (size_t)B);
  if (rc) return rc;
  if (B > INT32_MAX) return apk_fail(APK_EINVAL, "nll sums: too many windows");
  k_row_sums<<<(unsigned)B, 256, 0, st->stream>>>(st->dred, nll, T);
  LAUNCHED("nll sums");
  double *h = (double *)malloc((size_t)B * sizeof(double));
  if (!h) return apk_fail(APK_ENOMEM, "nll sums: out of host memory");
  cudaError_t e = cudaMemcpyAsync(h, st->dred, (size_t)B * sizeof(double), cudaMemcpyDeviceToHost, st->stream);
  if (e != cudaSuccess) {
    free(h);
    return cu_fail(e, "nll sums");
  }
  rc = cuda_sync(st);
  if (!rc)
    for (int64_t b = 0; b < B; b++) sums[b] += h[b];
  free(h);
  return rc;
}

/* ---- pruning statistics ------------------------------------------------------------------ */

/* 32 columns x 8 row lanes per block; each thread sums ROWS_PER_BLOCK/8 rows
 * in FP32, the block combines the lanes in double and adds to the FP64
 * accumulator with one atomic per column. Short FP32 runs keep the relative
 * error near 1e-7 of the block's partial sum. */
#define COLSQ_ROWS 128

__global__ void k_colsumsq(double *acc, const float *inp, int64_t N, int64_t C) {
  __shared__ double part[8][33];
  int64_t c = blockIdx.x * 32 + threadIdx.x;
  int64_t r0 = blockIdx.y * (int64_t)COLSQ_ROWS;
  float s = 0.0f;
  if (c < C)
    for (int64_t r = r0 + threadIdx.y; r < r0 + COLSQ_ROWS && r < N; r += 8) {
      float x = inp[r * C + c];
      s += x * x;
    }
  part[threadIdx.y][threadIdx.x] = (double)s;
  __syncthreads();
  if (threadIdx.y == 0 && c < C) {
    double t = 0.0;
    for (int i = 0; i < 8; i++) t += part[i][threadIdx.x];
    atomicAdd(&acc[c], t);
  }
}

static int cuda_colsumsq_accumulate(void *state, double *acc, const float *inp, int64_t N, int64_t C) {
  cuda_state *st = (cuda_state *)state;
  if (N == 0 || C == 0) return APK_OK;
  int64_t gy = (N + COLSQ_ROWS - 1) / COLSQ_ROWS, gx = (C + 31) / 32;
  if (gy > 65535 || gx > INT32_MAX) {
    /* more rows than one grid covers: split the rows */
    int64_t step = (int64_t)65535 * COLSQ_ROWS;
    for (int64_t r = 0; r < N; r += step) {
      int rc = cuda_colsumsq_accumulate(state, acc, inp + r * C, N - r < step ? N - r : step, C);
      if (rc) return rc;
    }
    return APK_OK;
  }
  k_colsumsq<<<dim3((unsigned)gx, (unsigned)gy), dim3(32, 8), 0, st->stream>>>(acc, inp, N, C);
  return cu_check_launch("column sums of squares");
}

__global__ void k_absgrad(void *acc, int f64, const float *grad, int64_t n) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
    if (f64) ((double *)acc)[i] += fabs((double)grad[i]);
    else ((float *)acc)[i] += fabsf(grad[i]);
  }
}

static int cuda_absgrad_accumulate(void *state, void *acc, apk_dtype acc_dtype, const float *grad, int64_t n) {
  cuda_state *st = (cuda_state *)state;
  if (n == 0) return APK_OK;
  k_absgrad<<<cu_blocks(n, THREADS), THREADS, 0, st->stream>>>(acc, acc_dtype == APK_F64, grad, n);
  return cu_check_launch("gradient magnitude");
}

__global__ void k_abs_sum_kept(double *out, const float *x, const uint8_t *mask, int64_t n) {
  __shared__ double sh[32];
  double s = 0.0;
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
    if (!mask || !apk_mask_bit(mask, (uint64_t)i)) s += fabs((double)x[i]);
  s = block_sum_d(s, sh);
  if (threadIdx.x == 0) atomicAdd(out, s);
}

static int cuda_abs_sum_kept(void *state, double *sum, const float *x, const uint8_t *mask, int64_t n) {
  cuda_state *st = (cuda_state *)state;
  int rc = cu_dred(st, 1);
  if (rc) return rc;
  CU(cudaMemsetAsync(st->dred, 0, sizeof(double), st->stream), "memset");
  if (n > 0) {
    unsigned blocks = cu_blocks(n, THREADS);
    if (blocks > 4096) blocks = 4096;
    k_abs_sum_kept<<<blocks, THREADS, 0, st->stream>>>(st->dred, x, mask, n);
    LAUNCHED("abs sum");
  }
  CU(cudaMemcpyAsync(st->hred, st->dred, sizeof(double), cudaMemcpyDeviceToHost, st->stream), "abs sum");
  rc = cuda_sync(st);
  if (!rc) *sum = st->hred[0];
  return rc;
}

__global__ void k_mask_apply(float *working, const void *orig, int dt, const uint8_t *mask, int64_t n) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
    working[i] = (mask && apk_mask_bit(mask, (uint64_t)i)) ? 0.0f : cu_load_orig(orig, (apk_dtype)dt, i);
}

static int cuda_mask_apply(void *state, float *working, const void *orig, apk_dtype orig_dtype, const uint8_t *mask,
                           int64_t n) {
  cuda_state *st = (cuda_state *)state;
  if (n == 0) return APK_OK;
  /* views into device copies of mmap'd files keep the file's alignment */
  if (((uintptr_t)orig % apk_dtype_size(orig_dtype)) != 0)
    return apk_fail(APK_EINVAL, "mask_apply: the original weights are not aligned to their element size on the GPU");
  if (!mask && orig_dtype == APK_F32) return cuda_memcopy(state, working, orig, (size_t)n * 4);
  k_mask_apply<<<cu_blocks(n, THREADS), THREADS, 0, st->stream>>>(working, orig, (int)orig_dtype, mask, n);
  return cu_check_launch("mask apply");
}

/* ---- the table --------------------------------------------------------------------------- */

static const apk_backend_ops cuda_ops = {
    "cuda",
    cuda_init,
    cuda_shutdown,
    cuda_sync,
    cuda_alloc,
    cuda_release,
    cuda_upload,
    cuda_download,
    cuda_memzero,
    cuda_memcopy,
    cuda_embedding_forward,
    cuda_rmsnorm_forward,
    cuda_rmsnorm_backward,
    cuda_linear_forward,
    cuda_linear_backward,
    cuda_rope,
    cuda_attention_forward,
    cuda_attention_backward,
    cuda_swiglu_forward,
    cuda_swiglu_backward,
    cuda_add_inplace,
    cuda_crossentropy_forward,
    cuda_crossentropy_backward,
    cuda_nll_window_sums,
    cuda_colsumsq_accumulate,
    cuda_absgrad_accumulate,
    cuda_abs_sum_kept,
    cuda_mask_apply,
};

extern "C" const apk_backend_ops *apk_cuda_backend(void) { return &cuda_ops; }

/* ---- pinned host memory ------------------------------------------------------------------- */

extern "C" int apk_cuda_host_alloc(size_t bytes, void **out) {
  *out = NULL;
  CU(cudaMallocHost(out, bytes ? bytes : 1), "pinned host allocation");
  return APK_OK;
}

extern "C" void apk_cuda_host_free(void *p) {
  if (p) cudaFreeHost(p);
}

extern "C" int apk_cuda_host_register(const void *p, size_t bytes) {
  CU(cudaHostRegister((void *)p, bytes, cudaHostRegisterReadOnly), "pin host memory");
  return APK_OK;
}

extern "C" void apk_cuda_host_unregister(const void *p) {
  if (p) cudaHostUnregister((void *)p);
}
