#!/usr/bin/env bash
# Every GPU measurement the open issues still need. With a 15-minute device budget (all starts and calls
# together, as of 2026-11-30) there is room for one call: part `main`, the measurements that decide #5 and
# #6, each step time-limited, in under 9 minutes:
#   run(command="bash benchmarks/gpu_all.sh main", timeout_s=580)  # train vs transformers, latency, throughput
# With a longer budget, three calls of under 10 minutes each (on 2026-11-23 part a took 149 s):
#   run(command="bash benchmarks/gpu_all.sh a", timeout_s=600)   # tests, kernels, estimator memory (<= 330 s)
#   run(command="bash benchmarks/gpu_all.sh b", timeout_s=600)   # train (batch 16, 32), latency (<= 540 s)
#   run(command="bash benchmarks/gpu_all.sh c", timeout_s=600)   # throughput vs transformers (<= 560 s)
# It uses the device's own python3 (torch, transformers, triton preinstalled), installs llmlab without
# dependencies, runs the GPU tests and each benchmark, and copies results and logs to $OUT.
set -u
PART=${1:-a}
export PYTHONUNBUFFERED=1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # llmlab importable even if the editable install fails
OUT=${OUT:-/tmp/llmlab-gpu}
LOGS=$(mktemp -d)  # the device returns at most 8 files: logs travel as one archive
mkdir -p "$OUT"
python3 -m pip install -q --no-deps --no-build-isolation -e . > "$LOGS/install.log" 2>&1 || true
nvidia-smi > "$LOGS/nvidia-smi.txt" 2>&1
step() {  # name, seconds, command...
  local name=$1 secs=$2; shift 2
  echo "== $name" | tee -a "$OUT/summary.log"
  timeout "$secs" "$@" > "$LOGS/$name.log" 2>&1
  echo "rc=$? $(tail -n 1 "$LOGS/$name.log" | cut -c1-400)" | tee -a "$OUT/summary.log"
}
if [ "$PART" = main ]; then
  step train 110 python3 benchmarks/train.py --steps 20 --warmup 5
  step latency-compiled 150 python3 benchmarks/latency.py --compile-decode
  step gpu-tests 60 python3 -m pytest -q -m gpu -p no:cacheprovider --continue-on-collection-errors tests
  step throughput 220 python3 benchmarks/throughput.py --hf generate_batch --hf-timeout 90
elif [ "$PART" = a ]; then
  step gpu-tests 120 python3 -m pytest -q -m gpu -p no:cacheprovider --continue-on-collection-errors tests
  step kernel-tests 90 python3 -m pytest -q -p no:cacheprovider tests/test_kernels_paged_attention.py
  step paged-attention 60 python3 benchmarks/paged_attention.py
  step estimate-memory 60 python3 benchmarks/estimate_memory.py
elif [ "$PART" = b ]; then
  step train 110 python3 benchmarks/train.py --steps 20 --warmup 5
  step train-b32 130 python3 benchmarks/train.py --batch 32 --steps 15 --warmup 4 --out benchmarks/results/train_cuda_b32.json
  step latency-compiled 180 python3 benchmarks/latency.py --compile-decode
  step latency-eager-step 80 python3 benchmarks/latency.py --skip-hf --repeats 1 --out engine_latency_cuda_nocompile
else
  step throughput 560 python3 benchmarks/throughput.py --hf-timeout 180
fi
cp benchmarks/results/*cuda*.json "$OUT/" 2>/dev/null || true
tar czf "$OUT/logs-$PART.tgz" -C "$LOGS" .
