#!/usr/bin/env bash
# Quality table of issue 5: dense, magnitude, Wanda, OWL and the agent's rule
# policy at the same global sparsity, on text the loop never sees.
# Calibrate on tinystories/calib.txt, check on dev.txt, report on devtest.txt.
# The baselines run inside each rule job (--compare), so they share the
# engine, the windows and the measured sparsity.
#
#   bench/quality.sh [build-dir]        env: MODELS, SPARSITIES, TAU, MAXIT, CW, EW, GW
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
build="${1:-$root/build}"
data="${AP_DATA_DIR:-$root/../shared/data}"
cli="$build/cli/agentprune"
out="${OUT_DIR:-$root/out/quality}"
MODELS="${MODELS:-stories260K-hf-derived tinyqwen3-a}"
SPARSITIES="${SPARSITIES:-0.5 0.7}"
mkdir -p "$out"
printf '%-24s %5s %8s %9s %8s %8s %8s %10s %8s %5s %4s %7s\n' model target dense magnitude wanda owl rule rule/wanda rule/owl iters rb wall_s
for m in $MODELS; do
  for s in $SPARSITIES; do
    dir="$out/$m-$s"
    rm -rf "$dir"
    args=(--model "$data/$m" --calib "$data/tinystories/calib.txt" --eval "$data/tinystories/dev.txt"
          --test "$data/tinystories/devtest.txt" --sparsity "$s" --policy rule --compare magnitude,wanda,owl
          --out "$dir" --json)
    [ -n "${TAU:-}" ] && args+=(--tau "$TAU")
    [ -n "${MAXIT:-}" ] && args+=(--max-iterations "$MAXIT")
    [ -n "${CW:-}" ] && args+=(--calib-windows "$CW")
    [ -n "${EW:-}" ] && args+=(--eval-windows "$EW")
    [ -n "${GW:-}" ] && args+=(--grad-windows "$GW")
    start=$(date +%s)
    "$cli" prune "${args[@]}" >"$dir.json" 2>"$dir.log" || { echo "$m $s: job failed (see $dir.log)"; continue; }
    end=$(date +%s)
    /usr/bin/python3 - "$dir/agentprune.json" "$m" "$s" "$((end - start))" <<'PY'
import json, sys
doc = json.load(open(sys.argv[1])); r = doc["result"]
b = {x["policy"]: x for x in doc.get("baselines", [])}
t = lambda p: b.get(p, {}).get("test_ppl", float("nan"))
rule = r.get("test_ppl", float("nan"))
print("%-24s %5s %8.3f %9.3f %8.3f %8.3f %8.3f %10.3f %8.3f %5d %4d %7s" % (
    sys.argv[2], sys.argv[3], r.get("dense_test_ppl", float("nan")), t("magnitude"), t("wanda"), t("owl"), rule,
    rule / t("wanda"), rule / t("owl"), r["iterations"], r["rollbacks"], sys.argv[4]))
print("  reached sparsity %.4f (stop: %s); baselines pruned to that target reach %s (whole weights per row)" % (
    r["sparsity"], r["stop_reason"], ", ".join("%s %.4f" % (p, b[p]["sparsity"]) for p in sorted(b))))
PY
  done
done
