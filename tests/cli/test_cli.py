#!/usr/bin/env python3
"""The agentprune command against the real services (DESIGN.md section 6):
exit codes (0 ok, 2 bad usage or input with one sentence on stderr, 3 a
service unreachable, 1 otherwise); --json output of eval, profile and prune
with the stable keys, checked against the services' own numbers; health;
jobs list|watch|cancel; Ctrl-C during `agentprune prune` cancels the job and
stops the local services it started.
"""
import argparse
import json
import math
import os
import signal
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "pruner"))
import aplib  # noqa: E402
from aplib import check, info  # noqa: E402

import grpc  # noqa: E402

DEAD = "127.0.0.1:1"


def main():
    a = aplib.common_args(argparse.ArgumentParser()).parse_args()
    env = aplib.Env(a, "cli")
    try:
        return run(env, a)
    finally:
        env.close()


def run(env, a):
    pb = env.pb
    E = pb.pruner
    cli_env = dict(os.environ, AP_PRUNER_SVC_BIN=a.pruner_bin, AP_AGENT_SVC_BIN=a.agent_bin,
                   TMPDIR=os.path.join(env.tmp, "cli-tmp"), OMP_WAIT_POLICY="passive")
    os.makedirs(cli_env["TMPDIR"])

    def cli(*args, timeout=300, extra_env=None):
        e = dict(cli_env, **(extra_env or {}))
        r = subprocess.run([a.cli_bin] + list(args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           timeout=timeout, env=e)
        return r.returncode, r.stdout, r.stderr

    def one_sentence(err):
        lines = [l for l in err.strip().splitlines() if l.strip()]
        return len(lines) == 1 and lines[0].startswith("agentprune: ") and len(lines[0]) > 20

    s260 = env.s260
    calib = env.text_slice("calib.txt", os.path.join(env.ts, "calib.txt"), 30000)
    ev = env.text_slice("eval.txt", os.path.join(env.ts, "dev.txt"), 6000)
    test_txt = env.text_slice("test.txt", os.path.join(env.ts, "devtest.txt"), 6000)

    # ---- exit code 2: bad usage or input, one sentence on stderr ----
    usage_cases = [
        ("unknown command", ["frobnicate"]),
        ("eval without --model", ["eval", "--text", ev]),
        ("eval with an unknown option", ["eval", "--model", s260, "--text", ev, "--bogus"]),
        ("eval with a missing value", ["eval", "--model", s260, "--text"]),
        ("eval of a model path that does not exist", ["eval", "--model", env.path("nope"), "--text", ev]),
        ("eval of a text that does not exist", ["eval", "--model", s260, "--text", env.path("nope.txt")]),
        ("eval with --ctx abc", ["eval", "--model", s260, "--text", ev, "--ctx", "abc"]),
        ("eval with --ctx 1", ["eval", "--model", s260, "--text", ev, "--ctx", "1"]),
        ("prune without --model", ["prune", "--calib", calib, "--eval", ev, "--sparsity", "0.5", "--out",
                                   env.path("o1")]),
        ("prune --sparsity 1.5", ["prune", "--model", s260, "--calib", calib, "--eval", ev, "--sparsity", "1.5",
                                  "--out", env.path("o2")]),
        ("prune --sparsity 0", ["prune", "--model", s260, "--calib", calib, "--eval", ev, "--sparsity", "0",
                                "--out", env.path("o3")]),
        ("prune --sparsity nan", ["prune", "--model", s260, "--calib", calib, "--eval", ev, "--sparsity", "nan",
                                  "--out", env.path("o4")]),
        ("prune --policy sparsegpt", ["prune", "--model", s260, "--calib", calib, "--eval", ev, "--sparsity", "0.5",
                                      "--policy", "sparsegpt", "--out", env.path("o5")]),
        ("prune --structure 4:2", ["prune", "--model", s260, "--calib", calib, "--eval", ev, "--sparsity", "0.5",
                                   "--structure", "4:2", "--out", env.path("o6")]),
        ("prune --out in a missing folder", ["prune", "--model", s260, "--calib", calib, "--eval", ev,
                                             "--sparsity", "0.5", "--out", env.path("no", "such", "dir")]),
        ("prune --detach without --pruner", ["prune", "--model", s260, "--calib", calib, "--eval", ev,
                                             "--sparsity", "0.5", "--out", env.path("o9"), "--detach"]),
        ("profile without --calib", ["profile", "--model", s260]),
        ("jobs without a sub-command", ["jobs"]),
        ("jobs list without --pruner", ["jobs", "list"]),
        ("jobs watch without --job", ["jobs", "watch", "--pruner", DEAD]),
        ("health without addresses", ["health"]),
    ]
    rc, out, err = cli(timeout=60)
    check(rc == 2 and out == "" and err.startswith("usage: agentprune"), "no command: exit 2 with the usage on stderr")
    for what, args in usage_cases:
        rc, out, err = cli(*args, timeout=60)
        check(rc == 2 and one_sentence(err) and out == "", "%s: exit 2 with one sentence (%d, %r)" %
              (what, rc, err.strip()[:150]))
    # ---- exit code 3: a service unreachable ----
    for what, args in [
        ("eval --pruner DEAD", ["eval", "--pruner", DEAD, "--model", s260, "--text", ev]),
        ("profile --pruner DEAD", ["profile", "--pruner", DEAD, "--model", s260, "--calib", calib]),
        ("prune --pruner DEAD", ["prune", "--pruner", DEAD, "--model", s260, "--calib", calib, "--eval", ev,
                                 "--sparsity", "0.5", "--policy", "wanda", "--out", env.path("o7")]),
        ("jobs list --pruner DEAD", ["jobs", "list", "--pruner", DEAD]),
        ("health --pruner DEAD", ["health", "--pruner", DEAD]),
    ]:
        t0 = time.time()
        rc, out, err = cli(*args, timeout=120)
        check(rc == 3 and err.strip().splitlines()[-1].startswith("agentprune: "),
              "%s: exit 3 (%d, %r, %.1f s)" % (what, rc, err.strip()[-150:], time.time() - t0))

    # ---- running services ----
    agent = env.agent()
    pruner = env.pruner(agent.addr)
    P = pruner.addr
    c = aplib.Client(pb, P)
    rc, out, err = cli("health", "--pruner", P, "--agent", agent.addr)
    check(rc == 0 and out.count("SERVING") == 2 and "NOT_SERVING" not in out, "health of both services: 0 (%d %r)" %
          (rc, out))
    rc, out, err = cli("health", "--pruner", P, "--agent", DEAD, "--timeout-ms", "1000")
    check(rc == 3 and "DOWN" in out and "SERVING" in out, "health with the agent dead: 3 (%d %r)" % (rc, out))

    # The pruner is up but the job's agent is not: a service unreachable.
    rc, out, err = cli("prune", "--pruner", P, "--agent", DEAD, "--model", s260, "--calib", calib, "--eval", ev,
                       "--sparsity", "0.5", "--out", env.path("o8"))
    check(rc == 3 and one_sentence(err), "prune with --agent DEAD against a live pruner: exit 3 (%d %r)" %
          (rc, err.strip()[:160]))

    # eval --json against the service's own Evaluate
    rc, out, err = cli("eval", "--pruner", P, "--model", s260, "--text", ev, "--ctx", "128", "--json")
    res = json.loads(out) if rc == 0 else {}
    keys = {"ppl", "nll", "tokens", "windows", "ctx", "tokens_per_s"}
    check(rc == 0 and keys <= set(res), "eval --json has the stable keys %s (%d %s)" % (sorted(keys), rc,
                                                                                      err.strip()[:200]))
    code, direct, _ = c.evaluate(model_dir=s260, text_path=ev, ctx=128)
    if res:
        check(abs(res["ppl"] - direct.ppl) < 1e-9 * direct.ppl and res["windows"] == direct.windows and
              res["tokens"] == res["windows"] * 127 and res["ctx"] == 128 and
              abs(math.exp(res["nll"]) - res["ppl"]) < 1e-9 * res["ppl"] and res["tokens_per_s"] > 0,
              "eval --json: ppl %.6f over %d windows = the Evaluate RPC's, tokens = windows*(ctx-1), ppl = exp(nll)" %
              (res["ppl"], res["windows"]))
    rc, out, err = cli("eval", "--pruner", P, "--model", s260, "--text", ev, "--ctx", "128")
    check(rc == 0 and "ppl" in out and out.count("\n") == 1, "eval without --json prints one line (%r)" % out)
    # Bad input the server refuses: still 2.
    hostile = env.path("hostile")
    os.makedirs(hostile)
    for f in ("config.json", "tokenizer.json"):
        open(os.path.join(hostile, f), "wb").write(open(os.path.join(s260, f), "rb").read())
    open(os.path.join(hostile, "model.safetensors"), "wb").write(
        open(os.path.join(s260, "model.safetensors"), "rb").read()[:5000])
    rc, out, err = cli("eval", "--pruner", P, "--model", hostile, "--text", ev)
    check(rc == 2 and one_sentence(err), "eval of a truncated model: 2 with one sentence (%d %r)" %
          (rc, err.strip()[:200]))

    # profile --json
    rc, out, err = cli("profile", "--pruner", P, "--model", s260, "--calib", calib, "--ctx", "128",
                       "--calib-windows", "4", "--grad-windows", "2", "--json")
    prof = json.loads(out) if rc == 0 else {}
    lkeys = {"name", "kind", "block", "params", "s", "g", "z_s", "z_g", "rho"}
    layers = prof.get("layers", [])
    check(rc == 0 and len(layers) == 35 and all(lkeys <= set(l) for l in layers),
          "profile --json: 35 layers with keys %s (%d %s)" % (sorted(lkeys), rc, err.strip()[:200]))
    code, direct, _ = c.profile(model_dir=s260, calib_path=calib, ctx=128, calib_windows=4, grad_windows=2)
    if layers and code == grpc.StatusCode.OK:
        kinds = ["?", "q", "k", "v", "o", "gate", "up", "down"]
        same = all(l["name"] == d.name and l["kind"] == kinds[d.kind] and l["block"] == d.block and
                   l["params"] == d.params and abs(l["s"] - d.s) <= 1e-12 * abs(d.s) and
                   abs(l["z_g"] - d.z_g) <= 1e-9 and l["rho"] == 0 for l, d in zip(layers, direct.table.layers))
        check(same, "profile --json rows equal the Profile RPC's")

    # prune --json against a running pruner (wanda, one shot), with --test
    out_w = env.path("out-wanda")
    rc, out, err = cli("prune", "--pruner", P, "--model", s260, "--calib", calib, "--eval", ev, "--test", test_txt,
                       "--sparsity", "0.5", "--policy", "wanda", "--ctx", "128", "--calib-windows", "8",
                       "--eval-windows", "4", "--grad-windows", "2", "--out", out_w, "--json")
    pr = json.loads(out) if rc == 0 and out.strip() else {}
    pkeys = {"dense_ppl", "ppl", "dense_test_ppl", "test_ppl", "sparsity", "iterations", "rollbacks", "stop_reason",
             "out", "layers"}
    check(rc == 0 and pkeys <= set(pr), "prune --json has the stable keys %s (%d %s)" % (sorted(pkeys), rc,
                                                                                        err.strip()[-300:]))
    check("[" in err and "finished" in err, "prune shows its progress on stderr")
    if pr:
        doc = aplib.load_json(os.path.join(out_w, "agentprune.json"))
        r = doc["result"]
        check(pr["out"] == out_w and pr["stop_reason"] == "one_shot" and
              all(abs(pr[k] - r[k]) < 1e-9 * r[k] for k in ("dense_ppl", "ppl", "dense_test_ppl", "test_ppl")) and
              pr["test_ppl"] > pr["dense_test_ppl"] > 1 and abs(pr["sparsity"] - 0.5) < 1e-9,
              "prune --json numbers equal agentprune.json (test ppl %.4f -> %.4f)" %
              (pr["dense_test_ppl"], pr["test_ppl"]))
        check(pr["layers"] == {l["name"]: l["sparsity"] for l in doc["layers"]},
              "prune --json layers map name -> sparsity as in agentprune.json")
        rc2, out2, err2 = cli("eval", "--pruner", P, "--model", out_w, "--text", test_txt, "--ctx", "128", "--json")
        check(rc2 == 0 and abs(json.loads(out2)["ppl"] - pr["test_ppl"]) < 1e-6 * pr["test_ppl"],
              "eval of the exported folder on the test text gives prune's test_ppl")

    # A job that fails: exit 1 (the agent policies refuse N:M inside the job).
    rc, out, err = cli("prune", "--pruner", P, "--agent", agent.addr, "--model", s260, "--calib", calib, "--eval",
                       ev, "--sparsity", "0.5", "--policy", "rule", "--structure", "2:4", "--ctx", "128",
                       "--calib-windows", "4", "--eval-windows", "4", "--out", env.path("out-fail"))
    check(rc == 1 and err.strip().splitlines()[-1].startswith("agentprune: "),
          "a job that fails: exit 1 (%d %r)" % (rc, err.strip().splitlines()[-1][:200] if err.strip() else ""))

    # ---- jobs list | watch | cancel ----
    rc, out, err = cli("prune", "--pruner", P, "--agent", agent.addr, "--model", s260, "--calib", calib,
                       "--eval", ev, "--sparsity", "0.5", "--ctx", "128", "--calib-windows", "8",
                       "--eval-windows", "6", "--grad-windows", "2", "--tau", "0.5", "--out", env.path("out-detach"),
                       "--detach")
    jid = out.strip()
    check(rc == 0 and jid.startswith("job-"), "prune --detach prints the job id (%d %r)" % (rc, jid))
    rc, out, err = cli("jobs", "list", "--pruner", P)
    lines = out.strip().splitlines()
    check(rc == 0 and len(lines) == 3 and lines[0].startswith(jid) and "running" in lines[0] or "queued" in lines[0],
          "jobs list: three jobs, the newest first (%r)" % lines[:1])
    rc, out, err = cli("jobs", "watch", "--pruner", P, "--job", jid)
    _, fin, _ = c.get_job(jid)
    check(rc == 0 and fin.status == E.JOB_STATUS_SUCCEEDED and "[finished]" in err and
          err.count("[accepted]") + err.count("[rolled-back]") == fin.state.iteration,
          "jobs watch follows the job to its end: exit 0, one line per outcome (%d, %d iterations)" %
          (rc, fin.state.iteration))
    rc, out, err = cli("jobs", "cancel", "--pruner", P, "--job", jid)
    check(rc == 2 and one_sentence(err), "jobs cancel of a finished job: 2 (%d %r)" % (rc, err.strip()[:150]))
    rc, out, err = cli("jobs", "watch", "--pruner", P, "--job", "job-0-000000000000")
    check(rc == 2 and one_sentence(err), "jobs watch of an unknown job: 2 (%d %r)" % (rc, err.strip()[:150]))
    rc, out, err = cli("prune", "--pruner", P, "--agent", agent.addr, "--model", s260, "--calib", calib,
                       "--eval", ev, "--sparsity", "0.5", "--ctx", "128", "--calib-windows", "8",
                       "--eval-windows", "6", "--grad-windows", "2", "--tau", "0.5", "--out", env.path("out-cancel"),
                       "--detach")
    jid2 = out.strip()
    for e in c.watch(jid2, timeout=120):
        if e.type == E.JOB_EVENT_ACCEPTED:
            break
    rc, out, err = cli("jobs", "cancel", "--pruner", P, "--job", jid2)
    fin2 = aplib.wait_job(c, jid2, timeout=60)
    check(rc == 0 and jid2 in out and fin2.status == E.JOB_STATUS_CANCELLED,
          "jobs cancel of a running job: 0, and the job ends CANCELLED (%d %s)" % (rc, E.JobStatus.Name(fin2.status)))
    rc, out, err = cli("jobs", "watch", "--pruner", P, "--job", jid2)
    check(rc == 1 and err.strip().splitlines()[-1].startswith("agentprune: ") and "cancelled" in
          err.strip().splitlines()[-1], "jobs watch of a cancelled job replays it and exits 1 (%d %r)" %
          (rc, err.strip().splitlines()[-1][:120] if err.strip() else ""))
    c.close()
    pruner.stop()
    agent.stop()

    # ---- embedded mode: prune --json with local services, then Ctrl-C ----
    out_e = env.path("out-embedded")
    t0 = time.time()
    rc, out, err = cli("prune", "--model", s260, "--calib", calib, "--eval", ev, "--sparsity", "0.3",
                       "--ctx", "128", "--calib-windows", "8", "--eval-windows", "6", "--grad-windows", "2",
                       "--tau", "0.5", "--out", out_e, "--json")
    pr = json.loads(out) if rc == 0 and out.strip() else {}
    check(rc == 0 and {"dense_ppl", "ppl", "sparsity", "iterations", "rollbacks", "stop_reason", "out", "layers"}
          <= set(pr) and pr.get("stop_reason") == "target_reached" and abs(pr["sparsity"] - 0.3) <= 0.005,
          "prune (rule) with its own local services: exit 0, target 0.3 reached (%d %s %s)" %
          (rc, pr.get("stop_reason"), err.strip()[-200:]))
    # The services stop on the CLI's SIGTERM, at once (not after a 15 s wait and SIGKILL):
    # what the CLI adds to the job's own run time (start, export wait, stop) stays well under that.
    total = time.time() - t0
    job_s = aplib.load_json(os.path.join(out_e, "agentprune.json"))["result"]["wall_s"] if rc == 0 else total
    check(total - job_s < 14, "the local prune took %.1f s, %.1f s beyond the job's own %.1f s" %
          (total, total - job_s, job_s))
    check(os.listdir(cli_env["TMPDIR"]) == [], "the CLI removed its working folder (%s)" %
          os.listdir(cli_env["TMPDIR"]))

    keep_env = dict(cli_env, AP_KEEP_WORKDIR="1")
    proc = subprocess.Popen([a.cli_bin, "prune", "--model", s260, "--calib", calib, "--eval", ev, "--sparsity",
                             "0.6", "--ctx", "128", "--calib-windows", "8", "--eval-windows", "6", "--grad-windows",
                             "2", "--tau", "0.5", "--out", env.path("out-sigint")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=keep_env)
    err_lines = []
    children = []
    deadline = time.time() + 120
    while time.time() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        err_lines.append(line)
        if "[accepted]" in line or "[rolled-back]" in line:
            break
    r = subprocess.run(["pgrep", "-P", str(proc.pid)], stdout=subprocess.PIPE, text=True)
    children = [int(x) for x in r.stdout.split()]
    names = sorted(open("/proc/%d/comm" % p).read().strip() for p in children if os.path.exists("/proc/%d" % p))
    check(names == ["agent-svc", "pruner-svc"], "the CLI runs agent-svc and pruner-svc as its children (%s)" % names)
    proc.send_signal(signal.SIGINT)
    t_int = time.time()
    try:
        rest_out, rest_err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        rest_out, rest_err = proc.communicate()
    err_all = "".join(err_lines) + rest_err
    check(proc.returncode == 1 and "cancelling job" in err_all and "[cancelled]" in err_all,
          "Ctrl-C cancels the job cleanly: exit %d, stderr ends %r" % (proc.returncode,
                                                                      err_all.strip().splitlines()[-1][:160]))
    check(time.time() - t_int < 15, "the CLI exited %.1f s after Ctrl-C" % (time.time() - t_int))
    time.sleep(0.2)
    alive = [p for p in children if os.path.exists("/proc/%d" % p) and
             open("/proc/%d/stat" % p).read().split()[2] != "Z"]
    check(children and not alive, "no service process is left behind (%s alive)" % alive)
    r = subprocess.run(["pgrep", "-f", env.tmp], stdout=subprocess.PIPE, text=True)
    check(r.stdout.strip() == "", "no process runs on this test's files (%r)" % r.stdout.strip())
    # The kept working folder holds the job, CANCELLED, with its checkpoint.
    work = [d for d in os.listdir(cli_env["TMPDIR"]) if d.startswith("agentprune-")]
    if check(len(work) == 1, "AP_KEEP_WORKDIR kept the CLI's working folder"):
        logs = {n: open(os.path.join(cli_env["TMPDIR"], work[0], n + ".log"), errors="replace").read()
                for n in ("pruner-svc", "agent-svc")}
        check(all("%s stopped" % n in logs[n] for n in logs), "both services shut down gracefully (their logs end "
              "with 'stopped')")
        pdata = os.path.join(cli_env["TMPDIR"], work[0], "pruner")
        p2 = env.pruner(data_dir=pdata, roots="/")
        c2 = aplib.Client(pb, p2.addr)
        code, lst, _ = c2.list_jobs()
        j = lst.jobs[0] if code == grpc.StatusCode.OK and lst.jobs else None
        check(j is not None and j.status == E.JOB_STATUS_CANCELLED and j.stop_reason == "cancelled" and
              j.state.iteration >= 1, "the job in the CLI's store is CANCELLED at iteration %s" %
              (j.state.iteration if j else None))
        c2.close()
        p2.stop()
    return aplib.exit_status()


if __name__ == "__main__":
    sys.exit(main())
