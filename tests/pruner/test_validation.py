#!/usr/bin/env python3
"""Request validation of the real pruner-svc over gRPC (Python grpcio):
every SubmitJob field error is INVALID_ARGUMENT with a message naming the
problem, and nothing is stored (no job, no output folder); unknown and
malformed job ids; a hostile model folder for Evaluate; the Profile table's
invariants; idempotent SubmitJob by client_request_id.
"""
import argparse
import math
import os
import shutil
import statistics
import sys
import time

import grpc

import aplib
from aplib import check, info

OK, INVALID, NOT_FOUND, PRECOND = (grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND,
                                   grpc.StatusCode.FAILED_PRECONDITION)


def main():
    a = aplib.common_args(argparse.ArgumentParser()).parse_args()
    env = aplib.Env(a, "validation")
    try:
        return run(env)
    finally:
        env.close()


def run(env):
    agent = env.agent()
    pruner = env.pruner(agent.addr)
    c = aplib.Client(env.pb, pruner.addr)
    calib = env.text_slice("calib.txt", os.path.join(env.ts, "calib.txt"), 12000)
    ev = env.text_slice("eval.txt", os.path.join(env.ts, "dev.txt"), 6000)
    good = dict(model_dir=env.s260, calib_path=calib, eval_path=ev, target_sparsity=0.5, policy="wanda", ctx=64,
                calib_windows=4, eval_windows=4, grad_windows=2)
    code, lst, _ = c.list_jobs()
    check(code == OK and len(lst.jobs) == 0, "ListJobs on a fresh store is empty (%s)" % code)

    # A folder outside the roots, a symlink that leaves them, a regular file as model.
    os.symlink("/etc", env.path("escape"))
    nonempty = env.path("nonempty")
    os.makedirs(nonempty)
    open(os.path.join(nonempty, "x"), "w").close()
    no_config = env.path("no-config")
    os.makedirs(no_config)

    n_out = [0]

    def out():
        n_out[0] += 1
        return env.path("out-%d" % n_out[0])

    # (what, spec overrides, expected code, words the message must contain)
    cases = [
        ("model_dir missing", dict(model_dir=""), INVALID, ["model_dir"]),
        ("model_dir outside the data roots", dict(model_dir="/usr/share"), INVALID, ["model_dir"]),
        ("model_dir with '..'", dict(model_dir=env.s260 + "/../stories260K-hf-derived"), INVALID, ["model_dir"]),
        ("model_dir symlink leaving the roots", dict(model_dir=env.path("escape")), INVALID, ["model_dir"]),
        ("model_dir does not exist", dict(model_dir=env.path("no-such-model")), INVALID, ["model_dir"]),
        ("model_dir is a file", dict(model_dir=os.path.join(env.s260, "config.json")), INVALID, ["model_dir"]),
        ("model_dir without config.json", dict(model_dir=no_config), INVALID, ["config.json"]),
        ("calib_path outside the roots", dict(calib_path="/etc/hostname"), INVALID, ["calib_path"]),
        ("calib_path missing", dict(calib_path=env.path("nope.txt")), INVALID, ["calib_path"]),
        ("eval_path is a folder", dict(eval_path=env.ts), INVALID, ["eval_path"]),
        ("test_path missing", dict(test_path=env.path("nope.txt")), INVALID, ["test_path"]),
        ("out_dir outside the roots", dict(out_dir="/tmp/ap-e2e-outside"), INVALID, ["out_dir"]),
        ("out_dir with '..'", dict(out_dir=env.root + "/../x"), INVALID, ["out_dir"]),
        ("out_dir not empty", dict(out_dir=nonempty), INVALID, ["out_dir", "not empty"]),
        ("out_dir inside a missing parent", dict(out_dir=env.path("a", "b", "c")), INVALID, ["out_dir"]),
        ("sparsity 0", dict(target_sparsity=0.0), INVALID, ["target_sparsity"]),
        ("sparsity 1", dict(target_sparsity=1.0), INVALID, ["target_sparsity"]),
        ("sparsity NaN", dict(target_sparsity=float("nan")), INVALID, ["target_sparsity"]),
        ("sparsity -0.5", dict(target_sparsity=-0.5), INVALID, ["target_sparsity"]),
        ("sparsity inf", dict(target_sparsity=float("inf")), INVALID, ["target_sparsity"]),
        ("unknown policy", dict(policy="sparsegpt"), INVALID, ["policy", "sparsegpt"]),
        ("structure 4:2", dict(structure="4:2"), INVALID, ["structure"]),
        ("structure 0:4", dict(structure="0:4"), INVALID, ["structure"]),
        ("structure 2:4x", dict(structure="2:4x"), INVALID, ["structure"]),
        ("structure blocky", dict(structure="blocky"), INVALID, ["structure"]),
        ("2:4 with a target other than 0.5", dict(structure="2:4", target_sparsity=0.6), INVALID, ["2:4"]),
        ("bad include regex", dict(include_pattern="mlp.(up"), INVALID, ["include_pattern"]),
        ("bad exclude regex", dict(exclude_pattern="[q-"), INVALID, ["exclude_pattern"]),
        ("tau NaN", dict(tau=float("nan")), INVALID, ["tau"]),
        ("tau negative", dict(tau=-1.0), INVALID, ["tau"]),
        ("step_cap 2", dict(step_cap=2.0), INVALID, ["step_cap"]),
        ("ceiling below target", dict(ceiling=0.3), INVALID, ["ceiling"]),
        ("ctx 1", dict(ctx=1), INVALID, ["ctx"]),
        ("device tpu", dict(device="tpu"), INVALID, ["device"]),
        ("sample sometimes", dict(sample="sometimes"), INVALID, ["sample"]),
        ("agent_fallback llm", dict(agent_fallback="llm"), INVALID, ["agent_fallback"]),
        ("compare sparsegpt", dict(compare="wanda,sparsegpt"), INVALID, ["compare"]),
        ("client_request_id too long", dict(client_request_id="r" * 300), INVALID, ["client_request_id"]),
        ("rule policy with an unreachable agent", dict(policy="rule", agent_addr="127.0.0.1:1"), PRECOND,
         ["agent", "agent_fallback"]),
    ]
    for what, over, want, words in cases:
        spec = dict(good, out_dir=out())
        spec.update(over)
        t0 = time.time()
        code, _, details = c.submit(**spec)
        ok = code == want and all(w.lower() in details.lower() for w in words)
        check(ok, "SubmitJob %s -> %s with a message naming %s (%s: %r)" % (what, want.name, words, code.name,
                                                                            details))
        if time.time() - t0 > 10:
            check(False, "SubmitJob %s answered within 10 s (%.1f s)" % (what, time.time() - t0))
    code, lst, _ = c.list_jobs()
    check(code == OK and len(lst.jobs) == 0, "no refused SubmitJob stored a job (%d jobs)" % len(lst.jobs))
    made = [d for d in os.listdir(env.root) if d.startswith("out-")]
    check(not made, "no refused SubmitJob created its out_dir (%s)" % made)
    check(os.listdir(nonempty) == ["x"], "the non-empty out_dir was left alone")

    # Unknown and malformed job ids.
    for rpc in ("GetJob", "CancelJob", "WatchJob"):
        for jid, want in (("job-0-000000000000", NOT_FOUND), ("a/b", INVALID), ("x y", INVALID),
                          ("../etc", INVALID), ("", INVALID), ("j" * 200, INVALID)):
            if rpc == "GetJob":
                code, _, details = c.get_job(jid)
            elif rpc == "CancelJob":
                code, _, details = c.cancel(jid)
            else:
                code, details = c.watch_code(jid)
            check(code == want, "%s(%r) -> %s (%s: %r)" % (rpc, jid[:20], want.name, code.name, details))

    # Hostile model folders for Evaluate: the server refuses them and keeps serving.
    def hostile(name, mutate):
        d = env.path(name)
        os.makedirs(d)
        for f in ("config.json", "tokenizer.json", "tokenizer_config.json"):
            shutil.copy(os.path.join(env.s260, f), d)
        with open(os.path.join(env.s260, "model.safetensors"), "rb") as f:
            data = f.read()
        with open(os.path.join(d, "model.safetensors"), "wb") as f:
            f.write(mutate(data))
        return d

    import struct
    hdr_len = struct.unpack("<Q", (open(os.path.join(env.s260, "model.safetensors"), "rb").read(8)))[0]
    hostiles = [
        ("truncated in the data", lambda b: b[:len(b) // 2]),
        ("truncated in the header", lambda b: b[:100]),
        ("empty file", lambda b: b""),
        ("header length past the end", lambda b: struct.pack("<Q", 1 << 40) + b[8:]),
        ("header not JSON", lambda b: b[:8] + b"\xff" * hdr_len + b[8 + hdr_len:]),
        ("offsets past the data", lambda b: b[:8] + b[8:8 + hdr_len].replace(b'"data_offsets":[0,', b'"data_offsets":[9,')
         + b[8 + hdr_len:]),
    ]
    for i, (what, mutate) in enumerate(hostiles):
        d = hostile("hostile-%d" % i, mutate)
        code, _, details = c.evaluate(model_dir=d, text_path=ev, ctx=64, windows=2)
        check(code == INVALID, "Evaluate of a model with its safetensors %s -> INVALID_ARGUMENT (%s: %r)" %
              (what, code.name, details[:160]))
    bad_cfg = env.path("bad-config")
    os.makedirs(bad_cfg)
    for f in ("tokenizer.json", "model.safetensors"):
        shutil.copy(os.path.join(env.s260, f), bad_cfg)
    with open(os.path.join(bad_cfg, "config.json"), "w") as f:
        f.write('{"architectures": ["LlamaForCausalLM"], "hidden_size": -4')
    code, _, details = c.evaluate(model_dir=bad_cfg, text_path=ev, ctx=64, windows=2)
    check(code == INVALID, "Evaluate of a model with a broken config.json -> INVALID_ARGUMENT (%s: %r)" %
          (code.name, details[:160]))
    code, _, details = c.evaluate(model_dir=env.s260, text_path=env.path("nope.txt"))
    check(code == INVALID and "text_path" in details, "Evaluate of a missing text -> INVALID_ARGUMENT (%r)" % details)
    tiny = env.path("tiny.txt")
    with open(tiny, "w") as f:
        f.write("Once upon a time")
    code, _, details = c.evaluate(model_dir=env.s260, text_path=tiny, ctx=64)
    check(code == INVALID and "window" in details, "Evaluate of a text shorter than a window -> INVALID_ARGUMENT (%r)"
          % details)
    check(pruner.alive(), "pruner-svc survived the hostile inputs")
    code, h, _ = c.health()
    check(code == OK and h.status == env.pb.health.HealthCheckResponse.SERVING, "health is SERVING afterwards")
    code, res, details = c.evaluate(model_dir=env.s260, text_path=ev, ctx=64, windows=4)
    check(code == OK and res.windows == 4 and res.ctx == 64 and res.tokens == 4 * 63 and math.isfinite(res.ppl)
          and 1 < res.ppl < 100, "a valid Evaluate still works: ppl %.4f over %d windows, %d tokens (%s %s)" %
          (res.ppl if res else 0, res.windows if res else 0, res.tokens if res else 0, code.name, details))

    # Profile: one row per eligible layer, z-scores standardised, dense rho 0.
    tensors = aplib.read_st_header(os.path.join(env.s260, "model.safetensors"))[0]
    code, prof, details = c.profile(model_dir=env.s260, calib_path=calib, calib_windows=4, grad_windows=2, ctx=64)
    check(code == OK, "Profile is OK (%s %s)" % (code.name, details))
    if code == OK:
        rows = prof.table.layers
        kinds = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
        want_names = ["model.layers.%d.%s.%s" % (b, "self_attn" if k[0] in "qkvo" else "mlp", k)
                      for b in range(5) for k in kinds]
        check(sorted(r.name for r in rows) == sorted(want_names),
              "Profile has one row per eligible layer (%d rows, 35 expected)" % len(rows))
        for key in ("s", "g"):
            x = [getattr(r, key) for r in rows]
            z = [getattr(r, "z_" + key) for r in rows]
            m, sd = statistics.fmean(z), statistics.pstdev(z)
            # DESIGN.md: z = (x - mean) / (population std + 1e-8); the epsilon
            # shows in the 6th digit for g, whose std is about 0.005.
            xm, xsd = statistics.fmean(x), statistics.pstdev(x)
            want = [(v - xm) / (xsd + 1e-8) for v in x]
            worst = max(abs(u - v) for u, v in zip(z, want))
            check(abs(m) < 1e-9 and abs(sd - 1) < 1e-8 / xsd + 1e-9 and worst < 1e-9,
                  "z_%s has mean %.2e, population std %.8f, and equals (x-mean)/(std+1e-8) to %.1e" %
                  (key, m, sd, worst))
        check(all(r.rho == 0 for r in rows), "dense rho is 0 for every layer")
        bad = [r.name for r in rows
               if r.params != tensors[r.name + ".weight"]["shape"][0] * tensors[r.name + ".weight"]["shape"][1]]
        check(not bad, "params = rows*cols from the safetensors shapes (mismatches: %s)" % bad)
        check(all(r.s > 0 and r.g > 0 and math.isfinite(r.s) and math.isfinite(r.g) for r in rows),
              "s and g are positive and finite")
        check(all(r.kind == 1 + kinds.index(r.name.rsplit(".", 1)[1]) and r.block == int(r.name.split(".")[2])
                  for r in rows), "kind and block match the names")
        # z_s is the standardised s: the order of s and z_s agree.
        check(sorted(rows, key=lambda r: r.s) == sorted(rows, key=lambda r: r.z_s), "z_s orders layers like s")
    code, prof, _ = c.profile(model_dir=env.s260, calib_path=calib, calib_windows=4, grad_windows=2, ctx=64,
                              include_pattern=r"mlp\.(up|down)_proj", exclude_pattern=r"layers\.0\.")
    check(code == OK and len(prof.table.layers) == 8 and
          all("layers.0." not in r.name and ("up_proj" in r.name or "down_proj" in r.name) for r in prof.table.layers),
          "Profile with include/exclude keeps only the matching 8 layers")
    code, _, details = c.profile(model_dir=env.s260, calib_path=calib, ctx=64, include_pattern="^nothing$")
    check(code == INVALID, "Profile with a pattern that matches no layer -> INVALID_ARGUMENT (%r)" % details)

    # An already sparse folder (half of every layer's weights zeroed here):
    # its zeros are pruned weights, so rho is their share and s is taken over
    # the surviving non-zero weights; a job on it starts from that sparsity.
    import numpy as np
    sparse = env.path("sparse-input")
    os.makedirs(sparse)
    for f in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        shutil.copy(os.path.join(env.s260, f), sparse)
    raw = open(os.path.join(env.s260, "model.safetensors"), "rb").read()
    hdr, base = aplib.read_st_header(os.path.join(env.s260, "model.safetensors"))
    buf = bytearray(raw)
    zero_share = {}
    for name, t in hdr.items():
        if name == "__metadata__" or not name.endswith("_proj.weight"):
            continue
        b, e = t["data_offsets"]
        wv = np.frombuffer(raw, dtype=np.float32, count=(e - b) // 4, offset=base + b).copy()
        rows, cols = t["shape"]
        wv = wv.reshape(rows, cols)
        wv[:, ::2] = 0  # every other input: exactly half of each row
        buf[base + b:base + e] = wv.tobytes()
        zero_share[name[:-len(".weight")]] = 0.5
    open(os.path.join(sparse, "model.safetensors"), "wb").write(bytes(buf))
    code, prof, details = c.profile(model_dir=sparse, calib_path=calib, calib_windows=4, grad_windows=2, ctx=64)
    check(code == OK and all(r.rho == zero_share[r.name] and r.s > 0 for r in prof.table.layers),
          "Profile of a 50%%-zero folder: rho 0.5 and s > 0 (over the non-zero weights) on every layer (%s)" %
          ([(r.name, r.rho, r.s) for r in prof.table.layers[:2]] if prof else details))
    code, js, details = c.submit(**dict(good, model_dir=sparse, out_dir=env.path("sparse-out"), policy="magnitude",
                                        target_sparsity=0.6))
    fs = aplib.wait_job(c, js.id, timeout=120) if js else None
    bl = [e for e in aplib.collect_events(c, js.id, timeout=30) if e.type == env.pb.pruner.JOB_EVENT_BASELINE] \
        if js else []
    check(fs is not None and fs.status == env.pb.pruner.JOB_STATUS_SUCCEEDED and bl and
          abs(bl[0].global_sparsity - 0.5) < 1e-12 and abs(fs.state.global_sparsity - 0.6) < 1e-3,
          "a job on that folder starts at sparsity %s and ends at %s" %
          (bl[0].global_sparsity if bl else None, fs.state.global_sparsity if fs else None))

    # Idempotent submit: a retry with the same client_request_id, even after
    # the job has finished and written its folder, returns the same job.
    spec = dict(good, out_dir=env.path("idem"), client_request_id="req-e2e-1")
    code, j1, d1 = c.submit(**spec)
    code2, j2, d2 = c.submit(**spec)
    check(code == OK and code2 == OK and j1.id == j2.id, "a retried SubmitJob returns the same job (%s %s, %s %s)" %
          (code.name, d1, code2.name, d2))
    fin = aplib.wait_job(c, j1.id, timeout=120) if j1 else None
    check(fin is not None and fin.status == env.pb.pruner.JOB_STATUS_SUCCEEDED, "the job succeeded")
    code3, j3, d3 = c.submit(**spec)
    check(code3 == OK and j3.id == j1.id and j3.status == env.pb.pruner.JOB_STATUS_SUCCEEDED,
          "a retry after the job finished returns the same, finished job (%s %r)" % (code3.name, d3))
    code, lst, _ = c.list_jobs()
    check(code == OK and len(lst.jobs) == 2, "exactly one job stored for the request (%d with the sparse one)" %
          len(lst.jobs))
    spec4 = dict(good, out_dir=env.path("idem2"), client_request_id="req-e2e-2")
    code4, j4, _ = c.submit(**spec4)
    check(code4 == OK and j4.id != j1.id, "another client_request_id makes another job")
    if code4 == OK:
        aplib.wait_job(c, j4.id, timeout=120)

    # Two unfinished jobs may not share an out_dir (the first has not written it yet).
    code5, j5, d5 = c.submit(**dict(good, out_dir=env.path("shared-out")))
    code6, _, d6 = c.submit(**dict(good, out_dir=env.path("shared-out"), policy="magnitude"))
    check(code5 == OK and code6 == INVALID and j5.id in d6,
          "a second job with the out_dir of an unfinished job -> INVALID_ARGUMENT naming it (%s %r)" %
          (code6.name, d6))
    if code5 == OK:
        aplib.wait_job(c, j5.id, timeout=120)

    # The agent policy with the agent down but agent_fallback=rule is accepted.
    code, jf, details = c.submit(**dict(good, out_dir=env.path("fallback"), policy="rule",
                                        agent_addr="127.0.0.1:1", agent_fallback="rule"))
    check(code == OK, "rule policy with an unreachable agent and agent_fallback=rule is accepted (%s %s)" %
          (code.name, details))
    if code == OK:
        c.cancel(jf.id)
        fin = aplib.wait_job(c, jf.id, timeout=60)
        check(fin is not None and aplib.is_final(env.pb, fin.status), "and it stops when cancelled")
    c.close()
    st = pruner.stop()
    check(st == 0, "pruner-svc exits 0 on SIGTERM (%s)" % st)
    agent.stop()
    return aplib.exit_status()


if __name__ == "__main__":
    sys.exit(main())
