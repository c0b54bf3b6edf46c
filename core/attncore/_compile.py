"""``torch.compile`` support: attention as the ``attncore::attention_v2`` custom op.

Dynamo cannot trace into dispatch (dictionaries of classes, kernels from other libraries), so under
compilation the public functions encode the bias geometry into plain integers and call a custom op
with a fake (meta) implementation; the op runs the ordinary eager dispatch at run time. Autograd is
registered on the op, so ``fullgraph=True`` holds for forward and backward. Eager calls never come
here. Needs ``torch.library.custom_op`` (torch >= 2.4); older torch falls back to a graph break.

The ops' names carry :data:`OP_VERSION`, bumped whenever their schemas change: torch's compile caches
on disk key a graph by the ops it calls, not by their schemas, so a renamed op is what keeps code
compiled against an older attncore from being reused (version 2: the forward returns the policy
token the backward runs under).
"""

from dataclasses import dataclass
from typing import Any, List, Optional, Sequence, Tuple, Union

import torch

from attncore.attn_bias import AttentionBias
from attncore.geometry import Anchor, Band, BlockLayout, Layout, MaskGeometry, Paging

__all__ = ["compiled_attention", "decode_geometry", "encode_geometry"]

OP_VERSION = 2
FORWARD_OP = f"attncore::attention_v{OP_VERSION}"
BACKWARD_OP = f"attncore::attention_backward_v{OP_VERSION}"

_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_LAYOUTS = tuple(Layout)
_NONE = -(2**62)


def _opt(v: Optional[int]) -> int:
    return _NONE if v is None else v


def _unopt(v: int) -> Optional[int]:
    return None if v == _NONE else v


def encode_geometry(geo: Optional[MaskGeometry]) -> tuple[list[int], Optional[torch.Tensor], Optional[torch.Tensor]]:
    """``(ints, tensor, block_tables)``: a geometry as custom-op arguments."""
    if geo is None:
        return [0], None, None
    ints = [1]
    band = geo.band
    ints += [0] if band is None else [1, 0 if band.anchor is Anchor.TOP_LEFT else 1, _opt(band.lo), _opt(band.hi)]
    blocks = geo.blocks
    if blocks is None:
        ints += [-1]
    else:
        code = 0
        for i, kind in enumerate(_LAYOUTS):  # a plain loop with identity tests: older dynamo traces this
            if kind is blocks.kind:
                code = i
        ints += [code, blocks.num_blocks, blocks.k_total, *blocks.q_seqstart, *blocks.k_start, *blocks.k_len]
    ints += [geo.paging.page_size if geo.paging is not None else 0]
    return ints, geo.tensor, geo.paging.block_tables if geo.paging is not None else None


def decode_geometry(ints: Sequence[int], tensor: Optional[torch.Tensor], block_tables: Optional[torch.Tensor]) -> Optional[MaskGeometry]:
    """Inverse of :func:`encode_geometry`."""
    if ints[0] == 0:
        return None
    i = 1
    band = None
    if ints[i] == 1:
        band = Band(Anchor.TOP_LEFT if ints[i + 1] == 0 else Anchor.BOTTOM_RIGHT, _unopt(ints[i + 2]), _unopt(ints[i + 3]))
        i += 4
    else:
        i += 1
    blocks = None
    if ints[i] == -1:
        i += 1
    else:
        kind, n, k_total = _LAYOUTS[ints[i]], ints[i + 1], ints[i + 2]
        i += 3
        q = tuple(ints[i : i + n + 1])
        ks = tuple(ints[i + n + 1 : i + 2 * n + 1])
        kl = tuple(ints[i + 2 * n + 1 : i + 3 * n + 1])
        i += 3 * n + 1
        blocks = BlockLayout(kind, q, ks, kl, k_total)
    page_size = ints[i]
    paging = Paging(block_tables, page_size) if block_tables is not None and page_size else None
    return MaskGeometry(band=band, blocks=blocks, paging=paging, tensor=tensor)


@dataclass(frozen=True, eq=False)
class _DecodedBias(AttentionBias):
    """A bias rebuilt from its geometry inside the custom op (kernels only look at the geometry)."""

    geo: MaskGeometry

    def _build_geometry(self) -> MaskGeometry:
        return self.geo


def _bias_arg(ints: Sequence[int], tensor: Optional[torch.Tensor], block_tables: Optional[torch.Tensor]) -> Union[AttentionBias, torch.Tensor, None]:
    geo = decode_geometry(ints, tensor, block_tables)
    if geo is None:
        return None
    if geo.band is None and geo.blocks is None and geo.tensor is not None:
        return geo.tensor
    return _DecodedBias(geo)


def _lse_shape(q: torch.Tensor) -> tuple[int, ...]:
    return (q.shape[0], *(q.shape[2:-1] or (1,)), q.shape[1])


def _register() -> bool:
    if not hasattr(torch.library, "custom_op") or not hasattr(torch.library, "register_autograd"):
        raise RuntimeError(f"torch {torch.__version__} has no torch.library.custom_op/register_autograd (torch >= 2.4 does)")

    @torch.library.custom_op(FORWARD_OP, mutates_args=())
    def attention_op(
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        bias: Optional[torch.Tensor],
        block_tables: Optional[torch.Tensor],
        spec: List[int],
        p: float,
        scale: float,
        op: str,
        out_dtype: int,
    ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        from attncore.api import _fw_op, _seed
        from attncore.inputs import Inputs
        from attncore.policy import current_policy, token_of

        dtype = _DTYPES[out_dtype] if out_dtype >= 0 else None
        inputs = Inputs.create(query, key, value, _bias_arg(spec, bias, block_tables), p, scale, dtype, is_partial=True)
        seed = _seed(p)
        fw_name = op.split("|", maxsplit=1)[0]  # op: "forward name|backward name" (either may be empty)
        res = _fw_op(inputs, fw_name or None).apply(inputs, needs_lse=True, dropout_seed=seed)
        assert res.lse is not None  # operators must honour needs_lse=True
        # the policy in force here, for the backward: autograd may run it on another thread, or after the
        # caller's `with dispatch.policy(...)` block has ended
        pol = torch.tensor(token_of(current_policy()), dtype=torch.int64)
        return inputs.from5(res.out).contiguous(), inputs.lse_from5(res.lse).contiguous(), torch.tensor(seed, dtype=torch.int64), pol

    @attention_op.register_fake
    def _(
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        bias: Optional[torch.Tensor],
        block_tables: Optional[torch.Tensor],
        spec: List[int],
        p: float,
        scale: float,
        op: str,
        out_dtype: int,
    ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        dtype = _DTYPES[out_dtype] if out_dtype >= 0 else query.dtype
        out = query.new_empty((*query.shape[:-1], value.shape[-1]), dtype=dtype)
        lse = query.new_empty(_lse_shape(query), dtype=torch.float64 if query.dtype == torch.float64 else torch.float32)
        return out, lse, torch.empty((), dtype=torch.int64), torch.empty((), dtype=torch.int64)

    @torch.library.custom_op(BACKWARD_OP, mutates_args=())
    def attention_backward_op(
        grad_out: torch.Tensor,
        grad_lse: Optional[torch.Tensor],
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        bias: Optional[torch.Tensor],
        block_tables: Optional[torch.Tensor],
        out: torch.Tensor,
        lse: torch.Tensor,
        seed: torch.Tensor,
        policy: torch.Tensor,
        spec: List[int],
        p: float,
        scale: float,
        op: str,
        bias_grad: bool,
    ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        from attncore.api import _bw_op, _fw_op
        from attncore.inputs import Inputs
        from attncore.policy import from_token, using

        if bias is not None and bias_grad:
            bias = bias.detach().requires_grad_(True)  # tells the backward operator to produce dbias
        with torch.enable_grad():  # the flags say which gradients the backward operator must produce
            inputs = Inputs.create(query, key, value, _bias_arg(spec, bias, block_tables), p, scale, out.dtype, is_partial=True)
        fw_name, _, bw_name = op.partition("|")
        with using(from_token(int(policy.item()))):  # the forward's policy, wherever this runs
            fw = _fw_op(inputs, fw_name or None)
            bw = _bw_op(inputs, bw_name or fw_name or None, fw)  # the tuple's backward, else the forward's name
        gl = None if grad_lse is None else inputs.lse_to5(grad_lse)
        g = inputs._to5(grad_out)
        grads = bw.apply(inputs, g, inputs._to5(out), inputs.lse_to5(lse), dropout_seed=int(seed.item()), grad_lse=gl)
        dbias = torch.empty(0, dtype=query.dtype, device=query.device)
        if grads.dbias is not None and bias is not None:
            dbias = inputs.bias_grad_from5(grads.dbias).reshape(bias.shape).to(bias.dtype).contiguous()
        return (inputs.from5(grads.dq).contiguous(), inputs.from5(grads.dk).contiguous(), inputs.from5(grads.dv).contiguous(), dbias)

    @attention_backward_op.register_fake
    def _(
        grad_out: torch.Tensor,
        grad_lse: Optional[torch.Tensor],
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        bias: Optional[torch.Tensor],
        block_tables: Optional[torch.Tensor],
        out: torch.Tensor,
        lse: torch.Tensor,
        seed: torch.Tensor,
        policy: torch.Tensor,
        spec: List[int],
        p: float,
        scale: float,
        op: str,
        bias_grad: bool,
    ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        dbias = torch.empty_like(bias) if bias is not None and bias_grad else query.new_empty(0)
        return torch.empty_like(query), torch.empty_like(key), torch.empty_like(value), dbias

    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: tuple[torch.Tensor, ...]) -> None:
        query, key, value, bias, block_tables, spec, p, scale, op, _ = inputs
        out, lse, seed, policy = output
        ctx.save_for_backward(query, key, value, bias, block_tables, out, lse, seed, policy)
        ctx.args = (spec, p, scale, op, bias is not None and bias.requires_grad)

    def backward(
        ctx: Any, grad_out: Optional[torch.Tensor], grad_lse: Optional[torch.Tensor], _grad_seed: Any, _grad_policy: Any
    ) -> tuple[Optional[torch.Tensor], ...]:
        query, key, value, bias, block_tables, out, lse, seed, policy = ctx.saved_tensors
        spec, p, scale, op, bias_grad = ctx.args
        if grad_out is None:
            grad_out = torch.zeros_like(out)
        dq, dk, dv, dbias = attention_backward_op(
            grad_out, grad_lse, query, key, value, bias, block_tables, out, lse, seed, policy, spec, p, scale, op, bias_grad
        )
        return dq, dk, dv, (dbias if bias_grad else None), None, None, None, None, None, None

    torch.library.register_autograd(FORWARD_OP, backward, setup_context=setup_context)
    return True


def _try_register() -> Tuple[bool, Optional[str]]:
    """Register the ops; a torch whose ``torch.library`` cannot take them must not break ``import attncore``."""
    try:
        return _register(), None
    except Exception as exc:  # noqa: BLE001  # any failure means: no compile support, with the reason
        return False, f"{type(exc).__name__}: {exc}".splitlines()[0][:300]


REGISTERED, UNAVAILABLE_REASON = _try_register()
_FORWARD: Any = getattr(torch.ops.attncore, FORWARD_OP.split("::")[1]) if REGISTERED else None  # torch.ops.attncore.attention_v2


def compiled_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attn_bias: Union[AttentionBias, torch.Tensor, None],
    p: float,
    scale: Optional[float],
    op: Any,
    output_dtype: Optional[torch.dtype],
    partial: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The traced path of the public functions: one custom-op call, ``(out, lse)``."""
    if isinstance(attn_bias, torch.Tensor):
        geo: Optional[MaskGeometry] = MaskGeometry(tensor=attn_bias)
    elif attn_bias is None:
        geo = None
    else:
        geo = attn_bias._build_geometry()  # uncached: older dynamo cannot trace the per-instance cache write
    ints, tensor, tables = encode_geometry(geo)
    if scale is None:
        scale = query.shape[-1] ** -0.5
    fw_op, bw_op = (op[0], op[1]) if isinstance(op, tuple) else (op, None)

    def _name(x: Any) -> str:
        return x if isinstance(x, str) else str(getattr(x, "NAME", "")) if x is not None else ""

    name = f"{_name(fw_op)}|{_name(bw_op)}"  # both halves of an (fw, bw) tuple reach the backward
    code = _DTYPES.index(output_dtype) if output_dtype is not None else -1
    assert _FORWARD is not None  # only called when REGISTERED (api checks)
    out, lse, _, _ = _FORWARD(query, key, value, tensor, tables, ints, float(p), float(scale), name, code)
    return out, lse
