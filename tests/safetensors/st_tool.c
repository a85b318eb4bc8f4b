/*
 * st_tool - what crosscheck.py compares against numpy/torch:
 *   st_tool dump <model dir or file>        one JSON line per tensor as our reader sees it
 *   st_tool convert <in.f32> <out.bf16> <out.f16>   raw little-endian arrays
 *   st_tool export <model dir> <out dir> <nshards>  sharded copy with index, plus
 *                                                    f16.safetensors (all tensors as F16)
 */
#include <math.h>

#include "safetensors.h"
#include "st_util.h"

static char g_err[512];

static int dump(const char *path) {
  ap_st *st = NULL;
  if (ap_st_open(path, &st, g_err, sizeof g_err) != 0) {
    fprintf(stderr, "%s\n", g_err);
    return 1;
  }
  for (size_t i = 0; i < ap_st_count(st); i++) {
    const ap_st_tensor *t = ap_st_get(st, i);
    float *f = malloc((t->numel ? t->numel : 1) * sizeof *f);
    if (!f || ap_st_tensor_to_f32_err(t, f, g_err, sizeof g_err) != 0) {
      fprintf(stderr, "%s\n", g_err);
      return 1;
    }
    double sum = 0, sumsq = 0;
    for (size_t k = 0; k < t->numel; k++) {
      sum += f[k];
      sumsq += (double)f[k] * f[k];
    }
    printf("{\"name\":\"%s\",\"dtype\":\"%s\",\"shape\":[", t->name, ap_dtype_name(t->dtype));
    for (int d = 0; d < t->ndim; d++) printf(d ? ",%lld" : "%lld", (long long)t->shape[d]);
    printf("],\"shard\":\"%s\",\"offset\":%llu,\"nbytes\":%zu,\"sum\":%.17g,\"sumsq\":%.17g,\"samples\":[",
           ap_st_shard_name(st, (size_t)t->shard), (unsigned long long)t->file_offset, t->nbytes, sum, sumsq);
    for (int s = 0; s < 8 && t->numel; s++) {
      size_t k = (size_t)s * (t->numel - 1) / 7;
      printf(s ? ",[%zu,%.9g]" : "[%zu,%.9g]", k, f[k]);
    }
    printf("]}\n");
    free(f);
  }
  ap_st_close(st);
  return 0;
}

static int convert(const char *in, const char *out_bf16, const char *out_f16) {
  size_t n = 0;
  unsigned char *b = st_read_bytes(in, &n);
  if (!b) return 1;
  size_t count = n / 4;
  float *f = malloc((count ? count : 1) * 4);
  uint16_t *bf = malloc((count ? count : 1) * 2), *hf = malloc((count ? count : 1) * 2);
  memcpy(f, b, count * 4);
  ap_f32_to_dtype(AP_BF16, f, bf, count);
  ap_f32_to_dtype(AP_F16, f, hf, count);
  int rc = st_write_bytes(out_bf16, bf, count * 2) || st_write_bytes(out_f16, hf, count * 2);
  free(f);
  free(bf);
  free(hf);
  free(b);
  return rc;
}

static int export_model(const char *src, const char *dst, int nshards) {
  ap_st *in = NULL;
  if (ap_st_open(src, &in, g_err, sizeof g_err) != 0) {
    fprintf(stderr, "%s\n", g_err);
    return 1;
  }
  size_t n = ap_st_count(in);
  ap_st_out_tensor *out = calloc(n, sizeof *out);
  char(*names)[64] = calloc((size_t)nshards, 64);
  ap_st_out_from_input(in, out);
  for (int s = 0; s < nshards; s++) snprintf(names[s], 64, "model-%05d-of-%05d.safetensors", s + 1, nshards);
  for (size_t i = 0; i < n; i++) out[i].shard = names[i % (size_t)nshards];
  int rc = ap_st_write_dir(dst, out, n, NULL, 1, g_err, sizeof g_err);
  /* Every tensor converted to F16, in reverse order, in one file. */
  void **bufs = calloc(n, sizeof *bufs);
  ap_st_out_tensor *h = calloc(n, sizeof *h);
  for (size_t i = 0; rc == 0 && i < n; i++) {
    const ap_st_tensor *t = ap_st_get(in, n - 1 - i);
    float *f = malloc(t->numel * 4);
    bufs[i] = malloc(t->numel * 2);
    ap_st_tensor_to_f32(t, f);
    ap_f32_to_dtype(AP_F16, f, bufs[i], t->numel);
    free(f);
    h[i] = (ap_st_out_tensor){.name = t->name, .dtype = AP_F16, .ndim = t->ndim, .data = bufs[i], .nbytes = t->numel * 2};
    memcpy(h[i].shape, t->shape, sizeof h[i].shape);
  }
  char *p = st_path(dst, "f16.safetensors");
  if (rc == 0) rc = ap_st_write(p, h, n, "{\"format\":\"pt\",\"source\":\"st_tool\"}", g_err, sizeof g_err);
  if (rc) fprintf(stderr, "%s\n", g_err);
  for (size_t i = 0; i < n; i++) free(bufs[i]);
  free(bufs);
  free(h);
  free(p);
  free(names);
  free(out);
  ap_st_close(in);
  return rc ? 1 : 0;
}

int main(int argc, char **argv) {
  if (argc == 3 && strcmp(argv[1], "dump") == 0) return dump(argv[2]);
  if (argc == 5 && strcmp(argv[1], "convert") == 0) return convert(argv[2], argv[3], argv[4]);
  if (argc == 5 && strcmp(argv[1], "export") == 0) return export_model(argv[2], argv[3], atoi(argv[4]));
  fprintf(stderr, "usage: st_tool dump PATH | convert IN BF16OUT F16OUT | export SRC DST NSHARDS\n");
  return 2;
}
