"""The course's plotting style and colour code (the same method has the same colour everywhere)."""

from __future__ import annotations

import matplotlib as mpl

#: One colour per method or quantity, used by every chapter.
COLORS: dict[str, str] = {
    # bias-variance decomposition
    "bias2": "#1f77b4",
    "variance": "#d62728",
    "noise": "#7f7f7f",
    "error": "#000000",
    "train": "#2ca02c",
    "test": "#ff7f0e",
    "truth": "#000000",
    "fit": "#1f77b4",
    # regularizers
    "none": "#7f7f7f",
    "l2": "#1f77b4",
    "l1": "#9467bd",
    "dropout": "#d62728",
    # normalizers
    "bn": "#1f77b4",
    "ln": "#2ca02c",
    "in": "#ff7f0e",
    "gn": "#9467bd",
}

STYLE: dict[str, object] = {
    "figure.figsize": (6.4, 4.0),
    "figure.dpi": 80,
    "savefig.dpi": 80,
    "figure.constrained_layout.use": True,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.titlesize": 11,
    "axes.labelsize": 10,
    "legend.fontsize": 9,
    "legend.frameon": False,
    "lines.linewidth": 1.8,
    "image.cmap": "viridis",
}


def color(name: str) -> str:
    """The course colour for a method or quantity, e.g. ``color("bn")``."""
    if name not in COLORS:
        allowed = ", ".join(sorted(COLORS))
        raise ValueError(f"name must be one of {allowed}; got {name!r}")
    return COLORS[name]


def apply_style() -> None:
    """Apply the course's matplotlib rcParams and show inline figures as PNG."""
    mpl.rcParams.update(STYLE)
    try:
        from IPython import get_ipython
    except ImportError:  # plain Python without IPython: nothing more to configure
        return
    if get_ipython() is not None:  # inside a kernel: PNG only, so stored notebooks stay small
        from matplotlib_inline.backend_inline import set_matplotlib_formats

        set_matplotlib_formats("png")
