"""The golden numbers of ``tests/golden.py`` hold: restructuring the library changes no result."""

from __future__ import annotations

import json

import pytest

from golden import CASES, DEFAULT_RTOL, GOLDEN, RTOL, compute

EXPECTED = json.loads(GOLDEN.read_text())


def test_every_case_is_recorded():
    assert [c[0] for c in CASES] == list(EXPECTED)


@pytest.mark.parametrize("prior", ["tiny", "bundled"])
def test_golden_numbers_hold(prior):
    got = compute([c for c in CASES if c[1] == prior])
    for name, values in got.items():
        for key in ("sum", "max"):
            want = EXPECTED[name][key]
            rtol = RTOL.get(name, DEFAULT_RTOL)
            assert abs(values[key] - want) <= rtol * max(1.0, abs(want)), (name, key, values[key], want)
