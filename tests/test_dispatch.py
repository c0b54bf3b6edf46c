"""Dispatch: choice by priority and capability, the shared explanation, forcing, policies, caching."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import torch

import attncore
from attncore import dispatch, registry
from attncore.capabilities import Capabilities, check_capabilities
from attncore.device import DeviceInfo
from attncore.errors import NotSupportedError
from attncore.inputs import Inputs
from fakeops import EVERY_BIAS, fake_bw, fake_fw


@pytest.fixture
def fakes(isolated_registry: None) -> Iterator[None]:
    registry.restore({})
    registry.register(fake_fw("fast.fw", 30, dtypes=frozenset({torch.float16, torch.bfloat16}), max_head_dim=128))
    registry.register(fake_fw("mid.fw", 20, bias=EVERY_BIAS))
    registry.register(fake_fw("slow.fw", 10, bias=EVERY_BIAS, dropout=True, dropout_rng="slow"))
    registry.register(fake_bw("mid.bw", 20, bias=EVERY_BIAS))
    registry.register(fake_bw("slow.bw", 10, bias=EVERY_BIAS, dropout=True, dropout_rng="slow"))
    yield


def qkv(dtype: torch.dtype = torch.float32, k: int = 64, m: int = 8, grad: bool = False) -> tuple[torch.Tensor, ...]:
    return tuple(torch.randn(2, m, 4, k, dtype=dtype, requires_grad=grad) for _ in range(3))


def test_highest_priority_supported_op_is_chosen(fakes: None) -> None:
    q, k, v = qkv(torch.float16)
    assert attncore.memory_efficient_attention(q, k, v).flatten()[0].item() == 30
    q, k, v = qkv(torch.float32)
    assert attncore.memory_efficient_attention(q, k, v).flatten()[0].item() == 20
    q, k, v = qkv(torch.float16, k=256)
    assert attncore.memory_efficient_attention(q, k, v).flatten()[0].item() == 20


def test_explanation_lists_every_candidate_with_reasons(fakes: None) -> None:
    q, k, v = qkv(torch.float32)
    exp = dispatch.explain(q, k, v, attncore.LowerTriangularMask())
    verdicts = {c.op: c.status for c in exp.forward.candidates}
    assert verdicts == {"fast.fw": "rejected", "mid.fw": "chosen", "slow.fw": "accepted"}
    fast = next(c for c in exp.forward.candidates if c.op == "fast.fw")
    assert [str(r) for r in fast.reasons] == [
        "dtype: found float32; supported: bfloat16, float16",
        "attn_bias band: found causal; supported: none",
    ]
    text = str(exp)
    assert "forward: chose mid.fw" in text and "backward: not needed" in text
    assert "dtype: found float32; supported: bfloat16, float16" in text
    data = json.loads(exp.to_json())
    assert data["forward"]["chosen"] == "mid.fw"
    assert data["inputs"]["dtype"] == "float32" and data["inputs"]["query"]["stride"] == list(q.stride())


def test_explain_covers_backward_and_shares_the_dispatch_pass(fakes: None) -> None:
    q, k, v = qkv(torch.float32, grad=True)
    exp = dispatch.explain(q, k, v)
    assert exp.backward is not None and exp.backward.chosen is not None
    assert exp.backward.chosen.NAME == "mid.bw"
    out = attncore.memory_efficient_attention(q, k, v)
    torch.autograd.backward(out.sum())
    assert q.grad is not None and q.grad.flatten()[0].item() == 20
    # explain returns the selection object the dispatcher cached: one pass, not a re-derivation
    inputs = Inputs.create(q, k, v)
    assert dispatch.select(inputs, "forward") is dispatch.explain(q, k, v).forward


def test_explain_runs_no_kernel(isolated_registry: None) -> None:
    registry.restore({})
    op = fake_fw("boom.fw", 1)

    def explode(*args: object, **kwargs: object) -> None:
        raise AssertionError("explain ran a kernel")

    op.apply = classmethod(explode)  # type: ignore[assignment, method-assign]  # sabotage to prove it is never called
    registry.register(op)
    q, k, v = qkv()
    assert dispatch.explain(q, k, v).forward.chosen is op


def test_no_operator_error_carries_the_explanation(fakes: None) -> None:
    q, k, v = qkv(torch.float32, k=64)
    with pytest.raises(attncore.NotSupportedError) as info:
        attncore.memory_efficient_attention(q, k, v, p=0.5, op="fast.fw")
    msg = str(info.value)
    assert "no operator can run this forward call" in msg
    assert "dropout p: found p > 0; supported: p == 0 only" in msg
    assert "dtype: found float32" in msg and "call:" in msg
    assert isinstance(info.value, ValueError)


def test_forcing_an_op_by_class_name_or_pair(fakes: None) -> None:
    q, k, v = qkv(torch.float32)
    slow = registry.get_registry().find("slow.fw", "forward")
    assert slow is not None
    assert attncore.memory_efficient_attention(q, k, v, op=slow).flatten()[0].item() == 10  # type: ignore[arg-type]  # found op is a forward op
    assert attncore.memory_efficient_attention(q, k, v, op="slow.fw").flatten()[0].item() == 10
    exp = dispatch.explain(q, k, v, op="slow.fw")
    assert {c.op: c.status for c in exp.forward.candidates}["mid.fw"] == "excluded"


def test_forcing_an_unregistered_op_class_checks_it(fakes: None) -> None:
    q, k, v = qkv(torch.float32)
    loose = fake_fw("loose.fw", 99, dtypes=frozenset({torch.float64}))
    with pytest.raises(attncore.NotSupportedError, match="dtype: found float32; supported: float64"):
        attncore.memory_efficient_attention(q, k, v, op=loose)
    q64, k64, v64 = qkv(torch.float64)
    assert attncore.memory_efficient_attention(q64, k64, v64, op=loose).flatten()[0].item() == 99


def test_unknown_forced_name_is_explained(fakes: None) -> None:
    q, k, v = qkv()
    with pytest.raises(attncore.NotSupportedError, match="'nope' is not a registered forward operator"):
        attncore.memory_efficient_attention(q, k, v, op="nope")


def test_policy_restricts_reorders_and_restores(fakes: None) -> None:
    q, k, v = qkv(torch.float32)
    with dispatch.policy(order=["slow", "mid.fw"]) as pol:
        assert dispatch.current_policy() is pol
        assert attncore.memory_efficient_attention(q, k, v).flatten()[0].item() == 10
        exp = dispatch.explain(q, k, v)
        assert [c.op for c in exp.forward.candidates][:2] == ["slow.fw", "mid.fw"]
        assert {c.op: c.status for c in exp.forward.candidates}["fast.fw"] == "excluded"
    assert attncore.memory_efficient_attention(q, k, v).flatten()[0].item() == 20
    with pytest.raises(RuntimeError), dispatch.policy(order=["slow"]):
        raise RuntimeError("inside")
    assert dispatch.current_policy().order is None


def test_policy_rejects_unknown_names(fakes: None) -> None:
    with pytest.raises(ValueError, match=r"^order: .*unknown 'cutlas'"), dispatch.policy(order=["cutlas"]):
        pass
    with pytest.raises(ValueError, match=r"^relax: "), dispatch.policy(relax=["everything"]):
        pass


def test_environment_variable_policy(fakes: None, monkeypatch: pytest.MonkeyPatch) -> None:
    q, k, v = qkv(torch.float32)
    monkeypatch.setenv("ATTNCORE_BACKENDS", "slow.fw")
    dispatch.reload_environment()
    try:
        assert attncore.memory_efficient_attention(q, k, v).flatten()[0].item() == 10
        assert "ATTNCORE_BACKENDS='slow.fw'" in str(dispatch.explain(q, k, v))
    finally:
        monkeypatch.delenv("ATTNCORE_BACKENDS")
        dispatch.reload_environment()
    assert attncore.memory_efficient_attention(q, k, v).flatten()[0].item() == 20


def test_decisions_are_cached_and_invalidated_by_registry_changes(isolated_registry: None) -> None:
    registry.restore({})
    calls: list[str] = []
    registry.register(fake_fw("counted.fw", 5, calls=calls))
    q, k, v = qkv()
    for _ in range(5):
        attncore.memory_efficient_attention(q, k, v)
    assert calls == ["counted.fw"]
    registry.register(fake_fw("newer.fw", 50))
    assert attncore.memory_efficient_attention(q, k, v).flatten()[0].item() == 50


def test_query_length_buckets_follow_declared_limits(isolated_registry: None) -> None:
    registry.restore({})
    registry.register(fake_fw("decode.fw", 9, max_query_len=4))
    registry.register(fake_fw("tiled.fw", 1))
    for m, expect in [(1, 9), (4, 9), (5, 1), (64, 1), (3, 9)]:
        q, k, v = qkv(m=m)
        assert attncore.memory_efficient_attention(q, k, v).flatten()[0].item() == expect, m
    q, k, v = qkv(m=64)
    exp = dispatch.explain(q, k, v)
    assert "queries Mq: found more than 4; supported: <= 4" in str(exp)


def test_backward_dropout_must_match_the_forward_family(fakes: None) -> None:
    q, k, v = qkv(torch.float32, grad=True)
    exp = dispatch.explain(q, k, v, p=0.1)
    assert exp.forward.chosen is not None and exp.forward.chosen.NAME == "slow.fw"
    assert exp.backward is not None and exp.backward.chosen is not None and exp.backward.chosen.NAME == "slow.bw"
    mid = next(c for c in exp.backward.candidates if c.op == "mid.bw")
    assert "dropout mask: found forward drew it with 'slow'" in " ".join(str(r) for r in mid.reasons)


def test_thread_safety_of_the_decision_cache(fakes: None) -> None:
    errors: list[BaseException] = []
    cases = [(torch.float16, 64, 30), (torch.float32, 64, 20), (torch.float16, 256, 20), (torch.bfloat16, 32, 30)]

    def work(i: int) -> None:
        try:
            for j in range(200):
                dtype, kdim, expect = cases[(i + j) % len(cases)]
                if j % 50 == 0:
                    dispatch.clear_cache()
                q, k, v = qkv(dtype, k=kdim, m=2)
                got = attncore.memory_efficient_attention(q, k, v).flatten()[0].item()
                assert got == expect, (dtype, kdim, got)
        except BaseException as exc:  # noqa: BLE001  # collect failures from worker threads
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


def test_policy_is_per_thread(fakes: None) -> None:
    q, k, v = qkv(torch.float32)
    seen: list[float] = []
    with dispatch.policy(order=["slow.fw"]):
        t = threading.Thread(target=lambda: seen.append(attncore.memory_efficient_attention(q, k, v).flatten()[0].item()))
        t.start()
        t.join()
        assert attncore.memory_efficient_attention(q, k, v).flatten()[0].item() == 10
    assert seen == [20]  # the other thread did not inherit this block's policy


# --- capability reasons: wording is part of the interface (snapshot) -------------------------------


def features(**kw: Any) -> Inputs:
    q, k, v = qkv(torch.float16)
    base = Inputs.create(q, k, v)
    return base._replace(features=base.features._replace(**kw))


GPU_CAPS = Capabilities(
    devices=frozenset({"cuda", "rocm"}),
    dtypes=frozenset({torch.float16}),
    min_compute_capability=(8, 0),
    max_compute_capability=(9, 0),
    rocm_archs=frozenset({"gfx90a", "gfx942"}),
    max_head_dim=256,
    head_dim_multiple=8,
)


@pytest.mark.parametrize(
    ("device", "relax", "expected"),
    [
        (DeviceInfo("cpu"), frozenset(), ["device: found cpu; supported: cuda, rocm"]),
        (DeviceInfo("cuda", (7, 5), None, "T4"), frozenset(), ["compute capability: found sm_75 (7.5); supported: >= sm_80 (8.0)"]),
        (DeviceInfo("cuda", (9, 0), None, "H100"), frozenset(), []),
        (
            DeviceInfo("cuda", (10, 0), None, "B200"),
            frozenset(),
            [
                "compute capability: found sm_100 (10.0); supported: <= sm_90 (9.0) (validated cap); "
                "fix: to try it anyway: attncore.dispatch.policy(relax=['max_compute_capability'])"
            ],
        ),
        (DeviceInfo("cuda", (10, 0), None, "B200"), frozenset({"max_compute_capability"}), []),
        (DeviceInfo("rocm", (9, 4), "gfx1100", "RX 7900"), frozenset(), ["gfx arch: found gfx1100; supported: gfx90a, gfx942"]),
        (DeviceInfo("rocm", (9, 4), "gfx942", "MI300"), frozenset(), []),
    ],
)
def test_device_reasons_snapshot(device: DeviceInfo, relax: frozenset[str], expected: list[str]) -> None:
    inp = features(device=device)
    got = check_capabilities(GPU_CAPS, inp.features, "forward", inp.num_queries, relax)
    assert [str(r) for r in got] == expected


def test_a_non_deterministic_backward_is_rejected_in_torchs_deterministic_mode(fakes: None) -> None:
    """torch.use_deterministic_algorithms(True) at the call: backward ops that declare deterministic=False
    are rejected with the reason and the fix, and the dispatcher takes the next one; outside the mode the
    faster one wins. The setting is part of the dispatch key (no stale cached choice); switched on after
    the forward, it still governs the backward; warn_only does not reject; forward ops are not affected."""
    registry.register(fake_bw("racy.bw", 30, bias=EVERY_BIAS, deterministic=False))
    before, warn_only = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    try:
        for on, chosen in ((False, "racy.bw"), (True, "mid.bw"), (False, "racy.bw")):
            torch.use_deterministic_algorithms(on)
            q, k, v = qkv(torch.float32, grad=True)
            exp = dispatch.explain(q, k, v)
            assert exp.backward is not None and exp.backward.chosen is not None and exp.backward.chosen.NAME == chosen
            racy = next(c for c in exp.backward.candidates if c.op == "racy.bw")
            reasons = [str(r) for r in racy.reasons]
            assert reasons == (
                [
                    "determinism: found torch.use_deterministic_algorithms(True); supported: a backward whose results may vary "
                    "run to run (atomic adds); fix: torch.use_deterministic_algorithms(False) to allow it"
                ]
                if on
                else []
            )
            out = attncore.memory_efficient_attention(q, k, v)
            torch.autograd.backward(out.sum())
            assert q.grad is not None and q.grad.flatten()[0].item() == (20 if on else 30)
        # switched on between the forward and the backward: the backward chosen under the mode runs
        torch.use_deterministic_algorithms(False)
        q, k, v = qkv(torch.float32, grad=True)
        out = attncore.memory_efficient_attention(q, k, v)
        torch.use_deterministic_algorithms(True)
        torch.autograd.backward(out.sum())
        assert q.grad is not None and q.grad.flatten()[0].item() == 20
        # warn_only: torch only warns about its own such kernels, so the faster backward stays
        torch.use_deterministic_algorithms(True, warn_only=True)
        q, k, v = qkv(torch.float32, grad=True)
        exp = dispatch.explain(q, k, v)
        assert exp.backward is not None and exp.backward.chosen is not None and exp.backward.chosen.NAME == "racy.bw"
        # forward ops are never rejected for it
        registry.register(fake_fw("racy.fw", 40, bias=EVERY_BIAS, deterministic=False))
        torch.use_deterministic_algorithms(True)
        q, k, v = qkv(torch.float32)
        fw_op = dispatch.explain(q, k, v).forward.chosen
        assert fw_op is not None and fw_op.NAME == "racy.fw"
    finally:
        torch.use_deterministic_algorithms(before, warn_only=warn_only)


def test_a_backward_that_cannot_run_is_explained_when_it_is_needed(fakes: None) -> None:
    """Where no backward fits a call (forced to a racy backward, then torch's deterministic mode switched on
    after the forward; or a forced backward that rejects the call), the forward still runs and the backward
    raises the dispatcher's explanation, naming the call's shapes and the reason; without the mode the same
    graph's backward runs."""
    registry.register(fake_bw("racy.bw", 30, bias=EVERY_BIAS, deterministic=False))
    before, warn_only = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    try:
        torch.use_deterministic_algorithms(False)
        q, k, v = qkv(torch.float32, grad=True)
        out = attncore.memory_efficient_attention(q, k, v, op=(None, "racy.bw"))
        torch.use_deterministic_algorithms(True)
        with pytest.raises(NotSupportedError) as err:
            torch.autograd.backward(out.sum(), retain_graph=True)
        text = str(err.value)
        assert "no operator can run this backward call" in text and "[2, 8, 4, 64]" in text
        assert "determinism: found torch.use_deterministic_algorithms(True)" in text
        assert err.value.selection is not None and err.value.selection.chosen is None
        torch.use_deterministic_algorithms(False)
        torch.autograd.backward(out.sum())
        assert q.grad is not None and q.grad.flatten()[0].item() == 30
    finally:
        torch.use_deterministic_algorithms(before, warn_only=warn_only)
    q, k, v = qkv(torch.float32, grad=True)
    bias = torch.randn(2, 4, 8, 8, requires_grad=True)
    out = attncore.memory_efficient_attention(q, k, v, bias, op=(None, "slow.bw"))  # slow.bw computes no bias gradient
    with pytest.raises(NotSupportedError, match=r"(?s)backward call.*attn_bias +Tensor\[2, 4, 8, 8\].*slow\.bw +10 +rejected"):
        torch.autograd.backward(out.sum())


def test_shape_and_flag_reasons_snapshot() -> None:
    inp = features(dtype=torch.float32, head_dim=260, value_dim=100, dropout=True, device=DeviceInfo("cuda", (9, 0)))
    caps = Capabilities(devices=frozenset({"cuda"}), dtypes=frozenset({torch.float16}), max_head_dim=256, head_dim_multiple=8, different_value_dim=False)
    got = [str(r) for r in check_capabilities(caps, inp.features, "forward", inp.num_queries)]
    assert got == [
        "dtype: found float32; supported: float16",
        "head dim K: found 260; supported: >= 1 <= 256",
        "head dim K: found 260; supported: a multiple of 8",
        "value head dim Kv: found 100; supported: a multiple of 8",
        "value head dim Kv: found Kv=100 != K=260; supported: Kv == K",
        "dropout p: found p > 0; supported: p == 0 only",
    ]
