#!/bin/bash
# attncore-triton on a GPU machine, from the repository root: the GPU tests, then the benchmark.
#   benchmarks/gpu_triton.sh [tests|bench|host|all] [bench_triton.py arguments...]
# Results go to $OUT (default /tmp/attncore-triton): tests.log, bench.log, results.md, results.json,
# autotune.json (the autotuner's choices with every candidate's time), host.log and host.json (host time
# per layer at M = 512, binaries reused vs Triton's launch path: benchmarks/host_triton.py). TEST_K narrows
# the tests (pytest -k); ATTNCORE_TRITON_RELAUNCH=0 runs them (and the benchmark) through Triton's launch path.
set -o pipefail
mode="${1:-all}"; shift || true
OUT="${OUT:-/tmp/attncore-triton}"; mkdir -p "$OUT"
export ATTNCORE_TRITON_CACHE="$OUT/autotune.json" PYTHONUNBUFFERED=1
# pytest-xdist (compiles in parallel) when its wheels were carried along; serial otherwise
wheels=(plugins/triton_flash/build/wheels/*.whl)
if [ -f "${wheels[0]}" ] && ! python3 -c "import xdist" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --target /tmp/xdist-site "${wheels[@]}" && export PYTHONPATH="/tmp/xdist-site${PYTHONPATH:+:$PYTHONPATH}"
fi
par=""; python3 -c "import xdist" 2>/dev/null && par="-n ${JOBS:-14}"
status=0
if [ "$mode" = tests ] || [ "$mode" = all ]; then
  # the tests check every autotuning candidate explicitly; the default path takes the first candidate
  ATTNCORE_TRITON_AUTOTUNE=0 python3 -m pytest -q -p no:cacheprovider $par plugins/triton_flash/tests tests/test_conformance.py -k "${TEST_K:-triton}" 2>&1 | tee "$OUT/tests.log" || status=1
fi
if [ "$mode" = bench ] || [ "$mode" = all ]; then
  python3 benchmarks/bench_triton.py --out "$OUT/results.md" --json "$OUT/results.json" "$@" 2>&1 | tee "$OUT/bench.log" || status=1
fi
if [ "$mode" = host ] || [ "$mode" = all ]; then
  python3 benchmarks/host_triton.py --json "$OUT/host.json" 2>&1 | tee "$OUT/host.log" || status=1
fi
exit $status
