"""test_device.py - the pruner's --device choice end to end, on the real
pruner-svc and agentprune binaries.

On a machine without a usable CUDA device (nvidia-smi lists none):
  - Evaluate with device "cuda" fails with FAILED_PRECONDITION and a
    one-line message that starts "device cuda:";
  - `agentprune eval --device cuda` exits 2 with exactly one line on stderr;
  - "auto" falls back to the CPU: EvalResult.device is "cpu" and the
    perplexity equals the "cpu" one exactly (same code path).
On a machine with a GPU the same script checks instead that "cuda" and
"auto" run on cuda and match the CPU perplexity within 1e-3 relative.
Also: pruner-svc refuses a malformed --gpu-mem-limit at start.

usage: test_device.py AGENTPRUNE PRUNER_SVC DATA_DIR
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import grpc

HERE = os.path.dirname(os.path.abspath(__file__))
PROTO_DIR = os.path.join(os.path.dirname(os.path.dirname(HERE)), "proto")

failures = 0
checks = 0


def check(cond, what):
    global failures, checks
    checks += 1
    print(("ok   " if cond else "FAIL ") + what, flush=True)
    if not cond:
        failures += 1
    return bool(cond)


def have_gpu():
    smi = shutil.which("nvidia-smi")
    if not smi:
        return False
    try:
        out = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return out.returncode == 0 and "GPU" in out.stdout


def start_pruner(binary, data_root, work, extra=()):
    port_file = os.path.join(work, "pruner.port")
    log = open(os.path.join(work, "pruner.log"), "ab")
    env = dict(os.environ, OMP_WAIT_POLICY="passive", OMP_NUM_THREADS="2")
    proc = subprocess.Popen([binary, "--listen", "127.0.0.1:0", "--port-file", port_file, "--data-dir",
                             os.path.join(work, "store"), "--data-roots", data_root] + list(extra),
                            stdout=log, stderr=log, stdin=subprocess.DEVNULL, env=env)
    log.close()
    deadline = time.time() + 60
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("pruner-svc exited with %s during start" % proc.returncode)
        try:
            with open(port_file) as f:
                txt = f.read().strip()
            if txt:
                return proc, int(txt)
        except (OSError, ValueError):
            pass
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError("pruner-svc wrote no port file")


def main():
    agentprune, pruner_bin = sys.argv[1:3]
    data = os.path.realpath(sys.argv[3])  # the pruner refuses ".." in request paths
    model = os.path.join(data, "stories260K-hf-derived")
    text = os.path.join(data, "tinystories", "dev.txt")
    gpu = have_gpu()
    print("     GPU present: %s" % gpu, flush=True)
    work = tempfile.mkdtemp(prefix="ap-device-")
    gen = os.path.join(work, "gen")
    os.makedirs(gen)
    subprocess.run(["protoc", "--proto_path=" + PROTO_DIR, "--python_out=" + gen,
                    "agentprune/v1/common.proto", "agentprune/v1/pruner.proto"], check=True)
    sys.path.append(gen)
    from agentprune.v1 import pruner_pb2

    proc, port = start_pruner(pruner_bin, data, work)
    try:
        chan = grpc.insecure_channel("127.0.0.1:%d" % port)
        evaluate = chan.unary_unary("/agentprune.v1.Pruner/Evaluate",
                                    request_serializer=pruner_pb2.EvalSpec.SerializeToString,
                                    response_deserializer=pruner_pb2.EvalResult.FromString)

        def run(device):
            spec = pruner_pb2.EvalSpec(model_dir=model, text_path=text, ctx=64, windows=8, device=device)
            try:
                return evaluate(spec, timeout=120), None
            except grpc.RpcError as e:
                return None, e

        cpu, e = run("cpu")
        check(cpu is not None and cpu.device == "cpu" and cpu.ppl > 1, "Evaluate device=cpu runs on the CPU (ppl %s)" %
              (cpu.ppl if cpu else e))
        cuda, e = run("cuda")
        auto, ae = run("auto")
        if not gpu:
            check(cuda is None and e.code() == grpc.StatusCode.FAILED_PRECONDITION,
                  "Evaluate device=cuda without a GPU: FAILED_PRECONDITION (got %s)" % (e.code() if e else "success"))
            msg = e.details() if e else ""
            check(msg.startswith("device cuda:") and "\n" not in msg and len(msg) < 300,
                  "its message is one line naming the device: %r" % msg)
            check(auto is not None and auto.device == "cpu", "device=auto falls back to the CPU (%s)" %
                  (auto.device if auto else ae))
            check(auto is not None and cpu is not None and auto.ppl == cpu.ppl and auto.tokens == cpu.tokens,
                  "auto and cpu give the same perplexity exactly")
        else:
            for name, r, err in (("cuda", cuda, e), ("auto", auto, ae)):
                ok = r is not None and cpu is not None and r.device == "cuda" and abs(r.ppl - cpu.ppl) <= 1e-3 * cpu.ppl
                check(ok, "device=%s runs on cuda and matches the CPU within 1e-3 (%s vs %s)" %
                      (name, r.ppl if r else err, cpu.ppl if cpu else "?"))
        chan.close()
    finally:
        proc.terminate()
        proc.wait(timeout=30)

    # agentprune eval starts its own pruner-svc (AP_PRUNER_SVC_BIN)
    env = dict(os.environ, AP_PRUNER_SVC_BIN=pruner_bin, OMP_WAIT_POLICY="passive", OMP_NUM_THREADS="2",
               TMPDIR=work)
    base = [agentprune, "eval", "--model", model, "--text", text, "--ctx", "64", "--windows", "8", "--json"]
    r_cpu = subprocess.run(base + ["--device", "cpu"], capture_output=True, text=True, env=env, timeout=300)
    r_cuda = subprocess.run(base + ["--device", "cuda"], capture_output=True, text=True, env=env, timeout=300)
    r_auto = subprocess.run(base + ["--device", "auto"], capture_output=True, text=True, env=env, timeout=300)
    j_cpu = json.loads(r_cpu.stdout) if r_cpu.returncode == 0 else None
    check(j_cpu is not None and j_cpu["device"] == "cpu", "agentprune eval --device cpu: %s" %
          (r_cpu.stdout.strip() or r_cpu.stderr.strip()))
    j_auto = json.loads(r_auto.stdout) if r_auto.returncode == 0 else None
    if not gpu:
        lines = [l for l in r_cuda.stderr.splitlines() if l.strip()]
        check(r_cuda.returncode == 2 and r_cuda.stdout == "", "agentprune eval --device cuda exits 2 (got %d)" %
              r_cuda.returncode)
        check(len(lines) == 1 and "device cuda:" in lines[0], "with one sentence on stderr: %r" % r_cuda.stderr)
        check(j_auto is not None and j_cpu is not None and j_auto["device"] == "cpu" and j_auto["ppl"] == j_cpu["ppl"],
              "agentprune eval --device auto = --device cpu on this machine (%s)" % (r_auto.stdout.strip() or
                                                                                  r_auto.stderr.strip()))
    else:
        j_cuda = json.loads(r_cuda.stdout) if r_cuda.returncode == 0 else None
        check(j_cuda is not None and j_cpu is not None and abs(j_cuda["ppl"] - j_cpu["ppl"]) <= 1e-3 * j_cpu["ppl"],
              "agentprune eval --device cuda matches the CPU within 1e-3: %s" % (r_cuda.stdout.strip() or
                                                                                 r_cuda.stderr.strip()))

    # agentprune passes --gpu-mem-limit to its local pruner-svc: a malformed
    # one stops the worker at start (its log names the flag), a valid one runs
    r_bad = subprocess.run(base + ["--device", "cpu", "--gpu-mem-limit", "forty"], capture_output=True, text=True,
                           env=env, timeout=120)
    # (the CLI removes its working folder, log included, on exit: only the
    # start-up failure is visible; the same command with 1G runs below)
    check(r_bad.returncode != 0 and "pruner-svc exited during start-up" in r_bad.stderr,
          "agentprune eval --gpu-mem-limit forty: the local pruner-svc refuses it (rc %d, %r)" %
          (r_bad.returncode, r_bad.stderr.strip()))
    r_ok = subprocess.run(base + ["--device", "cpu", "--gpu-mem-limit", "1G"], capture_output=True, text=True,
                          env=env, timeout=300)
    j_ok = json.loads(r_ok.stdout) if r_ok.returncode == 0 else None
    check(j_ok is not None and j_cpu is not None and j_ok["ppl"] == j_cpu["ppl"],
          "agentprune eval --gpu-mem-limit 1G --device cpu runs unchanged (%s)" % (r_ok.stdout.strip() or
                                                                                r_ok.stderr.strip()))

    # a malformed limit is refused at start, naming the flag
    bad = subprocess.run([pruner_bin, "--data-roots", data, "--gpu-mem-limit", "forty", "--listen", "127.0.0.1:0",
                          "--data-dir", os.path.join(work, "store2")], capture_output=True, text=True, timeout=60)
    check(bad.returncode == 2 and "--gpu-mem-limit" in bad.stderr, "pruner-svc --gpu-mem-limit forty: exit %d, %r" %
          (bad.returncode, bad.stderr.strip()))

    shutil.rmtree(work, ignore_errors=True)
    print("%d passed, %d failed" % (checks - failures, failures), flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
