#!/usr/bin/env bash
# Run a benchmark command with both libraries restricted to AVX2 on an AVX-512 machine, so
# that one machine measures the ratios of both instruction sets side by side:
#     bash benchmarks/avx2.sh python benchmarks/bench_models.py --models resnet18
# numba compiles for Haswell (AVX2, FMA; its cache keeps these builds apart), OpenBLAS runs
# its Haswell kernels, PyTorch dispatches its AVX2 kernels and caps oneDNN and MKL at AVX2.
# The benchmarks' header line says what each side ran ("numba for haswell, torch AVX2").
set -euo pipefail
export NUMBA_CPU_NAME=haswell OPENBLAS_CORETYPE=Haswell ATEN_CPU_CAPABILITY=avx2 \
    ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2
unset OPENBLAS_L2_SIZE
exec "$@"
