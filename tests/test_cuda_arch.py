"""Arch-list negotiation: which device a compiled binary runs on, and the rebuild hint when it cannot."""

from __future__ import annotations

import pytest

import env_matrix
from attncore.cuda_arch import ArchEntry, arch_reasons, coverage, parse_arch_list


def test_parse() -> None:
    assert parse_arch_list("6.0;7.0 8.0;9.0a;9.0+PTX") == (
        ArchEntry(6, 0),
        ArchEntry(7, 0),
        ArchEntry(8, 0),
        ArchEntry(9, 0, specific=True),
        ArchEntry(9, 0, ptx=True),
    )
    assert str(ArchEntry(9, 0, ptx=True)) == "9.0+PTX"
    for bad in ("", "sm_80", "8", "8.0+ptx", "9.0b"):
        with pytest.raises(ValueError, match=r"^arch list: expected"):
            parse_arch_list(bad)


@pytest.mark.parametrize(
    ("archs", "cc", "expected"),
    [
        ("8.0", (8, 0), "sass"),
        ("8.0", (8, 6), "sass"),  # same major, higher minor: SASS runs
        ("8.6", (8, 0), None),  # lower minor: no image
        ("8.0", (9, 0), None),  # other major, no PTX
        ("8.0+PTX", (9, 0), "ptx"),
        ("9.0+PTX", (8, 0), None),  # PTX is only compiled upward
        ("9.0a", (9, 0), "sass"),
        ("9.0a", (10, 0), None),  # arch-specific code runs on exactly that arch
        ("7.0;8.0", (7, 5), "sass"),
        ("6.0;7.0;8.0;9.0+PTX", (12, 0), "ptx"),
    ],
)
def test_coverage(archs: str, cc: tuple[int, int], expected: str | None) -> None:
    assert coverage(parse_arch_list(archs), cc) == expected


def test_rejection_says_exactly_what_to_rebuild_with() -> None:
    assert arch_reasons("8.0;9.0", (9, 0), "attncore-cutlass") == []
    (reason,) = arch_reasons("7.0;8.0", (9, 0), "attncore-cutlass")
    assert str(reason) == (
        "compiled archs: found binary built for TORCH_CUDA_ARCH_LIST='7.0;8.0', device is sm_90; "
        "supported: SASS for 9.x up to 9.0, or PTX at or below 9.0; "
        'fix: rebuild attncore-cutlass with TORCH_CUDA_ARCH_LIST="7.0;8.0;9.0"'
    )


@pytest.mark.parametrize("entry", env_matrix.load().cuda_arch_lists, ids=lambda a: a.name)
def test_the_matrix_arch_lists_expect_what_the_rules_say(entry: env_matrix.ArchList) -> None:
    got = coverage(parse_arch_list(entry.value), (9, 0))
    assert (got or "rejected") == entry.on_sm90
