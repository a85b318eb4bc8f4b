"""golden_test.py - runs golden_dump (our C engine) and torch_ref.py (an
independent PyTorch implementation) on the same model and token ids, and
compares logits, loss, per-window NLL, perplexity, every eligible layer's
gradient, the accumulated gradient magnitudes and the Wanda statistics.

Exit status 0 when every check passes; prints one line per check.
"""
import argparse
import json
import math
import os
import subprocess
import sys
import tempfile

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch_ref  # noqa: E402

torch.set_num_threads(2)

failures = 0


def check(name, ok, detail):
    global failures
    print(f"{'ok  ' if ok else 'FAIL'} {name}: {detail}")
    if not ok:
        failures += 1


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dump-tool", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--text", required=True)
    ap.add_argument("--ctx", type=int, required=True)
    ap.add_argument("--windows", type=int, default=8)
    ap.add_argument("--grad-windows", type=int, default=1)
    ap.add_argument("--stats-windows", type=int, default=1)
    ap.add_argument("--keep", help="write the dump here instead of a temporary folder")
    ap.add_argument("--synth", nargs=2, metavar=("ARCH", "DTYPE"),
                    help="build a random model (make_synth.py) of this architecture and dtype; "
                         "--model then names the folder whose tokenizer it copies")
    a = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp, tempfile.TemporaryDirectory() as synth_dir:
        if a.synth:
            here = os.path.dirname(os.path.abspath(__file__))
            subprocess.run([sys.executable, os.path.join(here, "make_synth.py"), a.synth[0], a.synth[1], synth_dir,
                            a.model], check=True)
            a.model = synth_dir
        out = a.keep or tmp
        cmd = [a.dump_tool, "--model", a.model, "--text", a.text, "--ctx", str(a.ctx), "--windows", str(a.windows),
               "--grad-windows", str(a.grad_windows), "--stats-windows", str(a.stats_windows), "--out", out]
        r = subprocess.run(cmd)
        if r.returncode != 0:
            print(f"FAIL golden_dump exited with {r.returncode}")
            return 1
        meta = json.load(open(os.path.join(out, "meta.json")))
        ids = np.fromfile(os.path.join(out, "tokens.i32"), dtype=np.int32)
        wnll_c = np.fromfile(os.path.join(out, "window_nll.f64"), dtype=np.float64)
        logits_c = np.fromfile(os.path.join(out, "logits0.f32"), dtype=np.float32)
        L, nw = meta["ctx"], meta["windows"]
        layers = meta["layers"]
        grads_c = [np.fromfile(os.path.join(out, "grad", f"{i}.f32"), dtype=np.float32) for i in range(len(layers))]
        colsq_c = [np.fromfile(os.path.join(out, "colsq", f"{i}.f64"), dtype=np.float64) for i in range(len(layers))]

        model = torch_ref.RefModel(a.model)
    V = model.cfg["vocab_size"]
    check("token count", len(ids) == meta["n_tokens"], f"{len(ids)} ids")
    if meta["bos"] >= 0:
        check("BOS only at the start", ids[0] == meta["bos"] and int((ids[1:] == meta["bos"]).sum()) == 0,
              f"first id {ids[0]}, later BOS count {int((ids[1:] == meta['bos']).sum())}")

    # logits of window 0
    w0 = torch.tensor(ids[:L].astype(np.int64))[None]
    with torch.no_grad():
        logits_t = model.forward(w0)[0].numpy()
    lc = logits_c.reshape(L, V)
    scale = float(np.abs(logits_t).max())
    err = float(np.abs(lc - logits_t).max())
    check("logits", err < 1e-4 * scale, f"max abs err {err:.3g}, logit scale {scale:.3g}, rel {err / scale:.3g}")

    # each of the first few windows' NLL (float64 reference)
    n_each = min(nw, 8)
    _, sums_t = torch_ref.perplexity(model, ids, L, n_each)
    sums_t = sums_t.numpy()
    check("window count", len(sums_t) == n_each == len(wnll_c) and nw == min(len(ids) // L, a.windows or nw),
          f"{nw} windows of {L}")
    wrel = float(np.max(np.abs(wnll_c - sums_t) / np.abs(sums_t)))
    check("per-window NLL", wrel < 1e-5, f"first {n_each} windows, max rel err {wrel:.3g}")
    # perplexity over every evaluated window; a float32 reference (as HF runs
    # it) keeps whole-text runs fast, and its own error is ~1e-6
    ppl_model = model if nw <= 8 else torch_ref.RefModel(a.model, dtype=torch.float32)
    ppl_t, _ = torch_ref.perplexity(ppl_model, ids, L, nw)
    prel = abs(meta["ppl"] - ppl_t) / ppl_t
    check("perplexity", prel < 1e-4, f"C {meta['ppl']:.6f} torch {ppl_t:.6f} rel {prel:.3g} over {nw} windows")
    check("predicted tokens", meta["predicted"] == nw * (L - 1), f"{meta['predicted']}")

    # loss and gradients of window 0 (mean NLL over L-1 predictions)
    logits = model.forward(w0)
    loss = torch.nn.functional.cross_entropy(logits[0, :-1], w0[0, 1:])
    loss.backward()
    lrel = abs(meta["loss0"] - float(loss)) / float(loss)
    check("loss", lrel < 1e-5, f"C {meta['loss0']:.7f} torch {float(loss):.7f} rel {lrel:.3g}")
    worst_cos, worst_norm = 1.0, 0.0
    for i, l in enumerate(layers):
        gt = model.linears[l["name"]].grad.numpy().ravel()
        gc = grads_c[i].astype(np.float64)
        cos = float(gc @ gt / (np.linalg.norm(gc) * np.linalg.norm(gt)))
        nrel = abs(np.linalg.norm(gc) - np.linalg.norm(gt)) / np.linalg.norm(gt)
        worst_cos, worst_norm = min(worst_cos, cos), max(worst_norm, nrel)
        if cos <= 0.9999 or nrel > 1e-3:
            check(f"gradient {l['name']}", False, f"cosine {cos:.7f}, norm rel err {nrel:.3g}")
    check("gradients (all layers)", worst_cos > 0.9999 and worst_norm <= 1e-3,
          f"{len(layers)} layers, worst cosine {worst_cos:.8f}, worst norm rel err {worst_norm:.3g}")

    # accumulated |dL_i/dW| over grad_windows windows (nothing pruned: all weights kept)
    G = meta["grad_windows"]
    acc = {l["name"]: 0.0 for l in layers}
    for w in range(G):
        for t in model.linears.values():
            t.grad = None
        tw = torch.tensor(ids[w * L:(w + 1) * L].astype(np.int64))[None]
        lw = torch.nn.functional.cross_entropy(model.forward(tw)[0, :-1], tw[0, 1:])
        lw.backward()
        for n, t in model.linears.items():
            acc[n] += float(t.grad.abs().sum())
    worst = 0.0
    for l in layers:
        worst = max(worst, abs(l["grad_abs_kept"] - acc[l["name"]]) / acc[l["name"]],
                    abs(l["grad_abs_acc"] - acc[l["name"]]) / acc[l["name"]])
        if l["grad_windows"] != G:
            worst = math.inf
    check("gradient magnitude sums", worst < 1e-4, f"over {G} windows, worst rel err {worst:.3g}")

    # Wanda statistic: column sums of squares of every eligible layer's input
    S = meta["stats_windows"]
    model.hooks = {}
    with torch.no_grad():
        model.forward(torch.tensor(ids[:S * L].astype(np.int64).reshape(S, L)))
    worst = 0.0
    for i, l in enumerate(layers):
        ref = model.hooks[l["name"]].numpy()
        worst = max(worst, float(np.max(np.abs(colsq_c[i] - ref) / np.maximum(np.abs(ref), 1e-12))))
        if l["act_tokens"] != S * L:
            worst = math.inf
    check("Wanda column norms", worst < 1e-4, f"over {S} windows, worst rel err {worst:.3g}")
    check("block-by-block API", meta["block_api_stats_maxrel"] == 0.0,
          f"stats and NLL equal to the full forward (max rel diff {meta['block_api_stats_maxrel']})")

    print(f"{'PASS' if failures == 0 else 'FAILED'}: {failures} failure(s)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
