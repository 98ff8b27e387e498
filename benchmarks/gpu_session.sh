#!/usr/bin/env bash
# How to run (one device call, from the repo root, with benchmarks/peers/ carried: the peers' checkouts,
# a prepared zero_one and the GPT-2 vocabulary, all git-ignored; BENCHMARKS.md says how to make it):
#   OUT=$OUT bash benchmarks/gpu_session.sh                 # tests, then every group below in order (~540 s)
#   OUT=$OUT T_TESTS=0 bash benchmarks/gpu_session.sh step  # a second call: the step cases only
#   OUT=$OUT LEVERS=cuda_graphs,cdt,foreach bash benchmarks/gpu_session.sh step
# Groups (or a comma list of peers.py cases):
#   startup  zero_one, shakespeare_char: `gptlab train` as whole processes, cold then warm compile cache,
#            next to nanoGPT's train.py for the same recipe (cold)
#   step     gpt2_b16, gpt2_b32 vs nanoGPT; Languini small b32 vs nanoGPT's model of that shape;
#            small b128 fp16 vs Languini's own code
# Knobs (env): T_TESTS (s for tests/gpu; 0 = none), T_PEERS (s for peers.py), BUDGET_S (peers.py starts no
# case after this), LEVERS (peers.py --levers: cuda_graphs, cdt, foreach on the step cases; cuda_graphs,
# cdt, eval_separate, plain_loss on the wall cases; each measured alone in the same call), PEERS_ARGS.
# Defaults keep the whole call under 540 s: 90 s tests + 440 s peers (no case started after 370 s).
# Writes to $OUT: env.txt, gpu_tests.txt, peers_log.txt, <device>_peers.json (rows, skipped, errors).
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD" GPTLAB_OFFLINE=1
OUT=${OUT:?set OUT}
mkdir -p "$OUT"
P=benchmarks/peers
# GPT-2 vocabulary carried in benchmarks/peers/gpt2_vocab (the device cannot fetch it): byte metrics on zero_one
[ -d "$P/gpt2_vocab" ] && export GPTLAB_GPT2_VOCAB="$PWD/$P/gpt2_vocab"
STARTUP=zero_one,shakespeare_char
STEP=gpt2_b16,gpt2_b32,languini_small_b32,languini_small_b128_fp16
case "${1:-all}" in
    all) CASES=$STARTUP,$STEP ;;
    startup) CASES=$STARTUP ;;
    step) CASES=$STEP ;;
    *) CASES=$1 ;;
esac
{ date -u; nvidia-smi -L; python3 -c "import torch, triton, transformers; print(torch.__version__, triton.__version__,
transformers.__version__, torch.cuda.get_device_name())"; git log -1 --format='%h %s' 2>/dev/null; } >"$OUT/env.txt" 2>&1
echo "=== $(date -u +%T) tests/gpu"
[ "${T_TESTS:-90}" = 0 ] || timeout -k 10 "${T_TESTS:-90}" python3 -m pytest tests/gpu -q -p no:cacheprovider -rfEs 2>&1 | tee "$OUT/gpu_tests.txt" | tail -25
echo "=== $(date -u +%T) peers: $CASES ${LEVERS:+(levers $LEVERS)}"
timeout -k 10 "${T_PEERS:-440}" python3 benchmarks/peers.py --nanogpt $P/nanoGPT --languini $P/languini-kitchen \
    --zero_one_data $P/data/zero_one --out "$OUT" --cases "$CASES" --budget_s "${BUDGET_S:-370}" \
    --run_timeout_s "${RUN_TIMEOUT_S:-100}" --levers "${LEVERS:-}" --steps 10 --warmup 2 ${PEERS_ARGS:-} 2>&1 \
    | tee "$OUT/peers_log.txt" | grep -v "^iter\|^step\|it/s\]" | tail -60
echo "=== $(date -u +%T) done"
