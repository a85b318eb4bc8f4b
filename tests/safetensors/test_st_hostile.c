/*
 * test_st_hostile - every defect a hostile or broken model folder can have
 * gets its specific error code and a message naming the file and tensor.
 * Files are generated here, byte by byte, in a scratch folder.
 */
#include <errno.h>
#include <math.h>
#include <sys/stat.h>

#include "hf_config.h"
#include "safetensors.h"
#include "st_util.h"
#include "test.h"

static char *g_dir;
static char g_err[512];

/* Opens a raw single file built from `header` + data and returns the code. */
static int open_raw(const char *name, const char *header, uint64_t hlen_field, const void *data, size_t data_len) {
  char *p = st_path(g_dir, name);
  if (st_write_raw(p, header, hlen_field, data, data_len) != 0) {
    free(p);
    return 12345;
  }
  ap_st *st = (ap_st *)0x1;
  g_err[0] = 0;
  int rc = ap_st_open(p, &st, g_err, sizeof g_err);
  if (rc == 0) ap_st_close(st);
  else if (st != NULL) rc = 54321; /* *out must be NULL on failure */
  free(p);
  return rc;
}

#define EXPECT_CODE(code, name, header, data_len)                                              \
  do {                                                                                         \
    int rc_ = open_raw(name, header, UINT64_MAX, NULL, data_len);                              \
    CHECKF(rc_ == (code), "%s: got %d (%s) want %d: %s", name, rc_, ap_st_strerror(rc_), code, g_err); \
    CHECKF(strstr(g_err, name) != NULL, "message lacks file name: %s", g_err);                 \
  } while (0)

static int contains(const char *s, const char *sub) { return strstr(s, sub) != NULL; }

static void single_file_cases(void) {
  /* Too short for the length field. */
  char *p = st_path(g_dir, "short.safetensors");
  st_write_bytes(p, "\x08\0\0\0\0", 5);
  ap_st *st = NULL;
  CHECK_EQ_INT(ap_st_open(p, &st, g_err, sizeof g_err), AP_ST_ETRUNC);
  st_write_bytes(p, "", 0);
  CHECK_EQ_INT(ap_st_open(p, &st, g_err, sizeof g_err), AP_ST_ETRUNC);
  free(p);

  /* Header length beyond the file, huge, and over the 100 MB limit in a file big enough. */
  CHECK_EQ_INT(open_raw("hlen.safetensors", "{}", 3, NULL, 0), AP_ST_EHDRLEN);
  CHECK_EQ_INT(open_raw("hlen2.safetensors", "{}", UINT64_MAX - 1, NULL, 0), AP_ST_EHDRLEN);
  CHECK_EQ_INT(open_raw("hlen3.safetensors", "{}", (uint64_t)1 << 63, NULL, 0), AP_ST_EHDRLEN);
  p = st_path(g_dir, "huge.safetensors");
  st_write_raw(p, "{}", AP_ST_MAX_HEADER + 1, NULL, 0);
  if (truncate(p, (off_t)AP_ST_MAX_HEADER + 64) == 0) { /* sparse: costs no disk */
    CHECK_EQ_INT(ap_st_open(p, &st, g_err, sizeof g_err), AP_ST_EHDRLEN);
    CHECKF(contains(g_err, "100 MB"), "%s", g_err);
  }
  unlink(p);
  free(p);

  /* Header not JSON / not an object / trailing garbage / NUL inside. */
  EXPECT_CODE(AP_ST_EJSON, "notjson.safetensors", "{\"a\": ", 0);
  EXPECT_CODE(AP_ST_EJSON, "array.safetensors", "[1,2,3] ", 0);
  EXPECT_CODE(AP_ST_EJSON, "tail.safetensors", "{}  xx", 0);
  CHECK_EQ_INT(open_raw("nul.safetensors", "{}", 4, "\0\0", 2), AP_ST_EJSON); /* header "{}\0\0" */
  /* An empty header object with padding is a valid, empty file. */
  CHECK_EQ_INT(open_raw("empty.safetensors", "{}      ", UINT64_MAX, NULL, 0), 0);

  /* Entries that are not objects or miss fields. */
  EXPECT_CODE(AP_ST_EENTRY, "nonobj.safetensors", "{\"w\": 5}", 0);
  EXPECT_CODE(AP_ST_EENTRY, "nodtype.safetensors", "{\"w\":{\"shape\":[1],\"data_offsets\":[0,4]}}", 4);
  EXPECT_CODE(AP_ST_EENTRY, "shapestr.safetensors", "{\"w\":{\"dtype\":\"F32\",\"shape\":\"1\",\"data_offsets\":[0,4]}}", 4);
  EXPECT_CODE(AP_ST_EENTRY, "meta.safetensors", "{\"__metadata__\":{\"format\":1}}", 0);
  EXPECT_CODE(AP_ST_EENTRY, "meta2.safetensors", "{\"__metadata__\":[]}", 0);
  CHECKF(contains(g_err, "__metadata__"), "%s", g_err);

  /* dtypes: known-but-unsupported vs unknown, each named. */
  EXPECT_CODE(AP_ST_EDTYPE, "i8.safetensors", "{\"w\":{\"dtype\":\"I8\",\"shape\":[4],\"data_offsets\":[0,4]}}", 4);
  CHECKF(contains(g_err, "unsupported dtype 'I8'") && contains(g_err, "'w'"), "%s", g_err);
  EXPECT_CODE(AP_ST_EDTYPE, "f64.safetensors", "{\"w\":{\"dtype\":\"F64\",\"shape\":[1],\"data_offsets\":[0,8]}}", 8);
  CHECKF(contains(g_err, "F64"), "%s", g_err);
  EXPECT_CODE(AP_ST_EUNKDTYPE, "q4.safetensors", "{\"w\":{\"dtype\":\"Q4_K\",\"shape\":[4],\"data_offsets\":[0,4]}}", 4);
  CHECKF(contains(g_err, "unknown dtype 'Q4_K'"), "%s", g_err);
  EXPECT_CODE(AP_ST_EUNKDTYPE, "lower.safetensors", "{\"w\":{\"dtype\":\"f32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4);

  /* Shapes. */
  EXPECT_CODE(AP_ST_ESHAPE, "neg.safetensors", "{\"w\":{\"dtype\":\"F32\",\"shape\":[-1],\"data_offsets\":[0,4]}}", 4);
  EXPECT_CODE(AP_ST_ESHAPE, "frac.safetensors", "{\"w\":{\"dtype\":\"F32\",\"shape\":[1.5],\"data_offsets\":[0,4]}}", 4);
  EXPECT_CODE(AP_ST_ESHAPE, "ndim.safetensors",
              "{\"w\":{\"dtype\":\"F32\",\"shape\":[1,1,1,1,1,1,1,1,1],\"data_offsets\":[0,4]}}", 4);
  EXPECT_CODE(AP_ST_ESHAPE, "dimstr.safetensors", "{\"w\":{\"dtype\":\"F32\",\"shape\":[\"4\"],\"data_offsets\":[0,4]}}", 4);

  /* Offsets outside the data area, malformed, begin > end. */
  EXPECT_CODE(AP_ST_EOFFSET, "outside.safetensors", "{\"w\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 4);
  CHECKF(contains(g_err, "'w'") && contains(g_err, "outside"), "%s", g_err);
  EXPECT_CODE(AP_ST_EOFFSET, "far.safetensors",
              "{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4000000000000,4000000000004]}}", 4);
  EXPECT_CODE(AP_ST_EOFFSET, "negoff.safetensors", "{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[-4,0]}}", 4);
  EXPECT_CODE(AP_ST_EOFFSET, "three.safetensors", "{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4,8]}}", 8);
  EXPECT_CODE(AP_ST_EOFFSET, "hugeoff.safetensors",
              "{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,1e300]}}", 4);
  EXPECT_CODE(AP_ST_EBEGINEND, "beginend.safetensors", "{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[8,4]}}", 8);

  /* Size mismatch and overflow of prod(shape) * element size. */
  EXPECT_CODE(AP_ST_ESIZE, "size.safetensors", "{\"w\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,8]}}", 8);
  CHECKF(contains(g_err, "'w'") && contains(g_err, "12"), "%s", g_err);
  EXPECT_CODE(AP_ST_ESIZE, "bf16size.safetensors", "{\"w\":{\"dtype\":\"BF16\",\"shape\":[2,2],\"data_offsets\":[0,16]}}", 16);
  EXPECT_CODE(AP_ST_ESIZE, "overflow.safetensors",
              "{\"w\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296],\"data_offsets\":[0,0]}}", 0);
  /* 2^62 elements fit in size_t but 4 bytes each do not. */
  EXPECT_CODE(AP_ST_ESIZE, "overflow2.safetensors",
              "{\"w\":{\"dtype\":\"F32\",\"shape\":[2147483648,2147483648],\"data_offsets\":[0,0]}}", 0);
  /* A zero dim makes an empty tensor, which is legal even next to others. */
  CHECK_EQ_INT(open_raw("zero.safetensors",
                        "{\"z\":{\"dtype\":\"F32\",\"shape\":[0,5],\"data_offsets\":[0,0]},"
                        "\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", UINT64_MAX, NULL, 4), 0);

  /* Overlaps: partial, identical, contained. */
  EXPECT_CODE(AP_ST_EOVERLAP, "overlap.safetensors",
              "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
              "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}", 12);
  CHECKF(contains(g_err, "'a'") && contains(g_err, "'b'"), "%s", g_err);
  EXPECT_CODE(AP_ST_EOVERLAP, "same.safetensors",
              "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
              "\"b\":{\"dtype\":\"BF16\",\"shape\":[4],\"data_offsets\":[0,8]}}", 8);
  EXPECT_CODE(AP_ST_EOVERLAP, "inside.safetensors",
              "{\"a\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]},"
              "\"c\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[16,20]},"
              "\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}", 20);

  /* Duplicate names in one header (JSON allows it syntactically). */
  EXPECT_CODE(AP_ST_EDUP, "dup.safetensors",
              "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
              "\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}", 8);
  CHECKF(contains(g_err, "'a'"), "%s", g_err);

  /* NaN / Inf in weights: the file opens, conversion and the scan refuse. */
  struct { const char *dtype; size_t es; uint32_t bits; const char *what; } nf[] = {
      {"F32", 4, 0x7fc00000u, "NaN"}, {"F32", 4, 0xff800000u, "Inf"},
      {"BF16", 2, 0x7f80u, "Inf"},    {"BF16", 2, 0xffc1u, "NaN"},
      {"F16", 2, 0x7c00u, "Inf"},     {"F16", 2, 0x7e00u, "NaN"}};
  for (size_t k = 0; k < sizeof nf / sizeof nf[0]; k++) {
    unsigned char data[16] = {0};
    size_t pos = 2; /* element index of the bad value */
    memcpy(data + pos * nf[k].es, &nf[k].bits, nf[k].es);
    char hdr[160], name[64];
    snprintf(hdr, sizeof hdr, "{\"bad\":{\"dtype\":\"%s\",\"shape\":[4],\"data_offsets\":[0,%zu]}}", nf[k].dtype,
             4 * nf[k].es);
    snprintf(name, sizeof name, "nonfinite%zu.safetensors", k);
    p = st_path(g_dir, name);
    st_write_raw(p, hdr, UINT64_MAX, data, 4 * nf[k].es);
    st = NULL;
    CHECK_EQ_INT(ap_st_open(p, &st, g_err, sizeof g_err), 0);
    if (st) {
      float out[4];
      const ap_st_tensor *t = ap_st_find(st, "bad");
      CHECK(t && ap_st_tensor_to_f32(t, out) == AP_ST_ENONFINITE);
      CHECK(t && ap_st_tensor_to_f32_err(t, out, g_err, sizeof g_err) == AP_ST_ENONFINITE);
      CHECKF(contains(g_err, "'bad'") && contains(g_err, "element 2") && contains(g_err, nf[k].what), "%s", g_err);
      CHECK_EQ_INT(ap_st_check_finite(st, g_err, sizeof g_err), AP_ST_ENONFINITE);
      CHECKF(contains(g_err, name) && contains(g_err, "element 2"), "%s", g_err);
      ap_st_close(st);
    }
    free(p);
  }

  /* Missing path, empty folder, a folder given as the file. */
  p = st_path(g_dir, "nope");
  CHECK_EQ_INT(ap_st_open(p, &st, g_err, sizeof g_err), AP_ST_ENOMODEL);
  mkdir(p, 0755);
  CHECK_EQ_INT(ap_st_open(p, &st, g_err, sizeof g_err), AP_ST_ENOMODEL);
  rmdir(p);
  free(p);
  CHECK_EQ_INT(ap_st_open(NULL, &st, g_err, sizeof g_err), AP_ST_EARG);
}

/* A folder with an index and shards given as (file, header, data_len). */
static int open_folder(const char *tag, const char *index, const char *const *files, const char *const *headers,
                       const size_t *data_lens, int nfiles) {
  char name[64];
  snprintf(name, sizeof name, "idx_%s", tag);
  char *d = st_path(g_dir, name);
  mkdir(d, 0755);
  char *ip = st_path(d, "model.safetensors.index.json");
  st_write_bytes(ip, index, strlen(index));
  for (int i = 0; i < nfiles; i++) {
    char *p = st_path(d, files[i]);
    st_write_raw(p, headers[i], UINT64_MAX, NULL, data_lens[i]);
    free(p);
  }
  ap_st *st = NULL;
  g_err[0] = 0;
  int rc = ap_st_open(d, &st, g_err, sizeof g_err);
  ap_st_close(st);
  free(ip);
  free(d);
  return rc;
}

static void index_cases(void) {
  const char *files[] = {"a.safetensors", "b.safetensors"};
  const char *hdr_a = "{\"x\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}";
  const char *hdr_b = "{\"y\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}";
  const char *hdrs[] = {hdr_a, hdr_b};
  size_t lens[] = {4, 4};
  const char *good = "{\"metadata\":{\"total_size\":8},\"weight_map\":{\"x\":\"a.safetensors\",\"y\":\"b.safetensors\"}}";
  CHECK_EQ_INT(open_folder("good", good, files, hdrs, lens, 2), 0);
  CHECK_EQ_INT(open_folder("notjson", "{\"weight_map\":", files, hdrs, lens, 2), AP_ST_EINDEX);
  CHECKF(contains(g_err, "model.safetensors.index.json"), "%s", g_err);
  CHECK_EQ_INT(open_folder("nomap", "{\"metadata\":{}}", files, hdrs, lens, 2), AP_ST_EINDEX);
  CHECK_EQ_INT(open_folder("nonstr", "{\"weight_map\":{\"x\":1}}", files, hdrs, lens, 2), AP_ST_EINDEX);
  CHECK_EQ_INT(open_folder("escape", "{\"weight_map\":{\"x\":\"../a.safetensors\"}}", files, hdrs, lens, 2),
               AP_ST_EINDEX);
  CHECK_EQ_INT(open_folder("twice", "{\"weight_map\":{\"x\":\"a.safetensors\",\"x\":\"b.safetensors\"}}", files, hdrs,
                           lens, 2), AP_ST_EINDEX);
  /* Shard named in the index is missing. */
  CHECK_EQ_INT(open_folder("missing", "{\"weight_map\":{\"x\":\"a.safetensors\",\"y\":\"c.safetensors\"}}", files,
                           hdrs, lens, 2), AP_ST_ESHARDMISSING);
  CHECKF(contains(g_err, "c.safetensors"), "%s", g_err);
  /* Tensor mapped to a shard that lacks it. */
  CHECK_EQ_INT(open_folder("lacks", "{\"weight_map\":{\"x\":\"a.safetensors\",\"y\":\"b.safetensors\",\"z\":\"b.safetensors\"}}",
                           files, hdrs, lens, 2), AP_ST_ETENSORMISSING);
  CHECKF(contains(g_err, "'z'") && contains(g_err, "b.safetensors"), "%s", g_err);
  CHECK_EQ_INT(open_folder("wrongshard", "{\"weight_map\":{\"x\":\"b.safetensors\",\"y\":\"a.safetensors\"}}", files,
                           hdrs, lens, 2), AP_ST_ETENSORMISSING);
  /* A shard holds a tensor the index does not list. */
  const char *hdr_b2 = "{\"y\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
                       "\"extra\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}";
  const char *hdrs2[] = {hdr_a, hdr_b2};
  size_t lens2[] = {4, 8};
  CHECK_EQ_INT(open_folder("unlisted", good, files, hdrs2, lens2, 2), AP_ST_EUNLISTED);
  CHECKF(contains(g_err, "'extra'") && contains(g_err, "b.safetensors"), "%s", g_err);
  /* Same tensor in two shards. */
  const char *hdrs3[] = {hdr_a, "{\"x\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
                                "\"y\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}"};
  CHECK_EQ_INT(open_folder("dup", good, files, hdrs3, lens2, 2), AP_ST_EDUP);
  CHECKF(contains(g_err, "'x'") && contains(g_err, "a.safetensors") && contains(g_err, "b.safetensors"), "%s", g_err);
  /* A broken shard reports the shard's own error. */
  const char *hdrs4[] = {hdr_a, "{\"y\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,4]}}"};
  CHECK_EQ_INT(open_folder("badshard", good, files, hdrs4, lens, 2), AP_ST_ESIZE);
  CHECKF(contains(g_err, "b.safetensors") && contains(g_err, "'y'"), "%s", g_err);
}

static int parse_cfg(const char *json, ap_hf_config *c) {
  g_err[0] = 0;
  return ap_hf_config_parse(json, strlen(json), c, g_err, sizeof g_err);
}

#define BASE "\"hidden_size\":64,\"intermediate_size\":128,\"num_hidden_layers\":2,\"num_attention_heads\":4,\"vocab_size\":32"

static void config_cases(void) {
  ap_hf_config *c = calloc(1, sizeof *c);
  CHECK_EQ_INT(parse_cfg("{\"architectures\":[\"GPT2LMHeadModel\"]," BASE "}", c), AP_HF_EARCH);
  CHECKF(contains(g_err, "GPT2LMHeadModel"), "%s", g_err);
  CHECK_EQ_INT(parse_cfg("{\"model_type\":\"gemma\"," BASE "}", c), AP_HF_EARCH);
  CHECK_EQ_INT(parse_cfg("{" BASE "}", c), AP_HF_EARCH);
  CHECK_EQ_INT(parse_cfg("{\"architectures\":[\"LlamaForCausalLM\"]," BASE ",\"hidden_act\":\"gelu\"}", c), AP_HF_EACT);
  CHECKF(contains(g_err, "gelu"), "%s", g_err);
  const char *bad_rope[] = {"{\"type\":\"linear\",\"factor\":2.0}", "{\"rope_type\":\"dynamic\",\"factor\":2.0}",
                            "{\"rope_type\":\"yarn\",\"factor\":4.0,\"original_max_position_embeddings\":32768}",
                            "{\"rope_type\":\"llama3\",\"low_freq_factor\":1,\"high_freq_factor\":4,"
                            "\"original_max_position_embeddings\":8192}",
                            "{\"rope_type\":\"llama3\",\"factor\":8,\"low_freq_factor\":4,\"high_freq_factor\":1,"
                            "\"original_max_position_embeddings\":8192}",
                            "7"};
  for (size_t i = 0; i < sizeof bad_rope / sizeof bad_rope[0]; i++) {
    char buf[512];
    snprintf(buf, sizeof buf, "{\"architectures\":[\"LlamaForCausalLM\"]," BASE ",\"rope_scaling\":%s}", bad_rope[i]);
    CHECKF(parse_cfg(buf, c) == AP_HF_EROPE, "%s -> %s", bad_rope[i], g_err);
  }
  CHECKF(parse_cfg("{\"architectures\":[\"LlamaForCausalLM\"]," BASE ",\"rope_scaling\":{\"rope_type\":\"yarn\",\"factor\":4}}", c) == AP_HF_EROPE && contains(g_err, "yarn"), "%s", g_err);
  CHECK_EQ_INT(parse_cfg("{\"architectures\":[\"LlamaForCausalLM\"],\"hidden_size\":64}", c), AP_HF_EFIELD);
  CHECKF(contains(g_err, "intermediate_size"), "%s", g_err);
  CHECK_EQ_INT(parse_cfg("{\"architectures\":[\"LlamaForCausalLM\"]," BASE ",\"num_key_value_heads\":3}", c), AP_HF_EFIELD);
  CHECK_EQ_INT(parse_cfg("{\"architectures\":[\"LlamaForCausalLM\"],\"hidden_size\":\"64\",\"intermediate_size\":128,"
                         "\"num_hidden_layers\":2,\"num_attention_heads\":4,\"vocab_size\":32}", c), AP_HF_EFIELD);
  CHECK_EQ_INT(parse_cfg("{\"architectures\":[\"LlamaForCausalLM\"]," BASE ",\"rms_norm_eps\":-1}", c), AP_HF_EFIELD);
  CHECK_EQ_INT(parse_cfg("{\"architectures\":[\"LlamaForCausalLM\"]," BASE ",\"tie_word_embeddings\":\"yes\"}", c), AP_HF_EFIELD);
  CHECK_EQ_INT(parse_cfg("{\"architectures\":[\"LlamaForCausalLM\"],\"hidden_size\":63,\"intermediate_size\":128,"
                         "\"num_hidden_layers\":2,\"num_attention_heads\":4,\"vocab_size\":32}", c), AP_HF_EFIELD);
  CHECK_EQ_INT(parse_cfg("{\"architectures\":[\"LlamaForCausalLM\"],\"hidden_size\":64,\"intermediate_size\":128,"
                         "\"num_hidden_layers\":100000,\"num_attention_heads\":4,\"vocab_size\":32}", c), AP_HF_EFIELD);
  CHECK_EQ_INT(parse_cfg("not json", c), AP_HF_EJSON);
  CHECK_EQ_INT(parse_cfg("[]", c), AP_HF_EJSON);

  /* Llama defaults. */
  CHECK_EQ_INT(parse_cfg("{\"architectures\":[\"LlamaForCausalLM\"]," BASE "}", c), 0);
  CHECK_EQ_INT(c->arch, AP_ARCH_LLAMA);
  CHECK_STR(c->model_type, "llama");
  CHECK_EQ_INT(c->num_key_value_heads, 4);
  CHECK_EQ_INT(c->head_dim, 16);
  CHECK_EQ_INT(c->max_position_embeddings, 2048);
  CHECK_NEAR(c->rope_theta, 10000.0, 0);
  CHECK_NEAR(c->rms_norm_eps, 1e-6, 0);
  CHECK_EQ_INT(c->tie_word_embeddings, 0);
  CHECK_EQ_INT(c->qkv_bias + c->o_bias + c->mlp_bias + c->qk_norm, 0);
  CHECK_EQ_INT(c->bos_token_id, 1);
  CHECK(c->n_eos == 1 && c->eos_token_ids[0] == 2);
  CHECK_EQ_INT(c->sliding_window, 0);
  CHECK_EQ_INT(c->rope_scaling.type, AP_ROPE_DEFAULT);
  /* Llama with biases, llama3 rope, eos list. */
  CHECK_EQ_INT(parse_cfg("{\"architectures\":[\"LlamaForCausalLM\"]," BASE ",\"attention_bias\":true,\"mlp_bias\":true,"
                         "\"rope_scaling\":{\"factor\":8.0,\"low_freq_factor\":1.0,\"high_freq_factor\":4.0,"
                         "\"original_max_position_embeddings\":8192,\"rope_type\":\"llama3\"},"
                         "\"rope_theta\":500000.0,\"eos_token_id\":[128001,128008,128009],\"bos_token_id\":128000,"
                         "\"head_dim\":8,\"torch_dtype\":\"bfloat16\"}", c), 0);
  CHECK(c->qkv_bias && c->o_bias && c->mlp_bias && !c->qk_norm);
  CHECK_EQ_INT(c->rope_scaling.type, AP_ROPE_LLAMA3);
  CHECK_NEAR(c->rope_scaling.factor, 8.0, 0);
  CHECK_NEAR(c->rope_scaling.low_freq_factor, 1.0, 0);
  CHECK_NEAR(c->rope_scaling.high_freq_factor, 4.0, 0);
  CHECK_EQ_INT(c->rope_scaling.original_max_position_embeddings, 8192);
  CHECK_NEAR(c->rope_theta, 500000.0, 0);
  CHECK(c->n_eos == 3 && c->eos_token_ids[2] == 128009 && c->bos_token_id == 128000);
  CHECK_EQ_INT(c->head_dim, 8);
  CHECK(c->has_torch_dtype && c->torch_dtype == AP_BF16);
  CHECK_EQ_INT(parse_cfg("{\"architectures\":[\"LlamaForCausalLM\"]," BASE ",\"rope_scaling\":{\"rope_type\":\"default\"}}", c), 0);

  /* Mistral: sliding window 4096 on every layer by default; null disables it. */
  CHECK_EQ_INT(parse_cfg("{\"architectures\":[\"MistralForCausalLM\"]," BASE ",\"num_key_value_heads\":2}", c), 0);
  CHECK(c->sliding_window == 4096 && c->window_layer[0] == 4096 && c->window_layer[1] == 4096);
  CHECK(!ap_hf_config_window_matters(c, 4096) && ap_hf_config_window_matters(c, 4097));
  CHECK_EQ_INT(c->max_position_embeddings, 131072);
  CHECK_EQ_INT(c->qkv_bias + c->o_bias + c->mlp_bias, 0);
  CHECK_EQ_INT(parse_cfg("{\"architectures\":[\"MistralForCausalLM\"]," BASE ",\"sliding_window\":null,\"attention_bias\":true}", c), 0);
  CHECK(c->sliding_window == 0 && !ap_hf_config_window_matters(c, 1 << 20) && c->qkv_bias == 0);

  /* Qwen2: q/k/v bias regardless of attention_bias; window only with use_sliding_window. */
  CHECK_EQ_INT(parse_cfg("{\"architectures\":[\"Qwen2ForCausalLM\"]," BASE ",\"attention_bias\":false,\"sliding_window\":128}", c), 0);
  CHECK(c->qkv_bias == 1 && c->o_bias == 0 && c->mlp_bias == 0 && c->sliding_window == 0);
  CHECK_EQ_INT(c->bos_token_id, -1);
  CHECK_EQ_INT(c->n_eos, 0);
  CHECK_EQ_INT(parse_cfg("{\"architectures\":[\"Qwen2ForCausalLM\"],\"hidden_size\":64,\"intermediate_size\":128,"
                         "\"num_hidden_layers\":4,\"num_attention_heads\":4,\"vocab_size\":32,"
                         "\"use_sliding_window\":true,\"sliding_window\":128,\"max_window_layers\":2}", c), 0);
  CHECK(c->window_layer[0] == 0 && c->window_layer[1] == 0 && c->window_layer[2] == 128 && c->window_layer[3] == 128);
  CHECK(c->sliding_window == 128 && ap_hf_config_window_matters(c, 256) && !ap_hf_config_window_matters(c, 128));
  CHECK_EQ_INT(parse_cfg("{\"architectures\":[\"Qwen2ForCausalLM\"],\"hidden_size\":64,\"intermediate_size\":128,"
                         "\"num_hidden_layers\":3,\"num_attention_heads\":4,\"vocab_size\":32,\"use_sliding_window\":true,"
                         "\"sliding_window\":64,\"layer_types\":[\"sliding_attention\",\"full_attention\",\"sliding_attention\"]}", c), 0);
  CHECK(c->window_layer[0] == 64 && c->window_layer[1] == 0 && c->window_layer[2] == 64);
  CHECK_EQ_INT(parse_cfg("{\"architectures\":[\"Qwen2ForCausalLM\"]," BASE ",\"layer_types\":[\"x\",\"y\"]}", c), AP_HF_EFIELD);

  /* Qwen3: head_dim defaults to 128, not hidden/heads; qk_norm; attention_bias applies to o too. */
  CHECK_EQ_INT(parse_cfg("{\"architectures\":[\"Qwen3ForCausalLM\"]," BASE ",\"attention_bias\":true}", c), 0);
  CHECK(c->head_dim == 128 && c->qk_norm == 1 && c->qkv_bias == 1 && c->o_bias == 1 && c->mlp_bias == 0);
  CHECK_EQ_INT(c->max_position_embeddings, 32768);
  /* model_type alone is enough when architectures is absent. */
  CHECK_EQ_INT(parse_cfg("{\"model_type\":\"qwen3\"," BASE "}", c), 0);
  CHECK_EQ_INT(c->arch, AP_ARCH_QWEN3);
  free(c);
}

/* Config vs. tensors, on the real models with edited configs. */
static void check_tensor_cases(const char *data) {
  char path[1024];
  ap_hf_config *c = calloc(1, sizeof *c);
  ap_st *st = NULL;
  snprintf(path, sizeof path, "%s/stories260K-hf-derived", data);
  if (ap_st_open(path, &st, g_err, sizeof g_err) != 0 || ap_hf_config_load(path, c, g_err, sizeof g_err) != 0) {
    CHECKF(0, "cannot load %s: %s", path, g_err);
    free(c);
    ap_st_close(st);
    return;
  }
  CHECK_EQ_INT(ap_hf_config_check_tensors(c, st, g_err, sizeof g_err), 0);
  ap_hf_config bad = *c;
  bad.intermediate_size = 128;
  CHECK_EQ_INT(ap_hf_config_check_tensors(&bad, st, g_err, sizeof g_err), AP_HF_ESHAPE);
  CHECKF(contains(g_err, "model.layers.0.mlp.gate_proj.weight") && contains(g_err, "[172, 64]") &&
         contains(g_err, "[128, 64]"), "%s", g_err);
  bad = *c;
  bad.tie_word_embeddings = 0;
  CHECK_EQ_INT(ap_hf_config_check_tensors(&bad, st, g_err, sizeof g_err), AP_HF_ETENSOR);
  CHECKF(contains(g_err, "lm_head.weight"), "%s", g_err);
  bad = *c;
  bad.num_hidden_layers = 6;
  CHECK_EQ_INT(ap_hf_config_check_tensors(&bad, st, g_err, sizeof g_err), AP_HF_ETENSOR);
  CHECKF(contains(g_err, "model.layers.5."), "%s", g_err);
  bad = *c;
  bad.num_key_value_heads = 8;
  CHECK_EQ_INT(ap_hf_config_check_tensors(&bad, st, g_err, sizeof g_err), AP_HF_ESHAPE);
  CHECKF(contains(g_err, "k_proj") && contains(g_err, "[32, 64]") && contains(g_err, "[64, 64]"), "%s", g_err);
  bad = *c;
  bad.qkv_bias = 1;
  CHECK_EQ_INT(ap_hf_config_check_tensors(&bad, st, g_err, sizeof g_err), AP_HF_ETENSOR);
  CHECKF(contains(g_err, "model.layers.0.self_attn.q_proj.bias"), "%s", g_err);
  ap_st_close(st);

  snprintf(path, sizeof path, "%s/tinyqwen3-a", data);
  st = NULL;
  if (ap_st_open(path, &st, g_err, sizeof g_err) == 0 && ap_hf_config_load(path, c, g_err, sizeof g_err) == 0) {
    CHECK_EQ_INT(ap_hf_config_check_tensors(c, st, g_err, sizeof g_err), 0);
    bad = *c;
    bad.head_dim = 24; /* what hidden/heads would give */
    CHECK_EQ_INT(ap_hf_config_check_tensors(&bad, st, g_err, sizeof g_err), AP_HF_ESHAPE);
    CHECKF(contains(g_err, "q_proj.weight") && contains(g_err, "[128, 96]") && contains(g_err, "[96, 96]"), "%s", g_err);
    bad = *c;
    bad.qk_norm = 0; /* fewer expectations: still fine */
    CHECK_EQ_INT(ap_hf_config_check_tensors(&bad, st, g_err, sizeof g_err), 0);
    bad.vocab_size = 1000;
    CHECK_EQ_INT(ap_hf_config_check_tensors(&bad, st, g_err, sizeof g_err), AP_HF_ESHAPE);
    CHECKF(contains(g_err, "model.embed_tokens.weight"), "%s", g_err);
  } else {
    CHECKF(0, "cannot load %s: %s", path, g_err);
  }
  ap_st_close(st);
  CHECK_EQ_INT(ap_hf_config_load("/nonexistent/dir", c, g_err, sizeof g_err), AP_HF_EIO);
  free(c);
}

int main(int argc, char **argv) {
  const char *data = argc > 1 ? argv[1] : "../shared/data";
  g_dir = st_mkdtemp("ap_st_hostile");
  if (!g_dir) {
    fprintf(stderr, "mkdtemp: %s\n", strerror(errno));
    return 1;
  }
  single_file_cases();
  index_cases();
  config_cases();
  check_tensor_cases(data);
  st_rmtree(g_dir);
  free(g_dir);
  TEST_DONE();
}
