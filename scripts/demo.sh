#!/usr/bin/env bash
# The main job for a newcomer: installs what is missing, builds, and prunes
# the shared stories260K model to 50% sparsity with the agent-guided loop
# (rule policy), beside the uniform Wanda and OWL baselines, into out/.
# The window counts and tau are those of bench/quality.sh: a few minutes on
# two cores (the DESIGN.md defaults, 128 calibration windows and tau 0.05,
# are meant for GPU workers).
# Any argument replaces the defaults and goes straight to `agentprune prune`.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
bash scripts/install-deps.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release -DAP_BUILD_TESTS=OFF >/dev/null
cmake --build build -j"$(nproc)" >/dev/null
data="$root/../shared/data"
if [ "$#" -eq 0 ]; then
  set -- --model "$data/stories260K-hf-derived" \
         --calib "$data/tinystories/calib.txt" --eval "$data/tinystories/dev.txt" \
         --test "$data/tinystories/devtest.txt" \
         --sparsity 0.5 --policy rule --compare wanda,owl \
         --calib-windows 32 --eval-windows 16 --grad-windows 4 --tau 0.1 --max-iterations 120 \
         --out "$root/out/stories260K-rule-50"
  rm -rf "$root/out/stories260K-rule-50"
  mkdir -p "$root/out"
fi
exec "$root/build/cli/agentprune" prune "$@"
