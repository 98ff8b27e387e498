#!/usr/bin/env bash
# Behaviour unchanged: prepare tiny Shakespeare and train a fixed-seed tiny CPU run (a few steps, two
# checkpoints, metrics.jsonl) with the code of git revision REV and with the working tree, at the same
# paths, then compare the token files and meta (bytes), every checkpoint (tensors, exactly) and
# metrics.jsonl and config.json (minus wall-clock fields).
# usage: benchmarks/identical_run.sh [REV] (default b5e6134); PYTHON=... picks the interpreter.
set -euo pipefail
REV=${1:-b5e6134}
PYTHON=${PYTHON:-python}
REPO=$(cd "$(dirname "$0")/.." && pwd)
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$WORK/old"
git -C "$REPO" archive "$REV" gptlab | tar -x -C "$WORK/old"

run_with() {  # $1: folder holding the gptlab package; $2: where the results go
  rm -rf "$WORK/data" "$WORK/run"
  (cd "$WORK" && PYTHONPATH="$1" OMP_NUM_THREADS=1 "$PYTHON" -m gptlab prepare shakespeare_char \
      --out data --no_progress >/dev/null)
  (cd "$WORK" && PYTHONPATH="$1" OMP_NUM_THREADS=1 "$PYTHON" -m gptlab train baby --dataset data \
      --out_dir run --device cpu --dtype float32 --n_layer 1 --n_head 2 --n_embd 32 --block_size 32 \
      --batch_size 4 --max_iters 6 --lr_decay_iters 6 --warmup_iters 2 --eval_interval 3 --eval_iters 2 \
      --checkpoint_interval 3 --keep_last 5 --log_interval 1 --log_metrics_every 1 --seed 7 \
      --num_threads 1 --progress off --tensorboard false >/dev/null)
  mkdir -p "$2"
  mv "$WORK/data" "$2/data"
  mv "$WORK/run" "$2/run"
}

run_with "$WORK/old" "$WORK/before"
run_with "$REPO" "$WORK/after"

"$PYTHON" - "$WORK/before" "$WORK/after" <<'PY'
import json, sys
from pathlib import Path
import torch

# Clock and memory readings, and the place of the packaged text (each revision's own copy).
WALL_CLOCK = {"time_s", "train_time_s", "ms_per_step", "tokens_per_sec", "mfu", "data_wait_share", "peak_mem_gb"}
PACKAGE_PATHS = {"data/meta.json.source.path", "run/data_meta.json.source.path"}
before, after = Path(sys.argv[1]), Path(sys.argv[2])
problems = []

def same(a, b, where):
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        ok = isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
        if not ok:
            problems.append(f"{where}: tensors differ")
    elif isinstance(a, dict) and isinstance(b, dict):
        if set(a) != set(b):
            problems.append(f"{where}: keys differ {sorted(set(a) ^ set(b))}")
        for k in set(a) & set(b):
            if k not in WALL_CLOCK and f"{where}.{k}" not in PACKAGE_PATHS:
                same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b)):
            same(x, y, f"{where}[{i}]")
    elif a != b and not (a != a and b != b):  # NaN == NaN here
        problems.append(f"{where}: {a!r} != {b!r}")

names = sorted(p.relative_to(before).as_posix() for p in before.rglob("*") if p.is_file())
if names != sorted(p.relative_to(after).as_posix() for p in after.rglob("*") if p.is_file()):
    problems.append("the two runs wrote different files")
for name in names:
    a, b = before / name, after / name
    if name.endswith(".pt"):
        same(torch.load(a, weights_only=True), torch.load(b, weights_only=True), name)
    elif name.endswith(".jsonl"):
        ra = [json.loads(l) for l in a.read_text().splitlines()]
        rb = [json.loads(l) for l in b.read_text().splitlines()]
        same(ra, rb, name)
    elif name.endswith(".json"):
        same(json.loads(a.read_text()), json.loads(b.read_text()), name)
    elif name.endswith(".sha256"):  # the checksum of a checkpoint, which holds its train_time_s
        continue
    elif a.read_bytes() != b.read_bytes():
        problems.append(f"{name}: bytes differ")
print(f"compared {len(names)} files: " + ", ".join(names))
if problems:
    print("DIFFERENT:\n  " + "\n  ".join(problems))
    sys.exit(1)
print("IDENTICAL: token files, checkpoints (every tensor), metrics.jsonl and config.json (wall-clock fields aside)")
PY
