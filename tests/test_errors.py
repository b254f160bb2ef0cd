"""Every case of the refused-input catalogue raises a PiDError with a fix, and docs/errors.md is its rendering."""

from pathlib import Path

import pytest

pytest.importorskip("onnx")

from error_catalogue import CASES, render, run_case  # noqa: E402

DOC = Path(__file__).resolve().parents[1] / "docs" / "errors.md"


@pytest.mark.parametrize("area,given,fn", CASES, ids=[f"{a}: {g}" for a, g, _ in CASES])
def test_each_refusal_says_what_and_how_to_fix_it(area, given, fn):
    exc = run_case(fn)
    assert exc.what and exc.fix, f"{given}: {exc}"


def test_the_catalogue_is_long_and_the_page_is_its_rendering():
    assert len(CASES) >= 40
    assert DOC.read_text() == render(), "regenerate: .venv/bin/python tests/error_catalogue.py > docs/errors.md"
