"""``python -m attncore.info``: what is installed, what it was built for, and what can run here."""

from __future__ import annotations

import json
import platform
import sys
from typing import Any, Optional

import torch

from attncore import _compile
from attncore.capabilities import Capabilities, Direction
from attncore.device import device_info
from attncore.dispatch import checked_reasons
from attncore.inputs import Inputs
from attncore.ops import AttentionOpBase
from attncore.policy import current_policy
from attncore.registry import get_registry

__all__ = ["collect", "main", "render"]


def _devices() -> list[torch.device]:
    devs = [torch.device("cpu")]
    if torch.cuda.is_available():
        devs += [torch.device("cuda", i) for i in range(torch.cuda.device_count())]
    return devs


def _caps(c: Capabilities) -> dict[str, Any]:
    def names(xs: Any) -> list[str]:
        return sorted(str(getattr(x, "value", x)).replace("torch.", "") for x in xs)

    return {
        "devices": names(c.devices),
        "dtypes": names(c.dtypes),
        "head_dim": f"{c.min_head_dim}..{c.max_head_dim or 'any'}" + (f" (multiple of {c.head_dim_multiple})" if c.head_dim_multiple > 1 else ""),
        "bias": {"layouts": names(c.bias.layouts), "bands": names(c.bias.bands), "paged": c.bias.paged, "tensor": c.bias.tensor},
        "dropout": c.dropout,
        "max_query_len": c.max_query_len,
        "min_compute_capability": c.min_compute_capability,
        "max_compute_capability (cap, relaxable)": c.max_compute_capability,
        "rocm_archs": names(c.rocm_archs) if c.rocm_archs is not None else None,
    }


def _probe(op: type[AttentionOpBase], device: torch.device) -> list[str]:
    """Reasons ``op`` rejects a plain call on ``device`` (its first floating-point dtype, a head dim it takes
    near 64); empty if usable. A probe that fails is reported as the verdict, never raised."""
    caps = op.CAPABILITIES
    dtypes = sorted((d for d in caps.dtypes if d in _PROBE_DTYPES), key=_PROBE_DTYPES.index)
    if not dtypes:
        return [f"not probed: no dtype among {', '.join(str(d).replace('torch.', '') for d in _PROBE_DTYPES)}"]
    k = max(64, caps.min_head_dim)
    if caps.max_head_dim is not None:
        k = min(k, caps.max_head_dim)
    k -= k % max(1, caps.head_dim_multiple)
    k = max(k, caps.min_head_dim)
    try:
        q = torch.empty((1, 1, 1, k), dtype=dtypes[0], device=device)
        inputs = Inputs.create(q, q, q)
    except (ValueError, RuntimeError) as exc:
        return [f"not probed: {type(exc).__name__}: {exc}"]
    return [str(r) for r in checked_reasons(op, inputs, current_policy().relax)]


#: The dtypes ``info`` probes operators with, in order of preference.
_PROBE_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def collect() -> dict[str, Any]:
    """Everything ``attncore.info`` prints, as plain data."""
    from attncore import __version__

    reg = get_registry()
    devices = _devices()
    ops: list[dict[str, Any]] = []
    directions: tuple[Direction, ...] = ("forward", "backward")
    for direction in directions:
        for op in reg.operators(direction):
            usable = {str(d): (_probe(op, d) or "usable") for d in devices}
            ops.append({"op": op.NAME, "direction": direction, "priority": op.PRIORITY, "usable": usable, "capabilities": _caps(op.CAPABILITIES)})
    pol = current_policy()
    return {
        "attncore": __version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "torch_hip": getattr(torch.version, "hip", None),
        "devices": [device_info(d).describe() for d in devices],
        "policy": {"order": list(pol.order) if pol.order else None, "relax": sorted(pol.relax), "source": pol.source},
        "torch_compile": f"custom op {_compile.FORWARD_OP} registered" if _compile.REGISTERED else f"unavailable (graph break): {_compile.UNAVAILABLE_REASON}",
        "plugins": [r.to_dict() for r in reg.plugins()],
        "operators": ops,
    }


def render(data: dict[str, Any]) -> str:
    lines = [
        f"attncore {data['attncore']}  python {data['python']}  torch {data['torch']} (cuda {data['torch_cuda']}, hip {data['torch_hip']})",
        f"devices: {', '.join(data['devices'])}",
        f"policy: {data['policy']['source']}",
        f"torch.compile: {data['torch_compile']}",
        "",
        "plugins:",
    ]
    for p in data["plugins"]:
        state = "available" if p["available"] else "UNAVAILABLE"
        lines.append(f"  {p['name']:<14} {p['version'] or '?':<10} {state}   ({p['source']})")
        if p["requires"]:
            lines.append(f"  {'':<14} requires: {', '.join(f'{k}{v}' for k, v in p['requires'].items())}")
        if p["build"] is not None:
            lines.append(f"  {'':<14} build: {', '.join(f'{k}={v}' for k, v in p['build'].items())}")
        lines += [f"  {'':<14} - {r}" for r in p["reasons"]]
    lines += ["", "operators (dispatch order):"]
    for o in data["operators"]:
        c = o["capabilities"]
        lines.append(f"  {o['op']:<20} {o['direction']:<8} prio {o['priority']:>3}  dtypes {','.join(c['dtypes'])}  K {c['head_dim']}")
        caps: list[str] = []
        if c["max_query_len"] is not None:
            caps.append(f"Mq <= {c['max_query_len']}")
        if c["min_compute_capability"] is not None:
            caps.append(f"cc >= {c['min_compute_capability']}")
        if c["max_compute_capability (cap, relaxable)"] is not None:
            caps.append(f"cc <= {c['max_compute_capability (cap, relaxable)']} (cap; relax with attncore.dispatch.policy(relax=['max_compute_capability']))")
        if caps:
            lines.append(f"  {'':<20} limits: {'; '.join(caps)}")
        for dev, verdict in o["usable"].items():
            text = verdict if isinstance(verdict, str) else "not usable: " + " | ".join(verdict)
            lines.append(f"  {'':<20} {dev}: {text}")
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    data = collect()
    print(json.dumps(data, indent=2, default=str) if "--json" in args else render(data))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
