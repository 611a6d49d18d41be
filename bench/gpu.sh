#!/usr/bin/env bash
# Issue 69's GPU session in one command, for a lent NVIDIA machine whose Python already holds JAX (CUDA), Flax,
# torch, transformers and Triton: bench/gpu.py's sections, the kernel and Whisper model tests on the GPU, then the
# encode job end to end on large-v3's encoder. Each step has its own time limit and writes into OUT as it goes, so a
# step that fails or runs long costs only itself.
#
#   bash bench/gpu.sh OUT [PYTHON]        # PYTHON: default python3
#   GPU_BENCH_ARGS=--smoke GPU_JOB_SIZES="layers=2, width=64, heads=4" bash bench/gpu.sh /tmp/g   # a dry run, any machine
set -u
OUT=${1:?usage: bench/gpu.sh OUT [PYTHON]}
PY=${2:-python3}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
log() { echo "== $(date -u +%H:%M:%S) $*" | tee -a "$OUT/steps.txt"; }

log "start; load $(cut -d' ' -f1-3 /proc/loadavg)"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader \
    | tee -a "$OUT/steps.txt"
log "bench/gpu.py"
# shellcheck disable=SC2086
timeout -k 10 "${GPU_BENCH_S:-270}" "$PY" bench/gpu.py --out "$OUT" --rounds 5 ${GPU_BENCH_ARGS:-} 2>&1 \
    | grep -v '^\[transformers\]' | tail -c 20000 > "$OUT/gpu.log"
log "bench/gpu.py exit ${PIPESTATUS[0]}"

log "tests on the GPU"
# SIGINT first: pytest stops and still prints its summary of what ran.
XLA_PYTHON_CLIENT_PREALLOCATE=false timeout -s INT -k 20 "${GPU_TESTS_S:-120}" "$PY" -m pytest -q -ra -n 8 \
    --dist loadfile -p no:cacheprovider --continue-on-collection-errors tests/kernels tests/models/whisper 2>&1 \
    | tail -c 60000 > "$OUT/tests.txt"
log "tests exit ${PIPESTATUS[0]}: $(tail -1 "$OUT/tests.txt")"

log "encode job, random large-v3 encoder (a turbo folder: ${GPU_JOB_SIZES:=layers=32, width=1280, heads=20})"
"$PY" -c "from engine.models.random_folder import write_random_folder as w
w('whisper-turbo', '/tmp/turbo-job', $GPU_JOB_SIZES, force=True)" \
    && timeout -k 10 "${GPU_JOB_S:-130}" "$PY" bench/encode_job.py --model /tmp/turbo-job --noise 2x8x20 \
    --dtype bfloat16 --batch 16 --repeats 1 > "$OUT/encode_job.txt" 2>&1
log "encode job exit $?; load $(cut -d' ' -f1-3 /proc/loadavg)"
