"""golden_test.py - ap_prune against a torch/numpy reimplementation of the
reference code (locuslab/wanda lib/prune.py, luuyin/OWL lib/prune_all.py).

Usage: golden_test.py PATH/TO/golden_driver

Random layers with realistic activation statistics (log-normal channel
scales plus a few massive outlier channels, as in LLaMA activations) and
Gaussian weights with a heavy tail. Checks:
  * Wanda unstructured (torch.sort stable per row, first k indices) and the
    incremental variant: >= 99.9% of mask bits agree, and every difference is
    at an exact score tie (with a stable sort there should be none).
  * N:M 2:4 and 4:8 (torch.topk per group of m, as the Wanda repo): same.
  * magnitude (Wanda repo: one threshold over the whole matrix, W <= thresh):
    differences only at the threshold value (the repo prunes one more weight
    plus ties; we prune exactly round(t*numel)).
  * p10 of surviving Wanda scores vs numpy.percentile.
  * OWL: pooled per-block outlier fraction vs OWL's check_outlier_mean on the
    concatenated torch scores, and the per-block sparsities vs OWL's numpy
    mapping (1e-12 on the same inputs).
"""
import math
import os
import shutil
import subprocess
import sys
import tempfile

import numpy as np
import torch

DRIVER = sys.argv[1]
TMP = tempfile.mkdtemp(prefix="ap_prune_golden_")
rng = np.random.default_rng(20240611)
failures = []


def check(cond, what):
    print(("ok   " if cond else "FAIL ") + what)
    if not cond:
        failures.append(what)


def path(name):
    return os.path.join(TMP, name)


def make_layer(rows, cols, tokens=128 * 512):
    w = (rng.standard_normal((rows, cols)) * 0.02).astype(np.float32)
    heavy = rng.random((rows, cols)) < 0.001
    w[heavy] *= 8.0
    scale = np.exp(rng.normal(0.0, 0.8, cols))
    outliers = rng.choice(cols, size=max(1, cols // 100), replace=False)
    scale[outliers] *= rng.uniform(20.0, 100.0, outliers.size)
    xsq = (tokens * scale ** 2).astype(np.float64)
    return w, xsq


def norms32(xsq):
    # the library's definition: sqrt in double, rounded once to float
    return np.sqrt(xsq).astype(np.float32)


def wanda_metric(w, xsq):
    return torch.abs(torch.from_numpy(w)) * torch.from_numpy(norms32(xsq)).reshape(1, -1)


def write(name, arr):
    arr.tofile(path(name))
    return path(name)


def pack(mask_bool):
    flat = np.ascontiguousarray(mask_bool.reshape(-1)).astype(np.uint8)
    pad = (-flat.size) % 64
    flat = np.concatenate([flat, np.zeros(pad, np.uint8)])
    return np.packbits(flat, bitorder="little")


def unpack(fname, n):
    return np.unpackbits(np.fromfile(fname, dtype=np.uint8), bitorder="little")[:n].astype(bool)


def run(*args):
    out = subprocess.run([DRIVER] + [str(a) for a in args], capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"driver {args[0]} failed: {out.stderr}")
    return out.stdout


def run_mask(cmd, rows, cols, params, w, xsq, mask_in):
    wf = write("w.bin", w)
    xf = write("xsq.bin", xsq) if xsq is not None else "-"
    mf = "-"
    if mask_in is not None:
        mf = path("mask_in.bin")
        pack(mask_in).tofile(mf)
    run(cmd, rows, cols, *params, wf, xf, mf, path("mask_out.bin"))
    return unpack(path("mask_out.bin"), rows * cols).reshape(rows, cols)


def compare(name, ours, ref, metric, allow_ties_only=True, ref_thresh=None):
    n = ours.size
    diff = ours != ref
    agree = 1.0 - diff.sum() / n
    check(agree >= 0.999, f"{name}: {100 * agree:.4f}% of {n} mask bits agree")
    if diff.any():
        if ref_thresh is not None:
            ok = bool(np.all(metric[diff] == ref_thresh))
            check(ok, f"{name}: all {int(diff.sum())} differences sit at the reference threshold")
        else:
            rows = np.unique(np.nonzero(diff)[0])
            ok = True
            for r in rows:
                vals = metric[r][diff[r]]
                # a difference is legitimate only if the score occurs at least twice in the row
                for v in vals:
                    if np.count_nonzero(metric[r] == v) < 2:
                        ok = False
            check(ok, f"{name}: the {int(diff.sum())} differences are all exact ties")


# ---------------------------------------------------------------- Wanda rows
def wanda_reference(metric, sparsity):
    """locuslab/wanda prune_wanda, unstructured branch."""
    W_mask = torch.zeros_like(metric) == 1
    sort_res = torch.sort(metric, dim=-1, stable=True)
    indices = sort_res[1][:, : int(metric.shape[1] * sparsity)]
    W_mask.scatter_(1, indices, True)
    return W_mask.numpy()


def wanda_incremental_reference(metric, existing, sparsity):
    """Same ordering, surviving weights only, counting the existing prunes."""
    k = int(math.floor(metric.shape[1] * sparsity + 0.5))
    m = metric.clone()
    m[torch.from_numpy(existing)] = float("inf")
    idx = torch.sort(m, dim=-1, stable=True)[1]
    ranks = torch.empty_like(idx)
    ranks.scatter_(1, idx, torch.arange(m.shape[1]).expand_as(idx).contiguous())
    need = (k - existing.sum(axis=1)).clip(min=0)
    return existing | (ranks.numpy() < need[:, None])


for rows, cols, sp in [(512, 1024, 0.5), (256, 4096, 0.5), (300, 172, 0.5), (640, 640, 0.7), (128, 2000, 0.6)]:
    assert int(cols * sp) == math.floor(cols * sp + 0.5), "choose sizes where Wanda's int() equals round()"
    w, xsq = make_layer(rows, cols)
    metric = wanda_metric(w, xsq)
    ours = run_mask("rows", rows, cols, [sp], w, xsq, None)
    compare(f"wanda {rows}x{cols} @{sp}", ours, wanda_reference(metric, sp), metric.numpy())
    check(np.all(ours.sum(axis=1) == int(cols * sp)), f"wanda {rows}x{cols}: every row has exactly {int(cols * sp)} pruned")

# incremental: existing random mask plus a previous Wanda step, then a higher target
w, xsq = make_layer(384, 768)
metric = wanda_metric(w, xsq)
existing = rng.random((384, 768)) < 0.15
step1 = run_mask("rows", 384, 768, [0.3], w, xsq, existing)
compare("wanda incremental 0.3 over a random mask", step1, wanda_incremental_reference(metric, existing, 0.3), metric.numpy())
step2 = run_mask("rows", 384, 768, [0.55], w, xsq, step1)
compare("wanda incremental 0.3 -> 0.55", step2, wanda_incremental_reference(metric, step1, 0.55), metric.numpy())
check(bool(np.all(step2[existing])) and bool(np.all(step2[step1])), "incremental masks only grow")

# ties: BF16-like weights on a coarse grid make many equal scores; stable sort order must match exactly
w_t = (rng.integers(-6, 7, (200, 256)) * 0.005).astype(np.float32)
xsq_t = np.full(256, 4.0)
metric_t = wanda_metric(w_t, xsq_t)
ours_t = run_mask("rows", 200, 256, [0.5], w_t, xsq_t, None)
check(bool(np.array_equal(ours_t, wanda_reference(metric_t, 0.5))), "wanda with massive ties equals the stable-sort reference bit for bit")


# ---------------------------------------------------------------------- N:M
def nm_reference(metric, prune_n, prune_m):
    """locuslab/wanda prune_wanda, structured n:m branch."""
    W_mask = torch.zeros_like(metric) == 1
    for ii in range(metric.shape[1]):
        if ii % prune_m == 0:
            tmp = metric[:, ii:(ii + prune_m)].float()
            W_mask.scatter_(1, ii + torch.topk(tmp, prune_n, dim=1, largest=False)[1], True)
    return W_mask.numpy()


for rows, cols, n, m in [(512, 1024, 2, 4), (512, 1024, 4, 8), (300, 172, 2, 4)]:
    w, xsq = make_layer(rows, cols)
    metric = wanda_metric(w, xsq)
    ours = run_mask("nm", rows, cols, [n, m], w, xsq, None)
    ref = nm_reference(metric, n, m)
    compare(f"wanda {n}:{m} {rows}x{cols}", ours, ref, metric.numpy())
    groups = ours.reshape(rows, cols // m, m).sum(axis=2)
    check(bool(np.all(groups == n)), f"wanda {n}:{m}: every group has exactly {n} pruned")
    # magnitude N:M as in prune_magnitude
    mag = torch.abs(torch.from_numpy(w))
    ours_m = run_mask("nm", rows, cols, [n, m], w, None, None)
    compare(f"magnitude {n}:{m} {rows}x{cols}", ours_m, nm_reference(mag, n, m), mag.numpy())


# ---------------------------------------------------------------- magnitude
def magnitude_reference(W, sparsity):
    """locuslab/wanda prune_magnitude, unstructured branch (without .cuda())."""
    W_metric = torch.abs(W)
    thresh = torch.sort(W_metric.flatten())[0][int(W.numel() * sparsity)]
    return (W_metric <= thresh).numpy(), thresh.item()


for rows, cols, sp in [(512, 1024, 0.5), (300, 172, 0.7)]:
    w, _ = make_layer(rows, cols)
    ref, thresh = magnitude_reference(torch.from_numpy(w), sp)
    ours = run_mask("layer", rows, cols, [sp], w, None, None)
    compare(f"magnitude {rows}x{cols} @{sp}", ours, ref, np.abs(w), ref_thresh=thresh)
    check(int(ours.sum()) == math.floor(rows * cols * sp + 0.5), f"magnitude {rows}x{cols}: exactly round(t*numel) pruned")


# ---------------------------------------------------------------- p10 stat
w, xsq = make_layer(256, 512)
existing = rng.random((256, 512)) < 0.3
pack(existing).tofile(path("m.bin"))
s_ours = float(run("pct", 256, 512, 10, write("w.bin", w), write("xsq.bin", xsq), path("m.bin")))
surv = wanda_metric(w, xsq).numpy()[~existing].astype(np.float64)
s_ref = float(np.percentile(surv, 10))
check(s_ours == s_ref, f"p10 of surviving Wanda scores {s_ours!r} == numpy {s_ref!r}")


# -------------------------------------------------------------------- OWL
def check_outlier_mean(mask, threshold):
    """luuyin/OWL lib/prune_all.py, verbatim logic (percent)."""
    W = mask
    count = 0
    total_params = 0
    max_shred = torch.mean(W) * threshold
    count += (W > max_shred).sum().item()
    total_params += W.numel()
    return float(count) / total_params * 100


def owl_ratios(all_layer_ratio, sparsity_ratio, Lamda):
    """luuyin/OWL prune_wanda_outlier: ratio mapping, then layer_sparsity_ratio."""
    all_layer_ratio = np.array(all_layer_ratio)
    all_layer_ratio = ((all_layer_ratio - all_layer_ratio.min()) * (1 / (all_layer_ratio.max() - all_layer_ratio.min()) * Lamda * 2))
    all_layer_ratio = all_layer_ratio - np.mean(all_layer_ratio) + (1 - sparsity_ratio)
    out = []
    for r in all_layer_ratio:
        s = 1 - r
        if s <= 0:
            s = 0.01
        out.append(s)
    return np.array(out)


d, ff = 128, 344
theirs, ours_frac = [], []
for block in range(6):
    layers = []
    args = []
    for name, (r, c) in enumerate([(d, d)] * 4 + [(ff, d), (ff, d), (d, ff)]):
        w, xsq = make_layer(r, c)
        xsq = xsq * np.exp(rng.normal(0, 0.3 * block, c))  # blocks differ in outlier severity
        layers.append(torch.flatten(wanda_metric(w, xsq)))
        args += [r, c, write(f"w{block}_{name}.bin", w), write(f"x{block}_{name}.bin", xsq)]
    theirs.append(check_outlier_mean(torch.cat(layers), 5))
    ours_frac.append(float(run("outlier", 5, 7, *args)))
diff = max(abs(a / 100 - b) for a, b in zip(theirs, ours_frac))
check(diff < 1e-4, f"OWL pooled outlier fractions match check_outlier_mean (max diff {diff:.2e}); ours {['%.5f' % f for f in ours_frac]}")
for target in (0.5, 0.7):
    ref = owl_ratios(theirs, target, 0.08)
    ours = np.array([float(x) for x in run("owl", target, 0.08, *theirs).split()])
    check(np.max(np.abs(ours - ref)) < 1e-12, f"OWL ratios @{target} equal OWL's numpy mapping (max diff {np.max(np.abs(ours - ref)):.1e})")
    ours_e2e = np.array([float(x) for x in run("owl", target, 0.08, *ours_frac).split()])
    check(np.max(np.abs(ours_e2e - ref)) < 1e-3, f"OWL end to end @{target}: {np.round(ours_e2e, 4).tolist()}")
    check(abs(ours.mean() - target) < 1e-12 and abs(ours.max() - ours.min() - 0.16) < 1e-12, "OWL ratios: mean = target, spread = 2*lambda")

shutil.rmtree(TMP, ignore_errors=True)
print(f"{len(failures)} failed")
sys.exit(1 if failures else 0)
