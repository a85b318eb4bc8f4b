/*
 * hf_config.c - see hf_config.h. Defaults mirror transformers'
 * LlamaConfig, MistralConfig, Qwen2Config and Qwen3Config, so that a config
 * that omits a key means what it means to HF.
 */
#include "hf_config.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

static void set_err(char *err, size_t errlen, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void set_err(char *err, size_t errlen, const char *fmt, ...) {
  if (!err || errlen == 0) return;
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(err, errlen, fmt, ap);
  va_end(ap);
}

static const struct {
  const char *arch, *model_type;
} k_archs[] = {
    [AP_ARCH_LLAMA] = {"LlamaForCausalLM", "llama"},
    [AP_ARCH_MISTRAL] = {"MistralForCausalLM", "mistral"},
    [AP_ARCH_QWEN2] = {"Qwen2ForCausalLM", "qwen2"},
    [AP_ARCH_QWEN3] = {"Qwen3ForCausalLM", "qwen3"},
};
#define N_ARCHS ((int)(sizeof k_archs / sizeof k_archs[0]))

const char *ap_arch_name(ap_arch a) {
  return (int)a >= 0 && (int)a < N_ARCHS ? k_archs[a].arch : "?";
}

/* Absent and JSON null both mean "use the default", as in HF's from_dict. */
static const cJSON *get(const cJSON *o, const char *key) {
  const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
  return cJSON_IsNull(v) ? NULL : v;
}

/* Integer key in [lo, hi]; `required` refuses absence, otherwise *out = def. */
static int get_int(const cJSON *o, const char *key, int required, int def, int lo, int hi, int *out, char *err,
                   size_t errlen) {
  const cJSON *v = get(o, key);
  if (!v) {
    if (required) {
      set_err(err, errlen, "config.json: required key \"%s\" missing", key);
      return AP_HF_EFIELD;
    }
    *out = def;
    return 0;
  }
  double d = cJSON_IsNumber(v) ? v->valuedouble : NAN;
  if (!(d >= lo && d <= hi) || d != floor(d)) {
    char *txt = cJSON_PrintUnformatted(v);
    set_err(err, errlen, "config.json: \"%s\" = %.40s is not an integer in [%d, %d]", key, txt ? txt : "?", lo, hi);
    free(txt);
    return AP_HF_EFIELD;
  }
  *out = (int)d;
  return 0;
}

/* Positive finite number. */
static int get_pos(const cJSON *o, const char *key, int required, double def, double *out, char *err,
                   size_t errlen) {
  const cJSON *v = get(o, key);
  if (!v) {
    if (required) {
      set_err(err, errlen, "config.json: required key \"%s\" missing", key);
      return AP_HF_EFIELD;
    }
    *out = def;
    return 0;
  }
  if (!cJSON_IsNumber(v) || !(v->valuedouble > 0) || !isfinite(v->valuedouble)) {
    char *txt = cJSON_PrintUnformatted(v);
    set_err(err, errlen, "config.json: \"%s\" = %.40s is not a positive number", key, txt ? txt : "?");
    free(txt);
    return AP_HF_EFIELD;
  }
  *out = v->valuedouble;
  return 0;
}

static int get_bool(const cJSON *o, const char *key, int def, int *out, char *err, size_t errlen) {
  const cJSON *v = get(o, key);
  if (!v) {
    *out = def;
    return 0;
  }
  if (!cJSON_IsBool(v)) {
    set_err(err, errlen, "config.json: \"%s\" is not true/false", key);
    return AP_HF_EFIELD;
  }
  *out = cJSON_IsTrue(v) ? 1 : 0;
  return 0;
}

static int token_id(const cJSON *v, int *out) {
  if (!cJSON_IsNumber(v) || v->valuedouble < 0 || v->valuedouble > 2147483647.0 ||
      v->valuedouble != floor(v->valuedouble))
    return -1;
  *out = (int)v->valuedouble;
  return 0;
}

/* rope_scaling (or transformers v5 rope_parameters): none, "default", or llama3. */
static int parse_rope(const cJSON *rs, const char *key, ap_hf_config *c, char *err, size_t errlen) {
  if (!rs) return 0;
  if (!cJSON_IsObject(rs)) {
    set_err(err, errlen, "config.json: \"%s\" is neither null nor an object", key);
    return AP_HF_EROPE;
  }
  const cJSON *t = get(rs, "rope_type");
  if (!t) t = get(rs, "type"); /* the pre-4.43 spelling */
  const char *type = cJSON_IsString(t) ? t->valuestring : t ? "?" : "default";
  if (strcmp(type, "default") == 0) return 0;
  if (strcmp(type, "llama3") != 0) {
    set_err(err, errlen, "config.json: %s type \"%.40s\" not supported (only none/default and llama3)", key, type);
    return AP_HF_EROPE;
  }
  int rc;
  c->rope_scaling.type = AP_ROPE_LLAMA3;
  if ((rc = get_pos(rs, "factor", 1, 0, &c->rope_scaling.factor, err, errlen)) ||
      (rc = get_pos(rs, "low_freq_factor", 1, 0, &c->rope_scaling.low_freq_factor, err, errlen)) ||
      (rc = get_pos(rs, "high_freq_factor", 1, 0, &c->rope_scaling.high_freq_factor, err, errlen)) ||
      (rc = get_int(rs, "original_max_position_embeddings", 1, 0, 1, 1 << 30,
                    &c->rope_scaling.original_max_position_embeddings, err, errlen))) {
    char inner[200];
    snprintf(inner, sizeof inner, "%s", err ? err : "");
    set_err(err, errlen, "%s (in llama3 %s)", inner, key);
    return AP_HF_EROPE;
  }
  /* The llama3 formula divides by (high - low). */
  if (!(c->rope_scaling.high_freq_factor > c->rope_scaling.low_freq_factor)) {
    set_err(err, errlen, "config.json: llama3 %s needs high_freq_factor > low_freq_factor (%g, %g)", key,
            c->rope_scaling.high_freq_factor, c->rope_scaling.low_freq_factor);
    return AP_HF_EROPE;
  }
  return 0;
}

static int parse_windows(const cJSON *root, ap_hf_config *c, char *err, size_t errlen) {
  int rc, L = c->num_hidden_layers;
  memset(c->window_layer, 0, sizeof c->window_layer);
  c->sliding_window = 0;
  if (c->arch == AP_ARCH_LLAMA) return 0;
  int window = 0;
  const cJSON *sw = cJSON_GetObjectItemCaseSensitive(root, "sliding_window");
  if (!sw) window = 4096; /* both MistralConfig and Qwen2/3Config default to 4096 */
  else if (!cJSON_IsNull(sw) && (rc = get_int(root, "sliding_window", 0, 0, 1, 1 << 30, &window, err, errlen)))
    return rc;
  if (c->arch == AP_ARCH_MISTRAL) {
    for (int l = 0; l < L; l++) c->window_layer[l] = window;
  } else {
    int use = 0, max_window_layers = 28;
    if ((rc = get_bool(root, "use_sliding_window", 0, &use, err, errlen))) return rc;
    if ((rc = get_int(root, "max_window_layers", 0, 28, 0, 1 << 30, &max_window_layers, err, errlen))) return rc;
    if (!use) window = 0; /* HF drops sliding_window when use_sliding_window is false */
    const cJSON *types = get(root, "layer_types");
    if (types) {
      if (!cJSON_IsArray(types) || cJSON_GetArraySize(types) != L) {
        set_err(err, errlen, "config.json: \"layer_types\" is not a list of %d strings", L);
        return AP_HF_EFIELD;
      }
      int l = 0;
      for (const cJSON *t = types->child; t; t = t->next, l++) {
        if (cJSON_IsString(t) && strcmp(t->valuestring, "sliding_attention") == 0) c->window_layer[l] = window;
        else if (!cJSON_IsString(t) || strcmp(t->valuestring, "full_attention") != 0) {
          set_err(err, errlen, "config.json: layer_types[%d] is neither \"full_attention\" nor \"sliding_attention\"", l);
          return AP_HF_EFIELD;
        }
      }
    } else {
      for (int l = max_window_layers; l < L; l++) c->window_layer[l] = window;
    }
  }
  for (int l = 0; l < L; l++)
    if (c->window_layer[l] && (!c->sliding_window || c->window_layer[l] < c->sliding_window))
      c->sliding_window = c->window_layer[l];
  return 0;
}

static int parse_root(const cJSON *root, ap_hf_config *c, char *err, size_t errlen) {
  int rc;
  /* Architecture: the first supported entry of "architectures", else model_type. */
  int arch = -1;
  const cJSON *archs = get(root, "architectures");
  const cJSON *mt = get(root, "model_type");
  if (archs) {
    if (!cJSON_IsArray(archs) || cJSON_GetArraySize(archs) == 0) {
      set_err(err, errlen, "config.json: \"architectures\" is not a non-empty list");
      return AP_HF_EARCH;
    }
    const char *first = NULL;
    for (const cJSON *a = archs->child; a && arch < 0; a = a->next) {
      if (!cJSON_IsString(a)) continue;
      if (!first) first = a->valuestring;
      for (int i = 0; i < N_ARCHS; i++)
        if (strcmp(a->valuestring, k_archs[i].arch) == 0) arch = i;
    }
    if (arch < 0) {
      set_err(err, errlen, "config.json: architecture \"%.60s\" not supported (Llama, Mistral, Qwen2, Qwen3 ForCausalLM)",
              first ? first : "?");
      return AP_HF_EARCH;
    }
  } else if (cJSON_IsString(mt)) {
    for (int i = 0; i < N_ARCHS; i++)
      if (strcmp(mt->valuestring, k_archs[i].model_type) == 0) arch = i;
    if (arch < 0) {
      set_err(err, errlen, "config.json: model_type \"%.60s\" not supported and no \"architectures\"", mt->valuestring);
      return AP_HF_EARCH;
    }
  } else {
    set_err(err, errlen, "config.json: neither \"architectures\" nor \"model_type\"");
    return AP_HF_EARCH;
  }
  c->arch = (ap_arch)arch;
  snprintf(c->architecture, sizeof c->architecture, "%s", k_archs[arch].arch);
  snprintf(c->model_type, sizeof c->model_type, "%s", cJSON_IsString(mt) ? mt->valuestring : k_archs[arch].model_type);

  const int big = 1 << 30;
  if ((rc = get_int(root, "hidden_size", 1, 0, 1, big, &c->hidden_size, err, errlen)) ||
      (rc = get_int(root, "intermediate_size", 1, 0, 1, big, &c->intermediate_size, err, errlen)) ||
      (rc = get_int(root, "num_hidden_layers", 1, 0, 1, AP_HF_MAX_LAYERS, &c->num_hidden_layers, err, errlen)) ||
      (rc = get_int(root, "num_attention_heads", 1, 0, 1, big, &c->num_attention_heads, err, errlen)) ||
      (rc = get_int(root, "vocab_size", 1, 0, 1, big, &c->vocab_size, err, errlen)) ||
      (rc = get_int(root, "num_key_value_heads", 0, c->num_attention_heads, 1, big, &c->num_key_value_heads, err,
                    errlen)))
    return rc;
  if (c->num_attention_heads % c->num_key_value_heads) {
    set_err(err, errlen, "config.json: num_attention_heads %d is not a multiple of num_key_value_heads %d",
            c->num_attention_heads, c->num_key_value_heads);
    return AP_HF_EFIELD;
  }
  if (!get(root, "head_dim") && c->arch != AP_ARCH_QWEN3 && c->hidden_size % c->num_attention_heads) {
    set_err(err, errlen, "config.json: no head_dim and hidden_size %d is not a multiple of num_attention_heads %d",
            c->hidden_size, c->num_attention_heads);
    return AP_HF_EFIELD;
  }
  int def_head = c->arch == AP_ARCH_QWEN3 ? 128 : c->hidden_size / c->num_attention_heads;
  if ((rc = get_int(root, "head_dim", 0, def_head, 1, big, &c->head_dim, err, errlen))) return rc;
  if (c->head_dim % 2) {
    set_err(err, errlen, "config.json: head_dim %d is odd; RoPE rotates pairs", c->head_dim);
    return AP_HF_EFIELD;
  }
  if ((long long)c->num_attention_heads * c->head_dim > big) {
    set_err(err, errlen, "config.json: num_attention_heads * head_dim too large");
    return AP_HF_EFIELD;
  }
  static const int def_max_pos[] = {2048, 131072, 32768, 32768};
  if ((rc = get_int(root, "max_position_embeddings", 0, def_max_pos[arch], 1, big, &c->max_position_embeddings, err,
                    errlen)) ||
      (rc = get_pos(root, "rms_norm_eps", 0, 1e-6, &c->rms_norm_eps, err, errlen)) ||
      (rc = get_pos(root, "rope_theta", 0, 10000.0, &c->rope_theta, err, errlen)) ||
      (rc = get_bool(root, "tie_word_embeddings", 0, &c->tie_word_embeddings, err, errlen)))
    return rc;

  const cJSON *act = get(root, "hidden_act");
  if (act && (!cJSON_IsString(act) || strcmp(act->valuestring, "silu") != 0)) {
    char *txt = cJSON_PrintUnformatted(act);
    set_err(err, errlen, "config.json: hidden_act %.40s not supported (only \"silu\")", txt ? txt : "?");
    free(txt);
    return AP_HF_EACT;
  }

  int attention_bias = 0, mlp_bias = 0;
  if ((rc = get_bool(root, "attention_bias", 0, &attention_bias, err, errlen)) ||
      (rc = get_bool(root, "mlp_bias", 0, &mlp_bias, err, errlen)))
    return rc;
  switch (c->arch) {
    case AP_ARCH_LLAMA: c->qkv_bias = c->o_bias = attention_bias; c->mlp_bias = mlp_bias; break;
    case AP_ARCH_MISTRAL: break;
    case AP_ARCH_QWEN2: c->qkv_bias = 1; break;
    case AP_ARCH_QWEN3: c->qkv_bias = c->o_bias = attention_bias; c->qk_norm = 1; break;
  }

  const cJSON *rp = get(root, "rope_parameters"); /* transformers v5 moved theta and scaling here */
  if (rp && cJSON_IsObject(rp) && get(rp, "rope_theta") &&
      (rc = get_pos(rp, "rope_theta", 0, c->rope_theta, &c->rope_theta, err, errlen)))
    return rc;
  if ((rc = parse_rope(get(root, "rope_scaling"), "rope_scaling", c, err, errlen))) return rc;
  if (c->rope_scaling.type == AP_ROPE_DEFAULT && (rc = parse_rope(rp, "rope_parameters", c, err, errlen))) return rc;

  if ((rc = parse_windows(root, c, err, errlen))) return rc;

  int llama_like = c->arch == AP_ARCH_LLAMA || c->arch == AP_ARCH_MISTRAL;
  const cJSON *bos = cJSON_GetObjectItemCaseSensitive(root, "bos_token_id");
  c->bos_token_id = -1;
  if (!bos) c->bos_token_id = llama_like ? 1 : -1;
  else if (!cJSON_IsNull(bos) && token_id(bos, &c->bos_token_id)) {
    set_err(err, errlen, "config.json: bos_token_id is not a non-negative integer");
    return AP_HF_EFIELD;
  }
  const cJSON *eos = cJSON_GetObjectItemCaseSensitive(root, "eos_token_id");
  c->n_eos = 0;
  if (!eos) {
    if (llama_like) c->eos_token_ids[c->n_eos++] = 2;
  } else if (cJSON_IsArray(eos)) {
    for (const cJSON *e = eos->child; e; e = e->next) {
      if (c->n_eos == AP_HF_MAX_EOS || token_id(e, &c->eos_token_ids[c->n_eos])) {
        set_err(err, errlen, "config.json: eos_token_id is not a list of at most %d token ids", AP_HF_MAX_EOS);
        return AP_HF_EFIELD;
      }
      c->n_eos++;
    }
  } else if (!cJSON_IsNull(eos)) {
    if (token_id(eos, &c->eos_token_ids[0])) {
      set_err(err, errlen, "config.json: eos_token_id is not a token id");
      return AP_HF_EFIELD;
    }
    c->n_eos = 1;
  }

  const cJSON *dt = get(root, "torch_dtype");
  if (!dt) dt = get(root, "dtype");
  if (cJSON_IsString(dt)) {
    static const struct { const char *name; ap_dtype t; } dts[] = {
        {"float32", AP_F32}, {"float16", AP_F16}, {"bfloat16", AP_BF16}};
    for (size_t i = 0; i < 3; i++)
      if (strcmp(dt->valuestring, dts[i].name) == 0) {
        c->has_torch_dtype = 1;
        c->torch_dtype = dts[i].t;
      }
  }
  return 0;
}

int ap_hf_config_parse(const char *json, size_t len, ap_hf_config *out, char *err, size_t errlen) {
  if (!json || !out) {
    set_err(err, errlen, "ap_hf_config_parse: NULL argument");
    return AP_HF_EARG;
  }
  memset(out, 0, sizeof *out);
  cJSON *root = cJSON_ParseWithLength(json, len);
  if (!cJSON_IsObject(root)) {
    set_err(err, errlen, "config.json: %s", root ? "not a JSON object" : "not valid JSON");
    cJSON_Delete(root);
    return AP_HF_EJSON;
  }
  int rc = parse_root(root, out, err, errlen);
  cJSON_Delete(root);
  if (rc) {
    int keep = out->arch;
    memset(out, 0, sizeof *out);
    out->arch = (ap_arch)keep;
  }
  return rc;
}

int ap_hf_config_load(const char *path, ap_hf_config *out, char *err, size_t errlen) {
  if (!path || !out) {
    set_err(err, errlen, "ap_hf_config_load: NULL argument");
    return AP_HF_EARG;
  }
  struct stat sb;
  char *file = NULL;
  if (stat(path, &sb) == 0 && S_ISDIR(sb.st_mode)) {
    size_t n = strlen(path);
    file = malloc(n + 13);
    if (!file) return AP_HF_ENOMEM;
    snprintf(file, n + 13, "%s/config.json", path);
  } else {
    file = strdup(path);
    if (!file) return AP_HF_ENOMEM;
  }
  int rc = 0;
  char *buf = NULL;
  FILE *f = fopen(file, "rb");
  if (!f) {
    set_err(err, errlen, "%s: %s", file, strerror(errno));
    rc = AP_HF_EIO;
    goto done;
  }
  /* config.json files are a few KB; 16 MB is a generous ceiling against garbage. */
  size_t cap = 1 << 24, n = 0;
  buf = malloc(cap);
  if (!buf) { rc = AP_HF_ENOMEM; goto done; }
  n = fread(buf, 1, cap, f);
  if (ferror(f) || n == cap) {
    set_err(err, errlen, "%s: %s", file, n == cap ? "larger than 16 MB" : "read error");
    rc = AP_HF_EIO;
    goto done;
  }
  rc = ap_hf_config_parse(buf, n, out, err, errlen);
done:
  if (f) fclose(f);
  free(buf);
  free(file);
  return rc;
}

int ap_hf_config_window_matters(const ap_hf_config *c, int seq_len) {
  return c && c->sliding_window > 0 && seq_len > c->sliding_window;
}

static void fmt_shape(char *buf, size_t n, int ndim, const int64_t *shape) {
  size_t k = (size_t)snprintf(buf, n, "[");
  for (int i = 0; i < ndim && k < n; i++) k += (size_t)snprintf(buf + k, n - k, i ? ", %lld" : "%lld", (long long)shape[i]);
  if (k < n) snprintf(buf + k, n - k, "]");
}

/* One expected tensor: exists (unless optional), floating dtype, shape as given. */
static int expect(const ap_st *st, const char *name, int optional, int ndim, int64_t d0, int64_t d1, char *err,
                  size_t errlen) {
  const ap_st_tensor *t = ap_st_find(st, name);
  if (!t) {
    if (optional) return 0;
    set_err(err, errlen, "tensor '%s' missing", name);
    return AP_HF_ETENSOR;
  }
  if (ap_dtype_size(t->dtype) == 0) {
    set_err(err, errlen, "tensor '%s': dtype %d is not F32/F16/BF16", name, (int)t->dtype);
    return AP_HF_EDTYPE;
  }
  int64_t want[2] = {d0, d1};
  int same = t->ndim == ndim;
  for (int i = 0; same && i < ndim; i++) same = t->shape[i] == want[i];
  if (!same) {
    char got_s[160], want_s[64];
    fmt_shape(got_s, sizeof got_s, t->ndim, t->shape);
    fmt_shape(want_s, sizeof want_s, ndim, want);
    set_err(err, errlen, "tensor '%s': shape %s, config implies %s", name, got_s, want_s);
    return AP_HF_ESHAPE;
  }
  return 0;
}

int ap_hf_config_check_tensors(const ap_hf_config *c, const ap_st *st, char *err, size_t errlen) {
  if (!c || !st) {
    set_err(err, errlen, "ap_hf_config_check_tensors: NULL argument");
    return AP_HF_EARG;
  }
  const int64_t H = c->hidden_size, V = c->vocab_size, I = c->intermediate_size, D = c->head_dim;
  const int64_t QD = (int64_t)c->num_attention_heads * D, KVD = (int64_t)c->num_key_value_heads * D;
  int rc;
  char n[256];
  if ((rc = expect(st, "model.embed_tokens.weight", 0, 2, V, H, err, errlen)) ||
      (rc = expect(st, "model.norm.weight", 0, 1, H, 0, err, errlen)) ||
      (rc = expect(st, "lm_head.weight", c->tie_word_embeddings, 2, V, H, err, errlen)))
    return rc;
  static const char *const proj[4] = {"q_proj", "k_proj", "v_proj", "o_proj"};
  static const char *const mlp[3] = {"gate_proj", "up_proj", "down_proj"};
  for (int l = 0; l < c->num_hidden_layers; l++) {
#define EXPECT(opt, nd, a, b, ...)                                        \
  do {                                                                    \
    snprintf(n, sizeof n, __VA_ARGS__);                                   \
    if ((rc = expect(st, n, (opt), (nd), (a), (b), err, errlen))) return rc; \
  } while (0)
    EXPECT(0, 1, H, 0, "model.layers.%d.input_layernorm.weight", l);
    EXPECT(0, 1, H, 0, "model.layers.%d.post_attention_layernorm.weight", l);
    for (int p = 0; p < 4; p++) {
      int64_t out = p == 0 ? QD : p == 3 ? H : KVD, in = p == 3 ? QD : H;
      EXPECT(0, 2, out, in, "model.layers.%d.self_attn.%s.weight", l, proj[p]);
      if (p < 3 ? c->qkv_bias : c->o_bias) EXPECT(0, 1, out, 0, "model.layers.%d.self_attn.%s.bias", l, proj[p]);
    }
    if (c->qk_norm) {
      EXPECT(0, 1, D, 0, "model.layers.%d.self_attn.q_norm.weight", l);
      EXPECT(0, 1, D, 0, "model.layers.%d.self_attn.k_norm.weight", l);
    }
    for (int p = 0; p < 3; p++) {
      int64_t out = p == 2 ? H : I, in = p == 2 ? I : H;
      EXPECT(0, 2, out, in, "model.layers.%d.mlp.%s.weight", l, mlp[p]);
      if (c->mlp_bias) EXPECT(0, 1, out, 0, "model.layers.%d.mlp.%s.bias", l, mlp[p]);
    }
#undef EXPECT
  }
  return 0;
}
