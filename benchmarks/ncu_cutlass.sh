#!/bin/bash
# Profile one forward (and backward) call of attncore-cutlass and of SDPA efficient with Nsight Compute,
# from the repository root on a GPU machine:  benchmarks/ncu_cutlass.sh [K] [M] [causal 0|1] [bf16|fp16|fp32]
# Prints the speed-of-light, occupancy and warp-stall sections of each attention kernel, and each stall
# reason in cycles per issued instruction.
set -o pipefail
K="${1:-128}"; M="${2:-4096}"; CAUSAL="${3:-0}"
case "${4:-bf16}" in bf16) DT=bfloat16 ;; fp16) DT=float16 ;; fp32) DT=float32 ;; *) echo "dtype: bf16, fp16 or fp32"; exit 2 ;; esac
NCU="$(command -v ncu || ls /usr/local/cuda/bin/ncu 2>/dev/null || true)"
[ -z "$NCU" ] && { echo "ncu not found"; exit 2; }
cat > /tmp/attncore_ncu_case.py <<PY
import torch, attncore
from attncore_cutlass.ops import CutlassFwOp, CutlassBwOp
K, M, causal = $K, $M, bool($CAUSAL)
B, H = max(1, 16384 // M), 2048 // K
q, k, v = (torch.randn(B, M, H, K, device="cuda", dtype=torch.$DT, requires_grad=True) for _ in range(3))
bias = attncore.LowerTriangularMask() if causal else None
for _ in range(2):
    out = attncore.memory_efficient_attention(q, k, v, bias, op=(CutlassFwOp, CutlassBwOp))
    out.backward(torch.randn_like(out))
    from torch.nn.attention import sdpa_kernel, SDPBackend
    with sdpa_kernel(SDPBackend.EFFICIENT_ATTENTION):
        o2 = torch.nn.functional.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=causal)
        o2.backward(torch.randn_like(o2))
torch.cuda.synchronize()
PY
mkdir -p "${OUT:-/tmp}"
"$NCU" --clock-control none --kernel-name regex:"fwd_tc|fwd_f32|bwd_dkdv_tc|bwd_dq_tc|fmha|attention" --launch-skip 0 --launch-count 6 \
  --section SpeedOfLight --section Occupancy --section WarpStateStats --section LaunchStats --section InstructionStats \
  --metrics "regex:smsp__average_warps_issue_stalled_.*_per_issue_active\.ratio,smsp__inst_executed.sum,sm__inst_executed_pipe_tensor.sum" \
  python3 /tmp/attncore_ncu_case.py > "${OUT:-/tmp}/ncu.txt" 2>&1
grep -vE "^==PROF==|^\s*$|^    -----" "${OUT:-/tmp}/ncu.txt" | grep -vE "^\s+(OPT|INF|WRN)|^\s{10,}" | head -300
