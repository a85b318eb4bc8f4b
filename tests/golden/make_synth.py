"""make_synth.py - writes a small random-weight HF model folder of a given
architecture (config.json, model.safetensors in the chosen dtype, and the
stories260K tokenizer files), to cover in the golden tests what the shared
models do not: Qwen2 q/k/v biases, Llama 3 rope_scaling, Mistral, F16
weights, untied heads and MHA vs GQA.

usage: make_synth.py ARCH DTYPE OUT_DIR TOKENIZER_DIR
  ARCH  qwen2 | llama3 | mistral     DTYPE F32 | F16 | BF16
"""
import json
import os
import shutil
import struct
import sys

import numpy as np


def to_bytes(arr, dtype):
    a = np.ascontiguousarray(arr, dtype=np.float32)
    if dtype == "F32":
        return a.tobytes()
    if dtype == "F16":
        return a.astype(np.float16).tobytes()
    u = a.view(np.uint32)  # BF16: round to nearest even
    r = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)
    return r.tobytes()


def write_safetensors(path, tensors, dtype):
    header, blobs, off = {}, [], 0
    for name, arr in tensors.items():
        b = to_bytes(arr, dtype)
        header[name] = {"dtype": dtype, "shape": list(arr.shape), "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    header["__metadata__"] = {"format": "pt"}
    h = json.dumps(header).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)


def main():
    arch, dtype, out, tokdir = sys.argv[1:5]
    rng = np.random.default_rng(1234)
    V, C, I, L = 512, 48, 80, 2
    cfg = {"vocab_size": V, "hidden_size": C, "intermediate_size": I, "num_hidden_layers": L,
           "hidden_act": "silu", "rms_norm_eps": 1e-5, "bos_token_id": 1, "eos_token_id": 2,
           "max_position_embeddings": 256}
    if arch == "qwen2":
        cfg.update(architectures=["Qwen2ForCausalLM"], model_type="qwen2", num_attention_heads=6,
                   num_key_value_heads=2, rope_theta=1000000.0, tie_word_embeddings=True,
                   use_sliding_window=False, sliding_window=4096, max_window_layers=2)
    elif arch == "llama3":
        cfg.update(architectures=["LlamaForCausalLM"], model_type="llama", num_attention_heads=4,
                   num_key_value_heads=4, rope_theta=500000.0, tie_word_embeddings=False,
                   rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                 "high_freq_factor": 4.0, "original_max_position_embeddings": 64})
    elif arch == "mistral":
        cfg.update(architectures=["MistralForCausalLM"], model_type="mistral", num_attention_heads=4,
                   num_key_value_heads=1, rope_theta=10000.0, tie_word_embeddings=False, sliding_window=256)
    else:
        sys.exit(f"unknown arch {arch}")
    H, KVH = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    D = C // H
    t = {"model.embed_tokens.weight": rng.normal(0, 1.0, (V, C)),
         "model.norm.weight": 1 + 0.1 * rng.normal(size=C)}
    if not cfg["tie_word_embeddings"]:
        t["lm_head.weight"] = rng.normal(0, 1 / np.sqrt(C), (V, C))
    for l in range(L):
        p = f"model.layers.{l}."
        t[p + "input_layernorm.weight"] = 1 + 0.1 * rng.normal(size=C)
        t[p + "post_attention_layernorm.weight"] = 1 + 0.1 * rng.normal(size=C)
        for n, shape in [("self_attn.q_proj", (H * D, C)), ("self_attn.k_proj", (KVH * D, C)),
                         ("self_attn.v_proj", (KVH * D, C)), ("self_attn.o_proj", (C, H * D)),
                         ("mlp.gate_proj", (I, C)), ("mlp.up_proj", (I, C)), ("mlp.down_proj", (C, I))]:
            t[p + n + ".weight"] = rng.normal(0, 1.5 / np.sqrt(shape[1]), shape)
            if arch == "qwen2" and n in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"):
                t[p + n + ".bias"] = rng.normal(0, 0.5, shape[0])
    os.makedirs(out, exist_ok=True)
    write_safetensors(os.path.join(out, "model.safetensors"), t, dtype)
    cfg["torch_dtype"] = {"F32": "float32", "F16": "float16", "BF16": "bfloat16"}[dtype]
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(os.path.join(tokdir, name), out)


if __name__ == "__main__":
    main()
