"""Kubernetes manifests: every document parses, the kustomize overlays point
at the base, GPU workers ask for nvidia.com/gpu in limits, gRPC probes use a
numeric container port that exists, and every flag in a container's args is
one the service really accepts (its --help), so the manifests cannot drift
from the code."""
import glob, os, re, subprocess, sys
import yaml

root, pruner, agent = sys.argv[1], sys.argv[2], sys.argv[3]
passed = failed = 0

def check(cond, what):
    global passed, failed
    if cond:
        passed += 1
    else:
        failed += 1
        print("FAIL", what)

helps = {}
for name, binary in (("pruner", pruner), ("agent", agent)):
    out = subprocess.run([binary, "--help"], capture_output=True, text=True).stdout
    helps[name] = set(re.findall(r"--[a-z][a-z0-9-]*", out))
    check(len(helps[name]) > 5, f"{name} --help lists its flags")

docs = []
for path in sorted(p for p in glob.glob(os.path.join(root, "deploy", "base", "*.yaml")) if not p.endswith("kustomization.yaml")):
    for d in yaml.safe_load_all(open(path)):
        if d:
            docs.append((path, d))
check(len(docs) >= 5, "base manifests parse")
kinds = {(d["kind"], d["metadata"]["name"]) for _, d in docs}
check(("StatefulSet", "agentprune-agent") in kinds, "agent StatefulSet")
check(("StatefulSet", "agentprune-pruner") in kinds, "pruner StatefulSet")
check(("Service", "agentprune-agent") in kinds, "agent Service")

for path, d in docs:
    if d["kind"] != "StatefulSet":
        continue
    name = d["metadata"]["name"]
    spec = d["spec"]["template"]["spec"]
    check(d["spec"]["selector"]["matchLabels"].items() <= d["spec"]["template"]["metadata"]["labels"].items(),
          f"{name}: selector matches the pod labels")
    for c in spec["containers"]:
        ports = {p["containerPort"] for p in c.get("ports", [])}
        for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
            if probe in c:
                port = c[probe]["grpc"]["port"]
                check(isinstance(port, int) and port in ports, f"{name}: {probe} on a numeric container port")
        which = "pruner" if "pruner" in name else "agent"
        flags = [a for a in c.get("args", []) if a.startswith("--")]
        for f in flags:
            check(f in helps[which], f"{name}: {f} is a flag of {which}-svc")
        listen = c["args"][c["args"].index("--listen") + 1]
        check(listen.startswith("0.0.0.0:") and int(listen.split(":")[1]) in ports,
              f"{name}: listens on all interfaces at its container port (probes reach the pod IP)")
        if which == "pruner":
            lim = c["resources"]["limits"]
            check(lim.get("nvidia.com/gpu") == 1, "pruner: one GPU in limits")
            check("nvidia.com/gpu" not in c["resources"].get("requests", {}) or
                  c["resources"]["requests"]["nvidia.com/gpu"] == lim["nvidia.com/gpu"], "GPU requests equal limits")
            tol = spec.get("tolerations", [])
            check(any(t.get("key") == "nvidia.com/gpu" for t in tol), "pruner tolerates the GPU taint")
    check(d["spec"].get("replicas", 1) >= 1, f"{name}: replicas")
    if name == "agentprune-agent":
        check(d["spec"]["replicas"] == 1, "agent: exactly one replica (LMDB is single-writer)")
        check(d["spec"]["volumeClaimTemplates"][0]["spec"]["accessModes"] == ["ReadWriteOnce"], "agent: RWO volume")

for overlay in glob.glob(os.path.join(root, "deploy", "overlays", "*", "kustomization.yaml")):
    k = yaml.safe_load(open(overlay))
    bases = k.get("bases", []) + k.get("resources", [])
    check(bases and all(os.path.isdir(os.path.join(os.path.dirname(overlay), b)) for b in bases),
          f"{overlay}: its base exists")
    for p in k.get("patches", []):
        ops = yaml.safe_load(p["patch"])
        check(isinstance(ops, list) and all("op" in o and "path" in o for o in ops), f"{overlay}: JSON6902 patch")
print(f"{passed} passed, {failed} failed")
sys.exit(1 if failed else 0)
