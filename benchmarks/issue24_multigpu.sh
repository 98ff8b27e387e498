#!/usr/bin/env bash
# Issue 24, in one call on a 2-GPU machine (under ~540 s; NGPU=4 or 8 on larger ones). Each training run is
# started with gptlab's own launcher (`gptlab train ... --nproc_per_node N`) and, for the same case, torchrun.
#
#  1. DDP gpt2 (124M), micro-batch 16 x 1024, bf16, torch.compile default, random tokens: 1 GPU and NGPU GPUs at
#     gradient accumulation 1 and 4; per-GPU tokens/s against 1 GPU (target >= 95% at accumulation 1). The
#     levers as separate rows: --ddp_bucket_mb (25, 100 = default, 200), --ddp_bucket_view true/false. Static
#     graph and compiled autograd have no config key: not run (summary.json says so).
#  2. FSDP2 gpt2-medium on 2 GPUs, a checkpoint every 3 steps, every background write slowed by SLOW_S seconds
#     (benchmarks/issue24_driver.py patches the writer the way tests/integration/ckpt_ranks_worker.py does):
#     no checkpoint lost; stop at step 6 and resume to 12: losses bit-identical to the uninterrupted run;
#     the step-6 checkpoint resumed on 1 GPU (accumulation 2, same global batch): DCP reshards 2 -> 1.
#  3. Over NCCL: SIGTERM to rank 1, and SIGKILL of rank 1: both ranks end within 60 s; the SIGTERM checkpoint
#     is complete and its resume is compared with an uninterrupted run (bit-identical expected).
#
# Writes $OUT/results.jsonl (one JSON row per run or check: device, command, date), $OUT/summary.json,
# $OUT/bench.log. Each run has its own timeout; a run that would pass BUDGET_S is skipped and its row says so.
#
#   OUT=dir bash benchmarks/issue24_multigpu.sh            (NGPU=2; NGPU=4 or 8 where lent)
#   SMALL=1 OUT=/tmp/x bash benchmarks/issue24_multigpu.sh  (every case on the CPU: gloo, tiny models, world 2)
#   CASES="levers" OUT=dir2 bash benchmarks/issue24_multigpu.sh  (a second call, if the budget skipped rows;
#                                                               CASES is any of: ddp fsdp signal levers)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-${1:-benchmarks/results/issue24}}; PY=${PY:-python3}; WORK=${WORK:-/tmp/gptlab_issue24}
SMALL=${SMALL:-0}; SLOW_S=${SLOW_S:-3}; BUDGET_S=${BUDGET_S:-540}; CASES=${CASES:-ddp fsdp signal levers}
has() { [[ " $CASES " == *" $1 "* ]]; }
mkdir -p "$OUT" "$WORK"; rm -f "$OUT/results.jsonl"
LOG="$OUT/bench.log"; RES="$OUT/results.jsonl"
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1  # never NVLink multicast
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} TORCHINDUCTOR_CACHE_DIR=$WORK/inductor
REP=("$PY" benchmarks/issue24_report.py); DRV=benchmarks/issue24_driver.py
export ISSUE24_DEVICE=$("${REP[@]}" device)
if [ "$SMALL" = 1 ]; then
  NGPU=2; TINY=(--n_layer 2 --n_head 2 --n_embd 32 --block_size 32 --device cpu --dtype float32)
  BS=4; BSM=2; STEPS=6; LOGI=2; COMPILE=none; NTOK=300000; SLOW_S=${SLOW_S_SMALL:-1}
  export OMP_NUM_THREADS=1
  T_RUN=90; T_SIG=120   # shared CPUs
else
  NGPU=${NGPU:-2}; TINY=(); BS=16; BSM=8; STEPS=${STEPS:-30}; LOGI=10; COMPILE=${COMPILE:-default}; NTOK=20000000
  export OMP_NUM_THREADS=${OMP_NUM_THREADS:-4}
  T_RUN=100; T_SIG=120
fi
T0=$SECONDS
{ date -u +"start %Y-%m-%dT%H:%M:%SZ"; echo "device: $ISSUE24_DEVICE"; nvidia-smi -L 2>/dev/null
  $PY -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, "gpus", torch.cuda.device_count())'
  "${REP[@]}" data "$WORK/data" "$NTOK"; } 2>&1 | tee -a "$LOG"

# The command line of one training run: cmd LAUNCHER NPROC ARGS... (LAUNCHER gptlab | torchrun; DRIVER_ARGS
# routes it through issue24_driver.py for a slow writer or pid files).
DRIVER_ARGS=()
cmd() {
  local launcher=$1 n=$2; shift 2
  local head=("$PY" -m gptlab)
  [ ${#DRIVER_ARGS[@]} -gt 0 ] && head=("$PY" "$DRV" "${DRIVER_ARGS[@]}")
  if [ "$n" = 1 ]; then CMD=("${head[@]}" train "$@")
  elif [ "$launcher" = gptlab ]; then CMD=("${head[@]}" train "$@" --nproc_per_node "$n")
  elif [ ${#DRIVER_ARGS[@]} -gt 0 ]; then
    CMD=("$PY" -m torch.distributed.run --standalone --nproc_per_node="$n" "$DRV" "${DRIVER_ARGS[@]}" train "$@")
  else CMD=("$PY" -m torch.distributed.run --standalone --nproc_per_node="$n" -m gptlab train "$@"); fi
}
# JSON row from name=value pairs (values that parse as JSON stay numbers/booleans).
row() { "${REP[@]}" row "$RES" "$($PY -c 'import json,sys
d={}
for a in sys.argv[1:]:
    k,_,v=a.partition("=")
    try: d[k]=json.loads(v)
    except ValueError: d[k]=v
print(json.dumps(d))' "$@")" 2>&1 | tee -a "$LOG"; }
budget_ok() { [ $((SECONDS - T0 + $1)) -le "$BUDGET_S" ]; }
# go NAME CASE LAUNCHER NPROC ACCUM TIMEOUT ARGS...: one run, its row.
go() {
  local name=$1 case=$2 launcher=$3 n=$4 acc=$5 t=$6; shift 6
  cmd "$launcher" "$n" "$@"
  if ! budget_ok "$t"; then row name="$name" case="$case" launcher="$launcher" world="$n" accum="$acc" \
      command="${CMD[*]}" note="skipped: budget"; return; fi
  echo "=== $(date -u +%H:%M:%S) $name: ${CMD[*]}" | tee -a "$LOG"
  local s=$SECONDS; timeout -k 10 "$t" "${CMD[@]}" >>"$LOG" 2>&1; local rc=$?
  RC=$rc
  row name="$name" case="$case" launcher="$launcher" world="$n" accum="$acc" rc=$rc wall_s=$((SECONDS - s)) \
    run="$(outdir "$@")" command="${CMD[*]}"
}
outdir() { while [ $# -gt 1 ]; do [ "$1" = --out_dir ] && { echo "$2"; return; }; shift; done; }
check() {  # check NAME CASE JSON: a check's row (ok true/false)
  local name=$1 case=$2 js=$3
  echo "$js" | tee -a "$LOG"
  "${REP[@]}" row "$RES" "$($PY -c 'import json,sys; d=json.loads(sys.argv[3] or "{}"); d.update(name=sys.argv[1], case=sys.argv[2]); d.setdefault("ok", False); print(json.dumps(d))' "$name" "$case" "$js")" | tee -a "$LOG"
}

# ---- 1. DDP gpt2 b16 x 1024 -------------------------------------------------------------------------------
D=(gpt2 --dataset "$WORK/data" --vocab_size 50257 --batch_size "$BS" --warmup_iters 5 --eval_iters 1 --eval_interval 0
   --always_save_checkpoint false --checkpoint_interval 0 --compile "$COMPILE" --tensorboard false --progress off
   --log_interval "$LOGI" --log_metrics_every "$LOGI" --overwrite true "${TINY[@]}")
[ "$SMALL" = 1 ] || D+=(--dtype bfloat16)
A1=(--gradient_accumulation_steps 1 --max_iters "$STEPS" --lr_decay_iters "$STEPS")
A4=(--gradient_accumulation_steps 4 --max_iters $((STEPS / 3 > 2 ? STEPS / 3 : 3)) --lr_decay_iters "$STEPS"
    --log_interval $((LOGI / 2 > 1 ? LOGI / 2 : 1)) --log_metrics_every $((LOGI / 2 > 1 ? LOGI / 2 : 1)))
N=$NGPU
if has ddp; then
go 1gpu_a1 ddp gptlab 1 1 "$T_RUN" "${D[@]}" "${A1[@]}" --out_dir "$WORK/d_1gpu_a1"
go ddp${N}_a1_gptlab ddp gptlab "$N" 1 "$T_RUN" "${D[@]}" "${A1[@]}" --out_dir "$WORK/d_ddp_a1_gptlab"
go ddp${N}_a1_torchrun ddp torchrun "$N" 1 "$T_RUN" "${D[@]}" "${A1[@]}" --out_dir "$WORK/d_ddp_a1_torchrun"
go 1gpu_a4 ddp gptlab 1 4 "$T_RUN" "${D[@]}" "${A4[@]}" --out_dir "$WORK/d_1gpu_a4"
go ddp${N}_a4_gptlab ddp gptlab "$N" 4 "$T_RUN" "${D[@]}" "${A4[@]}" --out_dir "$WORK/d_ddp_a4_gptlab"
fi
# (the lever rows run last, after cases 2 and 3: they are the first to go when the budget runs out)

# ---- 2. FSDP2 gpt2-medium, slow writer ---------------------------------------------------------------------
if has fsdp; then
F=(gpt2-medium --dataset "$WORK/data" --vocab_size 50257 --batch_size "$BSM" --gradient_accumulation_steps 1
   --warmup_iters 2 --eval_iters 1 --eval_interval 0 --lr_decay_iters 12 --checkpoint_interval 3 --keep_last 100 --always_save_checkpoint false
   --parallel fsdp --compile none --deterministic true --tensorboard false --progress off --log_interval 1
   --log_metrics_every 1 "${TINY[@]}")
[ "$SMALL" = 1 ] || F+=(--dtype bfloat16)
DRIVER_ARGS=(--slow_writer "$SLOW_S")
go fsdp2_ref12_gptlab fsdp gptlab 2 1 "$T_RUN" "${F[@]}" --max_iters 12 --out_dir "$WORK/f_ref" --overwrite true
check fsdp2_ref12_no_ckpt_lost fsdp "$("${REP[@]}" ckpts "$WORK/f_ref" 3,6,9,12)"
go fsdp2_stop6_torchrun fsdp torchrun 2 1 "$T_RUN" "${F[@]}" --max_iters 6 --out_dir "$WORK/f_b" --overwrite true
check fsdp2_stop6_no_ckpt_lost fsdp "$("${REP[@]}" ckpts "$WORK/f_b" 3,6)"
rm -rf "$WORK/f_b1"; cp -r "$WORK/f_b" "$WORK/f_b1"
go fsdp2_resume6to12_gptlab fsdp gptlab 2 1 "$T_RUN" "${F[@]}" --max_iters 12 --out_dir "$WORK/f_b" --resume true
check fsdp2_resume_bit_identical fsdp "$("${REP[@]}" compare "$WORK/f_ref" "$WORK/f_b" 6)"
check fsdp2_resume_no_ckpt_lost fsdp "$("${REP[@]}" ckpts "$WORK/f_b" 3,6,9,12)"
go fsdp1_reshard_resume6to12 fsdp gptlab 1 2 "$T_RUN" "${F[@]}" --gradient_accumulation_steps 2 --max_iters 12 \
  --out_dir "$WORK/f_b1" --resume true
check fsdp_reshard_2to1_resumed fsdp "$("${REP[@]}" compare "$WORK/f_ref" "$WORK/f_b1" 6 "${RESHARD_TOL:-inf}" | $PY -c 'import json,sys
d=json.loads(sys.stdin.read()); d["note"]="ok = resumed and logged steps 7-12; loss difference informative only (1 process x 2 micro-batches vs 2 ranks)"; print(json.dumps(d))')"
DRIVER_ARGS=()
fi

# ---- 3. Signals over NCCL ----------------------------------------------------------------------------------
if has signal; then
S=(gpt2 --dataset "$WORK/data" --vocab_size 50257 --batch_size "$BSM" --gradient_accumulation_steps 1 --warmup_iters 2 --eval_iters 1 --eval_interval 0
   --lr_decay_iters 40 --checkpoint_interval 100 --always_save_checkpoint false --compile none --deterministic true
   --tensorboard false --progress off --log_interval 1 --log_metrics_every 1 "${TINY[@]}")
[ "$SMALL" = 1 ] || S+=(--dtype bfloat16)
SIG_STEPS=$([ "$SMALL" = 1 ] && echo 40 || echo 40)
go sig_ref_gptlab signal gptlab 2 1 "$T_RUN" "${S[@]}" --max_iters 12 --out_dir "$WORK/s_ref" --overwrite true
# signal_run NAME LAUNCHER SIG: start a long run, signal rank 1 once step 3 is logged, time both ranks' ends.
signal_run() {
  local name=$1 launcher=$2 sig=$3 run="$WORK/s_$1" pids="$WORK/pids_$1"
  rm -rf "$run" "$pids"
  DRIVER_ARGS=(--pid_dir "$pids"); cmd "$launcher" 2 "${S[@]}" --max_iters "$SIG_STEPS" --out_dir "$run" --overwrite true
  DRIVER_ARGS=()
  if ! budget_ok "$T_SIG"; then row name="$name" case=signal launcher="$launcher" world=2 command="${CMD[*]}" \
      note="skipped: budget"; return; fi
  echo "=== $(date -u +%H:%M:%S) $name: ${CMD[*]}  (SIG$sig to rank 1 at step >= 3)" | tee -a "$LOG"
  local s=$SECONDS; timeout -k 10 "$T_SIG" "${CMD[@]}" >>"$LOG" 2>&1 & local lp=$!
  local at; at=$("${REP[@]}" wait_step "$run" 3 $((T_SIG - 30)))
  local r0 r1; r0=$(cat "$pids/rank0.pid" 2>/dev/null); r1=$(cat "$pids/rank1.pid" 2>/dev/null)
  local t_sig=$SECONDS
  [ -n "$r1" ] && [ "$at" -ge 0 ] && kill -s "$sig" "$r1"
  local ended=-1
  while [ $((SECONDS - t_sig)) -le 90 ]; do
    if ! kill -0 "$r0" 2>/dev/null && ! kill -0 "$r1" 2>/dev/null; then ended=$((SECONDS - t_sig)); break; fi
    sleep 0.5
  done
  wait "$lp"; local rc=$?
  local last; last=$($PY -c 'import json,sys; r=[json.loads(l) for l in open(sys.argv[1]) if "\"train\"" in l]; print(r[-1]["step"] if r else -1)' "$run/metrics.jsonl" 2>/dev/null || echo -1)
  local ok=false; [ "$at" -ge 0 ] && [ "$ended" -ge 0 ] && [ "$ended" -le 60 ] && ok=true
  row name="$name" case=signal launcher="$launcher" world=2 signal="$sig" signalled_at_step="$at" \
    both_ranks_ended_s="$ended" last_step="$last" rc=$rc wall_s=$((SECONDS - s)) ok=$ok command="${CMD[*]}"
  LAST_RUN=$run
}
signal_run sigterm_rank1_gptlab gptlab TERM
check sigterm_ckpt_complete signal "$("${REP[@]}" ckpts "$LAST_RUN")"
STOP=$("${REP[@]}" ckpts "$LAST_RUN" | $PY -c 'import json,sys; print(json.loads(sys.stdin.read())["newest_valid"] or 0)')
go sigterm_resume_to12_gptlab signal gptlab 2 1 "$T_RUN" "${S[@]}" --max_iters 12 --out_dir "$LAST_RUN" --resume true
check sigterm_resume_bit_identical signal "$("${REP[@]}" compare "$WORK/s_ref" "$LAST_RUN" "$STOP")"
signal_run sigkill_rank1_gptlab gptlab KILL
signal_run sigkill_rank1_torchrun torchrun KILL
signal_run sigterm_rank1_torchrun torchrun TERM
check sigterm_torchrun_ckpt_complete signal "$("${REP[@]}" ckpts "$LAST_RUN")"
fi

# ---- 1b. DDP levers (separate rows; default is bucket 100 MB, views on) ------------------------------------
if has levers; then
  has ddp || go 1gpu_a1 ddp gptlab 1 1 "$T_RUN" "${D[@]}" "${A1[@]}" --out_dir "$WORK/d_1gpu_a1"  # the peers
  has ddp || go 1gpu_a4 ddp gptlab 1 4 "$T_RUN" "${D[@]}" "${A4[@]}" --out_dir "$WORK/d_1gpu_a4"
  go ddp${N}_a4_torchrun ddp torchrun "$N" 4 "$T_RUN" "${D[@]}" "${A4[@]}" --out_dir "$WORK/d_ddp_a4_torchrun"
  go ddp${N}_a1_view_off ddp gptlab "$N" 1 "$T_RUN" "${D[@]}" "${A1[@]}" --ddp_bucket_view false --out_dir "$WORK/d_view_off"
  for mb in ${DDP_BUCKETS:-25 200}; do
    go ddp${N}_a1_bucket${mb} ddp gptlab "$N" 1 "$T_RUN" "${D[@]}" "${A1[@]}" --ddp_bucket_mb "$mb" --out_dir "$WORK/d_b$mb"
  done
  [ "$N" -gt 2 ] && go ddp2_a1_gptlab ddp gptlab 2 1 "$T_RUN" "${D[@]}" "${A1[@]}" --out_dir "$WORK/d_ddp2_a1"
fi

"${REP[@]}" summary "$RES" "$OUT" 2>&1 | tee -a "$LOG"
date -u +"end %Y-%m-%dT%H:%M:%SZ elapsed $((SECONDS - T0)) s" | tee -a "$LOG"
