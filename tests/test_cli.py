"""``python -m attncore explain`` / ``info`` and the exact wording of an explanation (a snapshot)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

import attncore
from attncore import registry
from attncore.__main__ import main


def test_explain_command_prints_the_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["explain", "--shape", "1,64,2,16", "--dtype", "float32", "--device", "cpu", "--bias", "causal", "--requires-grad"]) == 0
    out = capsys.readouterr().out
    assert "forward: chose reference.chunked" in out
    assert "backward: chose reference.chunked" in out
    assert "queries Mq: found more than 16; supported: <= 16" in out


def test_explain_command_json_and_block_diagonal(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["explain", "--shape", "1,10,2,16", "--dtype", "float32", "--device", "cpu", "--bias", "BlockDiagonalCausalMask", "--seqlens", "4,6", "--json"]
    assert main(argv) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["forward"]["chosen"] == "reference.decode"
    assert data["inputs"]["attn_bias"] == "BlockDiagonalCausalMask"
    assert data["inputs"]["bias_features"] == "block_diagonal, causal top_left"


def test_explain_command_rejects_a_bias_without_lengths() -> None:
    with pytest.raises(SystemExit, match="needs --seqlens"):
        main(["explain", "--shape", "1,10,2,16", "--device", "cpu", "--bias", "BlockDiagonalMask"])


def test_info_module_runs_as_a_program() -> None:
    res = subprocess.run([sys.executable, "-m", "attncore.info"], capture_output=True, text=True, check=True)
    assert "reference" in res.stdout and "available" in res.stdout
    assert "reference.decode" in res.stdout and "limits: Mq <= 16" in res.stdout
    data = json.loads(subprocess.run([sys.executable, "-m", "attncore.info", "--json"], capture_output=True, text=True, check=True).stdout)
    assert {p["name"] for p in data["plugins"]} >= {"reference"}
    assert data["torch"] == torch.__version__


def test_explanation_snapshot(isolated_registry: None) -> None:
    # only the reference backend, whatever else is installed, so the table is stable
    registry.restore({name: rec for name, rec in registry.snapshot().items() if name == "reference"})
    q = torch.randn(1, 64, 4, 16)[:, :, :2]  # a strided view: strides are part of what is shown
    exp = attncore.dispatch.explain(q, q, q, attncore.LowerTriangularMask(), scale=0.5, requires_grad=True)
    assert str(exp) == "\n".join(
        [
            "call:",
            "  device                      cpu",
            "  dtype                       float32",
            "  query                       [1, 64, 2, 16] stride [4096, 64, 16, 1]",
            "  key                         [1, 64, 2, 16] stride [4096, 64, 16, 1]",
            "  value                       [1, 64, 2, 16] stride [4096, 64, 16, 1]",
            "  layout                      4-D",
            "  K                           16",
            "  Kv                          16",
            "  attn_bias                   LowerTriangularMask",
            "  bias_features               dense, causal top_left",
            "  p                           0.0",
            "  scale                       0.5 (custom)",
            "  output_dtype                float32",
            "  requires_grad               True",
            "  partial (LSE output)        False",
            "  shared kv heads (stride 0)  False",
            "  deterministic (torch mode)  False",
            "forward: chose reference.chunked",
            "  operator           prio  verdict      why",
            "  reference.decode     20  rejected     queries Mq: found more than 16; supported: <= 16",
            "  reference.chunked    10  chosen",
            "  reference.exact       0  accepted     supported; lower in the dispatch order",
            "backward: chose reference.chunked",
            "  operator           prio  verdict      why",
            "  reference.chunked    10  chosen",
            "  reference.exact       0  accepted     supported; lower in the dispatch order",
        ]
    )
