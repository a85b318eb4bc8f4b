"""Cross-checks our safetensors reader, writer and conversions against an
independent parse of the bytes (struct + json + numpy, torch for bfloat16).

usage: crosscheck.py ST_TOOL DATA_DIR
"""
import json
import os
import struct
import subprocess
import sys
import tempfile

import numpy as np
import torch

TOOL, DATA = sys.argv[1], sys.argv[2]
failures = 0
passes = 0


def check(cond, msg):
    global failures, passes
    if cond:
        passes += 1
    else:
        failures += 1
        print("FAIL:", msg, file=sys.stderr)


def parse(path, ours=False):
    """Independent reader: {name: (dtype, shape, abs_offset, raw bytes)}, metadata."""
    b = open(path, "rb").read()
    (n,) = struct.unpack("<Q", b[:8])
    text = b[8:8 + n].decode("utf-8")
    hdr = json.loads(text)
    meta = hdr.pop("__metadata__", None)
    ranges = sorted((v["data_offsets"][0], v["data_offsets"][1]) for v in hdr.values())
    if ours:
        check(n % 8 == 0, f"{path}: header length {n} not a multiple of 8")
        check(text == text.rstrip(" ") + " " * (len(text) - len(text.rstrip(" "))) and text.rstrip(" ").endswith("}"),
              f"{path}: header padding is not spaces")
    # The reference loader requires the tensors to tile the data area exactly.
    pos = 0
    for s, e in ranges:
        check(s == pos, f"{path}: hole or overlap at {s} (expected {pos})")
        pos = e
    check(8 + n + pos == len(b), f"{path}: data area {len(b) - 8 - n} bytes, tensors cover {pos}")
    out = {}
    for k, v in hdr.items():
        s, e = v["data_offsets"]
        out[k] = (v["dtype"], v["shape"], 8 + n + s, b[8 + n + s:8 + n + e])
    return out, meta


def to_f32(dtype, raw, shape):
    if dtype == "F32":
        a = np.frombuffer(raw, dtype="<f4").astype(np.float32)
    elif dtype == "F16":
        a = np.frombuffer(raw, dtype="<f2").astype(np.float32)
    elif dtype == "BF16":
        a = torch.frombuffer(bytearray(raw), dtype=torch.bfloat16).float().numpy() if raw else np.zeros(0, np.float32)
    else:
        raise ValueError(dtype)
    return a.reshape(shape)


def dump(path):
    r = subprocess.run([TOOL, "dump", path], capture_output=True, text=True)
    check(r.returncode == 0, f"st_tool dump {path}: {r.stderr}")
    return [json.loads(line) for line in r.stdout.splitlines()]


# 1. Real models: what our reader reports equals the independent parse.
for model in ("stories260K-hf-derived", "tinyqwen3-a"):
    path = os.path.join(DATA, model)
    ref, meta = parse(os.path.join(path, "model.safetensors"))
    got = dump(path)
    check(len(got) == len(ref), f"{model}: {len(got)} tensors vs {len(ref)}")
    check(meta == {"format": "pt"}, f"{model}: metadata {meta}")
    for t in got:
        dtype, shape, off, raw = ref[t["name"]]
        a = to_f32(dtype, raw, shape).astype(np.float64).ravel()
        check(t["dtype"] == dtype and t["shape"] == shape, f"{t['name']}: {t['dtype']}{t['shape']} vs {dtype}{shape}")
        check(t["offset"] == off and t["nbytes"] == len(raw), f"{t['name']}: offset/nbytes")
        check(abs(t["sum"] - a.sum()) <= 1e-9 * max(1.0, np.abs(a).sum()), f"{t['name']}: sum {t['sum']} vs {a.sum()}")
        check(abs(t["sumsq"] - (a * a).sum()) <= 1e-9 * max(1.0, (a * a).sum()), f"{t['name']}: sumsq")
        for k, v in t["samples"]:
            check(np.float32(v) == np.float32(a[k]), f"{t['name']}[{k}]: {v} vs {a[k]}")
    print(f"{model}: {len(got)} tensors agree with the independent parse")

# 2. f32 -> bf16 / f16 rounding against torch and numpy.
rng = np.random.default_rng(1)
bits = rng.integers(0, 2**32, size=400000, dtype=np.uint64).astype(np.uint32)
edge = [0x00000000, 0x80000000, 0x7F800000, 0xFF800000, 0x7F7FFFFF, 0x477FEFFF, 0x477FF000, 0x477FE000,
        0x33000000, 0x33000001, 0x337FFFFF, 0x38800000, 0x387FC000, 0x387FE000, 0x3F808000, 0x3F818000,
        0x3F800000 | 0x1000, 0x3F802000 | 0x1000, 0x00000001, 0x007FFFFF]
# exact ties for f16 in normal and subnormal ranges, and for bf16
ties = []
for e in range(90, 160):
    m = int(rng.integers(0, 2**23))
    ties.append((e << 23) | (m & ~0x1FFF) | 0x1000)
    ties.append((e << 23) | (m & ~0xFFFF) | 0x8000)
    for s in range(14, 25):
        ties.append((e << 23) | (m & ~((1 << s) - 1)) | (1 << (s - 1)))
bits = np.concatenate([bits, np.array(edge + ties, dtype=np.uint32)])
x = bits.view(np.float32)
with tempfile.TemporaryDirectory() as tmp:
    fin, fb, fh = (os.path.join(tmp, n) for n in ("in.f32", "out.bf16", "out.f16"))
    x.astype("<f4").tofile(fin)
    r = subprocess.run([TOOL, "convert", fin, fb, fh], capture_output=True, text=True)
    check(r.returncode == 0, f"convert: {r.stderr}")
    ours_b = np.fromfile(fb, dtype="<u2")
    ours_h = np.fromfile(fh, dtype="<u2")
    nan = np.isnan(x)
    with np.errstate(over="ignore"):
        ref_h = x.astype(np.float16).view(np.uint16)
    ref_b = torch.from_numpy(x.copy()).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    bad_b = np.nonzero((ours_b != ref_b) & ~nan)[0]
    bad_h = np.nonzero((ours_h != ref_h) & ~nan)[0]
    check(len(bad_b) == 0, f"bf16 differs from torch at {len(bad_b)} values, e.g. "
          + ", ".join(f"{bits[i]:08x}: {ours_b[i]:04x} vs {ref_b[i]:04x}" for i in bad_b[:5]))
    check(len(bad_h) == 0, f"f16 differs from numpy at {len(bad_h)} values, e.g. "
          + ", ".join(f"{bits[i]:08x}: {ours_h[i]:04x} vs {ref_h[i]:04x}" for i in bad_h[:5]))
    nan_b = ((ours_b & 0x7F80) == 0x7F80) & ((ours_b & 0x7F) != 0)
    nan_h = ((ours_h & 0x7C00) == 0x7C00) & ((ours_h & 0x3FF) != 0)
    check(np.array_equal(nan_b, nan) and np.array_equal(nan_h, nan), "NaN not preserved")
    print(f"conversions: {len(x)} floats ({int(nan.sum())} NaN) match torch bf16 and numpy f16")

    # 3. What we write is readable by an independent parser, bytes and values intact.
    src = os.path.join(DATA, "tinyqwen3-a")
    out = os.path.join(tmp, "export")
    os.mkdir(out)
    r = subprocess.run([TOOL, "export", src, out, "3"], capture_output=True, text=True)
    check(r.returncode == 0, f"export: {r.stderr}")
    ref, _ = parse(os.path.join(src, "model.safetensors"))
    index = json.load(open(os.path.join(out, "model.safetensors.index.json")))
    wm = index["weight_map"]
    check(set(wm) == set(ref), "weight_map keys differ from the input's tensors")
    check(index["metadata"]["total_size"] == sum(len(v[3]) for v in ref.values()), "total_size")
    shards = sorted(set(wm.values()))
    check(shards == [f"model-0000{i}-of-00003.safetensors" for i in (1, 2, 3)], f"shards {shards}")
    seen = {}
    for s in shards:
        tensors, meta = parse(os.path.join(out, s), ours=True)
        check(meta == {"format": "pt"}, f"{s}: metadata {meta}")
        for name, (dtype, shape, _, raw) in tensors.items():
            check(wm[name] == s, f"{name} in {s} but index says {wm[name]}")
            seen[name] = 1
            rd, rs, _, rraw = ref[name]
            check(dtype == rd and shape == rs and raw == rraw, f"{name}: bytes differ after export")
            # torch reads the bf16 bytes to the same values as the original
            t = torch.frombuffer(bytearray(raw), dtype=torch.bfloat16).reshape(shape)
            check(torch.equal(t, torch.frombuffer(bytearray(rraw), dtype=torch.bfloat16).reshape(rs)), name)
    check(len(seen) == len(ref), "export lost tensors")
    f16, meta = parse(os.path.join(out, "f16.safetensors"), ours=True)
    check(meta == {"format": "pt", "source": "st_tool"}, f"f16 metadata {meta}")
    check(list(f16) == list(reversed(list(dict(sorted(ref.items(), key=lambda kv: kv[1][2]))))),
          "f16 file does not keep the given tensor order")
    for name, (dtype, shape, _, raw) in f16.items():
        rd, rs, _, rraw = ref[name]
        want = to_f32(rd, rraw, rs).astype(np.float16)  # numpy's RNE
        got = np.frombuffer(raw, dtype="<f2").reshape(shape)
        check(dtype == "F16" and np.array_equal(got.view(np.uint16), want.view(np.uint16)), f"{name}: f16 values")
    print(f"export: {len(shards)} shards + index and an F16 file parse independently and match")

print(f"{passes} passed, {failures} failed")
sys.exit(1 if failures else 0)
