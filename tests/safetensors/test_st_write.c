/*
 * test_st_write - the writer: byte-exact round trips of F32/F16/BF16 (odd
 * sizes, scalars, empty tensors), header layout (JSON padded with spaces to
 * a multiple of 8, no holes), metadata, atomic replacement, refusal of bad
 * input, and sharded export mirroring the input's layout with an index.json.
 */
#include <cjson/cJSON.h>
#include <dirent.h>
#include <sys/stat.h>

#include "safetensors.h"
#include "st_util.h"
#include "test.h"

static char g_err[512];
static uint64_t rng = 88172645463325252ull;
static uint32_t next_u32(void) {
  rng ^= rng << 13;
  rng ^= rng >> 7;
  rng ^= rng << 17;
  return (uint32_t)(rng >> 20);
}

static int count_entries(const char *dir, const char *needle) {
  int n = 0;
  DIR *d = opendir(dir);
  struct dirent *e;
  while (d && (e = readdir(d)) != NULL) n += strstr(e->d_name, needle) != NULL;
  if (d) closedir(d);
  return n;
}

static uint64_t header_len(const unsigned char *b) {
  uint64_t hl = 0;
  for (int i = 7; i >= 0; i--) hl = hl << 8 | b[i];
  return hl;
}

static void round_trip(const char *dir) {
  enum { N = 1001 };
  float *f = malloc(N * sizeof *f);
  uint16_t *bf = malloc(N * 2), *hf = malloc(N * 2);
  for (int i = 0; i < N; i++) {
    /* normal, subnormal-for-f16 and large magnitudes */
    float scale = i % 3 == 0 ? 1e-6f : i % 3 == 1 ? 1.0f : 3e4f;
    f[i] = scale * ((float)(int)(next_u32() % 2000001) / 1e6f - 1.0f);
  }
  ap_f32_to_dtype(AP_BF16, f, bf, N);
  ap_f32_to_dtype(AP_F16, f, hf, N);
  float scalar = 42.5f;
  ap_st_out_tensor t[5] = {
      {.name = "f32.odd", .dtype = AP_F32, .ndim = 2, .shape = {7, 143}, .data = f, .nbytes = N * 4},
      {.name = "bf16.w", .dtype = AP_BF16, .ndim = 1, .shape = {N}, .data = bf, .nbytes = N * 2},
      {.name = "f16 \"quoted\"\\name", .dtype = AP_F16, .ndim = 3, .shape = {1, 1, N}, .data = hf, .nbytes = N * 2},
      {.name = "scalar", .dtype = AP_F32, .ndim = 0, .data = &scalar, .nbytes = 4},
      {.name = "empty", .dtype = AP_BF16, .ndim = 2, .shape = {0, 3}, .data = NULL, .nbytes = 0},
  };
  char *p = st_path(dir, "rt.safetensors");
  CHECK_EQ_INT(ap_st_write(p, t, 5, "{\"format\":\"pt\",\"note\":\"a\\\"b\"}", g_err, sizeof g_err), 0);
  CHECK_EQ_INT(count_entries(dir, ".tmp."), 0);
  struct stat sb;
  CHECK(stat(p, &sb) == 0 && (sb.st_mode & 0444) == 0444);
  ap_st *st = NULL;
  CHECKF(ap_st_open(p, &st, g_err, sizeof g_err) == 0, "%s", g_err);
  if (st) {
    CHECK_EQ_INT(ap_st_count(st), 5);
    for (int i = 0; i < 5; i++) {
      const ap_st_tensor *r = ap_st_get(st, i);
      /* written in the given order, so file order == list order */
      CHECKF(r && strcmp(r->name, t[i].name) == 0, "%d: %s", i, r ? r->name : "null");
      if (!r) continue;
      CHECK(r->dtype == t[i].dtype && r->ndim == t[i].ndim && r->nbytes == t[i].nbytes);
      for (int d = 0; d < r->ndim; d++) CHECK(r->shape[d] == t[i].shape[d]);
      CHECK(t[i].nbytes == 0 || memcmp(r->data, t[i].data, t[i].nbytes) == 0);
      CHECK(r->aligned);
    }
    CHECK_STR(ap_st_metadata(st, 0, "note"), "a\"b");
    /* BF16/F16 read back as exactly the rounded values. */
    float *back = malloc(N * sizeof *back);
    int bad = 0;
    CHECK_EQ_INT(ap_st_tensor_to_f32(ap_st_find(st, "bf16.w"), back), 0);
    for (int i = 0; i < N; i++) bad += ap_f32_bits(back[i]) != ap_f32_bits(ap_bf16_to_f32(ap_f32_to_bf16(f[i])));
    CHECK_EQ_INT(ap_st_tensor_to_f32(ap_st_find(st, "f16 \"quoted\"\\name"), back), 0);
    for (int i = 0; i < N; i++) bad += ap_f32_bits(back[i]) != ap_f32_bits(ap_f16_to_f32(ap_f32_to_f16(f[i])));
    /* and converting those floats again gives the same 16-bit patterns */
    uint16_t again[N];
    ap_f32_to_dtype(AP_F16, back, again, N);
    bad += memcmp(again, hf, sizeof again) != 0;
    CHECK_EQ_INT(bad, 0);
    CHECK(ap_st_tensor_to_f32(ap_st_find(st, "scalar"), back) == 0 && back[0] == 42.5f);
    free(back);
  }
  /* Layout: header padded with spaces to 8, data area exactly the tensors. */
  size_t n = 0;
  unsigned char *b = st_read_bytes(p, &n);
  if (b) {
    uint64_t hl = header_len(b);
    CHECK_EQ_INT(hl % 8, 0);
    CHECK_EQ_INT(n - 8 - hl, N * 4 + N * 2 + N * 2 + 4);
    size_t last = 8 + hl - 1;
    while (last > 8 && b[last] == ' ') last--;
    CHECK(b[last] == '}');
    free(b);
  }

  /* Replacing the file is atomic: an existing map keeps the old bytes. */
  float zeros[1001] = {0};
  t[0].data = zeros;
  CHECK_EQ_INT(ap_st_write(p, t, 1, NULL, g_err, sizeof g_err), 0);
  if (st) CHECK(memcmp(ap_st_find(st, "f32.odd")->data, f, N * 4) == 0);
  ap_st *st2 = NULL;
  CHECK_EQ_INT(ap_st_open(p, &st2, g_err, sizeof g_err), 0);
  if (st2) {
    CHECK_EQ_INT(ap_st_count(st2), 1);
    CHECK(memcmp(ap_st_get(st2, 0)->data, zeros, N * 4) == 0);
    CHECK_STR(ap_st_metadata(st2, 0, "format"), "pt");
  }
  ap_st_close(st2);
  ap_st_close(st);

  /* Refusals leave no file behind. */
  char *q = st_path(dir, "refused.safetensors");
  ap_st_out_tensor bad = t[1];
  bad.nbytes = 10;
  CHECK_EQ_INT(ap_st_write(q, &bad, 1, NULL, g_err, sizeof g_err), AP_ST_EARG);
  CHECKF(strstr(g_err, "bf16.w") != NULL, "%s", g_err);
  ap_st_out_tensor two[2] = {t[1], t[1]};
  CHECK_EQ_INT(ap_st_write(q, two, 2, NULL, g_err, sizeof g_err), AP_ST_EARG);
  bad = t[1];
  bad.name = "__metadata__";
  CHECK_EQ_INT(ap_st_write(q, &bad, 1, NULL, g_err, sizeof g_err), AP_ST_EARG);
  bad = t[1];
  bad.shape[0] = -1;
  CHECK_EQ_INT(ap_st_write(q, &bad, 1, NULL, g_err, sizeof g_err), AP_ST_EARG);
  bad = t[1];
  bad.dtype = (ap_dtype)7;
  CHECK_EQ_INT(ap_st_write(q, &bad, 1, NULL, g_err, sizeof g_err), AP_ST_EARG);
  CHECK_EQ_INT(ap_st_write(q, t + 1, 1, "[1]", g_err, sizeof g_err), AP_ST_EARG);
  CHECK_EQ_INT(ap_st_write(q, t + 1, 1, "{\"a\":1}", g_err, sizeof g_err), AP_ST_EARG);
  CHECK(access(q, F_OK) != 0);
  CHECK_EQ_INT(ap_st_write("/nonexistent-dir/x.safetensors", t + 1, 1, NULL, g_err, sizeof g_err), AP_ST_EIO);
  CHECK_EQ_INT(count_entries(dir, ".tmp."), 0);
  free(q);
  free(p);
  free(f);
  free(bf);
  free(hf);
}

static char *read_text(const char *path) {
  size_t n = 0;
  unsigned char *b = st_read_bytes(path, &n);
  if (!b) return NULL;
  char *s = realloc(b, n + 1);
  if (s) s[n] = 0;
  return s;
}

/* Export: mirror a model's layout, re-shard it, and mirror the re-sharded one. */
static void sharded(const char *dir, const char *data) {
  char src[1024];
  snprintf(src, sizeof src, "%s/tinyqwen3-a", data);
  ap_st *in = NULL;
  if (ap_st_open(src, &in, g_err, sizeof g_err) != 0) {
    CHECKF(0, "%s", g_err);
    return;
  }
  size_t n = ap_st_count(in);
  ap_st_out_tensor *out = calloc(n, sizeof *out);
  ap_st_out_from_input(in, out);
  /* Single file, no index: the data area is byte-identical to the input's. */
  char *d1 = st_path(dir, "single");
  mkdir(d1, 0755);
  CHECK_EQ_INT(ap_st_write_dir(d1, out, n, NULL, ap_st_has_index(in), g_err, sizeof g_err), 0);
  char *f_in = st_path(src, "model.safetensors"), *f_out = st_path(d1, "model.safetensors");
  size_t na = 0, nb = 0;
  unsigned char *a = st_read_bytes(f_in, &na), *b = st_read_bytes(f_out, &nb);
  if (a && b) {
    uint64_t ha = header_len(a), hb = header_len(b);
    CHECK(na - 8 - ha == nb - 8 - hb && memcmp(a + 8 + ha, b + 8 + hb, na - 8 - ha) == 0);
  }
  free(a);
  free(b);
  free(f_in);
  free(f_out);
  CHECK_EQ_INT(count_entries(d1, "index.json"), 0);

  /* Three shards, by layer, with an index. */
  static const char *const names[3] = {"model-00001-of-00003.safetensors", "model-00002-of-00003.safetensors",
                                       "model-00003-of-00003.safetensors"};
  for (size_t i = 0; i < n; i++) {
    const char *s = strstr(out[i].name, "layers.");
    out[i].shard = names[s ? (s[7] - '0') % 2 : 2];
  }
  char *d2 = st_path(dir, "three");
  mkdir(d2, 0755);
  CHECK_EQ_INT(ap_st_write_dir(d2, out, n, NULL, 0, g_err, sizeof g_err), AP_ST_EARG); /* needs an index */
  CHECK_EQ_INT(ap_st_write_dir(d2, out, n, NULL, 1, g_err, sizeof g_err), 0);
  CHECK_EQ_INT(count_entries(d2, ".tmp."), 0);
  ap_st *s2 = NULL;
  CHECKF(ap_st_open(d2, &s2, g_err, sizeof g_err) == 0, "%s", g_err);
  char *idx1 = NULL;
  if (s2) {
    CHECK_EQ_INT(ap_st_has_index(s2), 1);
    CHECK_EQ_INT(ap_st_shard_count(s2), 3);
    for (int k = 0; k < 3; k++) CHECK_STR(ap_st_shard_name(s2, (size_t)k), names[k]);
    CHECK_EQ_INT(ap_st_count(s2), n);
    int bad = 0;
    for (size_t i = 0; i < n; i++) {
      const ap_st_tensor *r = ap_st_find(s2, out[i].name);
      bad += !r || r->nbytes != out[i].nbytes || memcmp(r->data, out[i].data, r->nbytes) != 0 ||
             strcmp(ap_st_shard_name(s2, (size_t)r->shard), out[i].shard) != 0;
    }
    CHECK_EQ_INT(bad, 0);
    /* index.json: total_size is the sum of tensor bytes, weight_map complete. */
    char *ip = st_path(d2, "model.safetensors.index.json");
    idx1 = read_text(ip);
    cJSON *j = idx1 ? cJSON_Parse(idx1) : NULL;
    const cJSON *ts = cJSON_GetObjectItem(cJSON_GetObjectItem(j, "metadata"), "total_size");
    size_t total = 0;
    for (size_t i = 0; i < n; i++) total += out[i].nbytes;
    CHECK(cJSON_IsNumber(ts) && (size_t)ts->valuedouble == total);
    CHECK_EQ_INT(cJSON_GetArraySize(cJSON_GetObjectItem(j, "weight_map")), n);
    cJSON_Delete(j);
    free(ip);

    /* Mirror the sharded model: same tensor -> same shard, same bytes, same index. */
    ap_st_out_tensor *out2 = calloc(n, sizeof *out2);
    ap_st_out_from_input(s2, out2);
    char *d3 = st_path(dir, "mirror");
    mkdir(d3, 0755);
    CHECK_EQ_INT(ap_st_write_dir(d3, out2, n, NULL, ap_st_has_index(s2), g_err, sizeof g_err), 0);
    ap_st *s3 = NULL;
    CHECKF(ap_st_open(d3, &s3, g_err, sizeof g_err) == 0, "%s", g_err);
    if (s3) {
      bad = 0;
      for (size_t i = 0; i < n; i++) {
        const ap_st_tensor *x = ap_st_get(s2, i), *y = ap_st_find(s3, x->name);
        bad += !y || strcmp(ap_st_shard_name(s2, (size_t)x->shard), ap_st_shard_name(s3, (size_t)y->shard)) != 0 ||
               y->file_offset != x->file_offset || memcmp(x->data, y->data, x->nbytes) != 0;
      }
      CHECK_EQ_INT(bad, 0);
      char *ip3 = st_path(d3, "model.safetensors.index.json");
      char *idx3 = read_text(ip3);
      CHECK(idx1 && idx3 && strcmp(idx1, idx3) == 0);
      for (int k = 0; k < 3; k++) {
        char *x = st_path(d2, names[k]), *y = st_path(d3, names[k]);
        size_t nx = 0, ny = 0;
        unsigned char *bx = st_read_bytes(x, &nx), *by = st_read_bytes(y, &ny);
        CHECK(bx && by && nx == ny && memcmp(bx, by, nx) == 0);
        free(bx);
        free(by);
        free(x);
        free(y);
      }
      free(idx3);
      free(ip3);
    }
    ap_st_close(s3);
    free(d3);
    free(out2);
  }
  /* Unsafe shard names are refused. */
  out[0].shard = "../evil.safetensors";
  CHECK_EQ_INT(ap_st_write_dir(d2, out, n, NULL, 1, g_err, sizeof g_err), AP_ST_EARG);
  out[0].shard = "weights.bin";
  CHECK_EQ_INT(ap_st_write_dir(d2, out, n, NULL, 1, g_err, sizeof g_err), AP_ST_EARG);
  free(idx1);
  ap_st_close(s2);
  free(d1);
  free(d2);
  free(out);
  ap_st_close(in);
}

int main(int argc, char **argv) {
  const char *data = argc > 1 ? argv[1] : "../shared/data";
  char *dir = st_mkdtemp("ap_st_write");
  if (!dir) return 1;
  round_trip(dir);
  sharded(dir, data);
  st_rmtree(dir);
  free(dir);
  TEST_DONE();
}
