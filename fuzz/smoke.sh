#!/usr/bin/env bash
# The ctest smoke test of one fuzz target (fuzz/CMakeLists.txt):
#   smoke.sh FUZZER CORPUS WORK SECONDS
# replays every seed in CORPUS (they must all pass), then fuzzes for
# SECONDS with WORK (emptied first) as the writable corpus and CORPUS as
# read-only seeds. Crash inputs land in WORK/crashes/.
set -euo pipefail
fuzzer=$1 corpus=$2 work=$3 seconds=$4
rm -rf "$work"
mkdir -p "$work/corpus" "$work/crashes"
"$fuzzer" -artifact_prefix="$work/crashes/" "$corpus"/*
"$fuzzer" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=4096 \
  -artifact_prefix="$work/crashes/" -print_final_stats=1 \
  "$work/corpus" "$corpus"
