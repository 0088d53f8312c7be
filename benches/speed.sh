#!/usr/bin/env bash
# Speed benchmark (issue "Benchmarks", item 2): h2e's small-CNN training step
# and inference against the same model in PyTorch, in one go on this machine.
#
#   bash benches/speed.sh [OUT_DIR]
#
# Installs torch from PyPI into a throwaway virtualenv (reused from
# $H2E_TORCH_VENV when set; $H2E_PYTHON names a python that already has
# torch instead), runs benches/pytorch_speed.py on the CPU (and on CUDA when
# torch sees a GPU) and `h2e bench speed` (built with `cargo run --release`,
# or $H2E_BIN when set), and writes both JSON results plus a ratio summary
# to OUT_DIR (default: bench-results/). Extra arguments for `h2e bench
# speed` can go in $H2E_SPEED_ARGS.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-bench-results}"
mkdir -p "$out"
if [ -n "${H2E_PYTHON:-}" ]; then
  py="$H2E_PYTHON"
else
  venv="${H2E_TORCH_VENV:-$(mktemp -d)/venv}"
  if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q torch
  fi
  py="$venv/bin/python"
fi
echo "PyTorch (CPU)..." >&2
"$py" benches/pytorch_speed.py > "$out/pytorch.json"
if "$py" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)'; then
  echo "PyTorch (CUDA)..." >&2
  "$py" benches/pytorch_speed.py --device cuda > "$out/pytorch_cuda.json"
fi
echo "h2e..." >&2
# shellcheck disable=SC2086
if [ -n "${H2E_BIN:-}" ]; then
  "$H2E_BIN" bench speed ${H2E_SPEED_ARGS:-} > "$out/h2e.json"
else
  cargo run -q --release -- bench speed ${H2E_SPEED_ARGS:-} > "$out/h2e.json"
fi
python3 - "$out" <<'PY'
import json, os, sys
out = sys.argv[1]
ours = json.load(open(f"{out}/h2e.json"))
refs = {"cpu": json.load(open(f"{out}/pytorch.json"))}
if os.path.exists(f"{out}/pytorch_cuda.json"):
    refs["gpu"] = json.load(open(f"{out}/pytorch_cuda.json"))
best = {}
lines = []
for kind, pt in refs.items():
    t = max(r["train_img_s"] for r in pt["results"].values())
    i = max(r["infer_img_s"] for r in pt["results"].values())
    best[kind] = (t, i)
    where = pt.get("gpu", "CPU, %d threads" % pt["threads"])
    mem = f", peak GPU memory {pt['peak_gpu_mb']:.0f} MB" if "peak_gpu_mb" in pt else ""
    lines.append(f"PyTorch {pt['torch']} ({where}): train {t:.0f} img/s, inference {i:.0f} img/s (best memory format), peak RSS {pt['peak_rss_mb']:.0f} MB{mem}")
for b in ours["backends"]:
    kind = "cpu" if b["backend"] == "cpu" else "gpu"
    t, i = best.get(kind, best["cpu"])
    against = "PyTorch CUDA" if kind in best and kind == "gpu" else "PyTorch CPU"
    lines.append(
        f"h2e {b['device']}: train {b['train_img_s']:.0f} img/s (ratio {b['train_img_s']/t:.2f} vs {against}), "
        f"inference {b['infer_img_s']:.0f} img/s (ratio {b['infer_img_s']/i:.2f}), peak RSS {ours['peak_rss_mb']:.0f} MB, "
        f"{ours.get('cpu_threads', '?')} CPU threads, {ours.get('allocator', 'system')} allocator"
    )
open(f"{out}/summary.txt", "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
PY
