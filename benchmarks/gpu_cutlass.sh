#!/bin/bash
# attncore-cutlass on a GPU machine, from the repository root: the tf32 check, build, GPU tests, gpu_matrix,
# benchmark.
#   benchmarks/gpu_cutlass.sh [tf32|build|tests|matrix|bench|fwd-ab|masks-ab|all]... [-- bench_cutlass.py arguments...]
# tf32 compiles and runs plugins/cutlass_like/tools/tf32_check.cu (the 3xTF32 split and products on this
# GPU, seconds, no torch). Results go to $OUT (default /tmp/attncore-cutlass): tf32.log, build.log, tests.log, matrix.log, bench.log,
# results.md, results.json. TEST_K narrows the tests (pytest -k), MATRIX_ARGS is passed to gpu_matrix's pytest.
# fwd-ab (not part of all) times the fp32 forward at K = 64, 128 and 256 under each setting in FWD_AB of the
# variable FWD_AB_VAR (default ATTNCORE_CUTLASS_FP32_FWD_KEYS; space-separated; "unset" leaves it unset, "none"
# sets it empty; default "unset none 128=16"): fwd_<setting>.md ("/" written "-"), after printing the tile
# configuration each setting runs without a mask and under a causal one (fwd_variants.log). masks-ab (not part of all) times the forward
# (every dtype) with ATTNCORE_CUTLASS_FWD_WARP_MASKS empty (off) and =1: masks_off.md and masks_on.md, after
# printing the causal calls' kernels (masks_variants.log); the warps and key-tile switches are unset for both.
set -o pipefail
modes=(); while [ $# -gt 0 ] && [ "$1" != "--" ]; do modes+=("$1"); shift; done; [ "$1" = "--" ] && shift
[ ${#modes[@]} -eq 0 ] && modes=(all)
OUT="${OUT:-/tmp/attncore-cutlass}"; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 ATTNCORE_CUTLASS_CACHE="${ATTNCORE_CUTLASS_CACHE:-$OUT/cache}"
wheels=(plugins/triton_flash/build/wheels/*.whl)  # pytest-xdist, when carried along
if [ -f "${wheels[0]}" ] && ! python3 -c "import xdist" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --target /tmp/xdist-site "${wheels[@]}" && export PYTHONPATH="/tmp/xdist-site${PYTHONPATH:+:$PYTHONPATH}"
fi
par=""; python3 -c "import xdist" 2>/dev/null && par="-n ${JOBS:-14}"
want() { for m in "${modes[@]}"; do [ "$m" = "$1" ] || [ "$m" = all ] && return 0; done; return 1; }
status=0
if want tf32; then
  arch="$(python3 -c "import torch; print(''.join(map(str, torch.cuda.get_device_capability())))")"
  nvcc="$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)"
  { "$nvcc" -std=c++17 -O3 -arch="sm_${arch}$([ "$arch" = 90 ] && echo a)" -I plugins/cutlass_like/attncore_cutlass/csrc \
      plugins/cutlass_like/tools/tf32_check.cu -o /tmp/attncore_tf32_check && /tmp/attncore_tf32_check; } 2>&1 | tee "$OUT/tf32.log" || status=1
fi
if want build; then  # the first-use build, timed, then what negotiation says
  { time python3 -c "import torch; from attncore_cutlass import _launch; _launch.extension(tuple(torch.cuda.get_device_capability()))"; python3 -m attncore_cutlass status; } 2>&1 | tee "$OUT/build.log" || status=1
fi
if want tests; then
  python3 -m pytest -q -p no:cacheprovider -m "not slow" $par plugins/cutlass_like/tests tests/test_conformance.py -k "${TEST_K:-cutlass or Cutlass or negotiation}" 2>&1 | tee "$OUT/tests.log" || status=1
fi
if want matrix; then
  python3 -m nox -s gpu_matrix -- $par ${MATRIX_ARGS:-} 2>&1 | tee "$OUT/matrix.log" || status=1
fi
if [[ " ${modes[*]} " == *" fwd-ab "* ]]; then
  var="${FWD_AB_VAR:-ATTNCORE_CUTLASS_FP32_FWD_KEYS}"
  setenv() {  # the setting under test, and no warp masks (they would run on the default tiles only)
    if [ "$name" = unset ]; then env -u "$var" -u ATTNCORE_CUTLASS_FWD_WARP_MASKS "$@"
    else env -u ATTNCORE_CUTLASS_FWD_WARP_MASKS "$var=$keys" "$@"; fi
  }
  read -r -a settings <<< "${FWD_AB:-unset none 128=16}"
  rm -f "$OUT/fwd_variants.log"
  for name in "${settings[@]}"; do
    keys=$([ "$name" = none ] || echo "$name")
    setenv python3 benchmarks/cutlass_variants.py "fwd-ab $name" 2>&1 | tee -a "$OUT/fwd_variants.log" || status=1
    file="${name//\//-}"  # "256=2x2/16" names fwd_256=2x2-16.md
    setenv python3 benchmarks/bench_cutlass.py --dtypes fp32 --dirs fwd --heads 64,128,256 \
      --out "$OUT/fwd_$file.md" --json "$OUT/fwd_$file.json" "$@" 2>&1 | tee "$OUT/fwd_$file.log" || status=1
  done
fi
if [[ " ${modes[*]} " == *" masks-ab "* ]]; then  # the forward with key tiles classified per CTA, then per warp
  rm -f "$OUT/masks_variants.log"
  for masks in off on; do  # on the key tiles: the warps and fp32 key-tile switches unset, no wide warps, both runs
    run() { env -u ATTNCORE_CUTLASS_FWD_WARPS -u ATTNCORE_CUTLASS_FP32_FWD_KEYS ATTNCORE_CUTLASS_FP32_FWD_WIDE= ATTNCORE_CUTLASS_FWD_WARP_MASKS=$([ $masks = on ] && echo 1) "$@"; }
    run python3 benchmarks/cutlass_variants.py "masks-ab $masks" --dtypes bf16,fp16,fp32 --masks causal 2>&1 | tee -a "$OUT/masks_variants.log" || status=1
    run python3 benchmarks/bench_cutlass.py --dirs fwd \
      --out "$OUT/masks_$masks.md" --json "$OUT/masks_$masks.json" "$@" 2>&1 | tee "$OUT/masks_$masks.log" || status=1
  done
fi
if want bench; then
  python3 benchmarks/bench_cutlass.py --out "$OUT/results.md" --json "$OUT/results.json" "$@" 2>&1 | tee "$OUT/bench.log" || status=1
fi
exit $status
