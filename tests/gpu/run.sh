#!/usr/bin/env bash
# Lent H100/H200 check (<= 9.5 minutes): ~1.1B model, bf16, seq 4096, on the same data and seed trained by
# our trainer (local spec) and by Megatron-LM's loop (python -m megatron_ixt.megatron_lm: the TE spec when
# transformer_engine imports, else its local spec; the distributed optimizer); both runs' tokens/s,
# TFLOP/s, MFU and final losses. `bash tests/gpu/run.sh --trainer ixt` (or megatron-lm) runs one.
# Needs only this repo and the megatron-core 0.19.2 wheel (cp312) in .whl/ (carry ".whl"; every wheel
# there is installed, e.g. Transformer Engine's for the TE spec):
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_28_x86_64 -d .whl megatron-core==0.19.2
# Results: stdout and $OUT/gpu_result.json, $OUT/gpu_metrics.jsonl (ours), $OUT/megatron_lm.log.
set -euo pipefail
cd "$(dirname "$0")/../.."
if ! python3 -c "import megatron.core" 2>/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
export PYTHONPATH=$PWD:${PYTHONPATH:-}
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
timeout 540 python3 tests/gpu/bench_1b.py --output "${OUT:-gpu_out}" "$@"
