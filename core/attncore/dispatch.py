"""Choosing an operator, and explaining the choice.

One pass (:func:`evaluate`) looks at every candidate, in dispatch order, and records a verdict for
each: ``chosen``, ``accepted`` (would run, lower in the order), ``rejected`` (with its reasons),
``excluded`` (by the policy) or ``unavailable`` (its plugin did not load). The dispatcher caches that
:class:`Selection` per dispatch key, so the steady-state cost is one dictionary lookup; :func:`explain`
returns the very same selections, so what it prints is what the dispatcher does.
"""

from __future__ import annotations

import bisect
import json
import threading
from dataclasses import dataclass
from typing import Any, Literal, Optional, Union

import torch

from attncore.attn_bias import AttentionBias
from attncore.capabilities import Direction
from attncore.errors import NotSupportedError
from attncore.inputs import Inputs
from attncore.ops import AttentionBwOpBase, AttentionFwOpBase, AttentionOpBase
from attncore.policy import _CURRENT, Policy, current_policy, policy, reload_environment
from attncore.reasons import Reason
from attncore.registry import get_registry

__all__ = [
    "Candidate",
    "Explanation",
    "OpArg",
    "Selection",
    "clear_cache",
    "current_policy",
    "evaluate",
    "explain",
    "lookup",
    "not_supported",
    "policy",
    "reload_environment",
    "select",
]

Status = Literal["chosen", "accepted", "rejected", "excluded", "unavailable"]
OpArg = Union[
    None,
    str,
    type[AttentionFwOpBase],
    tuple[Optional[Union[str, type[AttentionFwOpBase]]], Optional[Union[str, type[AttentionBwOpBase]]]],
]


@dataclass(frozen=True)
class Candidate:
    """One operator (or unavailable plugin) and its verdict for one call and direction."""

    op: str
    status: Status
    reasons: tuple[Reason, ...] = ()
    priority: Optional[int] = None

    def to_dict(self) -> dict[str, Any]:
        return {"op": self.op, "status": self.status, "priority": self.priority, "reasons": [r.to_dict() for r in self.reasons]}


@dataclass(frozen=True)
class Selection:
    """The outcome of :func:`evaluate` for one direction: the chosen operator and the full trace."""

    direction: Direction
    chosen: Optional[type[AttentionOpBase]]
    candidates: tuple[Candidate, ...]
    policy: Policy
    forced: Optional[str] = None

    def table(self) -> str:
        head = f"{self.direction}: " + (f"chose {self.chosen.NAME}" if self.chosen else "no operator supports this call")
        if self.forced:
            head += f" (forced: op={self.forced})"
        if self.policy.source != "default":
            head += f" [policy: {self.policy.source}]"
        width = max([len(c.op) for c in self.candidates] + [8])
        lines = [head, f"  {'operator':<{width}}  {'prio':>4}  {'verdict':<11}  why"]
        for c in self.candidates:
            prio = "" if c.priority is None else str(c.priority)
            why = {"chosen": "", "accepted": "supported; lower in the dispatch order"}.get(c.status, "")
            first, *rest = [str(r) for r in c.reasons] or [why]
            lines.append(f"  {c.op:<{width}}  {prio:>4}  {c.status:<11}  {first}".rstrip())
            lines += [f"  {'':<{width}}  {'':>4}  {'':<11}  {r}" for r in rest]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "direction": self.direction,
            "chosen": self.chosen.NAME if self.chosen else None,
            "forced": self.forced,
            "policy": {"order": list(self.policy.order) if self.policy.order else None, "relax": sorted(self.policy.relax), "source": self.policy.source},
            "candidates": [c.to_dict() for c in self.candidates],
        }


_REGISTRY = get_registry()
_CACHE: dict[tuple[Any, ...], Selection] = {}
_CACHE_LOCK = threading.Lock()
_CACHE_MAX = 4096


def clear_cache() -> None:
    """Forget every cached decision (they are also invalidated by any registry change)."""
    with _CACHE_LOCK:
        _CACHE.clear()


Forced = Union[None, str, type[AttentionOpBase]]


def _forced(op: OpArg, direction: Direction) -> Forced:
    """The operator ``op=`` forces for ``direction``: a name, a class, or ``None`` (free choice)."""
    if op is None:
        return None
    if isinstance(op, str):
        # a forward-only operator named here leaves the backward free (as forcing its class does); a name
        # no operator has is kept, so that the selection rejects it
        if direction == "backward" and _REGISTRY.find(op, "backward") is None and _REGISTRY.find(op, "forward") is not None:
            return None
        return op
    if isinstance(op, tuple):
        if len(op) != 2 or not all(x is None or isinstance(x, str) or (isinstance(x, type) and issubclass(x, AttentionOpBase)) for x in op):
            raise ValueError(f"op: expected a (forward, backward) pair of operator classes or names, found {op!r}")
        return op[0] if direction == "forward" else op[1]
    if not (isinstance(op, type) and issubclass(op, AttentionOpBase)):
        raise ValueError(f"op: expected None, an operator name, an operator class or a (forward, backward) pair, found {type(op).__name__} {op!r}")
    return op if direction == "forward" else None


def checked_reasons(op: type[AttentionOpBase], inputs: Inputs, relax: frozenset[str]) -> list[Reason]:
    """``op.not_supported_reasons``, with a check that raises turned into a reason against that operator
    (a broken plugin is explained, never a crash of the dispatcher, ``explain`` or ``info``)."""
    try:
        return list(op.not_supported_reasons(inputs, relax))
    except Exception as exc:  # noqa: BLE001  # whatever a plugin's check raised becomes its rejection
        return [
            Reason(
                "plugin error",
                f"{op.NAME}.not_supported_reasons raised {type(exc).__name__}: {exc}",
                "a list of reasons",
                "reinstall or report the plugin providing this operator",
            )
        ]


def evaluate(inputs: Inputs, direction: Direction, *, forced: Forced = None, fw_rng: Optional[str] = None, pol: Optional[Policy] = None) -> Selection:
    """Judge every candidate operator for ``inputs`` (uncached). Never runs a kernel."""
    reg = get_registry()
    pol = pol if pol is not None else current_policy()
    ops = reg.operators(direction)
    if isinstance(forced, type):
        if forced.DIRECTION != direction:
            raise ValueError(f"op: expected a {direction} operator for the {direction} pass, found {forced.NAME} ({forced.DIRECTION})")
        if forced not in ops:
            ops = (forced, *ops)
        forced = forced.NAME
    ranked: list[tuple[int, int, type[AttentionOpBase]]] = []
    excluded: list[Candidate] = []
    for i, op in enumerate(ops):
        rank = pol.rank(op.NAME) if forced is None else (0 if op.NAME == forced else None)
        if rank is None:
            why = f"op={forced}" if forced is not None else pol.source
            excluded.append(Candidate(op.NAME, "excluded", (Reason("policy", f"not selected by {why}", "operators named by the policy"),), op.PRIORITY))
        else:
            ranked.append((rank, i, op))
    candidates: list[Candidate] = []
    chosen: Optional[type[AttentionOpBase]] = None
    for _, _, op in sorted(ranked, key=lambda t: (t[0], t[1])):
        reasons = checked_reasons(op, inputs, pol.relax)
        if direction == "backward" and inputs.p > 0.0 and op.CAPABILITIES.dropout_rng != fw_rng:
            reasons.append(
                Reason(
                    "dropout mask",
                    f"forward drew it with {fw_rng!r}",
                    f"regenerating {op.CAPABILITIES.dropout_rng!r} masks",
                    "use a forward and backward of the same family",
                )
            )
        if reasons:
            candidates.append(Candidate(op.NAME, "rejected", tuple(reasons), op.PRIORITY))
        elif chosen is None:
            chosen = op
            candidates.append(Candidate(op.NAME, "chosen", (), op.PRIORITY))
        else:
            candidates.append(Candidate(op.NAME, "accepted", (), op.PRIORITY))
    if forced is not None and not any(c.op == forced for c in candidates):
        candidates.insert(
            0, Candidate(forced, "rejected", (Reason("op", f"{forced!r} is not a registered {direction} operator", ", ".join(o.NAME for o in ops) or "none"),))
        )
    for rec in reg.unavailable():
        candidates.append(Candidate(f"{rec.name}.*", "unavailable", rec.reasons))
    return Selection(direction, chosen, tuple(candidates + excluded), pol, forced)


def lookup(inputs: Inputs, direction: Direction, *, op: OpArg = None, fw_rng: Optional[str] = None) -> Selection:
    """The cached :class:`Selection` for ``inputs``, whether or not it holds an operator (:func:`select`
    raises when it does not; :func:`not_supported` builds that error later, e.g. in a backward)."""
    forced = None if op is None else _forced(op, direction)
    pol = _CURRENT.get() or current_policy()
    generation, thresholds = _REGISTRY.dispatch_state()
    q_bucket = bisect.bisect_left(thresholds, inputs.num_queries) if thresholds else 0
    key = (direction, inputs.features, q_bucket, pol, generation, forced, fw_rng if inputs.p > 0.0 else None)
    sel = _CACHE.get(key)
    if sel is None:
        sel = evaluate(inputs, direction, forced=forced, fw_rng=fw_rng, pol=pol)
        with _CACHE_LOCK:
            if len(_CACHE) >= _CACHE_MAX:
                _CACHE.clear()
            _CACHE[key] = sel
    return sel


def not_supported(inputs: Inputs, sel: Selection) -> NotSupportedError:
    """The error for a selection that holds no operator: the call's description and the verdicts table."""
    return NotSupportedError(f"attncore: no operator can run this {sel.direction} call\n" + describe_inputs(inputs) + "\n" + sel.table(), sel)


def select(inputs: Inputs, direction: Direction, *, op: OpArg = None, fw_rng: Optional[str] = None) -> Selection:
    """The cached :class:`Selection` for ``inputs``; raises :class:`NotSupportedError` if none fits."""
    sel = lookup(inputs, direction, op=op, fw_rng=fw_rng)
    if sel.chosen is None:
        raise not_supported(inputs, sel)
    return sel


# --- explanation --------------------------------------------------------------------------------


def _bias_name(bias: object) -> str:
    if bias is None:
        return "None"
    if isinstance(bias, torch.Tensor):
        return f"Tensor{list(bias.shape)} {str(bias.dtype).replace('torch.', '')}"
    return type(bias).__name__


def input_facts(inputs: Inputs) -> dict[str, Any]:
    """What the reasons depend on, as plain data."""
    f = inputs.features
    scale_note = "custom" if f.custom_scale else "default K ** -0.5"
    return {
        "device": f.device.describe(),
        "dtype": str(f.dtype).replace("torch.", ""),
        "query": {"shape": list(inputs.query.shape), "stride": list(inputs.query.stride())},
        "key": {"shape": list(inputs.key.shape), "stride": list(inputs.key.stride())},
        "value": {"shape": list(inputs.value.shape), "stride": list(inputs.value.stride())},
        "layout": f"{f.ndim}-D",
        "K": f.head_dim,
        "Kv": f.value_dim,
        "attn_bias": _bias_name(inputs.attn_bias),
        "bias_features": f.bias.describe(),
        "p": inputs.p,
        "scale": f"{inputs.scale:g} ({scale_note})",
        "output_dtype": str(inputs.out_dtype).replace("torch.", ""),
        "requires_grad": f.requires_grad,
        "partial (LSE output)": f.is_partial,
        "shared kv heads (stride 0)": f.shared_kv_heads,
        "deterministic (torch mode)": f.deterministic,
    }


def describe_inputs(inputs: Inputs) -> str:
    facts = input_facts(inputs)
    lines = ["call:"]
    for name, value in facts.items():
        text = f"{value['shape']} stride {value['stride']}" if isinstance(value, dict) else value
        lines.append(f"  {name:<27} {text}")
    return "\n".join(lines)


@dataclass(frozen=True)
class Explanation:
    """What the dispatcher does with one call, forward and backward, and what that depends on."""

    inputs: dict[str, Any]
    forward: Selection
    backward: Optional[Selection]
    _text_inputs: str

    def __str__(self) -> str:
        parts = [self._text_inputs, self.forward.table()]
        if self.backward is not None:
            parts.append(self.backward.table())
        else:
            parts.append("backward: not needed (no input requires grad; pass requires_grad=True to see it)")
        return "\n".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return {
            "inputs": self.inputs,
            "forward": self.forward.to_dict(),
            "backward": self.backward.to_dict() if self.backward else None,
        }

    def to_json(self, **kwargs: Any) -> str:
        return json.dumps(self.to_dict(), **kwargs)


def explain(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attn_bias: Union[AttentionBias, torch.Tensor, None] = None,
    p: float = 0.0,
    scale: Optional[float] = None,
    *,
    op: OpArg = None,
    output_dtype: Optional[torch.dtype] = None,
    requires_grad: Optional[bool] = None,
    partial: bool = False,
    bias: Union[AttentionBias, torch.Tensor, None] = None,
) -> Explanation:
    """Explain which operators the dispatcher picks for this call and why; runs no kernel.

    ``bias=`` is another name for ``attn_bias`` (give one of them). The backward is explained when an
    input requires grad, or when ``requires_grad=True``. Tensors may live on the ``meta`` device for
    shapes only, but a device's capabilities are only known for real tensors.
    """
    if bias is not None:
        if attn_bias is not None:
            raise ValueError("bias: expected either bias= or attn_bias= (the same argument), found both")
        attn_bias = bias
    inputs = Inputs.create(query, key, value, attn_bias, p, scale, output_dtype, is_partial=partial)  # validates first
    if requires_grad and not query.requires_grad:
        query = query.detach().requires_grad_(True)
        inputs = Inputs.create(query, key, value, attn_bias, p, scale, output_dtype, is_partial=partial)
    fw = _cached_or_evaluate(inputs, "forward", op, None)
    bw: Optional[Selection] = None
    if inputs.features.requires_grad and requires_grad is not False:
        rng = fw.chosen.CAPABILITIES.dropout_rng if fw.chosen is not None else None
        bw = _cached_or_evaluate(inputs, "backward", op, rng)
    return Explanation(input_facts(inputs), fw, bw, describe_inputs(inputs))


def _cached_or_evaluate(inputs: Inputs, direction: Direction, op: OpArg, fw_rng: Optional[str]) -> Selection:
    try:
        return select(inputs, direction, op=op, fw_rng=fw_rng)
    except NotSupportedError as err:
        return err.selection
