/*
 * gen_model.c - writes a random-weight Llama model folder in Hugging Face
 * layout (config.json + model.safetensors) for GPU benchmarks.
 *
 * usage: gen_model --out DIR [--hidden 2048] [--intermediate 5632]
 *          [--layers 22] [--heads 32] [--kv-heads 4] [--vocab 32000]
 *          [--ctx 2048] [--dtype bf16|f16|f32] [--seed 1]
 * The defaults are TinyLlama-1.1B's shape (~1.1e9 parameters, 2.2 GB in BF16).
 * Weights are uniform in +-1/sqrt(fan_in) (norms 1), as ap_model_create_random.
 * DIR is created if needed. Exit 0, or 2 with a message on bad arguments, 1 on
 * I/O errors.
 */
#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "dtype.h"
#include "safetensors.h"

static uint64_t rs = 0x243f6a8885a308d3ull;
static uint64_t rnd(void) {
  rs ^= rs << 13;
  rs ^= rs >> 7;
  rs ^= rs << 17;
  return rs;
}

static int arg_int(const char *name, const char *v, long lo, long hi, long *out) {
  char *end = NULL;
  errno = 0;
  long x = strtol(v, &end, 10);
  if (errno || !end || *end || x < lo || x > hi) {
    fprintf(stderr, "gen_model: --%s must be an integer in [%ld, %ld]\n", name, lo, hi);
    return -1;
  }
  *out = x;
  return 0;
}

typedef struct {
  char name[96];
  int64_t rows, cols; /* cols 0: a vector of `rows` */
  void *data;
  int ones;
} spec;

int main(int argc, char **argv) {
  const char *out = NULL, *dts = "bf16";
  long hidden = 2048, inter = 5632, layers = 22, heads = 32, kvh = 4, vocab = 32000, ctx = 2048, seed = 1;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
    int rc = 0;
    if (!v) {
      fprintf(stderr, "gen_model: %s needs a value\n", a);
      return 2;
    }
    if (!strcmp(a, "--out")) out = v;
    else if (!strcmp(a, "--dtype")) dts = v;
    else if (!strcmp(a, "--hidden")) rc = arg_int("hidden", v, 8, 65536, &hidden);
    else if (!strcmp(a, "--intermediate")) rc = arg_int("intermediate", v, 8, 262144, &inter);
    else if (!strcmp(a, "--layers")) rc = arg_int("layers", v, 1, 512, &layers);
    else if (!strcmp(a, "--heads")) rc = arg_int("heads", v, 1, 1024, &heads);
    else if (!strcmp(a, "--kv-heads")) rc = arg_int("kv-heads", v, 1, 1024, &kvh);
    else if (!strcmp(a, "--vocab")) rc = arg_int("vocab", v, 2, 1 << 20, &vocab);
    else if (!strcmp(a, "--ctx")) rc = arg_int("ctx", v, 2, 1 << 20, &ctx);
    else if (!strcmp(a, "--seed")) rc = arg_int("seed", v, 0, 1L << 40, &seed);
    else {
      fprintf(stderr, "gen_model: unknown option %s\n", a);
      return 2;
    }
    if (rc) return 2;
    i++;
  }
  ap_dtype dt;
  if (!out) {
    fprintf(stderr, "gen_model: --out DIR is required\n");
    return 2;
  }
  if (!strcmp(dts, "bf16")) dt = AP_BF16;
  else if (!strcmp(dts, "f16")) dt = AP_F16;
  else if (!strcmp(dts, "f32")) dt = AP_F32;
  else {
    fprintf(stderr, "gen_model: --dtype must be bf16, f16 or f32\n");
    return 2;
  }
  if (hidden % heads || heads % kvh || (hidden / heads) % 2) {
    fprintf(stderr, "gen_model: hidden must split into heads of even size, heads into kv-heads\n");
    return 2;
  }
  rs ^= (uint64_t)seed * 0x9e3779b97f4a7c15ull;
  long hd = hidden / heads;
  if (mkdir(out, 0755) && errno != EEXIST) {
    fprintf(stderr, "gen_model: cannot create %s: %s\n", out, strerror(errno));
    return 1;
  }
  size_t nspec = 3 + (size_t)layers * 9;
  spec *sp = calloc(nspec, sizeof *sp);
  ap_st_out_tensor *ts = calloc(nspec, sizeof *ts);
  if (!sp || !ts) return 1;
  size_t k = 0;
#define ADD(nm, r, c, one)                                    \
  do {                                                        \
    snprintf(sp[k].name, sizeof sp[k].name, "%s", nm);       \
    sp[k].rows = (r), sp[k].cols = (c), sp[k].ones = (one);   \
    k++;                                                      \
  } while (0)
  ADD("model.embed_tokens.weight", vocab, hidden, 0);
  char nm[96];
  static const char *lin[7] = {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                               "mlp.gate_proj",    "mlp.up_proj",      "mlp.down_proj"};
  for (long l = 0; l < layers; l++) {
    long rows[7] = {heads * hd, kvh * hd, kvh * hd, hidden, inter, inter, hidden};
    long cols[7] = {hidden, hidden, hidden, heads * hd, hidden, hidden, inter};
    snprintf(nm, sizeof nm, "model.layers.%ld.input_layernorm.weight", l);
    ADD(nm, hidden, 0, 1);
    snprintf(nm, sizeof nm, "model.layers.%ld.post_attention_layernorm.weight", l);
    ADD(nm, hidden, 0, 1);
    for (int j = 0; j < 7; j++) {
      snprintf(nm, sizeof nm, "model.layers.%ld.%s.weight", l, lin[j]);
      ADD(nm, rows[j], cols[j], 0);
    }
  }
  ADD("model.norm.weight", hidden, 0, 1);
  ADD("lm_head.weight", vocab, hidden, 0);
#undef ADD
  size_t es = ap_dtype_size(dt);
  uint64_t params = 0;
  for (size_t i = 0; i < k; i++) {
    size_t n = (size_t)sp[i].rows * (size_t)(sp[i].cols ? sp[i].cols : 1);
    params += n;
    sp[i].data = malloc(n * es);
    if (!sp[i].data) {
      fprintf(stderr, "gen_model: out of memory\n");
      return 1;
    }
    float scale = sp[i].cols ? 1.0f / sqrtf((float)sp[i].cols) : 0.0f;
    for (size_t e = 0; e < n; e++) {
      float v = sp[i].ones ? 1.0f : ((float)(rnd() >> 40) / 16777216.0f * 2 - 1) * scale;
      ap_dtype_store_f32(dt, (char *)sp[i].data + e * es, v);
    }
    ts[i].name = sp[i].name;
    ts[i].dtype = dt;
    ts[i].ndim = sp[i].cols ? 2 : 1;
    ts[i].shape[0] = sp[i].rows;
    ts[i].shape[1] = sp[i].cols;
    ts[i].data = sp[i].data;
    ts[i].nbytes = n * es;
    ts[i].shard = "model.safetensors";
  }
  char err[512];
  int rc = ap_st_write_dir(out, ts, k, NULL, 0, err, sizeof err);
  if (rc) {
    fprintf(stderr, "gen_model: %s\n", err);
    return 1;
  }
  char path[4096];
  snprintf(path, sizeof path, "%s/config.json", out);
  FILE *f = fopen(path, "w");
  if (!f) {
    fprintf(stderr, "gen_model: cannot write %s\n", path);
    return 1;
  }
  fprintf(f,
          "{\n  \"architectures\": [\"LlamaForCausalLM\"],\n  \"model_type\": \"llama\",\n"
          "  \"hidden_size\": %ld,\n  \"intermediate_size\": %ld,\n  \"num_hidden_layers\": %ld,\n"
          "  \"num_attention_heads\": %ld,\n  \"num_key_value_heads\": %ld,\n  \"head_dim\": %ld,\n"
          "  \"vocab_size\": %ld,\n  \"max_position_embeddings\": %ld,\n  \"rms_norm_eps\": 1e-05,\n"
          "  \"rope_theta\": 10000.0,\n  \"hidden_act\": \"silu\",\n  \"tie_word_embeddings\": false,\n"
          "  \"torch_dtype\": \"%s\",\n  \"bos_token_id\": 1,\n  \"eos_token_id\": 2\n}\n",
          hidden, inter, layers, heads, kvh, hd, vocab, ctx,
          dt == AP_BF16 ? "bfloat16" : dt == AP_F16 ? "float16" : "float32");
  if (fclose(f)) {
    fprintf(stderr, "gen_model: error writing %s\n", path);
    return 1;
  }
  printf("gen_model: %s: %llu parameters (%.2f GB %s)\n", out, (unsigned long long)params,
         (double)params * (double)es / 1e9, ap_dtype_name(dt));
  for (size_t i = 0; i < k; i++) free(sp[i].data);
  free(sp);
  free(ts);
  return 0;
}
