/*
 * test_st_fuzz - thousands of random mutations (byte flips, header digit
 * edits, truncations, length-field changes) of a real small safetensors file
 * and of an index.json. Every open must either fail with a documented code
 * and a message, or succeed with tensors that satisfy the invariants the
 * rest of the program relies on. Meant to run under ASan/UBSan too.
 */
#include "safetensors.h"
#include "st_util.h"
#include "test.h"

static uint64_t rng = 0x2545f4914f6cdd1dull;
static uint32_t rnd(uint32_t n) {
  rng ^= rng << 13;
  rng ^= rng >> 7;
  rng ^= rng << 17;
  return (uint32_t)((rng >> 11) % n);
}

static char g_err[512];
static int g_bad_invariant, g_bad_code, g_ok, g_fail;

static void check_open(const char *path, size_t file_size) {
  ap_st *st = NULL;
  g_err[0] = 0;
  int rc = ap_st_open(path, &st, g_err, sizeof g_err);
  if (rc != 0) {
    g_fail++;
    if (rc > 0 || rc < AP_ST_ENONFINITE || st != NULL || g_err[0] == 0 || strcmp(g_err, "ok") == 0) {
      if (g_bad_code++ < 5) fprintf(stderr, "bad failure %d: %s\n", rc, g_err);
    }
    return;
  }
  g_ok++;
  int bad = 0;
  for (size_t i = 0; i < ap_st_count(st); i++) {
    const ap_st_tensor *t = ap_st_get(st, i);
    size_t numel = 1;
    for (int d = 0; d < t->ndim; d++) numel *= (size_t)t->shape[d];
    bad += numel != t->numel || t->nbytes != numel * ap_dtype_size(t->dtype);
    bad += t->file_offset + t->nbytes > file_size && file_size != 0;
    bad += ap_st_find(st, t->name) != t;
    if (i > 0) {
      const ap_st_tensor *p = ap_st_get(st, i - 1);
      bad += p->shard == t->shard && p->nbytes && t->nbytes && p->file_offset + p->nbytes > t->file_offset;
    }
    float *f = malloc((t->numel ? t->numel : 1) * sizeof *f);
    if (f) {
      int c = ap_st_tensor_to_f32(t, f);
      bad += c != 0 && c != AP_ST_ENONFINITE;
      free(f);
    }
  }
  ap_st_check_finite(st, g_err, sizeof g_err);
  if (bad && g_bad_invariant++ < 5) fprintf(stderr, "invariant broken after mutation of %s\n", path);
  ap_st_close(st);
}

int main(int argc, char **argv) {
  const char *data = argc > 1 ? argv[1] : "../shared/data";
  int iters = argc > 2 ? atoi(argv[2]) : 3000;
  char *dir = st_mkdtemp("ap_st_fuzz");
  char src[1024];
  snprintf(src, sizeof src, "%s/tinyqwen3-a", data);
  ap_st *in = NULL;
  if (!dir || ap_st_open(src, &in, g_err, sizeof g_err) != 0) {
    fprintf(stderr, "setup: %s\n", g_err);
    return 1;
  }
  /* Seed: the real model's small tensors (norms of every layer, BF16), with
   * the real header layout, a few KB so that thousands of runs stay fast. */
  ap_st_out_tensor *out = calloc(ap_st_count(in), sizeof *out);
  ap_st_out_from_input(in, out);
  size_t k = 0;
  for (size_t i = 0; i < ap_st_count(in); i++)
    if (out[i].ndim == 1) out[k++] = out[i];
  char *seed = st_path(dir, "seed.safetensors");
  CHECK_EQ_INT(ap_st_write(seed, out, k, NULL, g_err, sizeof g_err), 0);
  for (size_t i = 0; i < k; i++) out[i].shard = i % 2 ? "model-00002-of-00002.safetensors" : "model-00001-of-00002.safetensors";
  char *sharded = st_path(dir, "sharded");
  mkdir(sharded, 0755);
  CHECK_EQ_INT(ap_st_write_dir(sharded, out, k, NULL, 1, g_err, sizeof g_err), 0);
  free(out);
  ap_st_close(in);

  size_t n = 0;
  unsigned char *orig = st_read_bytes(seed, &n);
  uint64_t hl = 0;
  for (int i = 7; i >= 0; i--) hl = hl << 8 | orig[i];
  char *mut_path = st_path(dir, "mut.safetensors");
  unsigned char *buf = malloc(n + 64);
  check_open(seed, n);
  CHECK_EQ_INT(g_ok, 1);
  for (int it = 0; it < iters; it++) {
    size_t len = n;
    memcpy(buf, orig, n);
    int kind = rnd(6), edits = 1 + rnd(4);
    for (int e = 0; e < edits; e++) {
      size_t hdr_end = 8 + (size_t)hl;
      size_t pos = kind == 5 ? rnd((uint32_t)len) : rnd((uint32_t)(hdr_end < len ? hdr_end : len));
      switch (kind) {
        case 0: buf[pos] ^= (unsigned char)(1u << rnd(8)); break;                 /* bit flip in header */
        case 1: buf[pos] = (unsigned char)"0123456789-.e,[]{}\":\\ "[rnd(22)]; break; /* JSON-ish byte */
        case 2: len = rnd((uint32_t)len + 1); break;                               /* truncation */
        case 3: buf[rnd(8)] = (unsigned char)rnd(256); break;                      /* length field */
        case 4: {                                                                  /* digit run */
          if (buf[pos] >= '0' && buf[pos] <= '9') buf[pos] = (unsigned char)('0' + rnd(10));
          else buf[pos] = '9';
          break;
        }
        default: buf[pos] = (unsigned char)rnd(256); break;                        /* anywhere */
      }
      if (len == 0) break;
    }
    if (st_write_bytes(mut_path, buf, len) != 0) continue;
    check_open(mut_path, len);
  }
  /* Index mutations: the shards stay valid, the JSON is attacked. */
  char *ipath = st_path(sharded, "model.safetensors.index.json");
  size_t in_len = 0;
  unsigned char *iorig = st_read_bytes(ipath, &in_len);
  unsigned char *ibuf = malloc(in_len + 8);
  for (int it = 0; iorig && it < iters / 3; it++) {
    size_t len = in_len;
    memcpy(ibuf, iorig, in_len);
    int edits = 1 + rnd(3);
    for (int e = 0; e < edits; e++) {
      size_t pos = rnd((uint32_t)len);
      if (rnd(4) == 0) len = pos;
      else ibuf[pos] = (unsigned char)"0123456789-.,[]{}\":/ ab"[rnd(24)];
      if (len == 0) break;
    }
    st_write_bytes(ipath, ibuf, len);
    check_open(sharded, 0);
  }
  fprintf(stderr, "fuzz: %d opened, %d refused\n", g_ok, g_fail);
  CHECK_EQ_INT(g_bad_code, 0);
  CHECK_EQ_INT(g_bad_invariant, 0);
  CHECK(g_fail > iters / 2); /* most mutations must actually be refused */
  CHECK(g_ok > 1);           /* and some (data-only flips) still open */
  free(ibuf);
  free(iorig);
  free(ipath);
  free(buf);
  free(orig);
  free(mut_path);
  free(seed);
  free(sharded);
  st_rmtree(dir);
  free(dir);
  TEST_DONE();
}
