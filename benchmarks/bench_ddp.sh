#!/usr/bin/env bash
# DDP levers on one host: per-GPU tokens/s of gpt2 (124M) under DDP against 1 GPU with the
# same micro-batch and accumulation, for: gradients copied into buckets vs gradients as
# bucket views, bucket size, accumulation 1 vs 4 (all-reduce on the last micro-step only),
# and 2 vs NGPU ranks. Random tokens; torch.compile default; bf16.
#
#   OUT=dir NGPU=4 bash benchmarks/bench_ddp.sh
# Each run has its own timeout; $OUT/ddp_summary.json is rewritten after every run.
set -u
OUT=${OUT:-benchmarks/results/ddp}; NGPU=${NGPU:-4}; PY=${PY:-python3}; WORK=${WORK:-/tmp/gptlab_ddp}
STEPS=${STEPS:-60}; LOGI=${LOGI:-20}
mkdir -p "$OUT" "$WORK"
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=4 PYTHONPATH=.
LOG="$OUT/ddp.log"
{ date -u +"start %Y-%m-%dT%H:%M:%SZ"; nvidia-smi -L; nvidia-smi topo -m; } >>"$LOG" 2>&1
$PY - "$WORK/data" <<'PY' >>"$LOG" 2>&1
import sys
from pathlib import Path
import numpy as np
from gptlab.data import tokens as T
out = Path(sys.argv[1]); out.mkdir(parents=True, exist_ok=True)
rng = np.random.default_rng(0)
def split(s, m):  # one document per split
    w = T.SplitWriter(out, s, np.uint16)
    w.append(rng.integers(0, 50257, size=m), np.array([m]))
    return w.finish()
splits = {s: split(s, m) for s, m in (("train", 20_000_000), ("val", 100_000))}
T.write_meta(out, {"tokenizer": {"kind": "gpt2"}, "vocab_size": 50257, "dtype": "uint16", "eot_id": None,
                   "splits": splits, "source": {"kind": "random", "seed": 0}})
PY
COMMON=(gpt2 --dataset "$WORK/data" --vocab_size 50257 --batch_size 16 --warmup_iters 5 --eval_iters 0 --eval_interval 0
        --always_save_checkpoint false --compile default --dtype bfloat16 --tensorboard false --progress off
        --log_interval "$LOGI" --log_metrics_every "$LOGI")
run() {  # run NAME NPROC TIMEOUT ARGS...
  local name=$1 n=$2 t=$3; shift 3
  echo "=== $(date -u +%H:%M:%S) $name (nproc $n): $*" | tee -a "$LOG"
  if [ "$n" = 1 ]; then
    timeout -k 10 "$t" $PY -m gptlab train "${COMMON[@]}" "$@" --out_dir "$WORK/$name" --overwrite true >>"$LOG" 2>&1
  else
    timeout -k 10 "$t" $PY -m torch.distributed.run --standalone --nproc_per_node="$n" -m gptlab train "${COMMON[@]}" "$@" \
      --out_dir "$WORK/$name" --overwrite true >>"$LOG" 2>&1
  fi
  echo "=== $name rc=$?" | tee -a "$LOG"
  cp "$WORK/$name/metrics.jsonl" "$OUT/m_$name.jsonl" 2>/dev/null
  $PY - "$OUT" <<'PY' | tee -a "$LOG"
import json, re, sys, statistics
from pathlib import Path
out = Path(sys.argv[1]); res = {}
for f in sorted(out.glob("m_*.jsonl")):
    rows = [json.loads(l) for l in f.read_text().splitlines() if l.strip()]
    tr = [r for r in rows if r.get("kind") == "train"][1:]  # the first interval holds the compile
    if not tr:
        continue
    m = re.match(r"ddp(\d+)_", f.stem[2:])
    world = int(m.group(1)) if m else 1  # the run's name says its rank count
    tps = statistics.median(r["tokens_per_sec"] for r in tr)
    res[f.stem[2:]] = {"intervals": len(tr), "tokens_per_sec": tps, "ms_per_step": statistics.median(r["ms_per_step"] for r in tr),
                       "peak_mem_gb": tr[-1].get("peak_mem_gb"), "mfu": tr[-1].get("mfu"), "world": world}
for k, v in res.items():
    v["tokens_per_sec_per_gpu"] = v["tokens_per_sec"] / v["world"]
    base = res.get("1gpu_a4" if "_a4" in k else "1gpu_a1")
    if base and v["world"] > 1:
        v["per_gpu_vs_1gpu"] = v["tokens_per_sec_per_gpu"] / base["tokens_per_sec"]
(out / "ddp_summary.json").write_text(json.dumps(res, indent=1) + "\n")
print(" | ".join(f"{k}: {v['tokens_per_sec_per_gpu']:,.0f}/gpu" + (f" ({100*v['per_gpu_vs_1gpu']:.1f}%)" if "per_gpu_vs_1gpu" in v else "") for k, v in res.items()))
PY
}
A1=(--gradient_accumulation_steps 1 --max_iters "$STEPS" --lr_decay_iters "$STEPS")
A4=(--gradient_accumulation_steps 4 --max_iters $((STEPS / 3)) --lr_decay_iters "$STEPS" --log_interval 5 --log_metrics_every 5)
run 1gpu_a1 1 100 "${A1[@]}"
run ddp${NGPU}_a1_copy "$NGPU" 110 "${A1[@]}" --ddp_bucket_view false
run ddp${NGPU}_a1_view "$NGPU" 110 "${A1[@]}" --ddp_bucket_view true
run ddp${NGPU}_a1_view_b100 "$NGPU" 110 "${A1[@]}" --ddp_bucket_view true --ddp_bucket_mb 100
run 1gpu_a4 1 100 "${A4[@]}"
run ddp${NGPU}_a4_view "$NGPU" 110 "${A4[@]}" --ddp_bucket_view true
[ "$NGPU" -gt 2 ] && run ddp2_a1_view 2 100 "${A1[@]}" --ddp_bucket_view true
date -u +"end %Y-%m-%dT%H:%M:%SZ" >>"$LOG"
