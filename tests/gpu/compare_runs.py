"""compare_runs.py - compares the outputs of a --device cpu run and a
--device cuda run for tests/gpu/run.sh. Prints one line; exit 0 when they
agree, 1 when not, 2 on unreadable input.

  compare_runs.py masks CPU.safetensors CUDA.safetensors
      pruned pattern (weight == 0) of every 2-D tensor: equal, else the
      number of elements that differ per tensor (a handful at near-ties of
      the Wanda score points at summation order; many at a bug)
  compare_runs.py profile CPU.json CUDA.json TOL
      `agentprune profile --json` tables: s and g of every layer within TOL
      relative (of the larger magnitude)
"""
import json
import struct
import sys

import numpy as np

DT = {"F32": np.float32, "F16": np.float16, "BF16": np.uint16}


def read_st(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        body = f.read()
    out = {}
    for name, meta in header.items():
        if name == "__metadata__" or len(meta["shape"]) != 2:
            continue
        a, b = meta["data_offsets"]
        raw = np.frombuffer(body[a:b], dtype=DT[meta["dtype"]])
        # BF16 zero is 0x0000 or 0x8000: compare the bits without the sign
        out[name] = (raw & 0x7FFF) == 0 if meta["dtype"] == "BF16" else raw == 0
    return out


def masks(a, b):
    x, y = read_st(a), read_st(b)
    if set(x) != set(y):
        print("tensor names differ")
        return 1
    diff = {k: int(np.count_nonzero(x[k] != y[k])) for k in x}
    total = sum(diff.values())
    pruned = sum(int(np.count_nonzero(v)) for v in x.values())
    if total == 0:
        print("masks identical (%d pruned weights in %d tensors)" % (pruned, len(x)))
        return 0
    worst = sorted(diff.items(), key=lambda kv: -kv[1])[:3]
    print("masks DIFFER in %d of %d pruned weights; most in %s" %
          (total, pruned, ", ".join("%s (%d)" % kv for kv in worst)))
    return 1


def profile(a, b, tol):
    def rows(p):
        with open(p) as f:
            o = json.load(f)
        layers = o.get("layers", o.get("table", []))
        return {l["name"]: l for l in layers}
    x, y = rows(a), rows(b)
    if not x or set(x) != set(y):
        print("profile tables differ in their layers (%d vs %d)" % (len(x), len(y)))
        return 1
    worst, where = 0.0, ""
    for k in x:
        for f in ("s", "g"):
            u, v = x[k][f], y[k][f]
            d = abs(u - v) / max(abs(u), abs(v), 1e-30)
            if d > worst:
                worst, where = d, "%s.%s" % (k, f)
    print("profile: %d layers, largest relative difference %.3g (%s), tolerance %g" % (len(x), worst, where, tol))
    return 0 if worst <= tol else 1


def main():
    try:
        if sys.argv[1] == "masks":
            return masks(sys.argv[2], sys.argv[3])
        if sys.argv[1] == "profile":
            return profile(sys.argv[2], sys.argv[3], float(sys.argv[4]))
    except (OSError, ValueError, KeyError, IndexError) as e:
        print("cannot compare: %s" % e)
        return 2
    print("usage: compare_runs.py masks A B | profile A B TOL")
    return 2


if __name__ == "__main__":
    sys.exit(main())
