"""The warp-specialized forward's switch, where its candidates are offered, its row table, and (on the
Triton release it was verified on) that every candidate compiles and is partitioned for sm_90; the sm_90
candidate lists' length and where their one-loop entries are offered."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Optional

import pytest
import torch

from attncore import attn_bias as ab
from attncore.inputs import Inputs
from attncore.requirements import installed_version
from attncore_triton import _launch, _warpspec

TOOL = Path(__file__).resolve().parents[1] / "tools" / "ws_compile_check.py"


@pytest.fixture
def sm90(monkeypatch: pytest.MonkeyPatch) -> None:
    """Candidate selection as on an sm_90 device with Triton 3.6 (no GPU needed: nothing is launched)."""
    monkeypatch.setattr(_launch, "_capability", lambda device: (9, 0))
    monkeypatch.setattr(_launch, "interpreting", lambda: False)
    monkeypatch.setattr(_warpspec, "_triton_release", lambda: "3.6.0")
    monkeypatch.delenv(_warpspec.ENV, raising=False)


def _problem(
    kd: int = 128, kv: int = 128, dtype: torch.dtype = torch.bfloat16, bias: object = None, p: float = 0.0, *, mk: int = 300, scale: Optional[float] = None
) -> _launch.Problem:
    q = torch.randn(2, 300, 3, kd).to(dtype)
    k, v = torch.randn(2, mk, 3, kd).to(dtype), torch.randn(2, mk, 3, kv).to(dtype)
    return _launch.problem(Inputs.create(q, k, v, bias, p, scale))  # type: ignore[arg-type]  # the bias kinds the tests pass


def test_switch_follows_the_verified_release(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(_warpspec.ENV, raising=False)
    for release, on in (("3.6.0", True), ("3.6.1", True), ("3.6.0+git5", True), ("3.7.0", False), ("3.9.0", False), ("3.5.1", False), (None, False)):
        monkeypatch.setattr(_warpspec, "_triton_release", lambda release=release: release)
        assert _warpspec.enabled() is on, release
        assert _warpspec.status().startswith("on" if on else "off"), release
    monkeypatch.setattr(_warpspec, "_triton_release", lambda: "3.6.0")
    monkeypatch.setenv(_warpspec.ENV, "0")
    assert not _warpspec.enabled() and _warpspec.status().startswith(f"off ({_warpspec.ENV}=0")
    monkeypatch.setattr(_warpspec, "_triton_release", lambda: "3.9.0")
    monkeypatch.setenv(_warpspec.ENV, "1")
    assert _warpspec.enabled() and "not within the verified 3.6" in _warpspec.status()
    assert _warpspec.status(interpreting=True).startswith("off (Triton's CPU interpreter")


@pytest.mark.usefixtures("sm90")
@pytest.mark.parametrize(("kd", "kv"), [(128, 128), (64, 128), (128, 64), (128, 32)])
def test_candidates_follow_the_plain_tiles_where_they_won(kd: int, kv: int) -> None:
    """Largest head dim 128, keys in whole tiles, no mask: ``WS_CONFIGS[128]``, after the plain tiles (the
    first candidate is what runs untimed, ``ATTNCORE_TRITON_AUTOTUNE=0``)."""
    for dtype in (torch.bfloat16, torch.float16):
        cands = _launch.fwd_candidates(_problem(kd, kv, dtype, mk=384))
        ws = [c for c in cands if c.ws]
        assert ws == list(_launch.WS_CONFIGS[128]) and cands[-len(ws) :] == ws, cands
        assert not cands[0].ws


@pytest.mark.usefixtures("sm90")
@pytest.mark.parametrize("kd", [64, 128, 256])
@pytest.mark.parametrize("tma", [True, False], ids=["tensor descriptors", "plain loads"])
def test_one_loop_candidates_where_they_won(kd: int, tma: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """At most seven candidates per list; one-loop ones for banded calls at every head dim and for dense ones
    at head dims 128 (forward and backward) and 256 (forward, where it is the first guess); the same through
    plain loads (paged keys, misaligned tensors: the tiles mapped to plain loads keep their loop form)."""
    if not tma:
        monkeypatch.setattr(_launch, "_tma_eligible", lambda pb: False)
    for bias in (None, ab.LowerTriangularMask(), ab.LocalAttentionFromBottomRightMask(40, 0)):
        pb = _problem(kd, kd, torch.bfloat16, bias, mk=384)
        fwd, bwd = _launch.fwd_candidates(pb), _launch.bwd_candidates(pb)
        assert len(fwd) <= 7 and len(bwd) <= 7 and len(set(fwd)) == len(fwd) and len(set(bwd)) == len(bwd), (fwd, bwd)
        banded = bias is not None
        assert any(c.one_loop for c in fwd) == (banded or kd >= 128), (bias, fwd)
        assert any(c.one_loop for c in bwd) == (banded or kd == 128), (bias, bwd)
        assert fwd[0].one_loop == (kd == 256) and not bwd[0].one_loop
        assert not any(c.one_loop and c.ws for c in fwd)
        assert tma or not any(c.tma or c.ws for c in fwd)


def test_configurations_are_two_stage_warp_group_tiles() -> None:
    for d, cfgs in _launch.WS_CONFIGS.items():
        assert cfgs, d
        for c in cfgs:  # 3 stages gave NaN on Triton 3.6, 1 stage once left rows unwritten; 4 warps per group
            assert c.ws and c.tma and c.num_warps == 4 and c.block_m == 128 and c.num_stages == 2, (d, c)
    with pytest.raises(ValueError, match="ws needs tma"):
        _launch.FwdConfig(128, 64, 8, 2, tma=True, ws=True)
    with pytest.raises(ValueError, match="ws needs tma"):
        _launch.FwdConfig(128, 64, 4, 3, tma=True, ws=True)


@pytest.mark.usefixtures("sm90")
@pytest.mark.parametrize(
    ("what", "kd", "dtype", "bias", "p", "extra"),
    [
        ("head dim 64 (timed slower)", 64, torch.bfloat16, None, 0.0, {}),
        ("head dim 256 (timed slower)", 256, torch.bfloat16, None, 0.0, {}),
        ("causal (every tile masked: timed slower)", 128, torch.bfloat16, ab.LowerTriangularMask(), 0.0, {}),
        ("local", 128, torch.float16, ab.LocalAttentionFromBottomRightMask(20, 3), 0.0, {}),
        ("keys not in whole tiles (every tile masked)", 128, torch.bfloat16, None, 0.0, {"mk": 300}),
        ("negative scale", 128, torch.bfloat16, None, 0.0, {"scale": -0.1}),
        ("tensor bias", 128, torch.bfloat16, "tensor", 0.0, {}),
        ("dropout", 128, torch.bfloat16, None, 0.1, {}),
        ("head dim 80 (no tensor descriptors)", 80, torch.bfloat16, None, 0.0, {}),
        ("float32", 128, torch.float32, None, 0.0, {}),
    ],
)
def test_no_candidates_where_the_loop_is_not_offered(what: str, kd: int, dtype: torch.dtype, bias: object, p: float, extra: dict[str, float]) -> None:
    mk = int(extra.get("mk", 384))
    b = torch.randn(2, 3, 300, mk).to(dtype) if bias == "tensor" else bias
    pb = _problem(kd, kd, dtype, b, p, mk=mk, scale=extra.get("scale"))
    assert _launch.ws_candidates(pb) == [], what
    assert not any(c.ws for c in _launch.fwd_candidates(pb)), what


@pytest.mark.usefixtures("sm90")
def test_no_candidates_for_blocks() -> None:
    q, k, v = (torch.randn(1, 384, 2, 128).to(torch.bfloat16) for _ in range(3))
    pb = _launch.problem(Inputs.create(q, k, v, ab.BlockDiagonalMask.from_seqlens([128, 256])))
    assert pb.varlen and _launch.ws_candidates(pb) == []


def test_no_candidates_off_hopper_or_when_switched_off(sm90: None, monkeypatch: pytest.MonkeyPatch) -> None:
    pb = _problem(mk=384)
    assert _launch.ws_candidates(pb)
    monkeypatch.setenv(_warpspec.ENV, "0")
    assert not any(c.ws for c in _launch.fwd_candidates(pb))
    monkeypatch.delenv(_warpspec.ENV)
    monkeypatch.setattr(_warpspec, "_triton_release", lambda: "3.9.0")
    assert not any(c.ws for c in _launch.fwd_candidates(pb))
    for cc in ((8, 0), (10, 0)):
        monkeypatch.setattr(_launch, "_capability", lambda device, cc=cc: cc)
        assert _launch.ws_candidates(pb) == [], cc


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_row_table_gives_every_row_index_exactly(dtype: torch.dtype, monkeypatch: pytest.MonkeyPatch) -> None:
    """``max(table[16 + r] @ table[:16])`` is ``r`` for every row the table holds, in the dtype's own values;
    outgrown tables stay alive (kernels on other streams may still read them)."""
    monkeypatch.setattr(_launch, "_ROW_TABLES", {})
    monkeypatch.setattr(_launch, "_OLD_ROW_TABLES", [])
    small = _launch._row_table(torch.device("cpu"), dtype, 300)
    assert small.dtype == dtype and small.shape == (16 + 1024, 16)
    assert _launch._row_table(torch.device("cpu"), dtype, 1000) is small  # reused while it is long enough
    table = _launch._row_table(torch.device("cpu"), dtype, _launch.WS_MAX_ROWS)
    assert table.shape == (16 + _launch.WS_MAX_ROWS, 16) and _launch._OLD_ROW_TABLES == [small]
    rows = (table[16:].double() @ table[:16].double()).amax(1)  # the products of the stored (rounded) values
    assert torch.equal(rows, torch.arange(_launch.WS_MAX_ROWS, dtype=torch.float64))
    with pytest.raises(ValueError, match="at most"):
        _launch._row_table(torch.device("cpu"), dtype, _launch.WS_MAX_ROWS + 1)
    assert not _launch._row_table_ready(torch.device("cpu"), dtype, _launch.WS_MAX_ROWS + 1)


def test_every_candidate_compiles_and_is_partitioned_for_sm90() -> None:
    """``tools/ws_compile_check.py`` in a subprocess (an abort in Triton's compiler fails the test, not pytest)."""
    release = installed_version("triton")
    if not _warpspec._GATE.covers(release):
        pytest.skip(f"triton {release} is not the verified {_warpspec._GATE.text}; the ws_check nox session runs this on it")
    res = subprocess.run([sys.executable, str(TOOL)], capture_output=True, text=True, timeout=900, check=False)
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-4000:]
    assert "every configuration compiled and was partitioned" in res.stdout
