"""aplib.py - shared helpers of the end-to-end tests (tests/pruner, tests/cli):
generated _pb2 modules, starting and killing the real pruner-svc / agent-svc,
unary calls and WatchJob streams from Python grpcio, checks that count
failures, and a scratch data root.

Every test is a plain script: it calls check(...) for each property, prints
one line per check, and exits 1 when any failed (exit_status()).
"""
import math
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import grpc

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
PROTO_DIR = os.path.join(REPO, "proto")
PROTOS = ["agentprune/v1/common.proto", "agentprune/v1/pruner.proto",
          "agentprune/v1/agent.proto", "grpc/health/v1/health.proto"]

_failures = 0
_checks = 0


def check(cond, what):
    global _failures, _checks
    _checks += 1
    what = what.replace("\n", " | ")
    if cond:
        print("ok   " + what, flush=True)
    else:
        _failures += 1
        print("FAIL " + what, flush=True)
    return bool(cond)


def info(msg):
    print("     " + msg, flush=True)


def exit_status():
    print("%d passed, %d failed" % (_checks - _failures, _failures), flush=True)
    return 1 if _failures else 0


# ---- generated messages -------------------------------------------------------

class PB:
    """The generated modules: pb.pruner, pb.agent, pb.common, pb.health."""


def generate(gen_dir, protoc="protoc"):
    os.makedirs(gen_dir, exist_ok=True)
    subprocess.run([protoc, "--proto_path=" + PROTO_DIR, "--python_out=" + gen_dir] + PROTOS, check=True)
    # Appended: the generated grpc/ folder must not shadow the grpc library.
    sys.path.append(gen_dir)
    spec = importlib.util.spec_from_file_location(
        "health_pb2", os.path.join(gen_dir, "grpc", "health", "v1", "health_pb2.py"))
    health = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(health)
    from agentprune.v1 import agent_pb2, common_pb2, pruner_pb2
    pb = PB()
    pb.pruner, pb.agent, pb.common, pb.health = pruner_pb2, agent_pb2, common_pb2, health
    return pb


# ---- processes ------------------------------------------------------------------

class Service:
    """A pruner-svc or agent-svc child process on a loopback port."""

    def __init__(self, argv, port_file, log_path, env=None, listen="127.0.0.1:0"):
        self.argv, self.port_file, self.log_path = argv, port_file, log_path
        self.env, self.listen = env, listen
        self.proc = None
        self.port = None

    def start(self, timeout=60):
        if os.path.exists(self.port_file):
            os.unlink(self.port_file)
        log = open(self.log_path, "ab")
        env = dict(os.environ)
        env.setdefault("OMP_WAIT_POLICY", "passive")
        if self.env:
            env.update(self.env)
        self.proc = subprocess.Popen(self.argv + ["--listen", self.listen, "--port-file", self.port_file],
                                     stdout=log, stderr=log, stdin=subprocess.DEVNULL, env=env)
        log.close()
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("%s exited with %s during start (log %s):\n%s" %
                                   (self.argv[0], self.proc.returncode, self.log_path, self.log_tail()))
            try:
                with open(self.port_file) as f:
                    txt = f.read().strip()
                if txt:
                    self.port = int(txt)
                    return self
            except (OSError, ValueError):
                pass
            time.sleep(0.05)
        raise RuntimeError("%s wrote no port file within %d s" % (self.argv[0], timeout))

    @property
    def addr(self):
        return "127.0.0.1:%d" % self.port

    @property
    def pid(self):
        return self.proc.pid if self.proc else None

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def kill9(self):
        if self.alive():
            self.proc.send_signal(signal.SIGKILL)
        if self.proc:
            self.proc.wait()

    def stop(self, timeout=30):
        """SIGTERM and wait; returns the exit status (SIGKILL after timeout)."""
        if not self.proc:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                return "killed"
        return self.proc.returncode

    def log_tail(self, n=4000):
        try:
            with open(self.log_path, "rb") as f:
                return f.read()[-n:].decode("utf-8", "replace")
        except OSError:
            return ""


class Env:
    """Scratch folders, binaries and data paths of one test run."""

    def __init__(self, args, name):
        self.pruner_bin, self.agent_bin = args.pruner_bin, args.agent_bin
        self.cli_bin = getattr(args, "cli_bin", None)
        self.data = os.path.realpath(args.data)
        self.keep = getattr(args, "keep", False)
        self.tmp = os.path.realpath(tempfile.mkdtemp(prefix="ap-e2e-%s-" % name))
        self.root = os.path.join(self.tmp, "root")   # a writable data root
        os.makedirs(self.root)
        self.pb = generate(os.path.join(self.tmp, "pb"), getattr(args, "protoc", "protoc"))
        self.services = []
        self.s260 = os.path.join(self.data, "stories260K-hf-derived")
        self.qwen = os.path.join(self.data, "tinyqwen3-a")
        self.ts = os.path.join(self.data, "tinystories")

    def path(self, *p):
        return os.path.join(self.root, *p)

    def text_slice(self, name, src, nbytes):
        """A prefix of a text (cut at a line end) in the scratch root: small
        texts keep the full-eval passes of a job short."""
        with open(src, "rb") as f:
            data = f.read(nbytes)
        cut = data.rfind(b"\n")
        if cut > 0:
            data = data[:cut + 1]
        p = self.path(name)
        with open(p, "wb") as f:
            f.write(data)
        return p

    def agent(self, data_dir=None, listen="127.0.0.1:0", start=True):
        data_dir = data_dir or os.path.join(self.tmp, "agent-data")
        n = len(self.services)
        s = Service([self.agent_bin, "--data-dir", data_dir, "--log-level", "info"],
                    os.path.join(self.tmp, "agent-%d.port" % n), os.path.join(self.tmp, "agent-%d.log" % n),
                    listen=listen)
        self.services.append(s)
        return s.start() if start else s

    def pruner(self, agent_addr="", data_dir=None, roots=None, env=None, extra=(), start=True):
        data_dir = data_dir or os.path.join(self.tmp, "pruner-data")
        roots = roots or "%s:%s" % (self.data, self.root)
        n = len(self.services)
        s = Service([self.pruner_bin, "--data-dir", data_dir, "--data-roots", roots, "--agent", agent_addr,
                     "--threads", "2", "--grace-ms", "2000"] + list(extra),
                    os.path.join(self.tmp, "pruner-%d.port" % n), os.path.join(self.tmp, "pruner-%d.log" % n),
                    env=env)
        self.services.append(s)
        return s.start() if start else s

    def close(self):
        for s in self.services:
            if s.alive():
                s.kill9()
        if self.keep:
            info("kept scratch folder %s" % self.tmp)
        else:
            shutil.rmtree(self.tmp, ignore_errors=True)


def common_args(ap):
    ap.add_argument("--pruner-bin", required=True)
    ap.add_argument("--agent-bin", required=True)
    ap.add_argument("--cli-bin")
    ap.add_argument("--golden-dump")
    ap.add_argument("--data", required=True, help="the shared data folder (AP_DATA_DIR)")
    ap.add_argument("--protoc", default="protoc")
    ap.add_argument("--keep", action="store_true", help="keep the scratch folder")
    return ap


# ---- RPC ---------------------------------------------------------------------------

class Client:
    def __init__(self, pb, addr):
        self.pb = pb
        self.addr = addr
        self.ch = grpc.insecure_channel(addr)

    def close(self):
        self.ch.close()

    def unary(self, path, req, resp_cls, timeout=30):
        """(status code, response or None, details)."""
        fn = self.ch.unary_unary(path, request_serializer=lambda m: m.SerializeToString(),
                                 response_deserializer=resp_cls.FromString)
        try:
            return grpc.StatusCode.OK, fn(req, timeout=timeout), ""
        except grpc.RpcError as e:
            return e.code(), None, e.details()

    # Pruner
    def submit(self, timeout=30, **spec):
        return self.unary("/agentprune.v1.Pruner/SubmitJob", self.pb.pruner.JobSpec(**spec), self.pb.pruner.Job,
                          timeout)

    def get_job(self, job_id, timeout=30):
        return self.unary("/agentprune.v1.Pruner/GetJob", self.pb.pruner.GetJobRequest(job_id=job_id),
                          self.pb.pruner.Job, timeout)

    def cancel(self, job_id):
        return self.unary("/agentprune.v1.Pruner/CancelJob", self.pb.pruner.CancelJobRequest(job_id=job_id),
                          self.pb.pruner.Job)

    def list_jobs(self, limit=0):
        return self.unary("/agentprune.v1.Pruner/ListJobs", self.pb.pruner.ListJobsRequest(limit=limit),
                          self.pb.pruner.ListJobsResponse)

    def evaluate(self, timeout=300, **spec):
        return self.unary("/agentprune.v1.Pruner/Evaluate", self.pb.pruner.EvalSpec(**spec),
                          self.pb.pruner.EvalResult, timeout)

    def profile(self, timeout=300, **spec):
        return self.unary("/agentprune.v1.Pruner/Profile", self.pb.pruner.ProfileSpec(**spec),
                          self.pb.pruner.ProfileResult, timeout)

    def watch(self, job_id, from_seq=0, timeout=None):
        """An iterator over the job's events (raises grpc.RpcError on a broken stream)."""
        fn = self.ch.unary_stream("/agentprune.v1.Pruner/WatchJob",
                                  request_serializer=lambda m: m.SerializeToString(),
                                  response_deserializer=self.pb.pruner.JobEvent.FromString)
        return fn(self.pb.pruner.WatchJobRequest(job_id=job_id, from_seq=from_seq), timeout=timeout)

    def watch_code(self, job_id, timeout=10):
        try:
            list(self.watch(job_id, timeout=timeout))
            return grpc.StatusCode.OK, ""
        except grpc.RpcError as e:
            return e.code(), e.details()

    # Agent
    def history(self, session_id):
        return self.unary("/agentprune.v1.Agent/GetHistory", self.pb.agent.GetHistoryRequest(session_id=session_id),
                          self.pb.agent.History)

    def health(self, timeout=5):
        return self.unary("/grpc.health.v1.Health/Check", self.pb.health.HealthCheckRequest(service=""),
                          self.pb.health.HealthCheckResponse, timeout)


FINAL = None  # filled lazily: the final JobStatus values


def is_final(pb, status):
    S = pb.pruner
    return status in (S.JOB_STATUS_SUCCEEDED, S.JOB_STATUS_FAILED, S.JOB_STATUS_CANCELLED)


def event_name(pb, t):
    return pb.pruner.JobEventType.Name(t)


def wait_job(client, job_id, timeout=300, poll=0.2):
    """Polls GetJob until the job is final; returns the Job (or the last one seen)."""
    deadline = time.time() + timeout
    job = None
    while time.time() < deadline:
        code, j, _ = client.get_job(job_id, timeout=10)
        if code == grpc.StatusCode.OK:
            job = j
            if is_final(client.pb, j.status):
                return j
        time.sleep(poll)
    return job


def collect_events(client, job_id, from_seq=0, timeout=300):
    """Every event from from_seq until the job's final event (or the stream ends)."""
    evs = []
    try:
        for e in client.watch(job_id, from_seq=from_seq, timeout=timeout):
            evs.append(e)
    except grpc.RpcError as e:
        info("watch ended with %s: %s" % (e.code(), e.details()))
    return evs


# ---- model files ------------------------------------------------------------------------

def read_st_header(path):
    import struct
    with open(path, "rb") as f:
        (hlen,) = struct.unpack("<Q", f.read(8))
        return json.loads(f.read(hlen)), 8 + hlen


def read_raw_tensors(path):
    """name -> (dtype, shape, raw bytes) of one safetensors file."""
    header, base = read_st_header(path)
    with open(path, "rb") as f:
        data = f.read()
    out = {}
    for name, t in header.items():
        if name == "__metadata__":
            continue
        b, e = t["data_offsets"]
        out[name] = (t["dtype"], t["shape"], data[base + b:base + e])
    return out


def load_json(path):
    with open(path) as f:
        return json.load(f)


# ---- invariants of a finished agent-loop job -------------------------------------------

def layer_cols(model_dir):
    """name (without .weight) -> input width, from the safetensors header."""
    header = read_st_header(os.path.join(model_dir, "model.safetensors"))[0]
    return {k[:-len(".weight")]: v["shape"][1] for k, v in header.items()
            if k.endswith(".weight") and len(v.get("shape", [])) == 2}


def row_sparsity(t, cols):
    """What Wanda's per-row selection reaches for target t: round-half-up(t*cols)/cols."""
    import math
    return math.floor(t * cols + 0.5) / cols


def check_trajectory(doc, tag, tau, cols, step_cap=0.10, ceiling=0.90):
    """The agentprune.json trajectory of an agent-policy job is consistent:
    iterations 1..N in order; each outcome follows the tau rule; a rollback
    leaves sparsity and accepted ppl unchanged; targets only grow, by at most
    step_cap over the layer's current sparsity, up to the ceiling; the final
    per-layer sparsity is what the accepted targets give (each row pruned to
    round(t*cols)). cols: layer name -> input width (layer_cols).
    Returns the per-layer sparsity tracked from the accepted decisions."""
    traj = doc["trajectory"]
    res = doc["result"]
    layers = {l["name"]: l for l in doc["layers"]}
    check([t["iteration"] for t in traj] == list(range(1, len(traj) + 1)),
          "%s: trajectory iterations are 1..%d in order" % (tag, len(traj)))
    check(res["iterations"] == len(traj), "%s: result.iterations %d = trajectory length %d" %
          (tag, res["iterations"], len(traj)))
    tracked = {name: 0.0 for name in layers}
    accepted_ppl = res["check_dense_ppl"]
    sparsity = 0.0
    rollbacks = 0
    problems = []
    for t in traj:
        it = t["iteration"]
        if abs(t["ppl_before"] - accepted_ppl) > 1e-9 * accepted_ppl:
            problems.append("it %d: ppl_before %.6f is not the accepted ppl %.6f" % (it, t["ppl_before"],
                                                                                    accepted_ppl))
        changed = len(t["decision"]) > 0
        probing = bool(t.get("probes"))
        # A probe iteration measures plans and changes no mask: accepted, ppl unchanged.
        should = probing or (changed and t["ppl"] <= t["ppl_before"] * (1 + tau))
        if probing and (changed or abs(t["ppl"] - t["ppl_before"]) > 1e-12 * t["ppl_before"] or
                        not all(math.isfinite(p["ppl"]) and p["ppl"] > 0 for p in t["probes"])):
            problems.append("it %d: a probe iteration changed masks or has a bad probe ppl" % it)
        if bool(t["accepted"]) != should:
            problems.append("it %d: accepted=%s but ppl %.6f vs limit %.6f" % (it, t["accepted"], t["ppl"],
                                                                              t["ppl_before"] * (1 + tau)))
        for d in t["decision"]:
            name, target = d["name"], d["target_sparsity"]
            if name not in tracked:
                problems.append("it %d: unknown layer %s" % (it, name))
                continue
            if not (target > tracked[name] and target <= min(tracked[name] + step_cap, ceiling) + 1e-9):
                problems.append("it %d: %s target %.6f from %.6f breaks the step cap/ceiling" %
                                (it, name, target, tracked[name]))
        if t["accepted"]:
            for d in t["decision"]:
                if d["name"] in tracked:
                    tracked[d["name"]] = max(tracked[d["name"]], row_sparsity(d["target_sparsity"], cols[d["name"]]))
            if t["global_sparsity"] < sparsity - 1e-12:
                problems.append("it %d: accepted sparsity fell %.6f -> %.6f" % (it, sparsity, t["global_sparsity"]))
            accepted_ppl = t["ppl"]
            sparsity = t["global_sparsity"]
        else:
            if changed:
                rollbacks += 1
            if abs(t["global_sparsity"] - sparsity) > 1e-12:
                problems.append("it %d: rolled back but sparsity %.6f != %.6f" % (it, t["global_sparsity"],
                                                                                  sparsity))
        if abs(t["accepted_ppl"] - accepted_ppl) > 1e-9 * accepted_ppl:
            problems.append("it %d: accepted_ppl %.6f != %.6f" % (it, t["accepted_ppl"], accepted_ppl))
    check(not problems, "%s: every iteration follows the tau rule, rollbacks change nothing, targets only grow "
                        "within the step cap (%s)" % (tag, problems[:3]))
    check(res["rollbacks"] == rollbacks, "%s: result.rollbacks %d = rolled-back iterations %d" %
          (tag, res["rollbacks"], rollbacks))
    check(abs(res["check_ppl"] - accepted_ppl) <= 1e-9 * accepted_ppl and abs(res["sparsity"] - sparsity) < 1e-9,
          "%s: the result is the last accepted state (ppl %.4f, sparsity %.4f)" % (tag, accepted_ppl, sparsity))
    far = []
    for name, l in layers.items():
        if abs(l["sparsity"] - tracked[name]) > 1e-12:
            far.append((name, l["sparsity"], tracked[name]))
    check(not far, "%s: each layer's final sparsity is its last accepted target (%s)" % (tag, far[:3]))
    return tracked


def check_events(pb, evs, job, tag):
    """WatchJob from seq 1: every event once, in order, ending at the final one."""
    seqs = [e.seq for e in evs]
    check(seqs == list(range(1, len(evs) + 1)), "%s: WatchJob replays seq 1..%d with no gap" % (tag, len(evs)))
    check(bool(evs) and is_final(pb, evs[-1].status) and evs[-1].seq == job.last_event_seq,
          "%s: the stream ends at the final event (seq %d, job last_event_seq %d)" %
          (tag, evs[-1].seq if evs else -1, job.last_event_seq))
    check(all(e.job_id == job.id for e in evs), "%s: every event names the job" % tag)
    check(all(a.time_unix_ms <= b.time_unix_ms for a, b in zip(evs, evs[1:])), "%s: event times never go back" % tag)
