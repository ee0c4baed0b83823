#!/usr/bin/env bash
# Every GPU measurement the open issues still need, in two device-tool calls of under 10 minutes each
# (the device README's per-command limit):
#   run(command="bash benchmarks/gpu_all.sh a", timeout_s=600)   # tests, kernels, estimator memory (<= 330 s)
#   run(command="bash benchmarks/gpu_all.sh b", timeout_s=600)   # train, latency, throughput (<= 420 s)
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
if [ "$PART" = a ]; then
  step gpu-tests 120 python3 -m pytest -q -m gpu -p no:cacheprovider --continue-on-collection-errors tests
  step kernel-tests 90 python3 -m pytest -q -p no:cacheprovider tests/test_kernels_paged_attention.py
  step paged-attention 60 python3 benchmarks/paged_attention.py
  step estimate-memory 60 python3 benchmarks/estimate_memory.py
else
  step train 150 python3 benchmarks/train.py --steps 20 --warmup 5
  step latency 120 python3 benchmarks/latency.py
  step throughput 150 python3 benchmarks/throughput.py
fi
cp benchmarks/results/*cuda*.json "$OUT/" 2>/dev/null || true
tar czf "$OUT/logs-$PART.tgz" -C "$LOGS" .
