/*
 * test_st_load - the two real models in shared/data load, their tensors
 * match what config.json implies, and the views point at the right bytes.
 * Values are checked against the file read with plain stdio here (offsets
 * from the header bytes), and against numpy/torch in crosscheck.py.
 */
#include "hf_config.h"
#include "safetensors.h"
#include "st_util.h"
#include "test.h"

static char g_err[512];

/* The file's bytes for tensor t, located by the header length and t's
 * data_offsets, read with stdio instead of the map. */
static int stdio_bytes_equal(const char *file, const ap_st_tensor *t) {
  FILE *f = fopen(file, "rb");
  if (!f) return 0;
  unsigned char len8[8];
  int ok = fread(len8, 1, 8, f) == 8;
  uint64_t hl = 0;
  for (int i = 7; i >= 0; i--) hl = hl << 8 | len8[i];
  unsigned char *buf = malloc(t->nbytes ? t->nbytes : 1);
  ok = ok && buf && t->file_offset >= 8 + hl && fseek(f, (long)t->file_offset, SEEK_SET) == 0 &&
       fread(buf, 1, t->nbytes, f) == t->nbytes && memcmp(buf, t->data, t->nbytes) == 0;
  free(buf);
  fclose(f);
  return ok;
}

static void check_model(const char *data, const char *name, ap_arch arch, ap_dtype dtype, size_t want_tensors) {
  char dir[1024], file[1100];
  snprintf(dir, sizeof dir, "%s/%s", data, name);
  snprintf(file, sizeof file, "%s/model.safetensors", dir);
  ap_st *st = NULL;
  ap_hf_config *c = calloc(1, sizeof *c);
  int rc = ap_st_open(dir, &st, g_err, sizeof g_err);
  CHECKF(rc == 0, "%s: %s", dir, g_err);
  rc = ap_hf_config_load(dir, c, g_err, sizeof g_err);
  CHECKF(rc == 0, "%s: %s", dir, g_err);
  if (!st || rc) {
    ap_st_close(st);
    free(c);
    return;
  }
  CHECK_EQ_INT(c->arch, arch);
  CHECK_EQ_INT(ap_st_count(st), want_tensors);
  /* Tensor count implied by the config: embed, final norm, lm_head unless tied,
   * and per layer 2 norms + 4 attention + 3 MLP (+2 q/k norms for Qwen3). */
  size_t implied = 2 + (c->tie_word_embeddings ? 0 : 1) + (size_t)c->num_hidden_layers * (9 + (c->qk_norm ? 2 : 0));
  CHECK_EQ_INT(ap_st_count(st), implied);
  CHECK_EQ_INT(ap_st_shard_count(st), 1);
  CHECK_STR(ap_st_shard_name(st, 0), "model.safetensors");
  CHECK_EQ_INT(ap_st_has_index(st), 0);
  CHECK(ap_st_metadata(st, 0, "format") && strcmp(ap_st_metadata(st, 0, "format"), "pt") == 0);
  CHECK(ap_st_metadata(st, 0, "nope") == NULL);
  CHECK(ap_st_get(st, ap_st_count(st)) == NULL);
  CHECK_EQ_INT(ap_hf_config_check_tensors(c, st, g_err, sizeof g_err), 0);
  CHECK_EQ_INT(ap_st_check_finite(st, g_err, sizeof g_err), 0);

  size_t total = 0, bad_order = 0, bad_find = 0, bad_bytes = 0, bad_dtype = 0, bad_conv = 0;
  uint64_t prev_end = 0;
  for (size_t i = 0; i < ap_st_count(st); i++) {
    const ap_st_tensor *t = ap_st_get(st, i);
    total += t->nbytes;
    bad_dtype += t->dtype != dtype || !t->aligned;
    bad_order += t->file_offset < prev_end; /* on-disk order */
    prev_end = t->file_offset + t->nbytes;
    bad_find += ap_st_find(st, t->name) != t;
    size_t numel = 1;
    for (int d = 0; d < t->ndim; d++) numel *= (size_t)t->shape[d];
    bad_bytes += numel != t->numel || t->nbytes != numel * ap_dtype_size(dtype);
    if (i % 5 == 0) bad_bytes += !stdio_bytes_equal(file, t);
    float *f = malloc(t->numel * sizeof *f);
    if (!f || ap_st_tensor_to_f32(t, f) != 0) bad_conv++;
    for (size_t k = 0; f && k < t->numel; k += 7) bad_conv += f[k] != ap_dtype_load_f32(dtype, (const char *)t->data + k * ap_dtype_size(dtype));
    free(f);
  }
  CHECK_EQ_INT(bad_dtype, 0);
  CHECK_EQ_INT(bad_order, 0);
  CHECK_EQ_INT(bad_find, 0);
  CHECK_EQ_INT(bad_bytes, 0);
  CHECK_EQ_INT(bad_conv, 0);
  /* The data area holds exactly the tensors, back to back (as written by the reference library). */
  size_t fsz = 0;
  unsigned char *all = st_read_bytes(file, &fsz);
  if (all) {
    uint64_t hl = 0;
    for (int i = 7; i >= 0; i--) hl = hl << 8 | all[i];
    CHECK_EQ_INT(fsz - 8 - hl, total);
    free(all);
  }
  const ap_st_tensor *e = ap_st_find(st, "model.embed_tokens.weight");
  CHECK(e && e->ndim == 2 && e->shape[0] == c->vocab_size && e->shape[1] == c->hidden_size);
  CHECK(ap_st_find(st, "model.layers.0.self_attn.q_proj") == NULL);
  CHECK(ap_st_find(st, "") == NULL);
  ap_st_close(st);
  free(c);
}

int main(int argc, char **argv) {
  const char *data = argc > 1 ? argv[1] : "../shared/data";
  check_model(data, "stories260K-hf-derived", AP_ARCH_LLAMA, AP_F32, 47);
  check_model(data, "tinyqwen3-a", AP_ARCH_QWEN3, AP_BF16, 47);

  /* The config numbers the transformer will use. */
  ap_hf_config *c = calloc(1, sizeof *c);
  char dir[1024];
  snprintf(dir, sizeof dir, "%s/stories260K-hf-derived", data);
  if (ap_hf_config_load(dir, c, g_err, sizeof g_err) == 0) {
    CHECK(c->hidden_size == 64 && c->intermediate_size == 172 && c->num_hidden_layers == 5);
    CHECK(c->num_attention_heads == 8 && c->num_key_value_heads == 4 && c->head_dim == 8 && c->vocab_size == 512);
    CHECK(c->tie_word_embeddings == 1 && c->qk_norm == 0 && c->qkv_bias == 0);
    CHECK_NEAR(c->rms_norm_eps, 1e-5, 0);
    CHECK(c->max_position_embeddings == 512 && c->bos_token_id == 1 && c->n_eos == 1 && c->eos_token_ids[0] == 2);
    CHECK(c->has_torch_dtype && c->torch_dtype == AP_F32);
  } else CHECKF(0, "%s", g_err);
  snprintf(dir, sizeof dir, "%s/tinyqwen3-a", data);
  if (ap_hf_config_load(dir, c, g_err, sizeof g_err) == 0) {
    CHECK(c->hidden_size == 96 && c->intermediate_size == 256 && c->num_hidden_layers == 4);
    CHECK(c->num_attention_heads == 4 && c->num_key_value_heads == 2 && c->head_dim == 32);
    CHECK(c->tie_word_embeddings == 0 && c->qk_norm == 1 && c->qkv_bias == 0 && c->o_bias == 0);
    CHECK_NEAR(c->rope_theta, 1e6, 0);
    CHECK_NEAR(c->rms_norm_eps, 1e-6, 0);
    CHECK(c->sliding_window == 0 && !ap_hf_config_window_matters(c, 256));
    CHECK(c->has_torch_dtype && c->torch_dtype == AP_BF16);
  } else CHECKF(0, "%s", g_err);
  free(c);
  TEST_DONE();
}
