#!/usr/bin/env bash
# Every GPU measurement the open issues still need, in one call that fits a 15-minute device budget (all
# starts and calls together, as of 2026-11-30): steps in order of importance, each time-limited, the whole
# run kept under BUDGET seconds (steps that no longer fit are skipped and say so):
#   run(command="bash benchmarks/gpu_all.sh main", timeout_s=600)
# main: compiled batch-1 latency vs transformers and the fused batch-1 step beside it (#6), throughput vs
# transformers' generate_batch (#6), train at batch 32 vs transformers (#5, attention backend timed and chosen),
# the GPU tests, the paged kernel with split keys vs one pass, the compiled decode step's kernels, train at batch
# 16 (what does not fit in BUDGET is skipped: run the rest in a second call).
# With a longer budget, three calls of under 10 minutes each (on 2026-11-23 part a took 149 s):
#   run(command="bash benchmarks/gpu_all.sh a", timeout_s=600)   # tests, kernels, estimator memory (<= 330 s)
#   run(command="bash benchmarks/gpu_all.sh b", timeout_s=600)   # train (batch 16, 32), latency (<= 540 s)
#   run(command="bash benchmarks/gpu_all.sh c", timeout_s=600)   # throughput vs transformers (<= 560 s)
# It uses the device's own python3 (torch, transformers, triton preinstalled), installs llmlab without
# dependencies, and leaves $OUT/summary.log plus $OUT/all-<part>.tgz (every log and results JSON, refreshed
# after each step, so a run cut short still returns what it measured). Results JSONs go to results/ in it.
set -u
PART=${1:-a}
export PYTHONUNBUFFERED=1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # llmlab importable even if the editable install fails
OUT=${OUT:-/tmp/llmlab-gpu}
LOGS=$(mktemp -d)  # the device returns at most 8 files: logs and results travel as one archive
export LLMLAB_BENCH_RESULTS="$LOGS/results"  # this run's JSONs only (benchmarks/results holds older ones)
mkdir -p "$OUT" "$LLMLAB_BENCH_RESULTS"
START=$(date +%s)
BUDGET=${BUDGET:-570}
python3 -m pip install -q --no-deps --no-build-isolation -e . > "$LOGS/install.log" 2>&1 || true
nvidia-smi > "$LOGS/nvidia-smi.txt" 2>&1
RC=0
step() {  # name, seconds, command...: run it within what is left of BUDGET, then refresh the archive
  local name=$1 secs=$2; shift 2
  local left=$((BUDGET - $(date +%s) + START))
  if [ "$left" -lt 25 ]; then echo "== $name skipped: ${left}s left" | tee -a "$OUT/summary.log"; RC=124; return; fi
  [ "$secs" -gt "$left" ] && secs=$left
  echo "== $name (limit ${secs}s, at $(( $(date +%s) - START ))s)" | tee -a "$OUT/summary.log"
  timeout -s INT -k 15 "$secs" "$@" > "$LOGS/$name.log" 2>&1  # INT: pytest still prints what failed
  RC=$?
  echo "rc=$RC $(tail -n 1 "$LOGS/$name.log" | cut -c1-400)" | tee -a "$OUT/summary.log"
  tar czf "$OUT/all-$PART.tgz" -C "$LOGS" .
}
if [ "$PART" = main ]; then  # on 2026-11-30 (H200): train took 171 s, throughput 147 s, latency 90 s
  # latency first: the compiled decode (split-key paged kernel as a custom op) and, alternating with it in the same
  # run, the fused batch-1 step of kernels/cuda_decode.py (its tiles timed at start-up); without it if that fails
  step latency-fused 200 python3 benchmarks/latency.py --compile-decode --fused
  [ "$RC" = 0 ] || step latency-compiled 120 python3 benchmarks/latency.py --compile-decode
  [ "$RC" = 0 ] || step latency-eager 90 python3 benchmarks/latency.py --out engine_latency_cuda_eager
  step throughput 170 python3 benchmarks/throughput.py --hf generate_batch --hf-timeout 60
  # batch 32 (both loops): the optimizer's fixed cost per step halves per token (llm.c's GPT-2 runs use 64)
  step train-b32 200 python3 benchmarks/train.py --batch 32 --steps 15 --warmup 4
  # the GPU tests never run on a card: async/pinned transfers and CUDA graphs first (quick), then the fused step's
  # kernels, the paged kernel and the GEMV (each Triton variant compiles once); the ahead-of-time sm_90 compiles
  # that CI runs without a GPU are left out
  step gpu-tests 90 python3 -m pytest -q -rfE -p no:cacheprovider tests/test_host_transfers.py \
    tests/test_engine_llm.py tests/test_kernels_cuda_decode.py tests/test_kernels_paged_attention.py \
    tests/test_kernels_gemv.py -k "(cuda or gemv or kernel or split or wait) and not without_a_gpu and not for_hopper and not c_kernels"
  step paged-attention 40 python3 benchmarks/paged_attention.py --batches 1 4 16 256 --contexts 384 2048
  step graph-kernels 60 python3 benchmarks/gpu_profile.py graph
  step train-b16 200 python3 benchmarks/train.py --steps 20 --warmup 5 --out "$LLMLAB_BENCH_RESULTS/train_cuda_b16.json"
elif [ "$PART" = a ]; then
  step gpu-tests 120 python3 -m pytest -q -m gpu -p no:cacheprovider --continue-on-collection-errors tests
  step kernel-tests 90 python3 -m pytest -q -p no:cacheprovider tests/test_kernels_paged_attention.py
  step paged-attention 60 python3 benchmarks/paged_attention.py
  step estimate-memory 60 python3 benchmarks/estimate_memory.py
elif [ "$PART" = b ]; then
  step train 110 python3 benchmarks/train.py --steps 20 --warmup 5
  step train-b32 130 python3 benchmarks/train.py --batch 32 --steps 15 --warmup 4 --out "$LLMLAB_BENCH_RESULTS/train_cuda_b32.json"
  step latency-compiled 180 python3 benchmarks/latency.py --compile-decode
  step latency-eager-step 80 python3 benchmarks/latency.py --skip-hf --repeats 1 --out engine_latency_cuda_nocompile
else
  step throughput 560 python3 benchmarks/throughput.py --hf-timeout 180
fi
tar czf "$OUT/all-$PART.tgz" -C "$LOGS" .
