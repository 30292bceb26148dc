#!/usr/bin/env bash
# Every GPU number BENCHMARKS.md still lacks (issues: training throughput, memory-lean peak, single-step latency),
# in ONE call of a lent H100/H200, each benchmark beside its own baseline in the same run. Parts run in order of
# value, each under its own time limit, each writing its table as soon as it finishes, so a part that runs out of
# time costs only itself. About 8 minutes at full size.
#
# On the lent machine (diffusers and torchao are not installed there; carry their wheels):
#   pip download --no-deps -d .whl diffusers importlib_metadata torchao   # here: wheels into the ignored .whl/
#   run(command="OUT=$OUT bash benchmarks/gpu_session.sh", carry=[".whl"], timeout_s=580)
# On CPU, as the test suite does (tiny models, a few steps; checks the plumbing, not the numbers):
#   SIZE=tiny DEVICE=cpu OUT=/tmp/gpu-session bash benchmarks/gpu_session.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu_session_output}
SIZE=${SIZE:-full}
DEVICE=${DEVICE:-cuda}
PYTHON=${PYTHON:-python}
mkdir -p "$OUT"

if compgen -G ".whl/*.whl" >/dev/null; then
    "$PYTHON" -m pip install --no-deps --quiet .whl/*.whl || exit 1
fi

if [ "$SIZE" = full ]; then
    # reduce-overhead: CUDA graphs without max-autotune's kernel search, which alone can take minutes at full size.
    HIGH=1024 LOW=512 BATCH_HIGH=2 BATCH_LOW=8 STEPS=10 REPEATS=20 TIMING=6 LIMIT=170
    TRAIN_COMPILE=(--compile) INFER_COMPILE=(--compile_mode "${COMPILE_MODE:-reduce-overhead}")
else  # plumbing check on a CPU: tiny models and sizes, dynamo's eager backend (inductor on CPU takes minutes)
    HIGH=64 LOW=32 BATCH_HIGH=2 BATCH_LOW=2 STEPS=2 REPEATS=1 TIMING=1 LIMIT=300
    TRAIN_COMPILE=() INFER_COMPILE=(--compile_mode default --compile_backend eager)
fi

status=0
part() {  # part NAME SECONDS SCRIPT ARGS...: one benchmark, its table in $OUT/NAME.md, its log in $OUT/NAME.log
    local name=$1 limit=$2
    shift 2
    local start=$SECONDS
    timeout "$limit" "$PYTHON" "$@" >"$OUT/$name.md" 2>"$OUT/$name.log"
    local code=$?
    echo "$name: exit $code after $((SECONDS - start)) s" | tee -a "$OUT/summary.txt"
    [ "$code" -eq 0 ] || status=1
}

"$PYTHON" -c "import sys; sys.path.insert(0, 'benchmarks'); import machine_info, torch, diffusers; \
print(machine_info.cpu_description(), '| torch', torch.__version__, '| diffusers', diffusers.__version__, \
'|', torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU')" >"$OUT/machine.txt" 2>&1
cat "$OUT/machine.txt"

# 1. Training throughput at 1024², batch 2, checkpointing: naive loop vs the script's step (cached, images, compiled).
part training_high "$LIMIT" benchmarks/bench_training.py --size "$SIZE" --device "$DEVICE" \
    --resolution "$HIGH" --batch_size "$BATCH_HIGH" --steps "$STEPS" --gradient_checkpointing "${TRAIN_COMPILE[@]}"
# 2. --memory_lean against the default mode, same card, same shapes (peak memory, s/step).
part memory_lean "$LIMIT" benchmarks/bench_memory_lean.py --steps 0 --step_size "$SIZE" --device "$DEVICE" \
    --resolution "$HIGH" --batch_size "$BATCH_HIGH" --gradient_checkpointing --timing_steps "$TIMING"
# 3. Single-step inference at 512² and 1024²: naive, the pipeline, the slider path, and enable_fast_inference().
part inference "$LIMIT" benchmarks/bench_inference.py --size "$SIZE" --device "$DEVICE" \
    --resolutions "$LOW" "$HIGH" --repeats "$REPEATS" --fast "${INFER_COMPILE[@]}"
# 4. The batch/resolution table: 512², batch 8, no checkpointing (docs/design.md §6's best naive case).
part training_low "$LIMIT" benchmarks/bench_training.py --size "$SIZE" --device "$DEVICE" \
    --resolution "$LOW" --batch_size "$BATCH_LOW" --steps "$STEPS"

exit $status
