#!/usr/bin/env python3
"""The agent loop (policy rule) end to end with the real pruner-svc and
agent-svc: the job reaches its target; agentprune.json's trajectory follows
the loop's rules (aplib.check_trajectory); the exported zeros match it;
report.html exists; the agent session's history has one entry per iteration
with the same decisions and outcomes; WatchJob replays every event from seq 1
in order, with each iteration's events carrying that iteration, and ends at
the final event.
"""
import argparse
import os
import sys
import time

import numpy as np

import aplib
from aplib import check, info

TAU = 0.5


def main():
    ap = aplib.common_args(argparse.ArgumentParser())
    ap.add_argument("--model", default="stories260K-hf-derived")
    a = ap.parse_args()
    env = aplib.Env(a, "agentloop")
    try:
        return run(env, a)
    finally:
        env.close()


def run(env, a):
    pb = env.pb
    E = pb.pruner
    agent = env.agent()
    pruner = env.pruner(agent.addr)
    c = aplib.Client(env.pb, pruner.addr)
    ca = aplib.Client(env.pb, agent.addr)
    calib = env.text_slice("calib.txt", os.path.join(env.ts, "calib.txt"), 30000)
    ev = env.text_slice("eval.txt", os.path.join(env.ts, "dev.txt"), 6000)
    model = os.path.join(env.data, a.model)
    out = env.path("out-rule")
    code, job, details = c.submit(model_dir=model, calib_path=calib, eval_path=ev, out_dir=out, target_sparsity=0.5,
                                  policy="rule", ctx=128, calib_windows=8, eval_windows=6, grad_windows=2, tau=TAU,
                                  compare="wanda")
    check(code.name == "OK" and job.spec.agent_addr == agent.addr,
          "SubmitJob rule (%s %s), the job uses the pruner's agent %s" % (code.name, details,
                                                                          job.spec.agent_addr if job else ""))
    if code.name != "OK":
        return aplib.exit_status()
    evs = aplib.collect_events(c, job.id, timeout=600)
    code, fin, _ = c.get_job(job.id)
    check(fin.status == E.JOB_STATUS_SUCCEEDED, "the job succeeded (%s %s)" % (E.JobStatus.Name(fin.status),
                                                                             fin.error))
    info("stop %s after %d iterations, %d rollbacks: sparsity %.4f, eval ppl %.4f -> %.4f" %
         (fin.stop_reason, fin.state.iteration, fin.state.rollbacks, fin.state.global_sparsity, fin.dense_ppl,
          fin.ppl))
    check(fin.stop_reason == "target_reached" and abs(fin.state.global_sparsity - 0.5) <= 0.005,
          "the target 0.5 is reached within 0.5 points (%s, %.4f)" % (fin.stop_reason, fin.state.global_sparsity))
    check(fin.agent_session_id != "", "the job names its agent session (%s)" % fin.agent_session_id)

    doc = aplib.load_json(os.path.join(out, "agentprune.json"))
    check(os.path.getsize(os.path.join(out, "report.html")) > 1000 and
          b"<html" in open(os.path.join(out, "report.html"), "rb").read(4096).lower(),
          "report.html exists and is HTML")
    check(doc["job"]["policy"] == "rule" and doc["result"]["stop_reason"] == fin.stop_reason and
          doc["result"]["iterations"] == fin.state.iteration and doc["result"]["rollbacks"] == fin.state.rollbacks,
          "agentprune.json agrees with GetJob on policy, stop reason, iterations and rollbacks")
    aplib.check_trajectory(doc, "rule", TAU, aplib.layer_cols(model))
    check(all(t["policy"] == "rule" and not t["fallback"] for t in doc["trajectory"]),
          "every decision came from the agent's rule policy, none from a fallback")
    # Front to back: a probe iteration before each group of blocks ("b<first>+<count>/plan/bias"),
    # the groups in order and covering every block once, and the steps after
    # a probe grow only that group (or top up the last one).
    def group(t):
        first, count = t["probes"][0]["label"].split("/")[0][1:].split("+")
        return int(first), int(count)
    groups = [group(t) for t in doc["trajectory"] if t.get("probes")]
    nblocks = 1 + max(l["block"] for l in doc["layers"])
    covered = [b for f, c in groups for b in range(f, f + c)]
    check(covered == list(range(nblocks)), "probe iterations cover the blocks once, front to back (%s)" % groups)
    cur, stray = (-1, 0), []
    for t in doc["trajectory"]:
        if t.get("probes"):
            cur = group(t)
        for d in t["decision"]:
            if not cur[0] <= int(d["name"].split(".")[2]) < cur[0] + cur[1]:
                stray.append((t["iteration"], d["name"]))
    check(not stray, "between probes, only the probed group grows (%s)" % stray[:3])
    job_layers = {l.name: l.sparsity for l in fin.layers}
    check(all(abs(job_layers[l["name"]] - l["sparsity"]) < 1e-12 for l in doc["layers"]),
          "GetJob's per-layer sparsity equals agentprune.json's")
    # The export's zeros are the per-layer sparsity (the model has no exact zeros).
    orig = aplib.read_raw_tensors(os.path.join(model, "model.safetensors"))
    exp = aplib.read_raw_tensors(os.path.join(out, "model.safetensors"))
    bad = []
    for l in doc["layers"]:
        dt, shape, raw = exp[l["name"] + ".weight"]
        e = np.frombuffer(raw, dtype=np.uint32 if dt == "F32" else np.uint16)
        o = np.frombuffer(orig[l["name"] + ".weight"][2], dtype=e.dtype)
        if abs((e == 0).mean() - l["sparsity"]) > 1e-12 or not np.all((e == o) | (e == 0)):
            bad.append(l["name"])
    check(not bad, "the export's exact zeros give each layer's sparsity, the rest are original weights (%s)" % bad)

    # The agent's history of the session.
    # The pruner closes the session right after it records FINISHED.
    deadline = time.time() + 10
    while True:
        code, hist, details = ca.history(fin.agent_session_id)
        if code.name != "OK" or hist.session.closed or time.time() > deadline:
            break
        time.sleep(0.05)
    check(code.name == "OK", "GetHistory of the job's session (%s %s)" % (code.name, details))
    if code.name == "OK":
        traj = doc["trajectory"]
        check(len(hist.entries) == len(traj), "the history has one entry per iteration (%d vs %d)" %
              (len(hist.entries), len(traj)))
        check(hist.session.job_id == job.id and hist.session.closed, "the session belongs to the job and is closed")
        mism = []
        for h, t in zip(hist.entries, traj):
            if h.iteration != t["iteration"] or not h.HasField("outcome"):
                mism.append((h.iteration, "no outcome"))
                continue
            o = h.outcome
            if o.accepted != t["accepted"] or abs(o.ppl_after - t["ppl"]) > 1e-9 * t["ppl"] or \
                    abs(o.ppl_before - t["ppl_before"]) > 1e-9 * t["ppl_before"] or \
                    abs(o.global_sparsity - t["global_sparsity"]) > 1e-12:
                mism.append((h.iteration, "outcome"))
            # The pruner may clamp a decision; the agent's targets are the ones it asked for.
            asked = {x.name: x.target_sparsity for x in h.decision.layers}
            for d in t["decision"]:
                if d["name"] not in asked or d["target_sparsity"] > asked[d["name"]] + 1e-9:
                    mism.append((h.iteration, "decision " + d["name"]))
            if h.state.iteration != t["iteration"]:
                mism.append((h.iteration, "state iteration %d" % h.state.iteration))
        check(not mism, "each history entry has the iteration's decision and outcome (%s)" % mism[:3])

    # The comparison baseline: wanda at the sparsity the job reached, as a
    # one-shot job at that target gets it.
    base = doc.get("baselines") or []
    # (uniform per-row rounding: within half a weight per row of the narrowest, 64-wide layer)
    check(len(base) == 1 and base[0]["policy"] == "wanda" and abs(base[0]["sparsity"] - fin.state.global_sparsity)
          <= 1 / 128, "agentprune.json has the wanda baseline at the job's sparsity (%s)" % base)
    if base:
        code, wj, details = c.submit(model_dir=model, calib_path=calib, eval_path=ev, out_dir=env.path("out-wanda"),
                                     target_sparsity=fin.state.global_sparsity, policy="wanda", ctx=128,
                                     calib_windows=8, eval_windows=6, grad_windows=2)
        wfin = aplib.wait_job(c, wj.id, timeout=120) if wj else None
        check(wfin is not None and abs(wfin.ppl - base[0]["ppl"]) <= 1e-9 * wfin.ppl and
              abs(wfin.state.global_sparsity - base[0]["sparsity"]) < 1e-12,
              "the baseline's ppl %.6f equals a one-shot wanda job's at that target (%.6f); the agent's is %.6f" %
              (base[0]["ppl"], wfin.ppl if wfin else 0, fin.ppl))
        info("rule %.4f vs wanda %.4f at sparsity %.4f" % (fin.ppl, base[0]["ppl"], fin.state.global_sparsity))

    # Events.
    aplib.check_events(pb, evs, fin, "rule")
    names = [aplib.event_name(pb, e.type) for e in evs]
    check(names[:3] == ["JOB_EVENT_QUEUED", "JOB_EVENT_STARTED", "JOB_EVENT_BASELINE"] and
          names[-2:] == ["JOB_EVENT_EXPORTED", "JOB_EVENT_FINISHED"],
          "events start QUEUED, STARTED, BASELINE and end EXPORTED, FINISHED (%s ... %s)" % (names[:3], names[-2:]))
    per_iter = {}
    wrong_iter = []
    # The comparison baselines are measured after the loop and logged as
    # EVALUATED events too ("baseline wanda at ...").
    baseline_evs = [e for e in evs if e.type == E.JOB_EVENT_EVALUATED and e.message.startswith("baseline ")]
    check(len(baseline_evs) == 1 and abs(baseline_evs[0].ppl - base[0]["ppl"]) < 1e-9 * base[0]["ppl"],
          "one EVALUATED event reports the baseline")
    for e in evs[3:-2]:
        if e in baseline_evs:
            continue
        n = aplib.event_name(pb, e.type)
        if n == "JOB_EVENT_ITERATION_STARTED":
            cur = len(per_iter) + 1
            per_iter[cur] = []
        if not per_iter:
            wrong_iter.append(n)
            continue
        cur = max(per_iter)
        per_iter[cur].append(n.replace("JOB_EVENT_", ""))
        if e.iteration != cur:
            wrong_iter.append("%s of iteration %d carries iteration %d" % (n, cur, e.iteration))
    seq_ok = all(v[:2] == ["ITERATION_STARTED", "PROFILED"] and "DECISION" in v and "APPLIED" in v and
                 v[-2] == "EVALUATED" and v[-1] in ("ACCEPTED", "ROLLED_BACK") for v in per_iter.values())
    check(len(per_iter) == fin.state.iteration and seq_ok,
          "each iteration streams ITERATION_STARTED, PROFILED, DECISION, APPLIED, EVALUATED, ACCEPTED|ROLLED_BACK "
          "(%s)" % list(per_iter.items())[:1])
    check(not wrong_iter, "every event of an iteration carries that iteration number (%s)" % wrong_iter[:3])
    outcomes = [v[-1] == "ACCEPTED" for v in per_iter.values()]
    check(outcomes == [t["accepted"] for t in doc["trajectory"]], "the event outcomes match the trajectory")
    decisions = [e for e in evs if e.type == E.JOB_EVENT_DECISION]
    check(len(decisions) == len(doc["trajectory"]) and all(
        sorted((d.name, round(d.target_sparsity, 9)) for d in e.decision) ==
        sorted((d["name"], round(d["target_sparsity"], 9)) for d in t["decision"])
        for e, t in zip(decisions, doc["trajectory"])),
        "each DECISION event carries the applied per-layer targets")
    acc_events = [e for e in evs if e.type in (E.JOB_EVENT_ACCEPTED, E.JOB_EVENT_ROLLED_BACK)]
    check(all(abs(e.global_sparsity - t["global_sparsity"]) < 1e-12 and abs(e.accepted_ppl - t["accepted_ppl"]) <
              1e-9 * t["accepted_ppl"] for e, t in zip(acc_events, doc["trajectory"])),
          "ACCEPTED/ROLLED_BACK events carry the trajectory's sparsity and accepted ppl")
    # Replay from the middle.
    mid = len(evs) // 2
    tail = aplib.collect_events(c, job.id, from_seq=mid)
    check([e.seq for e in tail] == list(range(mid, len(evs) + 1)) and
          [e.SerializeToString() for e in tail] == [e.SerializeToString() for e in evs[mid - 1:]],
          "WatchJob from seq %d replays the same events" % mid)
    c.close()
    ca.close()
    check(pruner.stop() == 0, "pruner-svc exits 0 on SIGTERM")
    check(agent.stop() == 0, "agent-svc exits 0 on SIGTERM")
    return aplib.exit_status()


if __name__ == "__main__":
    sys.exit(main())
