#!/usr/bin/env python3
"""CancelJob with the real services: a job cancelled mid-loop ends
CANCELLED with stop_reason "cancelled", keeps its last accepted state (GetJob
still works, and reports the checkpointed iteration and masks), is not
exported, and is not resumed by a restarted pruner-svc; a second cancel is
FAILED_PRECONDITION; a job cancelled while queued behind another never starts.
A SIGTERM is not a cancel: the job resumes when pruner-svc starts again.
"""
import argparse
import os
import sys
import time

import grpc

import aplib
from aplib import check, info


def main():
    ap = aplib.common_args(argparse.ArgumentParser())
    ap.add_argument("--model", default="stories260K-hf-derived")
    a = ap.parse_args()
    env = aplib.Env(a, "cancel")
    try:
        return run(env, a)
    finally:
        env.close()


def run(env, a):
    pb = env.pb
    E = pb.pruner
    model = os.path.join(env.data, a.model)
    calib = env.text_slice("calib.txt", os.path.join(env.ts, "calib.txt"), 30000)
    ev = env.text_slice("eval.txt", os.path.join(env.ts, "dev.txt"), 6000)
    spec = dict(model_dir=model, calib_path=calib, eval_path=ev, target_sparsity=0.5, policy="rule", ctx=128,
                calib_windows=8, eval_windows=6, grad_windows=2, tau=0.5)
    agent = env.agent()
    data_dir = os.path.join(env.tmp, "pruner-data")
    pruner = env.pruner(agent.addr, data_dir=data_dir)
    c = aplib.Client(pb, pruner.addr)

    out = env.path("out-cancel")
    code, job, details = c.submit(out_dir=out, **spec)
    check(code == grpc.StatusCode.OK, "SubmitJob (%s %s)" % (code.name, details))
    # A second job queues behind the first (one job runs at a time).
    code, queued, details = c.submit(out_dir=env.path("out-queued"), **spec)
    check(code == grpc.StatusCode.OK and queued.status == E.JOB_STATUS_QUEUED, "a second job is QUEUED (%s)" %
          (E.JobStatus.Name(queued.status) if queued else details))
    code, qj, details = c.cancel(queued.id)
    check(code == grpc.StatusCode.OK, "CancelJob of the queued job (%s %s)" % (code.name, details))
    acc = None
    for e in c.watch(job.id, timeout=120):
        if e.type == E.JOB_EVENT_ACCEPTED and e.iteration == 2:
            acc = e
            break
    check(acc is not None, "iteration 2 accepted")
    code, cj, details = c.cancel(job.id)
    check(code == grpc.StatusCode.OK, "CancelJob mid-loop (%s %s)" % (code.name, details))
    evs = aplib.collect_events(c, job.id, timeout=120)
    _, fin, _ = c.get_job(job.id)
    check(fin.status == E.JOB_STATUS_CANCELLED and fin.stop_reason == "cancelled",
          "the job is CANCELLED with stop_reason cancelled (%s, %r)" % (E.JobStatus.Name(fin.status),
                                                                       fin.stop_reason))
    aplib.check_events(pb, evs, fin, "cancelled")
    check(evs and evs[-1].type == E.JOB_EVENT_CANCELLED, "the stream ends with the CANCELLED event")
    # The last accepted state survives: the checkpointed iteration and its sparsity.
    ckpt = [e for e in evs if e.type in (E.JOB_EVENT_ACCEPTED, E.JOB_EVENT_ROLLED_BACK)][-1]
    check(fin.state.iteration == ckpt.iteration and abs(fin.state.global_sparsity - ckpt.global_sparsity) < 1e-12 and
          abs(sum(l.sparsity * l.params for l in fin.layers) / sum(l.params for l in fin.layers) -
              ckpt.global_sparsity) < 1e-9,
          "GetJob reports the last checkpoint: iteration %d, sparsity %.4f (layers agree)" %
          (fin.state.iteration, fin.state.global_sparsity))
    check(not os.path.exists(out) or not os.listdir(out), "a cancelled job exports nothing")
    code, _, details = c.cancel(job.id)
    check(code == grpc.StatusCode.FAILED_PRECONDITION, "a second CancelJob is FAILED_PRECONDITION (%s %r)" %
          (code.name, details))

    qfin = aplib.wait_job(c, queued.id, timeout=60)
    qevs = aplib.collect_events(c, queued.id, timeout=30)
    names = [aplib.event_name(pb, e.type) for e in qevs]
    check(qfin.status == E.JOB_STATUS_CANCELLED and qfin.stop_reason == "cancelled",
          "the queued job is CANCELLED (%s)" % E.JobStatus.Name(qfin.status))
    check("JOB_EVENT_STARTED" not in names, "the queued job never started (%s)" % names)

    # A restart does not resume cancelled jobs.
    last_seq = {j: c.get_job(j)[1].last_event_seq for j in (job.id, queued.id)}
    c.close()
    check(pruner.stop() == 0, "pruner-svc exits 0 on SIGTERM")
    pruner = env.pruner(agent.addr, data_dir=data_dir)
    c = aplib.Client(pb, pruner.addr)
    time.sleep(1.5)
    for jid in (job.id, queued.id):
        code, j, _ = c.get_job(jid)
        check(code == grpc.StatusCode.OK and j.status == E.JOB_STATUS_CANCELLED and j.last_event_seq == last_seq[jid],
              "after a restart job %s is still CANCELLED with no new event" % jid)
    code, lst, _ = c.list_jobs()
    check(code == grpc.StatusCode.OK and sorted(j.id for j in lst.jobs) == sorted([job.id, queued.id]),
          "ListJobs lists both jobs")
    check("resuming job" not in pruner.log_tail(20000), "the restarted pruner-svc resumed nothing")

    # SIGTERM is not a cancel: the running job stays RUNNING and the next
    # start resumes it to the end.
    code, job3, _ = c.submit(out_dir=env.path("out-sigterm"), **spec)
    for e in c.watch(job3.id, timeout=120):
        if e.type == E.JOB_EVENT_ACCEPTED and e.iteration == 1:
            break
    c.close()
    check(pruner.stop() == 0, "pruner-svc stops gracefully with a job running")
    pruner = env.pruner(agent.addr, data_dir=data_dir)
    c = aplib.Client(pb, pruner.addr)
    fin3 = aplib.wait_job(c, job3.id, timeout=300)
    evs3 = aplib.collect_events(c, job3.id, timeout=30)
    res3 = [e for e in evs3 if e.type == E.JOB_EVENT_RESUMED]
    check(fin3.status == E.JOB_STATUS_SUCCEEDED and len(res3) == 1 and res3[0].iteration >= 1,
          "after SIGTERM and a restart the job resumed from iteration %s and succeeded (%s)" %
          (res3[0].iteration if res3 else None, E.JobStatus.Name(fin3.status)))
    aplib.check_events(pb, evs3, fin3, "sigterm")
    c.close()
    check(pruner.stop() == 0, "pruner-svc exits 0 on SIGTERM")
    return aplib.exit_status()


if __name__ == "__main__":
    sys.exit(main())
