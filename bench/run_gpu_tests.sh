#!/usr/bin/env bash
# Runs the GPU test binaries of an unpacked bundle (bench/pack_gpu_bundle.sh) on the GPU machine,
# one after another, and ends with one line per binary (passed / failed / skipped counts).
# Usage: bench/run_gpu_tests.sh DIR [binary...]   (default: every *_test in DIR/bin)
# HKV_TEST_TIMEOUT=S stops a binary after S seconds (exit 124 in the table; default: no limit).
set -uo pipefail
dir="$1"; shift
export LD_LIBRARY_PATH="$dir/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export HKV_SOURCE_DIR="${HKV_SOURCE_DIR:-$dir}"
if [ $# -eq 0 ]; then
  set -- $(cd "$dir/bin" && ls -- *_test)
fi
summary=()
failed=0
for t in "$@"; do
  log="$(mktemp)"
  if [ "${HKV_TEST_TIMEOUT:-0}" -gt 0 ]; then
    timeout "$HKV_TEST_TIMEOUT" "$dir/bin/$t" --gtest_brief=1 >"$log" 2>&1
  else
    "$dir/bin/$t" --gtest_brief=1 >"$log" 2>&1
  fi
  rc=$?
  pass=$(grep -oE '\[  PASSED  \] [0-9]+' "$log" | grep -oE '[0-9]+$' || echo 0)
  skip=$(grep -oE '\[  SKIPPED \] [0-9]+' "$log" | grep -oE '[0-9]+$' | head -1 || echo 0)
  # One "[  FAILED  ] Suite.Name (N ms)" line per failed test (--gtest_brief prints no count).
  fail=$(grep -E '^\[  FAILED  \] [^ ]+ \([0-9]+ ms\)' "$log" | sort -u | wc -l)
  if [ "$rc" -ne 0 ]; then
    failed=1
    tail -40 "$log"
  fi
  summary+=("$(printf '| %s | %s | %s | %s | %s |' "$t" "${pass:-0}" "${fail:-0}" "${skip:-0}" "$rc")")
  rm -f "$log"
done
echo "| test binary | passed | failed | skipped | exit |"
echo "|---|---|---|---|---|"
printf '%s\n' "${summary[@]}"
exit "$failed"
