"""nbutils.display and nbutils.plotting."""

import json

import pytest
import torch
from IPython.display import Code

import nbutils
from nbutils import display as nbdisplay


def test_show_source_gives_the_real_source():
    code = nbutils.show_source(nbutils.make_toy_regression)
    assert isinstance(code, Code)
    assert code.data.startswith("def make_toy_regression(")
    assert "noise_std * torch.randn" in code.data


def test_show_source_rejects_non_code():
    with pytest.raises(TypeError, match="obj must be a function, class or module, got int"):
        nbutils.show_source(3)


@pytest.mark.parametrize(
    ("value", "digits", "expected"),
    [
        (0.000123456, 3, 0.000123),
        (123456.0, 2, 120000.0),
        (-2.71828, 4, -2.718),
        (0.0, 4, 0.0),
        (float("inf"), 4, float("inf")),
    ],
)
def test_round_sig(value, digits, expected):
    assert nbutils.round_sig(value, digits) == expected


def test_round_sig_bad_digits():
    with pytest.raises(ValueError, match="digits must be an int >= 1, got 0"):
        nbutils.round_sig(1.0, 0)


def test_glue_rounds_and_stores(monkeypatch):
    stored = {}

    def fake_glue(name, value, display=True):
        stored[name] = (value, display)

    import myst_nb

    monkeypatch.setattr(myst_nb, "glue", fake_glue)
    import numpy as np

    assert nbutils.glue("ratio", 0.123456789) is None
    nbutils.glue("count", np.int64(12345))
    nbutils.glue("t", torch.tensor(2.0 / 3.0))
    nbutils.glue("label", "BN")
    nbutils.glue("big", 123456.7, digits=2)
    assert stored == {
        "ratio": (0.1235, False),
        "count": (12345, False),
        "t": (0.6667, False),
        "label": ("BN", False),
        "big": (120000.0, False),
    }
    assert type(stored["count"][0]) is int
    json.dumps(stored)  # everything glued is plain data
    with pytest.raises(ValueError, match="name must be an identifier-like string"):
        nbdisplay.glue("not a name", 1.0)


def test_colors_are_unique_per_family_and_lookup_errors():
    assert nbutils.color("bn") == nbutils.COLORS["bn"]
    norms = [nbutils.color(k) for k in ("bn", "ln", "in", "gn")]
    assert len(set(norms)) == 4
    with pytest.raises(ValueError, match=r"name must be one of .*; got 'batchnorm'"):
        nbutils.color("batchnorm")


@pytest.mark.parametrize(
    ("err", "floor", "expected"),
    [
        (1.6e-14, 1e-12, "< 1e-12"),
        (1.8e-14, 1e-12, "< 1e-12"),
        (0.0, 1e-12, "< 1e-12"),
        (3.21e-5, 1e-12, "3.2e-05"),
        (2e-6, 1e-5, "< 1e-05"),
    ],
)
def test_fmt_err(err, floor, expected):
    assert nbutils.fmt_err(err, floor) == expected


@pytest.mark.parametrize(
    ("err", "floor", "message"),
    [
        (-1.0, 1e-12, "err must be a non-negative number"),
        (float("nan"), 1e-12, "err must be"),
        (1.0, 0.0, "floor must be a positive number, got 0.0"),
    ],
)
def test_fmt_err_bad_input(err, floor, message):
    with pytest.raises(ValueError, match=message):
        nbutils.fmt_err(err, floor)
