#!/usr/bin/env bash
# The GPU check in one go (a lent GPU machine, about 8 minutes at most):
#   1. the machine: nvidia-smi, library versions, what minidl.cuda sees;
#   2. python3 -m pytest -m gpu (the GPU cases only; junit XML in $OUT);
#   3. benchmarks/bench_gpu.py with TF32 off, then on (a process each), and one merged table;
#   4. examples/lenet_mnist.py --device cuda: 2 epochs of the lecture's recipe on real MNIST
#      when data/MNIST holds its IDX files (carry them: data/ is git-ignored; gzip'd they
#      are 11 MB), else 1 epoch on 6,000 synthetic digits. --no-plots: the device has no
#      matplotlib.
#   To carry real MNIST from a machine that has it in minidl's cache:
#      mkdir -p data/MNIST && for f in ~/.cache/minidl/MNIST/*-ubyte; do
#          gzip -c "$f" > "data/MNIST/$(basename "$f").gz"; done
# A failing or timed-out step does not stop the later ones; the exit status is 1 if any failed.
# Rehearse step 2 on the CPU first: MINIDL_FAKE_CUPY=1 python -m pytest -m gpu (tests/fake_cupy.py).
#
#   bash benchmarks/gpu_check.sh                 # writes into $OUT, or ./gpu_check_out
#   PYTHON=.venv/bin/python BENCH_ARGS="--device cpu --quick" bash benchmarks/gpu_check.sh
#                                                # a dry run of the flow on a CPU-only machine
# Time limits per step (seconds, SIGINT first so pytest and the benchmark still write their
# reports, SIGKILL 15 s later): PYTEST_TIMEOUT, BENCH_TIMEOUT_OFF, BENCH_TIMEOUT_ON.
set -euo pipefail

cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
OUT=${OUT:-./gpu_check_out}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
PYTEST_TIMEOUT=${PYTEST_TIMEOUT:-210}
BENCH_TIMEOUT_OFF=${BENCH_TIMEOUT_OFF:-140}
BENCH_TIMEOUT_ON=${BENCH_TIMEOUT_ON:-80}
LENET_TIMEOUT=${LENET_TIMEOUT:-50}
read -r -a BENCH_EXTRA <<< "${BENCH_ARGS:-}"

limit() {  # limit SECONDS CMD...: run CMD, interrupted after SECONDS (if `timeout` exists)
    local seconds=$1
    shift
    if command -v timeout > /dev/null; then
        timeout -s INT -k 15 "$seconds" "$@"
    else
        "$@"
    fi
}

section() {
    echo
    echo "==================== $* ($(date -u +%H:%M:%S), $((SECONDS))s in)"
}

main() {
    local pytest_rc=0 off_rc=0 on_rc=0 merge_rc=0 lenet_rc=0

    section "machine"
    date -u
    uname -a
    nvidia-smi || echo "nvidia-smi: not available"
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,power.limit \
        --format=csv || true
    "$PY" --version
    "$PY" - <<'EOF' || echo "version report failed"
import importlib
for name in ("numpy", "cupy", "torch", "numba", "pytest", "hypothesis"):
    try:
        m = importlib.import_module(name)
        print(f"{name:11s} {getattr(m, '__version__', '?')}")
    except Exception as exc:
        print(f"{name:11s} not importable: {type(exc).__name__}: {exc}")
try:
    import torch
    print("torch cuda", torch.version.cuda, "cudnn", torch.backends.cudnn.version(),
          "available", torch.cuda.is_available())
except Exception as exc:
    print("torch cuda: ", exc)
import minidl
print("minidl.cuda.is_available()", minidl.cuda.is_available(),
      "device_count()", minidl.cuda.device_count())
if minidl.cuda.is_available():
    cp = minidl.backend.require_cupy()
    print("minidl.cuda.get_device_name()", minidl.cuda.get_device_name(),
          "capability", minidl.cuda.get_device_capability(),
          "CUDA runtime", cp.cuda.runtime.runtimeGetVersion(),
          "driver API", cp.cuda.runtime.driverGetVersion())
EOF

    section "pytest -m gpu (limit ${PYTEST_TIMEOUT}s)"
    # The kernels and the LeNet path first (a time limit cuts the tail, and CuPy compiles
    # every kernel cold on a fresh machine), then every other test file.
    local files=(tests/test_cuda_api.py tests/test_cuda_kernels.py tests/test_conv.py
                 tests/test_pool.py tests/test_activation.py tests/test_loss.py tests/test_norm.py
                 tests/test_device_loader.py tests/test_example_lenet.py)
    local f
    for f in tests/test_*.py; do
        case " ${files[*]} " in *" $f "*) ;; *) files+=("$f") ;; esac
    done
    limit "$PYTEST_TIMEOUT" "$PY" -m pytest -m gpu -q --maxfail=40 --durations=15 -p no:cacheprovider \
        --junitxml="$OUT/pytest_gpu.xml" "${files[@]}" || pytest_rc=$?
    echo "pytest -m gpu: exit status $pytest_rc"

    section "bench_gpu.py, TF32 off (limit ${BENCH_TIMEOUT_OFF}s)"
    CUPY_TF32=0 limit "$BENCH_TIMEOUT_OFF" "$PY" benchmarks/bench_gpu.py --tf32 off \
        --json "$OUT/bench_gpu_tf32_off.json" ${BENCH_EXTRA[@]+"${BENCH_EXTRA[@]}"} || off_rc=$?
    echo "bench_gpu.py --tf32 off: exit status $off_rc"

    section "bench_gpu.py, TF32 on (limit ${BENCH_TIMEOUT_ON}s)"
    CUPY_TF32=1 limit "$BENCH_TIMEOUT_ON" "$PY" benchmarks/bench_gpu.py --tf32 on \
        --json "$OUT/bench_gpu_tf32_on.json" ${BENCH_EXTRA[@]+"${BENCH_EXTRA[@]}"} || on_rc=$?
    echo "bench_gpu.py --tf32 on: exit status $on_rc"

    section "both TF32 modes, one table (also in $OUT/bench_gpu_table.md)"
    "$PY" benchmarks/bench_gpu.py --merge "$OUT/bench_gpu_tf32_off.json" \
        "$OUT/bench_gpu_tf32_on.json" > "$OUT/bench_gpu_table.md" || merge_rc=$?
    cat "$OUT/bench_gpu_table.md"

    local lenet_args=(--synthetic --limit 6000 --epochs 1)
    if [ -d data/MNIST ]; then
        lenet_args=(--data-dir data/MNIST --no-download --epochs 2)
    fi
    section "examples/lenet_mnist.py --device cuda ${lenet_args[*]} (limit ${LENET_TIMEOUT}s)"
    limit "$LENET_TIMEOUT" "$PY" examples/lenet_mnist.py --device cuda "${lenet_args[@]}" \
        ${LENET_ARGS:-} --no-plots --no-progress --out "$OUT/lenet_cuda" || lenet_rc=$?
    echo "lenet_mnist.py --device cuda: exit status $lenet_rc"

    section "summary"
    echo "pytest -m gpu $pytest_rc, bench TF32 off $off_rc, bench TF32 on $on_rc, merge $merge_rc," \
         "lenet --device cuda $lenet_rc (124: hit its time limit); ${SECONDS}s in all"
    if [ "$pytest_rc" -ne 0 ] || [ "$off_rc" -ne 0 ] || [ "$on_rc" -ne 0 ] || [ "$merge_rc" -ne 0 ] \
            || [ "$lenet_rc" -ne 0 ]; then
        echo "gpu_check: FAILED"
        return 1
    fi
    echo "gpu_check: OK"
}

main 2>&1 | tee "$OUT/gpu_check.log"
