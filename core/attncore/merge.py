"""Combining attention computed over disjoint parts of the keys (split-KV, ring attention, caches)."""

from __future__ import annotations

from typing import Optional, Sequence, Union

import torch

__all__ = ["merge_attentions"]

Parts = Union[torch.Tensor, Sequence[torch.Tensor]]


def _stack(name: str, parts: Parts) -> torch.Tensor:
    if isinstance(parts, torch.Tensor):
        return parts
    if len(parts) == 0:
        raise ValueError(f"{name}: expected at least one chunk, found an empty sequence")
    shapes = {tuple(t.shape) for t in parts}
    if len(shapes) != 1:
        raise ValueError(f"{name}: expected chunks of one shape, found shapes {sorted(shapes)}")
    return torch.stack(list(parts))


def merge_attentions(
    attn_split: Parts,
    lse_split: Parts,
    write_lse: bool = True,
    output_dtype: Optional[torch.dtype] = None,
) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Merge per-chunk attention outputs into the attention over all the chunks' keys.

    ``out = sum_i out_i * exp(lse_i) / sum_i exp(lse_i)`` and ``lse = log(sum_i exp(lse_i))``,
    computed stably; chunks whose LSE is ``-inf`` (no key attended) weigh nothing, and a query that
    attended no key in any chunk gets output 0 and LSE ``-inf``. Differentiable.

    Args:
        attn_split: chunks of ``[B, M, H, K]`` (or ``[B, M, G, H, K]``, or ``[B, M, K]``) as a
            list, or stacked as one ``[num_chunks, ...]`` tensor.
        lse_split: the matching ``[B, H, M]`` (``[B, G, H, M]``; ``[B, 1, M]``) LSEs, likewise.
        write_lse: also return the merged LSE.
        output_dtype: dtype of the merged output (default: the chunks').

    Returns:
        ``(out, lse)``; ``lse`` is ``None`` when ``write_lse`` is false.
    """
    attn = _stack("attn_split", attn_split)
    lse = _stack("lse_split", lse_split)
    if attn.dim() not in (4, 5, 6):
        raise ValueError(f"attn_split: expected chunks of [B, M, K], [B, M, H, K] or [B, M, G, H, K], found stacked shape {list(attn.shape)}")
    squeeze = attn.dim() == 4
    a = attn.unsqueeze(3) if squeeze else attn  # [n, B, M, (G,) H, K]
    n, b, m = a.shape[:3]
    heads = tuple(a.shape[3:-1])
    want = (n, b, *((1,) if squeeze else heads), m)
    if tuple(lse.shape) != want:
        raise ValueError(f"lse_split: expected stacked shape {list(want)} to match attn_split, found {list(lse.shape)}")
    compute = torch.float64 if torch.float64 in (lse.dtype, attn.dtype) else torch.float32
    lse_c = lse.to(compute)
    top = lse_c.amax(0)
    top = torch.where(torch.isinf(top), torch.zeros_like(top), top)
    w = torch.exp(lse_c - top)  # [n, B, (G,) H, M]; exp(-inf) = 0 for empty chunks
    total = w.sum(0)
    w_out = w.movedim(-1, 2).unsqueeze(-1)  # [n, B, M, (G,) H, 1]
    denom = total.movedim(-1, 1).unsqueeze(-1)
    merged = (a.to(compute) * w_out).sum(0) / torch.where(denom > 0, denom, torch.ones_like(denom))
    merged = merged.to(output_dtype or attn.dtype)
    if squeeze:
        merged = merged.squeeze(2)
    if not write_lse:
        return merged, None
    alive = total > 0
    # log(0) has an infinite gradient: take it on a stand-in and put -inf back where nothing was attended
    out_lse = torch.where(alive, torch.log(torch.where(alive, total, torch.ones_like(total))) + top, torch.full_like(total, float("-inf")))
    return merged, out_lse.to(lse.dtype)
