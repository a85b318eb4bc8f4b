#!/usr/bin/env python3
"""Resume after SIGKILL (DESIGN.md section 4): a pruner-svc killed with
SIGKILL at any moment and restarted on the same data directory resumes every
unfinished job from its last accepted checkpoint, with the same agent
session, and the result equals that of an uninterrupted run.

One uninterrupted rule-policy job is the reference. The same job (same
settings, a fresh out_dir and store) is then killed at 11 points driven by
its WatchJob events (after STARTED, BASELINE, ITERATION_STARTED, PROFILED,
DECISION, APPLIED, EVALUATED, ROLLED_BACK, ACCEPTED, EXPORTED) and once
inside a checkpoint write transaction (pruner-svc's test hook
AP_PRUNER_TEST_CKPT_PAUSE_DIR), restarting pruner-svc on the same --data-dir
each time. The job resumes by itself and finishes; its exported
model.safetensors must be byte-identical to the reference's, and its
trajectory, session and history consistent.
"""
import argparse
import os
import sys
import time

import grpc

import aplib
from aplib import check, info

TAU = 0.5


def main():
    ap = aplib.common_args(argparse.ArgumentParser())
    ap.add_argument("--model", default="stories260K-hf-derived")
    a = ap.parse_args()
    env = aplib.Env(a, "resume")
    try:
        return run(env, a)
    finally:
        env.close()


def run(env, a):
    pb = env.pb
    E = pb.pruner
    agent = env.agent()
    ca = aplib.Client(pb, agent.addr)
    calib = env.text_slice("calib.txt", os.path.join(env.ts, "calib.txt"), 30000)
    ev = env.text_slice("eval.txt", os.path.join(env.ts, "dev.txt"), 6000)
    model = os.path.join(env.data, a.model)
    spec = dict(model_dir=model, calib_path=calib, eval_path=ev, target_sparsity=0.5, policy="rule", ctx=128,
                calib_windows=8, eval_windows=6, grad_windows=2, tau=TAU, seed=7)

    # ---- the reference: uninterrupted ----
    t0 = time.time()
    ref_p = env.pruner(agent.addr, data_dir=os.path.join(env.tmp, "ref-data"))
    c = aplib.Client(pb, ref_p.addr)
    code, job, details = c.submit(out_dir=env.path("out-ref"), **spec)
    check(code == grpc.StatusCode.OK, "SubmitJob of the reference (%s %s)" % (code.name, details))
    if code != grpc.StatusCode.OK:
        return aplib.exit_status()
    ref_events = aplib.collect_events(c, job.id, timeout=600)
    _, ref, _ = c.get_job(job.id)
    c.close()
    ref_p.stop()
    check(ref.status == E.JOB_STATUS_SUCCEEDED, "the reference job succeeded (%s)" % ref.error)
    ref_doc = aplib.load_json(os.path.join(ref.out_dir, "agentprune.json"))
    n_it = ref.state.iteration
    rolled = [t["iteration"] for t in ref_doc["trajectory"] if not t["accepted"]]
    info("reference: %d iterations, rolled back %s, sparsity %.4f, ppl %.4f (%.1f s)" %
         (n_it, rolled, ref.state.global_sparsity, ref.ppl, time.time() - t0))
    if n_it < 7:
        check(False, "the reference needs at least 7 iterations for the kill schedule (%d)" % n_it)
        return aplib.exit_status()

    # ---- the kill schedule: (label, event type or "CKPT", iteration or None) ----
    rb = next((r for r in rolled if r >= 5), None)
    schedule = [
        ("after STARTED", "STARTED", None),
        ("after BASELINE", "BASELINE", None),
        ("after ITERATION_STARTED of iteration 2", "ITERATION_STARTED", 2),
        ("after PROFILED of iteration 2", "PROFILED", 2),
        ("after DECISION of iteration 3", "DECISION", 3),
        ("after APPLIED of iteration 3", "APPLIED", 3),
        ("after EVALUATED of iteration 4", "EVALUATED", 4),
        ("inside the checkpoint transaction of the next iteration", "CKPT", None),
        ("after ROLLED_BACK of iteration %s" % rb, "ROLLED_BACK", rb) if rb else
        ("after ACCEPTED of iteration 5", "ACCEPTED", 5),
        ("after ACCEPTED of iteration %d" % (n_it - 1), "ACCEPTED", n_it - 1),
        ("as soon as the export's report.html exists", "EXPORTED", None),
    ]

    # ---- the interrupted run ----
    t1 = time.time()
    data_dir = os.path.join(env.tmp, "kill-data")
    pause_dir = os.path.join(env.tmp, "ckpt-markers")
    os.makedirs(pause_dir)
    p = env.pruner(agent.addr, data_dir=data_dir)
    c = aplib.Client(pb, p.addr)
    code, job, details = c.submit(out_dir=env.path("out-kill"), **spec)
    check(code == grpc.StatusCode.OK, "SubmitJob of the interrupted job (%s %s)" % (code.name, details))
    if code != grpc.StatusCode.OK:
        return aplib.exit_status()
    jid = job.id
    instances = 1
    sessions = set()
    kills = 0
    for i, (label, typ, it) in enumerate(schedule):
        killed_at = None
        if typ == "EXPORTED":
            # The export ends with report.html, then the EXPORTED and FINISHED
            # events follow within milliseconds: poll the file, not the stream.
            report = os.path.join(env.path("out-kill"), "report.html")
            deadline = time.time() + 120
            while time.time() < deadline and p.alive():
                if os.path.exists(report):
                    p.kill9()
                    killed_at = "report.html written"
                    break
                time.sleep(0.0005)
        elif typ == "CKPT":
            before = set(os.listdir(pause_dir))
            deadline = time.time() + 120
            while time.time() < deadline and p.alive():
                new = set(os.listdir(pause_dir)) - before
                if new:
                    p.kill9()
                    killed_at = sorted(new)[0]
                    break
                time.sleep(0.005)
        else:
            # Each pruner-svc instance opens its part of the log with one
            # STARTED or RESUMED: only the current instance's events count
            # (the dead ones may have logged more after the point they were
            # killed at).
            starts = 0
            try:
                for e in c.watch(jid, from_seq=1, timeout=180):
                    name = aplib.event_name(pb, e.type).replace("JOB_EVENT_", "")
                    if name in ("STARTED", "RESUMED"):
                        starts += 1
                    if starts == instances and name == typ and (it is None or e.iteration == it):
                        p.kill9()
                        killed_at = "seq %d %s it %d" % (e.seq, name, e.iteration)
                        break
                    if aplib.is_final(pb, e.status):
                        break
            except grpc.RpcError as err:
                info("watch: %s %s" % (err.code(), err.details()))
        ok = killed_at is not None and not p.alive()
        check(ok, "kill %d %s (%s)" % (i + 1, label, killed_at))
        if not ok:
            break
        kills += 1
        c.close()
        # Restart on the same store; the next one pauses inside checkpoints
        # when the next kill is meant to land there.
        nxt = schedule[i + 1][1] if i + 1 < len(schedule) else None
        penv = {"AP_PRUNER_TEST_CKPT_PAUSE_DIR": pause_dir, "AP_PRUNER_TEST_CKPT_PAUSE_MS": "1500"} \
            if nxt == "CKPT" else None
        p = env.pruner(agent.addr, data_dir=data_dir, env=penv)
        instances += 1
        c = aplib.Client(pb, p.addr)
        code, j, _ = c.get_job(jid)
        if code == grpc.StatusCode.OK and typ == "EXPORTED" and j.status == E.JOB_STATUS_SUCCEEDED:
            # FINISHED follows the export within milliseconds: the kill may
            # land after it (then the restart must leave the job alone), or the
            # restarted pruner may already have re-exported; the event log
            # below tells which.
            pass
        else:
            check(code == grpc.StatusCode.OK and j.status in (E.JOB_STATUS_RUNNING, E.JOB_STATUS_QUEUED),
                  "after restart %d GetJob works and the job is unfinished (%s)" %
                  (kills, E.JobStatus.Name(j.status) if j else code))
        if j and j.agent_session_id:
            sessions.add(j.agent_session_id)
    # Let it finish.
    aplib.collect_events(c, jid, timeout=600)
    code, fin, _ = c.get_job(jid)
    info("interrupted run: %d kills, %.1f s" % (kills, time.time() - t1))
    check(kills == len(schedule), "all %d kill points were reached" % len(schedule))
    check(fin.status == E.JOB_STATUS_SUCCEEDED, "the interrupted job finished by itself (%s %s)" %
          (E.JobStatus.Name(fin.status), fin.error))
    sessions.add(fin.agent_session_id)
    check(len(sessions) == 1, "the agent session is the same throughout (%s)" % sorted(sessions))

    # ---- results equal the reference ----
    ref_bytes = open(os.path.join(ref.out_dir, "model.safetensors"), "rb").read()
    got_bytes = open(os.path.join(fin.out_dir, "model.safetensors"), "rb").read()
    same = ref_bytes == got_bytes
    check(same, "the exported model.safetensors is byte-identical to the uninterrupted run's (%d bytes)" %
          len(got_bytes))
    doc = aplib.load_json(os.path.join(fin.out_dir, "agentprune.json"))
    if not same:
        # Explain: compare zero patterns (masks) layer by layer.
        r = aplib.read_raw_tensors(os.path.join(ref.out_dir, "model.safetensors"))
        g = aplib.read_raw_tensors(os.path.join(fin.out_dir, "model.safetensors"))
        diff = [n for n in r if r[n][2] != g[n][2]]
        info("tensors that differ: %s" % diff[:10])
    check(fin.state.iteration == ref.state.iteration and fin.state.rollbacks == ref.state.rollbacks and
          fin.stop_reason == ref.stop_reason, "same iterations (%d), rollbacks (%d) and stop reason (%s)" %
          (fin.state.iteration, fin.state.rollbacks, fin.stop_reason))
    check(fin.ppl == ref.ppl and fin.dense_ppl == ref.dense_ppl,
          "same final ppl %.10g (reference %.10g) and dense ppl" % (fin.ppl, ref.ppl))
    strip = lambda t: {k: v for k, v in t.items()}  # noqa: E731
    check([strip(t) for t in doc["trajectory"]] == [strip(t) for t in ref_doc["trajectory"]],
          "the trajectory equals the reference's entry for entry")
    check(doc["layers"] == ref_doc["layers"], "per-layer sparsity equals the reference's")
    aplib.check_trajectory(doc, "resumed", TAU, aplib.layer_cols(model))

    # ---- the event log and the agent's history ----
    all_evs = aplib.collect_events(c, jid, timeout=60)
    aplib.check_events(pb, all_evs, fin, "resumed")
    names = [aplib.event_name(pb, e.type).replace("JOB_EVENT_", "") for e in all_evs]
    resumed = [e for e in all_evs if e.type == E.JOB_EVENT_RESUMED]
    starts = [e for e in all_evs if e.type == E.JOB_EVENT_STARTED]
    # Kill 1 (after STARTED) precedes the first checkpoint: that restart starts over.
    last_ckpt = max(k for k, e in enumerate(all_evs) if e.type in (E.JOB_EVENT_ACCEPTED, E.JOB_EVENT_ROLLED_BACK))
    finished_before_kill = not any(e.type == E.JOB_EVENT_RESUMED for e in all_evs[last_ckpt:])
    if finished_before_kill:
        info("kill %d landed after FINISHED: the restart left the job alone" % kills)
        check(names.count("FINISHED") == 1 and names[-1] == "FINISHED", "the finished job was not resumed")
    want_resumed = kills - 1 - (1 if finished_before_kill else 0)
    check(len(starts) == 2 and len(resumed) == want_resumed,
          "%d restarts from a checkpoint and one start over (STARTED %d, RESUMED %d)" %
          (want_resumed, len(starts), len(resumed)))
    if not finished_before_kill:
        # The last instance resumed after the last checkpoint (the job had
        # written report.html when it was killed) and exported once more.
        last_res = max(k for k, e in enumerate(all_evs) if e.type == E.JOB_EVENT_RESUMED)
        tail_types = [e.type for e in all_evs[last_res + 1:]]
        check(last_res > last_ckpt and tail_types == [E.JOB_EVENT_EXPORTED, E.JOB_EVENT_FINISHED],
              "the job killed after writing its export resumed and exported again over its own output")
    # Each RESUMED names the last checkpoint before it: the last ACCEPTED/ROLLED_BACK/BASELINE event.
    bad = []
    last_ckpt_it = None
    for e in all_evs:
        n = aplib.event_name(pb, e.type).replace("JOB_EVENT_", "")
        if n in ("BASELINE",):
            last_ckpt_it = 0
        elif n in ("ACCEPTED", "ROLLED_BACK"):
            last_ckpt_it = e.iteration
        elif n == "RESUMED":
            if last_ckpt_it is None or e.iteration != last_ckpt_it or \
                    ("iteration %d " % last_ckpt_it) not in e.message:
                bad.append((e.seq, e.iteration, last_ckpt_it, e.message))
    check(not bad, "every RESUMED event resumes from the last committed checkpoint (%s)" % bad[:3])
    # The kill inside the checkpoint transaction left nothing: the iteration
    # evaluated before that kill has no ACCEPTED/ROLLED_BACK before the next RESUMED.
    idx = [k for k, n in enumerate(names) if n == "RESUMED"]
    ckpt_kill = [k for k, (_, t, _) in enumerate(schedule) if t == "CKPT"][0]
    # restart number ckpt_kill+1 is the (ckpt_kill)th RESUMED (kill 1 restarts with STARTED)
    r_idx = idx[ckpt_kill - 1] if len(idx) >= ckpt_kill else None
    if r_idx is not None:
        prev = all_evs[:r_idx]
        last_eval = [e for e in prev if e.type == E.JOB_EVENT_EVALUATED][-1]
        committed = [e for e in prev if e.type in (E.JOB_EVENT_ACCEPTED, E.JOB_EVENT_ROLLED_BACK) and
                     e.iteration == last_eval.iteration and e.seq > last_eval.seq]
        check(not committed and all_evs[r_idx].iteration == last_eval.iteration - 1,
              "the kill inside the checkpoint of iteration %d rolled the transaction back: resumed from %d" %
              (last_eval.iteration, all_evs[r_idx].iteration))
    code, hist, _ = ca.history(fin.agent_session_id)
    if hist:
        for h, t in zip(hist.entries, doc["trajectory"]):
            if not (h.HasField("outcome") and h.outcome.accepted == t["accepted"] and
                    h.outcome.ppl_after == t["ppl"]):
                info("history %d: %s / trajectory %s %s" % (h.iteration, h.outcome, t["accepted"], t["ppl"]))
    check(code == grpc.StatusCode.OK and len(hist.entries) == fin.state.iteration and
          [h.iteration for h in hist.entries] == list(range(1, fin.state.iteration + 1)) and
          all(h.HasField("outcome") and h.outcome.accepted == t["accepted"] and
              abs(h.outcome.ppl_after - t["ppl"]) <= 1e-14 * t["ppl"]  # agentprune.json prints 15 digits
              for h, t in zip(hist.entries, doc["trajectory"])),
          "the agent's history has each iteration once, with the trajectory's outcomes")
    rh = ca.history(ref.agent_session_id)[1]
    check(rh is not None and [[(x.name, x.target_sparsity) for x in h.decision.layers] for h in hist.entries] ==
          [[(x.name, x.target_sparsity) for x in h.decision.layers] for h in rh.entries],
          "the agent decided exactly what it decided for the reference, iteration by iteration")
    # ---- a one-shot baseline killed twice ----
    wspec = dict(spec, policy="wanda")
    code, wref, _ = c.submit(out_dir=env.path("out-wanda-ref"), **wspec)
    wref = aplib.wait_job(c, wref.id, timeout=120)
    code, wj, _ = c.submit(out_dir=env.path("out-wanda-kill"), **wspec)
    for label, typ in (("BASELINE", E.JOB_EVENT_BASELINE), ("APPLIED", E.JOB_EVENT_APPLIED)):
        hit = None
        starts = 0
        for e in c.watch(wj.id, timeout=120):
            if e.type in (E.JOB_EVENT_STARTED, E.JOB_EVENT_RESUMED):
                starts += 1
            if e.type == typ and starts == (1 if typ == E.JOB_EVENT_BASELINE else 2):
                p.kill9()
                hit = e
                break
        check(hit is not None, "wanda job killed after %s" % label)
        c.close()
        p = env.pruner(agent.addr, data_dir=data_dir)
        c = aplib.Client(pb, p.addr)
    wfin = aplib.wait_job(c, wj.id, timeout=120)
    same = wfin.status == E.JOB_STATUS_SUCCEEDED and \
        open(os.path.join(wfin.out_dir, "model.safetensors"), "rb").read() == \
        open(os.path.join(wref.out_dir, "model.safetensors"), "rb").read()
    check(same and wfin.ppl == wref.ppl, "the wanda job killed twice exports the same bytes and ppl %.6f as an "
                                         "uninterrupted one (%s)" % (wfin.ppl, E.JobStatus.Name(wfin.status)))

    # A resumed job re-sends the Reflect it checkpointed; the agent must find
    # it identical to what it stored (the state blob keeps doubles exactly).
    kept = sum(open(s.log_path, errors="replace").read().count("agent kept its earlier outcome")
               for s in env.services if "pruner" in s.log_path)
    check(kept == 0, "no re-sent Reflect differed from the agent's record (%d did)" % kept)
    c.close()
    ca.close()
    check(p.stop() == 0, "pruner-svc exits 0 on SIGTERM")
    return aplib.exit_status()


if __name__ == "__main__":
    sys.exit(main())
