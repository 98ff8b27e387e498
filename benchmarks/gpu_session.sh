#!/usr/bin/env bash
# One device call: the tests/gpu tier, then benchmarks/peers.py (gptlab vs nanoGPT, Languini, transformers).
# Run from the repo root on the GPU machine, with benchmarks/peers/ carried (ignored: peers' checkouts and the
# prepared zero_one data):
#   OUT=/some/dir bash benchmarks/gpu_session.sh [CASES]
# CASES: comma list for peers.py (default: all, in priority order, until BUDGET_S seconds are spent).
# Knobs (env): T_TESTS (0 = no tests), T_PEERS (timeouts, s; defaults keep the call under 600 s), BUDGET_S, RUN_TIMEOUT_S (one training run), PEERS_ARGS (e.g. "--steps 10").
# Writes to $OUT: env.txt, gpu_tests.txt, peers_log.txt, <device>_peers.json (at most 8 files come back).
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD" GPTLAB_OFFLINE=1
OUT=${OUT:?set OUT}
mkdir -p "$OUT"
P=benchmarks/peers
# GPT-2 vocabulary carried in benchmarks/peers/gpt2_vocab (the device cannot fetch it): byte metrics on zero_one
[ -d "$P/gpt2_vocab" ] && export GPTLAB_GPT2_VOCAB="$PWD/$P/gpt2_vocab"
CASES=${1:-gpt2_b16,languini_small_b32,languini_small_b128_fp16,zero_one,shakespeare_char,gpt2_loop,gpt2_b32,languini_small_best,shakespeare_char_runs}
{ date -u; nvidia-smi -L; python3 -c "import torch, triton, transformers; print(torch.__version__, triton.__version__,
transformers.__version__, torch.cuda.get_device_name())"; git log -1 --format='%h %s' 2>/dev/null; } >"$OUT/env.txt" 2>&1
echo "=== $(date -u +%T) tests/gpu"
[ "${T_TESTS:-75}" = 0 ] || timeout -k 10 "${T_TESTS:-75}" python3 -m pytest tests/gpu -q -p no:cacheprovider -rfEs 2>&1 | tee "$OUT/gpu_tests.txt" | tail -25
echo "=== $(date -u +%T) peers: $CASES"
timeout -k 10 "${T_PEERS:-495}" python3 benchmarks/peers.py --nanogpt $P/nanoGPT --languini $P/languini-kitchen \
    --zero_one_data $P/data/zero_one --out "$OUT" --cases "$CASES" --budget_s "${BUDGET_S:-400}" \
    --run_timeout_s "${RUN_TIMEOUT_S:-100}" ${PEERS_ARGS:-} 2>&1 | tee "$OUT/peers_log.txt" | grep -v "^iter\|^step\|it/s\]" | tail -60
echo "=== $(date -u +%T) done"
