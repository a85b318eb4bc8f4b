"""agentprune prune --policy llm --llm-url URL, end to end: the CLI starts its
own pruner-svc and agent-svc, the agent asks a scripted OpenAI-protocol
server (tests/llm/mock_llm_server.py, 'strategy' scenario), and the job must
finish with every decision coming from the model, as the server's request
log and the job's agentprune.json both show."""
import json, os, shutil, subprocess, sys, tempfile

cli, mock, data = sys.argv[1], sys.argv[2], sys.argv[3]
passed = failed = 0

def check(cond, what):
    global passed, failed
    if cond:
        passed += 1
    else:
        failed += 1
        print("FAIL", what)

work = tempfile.mkdtemp(prefix="ap-llm-e2e-")
log = os.path.join(work, "requests.jsonl")
srv = subprocess.Popen([sys.executable, mock, "--log", log], stdout=subprocess.PIPE, text=True)
try:
    port = int(srv.stdout.readline().split()[1])
    out = os.path.join(work, "out")
    env = dict(os.environ, TMPDIR=work)
    r = subprocess.run([cli, "prune", "--policy", "llm", "--llm-url", f"http://127.0.0.1:{port}", "--llm-model", "mock",
                        "--model", f"{data}/tinyqwen3-a", "--calib", f"{data}/tinystories/calib.txt",
                        "--eval", f"{data}/tinystories/dev.txt", "--sparsity", "0.3", "--out", out,
                        "--ctx", "64", "--calib-windows", "4", "--eval-windows", "4", "--grad-windows", "2",
                        "--tau", "0.5", "--json"], capture_output=True, text=True, timeout=600, env=env)
    check(r.returncode == 0, "prune --policy llm exits 0: " + r.stderr[-800:])
    summary = json.loads(r.stdout) if r.returncode == 0 else {}
    for key in ["dense_ppl", "ppl", "sparsity", "iterations", "rollbacks", "stop_reason", "out", "layers"]:
        check(key in summary, f"--json summary has '{key}'")
    check(summary.get("stop_reason") == "target_reached", "the job reached its target: %s" % summary.get("stop_reason"))
    check(abs(summary.get("sparsity", 0) - 0.3) <= 0.005, "global sparsity within 0.005 of 0.3")
    doc = json.load(open(os.path.join(out, "agentprune.json")))
    traj = doc["trajectory"]
    check(len(traj) == summary.get("iterations"), "one trajectory entry per iteration")
    check(all(e["policy"] == "llm" and not e["fallback"] for e in traj), "every decision came from the model")
    reqs = [json.loads(l) for l in open(log)]
    chats = [q for q in reqs if q["path"].endswith("/chat/completions")]
    check(len(chats) == len(traj), "one model request per iteration (%d vs %d)" % (len(chats), len(traj)))
    body = chats[0]["body"] if chats else {}
    msgs = body.get("messages", [])
    check(len(msgs) >= 2 and msgs[0]["role"] == "system", "system prompt first")
    check(any("model.layers.0" in m.get("content", "") or "0.q" in m.get("content", "") for m in msgs[1:]),
          "the user prompt carries the profile table")
    check("response_format" in body, "JSON schema output requested")
    check(doc["agent_usage"]["requests"] >= len(traj), "usage recorded in the report")
    check(os.path.exists(os.path.join(out, "report.html")), "report.html written")
    leftovers = [d for d in os.listdir(work) if d.startswith("agentprune-")]
    check(not leftovers, "the CLI removed its working folder: %s" % leftovers)
finally:
    srv.terminate()
    srv.wait()
    shutil.rmtree(work, ignore_errors=True)
print(f"{passed} passed, {failed} failed")
sys.exit(1 if failed else 0)
