#!/usr/bin/env python3
"""One-shot baselines end to end (pruner-svc over gRPC, then the exported
folders checked independently):

  * wanda, magnitude and owl at 50%, wanda 2:4, on one model;
  * the export loads in the PyTorch reference (tests/golden/torch_ref.py);
  * per-layer sparsity of the export (its exact zeros) equals agentprune.json's,
    and is 0.5 per layer to one weight per row; 2:4 has 2 pruned in each group of 4;
  * every weight is the original (byte for byte, in the original dtype) or an
    exact zero; every other tensor and side file is unchanged;
  * magnitude's mask is recomputed here (smallest |w| of each layer) and the
    block-0 Wanda masks from reference activation norms;
  * the reference ppl over the same windows (our token ids, golden_dump)
    matches the job's ppl within 0.5%, for the dense and each pruned model;
  * `agentprune eval` of the export gives the job's ppl (in-memory pruned model);
  * magnitude ppl >= wanda ppl at 50%.
Prints the numbers as "RESULT ..." lines.
"""
import argparse
import json
import os
import subprocess
import sys

import numpy as np
import torch

import aplib
from aplib import check, info

sys.path.insert(0, os.path.join(aplib.REPO, "tests", "golden"))
import torch_ref  # noqa: E402

torch.set_num_threads(2)


def token_ids(golden_dump, model, text, ctx, tmp):
    out = os.path.join(tmp, "dump-" + os.path.basename(text))
    r = subprocess.run([golden_dump, "--model", model, "--text", text, "--ctx", str(ctx), "--windows", "1",
                        "--grad-windows", "1", "--stats-windows", "1", "--out", out, "--ppl-only", "1"],
                       stdout=subprocess.PIPE, check=True)
    return np.fromfile(os.path.join(out, "tokens.i32"), dtype=np.int32), json.loads(r.stdout)


def as_array(dtype, raw):
    if dtype == "F32":
        return np.frombuffer(raw, dtype=np.float32)
    if dtype in ("BF16", "F16"):
        return np.frombuffer(raw, dtype=np.uint16)
    raise ValueError(dtype)


def is_zero(dtype, arr):
    # +0.0 only: the exporter writes all-zero bits
    return arr == 0 if dtype != "F32" else arr.view(np.uint32) == 0


def main():
    ap = aplib.common_args(argparse.ArgumentParser())
    ap.add_argument("--model", required=True, help="folder name inside --data")
    ap.add_argument("--ctx", type=int, default=128)
    ap.add_argument("--expect-magnitude-worse", action="store_true",
                    help="assert the published ordering ppl(magnitude) >= ppl(wanda) at 50%%")
    a = ap.parse_args()
    env = aplib.Env(a, "oneshot")
    try:
        return run(env, a)
    finally:
        env.close()


def run(env, a):
    model = os.path.join(env.data, a.model)
    L = a.ctx
    calib = env.text_slice("calib.txt", os.path.join(env.ts, "calib.txt"), 30000)
    ev = env.text_slice("eval.txt", os.path.join(env.ts, "dev.txt"), 8000)
    cw = 8
    pruner = env.pruner()
    c = aplib.Client(env.pb, pruner.addr)
    common = dict(model_dir=model, calib_path=calib, eval_path=ev, ctx=L, calib_windows=cw, eval_windows=8, grad_windows=2,
                  target_sparsity=0.5)
    runs = {"wanda": dict(policy="wanda"), "magnitude": dict(policy="magnitude"),
            "wanda-2:4": dict(policy="wanda", structure="2:4"), "owl": dict(policy="owl")}
    jobs = {}
    for name, over in runs.items():
        code, job, details = c.submit(**dict(common, out_dir=env.path("out-" + name.replace(":", "-")), **over))
        check(code.name == "OK", "SubmitJob %s (%s %s)" % (name, code.name, details))
        jobs[name] = job
    finished = {}
    for name, job in jobs.items():
        if job is None:
            continue
        fin = aplib.wait_job(c, job.id, timeout=300)
        ok = fin is not None and fin.status == env.pb.pruner.JOB_STATUS_SUCCEEDED
        check(ok and fin.stop_reason == "one_shot", "job %s succeeded one shot (%s %s)" %
              (name, fin.status if fin else None, fin.error if fin else ""))
        if ok:
            finished[name] = fin

    orig_path = os.path.join(model, "model.safetensors")
    orig = aplib.read_raw_tensors(orig_path)
    eligible = sorted(n[:-len(".weight")] for n in orig
                      if any(n.endswith(p + ".weight") for p in torch_ref.ELIGIBLE))
    eval_ids, _ = token_ids(a.golden_dump, model, ev, L, env.tmp)
    calib_ids, _ = token_ids(a.golden_dump, model, calib, L, env.tmp)
    W = len(eval_ids) // L
    info("%s: %d eligible layers, eval text %d tokens = %d windows of %d" % (a.model, len(eligible), len(eval_ids),
                                                                             W, L))

    dense = torch_ref.RefModel(model)
    ref_dense, _ = torch_ref.perplexity(dense, eval_ids, L)
    calib_t = torch.tensor(calib_ids[:cw * L].astype(np.int64).reshape(cw, L))
    wanda_ref = reference_wanda(dense, calib_t, eligible)
    del dense

    results = {}
    for name, fin in finished.items():
        out = fin.out_dir
        doc = aplib.load_json(os.path.join(out, "agentprune.json"))
        json_layers = {l["name"]: l for l in doc["layers"]}
        check(os.path.exists(os.path.join(out, "report.html")), "%s: report.html exists" % name)
        check(abs(fin.dense_ppl - doc["result"]["dense_ppl"]) < 1e-9 and abs(fin.ppl - doc["result"]["ppl"]) < 1e-9,
              "%s: agentprune.json result equals GetJob (ppl %.6f)" % (name, fin.ppl))
        check(sorted(json_layers) == eligible, "%s: agentprune.json lists every eligible layer" % name)
        check(abs(doc["result"]["sparsity"] - 0.5) < 1e-3 and abs(fin.state.global_sparsity - 0.5) < 1e-3,
              "%s: global sparsity %.6f" % (name, fin.state.global_sparsity))
        exp_path = os.path.join(out, "model.safetensors")
        exp = aplib.read_raw_tensors(exp_path)
        check(sorted(exp) == sorted(orig), "%s: the export holds the same tensors" % name)
        # side files copied unchanged
        for f in ("config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
            same = open(os.path.join(model, f), "rb").read() == open(os.path.join(out, f), "rb").read()
            check(same, "%s: %s copied unchanged" % (name, f))
        bad_dtype, bad_other, bad_values, bad_sparsity, bad_rows, bad_json, bad_nm = [], [], [], [], [], [], []
        masks = {}
        for tname, (dt, shape, raw) in orig.items():
            edt, eshape, eraw = exp[tname]
            if edt != dt or eshape != shape:
                bad_dtype.append(tname)
                continue
            lname = tname[:-len(".weight")]
            if lname not in json_layers:
                if eraw != raw:
                    bad_other.append(tname)
                continue
            o, e = as_array(dt, raw), as_array(dt, eraw)
            ez, oz = is_zero(dt, e), is_zero(dt, o)
            if not np.all((e == o) | ez):
                bad_values.append(lname)
            rows, cols = shape
            pruned = ez.reshape(rows, cols)
            masks[lname] = pruned & ~oz.reshape(rows, cols)
            sp = pruned.sum() / (rows * cols)
            if abs(sp - json_layers[lname]["sparsity"]) > oz.sum() / (rows * cols) + 1e-12:
                bad_json.append((lname, sp, json_layers[lname]["sparsity"]))
            if name != "owl" and abs(json_layers[lname]["sparsity"] - 0.5) > rows / (rows * cols) + 1e-12:
                bad_sparsity.append((lname, json_layers[lname]["sparsity"]))
            if name.startswith("wanda"):
                per_row = pruned.sum(1)
                if np.any(np.abs(per_row - cols / 2) > 1):
                    bad_rows.append(lname)
            if name == "wanda-2:4":
                g = pruned.reshape(rows, cols // 4, 4)
                new = masks[lname].reshape(rows, cols // 4, 4)
                if np.any(g.sum(-1) < 2) or np.any(new.sum(-1) > 2):
                    bad_nm.append(lname)
        check(not bad_dtype, "%s: every tensor keeps its dtype (%s) and shape (mismatches: %s)" %
              (name, orig[eligible[0] + ".weight"][0], bad_dtype))
        check(not bad_other, "%s: non-eligible tensors are byte-identical (%s)" % (name, bad_other))
        check(not bad_values, "%s: eligible weights are the originals or exact zeros (%s)" % (name, bad_values))
        check(not bad_json, "%s: per-layer sparsity of the export equals agentprune.json (%s)" % (name, bad_json[:3]))
        if name != "owl":
            check(not bad_sparsity, "%s: every layer is at 0.5 to one weight per row (%s)" % (name, bad_sparsity[:3]))
        else:
            # OWL (luuyin/OWL, lambda 0.08): one ratio per block, min-max
            # scaled to a spread of 2*lambda and re-centred on the target;
            # per-row rounding moves each layer by up to half a weight per row.
            blocks = {}
            for lname, l in json_layers.items():
                blocks.setdefault(l["block"], []).append(l["sparsity"])
            tol = 0.5 / 64 + 1e-9
            ratios = {b: sum(v) / len(v) for b, v in blocks.items()}
            spread = max(ratios.values()) - min(ratios.values())
            check(all(max(v) - min(v) <= 2 * tol for v in blocks.values()) and
                  abs(spread - 0.16) <= 2 * tol and abs(sum(ratios.values()) / len(ratios) - 0.5) <= tol,
                  "owl: one sparsity per block, spread %.4f = 2*lambda, mean 0.5 (%s)" %
                  (spread, {b: round(r, 4) for b, r in sorted(ratios.items())}))
        if name.startswith("wanda"):
            check(not bad_rows, "%s: every row is pruned to half its width (%s)" % (name, bad_rows[:3]))
        if name == "wanda-2:4":
            check(not bad_nm, "wanda-2:4: every group of 4 inputs has exactly 2 pruned (%s)" % bad_nm[:3])

        # Independent masks.
        if name == "magnitude":
            wrong = []
            for lname in eligible:
                w = np.abs(decode(orig[lname + ".weight"])).reshape(-1)
                k = int(np.floor(0.5 * w.size + 0.5))
                order = np.lexsort((np.arange(w.size), w))  # by |w|, then flat index
                want = np.zeros(w.size, bool)
                want[order[:k]] = True
                got = masks[lname].reshape(-1) | (decode(orig[lname + ".weight"]).reshape(-1) == 0) & want
                if not np.array_equal(got, want):
                    wrong.append((lname, int((got != want).sum())))
            check(not wrong, "magnitude: every layer's mask is the round(numel/2) smallest |w| (%s)" % wrong[:3])
        if name == "wanda":
            agree = total = 0
            for lname in eligible:
                o = decode(orig[lname + ".weight"])
                got = masks[lname] | ((o == 0) & wanda_ref[lname])
                agree += int((got == wanda_ref[lname]).sum())
                total += o.size
            frac = agree / max(total, 1)
            check(frac > 0.995, "wanda: the masks equal a sequential PyTorch Wanda's on %.4f%% of %d weights" %
                  (100 * frac, total))

        # The export in the PyTorch reference, on our token ids.
        try:
            ref = torch_ref.RefModel(out)
            loaded = True
        except Exception as e:  # noqa: BLE001
            loaded = False
            info("torch_ref could not load %s: %s" % (out, e))
        check(loaded, "%s: the export loads in the PyTorch reference" % name)
        if loaded:
            ref_ppl, _ = torch_ref.perplexity(ref, eval_ids, L)
            rel = abs(ref_ppl - fin.ppl) / ref_ppl
            check(rel < 0.005, "%s: reference ppl %.4f vs job ppl %.4f over %d windows (rel %.2e)" %
                  (name, ref_ppl, fin.ppl, W, rel))
            results[name] = (fin.ppl, ref_ppl)
        rel_d = abs(ref_dense - fin.dense_ppl) / ref_dense
        check(rel_d < 0.005, "%s: reference dense ppl %.4f vs the job's %.4f (rel %.2e)" %
              (name, ref_dense, fin.dense_ppl, rel_d))

        # agentprune eval of the export equals the job's in-memory number.
        if a.cli_bin:
            r = subprocess.run([a.cli_bin, "eval", "--pruner", pruner.addr, "--model", out, "--text", ev,
                                "--ctx", str(L), "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, timeout=300)
            ok = r.returncode == 0
            res = json.loads(r.stdout) if ok else {}
            ok = ok and abs(res["ppl"] - fin.ppl) <= 1e-6 * fin.ppl and res["windows"] == W
            check(ok, "%s: agentprune eval of the export gives %s, the job reported %.6f (rc %d %s)" %
                  (name, res.get("ppl"), fin.ppl, r.returncode, r.stderr.strip()[:200]))

    if "wanda" in results and "magnitude" in results:
        what = "magnitude ppl %.4f >= wanda ppl %.4f at 50%%" % (results["magnitude"][0], results["wanda"][0])
        if a.expect_magnitude_worse:
            check(results["magnitude"][0] >= results["wanda"][0], what)
        else:
            # Wanda's edge comes from outlier activation features, which a tiny
            # model trained briefly may lack; the masks are checked above.
            info("not asserted for this model: " + what + (" holds" if results["magnitude"][0] >=
                                                             results["wanda"][0] else " does NOT hold"))
    dense_job = next(iter(finished.values())).dense_ppl if finished else float("nan")
    print("RESULT model=%s ctx=%d windows=%d dense=%.4f (ref %.4f) %s" % (
        a.model, L, W, dense_job, ref_dense,
        " ".join("%s=%.4f (ref %.4f)" % (k, v[0], v[1]) for k, v in results.items())), flush=True)
    c.close()
    check(pruner.stop() == 0, "pruner-svc exits 0 on SIGTERM")
    return aplib.exit_status()


def reference_wanda(model, calib, eligible):
    """Sequential Wanda at 50% in the reference model (as locuslab/wanda's
    prune_wanda): block b's column norms come from a forward over the
    calibration windows with blocks < b already pruned; per output row the
    half with the lowest |W|*||X|| (float32, ties to the lower column) goes.
    Returns name -> boolean mask."""
    masks = {}
    for b in range(model.L):
        model.hooks = {}
        with torch.no_grad():
            model.forward(calib)
        for lname in eligible:
            if not lname.startswith("model.layers.%d." % b):
                continue
            w = model.linears[lname].detach().numpy().astype(np.float32)
            score = np.abs(w) * np.sqrt(model.hooks[lname].numpy()).astype(np.float32)[None, :]
            rows, cols = w.shape
            k = int(np.floor(0.5 * cols + 0.5))
            order = np.argsort(score, axis=1, kind="stable")
            m = np.zeros((rows, cols), dtype=bool)
            np.put_along_axis(m, order[:, :k], True, axis=1)
            masks[lname] = m
            with torch.no_grad():
                model.linears[lname].data[torch.from_numpy(m)] = 0
    model.hooks = None
    return masks


def decode(t):
    """Float32 values of a raw tensor (BF16 widened exactly)."""
    dt, shape, raw = t
    if dt == "F32":
        return np.frombuffer(raw, dtype=np.float32).reshape(shape)
    if dt == "BF16":
        return (np.frombuffer(raw, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32).reshape(shape)
    return np.frombuffer(raw, dtype=np.float16).astype(np.float32).reshape(shape)


if __name__ == "__main__":
    sys.exit(main())
