"""A plugin whose checks raise, bad ``op=`` arguments and command-line mistakes: each becomes an explained
rejection or a usage error naming the argument, never a crash of dispatch, ``explain`` or ``info``."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
import torch

import attncore
from attncore import dispatch, info, registry
from attncore.__main__ import main
from attncore.inputs import Inputs
from fakeops import EVERY_BIAS, fake_bw, fake_fw


def _raising(name: str, priority: int) -> type[attncore.AttentionFwOpBase]:
    """A forward op whose own check raises, as a plugin with a missing shared library might."""
    base = fake_fw(name, priority)

    class Raising(base):  # type: ignore[valid-type,misc]  # a class made by fake_fw
        @classmethod
        def extra_reasons(cls, inputs: Inputs) -> list[attncore.Reason]:
            raise RuntimeError("libfoo.so: cannot open shared object file")

    return Raising


@pytest.fixture
def broken(isolated_registry: None) -> Iterator[None]:
    registry.restore({})
    registry.register(_raising("broken.fw", 50))
    registry.register(fake_fw("good.fw", 10, bias=EVERY_BIAS))
    registry.register(fake_bw("good.bw", 10, bias=EVERY_BIAS))
    yield


def qkv(grad: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    q, k, v = (torch.randn(2, 8, 4, 16, requires_grad=grad) for _ in range(3))
    return q, k, v


def test_an_operator_whose_check_raises_is_rejected_with_the_error(broken: None) -> None:
    q, k, v = qkv()
    assert attncore.memory_efficient_attention(q, k, v).flatten()[0].item() == 10  # the next operator runs
    exp = dispatch.explain(q, k, v)
    bad = next(c for c in exp.forward.candidates if c.op == "broken.fw")
    assert bad.status == "rejected"
    assert str(bad.reasons[0]) == (
        "plugin error: found broken.fw.not_supported_reasons raised RuntimeError: libfoo.so: cannot open shared object file; "
        "supported: a list of reasons; fix: reinstall or report the plugin providing this operator"
    )
    with pytest.raises(attncore.NotSupportedError, match=re.escape("libfoo.so")):
        attncore.memory_efficient_attention(q, k, v, op="broken.fw")


def test_info_reports_an_operator_whose_check_raises(broken: None) -> None:
    ops = {o["op"]: o for o in info.collect()["operators"]}
    assert "plugin error" in ops["broken.fw"]["usable"]["cpu"][0]
    assert ops["good.fw"]["usable"]["cpu"] == "usable"


def test_info_probes_each_operator_inside_its_own_limits(isolated_registry: None) -> None:
    """A head dim the operator takes (max 32, multiple of 8 from 24) and a dtype it lists, not K = 64 in the
    first dtype by name; an operator listing no dtype info can probe is reported, not a crash."""
    registry.restore({})
    registry.register(fake_fw("small.fw", 1, max_head_dim=32))
    registry.register(fake_fw("odd.fw", 1, min_head_dim=24, max_head_dim=60, head_dim_multiple=8))
    registry.register(fake_fw("ints.fw", 1, dtypes=frozenset({torch.int8})))
    ops = {o["op"]: o for o in info.collect()["operators"]}
    assert ops["small.fw"]["usable"]["cpu"] == "usable"
    assert ops["odd.fw"]["usable"]["cpu"] == "usable"
    assert ops["ints.fw"]["usable"]["cpu"][0].startswith("not probed: no dtype among float16")


def test_a_backward_name_no_operator_has_is_rejected_not_ignored(broken: None) -> None:
    q, k, v = qkv()
    out, lse = attncore.memory_efficient_attention_partial(q, k, v)
    grad = torch.randn_like(out)
    with pytest.raises(attncore.NotSupportedError, match=re.escape("'no.such.bw' is not a registered backward operator")):
        attncore.memory_efficient_attention_backward(grad, out, lse, q, k, v, op="no.such.bw")
    with pytest.raises(attncore.NotSupportedError, match=re.escape("'good.fw' is not a registered backward operator")):
        attncore.memory_efficient_attention_backward(grad, out, lse, q, k, v, op="good.fw")  # a forward op's name
    q, k, v = qkv(grad=True)
    with pytest.raises(attncore.NotSupportedError, match=re.escape("'no.such.op' is not a registered forward operator")):
        attncore.memory_efficient_attention(q, k, v, op="no.such.op")


@pytest.mark.parametrize(
    ("op", "found"), [(123, "found int 123"), ((None,), "pair of operator classes or names, found (None,)"), (torch.nn.Linear, "found type")]
)
def test_an_op_argument_of_the_wrong_kind_is_a_value_error(broken: None, op: object, found: str) -> None:
    q, k, v = qkv()
    with pytest.raises(ValueError, match=r"^op: expected .*" + re.escape(found)):
        attncore.memory_efficient_attention(q, k, v, op=op)  # type: ignore[arg-type]  # the wrong kinds on purpose


def test_explain_takes_bias_as_another_name_for_attn_bias(broken: None) -> None:
    q, k, v = qkv()
    exp = dispatch.explain(q, k, v, bias=attncore.LowerTriangularMask())
    assert exp.inputs["attn_bias"] == "LowerTriangularMask"
    with pytest.raises(ValueError, match=r"^bias: expected either bias= or attn_bias="):
        dispatch.explain(q, k, v, attncore.LowerTriangularMask(), bias=attncore.LowerTriangularMask())


def test_explain_validates_before_asking_for_gradients(broken: None) -> None:
    q = torch.randint(0, 9, (2, 8, 4, 16), dtype=torch.int32)
    with pytest.raises(ValueError, match=r"^query: expected dtype float16, bfloat16, float32 or float64, found torch\.int32"):
        dispatch.explain(q, q, q, requires_grad=True)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--shape", "1,5,2,x"], "--shape: expected comma-separated integers, found '1,5,2,x'"),
        (["--shape", "2,5,2,16", "--dtype", "float32", "--bias", "BlockDiagonalMask", "--seqlens", "2,3"], "attn_bias: BlockDiagonalMask packs sequences"),
    ],
)
def test_the_explain_command_turns_bad_input_into_a_usage_error(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as err:
        main(["explain", "--device", "cpu", *argv])
    assert err.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a torch without CUDA")
def test_the_explain_command_names_a_device_this_torch_lacks(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["explain", "--shape", "1,5,2,16", "--device", "cuda"])
    assert "--device: expected a device this torch can use, found 'cuda'" in capsys.readouterr().err


def test_a_plugin_calling_sys_exit_at_import_is_listed_unavailable(isolated_registry: None, monkeypatch: pytest.MonkeyPatch) -> None:
    class EntryPoint:
        name = "exits"
        value = "exits_plugin:plugin"
        dist = None

        def load(self) -> object:
            raise SystemExit(3)

    reg = registry.get_registry()
    record = reg._load_entry_point(EntryPoint())  # type: ignore[arg-type]  # duck-typed entry point
    assert not record.available and "SystemExit: 3" in str(record.reasons[0])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"order": []}, "order: expected at least one operator or plugin name"),
        ({"relax": "max_compute_capability"}, "relax: expected a sequence of cap names"),
    ],
)
def test_a_policy_that_would_exclude_everything_by_mistake_is_refused(broken: None, kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match="^" + re.escape(message)), dispatch.policy(**kwargs):  # type: ignore[arg-type]  # wrong kinds on purpose
        pass


def test_an_environment_policy_naming_no_operator_warns(broken: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ATTNCORE_BACKENDS", "refrence,good.fw")
    dispatch.reload_environment()
    try:
        with pytest.warns(UserWarning, match=re.escape("ATTNCORE_BACKENDS: no operator or plugin is named 'refrence' (known: ")):
            pol = dispatch.current_policy()
        assert pol.order == ("refrence", "good.fw")
    finally:
        monkeypatch.delenv("ATTNCORE_BACKENDS")
        dispatch.reload_environment()


def test_a_cuda_pin_compares_the_cuda_torch_was_built_with() -> None:
    from attncore.requirements import requirement_reasons

    def versions(name: str) -> str | None:
        return {"torch": "2.13.0"}.get(name)

    assert requirement_reasons("attncore-x", {"cuda": ">=12.0"}, versions, cuda="12.8") == []
    (old,) = requirement_reasons("attncore-x", {"cuda": ">=12.0"}, versions, cuda="11.8")
    assert str(old) == (
        "cuda: found 11.8; supported: >=12.0; fix: a torch built with CUDA >=12.0 (pip install torch from the PyTorch index "
        "for that CUDA), or a release of attncore-x that supports cuda 11.8"
    )
    (cpu,) = requirement_reasons("attncore-x", {"cuda": ">=12.0"}, versions, cuda=None)
    assert str(cpu).startswith("cuda: found no CUDA (torch 2.13.0 is a CPU-only or non-CUDA build); supported: >=12.0")


def test_a_plugin_pinning_a_cuda_this_torch_lacks_is_unavailable(isolated_registry: None) -> None:
    """On this CPU-only torch, a plugin that declares ``cuda>=12`` is listed unavailable, with the reason."""
    if torch.version.cuda is not None:
        pytest.skip("checks a CPU-only torch")

    class Plugin:
        @attncore.hookimpl
        def attncore_plugin_info(self) -> attncore.PluginInfo:
            return attncore.PluginInfo(version="1.0", requires={"cuda": ">=12.0"})

        @attncore.hookimpl
        def attncore_operators(self) -> list[type[attncore.AttentionOpBase]]:
            return [fake_fw("needs.cuda", 1)]

    record = registry.register(Plugin(), name="needs_cuda")
    assert not record.available
    assert "cuda: found no CUDA" in str(record.reasons[0])
