"""Showing things in a notebook: real source code, and numbers glued into the prose."""

from __future__ import annotations

import base64
import html
import inspect
import io
import math
from collections.abc import Iterable, Sequence
from numbers import Integral, Real

from IPython.display import HTML, Code


def show_source(obj: object) -> Code:
    """Display the source of a function, class or module from ``nbutils`` (or anywhere).

    Chapters use it to show the code they rely on instead of keeping a second copy.
    """
    if not (inspect.isfunction(obj) or inspect.isclass(obj) or inspect.ismodule(obj)):
        raise TypeError(
            f"obj must be a function, class or module, got {type(obj).__name__}: {obj!r}"
        )
    return Code(inspect.getsource(obj), language="python")


def round_sig(value: float, digits: int = 4) -> float:
    """Round ``value`` to ``digits`` significant digits (0 and non-finite values pass through)."""
    if isinstance(digits, bool) or not isinstance(digits, int) or digits < 1:
        raise ValueError(f"digits must be an int >= 1, got {digits!r}")
    value = float(value)
    if value == 0 or not math.isfinite(value):
        return value
    return round(value, digits - 1 - math.floor(math.log10(abs(value))))


def fmt_err(err: float, floor: float = 1e-12) -> str:
    """Format a discrepancy so that printing it is reproducible across runs.

    Round-off-sized differences (below ``floor``) can change in their last digits from one
    process to the next (e.g. with the memory alignment that a BLAS kernel sees), so they print
    as ``"< 1e-12"``; larger values print with two significant digits, e.g. ``"3.2e-05"``.
    Use ``floor=1e-12`` for float64 round-off and about ``1e-5`` for float32.
    """
    if not (isinstance(floor, Real) and floor > 0):
        raise ValueError(f"floor must be a positive number, got {floor!r}")
    err = float(err)
    if math.isnan(err) or err < 0:
        raise ValueError(f"err must be a non-negative number, got {err!r}")
    return f"< {floor:.0e}" if err < floor else f"{err:.1e}"


def glue(name: str, value: object, digits: int = 4) -> None:
    """Glue ``value`` under ``name`` for ``{glue:text}`name``` in the prose, without display.

    Real numbers are rounded to ``digits`` significant digits first, so the stored output
    (which nbval compares) does not depend on the last bits of a floating-point result.
    Nothing is returned, so a ``glue`` call at the end of a cell prints nothing.

    The prose may round the stored value again (``{glue:text}`name:.2f```). Rounding twice goes
    wrong when the first rounding lands on a tie of the second: 2.98501 stored as 2.985 prints
    as 2.98 where the notebook's own output of the same number says 2.99. So a rounded value
    whose last digit is 5 keeps more digits (up to ``digits + 4``) until it is not a tie.
    """
    from myst_nb import glue as _glue

    if not isinstance(name, str) or not name.isidentifier():
        raise ValueError(f"name must be an identifier-like string, got {name!r}")
    if isinstance(value, bool):
        pass
    elif isinstance(value, Integral):
        value = int(value)
    elif isinstance(value, Real):
        value = _round_for_prose(float(value), digits)
    elif hasattr(value, "item") and getattr(value, "ndim", None) == 0:  # 0-d tensor or array
        item = value.item()
        value = item if isinstance(item, (bool, int)) else _round_for_prose(float(item), digits)
    _glue(name, value, display=False)


def _round_for_prose(value: float, digits: int) -> float:
    """``round_sig(value, digits)``, with more digits while the result ends in a tie (a 5)."""
    rounded = round_sig(value, digits)
    for more in range(digits + 1, digits + 5):
        if rounded == value or not math.isfinite(rounded) or not _ends_in_five(rounded):
            break
        rounded = round_sig(value, more)
    return rounded


def _ends_in_five(value: float) -> bool:
    """Whether the last significant digit of ``value``, as Python writes it, is a 5."""
    mantissa = repr(abs(value)).split("e")[0]
    if "." in mantissa:
        mantissa = mantissa.rstrip("0").rstrip(".")
    return mantissa.rstrip("0").endswith("5")


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """A Markdown table: ``header`` names the columns, each row holds one value per column.

    Values are written with ``str``; a ``|`` inside a value is escaped so it cannot split a
    cell. Display the result with ``IPython.display.Markdown``.
    """
    if isinstance(header, (str, bytes)) or not isinstance(header, Sequence) or not header:
        raise TypeError(f"header must be a non-empty sequence of column names, got {header!r}")
    if isinstance(rows, (str, bytes)) or not isinstance(rows, Iterable):
        raise TypeError(f"rows must be an iterable of rows, got {type(rows).__name__}")

    def line(values: Sequence[object]) -> str:
        return "| " + " | ".join(str(v).replace("|", "\\|") for v in values) + " |"

    lines = [line(header), "|" + "---|" * len(header)]
    for i, row in enumerate(rows):
        if isinstance(row, (str, bytes)) or not isinstance(row, Sequence):
            raise TypeError(f"rows[{i}] must be a sequence of values, got {type(row).__name__}")
        if len(row) != len(header):
            raise ValueError(
                f"rows[{i}] has {len(row)} values, but the header has {len(header)} columns"
            )
        lines.append(line(row))
    return "\n".join(lines)


def figure_html(fig: object, alt: str) -> HTML:
    """A Matplotlib figure as one self-contained ``<img>`` with alt text, for gluing elsewhere.

    ``{glue:any}`` with ``:doc:`` pastes an output into another page but gives a pasted image no
    alt text. Glue ``figure_html(fig, alt)`` instead: the PNG travels inside the HTML as a data
    URI, so the other page needs no file and works offline.
    """
    if not hasattr(fig, "savefig"):
        raise TypeError(f"fig must be a Matplotlib figure, got {type(fig).__name__}")
    if not isinstance(alt, str) or not alt.strip():
        raise ValueError(f"alt must be a non-empty description of the figure, got {alt!r}")
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", bbox_inches="tight")
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    return HTML(
        f'<img src="data:image/png;base64,{data}" alt="{html.escape(alt, quote=True)}" '
        'style="max-width: 100%; height: auto;">'
    )
