"""Argument checks shared by the modules of nbutils: one message format everywhere."""

from __future__ import annotations

import numpy as np

__all__ = ["check_int"]


def check_int(name: str, value: object, lowest: int = 1) -> int:
    """Return ``value`` as an ``int`` if it is an integer ``>= lowest``; else raise.

    ``TypeError`` for a non-integer (``bool`` included), ``ValueError`` for one below ``lowest``;
    both messages name the argument, the value and what is allowed.
    """
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int >= {lowest}, got {value!r}")
    if value < lowest:
        raise ValueError(f"{name} must be an int >= {lowest}, got {value}")
    return int(value)
