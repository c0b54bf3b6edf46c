"""The validated, immutable description of one attention call.

:meth:`Inputs.create` checks everything a kernel could trip over (ranks, sizes, devices, dtypes,
strides, bias geometry, ``p``, ``scale``) and raises a :class:`ValueError` naming the argument, what
was expected and what was found, before anything runs. Operators see tensors in one canonical 5-D
layout, ``[B, M, G, H, K]``, whatever the caller used.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import NamedTuple, Optional, Union

import torch

from attncore.attn_bias import AttentionBias
from attncore.device import DeviceInfo, device_info
from attncore.geometry import NO_BIAS_FEATURES, BiasFeatures, MaskGeometry

__all__ = ["SHARED_BIAS_PIECE_BYTES", "CallFeatures", "Inputs"]

BiasArg = Union[AttentionBias, torch.Tensor, None]
_LAYOUTS = "3-D [B, M, K], 4-D [B, M, H, K] or 5-D [B, M, G, H, K]"
_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


class CallFeatures(NamedTuple):
    """Everything capability checks may depend on. Hashable: it is the core of the dispatch key."""

    device: DeviceInfo
    dtype: torch.dtype
    ndim: int
    head_dim: int
    value_dim: int
    bias: BiasFeatures
    dropout: bool
    custom_scale: bool
    requires_grad: bool
    bias_requires_grad: bool
    is_partial: bool
    shared_kv_heads: bool
    deterministic: bool = False  # torch.use_deterministic_algorithms(True) was on at the call (not warn_only)


def strict_determinism() -> bool:
    """``torch.use_deterministic_algorithms(True)`` is on, not ``warn_only`` (:attr:`CallFeatures.deterministic`)."""
    return torch.are_deterministic_algorithms_enabled() and not torch.is_deterministic_algorithms_warn_only_enabled()


def _shape(t: torch.Tensor) -> str:
    return str(tuple(t.shape))


def _check_tensor(name: str, t: object) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{name}: expected a torch.Tensor, found {type(t).__name__}")
    return t


def _tensor_bias_target(ndim: int, b: int, g: int, h: int, mq: int, mk: int) -> tuple[int, ...]:
    if ndim == 3:
        return (b, mq, mk)
    if ndim == 4:
        return (b, h, mq, mk)
    return (b, g, h, mq, mk)


def _broadcasts(shape: tuple[int, ...], target: tuple[int, ...]) -> bool:
    """Whether ``shape`` broadcasts to exactly ``target``."""
    if len(shape) > len(target):
        return False
    return all(s in (1, t) for s, t in zip(reversed(shape), reversed(target), strict=False))


def _validate_geometry(geo: MaskGeometry, bias: AttentionBias, batch: int, mq: int, mk: int) -> None:
    name = type(bias).__name__
    blocks = geo.blocks
    if blocks is None:
        return
    if batch != 1:
        raise ValueError(f"attn_bias: {name} packs sequences along dim 1 and expects batch size 1, found batch size {batch}")
    if mq != blocks.q_total:
        raise ValueError(f"attn_bias: {name} expects {blocks.q_total} queries (sum of q_seqlen), found query with M={mq}")
    if geo.paging is None:
        if mk != blocks.k_total:
            raise ValueError(f"attn_bias: {name} expects {blocks.k_total} keys, found key with M={mk}")
        return
    needed = geo.paging.rows_needed
    if mk < needed:
        raise ValueError(f"attn_bias: {name} addresses pages up to key row {needed}, found key with only M={mk} rows")


def _diagnose(query: object, key: object, value: object) -> None:
    """Raise the :class:`ValueError` that says what is wrong with ``query``, ``key`` and ``value``."""
    q = _check_tensor("query", query)
    k = _check_tensor("key", key)
    v = _check_tensor("value", value)
    qs, ks, vs = q.shape, k.shape, v.shape
    nd = len(qs)
    if nd < 3 or nd > 5:
        raise ValueError(f"query: expected {_LAYOUTS}, found {nd}-D shape {tuple(qs)}")
    if len(ks) != nd:
        raise ValueError(f"key: expected {nd}-D like query {tuple(qs)}, found {len(ks)}-D shape {tuple(ks)}")
    if len(vs) != nd:
        raise ValueError(f"value: expected {nd}-D like query {tuple(qs)}, found {len(vs)}-D shape {tuple(vs)}")
    b, kdim, mk = qs[0], qs[-1], ks[1]
    if ks[0] != b or vs[0] != b:
        bad, t = ("key", ks) if ks[0] != b else ("value", vs)
        raise ValueError(f"{bad}: expected batch size {b} (as query), found {t[0]} in shape {tuple(t)}")
    if qs[2:-1] != ks[2:-1] or qs[2:-1] != vs[2:-1]:
        bad, t = ("key", ks) if qs[2:-1] != ks[2:-1] else ("value", vs)
        raise ValueError(f"{bad}: expected heads {tuple(qs[2:-1])} (as query), found {tuple(t[2:-1])} in shape {tuple(t)}")
    if ks[-1] != kdim:
        raise ValueError(f"key: expected head dim K={kdim} (as query), found {ks[-1]} in shape {tuple(ks)}")
    if vs[1] != mk:
        raise ValueError(f"value: expected {mk} keys (as key), found {vs[1]} in shape {tuple(vs)}")
    if kdim == 0:
        raise ValueError(f"query: expected head dim K >= 1, found shape {tuple(qs)}")
    if vs[-1] == 0:
        raise ValueError(f"value: expected head dim Kv >= 1, found shape {tuple(vs)}")
    dev = q.device
    if k.device != dev or v.device != dev:
        bad, tt = ("key", k) if k.device != dev else ("value", v)
        raise ValueError(f"{bad}: expected device {dev} (as query), found {tt.device}")
    dt = q.dtype
    if dt not in _FLOATS:
        raise ValueError(f"query: expected dtype float16, bfloat16, float32 or float64, found {dt}")
    if k.dtype != dt or v.dtype != dt:
        bad, tt = ("key", k) if k.dtype != dt else ("value", v)
        raise ValueError(f"{bad}: expected dtype {dt} (as query), found {tt.dtype}")
    for name, tensor in (("query", q), ("key", k), ("value", v)):
        if tensor.stride(-1) != 1 and tensor.shape[-1] != 1:
            raise ValueError(f"{name}: expected the last dimension to be contiguous (stride 1), found strides {tensor.stride()}")
    raise ValueError(f"query: inconsistent with key/value: shapes {tuple(qs)}, {tuple(ks)}, {tuple(vs)}")  # pragma: no cover


#: The score-gradient buffer of one batch piece, in bytes, when a backward sums the gradient of a bias
#: shared over the batch (:meth:`Inputs.shared_bias_batch_step`) instead of materializing B copies of it.
SHARED_BIAS_PIECE_BYTES = 256 << 20


class Inputs(NamedTuple):
    """One attention call, validated. Build it with :meth:`create`.

    ``q5``, ``k5`` and ``v5`` give the tensors as ``[B, M, G, H, K]`` views; ``bias5`` gives a tensor
    bias as a ``[B, G, H, Mq, Mk]`` broadcast view. LSEs are exchanged as ``[B, G, H, Mq]``.
    """

    query: torch.Tensor
    key: torch.Tensor
    value: torch.Tensor
    attn_bias: BiasArg
    p: float
    scale: float
    output_dtype: Optional[torch.dtype]
    geometry: Optional[MaskGeometry]
    features: CallFeatures
    num_queries: int
    num_keys: int

    @classmethod
    def create(
        cls,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attn_bias: BiasArg = None,
        p: float = 0.0,
        scale: Optional[float] = None,
        output_dtype: Optional[torch.dtype] = None,
        *,
        is_partial: bool = False,
    ) -> Inputs:
        """Validate a call; every error is a :class:`ValueError` naming the offending argument."""
        # Fast path: one combined test of everything; on any failure, _diagnose names the culprit.
        try:
            qs, ks, vs = tuple(query.shape), tuple(key.shape), tuple(value.shape)  # tuples compare faster than torch.Size
            qst, kst, vst = query.stride(), key.stride(), value.stride()
            dev, dt = query.device, query.dtype
            nd = len(qs)
            ok = (
                2 < nd < 6
                and len(ks) == nd
                and len(vs) == nd
                and ks[:-1] == vs[:-1]
                and qs[0] == ks[0]
                and qs[2:] == ks[2:]
                and dt in _FLOATS
                and key.dtype is dt
                and value.dtype is dt
                and key.device == dev
                and value.device == dev
                and (qst[-1] == 1 or qs[-1] == 1)
                and (kst[-1] == 1 or ks[-1] == 1)
                and (vst[-1] == 1 or vs[-1] == 1)
                and qs[-1] > 0
                and vs[-1] > 0
            )
        except (AttributeError, TypeError):
            ok = False
        if not ok:
            _diagnose(query, key, value)
        if p != 0.0 or type(p) is not float:
            if not isinstance(p, (float, int)) or isinstance(p, bool) or not 0.0 <= p < 1.0:
                raise ValueError(f"p: expected a dropout probability in [0, 1), found {p!r}")
        b, mq, kdim, mk = qs[0], qs[1], qs[-1], ks[1]
        default_scale = kdim**-0.5
        if scale is None:
            scale = default_scale
        elif isinstance(scale, bool) or not isinstance(scale, (float, int)) or not math.isfinite(scale):
            raise ValueError(f"scale: expected a finite float (or None for K ** -0.5), found {scale!r}")
        if output_dtype is not None and output_dtype not in _FLOATS:
            raise ValueError(f"output_dtype: expected None or a floating dtype, found {output_dtype!r}")
        g = qs[2] if nd == 5 else 1
        h = qs[-2] if nd >= 4 else 1
        geometry: Optional[MaskGeometry] = None
        bias_features = NO_BIAS_FEATURES
        bias_grad = False
        if attn_bias is not None:
            if isinstance(attn_bias, torch.Tensor):
                geometry = MaskGeometry(tensor=attn_bias)
            elif isinstance(attn_bias, AttentionBias):
                geometry = attn_bias.geometry()
                _validate_geometry(geometry, attn_bias, b, mq, mk)
            else:
                raise ValueError(f"attn_bias: expected None, a torch.Tensor or an attncore.attn_bias.AttentionBias, found {type(attn_bias).__name__}")
            tb = geometry.tensor
            if tb is not None and nd == 3 and tb.dim() == 4 and tb.shape[1] == 1:
                # 3-D means one head: a [B, 1, Mq, Mk] bias is the same thing
                tb = tb.squeeze(1)
                geometry = replace(geometry, tensor=tb)
            if tb is not None:
                target = _tensor_bias_target(nd, b, g, h, mq, mk)
                fits = _broadcasts(tuple(tb.shape), target)
                if not fits:
                    raise ValueError(f"attn_bias: expected a tensor broadcastable to {list(target)}, found shape {_shape(tb)}")
                if not tb.is_floating_point():
                    raise ValueError(f"attn_bias: expected a floating-point tensor, found {tb.dtype}")
                if tb.device != dev:
                    raise ValueError(f"attn_bias: expected device {dev} (as query), found {tb.device}")
                bias_grad = tb.requires_grad
            bias_features = geometry.features
        shared = nd > 3 and kst[-2] == 0 and vst[-2] == 0 and qs[-2] > 1
        features = CallFeatures(
            device_info(dev),
            dt,
            nd,
            kdim,
            vs[-1],
            bias_features,
            p > 0.0,
            scale != default_scale,
            (query.requires_grad or key.requires_grad or value.requires_grad or bias_grad) and torch.is_grad_enabled(),
            bias_grad and torch.is_grad_enabled(),
            is_partial,
            shared,
            strict_determinism(),
        )
        return cls(query, key, value, attn_bias, float(p), float(scale), output_dtype, geometry, features, mq, mk)

    # --- canonical views ------------------------------------------------------------------------
    @staticmethod
    def _to5(t: torch.Tensor) -> torch.Tensor:
        if t.dim() == 5:
            return t
        if t.dim() == 4:
            return t.unsqueeze(2)
        return t.unsqueeze(2).unsqueeze(2)

    @property
    def q5(self) -> torch.Tensor:
        return self._to5(self.query)

    @property
    def k5(self) -> torch.Tensor:
        return self._to5(self.key)

    @property
    def v5(self) -> torch.Tensor:
        return self._to5(self.value)

    @property
    def shape5(self) -> tuple[int, int, int, int, int]:
        """``(B, Mq, G, H, K)``."""
        b, mq, g, h, k = self.q5.shape
        return (b, mq, g, h, k)

    @property
    def bias5(self) -> Optional[torch.Tensor]:
        """The additive tensor (if any) as a ``[B, G, H, Mq, Mk]`` broadcast view (no copy)."""
        if self.geometry is None or self.geometry.tensor is None:
            return None
        b, mq, g, h, _ = self.shape5
        tb = self.geometry.tensor
        nd = self.query.dim()
        target = _tensor_bias_target(nd, b, g, h, mq, self.num_keys)
        tb = tb.expand(target) if tb.dim() == len(target) else tb.broadcast_to(target)
        if nd == 3:
            return tb.unsqueeze(1).unsqueeze(1)
        if nd == 4:
            return tb.unsqueeze(1)
        return tb

    @property
    def bias_shared_over_batch(self) -> bool:
        """Whether the tensor bias has no batch extent of its own (absent or size 1 along B) while B > 1:
        its gradient is then one batch entry's size, and a backward may sum it over the batch as it goes
        (:class:`~attncore.ops.Gradients` allows a ``dbias`` of size 1 along B)."""
        if self.geometry is None or self.geometry.tensor is None or self.shape5[0] <= 1:
            return False
        tb = self.geometry.tensor
        at = tb.dim() - self.query.dim()  # the batch dim, right-aligned with [B, (G,) (H,) Mq, Mk]
        return at < 0 or tb.shape[at] == 1

    def shared_bias_batch_step(self, element_size: int) -> int:
        """Batch entries per backward launch when a backend sums the gradient of a bias shared over the
        batch as it goes (:attr:`bias_shared_over_batch`): as many as keep one piece's ``[n, G, H, Mq, Mk]``
        score-gradient buffer of ``element_size``-byte elements within :data:`SHARED_BIAS_PIECE_BYTES`,
        and at least one."""
        _, mq, g, h, _ = self.shape5
        return max(1, SHARED_BIAS_PIECE_BYTES // max(1, g * h * mq * self.num_keys * element_size))

    def bias_grad_from5(self, d5: torch.Tensor) -> torch.Tensor:
        """Undo :attr:`bias5` on a gradient: ``[B, G, H, Mq, Mk]`` (or ``[1, ...]`` when
        :attr:`bias_shared_over_batch` let the backend sum it) summed back to the bias tensor's shape."""
        assert self.geometry is not None and self.geometry.tensor is not None  # only called for a tensor bias
        nd = self.query.dim()
        d = d5 if nd == 5 else (d5.squeeze(1) if nd == 4 else d5.squeeze(1).squeeze(1))
        return d.sum_to_size(self.geometry.tensor.shape)

    @property
    def out_dtype(self) -> torch.dtype:
        return self.output_dtype if self.output_dtype is not None else self.query.dtype

    @property
    def lse_dtype(self) -> torch.dtype:
        return torch.float64 if self.query.dtype == torch.float64 else torch.float32

    def from5(self, out5: torch.Tensor) -> torch.Tensor:
        """Undo :attr:`q5` on an output ``[B, M, G, H, Kv]`` (one already in the caller's rank is kept)."""
        nd = self.features.ndim
        if out5.dim() == nd:
            return out5
        if nd == 4:
            return out5.squeeze(2)
        return out5.squeeze(3).squeeze(2)

    def lse_from5(self, lse5: torch.Tensor) -> torch.Tensor:
        """``[B, G, H, M]`` to the public LSE shape: ``[B, H, M]`` (H=1 for 3-D) or ``[B, G, H, M]``."""
        return lse5 if self.query.dim() == 5 else lse5.squeeze(1)

    def lse_to5(self, lse: torch.Tensor) -> torch.Tensor:
        return lse if self.query.dim() == 5 else lse.unsqueeze(1)
