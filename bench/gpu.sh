#!/usr/bin/env bash
# Issue 86's GPU session in one command, for a lent NVIDIA machine whose Python already holds JAX (CUDA), Flax,
# torch, transformers and Triton (carry soundfile, soxr, cffi and pycparser as wheels; bench/RESULTS.md's lease
# sections say how). In order of value, so that a lease cut short keeps what matters most:
#   1. the fused Pallas SeqSim kernel's block-size sweep, tail tiles included, at d 1280 on FLEURS-shaped lengths,
#      against the XLA blocks and the same run's 8192-cube bf16 matmul (bench/seqsim_pallas.py --paths pallas): what
#      decides issue 80's plan ratio (computed / valid <= 1.15x) and its kernel goal (>= 0.6 of the matmul);
#   2. the seqsim kernel tests on the GPU (the Pallas kernel and its tails compiled by Triton, not interpreted);
#   3. every seqsim path side by side: blocks, sorted blocks, packed, 8-bit, the table's Pallas entry;
#   4. the encoder's MFU with every layer returned: stacked, as separate outputs, last layer only (bench/gpu.py);
#   5. the encode job end to end on large-v3's encoder, pinned asynchronous copies (bench/encode_job.py).
# Each step has its own time limit (8 minutes in all) and writes into OUT as it goes, so a step that fails or runs
# long costs only itself; the seqsim steps print their medians after every round.
#
#   bash bench/gpu.sh OUT [PYTHON]        # PYTHON: default python3
#   GPU_SMOKE=1 bash bench/gpu.sh /tmp/g  # a dry run on any machine: tiny shapes, interpret mode (about 2 minutes)
set -u
OUT=${1:?usage: bench/gpu.sh OUT [PYTHON]}
PY=${2:-python3}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
log() { echo "== $(date -u +%H:%M:%S) $*" | tee -a "$OUT/steps.txt"; }
if [ -n "${GPU_SMOKE:-}" ]; then
    SWEEP_ARGS="--smoke --sweep"; PATHS_ARGS="--smoke"; GPU_ARGS="--smoke"; JOB_SIZES="layers=2, width=64, heads=4"
    NOISE=2x2x3
else
    SWEEP_ARGS="--sweep --utterances 160 --rounds 5"; PATHS_ARGS="--utterances 160 --rounds 3"
    GPU_ARGS="--rounds 3 --host_batches 2"
    JOB_SIZES="layers=32, width=1280, heads=20"; NOISE=2x8x20
fi

log "start; load $(cut -d' ' -f1-3 /proc/loadavg); git $(git rev-parse --short HEAD 2>/dev/null)"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm \
    --format=csv,noheader | tee -a "$OUT/steps.txt"

log "1. the fused kernel's sweep (bench/seqsim_pallas.py $SWEEP_ARGS --paths pallas)"
# shellcheck disable=SC2086
timeout -k 10 "${GPU_SWEEP_S:-130}" "$PY" bench/seqsim_pallas.py $SWEEP_ARGS --paths pallas > "$OUT/seqsim_sweep.txt" 2>&1
log "sweep exit $?"

log "2. seqsim kernel tests on the device"
# SIGINT first: pytest stops and still prints its summary of what ran.
XLA_PYTHON_CLIENT_PREALLOCATE=false timeout -s INT -k 20 "${GPU_TESTS_S:-70}" "$PY" -m pytest -q -ra -n 4 \
    --dist loadfile -p no:cacheprovider --continue-on-collection-errors tests/kernels/test_seqsim_pallas.py \
    tests/kernels/test_seqsim_accelerator.py tests/kernels/test_seqsim_fp8.py tests/kernels/test_seqsim_packed.py \
    tests/kernels/test_seqsim.py 2>&1 | tail -c 60000 > "$OUT/tests.txt"
log "tests exit ${PIPESTATUS[0]}: $(tail -1 "$OUT/tests.txt")"

log "3. every seqsim path (bench/seqsim_pallas.py $PATHS_ARGS)"
# shellcheck disable=SC2086
timeout -k 10 "${GPU_PATHS_S:-100}" "$PY" bench/seqsim_pallas.py $PATHS_ARGS > "$OUT/seqsim_paths.txt" 2>&1
log "seqsim paths exit $?"

log "4. matmul ceiling and encoder MFU (bench/gpu.py $GPU_ARGS)"
# shellcheck disable=SC2086
timeout -k 10 "${GPU_BENCH_S:-110}" "$PY" bench/gpu.py --out "$OUT" --sections info,matmul,encoder $GPU_ARGS 2>&1 \
    | grep -v '^\[transformers\]' | tail -c 20000 > "$OUT/gpu.log"
log "bench/gpu.py exit ${PIPESTATUS[0]}"

log "5. encode job, random large-v3 encoder (a turbo folder: $JOB_SIZES)"
"$PY" -c "from engine.models.random_folder import write_random_folder as w
w('whisper-turbo', '/tmp/turbo-job', $JOB_SIZES, force=True)" \
    && timeout -k 10 "${GPU_JOB_S:-70}" "$PY" bench/encode_job.py --model /tmp/turbo-job --noise "$NOISE" \
    --dtype bfloat16 --batch 16 --repeats 1 > "$OUT/encode_job.txt" 2>&1
log "encode job exit $?; load $(cut -d' ' -f1-3 /proc/loadavg)"
