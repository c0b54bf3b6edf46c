"""What an operator supports, as typed data, and the checks that turn it into reasons.

Every reason is built from the same field the check reads, so a message can never quote a bound the
check did not use. Operators add checks of their own in ``extra_reasons``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional

import torch

from attncore.geometry import Anchor, BiasFeatures, Layout
from attncore.inputs import CallFeatures
from attncore.reasons import Reason

__all__ = ["ALL_BANDS", "BiasSupport", "Capabilities", "Direction", "check_capabilities"]

Direction = Literal["forward", "backward"]
ALL_BANDS = frozenset({"causal", "causal_local", "local", "lower_bound"})


def _names(values: object) -> str:
    items = sorted(str(v).replace("torch.", "") if not hasattr(v, "value") else str(v.value) for v in values)  # type: ignore[attr-defined]  # enums carry .value
    return ", ".join(items) if items else "none"


@dataclass(frozen=True)
class BiasSupport:
    """Which pieces of a bias an operator handles (see :mod:`attncore.geometry`)."""

    layouts: frozenset[Layout] = frozenset({Layout.DENSE})
    bands: frozenset[str] = frozenset()
    anchors: frozenset[Anchor] = frozenset({Anchor.TOP_LEFT, Anchor.BOTTOM_RIGHT})
    paged: bool = False
    tensor: bool = False

    @classmethod
    def everything(cls) -> BiasSupport:
        return cls(frozenset(Layout), ALL_BANDS, frozenset(Anchor), True, True)

    def reasons(self, bias: BiasFeatures) -> list[Reason]:
        out = []
        if bias.layout not in self.layouts:
            out.append(Reason("attn_bias sequence layout", bias.layout.value, _names(self.layouts)))
        if bias.band is not None and bias.band not in self.bands:
            out.append(Reason("attn_bias band", bias.band, _names(self.bands)))
        if bias.anchor is not None and bias.anchor not in self.anchors:
            out.append(Reason("attn_bias anchor", bias.anchor.value, _names(self.anchors)))
        if bias.paged and not self.paged:
            out.append(Reason("attn_bias paging", "paged keys", "contiguous keys only"))
        if bias.tensor and not self.tensor:
            out.append(Reason("attn_bias tensor", "an additive tensor", "structured masks only"))
        return out


def _cc(cc: tuple[int, int]) -> str:
    return f"sm_{cc[0]}{cc[1]} ({cc[0]}.{cc[1]})"


@dataclass(frozen=True)
class Capabilities:
    """Typed capabilities of one operator. Every field is checked by :func:`check_capabilities`.

    ``max_compute_capability`` is a cap, not a hard limit: the dispatch policy can relax it per call
    (``attncore.dispatch.policy(relax=["max_compute_capability"])``).

    ``deterministic``: the backward gives bitwise-equal results on equal inputs whenever
    ``torch.use_deterministic_algorithms(True)`` is on (an op may take faster, non-reproducible paths
    while it is off). Backward ops that declare False are rejected while that mode is on (not with
    ``warn_only=True``, under which torch itself only warns and runs its non-deterministic kernels), also
    when it was switched on between the forward and the backward.
    """

    devices: frozenset[str]
    dtypes: frozenset[torch.dtype]
    min_head_dim: int = 1
    max_head_dim: Optional[int] = None
    head_dim_multiple: int = 1
    different_value_dim: bool = True
    ndims: frozenset[int] = frozenset({3, 4, 5})
    max_query_len: Optional[int] = None
    bias: BiasSupport = field(default_factory=BiasSupport)
    dropout: bool = False
    dropout_rng: Optional[str] = None
    custom_scale: bool = True
    lse: bool = True
    tensor_bias_grad: bool = False
    deterministic: bool = True
    min_compute_capability: Optional[tuple[int, int]] = None
    max_compute_capability: Optional[tuple[int, int]] = None
    rocm_archs: Optional[frozenset[str]] = None

    @property
    def relaxable(self) -> frozenset[str]:
        return frozenset({"max_compute_capability"} if self.max_compute_capability else set())


def check_capabilities(
    caps: Capabilities,
    f: CallFeatures,
    direction: Direction,
    num_queries: int,
    relax: frozenset[str] = frozenset(),
) -> list[Reason]:
    """Every reason ``caps`` rejects a call with features ``f`` (empty list: supported)."""
    out: list[Reason] = []
    dev = f.device
    if dev.kind not in caps.devices:
        out.append(Reason("device", dev.describe(), _names(caps.devices)))
    elif dev.kind == "cuda" and dev.capability is not None:
        lo, hi = caps.min_compute_capability, caps.max_compute_capability
        if lo is not None and dev.capability < lo:
            out.append(Reason("compute capability", _cc(dev.capability), f">= {_cc(lo)}"))
        if hi is not None and dev.capability > hi and "max_compute_capability" not in relax:
            out.append(
                Reason(
                    "compute capability",
                    _cc(dev.capability),
                    f"<= {_cc(hi)} (validated cap)",
                    "to try it anyway: attncore.dispatch.policy(relax=['max_compute_capability'])",
                )
            )
    elif dev.kind == "rocm" and caps.rocm_archs is not None and dev.arch not in caps.rocm_archs:
        out.append(Reason("gfx arch", str(dev.arch), _names(caps.rocm_archs)))
    if f.dtype not in caps.dtypes:
        out.append(Reason("dtype", str(f.dtype).replace("torch.", ""), _names(caps.dtypes)))
    if f.ndim not in caps.ndims:
        out.append(Reason("layout", f"{f.ndim}-D", " or ".join(f"{n}-D" for n in sorted(caps.ndims))))
    for label, k in (("head dim K", f.head_dim), ("value head dim Kv", f.value_dim)):
        if k < caps.min_head_dim or (caps.max_head_dim is not None and k > caps.max_head_dim):
            hi_txt = "" if caps.max_head_dim is None else f" <= {caps.max_head_dim}"
            out.append(Reason(label, str(k), f">= {caps.min_head_dim}{hi_txt}"))
        if k % caps.head_dim_multiple:
            out.append(Reason(label, str(k), f"a multiple of {caps.head_dim_multiple}"))
    if f.value_dim != f.head_dim and not caps.different_value_dim:
        out.append(Reason("value head dim Kv", f"Kv={f.value_dim} != K={f.head_dim}", "Kv == K"))
    if caps.max_query_len is not None and num_queries > caps.max_query_len:
        # worded for the whole dispatch bucket (cached decisions are shared by every Mq above the limit)
        out.append(Reason("queries Mq", f"more than {caps.max_query_len}", f"<= {caps.max_query_len}"))
    out += caps.bias.reasons(f.bias)
    if f.dropout and not caps.dropout:
        out.append(Reason("dropout p", "p > 0", "p == 0 only"))
    if f.custom_scale and not caps.custom_scale:
        out.append(Reason("scale", "a custom scale", "K ** -0.5 only"))
    if (f.is_partial or (f.requires_grad and direction == "forward")) and not caps.lse:
        out.append(Reason("LSE output", "needed (partial attention or training)", "output only"))
    if direction == "backward" and f.bias_requires_grad and not caps.tensor_bias_grad:
        out.append(Reason("attn_bias gradient", "bias tensor requires grad", "no gradient for the bias"))
    if direction == "backward" and f.deterministic and not caps.deterministic:
        out.append(
            Reason(
                "determinism",
                "torch.use_deterministic_algorithms(True)",
                "a backward whose results may vary run to run (atomic adds)",
                "torch.use_deterministic_algorithms(False) to allow it",
            )
        )
    return out
