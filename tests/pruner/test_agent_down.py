#!/usr/bin/env python3
"""The agent unavailable mid-job, with the real services:

  A. no fallback: agent-svc is SIGKILLed after iteration 2; the job reports
     AGENT_WAIT events and carries on when agent-svc is restarted on the same
     port and data directory, with the same session, and finishes with every
     decision made by the agent;
  B. agent_fallback=rule: agent-svc is SIGKILLed after iteration 2 and stays
     down; the job finishes, and agentprune.json's trajectory marks the local
     decisions (policy "rule-local-fallback", fallback true);
  C. agent_fallback=rule with no agent at all from the start: every decision
     is local and the job has no session.
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
    env = aplib.Env(a, "agentdown")
    try:
        return run(env, a)
    finally:
        env.close()


def wait_event(c, pb, jid, typ, iteration, timeout=120):
    """Blocks until the job logs event `typ` of `iteration`; returns it or None."""
    try:
        for e in c.watch(jid, timeout=timeout):
            if e.type == typ and e.iteration == iteration:
                return e
            if aplib.is_final(pb, e.status):
                return None
    except grpc.RpcError as err:
        info("watch: %s" % err.details())
    return None


def run(env, a):
    pb = env.pb
    E = pb.pruner
    model = os.path.join(env.data, a.model)
    cols = aplib.layer_cols(model)
    calib = env.text_slice("calib.txt", os.path.join(env.ts, "calib.txt"), 30000)
    ev = env.text_slice("eval.txt", os.path.join(env.ts, "dev.txt"), 6000)
    spec = dict(model_dir=model, calib_path=calib, eval_path=ev, target_sparsity=0.5, policy="rule", ctx=128,
                calib_windows=8, eval_windows=6, grad_windows=2, tau=TAU)
    agent_data = os.path.join(env.tmp, "agent-data")
    agent = env.agent(data_dir=agent_data)
    port = agent.port
    pruner = env.pruner(agent.addr)
    c = aplib.Client(pb, pruner.addr)

    # ---- A: wait for the agent ----
    code, job, details = c.submit(out_dir=env.path("out-wait"), **spec)
    check(code == grpc.StatusCode.OK, "A: SubmitJob (%s %s)" % (code.name, details))
    e = wait_event(c, pb, job.id, E.JOB_EVENT_ACCEPTED, 2)
    check(e is not None, "A: iteration 2 accepted")
    agent.kill9()
    _, j, _ = c.get_job(job.id)
    session = j.agent_session_id
    # Let the job hit the dead agent a few times.
    waits = []
    deadline = time.time() + 60
    for e in c.watch(job.id, from_seq=j.last_event_seq + 1, timeout=60):
        if e.type == E.JOB_EVENT_AGENT_WAIT:
            waits.append(e)
            if len(waits) >= 3:
                break
        if aplib.is_final(pb, e.status) or time.time() > deadline:
            break
    check(len(waits) >= 3 and all("unreachable" in w.message for w in waits),
          "A: the job reports AGENT_WAIT while the agent is down (%d events, e.g. %r)" %
          (len(waits), waits[0].message if waits else ""))
    _, j, _ = c.get_job(job.id)
    check(j.status == E.JOB_STATUS_RUNNING, "A: the job keeps RUNNING while it waits")
    # Same port, same data directory.
    restarted_at = time.time()
    agent2 = env.agent(data_dir=agent_data, listen="127.0.0.1:%d" % port)
    check(agent2.port == port, "A: agent-svc restarted on port %d" % port)
    last_wait = waits[-1].seq
    resumed_after = None
    for e in c.watch(job.id, from_seq=last_wait + 1, timeout=120):
        if e.type != E.JOB_EVENT_AGENT_WAIT and resumed_after is None:
            resumed_after = time.time() - restarted_at
        if aplib.is_final(pb, e.status):
            break
    info("A: the job went on %.1f s after agent-svc came back" % (resumed_after or -1))
    _, fin, _ = c.get_job(job.id)
    check(fin.status == E.JOB_STATUS_SUCCEEDED and fin.stop_reason == "target_reached",
          "A: the job finished after the agent came back (%s, %s %s)" % (E.JobStatus.Name(fin.status),
                                                                        fin.stop_reason, fin.error))
    check(fin.agent_session_id == session, "A: with the same agent session (%s)" % session)
    doc = aplib.load_json(os.path.join(fin.out_dir, "agentprune.json"))
    aplib.check_trajectory(doc, "A", TAU, cols)
    check(all(t["policy"] == "rule" and not t["fallback"] for t in doc["trajectory"]),
          "A: every decision came from the agent")
    ca = aplib.Client(pb, agent2.addr)
    code, hist, _ = ca.history(session)
    check(code == grpc.StatusCode.OK and [h.iteration for h in hist.entries] ==
          list(range(1, fin.state.iteration + 1)) and all(h.HasField("outcome") for h in hist.entries),
          "A: the agent's history has every iteration once, each with its outcome")

    # ---- B: fall back to local decisions ----
    code, job, details = c.submit(out_dir=env.path("out-fallback"), agent_fallback="rule", **spec)
    check(code == grpc.StatusCode.OK, "B: SubmitJob with agent_fallback=rule (%s %s)" % (code.name, details))
    e = wait_event(c, pb, job.id, E.JOB_EVENT_ACCEPTED, 2)
    check(e is not None, "B: iteration 2 accepted")
    agent2.kill9()
    evs = aplib.collect_events(c, job.id, timeout=300)
    _, fin, _ = c.get_job(job.id)
    check(fin.status == E.JOB_STATUS_SUCCEEDED and fin.stop_reason == "target_reached",
          "B: the job finished without the agent (%s, %s %s)" % (E.JobStatus.Name(fin.status), fin.stop_reason,
                                                                fin.error))
    check(any(x.type == E.JOB_EVENT_AGENT_WAIT and "locally" in x.message for x in evs),
          "B: an AGENT_WAIT event says it decides locally")
    doc = aplib.load_json(os.path.join(fin.out_dir, "agentprune.json"))
    aplib.check_trajectory(doc, "B", TAU, cols)
    pol = [t["policy"] for t in doc["trajectory"]]
    n_remote = pol.count("rule")
    check(n_remote >= 2 and pol == ["rule"] * n_remote + ["rule-local-fallback"] * (len(pol) - n_remote) and
          len(pol) > n_remote, "B: the trajectory marks the local decisions after the agent died (%s)" % pol)
    check(all(t["fallback"] == (t["policy"] == "rule-local-fallback") for t in doc["trajectory"]),
          "B: local decisions are marked fallback, the agent's are not")

    # ---- C: no agent from the start ----
    code, job, details = c.submit(out_dir=env.path("out-noagent"), agent_fallback="rule",
                                  agent_addr="127.0.0.1:1", **spec)
    check(code == grpc.StatusCode.OK, "C: SubmitJob with a dead agent and agent_fallback=rule (%s %s)" %
          (code.name, details))
    fin = aplib.wait_job(c, job.id, timeout=300)
    check(fin.status == E.JOB_STATUS_SUCCEEDED and fin.stop_reason == "target_reached" and
          fin.agent_session_id == "", "C: the job finished with no agent session (%s, %s, session %r)" %
          (E.JobStatus.Name(fin.status), fin.stop_reason, fin.agent_session_id))
    doc = aplib.load_json(os.path.join(fin.out_dir, "agentprune.json"))
    aplib.check_trajectory(doc, "C", TAU, cols)
    check(doc["trajectory"] and all(t["policy"] == "rule-local-fallback" and t["fallback"]
                                    for t in doc["trajectory"]), "C: every decision is local")
    c.close()
    ca.close()
    check(pruner.stop() == 0, "pruner-svc exits 0 on SIGTERM")
    return aplib.exit_status()


if __name__ == "__main__":
    sys.exit(main())
