#!/usr/bin/env bash
# Multi-GPU benchmark of gptlab on one host (written for 2 or 4 H200s).
#
#   1. gpt2 (124M), 1 GPU, then DDP on NGPU GPUs, same micro-batch per GPU:
#      per-GPU tokens/s of DDP against the 1-GPU figure (target >= 92%).
#   2. gpt2-xl (1.5B), FSDP2 on NGPU GPUs, bf16 params / fp32 reduce: tokens/s, MFU,
#      peak memory per GPU; writes a DCP checkpoint plus a single-file export.
#   3. Resume that gpt2-xl checkpoint on 1 GPU (a different GPU count): DCP reshards it.
#
# Data are random tokens (vocab 50257) written with gptlab's token-file writer: speed does
# not depend on what the tokens say, and the machine has no network.
#
#   bash benchmarks/bench_multigpu.sh [OUT_DIR]        (NGPU=2 by default; NGPU=4 for 4)
#   SMALL=1 bash benchmarks/bench_multigpu.sh /tmp/x  (CPU dry run: tiny models, gloo)
set -uo pipefail

OUT=${1:-${OUT:-benchmarks/results/multigpu}}
NGPU=${NGPU:-2}
PY=${PY:-python3}
WORK=${WORK:-/tmp/gptlab_bench_multigpu}
mkdir -p "$OUT" "$WORK"
LOG="$OUT/bench.log"
# NVLink multicast (NVLS) can take a shared host's GPUs out of service: keep it off.
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=${OMP_NUM_THREADS:-4}

if [ "${SMALL:-0}" = 1 ]; then
  SMALL_ARGS=(--n_layer 2 --n_head 2 --n_embd 64 --block_size 64 --device cpu --dtype float32)
  B124=4; BXL=2; S124=6; SXL=4; COMPILE=none; NTOK=200000
  T_1GPU=${T_1GPU:-600}; T_DDP=${T_DDP:-600}; T_FSDP=${T_FSDP:-600}; T_RESUME=${T_RESUME:-600}  # slow, shared CPUs
else
  SMALL_ARGS=()
  B124=${B124:-16}; BXL=${BXL:-8}; S124=${S124:-50}; SXL=${SXL:-12}; COMPILE=${COMPILE:-default}; NTOK=20000000
fi

{
  date -u +"start %Y-%m-%dT%H:%M:%SZ"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || echo "no nvidia-smi"
  $PY -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, "gpus", torch.cuda.device_count())'
} 2>&1 | tee "$LOG"

# Random token data through the same writer `gptlab prepare` uses (meta.json + .bin).
$PY - "$WORK/data" "$NTOK" <<'EOF' 2>&1 | tee -a "$LOG"
import sys
from pathlib import Path

import numpy as np

from gptlab.data import tokens as T

out, n = Path(sys.argv[1]), int(sys.argv[2])
out.mkdir(parents=True, exist_ok=True)
rng = np.random.default_rng(0)


def split(s, m):  # one document per split
    w = T.SplitWriter(out, s, np.uint16)
    w.append(rng.integers(0, 50257, size=m), np.array([m]))
    return w.finish()


splits = {s: split(s, m) for s, m in (("train", n), ("val", 200_000))}
# Random GPT-2 ids: tokenizer kind gpt2 (meta.json accepts only real kinds); the text is noise.
T.write_meta(out, {"tokenizer": {"kind": "gpt2"}, "vocab_size": 50257, "dtype": "uint16", "eot_id": None,
                   "splits": splits, "source": {"kind": "random", "seed": 0}})
print(f"random data: {n:,} train tokens in {out}")
EOF

COMMON=(--dataset "$WORK/data" --vocab_size 50257 --gradient_accumulation_steps 1 --warmup_iters 5
        --eval_iters 2 --eval_interval 100000 --always_save_checkpoint false)
TRAIN1=("$PY" -m gptlab train)
TRAINN=("$PY" -m torch.distributed.run --standalone --nproc_per_node="$NGPU" -m gptlab train)
ok() { echo "== $1: exit $2" | tee -a "$LOG"; }

# 1. gpt2 124M: one GPU, then DDP; the micro-batch per GPU is the same in both. The last
#    logged interval (10 steps) is the measurement; the first one includes compilation.
G124=(gpt2 "${COMMON[@]}" --batch_size "$B124" --max_iters "$S124" --lr_decay_iters "$S124" --log_interval 10
      --log_metrics_every 10 --compile "$COMPILE" "${SMALL_ARGS[@]}")
timeout ${T_1GPU:-110} "${TRAIN1[@]}" "${G124[@]}" --out_dir "$WORK/gpt2_1gpu" --overwrite true 2>&1 | tee -a "$LOG"
ok gpt2_1gpu "${PIPESTATUS[0]}"
timeout ${T_DDP:-125} "${TRAINN[@]}" "${G124[@]}" --parallel ddp --out_dir "$WORK/gpt2_ddp" --overwrite true 2>&1 | tee -a "$LOG"
ok gpt2_ddp "${PIPESTATUS[0]}"

# 2. gpt2-xl 1.5B with FSDP2 (eager: compiling would eat the time budget); it writes a DCP
#    checkpoint and the single-file export at the last step.
GXL=(gpt2-xl "${COMMON[@]}" --batch_size "$BXL" --lr_decay_iters 100 --compile none "${SMALL_ARGS[@]}")
timeout ${T_FSDP:-170} "${TRAINN[@]}" "${GXL[@]}" --parallel fsdp --max_iters "$SXL" --log_interval 4 --log_metrics_every 4 \
  --out_dir "$WORK/xl_fsdp" --overwrite true 2>&1 | tee -a "$LOG"
ok xl_fsdp "${PIPESTATUS[0]}"
cp "$WORK/xl_fsdp/metrics.jsonl" "$WORK/xl_fsdp_metrics_before_resume.jsonl" 2>/dev/null
ls -la "$WORK/xl_fsdp/checkpoints" 2>&1 | tee -a "$LOG"

# 3. Resume that NGPU-rank FSDP checkpoint on 1 GPU (same global batch through accumulation).
timeout ${T_RESUME:-120} "${TRAIN1[@]}" "${GXL[@]}" --parallel fsdp --gradient_accumulation_steps "$NGPU" \
  --max_iters $((SXL + 2)) --log_interval 1 --log_metrics_every 1 --out_dir "$WORK/xl_fsdp" --resume true 2>&1 | tee -a "$LOG"
ok xl_resume_1gpu "${PIPESTATUS[0]}"

# Summary: the last logged interval of each run (the first ones include compilation/warm-up).
$PY - "$WORK" "$OUT" "$NGPU" <<'EOF' 2>&1 | tee -a "$LOG"
import json, shutil, sys
from pathlib import Path

work, out, ngpu = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
files = {"gpt2_1gpu": work / "gpt2_1gpu/metrics.jsonl", "gpt2_ddp": work / "gpt2_ddp/metrics.jsonl",
         "xl_fsdp": work / "xl_fsdp_metrics_before_resume.jsonl", "xl_resume_1gpu": work / "xl_fsdp/metrics.jsonl"}
worlds = {"gpt2_1gpu": 1, "gpt2_ddp": ngpu, "xl_fsdp": ngpu, "xl_resume_1gpu": 1}
res = {"ngpu": ngpu}
for run, path in files.items():
    rows = [json.loads(l) for l in path.read_text().splitlines()] if path.is_file() else []
    train = [r for r in rows if r.get("kind") == "train"]
    if not train:
        res[run] = {"error": "no metrics (see bench.log)"}
        continue
    shutil.copyfile(path, out / f"metrics_{run}.jsonl")
    last, w = train[-1], worlds[run]
    res[run] = {"world": w, "step": last["step"], "loss": last["loss"], "tokens_per_sec": last["tokens_per_sec"],
                "tokens_per_sec_per_gpu": last["tokens_per_sec"] / w, "mfu": last.get("mfu"),
                "peak_mem_gb": last.get("peak_mem_gb"), "ms_per_step": last["ms_per_step"]}
    if run == "xl_resume_1gpu":
        before = res.get("xl_fsdp", {}).get("step", 0)
        res[run]["steps_after_resume"] = [r["step"] for r in train if r["step"] > before]
        res[run]["losses_after_resume"] = [r["loss"] for r in train if r["step"] > before]
a, b = res.get("gpt2_1gpu", {}), res.get("gpt2_ddp", {})
if "tokens_per_sec_per_gpu" in a and "tokens_per_sec_per_gpu" in b:
    res["ddp_per_gpu_efficiency"] = b["tokens_per_sec_per_gpu"] / a["tokens_per_sec_per_gpu"]
(out / "summary.json").write_text(json.dumps(res, indent=2) + "\n")
print(json.dumps(res, indent=2))
EOF
date -u +"end %Y-%m-%dT%H:%M:%SZ" | tee -a "$LOG"
