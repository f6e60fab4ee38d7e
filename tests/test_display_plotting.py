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
        "ratio": (0.12346, False),  # 0.1235 would end in a tie: one more digit
        "count": (12345, False),
        "t": (0.6667, False),
        "label": ("BN", False),
        "big": (120000.0, False),
    }
    assert type(stored["count"][0]) is int
    json.dumps(stored)  # everything glued is plain data
    with pytest.raises(ValueError, match="name must be an identifier-like string"):
        nbdisplay.glue("not a name", 1.0)


def test_figure_html_is_one_self_contained_image_with_alt_text():
    import base64
    import re

    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(2, 1))
    ax.plot([0, 1], [0, 1])
    out = nbutils.figure_html(fig, 'Line "y = x" & <nothing else>').data
    plt.close(fig)
    m = re.fullmatch(
        r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)" alt="([^"]*)" [^<>]*>', out
    )
    assert m, out[:200]
    assert base64.b64decode(m.group(1)).startswith(b"\x89PNG\r\n\x1a\n")
    assert m.group(2) == "Line &quot;y = x&quot; &amp; &lt;nothing else&gt;"
    with pytest.raises(ValueError, match="alt must be a non-empty description"):
        nbutils.figure_html(fig, "  ")
    with pytest.raises(TypeError, match="fig must be a Matplotlib figure, got list"):
        nbutils.figure_html([], "alt")


def test_glued_numbers_round_in_the_prose_as_the_unrounded_ones(monkeypatch):
    # The prose formats glued values again ({glue:text}`key:.2f`): that must give what the
    # notebook's own f"{x:.2f}" of the unrounded number prints. A plain 4-digit rounding fails
    # on ties: 2.98501 -> 2.985 -> "2.98", where f"{2.98501:.2f}" is "2.99".
    import numpy as np

    stored = {}
    monkeypatch.setattr(
        "myst_nb.glue", lambda name, value, display=True: stored.update({name: value})
    )
    assert f"{nbutils.round_sig(2.98501, 4):.2f}" == "2.98"  # the failure being prevented
    nbutils.glue("x", 2.98501)
    assert f"{stored['x']:.2f}" == "2.99"
    nbutils.glue("x", 2.98499)
    assert f"{stored['x']:.2f}" == "2.98"
    rng = np.random.default_rng(0)
    values = np.concatenate([rng.uniform(0, 10, 20_000), np.round(rng.uniform(0, 10, 20_000), 3)])
    values = values + rng.choice([-1, 1], values.size) * rng.uniform(1e-6, 1e-4, values.size)
    mismatches = []
    for x in values.tolist():
        nbutils.glue("x", x)
        for fmt in (".0f", ".1f", ".2f", ".1g", ".2g", ".3g"):
            if format(stored["x"], fmt) != format(x, fmt):
                mismatches.append((x, stored["x"], fmt))
    assert not mismatches, mismatches[:5]
    # Values that are not ties keep their 4 digits; exact ties are stored as they are.
    nbutils.glue("x", 1.23412)
    assert stored["x"] == 1.234
    nbutils.glue("x", 1.23456)  # 1.235 would be a tie
    assert stored["x"] == 1.2346
    nbutils.glue("x", 0.125)
    assert stored["x"] == 0.125


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
