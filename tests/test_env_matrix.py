"""The environment matrix: validation, and ranges read from the plugins (written once)."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

import env_matrix

GOOD = """
python = ["3.11"]
[[torch_pins]]
name = "old"
torch = "2.1.2"
python = "3.11"
[[torch_pins]]
name = "new"
torch = "2.13.0"
python = "3.11"
[[cuda_arch_lists]]
name = "ptx"
value = "8.0+PTX"
on_sm90 = "ptx"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "environments.toml"
    path.write_text(text)
    return path


def test_the_repository_matrix_is_valid() -> None:
    matrix = env_matrix.load()
    assert matrix.torch_pins[0].torch == "2.1.2"
    assert matrix.pin("ci").torch
    assert {a.on_sm90 for a in matrix.cuda_arch_lists} == {"sass", "ptx", "rejected"}


def test_a_good_file_loads(tmp_path: Path) -> None:
    m = env_matrix.load(write(tmp_path, GOOD))
    assert [p.name for p in m.torch_pins] == ["old", "new"]
    with pytest.raises(ValueError, match=r"^name: expected one of \['old', 'new'\], found 'mid'"):
        m.pin("mid")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (("2.13.0", "2.0.1"), "expected oldest first"),
        (('torch = "2.1.2"', 'torch = "2.1.x"'), "expected an exact version"),
        (('name = "new"', 'name = "old"'), "expected unique names"),
        (('value = "8.0+PTX"', 'value = "sm_80"'), "expected entries like 8.0"),
        (('on_sm90 = "ptx"', 'on_sm90 = "maybe"'), "on_sm90"),
        (('python = "3.11"\n[[torch_pins]]\nname = "new"', 'python = "3.9"\n[[torch_pins]]\nname = "new"'), "expected one of"),
        (("[[torch_pins]]", "bogus = 1\n[[torch_pins]]"), "Extra inputs are not permitted"),
    ],
)
def test_bad_files_are_rejected(tmp_path: Path, change: tuple[str, str], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        env_matrix.load(write(tmp_path, GOOD.replace(*change, 1)))


def test_pins_below_the_core_requirement_are_rejected(tmp_path: Path) -> None:
    text = GOOD.replace('torch = "2.1.2"', 'torch = "2.0.1"')
    with pytest.raises(ValidationError, match=r"allowed by the core's torch>=2.1, found \['2.0.1'\]"):
        env_matrix.load(write(tmp_path, text))


def test_plugin_ranges_come_from_their_pyproject() -> None:
    reqs = env_matrix.plugin_requirements()
    assert str(reqs["attncore-reference"]["torch"]) == ">=2.1"
    assert env_matrix.core_requirements()["torch"].contains("2.1.2")
    oldest = env_matrix.load().torch_pins[0]
    assert env_matrix.supported_plugins(oldest)["attncore-reference"] is True
