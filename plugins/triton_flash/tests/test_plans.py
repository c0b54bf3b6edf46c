"""Launch plans (attncore_triton._plans) without a GPU: kernels replaced by fakes that log every launch.

A replayed call must launch exactly what the full host path launches for the same call: the same
binaries, grids and arguments, with the call's own tensors and seed in their places. Pointers are compared
by role (the call's tensors by name; buffers the launch path allocates, and fixed ones, by the order in
which they first appear), every other argument by value.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, Callable, Optional

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from attncore import attn_bias as ab
from attncore.inputs import Inputs
from attncore_triton import _launch, _plans, _relaunch, autotune

KERNELS = ("fwd_kernel", "bwd_preprocess_kernel", "bwd_dq_kernel", "bwd_dkdv_kernel")
Launch = tuple[str, tuple[int, int, int], tuple[Any, ...], str]  # kernel, grid, arguments, "binary #n" | "triton #n"
_SERIALS = iter(range(1 << 62))


class FakeBinary:
    """A compiled kernel's stand-in: its launcher logs the grid and the arguments."""

    def __init__(self, name: str, log: list[Launch]) -> None:
        self.name, self.log, self.serial = name, log, next(_SERIALS)

    def __getitem__(self, grid3: tuple[int, int, int]) -> Callable[..., None]:
        def run(*args: Any) -> None:
            self.log.append((self.name, grid3, args, f"binary #{self.serial}"))

        return run


class FakeKernel:
    """A ``@triton.jit`` function's stand-in: the real parameter list; ``kernel[grid](...)`` logs the call
    (arguments in declaration order) and returns a :class:`FakeBinary`."""

    def __init__(self, name: str, real: Any, log: list[Launch]) -> None:
        self.__name__ = name
        self.arg_names = list(real.arg_names)
        self.do_not_specialize = list(getattr(real, "do_not_specialize", None) or ())
        self.debug = False
        self.pre_run_hooks: list[Any] = []
        self.log = log

    def __getitem__(self, grid: tuple[int, ...]) -> Callable[..., FakeBinary]:
        def run(*args: Any, num_warps: int, num_stages: int, **constexprs: Any) -> FakeBinary:
            del num_warps, num_stages
            ordered = (*args, *(constexprs[n] for n in self.arg_names[len(args) :]))
            binary = FakeBinary(self.__name__, self.log)  # (a new specialization each time Triton's path is taken)
            self.log.append((self.__name__, _relaunch._grid3(grid), ordered, f"triton #{binary.serial}"))
            return binary

        return run


@pytest.fixture
def fake_gpu(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Launch]]:
    """sm_90 as seen by the launch path, every kernel a :class:`FakeKernel` behind a reusing relauncher,
    the first candidate settled without timing, a fresh plan table; yields the launch log."""
    yield faked(monkeypatch)
    _plans.clear()


def faked(monkeypatch: pytest.MonkeyPatch) -> list[Launch]:
    """What :func:`fake_gpu` sets up, through ``monkeypatch`` (for tests that cannot take a fixture per example)."""
    log: list[Launch] = []
    mod = _launch.kernels()  # (imported first: the module records whether it is interpreted)
    monkeypatch.setattr(_launch, "_capability", lambda device: (9, 0))
    monkeypatch.setattr(_launch, "interpreting", lambda: False)
    monkeypatch.setattr(_launch, "_ensure_allocator", lambda: None)
    monkeypatch.setattr(_launch, "_CHOSEN", {})
    fakes = {n: _relaunch.Relauncher(FakeKernel(n, getattr(mod, n), log), reuse=True, device=lambda: 0) for n in KERNELS}
    monkeypatch.setattr(_launch, "_RELAUNCHERS", fakes)

    def tune(key: str, candidates: Sequence[Any], launch: Callable[[Any], None], to_dict: Any, **kw: Any) -> autotune.Choice[Any]:
        launch(candidates[0])
        return autotune.Choice(candidates[0], "test")

    monkeypatch.setattr(autotune, "tune", tune)
    real_empty = _launch._empty

    def empty(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        t = real_empty(shape, dtype, device)
        ALLOCATED.append(t)
        return t

    monkeypatch.setattr(_launch, "_empty", empty)
    _plans.clear()
    return log


@pytest.fixture
def atomic_dq(fake_gpu: list[Launch], monkeypatch: pytest.MonkeyPatch) -> list[Launch]:
    """:func:`fake_gpu` with backward keys settled on a candidate that adds dQ atomically (preprocess kernel,
    fp32 dQ zeroed first) where the list has one."""

    def tune(key: str, candidates: Sequence[Any], launch: Callable[[Any], None], to_dict: Any, **kw: Any) -> autotune.Choice[Any]:
        cfg = next((c for c in candidates if getattr(c, "atomic_dq", False)), candidates[0])
        launch(cfg)
        return autotune.Choice(cfg, "test")

    monkeypatch.setattr(autotune, "tune", tune)
    return fake_gpu


ALLOCATED: list[torch.Tensor] = []  # what the launch path allocated through _empty since the last allocated()


def allocated() -> dict[int, str]:
    """Roles of the buffers allocated since the last call: by shape and dtype (the row statistics' second
    row too), then forgotten."""
    roles: dict[int, str] = {}
    for t in ALLOCATED:
        roles[t.data_ptr()] = f"{tuple(t.shape)} {t.dtype}"
        if t.dim() == 2 and t.shape[0] == 2:  # the row statistics: m2 and delta rows
            roles[t.data_ptr() + t.element_size() * t.shape[1]] = f"{tuple(t.shape)} {t.dtype} row 1"
    ALLOCATED.clear()
    return roles


def _normalized(launches: list[Launch], roles: dict[int, str], pointers: list[set[int]]) -> list[tuple[Any, ...]]:
    """Each launch with its pointers (``pointers[i]``: their positions in launch ``i``) as roles: the
    call's tensors by name (``roles``: address -> name), any other address by the order in which it first
    appears in these launches."""
    seen: dict[int, str] = {}
    out = []
    for (name, grid, args, how), where in zip(launches, pointers, strict=True):
        norm: list[Any] = []
        for i, a in enumerate(args):
            if i not in where:
                norm.append(a)
                continue
            addr = a.data_ptr() if isinstance(a, torch.Tensor) else a
            norm.append(roles.get(addr) or seen.setdefault(addr, f"buffer{len(seen)}"))
        out.append((name, grid, tuple(norm), how.split()[1]))  # the binary, as Triton's specialization chose it
    return out


def _pointers(launches: list[Launch]) -> list[set[int]]:
    """Where the full path (which passes tensors) put pointers."""
    return [{i for i, a in enumerate(args) if isinstance(a, torch.Tensor)} for _, _, args, _ in launches]


def compare(replayed: list[Launch], full: list[Launch], roles_replayed: dict[int, str], roles_full: dict[int, str]) -> None:
    assert replayed and all(how.startswith("binary") for *_, how in replayed), "the call did not go through the plan's binaries"
    assert all(isinstance(a, (int, float, bool)) for _, _, args, _ in replayed for a in args), "a replay passes addresses, not tensors"
    where = _pointers(full)
    assert len(replayed) == len(full)
    assert _normalized(replayed, roles_replayed, where) == _normalized(full, roles_full, where)


def _tensors(n: int, *shape: int, dtype: torch.dtype = torch.bfloat16, g: Optional[torch.Generator] = None) -> list[torch.Tensor]:
    return [torch.randn(*shape, generator=g).to(dtype) for _ in range(n)]


#: The call :func:`_build` makes unless a case says otherwise.
BASE: dict[str, Any] = dict(
    b=2, mq=256, mk=256, h=4, k=128, kv=None, dtype=torch.bfloat16, layout="4-D", mask="none", p=0.0, scale=None, out_dtype=None, needs_lse=True, glse=False
)
CASES: dict[str, dict[str, Any]] = {
    "causal": {**BASE, "mask": "causal"},
    "dense K=256 (split dK / dV launches)": {**BASE, "k": 256},
    "causal with a bias tensor, dropout": {**BASE, "mask": "causal+tensor", "p": 0.25},
    "varlen causal": {**BASE, "mask": "varlen"},
    "grad_lse, fp16 K=64 M=300": {**BASE, "glse": True, "dtype": torch.float16, "k": 64, "mq": 300, "mk": 300},
}


@pytest.mark.parametrize("dq", ["dQ kernel", "atomic dQ"])
@pytest.mark.parametrize("case", list(CASES))
def test_a_replayed_call_launches_what_the_full_path_launches(case: str, dq: str, request: pytest.FixtureRequest) -> None:
    """Forward (with and without the LSE) and backward (dQ from its kernel, or added atomically after a
    preprocess kernel): the third call of a signature replays the plan the second recorded (the first
    tuned); its launches equal those of the full path for the same call."""
    spec = CASES[case]
    g = torch.Generator().manual_seed(7)
    log: list[Launch] = request.getfixturevalue("atomic_dq" if dq == "atomic dQ" else "fake_gpu")
    for needs_lse in (True, False):
        for _ in range(2):
            inp, _named = _build(spec, g)
            _launch.forward(inp, needs_lse=needs_lse, dropout_seed=11)
        assert _plans.count() >= 1
        inp, named = _build(spec, g)
        log.clear()
        allocated()
        out, lse = _launch.forward(inp, needs_lse=needs_lse, dropout_seed=99)
        replayed, a1 = list(log), allocated()
        _plans.clear()
        log.clear()
        out2, lse2 = _launch.forward(inp, needs_lse=needs_lse, dropout_seed=99)  # the full path
        full, a2 = list(log), allocated()
        assert out.shape == out2.shape and out.dtype == out2.dtype and (lse is None) == (lse2 is None) == (not needs_lse)
        roles = {t.data_ptr(): n for n, t in named.items()}
        r1 = a1 | roles | {out.data_ptr(): "out"} | ({lse.data_ptr(): "lse"} if lse is not None else {})
        r2 = a2 | roles | {out2.data_ptr(): "out"} | ({lse2.data_ptr(): "lse"} if lse2 is not None else {})
        compare(replayed, full, r1, r2)
    # backward
    glse = spec["glse"]
    for step in range(3):
        inp, named = _build(spec, g)
        out, lse = _launch.forward(inp, needs_lse=True, dropout_seed=5)
        assert lse is not None
        do = torch.randn(out.shape, generator=g).to(out.dtype)
        gl = torch.randn(lse.shape, generator=g) if glse else None
        log.clear()
        allocated()
        grads = _launch.backward(inp, do, out, lse, dropout_seed=5, grad_lse=gl)
        if step < 2:
            continue
        replayed, a1 = list(log), allocated()
        _plans.clear()
        log.clear()
        grads2 = _launch.backward(inp, do, out, lse, dropout_seed=5, grad_lse=gl)
        full, a2 = list(log), allocated()
        for a, b in zip(grads, grads2, strict=True):
            assert (a is None and b is None) or (a is not None and b is not None and a.shape == b.shape and a.dtype == b.dtype)
        base = {t.data_ptr(): n for n, t in named.items()}
        base |= {do.data_ptr(): "do", out.data_ptr(): "out", lse.data_ptr(): "lse"} | ({gl.data_ptr(): "glse"} if gl is not None else {})
        r1 = a1 | base | {grads[0].data_ptr(): "dq", grads[1].data_ptr(): "dk", grads[2].data_ptr(): "dv"}
        r2 = a2 | base | {grads2[0].data_ptr(): "dq", grads2[1].data_ptr(): "dk", grads2[2].data_ptr(): "dv"}
        compare(replayed, full, r1, r2)


def test_no_replay_where_triton_must_see_the_launch(fake_gpu: list[Launch]) -> None:
    """Debug mode on the kernel (or a launch hook, or instrumentation) sends the call through Triton's
    path even though a plan is recorded; off again, the plan is replayed."""
    g = torch.Generator().manual_seed(3)
    for _ in range(2):
        inp, _ = _build(CASES["causal"], g)
        _launch.forward(inp, needs_lse=False, dropout_seed=0)
    kernel = _launch._relauncher("fwd_kernel").kernel
    kernel.debug = True
    fake_gpu.clear()
    _launch.forward(inp, needs_lse=False, dropout_seed=0)
    assert [how.split()[0] for *_, how in fake_gpu] == ["triton"]
    kernel.debug = False
    fake_gpu.clear()
    _launch.forward(inp, needs_lse=False, dropout_seed=0)
    assert [how.split()[0] for *_, how in fake_gpu] == ["binary"] and all(isinstance(a, (int, float)) for a in fake_gpu[0][2])


def test_what_is_never_planned_and_what_tells_plans_apart(fake_gpu: list[Launch]) -> None:
    """Paged keys (page tables are data) and a backward that wants the bias gradient take the full path
    every time; a tensor whose alignment differs gets a plan of its own; an explicit configuration or
    problem never records."""
    g = torch.Generator().manual_seed(4)
    q, k, v = _tensors(3, 1, 64, 2, 64, g=g)
    pages = ab.PagedBlockDiagonalPaddedKeysMask.from_seqlens([20, 30], [25, 31], torch.tensor([[1, 0], [3, 2]], dtype=torch.int32), 16)
    for _ in range(3):
        _launch.forward(Inputs.create(q[:, :50], k, v, pages), needs_lse=False, dropout_seed=0)
    assert _plans.count() == 0
    tb = torch.randn(1, 2, 64, 64, generator=g).requires_grad_()
    with torch.enable_grad():
        inp = Inputs.create(q, k, v, tb)
    assert inp.features.bias_requires_grad
    for _ in range(2):
        out, lse = _launch.forward(inp, needs_lse=True, dropout_seed=0)
    assert lse is not None and _plans.count() == 1
    for _ in range(3):
        _launch.backward(inp, torch.randn(out.shape, generator=g), out, lse, dropout_seed=0)
    assert _plans.count() == 1  # the forward's only
    _plans.clear()
    inp = Inputs.create(q, k, v)
    pb = _launch.problem(inp)
    for _ in range(3):
        _launch.forward(inp, needs_lse=False, dropout_seed=0, pb=pb)
        _launch.forward(inp, needs_lse=False, dropout_seed=0, config=_launch.fwd_candidates(pb)[0])
    assert _plans.count() == 0
    for _ in range(2):
        _launch.forward(inp, needs_lse=False, dropout_seed=0)
    assert _plans.count() == 1
    qm = torch.randn(1, 64 * 2 * 64 + 1, generator=g).to(q.dtype)[:, 1:].view(q.shape)  # 2 bytes off 16
    assert qm.data_ptr() % 16 and qm.stride() == q.stride()
    for _ in range(2):
        _launch.forward(Inputs.create(qm, k, v), needs_lse=False, dropout_seed=0)
    assert _plans.count() == 2


def test_a_plan_holds_no_tensor_of_the_call_that_recorded_it(fake_gpu: list[Launch]) -> None:
    """The recording call's inputs and outputs are freed with the call (a plan keeps only fixed tensors:
    dummies, block-layout arrays); the replay still launches with the new call's addresses."""
    import gc
    import weakref

    g = torch.Generator().manual_seed(9)
    inp, _ = _build(CASES["varlen causal"], g)
    _launch.forward(inp, needs_lse=True, dropout_seed=0)
    inp, named = _build(CASES["varlen causal"], g)
    out, lse = _launch.forward(inp, needs_lse=True, dropout_seed=0)  # records
    assert _plans.count() == 1 and lse is not None
    refs = [weakref.ref(t) for t in (*named.values(), out, lse)]
    del inp, named, out, lse
    fake_gpu.clear()  # (the fakes' log and allocation list hold what they saw)
    allocated()
    gc.collect()
    assert all(r() is None for r in refs), "a plan keeps the recording call's tensors alive"
    inp, named = _build(CASES["varlen causal"], g)
    fake_gpu.clear()
    _launch.forward(inp, needs_lse=True, dropout_seed=0)
    (_, _, args, how), = fake_gpu
    assert how.startswith("binary") and {named["q"].data_ptr(), named["k"].data_ptr(), named["v"].data_ptr()} <= set(args)


def test_signatures_that_never_repeat_record_nothing(fake_gpu: list[Launch], monkeypatch: pytest.MonkeyPatch) -> None:
    """Packed batches whose lengths change every call never record (a plan comes from a signature's second
    call); ``ATTNCORE_TRITON_PLANS=0`` records and replays none."""
    g = torch.Generator().manual_seed(10)
    q, k, v = _tensors(3, 1, 96, 2, 32, g=g)
    for first in range(8, 48, 8):
        bias = ab.BlockDiagonalCausalMask.from_seqlens([first, 96 - first])
        _launch.forward(Inputs.create(q, k, v, bias), needs_lse=False, dropout_seed=0)
    assert _plans.count() == 0
    monkeypatch.setenv(_plans.ENV, "0")
    assert _plans.status().startswith("off")
    inp = Inputs.create(q, k, v)
    for _ in range(3):
        fake_gpu.clear()
        _launch.forward(inp, needs_lse=False, dropout_seed=0)
    assert _plans.count() == 0 and all(isinstance(a, torch.Tensor) for a in fake_gpu[0][2][:3])
    monkeypatch.delenv(_plans.ENV)
    for _ in range(3):
        fake_gpu.clear()
        _launch.forward(inp, needs_lse=False, dropout_seed=0)
    assert _plans.count() == 1 and _plans.status().startswith("on") and isinstance(fake_gpu[0][2][0], int)


GPU_CASES = [
    "causal bf16 K=128",
    "bias tensor + dropout fp16 K=64 M=300",
    "varlen causal bf16",
    "dense bf16 K=256",
    "GQA 5-D stride-0 keys fp16",
    "partial: LSE gradient",
]


def _gpu_build(case: str, g: torch.Generator) -> tuple[Callable[[], tuple[torch.Tensor, ...]], list[torch.Tensor]]:
    """A public call of ``case`` on fresh CUDA tensors: a function running forward and backward (its
    outputs and gradients), and the leaves."""
    import attncore
    from attncore_triton.ops import TritonFlashBwOp, TritonFlashFwOp

    dev, ops = torch.device("cuda"), (TritonFlashFwOp, TritonFlashBwOp)
    dtype = torch.float16 if "fp16" in case else torch.bfloat16
    k = 256 if "K=256" in case else 64 if "K=64" in case else 128
    m = 300 if "M=300" in case else 512
    b, h = (1, 4) if "varlen" in case else (2, 4)

    def leaf(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g).to(device=dev, dtype=dtype).requires_grad_()

    bias: Any = None
    p = 0.0
    if "5-D" in case:
        q = leaf(b, m, 2, h, k)
        kv = [leaf(b, m, 2, 1, k) for _ in range(2)]
        key, v = (t.expand(b, m, 2, h, k) for t in kv)
        leaves = [q, *kv]
    else:
        q, key, v = leaf(b, m, h, k), leaf(b, m, h, k), leaf(b, m, h, k)
        leaves = [q, key, v]
    if "causal" in case or "LSE" in case:
        bias = ab.LowerTriangularMask()
    if "varlen" in case:
        bias = ab.BlockDiagonalCausalMask.from_seqlens([100, 300, 112])
    if "bias tensor" in case:
        bias, p = torch.randn(b, h, m, m, generator=g).to(device=dev, dtype=dtype), 0.3
    grad = torch.randn((*q.shape[:-1], v.shape[-1]), generator=g).to(device=dev, dtype=dtype)

    def run() -> tuple[torch.Tensor, ...]:
        torch.manual_seed(1)  # the dropout seed
        for t in leaves:
            t.grad = None
        if "LSE" in case:
            out, lse = attncore.memory_efficient_attention_partial(q, key, v, bias, p, op=ops)
            torch.autograd.backward((out, lse), (grad, torch.ones_like(lse)))
            outs: tuple[torch.Tensor, ...] = (out, lse)
        else:
            out = attncore.memory_efficient_attention(q, key, v, bias, p, op=ops)
            out.backward(grad)  # type: ignore[no-untyped-call]  # torch's Tensor.backward is untyped
            outs = (out,)
        return tuple(t.detach().clone() for t in outs) + tuple(t.grad.clone() for t in leaves if t.grad is not None)

    return run, leaves


@pytest.mark.skipif(not torch.cuda.is_available(), reason="replays compiled binaries (a GPU)")
@pytest.mark.parametrize("case", GPU_CASES)
def test_a_replayed_call_matches_the_full_path_on_the_gpu(case: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The public call (forward and backward, outputs poisoned with NaN first) through recorded plans gives
    the bits of the same call through the full path, on fresh tensors of a signature whose plans were
    recorded by other tensors (dQ from atomic adds, where the tuner chose them, within rounding)."""
    replays: list[str] = []
    real_f, real_b = _launch._replay_forward, _launch._replay_backward

    def replay_forward(*a: Any) -> Any:
        replays.append("f")
        return real_f(*a)

    def replay_backward(*a: Any) -> Any:
        replays.append("b")
        return real_b(*a)

    monkeypatch.setattr(_launch, "_replay_forward", replay_forward)
    monkeypatch.setattr(_launch, "_replay_backward", replay_backward)
    monkeypatch.setattr(_launch, "POISON", True)
    g = torch.Generator().manual_seed(sum(map(ord, case)))
    _plans.clear()
    for _ in range(3):  # tunes (or reads the tuning cache), records, replays
        _gpu_build(case, g)[0]()
    replays.clear()
    run, _ = _gpu_build(case, g)
    planned = run()
    assert replays == ["f", "b"], replays
    _plans.clear()
    monkeypatch.setattr(_plans, "put", lambda key, plan: None)
    full = run()
    assert not replays[2:]
    names = [*(("out", "lse") if "LSE" in case else ("out",)), "dq", "dk", "dv"]
    for name, a, b in zip(names, planned, full, strict=True):
        assert not a.isnan().any(), name
        if name == "dq" and not torch.equal(a, b):  # atomic adds: any order
            assert (a.float() - b.float()).abs().max() <= 1e-2 * b.float().abs().max(), name
        else:
            assert torch.equal(a, b), name


# ------------------------------------------------------------------------------------------------
# property test: is a plan's key complete?
# ------------------------------------------------------------------------------------------------
# Hypothesis draws a call (shapes, head dims, dtype, layout and alignment, mask kind, tensor bias, dropout,
# scale, output dtype, LSE wanted or not, a gradient for the LSE) and a second call that differs from it in
# one drawn field, or not at all. The first call's signature runs until it has a plan; then the second call
# runs. Wherever it replays that plan (its key matched), its launches must be exactly what the full path
# launches for it (pointers by role, everything else by value); where the two calls are the same, it must
# replay. So a field that changes the kernels' arguments but is missing from the key fails here.

#: Each field's values (drawn from, and each tried as the second call's).
CHOICES: dict[str, list[Any]] = {
    "h": [1, 2, 3],
    "k": [16, 24, 64, 128, 256],
    "kv": [None, 16, 40, 128],  # None: as K
    "dtype": [torch.bfloat16, torch.float16, torch.float32],
    "layout": ["4-D", "3-D", "5-D stride-0 keys", "transposed", "misaligned"],
    "mask": ["none", "causal", "bottom-right", "local 5", "local 9", "tensor", "broadcast tensor", "causal+tensor", "varlen"],
    "p": [0.0, 0.25, 0.5],
    "scale": [None, 0.3, -0.5],
    "out_dtype": [None, torch.float32],
    "needs_lse": [False, True],
    "glse": [False, True],
}
FIELDS: dict[str, st.SearchStrategy[Any]] = {
    "b": st.integers(1, 2),
    "mq": st.integers(1, 40),
    "mk": st.integers(1, 40),
    **{name: st.sampled_from(values) for name, values in CHOICES.items()},
}


def _build(spec: dict[str, Any], g: torch.Generator) -> tuple[Inputs, dict[str, torch.Tensor]]:
    """The call ``spec`` describes, on fresh CPU tensors; and the tensors a kernel reads, by role."""
    b, mq, mk, h, k, dt = spec["b"], spec["mq"], spec["mk"], spec["h"], spec["k"], spec["dtype"]
    kv = spec["kv"] or k
    mask, layout = spec["mask"], spec["layout"]
    if mask == "varlen":
        b, mk = 1, mq
    if layout == "3-D":
        h = 1

    def rnd(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g).to(dt)

    def make(m: int, d: int) -> torch.Tensor:
        if layout == "3-D":
            return rnd(b, m, d)
        if layout == "transposed":
            return rnd(b, h, m, d).transpose(1, 2)
        if layout == "misaligned":
            return rnd(b * m * h * d + 1)[1:].view(b, m, h, d)
        return rnd(b, m, h, d)

    if layout == "5-D stride-0 keys":
        q = rnd(b, mq, 2, h, k)
        key, v = rnd(b, mk, 2, 1, k).expand(b, mk, 2, h, k), rnd(b, mk, 2, 1, kv).expand(b, mk, 2, h, kv)
    else:
        q, key, v = make(mq, k), make(mk, k), make(mk, kv)
    named = {"q": q, "k": key, "v": v}
    bias: Any = None
    heads = q.shape[2:-1]
    if mask == "causal":
        bias = ab.LowerTriangularMask()
    elif mask == "bottom-right":
        bias = ab.LowerTriangularFromBottomRightMask()
    elif mask.startswith("local"):
        bias = ab.LowerTriangularFromBottomRightLocalAttentionMask(int(mask.split()[1]))
    elif mask in ("tensor", "causal+tensor"):
        named["bias"] = rnd(b, *heads, mq, mk)
        bias = named["bias"] if mask == "tensor" else ab.LowerTriangularMaskWithTensorBias(named["bias"])
    elif mask == "broadcast tensor":
        named["bias"] = bias = rnd(1, *([1] * len(heads)), mq, mk).expand(b, *heads, mq, mk)
    elif mask == "varlen":
        cut = max(1, mq // 3)
        bias = ab.BlockDiagonalCausalMask.from_seqlens([cut, mq - cut] if mq > cut else [mq])
    return Inputs.create(q, key, v, bias, spec["p"], spec["scale"], spec["out_dtype"]), named


def _run(inputs: Inputs, spec: dict[str, Any], g: torch.Generator, log: list[Launch]) -> tuple[list[Launch], dict[int, str], list[Launch], dict[int, str]]:
    """Forward then backward of ``inputs``: each one's launches and the roles of its pointers."""
    log.clear()
    allocated()
    out, lse = _launch.forward(inputs, needs_lse=spec["needs_lse"], dropout_seed=3)
    fwd, fwd_roles = list(log), allocated()
    fwd_roles |= {out.data_ptr(): "out"} | ({lse.data_ptr(): "lse"} if lse is not None else {})
    if lse is None:  # the backward takes the forward's LSE
        out, lse = _launch.forward(inputs, needs_lse=True, dropout_seed=3)
    assert lse is not None
    do = torch.randn(out.shape, generator=g).to(out.dtype)
    gl = torch.randn(lse.shape, generator=g) if spec["glse"] else None
    log.clear()
    dq, dk, dv, _ = _launch.backward(inputs, do, out, lse, dropout_seed=3, grad_lse=gl)
    bwd, bwd_roles = list(log), allocated()
    bwd_roles |= {do.data_ptr(): "do", out.data_ptr(): "out", lse.data_ptr(): "lse", dq.data_ptr(): "dq", dk.data_ptr(): "dk", dv.data_ptr(): "dv"}
    if gl is not None:
        bwd_roles[gl.data_ptr()] = "glse"
    return fwd, fwd_roles, bwd, bwd_roles


def _replayed(launches: list[Launch]) -> bool:
    return bool(launches) and all(how.startswith("binary") and all(not isinstance(a, torch.Tensor) for a in args) for _, _, args, how in launches)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.fixed_dictionaries(FIELDS), st.fixed_dictionaries(FIELDS), st.integers(0, 2**31 - 1))
def test_a_call_that_replays_a_plan_launches_what_its_full_path_would(first: dict[str, Any], other: dict[str, Any], seed: int) -> None:
    """After ``first``'s signature has its plans: a call that changes nothing, and calls that change one
    field each, to ``other``'s value (sizes) or to each value of its list (:data:`CHOICES`)."""
    g = torch.Generator().manual_seed(seed)
    with pytest.MonkeyPatch.context() as mp:
        log = faked(mp)
        try:
            for _ in range(2):  # tunes, then records
                inputs, _ = _build(first, g)
                _run(inputs, first, g, log)
            changes = [(None, None)] + [(f, other[f]) for f in FIELDS if f not in CHOICES] + [(f, v) for f, vs in CHOICES.items() for v in vs]
            for field, value in changes:
                second = first if field is None else {**first, field: value}
                inputs, named = _build(second, g)
                roles = {t.data_ptr(): n for n, t in named.items()}
                fwd, fr, bwd, br = _run(inputs, second, g, log)
                mp.setenv(_plans.ENV, "0")  # the same call through the full path
                fwd_full, fr_full, bwd_full, br_full = _run(inputs, second, g, log)
                mp.delenv(_plans.ENV)
                if field is None:
                    assert _replayed(fwd) and _replayed(bwd), "the same signature did not replay"
                for got, got_roles, full, full_roles in ((fwd, fr, fwd_full, fr_full), (bwd, br, bwd_full, br_full)):
                    if _replayed(got):
                        compare(got, full, roles | got_roles, roles | full_roles)
        finally:
            _plans.clear()
