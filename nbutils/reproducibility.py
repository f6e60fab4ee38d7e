"""The setup every chapter runs first: seeds, thread count, plotting style, quiet warnings."""

from __future__ import annotations

import os
import random
import warnings

import numpy as np
import torch

from nbutils.checks import check_int
from nbutils.plotting import apply_style

#: Warnings that come from the notebook machinery rather than from the code a chapter teaches.
#: Warnings raised by PyTorch layers (e.g. ``Dropout2d`` on a 2-D input) are *not* silenced:
#: chapters show them on purpose.
_QUIET = (
    (DeprecationWarning, ""),
    (PendingDeprecationWarning, ""),
    (FutureWarning, "matplotlib"),
)


def seed_everything(seed: int) -> None:
    """Seed Python's ``random``, NumPy's global generator and PyTorch's CPU generator."""
    seed = check_int("seed", seed, 0)
    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002 (the legacy global generator is what code uses)
    torch.manual_seed(seed)


def setup(seed: int = 0, threads: int = 1, style: bool = True) -> None:
    """Make a notebook reproducible; call it in the first code cell of every chapter.

    * seeds ``random``, NumPy and PyTorch with ``seed``;
    * fixes PyTorch's intra-op thread count to ``threads`` (results of reductions can depend on
      how work is split between threads, so a fixed count keeps printed numbers stable);
    * sets rounded printing for NumPy and PyTorch (4 significant digits);
    * applies the course's matplotlib style (PNG figures at a modest resolution);
    * silences deprecation chatter from libraries, but not warnings that PyTorch layers raise.
    """
    seed = check_int("seed", seed, 0)
    threads = check_int("threads", threads, 1)
    if not isinstance(style, bool):
        raise TypeError(f"style must be True or False, got {style!r}")

    os.environ.setdefault("PYTHONHASHSEED", str(seed))
    seed_everything(seed)
    torch.set_num_threads(threads)
    try:  # may only be set before the first parallel region of the process
        torch.set_num_interop_threads(threads)
    except RuntimeError:
        pass

    np.set_printoptions(precision=4, suppress=True)
    torch.set_printoptions(precision=4, sci_mode=False)

    for category, module in _QUIET:
        warnings.filterwarnings("ignore", category=category, module=module or ".*")

    if style:
        apply_style()
