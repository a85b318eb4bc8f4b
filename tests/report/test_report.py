"""report.html: structure, escaping of untrusted text, and a real render in
headless Chromium with no console errors (a screenshot is kept)."""
import json, os, re, subprocess, sys, tempfile

render, out_dir = sys.argv[1], sys.argv[2]
os.makedirs(out_dir, exist_ok=True)
passed = failed = 0

def check(cond, what):
    global passed, failed
    if cond:
        passed += 1
    else:
        failed += 1
        print("FAIL", what)

kinds = ["q", "k", "v", "o", "gate", "up", "down"]
layers = [{"name": f"model.layers.{b}.{k}", "kind": k, "block": b, "params": 4096,
           "sparsity": round(0.3 + 0.05 * b + 0.01 * i, 4)} for b in range(5) for i, k in enumerate(kinds)]
evil = "<script>alert(1)</script> & \"quoted\" \x01"
doc = {
    "agentprune_version": "0.1.0",
    "job": {"model_dir": "/data/m<odel>", "policy": "rule", "structure": "unstructured", "target_sparsity": 0.5},
    "result": {"dense_ppl": 10.0, "ppl": 12.5, "dense_test_ppl": 11.0, "test_ppl": 13.0, "sparsity": 0.5012,
               "iterations": 6, "rollbacks": 1, "stop_reason": "target_reached", "wall_s": 12.3},
    "layers": layers,
    "trajectory": [{"iteration": i + 1, "policy": "llm", "fallback": i == 2, "decision": [{"name": "x", "target_sparsity": 0.1}],
                    "ppl": 10 + i * (5 if i == 3 else 0.5), "accepted": i != 3, "accepted_ppl": 10 + i * 0.5,
                    "global_sparsity": 0.1 * (i + 1), "rationale": evil} for i in range(6)],
    "profile": [dict(l, s=0.01, g=1e-4, z_s=0.1, z_g=-0.2, rho=l["sparsity"]) for l in layers],
    # (the last iteration becomes a probe iteration below)
    "baselines": [{"policy": "wanda", "sparsity": 0.5, "ppl": 13.0, "test_ppl": 14.0},
                  {"policy": "owl", "sparsity": 0.5, "ppl": 12.9, "test_ppl": 13.8}],
}
doc["trajectory"][5].update(decision=[], probes=[{"label": "b1/owl/<mlp>", "ppl": 12.34, "global_sparsity": 0.6},
                                                 {"label": "b1/uniform/even", "ppl": 12.5, "global_sparsity": 0.6}])
src = os.path.join(out_dir, "agentprune.json")
html_path = os.path.join(out_dir, "report.html")
json.dump(doc, open(src, "w"))
r = subprocess.run([render, src, html_path])
check(r.returncode == 0, "render_report exits 0")
html = open(html_path, encoding="utf-8").read()
check("<script" not in html, "no script tag survives (untrusted rationale is escaped)")
check("&lt;script&gt;alert(1)&lt;/script&gt;" in html, "rationale shown escaped")
check("\x01" not in html, "control characters dropped")
check("m&lt;odel&gt;" in html, "model path escaped")
check(html.count("<rect") == 35, "heat map has one cell per layer (5 blocks x 7 kinds)")
check(len(re.findall(r'class="rb"', html)) >= 1 and "rolled back" in html, "rollback marked in the plot")
check(html.count("<circle") == 5, "five accepted iterations plotted")
check('id="baselines"' in html and "wanda" in html and "owl" in html, "baselines table")
check('id="profile"' in html and html.count("<tr><td>model.layers.") == 35, "profile table rows")
check("(fallback)" in html, "fallback decisions are shown")
check("measured plans" in html and "b1/owl/&lt;mlp&gt; 12.3400;" in html and "b1/uniform/even 12.5000;" in html,
      "a probe iteration lists its plans' rollout ppl, escaped")

# Broken documents still render (missing keys are absent, not fatal).
json.dump({"job": {}}, open(src, "w"))
check(subprocess.run([render, src, os.path.join(out_dir, "empty.html")]).returncode == 0, "sparse document renders")
json.dump([1, 2], open(src, "w"))
check(subprocess.run([render, src, os.path.join(out_dir, "bad.html")], stderr=subprocess.DEVNULL).returncode != 0,
      "non-object document refused")

chromium = next((c for c in ["/usr/bin/chromium", "/usr/bin/chromium-browser"] if os.path.exists(c)), None)
if chromium:
    shot = os.path.join(out_dir, "report.png")
    with tempfile.TemporaryDirectory() as prof:
        r = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                            "--disable-background-networking", "--disable-component-update", "--disable-sync",
                            f"--user-data-dir={prof}", "--enable-logging=stderr", "--v=0",
                            "--window-size=1200,2400", f"--screenshot={shot}", "file://" + os.path.abspath(html_path)],
                           capture_output=True, text=True, timeout=120)
    console = [l for l in r.stderr.splitlines() if "CONSOLE" in l or "Uncaught" in l]
    check(r.returncode == 0, "chromium rendered the page: " + r.stderr[-500:])
    check(not console, "no console errors: %s" % console)
    check(os.path.exists(shot) and os.path.getsize(shot) > 10000, "screenshot saved: " + shot)
else:
    failed += 1
    print("FAIL chromium not installed (scripts/install-deps.sh installs it)")
print(f"{passed} passed, {failed} failed")
sys.exit(1 if failed else 0)
