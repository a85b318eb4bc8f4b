"""Issue 4 golden: on the real shared models, Wanda and magnitude at 50%
(agentprune prune, one shot, exported) must pick the same masks as an
independent PyTorch implementation of the Wanda repository's algorithms:
  wanda     sequential, block by block: the input statistics of block b come
            from the calibration windows run through the already-pruned
            blocks < b; per output row, prune the lowest |W|*||X_j||
            (torch.sort, stable) until half the row is gone;
  magnitude per layer, the lowest |W| over the whole matrix.
At least 99.9% of mask bits must agree (differences only at near-ties of
float32 vs float64 statistics), and the pruned perplexity of the exported
folder, recomputed by the reference over the same windows, must match the
job's own report within 0.5%.

usage: test_masks.py CLI GOLDEN_DUMP MODEL_DIR DATA_DIR CTX CALIB_WINDOWS WORKDIR
"""
import json, os, subprocess, sys
import numpy as np
import torch

here = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(here, "..", "golden"))
import torch_ref  # noqa: E402

cli, dump, model_dir, data, ctx, nwin, work = sys.argv[1:8]
ctx, nwin = int(ctx), int(nwin)
os.makedirs(work, exist_ok=True)
passed = failed = 0


def check(cond, what):
    global passed, failed
    if cond:
        passed += 1
    else:
        failed += 1
    print(("ok   " if cond else "FAIL ") + what)


def tokens_of(text, out):
    subprocess.run([dump, "--model", model_dir, "--text", text, "--ctx", str(ctx), "--windows", "1",
                    "--grad-windows", "1", "--stats-windows", "1", "--out", out], check=True,
                   stdout=subprocess.DEVNULL)
    return np.fromfile(os.path.join(out, "tokens.i32"), dtype=np.int32)


def run_job(policy):
    out = os.path.join(work, policy)
    subprocess.run(["rm", "-rf", out])
    r = subprocess.run([cli, "prune", "--policy", policy, "--sparsity", "0.5", "--model", model_dir,
                        "--calib", f"{data}/tinystories/calib.txt", "--eval", f"{data}/tinystories/dev.txt",
                        "--ctx", str(ctx), "--calib-windows", str(nwin), "--eval-windows", "4", "--out", out,
                        "--json"], capture_output=True, text=True, timeout=900)
    check(r.returncode == 0, f"{policy} job exits 0 {r.stderr[-400:]}")
    return out, json.loads(r.stdout) if r.returncode == 0 else {}


calib_ids = tokens_of(f"{data}/tinystories/calib.txt", os.path.join(work, "calib"))
calib = torch.tensor(calib_ids[: nwin * ctx].astype(np.int64).reshape(nwin, ctx))
dev_ids = tokens_of(f"{data}/tinystories/dev.txt", os.path.join(work, "dev"))

ref = torch_ref.RefModel(model_dir, dtype=torch.float64)
names = [f"model.layers.{l}.{p}" for l in range(ref.L) for p in torch_ref.ELIGIBLE]
orig = {n: ref.linears[n].detach().clone() for n in names}

# --- reference Wanda, sequential (the Wanda repo's way) -------------------------
wanda_masks = {}
with torch.no_grad():
    for b in range(ref.L):
        ref.hooks = {}
        ref.forward(calib)  # blocks < b already pruned: their outputs feed block b
        for p in torch_ref.ELIGIBLE:
            n = f"model.layers.{b}.{p}"
            W = orig[n].float()
            norm = ref.hooks[n].sqrt().float()  # ||X_j||, float32 like the repo's scaler_row
            metric = W.abs() * norm[None, :]
            k = int(W.shape[1] * 0.5)
            idx = torch.sort(metric, dim=-1, stable=True)[1][:, :k]
            mask = torch.zeros_like(W, dtype=torch.bool)
            mask.scatter_(1, idx, True)
            wanda_masks[n] = mask
            ref.linears[n].data = torch.where(mask, torch.zeros_like(orig[n]), orig[n])
    ref.hooks = None

# --- reference magnitude (locuslab/wanda prune_magnitude, unstructured) --------------
mag_masks = {}
for n in names:
    W = orig[n].float().abs().flatten()
    k = int(W.numel() * 0.5)
    idx = torch.sort(W, stable=True)[1][:k]
    m = torch.zeros(W.numel(), dtype=torch.bool)
    m[idx] = True
    mag_masks[n] = m.view(orig[n].shape)

for policy, refm in (("wanda", wanda_masks), ("magnitude", mag_masks)):
    out, summary = run_job(policy)
    if not summary:
        continue
    weights = torch_ref.read_model_weights(out)
    total = agree = 0
    worst = (1.0, "")
    for n in names:
        ours = torch.tensor(np.asarray(weights[n + ".weight"], dtype=np.float64)) == 0
        ours &= ~(orig[n] == 0)  # weights that were zero before pruning carry no decision
        theirs = refm[n] & ~(orig[n] == 0)
        same = int((ours == theirs).sum())
        total += ours.numel()
        agree += same
        frac = same / ours.numel()
        if frac < worst[0]:
            worst = (frac, n)
    rate = agree / total
    print(f"  {policy}: {agree}/{total} mask bits agree ({100 * rate:.4f}%), worst layer {worst[1]} {100 * worst[0]:.3f}%")
    check(rate >= 0.999, f"{policy}: at least 99.9% of mask bits agree with the reference")
    # The exported folder's ppl, recomputed by the reference over the eval windows the job reported on.
    pm = torch_ref.RefModel(out, dtype=torch.float32)
    ppl_ref, _ = torch_ref.perplexity(pm, dev_ids, ctx)
    ours_ppl = summary["ppl"]
    print(f"  {policy}: pruned ppl ours {ours_ppl:.5f} reference {ppl_ref:.5f}")
    check(abs(ours_ppl - ppl_ref) / ppl_ref < 0.005, f"{policy}: pruned ppl within 0.5% of the reference")
    doc = json.load(open(os.path.join(out, "agentprune.json")))
    check(all(abs(l["sparsity"] - 0.5) < 1e-9 for l in doc["layers"]), f"{policy}: every layer at 50%")

print(f"{passed} passed, {failed} failed")
sys.exit(1 if failed else 0)
