"""torch_ref.py - an independent PyTorch implementation of the decoder-only
architectures agentprune runs (LlamaForCausalLM, MistralForCausalLM,
Qwen2ForCausalLM, Qwen3ForCausalLM), written from Hugging Face's
modeling_llama.py / modeling_qwen2.py / modeling_qwen3.py semantics, to check
the C engine against. It reads model folders itself (config.json, the
safetensors header and data with numpy; BF16 widened by a 16-bit shift), since
HF transformers is not available here.

Computation runs in float64 by default (weights upcast exactly), so that the
comparison measures the C engine's float32 error; the RoPE tables follow HF's
float32 pipeline (inv_freq, angles and cos/sin in float32, then cast), as HF
does whatever the model dtype.
"""
import json
import math
import os
import struct

import numpy as np
import torch

_ST_DTYPES = {"F32": np.float32, "F16": np.float16, "BF16": np.uint16}


def read_safetensors_file(path):
    with open(path, "rb") as f:
        data = f.read()
    (hlen,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + hlen].decode("utf-8"))
    base = 8 + hlen
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dt = info["dtype"]
        if dt not in _ST_DTYPES:
            raise ValueError(f"{path}: tensor {name} has dtype {dt}, not F32/F16/BF16")
        b, e = info["data_offsets"]
        raw = np.frombuffer(data, dtype=_ST_DTYPES[dt], count=(e - b) // np.dtype(_ST_DTYPES[dt]).itemsize,
                            offset=base + b)
        if dt == "BF16":
            arr = (raw.astype(np.uint32) << 16).view(np.float32)
        else:
            arr = raw.astype(np.float32)
        out[name] = arr.reshape(info["shape"]).copy()
    return out


def read_model_weights(folder):
    index = os.path.join(folder, "model.safetensors.index.json")
    if os.path.exists(index):
        with open(index) as f:
            shards = sorted(set(json.load(f)["weight_map"].values()))
        weights = {}
        for s in shards:
            weights.update(read_safetensors_file(os.path.join(folder, s)))
        return weights
    return read_safetensors_file(os.path.join(folder, "model.safetensors"))


ELIGIBLE = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
            "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]


class RefModel:
    def __init__(self, folder, dtype=torch.float64):
        with open(os.path.join(folder, "config.json")) as f:
            c = json.load(f)
        self.cfg = c
        self.arch = c["architectures"][0]
        self.dtype = dtype
        self.C = c["hidden_size"]
        self.H = c["num_attention_heads"]
        self.KVH = c.get("num_key_value_heads") or self.H
        default_hd = 128 if self.arch == "Qwen3ForCausalLM" else self.C // self.H
        self.D = c.get("head_dim") or default_hd
        self.L = c["num_hidden_layers"]
        self.eps = c.get("rms_norm_eps", 1e-6)
        self.theta = c.get("rope_theta", 10000.0)
        self.scaling = c.get("rope_scaling")
        self.qk_norm = self.arch == "Qwen3ForCausalLM"
        w = {k: torch.tensor(v, dtype=dtype) for k, v in read_model_weights(folder).items()}
        self.w = w
        self.tied = c.get("tie_word_embeddings", False)
        self.lm_head = w["model.embed_tokens.weight"] if self.tied or "lm_head.weight" not in w else w["lm_head.weight"]
        # Linear weights are leaves so that autograd gives dL/dW.
        self.linears = {}
        for l in range(self.L):
            for p in ELIGIBLE:
                name = f"model.layers.{l}.{p}"
                t = w[name + ".weight"].clone().requires_grad_(True)
                self.linears[name] = t
        self.hooks = None  # dict name -> column sum of squares (float64)

    def rope_cos_sin(self, T):
        D = self.D
        inv_freq = 1.0 / (self.theta ** (torch.arange(0, D, 2, dtype=torch.int64).float() / D))
        s = self.scaling
        if s and (s.get("rope_type") or s.get("type")) == "llama3":
            factor, lo, hi = s["factor"], s["low_freq_factor"], s["high_freq_factor"]
            old = s["original_max_position_embeddings"]
            low_wl, high_wl = old / lo, old / hi
            wavelen = 2 * math.pi / inv_freq
            inv_l = torch.where(wavelen > low_wl, inv_freq / factor, inv_freq)
            smooth = (old / wavelen - lo) / (hi - lo)
            smoothed = (1 - smooth) * inv_l / factor + smooth * inv_l
            medium = ~(wavelen < high_wl) * ~(wavelen > low_wl)
            inv_freq = torch.where(medium, smoothed, inv_l)
        pos = torch.arange(T, dtype=torch.float32)
        freqs = (inv_freq[:, None] @ pos[None, :]).transpose(0, 1)
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos().to(self.dtype), emb.sin().to(self.dtype)

    def rmsnorm(self, x, weight):
        var = x.pow(2).mean(-1, keepdim=True)
        return weight * (x * torch.rsqrt(var + self.eps))

    def linear(self, name, x):
        if self.hooks is not None:
            flat = x.detach().reshape(-1, x.shape[-1]).to(torch.float64)
            self.hooks[name] = self.hooks.get(name, 0) + (flat * flat).sum(0)
        b = self.w.get(name + ".bias")
        y = x @ self.linears[name].t()
        return y + b if b is not None else y

    @staticmethod
    def rotate_half(x):
        h = x.shape[-1] // 2
        return torch.cat((-x[..., h:], x[..., :h]), dim=-1)

    def forward(self, tokens):
        """tokens: LongTensor [B, T] -> logits [B, T, V]."""
        B, T = tokens.shape
        w = self.w
        x = w["model.embed_tokens.weight"][tokens]
        cos, sin = self.rope_cos_sin(T)
        mask = torch.full((T, T), float("-inf"), dtype=self.dtype).triu(1)
        for l in range(self.L):
            p = f"model.layers.{l}."
            r = x
            h = self.rmsnorm(x, w[p + "input_layernorm.weight"])
            q = self.linear(p + "self_attn.q_proj", h).view(B, T, self.H, self.D)
            k = self.linear(p + "self_attn.k_proj", h).view(B, T, self.KVH, self.D)
            v = self.linear(p + "self_attn.v_proj", h).view(B, T, self.KVH, self.D)
            if self.qk_norm:
                q = self.rmsnorm(q, w[p + "self_attn.q_norm.weight"])
                k = self.rmsnorm(k, w[p + "self_attn.k_norm.weight"])
            q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
            q = q * cos + self.rotate_half(q) * sin
            k = k * cos + self.rotate_half(k) * sin
            rep = self.H // self.KVH
            k = k.repeat_interleave(rep, dim=1)
            v = v.repeat_interleave(rep, dim=1)
            att = (q @ k.transpose(-1, -2)) / math.sqrt(self.D) + mask
            att = torch.softmax(att, dim=-1)
            o = (att @ v).transpose(1, 2).reshape(B, T, self.H * self.D)
            x = r + self.linear(p + "self_attn.o_proj", o)
            r = x
            h = self.rmsnorm(x, w[p + "post_attention_layernorm.weight"])
            g = self.linear(p + "mlp.gate_proj", h)
            u = self.linear(p + "mlp.up_proj", h)
            x = r + self.linear(p + "mlp.down_proj", torch.nn.functional.silu(g) * u)
        x = self.rmsnorm(x, w["model.norm.weight"])
        return x @ self.lm_head.t()

    def window_nll(self, tokens):
        """Per-window NLL sums over positions 1..T-1 (HF shift: logits[:-1] vs tokens[1:])."""
        logits = self.forward(tokens)
        lp = torch.log_softmax(logits[:, :-1], dim=-1)
        return -lp.gather(-1, tokens[:, 1:, None]).squeeze(-1).sum(-1)


def perplexity(model, ids, L, max_windows=0, batch=8):
    """DESIGN.md section 2: non-overlapping windows of L, tail dropped."""
    W = len(ids) // L
    if max_windows > 0:
        W = min(W, max_windows)
    sums = []
    with torch.no_grad():
        for w0 in range(0, W, batch):
            nb = min(batch, W - w0)
            t = torch.tensor(np.asarray(ids[w0 * L:(w0 + nb) * L], dtype=np.int64).reshape(nb, L))
            sums.append(model.window_nll(t))
    s = torch.cat(sums)
    n = W * (L - 1)
    return math.exp(float(s.sum()) / n), s
