"""Explain a dispatch decision, then train a tiny causal transformer on attncore attention.

Runs on whatever device is there (the CPU reference backend everywhere). The task is next-token
prediction on counting sequences (``t, t+1, t+2, ... mod vocab``): a causal model learns it in a
few dozen steps, so the printed accuracy shows the attention (and its backward) really work.

    python examples/tiny_gpt.py [--steps 60] [--device cpu]
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from torch import nn

import attncore
from attncore import dispatch


class Block(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, dim // heads
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, m, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).reshape(b, m, 3, self.heads, self.head_dim).unbind(2)
        a = attncore.memory_efficient_attention(q, k, v, attn_bias=attncore.LowerTriangularMask())
        x = x + self.proj(a.reshape(b, m, d))
        out: torch.Tensor = x + self.mlp(self.norm2(x))
        return out


class TinyGPT(nn.Module):
    def __init__(self, vocab: int, dim: int = 64, layers: int = 2, heads: int = 4, max_len: int = 64) -> None:
        super().__init__()
        self.tok, self.pos = nn.Embedding(vocab, dim), nn.Embedding(max_len, dim)
        self.blocks = nn.ModuleList(Block(dim, heads) for _ in range(layers))
        self.norm, self.head = nn.LayerNorm(dim), nn.Linear(dim, vocab)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.tok(idx) + self.pos(torch.arange(idx.shape[1], device=idx.device))[None]
        for block in self.blocks:
            x = block(x)
        logits: torch.Tensor = self.head(self.norm(x))
        return logits


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    torch.manual_seed(0)
    vocab, seq, batch = 32, 32, 32

    q = torch.randn(batch, seq, 4, 16, device=args.device, requires_grad=True)
    print(dispatch.explain(q, q, q, attncore.LowerTriangularMask()))
    print()

    model = TinyGPT(vocab).to(args.device)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    t0 = time.perf_counter()
    for step in range(args.steps):
        start = torch.randint(0, vocab, (batch, 1), device=args.device)
        tokens = (start + torch.arange(seq + 1, device=args.device)[None]) % vocab
        logits = model(tokens[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, vocab), tokens[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()  # type: ignore[no-untyped-call]  # Tensor.backward is unannotated in torch
        opt.step()
        if step % 10 == 0 or step == args.steps - 1:
            acc = (logits.argmax(-1) == tokens[:, 1:]).float().mean().item()
            print(f"step {step:3d}  loss {loss.item():.3f}  next-token accuracy {acc * 100:5.1f}%")
    print(f"trained {args.steps} steps in {time.perf_counter() - t0:.1f}s on {args.device}")


if __name__ == "__main__":
    main()
