#!/usr/bin/env bash
# All GPU measurements of issue 4 in one device call. Usage (repo root, on the GPU machine):
#   OUT=/some/dir bash benchmarks/bench_gpu.sh PLAN
# PLAN 1: headline (gpt2 b16 + HF peer + profile), b32, training loop, zero_one, Languini small.
# PLAN 3: Languini small sweep alone.
# PLAN 2: levers (SDPA backends, per-block compile), Languini medium.
# PLAN 5: loss formulation, attention backend, compile scope and mode, batch 32.
# PLAN 6: the defaults after plan 5 (bench vs loop), Languini small (chunked loss) and medium.
# Each part runs under its own timeout so one hang cannot eat the call; every part's JSON
# is merged into $OUT/results_planN.json after each part (at most 8 files come back).
set -u
PLAN=${1:-1}
export PYTHONUNBUFFERED=1 PYTHONPATH=.
W=/tmp/gb; mkdir -p "$W" "$OUT"
LOG="$OUT/log_plan$PLAN.txt"
G="python3 -m gptlab"
say() { echo "=== $(date -u +%H:%M:%S) $*" | tee -a "$LOG"; }
bundle() {  # merge every part's JSON (and run metrics) into one file
  python3 - "$W" "$OUT/results_plan$PLAN.json" <<'PY'
import json, sys, pathlib
w, out = pathlib.Path(sys.argv[1]), sys.argv[2]
res = {}
for p in sorted(w.glob("*.json")):
    try: res[p.stem] = json.loads(p.read_text())
    except Exception as e: res[p.stem] = {"error": str(e)}
for p in sorted(w.glob("*.jsonl")):
    res[p.stem] = [json.loads(l) for l in p.read_text().splitlines() if l.strip()]
for p in sorted(w.glob("*.csv")):
    res[p.stem] = p.read_text()
pathlib.Path(out).write_text(json.dumps(res, indent=1))
PY
}
part() {  # part NAME TIMEOUT CMD...
  local name=$1 t=$2; shift 2
  say "$name: $*"
  local t0=$(date +%s.%N)
  timeout -k 10 "$t" "$@" >>"$LOG" 2>&1
  local rc=$?
  echo "{\"part\": \"$name\", \"rc\": $rc, \"wall_s\": $(python3 -c "import time;print(round(time.time()-$t0,1))"), \"cmd\": \"$*\"}" > "$W/rc_$name.json"
  say "$name rc=$rc"
  bundle
}
B16="--batch_size 16 --seq_len 1024 --vocab_size 50257 --gradient_accumulation_steps 1 --dtype bfloat16 --compile default"

bench_and_loop() {  # bench b16, then the training loop on the same shapes (eval and checkpoints off)
  part b16 100 $G bench gpt2 $B16 --steps 30 --warmup 5 --json "$W/bench_gpt2_b16.json"
  part trainloop 110 $G train gpt2 --dataset zero_one --vocab_size 50257 --batch_size 16 --gradient_accumulation_steps 1 \
      --compile default --dtype bfloat16 --max_iters 240 --warmup_iters 10 --lr_decay_iters 240 --eval_interval 0 \
      --eval_iters 0 --log_interval 20 --log_metrics_every 20 --tensorboard false --progress off --out_dir /tmp/tl
  cp /tmp/tl/metrics.jsonl "$W/trainloop_metrics.jsonl" 2>/dev/null
}

if [ "$PLAN" = 1 ]; then
  say "env"; (nvidia-smi -L; python3 -c "import torch,transformers,triton;print(torch.__version__,transformers.__version__,triton.__version__,torch.cuda.get_device_name())") >>"$LOG" 2>&1
  part b16 180 $G bench gpt2 $B16 --steps 30 --warmup 5 --peer hf --profile "$OUT/prof_b16" --json "$W/bench_gpt2_b16.json"
  part b32 90 $G bench gpt2 ${B16/--batch_size 16/--batch_size 32} --steps 20 --warmup 3 --json "$W/bench_gpt2_b32.json"
  part chunked_ce 70 $G bench gpt2 $B16 --steps 20 --warmup 3 --ce_chunk 8192 --no_matmul --json "$W/lever_chunked_ce.json"
  # data/zero_one travels with the call (carry): the device has no offline GPT-2 vocabulary
  # to run `gptlab prepare zero_one` with.
  part trainloop 120 $G train gpt2 --dataset zero_one --vocab_size 50257 --batch_size 16 --gradient_accumulation_steps 1 \
      --compile default --dtype bfloat16 --max_iters 240 --warmup_iters 10 --lr_decay_iters 240 --eval_interval 0 \
      --eval_iters 0 --log_interval 20 --log_metrics_every 20 --tensorboard false --progress off --out_dir /tmp/tl
  cp /tmp/tl/metrics.jsonl "$W/trainloop_metrics.jsonl" 2>/dev/null
  part zero_one 60 $G train zero_one --device cuda --eval_interval 10 --eval_iters 10 --log_interval 10 \
      --tensorboard false --progress off --out_dir /tmp/zo
  cp /tmp/zo/metrics.jsonl "$W/zero_one_metrics.jsonl" 2>/dev/null
  part tp_small 90 $G throughput small --min_batch 32 --max_batch 256 --warmup 3 --rounds 10 --csv "$W/tp_small.csv" --json "$W/throughput_small.json"
fi
if [ "$PLAN" = 2 ]; then
  part sdpa_flash 90 $G bench gpt2 $B16 --steps 20 --warmup 3 --sdpa flash --no_matmul --json "$W/lever_sdpa_flash.json"
  part sdpa_cudnn 90 $G bench gpt2 $B16 --steps 20 --warmup 3 --sdpa cudnn --no_matmul --json "$W/lever_sdpa_cudnn.json"
  part blocks 60 $G bench gpt2 $B16 --steps 20 --warmup 3 --compile_scope blocks --no_matmul --json "$W/lever_blocks.json"
  part tp_medium 120 $G throughput medium --min_batch 8 --max_batch 128 --warmup 3 --rounds 8 --csv "$W/tp_medium.csv" --json "$W/throughput_medium.json"
fi
if [ "$PLAN" = 3 ]; then  # Languini small alone (the sweep compiles once: batch dim symbolic)
  part tp_small 90 $G throughput small --min_batch 32 --max_batch 256 --warmup 3 --rounds 10 --csv "$W/tp_small.csv" --json "$W/throughput_small.json"
fi
if [ "$PLAN" = 4 ]; then  # loop vs bench (prefetch thread), zero_one time-to-bound, Languini small + medium
  say "env"; (nvidia-smi -L; python3 -c "import torch;print(torch.__version__,torch.cuda.get_device_name())") >>"$LOG" 2>&1
  bench_and_loop
  part zero_one_preset 80 $G train zero_one --device cuda --compile default --eval_interval 10 --eval_iters 4 \
      --log_interval 10 --max_iters 200 --lr_decay_iters 200 --tensorboard false --progress off --out_dir /tmp/zo1
  cp /tmp/zo1/metrics.jsonl "$W/zero_one_preset_metrics.jsonl" 2>/dev/null
  part zero_one_fast 80 $G train zero_one --device cuda --compile default --eval_interval 10 --eval_iters 4 \
      --log_interval 10 --learning_rate 2e-3 --min_lr 2e-4 --warmup_iters 10 --max_iters 200 --lr_decay_iters 200 \
      --tensorboard false --progress off --out_dir /tmp/zo2
  cp /tmp/zo2/metrics.jsonl "$W/zero_one_fast_metrics.jsonl" 2>/dev/null
  part tp_small 100 $G throughput small --min_batch 16 --max_batch 256 --warmup 3 --rounds 10 --csv "$W/tp_small.csv" --json "$W/throughput_small.json"
  part tp_medium 110 $G throughput medium --min_batch 8 --max_batch 128 --warmup 3 --rounds 8 --csv "$W/tp_medium.csv" --json "$W/throughput_medium.json"
fi
if [ "$PLAN" = 5 ]; then  # CE formulation, attention backend, compile scope/mode, batch 32
  say "env"; (nvidia-smi -L; python3 -c "import torch,transformers;print(torch.__version__,transformers.__version__,torch.cuda.get_device_name())") >>"$LOG" 2>&1
  part ce_plain 100 $G bench gpt2 $B16 --steps 30 --warmup 5 --ce_chunk 0 --json "$W/b16_ce_plain.json"
  part ce8192_peer 220 $G bench gpt2 $B16 --steps 30 --warmup 5 --ce_chunk 8192 --peer hf --profile "$OUT/prof_b16_ce8192" --json "$W/b16_ce8192_peer.json"
  part ce16384 80 $G bench gpt2 $B16 --steps 30 --warmup 5 --ce_chunk 16384 --no_matmul --json "$W/b16_ce16384.json"
  part flash 80 $G bench gpt2 $B16 --steps 30 --warmup 5 --ce_chunk 8192 --sdpa flash --no_matmul --json "$W/b16_ce8192_flash.json"
  part blocks 60 $G bench gpt2 $B16 --steps 30 --warmup 5 --ce_chunk 8192 --compile_scope blocks --no_matmul --json "$W/b16_ce8192_blocks.json"
  part b32 80 $G bench gpt2 ${B16/--batch_size 16/--batch_size 32} --steps 20 --warmup 3 --ce_chunk 8192 --no_matmul --json "$W/b32_ce8192.json"
  part autotune ${T_AUTOTUNE:-200} $G bench gpt2 ${B16/--compile default/--compile max-autotune-no-cudagraphs} --steps 30 --warmup 5 --ce_chunk 8192 --no_matmul --json "$W/b16_ce8192_autotune.json"
fi
if [ "$PLAN" = 6 ]; then  # defaults after plan 5: bench vs training loop, Languini small/medium
  say "env"; (nvidia-smi -L; python3 -c "import torch;print(torch.__version__,torch.cuda.get_device_name())") >>"$LOG" 2>&1
  bench_and_loop
  part tp_small_ce 110 $G throughput small --min_batch 64 --max_batch 256 --warmup 3 --rounds 10 --ce_chunk 8192 --csv "$W/tp_small_ce.csv" --json "$W/throughput_small_ce.json"
  part tp_medium 110 $G throughput medium --min_batch 16 --max_batch 128 --warmup 3 --rounds 6 --csv "$W/tp_medium.csv" --json "$W/throughput_medium.json"
fi
say done
