"""Float64 attention written the plainest way, with every bias materialized: the tests' ground truth."""

from __future__ import annotations

from typing import Optional, Union

import torch

from attncore.attn_bias import AttentionBias

Bias = Union[AttentionBias, torch.Tensor, None]


def to5(t: torch.Tensor) -> torch.Tensor:
    return t if t.dim() == 5 else (t.unsqueeze(2) if t.dim() == 4 else t.unsqueeze(2).unsqueeze(2))


def dense_bias(bias: Bias, q: torch.Tensor, k: torch.Tensor, dtype: torch.dtype) -> Optional[torch.Tensor]:
    """The bias as a ``[B, G, H, Mq, Mk]`` tensor of ``dtype`` (``None`` for no bias)."""
    b, mq, g, h, _ = to5(q).shape
    mk = k.shape[1]
    if bias is None:
        return None
    if isinstance(bias, torch.Tensor):
        full = bias.to(dtype)
        target = {3: (b, mq, mk), 4: (b, h, mq, mk), 5: (b, g, h, mq, mk)}[q.dim()]
        full = full.broadcast_to(target)
    else:
        full = bias.materialize((b, g * h, mq, mk), dtype=dtype, device=q.device)
    return full.reshape(b, g, h, mq, mk)


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    bias: Bias = None,
    scale: Optional[float] = None,
    dtype: torch.dtype = torch.float64,
    keep: Optional[torch.Tensor] = None,
    p: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(out, lse)`` computed in ``dtype``; out in the input's layout, lse as ``[B, G, H, Mq]``.

    Differentiable. ``keep`` is a ``[B, G, H, Mq, Mk]`` dropout keep-mask (kept weights / (1 - p)).
    Fully masked rows give output 0 and LSE -inf.
    """
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    q5, k5, v5 = (to5(t).to(dtype).permute(0, 2, 3, 1, 4) for t in (q, k, v))  # [B, G, H, M, K]
    s = (q5 @ k5.transpose(-1, -2)) * scale
    mask = dense_bias(bias, q, k, dtype)
    if mask is not None:
        s = s + mask
    dead = torch.isneginf(s).all(dim=-1)
    # logsumexp over a row of -inf has a NaN gradient: compute it on a harmless stand-in row
    safe_lse = torch.logsumexp(torch.where(dead.unsqueeze(-1), torch.zeros_like(s), s), dim=-1)
    probs = torch.exp(s - safe_lse.unsqueeze(-1))  # exactly 0 on dead rows
    lse = torch.where(dead, torch.full_like(safe_lse, float("-inf")), safe_lse)
    if keep is not None:
        probs = probs * keep.to(dtype) / (1.0 - p)
    out5 = (probs @ v5).permute(0, 3, 1, 2, 4)  # [B, Mq, G, H, Kv]
    out = out5 if q.dim() == 5 else (out5.squeeze(2) if q.dim() == 4 else out5.squeeze(3).squeeze(2))
    return out, lse
