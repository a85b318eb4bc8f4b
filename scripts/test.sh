#!/usr/bin/env bash
# The test command (README, .ci/run): installs what is missing, builds, runs
# every test under ctest, then again with AddressSanitizer+UBSan, and ends
# with one line "N passed, N failed" over both runs.
set -uo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
jobs="${AP_JOBS:-$(nproc)}"

bash scripts/install-deps.sh || { echo "dependency installation failed"; echo "0 passed, 1 failed"; exit 1; }

passed=0; failed=0
run_suite() { # name build-dir cmake-args... ; ctest label filter via AP_CTEST_ARGS_<name>
  local name="$1" dir="$2"; shift 2
  echo "== $name: configure and build ($dir)"
  if ! cmake -S . -B "$dir" "$@" >"$dir.configure.log" 2>&1; then
    cat "$dir.configure.log"; failed=$((failed+1)); return
  fi
  if ! cmake --build "$dir" -j"$jobs" >"$dir.build.log" 2>&1; then
    grep -E "error|Error" "$dir.build.log" | head -40; failed=$((failed+1)); return
  fi
  echo "== $name: ctest"
  local extra_var="AP_CTEST_ARGS_${name}"
  ctest --test-dir "$dir" --output-on-failure -j"$jobs" --timeout 600 ${!extra_var:-} 2>&1 | tee "$dir.ctest.log"
  local p f
  p=$(grep -Eo '[0-9]+ tests failed out of [0-9]+' "$dir.ctest.log" | tail -1 | awk '{print $6-$1}')
  f=$(grep -Eo '[0-9]+ tests failed out of [0-9]+' "$dir.ctest.log" | tail -1 | awk '{print $1}')
  if [ -z "$p" ]; then
    if grep -q "No tests were found" "$dir.ctest.log"; then p=0; f=0; else p=0; f=1; fi
  fi
  passed=$((passed+p)); failed=$((failed+f))
}

mkdir -p build-ci
# Release: the flags the demo and the container build use (-O3 finds
# maybe-uninitialized cases that -O2 does not, and warnings are errors).
run_suite release build-ci/release -DCMAKE_BUILD_TYPE=Release
# Sanitizer run: every test again under ASan+UBSan (with LeakSanitizer),
# except those labelled slow (whole-product runs), golden (torch comparisons
# of the same engine code the kernel and model tests cover), valgrind (it
# cannot run ASan binaries) and gpu.
export ASAN_OPTIONS="detect_leaks=1:abort_on_error=0:strict_string_checks=1"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
AP_CTEST_ARGS_asan="-LE slow|golden|valgrind|gpu" run_suite asan build-ci/asan -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DAP_SANITIZE=ON -DAP_CUDA=OFF

echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
