/*
 * hf_config.h - the Hugging Face config.json of a decoder-only model, parsed
 * into the numbers the transformer needs, with transformers' own defaults
 * per architecture, and a check that a safetensors folder holds every tensor
 * the config implies, with the implied shape.
 *
 * Supported: LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM,
 * Qwen3ForCausalLM with hidden_act "silu" and RoPE either unscaled or
 * llama3-scaled. Everything else is refused with a message saying what.
 *
 * Defaults (when a key is absent or null), as in transformers' config classes:
 *   num_key_value_heads = num_attention_heads
 *   head_dim            = hidden_size / num_attention_heads (Qwen3: 128)
 *   rope_theta 10000, rms_norm_eps 1e-6, tie_word_embeddings false,
 *   max_position_embeddings Llama 2048, Mistral 131072, Qwen2/Qwen3 32768,
 *   bos 1 / eos 2 for Llama and Mistral, none for Qwen2/Qwen3,
 *   sliding_window: Mistral 4096 (all layers); Qwen2/Qwen3 only when
 *   use_sliding_window is true, for layers >= max_window_layers (default 28),
 *   or as listed in "layer_types".
 * Required (no sensible default for a real checkpoint): hidden_size,
 * intermediate_size, num_hidden_layers, num_attention_heads, vocab_size.
 *
 * Biases, as the HF modeling code builds them:
 *   Llama:   q,k,v,o bias = attention_bias; gate,up,down bias = mlp_bias
 *   Mistral: none
 *   Qwen2:   q,k,v bias always, o none (the config's attention_bias is ignored by HF)
 *   Qwen3:   q,k,v,o bias = attention_bias; per-head RMSNorm q_norm/k_norm [head_dim]
 */
#ifndef AP_HF_CONFIG_H
#define AP_HF_CONFIG_H

#include <stddef.h>

#include "safetensors.h"

#ifdef __cplusplus
extern "C" {
#endif

enum ap_hf_error {
  AP_HF_OK = 0,
  AP_HF_EARG = -1,     /* NULL pointer */
  AP_HF_EIO = -2,      /* config.json missing or unreadable */
  AP_HF_EJSON = -3,    /* not valid JSON / not an object */
  AP_HF_EARCH = -4,    /* architecture (or model_type) not supported */
  AP_HF_EFIELD = -5,   /* a required key missing, or a key of the wrong type / out of range,
                          or inconsistent (heads % kv_heads, hidden % heads without head_dim) */
  AP_HF_EACT = -6,     /* hidden_act other than "silu" */
  AP_HF_EROPE = -7,    /* rope_scaling of a type we do not implement (linear, dynamic, yarn, ...) */
  AP_HF_ETENSOR = -8,  /* ap_hf_config_check_tensors: a tensor missing */
  AP_HF_ESHAPE = -9,   /* ap_hf_config_check_tensors: a tensor with the wrong shape */
  AP_HF_EDTYPE = -10,  /* ap_hf_config_check_tensors: a tensor not F32/F16/BF16 (cannot happen
                          after ap_st_open, kept for callers building ap_st views by hand) */
  AP_HF_ENOMEM = -11,
};

typedef enum ap_arch {
  AP_ARCH_LLAMA = 0,
  AP_ARCH_MISTRAL = 1,
  AP_ARCH_QWEN2 = 2,
  AP_ARCH_QWEN3 = 3,
} ap_arch;

typedef enum ap_rope_type {
  AP_ROPE_DEFAULT = 0, /* inv_freq[i] = theta^(-2i/head_dim) */
  AP_ROPE_LLAMA3 = 1,  /* Llama 3.1 frequency-dependent scaling of inv_freq, see rope_scaling */
} ap_rope_type;

#define AP_HF_MAX_EOS 8
#define AP_HF_MAX_LAYERS 1024

typedef struct ap_hf_config {
  ap_arch arch;
  char architecture[64];  /* "LlamaForCausalLM", ... */
  char model_type[32];    /* "llama", "mistral", "qwen2", "qwen3" */

  int hidden_size;
  int intermediate_size;
  int num_hidden_layers;
  int num_attention_heads;
  int num_key_value_heads;
  int head_dim;
  int vocab_size;
  int max_position_embeddings;
  double rms_norm_eps;
  double rope_theta;

  int tie_word_embeddings;  /* 1: lm_head reuses embed_tokens (lm_head.weight may be absent) */
  int qkv_bias;             /* q_proj, k_proj, v_proj have .bias */
  int o_bias;               /* o_proj has .bias */
  int mlp_bias;             /* gate_proj, up_proj, down_proj have .bias */
  int qk_norm;              /* Qwen3: self_attn.q_norm / k_norm, RMSNorm over head_dim, before RoPE */

  struct {
    ap_rope_type type;
    double factor;                        /* llama3: e.g. 8 */
    double low_freq_factor;               /* llama3: e.g. 1 */
    double high_freq_factor;              /* llama3: e.g. 4 */
    int original_max_position_embeddings; /* llama3: e.g. 8192 */
  } rope_scaling;

  /* Sliding-window attention: a query at position i sees keys j with
   * i - window < j <= i. 0 = full causal attention. window_layer[l] is the
   * window of layer l (0 for full); sliding_window is the smallest non-zero
   * one. See ap_hf_config_window_matters(). */
  int sliding_window;
  int window_layer[AP_HF_MAX_LAYERS];

  int bos_token_id;                 /* -1 when none */
  int eos_token_ids[AP_HF_MAX_EOS]; /* eos_token_id may be an int or a list */
  int n_eos;
  int has_torch_dtype;              /* torch_dtype (or "dtype") was float32/float16/bfloat16 */
  ap_dtype torch_dtype;
} ap_hf_config;

/* Reads `path`/config.json (or `path` itself when it is a file) and parses it
 * with ap_hf_config_parse(). */
int ap_hf_config_load(const char *path, ap_hf_config *out, char *err, size_t errlen);

/* Parses config.json text (len bytes, need not be NUL-terminated) into *out
 * (fully overwritten). Returns 0 or an AP_HF_E* code with a message naming
 * the key and the offending value. No allocation survives the call. */
int ap_hf_config_parse(const char *json, size_t len, ap_hf_config *out, char *err, size_t errlen);

/* 1 when some layer's sliding window is shorter than seq_len, i.e. running
 * windows of seq_len tokens with full causal attention would differ from HF;
 * 0 when the window never bites at that length. */
int ap_hf_config_window_matters(const ap_hf_config *c, int seq_len);

/* Checks that st holds every tensor the config implies, with its shape:
 *   model.embed_tokens.weight [vocab, hidden]
 *   model.layers.{l}.input_layernorm.weight [hidden], post_attention_layernorm.weight [hidden]
 *   model.layers.{l}.self_attn.q_proj.weight [heads*head_dim, hidden]
 *                              k_proj/v_proj.weight [kv_heads*head_dim, hidden]
 *                              o_proj.weight [hidden, heads*head_dim]
 *                              {q,k,v,o}_proj.bias [out] when the config implies bias
 *                              q_norm.weight / k_norm.weight [head_dim] when qk_norm
 *   model.layers.{l}.mlp.gate_proj/up_proj.weight [inter, hidden], down_proj.weight [hidden, inter]
 *                        (+ .bias when mlp_bias)
 *   model.norm.weight [hidden]
 *   lm_head.weight [vocab, hidden] unless tie_word_embeddings (then optional, shape checked if present)
 * Tensors beyond these (e.g. rotary_emb.inv_freq) are ignored.
 * Returns 0, or AP_HF_ETENSOR / AP_HF_ESHAPE / AP_HF_EDTYPE with a message
 * naming the tensor and, for shapes, both the expected and found shape. */
int ap_hf_config_check_tensors(const ap_hf_config *c, const ap_st *st, char *err, size_t errlen);

/* Stable name of an ap_arch ("LlamaForCausalLM", ...). */
const char *ap_arch_name(ap_arch a);

#ifdef __cplusplus
}
#endif
#endif
