#!/usr/bin/env bash
# Quality benchmark grid (issues "Never lose" and "A robust classifier
# worth shipping") in parallel shards that share one output folder, for a
# machine lent for a few minutes at a time.
#
#   bash benches/quality.sh OUT_DIR [flags for `h2e bench quality`]
#   e.g. H2E_SHARDS=8 H2E_TIME_LIMIT=540 bash benches/quality.sh q --seeds 0,1 --classifier --device wgpu
#
# Starts $H2E_SHARDS (default 8) processes of `h2e bench quality -o OUT_DIR
# --shard K/N ...` ($H2E_BIN, default target/release/h2e), stops them after
# $H2E_TIME_LIMIT seconds when set, and then writes the combined
# results.json, results.md and summary.md of everything finished so far
# (`--report-only`). Every finished draw-and-method pair is saved under
# OUT_DIR/draws/ as soon as it ends, so running the same command again (on
# the same or another machine, with OUT_DIR/draws/*.json copied along)
# resumes where it stopped. Per-shard logs go to OUT_DIR/logs/.
set -euo pipefail
out="${1:?usage: benches/quality.sh OUT_DIR [bench quality flags]}"
shift
bin="${H2E_BIN:-target/release/h2e}"
shards="${H2E_SHARDS:-8}"
limit="${H2E_TIME_LIMIT:-}"
mkdir -p "$out/logs"
pids=()
for k in $(seq 0 $((shards - 1))); do
  cmd=("$bin" bench quality -o "$out" --shard "$k/$shards" "$@")
  if [ -n "$limit" ]; then
    cmd=(timeout "$limit" "${cmd[@]}")
  fi
  "${cmd[@]}" > "$out/logs/shard-$k.md" 2> "$out/logs/shard-$k.log" &
  pids+=("$!")
done
failed=0
for p in "${pids[@]}"; do
  wait "$p" || failed=$((failed + 1))
done
echo "$failed of $shards shards stopped early or failed (see $out/logs/)" >&2
"$bin" bench quality -o "$out" --report-only "$@" > /dev/null
cat "$out/summary.md"
