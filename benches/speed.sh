#!/usr/bin/env bash
# Speed benchmark (issue "Benchmarks", item 2): h2e's small-CNN training step
# and inference against the same model in PyTorch, in one go on this machine.
#
#   bash benches/speed.sh [OUT_DIR]
#
# Installs torch from PyPI into a throwaway virtualenv (reused from
# $H2E_TORCH_VENV when set), runs benches/pytorch_speed.py and
# `cargo run --release --example bench_speed`, and writes both JSON results
# plus a ratio summary to OUT_DIR (default: bench-results/).
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-bench-results}"
mkdir -p "$out"
venv="${H2E_TORCH_VENV:-$(mktemp -d)/venv}"
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q torch
fi
echo "PyTorch (CPU)..." >&2
"$venv/bin/python" benches/pytorch_speed.py > "$out/pytorch.json"
echo "h2e..." >&2
cargo run -q --release --example bench_speed > "$out/h2e.json"
python3 - "$out" <<'PY'
import json, sys
out = sys.argv[1]
pt = json.load(open(f"{out}/pytorch.json"))
ours = json.load(open(f"{out}/h2e.json"))
best_t = max(r["train_img_s"] for r in pt["results"].values())
best_i = max(r["infer_img_s"] for r in pt["results"].values())
lines = [f"PyTorch {pt['torch']} ({pt['threads']} threads): train {best_t:.0f} img/s, inference {best_i:.0f} img/s (best memory format), peak RSS {pt['peak_rss_mb']:.0f} MB"]
for b in ours["backends"]:
    lines.append(
        f"h2e {b['backend']}: train {b['train_img_s']:.0f} img/s (ratio {b['train_img_s']/best_t:.2f}), "
        f"inference {b['infer_img_s']:.0f} img/s (ratio {b['infer_img_s']/best_i:.2f}), peak RSS {ours['peak_rss_mb']:.0f} MB"
    )
open(f"{out}/summary.txt", "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
PY
